#!/usr/bin/env bash
# Session-store load benchmark: the same browser-session route with sessions in this process's
# memory and in Redis, 1,000 distinct signed-in sessions, one core for the proxy. Companion of
# benches/load.sh (same layout, same measurement).
#
#   PORTCULLIS=target/release/portcullis benches/load-sessions.sh   # use an existing binary
#   benches/load-sessions.sh                                        # builds target/release/portcullis first
#   OUT=load-sessions.md benches/load-sessions.sh                   # also write the report to a file
#
# What is measured (the proxy alone on CPU 0, one worker thread; wrk, the backend nginx, the demo
# identity provider and redis-server on CPU 1):
#   memory store, 50 conns   wrk over the 1,000 session cookies in turn (benches/load/sessions/cookies.lua)
#   redis store, 50 conns    the same, sessions in a local redis-server: each request reads its
#                            session there (GETEX), one round trip on loopback
#   memory / redis, 1 conn   one request at a time: the latency of a session read without queueing
#                            (for Redis, what one cache miss costs a request)
# The rounds alternate memory and redis ROUNDS times, so a drift of the machine shows in both.
# Before each store's runs the script signs in SESSIONS times through the proxy at
# `portcullis demo idp` (benches/load/sessions/signin.py, Python's standard library).
#
# Environment knobs (defaults in brackets):
#   PORTCULLIS      binary to run; when unset the script runs `cargo build --release`
#   OUT             file to write the Markdown report to as well as stdout
#   DURATION [10s]  wrk measurement length        WARMUP [3s] wrk warm-up length
#   CONNECTIONS [50] wrk -c                       THREADS [1] wrk -t
#   SESSIONS [1000] distinct signed-in sessions   ROUNDS [2] memory/redis alternations
#   KEEP_TMP=1      keep the temp dir (config, cookies, logs, wrk outputs) and the audit file
#
# Exits non-zero when any measured run had a non-2xx response or socket error (a 401 would mean
# the sessions were not found), after printing the report.
#
# Needs: nginx-light, wrk, haproxy, curl, taskset, redis-server, python3.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CONF_DIR="$ROOT/benches/load"
# shellcheck source=load/common.sh
source "$CONF_DIR/common.sh"
SESSIONS_DIR="$CONF_DIR/sessions"

DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-3s}"
CONNECTIONS="${CONNECTIONS:-50}"
THREADS="${THREADS:-1}"
SESSIONS="${SESSIONS:-1000}"
ROUNDS="${ROUNDS:-2}"
KEEP_TMP="${KEEP_TMP:-0}"
PYTHON="${PYTHON:-python3}"

BACKEND_PORT=18000
IDP_PORT=18400
REDIS_PORT=18379
PORTCULLIS_PORT=18080
PORTCULLIS_ADMIN_PORT=19090
AUDIT_FILE="/tmp/portcullis-bench-sessions-audit.jsonl"
PROXY="http://127.0.0.1:$PORTCULLIS_PORT"

CLK_TCK=$(getconf CLK_TCK)
CLIENT_CPU=1 # wrk, the backend, the identity provider, Redis
PROXY_CPU=0  # the proxy under test

TMP=""
PIDS=()

http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" || true; }

start_idp() {
    port_free "$IDP_PORT" || die "127.0.0.1:$IDP_PORT is already in use"
    taskset -c "$CLIENT_CPU" "$PORTCULLIS" demo idp --listen "127.0.0.1:$IDP_PORT" \
        --redirect-uri "$PROXY/.portcullis/callback" 2>"$TMP/idp.log" &
    PIDS+=($!)
    local i
    for ((i = 1; i <= 100; i++)); do
        [[ $(http_code "http://127.0.0.1:$IDP_PORT/.well-known/openid-configuration") == 200 ]] && return 0
        sleep 0.1
    done
    tail -n 20 "$TMP/idp.log" >&2
    die "the demo identity provider did not start"
}

start_redis() {
    port_free "$REDIS_PORT" || die "127.0.0.1:$REDIS_PORT is already in use"
    mkdir -p "$TMP/redis"
    taskset -c "$CLIENT_CPU" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' \
        --appendonly no --dir "$TMP/redis" --logfile "$TMP/redis/redis.log" &
    PIDS+=($!)
    local i
    for ((i = 1; i <= 100; i++)); do
        redis-cli -p "$REDIS_PORT" PING 2>/dev/null | grep -q PONG && return 0
        sleep 0.1
    done
    die "redis-server did not start"
}

# write_config STORE: the proxy's configuration for STORE (memory or redis) at $TMP/STORE.toml.
write_config() {
    local store=$1 conf="$TMP/$1.toml"
    cat >"$conf" <<TOML
[server]
http = "127.0.0.1:$PORTCULLIS_PORT"

[admin]
listen = "127.0.0.1:$PORTCULLIS_ADMIN_PORT"

[runtime]
worker_threads = 1

[audit]
path = "$AUDIT_FILE"

[sessions]
store = "$store"
max_sessions = 100000

[[identity_providers]]
name = "demo"
issuer = "http://127.0.0.1:$IDP_PORT"
audiences = ["api://airflow"]
algorithms = ["ES256"]
[identity_providers.browser]
client_id = "portcullis"
client_secret_file = "$ROOT/examples/quickstart/client-secret"

[[routes]]
name = "app"
hosts = ["127.0.0.1"]
access = "authenticated"
identity_providers = ["demo"]
[routes.upstream]
url = "http://127.0.0.1:$BACKEND_PORT"
TOML
    if [[ "$store" == redis ]]; then
        cat >>"$conf" <<TOML

[sessions.redis]
url = "redis://127.0.0.1:$REDIS_PORT"
encryption_key_file = "$TMP/session-key"
TOML
    fi
}

PORTCULLIS_PID=""
start_portcullis() { # start_portcullis STORE
    local conf="$TMP/$1.toml" i code
    port_free "$PORTCULLIS_PORT" || die "127.0.0.1:$PORTCULLIS_PORT is already in use"
    rm -f "$AUDIT_FILE"
    taskset -c "$PROXY_CPU" "$PORTCULLIS" serve --config "$conf" >>"$TMP/portcullis-$1.log" 2>&1 &
    PORTCULLIS_PID=$!
    PIDS+=("$PORTCULLIS_PID")
    for ((i = 1; i <= 100; i++)); do
        kill -0 "$PORTCULLIS_PID" 2>/dev/null || { tail -n 30 "$TMP/portcullis-$1.log" >&2; die "portcullis exited"; }
        code=$(http_code "http://127.0.0.1:$PORTCULLIS_ADMIN_PORT/readyz")
        [[ "$code" == 200 ]] && return 0
        sleep 0.1
    done
    die "portcullis /readyz: $code after 10 s"
}

declare -A RPS P50 P99 ERRS CPU CPU_US
LABELS=()

# measure LABEL CONNECTIONS: warm up, measure over the cookies in $COOKIES, record the proxy's
# CPU use (percent of one core) and CPU time per request.
measure() {
    local label=$1 conns=$2 out c0 c1 t0 t1 requests
    out="$TMP/wrk-${label//[^A-Za-z0-9]/_}.txt"
    local cmd=(taskset -c "$CLIENT_CPU" wrk "-t$THREADS" "-c$conns" --latency -s "$SESSIONS_DIR/cookies.lua")
    log "warm-up $label ($WARMUP)"
    "${cmd[@]}" "-d$WARMUP" "$PROXY/" >/dev/null
    log "measure $label: ${cmd[*]} -d$DURATION $PROXY/"
    c0=$(cpu_ticks "$PORTCULLIS_PID")
    t0=$(date +%s.%N)
    "${cmd[@]}" "-d$DURATION" "$PROXY/" >"$out"
    t1=$(date +%s.%N)
    c1=$(cpu_ticks "$PORTCULLIS_PID")
    cat "$out" >&2
    parse_wrk "$label" "$out"
    requests=$(awk '/requests in/ {print $1; exit}' "$out")
    CPU[$label]=$(awk -v c="$((c1 - c0))" -v hz="$CLK_TCK" -v t0="$t0" -v t1="$t1" \
        'BEGIN { printf "%.0f", 100 * c / hz / (t1 - t0) }')
    CPU_US[$label]=$(awk -v c="$((c1 - c0))" -v hz="$CLK_TCK" -v n="$requests" \
        'BEGIN { if (n > 0) printf "%.1f", 1e6 * c / hz / n; else print "n/a" }')
}

# round STORE N: a fresh proxy on STORE, SESSIONS sign-ins, then the two measurements.
round() {
    local store=$1 n=$2
    start_portcullis "$store"
    log "signing in $SESSIONS times ($store store)"
    export COOKIES="$TMP/cookies-$store.txt"
    "$PYTHON" "$SESSIONS_DIR/signin.py" "$PROXY" "$SESSIONS" >"$COOKIES"
    [[ $(sort -u "$COOKIES" | wc -l) == "$SESSIONS" ]] || die "not $SESSIONS distinct sessions in $COOKIES"
    measure "$store store, ${CONNECTIONS} conns, round $n" "$CONNECTIONS"
    measure "$store store, 1 conn, round $n" 1
    stop_last
}

main() {
    ensure_tools redis-server
    command -v "$PYTHON" >/dev/null || die "python3 not found"
    ulimit -n 65536 2>/dev/null || true
    portcullis_binary

    TMP=$(mktemp -d /tmp/portcullis-load-sessions.XXXXXX)
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    openssl rand -hex 32 >"$TMP/session-key"

    start_nginx backend "$CONF_DIR/backend.nginx.conf" "$CLIENT_CPU" "$BACKEND_PORT"
    start_idp
    start_redis
    write_config memory
    write_config redis
    local n
    for ((n = 1; n <= ROUNDS; n++)); do
        round memory "$n"
        round redis "$n"
    done

    local report label mem_sum=0 red_sum=0 failed=0
    for ((n = 1; n <= ROUNDS; n++)); do
        mem_sum=$(awk -v a="$mem_sum" -v b="${RPS["memory store, ${CONNECTIONS} conns, round $n"]}" 'BEGIN {print a + b}')
        red_sum=$(awk -v a="$red_sum" -v b="${RPS["redis store, ${CONNECTIONS} conns, round $n"]}" 'BEGIN {print a + b}')
    done
    for label in "${LABELS[@]}"; do ((ERRS[$label] == 0)) || failed=1; done
    report=$(
        echo "## Portcullis session-store benchmark"
        echo
        echo "| run | req/s | p50 (ms) | p99 (ms) | errors | proxy CPU | CPU per request (µs) |"
        echo "|---|---:|---:|---:|---:|---:|---:|"
        for label in "${LABELS[@]}"; do
            printf '| %s | %.0f | %s | %s | %s | %s%% | %s |\n' "$label" "${RPS[$label]}" \
                "${P50[$label]}" "${P99[$label]}" "${ERRS[$label]}" "${CPU[$label]}" "${CPU_US[$label]}"
        done
        echo
        echo "Redis store / memory store throughput at ${CONNECTIONS} connections (sum over the rounds):" \
            "$(ratio "$red_sum" "$mem_sum")."
        echo
        echo "- $SESSIONS distinct sessions (alice signed in $SESSIONS times), wrk sends them in turn" \
            "(\`benches/load/sessions/cookies.lua\`); every request is a session read and a forward"
        echo "- wrk: \`wrk -t$THREADS -c<conns> -d$DURATION --latency -s benches/load/sessions/cookies.lua\`" \
            "after a $WARMUP warm-up"
        echo "- pinning: proxy on CPU $PROXY_CPU (worker_threads = 1); wrk, backend nginx, demo idp and" \
            "redis-server on CPU $CLIENT_CPU"
        echo "- date: $(date -u '+%Y-%m-%dT%H:%M:%SZ'); nproc: $(nproc); kernel: $(uname -srm);" \
            "load average before: $LOAD_BEFORE"
        echo "- versions: $(redis-server --version | cut -d' ' -f1-3); $(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2)"
    )
    printf '\n%s\n' "$report"
    if [[ -n "${OUT:-}" ]]; then
        printf '%s\n' "$report" >"$OUT"
        log "report written to $OUT"
    fi
    ((failed == 0)) || die "some runs had errors (see above)"
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
main "$@"
