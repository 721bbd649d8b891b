//! `portcullis audit verify`: walks a JSON-lines export or a spool directory and reports gaps
//! in the sequence numbers and breaks in the hash chain, per instance.
//!
//! Each instance's records are checked in order: record n+1 must carry seq(n)+1 and
//! chain(n+1) = SHA-256(chain(n) ‖ body(n+1)). An instance's first record anchors its chain: from
//! the genesis value if its seq is 1, else as found (a spool whose start was already exported).
//! A break right after a gap is reported as the gap (the missing record is what cannot be
//! checked); a break anywhere else means a record was altered, removed or inserted.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::BufRead;
use std::path::Path;

use super::record::{GENESIS, next_chain, split_line};
use super::spool::Spool;

#[derive(Debug, Default)]
struct Instance {
    first: u64,
    last: u64,
    chain: String,
    records: u64,
}

/// What verify found.
#[derive(Debug, Default)]
pub struct Report {
    pub records: u64,
    /// (instance, first missing seq, last missing seq).
    pub gaps: Vec<(String, u64, u64)>,
    /// (where, what).
    pub breaks: Vec<(String, String)>,
    instances: BTreeMap<String, Instance>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.gaps.is_empty() && self.breaks.is_empty() && self.records > 0
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        for (id, i) in &self.instances {
            let _ = writeln!(
                out,
                "instance {id}: {} records, seq {}..{}",
                i.records, i.first, i.last
            );
        }
        for (id, from, to) in &self.gaps {
            let _ = writeln!(out, "GAP   instance {id}: seq {from}..{to} missing");
        }
        for (at, what) in &self.breaks {
            let _ = writeln!(out, "BREAK {at}: {what}");
        }
        let verdict = if self.ok() {
            "ok"
        } else if self.records == 0 {
            "FAILED: no sealed records"
        } else {
            "FAILED"
        };
        let _ = writeln!(
            out,
            "{} records, {} gaps, {} breaks: {verdict}",
            self.records,
            self.gaps.len(),
            self.breaks.len()
        );
        out
    }

    fn line(&mut self, at: &str, line: &[u8]) {
        let parsed = match split_line(line) {
            Ok(p) => p,
            Err(e) => {
                self.breaks.push((at.to_string(), e.to_string()));
                return;
            }
        };
        let (Some(seq), Some(id)) = (parsed.seq(), parsed.instance()) else {
            self.breaks.push((
                at.to_string(),
                "no portcullis.audit.seq or service.instance.id".into(),
            ));
            return;
        };
        self.records += 1;
        let instance = self.instances.entry(id.to_string()).or_default();
        let expected_previous = if instance.records == 0 {
            instance.first = seq;
            if seq == 1 { Some(GENESIS) } else { None }
        } else if seq == instance.last + 1 {
            Some(instance.chain.as_str())
        } else if seq > instance.last + 1 {
            self.gaps.push((id.to_string(), instance.last + 1, seq - 1));
            None
        } else {
            self.breaks.push((
                at.to_string(),
                format!(
                    "seq {seq} after seq {} (duplicate or out of order)",
                    instance.last
                ),
            ));
            None
        };
        if let Some(previous) = expected_previous
            && next_chain(previous, &parsed.body) != parsed.chain
        {
            self.breaks.push((
                at.to_string(),
                format!("seq {seq}: the chain value does not follow from the previous record (altered, inserted or removed)"),
            ));
        }
        instance.last = instance.last.max(seq);
        instance.records += 1;
        instance.chain = parsed.chain.to_string();
    }
}

/// Verifies a JSON-lines file, or every segment of a spool directory in order.
pub fn verify(path: &Path) -> std::io::Result<Report> {
    let files = if path.is_dir() {
        Spool::segment_paths(path)?
    } else {
        vec![path.to_path_buf()]
    };
    let mut report = Report::default();
    for file in files {
        let reader = std::io::BufReader::new(std::fs::File::open(&file)?);
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for (i, line) in reader.split(b'\n').enumerate() {
            let line = line?;
            if line.is_empty() {
                continue;
            }
            report.line(&format!("{name}:{}", i + 1), &line);
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::super::record::{Sealer, SpanMeta};
    use super::*;
    use opentelemetry::KeyValue;
    use opentelemetry::trace::SpanKind;
    use std::time::SystemTime;

    fn export(n: usize) -> Vec<Vec<u8>> {
        let mut sealer = Sealer::new("i-1");
        (0..n)
            .map(|i| {
                let meta = SpanMeta {
                    name: "access".into(),
                    kind: SpanKind::Server,
                    trace: super::super::TraceIds::fresh(),
                    start: SystemTime::now(),
                    end: SystemTime::now(),
                    error: None,
                };
                let (_, line) =
                    sealer.seal(meta.into_span(vec![KeyValue::new("portcullis.reason", format!("r{i}"))]));
                line
            })
            .collect()
    }

    fn check(lines: &[Vec<u8>]) -> Report {
        let mut r = Report::default();
        for (i, l) in lines.iter().enumerate() {
            r.line(&format!("line {}", i + 1), l);
        }
        r
    }

    #[test]
    fn an_untouched_export_verifies() {
        let r = check(&export(5));
        assert!(r.ok(), "{}", r.text());
        assert_eq!(r.records, 5);
    }

    #[test]
    fn a_removed_record_is_a_gap_and_an_altered_one_a_break() {
        let mut lines = export(6);
        lines.remove(2);
        let r = check(&lines);
        assert_eq!(r.gaps, vec![("i-1".to_string(), 3, 3)]);
        assert!(r.breaks.is_empty(), "{}", r.text());

        let mut lines = export(4);
        let text = String::from_utf8(lines[1].clone())
            .unwrap()
            .replace("\"r1\"", "\"r9\"");
        lines[1] = text.into_bytes();
        let r = check(&lines);
        assert!(r.gaps.is_empty());
        assert_eq!(r.breaks.len(), 1, "{}", r.text());
        assert!(r.breaks[0].1.contains("seq 2"), "{}", r.text());
    }

    #[test]
    fn a_reordered_or_duplicated_record_is_a_break() {
        let mut lines = export(3);
        lines.push(lines[1].clone());
        let r = check(&lines);
        assert!(!r.ok());
        assert!(r.breaks[0].1.contains("duplicate"), "{}", r.text());
    }

    #[test]
    fn a_spool_that_starts_mid_stream_is_anchored_at_its_first_record() {
        let lines = export(5);
        let r = check(&lines[2..]);
        assert!(r.ok(), "{}", r.text());
    }
}
