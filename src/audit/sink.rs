//! Where events go: the JSON-lines sink (stdout or a file), written by one thread so that a
//! request never waits on disk, and drained completely on shutdown.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use super::AccessEvent;

/// Anything that takes audit events. The OTLP exporter will be another implementation.
pub trait AuditSink: Send + Sync + 'static {
    fn emit(&self, event: AccessEvent);
    /// Writes out everything accepted so far; called on shutdown.
    fn flush(&self);
}

/// Events queued beyond this make `emit` wait for the writer instead of growing without bound.
const QUEUE: usize = 64 * 1024;

enum Msg {
    Event(Box<AccessEvent>),
    Flush(SyncSender<()>),
}

pub struct JsonlSink {
    tx: SyncSender<Msg>,
}

impl JsonlSink {
    /// `-` writes to standard output; anything else is a file opened for appending.
    pub fn open(path: &str) -> io::Result<Arc<Self>> {
        let out: Box<dyn Write + Send> = if path == "-" {
            Box::new(io::stdout())
        } else {
            Box::new(OpenOptions::new().create(true).append(true).open(path)?)
        };
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_loop(rx, BufWriter::with_capacity(64 * 1024, out)))?;
        Ok(Arc::new(JsonlSink { tx }))
    }
}

fn write_loop(rx: Receiver<Msg>, mut out: BufWriter<Box<dyn Write + Send>>) {
    let write = |out: &mut BufWriter<Box<dyn Write + Send>>, event: &AccessEvent| {
        if let Err(e) = serde_json::to_writer(&mut *out, event)
            .map_err(io::Error::from)
            .and_then(|()| out.write_all(b"\n"))
        {
            tracing::error!(error = %e, "audit sink write failed");
        }
    };
    while let Ok(msg) = rx.recv() {
        let mut acks = Vec::new();
        match msg {
            Msg::Event(event) => write(&mut out, &event),
            Msg::Flush(ack) => acks.push(ack),
        }
        // Drain whatever queued meanwhile, then flush once: one write(2) per burst, not per event.
        while let Ok(msg) = rx.try_recv() {
            match msg {
                Msg::Event(event) => write(&mut out, &event),
                Msg::Flush(ack) => acks.push(ack),
            }
        }
        if let Err(e) = out.flush() {
            tracing::error!(error = %e, "audit sink flush failed");
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
    let _ = out.flush();
}

impl AuditSink for JsonlSink {
    fn emit(&self, event: AccessEvent) {
        match self.tx.try_send(Msg::Event(Box::new(event))) {
            Ok(()) => {}
            // Full: wait rather than lose the record.
            Err(TrySendError::Full(msg)) => {
                let _ = self.tx.send(msg);
            }
            Err(TrySendError::Disconnected(_)) => tracing::error!("audit writer is gone; event lost"),
        }
    }

    fn flush(&self) {
        let (ack_tx, ack_rx) = sync_channel(1);
        if self.tx.send(Msg::Flush(ack_tx)).is_ok() {
            let _ = ack_rx.recv();
        }
    }
}
