//! W3C trace context: the access span joins the caller's trace, and the upstream is told the
//! span it sits under, so the decision appears inside the pipeline's own trace.
//!
//! Untrusted input: `traceparent` and `tracestate` from any client. A malformed `traceparent`
//! is ignored (a new trace starts), as the W3C spec asks; a trace id names no one and grants
//! nothing, so it is accepted from untrusted clients like every tracing proxy does.

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TraceFlags};
use opentelemetry_sdk::propagation::TraceContextPropagator;

use crate::audit::TraceIds;

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Where this request's span sits, and what to pass on.
#[derive(Debug, Clone)]
pub struct TraceCtx {
    pub ids: TraceIds,
    flags: TraceFlags,
    state: Option<HeaderValue>,
}

impl TraceCtx {
    pub fn join(headers: &HeaderMap) -> TraceCtx {
        if headers.contains_key(TRACEPARENT) {
            let cx = TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers));
            let span = cx.span();
            let parent = span.span_context();
            if parent.is_valid() {
                return TraceCtx {
                    ids: TraceIds::child_of(parent.trace_id(), parent.span_id()),
                    // The caller's sampling choice stands for its own tracing; the audit span is
                    // exported whatever it says.
                    flags: parent.trace_flags(),
                    state: headers.get(TRACESTATE).filter(|v| v.len() <= 512).cloned(),
                };
            }
        }
        TraceCtx {
            ids: TraceIds::fresh(),
            flags: TraceFlags::SAMPLED,
            state: None,
        }
    }

    /// `traceparent` (and `tracestate`) for the upstream: our span is its parent.
    pub fn inject(&self, headers: &mut HeaderMap) {
        // 00-<trace id>-<span id>-<flags>, all lower-case hex.
        let mut value = Vec::with_capacity(55);
        value.extend_from_slice(b"00-");
        crate::hex::push(&mut value, &self.ids.trace_id.to_bytes());
        value.push(b'-');
        crate::hex::push(&mut value, &self.ids.span_id.to_bytes());
        value.push(b'-');
        crate::hex::push(&mut value, &[self.flags.to_u8()]);
        if let Ok(v) = HeaderValue::from_bytes(&value) {
            headers.insert(TRACEPARENT, v);
        }
        match &self.state {
            Some(state) => {
                headers.insert(TRACESTATE, state.clone());
            }
            None => {
                headers.remove(TRACESTATE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn a_valid_traceparent_is_joined_and_passed_on_with_the_proxy_s_span_as_parent() {
        let t = TraceCtx::join(&headers(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            ),
            ("tracestate", "vendor=x"),
        ]));
        assert_eq!(t.ids.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.ids.parent.unwrap().to_string(), "00f067aa0ba902b7");
        let mut out = HeaderMap::new();
        t.inject(&mut out);
        let sent = out.get("traceparent").unwrap().to_str().unwrap();
        assert_eq!(
            sent,
            format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-00", t.ids.span_id)
        );
        assert_eq!(out.get("tracestate").unwrap(), "vendor=x");
    }

    #[test]
    fn a_malformed_traceparent_starts_a_new_trace() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "garbage",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ] {
            let mut h = HeaderMap::new();
            h.insert("traceparent", HeaderValue::from_str(bad).unwrap());
            let t = TraceCtx::join(&h);
            assert!(t.ids.parent.is_none(), "{bad}");
            assert_ne!(
                t.ids.trace_id.to_string(),
                "4bf92f3577b34da6a3ce929d0e0e4736",
                "{bad}"
            );
        }
    }
}
