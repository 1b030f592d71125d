//! The bucket source against a real S3 server (a single-node Garage, see
//! common/garage.rs): a prefix backed up incrementally, restored into a
//! directory and into another prefix, and bad locations refused without a
//! snapshot.
//!
//! Objects are written and read back with OpenDAL directly, not through
//! the code under test, so a bug in the bucket source cannot hide itself.

mod common;

use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use arkiv_repo::backend::{block_on, opendal};
use arkiv_repo::location::{open_store, StoreOptions};
use arkiv_repo::{Backend, Credential, Id, Indexed, InitOptions, KdfParams, Repository};
use arkiv_source::bucket::{self, Bucket, BucketRestoreOptions, BucketSource};
use arkiv_source::files::restore::RestoreProgress;
use arkiv_source::files::{self, Progress};
use arkiv_source::stream::StreamOptions;
use common::garage::{Garage, AWS_NOISE};

const PASSWORD: &str = "bucket test password";

/// The S3 service reads credentials from the process environment, which
/// all tests of one process share: one test at a time holds it.
static ENV: Mutex<()> = Mutex::new(());

struct Env<'a> {
    _guard: MutexGuard<'a, ()>,
}

impl Env<'_> {
    fn set(g: &Garage) -> Env<'static> {
        let guard = ENV.lock().unwrap_or_else(|e| e.into_inner());
        for v in AWS_NOISE {
            std::env::remove_var(v);
        }
        for (k, v) in g.env() {
            std::env::set_var(k, v);
        }
        Env { _guard: guard }
    }
}

impl Drop for Env<'_> {
    fn drop(&mut self) {
        std::env::remove_var("AWS_ACCESS_KEY_ID");
        std::env::remove_var("AWS_SECRET_ACCESS_KEY");
    }
}

/// A store over the whole bucket, for writing and reading objects by key.
fn raw(g: &Garage) -> opendal::Operator {
    open_store(&g.url(""), &StoreOptions::default()).expect("open the bucket").op().clone()
}

fn put(op: &opendal::Operator, key: &str, data: &[u8]) {
    block_on(op.write(key, data.to_vec())).unwrap_or_else(|e| panic!("writing {key}: {e}"));
}

fn delete(op: &opendal::Operator, key: &str) {
    block_on(op.delete(key)).unwrap_or_else(|e| panic!("deleting {key}: {e}"));
}

/// Every object under `prefix` (keys relative to it) with its bytes.
fn objects(op: &opendal::Operator, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let entries = block_on(op.list_with(&format!("{prefix}/")).recursive(true).into_future()).expect("list");
    entries
        .into_iter()
        .filter(|e| !e.metadata().is_dir())
        .map(|e| {
            let data = block_on(op.read(e.path())).expect("read").to_vec();
            (e.path().strip_prefix(&format!("{prefix}/")).expect("under the prefix").to_string(), data)
        })
        .collect()
}

/// Reproducible bytes that do not compress or deduplicate by accident.
fn init_repo(dir: &Path) {
    let opts = InitOptions { kdf: KdfParams { memory_kib: 1024, iterations: 1, parallelism: 1 }, ..Default::default() };
    Repository::init(Backend::local(dir).unwrap(), &Credential::password(PASSWORD), opts).expect("init");
}

/// The repository opened afresh, so its index holds what earlier
/// backups wrote.
fn open_repo(dir: &Path) -> Indexed {
    Repository::open(Backend::local(dir).unwrap(), &Credential::password(PASSWORD))
        .expect("open")
        .index()
        .expect("index")
}

fn meta(s: &arkiv_repo::Snapshot, key: &str) -> u64 {
    s.metadata[key].as_u64().unwrap_or_else(|| panic!("metadata {key} in {}", s.metadata))
}

fn backup(repo: &Path, spec: &str) -> (Id, arkiv_repo::Snapshot) {
    let source = BucketSource::open(spec, &StoreOptions::default()).expect("open the source");
    let out = bucket::backup(&open_repo(repo), &source, &StreamOptions::default(), &Progress::default())
        .unwrap_or_else(|e| panic!("backup of {spec}: {e}"));
    (out.id.expect("not a dry run"), out.snapshot)
}

fn read_dir(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn go(dir: &Path, root: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                go(&p, root, out);
            } else {
                out.insert(p.strip_prefix(root).unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    go(root, root, &mut out);
    out
}

#[test]
fn a_prefix_is_backed_up_incrementally_and_restored_into_a_directory_and_a_bucket() {
    let g = Garage::start();
    let _env = Env::set(&g);
    let op = raw(&g);
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    init_repo(&repo);

    let mut want: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    want.insert("photos/a.jpg".into(), common::random_bytes(1, 300 << 10));
    want.insert("photos/2024/b.png".into(), common::random_bytes(2, 5000));
    // More than one ranged read (8 MiB) and several chunks.
    want.insert("docs/report.pdf".into(), common::random_bytes(3, 11 << 20));
    want.insert("readme.txt".into(), b"hello".to_vec());
    want.insert("empty".into(), Vec::new());
    for (k, v) in &want {
        put(&op, &format!("app/uploads/{k}"), v);
    }
    // Beside the prefix, and a prefix that merely starts the same way:
    // neither is part of the source.
    put(&op, "app/other/x", b"not mine");
    put(&op, "app/uploads-old/y", b"not mine either");

    let spec = g.url("app/uploads");
    let (id1, s1) = backup(&repo, &spec);
    assert_eq!(s1.source, "bucket");
    assert_eq!(s1.paths, vec![format!("s3://arkiv/app/uploads")]);
    assert_eq!(meta(&s1, "objects"), 5);
    assert_eq!(meta(&s1, "objects_read"), 5);
    assert_eq!(meta(&s1, "objects_reused"), 0);
    let total: u64 = want.values().map(|v| v.len() as u64).sum();
    assert_eq!(meta(&s1, "bytes"), total);
    assert_eq!(s1.metadata["endpoint"], format!("127.0.0.1:{}", g.port()));
    let recorded = serde_json::to_string(&s1).unwrap();
    assert!(!recorded.contains(g.secret_key()) && !recorded.contains(g.access_key()), "{recorded}");

    // One object replaced by as many different bytes (only the ETag
    // tells), one added, one deleted.
    want.insert("photos/a.jpg".into(), common::random_bytes(10, 300 << 10));
    want.insert("docs/new.txt".into(), b"new object".to_vec());
    want.remove("readme.txt");
    put(&op, "app/uploads/photos/a.jpg", &want["photos/a.jpg"]);
    put(&op, "app/uploads/docs/new.txt", &want["docs/new.txt"]);
    delete(&op, "app/uploads/readme.txt");

    let (id2, s2) = backup(&repo, &spec);
    assert_eq!(s2.parent, Some(id1));
    assert_eq!(meta(&s2, "objects"), 5);
    assert_eq!(meta(&s2, "objects_read"), 2, "{}", s2.metadata);
    assert_eq!(meta(&s2, "objects_reused"), 3, "{}", s2.metadata);
    assert_eq!(meta(&s2, "bytes_read"), (300 << 10) + 10);
    assert_eq!((s2.summary.files_changed, s2.summary.files_new, s2.summary.files_unmodified), (1, 1, 3));
    assert_eq!(s2.summary.bytes_read, (300 << 10) + 10);

    // Nothing changed: nothing is read.
    let (_, s3) = backup(&repo, &spec);
    assert_eq!((meta(&s3, "objects_read"), meta(&s3, "objects_reused")), (0, 5));
    assert_eq!(s3.tree, s2.tree, "an unchanged bucket gives the same tree");

    // Into a directory, through the ordinary files restore.
    let indexed = open_repo(&repo);
    let target = tmp.path().join("restored");
    let opts = files::RestoreOptions { target: target.clone(), ..Default::default() };
    let out = files::restore(&indexed, &s2.tree, &opts, &RestoreProgress::default()).expect("restore to a directory");
    assert!(out.damaged.is_empty(), "{:?}", out.damaged);
    assert_eq!(read_dir(&target), want);

    // Into another prefix of the bucket.
    let dest = Bucket::open(&g.url("copy/here"), &StoreOptions::default()).unwrap();
    let ropts = BucketRestoreOptions::default();
    let progress = RestoreProgress::default();
    let r = bucket::restore(&indexed, &id2.short(), &s2.tree, &dest, &ropts, &progress).expect("restore to a bucket");
    assert_eq!((r.objects, r.bytes, r.replaced), (5, total - 5 + 10, 0));
    assert_eq!(objects(&op, "copy/here"), want);

    // Again: the keys exist, so nothing is written without --overwrite.
    put(&op, "copy/here/docs/new.txt", b"changed since the restore");
    let e = bucket::restore(&indexed, &id2.short(), &s2.tree, &dest, &ropts, &progress).unwrap_err().to_string();
    assert!(e.contains("already exist") && e.contains("--overwrite") && !e.contains('\n'), "{e}");
    assert_eq!(objects(&op, "copy/here")["docs/new.txt"], b"changed since the restore");
    let ropts = BucketRestoreOptions { overwrite: true, ..Default::default() };
    let r = bucket::restore(&indexed, &id2.short(), &s2.tree, &dest, &ropts, &progress).expect("overwrite");
    assert_eq!(r.replaced, 5);
    assert_eq!(objects(&op, "copy/here"), want);
}

#[test]
fn a_forced_backup_reads_every_object_and_only_selected_paths_are_restored() {
    let g = Garage::start();
    let _env = Env::set(&g);
    let op = raw(&g);
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    init_repo(&repo);
    put(&op, "site/a/1", &common::random_bytes(1, 1000));
    put(&op, "site/a/2", &common::random_bytes(2, 1000));
    put(&op, "site/b/3", &common::random_bytes(3, 1000));
    let spec = g.url("site");
    backup(&repo, &spec);
    let mut source = BucketSource::open(&spec, &StoreOptions::default()).unwrap();
    source.force = true;
    let out = bucket::backup(&open_repo(&repo), &source, &StreamOptions::default(), &Progress::default()).unwrap();
    assert_eq!(meta(&out.snapshot, "objects_read"), 3);
    assert_eq!(out.snapshot.summary.blobs_new, 0, "the same bytes are not stored twice");

    let dest = Bucket::open(&g.url("only-a"), &StoreOptions::default()).unwrap();
    let ropts = BucketRestoreOptions { includes: files::PathFilter::new(&["/a"]).unwrap(), ..Default::default() };
    let indexed = open_repo(&repo);
    bucket::restore(&indexed, "s", &out.snapshot.tree, &dest, &ropts, &RestoreProgress::default()).unwrap();
    assert_eq!(objects(&op, "only-a").into_keys().collect::<Vec<_>>(), ["a/1", "a/2"]);
}

#[test]
fn bad_locations_fail_in_one_line_and_leave_no_snapshot() {
    let g = Garage::start();
    let _env = Env::set(&g);
    let op = raw(&g);
    put(&op, "data/x", b"x");
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    init_repo(&repo);
    let quick = StoreOptions {
        policy: arkiv_repo::backend::IoPolicy { retries: 1, ..Default::default() },
        ..Default::default()
    };
    let attempt = |spec: &str| -> String {
        let source = match BucketSource::open(spec, &quick) {
            Ok(s) => s,
            Err(e) => return e.to_string(),
        };
        match bucket::backup(&open_repo(&repo), &source, &StreamOptions::default(), &Progress::default()) {
            Ok(o) => panic!("backup of {spec} made snapshot {:?}", o.id),
            Err(e) => e.to_string(),
        }
    };
    let check = |e: &str, wanted: &str| {
        // Shown when the test fails: the whole message an operator reads.
        eprintln!("{e}");
        assert!(e.contains(wanted), "{e}");
        assert!(!e.contains('\n'), "more than one line: {e}");
        assert!(!e.contains(g.secret_key()), "the secret leaked: {e}");
    };

    let e = attempt(&format!("s3://no-such-bucket/data?endpoint={}", g.endpoint()));
    check(&e, "s3://no-such-bucket/data");
    assert!(e.contains("does the bucket exist?"), "{e}");

    let e = attempt(&g.url("nothing-here"));
    check(&e, "no objects under this prefix");

    let free = common::garage::free_port();
    let e = attempt(&format!("s3://arkiv/data?endpoint=http://127.0.0.1:{free}"));
    check(&e, "s3://arkiv/data");

    let e = attempt("sftp://host/data");
    check(&e, "not a bucket location");

    std::env::set_var("AWS_SECRET_ACCESS_KEY", "0".repeat(64));
    let e = attempt(&g.url("data"));
    check(&e, "s3://arkiv/data");
    assert!(e.contains("credentials") || e.contains("denied") || e.contains("signature"), "{e}");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", g.secret_key());

    assert!(open_repo(&repo).repo().list_snapshots().unwrap().is_empty(), "a failed backup left a snapshot");
    // With the right everything, the same repository takes a backup.
    backup(&repo, &g.url("data"));
}

/// The same through the `arkiv` binary: a bucket URL as the source of
/// `backup`, a bucket URL and a directory as `restore` targets, `verify`
/// in a temporary directory, and a missing bucket as one line and exit 1.
#[test]
fn the_binary_backs_up_a_bucket_url_and_restores_it_to_a_prefix_and_a_directory() {
    let g = Garage::start();
    // Credentials are read when a request is signed: held throughout.
    let _env = Env::set(&g);
    let op = raw(&g);
    put(&op, "cli/src/a.txt", b"alpha");
    put(&op, "cli/src/docs/b.bin", &common::random_bytes(7, 3 << 20));
    let s = common::Scratch::new();
    let arkiv = |args: &[&str]| {
        let mut c = s.cmd(args);
        g.configure(&mut c);
        common::run(c)
    };
    let out = arkiv(&["--json", "backup", &g.url("cli/src")]);
    common::assert_code(&out, 0, "backup s3://…/cli/src");
    let v = common::parse_json(&out);
    assert_eq!(v["snapshot"]["source"], "bucket");
    let id = v["id"].as_str().unwrap().to_string();
    let again = common::parse_json(&arkiv(&["--json", "backup", &g.url("cli/src")]));
    assert_eq!(again["snapshot"]["summary"]["files_unmodified"], 2, "{again}");

    let out = arkiv(&["restore", &id, "--target", &g.url("cli/copy")]);
    common::assert_code(&out, 0, "restore into s3://…/cli/copy");
    assert_eq!(objects(&op, "cli/copy"), objects(&op, "cli/src"));
    let dir = s.join("restored");
    let out = arkiv(&["restore", &id, "--target", dir.to_str().unwrap()]);
    common::assert_code(&out, 0, "restore into a directory");
    assert_eq!(read_dir(&dir), objects(&op, "cli/src"));
    let out = arkiv(&["verify", &id, "--assert-command", "test -s \"$ARKIV_SANDBOX_DIR/docs/b.bin\""]);
    common::assert_code(&out, 0, "verify a bucket snapshot");

    let missing = format!("s3://no-such-bucket/cli/src?endpoint={}", g.endpoint());
    let out = arkiv(&["backup", &missing]);
    common::assert_code(&out, 1, "backup of a missing bucket");
    let err = common::stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!err.contains(g.secret_key()), "{err}");
    assert_eq!(s.snapshots().len(), 2);
}
