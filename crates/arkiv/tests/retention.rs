//! `forget`, `prune` and append-only keys, driven through the real binary.
//!
//! The calendar rules of retention (daily, weekly, ...) are unit-tested in
//! `arkiv-repo/src/retention.rs`; here snapshots are made seconds apart, so
//! these tests cover the command line around them: what forget prints and
//! removes, grouping, tags, explicit ids, and refusals. Prune is tested for
//! what it deletes (and what it must not), its two phases with a grace
//! period, putting back packs a newer snapshot came to need, repacking, and
//! running while backups write to the same repository.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

// ---- helpers ----

fn os(p: &Path) -> &OsStr {
    p.as_os_str()
}

/// Snapshot ids, oldest first.
fn snapshot_ids(s: &Scratch) -> Vec<String> {
    s.snapshots().iter().map(|v| v["id"].as_str().unwrap().to_string()).collect()
}

/// The names of the pack files on disk.
fn pack_set(s: &Scratch) -> BTreeSet<String> {
    s.packs().iter().map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned()).collect()
}

/// Where the pack of this name lives.
fn pack_path(s: &Scratch, name: &str) -> PathBuf {
    s.repo.join("data").join(&name[..2]).join(name)
}

/// Bytes of every pack file on disk.
fn data_size(s: &Scratch) -> u64 {
    s.packs().iter().map(|(_, n)| n).sum()
}

/// The deletion records prune has written (`repo/deletions/`).
fn deletion_records(s: &Scratch) -> Vec<String> {
    let d = s.repo.join("deletions");
    if d.is_dir() {
        object_names(&d)
    } else {
        Vec::new()
    }
}

/// `prune --json ARGS`, insisting on success.
fn prune(s: &Scratch, args: &[&str]) -> Value {
    let mut a = vec!["prune"];
    a.extend(args);
    s.json(&a)
}

/// A count from a JSON report.
fn n(v: &Value, field: &str) -> u64 {
    v[field].as_u64().unwrap_or_else(|| panic!("no count `{field}` in {v}"))
}

/// `check --json` (with `--read-data` if asked): insists on exit 0 and no
/// errors; returns the report.
fn check_clean(s: &Scratch, read_data: bool) -> Value {
    let mut a = vec!["--json", "check"];
    if read_data {
        a.push("--read-data");
    }
    let out = s.run(&a);
    assert_code(&out, 0, &describe(&a));
    let v = parse_json(&out);
    assert_eq!(v["errors"], serde_json::json!([]), "check found errors: {v}");
    v
}

/// The check warning that names packs awaiting deletion, if any.
fn awaiting_deletion(check: &Value) -> Option<String> {
    check["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .find(|w| w.contains("await deletion"))
}

/// Runs the binary with another password than the scratch area's own.
fn run_as(s: &Scratch, password: &str, args: &[&str]) -> Output {
    let mut c = s.cmd(args);
    c.env("ARKIV_PASSWORD", password);
    run(c)
}

/// Insists that a command run with an append-only key was refused as such.
fn assert_refused_append_only(out: &Output, what: &str) {
    assert_code(out, 1, what);
    let err = stderr(out);
    assert!(err.contains("append-only"), "`{what}` was refused without saying why: {err}");
}

/// Backs up `src` (plus `extra` flags) and keeps a copy of what it held, in
/// `expect/<id>`, for [`assert_restores`]. Returns the snapshot id.
fn backup_kept(s: &Scratch, src: &Path, extra: &[&str]) -> String {
    let mut args: Vec<&OsStr> = extra.iter().map(OsStr::new).collect();
    args.push(os(src));
    let id = s.backup(&args);
    copy_tree(src, &s.join("expect").join(&id));
    id
}

static RESTORES: AtomicUsize = AtomicUsize::new(0);

/// Restores `id` into a new directory; returns where `src` came back.
fn restore_of(s: &Scratch, id: &str, src: &Path) -> PathBuf {
    let name = format!("restore-{}-{}", &id[..12], RESTORES.fetch_add(1, Ordering::Relaxed));
    restored(&s.restore(id, &name), src)
}

/// Restores `id` and compares it with the copy [`backup_kept`] kept.
fn assert_restores(s: &Scratch, id: &str, src: &Path) {
    assert_same_tree(&s.join("expect").join(id), &restore_of(s, id, src));
}

/// The ids a forget report removed, as a set.
fn removed(v: &Value) -> BTreeSet<String> {
    v["removed"].as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect()
}

fn set_of(ids: &[&String]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

/// One line of forget's human output per snapshot: the verdict word and the
/// reasons after it, by short id.
fn verdicts(text: &str) -> HashMap<String, (String, String)> {
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| l.starts_with("  ")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        // id, date, time, verdict, reasons...
        assert!(words.len() >= 5, "unexpected forget line: {line:?}");
        out.insert(words[0].to_string(), (words[3].to_string(), words[4..].join(" ")));
    }
    out
}

/// A source directory `src` backed up four times, one file more each time.
fn four_versions(s: &Scratch) -> (PathBuf, Vec<String>) {
    let src = s.join("src");
    let ids = (0..4u64)
        .map(|i| {
            write_file(src.join(format!("f{i}")), &random_bytes(100 + i, 5_000));
            backup_kept(s, &src, &[])
        })
        .collect();
    (src, ids)
}

// ---- forget ----

#[test]
fn forget_keep_last_dry_run_shows_each_verdict_with_its_reason_and_changes_nothing() {
    let s = Scratch::new();
    let (_, ids) = four_versions(&s);
    let before = listing(&s.repo);

    let out = s.ok(&["forget", "--keep-last", "2", "--dry-run"]);
    let text = stdout(&out);
    let v = verdicts(&text);
    assert_eq!(v.len(), 4, "{text}");
    for (i, id) in ids.iter().enumerate() {
        let (verdict, reasons) = &v[&id[..8]];
        if i >= 2 {
            assert_eq!((verdict.as_str(), reasons.as_str()), ("keep", "last snapshot"), "{text}");
        } else {
            assert_eq!((verdict.as_str(), reasons.as_str()), ("remove", "matched no keep rule"), "{text}");
        }
    }
    assert!(text.contains("keep 2, remove 2"), "{text}");
    assert!(text.contains("would remove 2 snapshot(s)"), "{text}");
    assert_eq!(listing(&s.repo), before, "a dry run changed the repository");

    let j = s.json(&["forget", "--keep-last", "2", "--dry-run"]);
    assert_eq!(j["dry_run"], true);
    let groups = j["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{j}");
    let decisions = groups[0]["decisions"].as_array().unwrap();
    // Newest first.
    let listed: Vec<&str> = decisions.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(listed, ids.iter().rev().map(|s| s.as_str()).collect::<Vec<_>>());
    let keep: Vec<bool> = decisions.iter().map(|d| d["keep"].as_bool().unwrap()).collect();
    assert_eq!(keep, [true, true, false, false]);
    assert_eq!(decisions[0]["reasons"], serde_json::json!(["last snapshot"]));
    assert_eq!(removed(&j), set_of(&[&ids[0], &ids[1]]));
    assert_eq!(listing(&s.repo), before, "a dry run with --json changed the repository");
    assert_eq!(snapshot_ids(&s), ids);
}

#[test]
fn forget_keep_last_removes_exactly_the_older_snapshots_and_no_data() {
    let s = Scratch::new();
    let (src, ids) = four_versions(&s);
    let packs = pack_set(&s);

    let j = s.json(&["forget", "--keep-last", "2"]);
    assert_eq!(j["dry_run"], false);
    assert_eq!(removed(&j), set_of(&[&ids[0], &ids[1]]));
    assert_eq!(snapshot_ids(&s), ids[2..]);
    assert_eq!(object_names(&s.repo.join("snapshots")), {
        let mut v = ids[2..].to_vec();
        v.sort();
        v
    });
    // Forget removes snapshots only; their data waits for prune.
    assert_eq!(pack_set(&s), packs);
    for id in &ids[2..] {
        assert_restores(&s, id, &src);
    }
    check_clean(&s, false);

    // Applying the same policy again removes nothing more.
    let out = s.ok(&["forget", "--keep-last", "2"]);
    assert!(stdout(&out).contains("removed 0 snapshot(s)"), "{}", stdout(&out));
    assert_eq!(snapshot_ids(&s), ids[2..]);
}

#[test]
fn forget_applies_the_policy_to_each_path_set_separately() {
    let s = Scratch::new();
    let (a, b) = (s.join("a"), s.join("b"));
    let mut made: Vec<(String, String)> = Vec::new(); // (id, which)
    for i in 0..3u64 {
        for (dir, which) in [(&a, "a"), (&b, "b")] {
            write_file(dir.join(format!("{which}{i}")), &random_bytes(200 + i, 3_000));
            made.push((backup_kept(&s, dir, &[]), which.to_string()));
        }
    }
    let of = |which: &str| -> Vec<String> { made.iter().filter(|m| m.1 == which).map(|m| m.0.clone()).collect() };
    let (ids_a, ids_b) = (of("a"), of("b"));

    // Without grouping, the two newest overall survive.
    let j = s.json(&["forget", "--keep-last", "2", "--group-by", "", "--dry-run"]);
    let groups = j["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{j}");
    assert_eq!(groups[0]["key"], serde_json::json!({"host": null, "source": null, "paths": null, "tags": null}));
    assert_eq!(removed(&j).len(), 4);

    let bad = s.run(&["forget", "--keep-last", "2", "--group-by", "colour"]);
    assert_code(&bad, 2, "forget --group-by colour");
    assert!(stderr(&bad).contains("--group-by"), "{}", stderr(&bad));

    // By paths (the default groups by host, source and paths): two of each.
    let j = s.json(&["forget", "--keep-last", "2"]);
    let groups = j["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{j}");
    let paths: BTreeSet<String> = groups.iter().map(|g| g["key"]["paths"][0].as_str().unwrap().to_string()).collect();
    assert_eq!(paths, [a.display().to_string(), b.display().to_string()].into_iter().collect());
    assert_eq!(removed(&j), set_of(&[&ids_a[0], &ids_b[0]]));
    let left: BTreeSet<String> = snapshot_ids(&s).into_iter().collect();
    assert_eq!(left, set_of(&[&ids_a[1], &ids_a[2], &ids_b[1], &ids_b[2]]));

    // --path narrows forget to the snapshots of one path set.
    let j = s.json(&["forget", "--keep-last", "1", "--path", &a.display().to_string()]);
    assert_eq!(removed(&j), set_of(&[&ids_a[1]]));
    let left: BTreeSet<String> = snapshot_ids(&s).into_iter().collect();
    assert_eq!(left, set_of(&[&ids_a[2], &ids_b[1], &ids_b[2]]));
    assert_restores(&s, &ids_a[2], &a);
    assert_restores(&s, &ids_b[1], &b);
}

#[test]
fn forget_keep_tag_keeps_tagged_snapshots_however_old() {
    let s = Scratch::new();
    let src = s.join("src");
    let mut ids = Vec::new();
    for i in 0..4u64 {
        write_file(src.join(format!("f{i}")), &random_bytes(300 + i, 2_000));
        let tags: &[&str] = if i % 2 == 0 { &["--tag", "monthly"] } else { &[] };
        ids.push(backup_kept(&s, &src, tags));
    }
    // ids[0] and ids[2] are tagged; ids[3] is the newest.
    let j = s.json(&["forget", "--keep-last", "1", "--keep-tag", "monthly"]);
    assert_eq!(removed(&j), set_of(&[&ids[1]]));
    let reasons: HashMap<String, Value> = j["groups"][0]["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["id"].as_str().unwrap().to_string(), d["reasons"].clone()))
        .collect();
    assert_eq!(reasons[&ids[0]], serde_json::json!(["tag monthly"]));
    assert_eq!(reasons[&ids[2]], serde_json::json!(["tag monthly"]));
    assert_eq!(reasons[&ids[3]], serde_json::json!(["last snapshot"]));
    assert_eq!(snapshot_ids(&s), [ids[0].clone(), ids[2].clone(), ids[3].clone()]);
    assert_restores(&s, &ids[0], &src);
}

#[test]
fn forget_keep_within_counts_back_from_the_newest_snapshot() {
    let s = Scratch::new();
    let (src, ids) = four_versions(&s);
    let j = s.json(&["forget", "--keep-within", "1h"]);
    assert_eq!(removed(&j), BTreeSet::new());
    assert_eq!(j["groups"][0]["decisions"][3]["reasons"], serde_json::json!(["within 1h"]));

    // A newer snapshot more than a second later leaves the others outside
    // a one-second window.
    sleep(Duration::from_millis(1100));
    write_file(src.join("late"), b"late\n");
    let newest = backup_kept(&s, &src, &[]);
    let j = s.json(&["forget", "--keep-within", "1s"]);
    assert_eq!(removed(&j), ids.iter().cloned().collect::<BTreeSet<_>>());
    assert_eq!(snapshot_ids(&s), [newest.clone()]);
    assert_restores(&s, &newest, &src);

    let out = s.run(&["forget", "--keep-within", "3x"]);
    assert_code(&out, 2, "forget --keep-within 3x");
    assert!(stderr(&out).contains("--keep-within"), "{}", stderr(&out));
}

#[test]
fn forget_by_id_or_prefix_removes_only_those_and_resolves_all_before_removing_any() {
    let s = Scratch::new();
    let (src, ids) = four_versions(&s);

    // One id that matches nothing: nothing is removed, not even the good one.
    let out = s.run(&["forget", &ids[1], "ffffffffffff"]);
    assert_code(&out, 1, "forget ID ffffffffffff");
    assert!(stderr(&out).contains("ffffffffffff"), "{}", stderr(&out));
    assert_eq!(snapshot_ids(&s), ids);

    // Ids and a policy together are bad usage.
    let out = s.run(&["forget", &ids[1], "--keep-last", "1"]);
    assert_code(&out, 2, "forget ID --keep-last 1");
    assert!(stderr(&out).contains("not both"), "{}", stderr(&out));
    assert_eq!(snapshot_ids(&s), ids);

    // A full id and a 12-digit prefix.
    let out = s.ok(&["forget", &ids[0], &ids[2][..12]]);
    assert!(stdout(&out).contains("removed 2 snapshot(s)"), "{}", stdout(&out));
    assert_eq!(snapshot_ids(&s), [ids[1].clone(), ids[3].clone()]);
    assert_restores(&s, &ids[1], &src);

    // --json reports the full ids removed.
    let j = s.json(&["forget", &ids[3][..8]]);
    assert_eq!(removed(&j), set_of(&[&ids[3]]));
    assert_eq!(snapshot_ids(&s), [ids[1].clone()]);
}

#[test]
fn forget_without_a_policy_is_refused_and_removes_nothing() {
    let s = Scratch::new();
    let (_, ids) = four_versions(&s);
    let before = listing(&s.repo);
    for args in [
        &["forget"][..],
        &["forget", "--dry-run"],
        &["forget", "--keep-last", "0"],
        &["forget", "--group-by", ""],
        &["forget", "--prune", "--instant"],
    ] {
        let out = s.run(args);
        assert_code(&out, 2, &describe(args));
        assert!(
            stderr(&out).contains("no --keep-* rule given"),
            "`arkiv {}` does not say why: {}",
            describe(args),
            stderr(&out)
        );
        assert_eq!(listing(&s.repo), before, "`arkiv {}` changed the repository", describe(args));
    }
    assert_eq!(snapshot_ids(&s), ids);
}

// ---- prune ----

/// A repository where a forgotten snapshot alone used one big file:
/// snapshot 1 holds small files C, snapshot 2 adds `x.bin` (2 MiB),
/// snapshot 3 drops it again. Snapshot 2 is forgotten. Returns the source,
/// the three ids and the packs each backup added.
fn one_forgotten_snapshot(s: &Scratch) -> (PathBuf, Vec<String>, Vec<BTreeSet<String>>) {
    let src = s.join("src");
    random_files(&src.join("c"), 5, 10, 30_000);
    let mut ids = Vec::new();
    let mut added = Vec::new();
    let mut before = BTreeSet::new();
    for step in 0..3 {
        match step {
            1 => write_file(src.join("x.bin"), &random_bytes(55, 2 << 20)),
            2 => {
                fs::remove_file(src.join("x.bin")).unwrap();
                write_file(src.join("note.txt"), b"x.bin is gone\n");
            }
            _ => {}
        }
        ids.push(backup_kept(s, &src, &[]));
        let now = pack_set(s);
        added.push(now.difference(&before).cloned().collect());
        before = now;
    }
    s.ok(&["forget", &ids[1]]);
    (src, ids, added)
}

#[test]
fn prune_dry_run_reports_what_it_would_delete_and_changes_nothing() {
    let s = Scratch::new();
    let (_, _, _) = one_forgotten_snapshot(&s);
    let before = listing(&s.repo);

    let r = prune(&s, &["--dry-run", "--instant"]);
    assert_eq!(r["dry_run"], true);
    assert!(n(&r, "packs_deleted") >= 1, "{r}");
    assert!(n(&r, "bytes_deleted") >= 2 << 20, "{r}");
    assert_eq!(n(&r, "index_files_written"), 0, "{r}");
    assert_eq!(listing(&s.repo), before, "prune --dry-run --instant changed the repository");

    let r = prune(&s, &["--dry-run"]);
    assert_eq!(n(&r, "packs_deleted"), 0, "{r}");
    assert_eq!(listing(&s.repo), before, "prune --dry-run changed the repository");

    let out = s.ok(&["prune", "--dry-run", "--instant", "--max-unused", "0%"]);
    assert!(stdout(&out).contains("dry run: nothing was changed"), "{}", stdout(&out));
    assert_eq!(listing(&s.repo), before, "prune --dry-run --max-unused 0% changed the repository");
}

#[test]
fn prune_instant_deletes_the_packs_only_forgotten_snapshots_used() {
    let s = Scratch::new();
    let (src, ids, added) = one_forgotten_snapshot(&s);
    let size_before = data_size(&s);
    // The biggest pack snapshot 2 added holds x.bin.
    let x_pack = added[1].iter().max_by_key(|name| fs::metadata(pack_path(&s, name)).unwrap().len()).unwrap().clone();

    let r = prune(&s, &["--instant"]);
    assert_eq!(r["dry_run"], false);
    assert_eq!(n(&r, "snapshots"), 2, "{r}");
    assert!(n(&r, "packs_deleted") >= 1, "{r}");
    assert!(n(&r, "bytes_deleted") >= 2 << 20, "{r}");
    assert_eq!(n(&r, "packs_resurrected"), 0, "{r}");

    let after = pack_set(&s);
    assert!(!after.contains(&x_pack), "the pack of the forgotten x.bin is still there");
    // What the kept snapshots' backups wrote is all still there.
    for p in added[0].iter().chain(&added[2]) {
        assert!(after.contains(p), "pack {p} of a kept snapshot was deleted");
    }
    assert!(data_size(&s) + (2 << 20) <= size_before, "data shrank from {size_before} to only {}", data_size(&s));
    assert!(deletion_records(&s).is_empty(), "--instant left deletion records");

    let c = check_clean(&s, true);
    assert_eq!(awaiting_deletion(&c), None, "{c}");
    for id in [&ids[0], &ids[2]] {
        assert_restores(&s, id, &src);
    }

    // Nothing left to do.
    let r = prune(&s, &["--instant"]);
    assert_eq!((n(&r, "packs_deleted"), n(&r, "packs_marked"), n(&r, "bytes_unused")), (0, 0, 0), "{r}");
    assert_eq!(pack_set(&s), after);
}

#[test]
fn prune_holds_unused_packs_for_the_grace_period_then_deletes_them() {
    let s = Scratch::new();
    let src = s.join("src");
    write_file(src.join("x.bin"), &random_bytes(61, 1 << 20));
    let first = backup_kept(&s, &src, &[]);
    fs::remove_file(src.join("x.bin")).unwrap();
    write_file(src.join("y.bin"), &random_bytes(62, 200_000));
    let second = backup_kept(&s, &src, &[]);
    s.ok(&["forget", &first]);
    let packs = pack_set(&s);

    // Default grace (24h): every pack is too young to judge.
    let r = prune(&s, &[]);
    assert_eq!((n(&r, "packs_marked"), n(&r, "packs_deleted")), (0, 0), "{r}");
    assert!(n(&r, "packs_young") >= 1, "{r}");
    assert!(deletion_records(&s).is_empty());
    assert_eq!(pack_set(&s), packs);

    // Phase one: the forgotten snapshot's packs are marked, not deleted.
    sleep(Duration::from_millis(2100));
    let r = prune(&s, &["--grace", "1s"]);
    let marked = n(&r, "packs_marked");
    assert!(marked >= 1, "{r}");
    assert!(n(&r, "bytes_marked") >= 1 << 20, "{r}");
    assert_eq!(n(&r, "packs_deleted"), 0, "{r}");
    assert_eq!(deletion_records(&s).len(), 1, "phase one wrote no deletion record");
    assert_eq!(pack_set(&s), packs, "phase one deleted packs");
    let c = check_clean(&s, false);
    let warning = awaiting_deletion(&c).unwrap_or_else(|| panic!("check does not mention the marked packs: {c}"));
    assert!(warning.starts_with(&format!("{marked} pack(s)")), "{warning}");
    assert_restores(&s, &second, &src);

    // A longer grace period leaves the record waiting.
    let r = prune(&s, &["--grace", "1h"]);
    assert_eq!((n(&r, "packs_waiting"), n(&r, "packs_deleted"), n(&r, "packs_marked")), (marked, 0, 0), "{r}");
    assert_eq!(pack_set(&s), packs);

    // Phase two, once the record is older than the grace period.
    sleep(Duration::from_millis(2100));
    let r = prune(&s, &["--grace", "1s"]);
    assert_eq!(n(&r, "packs_deleted"), marked, "{r}");
    assert!(n(&r, "bytes_deleted") >= 1 << 20, "{r}");
    assert_eq!(n(&r, "packs_resurrected"), 0, "{r}");
    assert!(deletion_records(&s).is_empty(), "phase two left its record");
    let after = pack_set(&s);
    assert_eq!(after.len() as u64, packs.len() as u64 - marked);
    assert!(after.is_subset(&packs));
    let c = check_clean(&s, true);
    assert_eq!(awaiting_deletion(&c), None, "{c}");
    assert_restores(&s, &second, &src);
}

/// Starts `backup --stdin` under `name` and feeds it `data` without closing
/// its input: once this returns, all but a pipe's worth of `data` has been
/// read, so the backup has loaded the index (it does that before reading).
fn start_stdin_backup(s: &Scratch, name: &str, data: &[u8]) -> std::process::Child {
    assert!(data.len() > 1 << 20, "feed more than a pipe holds");
    let mut c = s.cmd(&["--json", "backup", "--stdin-filename", name]);
    c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child.stdin.as_mut().unwrap().write_all(data).unwrap();
    child
}

/// Closes a stdin backup's input and returns its snapshot report.
fn finish_stdin_backup(mut child: std::process::Child) -> Value {
    drop(child.stdin.take());
    let out = finish(child);
    assert_code(&out, 0, "backup --stdin");
    parse_json(&out)
}

#[test]
fn prune_puts_back_a_marked_pack_that_a_newer_snapshot_needs() {
    let s = Scratch::new();
    let data = random_bytes(71, 3 << 20);
    let first = finish_stdin_backup(start_stdin_backup(&s, "d.bin", &data));
    let first = first["id"].as_str().unwrap().to_string();
    // The packs holding d.bin's chunks (tree packs are a few hundred bytes).
    let data_packs: Vec<PathBuf> = s.packs().into_iter().filter(|(_, len)| *len > 64 * 1024).map(|(p, _)| p).collect();
    assert!(!data_packs.is_empty());
    s.ok(&["forget", &first]);
    sleep(Duration::from_millis(2100));

    // A backup of the same bytes loads the index while the first
    // snapshot's packs are still in it ...
    let child = start_stdin_backup(&s, "d.bin", &data);
    // ... prune marks them meanwhile (nothing uses them yet) ...
    let r = prune(&s, &["--grace", "1s"]);
    assert!(n(&r, "packs_marked") > data_packs.len() as u64, "{r}");
    // ... and the backup's snapshot comes to rely on them.
    let second = finish_stdin_backup(child);
    let bytes_new = second["snapshot"]["summary"]["bytes_new"].as_u64().unwrap();
    assert!(bytes_new < (data.len() / 10) as u64, "the second backup did not deduplicate: {second}");
    let second = second["id"].as_str().unwrap().to_string();
    let c = check_clean(&s, false);
    assert!(awaiting_deletion(&c).is_some(), "{c}");
    // Blobs in packs awaiting deletion are still read.
    assert_eq!(fs::read(s.restore(&second, "early").join("d.bin")).unwrap(), data);

    // The record has expired by now: without the snapshot, the packs would go.
    sleep(Duration::from_millis(2100));
    let r = prune(&s, &["--grace", "1s"]);
    assert!(n(&r, "packs_resurrected") >= data_packs.len() as u64, "{r}");
    for p in &data_packs {
        assert!(p.exists(), "{} was deleted though the new snapshot needs it: {r}", p.display());
    }
    assert!(deletion_records(&s).is_empty(), "{:?}", deletion_records(&s));

    let c = check_clean(&s, true);
    assert_eq!(awaiting_deletion(&c), None, "{c}");
    assert_eq!(fs::read(s.restore(&second, "late").join("d.bin")).unwrap(), data);
    // And it stays: the packs are in the index again, used.
    sleep(Duration::from_millis(1100));
    let r = prune(&s, &["--grace", "1s"]);
    assert_eq!(n(&r, "packs_marked"), 0, "{r}");
    assert!(data_packs.iter().all(|p| p.exists()));
}

#[test]
fn prune_repacks_partly_used_packs_and_keeps_what_is_used() {
    let s = Scratch::new();
    let src = s.join("src");
    // 200 files of 20 KiB share the first backup's pack(s); every other
    // one is then deleted, so each pack ends up about half used.
    random_files(&src, 8, 200, 20 * 1024);
    let first = backup_kept(&s, &src, &[]);
    let shared_packs = pack_set(&s);
    for i in (1..200).step_by(2) {
        fs::remove_file(src.join(format!("f{i:03}"))).unwrap();
    }
    let second = backup_kept(&s, &src, &[]);
    s.ok(&["forget", &first]);
    let size_before = data_size(&s);
    let before = listing(&s.repo);

    let r = prune(&s, &["--instant", "--max-unused", "0%", "--dry-run"]);
    assert!(n(&r, "packs_repacked") >= 1, "{r}");
    assert_eq!(listing(&s.repo), before, "a dry run repacked");

    let r = prune(&s, &["--instant", "--max-unused", "0%"]);
    assert!(n(&r, "packs_repacked") >= 1, "{r}");
    assert!(n(&r, "blobs_repacked") >= 100, "{r}");
    assert!(n(&r, "bytes_repacked") >= 100 * 20 * 1024, "{r}");
    assert!(n(&r, "bytes_unused") >= 100 * 20 * 1024, "{r}");
    // The partly used packs are gone (should a pack hold only files still
    // there, it may stay).
    let after = pack_set(&s);
    let gone = shared_packs.difference(&after).count() as u64;
    assert!(gone >= n(&r, "packs_repacked"), "only {gone} of the first backup's packs were removed: {r}");
    assert!(data_size(&s) + 100 * 20 * 1024 <= size_before, "data shrank from {size_before} to only {}", data_size(&s));
    check_clean(&s, true);
    assert_restores(&s, &second, &src);

    // Every pack is fully used now.
    let r = prune(&s, &["--instant", "--max-unused", "0%"]);
    assert_eq!((n(&r, "packs_repacked"), n(&r, "bytes_unused"), n(&r, "packs_deleted")), (0, 0, 0), "{r}");

    // Bad values are refused before anything is read.
    for args in [&["prune", "--max-unused", "lots"][..], &["prune", "--grace", "soon"]] {
        let out = s.run(args);
        assert_code(&out, 2, &describe(args));
        assert!(stderr(&out).contains(args[1]), "{}", stderr(&out));
    }
}

#[test]
fn forget_with_prune_removes_the_forgotten_data_too() {
    let s = Scratch::new();
    let (src, ids, added) = one_forgotten_snapshot(&s);
    // Forget the first snapshot as well; --prune --instant deletes x.bin's pack.
    let out = s.ok(&["forget", "--keep-last", "1", "--prune", "--instant"]);
    let text = stdout(&out);
    assert!(text.contains("removed 1 snapshot(s)"), "{text}");
    assert!(text.contains("deleted now:"), "prune did not run: {text}");
    assert_eq!(snapshot_ids(&s), [ids[2].clone()]);
    let after = pack_set(&s);
    assert!(added[1].iter().all(|p| !after.contains(p) || added[2].contains(p)), "x.bin's pack survived");
    check_clean(&s, true);
    assert_restores(&s, &ids[2], &src);
}

// ---- backups while forget and prune run ----

/// The files of state `i` of the concurrency test's source: six rotating
/// files (contents repeat every nine, so a backup may come to need blobs
/// that prune is about to drop) and a counter that cycles through five
/// values.
fn state(i: u64) -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    for j in i.saturating_sub(5)..=i {
        let k = j % 9;
        m.insert(format!("f{j:04}"), random_bytes(1000 + k, 6_000 + (k as usize * 7_919) % 30_000));
    }
    m.insert("counter".to_string(), format!("state {}\n", i % 5).into_bytes());
    m
}

/// Makes `src` hold exactly `state(i)`, touching only what changed since
/// `state(i - 1)`, so unchanged files are taken from the parent snapshot.
fn write_state(src: &Path, i: u64) {
    let want = state(i);
    fs::create_dir_all(src).unwrap();
    for e in fs::read_dir(src).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if !want.contains_key(&name) {
            fs::remove_file(src.join(&name)).unwrap();
        }
    }
    for (name, data) in &want {
        let p = src.join(name);
        if name == "counter" || !p.exists() {
            write_file(&p, data);
        }
    }
}

fn assert_state(dir: &Path, i: u64, id: &str) {
    let want = state(i);
    let got = tree_of(dir);
    let names: Vec<String> = got.keys().map(|p| p.display().to_string()).collect();
    assert_eq!(names, want.keys().cloned().collect::<Vec<_>>(), "snapshot {id} (state {i}) holds other files");
    for (name, data) in &want {
        match &got[Path::new(name)] {
            Entry::File(d) if d == data => {}
            Entry::File(d) => {
                panic!("snapshot {id} (state {i}): {name} has {} bytes, not the {} backed up", d.len(), data.len())
            }
            other => panic!("snapshot {id} (state {i}): {name} came back as {other:?}"),
        }
    }
}

/// The concurrency test's grace period.
const GRACE: &str = "4s";

#[test]
fn backups_alongside_forget_and_prune_all_stay_restorable() {
    let s = Scratch::new();
    let src = s.join("src");
    let run_for = Duration::from_secs(25);
    let start = Instant::now();
    let (made, totals) = std::thread::scope(|scope| {
        let backups = scope.spawn(|| {
            let mut made: Vec<(String, u64)> = Vec::new();
            let mut i = 0;
            while start.elapsed() < run_for {
                write_state(&src, i);
                let t = Instant::now();
                let id = s.backup(&[os(&src)]);
                // The grace period (4 s; deletion records keep whole
                // seconds, so 3 s or more) must outlast every backup.
                assert!(t.elapsed() < Duration::from_millis(2500), "backup {i} took {:?}", t.elapsed());
                made.push((id, i));
                i += 1;
            }
            made
        });
        let pruner = scope.spawn(|| {
            let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
            while start.elapsed() < run_for {
                s.json(&["forget", "--keep-last", "3"]);
                let r = s.json(&["prune", "--grace", GRACE]);
                for k in ["packs_marked", "packs_deleted", "packs_resurrected", "packs_repacked"] {
                    *totals.entry(k).or_default() += n(&r, k);
                }
                *totals.entry("runs").or_default() += 1;
                sleep(Duration::from_millis(100));
            }
            totals
        });
        (backups.join().expect("backup loop"), pruner.join().expect("forget/prune loop"))
    });
    eprintln!("{} backups; forget+prune: {totals:?}", made.len());
    assert!(made.len() >= 10, "only {} backups ran", made.len());
    assert!(totals["packs_deleted"] >= 1, "prune never got to delete anything: {totals:?}");

    let c = check_clean(&s, true);
    eprintln!("check warnings: {:?}", c["warnings"]);
    let made: HashMap<String, u64> = made.into_iter().collect();
    let left = snapshot_ids(&s);
    assert!(left.len() >= 3, "{left:?}");
    for id in &left {
        let i = *made.get(id).unwrap_or_else(|| panic!("snapshot {id} was not made by this test"));
        assert_state(&restore_of(&s, id, &src), i, id);
    }
    // One more full round still leaves everything whole.
    s.json(&["forget", "--keep-last", "3"]);
    sleep(Duration::from_millis(4100));
    prune(&s, &["--grace", GRACE]);
    sleep(Duration::from_millis(4100));
    let r = prune(&s, &["--grace", GRACE]);
    assert_eq!(n(&r, "packs_waiting"), 0, "{r}");
    check_clean(&s, true);
    for id in snapshot_ids(&s) {
        assert_state(&restore_of(&s, &id, &src), made[&id], &id);
    }
}

// ---- append-only keys ----

#[test]
fn an_append_only_key_adds_snapshots_but_cannot_forget_prune_or_manage_keys() {
    let s = Scratch::new();
    let src = s.join("src");
    write_file(src.join("a"), b"first\n");
    let first = backup_kept(&s, &src, &[]);
    let ao_file = s.join("ao.txt");
    write_file(&ao_file, b"append only secret\n");
    let ao = "append only secret";
    let mut add = vec!["key", "add", "--append-only", "--new-password-file", ao_file.to_str().unwrap()];
    add.extend(FAST_KDF);
    s.ok(&add);

    // Adding works.
    write_file(src.join("b"), b"second\n");
    let out = run_as(&s, ao, &["--json", "backup", src.to_str().unwrap()]);
    assert_code(&out, 0, "backup (append-only key)");
    let second = parse_json(&out)["id"].as_str().unwrap().to_string();
    copy_tree(&src, &s.join("expect").join(&second));
    let out = run_as(&s, ao, &["--json", "snapshots"]);
    assert_code(&out, 0, "snapshots (append-only key)");
    assert_eq!(parse_json(&out).as_array().unwrap().len(), 2);
    let target = s.join("ao-restore");
    let out = run_as(&s, ao, &["restore", &second, "--target", target.to_str().unwrap()]);
    assert_code(&out, 0, "restore (append-only key)");
    assert_same_tree(&s.join("expect").join(&second), &restored(&target, &src));

    let keys = s.json(&["key", "list"]);
    let full_key =
        keys.as_array().unwrap().iter().find(|k| k["current"] == true).unwrap()["id"].as_str().unwrap().to_string();
    let new_pw = s.join("new.txt");
    write_file(&new_pw, b"another password\n");
    let new_pw = new_pw.to_str().unwrap();
    let before = listing(&s.repo);
    let mut refused: Vec<Vec<&str>> = vec![
        vec!["forget", "--keep-last", "1"],
        vec!["forget", &first],
        vec!["forget", "--keep-last", "1", "--dry-run"],
        vec!["prune"],
        vec!["prune", "--instant"],
        vec!["prune", "--dry-run"],
        vec!["key", "remove", &full_key[..8]],
        vec!["key", "add", "--new-password-file", new_pw],
        vec!["key", "passwd", "--new-password-file", new_pw],
    ];
    for args in &mut refused {
        if args[0] == "key" && args[1] != "remove" {
            args.extend(FAST_KDF);
        }
        let out = run_as(&s, ao, args);
        assert_refused_append_only(&out, &describe(args));
    }
    assert_eq!(listing(&s.repo), before, "a refused command changed the repository");

    // Another append-only key may be added, and is append-only too.
    let ao2_file = s.join("ao2.txt");
    write_file(&ao2_file, b"second append only\n");
    let mut add2 = vec!["key", "add", "--append-only", "--new-password-file", ao2_file.to_str().unwrap()];
    add2.extend(FAST_KDF);
    let out = run_as(&s, ao, &add2);
    assert_code(&out, 0, "key add --append-only (append-only key)");
    assert_refused_append_only(&run_as(&s, "second append only", &["forget", &first]), "forget (second key)");
    let keys = s.json(&["key", "list"]);
    let flags: Vec<bool> = keys.as_array().unwrap().iter().map(|k| k["append_only"] == true).collect();
    assert_eq!(flags, [false, true, true], "{keys}");

    // The full key still forgets and prunes.
    s.ok(&["forget", &first]);
    prune(&s, &["--instant"]);
    assert_eq!(snapshot_ids(&s), [second.clone()]);
    check_clean(&s, true);
    assert_restores(&s, &second, &src);
}

#[test]
fn forget_with_prune_checks_prune_options_before_removing_any_snapshot() {
    let s = Scratch::new();
    s.backup(&["command:echo one"]);
    s.backup(&["command:echo two"]);
    let out = s.run(&["forget", "--keep-last", "1", "--prune", "--grace", "soon"]);
    assert_code(&out, 2, "forget --prune --grace soon");
    assert_eq!(snapshot_ids(&s).len(), 2, "a usage error must not have forgotten anything");
}
