"""Test DAG for the Portcullis Airflow peer: a human-in-the-loop approval between two tasks.

The approval task writes its HITL detail and then defers; it resumes only with a triggerer
(start.sh: AIRFLOW_PEER_TRIGGERER=1), but the HITL API endpoints work without one.
"""

from __future__ import annotations

import pendulum

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import DAG

with DAG(
    dag_id="approvals",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    is_paused_upon_creation=False,
    tags=["portcullis-test"],
) as dag:
    prepare = EmptyOperator(task_id="prepare")
    approve = ApprovalOperator(task_id="approve", subject="Release the report?", body="Portcullis test")
    publish = EmptyOperator(task_id="publish")
    prepare >> approve >> publish
