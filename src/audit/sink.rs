//! The intake: where events leave the request path.
//!
//! A request only appends its event to a shared batch; one thread takes the whole batch 2 ms
//! after its first event, seals it (sequence numbers and the hash chain, in arrival order) and
//! hands it to a [`Delivery`]: a JSON-lines file, or the OTLP pipeline with its spool. So a
//! request never waits on disk or the network, only a batch's first event wakes the thread (one
//! wake-up per batch, not per request), and a burst costs one write. When the sealing thread
//! falls far behind, requests wait for it rather than lose events.
//! On shutdown [`AuditSink::flush`] drains everything.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use opentelemetry_sdk::trace::SpanData;

use super::record::Sealer;
use super::{AuditSink, Event};

/// A sealed record: the span to export (taken once it is on its way) and its written line
/// (with the newline), which is all the spool needs.
#[derive(Debug)]
pub struct Sealed {
    pub seq: u64,
    /// The record of a request refused because the trail was full (fail closed): the only kind
    /// of record a full spool may drop in that mode.
    pub refusal: bool,
    pub span: Option<SpanData>,
    pub line: Vec<u8>,
}

/// Where sealed records go. Runs on the sealing thread.
pub trait Delivery: Send + 'static {
    /// Whether records go on as spans too (the exporter), or as their lines only.
    const SPANS: bool;
    fn deliver(&mut self, batch: Vec<Sealed>);
    /// Returns once everything delivered so far is exported or on disk.
    fn flush(&mut self);
}

/// How long the sealing thread lets a batch gather once the first event is in. Long enough that
/// no request wakes it on its own and a burst costs one write; short enough that sealing runs in
/// short slices (about 80 events a batch at 40,000 req/s) that do not hold up the requests
/// sharing its core: at 20 ms the proxy's p99 was twice as high (benches/history/public-route.md,
/// `benches/load.sh`).
const WRITE_INTERVAL: Duration = Duration::from_millis(2);
/// A batch this large wakes it early.
const WAKE_AT: usize = 4096;
/// Beyond this many unsealed events, `emit` waits rather than grow without bound.
const MAX_PENDING: usize = 256 * 1024;

#[derive(Default)]
struct State {
    pending: Vec<Event>,
    /// Batches handed to the sealing thread so far, and batches it has finished delivering.
    taken: u64,
    written: u64,
    flush_wanted: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the sealing thread (a large batch, or a flush).
    work: Condvar,
    /// Wakes those waiting for it (space, or a finished flush).
    done: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means the thread panicked mid-batch; the queue itself is intact.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The audit sink every part of the proxy emits to.
pub struct Intake {
    shared: Arc<Shared>,
    admits: Arc<AtomicBool>,
}

impl Intake {
    /// Starts the sealing thread for `instance` (the `service.instance.id`). `admits` is the
    /// delivery's answer to [`AuditSink::admits`].
    pub fn start(
        instance: &str,
        delivery: impl Delivery,
        admits: Arc<AtomicBool>,
    ) -> io::Result<Arc<Intake>> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            done: Condvar::new(),
        });
        let thread = shared.clone();
        let sealer = Sealer::new(instance);
        std::thread::Builder::new()
            .name("audit-seal".into())
            .spawn(move || seal_loop(&thread, sealer, delivery))?;
        Ok(Arc::new(Intake { shared, admits }))
    }
}

fn seal_loop<D: Delivery>(shared: &Shared, mut sealer: Sealer, mut delivery: D) {
    let mut batch = Vec::new();
    loop {
        let flush = {
            let mut state = shared.lock();
            // Idle: asleep until the first event or a flush.
            while state.pending.is_empty() && !state.flush_wanted {
                state = match shared.work.wait(state) {
                    Ok(s) => s,
                    Err(poisoned) => poisoned.into_inner(),
                };
            }
            if !state.flush_wanted && state.pending.len() < WAKE_AT {
                state = match shared.work.wait_timeout(state, WRITE_INTERVAL) {
                    Ok((s, _)) => s,
                    Err(poisoned) => poisoned.into_inner().0,
                };
            }
            std::mem::swap(&mut batch, &mut state.pending);
            state.taken += 1;
            std::mem::take(&mut state.flush_wanted)
        };
        if !batch.is_empty() {
            let sealed = batch
                .drain(..)
                .map(|event| {
                    let refusal = event.is_audit_refusal();
                    let (span, line) = if D::SPANS {
                        let (span, line) = sealer.seal(event.into_span());
                        (Some(span), line)
                    } else {
                        (None, sealer.seal_event(event))
                    };
                    Sealed {
                        seq: sealer.seq(),
                        refusal,
                        span,
                        line,
                    }
                })
                .collect();
            delivery.deliver(sealed);
        }
        if flush {
            delivery.flush();
        }
        let mut state = shared.lock();
        state.written = state.taken;
        drop(state);
        shared.done.notify_all();
    }
}

impl AuditSink for Intake {
    fn emit(&self, event: Event) {
        let mut state = self.shared.lock();
        while state.pending.len() >= MAX_PENDING {
            state = match self.shared.done.wait(state) {
                Ok(s) => s,
                Err(poisoned) => poisoned.into_inner(),
            };
        }
        state.pending.push(event);
        // The first event of a batch starts the gathering; a full one ends it early.
        if state.pending.len() == 1 || state.pending.len() == WAKE_AT {
            self.shared.work.notify_one();
        }
    }

    fn flush(&self) {
        let mut state = self.shared.lock();
        // The batch taken after this point holds everything emitted so far.
        let target = state.taken + 1;
        state.flush_wanted = true;
        self.shared.work.notify_one();
        while state.written < target {
            state = match self.shared.done.wait(state) {
                Ok(s) => s,
                Err(poisoned) => poisoned.into_inner(),
            };
        }
    }

    fn admits(&self) -> bool {
        self.admits.load(Ordering::Relaxed)
    }
}

/// Sealed lines to standard output or a file: the sink when no exporter is configured.
pub struct JsonlSink {
    out: BufWriter<Box<dyn Write + Send>>,
}

impl JsonlSink {
    /// `-` writes to standard output; anything else is a file opened for appending.
    pub fn open(path: &str, instance: &str) -> io::Result<Arc<Intake>> {
        let out: Box<dyn Write + Send> = if path == "-" {
            Box::new(io::stdout())
        } else {
            Box::new(OpenOptions::new().create(true).append(true).open(path)?)
        };
        let sink = JsonlSink {
            out: BufWriter::with_capacity(256 * 1024, out),
        };
        Intake::start(instance, sink, Arc::new(AtomicBool::new(true)))
    }
}

impl Delivery for JsonlSink {
    const SPANS: bool = false;
    fn deliver(&mut self, batch: Vec<Sealed>) {
        for record in batch {
            if let Err(e) = self.out.write_all(&record.line) {
                tracing::error!(error = %e, "audit sink write failed");
            }
        }
        if let Err(e) = self.out.flush() {
            tracing::error!(error = %e, "audit sink flush failed");
        }
    }

    fn flush(&mut self) {
        if let Err(e) = self.out.flush() {
            tracing::error!(error = %e, "audit sink flush failed");
        }
    }
}
