//! Every command, driven through the real binary: what it prints, what it
//! writes, and what exit code it ends with.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::*;
use serde_json::Value;

/// A small source tree: text files, a binary file spanning several chunks,
/// a symlink, an empty directory.
fn sample_source(s: &Scratch) -> PathBuf {
    let src = s.join("src");
    write_file(src.join("a.txt"), b"alpha\n");
    write_file(src.join("docs/readme.md"), b"# read me\n");
    write_file(src.join("data/big.bin"), &random_bytes(1, 300_000));
    fs::create_dir_all(src.join("empty")).unwrap();
    std::os::unix::fs::symlink("a.txt", src.join("link")).unwrap();
    src
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// Paths `ls --json` lists for a snapshot, below `under`.
fn ls_paths(s: &Scratch, snap: &str, under: &Path) -> BTreeSet<String> {
    let v = s.json(&["ls", snap]);
    let prefix = format!("{}/", p(under));
    v["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .filter(|x| x.starts_with(&prefix))
        .map(|x| x[prefix.len()..].to_string())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

// ---- init ----

#[test]
fn init_creates_a_repository_that_opens_with_its_password() {
    let s = Scratch::uninitialised();
    let mut args = vec!["init"];
    args.extend(FAST_KDF);
    let out = s.ok(&args);
    assert!(stdout(&out).contains("created repository"), "{}", stdout(&out));
    assert!(s.repo.join("config").is_file());
    assert_eq!(object_names(&s.repo.join("keys")).len(), 1);
    assert_eq!(s.snapshots(), Vec::<Value>::new());
    let cfg = s.json(&["cat", "config"]);
    assert_eq!(cfg["version"], 1);
    assert_eq!(cfg["compression"], 3);
}

#[test]
fn init_refuses_a_location_that_already_holds_a_repository() {
    let s = Scratch::new();
    let before = listing(&s.repo);
    let mut args = vec!["init"];
    args.extend(FAST_KDF);
    let out = s.run(&args);
    assert_code(&out, 1, "init (again)");
    assert!(stderr(&out).contains("already holds an Arkiv repository"), "{}", stderr(&out));
    assert_eq!(listing(&s.repo), before, "a refused init changed the repository");
}

#[test]
fn unknown_flag_is_bad_usage_with_exit_code_2() {
    let s = Scratch::new();
    let out = s.run(&["backup", "--no-such-flag"]);
    assert_code(&out, 2, "backup --no-such-flag");
}

// ---- backup ----

#[test]
fn backup_of_paths_restores_byte_identical_with_latest() {
    let s = Scratch::new();
    let src = sample_source(&s);
    let other = s.join("other.txt");
    write_file(&other, b"a file given by itself\n");
    let out = s.ok(&[OsStr::new("backup"), src.as_os_str(), other.as_os_str()]);
    assert!(stdout(&out).contains("files: 4 new, 0 changed, 0 unmodified"), "{}", stdout(&out));
    let snaps = s.snapshots();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0]["paths"], serde_json::json!([p(&other), p(&src)]));
    let t = s.restore("latest", "out");
    assert_same_tree(&src, &restored(&t, &src));
    assert_eq!(fs::read(restored(&t, &other)).unwrap(), b"a file given by itself\n");
}

#[test]
fn backup_records_tags_and_host_and_snapshots_filters_by_them() {
    let s = Scratch::new();
    let src = sample_source(&s);
    let src2 = s.join("src2");
    write_file(src2.join("x"), b"x");
    let a = s.backup(&[
        OsStr::new("--tag"),
        OsStr::new("daily"),
        OsStr::new("--tag"),
        OsStr::new("db"),
        OsStr::new("--host"),
        OsStr::new("alpha"),
        src.as_os_str(),
    ]);
    let b = s.backup(&[
        OsStr::new("--tag"),
        OsStr::new("daily"),
        OsStr::new("--host"),
        OsStr::new("beta"),
        src2.as_os_str(),
    ]);
    let all = s.snapshots();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0]["id"], a);
    assert_eq!(all[0]["host"], "alpha");
    assert_eq!(all[0]["tags"], serde_json::json!(["daily", "db"]));
    assert_eq!(all[1]["id"], b);
    assert_eq!(all[1]["host"], "beta");

    let ids = |args: &[&str]| -> Vec<String> {
        let mut a = vec!["snapshots"];
        a.extend(args);
        s.json(&a).as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(ids(&["--host", "alpha"]), vec![a.clone()]);
    assert_eq!(ids(&["--host", "beta"]), vec![b.clone()]);
    assert_eq!(ids(&["--host", "gamma"]), Vec::<String>::new());
    assert_eq!(ids(&["--tag", "daily"]), vec![a.clone(), b.clone()]);
    assert_eq!(ids(&["--tag", "db"]), vec![a.clone()]);
    assert_eq!(ids(&["--tag", "daily", "--tag", "weekly"]), Vec::<String>::new());
    assert_eq!(ids(&["--path", &p(&src2)]), vec![b.clone()]);

    // The human listing shows both, with host and tags.
    let out = s.ok(&["snapshots"]);
    let text = stdout(&out);
    assert!(text.contains(&a[..8]) && text.contains(&b[..8]), "{text}");
    assert!(text.contains("alpha") && text.contains("daily,db"), "{text}");
    assert!(text.contains("2 snapshot(s)"), "{text}");
}

#[test]
fn backup_exclude_leaves_out_names_anywhere_and_anchored_paths() {
    let s = Scratch::new();
    let src = s.join("src");
    write_file(src.join("keep.txt"), b"k");
    write_file(src.join("scratch.tmp"), b"t");
    write_file(src.join("deep/more.tmp"), b"t");
    write_file(src.join("logs/app.log"), b"l");
    write_file(src.join("logs/old/app.log"), b"l");
    write_file(src.join("node_modules/x/y.js"), b"j");
    let id = s.backup(&[
        OsStr::new("--exclude"),
        OsStr::new("*.tmp"),
        OsStr::new("--exclude"),
        OsStr::new("logs/*.log"),
        OsStr::new("-e"),
        OsStr::new("node_modules"),
        src.as_os_str(),
    ]);
    assert_eq!(ls_paths(&s, &id, &src), set(&["keep.txt", "deep", "logs", "logs/old", "logs/old/app.log"]));
}

#[test]
fn backup_exclude_file_reads_one_pattern_a_line_and_skips_comments() {
    let s = Scratch::new();
    let src = s.join("src");
    write_file(src.join("keep.txt"), b"k");
    write_file(src.join("a.bak"), b"b");
    write_file(src.join("cache/blob"), b"c");
    write_file(src.join("#notes"), b"n");
    let patterns = s.join("excludes.txt");
    write_file(&patterns, b"# backups of backups\n*.bak\n\n   cache  \n#notes\n");
    let id = s.backup(&[OsStr::new("--exclude-file"), patterns.as_os_str(), src.as_os_str()]);
    // `#notes` is a comment line, so the file of that name is kept.
    assert_eq!(ls_paths(&s, &id, &src), set(&["#notes", "keep.txt"]));

    let missing = s.join("no-such-file");
    let out = s.run(&[OsStr::new("backup"), OsStr::new("--exclude-file"), missing.as_os_str(), src.as_os_str()]);
    assert_code(&out, 1, "backup --exclude-file <missing>");
    assert!(stderr(&out).contains(&p(&missing)), "{}", stderr(&out));
}

#[test]
fn backup_exclude_caches_keeps_only_the_tag_of_a_directory_with_a_valid_cachedir_tag() {
    let s = Scratch::new();
    let src = s.join("src");
    write_file(src.join("keep.txt"), b"k");
    write_file(
        src.join("cache/CACHEDIR.TAG"),
        b"Signature: 8a477f597d28d172789f06886806bc55\n# This file is a cache directory tag.\n",
    );
    write_file(src.join("cache/thumb.png"), b"png");
    write_file(src.join("cache/sub/more"), b"more");
    // A tag without the right signature does not count.
    write_file(src.join("fake/CACHEDIR.TAG"), b"Signature: not the one\n");
    write_file(src.join("fake/kept"), b"kept");

    let id = s.backup(&[OsStr::new("--exclude-caches"), src.as_os_str()]);
    assert_eq!(
        ls_paths(&s, &id, &src),
        set(&["cache", "cache/CACHEDIR.TAG", "fake", "fake/CACHEDIR.TAG", "fake/kept", "keep.txt"])
    );
    // Without the flag, the cache is saved like anything else.
    let id2 = s.backup(&[src.as_os_str()]);
    assert!(ls_paths(&s, &id2, &src).contains("cache/sub/more"));
}

#[test]
fn backup_dry_run_counts_but_writes_no_snapshot_pack_or_index() {
    let s = Scratch::new();
    let src = sample_source(&s);
    let before = listing(&s.repo);
    let v = s.backup_json(&[OsStr::new("--dry-run"), src.as_os_str()]);
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["id"], Value::Null);
    assert_eq!(v["snapshot"]["summary"]["files_new"], 3);
    assert_eq!(v["snapshot"]["summary"]["total_bytes"], 6 + 10 + 300_000, "{v}");
    assert!(v["snapshot"]["summary"]["blobs_new"].as_u64().unwrap() > 0);
    assert_eq!(listing(&s.repo), before, "a dry run changed the repository");
    assert!(s.snapshots().is_empty());

    let out = s.ok(&[OsStr::new("backup"), OsStr::new("-n"), src.as_os_str()]);
    assert!(stdout(&out).contains("dry run: nothing was written"), "{}", stdout(&out));
    assert_eq!(listing(&s.repo), before);
}

#[test]
fn backup_stdin_saves_standard_input_as_one_file_under_the_given_name() {
    let s = Scratch::new();
    let data = random_bytes(7, 2_500_000);
    let mut c = s.cmd(&["--json", "backup", "--stdin-filename", "dump.sql", "--tag", "db"]);
    c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&data).unwrap();
    }
    let out = finish(child);
    assert_code(&out, 0, "backup --stdin-filename dump.sql");
    let v = parse_json(&out);
    assert_eq!(v["snapshot"]["paths"], serde_json::json!(["/dump.sql"]));
    assert_eq!(v["snapshot"]["summary"]["total_bytes"], data.len());
    let id = v["id"].as_str().unwrap().to_string();
    let t = s.restore(&id, "out");
    assert_eq!(fs::read(t.join("dump.sql")).unwrap(), data);
    assert_eq!(tree_of(&t).len(), 1, "only the stream's file is restored");

    // `--stdin` alone names the file `stdin`.
    let mut c = s.cmd(&["backup", "--stdin", "-q"]);
    c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"short input\n").unwrap();
    assert_code(&finish(child), 0, "backup --stdin");
    let t2 = s.restore("latest", "out2");
    assert_eq!(fs::read(t2.join("stdin")).unwrap(), b"short input\n");
}

#[test]
fn backup_stdin_refuses_paths_and_a_file_name_with_a_slash_as_bad_usage_with_exit_2() {
    let s = Scratch::new();
    let src = sample_source(&s);
    // Usage errors, like the parser's own: exit 2.
    let out = s.run(&[OsStr::new("backup"), OsStr::new("--stdin"), src.as_os_str()]);
    assert_code(&out, 2, "backup --stdin <path>");
    assert!(stderr(&out).contains("--stdin takes no paths"), "{}", stderr(&out));
    let out = s.run(&["backup", "--stdin-filename", "a/b"]);
    assert_code(&out, 2, "backup --stdin-filename a/b");
    assert!(stderr(&out).contains("'a/b'"), "{}", stderr(&out));
    let out = s.run(&["backup"]);
    assert_code(&out, 2, "backup (no paths)");
    assert!(stderr(&out).contains("nothing to back up"), "{}", stderr(&out));
    assert!(s.snapshots().is_empty());
}

#[test]
fn backup_of_a_missing_path_exits_1_naming_it_and_writes_no_snapshot() {
    let s = Scratch::new();
    let missing = s.join("not-there");
    let out = s.run(&[OsStr::new("backup"), missing.as_os_str()]);
    assert_code(&out, 1, "backup <missing>");
    assert!(stderr(&out).contains(&p(&missing)), "{}", stderr(&out));
    assert!(s.snapshots().is_empty());
}

// ---- snapshots, ls ----

#[test]
fn snapshots_json_lists_every_snapshot_oldest_first_with_its_summary() {
    let s = Scratch::new();
    let src = sample_source(&s);
    let a = s.backup(&[src.as_os_str()]);
    write_file(src.join("a.txt"), b"alpha, changed\n");
    let b = s.backup(&[src.as_os_str()]);
    let list = s.snapshots();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["id"], a);
    assert_eq!(list[1]["id"], b);
    assert_eq!(list[1]["parent"], a);
    assert_eq!(list[0]["source"], "files");
    assert_eq!(list[0]["paths"], serde_json::json!([p(&src)]));
    assert_eq!(list[0]["summary"]["total_files"], 3);
    assert_eq!(list[1]["summary"]["files_changed"], 1);
    assert_eq!(list[1]["summary"]["files_unmodified"], 2);
    assert_eq!(
        object_names(&s.repo.join("snapshots")),
        {
            let mut v = vec![a, b];
            v.sort();
            v
        },
        "snapshot files are named by their ids"
    );
}

#[test]
fn ls_lists_paths_and_long_shows_mode_size_and_link_target() {
    let s = Scratch::new();
    let src = sample_source(&s);
    let id = s.backup(&[src.as_os_str()]);

    let out = s.ok(&["ls", &id]);
    let lines: Vec<String> = stdout(&out).lines().map(String::from).collect();
    for rel in ["a.txt", "docs", "docs/readme.md", "data/big.bin", "empty", "link"] {
        let want = format!("{}/{rel}", p(&src));
        assert!(lines.contains(&want), "ls does not list {want}:\n{lines:#?}");
    }

    let out = s.ok(&["ls", "--long", &id]);
    let text = stdout(&out);
    let line = |rel: &str| -> String {
        let want = format!(" {}/{rel}", p(&src));
        text.lines()
            .find(|l| l.ends_with(&want) || l.contains(&format!("{want} -> ")))
            .unwrap_or_else(|| panic!("no long line for {rel}:\n{text}"))
            .to_string()
    };
    let big = line("data/big.bin");
    assert!(big.starts_with("-rw-r--r--"), "{big}");
    assert!(big.contains(" 300000 "), "{big}");
    assert!(line("docs").starts_with("drwx"), "{}", line("docs"));
    let link = line("link");
    assert!(link.starts_with('l') && link.ends_with(" -> a.txt"), "{link}");

    // A path argument lists only below it.
    let out = s.ok(&["ls", &id, &format!("{}/docs", p(&src))]);
    assert_eq!(stdout(&out).lines().collect::<Vec<_>>(), vec![format!("{}/docs/readme.md", p(&src))]);
}

#[test]
fn ls_json_gives_every_entry_with_path_type_size_and_content() {
    let s = Scratch::new();
    let src = sample_source(&s);
    let id = s.backup(&[src.as_os_str()]);
    let v = s.json(&["ls", &id]);
    assert_eq!(v["snapshot"], id);
    let entries = v["entries"].as_array().unwrap();
    let find = |rel: &str| -> &Value {
        let want = format!("{}/{rel}", p(&src));
        entries.iter().find(|e| e["path"] == want.as_str()).unwrap_or_else(|| panic!("{want} not in ls --json"))
    };
    assert_eq!(find("a.txt")["type"], "file");
    assert_eq!(find("a.txt")["size"], 6);
    assert_eq!(find("a.txt")["content"].as_array().unwrap().len(), 1);
    assert_eq!(find("data/big.bin")["size"], 300_000);
    assert_eq!(find("empty")["type"], "dir");
    assert_eq!(find("link")["type"], "symlink");
    assert_eq!(find("link")["target"], "a.txt");
    assert_eq!(ls_paths(&s, &id, &src).len(), 7);
}

// ---- diff, find ----

#[test]
fn diff_shows_added_removed_and_modified_files_after_a_change() {
    let s = Scratch::new();
    let src = s.join("tree/src");
    write_file(src.join("same.txt"), b"unchanged");
    write_file(src.join("changed.txt"), b"before");
    write_file(src.join("gone.txt"), b"bye");
    write_file(src.join("sub/inner.txt"), b"inner");
    let a = s.backup(&[src.as_os_str()]);
    write_file(src.join("changed.txt"), b"after, and longer");
    fs::remove_file(src.join("gone.txt")).unwrap();
    write_file(src.join("new.txt"), b"hello");
    let b = s.backup(&[src.as_os_str()]);

    let out = s.ok(&["diff", &a, &b]);
    let text = stdout(&out);
    let root = p(&src);
    let mut lines: BTreeSet<String> = text
        .lines()
        .filter(|l| l.len() > 3 && l.as_bytes()[1] == b' ' && l.as_bytes()[2] == b' ')
        .map(String::from)
        .collect();
    // Ancestors of the source may show metadata changes (other tests make
    // directories in /tmp); they are not what this test is about.
    lines.retain(|l| !(l.starts_with("m  ") && root.starts_with(&l[3..]) && l[3..] != root));
    assert_eq!(
        lines,
        set(&[
            &format!("+  {root}/new.txt"),
            &format!("-  {root}/gone.txt"),
            &format!("M  {root}/changed.txt"),
            &format!("m  {root}"),
        ]),
        "{text}"
    );
    assert!(text.contains("1 added, 1 removed, 1 changed, 0 type changed"), "{text}");

    let v = s.json(&["diff", &a, &b]);
    assert_eq!(v["first"], a);
    assert_eq!(v["second"], b);
    let changes = v["changes"].as_array().unwrap();
    assert!(changes.iter().any(|c| c["change"] == "M" && c["path"] == format!("{root}/changed.txt").as_str()));

    // A snapshot against itself has no changes.
    let out = s.ok(&["diff", &a, &a]);
    assert!(stdout(&out).starts_with("0 added, 0 removed, 0 changed"), "{}", stdout(&out));
}

#[test]
fn find_lists_matching_files_in_every_snapshot_or_only_the_one_asked() {
    let s = Scratch::new();
    let src = sample_source(&s);
    let a = s.backup(&[src.as_os_str()]);
    write_file(src.join("docs/notes.md"), b"notes");
    let b = s.backup(&[src.as_os_str()]);

    let hits = |args: &[&str]| -> Vec<(String, String)> {
        let mut a = vec!["find"];
        a.extend(args);
        let mut v: Vec<_> = s
            .json(&a)
            .as_array()
            .unwrap()
            .iter()
            .map(|h| (h["snapshot"].as_str().unwrap().to_string(), h["path"].as_str().unwrap().to_string()))
            .collect();
        v.sort();
        v
    };
    let readme = format!("{}/docs/readme.md", p(&src));
    let notes = format!("{}/docs/notes.md", p(&src));
    let mut want = vec![(a.clone(), readme.clone()), (b.clone(), notes.clone()), (b.clone(), readme.clone())];
    want.sort();
    assert_eq!(hits(&["*.md"]), want);
    assert_eq!(hits(&["notes.md"]), vec![(b.clone(), notes.clone())]);
    assert_eq!(hits(&["*.md", "--snapshot", &a[..10]]), vec![(a.clone(), readme.clone())]);
    assert_eq!(hits(&["*.nothing"]), vec![]);

    let out = s.ok(&["find", "readme.md"]);
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.lines().all(|l| l.ends_with(&readme)), "{text}");
}

// ---- restore ----

#[test]
fn restore_accepts_latest_a_full_id_and_a_unique_prefix() {
    let s = Scratch::new();
    let src = s.join("src");
    write_file(src.join("f"), b"version one");
    let a = s.backup(&[src.as_os_str()]);
    write_file(src.join("f"), b"version two");
    let b = s.backup(&[src.as_os_str()]);
    let read = |t: &Path| fs::read(restored(t, &src).join("f")).unwrap();

    assert_eq!(read(&s.restore("latest", "latest")), b"version two");
    assert_eq!(read(&s.restore(&a, "full")), b"version one");
    // The shortest prefix that tells the two apart.
    let n = (1..64).find(|&n| a[..n] != b[..n]).unwrap();
    assert_eq!(read(&s.restore(&a[..n], "prefix")), b"version one");
    assert_eq!(read(&s.restore(&b[..8].to_uppercase(), "upper")), b"version two");

    let out = s.run(&[OsStr::new("restore"), OsStr::new("0000zz"), OsStr::new("-t"), s.join("bad").as_os_str()]);
    assert_code(&out, 1, "restore 0000zz");
    assert!(stderr(&out).contains("no snapshot matches '0000zz'"), "{}", stderr(&out));
    assert!(!s.join("bad").exists());
}

#[test]
fn restore_include_and_exclude_select_paths_and_directories_whole() {
    let s = Scratch::new();
    let src = sample_source(&s);
    write_file(src.join("docs/skip.tmp"), b"tmp");
    let id = s.backup(&[src.as_os_str()]);

    let t = s.join("inc");
    s.ok(&[
        OsStr::new("restore"),
        OsStr::new(&id),
        OsStr::new("-t"),
        t.as_os_str(),
        OsStr::new("--include"),
        OsStr::new("docs"),
        OsStr::new("--include"),
        OsStr::new("a.txt"),
        OsStr::new("--exclude"),
        OsStr::new("*.tmp"),
    ]);
    let got: BTreeSet<String> = tree_of(&restored(&t, &src)).keys().map(|k| k.display().to_string()).collect();
    assert_eq!(got, set(&["a.txt", "docs", "docs/readme.md"]));
    assert_eq!(fs::read(restored(&t, &src).join("docs/readme.md")).unwrap(), b"# read me\n");

    let t = s.join("exc");
    s.ok(&[
        OsStr::new("restore"),
        OsStr::new(&id),
        OsStr::new("-t"),
        t.as_os_str(),
        OsStr::new("--exclude"),
        OsStr::new(&format!("{}/data", p(&src))),
    ]);
    let got: BTreeSet<String> = tree_of(&restored(&t, &src)).keys().map(|k| k.display().to_string()).collect();
    assert_eq!(got, set(&["a.txt", "docs", "docs/readme.md", "docs/skip.tmp", "empty", "link"]));
}

#[test]
fn restore_leaves_existing_files_alone_unless_overwrite() {
    let s = Scratch::new();
    let src = sample_source(&s);
    let id = s.backup(&[src.as_os_str()]);
    let t = s.join("out");
    let dst = restored(&t, &src);
    write_file(dst.join("a.txt"), b"local edit");
    write_file(dst.join("unrelated"), b"mine");

    let out = s.ok(&[OsStr::new("restore"), OsStr::new(&id), OsStr::new("-t"), t.as_os_str()]);
    assert!(
        stdout(&out).contains(&format!("left alone (exists; use --overwrite): {}", p(&dst.join("a.txt")))),
        "{}",
        stdout(&out)
    );
    assert_eq!(fs::read(dst.join("a.txt")).unwrap(), b"local edit");
    assert_eq!(
        fs::read(dst.join("data/big.bin")).unwrap(),
        random_bytes(1, 300_000),
        "missing files are still restored"
    );

    s.ok(&[OsStr::new("restore"), OsStr::new(&id), OsStr::new("-t"), t.as_os_str(), OsStr::new("--overwrite")]);
    assert_eq!(fs::read(dst.join("a.txt")).unwrap(), b"alpha\n");
    assert_eq!(fs::read(dst.join("unrelated")).unwrap(), b"mine", "--overwrite replaces only what the snapshot holds");
    fs::remove_file(dst.join("unrelated")).unwrap();
    assert_same_tree(&src, &dst);
}

#[test]
fn restore_dry_run_lists_what_it_would_write_and_writes_nothing() {
    let s = Scratch::new();
    let src = sample_source(&s);
    let id = s.backup(&[src.as_os_str()]);
    let t = s.join("out");
    let out = s.ok(&[OsStr::new("restore"), OsStr::new(&id), OsStr::new("-t"), t.as_os_str(), OsStr::new("--dry-run")]);
    let text = stdout(&out);
    assert!(
        text.contains(&format!("would restore {} (292.97 KiB)", p(&restored(&t, &src).join("data/big.bin")))),
        "{text}"
    );
    assert!(text.contains("would restore snapshot"), "{text}");
    assert!(!t.exists(), "a dry run created {}", t.display());

    let before = listing(s.path());
    let out = s.run(&[
        OsStr::new("--json"),
        OsStr::new("restore"),
        OsStr::new(&id),
        OsStr::new("-t"),
        t.as_os_str(),
        OsStr::new("-n"),
    ]);
    assert_code(&out, 0, "restore -n --json");
    let v = parse_json(&out);
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["result"]["files"], 3);
    assert_eq!(v["result"]["symlinks"], 1);
    assert_eq!(listing(s.path()), before);
}

// ---- check, stats ----

#[test]
fn check_passes_on_a_healthy_repository_without_reading_packs() {
    let s = Scratch::new();
    let src = sample_source(&s);
    s.backup(&[src.as_os_str()]);
    let out = s.ok(&["check"]);
    assert!(stdout(&out).contains("no errors were found"), "{}", stdout(&out));
    assert!(stdout(&out).contains("read 0 packs"), "{}", stdout(&out));
    let v = s.json(&["check"]);
    assert_eq!(v["snapshots"], 1);
    assert_eq!(v["packs_read"], 0);
    assert_eq!(v["errors"], serde_json::json!([]));
}

#[test]
fn check_read_data_reads_and_verifies_every_pack() {
    let s = Scratch::new();
    let src = sample_source(&s);
    s.backup(&[src.as_os_str()]);
    let packs = s.packs();
    let v = s.json(&["check", "--read-data"]);
    assert_eq!(v["packs"], packs.len());
    assert_eq!(v["packs_read"], packs.len());
    assert_eq!(v["bytes_read"], packs.iter().map(|(_, n)| n).sum::<u64>());
    assert_eq!(v["errors"], serde_json::json!([]));
}

#[test]
fn check_read_data_subset_reads_that_share_of_packs() {
    let s = Scratch::new();
    // Several backups of new data: several packs.
    for i in 0..3 {
        let src = s.join(format!("src{i}"));
        random_files(&src, 100 + i, 2, 50_000);
        s.backup(&[src.as_os_str()]);
    }
    let n = s.packs().len();
    assert!(n >= 6, "expected a data and a tree pack per backup, got {n}");
    let v = s.json(&["check", "--read-data-subset", "50%"]);
    assert_eq!(v["packs_read"], n.div_ceil(2));
    assert_eq!(v["errors"], serde_json::json!([]));
    let v = s.json(&["check", "--read-data-subset", "1/3"]);
    assert_eq!(v["packs_read"], n.div_ceil(3));

    let out = s.run(&["check", "--read-data-subset", "150%"]);
    assert_code(&out, 2, "check --read-data-subset 150%");
    assert!(stderr(&out).contains("'150%' is not a subset"), "{}", stderr(&out));
}

#[test]
fn stats_reports_repository_totals_and_a_snapshots_size() {
    let s = Scratch::new();
    let src = sample_source(&s);
    let id = s.backup(&[src.as_os_str()]);
    // A second snapshot of the same data adds no data blobs.
    s.backup(&[src.as_os_str()]);

    let v = s.json(&["stats"]);
    assert_eq!(v["snapshots"], 2);
    assert_eq!(v["packs"], s.packs().len());
    assert_eq!(v["pack_bytes"], s.packs().iter().map(|(_, n)| n).sum::<u64>());
    assert_eq!(v["blobs"].as_u64().unwrap(), v["data_blobs"].as_u64().unwrap() + v["tree_blobs"].as_u64().unwrap());
    // a.txt, readme.md and big.bin's chunks: all unique.
    assert!(v["data_blobs"].as_u64().unwrap() >= 3);
    assert!(v["raw_bytes"].as_u64().unwrap() >= 300_016);

    let v = s.json(&["stats", &id]);
    assert_eq!(v["snapshot"], id);
    assert_eq!(v["files"], 3);
    assert_eq!(v["restore_bytes"], 300_016);
    assert_eq!(v["raw_bytes"], 300_016);

    let out = s.ok(&["stats"]);
    assert!(stdout(&out).contains("snapshots:         2"), "{}", stdout(&out));
    let out = s.ok(&["stats", "latest"]);
    assert!(stdout(&out).contains("files:         3 in"), "{}", stdout(&out));
}

// ---- keys ----

fn key_ids(s: &Scratch) -> Vec<(String, bool)> {
    s.json(&["key", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["id"].as_str().unwrap().to_string(), k["current"] == true))
        .collect()
}

fn key_add_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["key", "add"];
    a.extend(FAST_KDF);
    a.extend(extra);
    a
}

#[test]
fn key_add_creates_a_second_slot_that_opens_the_repository() {
    let s = Scratch::new();
    let src = sample_source(&s);
    let id = s.backup(&[src.as_os_str()]);
    let mut c = s.cmd(&key_add_args(&[]));
    c.env("ARKIV_NEW_PASSWORD", "second password");
    let out = run(c);
    assert_code(&out, 0, "key add");
    assert!(stdout(&out).starts_with("added key slot "), "{}", stdout(&out));

    let keys = key_ids(&s);
    assert_eq!(keys.len(), 2);
    assert_eq!(keys.iter().filter(|k| k.1).count(), 1);
    let out = s.ok(&["key", "list"]);
    assert_eq!(stdout(&out).lines().count(), 3, "{}", stdout(&out));

    let mut other = Scratch::uninitialised();
    other.repo = s.repo.clone();
    other.password = "second password".into();
    let v = other.snapshots();
    assert_eq!(v[0]["id"], id);
    // Opened with the second password, that slot is the current one.
    let current: Vec<_> = key_ids(&other).into_iter().filter(|k| k.1).collect();
    assert_eq!(current.len(), 1);
    assert_ne!(current[0].0, key_ids(&s).into_iter().find(|k| k.1).unwrap().0);
}

#[test]
fn key_passwd_makes_the_old_password_stop_working_and_the_new_one_work() {
    let s = Scratch::new();
    let new_pw = s.join("new-password");
    write_file(&new_pw, b"brand new\nsecond line ignored\n");
    let mut args = vec![OsStr::new("key"), OsStr::new("passwd")];
    args.extend(FAST_KDF.iter().map(OsStr::new));
    args.extend([OsStr::new("--new-password-file"), new_pw.as_os_str()]);
    let out = s.ok(&args);
    assert!(stdout(&out).starts_with("password changed: key slot "), "{}", stdout(&out));

    let out = s.run(&["snapshots"]);
    assert_code(&out, 1, "snapshots (old password)");
    assert!(stderr(&out).contains("wrong password"), "{}", stderr(&out));

    let mut with_new = Scratch::uninitialised();
    with_new.repo = s.repo.clone();
    with_new.password = "brand new".into();
    with_new.ok(&["snapshots"]);
    assert_eq!(key_ids(&with_new).len(), 1, "passwd replaces the slot");

    // --password-file is read the same way.
    let mut c = bare_command();
    c.args([OsStr::new("--password-file"), new_pw.as_os_str()]).args([
        OsStr::new("-r"),
        s.repo.as_os_str(),
        OsStr::new("snapshots"),
    ]);
    assert_code(&run(c), 0, "snapshots --password-file");
}

#[test]
fn key_remove_refuses_the_last_slot_and_the_current_slot_but_removes_another() {
    let s = Scratch::new();
    let only = key_ids(&s)[0].0.clone();
    let out = s.run(&["key", "remove", &only[..8]]);
    assert_code(&out, 1, "key remove <last>");
    assert!(stderr(&out).contains("is the last one"), "{}", stderr(&out));
    assert_eq!(key_ids(&s).len(), 1);

    let mut c = s.cmd(&key_add_args(&[]));
    c.env("ARKIV_NEW_PASSWORD", "two");
    assert_code(&run(c), 0, "key add");
    let keys = key_ids(&s);
    let current = keys.iter().find(|k| k.1).unwrap().0.clone();
    let other = keys.iter().find(|k| !k.1).unwrap().0.clone();

    let out = s.run(&["key", "remove", &current]);
    assert_code(&out, 1, "key remove <current>");
    assert!(stderr(&out).contains("is the one this command opened with"), "{}", stderr(&out));
    assert_eq!(key_ids(&s).len(), 2);

    let out = s.run(&["key", "remove", "ffffffffffffffffffff"]);
    assert_code(&out, 1, "key remove <unknown>");

    let out = s.ok(&["key", "remove", &other[..8]]);
    assert!(stdout(&out).contains(&format!("removed key slot {}", &other[..8])), "{}", stdout(&out));
    assert_eq!(key_ids(&s), vec![(current, true)]);
    let mut gone = Scratch::uninitialised();
    gone.repo = s.repo.clone();
    gone.password = "two".into();
    assert_code(&gone.run(&["snapshots"]), 1, "snapshots (removed password)");
}

#[test]
fn init_with_a_new_key_file_opens_with_that_key_file_only() {
    let s = Scratch::uninitialised();
    let kf = s.join("repo.key");
    let mut c = bare_command();
    c.args([OsStr::new("-r"), s.repo.as_os_str(), OsStr::new("init")])
        .args([OsStr::new("--new-key-file"), kf.as_os_str()]);
    assert_code(&run(c), 0, "init --new-key-file");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(&kf).unwrap().permissions().mode() & 0o777, 0o600, "a key file is private");

    let with_key = |args: &[&OsStr]| {
        let mut c = bare_command();
        c.args([OsStr::new("-r"), s.repo.as_os_str()]).args([OsStr::new("--key-file"), kf.as_os_str()]).args(args);
        run(c)
    };
    let src = s.join("src");
    write_file(src.join("f"), b"secret");
    assert_code(&with_key(&[OsStr::new("backup"), src.as_os_str()]), 0, "backup --key-file");
    let out = with_key(&[OsStr::new("--json"), OsStr::new("key"), OsStr::new("list")]);
    assert_code(&out, 0, "key list --key-file");
    let v = parse_json(&out);
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["kind"], "key-file");

    // ARKIV_KEY_FILE works as well.
    let mut c = bare_command();
    c.env("ARKIV_REPO", &s.repo).env("ARKIV_KEY_FILE", &kf).arg("snapshots");
    assert_code(&run(c), 0, "snapshots with ARKIV_KEY_FILE");

    // Any password is wrong.
    let out = s.run(&["snapshots"]);
    assert_code(&out, 1, "snapshots (password on a key-file repository)");
    assert!(stderr(&out).contains("wrong password or key file"));

    // A different key file is wrong too.
    let other = s.join("other.key");
    let mut c = bare_command();
    c.args([OsStr::new("-r"), s.join("repo2").as_os_str(), OsStr::new("init")])
        .args([OsStr::new("--new-key-file"), other.as_os_str()]);
    assert_code(&run(c), 0, "init repo2");
    let mut c = bare_command();
    c.args([OsStr::new("-r"), s.repo.as_os_str()]).args([
        OsStr::new("--key-file"),
        other.as_os_str(),
        OsStr::new("snapshots"),
    ]);
    assert_code(&run(c), 1, "snapshots with another repository's key file");

    // init does not overwrite an existing key file.
    let mut c = bare_command();
    c.args([OsStr::new("-r"), s.join("repo3").as_os_str(), OsStr::new("init")])
        .args([OsStr::new("--new-key-file"), kf.as_os_str()]);
    let out = run(c);
    assert_code(&out, 1, "init --new-key-file <existing>");
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert!(!s.join("repo3/config").exists());
}

#[test]
fn key_add_with_a_new_key_file_lets_that_file_open_a_password_repository() {
    let s = Scratch::new();
    let kf = s.join("added.key");
    let mut args = vec![OsStr::new("key"), OsStr::new("add")];
    args.extend([OsStr::new("--new-key-file"), kf.as_os_str()]);
    s.ok(&args);
    let mut c = bare_command();
    c.args([OsStr::new("-r"), s.repo.as_os_str()]).args([
        OsStr::new("--key-file"),
        kf.as_os_str(),
        OsStr::new("snapshots"),
    ]);
    assert_code(&run(c), 0, "snapshots --key-file");
    let kinds: Vec<_> =
        s.json(&["key", "list"]).as_array().unwrap().iter().map(|k| k["kind"].as_str().unwrap().to_string()).collect();
    assert_eq!(kinds, vec!["password", "key-file"]);
}

// ---- cat ----

#[test]
fn cat_prints_config_keys_snapshot_tree_index_pack_and_blob() {
    let s = Scratch::new();
    let src = sample_source(&s);
    let id = s.backup(&[src.as_os_str()]);

    let cfg = s.json(&["cat", "config"]);
    assert_eq!(cfg["version"], 1);
    assert_eq!(cfg["pack_size"], 16 << 20);

    let keys = s.json(&["cat", "keys"]);
    assert_eq!(keys.as_array().unwrap().len(), 1);
    assert_eq!(keys[0]["kdf"]["memory_kib"], 1024);

    let snap = s.json(&["cat", "snapshot", &id[..12]]);
    assert_eq!(snap["id"], id);
    let tree = snap["tree"].as_str().unwrap().to_string();

    let root = s.json(&["cat", "tree", &tree]);
    let nodes = root["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "the root holds the first path component");
    assert_eq!(nodes[0]["type"], "dir");

    // a.txt's one blob, printed raw.
    let ls = s.json(&["ls", &id]);
    let a = ls["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == format!("{}/a.txt", p(&src)).as_str())
        .unwrap()
        .clone();
    let blob = a["content"][0].as_str().unwrap().to_string();
    let out = s.ok(&["cat", "blob", &blob]);
    assert_eq!(out.stdout, b"alpha\n");

    // The index names that blob's pack; the pack lists the blob.
    let index_files = object_names(&s.repo.join("index"));
    let mut pack_of_blob = None;
    for f in &index_files {
        let ix = s.json(&["cat", "index", f]);
        for pk in ix["packs"].as_array().unwrap() {
            for b in pk["blobs"].as_array().unwrap() {
                if b["id"] == blob.as_str() {
                    assert_eq!(b["raw_length"], 6);
                    pack_of_blob = Some(pk["id"].as_str().unwrap().to_string());
                }
            }
        }
    }
    let pack = pack_of_blob.expect("an index file names a.txt's blob");
    assert!(s.repo.join("data").join(&pack[..2]).join(&pack).is_file());
    let pk = s.json(&["cat", "pack", &pack]);
    assert!(pk["blobs"].as_array().unwrap().iter().any(|b| b["id"] == blob.as_str()));

    let out = s.run(&["cat", "nonsense"]);
    assert_code(&out, 1, "cat nonsense");
    assert!(stderr(&out).contains("cannot cat 'nonsense'"), "{}", stderr(&out));
    let out = s.run(&["cat", "blob"]);
    assert_code(&out, 1, "cat blob (no id)");
    assert!(stderr(&out).contains("needs an id"), "{}", stderr(&out));
    let out = s.run(&["cat", "blob", &"ab".repeat(32)]);
    assert_code(&out, 1, "cat blob <unknown>");
    assert!(stderr(&out).contains("not in the index"), "{}", stderr(&out));
}
