#!/usr/bin/env bash
# Start a real Airflow 3 (api-server + scheduler + dag-processor) on 127.0.0.1 for integration tests.
#
# Inputs (environment):
#   AIRFLOW_HOME          required: a fresh, empty directory; gets airflow.cfg, airflow.db, logs, *.log, pids
#   AIRFLOW_PEER_PORT     required: the api-server's port on 127.0.0.1 (REST API, UI, execution API)
#   PORTCULLIS_JWKS_URL   optional: trust JWTs signed by these keys (http(s) URL, or a local file path)
#   PORTCULLIS_ISSUER     with PORTCULLIS_JWKS_URL: the `iss` Airflow requires
#   PORTCULLIS_AUDIENCE   with PORTCULLIS_JWKS_URL: the `aud` Airflow requires
#   AIRFLOW_PEER_SIGNING_KEY with PORTCULLIS_JWKS_URL, optional: Airflow's own signing key (PEM), whose
#                         public key the JWKS at PORTCULLIS_JWKS_URL must hold (see below); default: a new
#                         Ed25519 key (then tasks cannot run: their execution-API tokens are Airflow-signed)
#   AIRFLOW_PEER_SIGNING_KID the kid Airflow signs with (default airflow-peer-own)
#   AIRFLOW_PEER_AUTH_MANAGER simple (default): stock SimpleAuthManager: the caller's JWT must come as
#                         `Authorization: Bearer` and carry `role` (ADMIN, OP, USER or VIEWER);
#                         portcullis: portcullis_auth_manager.py beside this script: also takes the JWT
#                         from AIRFLOW__PORTCULLIS__ASSERTION_HEADER (default X-Portcullis-Assertion) and
#                         gives tokens without `role` the role AIRFLOW__PORTCULLIS__DEFAULT_ROLE (ADMIN)
#   AIRFLOW_PEER_WAIT     1 (default): wait until /api/v2/monitor/health reports the scheduler and the
#                         dag-processor healthy and every dags/*.py DAG (file name = dag_id) is parsed
#                         (serialized in the DB); 0: return right after spawning
#   AIRFLOW_PEER_TIMEOUT  seconds to wait (default 120)
#   AIRFLOW_PEER_TRIGGERER 1: also start `airflow triggerer` (deferred tasks, e.g. the HITL approval resuming);
#                         default 0
#   AIRFLOW_PEER_DB_TEMPLATE optional file: a migrated empty airflow.db to copy instead of `db migrate`
#                         (written on first use)
#   AIRFLOW_PEER_VENV     default: .venv beside this script
#   AIRFLOW_PEER_DAGS     default: dags/ beside this script
#   AIRFLOW_PEER_PARENT_PID optional: a watchdog (its own session, pid in $AIRFLOW_HOME/watchdog) runs
#                         stop.sh (SIGKILL after 2 s) within 0.5 s of this process being gone, however
#                         it ended (a test binary that exits, panics, or is killed); it quits when
#                         stop.sh is run otherwise
#   AIRFLOW_PEER_REMOVE_ON_EXIT optional, with AIRFLOW_PEER_PARENT_PID: a directory the watchdog deletes
#                         (rm -rf) after stopping Airflow, e.g. the temporary directory holding AIRFLOW_HOME
#
# Airflow accepts only ONE trusted_jwks_url for every token it checks, its own included (task-execution
# tokens, /auth/token tokens): PORTCULLIS_JWKS_URL must serve the proxy's keys and Airflow's own public
# key (the proxy's route JWKS with `[routes.assertion] upstream_jwks`; see README.md).
#
# Output: $AIRFLOW_HOME/pids, one "name pid" line per process; every pid leads its own process group,
# so `kill -TERM -- -PID` stops a component with its children (stop.sh does that for all of them).
# Logs: $AIRFLOW_HOME/{migrate,api-server,scheduler,dag-processor,triggerer,jwks-merge}.log; task logs in $AIRFLOW_HOME/logs
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${AIRFLOW_HOME:?set AIRFLOW_HOME to a fresh directory}"
: "${AIRFLOW_PEER_PORT:?set AIRFLOW_PEER_PORT}"
venv="${AIRFLOW_PEER_VENV:-$here/.venv}"
py="$venv/bin/python"
airflow="$venv/bin/airflow"
[ -x "$airflow" ] || { echo "start.sh: no $airflow; run .ci/install-peers, or: python3 -m venv $venv && $venv/bin/pip install -r $here/requirements.txt" >&2; exit 2; }
mkdir -p "$AIRFLOW_HOME"
AIRFLOW_HOME="$(cd "$AIRFLOW_HOME" && pwd)"
export AIRFLOW_HOME
t0=$(date +%s.%N)
if [ -n "${AIRFLOW_PEER_PARENT_PID:-}" ]; then
  # Started first, so nothing below can outlive the parent. If the parent goes while this script
  # still runs (killed during start-up), the script is frozen and killed with its children first,
  # so it cannot start a component after stop.sh has read the pids.
  : > "$AIRFLOW_HOME/watchdog"
  setsid bash -c 'while kill -0 "$1" 2>/dev/null; do [ -f "$2/watchdog" ] || exit 0; sleep 0.5; done
    case "$(tr "\0" " " < "/proc/$5/cmdline" 2>/dev/null)" in
      *start.sh*) kill -STOP "$5"
        for child in $(pgrep -P "$5"); do [ "$child" = $$ ] || kill -KILL "$child"; done
        kill -KILL "$5" ;;
    esac
    AIRFLOW_PEER_STOP_TIMEOUT=2 "$3/stop.sh" "$2"; [ -z "$4" ] || rm -rf -- "$4"' \
    watchdog "$AIRFLOW_PEER_PARENT_PID" "$AIRFLOW_HOME" "$here" "${AIRFLOW_PEER_REMOVE_ON_EXIT:-}" "$$" \
    > /dev/null 2>&1 < /dev/null &
  echo "$!" > "$AIRFLOW_HOME/watchdog"
fi
# Another server on the port would answer the health checks below in this one's place.
if (exec 3<>"/dev/tcp/127.0.0.1/$AIRFLOW_PEER_PORT") 2>/dev/null; then
  echo "start.sh: 127.0.0.1:$AIRFLOW_PEER_PORT is already in use" >&2; exit 2
fi

# --- configuration: every setting as AIRFLOW__SECTION__KEY -----------------------------------------
export AIRFLOW__CORE__DAGS_FOLDER="${AIRFLOW_PEER_DAGS:-$here/dags}"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False
export AIRFLOW__CORE__EXECUTOR=LocalExecutor
export AIRFLOW__CORE__PARALLELISM=2
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:${AIRFLOW_PEER_PORT}/execution/"
export AIRFLOW__CORE__FERNET_KEY="${AIRFLOW__CORE__FERNET_KEY:-$("$py" -c 'import base64,os;print(base64.urlsafe_b64encode(os.urandom(32)).decode())')}"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS:-admin:admin,viewer:viewer}"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="$AIRFLOW_HOME/passwords.json"
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="sqlite:///$AIRFLOW_HOME/airflow.db"
# Wait up to 60 s for SQLite's lock, not 5 s: the scheduler dies on "database is locked".
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS=airflow_peer_sqlite.SYNC
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC=airflow_peer_sqlite.ASYNC
export AIRFLOW__API__HOST=127.0.0.1
export AIRFLOW__API__PORT="$AIRFLOW_PEER_PORT"
export AIRFLOW__API__WORKERS=1
export AIRFLOW__API__EXPOSE_CONFIG=True
export AIRFLOW__API__SECRET_KEY="${AIRFLOW__API__SECRET_KEY:-$("$py" -c 'import secrets;print(secrets.token_urlsafe(24))')}"
export AIRFLOW__API_AUTH__JWT_SECRET="${AIRFLOW__API_AUTH__JWT_SECRET:-$("$py" -c 'import secrets;print(secrets.token_urlsafe(24))')}"
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=2
export AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL=5
export AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES=1
export AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC=1
export AIRFLOW__LOGGING__BASE_LOG_FOLDER="$AIRFLOW_HOME/logs"
export AIRFLOW__LOGGING__COLORED_CONSOLE_LOG=False
case "${AIRFLOW_PEER_AUTH_MANAGER:-simple}" in
  simple) ;;
  portcullis)
    export AIRFLOW__CORE__AUTH_MANAGER=portcullis_auth_manager.PortcullisAuthManager ;;
  *) echo "start.sh: AIRFLOW_PEER_AUTH_MANAGER must be simple or portcullis" >&2; exit 2 ;;
esac
# Known passwords for Airflow's own login (/auth/token, airflowctl auth login): admin/admin, viewer/viewer.
[ -f "$AIRFLOW_HOME/passwords.json" ] || echo '{"admin": "admin", "viewer": "viewer"}' > "$AIRFLOW_HOME/passwords.json"

if [ -n "${PORTCULLIS_JWKS_URL:-}" ]; then
  : "${PORTCULLIS_ISSUER:?set PORTCULLIS_ISSUER with PORTCULLIS_JWKS_URL}"
  : "${PORTCULLIS_AUDIENCE:?set PORTCULLIS_AUDIENCE with PORTCULLIS_JWKS_URL}"
  # Airflow's own signing key (task-execution tokens, /auth/token tokens), with a fixed kid.
  key="${AIRFLOW_PEER_SIGNING_KEY:-$AIRFLOW_HOME/airflow-signing.pem}"
  [ -f "$key" ] || "$py" - "$key" <<'EOF'
import sys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
k = ed25519.Ed25519PrivateKey.generate()
open(sys.argv[1], "wb").write(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
EOF
  export AIRFLOW__API_AUTH__JWT_PRIVATE_KEY_PATH="$key"
  export AIRFLOW__API_AUTH__JWT_KID="${AIRFLOW_PEER_SIGNING_KID:-airflow-peer-own}"
  export AIRFLOW__API_AUTH__JWT_ISSUER="$PORTCULLIS_ISSUER"
  export AIRFLOW__API_AUTH__JWT_AUDIENCE="$PORTCULLIS_AUDIENCE"
  unset AIRFLOW__API_AUTH__JWT_SECRET
  export AIRFLOW__API_AUTH__TRUSTED_JWKS_URL="$PORTCULLIS_JWKS_URL"
fi

# The variables above, for a shell that wants to run `airflow ...` CLI commands against this home.
export -p | grep -E ' (AIRFLOW|PYTHONPATH)' > "$AIRFLOW_HOME/env.sh"

# A migrated, empty DB can be reused: AIRFLOW_PEER_DB_TEMPLATE names a file that is copied instead of
# migrating when it exists, and written after migrating when it does not (saves ~3 s per start).
if [ -n "${AIRFLOW_PEER_DB_TEMPLATE:-}" ] && [ -s "$AIRFLOW_PEER_DB_TEMPLATE" ]; then
  cp "$AIRFLOW_PEER_DB_TEMPLATE" "$AIRFLOW_HOME/airflow.db"
else
  "$airflow" db migrate > "$AIRFLOW_HOME/migrate.log" 2>&1
  if [ -n "${AIRFLOW_PEER_DB_TEMPLATE:-}" ]; then
    cp "$AIRFLOW_HOME/airflow.db" "$AIRFLOW_PEER_DB_TEMPLATE.tmp.$$" && mv "$AIRFLOW_PEER_DB_TEMPLATE.tmp.$$" "$AIRFLOW_PEER_DB_TEMPLATE"
  fi
fi
t_migrated=$(date +%s.%N)

start() { # name, args...
  local name=$1; shift
  setsid "$airflow" "$@" > "$AIRFLOW_HOME/$name.log" 2>&1 < /dev/null &
  echo "$name $!" >> "$AIRFLOW_HOME/pids"
}
start api-server api-server --host 127.0.0.1 --port "$AIRFLOW_PEER_PORT" --workers 1
start scheduler scheduler --skip-serve-logs   # serve-logs would listen on 0.0.0.0:8793
start dag-processor dag-processor
[ "${AIRFLOW_PEER_TRIGGERER:-0}" != 1 ] || start triggerer triggerer --skip-serve-logs
cat "$AIRFLOW_HOME/pids"

[ "${AIRFLOW_PEER_WAIT:-1}" = 1 ] || exit 0
# From here on a failure stops everything this script started.
trap 'rc=$?; [ $rc = 0 ] || "$here/stop.sh" "$AIRFLOW_HOME"' EXIT
deadline=$(( $(date +%s) + ${AIRFLOW_PEER_TIMEOUT:-120} ))
alive() { # fail fast when a component died (port taken, bad config, ...)
  local name pid
  while read -r name pid; do
    kill -0 "$pid" 2>/dev/null || { echo "start.sh: $name exited; see $AIRFLOW_HOME/$name.log" >&2; return 1; }
  done < "$AIRFLOW_HOME/pids"
}
# Healthy = the API answers and both the scheduler and the dag-processor have heartbeated.
healthy() {
  local h
  h=$(curl -fsS "http://127.0.0.1:$AIRFLOW_PEER_PORT/api/v2/monitor/health" 2>/dev/null) || return 1
  [[ $h == *'"scheduler":{"status":"healthy"'* && $h == *'"dag_processor":{"status":"healthy"'* ]]
}
until healthy; do
  alive
  [ "$(date +%s)" -lt "$deadline" ] || { echo "start.sh: api-server not healthy in time; see $AIRFLOW_HOME/api-server.log" >&2; exit 1; }
  sleep 0.2
done
t_healthy=$(date +%s.%N)
dags=$(cd "$AIRFLOW__CORE__DAGS_FOLDER" && ls *.py | sed 's/\.py$//' | LC_ALL=C sort | tr '\n' ' ')
until [ "$("$py" - "$AIRFLOW_HOME/airflow.db" <<'EOF'
import sqlite3, sys
c = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=5)
print(" ".join(sorted(r[0] for r in c.execute("select d.dag_id from dag d join serialized_dag s on s.dag_id = d.dag_id where d.is_stale = 0"))) + " ")
EOF
)" = "$dags" ]; do
  alive
  [ "$(date +%s)" -lt "$deadline" ] || { echo "start.sh: DAGs not parsed in time; see $AIRFLOW_HOME/dag-processor.log" >&2; exit 1; }
  sleep 0.3
done
t_parsed=$(date +%s.%N)
printf 'start.sh: migrated %.1fs, healthy %.1fs, DAGs parsed %.1fs after start\n' \
  "$(awk "BEGIN{print $t_migrated - $t0}")" "$(awk "BEGIN{print $t_healthy - $t0}")" "$(awk "BEGIN{print $t_parsed - $t0}")"
