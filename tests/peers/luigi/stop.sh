#!/usr/bin/env bash
# Stop what start.sh started in $LUIGI_HOME (or $1): SIGTERM to the process group, SIGKILL after 5 s.
home="${1:-${LUIGI_HOME:?set LUIGI_HOME or pass it}}"
rm -f "$home/watchdog"   # start.sh's watchdog (LUIGI_PEER_PARENT_PID) quits when this is gone
[ -f "$home/pids" ] || exit 0
for p in $(awk '{print $2}' "$home/pids"); do
  kill -TERM -- "-$p" 2>/dev/null
  for _ in $(seq 50); do kill -0 -- "-$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$p" 2>/dev/null
done
rm -f "$home/pids"
