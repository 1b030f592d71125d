//! PostgreSQL logical backups end to end, through the `arkiv` binary,
//! against a real server: the machine's PostgreSQL on 127.0.0.1:5432
//! (user `postgres`, no password needed), and temporary clusters made
//! with `initdb` where a test needs a server of its own (every database,
//! roles).
//!
//! Tests run in parallel against the shared server, so each works only in
//! databases named after its process and removes them when it ends.

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{assert_code, parse_json, stderr, Scratch};
use serde_json::Value;

const SERVER: &str = "postgres://postgres@127.0.0.1:5432";

/// Runs `sql` with psql against `db` on the server of `url` (a
/// `postgres://` prefix without database) and returns its answer.
fn psql_at(conn: &[&str], db: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args(conn)
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql])
        .output()
        .expect("psql runs");
    assert!(out.status.success(), "psql -d {db} -c {sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

fn psql(db: &str, sql: &str) -> String {
    psql_at(&["-h", "127.0.0.1", "-p", "5432", "-U", "postgres"], db, sql)
}

/// Databases of one test on the shared server, dropped when it ends
/// (also when it fails).
struct Dbs {
    prefix: String,
}

impl Dbs {
    fn new(test: &str) -> Dbs {
        Dbs { prefix: format!("arkiv_t{}_{test}", std::process::id()) }
    }

    /// A database name of this test (not created).
    fn name(&self, n: &str) -> String {
        format!("{}_{n}", self.prefix)
    }

    /// Creates database `n` and returns its name.
    fn create(&self, n: &str) -> String {
        let name = self.name(n);
        psql("postgres", &format!("create database \"{name}\""));
        name
    }

    fn exists(&self, name: &str) -> bool {
        psql("postgres", &format!("select count(*) from pg_database where datname = '{name}'")) == "1"
    }
}

impl Drop for Dbs {
    fn drop(&mut self) {
        let names = psql(
            "postgres",
            &format!("select datname from pg_database where datname like '{}\\_%'", self.prefix.replace('_', "\\_")),
        );
        for n in names.lines().filter(|n| !n.is_empty()) {
            psql("postgres", &format!("drop database if exists \"{n}\" with (force)"));
        }
        // Roles a test made (once the databases holding their objects are gone).
        let roles = psql(
            "postgres",
            &format!("select rolname from pg_roles where rolname like '{}\\_%'", self.prefix.replace('_', "\\_")),
        );
        for r in roles.lines().filter(|r| !r.is_empty()) {
            psql("postgres", &format!("drop role if exists \"{r}\""));
        }
    }
}

/// A shop: customers, orders referencing them (so restore order matters),
/// a second schema, a view and a sequence.
fn seed(db: &str, rows: u32) {
    psql(
        db,
        &format!(
            "create table customers (id serial primary key, name text not null, note text);
             insert into customers (name, note) select 'c' || g, repeat(md5(g::text), 4) from generate_series(1, {rows}) g;
             create table orders (id serial primary key, customer int not null references customers, total numeric);
             insert into orders (customer, total) select 1 + g % {rows}, g * 1.5 from generate_series(1, {rows}) g;
             create index on orders (customer);
             create schema audit;
             create table audit.log (at timestamptz default now(), what text);
             insert into audit.log (what) values ('created'), ('seeded');
             create view big_orders as select * from orders where total > 100;"
        ),
    );
}

/// A digest of a table's whole content, to compare two databases.
fn digest(db: &str, table: &str) -> String {
    psql(
        db,
        &format!(
            "select count(*) || ':' || coalesce(md5(string_agg(t::text, ',' order by t::text)), '') from {table} t"
        ),
    )
}

fn table_exists(db: &str, table: &str) -> bool {
    psql(db, &format!("select to_regclass('{table}') is not null")) == "t"
}

fn url(db: &str) -> String {
    format!("{SERVER}/{db}")
}

/// `arkiv restore SNAPSHOT --target URL ARGS…`, whatever happens.
fn restore(s: &Scratch, snapshot: &str, target: &str, args: &[&str]) -> std::process::Output {
    let mut a = vec!["restore", snapshot, "--target", target];
    a.extend(args);
    s.run(&a)
}

fn one_line_error(o: &std::process::Output) -> String {
    let e = stderr(o);
    assert_eq!(e.trim_end().lines().count(), 1, "expected a one-line error, got:\n{e}");
    e
}

#[test]
fn one_database_backs_up_and_restores_into_a_new_database() {
    let dbs = Dbs::new("one");
    let src = dbs.create("src");
    seed(&src, 500);
    let s = Scratch::new();
    let v = s.backup_json(&[url(&src)]);
    let snap = &v["snapshot"];
    assert_eq!(snap["source"], "postgres");
    assert_eq!(snap["paths"][0], url(&src));
    let m = &snap["metadata"];
    assert_eq!(m["mode"], "full");
    assert_eq!(m["server_version_num"].as_u64().unwrap() / 10_000, 15, "{m}");
    assert!(m["pg_dump_version"].as_str().unwrap().starts_with("pg_dump (PostgreSQL)"), "{m}");
    assert_eq!(m["databases"][0]["name"], src.as_str());
    assert!(m["databases"][0]["bytes"].as_u64().unwrap() > 1_000_000, "pg_database_size: {m}");
    assert!(m["seconds"].as_f64().is_some());
    // One database: no globals unless asked for.
    assert!(m["globals"].is_null(), "{m}");
    let streams: Vec<&str> = m["streams"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(streams, [format!("{src}.pgdump")]);

    let dst = dbs.name("dst");
    let r = s.json(&["restore", "latest", "--target", &url(&dst)]);
    assert!(r["result"]["notes"].to_string().contains("created database"), "{r}");
    for t in ["customers", "orders", "audit.log", "big_orders"] {
        assert_eq!(digest(&src, t), digest(&dst, t), "{t}");
    }
    // Sequences carry on where they were, and the index came back.
    assert_eq!(psql(&dst, "select last_value from customers_id_seq"), "500");
    assert_eq!(psql(&dst, "select count(*) from pg_indexes where tablename = 'orders'"), "2");
}

#[test]
fn a_socket_directory_url_works_and_is_recorded_without_the_default_host() {
    let dbs = Dbs::new("sock");
    let src = dbs.create("src");
    seed(&src, 10);
    let s = Scratch::new();
    let spec = format!("postgresql://postgres@/{src}?host=/var/run/postgresql");
    let v = s.backup_json(&[&spec]);
    assert_eq!(v["snapshot"]["paths"][0], format!("postgres://postgres@/{src}?host=/var/run/postgresql"));
    let dst = dbs.name("dst");
    s.ok(&["restore", "latest", "--target", &format!("postgres://postgres@/{dst}?host=/var/run/postgresql")]);
    assert_eq!(digest(&src, "orders"), digest(&dst, "orders"));
}

#[test]
fn schema_only_and_data_only_snapshots_restore_apart() {
    let dbs = Dbs::new("modes");
    let src = dbs.create("src");
    seed(&src, 200);
    let s = Scratch::new();
    let schema = s.backup_json(&[format!("{}?only=schema", url(&src))]);
    assert_eq!(schema["snapshot"]["metadata"]["mode"], "schema");
    assert_eq!(schema["snapshot"]["paths"][0], format!("{}?only=schema", url(&src)));
    let data = s.backup_json(&[format!("{}?only=data", url(&src))]);
    assert_eq!(data["snapshot"]["metadata"]["mode"], "data");

    let dst = dbs.name("dst");
    s.ok(&["restore", schema["id"].as_str().unwrap(), "--target", &url(&dst)]);
    assert!(table_exists(&dst, "orders") && table_exists(&dst, "audit.log"));
    assert_eq!(psql(&dst, "select count(*) from customers"), "0");

    // The data goes into the tables the schema-only restore made.
    s.ok(&["restore", data["id"].as_str().unwrap(), "--target", &url(&dst)]);
    for t in ["customers", "orders", "audit.log"] {
        assert_eq!(digest(&src, t), digest(&dst, t), "{t}");
    }
    // Again: the rows clash, the restore fails as a whole and adds nothing.
    let o = restore(&s, data["id"].as_str().unwrap(), &url(&dst), &[]);
    assert_code(&o, 1, "restore of data-only into filled tables");
    assert!(stderr(&o).contains("duplicate key"), "{}", stderr(&o));
    assert_eq!(digest(&src, "customers"), digest(&dst, "customers"));
}

#[test]
fn one_table_and_one_schema_restore_on_their_own() {
    let dbs = Dbs::new("partial");
    let src = dbs.create("src");
    seed(&src, 300);
    let s = Scratch::new();
    s.backup(&[url(&src)]);

    let t = dbs.name("table");
    s.ok(&["restore", "latest", "--target", &url(&t), "--table", "customers"]);
    assert_eq!(digest(&src, "customers"), digest(&t, "customers"));
    assert!(!table_exists(&t, "orders"), "only the table asked for");

    // The schema itself is not in pg_restore --schema's selection; Arkiv
    // makes it so the restore into a new database works.
    let sc = dbs.name("schema");
    s.ok(&["restore", "latest", "--target", &url(&sc), "--schema", "audit"]);
    assert_eq!(digest(&src, "audit.log"), digest(&sc, "audit.log"));
    assert!(!table_exists(&sc, "customers"));
}

#[test]
fn a_database_with_data_is_refused_and_left_alone_until_clean_or_overwrite() {
    let dbs = Dbs::new("busy");
    let src = dbs.create("src");
    seed(&src, 100);
    let s = Scratch::new();
    s.backup(&[url(&src)]);

    let dst = dbs.create("dst");
    psql(&dst, "create table precious (x int); insert into precious values (42); create table customers (id int)");
    let before = (digest(&dst, "precious"), digest(&dst, "customers"));
    let o = restore(&s, "latest", &url(&dst), &[]);
    assert_code(&o, 1, "restore into a database with data");
    let e = one_line_error(&o);
    assert!(e.contains("already holds 2 table(s)") && e.contains("--clean") && e.contains("--overwrite"), "{e}");
    assert_eq!((digest(&dst, "precious"), digest(&dst, "customers")), before, "the target was touched");
    assert!(!table_exists(&dst, "orders"));

    // --clean replaces what the dump holds and leaves the rest.
    s.ok(&["restore", "latest", "--target", &url(&dst), "--clean"]);
    assert_eq!(digest(&src, "customers"), digest(&dst, "customers"));
    assert_eq!(digest(&src, "orders"), digest(&dst, "orders"));
    assert_eq!(psql(&dst, "select x from precious"), "42");

    // --overwrite replaces the whole database.
    s.ok(&["restore", "latest", "--target", &url(&dst), "--overwrite"]);
    assert!(!table_exists(&dst, "precious"));
    assert_eq!(digest(&src, "orders"), digest(&dst, "orders"));
    assert!(dbs.exists(&dst));
    let leftovers = psql("postgres", "select count(*) from pg_database where datname like 'arkiv\\_restore\\_%'");
    assert_eq!(leftovers, "0", "the temporary database of --overwrite is gone");
}

#[test]
fn a_failed_restore_into_a_new_database_leaves_no_database() {
    let dbs = Dbs::new("failnew");
    let src = dbs.create("src");
    seed(&src, 20);
    let role = dbs.name("role");
    psql(&src, &format!("create role {role}; alter table customers owner to {role}"));
    let s = Scratch::new();
    let backup = s.run(&["backup", &url(&src)]);
    psql(&src, &format!("alter table customers owner to postgres; drop role {role}"));
    assert_code(&backup, 0, "backup");
    // The owner role no longer exists, so the restore fails at ALTER OWNER…
    let dst = dbs.name("dst");
    let o = restore(&s, "latest", &url(&dst), &[]);
    assert_code(&o, 1, "restore needing a missing role");
    assert!(stderr(&o).contains(&role), "{}", stderr(&o));
    assert!(!dbs.exists(&dst), "the database made for the failed restore was dropped");
    // …and owner=false restores without ownership.
    s.ok(&["restore", "latest", "--target", &format!("{}?owner=false", url(&dst))]);
    assert_eq!(digest(&src, "customers"), digest(&dst, "customers"));
}

#[test]
fn a_second_backup_of_unchanged_data_adds_little() {
    let dbs = Dbs::new("dedup");
    let src = dbs.create("src");
    seed(&src, 120_000);
    let s = Scratch::new();
    let first = s.backup_json(&[url(&src)]);
    let size = |s: &Scratch| s.packs().iter().map(|p| p.1).sum::<u64>();
    let after_first = size(&s);
    // Unchanged data: only the dump's header (its timestamp) differs, so
    // about one chunk of the ~1 MiB average is new.
    let second = s.backup_json(&[url(&src)]);
    let after_second = size(&s);
    let dump = second["snapshot"]["summary"]["total_bytes"].as_u64().unwrap();
    assert!(dump > 15_000_000, "dump of {dump} bytes is too small to show deduplication");
    let grew = after_second - after_first;
    // The chunks around the changed header (one, sometimes two when a cut
    // moves) and the new tree: a copy that did not deduplicate would add
    // about as much as the first backup.
    let blobs_new = second["snapshot"]["summary"]["blobs_new"].as_u64().unwrap();
    assert!(blobs_new <= 4, "the second backup stored {blobs_new} new blobs: {second}");
    assert!(grew < after_first / 4, "repository grew by {grew} bytes after {after_first} for the first backup");
    assert!(first["snapshot"]["summary"]["bytes_new"].as_u64().unwrap() > dump / 2);
}

#[test]
fn an_unreachable_server_fails_in_one_line_and_commits_nothing() {
    let s = Scratch::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let o = s.run(&["backup", &format!("postgres://postgres@127.0.0.1:{port}/x")]);
    assert_code(&o, 1, "backup of a closed port");
    let e = one_line_error(&o);
    assert!(e.contains("cannot connect") && e.contains(&port.to_string()), "{e}");
    assert!(s.snapshots().is_empty());

    let o = s.run(&["backup", "postgres://arkiv_no_such_role@127.0.0.1:5432/postgres"]);
    assert_code(&o, 1, "backup as an unknown user");
    let e = one_line_error(&o);
    assert!(e.contains("role \"arkiv_no_such_role\" does not exist"), "{e}");
    assert!(s.snapshots().is_empty());
}

#[test]
fn a_password_in_the_url_is_refused() {
    let s = Scratch::new();
    for spec in ["postgres://postgres:hunter2@127.0.0.1/postgres", "postgres://127.0.0.1/postgres?password=hunter2"] {
        let o = s.run(&["backup", spec]);
        assert_code(&o, 1, spec);
        let e = one_line_error(&o);
        assert!(e.contains("PGPASSWORD") && e.contains(".pgpass") && !e.contains("hunter2"), "{e}");
        let o = s.run(&["restore", "latest", "--target", spec]);
        assert!(!o.status.success() && !stderr(&o).contains("hunter2"), "{}", stderr(&o));
    }
    assert!(s.snapshots().is_empty());
}

/// A directory holding a `pg_dump` that runs `body` (with the real one as
/// `$REAL`), put first on PATH.
fn fake_pg_dump(s: &Scratch, body: &str) -> (PathBuf, OsString) {
    let real = Command::new("sh").args(["-c", "command -v pg_dump"]).output().unwrap();
    let real = String::from_utf8(real.stdout).unwrap().trim().to_string();
    let dir = s.join("fakebin");
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("pg_dump");
    std::fs::write(&script, format!("#!/bin/sh\nREAL={real}\n{body}\n")).unwrap();
    let mut p = std::fs::metadata(&script).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o755);
    std::fs::set_permissions(&script, p).unwrap();
    let path = std::env::join_paths(
        std::iter::once(dir.clone()).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .unwrap();
    (dir, path)
}

fn run_with_path(s: &Scratch, path: &OsString, args: &[&str]) -> std::process::Output {
    let mut c = s.cmd(args);
    c.env("PATH", path);
    common::run(c)
}

#[test]
fn a_dump_killed_half_way_commits_no_snapshot() {
    let dbs = Dbs::new("killed");
    let src = dbs.create("src");
    seed(&src, 5_000);
    let s = Scratch::new();
    let (_, path) = fake_pg_dump(
        &s,
        r#"case "$1" in --version) exec $REAL "$@";; esac
$REAL "$@" | head -c 100000
kill -9 $$"#,
    );
    let o = run_with_path(&s, &path, &["backup", &url(&src)]);
    assert_code(&o, 1, "backup with a pg_dump killed half-way");
    let e = one_line_error(&o);
    assert!(e.contains("pg_dump") && e.contains("signal 9"), "{e}");
    assert!(s.snapshots().is_empty());
}

#[test]
fn a_pg_dump_older_than_the_server_is_refused_with_the_fix() {
    let dbs = Dbs::new("old");
    let src = dbs.create("src");
    let s = Scratch::new();
    let (_, path) = fake_pg_dump(
        &s,
        r#"case "$1" in --version) echo "pg_dump (PostgreSQL) 12.9"; exit 0;; esac
echo "a real dump must not start" >&2; exit 3"#,
    );
    let o = run_with_path(&s, &path, &["backup", &url(&src)]);
    assert_code(&o, 1, "backup with an old pg_dump");
    let e = one_line_error(&o);
    assert!(e.contains("pg_dump 12 cannot dump PostgreSQL 15 at 127.0.0.1:5432"), "{e}");
    assert!(e.contains("install the PostgreSQL 15 client tools"), "{e}");
    assert!(s.snapshots().is_empty());
}

#[test]
fn verify_in_a_scratch_database_passes_fails_and_always_cleans_up() {
    let dbs = Dbs::new("verify");
    let src = dbs.create("src");
    seed(&src, 250);
    let s = Scratch::new();
    s.backup(&[url(&src)]);
    let v = s.json(&[
        "verify",
        "--assert-sql",
        "select count(*) = 250 from customers",
        "--assert-table",
        "audit.log",
        "--assert-rows",
        "orders>=250",
        "--assert-command",
        "test \"$(psql -XAtc 'select count(*) from big_orders')\" -gt 0",
    ]);
    assert_eq!(v["passed"], true, "{v}");
    let report = &v["report"];
    assert!(report["restore_secs"].as_f64().unwrap() > 0.0);
    let sandbox = report["sandbox"].as_str().unwrap();
    let scratch = sandbox.rsplit('/').next().unwrap();
    assert!(scratch.starts_with("arkiv_verify_"), "{sandbox}");
    assert!(!dbs.exists(scratch), "scratch database {scratch} is left behind");

    let o = s.run(&["--json", "verify", "--assert-rows", "customers>=251", "--assert-table", "nope"]);
    assert_code(&o, 1, "verify with failing assertions");
    let v: Value = parse_json(&o);
    assert_eq!(v["passed"], false);
    let checks = v["report"]["checks"].as_array().unwrap();
    // The CLI orders checks by kind: SQL, tables, rows, commands.
    assert_eq!(checks[0]["detail"], "no table nope");
    assert_eq!(checks[1]["detail"], "250 rows, expected at least 251");
    let scratch = v["report"]["sandbox"].as_str().unwrap().rsplit('/').next().unwrap().to_string();
    assert!(!dbs.exists(&scratch), "scratch database {scratch} is left behind after a failure");
}

/// A PostgreSQL cluster of a test's own, for what must not touch the
/// shared server (every database on it, its roles).
struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
    bindir: PathBuf,
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("id runs");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl Cluster {
    fn start() -> Cluster {
        let pg_config = Command::new("pg_config").arg("--bindir").output().expect("pg_config runs");
        let bindir = PathBuf::from(String::from_utf8(pg_config.stdout).unwrap().trim());
        let dir = tempfile::Builder::new().prefix("arkiv-pg-").tempdir().unwrap();
        if is_root() {
            // PostgreSQL will not run as root: the cluster is the postgres user's.
            let ok = Command::new("chown").args(["postgres:postgres"]).arg(dir.path()).status().unwrap();
            assert!(ok.success());
        }
        let data = dir.path().join("data");
        let o = as_postgres(&bindir.join("initdb"))
            .current_dir(dir.path())
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(o.status.success(), "initdb: {}", String::from_utf8_lossy(&o.stderr));
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let o = as_postgres(&bindir.join("pg_ctl"))
            .current_dir(dir.path())
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.path().join("log"))
            .args([
                "-w",
                "-o",
                &format!("-p {port} -k {} -c listen_addresses=127.0.0.1", dir.path().display()),
                "start",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "pg_ctl start: {}", String::from_utf8_lossy(&o.stderr));
        Cluster { dir, port, bindir }
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    fn psql(&self, db: &str, sql: &str) -> String {
        psql_at(&["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres"], db, sql)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bindir.join("pg_ctl"))
            .current_dir(self.dir.path())
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

#[test]
fn every_database_with_globals_restores_on_another_server() {
    let a = Cluster::start();
    a.psql("postgres", "create role shop_owner login; create role reader");
    a.psql("postgres", "create database shop owner shop_owner");
    a.psql("postgres", "create database other");
    seed_at(&a, "shop");
    a.psql("shop", "alter table customers owner to shop_owner; grant select on customers to reader");
    a.psql("other", "create table t (x int); insert into t values (1), (2)");

    let s = Scratch::new();
    let v = s.backup_json(&[format!("postgres://postgres@127.0.0.1:{}/", a.port)]);
    let m = &v["snapshot"]["metadata"];
    let names: Vec<&str> = m["databases"].as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["other", "postgres", "shop"]);
    assert_eq!(m["globals"]["stream"], "globals.sql");
    assert_eq!(v["snapshot"]["paths"][0], format!("postgres://postgres@127.0.0.1:{}/", a.port));

    // Several databases: the restore must be told which.
    let b = Cluster::start();
    let o = restore(&s, "latest", &b.url(""), &[]);
    assert_code(&o, 1, "restore of several databases without --database");
    let e = one_line_error(&o);
    assert!(e.contains("3 databases (other, postgres, shop)") && e.contains("--database"), "{e}");

    // Without the roles the owner is missing; with --globals it is there.
    s.ok(&["restore", "latest", "--target", &b.url(""), "--database", "shop", "--globals"]);
    assert_eq!(b.psql("shop", "select tableowner from pg_tables where tablename = 'customers'"), "shop_owner");
    assert_eq!(b.psql("shop", "select has_table_privilege('reader', 'customers', 'select')"), "t");
    assert_eq!(
        a.psql("shop", "select md5(string_agg(t::text, ',' order by id)) from orders t"),
        b.psql("shop", "select md5(string_agg(t::text, ',' order by id)) from orders t")
    );
    s.ok(&["restore", "latest", "--target", &b.url("copy_of_other"), "--database", "other"]);
    assert_eq!(b.psql("copy_of_other", "select sum(x) from t"), "3");

    // exclude-database leaves one out; globals=false leaves the roles out.
    let v = s.backup_json(&[format!("postgres://postgres@127.0.0.1:{}/?exclude-database=other&globals=false", a.port)]);
    let m = &v["snapshot"]["metadata"];
    assert_eq!(m["databases"].as_array().unwrap().len(), 2);
    assert!(m["globals"].is_null());
}

fn seed_at(c: &Cluster, db: &str) {
    c.psql(
        db,
        "create table customers (id serial primary key, name text);
         insert into customers (name) select 'c' || g from generate_series(1, 100) g;
         create table orders (id serial primary key, customer int references customers, total numeric);
         insert into orders (customer, total) select 1 + g % 100, g from generate_series(1, 300) g;",
    );
}

#[test]
fn verify_in_a_temporary_cluster_touches_no_server_and_removes_it() {
    let dbs = Dbs::new("vcluster");
    let src = dbs.create("src");
    seed(&src, 100);
    let s = Scratch::new();
    s.backup(&[url(&src)]);
    let o = s.run(&[
        "--json",
        "verify",
        "--sandbox",
        "cluster",
        "--assert-rows",
        "orders>=100",
        "--assert-command",
        "test \"$PGDATABASE\" = \"$(psql -XAtc 'select current_database()')\"",
        "--assert-sql",
        "select count(*) = 0 from customers",
    ]);
    let v = parse_json(&o);
    let checks = v["report"]["checks"].as_array().unwrap();
    assert_eq!(checks.iter().map(|c| c["passed"].as_bool().unwrap()).collect::<Vec<_>>(), [false, true, true], "{v}");
    assert_eq!(checks[0]["detail"], "returned 'f'");
    assert_code(&o, 1, "verify in a cluster with one failing assertion");
    let sandbox = v["report"]["sandbox"].as_str().unwrap();
    let dir = sandbox.split_whitespace().nth(4).unwrap();
    assert!(dir.contains("arkiv_verify_"), "{sandbox}");
    assert!(!Path::new(dir).exists(), "{dir} is left behind");
    assert!(v["report"]["cleanup_error"].is_null(), "{v}");
}
