//! Sources that are streams rather than directory trees: a database dump,
//! an RDB file, a command's output.
//!
//! A stream source's snapshot is a flat tree of named files, one per stream
//! (`globals.sql`, `shop.pgdump`, …), so `ls`, `find`, `check` and a plain
//! directory `restore` work on it like on any snapshot, and an operator can
//! always get the raw dump back and use the database's own tools by hand.
//! Streams are chunked as they are read, so nothing is staged on disk and
//! what did not change since the last dump is not stored again. What did
//! change is stored as deltas from the same stream in the source's
//! previous snapshot (`arkiv_repo::delta`): a dump whose changed rows are
//! scattered changes every chunk, yet costs only its changes.
//!
//! What the source was (kind, password-free location, server version,
//! per-stream facts) goes into the snapshot's `metadata`; the snapshot is
//! written only after every stream ended well, so a failed dump never
//! becomes a snapshot.

use std::collections::BTreeSet;
use std::io::Read;
use std::sync::atomic::Ordering;
use std::time::Instant;

use arkiv_repo::delta::ParentStream;
use arkiv_repo::{ContentReader, Id, Indexed, Name, Node, NodeKind, Snapshot, Tree, Writer};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::files::{BackupOutcome, Progress};
use crate::process::ToolOutput;

/// Whether snapshots of this source kind are directory trees rather than
/// sets of streams.
pub fn is_tree_kind(kind: &str) -> bool {
    matches!(kind, "files" | "bucket")
}

/// A source whose backup is one or more named streams.
///
/// The shape is push, not pull: the source drives its tools and hands each
/// stream to [`StreamBackup`] as it comes, because only the source knows
/// the order its tools must run in (globals before databases, a
/// transaction held open around several dumps).
pub trait StreamSource {
    /// The snapshot's `source` field: `postgres`, `mysql`, `sqlite`, …
    fn kind(&self) -> &'static str;

    /// Where the data lives, without passwords: recorded as the snapshot's
    /// path (and so used by `forget` to group snapshots).
    fn location(&self) -> String;

    /// Writes every stream into `out` and returns the facts worth keeping
    /// (server version, sizes). Any error means no snapshot.
    fn backup(&self, out: &mut StreamBackup) -> Result<serde_json::Value>;
}

/// Options every stream restore understands; a target rejects the ones
/// that make no sense for it rather than ignoring them.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Only these tables (PostgreSQL: `pg_restore --table`).
    pub tables: Vec<String>,
    /// Only these schemas.
    pub schemas: Vec<String>,
    /// Drop what exists in the target before restoring it.
    pub clean: bool,
    /// Replace a target that already exists or holds data.
    pub overwrite: bool,
    /// From a snapshot of several databases, restore only this one.
    pub database: Option<String>,
    /// Also restore server-wide objects (PostgreSQL roles, tablespaces).
    pub globals: bool,
    /// Restore only the stream of this name (for snapshots of several).
    pub stream: Option<String>,
}

impl RestoreOptions {
    /// Fails naming the options a target does not understand.
    pub fn reject_unsupported(&self, target: &str, supported: &[&str]) -> Result<()> {
        let given = [
            ("table", !self.tables.is_empty()),
            ("schema", !self.schemas.is_empty()),
            ("clean", self.clean),
            ("overwrite", self.overwrite),
            ("database", self.database.is_some()),
            ("globals", self.globals),
            ("stream", self.stream.is_some()),
        ];
        let bad: Vec<String> =
            given.iter().filter(|(n, on)| *on && !supported.contains(n)).map(|(n, _)| format!("--{n}")).collect();
        if bad.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(format!("{} cannot be used when restoring to {target}", bad.join(", "))))
        }
    }
}

/// What a stream restore did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreReport {
    /// Where it went, without passwords.
    pub target: String,
    /// Each stream restored, with its size.
    pub streams: Vec<(String, u64)>,
    pub bytes: u64,
    pub duration_secs: f64,
    /// Things the operator should know (a database created, objects left out).
    pub notes: Vec<String>,
}

/// A place a stream snapshot can be restored to.
pub trait StreamTarget {
    /// Where it goes, without passwords.
    fn location(&self) -> String;

    /// The snapshot kinds (`StreamSource::kind`) it accepts.
    fn accepts(&self, kind: &str) -> bool;

    fn restore(&self, streams: &Streams, opts: &RestoreOptions) -> Result<RestoreReport>;
}

/// Options for committing a stream snapshot.
#[derive(Debug, Clone, Default)]
pub struct StreamOptions {
    pub tags: Vec<String>,
    pub host: Option<String>,
    /// Read and chunk everything, write nothing.
    pub dry_run: bool,
}

/// Facts about one stream, kept in the snapshot's metadata.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StreamInfo {
    pub name: String,
    pub bytes: u64,
    pub seconds: f64,
}

/// Collects the streams of one snapshot.
pub struct StreamBackup<'a> {
    indexed: &'a Indexed,
    writer: Writer,
    progress: &'a Progress,
    nodes: Vec<Node>,
    names: BTreeSet<String>,
    infos: Vec<StreamInfo>,
    /// The source's previous snapshot's streams, by name: each new stream's
    /// chunks are stored as deltas from its older version where that pays.
    parent: Option<Tree>,
}

impl<'a> StreamBackup<'a> {
    pub fn new(indexed: &'a Indexed, dry_run: bool, progress: &'a Progress) -> StreamBackup<'a> {
        let writer = if dry_run { Writer::new_dry_run(indexed) } else { Writer::new(indexed) };
        StreamBackup {
            indexed,
            writer,
            progress,
            nodes: Vec::new(),
            names: BTreeSet::new(),
            infos: Vec::new(),
            parent: None,
        }
    }

    /// Compares each stream with its namesake in `snapshot` (the source's
    /// previous backup). A parent that cannot be read only costs space.
    pub fn set_parent(&mut self, snapshot: &Snapshot) {
        match self.indexed.load_tree(&snapshot.tree) {
            Ok(t) => self.parent = Some(t),
            Err(e) => tracing::warn!("parent snapshot's tree unreadable, storing streams without deltas: {e}"),
        }
    }

    /// Stores one stream, read to its end, under `name` (a plain file name,
    /// unique within the snapshot). Returns its length.
    pub fn add(&mut self, name: &str, reader: impl Read) -> Result<u64> {
        check_name(name)?;
        if !self.names.insert(name.to_string()) {
            return Err(Error::Invalid(format!("stream '{name}' given twice")));
        }
        let t0 = Instant::now();
        let progress = self.progress;
        let count = |n: u64| {
            progress.bytes.fetch_add(n, Ordering::Relaxed);
            progress.bytes_read.fetch_add(n, Ordering::Relaxed);
        };
        let mut parent = self
            .parent
            .as_ref()
            .and_then(|t| t.find(&Name::from(name)))
            .filter(|n| n.kind == NodeKind::File && !n.content.is_empty())
            .map(|n| ParentStream::new(self.indexed, n.content.clone()));
        let (content, len) = self.writer.save_stream(reader, parent.as_mut(), &count).map_err(|e| match e {
            arkiv_repo::Error::Io { cause: source, .. } => crate::process::input_error(source),
            other => Error::Repo(other),
        })?;
        progress.files.fetch_add(1, Ordering::Relaxed);
        let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
        let mut node = Node::new(Name::from(name), NodeKind::File);
        node.mode = 0o600;
        // SAFETY: getuid/getgid have no preconditions.
        node.uid = unsafe { libc::getuid() };
        node.gid = unsafe { libc::getgid() };
        node.mtime_ns = now;
        node.ctime_ns = now;
        node.size = len;
        node.content = content;
        self.nodes.push(node);
        self.infos.push(StreamInfo { name: name.to_string(), bytes: len, seconds: t0.elapsed().as_secs_f64() });
        Ok(len)
    }

    /// Stores a tool's standard output as a stream; the stream counts only
    /// if the tool exits with status 0.
    pub fn add_tool(&mut self, name: &str, mut tool: ToolOutput) -> Result<u64> {
        match self.add(name, &mut tool) {
            Ok(n) => tool.finish().map(|_| n),
            Err(e) => {
                // The repository side failed (a tool's own failure shows up
                // in `finish`, after a complete read): stop the tool rather
                // than let it dump on into nowhere.
                tool.kill();
                Err(e)
            }
        }
    }

    /// Writes the snapshot. `metadata` is the source's own facts; the list
    /// of streams is added to it under `streams`.
    pub fn commit(
        self,
        source: &dyn StreamSource,
        mut metadata: serde_json::Value,
        opts: &StreamOptions,
        started: chrono::DateTime<chrono::Utc>,
        t0: Instant,
    ) -> Result<BackupOutcome> {
        if self.nodes.is_empty() {
            return Err(Error::Source { location: source.location(), message: "nothing to back up".into() });
        }
        let mut tree = Tree { nodes: self.nodes };
        tree.sort();
        let root = self.writer.save_tree(&tree)?;
        let stats = self.writer.finish()?;
        if !metadata.is_object() {
            metadata = serde_json::json!({});
        }
        metadata["streams"] = serde_json::to_value(&self.infos).expect("stream infos serialise");
        let total: u64 = self.infos.iter().map(|i| i.bytes).sum();
        let mut snap = Snapshot::new(source.kind(), root);
        if let Some(h) = &opts.host {
            snap.host = h.clone();
        }
        snap.tags = opts.tags.clone();
        snap.paths = vec![source.location()];
        snap.metadata = metadata;
        snap.summary = arkiv_repo::Summary {
            started: Some(started),
            duration_secs: t0.elapsed().as_secs_f64(),
            files_new: self.infos.len() as u64,
            total_files: self.infos.len() as u64,
            total_bytes: total,
            bytes_read: total,
            blobs_new: stats.blobs_new,
            bytes_new: stats.bytes_new,
            bytes_stored: stats.bytes_stored,
            ..Default::default()
        };
        let id = if opts.dry_run { None } else { Some(self.indexed.repo().save_snapshot(&snap)?) };
        Ok(BackupOutcome { id, snapshot: snap })
    }
}

/// Backs up a stream source: runs it, and commits a snapshot only if every
/// stream ended well.
pub fn backup(
    indexed: &Indexed,
    source: &dyn StreamSource,
    opts: &StreamOptions,
    progress: &Progress,
) -> Result<BackupOutcome> {
    let started = chrono::Utc::now();
    let t0 = Instant::now();
    let mut out = StreamBackup::new(indexed, opts.dry_run, progress);
    if let Some(p) = previous(indexed, source, opts).filter(|_| !opts.dry_run) {
        out.set_parent(&p);
    }
    let metadata = source.backup(&mut out)?;
    out.commit(source, metadata, opts, started, t0)
}

/// The newest snapshot of the same source from the same host: the parent
/// whose streams the new ones are compared with.
fn previous(indexed: &Indexed, source: &dyn StreamSource, opts: &StreamOptions) -> Option<Snapshot> {
    let filter = arkiv_repo::SnapshotFilter {
        host: Some(opts.host.clone().unwrap_or_else(arkiv_repo::snapshot::hostname)),
        tags: Vec::new(),
        paths: vec![source.location()],
        source: Some(source.kind().to_string()),
    };
    match indexed.repo().find_snapshot("latest", &filter) {
        Ok(e) => Some(e.snapshot),
        Err(arkiv_repo::Error::SnapshotNotFound(_)) => None,
        Err(e) => {
            tracing::warn!("no parent snapshot for deltas: {e}");
            None
        }
    }
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(Error::Invalid(format!("stream name '{name}' must be a plain file name")));
    }
    Ok(())
}

/// A stream name for something named by its owner (a database, a key
/// prefix): `/` and `%` are escaped so any name maps to one file name and
/// back.
pub fn stream_name(base: &str, suffix: &str) -> String {
    let mut s = String::with_capacity(base.len() + suffix.len());
    for c in base.chars() {
        match c {
            '%' => s.push_str("%25"),
            '/' => s.push_str("%2F"),
            '\0' => s.push_str("%00"),
            c => s.push(c),
        }
    }
    if s.is_empty() || s == "." || s == ".." {
        s = s.replace('.', "%2E");
    }
    s.push_str(suffix);
    s
}

/// The inverse of [`stream_name`] for the part before `suffix`.
pub fn stream_base(name: &str, suffix: &str) -> Option<String> {
    let base = name.strip_suffix(suffix)?;
    let mut out = String::new();
    let mut rest = base;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3)?;
        out.push(u8::from_str_radix(code, 16).ok()? as char);
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// One stored stream of a snapshot.
#[derive(Debug, Clone)]
pub struct StoredStream {
    pub name: String,
    pub size: u64,
    content: Vec<Id>,
}

/// The streams of one snapshot, ready to be read back.
pub struct Streams<'a> {
    pub indexed: &'a Indexed,
    pub snapshot: Snapshot,
    pub id: Id,
    pub list: Vec<StoredStream>,
}

impl<'a> Streams<'a> {
    /// Loads the streams of a snapshot written by a stream source.
    pub fn open(indexed: &'a Indexed, id: Id, snapshot: Snapshot) -> Result<Streams<'a>> {
        let tree = indexed.load_tree(&snapshot.tree)?;
        let mut list = Vec::new();
        for n in tree.nodes {
            // Trees of files (files, bucket) are opened for a verify into a
            // directory, which reads the tree itself; only their top-level
            // files are listed as streams.
            if n.kind != NodeKind::File && is_tree_kind(&snapshot.source) {
                continue;
            }
            if n.kind != NodeKind::File {
                return Err(Error::Invalid(format!(
                    "snapshot {} is a {} snapshot with directories, not a set of streams; restore it to a directory",
                    id.short(),
                    snapshot.source
                )));
            }
            list.push(StoredStream { name: n.name.lossy(), size: n.size, content: n.content });
        }
        Ok(Streams { indexed, snapshot, id, list })
    }

    pub fn get(&self, name: &str) -> Option<&StoredStream> {
        self.list.iter().find(|s| s.name == name)
    }

    /// The one stream to restore: the one named by `--stream`, or the
    /// snapshot's only stream.
    pub fn single(&self, opts: &RestoreOptions) -> Result<&StoredStream> {
        match &opts.stream {
            Some(n) => self.get(n).ok_or_else(|| {
                Error::Invalid(format!("snapshot {} has no stream '{n}' (it has: {})", self.id.short(), self.names()))
            }),
            None if self.list.len() == 1 => Ok(&self.list[0]),
            None => Err(Error::Invalid(format!(
                "snapshot {} has {} streams ({}); choose one with --stream",
                self.id.short(),
                self.list.len(),
                self.names()
            ))),
        }
    }

    fn names(&self) -> String {
        self.list.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// A reader of one stream's bytes, fetched ahead in parallel.
    pub fn reader(&self, s: &'a StoredStream) -> ContentReader<'a> {
        ContentReader::new(self.indexed, &s.content)
    }

    /// The source's recorded facts.
    pub fn metadata(&self) -> &serde_json::Value {
        &self.snapshot.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_round_trip_any_database_name() {
        for n in ["shop", "a/b", "100%", ".", "..", "", "naïve db", "x%2Fy"] {
            let s = stream_name(n, ".pgdump");
            assert!(check_name(&s).is_ok(), "{n:?} -> {s:?}");
            assert_eq!(stream_base(&s, ".pgdump").as_deref(), Some(n), "{s}");
        }
    }
}
