//! The audit processor in front of the OTLP exporter: nothing is lost without a count.
//!
//! Sealed records form one ordered stream. Its head is a bounded queue in memory; when the queue
//! is full (the exporter is slow) or an export fails (the collector is down), the rest of the
//! stream goes to the on-disk [`Spool`], and while anything is spooled new records follow it
//! there, so the collector receives records in sequence order. One export thread (its own
//! current-thread runtime) sends the memory queue first, then replays the spool; a failed memory
//! batch is written to the spool at once (as a segment that sorts first) and retried from there.
//!
//! When the spool is full, the operator's choice applies (`audit.spool.when_full`): fail closed
//! ([`AuditSink::admits`](super::AuditSink::admits) turns false, new requests get 503
//! `audit_unavailable`; records of requests already admitted are written whatever the size, and
//! the refusals' own records use a reserve of 1/16 of the spool), or fail open (records that do
//! not fit are dropped and counted, and `portcullis_audit_spool_full` is 1). Admission reopens
//! once the spool is below 7/8 of its size.
//!
//! Delivery is at least once: an export that timed out may have reached the collector and is
//! sent again from the spool, and a crash between an export and the cursor update replays that
//! chunk after the restart. Consumers de-duplicate on (`service.instance.id`,
//! `portcullis.audit.seq`) or on the span id, which replays keep.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use tokio::sync::Notify;

use super::otlp;
use super::record::parse_line;
use super::sink::{Delivery, Intake, Sealed};
use super::spool::{Chunk, Spool, SpoolError};
use crate::config::{Audit, WhenFull};
use crate::metrics::AuditStats;

/// Why the pipeline could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("audit.spool.dir: cannot use {dir}: {source}")]
    Spool { dir: String, source: std::io::Error },
    #[error(transparent)]
    Exporter(#[from] otlp::BuildError),
    #[error("audit: cannot start the export thread: {0}")]
    Thread(std::io::Error),
}

/// How long a part-full batch in memory waits for more records before it is exported (the
/// stock batch processor's scheduled delay): records arrive every 2 ms in small sealing
/// batches, and each export request has its own fixed work (a gRPC call or an HTTP request, the
/// resource and scope) that a full batch spreads over more spans.
const GATHER: Duration = Duration::from_millis(20);

struct Flow {
    /// The head of the stream.
    queue: VecDeque<Sealed>,
    /// Something is (or was just) on disk: new records go there, behind it.
    spooling: bool,
    spool: Spool,
    /// Shutdown: export what is in memory until `deadline`, spool the rest, stop.
    closing: Option<Instant>,
    stopped: bool,
    /// Fail closed: bytes of refusals' records spooled since the spool filled.
    refusal_bytes: u64,
}

struct Shared {
    flow: Mutex<Flow>,
    /// Wakes the export thread.
    wake: Notify,
    /// Wakes `flush` once the export thread stopped.
    stopped: Condvar,
    admits: Arc<AtomicBool>,
    stats: AuditStats,
    queue_size: usize,
    batch_size: usize,
    when_full: WhenFull,
    max_bytes: u64,
    drain: Duration,
    timeout: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Flow> {
        self.flow.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records wait in memory for a full batch (not while shutting down).
    fn gathering(&self) -> bool {
        let flow = self.lock();
        !flow.queue.is_empty() && flow.queue.len() < self.batch_size && flow.closing.is_none()
    }

    /// Opens or closes admission from the spool's size (or a write it just `refused`), and
    /// mirrors it in the gauges.
    fn update_admission(&self, flow: &mut Flow, refused: bool) {
        let bytes = flow.spool.bytes();
        self.stats
            .spool_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        let was_full = self.stats.spool_full.get() == 1;
        let full = refused
            || if was_full {
                bytes >= self.max_bytes / 8 * 7
            } else {
                bytes >= self.max_bytes
            };
        if full != was_full {
            self.stats.spool_full.set(i64::from(full));
            match (full, self.when_full) {
                (true, WhenFull::FailClosed) => {
                    tracing::error!(
                        bytes,
                        "audit spool full: refusing new requests (audit_unavailable) until it drains"
                    )
                }
                (true, WhenFull::FailOpen) => {
                    tracing::error!(
                        bytes,
                        "audit spool full: serving on, audit records that do not fit are DROPPED"
                    )
                }
                (false, _) => {
                    flow.refusal_bytes = 0;
                    tracing::warn!(bytes, "audit spool below its limit again");
                }
            }
        }
        let admit = !(full && self.when_full == WhenFull::FailClosed);
        self.admits.store(admit, Ordering::Relaxed);
    }

    /// Writes `records` (in order) to the spool, as the head's continuation or, for records
    /// taken back from memory, as a segment that sorts before it. Fail closed, the records of
    /// admitted requests are always written (the spool may pass its size by what was on its way
    /// when it filled); only refusals beyond the reserve are dropped. Fail open, what does not fit
    /// is dropped.
    fn spool(&self, flow: &mut Flow, records: &[Sealed], early: bool) {
        let Some(first) = records.first() else {
            return;
        };
        let n = records.len() as u64;
        let written = match self.when_full {
            WhenFull::FailOpen => {
                let lines: Vec<u8> = records.iter().flat_map(|r| r.line.iter().copied()).collect();
                match self.write(flow, first.seq, &lines, early, self.max_bytes) {
                    Some(true) => n,
                    _ => 0,
                }
            }
            WhenFull::FailClosed => {
                // Admitted requests always; refusals while their reserve lasts.
                let reserve = self.max_bytes / 16;
                let mut lines = Vec::new();
                let mut kept = 0;
                let mut first_seq = None;
                for r in records {
                    let len = r.line.len() as u64;
                    if r.refusal {
                        if flow.refusal_bytes + len > reserve {
                            continue;
                        }
                        flow.refusal_bytes += len;
                    }
                    first_seq.get_or_insert(r.seq);
                    lines.extend_from_slice(&r.line);
                    kept += 1;
                }
                match first_seq {
                    Some(seq) if self.write(flow, seq, &lines, early, u64::MAX) == Some(true) => kept,
                    _ => 0,
                }
            }
        };
        self.stats.spooled.inc_by(written);
        self.stats.dropped.inc_by(n - written);
        self.update_admission(flow, written < n && self.when_full == WhenFull::FailOpen);
    }

    /// Writes whole lines under `limit`: Some(true) written, Some(false) did not fit, None the
    /// disk failed (logged; fail closed, admission closes).
    fn write(&self, flow: &mut Flow, first_seq: u64, lines: &[u8], early: bool, limit: u64) -> Option<bool> {
        let result = if early {
            flow.spool.write_early(first_seq, lines, limit)
        } else {
            flow.spool.append(first_seq, lines, limit)
        };
        match result {
            Ok(()) => Some(true),
            Err(SpoolError::Full { .. }) => Some(false),
            Err(SpoolError::Io(e)) => {
                tracing::error!(error = %e, "audit spool write failed: records lost");
                if self.when_full == WhenFull::FailClosed {
                    self.admits.store(false, Ordering::Relaxed);
                }
                None
            }
        }
    }
}

/// The sealing thread's side: queue or spool.
struct ToExporter(Arc<Shared>);

impl Delivery for ToExporter {
    const SPANS: bool = true;
    fn deliver(&mut self, batch: Vec<Sealed>) {
        let shared = &self.0;
        let mut flow = shared.lock();
        if !flow.spooling && !flow.stopped && flow.queue.len() + batch.len() <= shared.queue_size {
            flow.queue.extend(batch);
            shared.stats.queued.set(gauge(flow.queue.len()));
            drop(flow);
            shared.wake.notify_one();
            return;
        }
        flow.spooling = true;
        shared.spool(&mut flow, &batch, false);
        if let Err(e) = flow.spool.sync() {
            tracing::error!(error = %e, "audit spool fsync failed");
        }
        drop(flow);
        shared.wake.notify_one();
    }

    fn flush(&mut self) {
        let shared = &self.0;
        let mut flow = shared.lock();
        if flow.closing.is_none() {
            flow.closing = Some(Instant::now() + shared.drain);
        }
        shared.wake.notify_one();
        let give_up = Instant::now() + shared.drain + shared.timeout + Duration::from_secs(2);
        while !flow.stopped {
            let left = give_up.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // The export thread is gone or stuck: keep what memory holds on disk ourselves.
                let records: Vec<Sealed> = flow.queue.drain(..).collect();
                shared.stats.queued.set(0);
                shared.spool(&mut flow, &records, true);
                break;
            }
            flow = match shared.stopped.wait_timeout(flow, left) {
                Ok((f, _)) => f,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        if let Err(e) = flow.spool.sync() {
            tracing::error!(error = %e, "audit spool fsync failed");
        }
    }
}

/// Starts the OTLP pipeline: opens the spool, builds the exporter on its own thread, and
/// returns the sink the proxy emits to.
pub fn start(
    audit: &Audit,
    instance: &str,
    stats: AuditStats,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<Intake>, StartError> {
    let (Some(otlp), Some(dir)) = (&audit.otlp, &audit.spool.dir) else {
        return Err(StartError::Exporter(otlp::BuildError {
            key: "audit.otlp".into(),
            message: "needs an exporter and audit.spool.dir".into(),
        }));
    };
    let spool = Spool::open(dir, audit.spool.max_bytes).map_err(|source| StartError::Spool {
        dir: dir.display().to_string(),
        source,
    })?;
    let admits = Arc::new(AtomicBool::new(true));
    let backlog = !spool.is_drained();
    let shared = Arc::new(Shared {
        flow: Mutex::new(Flow {
            queue: VecDeque::new(),
            spooling: backlog,
            spool,
            closing: None,
            stopped: false,
            refusal_bytes: 0,
        }),
        wake: Notify::new(),
        stopped: Condvar::new(),
        admits: admits.clone(),
        stats,
        queue_size: audit.queue_size,
        batch_size: otlp.batch_size,
        when_full: audit.spool.when_full,
        max_bytes: audit.spool.max_bytes,
        drain: otlp.timeout.get().min(Duration::from_secs(5)),
        timeout: otlp.timeout.get(),
    });
    shared.update_admission(&mut shared.lock(), false);

    let (built, ready) = std::sync::mpsc::sync_channel(1);
    let thread = shared.clone();
    let config = audit.clone();
    let own = instance.to_string();
    std::thread::Builder::new()
        .name("audit-export".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    let _ = built.send(Err(otlp::BuildError {
                        key: "audit".into(),
                        message: format!("cannot start the export runtime: {e}"),
                    }));
                    return;
                }
            };
            runtime.block_on(async move {
                match otlp::build(&config, &own, &provider) {
                    Ok(exporter) => {
                        let _ = built.send(Ok(()));
                        export_loop(&thread, exporter, &config, own).await;
                    }
                    Err(e) => {
                        let _ = built.send(Err(e));
                    }
                }
            });
        })
        .map_err(StartError::Thread)?;
    match ready.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => {
            return Err(StartError::Thread(std::io::Error::other(
                "the export thread stopped",
            )));
        }
    }
    if backlog {
        tracing::info!("audit spool holds records from an earlier run: replaying them first");
    }
    Intake::start(instance, ToExporter(shared), admits).map_err(StartError::Thread)
}

enum Work {
    Memory(Vec<Sealed>),
    Disk(Chunk),
    Idle,
    Stop,
}

async fn export_loop(
    shared: &Shared,
    mut exporter: opentelemetry_otlp::SpanExporter,
    audit: &Audit,
    own: String,
) {
    let mut resource_of = own.clone();
    let mut backoff: Option<Duration> = None;
    loop {
        let gather_until = tokio::time::Instant::now() + GATHER;
        while shared.gathering() {
            if tokio::time::timeout_at(gather_until, shared.wake.notified())
                .await
                .is_err()
            {
                break;
            }
        }
        let work = next_work(shared);
        let failed = match work {
            Work::Stop => {
                let mut flow = shared.lock();
                let records: Vec<Sealed> = flow.queue.drain(..).collect();
                shared.stats.queued.set(0);
                shared.spool(&mut flow, &records, true);
                if let Err(e) = flow.spool.sync() {
                    tracing::error!(error = %e, "audit spool fsync failed");
                }
                flow.stopped = true;
                drop(flow);
                shared.stopped.notify_all();
                let _ = exporter.shutdown();
                return;
            }
            Work::Idle => {
                let _ = tokio::time::timeout(Duration::from_secs(1), shared.wake.notified()).await;
                continue;
            }
            Work::Memory(batch) => {
                if resource_of != own {
                    exporter.set_resource(&otlp::resource(audit, &own));
                    resource_of.clone_from(&own);
                }
                let n = batch.len() as u64;
                // The spans go to the exporter; the lines stay here for the spool.
                let mut taken = batch;
                let spans: Vec<SpanData> = taken.iter_mut().filter_map(|s| s.span.take()).collect();
                if export(&exporter, spans, shared.timeout, &shared.stats.export_seconds).await {
                    shared.stats.exported.inc_by(n);
                    false
                } else {
                    // Back to the head of the stream, on disk, with everything queued behind it.
                    let mut flow = shared.lock();
                    let mut taken = taken;
                    taken.extend(flow.queue.drain(..));
                    shared.stats.queued.set(0);
                    flow.spooling = true;
                    shared.spool(&mut flow, &taken, true);
                    true
                }
            }
            Work::Disk(chunk) => {
                if chunk.damaged > 0 {
                    tracing::error!(lines = chunk.damaged, "damaged audit spool lines skipped");
                    shared.stats.dropped.inc_by(chunk.damaged);
                }
                let mut spans = Vec::with_capacity(chunk.lines.len());
                let mut instance = None;
                for line in &chunk.lines {
                    match parse_line(line) {
                        Ok((i, span)) => {
                            instance.get_or_insert(i);
                            spans.push(span);
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "unreadable audit spool line skipped");
                            shared.stats.dropped.inc();
                        }
                    }
                }
                if let Some(instance) = instance
                    && instance != resource_of
                {
                    exporter.set_resource(&otlp::resource(audit, &instance));
                    resource_of = instance;
                }
                let n = spans.len() as u64;
                if spans.is_empty()
                    || export(&exporter, spans, shared.timeout, &shared.stats.export_seconds).await
                {
                    shared.stats.replayed.inc_by(n);
                    let mut flow = shared.lock();
                    if let Err(e) = flow.spool.commit(&chunk.ticket) {
                        tracing::error!(error = %e, "audit spool cursor update failed (records may be sent twice)");
                    }
                    shared.update_admission(&mut flow, false);
                    false
                } else {
                    true
                }
            }
        };
        if failed {
            shared.stats.export_failures.inc();
            let wait = otlp::backoff(backoff);
            backoff = Some(wait);
            // New records wake the thread all the time; only shutdown cuts the pause short.
            let until = Instant::now() + wait;
            while Instant::now() < until && shared.lock().closing.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        } else {
            backoff = None;
        }
    }
}

fn next_work(shared: &Shared) -> Work {
    let mut flow = shared.lock();
    let closing = flow.closing;
    if let Some(deadline) = closing
        && (Instant::now() >= deadline || flow.queue.is_empty())
    {
        return Work::Stop;
    }
    if !flow.queue.is_empty() {
        let n = shared.batch_size.min(flow.queue.len());
        let batch = flow.queue.drain(..n).collect();
        shared.stats.queued.set(gauge(flow.queue.len()));
        return Work::Memory(batch);
    }
    match flow.spool.read(shared.batch_size) {
        Ok(Some(chunk)) => Work::Disk(chunk),
        Ok(None) => {
            flow.spooling = false;
            Work::Idle
        }
        Err(e) => {
            tracing::error!(error = %e, "audit spool read failed");
            Work::Idle
        }
    }
}

async fn export(
    exporter: &opentelemetry_otlp::SpanExporter,
    spans: Vec<SpanData>,
    timeout: Duration,
    took: &prometheus_client::metrics::histogram::Histogram,
) -> bool {
    let started = Instant::now();
    let result = tokio::time::timeout(timeout + Duration::from_secs(1), exporter.export(spans)).await;
    took.observe(started.elapsed().as_secs_f64());
    match result {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "audit export failed; records go to the spool");
            false
        }
        Err(_) => {
            tracing::warn!("audit export timed out; records go to the spool");
            false
        }
    }
}

/// A length as a gauge's value.
fn gauge(len: usize) -> i64 {
    i64::try_from(len).unwrap_or(i64::MAX)
}
