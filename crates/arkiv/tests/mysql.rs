//! The MySQL/MariaDB source against a real server (MariaDB on
//! 127.0.0.1:3306, `root` with an empty password): dumps with routines,
//! triggers and events restored into databases of other names, refusals
//! that leave the target alone, credentials that never pass through a URL,
//! and verified restores into scratch databases that are dropped after.
//!
//! The server is shared by the tests running in parallel, so each test
//! works in databases (and users) of its own, dropped when it ends.

mod common;

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use common::{assert_code, parse_json, stderr, Scratch};

const SERVER: &str = "mysql://root@127.0.0.1:3306";

/// Runs SQL as root and returns the batch output (tab-separated rows).
fn sql(query: &str) -> String {
    let out = Command::new("mariadb")
        .args(["-uroot", "-h127.0.0.1", "-P3306", "-N", "-B", "-e", query])
        .env_remove("MYSQL_PWD")
        .output()
        .unwrap_or_else(|e| panic!("cannot run the mariadb client: {e}"));
    assert!(out.status.success(), "`{query}` failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Names (databases, users) unique to this test run, dropped when it ends.
struct Names {
    dbs: Vec<String>,
    users: Vec<String>,
}

impl Names {
    fn new() -> Names {
        // Fails loudly rather than passing vacuously without a server.
        sql("SELECT 1");
        Names { dbs: Vec::new(), users: Vec::new() }
    }

    fn db(&mut self, tag: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("arkiv_it_{}_{}_{tag}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        sql(&format!("DROP DATABASE IF EXISTS `{name}`"));
        self.dbs.push(name.clone());
        name
    }

    fn user(&mut self, password: &str, grants_on: &[&str]) -> String {
        let name = self.db("u").replace("arkiv_it_", "ait");
        sql(&format!("CREATE USER '{name}'@'127.0.0.1' IDENTIFIED BY '{password}'"));
        self.users.push(name.clone());
        for db in grants_on {
            sql(&format!("GRANT ALL ON `{db}`.* TO '{name}'@'127.0.0.1'"));
        }
        // What a backup user needs beyond its databases: routines are
        // shown to others than their definer only with this.
        sql(&format!("GRANT SELECT ON mysql.proc TO '{name}'@'127.0.0.1'"));
        name
    }
}

impl Drop for Names {
    fn drop(&mut self) {
        for d in &self.dbs {
            sql(&format!("DROP DATABASE IF EXISTS `{d}`"));
        }
        for u in &self.users {
            sql(&format!("DROP USER IF EXISTS '{u}'@'127.0.0.1'"));
        }
    }
}

/// A database with a bit of everything a dump must carry: rows with
/// binary and non-ASCII data, a view, a procedure, a function, a trigger
/// and an (disabled, so it does not fire during the test) event.
fn seed(db: &str, rows: u32) {
    let values: Vec<String> =
        (1..=rows).map(|i| format!("({i}, 'naïve ✓ {i}', X'{:02X}00FF0A5C', {i}.5)", i % 256)).collect();
    sql(&format!(
        "CREATE DATABASE `{db}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
         USE `{db}`;
         CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(100), blob_col VARBINARY(16), price DECIMAL(10,2))
           ENGINE=InnoDB;
         INSERT INTO items VALUES {};
         CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, item INT) ENGINE=InnoDB;
         CREATE VIEW cheap AS SELECT id, name FROM items WHERE price < 10;
         CREATE PROCEDURE add_item(IN n INT) INSERT INTO items VALUES (n, CONCAT('added ', n), NULL, 1);
         CREATE FUNCTION doubled(x INT) RETURNS INT DETERMINISTIC RETURN x * 2;
         CREATE TRIGGER items_audit AFTER INSERT ON items FOR EACH ROW INSERT INTO audit (item) VALUES (NEW.id);
         CREATE EVENT nightly ON SCHEDULE EVERY 1 DAY DISABLE DO DELETE FROM audit;",
        values.join(", ")
    ));
}

/// Everything a restore must bring back, as text: rows (binary as hex),
/// and the routines, triggers, events and views by name.
fn contents(db: &str) -> String {
    sql(&format!(
        "SELECT id, name, HEX(blob_col), price FROM `{db}`.items ORDER BY id;
         SELECT routine_type, routine_name FROM information_schema.routines WHERE routine_schema = '{db}'
           ORDER BY routine_name;
         SELECT trigger_name, event_object_table FROM information_schema.triggers WHERE trigger_schema = '{db}';
         SELECT event_name, status FROM information_schema.events WHERE event_schema = '{db}';
         SELECT table_name FROM information_schema.views WHERE table_schema = '{db}';
         SELECT default_collation_name FROM information_schema.schemata WHERE schema_name = '{db}';"
    ))
}

fn exists(db: &str) -> bool {
    !sql(&format!("SHOW DATABASES LIKE '{db}'")).trim().is_empty()
}

fn one_line(out: &Output) -> String {
    let err = stderr(out);
    assert_eq!(err.trim().lines().count(), 1, "one line expected:\n{err}");
    err
}

#[test]
fn a_database_restores_into_a_new_database_with_its_routines_triggers_and_events() {
    let mut n = Names::new();
    let src = n.db("src");
    let copy = n.db("copy");
    seed(&src, 500);
    sql(&format!("CREATE TABLE `{src}`.legacy (x INT) ENGINE=MyISAM; INSERT INTO `{src}`.legacy VALUES (1)"));
    let s = Scratch::new();
    let id = s.backup(&[&format!("{SERVER}/{src}")]);

    let snap = &s.snapshots()[0];
    assert_eq!(snap["source"], "mysql");
    assert_eq!(snap["paths"][0], format!("{SERVER}/{src}"));
    let meta = &snap["metadata"];
    assert!(meta["server_version"].as_str().unwrap().contains("MariaDB"), "{meta}");
    assert_eq!(meta["tool"], "mariadb-dump");
    assert_eq!(meta["databases"][0]["name"], src.as_str());
    assert_eq!(meta["databases"][0]["stream"], format!("{src}.sql"));
    assert_eq!(meta["databases"][0]["collation"], "utf8mb4_unicode_ci");
    assert!(meta["databases"][0]["size_bytes"].as_u64().unwrap() > 0, "{meta}");
    assert_eq!(meta["streams"][0]["name"], format!("{src}.sql"));
    // What the transaction does not cover is named.
    assert_eq!(meta["databases"][0]["not_transactional"], serde_json::json!(["legacy (MyISAM)"]));

    s.ok(&["restore", &id, "--target", &format!("{SERVER}/{copy}")]);
    let want = contents(&src);
    assert!(want.contains("add_item") && want.contains("doubled") && want.contains("items_audit"), "{want}");
    assert!(want.contains("nightly") && want.contains("cheap"), "{want}");
    assert_eq!(contents(&copy), want);
    assert_eq!(sql(&format!("SELECT x FROM `{copy}`.legacy")).trim(), "1");
    // They work, not just exist: the trigger fires and the function answers.
    sql(&format!("USE `{copy}`; CALL add_item(9001)"));
    assert_eq!(sql(&format!("SELECT COUNT(*) FROM `{copy}`.audit WHERE item = 9001")).trim(), "1");
    assert_eq!(sql(&format!("SELECT `{copy}`.doubled(21)")).trim(), "42");
    // The dump names no database: nothing was written into the original.
    assert_eq!(sql(&format!("SELECT COUNT(*) FROM `{src}`.audit")).trim(), "0");
}

#[test]
fn several_databases_back_up_together_and_restore_one_by_one_or_all_under_their_names() {
    let mut n = Names::new();
    let (a, b) = (n.db("a"), n.db("b"));
    seed(&a, 20);
    seed(&b, 30);
    // A user who sees only these two databases, so the server-wide backup
    // does not pick up what other tests create meanwhile; its password
    // comes from MYSQL_PWD.
    let user = n.user("multi-pw", &[&a, &b]);
    let s = Scratch::new();
    let url = format!("mysql://{user}@127.0.0.1:3306/");
    let mut cmd = s.cmd(&["--json", "backup", &url]);
    cmd.env("MYSQL_PWD", "multi-pw");
    let out = common::run(cmd);
    assert_code(&out, 0, "backup of every database");
    let id = parse_json(&out)["id"].as_str().unwrap().to_string();
    let snap = &s.snapshots()[0];
    let mut names: Vec<&str> =
        snap["metadata"]["databases"].as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, [a.as_str(), b.as_str()], "information_schema and the like are left out");
    let (want_a, want_b) = (contents(&a), contents(&b));

    let one = n.db("one");
    let out = s.run(&["restore", &id, "--target", &format!("{SERVER}/{one}")]);
    assert_code(&out, 1, "restore of two databases into one");
    assert!(one_line(&out).contains("--database"), "{}", stderr(&out));
    assert!(!exists(&one));
    s.ok(&["restore", &id, "--target", &format!("{SERVER}/{one}"), "--database", &b]);
    assert_eq!(contents(&one).replace(&one, &b), want_b);

    // Disaster recovery: both gone, both back under their own names.
    sql(&format!("DROP DATABASE `{a}`; DROP DATABASE `{b}`"));
    s.ok(&["restore", &id, "--target", &format!("{SERVER}/")]);
    assert_eq!(contents(&a), want_a);
    assert_eq!(contents(&b), want_b);
}

#[test]
fn a_database_that_holds_tables_is_refused_and_untouched_unless_clean() {
    let mut n = Names::new();
    let (src, busy) = (n.db("src"), n.db("busy"));
    seed(&src, 10);
    sql(&format!(
        "CREATE DATABASE `{busy}`; CREATE TABLE `{busy}`.precious (x INT); INSERT INTO `{busy}`.precious VALUES (7)"
    ));
    let s = Scratch::new();
    let id = s.backup(&[&format!("{SERVER}/{src}")]);
    let target = format!("{SERVER}/{busy}");

    let out = s.run(&["restore", &id, "--target", &target]);
    assert_code(&out, 1, "restore into a database holding tables");
    let err = one_line(&out);
    assert!(err.contains(&busy) && err.contains("--clean"), "{err}");
    assert_eq!(sql(&format!("SHOW TABLES FROM `{busy}`")).trim(), "precious");
    assert_eq!(sql(&format!("SELECT x FROM `{busy}`.precious")).trim(), "7");

    s.ok(&["restore", &id, "--target", &target, "--clean"]);
    assert_eq!(contents(&busy).replace(&busy, &src), contents(&src));
    assert!(!sql(&format!("SHOW TABLES FROM `{busy}`")).contains("precious"), "--clean dropped the old tables");

    // An existing but empty database is simply used, keeping its own
    // collation (the last line).
    let empty = n.db("empty");
    sql(&format!("CREATE DATABASE `{empty}` COLLATE utf8mb4_bin"));
    s.ok(&["restore", &id, "--target", &format!("{SERVER}/{empty}")]);
    let got = contents(&empty);
    assert!(got.ends_with("utf8mb4_bin\n"), "{got}");
    let want = contents(&src);
    let but_last = |t: &str| t.trim_end().rsplit_once('\n').map(|(head, _)| head.to_string());
    assert_eq!(but_last(&got), but_last(&want));
}

#[test]
fn an_unreachable_server_fails_in_one_line_and_makes_no_snapshot() {
    let s = Scratch::new();
    let port = common::garage::free_port();
    let out = s.run(&["backup", &format!("mysql://root@127.0.0.1:{port}/shop")]);
    assert_code(&out, 1, "backup of a server that is not there");
    let err = one_line(&out);
    assert!(err.contains(&format!("127.0.0.1:{port}")) && err.contains("connect"), "{err}");
    assert!(s.snapshots().is_empty());
}

#[test]
fn wrong_credentials_fail_clearly_and_make_no_snapshot_and_right_ones_work() {
    let mut n = Names::new();
    let db = n.db("cred");
    seed(&db, 5);
    let user = n.user("right-pw", &[&db]);
    let s = Scratch::new();
    let url = format!("mysql://{user}@127.0.0.1:3306/{db}");
    let backup = |pw: Option<&str>, url: &str| {
        let mut c = s.cmd(&["backup", url]);
        match pw {
            Some(p) => c.env("MYSQL_PWD", p),
            None => c.env_remove("MYSQL_PWD"),
        };
        common::run(c)
    };

    for (pw, url) in [
        (Some("wrong-pw"), url.clone()),
        (None, url.clone()),
        (None, format!("mysql://arkiv_nobody@127.0.0.1:3306/{db}")),
    ] {
        let out = backup(pw, &url);
        assert_code(&out, 1, &format!("backup with password {pw:?} of {url}"));
        let err = one_line(&out);
        assert!(err.contains("Access denied"), "{err}");
        assert!(!err.contains("wrong-pw"), "{err}");
        assert!(s.snapshots().is_empty());
    }

    let out = backup(Some("right-pw"), &url);
    assert_code(&out, 0, "backup with MYSQL_PWD");
    // An option file named in the URL is the other way in.
    let cnf = s.join("client.cnf");
    common::write_file(&cnf, b"[client]\npassword=right-pw\n");
    let out = backup(None, &format!("{url}?defaults-extra-file={}", cnf.display()));
    assert_code(&out, 0, "backup with an option file");
    let snaps = s.snapshots();
    assert_eq!(snaps.len(), 2);
    let text = serde_json::to_string(&snaps).unwrap();
    assert!(!text.contains("right-pw"), "no password in any snapshot");
}

#[test]
fn a_password_in_the_url_is_refused_with_where_to_put_it() {
    let s = Scratch::new();
    for url in ["mysql://root:hunter2@127.0.0.1:3306/shop", "mariadb://root:hunter2@127.0.0.1/"] {
        let out = s.run(&["backup", url]);
        assert_code(&out, 1, url);
        let err = one_line(&out);
        assert!(err.contains("MYSQL_PWD") && err.contains("my.cnf") && !err.contains("hunter2"), "{err}");
        let out = s.run(&["restore", "latest", "--target", url]);
        assert_ne!(out.status.code(), Some(0));
        assert!(!stderr(&out).contains("hunter2"), "{}", stderr(&out));
    }
    assert!(s.snapshots().is_empty());
}

fn scratch_databases() -> Vec<String> {
    sql("SHOW DATABASES LIKE 'arkiv\\_verify\\_%'").lines().map(str::to_string).collect()
}

#[test]
fn verify_restores_into_a_scratch_database_checks_and_drops_it() {
    let mut n = Names::new();
    let src = n.db("ver");
    seed(&src, 40);
    let s = Scratch::new();
    let id = s.backup(&[&format!("{SERVER}/{src}")]);

    // On the snapshot's own server (from its recorded location).
    let out = s.run(&[
        "--json",
        "verify",
        &id,
        "--assert-table",
        "items",
        "--assert-rows",
        "items>=40",
        "--assert-sql",
        "SELECT doubled(2) = 4",
        "--assert-command",
        "test \"$MYSQL_HOST\" = 127.0.0.1 && mariadb -uroot -h\"$MYSQL_HOST\" -P\"$MYSQL_TCP_PORT\" -N -e \
         'SELECT COUNT(*) FROM cheap' \"$MYSQL_DATABASE\"",
    ]);
    assert_code(&out, 0, "verify");
    let v = parse_json(&out);
    assert_eq!(v["passed"], true, "{v}");
    let sandbox = v["report"]["sandbox"].as_str().unwrap().to_string();
    let scratch = sandbox.rsplit('/').next().unwrap().to_string();
    assert!(scratch.starts_with("arkiv_verify_"), "{sandbox}");
    assert!(!exists(&scratch), "{scratch} was dropped");
    // `cheap` holds the items priced under 10: 1.5 … 9.5.
    assert_eq!(v["report"]["checks"][3]["detail"], "9");

    // On a server given with --sandbox, with failing assertions.
    let out = s.run(&[
        "--json",
        "verify",
        &id,
        "--sandbox",
        &format!("{SERVER}/"),
        "--assert-rows",
        "items>=41",
        "--assert-table",
        "nope",
        "--assert-sql",
        "SELECT COUNT(*) > 1000 FROM items",
    ]);
    assert_code(&out, 1, "verify with failing assertions");
    let v = parse_json(&out);
    assert_eq!(v["passed"], false);
    let checks = v["report"]["checks"].as_array().unwrap();
    assert!(checks.iter().all(|c| c["passed"] == false), "{checks:#?}");
    assert!(checks.iter().any(|c| c["detail"] == "40 rows, expected at least 41"), "{checks:#?}");
    let scratch = v["report"]["sandbox"].as_str().unwrap().rsplit('/').next().unwrap().to_string();
    assert!(!exists(&scratch), "{scratch} was dropped after a failure");
    assert!(!scratch_databases().contains(&scratch));
}
