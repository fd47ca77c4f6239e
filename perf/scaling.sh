#!/usr/bin/env bash
# Multi-core scaling: queries/s with 1, 2, 4 and 8 workers for dnlb, the no-work floor and nsd,
# servers on cores 0..N-1, dnsperf (8 threads) on cores 8-15. Needs a 16-core machine.
#
#   perf/scaling.sh                     uses dnsperf, nsd and taskset from PATH
#   SECONDS_PER_RUN=5 COUNTS="1 8" perf/scaling.sh
set -euo pipefail
cd "$(dirname "$0")/.."
COUNTS=${COUNTS:-"1 2 4 8"}
export SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
export SHAPES=saturation LOAD_CPUS=${LOAD_CPUS:-8-15} THREADS_LOAD=${THREADS_LOAD:-8}
export CLIENTS=${CLIENTS:-64} OUTSTANDING=${OUTSTANDING:-500} SKIP_BUILD=${SKIP_BUILD:-}
summary=$(mktemp)
for n in $COUNTS; do
    echo "== $n worker(s): server cores 0-$((n - 1)), dnsperf cores $LOAD_CPUS"
    WORKERS=$n SERVER_CPUS=0-$((n - 1)) perf/compare.sh | tee /dev/stderr | awk -v n="$n" '$2 == "saturation" && NF == 6 { print n, $1, $3, $4, $5 }' >> "$summary"
    export SKIP_BUILD=1
done
echo
printf '%-8s %12s %12s %12s %10s %10s %12s\n' workers "floor q/s" "dnlb q/s" "nsd q/s" dnlb/floor dnlb/nsd "dnlb us/q"
awk '{ q[$1, $2] = $3; u[$1, $2] = $5; seen[$1] = 1 }
     END { for (n = 1; n <= 64; n++) if (n in seen)
             printf "%-8s %12.0f %12.0f %12.0f %10.3f %10.3f %12s\n", n, q[n, "floor"], q[n, "dnlb"], q[n, "nsd"],
                    q[n, "dnlb"] / q[n, "floor"], q[n, "dnlb"] / q[n, "nsd"], u[n, "dnlb"] }' "$summary"
rm -f "$summary"
