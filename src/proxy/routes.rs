//! The route table: host (exact, then longest `*.` wildcard) and then the longest path prefix
//! on whole segments, both matched against the canonical view.

use std::collections::HashMap;
use std::sync::Arc;

use crate::authn::Provider;
use crate::authz::Target;
use crate::config;
use crate::metrics::RouteLabel;
use crate::proxy::forward::Upstream;

/// A route ready to serve: its config and its upstream client.
#[derive(Debug)]
pub struct Route {
    pub config: config::Route,
    pub upstream: Upstream,
    /// The name as metrics and audit events carry it.
    pub label: RouteLabel,
    /// The identity providers whose tokens this route accepts.
    pub providers: Vec<Arc<Provider>>,
    /// Protected routes: the policy domain and resource template requests are checked in.
    pub policy: Option<Target>,
    /// Routes that send an identity assertion: its audience and header, parsed once.
    pub assertion: Option<(Arc<str>, http::HeaderName)>,
    /// Routes with a brokered upstream credential.
    pub credentials: Option<Arc<crate::tokens::broker::Broker>>,
}

impl Route {
    pub fn new(
        config: config::Route,
        upstream: Upstream,
        providers: Vec<Arc<Provider>>,
        policy: Option<Target>,
    ) -> Self {
        let label = Arc::new(config.name.clone());
        // Validation checked the header name; the default stands in only for a config that skipped it.
        let assertion = config.assertion.as_ref().map(|a| {
            let header = http::HeaderName::from_bytes(a.header.as_bytes())
                .unwrap_or(http::HeaderName::from_static("x-portcullis-assertion"));
            (Arc::from(a.audience.as_str()), header)
        });
        Route {
            config,
            upstream,
            label,
            providers,
            policy,
            assertion,
            credentials: None,
        }
    }
}

impl Route {
    /// The same route with a brokered credential for its upstream.
    pub fn with_credentials(mut self, credentials: Option<Arc<crate::tokens::broker::Broker>>) -> Self {
        self.credentials = credentials;
        self
    }
}

impl AsRef<config::Route> for Route {
    fn as_ref(&self) -> &config::Route {
        &self.config
    }
}

/// Routes by host and path. Generic over what a route carries, so `policy explain` resolves a
/// URL from bare configured routes exactly as the proxy does from built ones.
#[derive(Debug)]
pub struct RouteTable<R = Route> {
    exact: HashMap<String, Vec<Arc<R>>>,
    /// (suffix including the leading dot, routes), longest suffix first.
    wildcard: Vec<(String, Vec<Arc<R>>)>,
}

impl<R: AsRef<config::Route>> RouteTable<R> {
    pub fn new(routes: Vec<Arc<R>>) -> Self {
        let mut table = RouteTable {
            exact: HashMap::new(),
            wildcard: Vec::new(),
        };
        for route in routes {
            for host in &(*route).as_ref().hosts {
                let host = host.to_ascii_lowercase();
                match host.strip_prefix('*') {
                    Some(suffix) => match table.wildcard.iter_mut().find(|(s, _)| s == suffix) {
                        Some((_, list)) => list.push(route.clone()),
                        None => table.wildcard.push((suffix.to_string(), vec![route.clone()])),
                    },
                    None => table.exact.entry(host).or_default().push(route.clone()),
                }
            }
        }
        let by_prefix_len = |list: &mut Vec<Arc<R>>| {
            list.sort_by_key(|r| std::cmp::Reverse((**r).as_ref().path_prefix.len()));
        };
        table.exact.values_mut().for_each(by_prefix_len);
        table
            .wildcard
            .iter_mut()
            .for_each(|(_, list)| by_prefix_len(list));
        table
            .wildcard
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        table
    }

    /// Whether any route serves this host (on any path).
    pub fn serves_host(&self, host: &str) -> bool {
        self.exact.contains_key(host)
            || self
                .wildcard
                .iter()
                .any(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
    }

    /// The route for a canonical host and path. A host that has routes but none for this path
    /// does not fall through to a wildcard: the most specific host owns its whole namespace.
    pub fn find(&self, host: &str, path: &str) -> Option<&Arc<R>> {
        let candidates = match self.exact.get(host) {
            Some(list) => list,
            None => {
                &self
                    .wildcard
                    .iter()
                    .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))?
                    .1
            }
        };
        candidates
            .iter()
            .find(|r| prefix_matches(&(***r).as_ref().path_prefix, path))
    }
}

/// `/api` matches `/api`, `/api/` and `/api/x`, never `/apix`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
        && (prefix.ends_with('/')
            || path.len() == prefix.len()
            || path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_whole_segments_only() {
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/v1"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(prefix_matches("/api/", "/api/x"));
        assert!(!prefix_matches("/api/", "/api"));
    }
}
