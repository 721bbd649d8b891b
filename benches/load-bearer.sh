#!/usr/bin/env bash
# Bearer-token load benchmark: Portcullis verifying ES256 JWTs on a protected route vs HAProxy 2.6
# verifying the same tokens with jwt_verify, with nginx as a plain (unauthenticated) proxy for
# reference. All on 127.0.0.1; companion of benches/load.sh (same layout, same measurement).
#
#   PORTCULLIS=target/release/portcullis benches/load-bearer.sh   # use an existing binary, no build
#   benches/load-bearer.sh                                        # builds target/release/portcullis first
#   OUT=load-bearer.md benches/load-bearer.sh                     # also write the report to a file
#
# What is measured (each proxy alone on CPU 0; wrk and the backend nginx on CPU 1):
#   nginx plain               nginx proxying without any authentication: the reference
#   haproxy jwt, one token    HAProxy checks alg, iss, aud, exp and the ES256 signature itself
#   haproxy jwt, N tokens     the same, each request with a new token (wrk -s rotate.lua)
#   portcullis, one token     protected route; the one token is verified once, then cache hits
#   portcullis, N tokens      each request carries a token Portcullis has never seen: every
#                             request in the measured run is a verification (cache miss), as long
#                             as wrk sends no more than MEASURE_TOKENS requests (the report shows
#                             distinct tokens / requests sent; past that the slice wraps and
#                             repeats become cache hits)
#
# The identity provider is the backend nginx itself (issuer http://127.0.0.1:18000): it serves the
# discovery document and the JWKS that benches/load/bearer/mint.py writes (a fresh ES256 key and
# the tokens, minted at every run into the temp dir).
#
# Environment knobs (defaults in brackets):
#   PORTCULLIS      binary to run; when unset the script runs `cargo build --release`
#   OUT             file to write the Markdown report to as well as stdout
#   DURATION [10s]  wrk measurement length        WARMUP [3s] wrk warm-up length
#   CONNECTIONS [50] wrk -c                       THREADS [1] wrk -t
#   MEASURE_TOKENS [200000]  distinct tokens for the measured N-token runs: more than the
#                   requests one 10 s run sends while every request is a verification (about
#                   9-10k/s on one core here, ES256), so no token repeats. Raise it with DURATION.
#   WARMUP_TOKENS [40000]    distinct tokens for the N-token warm-ups (a separate slice: the
#                   measured tokens are never seen by Portcullis before its measured run)
#   KEEP_TMP=1      keep the temp dir (tokens, logs, wrk outputs) and the audit file
#
# Exits non-zero when any measured run had a non-2xx response or socket error (a 401 means the
# setup is wrong), after printing the report.
#
# Needs: nginx-light, wrk, haproxy (2.5+ for jwt_verify), curl, taskset, python3 (mint.py installs
# pyjwt + cryptography with pip if they are missing).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CONF_DIR="$ROOT/benches/load"
# shellcheck source=load/common.sh
source "$CONF_DIR/common.sh"
BEARER_DIR="$ROOT/benches/load/bearer"

DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-3s}"
CONNECTIONS="${CONNECTIONS:-50}"
THREADS="${THREADS:-1}"
MEASURE_TOKENS="${MEASURE_TOKENS:-200000}"
WARMUP_TOKENS="${WARMUP_TOKENS:-40000}"
KEEP_TMP="${KEEP_TMP:-0}"
PYTHON="${PYTHON:-python3}"

BACKEND_PORT=18000
NGINX_PORT=18001
HAPROXY_PORT=18002
PORTCULLIS_PORT=18080
PORTCULLIS_ADMIN_PORT=19090
PORTCULLIS_CONF="${PORTCULLIS_CONF:-benches/load/bearer/portcullis.toml}" # override to compare configs
AUDIT_FILE="/tmp/portcullis-bench-bearer-audit.jsonl" # must match [audit] path in that config

CLK_TCK=$(getconf CLK_TCK)
CLIENT_CPU=1 # wrk and the backend
PROXY_CPU=0  # the proxy under test

# ---------------------------------------------------------------- tools

# ---------------------------------------------------------------- process management
TMP=""
PIDS=()

start_haproxy() {
    local dir="$TMP/haproxy"
    mkdir -p "$dir"
    port_free "$HAPROXY_PORT" || die "127.0.0.1:$HAPROXY_PORT is already in use"
    export BENCH_JWT_PUBKEY="$IDP_DIR/pubkey.pem" # read by haproxy.cfg
    haproxy -c -q -f "$BEARER_DIR/haproxy.cfg" >"$dir/haproxy.log" 2>&1 \
        || { cat "$dir/haproxy.log" >&2; die "haproxy config is invalid"; }
    taskset -c "$PROXY_CPU" haproxy -f "$BEARER_DIR/haproxy.cfg" -db >>"$dir/haproxy.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_ready haproxy "$HAPROXY_PORT" "$pid" "$dir/haproxy.log" "$ONE_TOKEN"
    check_auth haproxy "$HAPROXY_PORT"
}

PORTCULLIS_PID=""
start_portcullis() {
    launch_portcullis "$PORTCULLIS_CONF" readyz
    check_auth portcullis "$PORTCULLIS_PORT"
}

# ---------------------------------------------------------------- wrk
# wrk_cmd DURATION URL MODE: MODE is "plain", "one" (one fixed bearer token) or "warm"/"rotate"
# (rotate.lua over the warm-up or the measured slice of the token file).
WRK_CMD=()
wrk_cmd() {
    local duration=$1 url=$2 mode=$3
    WRK_CMD=(taskset -c "$CLIENT_CPU" wrk "-t$THREADS" "-c$CONNECTIONS" "-d$duration" --latency)
    case "$mode" in
        plain) WRK_CMD+=("$url") ;;
        one) WRK_CMD+=(-H "Authorization: Bearer ${ONE_TOKEN_SHOWN:-$ONE_TOKEN}" "$url") ;;
        warm) WRK_CMD+=(-s "$BEARER_DIR/rotate.lua" "$url" -- "$IDP_DIR/tokens.txt" 0 "$WARMUP_TOKENS" "$THREADS") ;;
        rotate) WRK_CMD+=(-s "$BEARER_DIR/rotate.lua" "$url" -- "$IDP_DIR/tokens.txt" "$WARMUP_TOKENS" "$MEASURE_TOKENS" "$THREADS") ;;
        *) die "wrk_cmd: unknown mode $mode" ;;
    esac
}

declare -A RPS P50 P99 ERRS CPU TOKMIX CASE
LABELS=()

# measure LABEL PORT SERVER_PID MODE: warm up, then measure; record the server's CPU use.
measure() {
    local label=$1 port=$2 server_pid=$3 mode=$4 out t0 t1 c0 c1 warm_mode=$4
    [[ "$mode" == rotate ]] && warm_mode=warm
    out="$TMP/wrk-${label//[^A-Za-z0-9]/_}.txt"
    quiet_check "$label"
    log "warm-up $label ($WARMUP)"
    wrk_cmd "$WARMUP" "http://127.0.0.1:$port/" "$warm_mode"
    "${WRK_CMD[@]}" >"$out.warmup"
    wrk_cmd "$DURATION" "http://127.0.0.1:$port/" "$mode"
    log "measure $label: ${WRK_CMD[*]}"
    c0=$(cpu_ticks "$server_pid")
    t0=$(date +%s.%N)
    "${WRK_CMD[@]}" >"$out"
    t1=$(date +%s.%N)
    c1=$(cpu_ticks "$server_pid")
    cat "$out" >&2
    parse_wrk "$label" "$out" "$mode"
    CPU[$label]=$(awk -v c="$((c1 - c0))" -v hz="$CLK_TCK" -v t0="$t0" -v t1="$t1" \
        'BEGIN { printf "%.0f", 100 * c / hz / (t1 - t0) }')
}

# quiet_check LABEL: note the load average and any compiler running (they distort the numbers).
QUIET_NOTES=()
quiet_check() {
    local rustc
    rustc=$(pgrep -x rustc | paste -sd, - || true)
    if [[ -n "$rustc" ]]; then
        log "WARNING: rustc is running (pid $rustc) during '$1': numbers will be off"
        QUIET_NOTES+=("rustc running during '$1'")
    fi
    log "loadavg before '$1': $(cut -d' ' -f1-3 /proc/loadavg)"
}

# ---------------------------------------------------------------- main
IDP_DIR=""
ONE_TOKEN=""
ONE_TOKEN_SHOWN=""

main() {
    local python_pkgs=()
    command -v "$PYTHON" >/dev/null 2>&1 || python_pkgs=(python3 python3-pip)
    ensure_tools "${python_pkgs[@]}"
    ulimit -n 65536 2>/dev/null || true

    portcullis_binary
    "$PORTCULLIS" check-config --config "$PORTCULLIS_CONF" >&2 \
        || die "$PORTCULLIS rejects $PORTCULLIS_CONF (too old for identity_providers?)"

    TMP=$(mktemp -d /tmp/portcullis-load-bearer.XXXXXX)
    trap cleanup EXIT
    trap 'exit 130' INT TERM

    start_idp_backend "$BEARER_DIR/backend.nginx.conf"

    start_nginx nginx "$CONF_DIR/proxy.nginx.conf" "$PROXY_CPU" "$NGINX_PORT"
    measure "nginx plain (no auth)" "$NGINX_PORT" "${PIDS[-1]}" plain
    CASE["nginx plain (no auth)"]=ref
    stop_last

    start_haproxy
    measure "haproxy jwt_verify, one token" "$HAPROXY_PORT" "${PIDS[-1]}" one
    CASE["haproxy jwt_verify, one token"]=one
    measure "haproxy jwt_verify, many tokens" "$HAPROXY_PORT" "${PIDS[-1]}" rotate
    CASE["haproxy jwt_verify, many tokens"]=many
    stop_last

    local rss_idle hwm_loaded rss_loaded
    start_portcullis
    sleep 1
    rss_idle=$(proc_kb "$PORTCULLIS_PID" VmRSS)
    measure "portcullis, one token (cache hit)" "$PORTCULLIS_PORT" "$PORTCULLIS_PID" one
    CASE["portcullis, one token (cache hit)"]=one
    measure "portcullis, many tokens (cache miss)" "$PORTCULLIS_PORT" "$PORTCULLIS_PID" rotate
    CASE["portcullis, many tokens (cache miss)"]=many
    rss_loaded=$(proc_kb "$PORTCULLIS_PID" VmRSS)
    hwm_loaded=$(proc_kb "$PORTCULLIS_PID" VmHWM)
    if [[ -f "$AUDIT_FILE" ]]; then
        log "audit file $AUDIT_FILE: $(wc -l <"$AUDIT_FILE") lines, $(du -h "$AUDIT_FILE" | cut -f1)"
    fi

    local report label ref="nginx plain (no auth)" hap t_one t_many nerr=0
    local hap_one="haproxy jwt_verify, one token" hap_many="haproxy jwt_verify, many tokens"
    local pc_one="portcullis, one token (cache hit)" pc_many="portcullis, many tokens (cache miss)"
    t_one=$(ratio "${RPS[$pc_one]}" "${RPS[$ref]}")
    t_many=$(ratio "${RPS[$pc_many]}" "${RPS[$hap_many]}")
    for label in "${LABELS[@]}"; do nerr=$((nerr + ERRS[$label])); done
    ONE_TOKEN_SHOWN='<token>'
    report=$(
        echo "## Portcullis bearer-token load benchmark"
        echo
        echo "| target | tokens | req/s | p50 (ms) | p99 (ms) | req/s vs nginx plain | req/s vs haproxy jwt (same case) | errors | server CPU |"
        echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
        for label in "${LABELS[@]}"; do
            case "${CASE[$label]}" in
                one) hap=$(ratio "${RPS[$label]}" "${RPS[$hap_one]}") ;;
                many) hap=$(ratio "${RPS[$label]}" "${RPS[$hap_many]}") ;;
                *) hap="-" ;;
            esac
            printf '| %s | %s | %.0f | %s | %s | %s | %s | %s | %s%% |\n' "$label" "${TOKMIX[$label]}" \
                "${RPS[$label]}" "${P50[$label]}" "${P99[$label]}" \
                "$(ratio "${RPS[$label]}" "${RPS[$ref]}")" "$hap" "${ERRS[$label]}" "${CPU[$label]}"
        done
        echo
        echo "Targets: Portcullis one token >= 0.90x nginx plain: **${t_one}x**" \
            "($(awk -v r="$t_one" 'BEGIN { print (r >= 0.9 ? "met" : "NOT met") }'));" \
            "Portcullis many tokens >= 1.50x haproxy jwt_verify many tokens: **${t_many}x**" \
            "($(awk -v r="$t_many" 'BEGIN { print (r >= 1.5 ? "met" : "NOT met") }'))."
        echo
        echo "errors = non-2xx responses + socket errors reported by wrk (a 401 would mean a broken setup)."
        echo "server CPU = CPU time of the proxy during the measured run, in % of one core."
        echo "tokens: \"N distinct / M sent\" is what rotate.lua handed to wrk in the measured run; with"
        echo "N = M every request carried a token the proxy had never seen, so every Portcullis request"
        echo "was a full ES256 verification (cache miss) — the warm-up used a separate slice of tokens."
        echo "HAProxy has no token cache: it verifies every request in both cases. Before measuring,"
        echo "both proxies answered 401 to no token and to each of: $(cut -d' ' -f1 "$IDP_DIR/bad-tokens.txt" | paste -sd' ' -)."
        echo
        echo "Portcullis memory: VmRSS ${rss_idle} kB idle; after load VmRSS ${rss_loaded} kB (VmHWM ${hwm_loaded} kB)."
        if ((${#QUIET_NOTES[@]})); then
            echo
            echo "**Not quiet:** ${QUIET_NOTES[*]}."
        fi
        echo
        wrk_cmd "$DURATION" "http://127.0.0.1:<port>/" plain
        echo "- wrk, no token: \`$(shell_join "${WRK_CMD[@]}")\`"
        wrk_cmd "$DURATION" "http://127.0.0.1:<port>/" one
        echo "- wrk, one token: \`$(shell_join "${WRK_CMD[@]}")\` (\`<token>\`: the first line of tokens.txt)"
        wrk_cmd "$DURATION" "http://127.0.0.1:<port>/" rotate
        echo "- wrk, many tokens: \`$(shell_join "${WRK_CMD[@]}" | sed "s#$TMP#\$TMP#g; s#$ROOT/##g")\` (warm-up: the same over tokens 0..$((WARMUP_TOKENS - 1)))"
        echo "- each measured run follows a ${WARMUP} warm-up with the same settings"
        echo "- tokens: \`$PYTHON benches/load/bearer/mint.py --out \$TMP/backend/idp --count $((WARMUP_TOKENS + MEASURE_TOKENS))\`" \
            "(ES256, kid bench-es256, iss http://127.0.0.1:18000, aud portcullis-bench, exp now+3600)"
        echo "- nginx plain: \`nginx -c benches/load/proxy.nginx.conf\`; backend + IdP documents: \`nginx -c benches/load/bearer/backend.nginx.conf\`"
        echo "- haproxy: \`BENCH_JWT_PUBKEY=\$TMP/backend/idp/pubkey.pem haproxy -f benches/load/bearer/haproxy.cfg -db\`"
        echo "- portcullis: \`$PORTCULLIS serve --config $PORTCULLIS_CONF\` (one process for both cases)"
        echo "- pinning: backend nginx and wrk on CPU $CLIENT_CPU; proxy under test on CPU $PROXY_CPU (one worker / thread each)"
        echo "- date: $(date -u '+%Y-%m-%dT%H:%M:%SZ'); nproc: $(nproc); kernel: $(uname -srm)"
        echo "- versions: $(nginx -v 2>&1 | sed 's/^nginx version: //'); $(haproxy -v 2>&1 | head -n1 | cut -d' ' -f1-3);" \
            "$(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2); $("$PYTHON" -c 'import jwt, cryptography; print("pyjwt", jwt.__version__, "cryptography", cryptography.__version__)')"
    )
    printf '\n%s\n' "$report"
    if [[ -n "${OUT:-}" ]]; then
        printf '%s\n' "$report" >"$OUT"
        log "report written to $OUT"
    fi
    ((nerr == 0)) || die "$nerr errors (non-2xx or socket errors) in the measured runs: the numbers are not valid"
}

main "$@"
