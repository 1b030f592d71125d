//! Bucket restore: every file of a snapshot's tree written as an object
//! under a target prefix, its key the file's path in the snapshot.
//!
//! Any snapshot can be restored into a bucket (a files snapshot uploads a
//! directory tree), and a bucket snapshot restores into a directory through
//! the ordinary files restore. Existing keys are never replaced unless
//! asked: the restore refuses before writing anything if one would be.

use std::collections::HashSet;
use std::future::IntoFuture;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use arkiv_repo::backend::{block_on, describe};
use arkiv_repo::{ContentReader, Id, Indexed, NodeKind};
use serde::Serialize;

use super::{jitter, Bucket, IN_FLIGHT, PIECE};
use crate::error::{Error, Result};
use crate::files::restore::RestoreProgress;
use crate::files::PathFilter;

#[derive(Debug, Clone, Default)]
pub struct BucketRestoreOptions {
    /// Restore only what matches (paths in the snapshot, starting with `/`).
    pub includes: PathFilter,
    pub excludes: PathFilter,
    /// Replace objects that already exist under the target prefix.
    pub overwrite: bool,
    /// List what would be written; write nothing.
    pub dry_run: bool,
}

/// What a bucket restore did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BucketRestoreReport {
    /// The target prefix, without query or credentials.
    pub target: String,
    pub objects: u64,
    pub bytes: u64,
    /// Existing keys written over (with `overwrite`).
    pub replaced: u64,
    /// What the snapshot holds that a bucket cannot (symlinks), by path.
    pub not_restorable: Vec<String>,
    /// Dry run only: the keys that would be written.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub planned: Vec<String>,
    pub duration_secs: f64,
}

struct Item {
    key: String,
    size: u64,
    content: Vec<Id>,
}

/// Restores the tree `root` (a snapshot's, or a subtree of one) into
/// `target`. `snapshot` names the snapshot in messages.
pub fn restore(
    indexed: &Indexed,
    snapshot: &str,
    root: &Id,
    target: &Bucket,
    opts: &BucketRestoreOptions,
    progress: &RestoreProgress,
) -> Result<BucketRestoreReport> {
    let t0 = Instant::now();
    let mut report = BucketRestoreReport { target: target.location.clone(), ..Default::default() };
    let mut items = Vec::new();
    indexed
        .walk_tree(root, &mut |path, node| {
            let selected = (opts.includes.is_empty() || opts.includes.matches_or_inside(Path::new(path)))
                && (opts.excludes.is_empty() || !opts.excludes.matches_or_inside(Path::new(path)));
            match node.kind {
                NodeKind::File if selected => items.push(Item {
                    key: path.trim_start_matches('/').to_string(),
                    size: node.size,
                    content: node.content.clone(),
                }),
                NodeKind::Symlink if selected => report.not_restorable.push(path.to_string()),
                _ => {}
            }
            Ok(())
        })
        .map_err(|e| Error::Invalid(format!("snapshot {snapshot}: {e}")))?;
    if items.is_empty() {
        return Err(Error::Invalid(format!("snapshot {snapshot}: nothing to restore (no files selected)")));
    }
    // One listing instead of a request per key; it also proves the bucket
    // exists and the credentials work before anything is written.
    let existing: HashSet<String> = target.list()?.into_iter().map(|o| o.key).collect();
    let clashes: Vec<&str> = items.iter().filter(|i| existing.contains(&i.key)).map(|i| i.key.as_str()).collect();
    if !clashes.is_empty() && !opts.overwrite {
        return Err(Error::Source {
            location: target.location.clone(),
            message: format!(
                "{} of the {} keys to restore already exist (first: {}); nothing was written; use --overwrite to replace them",
                clashes.len(),
                items.len(),
                clashes[0]
            ),
        });
    }
    report.replaced = clashes.len() as u64;
    progress.total_bytes.store(items.iter().map(|i| i.size).sum(), Ordering::Relaxed);
    if opts.dry_run {
        report.objects = items.len() as u64;
        report.bytes = items.iter().map(|i| i.size).sum();
        report.planned = items.into_iter().map(|i| i.key).collect();
        report.duration_secs = t0.elapsed().as_secs_f64();
        return Ok(report);
    }

    let ctx = Ctx {
        indexed,
        target,
        progress,
        objects: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        fatal: Mutex::new(None),
        stop: AtomicBool::new(false),
    };
    let (tx, rx) = crossbeam_channel::unbounded();
    for i in &items {
        tx.send(i).expect("the receiver is alive");
    }
    drop(tx);
    std::thread::scope(|s| {
        for _ in 0..IN_FLIGHT {
            let rx = rx.clone();
            let ctx = &ctx;
            s.spawn(move || {
                for item in rx {
                    if ctx.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    if let Err(e) = ctx.write(item) {
                        ctx.stop.store(true, Ordering::SeqCst);
                        ctx.fatal.lock().unwrap().get_or_insert(e);
                    }
                }
            });
        }
    });
    if let Some(e) = ctx.fatal.into_inner().unwrap() {
        let done = ctx.objects.load(Ordering::Relaxed);
        return Err(match e {
            Error::Source { location, message } => Error::Source {
                location,
                message: format!("{message} ({done} of {} objects were written)", items.len()),
            },
            other => other,
        });
    }
    report.objects = ctx.objects.into_inner();
    report.bytes = ctx.bytes.into_inner();
    report.duration_secs = t0.elapsed().as_secs_f64();
    Ok(report)
}

struct Ctx<'a> {
    indexed: &'a Indexed,
    target: &'a Bucket,
    progress: &'a RestoreProgress,
    objects: AtomicU64,
    bytes: AtomicU64,
    fatal: Mutex<Option<Error>>,
    stop: AtomicBool,
}

/// Why writing one object failed.
enum WriteFail {
    Store(arkiv_repo::backend::opendal::Error),
    /// Reading the snapshot failed: the repository's account of it.
    Repo(std::io::Error),
    Short(u64),
}

impl Ctx<'_> {
    /// Writes one object, whole: a temporary storage failure starts it
    /// over (the repository side is re-read), so no retry can leave a mix.
    fn write(&self, item: &Item) -> Result<()> {
        let t = self.target;
        let mut attempt = 0u32;
        loop {
            let mut written = 0u64;
            let r = self.attempt(item, &mut written);
            match r {
                Ok(()) => {
                    self.objects.fetch_add(1, Ordering::Relaxed);
                    self.bytes.fetch_add(item.size, Ordering::Relaxed);
                    self.progress.files.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Err(WriteFail::Store(e)) if e.is_temporary() && attempt < t.policy.retries => {
                    self.progress.bytes.fetch_sub(written, Ordering::Relaxed);
                    let cap = t.policy.backoff.saturating_mul(1 << attempt.min(16)).min(Duration::from_secs(30));
                    attempt += 1;
                    tracing::debug!("{}: writing {}: {} (retry {attempt})", t.location, item.key, describe(&e));
                    std::thread::sleep(cap.mul_f64(jitter()));
                }
                Err(WriteFail::Store(e)) => return Err(t.error("cannot write", &item.key, &e)),
                Err(WriteFail::Repo(e)) => {
                    return Err(Error::Source {
                        location: t.location.clone(),
                        message: format!("{}: cannot read its content from the repository: {e}", item.key),
                    })
                }
                Err(WriteFail::Short(n)) => {
                    return Err(Error::Source {
                        location: t.location.clone(),
                        message: format!(
                            "{}: the snapshot holds {n} bytes of its {} (damaged repository?); not written",
                            item.key, item.size
                        ),
                    })
                }
            }
        }
    }

    fn attempt(&self, item: &Item, written: &mut u64) -> std::result::Result<(), WriteFail> {
        let op = self.target.op();
        let mut w =
            block_on(op.writer_with(&item.key).chunk(PIECE as usize).into_future()).map_err(WriteFail::Store)?;
        let mut content = ContentReader::new(self.indexed, &item.content);
        let mut buf = vec![0u8; PIECE.min(item.size.max(1)) as usize];
        let r = loop {
            // Filled between writes, outside the IO runtime: the content
            // reader itself waits on storage.
            let n = match read_full(&mut content, &mut buf) {
                Ok(n) => n,
                Err(e) => break Err(WriteFail::Repo(e)),
            };
            if n == 0 {
                break Ok(());
            }
            if let Err(e) = block_on(w.write(buf[..n].to_vec())) {
                break Err(WriteFail::Store(e));
            }
            *written += n as u64;
            self.progress.bytes.fetch_add(n as u64, Ordering::Relaxed);
        };
        let r = r.and_then(|()| {
            if *written != item.size {
                return Err(WriteFail::Short(*written));
            }
            block_on(w.close()).map(|_| ()).map_err(WriteFail::Store)
        });
        if r.is_err() {
            // Abandons a multipart upload rather than leaving its parts
            // billed and invisible; a failed abort changes nothing more.
            let _ = block_on(w.abort());
        }
        r
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
