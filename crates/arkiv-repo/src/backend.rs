//! Storage backends: the engine speaks only to OpenDAL operators, so a
//! local directory and an object store behave the same.
//!
//! The engine is synchronous (CPU-bound work runs on rayon), OpenDAL is
//! async; this module owns the bridge: one shared tokio runtime on which every
//! storage call is driven to completion. It also owns what makes remote
//! storage dependable: retries with backoff, timeouts, a hot/cold split and a
//! local cache of metadata files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use opendal::{ErrorKind, Operator};

use crate::error::{Error, Result};
use crate::id::Id;

/// OpenDAL itself, so a source reading object storage (the bucket source)
/// uses the same version and services as the repository.
pub use opendal;

/// The IO runtime, behind a lock only so that [`shutdown`] can take it at
/// the end of the process.
fn runtime() -> &'static std::sync::RwLock<Option<tokio::runtime::Runtime>> {
    static RT: OnceLock<std::sync::RwLock<Option<tokio::runtime::Runtime>>> = OnceLock::new();
    RT.get_or_init(|| {
        std::sync::RwLock::new(Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("arkiv-io")
                .enable_all()
                .build()
                .expect("the IO runtime starts"),
        ))
    })
}

/// Runs a future to completion on the IO runtime. Callers may be plain
/// threads or rayon workers; from inside another tokio runtime use
/// `spawn_blocking` first.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let rt = runtime().read().unwrap_or_else(|e| e.into_inner());
    rt.as_ref().expect("storage used after arkiv_repo::backend::shutdown").block_on(f)
}

/// Stops the IO runtime, dropping what its tasks hold. Call once at the end
/// of a process, after every repository is dropped: SFTP sessions live in
/// runtime tasks, and only dropping them ends their `ssh` master processes,
/// which would otherwise outlive the process.
pub fn shutdown() {
    let rt = runtime().write().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(rt) = rt {
        // Long enough for SFTP's `ssh -O exit` on a loaded machine (5 s
        // was not, under a full parallel test run); only waits for work
        // still in flight.
        rt.shutdown_timeout(Duration::from_secs(15));
    }
}

/// Kinds of stored object, each in its own directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Config,
    Key,
    Snapshot,
    Index,
    /// A pack of tree blobs: metadata, kept in the hot location.
    Pack,
    /// A pack of file-content blobs: in the cold location when there is one.
    DataPack,
    /// A prune's record of packs awaiting deletion.
    Deletion,
    /// A running prune's notice to other prunes.
    Lock,
    /// A file kept whole under its own name (PostgreSQL WAL): bulk data,
    /// in the cold location when there is one.
    Archive,
}

impl FileKind {
    pub fn dir(self) -> &'static str {
        match self {
            FileKind::Config => "",
            FileKind::Key => "keys/",
            FileKind::Snapshot => "snapshots/",
            FileKind::Index => "index/",
            FileKind::Pack | FileKind::DataPack => "data/",
            FileKind::Deletion => "deletions/",
            FileKind::Lock => "locks/",
            FileKind::Archive => "archive/",
        }
    }

    /// Path of object `name` of this kind. Packs fan out over 256
    /// directories by the first two hex digits, as restic does, so no local
    /// directory holds millions of entries.
    pub fn path(self, name: &str) -> String {
        match self {
            FileKind::Config => "config".to_string(),
            FileKind::Pack | FileKind::DataPack => format!("data/{}/{}", &name[..2.min(name.len())], name),
            // WAL segment names start with 8 digits of timeline and 8 of
            // log: one directory per 4 GiB of WAL, as pgBackRest lays it out.
            FileKind::Archive if name.len() >= 24 => format!("archive/{}/{}", &name[..16], name),
            _ => format!("{}{}", self.dir(), name),
        }
    }

    fn is_pack(self) -> bool {
        matches!(self, FileKind::Pack | FileKind::DataPack)
    }
}

/// How hard to try before a storage operation counts as failed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IoPolicy {
    /// Retries after the first attempt, for errors the backend calls temporary
    /// (timeouts, 5xx, dropped connections). Permanent ones (403, 404) fail at once.
    pub retries: u32,
    /// First backoff; doubled each retry, capped at 30 s, with full jitter.
    pub backoff: Duration,
    /// Limit on a whole request without a body (stat, list page, delete).
    pub timeout: Duration,
    /// Limit on each step of a transfer: one read or write call, or the
    /// completion of an upload — for a pack, the whole object.
    pub io_timeout: Duration,
    /// Uploads in flight at once.
    pub uploads: usize,
}

impl Default for IoPolicy {
    fn default() -> Self {
        IoPolicy {
            retries: 6,
            backoff: Duration::from_millis(200),
            timeout: Duration::from_secs(60),
            io_timeout: Duration::from_secs(30),
            uploads: 4,
        }
    }
}

/// One storage location: an operator and how to name it in messages.
#[derive(Clone)]
pub struct Store {
    op: Operator,
    /// The location without credentials or query, as messages show it.
    location: String,
    /// The directory of a local store (for `tmp/` and directory fsync).
    local_root: Option<PathBuf>,
    /// Write under a temporary name and rename into place: for servers
    /// (SFTP, FTP, WebDAV) that would otherwise leave a cut-off upload
    /// under its final, content-derived name.
    rename_writes: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.location)
    }
}

impl Store {
    /// A store in a local directory.
    pub fn local(path: &Path) -> Result<Store> {
        let abs = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir().map_err(|e| Error::Io { path: path.display().to_string(), cause: e })?.join(path)
        };
        let root = abs.to_string_lossy().to_string();
        // Writes go to a temporary file in `tmp/` and are renamed into place,
        // so a killed process never leaves a truncated object under its
        // final, content-derived name.
        let builder = opendal::services::Fs::default().root(&root).atomic_write_dir(&format!("{root}/tmp"));
        let op = Operator::new(builder).map_err(|e| Error::Backend {
            op: "open",
            path: root.clone(),
            message: describe(&e),
        })?;
        Ok(Store { op, location: root, local_root: Some(abs), rename_writes: false })
    }

    /// Any OpenDAL operator; `location` is how errors and listings name it.
    pub fn remote(op: Operator, location: impl Into<String>) -> Store {
        Store { op, location: location.into(), local_root: None, rename_writes: false }
    }

    /// See `rename_writes`.
    pub fn with_rename_writes(mut self) -> Store {
        self.rename_writes = true;
        self
    }

    /// A local directory reached through `op` (with layers around the fs
    /// service): `root` is still known for `tmp/` and directory fsync.
    pub(crate) fn with_root(op: Operator, location: impl Into<String>, root: PathBuf) -> Store {
        let root = if root.is_absolute() { root } else { std::env::current_dir().unwrap_or_default().join(root) };
        Store { op, location: location.into(), local_root: Some(root), rename_writes: false }
    }

    /// The operator, for sources that read object storage themselves
    /// (the bucket source).
    pub fn op(&self) -> &Operator {
        &self.op
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    pub fn is_local(&self) -> bool {
        self.local_root.is_some()
    }
}

/// A repository's storage: a hot location for everything, or a hot one for
/// metadata and a cold one for file data.
#[derive(Clone)]
pub struct Backend {
    hot: Store,
    cold: Option<Store>,
    policy: IoPolicy,
    cache: Option<PathBuf>,
    /// Tree packs of a remote repository held whole in memory (see
    /// [`Backend::read_range`]), shared by clones.
    trees: Arc<TreePacks>,
}

/// Whole tree packs read in this process, up to [`TreePacks::BUDGET`] bytes.
#[derive(Default)]
struct TreePacks {
    packs: Mutex<HashMap<String, Arc<OnceLock<bytes::Bytes>>>>,
    held: AtomicUsize,
}

impl TreePacks {
    /// Tree data for roughly a million files; past it, tree blobs are read
    /// one range at a time as before.
    const BUDGET: usize = 256 << 20;
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Backend({})", self.location())
    }
}

/// One line, whatever the service put in its error: OpenDAL's own display
/// carries response bodies (multi-line XML) and request context.
pub fn describe(e: &opendal::Error) -> String {
    let mut msg = e.message().to_string();
    let mut src = std::error::Error::source(e);
    let mut deepest = None;
    while let Some(s) = src {
        deepest = Some(s.to_string());
        src = s.source();
    }
    if let Some(d) = deepest {
        msg = format!("{msg}: {d}");
    }
    if msg.is_empty() {
        msg = e.kind().to_string();
    }
    let kind = match e.kind() {
        ErrorKind::PermissionDenied => "permission denied: ",
        ErrorKind::ConfigInvalid => "invalid configuration: ",
        _ => "",
    };
    let mut line: String = format!("{kind}{msg}").split_whitespace().collect::<Vec<_>>().join(" ");
    if line.len() > 300 {
        let mut cut = 300;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push('…');
    }
    line
}

/// Only content-named objects count: a stray file is not ours.
fn is_content_name(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn io_err(op: &'static str, path: &str, location: &str, e: opendal::Error) -> Error {
    if e.kind() == ErrorKind::NotFound {
        return Error::NotFound { what: format!("{location}/{path}") };
    }
    Error::Backend { op, path: format!("{location}/{path}"), message: describe(&e) }
}

impl Backend {
    /// A repository in a local directory.
    pub fn local(path: &Path) -> Result<Backend> {
        Ok(Backend::new(Store::local(path)?, None))
    }

    /// A repository in one store, with data packs in `cold` if given.
    pub fn new(hot: Store, cold: Option<Store>) -> Backend {
        Backend { hot, cold, policy: IoPolicy::default(), cache: None, trees: Arc::default() }
    }

    pub fn with_policy(mut self, policy: IoPolicy) -> Backend {
        self.policy = policy;
        self
    }

    /// Keeps copies of index files, snapshots, deletion records and tree
    /// packs in `dir`, so listing, opening and walking the trees of a remote
    /// repository reads each of them over the network once.
    /// Every cached file is checked against its name (a hash of its bytes)
    /// before use; a damaged or stale one is fetched again, and files gone
    /// from the repository are dropped from the cache when it is listed.
    pub fn with_cache(mut self, dir: PathBuf) -> Backend {
        self.cache = Some(dir);
        self
    }

    pub fn policy(&self) -> &IoPolicy {
        &self.policy
    }

    /// How messages name the repository: its hot location, and the cold one.
    pub fn location(&self) -> String {
        match &self.cold {
            Some(c) => format!("{} (data: {})", self.hot.location, c.location),
            None => self.hot.location.clone(),
        }
    }

    pub fn is_split(&self) -> bool {
        self.cold.is_some()
    }

    pub fn is_local(&self) -> bool {
        self.hot.is_local() && self.cold.as_ref().is_none_or(|c| c.is_local())
    }

    fn store(&self, kind: FileKind) -> &Store {
        match (kind, &self.cold) {
            (FileKind::DataPack | FileKind::Archive, Some(cold)) => cold,
            _ => &self.hot,
        }
    }

    /// The other place a pack could be: packs are routed by the blob type
    /// the caller expects, and an orphan's type is unknown.
    fn other_store(&self, kind: FileKind) -> Option<&Store> {
        let cold = self.cold.as_ref()?;
        match kind {
            FileKind::Pack => Some(cold),
            FileKind::DataPack => Some(&self.hot),
            _ => None,
        }
    }

    /// Runs `f` until it succeeds, fails permanently or runs out of retries.
    /// Whole operations are retried, never parts of one: every object is
    /// written whole under a name derived from its content, so writing it
    /// again is always safe, whatever the failed attempt left behind.
    fn retry<T, F, Fut>(&self, what: &str, f: F) -> std::result::Result<T, opendal::Error>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, opendal::Error>>,
    {
        block_on(async {
            let mut attempt = 0u32;
            loop {
                match f().await {
                    Ok(v) => return Ok(v),
                    Err(e) if e.is_temporary() && attempt < self.policy.retries => {
                        let cap = self.policy.backoff.saturating_mul(1 << attempt.min(16)).min(Duration::from_secs(30));
                        let wait = cap.mul_f64(rand::random::<f64>());
                        attempt += 1;
                        tracing::debug!("{what}: {} (retry {attempt} in {wait:?})", describe(&e));
                        tokio::time::sleep(wait).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        })
    }

    /// Reads a whole object. `Bytes`, not `Vec`: OpenDAL's buffer is handed
    /// over without a copy, so reading a 16 MiB pack holds 16 MiB, not 32.
    pub fn read(&self, kind: FileKind, name: &str) -> Result<bytes::Bytes> {
        if let Some(b) = self.cached(kind, name) {
            return Ok(b);
        }
        self.read_stored(kind, name)
    }

    /// Reads a whole object from the repository itself, never from the
    /// cache (`check --read-data` must verify what is stored), and caches it.
    pub fn read_stored(&self, kind: FileKind, name: &str) -> Result<bytes::Bytes> {
        let path = kind.path(name);
        let got = self.read_from(self.store(kind), &path);
        let got = match (got, self.other_store(kind)) {
            (Err(Error::NotFound { .. }), Some(other)) => self.read_from(other, &path),
            (r, _) => r,
        }?;
        self.fill_cache(kind, name, &got);
        Ok(got)
    }

    fn read_from(&self, store: &Store, path: &str) -> Result<bytes::Bytes> {
        self.retry(path, || async { store.op.read(path).await.map(|b| b.to_bytes()) })
            .map_err(|e| io_err("read", path, &store.location, e))
    }

    /// Reads `len` bytes at `offset` of an object. With a cache, a tree
    /// pack is read whole once (from the cache, else from the repository,
    /// then cached) and kept in memory: walking the trees of a snapshot
    /// reads one small blob per directory, and a request per directory to
    /// an object store cost a restore of 18,000 files over a second of
    /// round trips before its first byte of data.
    pub fn read_range(&self, kind: FileKind, name: &str, offset: u64, len: u64) -> Result<bytes::Bytes> {
        self.read_range_buffer(kind, name, offset, len).map(|b| b.to_bytes())
    }

    /// The whole tree pack `name` from memory or the cache, when trees are
    /// cached and the memory budget allows; `None` to read a range instead.
    fn tree_pack(&self, kind: FileKind, name: &str) -> Result<Option<bytes::Bytes>> {
        if kind != FileKind::Pack || self.cache.is_none() {
            return Ok(None);
        }
        let slot = {
            let mut packs = self.trees.packs.lock().unwrap();
            match packs.get(name) {
                Some(slot) => slot.clone(),
                None if self.trees.held.load(Ordering::Relaxed) >= TreePacks::BUDGET => return Ok(None),
                None => packs.entry(name.to_string()).or_default().clone(),
            }
        };
        if let Some(b) = slot.get() {
            return Ok(Some(b.clone()));
        }
        // Two threads wanting the same pack at once may both read it; the
        // first to finish is kept. Rare, and cheaper than a lock held over
        // a network read.
        let whole = self.read(kind, name)?;
        if slot.set(whole.clone()).is_ok() {
            self.trees.held.fetch_add(whole.len(), Ordering::Relaxed);
        }
        Ok(Some(slot.get().cloned().unwrap_or(whole)))
    }

    /// [`Self::read_range`] into the caller's buffer (replacing what it
    /// held). A restore reads a gigabyte in runs of a few megabytes: reusing
    /// one buffer per thread spares the page faults, zeroing and unmapping
    /// of a fresh allocation per run, which cost more than the copy.
    pub fn read_range_into(&self, kind: FileKind, name: &str, offset: u64, len: u64, out: &mut Vec<u8>) -> Result<()> {
        let buf = self.read_range_buffer(kind, name, offset, len)?;
        out.clear();
        out.reserve(buf.len());
        for chunk in buf {
            out.extend_from_slice(&chunk);
        }
        Ok(())
    }

    /// Both range reads: a tree pack from [`Self::tree_pack`] when it gives
    /// one, else one ranged request.
    fn read_range_buffer(&self, kind: FileKind, name: &str, offset: u64, len: u64) -> Result<opendal::Buffer> {
        if let Some(pack) = self.tree_pack(kind, name)? {
            let end = offset.saturating_add(len);
            if end > pack.len() as u64 {
                return Err(Error::corrupt(
                    format!("pack {name}"),
                    format!("is {} bytes; bytes {offset}..{end} were asked for", pack.len()),
                ));
            }
            return Ok(pack.slice(offset as usize..end as usize).into());
        }
        let path = kind.path(name);
        let read = |store: &Store| {
            self.retry(&path, || async { store.op.read_with(&path).range(offset..offset + len).await })
                .map_err(|e| io_err("read", &path, &store.location, e))
        };
        match (read(self.store(kind)), self.other_store(kind)) {
            (Err(Error::NotFound { .. }), Some(other)) => read(other),
            (r, _) => r,
        }
    }

    pub fn write(&self, kind: FileKind, name: &str, data: Vec<u8>) -> Result<()> {
        let path = kind.path(name);
        let store = self.store(kind);
        let data = bytes::Bytes::from(data);
        // Not `Operator::write`: it leaves the temporary file of a failed
        // local write behind, so a full disk would stay full. Abort removes it.
        self.retry(&path, || async {
            let target =
                if store.rename_writes { format!("tmp/{name}.{:016x}", rand::random::<u64>()) } else { path.clone() };
            let mut w = store.op.writer(&target).await?;
            let mut r = match w.write(data.clone()).await {
                Ok(()) => w.close().await.map(|_| ()),
                Err(e) => Err(e),
            };
            if r.is_err() {
                let _ = w.abort().await;
            }
            if store.rename_writes {
                if r.is_ok() {
                    r = store.op.rename(&target, &path).await;
                }
                if r.is_err() {
                    let _ = store.op.delete(&target).await;
                }
            }
            r
        })
        .map_err(|e| io_err("write", &path, &store.location, e))?;
        self.sync_parent(store, kind, &path)?;
        self.fill_cache(kind, name, &data);
        Ok(())
    }

    /// OpenDAL's local writer syncs the file before renaming it into place,
    /// but a rename is durable only once its directory is synced: without
    /// this, a snapshot reported as saved could vanish in a power cut, or
    /// outlive the pack it names. Object stores need nothing of the kind.
    fn sync_parent(&self, store: &Store, kind: FileKind, path: &str) -> Result<()> {
        let Some(root) = &store.local_root else { return Ok(()) };
        let full = root.join(path);
        let mut dirs = vec![full.parent().map(|p| p.to_path_buf()).unwrap_or_else(|| root.clone())];
        if kind.is_pack() {
            // data/XX/ itself may have just been created.
            dirs.push(root.join("data"));
        }
        for d in dirs {
            std::fs::File::open(&d).and_then(|f| f.sync_all()).map_err(|e| Error::Backend {
                op: "sync",
                path: d.display().to_string(),
                message: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// Removes temporary files older than `age` from a local repository's
    /// `tmp/`: what a killed writer left half-written. Younger ones may
    /// belong to a backup running right now and are left alone. Returns how
    /// many were removed; object stores have no temporary files.
    pub fn remove_stale_temp(&self, age: Duration) -> usize {
        let mut removed = 0;
        for store in std::iter::once(&self.hot).chain(self.cold.as_ref()) {
            if store.rename_writes {
                removed += self.remove_stale_remote_temp(store, age);
            }
            let Some(root) = &store.local_root else { continue };
            let Ok(entries) = std::fs::read_dir(root.join("tmp")) else { continue };
            for e in entries.flatten() {
                let old = e
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|a| a > age);
                if old && std::fs::remove_file(e.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        removed
    }

    /// The staging files of writes to SFTP, FTP or WebDAV that a killed
    /// process never renamed into place. Best effort: a store that cannot
    /// list `tmp/` keeps them until the next try.
    fn remove_stale_remote_temp(&self, store: &Store, age: Duration) -> usize {
        let Ok(entries) = self.list_entries(store, "tmp/") else { return 0 };
        let mut removed = 0;
        for e in entries {
            let old = self
                .modified(store, &e)
                .ok()
                .flatten()
                .is_some_and(|t| chrono::Utc::now().signed_duration_since(t).to_std().is_ok_and(|a| a > age));
            if old && self.retry(e.path(), || store.op.delete(e.path())).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    pub fn exists(&self, kind: FileKind, name: &str) -> Result<bool> {
        let path = kind.path(name);
        let store = self.store(kind);
        self.retry(&path, || store.op.exists(&path)).map_err(|e| io_err("stat", &path, &store.location, e))
    }

    pub fn size(&self, kind: FileKind, name: &str) -> Result<u64> {
        let path = kind.path(name);
        let store = self.store(kind);
        self.retry(&path, || async { store.op.stat(&path).await.map(|m| m.content_length()) })
            .map_err(|e| io_err("stat", &path, &store.location, e))
    }

    /// Deletes an object; deleting one that is already gone succeeds. A pack
    /// is deleted wherever it may be.
    pub fn delete(&self, kind: FileKind, name: &str) -> Result<()> {
        let path = kind.path(name);
        for store in std::iter::once(self.store(kind)).chain(self.other_store(kind)) {
            self.retry(&path, || store.op.delete(&path)).map_err(|e| io_err("delete", &path, &store.location, e))?;
        }
        if let Some(f) = self.cache_file(kind, name) {
            let _ = std::fs::remove_file(f);
        }
        if let Some(slot) = self.trees.packs.lock().unwrap().remove(name) {
            if let Some(b) = slot.get() {
                self.trees.held.fetch_sub(b.len(), Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Names (not paths) and sizes of every object of `kind`; for packs,
    /// those in both locations.
    pub fn list(&self, kind: FileKind) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        let stores: Vec<&Store> = if kind.is_pack() {
            std::iter::once(&self.hot).chain(self.cold.as_ref()).collect()
        } else {
            vec![self.store(kind)]
        };
        for store in stores {
            out.extend(self.list_store(store, kind)?);
        }
        if matches!(kind, FileKind::Index | FileKind::Snapshot | FileKind::Deletion | FileKind::Pack) {
            self.trim_cache(kind, &out);
        }
        Ok(out)
    }

    /// Names, sizes and write times of every archived file.
    pub fn list_archive(&self) -> Result<Vec<crate::archive::ArchivedEntry>> {
        let store = self.store(FileKind::Archive);
        let mut out = Vec::new();
        for e in self.list_entries(store, FileKind::Archive.dir())? {
            if crate::archive::is_archive_name(e.name()) {
                let t = self.modified(store, &e)?;
                out.push(crate::archive::ArchivedEntry {
                    name: e.name().to_string(),
                    stored_size: e.metadata().content_length(),
                    stored_at: t,
                });
            }
        }
        Ok(out)
    }

    fn list_store(&self, store: &Store, kind: FileKind) -> Result<Vec<(String, u64)>> {
        Ok(self
            .list_entries(store, kind.dir())?
            .into_iter()
            .filter(|e| is_content_name(e.name()))
            .map(|e| (e.name().to_string(), e.metadata().content_length()))
            .collect())
    }

    /// Every file below `dir` (recursively) of one store.
    fn list_entries(&self, store: &Store, dir: &str) -> Result<Vec<opendal::Entry>> {
        let entries = self
            .retry(dir, || async { store.op.list_with(dir).recursive(true).await })
            .map_err(|e| io_err("list", dir, &store.location, e))?;
        Ok(entries.into_iter().filter(|e| !e.metadata().is_dir()).collect())
    }

    /// When a listed object was last written; stores that do not say so in
    /// listings are asked per object.
    fn modified(&self, store: &Store, e: &opendal::Entry) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
        let t = match e.metadata().last_modified() {
            Some(t) => Some(t),
            None => self
                .retry(e.path(), || store.op.stat(e.path()))
                .map_err(|err| io_err("stat", e.path(), &store.location, err))?
                .last_modified(),
        };
        Ok(t.and_then(|t| {
            let t = t.into_inner();
            chrono::DateTime::from_timestamp(t.as_second(), t.subsec_nanosecond() as u32)
        }))
    }

    /// When each pack was last written, for prune's grace period.
    pub fn pack_times(&self) -> Result<std::collections::HashMap<String, chrono::DateTime<chrono::Utc>>> {
        let mut out = std::collections::HashMap::new();
        for store in std::iter::once(&self.hot).chain(self.cold.as_ref()) {
            for e in self.list_entries(store, FileKind::Pack.dir())? {
                if !is_content_name(e.name()) {
                    continue;
                }
                if let Some(t) = self.modified(store, &e)? {
                    out.insert(e.name().to_string(), t);
                }
            }
        }
        Ok(out)
    }

    // ---- metadata cache ----

    /// The cache's directory for `kind`, for the kinds that are cached.
    fn cache_dir(&self, kind: FileKind) -> Option<PathBuf> {
        let dir = self.cache.as_ref()?;
        match kind {
            FileKind::Index | FileKind::Snapshot | FileKind::Deletion => Some(dir.join(kind.dir())),
            FileKind::Pack => Some(dir.join("trees/")),
            _ => None,
        }
    }

    fn cache_file(&self, kind: FileKind, name: &str) -> Option<PathBuf> {
        Some(self.cache_dir(kind)?.join(name))
    }

    fn cached(&self, kind: FileKind, name: &str) -> Option<bytes::Bytes> {
        let file = self.cache_file(kind, name)?;
        let bytes = std::fs::read(&file).ok()?;
        if Id::of_stored(&bytes).to_hex() == name {
            return Some(bytes.into());
        }
        tracing::warn!("cached {} does not match its name; fetching it again", file.display());
        let _ = std::fs::remove_file(&file);
        None
    }

    /// Best effort: a cache that cannot be written only costs speed. Not
    /// checked here: [`Backend::cached`] checks every copy before use.
    fn fill_cache(&self, kind: FileKind, name: &str, bytes: &[u8]) {
        let Some(file) = self.cache_file(kind, name) else { return };
        let dir = file.parent().expect("cache files live in a directory");
        let tmp = dir.join(format!(".{name}.{}.{:08x}", std::process::id(), rand::random::<u32>()));
        let r = std::fs::create_dir_all(dir)
            .and_then(|_| std::fs::write(&tmp, bytes))
            .and_then(|_| std::fs::rename(&tmp, &file));
        if let Err(e) = r {
            let _ = std::fs::remove_file(&tmp);
            tracing::debug!("cannot cache {}: {e}", file.display());
        }
    }

    fn trim_cache(&self, kind: FileKind, listed: &[(String, u64)]) {
        let Some(dir) = self.cache_dir(kind) else { return };
        let Ok(entries) = std::fs::read_dir(&dir) else { return };
        let keep: std::collections::HashSet<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
        for e in entries.flatten() {
            if !keep.contains(e.file_name().to_string_lossy().as_ref()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_list_delete_on_local_disk() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::local(dir.path()).unwrap();
        let name = "ab".repeat(32);
        b.write(FileKind::Pack, &name, b"hello".to_vec()).unwrap();
        assert!(dir.path().join("data/ab").join(&name).exists());
        assert_eq!(&b.read(FileKind::Pack, &name).unwrap()[..], b"hello");
        assert_eq!(&b.read_range(FileKind::Pack, &name, 1, 3).unwrap()[..], b"ell");
        let listed = b.list(FileKind::Pack).unwrap();
        assert_eq!(listed, vec![(name.clone(), 5)]);
        b.delete(FileKind::Pack, &name).unwrap();
        assert!(!b.exists(FileKind::Pack, &name).unwrap());
        assert!(matches!(b.read(FileKind::Pack, &name), Err(Error::NotFound { .. })));
    }

    #[test]
    fn tree_packs_are_cached_whole_and_checked_while_data_packs_and_stored_reads_bypass_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, cache) = (dir.path().join("repo"), dir.path().join("cache"));
        let open = || Backend::local(&repo).unwrap().with_cache(cache.clone());
        let tree_pack = b"tree pack bytes".to_vec();
        let tree = Id::of_stored(&tree_pack).to_hex();
        let data = Id::of_stored(b"data pack bytes").to_hex();
        let b = open();
        b.write(FileKind::Pack, &tree, tree_pack.clone()).unwrap();
        b.write(FileKind::DataPack, &data, b"data pack bytes".to_vec()).unwrap();
        assert_eq!(std::fs::read(cache.join("trees").join(&tree)).unwrap(), tree_pack, "written tree packs are cached");
        assert!(!cache.join("trees").join(&data).exists(), "data packs are not cached");

        // The repository loses both packs: the tree pack is still served,
        // from memory and, in a new process, from the cache.
        std::fs::remove_file(repo.join(FileKind::Pack.path(&tree))).unwrap();
        std::fs::remove_file(repo.join(FileKind::DataPack.path(&data))).unwrap();
        assert_eq!(&b.read_range(FileKind::Pack, &tree, 5, 4).unwrap()[..], b"pack");
        assert_eq!(&open().read_range(FileKind::Pack, &tree, 0, 4).unwrap()[..], b"tree");
        assert!(matches!(b.read_range(FileKind::DataPack, &data, 0, 4), Err(Error::NotFound { .. })));
        // A range past the pack's end is an error, not a short read.
        assert!(matches!(b.read_range(FileKind::Pack, &tree, 10, 100), Err(Error::Corrupt { .. })));
        // `check --read-data` reads what is stored, never the cache.
        assert!(matches!(open().read_stored(FileKind::Pack, &tree), Err(Error::NotFound { .. })));

        // A damaged cached copy is not used: the read goes to the
        // repository (which no longer has it) and the copy is dropped.
        std::fs::write(cache.join("trees").join(&tree), b"tree pack bytez").unwrap();
        assert!(matches!(open().read_range(FileKind::Pack, &tree, 0, 4), Err(Error::NotFound { .. })));
        assert!(!cache.join("trees").join(&tree).exists());

        // Deleting a pack removes it from memory and the cache.
        b.write(FileKind::Pack, &tree, tree_pack).unwrap();
        b.delete(FileKind::Pack, &tree).unwrap();
        assert!(!cache.join("trees").join(&tree).exists());
        assert!(matches!(b.read_range(FileKind::Pack, &tree, 0, 4), Err(Error::NotFound { .. })));
    }
}

#[cfg(test)]
mod temp_tests {
    use super::*;

    #[test]
    fn stale_temporary_files_are_removed_and_fresh_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::local(dir.path()).unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let old = dir.path().join("tmp/old");
        let fresh = dir.path().join("tmp/fresh");
        std::fs::write(&old, b"half a pack").unwrap();
        std::fs::write(&fresh, b"being written").unwrap();
        let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        std::fs::File::options().write(true).open(&old).unwrap().set_modified(two_hours_ago).unwrap();
        assert_eq!(b.remove_stale_temp(std::time::Duration::from_secs(3600)), 1);
        assert!(!old.exists());
        assert!(fresh.exists());
    }
}
