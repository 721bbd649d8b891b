#!/usr/bin/env bash
# Load benchmark: Portcullis vs nginx vs HAProxy as plain reverse proxies in front of the same
# trivial backend, all on 127.0.0.1.
#
#   benches/load.sh                                   # builds target/release/portcullis first
#   PORTCULLIS=target/release/portcullis benches/load.sh   # use an existing binary, no build
#   OUT=load.md benches/load.sh                       # also write the report to load.md
#
# Layout (2 cores assumed): the backend nginx and wrk share CPU 1; the proxy under test
# (nginx / haproxy / Portcullis) gets CPU 0 to itself. Each proxy is measured alone.
#
# Environment knobs (defaults in brackets):
#   PORTCULLIS      binary to run; when unset the script runs `cargo build --release` and uses
#                   target/release/portcullis
#   OUT             file to write the Markdown report to as well as stdout
#   DURATION [10s]  wrk measurement length        WARMUP [3s] wrk warm-up length
#   CONNECTIONS [50] wrk -c                       THREADS [1] wrk -t
#   SKIP_PORTCULLIS=1  measure only the backend, nginx and haproxy (no build, no Portcullis)
#   KEEP_TMP=1      keep the temp dir (logs, wrk outputs) and the audit file
#
# Needs: nginx-light, wrk, haproxy, curl, taskset (util-linux); installed with apt-get if missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CONF_DIR="$ROOT/benches/load"
# shellcheck source=load/common.sh
source "$CONF_DIR/common.sh"

DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-3s}"
CONNECTIONS="${CONNECTIONS:-50}"
THREADS="${THREADS:-1}"
SKIP_PORTCULLIS="${SKIP_PORTCULLIS:-0}"
KEEP_TMP="${KEEP_TMP:-0}"

BACKEND_PORT=18000
NGINX_PORT=18001
HAPROXY_PORT=18002
NGINX_LOG_PORT=18003
PORTCULLIS_PORT=18080
PORTCULLIS_ADMIN_PORT=19090
PORTCULLIS_CONF="benches/load/portcullis.toml"
AUDIT_FILE="/tmp/portcullis-bench-audit.jsonl" # must match [audit] path in portcullis.toml

CLK_TCK=$(getconf CLK_TCK)
CLIENT_CPU=1 # wrk and the backend
PROXY_CPU=0  # the proxy under test

# ---------------------------------------------------------------- tools

# ---------------------------------------------------------------- process management
TMP=""
PIDS=()

start_haproxy() {
    local name=haproxy
    local dir="$TMP/$name"
    mkdir -p "$dir"
    port_free "$HAPROXY_PORT" || die "127.0.0.1:$HAPROXY_PORT is already in use"
    haproxy -c -q -f "$CONF_DIR/haproxy.cfg" >"$dir/haproxy.log" 2>&1 \
        || { cat "$dir/haproxy.log" >&2; die "haproxy config is invalid"; }
    taskset -c "$PROXY_CPU" haproxy -f "$CONF_DIR/haproxy.cfg" -db >>"$dir/haproxy.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_ready haproxy "$HAPROXY_PORT" "$pid" "$dir/haproxy.log"
}

PORTCULLIS_PID=""
start_portcullis() {
    launch_portcullis "$PORTCULLIS_CONF"
}

# ---------------------------------------------------------------- wrk
WRK_CMD=()
wrk_cmd() { # wrk_cmd DURATION URL
    WRK_CMD=(taskset -c "$CLIENT_CPU" wrk "-t$THREADS" "-c$CONNECTIONS" "-d$1" --latency "$2")
}

# Results, keyed by target label.
declare -A RPS P50 P99 ERRS CPU
LABELS=()

# measure LABEL PORT SERVER_PID: warm up, then measure; parse the --latency output and record the
# server's CPU use (percent of one core) during the measured run.
measure() {
    local label=$1 port=$2 server_pid=$3 out t0 t1 c0 c1
    out="$TMP/wrk-${label//[^A-Za-z0-9]/_}.txt"
    log "warm-up $label ($WARMUP)"
    wrk_cmd "$WARMUP" "http://127.0.0.1:$port/"
    "${WRK_CMD[@]}" >/dev/null
    wrk_cmd "$DURATION" "http://127.0.0.1:$port/"
    log "measure $label: ${WRK_CMD[*]}"
    c0=$(cpu_ticks "$server_pid")
    t0=$(date +%s.%N)
    "${WRK_CMD[@]}" >"$out"
    t1=$(date +%s.%N)
    c1=$(cpu_ticks "$server_pid")
    cat "$out" >&2
    parse_wrk "$label" "$out"
    CPU[$label]=$(awk -v c="$((c1 - c0))" -v hz="$CLK_TCK" -v t0="$t0" -v t1="$t1" \
        'BEGIN { printf "%.0f", 100 * c / hz / (t1 - t0) }')
}

# ---------------------------------------------------------------- main
main() {
    ensure_tools
    ulimit -n 65536 2>/dev/null || true

    if [[ "$SKIP_PORTCULLIS" != 1 ]]; then
        portcullis_binary
    fi

    TMP=$(mktemp -d /tmp/portcullis-load.XXXXXX)
    trap cleanup EXIT
    trap 'exit 130' INT TERM

    start_nginx backend "$CONF_DIR/backend.nginx.conf" "$CLIENT_CPU" "$BACKEND_PORT"
    measure "backend (direct)" "$BACKEND_PORT" "${PIDS[-1]}"

    start_nginx nginx "$CONF_DIR/proxy.nginx.conf" "$PROXY_CPU" "$NGINX_PORT"
    measure "nginx" "$NGINX_PORT" "${PIDS[-1]}"
    stop_last

    start_nginx nginx-log "$CONF_DIR/proxy-log.nginx.conf" "$PROXY_CPU" "$NGINX_LOG_PORT"
    measure "nginx + JSON access log" "$NGINX_LOG_PORT" "${PIDS[-1]}"
    stop_last

    start_haproxy
    measure "haproxy" "$HAPROXY_PORT" "${PIDS[-1]}"
    stop_last

    local rss_idle="" hwm_idle="" rss_loaded="" hwm_loaded=""
    if [[ "$SKIP_PORTCULLIS" != 1 ]]; then
        start_portcullis
        sleep 1
        rss_idle=$(proc_kb "$PORTCULLIS_PID" VmRSS)
        hwm_idle=$(proc_kb "$PORTCULLIS_PID" VmHWM)
        measure "portcullis" "$PORTCULLIS_PORT" "$PORTCULLIS_PID"
        rss_loaded=$(proc_kb "$PORTCULLIS_PID" VmRSS)
        hwm_loaded=$(proc_kb "$PORTCULLIS_PID" VmHWM)
        if [[ -f "$AUDIT_FILE" ]]; then
            log "audit file $AUDIT_FILE: $(wc -l <"$AUDIT_FILE") lines, $(du -h "$AUDIT_FILE" | cut -f1)"
        fi
    fi

    wrk_cmd "$DURATION" "http://127.0.0.1:<port>/"
    local report label ref="nginx"
    report=$(
        echo "## Portcullis load benchmark"
        echo
        echo "| target | req/s | p50 (ms) | p99 (ms) | req/s vs nginx | p99 vs nginx | errors | server CPU |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|"
        for label in "${LABELS[@]}"; do
            printf '| %s | %.0f | %s | %s | %s | %s | %s | %s%% |\n' "$label" "${RPS[$label]}" \
                "${P50[$label]}" "${P99[$label]}" \
                "$(ratio "${RPS[$label]}" "${RPS[$ref]}")" "$(ratio "${P99[$label]}" "${P99[$ref]}")" \
                "${ERRS[$label]}" "${CPU[$label]}"
        done
        echo
        echo "errors = non-2xx responses + socket errors reported by wrk. server CPU = CPU time of the"
        echo "server being measured (the proxy; for the direct row, the backend) during the run, in % of"
        echo "one core: well under 100% means that server was not the bottleneck (the client core was)."
        if [[ "$SKIP_PORTCULLIS" != 1 ]]; then
            echo
            echo "Portcullis memory (/proc/PID/status): idle before load VmRSS ${rss_idle} kB" \
                "(VmHWM ${hwm_idle} kB); right after load VmRSS ${rss_loaded} kB (VmHWM ${hwm_loaded} kB)."
        fi
        echo
        echo "- wrk command: \`${WRK_CMD[*]}\` (after a ${WARMUP} warm-up with the same settings)"
        echo "- pinning: backend nginx and wrk on CPU $CLIENT_CPU; proxy under test on CPU $PROXY_CPU (one worker / thread each)"
        echo "- date: $(date -u '+%Y-%m-%dT%H:%M:%SZ')"
        echo "- nproc: $(nproc)"
        echo "- kernel: $(uname -srm)"
        echo "- versions: $(nginx -v 2>&1 | sed 's/^nginx version: //'); $(haproxy -v 2>&1 | head -n1);" \
            "$(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2)"
        if [[ "$SKIP_PORTCULLIS" != 1 ]]; then
            echo "- portcullis: \`$PORTCULLIS serve --config $PORTCULLIS_CONF\`"
        fi
    )
    printf '\n%s\n' "$report"
    if [[ -n "${OUT:-}" ]]; then
        printf '%s\n' "$report" >"$OUT"
        log "report written to $OUT"
    fi
}

main "$@"
