#!/usr/bin/env python3
"""Start-up time and memory of dnlb with one round-robin service of N servers, numbers for tuning.md.

    perf/large_farm.py BINARY N [probe|noprobe]

Writes a config of N servers on 127.1.x.y (nothing listens there: with `probe` the prober finds
them dead; with `noprobe` every server counts as healthy), starts BINARY on 127.0.0.1:5399 under an
8 GB address-space limit, asks `sip.example.test A` (no EDNS) every 10 ms until the first answer
(at most 30 s), and prints the time to it, VmRSS then and 2 s later, and the answer's record count
and TC bit. Run it for the old and the new binary in turn on the same machine.
"""
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time

binary, n, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "noprobe"
port = 5399
work = tempfile.mkdtemp(prefix="dnlb-large-farm-")
config = os.path.join(work, "dnlb.toml")
with open(config, "w") as f:
    f.write('[server]\nlisten = ["127.0.0.1:%d"]\nworkers = 1\nruntime_dir = "%s"\n' % (port, work))
    if mode != "probe":
        f.write("[probe]\nenabled = false\n")
    f.write('[[service]]\nname = "sip.example.test"\n')
    for i in range(n):
        f.write('[[service.server]]\naddress = "127.1.%d.%d"\n' % (i // 250, i % 250 + 1))

query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03sip\x07example\x04test\x00\x00\x01\x00\x01"
client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
client.settimeout(0.01)
started = time.time()
server = subprocess.Popen(["prlimit", "--as=8000000000", binary, "--config", config, "--io", "portable"],
                          stderr=open(os.path.join(work, "stderr.log"), "w"))


def rss():
    try:
        with open("/proc/%d/status" % server.pid) as status:
            return next(l.split()[1] for l in status if l.startswith("VmRSS"))
    except (OSError, StopIteration):
        return "-"


reply = None
while time.time() - started < 30 and server.poll() is None:
    client.sendto(query, ("127.0.0.1", port))
    try:
        reply = client.recv(65535)
    except socket.timeout:
        continue
    break
took = time.time() - started
name = "%s n=%d %s" % (os.path.basename(binary), n, mode)
if reply is None:
    print("%s: no answer after %.1f s (exit %s)" % (name, took, server.poll()))
else:
    first = rss()
    time.sleep(2)
    print("%s: first answer %.3f s, RSS %s kB, after 2 s %s kB, %d records, TC %d" % (
        name, took, first, rss(), struct.unpack(">H", reply[6:8])[0], (reply[2] >> 1) & 1))
if server.poll() is None:
    server.terminate()
    server.wait()
