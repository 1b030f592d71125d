//! Opening, creating and reading a repository.
//!
//! Two type states, as in rustic_core: a [`Repository`] is opened (keys and
//! config known) and can list snapshots and manage keys; an [`Indexed`]
//! repository has also loaded the index and can read and write blobs. An
//! operation that needs the index cannot be called without it.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, FileKind};
use crate::chunker::{Chunker, ChunkerParams};
use crate::crypto::MasterKey;
use crate::envelope::{self, EnvelopeKind};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::{BlobLocation, Index, IndexFile};
use crate::keys::{Credential, KdfParams, KeySlot};
use crate::pack::{self, BlobType};
use crate::snapshot::{Snapshot, SnapshotEntry, SnapshotFilter};
use crate::tree::Tree;

thread_local! {
    /// [`Indexed::for_each_blob`]'s read buffer and blob buffer, one each
    /// per reading thread.
    static RUN_BUFFERS: std::cell::RefCell<(Vec<u8>, Vec<u8>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// The repository's settings, sealed in the `config` file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RepoConfig {
    pub version: u32,
    pub id: Id,
    pub created: DateTime<Utc>,
    pub chunker: ChunkerParams,
    /// zstd level for blobs; 0 stores blobs uncompressed. Metadata files
    /// (index, snapshots, config) are always zstd-compressed.
    pub compression: i32,
    /// Target pack size in bytes.
    pub pack_size: u32,
    /// Data packs live in a second (cold) location; metadata stays here.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub split_data: bool,
}

/// Options for `init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub chunker: ChunkerParams,
    pub compression: i32,
    pub pack_size: u32,
    pub kdf: KdfParams,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            chunker: ChunkerParams::default(),
            compression: 3,
            pack_size: 16 << 20,
            kdf: KdfParams::default(),
        }
    }
}

impl InitOptions {
    fn validate(&self) -> Result<()> {
        self.chunker.validate().map_err(Error::Invalid)?;
        if !(0..=22).contains(&self.compression) {
            return Err(Error::Invalid(format!("compression level {} is not in 0..=22", self.compression)));
        }
        if self.pack_size < self.chunker.max_size || self.pack_size > 256 << 20 {
            return Err(Error::Invalid(format!(
                "pack size {} must be at least the maximum chunk size ({}) and at most 256 MiB",
                self.pack_size, self.chunker.max_size
            )));
        }
        Ok(())
    }
}

struct Inner {
    backend: Backend,
    key: MasterKey,
    config: RepoConfig,
    /// The key slot this session opened with.
    slot: String,
    /// That slot may only add.
    append_only: bool,
}

/// An opened repository: keys and config are known. Cheap to clone.
#[derive(Clone)]
pub struct Repository(Arc<Inner>);

/// A key slot as `key list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SlotInfo {
    pub id: String,
    pub current: bool,
    #[serde(flatten)]
    pub slot: KeySlot,
}

impl Repository {
    /// Creates a new repository in an empty location.
    pub fn init(backend: Backend, cred: &Credential, opts: InitOptions) -> Result<Repository> {
        Repository::init_with_key(backend, cred, opts, MasterKey::generate())
    }

    /// Creates a repository that chunks and names data as `like` does (the
    /// same chunker parameters and secret, the same blob-id key) with its
    /// own encryption key, so `copy` between the two sends blobs as they
    /// are instead of reading and chunking every file again (restic's
    /// `init --copy-chunker-params`). The price: someone holding both
    /// repositories' keys can tell which chunks they share, which a replica
    /// reveals anyway.
    pub fn init_like(
        backend: Backend,
        cred: &Credential,
        mut opts: InitOptions,
        like: &Repository,
    ) -> Result<Repository> {
        opts.chunker = like.config().chunker;
        Repository::init_with_key(backend, cred, opts, like.key().sibling())
    }

    fn init_with_key(backend: Backend, cred: &Credential, opts: InitOptions, key: MasterKey) -> Result<Repository> {
        opts.validate()?;
        if backend.exists(FileKind::Config, "config")? {
            return Err(Error::AlreadyExists { location: backend.location().to_string() });
        }
        let config = RepoConfig {
            version: envelope::FORMAT_VERSION as u32,
            id: Id(crate::crypto::random_bytes()),
            created: Utc::now(),
            chunker: opts.chunker,
            compression: opts.compression,
            pack_size: opts.pack_size,
            split_data: backend.is_split(),
        };
        let slot = KeySlot::create(&key, config.id, cred, opts.kdf)?;
        let slot_bytes = slot.to_bytes();
        let slot_id = Id::of_stored(&slot_bytes).to_hex();
        // The key slot goes first: a config without a slot would be a
        // repository nobody can open.
        backend.write(FileKind::Key, &slot_id, slot_bytes)?;
        let sealed = envelope::seal(&key, EnvelopeKind::Config, &serde_json::to_vec(&config).unwrap(), 3);
        backend.write(FileKind::Config, "config", sealed)?;
        Ok(Repository(Arc::new(Inner { backend, key, config, slot: slot_id, append_only: false })))
    }

    /// Opens an existing repository with a password or key file.
    pub fn open(backend: Backend, cred: &Credential) -> Result<Repository> {
        let location = backend.location().to_string();
        let config_bytes = match backend.read(FileKind::Config, "config") {
            Ok(b) => b,
            Err(Error::NotFound { .. }) => return Err(Error::NotARepository { location }),
            Err(e) => return Err(e),
        };
        envelope::peek_version("config", &config_bytes, EnvelopeKind::Config)?;
        let slots = backend.list(FileKind::Key)?;
        if slots.is_empty() {
            return Err(Error::corrupt(format!("{location}/keys"), "no key slots"));
        }
        // Every slot gets its chance: one damaged, foreign or newer slot
        // must not lock out a credential that another slot accepts.
        let mut problems = Vec::new();
        for (name, _) in &slots {
            match Self::try_slot(&backend, name, cred, &config_bytes) {
                Ok(Some((key, config, append_only))) => {
                    match (config.split_data, backend.is_split()) {
                        (true, false) => {
                            return Err(Error::Invalid(format!(
                                "{location} keeps its file data in a second location; name it with --data-repo"
                            )))
                        }
                        (false, true) => {
                            return Err(Error::Invalid(format!(
                                "{location} keeps its data with its metadata; --data-repo does not apply to it"
                            )))
                        }
                        _ => {}
                    }
                    return Ok(Repository(Arc::new(Inner { backend, key, config, slot: name.clone(), append_only })));
                }
                Ok(None) => {}
                Err(e) => problems.push(e.to_string()),
            }
        }
        if !problems.is_empty() {
            return Err(Error::Invalid(format!(
                "wrong password or key file: none of the {} key slot(s) of {location} opens with it; also: {}",
                slots.len(),
                problems.join("; ")
            )));
        }
        Err(Error::WrongPassword { location, slots: slots.len() })
    }

    fn try_slot(
        backend: &Backend,
        name: &str,
        cred: &Credential,
        config_bytes: &[u8],
    ) -> Result<Option<(MasterKey, RepoConfig, bool)>> {
        let slot = KeySlot::parse(name, &backend.read(FileKind::Key, name)?)?;
        let Some(key) = slot.unwrap_key(name, cred)? else {
            return Ok(None);
        };
        let foreign = || Error::KeySlot {
            slot: name.to_string(),
            reason: "opens with this credential but belongs to another repository".into(),
        };
        let plain = envelope::open(&key, "config", config_bytes, EnvelopeKind::Config).map_err(|_| foreign())?;
        let config: RepoConfig = serde_json::from_slice(&plain).map_err(|e| Error::corrupt("config", e.to_string()))?;
        if config.id != slot.repository {
            return Err(foreign());
        }
        if config.version > envelope::FORMAT_VERSION as u32 {
            return Err(Error::UnsupportedVersion {
                object: "config".into(),
                found: config.version,
                supported: envelope::FORMAT_VERSION as u32,
            });
        }
        // The config is authenticated, but a writer holding the key could
        // still have stored values this code cannot work with.
        let opts = InitOptions {
            chunker: config.chunker,
            compression: config.compression,
            pack_size: config.pack_size,
            kdf: KdfParams::default(),
        };
        opts.validate().map_err(|e| Error::corrupt("config", e.to_string()))?;
        Ok(Some((key, config, slot.append_only)))
    }

    pub fn backend(&self) -> &Backend {
        &self.0.backend
    }

    pub fn config(&self) -> &RepoConfig {
        &self.0.config
    }

    pub(crate) fn key(&self) -> &MasterKey {
        &self.0.key
    }

    pub fn chunker(&self) -> Chunker {
        Chunker::new(self.0.key.gear_table(), self.0.config.chunker)
    }

    /// The keyed id of a blob of type `t` with these contents.
    pub fn blob_id(&self, t: BlobType, data: &[u8]) -> Id {
        pack::blob_id(&self.0.key, t, data)
    }

    // ---- key slots ----

    pub fn list_keys(&self) -> Result<Vec<SlotInfo>> {
        let mut out = Vec::new();
        for (name, _) in self.backend().list(FileKind::Key)? {
            let slot = KeySlot::parse(&name, &self.backend().read(FileKind::Key, &name)?)?;
            out.push(SlotInfo { current: name == self.0.slot, id: name, slot });
        }
        out.sort_by_key(|s| s.slot.created);
        Ok(out)
    }

    /// Refuses `operation` to an append-only session. Enforced here, in the
    /// client: whoever holds the master key could bypass it with another
    /// program; stores enforce it for real with their own permissions.
    pub fn require_full_access(&self, operation: &str) -> Result<()> {
        if self.0.append_only {
            return Err(Error::AppendOnly { location: self.backend().location(), operation: operation.into() });
        }
        Ok(())
    }

    /// Adds a slot wrapping the same master key; returns its id.
    pub fn add_key(&self, cred: &Credential, kdf: KdfParams) -> Result<String> {
        self.add_key_with(cred, kdf, false)
    }

    /// Adds a slot, append-only if asked. An append-only session may add
    /// only append-only slots, or it could grant itself full access.
    pub fn add_key_with(&self, cred: &Credential, kdf: KdfParams, append_only: bool) -> Result<String> {
        if !append_only {
            self.require_full_access("adding a full-access key")?;
        }
        let slot = KeySlot::create_with(&self.0.key, self.0.config.id, cred, kdf, append_only)?;
        let bytes = slot.to_bytes();
        let id = Id::of_stored(&bytes).to_hex();
        self.backend().write(FileKind::Key, &id, bytes)?;
        Ok(id)
    }

    /// Removes a slot by id or unique prefix. The slot in use and the last
    /// slot are refused, so a repository can never be locked out by this.
    pub fn remove_key(&self, prefix: &str, allow_current: bool) -> Result<String> {
        self.require_full_access("removing a key")?;
        let slots = self.backend().list(FileKind::Key)?;
        let matching: Vec<_> = slots.iter().filter(|(n, _)| n.starts_with(prefix)).collect();
        let id = match matching.as_slice() {
            [] => return Err(Error::NotFound { what: format!("key slot {prefix}") }),
            [(id, _)] => id.clone(),
            _ => {
                return Err(Error::Invalid(format!(
                    "'{prefix}' matches {} key slots; give more digits",
                    matching.len()
                )))
            }
        };
        if slots.len() == 1 {
            return Err(Error::Invalid(format!("key slot {id} is the last one; add another before removing it")));
        }
        if id == self.0.slot && !allow_current {
            return Err(Error::Invalid(format!(
                "key slot {id} is the one this command opened with; use another key to remove it"
            )));
        }
        self.backend().delete(FileKind::Key, &id)?;
        Ok(id)
    }

    pub fn current_key(&self) -> &str {
        &self.0.slot
    }

    // ---- snapshots ----

    /// Seals `payload` and writes it under the name of its stored bytes.
    pub(crate) fn write_sealed(&self, kind: FileKind, env: EnvelopeKind, payload: &[u8], level: i32) -> Result<Id> {
        self.write_sealed_version(kind, env, envelope::FORMAT_VERSION, payload, level)
    }

    fn write_sealed_version(
        &self,
        kind: FileKind,
        env: EnvelopeKind,
        version: u8,
        payload: &[u8],
        level: i32,
    ) -> Result<Id> {
        let sealed = envelope::seal_version(self.key(), env, version, payload, level);
        let id = Id::of_stored(&sealed);
        self.backend().write(kind, &id.to_hex(), sealed)?;
        Ok(id)
    }

    /// Reads a sealed file, checks it against its name and opens it;
    /// returns how errors name it and its payload.
    pub(crate) fn read_sealed(
        &self,
        kind: FileKind,
        env: EnvelopeKind,
        label: &str,
        id: &Id,
    ) -> Result<(String, Vec<u8>)> {
        let name = id.to_hex();
        let object = format!("{label} {name}");
        let bytes = self.backend().read(kind, &name)?;
        if Id::of_stored(&bytes) != *id {
            return Err(Error::corrupt(&object, "contents do not match the name"));
        }
        let plain = envelope::open(self.key(), &object, &bytes, env)?;
        Ok((object, plain))
    }

    pub fn save_snapshot(&self, s: &Snapshot) -> Result<Id> {
        let json = serde_json::to_vec(s).expect("snapshots serialise");
        self.write_sealed(FileKind::Snapshot, EnvelopeKind::Snapshot, &json, 3)
    }

    pub fn load_snapshot(&self, id: &Id) -> Result<Snapshot> {
        let (object, plain) = self.read_sealed(FileKind::Snapshot, EnvelopeKind::Snapshot, "snapshot", id)?;
        serde_json::from_slice(&plain).map_err(|e| Error::corrupt(object, e.to_string()))
    }

    pub fn delete_snapshot(&self, id: &Id) -> Result<()> {
        self.require_full_access("deleting a snapshot")?;
        self.backend().delete(FileKind::Snapshot, &id.to_hex())
    }

    /// Every snapshot, oldest first.
    pub fn list_snapshots(&self) -> Result<Vec<SnapshotEntry>> {
        let names = self.backend().list(FileKind::Snapshot)?;
        let loaded = names
            .par_iter()
            .map(|(name, _)| {
                let id: Id = name.parse().map_err(|_| Error::corrupt(name, "bad snapshot name"))?;
                Ok(SnapshotEntry { id, snapshot: self.load_snapshot(&id)? })
            })
            .collect::<Vec<Result<_>>>();
        // One damaged snapshot must not hide the others (or stop every
        // backup that looks for its parent): it is skipped with a warning,
        // and `check` reports it. Storage errors still stop the listing.
        let mut out = Vec::with_capacity(loaded.len());
        for r in loaded {
            match r {
                Ok(e) => out.push(e),
                Err(e @ Error::Corrupt { .. }) => tracing::warn!("skipping {e}"),
                // Forgotten since it was listed (a forget running meanwhile).
                Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.snapshot.time.cmp(&b.snapshot.time).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// The id of the one snapshot whose name starts with `spec`, from the
    /// listing alone (the snapshot itself is not read).
    pub fn resolve_snapshot_id(&self, spec: &str) -> Result<Id> {
        if spec.is_empty() || !spec.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::SnapshotNotFound(spec.into()));
        }
        let spec_l = spec.to_ascii_lowercase();
        let names: Vec<_> =
            self.backend().list(FileKind::Snapshot)?.into_iter().filter(|(n, _)| n.starts_with(&spec_l)).collect();
        match names.as_slice() {
            [] => Err(Error::SnapshotNotFound(spec.into())),
            [(n, _)] => n.parse().map_err(|_| Error::corrupt(n, "bad snapshot name")),
            _ => Err(Error::AmbiguousSnapshot { prefix: spec.into(), count: names.len() }),
        }
    }

    /// Resolves `latest`, a full id or a unique prefix.
    pub fn find_snapshot(&self, spec: &str, filter: &SnapshotFilter) -> Result<SnapshotEntry> {
        if spec == "latest" {
            return self
                .list_snapshots()?
                .into_iter()
                .filter(|e| filter.matches(&e.snapshot))
                .next_back()
                .ok_or_else(|| Error::SnapshotNotFound("latest".into()));
        }
        let id = self.resolve_snapshot_id(spec)?;
        Ok(SnapshotEntry { id, snapshot: self.load_snapshot(&id)? })
    }

    // ---- index ----

    pub fn load_index_file(&self, id: &Id) -> Result<IndexFile> {
        let (object, plain) = self.read_sealed(FileKind::Index, EnvelopeKind::Index, "index", id)?;
        IndexFile::decode(&object, &plain)
    }

    pub fn save_index_file(&self, f: &IndexFile) -> Result<Id> {
        let deltas = f.packs.iter().flat_map(|p| &p.entries).any(|e| e.encoding == pack::Encoding::Delta);
        let version = if deltas { envelope::DELTA_INDEX_VERSION } else { envelope::FORMAT_VERSION };
        self.write_sealed_version(
            FileKind::Index,
            EnvelopeKind::Index,
            version,
            &f.encode(),
            self.config().compression.max(1),
        )
    }

    /// Loads every index file (in parallel) and returns the indexed state.
    pub fn index(self) -> Result<Indexed> {
        // An index file listed but gone when read was replaced by a prune
        // meanwhile (its replacement was written first): list again.
        let mut tries = 0;
        loop {
            match self.clone().index_once() {
                Err(Error::NotFound { .. }) if tries < 10 => tries += 1,
                r => return r,
            }
        }
    }

    fn index_once(self) -> Result<Indexed> {
        // Packs awaiting deletion stay out of the index even when an index
        // file still names them (a prune cut short before removing the old
        // files): a backup must never deduplicate against a pack that a
        // later prune may delete.
        let mut pending = Index::new();
        let mut pending_packs = std::collections::HashSet::new();
        match self.list_deletion_records() {
            Ok(records) => {
                for p in records.iter().flat_map(|(_, r)| &r.packs) {
                    pending.add_pack(p.id, p.salt, &p.entries);
                    pending_packs.insert(p.id);
                }
            }
            // Only a fallback for reads: a damaged record must not stop
            // backups (prune and check report it).
            Err(e) => tracing::warn!("ignoring deletion records: {e}"),
        }
        pending.finish();
        let names = self.backend().list(FileKind::Index)?;
        let ids: Vec<Id> = names
            .iter()
            .map(|(n, _)| n.parse().map_err(|_| Error::corrupt(n, "bad index name")))
            .collect::<Result<_>>()?;
        let load = |skip: &std::collections::HashSet<Id>| -> Result<(Index, std::collections::HashSet<Id>)> {
            let mut index = Index::new();
            // About 40 stored bytes per entry; overestimating is cheap, as
            // `finish` shrinks the array in place.
            index.reserve((names.iter().map(|(_, s)| *s).sum::<u64>() / 36) as usize);
            let mut superseded = std::collections::HashSet::new();
            // Decoded in small batches straight into the index: decoded files
            // never all sit in memory beside the index they feed.
            let wanted: Vec<Id> = ids.iter().filter(|id| !skip.contains(id)).copied().collect();
            for batch in wanted.chunks(4) {
                let files: Vec<Result<IndexFile>> = batch.par_iter().map(|id| self.load_index_file(id)).collect();
                for f in files {
                    match f {
                        Ok(mut f) => {
                            superseded.extend(f.supersedes.iter().copied());
                            f.packs.retain(|p| !pending_packs.contains(&p.id));
                            index.add_file(f);
                        }
                        // A damaged index file costs only its entries: their
                        // blobs count as missing (a backup stores them again,
                        // `check` names the file).
                        Err(e @ Error::Corrupt { .. }) => tracing::warn!("skipping {e}"),
                        Err(e) => return Err(e),
                    }
                }
            }
            Ok((index, superseded))
        };
        let (mut index, superseded) = load(&Default::default())?;
        // Files another one supersedes (after prune) must not count: their
        // packs may be gone. Rare, so the index is simply built again.
        if ids.iter().any(|id| superseded.contains(id)) {
            index = load(&superseded)?.0;
        }
        index.finish();
        release_free_memory();
        Ok(Indexed { repo: self, index: Arc::new(index), pending: Arc::new(pending), bases: Default::default() })
    }
}

/// Where packs holding blobs of `t` are stored.
pub(crate) fn pack_kind_of(t: BlobType) -> FileKind {
    match t {
        BlobType::Data => FileKind::DataPack,
        BlobType::Tree => FileKind::Pack,
    }
}

/// Hands memory freed by a large transient job (decoding every index file,
/// walking every tree) back to the OS between phases. glibc keeps freed blocks of worker threads' arenas
/// resident; without this the decoded files' buffers stay in the process's
/// footprint for its whole life.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap memory to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// An opened repository with its index loaded.
#[derive(Clone)]
pub struct Indexed {
    repo: Repository,
    index: Arc<Index>,
    /// Blobs in packs awaiting deletion by prune. Readable, so a snapshot
    /// that came to need one (a backup running across a prune) restores
    /// before the next prune puts its pack back; never used to deduplicate,
    /// or a backup could come to rely on a pack about to be deleted.
    pending: Arc<Index>,
    /// Delta bases read lately, newest last.
    bases: Arc<RecentBases>,
}

type RecentBases = std::sync::Mutex<Vec<(Id, Arc<Vec<u8>>)>>;

/// How many delta bases [`Indexed::base`] keeps: a backup reads a base
/// once to open the parent's delta and again to encode against it.
const BASES_KEPT: usize = 16;

impl Indexed {
    /// An indexed state from an index built elsewhere (check builds its
    /// own, tolerating damaged index files).
    pub fn from_parts(repo: Repository, index: Index) -> Indexed {
        Indexed { repo, index: Arc::new(index), pending: Arc::new(Index::new()), bases: Default::default() }
    }

    /// Where a blob is, in the index or else among packs awaiting deletion.
    pub fn locate(&self, id: &Id) -> Option<BlobLocation> {
        self.index.get(id).or_else(|| self.pending.get(id))
    }

    pub fn repo(&self) -> &Repository {
        &self.repo
    }

    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    /// Reads, decrypts, decompresses and verifies one blob.
    pub fn read_blob(&self, id: &Id) -> Result<Vec<u8>> {
        let loc = self.locate(id).ok_or(Error::BlobNotFound(*id))?;
        self.read_located(&loc)
    }

    pub fn read_located(&self, loc: &BlobLocation) -> Result<Vec<u8>> {
        let (name, ct) = self.read_ciphertext(loc)?;
        let cipher = self.repo.key().pack_cipher(&loc.pack.salt);
        pack::open_blob(self.repo.key(), &cipher, &loc.entry, &ct, &name, &|b| self.base(b))
    }

    /// One blob's ciphertext, and the name of its pack.
    fn read_ciphertext(&self, loc: &BlobLocation) -> Result<(String, bytes::Bytes)> {
        let name = loc.pack.id.to_hex();
        let ct = self.repo.backend().read_range(
            pack_kind_of(loc.entry.blob_type),
            &name,
            loc.entry.offset as u64,
            loc.entry.length as u64,
        )?;
        Ok((name, ct))
    }

    /// The plaintext of a delta blob's base. A base is a full data blob:
    /// one that is itself a delta is damage (the format allows no chains,
    /// so a restore never follows more than one).
    pub fn base(&self, id: &Id) -> Result<Arc<Vec<u8>>> {
        if let Some((_, b)) = self.bases.lock().unwrap().iter().find(|(b, _)| b == id) {
            return Ok(b.clone());
        }
        let loc = self.locate(id).ok_or(Error::BlobNotFound(*id))?;
        if loc.entry.encoding == pack::Encoding::Delta || loc.entry.blob_type != BlobType::Data {
            return Err(Error::corrupt(format!("blob {id}"), "is named as a delta base but is not a full data blob"));
        }
        let plain = Arc::new(self.read_located(&loc)?);
        let mut kept = self.bases.lock().unwrap();
        if kept.len() >= BASES_KEPT {
            kept.remove(0);
        }
        kept.push((*id, plain.clone()));
        Ok(plain)
    }

    /// The bases a delta blob names (reading only the delta).
    pub fn delta_bases(&self, loc: &BlobLocation) -> Result<Vec<Id>> {
        let (name, ct) = self.read_ciphertext(loc)?;
        pack::delta_bases(&self.repo.key().pack_cipher(&loc.pack.salt), &loc.entry, &mut ct.to_vec(), &name)
    }

    pub fn load_tree(&self, id: &Id) -> Result<Tree> {
        let loc = self.locate(id).ok_or(Error::BlobNotFound(*id))?;
        if loc.entry.blob_type != BlobType::Tree {
            return Err(Error::corrupt(format!("blob {id}"), "is not a tree"));
        }
        Tree::decode(&format!("tree {id}"), &self.read_located(&loc)?)
    }

    /// Depth-first walk of a tree in name order; `f` gets each node's full
    /// path inside the snapshot (starting with `/`) and the node.
    pub fn walk_tree(&self, root: &Id, f: &mut dyn FnMut(&str, &crate::tree::Node) -> Result<()>) -> Result<()> {
        fn go(
            ix: &Indexed,
            id: &Id,
            prefix: &str,
            f: &mut dyn FnMut(&str, &crate::tree::Node) -> Result<()>,
        ) -> Result<()> {
            let tree = ix.load_tree(id)?;
            for n in &tree.nodes {
                let path = format!("{prefix}/{}", n.name.lossy());
                f(&path, n)?;
                if let Some(sub) = &n.subtree {
                    go(ix, sub, &path, f)?;
                }
            }
            Ok(())
        }
        go(self, root, "", f)
    }

    /// The tree of the directory at `path` inside the tree `root`
    /// (`/` or empty for the root itself).
    pub fn find_subtree(&self, root: &Id, path: &str) -> Result<Id> {
        let mut cur = *root;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            let tree = self.load_tree(&cur)?;
            let node = tree
                .find(&crate::tree::Name::from(part))
                .ok_or_else(|| Error::NotFound { what: format!("path {path} in the snapshot") })?;
            cur = node.subtree.ok_or_else(|| Error::Invalid(format!("{path} is not a directory in the snapshot")))?;
        }
        Ok(cur)
    }

    /// Fetches many blobs with few requests: grouped by pack, each pack read
    /// in one ranged request spanning the wanted blobs (when they are dense
    /// enough) and packs processed in parallel. `f` receives each blob or the
    /// error that stopped it; it runs on rayon workers. The blob lies in a
    /// buffer reused for the thread's next read: `f` copies what it keeps.
    pub fn for_each_blob<F>(&self, ids: &[Id], f: F) -> Result<()>
    where
        F: Fn(Id, Result<&[u8]>) + Sync,
    {
        let mut by_pack: std::collections::HashMap<Id, Vec<BlobLocation>> = std::collections::HashMap::new();
        for id in ids {
            match self.locate(id) {
                Some(loc) => by_pack.entry(loc.pack.id).or_default().push(loc),
                None => f(*id, Err(Error::BlobNotFound(*id))),
            }
        }
        // Split each pack's wanted blobs into runs whose gaps are small, so
        // one request serves each run without reading much that is not
        // wanted. Runs are the only unit of parallelism: nesting parallel
        // loops would let an idle worker start more reads than there are
        // cores and multiply the memory held.
        const GAP: u64 = 1 << 20;
        const RUN_MAX: u64 = 4 << 20;
        let mut runs: Vec<(u64, u64, Vec<BlobLocation>)> = Vec::new();
        for mut locs in by_pack.into_values() {
            locs.sort_by_key(|l| l.entry.offset);
            locs.dedup_by_key(|l| l.entry.offset);
            let mut cur: Vec<BlobLocation> = Vec::new();
            let (mut start, mut end) = (0u64, 0u64);
            for l in locs {
                let (o, e) = (l.entry.offset as u64, l.entry.offset as u64 + l.entry.length as u64);
                if !cur.is_empty() && (o > end + GAP || end - start >= RUN_MAX) {
                    runs.push((start, end, std::mem::take(&mut cur)));
                }
                if cur.is_empty() {
                    start = o;
                    end = e;
                }
                end = end.max(e);
                cur.push(l);
            }
            if !cur.is_empty() {
                runs.push((start, end, cur));
            }
        }
        let read_run = |(start, end, locs): (u64, u64, Vec<BlobLocation>)| {
            let pack_name = locs[0].pack.id.to_hex();
            let kind = pack_kind_of(locs[0].entry.blob_type);
            // Taken out of the thread's slot for the call: `f` may itself
            // read blobs on this thread.
            let (mut buf, mut blob) = RUN_BUFFERS.with(|b| std::mem::take(&mut *b.borrow_mut()));
            match self.repo.backend().read_range_into(kind, &pack_name, start, end - start, &mut buf) {
                Ok(()) => {
                    let cipher = self.repo.key().pack_cipher(&locs[0].pack.salt);
                    // Each blob is decrypted where it lies in the run, which
                    // needs blobs that do not overlap: an index claiming
                    // otherwise is damaged, and trusting it would let one
                    // blob's decryption spoil its neighbour.
                    let mut done_to = start;
                    for l in &locs {
                        let (o, len) = (l.entry.offset as u64, l.entry.length as u64);
                        let a = (o - start) as usize;
                        let r = if o < done_to {
                            Err(Error::corrupt(
                                format!("index entry of blob {} in pack {pack_name}", l.entry.id),
                                "overlaps the blob before it",
                            ))
                        } else {
                            done_to = o + len;
                            match buf.get_mut(a..a + len as usize) {
                                Some(ct) => pack::open_blob_in_place(
                                    self.repo.key(),
                                    &cipher,
                                    &l.entry,
                                    ct,
                                    &pack_name,
                                    &mut blob,
                                    &|b| self.base(b),
                                ),
                                None => Err(Error::corrupt(format!("pack {pack_name}"), "shorter than the index says")),
                            }
                        };
                        f(l.entry.id, r);
                    }
                }
                Err(e) => {
                    // A failed read is not damage: every blob of the run gets
                    // the storage error itself (a missing pack stays "does
                    // not exist", an outage stays an outage).
                    for l in &locs {
                        f(l.entry.id, Err(e.duplicate()));
                    }
                }
            }
            RUN_BUFFERS.with(|b| *b.borrow_mut() = (buf, blob));
        };
        if self.repo.backend().is_local() {
            runs.into_par_iter().for_each(read_run);
        } else {
            // Remote reads wait on the network, not the CPU: more of them in
            // flight than there are cores hides the round trips. One thread
            // per connection: twice as many (as before) restored 1 GiB from
            // a local S3 server no faster and held 40% more memory.
            let threads = self.repo.backend().policy().uploads.max(1);
            match rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(|i| format!("arkiv-read-{i}"))
                .build()
            {
                Ok(pool) => pool.install(|| runs.into_par_iter().for_each(read_run)),
                Err(_) => runs.into_par_iter().for_each(read_run),
            }
        }
        Ok(())
    }
}
