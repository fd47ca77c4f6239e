#!/usr/bin/env bash
# Loss-proof detection on loopback: two kamailio on 127.0.0.201 and .202, nftables dropping
# LOSS % of the SIP datagrams in each direction (numgen random, as a lossy link does; in the input
# hook, so the sender sees no error, as with loss on a real path: a drop in the output hook
# makes send() fail with EPERM, which the prober rightly takes as a failed probe), and two
# dnlb instances probing them with default settings, one with loss_copies = 1 (retransmissions
# only, the behaviour before copies) and one with the default copies. Counts false flaps over
# DURATION seconds, then blackholes each server TRIALS times and times its removal.
#
# Needs root (nft) and kamailio. Usage: perf/loss.sh [DNLB_BINARY] (default target/release/dnlb)
# Environment: LOSS (30), DURATION (600), TRIALS (10).
set -euo pipefail
DNLB=${1:-target/release/dnlb}
LOSS=${LOSS:-30}
DURATION=${DURATION:-600}
TRIALS=${TRIALS:-10}
WORK=$(mktemp -d /tmp/dnlb-loss.XXXXXX)
IPS=(127.0.0.201 127.0.0.202)
COPIES=(1 10)
PIDS=()
cleanup() {
    nft delete table inet dnlb_loss 2>/dev/null || true
    # dnlb writes its PID into its lock files; the pipelines' PIDs are the time stampers'.
    for pid in $(cat "$WORK"/run*/*.lock 2>/dev/null) "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
MODULES=$(dirname "$(ls /usr/lib/x86_64-linux-gnu/kamailio/modules/sl.so /usr/lib/kamailio/modules/sl.so 2>/dev/null | head -1)")
stamp() { while IFS= read -r line; do printf '%s %s\n' "$(date +%s.%N)" "$line"; done; }
for i in 0 1; do
    ip=${IPS[$i]}
    mkdir -p "$WORK/k$i"
    cat > "$WORK/k$i/kamailio.cfg" <<CFG
#!KAMAILIO
debug=1
log_stderror=yes
children=2
listen=udp:$ip:5060
mpath="$MODULES/"
loadmodule "sl.so"
request_route { if (method == "OPTIONS") { sl_send_reply("200", "OK"); exit; } sl_send_reply("404", "Not Found"); }
CFG
    kamailio -f "$WORK/k$i/kamailio.cfg" -P "$WORK/k$i/pid" -Y "$WORK/k$i" -w "$WORK/k$i" -DD -E 2>/dev/null &
    PIDS+=($!)
    port=$((25300 + i))
    cat > "$WORK/dnlb$i.toml" <<CFG
[server]
listen = ["127.0.0.1:$port"]
workers = 1
pin_workers = false
runtime_dir = "$WORK/run$i"
[probe]
loss_copies = ${COPIES[$i]}
[[service]]
name = "sip.example.test"
[[service.server]]
address = "$ip"
CFG
done
sleep 1
for i in 0 1; do
    "$DNLB" --config "$WORK/dnlb$i.toml" 2>&1 | stamp > "$WORK/dnlb$i.log" &
    PIDS+=($!)
done
sleep 3
nft add table inet dnlb_loss
nft add chain inet dnlb_loss in '{ type filter hook input priority 0; }'
for ip in "${IPS[@]}"; do
    nft add rule inet dnlb_loss in ip daddr "$ip" udp dport 5060 numgen random mod 100 '<' "$LOSS" drop
    nft add rule inet dnlb_loss in ip saddr "$ip" udp sport 5060 numgen random mod 100 '<' "$LOSS" drop
done
start=$(date +%s.%N)
echo "loss $LOSS % per direction for $DURATION s ..."
sleep "$DURATION"
end=$(date +%s.%N)
nft delete table inet dnlb_loss
for i in 0 1; do
    flaps=$(awk -v s="$start" -v e="$end" '$1 >= s && $1 <= e && /server out of the answers/' "$WORK/dnlb$i.log" | wc -l)
    out=$(awk -v s="$start" -v e="$end" '$1 >= s && $1 <= e && /server out of the answers/ {d=$1} $1 >= s && $1 <= e && / server up / && d {t+=$1-d; if ($1-d>m) m=$1-d; d=0} END {printf "%.2f s out in all, longest %.2f s", t, m}' "$WORK/dnlb$i.log")
    echo "loss_copies = ${COPIES[$i]}: $flaps false flaps in $DURATION s ($out)"
done
# Blackholes: drop everything to a server until it is out, then let it back.
sleep 3
nft add table inet dnlb_loss
nft add chain inet dnlb_loss in '{ type filter hook input priority 0; }'
for i in 0 1; do
    ip=${IPS[$i]}
    times=()
    for t in $(seq 1 "$TRIALS"); do
        sleep "0.$((RANDOM % 900 + 100))"
        before=$(grep -c -- 'server out of the answers' "$WORK/dnlb$i.log" || true)
        at=$(date +%s.%N)
        nft add rule inet dnlb_loss in ip daddr "$ip" udp dport 5060 drop
        for _ in $(seq 1 300); do
            now=$(grep -c -- 'server out of the answers' "$WORK/dnlb$i.log" || true)
            [ "$now" -gt "$before" ] && break
            sleep 0.01
        done
        down=$(grep -- 'server out of the answers' "$WORK/dnlb$i.log" | tail -1 | cut -d' ' -f1)
        times+=("$(echo "$down - $at" | bc)")
        nft flush chain inet dnlb_loss in
        sleep 3
    done
    echo "loss_copies = ${COPIES[$i]}: blackhole out after ${times[*]} s"
done
echo "logs in $WORK"
