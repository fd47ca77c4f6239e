#!/usr/bin/env bash
# dnsperf against dnlb, nsd (same data, rate limiting off) and dnlb's no-work floor server, in one
# run, with each server pinned to one core and dnsperf pinned to another. Prints queries/s, lost %,
# and server CPU microseconds per answered query, then dnlb's ratios to the floor and to nsd.
#
#   perf/compare.sh                       defaults: 10 s per run, io=uring, server core 0, dnsperf core 1
#   SECONDS_PER_RUN=5 IO=portable perf/compare.sh
#   SERVER_CPUS=0 LOAD_CPUS=1 WORKERS=1 perf/compare.sh
#   CLIENTS=4 OUTSTANDING=200 THREADS_LOAD=1  dnsperf's -c, -q and -T for the saturation shape
#   WORKLOAD=cache-hit perf/compare.sh   the relay: `www.example.test A` through dnlb's relay cache,
#                                        dnsdist's packet cache and unbound, all forwarding to an
#                                        nsd upstream (started here on PORT+1), against the floor
#   WORKLOAD=tcp perf/compare.sh         `sip.example.test A` over TCP (dnsperf -m tcp) against
#                                        dnlb, nsd and knot; prints where each server's threads ran
#   TCP=true perf/compare.sh             dnlb with its TCP listeners on (as deployed) for UDP runs
#   RRL=1000000 perf/compare.sh          dnlb with [rrl] at this rate (the limiter runs, nothing
#                                        is limited): its cost on the UDP path
#   BEFORE_BIN=/tmp/old-dnlb SERVERS="dnlb before nsd" perf/compare.sh
#   BEFORE_BIN=/tmp/old-dnlb WORKLOAD=cache-hit SERVERS="dnlb-relay before-relay nsd" perf/compare.sh
#                                        another build of dnlb beside this one (`before`: the SIP
#                                        answer configuration, `before-relay`: the relay's)
#
# Two load shapes per server: saturation (dnsperf -c 4 -q 200 -T 1) and a fixed 30,000 queries/s
# (-Q 30000). Traffic goes to 127.0.0.1 only; every run is bounded by -l and every server started
# here is ended by its PID.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
IO=${IO:-uring}
SERVER_CPUS=${SERVER_CPUS:-0}
LOAD_CPUS=${LOAD_CPUS:-1}
WORKERS=${WORKERS:-1}
RATE=${RATE:-30000}
SHAPES=${SHAPES:-"saturation fixed"}
WORKLOAD=${WORKLOAD:-sip}
if [ "$WORKLOAD" = cache-hit ]; then
    SERVERS=${SERVERS:-"floor dnlb-relay dnsdist unbound"}
    QUERY="www.example.test A"
elif [ "$WORKLOAD" = cache-miss ]; then
    # Unique names, each asked once (one fixed-rate pass): every query misses dnlb's cache and
    # goes upstream. nsd answering the same zone directly is the reference.
    SERVERS=${SERVERS:-"nsd dnlb-relay"}
    SHAPES=fixed
    QUERY=""
elif [ "$WORKLOAD" = tcp ]; then
    SERVERS=${SERVERS:-"dnlb nsd knot"}
    QUERY="sip.example.test A"
    MODE="-m tcp"
    TCP=true
else
    SERVERS=${SERVERS:-"floor dnlb nsd"}
    QUERY="sip.example.test A"
fi
MODE=${MODE:-}
TCP=${TCP:-false}
RRL=${RRL:-}
KNOT_BIN=${KNOT_BIN:-$(command -v knotd || echo /usr/sbin/knotd)}
DNLB_BIN=${DNLB_BIN:-target/release/dnlb}
FLOOR_BIN=${FLOOR_BIN:-target/release/dnlb-floor}
BEFORE_BIN=${BEFORE_BIN:-}
NSD_BIN=${NSD_BIN:-$(command -v nsd || echo /usr/sbin/nsd)}
DNSPERF=${DNSPERF:-dnsperf}
PORT=${PORT:-5390}
UPSTREAM_PORT=$((PORT + 1))
THREADS_LOAD=${THREADS_LOAD:-1}
CLIENTS=${CLIENTS:-4}
OUTSTANDING=${OUTSTANDING:-200}

if [ -z "${SKIP_BUILD:-}" ]; then cargo build --release --quiet --bins; fi
for tool in "$DNSPERF" taskset; do
    command -v "$tool" >/dev/null || { echo "perf/compare.sh: $tool is missing (apt-get install dnsperf util-linux)" >&2; exit 1; }
done

. perf/lib.sh
perf_scratch dnlb-perf

# Same answers everywhere: sip.example.test A -> three addresses.
printf 'sip.example.test A\n' > "$work/probe.txt"
if [ -n "$QUERY" ]; then
    printf '%s\n' "$QUERY" > "$work/queries.txt"
else
    seq 1 $((RATE * SECONDS_PER_RUN + RATE)) | sed 's/^/m/; s/$/.example.test A/' > "$work/queries.txt"
fi
cat > "$work/dnlb.toml" <<EOF
[server]
listen = ["127.0.0.1:$PORT"]
tcp = $TCP
workers = $WORKERS
io = "$IO"
pin_workers = true
EOF
if [ -n "$RRL" ]; then printf '[rrl]\nresponses_per_second = %s\n' "$RRL" >> "$work/dnlb.toml"; fi
cat >> "$work/dnlb.toml" <<EOF

[[service]]
name = "sip.example.test"
[[service.server]]
address = "127.0.0.11"
[[service.server]]
address = "127.0.0.12"
[[service.server]]
address = "127.0.0.13"
EOF
cat > "$work/example.test.zone" <<'EOF'
$ORIGIN example.test.
$TTL 1
@   IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 1
@   IN NS ns.example.test.
ns  IN A 127.0.0.10
sip IN A 127.0.0.11
sip IN A 127.0.0.12
sip IN A 127.0.0.13
www IN A 192.0.2.80
EOF
nsd_conf "$work" "127.0.0.1@$PORT" "$WORKERS" example.test > "$work/nsd.conf"
mkdir -p "$work/knot"
cat > "$work/knot.conf" <<EOF
server:
    rundir: "$work/knot"
    listen: 127.0.0.1@$PORT
    udp-workers: $WORKERS
    tcp-workers: $WORKERS
    background-workers: 1
    tcp-reuseport: on
database:
    storage: "$work/knot"
log:
  - target: stderr
    any: error
zone:
  - domain: example.test
    file: "$work/example.test.zone"
    zonefile-sync: -1
    journal-content: none
EOF

DNSDIST_BIN=${DNSDIST_BIN:-$(command -v dnsdist || echo /usr/bin/dnsdist)}
UNBOUND_BIN=${UNBOUND_BIN:-$(command -v unbound || echo /usr/sbin/unbound)}
# Waits until the server on port $1 answers one query (10 s at most).
wait_answer() {
    local port=$1 i
    for i in $(seq 1 100); do
        if "$DNSPERF" -s 127.0.0.1 -p "$port" -d "$work/probe.txt" -n 1 -t 1 2>/dev/null | grep -q "Queries completed: *1 "; then return 0; fi
        sleep 0.1
    done
    echo "server on port $port did not answer" >&2
    return 1
}

if [ "$WORKLOAD" = cache-hit ] || [ "$WORKLOAD" = cache-miss ]; then
    # The upstream: nsd with the same zone on the next port, on the load generator's cores (it
    # sees one query per cache, not the load).
    nsd_conf "$work" "127.0.0.1@$UPSTREAM_PORT" "$WORKERS" example.test upstream > "$work/upstream.conf"
    taskset -c "$LOAD_CPUS" "$NSD_BIN" -d -c "$work/upstream.conf" 2>"$work/upstream.err" &
    pids+=("$!")
    cat > "$work/relay.toml" <<EOF2
[server]
listen = ["127.0.0.1:$PORT"]
tcp = false
workers = $WORKERS
io = "$IO"
[probe]
enabled = false
[relay]
upstreams = ["127.0.0.1:$UPSTREAM_PORT"]
EOF2
    cat > "$work/dnsdist.conf" <<EOF2
setLocal("127.0.0.1:$PORT")
setACL({"127.0.0.0/8"})
newServer({address="127.0.0.1:$UPSTREAM_PORT", checkInterval=3600})
pc = newPacketCache(10000)
getPool(""):setCache(pc)
EOF2
    unbound_conf "$work" 127.0.0.1 "$PORT" "$WORKERS" example.test "127.0.0.1@$UPSTREAM_PORT" stub > "$work/unbound.conf"
    wait_answer "$UPSTREAM_PORT"
fi

# CPU ticks (user + system) of a process and all its descendants.
tree_ticks() {
    local total=0 p
    for p in $(descendants "$1"); do
        if [ -r "/proc/$p/stat" ]; then
            total=$((total + $(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat")))
        fi
    done
    echo "$total"
}
descendants() {
    local p=$1 c
    echo "$p"
    for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do descendants "$c"; done
}


start_server() {
    case $1 in
        floor) taskset -c "$SERVER_CPUS" "$FLOOR_BIN" "127.0.0.1:$PORT" --io "$IO" --workers "$WORKERS" 2>"$work/floor.log" & ;;
        dnlb) taskset -c "$SERVER_CPUS" "$DNLB_BIN" --config "$work/dnlb.toml" 2>"$work/dnlb.log" & ;;
        nsd) taskset -c "$SERVER_CPUS" "$NSD_BIN" -d -c "$work/nsd.conf" 2>"$work/nsd.err" & ;;
        dnlb-relay) taskset -c "$SERVER_CPUS" "$DNLB_BIN" --config "$work/relay.toml" 2>"$work/relay.log" & ;;
        before) taskset -c "$SERVER_CPUS" "$BEFORE_BIN" --config "$work/dnlb.toml" 2>"$work/before.log" & ;;
        before-relay) taskset -c "$SERVER_CPUS" "$BEFORE_BIN" --config "$work/relay.toml" 2>"$work/before-relay.log" & ;;
        dnsdist) taskset -c "$SERVER_CPUS" "$DNSDIST_BIN" --supervised --disable-syslog -C "$work/dnsdist.conf" >"$work/dnsdist.log" 2>&1 & ;;
        unbound) taskset -c "$SERVER_CPUS" "$UNBOUND_BIN" -d -c "$work/unbound.conf" 2>"$work/unbound.log" & ;;
        knot) taskset -c "$SERVER_CPUS" "$KNOT_BIN" -c "$work/knot.conf" 2>"$work/knot.log" & ;;
    esac
    server_pid=$!
    pids+=("$server_pid")
    wait_answer "$PORT"
}

stop_server() {
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    sleep 0.5 # let the kernel release the port (io_uring teardown is asynchronous)
}

clk=$(getconf CLK_TCK 2>/dev/null || echo 100)
results="$work/results.txt"
: > "$results"
: > "$work/placement.txt"
printf '%-8s %-11s %10s %8s %12s %9s\n' server shape "queries/s" "lost %" "cpu us/q" "avg ms"
for server in $SERVERS; do
    start_server "$server"
    for shape in $SHAPES; do
        if [ "$shape" = saturation ]; then load=(-c "$CLIENTS" -q "$OUTSTANDING" -T "$THREADS_LOAD"); else load=(-Q "$RATE" -c "$CLIENTS" -T "$THREADS_LOAD"); fi
        before=$(tree_ticks "$server_pid")
        # MODE is empty or "-m tcp": left unquoted on purpose.
        # shellcheck disable=SC2086
        out=$(taskset -c "$LOAD_CPUS" "$DNSPERF" -s 127.0.0.1 -p "$PORT" -d "$work/queries.txt" -l "$SECONDS_PER_RUN" $MODE "${load[@]}" 2>&1)
        after=$(tree_ticks "$server_pid")
        # Where the server's threads ran last (field 39 of /proc/TID/stat): knotd pins its
        # workers itself, and a server on the load generator's core would look cheaper.
        cpus=$(for t in /proc/"$server_pid"/task/*; do awk '{ sub(/^.*\) /, ""); print $37 }' "$t/stat"; done 2>/dev/null | sort -u | tr '\n' ',' | sed 's/,$//' || true)
        echo "$server $shape: threads last ran on cpu(s) $cpus" >> "$work/placement.txt"
        completed=$(echo "$out" | awk '/Queries completed:/ { print $3 }')
        lost=$(echo "$out" | awk '/Queries lost:/ { gsub(/[()%]/, "", $4); print $4 }')
        qps=$(echo "$out" | awk '/Queries per second:/ { print $4 }')
        us=$(awk -v t=$((after - before)) -v c="$completed" -v k="$clk" 'BEGIN { printf "%.2f", (c > 0) ? t * 1e6 / k / c : 0 }')
        lat=$(echo "$out" | awk '/Average Latency \(s\):/ { printf "%.3f", $4 * 1000; exit }')
        printf '%-8s %-11s %10.0f %8s %12s %9s\n' "$server" "$shape" "$qps" "$lost" "$us" "$lat" | tee -a "$results"
    done
    stop_server
done

echo
for shape in $SHAPES; do
    awk -v s="$shape" '
        $2 == s { cpu[$1] = $5; qps[$1] = $3 }
        END {
            d = (cpu["dnlb"] > 0) ? "dnlb" : "dnlb-relay"
            printf "%-11s", s
            if (cpu[d] > 0 && cpu["floor"] > 0) printf " %s/floor cpu per query: %.3f", d, cpu[d] / cpu["floor"]
            split("nsd knot dnsdist unbound", refs, " ")
            for (k in refs) if (cpu[d] > 0 && cpu[refs[k]] > 0)
                printf "   %s/%s: %.3f (qps %.3f)", d, refs[k], cpu[d] / cpu[refs[k]], qps[d] / qps[refs[k]]
            b = (d == "dnlb") ? "before" : "before-relay"
            if (cpu[d] > 0 && cpu[b] > 0) printf "   %s/%s: %.3f (qps %.3f)", d, b, cpu[d] / cpu[b], qps[d] / qps[b]
            printf "\n"
        }' "$results"
done
echo
cat "$work/placement.txt"
