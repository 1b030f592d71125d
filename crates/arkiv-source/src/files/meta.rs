//! File metadata: read from `lstat` into a [`Node`] on backup, put back on
//! restore (owner, mode, xattrs, times — in the order that keeps each step
//! from undoing the previous one).

use std::ffi::CString;
use std::fs::Metadata;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use arkiv_repo::{Name, Node, NodeKind, Xattr};
use filetime::FileTime;

pub fn ns(sec: i64, nsec: i64) -> i64 {
    sec.saturating_mul(1_000_000_000).saturating_add(nsec)
}

/// A node carrying everything `lstat` says that Arkiv keeps.
pub fn node_from_metadata(name: Name, kind: NodeKind, md: &Metadata) -> Node {
    let mut n = Node::new(name, kind);
    n.mode = md.mode() & 0o7777;
    n.uid = md.uid();
    n.gid = md.gid();
    n.mtime_ns = ns(md.mtime(), md.mtime_nsec());
    n.ctime_ns = ns(md.ctime(), md.ctime_nsec());
    n.inode = md.ino();
    n.device = md.dev();
    if kind == NodeKind::File {
        n.size = md.len();
        n.links = md.nlink();
    }
    n
}

/// Extended attributes of `path` itself (not a symlink's target). A file
/// system without xattr support simply has none.
pub fn read_xattrs(path: &Path) -> io::Result<Vec<Xattr>> {
    let names = match xattr::list(path) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in names {
        if let Some(v) = xattr::get(path, &name)? {
            out.push(Xattr::new(Name::from_os(&name), &v));
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))
}

pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Restores owner, permissions, xattrs and times on `path`. Ownership only
/// as root (an unprivileged restore keeps the restoring user's). Errors say
/// which step failed.
pub fn apply(path: &Path, node: &Node) -> io::Result<()> {
    let c = cpath(path)?;
    if running_as_root() {
        // SAFETY: c is a valid NUL-terminated path.
        if unsafe { libc::lchown(c.as_ptr(), node.uid, node.gid) } != 0 {
            return Err(with_ctx(io::Error::last_os_error(), "chown"));
        }
    }
    if node.kind != NodeKind::Symlink {
        // chmod after chown: chown clears setuid/setgid bits.
        // SAFETY: as above.
        if unsafe { libc::chmod(c.as_ptr(), node.mode as libc::mode_t) } != 0 {
            return Err(with_ctx(io::Error::last_os_error(), "chmod"));
        }
    }
    for x in &node.xattrs {
        if let Err(e) = xattr::set(path, x.name.as_os(), &x.value_bytes()) {
            // Not every target file system takes every namespace (e.g.
            // `security.*` without privileges); the data still restores.
            tracing::warn!("{}: cannot set xattr {}: {e}", path.display(), x.name.lossy());
        }
    }
    let t = FileTime::from_unix_time(
        node.mtime_ns.div_euclid(1_000_000_000),
        node.mtime_ns.rem_euclid(1_000_000_000) as u32,
    );
    filetime::set_symlink_file_times(path, t, t).map_err(|e| with_ctx(e, "set times"))
}

fn with_ctx(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}
