//! Arkiv on real remote storage: a single-node Garage S3 server, an
//! OpenSSH SFTP server, an rclone WebDAV server and a pyftpdlib FTP server,
//! each started by the test that uses it (common/garage.rs, common/sftp.rs,
//! common/webdav.rs, common/ftp.rs) and driven through the real binary.
//!
//! What must hold on remote storage as on a local disk: round trips are
//! exact, unchanged data is not uploaded again, the metadata cache is
//! verified before use, metadata and file data can live apart (and metadata
//! work never needs the data location), a flaky store is retried, an
//! interrupted backup resumes, and every failure is one clear line that
//! names the location and never the secret.

mod common;

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::ftp::FtpServer;
use common::garage::{Garage, AWS_NOISE};
use common::sftp::SshServer;
use common::webdav::WebDavServer;
use common::*;
use serde_json::Value;

/// Credentials of the caller's environment that must not reach the binary
/// in the WebDAV and FTP tests: each test says which it sets.
const FILE_SERVER_NOISE: [&str; 3] = ["ARKIV_WEBDAV_USER", "ARKIV_WEBDAV_PASSWORD", "ARKIV_FTP_PASSWORD"];

/// No command of these tests may take longer than this; a hang fails the
/// test instead of blocking the run.
const LIMIT: Duration = Duration::from_secs(120);

const MIB: usize = 1 << 20;

/// Runs `c` with a deadline; returns its output and how long it took.
fn run_timed(mut c: Command, limit: Duration) -> (Output, Duration) {
    c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = c.spawn().unwrap_or_else(|e| panic!("cannot run {}: {e}", arkiv_bin()));
    wait_timed(child, limit, &format!("{c:?}"))
}

/// Waits for a child started with piped output, killing it (and failing
/// the test) if it runs past `limit`.
fn wait_timed(mut child: Child, limit: Duration, what: &str) -> (Output, Duration) {
    let start = Instant::now();
    let mut so = child.stdout.take().expect("stdout is piped");
    let mut se = child.stderr.take().expect("stderr is piped");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let err = String::from_utf8_lossy(&err_t.join().unwrap()).into_owned();
            panic!("{what} did not finish within {limit:?}\n--- stderr ---\n{err}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = start.elapsed();
    (Output { status, stdout: out_t.join().unwrap(), stderr: err_t.join().unwrap() }, elapsed)
}

/// A repository at a remote location, with a scratch directory of its own
/// for sources, restore targets and the metadata cache.
struct Remote {
    dir: tempfile::TempDir,
    repo: String,
    data_repo: Option<String>,
    env: Vec<(String, String)>,
    unset: Vec<&'static str>,
    /// Pass the cache directory as `--cache-dir` (else as ARKIV_CACHE_DIR).
    cache_flag: bool,
}

impl Remote {
    fn new(repo: impl Into<String>) -> Remote {
        Remote {
            dir: tempfile::Builder::new().prefix("arkiv-remote-").tempdir().unwrap(),
            repo: repo.into(),
            data_repo: None,
            env: Vec::new(),
            unset: Vec::new(),
            cache_flag: false,
        }
    }

    /// A repository at `prefix` of `g`'s bucket.
    fn s3(g: &Garage, prefix: &str) -> Remote {
        let mut r = Remote::new(g.url(prefix));
        r.unset.extend(AWS_NOISE);
        r.with_env(g.env())
    }

    fn sftp(server: &SshServer, path: &Path) -> Remote {
        Remote::new(server.url(path)).with_env(server.env())
    }

    /// A repository at `path` of `server`, with its user and password.
    fn webdav(server: &WebDavServer, path: &str) -> Remote {
        let mut r = Remote::new(server.url(path));
        r.unset.extend(FILE_SERVER_NOISE);
        r.with_env(server.env())
    }

    /// A repository at `path` of `server`, with its user (in the URL) and
    /// password.
    fn ftp(server: &FtpServer, path: &str) -> Remote {
        let mut r = Remote::new(server.url(path));
        r.unset.extend(FILE_SERVER_NOISE);
        r.with_env(server.env())
    }

    fn with_env<K: Into<String>>(mut self, pairs: impl IntoIterator<Item = (K, String)>) -> Remote {
        self.env.extend(pairs.into_iter().map(|(k, v)| (k.into(), v)));
        self
    }

    fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(p)
    }

    fn cache(&self) -> PathBuf {
        self.join("cache")
    }

    fn cmd<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        let mut c = bare_command();
        for v in &self.unset {
            c.env_remove(v);
        }
        c.env("ARKIV_REPO", &self.repo).env("ARKIV_PASSWORD", PASSWORD);
        if let Some(d) = &self.data_repo {
            c.env("ARKIV_DATA_REPO", d);
        }
        if self.cache_flag {
            c.arg("--cache-dir").arg(self.cache());
        } else {
            c.env("ARKIV_CACHE_DIR", self.cache());
        }
        c.envs(self.env.iter().map(|(k, v)| (k, v))).args(args);
        c
    }

    fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        run_timed(self.cmd(args), LIMIT).0
    }

    fn ok<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        let out = self.run(args);
        assert_code(&out, 0, &describe(args));
        out
    }

    fn json<S: AsRef<OsStr>>(&self, args: &[S]) -> Value {
        let mut a: Vec<OsString> = vec!["--json".into()];
        a.extend(args.iter().map(|s| s.as_ref().to_owned()));
        parse_json(&self.ok(&a))
    }

    fn init(&self, extra: &[&str]) {
        let mut args: Vec<&str> = vec!["init"];
        args.extend(FAST_KDF);
        args.extend(extra);
        self.ok(&args);
    }

    /// `backup --json PATH`; returns the report.
    fn backup(&self, src: &Path) -> Value {
        self.json(&[OsStr::new("backup"), src.as_os_str()])
    }

    fn snapshots(&self) -> Vec<Value> {
        self.json(&["snapshots"]).as_array().expect("snapshots --json prints an array").clone()
    }

    fn restore(&self, snapshot: &str, name: &str) -> PathBuf {
        let target = self.join(name);
        self.ok(&[OsStr::new("restore"), OsStr::new(snapshot), OsStr::new("--target"), target.as_os_str()]);
        target
    }

    /// `check --read-data --json`: insists on no errors and every pack read.
    fn check_read_data(&self) -> Value {
        let report = self.json(&["check", "--read-data"]);
        assert_eq!(report["errors"], Value::Array(vec![]), "check --read-data found errors: {report}");
        assert_eq!(report["packs_read"], report["packs"], "check --read-data did not read every pack: {report}");
        report
    }
}

fn summary(report: &Value) -> &Value {
    &report["snapshot"]["summary"]
}

fn num(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no number '{key}' in {v}"))
}

/// Sources of `total` bytes: a few large files and many small ones, one
/// text file, one symlink.
fn mixed_source(dir: &Path, seed: u64, large: usize, large_size: usize, small: usize, small_size: usize) {
    random_files(&dir.join("large"), seed, large, large_size);
    random_files(&dir.join("small"), seed + 1, small, small_size);
    write_file(dir.join("notes.txt"), b"remote storage round trip\n");
    std::os::unix::fs::symlink("notes.txt", dir.join("link")).unwrap();
}

/// The one `arkiv: error:` line of a failed command, after insisting that
/// it exited 1, printed nothing else (but the ARKIV_FAULTS warning), no
/// response body, and named `location`.
fn one_line_error(out: &Output, what: &str, location: &str) -> String {
    assert_code(out, 1, what);
    let err = stderr(out);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty() && !l.contains("ARKIV_FAULTS is set")).collect();
    assert_eq!(lines.len(), 1, "`{what}` should print one line on standard error, printed:\n{err}");
    let line = lines[0];
    assert!(line.starts_with("arkiv: error: "), "`{what}`: {line}");
    assert!(line.contains(location), "`{what}` does not name {location}: {line}");
    for junk in ["<?xml", "<Error>", "RequestId", "Backtrace", "panicked"] {
        assert!(!line.contains(junk), "`{what}` prints {junk}: {line}");
    }
    assert!(out.stdout.is_empty(), "`{what}` printed on standard output: {}", stdout(out));
    line.to_string()
}

/// The location as messages show it: no query.
fn shown(url: &str) -> &str {
    url.split('?').next().unwrap()
}

fn names(objects: &BTreeSet<String>) -> BTreeSet<String> {
    objects.iter().map(|o| o.rsplit('/').next().unwrap().to_string()).collect()
}

/// The blob types in a pack, as `cat pack` lists them.
fn blob_types(r: &Remote, pack: &str) -> BTreeSet<String> {
    let v = r.json(&["cat", "pack", pack]);
    v["blobs"].as_array().unwrap().iter().map(|b| b["type"].as_str().unwrap().to_string()).collect()
}

/// A backup of unchanged files: nothing read, at most a few trees stored.
fn assert_no_file_data_stored(s: &Value) {
    assert_eq!(num(s, "bytes_read"), 0, "unchanged files were read again: {s}");
    assert!(num(s, "bytes_stored") < 16 << 10, "unchanged data was uploaded again: {s}");
}

fn files_in(dir: &Path) -> BTreeSet<String> {
    match fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => BTreeSet::new(),
    }
}

/// The objects of a repository kept in the directory `repo_dir` (on a
/// server's disk), as `kind/name` and `data/XX/name`; packs must sit in the
/// fan-out directory of their name.
fn stored_objects(repo_dir: &Path) -> Vec<String> {
    let mut objects = Vec::new();
    for kind in ["keys", "snapshots", "index"] {
        for n in files_in(&repo_dir.join(kind)) {
            objects.push(format!("{kind}/{n}"));
        }
    }
    for fan in files_in(&repo_dir.join("data")) {
        for n in files_in(&repo_dir.join("data").join(&fan)) {
            assert!(n.starts_with(&fan), "pack {n} in data/{fan}");
            objects.push(format!("data/{fan}/{n}"));
        }
    }
    objects
}

fn is_object_name(n: &str) -> bool {
    n.len() == 64 && n.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

// ---- S3 ----

#[test]
fn s3_round_trip_uploads_unchanged_data_once_and_verifies_its_metadata_cache() {
    let g = Garage::start();
    let mut r = Remote::s3(&g, "roundtrip");
    r.cache_flag = true;
    r.init(&[]);
    let after_init = g.objects("roundtrip");
    assert!(after_init.contains("config"), "{after_init:?}");
    assert_eq!(after_init.iter().filter(|o| o.starts_with("keys/")).count(), 1, "{after_init:?}");
    assert_eq!(after_init.len(), 2, "init wrote more than config and one key slot: {after_init:?}");

    let src = r.join("src");
    mixed_source(&src, 11, 3, 1_200_000, 40, 20_000);
    let first = r.backup(&src);
    let id = first["id"].as_str().unwrap().to_string();
    let s = summary(&first);
    assert_eq!(num(s, "files_new"), 44, "{s}"); // the symlink is not a file
    assert!(num(s, "bytes_stored") > 4_000_000, "{s}");
    let objects = g.objects("roundtrip");
    for dir in ["data/", "index/", "snapshots/"] {
        assert!(objects.iter().any(|o| o.starts_with(dir)), "nothing under {dir} after a backup: {objects:?}");
    }
    assert!(objects.iter().all(|o| o == "config" || is_object_name(o.rsplit('/').next().unwrap())), "{objects:?}");
    let snaps = r.snapshots();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0]["id"].as_str(), Some(id.as_str()));

    // Unchanged data: nothing read, no file data uploaded. (The trees of
    // the source's parent directories, whose times other tests change, may
    // be stored again: a few hundred bytes in a tree pack.)
    let second = r.backup(&src);
    let s = summary(&second);
    assert_eq!((num(s, "files_new"), num(s, "files_changed"), num(s, "files_unmodified")), (0, 0, 44), "{s}");
    assert_no_file_data_stored(s);
    let after = g.objects("roundtrip");
    let kind = |set: &BTreeSet<String>, dir: &str| -> BTreeSet<String> {
        set.iter().filter(|o| o.starts_with(dir)).cloned().collect()
    };
    let new_packs: BTreeSet<String> = kind(&after, "data/").difference(&kind(&objects, "data/")).cloned().collect();
    for p in names(&new_packs) {
        assert_eq!(blob_types(&r, &p), ["tree".to_string()].into(), "the second backup uploaded file data in {p}");
    }
    assert_eq!(kind(&after, "snapshots/").len(), 2);

    let target = r.restore(&id, "restored");
    assert_same_tree(&src, &restored(&target, &src));
    r.check_read_data();

    // The cache holds exactly the repository's index files and snapshots.
    let caches = files_in(&r.cache());
    assert_eq!(caches.len(), 1, "one cache directory per repository: {caches:?}");
    let cache = r.cache().join(caches.iter().next().unwrap());
    assert_eq!(files_in(&cache.join("index")), names(&kind(&after, "index/")));
    assert_eq!(files_in(&cache.join("snapshots")), names(&kind(&after, "snapshots/")));

    // Damage a cached index file and a cached snapshot, and leave a cached
    // snapshot the repository does not have: each is noticed, the real one
    // is fetched again, and the commands still work.
    let index_name = files_in(&cache.join("index")).into_iter().next().unwrap();
    let snap_name = files_in(&cache.join("snapshots")).into_iter().next().unwrap();
    let index_file = cache.join("index").join(&index_name);
    let snap_file = cache.join("snapshots").join(&snap_name);
    let (index_bytes, snap_bytes) = (fs::read(&index_file).unwrap(), fs::read(&snap_file).unwrap());
    fs::write(&index_file, b"garbage, not an index file").unwrap();
    fs::write(&snap_file, &snap_bytes[..snap_bytes.len() / 2]).unwrap();
    let stale = cache.join("snapshots").join("0".repeat(64));
    fs::write(&stale, b"a snapshot that was forgotten").unwrap();

    let out = r.ok(&["--json", "snapshots"]);
    assert_eq!(parse_json(&out).as_array().unwrap().len(), 2, "{}", stdout(&out));
    let mut warnings = stderr(&out);
    let target = r.join("restored-again");
    let out = r.ok(&[OsStr::new("restore"), OsStr::new("latest"), OsStr::new("--target"), target.as_os_str()]);
    warnings.push_str(&stderr(&out));
    assert_same_tree(&src, &restored(&target, &src));
    assert!(
        warnings.matches("does not match its name; fetching it again").count() >= 2,
        "damaged cache files were not reported:\n{warnings}"
    );
    assert_eq!(fs::read(&index_file).unwrap(), index_bytes, "the damaged cached index file was not fetched again");
    assert_eq!(fs::read(&snap_file).unwrap(), snap_bytes, "the damaged cached snapshot was not fetched again");
    assert!(!stale.exists(), "a cached snapshot the repository does not hold was kept");
    r.check_read_data();
}

#[test]
fn hot_metadata_and_cold_data_live_apart_and_metadata_work_never_touches_the_cold_store() {
    // The binary has one set of AWS credentials for both locations, so
    // the cold server is given the hot one's keys; it is still a server of
    // its own, with its own endpoint and its own outage.
    let hot_server = Garage::start();
    let mut cold_server = Garage::start_with_keys(hot_server.access_key(), hot_server.secret_key());
    let mut r = Remote::s3(&hot_server, "hot");
    r.data_repo = Some(format!("{}&storage_class=STANDARD_IA", cold_server.url("cold")));

    r.init(&[]);
    let src = r.join("src");
    mixed_source(&src, 21, 3, 1_500_000, 30, 10_000);
    let first = r.backup(&src);
    assert_eq!(num(summary(&first), "files_new"), 34);

    let hot = hot_server.objects("hot");
    let cold = cold_server.objects("cold");
    for dir in ["config", "keys/", "index/", "snapshots/", "data/"] {
        assert!(hot.iter().any(|o| o.starts_with(dir)), "hot location lacks {dir}: {hot:?}");
    }
    assert!(!cold.is_empty() && cold.iter().all(|o| o.starts_with("data/")), "cold holds more than packs: {cold:?}");
    assert!(hot_server.objects("cold").is_empty() && cold_server.objects("hot").is_empty());
    let tree_only: BTreeSet<String> = ["tree".to_string()].into();
    let data_only: BTreeSet<String> = ["data".to_string()].into();
    for p in names(&hot.iter().filter(|o| o.starts_with("data/")).cloned().collect()) {
        assert_eq!(blob_types(&r, &p), tree_only, "hot pack {p} holds file data");
    }
    for p in names(&cold) {
        assert_eq!(blob_types(&r, &p), data_only, "cold pack {p} holds trees");
    }

    // Without --data-repo the repository says what it needs.
    let no_cold = Remote::s3(&hot_server, "hot");
    let out = no_cold.run(&["snapshots"]);
    let line = one_line_error(&out, "snapshots without --data-repo", "s3://arkiv/hot");
    assert!(line.contains("--data-repo"), "{line}");

    // The cold store goes away. Listing, browsing, an incremental backup
    // (new trees, no new file data) and forget need only the hot one; with
    // no retries any request to the cold store would fail the command.
    cold_server.stop();
    let fast = ["--retries", "0", "--timeout", "5"];
    let with = |args: &[&str]| -> Vec<String> { fast.iter().chain(args).map(|s| s.to_string()).collect() };
    let snaps = r.json(&with(&["snapshots"]));
    assert_eq!(snaps.as_array().unwrap().len(), 1);
    let ls = r.ok(&with(&["ls", "latest"]));
    assert!(stdout(&ls).contains("notes.txt") && stdout(&ls).contains("f029"), "{}", stdout(&ls));
    // A copy of existing files: new directory entries, the same content.
    fs::create_dir_all(src.join("copy")).unwrap();
    for f in ["f000", "f001"] {
        fs::copy(src.join("large").join(f), src.join("copy").join(f)).unwrap();
    }
    let mut args = with(&["backup"]);
    args.push(src.display().to_string());
    let second = r.json(&args);
    let s = summary(&second);
    assert_eq!(num(s, "files_new"), 2, "{s}");
    assert!(num(s, "bytes_new") < 100_000, "file data was stored again: {s}");
    assert_eq!(r.json(&with(&["snapshots"])).as_array().unwrap().len(), 2);
    let forget = r.json(&with(&["forget", "--keep-last", "1"]));
    assert_eq!(forget["removed"].as_array().map(|a| a.len()), Some(1), "{forget}");
    let snaps = r.json(&with(&["snapshots"]));
    assert_eq!(snaps.as_array().unwrap().len(), 1);
    assert_eq!(snaps[0]["id"], second["id"]);
    assert_eq!(
        hot_server.objects("hot").iter().filter(|o| o.starts_with("snapshots/")).count(),
        1,
        "forget left the snapshot in the hot location"
    );

    // Restoring needs the file data: it fails while the cold store is
    // down, naming it, and works once it is back.
    let target = r.join("while-down");
    let out = r.run(&[
        OsStr::new("--retries"),
        OsStr::new("0"),
        OsStr::new("restore"),
        OsStr::new("latest"),
        OsStr::new("--target"),
        target.as_os_str(),
    ]);
    assert_ne!(out.status.code(), Some(0), "a restore without the file data succeeded");
    eprintln!("restore with the cold store down: {:?}\n{}", out.status.code(), stderr(&out));
    assert!(stderr(&out).contains("s3://arkiv/cold"), "{}", stderr(&out));

    cold_server.restart();
    let target = r.restore("latest", "restored");
    assert_same_tree(&src, &restored(&target, &src));
    r.check_read_data();
}

#[test]
fn a_flaky_s3_store_is_retried_to_a_complete_backup_and_a_dead_one_fails_cleanly() {
    let g = Garage::start();
    let r = Remote::s3(&g, "flaky");
    r.init(&["--pack-size-mib", "4"]);
    let src = r.join("src");
    mixed_source(&src, 31, 3, 4 * MIB, 400, 20_000);

    // Each faulted run logs the retries it made (debug lines of the
    // backend) so the test can see that faults really happened.
    let faulted = |faults: &str, args: &[&OsStr]| -> Output {
        let mut c = r.cmd(args);
        c.env("ARKIV_FAULTS", faults).env("RUST_LOG", "warn,arkiv_repo::backend=debug");
        let (out, _) = run_timed(c, LIMIT);
        assert_code(&out, 0, &format!("{} with ARKIV_FAULTS={faults}", describe(args)));
        out
    };
    let json = OsStr::new("--json");
    let backup = OsStr::new("backup");
    // Errors and truncated uploads at the rates of a bad network day. The
    // seed's first draw fails the first request (reading config), so at
    // least one retry is certain.
    let out = faulted("errors=0.05,truncate=0.02,seed=7", &[json, backup, src.as_os_str()]);
    let retried = stderr(&out).matches("injected fault").count();
    assert!(retried >= 1, "no injected fault was retried:\n{}", stderr(&out));
    eprintln!("backup: {retried} injected fault(s) retried");
    let report = parse_json(&out);
    let first = report["id"].as_str().unwrap().to_string();
    assert_eq!(num(summary(&report), "files_new"), 404);

    // Half of all uploads stored truncated under their final name: each is
    // retried until a whole one replaces it.
    write_file(src.join("large/added"), &random_bytes(33, 9 * MIB));
    let out =
        faulted("truncate=0.5,seed=3", &[OsStr::new("--retries"), OsStr::new("12"), json, backup, src.as_os_str()]);
    let truncated = stderr(&out).matches("injected fault: write truncated").count();
    assert!(truncated >= 1, "no truncated upload was retried:\n{}", stderr(&out));
    eprintln!("backup: {truncated} truncated upload(s) retried");
    let report = parse_json(&out);
    assert_eq!(num(summary(&report), "files_new"), 1);
    let second = report["id"].as_str().unwrap().to_string();

    // Without faults: every byte is there, as written.
    r.check_read_data();
    let target = r.restore(&second, "restored");
    assert_same_tree(&src, &restored(&target, &src));
    // Reads are retried too: a restore through failing reads is exact.
    let target = r.join("restored-flaky");
    let out = faulted(
        "errors=0.2,seed=7",
        &[OsStr::new("restore"), OsStr::new(&second), OsStr::new("--target"), target.as_os_str()],
    );
    let pack_reads = stderr(&out).lines().filter(|l| l.contains("data/") && l.contains("injected fault")).count();
    assert!(pack_reads >= 1, "no pack read was retried:\n{}", stderr(&out));
    eprintln!("restore: {pack_reads} failed pack read(s) retried");
    assert_same_tree(&src, &restored(&target, &src));
    assert_eq!(r.snapshots().len(), 2);
    assert_ne!(first, second);

    // Every request fails: one line naming the store and the operation,
    // and nothing that check complains about afterwards.
    let before = g.objects("flaky");
    write_file(src.join("new-file"), &random_bytes(34, 3 * MIB));
    for args in [vec!["backup", src.to_str().unwrap()], vec!["snapshots"], vec!["check"]] {
        let mut full = vec!["--retries", "1"];
        full.extend(&args);
        let mut c = r.cmd(&full);
        c.env("ARKIV_FAULTS", "errors=1.0");
        let (out, took) = run_timed(c, LIMIT);
        let what = format!("{} (every request fails)", args.join(" "));
        let line = one_line_error(&out, &what, "s3://arkiv/flaky");
        assert!(
            ["read ", "write ", "list ", "stat ", "delete "].iter().any(|op| line.contains(op)),
            "`{what}` does not say which operation failed: {line}"
        );
        assert!(line.contains("injected fault"), "`{what}`: {line}");
        assert!(took < Duration::from_secs(30), "`{what}` took {took:?}");
    }
    assert_eq!(g.objects("flaky"), before, "a backup against a dead store changed the repository");
    let report = r.json(&["check"]);
    assert_eq!(report["errors"], Value::Array(vec![]), "{report}");
    assert_eq!(report["warnings"], Value::Array(vec![]), "{report}");
    assert_eq!(r.snapshots().len(), 2);
}

#[test]
fn an_interrupted_s3_backup_fails_clearly_and_its_rerun_uploads_only_what_is_missing() {
    let mut g = Garage::start();
    let r = Remote::s3(&g, "resume");
    r.init(&["--pack-size-mib", "4"]);
    let src = r.join("src");
    random_files(&src.join("a"), 41, 30, MIB);
    random_files(&src.join("b"), 42, 60, MIB / 2);
    let total = 60 * MIB as u64;

    // One upload at a time, each a little slowed down, so that the store
    // can be killed after the first index file and well before the end.
    let mut c = r.cmd(&[OsStr::new("--retries"), OsStr::new("2"), OsStr::new("backup"), src.as_os_str()]);
    c.args(["--connections", "1"]).env("ARKIV_FAULTS", "latency=150ms");
    c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    let started = Instant::now();
    let indexed_packs = loop {
        let objects = g.objects("resume");
        if objects.iter().any(|o| o.starts_with("index/")) {
            break objects.iter().filter(|o| o.starts_with("data/")).count();
        }
        assert!(started.elapsed() < LIMIT, "no index file was written within {LIMIT:?}");
        std::thread::sleep(Duration::from_millis(25));
    };
    g.stop();
    let (out, _) = wait_timed(child, LIMIT, "the interrupted backup");
    let line = one_line_error(&out, "backup (store killed mid-way)", "s3://arkiv/resume");
    eprintln!("killed after {indexed_packs} packs; the backup said: {line}");
    assert!(!line.contains("injected"), "{line}");
    assert!(indexed_packs >= 8, "killed after only {indexed_packs} packs");

    g.restart();
    let report = r.json(&["check"]);
    assert_eq!(report["errors"], Value::Array(vec![]), "the interrupted backup left errors: {report}");
    assert!(r.snapshots().is_empty(), "an interrupted backup saved a snapshot");

    let rerun = r.backup(&src);
    let s = summary(&rerun);
    eprintln!("the re-run stored {} of {total} bytes", num(s, "bytes_stored"));
    assert_eq!(num(s, "total_bytes"), total);
    assert!(
        num(s, "bytes_stored") + 30 * MIB as u64 <= total,
        "the re-run uploaded {} of {total} bytes: what the first run indexed was sent again",
        num(s, "bytes_stored")
    );
    r.check_read_data();
    let target = r.restore("latest", "restored");
    assert_same_tree(&src, &restored(&target, &src));
}

// ---- failures that must be one clear line ----

#[test]
fn s3_with_a_closed_endpoint_port_fails_fast_naming_the_location() {
    let port = common::garage::free_port();
    let url = format!("s3://arkiv/nowhere?endpoint=http://127.0.0.1:{port}");
    let r = Remote::new(&url).with_env([
        ("AWS_ACCESS_KEY_ID", "GK0123456789abcdef01234567".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "0123abcd".repeat(8)),
    ]);
    let src = r.join("src");
    write_file(src.join("f"), b"data");
    for args in [vec!["snapshots"], vec!["init"], vec!["backup", src.to_str().unwrap()]] {
        let mut full = vec!["--retries", "1", "--timeout", "2"];
        full.extend(&args);
        let (out, took) = run_timed(r.cmd(&full), LIMIT);
        let line = one_line_error(&out, &args.join(" "), "s3://arkiv/nowhere");
        assert!(line.to_lowercase().contains("connection refused"), "{line}");
        assert!(!line.contains(&"0123abcd".repeat(8)), "{line}");
        assert!(took < Duration::from_secs(10), "`{}` took {took:?}", args.join(" "));
    }
}

#[test]
fn s3_with_a_wrong_secret_key_is_refused_as_permission_denied_without_printing_the_secret() {
    let g = Garage::start();
    Remote::s3(&g, "creds").init(&[]);
    let wrong_secret = "f00dfeed".repeat(8);
    let wrong_secret_remote = Remote::s3(&g, "creds").with_env([("AWS_SECRET_ACCESS_KEY", wrong_secret.clone())]);
    let unknown_key =
        Remote::s3(&g, "creds").with_env([("AWS_ACCESS_KEY_ID", "GK00000000000000000000dead".to_string())]);
    for (who, r) in [("wrong secret", &wrong_secret_remote), ("unknown access key", &unknown_key)] {
        let src = r.join("src");
        write_file(src.join("f"), b"data");
        for args in [vec!["snapshots"], vec!["backup", src.to_str().unwrap()], vec!["init"]] {
            let mut c = r.cmd(&args);
            c.env("RUST_LOG", "debug");
            let (out, took) = run_timed(c, LIMIT);
            let what = format!("{} ({who})", args.join(" "));
            let err = stderr(&out);
            for secret in [wrong_secret.as_str(), g.secret_key()] {
                assert!(!err.contains(secret) && !stdout(&out).contains(secret), "`{what}` printed a secret key");
            }
            assert!(took < Duration::from_secs(20), "`{what}` took {took:?}");
            // Without debug logging: exactly one line.
            let (out, _) = run_timed(r.cmd(&args), LIMIT);
            let line = one_line_error(&out, &what, "s3://arkiv/creds");
            let lower = line.to_lowercase();
            assert!(lower.contains("permission denied") || lower.contains("denied"), "`{what}`: {line}");
            assert!(!line.contains(&wrong_secret) && !line.contains(g.secret_key()), "`{what}`: {line}");
        }
    }
    // Nothing was written with the wrong keys.
    let objects = g.objects("creds");
    assert_eq!(objects.len(), 2, "{objects:?}");
}

#[test]
fn s3_with_a_missing_bucket_names_the_bucket() {
    let g = Garage::start();
    let r = Remote::new(format!("s3://nosuchbucket/repo?endpoint={}", g.endpoint())).with_env(g.env());
    let src = r.join("src");
    write_file(src.join("f"), b"data");
    for args in [vec!["snapshots"], vec!["init"], vec!["backup", src.to_str().unwrap()]] {
        let (out, took) = run_timed(r.cmd(&args), LIMIT);
        let line = one_line_error(&out, &args.join(" "), "s3://nosuchbucket/repo");
        assert!(line.contains("NoSuchBucket") || line.to_lowercase().contains("bucket not found"), "{line}");
        assert!(took < Duration::from_secs(20), "`{}` took {took:?}", args.join(" "));
    }
}

#[test]
fn a_store_that_accepts_connections_and_never_answers_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            held.push(conn); // accepted, never read from, never answered
        }
    });
    let url = format!("s3://arkiv/silent?endpoint=http://127.0.0.1:{port}");
    let r = Remote::new(&url).with_env([
        ("AWS_ACCESS_KEY_ID", "GK0123456789abcdef01234567".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "0123abcd".repeat(8)),
    ]);
    let src = r.join("src");
    write_file(src.join("f"), b"data");
    // A request that gets no answer is cut off after the timeout: five
    // times --timeout for a read or upload step (`arkiv --help`), once more
    // for the retry. The three commands run at once to keep the test short.
    let commands = [vec!["snapshots"], vec!["init"], vec!["backup", src.to_str().unwrap()]];
    let started = Instant::now();
    let children: Vec<Child> = commands
        .iter()
        .map(|args| {
            let mut full = vec!["--timeout", "2", "--retries", "1"];
            full.extend(args);
            let mut c = r.cmd(&full);
            c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
            c.spawn().unwrap()
        })
        .collect();
    for (args, child) in commands.iter().zip(children) {
        let what = args.join(" ");
        let (out, _) = wait_timed(child, Duration::from_secs(60), &what);
        let took = started.elapsed();
        let line = one_line_error(&out, &what, "s3://arkiv/silent");
        assert!(line.to_lowercase().contains("timeout") || line.contains("timed out"), "{line}");
        assert!(took < Duration::from_secs(25), "`{what}` took {took:?}");
    }
}

// ---- SFTP ----

#[test]
fn sftp_round_trip_through_openssh() {
    let server = SshServer::start();
    let repo_dir = server.files().join("repo");
    let r = Remote::sftp(&server, &repo_dir);
    r.init(&[]);
    assert!(repo_dir.join("config").is_file(), "init wrote no config into {}", repo_dir.display());

    let src = r.join("src");
    mixed_source(&src, 51, 3, 1_000_000, 20, 15_000);
    let first = r.backup(&src);
    let id = first["id"].as_str().unwrap().to_string();
    assert_eq!(num(summary(&first), "files_new"), 24);
    assert_eq!(r.snapshots().len(), 1);
    let second = r.backup(&src);
    assert_no_file_data_stored(summary(&second));
    let target = r.restore(&id, "restored");
    assert_same_tree(&src, &restored(&target, &src));
    r.check_read_data();

    // The repository's layout on the server: content-named objects only.
    let objects = stored_objects(&repo_dir);
    assert!(objects.iter().all(|o| is_object_name(o.rsplit('/').next().unwrap())), "{objects:?}");
    assert_eq!(objects.iter().filter(|o| o.starts_with("snapshots/")).count(), 2);
    // Uploads are staged in tmp/ and renamed into place: nothing is left
    // there once the commands succeeded.
    let mut top: BTreeSet<String> = files_in(&repo_dir);
    if top.remove("tmp") {
        assert_eq!(files_in(&repo_dir.join("tmp")), BTreeSet::new(), "uploads left behind in tmp/");
    }
    let expected: BTreeSet<String> =
        ["config", "keys", "snapshots", "index", "data"].iter().map(|s| s.to_string()).collect();
    assert_eq!(top, expected, "unexpected entries in the repository");

    // A server whose host key is not known is refused (strict checking).
    let known = fs::read(server.known_hosts()).unwrap();
    fs::write(server.known_hosts(), b"").unwrap();
    let out = r.run(&["snapshots"]);
    fs::write(server.known_hosts(), &known).unwrap();
    let line = one_line_error(&out, "snapshots (unknown host key)", shown(&server.url(&repo_dir)));
    assert!(line.contains("Host key verification failed"), "{line}");
    assert_eq!(r.snapshots().len(), 2);
}

#[test]
fn sftp_to_a_closed_port_fails_fast_naming_the_location() {
    let port = common::garage::free_port();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    let url = format!("sftp://root@127.0.0.1:{port}/srv/repo?key={}", key.display());
    let r = Remote::new(&url).with_env([("XDG_STATE_HOME", dir.path().display().to_string())]);
    for args in [vec!["snapshots"], vec!["init"]] {
        let mut full = vec!["--retries", "1", "--timeout", "2"];
        full.extend(&args);
        let (out, took) = run_timed(r.cmd(&full), LIMIT);
        let line = one_line_error(&out, &args.join(" "), &format!("sftp://root@127.0.0.1:{port}/srv/repo"));
        assert!(line.to_lowercase().contains("connection refused"), "{line}");
        assert!(took < Duration::from_secs(10), "`{}` took {took:?}", args.join(" "));
    }
}

#[test]
fn sftp_commands_leave_no_ssh_process_behind() {
    let server = SshServer::start();
    let r = Remote::sftp(&server, &server.files().join("repo"));
    r.init(&[]);
    let src = r.join("src");
    random_files(&src, 71, 3, 300_000);
    r.backup(&src);
    r.snapshots();
    let out = r.run(&["restore", "no-such-snapshot", "--target", "/nonexistent"]);
    assert_code(&out, 1, "restore no-such-snapshot");
    // `ssh -O exit` has been sent when the binary exits; the master may
    // take a moment to go, longer on a machine busy with a parallel run.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut left = server.client_processes();
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        left = server.client_processes();
    }
    assert!(left.is_empty(), "ssh processes still running after the commands exited: {left:#?}");
}

#[test]
fn an_sftp_upload_cut_short_leaves_no_partial_object_under_its_final_name() {
    let server = SshServer::start();
    let repo_dir = server.files().join("repo");
    let r = Remote::sftp(&server, &repo_dir);
    r.init(&[]);
    let src = r.join("src");
    random_files(&src, 61, 12, 8 * MIB);
    let mut c = r.cmd(&[OsStr::new("backup"), src.as_os_str()]);
    c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = c.spawn().unwrap();
    // Kill the backup while an upload is seen growing on the server
    // (wherever the server keeps it).
    let objects_below = |dir: &Path| -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                for f in fs::read_dir(&p).into_iter().flatten().flatten() {
                    out.push(f.path());
                }
            } else {
                out.push(p);
            }
        }
        out
    };
    let started = Instant::now();
    let mut sizes = std::collections::HashMap::new();
    'watch: loop {
        assert!(child.try_wait().unwrap().is_none(), "the backup finished before an upload was seen growing");
        assert!(started.elapsed() < LIMIT);
        for p in objects_below(&repo_dir.join("data")).into_iter().chain(objects_below(&repo_dir.join("tmp"))) {
            let len = fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            if sizes.insert(p.clone(), len).is_some_and(|before| before != len) {
                break 'watch;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let mut partial = Vec::new();
    for p in objects_below(&repo_dir.join("data")) {
        let bytes = fs::read(&p).unwrap();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if arkiv_repo::Id::of_stored(&bytes).to_hex() != name {
            partial.push(format!("{} ({} bytes)", p.display(), bytes.len()));
        }
    }
    assert!(partial.is_empty(), "objects whose bytes do not match their names: {partial:?}");
    eprintln!("left in tmp/ by the killed upload: {:?}", files_in(&repo_dir.join("tmp")));
    // What the killed upload left is no part of the repository.
    let report = r.json(&["check", "--read-data"]);
    assert_eq!(report["errors"], Value::Array(vec![]), "{report}");
    r.backup(&src);
    let target = r.restore("latest", "restored");
    assert_same_tree(&src, &restored(&target, &src));
}

// ---- WebDAV and FTP ----

/// The round trip on a server that keeps the repository in `repo_dir` on
/// this machine: init, a backup of mixed files, an incremental backup that
/// stores no file data, a byte-for-byte restore, `check --read-data`, and
/// the repository's layout on the server's disk: content-named objects
/// whose bytes hash to their names, nothing left in staging.
fn file_server_round_trip(r: &Remote, repo_dir: &Path, seed: u64) {
    r.init(&[]);
    assert!(repo_dir.join("config").is_file(), "init wrote no config into {}", repo_dir.display());
    assert_eq!(files_in(&repo_dir.join("keys")).len(), 1, "init wrote other than one key slot");

    let src = r.join("src");
    mixed_source(&src, seed, 3, 1_000_000, 20, 15_000);
    let first = r.backup(&src);
    let id = first["id"].as_str().unwrap().to_string();
    let s = summary(&first);
    assert_eq!(num(s, "files_new"), 24, "{s}");
    assert!(num(s, "bytes_stored") > 3_000_000, "{s}");
    assert_eq!(r.snapshots().len(), 1);

    let second = r.backup(&src);
    let s = summary(&second);
    assert_eq!((num(s, "files_new"), num(s, "files_changed"), num(s, "files_unmodified")), (0, 0, 24), "{s}");
    assert_no_file_data_stored(s);
    assert_eq!(r.snapshots().len(), 2);

    let target = r.restore(&id, "restored");
    assert_same_tree(&src, &restored(&target, &src));
    let target = r.restore("latest", "restored-latest");
    assert_same_tree(&src, &restored(&target, &src));
    let report = r.check_read_data();
    assert!(num(&report, "packs_read") > 0, "{report}");

    // On the server's disk: content-named objects, each holding the bytes
    // its name is the hash of.
    let objects = stored_objects(repo_dir);
    assert!(objects.iter().all(|o| is_object_name(o.rsplit('/').next().unwrap())), "{objects:?}");
    assert_eq!(objects.iter().filter(|o| o.starts_with("snapshots/")).count(), 2, "{objects:?}");
    assert!(objects.iter().any(|o| o.starts_with("data/")), "{objects:?}");
    for o in objects.iter().filter(|o| !o.starts_with("keys/")) {
        let bytes = fs::read(repo_dir.join(o)).unwrap();
        assert_eq!(arkiv_repo::Id::of_stored(&bytes).to_hex(), o.rsplit('/').next().unwrap(), "{o} is damaged");
    }
    // Staged uploads were all renamed into place.
    let mut top: BTreeSet<String> = files_in(repo_dir);
    if top.remove("tmp") {
        assert_eq!(files_in(&repo_dir.join("tmp")), BTreeSet::new(), "uploads left behind in tmp/");
    }
    let expected: BTreeSet<String> =
        ["config", "keys", "snapshots", "index", "data"].iter().map(|s| s.to_string()).collect();
    assert_eq!(top, expected, "unexpected entries in the repository");
}

/// Commands with wrong or missing credentials against an existing
/// repository at `url`: one line naming the location, exit 1, quickly, no
/// secret printed (not even with trace logging), nothing written.
fn refused_credentials(r: &Remote, url: &str, repo_dir: &Path, secrets: &[&str], who: &str) -> String {
    let before = listing(repo_dir);
    let src = r.join("src");
    write_file(src.join("f"), b"data");
    let mut last = String::new();
    for args in [vec!["snapshots"], vec!["backup", src.to_str().unwrap()], vec!["init"], vec!["check"]] {
        let what = format!("{} ({who})", args.join(" "));
        let mut c = r.cmd(&args);
        c.env("RUST_LOG", "trace");
        let (out, took) = run_timed(c, LIMIT);
        assert_ne!(out.status.code(), Some(0), "`{what}` succeeded");
        for secret in secrets {
            assert!(!stderr(&out).contains(secret) && !stdout(&out).contains(secret), "`{what}` printed a password");
        }
        assert!(took < Duration::from_secs(20), "`{what}` took {took:?}");
        let (out, _) = run_timed(r.cmd(&args), LIMIT);
        let line = one_line_error(&out, &what, shown(url));
        for secret in secrets {
            assert!(!line.contains(secret), "`{what}`: {line}");
        }
        last = line;
    }
    assert_eq!(listing(repo_dir), before, "commands with {who} changed the repository");
    last
}

/// A closed port: one line naming the location and the refused connection,
/// in well under the time retries of a temporary error would take.
fn closed_port_fails_fast(r: &Remote, location: &str) {
    let src = r.join("src");
    write_file(src.join("f"), b"data");
    for args in [vec!["snapshots"], vec!["init"], vec!["backup", src.to_str().unwrap()]] {
        let mut full = vec!["--retries", "1", "--timeout", "2"];
        full.extend(&args);
        let (out, took) = run_timed(r.cmd(&full), LIMIT);
        let line = one_line_error(&out, &args.join(" "), location);
        assert!(line.to_lowercase().contains("connection refused"), "{line}");
        assert!(took < Duration::from_secs(10), "`{}` took {took:?}", args.join(" "));
    }
}

#[test]
fn webdav_round_trip_through_rclone() {
    let server = WebDavServer::start();
    let r = Remote::webdav(&server, "backups/host1");
    file_server_round_trip(&r, &server.path("backups/host1"), 81);
}

#[test]
fn webdav_with_a_wrong_or_no_password_fails_naming_the_location_without_printing_it() {
    let server = WebDavServer::start();
    let url = server.url("creds");
    Remote::webdav(&server, "creds").init(&[]);
    let wrong = format!("wrong-{}", server.password());
    let r = Remote::webdav(&server, "creds").with_env([("ARKIV_WEBDAV_PASSWORD", wrong.clone())]);
    let line = refused_credentials(&r, &url, &server.path("creds"), &[&wrong, server.password()], "wrong password");
    assert!(line.contains("Unauthorized") || line.contains("401"), "{line}");
    let mut anonymous = Remote::new(&url);
    anonymous.unset.extend(FILE_SERVER_NOISE);
    let line = refused_credentials(&anonymous, &url, &server.path("creds"), &[server.password()], "no credentials");
    assert!(line.contains("Unauthorized") || line.contains("401"), "{line}");
    // The right credentials still work.
    assert_eq!(Remote::webdav(&server, "creds").snapshots().len(), 0);
}

#[test]
fn webdav_to_a_closed_port_fails_fast_naming_the_location() {
    let port = common::garage::free_port();
    let url = format!("webdav://127.0.0.1:{port}/repo");
    let mut r = Remote::new(&url);
    r.unset.extend(FILE_SERVER_NOISE);
    closed_port_fails_fast(&r, &url);
}

#[test]
fn ftp_round_trip_through_pyftpdlib() {
    let server = FtpServer::start();
    let r = Remote::ftp(&server, "host1");
    file_server_round_trip(&r, &server.path("host1"), 91);
}

#[test]
fn ftp_without_a_user_in_the_location_logs_in_as_anonymous() {
    let server = FtpServer::start_anonymous();
    let r = Remote::ftp(&server, "anon");
    r.init(&[]);
    let src = r.join("src");
    random_files(&src, 93, 3, 200_000);
    r.backup(&src);
    let target = r.restore("latest", "restored");
    assert_same_tree(&src, &restored(&target, &src));
    r.check_read_data();
}

#[test]
fn ftp_with_a_wrong_or_no_password_fails_naming_the_location_without_printing_it() {
    let server = FtpServer::start();
    let url = server.url("creds");
    Remote::ftp(&server, "creds").init(&[]);
    let wrong = format!("wrong-{}", server.password());
    let r = Remote::ftp(&server, "creds").with_env([("ARKIV_FTP_PASSWORD", wrong.clone())]);
    let line = refused_credentials(&r, &url, &server.path("creds"), &[&wrong, server.password()], "wrong password");
    assert!(line.contains("530"), "{line}");
    let mut no_password = Remote::new(&url);
    no_password.unset.extend(FILE_SERVER_NOISE);
    let line = refused_credentials(&no_password, &url, &server.path("creds"), &[server.password()], "no password");
    assert!(line.contains("530"), "{line}");
    assert_eq!(Remote::ftp(&server, "creds").snapshots().len(), 0);
}

#[test]
fn ftp_to_a_closed_port_fails_fast_naming_the_location() {
    let port = common::garage::free_port();
    let url = format!("ftp://backup@127.0.0.1:{port}/repo");
    let r = Remote::new(&url).with_env([("ARKIV_FTP_PASSWORD", "not-used-anyway".to_string())]);
    closed_port_fails_fast(&r, &url);
}

/// Kills a backup into `r` while one of its uploads is seen growing on the
/// server's disk (under `repo_dir`, wherever the server stages it), then
/// insists that no object under `data/` holds other bytes than its name
/// says, that the repository checks clean, and that a new backup and a
/// restore work. Returns the names of the files the killed upload left in
/// `repo_dir` and its `tmp/`, which are no part of the repository.
fn upload_cut_short(r: &Remote, repo_dir: &Path) -> Vec<String> {
    r.init(&[]);
    let src = r.join("src");
    random_files(&src, 61, 12, 8 * MIB);
    let mut c = r.cmd(&[OsStr::new("backup"), src.as_os_str()]);
    c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = c.spawn().unwrap();
    let files_below = |dir: &Path, depth: u32| -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if !p.is_dir() {
                out.push(p);
            } else if depth > 0 {
                for f in fs::read_dir(&p).into_iter().flatten().flatten() {
                    out.push(f.path());
                }
            }
        }
        out
    };
    let started = Instant::now();
    let mut sizes = std::collections::HashMap::new();
    'watch: loop {
        assert!(child.try_wait().unwrap().is_none(), "the backup finished before an upload was seen growing");
        assert!(started.elapsed() < LIMIT);
        let candidates = files_below(&repo_dir.join("data"), 1)
            .into_iter()
            .chain(files_below(&repo_dir.join("tmp"), 0))
            .chain(files_below(repo_dir, 0));
        for p in candidates {
            let len = fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            if sizes.insert(p.clone(), len).is_some_and(|before| before != len) {
                break 'watch;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let mut partial = Vec::new();
    for p in files_below(&repo_dir.join("data"), 1) {
        let bytes = fs::read(&p).unwrap();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if arkiv_repo::Id::of_stored(&bytes).to_hex() != name {
            partial.push(format!("{} ({} bytes)", p.display(), bytes.len()));
        }
    }
    assert!(partial.is_empty(), "objects whose bytes do not match their names: {partial:?}");
    let mut left: Vec<String> = files_in(&repo_dir.join("tmp")).into_iter().map(|n| format!("tmp/{n}")).collect();
    left.extend(files_below(repo_dir, 0).iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()));
    left.retain(|n| n != "config");
    eprintln!("left by the killed upload: {left:?}");
    let report = r.json(&["check", "--read-data"]);
    assert_eq!(report["errors"], Value::Array(vec![]), "{report}");
    r.backup(&src);
    let target = r.restore("latest", "restored");
    assert_same_tree(&src, &restored(&target, &src));
    r.check_read_data();
    left
}

#[test]
fn a_webdav_upload_cut_short_leaves_no_partial_object_under_its_final_name() {
    let server = WebDavServer::start();
    let left = upload_cut_short(&Remote::webdav(&server, "cut"), &server.path("cut"));
    // Staged in tmp/, as on SFTP.
    assert!(left.iter().all(|n| n.starts_with("tmp/")), "{left:?}");
}

#[test]
fn an_ftp_upload_cut_short_leaves_no_partial_object_under_its_final_name() {
    let server = FtpServer::start();
    let left = upload_cut_short(&Remote::ftp(&server, "cut"), &server.path("cut"));
    // OpenDAL's FTP writer stages an upload as NAME.RANDOM (8 letters or
    // digits) in the repository's root.
    let staged = |n: &str| n.len() == 73 && is_object_name(&n[..64]) && n.as_bytes()[64] == b'.';
    assert!(left.iter().all(|n| staged(n)), "{left:?}");
}

/// Restores read many short ranges of packs (each directory's tree is one
/// read). OpenDAL's FTP reader ends such a read early and returns the
/// connection to its pool with the server's `426 Transfer aborted` still to
/// come, which the next command on it then read as its own reply: restores
/// failed at random (`ftp error: Invalid response: [426]`). Many
/// directories and several restores make that certain to show.
#[test]
fn ftp_restores_of_many_ranges_of_a_pack_never_read_a_stale_reply() {
    let server = FtpServer::start();
    let r = Remote::ftp(&server, "ranges");
    r.init(&[]);
    let src = r.join("src");
    // A deep chain of directories (each tree is read on its own, one
    // level after the other) and some wide ones.
    let mut deep = src.clone();
    for i in 0..30u64 {
        deep = deep.join(format!("level{i:02}"));
        write_file(deep.join("f"), &random_bytes(i, 300 + 37 * i as usize));
    }
    for i in 0..40u64 {
        write_file(src.join(format!("wide{i:02}/f")), &random_bytes(100 + i, 700));
    }
    r.backup(&src);
    for round in 0..5 {
        let target = r.restore("latest", &format!("restored-{round}"));
        assert_same_tree(&src, &restored(&target, &src));
    }
    // And no transfer was cut short (pyftpdlib logs those `completed=0`).
    let log = server.log();
    let cut: Vec<&str> = log.lines().filter(|l| l.contains(" RETR ") && l.contains("completed=0")).collect();
    assert!(cut.is_empty(), "transfers cut short: {cut:#?}");
}
