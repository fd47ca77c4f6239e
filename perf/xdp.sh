#!/usr/bin/env bash
# kxdpgun (knot-dnsutils' XDP load generator) against dnlb with XDP, dnlb on io_uring, knot's
# XDP mode and knot's kernel path, one after the other in one run, over a veth pair between two
# network namespaces. Prints replies/s and server CPU microseconds per reply for each, then
# dnlb XDP's ratios to the others.
#
#   sudo perf/xdp.sh                        defaults: 3 rounds of 5 s per server, server core 0,
#                                           kxdpgun on core 1, 2,000,000 queries/s asked for
#   ROUNDS=1 SECONDS_PER_RUN=10 sudo perf/xdp.sh
#   SERVERS="dnlb-xdp knot-xdp" sudo perf/xdp.sh
#   RATE=600000 sudo perf/xdp.sh            a fixed rate below saturation: CPU per reply decides
#   QTYPE=SRV sudo perf/xdp.sh              `_sip._udp.sip.example.test SRV` instead of `... A`
#
# The set-up (what tuning.md's table was measured on):
#   ip netns add dnlbx-perf-s; ip netns add dnlbx-perf-c
#   ip link add dnlbx-ps netns dnlbx-perf-s type veth peer name dnlbx-pc netns dnlbx-perf-c
#   ip -n dnlbx-perf-s addr add 198.18.0.1/24 dev dnlbx-ps; ip -n dnlbx-perf-c addr add 198.18.0.2/24 dev dnlbx-pc
#   (both ends up; the server pinned with taskset to SERVER_CPU, kxdpgun with -F to LOAD_CPU)
#
# Server CPU is the server process's user + system time (/proc/PID/stat) over the run, which
# includes the softirq work charged to it: in copy mode on veth, sending a frame runs the
# receiving side's stack (kxdpgun's XDP program) on the sender's core, for dnlb and knot alike.
# The core's busy share (/proc/stat) is printed beside it. Traffic stays inside the two
# namespaces; every run is bounded by kxdpgun's -t; servers started here end by their PID and the
# namespaces are deleted on exit, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
RATE=${RATE:-2000000}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
SERVERS=${SERVERS:-"dnlb-xdp dnlb-uring knot-xdp knot"}
QTYPE=${QTYPE:-A}
DNLB_BIN=${DNLB_BIN:-target/release/dnlb}
KNOT_BIN=${KNOT_BIN:-$(command -v knotd || echo /usr/sbin/knotd)}
KXDPGUN=${KXDPGUN:-$(command -v kxdpgun || echo /usr/sbin/kxdpgun)}
NS_S=dnlbx-perf-s
NS_C=dnlbx-perf-c
IF_S=dnlbx-ps
IF_C=dnlbx-pc
SERVER_IP=198.18.0.1
CLIENT_IP=198.18.0.2

if [ "$(id -u)" -ne 0 ]; then echo "perf/xdp.sh: needs root (network namespaces, XDP)" >&2; exit 1; fi
for tool in "$KXDPGUN" "$KNOT_BIN" taskset ip kdig; do
    command -v "$tool" >/dev/null || [ -x "$tool" ] || { echo "perf/xdp.sh: $tool is missing (apt-get install knot knot-dnsutils util-linux iproute2)" >&2; exit 1; }
done
if [ -z "${SKIP_BUILD:-}" ]; then cargo build --release --quiet --bins; fi

work=$(mktemp -d /tmp/dnlbx-perf.XXXXXX)
server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    ip netns del "$NS_S" 2>/dev/null || true
    ip netns del "$NS_C" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
cleanup_old() { ip netns del "$NS_S" 2>/dev/null || true; ip netns del "$NS_C" 2>/dev/null || true; }
cleanup_old

ip netns add "$NS_S"
ip netns add "$NS_C"
ip link add "$IF_S" netns "$NS_S" type veth peer name "$IF_C" netns "$NS_C"
ip -n "$NS_S" link set lo up
ip -n "$NS_C" link set lo up
ip -n "$NS_S" link set "$IF_S" up
ip -n "$NS_C" link set "$IF_C" up
ip -n "$NS_S" addr add "$SERVER_IP/24" dev "$IF_S"
ip -n "$NS_C" addr add "$CLIENT_IP/24" dev "$IF_C"
server_mac=$(ip -n "$NS_S" link show "$IF_S" | awk '/link\/ether/ {print $2}')

if [ "$QTYPE" = SRV ]; then QNAME=_sip._udp.sip.example.test; else QNAME=sip.example.test; fi
printf '%s %s\n' "$QNAME" "$QTYPE" > "$work/queries.txt"

# The same answers from both servers: three addresses, and SRV records for UDP.
dnlb_config() {
    cat <<EOF
[server]
listen = ["$SERVER_IP:53"]
tcp = false
workers = 1
pin_workers = true
runtime_dir = "$work/run-$1"
$2

[probe]
enabled = false

[[service]]
name = "sip.example.test"
[[service.server]]
address = "192.0.2.11"
host = "sip1.example.test"
[[service.server]]
address = "192.0.2.12"
host = "sip2.example.test"
[[service.server]]
address = "192.0.2.13"
host = "sip3.example.test"
EOF
}
dnlb_config xdp "xdp = { interface = \"$IF_S\", required = true }" > "$work/dnlb-xdp.toml"
dnlb_config uring 'io = "uring"' > "$work/dnlb-uring.toml"
cat > "$work/example.test.zone" <<'EOF'
$ORIGIN example.test.
$TTL 1
@   IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 1
@   IN NS ns.example.test.
ns  IN A 192.0.2.10
sip IN A 192.0.2.11
sip IN A 192.0.2.12
sip IN A 192.0.2.13
sip1 IN A 192.0.2.11
sip2 IN A 192.0.2.12
sip3 IN A 192.0.2.13
_sip._udp.sip IN SRV 10 10 5060 sip1
_sip._udp.sip IN SRV 10 10 5060 sip2
_sip._udp.sip IN SRV 10 10 5060 sip3
EOF
knot_config() {
    mkdir -p "$work/knot-$1"
    cat <<EOF
server:
    rundir: "$work/knot-$1"
    listen: $SERVER_IP@53
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
$2
database:
    storage: "$work/knot-$1"
log:
  - target: stderr
    any: error
zone:
  - domain: example.test
    file: "$work/example.test.zone"
    zonefile-sync: -1
    journal-content: none
EOF
}
knot_config kernel "" > "$work/knot.conf"
knot_config xdp "xdp:
    listen: $IF_S@53
    udp: on" > "$work/knot-xdp.conf"

start_server() {
    case "$1" in
        dnlb-xdp) ip netns exec "$NS_S" taskset -c "$SERVER_CPU" "$DNLB_BIN" --config "$work/dnlb-xdp.toml" 2>"$work/server.err" & ;;
        dnlb-uring) ip netns exec "$NS_S" taskset -c "$SERVER_CPU" "$DNLB_BIN" --config "$work/dnlb-uring.toml" 2>"$work/server.err" & ;;
        knot) ip netns exec "$NS_S" taskset -c "$SERVER_CPU" "$KNOT_BIN" -c "$work/knot.conf" 2>"$work/server.err" & ;;
        knot-xdp) ip netns exec "$NS_S" taskset -c "$SERVER_CPU" "$KNOT_BIN" -c "$work/knot-xdp.conf" 2>"$work/server.err" & ;;
    esac
    server_pid=$!
    local i
    for i in $(seq 1 100); do
        if ip netns exec "$NS_C" kdig +retry=0 +timeout=1 @"$SERVER_IP" "$QNAME" "$QTYPE" 2>/dev/null | grep -q "status: NOERROR"; then break; fi
        sleep 0.1
    done
    # knot pins its own workers: every thread goes back onto the server core, and the result
    # is printed, so no run measures a server spread over the generator's core.
    taskset -a -p -c "$SERVER_CPU" "$server_pid" >/dev/null
    local cpus
    cpus=$(for t in /proc/"$server_pid"/task/*; do awk '/Cpus_allowed_list/ {print $2}' "$t/status"; done | sort -u | tr '\n' ' ')
    echo "  $1 (pid $server_pid) threads on cpus: $cpus" >&2
}

stop_server() {
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
    # knot 3.2 leaves its program attached (through netlink, so nothing detaches it): removed here.
    if [ "$1" = knot-xdp ]; then ip -n "$NS_S" link set dev "$IF_S" xdpdrv off 2>/dev/null || true; fi
    # The interface must be free for the next server's XDP program.
    local i
    for i in $(seq 1 50); do
        if ! ip -n "$NS_S" link show "$IF_S" | grep -q "prog/xdp"; then return 0; fi
        sleep 0.1
    done
    echo "perf/xdp.sh: an XDP program stayed on $IF_S" >&2
    exit 1
}

# user + system ticks of a process (all its threads).
proc_ticks() { awk '{ s = $0; sub(/^.*\) /, "", s); split(s, f, " "); print f[12] + f[13] }' "/proc/$1/stat"; }
# busy and total jiffies of one cpu.
cpu_ticks() { awk -v c="cpu$1" '$1 == c { print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8 }' /proc/stat; }

results="$work/results.txt"
: > "$results"
for round in $(seq 1 "$ROUNDS"); do
    for server in $SERVERS; do
        start_server "$server"
        t0=$(proc_ticks "$server_pid")
        read -r b0 a0 < <(cpu_ticks "$SERVER_CPU")
        out=$(ip netns exec "$NS_C" "$KXDPGUN" -t "$SECONDS_PER_RUN" -Q "$RATE" -F "${LOAD_CPU}s1" -I "$IF_C" \
            -l "$CLIENT_IP" -R "$server_mac" -i "$work/queries.txt" "$SERVER_IP" 2>&1) || true
        t1=$(proc_ticks "$server_pid")
        read -r b1 a1 < <(cpu_ticks "$SERVER_CPU")
        stop_server "$server"
        sent=$(printf '%s\n' "$out" | awk '/total queries:/ {print $3; exit}')
        replies=$(printf '%s\n' "$out" | awk '/total replies:/ {print $3; exit}')
        if [ -z "$replies" ]; then echo "kxdpgun gave no totals for $server:" >&2; printf '%s\n' "$out" >&2; exit 1; fi
        printf '%s %s %s %s %s %s\n' "$server" "$sent" "$replies" "$((t1 - t0))" "$((b1 - b0))" "$((a1 - a0))" >> "$results"
        awk -v s="$server" -v q="$sent" -v r="$replies" -v t="$((t1 - t0))" -v b="$((b1 - b0))" -v a="$((a1 - a0))" -v d="$SECONDS_PER_RUN" -v n="$round" \
            'BEGIN { printf "  round %d %-10s sent %9.0f/s replies %9.0f/s  server %5.2f us/reply  core busy %3.0f%%\n", n, s, q/d, r/d, (r > 0 ? t*10000/r : 0), (a > 0 ? 100*b/a : 0) }' >&2
    done
done

# The median of the numbers on stdin.
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print 0 }'; }
echo
printf '%-10s %14s %14s %18s %10s\n' server "sent q/s" "replies/s" "server us/reply" "core busy"
: > "$work/medians.txt"
for server in $SERVERS; do
    col() { awk -v s="$server" -v d="$SECONDS_PER_RUN" "\$1 == s { print $1 }" "$results" | median; }
    sent=$(col '$2/d')
    replies=$(col '$3/d')
    cpu=$(col '($3 > 0 ? $4*10000/$3 : 0)')
    busy=$(col '($6 > 0 ? 100*$5/$6 : 0)')
    printf '%-10s %14.0f %14.0f %18.2f %9.0f%%\n' "$server" "$sent" "$replies" "$cpu" "$busy"
    echo "$server $replies $cpu" >> "$work/medians.txt"
done
echo
awk '{ r[$1] = $2; c[$1] = $3 } END {
    if ("dnlb-xdp" in r) for (s in r) if (s != "dnlb-xdp" && r[s] > 0 && c[s] > 0)
        printf "dnlb-xdp vs %-10s replies/s x%.2f   CPU per reply x%.2f\n", s, r["dnlb-xdp"]/r[s], c["dnlb-xdp"]/c[s]
}' "$work/medians.txt"
