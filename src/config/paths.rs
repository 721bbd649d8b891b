//! Files and directories the configuration names are found next to it: a relative path is taken
//! from the directory of the config file, not from wherever the process was started, so
//! `portcullis serve --config /etc/portcullis/portcullis.toml` reads the same files from any
//! directory (a systemd unit, a container's entrypoint, an operator's shell).

use std::path::{Component, Path, PathBuf};

use super::Config;

/// The directory relative paths in the file at `config_file` are taken from, made absolute so
/// that messages name the file that was looked for. The directory of the path as given: a config
/// reached through a symbolic link (a Kubernetes ConfigMap mount) finds its neighbours there.
pub fn base_dir(config_file: &Path) -> PathBuf {
    let dir = match config_file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    clean(&std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf()))
}

/// Makes every relative path of `config` relative to `base` instead (see [`base_dir`]).
pub fn resolve_paths(config: &mut Config, base: &Path) {
    let file = |p: &mut PathBuf| {
        if !p.as_os_str().is_empty() && p.is_relative() {
            *p = clean(&base.join(&*p));
        }
    };
    let maybe = |p: &mut Option<PathBuf>| {
        if let Some(p) = p {
            file(p);
        }
    };
    let policy = &mut config.policy;
    file(&mut policy.dir);
    maybe(&mut policy.shadow_dir);
    maybe(&mut config.tokens.key_dir);
    if let Some(tls) = &mut config.server.tls {
        file(&mut tls.cert);
        file(&mut tls.key);
    }
    let audit = &mut config.audit;
    // `-` is standard output, not a file.
    if audit.path != "-" && !audit.path.is_empty() && Path::new(&audit.path).is_relative() {
        audit.path = clean(&base.join(&audit.path)).display().to_string();
    }
    maybe(&mut audit.spool.dir);
    if let Some(otlp) = &mut audit.otlp {
        maybe(&mut otlp.ca);
        maybe(&mut otlp.access_token_file);
        for header in &mut otlp.headers {
            maybe(&mut header.value_file);
        }
    }
    for idp in &mut config.identity_providers {
        maybe(&mut idp.ca);
        maybe(&mut idp.hmac_secret_file);
        if let Some(browser) = &mut idp.browser {
            maybe(&mut browser.client_secret_file);
        }
    }
    if let Some(redis) = &mut config.sessions.redis {
        for path in [
            &mut redis.password_file,
            &mut redis.sentinel_password_file,
            &mut redis.ca,
            &mut redis.client_cert,
            &mut redis.client_key,
            &mut redis.encryption_key_file,
            &mut redis.previous_encryption_key_file,
        ] {
            maybe(path);
        }
    }
    for route in &mut config.routes {
        let up = &mut route.upstream;
        maybe(&mut up.ca);
        maybe(&mut up.client_cert);
        maybe(&mut up.client_key);
        if let Some(c) = &mut route.upstream_credentials {
            maybe(&mut c.ca);
            maybe(&mut c.client_secret_file);
        }
        if let Some(a) = &mut route.assertion {
            maybe(&mut a.upstream_jwks);
        }
    }
}

/// `a/./b` as `a/b`, lexically: `..` is kept, since a symbolic link may stand before it.
fn clean(path: &Path) -> PathBuf {
    path.components().filter(|c| *c != Component::CurDir).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_taken_from_the_config_file_s_directory_and_absolute_ones_are_kept() {
        let mut config = crate::config::parse(
            r#"
            [server]
            https = "127.0.0.1:8443"
            [server.tls]
            cert = "tls/cert.pem"
            key = "/etc/ssl/key.pem"
            [audit]
            path = "audit.jsonl"
            [policy]
            dir = "./policy"
            [[identity_providers]]
            name = "okta"
            issuer = "https://example.okta.com"
            audiences = ["api"]
            hmac_secret_file = "../secrets/hmac"
            [[routes]]
            name = "a"
            hosts = ["a.example.com"]
            upstream = { url = "https://a:8443", ca = "ca.pem" }
            [sessions]
            store = "redis"
            [sessions.redis]
            url = "rediss://r"
            ca = "redis/ca.pem"
            encryption_key_file = "/run/secrets/key"
            password_file = "redis/password"
            "#,
        )
        .unwrap();
        resolve_paths(&mut config, Path::new("/etc/portcullis"));
        let redis = config.sessions.redis.as_ref().unwrap();
        assert_eq!(
            redis.ca.as_deref(),
            Some(Path::new("/etc/portcullis/redis/ca.pem"))
        );
        assert_eq!(
            redis.password_file.as_deref(),
            Some(Path::new("/etc/portcullis/redis/password"))
        );
        assert_eq!(
            redis.encryption_key_file.as_deref(),
            Some(Path::new("/run/secrets/key"))
        );
        let tls = config.server.tls.as_ref().unwrap();
        assert_eq!(tls.cert, Path::new("/etc/portcullis/tls/cert.pem"));
        assert_eq!(tls.key, Path::new("/etc/ssl/key.pem"));
        assert_eq!(config.audit.path, "/etc/portcullis/audit.jsonl");
        assert_eq!(config.policy.dir, Path::new("/etc/portcullis/policy"));
        assert_eq!(
            config.identity_providers[0].hmac_secret_file.as_deref(),
            Some(Path::new("/etc/portcullis/../secrets/hmac"))
        );
        assert_eq!(
            config.routes[0].upstream.ca.as_deref(),
            Some(Path::new("/etc/portcullis/ca.pem"))
        );
    }

    #[test]
    fn standard_output_and_the_default_policy_directory_resolve_as_documented() {
        let mut config = crate::config::parse("").unwrap();
        resolve_paths(&mut config, Path::new("/srv/proxy"));
        assert_eq!(config.audit.path, "-");
        assert_eq!(config.policy.dir, Path::new("/srv/proxy/policies"));
    }

    #[test]
    fn the_base_of_a_bare_file_name_is_the_working_directory() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(base_dir(Path::new("portcullis.toml")), cwd);
        assert_eq!(
            base_dir(Path::new("/etc/portcullis/x.toml")),
            Path::new("/etc/portcullis")
        );
    }
}
