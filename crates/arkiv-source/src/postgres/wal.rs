//! PostgreSQL's write-ahead log in the repository: file names, LSNs, and
//! the `archive_command` / `restore_command` halves (`wal-push`,
//! `wal-fetch`).
//!
//! Each WAL file is kept whole as an archived file under its own name
//! (see `arkiv_repo::archive`): PostgreSQL asks for WAL by name, one file
//! at a time, and it is expired by age, not by reference.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use arkiv_repo::{ArchivedMeta, Repository};
use chrono::{DateTime, Utc};
use rayon::prelude::*;

use crate::error::{Error, Result};

/// The default WAL segment size; `initdb --wal-segsize` can change it,
/// which is why a segment's own header is read when the size matters.
pub const DEFAULT_SEGMENT_SIZE: u64 = 16 << 20;

/// zstd level for archived WAL unless told otherwise. Archiving speed
/// bounds how far the archive trails the server, and on WAL full of page
/// images level 3 costs twice level 1's CPU for a few percent of size
/// (measured in docs/benchmarks.md §8).
pub const WAL_COMPRESSION: i32 = 1;

/// A position in the WAL, written `X/Y` (high and low 32 bits in hex).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl FromStr for Lsn {
    type Err = Error;
    fn from_str(s: &str) -> Result<Lsn> {
        let bad = || Error::Invalid(format!("'{s}' is not an LSN (write it as PostgreSQL does, e.g. 0/3000028)"));
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn(((hi as u64) << 32) | lo as u64))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// A WAL segment: timeline and segment number (the LSN divided by the
/// segment size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Segment {
    pub timeline: u32,
    pub number: u64,
}

impl Segment {
    /// The segment holding `lsn` on `timeline`.
    pub fn of(timeline: u32, lsn: Lsn, size: u64) -> Segment {
        Segment { timeline, number: lsn.0 / size }
    }

    /// The segment holding the byte just before `lsn`: the last one a
    /// backup that stopped at `lsn` needs (PostgreSQL's `XLByteToPrevSeg`).
    pub fn before(timeline: u32, lsn: Lsn, size: u64) -> Segment {
        Segment { timeline, number: lsn.0.saturating_sub(1) / size }
    }

    /// The file name, `TTTTTTTTXXXXXXXXYYYYYYYY`.
    pub fn name(&self, size: u64) -> String {
        let per_log = 0x1_0000_0000 / size;
        format!("{:08X}{:08X}{:08X}", self.timeline, self.number / per_log, self.number % per_log)
    }

    /// Parses a segment file name (without suffix).
    pub fn parse(name: &str, size: u64) -> Option<Segment> {
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let part = |r: std::ops::Range<usize>| u32::from_str_radix(&name[r], 16).ok();
        let per_log = 0x1_0000_0000 / size;
        let (tli, log, seg) = (part(0..8)?, part(8..16)? as u64, part(16..24)? as u64);
        (seg < per_log).then_some(Segment { timeline: tli, number: log * per_log + seg })
    }
}

/// What a file that PostgreSQL archives is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalFile {
    /// A complete segment: `000000010000000000000003`.
    Segment(String),
    /// A segment still being written, as `pg_receivewal` streams it:
    /// `000000010000000000000003.partial`.
    Partial(String),
    /// A timeline's history: `00000002.history`.
    History(u32),
    /// A backup history file: `000000010000000000000003.00000028.backup`.
    BackupHistory(String),
}

impl WalFile {
    /// Recognises a WAL file name; anything else is refused so a
    /// mistyped `%p` cannot store an arbitrary file.
    pub fn parse(name: &str) -> Option<WalFile> {
        let hex =
            |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase());
        if hex(name, 24) {
            return Some(WalFile::Segment(name.to_string()));
        }
        if let Some(seg) = name.strip_suffix(".partial") {
            return hex(seg, 24).then(|| WalFile::Partial(seg.to_string()));
        }
        if let Some(tli) = name.strip_suffix(".history") {
            return hex(tli, 8).then(|| WalFile::History(u32::from_str_radix(tli, 16).unwrap()));
        }
        if let Some(rest) = name.strip_suffix(".backup") {
            let (seg, off) = rest.split_once('.')?;
            return (hex(seg, 24) && hex(off, 8)).then(|| WalFile::BackupHistory(seg.to_string()));
        }
        None
    }
}

/// The facts a segment's first page header states about it
/// (`XLogLongPageHeaderData`): which cluster wrote it and its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub system_identifier: u64,
    pub segment_size: u32,
}

/// Reads the long page header at the start of a segment; `None` when the
/// bytes are not one (a zero-filled or foreign file).
pub fn segment_header(bytes: &[u8]) -> Option<SegmentHeader> {
    const XLP_LONG_HEADER: u16 = 0x0002;
    if bytes.len() < 40 {
        return None;
    }
    let info = u16::from_le_bytes([bytes[2], bytes[3]]);
    if info & XLP_LONG_HEADER == 0 {
        return None;
    }
    let system_identifier = u64::from_le_bytes(bytes[24..32].try_into().unwrap());
    let segment_size = u32::from_le_bytes(bytes[32..36].try_into().unwrap());
    (segment_size.is_power_of_two() && (1 << 20..=1 << 30).contains(&segment_size))
        .then_some(SegmentHeader { system_identifier, segment_size })
}

/// How a push went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Stored,
    /// The same name was already stored with the same bytes: PostgreSQL
    /// retries an archive_command that it believes failed, and a retry of
    /// one that had in fact succeeded must succeed too.
    AlreadyStored,
}

/// Archives the WAL file at `path` (`archive_command`'s `%p`).
///
/// A file already archived under the same name is compared, not
/// replaced: identical → success, different → an error, since two
/// different histories under one name means two clusters share this
/// repository or one was restored and promoted without a new timeline.
/// Partial segments are the exception: a streamer re-sends a growing
/// partial segment under the same name, and the longer copy wins.
pub fn push(repo: &Repository, path: &Path, level: i32) -> Result<Pushed> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::Invalid(format!("{}: not a WAL file name", path.display())))?;
    let kind = WalFile::parse(name).ok_or_else(|| {
        Error::Invalid(format!(
            "{}: '{name}' is not a WAL segment, history or backup history file name",
            path.display()
        ))
    })?;
    let content = fs::read(path).map_err(|e| Error::io(path, e))?;
    let modified =
        fs::metadata(path).ok().and_then(|m| DateTime::<Utc>::from_timestamp(m.mtime(), m.mtime_nsec() as u32));
    let mut meta = ArchivedMeta::new(name, &content);
    meta.modified = modified;
    if let Some(h) =
        matches!(kind, WalFile::Segment(_) | WalFile::Partial(_)).then(|| segment_header(&content)).flatten()
    {
        meta.extra = serde_json::json!({ "system_identifier": h.system_identifier.to_string() });
    }
    match repo.archive_get(name) {
        Ok((old, _)) if old.blake3 == meta.blake3 => return Ok(Pushed::AlreadyStored),
        Ok((old, _)) if matches!(kind, WalFile::Partial(_)) && old.size > meta.size => {
            return Ok(Pushed::AlreadyStored);
        }
        Ok(_) if matches!(kind, WalFile::Partial(_)) => {}
        Ok((old, _)) => {
            return Err(Error::Invalid(format!(
                "{name} is already archived with different content ({} bytes stored {}, {} bytes here): \
                 is another cluster archiving into this repository?",
                old.size,
                old.stored.format("%Y-%m-%d %H:%M:%S UTC"),
                meta.size
            )))
        }
        Err(arkiv_repo::Error::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    repo.archive_put(&meta, content, level)?;
    Ok(Pushed::Stored)
}

/// What a fetch found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// Written to the destination (from the archive or the prefetch spool).
    Found,
    /// Only the partial segment a streamer stored was there; it was
    /// written under the full name, so recovery replays what it holds.
    Partial,
    NotFound,
}

/// Writes `bytes` to `dest` through a temporary file in the same
/// directory, so PostgreSQL never sees half a segment.
fn write_atomically(dest: &Path, bytes: &[u8]) -> Result<()> {
    let dir = dest.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".arkiv-fetch").tempfile_in(dir).map_err(|e| Error::io(dir, e))?;
    tmp.write_all(bytes).map_err(|e| Error::io(dest, e))?;
    tmp.as_file().sync_all().map_err(|e| Error::io(dest, e))?;
    tmp.persist(dest).map_err(|e| Error::io(dest, e.error))?;
    Ok(())
}

/// Where prefetched segments wait for PostgreSQL to ask: beside `%p`
/// (`pg_wal/RECOVERYXLOG`), so moving one into place is a rename.
pub fn spool_dir(dest: &Path) -> PathBuf {
    dest.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).join("arkiv-prefetch")
}

/// Fetches WAL file `name` into `dest` (`restore_command`'s `%f %p`).
///
/// For a segment, the next `prefetch` segments of the same timeline are
/// fetched at the same time, in parallel, into the spool: recovery asks
/// for segments one by one, and the next call then finds its segment
/// waiting. A segment that is not archived but whose partial is (the tail
/// a streamer stored) is served from the partial, which is how recovery
/// reaches the last second the streamer saw.
pub fn fetch(repo: &Repository, name: &str, dest: &Path, prefetch: usize) -> Result<Fetched> {
    let kind = WalFile::parse(name)
        .ok_or_else(|| Error::Invalid(format!("'{name}' is not a WAL segment, history or backup history file name")))?;
    let spool = spool_dir(dest);
    if let WalFile::Segment(_) = kind {
        let waiting = spool.join(name);
        if waiting.exists() {
            fs::rename(&waiting, dest).map_err(|e| Error::io(dest, e))?;
            forget_older(&spool, name);
            return Ok(Fetched::Found);
        }
    }
    let got = match repo.archive_get(name) {
        Ok((_, content)) => Some(content),
        Err(arkiv_repo::Error::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let Some(content) = got else {
        if let WalFile::Segment(seg) = &kind {
            match repo.archive_get(&format!("{seg}.partial")) {
                Ok((_, content)) => {
                    write_atomically(dest, &content)?;
                    return Ok(Fetched::Partial);
                }
                Err(arkiv_repo::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        return Ok(Fetched::NotFound);
    };
    if let (WalFile::Segment(_), true) = (&kind, prefetch > 0) {
        let size = segment_header(&content).map(|h| h.segment_size as u64).unwrap_or(DEFAULT_SEGMENT_SIZE);
        if let Some(seg) = Segment::parse(name, size) {
            let next: Vec<String> = (1..=prefetch as u64)
                .map(|i| Segment { timeline: seg.timeline, number: seg.number + i }.name(size))
                .filter(|n| !spool.join(n).exists())
                .collect();
            // Prefetching is an optimisation: whatever goes wrong here is
            // met again, and reported, when PostgreSQL asks for that segment.
            if !next.is_empty() && fs::create_dir_all(&spool).is_ok() {
                next.par_iter().for_each(|n| {
                    if let Ok((_, bytes)) = repo.archive_get(n) {
                        let _ = write_atomically(&spool.join(n), &bytes);
                    }
                });
            }
        }
    }
    write_atomically(dest, &content)?;
    forget_older(&spool, name);
    Ok(Fetched::Found)
}

/// Removes prefetched segments recovery has gone past.
fn forget_older(spool: &Path, name: &str) {
    let Ok(entries) = fs::read_dir(spool) else { return };
    for e in entries.flatten() {
        let n = e.file_name();
        let Some(n) = n.to_str() else { continue };
        if n.len() == 24 && n < name {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// The WAL in a repository, as `pg info` and restore planning see it.
#[derive(Debug, Clone, Default)]
pub struct WalInventory {
    /// Segment name → when it was stored.
    pub segments: std::collections::BTreeMap<String, Option<DateTime<Utc>>>,
    /// Segments only a streamer's partial file covers.
    pub partials: std::collections::BTreeMap<String, Option<DateTime<Utc>>>,
    pub histories: Vec<u32>,
    pub backup_histories: Vec<String>,
}

impl WalInventory {
    pub fn load(repo: &Repository) -> Result<WalInventory> {
        let mut inv = WalInventory::default();
        for e in repo.archive_list()? {
            match WalFile::parse(&e.name) {
                Some(WalFile::Segment(s)) => {
                    inv.segments.insert(s, e.stored_at);
                }
                Some(WalFile::Partial(s)) => {
                    inv.partials.insert(s, e.stored_at);
                }
                Some(WalFile::History(t)) => inv.histories.push(t),
                Some(WalFile::BackupHistory(_)) => inv.backup_histories.push(e.name),
                None => {}
            }
        }
        inv.histories.sort();
        Ok(inv)
    }

    /// Whether segment `name` can be replayed: archived whole, or as a
    /// streamer's partial.
    pub fn has(&self, name: &str) -> bool {
        self.segments.contains_key(name) || self.partials.contains_key(name)
    }

    /// When segment `name` (or its partial) was stored.
    pub fn stored_at(&self, name: &str) -> Option<DateTime<Utc>> {
        self.segments.get(name).or_else(|| self.partials.get(name)).copied().flatten()
    }

    /// Every segment, whole or partial, parsed.
    pub fn all(&self, size: u64) -> Vec<Segment> {
        let mut v: Vec<Segment> =
            self.segments.keys().chain(self.partials.keys()).filter_map(|n| Segment::parse(n, size)).collect();
        v.sort();
        v.dedup();
        v
    }

    /// The newest time anything was stored: how far the archive reaches.
    pub fn newest(&self) -> Option<DateTime<Utc>> {
        self.segments.values().chain(self.partials.values()).flatten().max().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_parse_as_postgres_writes_them() {
        assert_eq!(
            WalFile::parse("000000010000000000000003"),
            Some(WalFile::Segment("000000010000000000000003".into()))
        );
        assert_eq!(WalFile::parse("00000002.history"), Some(WalFile::History(2)));
        assert!(matches!(WalFile::parse("000000010000000000000003.00000028.backup"), Some(WalFile::BackupHistory(_))));
        assert!(matches!(WalFile::parse("000000010000000000000003.partial"), Some(WalFile::Partial(_))));
        for bad in [
            "RECOVERYXLOG",
            "00000001000000000000003",
            "000000010000000000000003x",
            "../etc/passwd",
            "0000000a.history",
        ] {
            assert_eq!(WalFile::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn segments_follow_lsns_across_log_boundaries() {
        let s = DEFAULT_SEGMENT_SIZE;
        let lsn: Lsn = "1/FF000028".parse().unwrap();
        assert_eq!(lsn.to_string(), "1/FF000028");
        let seg = Segment::of(1, lsn, s);
        assert_eq!(seg.name(s), "0000000100000001000000FF");
        assert_eq!(Segment { timeline: 1, number: seg.number + 1 }.name(s), "000000010000000200000000");
        assert_eq!(Segment::before(1, "2/0".parse().unwrap(), s).name(s), "0000000100000001000000FF");
        assert_eq!(Segment::parse("0000000100000001000000FF", s), Some(seg));
        assert_eq!(Segment::parse("000000010000000100000100", s), None);
        assert!("x/1".parse::<Lsn>().is_err());
    }

    proptest! {
        #[test]
        fn segment_names_round_trip(tli in 1u32..1000, number in 0u64..(1 << 40), shift in 20u32..=30) {
            let size = 1u64 << shift;
            let seg = Segment { timeline: tli, number: number % ((1u64 << 32) * (0x1_0000_0000 / size)) };
            prop_assert_eq!(Segment::parse(&seg.name(size), size), Some(seg));
        }
    }
}
