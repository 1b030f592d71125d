//! Helpers shared by the integration tests: a scratch repository driven
//! through the real `arkiv` binary, seeded random data, and tree
//! comparisons.
//!
//! Every test gets its own temporary directory holding the repository, the
//! source data and the restore targets, so tests run in parallel without
//! seeing each other.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

pub mod ftp;
pub mod garage;
pub mod sftp;
pub mod webdav;

pub const PASSWORD: &str = "correct horse battery staple";

/// The binary under test.
pub fn arkiv_bin() -> &'static str {
    env!("CARGO_BIN_EXE_arkiv")
}

/// A command for the binary with a clean environment: no ARKIV_* or
/// RUST_LOG leaking in from the caller's shell.
pub fn bare_command() -> Command {
    let mut c = Command::new(arkiv_bin());
    for v in [
        "ARKIV_REPO",
        "ARKIV_PASSWORD",
        "ARKIV_PASSWORD_FILE",
        "ARKIV_KEY_FILE",
        "ARKIV_NEW_PASSWORD",
        "ARKIV_DATA_REPO",
        "ARKIV_FAULTS",
        "ARKIV_TIMEOUT",
        "ARKIV_RETRIES",
        "ARKIV_CONNECTIONS",
        "ARKIV_CACHE_DIR",
        "ARKIV_FROM_PASSWORD_FILE",
        "ARKIV_FROM_KEY_FILE",
        "ARKIV_TO_PASSWORD_FILE",
        "ARKIV_TO_KEY_FILE",
        "RUST_LOG",
        "RUST_BACKTRACE",
    ] {
        c.env_remove(v);
    }
    c.stdin(Stdio::null());
    c
}

/// Small, fast key derivation so tests do not spend their time in Argon2.
pub const FAST_KDF: [&str; 4] = ["--argon2-memory-kib", "1024", "--argon2-iterations", "1"];

/// A scratch area: a temporary directory with a repository in `repo/`.
pub struct Scratch {
    pub dir: tempfile::TempDir,
    pub repo: PathBuf,
    pub password: String,
}

impl Scratch {
    /// A scratch area with an initialised repository.
    pub fn new() -> Scratch {
        let s = Scratch::uninitialised();
        let mut args: Vec<&str> = vec!["init"];
        args.extend(FAST_KDF);
        s.ok(&args);
        s
    }

    /// A scratch area whose `repo/` does not exist yet.
    pub fn uninitialised() -> Scratch {
        let dir = tempfile::Builder::new().prefix("arkiv-it-").tempdir().expect("temporary directory");
        let repo = dir.path().join("repo");
        Scratch { dir, repo, password: PASSWORD.to_string() }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside the scratch directory.
    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(p)
    }

    /// A command with the repository and password set.
    pub fn cmd<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        let mut c = bare_command();
        c.env("ARKIV_REPO", &self.repo).env("ARKIV_PASSWORD", &self.password).args(args);
        c
    }

    /// Runs the binary; returns whatever happened.
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        run(self.cmd(args))
    }

    /// Runs the binary and insists on exit code 0.
    pub fn ok<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        let out = self.run(args);
        assert_code(&out, 0, &describe(args));
        out
    }

    /// Runs the binary with `--json` and parses standard output; insists on
    /// exit code 0.
    pub fn json<S: AsRef<OsStr>>(&self, args: &[S]) -> Value {
        let mut a: Vec<OsString> = vec!["--json".into()];
        a.extend(args.iter().map(|s| s.as_ref().to_owned()));
        let out = self.ok(&a);
        parse_json(&out)
    }

    /// Backs up `paths` (plus any extra flags) and returns the snapshot id.
    pub fn backup<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let mut a: Vec<OsString> = vec!["backup".into()];
        a.extend(args.iter().map(|s| s.as_ref().to_owned()));
        let v = self.json(&a);
        v["id"].as_str().unwrap_or_else(|| panic!("backup printed no snapshot id: {v}")).to_string()
    }

    /// `backup --json`, returning the whole report.
    pub fn backup_json<S: AsRef<OsStr>>(&self, args: &[S]) -> Value {
        let mut a: Vec<OsString> = vec!["backup".into()];
        a.extend(args.iter().map(|s| s.as_ref().to_owned()));
        self.json(&a)
    }

    /// Restores `snapshot` into a new directory `name` under the scratch
    /// area; returns that directory.
    pub fn restore(&self, snapshot: &str, name: &str) -> PathBuf {
        let target = self.join(name);
        self.ok(&[OsStr::new("restore"), OsStr::new(snapshot), OsStr::new("--target"), target.as_os_str()]);
        target
    }

    /// Every snapshot as `snapshots --json` prints it, oldest first.
    pub fn snapshots(&self) -> Vec<Value> {
        self.json(&["snapshots"]).as_array().expect("snapshots --json prints an array").clone()
    }

    /// Pack files under `repo/data/*/`, with their sizes.
    pub fn packs(&self) -> Vec<(PathBuf, u64)> {
        let mut out = Vec::new();
        let data = self.repo.join("data");
        for d in fs::read_dir(&data).expect("repo/data exists") {
            let d = d.unwrap().path();
            if !d.is_dir() {
                continue;
            }
            for f in fs::read_dir(&d).unwrap() {
                let f = f.unwrap();
                out.push((f.path(), f.metadata().unwrap().len()));
            }
        }
        out.sort();
        out
    }
}

pub fn run(mut c: Command) -> Output {
    c.output().unwrap_or_else(|e| panic!("cannot run {}: {e}", arkiv_bin()))
}

pub fn describe<S: AsRef<OsStr>>(args: &[S]) -> String {
    args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the exit code, showing both streams when it differs.
pub fn assert_code(o: &Output, code: i32, what: &str) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "`arkiv {what}` exited with {:?}, expected {code}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

pub fn parse_json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!("stdout is not JSON ({e})\n--- stdout ---\n{}\n--- stderr ---\n{}", stdout(o), stderr(o))
    })
}

// ---- data ----

/// SplitMix64: a tiny seeded generator, so every run sees the same data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}

/// `n` random (incompressible) bytes from `seed`.
pub fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    Rng::new(seed).bytes(n)
}

pub fn write_file(path: impl AsRef<Path>, data: &[u8]) {
    let path = path.as_ref();
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap();
    }
    let mut f = fs::File::create(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.write_all(data).unwrap();
}

/// Writes `count` random files of `size` bytes named `f000`.. into `dir`.
pub fn random_files(dir: &Path, seed: u64, count: usize, size: usize) {
    fs::create_dir_all(dir).unwrap();
    for i in 0..count {
        write_file(dir.join(format!("f{i:03}")), &random_bytes(seed.wrapping_mul(1000).wrapping_add(i as u64), size));
    }
}

/// Where restoring a snapshot of the absolute path `src` into `target`
/// puts it (snapshots keep absolute paths).
pub fn restored(target: &Path, src: &Path) -> PathBuf {
    target.join(src.strip_prefix("/").expect("absolute source path"))
}

// ---- comparing trees ----

#[derive(Debug, PartialEq, Eq)]
pub enum Entry {
    Dir,
    File(Vec<u8>),
    Symlink(PathBuf),
    Other,
}

/// Every entry below `root` (relative path → kind and content).
pub fn tree_of(root: &Path) -> BTreeMap<PathBuf, Entry> {
    fn go(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Entry>) {
        let mut entries: Vec<_> =
            fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).map(|e| e.unwrap().path()).collect();
        entries.sort();
        for p in entries {
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let md = fs::symlink_metadata(&p).unwrap();
            let ft = md.file_type();
            if ft.is_dir() {
                out.insert(rel, Entry::Dir);
                go(root, &p, out);
            } else if ft.is_file() {
                out.insert(rel, Entry::File(fs::read(&p).unwrap()));
            } else if ft.is_symlink() {
                out.insert(rel, Entry::Symlink(fs::read_link(&p).unwrap()));
            } else {
                out.insert(rel, Entry::Other);
            }
        }
    }
    let mut out = BTreeMap::new();
    go(root, root, &mut out);
    out
}

/// Asserts two directory trees hold the same names, kinds, bytes and link
/// targets; names the first difference.
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    let (a, b) = (tree_of(expected), tree_of(actual));
    let names_a: Vec<_> = a.keys().collect();
    let names_b: Vec<_> = b.keys().collect();
    assert_eq!(names_a, names_b, "{} and {} hold different entries", expected.display(), actual.display());
    for (k, va) in &a {
        let vb = &b[k];
        if va != vb {
            let show = |e: &Entry| match e {
                Entry::File(d) => format!("file of {} bytes", d.len()),
                other => format!("{other:?}"),
            };
            panic!("{} differs: expected {}, restored {}", k.display(), show(va), show(vb));
        }
    }
}

/// A listing of every file and directory below `root` with size, mode and
/// mtime: compared before and after an operation that must change nothing.
pub fn listing(root: &Path) -> BTreeMap<PathBuf, (bool, u64, u32, i64, i64)> {
    fn go(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, (bool, u64, u32, i64, i64)>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let md = fs::symlink_metadata(&p).unwrap();
            out.insert(
                p.strip_prefix(root).unwrap().to_path_buf(),
                (md.is_dir(), if md.is_dir() { 0 } else { md.len() }, md.mode(), md.mtime(), md.mtime_nsec()),
            );
            if md.is_dir() {
                go(root, &p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    let md = fs::symlink_metadata(root).unwrap();
    out.insert(PathBuf::from("."), (true, 0, md.mode(), md.mtime(), md.mtime_nsec()));
    go(root, root, &mut out);
    out
}

/// Whether something special (a socket, a fifo) sits at `p`.
pub fn is_special(p: &Path) -> bool {
    let ft = fs::symlink_metadata(p).unwrap().file_type();
    ft.is_socket() || ft.is_fifo()
}

/// Waits for a spawned child and collects its output.
pub fn finish(child: Child) -> Output {
    child.wait_with_output().expect("child finishes")
}

/// The hex ids of every entry of `dir` (snapshots, index files, keys).
pub fn object_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// Copies the files and directories below `from` into `to`.
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            fs::copy(e.path(), &target).unwrap();
        }
    }
}
