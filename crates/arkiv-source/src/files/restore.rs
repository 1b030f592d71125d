//! File restore: plan from the snapshot's trees, then fetch every needed
//! blob once, pack by pack, and write it to each place it belongs.
//!
//! Reading in pack order (not file order) turns a restore into a few large
//! sequential reads per pack, the pattern object storage is fastest at, and
//! a blob shared by many files is fetched once. Every blob is decrypted and
//! checked against its keyed hash before a byte of it reaches a file; a
//! blob that fails marks only the files that need it as damaged, and the
//! rest of the restore goes on.
//!
//! Files are created at their full length before any content is written,
//! and every all-zero 4 KiB block (aligned to the file) is left unwritten,
//! so sparse files come back sparse.
//!
//! A file counts as restored only when every byte of it was: the lengths of
//! its blobs must add up to its recorded size and each of them must have
//! been written (or left as a hole); anything less marks it damaged.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use arkiv_repo::{Id, Indexed, Node, NodeKind};
use rayon::prelude::*;
use serde::Serialize;

use super::filter::PathFilter;
use super::meta;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    pub target: PathBuf,
    /// Restore only what matches (and what lies inside a matching directory).
    pub includes: PathFilter,
    pub excludes: PathFilter,
    /// Replace files that already exist at the target.
    pub overwrite: bool,
    /// Only list what would be written.
    pub dry_run: bool,
}

#[derive(Debug, Default)]
pub struct RestoreProgress {
    pub total_bytes: AtomicU64,
    pub bytes: AtomicU64,
    pub files: AtomicU64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Damaged {
    pub path: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Planned {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: NodeKind,
    pub size: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreOutcome {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub bytes: u64,
    /// Left alone because they exist and `overwrite` is off.
    pub skipped_existing: Vec<String>,
    /// Files whose content could not be restored intact.
    pub damaged: Vec<Damaged>,
    /// Metadata that could not be set (owner, mode, times).
    pub warnings: Vec<String>,
    /// Dry run only: what would be written.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub planned: Vec<Planned>,
    /// The first failure to reach storage (not damage): when set, files
    /// were left unrestored because the repository could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_error: Option<String>,
}

struct Item {
    /// Path inside the snapshot, starting with `/`.
    rel: PathBuf,
    node: Node,
}

#[derive(Default)]
struct Plan {
    dirs: Vec<Item>,
    files: Vec<Item>,
    symlinks: Vec<Item>,
}

impl Plan {
    fn merge(&mut self, o: Plan) {
        self.dirs.extend(o.dirs);
        self.files.extend(o.files);
        self.symlinks.extend(o.symlinks);
    }
}

struct Planner<'a> {
    indexed: &'a Indexed,
    opts: &'a RestoreOptions,
}

impl Planner<'_> {
    fn selected(&self, rel: &Path) -> bool {
        (self.opts.includes.is_empty() || self.opts.includes.matches_or_inside(rel))
            && (self.opts.excludes.is_empty() || !self.opts.excludes.matches_or_inside(rel))
    }

    /// Walks a tree; directories are kept when selected or when something
    /// selected lies below them.
    fn walk(&self, tree_id: &Id, rel: &Path) -> Result<Plan> {
        let tree =
            self.indexed.load_tree(tree_id).map_err(|e| Error::Tree { path: rel.display().to_string(), error: e })?;
        let parts: Vec<Result<Plan>> = tree
            .nodes
            .into_par_iter()
            .map(|node| {
                let child = rel.join(node.name.as_os());
                let mut plan = Plan::default();
                if !self.opts.excludes.is_empty() && self.opts.excludes.matches_or_inside(&child) {
                    return Ok(plan);
                }
                match node.kind {
                    NodeKind::Dir => {
                        let sub = match &node.subtree {
                            Some(id) => self.walk(id, &child)?,
                            None => Plan::default(),
                        };
                        let keep = self.selected(&child)
                            || !sub.dirs.is_empty()
                            || !sub.files.is_empty()
                            || !sub.symlinks.is_empty();
                        plan.merge(sub);
                        if keep {
                            plan.dirs.push(Item { rel: child, node });
                        }
                    }
                    NodeKind::File if self.selected(&child) => plan.files.push(Item { rel: child, node }),
                    NodeKind::Symlink if self.selected(&child) => plan.symlinks.push(Item { rel: child, node }),
                    _ => {}
                }
                Ok(plan)
            })
            .collect();
        let mut plan = Plan::default();
        for p in parts {
            plan.merge(p?);
        }
        Ok(plan)
    }
}

fn is_zero(b: &[u8]) -> bool {
    let (head, body, tail) = unsafe { b.align_to::<u128>() };
    head.iter().all(|&x| x == 0) && body.iter().all(|&x| x == 0) && tail.iter().all(|&x| x == 0)
}

/// The ranges of `data` (to be written at file offset `off`) that are not
/// all-zero 4 KiB blocks, aligned to the file, where file systems allocate.
/// The file is created at full length, so what is left out reads back as
/// zeros and stays a hole.
fn sparse_runs(data: &[u8], off: u64) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut run: Option<usize> = None;
    let mut i = 0usize;
    while i < data.len() {
        let end = data.len().min(i + (BLOCK - (off + i as u64) % BLOCK) as usize);
        match (is_zero(&data[i..end]), run) {
            (false, None) => run = Some(i),
            (true, Some(s)) => {
                runs.push((s, i));
                run = None;
            }
            _ => {}
        }
        i = end;
    }
    if let Some(s) = run {
        runs.push((s, data.len()));
    }
    runs
}

/// Open write handles kept between blobs of one file, at most this many:
/// far below any file-descriptor limit, yet enough that a file is opened
/// once, not once per blob.
const MAX_OPEN_FILES: usize = 256;

/// Files at least this large are written with `O_DIRECT`, past the page
/// cache. Copying a gigabyte into the page cache cost more than everything
/// else a restore does on the machines measured (buffered writes ran at a
/// quarter of the disk's direct-write speed), and a restored file is not
/// read back soon. Smaller files stay buffered: for them a synchronous
/// write per block would cost more than the copy.
const DIRECT_MIN: u64 = 1 << 20;

/// The alignment `O_DIRECT` wants of file offsets, lengths and memory:
/// 4 KiB satisfies 512-byte and 4 KiB devices alike.
const BLOCK: u64 = 4096;

/// A file being restored.
struct Target {
    path: PathBuf,
    size: u64,
    damaged: AtomicBool,
    /// Bytes not written yet: the recorded size less every blob written
    /// (or left as a hole).
    remaining: AtomicU64,
    slot: Mutex<Slot>,
}

#[derive(Default)]
struct Slot {
    /// The open handle while blobs are still to come.
    file: Option<std::fs::File>,
    /// `O_DIRECT` only: pieces of blocks that a blob filled in part, by
    /// block number, kept until the blobs holding the rest of the block
    /// arrive (blobs come in pack order, not file order).
    partial: HashMap<u64, Vec<(u64, Vec<u8>)>>,
    created: bool,
    /// Written with `O_DIRECT` (decided when it is created).
    direct: bool,
    /// Opened with `O_DIRECT` at some point, so possibly padded to a whole
    /// block at its end, even if it fell back to buffered writes since.
    was_direct: bool,
}

impl Target {
    /// Writes one blob's bytes at `off`, creating the file (at full length)
    /// on first use and keeping the handle open while there is room.
    fn write_blob(&self, open: &AtomicUsize, data: &[u8], off: u64) -> std::io::Result<()> {
        let mut slot = self.slot.lock().unwrap();
        let opened_now = slot.file.is_none();
        if opened_now {
            let f = self.open_or_create(&mut slot)?;
            slot.file = Some(f);
        }
        let Slot { file, partial, direct, .. } = &mut *slot;
        let file = file.as_ref().expect("opened above");
        let mut r =
            if *direct { write_direct(file, partial, data, off, self.size) } else { write_buffered(file, data, off) };
        if *direct && matches!(&r, Err(e) if e.raw_os_error() == Some(libc::EINVAL)) {
            // A file system that accepted O_DIRECT at open but not these
            // writes: finish the file through the page cache.
            *direct = false;
            r = stop_direct(file, partial).and_then(|()| write_buffered(file, data, off));
        }
        if opened_now && open.fetch_add(1, Ordering::Relaxed) >= MAX_OPEN_FILES {
            open.fetch_sub(1, Ordering::Relaxed);
            slot.file = None;
        }
        r
    }

    fn open_or_create(&self, slot: &mut Slot) -> std::io::Result<std::fs::File> {
        if slot.created {
            let mut o = OpenOptions::new();
            o.write(true);
            if slot.direct {
                o.custom_flags(libc::O_DIRECT);
            }
            return o.open(&self.path);
        }
        slot.created = true;
        let file = OpenOptions::new().write(true).create_new(true).open(&self.path)?;
        file.set_len(self.size)?;
        if self.size < DIRECT_MIN {
            return Ok(file);
        }
        // Created without O_DIRECT (so a file system that refuses it does
        // not leave a file behind a failed create), then reopened with it.
        match OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(&self.path) {
            Ok(f) => {
                (slot.direct, slot.was_direct) = (true, true);
                Ok(f)
            }
            Err(_) => Ok(file),
        }
    }

    /// Closes the handle once the file is complete.
    fn close(&self, open: &AtomicUsize) {
        if self.slot.lock().unwrap().file.take().is_some() {
            open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// A file written with `O_DIRECT` may end in a whole padded block:
    /// cut it back to its size. Decided by `was_direct`, not `direct`: a
    /// file that fell back to buffered writes may have had its padded last
    /// block written before it did.
    fn trim(&self, slot: &Slot) -> std::io::Result<()> {
        if slot.was_direct && self.size % BLOCK != 0 {
            OpenOptions::new().write(true).open(&self.path)?.set_len(self.size)?;
        }
        Ok(())
    }
}

#[cfg(test)]
thread_local! {
    /// Tests only: the `O_DIRECT` write (counting from 1) that the "file
    /// system" refuses with `EINVAL`, as some network and FUSE file systems
    /// refuse `O_DIRECT` writes after accepting the open; 0 for none.
    static REFUSE_DIRECT_AT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn injected_refusal() -> bool {
    #[cfg(test)]
    return REFUSE_DIRECT_AT.with(|c| {
        let n = c.get();
        c.set(n.saturating_sub(1));
        n == 1
    });
    #[cfg(not(test))]
    false
}

/// Switches a file opened with `O_DIRECT` to buffered writes, writing
/// the pieces of blocks still waiting for their neighbours.
fn stop_direct(file: &std::fs::File, partial: &mut HashMap<u64, Vec<(u64, Vec<u8>)>>) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor this function borrows, with plain
    // integer arguments.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    for (_, pieces) in partial.drain() {
        for (at, bytes) in pieces {
            file.write_all_at(&bytes, at)?;
        }
    }
    Ok(())
}

/// Writes `data` at `off` through the page cache, leaving all-zero blocks
/// as holes.
fn write_buffered(file: &std::fs::File, data: &[u8], off: u64) -> std::io::Result<()> {
    sparse_runs(data, off).iter().try_for_each(|&(a, b)| file.write_all_at(&data[a..b], off + a as u64))
}

/// Writes `data` at `off` to a file opened with `O_DIRECT`: the whole blocks
/// it covers at once (all-zero ones left as holes), and the pieces of the
/// blocks it shares with neighbouring blobs once each such block is
/// complete. The last block of the file is written padded with zeros
/// ([`Target::trim`] cuts it back).
fn write_direct(
    file: &std::fs::File,
    partial: &mut HashMap<u64, Vec<(u64, Vec<u8>)>>,
    data: &[u8],
    off: u64,
    size: u64,
) -> std::io::Result<()> {
    let end = off + data.len() as u64;
    let first = off.next_multiple_of(BLOCK).min(end);
    let last = (end / BLOCK * BLOCK).max(first);
    if off < first {
        add_piece(file, partial, off, &data[..(first - off) as usize], size)?;
    }
    if last < end {
        add_piece(file, partial, last, &data[(last - off) as usize..], size)?;
    }
    if first < last {
        let whole = &data[(first - off) as usize..(last - off) as usize];
        for (a, b) in sparse_runs(whole, first) {
            write_aligned(file, &whole[a..b], first + a as u64)?;
        }
    }
    Ok(())
}

/// Adds a piece of one block; writes the block when its pieces fill it.
fn add_piece(
    file: &std::fs::File,
    partial: &mut HashMap<u64, Vec<(u64, Vec<u8>)>>,
    at: u64,
    bytes: &[u8],
    size: u64,
) -> std::io::Result<()> {
    let block = at / BLOCK;
    let start = block * BLOCK;
    let want = BLOCK.min(size - start) as usize;
    let pieces = partial.entry(block).or_default();
    pieces.push((at, bytes.to_vec()));
    let have: usize = pieces.iter().map(|(_, b)| b.len()).sum();
    if have < want {
        return Ok(());
    }
    let pieces = partial.remove(&block).expect("present");
    if have > want {
        return Err(std::io::Error::other(format!("blobs overlap in block {block}")));
    }
    let mut buf = [0u8; BLOCK as usize];
    for (at, bytes) in &pieces {
        let a = (at - start) as usize;
        buf[a..a + bytes.len()].copy_from_slice(bytes);
    }
    if is_zero(&buf) {
        return Ok(());
    }
    let r = write_aligned(file, &buf, start);
    if r.is_err() {
        // Kept for a buffered retry (`stop_direct`): they hold bytes of
        // blobs already counted as written.
        partial.insert(block, pieces);
    }
    r
}

thread_local! {
    /// Memory for `O_DIRECT` writes, which must start on a block boundary.
    static ALIGNED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Writes whole blocks at a block-aligned offset, through an aligned copy.
fn write_aligned(file: &std::fs::File, bytes: &[u8], at: u64) -> std::io::Result<()> {
    const CHUNK: usize = 1 << 20;
    debug_assert!(at % BLOCK == 0 && bytes.len() as u64 % BLOCK == 0);
    ALIGNED.with(|cell| {
        let mut mem = cell.borrow_mut();
        if mem.len() < CHUNK + BLOCK as usize {
            mem.resize(CHUNK + BLOCK as usize, 0);
        }
        let skip = mem.as_ptr().align_offset(BLOCK as usize);
        let buf = &mut mem[skip..skip + CHUNK];
        for (i, piece) in bytes.chunks(CHUNK).enumerate() {
            buf[..piece.len()].copy_from_slice(piece);
            if injected_refusal() {
                return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
            }
            file.write_all_at(&buf[..piece.len()], at + (i * CHUNK) as u64)?;
        }
        Ok(())
    })
}

fn target_of(target: &Path, rel: &Path) -> PathBuf {
    target.join(rel.strip_prefix("/").unwrap_or(rel))
}

/// Restores the tree `root` into `opts.target`.
pub fn restore(
    indexed: &Indexed,
    root: &Id,
    opts: &RestoreOptions,
    progress: &RestoreProgress,
) -> Result<RestoreOutcome> {
    let planner = Planner { indexed, opts };
    let mut plan = planner.walk(root, Path::new("/"))?;
    plan.dirs.sort_by(|a, b| a.rel.cmp(&b.rel));
    plan.files.sort_by(|a, b| a.rel.cmp(&b.rel));
    // Decoding every tree leaves freed memory behind in the allocator's
    // per-thread arenas; hand it back before the data phase grows again.
    arkiv_repo::release_free_memory();
    let mut out = RestoreOutcome::default();
    let total: u64 = plan.files.iter().map(|f| f.node.size).sum();
    progress.total_bytes.store(total, Ordering::Relaxed);

    if opts.dry_run {
        for (items, kind) in
            [(&plan.dirs, NodeKind::Dir), (&plan.files, NodeKind::File), (&plan.symlinks, NodeKind::Symlink)]
        {
            for i in items.iter() {
                let t = target_of(&opts.target, &i.rel);
                if kind != NodeKind::Dir && !opts.overwrite && fs::symlink_metadata(&t).is_ok() {
                    out.skipped_existing.push(t.display().to_string());
                    continue;
                }
                out.planned.push(Planned { path: t.display().to_string(), kind, size: i.node.size });
            }
        }
        out.planned.sort_by(|a, b| a.path.cmp(&b.path));
        out.files = plan.files.len() as u64;
        out.dirs = plan.dirs.len() as u64;
        out.symlinks = plan.symlinks.len() as u64;
        out.bytes = total;
        return Ok(out);
    }

    let io = |p: &Path, e: std::io::Error| Error::Io { path: p.display().to_string(), cause: e };
    fs::create_dir_all(&opts.target).map_err(|e| io(&opts.target, e))?;
    for d in &plan.dirs {
        let t = target_of(&opts.target, &d.rel);
        fs::create_dir_all(&t).map_err(|e| io(&t, e))?;
    }

    // Decide which files are hard links to another restored file. Files
    // are created when their first bytes arrive (or at the end, for files
    // with no data), so each is opened once.
    let mut targets: Vec<Target> = Vec::new();
    let mut file_items: Vec<&Item> = Vec::new();
    let mut link_to: Vec<(PathBuf, usize, &Item)> = Vec::new();
    let mut first_of_inode: HashMap<(u64, u64), usize> = HashMap::new();
    for f in &plan.files {
        let t = target_of(&opts.target, &f.rel);
        if fs::symlink_metadata(&t).is_ok() {
            if !opts.overwrite {
                out.skipped_existing.push(t.display().to_string());
                continue;
            }
            fs::remove_file(&t).map_err(|e| io(&t, e))?;
        }
        if f.node.links > 1 && f.node.inode != 0 {
            if let Some(&first) = first_of_inode.get(&(f.node.device, f.node.inode)) {
                link_to.push((t, first, f));
                continue;
            }
            first_of_inode.insert((f.node.device, f.node.inode), targets.len());
        }
        targets.push(Target {
            path: t,
            size: f.node.size,
            damaged: AtomicBool::new(false),
            remaining: AtomicU64::new(f.node.size),
            slot: Mutex::new(Slot::default()),
        });
        file_items.push(f);
    }

    // blob → every (file, offset) it fills.
    let mut wanted: HashMap<Id, Vec<(usize, u64)>> = HashMap::new();
    let mut missing: Vec<(usize, Id)> = Vec::new();
    // Files whose blobs, by the index, do not add up to their size.
    let mut misfit: Vec<(usize, u64)> = Vec::new();
    for (fi, item) in file_items.iter().enumerate() {
        let mut off = 0u64;
        let mut all_indexed = true;
        for id in &item.node.content {
            match indexed.locate(id) {
                Some(loc) => {
                    wanted.entry(*id).or_default().push((fi, off));
                    off += loc.entry.raw_length as u64;
                }
                None => {
                    missing.push((fi, *id));
                    all_indexed = false;
                }
            }
        }
        if all_indexed && off != item.node.size {
            misfit.push((fi, off));
        }
    }
    let damaged: Mutex<Vec<Damaged>> = Mutex::new(Vec::new());
    let mark = |fi: usize, reason: String| {
        if !targets[fi].damaged.swap(true, Ordering::Relaxed) {
            damaged.lock().unwrap().push(Damaged { path: targets[fi].path.display().to_string(), reason });
        }
    };
    for (fi, id) in missing {
        mark(fi, format!("blob {id} is not in the index"));
    }
    for (fi, sum) in misfit {
        mark(fi, format!("its blobs hold {sum} bytes, the file has {}", file_items[fi].node.size));
    }
    let ids: Vec<Id> = wanted.keys().copied().collect();
    let open_files = AtomicUsize::new(0);
    let storage_error: Mutex<Option<String>> = Mutex::new(None);
    indexed.for_each_blob(&ids, |id, res| {
        let places = &wanted[&id];
        match res {
            Ok(data) => {
                for &(fi, off) in places {
                    if targets[fi].damaged.load(Ordering::Relaxed) {
                        continue;
                    }
                    let t = &targets[fi];
                    // Even an all-zero blob goes through: with O_DIRECT its
                    // edges complete blocks it shares with its neighbours.
                    if let Err(e) = t.write_blob(&open_files, data, off) {
                        mark(fi, format!("write failed: {e}"));
                        t.close(&open_files);
                        continue;
                    }
                    let n = data.len() as u64;
                    let left = t.remaining.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| r.checked_sub(n));
                    match left {
                        Err(_) => {
                            mark(fi, format!("its blobs hold more than its {} bytes", file_items[fi].node.size));
                            t.close(&open_files);
                            continue;
                        }
                        Ok(before) if before == n => t.close(&open_files),
                        Ok(_) => {}
                    }
                    progress.bytes.fetch_add(n, Ordering::Relaxed);
                }
            }
            Err(e) => {
                if matches!(e, arkiv_repo::Error::Backend { .. }) {
                    storage_error.lock().unwrap().get_or_insert_with(|| e.to_string());
                }
                for &(fi, _) in places {
                    mark(fi, e.to_string());
                }
            }
        }
    })?;
    out.storage_error = storage_error.into_inner().unwrap();

    // Files no byte was written to (empty, all holes, or damaged before any
    // data came) still have to exist at their full length.
    for t in &targets {
        t.close(&open_files);
        let mut slot = t.slot.lock().unwrap();
        if !slot.created {
            if let Err(e) = t.open_or_create(&mut slot) {
                return Err(io(&t.path, e));
            }
        }
        if let Err(e) = t.trim(&slot) {
            return Err(io(&t.path, e));
        }
    }

    // Whatever was not written (a blob never delivered) leaves the file
    // incomplete, even though no read failed.
    for (fi, item) in file_items.iter().enumerate() {
        let left = targets[fi].remaining.load(Ordering::Relaxed);
        if left != 0 {
            let size = item.node.size;
            mark(fi, format!("restored {} of {size} bytes", size - left));
        }
    }

    let mut warnings = Vec::new();
    for (fi, item) in file_items.iter().enumerate() {
        let t = &targets[fi];
        if t.damaged.load(Ordering::Relaxed) {
            continue;
        }
        out.files += 1;
        out.bytes += item.node.size;
        progress.files.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = meta::apply(&t.path, &item.node) {
            warnings.push(format!("{}: {e}", t.path.display()));
        }
    }
    for (path, first, item) in link_to {
        let src = &targets[first];
        if src.damaged.load(Ordering::Relaxed) {
            damaged.lock().unwrap().push(Damaged {
                path: path.display().to_string(),
                reason: format!("hard link to damaged {}", src.path.display()),
            });
            continue;
        }
        let link_err = match fs::hard_link(&src.path, &path) {
            Ok(()) => {
                out.hardlinks += 1;
                continue;
            }
            Err(e) => e,
        };
        // A target file system without hard links (or across a mount
        // point) still gets the content: a copy of the restored file.
        match fs::copy(&src.path, &path) {
            Ok(_) => {
                tracing::info!("{}: cannot link to {} ({link_err}); copied it", path.display(), src.path.display());
                out.files += 1;
                out.bytes += item.node.size;
                progress.files.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = meta::apply(&path, &item.node) {
                    warnings.push(format!("{}: {e}", path.display()));
                }
            }
            Err(copy_err) => {
                let reason = format!("cannot link to {} ({link_err}) nor copy it ({copy_err})", src.path.display());
                warnings.push(format!("{}: {reason}", path.display()));
                damaged.lock().unwrap().push(Damaged { path: path.display().to_string(), reason });
            }
        }
    }
    for s in &plan.symlinks {
        let t = target_of(&opts.target, &s.rel);
        if fs::symlink_metadata(&t).is_ok() {
            if !opts.overwrite {
                out.skipped_existing.push(t.display().to_string());
                continue;
            }
            fs::remove_file(&t).map_err(|e| io(&t, e))?;
        }
        let link = s.node.target.as_ref().map(|n| n.as_os().to_owned()).unwrap_or_default();
        std::os::unix::fs::symlink(&link, &t).map_err(|e| io(&t, e))?;
        if let Err(e) = meta::apply(&t, &s.node) {
            warnings.push(format!("{}: {e}", t.display()));
        }
        out.symlinks += 1;
    }
    // Directories last and deepest first: writing into a directory changes
    // its mtime, and a read-only mode would stop the writes.
    for d in plan.dirs.iter().rev() {
        let t = target_of(&opts.target, &d.rel);
        if let Err(e) = meta::apply(&t, &d.node) {
            warnings.push(format!("{}: {e}", t.display()));
        }
        out.dirs += 1;
    }
    let mut damaged = damaged.into_inner().unwrap();
    damaged.sort_by(|a, b| a.path.cmp(&b.path));
    damaged.dedup_by(|a, b| a.path == b.path);
    out.damaged = damaged;
    out.warnings = warnings;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn target(path: PathBuf, size: u64) -> Target {
        Target {
            path,
            size,
            damaged: AtomicBool::new(false),
            remaining: AtomicU64::new(size),
            slot: Mutex::new(Slot::default()),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        /// Blobs of any sizes, arriving in any order, some all zeros, with
        /// the handle dropped between blobs or kept, and direct writes
        /// refused part-way through or not: the file reads back exactly, at
        /// exactly its size, with all-zero blocks left as holes.
        #[test]
        fn blobs_in_any_order_rebuild_the_file_written_directly_or_through_the_cache(
            sizes in proptest::collection::vec((1usize..300_000, any::<bool>()), 1..24),
            order_seed in any::<u64>(),
            keep_open in any::<bool>(),
            refuse_at in prop_oneof![Just(0usize), 1usize..8],
        ) {
            REFUSE_DIRECT_AT.with(|c| c.set(refuse_at));
            let dir = tempfile::tempdir().unwrap();
            let mut content = Vec::new();
            let mut blobs = Vec::new();
            for (i, (len, zero)) in sizes.iter().enumerate() {
                let bytes: Vec<u8> =
                    if *zero { vec![0; *len] } else { (0..*len).map(|j| (i * 31 + j * 7 % 251) as u8 | 1).collect() };
                blobs.push((content.len() as u64, bytes.clone()));
                content.extend(bytes);
            }
            blobs.sort_by_key(|(off, _)| (off.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ order_seed).rotate_left(17));
            let path = dir.path().join("f");
            let t = target(path.clone(), content.len() as u64);
            let open = AtomicUsize::new(if keep_open { 0 } else { MAX_OPEN_FILES });
            for (off, bytes) in &blobs {
                t.write_blob(&open, bytes, *off).unwrap();
            }
            t.close(&open);
            let mut slot = t.slot.lock().unwrap();
            if !slot.created {
                t.open_or_create(&mut slot).unwrap();
            }
            t.trim(&slot).unwrap();
            let refused = REFUSE_DIRECT_AT.with(|c| c.replace(0)) == 0 && refuse_at > 0;
            prop_assert_eq!(slot.direct, content.len() as u64 >= DIRECT_MIN && !refused);
            prop_assert!(slot.partial.is_empty(), "pieces left unwritten");
            let back = fs::read(&path).unwrap();
            prop_assert_eq!(back.len(), content.len());
            prop_assert!(back == content, "content differs");
            // Whole zero blocks were not written: the file holds no more
            // allocated blocks than its non-zero 4 KiB blocks (plus one).
            use std::os::unix::fs::MetadataExt;
            let nonzero = content.chunks(BLOCK as usize).filter(|b| !is_zero(b)).count() as u64;
            prop_assert!(fs::metadata(&path).unwrap().blocks() * 512 <= (nonzero + 1) * BLOCK + 65536);
        }
    }
    use arkiv_repo::{Backend, Credential, InitOptions, KdfParams, Name, Repository, Tree, Writer};

    #[test]
    fn a_file_whose_blobs_do_not_add_up_to_its_size_is_reported_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let opts =
            InitOptions { kdf: KdfParams { memory_kib: 1024, iterations: 1, parallelism: 1 }, ..Default::default() };
        let repo =
            Repository::init(Backend::local(&dir.path().join("repo")).unwrap(), &Credential::password("pw"), opts)
                .expect("init");
        let indexed = repo.clone().index().unwrap();
        let writer = Writer::new(&indexed);
        let mut short = Node::new(Name::from("short"), NodeKind::File);
        short.mode = 0o644;
        short.content = writer.save_bytes(b"five!").unwrap();
        short.size = 4096; // the record says more than the blobs hold
        let mut whole = Node::new(Name::from("whole"), NodeKind::File);
        whole.mode = 0o644;
        whole.content = writer.save_bytes(b"intact").unwrap();
        whole.size = 6;
        let root = writer.save_tree(&Tree { nodes: vec![short, whole] }).unwrap();
        writer.finish().unwrap();

        let indexed = repo.index().unwrap();
        let target = dir.path().join("out");
        let opts = RestoreOptions { target: target.clone(), ..Default::default() };
        let out = restore(&indexed, &root, &opts, &RestoreProgress::default()).unwrap();
        assert_eq!(out.damaged.len(), 1, "{:?}", out.damaged);
        assert_eq!(out.damaged[0].path, target.join("short").display().to_string());
        assert!(out.damaged[0].reason.contains("4096"), "{}", out.damaged[0].reason);
        assert_eq!(out.files, 1);
        assert_eq!(fs::read(target.join("whole")).unwrap(), b"intact");
    }
}
