//! Incremental backups read only what changed since the parent snapshot.

mod common;

use std::ffi::OsStr;
use std::fs;

use common::*;
use serde_json::Value;

fn summary(v: &Value) -> &Value {
    &v["snapshot"]["summary"]
}

fn source(s: &Scratch) -> std::path::PathBuf {
    let src = s.join("src");
    random_files(&src.join("a"), 1, 5, 40_000);
    random_files(&src.join("b/c"), 2, 3, 700_000);
    write_file(src.join("small.txt"), b"small");
    src
}

const FILES: u64 = 5 + 3 + 1;
const BYTES: u64 = 5 * 40_000 + 3 * 700_000 + 5;

#[test]
fn second_backup_of_unchanged_data_reads_nothing_and_adds_no_blobs() {
    let s = Scratch::new();
    let src = source(&s);
    let first = s.backup_json(&[src.as_os_str()]);
    assert_eq!(summary(&first)["files_new"], FILES);
    assert_eq!(summary(&first)["bytes_read"], BYTES);

    let second = s.backup_json(&[src.as_os_str()]);
    let m = summary(&second);
    assert_eq!(m["total_files"], FILES);
    assert_eq!(m["files_unmodified"], FILES, "{m}");
    assert_eq!(m["files_new"], 0);
    assert_eq!(m["files_changed"], 0);
    assert_eq!(m["bytes_read"], 0, "{m}");
    assert_eq!(m["total_bytes"], BYTES);
    // No new data; at most new trees, as /tmp's mtime moves when other
    // tests make directories in it.
    assert!(m["bytes_new"].as_u64().unwrap() < 20_000, "{m}");
    assert_eq!(second["snapshot"]["parent"], first["id"]);

    // And it restores the same.
    let t = s.restore(second["id"].as_str().unwrap(), "out");
    assert_same_tree(&src, &restored(&t, &src));
}

#[test]
fn after_changing_one_file_only_that_file_is_read() {
    let s = Scratch::new();
    let src = source(&s);
    s.backup_json(&[src.as_os_str()]);
    let changed = src.join("b/c/f001");
    let new = random_bytes(99, 650_000);
    write_file(&changed, &new);

    let v = s.backup_json(&[src.as_os_str()]);
    let m = summary(&v);
    assert_eq!(m["files_changed"], 1, "{m}");
    assert_eq!(m["files_unmodified"], FILES - 1, "{m}");
    assert_eq!(m["files_new"], 0);
    assert_eq!(m["bytes_read"], new.len(), "{m}");
    assert_eq!(m["total_bytes"], BYTES - 700_000 + 650_000);

    let t = s.restore(v["id"].as_str().unwrap(), "out");
    assert_same_tree(&src, &restored(&t, &src));
    assert_eq!(fs::read(restored(&t, &changed)).unwrap(), new);
}

#[test]
fn a_touched_but_identical_file_is_read_again_but_stores_nothing() {
    let s = Scratch::new();
    let src = source(&s);
    s.backup_json(&[src.as_os_str()]);
    let f = src.join("a/f002");
    let data = fs::read(&f).unwrap();
    // Rewrite the same bytes: the mtime/ctime change, the content does not.
    write_file(&f, &data);
    let data_blobs = || s.json(&["stats"])["data_blobs"].as_u64().unwrap();
    let before = data_blobs();
    let v = s.backup_json(&[src.as_os_str()]);
    let m = summary(&v);
    assert_eq!(m["files_changed"], 1, "{m}");
    assert_eq!(m["bytes_read"], data.len(), "{m}");
    assert_eq!(data_blobs(), before, "the same bytes make no new data blob");
    // Only trees (the changed file's directory and its ancestors) are new.
    assert!(m["bytes_new"].as_u64().unwrap() < 20_000, "{m}");
}

#[test]
fn force_reads_every_file_again_counting_each_as_changed_against_the_recorded_parent() {
    let s = Scratch::new();
    let src = source(&s);
    s.backup_json(&[src.as_os_str()]);
    let data_blobs = || s.json(&["stats"])["data_blobs"].as_u64().unwrap();
    let before = data_blobs();
    let first = s.snapshots().pop().unwrap();
    let v = s.backup_json(&[OsStr::new("--force"), src.as_os_str()]);
    let m = summary(&v);
    assert_eq!(m["bytes_read"], BYTES, "{m}");
    assert_eq!(m["files_unmodified"], 0);
    // Still compared with the parent: every file is re-read and counted as
    // changed, none as new, and the parent is recorded.
    assert_eq!(m["files_changed"], FILES, "{m}");
    assert_eq!(m["files_new"], 0, "{m}");
    assert_eq!(v["snapshot"]["parent"], first["id"], "{}", v["snapshot"]);
    assert_eq!(data_blobs(), before, "the data is already there: {m}");
}
