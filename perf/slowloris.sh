#!/usr/bin/env bash
# Slowloris against dnlb's TCP side while dnsperf measures its UDP side: 2,000 TCP connections
# from 20 loopback addresses, each sending one byte a second (reconnecting when dnlb closes it at
# its message deadline), against a run without them. Prints UDP queries/s, average latency and
# dnlb's CPU per query for both, and dnlb's thread count before and during the attack.
#
#   perf/slowloris.sh                     defaults: 10 s per run at 30,000 q/s, dnlb on core 0,
#                                         dnsperf and the slow clients on core 1
#   SECONDS_PER_RUN=5 CONNECTIONS=1000 perf/slowloris.sh
#
# Traffic goes to 127.0.0.0/8 only; every client loop stops by itself after the run, and every
# process started here is ended by its PID.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
CONNECTIONS=${CONNECTIONS:-2000}
RATE=${RATE:-30000}
PORT=${PORT:-5392}
SERVER_CPUS=${SERVER_CPUS:-0}
LOAD_CPUS=${LOAD_CPUS:-1}
IO=${IO:-uring}
DNLB_BIN=${DNLB_BIN:-target/release/dnlb}
if [ -z "${SKIP_BUILD:-}" ]; then cargo build --release --quiet --bins; fi

. perf/lib.sh
perf_scratch dnlb-slowloris

cat > "$work/dnlb.toml" <<EOF
[server]
listen = ["127.0.0.1:$PORT"]
workers = 1
io = "$IO"
tcp_max_connections_per_client = 1000
[probe]
enabled = false
[[service]]
name = "sip.example.test"
[[service.server]]
address = "127.0.0.11"
[[service.server]]
address = "127.0.0.12"
[[service.server]]
address = "127.0.0.13"
EOF
printf 'sip.example.test A\n' > "$work/queries.txt"

cat > "$work/slow.py" <<'EOF'
# 2,000 slow TCP clients: one byte a second each, reconnecting when closed; stops after `secs`.
import socket, sys, time, resource
port, count, secs = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
resource.setrlimit(resource.RLIMIT_NOFILE, (count + 100, count + 100))
def connect(k):
    s = socket.socket()
    s.bind((f"127.0.3.{1 + k % 20}", 0))
    s.setblocking(False)
    try:
        s.connect(("127.0.0.1", port))
    except BlockingIOError:
        pass
    return s
conns = [connect(k) for k in range(count)]
sent = [0] * count
end = time.time() + secs
while time.time() < end:
    tick = time.time()
    for k, s in enumerate(conns):
        byte = b"\x01" if sent[k] == 0 else b"a"
        try:
            s.send(byte)
            sent[k] += 1
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            s.close()
            conns[k] = connect(k)
            sent[k] = 0
    time.sleep(max(0.0, 1.0 - (time.time() - tick)))
EOF

taskset -c "$SERVER_CPUS" "$DNLB_BIN" --config "$work/dnlb.toml" 2>"$work/dnlb.log" &
dnlb=$!
pids+=("$dnlb")
sleep 1
ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$dnlb/stat"; }
clk=$(getconf CLK_TCK)
run() {
    local before after out
    before=$(ticks)
    out=$(taskset -c "$LOAD_CPUS" dnsperf -s 127.0.0.1 -p "$PORT" -d "$work/queries.txt" -l "$SECONDS_PER_RUN" -Q "$RATE" -c 4 2>&1)
    after=$(ticks)
    echo "$out" | awk -v t=$((after - before)) -v k="$clk" -v label="$1" -v threads="$2" '
        /Queries completed:/ { c = $3 }
        /Queries lost:/ { lost = $3 }
        /Queries per second:/ { q = $4 }
        /Average Latency \(s\):/ && !lat { lat = $4 * 1000 }
        END { printf "%-16s %10.0f q/s  lost %-6s  avg %.3f ms  cpu %.2f us/q  dnlb threads %s\n", label, q, lost, lat, t * 1e6 / k / c, threads }'
}
threads() { ls "/proc/$dnlb/task" | wc -l; }
run "no slowloris" "$(threads)"
taskset -c "$LOAD_CPUS" python3 "$work/slow.py" "$PORT" "$CONNECTIONS" $((SECONDS_PER_RUN + 5)) &
pids+=("$!")
sleep 3
run "$CONNECTIONS slow TCP" "$(threads)"
echo "dnlb's TCP counters at exit:"
kill "$dnlb"
wait "$dnlb" 2>/dev/null || true
grep -o 'tcp_[a-z_]*=[0-9]*' "$work/dnlb.log" | tr '\n' ' '
echo
