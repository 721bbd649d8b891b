#!/usr/bin/env bash
# The quickstart: Portcullis doing its whole job on this machine, every part served by the
# portcullis binary itself (only the Rust toolchain and curl are needed):
#
#   portcullis demo idp        a development OpenID Provider (FOR DEMOS ONLY)  127.0.0.1:9400
#   portcullis demo upstream   a small Airflow-like API                        127.0.0.1:8081
#   portcullis serve           Portcullis, with examples/quickstart/           http://localhost:8080
#
# It shows, one line of explanation each: a CI job's token triggering a DAG (200), the same job
# refused on another DAG (403, naming what was missing) and `portcullis policy explain` saying
# why, a service's DAG list filtered to what it may read, and a token from an untrusted issuer
# (401). Then it prints a URL where you sign in with your browser as alice (may view the DAGs) or
# bob (may also trigger them), and prints every decision as it happens until Ctrl-C. Each
# decision is printed as one readable line (`portcullis audit show`); the full JSON records go to
# the file it names.
#
#   ./examples/quickstart.sh                 build (release), run, show, keep serving
#   ./examples/quickstart.sh --check         run, show, verify every answer, stop
#   ./examples/quickstart.sh --check --hold  the same, then keep serving until standard input
#                                            closes (the test signs in with a browser meanwhile)
#   ./examples/quickstart.sh --otlp URL      audit records to an OpenTelemetry collector instead of
#                                            the file (OTLP/gRPC; OTLP/HTTP for a URL ending /v1/traces)
#
# PORTCULLIS=path/to/binary skips the build (which honours CARGO_TARGET_DIR).
# QUICKSTART_PORTS="8080 8081 9090 9400" moves the proxy, the upstream, the admin listener and the
# identity provider. What a run writes (the config it used, the audit records, each process's log)
# goes to a new run directory, which it names.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

CHECK= HOLD= OTLP=
while [ $# -gt 0 ]; do
  case $1 in
    --check) CHECK=1 ;;
    --hold) HOLD=1 ;;
    --otlp) OTLP=${2:?--otlp needs a collector URL}; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "quickstart: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

BIN=${PORTCULLIS:-}
if [ -z "$BIN" ]; then
  cargo build --release --bin portcullis
  BIN=${CARGO_TARGET_DIR:-target}/release/portcullis
fi
read -r PROXY_PORT UPSTREAM_PORT ADMIN_PORT IDP_PORT <<<"${QUICKSTART_PORTS:-8080 8081 9090 9400}"
APP=http://localhost:$PROXY_PORT
IDP=http://127.0.0.1:$IDP_PORT
RUN=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-quickstart.XXXXXX")
CONFIG=$RUN/portcullis.toml
AUDIT=$RUN/audit.jsonl

# The example config with this run's ports and files (paths made absolute, so the run directory
# holds a config that works from anywhere).
sed -e "s|127\.0\.0\.1:8080|127.0.0.1:$PROXY_PORT|g" \
    -e "s|127\.0\.0\.1:8081|127.0.0.1:$UPSTREAM_PORT|g" \
    -e "s|127\.0\.0\.1:9090|127.0.0.1:$ADMIN_PORT|g" \
    -e "s|127\.0\.0\.1:9400|127.0.0.1:$IDP_PORT|g" \
    -e "s|^dir = \"policies\"|dir = \"$ROOT/examples/quickstart/policies\"|" \
    -e "s|\"client-secret\"|\"$ROOT/examples/quickstart/client-secret\"|" \
    -e "s|^path = \"-\".*|path = \"$AUDIT\"|" \
    examples/quickstart/portcullis.toml >"$CONFIG"
if [ -n "$OTLP" ]; then
  case $OTLP in */v1/traces) protocol=http_protobuf ;; *) protocol=grpc ;; esac
  printf '\n[audit.otlp]\nendpoint = "%s"\nprotocol = "%s"\n\n[audit.spool]\ndir = "%s"\n' \
    "$OTLP" "$protocol" "$RUN/spool" >>"$CONFIG"
fi

"$BIN" check-config --config "$CONFIG" >/dev/null
PIDS=()
cleanup() {
  if [ ${#PIDS[@]} -gt 0 ]; then kill "${PIDS[@]}" 2>/dev/null || true; fi
  wait 2>/dev/null || true
}
trap cleanup EXIT
"$BIN" demo idp --listen "127.0.0.1:$IDP_PORT" \
  --redirect-uri "http://localhost:$PROXY_PORT/.portcullis/callback" \
  --redirect-uri "http://127.0.0.1:$PROXY_PORT/.portcullis/callback" 2>"$RUN/idp.log" &
PIDS+=($!)
"$BIN" demo upstream --listen "127.0.0.1:$UPSTREAM_PORT" 2>"$RUN/upstream.log" &
PIDS+=($!)

# Waits for URL to answer 2xx while process PID lives; on failure prints LOG and stops.
await() {
  local url=$1 pid=$2 log=$3
  for _ in $(seq 1 150); do
    if curl -fsS "$url" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then break; fi
    sleep 0.1
  done
  echo "quickstart: $url did not answer; $log says:" >&2
  tail -n 20 "$log" >&2
  echo "(a port in use? QUICKSTART_PORTS=\"18080 18081 19090 19400\" $0 moves them)" >&2
  exit 1
}
await "$IDP/.well-known/openid-configuration" "${PIDS[0]}" "$RUN/idp.log"
await "http://127.0.0.1:$UPSTREAM_PORT/api/v2/monitor/health" "${PIDS[1]}" "$RUN/upstream.log"
"$BIN" serve --config "$CONFIG" 2>"$RUN/portcullis.log" &
PIDS+=($!)
await "http://127.0.0.1:$ADMIN_PORT/readyz" "${PIDS[2]}" "$RUN/portcullis.log"

sed -n '/^####/,/^users/p' "$RUN/idp.log"
cat <<EOF

Portcullis is serving $APP in front of a demo Airflow, with the policy in
examples/quickstart/policies/ (config: $CONFIG).
EOF

count() { if [ -f "$AUDIT" ]; then wc -l <"$AUDIT" | tr -d ' '; else echo 0; fi; }
SEEN=$(count)
START=$SEEN
# Prints the audit records written since the last call, one readable line each, once the
# request just made has its record.
new_audit() {
  [ -n "$OTLP" ] && return 0
  local n
  for _ in $(seq 1 50); do
    n=$(count)
    if [ "$n" -gt "$SEEN" ]; then break; fi
    sleep 0.1
  done
  sed -n "$((SEEN + 1)),${n}p" "$AUDIT" | "$BIN" audit show - | sed 's/^/  audit: /'
  SEEN=$n
}
step() { printf '\n%s\n' "$*"; }
shown() { printf '$ %s\n' "$*"; }
# METHOD PATH TOKEN_NAME: calls the proxy with the token in $TOKEN_NAME, prints the answer on
# one line and the audit record, and leaves the status in STATUS and the body in BODY.
call() {
  local method=$1 path=$2 token_name=$3
  shown "curl -X $method -H \"Authorization: Bearer \$$token_name\" $APP$path"
  STATUS=$(curl -sS -o "$RUN/body" -w '%{http_code}' -X "$method" \
    -H "Authorization: Bearer ${!token_name}" "$APP$path")
  BODY=$(tr -d '\n' <"$RUN/body" | sed 's/  */ /g')
  printf '%s %s\n' "$STATUS" "$BODY"
  new_audit
}
# NAME QUERY: asks the demo IdP for a token and keeps it in $NAME.
token() {
  shown "$1=\$(curl -s '$IDP/demo/token?$2')"
  local got
  got=$(curl -fsS "$IDP/demo/token?$2")
  printf -v "$1" '%s' "$got"
}

step "1. A CI job's token (shaped like GitLab CI's: project 42, protected branch main) triggers the etl_daily DAG: the policy allows it (200)."
token CI_TOKEN 'kind=ci&project_id=42&ref=main'
call POST /api/v2/dags/etl_daily/dagRuns CI_TOKEN
ci_allowed=$STATUS

step "2. The same job triggers ml_training: no rule grants it, so it is refused (403, naming the missing permission)."
call POST /api/v2/dags/ml_training/dagRuns CI_TOKEN
ci_denied=$STATUS ci_denied_body=$BODY

step "3. Why? \`portcullis policy explain\` asks the same policy, offline, and names the rules that would allow it."
explain=(policy explain --config examples/quickstart/portcullis.toml --dir examples/quickstart/policies
  --as ci:gitlab/project:42:branch:main --groups namespace:7,project:42
  --method POST --url "$APP/api/v2/dags/ml_training/dagRuns")
shown "$BIN ${explain[*]}"
explained=0
explanation=$("$BIN" "${explain[@]}") || explained=$?
printf '%s\n' "$explanation"

step "4. A service's token lists the DAGs: the answer keeps only the two ETL DAGs it may read (200)."
token SERVICE_TOKEN 'kind=service&client=reporting-bot'
call GET /api/v2/dags SERVICE_TOKEN
service=$STATUS service_body=$BODY

step "5. A token that says it is alice, signed by an issuer Portcullis does not trust: refused (401)."
token UNTRUSTED_TOKEN 'kind=untrusted&user=alice'
call GET /api/v2/dags UNTRUSTED_TOKEN
untrusted=$STATUS untrusted_body=$BODY

if [ -n "$OTLP" ]; then
  where="The audit records go to the collector at $OTLP (OTLP)."
else
  where="The full audit records (JSON, one per line): $AUDIT"
fi
cat <<EOF

6. Now sign in with your browser: open $APP/
   and pick alice (group viewers: may view the DAGs) or bob (group operators: may also trigger
   them); the page lists the DAGs you may see, with a Trigger button for each.
   Sign out at $APP/.portcullis/sign_out to switch users.

$where
Logs of the three processes: $RUN/*.log
EOF

if [ -n "$CHECK" ]; then
  printf '\nstatuses: ci=%s ci_other_dag=%s explain=%s service=%s untrusted=%s\n' \
    "$ci_allowed" "$ci_denied" "$explained" "$service" "$untrusted"
  fail() { echo "quickstart: $*" >&2; exit 1; }
  [ "$ci_allowed" = 200 ] || fail "the CI job's trigger of etl_daily answered $ci_allowed, not 200"
  [ "$ci_denied" = 403 ] || fail "the CI job's trigger of ml_training answered $ci_denied, not 403"
  case $ci_denied_body in *'"missing_permission":"trigger on dag:ml_training in airflow"'*) ;;
    *) fail "the 403 does not name the missing permission: $ci_denied_body" ;; esac
  [ "$explained" = 1 ] || fail "policy explain exited $explained, not 1 (deny)"
  case $explanation in *'decision: deny'*'policy.csv:'*) ;;
    *) fail "policy explain did not say deny and name a rule: $explanation" ;; esac
  [ "$service" = 200 ] || fail "the service's DAG list answered $service, not 200"
  case $service_body in *etl_daily*etl_hourly*) ;; *) fail "the service's list lacks the ETL DAGs: $service_body" ;; esac
  case $service_body in *ml_training*) fail "the service's list was not filtered: $service_body" ;; esac
  [ "$untrusted" = 401 ] || fail "the untrusted issuer's token answered $untrusted, not 401"
  case $untrusted_body in *wrong_issuer*) ;; *) fail "the 401 is not wrong_issuer: $untrusted_body" ;; esac
  if [ -z "$OTLP" ]; then
    reasons=$(sed -n "$((START + 1)),\$p" "$AUDIT" | grep -o '"portcullis.reason":"[a-z_]*"' | cut -d'"' -f4 | tr '\n' ' ')
    [ "$reasons" = "authorized forbidden authorized wrong_issuer " ] ||
      fail "the audit records' reasons are: $reasons"
  fi
  echo "quickstart: ok"
  if [ -n "$HOLD" ]; then
    echo "quickstart: serving until standard input closes"
    cat >/dev/null
  fi
  exit 0
fi

if [ -n "$OTLP" ]; then
  echo "Portcullis keeps serving until Ctrl-C."
  wait "${PIDS[2]}"
else
  echo "Decisions as they happen (Ctrl-C stops everything):"
  tail -n "+$((SEEN + 1))" -f "$AUDIT" | "$BIN" audit show -
fi
