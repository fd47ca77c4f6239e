#!/usr/bin/env bash
# Prober measurements, numbers for tuning.md:
#  1. detection time after a server goes silent, n = 1, 10, 100, 1000 servers (in-process SIP
#     responders on 127.0.0.1, one port each), interval 1 s, timeout 150 ms, fall 1, next to the
#     paper's sequential (1+n)·u/2; writes perf/out/detection.csv and perf/detection.svg;
#  2. a farm of 10,000 servers probed every second for 60 s: prober CPU and false downs;
#  3. prober CPU per probe over TCP and over TLS (a full handshake per probe), STREAM servers each,
#     alternated twice.
#
#   perf/probe.sh                  TRIALS=20 FARM=10000 FARM_SECONDS=60 STREAM=200 by default
#   TRIALS=5 SIZES="1 100" FARM=0 STREAM=0 perf/probe.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TRIALS=${TRIALS:-20}
SIZES=${SIZES:-"1 10 100 1000"}
FARM=${FARM:-10000}
FARM_SECONDS=${FARM_SECONDS:-60}
STREAM=${STREAM:-200}
mkdir -p perf/out
cargo build --release --quiet --example probe_perf
bin=target/release/examples/probe_perf
csv=perf/out/detection.csv
echo "n,trials,min_ms,median_ms,max_ms,paper_sequential_ms" > "$csv"
for n in $SIZES; do
    "$bin" detection "$n" "$TRIALS" 2>/dev/null | tail -n +2 | tee -a "$csv"
done
python3 perf/plot_detection.py "$csv" perf/detection.svg
echo "wrote $csv and perf/detection.svg"
if [ "$FARM" -gt 0 ]; then
    "$bin" farm "$FARM" "$FARM_SECONDS" 2>/dev/null
fi
if [ "$STREAM" -gt 0 ]; then
    for transport in tcp tls tcp tls; do
        "$bin" stream "$STREAM" 20 "$transport" 2>/dev/null
    done
fi
