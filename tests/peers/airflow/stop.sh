#!/usr/bin/env bash
# Stop what start.sh started in $AIRFLOW_HOME (or $1): SIGTERM to each process group, SIGKILL after
# AIRFLOW_PEER_STOP_TIMEOUT seconds (default 10).
home="${1:-${AIRFLOW_HOME:?set AIRFLOW_HOME or pass it}}"
rm -f "$home/watchdog"   # start.sh's watchdog (AIRFLOW_PEER_PARENT_PID) quits when this is gone
[ -f "$home/pids" ] || exit 0
pids=$(awk '{print $2}' "$home/pids")
for p in $pids; do kill -TERM -- "-$p" 2>/dev/null; done
for _ in $(seq $(( ${AIRFLOW_PEER_STOP_TIMEOUT:-10} * 10 ))); do
  alive=0; for p in $pids; do kill -0 -- "-$p" 2>/dev/null && alive=1; done
  [ $alive = 0 ] && break; sleep 0.1
done
for p in $pids; do kill -KILL -- "-$p" 2>/dev/null; done
rm -f "$home/pids"
