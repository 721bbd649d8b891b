//! The trust model, told as stories: a name means something only with the provider that
//! vouched for it. Two providers' callers with the same `sub` and the same group name are two
//! callers; an email is an identity only when verified; CI jobs are their immutable ids; bound
//! claims are checked before any policy; and each preset reads a vendor-shaped token into the
//! subjects and groups docs/authentication.md promises.
#![cfg(test)]

mod support;

use serde_json::{Value, json};
use support::config::Provider;
use support::issuer::{TestIssuer, now};
use support::{Config, Gateway, Recorder, Route};

/// A gateway with one protected Airflow route (`airflow.test`) accepting `providers`, checked
/// against a policy of `csv` alone.
async fn gateway(providers: &[Provider], csv: &str, upstream: &Recorder) -> (Gateway, tempfile::TempDir) {
    let policy = support::policy(csv);
    let names: Vec<String> = providers.iter().map(Provider::name).collect();
    let config = providers.iter().cloned().fold(Config::new(), Config::provider);
    let config = config.policy_dir(policy.path()).route(
        Route::new("airflow")
            .host("airflow.test")
            .set("identity_providers", names)
            .resources("airflow")
            .upstream(upstream),
    );
    let gw = Gateway::start(config).await;
    gw.wait_ready().await;
    (gw, policy)
}

/// A route `name` for `host` open to any caller of `provider`, in front of `upstream`.
fn authenticated(name: &str, host: &str, provider: &str, upstream: &Recorder) -> Route {
    Route::authenticated(name)
        .host(host)
        .providers([provider])
        .upstream(upstream)
}

async fn call(gw: &Gateway, method: http::Method, path: &str, token: &str) -> u16 {
    let bearer = format!("Bearer {token}");
    support::send(
        gw.http,
        method,
        path,
        &[("host", "airflow.test"), ("authorization", &bearer)],
        bytes::Bytes::new(),
    )
    .await
    .status()
    .as_u16()
}

const CLEAR: &str = "/api/v2/dags/etl_daily/dagRuns";
const DELETE: &str = "/api/v2/dags/etl_daily";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_providers_with_the_same_sub_and_group_are_two_callers_and_the_record_names_each_provider() {
    let (okta, corp) = (TestIssuer::start().await, TestIssuer::start().await);
    let upstream = Recorder::start().await;
    let csv = "p, role:operator, airflow, dag:*, trigger\n\
               p, role:admin, airflow, dag:*, *\n\
               g, group:okta/sre, role:operator, airflow\n\
               g, user:corp/1234, role:admin, airflow\n";
    let providers = [okta.provider("okta"), corp.provider("corp")];
    let (gw, _policy) = gateway(&providers, csv, &upstream).await;
    let token = |issuer: &TestIssuer| {
        let mut claims = issuer.claims("1234");
        claims["groups"] = json!(["sre"]);
        issuer.sign(&claims)
    };
    let (from_okta, from_corp) = (token(&okta), token(&corp));

    // Okta's sre holds the operator role, not corp's; corp's 1234 is an admin, not Okta's.
    assert_eq!(call(&gw, http::Method::POST, CLEAR, &from_okta).await, 200);
    assert_eq!(call(&gw, http::Method::DELETE, DELETE, &from_okta).await, 403);
    assert_eq!(
        call(&gw, http::Method::POST, CLEAR, &from_corp).await,
        200,
        "as admin"
    );
    let clear_only = "p, role:operator, airflow, dag:*, trigger\ng, group:okta/sre, role:operator, airflow\n";
    let (gw2, _p2) = gateway(&providers, clear_only, &upstream).await;
    assert_eq!(call(&gw2, http::Method::POST, CLEAR, &from_corp).await, 403);
    assert_eq!(call(&gw2, http::Method::POST, CLEAR, &from_okta).await, 200);
    assert_eq!(upstream.requests().len(), 3);

    let events = gw.audit_events(3).await;
    let providers: Vec<&Value> = events
        .iter()
        .map(|e| &e["portcullis.principal.provider"])
        .collect();
    assert_eq!(providers, [&json!("okta"), &json!("okta"), &json!("corp")]);
    assert!(events.iter().all(|e| e["enduser.id"] == "1234"));
    assert_eq!(events[1]["portcullis.reason"], "forbidden");
    gw.stop().await;
    gw2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_names_a_caller_only_when_the_provider_verified_it() {
    let (okta, lax) = (TestIssuer::start().await, TestIssuer::start().await);
    let upstream = Recorder::start().await;
    let csv = "p, role:operator, airflow, dag:*, trigger\n\
               g, user:okta/alice@example.test, role:operator, airflow\n\
               g, user:lax/alice@example.test, role:operator, airflow\n";
    let providers = [
        okta.provider("okta"),
        lax.provider("lax").set("trust_unverified_email", true),
    ];
    let (gw, _policy) = gateway(&providers, csv, &upstream).await;
    let with_verified = |issuer: &TestIssuer, verified: Option<Value>| {
        let mut claims = issuer.claims("u-1");
        claims["email"] = json!("alice@example.test");
        match verified {
            Some(v) => claims["email_verified"] = v,
            None => {
                claims.as_object_mut().unwrap().remove("email_verified");
            }
        }
        issuer.sign(&claims)
    };
    for (verified, status) in [
        (None, 403),
        (Some(json!(false)), 403),
        (Some(json!("false")), 403),
        (Some(json!(true)), 200),
        (Some(json!("true")), 200),
    ] {
        let token = with_verified(&okta, verified.clone());
        assert_eq!(
            call(&gw, http::Method::POST, CLEAR, &token).await,
            status,
            "email_verified {verified:?}"
        );
    }
    // A provider trusted with unverified addresses (documented as dangerous) takes them as they come.
    assert_eq!(
        call(&gw, http::Method::POST, CLEAR, &with_verified(&lax, None)).await,
        200
    );
    let events = gw.audit_events(6).await;
    assert!(
        events[0].get("user.email").is_none(),
        "an unverified email is no identity"
    );
    assert_eq!(events[3]["user.email"], "alice@example.test");
    gw.stop().await;
}

/// A fixture token's claims (tests/fixtures/tokens/NAME.json) with its issuer and times made
/// current, and its header's `typ`.
fn fixture(name: &str, issuer: &TestIssuer) -> (Value, Option<String>) {
    let path = format!("{}/tests/fixtures/tokens/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let file: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut claims = file["claims"].clone();
    let now = now();
    claims["iss"] = json!(issuer.issuer);
    for (key, value) in [("iat", now), ("nbf", now), ("exp", now + 300), ("auth_time", now)] {
        if claims.get(key).is_some_and(Value::is_number) {
            claims[key] = json!(value);
        }
    }
    if let Some(k8s) = claims.get_mut("kubernetes.io")
        && k8s.get("warnafter").is_some()
    {
        k8s["warnafter"] = json!(now + 200);
    }
    let typ = file["header"]["typ"].as_str().map(str::to_string);
    (claims, typ)
}

fn sign_fixture(issuer: &TestIssuer, claims: &Value, typ: Option<String>) -> String {
    issuer.sign_with("k1", claims, |h| h.typ = typ)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ci_jobs_are_their_namespace_and_repository_ids_never_names_someone_could_register() {
    let (gitlab, github) = (TestIssuer::start().await, TestIssuer::start().await);
    let upstream = Recorder::start().await;
    // The policy grants the SRE namespace (id 72) and the octo-org owner (id 65), and Okta's
    // sre group: a job whose namespace or owner is merely *named* sre gets none of them.
    let csv = "p, role:operator, airflow, dag:*, trigger\n\
               g, group:gitlab/namespace:72, role:operator, airflow\n\
               g, group:github/owner:65, role:operator, airflow\n\
               g, group:okta/sre, role:operator, airflow\n";
    let providers = [
        gitlab
            .provider("gitlab")
            .preset("gitlab_ci")
            .audiences(["https://vault.example.com"]),
        github
            .provider("github")
            .preset("github_actions")
            .audiences(["https://github.com/octo-org"]),
    ];
    let (gw, _policy) = gateway(&providers, csv, &upstream).await;

    let (mut job, typ) = fixture("gitlab-ci", &gitlab);
    job["namespace_path"] = json!("sre");
    job["namespace_id"] = json!("99");
    let impostor = sign_fixture(&gitlab, &job, typ.clone());
    assert_eq!(call(&gw, http::Method::POST, CLEAR, &impostor).await, 403);
    job["namespace_id"] = json!("72");
    let sre = sign_fixture(&gitlab, &job, typ);
    assert_eq!(call(&gw, http::Method::POST, CLEAR, &sre).await, 200);

    let (mut run, typ) = fixture("github-actions", &github);
    run["repository_owner"] = json!("sre");
    run["repository_owner_id"] = json!("66");
    let impostor = sign_fixture(&github, &run, typ.clone());
    assert_eq!(call(&gw, http::Method::POST, CLEAR, &impostor).await, 403);
    run["repository_owner_id"] = json!("65");
    let octo = sign_fixture(&github, &run, typ);
    assert_eq!(call(&gw, http::Method::POST, CLEAR, &octo).await, 200);
    assert_eq!(upstream.requests().len(), 2);

    let events = gw.audit_events(4).await;
    assert_eq!(events[0]["enduser.id"], "project:20:branch:feature-branch-1");
    assert_eq!(
        events[0]["portcullis.principal.groups"],
        json!([
            "namespace:99",
            "project:20",
            "project:20:environment:test-environment2"
        ])
    );
    assert_eq!(events[0]["portcullis.principal.kind"], "ci_job");
    assert_eq!(events[3]["enduser.id"], "repository:74:refs/heads/main");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_whose_bound_claims_do_not_hold_gets_403_claims_not_bound_before_any_policy() {
    let gitlab = TestIssuer::start().await;
    let upstream = Recorder::start().await;
    // The policy would allow the project's every job: the provider's bound claims narrow that
    // to protected refs of the two listed projects, whatever the policy says.
    let csv =
        "p, role:operator, airflow, dag:*, trigger\ng, group:gitlab/project:20, role:operator, airflow\n";
    let gitlab_ci = gitlab
        .provider("gitlab")
        .preset("gitlab_ci")
        .audiences(["https://vault.example.com"])
        .set(
            "bound_claims",
            toml::toml! { ref_protected = "true" project_id = ["20", "21"] ref_path = "refs/heads/*" },
        );
    let (gw, _policy) = gateway(&[gitlab_ci], csv, &upstream).await;
    let (mut job, typ) = fixture("gitlab-ci", &gitlab);
    for (tweak, status) in [
        (json!({"ref_protected": "false"}), 403),
        (json!({"ref_protected": "true"}), 200),
        (json!({"ref_protected": "true", "ref_path": "refs/tags/v1"}), 403),
        (json!({"ref_protected": true}), 200),
    ] {
        for (k, v) in tweak.as_object().unwrap() {
            job[k] = v.clone();
        }
        let token = sign_fixture(&gitlab, &job, typ.clone());
        assert_eq!(
            call(&gw, http::Method::POST, CLEAR, &token).await,
            status,
            "{tweak}"
        );
        job["ref_path"] = json!("refs/heads/feature-branch-1");
    }
    job.as_object_mut().unwrap().remove("ref_protected");
    assert_eq!(
        call(&gw, http::Method::POST, CLEAR, &sign_fixture(&gitlab, &job, typ)).await,
        403,
        "an absent bound claim does not hold"
    );
    assert_eq!(upstream.requests().len(), 2);

    let events = gw.audit_events(5).await;
    let refused = &events[0];
    assert_eq!(refused["portcullis.reason"], "claims_not_bound");
    assert_eq!(refused["portcullis.reason.claim"], "ref_protected");
    assert_eq!(refused["http.response.status_code"], 403);
    assert!(
        refused.get("portcullis.policy.rule").is_none(),
        "decided before the policy"
    );
    assert_eq!(events[2]["portcullis.reason.claim"], "ref_path");
    gw.stop().await;
}

/// What each preset makes of a token shaped as its vendor documents it: kind, subject, groups,
/// client and email. The same table is in docs/authentication.md.
struct Expect {
    fixture: &'static str,
    preset: &'static str,
    audience: &'static str,
    kind: &'static str,
    subject: &'static str,
    groups: &'static [&'static str],
    client: Option<&'static str>,
    email: Option<&'static str>,
}

const PRESETS: &[Expect] = &[
    Expect {
        fixture: "okta-access",
        preset: "okta",
        audience: "https://api.example.com",
        kind: "user",
        subject: "00ujmkLgagxeRrAg20g3",
        groups: &["Everyone", "Midwest Sales"],
        client: Some("nmdP1fcyvdVO11AL7ECm"),
        email: None,
    },
    Expect {
        fixture: "okta-service",
        preset: "okta",
        audience: "api://default",
        kind: "service",
        subject: "0oaiox8bmsBKVXku30h7",
        groups: &[],
        client: Some("0oaiox8bmsBKVXku30h7"),
        email: None,
    },
    Expect {
        fixture: "cognito-access",
        preset: "cognito",
        audience: "xxxxxxxxxxxxexample",
        kind: "user",
        subject: "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
        groups: &["testgroup"],
        client: Some("xxxxxxxxxxxxexample"),
        email: None,
    },
    Expect {
        fixture: "aws-identity-center",
        preset: "aws_identity_center",
        audience: "arn:aws:sso::123456789012:application/ssoins-111111111111/apl-222222222222",
        kind: "user",
        subject: "730448f2-e0a1-70a7-c954-000000000000",
        groups: &[],
        client: None,
        email: None,
    },
    Expect {
        fixture: "entra-v2-access",
        preset: "entra_id",
        audience: "6e74172b-be56-4843-9ff4-e66a39bb12e3",
        kind: "user",
        subject: "72f988bf-86f1-41af-91ab-2d7cd011db47/690222be-ff1a-4d56-abd1-7e4f7d38e474",
        groups: &[
            "aaaabbbb-0000-cccc-1111-dddd2222eeee",
            "bbbbcccc-1111-dddd-2222-eeee3333ffff",
        ],
        client: Some("6e74172b-be56-4843-9ff4-e66a39bb12e3"),
        email: None,
    },
    Expect {
        fixture: "entra-v2-app",
        preset: "entra_id",
        audience: "6e74172b-be56-4843-9ff4-e66a39bb12e3",
        kind: "service",
        subject: "72f988bf-86f1-41af-91ab-2d7cd011db47/aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb",
        groups: &[],
        client: Some("00001111-aaaa-2222-bbbb-3333cccc4444"),
        email: None,
    },
    Expect {
        fixture: "google-id",
        preset: "google",
        audience: "1234987819200.apps.googleusercontent.com",
        kind: "user",
        subject: "10769150350006150715113082367",
        groups: &["domain:example.com"],
        client: Some("1234987819200.apps.googleusercontent.com"),
        email: Some("jsmith@example.com"),
    },
    Expect {
        fixture: "keycloak-access",
        preset: "keycloak",
        audience: "account",
        kind: "user",
        subject: "36fa0f91-f94d-4a0c-afed-6b7d952e47da",
        groups: &["default-roles-myrealm", "offline_access", "uma_authorization"],
        client: Some("myclient"),
        email: Some("jdoe@example.com"),
    },
    Expect {
        fixture: "gitlab-ci",
        preset: "gitlab_ci",
        audience: "https://vault.example.com",
        kind: "ci_job",
        subject: "project:20:branch:feature-branch-1",
        groups: &[
            "namespace:72",
            "project:20",
            "project:20:environment:test-environment2",
        ],
        client: None,
        email: None,
    },
    Expect {
        fixture: "github-actions",
        preset: "github_actions",
        audience: "https://github.com/octo-org",
        kind: "ci_job",
        subject: "repository:74:refs/heads/main",
        groups: &["owner:65", "repository:74", "repository:74:environment:prod"],
        client: None,
        email: None,
    },
    Expect {
        fixture: "kubernetes-sa",
        preset: "kubernetes",
        audience: "https://kubernetes.default.svc",
        kind: "service",
        subject: "kube-system/coredns/a087d5a0-e1dd-43ec-93ac-f13d89cd13af",
        groups: &[],
        client: None,
        email: None,
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_preset_reads_its_vendor_s_token_into_the_documented_subject_and_groups() {
    let upstream = Recorder::start().await;
    let mut issuers = Vec::new();
    let mut config = Config::new();
    for (i, e) in PRESETS.iter().enumerate() {
        let issuer = TestIssuer::start().await;
        let name = format!("p{i}");
        config = config
            .provider(issuer.provider(&name).preset(e.preset).audiences([e.audience]))
            // One route per provider: a token is accepted only where its own provider is.
            .route(authenticated(
                &format!("r{i}"),
                &format!("r{i}.test"),
                &name,
                &upstream,
            ));
        issuers.push(issuer);
    }
    let gw = Gateway::start(config).await;
    gw.wait_ready().await;
    let send = |host: String, token: String| {
        let gw_http = gw.http;
        async move {
            let bearer = format!("Bearer {token}");
            support::send(
                gw_http,
                http::Method::GET,
                "/api/v2/dags",
                &[("host", &host), ("authorization", &bearer)],
                bytes::Bytes::new(),
            )
            .await
            .status()
            .as_u16()
        }
    };
    let mut tokens = Vec::new();
    for (i, e) in PRESETS.iter().enumerate() {
        let (claims, typ) = fixture(e.fixture, &issuers[i]);
        let token = sign_fixture(&issuers[i], &claims, typ);
        assert_eq!(
            send(format!("r{i}.test"), token.clone()).await,
            200,
            "{}",
            e.fixture
        );
        tokens.push(token);
    }
    let events = gw.audit_events(PRESETS.len()).await;
    for (i, e) in PRESETS.iter().enumerate() {
        let record = &events[i];
        let at = e.fixture;
        assert_eq!(record["portcullis.principal.kind"], e.kind, "{at}");
        assert_eq!(record["enduser.id"], e.subject, "{at}");
        assert_eq!(record["portcullis.principal.provider"], format!("p{i}"), "{at}");
        assert_eq!(record["portcullis.principal.groups"], json!(e.groups), "{at}");
        assert_eq!(
            record.get("portcullis.client.id").and_then(Value::as_str),
            e.client,
            "{at}"
        );
        assert_eq!(record.get("user.email").and_then(Value::as_str), e.email, "{at}");
    }

    // A token of one preset on another preset's route: another issuer, refused.
    let okta_route = PRESETS.iter().position(|e| e.preset == "okta").unwrap();
    let gitlab = PRESETS.iter().position(|e| e.preset == "gitlab_ci").unwrap();
    assert_eq!(
        send(format!("r{okta_route}.test"), tokens[gitlab].clone()).await,
        401
    );
    // Cognito's ID token is not an access token.
    let cognito = PRESETS
        .iter()
        .position(|e| e.fixture == "cognito-access")
        .unwrap();
    let (mut id_token, typ) = fixture("cognito-id", &issuers[cognito]);
    id_token["client_id"] = json!(PRESETS[cognito].audience);
    let refused = sign_fixture(&issuers[cognito], &id_token, typ);
    assert_eq!(send(format!("r{cognito}.test"), refused).await, 401);
    let events = gw.audit_events(PRESETS.len() + 2).await;
    assert_eq!(events[PRESETS.len()]["portcullis.reason"], "wrong_issuer");
    assert_eq!(events[PRESETS.len() + 1]["portcullis.reason"], "wrong_token_type");
    gw.stop().await;
}

#[test]
fn a_policy_naming_a_group_without_its_provider_is_refused_with_its_line_and_the_fix() {
    let dir =
        support::policy("p, role:operator, airflow, dag:*, trigger\ng, group:sre, role:operator, airflow\n");
    let out = std::process::Command::new(support::binary())
        .args(["policy", "test", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = support::output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("policy.csv:2"), "{text}");
    assert!(text.contains("`group:<provider>/sre`"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_caller_s_identity_headers_never_reach_the_upstream_beside_the_proxy_s_own() {
    let issuer = TestIssuer::start().await;
    let upstream = Recorder::start().await;
    let config = support::strip_extra()
        .provider(issuer.provider("okta"))
        .route(authenticated("api", "app.test", "okta", &upstream));
    let gw = Gateway::start(config).await;
    gw.wait_ready().await;
    let request = format!(
        "GET /ok HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {}\r\n{}Connection: close\r\n\r\n",
        issuer.token("alice"),
        support::spoofed_identity_lines()
    );
    let (status, _) = support::raw(gw.http, &request).await;
    assert_eq!(status, 200);
    support::assert_no_client_identity(&upstream.last(), &[]);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_with_control_characters_are_escaped_and_capped_in_records_and_a_subject_with_them_is_refused()
{
    let issuer = TestIssuer::start().await;
    let upstream = Recorder::start().await;
    let config = Config::new()
        .provider(issuer.provider("okta"))
        .route(authenticated("api", "airflow.test", "okta", &upstream));
    let gw = Gateway::start(config).await;
    gw.wait_ready().await;
    let mut claims = issuer.claims("alice");
    claims["email"] = json!("alice@example.test\r\n{\"forged\":1}");
    claims["groups"] = json!(["ops\u{1b}[31m", "x".repeat(1000)]);
    assert_eq!(
        call(&gw, http::Method::GET, "/x", &issuer.sign(&claims)).await,
        200
    );
    let mut bad = issuer.claims("alice\r\nroot");
    bad["jti"] = json!("j\u{7}");
    assert_eq!(call(&gw, http::Method::GET, "/x", &issuer.sign(&bad)).await, 401);

    let events = gw.audit_events(2).await;
    let record = &events[0];
    assert_eq!(
        record["user.email"],
        "alice@example.test\\u{d}\\u{a}{\"forged\":1}"
    );
    let groups = record["portcullis.principal.groups"].as_array().unwrap();
    assert_eq!(groups[0], "ops\\u{1b}[31m");
    assert_eq!(
        groups[1].as_str().unwrap().chars().count(),
        257,
        "capped, with an ellipsis"
    );
    assert_eq!(events[1]["portcullis.reason"], "malformed");
    gw.stop().await;
}
