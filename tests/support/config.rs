//! A typed builder for the proxy's TOML config, so a test says what it configures and the
//! `toml` crate does the quoting:
//!
//! ```ignore
//! Config::new()
//!     .provider(issuer.provider("okta"))
//!     .policy_dir(policy.path())
//!     .route(Route::protected("airflow").host("airflow.test").upstream(&recorder).resources("airflow"))
//! ```
//!
//! Keys without a method of their own are set by dotted path (`.set("upstream.protocol", "http2")`).
//! The `[server]`, `[admin]` and `[audit]` basics are the gateway's to add (see `Gateway::start`).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use toml::{Table, Value};

/// A value a config key can take: strings, numbers, booleans, paths, lists and tables.
pub trait ToToml {
    fn to_toml(self) -> Value;
}

macro_rules! via_into {
    ($($t:ty),*) => {$(
        impl ToToml for $t {
            fn to_toml(self) -> Value {
                Value::from(self)
            }
        }
    )*};
}
via_into!(&str, String, bool, i64, f64, Table);

impl ToToml for &String {
    fn to_toml(self) -> Value {
        Value::from(self.as_str())
    }
}

macro_rules! integer {
    ($($t:ty),*) => {$(
        impl ToToml for $t {
            fn to_toml(self) -> Value {
                Value::Integer(i64::try_from(self).unwrap())
            }
        }
    )*};
}
integer!(i32, u16, u32, u64, usize);

impl ToToml for Value {
    fn to_toml(self) -> Value {
        self
    }
}

impl ToToml for &Path {
    fn to_toml(self) -> Value {
        Value::String(self.display().to_string())
    }
}

impl ToToml for &PathBuf {
    fn to_toml(self) -> Value {
        self.as_path().to_toml()
    }
}

impl ToToml for PathBuf {
    fn to_toml(self) -> Value {
        self.as_path().to_toml()
    }
}

impl<T: ToToml> ToToml for Vec<T> {
    fn to_toml(self) -> Value {
        Value::Array(self.into_iter().map(ToToml::to_toml).collect())
    }
}

impl<T: ToToml, const N: usize> ToToml for [T; N] {
    fn to_toml(self) -> Value {
        Value::Array(self.into_iter().map(ToToml::to_toml).collect())
    }
}

impl<T: ToToml + Clone> ToToml for &[T] {
    fn to_toml(self) -> Value {
        Value::Array(self.iter().cloned().map(ToToml::to_toml).collect())
    }
}

/// What a route forwards to: a URL, an address (`http://ADDR`), or a test server.
pub trait UpstreamUrl {
    fn upstream_url(&self) -> String;
}

impl UpstreamUrl for &str {
    fn upstream_url(&self) -> String {
        self.to_string()
    }
}

impl UpstreamUrl for String {
    fn upstream_url(&self) -> String {
        self.clone()
    }
}

impl UpstreamUrl for &String {
    fn upstream_url(&self) -> String {
        self.to_string()
    }
}

impl UpstreamUrl for SocketAddr {
    fn upstream_url(&self) -> String {
        format!("http://{self}")
    }
}

impl UpstreamUrl for &super::Recorder {
    fn upstream_url(&self) -> String {
        self.url()
    }
}

impl UpstreamUrl for &super::serve::Server {
    fn upstream_url(&self) -> String {
        self.url()
    }
}

/// Sets `value` at `path` (table names, then the key) below `table`, making the tables on the way.
fn set_path(table: &mut Table, path: &[&str], value: Value) {
    let (key, tables) = path.split_last().expect("an empty key path");
    let mut at = table;
    for name in tables {
        at = match at
            .entry((*name).to_string())
            .or_insert_with(|| Value::Table(Table::new()))
        {
            Value::Table(t) => t,
            other => panic!("{name} is not a table: {other}"),
        };
    }
    at.insert((*key).to_string(), value);
}

/// Merges `from` into `into`: tables key by key, anything else replaced.
pub fn merge(into: &mut Table, from: Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(Value::Table(mine)), Value::Table(theirs)) => merge(mine, theirs),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// A whole config (or the part of one a test adds to the gateway's basics).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config(Table);

impl Config {
    pub fn new() -> Config {
        Config::default()
    }

    pub fn route(self, route: Route) -> Config {
        self.push("routes", route.0)
    }

    pub fn provider(self, provider: Provider) -> Config {
        self.push("identity_providers", provider.0)
    }

    fn push(mut self, array: &str, table: Table) -> Config {
        match self
            .0
            .entry(array.to_string())
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            Value::Array(items) => items.push(Value::Table(table)),
            other => panic!("{array} is not an array: {other}"),
        }
        self
    }

    /// Sets a key by its dotted path, e.g. `"server.strip_request_headers"`, `"policy.watch"`.
    pub fn set(self, dotted: &str, value: impl ToToml) -> Config {
        let path: Vec<&str> = dotted.split('.').collect();
        self.set_path(&path, value)
    }

    /// Sets a key by its path, for keys that hold dots themselves
    /// (`["audit", "header_attributes", "cicd.pipeline.run.id"]`).
    pub fn set_path(mut self, path: &[&str], value: impl ToToml) -> Config {
        set_path(&mut self.0, path, value.to_toml());
        self
    }

    /// `[server]` keys.
    pub fn server(self, key: &str, value: impl ToToml) -> Config {
        self.set_path(&["server", key], value)
    }

    /// `[policy] dir`.
    pub fn policy_dir(self, dir: &Path) -> Config {
        self.set("policy.dir", dir)
    }

    /// `[tokens]`: the proxy signs assertions as `issuer` with keys kept in `key_dir`.
    pub fn tokens(self, issuer: &str, key_dir: &Path) -> Config {
        self.set("tokens.issuer", issuer).set("tokens.key_dir", key_dir)
    }

    /// `[audit.otlp]` exporting to `endpoint` (2 s timeout), spooling to `spool`.
    pub fn otlp(self, endpoint: &str, spool: &Path) -> Config {
        self.set("audit.otlp.endpoint", endpoint)
            .set("audit.otlp.timeout", "2s")
            .set("audit.spool.dir", spool)
    }

    /// Adds every key of `other`, tables merged key by key.
    pub fn merge(mut self, other: impl Into<Config>) -> Config {
        merge(&mut self.0, other.into().0);
        self
    }

    pub fn table(&self) -> &Table {
        &self.0
    }

    pub fn into_table(self) -> Table {
        self.0
    }

    /// The config as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string(&self.0).unwrap()
    }

    /// Writes the config as TOML to `path`, for the binary and its commands.
    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.to_toml()).unwrap();
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_toml())
    }
}

impl From<&Config> for Config {
    fn from(config: &Config) -> Config {
        config.clone()
    }
}

/// One `[[routes]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Route(Table);

impl Route {
    /// A route with the default access (protected).
    pub fn new(name: &str) -> Route {
        let mut table = Table::new();
        table.insert("name".into(), name.into());
        Route(table)
    }

    pub fn public(name: &str) -> Route {
        Route::new(name).set("access", "public")
    }

    pub fn authenticated(name: &str) -> Route {
        Route::new(name).set("access", "authenticated")
    }

    pub fn protected(name: &str) -> Route {
        Route::new(name).set("access", "protected")
    }

    pub fn host(self, host: &str) -> Route {
        self.set("hosts", [host])
    }

    pub fn hosts<const N: usize>(self, hosts: [&str; N]) -> Route {
        self.set("hosts", hosts)
    }

    pub fn upstream(self, upstream: impl UpstreamUrl) -> Route {
        self.set("upstream.url", upstream.upstream_url())
    }

    /// `identity_providers`: whose callers the route accepts.
    pub fn providers<const N: usize>(self, names: [&str; N]) -> Route {
        self.set("identity_providers", names)
    }

    /// `resources`: the template that says what each request acts on.
    pub fn resources(self, template: &str) -> Route {
        self.set("resources", template)
    }

    /// Sets a key of the route by its dotted path, e.g. `"upstream.protocol"`, `"assertion.audience"`.
    pub fn set(mut self, dotted: &str, value: impl ToToml) -> Route {
        let path: Vec<&str> = dotted.split('.').collect();
        set_path(&mut self.0, &path, value.to_toml());
        self
    }
}

/// One `[[identity_providers]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Provider(Table);

impl Provider {
    pub fn new(name: &str, issuer: &str) -> Provider {
        let mut table = Table::new();
        table.insert("name".into(), name.into());
        table.insert("issuer".into(), issuer.into());
        Provider(table)
    }

    pub fn name(&self) -> String {
        self.0["name"].as_str().unwrap_or_default().to_string()
    }

    pub fn preset(self, preset: &str) -> Provider {
        self.set("preset", preset)
    }

    pub fn audiences<const N: usize>(self, audiences: [&str; N]) -> Provider {
        self.set("audiences", audiences)
    }

    /// Sets a key of the provider by its dotted path, e.g. `"browser.client_id"`.
    pub fn set(mut self, dotted: &str, value: impl ToToml) -> Provider {
        let path: Vec<&str> = dotted.split('.').collect();
        set_path(&mut self.0, &path, value.to_toml());
        self
    }
}
