//! `copy`: replicating snapshots into another repository.
//!
//! The two repositories may differ in everything: backend, keys, chunker
//! secret, compression. When they share the id key and the chunker (a
//! repository initialised from another's key material), blob ids are the
//! same on both sides and only blobs the destination lacks are read and
//! sent. Otherwise ids cannot be compared across the two, so each file is
//! read and chunked again with the destination's chunker; the destination
//! still stores only chunks it does not have.
//!
//! The copy keeps the snapshot's identity (`original`), so a copy of a copy
//! is recognised and `replication-status` can match snapshots across
//! repositories.

use std::collections::HashMap;

use serde::Serialize;

use crate::content::ContentReader;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::pack::BlobType;
use crate::repository::Indexed;
use crate::snapshot::{Snapshot, SnapshotEntry};
use crate::writer::{WriteStats, Writer};

/// What a copy transferred.
#[derive(Debug, Default, Clone, Serialize)]
pub struct CopyReport {
    /// Snapshot ids in the destination, in the order copied.
    pub copied: Vec<(Id, Id)>,
    /// Snapshots the destination already had (by identity).
    pub already_present: usize,
    /// Whether blobs were transferred as they are (same keys and chunker).
    pub same_chunking: bool,
    pub write: WriteStats,
}

/// Whether blob ids mean the same in both repositories.
fn same_chunking(src: &Indexed, dst: &Indexed) -> bool {
    let probe: Vec<u8> = (0..(8u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    src.repo().blob_id(BlobType::Data, b"arkiv copy probe") == dst.repo().blob_id(BlobType::Data, b"arkiv copy probe")
        && src.repo().config().chunker == dst.repo().config().chunker
        && src.repo().chunker().split_all(&probe) == dst.repo().chunker().split_all(&probe)
}

struct Copier<'a> {
    src: &'a Indexed,
    writer: &'a Writer,
    same: bool,
    /// Source tree id -> destination tree id, for trees shared between
    /// snapshots (or repeated within one).
    trees: HashMap<Id, Id>,
    /// Source content -> destination content, for files repeated across
    /// snapshots when chunking differs (the expensive case).
    contents: HashMap<Id, Vec<Id>>,
}

impl Copier<'_> {
    fn copy_tree(&mut self, id: &Id) -> Result<Id> {
        if let Some(done) = self.trees.get(id) {
            return Ok(*done);
        }
        let mut tree = self.src.load_tree(id)?;
        for node in &mut tree.nodes {
            if let Some(sub) = node.subtree {
                node.subtree = Some(self.copy_tree(&sub)?);
            }
            if node.content.is_empty() {
                continue;
            }
            if self.same {
                let missing: Vec<Id> = node.content.iter().filter(|c| !self.writer.has_blob(c)).copied().collect();
                let failure = std::sync::Mutex::new(None);
                self.src.for_each_blob(&missing, |bid, data| {
                    let r = data.and_then(|d| self.writer.save_with_id(BlobType::Data, bid, d).map(|_| ()));
                    if let Err(e) = r {
                        failure.lock().unwrap().get_or_insert(e);
                    }
                })?;
                if let Some(e) = failure.into_inner().unwrap() {
                    return Err(e);
                }
            } else {
                let key = content_key(&node.content);
                if let Some(done) = self.contents.get(&key) {
                    node.content = done.clone();
                    continue;
                }
                let reader = ContentReader::new(self.src, &node.content);
                let (ids, _) = self.writer.save_stream(reader, None, &|_| {}).map_err(|e| match e {
                    Error::Io { cause: source, .. } => {
                        Error::Invalid(format!("copying {}: {source}", node.name.lossy()))
                    }
                    other => other,
                })?;
                self.contents.insert(key, ids.clone());
                node.content = ids;
            }
        }
        let new_id = if self.same {
            // Same keys: the tree's bytes are the same on both sides.
            let bytes = tree.encode();
            self.writer.save_with_id(BlobType::Tree, *id, &bytes)?;
            *id
        } else {
            self.writer.save_tree(&tree)?
        };
        self.trees.insert(*id, new_id);
        Ok(new_id)
    }
}

fn content_key(ids: &[Id]) -> Id {
    let mut h = blake3::Hasher::new();
    for id in ids {
        h.update(&id.0);
    }
    Id(*h.finalize().as_bytes())
}

/// Copies `snapshots` of `src` that `dst` lacks. `progress` hears each
/// snapshot as it starts.
pub fn copy(
    src: &Indexed,
    dst: &Indexed,
    snapshots: &[SnapshotEntry],
    progress: &dyn Fn(&SnapshotEntry),
) -> Result<CopyReport> {
    let present: std::collections::HashSet<Id> = dst.repo().list_snapshots()?.iter().map(|e| e.identity()).collect();
    let same = same_chunking(src, dst);
    let mut report = CopyReport { same_chunking: same, ..Default::default() };
    let writer = Writer::new(dst);
    let mut copier = Copier { src, writer: &writer, same, trees: HashMap::new(), contents: HashMap::new() };
    let mut pending: Vec<(Id, Snapshot)> = Vec::new();
    for entry in snapshots {
        if present.contains(&entry.identity()) {
            report.already_present += 1;
            continue;
        }
        progress(entry);
        let tree = copier.copy_tree(&entry.snapshot.tree)?;
        let mut snap = entry.snapshot.clone();
        snap.tree = tree;
        // The parent names a snapshot of the source repository.
        snap.parent = None;
        snap.original = Some(entry.identity());
        pending.push((entry.id, snap));
    }
    drop(copier);
    report.write = writer.finish()?;
    // Snapshots only after every blob they name is stored and indexed.
    for (src_id, snap) in pending {
        let id = dst.repo().save_snapshot(&snap)?;
        report.copied.push((src_id, id));
    }
    Ok(report)
}

/// One snapshot identity as `replication-status` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaEntry {
    pub identity: Id,
    pub time: chrono::DateTime<chrono::Utc>,
    pub host: String,
    pub source: String,
    pub paths: Vec<String>,
    pub in_first: Option<Id>,
    pub in_second: Option<Id>,
}

/// Which snapshots each of two repositories holds, matched by identity.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicationStatus {
    pub entries: Vec<ReplicaEntry>,
    pub missing_in_first: usize,
    pub missing_in_second: usize,
    /// Time of the newest snapshot both hold.
    pub newest_common: Option<chrono::DateTime<chrono::Utc>>,
    /// How far the second lags: newest in the first minus newest common.
    pub lag_secs: Option<i64>,
}

pub fn replication_status(first: &[SnapshotEntry], second: &[SnapshotEntry]) -> ReplicationStatus {
    let mut by_identity: std::collections::BTreeMap<Id, ReplicaEntry> = std::collections::BTreeMap::new();
    for (side, list) in [(0, first), (1, second)] {
        for e in list {
            let r = by_identity.entry(e.identity()).or_insert_with(|| ReplicaEntry {
                identity: e.identity(),
                time: e.snapshot.time,
                host: e.snapshot.host.clone(),
                source: e.snapshot.source.clone(),
                paths: e.snapshot.paths.clone(),
                in_first: None,
                in_second: None,
            });
            if side == 0 {
                r.in_first = Some(e.id);
            } else {
                r.in_second = Some(e.id);
            }
        }
    }
    let mut entries: Vec<ReplicaEntry> = by_identity.into_values().collect();
    entries.sort_by(|a, b| a.time.cmp(&b.time).then(a.identity.cmp(&b.identity)));
    let newest_common = entries.iter().filter(|e| e.in_first.is_some() && e.in_second.is_some()).map(|e| e.time).max();
    let newest_first = entries.iter().filter(|e| e.in_first.is_some()).map(|e| e.time).max();
    let lag_secs = match (newest_first, newest_common) {
        (Some(f), Some(c)) => Some((f - c).num_seconds().max(0)),
        _ => None,
    };
    ReplicationStatus {
        missing_in_first: entries.iter().filter(|e| e.in_first.is_none()).count(),
        missing_in_second: entries.iter().filter(|e| e.in_second.is_none()).count(),
        entries,
        newest_common,
        lag_secs,
    }
}
