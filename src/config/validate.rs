//! Pure validation of the typed tree: no I/O, every problem reported at once.

use std::collections::HashSet;

use super::{Config, Problem, Route, socket_addr};

pub fn validate(config: &Config) -> Vec<Problem> {
    let mut p = Vec::new();
    let s = &config.server;

    if s.http.is_empty() && s.https.is_none() {
        p.push(Problem::new(
            "server",
            "no listener is configured",
            "set server.http (e.g. \"127.0.0.1:8080\") or server.https",
        ));
    }
    if !s.http.is_empty() && socket_addr(&s.http).is_none() {
        p.push(addr_problem("server.http", &s.http));
    }
    if let Some(https) = &s.https {
        if socket_addr(https).is_none() {
            p.push(addr_problem("server.https", https));
        }
        if s.tls.is_none() {
            p.push(Problem::new(
                "server.tls",
                "server.https is set but no certificate is configured",
                "add [server.tls] with cert and key file paths",
            ));
        }
    }
    for (j, name) in s.strip_request_headers.iter().enumerate() {
        let bare = name.strip_suffix('*').unwrap_or(name);
        if bare.is_empty() || http::HeaderName::from_bytes(bare.as_bytes()).is_err() {
            p.push(Problem::new(
                format!("server.strip_request_headers[{j}]"),
                format!("{name:?} is not a header name or prefix"),
                "write a header name (\"x-internal-user\") or a prefix ending in * (\"x-corp-auth-*\")",
            ));
        }
    }
    if !config.admin.listen.is_empty() && socket_addr(&config.admin.listen).is_none() {
        p.push(addr_problem("admin.listen", &config.admin.listen));
    }
    let l = &s.limits;
    if l.max_header_bytes < 8192 {
        p.push(Problem::new(
            "server.limits.max_header_bytes",
            format!("{} is below the minimum of 8192", l.max_header_bytes),
            "use at least 8192 (default 65536)",
        ));
    }
    if config.audit.path.is_empty() {
        p.push(Problem::new(
            "audit.path",
            "must not be empty",
            "use \"-\" for standard output or a file path",
        ));
    }
    validate_audit(&config.audit, &mut p);
    validate_tokens(config, &mut p);

    if config.routes.is_empty() {
        p.push(Problem::new(
            "routes",
            "no routes are configured, so every request would get 404",
            "add at least one [[routes]] table",
        ));
    }
    validate_sessions(&config.sessions, &mut p);
    let mut idp_names = HashSet::new();
    for (i, idp) in config.identity_providers.iter().enumerate() {
        let at = format!("identity_providers[{i}]");
        validate_provider(idp, &at, &mut p);
        if !idp.name.is_empty() && !idp_names.insert(idp.name.as_str()) {
            p.push(Problem::new(
                format!("{at}.name"),
                format!("identity provider name {:?} is used twice", idp.name),
                "give every identity provider a unique name",
            ));
        }
    }
    let mut names = HashSet::new();
    let mut matchers = HashSet::new();
    for (i, route) in config.routes.iter().enumerate() {
        let at = format!("routes[{i}]");
        validate_route(route, &at, &mut p);
        for (j, idp) in route.identity_providers.iter().enumerate() {
            if !idp_names.contains(idp.as_str()) {
                p.push(Problem::new(
                    format!("{at}.identity_providers[{j}]"),
                    format!("no identity provider is named {idp:?}"),
                    "use the name of an [[identity_providers]] entry",
                ));
            }
        }
        if let Some(cors) = &route.cors {
            validate_cors(cors, &format!("{at}.cors"), &mut p);
        }
        if let Some(domain) = &route.policy_domain
            && (domain.is_empty()
                || domain == "*"
                || !domain
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)))
        {
            p.push(Problem::new(
                format!("{at}.policy_domain"),
                format!("{domain:?} is not a domain name"),
                "use letters, digits, '_', '-' or '.', e.g. policy_domain = \"airflow\"",
            ));
        }
        if route.access != crate::config::Access::Protected
            && (route.policy_domain.is_some() || route.resources.is_some())
        {
            p.push(Problem::new(
                format!("{at}.access"),
                "policy_domain and resources apply only to protected routes",
                "set access = \"protected\" or remove policy_domain and resources",
            ));
        }
        if route.access == crate::config::Access::Public && !route.identity_providers.is_empty() {
            p.push(Problem::new(
                format!("{at}.identity_providers"),
                "a public route does not authenticate, so listing providers has no effect",
                "set access = \"protected\" (or \"authenticated\") or remove identity_providers",
            ));
        }
        if !route.name.is_empty() && !names.insert(route.name.as_str()) {
            p.push(Problem::new(
                format!("{at}.name"),
                format!("route name {:?} is used twice", route.name),
                "give every route a unique name",
            ));
        }
        for host in &route.hosts {
            if !matchers.insert((host.to_ascii_lowercase(), route.path_prefix.clone())) {
                p.push(Problem::new(
                    format!("{at}.hosts"),
                    format!(
                        "host {host:?} with path_prefix {:?} is already served by an earlier route",
                        route.path_prefix
                    ),
                    "remove the duplicate or use a different path_prefix",
                ));
            }
        }
    }
    p
}

/// What the file allows but probably does not mean: reported by `check-config` and logged by
/// `serve`, never refused.
pub fn warnings(config: &Config) -> Vec<Problem> {
    use crate::config::Access;
    let mut p = Vec::new();
    for (i, route) in config.routes.iter().enumerate() {
        // Names that match no provider are already errors; a route that names none at all is
        // allowed (it fails closed), but nobody can ever pass it.
        if route.access != Access::Public && route.identity_providers.is_empty() {
            let access = if route.access == Access::Protected {
                "protected"
            } else {
                "authenticated"
            };
            p.push(Problem::warning(
                format!("routes[{i}].identity_providers"),
                format!(
                    "the route is {access} but names no identity provider, so nobody can be \
                     authenticated and every request to it is refused with 401"
                ),
                "list the providers whose callers it admits, e.g. identity_providers = [\"okta\"], \
                 or set access = \"public\" if it is meant to be open",
            ));
        }
    }
    p
}

fn validate_provider(idp: &crate::config::IdentityProvider, at: &str, p: &mut Vec<Problem>) {
    use super::presets::{ASYMMETRIC_ALGORITHMS, HMAC_ALGORITHMS};
    let has_secret = idp.hmac_secret_env.is_some() || idp.hmac_secret_file.is_some();
    if idp.name.is_empty() {
        p.push(Problem::new(
            format!("{at}.name"),
            "is missing",
            "name the provider, e.g. name = \"okta\"",
        ));
    } else if !crate::config::is_provider_name(&idp.name) {
        p.push(Problem::new(
            format!("{at}.name"),
            format!(
                "{:?} is not a provider name: policies name it in subjects (`user:<name>/alice`)",
                idp.name
            ),
            "use letters, digits, `_`, `-` and `.` only, e.g. name = \"okta\"",
        ));
    }
    validate_claims(idp, at, p);
    match idp.issuer.parse::<http::Uri>() {
        Ok(uri) if uri.scheme_str() == Some("https") && uri.host().is_some() => {}
        // Plain HTTP lets anyone on the path swap the signing keys: loopback only (tests, sidecars).
        Ok(uri) if uri.scheme_str() == Some("http") && matches!(uri.host(), Some("127.0.0.1" | "localhost" | "[::1]")) => {}
        _ => p.push(Problem::new(
            format!("{at}.issuer"),
            format!("{:?} is not an https:// issuer URL", idp.issuer),
            "write the issuer exactly as tokens carry it in `iss`, e.g. \"https://example.okta.com/oauth2/default\"",
        )),
    }
    if idp.audiences.is_empty() {
        p.push(Problem::new(
            format!("{at}.audiences"),
            "is empty: tokens minted for any other service would be accepted",
            "list the audience(s) your tokens are issued for, e.g. audiences = [\"api://portcullis\"]",
        ));
    }
    for (j, alg) in idp.algorithms.iter().flatten().enumerate() {
        if HMAC_ALGORITHMS.contains(&alg.as_str()) {
            if !has_secret {
                p.push(Problem::new(
                    format!("{at}.algorithms[{j}]"),
                    format!("{alg} needs a shared secret, and none is configured"),
                    "set hmac_secret_env or hmac_secret_file (HMAC keys are never taken from a JWKS)",
                ));
            }
        } else if !ASYMMETRIC_ALGORITHMS.contains(&alg.as_str()) {
            p.push(Problem::new(
                format!("{at}.algorithms[{j}]"),
                format!("{alg:?} is not accepted"),
                "use RS256/384/512, PS256/384/512, ES256/384, EdDSA, or HS256/384/512 with a shared secret (never none)",
            ));
        }
    }
    if idp.hmac_secret_env.is_some() && idp.hmac_secret_file.is_some() {
        p.push(Problem::new(
            format!("{at}.hmac_secret_env"),
            "hmac_secret_env and hmac_secret_file are both set",
            "keep one of them",
        ));
    }
    if has_secret
        && !idp
            .algorithms
            .iter()
            .flatten()
            .any(|a| HMAC_ALGORITHMS.contains(&a.as_str()))
    {
        p.push(Problem::new(
            format!("{at}.algorithms"),
            "a shared secret is configured but no HMAC algorithm is listed, so it is never used",
            "list HS256 (or HS384/HS512) in algorithms, or remove the secret",
        ));
    }
    if matches!(idp.algorithms.as_deref(), Some([])) {
        p.push(Problem::new(
            format!("{at}.algorithms"),
            "is empty",
            "list at least one algorithm, e.g. [\"RS256\"]",
        ));
    }
    if let Some(leeway) = idp.leeway
        && leeway > std::time::Duration::from_secs(60)
    {
        p.push(Problem::new(
            format!("{at}.leeway"),
            format!("{leeway:?} is more than 60s"),
            "use at most \"60s\" (default \"30s\")",
        ));
    }
    if let Some(browser) = &idp.browser {
        validate_browser(browser, &format!("{at}.browser"), p);
    }
    if let Some(uri) = &idp.jwks_uri
        && !(uri.starts_with("https://")
            || uri.starts_with("http://127.0.0.1")
            || uri.starts_with("http://localhost"))
    {
        p.push(Problem::new(
            format!("{at}.jwks_uri"),
            format!("{uri:?} is not an https:// URL"),
            "use the https:// JWKS URL of the issuer",
        ));
    }
}

/// Claim templates parse, bound claims name a value, and `require_at_jwt` fits the token type.
fn validate_claims(idp: &crate::config::IdentityProvider, at: &str, p: &mut Vec<Problem>) {
    use super::claims::ClaimTemplate;
    let claims = &idp.claims;
    let templates = [
        ("subject", claims.subject.as_ref()),
        ("name", claims.name.as_ref()),
        ("client", claims.client.as_ref()),
    ];
    let listed = claims
        .group_templates
        .iter()
        .flatten()
        .enumerate()
        .map(|(j, t)| (format!("group_templates[{j}]"), Some(t)));
    for (key, text) in templates
        .into_iter()
        .map(|(k, t)| (k.to_string(), t))
        .chain(listed)
    {
        if let Some(text) = text
            && let Err(e) = ClaimTemplate::parse(text)
        {
            p.push(Problem::new(
                format!("{at}.claims.{key}"),
                e,
                "write a claim (`sub`), alternatives (`uid|sub`) or a template (`project:{project_id}:{ref}`)",
            ));
        }
    }
    for (claim, value) in &idp.bound_claims {
        if claim.is_empty() || value.values().is_empty() {
            p.push(Problem::new(
                format!("{at}.bound_claims.{claim}"),
                "names no claim or no accepted value",
                "write claim = \"value\" or claim = [\"value\", \"other\"]",
            ));
        }
    }
    if idp.require_at_jwt && idp.resolved().token_type == crate::config::TokenType::Id {
        p.push(Problem::new(
            format!("{at}.require_at_jwt"),
            "asks for RFC 9068 access tokens on a provider whose tokens are ID tokens",
            "remove require_at_jwt, or set token_type = \"access\"",
        ));
    }
}

fn validate_browser(b: &crate::config::BrowserClient, at: &str, p: &mut Vec<Problem>) {
    if b.client_id.is_empty() {
        p.push(Problem::new(
            format!("{at}.client_id"),
            "is missing",
            "use the client id registered at the provider for this proxy",
        ));
    }
    if b.client_secret_env.is_some() && b.client_secret_file.is_some() {
        p.push(Problem::new(
            format!("{at}.client_secret_env"),
            "client_secret_env and client_secret_file are both set",
            "keep one of them",
        ));
    }
    if let Some(scopes) = &b.scopes
        && !scopes.iter().any(|s| s == "openid")
    {
        p.push(Problem::new(
            format!("{at}.scopes"),
            "does not include \"openid\", so no ID token would be issued",
            "add \"openid\" to the scopes",
        ));
    }
}

fn validate_sessions(s: &crate::config::Sessions, p: &mut Vec<Problem>) {
    use crate::config::StoreKind;
    if s.idle_timeout > s.lifetime {
        p.push(Problem::new(
            "sessions.idle_timeout",
            "is longer than sessions.lifetime, so it never applies",
            "make it shorter than the lifetime",
        ));
    }
    match (s.store, &s.redis) {
        (StoreKind::Redis, None) => p.push(Problem::new(
            "sessions.redis",
            "store = \"redis\" needs a [sessions.redis] table",
            "add [sessions.redis] with url and encryption_key_env (or encryption_key_file)",
        )),
        (StoreKind::Memory, Some(_)) => p.push(Problem::new(
            "sessions.store",
            "[sessions.redis] is set but the store is \"memory\", so it would be ignored",
            "set store = \"redis\", or remove [sessions.redis]",
        )),
        (StoreKind::Redis, Some(redis)) => validate_redis(redis, p),
        (StoreKind::Memory, None) => {}
    }
}

fn validate_redis(r: &crate::config::Redis, p: &mut Vec<Problem>) {
    use crate::config::RedisUrl;
    let at = |key: &str| format!("sessions.redis.{key}");
    let ways = [r.url.is_some(), !r.nodes.is_empty(), !r.sentinels.is_empty()];
    match ways.iter().filter(|w| **w).count() {
        0 => p.push(Problem::new(
            at("url"),
            "is missing",
            "set url = \"redis://host:6379\" (or nodes = [...] for a cluster, sentinels = [...] for Sentinel)",
        )),
        1 => {}
        _ => p.push(Problem::new(
            at(if r.sentinels.is_empty() { "nodes" } else { "sentinels" }),
            "more than one of url, nodes and sentinels is set",
            "keep url for a single server, nodes for a cluster, or sentinels for Redis Sentinel",
        )),
    }
    let sentinel = !r.sentinels.is_empty();
    match (sentinel, &r.sentinel_master) {
        (true, None) => p.push(Problem::new(
            at("sentinel_master"),
            "is required with sentinels",
            "set it to the name in the Sentinels' `sentinel monitor <name> ...` line",
        )),
        (false, Some(_)) => p.push(Problem::new(
            at("sentinel_master"),
            "is set without sentinels",
            "add sentinels = [\"redis://sentinel:26379\", ...], or remove it",
        )),
        (true, Some(name)) if name.trim().is_empty() => p.push(Problem::new(
            at("sentinel_master"),
            "is empty",
            "set it to the name in the Sentinels' `sentinel monitor <name> ...` line",
        )),
        _ => {}
    }
    if sentinel && r.cluster {
        p.push(Problem::new(
            at("cluster"),
            "a Redis Cluster is not found through Sentinels",
            "remove cluster, or use nodes instead of sentinels",
        ));
    }
    if r.sentinel_password_env.is_some() && r.sentinel_password_file.is_some() {
        p.push(Problem::new(
            at("sentinel_password_env"),
            "sentinel_password_env and sentinel_password_file are both set",
            "keep one of them",
        ));
    }
    let mut parsed = Vec::new();
    for (path, text) in r.urls() {
        match RedisUrl::parse(text) {
            Ok(url) => parsed.push((path, url)),
            Err((message, hint)) => p.push(Problem::new(path, message, hint)),
        }
    }
    let tls = parsed.first().is_some_and(|(_, u)| u.tls);
    if parsed.iter().any(|(_, u)| u.tls != tls) {
        p.push(Problem::new(
            at(if r.sentinels.is_empty() {
                "nodes"
            } else {
                "sentinels"
            }),
            "mixes redis:// and rediss:// nodes",
            "use rediss:// for every node (or Sentinel) with TLS, redis:// for every one without",
        ));
    }
    if sentinel {
        for (path, url) in parsed.iter().filter(|(path, _)| path.contains("sentinels")) {
            if url.db != 0 {
                p.push(Problem::new(
                    path.clone(),
                    "names a database, but the store keeps its sessions in the master's database 0",
                    "remove the /database part of the URL",
                ));
            }
        }
        if r.server_name.is_some() {
            p.push(Problem::new(
                at("server_name"),
                "does not apply with sentinels: the master is checked against the address they give",
                "remove server_name, and give the master (and each replica) a certificate for its address",
            ));
        }
    }
    let cluster = r.cluster_nodes().is_some();
    if cluster {
        for (path, url) in &parsed {
            if url.db != 0 {
                p.push(Problem::new(
                    path.clone(),
                    "names a database, but a Redis Cluster has only database 0",
                    "remove the /database part of the URL",
                ));
            }
        }
        if r.server_name.is_some() {
            p.push(Problem::new(
                at("server_name"),
                "does not apply to a cluster: its nodes are checked against the addresses they announce",
                "remove server_name, and give each node a certificate for the address it announces",
            ));
        }
    }
    if !tls && !parsed.is_empty() {
        for (key, set) in [
            ("ca", r.ca.is_some()),
            ("server_name", r.server_name.is_some()),
            ("client_cert", r.client_cert.is_some()),
        ] {
            if set {
                p.push(Problem::new(
                    at(key),
                    "is a TLS setting, but the URL is redis:// (no TLS)",
                    "use a rediss:// URL, or remove it",
                ));
            }
        }
    }
    if r.client_cert.is_some() != r.client_key.is_some() {
        p.push(Problem::new(
            at(if r.client_cert.is_some() {
                "client_key"
            } else {
                "client_cert"
            }),
            "client_cert and client_key go together",
            "set both (a PEM certificate and its private key), or neither",
        ));
    }
    if r.server_name
        .as_deref()
        .is_some_and(|n| rustls::pki_types::ServerName::try_from(n).is_err())
    {
        p.push(Problem::new(
            at("server_name"),
            "is not a DNS name or IP address",
            "write the name the server's certificate is issued for, e.g. \"redis.internal\"",
        ));
    }
    let username_in_url = parsed.iter().any(|(_, u)| u.username.is_some());
    if r.username.is_some() && username_in_url {
        p.push(Problem::new(
            at("username"),
            "is set, and the URL names a user too",
            "keep one of them",
        ));
    }
    if r.password_env.is_some() && r.password_file.is_some() {
        p.push(Problem::new(
            at("password_env"),
            "password_env and password_file are both set",
            "keep one of them",
        ));
    }
    if r.key_prefix.contains(['{', '}']) {
        p.push(Problem::new(
            at("key_prefix"),
            "contains { or }, which would put every session in one cluster slot",
            "use letters, digits and separators such as \"portcullis:\"",
        ));
    }
    match (r.encryption_key_env.is_some(), r.encryption_key_file.is_some()) {
        (false, false) => p.push(Problem::new(
            at("encryption_key_env"),
            "is missing: sessions hold refresh tokens and are encrypted in Redis",
            "set encryption_key_env or encryption_key_file to 32 random bytes in base64 or hex \
             (openssl rand -base64 32)",
        )),
        (true, true) => p.push(Problem::new(
            at("encryption_key_env"),
            "encryption_key_env and encryption_key_file are both set",
            "keep one of them",
        )),
        _ => {}
    }
    if r.previous_encryption_key_env.is_some() && r.previous_encryption_key_file.is_some() {
        p.push(Problem::new(
            at("previous_encryption_key_env"),
            "previous_encryption_key_env and previous_encryption_key_file are both set",
            "keep one of them",
        ));
    }
}

fn validate_cors(cors: &crate::config::Cors, at: &str, p: &mut Vec<Problem>) {
    if cors.allowed_origins.is_empty() {
        p.push(Problem::new(
            format!("{at}.allowed_origins"),
            "is empty, so no cross-origin request is allowed",
            "list the origins, e.g. [\"https://ui.example.com\"], or remove the cors table",
        ));
    }
    for (j, origin) in cors.allowed_origins.iter().enumerate() {
        if origin == "*" {
            if cors.allow_credentials {
                p.push(Problem::new(
                    format!("{at}.allowed_origins[{j}]"),
                    "\"*\" with allow_credentials would let any site act with the user's session",
                    "list the origins exactly, or set allow_credentials = false",
                ));
            }
            continue;
        }
        let ok = origin.parse::<http::Uri>().is_ok_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https"))
                && u.host().is_some()
                && u.path_and_query()
                    .is_none_or(|pq| pq.as_str().is_empty() || pq.as_str() == "/")
                && !origin.ends_with('/')
        });
        if !ok {
            p.push(Problem::new(
                format!("{at}.allowed_origins[{j}]"),
                format!("{origin:?} is not an origin"),
                "write scheme://host[:port] without a path, e.g. \"https://ui.example.com\"",
            ));
        }
    }
    for (j, method) in cors.allowed_methods.iter().enumerate() {
        if method.parse::<http::Method>().is_err() || method.chars().any(|c| c.is_ascii_lowercase()) {
            p.push(Problem::new(
                format!("{at}.allowed_methods[{j}]"),
                format!("{method:?} is not an upper-case HTTP method"),
                "write e.g. \"GET\"",
            ));
        }
    }
    for (key, names) in [
        ("allowed_headers", &cors.allowed_headers),
        ("expose_headers", &cors.expose_headers),
    ] {
        for (j, name) in names.iter().enumerate() {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                p.push(Problem::new(
                    format!("{at}.{key}[{j}]"),
                    format!("{name:?} is not a header name"),
                    "write e.g. \"content-type\"",
                ));
            }
        }
    }
}

fn addr_problem(path: &str, value: &str) -> Problem {
    Problem::new(
        path,
        format!("{value:?} is not an address"),
        "write ip:port, e.g. \"127.0.0.1:8080\" or \"[::]:8443\"",
    )
}

fn validate_route(route: &Route, at: &str, p: &mut Vec<Problem>) {
    for (j, protocol) in route.upgrades.iter().enumerate() {
        let name = protocol.split('/').next().unwrap_or_default();
        if name.eq_ignore_ascii_case("h2c") {
            p.push(Problem::new(
                format!("{at}.upgrades[{j}]"),
                "h2c cannot be allowed: a client would speak HTTP/2 straight to the upstream, past every decision",
                "remove it; to reach an HTTP/2 upstream, set upstream.protocol = \"http2\"",
            ));
        } else if protocol.is_empty()
            || http::HeaderValue::from_str(protocol).is_err()
            || protocol.contains([',', ' '])
        {
            p.push(Problem::new(
                format!("{at}.upgrades[{j}]"),
                format!("{protocol:?} is not a protocol name"),
                "write one protocol as the Upgrade header names it, e.g. \"websocket\" or \"spdy/3.1\"",
            ));
        }
    }
    if route.name.is_empty() {
        p.push(Problem::new(
            format!("{at}.name"),
            "is missing",
            "name the route, e.g. name = \"airflow\"",
        ));
    } else if !route
        .name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        p.push(Problem::new(
            format!("{at}.name"),
            format!(
                "{:?} has characters other than letters, digits, '-', '_' and '.'",
                route.name
            ),
            "use a simple identifier; it appears in metrics and audit events",
        ));
    }
    if route.hosts.is_empty() {
        p.push(Problem::new(
            format!("{at}.hosts"),
            "is empty, so the route can never match",
            "list the host names it serves, e.g. hosts = [\"airflow.example.com\"]",
        ));
    }
    for (j, host) in route.hosts.iter().enumerate() {
        if !valid_host_pattern(host) {
            p.push(Problem::new(
                format!("{at}.hosts[{j}]"),
                format!("{host:?} is not a host name or *.wildcard"),
                "write a name like \"api.example.com\" or \"*.example.com\", without scheme, port or path",
            ));
        }
    }
    if !route.path_prefix.starts_with('/')
        || route.path_prefix.contains("//")
        || route.path_prefix.split('/').any(|s| s == "." || s == "..")
        || route
            .path_prefix
            .chars()
            .any(|c| c == '%' || c == '?' || c == '#' || c.is_control())
    {
        p.push(Problem::new(
            format!("{at}.path_prefix"),
            format!("{:?} is not a canonical path prefix", route.path_prefix),
            "start with '/', no '//', dot segments, '%', '?' or '#', e.g. \"/api/v1\"",
        ));
    }
    let up = &route.upstream;
    let upath = format!("{at}.upstream");
    match up.url.parse::<http::Uri>() {
        Ok(uri) => {
            let scheme_ok = matches!(uri.scheme_str(), Some("http") | Some("https"));
            let path_ok = matches!(uri.path(), "" | "/") && uri.query().is_none();
            if !scheme_ok || uri.host().is_none() || !path_ok || up.url.contains('@') {
                p.push(Problem::new(
                    format!("{upath}.url"),
                    format!("{:?} is not an http(s)://host[:port] URL", up.url),
                    "write e.g. \"http://127.0.0.1:8081\" (no path, query or credentials)",
                ));
            }
            let https = uri.scheme_str() == Some("https");
            if !https {
                for (key, set) in [
                    ("ca", up.ca.is_some()),
                    ("server_name", up.server_name.is_some()),
                    ("client_cert", up.client_cert.is_some()),
                    ("client_key", up.client_key.is_some()),
                ] {
                    if set {
                        p.push(Problem::new(
                            format!("{upath}.{key}"),
                            "is a TLS setting but the upstream URL is plain http",
                            "use an https:// URL or remove the key",
                        ));
                    }
                }
            }
        }
        Err(_) => p.push(Problem::new(
            format!("{upath}.url"),
            if up.url.is_empty() {
                "is missing".to_string()
            } else {
                format!("{:?} is not a URL", up.url)
            },
            "write e.g. \"http://127.0.0.1:8081\"",
        )),
    }
    if up.client_cert.is_some() != up.client_key.is_some() {
        p.push(Problem::new(
            format!("{upath}.client_cert"),
            "client_cert and client_key must be set together",
            "set both for mTLS to the upstream, or neither",
        ));
    }
    if let Some(name) = &up.server_name
        && !valid_host_pattern(name)
    {
        p.push(Problem::new(
            format!("{upath}.server_name"),
            format!("{name:?} is not a DNS name"),
            "write the name on the upstream's certificate, e.g. \"airflow.internal\"",
        ));
    }
    if matches!(up.connect_timeout, Some(d) if d.is_zero()) {
        p.push(Problem::new(
            format!("{upath}.connect_timeout"),
            "must be positive",
            "use e.g. \"5s\"",
        ));
    }
}

/// A host name (lower or upper case letters, digits, '-', '.') or `*.` followed by one.
pub fn valid_host_pattern(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn validate_audit(audit: &crate::config::Audit, p: &mut Vec<Problem>) {
    use crate::config::{OtlpProtocol, WORKFLOW_ATTRIBUTES};
    if audit.queue_size < 64 {
        p.push(Problem::new(
            "audit.queue_size",
            "must be at least 64",
            "leave it unset for the default (16384)",
        ));
    }
    if audit.service_name.trim().is_empty() {
        p.push(Problem::new(
            "audit.service_name",
            "must not be empty",
            "leave it unset for the default (portcullis)",
        ));
    }
    for (attribute, header) in &audit.header_attributes {
        let at = format!("audit.header_attributes.{attribute:?}");
        if !WORKFLOW_ATTRIBUTES.contains(&attribute.as_str()) {
            p.push(Problem::new(
                at.clone(),
                format!("{attribute:?} is not a workflow attribute"),
                format!("use one of {}", WORKFLOW_ATTRIBUTES.join(", ")),
            ));
        }
        let name = header.to_ascii_lowercase().replace(['_', '.'], "-");
        let secret = ["authorization", "proxy-authorization", "cookie", "set-cookie"]
            .contains(&name.as_str())
            || name.starts_with("x-portcullis-")
            || ["token", "secret", "password", "key", "session"]
                .iter()
                .any(|w| name.contains(w));
        if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
            p.push(Problem::new(
                at,
                format!("{header:?} is not a header name"),
                "use e.g. \"X-Pipeline-Run\"",
            ));
        } else if secret {
            p.push(Problem::new(
                at,
                format!("{header:?} may carry a credential, which never goes into the audit trail"),
                "name a header that carries only a workflow id",
            ));
        }
    }
    let Some(otlp) = &audit.otlp else {
        return;
    };
    if audit.spool.dir.is_none() {
        p.push(Problem::new(
            "audit.spool.dir",
            "is required with [audit.otlp]: records wait there while the collector is down",
            "set a directory on persistent storage, e.g. \"/var/lib/portcullis/audit\"",
        ));
    }
    if audit.spool.max_bytes < 1 << 20 {
        p.push(Problem::new(
            "audit.spool.max_bytes",
            "must be at least 1048576 (1 MiB)",
            "leave it unset for the default (1 GiB)",
        ));
    }
    match otlp.resolved_endpoint() {
        None => p.push(Problem::new(
            "audit.otlp.endpoint",
            "is required without a preset",
            "set endpoint = \"http://127.0.0.1:4317\", or preset = \"lightstep\" or \"collector\"",
        )),
        Some(endpoint) => match endpoint.parse::<http::Uri>() {
            Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => {
                let has_path = uri.path() != "/" && !uri.path().is_empty();
                if otlp.resolved_protocol() == OtlpProtocol::HttpProtobuf && !has_path {
                    p.push(Problem::new(
                        "audit.otlp.endpoint",
                        "OTLP/HTTP needs the full URL, path included",
                        "use e.g. \"http://127.0.0.1:4318/v1/traces\"",
                    ));
                }
            }
            _ => p.push(Problem::new(
                "audit.otlp.endpoint",
                format!("{endpoint:?} is not an http:// or https:// URL"),
                "use e.g. \"https://ingest.lightstep.com:443\"",
            )),
        },
    }
    if otlp.batch_size == 0 || otlp.batch_size > 8192 {
        p.push(Problem::new(
            "audit.otlp.batch_size",
            "must be between 1 and 8192",
            "leave it unset for the default (1024)",
        ));
    }
    for (i, h) in otlp.resolved_headers().iter().enumerate() {
        let at = if i < otlp.headers.len() {
            format!("audit.otlp.headers[{i}]")
        } else {
            "audit.otlp.access_token_env".to_string()
        };
        if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
            p.push(Problem::new(
                format!("{at}.name"),
                format!("{:?} is not a header name", h.name),
                "use lower-case letters, digits and dashes",
            ));
        }
        let sources = [h.value.is_some(), h.value_env.is_some(), h.value_file.is_some()];
        if sources.iter().filter(|s| **s).count() != 1 {
            p.push(Problem::new(
                at,
                "needs exactly one of value, value_env, value_file",
                "put secrets in value_env or value_file, never in the config text",
            ));
        }
    }
}

/// Token exchange sends the caller's own token to the endpoint: only from a route that has a
/// caller, and only tokens of issuers the operator named (by default the endpoint's own).
fn validate_exchange(
    config: &Config,
    route: &Route,
    c: &crate::config::UpstreamCredentials,
    at: &str,
    p: &mut Vec<Problem>,
) {
    use crate::config::{Access, CredentialKind, SubjectTokenType};
    if c.kind != CredentialKind::TokenExchange {
        let set = [
            ("audience", c.audience.is_some()),
            (
                "subject_token_type",
                c.subject_token_type != SubjectTokenType::default(),
            ),
            ("subject_issuers", !c.subject_issuers.is_empty()),
        ];
        for (key, _) in set.iter().filter(|(_, set)| *set) {
            p.push(Problem::new(
                format!("{at}.{key}"),
                "applies to kind = \"token_exchange\" only",
                "remove it, or set kind = \"token_exchange\"",
            ));
        }
        return;
    }
    if route.access == Access::Public {
        p.push(Problem::new(
            format!("{at}.kind"),
            "token_exchange needs a caller's token, and a public route has no caller",
            "set access = \"authenticated\" or \"protected\", or use kind = \"client_credentials\"",
        ));
        return;
    }
    let allowed = c.subject_issuers();
    for name in &route.identity_providers {
        let Some(idp) = config.identity_providers.iter().find(|i| &i.name == name) else {
            continue;
        };
        if !allowed.contains(&idp.issuer.trim_end_matches('/')) {
            p.push(Problem::new(
                format!("{at}.subject_issuers"),
                format!(
                    "the route accepts identity provider \"{name}\" (issuer {}), whose callers' tokens would be sent to {}",
                    idp.issuer, c.issuer
                ),
                "add that issuer to subject_issuers if the endpoint trusts it, or do not accept that provider on this route",
            ));
        }
    }
}

fn validate_tokens(config: &Config, p: &mut Vec<Problem>) {
    use crate::config::{Access, MAX_ASSERTION_LIFETIME};
    let t = &config.tokens;
    let asserting = config.routes.iter().any(|r| r.assertion.is_some());
    if asserting && t.issuer.is_none() {
        p.push(Problem::new(
            "tokens.issuer",
            "is required when a route sends an identity assertion",
            "set the URL upstreams know this proxy by, e.g. \"https://portcullis.example.com\"",
        ));
    }
    if let Some(issuer) = &t.issuer {
        let ok = issuer.parse::<http::Uri>().is_ok_and(|u| {
            matches!(u.scheme_str(), Some("https" | "http")) && u.host().is_some() && u.query().is_none()
        });
        if !ok {
            p.push(Problem::new(
                "tokens.issuer",
                format!("{issuer:?} is not an https URL"),
                "use e.g. \"https://portcullis.example.com\"",
            ));
        }
    }
    if asserting && t.key_dir.is_none() {
        p.push(Problem::new(
            "tokens.key_dir",
            "is required when a route sends an identity assertion",
            "set a directory only the proxy's user may read, e.g. \"/var/lib/portcullis/keys\"",
        ));
    }
    if t.rotate_every < std::time::Duration::from_secs(1) {
        p.push(Problem::new(
            "tokens.rotate_every",
            "must be at least 1s",
            "use e.g. \"24h\"",
        ));
    }
    if t.shared_keys_expiry < std::time::Duration::from_secs(1) {
        p.push(Problem::new(
            "tokens.shared_keys_expiry",
            "must be at least 1s",
            "leave it unset for the default \"16m\" (the longest assertion lifetime plus a minute)",
        ));
    }
    for (i, route) in config.routes.iter().enumerate() {
        if let Some(c) = &route.upstream_credentials {
            let at = format!("routes[{i}].upstream_credentials");
            let url_ok = |u: &str| {
                u.parse::<http::Uri>()
                    .is_ok_and(|u| matches!(u.scheme_str(), Some("https" | "http")) && u.host().is_some())
            };
            if !url_ok(&c.issuer) {
                p.push(Problem::new(
                    format!("{at}.issuer"),
                    "must be the identity provider's issuer URL",
                    "use e.g. \"https://example.okta.com/oauth2/default\"",
                ));
            }
            if c.token_url.as_deref().is_some_and(|u| !url_ok(u)) {
                p.push(Problem::new(
                    format!("{at}.token_url"),
                    "is not an http(s) URL",
                    "leave it unset to use the provider's discovery",
                ));
            }
            if c.client_id.is_empty() {
                p.push(Problem::new(
                    format!("{at}.client_id"),
                    "is required",
                    "set the client the proxy obtains tokens as",
                ));
            }
            if c.client_secret_env.is_some() == c.client_secret_file.is_some() {
                p.push(Problem::new(
                    at.clone(),
                    "needs exactly one of client_secret_env, client_secret_file",
                    "keep the secret in the environment or a file, never in the config",
                ));
            }
            validate_exchange(config, route, c, &at, p);
        }
        let Some(a) = &route.assertion else {
            continue;
        };
        let at = format!("routes[{i}].assertion");
        if a.audience.trim().is_empty() {
            p.push(Problem::new(
                format!("{at}.audience"),
                "is required",
                "name what the upstream checks in aud, e.g. \"https://airflow.example.com\"",
            ));
        }
        if route.access == Access::Public {
            p.push(Problem::new(
                format!("routes[{i}].access"),
                "a public route has no caller to assert",
                "make the route authenticated or protected, or remove [routes.assertion]",
            ));
        }
        if a.lifetime < std::time::Duration::from_secs(1) || a.lifetime > MAX_ASSERTION_LIFETIME {
            p.push(Problem::new(
                format!("{at}.lifetime"),
                "must be between 1s and 15m",
                "leave it unset for the default (60s)",
            ));
        }
        let lower = a.header.to_ascii_lowercase();
        if lower == "authorization" && route.upstream_credentials.is_some() {
            p.push(Problem::new(
                format!("{at}.header"),
                "the route's brokered credential already replaces Authorization",
                "send the assertion in another header, or drop [routes.upstream_credentials]",
            ));
        }
        if let Some(path) = &a.upstream_jwks
            && let Err(e) = crate::config::read_public_jwks(path)
        {
            p.push(Problem::new(
                format!("{at}.upstream_jwks"),
                e,
                "name a JWKS file holding only the upstream's public keys, each with its kid",
            ));
        }
        for name in a.claims.keys() {
            if crate::config::ASSERTION_CLAIMS.contains(&name.as_str()) || name.is_empty() {
                p.push(Problem::new(
                    format!("{at}.claims.{name}"),
                    format!("{name:?} is a claim the proxy sets itself"),
                    "name a claim of the upstream's own, e.g. role",
                ));
            }
        }
        if http::HeaderName::from_bytes(a.header.as_bytes()).is_err()
            || [
                "cookie",
                "host",
                "connection",
                "x-portcullis-user",
                "x-portcullis-email",
                "x-portcullis-groups",
            ]
            .contains(&lower.as_str())
        {
            p.push(Problem::new(
                format!("{at}.header"),
                format!("{:?} cannot carry the assertion", a.header),
                "leave it unset for X-Portcullis-Assertion",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    #[test]
    fn a_zero_duration_or_count_is_refused_while_reading_at_its_key_path() {
        let cases = [
            (
                "[server.limits]\nidle_timeout = \"0s\"",
                "server.limits.idle_timeout",
                "must be positive",
            ),
            (
                "[server.limits]\nmax_connections = 0",
                "server.limits.max_connections",
                "nonzero",
            ),
            (
                "[sessions]\nlogin_timeout = \"0s\"",
                "sessions.login_timeout",
                "must be positive",
            ),
            ("[policy]\ncache_capacity = 0", "policy.cache_capacity", "nonzero"),
        ];
        for (text, key, message) in cases {
            let problems = parse(text).err().unwrap_or_default();
            assert!(
                problems
                    .iter()
                    .any(|p| p.path == key && p.message.contains(message)),
                "{text:?} gave {problems:?}"
            );
        }
        // One second is fine: only zero is refused.
        assert!(parse("[server.limits]\nidle_timeout = \"1s\"").is_ok());
    }

    #[test]
    fn token_exchange_never_sends_a_caller_s_token_to_an_endpoint_that_did_not_issue_it() {
        let config = parse(
            r#"
            [[identity_providers]]
            name = "okta"
            issuer = "https://example.okta.com"
            audiences = ["api"]
            [[identity_providers]]
            name = "gitlab"
            issuer = "https://gitlab.com"
            audiences = ["api"]
            [[routes]]
            name = "deploy"
            hosts = ["deploy.example.com"]
            access = "authenticated"
            identity_providers = ["okta", "gitlab"]
            [routes.upstream]
            url = "http://deploy:8080"
            [routes.upstream_credentials]
            kind = "token_exchange"
            issuer = "https://example.okta.com/"
            client_id = "portcullis"
            client_secret_env = "SECRET"
            [[routes]]
            name = "open"
            hosts = ["open.example.com"]
            access = "public"
            [routes.upstream]
            url = "http://open:8080"
            [routes.upstream_credentials]
            kind = "token_exchange"
            issuer = "https://example.okta.com"
            client_id = "portcullis"
            client_secret_env = "SECRET"
            [[routes]]
            name = "cc"
            hosts = ["cc.example.com"]
            access = "public"
            [routes.upstream]
            url = "http://cc:8080"
            [routes.upstream_credentials]
            issuer = "https://example.okta.com"
            client_id = "portcullis"
            client_secret_env = "SECRET"
            audience = "deploy"
            "#,
        )
        .unwrap();
        let problems = validate(&config);
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "routes[0].upstream_credentials.subject_issuers",
                "routes[1].upstream_credentials.kind",
                "routes[2].upstream_credentials.audience"
            ],
            "{problems:?}"
        );
        assert!(
            problems[0]
                .message
                .contains("\"gitlab\" (issuer https://gitlab.com)")
        );
    }

    #[test]
    fn a_config_with_several_mistakes_reports_each_with_its_key_path() {
        let config = parse(
            r#"
            [server]
            http = "nonsense"
            [[routes]]
            name = "a"
            hosts = ["bad host"]
            path_prefix = "api"
            [routes.upstream]
            url = "ftp://x"
            "#,
        )
        .unwrap();
        let paths: Vec<String> = validate(&config).into_iter().map(|p| p.path).collect();
        assert_eq!(
            paths,
            [
                "server.http",
                "routes[0].hosts[0]",
                "routes[0].path_prefix",
                "routes[0].upstream.url"
            ]
        );
    }

    #[test]
    fn a_redis_store_s_mistakes_are_each_reported_at_their_key_path_with_a_fix() {
        let routes = "[[routes]]\nname = \"a\"\nhosts = [\"a.example\"]\n[routes.upstream]\nurl = \"http://127.0.0.1:1\"\n";
        let problems = |sessions: &str| -> Vec<(String, String)> {
            let config = parse(&format!("{routes}[sessions]\n{sessions}")).unwrap();
            validate(&config)
                .into_iter()
                .map(|p| (p.path, format!("{} (fix: {})", p.message, p.hint)))
                .collect()
        };
        let paths =
            |sessions: &str| -> Vec<String> { problems(sessions).into_iter().map(|(p, _)| p).collect() };

        assert_eq!(paths("store = \"redis\""), ["sessions.redis"]);
        assert_eq!(
            paths("[sessions.redis]\nurl = \"redis://r\"\nencryption_key_env = \"K\""),
            ["sessions.store"],
            "a Redis table the memory store would ignore"
        );
        let good = "store = \"redis\"\n[sessions.redis]\nencryption_key_env = \"K\"\n";
        assert!(paths(&format!("{good}url = \"rediss://redis.internal:6380/2\"")).is_empty());
        assert!(paths(&format!("{good}nodes = [\"redis://a:7000\", \"redis://b:7000\"]")).is_empty());

        let secret_in_file = problems(&format!("{good}url = \"redis://user:hunter2@r\""));
        assert_eq!(secret_in_file.len(), 1);
        assert_eq!(secret_in_file[0].0, "sessions.redis.url");
        assert!(secret_in_file[0].1.contains("password_env"), "{secret_in_file:?}");
        assert!(
            !secret_in_file[0].1.contains("hunter2"),
            "the password was repeated"
        );

        assert_eq!(
            paths(&format!(
                "{good}url = \"redis://r/1\"\ncluster = true\nca = \"ca.pem\"\nclient_key = \"k.pem\"\n\
                 password_env = \"P\"\npassword_file = \"p\"\nkey_prefix = \"{{pc}}:\"\n\
                 previous_encryption_key_env = \"A\"\nprevious_encryption_key_file = \"b\""
            )),
            [
                "sessions.redis.url",
                "sessions.redis.ca",
                "sessions.redis.client_cert",
                "sessions.redis.password_env",
                "sessions.redis.key_prefix",
                "sessions.redis.previous_encryption_key_env",
            ]
        );
        assert_eq!(
            paths(
                "store = \"redis\"\n[sessions.redis]\nurl = \"rediss://r#insecure\"\n\
                 nodes = [\"http://n\", \"redis://m\"]\nserver_name = \"bad name\""
            ),
            [
                "sessions.redis.nodes",
                "sessions.redis.url",
                "sessions.redis.nodes[0]",
                // Not with a cluster, not without TLS, and not a name.
                "sessions.redis.server_name",
                "sessions.redis.server_name",
                "sessions.redis.server_name",
                "sessions.redis.encryption_key_env",
            ]
        );
        assert_eq!(
            paths("store = \"redis\"\n[sessions.redis]\nencryption_key_env = \"K\""),
            ["sessions.redis.url"]
        );

        assert!(
            paths(&format!(
                "{good}sentinels = [\"redis://s1:26379\"]\nsentinel_master = \"mymaster\""
            ))
            .is_empty()
        );
        assert_eq!(
            paths(&format!(
                "{good}url = \"redis://r\"\nsentinels = [\"redis://s1:26379/3\"]\ncluster = true\n\
                 sentinel_password_env = \"S\"\nsentinel_password_file = \"s\""
            )),
            [
                "sessions.redis.sentinels",
                "sessions.redis.sentinel_master",
                "sessions.redis.cluster",
                "sessions.redis.sentinel_password_env",
                "sessions.redis.sentinels[0]",
                // With cluster = true it is read as a cluster seed too, which has only database 0.
                "sessions.redis.sentinels[0]",
            ]
        );
        assert_eq!(
            paths(&format!("{good}url = \"redis://r\"\nsentinel_master = \"m\"")),
            ["sessions.redis.sentinel_master"]
        );
    }

    #[test]
    fn every_unknown_key_is_reported_with_its_path() {
        let problems = parse(
            r#"
            colour = 1
            [server]
            htp = "x"
            [[routes]]
            name = "a"
            [routes.upstream]
            uri = "x"
            "#,
        )
        .unwrap_err();
        let mut paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        paths.sort_unstable();
        assert_eq!(paths, ["colour", "routes[0].upstream.uri", "server.htp"]);
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_key_path() {
        let problems = parse("[server.limits]\nmax_headers = \"many\"\n").unwrap_err();
        assert_eq!(problems[0].path, "server.limits.max_headers");
    }

    #[test]
    fn wildcard_and_exact_hosts_are_valid_patterns() {
        assert!(valid_host_pattern("*.example.com"));
        assert!(valid_host_pattern("localhost"));
        assert!(!valid_host_pattern("*example.com"));
        assert!(!valid_host_pattern("a..b"));
        assert!(!valid_host_pattern("http://x"));
    }
}
