#!/usr/bin/env bash
# What each I/O tuning knob gives: runs perf/compare.sh for dnlb under each variant (and the
# floor once, for reference), same pinning and load. Knobs are environment variables read at
# worker start: DNLB_URING_SETUP (defer, coop, plain), DNLB_URING_BUFFERS, DNLB_PORTABLE_BATCH.
#
#   perf/variants.sh                 SECONDS_PER_RUN=5 by default
set -euo pipefail
cd "$(dirname "$0")/.."
export SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
cargo build --release --quiet --bins
export SKIP_BUILD=1
run() {
    local label=$1 io=$2; shift 2
    env "$@" IO="$io" SERVERS=dnlb perf/compare.sh 2>/dev/null | awk -v l="$label" '$1 == "dnlb" && NF == 6 { printf "%-28s %-11s %10s %8s %10s\n", l, $2, $3, $4, $5 }'
}
printf '%-28s %-11s %10s %8s %10s\n' variant shape "queries/s" "lost %" "cpu us/q"
IO=uring SERVERS=floor perf/compare.sh 2>/dev/null | awk '$1 == "floor" && NF == 6 { printf "%-28s %-11s %10s %8s %10s\n", "floor (uring, reference)", $2, $3, $4, $5 }'
run "uring defer_taskrun (default)" uring DNLB_URING_SETUP=defer
run "uring coop_taskrun" uring DNLB_URING_SETUP=coop
run "uring no setup flags" uring DNLB_URING_SETUP=plain
run "uring 64 buffers" uring DNLB_URING_BUFFERS=64
run "uring 4096 buffers" uring DNLB_URING_BUFFERS=4096
run "portable batch 8" portable DNLB_PORTABLE_BATCH=8
run "portable batch 32 (default)" portable DNLB_PORTABLE_BATCH=32
run "portable batch 64" portable DNLB_PORTABLE_BATCH=64
