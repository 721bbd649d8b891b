# Shared by the benches/load*.sh scripts (sourced, not run): logging, stopping the servers a run
# started, port checks, /proc readings, wrk report parsing and the report's command lines. The
# sourcing script sets TMP, PIDS, KEEP_TMP and AUDIT_FILE.

log() { printf '==> %s\n' "$*" >&2; }

die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

stop_pid() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    local pid
    for pid in "${PIDS[@]}"; do
        stop_pid "$pid"
    done
    if [[ -n "$TMP" && -d "$TMP" ]]; then
        if [[ "$KEEP_TMP" == 1 ]]; then
            log "kept temp dir $TMP"
        else
            rm -rf "$TMP"
        fi
    fi
    [[ "$KEEP_TMP" == 1 ]] || rm -f "$AUDIT_FILE"
    exit "$rc"
}

# stop_last: stop the most recently started server and forget it.
stop_last() {
    local pid=${PIDS[-1]}
    unset 'PIDS[-1]'
    stop_pid "$pid"
}

# port_free PORT: true when nothing accepts connections on 127.0.0.1:PORT.
port_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# proc_kb PID FIELD: a VmXXX value from /proc/PID/status, in kB.
proc_kb() {
    awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"
}

# cpu_ticks PID: user+system CPU ticks of PID and its direct children (nginx workers).
# /proc/PID/stat already sums all threads of a process (Portcullis's Tokio workers).
cpu_ticks() {
    local root=$1 f rest total=0 pid ppid ut st
    for f in /proc/[0-9]*/stat; do
        { read -r rest <"$f"; } 2>/dev/null || continue
        pid=${rest%% *}
        rest=${rest##*) } # fields after "(comm) ": state ppid ... (utime is field 14 overall)
        read -r _ ppid _ _ _ _ _ _ _ _ _ ut st _ <<<"$rest"
        if [[ "$pid" == "$root" || "$ppid" == "$root" ]]; then
            total=$((total + ut + st))
        fi
    done
    echo "$total"
}

# to_ms VALUE: wrk duration ("412.00us", "1.23ms", "2.00s", "1.50m") -> milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") m = n / 1000; else if (u == "ms") m = n; else if (u == "s") m = n * 1000;
        else if (u == "m") m = n * 60000; else if (u == "h") m = n * 3600000; else m = -1
        printf "%.3f", m }'
}

# ensure_tools [PACKAGE...]: installs nginx-light, wrk, haproxy, curl and taskset when missing,
# plus any extra Debian packages the caller names.
# Sets PORTCULLIS to the binary to measure: the one named by $PORTCULLIS, else a fresh
# `cargo build --release` (in $CARGO_TARGET_DIR when set).
portcullis_binary() {
    if [[ -z "${PORTCULLIS:-}" ]]; then
        log "cargo build --release"
        cargo build --release --bin portcullis >&2
        PORTCULLIS="${CARGO_TARGET_DIR:-$ROOT/target}/release/portcullis"
    fi
    [[ -x "$PORTCULLIS" ]] || die "Portcullis binary $PORTCULLIS not found or not executable"
}

ensure_tools() {
    local missing=("$@")
    command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx-light)
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)
    command -v haproxy >/dev/null 2>&1 || [[ -x /usr/sbin/haproxy ]] || missing+=(haproxy)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
    if ((${#missing[@]})); then
        log "installing missing packages: ${missing[*]}"
        local sudo=()
        [[ $(id -u) -eq 0 ]] || sudo=(sudo)
        # Try without refreshing the index first; run `apt-get update` only if that fails.
        if ! DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y "${missing[@]}" >&2; then
            log "apt-get install failed; running apt-get update once and retrying"
            "${sudo[@]}" apt-get update >&2
            DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y "${missing[@]}" >&2
        fi
    fi
    export PATH="$PATH:/usr/sbin:/sbin"
    command -v nginx >/dev/null || die "nginx not found after install"
    command -v haproxy >/dev/null || die "haproxy not found after install"
    command -v wrk >/dev/null || die "wrk not found after install"
}

# wait_ready NAME PORT PID LOGFILE [TOKEN]: poll until GET / (with the bearer token if given) answers
# 200 "ok" (bounded), or fail.
wait_ready() {
    local name=$1 port=$2 pid=$3 logfile=$4 token=${5:-} tries=100 i body args
    args=(-fsS --max-time 1)
    [[ -n "$token" ]] && args+=(-H "Authorization: Bearer $token")
    for ((i = 1; i <= tries; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name exited during start-up; last lines of $logfile:"
            tail -n 30 "$logfile" >&2 || true
            die "$name did not come up on 127.0.0.1:$port"
        fi
        if body=$(curl "${args[@]}" "http://127.0.0.1:$port/" 2>/dev/null); then
            if [[ "$body" == "ok" ]]; then
                log "$name ready on 127.0.0.1:$port (after $i tries)"
                return 0
            fi
            log "$name on 127.0.0.1:$port answered unexpected body: ${body:0:200}"
        fi
        sleep 0.1
    done
    log "$name not ready after $tries tries; last lines of $logfile:"
    tail -n 30 "$logfile" >&2 || true
    curl -sS -i --max-time 1 "${args[@]:3}" "http://127.0.0.1:$port/" >&2 || true
    die "$name did not answer 200 \"ok\" on 127.0.0.1:$port"
}

# start_nginx NAME CONF CPU PORT: private nginx instance (own prefix, pid and logs under $TMP).
start_nginx() {
    local name=$1 conf=$2 cpu=$3 port=$4
    local prefix="$TMP/$name"
    mkdir -p "$prefix"
    port_free "$port" || die "127.0.0.1:$port is already in use; stop whatever listens there"
    nginx -t -q -c "$conf" -p "$prefix/" -e "$prefix/error.log" >"$prefix/stdout.log" 2>&1 \
        || { cat "$prefix/stdout.log" >&2; die "nginx config $conf is invalid"; }
    taskset -c "$cpu" nginx -c "$conf" -p "$prefix/" -e "$prefix/error.log" -g 'daemon off;' \
        >>"$prefix/stdout.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_ready "$name" "$port" "$pid" "$prefix/error.log"
}

# http_code URL [TOKEN]: the status code of a GET (000 when nothing answers).
http_code() {
    local args=(-sS -o /dev/null -w '%{http_code}' --max-time 2)
    [[ -n "${2:-}" ]] && args+=(-H "Authorization: Bearer $2")
    curl "${args[@]}" "$1" 2>/dev/null || true
}

# shell_join ARGS...: the words as one copy-pasteable command line.
shell_join() {
    local w out=()
    for w in "$@"; do
        if [[ "$w" =~ [^A-Za-z0-9_./:=,@%+-] ]]; then out+=("'$w'"); else out+=("$w"); fi
    done
    echo "${out[*]}"
}

# parse_wrk LABEL OUT [MODE]: a `wrk --latency` report into RPS, P50 and P99 (ms) and ERRS
# (non-2xx responses plus socket errors) under LABEL, appended to LABELS. With MODE (plain, one,
# or rotate: benches/load/bearer/rotate.lua's summary line) also TOKMIX. The sourcing script
# declares the arrays.
parse_wrk() {
    local label=$1 out=$2 mode=${3:-} rps p50 p99 non2xx sock sent distinct
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
    p50=$(awk '$1 == "50%" {print $2; exit}' "$out")
    p99=$(awk '$1 == "99%" {print $2; exit}' "$out")
    [[ -n "$rps" && -n "$p50" && -n "$p99" ]] || die "could not parse wrk output for $label ($out)"
    non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$out")
    # "Socket errors: connect 0, read 0, write 0, timeout 0"
    sock=$(awk '/Socket errors:/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$out")
    LABELS+=("$label")
    RPS[$label]=$rps
    P50[$label]=$(to_ms "$p50")
    P99[$label]=$(to_ms "$p99")
    ERRS[$label]=$((${non2xx:-0} + ${sock:-0}))
    case "$mode" in
        "") ;;
        plain) TOKMIX[$label]="no token" ;;
        one) TOKMIX[$label]="1 token" ;;
        rotate)
            sent=$(sed -n 's/^bearer-rotate: sent=\([0-9]*\) distinct=\([0-9]*\).*/\1/p' "$out")
            distinct=$(sed -n 's/^bearer-rotate: sent=\([0-9]*\) distinct=\([0-9]*\).*/\2/p' "$out")
            [[ -n "$sent" && -n "$distinct" ]] || die "rotate.lua summary missing in $out"
            TOKMIX[$label]="$distinct distinct / $sent sent"
            if ((sent > distinct)); then
                log "NOTE: $label sent $sent requests over $distinct tokens: the slice wrapped," \
                    "$((sent - distinct)) requests repeated a token (raise MEASURE_TOKENS)"
            fi
            ;;
        *) die "parse_wrk: unknown mode $mode" ;;
    esac
    if ((ERRS[$label] > 0)); then
        log "WARNING: $label had ${non2xx:-0} non-2xx responses and ${sock:-0} socket errors"
    fi
}

# launch_portcullis CONF [readyz]: a fresh Portcullis serving CONF on PROXY_CPU (log in
# $TMP/portcullis; sets PORTCULLIS_PID). With `readyz` it first waits, 10 s at most, for the admin
# /readyz (200 once serving); then until GET / answers "ok" (with ONE_TOKEN when the sourcing
# script set one: that is once the issuer's keys are fetched).
launch_portcullis() {
    local conf=$1 dir="$TMP/portcullis" i code
    mkdir -p "$dir"
    port_free "$PORTCULLIS_PORT" || die "127.0.0.1:$PORTCULLIS_PORT is already in use"
    port_free "$PORTCULLIS_ADMIN_PORT" || die "127.0.0.1:$PORTCULLIS_ADMIN_PORT is already in use"
    rm -f "$AUDIT_FILE"
    taskset -c "$PROXY_CPU" "$PORTCULLIS" serve --config "$conf" >>"$dir/portcullis.log" 2>&1 &
    PORTCULLIS_PID=$!
    PIDS+=("$PORTCULLIS_PID")
    if [[ "${2:-}" == readyz ]]; then
        for ((i = 1; i <= 100; i++)); do
            kill -0 "$PORTCULLIS_PID" 2>/dev/null \
                || { tail -n 30 "$dir/portcullis.log" >&2; die "portcullis exited during start-up"; }
            code=$(http_code "http://127.0.0.1:$PORTCULLIS_ADMIN_PORT/readyz")
            [[ "$code" == 200 ]] && break
            sleep 0.1
        done
        [[ "$code" == 200 ]] || { tail -n 30 "$dir/portcullis.log" >&2; die "portcullis /readyz: $code after 10 s"; }
        log "portcullis /readyz 200 (after $i tries)"
    fi
    wait_ready portcullis "$PORTCULLIS_PORT" "$PORTCULLIS_PID" "$dir/portcullis.log" "${ONE_TOKEN:-}"
}

# check_auth NAME PORT: the proxy must refuse (401) a request without a token and every bad token
# mint.py wrote to $IDP_DIR/bad-tokens.txt, and accept (200) ONE_TOKEN: proof that it really
# checks what we think it checks.
check_auth() {
    local name=$1 port=$2 code case tok
    code=$(http_code "http://127.0.0.1:$port/")
    [[ "$code" == 401 ]] || die "$name answered $code (want 401) to a request without a token"
    while read -r case tok; do
        code=$(http_code "http://127.0.0.1:$port/" "$tok")
        [[ "$code" == 401 ]] || die "$name answered $code (want 401) to a bad token ($case)"
    done <"$IDP_DIR/bad-tokens.txt"
    code=$(http_code "http://127.0.0.1:$port/" "$ONE_TOKEN")
    [[ "$code" == 200 ]] || die "$name answered $code (want 200) to a valid token"
    log "$name: 401 without a token and for $(wc -l <"$IDP_DIR/bad-tokens.txt") bad tokens" \
        "($(cut -d' ' -f1 "$IDP_DIR/bad-tokens.txt" | paste -sd, -)); 200 for a valid one"
}

# start_idp_backend NGINX_CONF: mints WARMUP_TOKENS + MEASURE_TOKENS bearer tokens
# (benches/load/bearer/mint.py, run with PYTHON from BEARER_DIR) into $TMP/backend/idp (IDP_DIR;
# ONE_TOKEN is the first), then starts the backend nginx on CLIENT_CPU, which also serves the IdP
# documents from there.
start_idp_backend() {
    # The backend's prefix holds the IdP documents (nginx serves <prefix>/idp/*.json).
    IDP_DIR="$TMP/backend/idp"
    local total=$((WARMUP_TOKENS + MEASURE_TOKENS))
    log "minting $total tokens (warm-up slice $WARMUP_TOKENS, measured slice $MEASURE_TOKENS)"
    "$PYTHON" "$BEARER_DIR/mint.py" --out "$IDP_DIR" --count "$total"
    ONE_TOKEN=$(head -n1 "$IDP_DIR/tokens.txt")
    # nginx workers run as an unprivileged user: they must be able to read the IdP documents.
    chmod a+rx "$TMP" "$TMP/backend" "$IDP_DIR"
    chmod a+r "$IDP_DIR"/*.json
    start_nginx backend "$1" "$CLIENT_CPU" "$BACKEND_PORT"
    [[ $(http_code "http://127.0.0.1:$BACKEND_PORT/jwks") == 200 ]] || die "backend does not serve /jwks"
}
