#!/usr/bin/env bash
# Audit export benchmark: Portcullis with audit records written to the JSON-lines file
# (export OFF, benches/load/portcullis.toml, as in load.sh) against the same binary exporting them
# over OTLP to a local collector (export ON: rotel, gRPC and HTTP/protobuf), in one run, on the same
# core, consecutively. Then paced runs at a fixed request rate (default 22,000 req/s) to check
# "at least 20,000 audit spans/s sustained to a local collector without drops".
#
#   PORTCULLIS=target/release/portcullis benches/load-audit.sh   # use an existing binary
#   benches/load-audit.sh                                        # builds target/release/portcullis
#   OUT=audit.md benches/load-audit.sh                           # also write the report to a file
#
# Layout (2 cores assumed): Portcullis on CPU 0 alone (`taskset -c 0`, worker_threads = 1; its
# audit sealing and export threads run there too, so the export's cost lands on the proxy core).
# CPU 1 holds wrk, the backend nginx (benches/load/backend.nginx.conf) AND the collector
# (rotel-agent, blackhole exporter; COLLECTOR_CPU moves it). rotel runs for the whole script, so
# the OFF runs see the same neighbours on CPU 1 as the ON runs (it is idle then). Everything
# listens on 127.0.0.1 only (checked with ss after each start).
#
# Each max-rate measurement: start Portcullis with a fresh spool, warm up, wait until the warm-up's
# records are exported, read /metrics, measure with wrk, read /metrics, wait until every record is
# exported (or DRAIN_MAX), read /metrics again, stop Portcullis. Rounds alternate the order of the
# modes (round 1: as in MODES, round 2: reversed, ...) so a drift in machine load hits both sides.
#
# Environment knobs (defaults in brackets):
#   PORTCULLIS        binary; when unset: `cargo build --release`, target/release/portcullis
#   OUT               also write the Markdown report to this file
#   DURATION [10s]    wrk length of a max-rate run    WARMUP [3s] warm-up (and pacing probe) length
#   CONNECTIONS [50]  wrk -c of max-rate runs         THREADS [1] wrk -t
#   ROUNDS [3]        max-rate rounds over MODES
#   MODES ["off grpc http"]   modes of the max-rate rounds: off | grpc | http, optionally with a
#                     batch size: grpc:2048, http:2048 (overrides [audit.otlp] batch_size)
#   PACED_MODES ["off grpc http"]  modes of the paced runs ("" skips them)
#   RATE [22000]      target request rate of the paced runs
#   PACED_DURATION [30s]  length of a paced run       PACED_DELAY_MS [2] pause after each response
#   DRAIN_MAX [30]    seconds to wait for the pipeline to export what is queued or spooled
#   QUIET_PCT [15]    before each row, wait until the machine's other CPU use (over 1 s, in % of
#                     one core) is at most this: this machine is shared ...
#   QUIET_MAX [120]   ... but for no longer than this many seconds (then measure anyway, noted)
#   RETRIES [2]       measure a row again (up to this many times) when others disturbed it (see
#                     "disturbed" in the report); the last attempt is reported
#   COLLECTOR_CPU [1] the CPU rotel-agent is pinned to (with more than 2 cores, give it its own)
#   AUDIT_CPU [unset] move Portcullis's audit-seal and audit-export threads to this CPU after
#                     start (taskset -p on their thread ids); unset: they stay on CPU 0
#   ROTEL_AGENT       rotel-agent binary [tests/peers/collector/.venv/lib/python3.*/site-packages/rotel/rotel-agent]
#   KEEP_TMP=1        keep the temp dir (logs, wrk outputs, collector output), spool and audit file
#
# Needs: nginx, wrk, curl, taskset, ss (installed with apt-get if missing, via common.sh) and the
# collector venv (.ci/install-peers, or: python3.11 -m venv tests/peers/collector/.venv &&
# tests/peers/collector/.venv/bin/pip install -r tests/peers/collector/requirements.txt).
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
ROUNDS="${ROUNDS:-3}"
MODES="${MODES:-off grpc http}"
PACED_MODES="${PACED_MODES-off grpc http}"
RATE="${RATE:-22000}"
PACED_DURATION="${PACED_DURATION:-30s}"
PACED_DELAY_MS="${PACED_DELAY_MS:-2}"
DRAIN_MAX="${DRAIN_MAX:-30}"
QUIET_PCT="${QUIET_PCT:-15}"
QUIET_MAX="${QUIET_MAX:-120}"
RETRIES="${RETRIES:-2}"
KEEP_TMP="${KEEP_TMP:-0}"

BACKEND_PORT=18000         # benches/load/backend.nginx.conf
BACKEND_PID=""
PORTCULLIS_PORT=18080      # all benches/load/{portcullis,audit-otlp-*}.toml
PORTCULLIS_ADMIN_PORT=19090
ROTEL_GRPC_PORT=14317      # audit-otlp-grpc.toml
ROTEL_HTTP_PORT=14318      # audit-otlp-http.toml
AUDIT_FILE="/tmp/portcullis-bench-audit.jsonl"  # [audit] path in portcullis.toml
SPOOL_DIR="/tmp/portcullis-bench-audit-spool"   # [audit.spool] dir in audit-otlp-*.toml
PACED_LUA="$CONF_DIR/paced.lua"

CLK_TCK=$(getconf CLK_TCK)
CLIENT_CPU=1 # wrk, the backend and the collector
PROXY_CPU=0  # Portcullis
COLLECTOR_CPU="${COLLECTOR_CPU:-1}"
AUDIT_CPU="${AUDIT_CPU:-}"

TMP=""
PIDS=()

cleanup_audit() {
    local rc=$?
    [[ "$KEEP_TMP" == 1 ]] || rm -rf "$SPOOL_DIR"
    set +e          # (a failing `(exit rc)` must not end the handler here)
    (exit "$rc")    # hand rc on as $? to common.sh's cleanup
    cleanup         # common.sh: stops PIDS, removes TMP and AUDIT_FILE, exits with rc
}

find_rotel() {
    if [[ -n "${ROTEL_AGENT:-}" ]]; then
        [[ -x "$ROTEL_AGENT" ]] || die "ROTEL_AGENT=$ROTEL_AGENT is not executable"
        return
    fi
    local c
    for c in "$ROOT"/tests/peers/collector/.venv/lib/python3.*/site-packages/rotel/rotel-agent; do
        if [[ -x "$c" ]]; then
            ROTEL_AGENT=$c
            return
        fi
    done
    die "rotel-agent not found under tests/peers/collector/.venv (run .ci/install-peers) and ROTEL_AGENT unset"
}

# ---------------------------------------------------------------- servers
ROTEL_OUT=""
ROTEL_PID=""
start_rotel() {
    local dir="$TMP/rotel" i
    mkdir -p "$dir"
    port_free "$ROTEL_GRPC_PORT" || die "127.0.0.1:$ROTEL_GRPC_PORT is already in use"
    port_free "$ROTEL_HTTP_PORT" || die "127.0.0.1:$ROTEL_HTTP_PORT is already in use"
    ROTEL_OUT="$dir/stdout.jsonl"
    # --debug-log traces at the basic verbosity prints one line per export request received
    # ("Received traces.", with its span count), not the spans: that is how spans are counted.
    taskset -c "$COLLECTOR_CPU" "$ROTEL_AGENT" --log-format json start \
        --otlp-grpc-endpoint "127.0.0.1:$ROTEL_GRPC_PORT" \
        --otlp-http-endpoint "127.0.0.1:$ROTEL_HTTP_PORT" \
        --exporter blackhole --debug-log traces --debug-log-verbosity basic \
        --pid-file "$dir/rotel-agent.pid" --log-file "$dir/rotel-agent.log" \
        >"$ROTEL_OUT" 2>"$dir/stderr.log" &
    local pid=$!
    PIDS+=("$pid")
    ROTEL_PID=$pid
    for ((i = 1; i <= 100; i++)); do
        kill -0 "$pid" 2>/dev/null || { cat "$dir/stderr.log" "$ROTEL_OUT" >&2; die "rotel-agent exited"; }
        if ! port_free "$ROTEL_GRPC_PORT" && ! port_free "$ROTEL_HTTP_PORT"; then
            log "rotel-agent ready on 127.0.0.1:$ROTEL_GRPC_PORT (gRPC) and :$ROTEL_HTTP_PORT (HTTP)"
            return 0
        fi
        sleep 0.1
    done
    die "rotel-agent did not listen on 127.0.0.1:$ROTEL_GRPC_PORT/$ROTEL_HTTP_PORT"
}

# rotel_received: spans the collector reported receiving so far.
rotel_received() {
    awk -F'"spans":' '/"msg":"Received traces\."/ { split($2, a, /[,}]/); s += a[1] }
        END { printf "%.0f\n", s }' "$ROTEL_OUT"
}

# mode_config MODE: the config file for a mode (a temp copy when a batch size is given).
MODE_CONF=""
MODE_LABEL=""
mode_config() {
    local mode=${1%%:*} batch=""
    [[ "$1" == *:* ]] && batch=${1#*:}
    case "$mode" in
        off) MODE_CONF="$CONF_DIR/portcullis.toml"; MODE_LABEL="off: JSONL file" ;;
        grpc) MODE_CONF="$CONF_DIR/audit-otlp-grpc.toml"; MODE_LABEL="on: OTLP/gRPC" ;;
        http) MODE_CONF="$CONF_DIR/audit-otlp-http.toml"; MODE_LABEL="on: OTLP/HTTP" ;;
        *) die "unknown mode $1 (off, grpc, http, grpc:BATCH, http:BATCH)" ;;
    esac
    if [[ "$mode" != off ]]; then
        if [[ -n "$batch" ]]; then
            [[ "$batch" =~ ^[0-9]+$ ]] || die "bad batch size in mode $1"
            local copy="$TMP/audit-otlp-$mode-$batch.toml"
            sed "s/^batch_size = [0-9]*/batch_size = $batch/" "$MODE_CONF" >"$copy"
            grep -q "^batch_size = $batch\b" "$copy" || die "could not set batch_size in $copy"
            MODE_CONF=$copy
        else
            batch=$(awk -F'[ =#]+' '$1 == "batch_size" {print $2}' "$MODE_CONF")
        fi
        MODE_LABEL="$MODE_LABEL, batch ${batch:-1024}"
    fi
}

PORTCULLIS_PID=""
start_portcullis() { # start_portcullis CONF
    rm -rf "$SPOOL_DIR" # a spool left over would be replayed first
    launch_portcullis "$1"
    if [[ -n "$AUDIT_CPU" ]]; then
        local t name
        for t in /proc/"$PORTCULLIS_PID"/task/[0-9]*; do
            read -r name <"$t/comm" 2>/dev/null || continue
            if [[ "$name" == audit-seal || "$name" == audit-export ]]; then
                taskset -p -c "$AUDIT_CPU" "${t##*/}" >/dev/null || die "cannot move thread $name to CPU $AUDIT_CPU"
            fi
        done
    fi
}

# loopback_only: every listening socket of the processes started here is on 127.0.0.1.
loopback_only() {
    command -v ss >/dev/null || { log "ss not found: listener check skipped"; return 0; }
    local pid bad
    for pid in "${PIDS[@]}"; do
        bad=$(ss -ltnupH 2>/dev/null | grep -E "pid=$pid," | awk '$5 !~ /^127\.0\.0\.1:/ {print $5}' || true)
        [[ -z "$bad" ]] || die "process $pid listens beyond 127.0.0.1: $bad"
    done
}

# ---------------------------------------------------------------- readings
# read_metrics: sets M_EXP M_SPO M_REP M_DROP M_FAIL M_SPB (audit) and M_REQ (requests served).
read_metrics() {
    local text
    text=$(curl -fsS --max-time 2 "http://127.0.0.1:$PORTCULLIS_ADMIN_PORT/metrics") \
        || die "cannot read http://127.0.0.1:$PORTCULLIS_ADMIN_PORT/metrics"
    read -r M_EXP M_SPO M_REP M_DROP M_FAIL M_SPB M_REQ < <(awk '
        /^portcullis_audit_records_total\{outcome="exported"\}/ { e = $2 }
        /^portcullis_audit_records_total\{outcome="spooled"\}/  { s = $2 }
        /^portcullis_audit_records_total\{outcome="replayed"\}/ { p = $2 }
        /^portcullis_audit_records_total\{outcome="dropped"\}/  { d = $2 }
        /^portcullis_audit_export_failures_total/               { f = $2 }
        /^portcullis_audit_spool_bytes/                         { b = $2 }
        /^portcullis_requests_total\{/                          { r += $2 }
        END { printf "%.0f %.0f %.0f %.0f %.0f %.0f %.0f\n", e, s, p, d, f, b, r }' <<<"$text")
}

# drain MODE: wait (bounded) until every request's record left the pipeline: exported, replayed
# or dropped, with an empty spool. OFF: give the file writer a moment. Sets DRAINED (1/0).
DRAINED=1
drain() {
    local mode=$1 i
    DRAINED=1
    if [[ "$mode" == off ]]; then
        sleep 0.3
        return
    fi
    for ((i = 0; i < DRAIN_MAX * 5; i++)); do
        read_metrics
        if ((M_EXP + M_REP + M_DROP >= M_REQ && M_SPB == 0)); then
            return
        fi
        sleep 0.2
    done
    DRAINED=0
    log "WARNING: pipeline not drained after ${DRAIN_MAX}s (requests $M_REQ, exported $M_EXP," \
        "replayed $M_REP, dropped $M_DROP, spool $M_SPB bytes)"
}

# cpu_stat N: "busy steal" ticks of CPU N from /proc/stat (busy = user+nice+system+irq+softirq+steal).
cpu_stat() {
    awk -v c="cpu$1" '$1 == c { print $2 + $3 + $4 + $7 + $8 + $9, $9 }' /proc/stat
}

# wait_quiet: wait (at most QUIET_MAX s) until the CPU use of the whole machine over one second is
# at most QUIET_PCT % of one core. Called between rows, when only the idle backend and collector
# of this script run. Sets QUIET_WAITED (seconds) and QUIET_LAST (% at the last sample).
QUIET_WAITED=0
QUIET_LAST=0
wait_quiet() {
    local start=$SECONDS a b
    while :; do
        a=$(awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat)
        sleep 1
        b=$(awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat)
        QUIET_LAST=$(((b - a) * 100 / CLK_TCK))
        QUIET_WAITED=$((SECONDS - start))
        ((QUIET_LAST <= QUIET_PCT)) && return 0
        if ((QUIET_WAITED >= QUIET_MAX)); then
            log "WARNING: machine still busy (${QUIET_LAST}% of a core) after ${QUIET_WAITED}s: measuring anyway"
            return 0
        fi
        ((QUIET_WAITED % 15 == 1)) && log "waiting for a quiet machine (others use ${QUIET_LAST}% of a core)"
    done
}

# child_cpu FILE: saves the CPU times of this shell's finished children so far (bash `times`, run
# in this shell, not in a $(...) subshell, whose children are its own). Saved right before and
# after wrk, the difference is wrk's own CPU time.
child_cpu() {
    times >"$1"
}
times_children() { # times_children FILE: the children's user+sys seconds from a `times` output
    awk 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] } printf "%.3f\n", t }' "$1"
}

# thread_ticks PID FILE: "ticks<TAB>thread name" for each thread of PID (main = the Tokio runtime
# with worker_threads = 1; audit-seal = sealing and, with the file sink, writing; audit-export).
thread_ticks() {
    local t rest ut st name
    : >"$2"
    for t in /proc/"$1"/task/[0-9]*; do
        { read -r rest <"$t/stat" && read -r name <"$t/comm"; } 2>/dev/null || continue
        rest=${rest##*) }
        read -r _ _ _ _ _ _ _ _ _ _ _ ut st _ <<<"$rest"
        [[ "$t" == */task/"$1" ]] && name="main"
        printf '%s\t%s\n' "$((ut + st))" "$name" >>"$2"
    done
}

# thread_split FILE0 FILE1 REQUESTS: "name µs/req" per thread name, busiest first.
thread_split() {
    awk -F'\t' -v hz="$CLK_TCK" -v n="$3" 'NR == FNR { a[$2] += $1; next } { b[$2] += $1 }
        END { for (k in b) { v = 1e6 * (b[k] - a[k]) / hz / n; if (v >= 0.05) printf "%.1f %s\n", v, k } }' "$1" "$2" \
        | sort -rn | awk '{ printf "%s%s %s", (NR > 1 ? ", " : ""), $2, $1 } END { print "" }'
}

# thread_us FILE0 FILE1 REQUESTS NAME: µs per request of the threads called NAME (0.0 if none).
thread_us() {
    awk -F'\t' -v hz="$CLK_TCK" -v n="$3" -v k="$4" 'NR == FNR { if ($2 == k) a += $1; next }
        $2 == k { b += $1 } END { printf "%.1f\n", 1e6 * (b - a) / hz / n }' "$1" "$2"
}

# ---------------------------------------------------------------- wrk
WRK_CMD=()
WRK_OUT=""
run_wrk() { # run_wrk OUTFILE CONNECTIONS DURATION [paced]
    WRK_CMD=(taskset -c "$CLIENT_CPU" wrk "-t$THREADS" "-c$2" "-d$3" --latency)
    [[ "${4:-}" == paced ]] && WRK_CMD+=(-s "$PACED_LUA")
    WRK_CMD+=("http://127.0.0.1:$PORTCULLIS_PORT/")
    WRK_DELAY_MS="$PACED_DELAY_MS" "${WRK_CMD[@]}" >"$1"
}

wrk_rps() { awk '/^Requests\/sec:/ {printf "%.0f\n", $2}' "$1"; }

# calibrate: a paced probe run at CONN connections, then scale CONN to hit RATE (three times).
calibrate() { # calibrate FILEPREFIX -> sets PACED_CONN
    local c=${PACED_C0:-60} r i
    for i in 1 2 3; do
        run_wrk "$1-probe$i.txt" "$c" "$WARMUP" paced
        r=$(wrk_rps "$1-probe$i.txt")
        ((r > 0)) || die "paced probe measured 0 req/s"
        c=$(awk -v c="$c" -v r="$r" -v t="$RATE" 'BEGIN { n = int(c * t / r + 0.5); if (n < 1) n = 1; if (n > 1000) n = 1000; print n }')
        log "paced probe $i: $r req/s; next: $c connections"
    done
    PACED_CONN=$c
}

# ---------------------------------------------------------------- one measurement
declare -A R # R[row,field]
ROWS=()

# measure ROW KIND MODE: KIND is max or paced. Starts and stops Portcullis.
measure() {
    local row=$1 kind=$2 mode=$3 base=${3%%:*} out conns dur
    mode_config "$mode"
    R[$row,label]=$MODE_LABEL
    R[$row,mode]=$base
    R[$row,kind]=$kind
    out="$TMP/wrk-$row"
    wait_quiet
    R[$row,quiet]="${QUIET_WAITED}s/${QUIET_LAST}%"
    start_portcullis "$MODE_CONF"
    loopback_only
    if [[ "$kind" == paced ]]; then
        log "[$row] $MODE_LABEL: pacing to $RATE req/s"
        calibrate "$out"
        conns=$PACED_CONN
        dur=$PACED_DURATION
    else
        log "[$row] $MODE_LABEL: warm-up ($WARMUP)"
        run_wrk "$out-warmup.txt" "$CONNECTIONS" "$WARMUP"
        conns=$CONNECTIONS
        dur=$DURATION
    fi
    drain "$base"
    local m0 m1 m2 c0 c1 c2 s0 s1 u0 u1 k0 k1 b0 b1 w0 w1 t0 t1 r0 r1
    read_metrics; m0=("$M_EXP" "$M_SPO" "$M_REP" "$M_DROP" "$M_FAIL" "$M_SPB" "$M_REQ")
    r0=$(rotel_received)
    c0=$(cpu_ticks "$PORTCULLIS_PID")
    thread_ticks "$PORTCULLIS_PID" "$out-threads0.txt"
    s0=($(cpu_stat "$PROXY_CPU"))
    u0=($(cpu_stat "$CLIENT_CPU"))
    k0=$(cpu_ticks "$ROTEL_PID")
    b0=$(cpu_ticks "$BACKEND_PID")
    child_cpu "$out-times0.txt"
    t0=$(date +%s.%N)
    run_wrk "$out.txt" "$conns" "$dur" "$([[ $kind == paced ]] && echo paced || true)"
    t1=$(date +%s.%N)
    child_cpu "$out-times1.txt"
    c1=$(cpu_ticks "$PORTCULLIS_PID")
    thread_ticks "$PORTCULLIS_PID" "$out-threads1.txt"
    s1=($(cpu_stat "$PROXY_CPU"))
    u1=($(cpu_stat "$CLIENT_CPU"))
    k1=$(cpu_ticks "$ROTEL_PID")
    b1=$(cpu_ticks "$BACKEND_PID")
    w0=$(times_children "$out-times0.txt")
    w1=$(times_children "$out-times1.txt")
    read_metrics; m1=("$M_EXP" "$M_SPO" "$M_REP" "$M_DROP" "$M_FAIL" "$M_SPB" "$M_REQ")
    log "[$row] ${WRK_CMD[*]}"
    grep -E 'Requests/sec|requests in|Latency  |Socket|Non-2xx' "$out.txt" >&2 || true
    drain "$base"
    c2=$(cpu_ticks "$PORTCULLIS_PID")
    thread_ticks "$PORTCULLIS_PID" "$out-threads2.txt"
    sleep 0.5 # the collector logs a request after answering it
    r1=$(rotel_received)
    read_metrics; m2=("$M_EXP" "$M_SPO" "$M_REP" "$M_DROP" "$M_FAIL" "$M_SPB" "$M_REQ")
    if [[ "$base" == off && -f "$AUDIT_FILE" ]]; then
        R[$row,filelines]=$(wc -l <"$AUDIT_FILE")
        R[$row,reqtotal]=${m2[6]}
    fi
    stop_last # SIGTERM: Portcullis flushes and exits

    # wrk numbers
    local p50 p99 non2xx sock reqs
    R[$row,rps]=$(awk '/^Requests\/sec:/ {print $2}' "$out.txt")
    p50=$(awk '$1 == "50%" {print $2; exit}' "$out.txt")
    p99=$(awk '$1 == "99%" {print $2; exit}' "$out.txt")
    [[ -n "${R[$row,rps]}" && -n "$p50" && -n "$p99" ]] || die "could not parse $out.txt"
    R[$row,p50]=$(to_ms "$p50")
    R[$row,p99]=$(to_ms "$p99")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$out.txt")
    sock=$(awk '/Socket errors:/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$out.txt")
    R[$row,errors]=$((${non2xx:-0} + ${sock:-0}))
    reqs=$(awk '/requests in/ {print $1; exit}' "$out.txt")
    R[$row,reqs]=$reqs
    R[$row,conns]=$conns
    R[$row,secs]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
    # CPU: Portcullis over the measurement (c0..c1) and until its records were out (c0..c2).
    R[$row,cpu_pct]=$(awk -v c=$((c1 - c0)) -v hz="$CLK_TCK" -v s="${R[$row,secs]}" 'BEGIN { printf "%.0f", 100 * c / hz / s }')
    R[$row,threads]=$(thread_split "$out-threads0.txt" "$out-threads2.txt" "$reqs")
    R[$row,t_main]=$(thread_us "$out-threads0.txt" "$out-threads2.txt" "$reqs" main)
    R[$row,t_seal]=$(thread_us "$out-threads0.txt" "$out-threads2.txt" "$reqs" audit-seal)
    R[$row,t_export]=$(thread_us "$out-threads0.txt" "$out-threads2.txt" "$reqs" audit-export)
    R[$row,cpu_us]=$(awk -v c=$((c2 - c0)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN { printf "%.1f", 1e6 * c / hz / n }')
    # CPU 0 busy time not charged to Portcullis (other processes, interrupts) and steal, in %.
    # With AUDIT_CPU, the audit threads' ticks of the run belong to that CPU, not to CPU 0.
    local moved=0 on0 on1=0
    if [[ -n "$AUDIT_CPU" ]]; then
        moved=$(awk -F'\t' 'NR == FNR { if ($2 == "audit-seal" || $2 == "audit-export") a += $1; next }
            $2 == "audit-seal" || $2 == "audit-export" { b += $1 } END { print b - a }' "$out-threads0.txt" "$out-threads1.txt")
        [[ "$AUDIT_CPU" == "$CLIENT_CPU" ]] && on1=$moved
    fi
    on0=$((c1 - c0 - moved))
    R[$row,cpu0_other]=$(awk -v b=$((s1[0] - s0[0] - on0)) -v hz="$CLK_TCK" -v s="${R[$row,secs]}" 'BEGIN { v = 100 * b / hz / s; if (v < 0) v = 0; printf "%.0f", v }')
    R[$row,steal0]=$(awk -v b=$((s1[1] - s0[1])) -v hz="$CLK_TCK" -v s="${R[$row,secs]}" 'BEGIN { printf "%.0f", 100 * b / hz / s }')
    R[$row,cpu1]=$(awk -v b=$((u1[0] - u0[0])) -v hz="$CLK_TCK" -v s="${R[$row,secs]}" 'BEGIN { printf "%.0f", 100 * b / hz / s }')
    R[$row,rotel_cpu]=$(awk -v b=$((k1 - k0)) -v hz="$CLK_TCK" -v s="${R[$row,secs]}" 'BEGIN { printf "%.0f", 100 * b / hz / s }')
    # CPU 1 busy time not charged to wrk, the backend or the collector.
    R[$row,cpu1_other]=$(awk -v b=$((u1[0] - u0[0] - (k1 - k0) - (b1 - b0) - on1)) -v w="$(awk -v a="$w0" -v b="$w1" 'BEGIN { print b - a }')" \
        -v hz="$CLK_TCK" -v s="${R[$row,secs]}" 'BEGIN { v = 100 * (b / hz - w) / s; if (v < 0) v = 0; printf "%.0f", v }')
    R[$row,wrk_cpu]=$(awk -v a="$w0" -v b="$w1" -v s="${R[$row,secs]}" 'BEGIN { printf "%.0f", 100 * (b - a) / s }')
    if ((R[$row,cpu0_other] > 5 || R[$row,cpu1_other] > 10)); then
        R[$row,disturbed]="yes"
    else
        R[$row,disturbed]="no"
    fi
    R[$row,load]=$(cut -d' ' -f1 /proc/loadavg)
    # Pipeline counters: during the measurement (m0..m1) and until drained (m0..m2).
    R[$row,exp_run]=$((m1[0] - m0[0]))
    R[$row,spans_s]=$(awk -v e=$((m1[0] - m0[0] + m1[2] - m0[2])) -v s="${R[$row,secs]}" 'BEGIN { printf "%.0f", e / s }')
    R[$row,exported]=$((m2[0] - m0[0]))
    R[$row,spooled]=$((m2[1] - m0[1]))
    R[$row,replayed]=$((m2[2] - m0[2]))
    R[$row,dropped]=$((m2[3] - m0[3]))
    R[$row,failures]=$((m2[4] - m0[4]))
    R[$row,records]=$((m2[6] - m0[6])) # requests served in the window (incl. the drain's none)
    R[$row,received]=$((r1 - r0))
    R[$row,drained]=$DRAINED
    ROWS+=("$row")
}

# measure_retry ROW KIND MODE: measure, and again (up to RETRIES times) while disturbed.
measure_retry() {
    local try
    for ((try = 0; ; try++)); do
        measure "$@"
        R[$1,tries]=$((try + 1))
        [[ "${R[$1,disturbed]}" == no ]] && return 0
        if ((try >= RETRIES)); then
            log "[$1] disturbed by other load on all $((try + 1)) attempts: keeping the last"
            return 0
        fi
        log "[$1] disturbed by other load (other CPU 0 ${R[$1,cpu0_other]}%, CPU 1 ${R[$1,cpu1_other]}%): measuring again"
        unset 'ROWS[-1]'
    done
}

# ---------------------------------------------------------------- report helpers
median() { # median VALUES...
    printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "n/a"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.1f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
us_diff() { awk -v on="$1" -v off="$2" 'BEGIN { printf "%+.2f", 1e6 / on - 1e6 / off }'; }

# cost_rows all|undisturbed: the cost table's rows, medians over the max-rate rows of each mode.
cost_rows() {
    local which=$1 mm row lbl med_rps med_cpu off_med_rps="" off_med_cpu="" split
    local med_main med_seal med_export off_main="" off_seal=""
    local -a rps_list cpu_list main_list seal_list export_list
    for mm in "${modes[@]}"; do
        rps_list=() cpu_list=() main_list=() seal_list=() export_list=()
        lbl=""
        for row in "${ROWS[@]}"; do
            [[ "${R[$row,kind]}" == max && "$row" == r*"-${mm/:/-}" ]] || continue
            lbl=${R[$row,label]}
            [[ "$which" == all || "${R[$row,disturbed]}" == no ]] || continue
            rps_list+=("${R[$row,rps]}")
            cpu_list+=("${R[$row,cpu_us]}")
            main_list+=("${R[$row,t_main]}")
            seal_list+=("${R[$row,t_seal]}")
            export_list+=("${R[$row,t_export]}")
        done
        if ((${#rps_list[@]} == 0)); then
            printf '| %s | %s | 0 | - | - | - | - | - | - | - | - |\n' "$which" "$lbl"
            continue
        fi
        med_rps=$(median "${rps_list[@]}")
        med_cpu=$(median "${cpu_list[@]}")
        med_main=$(median "${main_list[@]}")
        med_seal=$(median "${seal_list[@]}")
        med_export=$(median "${export_list[@]}")
        split="$med_main / $med_seal / $med_export"
        if [[ "$mm" == off ]]; then
            off_med_rps=$med_rps
            off_med_cpu=$med_cpu
            off_main=$med_main
            off_seal=$med_seal
            printf '| %s | %s | %s | %.0f | 1.00 | - | %s | - | 1.00 | %s | 1.00 |\n' "$which" "$lbl" "${#rps_list[@]}" "$med_rps" "$med_cpu" "$split"
        elif [[ -n "$off_med_rps" ]]; then
            printf '| %s | %s | %s | %.0f | %s | %s | %s | %s | %s | %s | %s |\n' "$which" "$lbl" "${#rps_list[@]}" "$med_rps" \
                "$(ratio "$med_rps" "$off_med_rps")" "$(us_diff "$med_rps" "$off_med_rps")" "$med_cpu" \
                "$(awk -v a="$med_cpu" -v b="$off_med_cpu" 'BEGIN { printf "%+.2f", a - b }')" \
                "$(ratio "$off_med_cpu" "$med_cpu")" "$split" \
                "$(awk -v m="$off_main" -v s0="$off_seal" -v s1="$med_seal" -v e="$med_export" 'BEGIN { printf "%.2f", (m + s0) / (m + s1 + e) }')"
        else
            printf '| %s | %s | %s | %.0f | n/a | n/a | %s | n/a | n/a | %s | n/a |\n' "$which" "$lbl" "${#rps_list[@]}" "$med_rps" "$med_cpu" "$split"
        fi
    done
}

main() {
    local need=()
    command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || need+=(nginx)
    command -v wrk >/dev/null 2>&1 || need+=(wrk)
    command -v curl >/dev/null 2>&1 || need+=(curl)
    command -v taskset >/dev/null 2>&1 || need+=(taskset)
    if ((${#need[@]})); then
        ensure_tools iproute2
    fi
    export PATH="$PATH:/usr/sbin:/sbin"
    find_rotel
    ulimit -n 65536 2>/dev/null || true

    portcullis_binary
    ((ROUNDS >= 1)) || die "ROUNDS must be at least 1"

    TMP=$(mktemp -d /tmp/portcullis-load-audit.XXXXXX)
    trap cleanup_audit EXIT
    trap 'exit 130' INT TERM
    local started
    started=$(date -u '+%Y-%m-%dT%H:%M:%SZ')

    start_nginx backend "$CONF_DIR/backend.nginx.conf" "$CLIENT_CPU" "$BACKEND_PORT"
    BACKEND_PID=${PIDS[-1]}
    start_rotel
    loopback_only

    # Max-rate rounds; the order of the modes alternates between rounds.
    local -a modes order
    read -r -a modes <<<"$MODES"
    local round m i
    for ((round = 1; round <= ROUNDS; round++)); do
        order=()
        if ((round % 2)); then
            order=("${modes[@]}")
        else
            for ((i = ${#modes[@]} - 1; i >= 0; i--)); do order+=("${modes[$i]}"); done
        fi
        for m in "${order[@]}"; do
            measure_retry "r$round-${m/:/-}" max "$m"
        done
    done
    # Paced runs.
    local -a paced
    read -r -a paced <<<"$PACED_MODES"
    for m in "${paced[@]}"; do
        measure_retry "paced-${m/:/-}" paced "$m"
    done
    local finished
    finished=$(date -u '+%Y-%m-%dT%H:%M:%SZ')

    # ------------------------------------------------------------ report
    local report row off_row off_rps
    report=$(
        echo "### Max rate (wrk -c$CONNECTIONS, $DURATION per row)"
        echo
        echo "| round | mode | req/s | p50 (ms) | p99 (ms) | on/off (same round) | errors | proxy CPU | CPU µs/req | other CPU 0 / 1 | disturbed (tries) | steal | CPU 1 busy | wrk CPU | collector CPU | quiet wait |"
        echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|"
        for row in "${ROWS[@]}"; do
            [[ "${R[$row,kind]}" == max ]] || continue
            off_row="${row%%-*}-off"
            off_rps="${R[$off_row,rps]:-0}"
            printf '| %s | %s | %.0f | %s | %s | %s | %s | %s%% | %s | %s%% / %s%% | %s | %s%% | %s%% | %s%% | %s%% | %s |\n' "${row%%-*}" \
                "${R[$row,label]}" "${R[$row,rps]}" "${R[$row,p50]}" "${R[$row,p99]}" \
                "$(if [[ ${R[$row,mode]} == off ]]; then echo 1.00; else ratio "${R[$row,rps]}" "$off_rps"; fi)" \
                "${R[$row,errors]}" "${R[$row,cpu_pct]}" "${R[$row,cpu_us]}" "${R[$row,cpu0_other]}" \
                "${R[$row,cpu1_other]}" "${R[$row,disturbed]} (${R[$row,tries]})" "${R[$row,steal0]}" "${R[$row,cpu1]}" \
                "${R[$row,wrk_cpu]}" "${R[$row,rotel_cpu]}" "${R[$row,quiet]}"
        done
        echo
        echo "### Pipeline counters of the OTLP rows (from /metrics; \"run\" = during the wrk run, the rest until drained)"
        echo
        echo "| row | mode | requests | exported (run) | spans/s sustained | exported | spooled | replayed | dropped | export failures | collector received | drained |"
        echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        for row in "${ROWS[@]}"; do
            [[ "${R[$row,mode]}" == off ]] && continue
            printf '| %s | %s | %s | %s | %s | %s | %s | %s | **%s** | %s | %s | %s |\n' "$row" "${R[$row,label]}" \
                "${R[$row,records]}" "${R[$row,exp_run]}" "${R[$row,spans_s]}" "${R[$row,exported]}" \
                "${R[$row,spooled]}" "${R[$row,replayed]}" "${R[$row,dropped]}" "${R[$row,failures]}" \
                "${R[$row,received]}" "$([[ ${R[$row,drained]} == 1 ]] && echo yes || echo NO)"
        done
        echo
        echo "### Portcullis CPU per thread (µs per request, from the start of the run until drained)"
        echo
        echo "| row | mode | CPU µs/req | by thread |"
        echo "|---|---|---:|---|"
        for row in "${ROWS[@]}"; do
            printf '| %s | %s | %s | %s |\n' "$row" "${R[$row,label]}" "${R[$row,cpu_us]}" "${R[$row,threads]}"
        done
        echo
        echo "### Cost per span (max-rate rows, median over the rounds)"
        echo
        echo "| rows | mode | n | req/s (median) | on/off | throughput cost µs/req (1e6/on − 1e6/off) | CPU µs/req (median) | CPU cost µs/req (on − off) | CPU off/on | main / audit-seal / audit-export µs/req (medians) | off/on from threads |"
        echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"
        cost_rows all
        cost_rows undisturbed
        if ((${#paced[@]})); then
            echo
            echo "### Paced to $RATE req/s ($PACED_DURATION per row; wrk -s benches/load/paced.lua, ${PACED_DELAY_MS} ms pause after each response)"
            echo
            echo "| mode | connections | req/s | p50 (ms) | p99 (ms) | errors | proxy CPU | CPU µs/req | CPU cost µs/req (on − off) | spans/s sustained | spooled | dropped | export failures | other CPU 0 / 1 | disturbed (tries) | CPU 1 busy | collector CPU |"
            echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"
            local pcpu_off="${R[paced-off,cpu_us]:-}"
            for row in "${ROWS[@]}"; do
                [[ "${R[$row,kind]}" == paced ]] || continue
                local dcpu="-" sps="-" spo="-" dro="-" fai="-"
                if [[ "${R[$row,mode]}" != off ]]; then
                    [[ -n "$pcpu_off" ]] && dcpu=$(awk -v a="${R[$row,cpu_us]}" -v b="$pcpu_off" 'BEGIN { printf "%+.2f", a - b }')
                    sps=${R[$row,spans_s]} spo=${R[$row,spooled]} dro="**${R[$row,dropped]}**" fai=${R[$row,failures]}
                fi
                printf '| %s | %s | %.0f | %s | %s | %s | %s%% | %s | %s | %s | %s | %s | %s | %s%% / %s%% | %s | %s%% | %s%% |\n' \
                    "${R[$row,label]}" "${R[$row,conns]}" "${R[$row,rps]}" "${R[$row,p50]}" "${R[$row,p99]}" \
                    "${R[$row,errors]}" "${R[$row,cpu_pct]}" "${R[$row,cpu_us]}" "$dcpu" "$sps" "$spo" "$dro" \
                    "$fai" "${R[$row,cpu0_other]}" "${R[$row,cpu1_other]}" "${R[$row,disturbed]} (${R[$row,tries]})" "${R[$row,cpu1]}" "${R[$row,rotel_cpu]}"
            done
        fi
        echo
        echo "Columns: proxy CPU = Portcullis's CPU time (/proc/PID/stat utime+stime, all threads) during"
        echo "the wrk run, in % of one core. CPU µs/req = that CPU time from the start of the run until its"
        echo "last record was exported (the drain), divided by the requests wrk completed. other CPU 0 / 1 ="
        echo "busy time (/proc/stat) of CPU 0 not charged to Portcullis / of CPU 1 not charged to wrk, the"
        echo "backend or the collector (or to the audit threads moved there with AUDIT_CPU): other"
        echo "processes of this shared machine, interrupts; disturbed = yes"
        echo "when that is over 5% on CPU 0 or over 10% on CPU 1 (treat such a row with suspicion; a"
        echo "disturbed row is measured again, up to $RETRIES more times, and the last attempt kept). steal ="
        echo "time the hypervisor took from CPU 0. CPU 1 busy = all busy time of the client core; wrk CPU,"
        echo "collector CPU = their CPU time, in % of one core. quiet wait = time waited before the row for"
        echo "the machine to fall under ${QUIET_PCT}% of a core, and the last reading. spans/s sustained"
        echo "= (exported + replayed during the wrk run) / its length. requests = portcullis_requests_total"
        echo "delta (one audit record each); collector received = spans rotel logged receiving. CPU off/on ="
        echo "the on/off throughput ratio a core given to Portcullis alone would show if CPU time were all"
        echo "that limited it (OFF CPU µs/req ÷ ON CPU µs/req): a derived figure, less disturbed by other load."
        echo "By thread: main = the request path (Tokio, worker_threads = 1), audit-seal = sealing each record"
        echo "(and, OFF, writing the file), audit-export = OTLP encoding and sending (ON only). off/on from"
        echo "threads = (main + audit-seal of OFF) ÷ (main of OFF + audit-seal + audit-export of ON): the CPU"
        echo "ratio with the request path's own time taken as equal in both modes (it does the same work),"
        echo "which removes the largest noise term; an estimate, not a measured throughput."
        for row in "${ROWS[@]}"; do
            if [[ -n "${R[$row,filelines]:-}" ]]; then
                echo "OFF row $row: the JSONL audit file held ${R[$row,filelines]} lines for ${R[$row,reqtotal]} requests served (warm-up included)."
            fi
        done
        echo
        echo "- started $started, finished $finished (UTC)"
        echo "- command: \`PORTCULLIS=$PORTCULLIS benches/load-audit.sh\` (ROUNDS=$ROUNDS MODES=\"$MODES\" PACED_MODES=\"$PACED_MODES\" RATE=$RATE)"
        echo "- wrk: \`taskset -c $CLIENT_CPU wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency http://127.0.0.1:$PORTCULLIS_PORT/\` after a $WARMUP warm-up"
        if [[ -n "$AUDIT_CPU" ]]; then
            echo "- pinning: Portcullis (worker_threads = 1) on CPU $PROXY_CPU, its audit-seal and audit-export threads moved to CPU $AUDIT_CPU; wrk and backend nginx on CPU $CLIENT_CPU; rotel-agent on CPU $COLLECTOR_CPU"
        else
            echo "- pinning: Portcullis (worker_threads = 1, all its threads) on CPU $PROXY_CPU; wrk and backend nginx on CPU $CLIENT_CPU; rotel-agent on CPU $COLLECTOR_CPU"
        fi
        echo "- collector: \`$(basename "$ROTEL_AGENT") start --exporter blackhole --debug-log traces --debug-log-verbosity basic\` ($("$ROTEL_AGENT" --version 2>&1 | head -n1), PyPI $(basename "$(ls -d "$(dirname "$(dirname "$ROTEL_AGENT")")"/rotel-*.dist-info 2>/dev/null | head -n1)" .dist-info))"
        echo "- portcullis: \`$PORTCULLIS\` (sha256 $(sha256sum "$PORTCULLIS" | cut -c1-12), built $(date -u -r "$PORTCULLIS" '+%Y-%m-%dT%H:%M:%SZ')), tree at $(git rev-parse --short HEAD 2>/dev/null || echo '?') with $(git status --porcelain 2>/dev/null | wc -l) changed files"
        echo "- machine: $(nproc) cores, $(uname -srm), $(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2), $(nginx -v 2>&1 | sed 's/^nginx version: //')"
    )
    printf '\n%s\n' "$report"
    if [[ -n "${OUT:-}" ]]; then
        printf '%s\n' "$report" >"$OUT"
        log "report written to $OUT"
    fi
}

main "$@"
