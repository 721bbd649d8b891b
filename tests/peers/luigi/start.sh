#!/usr/bin/env bash
# Start a real Luigi central scheduler (luigid) on 127.0.0.1 for integration tests.
#
# Inputs (environment):
#   LUIGI_HOME        required: a fresh directory; gets luigi.cfg, state.pickle, luigid.log, pids
#   LUIGI_PEER_PORT   required: the port on 127.0.0.1
#   LUIGI_PEER_VENV   default: .venv beside this script
#   LUIGI_PEER_PARENT_PID optional: a watchdog (its own session, pid in $LUIGI_HOME/watchdog) runs stop.sh
#                     as soon as this process is gone (a test binary that exits, panics or is killed); it
#                     quits when stop.sh is run otherwise
# Output: $LUIGI_HOME/pids ("luigid PID"; the pid leads its own process group). Stop: stop.sh, or
# kill -TERM -- -PID (luigid then pickles its state to $LUIGI_HOME/state.pickle and exits).
# Waits until `HEAD /` answers (204) and prints the time it took.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${LUIGI_HOME:?set LUIGI_HOME to a fresh directory}"
: "${LUIGI_PEER_PORT:?set LUIGI_PEER_PORT}"
venv="${LUIGI_PEER_VENV:-$here/.venv}"
[ -x "$venv/bin/luigid" ] || { echo "start.sh: no $venv/bin/luigid; run .ci/install-peers, or: python3 -m venv $venv && $venv/bin/pip install -r $here/requirements.txt" >&2; exit 2; }
mkdir -p "$LUIGI_HOME"
LUIGI_HOME="$(cd "$LUIGI_HOME" && pwd)"
t0=$(date +%s.%N)
if [ -n "${LUIGI_PEER_PARENT_PID:-}" ]; then
  : > "$LUIGI_HOME/watchdog"
  setsid bash -c 'while kill -0 "$1" 2>/dev/null; do [ -f "$2/watchdog" ] || exit 0; sleep 0.5; done
    "$3/stop.sh" "$2"' watchdog "$LUIGI_PEER_PARENT_PID" "$LUIGI_HOME" "$here" > /dev/null 2>&1 < /dev/null &
  echo "$!" > "$LUIGI_HOME/watchdog"
fi
# luigi reads LUIGI_CONFIG_PATH (and would otherwise read /etc/luigi/luigi.cfg and ./luigi.cfg).
cat > "$LUIGI_HOME/luigi.cfg" <<CFG
[scheduler]
state_path = $LUIGI_HOME/state.pickle
record_task_history = false
remove_delay = 600
retry_delay = 1
CFG
export LUIGI_CONFIG_PATH="$LUIGI_HOME/luigi.cfg"
# No --background: that would daemonize (double fork) and want a pidfile; setsid gives a process group.
setsid "$venv/bin/luigid" --address 127.0.0.1 --port "$LUIGI_PEER_PORT" --state-path "$LUIGI_HOME/state.pickle" \
  > "$LUIGI_HOME/luigid.log" 2>&1 < /dev/null &
echo "luigid $!" > "$LUIGI_HOME/pids"
cat "$LUIGI_HOME/pids"
for _ in $(seq 300); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' -I "http://127.0.0.1:$LUIGI_PEER_PORT/")" = 204 ] && {
    printf 'start.sh: luigid up after %.1fs\n' "$(awk "BEGIN{print $(date +%s.%N) - $t0}")"; exit 0; }
  sleep 0.1
done
echo "start.sh: luigid did not answer; see $LUIGI_HOME/luigid.log" >&2; exit 1
