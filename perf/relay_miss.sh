#!/usr/bin/env bash
# The relay's cache-miss cost side by side: dnlb (io_uring and portable backends), unbound and
# dnsdist, each forwarding to one nsd upstream that answers NXDOMAIN for unique names, each relay
# pinned to one core with one worker/thread. Prints, per server and load shape, queries/s
# answered, lost %, the relay process's CPU microseconds per answered query and dnsperf's average
# latency, for every round, then the medians and dnlb's ratios to unbound and dnsdist, and to
# dnlb's own cost for a cache hit measured in the same run (server `dnlb-hit`: one name, always
# in the cache).
#
#   perf/relay_miss.sh                          3 rounds, 5 s per run, shapes 10k 30k saturation
#   ROUNDS=1 SECONDS_PER_RUN=3 perf/relay_miss.sh
#   SERVERS="dnlb-uring unbound" SHAPES="10000" perf/relay_miss.sh
#   DNLB_BIN=/tmp/new-dnlb perf/relay_miss.sh   another build of dnlb
#   BEFORE_BIN=/tmp/old-dnlb SERVERS="dnlb-uring before-uring" perf/relay_miss.sh
#                                               two builds side by side (before/after)
#   STALE=false perf/relay_miss.sh              dnlb with serve-stale and prefetch off
#   TCP=true perf/relay_miss.sh                 dnlb with its TCP listeners on, as by default
#
# Every query name is unique within a run (m<shape><n>.miss.test, more names than the run can
# send), so every query misses every cache and goes upstream. The relay runs on SERVER_CPUS,
# dnsperf and nsd on LOAD_CPUS. Traffic goes to 127.0.7.1 (relays) and 127.0.7.2 (nsd) only;
# every run is bounded by -l, and every process started here is ended by its PID. Take the
# bench lock: flock /tmp/dnlb-bench.lock perf/relay_miss.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
SHAPES=${SHAPES:-"10000 30000 saturation"}
SERVERS=${SERVERS:-"dnlb-hit dnlb-uring dnlb-portable unbound dnsdist"}
SERVER_CPUS=${SERVER_CPUS:-0}
LOAD_CPUS=${LOAD_CPUS:-1}
CLIENTS=${CLIENTS:-4}
OUTSTANDING=${OUTSTANDING:-200}
STALE=${STALE:-true}
TCP=${TCP:-false}
DNLB_BIN=${DNLB_BIN:-target/release/dnlb}
BEFORE_BIN=${BEFORE_BIN:-}
NSD_BIN=${NSD_BIN:-$(command -v nsd || echo /usr/sbin/nsd)}
UNBOUND_BIN=${UNBOUND_BIN:-$(command -v unbound || echo /usr/sbin/unbound)}
DNSDIST_BIN=${DNSDIST_BIN:-$(command -v dnsdist || echo /usr/bin/dnsdist)}
DNSPERF=${DNSPERF:-dnsperf}
RELAY_IP=127.0.7.1
UPSTREAM_IP=127.0.7.2
PORT=${PORT:-5370}
# Names per shape: more than the fastest relay answers in a run.
NAMES=${NAMES:-$((120000 * SECONDS_PER_RUN))}

if [ -z "${SKIP_BUILD:-}" ] && [ "$DNLB_BIN" = target/release/dnlb ]; then cargo build --release --quiet --bins; fi
for tool in "$DNSPERF" taskset "$NSD_BIN"; do
    command -v "$tool" >/dev/null || { echo "perf/relay_miss.sh: $tool is missing (apt-get install dnsperf nsd util-linux)" >&2; exit 1; }
done
for s in $SERVERS; do
    case $s in
        unbound) command -v "$UNBOUND_BIN" >/dev/null || { echo "perf/relay_miss.sh: unbound is missing (apt-get install unbound)" >&2; exit 1; } ;;
        dnsdist) command -v "$DNSDIST_BIN" >/dev/null || { echo "perf/relay_miss.sh: dnsdist is missing (apt-get install dnsdist)" >&2; exit 1; } ;;
    esac
done

. perf/lib.sh
perf_scratch dnlb-miss

for shape in $SHAPES; do
    seq 1 "$NAMES" | sed "s/^/m${shape:0:3}x/; s/\$/.miss.test A/" > "$work/names-$shape.txt"
done
printf 'www.miss.test A\n' > "$work/hit.txt"

cat > "$work/miss.test.zone" <<'EOF'
$ORIGIN miss.test.
$TTL 3600
@   IN SOA ns.miss.test. hostmaster.miss.test. 1 3600 600 86400 300
@   IN NS ns.miss.test.
ns  IN A 127.0.7.2
www IN A 192.0.2.80
EOF
nsd_conf "$work" "$UPSTREAM_IP@$PORT" 1 miss.test > "$work/nsd.conf"
dnlb_conf() {
    cat <<EOF
[server]
listen = ["$RELAY_IP:$PORT"]
tcp = $TCP
workers = 1
io = "$1"
[probe]
enabled = false
[relay]
upstreams = ["$UPSTREAM_IP:$PORT"]
EOF
    if [ "$STALE" = false ] && [ "${2:-}" != before ]; then printf 'serve_stale = false\nprefetch = false\n'; fi
}
dnlb_conf uring > "$work/dnlb-uring.toml"
dnlb_conf portable > "$work/dnlb-portable.toml"
dnlb_conf uring before > "$work/before-uring.toml"
dnlb_conf portable before > "$work/before-portable.toml"
unbound_conf "$work" "$RELAY_IP" "$PORT" 1 miss.test "$UPSTREAM_IP@$PORT" forward > "$work/unbound.conf"
cat > "$work/dnsdist.conf" <<EOF
setLocal("$RELAY_IP:$PORT")
setACL({"127.0.0.0/8"})
newServer({address="$UPSTREAM_IP:$PORT", checkInterval=3600})
pc = newPacketCache(10000)
getPool(""):setCache(pc)
EOF

# Waits until the server at $1 port $2 answers `www.miss.test A` (10 s at most).
wait_answer() {
    local ip=$1 port=$2 i
    for i in $(seq 1 100); do
        if "$DNSPERF" -s "$ip" -p "$port" -d "$work/hit.txt" -n 1 -t 1 2>/dev/null | grep -q "Queries completed: *1 "; then return 0; fi
        sleep 0.1
    done
    echo "server at $ip:$port did not answer" >&2
    return 1
}

# CPU ticks (user + system, all threads) of a process.
ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }

taskset -c "$LOAD_CPUS" "$NSD_BIN" -d -c "$work/nsd.conf" 2>"$work/nsd.err" &
pids+=("$!")
wait_answer "$UPSTREAM_IP" "$PORT"

start_server() {
    case $1 in
        dnlb-hit | dnlb-uring) taskset -c "$SERVER_CPUS" "$DNLB_BIN" --config "$work/dnlb-uring.toml" 2>"$work/$1.log" & ;;
        dnlb-portable) taskset -c "$SERVER_CPUS" "$DNLB_BIN" --config "$work/dnlb-portable.toml" 2>"$work/$1.log" & ;;
        before-uring | before-portable) taskset -c "$SERVER_CPUS" "$BEFORE_BIN" --config "$work/$1.toml" 2>"$work/$1.log" & ;;
        unbound) taskset -c "$SERVER_CPUS" "$UNBOUND_BIN" -d -c "$work/unbound.conf" 2>"$work/unbound.log" & ;;
        dnsdist) taskset -c "$SERVER_CPUS" "$DNSDIST_BIN" --supervised --disable-syslog -C "$work/dnsdist.conf" >"$work/dnsdist.log" 2>&1 & ;;
    esac
    server_pid=$!
    pids+=("$server_pid")
    wait_answer "$RELAY_IP" "$PORT"
}

stop_server() {
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    sleep 0.5 # let the kernel release the port (io_uring teardown is asynchronous)
}

clk=$(getconf CLK_TCK 2>/dev/null || echo 100)
results="$work/results.txt"
: > "$results"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-5s %-13s %-10s %10s %8s %10s %9s\n' round server shape "queries/s" "lost %" "cpu us/q" "avg ms"
for round in $(seq 1 "$ROUNDS"); do
    for server in $SERVERS; do
        start_server "$server"
        for shape in $SHAPES; do
            if [ "$shape" = saturation ]; then load=(-c "$CLIENTS" -q "$OUTSTANDING"); else load=(-Q "$shape" -c "$CLIENTS"); fi
            data="$work/names-$shape.txt"
            [ "$server" = dnlb-hit ] && data="$work/hit.txt"
            before=$(ticks "$server_pid")
            out=$(taskset -c "$LOAD_CPUS" "$DNSPERF" -s "$RELAY_IP" -p "$PORT" -d "$data" -l "$SECONDS_PER_RUN" -T 1 "${load[@]}" 2>&1)
            after=$(ticks "$server_pid")
            completed=$(echo "$out" | awk '/Queries completed:/ { print $3 }')
            lost=$(echo "$out" | awk '/Queries lost:/ { gsub(/[()%]/, "", $4); print $4 }')
            qps=$(echo "$out" | awk '/Queries per second:/ { print $4 }')
            us=$(awk -v t=$((after - before)) -v c="$completed" -v k="$clk" 'BEGIN { printf "%.2f", (c > 0) ? t * 1e6 / k / c : 0 }')
            lat=$(echo "$out" | awk '/Average Latency \(s\):/ { printf "%.3f", $4 * 1000; exit }')
            printf '%-5s %-13s %-10s %10.0f %8s %10s %9s\n' "$round" "$server" "$shape" "$qps" "$lost" "$us" "$lat" | tee -a "$results"
        done
        stop_server
    done
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

echo
echo "medians of $ROUNDS rounds (queries/s, cpu us/q):"
awk -v shapes="$SHAPES" -v servers="$SERVERS" '
    function median(list,   n, a, i, j, t) {
        n = split(list, a, " ")
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
        return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    { cpu[$2, $3] = cpu[$2, $3] " " $6; qps[$2, $3] = qps[$2, $3] " " $4 }
    END {
        ns = split(shapes, sh, " "); nv = split(servers, sv, " ")
        for (i = 1; i <= ns; i++) {
            for (j = 1; j <= nv; j++) {
                k = sv[j] SUBSEP sh[i]
                if (!(k in cpu)) continue
                m[sv[j]] = median(cpu[k]); printf "%-10s %-13s %10.0f %10.2f\n", sh[i], sv[j], median(qps[k]), m[sv[j]]
            }
            line = sprintf("%-10s", sh[i])
            split("dnlb-uring dnlb-portable before-uring before-portable", ds, " ")
            for (d = 1; d <= 4; d++) {
                if (!(ds[d] in m) || m[ds[d]] <= 0) continue
                if (m["unbound"] > 0) line = line sprintf("  %s/unbound %.3f", ds[d], m[ds[d]] / m["unbound"])
                if (m["dnsdist"] > 0) line = line sprintf("  %s/dnsdist %.3f", ds[d], m[ds[d]] / m["dnsdist"])
                if (m["dnlb-hit"] > 0) line = line sprintf("  %s/hit %.2f", ds[d], m[ds[d]] / m["dnlb-hit"])
            }
            if (m["before-uring"] > 0 && m["dnlb-uring"] > 0) line = line sprintf("  uring after/before %.3f", m["dnlb-uring"] / m["before-uring"])
            if (m["before-portable"] > 0 && m["dnlb-portable"] > 0) line = line sprintf("  portable after/before %.3f", m["dnlb-portable"] / m["before-portable"])
            print line
            delete m
        }
    }' "$results"
