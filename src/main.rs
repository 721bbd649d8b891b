//! The `portcullis` command: parse the CLI, load the config, run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

mod demo;

// The request path allocates small, short-lived buffers on every request; mimalloc's
// thread-local free lists make that measurably cheaper than glibc's malloc (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("PORTCULLIS_COMMIT"), ")"),
    about = "An identity-aware access proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        /// TOML configuration file (see docs/configuration.md).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a configuration file and print every problem with its key path and a fix, then the
    /// warnings; exit 1 if there is a problem (warnings alone exit 0).
    CheckConfig {
        /// TOML configuration file; relative paths in it are taken from its directory.
        #[arg(long, short)]
        config: PathBuf,
        /// Do not look for the secrets the file names (`*_env` variables, `*_file` files): for
        /// checking a file on another machine than the one that will serve it.
        #[arg(long)]
        offline: bool,
    },
    /// Test, explain and diff the Casbin policy (see docs/policy.md).
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Audit trail tools (see docs/audit.md).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The signing keys of identity assertions (see docs/tokens.md).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Exit 0 if an HTTP GET of URL answers 2xx within 3 s (a container health check that needs
    /// no curl in the image); otherwise say why on stderr (connection refused, timeout, TLS
    /// error, the status) and exit 1.
    Probe {
        /// An http:// or https:// URL (https is verified against the system's trust roots).
        url: String,
    },
    /// End sessions and refuse bearer tokens on every replica within a second: a person's
    /// sessions, a subject (a service, a CI job) everywhere, or every session. Needs the shared
    /// session store (`[sessions] store = "redis"`); see docs/sessions.md.
    #[command(group(clap::ArgGroup::new("what").required(true).args(["session_of", "subject", "all_sessions"])))]
    Revoke {
        /// The configuration every replica runs with (its `[sessions.redis]` is written to).
        #[arg(long, short)]
        config: PathBuf,
        /// End this person's browser sessions: their subject (`sub`, or what the provider's
        /// `claims.subject` makes of it) at the provider. Bearer tokens are left alone.
        #[arg(long, value_name = "USER")]
        session_of: Option<String>,
        /// Refuse this subject everywhere: its browser sessions, and its bearer tokens issued
        /// before now until they would have expired (a stolen CI job or service token).
        #[arg(long)]
        subject: Option<String>,
        /// End every browser session of every provider (a leaked session key, an incident).
        #[arg(long)]
        all_sessions: bool,
        /// The identity provider that vouched for the name (its `name` in the config): needed
        /// when the config has more than one.
        #[arg(long, value_name = "NAME")]
        provider: Option<String>,
        /// The longest the subject's bearer tokens live at its provider: with `--subject` the
        /// entry is kept this long plus the provider's leeway (and at least the session
        /// lifetime), so no token it refuses outlives it.
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = humantime::parse_duration)]
        token_lifetime: std::time::Duration,
    },
    /// The quickstart's demo services, FOR DEMOS ONLY: never put real users or data behind them.
    Demo {
        #[command(subcommand)]
        command: DemoCommand,
    },
}

#[derive(Subcommand)]
enum DemoCommand {
    /// A development OpenID Provider: discovery, JWKS, sign-in with PKCE behind a form listing
    /// demo users, and tokens for demo services and CI jobs. Anyone can sign in as anyone, so it
    /// listens on loopback only. Its page (http://<address>/) lists its issuers, users and
    /// endpoints; examples/quickstart/README.md describes them.
    Idp {
        /// A loopback IP address and port (127.0.0.1:PORT or [::1]:PORT); the issuer is
        /// http://<this address>.
        #[arg(long, default_value = "127.0.0.1:9400")]
        listen: String,
        /// A redirect URI of the demo client `portcullis` (a loopback URL); repeat for several.
        /// Default: the quickstart proxy's callbacks on localhost:8080 and 127.0.0.1:8080.
        #[arg(long = "redirect-uri")]
        redirect_uris: Vec<String>,
        /// The `aud` of access tokens and of CI job tokens that ask for none.
        #[arg(long, default_value = demo::idp::DEFAULT_AUDIENCE)]
        audience: String,
    },
    /// A small Airflow-like API (three DAGs, their runs, a page that calls them) that echoes
    /// anything else back as JSON describing what reached it.
    Upstream {
        /// The address and port to listen on.
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// List the key ring: the active key, the next one published ahead, and the retired ones
    /// still published.
    List {
        /// The configuration whose `tokens.key_dir` holds the ring.
        #[arg(long, short)]
        config: PathBuf,
        /// Print JSON (`{"changes": [...], "keys": [...]}`) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Make a new active key now; the current one retires and stays published until its
    /// assertions expire. A running proxy picks the new key up within a few seconds.
    Rotate {
        /// The configuration whose `tokens.key_dir` holds the ring.
        #[arg(long, short)]
        config: PathBuf,
        /// Print JSON (`{"changes": [...], "keys": [...]}`) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Withdraw a key now (it may have leaked): a new key takes over if it was the active one,
    /// and it leaves the published JWKS at once instead of when its assertions expire. A running
    /// proxy drops the assertions it signed within a few seconds. With the Redis session store,
    /// a key another replica holds is announced revoked through the shared key set instead.
    Revoke {
        /// The configuration whose `tokens.key_dir` holds the ring.
        #[arg(long, short)]
        config: PathBuf,
        /// Print JSON (`{"changes": [...], "keys": [...]}`) instead of a table.
        #[arg(long)]
        json: bool,
        /// The key id, as `portcullis keys list` shows it. Key ids are base64url and may begin
        /// with `-`, which is taken as the id here, not as an option.
        #[arg(allow_hyphen_values = true)]
        kid: String,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Print audit records one line each (when, allow or deny, status, who, what, why) from a
    /// JSON-lines file, or `-` for standard input.
    Show {
        /// A JSON-lines audit file (`audit.path`), or `-` for standard input.
        path: PathBuf,
        /// Keep reading as the file grows, like `tail -f`, until interrupted.
        #[arg(long, short)]
        follow: bool,
    },
    /// Check a JSON-lines export or a spool directory: every instance's sequence numbers without
    /// gaps and its hash chain unbroken. Exit 0 if intact, 1 if not, 2 if unreadable.
    Verify {
        /// A JSON-lines audit file or a spool directory (`audit.spool.dir`).
        path: PathBuf,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Run the decision tables in DIR/tests/*.toml; exit 1 if one fails, 2 if the policy does not load.
    Test {
        /// The policy directory (model.conf, *.csv and tests/*.toml).
        #[arg(long, default_value = "policies")]
        dir: PathBuf,
        /// Read custom resource templates from this configuration.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print the decision for one request, the rule that made it (file:line) or why none did;
    /// exit 0 on allow, 1 on deny.
    Explain {
        /// The caller, with the identity provider that vouched for it: user:<provider>/<sub or
        /// verified email>, svc:<provider>/<client>, ci:<provider>/<job subject>.
        #[arg(long = "as")]
        subject: String,
        /// The caller's groups as its provider sends them, comma-separated, without
        /// `group:<provider>/` (they are that provider's groups).
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// The request's HTTP method.
        #[arg(long, default_value = "GET")]
        method: String,
        /// The request's URL, e.g. https://airflow.example.com/api/v2/dags/etl/dagRuns.
        #[arg(long)]
        url: String,
        /// The policy directory (model.conf and *.csv).
        #[arg(long, default_value = "policies")]
        dir: PathBuf,
        /// Map the URL to a route's domain and template through this configuration; without it,
        /// through the `[hosts]` of DIR/tests/*.toml.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The policy domain, overriding the URL's route.
        #[arg(long)]
        domain: Option<String>,
        /// The resource template, overriding the URL's route.
        #[arg(long)]
        resources: Option<String>,
        /// The request's JSON body, for operations whose objects it names (Airflow's bulk calls).
        #[arg(long)]
        body: Option<String>,
        /// The upstream's answer (JSON) to what the template looks up for this operation (an
        /// Airflow backfill's DAG, the DAGs an asset starts).
        #[arg(long)]
        lookup: Option<String>,
    },
    /// List the decisions that change from OLD to NEW; exit 1 if any does.
    Diff {
        /// The policy directory in force.
        old: PathBuf,
        /// The policy directory that would replace it.
        new: PathBuf,
        /// Read the routes and custom resource templates from this configuration.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn policy_command(command: PolicyCommand) -> ExitCode {
    use portcullis::authz::cli;
    let load = |path: Option<PathBuf>| match path {
        None => Ok(None),
        Some(path) => portcullis::app::load_config(&path).map(Some).map_err(|problems| {
            report(&path, &problems);
        }),
    };
    let Some(runtime) = runtime(1) else {
        return ExitCode::FAILURE;
    };
    let result = match command {
        PolicyCommand::Test { dir, config } => {
            load(config).map(|c| runtime.block_on(cli::test(&dir, c.as_ref())))
        }
        PolicyCommand::Explain {
            subject,
            groups,
            method,
            url,
            dir,
            config,
            domain,
            resources,
            body,
            lookup,
        } => load(config).map(|c| {
            let ask = cli::Ask {
                subject,
                groups,
                method,
                url,
                domain,
                resources,
                body,
                lookup,
            };
            // The same route table the proxy builds, over the configured routes alone.
            let table = c.as_ref().map(|c| {
                portcullis::proxy::routes::RouteTable::new(c.routes.iter().cloned().map(Arc::new).collect())
            });
            let route_of = |host: &str, path: &str| table.as_ref()?.find(host, path).map(|r| (**r).clone());
            let route_of: Option<cli::RouteOf<'_>> = table.as_ref().map(|_| &route_of as cli::RouteOf<'_>);
            runtime.block_on(cli::explain(&ask, &dir, c.as_ref(), route_of))
        }),
        PolicyCommand::Diff { old, new, config } => {
            load(config).map(|c| runtime.block_on(cli::diff(&old, &new, c.as_ref())))
        }
    };
    match result {
        Ok(report) => {
            if report.code == 2 {
                eprint!("{}", report.text);
            } else {
                print!("{}", report.text);
            }
            ExitCode::from(report.code)
        }
        Err(()) => ExitCode::from(2),
    }
}

/// The process's log on stderr: `RUST_LOG` chooses which lines (default `info`), `format` how;
/// colour only when stderr is a terminal, so files and collectors never get escape codes.
fn init_logging(format: portcullis::config::LogFormat) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        portcullis::config::LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        portcullis::config::LogFormat::Json => builder.json().flatten_event(true).with_ansi(false).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` logs as its configuration says, once it has read it; every other command as text.
    if !matches!(cli.command, Command::Serve { .. }) {
        init_logging(portcullis::config::LogFormat::Text);
    }
    match cli.command {
        Command::Policy { command } => policy_command(command),
        Command::Keys { command } => keys_command(command),
        Command::Audit {
            command: AuditCommand::Show { path, follow },
        } => match portcullis::audit::readable::show(&path, follow, &mut std::io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                ExitCode::from(2)
            }
        },
        Command::Audit {
            command: AuditCommand::Verify { path },
        } => match portcullis::audit::verify::verify(&path) {
            Ok(report) => {
                print!("{}", report.text());
                if report.ok() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                ExitCode::from(2)
            }
        },
        Command::CheckConfig { config, offline } => check_config(&config, offline),
        Command::Serve { config: path } => {
            let config = match portcullis::app::load_config(&path) {
                Ok(c) => c,
                Err(problems) => {
                    report(&path, &problems);
                    return ExitCode::FAILURE;
                }
            };
            init_logging(config.log.format);
            for warning in portcullis::config::warnings(&config) {
                tracing::warn!(key = %warning.path, fix = %warning.hint, "{}", warning.message);
            }
            let Some(runtime) = runtime(config.runtime.worker_threads) else {
                return ExitCode::FAILURE;
            };
            let result = runtime.block_on(async {
                let bound = portcullis::app::bind(&config).await?;
                for (name, addr) in [
                    ("http", bound.http_addr()),
                    ("https", bound.https_addr()),
                    ("admin", bound.admin_addr()),
                ] {
                    if let Some(addr) = addr {
                        tracing::info!(listener = name, %addr, "listening");
                    }
                }
                portcullis::app::run_file(&path, config, bound, shutdown_signal()).await
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Revoke {
            config,
            session_of,
            subject,
            all_sessions,
            provider,
            token_lifetime,
        } => {
            let what = match (session_of, subject, all_sessions) {
                (Some(user), _, _) => portcullis::app::Revoke::SessionsOf(user),
                (_, Some(subject), _) => portcullis::app::Revoke::Subject(subject),
                _ => portcullis::app::Revoke::AllSessions,
            };
            revoke_command(&config, what, provider.as_deref(), token_lifetime)
        }
        Command::Probe { url } => match runtime(1).map(|r| r.block_on(demo::probe(&url))) {
            Some(Ok(())) => ExitCode::SUCCESS,
            Some(Err(why)) => {
                eprintln!("probe {url}: {why}");
                ExitCode::FAILURE
            }
            None => ExitCode::FAILURE,
        },
        Command::Demo { command } => demo_command(command),
    }
}

/// `portcullis revoke`: writes the deny entry and says what it refuses (printed and logged);
/// each replica's audit trail records the entry when it comes into force there. Exit 1 on a
/// problem.
fn revoke_command(
    path: &std::path::Path,
    what: portcullis::app::Revoke,
    provider: Option<&str>,
    token_lifetime: std::time::Duration,
) -> ExitCode {
    let config = match portcullis::app::load_config(path) {
        Ok(c) => c,
        Err(problems) => {
            report(path, &problems);
            return ExitCode::FAILURE;
        }
    };
    let Some(runtime) = runtime(1) else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(portcullis::app::revoke(&config, what, provider, token_lifetime)) {
        Ok(r) => {
            let until = std::time::UNIX_EPOCH + std::time::Duration::from_millis(r.expires);
            let before = std::time::UNIX_EPOCH + std::time::Duration::from_millis(r.before);
            tracing::info!(
                scope = r.scope.as_str(),
                provider = %r.provider,
                name = %r.name,
                before = %humantime::format_rfc3339_millis(before),
                until = %humantime::format_rfc3339_seconds(until),
                "revoked"
            );
            println!(
                "revoked {} {}{}: refused on every replica if from before {}, until {}",
                r.scope.as_str(),
                if r.provider.is_empty() {
                    String::new()
                } else {
                    format!("{}/", r.provider)
                },
                r.name,
                humantime::format_rfc3339_millis(before),
                humantime::format_rfc3339_seconds(until)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn demo_command(command: DemoCommand) -> ExitCode {
    let Some(runtime) = runtime(1) else {
        return ExitCode::FAILURE;
    };
    match command {
        DemoCommand::Idp {
            listen,
            redirect_uris,
            audience,
        } => {
            let listen = match demo::idp::loopback(&listen) {
                Ok(addr) => addr,
                Err(e) => {
                    eprintln!("demo idp: {e}");
                    return ExitCode::from(2);
                }
            };
            let redirect_uris = if redirect_uris.is_empty() {
                demo::idp::DEFAULT_REDIRECT_URIS.map(String::from).to_vec()
            } else {
                redirect_uris
            };
            let options = demo::idp::Options {
                listen,
                redirect_uris,
                audience,
            };
            match runtime.block_on(demo::idp::run(options)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("demo idp: {e}");
                    ExitCode::from(2)
                }
            }
        }
        DemoCommand::Upstream { listen } => runtime.block_on(async {
            match tokio::net::TcpListener::bind(&listen).await {
                Ok(l) => {
                    tracing::info!(%listen, "demo upstream listening");
                    demo::upstream::serve(l).await;
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("demo upstream: cannot listen on {listen}: {e}");
                    ExitCode::FAILURE
                }
            }
        }),
    }
}

/// The runtime a command runs on: `workers` threads (0: one per core). One worker means one
/// core, and a current-thread runtime skips the work-stealing machinery that only pays off with
/// several. `None` (said on stderr) when the OS refuses one.
fn runtime(workers: usize) -> Option<tokio::runtime::Runtime> {
    let mut builder = match workers {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    builder
        .enable_all()
        .build()
        .map_err(|e| eprintln!("cannot start the runtime: {e}"))
        .ok()
}

fn keys_command(command: KeysCommand) -> ExitCode {
    let (KeysCommand::List { config, json }
    | KeysCommand::Rotate { config, json }
    | KeysCommand::Revoke { config, json, .. }) = &command;
    let json = *json;
    let loaded = match portcullis::app::load_config(config) {
        Ok(c) => c,
        Err(problems) => {
            report(config, &problems);
            return ExitCode::from(2);
        }
    };
    let Some(dir) = loaded.tokens.key_dir.clone() else {
        eprintln!("{}: tokens.key_dir is not set", config.display());
        return ExitCode::from(2);
    };
    let mut ring = match portcullis::tokens::KeyRing::open(&dir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tokens.key_dir: {e}");
            return ExitCode::from(2);
        }
    };
    let now = std::time::SystemTime::now();
    let mut announced = None;
    let changed = match &command {
        KeysCommand::List { .. } => Ok(Vec::new()),
        KeysCommand::Rotate { .. } => ring.rotate(loaded.tokens.algorithm, now).map(|c| vec![c]),
        KeysCommand::Revoke { kid, .. } => match ring.revoke(kid, loaded.tokens.algorithm, now) {
            // Held by another replica: announced through the shared key set, if one serves it.
            Err(unknown @ portcullis::tokens::KeyError::Unknown(_)) => {
                match announce_elsewhere(&loaded, kid) {
                    Ok(true) => {
                        announced = Some(kid.clone());
                        Ok(Vec::new())
                    }
                    Ok(false) => Err(unknown),
                    Err(e) => {
                        eprintln!("{e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            other => other,
        },
    };
    let changes = match changed {
        Ok(changes) => changes,
        Err(e) => {
            eprintln!("tokens.key_dir: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rows = keys::rows(&ring, loaded.tokens.rotate_every);
    if json {
        println!("{}", keys::json(&changes, announced.as_deref(), &rows));
    } else {
        for change in &changes {
            println!("{}", keys::said(change));
        }
        if let Some(kid) = &announced {
            println!("{}", keys::announced(kid));
        }
        print!("{}", keys::table(&rows));
    }
    ExitCode::SUCCESS
}

/// `keys revoke` of a key another replica holds: announced revoked in the shared key set.
fn announce_elsewhere(config: &portcullis::config::Config, kid: &str) -> Result<bool, String> {
    let Some(runtime) = runtime(1) else {
        return Err("cannot start the runtime".into());
    };
    runtime.block_on(portcullis::app::announce_key_revoked(config, kid))
}

/// `check-config`: every problem of the file, then its warnings, then the policy it names (which
/// `serve` would also refuse to start with). Exit 1 on any problem; warnings alone exit 0.
fn check_config(path: &std::path::Path, offline: bool) -> ExitCode {
    let checked = portcullis::app::check_config(path, offline);
    let mut ok = !checked.has_errors();
    if !checked.problems.is_empty() {
        report(path, &checked.problems);
    }
    let Some(config) = checked.config else {
        return ExitCode::FAILURE;
    };
    // Only the file as written says which policy it means: with a value replaced by its default
    // (a mistyped `access` reads as protected), or with templates or a policy directory that are
    // wrong themselves, the policy's report would only repeat those problems.
    let policy_checkable = checked.as_written
        && !checked.problems.iter().any(|p| {
            p.is_error() && (p.path.starts_with("policy") || p.path.starts_with("resource_templates"))
        });
    let mut policy_warnings = 0;
    if config.needs_policy() && policy_checkable {
        let Some(runtime) = runtime(1) else {
            return ExitCode::FAILURE;
        };
        let policy = runtime.block_on(portcullis::authz::cli::test(&config.policy.dir, Some(&config)));
        let warnings: Vec<&str> = policy
            .text
            .lines()
            .filter(|l| l.starts_with("warning: "))
            .collect();
        if policy.code != 0 {
            eprintln!("{}: policy.dir {}:", path.display(), config.policy.dir.display());
            eprint!("{}", policy.text);
            ok = false;
        } else if !warnings.is_empty() {
            // Lines that load but can match no caller, a policy without decision tables.
            eprintln!("{}: policy.dir {}:", path.display(), config.policy.dir.display());
            for warning in &warnings {
                eprintln!("  {warning}");
            }
            policy_warnings = warnings.len();
        }
    }
    if !ok {
        return ExitCode::FAILURE;
    }
    let warnings = checked.problems.len() + policy_warnings;
    let routes = config.routes.len();
    match warnings {
        0 => println!("{}: ok ({routes} routes)", path.display()),
        n => println!("{}: ok ({routes} routes, {n} warning(s))", path.display()),
    }
    ExitCode::SUCCESS
}

/// Problems first, then warnings; each with its key path, its line and a fix.
fn report(path: &std::path::Path, problems: &[portcullis::config::Problem]) {
    let (errors, warnings): (Vec<_>, Vec<_>) = problems.iter().partition(|p| p.is_error());
    match (errors.len(), warnings.len()) {
        (n, 0) => eprintln!("{}: {n} problem(s)", path.display()),
        (0, w) => eprintln!("{}: {w} warning(s)", path.display()),
        (n, w) => eprintln!("{}: {n} problem(s), {w} warning(s)", path.display()),
    }
    for p in errors {
        eprintln!("  {}", line(p));
    }
    for p in warnings {
        eprintln!("  warning: {}", line(p));
    }
}

fn line(p: &portcullis::config::Problem) -> String {
    let at = p.line.map(|l| format!(" (line {l})")).unwrap_or_default();
    format!("{}: {}{at}\n      fix: {}", p.path, p.message, p.hint)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// What `portcullis keys` prints: a table for people, JSON for scripts.
mod keys {
    use std::time::{Duration, SystemTime};

    use portcullis::tokens::{Change, KeyRing};

    /// One key as listed.
    pub struct Row {
        pub kid: String,
        pub algorithm: String,
        /// `active`, `published` (ahead of its turn), `retiring` (a newer key took over; the
        /// proxy marks it retired at its next check) or `retired`.
        pub state: &'static str,
        pub created: SystemTime,
        /// When it starts (or started) signing.
        pub signs_from: SystemTime,
        /// When it retired; for a key not retired yet, when `rotate_every` retires it.
        pub retire_at: Option<SystemTime>,
    }

    pub fn rows(ring: &KeyRing, rotate_every: Duration) -> Vec<Row> {
        let active = ring.active().map(|k| k.kid.clone());
        ring.keys()
            .iter()
            .map(|key| {
                let state = match key.retired {
                    None if key.pending => "published",
                    None if active.as_ref() == Some(&key.kid) => "active",
                    None => "retiring",
                    Some(_) => "retired",
                };
                let retire_at = match (key.retired, state) {
                    (Some(at), _) => Some(at),
                    (None, "active" | "published") => key.activates.checked_add(rotate_every),
                    (None, _) => None,
                };
                Row {
                    kid: key.kid.clone(),
                    algorithm: format!("{:?}", key.algorithm),
                    state,
                    created: key.created,
                    signs_from: key.activates,
                    retire_at,
                }
            })
            .collect()
    }

    fn time(t: SystemTime) -> String {
        humantime::format_rfc3339_seconds(t).to_string()
    }

    /// Aligned columns, a header first; the state last, so `grep active$` finds the signing key.
    pub fn table(rows: &[Row]) -> String {
        let mut lines = vec![[
            "KID".to_string(),
            "ALGORITHM".into(),
            "CREATED".into(),
            "SIGNS FROM".into(),
            "RETIRE AT".into(),
            "STATE".into(),
        ]];
        for r in rows {
            lines.push([
                r.kid.clone(),
                r.algorithm.clone(),
                time(r.created),
                time(r.signs_from),
                r.retire_at.map_or_else(|| "-".into(), time),
                r.state.to_string(),
            ]);
        }
        let mut widths = [0usize; 6];
        for line in &lines {
            for (w, cell) in widths.iter_mut().zip(line) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in &lines {
            let cells: Vec<String> = line
                .iter()
                .zip(widths)
                .enumerate()
                .map(|(i, (cell, w))| {
                    if i == 5 {
                        cell.clone()
                    } else {
                        format!("{cell:<w$}")
                    }
                })
                .collect();
            out.push_str(&cells.join("  "));
            out.push('\n');
        }
        if rows.is_empty() {
            out.push_str("(no keys yet: the proxy makes the first at start-up, or run `keys rotate`)\n");
        }
        out
    }

    /// A change, in a sentence.
    pub fn said(change: &Change) -> String {
        match change {
            Change::Rotated {
                active,
                retired: Some(old),
            } => format!("rotated: {active} signs from now on; {old} retires (still published)"),
            Change::Rotated {
                active,
                retired: None,
            } => format!("rotated: {active} signs from now on"),
            Change::Removed { kid } => format!("removed: {kid}"),
            Change::Revoked { kid } => format!("revoked: {kid} is no longer published"),
        }
    }

    /// A key another replica holds, announced revoked through the shared key set.
    pub fn announced(kid: &str) -> String {
        format!(
            "announced: {kid} is revoked; the replica that holds it withdraws it, and no replica serves it within 2 s (this replica's own keys are below)"
        )
    }

    pub fn json(changes: &[Change], announced: Option<&str>, rows: &[Row]) -> serde_json::Value {
        let changes: Vec<serde_json::Value> = changes
            .iter()
            .map(|c| match c {
                Change::Rotated { active, retired } => {
                    serde_json::json!({ "change": "rotated", "active": active, "retired": retired })
                }
                Change::Removed { kid } => serde_json::json!({ "change": "removed", "kid": kid }),
                Change::Revoked { kid } => serde_json::json!({ "change": "revoked", "kid": kid }),
            })
            .chain(announced.map(|kid| serde_json::json!({ "change": "announced", "kid": kid })))
            .collect();
        let keys: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "kid": r.kid,
                    "algorithm": r.algorithm,
                    "state": r.state,
                    "created": time(r.created),
                    "signs_from": time(r.signs_from),
                    "retire_at": r.retire_at.map(time),
                })
            })
            .collect();
        serde_json::json!({ "changes": changes, "keys": keys })
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::Cli;

    /// Walks every subcommand, at any depth, with its path (`keys rotate`).
    fn walk<'a>(command: &'a clap::Command, path: String, out: &mut Vec<(String, &'a clap::Command)>) {
        for sub in command.get_subcommands() {
            let path = format!("{path} {}", sub.get_name());
            out.push((path.clone(), sub));
            walk(sub, path, out);
        }
    }

    #[test]
    fn every_subcommand_and_argument_has_help_text() {
        let cli = Cli::command();
        cli.clone().debug_assert();
        let mut commands = vec![("portcullis".to_string(), &cli)];
        walk(&cli, "portcullis".into(), &mut commands);
        let mut bare = Vec::new();
        for (path, command) in &commands {
            if path != "portcullis" && command.get_about().is_none() {
                bare.push(format!("`{path}` has no about"));
            }
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    bare.push(format!("`{path}` argument `{id}` has no help"));
                }
            }
        }
        assert!(bare.is_empty(), "add a doc comment to each:\n{}", bare.join("\n"));
        assert!(
            commands.len() > 10,
            "the walk found the subcommands: {}",
            commands.len()
        );
    }
}
