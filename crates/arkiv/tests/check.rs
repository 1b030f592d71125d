//! `arkiv check` finds what is wrong with a repository's structure without
//! reading the data: each problem exits 1 and names the object.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;

/// A repository with two snapshots of a few files: data and tree packs,
/// index files, snapshots. `check` passes on it.
fn repository() -> Scratch {
    let s = Scratch::new();
    let src = s.join("src");
    random_files(&src.join("a"), 31, 4, 200_000);
    write_file(src.join("note.txt"), b"a note\n");
    s.backup(&[src.as_os_str()]);
    write_file(src.join("later.txt"), b"written later\n");
    s.backup(&[src.as_os_str()]);
    s.ok(&["check"]);
    s
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// The objects of one kind (`index`, `snapshots`), by path.
fn objects(s: &Scratch, dir: &str) -> Vec<PathBuf> {
    object_names(&s.repo.join(dir)).into_iter().map(|n| s.repo.join(dir).join(n)).collect()
}

/// Rewrites a repository file (they are stored read-only).
fn rewrite(p: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = fs::read(p).unwrap();
    f(&mut bytes);
    fs::set_permissions(p, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(p, &bytes).unwrap();
}

fn flip_middle_byte(p: &Path) {
    rewrite(p, |b| {
        let mid = b.len() / 2;
        b[mid] ^= 0x40;
    });
}

/// Runs `check` (plus `args`); insists on exit 1 and returns standard error.
fn failing_check(s: &Scratch, args: &[&str], what: &str) -> String {
    let mut a = vec!["check"];
    a.extend(args);
    let out = s.run(&a);
    assert_code(&out, 1, &format!("check ({what})"));
    stderr(&out)
}

#[test]
fn a_missing_pack_fails_check_naming_the_pack() {
    let s = repository();
    let (pack, _) = s.packs().into_iter().next().unwrap();
    fs::remove_file(&pack).unwrap();
    let err = failing_check(&s, &[], "a pack deleted");
    let line = err.lines().find(|l| l.contains(&name(&pack))).unwrap_or_else(|| panic!("pack not named: {err}"));
    assert!(line.contains("missing"), "{line}");
}

#[test]
fn a_pack_one_byte_short_fails_check_without_read_data_naming_the_pack_as_truncated() {
    let s = repository();
    let (pack, size) = s.packs().into_iter().max_by_key(|(_, n)| *n).unwrap();
    rewrite(&pack, |b| b.truncate(size as usize - 1));
    let err = failing_check(&s, &[], "a pack truncated by one byte");
    let line = err.lines().find(|l| l.contains(&name(&pack))).unwrap_or_else(|| panic!("pack not named: {err}"));
    assert!(line.contains("truncated"), "{line}");
}

#[test]
fn a_damaged_index_file_fails_check_naming_the_index_file() {
    let s = repository();
    let index = objects(&s, "index");
    assert!(!index.is_empty());
    flip_middle_byte(&index[0]);
    let err = failing_check(&s, &[], "a byte flipped in an index file");
    let line = err.lines().find(|l| l.contains(&name(&index[0]))).unwrap_or_else(|| panic!("index not named: {err}"));
    assert!(line.contains("index"), "{line}");
    // The other index files are still read.
    for other in &index[1..] {
        assert!(!err.contains(&name(other)), "an intact index file is reported: {err}");
    }
}

#[test]
fn a_damaged_snapshot_fails_check_naming_the_snapshot() {
    let s = repository();
    let snaps = objects(&s, "snapshots");
    assert_eq!(snaps.len(), 2);
    flip_middle_byte(&snaps[1]);
    let err = failing_check(&s, &[], "a byte flipped in a snapshot");
    let line =
        err.lines().find(|l| l.contains(&name(&snaps[1]))).unwrap_or_else(|| panic!("snapshot not named: {err}"));
    assert!(line.contains("snapshot"), "{line}");
    assert!(!err.contains(&name(&snaps[0])), "the intact snapshot is reported: {err}");
}
