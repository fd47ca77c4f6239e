# Shared by the perf scripts (sourced after they cd to the repository root).
#
#   perf_scratch NAME             a scratch directory in $work, and $pids: every PID added there is
#                                 ended, and the directory removed, when the script exits
#   nsd_conf DIR LISTEN N ZONE [TAG]
#                                 prints nsd's configuration serving ZONE (from DIR/ZONE.zone) on
#                                 LISTEN (ADDRESS@PORT), N server processes on SO_REUSEPORT, rate
#                                 limiting off, 4 MiB socket buffers; TAG (default nsd) names its
#                                 pid, state and log files, so two can run from one directory
#   unbound_conf DIR ADDRESS PORT N ZONE UPSTREAM stub|forward
#                                 prints unbound's configuration on ADDRESS@PORT with N threads on
#                                 SO_REUSEPORT, rate limiting off, ZONE sent to UPSTREAM
#                                 (ADDRESS@PORT) as a stub or a forward zone

perf_scratch() {
    work=$(mktemp -d "/tmp/$1.XXXXXX")
    pids=()
    trap perf_cleanup EXIT
}

perf_cleanup() {
    for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}

nsd_conf() {
    local dir=$1 listen=$2 count=$3 zone=$4 tag=${5:-nsd}
    cat <<EOF
server:
    ip-address: $listen
    server-count: $count
    reuseport: yes
    username: ""
    chroot: ""
    zonesdir: "$dir"
    pidfile: "$dir/$tag.pid"
    xfrdfile: "$dir/$tag.xfrd"
    zonelistfile: "$dir/$tag.list"
    database: ""
    logfile: "$dir/$tag.log"
    verbosity: 0
    hide-version: yes
    receive-buffer-size: 4194304
    send-buffer-size: 4194304
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
remote-control:
    control-enable: no
zone:
    name: $zone
    zonefile: $zone.zone
EOF
}

unbound_conf() {
    local dir=$1 address=$2 port=$3 count=$4 zone=$5 upstream=$6 kind=$7
    cat <<EOF
server:
    interface: $address@$port
    port: $port
    num-threads: $count
    so-reuseport: yes
    do-daemonize: no
    chroot: ""
    username: ""
    directory: "$dir"
    pidfile: "$dir/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 0
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    ratelimit: 0
    ip-ratelimit: 0
    # unbound answers every name under test. itself (RFC 6761 default local zones) unless told not to.
    local-zone: "test." nodefault
$kind-zone:
    name: "$zone"
    $kind-addr: $upstream
EOF
}
