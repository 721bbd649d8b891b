//! The built-in resource templates against request shapes taken from each API's published
//! reference: every case names the exact object, action and audit workflow attributes a request
//! resolves to. Paths are canonical (percent-decoded once, no query string), as `resolve` sees them.
#![cfg(test)]

use std::collections::BTreeMap;

use portcullis::authz::resources::{Templates, Workflow};

/// What a request must resolve to.
#[derive(Debug, PartialEq, Eq)]
struct Want {
    object: String,
    action: String,
    workflow: Workflow,
}

/// One request shape and what it must resolve to.
struct Case {
    method: &'static str,
    path: String,
    want: Want,
}

/// A case with no workflow attributes; add them with the builder methods.
fn case(method: &'static str, path: impl Into<String>, object: impl Into<String>, action: &str) -> Case {
    Case {
        method,
        path: path.into(),
        want: Want {
            object: object.into(),
            action: action.to_string(),
            workflow: Workflow::default(),
        },
    }
}

/// A request no rule matches: object is the canonical path, action the HTTP method.
fn unmatched(method: &'static str, path: impl Into<String>) -> Case {
    let path = path.into();
    case(method, path.clone(), path, method)
}

impl Case {
    fn pipeline(mut self, v: &str) -> Case {
        self.want.workflow.pipeline = Some(v.to_string());
        self
    }
    fn run(mut self, v: &str) -> Case {
        self.want.workflow.run = Some(v.to_string());
        self
    }
    fn task(mut self, v: &str) -> Case {
        self.want.workflow.task = Some(v.to_string());
        self
    }
    fn task_run(mut self, v: &str) -> Case {
        self.want.workflow.task_run = Some(v.to_string());
        self
    }
}

/// Resolves every case with the built-in `template` and reports all mismatches at once.
fn check(template: &str, cases: &[Case]) {
    let templates = Templates::load(&BTreeMap::new()).expect("the built-in templates load");
    let t = templates.get(template).expect("the template is built in");
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|c| {
            let r = t.resolve(c.method, &c.path, None);
            let got = Want {
                object: r.object,
                action: r.action,
                workflow: r.workflow,
            };
            (got != c.want)
                .then(|| format!("{} {}\n    got  {got:?}\n    want {:?}", c.method, c.path, c.want))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{template}: {} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Apache Airflow
// ---------------------------------------------------------------------------------------------

const RUN: &str = "scheduled__2024-05-01T00:00:00+00:00";

// Airflow 2 stable REST API v1: apache/airflow airflow/api_connexion/openapi/v1.yaml
// (https://airflow.apache.org/docs/apache-airflow/2.10.5/stable-rest-api-ref.html).
#[test]
fn airflow_requests_name_the_dag_and_the_verb() {
    let dag = "/api/v1/dags/etl_daily";
    let run = format!("{dag}/dagRuns/{RUN}");
    let ti = format!("{run}/taskInstances/extract");
    check(
        "airflow",
        &[
            // A list: the response is filtered to the DAGs the caller may read.
            case("GET", "/api/v1/dags", "dags", "list"),
            // PATCH /dags?dag_id_pattern=... pauses many DAGs; a LIKE pattern names no DAG.
            case("PATCH", "/api/v1/dags", "dag:*", "pause"),
            case("GET", dag, "dag:etl_daily", "read").pipeline("etl_daily"),
            case("GET", format!("{dag}/details"), "dag:etl_daily", "read").pipeline("etl_daily"),
            case("GET", format!("{dag}/tasks/extract"), "dag:etl_daily", "read").pipeline("etl_daily"),
            case("PATCH", dag, "dag:etl_daily", "pause").pipeline("etl_daily"),
            case("DELETE", dag, "dag:etl_daily", "delete").pipeline("etl_daily"),
            case("GET", format!("{dag}/dagRuns"), "dag:etl_daily", "read").pipeline("etl_daily"),
            case("POST", format!("{dag}/dagRuns"), "dag:etl_daily", "trigger").pipeline("etl_daily"),
            case("GET", run.clone(), "dag:etl_daily", "read")
                .pipeline("etl_daily")
                .run(RUN),
            // update_dag_run_state marks a run success, failed or queued.
            case("PATCH", run.clone(), "dag:etl_daily", "set_state")
                .pipeline("etl_daily")
                .run(RUN),
            case("DELETE", run.clone(), "dag:etl_daily", "delete")
                .pipeline("etl_daily")
                .run(RUN),
            // Without a body saying `dry_run: false`, Airflow only reports what it would clear.
            case("POST", format!("{run}/clear"), "dag:etl_daily", "read")
                .pipeline("etl_daily")
                .run(RUN),
            case("PATCH", format!("{run}/setNote"), "dag:etl_daily", "set_state")
                .pipeline("etl_daily")
                .run(RUN),
            case(
                "GET",
                format!("{run}/upstreamDatasetEvents"),
                "dag:etl_daily",
                "read",
            )
            .pipeline("etl_daily")
            .run(RUN),
            case(
                "POST",
                format!("{dag}/clearTaskInstances"),
                "dag:etl_daily",
                "read",
            )
            .pipeline("etl_daily"),
            case(
                "POST",
                format!("{dag}/updateTaskInstancesState"),
                "dag:etl_daily",
                "read",
            )
            .pipeline("etl_daily"),
            case("GET", format!("{run}/taskInstances"), "dag:etl_daily", "read")
                .pipeline("etl_daily")
                .run(RUN),
            case("GET", ti.clone(), "dag:etl_daily", "read")
                .pipeline("etl_daily")
                .run(RUN)
                .task("extract"),
            case("PATCH", ti.clone(), "dag:etl_daily", "set_state")
                .pipeline("etl_daily")
                .run(RUN)
                .task("extract"),
            case("GET", format!("{ti}/3"), "dag:etl_daily", "read")
                .pipeline("etl_daily")
                .run(RUN)
                .task("extract"),
            case("PATCH", format!("{ti}/3"), "dag:etl_daily", "set_state")
                .pipeline("etl_daily")
                .run(RUN)
                .task("extract"),
            case("PATCH", format!("{ti}/setNote"), "dag:etl_daily", "set_state")
                .pipeline("etl_daily")
                .run(RUN)
                .task("extract"),
            case("GET", format!("{ti}/logs/1"), "dag:etl_daily", "read")
                .pipeline("etl_daily")
                .run(RUN)
                .task("extract"),
            case(
                "GET",
                format!("{ti}/xcomEntries/return_value"),
                "dag:etl_daily",
                "read",
            )
            .pipeline("etl_daily")
            .run(RUN)
            .task("extract"),
            case("GET", format!("{ti}/listMapped"), "dag:etl_daily", "read")
                .pipeline("etl_daily")
                .run(RUN)
                .task("extract"),
            // Deleting a DAG's queued dataset events (2.9+) is a delete on that DAG.
            case(
                "DELETE",
                format!("{dag}/datasets/queuedEvent"),
                "dag:etl_daily",
                "delete",
            )
            .pipeline("etl_daily"),
        ],
    );
}

// Airflow 3 public API v2: apache/airflow
// airflow-core/src/airflow/api_fastapi/core_api/routes/public/{dags,dag_run,task_instances,xcom,assets}.py
// (https://airflow.apache.org/docs/apache-airflow/stable/stable-rest-api-ref.html).
#[test]
fn airflow_3_public_api_v2_requests_map_like_v1() {
    let dag = "/api/v2/dags/etl_daily";
    let run = format!("{dag}/dagRuns/{RUN}");
    let ti = format!("{run}/taskInstances/extract");
    check(
        "airflow",
        &[
            case("GET", "/api/v2/dags", "dags", "list"),
            case("PATCH", "/api/v2/dags", "dag:*", "pause"),
            case("GET", dag, "dag:etl_daily", "read").pipeline("etl_daily"),
            case("PATCH", dag, "dag:etl_daily", "pause").pipeline("etl_daily"),
            case("DELETE", dag, "dag:etl_daily", "delete").pipeline("etl_daily"),
            case("POST", format!("{dag}/dagRuns"), "dag:etl_daily", "trigger").pipeline("etl_daily"),
            case("GET", run.clone(), "dag:etl_daily", "read")
                .pipeline("etl_daily")
                .run(RUN),
            case("GET", format!("{run}/wait"), "dag:etl_daily", "read")
                .pipeline("etl_daily")
                .run(RUN),
            case("PATCH", run.clone(), "dag:etl_daily", "set_state")
                .pipeline("etl_daily")
                .run(RUN),
            case("POST", format!("{run}/clear"), "dag:etl_daily", "read")
                .pipeline("etl_daily")
                .run(RUN),
            case("DELETE", run.clone(), "dag:etl_daily", "delete")
                .pipeline("etl_daily")
                .run(RUN),
            // Bulk update/delete of a run's task instances: the path's DAG, and (from the body)
            // each entity's own, tested where bodies are.
            case(
                "PATCH",
                format!("{run}/taskInstances"),
                "dag:etl_daily",
                "set_state",
            )
            .pipeline("etl_daily")
            .run(RUN),
            case(
                "POST",
                format!("{dag}/clearTaskInstances"),
                "dag:etl_daily",
                "read",
            )
            .pipeline("etl_daily"),
            // A dry run reports what a state change would touch: a read.
            case("PATCH", format!("{ti}/dry_run"), "dag:etl_daily", "read")
                .pipeline("etl_daily")
                .run(RUN)
                .task("extract"),
            case("DELETE", ti.clone(), "dag:etl_daily", "delete")
                .pipeline("etl_daily")
                .run(RUN)
                .task("extract"),
            // XComs are what downstream tasks read: writing one is its own action.
            case("POST", format!("{ti}/xcomEntries"), "dag:etl_daily", "write_xcom")
                .pipeline("etl_daily")
                .run(RUN)
                .task("extract"),
            case(
                "DELETE",
                format!("{ti}/xcomEntries/return_value"),
                "dag:etl_daily",
                "write_xcom",
            )
            .pipeline("etl_daily")
            .run(RUN)
            .task("extract"),
            case("GET", format!("{ti}/logs/2"), "dag:etl_daily", "read")
                .pipeline("etl_daily")
                .run(RUN)
                .task("extract"),
            case(
                "GET",
                format!("{dag}/assets/queuedEvents"),
                "dag:etl_daily",
                "read",
            )
            .pipeline("etl_daily"),
            case(
                "DELETE",
                format!("{dag}/assets/queuedEvents"),
                "dag:etl_daily",
                "delete",
            )
            .pipeline("etl_daily"),
            // Airflow itself authorizes (un)favouriting with GET access to the DAG.
            case("POST", format!("{dag}/favorite"), "dag:etl_daily", "read").pipeline("etl_daily"),
            case("POST", format!("{dag}/unfavorite"), "dag:etl_daily", "read").pipeline("etl_daily"),
        ],
    );
}

// v1.yaml `/dags/~/dagRuns/list`, `/dags/~/dagRuns/~/taskInstances/list` and the "`~` for all"
// notes on get_dag_runs, get_task_instances and get_xcom_entries; dag_run.py `/list` (v2).
#[test]
fn airflow_tilde_and_batch_list_requests_read_all_dags() {
    check(
        "airflow",
        &[
            // A POST that only reads, over every DAG: not a trigger, not a DAG named `~`; a list,
            // whose response is filtered to the DAGs the caller may read.
            case("POST", "/api/v1/dags/~/dagRuns/list", "dags", "list").pipeline("*"),
            case("POST", "/api/v2/dags/~/dagRuns/list", "dags", "list").pipeline("*"),
            case(
                "POST",
                "/api/v1/dags/~/dagRuns/~/taskInstances/list",
                "dags",
                "list",
            )
            .pipeline("*")
            .run("*"),
            case(
                "POST",
                "/api/v2/dags/~/dagRuns/~/taskInstances/list",
                "dags",
                "list",
            )
            .pipeline("*")
            .run("*"),
            case("GET", "/api/v1/dags/~/dagRuns", "dags", "list").pipeline("*"),
            case("GET", "/api/v1/dags/~/dagRuns/~/taskInstances", "dags", "list")
                .pipeline("*")
                .run("*"),
            case(
                "GET",
                "/api/v1/dags/~/dagRuns/~/taskInstances/~/xcomEntries",
                "dags",
                "list",
            )
            .pipeline("*")
            .run("*")
            .task("*"),
        ],
    );
}

// v1.yaml `/pools`, `/parseDagFile/{file_token}`; v2 backfills.py (the DAG id is in the body).
#[test]
fn airflow_s_other_resources_have_objects_and_unknown_paths_are_asked_as_themselves() {
    check(
        "airflow",
        &[
            case("GET", "/api/v1/pools", "pools:*", "read"),
            case(
                "DELETE",
                "/api/v2/variables/db_password",
                "variables:db_password",
                "delete",
            ),
            case(
                "GET",
                "/api/v2/connections/warehouse",
                "connections:warehouse",
                "read",
            ),
            case("GET", "/api/v2/config", "config", "read"),
            case(
                "PUT",
                "/api/v1/parseDagFile/Ii9maWxlcy9kYWdzL2V0bC5weSI",
                "dag_file:Ii9maWxlcy9kYWdzL2V0bC5weSI",
                "reparse",
            ),
            // The body names the DAG (tested where bodies are); without one, every DAG.
            case("POST", "/api/v2/backfills", "dag:*", "backfill"),
            case("POST", "/api/v2/assets/7/materialize", "asset:7", "materialize"),
            case("GET", "/health", "health", "read"),
            // A POST under a DAG that no rule names is not taken for a trigger or a read.
            case(
                "POST",
                "/api/v2/dags/etl_daily/reparse",
                "unmapped:/api/v2/dags/etl_daily/reparse",
                "call",
            ),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// Tekton through the Kubernetes API
// ---------------------------------------------------------------------------------------------

// Kubernetes API concepts (collection and item URLs, subresources):
// https://kubernetes.io/docs/reference/using-api/api-concepts/ and the request verbs in
// https://kubernetes.io/docs/reference/access-authn-authz/authorization/#determine-the-request-verb;
// Tekton's resources (tekton.dev v1 and v1beta1): tektoncd/pipeline docs/pipelineruns.md and
// docs/taskruns.md (a PipelineRun is cancelled by patching spec.status).
#[test]
fn tekton_requests_use_kubernetes_verbs_on_namespaced_objects() {
    let prs = "/apis/tekton.dev/v1/namespaces/ci/pipelineruns";
    let pr = "/apis/tekton.dev/v1/namespaces/ci/pipelineruns/build-7";
    check(
        "tekton",
        &[
            // GET of a collection is list (a watch is list too: `?watch=1` is in the query).
            case(
                "GET",
                "/apis/tekton.dev/v1/pipelineruns",
                "pipelineruns:*/*",
                "list",
            ),
            case("GET", "/apis/tekton.dev/v1beta1/taskruns", "taskruns:*/*", "list"),
            case("GET", prs, "pipelineruns:ci/*", "list"),
            case("POST", prs, "pipelineruns:ci/*", "create"),
            case("DELETE", prs, "pipelineruns:ci/*", "deletecollection"),
            case("GET", pr, "pipelineruns:ci/build-7", "get").run("build-7"),
            case("PUT", pr, "pipelineruns:ci/build-7", "update").run("build-7"),
            case("PATCH", pr, "pipelineruns:ci/build-7", "patch").run("build-7"),
            case("DELETE", pr, "pipelineruns:ci/build-7", "delete").run("build-7"),
            case(
                "GET",
                "/apis/tekton.dev/v1beta1/namespaces/ci/pipelineruns/build-7",
                "pipelineruns:ci/build-7",
                "get",
            )
            .run("build-7"),
            case(
                "GET",
                "/apis/tekton.dev/v1/namespaces/ci/taskruns",
                "taskruns:ci/*",
                "list",
            ),
            case(
                "PATCH",
                "/apis/tekton.dev/v1beta1/namespaces/ci/taskruns/build-7-compile",
                "taskruns:ci/build-7-compile",
                "patch",
            )
            .task_run("build-7-compile"),
            case(
                "POST",
                "/apis/tekton.dev/v1/namespaces/ci/pipelines",
                "pipelines:ci/*",
                "create",
            ),
            case(
                "PUT",
                "/apis/tekton.dev/v1/namespaces/ci/tasks/git-clone",
                "tasks:ci/git-clone",
                "update",
            ),
            case(
                "GET",
                "/apis/tekton.dev/v1beta1/namespaces/ci/customruns/wait-1",
                "customruns:ci/wait-1",
                "get",
            ),
        ],
    );
}

// The status subresource: `/apis/<group>/<version>/namespaces/<ns>/<resource>/<name>/status`
// (Kubernetes API conventions, "Subresources"; Tekton's controllers write PipelineRun status there).
#[test]
fn a_tekton_status_subresource_names_its_object_not_an_object_called_status() {
    let status = "/apis/tekton.dev/v1/namespaces/ci/pipelineruns/build-7/status";
    check(
        "tekton",
        &[
            case("GET", status, "pipelineruns:ci/build-7", "get").run("build-7"),
            case("PUT", status, "pipelineruns:ci/build-7", "update").run("build-7"),
            case("PATCH", status, "pipelineruns:ci/build-7", "patch").run("build-7"),
            case(
                "PATCH",
                "/apis/tekton.dev/v1beta1/namespaces/ci/taskruns/build-7-compile/status",
                "taskruns:ci/build-7-compile",
                "patch",
            )
            .task_run("build-7-compile"),
            // One segment shorter, `status` is the name of a PipelineRun.
            case(
                "GET",
                "/apis/tekton.dev/v1/namespaces/ci/pipelineruns/status",
                "pipelineruns:ci/status",
                "get",
            )
            .run("status"),
        ],
    );
}

// Discovery documents, the deprecated `/watch/` prefix, the cluster-scoped ClusterTask (v1beta1
// only, deprecated and since removed: tektoncd/pipeline#8556), another API group and pod logs.
#[test]
fn tekton_unknown_paths_fall_back_to_path_and_method() {
    check(
        "tekton",
        &[
            unmatched("GET", "/apis/tekton.dev/v1"),
            unmatched("GET", "/apis/tekton.dev/v1/watch/namespaces/ci/pipelineruns"),
            unmatched("GET", "/apis/tekton.dev/v1beta1/clustertasks/git-clone"),
            unmatched(
                "POST",
                "/apis/triggers.tekton.dev/v1beta1/namespaces/ci/eventlisteners",
            ),
            unmatched("GET", "/api/v1/namespaces/ci/pods/build-7-compile-pod/log"),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// GitLab REST API v4
// ---------------------------------------------------------------------------------------------

// gitlab-org/gitlab doc/api/pipelines.md (https://docs.gitlab.com/api/pipelines/) and
// doc/api/pipeline_triggers.md (`POST /projects/:id/trigger/pipeline`).
#[test]
fn gitlab_pipeline_requests_name_the_project_and_the_pipeline() {
    let p = "/api/v4/projects/42/pipelines/1001";
    check(
        "gitlab",
        &[
            case("GET", "/api/v4/projects/42/pipelines", "pipeline:42/*", "read").pipeline("42"),
            case("GET", p, "pipeline:42/1001", "read")
                .pipeline("42")
                .run("1001"),
            case("GET", format!("{p}/jobs"), "pipeline:42/1001", "read")
                .pipeline("42")
                .run("1001"),
            case("GET", format!("{p}/bridges"), "pipeline:42/1001", "read")
                .pipeline("42")
                .run("1001"),
            case("GET", format!("{p}/variables"), "pipeline:42/1001", "read")
                .pipeline("42")
                .run("1001"),
            case("GET", format!("{p}/test_report"), "pipeline:42/1001", "read")
                .pipeline("42")
                .run("1001"),
            case(
                "GET",
                format!("{p}/test_report_summary"),
                "pipeline:42/1001",
                "read",
            )
            .pipeline("42")
            .run("1001"),
            // `POST /projects/:id/pipeline?ref=main`
            case("POST", "/api/v4/projects/42/pipeline", "pipeline:42/*", "create").pipeline("42"),
            case(
                "POST",
                "/api/v4/projects/42/trigger/pipeline",
                "pipeline:42/*",
                "trigger",
            )
            .pipeline("42"),
            case("POST", format!("{p}/retry"), "pipeline:42/1001", "retry")
                .pipeline("42")
                .run("1001"),
            case("POST", format!("{p}/cancel"), "pipeline:42/1001", "cancel")
                .pipeline("42")
                .run("1001"),
            case("PUT", format!("{p}/metadata"), "pipeline:42/1001", "write")
                .pipeline("42")
                .run("1001"),
            case("DELETE", p, "pipeline:42/1001", "delete")
                .pipeline("42")
                .run("1001"),
        ],
    );
}

// gitlab-org/gitlab doc/api/jobs.md (https://docs.gitlab.com/api/jobs/) and doc/api/job_artifacts.md.
#[test]
fn gitlab_job_requests_name_the_job_and_its_verb() {
    let j = "/api/v4/projects/42/jobs/555";
    check(
        "gitlab",
        &[
            case("GET", "/api/v4/projects/42/jobs", "job:42/*", "read").pipeline("42"),
            case("GET", j, "job:42/555", "read")
                .pipeline("42")
                .task_run("555"),
            case("GET", format!("{j}/trace"), "job:42/555", "read")
                .pipeline("42")
                .task_run("555"),
            case("GET", format!("{j}/artifacts"), "job:42/555", "read")
                .pipeline("42")
                .task_run("555"),
            case(
                "GET",
                format!("{j}/artifacts/coverage/index.html"),
                "job:42/555",
                "read",
            )
            .pipeline("42")
            .task_run("555"),
            case("POST", format!("{j}/play"), "job:42/555", "play")
                .pipeline("42")
                .task_run("555"),
            case("POST", format!("{j}/retry"), "job:42/555", "retry")
                .pipeline("42")
                .task_run("555"),
            case("POST", format!("{j}/cancel"), "job:42/555", "cancel")
                .pipeline("42")
                .task_run("555"),
            case("POST", format!("{j}/erase"), "job:42/555", "erase")
                .pipeline("42")
                .task_run("555"),
            case("DELETE", format!("{j}/artifacts"), "job:42/555", "delete")
                .pipeline("42")
                .task_run("555"),
            // Keeping artifacts is no job verb of the template: a write on the project.
            case("POST", format!("{j}/artifacts/keep"), "project:42", "write").pipeline("42"),
        ],
    );
}

// pipelines.md "Get the latest pipeline" (`GET /projects/:id/pipelines/latest?ref=`) and
// job_artifacts.md "Download the artifacts archive" (`/jobs/artifacts/:ref_name/download?job=`).
#[test]
fn gitlab_words_in_id_positions_are_not_taken_for_ids() {
    check(
        "gitlab",
        &[
            case(
                "GET",
                "/api/v4/projects/42/pipelines/latest",
                "pipeline:42/*",
                "read",
            )
            .pipeline("42"),
            case(
                "GET",
                "/api/v4/projects/42/jobs/artifacts/main/download",
                "job:42/*",
                "read",
            )
            .pipeline("42"),
            case(
                "GET",
                "/api/v4/projects/42/jobs/artifacts/release/2.1/raw/dist/app.tar.gz",
                "job:42/*",
                "read",
            )
            .pipeline("42"),
            // pipeline_schedules.md: playing a schedule is a project write, not a job play.
            case(
                "POST",
                "/api/v4/projects/42/pipeline_schedules/7/play",
                "project:42",
                "write",
            )
            .pipeline("42"),
            case("GET", "/api/v4/projects/42", "project:42", "read").pipeline("42"),
            case("GET", "/api/v4/projects/42/repository/tree", "project:42", "read").pipeline("42"),
        ],
    );
}

// jobs.md "Get job token's job" (`GET /job`), projects.md "List all projects", version.md.
#[test]
fn gitlab_unknown_paths_fall_back_to_path_and_method() {
    check(
        "gitlab",
        &[
            case("GET", "/api/v4/projects", "project:*", "read"),
            unmatched("GET", "/api/v4/job"),
            unmatched("GET", "/api/v4/version"),
            unmatched("POST", "/api/v4/user/runners"),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// Conductor (Netflix conductor / conductor-oss, Orkes)
// ---------------------------------------------------------------------------------------------

const WF: &str = "3f1c2a9e-0000-4000-8000-000000000001";

// conductor-oss/conductor rest/src/main/java/com/netflix/conductor/rest/controllers/WorkflowResource.java;
// Orkes: https://orkes.io/content/reference-docs/api/workflow/skip-task-from-workflow and
// .../synchronous-execution (`POST /api/workflow/execute/{name}/{version}`).
#[test]
fn conductor_workflow_requests_name_the_definition_or_the_execution() {
    let e = format!("/api/workflow/{WF}");
    let exec = format!("execution:{WF}");
    let x = exec.as_str();
    check(
        "conductor",
        &[
            // StartWorkflowRequest in the body names the workflow.
            case("POST", "/api/workflow", "workflow:*", "start"),
            case(
                "POST",
                "/api/workflow/encode_and_publish",
                "workflow:encode_and_publish",
                "start",
            )
            .pipeline("encode_and_publish"),
            case(
                "POST",
                "/api/workflow/execute/encode_and_publish/3",
                "workflow:encode_and_publish",
                "start",
            )
            .pipeline("encode_and_publish"),
            case("GET", e.clone(), x, "read").run(WF),
            case("DELETE", e.clone(), x, "terminate").run(WF),
            case("DELETE", format!("{e}/remove"), x, "delete").run(WF),
            case("PUT", format!("{e}/pause"), x, "pause").run(WF),
            case("PUT", format!("{e}/resume"), x, "resume").run(WF),
            case("POST", format!("{e}/restart"), x, "restart").run(WF),
            case("POST", format!("{e}/retry"), x, "retry").run(WF),
            case("POST", format!("{e}/rerun"), x, "rerun").run(WF),
            case("POST", format!("{e}/resetcallbacks"), x, "resetcallbacks").run(WF),
            // skiptask is a PUT in both conductor-oss and Orkes.
            case("PUT", format!("{e}/skiptask/encode_ref"), x, "skip")
                .run(WF)
                .task("encode_ref"),
        ],
    );
}

// WorkflowResource.java (`/running/{name}`, `/search*`, `/externalstoragelocation`,
// `/{name}/correlated`, `/decide/{workflowId}`, `test`) and WorkflowBulkResource.java (`/bulk/*`).
#[test]
fn conductor_paths_that_are_not_execution_ids_are_not_read_as_one() {
    check(
        "conductor",
        &[
            // Lists running workflow ids of a definition: `encode_and_publish` is a name, not an id.
            case(
                "GET",
                "/api/workflow/running/encode_and_publish",
                "workflow:encode_and_publish",
                "read",
            )
            .pipeline("encode_and_publish"),
            case("GET", "/api/workflow/search", "workflow:*", "read"),
            case("GET", "/api/workflow/search-v2", "workflow:*", "read"),
            case("GET", "/api/workflow/search-by-tasks", "workflow:*", "read"),
            case("GET", "/api/workflow/search-by-tasks-v2", "workflow:*", "read"),
            case(
                "GET",
                "/api/workflow/externalstoragelocation",
                "workflow:*",
                "read",
            ),
            case(
                "GET",
                "/api/workflow/encode_and_publish/correlated/order-123",
                "workflow:encode_and_publish",
                "read",
            )
            .pipeline("encode_and_publish"),
            case(
                "POST",
                "/api/workflow/encode_and_publish/correlated",
                "workflow:encode_and_publish",
                "read",
            )
            .pipeline("encode_and_publish"),
            case(
                "PUT",
                format!("/api/workflow/decide/{WF}"),
                format!("execution:{WF}"),
                "decide",
            )
            .run(WF),
            // A test run of a definition in the body, not a workflow named `test`.
            case("POST", "/api/workflow/test", "workflow:*", "start"),
            // Bulk operations take a list of execution ids in the body.
            case("PUT", "/api/workflow/bulk/pause", "execution:*", "pause"),
            case("PUT", "/api/workflow/bulk/resume", "execution:*", "resume"),
            case("POST", "/api/workflow/bulk/restart", "execution:*", "restart"),
            case("POST", "/api/workflow/bulk/retry", "execution:*", "retry"),
            case("POST", "/api/workflow/bulk/terminate", "execution:*", "terminate"),
        ],
    );
}

// conductor-oss/conductor .../rest/controllers/MetadataResource.java.
#[test]
fn conductor_metadata_requests_read_or_define_workflows_and_tasks() {
    check(
        "conductor",
        &[
            case("GET", "/api/metadata/workflow", "workflow:*", "read"),
            case("POST", "/api/metadata/workflow", "workflow:*", "define"),
            case("PUT", "/api/metadata/workflow", "workflow:*", "define"),
            case(
                "GET",
                "/api/metadata/workflow/names-and-versions",
                "workflow:*",
                "read",
            ),
            case(
                "GET",
                "/api/metadata/workflow/encode_and_publish",
                "workflow:encode_and_publish",
                "read",
            )
            .pipeline("encode_and_publish"),
            case(
                "DELETE",
                "/api/metadata/workflow/encode_and_publish/2",
                "workflow:encode_and_publish",
                "define",
            )
            .pipeline("encode_and_publish"),
            case("GET", "/api/metadata/taskdefs", "task:*", "read"),
            case("POST", "/api/metadata/taskdefs", "task:*", "define"),
            case("PUT", "/api/metadata/taskdefs", "task:*", "define"),
            case(
                "GET",
                "/api/metadata/taskdefs/encode_video",
                "task:encode_video",
                "read",
            )
            .task("encode_video"),
            case(
                "DELETE",
                "/api/metadata/taskdefs/encode_video",
                "task:encode_video",
                "define",
            )
            .task("encode_video"),
        ],
    );
}

// conductor-oss/conductor .../rest/controllers/TaskResource.java.
#[test]
fn conductor_task_requests_poll_update_and_read() {
    let task_id = "a1b2c3d4-0000-4000-8000-00000000000a";
    check(
        "conductor",
        &[
            case("GET", "/api/tasks/poll/encode_video", "task:encode_video", "poll").task("encode_video"),
            case(
                "GET",
                "/api/tasks/poll/batch/encode_video",
                "task:encode_video",
                "poll",
            )
            .task("encode_video"),
            // TaskResult in the body carries the task id.
            case("POST", "/api/tasks", "task:*", "update"),
            case("POST", "/api/tasks/update-v2", "task:*", "update"),
            case(
                "POST",
                format!("/api/tasks/{WF}/encode_ref/COMPLETED"),
                "task:*",
                "update",
            )
            .run(WF)
            .task("encode_ref"),
            case(
                "POST",
                format!("/api/tasks/{WF}/encode_ref/FAILED/sync"),
                "task:*",
                "update",
            )
            .run(WF)
            .task("encode_ref"),
            case("GET", format!("/api/tasks/{task_id}"), "task:*", "read").task_run(task_id),
            case("GET", format!("/api/tasks/{task_id}/log"), "task:*", "read").task_run(task_id),
            case("POST", format!("/api/tasks/{task_id}/log"), "task:*", "update").task_run(task_id),
            // Not task ids.
            case("GET", "/api/tasks/search", "task:*", "read"),
            case("GET", "/api/tasks/search-v2", "task:*", "read"),
            case("GET", "/api/tasks/externalstoragelocation", "task:*", "read"),
            case("GET", "/api/tasks/queue/all", "task:*", "read"),
            case("GET", "/api/tasks/queue/all/verbose", "task:*", "read"),
            case("GET", "/api/tasks/queue/size", "task:*", "read"),
            case("GET", "/api/tasks/queue/polldata/all", "task:*", "read"),
            case(
                "POST",
                "/api/tasks/queue/requeue/encode_video",
                "task:encode_video",
                "requeue",
            )
            .task("encode_video"),
        ],
    );
}

// HealthCheckResource, AdminResource, EventResource; Orkes "Upgrade Running Workflow"
// (`POST /api/workflow/{workflowId}/upgrade`), a verb the template does not name.
#[test]
fn conductor_unknown_paths_fall_back_to_path_and_method() {
    check(
        "conductor",
        &[
            unmatched("GET", "/health"),
            case("GET", "/api/admin/config", "admin", "read"),
            case("POST", "/api/event", "event_handler:*", "define"),
            unmatched("GET", "/api/secrets/db"),
            unmatched("POST", format!("/api/workflow/{WF}/upgrade")),
            unmatched("POST", "/api/workflow/bulk/archive"),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// Luigi central scheduler
// ---------------------------------------------------------------------------------------------

// spotify/luigi luigi/server.py (`/api/(.*)` → RPCHandler, GET and POST), luigi/scheduler.py
// (`@rpc_method` names), luigi/rpc.py (RemoteScheduler, the worker side) and
// luigi/static/visualiser/js/luigi.js (the visualiser's calls).
#[test]
fn luigi_scheduler_calls_are_sorted_into_read_work_and_operate() {
    let read = [
        "task_list",
        "task_search",
        "fetch_error",
        "graph",
        "dep_graph",
        "inverse_dep_graph",
        "worker_list",
        "resource_list",
        "get_task_status_message",
        "get_task_progress_percentage",
        "has_task_history",
        "is_pause_enabled",
        "is_paused",
    ];
    let work = [
        "add_task",
        "add_worker",
        "get_work",
        "ping",
        "count_pending",
        "add_task_batcher",
        "set_task_status_message",
        "set_task_progress_percentage",
        "decrease_running_task_resources",
        "announce_scheduling_failure",
        "add_scheduler_message_response",
    ];
    let operate = [
        "mark_as_done",
        "forgive_failures",
        "re_enable_task",
        "disable_worker",
        "set_worker_processes",
        "send_scheduler_message",
        "get_scheduler_message_response",
        "pause",
        "unpause",
        "prune",
        "update_resource",
    ];
    let mut cases = Vec::new();
    for (methods, action, http) in [
        (&read[..], "read", "GET"),
        (&work[..], "work", "POST"),
        (&operate[..], "operate", "GET"),
    ] {
        for m in methods {
            cases.push(case(http, format!("/api/{m}"), format!("scheduler:{m}"), action));
        }
    }
    // The same method by GET (the visualiser) or POST (rpc.py) is the same call.
    cases.push(case("POST", "/api/task_list", "scheduler:task_list", "read"));
    cases.push(case("GET", "/api/get_work", "scheduler:get_work", "work"));
    // An @rpc_method the template does not sort.
    cases.push(case(
        "POST",
        "/api/update_metrics_task_started",
        "scheduler:update_metrics_task_started",
        "call",
    ));
    check("luigi", &cases);
}

// luigi/server.py: `/` redirects to the visualiser under `/static/`; `/history*` and
// `/tasklist*` render task history (scheduler.record_task_history).
#[test]
fn luigi_visualiser_and_history_pages_are_ui_reads() {
    check(
        "luigi",
        &[
            case("GET", "/", "ui", "read"),
            case("GET", "/static/visualiser/index.html", "ui", "read"),
            case("GET", "/static/visualiser/js/luigi.js", "ui", "read"),
            case("GET", "/history", "ui", "read"),
            case("GET", "/history/by_name/MyTask", "ui", "read"),
            case("GET", "/history/by_id/123", "ui", "read"),
            case("GET", "/history/by_params/MyTask", "ui", "read"),
            case("GET", "/tasklist", "ui", "read"),
            case("GET", "/tasklist/MyTask", "ui", "read"),
        ],
    );
}

#[test]
fn luigi_unknown_paths_fall_back_to_path_and_method() {
    check(
        "luigi",
        &[
            unmatched("GET", "/api/"),
            case("GET", "/favicon.ico", "ui", "read"),
            unmatched("GET", "/api.php"),
            unmatched("POST", "/history"),
            unmatched("GET", "/api/task_list/extra"),
        ],
    );
}
