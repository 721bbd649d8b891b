//! The secrets a configuration names (`*_env`, `*_file`), looked for where it says they are.
//! `serve` reads them while it starts and stops at the first missing one; `check-config` reports
//! all of them with their keys. Only whether a value is there is checked (and an HMAC secret's
//! length, which `serve` also refuses): the value itself is never shown.

use std::path::Path;

use super::{Config, Problem};

/// HMAC keys shorter than this are refused at start-up; see `app::build_authn`.
const MIN_HMAC_SECRET_BYTES: usize = 32;

/// Every secret of `config` that is not where the config says, with its key.
pub fn check_secrets(config: &Config) -> Vec<Problem> {
    let mut p = Vec::new();
    for (i, idp) in config.identity_providers.iter().enumerate() {
        let at = format!("identity_providers[{i}]");
        let hmac = Secret {
            at: &at,
            what: "hmac_secret",
            env: idp.hmac_secret_env.as_deref(),
            file: idp.hmac_secret_file.as_deref(),
        };
        if let Some(len) = hmac.check(&mut p)
            && len < MIN_HMAC_SECRET_BYTES
        {
            p.push(Problem::new(
                hmac.key(),
                format!("the HMAC secret is {len} bytes, shorter than {MIN_HMAC_SECRET_BYTES}"),
                "use at least 32 random bytes",
            ));
        }
        if let Some(browser) = &idp.browser {
            Secret {
                at: &format!("{at}.browser"),
                what: "client_secret",
                env: browser.client_secret_env.as_deref(),
                file: browser.client_secret_file.as_deref(),
            }
            .check(&mut p);
        }
    }
    for (i, route) in config.routes.iter().enumerate() {
        if let Some(c) = &route.upstream_credentials {
            Secret {
                at: &format!("routes[{i}].upstream_credentials"),
                what: "client_secret",
                env: c.client_secret_env.as_deref(),
                file: c.client_secret_file.as_deref(),
            }
            .check(&mut p);
        }
    }
    if let Some(otlp) = &config.audit.otlp {
        for (j, header) in otlp.resolved_headers().iter().enumerate() {
            // A preset's access token is a header the file need not write.
            let (at, what) = if j < otlp.headers.len() {
                (format!("audit.otlp.headers[{j}]"), "value")
            } else {
                ("audit.otlp".to_string(), "access_token")
            };
            Secret {
                at: &at,
                what,
                env: header.value_env.as_deref(),
                file: header.value_file.as_deref(),
            }
            .check(&mut p);
        }
    }
    p
}

/// One secret: `<at>.<what>_env` or `<at>.<what>_file`.
struct Secret<'a> {
    at: &'a str,
    what: &'a str,
    env: Option<&'a str>,
    file: Option<&'a Path>,
}

impl Secret<'_> {
    fn key(&self) -> String {
        let kind = if self.env.is_some() { "env" } else { "file" };
        format!("{}.{}_{kind}", self.at, self.what)
    }

    /// The secret's length in bytes when it is there; a problem when it is not.
    fn check(&self, p: &mut Vec<Problem>) -> Option<usize> {
        if let Some(var) = self.env {
            return match std::env::var(var) {
                Ok(value) if !value.trim().is_empty() => Some(value.trim().len()),
                Ok(_) => {
                    p.push(Problem::new(
                        self.key(),
                        format!("names {var}, which is set but empty"),
                        format!("export {var} with the secret before starting Portcullis"),
                    ));
                    None
                }
                Err(_) => {
                    p.push(Problem::new(
                        self.key(),
                        format!("names {var}, which is not set"),
                        format!(
                            "export {var} before starting Portcullis (check-config --offline skips this check \
                             where the secret is not available)"
                        ),
                    ));
                    None
                }
            };
        }
        let path = self.file?;
        match std::fs::read_to_string(path) {
            Ok(value) if !value.trim().is_empty() => Some(value.trim().len()),
            Ok(_) => {
                p.push(Problem::new(
                    self.key(),
                    format!("{} is empty", path.display()),
                    "write the secret into the file",
                ));
                None
            }
            Err(e) => {
                p.push(Problem::new(
                    self.key(),
                    format!("cannot read {}: {e}", path.display()),
                    "point it at a file the proxy's user can read (a relative path is taken from the \
                     config file's directory)",
                ));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_variable_and_a_missing_file_are_each_reported_at_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "too short\n").unwrap();
        let config = crate::config::parse(&format!(
            r#"
            [[identity_providers]]
            name = "a"
            issuer = "https://a.example.com"
            audiences = ["api"]
            algorithms = ["HS256"]
            hmac_secret_file = {short:?}
            [identity_providers.browser]
            client_id = "proxy"
            client_secret_env = "PORTCULLIS_TEST_SURELY_UNSET_1f3a"
            [[routes]]
            name = "r"
            hosts = ["r.example.com"]
            [routes.upstream]
            url = "http://r:80"
            [routes.upstream_credentials]
            issuer = "https://a.example.com"
            client_id = "c"
            client_secret_file = {:?}
            "#,
            dir.path().join("absent").display().to_string()
        ))
        .unwrap();
        let problems = check_secrets(&config);
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "identity_providers[0].hmac_secret_file",
                "identity_providers[0].browser.client_secret_env",
                "routes[0].upstream_credentials.client_secret_file"
            ],
            "{problems:?}"
        );
        assert!(problems[0].message.contains("shorter than 32"), "{problems:?}");
        assert!(problems[1].message.contains("is not set"), "{problems:?}");
        assert!(problems[2].message.contains("cannot read"), "{problems:?}");
    }
}
