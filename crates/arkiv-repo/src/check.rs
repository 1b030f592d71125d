//! `check`: proves the repository is whole.
//!
//! Structure (always): every index file opens, every pack an index names
//! exists with the size its entries imply, every snapshot opens, every tree
//! it reaches decodes and every blob it names is indexed. Data (with
//! `--read-data` or a subset): every byte of each chosen pack is read, its
//! name re-hashed, its header compared with the index, and every blob
//! decrypted and checked against its id.
//!
//! Problems are collected, not raised: a check reports everything it finds
//! in one run, each line naming the object.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rand::seq::SliceRandom;
use rayon::prelude::*;
use serde::Serialize;

use crate::backend::FileKind;
use crate::crypto::TAG_LEN;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::{Index, IndexFile};
use crate::pack::{self, BlobType, Encoding, PackEntry, ENTRY_LEN};
use crate::repository::Repository;
use crate::tree::{NodeKind, Tree};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReadData {
    None,
    All,
    /// A fraction in (0, 1] of the packs, chosen at random.
    Subset(f64),
}

impl ReadData {
    /// Parses `--read-data-subset` values: `25%`, `0.25`, or `n/m`.
    pub fn parse_subset(s: &str) -> Result<ReadData> {
        let bad =
            || Error::Invalid(format!("'{s}' is not a subset: use N% (e.g. 10%), a fraction (0.1) or n/m (1/10)"));
        let f = if let Some(p) = s.strip_suffix('%') {
            p.trim().parse::<f64>().map_err(|_| bad())? / 100.0
        } else if let Some((n, m)) = s.split_once('/') {
            let (n, m): (f64, f64) = (n.trim().parse().map_err(|_| bad())?, m.trim().parse().map_err(|_| bad())?);
            if m == 0.0 {
                return Err(bad());
            }
            n / m
        } else {
            s.trim().parse::<f64>().map_err(|_| bad())?
        };
        if !(f > 0.0 && f <= 1.0) {
            return Err(bad());
        }
        Ok(ReadData::Subset(f))
    }
}

#[derive(Debug, Default)]
pub struct CheckProgress {
    pub packs_total: AtomicU64,
    pub packs_done: AtomicU64,
    pub bytes_read: AtomicU64,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct CheckReport {
    pub index_files: usize,
    pub packs: usize,
    pub blobs: usize,
    pub snapshots: usize,
    pub trees: usize,
    pub packs_read: usize,
    pub bytes_read: u64,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}

fn expected_pack_size(entries: &[PackEntry]) -> u64 {
    let end = entries.iter().map(|e| e.offset as u64 + e.length as u64).max().unwrap_or(pack::PREAMBLE_LEN as u64);
    end + (4 + entries.len() * ENTRY_LEN + TAG_LEN) as u64 + 4
}

pub fn check(repo: &Repository, read: ReadData, progress: &CheckProgress) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let errors = Mutex::new(Vec::<String>::new());
    let err = |s: String| errors.lock().unwrap().push(s);

    // Index files: each must open; together they describe the packs.
    let index_names = repo.backend().list(FileKind::Index)?;
    report.index_files = index_names.len();
    let files: Vec<(Id, IndexFile)> = load_each(&index_names, |id| repo.load_index_file(id), &err);
    let superseded: HashSet<Id> = files.iter().flat_map(|(_, f)| f.supersedes.iter().copied()).collect();
    // Each pack's entries are kept once, here; the index is built from them.
    let mut pack_entries: HashMap<Id, ([u8; crate::crypto::SALT_LEN], Vec<PackEntry>)> = HashMap::new();
    let mut index = Index::new();
    for (id, f) in files {
        if superseded.contains(&id) {
            continue;
        }
        for p in f.packs {
            index.add_pack(p.id, p.salt, &p.entries);
            pack_entries.entry(p.id).or_insert((p.salt, p.entries));
        }
    }
    // Packs awaiting deletion by prune: still readable, so a snapshot that
    // came to need one of their blobs is whole (the next prune keeps it).
    let mut pending: HashSet<Id> = HashSet::new();
    match repo.list_deletion_records() {
        Ok(records) => {
            for p in records.iter().flat_map(|(_, r)| &r.packs) {
                if !pack_entries.contains_key(&p.id) {
                    index.add_pack(p.id, p.salt, &p.entries);
                    pending.insert(p.id);
                }
            }
        }
        Err(e) => err(format!("deletion records: {e}")),
    }
    index.finish();
    report.blobs = index.len();

    // Packs: named ones must exist at the right size; unnamed ones are
    // leftovers of an interrupted backup.
    let stored: HashMap<String, u64> = repo.backend().list(FileKind::Pack)?.into_iter().collect();
    report.packs = stored.len();
    for (id, (_, entries)) in &pack_entries {
        match stored.get(&id.to_hex()) {
            None => err(format!("pack {id} is named by the index but missing from storage")),
            Some(&size) => {
                let want = expected_pack_size(entries);
                if size != want {
                    err(format!("pack {id} is {size} bytes; its index entries imply {want} (truncated or replaced)"));
                }
            }
        }
    }
    let orphans = stored
        .keys()
        .filter(|n| n.parse::<Id>().map(|id| !pack_entries.contains_key(&id) && !pending.contains(&id)).unwrap_or(true))
        .count();
    if !pending.is_empty() {
        report.warnings.push(format!("{} pack(s) await deletion by prune after their grace period", pending.len()));
    }
    if orphans > 0 {
        report.warnings.push(format!(
            "{orphans} pack(s) are in no index: left by an interrupted backup; harmless, nothing refers to them"
        ));
    }

    // Snapshots and every tree they reach.
    let snaps = repo.backend().list(FileKind::Snapshot)?;
    report.snapshots = snaps.len();
    let roots: Vec<(Id, Id)> = load_each(&snaps, |id| repo.load_snapshot(id).map(|s| s.tree), &err);
    let indexed = crate::repository::Indexed::from_parts(repo.clone(), index);
    let seen: Mutex<HashSet<Id>> = Mutex::new(HashSet::new());
    fn walk(
        ix: &crate::repository::Indexed,
        snap: &Id,
        tree: &Id,
        path: &str,
        seen: &Mutex<HashSet<Id>>,
        deltas: &Mutex<HashMap<Id, String>>,
        err: &(dyn Fn(String) + Sync),
    ) {
        if !seen.lock().unwrap().insert(*tree) {
            return;
        }
        let t: Tree = match ix.load_tree(tree) {
            Ok(t) => t,
            Err(e) => return err(format!("snapshot {}: {path}: {e}", snap.short())),
        };
        t.nodes.par_iter().for_each(|n| {
            let p = format!("{}/{}", path.trim_end_matches('/'), n.name.lossy());
            match n.kind {
                NodeKind::Dir => match &n.subtree {
                    Some(sub) => walk(ix, snap, sub, &p, seen, deltas, err),
                    None => err(format!("snapshot {}: {p}: directory without a tree", snap.short())),
                },
                NodeKind::File => {
                    for b in &n.content {
                        match ix.index().get(b) {
                            Some(l) if l.entry.encoding == Encoding::Delta && l.entry.blob_type == BlobType::Data => {
                                deltas
                                    .lock()
                                    .unwrap()
                                    .entry(*b)
                                    .or_insert_with(|| format!("snapshot {}: {p}", snap.short()));
                            }
                            Some(l) if l.entry.blob_type == BlobType::Data => {}
                            Some(_) => err(format!("snapshot {}: {p}: blob {b} is not a data blob", snap.short())),
                            None => err(format!("snapshot {}: {p}: blob {b} is missing from the index", snap.short())),
                        }
                    }
                }
                NodeKind::Symlink => {}
            }
        });
    }
    let deltas: Mutex<HashMap<Id, String>> = Mutex::new(HashMap::new());
    roots.par_iter().for_each(|(s, t)| walk(&indexed, s, t, "/", &seen, &deltas, &err));
    report.trees = seen.lock().unwrap().len();
    // A delta blob is whole only with its bases, which no tree names: each
    // delta is read (they are small) for the bases it names.
    let deltas: Vec<(Id, String)> = deltas.into_inner().unwrap().into_iter().collect();
    deltas.par_iter().for_each(|(id, place)| {
        let Some(loc) = indexed.index().get(id) else { return };
        match indexed.delta_bases(&loc) {
            Ok(bases) => {
                for base in bases {
                    match indexed.locate(&base) {
                        Some(b) if b.entry.blob_type == BlobType::Data && b.entry.encoding != Encoding::Delta => {}
                        Some(_) => err(format!("{place}: blob {id}: its delta base {base} is not a full data blob")),
                        None => err(format!("{place}: blob {id}: its delta base {base} is missing from the index")),
                    }
                }
            }
            Err(e) => err(format!("{place}: blob {id}: {e}")),
        }
    });

    // Data. The trees decoded above are garbage now; return their memory
    // before whole packs are read (the index stays: delta blobs read their
    // bases through it).
    crate::repository::release_free_memory();
    let mut to_read: Vec<(Id, &([u8; crate::crypto::SALT_LEN], Vec<PackEntry>))> =
        pack_entries.iter().filter(|(id, _)| stored.contains_key(&id.to_hex())).map(|(id, e)| (*id, e)).collect();
    to_read.sort_by_key(|(id, _)| *id);
    match read {
        ReadData::None => to_read.clear(),
        ReadData::All => {}
        ReadData::Subset(f) => {
            let n = ((to_read.len() as f64 * f).ceil() as usize).min(to_read.len());
            to_read.shuffle(&mut rand::thread_rng());
            to_read.truncate(n);
        }
    }
    progress.packs_total.store(to_read.len() as u64, Ordering::Relaxed);
    report.packs_read = to_read.len();
    // One pack in memory at a time, its blobs verified in parallel: reading
    // two whole packs at once cost 16 MiB more peak memory for no speed.
    to_read.iter().for_each(|(id, (salt, entries))| {
        let name = id.to_hex();
        match repo.backend().read_stored(crate::writer::pack_kind(entries), &name) {
            Ok(bytes) => {
                progress.bytes_read.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                for e in verify_pack(repo, id, salt, &bytes, entries, &|b| indexed.base(b)) {
                    err(e);
                }
            }
            Err(e) => err(format!("pack {id}: {e}")),
        }
        progress.packs_done.fetch_add(1, Ordering::Relaxed);
    });
    report.bytes_read = progress.bytes_read.load(Ordering::Relaxed);
    let mut errors = errors.into_inner().unwrap();
    errors.sort();
    errors.dedup();
    report.errors = errors;
    Ok(report)
}

/// Loads every named object in parallel; each one that fails is reported
/// through `err` and left out, so one damaged file hides nothing else.
fn load_each<T: Send>(
    names: &[(String, u64)],
    load: impl Fn(&Id) -> Result<T> + Sync,
    err: &(dyn Fn(String) + Sync),
) -> Vec<(Id, T)> {
    names
        .par_iter()
        .filter_map(|(n, _)| {
            let id: Id = n.parse().ok()?;
            load(&id).map_err(|e| err(e.to_string())).ok().map(|v| (id, v))
        })
        .collect()
}

/// Every problem in one pack read whole: its name, its header, each blob.
fn verify_pack(
    repo: &Repository,
    id: &Id,
    index_salt: &[u8; crate::crypto::SALT_LEN],
    bytes: &[u8],
    entries: &[PackEntry],
    bases: pack::Bases,
) -> Vec<String> {
    let mut out = Vec::new();
    // Restore derives the pack key from the salt the index records; a pack
    // whose own salt differs would pass a check that used only the pack.
    if pack::read_preamble(&id.to_hex(), bytes).is_ok_and(|s| &s != index_salt) {
        out.push(format!("pack {id}: its salt differs from the one the index records"));
    }
    if Id::of_stored(bytes) != *id {
        out.push(format!("pack {id}: contents do not match its name (the file was modified)"));
    }
    let salt = match pack::read_header(repo.key(), &id.to_hex(), bytes) {
        Ok((salt, header)) => {
            let mut h = header.clone();
            let mut i = entries.to_vec();
            h.sort_by_key(|e| e.offset);
            i.sort_by_key(|e| e.offset);
            if h != i {
                out.push(format!("pack {id}: header disagrees with the index"));
            }
            salt
        }
        Err(e) => {
            out.push(format!("pack {id}: {e}"));
            match pack::read_preamble(&id.to_hex(), bytes) {
                Ok(s) => s,
                Err(_) => return out,
            }
        }
    };
    let cipher = repo.key().pack_cipher(&salt);
    let blob_errors: Vec<String> = entries
        .par_iter()
        .filter_map(|e| {
            let range = e.offset as usize..e.offset as usize + e.length as usize;
            match bytes.get(range) {
                Some(ct) => pack::open_blob(repo.key(), &cipher, e, ct, &id.to_hex(), bases).err().map(|err| {
                    let reason = match err {
                        Error::Corrupt { reason, .. } => reason,
                        other => other.to_string(),
                    };
                    format!("pack {id}: blob {}: {reason}", e.id)
                }),
                None => Some(format!("pack {id}: blob {} lies beyond the end of the pack", e.id)),
            }
        })
        .collect();
    out.extend(blob_errors);
    out
}
