//! Where events go: the JSON-lines sink (stdout or a file).
//!
//! A request only appends its event to a shared batch; one writer thread takes the whole batch
//! every few milliseconds, serializes it and writes it with one system call. So a request never
//! waits on disk and never wakes another thread, and a burst costs one write. Nothing is dropped:
//! when the writer falls far behind, requests wait for it. On shutdown `flush` drains everything.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::Event;

/// Anything that takes audit events. The OTLP exporter will be another implementation.
pub trait AuditSink: Send + Sync + 'static {
    fn emit(&self, event: Event);
    /// Returns once everything emitted before the call has been written out.
    fn flush(&self);
}

/// How often the writer wakes on its own to write what has gathered.
const WRITE_INTERVAL: Duration = Duration::from_millis(20);
/// A batch this large wakes the writer early.
const WAKE_AT: usize = 4096;
/// Beyond this many unwritten events, `emit` waits for the writer rather than grow without bound.
const MAX_PENDING: usize = 256 * 1024;

#[derive(Default)]
struct State {
    pending: Vec<Event>,
    /// Batches handed to the writer so far, and batches it has finished writing.
    taken: u64,
    written: u64,
    flush_wanted: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the writer (a large batch, or a flush).
    work: Condvar,
    /// Wakes those waiting for the writer (space, or a finished flush).
    done: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a writer panicked mid-batch; the queue itself is intact.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub struct JsonlSink {
    shared: Arc<Shared>,
}

impl JsonlSink {
    /// `-` writes to standard output; anything else is a file opened for appending.
    pub fn open(path: &str) -> io::Result<Arc<Self>> {
        let out: Box<dyn Write + Send> = if path == "-" {
            Box::new(io::stdout())
        } else {
            Box::new(OpenOptions::new().create(true).append(true).open(path)?)
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            done: Condvar::new(),
        });
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_loop(&writer, BufWriter::with_capacity(256 * 1024, out)))?;
        Ok(Arc::new(JsonlSink { shared }))
    }
}

fn write_loop(shared: &Shared, mut out: BufWriter<Box<dyn Write + Send>>) {
    let mut batch = Vec::new();
    loop {
        {
            let mut state = shared.lock();
            if state.pending.is_empty() && !state.flush_wanted {
                state = match shared.work.wait_timeout(state, WRITE_INTERVAL) {
                    Ok((s, _)) => s,
                    Err(poisoned) => poisoned.into_inner().0,
                };
            }
            std::mem::swap(&mut batch, &mut state.pending);
            state.flush_wanted = false;
            state.taken += 1;
        }
        for event in batch.drain(..) {
            let line = serde_json::to_writer(&mut out, &event)
                .map_err(io::Error::from)
                .and_then(|()| out.write_all(b"\n"));
            if let Err(e) = line {
                tracing::error!(error = %e, "audit sink write failed");
            }
        }
        if let Err(e) = out.flush() {
            tracing::error!(error = %e, "audit sink flush failed");
        }
        let mut state = shared.lock();
        state.written = state.taken;
        drop(state);
        shared.done.notify_all();
    }
}

impl AuditSink for JsonlSink {
    fn emit(&self, event: Event) {
        let mut state = self.shared.lock();
        while state.pending.len() >= MAX_PENDING {
            state = match self.shared.done.wait(state) {
                Ok(s) => s,
                Err(poisoned) => poisoned.into_inner(),
            };
        }
        state.pending.push(event);
        if state.pending.len() == WAKE_AT {
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
}
