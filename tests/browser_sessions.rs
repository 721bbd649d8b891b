//! Stories of people signing in through the proxy with a real OpenID Provider, driven over
//! HTTP (the provider's login pages are filled in by `sign_in_without_browser`); the same
//! journey in a real browser is in `browser_chromium.rs`.
#![cfg(test)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;
use support::config::Provider;
use support::idp::{Idp, OTHER_AUDIENCE, verify_jwt};
use support::{Config, Gateway, Recorder, Route};

const CALLBACK: &str = "http://app.localhost/.portcullis/callback";
const SIGNED_OUT: &str = "http://app.localhost/.portcullis/signed_out";
const HTML: &str = "text/html,application/xhtml+xml";

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn location(&self) -> String {
        self.headers["location"].to_str().unwrap().to_string()
    }

    /// The `Set-Cookie` header for `name`, whole.
    fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .find(|c| c.starts_with(&format!("{name}=")))
    }

    /// The value `Set-Cookie` gives `name`.
    fn cookie(&self, name: &str) -> Option<String> {
        let header = self.set_cookie(name)?;
        let pair = header.split(';').next()?;
        Some(pair.split_once('=')?.1.to_string())
    }
}

/// A request to `app.localhost` (a loopback name: browsers treat it as a secure context, and so
/// does the proxy, so sessions work over plain HTTP in these tests) unless `headers` name a host.
async fn fetch(gw: &Gateway, method: Method, target: &str, headers: &[(&str, &str)]) -> Reply {
    let mut headers = headers.to_vec();
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        headers.push(("host", "app.localhost"));
    }
    let response = support::send(gw.http, method, target, &headers, Bytes::new()).await;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// A `GET` as an API client sends it (JSON, not HTML) with `cookie`.
async fn api_call(gw: &Gateway, target: &str, cookie: &str) -> Reply {
    fetch(
        gw,
        Method::GET,
        target,
        &[("accept", "application/json"), ("cookie", cookie)],
    )
    .await
}

async fn page(gw: &Gateway, target: &str, cookie: &str) -> Reply {
    let mut headers = vec![("accept", HTML)];
    if !cookie.is_empty() {
        headers.push(("cookie", cookie));
    }
    fetch(gw, Method::GET, target, &headers).await
}

fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    openidconnect::url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn target_of(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    rest[rest.find('/').unwrap()..].to_string()
}

struct World {
    idp: Idp,
    upstream: Recorder,
    gw: Gateway,
}

/// The provider with the `web` client registered for this host, and the proxy in front of an
/// upstream on `app.localhost`, accepting both the browser session and bearer tokens.
async fn world(idp_args: &[&str], sessions: Config) -> World {
    world_with(idp_args, sessions, |p| p, |r, _| r).await
}

/// [`world`] with the provider `oidc` and the route `app` changed by `provider` and `route`
/// (which is given the provider too).
async fn world_with(
    idp_args: &[&str],
    sessions: Config,
    provider: impl FnOnce(Provider) -> Provider,
    route: impl FnOnce(Route, &Idp) -> Route,
) -> World {
    let mut args = vec!["--redirect", CALLBACK, "--post-logout-redirect", SIGNED_OUT];
    args.extend_from_slice(idp_args);
    let idp = Idp::start_with(&args).await;
    let upstream = Recorder::start().await;
    let prebound = Gateway::prebind(support::strip_extra()).await;
    let secret = prebound.dir.path().join("web-secret");
    let app = Route::authenticated("app")
        .host("app.localhost")
        .providers(["oidc"])
        .upstream(&upstream);
    let config = sessions
        .provider(provider(idp.browser_provider("oidc", &secret)))
        .route(route(app, &idp));
    let gw = prebound.start(config).await;
    gw.wait_ready().await;
    World { idp, upstream, gw }
}

/// The rest of a sign-in that `started` (the proxy's redirect to `idp`): the provider's pages,
/// then the callback, carrying the login cookie `started` set. Returns the callback's answer.
async fn finish_sign_in(gw: &Gateway, idp: &Idp, started: &Reply, login: &str) -> Reply {
    assert_eq!(started.status, StatusCode::FOUND, "{}", started.body);
    let binding = started.cookie("__Host-portcullis_login").unwrap();
    let callback = idp.sign_in_without_browser(&started.location(), login).await;
    assert!(callback.starts_with(CALLBACK), "{callback}");
    let back = page(
        gw,
        &target_of(&callback),
        &format!("__Host-portcullis_login={binding}"),
    )
    .await;
    assert_eq!(back.status, StatusCode::FOUND, "{}", back.body);
    back
}

/// Signs `login` in from a browser that opened `target`: returns the session cookie pair.
async fn sign_in(w: &World, target: &str, login: &str) -> String {
    let first = page(&w.gw, target, "").await;
    let back = finish_sign_in(&w.gw, &w.idp, &first, login).await;
    assert_eq!(back.location(), target, "the browser returns where it started");
    format!(
        "__Host-portcullis_session={}",
        back.cookie("__Host-portcullis_session").unwrap()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_in_reaches_the_app_with_a_session_and_signs_out() {
    let w = world(&[], Config::new()).await;

    // A page navigation without a session is sent to the provider, with PKCE, state and nonce,
    // and a login cookie that binds the sign-in to this browser.
    let first = page(&w.gw, "/dags/etl?tab=runs", "").await;
    assert_eq!(first.status, StatusCode::FOUND);
    let authorize = first.location();
    assert!(
        authorize.starts_with(&w.idp.endpoint("authorization_endpoint").await),
        "{authorize}"
    );
    assert_eq!(query_param(&authorize, "redirect_uri").as_deref(), Some(CALLBACK));
    assert_eq!(
        query_param(&authorize, "code_challenge_method").as_deref(),
        Some("S256")
    );
    assert!(query_param(&authorize, "state").is_some() && query_param(&authorize, "nonce").is_some());
    let login_cookie = first.set_cookie("__Host-portcullis_login").unwrap();
    for attribute in ["Path=/", "Secure", "HttpOnly", "SameSite=Lax"] {
        assert!(login_cookie.contains(attribute), "{login_cookie}");
    }
    assert!(
        w.upstream.requests().is_empty(),
        "nothing was forwarded before sign-in"
    );

    // The provider's pages, then the callback: a session cookie and back to the same page.
    let back = finish_sign_in(&w.gw, &w.idp, &first, "alice").await;
    assert_eq!(back.location(), "/dags/etl?tab=runs");
    let session_cookie = back.set_cookie("__Host-portcullis_session").unwrap();
    for attribute in ["Path=/", "Secure", "HttpOnly", "SameSite=Lax", "Max-Age=43200"] {
        assert!(session_cookie.contains(attribute), "{session_cookie}");
    }
    assert!(
        back.set_cookie("__Host-portcullis_login")
            .unwrap()
            .contains("Max-Age=0"),
        "the login cookie is cleared"
    );
    let session = format!(
        "__Host-portcullis_session={}",
        back.cookie("__Host-portcullis_session").unwrap()
    );

    // With the session the request reaches the upstream; the proxy's cookies do not.
    let app = page(&w.gw, "/dags/etl?tab=runs", &format!("{session}; theme=dark")).await;
    assert_eq!(app.status, StatusCode::OK, "{}", app.body);
    assert_eq!(app.body, "upstream ok");
    let seen = w.upstream.last();
    assert_eq!(seen.target, "/dags/etl?tab=runs");
    assert_eq!(seen.header("cookie").as_deref(), Some("theme=dark"));

    // The audit trail names the person, the method and a hash of the session, never the id.
    let events = w.gw.audit_events(4).await;
    let signed_in = events
        .iter()
        .find(|e| e["portcullis.reason"] == "signed_in")
        .expect("the sign-in is audited");
    assert_eq!(signed_in["enduser.id"], "alice");
    let allowed = events.last().unwrap();
    assert_eq!(allowed["portcullis.decision"], "allow");
    assert_eq!(allowed["portcullis.auth.method"], "session");
    assert_eq!(allowed["enduser.id"], "alice");
    let session_id = session.split_once('=').unwrap().1;
    let audit_text = std::fs::read_to_string(w.gw.dir.path().join("audit.jsonl")).unwrap();
    assert!(
        !audit_text.contains(session_id),
        "a session id reached the audit log"
    );
    assert!(
        allowed["portcullis.session.id_hash"]
            .as_str()
            .is_some_and(|h| h.len() == 16),
        "{allowed}"
    );

    // Sign-out ends the session here and at the provider (RP-initiated logout).
    let out = page(&w.gw, "/.portcullis/sign_out", &session).await;
    assert_eq!(out.status, StatusCode::FOUND);
    let logout = out.location();
    assert!(
        logout.starts_with(&w.idp.endpoint("end_session_endpoint").await),
        "{logout}"
    );
    assert_eq!(
        query_param(&logout, "post_logout_redirect_uri").as_deref(),
        Some(SIGNED_OUT)
    );
    assert!(query_param(&logout, "id_token_hint").is_some());
    assert!(
        out.set_cookie("__Host-portcullis_session")
            .unwrap()
            .contains("Max-Age=0")
    );

    // The old cookie is worth nothing now: a page is sent to sign in, an API call gets 401.
    let forwarded = w.upstream.requests().len();
    let again = page(&w.gw, "/dags", &session).await;
    assert_eq!(again.status, StatusCode::FOUND);
    assert!(again.location().starts_with(&w.idp.issuer));
    let api = api_call(&w.gw, "/api/v1/dags", &session).await;
    assert_eq!(api.status, StatusCode::UNAUTHORIZED);
    assert!(api.body.contains("session_expired"), "{}", api.body);
    assert_eq!(
        w.upstream.requests().len(),
        forwarded,
        "nothing more was forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_in_browser_s_identity_headers_never_reach_the_upstream() {
    let w = world(&[], Config::new()).await;
    let cookie = sign_in(&w, "/dags", "alice").await;
    let mut headers = vec![("accept", HTML), ("cookie", cookie.as_str())];
    headers.extend(support::IDENTITY_SPOOFS.iter().map(|n| (*n, "spoofed-by-client")));
    let reply = fetch(&w.gw, Method::GET, "/dags", &headers).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    support::assert_no_client_identity(&w.upstream.last(), &[]);
    w.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_calls_get_401_and_never_a_redirect_to_a_login_page() {
    let w = world(&[], Config::new()).await;
    let cases: [&[(&str, &str)]; 5] = [
        &[("accept", "application/json")],
        &[],
        &[("accept", HTML), ("x-requested-with", "XMLHttpRequest")],
        &[("accept", HTML), ("sec-fetch-mode", "cors")],
        &[("accept", HTML), ("authorization", "Bearer not-a-jwt")],
    ];
    for headers in cases {
        let reply = fetch(&w.gw, Method::GET, "/api/v1/dags", headers).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{headers:?}");
        assert!(!reply.headers.contains_key("location"), "{headers:?}");
        assert!(reply.headers.contains_key("www-authenticate"), "{headers:?}");
    }
    let post = fetch(&w.gw, Method::POST, "/api/v1/dags", &[("accept", HTML)]).await;
    assert_eq!(post.status, StatusCode::UNAUTHORIZED);

    // A bearer token from the same provider still works beside the browser path.
    let token = w
        .idp
        .client_credentials_token("ci-bot", "ci-bot-secret", None)
        .await;
    let bearer = format!("Bearer {token}");
    let reply = fetch(&w.gw, Method::GET, "/api/v1/dags", &[("authorization", &bearer)]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(w.upstream.last().header("authorization").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_is_refused_when_replayed_from_another_browser_or_with_a_forged_state() {
    let w = world(&[], Config::new()).await;

    // A complete sign-in, then the very same callback again: the state was used up.
    let first = page(&w.gw, "/", "").await;
    let binding = first.cookie("__Host-portcullis_login").unwrap();
    let login_cookie = format!("__Host-portcullis_login={binding}");
    let callback = target_of(&w.idp.sign_in_without_browser(&first.location(), "alice").await);
    assert_eq!(
        page(&w.gw, &callback, &login_cookie).await.status,
        StatusCode::FOUND
    );
    let replay = page(&w.gw, &callback, &login_cookie).await;
    assert_eq!(replay.status, StatusCode::FORBIDDEN);
    assert!(replay.set_cookie("__Host-portcullis_session").is_none());

    // A callback carried to another browser (no or another login cookie) is refused, and the
    // state is gone afterwards even for the right browser.
    let started = page(&w.gw, "/", "").await;
    let binding = started.cookie("__Host-portcullis_login").unwrap();
    let callback = target_of(
        &w.idp
            .sign_in_without_browser(&started.location(), "mallory")
            .await,
    );
    let stranger = page(
        &w.gw,
        &callback,
        &format!("__Host-portcullis_login={}", "A".repeat(43)),
    )
    .await;
    assert_eq!(stranger.status, StatusCode::FORBIDDEN);
    assert!(
        stranger.body.contains("not started by this browser"),
        "{}",
        stranger.body
    );
    let owner = page(&w.gw, &callback, &format!("__Host-portcullis_login={binding}")).await;
    assert_eq!(owner.status, StatusCode::FORBIDDEN);

    // A made-up state, and a missing one.
    for target in [
        "/.portcullis/callback?code=abc&state=forged",
        "/.portcullis/callback?code=abc",
    ] {
        let reply = page(&w.gw, target, &login_cookie).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{target}");
    }
    // Eight requests: wait for all eight events, not the first few the writer has flushed.
    let events = w.gw.audit_events(8).await;
    let mismatches = events
        .iter()
        .filter(|e| e["portcullis.reason"] == "state_mismatch")
        .count();
    assert_eq!(mismatches, 5, "{events:#?}");
    assert!(w.upstream.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_or_unknown_session_cookie_is_never_a_session() {
    let w = world(&[], Config::new()).await;
    let session = sign_in(&w, "/", "alice").await;
    let (name, value) = session.split_once('=').unwrap();
    let mut flipped = value.as_bytes().to_vec();
    flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
    let tampered = [
        format!("{name}={}", String::from_utf8(flipped).unwrap()),
        format!("{name}={}", &value[..42]),
        format!("{name}={value}x"),
        format!("{name}="),
        format!("{name}=../../etc/passwd"),
    ];
    for cookie in &tampered {
        let api = api_call(&w.gw, "/", cookie).await;
        assert_eq!(api.status, StatusCode::UNAUTHORIZED, "{cookie}");
        assert!(api.body.contains("session_expired"), "{cookie}: {}", api.body);
        let nav = page(&w.gw, "/", cookie).await;
        assert_eq!(nav.status, StatusCode::FOUND, "{cookie}");
    }
    assert!(w.upstream.requests().is_empty());
    // The real one still works.
    assert_eq!(page(&w.gw, "/", &session).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_whose_id_token_fails_a_bound_claim_is_refused_and_the_record_names_the_claim() {
    let w = world_with(
        &[],
        Config::new(),
        |p| p.set("bound_claims", toml::toml! { email = "someone-else@example.com" }),
        |r, _| r,
    )
    .await;
    let first = page(&w.gw, "/", "").await;
    let binding = first.cookie("__Host-portcullis_login").unwrap();
    let callback = w.idp.sign_in_without_browser(&first.location(), "alice").await;
    let back = page(
        &w.gw,
        &target_of(&callback),
        &format!("__Host-portcullis_login={binding}"),
    )
    .await;
    assert_eq!(back.status, StatusCode::FORBIDDEN, "{}", back.body);
    assert!(back.cookie("__Host-portcullis_session").is_none());
    let login =
        w.gw.audit_events(2)
            .await
            .into_iter()
            .find(|r| r["portcullis.act"] == "login")
            .expect("the callback is recorded");
    assert_eq!(login["portcullis.reason"], "claims_not_bound", "{login}");
    // The claim's name, never its value.
    assert_eq!(login["portcullis.reason.claim"], "email", "{login}");
    assert!(!login.to_string().contains("alice@"), "{login}");
    assert!(w.upstream.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_that_leaves_during_a_refresh_does_not_lose_the_rotated_refresh_token() {
    // The provider rotates the refresh token, then takes 1.5 s to answer; the session is due for
    // refresh one second after sign-in.
    let w = world(
        &["--access-token-ttl", "60", "--refresh-delay", "1500"],
        Config::new().set("sessions.refresh_before", "59s"),
    )
    .await;
    let session = sign_in(&w, "/", "alice").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let grants = |what: &str| w.idp.stderr().matches(&format!("{what} refresh_token")).count();

    // The browser gives up on the page while the provider is answering the refresh.
    let left = tokio::time::timeout(Duration::from_millis(300), page(&w.gw, "/", &session)).await;
    assert!(left.is_err(), "the page answered before the refresh did");
    // The refresh ran to its end (audited when the provider answered) and kept the new refresh
    // token: once due again, the next refresh spends that token (a reused one would make the
    // provider revoke the grant and end the session).
    let first = w.gw.act_records("session_refresh").await;
    assert_eq!(first[0]["portcullis.session.refresh"], "ok", "{first:#?}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let again = page(&w.gw, "/", &session).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(grants("grant.success"), 2, "{}", w.idp.stderr());
    assert_eq!(grants("grant.error"), 0, "{}", w.idp.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_refreshes_its_tokens_before_they_expire_and_ends_when_refresh_fails() {
    // Access tokens live 4 s; the proxy refreshes 3 s before expiry.
    let w = world(
        &["--access-token-ttl", "4"],
        Config::new().set("sessions.refresh_before", "3s"),
    )
    .await;
    let session = sign_in(&w, "/", "alice").await;

    // Across three token lifetimes the same session keeps working, refreshed with rotating
    // refresh tokens, three requests at a time: a refresh token spent twice would make the
    // provider revoke the whole grant, and the session would end.
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(12) {
        let replies = futures_util::future::join_all((0..3).map(|_| page(&w.gw, "/", &session))).await;
        for reply in replies {
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let metrics = w.gw.metrics().await;
    let refreshed: u64 = metrics
        .lines()
        .find(|l| l.starts_with("portcullis_session_refreshes_total{result=\"ok\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(refreshed >= 3, "{metrics}");
    // Each refresh is an audited act inside the trace of the request that caused it.
    let acts = w.gw.acts(3).await;
    let refreshes: Vec<_> = acts
        .iter()
        .filter(|a| a["portcullis.act"] == "session_refresh")
        .collect();
    assert_eq!(refreshes.len() as u64, refreshed, "{refreshes:?}");
    for r in &refreshes {
        assert_eq!(r["portcullis.session.refresh"], "ok");
        assert_eq!(r["enduser.id"], "alice");
        // The request's own record is written when its exchange is over: wait for it.
        let request_id = r["portcullis.request.id"].as_str();
        let cause =
            w.gw.audit_event(request_id.expect("the refresh names its request"))
                .await;
        assert_eq!(r["trace_id"], cause["trace_id"]);
        assert_eq!(r["parent_span_id"], cause["span_id"]);
        assert!(r.get("portcullis.session.id_hash").is_some());
    }
    let trail = serde_json::to_string(&acts).unwrap();
    assert!(!trail.contains(session.trim_start_matches("__Host-portcullis_session=")));

    // The provider goes away; once the token has expired the session ends cleanly.
    drop(w.idp);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let api = api_call(&w.gw, "/", &session).await;
    assert_eq!(api.status, StatusCode::UNAUTHORIZED, "{}", api.body);
    assert!(api.body.contains("session_expired"));
    let ended = api_call(&w.gw, "/", &session).await;
    assert_eq!(ended.status, StatusCode::UNAUTHORIZED, "the session stays ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_with_two_providers_shows_a_choice_and_never_returns_off_site() {
    let args = ["--redirect", CALLBACK];
    let (okta, keycloak) = tokio::join!(Idp::start_with(&args), Idp::start_with(&args));
    let upstream = Recorder::start().await;
    let prebound = Gateway::prebind(support::strip_extra()).await;
    let secret = prebound.dir.path().join("web-secret");
    let provider = |idp: &Idp, name: &str, display: &str| {
        idp.browser_provider(name, &secret)
            .set("browser.display_name", display)
    };
    let config = Config::new()
        .provider(provider(&okta, "okta", "Okta <staff>"))
        .provider(provider(&keycloak, "keycloak", "Keycloak"))
        .route(
            Route::new("app")
                .host("app.localhost")
                .providers(["okta", "keycloak"])
                .upstream(&upstream),
        );
    let gw = prebound.start(config).await;
    gw.wait_ready().await;

    let first = page(&gw, "/reports?q=1", "").await;
    assert_eq!(first.status, StatusCode::FOUND);
    assert_eq!(first.location(), "/.portcullis/sign_in?rd=%2Freports%3Fq%3D1");
    let chooser = page(&gw, &first.location(), "").await;
    assert_eq!(chooser.status, StatusCode::OK);
    assert!(
        chooser.body.contains("Okta &lt;staff&gt;"),
        "names are escaped: {}",
        chooser.body
    );
    assert!(
        chooser
            .body
            .contains("provider=keycloak&amp;rd=%2Freports%3Fq%3D1"),
        "{}",
        chooser.body
    );
    assert!(
        chooser.headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );

    // Choosing Keycloak goes to Keycloak; an unknown provider name is not a choice.
    let chosen = page(&gw, "/.portcullis/sign_in?provider=keycloak&rd=%2Freports", "").await;
    assert!(
        chosen.location().starts_with(&keycloak.issuer),
        "{}",
        chosen.location()
    );
    let unknown = page(&gw, "/.portcullis/sign_in?provider=evil&rd=%2F", "").await;
    assert_eq!(unknown.status, StatusCode::OK, "the choice is shown again");

    // A return path that leaves the site is replaced by `/`, all the way through the callback.
    for rd in [
        "%2F%2Fevil.example",
        "https%3A%2F%2Fevil.example",
        "%2F%5Cevil.example",
    ] {
        let start = page(&gw, &format!("/.portcullis/sign_in?provider=okta&rd={rd}"), "").await;
        let back = finish_sign_in(&gw, &okta, &start, "alice").await;
        assert_eq!(back.location(), "/", "rd={rd}");
    }

    // Reserved paths on a host no route serves are not found; unknown reserved paths too.
    let elsewhere = fetch(
        &gw,
        Method::GET,
        "/.portcullis/sign_in?rd=%2F",
        &[("host", "other.test"), ("accept", HTML)],
    )
    .await;
    assert_eq!(elsewhere.status, StatusCode::NOT_FOUND);
    assert_eq!(
        page(&gw, "/.portcullis/admin", "").await.status,
        StatusCode::NOT_FOUND
    );
    assert!(upstream.requests().is_empty(), "no reserved path was forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_are_answered_before_authentication_and_only_allowed_origins_may_read() {
    let upstream = Recorder::with(std::sync::Arc::new(|_| {
        let mut r = http::Response::new(http_body_util::Full::new(Bytes::from_static(b"{}")));
        r.headers_mut()
            .insert("access-control-allow-origin", http::HeaderValue::from_static("*"));
        r
    }))
    .await;
    let config = Config::new()
        .route(
            Route::public("api")
                .host("app.localhost")
                .upstream(&upstream)
                .set("cors.allowed_origins", ["https://ui.example"])
                .set("cors.allow_credentials", true)
                .set("cors.expose_headers", ["x-request-id"]),
        )
        .route(
            Route::new("locked")
                .host("locked.test")
                .upstream(&upstream)
                .set("cors.allowed_origins", ["https://ui.example"]),
        );
    let gw = Gateway::start(config).await;
    let preflight = |host: &'static str, origin: &'static str| {
        let gw = &gw;
        async move {
            fetch(
                gw,
                Method::OPTIONS,
                "/api/v1/dags",
                &[
                    ("host", host),
                    ("origin", origin),
                    ("access-control-request-method", "POST"),
                    ("access-control-request-headers", "content-type"),
                ],
            )
            .await
        }
    };
    // Even on a protected route without credentials, an allowed preflight gets 204.
    let ok = preflight("locked.test", "https://ui.example").await;
    assert_eq!(ok.status, StatusCode::NO_CONTENT);
    assert_eq!(ok.headers["access-control-allow-origin"], "https://ui.example");
    let refused = preflight("locked.test", "https://evil.example").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(!refused.headers.contains_key("access-control-allow-origin"));
    assert!(upstream.requests().is_empty(), "preflights are never forwarded");

    // Actual requests: the proxy's policy replaces the upstream's `*`.
    let allowed = fetch(&gw, Method::GET, "/x", &[("origin", "https://ui.example")]).await;
    assert_eq!(
        allowed.headers["access-control-allow-origin"],
        "https://ui.example"
    );
    assert_eq!(allowed.headers["access-control-allow-credentials"], "true");
    assert_eq!(allowed.headers["access-control-expose-headers"], "x-request-id");
    let other = fetch(&gw, Method::GET, "/x", &[("origin", "https://evil.example")]).await;
    assert_eq!(other.status, StatusCode::OK);
    assert!(!other.headers.contains_key("access-control-allow-origin"));
    let events = gw.audit_events(4).await;
    assert_eq!(events[0]["portcullis.reason"], "cors_preflight");
    assert_eq!(events[1]["portcullis.reason"], "cors_refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_moves_to_a_new_id_when_a_refresh_brings_new_groups() {
    // Every token the provider issues names a new group; tokens live 4 s, refreshed 3 s early.
    let w = world_with(
        &["--access-token-ttl", "4", "--changing-groups"],
        Config::new().set("sessions.refresh_before", "3s"),
        |p| {
            p.set("claims.groups", "groups").set(
                "browser.scopes",
                ["openid", "email", "profile", "offline_access", "groups"],
            )
        },
        |r, _| r,
    )
    .await;
    let old = sign_in(&w, "/", "carol").await;
    let first = w.upstream.requests().len();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let refreshed = page(&w.gw, "/", &old).await;
    assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.body);
    let moved = refreshed
        .cookie("__Host-portcullis_session")
        .expect("the response moves the session to a new id");
    let new = format!("__Host-portcullis_session={moved}");
    assert_ne!(new, old);
    let set = refreshed.set_cookie("__Host-portcullis_session").unwrap();
    assert!(
        set.contains("Secure") && set.contains("HttpOnly") && set.contains("SameSite=Lax"),
        "{set}"
    );
    assert_eq!(
        page(&w.gw, "/", &new).await.status,
        StatusCode::OK,
        "the new id is the session"
    );
    assert!(w.upstream.requests().len() > first);
    // Requests already on their way with the old id still pass for a moment; then it is gone.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let stale = api_call(&w.gw, "/", &old).await;
    assert_eq!(stale.status, StatusCode::UNAUTHORIZED, "{}", stale.body);
    assert_eq!(page(&w.gw, "/", &new).await.status, StatusCode::OK);

    let acts = w.gw.acts(1).await;
    let rotation = acts
        .iter()
        .find(|a| a["portcullis.session.rotated"] == true)
        .expect("the refresh that moved the session is audited as such");
    assert_eq!(rotation["enduser.id"], "carol");
    let requests = w.gw.audit_events(1).await;
    let login = requests
        .iter()
        .find(|e| e["portcullis.reason"] == "signed_in")
        .unwrap();
    assert_eq!(
        login["portcullis.principal.groups"],
        serde_json::json!(["users", "generation-1"]),
        "the ID token's groups are the session's"
    );
    let hashes: std::collections::BTreeSet<&str> = requests
        .iter()
        .filter(|e| e["enduser.id"] == "carol")
        .filter_map(|e| e["portcullis.session.id_hash"].as_str())
        .collect();
    assert!(
        hashes.len() >= 2,
        "the trail shows the session under its old and new ids: {hashes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_in_person_s_access_token_is_exchanged_and_the_upstream_gets_only_the_exchanged_token() {
    let secrets = tempfile::tempdir().unwrap();
    let secret = secrets.path().join("exchanger.secret");
    std::fs::write(&secret, "exchanger-secret\n").unwrap();
    let w = world_with(
        &[],
        Config::new(),
        |p| p,
        |r, idp| {
            r.set("upstream_credentials.kind", "token_exchange")
                .set("upstream_credentials.issuer", &idp.issuer)
                .set("upstream_credentials.client_id", "exchanger")
                .set("upstream_credentials.client_secret_file", &secret)
                .set("upstream_credentials.audience", OTHER_AUDIENCE)
        },
    )
    .await;
    let cookie = sign_in(&w, "/dags", "alice").await;
    let reply = page(&w.gw, "/dags", &cookie).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);

    // The upstream got a token the provider issued for the upstream's audience, naming alice and
    // the proxy as the actor; it verifies against the provider's keys.
    let authorization = w.upstream.last().header("authorization").unwrap();
    let token = authorization.strip_prefix("Bearer ").unwrap();
    let keys = serde_json::from_value(w.idp.jwks().await).unwrap();
    let claims = verify_jwt(token, &keys, &w.idp.issuer, OTHER_AUDIENCE).unwrap();
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["act"]["sub"], "exchanger");

    let acts = w.gw.acts(1).await;
    let exchange = acts
        .iter()
        .find(|e| e["portcullis.act"] == "credential_brokered")
        .unwrap();
    assert_eq!(exchange["portcullis.token.grant"], "token_exchange");
    assert_eq!(exchange["enduser.id"], "alice");
    w.gw.stop().await;
}

/// The provider and a proxy whose route serves `app.test` (not a loopback name) as well, with
/// `server`'s `[server]` table.
async fn public_host_world(server: Config) -> World {
    let idp = Idp::start_with(&["--redirect", CALLBACK, "--post-logout-redirect", SIGNED_OUT]).await;
    let upstream = Recorder::start().await;
    let prebound = Gateway::prebind(server).await;
    let secret = prebound.dir.path().join("web-secret");
    let route = Route::authenticated("app")
        .hosts(["app.localhost", "app.test"])
        .upstream(&upstream);
    let gw = prebound.start(idp.browser_config(&secret, route)).await;
    gw.wait_ready().await;
    World { idp, upstream, gw }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_plain_http_a_browser_is_never_given_a_session_cookie() {
    let w = public_host_world(Config::new()).await;
    let on_app = |extra: &[(&'static str, &'static str)]| {
        let mut headers = vec![("host", "app.test"), ("accept", HTML)];
        headers.extend_from_slice(extra);
        headers
    };
    // No HTTPS listener to send it to: a page that says why, and no cookie of any kind.
    for target in [
        "/dags?x=1",
        "/.portcullis/sign_in?rd=/dags",
        "/.portcullis/callback?state=s&code=c",
    ] {
        let reply = fetch(&w.gw, Method::GET, target, &on_app(&[])).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{target}: {}", reply.body);
        assert!(reply.body.contains("HTTPS"), "{target}: {}", reply.body);
        assert!(reply.headers.get("set-cookie").is_none(), "{target}");
    }
    // A client's own X-Forwarded-Proto changes nothing: it is not a trusted proxy.
    let reply = fetch(
        &w.gw,
        Method::GET,
        "/dags",
        &on_app(&[("x-forwarded-proto", "https")]),
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    // A session cookie sent over plain HTTP is no credential either.
    let cookie = sign_in(&w, "/dags", "alice").await;
    let reply = fetch(
        &w.gw,
        Method::GET,
        "/dags",
        &[
            ("host", "app.test"),
            ("accept", "application/json"),
            ("cookie", cookie.as_str()),
        ],
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.body);
    let events = w.gw.audit_events(5).await;
    assert_eq!(events[0]["portcullis.reason"], "insecure_transport");
    assert_eq!(events[0]["http.response.status_code"], 403);
    assert!(
        w.upstream.requests().len() <= 1,
        "only the loopback sign-in's own page view"
    );
    w.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_plain_http_a_navigation_is_sent_to_https_and_a_trusted_tls_proxy_may_vouch_for_https() {
    let (cert, key) = (support::idp::LOCALHOST_CERT, support::idp::LOCALHOST_KEY);
    let w = public_host_world(
        Config::new()
            .server("https", "127.0.0.1:0")
            .set("server.tls.cert", cert)
            .set("server.tls.key", key)
            .server("trusted_proxies", ["127.0.0.1/32"]),
    )
    .await;
    let https = w.gw.https.unwrap().port();
    let reply = fetch(
        &w.gw,
        Method::GET,
        "/dags/etl?tab=runs",
        &[("host", "app.test"), ("accept", HTML)],
    )
    .await;
    assert_eq!(reply.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        reply.location(),
        format!("https://app.test:{https}/dags/etl?tab=runs")
    );
    assert!(reply.headers.get("set-cookie").is_none());
    // A trusted TLS terminator in front says the browser used HTTPS: sign-in goes ahead.
    let reply = fetch(
        &w.gw,
        Method::GET,
        "/dags",
        &[
            ("host", "app.test"),
            ("accept", HTML),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    assert_eq!(reply.status, StatusCode::FOUND, "{}", reply.body);
    assert!(reply.set_cookie("__Host-portcullis_login").is_some());
    assert!(
        query_param(&reply.location(), "redirect_uri")
            .unwrap()
            .starts_with("https://app.test")
    );
    w.gw.stop().await;
}
