//! The configuration: one typed tree read from TOML.
//!
//! Loading is a few steps, and every one reports [`Problem`]s that name the key path and a fix, so
//! `check-config` can print all of them at once. [`parse`] reads the text (`read.rs`): every
//! unknown key and every value that does not fit its key, not only the first, each with the
//! closest key or value that was probably meant. Relative paths are then taken from the config
//! file's directory (`paths.rs`), and [`validate`] checks the meaning of the tree without doing
//! any I/O; [`warnings`] says what is allowed but probably not meant. What a type can say is said
//! by the type, so the reader refuses it at its key path and nothing checks it again: durations
//! that must be positive are [`Positive`], counts of at least one are `NonZero*`. Files and
//! secrets named by the config (certificates, keys, HMAC secrets) are read later, by `app`, which
//! checks what only their contents can tell; [`check_secrets`] only looks whether they are there.

pub mod claims;
mod paths;
mod presets;
mod read;
mod secrets;
pub mod templates;
mod validate;

use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

pub use paths::{base_dir, resolve_paths};
pub use presets::{ResolvedProvider, ServiceWhen};
pub use read::closest;
pub use secrets::{check_secrets, parse_key};

/// A duration longer than zero. A zero is refused while the file is read, at its key path, so
/// nothing after parsing checks it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Positive(Duration);

impl Positive {
    /// `None` for zero.
    pub const fn new(duration: Duration) -> Option<Positive> {
        if duration.is_zero() {
            None
        } else {
            Some(Positive(duration))
        }
    }

    pub const fn secs(secs: NonZeroU64) -> Positive {
        Positive(Duration::from_secs(secs.get()))
    }

    pub const fn get(self) -> Duration {
        self.0
    }
}

impl std::ops::Deref for Positive {
    type Target = Duration;
    fn deref(&self) -> &Duration {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Positive {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let duration: Duration = humantime_serde::deserialize(de)?;
        Positive::new(duration).ok_or_else(|| {
            serde::de::Error::custom("must be positive, e.g. \"30s\" (zero would never let anything through)")
        })
    }
}

/// A positive default of `N` seconds: a zero does not compile.
const fn secs<const N: u64>() -> Positive {
    const { assert!(N > 0, "a positive default is zero") };
    Positive(Duration::from_secs(N))
}

/// A count default of at least one: a zero does not compile.
const fn at_least_one<const N: usize>() -> NonZeroUsize {
    const { assert!(N > 0, "a count default is zero") };
    match NonZeroUsize::new(N) {
        Some(n) => n,
        None => NonZeroUsize::MIN,
    }
}

/// A count default of at least one: a zero does not compile.
const fn at_least_one_u64<const N: u64>() -> NonZeroU64 {
    const { assert!(N > 0, "a count default is zero") };
    match NonZeroU64::new(N) {
        Some(n) => n,
        None => NonZeroU64::MIN,
    }
}
pub use validate::{validate, warnings};

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(default)]
pub struct Config {
    /// Tokio runtime settings.
    pub runtime: Runtime,
    /// How the proxy's own log lines are written (not the audit trail).
    pub log: Log,
    /// Downstream listeners, their limits and whom to trust.
    pub server: Server,
    /// The separate admin listener (`/healthz`, `/readyz`, `/metrics`).
    pub admin: Admin,
    /// Where audit events go until an OTLP exporter is configured.
    pub audit: Audit,
    /// OpenID issuers whose tokens are accepted on the routes that name them.
    pub identity_providers: Vec<IdentityProvider>,
    /// Browser sessions: lifetimes and refresh.
    pub sessions: Sessions,
    /// Routes, matched by host and path prefix. A request no route matches gets 404.
    pub routes: Vec<Route>,
    /// The Casbin policy `protected` routes are checked against.
    pub policy: Policy,
    /// Resource templates added to (or replacing) the built-in ones, by name.
    pub resource_templates: std::collections::BTreeMap<String, templates::TemplateDef>,
    /// The proxy as an issuer: the signing keys of identity assertions.
    pub tokens: Tokens,
}

/// Signing keys for the identity assertions routes send upstream (`[routes.assertion]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct Tokens {
    /// The `iss` of every assertion, an https URL (http for loopback tests). Upstreams find the
    /// keys at `<issuer>/.well-known/openid-configuration` and `/.well-known/jwks.json`, served on
    /// the proxy listeners for the issuer's host and on the admin listener. Required with
    /// `[routes.assertion]`.
    pub issuer: Option<String>,
    /// Where the key ring is kept: mode 0700, refused at start-up if group or others may read it.
    /// Required with `[routes.assertion]`.
    pub key_dir: Option<PathBuf>,
    /// `ES256` (default) or `EdDSA` (Ed25519).
    pub algorithm: SigningAlgorithm,
    /// A new signing key after this long; the retired one stays published until every
    /// assertion it signed has expired. Default `24h`.
    #[serde(with = "humantime_serde")]
    pub rotate_every: Duration,
    /// How long before it signs the next key is published, so that upstreams that fetch the
    /// JWKS seldom (Airflow: hourly) know it in time; at most half of `rotate_every`.
    /// Default `2h`.
    #[serde(with = "humantime_serde")]
    pub publish_ahead: Duration,
    /// With `[sessions] store = "redis"`: how long the public keys this replica publishes in
    /// Redis stay there after its last refresh (it refreshes them every quarter of this), so
    /// that every replica's JWKS serves them. A replica that stops is trusted that much longer:
    /// the assertions it signed last still verify. Default `16m` (the longest assertion lifetime,
    /// 15 minutes, plus a minute for clocks); at least `1s`.
    #[serde(with = "humantime_serde")]
    pub shared_keys_expiry: Duration,
}

impl Default for Tokens {
    fn default() -> Self {
        Tokens {
            issuer: None,
            key_dir: None,
            algorithm: SigningAlgorithm::Es256,
            rotate_every: Duration::from_secs(24 * 3600),
            publish_ahead: Duration::from_secs(2 * 3600),
            shared_keys_expiry: MAX_ASSERTION_LIFETIME + Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum SigningAlgorithm {
    #[serde(rename = "ES256")]
    Es256,
    #[serde(rename = "EdDSA")]
    EdDsa,
}

impl SigningAlgorithm {
    pub const fn as_str(self) -> &'static str {
        match self {
            SigningAlgorithm::Es256 => "ES256",
            SigningAlgorithm::EdDsa => "EdDSA",
        }
    }
}

/// The longest an assertion may live.
pub const MAX_ASSERTION_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// A signed identity assertion on every request a route forwards (authenticated and protected
/// routes).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct Assertion {
    /// The `aud` claim: what this upstream checks. Required.
    pub audience: String,
    /// The request header carrying it. Default `X-Portcullis-Assertion`. `Authorization` sends
    /// it as `Authorization: Bearer <assertion>`, in place of whatever the client sent there
    /// (for upstreams that read only that header, such as Airflow 3).
    pub header: String,
    /// `exp - iat`. Default `60s`, at most `15m`. Cached per caller and route, minted again when
    /// less than a tenth of it is left.
    #[serde(with = "humantime_serde")]
    pub lifetime: Duration,
    /// Also send `X-Portcullis-User`, `X-Portcullis-Email` and `X-Portcullis-Groups` (plain, for
    /// upstreams that cannot verify a JWT; anything the client sent by those names is removed
    /// first). Default false.
    pub identity_headers: bool,
    /// Claims of this route's own, added to every assertion it sends (an upstream's role for
    /// the callers the proxy lets through: Airflow's `role = "ADMIN"`). The standard and
    /// Portcullis claims cannot be set here. Default none.
    pub claims: std::collections::BTreeMap<String, String>,
    /// A JWKS file of public keys the upstream signs its own tokens with, served beside the
    /// proxy's keys at `<issuer>/.well-known/jwks/<route name>.json`, for an upstream that checks
    /// every token against one JWKS URL (Airflow 3's `[api_auth] trusted_jwks_url`, which also
    /// verifies the task tokens Airflow signs itself). Only that route's JWKS carries them: other
    /// upstreams never trust them. Default none.
    pub upstream_jwks: Option<PathBuf>,
}

/// The public keys of a JWKS file (`[routes.assertion] upstream_jwks`): each with a `kid`, none
/// holding private or symmetric key material.
pub fn read_public_jwks(path: &Path) -> Result<Vec<serde_json::Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
    let keys = doc
        .get("keys")
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| format!("{}: not a JWKS (no \"keys\" list)", path.display()))?;
    for (i, key) in keys.iter().enumerate() {
        let Some(key) = key.as_object() else {
            return Err(format!("{}: keys[{i}] is not an object", path.display()));
        };
        // RSA and EC private parts, and symmetric keys (`k`): never published.
        if let Some(private) = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"]
            .iter()
            .find(|m| key.contains_key(**m))
        {
            return Err(format!(
                "{}: keys[{i}] holds {private:?}, private or secret key material",
                path.display()
            ));
        }
        if !key.get("kid").is_some_and(serde_json::Value::is_string) {
            return Err(format!("{}: keys[{i}] has no \"kid\"", path.display()));
        }
    }
    Ok(keys.clone())
}

/// Claims the proxy sets in every assertion, which `[routes.assertion] claims` may not name.
pub const ASSERTION_CLAIMS: [&str; 14] = [
    "iss",
    "aud",
    "sub",
    "exp",
    "iat",
    "nbf",
    "jti",
    "provider",
    "email",
    "name",
    "groups",
    "auth_method",
    "principal_kind",
    "idp",
];

impl Default for Assertion {
    fn default() -> Self {
        Assertion {
            audience: String::new(),
            header: "X-Portcullis-Assertion".into(),
            lifetime: Duration::from_secs(60),
            identity_headers: false,
            claims: std::collections::BTreeMap::new(),
            upstream_jwks: None,
        }
    }
}

impl Config {
    /// Whether a route asks the policy (only then is `[policy]` read).
    pub fn needs_policy(&self) -> bool {
        self.routes.iter().any(|r| r.access == Access::Protected)
    }
}

/// Where the policy lives and how it is enforced.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct Policy {
    /// Directory with `model.conf`, `*.csv` rule files and `tests/*.toml` decision tables.
    /// Default `policies`; like every relative path in the file, taken from the config file's
    /// directory. Read only when a route is `protected`.
    pub dir: PathBuf,
    /// Reload when a file in `dir` (or `shadow_dir`) changes. Default true.
    pub watch: bool,
    /// Run the decision tables before a policy goes into force, at start and on every reload; a
    /// failing table keeps the old policy. Default true.
    pub run_tests: bool,
    /// A second policy evaluated beside the enforced one; disagreements are recorded in the audit
    /// event and a metric, never enforced. Default none.
    pub shadow_dir: Option<PathBuf>,
    /// Decisions cached per policy version, entries. Default 100000.
    pub cache_capacity: NonZeroU64,
    /// Tell a refused caller which permission was missing (domain, action, object). Default false:
    /// the 403 names only the request id.
    pub show_missing_permission: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            dir: PathBuf::from("policies"),
            watch: true,
            run_tests: true,
            shadow_dir: None,
            cache_capacity: at_least_one_u64::<100_000>(),
            show_missing_permission: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(default)]
pub struct Runtime {
    /// Number of Tokio worker threads; 0 means one per CPU core. Default 0.
    pub worker_threads: usize,
}

/// The proxy's own log on stderr (not the audit trail, which has its own sink). `RUST_LOG`
/// chooses which lines are written; this chooses how.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(default)]
pub struct Log {
    /// `text` (default): one readable line per event, coloured only when stderr is a terminal.
    /// `json`: one JSON object per line, for log collectors.
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct Server {
    /// Plain HTTP listener address (`host:port`). Default `127.0.0.1:8080`; `""` disables it.
    pub http: String,
    /// HTTPS listener address; needs `server.tls`. Default: none.
    pub https: Option<String>,
    /// Certificate and key for the HTTPS listener, reloaded when the files change.
    pub tls: Option<Tls>,
    /// Connection and header limits.
    pub limits: Limits,
    /// Peers whose `X-Forwarded-*`, `Forwarded` and `X-Request-Id` headers are believed, as CIDRs.
    /// Default: none (every forwarding header from the client is replaced).
    #[serde(deserialize_with = "cidrs")]
    pub trusted_proxies: Vec<IpNet>,
    /// Time in-flight requests get to finish after SIGTERM/SIGINT. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// More request headers no upstream may receive from a client, beside the identity-header
    /// families Portcullis always strips: names, or prefixes ending in `*` (`x-corp-auth-*`);
    /// matched in any case and with `_` or `.` for `-`. Default none.
    pub strip_request_headers: Vec<String>,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            http: "127.0.0.1:8080".into(),
            https: None,
            tls: None,
            limits: Limits::default(),
            trusted_proxies: Vec::new(),
            shutdown_grace: Duration::from_secs(30),
            strip_request_headers: Vec::new(),
        }
    }
}

/// `trusted_proxies`, each entry read on its own: a mistake names its index and what is wrong.
fn cidrs<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Vec<IpNet>, D::Error> {
    struct Cidr(IpNet);
    impl<'de> Deserialize<'de> for Cidr {
        fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
            let text = String::deserialize(de)?;
            parse_cidr(&text).map(Cidr).map_err(serde::de::Error::custom)
        }
    }
    Ok(Vec::<Cidr>::deserialize(de)?.into_iter().map(|c| c.0).collect())
}

/// A network as `address/prefix`; the error says which half is wrong and how.
fn parse_cidr(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net);
    }
    let (addr, prefix) = text.split_once('/').unwrap_or((text, ""));
    let Ok(addr) = addr.parse::<IpAddr>() else {
        return Err(format!("{addr:?} is not an IP address"));
    };
    let (family, longest) = if addr.is_ipv4() {
        ("IPv4", 32)
    } else {
        ("IPv6", 128)
    };
    match prefix.parse::<u32>() {
        _ if prefix.is_empty() => Err(format!(
            "{text:?} has no prefix length (the address alone is \"{addr}/{longest}\")"
        )),
        Ok(bits) if bits > longest => Err(format!(
            "{text:?}: the prefix /{bits} is too long, an {family} network has at most /{longest}"
        )),
        _ => Err(format!("{text:?}: {prefix:?} is not a prefix length")),
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Tls {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Connections served at once; further ones wait in the kernel backlog. Default 10000.
    pub max_connections: NonZeroUsize,
    /// Largest request head (request line and headers), bytes. Default 65536; at least 8192.
    pub max_header_bytes: usize,
    /// Most header fields in one request. Default 100.
    pub max_headers: NonZeroUsize,
    /// A client must send its whole request head within this time. Default `10s`.
    pub header_read_timeout: Positive,
    /// A connection with no bytes moving, or with no request served, begun or answered, is
    /// closed (gracefully) after this. Default `60s`.
    pub idle_timeout: Positive,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: at_least_one::<10_000>(),
            max_header_bytes: 64 * 1024,
            max_headers: at_least_one::<100>(),
            header_read_timeout: secs::<10>(),
            idle_timeout: secs::<60>(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct Admin {
    /// Admin listener address. Default `127.0.0.1:9090`; `""` disables it.
    pub listen: String,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            listen: "127.0.0.1:9090".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct Audit {
    /// JSON-lines sink for audit records when no `[audit.otlp]` exporter is configured: a file
    /// path, or `-` for standard output. Default `-`.
    pub path: String,
    /// The OTLP exporter (Lightstep, a local OpenTelemetry Collector, any OTLP backend). Default
    /// none: records go to `path`.
    pub otlp: Option<Otlp>,
    /// Where records wait on disk while the collector is slow or down (needed with `otlp`).
    pub spool: AuditSpool,
    /// Records held in memory for the exporter before they go to the spool. Default 16384.
    pub queue_size: usize,
    /// `service.name` on the exported resource. Default `portcullis`.
    pub service_name: String,
    /// `deployment.environment.name` on the exported resource (`production`, `staging`). Default none.
    pub environment: Option<String>,
    /// Workflow attributes taken from request headers: attribute name → header name, e.g.
    /// `"cicd.pipeline.run.id" = "X-Pipeline-Run"`. A resource template's value wins. Values are
    /// capped at 256 characters. Default none.
    pub header_attributes: std::collections::BTreeMap<String, String>,
}

impl Default for Audit {
    fn default() -> Self {
        Audit {
            path: "-".into(),
            otlp: None,
            spool: AuditSpool::default(),
            queue_size: 16_384,
            service_name: "portcullis".into(),
            environment: None,
            header_attributes: std::collections::BTreeMap::new(),
        }
    }
}

/// Presets for well-known OTLP endpoints; every field set explicitly overrides the preset.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OtlpPreset {
    /// ServiceNow Cloud Observability (Lightstep), US: `https://ingest.lightstep.com:443`, gRPC,
    /// header `lightstep-access-token` from `LS_ACCESS_TOKEN`.
    Lightstep,
    /// The same in the EU: `https://ingest.eu.lightstep.com:443`.
    LightstepEu,
    /// A local OpenTelemetry Collector: `http://127.0.0.1:4317` (gRPC) or
    /// `http://127.0.0.1:4318/v1/traces` (HTTP).
    Collector,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OtlpProtocol {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP with protobuf bodies, to the full URL in `endpoint`.
    HttpProtobuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct Otlp {
    pub preset: Option<OtlpPreset>,
    /// Default `grpc` (or the preset's).
    pub protocol: Option<OtlpProtocol>,
    /// gRPC: `scheme://host:port`; HTTP: the full URL (`…/v1/traces`). `https` uses TLS with the
    /// system roots, or `ca`. Required without a preset.
    pub endpoint: Option<String>,
    /// PEM CA bundle to trust instead of the system roots.
    pub ca: Option<PathBuf>,
    /// Extra request headers (gRPC metadata), each with a value from the config, env or a file.
    pub headers: Vec<OtlpHeader>,
    /// Lightstep presets: the env variable holding the access token. Default `LS_ACCESS_TOKEN`.
    pub access_token_env: Option<String>,
    /// Lightstep presets: a file holding the access token (instead of the env variable).
    pub access_token_file: Option<PathBuf>,
    /// One export's deadline. Default `10s`.
    pub timeout: Positive,
    /// Spans per export request. Default 1024.
    pub batch_size: usize,
}

impl Default for Otlp {
    fn default() -> Self {
        Otlp {
            preset: None,
            protocol: None,
            endpoint: None,
            ca: None,
            headers: Vec::new(),
            access_token_env: None,
            access_token_file: None,
            timeout: secs::<10>(),
            batch_size: 1024,
        }
    }
}

/// A header sent with every export. Exactly one of `value`, `value_env`, `value_file`.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(default)]
pub struct OtlpHeader {
    pub name: String,
    /// A value that is not a secret.
    pub value: Option<String>,
    /// An env variable holding the value (secrets).
    pub value_env: Option<String>,
    /// A file holding the value (secrets).
    pub value_file: Option<PathBuf>,
}

impl Otlp {
    pub fn resolved_protocol(&self) -> OtlpProtocol {
        self.protocol.unwrap_or(OtlpProtocol::Grpc)
    }

    /// The endpoint, from the config or the preset.
    pub fn resolved_endpoint(&self) -> Option<String> {
        if let Some(e) = &self.endpoint {
            return Some(e.clone());
        }
        let http = self.resolved_protocol() == OtlpProtocol::HttpProtobuf;
        Some(
            match (self.preset?, http) {
                (OtlpPreset::Lightstep, false) => "https://ingest.lightstep.com:443",
                (OtlpPreset::Lightstep, true) => "https://ingest.lightstep.com/traces/otlp/v0.9",
                (OtlpPreset::LightstepEu, false) => "https://ingest.eu.lightstep.com:443",
                (OtlpPreset::LightstepEu, true) => "https://ingest.eu.lightstep.com/traces/otlp/v0.9",
                (OtlpPreset::Collector, false) => "http://127.0.0.1:4317",
                (OtlpPreset::Collector, true) => "http://127.0.0.1:4318/v1/traces",
            }
            .to_string(),
        )
    }

    /// The headers, with a Lightstep preset's access token added unless set explicitly.
    pub fn resolved_headers(&self) -> Vec<OtlpHeader> {
        let mut headers = self.headers.clone();
        let lightstep = matches!(self.preset, Some(OtlpPreset::Lightstep | OtlpPreset::LightstepEu));
        if lightstep
            && !headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case("lightstep-access-token"))
        {
            headers.push(OtlpHeader {
                name: "lightstep-access-token".into(),
                value: None,
                value_env: match &self.access_token_file {
                    Some(_) => None,
                    None => Some(
                        self.access_token_env
                            .clone()
                            .unwrap_or_else(|| "LS_ACCESS_TOKEN".into()),
                    ),
                },
                value_file: self.access_token_file.clone(),
            });
        }
        headers
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct AuditSpool {
    /// A directory on persistent storage, created with mode 0700 and locked while in use.
    /// Required with `[audit.otlp]`.
    pub dir: Option<PathBuf>,
    /// Most bytes on disk. Default 1073741824 (1 GiB); at least 1048576.
    pub max_bytes: u64,
    /// What happens when the spool is full: `fail_closed` (new requests get 503
    /// `audit_unavailable` until it drains) or `fail_open` (serve, count the dropped records,
    /// raise `portcullis_audit_spool_full`). Default `fail_closed`.
    pub when_full: WhenFull,
}

impl Default for AuditSpool {
    fn default() -> Self {
        AuditSpool {
            dir: None,
            max_bytes: 1 << 30,
            when_full: WhenFull::FailClosed,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    FailClosed,
    FailOpen,
}

/// Attributes `audit.header_attributes` may fill: the workflow ones, never the proxy's own.
pub const WORKFLOW_ATTRIBUTES: [&str; 9] = [
    "cicd.pipeline.name",
    "cicd.pipeline.run.id",
    "cicd.pipeline.task.name",
    "cicd.pipeline.task.run.id",
    "vcs.repository.url.full",
    "vcs.ref.head.name",
    "vcs.ref.head.revision",
    "deployment.id",
    "deployment.environment.name",
];

/// Whether a route needs a caller identity.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Anyone may pass; still audited.
    Public,
    /// Any caller the route's identity providers vouch for may pass, without a policy check
    /// (what oauth2-proxy does). Choose it on purpose: `protected` is the default.
    Authenticated,
    /// Callers must authenticate and be allowed by the policy in the route's domain.
    Protected,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct Route {
    /// Unique name; appears in metrics and audit events.
    pub name: String,
    /// Hosts this route serves: exact names or `*.example.com` (any name below example.com).
    pub hosts: Vec<String>,
    /// Path prefix, matched on whole segments against the canonical path. Default `/`.
    pub path_prefix: String,
    /// `public`, `authenticated` or `protected`. Default `protected`: a route is closed unless
    /// opened on purpose.
    pub access: Access,
    /// Where allowed requests go.
    pub upstream: Upstream,
    /// Time from sending the request to receiving the upstream's response head. Default `30s`.
    pub timeout: Positive,
    /// Largest request body, bytes; larger requests get 413. Default 10485760 (10 MiB); 0 = no limit.
    pub max_body_bytes: u64,
    /// Send the client's `Host` to the upstream instead of the upstream's own authority. Default false.
    pub preserve_host: bool,
    /// Largest request body the policy reads, bytes, for operations whose template names its
    /// objects in the body (Airflow's bulk calls); a larger one gets 413. Default 1048576 (1 MiB).
    pub inspect_body_bytes: u64,
    /// Largest response the template's `filter` reads to remove the items the caller may not
    /// see, bytes; a larger one is not passed on (502). Default 8388608 (8 MiB).
    pub filter_response_bytes: u64,
    /// Protocols a client may switch to with `Connection: upgrade` once its request is allowed
    /// (`websocket`, `spdy/3.1` for `kubectl exec`, …). WebSocket needs a valid handshake;
    /// `h2c` is never accepted. An `Upgrade` for anything else is removed and the request
    /// forwarded as a plain one. Default `["websocket"]`.
    pub upgrades: Vec<String>,
    /// Names of the identity providers whose bearer tokens this route accepts (protected routes).
    /// Empty on a protected route: every request is refused with 401.
    pub identity_providers: Vec<String>,
    /// Cross-origin requests from browsers; absent: preflights are treated like any request.
    pub cors: Option<Cors>,
    /// The Casbin domain of this route's requests (`protected` routes). Default: the route's name.
    pub policy_domain: Option<String>,
    /// A resource template (`airflow`, `tekton`, `gitlab`, `conductor`, `luigi` or one of
    /// `[resource_templates]`) that names objects and verbs. Default none: the object is the
    /// canonical path and the action the HTTP method.
    pub resources: Option<String>,
    /// A signed identity assertion for the upstream. Default none.
    pub assertion: Option<Assertion>,
    /// A short-lived credential the proxy obtains for the upstream; it replaces any
    /// `Authorization` the client sent, on the upstream side only. Default none.
    pub upstream_credentials: Option<UpstreamCredentials>,
}

/// How the broker authenticates to the token endpoint.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    #[default]
    ClientSecretBasic,
    ClientSecretPost,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// OAuth 2.0 client credentials (RFC 6749 4.4): one token for the route.
    #[default]
    ClientCredentials,
    /// OAuth 2.0 token exchange (RFC 8693): the caller's token for one scoped to the upstream.
    TokenExchange,
}

impl CredentialKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            CredentialKind::ClientCredentials => "client_credentials",
            CredentialKind::TokenExchange => "token_exchange",
        }
    }
}

/// What the caller's token is, to the token-exchange endpoint (`subject_token_type`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SubjectTokenType {
    /// `urn:ietf:params:oauth:token-type:access_token`
    #[default]
    AccessToken,
    /// `urn:ietf:params:oauth:token-type:jwt`
    Jwt,
}

impl SubjectTokenType {
    pub const fn urn(self) -> &'static str {
        match self {
            SubjectTokenType::AccessToken => "urn:ietf:params:oauth:token-type:access_token",
            SubjectTokenType::Jwt => "urn:ietf:params:oauth:token-type:jwt",
        }
    }
}

/// A brokered upstream credential (`[routes.upstream_credentials]`).
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(default)]
pub struct UpstreamCredentials {
    /// `client_credentials` or `token_exchange`. Default `client_credentials`.
    pub kind: CredentialKind,
    /// The identity provider's issuer; its token endpoint comes from discovery. Required.
    pub issuer: String,
    /// The token endpoint, instead of discovery.
    pub token_url: Option<String>,
    /// PEM CA bundle for the token endpoint, instead of the system roots.
    pub ca: Option<PathBuf>,
    pub client_id: String,
    /// Env variable with the client secret.
    pub client_secret_env: Option<String>,
    /// File with the client secret.
    pub client_secret_file: Option<PathBuf>,
    /// `client_secret_basic` (default) or `client_secret_post`.
    pub auth_method: ClientAuth,
    pub scopes: Vec<String>,
    /// RFC 8707 `resource` (the upstream's audience at providers that support it).
    pub resource: Option<String>,
    /// Token exchange: the RFC 8693 `audience` asked for (the upstream's logical name).
    pub audience: Option<String>,
    /// Token exchange: what the caller's token is called at the endpoint, `access_token`
    /// (default) or `jwt`.
    pub subject_token_type: SubjectTokenType,
    /// Token exchange: the issuers whose callers' tokens may be sent to this endpoint. Default:
    /// `issuer` alone, so a caller's token never goes to a party that did not issue it.
    pub subject_issuers: Vec<String>,
    /// Fetch a new token this long before the current one expires (at least a tenth of its
    /// lifetime). Default `30s`.
    #[serde(with = "humantime_serde")]
    pub refresh_before: Duration,
}

impl UpstreamCredentials {
    /// Token exchange: the issuers whose callers' tokens may go to the endpoint (`subject_issuers`,
    /// else `issuer`), without a trailing slash.
    pub fn subject_issuers(&self) -> Vec<&str> {
        let named = if self.subject_issuers.is_empty() {
            std::slice::from_ref(&self.issuer)
        } else {
            &self.subject_issuers[..]
        };
        named.iter().map(|i| i.trim_end_matches('/')).collect()
    }
}

impl AsRef<Route> for Route {
    fn as_ref(&self) -> &Route {
        self
    }
}

impl Route {
    /// The policy domain: `policy_domain`, else the name.
    pub fn domain(&self) -> &str {
        self.policy_domain.as_deref().unwrap_or(&self.name)
    }
}

impl Default for Route {
    fn default() -> Self {
        Route {
            name: String::new(),
            hosts: Vec::new(),
            path_prefix: "/".into(),
            access: Access::Protected,
            upstream: Upstream::default(),
            timeout: secs::<30>(),
            max_body_bytes: 10 * 1024 * 1024,
            preserve_host: false,
            inspect_body_bytes: 1024 * 1024,
            filter_response_bytes: 8 * 1024 * 1024,
            upgrades: vec!["websocket".into()],
            identity_providers: Vec::new(),
            cors: None,
            policy_domain: None,
            resources: None,
            assertion: None,
            upstream_credentials: None,
        }
    }
}

/// What kind of caller a provider's tokens identify.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    User,
    Service,
    CiJob,
}

/// Which JWTs the bearer path accepts from a provider.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TokenType {
    /// Access tokens only; an ID token is refused (`wrong_token_type`).
    Access,
    /// ID tokens only (CI job tokens such as GitLab's `id_tokens:` and GitHub Actions').
    Id,
    /// Either.
    Any,
}

/// Defaults for well-known issuers; every field set explicitly overrides the preset.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    Okta,
    Cognito,
    AwsIdentityCenter,
    EntraId,
    Google,
    Keycloak,
    GitlabCi,
    GithubActions,
    Kubernetes,
}

/// Where claims are read from; dotted paths reach into nested objects (`realm_access.roles`).
///
/// `subject`, `name` and `client` are claim expressions: a claim path (`sub`), alternatives
/// taken in order (`uid|sub`: the first claim present), or a template that joins several claims
/// (`project:{project_id}:{ref_type}:{ref}`). Template values must be strings, integers or
/// booleans; a missing claim makes the subject missing (the token is refused as malformed).
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(default)]
pub struct ClaimMapping {
    /// The caller's stable, immutable identifier. Default `sub` (each preset names its own,
    /// docs/authentication.md lists them).
    pub subject: Option<String>,
    /// Default `email`. Used only when the token says `email_verified: true` (or the provider
    /// sets `trust_unverified_email`).
    pub email: Option<String>,
    /// A readable name for records and assertions; never a policy subject. Default `name`.
    pub name: Option<String>,
    /// Claim holding the caller's groups (array of strings, or one string). Default `groups`.
    pub groups: Option<String>,
    /// More groups, each a template over the token's claims (`project:{project_id}`); a
    /// template whose claims are missing adds nothing. Default: the preset's.
    pub group_templates: Option<Vec<String>>,
    /// The OAuth client the token was issued to. Default `client_id|azp` (each preset names its own).
    pub client: Option<String>,
}

/// A `bound_claims` value: one accepted value or several; `*` in a value matches any run of
/// characters (`refs/heads/release-*`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum BoundValue {
    One(String),
    Any(Vec<String>),
}

impl BoundValue {
    pub fn values(&self) -> &[String] {
        match self {
            BoundValue::One(v) => std::slice::from_ref(v),
            BoundValue::Any(v) => v,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(default)]
pub struct IdentityProvider {
    /// Unique name that routes refer to.
    pub name: String,
    /// The issuer URL exactly as tokens carry it in `iss`; discovery is fetched from
    /// `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    /// Defaults for a well-known issuer (see docs/authentication.md).
    pub preset: Option<Preset>,
    /// Accepted `aud` values; a token must carry at least one. Required.
    pub audiences: Vec<String>,
    /// Accepted signing algorithms (RS256/384/512, PS256/384/512, ES256/384, EdDSA). Default `["RS256", "ES256"]`.
    pub algorithms: Option<Vec<String>>,
    /// Clock skew allowed on `exp` and `nbf`. Default `30s`, at most `60s`.
    #[serde(with = "humantime_serde::option")]
    pub leeway: Option<Duration>,
    /// `access`, `id` or `any`. Default `access` (presets for CI tokens: `id`).
    pub token_type: Option<TokenType>,
    /// `user`, `service` or `ci_job`. Default: the preset's (CI presets: `ci_job`; Kubernetes:
    /// `service`), else `service` when the token says it is a client's own (its `sub` is the
    /// client; Entra `idtyp: app`; a Keycloak service account's `client_id`), else `user`.
    pub principal_kind: Option<PrincipalKind>,
    /// Claims beyond iss, aud, exp and sub that every token must carry.
    pub required_claims: Vec<String>,
    pub claims: ClaimMapping,
    /// JWKS URL, instead of the one discovery names.
    pub jwks_uri: Option<String>,
    /// PEM CA bundle for the IdP's HTTPS endpoints; default: the system roots.
    pub ca: Option<PathBuf>,
    /// Claim checked against `audiences`. Default `aud` (Cognito access tokens: `client_id`).
    pub audience_claim: Option<String>,
    /// How often the signing keys are refreshed in the background. Default `5m`.
    #[serde(with = "humantime_serde::option")]
    pub jwks_refresh: Option<Duration>,
    /// At most one fetch per this interval for tokens whose `kid` is unknown. Default `30s`.
    #[serde(with = "humantime_serde::option")]
    pub jwks_min_refetch: Option<Duration>,
    /// This proxy's client registration for browser sign-in; absent: bearer tokens only.
    pub browser: Option<BrowserClient>,
    /// Environment variable holding a shared secret for HS256/384/512 tokens (at least 32 bytes).
    pub hmac_secret_env: Option<String>,
    /// File holding that shared secret. HMAC keys are never taken from a JWKS.
    pub hmac_secret_file: Option<PathBuf>,
    /// Claims every token must carry with one of the listed values, checked after the
    /// signature and before any policy (like Vault's `bound_claims`): claim path → value or
    /// list of values, `*` matching any run of characters. A token that does not match is
    /// refused with 403 `claims_not_bound`. Default none.
    pub bound_claims: std::collections::BTreeMap<String, BoundValue>,
    /// Accept the email claim as an identity even when the token does not say
    /// `email_verified: true`. Dangerous: anyone who can set an unverified address at this
    /// provider could pose as its owner. Default false.
    pub trust_unverified_email: bool,
    /// Accept only RFC 9068 access tokens (`typ: at+jwt`). Default false: `typ` absent, `JWT`
    /// or `at+jwt`.
    pub require_at_jwt: bool,
}

/// A confidential (or public, without a secret) OIDC client for the authorization-code flow.
/// Register `https://<each host>/.portcullis/callback` as a redirect URI at the provider, and
/// `https://<each host>/.portcullis/signed_out` as a post-logout redirect URI.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(default)]
pub struct BrowserClient {
    /// The client id registered at the provider. Required.
    pub client_id: String,
    /// Environment variable holding the client secret.
    pub client_secret_env: Option<String>,
    /// File holding the client secret (surrounding whitespace ignored).
    pub client_secret_file: Option<PathBuf>,
    /// Scopes requested at sign-in. Default `["openid", "email", "profile", "offline_access"]`
    /// (`offline_access` asks for a refresh token; drop it for Google, which refuses it).
    pub scopes: Option<Vec<String>>,
    /// Shown on the sign-in page when a route accepts several providers. Default: the name.
    pub display_name: Option<String>,
    /// Accept OpenID Connect Back-Channel Logout from this provider: register
    /// `https://<a host>/.portcullis/backchannel-logout` as the client's
    /// `backchannel_logout_uri` (with `backchannel_logout_session_required`), and a logout at
    /// the provider ends the matching sessions on every replica. Default false.
    pub backchannel_logout: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct Sessions {
    /// A session unused for this long ends. Default `1h`.
    pub idle_timeout: Positive,
    /// A session ends this long after sign-in however much it is used. Default `12h`.
    pub lifetime: Positive,
    /// Most sessions held in memory (the memory store); the least recently used go first.
    /// Default 100000.
    pub max_sessions: NonZeroU64,
    /// The access token is refreshed this long before it expires. Default `60s`.
    #[serde(with = "humantime_serde")]
    pub refresh_before: Duration,
    /// A sign-in must complete within this time. Default `10m`.
    pub login_timeout: Positive,
    /// Where sessions and sign-ins in progress live: `"memory"` (default: in this process, so
    /// a restart signs everyone out and each replica has its own) or `"redis"` (shared by every
    /// replica through `[sessions.redis]`).
    pub store: StoreKind,
    /// The shared store, with `store = "redis"`.
    pub redis: Option<Redis>,
}

/// Which session store `[sessions] store` names.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    #[default]
    Memory,
    Redis,
}

/// Sessions in Redis (or anything speaking its protocol, such as Valkey), encrypted at rest.
/// Secrets (the password, the encryption keys) are read from the environment or a file, never
/// from this file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Redis {
    /// The server, `redis://host:port/db` or `rediss://host:port/db` for TLS; with `cluster`,
    /// any node of the cluster. Or `nodes` (a cluster), or `sentinels` (Redis Sentinel). A user name may be given here (`redis://portcullis@host`),
    /// a password may not: use `password_env` or `password_file`.
    pub url: Option<String>,
    /// The URL names a node of a Redis Cluster; the others are found from it. Default false.
    pub cluster: bool,
    /// Nodes of a Redis Cluster to start from, instead of `url` (implies `cluster`).
    pub nodes: Vec<String>,
    /// Redis Sentinel nodes (`redis://host:26379`, or `rediss://` for TLS to them and to the
    /// master), instead of `url`: the master is asked of them, and again after a failover.
    pub sentinels: Vec<String>,
    /// The name the Sentinels know the master by (`sentinel monitor <name> …`). Required with
    /// `sentinels`.
    pub sentinel_master: Option<String>,
    /// Environment variable holding the Sentinels' own password, when they have one.
    pub sentinel_password_env: Option<String>,
    /// File holding the Sentinels' password.
    pub sentinel_password_file: Option<PathBuf>,
    /// The ACL user, when the URL does not name one. Default: none (the `default` user).
    pub username: Option<String>,
    /// Environment variable holding the password (of `username`, or of the default user).
    pub password_env: Option<String>,
    /// File holding the password (surrounding whitespace ignored).
    pub password_file: Option<PathBuf>,
    /// Every key this proxy writes starts with this, so several deployments can share a Redis.
    /// Default `"portcullis:"`.
    pub key_prefix: String,
    /// Connections kept open to the server (each carries many requests at once). Default 2.
    pub pool_size: NonZeroUsize,
    /// Connecting (TCP, TLS, authentication) gives up after this long. Default `2s`.
    pub connect_timeout: Positive,
    /// A session read or write gives up after this long; the request then gets 503
    /// `session_store_unavailable`. Default `1s`.
    pub command_timeout: Positive,
    /// PEM CA bundle that signs the server's certificate (`rediss://`); default: the system roots.
    pub ca: Option<PathBuf>,
    /// Name checked against the server's certificate and sent as SNI, when the URL's host is
    /// another (an IP address); default: the URL's host. Not with a cluster, whose nodes are
    /// checked against the addresses they announce.
    pub server_name: Option<String>,
    /// PEM client certificate, when the server asks for one (`tls-auth-clients`).
    pub client_cert: Option<PathBuf>,
    /// PEM private key for `client_cert`.
    pub client_key: Option<PathBuf>,
    /// Environment variable holding the key that seals sessions (AES-256-GCM): 32 bytes, as
    /// 64 hex digits or in base64 (`openssl rand -base64 32`). Required, or `encryption_key_file`.
    pub encryption_key_env: Option<String>,
    /// File holding the encryption key, in the same forms.
    pub encryption_key_file: Option<PathBuf>,
    /// The key before the last rotation, accepted for reading only: sessions sealed with it
    /// keep working, and are sealed with the new key when next written.
    pub previous_encryption_key_env: Option<String>,
    /// File holding the previous key.
    pub previous_encryption_key_file: Option<PathBuf>,
}

impl Default for Redis {
    fn default() -> Self {
        Redis {
            url: None,
            cluster: false,
            nodes: Vec::new(),
            sentinels: Vec::new(),
            sentinel_master: None,
            sentinel_password_env: None,
            sentinel_password_file: None,
            username: None,
            password_env: None,
            password_file: None,
            key_prefix: "portcullis:".into(),
            pool_size: at_least_one::<2>(),
            connect_timeout: secs::<2>(),
            command_timeout: secs::<1>(),
            ca: None,
            server_name: None,
            client_cert: None,
            client_key: None,
            encryption_key_env: None,
            encryption_key_file: None,
            previous_encryption_key_env: None,
            previous_encryption_key_file: None,
        }
    }
}

/// A Redis URL as this proxy accepts it: `redis://` or `rediss://`, a host, and nothing that
/// belongs elsewhere (a password, options that turn certificate checks off).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub db: i64,
    pub username: Option<String>,
}

impl RedisUrl {
    /// The URL, or what is wrong with it and how to fix it.
    pub fn parse(text: &str) -> Result<RedisUrl, (String, &'static str)> {
        let example = "write e.g. \"redis://redis.internal:6379/0\" or \"rediss://redis.internal:6380\"";
        let Some(url) = redis::parse_redis_url(text) else {
            return Err((format!("{text:?} is not a Redis URL"), example));
        };
        let tls = match url.scheme() {
            "redis" => false,
            "rediss" => true,
            other => return Err((format!("the scheme {other:?} is not redis or rediss"), example)),
        };
        if url.password().is_some() {
            return Err((
                "carries a password, which must not be in the config file".into(),
                "remove it from the URL and set password_env or password_file",
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err((
                "has a query or fragment (options such as #insecure are not accepted)".into(),
                "remove everything after the path; TLS settings are keys of [sessions.redis]",
            ));
        }
        let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
            return Err((format!("{text:?} names no host"), example));
        };
        let db = match url.path().trim_start_matches('/') {
            "" => 0,
            n => match n.parse::<i64>() {
                Ok(db) if db >= 0 => db,
                _ => {
                    return Err((
                        format!("the path {n:?} is not a database number"),
                        "use a number, e.g. /0",
                    ));
                }
            },
        };
        let username = Some(url.username()).filter(|u| !u.is_empty()).map(|u| {
            percent_encoding::percent_decode_str(u)
                .decode_utf8_lossy()
                .into_owned()
        });
        Ok(RedisUrl {
            tls,
            host: host.trim_start_matches('[').trim_end_matches(']').to_string(),
            port: url.port().unwrap_or(6379),
            db,
            username,
        })
    }
}

impl Redis {
    /// The cluster's starting nodes, or `None` for a single server.
    pub fn cluster_nodes(&self) -> Option<Vec<&str>> {
        if !self.nodes.is_empty() {
            Some(self.nodes.iter().map(String::as_str).collect())
        } else if self.cluster {
            Some(self.url.iter().map(String::as_str).collect())
        } else {
            None
        }
    }

    /// Every URL this store is configured with, by key path.
    pub fn urls(&self) -> Vec<(String, &str)> {
        let url = self
            .url
            .iter()
            .map(|u| ("sessions.redis.url".to_string(), u.as_str()));
        let nodes =
            (self.nodes.iter().enumerate()).map(|(i, u)| (format!("sessions.redis.nodes[{i}]"), u.as_str()));
        let sentinels = (self.sentinels.iter().enumerate())
            .map(|(i, u)| (format!("sessions.redis.sentinels[{i}]"), u.as_str()));
        url.chain(nodes).chain(sentinels).collect()
    }
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            idle_timeout: secs::<3600>(),
            lifetime: secs::<{ 12 * 3600 }>(),
            max_sessions: at_least_one_u64::<100_000>(),
            refresh_before: Duration::from_secs(60),
            login_timeout: secs::<600>(),
            store: StoreKind::Memory,
            redis: None,
        }
    }
}

/// CORS for one route. Preflights from an allowed origin are answered by the proxy before
/// authentication (browsers send them without credentials); other preflights get 403.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct Cors {
    /// Origins allowed to call this route, exactly (`https://ui.example.com`). Required.
    pub allowed_origins: Vec<String>,
    /// Default `["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]`.
    pub allowed_methods: Vec<String>,
    /// Request headers a cross-origin request may send. Default `["authorization", "content-type"]`.
    pub allowed_headers: Vec<String>,
    /// Response headers the calling page may read. Default: none.
    pub expose_headers: Vec<String>,
    /// Let cross-origin requests carry cookies (the session). Default false.
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight answer. Default `10m`.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for Cors {
    fn default() -> Self {
        Cors {
            allowed_origins: Vec::new(),
            allowed_methods: ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
                .map(String::from)
                .to_vec(),
            allowed_headers: vec!["authorization".into(), "content-type".into()],
            expose_headers: Vec::new(),
            allow_credentials: false,
            max_age: Duration::from_secs(600),
        }
    }
}

/// HTTP version spoken to the upstream.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 over `http://`; ALPN (h2, then http/1.1) over `https://`.
    #[default]
    Auto,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only: h2c with prior knowledge over `http://` (gRPC), h2 over `https://`.
    Http2,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(default)]
pub struct Upstream {
    /// `http://host:port` or `https://host:port`, without a path.
    pub url: String,
    /// `auto`, `http1` or `http2`. Default `auto`.
    pub protocol: UpstreamProtocol,
    /// TCP connect timeout. Default `5s`.
    #[serde(with = "humantime_serde::option")]
    pub connect_timeout: Option<Duration>,
    /// PEM CA bundle that signs the upstream's certificate; default: the system roots.
    pub ca: Option<PathBuf>,
    /// Name sent as SNI and checked against the certificate; default: the URL's host.
    pub server_name: Option<String>,
    /// PEM client certificate for mTLS to the upstream (needs `client_key`).
    pub client_cert: Option<PathBuf>,
    /// PEM private key for `client_cert`.
    pub client_key: Option<PathBuf>,
}

impl Upstream {
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout.unwrap_or(Duration::from_secs(5))
    }
}

/// Whether a problem stops the proxy from starting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// `serve` refuses the file.
    Error,
    /// Allowed, and probably not what was meant: reported, never refused.
    Warning,
}

/// One thing wrong with a configuration, with where and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path, e.g. `routes[1].upstream.url`.
    pub path: String,
    pub message: String,
    pub hint: String,
    pub severity: Severity,
    /// The line of the file the key is written on (for a missing key, its table's), when known.
    pub line: Option<usize>,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Problem {
            path: path.into(),
            message: message.into(),
            hint: hint.into(),
            severity: Severity::Error,
            line: None,
        }
    }

    pub fn warning(path: impl Into<String>, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Problem {
            severity: Severity::Warning,
            ..Problem::new(path, message, hint)
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.is_error() {
            f.write_str("warning: ")?;
        }
        write!(f, "{}: {}", self.path, self.message)?;
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        write!(f, " (fix: {})", self.hint)
    }
}

/// Parses TOML text into the typed tree. Every unknown key and every value of the wrong type or
/// form is reported, each with its key path; relative paths are left as written.
pub fn parse(text: &str) -> Result<Config, Vec<Problem>> {
    let read = read::read(text);
    match read.config {
        Some(config) if read.problems.is_empty() => Ok(config),
        _ => Err(read.problems),
    }
}

/// Everything one reading of a config file found.
#[derive(Debug)]
pub struct Report {
    /// The configuration as read, relative paths resolved. `None` when the file cannot be read or
    /// is not TOML; otherwise every value that did not fit is replaced by its default, which is
    /// complete enough for further checks and never for serving while there are errors.
    pub config: Option<Config>,
    /// Errors and warnings, in the order of the file's lines (problems of keys the file does not
    /// write come last).
    pub problems: Vec<Problem>,
    /// Whether `config` is the file as written: no value had to be replaced by its default.
    pub as_written: bool,
}

impl Report {
    pub fn has_errors(&self) -> bool {
        self.problems.iter().any(Problem::is_error)
    }
}

/// Reads, parses and checks a config file, with `more` checks of the parsed configuration that
/// belong to the features reading it (resource templates compile, secrets are there): every
/// problem, warnings included, comes out of one run.
pub fn check(path: &Path, more: impl Fn(&Config) -> Vec<Problem>) -> Report {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            return Report {
                config: None,
                problems: vec![Problem::new(
                    "(file)",
                    format!("cannot read {}: {e}", path.display()),
                    "pass an existing, readable file to --config",
                )],
                as_written: false,
            };
        }
    };
    let read = read::read(&text);
    let mut problems = read.problems;
    let Some(mut config) = read.config else {
        return Report {
            config: None,
            problems,
            as_written: false,
        };
    };
    resolve_paths(&mut config, &base_dir(path));
    let mut meaning = validate(&config);
    meaning.extend(more(&config));
    meaning.extend(warnings(&config));
    // A value that was taken out reads as its default, which these checks may call wrong too.
    meaning.retain(|p| !read::overshadowed_problem(p, &read.dropped));
    read::locate(&text, &mut meaning);
    problems.extend(meaning);
    problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
    Report {
        config: Some(config),
        problems,
        as_written: read.dropped.is_empty(),
    }
}

/// A provider name as `identity_providers[].name` allows it.
pub fn is_provider_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

/// Reads, parses and validates a config file, returning every problem found.
pub fn load(path: &Path) -> Result<Config, Vec<Problem>> {
    load_with(path, |_| Vec::new())
}

/// [`check`] as `serve` needs it: the configuration when nothing stops it from starting (its
/// warnings are [`warnings`] of it), else every problem, warnings included.
pub fn load_with(path: &Path, more: impl Fn(&Config) -> Vec<Problem>) -> Result<Config, Vec<Problem>> {
    let report = check(path, more);
    match report.config {
        Some(config) if !report.has_errors() => Ok(config),
        _ => Err(report.problems),
    }
}

/// Parses an address written in the config.
pub fn socket_addr(s: &str) -> Option<SocketAddr> {
    s.parse().ok()
}
