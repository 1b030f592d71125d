//! `copy` and `replication-status` between local repositories, driven
//! through the real binary. Every repository here has its own password, so
//! its own keys and chunker: copies are chunked again and deduplicated
//! against what the destination already holds.

mod common;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::thread::sleep;
use std::time::Duration;

use common::*;
use serde_json::Value;

// ---- helpers ----

/// A new repository opened by `password`, with the password also in a file
/// (`password.txt` in its scratch area) for `--from-password-file` and
/// `--to-password-file`.
fn repository(password: &str) -> Scratch {
    let mut s = Scratch::uninitialised();
    s.password = password.to_string();
    let mut args = vec!["init"];
    args.extend(FAST_KDF);
    s.ok(&args);
    write_file(password_file(&s), format!("{password}\n").as_bytes());
    s
}

fn password_file(s: &Scratch) -> PathBuf {
    s.join("password.txt")
}

/// `arkiv ARGS --from A --to B`, each side with its own password file and
/// no credentials in the environment.
fn between(from: &Scratch, to: &Scratch, args: &[&str]) -> Output {
    between_with(from, &password_file(from), to, &password_file(to), args)
}

fn between_with(from: &Scratch, from_pw: &Path, to: &Scratch, to_pw: &Path, args: &[&str]) -> Output {
    let mut c = bare_command();
    c.args(args);
    let pair: [&OsStr; 8] = [
        "--from".as_ref(),
        from.repo.as_os_str(),
        "--from-password-file".as_ref(),
        from_pw.as_os_str(),
        "--to".as_ref(),
        to.repo.as_os_str(),
        "--to-password-file".as_ref(),
        to_pw.as_os_str(),
    ];
    c.args(pair);
    run(c)
}

/// `--json copy ARGS` from `from` to `to`; insists on success.
fn copy(from: &Scratch, to: &Scratch, args: &[&str]) -> Value {
    let mut a = vec!["--json", "copy"];
    a.extend(args);
    let out = between(from, to, &a);
    assert_code(&out, 0, &describe(&a));
    parse_json(&out)
}

/// `--json replication-status` of `first` against `second`: the `status`
/// part.
fn status(first: &Scratch, second: &Scratch) -> Value {
    let out = between(first, second, &["--json", "replication-status"]);
    assert_code(&out, 0, "--json replication-status");
    let v = parse_json(&out);
    assert_eq!(v["first"].as_str().map(PathBuf::from), Some(first.repo.clone()), "{v}");
    assert_eq!(v["second"].as_str().map(PathBuf::from), Some(second.repo.clone()), "{v}");
    v["status"].clone()
}

/// The text `replication-status` prints.
fn status_text(first: &Scratch, second: &Scratch) -> String {
    let out = between(first, second, &["replication-status"]);
    assert_code(&out, 0, "replication-status");
    stdout(&out)
}

fn missing(st: &Value) -> (u64, u64) {
    (st["missing_in_first"].as_u64().unwrap(), st["missing_in_second"].as_u64().unwrap())
}

/// Backs up `src` into `s`, keeping a copy of what `src` held in
/// `expect/<id>` of `s`'s scratch area; returns the snapshot id.
fn backup_kept(s: &Scratch, src: &Path) -> String {
    let id = s.backup(&[src.as_os_str()]);
    copy_tree(src, &s.join("expect").join(&id));
    id
}

/// Restores snapshot `id` of `s` into a new directory `name` and compares
/// it with the copy kept for `original` in `kept_by`'s scratch area.
fn assert_restores_as(s: &Scratch, id: &str, name: &str, src: &Path, kept_by: &Scratch, original: &str) {
    let t = s.restore(id, name);
    assert_same_tree(&kept_by.join("expect").join(original), &restored(&t, src));
}

/// Snapshots of `s` keyed by identity: `original` for a copy, else the id.
fn by_identity(s: &Scratch) -> BTreeMap<String, Value> {
    s.snapshots()
        .into_iter()
        .map(|v| {
            let identity = v.get("original").unwrap_or(&v["id"]).as_str().unwrap().to_string();
            (identity, v)
        })
        .collect()
}

fn time_of(snapshot: &Value) -> chrono::DateTime<chrono::Utc> {
    snapshot["time"].as_str().unwrap().parse().unwrap()
}

/// A source of 2 MiB in eight files plus one small file per version.
fn source(s: &Scratch) -> PathBuf {
    let src = s.join("src");
    random_files(&src.join("big"), 1, 8, 256 * 1024);
    src
}

fn add_version(src: &Path, i: u64) {
    write_file(src.join(format!("note{i}.txt")), format!("version {i}\n").as_bytes());
}

// ---- tests ----

#[test]
fn copy_between_repositories_with_different_passwords_copies_each_snapshot_once() {
    let a = repository("the password of A");
    let b = repository("B has another one");
    let src = source(&a);
    let mut ids = Vec::new();
    for i in 0..3 {
        add_version(&src, i);
        ids.push(backup_kept(&a, &src));
    }

    // Before: B lacks all three.
    let st = status(&a, &b);
    assert_eq!(missing(&st), (0, 3), "{st}");
    assert_eq!((&st["lag_secs"], &st["newest_common"]), (&Value::Null, &Value::Null), "{st}");
    let entries = st["entries"].as_array().unwrap();
    let in_first: Vec<&str> = entries.iter().map(|e| e["in_first"].as_str().unwrap()).collect();
    assert_eq!(in_first, ids.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(entries.iter().all(|e| e["in_second"].is_null()), "{st}");
    let text = status_text(&a, &b);
    assert_eq!(text.matches("MISSING").count(), 3, "{text}");
    assert!(text.contains("missing in A: 0, missing in B: 3"), "{text}");
    assert!(text.contains("no snapshot is in both"), "{text}");

    // The copy.
    let r = copy(&a, &b, &[]);
    let copied = r["copied"].as_array().unwrap();
    assert_eq!(copied.len(), 3, "{r}");
    assert_eq!(r["already_present"], 0);
    assert_eq!(r["same_chunking"], false, "different passwords, different keys: {r}");
    assert!(r["write"]["bytes_stored"].as_u64().unwrap() >= 2 << 20, "{r}");
    let in_b = by_identity(&b);
    assert_eq!(in_b.len(), 3);
    for (i, id) in ids.iter().enumerate() {
        let snap = in_b.get(id).unwrap_or_else(|| panic!("no copy of {id} in B: {in_b:?}"));
        assert_eq!(copied[i][0].as_str(), Some(id.as_str()), "{r}");
        assert_eq!(copied[i][1], snap["id"], "{r}");
        assert_eq!(snap["paths"], serde_json::json!([src.display().to_string()]));
        assert!(snap.get("parent").is_none(), "a copy names a parent of another repository: {snap}");
        assert_restores_as(&b, snap["id"].as_str().unwrap(), &format!("b{i}"), &src, &a, id);
    }

    // Again: nothing to do.
    let r = copy(&a, &b, &[]);
    assert_eq!(r["copied"], serde_json::json!([]), "{r}");
    assert_eq!(r["already_present"], 3, "{r}");
    assert_eq!(r["write"]["blobs_new"], 0, "{r}");
    let st = status(&a, &b);
    assert_eq!(missing(&st), (0, 0), "{st}");
    assert_eq!(st["lag_secs"], 0, "{st}");
    let newest: chrono::DateTime<chrono::Utc> = st["newest_common"].as_str().unwrap().parse().unwrap();
    assert_eq!(newest, time_of(&a.snapshots()[2]));

    // One more backup, a second later: B lags by the time between the two.
    sleep(Duration::from_millis(1100));
    add_version(&src, 3);
    let fourth = backup_kept(&a, &src);
    let st = status(&a, &b);
    assert_eq!(missing(&st), (0, 1), "{st}");
    let snaps = a.snapshots();
    let lag = (time_of(&snaps[3]) - time_of(&snaps[2])).num_seconds();
    assert!(lag >= 1);
    assert_eq!(st["lag_secs"], lag, "{st}");
    let text = status_text(&a, &b);
    assert_eq!(text.matches("MISSING").count(), 1, "{text}");
    assert!(text.contains(&format!("B lags A by {lag}s")), "{text}");
    // Seen from B, A is complete.
    assert_eq!(missing(&status(&b, &a)), (1, 0));

    // Only the new snapshot travels, and only its new bytes are stored.
    let r = copy(&a, &b, &[]);
    let copied = r["copied"].as_array().unwrap();
    assert_eq!(copied.len(), 1, "{r}");
    assert_eq!(copied[0][0].as_str(), Some(fourth.as_str()));
    assert_eq!(r["already_present"], 3, "{r}");
    let total = snaps[3]["summary"]["total_bytes"].as_u64().unwrap();
    let stored = r["write"]["bytes_stored"].as_u64().unwrap();
    assert!(stored * 20 < total, "copying one more small file stored {stored} of {total} bytes: {r}");
    assert_restores_as(&b, copied[0][1].as_str().unwrap(), "b3", &src, &a, &fourth);
    let st = status(&a, &b);
    assert_eq!(missing(&st), (0, 0), "{st}");
    assert_eq!(st["lag_secs"], 0, "{st}");
    b.ok(&["check", "--read-data"]);
    a.ok(&["check", "--read-data"]);
}

#[test]
fn copy_of_one_snapshot_by_id_prefix_copies_only_that_one() {
    let a = repository("first");
    let b = repository("second");
    let src = source(&a);
    let mut ids = Vec::new();
    for i in 0..3 {
        add_version(&src, i);
        ids.push(backup_kept(&a, &src));
    }
    let before = listing(&b.repo);

    // An unknown prefix copies nothing.
    let out = between(&a, &b, &["copy", "ffffffffffff"]);
    assert_code(&out, 1, "copy ffffffffffff");
    assert!(stderr(&out).contains("ffffffffffff"), "{}", stderr(&out));
    assert_eq!(listing(&b.repo), before);

    let r = copy(&a, &b, &[&ids[1][..10]]);
    let copied = r["copied"].as_array().unwrap();
    assert_eq!(copied.len(), 1, "{r}");
    assert_eq!(copied[0][0].as_str(), Some(ids[1].as_str()));
    let in_b = by_identity(&b);
    assert_eq!(in_b.keys().collect::<Vec<_>>(), [&ids[1]]);
    assert_restores_as(&b, copied[0][1].as_str().unwrap(), "b1", &src, &a, &ids[1]);

    let st = status(&a, &b);
    assert_eq!(missing(&st), (0, 2), "{st}");
    let present: Vec<bool> = st["entries"].as_array().unwrap().iter().map(|e| !e["in_second"].is_null()).collect();
    assert_eq!(present, [false, true, false], "{st}");
    // The newest common snapshot is the middle one; B lags by the newest.
    let snaps = a.snapshots();
    assert_eq!(st["lag_secs"], (time_of(&snaps[2]) - time_of(&snaps[1])).num_seconds(), "{st}");

    // Copying it again by its full id: already there.
    let r = copy(&a, &b, &[&ids[1]]);
    assert_eq!((r["copied"].as_array().unwrap().len(), r["already_present"].as_u64()), (0, Some(1)), "{r}");
}

#[test]
fn copies_of_copies_keep_the_identity_of_the_first_snapshot() {
    let a = repository("alpha");
    let b = repository("bravo");
    let c = repository("charlie");
    let src = source(&a);
    let mut ids = Vec::new();
    for i in 0..2 {
        add_version(&src, i);
        ids.push(backup_kept(&a, &src));
    }
    copy(&a, &b, &[]);
    let r = copy(&b, &c, &[]);
    assert_eq!(r["copied"].as_array().unwrap().len(), 2, "{r}");

    // C's copies name A's snapshots as their original, not B's copies.
    let in_c = by_identity(&c);
    assert_eq!(in_c.keys().cloned().collect::<Vec<_>>(), {
        let mut v = ids.clone();
        v.sort();
        v
    });
    let b_ids: Vec<String> = b.snapshots().iter().map(|v| v["id"].as_str().unwrap().to_string()).collect();
    for (i, id) in ids.iter().enumerate() {
        let snap = &in_c[id];
        assert_eq!(snap["original"].as_str(), Some(id.as_str()));
        assert!(!b_ids.contains(&snap["id"].as_str().unwrap().to_string()));
        assert_restores_as(&c, snap["id"].as_str().unwrap(), &format!("c{i}"), &src, &a, id);
    }
    for (x, y) in [(&a, &c), (&c, &a), (&b, &c)] {
        let st = status(x, y);
        assert_eq!(missing(&st), (0, 0), "{st}");
        assert_eq!(st["entries"].as_array().unwrap().len(), 2, "{st}");
    }
    // A to C directly: C already has them.
    let r = copy(&a, &c, &[]);
    assert_eq!((r["copied"].as_array().unwrap().len(), r["already_present"].as_u64()), (0, Some(2)), "{r}");

    // A snapshot of C's own is missing from A.
    let own = c.join("own");
    write_file(own.join("x"), b"only in C\n");
    c.backup(&[own.as_os_str()]);
    let st = status(&a, &c);
    assert_eq!(missing(&st), (1, 0), "{st}");
    assert!(status_text(&a, &c).contains("missing in A: 1, missing in B: 0"));
}

#[test]
fn copy_into_a_repository_through_an_append_only_key() {
    let a = repository("source password");
    let b = repository("owner of B");
    let ao = b.join("append-only.txt");
    write_file(&ao, b"may only add\n");
    let mut add: Vec<OsString> = vec!["key".into(), "add".into(), "--append-only".into(), "--new-password-file".into()];
    add.push(ao.clone().into());
    add.extend(FAST_KDF.iter().map(OsString::from));
    b.ok(&add);

    let src = source(&a);
    add_version(&src, 0);
    let first = backup_kept(&a, &src);
    let out = between_with(&a, &password_file(&a), &b, &ao, &["--json", "copy"]);
    assert_code(&out, 0, "copy --to B (append-only key)");
    let r = parse_json(&out);
    assert_eq!(r["copied"].as_array().unwrap().len(), 1, "{r}");
    let copy_id = r["copied"][0][1].as_str().unwrap().to_string();
    assert_restores_as(&b, &copy_id, "b0", &src, &a, &first);

    // More later, still through the append-only key: only the new one.
    add_version(&src, 1);
    let second = backup_kept(&a, &src);
    let out = between_with(&a, &password_file(&a), &b, &ao, &["--json", "copy"]);
    assert_code(&out, 0, "copy --to B (append-only key, again)");
    let r = parse_json(&out);
    assert_eq!((r["copied"].as_array().unwrap().len(), r["already_present"].as_u64()), (1, Some(1)), "{r}");
    assert_eq!(r["copied"][0][0].as_str(), Some(second.as_str()));
    let out = between_with(&a, &password_file(&a), &b, &ao, &["--json", "replication-status"]);
    assert_code(&out, 0, "replication-status (append-only key)");
    assert_eq!(missing(&parse_json(&out)["status"]), (0, 0));

    // The key still may not remove what it copied.
    let mut forget = b.cmd(&["forget", &copy_id]);
    forget.env("ARKIV_PASSWORD", "may only add");
    let out = run(forget);
    assert_code(&out, 1, "forget (append-only key)");
    assert!(stderr(&out).contains("append-only"), "{}", stderr(&out));
    assert_eq!(b.snapshots().len(), 2);
    b.ok(&["check", "--read-data"]);
}

#[test]
fn copy_takes_its_source_from_the_global_options_and_refuses_bad_pairs() {
    let a = repository("aaaa");
    let b = repository("bbbb");
    let src = source(&a);
    add_version(&src, 0);
    let id = backup_kept(&a, &src);

    // --from defaults to --repo, and its credential to the global one.
    let mut c = bare_command();
    c.arg("--repo").arg(&a.repo).arg("--password-file").arg(password_file(&a));
    c.arg("copy").arg("--to").arg(&b.repo).arg("--to-password-file").arg(password_file(&b));
    let out = run(c);
    assert_code(&out, 0, "--repo A copy --to B");
    assert!(stdout(&out).contains("1 copied, 0 already present"), "{}", stdout(&out));
    assert!(by_identity(&b).contains_key(&id));

    // A repository with itself.
    let out = between(&a, &a, &["copy"]);
    assert_code(&out, 1, "copy --from A --to A");
    assert!(stderr(&out).contains("same repository"), "{}", stderr(&out));

    // The wrong password for the destination: nothing is written.
    let before = listing(&b.repo);
    add_version(&src, 1);
    backup_kept(&a, &src);
    let out = between_with(&a, &password_file(&a), &b, &password_file(&a), &["copy"]);
    assert_code(&out, 1, "copy with A's password for B");
    assert!(stderr(&out).contains("wrong password"), "{}", stderr(&out));
    assert_eq!(listing(&b.repo), before);

    // No --to is bad usage.
    let mut c = bare_command();
    c.arg("--repo").arg(&a.repo).arg("--password-file").arg(password_file(&a)).arg("copy");
    assert_code(&run(c), 2, "copy without --to");
}

#[test]
fn a_replica_made_with_copy_chunker_params_receives_blobs_as_they_are() {
    let a = repository("first password");
    let src = source(&a);
    add_version(&src, 0);
    let id = backup_kept(&a, &src);

    // B: its own password and encryption key, A's chunking and blob ids.
    let mut b = Scratch::uninitialised();
    b.password = "second password".into();
    write_file(password_file(&b), b"second password\n");
    let mut args: Vec<OsString> = vec!["init".into(), "--copy-chunker-params".into(), "--from".into()];
    args.push(a.repo.clone().into());
    args.push("--from-password-file".into());
    args.push(password_file(&a).into());
    args.extend(FAST_KDF.iter().map(OsString::from));
    b.ok(&args);

    let r = copy(&a, &b, &[]);
    assert_eq!(r["same_chunking"], true, "{r}");
    assert_eq!(r["copied"].as_array().unwrap().len(), 1, "{r}");
    let copy_id = by_identity(&b)[&id]["id"].as_str().unwrap().to_string();
    assert_restores_as(&b, &copy_id, "b", &src, &a, &id);
    b.ok(&["check", "--read-data"]);
    // Still B's own key: A's password does not open it.
    let mut wrong = b.cmd(&["snapshots"]);
    wrong.env("ARKIV_PASSWORD", "first password");
    assert_code(&run(wrong), 1, "snapshots with A's password");

    // A wrong password for --from creates nothing.
    let c = Scratch::uninitialised();
    let out =
        c.run(&[OsStr::new("init"), OsStr::new("--copy-chunker-params"), OsStr::new("--from"), a.repo.as_os_str()]);
    assert_code(&out, 1, "init --copy-chunker-params with a wrong --from password");
    assert!(!c.repo.exists(), "a repository was created although --from could not be opened");
}
