#!/usr/bin/env bash
# Hosts files at scale against the release build, numbers for tuning.md:
#  1. `dnlb check-config` (the whole load: read, parse, index, encode) on 1,000,000 lines, on a
#     file at the size limit (64 MiB, about 1,900,000 lines) and on 4 MB of bad lines: wall and
#     CPU seconds and peak RSS, median of RUNS;
#  2. dnlb started on the 1,000,000-line file: time until its last name is answered, and the
#     same file swapped in under hosts.watch; then SIGTERM while a swap is being read: time to
#     exit.
#
#   perf/hosts.sh                 RUNS=3
#   SKIP_BUILD=1 RUNS=5 perf/hosts.sh
#
# Traffic goes to 127.0.3.1 only; every wait is bounded; dnlb is ended by its PID.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
PORT=${PORT:-5393}
DNLB_BIN=${DNLB_BIN:-target/release/dnlb}
if [ -z "${SKIP_BUILD:-}" ]; then cargo build --release --quiet --bins; fi
command -v kdig >/dev/null || { echo "perf/hosts.sh: kdig (knot-dnsutils) is needed" >&2; exit 1; }

work=$(mktemp -d /tmp/dnlb-hosts.XXXXXX)
pid=""
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

python3 - "$work" <<'EOF'
import sys
work = sys.argv[1]
def lines(path, n, tag, limit=None):
    with open(path, "w") as f:
        size = 0
        for i in range(n):
            line = "10.%d.%d.%d h%d.%s.example.test\n" % ((i >> 16) & 255, (i >> 8) & 255, i & 255, i, tag)
            if limit is not None and size + len(line) > limit:
                break
            f.write(line)
            size += len(line)
lines(work + "/million", 1_000_000, "m")
lines(work + "/limit", 16_000_000, "l", limit=64 << 20)
with open(work + "/bad", "w") as f:
    f.write("x\n" * 2_000_000)
EOF

config() { # file, watch
    cat <<EOF
[server]
listen = ["127.0.3.1:$PORT"]
workers = 1
pin_workers = false
runtime_dir = "$work/run"
[probe]
interval_ms = 200
timeout_ms = 100
[[service]]
name = "sip.example.test"
[[service.server]]
address = "127.0.3.11"
[hosts]
file = "$1"
watch = $2
EOF
}

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

echo "== check-config, median of $RUNS (wall s, user s, sys s, peak RSS MiB)"
for name in million limit bad; do
    config "$work/$name" false > "$work/$name.toml"
    : > "$work/times"
    for _ in $(seq "$RUNS"); do
        /usr/bin/time -f "%e %U %S %M" -o "$work/t" "$DNLB_BIN" check-config "$work/$name.toml" > /dev/null 2>&1 || true
        tail -n 1 "$work/t" >> "$work/times"
    done
    lines=$(wc -l < "$work/$name")
    bytes=$(stat -c %s "$work/$name")
    printf '%-8s %9d lines %5d MiB: wall %s  user %s  sys %s  rss %s MiB\n' "$name" "$lines" $((bytes >> 20)) \
        "$(cut -d' ' -f1 "$work/times" | median)" "$(cut -d' ' -f2 "$work/times" | median)" \
        "$(cut -d' ' -f3 "$work/times" | median)" "$(( $(cut -d' ' -f4 "$work/times" | median) / 1024 ))"
done

# Polls kdig every 20 ms (at most 30 s) until NAME answers; prints the seconds since $1.
answered_after() { # start_ns, name, address
    local deadline=$(( $(date +%s) + 30 ))
    until kdig @127.0.3.1 -p "$PORT" +short +timeout=1 +retry=0 "$2" A 2>/dev/null | grep -qx "$3"; do
        [ "$(date +%s)" -lt "$deadline" ] || { echo "(not answered within 30 s)"; return 1; }
        sleep 0.02
    done
    echo "scale=3; ($(date +%s%N) - $1) / 1000000000" | bc
}

echo "== dnlb on 1,000,000 lines"
cp "$work/million" "$work/hosts"
config "$work/hosts" true > "$work/dnlb.toml"
start=$(date +%s%N)
"$DNLB_BIN" --config "$work/dnlb.toml" 2> "$work/dnlb.log" &
pid=$!
echo "start to the last name answered: $(answered_after "$start" h999999.m.example.test. 10.15.66.63) s"
sed 's/h0\.m\./h0.n./' "$work/million" > "$work/hosts.new"
mv "$work/hosts.new" "$work/hosts"
start=$(date +%s%N)
echo "swap under watch to answered (the watch looks once a second): $(answered_after "$start" h0.n.example.test. 10.0.0.0) s"
cp "$work/million" "$work/hosts.new"
mv "$work/hosts.new" "$work/hosts"
deadline=$(( $(date +%s) + 10 ))
until grep -q "changed: reading it" "$work/dnlb.log"; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "the change was not noticed"; exit 1; }
    sleep 0.01
done
start=$(date +%s%N)
kill -TERM "$pid"
wait "$pid" || true
pid=""
echo "SIGTERM during a load to exit: $(echo "scale=3; ($(date +%s%N) - $start) / 1000000000" | bc) s"
if grep -q "made no progress" "$work/dnlb.log"; then echo "the watchdog fired"; exit 1; fi
