//! The write path: chunk, hash, deduplicate, compress, encrypt, pack, upload.
//!
//! Callers (the sources) hand in byte streams and trees from any number of
//! threads. CPU work runs on the caller's thread — normally a rayon worker —
//! and each worker fills a pack of its own, so nothing CPU-bound waits on a
//! shared lock. Finished packs go to upload threads over a rendezvous
//! channel: at most one pack per uploader is in flight, which bounds memory
//! and pushes back on readers when storage is the bottleneck.
//!
//! Durability order is what keeps the repository consistent when a process
//! is killed: a pack is written before any index names it, an index file
//! before any snapshot relies on it (the caller writes the snapshot after
//! [`Writer::finish`]). A killed backup leaves at most packs that nothing
//! names yet; they are harmless and `prune` removes them.

use std::cell::RefCell;
use std::collections::HashSet;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use rayon::prelude::*;

use crate::backend::FileKind;
use crate::chunker::Chunker;
use crate::delta::{Bases, ParentStream};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::{Index, IndexFile, IndexedPack};
use crate::pack::{BlobType, Encoding, FinishedPack, Packer};
use crate::repository::{Indexed, Repository};
use crate::tree::Tree;

/// Index entries are flushed to an index file after this many packs, so an
/// interrupted long backup keeps what it uploaded: the re-run finds those
/// blobs in the index and does not upload them again. Object stores fail
/// mid-backup more often (outages, expired credentials) and cost more to
/// upload to again, so they flush sooner.
const INDEX_FLUSH_PACKS_LOCAL: usize = 64;
const INDEX_FLUSH_PACKS_REMOTE: usize = 8;
/// Bytes of a stream read and cut before its chunks are processed in
/// parallel.
const STREAM_BATCH: usize = 4 << 20;

/// What a writer added.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct WriteStats {
    pub blobs_new: u64,
    pub bytes_new: u64,
    pub bytes_stored: u64,
    pub packs: u64,
    pub index_files: u64,
}

#[derive(Default)]
struct Counters {
    blobs_new: AtomicU64,
    bytes_new: AtomicU64,
    bytes_stored: AtomicU64,
    packs: AtomicU64,
    index_files: AtomicU64,
}

struct Shared {
    repo: Repository,
    pending: Mutex<Vec<IndexedPack>>,
    failure: Mutex<Option<Error>>,
    failed: AtomicBool,
    counters: Counters,
    /// Pack buffers alive (being filled, waiting, or uploading). Capped so
    /// peak memory does not depend on how uploads and workers interleave.
    packs_alive: Mutex<usize>,
    pack_freed: Condvar,
    max_packs_alive: usize,
    index_flush_packs: usize,
}

/// How many 16 MiB-class pack buffers may exist at once: one being filled
/// per worker and one uploading per upload thread (at least two). Cannot
/// deadlock: a worker blocks only when no packer of its blob type is free,
/// and packers of one type never outnumber the workers, so with more room
/// than workers a blocked worker always waits on a pack that is uploading.
fn max_packs_alive(uploaders: usize) -> usize {
    let workers = rayon::current_num_threads();
    (workers + 2).max(workers + uploaders)
}

impl Shared {
    /// Waits for room for one more pack buffer.
    fn acquire_pack(&self) {
        let mut n = self.packs_alive.lock().unwrap();
        while *n >= self.max_packs_alive && !self.failed.load(Ordering::SeqCst) {
            n = self.pack_freed.wait(n).unwrap();
        }
        *n += 1;
    }

    fn release_pack(&self) {
        *self.packs_alive.lock().unwrap() -= 1;
        self.pack_freed.notify_one();
    }

    fn fail(&self, e: Error) {
        let mut f = self.failure.lock().unwrap();
        if f.is_none() {
            *f = Some(e);
        }
        self.failed.store(true, Ordering::SeqCst);
        // Workers waiting for a pack buffer must see the failure.
        self.pack_freed.notify_all();
    }

    fn write_pending_index(&self, min_packs: usize) -> Result<()> {
        let packs = {
            let mut p = self.pending.lock().unwrap();
            if p.len() < min_packs || p.is_empty() {
                return Ok(());
            }
            std::mem::take(&mut *p)
        };
        let file = IndexFile { supersedes: vec![], packs };
        match self.repo.save_index_file(&file) {
            Ok(_) => {
                self.counters.index_files.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                // Still unindexed: whoever cleans up must know them.
                self.pending.lock().unwrap().extend(file.packs);
                Err(e)
            }
        }
    }
}

/// Where a pack goes: packs hold one blob type each, and data packs may live
/// in a separate (cold) location.
pub(crate) fn pack_kind(entries: &[crate::pack::PackEntry]) -> FileKind {
    entries.first().map_or(FileKind::Pack, |e| crate::repository::pack_kind_of(e.blob_type))
}

fn upload_loop(shared: Arc<Shared>, rx: Receiver<FinishedPack>) {
    for pack in rx {
        if shared.failed.load(Ordering::SeqCst) {
            drop(pack);
            shared.release_pack();
            continue;
        }
        let len = pack.bytes.len() as u64;
        let written = shared.repo.backend().write(pack_kind(&pack.entries), &pack.id.to_hex(), pack.bytes);
        shared.release_pack();
        match written {
            Ok(()) => {
                shared.counters.packs.fetch_add(1, Ordering::Relaxed);
                shared.counters.bytes_stored.fetch_add(len, Ordering::Relaxed);
                shared.pending.lock().unwrap().push(IndexedPack {
                    id: pack.id,
                    salt: pack.salt,
                    entries: pack.entries,
                });
                if let Err(e) = shared.write_pending_index(shared.index_flush_packs) {
                    shared.fail(e);
                }
            }
            Err(e) => shared.fail(e),
        }
    }
}

/// Per-thread zstd state: a context (creating one costs more than
/// compressing a small blob) and an output buffer reused for every chunk, so
/// compressing a chunk allocates nothing and faults in no fresh pages.
struct CompressState {
    level: i32,
    ctx: zstd::bulk::Compressor<'static>,
    out: Vec<u8>,
}

thread_local! {
    static COMPRESS: RefCell<Option<CompressState>> = const { RefCell::new(None) };
}

/// Half the data of a typical application host (media, archives, already
/// compressed dumps) does not compress. For a large chunk, two 16 KiB
/// samples (start and middle) are tried first; when neither saves 1/32 the
/// whole chunk is stored raw without running zstd over megabytes for
/// nothing. Mixed content still compresses: one compressible sample is
/// enough to try the whole chunk.
fn looks_incompressible(st: &mut CompressState, data: &[u8]) -> bool {
    const SAMPLE: usize = 16 << 10;
    if data.len() < 8 * SAMPLE {
        return false;
    }
    let mid = data.len() / 2;
    [&data[..SAMPLE], &data[mid..mid + SAMPLE]].iter().all(|sample| {
        st.out.clear();
        st.out.reserve(zstd::zstd_safe::compress_bound(SAMPLE));
        matches!(st.ctx.compress_to_buffer(sample, &mut st.out), Ok(n) if n >= SAMPLE - SAMPLE / 32)
    })
}

/// Calls `f` with the bytes to store for `data` and whether they are
/// compressed. Compression is kept only when it saves at least 1/32: a
/// smaller saving is not worth decompressing on every restore.
fn with_stored<R>(level: i32, data: &[u8], f: impl FnOnce(&[u8], bool) -> R) -> R {
    if level == 0 || data.len() < 64 {
        return f(data, false);
    }
    COMPRESS.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.as_ref().is_none_or(|c| c.level != level) {
            match zstd::bulk::Compressor::new(level) {
                Ok(ctx) => *cell = Some(CompressState { level, ctx, out: Vec::new() }),
                Err(_) => return f(data, false),
            }
        }
        let st = cell.as_mut().expect("set above");
        if looks_incompressible(st, data) {
            return f(data, false);
        }
        st.out.clear();
        st.out.reserve(zstd::zstd_safe::compress_bound(data.len()));
        match st.ctx.compress_to_buffer(data, &mut st.out) {
            Ok(n) if n < data.len() - data.len() / 32 => f(&st.out[..n], true),
            _ => f(data, false),
        }
    })
}

/// A backup session's blob writer.
pub struct Writer {
    shared: Arc<Shared>,
    index: Arc<Index>,
    chunker: Chunker,
    seen: Mutex<HashSet<Id>>,
    packers: [Mutex<Vec<Packer>>; 2],
    tx: Option<Sender<FinishedPack>>,
    uploaders: Vec<JoinHandle<()>>,
    pack_size: usize,
    level: i32,
    /// Count what would be stored; store nothing.
    dry_run: bool,
}

impl Writer {
    /// A writer that chunks, hashes and counts but writes nothing: for
    /// `backup --dry-run`.
    pub fn new_dry_run(indexed: &Indexed) -> Writer {
        let mut w = Writer::open(indexed);
        w.dry_run = true;
        w
    }

    pub fn new(indexed: &Indexed) -> Writer {
        // A writer killed mid-write leaves its temporary file behind; the
        // next session clears what is clearly not in use any more. A day is
        // far beyond any single object write, and wide enough that hosts
        // sharing a repository over NFS with skewed clocks never remove each
        // other's files in flight.
        let stale = indexed.repo().backend().remove_stale_temp(std::time::Duration::from_secs(24 * 3600));
        if stale > 0 {
            tracing::info!("removed {stale} stale temporary file(s) left by interrupted writes");
        }
        Writer::open(indexed)
    }

    /// A writer that ignores the index: prune's repacking stores again
    /// blobs the index already names (in the packs it is about to drop).
    pub fn for_repack(indexed: &Indexed) -> Writer {
        let mut w = Writer::open(indexed);
        w.index = Arc::new(Index::new());
        w
    }

    fn open(indexed: &Indexed) -> Writer {
        let repo = indexed.repo().clone();
        // Local disks gain nothing from more than two writers at a time;
        // object stores hide latency behind more requests in flight.
        let uploaders = if repo.backend().is_local() { 2 } else { repo.backend().policy().uploads.max(1) };
        let shared = Arc::new(Shared {
            repo: repo.clone(),
            pending: Mutex::new(Vec::new()),
            failure: Mutex::new(None),
            failed: AtomicBool::new(false),
            packs_alive: Mutex::new(0),
            pack_freed: Condvar::new(),
            max_packs_alive: max_packs_alive(uploaders),
            index_flush_packs: if repo.backend().is_local() {
                INDEX_FLUSH_PACKS_LOCAL
            } else {
                INDEX_FLUSH_PACKS_REMOTE
            },
            counters: Counters::default(),
        });
        let (tx, rx) = crossbeam_channel::bounded::<FinishedPack>(0);
        let uploaders = (0..uploaders)
            .map(|i| {
                let (s, r) = (shared.clone(), rx.clone());
                std::thread::Builder::new()
                    .name(format!("arkiv-upload-{i}"))
                    .spawn(move || upload_loop(s, r))
                    .expect("spawn uploader")
            })
            .collect();
        Writer {
            chunker: repo.chunker(),
            pack_size: repo.config().pack_size as usize,
            level: repo.config().compression,
            shared,
            index: indexed.index().clone(),
            seen: Mutex::new(HashSet::new()),
            packers: [Mutex::new(Vec::new()), Mutex::new(Vec::new())],
            tx: Some(tx),
            uploaders,
            dry_run: false,
        }
    }

    fn check_failed(&self) -> Result<()> {
        if self.shared.failed.load(Ordering::SeqCst) {
            let msg = self.shared.failure.lock().unwrap().as_ref().map(|e| e.to_string()).unwrap_or_default();
            return Err(Error::Invalid(format!("backup stopped: {msg}")));
        }
        Ok(())
    }

    /// Whether the repository (or this session) already holds `id`.
    pub fn has_blob(&self, id: &Id) -> bool {
        self.index.contains(id) || self.seen.lock().unwrap().contains(id)
    }

    /// Stores one blob unless it is already there; returns its id.
    pub fn save_blob(&self, blob_type: BlobType, data: &[u8]) -> Result<Id> {
        let id = self.shared.repo.blob_id(blob_type, data);
        self.save_with_id(blob_type, id, data)?;
        Ok(id)
    }

    /// Stores a blob whose id the caller already knows (it read the blob
    /// from this repository, which verified the id); returns whether it was
    /// new.
    pub fn save_with_id(&self, blob_type: BlobType, id: Id, data: &[u8]) -> Result<bool> {
        self.store(blob_type, id, data, None)
    }

    /// Stores a data blob whose id the caller knows as a delta from
    /// `bases` if that pays (prune keeps repacked deltas deltas).
    pub fn save_delta(&self, id: Id, data: &[u8], bases: &Bases) -> Result<bool> {
        self.store(BlobType::Data, id, data, Some(bases))
    }

    /// Stores a blob, as a delta from `bases` when that takes less than
    /// half of what it would compressed on its own (else on its own).
    fn store(&self, blob_type: BlobType, id: Id, data: &[u8], bases: Option<&Bases>) -> Result<bool> {
        self.check_failed()?;
        // Lengths and offsets are 32-bit in the format; a larger blob (only
        // a tree of a directory with millions of entries could be) is
        // refused rather than silently truncated.
        if data.len() > u32::MAX as usize - 1024 {
            return Err(Error::Invalid(format!(
                "blob {id} is {} bytes, more than a pack entry can describe",
                data.len()
            )));
        }
        if self.index.contains(&id) || !self.seen.lock().unwrap().insert(id) {
            return Ok(false);
        }
        if self.dry_run {
            let c = &self.shared.counters;
            c.blobs_new.fetch_add(1, Ordering::Relaxed);
            c.bytes_new.fetch_add(data.len() as u64, Ordering::Relaxed);
            return Ok(true);
        }
        let delta = bases.filter(|_| self.level != 0).and_then(|b| {
            let mut out = Vec::new();
            crate::delta::encode(self.level, &b.ids, &b.plain, data, &mut out).ok()?;
            b.pays(out.len(), data.len()).then_some(out)
        });
        let pool = &self.packers[blob_type as usize];
        let pooled = pool.lock().unwrap().pop();
        let mut packer = pooled.unwrap_or_else(|| {
            self.shared.acquire_pack();
            Packer::new(self.shared.repo.key(), self.pack_size + self.chunker.params().max_size as usize + 4096)
        });
        match &delta {
            Some(d) => {
                packer.add(id, blob_type, d, Encoding::Delta, data.len() as u32);
            }
            None => with_stored(self.level, data, |stored, compressed| {
                let encoding = if compressed { Encoding::Zstd } else { Encoding::Raw };
                packer.add(id, blob_type, stored, encoding, data.len() as u32);
            }),
        }
        let c = &self.shared.counters;
        c.blobs_new.fetch_add(1, Ordering::Relaxed);
        c.bytes_new.fetch_add(data.len() as u64, Ordering::Relaxed);
        if packer.len() >= self.pack_size {
            self.send(packer.finish())?;
        } else {
            pool.lock().unwrap().push(packer);
        }
        Ok(true)
    }

    fn send(&self, pack: FinishedPack) -> Result<()> {
        let tx = self.tx.as_ref().expect("writer is open");
        tx.send(pack).map_err(|_| Error::Invalid("upload threads stopped".into()))?;
        self.check_failed()
    }

    /// Chunks and stores a whole in-memory buffer; returns the blob ids.
    pub fn save_bytes(&self, data: &[u8]) -> Result<Vec<Id>> {
        let cuts = self.chunker.split_all(data);
        let mut chunks = Vec::with_capacity(cuts.len());
        let mut pos = 0;
        for c in cuts {
            chunks.push(&data[pos..pos + c]);
            pos += c;
        }
        self.save_chunks(&chunks)
    }

    fn save_chunks(&self, chunks: &[&[u8]]) -> Result<Vec<Id>> {
        if chunks.len() == 1 {
            return Ok(vec![self.save_blob(BlobType::Data, chunks[0])?]);
        }
        chunks.par_iter().map(|c| self.save_blob(BlobType::Data, c)).collect()
    }

    /// Stores new chunks as deltas from their versions in `parent` where
    /// that pays; chunks already stored are only followed along.
    fn save_chunks_after(&self, chunks: &[&[u8]], parent: &mut ParentStream) -> Result<Vec<Id>> {
        let ids: Vec<Id> = chunks.par_iter().map(|c| self.shared.repo.blob_id(BlobType::Data, c)).collect();
        parent.prefetch(chunks.len());
        let bases: Vec<Option<Bases>> = chunks
            .iter()
            .zip(&ids)
            .map(|(c, id)| {
                if self.has_blob(id) {
                    parent.follow(id, c.len());
                    None
                } else {
                    parent.pick(c).and_then(|at| parent.bases(at, c.len()))
                }
            })
            .collect();
        chunks
            .par_iter()
            .zip(ids.par_iter())
            .zip(bases.into_par_iter())
            .map(|((c, id), base)| self.store(BlobType::Data, *id, c, base.as_ref()).map(|_| *id))
            .collect()
    }

    /// Chunks and stores a stream; `progress` is told each batch's length.
    /// With the stream's previous version (`parent`), changed chunks are
    /// stored as deltas from it. Returns the blob ids and the stream's
    /// length.
    pub fn save_stream<R: Read>(
        &self,
        r: R,
        mut parent: Option<&mut ParentStream>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(Vec<Id>, u64)> {
        let mut ids = Vec::new();
        let mut failure = None;
        let res = self.chunker.stream(r, STREAM_BATCH, |chunks| {
            let saved = match parent.as_deref_mut() {
                Some(p) => self.save_chunks_after(chunks, p),
                None => self.save_chunks(chunks),
            };
            match saved {
                Ok(v) => ids.extend(v),
                Err(e) => {
                    failure = Some(e);
                    return Err(std::io::Error::other("stopped"));
                }
            }
            progress(chunks.iter().map(|c| c.len() as u64).sum());
            Ok(())
        });
        if let Some(e) = failure {
            return Err(e);
        }
        let len = res.map_err(|e| Error::Io { path: "stream".into(), cause: e })?;
        Ok((ids, len))
    }

    pub fn save_tree(&self, tree: &Tree) -> Result<Id> {
        self.save_blob(BlobType::Tree, &tree.encode())
    }

    pub fn stats(&self) -> WriteStats {
        let c = &self.shared.counters;
        WriteStats {
            blobs_new: c.blobs_new.load(Ordering::Relaxed),
            bytes_new: c.bytes_new.load(Ordering::Relaxed),
            bytes_stored: c.bytes_stored.load(Ordering::Relaxed),
            packs: c.packs.load(Ordering::Relaxed),
            index_files: c.index_files.load(Ordering::Relaxed),
        }
    }

    /// Writes out every open pack and the remaining index entries. Only
    /// after this returns `Ok` may a snapshot refer to the blobs saved.
    pub fn finish(mut self) -> Result<WriteStats> {
        for pool in &self.packers {
            let packers = std::mem::take(&mut *pool.lock().unwrap());
            for p in packers {
                if !p.is_empty() {
                    self.send(p.finish())?;
                }
            }
        }
        self.tx = None;
        for h in self.uploaders.drain(..) {
            // An upload thread that panicked may have dropped a pack its
            // blobs' callers believe stored: the session cannot commit.
            if h.join().is_err() {
                self.shared.fail(Error::Invalid("an upload thread failed; no snapshot was written".into()));
            }
        }
        if let Some(e) = self.shared.failure.lock().unwrap().take() {
            self.keep_or_discard_uploaded();
            return Err(e);
        }
        if !self.dry_run {
            self.shared.write_pending_index(0)?;
        }
        Ok(self.stats())
    }
}

impl Writer {
    /// After a failure: the packs that did land are indexed, so the re-run
    /// of an interrupted backup uploads only what is missing. When even
    /// that small write fails (a full disk, a store still down) they are
    /// deleted instead, best effort, so a full disk does not stay full.
    fn keep_or_discard_uploaded(&self) {
        if self.dry_run {
            return;
        }
        match self.shared.write_pending_index(0) {
            Ok(()) => {}
            Err(e) => {
                tracing::debug!("cannot index the packs of a failed backup: {e}");
                self.discard_unindexed();
            }
        }
    }

    /// Deletes the packs this session uploaded but no index names yet.
    /// Nothing can refer to them — other sessions deduplicate only against
    /// written index files.
    fn discard_unindexed(&self) {
        let packs = std::mem::take(&mut *self.shared.pending.lock().unwrap());
        for p in packs {
            if let Err(e) = self.shared.repo.backend().delete(pack_kind(&p.entries), &p.id.to_hex()) {
                tracing::warn!("cannot remove unindexed pack {} after a failed backup: {e}", p.id);
            }
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // An abandoned writer (an error elsewhere) stops its threads and
        // removes what it uploaded but never indexed.
        if self.tx.is_none() && self.uploaders.is_empty() {
            return;
        }
        self.tx = None;
        for h in self.uploaders.drain(..) {
            let _ = h.join();
        }
        self.keep_or_discard_uploaded();
    }
}
