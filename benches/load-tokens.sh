#!/usr/bin/env bash
# Identity-assertion load benchmark: Portcullis on the bearer bench's protected route, with and
# without [routes.assertion], one binary, run after run. Companion of benches/load-bearer.sh (same
# layout, tokens, issuer and measurement).
#
#   PORTCULLIS=target/release/portcullis benches/load-tokens.sh   # use an existing binary, no build
#   benches/load-tokens.sh                                        # builds target/release/portcullis first
#   OUT=tokens.md benches/load-tokens.sh                          # also write the report to a file
#
# Runs, each in a fresh Portcullis process alone on CPU 0 (wrk and the backend nginx on CPU 1), in
# ROUNDS rounds (a b c d, then d c b a, ...); the report gives every run and the medians:
#   (a) off, one token      benches/load/tokens/portcullis.toml; the token is verified once, then cache hits
#   (b) on,  one token      benches/load/tokens/portcullis-assertion.toml; one caller: one mint, then
#                           the cached assertion (60 s lifetime, re-minted with <10% left)
#   (c) on,  many tokens    each request a caller never seen (rotate.lua): a verification and a mint
#   (d) off, many tokens    the same tokens: a verification per request, no mint
# The two configs differ only in [routes.assertion] and the backend port: 18004 answers 500 to a
# request without an X-Portcullis-Assertion JWT, 18003 to one with it, so "0 errors" means every
# measured request reached the backend with (on) or without (off) the header. Once per process the
# script also fetches one assertion back from the backend (/echo-assertion) and verifies it (pyjwt)
# against the proxy's JWKS, issuer and audience; mints are counted in the audit file.
#
# Environment knobs (defaults in brackets), as in load-bearer.sh:
#   ROUNDS [3], PORTCULLIS, OUT, DURATION [10s], WARMUP [3s], CONNECTIONS [50], THREADS [1],
#   MEASURE_TOKENS [200000], WARMUP_TOKENS [40000], KEEP_TMP=1, PYTHON [python3]
#
# Exits non-zero when any measured run had a non-2xx response or socket error, after the report.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CONF_DIR="$ROOT/benches/load"
# shellcheck source=load/common.sh
source "$CONF_DIR/common.sh"
BEARER_DIR="$CONF_DIR/bearer"
TOKENS_DIR="$CONF_DIR/tokens"

DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-3s}"
CONNECTIONS="${CONNECTIONS:-50}"
THREADS="${THREADS:-1}"
MEASURE_TOKENS="${MEASURE_TOKENS:-200000}"
WARMUP_TOKENS="${WARMUP_TOKENS:-40000}"
ROUNDS="${ROUNDS:-3}"
KEEP_TMP="${KEEP_TMP:-0}"
PYTHON="${PYTHON:-python3}"

BACKEND_PORT=18000
PORTCULLIS_PORT=18080
PORTCULLIS_ADMIN_PORT=19090
CONF_OFF="benches/load/tokens/portcullis.toml"
CONF_ON="benches/load/tokens/portcullis-assertion.toml"
AUDIT_FILE="/tmp/portcullis-bench-tokens-audit.jsonl" # [audit] path in both configs
KEY_DIR="/tmp/portcullis-bench-tokens-keys"           # [tokens] key_dir in both configs
ISSUER="http://127.0.0.1:18080"
AUDIENCE="https://bench.test"

CLK_TCK=$(getconf CLK_TCK)
CLIENT_CPU=1
PROXY_CPU=0

TMP=""
PIDS=()

# cleanup_tokens: as common.sh's cleanup, plus the key ring.
cleanup_tokens() {
    local rc=$? pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    if [[ "$KEEP_TMP" == 1 ]]; then
        log "kept $TMP, $KEY_DIR and $AUDIT_FILE"
    else
        [[ -z "$TMP" ]] || rm -rf "$TMP"
        rm -rf "$KEY_DIR" "$AUDIT_FILE"
    fi
    exit "$rc"
}

# core_ticks CPU: "busy steal idle" ticks of one core from /proc/stat (busy: user nice system).
core_ticks() {
    awk -v c="cpu$1" '$1 == c { print $2 + $3 + $4, $9, $5 + $6 }' /proc/stat
}

# mints: assertion_minted events in the audit file so far.
mints() {
    if [[ -f "$AUDIT_FILE" ]]; then grep -c 'assertion_minted' "$AUDIT_FILE" || true; else echo 0; fi
}

# start_portcullis CONF: a fresh process (empty caches) on CPU 0, ready and checked.
PORTCULLIS_PID=""
start_portcullis() {
    # GET / through to the backend ("ok") also means the header check of that port passed.
    launch_portcullis "$1" readyz
    check_auth portcullis "$PORTCULLIS_PORT"
}

# VERIFY_PY ASSERTION JWKS_FILE: the assertion verifies (pyjwt) against the proxy's published keys,
# issuer and audience, and names the caller (the first bench token, bench-0); prints a summary.
VERIFY_PY=$(cat <<'EOF'
import json, sys
import jwt
tok, jwks_path, iss, aud = sys.argv[1:]
kid = jwt.get_unverified_header(tok)["kid"]
key = next(k for k in json.load(open(jwks_path))["keys"] if k["kid"] == kid)
c = jwt.decode(tok, jwt.PyJWK(key).key, algorithms=["ES256"], audience=aud, issuer=iss,
               options={"require": ["iss", "aud", "sub", "exp", "iat"]})
assert c["sub"] == "bench-0" and c["idp"] == "http://127.0.0.1:18000", c
print(f"a {len(tok)}-byte ES256 JWT (kid {kid}) verifying against the proxy's JWKS: iss {c['iss']},"
      f" aud {c['aud']}, sub {c['sub']}, groups {c['groups']}, exp - iat {c['exp'] - c['iat']} s")
EOF
)

# check_header on|off: what the backend receives under X-Portcullis-Assertion for ONE_TOKEN, sent
# with a forged X-Portcullis-Assertion of the client's own (which must never arrive).
HEADER_ON=""
HEADER_OFF=""
check_header() {
    local want=$1 got
    got=$(curl -fsS --max-time 2 -H "Authorization: Bearer $ONE_TOKEN" -H "X-Portcullis-Assertion: forged" \
        "http://127.0.0.1:$PORTCULLIS_PORT/echo-assertion") || die "GET /echo-assertion through portcullis failed"
    if [[ "$want" == off ]]; then
        [[ -z "$got" ]] || die "assertions off, but the backend received X-Portcullis-Assertion: ${got:0:80}"
        HEADER_OFF="the backend received no X-Portcullis-Assertion (the client's forged one was removed)"
        return
    fi
    curl -fsS --max-time 2 "http://127.0.0.1:$PORTCULLIS_ADMIN_PORT/.well-known/jwks.json" >"$TMP/proxy-jwks.json" \
        || die "no JWKS on the admin listener"
    HEADER_ON=$("$PYTHON" -c "$VERIFY_PY" "$got" "$TMP/proxy-jwks.json" "$ISSUER" "$AUDIENCE") \
        || die "the assertion the backend received does not verify: ${got:0:80}"
    HEADER_ON="the backend received $HEADER_ON, not the client's forged one"
    log "$HEADER_ON"
}

# ---------------------------------------------------------------- wrk (as in load-bearer.sh)
WRK_CMD=()
wrk_cmd() {
    local duration=$1 url=$2 mode=$3
    WRK_CMD=(taskset -c "$CLIENT_CPU" wrk "-t$THREADS" "-c$CONNECTIONS" "-d$duration" --latency)
    case "$mode" in
        one) WRK_CMD+=(-H "Authorization: Bearer ${ONE_TOKEN_SHOWN:-$ONE_TOKEN}" "$url") ;;
        warm) WRK_CMD+=(-s "$BEARER_DIR/rotate.lua" "$url" -- "$IDP_DIR/tokens.txt" 0 "$WARMUP_TOKENS" "$THREADS") ;;
        rotate) WRK_CMD+=(-s "$BEARER_DIR/rotate.lua" "$url" -- "$IDP_DIR/tokens.txt" "$WARMUP_TOKENS" "$MEASURE_TOKENS" "$THREADS") ;;
        *) die "wrk_cmd: unknown mode $mode" ;;
    esac
}

declare -A RPS P50 P99 ERRS CPU TOKMIX MINTS NOISE QUIET
LABELS=()
# others_running: other CPU users we know of (compilers, tests, another load generator).
others_running() {
    local what=() p
    for p in rustc cargo wrk; do pgrep -x "$p" >/dev/null && what+=("$p"); done
    echo "${what[*]}"
}

# run_case LABEL CONF on|off one|rotate: fresh process, warm-up, measured run, stop.
run_case() {
    local label=$1 conf=$2 onoff=$3 mode=$4 out t0 t1 c0 c1 m0 m1 warm_mode=$4 before after
    [[ "$mode" == rotate ]] && warm_mode=warm
    out="$TMP/wrk-${label//[^A-Za-z0-9]/_}.txt"
    start_portcullis "$conf"
    check_header "$onoff"
    before=$(others_running)
    log "loadavg before '$label': $(cut -d' ' -f1-3 /proc/loadavg)"
    log "warm-up $label ($WARMUP)"
    wrk_cmd "$WARMUP" "http://127.0.0.1:$PORTCULLIS_PORT/" "$warm_mode"
    "${WRK_CMD[@]}" >"$out.warmup"
    wrk_cmd "$DURATION" "http://127.0.0.1:$PORTCULLIS_PORT/" "$mode"
    log "measure $label: ${WRK_CMD[*]:0:8} ..."
    sleep 0.5 # the audit writer drains the warm-up's events
    m0=$(mints)
    local k0 k1 q0 q1
    c0=$(cpu_ticks "$PORTCULLIS_PID")
    k0=$(core_ticks "$PROXY_CPU")
    q0=$(core_ticks "$CLIENT_CPU")
    t0=$(date +%s.%N)
    "${WRK_CMD[@]}" >"$out"
    t1=$(date +%s.%N)
    c1=$(cpu_ticks "$PORTCULLIS_PID")
    k1=$(core_ticks "$PROXY_CPU")
    q1=$(core_ticks "$CLIENT_CPU")
    after=$(others_running)
    sleep 0.5 # the audit writer drains
    m1=$(mints)
    cat "$out" >&2
    [[ "$onoff" == off ]] || check_header on # still there after the load
    stop_last
    parse_wrk "$label" "$out" "$mode"
    MINTS[$label]=$((m1 - m0))
    CPU[$label]=$(awk -v c="$((c1 - c0))" -v hz="$CLK_TCK" -v t0="$t0" -v t1="$t1" \
        'BEGIN { printf "%.0f", 100 * c / hz / (t1 - t0) }')
    # On the proxy's core: busy time not Portcullis's, and steal; on the client core: idle.
    NOISE[$label]=$(awk -v a="$k0" -v b="$k1" -v q="$q0" -v r="$q1" -v p="$((c1 - c0))" \
        -v hz="$CLK_TCK" -v t0="$t0" -v t1="$t1" 'BEGIN {
            split(a, x, " "); split(b, y, " "); split(q, u, " "); split(r, v, " "); w = 100 / hz / (t1 - t0)
            o = (y[1] - x[1] - p) * w; if (o < 0) o = 0
            printf "%.0f%% / %.0f%% / %.0f%%", o, (y[2] - x[2]) * w, (v[3] - u[3]) * w }')
    # Disturbed: something else ran (before or after), or took >= 5% of CPU 0 (other or steal).
    local why=() o st
    read -r o st < <(tr -d '%/' <<<"${NOISE[$label]}" | awk '{ print $1, $2 }')
    [[ -z "$before$after" ]] || why+=("$(tr ' ' '\n' <<<"$before $after" | awk NF | sort -u | paste -sd+ -) running")
    ((o < 5)) || why+=("CPU 0 other $o%")
    ((st < 5)) || why+=("steal $st%")
    if ((${#why[@]})); then
        QUIET[$label]="no: $(IFS=,; echo "${why[*]}")"
        log "NOTE: $label not quiet: ${why[*]}"
    else
        QUIET[$label]=yes
    fi
}

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { printf "%.2f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# median_of ARRAY CASE: the median of ARRAY["CASE #r"] over the rounds.
median_of() {
    local -n arr=$1
    local r vals=()
    for ((r = 1; r <= ROUNDS; r++)); do vals+=("${arr["$2 #$r"]}"); done
    median "${vals[@]}"
}

# ratio_row CASE NQUIET RATIO... QUIET_RATIO...: ROUNDS ratios, then NQUIET of them from quiet rounds.
ratio_row() {
    local name=$1 nq=$2 all=() q=() m mq="-"
    shift 2
    all=("${@:1:ROUNDS}")
    q=("${@:ROUNDS+1}")
    m=$(median "${all[@]}")
    ((nq == 0)) || mq="$(median "${q[@]}")x ($nq of $ROUNDS)"
    echo "| $name | ${all[*]} | **${m}x** | $mq | $(verdict "$m") (lowest round $(printf '%s\n' "${all[@]}" | sort -g | head -n1)x) |"
}

verdict() { awk -v r="$1" 'BEGIN { print (r >= 0.9 ? "met" : "NOT met") }'; }

# ---------------------------------------------------------------- main
IDP_DIR=""
ONE_TOKEN=""
ONE_TOKEN_SHOWN=""

main() {
    ensure_tools
    ulimit -n 65536 2>/dev/null || true
    portcullis_binary

    TMP=$(mktemp -d /tmp/portcullis-load-tokens.XXXXXX)
    trap cleanup_tokens EXIT
    trap 'exit 130' INT TERM
    rm -rf "$KEY_DIR" "$AUDIT_FILE"
    mkdir -m 0700 "$KEY_DIR"
    local conf
    for conf in "$CONF_OFF" "$CONF_ON"; do
        "$PORTCULLIS" check-config --config "$conf" >&2 || die "$PORTCULLIS rejects $conf"
    done

    start_idp_backend "$TOKENS_DIR/backend.nginx.conf"
    # The header checks of the two upstream ports themselves, straight to the backend.
    [[ $(http_code "http://127.0.0.1:18004/") == 500 ]] || die "backend :18004 accepts a request without an assertion"
    [[ $(curl -sS -o /dev/null -w '%{http_code}' -H 'X-Portcullis-Assertion: eyJa.b.c' http://127.0.0.1:18004/) == 200 ]] \
        || die "backend :18004 refuses a JWT-shaped assertion"
    [[ $(curl -sS -o /dev/null -w '%{http_code}' -H 'X-Portcullis-Assertion: eyJa.b.c' http://127.0.0.1:18003/) == 500 ]] \
        || die "backend :18003 accepts a request with an assertion"

    # Round r: a b c d when r is odd, d c b a when even, so drift over the run hits on and off alike.
    local r t_start t_end
    t_start=$(date +%s)
    for ((r = 1; r <= ROUNDS; r++)); do
        if ((r % 2)); then
            run_case "(a) off, one token #$r" "$CONF_OFF" off one
            run_case "(b) on, one token #$r" "$CONF_ON" on one
            run_case "(c) on, many tokens #$r" "$CONF_ON" on rotate
            run_case "(d) off, many tokens #$r" "$CONF_OFF" off rotate
        else
            run_case "(d) off, many tokens #$r" "$CONF_OFF" off rotate
            run_case "(c) on, many tokens #$r" "$CONF_ON" on rotate
            run_case "(b) on, one token #$r" "$CONF_ON" on one
            run_case "(a) off, one token #$r" "$CONF_OFF" off one
        fi
    done
    t_end=$(date +%s)

    local report label x nerr=0 ratios_one=() ratios_many=()
    for label in "${LABELS[@]}"; do nerr=$((nerr + ERRS[$label])); done
    local quiet_one=() quiet_many=() on off
    for ((r = 1; r <= ROUNDS; r++)); do
        on="(b) on, one token #$r" off="(a) off, one token #$r"
        ratios_one+=("$(ratio "${RPS[$on]}" "${RPS[$off]}")")
        [[ "${QUIET[$on]}${QUIET[$off]}" != yesyes ]] || quiet_one+=("${ratios_one[-1]}")
        on="(c) on, many tokens #$r" off="(d) off, many tokens #$r"
        ratios_many+=("$(ratio "${RPS[$on]}" "${RPS[$off]}")")
        [[ "${QUIET[$on]}${QUIET[$off]}" != yesyes ]] || quiet_many+=("${ratios_many[-1]}")
    done
    ONE_TOKEN_SHOWN='<token>'
    report=$(
        echo "| run | tokens | req/s | p50 (ms) | p99 (ms) | assertions minted | errors | proxy CPU | proxy CPU µs/req | CPU 0 other / steal, CPU 1 idle | quiet |"
        echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        for label in "${LABELS[@]}"; do
            printf '| %s | %s | %.0f | %s | %s | %s | %s | %s%% | %s | %s | %s |\n' "$label" "${TOKMIX[$label]}" \
                "${RPS[$label]}" "${P50[$label]}" "${P99[$label]}" "${MINTS[$label]}" "${ERRS[$label]}" "${CPU[$label]}" \
                "$(awk -v c="${CPU[$label]}" -v r="${RPS[$label]}" 'BEGIN { printf "%.1f", c * 10000 / r }')" "${NOISE[$label]}" "${QUIET[$label]}"
        done
        echo
        echo "Medians over the $ROUNDS rounds:"
        echo
        echo "| case | req/s | p50 (ms) | p99 (ms) |"
        echo "|---|---:|---:|---:|"
        for x in "(a) off, one token" "(b) on, one token" "(d) off, many tokens" "(c) on, many tokens"; do
            printf '| %s | %.0f | %s | %s |\n' "$x" "$(median_of RPS "$x")" "$(median_of P50 "$x")" "$(median_of P99 "$x")"
        done
        echo
        echo "| case | on / off req/s, per round | median | median of quiet rounds | target >= 0.90x (median) |"
        echo "|---|---|---:|---:|---|"
        ratio_row "one token (b / a)" "${#quiet_one[@]}" "${ratios_one[@]}" "${quiet_one[@]}"
        ratio_row "many tokens (c / d)" "${#quiet_many[@]}" "${ratios_many[@]}" "${quiet_many[@]}"
        echo
        echo "- header, off: $HEADER_OFF"
        echo "- header, on: $HEADER_ON"
        echo "- every measured request went to a backend port that answers 500 without the header (on) or"
        echo "  with it (off): errors 0 means each one arrived as expected"
        echo "- assertions minted: assertion_minted audit events during the measured run; proxy CPU: its"
        echo "  CPU time during the measured run (% of one core), and that divided by the requests;"
        echo "  CPU 0 other / steal: user+system time on CPU 0 not Portcullis's, and time the hypervisor took"
        echo "  (noise on the proxy's core); CPU 1 idle: headroom left on the wrk + backend core"
        echo "- quiet: no rustc, cargo or other wrk before or after the run, CPU 0 other and steal < 5%;"
        echo "  a round counts as quiet for a case when both its on and off runs were"
        echo
        echo "- measured: $(date -u -d "@$t_start" '+%Y-%m-%dT%H:%M:%SZ') to $(date -u -d "@$t_end" '+%H:%M:%SZ')," \
            "$ROUNDS rounds; each run ${DURATION} after a ${WARMUP} warm-up, in a fresh Portcullis process"
        wrk_cmd "$DURATION" "http://127.0.0.1:18080/" one
        echo "- wrk, one token: \`$(shell_join "${WRK_CMD[@]}")\`"
        wrk_cmd "$DURATION" "http://127.0.0.1:18080/" rotate
        echo "- wrk, many tokens: \`$(shell_join "${WRK_CMD[@]}" | sed "s#$TMP#\$TMP#g; s#$ROOT/##g")\`" \
            "(warm-up: tokens 0..$((WARMUP_TOKENS - 1)))"
        echo "- portcullis: \`$PORTCULLIS serve --config $CONF_OFF\` (off) or \`$CONF_ON\` (on)"
        echo "- backend + IdP documents: \`nginx -c benches/load/tokens/backend.nginx.conf\`;" \
            "tokens: \`benches/load/bearer/mint.py --count $((WARMUP_TOKENS + MEASURE_TOKENS))\`"
        echo "- pinning: Portcullis on CPU $PROXY_CPU (worker_threads = 1); wrk and the backend nginx on CPU $CLIENT_CPU"
        echo "- nproc: $(nproc); kernel: $(uname -srm); $(nginx -v 2>&1 | sed 's/^nginx version: //');" \
            "$(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2); binary sha256 $(sha256sum "$PORTCULLIS" | cut -c1-12)"
    )
    printf '\n%s\n' "$report"
    if [[ -n "${OUT:-}" ]]; then
        printf '%s\n' "$report" >"$OUT"
        log "report written to $OUT"
    fi
    ((nerr == 0)) || die "$nerr errors (non-2xx or socket errors) in the measured runs: the numbers are not valid"
}

main "$@"
