//! Bucket backup: list the prefix, reuse what the parent snapshot already
//! holds for unchanged objects, read the rest a few at a time, and write
//! the keys as a tree of directories.
//!
//! Directory nodes take the newest time of what lies below them and the
//! backing-up user as owner, so an unchanged part of a bucket yields the
//! same tree blobs as last time and is stored once.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use arkiv_repo::backend::opendal::ErrorKind;
use arkiv_repo::location::StoreOptions;
use arkiv_repo::{Id, Indexed, Name, Node, NodeKind, Skipped, Snapshot, SnapshotFilter, Tree, Writer};
use rayon::prelude::*;

use super::{Bucket, Object, ObjectReader, ReadStop, IN_FLIGHT, KIND};
use crate::error::{Error, Result};
use crate::files::{BackupOutcome, Progress};
use crate::stream::StreamOptions;

/// Times an object replaced while it is being read is read again before
/// the backup gives up on it.
const CHANGED_RETRIES: u32 = 3;

/// A bucket prefix to back up.
#[derive(Debug)]
pub struct BucketSource {
    pub bucket: Bucket,
    /// Read every object, even those the parent snapshot says are unchanged.
    pub force: bool,
}

impl BucketSource {
    /// The prefix `spec` names (`s3://BUCKET/PREFIX?endpoint=…`, `gs://…`,
    /// `azblob://…`).
    pub fn open(spec: &str, opts: &StoreOptions) -> Result<BucketSource> {
        Ok(BucketSource { bucket: Bucket::open(spec, opts)?, force: false })
    }
}

/// The keys under the prefix as directories of files (indexes into the
/// listing).
#[derive(Default)]
struct Dir {
    dirs: BTreeMap<String, Dir>,
    files: BTreeMap<String, usize>,
}

/// Why a key cannot be a path in a tree, if it cannot.
fn unusable(key: &str) -> Option<&'static str> {
    if key.split('/').any(|s| s.is_empty()) {
        Some("key has an empty path segment ('//' or a leading '/')")
    } else if key.split('/').any(|s| s == "." || s == "..") {
        Some("key has a '.' or '..' path segment")
    } else if key.contains('\0') {
        Some("key holds a NUL byte")
    } else {
        None
    }
}

impl Dir {
    /// Places every usable key; returns the ones that cannot be placed.
    fn build(objects: &[Object]) -> (Dir, Vec<Skipped>) {
        let mut root = Dir::default();
        let mut skipped = Vec::new();
        let skip = |key: &str, reason: &str| Skipped { path: key.to_string(), reason: reason.to_string(), error: true };
        for (i, o) in objects.iter().enumerate() {
            if let Some(why) = unusable(&o.key) {
                skipped.push(skip(&o.key, why));
                continue;
            }
            let mut parts: Vec<&str> = o.key.split('/').collect();
            let name = parts.pop().expect("split yields one part at least");
            let mut cur = &mut root;
            let mut clash = false;
            for p in parts {
                if cur.files.contains_key(p) {
                    clash = true;
                    break;
                }
                cur = cur.dirs.entry(p.to_string()).or_default();
            }
            if clash || cur.dirs.contains_key(name) {
                skipped.push(skip(&o.key, "key is both an object and the prefix of other keys"));
                continue;
            }
            cur.files.insert(name.to_string(), i);
        }
        // Keys are sorted, so "a" is placed before "a/b": the clash is found
        // when "a/b" arrives and "a/b" is the key left out. Both are equally
        // unrepresentable; leaving out the shorter one would lose the same.
        (root, skipped)
    }
}

/// What one object became.
struct Stored {
    content: Vec<Id>,
    size: u64,
    etag: Option<String>,
    mtime_ns: Option<i64>,
}

#[derive(Default)]
struct Counts {
    read: AtomicU64,
    reused: AtomicU64,
    changed: AtomicU64,
    new: AtomicU64,
    bytes_read: AtomicU64,
}

struct Ctx<'a> {
    indexed: &'a Indexed,
    writer: &'a Writer,
    source: &'a BucketSource,
    objects: &'a [Object],
    progress: &'a Progress,
    counts: Counts,
    stored: Mutex<HashMap<usize, Stored>>,
    /// Objects deleted between listing and reading: not in the snapshot.
    vanished: Mutex<Vec<String>>,
    fatal: Mutex<Option<Error>>,
    stop: AtomicBool,
}

impl Ctx<'_> {
    fn fail(&self, e: Error) {
        self.stop.store(true, Ordering::SeqCst);
        let mut f = self.fatal.lock().unwrap();
        if f.is_none() {
            *f = Some(e);
        }
    }

    fn parent_tree(&self, node: Option<&Node>) -> Option<Tree> {
        let id = node.filter(|n| n.kind == NodeKind::Dir)?.subtree?;
        match self.indexed.load_tree(&id) {
            Ok(t) => Some(t),
            Err(e) => {
                // A damaged parent only costs speed: the objects are read.
                tracing::warn!("parent tree {id} unreadable, reading its objects again: {e}");
                None
            }
        }
    }

    /// Sorts the objects of `dir` into reused (their content recorded now)
    /// and to be read (returned).
    fn plan(&self, dir: &Dir, parent: Option<&Tree>) -> Vec<(usize, bool)> {
        let mut read = Vec::new();
        for (name, &i) in &dir.files {
            let p = parent.and_then(|t| t.find(&Name::from(name.as_str()))).filter(|p| p.kind == NodeKind::File);
            match p.filter(|p| !self.source.force && self.unchanged(&self.objects[i], p)) {
                Some(p) => {
                    let o = &self.objects[i];
                    self.stored.lock().unwrap().insert(
                        i,
                        Stored { content: p.content.clone(), size: o.size, etag: o.etag.clone(), mtime_ns: o.mtime_ns },
                    );
                    self.counts.reused.fetch_add(1, Ordering::Relaxed);
                    self.progress.files.fetch_add(1, Ordering::Relaxed);
                    self.progress.bytes.fetch_add(o.size, Ordering::Relaxed);
                }
                None => read.push((i, p.is_some())),
            }
        }
        let subs: Vec<Vec<(usize, bool)>> = dir
            .dirs
            .par_iter()
            .map(|(name, sub)| {
                let pnode = parent.and_then(|t| t.find(&Name::from(name.as_str())));
                let ptree = self.parent_tree(pnode);
                self.plan(sub, ptree.as_ref())
            })
            .collect();
        read.extend(subs.into_iter().flatten());
        read
    }

    /// Same size and ETag; without ETags on either side, same size and
    /// last-modified time. And every blob still in the repository.
    fn unchanged(&self, o: &Object, p: &Node) -> bool {
        let same = p.size == o.size
            && match (&o.etag, &p.etag) {
                (Some(a), Some(b)) => a == b,
                (None, None) => o.mtime_ns.is_some_and(|t| t == p.mtime_ns),
                _ => false,
            };
        same && p.content.iter().all(|id| self.writer.has_blob(id))
    }

    /// Reads one object into the repository, again if it is replaced
    /// while being read.
    fn read_object(&self, i: usize, had_parent: bool) {
        let bucket = &self.source.bucket;
        let mut o = self.objects[i].clone();
        let mut attempt = 0;
        loop {
            let mut reader = ObjectReader::new(bucket, &o.key, o.etag.as_deref(), o.size);
            let progress = |n: u64| {
                self.progress.bytes.fetch_add(n, Ordering::Relaxed);
                self.progress.bytes_read.fetch_add(n, Ordering::Relaxed);
                self.counts.bytes_read.fetch_add(n, Ordering::Relaxed);
            };
            let saved = self.writer.save_stream(&mut reader, None, &progress);
            let stop = reader.stop.take();
            match (saved, stop) {
                (Ok((content, size)), _) => {
                    self.stored
                        .lock()
                        .unwrap()
                        .insert(i, Stored { content, size, etag: o.etag.clone(), mtime_ns: o.mtime_ns });
                    self.counts.read.fetch_add(1, Ordering::Relaxed);
                    let c = if had_parent { &self.counts.changed } else { &self.counts.new };
                    c.fetch_add(1, Ordering::Relaxed);
                    self.progress.files.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                (Err(_), Some(ReadStop::Gone)) => {
                    tracing::warn!("{}: {} was deleted during the backup; not in the snapshot", bucket.location, o.key);
                    self.vanished.lock().unwrap().push(o.key.clone());
                    return;
                }
                (Err(_), Some(ReadStop::Changed)) if attempt < CHANGED_RETRIES => {
                    attempt += 1;
                    match bucket.retry(|| bucket.op().stat(&o.key)) {
                        Ok(m) => {
                            o.size = m.content_length();
                            o.etag = m.etag().filter(|t| !t.is_empty()).map(str::to_string);
                            o.mtime_ns = m.last_modified().map(|t| {
                                let t = t.into_inner();
                                t.as_second().saturating_mul(1_000_000_000).saturating_add(t.subsec_nanosecond() as i64)
                            });
                        }
                        Err(e) if e.kind() == ErrorKind::NotFound => {
                            self.vanished.lock().unwrap().push(o.key.clone());
                            return;
                        }
                        Err(e) => return self.fail(bucket.error("cannot stat", &o.key, &e)),
                    }
                }
                (Err(_), Some(ReadStop::Changed)) => {
                    return self.fail(Error::Source {
                        location: bucket.location.clone(),
                        message: format!("{}: replaced {} times while being read; try again", o.key, attempt + 1),
                    })
                }
                (Err(_), Some(ReadStop::Failed(e))) => return self.fail(bucket.error("cannot read", &o.key, &e)),
                (Err(e), None) => return self.fail(Error::Repo(e)),
            }
        }
    }

    /// Reads the objects `todo` names, [`IN_FLIGHT`] at a time.
    fn read_all(&self, todo: Vec<(usize, bool)>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        for t in todo {
            tx.send(t).expect("the receiver is alive");
        }
        drop(tx);
        std::thread::scope(|s| {
            for _ in 0..IN_FLIGHT {
                let rx = rx.clone();
                s.spawn(move || {
                    for (i, had_parent) in rx {
                        if self.stop.load(Ordering::SeqCst) {
                            return;
                        }
                        self.read_object(i, had_parent);
                    }
                });
            }
        });
    }

    /// Writes the trees of `dir`, bottom-up; returns the tree's id and the
    /// newest time below it.
    fn save(
        &self,
        dir: &Dir,
        stored: &HashMap<usize, Stored>,
        started_ns: i64,
        counts: &mut TreeCounts,
    ) -> Result<(Id, i64)> {
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let mut nodes = Vec::with_capacity(dir.files.len() + dir.dirs.len());
        let mut newest = 0i64;
        for (name, sub) in &dir.dirs {
            let (id, mtime) = self.save(sub, stored, started_ns, counts)?;
            let mut n = Node::new(Name::from(name.as_str()), NodeKind::Dir);
            n.mode = 0o755;
            n.uid = uid;
            n.gid = gid;
            n.mtime_ns = mtime;
            n.ctime_ns = mtime;
            n.subtree = Some(id);
            newest = newest.max(mtime);
            counts.dirs += 1;
            nodes.push(n);
        }
        for (name, i) in &dir.files {
            // Absent: deleted between listing and reading.
            let Some(s) = stored.get(i) else { continue };
            let mut n = Node::new(Name::from(name.as_str()), NodeKind::File);
            n.mode = 0o644;
            n.uid = uid;
            n.gid = gid;
            n.mtime_ns = s.mtime_ns.unwrap_or(started_ns);
            n.ctime_ns = n.mtime_ns;
            n.size = s.size;
            n.content = s.content.clone();
            n.etag = s.etag.clone();
            newest = newest.max(n.mtime_ns);
            counts.files += 1;
            counts.bytes += s.size;
            nodes.push(n);
        }
        let mut tree = Tree { nodes };
        tree.sort();
        Ok((self.writer.save_tree(&tree)?, newest))
    }
}

#[derive(Default)]
struct TreeCounts {
    files: u64,
    dirs: u64,
    bytes: u64,
}

/// The latest bucket snapshot of the same location on the same endpoint.
fn find_parent(indexed: &Indexed, bucket: &Bucket) -> Result<Option<(Id, Snapshot)>> {
    let filter =
        SnapshotFilter { source: Some(KIND.into()), paths: vec![bucket.location.clone()], ..Default::default() };
    let mut candidates: Vec<_> = indexed
        .repo()
        .list_snapshots()?
        .into_iter()
        .filter(|e| filter.matches(&e.snapshot))
        .filter(|e| e.snapshot.metadata.get("endpoint").and_then(|v| v.as_str()) == Some(bucket.endpoint.as_str()))
        .collect();
    candidates.sort_by_key(|e| e.snapshot.time);
    Ok(candidates.pop().map(|e| (e.id, e.snapshot)))
}

/// Backs up the prefix and writes a snapshot (unless `opts.dry_run`).
///
/// The snapshot's `source` is `bucket`, its path the location without
/// query, and its metadata holds the endpoint host, object and byte counts,
/// and how many objects were read and how many reused from the parent.
/// Any failure to list or read means no snapshot; keys that cannot be
/// paths are recorded as skipped (a partial snapshot).
pub fn backup(
    indexed: &Indexed,
    source: &BucketSource,
    opts: &StreamOptions,
    progress: &Progress,
) -> Result<BackupOutcome> {
    let started = chrono::Utc::now();
    let started_ns = started.timestamp_nanos_opt().unwrap_or(0);
    let t0 = Instant::now();
    let bucket = &source.bucket;
    let objects = bucket.list()?;
    if objects.is_empty() {
        return Err(Error::Source {
            location: bucket.location.clone(),
            message: "no objects under this prefix; check the bucket and prefix".into(),
        });
    }
    let (root, mut skipped) = Dir::build(&objects);
    for s in &skipped {
        tracing::warn!("{}: {}: {}", bucket.location, s.path, s.reason);
        progress.errors.fetch_add(1, Ordering::Relaxed);
    }
    let parent = find_parent(indexed, bucket)?;
    let parent_root = match &parent {
        Some((_, s)) => Some(indexed.load_tree(&s.tree)?),
        None => None,
    };
    let writer = if opts.dry_run { Writer::new_dry_run(indexed) } else { Writer::new(indexed) };
    let ctx = Ctx {
        indexed,
        writer: &writer,
        source,
        objects: &objects,
        progress,
        counts: Counts::default(),
        stored: Mutex::new(HashMap::new()),
        vanished: Mutex::new(Vec::new()),
        fatal: Mutex::new(None),
        stop: AtomicBool::new(false),
    };
    let todo = ctx.plan(&root, parent_root.as_ref());
    ctx.read_all(todo);
    if let Some(e) = ctx.fatal.lock().unwrap().take() {
        return Err(e);
    }
    let stored = std::mem::take(&mut *ctx.stored.lock().unwrap());
    let mut tc = TreeCounts::default();
    let (tree, _) = ctx.save(&root, &stored, started_ns, &mut tc)?;
    let vanished = std::mem::take(&mut *ctx.vanished.lock().unwrap());
    for key in &vanished {
        skipped.push(Skipped { path: key.clone(), reason: "deleted during the backup".into(), error: false });
    }
    skipped.sort_by(|a, b| a.path.cmp(&b.path));
    let c = &ctx.counts;
    let read = c.read.load(Ordering::Relaxed);
    let reused = c.reused.load(Ordering::Relaxed);
    let bytes_read = c.bytes_read.load(Ordering::Relaxed);
    let stats = writer.finish()?;

    let mut snap = Snapshot::new(KIND, tree);
    if let Some(h) = &opts.host {
        snap.host = h.clone();
    }
    snap.tags = opts.tags.clone();
    snap.paths = vec![bucket.location.clone()];
    snap.parent = parent.map(|(id, _)| id);
    snap.skipped = skipped;
    snap.metadata = serde_json::json!({
        "endpoint": bucket.endpoint,
        "objects": tc.files,
        "bytes": tc.bytes,
        "objects_read": read,
        "objects_reused": reused,
        "bytes_read": bytes_read,
    });
    snap.summary = arkiv_repo::Summary {
        started: Some(started),
        duration_secs: t0.elapsed().as_secs_f64(),
        files_new: c.new.load(Ordering::Relaxed),
        files_changed: c.changed.load(Ordering::Relaxed),
        files_unmodified: reused,
        dirs: tc.dirs,
        total_files: tc.files,
        total_bytes: tc.bytes,
        bytes_read,
        blobs_new: stats.blobs_new,
        bytes_new: stats.bytes_new,
        bytes_stored: stats.bytes_stored,
    };
    let id = if opts.dry_run { None } else { Some(indexed.repo().save_snapshot(&snap)?) };
    Ok(BackupOutcome { id, snapshot: snap })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(key: &str) -> Object {
        Object { key: key.into(), size: 1, etag: None, mtime_ns: None }
    }

    #[test]
    fn keys_become_directories_and_unrepresentable_keys_are_named() {
        let objects: Vec<Object> =
            ["a", "a/b", "docs/x.pdf", "docs/y/z.txt", "p//q", "../up", "top"].into_iter().map(obj).collect();
        let mut sorted = objects.clone();
        sorted.sort_by(|a, b| a.key.cmp(&b.key));
        let (root, skipped) = Dir::build(&sorted);
        let names: Vec<&str> = skipped.iter().map(|s| s.path.as_str()).collect();
        assert_eq!(names, ["../up", "a/b", "p//q"]);
        assert!(skipped.iter().all(|s| s.error));
        assert_eq!(root.files.keys().collect::<Vec<_>>(), ["a", "top"]);
        let docs = &root.dirs["docs"];
        assert_eq!(docs.files.keys().collect::<Vec<_>>(), ["x.pdf"]);
        assert_eq!(docs.dirs["y"].files.keys().collect::<Vec<_>>(), ["z.txt"]);
    }
}
