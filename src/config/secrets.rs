//! The secrets a configuration names (`*_env`, `*_file`), looked for where it says they are.
//! `serve` reads them while it starts and stops at the first missing one; `check-config` reports
//! all of them with their keys. Only whether a value is there is checked (and an HMAC secret's
//! length, which `serve` also refuses): the value itself is never shown.

use std::path::Path;

use super::{Config, Problem};

/// HMAC keys shorter than this are refused at start-up; see `app::build_authn`.
const MIN_HMAC_SECRET_BYTES: usize = 32;

/// A 256-bit key, from its text form: 64 hex digits, or base64 (standard or URL-safe, padded
/// or not) of exactly 32 bytes.
pub fn parse_key(text: &str) -> Result<[u8; 32], &'static str> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let text = text.trim();
    let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        crate::hex::decode(text)
    } else {
        [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
            .iter()
            .find_map(|engine| engine.decode(text).ok())
    };
    bytes
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or("is not 32 bytes in hex (64 digits) or base64 (fix: openssl rand -base64 32)")
}

/// Every secret of `config` that is not where the config says, with its key.
pub fn check_secrets(config: &Config) -> Vec<Problem> {
    let mut p = Vec::new();
    for (i, idp) in config.identity_providers.iter().enumerate() {
        let at = format!("identity_providers[{i}]");
        let hmac = Secret::new(&at, "hmac_secret", &idp.hmac_secret_env, &idp.hmac_secret_file);
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
            let at = format!("{at}.browser");
            Secret::new(
                &at,
                "client_secret",
                &browser.client_secret_env,
                &browser.client_secret_file,
            )
            .check(&mut p);
        }
    }
    for (i, route) in config.routes.iter().enumerate() {
        if let Some(c) = &route.upstream_credentials {
            let at = format!("routes[{i}].upstream_credentials");
            Secret::new(&at, "client_secret", &c.client_secret_env, &c.client_secret_file).check(&mut p);
        }
    }
    if let Some(redis) = &config.sessions.redis {
        let at = "sessions.redis";
        Secret::new(at, "password", &redis.password_env, &redis.password_file).check(&mut p);
        Secret::new(
            at,
            "sentinel_password",
            &redis.sentinel_password_env,
            &redis.sentinel_password_file,
        )
        .check(&mut p);
        for key in [
            Secret::new(
                at,
                "encryption_key",
                &redis.encryption_key_env,
                &redis.encryption_key_file,
            ),
            Secret::new(
                at,
                "previous_encryption_key",
                &redis.previous_encryption_key_env,
                &redis.previous_encryption_key_file,
            ),
        ] {
            if let Some(Err(problem)) = key.value(&mut p).map(|v| parse_key(&v)) {
                p.push(Problem::new(
                    key.key(),
                    format!("the key {problem}"),
                    "generate one with openssl rand -base64 32",
                ));
            }
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
            Secret::new(&at, what, &header.value_env, &header.value_file).check(&mut p);
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

impl<'a> Secret<'a> {
    fn new(
        at: &'a str,
        what: &'a str,
        env: &'a Option<String>,
        file: &'a Option<std::path::PathBuf>,
    ) -> Self {
        Secret {
            at,
            what,
            env: env.as_deref(),
            file: file.as_deref(),
        }
    }

    fn key(&self) -> String {
        let kind = if self.env.is_some() { "env" } else { "file" };
        format!("{}.{}_{kind}", self.at, self.what)
    }

    /// The secret's length in bytes when it is there; a problem when it is not.
    fn check(&self, p: &mut Vec<Problem>) -> Option<usize> {
        self.value(p).map(|v| v.len())
    }

    /// The secret, trimmed, when it is there; a problem when it is not.
    fn value(&self, p: &mut Vec<Problem>) -> Option<String> {
        if let Some(var) = self.env {
            return match std::env::var(var) {
                Ok(value) if !value.trim().is_empty() => Some(value.trim().to_string()),
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
            Ok(value) if !value.trim().is_empty() => Some(value.trim().to_string()),
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
        let redis = |keys: &str| {
            let text =
                format!("[sessions]\nstore = \"redis\"\n[sessions.redis]\nurl = \"redis://r\"\n{keys}");
            let problems = check_secrets(&crate::config::parse(&text).unwrap());
            problems
                .iter()
                .map(|p| format!("{}: {}", p.path, p.message))
                .collect::<Vec<_>>()
        };
        let key = dir.path().join("key");
        std::fs::write(&key, format!("{}\n", "ab".repeat(32))).unwrap();
        let found = format!("encryption_key_file = {:?}", key.display().to_string());
        assert!(redis(&found).is_empty(), "{:?}", redis(&found));
        let absent = redis(&format!(
            "{found}\npassword_env = \"PORTCULLIS_TEST_SURELY_UNSET_2b7c\"\nprevious_encryption_key_file = {short:?}"
        ));
        assert_eq!(absent.len(), 2, "{absent:?}");
        assert!(
            absent[0].starts_with("sessions.redis.password_env: "),
            "{absent:?}"
        );
        assert!(
            absent[1].starts_with("sessions.redis.previous_encryption_key_file: the key is not 32 bytes"),
            "{absent:?}"
        );
        assert!(
            !absent[1].contains("too short"),
            "the value was shown: {absent:?}"
        );
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
