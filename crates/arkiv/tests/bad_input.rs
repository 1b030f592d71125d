//! What happens when things go wrong: wrong secrets, wrong places, damaged
//! data, killed processes, full disks, unreadable files, concurrent
//! writers, files Arkiv does not save. Each failure must be reported
//! clearly, with the right exit code, and must leave the repository usable.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn p(path: &Path) -> String {
    path.display().to_string()
}

fn small_source(s: &Scratch) -> PathBuf {
    let src = s.join("src");
    write_file(src.join("a.txt"), b"alpha\n");
    random_files(&src.join("data"), 5, 3, 200_000);
    src
}

/// A scratch handle on the same repository with another password.
fn with_password(s: &Scratch, password: &str) -> Scratch {
    let mut o = Scratch::uninitialised();
    o.repo = s.repo.clone();
    o.password = password.to_string();
    o
}

// ---- secrets and places ----

#[test]
fn wrong_password_exits_1_names_the_cause_and_the_repository_and_changes_nothing() {
    let s = Scratch::new();
    let src = small_source(&s);
    s.backup(&[src.as_os_str()]);
    let wrong = with_password(&s, "not the password");
    let before = listing(&s.repo);
    let target = s.join("restore-target");
    let new_src = s.join("new");
    write_file(new_src.join("f"), b"new data");
    let attempts: Vec<Vec<&OsStr>> = vec![
        vec![OsStr::new("snapshots")],
        vec![OsStr::new("backup"), new_src.as_os_str()],
        vec![OsStr::new("restore"), OsStr::new("latest"), OsStr::new("-t"), target.as_os_str()],
        vec![OsStr::new("check"), OsStr::new("--read-data")],
        vec![OsStr::new("key"), OsStr::new("add")],
        vec![OsStr::new("key"), OsStr::new("passwd")],
        vec![OsStr::new("cat"), OsStr::new("config")],
    ];
    for args in attempts {
        let mut c = wrong.cmd(&args);
        c.env("ARKIV_NEW_PASSWORD", "would be added");
        let out = run(c);
        let what = describe(&args);
        assert_code(&out, 1, &what);
        let err = stderr(&out);
        assert!(err.contains("wrong password or key file"), "`{what}` does not say the password is wrong: {err}");
        assert!(err.contains(&p(&s.repo)), "`{what}` does not name the repository: {err}");
        assert!(out.stdout.is_empty(), "`{what}` printed: {}", stdout(&out));
    }
    assert_eq!(listing(&s.repo), before, "a wrong password changed the repository");
    assert!(!target.exists(), "a refused restore created its target");
    // The right password still works and sees exactly one snapshot.
    assert_eq!(s.snapshots().len(), 1);
    assert_eq!(object_names(&s.repo.join("keys")).len(), 1);
}

#[test]
fn no_password_off_a_terminal_exits_1_and_says_how_to_give_one() {
    let s = Scratch::new();
    let mut c = bare_command();
    c.env("ARKIV_REPO", &s.repo).arg("snapshots");
    let out = run(c);
    assert_code(&out, 1, "snapshots (no password)");
    assert!(stderr(&out).contains("no password given: set ARKIV_PASSWORD"), "{}", stderr(&out));

    let mut c = bare_command();
    c.env("ARKIV_PASSWORD", "x").arg("snapshots");
    let out = run(c);
    assert_code(&out, 1, "snapshots (no repository)");
    assert!(stderr(&out).contains("no repository given: use --repo or set ARKIV_REPO"), "{}", stderr(&out));
}

#[test]
fn a_directory_that_is_not_a_repository_exits_1_points_to_arkiv_init_and_is_left_untouched() {
    let s = Scratch::uninitialised();
    let dir = s.join("just-a-directory");
    write_file(dir.join("notes.txt"), b"my notes");
    let before = listing(&dir);
    let mut not_repo = Scratch::uninitialised();
    not_repo.repo = dir.clone();
    for args in [vec!["snapshots"], vec!["check"], vec!["restore", "latest", "-t", "/nonexistent-target"]] {
        let out = not_repo.run(&args);
        assert_code(&out, 1, &args.join(" "));
        let err = stderr(&out);
        assert!(err.contains(&format!("{} is not an Arkiv repository", p(&dir))), "{err}");
        assert!(err.contains("arkiv init"), "{err}");
    }
    assert_eq!(listing(&dir), before, "opening a non-repository changed it");
}

#[test]
fn a_missing_repository_path_exits_1_points_to_arkiv_init_and_is_not_created() {
    let s = Scratch::uninitialised();
    let mut missing = Scratch::uninitialised();
    missing.repo = s.join("typo/repo");
    let out = missing.run(&["snapshots"]);
    assert_code(&out, 1, "snapshots (missing repository)");
    let err = stderr(&out);
    assert!(err.contains("is not an Arkiv repository"), "{err}");
    assert!(err.contains("arkiv init"), "{err}");
    assert!(err.contains(&p(&missing.repo)), "{err}");
    assert!(!s.join("typo").exists(), "opening a missing repository created {}", s.join("typo").display());

    // A plain file is not a repository either.
    let file = s.join("a-file");
    write_file(&file, b"not a directory");
    missing.repo = file.clone();
    let out = missing.run(&["snapshots"]);
    assert_code(&out, 1, "snapshots (a file as repository)");
    assert!(stderr(&out).contains("is not an Arkiv repository"), "{}", stderr(&out));
    assert_eq!(fs::read(&file).unwrap(), b"not a directory");
}

#[test]
fn a_repository_with_a_newer_format_version_is_refused_with_advice_to_upgrade() {
    let s = Scratch::new();
    let src = small_source(&s);
    s.backup(&[src.as_os_str()]);
    let config = s.repo.join("config");
    let mut bytes = fs::read(&config).unwrap();
    assert_eq!(&bytes[..4], b"ARKV");
    assert_eq!(bytes[5], 1, "byte 5 of config is the format version");
    bytes[5] = 2;
    fs::write(&config, &bytes).unwrap();
    let before = listing(&s.repo);
    for args in [
        vec![OsStr::new("snapshots")],
        vec![OsStr::new("backup"), src.as_os_str()],
        vec![OsStr::new("check"), OsStr::new("--read-data")],
    ] {
        let out = s.run(&args);
        let what = describe(&args);
        assert_code(&out, 1, &what);
        let err = stderr(&out);
        assert!(err.contains("repository format version 2 is newer than this arkiv understands"), "`{what}`: {err}");
        assert!(err.contains("upgrade arkiv"), "`{what}`: {err}");
        assert!(err.contains("config"), "`{what}` does not name the object: {err}");
    }
    assert_eq!(listing(&s.repo), before);
    // The version is authenticated: setting it back makes it open again.
    bytes[5] = 1;
    fs::write(&config, &bytes).unwrap();
    assert_eq!(s.snapshots().len(), 1);
}

// ---- damaged data ----

struct DamagedRepo {
    s: Scratch,
    src: PathBuf,
    snapshot: String,
    pack: String,
    blob: String,
    /// Source files that hold the damaged blob.
    hit: BTreeSet<PathBuf>,
}

/// A repository with one snapshot, then one byte flipped in the middle of
/// its largest pack (a data pack).
fn damaged_repo() -> DamagedRepo {
    let s = Scratch::new();
    let src = s.join("src");
    random_files(&src.join("small"), 21, 8, 100_000);
    random_files(&src.join("large"), 22, 3, 1_500_000);
    write_file(src.join("note.txt"), b"a short note\n");
    let snapshot = s.backup(&[src.as_os_str()]);

    let (pack_path, size) = s.packs().into_iter().max_by_key(|(_, n)| *n).expect("a pack");
    let pack = pack_path.file_name().unwrap().to_string_lossy().into_owned();
    let mid = size / 2;
    // Which blob holds the middle byte (the index says, without reading
    // the pack).
    let listed = s.json(&["cat", "pack", &pack]);
    let blob = listed["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| {
            let off = b["offset"].as_u64().unwrap();
            off <= mid && mid < off + b["length"].as_u64().unwrap()
        })
        .unwrap_or_else(|| panic!("no blob of pack {pack} covers byte {mid}: {listed}"))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let entries = s.json(&["ls", &snapshot]);
    let hit: BTreeSet<PathBuf> = entries["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["content"].as_array().is_some_and(|c| c.iter().any(|b| b == blob.as_str())))
        .map(|e| PathBuf::from(e["path"].as_str().unwrap()))
        .collect();
    assert!(!hit.is_empty(), "blob {blob} belongs to no file");

    let mut bytes = fs::read(&pack_path).unwrap();
    bytes[mid as usize] ^= 0x01;
    fs::write(&pack_path, &bytes).unwrap();
    DamagedRepo { s, src, snapshot, pack, blob, hit }
}

#[test]
fn a_flipped_byte_in_a_data_pack_fails_check_read_data_naming_the_pack_and_the_blob() {
    let d = damaged_repo();
    let out = d.s.run(&["check", "--read-data"]);
    assert_code(&out, 1, "check --read-data");
    let err = stderr(&out);
    assert!(
        err.contains(&format!("arkiv: error: pack {}: blob {}: ", d.pack, d.blob)),
        "the damaged blob is not named: {err}"
    );
    assert!(err.contains(&format!("pack {}: contents do not match its name", d.pack)), "{err}");
    assert!(err.contains(&format!("check found 2 error(s) in {}", p(&d.s.repo))), "{err}");

    let out = d.s.run(&["--json", "check", "--read-data"]);
    assert_code(&out, 1, "check --read-data --json");
    let v = parse_json(&out);
    let errors: Vec<&str> = v["errors"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors.iter().all(|e| e.contains(&d.pack)), "{errors:#?}");
    assert_eq!(errors.iter().filter(|e| e.contains(&d.blob)).count(), 1, "{errors:#?}");
}

#[test]
fn check_without_read_data_does_not_read_packs_so_a_flipped_byte_passes_it() {
    // Structure checks compare pack sizes with the index; a flipped byte
    // keeps the size, so only --read-data can see it.
    let d = damaged_repo();
    let out = d.s.ok(&["check"]);
    assert!(stdout(&out).contains("read 0 packs"), "{}", stdout(&out));
    assert!(stdout(&out).contains("no errors were found"), "{}", stdout(&out));
    // A subset that covers every pack does read it.
    let out = d.s.run(&["check", "--read-data-subset", "100%"]);
    assert_code(&out, 1, "check --read-data-subset 100%");
    assert!(stderr(&out).contains(&d.blob), "{}", stderr(&out));
}

#[test]
fn restore_from_a_damaged_pack_restores_every_intact_file_names_the_damaged_and_exits_3() {
    let d = damaged_repo();
    let target = d.s.join("out");
    let out = d.s.run(&[OsStr::new("restore"), OsStr::new(&d.snapshot), OsStr::new("-t"), target.as_os_str()]);
    assert_code(&out, 3, "restore (damaged pack)");
    let err = stderr(&out);
    for f in &d.hit {
        let at = restored(&target, f);
        assert!(err.contains(&format!("arkiv: damaged: {}: ", p(&at))), "{} not named as damaged: {err}", at.display());
    }
    assert!(
        err.contains(&format!("restore is partial: {} file(s) could not be restored intact", d.hit.len())),
        "{err}"
    );
    assert!(err.contains(&d.blob) || err.contains(&d.pack), "the cause is not named: {err}");

    // Every other file is byte-identical.
    let expected = tree_of(&d.src);
    let got = tree_of(&restored(&target, &d.src));
    let mut intact = 0;
    for (rel, want) in &expected {
        let abs = d.src.join(rel);
        if d.hit.contains(&abs) {
            continue;
        }
        assert_eq!(got.get(rel), Some(want), "{} differs", rel.display());
        intact += 1;
    }
    assert!(intact >= 12, "only {intact} entries checked");

    let out = d.s.run(&[
        OsStr::new("--json"),
        OsStr::new("restore"),
        OsStr::new(&d.snapshot),
        OsStr::new("-t"),
        d.s.join("out2").as_os_str(),
    ]);
    assert_code(&out, 3, "restore --json (damaged pack)");
    let v = parse_json(&out);
    let damaged: BTreeSet<PathBuf> =
        v["result"]["damaged"].as_array().unwrap().iter().map(|x| PathBuf::from(x["path"].as_str().unwrap())).collect();
    let want: BTreeSet<PathBuf> = d.hit.iter().map(|f| restored(&d.s.join("out2"), f)).collect();
    assert_eq!(damaged, want);
}

// ---- interrupted backups ----

#[test]
fn a_backup_killed_with_sigkill_at_any_moment_leaves_a_repository_that_checks_restores_and_backs_up() {
    const FILES: usize = 12;
    const SIZE: usize = 5_000_000; // 60 MB a round
    let s = Scratch::new();
    let backup_of = |src: &Path| s.cmd(&[OsStr::new("backup"), OsStr::new("-q"), src.as_os_str()]);

    // A first, complete backup of the same size says how long one takes
    // here, so the kills land at moments spread across a backup however
    // fast the machine and the code are (at least the first kill comes
    // within 50 ms, before or while the index loads).
    let first = s.join("big0");
    random_files(&first, 100, FILES, SIZE);
    let t = Instant::now();
    let first_id = s.backup(&[first.as_os_str()]);
    let full = t.elapsed();
    let mut delays = vec![Duration::from_millis(50).min(full / 10)];
    delays.extend([0.3, 0.6, 0.9].map(|f| full.mul_f64(f)));

    // Every snapshot taken so far, with the source it must restore to.
    let mut completed: Vec<(String, PathBuf)> = vec![(first_id, first)];
    let mut interrupted = 0;
    for (round, delay) in delays.iter().enumerate() {
        // New data every round, so every backup has packs to write.
        let big = s.join(format!("big{}", round + 1));
        random_files(&big, 101 + round as u64, FILES, SIZE);
        let before = s.snapshots().len();
        let mut child = backup_of(&big).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(*delay);
        let running = child.try_wait().unwrap().is_none();
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        interrupted += running as usize;
        eprintln!(
            "kill {round} at {delay:?} of a {full:?} backup: {}",
            if running { "interrupted it" } else { "came after it finished" }
        );

        // A backup killed before its end leaves no snapshot (it may have
        // just written it when the kill came); one that finished left one.
        let added = s.snapshots().len() - before;
        assert!(added <= 1 && (running || added == 1), "{added} snapshots after a kill at {delay:?}");

        let v = s.json(&["check", "--read-data"]);
        assert_eq!(v["errors"], serde_json::json!([]), "after a kill at {delay:?}");

        // The first and the latest complete snapshots restore intact.
        let mut probe = vec![&completed[0]];
        if completed.len() > 1 {
            probe.push(completed.last().unwrap());
        }
        for (i, (id, src)) in probe.into_iter().enumerate() {
            let t = s.restore(id, &format!("r{round}-{i}"));
            assert_same_tree(src, &restored(&t, src));
            fs::remove_dir_all(&t).unwrap();
        }

        // The interrupted backup, run again, completes.
        completed.push((s.backup(&[big.as_os_str()]), big));
    }
    assert!(
        interrupted >= 2,
        "only {interrupted} of {} kills hit a running backup: the test did not test much",
        delays.len()
    );
    // Every snapshot but the last was restored after a later kill; the
    // last one restores too, and every blob of every pack still verifies.
    let (id, src) = completed.last().unwrap();
    let t = s.restore(id, "last");
    assert_same_tree(src, &restored(&t, src));
    assert_eq!(s.json(&["check", "--read-data"])["errors"], serde_json::json!([]));
}

// ---- a full disk ----

/// Unmounts on drop, so a failing test does not leave a mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.0).status().is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

#[test]
fn a_full_disk_during_backup_exits_1_with_no_space_left_naming_a_path_and_the_repository_stays_usable() {
    let mut s = Scratch::uninitialised();
    let mnt = s.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let out = Command::new("mount").args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"]).arg(&mnt).output();
    let mounted = matches!(&out, Ok(o) if o.status.success());
    if !mounted {
        let why = match &out {
            Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
            Err(e) => e.to_string(),
        };
        if std::env::var_os("ARKIV_TEST_NO_MOUNT").is_some() {
            eprintln!("skipping (ARKIV_TEST_NO_MOUNT is set): cannot mount a tmpfs: {why}");
            return;
        }
        panic!(
            "cannot mount a small tmpfs at {} ({why}): this test needs root; \
             set ARKIV_TEST_NO_MOUNT=1 to skip it",
            mnt.display()
        );
    }
    let _unmount = Mounted(mnt.clone());
    s.repo = mnt.join("repo");
    let mut init = vec!["init"];
    init.extend(FAST_KDF);
    s.ok(&init);

    let first = s.join("first");
    random_files(&first, 31, 3, 100_000);
    let first_id = s.backup(&[first.as_os_str()]);

    let big = s.join("big");
    random_files(&big, 32, 3, 10_000_000);
    let out = s.run(&[OsStr::new("backup"), big.as_os_str()]);
    assert_code(&out, 1, "backup (30 MB into an 8 MB file system)");
    let err = stderr(&out);
    assert!(err.contains("No space left on device"), "the cause is not named: {err}");
    assert!(err.contains(&p(&s.repo)), "the failing path is not named: {err}");
    assert_eq!(s.snapshots().len(), 1, "a failed backup left a snapshot");

    // Nothing half-written stays behind to keep the disk full: no staging
    // file, and no pack that no index names. A pack that landed whole
    // before the disk filled (on a loaded machine one can) is indexed and
    // kept, so a re-run uploads only what is missing.
    let files = listing(&s.repo);
    let staged: Vec<_> = files.iter().filter(|(p, v)| !v.0 && p.starts_with("tmp")).collect();
    assert!(staged.is_empty(), "staging files left after the failed backup: {staged:?}");

    let v = s.json(&["check", "--read-data"]);
    assert_eq!(v["errors"], serde_json::json!([]));
    assert_eq!(v["warnings"], serde_json::json!([]), "packs in no index were left behind: {v}");
    let t = s.restore(&first_id, "first-out");
    assert_same_tree(&first, &restored(&t, &first));

    // A smaller source fits.
    let small = s.join("small");
    random_files(&small, 33, 4, 250_000);
    let id = s.backup(&[small.as_os_str()]);
    let t = s.restore(&id, "small-out");
    assert_same_tree(&small, &restored(&t, &small));
    assert_eq!(s.json(&["check"])["errors"], serde_json::json!([]));
}

// ---- files that cannot be read ----

fn chown_tree(root: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(root, Some(uid), Some(gid)).unwrap();
    if fs::symlink_metadata(root).unwrap().is_dir() {
        for e in fs::read_dir(root).unwrap() {
            chown_tree(&e.unwrap().path(), uid, gid);
        }
    }
}

#[test]
fn an_unreadable_file_makes_the_backup_partial_with_exit_3_and_is_listed_as_skipped_with_error() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::new();
    let src = s.join("src");
    write_file(src.join("readable.txt"), b"fine");
    write_file(src.join("secret.key"), b"cannot read me");
    write_file(src.join("closed/inside"), b"unseen");
    // Root reads anything: the backup runs as `nobody`, who owns the data
    // and the repository but has no read permission on these two.
    fs::set_permissions(src.join("secret.key"), fs::Permissions::from_mode(0o000)).unwrap();
    fs::set_permissions(src.join("closed"), fs::Permissions::from_mode(0o000)).unwrap();
    let out = backup_unprivileged(&s, &[src.as_os_str()]);
    // Let the temporary directory be removed afterwards.
    let restore_perms = || {
        fs::set_permissions(src.join("secret.key"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(src.join("closed"), fs::Permissions::from_mode(0o700)).unwrap();
    };
    restore_perms();
    assert_code(&out, 3, "backup (with unreadable files)");
    let err = stderr(&out);
    assert!(err.contains("backup is partial: 2 item(s) could not be read"), "{err}");
    assert!(err.contains(&p(&src.join("secret.key"))), "{err}");
    assert!(err.contains("Permission denied"), "{err}");

    let snaps = s.snapshots();
    assert_eq!(snaps.len(), 1, "a partial backup still saves a snapshot");
    let skipped = snaps[0]["skipped"].as_array().unwrap();
    let by_path = |f: &Path| -> &Value {
        skipped
            .iter()
            .find(|k| k["path"] == p(f).as_str())
            .unwrap_or_else(|| panic!("{} not in skipped: {skipped:#?}", f.display()))
    };
    assert_eq!(skipped.len(), 2, "{skipped:#?}");
    let k = by_path(&src.join("secret.key"));
    assert_eq!(k["error"], true);
    assert!(k["reason"].as_str().unwrap().contains("Permission denied"), "{k}");
    assert_eq!(by_path(&src.join("closed"))["error"], true);
    let listed = stdout(&s.ok(&["snapshots"]));
    assert!(listed.contains("(partial)"), "{listed}");

    // What could be read restores.
    let t = s.restore("latest", "out");
    let dst = restored(&t, &src);
    assert_eq!(fs::read(dst.join("readable.txt")).unwrap(), b"fine");
    assert!(!dst.join("secret.key").exists());
    assert!(dst.join("closed").is_dir());
    assert_eq!(fs::read_dir(dst.join("closed")).unwrap().count(), 0);
}

/// `arkiv backup ARGS` as a user who cannot read what root could: `nobody`
/// when the tests run as root (the scratch area is handed to it).
fn backup_unprivileged(s: &Scratch, args: &[&OsStr]) -> std::process::Output {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut c = if root {
        chown_tree(s.path(), 65534, 65534);
        let mut c = Command::new("runuser");
        c.args(["-u", "nobody", "--", arkiv_bin()]);
        c
    } else {
        Command::new(arkiv_bin())
    };
    c.env_remove("RUST_LOG")
        .env("ARKIV_REPO", &s.repo)
        .env("ARKIV_PASSWORD", &s.password)
        .stdin(Stdio::null())
        .arg("backup")
        .args(args);
    run(c)
}

#[test]
fn an_excluded_file_that_cannot_be_stated_is_left_out_without_making_the_backup_partial() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::new();
    let src = s.join("src");
    write_file(src.join("kept.txt"), b"kept");
    write_file(src.join("listable/cache.bin"), b"excluded");
    // Readable but not searchable: its names can be listed, but nothing in
    // it can be stat'ed.
    fs::set_permissions(src.join("listable"), fs::Permissions::from_mode(0o444)).unwrap();
    let out = backup_unprivileged(&s, &[OsStr::new("--exclude"), OsStr::new("cache.bin"), src.as_os_str()]);
    fs::set_permissions(src.join("listable"), fs::Permissions::from_mode(0o755)).unwrap();
    assert_code(&out, 0, "backup --exclude cache.bin (an unstat-able excluded file)");
    let snaps = s.snapshots();
    assert_eq!(snaps.len(), 1);
    let skipped = snaps[0]["skipped"].as_array().map_or(0, |a| a.len());
    assert_eq!(skipped, 0, "nothing is skipped: {}", snaps[0]);
}

// ---- concurrency ----

#[test]
fn two_backups_started_at_the_same_moment_into_one_repository_both_succeed_and_both_restore() {
    let s = Scratch::new();
    let a = s.join("a");
    let b = s.join("b");
    random_files(&a, 41, 4, 2_000_000);
    random_files(&b, 42, 4, 2_000_000);
    // The same bytes on both sides: both writers race to store them.
    let shared = random_bytes(43, 3_000_000);
    write_file(a.join("shared"), &shared);
    write_file(b.join("shared"), &shared);
    let spawn = |dir: &Path| {
        s.cmd(&[OsStr::new("--json"), OsStr::new("backup"), dir.as_os_str()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (ca, cb) = (spawn(&a), spawn(&b));
    let (oa, ob) = (finish(ca), finish(cb));
    assert_code(&oa, 0, "backup a (concurrent)");
    assert_code(&ob, 0, "backup b (concurrent)");
    let (ida, idb) =
        (parse_json(&oa)["id"].as_str().unwrap().to_string(), parse_json(&ob)["id"].as_str().unwrap().to_string());
    assert_eq!(s.snapshots().len(), 2);
    let ta = s.restore(&ida, "out-a");
    let tb = s.restore(&idb, "out-b");
    assert_same_tree(&a, &restored(&ta, &a));
    assert_same_tree(&b, &restored(&tb, &b));
    assert_eq!(s.json(&["check", "--read-data"])["errors"], serde_json::json!([]));
}

// ---- files Arkiv does not save ----

#[test]
fn a_socket_or_fifo_in_the_source_is_skipped_with_a_warning_and_the_backup_is_not_partial() {
    let s = Scratch::new();
    let src = s.join("src");
    write_file(src.join("file"), b"kept");
    let sock = src.join("app.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let fifo = src.join("pipe");
    let c = std::ffi::CString::new(p(&fifo)).unwrap();
    // SAFETY: a valid path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    assert!(is_special(&sock) && is_special(&fifo));

    let out = s.run(&[OsStr::new("backup"), src.as_os_str()]);
    assert_code(&out, 0, "backup (socket and fifo in the source)");
    let err = stderr(&out);
    assert!(err.contains(&format!("skipped {}: socket not saved", p(&sock))), "{err}");
    assert!(err.contains(&format!("skipped {}: named pipe not saved", p(&fifo))), "{err}");
    assert!(!err.contains("partial"), "{err}");

    let snap = &s.snapshots()[0];
    let skipped = snap["skipped"].as_array().unwrap();
    assert_eq!(
        skipped,
        &vec![
            serde_json::json!({"path": p(&sock), "reason": "socket not saved", "error": false}),
            serde_json::json!({"path": p(&fifo), "reason": "named pipe not saved", "error": false}),
        ]
    );
    let t = s.restore("latest", "out");
    let dst = restored(&t, &src);
    let names: Vec<_> = fs::read_dir(&dst).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("file")]);
}
