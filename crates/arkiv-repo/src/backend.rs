//! Storage backends: the engine speaks only to an OpenDAL operator, so a
//! local directory and an object store behave the same.
//!
//! The engine is synchronous (CPU-bound work runs on rayon), OpenDAL is
//! async; this module owns the bridge: one shared tokio runtime on which every
//! storage call is driven to completion.

use std::sync::OnceLock;

use opendal::{ErrorKind, Operator};

use crate::error::{Error, Result};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("arkiv-io")
            .enable_all()
            .build()
            .expect("the IO runtime starts")
    })
}

/// Runs a future to completion on the IO runtime. Callers may be plain
/// threads or rayon workers; from inside another tokio runtime use
/// `spawn_blocking` first.
pub(crate) fn block_on<F: std::future::Future>(f: F) -> F::Output {
    runtime().block_on(f)
}

/// Kinds of stored object, each in its own directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Config,
    Key,
    Snapshot,
    Index,
    Pack,
}

impl FileKind {
    pub fn dir(self) -> &'static str {
        match self {
            FileKind::Config => "",
            FileKind::Key => "keys/",
            FileKind::Snapshot => "snapshots/",
            FileKind::Index => "index/",
            FileKind::Pack => "data/",
        }
    }

    /// Path of object `name` of this kind. Packs fan out over 256
    /// directories by the first two hex digits, as restic does, so no local
    /// directory holds millions of entries.
    pub fn path(self, name: &str) -> String {
        match self {
            FileKind::Config => "config".to_string(),
            FileKind::Pack => format!("data/{}/{}", &name[..2.min(name.len())], name),
            _ => format!("{}{}", self.dir(), name),
        }
    }
}

/// A repository's storage location.
#[derive(Clone)]
pub struct Backend {
    op: Operator,
    location: String,
    /// The directory of a local repository (for housekeeping of `tmp/`).
    local_root: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Backend({})", self.location)
    }
}

fn io_err(op: &'static str, path: &str, location: &str, e: opendal::Error) -> Error {
    if e.kind() == ErrorKind::NotFound {
        return Error::NotFound { what: format!("{location}/{path}") };
    }
    Error::Backend { op, path: format!("{location}/{path}"), message: e.to_string() }
}

impl Backend {
    /// A repository in a local directory.
    pub fn local(path: &std::path::Path) -> Result<Backend> {
        let abs = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir().map_err(|e| Error::Io { path: path.display().to_string(), source: e })?.join(path)
        };
        let root = abs.to_string_lossy().to_string();
        // Writes go to a temporary file in `tmp/` and are renamed into place,
        // so a killed process never leaves a truncated object under its
        // final, content-derived name.
        let builder = opendal::services::Fs::default().root(&root).atomic_write_dir(&format!("{root}/tmp"));
        let op = Operator::new(builder).map_err(|e| Error::Backend {
            op: "open",
            path: root.clone(),
            message: e.to_string(),
        })?;
        Ok(Backend { op, location: root, local_root: Some(abs) })
    }

    /// Any OpenDAL operator; `location` is how errors and listings name it.
    pub fn from_operator(op: Operator, location: impl Into<String>) -> Backend {
        Backend { op, location: location.into(), local_root: None }
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    pub fn operator(&self) -> &Operator {
        &self.op
    }

    /// Reads a whole object. `Bytes`, not `Vec`: OpenDAL's buffer is handed
    /// over without a copy, so reading a 16 MiB pack holds 16 MiB, not 32.
    pub fn read(&self, kind: FileKind, name: &str) -> Result<bytes::Bytes> {
        let path = kind.path(name);
        block_on(self.op.read(&path)).map(|b| b.to_bytes()).map_err(|e| io_err("read", &path, &self.location, e))
    }

    pub fn read_range(&self, kind: FileKind, name: &str, offset: u64, len: u64) -> Result<bytes::Bytes> {
        let path = kind.path(name);
        block_on(async { self.op.read_with(&path).range(offset..offset + len).await })
            .map(|b| b.to_bytes())
            .map_err(|e| io_err("read", &path, &self.location, e))
    }

    pub fn write(&self, kind: FileKind, name: &str, data: Vec<u8>) -> Result<()> {
        let path = kind.path(name);
        // Not `Operator::write`: it leaves the temporary file of a failed
        // write behind, so a full disk would stay full. Abort removes it.
        block_on(async {
            let mut w = self.op.writer(&path).await?;
            let r = match w.write(data).await {
                Ok(()) => w.close().await.map(|_| ()),
                Err(e) => Err(e),
            };
            if r.is_err() {
                let _ = w.abort().await;
            }
            r
        })
        .map_err(|e| io_err("write", &path, &self.location, e))?;
        self.sync_parent(kind, &path)
    }

    /// OpenDAL's local writer syncs the file before renaming it into place,
    /// but a rename is durable only once its directory is synced: without
    /// this, a snapshot reported as saved could vanish in a power cut, or
    /// outlive the pack it names. Object stores need nothing of the kind.
    fn sync_parent(&self, kind: FileKind, path: &str) -> Result<()> {
        let Some(root) = &self.local_root else { return Ok(()) };
        let full = root.join(path);
        let mut dirs = vec![full.parent().map(|p| p.to_path_buf()).unwrap_or_else(|| root.clone())];
        if kind == FileKind::Pack {
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
    /// many were removed; other backends have no temporary files.
    pub fn remove_stale_temp(&self, age: std::time::Duration) -> usize {
        let Some(root) = &self.local_root else { return 0 };
        let Ok(entries) = std::fs::read_dir(root.join("tmp")) else { return 0 };
        let mut removed = 0;
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
        removed
    }

    pub fn exists(&self, kind: FileKind, name: &str) -> Result<bool> {
        let path = kind.path(name);
        block_on(self.op.exists(&path)).map_err(|e| io_err("stat", &path, &self.location, e))
    }

    pub fn size(&self, kind: FileKind, name: &str) -> Result<u64> {
        let path = kind.path(name);
        block_on(self.op.stat(&path)).map(|m| m.content_length()).map_err(|e| io_err("stat", &path, &self.location, e))
    }

    pub fn delete(&self, kind: FileKind, name: &str) -> Result<()> {
        let path = kind.path(name);
        block_on(self.op.delete(&path)).map_err(|e| io_err("delete", &path, &self.location, e))
    }

    /// Names (not paths) and sizes of every object of `kind`.
    pub fn list(&self, kind: FileKind) -> Result<Vec<(String, u64)>> {
        let dir = kind.dir();
        let entries = block_on(async { self.op.list_with(dir).recursive(true).await })
            .map_err(|e| io_err("list", dir, &self.location, e))?;
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            if e.metadata().is_dir() {
                continue;
            }
            let name = e.name().to_string();
            // Only content-named objects count: a stray file is not ours.
            if name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                let size = e.metadata().content_length();
                out.push((name, size));
            }
        }
        Ok(out)
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
