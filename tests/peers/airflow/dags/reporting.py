"""Test DAG for the Portcullis Airflow peer: three tasks, no schedule, never paused at creation; produces an asset."""

from __future__ import annotations

import pendulum

from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, Asset

# `load` produces this asset, so POST /api/v2/assets/{id}/materialize runs this DAG.
REPORT = Asset("portcullis_report", uri="file:///tmp/portcullis_report")

with DAG(
    dag_id="reporting",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    is_paused_upon_creation=False,
    tags=["portcullis-test"],
) as dag:
    extract = EmptyOperator(task_id="extract")
    transform = BashOperator(task_id="transform", bash_command="true")
    load = EmptyOperator(task_id="load", outlets=[REPORT])
    extract >> transform >> load
