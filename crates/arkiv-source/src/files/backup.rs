//! File backup: a parallel walk that turns directories into trees and files
//! into data blobs.
//!
//! Directories are processed with rayon: the entries of one directory are
//! saved in parallel, subdirectories recurse, and a large file's chunks are
//! processed in parallel by the writer, so both cores stay busy whether the
//! data is one big file or a million small ones. A directory's tree is built
//! once all its entries are done, bottom-up, as a tree's id depends on its
//! children's.
//!
//! Incremental backups walk the parent snapshot's trees alongside the file
//! system: a file whose size, mtime, ctime and inode all match its parent
//! node, and whose blobs are all still indexed, keeps its content list
//! without being opened.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use arkiv_repo::{Id, Indexed, Name, Node, NodeKind, Skipped, Snapshot, SnapshotFilter, Tree, Writer};
use rayon::prelude::*;

use super::filter::PathFilter;
use super::meta;
use crate::error::{Error, Result};

/// Live counters a progress display reads while a backup runs.
#[derive(Debug, Default)]
pub struct Progress {
    pub files: AtomicU64,
    pub dirs: AtomicU64,
    /// Logical bytes processed (read or reused).
    pub bytes: AtomicU64,
    pub bytes_read: AtomicU64,
    pub errors: AtomicU64,
}

/// Sees the bytes of every file a backup reads, in order: how a database
/// source checks its pages while they are read anyway.
pub trait ReadObserver: Send + Sync {
    /// An observer for one file, or `None` to leave it alone.
    fn file(&self, path: &Path) -> Option<Box<dyn FileObserver>>;
}

pub trait FileObserver {
    fn data(&mut self, bytes: &[u8]);
    /// The whole file has been read.
    fn end(self: Box<Self>);
}

#[derive(Clone)]
pub struct Observer(pub std::sync::Arc<dyn ReadObserver>);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

/// A reader that shows what passes through it to a file observer.
struct Observed<'a, R> {
    inner: R,
    observer: Option<&'a mut Box<dyn FileObserver>>,
}

impl<R: Read> Read for Observed<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(o) = self.observer.as_mut() {
            o.data(&buf[..n]);
        }
        Ok(n)
    }
}

#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    pub paths: Vec<PathBuf>,
    pub excludes: PathFilter,
    /// Skip the contents of directories tagged with a valid CACHEDIR.TAG.
    pub exclude_caches: bool,
    /// Do not descend into other file systems.
    pub one_file_system: bool,
    pub tags: Vec<String>,
    pub host: Option<String>,
    /// Compare against this snapshot instead of the latest matching one.
    pub parent: Option<String>,
    /// Read every file even when the parent says it is unchanged.
    pub force: bool,
    /// Read and chunk everything, write nothing.
    pub dry_run: bool,
    /// A file or directory that vanishes between being listed and being
    /// read is left out silently instead of making the backup partial: a
    /// running database drops and creates relation files all the time,
    /// and its WAL replays whatever the backup missed.
    pub missing_ok: bool,
    /// Trust the parent's record of a file only if the file's mtime is
    /// older than this (ns since the epoch). File timestamps are only as
    /// fine as the kernel's clock tick, so a file written again in the tick
    /// in which it was read looks unchanged; a cut-off a little before the
    /// parent backup began rules that out.
    pub unchanged_before_ns: Option<i64>,
    /// Shown the bytes of every file read.
    pub observer: Option<Observer>,
}

/// What a backup did.
#[derive(Debug, Clone)]
pub struct BackupOutcome {
    /// `None` for a dry run.
    pub id: Option<Id>,
    pub snapshot: Snapshot,
}

#[derive(Default)]
struct Counts {
    files_new: AtomicU64,
    files_changed: AtomicU64,
    files_unmodified: AtomicU64,
    dirs: AtomicU64,
    total_bytes: AtomicU64,
    total_files: AtomicU64,
}

impl Counts {
    fn summary(self, progress: &Progress) -> arkiv_repo::Summary {
        arkiv_repo::Summary {
            files_new: self.files_new.into_inner(),
            files_changed: self.files_changed.into_inner(),
            files_unmodified: self.files_unmodified.into_inner(),
            dirs: self.dirs.into_inner(),
            total_bytes: self.total_bytes.into_inner(),
            total_files: self.total_files.into_inner(),
            bytes_read: progress.bytes_read.load(Ordering::Relaxed),
            ..Default::default()
        }
    }
}

struct Ctx<'a> {
    indexed: &'a Indexed,
    writer: &'a Writer,
    opts: &'a BackupOptions,
    progress: &'a Progress,
    skipped: Mutex<Vec<Skipped>>,
    counts: Counts,
    /// A storage failure stops the whole backup; file errors do not.
    fatal: Mutex<Option<arkiv_repo::Error>>,
}

const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

impl Ctx<'_> {
    fn skip(&self, path: &Path, reason: String, error: bool) {
        if error {
            tracing::warn!("{}: {reason}", path.display());
            self.progress.errors.fetch_add(1, Ordering::Relaxed);
        } else {
            tracing::warn!("skipped {}: {reason}", path.display());
        }
        self.skipped.lock().unwrap().push(Skipped { path: path.display().to_string(), reason, error });
    }

    fn fatal(&self, e: arkiv_repo::Error) {
        let mut f = self.fatal.lock().unwrap();
        if f.is_none() {
            *f = Some(e);
        }
    }

    fn stopped(&self) -> bool {
        self.fatal.lock().unwrap().is_some()
    }

    fn parent_tree(&self, node: Option<&Node>) -> Option<Tree> {
        let id = node.filter(|n| n.kind == NodeKind::Dir)?.subtree?;
        match self.indexed.load_tree(&id) {
            Ok(t) => Some(t),
            Err(e) => {
                // A damaged parent only costs speed: everything is re-read.
                tracing::warn!("parent tree {id} unreadable, reading files again: {e}");
                None
            }
        }
    }

    fn save_tree(&self, tree: &Tree) -> Option<Id> {
        match self.writer.save_tree(tree) {
            Ok(id) => Some(id),
            Err(e) => {
                self.fatal(e);
                None
            }
        }
    }

    /// Saves one directory entry; `None` when it is excluded or skipped.
    fn save_entry(&self, path: &Path, name: Name, parent: Option<&Node>, root_dev: u64) -> Option<Node> {
        if self.stopped() {
            return None;
        }
        // Patterns match paths, never file types, so an excluded entry is
        // left out before it is looked at: one that vanished or cannot be
        // stat'ed does not make the backup partial.
        if !self.opts.excludes.is_empty() && self.opts.excludes.matches(path) {
            return None;
        }
        let md = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if self.opts.missing_ok && e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                self.skip(path, format!("cannot stat: {e}"), true);
                return None;
            }
        };
        let ft = md.file_type();
        if ft.is_dir() {
            let mut node = meta::node_from_metadata(name, NodeKind::Dir, &md);
            node.xattrs = self.xattrs(path);
            let tree = if self.opts.one_file_system && md.dev() != root_dev {
                // A mount point is kept as an empty directory, as `tar
                // --one-file-system` and restic do.
                Tree::default()
            } else {
                let parent_tree = self.parent_tree(parent);
                self.save_dir(path, parent_tree.as_ref(), root_dev)?
            };
            node.subtree = Some(self.save_tree(&tree)?);
            self.counts.dirs.fetch_add(1, Ordering::Relaxed);
            self.progress.dirs.fetch_add(1, Ordering::Relaxed);
            Some(node)
        } else if ft.is_file() {
            let mut node = meta::node_from_metadata(name, NodeKind::File, &md);
            node.xattrs = self.xattrs(path);
            self.save_file(path, &mut node, parent)?;
            self.counts.total_files.fetch_add(1, Ordering::Relaxed);
            self.counts.total_bytes.fetch_add(node.size, Ordering::Relaxed);
            self.progress.files.fetch_add(1, Ordering::Relaxed);
            Some(node)
        } else if ft.is_symlink() {
            let mut node = meta::node_from_metadata(name, NodeKind::Symlink, &md);
            match fs::read_link(path) {
                Ok(t) => node.target = Some(Name::from_os(t.as_os_str())),
                Err(e) => {
                    self.skip(path, format!("cannot read link: {e}"), true);
                    return None;
                }
            }
            node.xattrs = self.xattrs(path);
            Some(node)
        } else {
            let what = if ft.is_socket() {
                "socket"
            } else if ft.is_fifo() {
                "named pipe"
            } else if ft.is_block_device() {
                "block device"
            } else if ft.is_char_device() {
                "character device"
            } else {
                "unknown file type"
            };
            self.skip(path, format!("{what} not saved"), false);
            None
        }
    }

    fn xattrs(&self, path: &Path) -> Vec<arkiv_repo::Xattr> {
        meta::read_xattrs(path).unwrap_or_else(|e| {
            tracing::debug!("{}: cannot read xattrs: {e}", path.display());
            Vec::new()
        })
    }

    fn unchanged(&self, node: &Node, parent: Option<&Node>) -> Option<Vec<Id>> {
        let p = parent.filter(|p| p.kind == NodeKind::File)?;
        let same = p.size == node.size
            && p.mtime_ns == node.mtime_ns
            && p.ctime_ns == node.ctime_ns
            && p.inode == node.inode
            && self.opts.unchanged_before_ns.is_none_or(|t| p.mtime_ns < t);
        (same && !self.opts.force && p.content.iter().all(|id| self.writer.has_blob(id))).then(|| p.content.clone())
    }

    fn save_file(&self, path: &Path, node: &mut Node, parent: Option<&Node>) -> Option<()> {
        if let Some(content) = self.unchanged(node, parent) {
            node.content = content;
            self.counts.files_unmodified.fetch_add(1, Ordering::Relaxed);
            self.progress.bytes.fetch_add(node.size, Ordering::Relaxed);
            return Some(());
        }
        match self.read_content(path, node.size) {
            Ok((content, len)) => {
                node.content = content;
                node.size = len;
                let c = if parent.is_some_and(|p| p.kind == NodeKind::File) {
                    &self.counts.files_changed
                } else {
                    &self.counts.files_new
                };
                c.fetch_add(1, Ordering::Relaxed);
                Some(())
            }
            Err(Error::Repo(e)) => {
                self.fatal(e);
                None
            }
            Err(Error::Io { cause: source, .. })
                if self.opts.missing_ok && source.kind() == io::ErrorKind::NotFound =>
            {
                None
            }
            Err(Error::Io { cause: source, .. }) => {
                self.skip(path, source.to_string(), true);
                None
            }
            Err(e) => {
                self.skip(path, e.to_string(), true);
                None
            }
        }
    }

    fn read_content(&self, path: &Path, size: u64) -> Result<(Vec<Id>, u64)> {
        let io_err = |e: io::Error| Error::Io { path: path.display().to_string(), cause: e };
        // O_NOATIME keeps a backup from touching every file's atime; only
        // the owner (or root) may ask for it, so fall back without it.
        let mut file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOATIME)
            .open(path)
            .or_else(|_| File::open(path))
            .map_err(io_err)?;
        let progress = |n: u64| {
            self.progress.bytes.fetch_add(n, Ordering::Relaxed);
            self.progress.bytes_read.fetch_add(n, Ordering::Relaxed);
        };
        // A file that fits in one maximal chunk is read whole: no streaming
        // buffer to set up for the common small file. One byte more than
        // that is asked for, to see whether the file grew since its stat.
        let limit = u64::from(self.indexed.repo().config().chunker.max_size);
        let mut observer = self.opts.observer.as_ref().and_then(|o| o.0.file(path));
        let saved = if size <= limit {
            let mut buf = Vec::with_capacity(size as usize + 1);
            (&mut file).take(limit + 1).read_to_end(&mut buf).map_err(io_err)?;
            if buf.len() as u64 <= limit {
                // The whole file, whatever its size now: one that shrank
                // since its stat is saved as read.
                if let Some(o) = observer.as_mut() {
                    o.data(&buf);
                }
                let ids = self.writer.save_bytes(&buf)?;
                progress(buf.len() as u64);
                Ok((ids, buf.len() as u64))
            } else {
                // It grew past one chunk while we looked: stream what was
                // read followed by the rest of the same open file.
                let reader = Observed { inner: io::Cursor::new(buf).chain(file), observer: observer.as_mut() };
                self.writer.save_stream(reader, None, &progress).map_err(|e| stream_err(e, path))
            }
        } else {
            let reader = Observed { inner: file, observer: observer.as_mut() };
            self.writer.save_stream(reader, None, &progress).map_err(|e| stream_err(e, path))
        };
        if let (Some(o), Ok(_)) = (observer, &saved) {
            o.end();
        }
        saved
    }

    fn is_tagged_cache(&self, dir: &Path) -> bool {
        let mut buf = [0u8; CACHEDIR_SIGNATURE.len()];
        File::open(dir.join("CACHEDIR.TAG")).and_then(|mut f| f.read_exact(&mut buf)).is_ok()
            && buf == CACHEDIR_SIGNATURE
    }

    fn save_dir(&self, dir: &Path, parent: Option<&Tree>, root_dev: u64) -> Option<Tree> {
        let rd = match fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if self.opts.missing_ok && e.kind() == io::ErrorKind::NotFound => return Some(Tree::default()),
            Err(e) => {
                self.skip(dir, format!("cannot list directory: {e}"), true);
                return Some(Tree::default());
            }
        };
        let mut names = Vec::new();
        for e in rd {
            match e {
                Ok(e) => names.push(Name::from_os(&e.file_name())),
                Err(e) => self.skip(dir, format!("error while listing: {e}"), true),
            }
        }
        names.sort();
        if self.opts.exclude_caches && self.is_tagged_cache(dir) {
            names.retain(|n| n.0 == b"CACHEDIR.TAG");
        }
        let nodes: Vec<Option<Node>> = names
            .into_par_iter()
            .map(|name| {
                let path = dir.join(name.as_os());
                let pnode = parent.and_then(|t| t.find(&name));
                self.save_entry(&path, name, pnode, root_dev)
            })
            .collect();
        if self.stopped() {
            return None;
        }
        Some(Tree { nodes: nodes.into_iter().flatten().collect() })
    }
}

/// Converts a writer error from inside a file read: a storage failure is
/// fatal, a read error names the file.
fn stream_err(e: arkiv_repo::Error, path: &Path) -> Error {
    match e {
        arkiv_repo::Error::Io { cause: source, .. } => Error::Io { path: path.display().to_string(), cause: source },
        other => Error::Repo(other),
    }
}

/// The directories the snapshot's root must contain to reach each path,
/// e.g. `/srv/app/uploads` becomes srv → app → uploads.
#[derive(Default)]
struct VirtualDir {
    children: BTreeMap<Name, VirtualEntry>,
}

enum VirtualEntry {
    Real(PathBuf),
    Dir(PathBuf, VirtualDir),
}

fn build_virtual(paths: &[PathBuf]) -> VirtualDir {
    let mut root = VirtualDir::default();
    for p in paths {
        let comps: Vec<_> = p
            .components()
            .filter_map(|c| match c {
                std::path::Component::Normal(n) => Some(n),
                _ => None,
            })
            .collect();
        let mut cur = &mut root;
        let mut so_far = PathBuf::from("/");
        for (i, c) in comps.iter().enumerate() {
            so_far.push(c);
            let name = Name::from_os(c);
            if i + 1 == comps.len() {
                cur.children.insert(name, VirtualEntry::Real(p.clone()));
                break;
            }
            let entry =
                cur.children.entry(name).or_insert_with(|| VirtualEntry::Dir(so_far.clone(), VirtualDir::default()));
            match entry {
                VirtualEntry::Dir(_, d) => cur = d,
                // An ancestor is itself backed up whole.
                VirtualEntry::Real(_) => break,
            }
        }
    }
    root
}

impl Ctx<'_> {
    fn save_virtual(&self, dir: &VirtualDir, parent: Option<&Tree>) -> Option<Tree> {
        let nodes: Vec<Option<Node>> = dir
            .children
            .par_iter()
            .map(|(name, entry)| {
                let pnode = parent.and_then(|t| t.find(name));
                match entry {
                    VirtualEntry::Real(p) => {
                        let dev = fs::symlink_metadata(p).map(|m| m.dev()).unwrap_or(0);
                        self.save_entry(p, name.clone(), pnode, dev)
                    }
                    VirtualEntry::Dir(p, sub) => {
                        // Followed, not lstat'ed: the backup goes through
                        // this directory, so a symlink here (`/lib` on a
                        // merged-usr system) stands for the directory it
                        // points to, and its mode and owner are what a
                        // restore must give the directory it creates.
                        let md = match fs::metadata(p) {
                            Ok(m) => m,
                            Err(e) => {
                                self.skip(p, format!("cannot stat: {e}"), true);
                                return None;
                            }
                        };
                        let mut node = meta::node_from_metadata(name.clone(), NodeKind::Dir, &md);
                        let ptree = self.parent_tree(pnode);
                        let tree = self.save_virtual(sub, ptree.as_ref())?;
                        node.subtree = Some(self.save_tree(&tree)?);
                        Some(node)
                    }
                }
            })
            .collect();
        if self.stopped() {
            return None;
        }
        Some(Tree { nodes: nodes.into_iter().flatten().collect() })
    }
}

/// Absolute, normalised paths (symlinks are not resolved: a symlink given
/// on the command line is saved as a symlink).
pub fn absolute_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        let abs = std::path::absolute(p).map_err(|e| Error::Io { path: p.display().to_string(), cause: e })?;
        let mut norm = PathBuf::from("/");
        for c in abs.components() {
            match c {
                std::path::Component::ParentDir => {
                    norm.pop();
                }
                std::path::Component::Normal(n) => norm.push(n),
                _ => {}
            }
        }
        fs::symlink_metadata(&norm).map_err(|e| Error::Io { path: p.display().to_string(), cause: e })?;
        out.push(norm);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Backs up `opts.paths` and writes a snapshot (unless dry-run).
pub fn backup(indexed: &Indexed, opts: &BackupOptions, progress: &Progress) -> Result<BackupOutcome> {
    let started = chrono::Utc::now();
    let t0 = Instant::now();
    let paths = absolute_paths(&opts.paths)?;
    if paths.is_empty() {
        return Err(Error::Invalid("nothing to back up: give at least one path".into()));
    }
    let path_strings: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let host = opts.host.clone().unwrap_or_else(arkiv_repo::snapshot::hostname);
    let repo = indexed.repo();

    // --force still records the parent (and counts changed files against
    // it); it only stops unchanged files from being skipped.
    let parent = if let Some(spec) = &opts.parent {
        Some(repo.find_snapshot(spec, &SnapshotFilter::default())?)
    } else {
        let filter =
            SnapshotFilter { host: Some(host.clone()), paths: vec![], tags: vec![], source: Some("files".into()) };
        let mut candidates: Vec<_> = repo
            .list_snapshots()?
            .into_iter()
            .filter(|e| filter.matches(&e.snapshot) && e.snapshot.paths == path_strings)
            .collect();
        candidates.pop()
    };
    let parent_root = match &parent {
        Some(p) => Some(indexed.load_tree(&p.snapshot.tree)?),
        None => None,
    };

    let writer = if opts.dry_run { Writer::new_dry_run(indexed) } else { Writer::new(indexed) };
    let ctx = Ctx {
        indexed,
        writer: &writer,
        opts,
        progress,
        skipped: Mutex::new(Vec::new()),
        counts: Counts::default(),
        fatal: Mutex::new(None),
    };
    // Backing up `/` makes the file system root the snapshot's root; any
    // other path is reached through the directories above it.
    let root = if paths.iter().any(|p| p.as_os_str() == "/") {
        let dev = fs::symlink_metadata("/").map(|m| m.dev()).unwrap_or(0);
        ctx.save_dir(Path::new("/"), parent_root.as_ref(), dev)
    } else {
        ctx.save_virtual(&build_virtual(&paths), parent_root.as_ref())
    };
    if let Some(e) = ctx.fatal.lock().unwrap().take() {
        return Err(Error::Repo(e));
    }
    let root = root.ok_or_else(|| Error::Invalid("backup stopped".into()))?;
    let tree = writer.save_tree(&root)?;
    let Ctx { skipped, counts: c, .. } = ctx;
    let summary = c.summary(progress);
    let found = Found {
        tree,
        host,
        paths: path_strings,
        parent: parent.map(|p| p.id),
        skipped: skipped.into_inner().unwrap(),
        summary,
    };
    save_snapshot(indexed, opts, writer, started, t0, found)
}

/// What walking one directory found: its entries as a tree not yet
/// saved, so a source can add to it (a database's backup label) first.
pub struct DirWalk {
    pub tree: Tree,
    pub skipped: Vec<Skipped>,
    /// File counts; timing and storage figures are the caller's.
    pub summary: arkiv_repo::Summary,
}

/// Walks `dir` as the root of a snapshot, saving file contents and
/// subdirectories through `writer`, comparing with `parent` (the parent
/// snapshot's tree for the same directory). `opts.paths` is ignored.
pub fn walk_dir(
    indexed: &Indexed,
    writer: &Writer,
    dir: &Path,
    parent: Option<&Tree>,
    opts: &BackupOptions,
    progress: &Progress,
) -> Result<DirWalk> {
    let ctx = Ctx {
        indexed,
        writer,
        opts,
        progress,
        skipped: Mutex::new(Vec::new()),
        counts: Counts::default(),
        fatal: Mutex::new(None),
    };
    let md = fs::metadata(dir).map_err(|e| Error::Io { path: dir.display().to_string(), cause: e })?;
    let tree = ctx.save_dir(dir, parent, md.dev());
    if let Some(e) = ctx.fatal.lock().unwrap().take() {
        return Err(Error::Repo(e));
    }
    let tree = tree.ok_or_else(|| Error::Invalid("backup stopped".into()))?;
    let Ctx { skipped, counts: c, .. } = ctx;
    Ok(DirWalk { tree, skipped: skipped.into_inner().unwrap(), summary: c.summary(progress) })
}

/// What a backup found, before the writer is finished.
struct Found {
    tree: Id,
    host: String,
    paths: Vec<String>,
    parent: Option<Id>,
    skipped: Vec<Skipped>,
    /// The file counts; timing and storage figures are added when saving.
    summary: arkiv_repo::Summary,
}

/// Flushes the writer and writes the snapshot (unless dry-run): the packs
/// and index files go first, so the snapshot only names stored data.
fn save_snapshot(
    indexed: &Indexed,
    opts: &BackupOptions,
    writer: Writer,
    started: chrono::DateTime<chrono::Utc>,
    t0: Instant,
    found: Found,
) -> Result<BackupOutcome> {
    let stats = writer.finish()?;
    let mut snap = Snapshot::new("files", found.tree);
    snap.host = found.host;
    snap.tags = opts.tags.clone();
    snap.paths = found.paths;
    snap.parent = found.parent;
    snap.skipped = found.skipped;
    snap.skipped.sort_by(|a, b| a.path.cmp(&b.path));
    snap.summary = arkiv_repo::Summary {
        started: Some(started),
        duration_secs: t0.elapsed().as_secs_f64(),
        blobs_new: stats.blobs_new,
        bytes_new: stats.bytes_new,
        bytes_stored: stats.bytes_stored,
        ..found.summary
    };
    let id = if opts.dry_run { None } else { Some(indexed.repo().save_snapshot(&snap)?) };
    Ok(BackupOutcome { id, snapshot: snap })
}

/// Backs up one stream (standard input) as a single file named `name`.
pub fn backup_stream<R: Read>(
    indexed: &Indexed,
    name: &str,
    reader: R,
    opts: &BackupOptions,
    progress: &Progress,
) -> Result<BackupOutcome> {
    if name.is_empty() || name.contains('/') {
        return Err(Error::Invalid(format!("--stdin-filename '{name}' must be a plain file name")));
    }
    let started = chrono::Utc::now();
    let t0 = Instant::now();
    let writer = if opts.dry_run { Writer::new_dry_run(indexed) } else { Writer::new(indexed) };
    let count = |n: u64| {
        progress.bytes.fetch_add(n, Ordering::Relaxed);
        progress.bytes_read.fetch_add(n, Ordering::Relaxed);
    };
    let (content, len) = writer.save_stream(reader, None, &count).map_err(|e| stream_err(e, Path::new("stdin")))?;
    let now = chrono::Utc::now();
    let mut node = Node::new(Name::from(name), NodeKind::File);
    node.mode = 0o644;
    // SAFETY: getuid/getgid have no preconditions.
    node.uid = unsafe { libc::getuid() };
    node.gid = unsafe { libc::getgid() };
    node.mtime_ns = now.timestamp_nanos_opt().unwrap_or(0);
    node.ctime_ns = node.mtime_ns;
    node.size = len;
    node.content = content;
    let tree = writer.save_tree(&Tree { nodes: vec![node] })?;
    let found = Found {
        tree,
        host: opts.host.clone().unwrap_or_else(arkiv_repo::snapshot::hostname),
        paths: vec![format!("/{name}")],
        parent: None,
        skipped: Vec::new(),
        summary: arkiv_repo::Summary {
            files_new: 1,
            total_files: 1,
            total_bytes: len,
            bytes_read: len,
            ..Default::default()
        },
    };
    save_snapshot(indexed, opts, writer, started, t0, found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arkiv_repo::{Backend, Credential, InitOptions, KdfParams, Repository};

    fn indexed(dir: &Path) -> Indexed {
        let opts =
            InitOptions { kdf: KdfParams { memory_kib: 1024, iterations: 1, parallelism: 1 }, ..Default::default() };
        let repo = Repository::init(Backend::local(&dir.join("repo")).unwrap(), &Credential::password("pw"), opts)
            .expect("init");
        repo.index().expect("index")
    }

    #[test]
    fn a_file_that_grew_past_one_chunk_after_its_stat_is_saved_whole() {
        let dir = tempfile::tempdir().unwrap();
        let indexed = indexed(dir.path());
        let max = indexed.repo().config().chunker.max_size as usize;
        // Stat'ed at 100 bytes, 10 MiB by the time it is read.
        let data: Vec<u8> = (0..10usize << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        assert!(data.len() > 2 * max);
        let path = dir.path().join("growing");
        fs::write(&path, &data).unwrap();
        let writer = Writer::new_dry_run(&indexed);
        let opts = BackupOptions::default();
        let progress = Progress::default();
        let ctx = Ctx {
            indexed: &indexed,
            writer: &writer,
            opts: &opts,
            progress: &progress,
            skipped: Mutex::new(Vec::new()),
            counts: Counts::default(),
            fatal: Mutex::new(None),
        };
        let (ids, len) = ctx.read_content(&path, 100).expect("read");
        assert_eq!(len, data.len() as u64, "saved {len} of {} bytes", data.len());
        assert!(ids.len() >= 3, "10 MiB in {} chunk(s)", ids.len());
        assert_eq!(progress.bytes_read.load(Ordering::Relaxed), data.len() as u64);
    }
}
