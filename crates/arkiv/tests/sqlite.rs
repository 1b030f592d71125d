//! The SQLite source through the real binary, on real SQLite databases:
//! backups taken while a writer is inserting, restores that must pass
//! `PRAGMA integrity_check`, refusals that must leave things alone, and
//! verified restores whose sandbox must be gone afterwards.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use arkiv_source::sqlite::rusqlite::Connection;
use common::{assert_code, parse_json, stderr, Scratch};

const SEED_ROWS: u64 = 3000;

fn url(p: &Path) -> String {
    format!("sqlite://{}", p.display())
}

/// A database with one table `t` of `SEED_ROWS` rows of 1 KiB each (a few
/// megabytes, so a backup takes more than one step).
fn seeded(path: &Path, journal: &str) {
    let c = Connection::open(path).unwrap();
    c.execute_batch(&format!(
        "PRAGMA journal_mode = {journal}; CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)"
    ))
    .unwrap();
    let tx = c.unchecked_transaction().unwrap();
    for i in 0..SEED_ROWS {
        tx.execute("INSERT INTO t (payload) VALUES (?1)", [common::random_bytes(i, 1024)]).unwrap();
    }
    tx.commit().unwrap();
}

/// Inserts rows one transaction at a time until stopped; `committed`
/// counts the inserts whose commit returned.
struct Writer {
    committed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<u64>,
}

impl Writer {
    fn start(path: &Path) -> Writer {
        let committed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c2, s2, path) = (committed.clone(), stop.clone(), path.to_path_buf());
        let handle = thread::spawn(move || {
            let conn = Connection::open(&path).unwrap();
            // In rollback-journal mode the backup's read lock makes a commit
            // wait; a writer without a busy timeout would fail instead.
            conn.busy_timeout(Duration::from_secs(20)).unwrap();
            let mut i = 0u64;
            while !s2.load(Ordering::Relaxed) {
                conn.execute("INSERT INTO t (payload) VALUES (?1)", [common::random_bytes(1_000_000 + i, 1024)])
                    .unwrap_or_else(|e| panic!("writer insert {i}: {e}"));
                i += 1;
                c2.store(i, Ordering::SeqCst);
            }
            i
        });
        Writer { committed, stop, handle }
    }

    fn committed(&self) -> u64 {
        self.committed.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` rows are committed.
    fn wait_for(&self, n: u64) {
        let t0 = Instant::now();
        while self.committed() < n {
            assert!(t0.elapsed() < Duration::from_secs(30), "the writer is stuck at {}", self.committed());
            thread::sleep(Duration::from_millis(2));
        }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("writer thread")
    }
}

fn restore(s: &Scratch, id: &str, target: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["restore".to_string(), id.to_string(), "--target".to_string(), url(target)];
    args.extend(extra.iter().map(|a| a.to_string()));
    s.run(&args)
}

fn integrity(path: &Path) -> String {
    Connection::open(path).unwrap().query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap()
}

fn count_and_max(path: &Path) -> (u64, u64) {
    Connection::open(path)
        .unwrap()
        .query_row("SELECT count(*), coalesce(max(id), 0) FROM t", [], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
        })
        .unwrap()
}

/// Backs up while a writer inserts, restores, and checks the copy is one
/// committed state: intact, holding every row committed before the backup
/// began and none that did not exist when it ended, with no gaps.
fn backup_under_writes(journal: &str, memory_limit: Option<&str>) {
    let s = Scratch::new();
    let db = s.join("app.db");
    seeded(&db, journal);
    let writer = Writer::start(&db);
    writer.wait_for(50);
    let before = writer.committed();
    let mut cmd = s.cmd(&["--json", "backup", &url(&db)]);
    if let Some(limit) = memory_limit {
        cmd.env("ARKIV_SQLITE_MEMORY_LIMIT", limit);
    }
    let out = common::run(cmd);
    let after = writer.committed();
    // Keep writing a little after the backup, so rows beyond the snapshot
    // exist in the live file and would show up if the copy leaked them.
    writer.wait_for(after + 50);
    let total = writer.stop();
    assert_code(&out, 0, &format!("backup {journal}"));
    let report = parse_json(&out);
    assert!(after > before, "the writer committed nothing during the backup ({before}); the test proves nothing");

    let meta = &report["snapshot"]["metadata"];
    assert_eq!(report["snapshot"]["source"], "sqlite");
    assert_eq!(report["snapshot"]["paths"][0], url(&db));
    assert_eq!(meta["journal_mode"], journal);
    assert_eq!(meta["tables"], 1);
    assert_eq!(meta["streams"][0]["name"], "app.db");
    assert_eq!(
        meta["bytes"].as_u64().unwrap(),
        meta["page_size"].as_u64().unwrap() * meta["page_count"].as_u64().unwrap()
    );
    let staged = if memory_limit == Some("0") { "temporary file" } else { "memory" };
    assert_eq!(meta["staged_in"], staged);
    assert!(meta["sqlite_version"].as_str().unwrap().starts_with("3."), "{meta}");

    let id = report["id"].as_str().unwrap();
    let target = s.join("restored/app.db");
    fs::create_dir_all(target.parent().unwrap()).unwrap();
    let out = restore(&s, id, &target, &[]);
    assert_code(&out, 0, "restore");
    assert_eq!(integrity(&target), "ok");
    let (rows, max_id) = count_and_max(&target);
    assert!(
        rows >= SEED_ROWS + before && rows <= SEED_ROWS + after,
        "{journal}: restored {rows} rows; the writer had {before}..{after} of {total} beyond {SEED_ROWS}"
    );
    assert_eq!(rows, max_id, "{journal}: the restored rows have gaps: not one committed state");
    let mode: String = Connection::open(&target).unwrap().query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, journal, "the restored file keeps the journal mode");
    let leftovers: Vec<_> = fs::read_dir(target.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "app.db")
        .collect();
    assert!(leftovers.is_empty(), "restore left {leftovers:?} behind");
}

#[test]
fn a_wal_database_backed_up_while_written_restores_intact() {
    backup_under_writes("wal", None);
}

#[test]
fn a_wal_database_staged_through_a_temporary_file_restores_intact() {
    backup_under_writes("wal", Some("0"));
}

#[test]
fn a_rollback_journal_database_backed_up_while_written_restores_intact() {
    backup_under_writes("delete", None);
}

#[test]
fn restore_leaves_an_existing_file_alone_without_overwrite() {
    let s = Scratch::new();
    let db = s.join("app.db");
    seeded(&db, "wal");
    let id = s.backup(&[url(&db)]);
    let target = s.join("out.db");
    let other = Connection::open(&target).unwrap();
    other.execute_batch("CREATE TABLE mine (x); INSERT INTO mine VALUES (42)").unwrap();
    drop(other);
    let original = fs::read(&target).unwrap();

    let out = restore(&s, &id, &target, &[]);
    assert_code(&out, 1, "restore onto an existing file");
    assert!(stderr(&out).contains("exists; use --overwrite"), "{}", stderr(&out));
    assert_eq!(fs::read(&target).unwrap(), original, "the existing file was changed");

    // A WAL beside the target would be applied to whatever file is there.
    fs::write(format!("{}-wal", target.display()), b"not empty").unwrap();
    let out = restore(&s, &id, &target, &["--overwrite"]);
    assert_code(&out, 1, "restore next to a WAL");
    assert!(stderr(&out).contains("out.db-wal exists"), "{}", stderr(&out));
    assert_eq!(fs::read(&target).unwrap(), original);
    fs::remove_file(format!("{}-wal", target.display())).unwrap();

    let out = restore(&s, &id, &target, &["--overwrite"]);
    assert_code(&out, 0, "restore --overwrite");
    assert_eq!(integrity(&target), "ok");
    assert_eq!(count_and_max(&target), (SEED_ROWS, SEED_ROWS));
    let names: Vec<String> =
        fs::read_dir(s.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    assert!(!names.iter().any(|n| n.contains("arkiv-restore")), "temporary file left: {names:?}");
}

#[test]
fn a_missing_or_foreign_file_fails_in_one_line_and_makes_no_snapshot() {
    let s = Scratch::new();
    let text = s.join("notes.txt");
    fs::write(&text, "these are notes, not a database\n".repeat(300)).unwrap();
    for (path, says) in [(s.join("nope.db"), "no such file"), (text, "not an SQLite database")] {
        let out = s.run(&["backup", &url(&path)]);
        assert_code(&out, 1, "backup of a bad file");
        let err = stderr(&out);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(&path.display().to_string()) && err.contains(says), "{err}");
    }
    let out = s.run(&["backup", "sqlite://host/x.db"]);
    assert!(!out.status.success() && stderr(&out).contains("three slashes"), "{}", stderr(&out));
    assert!(s.snapshots().is_empty(), "a failed backup made a snapshot");
}

fn verify(s: &Scratch, id: &str, sandbox: &Path, asserts: &[&str]) -> std::process::Output {
    let mut args = vec!["verify", id, "--sandbox"];
    let sb = sandbox.display().to_string();
    args.push(&sb);
    args.extend_from_slice(asserts);
    s.run(&args)
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect()
}

#[test]
fn verify_restores_into_a_sandbox_checks_and_removes_it() {
    let s = Scratch::new();
    let db = s.join("app.db");
    seeded(&db, "delete");
    let id = s.backup(&[url(&db)]);
    let sandbox = s.join("sandboxes");
    fs::create_dir(&sandbox).unwrap();

    let rows = format!("t>={SEED_ROWS}");
    let out = verify(
        &s,
        &id,
        &sandbox,
        &[
            "--assert-table",
            "t",
            "--assert-rows",
            &rows,
            "--assert-sql",
            "SELECT count(*) = 3000 FROM t",
            "--assert-command",
            "test -s \"$ARKIV_SANDBOX_FILE\" && test \"$(basename \"$ARKIV_SANDBOX_FILE\")\" = app.db",
        ],
    );
    assert_code(&out, 0, "verify with passing assertions");
    assert!(entries(&sandbox).is_empty(), "sandbox left behind: {:?}", entries(&sandbox));

    let too_many = format!("t>={}", SEED_ROWS + 1);
    for failing in [
        ["--assert-rows", too_many.as_str()],
        ["--assert-table", "missing"],
        ["--assert-sql", "SELECT count(*) = 0 FROM t"],
        ["--assert-command", "test ! -e \"$ARKIV_SANDBOX_FILE\""],
    ] {
        let out = verify(&s, &id, &sandbox, &failing);
        assert!(!out.status.success(), "verify {failing:?} passed:\n{}", stderr(&out));
        assert!(entries(&sandbox).is_empty(), "{failing:?}: sandbox left behind: {:?}", entries(&sandbox));
    }
}

#[test]
fn a_restore_that_fails_integrity_check_leaves_no_file() {
    let s = Scratch::new();
    let db = s.join("app.db");
    seeded(&db, "delete");
    // The backup API copies pages without reading them, so a page of
    // garbage inside the table reaches the snapshot and only the restore's
    // integrity check can see it.
    let mut bytes = fs::read(&db).unwrap();
    let page = Connection::open(&db).unwrap().query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0)).unwrap();
    let page = page as usize;
    bytes[20 * page..21 * page].fill(0x55);
    fs::write(&db, &bytes).unwrap();
    let id = s.backup(&[url(&db)]);

    let out = s.run(&["restore", &id, "--target", &format!("command:cat > '{}'", s.join("raw.db").display())]);
    assert_code(&out, 0, "raw restore");
    // Page 1 differs: the backup API bumps the copy's change counter and
    // schema cookie. Every other page is the file's.
    let raw = fs::read(s.join("raw.db")).unwrap();
    assert_eq!(raw.len(), bytes.len());
    assert!(raw[page..] == bytes[page..], "the stream is not the database's pages");

    let target = s.join("out.db");
    let out = restore(&s, &id, &target, &[]);
    assert_code(&out, 1, "restore of a damaged database");
    assert!(stderr(&out).contains("integrity_check"), "{}", stderr(&out));
    assert!(!target.exists(), "a failed restore left the target");
    let left: Vec<_> =
        entries(s.path()).into_iter().filter(|p| p.to_string_lossy().contains("arkiv-restore")).collect();
    assert!(left.is_empty(), "{left:?}");
}
