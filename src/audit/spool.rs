//! The on-disk spool: where sealed records wait while the collector is slow or down.
//!
//! A directory of append-only segment files, one sealed line per record, named
//! `<epoch>-<first seq>.spool` so that name order is record order: the epoch grows by one each
//! time a process opens the spool, and within a process a segment's records all precede those of
//! any segment with a higher first sequence number. Records are appended to the head segment and
//! fsync'd in batches; records flushed from memory (they always precede what is on disk) are
//! written as a segment of their own, which sorts first. Replay always reads the lowest segment,
//! from the offset the `cursor` file remembers, so records leave in order; a fully replayed
//! segment is deleted. The directory is locked while a process uses it.
//!
//! Untrusted input: the segment files (a disk fault or an operator may damage them). A damaged
//! line is skipped and counted, never a panic.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// A segment is closed and a new one begun beyond this size.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
const SUFFIX: &str = ".spool";

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool is full ({bytes} of {max} bytes)")]
    Full { bytes: u64, max: u64 },
    #[error("{0}")]
    Io(#[from] io::Error),
}

#[derive(Debug)]
struct Segment {
    /// Bytes written.
    len: u64,
    /// Bytes already replayed (exported), from the start.
    read: u64,
}

/// Records read for replay, and how to mark them exported.
#[derive(Debug)]
pub struct Chunk {
    pub lines: Vec<Vec<u8>>,
    /// Lines that could not be read back (an incomplete last line after a crash).
    pub damaged: u64,
    pub ticket: Ticket,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    segment: String,
    end: u64,
}

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    epoch: u64,
    max_bytes: u64,
    segments: BTreeMap<String, Segment>,
    /// The segment being appended to.
    head: Option<(String, File)>,
    unsynced: bool,
    _lock: File,
}

impl Spool {
    /// Opens (creating with mode 0700) and locks `dir`, and finds what earlier runs left.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Spool> {
        create_private_dir(dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))?;
        lock.try_lock().map_err(|_| {
            io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is in use by another process", dir.display()),
            )
        })?;
        let cursor = read_cursor(&dir.join("cursor"));
        let mut segments = BTreeMap::new();
        let mut epoch = 0;
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(SUFFIX) else {
                continue;
            };
            let Some(e) = stem.split('-').next().and_then(|e| e.parse::<u64>().ok()) else {
                continue;
            };
            epoch = epoch.max(e);
            let len = entry.metadata()?.len();
            let read = cursor.get(&name).copied().unwrap_or(0).min(len);
            segments.insert(name, Segment { len, read });
        }
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            epoch: epoch + 1,
            max_bytes,
            segments,
            head: None,
            unsynced: false,
            _lock: lock,
        };
        spool.forget_replayed()?;
        Ok(spool)
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.segments.values().map(|s| s.len).sum()
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// No record waits for replay.
    pub fn is_drained(&self) -> bool {
        self.segments.values().all(|s| s.read >= s.len)
    }

    fn name(&self, first_seq: u64) -> String {
        format!("{:010}-{first_seq:020}{SUFFIX}", self.epoch)
    }

    fn room(&self, extra: u64, limit: u64) -> Result<(), SpoolError> {
        let bytes = self.bytes();
        if bytes + extra > limit {
            return Err(SpoolError::Full { bytes, max: limit });
        }
        Ok(())
    }

    /// Appends whole lines to the head segment; `first_seq` names a new segment. `limit` is the
    /// size the caller allows (the configured maximum, or more for a fail-closed reserve).
    pub fn append(&mut self, first_seq: u64, lines: &[u8], limit: u64) -> Result<(), SpoolError> {
        let extra = lines.len() as u64;
        self.room(extra, limit)?;
        let rotate = match &self.head {
            Some((name, _)) => self.segments.get(name).is_none_or(|s| s.len >= SEGMENT_BYTES),
            None => true,
        };
        if rotate {
            self.sync()?;
            let name = self.name(first_seq);
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(&name))?;
            sync_dir(&self.dir)?;
            self.segments.insert(name.clone(), Segment { len: 0, read: 0 });
            self.head = Some((name, file));
        }
        if let Some((name, file)) = &mut self.head {
            file.write_all(lines)?;
            if let Some(s) = self.segments.get_mut(name) {
                s.len += extra;
            }
            self.unsynced = true;
        }
        Ok(())
    }

    /// Writes records that precede everything spooled (memory flushed on a failed export or at
    /// shutdown) as a complete segment of their own, durable on return.
    pub fn write_early(&mut self, first_seq: u64, lines: &[u8], limit: u64) -> Result<(), SpoolError> {
        self.room(lines.len() as u64, limit)?;
        let name = self.name(first_seq);
        let tmp = self.dir.join(format!("{name}.tmp"));
        {
            let mut file = File::create(&tmp)?;
            file.write_all(lines)?;
            file.sync_data()?;
        }
        fs::rename(&tmp, self.dir.join(&name))?;
        sync_dir(&self.dir)?;
        let len = lines.len() as u64;
        match self.segments.get_mut(&name) {
            // Same name as the head (it began with this very sequence number): cannot happen, as
            // memory records precede the head's; refuse rather than overwrite.
            Some(_) => {
                return Err(SpoolError::Io(io::Error::other(format!(
                    "spool segment {name} exists"
                ))));
            }
            None => {
                self.segments.insert(name, Segment { len, read: 0 });
            }
        }
        Ok(())
    }

    /// Makes appended records durable.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.unsynced
            && let Some((_, file)) = &self.head
        {
            file.sync_data()?;
        }
        self.unsynced = false;
        Ok(())
    }

    /// Up to `max` records from the lowest segment with unread records.
    pub fn read(&mut self, max: usize) -> io::Result<Option<Chunk>> {
        let Some((name, segment)) = self.segments.iter().find(|(_, s)| s.read < s.len) else {
            return Ok(None);
        };
        let mut file = File::open(self.dir.join(name))?;
        file.seek(SeekFrom::Start(segment.read))?;
        let mut reader = BufReader::with_capacity(256 * 1024, file.take(segment.len - segment.read));
        let mut lines = Vec::new();
        let mut end = segment.read;
        let mut damaged = 0;
        while lines.len() < max {
            let mut line = Vec::with_capacity(1024);
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            end += n as u64;
            if line.last() == Some(&b'\n') {
                lines.push(line);
            } else {
                // Only a crash mid-write leaves a line without its end.
                damaged += 1;
            }
        }
        Ok(Some(Chunk {
            lines,
            damaged,
            ticket: Ticket {
                segment: name.clone(),
                end,
            },
        }))
    }

    /// Marks a chunk exported: its records will not be replayed again (unless the cursor is
    /// lost in a crash, which replays them once more: at least once).
    pub fn commit(&mut self, ticket: &Ticket) -> io::Result<()> {
        if let Some(s) = self.segments.get_mut(&ticket.segment) {
            s.read = s.read.max(ticket.end);
        }
        self.forget_replayed()?;
        self.write_cursor()
    }

    /// Deletes fully replayed segments (the head too, so the next append starts a new one).
    fn forget_replayed(&mut self) -> io::Result<()> {
        let done: Vec<String> = self
            .segments
            .iter()
            .filter(|(_, s)| s.read >= s.len)
            .map(|(n, _)| n.clone())
            .collect();
        for name in done {
            if self.head.as_ref().is_some_and(|(h, _)| *h == name) {
                self.head = None;
                self.unsynced = false;
            }
            self.segments.remove(&name);
            match fs::remove_file(self.dir.join(&name)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    fn write_cursor(&self) -> io::Result<()> {
        let text: String = self
            .segments
            .iter()
            .filter(|(_, s)| s.read > 0)
            .map(|(n, s)| format!("{n} {}\n", s.read))
            .collect();
        let tmp = self.dir.join("cursor.tmp");
        fs::write(&tmp, text)?;
        fs::rename(tmp, self.dir.join("cursor"))
    }

    /// Segment files in record order, for `audit verify DIR`.
    pub fn segment_paths(dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut paths: Vec<PathBuf> = fs::read_dir(dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "spool"))
            .collect();
        paths.sort();
        Ok(paths)
    }
}

fn read_cursor(path: &Path) -> BTreeMap<String, u64> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (name, offset) = l.split_once(' ')?;
            Some((name.to_string(), offset.trim().parse().ok()?))
        })
        .collect()
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn lines(from: u64, n: u64) -> Vec<u8> {
        (from..from + n)
            .flat_map(|i| format!("record {i}\n").into_bytes())
            .collect()
    }

    fn replay_all(spool: &mut Spool) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(chunk) = spool.read(3).unwrap() {
            out.extend(
                chunk
                    .lines
                    .iter()
                    .map(|l| String::from_utf8_lossy(l).trim().to_string()),
            );
            spool.commit(&chunk.ticket).unwrap();
        }
        out
    }

    #[test]
    fn records_flushed_from_memory_are_replayed_before_those_already_spooled() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.append(11, &lines(11, 5), u64::MAX).unwrap();
        spool.write_early(4, &lines(4, 7), u64::MAX).unwrap();
        spool.sync().unwrap();
        let got = replay_all(&mut spool);
        let want: Vec<String> = (4..16).map(|i| format!("record {i}")).collect();
        assert_eq!(got, want);
        assert!(spool.is_drained());
        assert_eq!(spool.bytes(), 0, "replayed segments are deleted");
    }

    #[test]
    fn a_restart_resumes_replay_where_the_cursor_stopped_and_after_the_old_records() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
            spool.append(1, &lines(1, 10), u64::MAX).unwrap();
            spool.sync().unwrap();
            let chunk = spool.read(4).unwrap().unwrap();
            spool.commit(&chunk.ticket).unwrap();
        }
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        // The new process numbers its records from 1 again, in a later epoch.
        spool.append(1, b"new 1\n", u64::MAX).unwrap();
        let got = replay_all(&mut spool);
        let mut want: Vec<String> = (5..11).map(|i| format!("record {i}")).collect();
        want.push("new 1".into());
        assert_eq!(got, want);
    }

    #[test]
    fn a_full_spool_refuses_records_and_takes_them_again_once_drained() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 100).unwrap();
        spool.append(1, &[b'x'; 60], 100).unwrap();
        assert!(matches!(
            spool.append(2, &[b'x'; 60], 100),
            Err(SpoolError::Full { .. })
        ));
        assert!(
            spool.append(2, &[b'x'; 60], 200).is_ok(),
            "a larger limit (the reserve) admits it"
        );
    }

    #[test]
    fn a_spool_directory_is_used_by_one_process_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Spool::open(dir.path(), 100).unwrap();
        let second = Spool::open(dir.path(), 100).unwrap_err();
        assert!(second.to_string().contains("in use"), "{second}");
    }

    #[test]
    fn an_incomplete_last_line_is_counted_as_damaged_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("0000000001-00000000000000000001.spool"),
            b"one\ntwo\nthr",
        )
        .unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let chunk = spool.read(10).unwrap().unwrap();
        assert_eq!(chunk.lines.len(), 2);
        assert_eq!(chunk.damaged, 1);
        spool.commit(&chunk.ticket).unwrap();
        assert!(spool.is_drained());
    }
}
