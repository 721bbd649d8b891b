//! What the reserved endpoints send back: the proxy's own pages (the provider chooser, the
//! signed-out page) and its redirects. None of them may be cached: each carries cookies or
//! depends on them.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use openidconnect::url::form_urlencoded;

use super::{BrowserClient, RESERVED};
use crate::body::{ProxyBody, full};
use crate::error::html_escape;

fn no_store(mut response: Response<ProxyBody>, cookies: &[String]) -> Response<ProxyBody> {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            headers.append(header::SET_COOKIE, v);
        }
    }
    response
}

pub(super) fn redirect(location: &str, cookies: &[String]) -> Response<ProxyBody> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::FOUND;
    if let Ok(v) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    no_store(response, cookies)
}

/// A page of the proxy's own (the provider chooser, the signed-out page).
pub(super) fn html(body: String) -> Response<ProxyBody> {
    let mut response = Response::new(full(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
    );
    no_store(response, &[])
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body style=\"font-family:sans-serif;max-width:40em;margin:4em auto\"><h1>{title}</h1>{body}</body></html>\n"
    )
}

pub(super) fn chooser_page(options: &[Arc<BrowserClient>], return_to: &str) -> String {
    let mut items = String::new();
    for client in options {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("provider", client.name())
            .append_pair("rd", return_to)
            .finish();
        items.push_str(&format!(
            "<li><a href=\"{RESERVED}sign_in?{}\">{}</a></li>",
            html_escape(&query),
            html_escape(&client.display_name)
        ));
    }
    page(
        "Sign in",
        &format!("<p>Choose how to sign in:</p><ul>{items}</ul>"),
    )
}

pub(super) fn signed_out_page() -> String {
    page(
        "Signed out",
        "<p>You have signed out.</p><p><a href=\"/\">Sign in again</a></p>",
    )
}
