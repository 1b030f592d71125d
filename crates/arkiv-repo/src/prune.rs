//! `prune`: removing what no snapshot needs, without locking out backups.
//!
//! Backups run while prune does, so nothing is deleted the moment it looks
//! unused. Phase one (each run) finds packs no snapshot needs, writes their
//! index entries into a *deletion record* and drops them from the index;
//! phase two (a later run, once the record is older than the grace period)
//! deletes them — unless a snapshot written meanwhile refers to one of their
//! blobs (a backup that loaded the index before phase one may have
//! deduplicated against it), in which case the pack goes back into the
//! index. Packs younger than the grace period are never touched: they may
//! belong to a backup whose snapshot is not written yet.
//!
//! The one assumption, as in kopia: no backup runs longer than the grace
//! period (24 h by default). `--instant` (grace zero) is for repositories
//! nothing else writes to while prune runs. Two prunes must not run at once:
//! each takes the prune lock (`lock.rs`) first.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::backend::FileKind;
use crate::envelope::EnvelopeKind;
use crate::error::{Error, Result};
use crate::id::Id;
use rayon::prelude::*;

use crate::delta::Bases;
use crate::index::{BlobLocation, Index, IndexFile, IndexedPack, PackRef};
use crate::pack::Encoding;
use crate::repository::{Indexed, Repository};
use crate::writer::Writer;

/// Packs named in each rewritten index file.
const PACKS_PER_INDEX_FILE: usize = 2048;

/// Packs awaiting deletion, with the index entries that can restore them.
#[derive(Debug, Clone, PartialEq)]
pub struct DeletionRecord {
    pub created: DateTime<Utc>,
    pub packs: Vec<IndexedPack>,
}

impl DeletionRecord {
    /// `created` as i64 Unix seconds (LE), then an index file's payload.
    fn encode(&self) -> Vec<u8> {
        let mut out = self.created.timestamp().to_le_bytes().to_vec();
        out.extend(IndexFile { supersedes: vec![], packs: self.packs.clone() }.encode());
        out
    }

    fn decode(object: &str, b: &[u8]) -> Result<DeletionRecord> {
        let secs = b.get(..8).ok_or_else(|| Error::corrupt(object, "deletion record is truncated"))?;
        let created = DateTime::from_timestamp(i64::from_le_bytes(secs.try_into().unwrap()), 0)
            .ok_or_else(|| Error::corrupt(object, "deletion record has an impossible time"))?;
        Ok(DeletionRecord { created, packs: IndexFile::decode(object, &b[8..])?.packs })
    }
}

impl Repository {
    pub fn save_deletion_record(&self, r: &DeletionRecord) -> Result<Id> {
        self.write_sealed(FileKind::Deletion, EnvelopeKind::Deletion, &r.encode(), 3)
    }

    pub fn load_deletion_record(&self, id: &Id) -> Result<DeletionRecord> {
        let (object, plain) = self.read_sealed(FileKind::Deletion, EnvelopeKind::Deletion, "deletion record", id)?;
        DeletionRecord::decode(&object, &plain)
    }

    /// Every deletion record. A damaged one stops the caller: its packs
    /// would otherwise look like strays.
    pub fn list_deletion_records(&self) -> Result<Vec<(Id, DeletionRecord)>> {
        let mut out = Vec::new();
        for (name, _) in self.backend().list(FileKind::Deletion)? {
            let id: Id = name.parse().map_err(|_| Error::corrupt(&name, "bad deletion record name"))?;
            out.push((id, self.load_deletion_record(&id)?));
        }
        Ok(out)
    }
}

#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// How long an unused pack waits before it is deleted.
    pub grace: Duration,
    /// Unused space tolerated in partly used packs, as a fraction of the
    /// used space; beyond it the emptiest packs are repacked.
    pub max_unused: f64,
    pub dry_run: bool,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions { grace: Duration::hours(24), max_unused: 0.05, dry_run: false }
    }
}

/// What prune found and did (or, in a dry run, would do).
#[derive(Debug, Default, Clone, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub snapshots: usize,
    pub packs: usize,
    pub blobs_used: u64,
    pub bytes_used: u64,
    pub bytes_unused: u64,
    /// Unused packs newly put in a deletion record (phase one).
    pub packs_marked: usize,
    pub bytes_marked: u64,
    /// Packs not named by any index, older than the grace period.
    pub orphans_marked: usize,
    pub packs_repacked: usize,
    pub blobs_repacked: u64,
    pub bytes_repacked: u64,
    /// Packs deleted now (phase two).
    pub packs_deleted: usize,
    pub bytes_deleted: u64,
    /// Packs awaiting deletion that a new snapshot needs: back in the index.
    pub packs_resurrected: usize,
    /// Packs in deletion records younger than the grace period.
    pub packs_waiting: usize,
    /// Packs too young to judge (maybe a running backup's).
    pub packs_young: usize,
    pub index_files_written: u64,
    pub index_files_removed: usize,
}

struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    /// Sets bit `i`; returns whether it was clear.
    fn set(&mut self, i: usize) -> bool {
        let was = self.get(i);
        self.0[i / 64] |= 1 << (i % 64);
        !was
    }
}

fn pack_bytes(p: &IndexedPack) -> u64 {
    p.entries.iter().map(|e| e.length as u64).sum()
}

/// Runs one prune. `progress` hears each stage's name.
pub fn prune(repo: &Repository, opts: &PruneOptions, progress: &dyn Fn(&str)) -> Result<PruneReport> {
    repo.require_full_access("prune")?;
    // Held until the prune returns; a dry run changes nothing and needs none.
    let _lock = if opts.dry_run { None } else { Some(crate::lock::Lock::acquire(repo, "prune")?) };
    let now = Utc::now();
    let mut report = PruneReport { dry_run: opts.dry_run, ..Default::default() };

    // Snapshots first: each was saved after the index files naming its
    // blobs, so the index read next covers every snapshot listed here.
    let mut snapshots = repo.backend().list(FileKind::Snapshot)?;
    snapshots.sort();
    progress("reading index");
    let mut index_ids = Vec::new();
    let mut files = Vec::new();
    for (name, _) in repo.backend().list(FileKind::Index)? {
        let id: Id = name.parse().map_err(|_| Error::corrupt(&name, "bad index file name"))?;
        // A damaged index file hides which packs hold what: pruning then
        // would delete live data as strays. Stop instead.
        let file = repo
            .load_index_file(&id)
            .map_err(|e| Error::Invalid(format!("{e}; prune changed nothing (run `arkiv check` to see the damage)")))?;
        index_ids.push(id);
        files.push((id, file));
    }
    // Files another one supersedes (written by older versions) describe
    // packs that may be gone; they are removed with the rest.
    let superseded: HashSet<Id> = files.iter().flat_map(|(_, f)| f.supersedes.iter().copied()).collect();
    let mut active: Vec<IndexedPack> = Vec::new();
    let mut seen_packs = HashSet::new();
    for (id, file) in files {
        if !superseded.contains(&id) {
            // A pack named twice (a rewrite cut short) counts once.
            active.extend(file.packs.into_iter().filter(|p| seen_packs.insert(p.id)));
        }
    }
    let records = repo.list_deletion_records()?;
    let pending: HashSet<Id> = records.iter().flat_map(|(_, r)| r.packs.iter().map(|p| p.id)).collect();
    // A pack both indexed and recorded (a prune stopped between the two
    // writes) is pending: the record is the newer intent.
    active.retain(|p| !pending.contains(&p.id));

    // Every known entry, active first, so that a blob stored twice is
    // credited to an active copy.
    let mut full = Index::new();
    for p in active.iter().chain(records.iter().flat_map(|(_, r)| r.packs.iter())) {
        full.add_pack(p.id, p.salt, &p.entries);
    }
    full.finish();
    let indexed = Indexed::from_parts(repo.clone(), full);
    let full = indexed.index().clone();

    progress("finding used blobs");
    let mut used = Bits::new(full.len());
    report.snapshots = snapshots.len();
    for (name, _) in &snapshots {
        let sid: Id = name.parse().map_err(|_| Error::corrupt(name, "bad snapshot name"))?;
        // Unlike listings, prune cannot skip a damaged snapshot: the blobs
        // only it needs would be deleted.
        let snap = repo.load_snapshot(&sid).map_err(|e| {
            Error::Invalid(format!("{e}; prune changed nothing (forget the snapshot or repair it first)"))
        })?;
        let missing = |blob: &Id| {
            Error::Invalid(format!(
                "snapshot {} needs blob {blob}, which no index names; prune changed nothing (run `arkiv check`)",
                sid.short()
            ))
        };
        let mut stack = vec![snap.tree];
        while let Some(tree_id) = stack.pop() {
            let pos = full.position(&tree_id).ok_or_else(|| missing(&tree_id))?;
            if !used.set(pos) {
                continue;
            }
            let tree = indexed.load_tree(&tree_id)?;
            for node in &tree.nodes {
                for c in &node.content {
                    used.set(full.position(c).ok_or_else(|| missing(c))?);
                }
                if let Some(sub) = node.subtree {
                    stack.push(sub);
                }
            }
        }
    }

    progress("planning");
    // Per pack: which entries are the copy the snapshots rely on. A blob
    // stored twice (two backups at once) may be a delta in one pack and
    // whole in another: the whole copy is claimed first, so a delta copy
    // is kept only when it is the only one, and then its bases are kept
    // too (read from that very copy). Bases are never deltas, so one
    // round reaches them all.
    let mut claimed = Bits::new(full.len());
    let packs: Vec<&IndexedPack> = active.iter().chain(records.iter().flat_map(|(_, r)| r.packs.iter())).collect();
    let mut uses: Vec<Vec<bool>> = packs.iter().map(|p| vec![false; p.entries.len()]).collect();
    let mut claim = |used: &Bits, uses: &mut Vec<Vec<bool>>, deltas_too: bool| -> Vec<BlobLocation> {
        let mut deltas = Vec::new();
        for (p, u) in packs.iter().zip(uses.iter_mut()) {
            for (e, u) in p.entries.iter().zip(u.iter_mut()) {
                let pos = full.position(&e.id).expect("every entry was indexed");
                let delta = e.encoding == Encoding::Delta;
                if used.get(pos) && (deltas_too || !delta) && claimed.set(pos) {
                    *u = true;
                    if delta {
                        deltas.push(BlobLocation { pack: PackRef { id: p.id, salt: p.salt }, entry: *e });
                    }
                }
            }
        }
        deltas
    };
    claim(&used, &mut uses, false);
    let deltas = claim(&used, &mut uses, true);
    if !deltas.is_empty() {
        progress("finding delta bases");
        let read: Vec<Result<Vec<Id>>> = deltas.par_iter().map(|d| indexed.delta_bases(d)).collect();
        let mut needs: Vec<(Id, usize)> = Vec::new();
        for (d, b) in deltas.iter().zip(read) {
            let d = d.entry.id;
            let b = b.map_err(|e| Error::Invalid(format!("delta blob {d}: {e}; prune changed nothing")))?;
            for b in b {
                let pos = full.position(&b).ok_or_else(|| {
                    Error::Invalid(format!(
                        "delta blob {d} needs base {b}, which no index names; prune changed nothing (run `arkiv check`)"
                    ))
                })?;
                used.set(pos);
                needs.push((d, pos));
            }
        }
        claim(&used, &mut uses, false);
        // A base with no whole copy cannot serve as one.
        if let Some((d, pos)) = needs.iter().find(|(_, pos)| !claimed.get(*pos)) {
            return Err(Error::Invalid(format!(
                "delta blob {d} needs base {}, which is stored only as a delta; prune changed nothing (run `arkiv check`)",
                full.id_at(*pos)
            )));
        }
    }
    let mut uses = uses.into_iter();
    let active_use: Vec<Vec<bool>> = uses.by_ref().take(active.len()).collect();
    let record_use: Vec<Vec<Vec<bool>>> =
        records.iter().map(|(_, r)| uses.by_ref().take(r.packs.len()).collect()).collect();

    let stored = repo.backend().pack_times()?;
    report.packs = stored.len();
    let is_old = |name: &str| stored.get(name).is_some_and(|t| now - *t >= opts.grace);

    let mut keep: Vec<IndexedPack> = Vec::new();
    let mut mark: Vec<IndexedPack> = Vec::new();
    let mut candidates: Vec<(u64, usize)> = Vec::new();
    for (i, p) in active.iter().enumerate() {
        let name = p.id.to_hex();
        let uses = &active_use[i];
        let used_n = uses.iter().filter(|u| **u).count();
        let used_bytes: u64 = p.entries.iter().zip(uses).filter(|(_, u)| **u).map(|(e, _)| e.length as u64).sum();
        report.blobs_used += used_n as u64;
        report.bytes_used += used_bytes;
        report.bytes_unused += pack_bytes(p) - used_bytes;
        if !stored.contains_key(&name) {
            if used_n > 0 {
                return Err(Error::Invalid(format!(
                    "pack {name} holds blobs snapshots need but is missing from storage; prune changed nothing (run `arkiv check`)"
                )));
            }
            // An index entry for a pack that is gone and needed by nothing:
            // dropping it from the index is all there is to do.
            continue;
        }
        if used_n == p.entries.len() {
            keep.push(p.clone());
        } else if !is_old(&name) {
            report.packs_young += 1;
            keep.push(p.clone());
        } else if used_n == 0 {
            report.packs_marked += 1;
            report.bytes_marked += pack_bytes(p);
            mark.push(p.clone());
        } else {
            candidates.push((pack_bytes(p) - used_bytes, i));
        }
    }
    // Repack the emptiest packs until the unused space left is within bounds.
    candidates.sort_by(|a, b| b.0.cmp(&a.0));
    let mut unused_left: u64 = candidates.iter().map(|c| c.0).sum();
    let allowed = (report.bytes_used as f64 * opts.max_unused) as u64;
    let mut repack: Vec<usize> = Vec::new();
    for (unused, i) in candidates {
        if unused_left > allowed {
            repack.push(i);
            unused_left -= unused;
        } else {
            keep.push(active[i].clone());
        }
    }

    // Deletion records: resurrect what is needed, delete what has waited.
    let mut expired: Vec<IndexedPack> = Vec::new();
    let mut rewritten_records: Vec<(Id, DeletionRecord)> = Vec::new();
    let mut expired_records: Vec<Id> = Vec::new();
    for ((rid, rec), uses) in records.iter().zip(&record_use) {
        let mut remaining = Vec::new();
        for (p, u) in rec.packs.iter().zip(uses) {
            if u.iter().any(|x| *x) {
                report.packs_resurrected += 1;
                keep.push(p.clone());
            } else {
                remaining.push(p.clone());
            }
        }
        if now - rec.created >= opts.grace {
            expired.extend(remaining);
            expired_records.push(*rid);
        } else {
            report.packs_waiting += remaining.len();
            if remaining.len() != rec.packs.len() {
                rewritten_records.push((*rid, DeletionRecord { created: rec.created, packs: remaining }));
            }
        }
    }
    // Packs no index names: a killed backup's leftovers, once old enough.
    let known: HashSet<Id> =
        active.iter().chain(records.iter().flat_map(|(_, r)| r.packs.iter())).map(|p| p.id).collect();
    for name in stored.keys() {
        let Ok(id) = name.parse::<Id>() else { continue };
        if known.contains(&id) {
            continue;
        }
        if is_old(name) {
            report.orphans_marked += 1;
            mark.push(IndexedPack { id, salt: [0; crate::crypto::SALT_LEN], entries: vec![] });
        } else {
            report.packs_young += 1;
        }
    }
    for &i in &repack {
        let p = &active[i];
        report.packs_repacked += 1;
        for (e, u) in p.entries.iter().zip(&active_use[i]) {
            if *u {
                report.blobs_repacked += 1;
                report.bytes_repacked += e.raw_length as u64;
            }
        }
    }
    let sizes: HashMap<Id, u64> = active.iter().map(|p| (p.id, pack_bytes(p))).collect();
    report.packs_deleted = expired.len();
    report.bytes_deleted = expired.iter().map(|p| sizes.get(&p.id).copied().unwrap_or_else(|| pack_bytes(p))).sum();
    if opts.grace.is_zero() {
        report.packs_deleted += mark.len() + repack.len();
        report.bytes_deleted += mark.iter().map(pack_bytes).sum::<u64>();
        report.bytes_deleted += repack.iter().map(|&i| pack_bytes(&active[i])).sum::<u64>();
    }
    if opts.dry_run {
        return Ok(report);
    }

    if !repack.is_empty() {
        progress("repacking");
        let writer = Writer::for_repack(&indexed);
        for &i in &repack {
            let p = &active[i];
            for (e, u) in p.entries.iter().zip(&active_use[i]) {
                if *u {
                    let loc = BlobLocation { pack: PackRef { id: p.id, salt: p.salt }, entry: *e };
                    let data = indexed.read_located(&loc)?;
                    if e.encoding == Encoding::Delta {
                        // Kept a delta of the same base, which the marking
                        // above keeps too.
                        match Bases::load(&indexed, &indexed.delta_bases(&loc)?) {
                            Some(bases) => writer.save_delta(e.id, &data, &bases)?,
                            None => writer.save_with_id(e.blob_type, e.id, &data)?,
                        };
                    } else {
                        writer.save_with_id(e.blob_type, e.id, &data)?;
                    }
                }
            }
            mark.push(p.clone());
        }
        report.index_files_written += writer.finish()?.index_files;
    }

    progress("rewriting index");
    // The record first: from here on its packs are accounted for even if
    // this run stops before the index no longer names them.
    let new_record = if mark.is_empty() {
        None
    } else {
        Some(repo.save_deletion_record(&DeletionRecord { created: now, packs: mark.clone() })?)
    };
    // New index files first, old ones removed after: a run cut short leaves
    // entries named twice, never named nowhere.
    for chunk in keep.chunks(PACKS_PER_INDEX_FILE) {
        repo.save_index_file(&IndexFile { supersedes: vec![], packs: chunk.to_vec() })?;
        report.index_files_written += 1;
    }
    for id in &index_ids {
        repo.backend().delete(FileKind::Index, &id.to_hex())?;
        report.index_files_removed += 1;
    }
    for (rid, rec) in &rewritten_records {
        repo.save_deletion_record(rec)?;
        repo.backend().delete(FileKind::Deletion, &rid.to_hex())?;
    }

    progress("deleting");
    if opts.grace.is_zero() {
        expired.extend(mark);
        expired_records.extend(new_record);
    }
    for p in &expired {
        repo.backend().delete(crate::writer::pack_kind(&p.entries), &p.id.to_hex())?;
    }
    for rid in &expired_records {
        repo.backend().delete(FileKind::Deletion, &rid.to_hex())?;
    }
    crate::repository::release_free_memory();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::ParentStream;
    use crate::tree::{Name, Node, NodeKind, Tree};
    use crate::{BlobType, ContentReader, Snapshot};

    /// One stream as a snapshot: its chunks saved by `save` into a fresh
    /// writer, the tree and snapshot written after.
    fn snapshot(indexed: &Indexed, save: impl FnOnce(&Writer) -> Vec<Id>) -> (Id, Vec<Id>) {
        let w = Writer::new(indexed);
        let content = save(&w);
        let mut node = Node::new(Name::from("stdout"), NodeKind::File);
        node.content = content.clone();
        let root = w.save_tree(&Tree { nodes: vec![node] }).unwrap();
        w.finish().unwrap();
        (indexed.repo().save_snapshot(&Snapshot::new("command", root)).unwrap(), content)
    }

    #[test]
    fn a_blob_stored_both_whole_and_as_a_delta_survives_its_base_being_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let repo = crate::delta::tests::small_chunk_repo(dir.path());
        let rows = |skip: usize| -> Vec<u8> {
            (0..40_000).filter(|i| i % 97 != skip).map(|i| format!("{i}\t{:30}\n", "")).collect::<String>().into()
        };
        let (one, day_one) =
            snapshot(&repo.clone().index().unwrap(), |w| w.save_stream(&rows(1000)[..], None, &|_| {}).unwrap().0);
        // Day two as deltas of day one, and then (as a second backup running
        // at the same time would) the same chunks stored whole as well.
        let day_two = rows(5);
        let ix = repo.clone().index().unwrap();
        let (_, ids) = snapshot(&ix, |w| {
            let mut p = ParentStream::new(&ix, day_one.clone());
            w.save_stream(&day_two[..], Some(&mut p), &|_| {}).unwrap().0
        });
        let ix = repo.clone().index().unwrap();
        assert!(ids.iter().any(|id| ix.locate(id).unwrap().entry.encoding == Encoding::Delta));
        let whole = Writer::for_repack(&ix);
        let mut at = 0;
        for id in &ids {
            let data = ix.read_blob(id).unwrap();
            whole.save_with_id(BlobType::Data, *id, &data).unwrap();
            at += data.len();
        }
        assert_eq!(at, day_two.len());
        whole.finish().unwrap();
        // Day one goes; its chunks are the deltas' bases.
        repo.backend().delete(FileKind::Snapshot, &one.to_hex()).unwrap();
        let instant = PruneOptions { grace: Duration::zero(), max_unused: 0.0, dry_run: false };
        prune(&repo, &instant, &|_| {}).unwrap();
        let ix = repo.clone().index().unwrap();
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut ContentReader::new(&ix, &ids), &mut back).unwrap();
        assert!(back == day_two, "day two reads back after prune");
        let report = crate::check::check(&repo, crate::check::ReadData::All, &Default::default()).unwrap();
        assert!(report.ok(), "{:?}", report.errors);
    }
}
