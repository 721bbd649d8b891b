"""SQLite connection arguments for the test peer.

Python's sqlite3 gives up on a locked database after 5 s and raises "database is locked"; the
scheduler dies on that error. Tests run Airflow beside other peers on two cores, where a write can
wait longer than 5 s, so every Airflow process here waits up to 60 s for the lock instead.
Named by AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS(_ASYNC) in start.sh.
"""

SYNC = {"timeout": 60}
ASYNC = {"timeout": 60}
