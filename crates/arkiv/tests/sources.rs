//! The stream-source machinery through the binary, on the source that needs
//! no server (`command:`): what a failed or killed dump leaves (nothing),
//! restores into a program, the configuration file's named sources, and
//! `verify` in a directory sandbox.

mod common;

use std::fs;

use common::{assert_code, stderr, Scratch};
use serde_json::Value;

fn snapshot_count(s: &Scratch) -> usize {
    s.snapshots().len()
}

#[test]
fn a_commands_output_restores_byte_for_byte_into_another_command() {
    let s = Scratch::new();
    let id = s.backup(&["command:seq 1 300000; printf 'no newline at the end'"]);
    let out = s.join("restored");
    s.ok(&["restore", &id, "--target", &format!("command:cat > '{}'", out.display())]);
    let mut want: String = (1..=300000).map(|i| format!("{i}\n")).collect();
    want.push_str("no newline at the end");
    assert_eq!(fs::read_to_string(&out).unwrap(), want);
    let snap = &s.snapshots()[0];
    assert_eq!(snap["source"], "command");
    assert_eq!(snap["paths"][0], "command:seq 1 300000; printf 'no newline at the end'");
    assert_eq!(snap["metadata"]["streams"][0]["name"], "stdout");
    assert_eq!(snap["metadata"]["streams"][0]["bytes"].as_u64(), Some(want.len() as u64));
}

#[test]
fn a_command_that_fails_or_is_killed_never_becomes_a_snapshot() {
    let s = Scratch::new();
    for cmd in ["seq 1 100000; echo 'dump broke' >&2; exit 3", "seq 1 100000; kill -9 $$"] {
        let out = s.run(&["backup", &format!("command:{cmd}")]);
        assert_code(&out, 1, cmd);
        let err = stderr(&out);
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.contains("exit status 3") && err.contains("dump broke") || err.contains("signal 9"), "{err}");
        assert_eq!(snapshot_count(&s), 0, "{cmd}");
    }
    s.ok(&["check"]);
}

#[test]
fn a_restore_command_that_exits_early_is_an_error_with_its_status_not_a_silent_death() {
    let s = Scratch::new();
    // More than a pipe's buffer, so the writer meets the closed pipe.
    let id = s.backup(&["command:head -c 20000000 /dev/urandom"]);
    let out = s.run(&["restore", &id, "--target", "command:echo 'refusing input' >&2; exit 4"]);
    assert_code(&out, 1, "restore into a command that exits 4");
    let err = stderr(&out);
    assert!(err.contains("exit status 4") && err.contains("refusing input"), "{err}");
}

#[test]
fn an_unchanged_dump_is_not_stored_twice() {
    let s = Scratch::new();
    let cmd = "command:seq 1 3000000";
    let first = s.backup_json(&[cmd]);
    let second = s.backup_json(&[cmd]);
    let new1 = first["snapshot"]["summary"]["bytes_new"].as_u64().unwrap();
    let new2 = second["snapshot"]["summary"]["bytes_new"].as_u64().unwrap();
    assert!(new1 > 20_000_000, "first backup stored {new1} bytes of new data");
    // Only the tree (it holds a new time stamp) is new.
    assert!(new2 < 4096, "second backup of the same output added {new2} bytes");
}

/// A table dump as `COPY` writes it: `rows` rows of blank-padded text,
/// with the rows in `moved` taken out of their place and written at the
/// end with a new balance, as an `UPDATE` moves them in PostgreSQL's heap.
fn table_dump(rows: usize, moved: impl Fn(usize) -> bool) -> String {
    let row = |i: usize, balance: i32| format!("{i}\t{}\t{balance}\t{:84}\n", i / 100_000 + 1, "");
    let mut out: String = (1..=rows).filter(|i| !moved(*i)).map(|i| row(i, 0)).collect();
    out.extend((1..=rows).filter(|i| moved(*i)).map(|i| row(i, 1)));
    out
}

#[test]
fn scattered_changes_are_stored_as_deltas_that_survive_forget_and_prune() {
    let s = Scratch::new();
    let dump = s.join("table.copy");
    let cmd = format!("command:cat '{}'", dump.display());
    fs::write(&dump, table_dump(300_000, |_| false)).unwrap();
    let first = s.backup_json(&[&cmd]);
    // Every 100th row changes: a change every ~10 KB, in every chunk.
    let day_two = table_dump(300_000, |i| i % 100 == 7);
    fs::write(&dump, &day_two).unwrap();
    let second = s.backup_json(&[&cmd]);
    let stored = |v: &Value| v["snapshot"]["summary"]["bytes_stored"].as_u64().unwrap();
    let (one, two) = (stored(&first), stored(&second));
    assert!(one > 200_000, "day one stored {one} bytes");
    // Without deltas day two stores about as much as day one; with them a
    // few bytes per moved row (these rows cost day one one byte each).
    assert!(two * 6 < one, "day two stored {two} bytes against day one's {one}");

    let restore = |id: &str| {
        let out = s.join(format!("restored-{id}"));
        s.ok(&["restore", id, "--target", &format!("command:cat > '{}'", out.display())]);
        fs::read_to_string(&out).unwrap()
    };
    let id2 = second["id"].as_str().unwrap();
    assert!(restore(id2) == day_two, "day two restores byte for byte");
    s.ok(&["check", "--read-data"]);

    // Day one is forgotten; its chunks are day two's bases and must stay.
    s.ok(&["forget", "--keep-last", "1"]);
    let pruned = s.json(&["prune", "--instant"]);
    assert!(pruned["bytes_unused"].as_u64().unwrap() > 0, "day one's tree is unused: {pruned}");
    assert!(restore(id2) == day_two, "day two restores after prune");
    s.ok(&["check", "--read-data"]);

    // A third day compares with the second, whose chunks are deltas: its
    // deltas name day one's chunks again (no chains) and restore as well.
    let day_three = table_dump(300_000, |i| i % 100 == 7 || i % 100 == 51);
    fs::write(&dump, &day_three).unwrap();
    let third = s.backup_json(&[&cmd]);
    assert!(stored(&third) * 3 < one, "day three stored {} bytes against day one's {one}", stored(&third));
    assert!(restore(third["id"].as_str().unwrap()) == day_three, "day three restores byte for byte");
    s.ok(&["forget", "--keep-last", "1"]);
    s.json(&["prune", "--instant"]);
    assert!(restore(third["id"].as_str().unwrap()) == day_three, "day three restores after prune");
    s.ok(&["check", "--read-data"]);
}

#[test]
fn restore_flags_for_databases_are_refused_for_a_directory_target() {
    let s = Scratch::new();
    let id = s.backup(&["command:echo hi"]);
    let out = s.run(&["restore", &id, "--target", s.join("dir").to_str().unwrap(), "--table", "t"]);
    assert_code(&out, 2, "restore --table into a directory");
    assert!(stderr(&out).contains("--table"), "{}", stderr(&out));
    // A stream snapshot can still be restored as plain files.
    let dir = s.restore(&id, "plain");
    assert_eq!(fs::read_to_string(dir.join("stdout")).unwrap(), "hi\n");
}

fn write_config(s: &Scratch, sources: &str) -> std::path::PathBuf {
    let pw = s.join("password");
    fs::write(&pw, format!("{}\n", s.password)).unwrap();
    let path = s.join("arkiv.toml");
    let text = format!(
        "[repositories.main]\nurl = \"{}\"\npassword_file = \"{}\"\n\n{sources}",
        s.repo.display(),
        pw.display()
    );
    fs::write(&path, text).unwrap();
    path
}

/// A command with only the configuration file: no --repo, no password.
fn configured(s: &Scratch, config: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut c = common::bare_command();
    c.arg("--config").arg(config).args(args).env("TMPDIR", s.path());
    common::run(c)
}

#[test]
fn named_sources_back_up_into_their_repository_and_verify_with_their_assertions() {
    let s = Scratch::new();
    let data = s.join("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("a.txt"), "alpha").unwrap();
    fs::write(data.join("skip.tmp"), "x").unwrap();
    let config = write_config(
        &s,
        &format!(
            r#"
[sources.numbers]
url = "command:seq 1 1000"
tags = ["nightly"]

[sources.numbers.verify]
commands = ["test $(wc -l < \"$ARKIV_SANDBOX_DIR/stdout\") -eq 1000"]

[sources.docs]
paths = ["{}"]
exclude = ["*.tmp"]

[sources.docs.verify]
commands = ["test -f \"$ARKIV_SANDBOX_DIR{}/a.txt\"", "test -f \"$ARKIV_SANDBOX_DIR{}/skip.tmp\""]
"#,
            data.display(),
            data.display(),
            data.display()
        ),
    );
    let out = configured(&s, &config, &["backup", "--source", "numbers", "--source", "docs"]);
    assert_code(&out, 0, "backup --source numbers --source docs");
    let snaps = s.snapshots();
    assert_eq!(snaps.len(), 2);
    assert_eq!(snaps[0]["tags"][0], "nightly");

    let out = configured(&s, &config, &["verify", "--source", "numbers"]);
    assert_code(&out, 0, "verify --source numbers");
    // The files source's second assertion wants an excluded file: it fails,
    // and the sandbox is gone all the same.
    let out = configured(&s, &config, &["verify", "--source", "docs"]);
    assert_code(&out, 1, "verify --source docs");
    assert!(stderr(&out).contains("FAIL") && stderr(&out).contains("skip.tmp"), "{}", stderr(&out));
    let left: Vec<_> = fs::read_dir(s.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("arkiv-verify-"))
        .collect();
    assert!(left.is_empty(), "sandbox left behind: {left:?}");
}

#[test]
fn a_misspelt_configuration_key_is_a_one_line_error_naming_the_file() {
    let s = Scratch::new();
    let config = write_config(&s, "[sources.x]\nurl = \"command:true\"\ntagz = [\"a\"]\n");
    let out = configured(&s, &config, &["backup", "--source", "x"]);
    assert_code(&out, 1, "backup with a bad config");
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("arkiv.toml") && err.contains("tagz"), "{err}");
    assert_eq!(snapshot_count(&s), 0);
}

#[test]
fn verify_fails_when_an_assertion_fails_and_says_which() {
    let s = Scratch::new();
    let id = s.backup(&["command:echo 42"]);
    let ok = s.run(&["verify", &id, "--assert-command", "grep -qx 42 \"$ARKIV_SANDBOX_DIR/stdout\""]);
    assert_code(&ok, 0, "verify with a passing assertion");
    let bad = s.run(&["verify", &id, "--assert-command", "grep -qx 43 \"$ARKIV_SANDBOX_DIR/stdout\""]);
    assert_code(&bad, 1, "verify with a failing assertion");
    assert!(stderr(&bad).contains("1 of 1 assertion(s) failed"), "{}", stderr(&bad));
}

/// A tmpfs of `size` mounted inside the scratch area (the tests run as root,
/// as CI does); unmounted when dropped.
struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(s: &Scratch, size: &str) -> SmallDisk {
        let path = s.join("small-disk");
        fs::create_dir_all(&path).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs for the disk-full test: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { path }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.path).status();
    }
}

#[test]
fn a_restore_onto_a_full_disk_fails_in_one_line_and_leaves_nothing_half_written() {
    let s = Scratch::new();
    // A 3 MB database that does not compress, onto a 1 MiB file system.
    let db = s.join("app.db");
    let c = arkiv_source::sqlite::rusqlite::Connection::open(&db).unwrap();
    c.execute_batch("create table t(b blob); insert into t values (randomblob(3000000));").unwrap();
    drop(c);
    let id = s.backup(&[&format!("sqlite://{}", db.display())]);
    let disk = SmallDisk::mount(&s, "1m");

    let target = disk.path.join("restored");
    let out = s.run(&["restore", &id, "--target", target.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0), "restore onto a full disk succeeded");
    let err = stderr(&out);
    assert!(err.contains("No space left on device"), "{err}");

    let file = disk.path.join("out.db");
    let out = s.run(&["restore", &id, "--target", &format!("sqlite://{}", file.display())]);
    assert_code(&out, 1, "restore of a SQLite database onto a full disk");
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(!file.exists(), "a half-written {} was left behind", file.display());
    let left: Vec<_> = fs::read_dir(&disk.path).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    assert!(left.iter().all(|n| n == "restored"), "temporary files left on the full disk: {left:?}");
    s.ok(&["check", "--read-data"]);
}

#[test]
fn sources_of_different_repositories_need_a_repository_named_to_be_backed_up_together() {
    let s = Scratch::new();
    let other = s.join("other-repo");
    let config = write_config(
        &s,
        &format!(
            "[repositories.other]\nurl = \"{}\"\n\n[sources.a]\nurl = \"command:echo a\"\nrepository = \"main\"\n\n\
             [sources.b]\nurl = \"command:echo b\"\nrepository = \"other\"\n",
            other.display()
        ),
    );
    let out = configured(&s, &config, &["backup", "--source", "a", "--source", "b"]);
    assert_code(&out, 2, "backup of sources in two repositories");
    assert!(stderr(&out).contains("different repositories"), "{}", stderr(&out));
    // --repo NAME chooses one, as docs/config.md says.
    let out = configured(&s, &config, &["--repo", "main", "backup", "--source", "a", "--source", "b"]);
    assert_code(&out, 0, "backup --repo main of sources in two repositories");
    assert_eq!(snapshot_count(&s), 2);
}
