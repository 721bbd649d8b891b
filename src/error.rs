//! Small typed errors and the one rescue that turns any of them into a response.
//!
//! Every refusal the proxy makes, whether a decision (400, 401, 404) or an upstream failure
//! (502, 504), is a [`ProxyError`]; [`rescue`] is the only function that builds an error
//! response. Bodies name a stable error code and the request id, never internal detail.
//! A browser's page also says what was refused and the way on (sign in, sign out): see [`Page`].

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

use crate::body::ProxyBody;
use crate::decision::{Fault, Reason};

/// A request that did not get an upstream response.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The decision point refused the request; `detail` is a fixed, client-safe explanation.
    /// When the policy refused a known caller, `missing` names the permission (`trigger on
    /// dag:etl_daily in airflow`) if the operator allows telling the caller.
    #[error("denied ({reason}): {detail}")]
    Denied {
        reason: Reason,
        detail: &'static str,
        missing: Option<String>,
        /// For `claims_not_bound`: the claim (its name only), for the record.
        claim: Option<Arc<str>>,
    },
    /// The upstream could not be reached or broke the exchange.
    #[error("upstream unavailable: {0}")]
    UpstreamUnavailable(String),
    /// The upstream did not answer within the route's timeout.
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// The client went away while its request was being forwarded (499, as nginx logs it):
    /// nobody reads the answer, but the record says so.
    #[error("the client closed the request")]
    ClientClosed,
}

impl ProxyError {
    pub fn denied(reason: Reason, detail: &'static str) -> Self {
        ProxyError::Denied {
            reason,
            detail,
            missing: None,
            claim: None,
        }
    }

    /// `claims_not_bound`: a bound claim has another value; the record names the claim.
    pub fn unbound(claim: Arc<str>) -> Self {
        ProxyError::Denied {
            reason: Reason::ClaimsNotBound,
            detail: Reason::ClaimsNotBound.message(),
            missing: None,
            claim: Some(claim),
        }
    }

    /// The policy's refusal, naming the missing permission when the operator allows it.
    pub fn forbidden(missing: Option<String>) -> Self {
        ProxyError::Denied {
            reason: Reason::Forbidden,
            detail: Reason::Forbidden.message(),
            missing,
            claim: None,
        }
    }

    /// A refusal with the reason's own client-facing message.
    pub fn deny(reason: Reason) -> Self {
        ProxyError::denied(reason, reason.message())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Denied { reason, .. } => reason.status(),
            ProxyError::UpstreamUnavailable(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::ClientClosed => crate::decision::client_closed_status(),
        }
    }

    /// Whether this is the decision point's refusal rather than a failure to forward.
    pub fn is_denial(&self) -> bool {
        matches!(self, ProxyError::Denied { .. })
    }

    /// Whose fault it is: the client's, the upstream's, or the proxy's own.
    pub fn fault(&self) -> Fault {
        match self {
            ProxyError::Denied { reason, .. } => reason.fault(),
            ProxyError::UpstreamUnavailable(_) | ProxyError::UpstreamTimeout => Fault::Upstream,
            ProxyError::ClientClosed => Fault::Downstream,
        }
    }

    /// Stable, machine-readable code for the response body, metrics and the audit event's `error.type`.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::Denied { reason, .. } => reason.as_str(),
            ProxyError::UpstreamUnavailable(_) => "upstream_unavailable",
            ProxyError::UpstreamTimeout => "upstream_timeout",
            ProxyError::ClientClosed => "client_closed",
        }
    }

    /// What the client is told. Fixed strings only: nothing from the upstream or the OS leaks.
    fn public_message(&self) -> &'static str {
        match self {
            ProxyError::Denied { detail, .. } => detail,
            ProxyError::UpstreamUnavailable(_) => "the upstream service could not be reached",
            ProxyError::UpstreamTimeout => "the upstream service did not answer in time",
            ProxyError::ClientClosed => "the client closed the request",
        }
    }
}

/// What a browser's error page says beyond the status and the request id. Everything in it is
/// escaped when the page is written: names and paths come from callers.
#[derive(Debug, Default, Clone)]
pub struct Page {
    /// The refused request's method and canonical path (never the query), when it was read.
    pub refused: Option<(String, String)>,
    /// Who the caller is, when some provider vouched for them.
    pub caller: Option<Who>,
    /// Whether, and where, a browser can sign in for this route (said on 401 pages).
    pub sign_in: SignIn,
}

/// The caller as a person reads it.
#[derive(Debug, Clone)]
pub struct Who {
    /// A name, an email, or the subject: the most readable the provider gave.
    pub name: String,
    /// The email, when the provider gave one and it is not the name.
    pub email: Option<String>,
    /// The identity provider's display name.
    pub provider: String,
    /// Signed in through the browser (a session that can be signed out of), not a token.
    pub session: bool,
}

/// Whether a browser can sign in on the route a 401 is for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum SignIn {
    /// Not known (no route was found): the page says nothing about it.
    #[default]
    Unknown,
    /// The route accepts no provider people sign in with in a browser.
    Unavailable,
    /// The sign-in link: the reserved sign-in endpoint with a same-origin return path.
    At(String),
}

/// Where the page's sign-out link leads.
pub const SIGN_OUT: &str = "/.portcullis/sign_out";

/// The one place an error becomes a response: JSON for API clients, a small HTML page for
/// browsers (`page`: `Accept: text/html`), both carrying the request id.
pub fn rescue(error: &ProxyError, request_id: &str, page: Option<&Page>) -> Response<ProxyBody> {
    let status = error.status();
    let missing = match error {
        ProxyError::Denied { missing, .. } => missing.as_deref(),
        _ => None,
    };
    let (content_type, body) = if let Some(page) = page {
        // The fixed messages are written to follow a JSON key; a page starts a sentence.
        let public = error.public_message();
        let mut chars = public.chars();
        let mut message: String = chars.next().map(|c| c.to_ascii_uppercase()).into_iter().collect();
        message.push_str(chars.as_str());
        if let Some(missing) = missing {
            message.push_str(&format!(
                ": missing permission <code>{}</code>",
                html_escape(missing)
            ));
        }
        (
            "text/html; charset=utf-8",
            html_page(status, &message, request_id, page),
        )
    } else {
        let mut json = serde_json::json!({
            "error": error.code(),
            "message": error.public_message(),
            "request_id": request_id,
        });
        if let (Some(missing), Some(map)) = (missing, json.as_object_mut()) {
            map.insert("missing_permission".into(), missing.into());
        }
        ("application/json", json.to_string())
    };
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    if page.is_some() {
        headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
        headers.insert(
            "content-security-policy",
            HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
        );
    }
    match error {
        ProxyError::Denied {
            reason: Reason::NoCredentials | Reason::SessionExpired,
            ..
        } => {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"portcullis\""),
            );
        }
        // RFC 6750: a presented token that was refused names `invalid_token`; the description is
        // the closed-set reason, never detail from the token.
        ProxyError::Denied { reason, .. } if reason.is_invalid_token() => {
            let challenge = format!(
                "Bearer realm=\"portcullis\", error=\"invalid_token\", error_description=\"{reason}\""
            );
            if let Ok(v) = HeaderValue::from_str(&challenge) {
                headers.insert(header::WWW_AUTHENTICATE, v);
            }
        }
        _ => {}
    }
    response
}

fn html_page(status: StatusCode, message: &str, request_id: &str, page: &Page) -> String {
    // request_id is either generated or validated as a visible-ASCII token; escape anyway.
    let id = html_escape(request_id);
    let code = status.as_u16();
    let title = status.canonical_reason().unwrap_or("Error");
    let mut more = String::new();
    if let Some(caller) = &page.caller {
        let email = caller
            .email
            .as_deref()
            .map(|e| format!(" ({})", html_escape(e)))
            .unwrap_or_default();
        let how = if caller.session {
            "You are signed in as"
        } else {
            "Your token identifies you as"
        };
        more.push_str(&format!(
            "<p id=\"caller\">{how} <strong>{}</strong>{email} with <strong>{}</strong>.</p>",
            html_escape(&caller.name),
            html_escape(&caller.provider)
        ));
    }
    if let Some((method, path)) = &page.refused {
        let verb = if status == StatusCode::FORBIDDEN {
            "Refused"
        } else {
            "Request"
        };
        more.push_str(&format!(
            "<p id=\"refused\">{verb}: <code>{} {}</code></p>",
            html_escape(method),
            html_escape(path)
        ));
    }
    if status == StatusCode::UNAUTHORIZED {
        match &page.sign_in {
            SignIn::At(href) => more.push_str(&format!(
                "<p><a id=\"sign-in\" href=\"{}\">Sign in</a> to continue.</p>",
                html_escape(href)
            )),
            SignIn::Unavailable => more.push_str(
                "<p id=\"no-sign-in\">No browser sign-in is available here: this address accepts \
                 only tokens that programs present (API clients, CI jobs, services).</p>",
            ),
            SignIn::Unknown => {}
        }
    }
    if page.caller.as_ref().is_some_and(|c| c.session) {
        more.push_str(&format!(
            "<p><a id=\"sign-out\" href=\"{SIGN_OUT}\">Sign out</a> to sign in as someone else.</p>"
        ));
    }
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{code} {title}</title></head>\
         <body style=\"font-family:sans-serif;max-width:40em;margin:4em auto\">\
         <h1>{code} {title}</h1><p>{message}.</p>{more}<p><small>Request id: <code id=\"request-id\">{id}</code></small></p>\
         </body></html>\n"
    )
}

/// Text made safe to put in HTML, also inside a quoted attribute.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// True when the client prefers an HTML page (a browser navigation) over JSON.
pub fn wants_html(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn api_clients_get_json_with_the_request_id_and_no_internal_detail() {
        let error = ProxyError::UpstreamUnavailable("connect to 10.1.2.3:8080 refused".into());
        let response = rescue(&error, "req-1", None);
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"], "upstream_unavailable");
        assert_eq!(json["request_id"], "req-1");
        assert!(!String::from_utf8_lossy(&body).contains("10.1.2.3"));
    }

    #[tokio::test]
    async fn browsers_get_a_small_html_page() {
        let error = ProxyError::denied(Reason::RouteNotFound, "no route serves this host and path");
        let response = rescue(&error, "<id>", Some(&Page::default()));
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let html = String::from_utf8(body.to_vec()).unwrap();
        assert!(html.contains("404 Not Found"));
        assert!(html.contains("&lt;id&gt;"));
    }

    async fn page_of(error: &ProxyError, page: &Page) -> (http::HeaderMap, String) {
        let response = rescue(error, "req-1", Some(page));
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (headers, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn a_403_page_names_the_caller_and_what_was_refused_all_escaped() {
        let page = Page {
            refused: Some(("POST".into(), "/dags/<script>alert(1)</script>".into())),
            caller: Some(Who {
                name: "<script>x</script>".into(),
                email: Some("a\"b@example.com".into()),
                provider: "Okta <corp>".into(),
                session: true,
            }),
            sign_in: SignIn::Unknown,
        };
        let (headers, html) = page_of(&ProxyError::forbidden(None), &page).await;
        assert_eq!(headers["cache-control"], "no-store");
        assert!(!html.contains("<script"), "{html}");
        assert!(html.contains("You are signed in as <strong>&lt;script&gt;x&lt;/script&gt;</strong> (a&quot;b@example.com) with <strong>Okta &lt;corp&gt;</strong>"), "{html}");
        assert!(
            html.contains("Refused: <code>POST /dags/&lt;script&gt;alert(1)&lt;/script&gt;</code>"),
            "{html}"
        );
        assert!(html.contains(&format!("href=\"{SIGN_OUT}\"")), "{html}");
        assert!(!html.contains("Sign in</a>"), "{html}");
    }

    #[tokio::test]
    async fn a_401_page_offers_sign_in_only_where_a_browser_can_sign_in() {
        let at = Page {
            sign_in: SignIn::At("/.portcullis/sign_in?rd=%2Fa%3Fb%3D1&x=\"".into()),
            ..Page::default()
        };
        let (_, html) = page_of(&ProxyError::deny(Reason::NoCredentials), &at).await;
        assert!(
            html.contains(
                "<a id=\"sign-in\" href=\"/.portcullis/sign_in?rd=%2Fa%3Fb%3D1&amp;x=&quot;\">Sign in</a>"
            ),
            "{html}"
        );
        let unavailable = Page {
            sign_in: SignIn::Unavailable,
            ..Page::default()
        };
        let (_, html) = page_of(&ProxyError::deny(Reason::NoCredentials), &unavailable).await;
        assert!(html.contains("No browser sign-in is available here"), "{html}");
        assert!(!html.contains("sign_in"), "{html}");
        assert!(!html.contains("Sign out"), "{html}");
    }
}
