#!/usr/bin/env bash
# Body-scoped authorization under load: Airflow's bulk task-instance PATCH with ENTRIES entities
# (default 10), each naming its DAG, decided two ways by one Portcullis binary:
#   path only     a one-rule template decides the DAG in the path; the body streams through unread
#   body-scoped   the built-in airflow template reads the body (strict JSON, bounded) and decides
#                 every entity's DAG as well; the body goes upstream byte for byte
# Same token (verified once, then cached), same policy (every decision a cache hit after the
# first), same backend. Rounds alternate the two configurations; each Portcullis alone on CPU 0,
# wrk and the backend nginx on CPU 1. Per-request CPU = the proxy's CPU time over the measured
# run / requests answered.
#
#   PORTCULLIS=target/release/portcullis benches/load-body.sh
#   ROUNDS=3 ENTRIES=10 DURATION=10s OUT=body.md benches/load-body.sh
#
# Needs: nginx-light, wrk, curl, taskset, python3 (benches/load/bearer/mint.py mints the token).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CONF_DIR="$ROOT/benches/load"
# shellcheck source=load/common.sh
source "$CONF_DIR/common.sh"
BEARER_DIR="$ROOT/benches/load/bearer"
BODY_DIR="$ROOT/benches/load/body"

DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-3s}"
CONNECTIONS="${CONNECTIONS:-50}"
ROUNDS="${ROUNDS:-2}"
ENTRIES="${ENTRIES:-10}"
KEEP_TMP="${KEEP_TMP:-0}"
PYTHON="${PYTHON:-python3}"
WARMUP_TOKENS=0
MEASURE_TOKENS=1

BACKEND_PORT=18000
PORTCULLIS_PORT=18080
PORTCULLIS_ADMIN_PORT=19090
AUDIT_FILE="/tmp/portcullis-bench-body-audit.jsonl" # must match [audit] path in the configs
TARGET="/api/v2/dags/etl_1/dagRuns/r1/taskInstances"

CLK_TCK=$(getconf CLK_TCK)
CLIENT_CPU=1
PROXY_CPU=0

TMP=""
PIDS=()
PORTCULLIS_PID=""
declare -A RPS P50 P99 ERRS TOKMIX
LABELS=()
declare -A USPR
CPU_NOTES=()

# wrk_run DURATION: the bulk PATCH at the running Portcullis for DURATION.
wrk_run() {
    taskset -c "$CLIENT_CPU" wrk -t1 "-c$CONNECTIONS" "-d$1" --latency -s "$BODY_DIR/patch.lua" \
        "http://127.0.0.1:$PORTCULLIS_PORT$TARGET" -- "$ONE_TOKEN" "$ENTRIES"
}

# measure LABEL: warm up, then measure the running Portcullis; records µs of CPU per request.
measure() {
    local label=$1 out t0 t1 c0 c1
    out="$TMP/wrk-${label//[^A-Za-z0-9]/_}.txt"
    if pgrep -x rustc >/dev/null; then CPU_NOTES+=("rustc running during '$label'"); fi
    wrk_run "$WARMUP" >"$out.warmup"
    c0=$(cpu_ticks "$PORTCULLIS_PID")
    t0=$(date +%s.%N)
    wrk_run "$DURATION" >"$out"
    t1=$(date +%s.%N)
    c1=$(cpu_ticks "$PORTCULLIS_PID")
    cat "$out" >&2
    parse_wrk "$label" "$out"
    USPR[$label]=$(awk -v c="$((c1 - c0))" -v hz="$CLK_TCK" -v t0="$t0" -v t1="$t1" -v r="${RPS[$label]}" \
        'BEGIN { printf "%.1f", 1e6 * (c / hz) / ((t1 - t0) * r) }')
}

# run_one NAME CONF ROUND: a fresh Portcullis with CONF, which must answer the bulk PATCH 200,
# measured, then stopped.
run_one() {
    local name=$1 conf=$2 round=$3
    launch_portcullis "$conf" readyz
    local code
    code=$(curl -sS -o /dev/null -w '%{http_code}' -X PATCH -H "Authorization: Bearer $ONE_TOKEN" \
        -H 'Content-Type: application/json' --data '{"actions":[{"action":"update","entities":[{"dag_id":"etl_1","task_id":"t"}]}]}' \
        "http://127.0.0.1:$PORTCULLIS_PORT$TARGET")
    [[ "$code" == 200 ]] || die "$name answered $code to the bulk PATCH"
    measure "$name, round $round"
    stop_last
}

main() {
    ensure_tools
    ulimit -n 65536 2>/dev/null || true
    portcullis_binary
    for conf in portcullis-path.toml portcullis-body.toml; do
        "$PORTCULLIS" check-config --config "$BODY_DIR/$conf" >&2
    done
    TMP=$(mktemp -d /tmp/portcullis-load-body.XXXXXX)
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    start_idp_backend "$BEARER_DIR/backend.nginx.conf"

    local r
    for ((r = 1; r <= ROUNDS; r++)); do
        run_one "path only" "$BODY_DIR/portcullis-path.toml" "$r"
        run_one "body-scoped, $ENTRIES entities" "$BODY_DIR/portcullis-body.toml" "$r"
    done

    local report label path_sum=0 body_sum=0 n=0
    for ((r = 1; r <= ROUNDS; r++)); do
        path_sum=$(awk -v a="$path_sum" -v b="${USPR["path only, round $r"]}" 'BEGIN { print a + b }')
        body_sum=$(awk -v a="$body_sum" -v b="${USPR["body-scoped, $ENTRIES entities, round $r"]}" 'BEGIN { print a + b }')
        n=$((n + 1))
    done
    report=$(
        echo "| row | req/s | p50 (ms) | p99 (ms) | µs CPU/req | errors |"
        echo "|---|---:|---:|---:|---:|---:|"
        for label in "${LABELS[@]}"; do
            printf '| %s | %.0f | %s | %s | %s | %s |\n' "$label" "${RPS[$label]}" "${P50[$label]}" \
                "${P99[$label]}" "${USPR[$label]}" "${ERRS[$label]}"
        done
        awk -v p="$path_sum" -v b="$body_sum" -v n="$n" 'BEGIN {
            printf "| mean, path only | | | | %.1f | |\n| mean, body-scoped | | | | %.1f | |\n", p / n, b / n
            printf "\nBody-scoped authorization adds **%.1f µs** of CPU per request (**%+.1f %%**).\n", (b - p) / n, 100 * (b - p) / p }'
        ((${#CPU_NOTES[@]})) && echo && echo "**Not quiet:** ${CPU_NOTES[*]}."
        echo
        echo "- request: \`PATCH $TARGET\`, $ENTRIES entities (benches/load/body/patch.lua), one bearer token"
        echo "- wrk: \`taskset -c $CLIENT_CPU wrk -t1 -c$CONNECTIONS -d$DURATION --latency -s benches/load/body/patch.lua URL -- TOKEN $ENTRIES\` after a $WARMUP warm-up"
        echo "- portcullis: \`$PORTCULLIS serve --config benches/load/body/portcullis-{path,body}.toml\` on CPU $PROXY_CPU"
        echo "- date: $(date -u '+%Y-%m-%dT%H:%M:%SZ'); nproc: $(nproc); kernel: $(uname -srm)"
    )
    printf '\n%s\n' "$report"
    [[ -z "${OUT:-}" ]] || printf '%s\n' "$report" >"$OUT"
    local nerr=0
    for label in "${LABELS[@]}"; do nerr=$((nerr + ERRS[$label])); done
    ((nerr == 0)) || die "$nerr errors in the measured runs: the numbers are not valid"
}

main "$@"
