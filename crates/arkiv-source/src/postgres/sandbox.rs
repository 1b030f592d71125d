//! Where a PostgreSQL snapshot is test-restored: a scratch database on a
//! running server (the snapshot's own, or one named by `--sandbox
//! postgres://…`), or a temporary cluster (`--sandbox cluster`) made with
//! `initdb` in a temporary directory and started on a free port.
//!
//! The scratch database is cheap but lives next to production data and
//! needs the right to create databases; the cluster touches no server at
//! all and also proves the dump restores on a bare PostgreSQL, roles
//! included (from `globals.sql` when the snapshot has it).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::logical::{check_pg_restore, choose_dump, restore_globals, PgRestore};
use super::url::{PgUrl, SANDBOX_OPTIONS};
use super::{create_database, database_exists, drop_database, query, quote_literal, Conn, GLOBALS_STREAM};
use crate::error::{Error, Result};
use crate::stream::Streams;
use crate::verify::{is_true, scratch_name, Assertion, Sandbox};

/// The sandbox for a PostgreSQL snapshot taken at `location`: `spec` is
/// `None` (a scratch database on the snapshot's server), a `postgres://`
/// server URL, or `cluster`; either may add `?database=NAME` to choose
/// the database of a snapshot of several, and the URL `?owner=false`.
pub fn sandbox(location: &str, spec: Option<&str>) -> Result<Box<dyn Sandbox>> {
    match spec {
        Some(s) if s == "cluster" || s.starts_with("cluster?") => {
            let opts = s.strip_prefix("cluster").unwrap_or("");
            let url = PgUrl::parse(&format!("postgres:///{opts}"))?;
            url.reject("--sandbox cluster", &["database"])?;
            Ok(Box::new(ClusterSandbox::new(url.database)))
        }
        Some(s) => {
            let url = PgUrl::parse(s)?;
            if url.dbname.is_some() {
                return Err(Error::Invalid(format!(
                    "--sandbox {s}: a sandbox always restores into a new scratch database, so give the server \
                     only; choose the snapshot's database with ?database=NAME"
                )));
            }
            url.reject("a sandbox", SANDBOX_OPTIONS)?;
            Ok(Box::new(ScratchSandbox::new(url)))
        }
        None => {
            // The recorded location may carry backup options (only=…);
            // only the server matters here.
            let mut url = PgUrl::parse(location)?;
            url.dbname = None;
            Ok(Box::new(ScratchSandbox::new(url)))
        }
    }
}

/// Evaluates an assertion against database `db`.
fn check(conn: &Conn, db: &str, a: &Assertion) -> std::result::Result<String, String> {
    let q = |sql: &str| query(conn, db, sql).map_err(|e| e.to_string());
    match a {
        Assertion::Sql { query: sql } => {
            let answer = q(sql)?;
            let first = answer.lines().next().unwrap_or("").split('|').next().unwrap_or("").to_string();
            if is_true(&first) {
                Ok(first)
            } else if answer.is_empty() {
                Err("returned no rows".into())
            } else {
                Err(format!("returned '{first}'"))
            }
        }
        Assertion::Table { name } => {
            let found = q(&format!("select to_regclass({})", quote_literal(name)))?;
            if found.is_empty() {
                Err(format!("no table {name}"))
            } else {
                Ok(format!("{found} exists"))
            }
        }
        Assertion::MinRows { table, rows } => {
            // Through to_regclass, so the name is quoted by the server and
            // a missing table says so rather than failing as SQL.
            let found = q(&format!("select to_regclass({})", quote_literal(table)))?;
            if found.is_empty() {
                return Err(format!("no table {table}"));
            }
            let n: u64 = q(&format!("select count(*) from {found}"))?
                .trim()
                .parse()
                .map_err(|_| format!("count(*) from {found} is not a number"))?;
            if n >= *rows {
                Ok(format!("{n} rows"))
            } else {
                Err(format!("{n} rows, expected at least {rows}"))
            }
        }
        Assertion::Command { .. } => Err("command assertions are run by verify::run".into()),
    }
}

fn env(conn: &Conn, db: &str) -> Vec<(String, String)> {
    let mut v = Vec::new();
    if let Some(h) = &conn.host {
        v.push(("PGHOST".into(), h.clone()));
    }
    if let Some(p) = conn.port {
        v.push(("PGPORT".into(), p.to_string()));
    }
    if let Some(u) = &conn.user {
        v.push(("PGUSER".into(), u.clone()));
    }
    v.push(("PGDATABASE".into(), db.to_string()));
    v
}

/// A new database with a scratch name on a running server.
pub struct ScratchSandbox {
    url: PgUrl,
    db: String,
    created: bool,
}

impl ScratchSandbox {
    pub fn new(url: PgUrl) -> ScratchSandbox {
        ScratchSandbox { url, db: scratch_name(), created: false }
    }
}

impl Sandbox for ScratchSandbox {
    fn location(&self) -> String {
        self.url.conn.url(Some(&self.db))
    }

    fn restore(&mut self, streams: &Streams) -> Result<u64> {
        let conn = &self.url.conn;
        let (_, dump) = choose_dump(streams, self.url.database.as_deref(), "--sandbox …?database=NAME")?;
        check_pg_restore(streams)?;
        if database_exists(conn, &self.db)? {
            // Never: the name is random. Never touch it either.
            return Err(Error::Invalid(format!("scratch database '{}' exists already", self.db)));
        }
        create_database(conn, &self.db)?;
        self.created = true;
        PgRestore {
            conn,
            db: &self.db,
            clean: false,
            tables: &[],
            schemas: &[],
            owner: self.url.owner,
            single_transaction: self.url.single_transaction,
        }
        .run(streams, dump)
    }

    fn check(&mut self, a: &Assertion) -> std::result::Result<String, String> {
        check(&self.url.conn, &self.db, a)
    }

    fn env(&self) -> Vec<(String, String)> {
        env(&self.url.conn, &self.db)
    }

    fn remove(&mut self) -> Result<()> {
        if self.created {
            drop_database(&self.url.conn, &self.db)?;
            self.created = false;
        }
        Ok(())
    }
}

/// A PostgreSQL cluster of its own in a temporary directory, listening on
/// a free loopback port and a socket in that directory.
pub struct ClusterSandbox {
    database: Option<String>,
    dir: Option<PathBuf>,
    started: Option<PgCtl>,
    conn: Conn,
    db: String,
}

/// What is needed to stop a started cluster.
struct PgCtl {
    pg_ctl: PathBuf,
    data: PathBuf,
    as_postgres: bool,
}

impl ClusterSandbox {
    pub fn new(database: Option<String>) -> ClusterSandbox {
        ClusterSandbox { database, dir: None, started: None, conn: Conn::default(), db: String::new() }
    }

    fn start(&mut self) -> Result<()> {
        let bindir = server_bindir()?;
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let dir = std::env::temp_dir().join(scratch_name());
        let dir_str = dir.to_str().filter(|d| !d.contains(['\'', ' '])).ok_or_else(|| {
            Error::Invalid(format!("{}: the temporary directory's path must be plain for pg_ctl", dir.display()))
        })?;
        std::fs::create_dir(&dir).map_err(|e| Error::Io { path: dir.display().to_string(), cause: e })?;
        self.dir = Some(dir.clone());
        if as_postgres {
            // PostgreSQL refuses to run as root; the cluster runs as the
            // `postgres` user, who must own its directory.
            let (uid, gid) = postgres_user()?;
            chown(&dir, uid, gid)?;
        }
        let data = dir.join("data");
        run_server_tool(
            as_postgres,
            &dir,
            &bindir.join("initdb"),
            &[
                "-D",
                data.to_str().expect("plain path"),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ],
        )?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| Error::Io { path: "a free port on 127.0.0.1".into(), cause: e })?
            .port();
        let log = dir.join("server.log");
        let options = format!("-p {port} -k '{dir_str}' -c listen_addresses=127.0.0.1 -c fsync=off");
        let pg_ctl = bindir.join("pg_ctl");
        let started = run_server_tool(
            as_postgres,
            &dir,
            &pg_ctl,
            &[
                "-D",
                data.to_str().expect("plain path"),
                "-l",
                log.to_str().expect("plain path"),
                "-w",
                "-t",
                "60",
                "-o",
                &options,
                "start",
            ],
        );
        // pg_ctl may have started the server even when it failed waiting
        // for it, so stopping is always attempted from here on.
        self.started = Some(PgCtl { pg_ctl, data, as_postgres });
        if let Err(e) = started {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(3).collect::<Vec<_>>().into_iter().rev().collect();
            return Err(Error::Invalid(format!(
                "temporary cluster did not start: {e} (server log: {})",
                tail.join(" / ")
            )));
        }
        self.conn = Conn { host: Some(dir_str.to_string()), port: Some(port), user: Some("postgres".into()) };
        Ok(())
    }
}

impl Sandbox for ClusterSandbox {
    fn location(&self) -> String {
        match &self.dir {
            Some(d) => format!("temporary PostgreSQL cluster in {} ({})", d.display(), self.conn.url(Some(&self.db))),
            None => "temporary PostgreSQL cluster".into(),
        }
    }

    fn restore(&mut self, streams: &Streams) -> Result<u64> {
        let (source_db, dump) = choose_dump(streams, self.database.as_deref(), "--sandbox cluster?database=NAME")?;
        check_pg_restore(streams)?;
        self.start()?;
        self.db = source_db;
        let mut bytes = 0;
        // With the snapshot's roles in place, ownership and privileges are
        // restored (and checked) too; without them they cannot be.
        let globals = streams.get(GLOBALS_STREAM).is_some();
        if globals {
            bytes += restore_globals(&self.conn, streams)?.0;
        }
        if !database_exists(&self.conn, &self.db)? {
            create_database(&self.conn, &self.db)?;
        }
        bytes += PgRestore {
            conn: &self.conn,
            db: &self.db,
            clean: false,
            tables: &[],
            schemas: &[],
            owner: globals,
            single_transaction: true,
        }
        .run(streams, dump)?;
        Ok(bytes)
    }

    fn check(&mut self, a: &Assertion) -> std::result::Result<String, String> {
        check(&self.conn, &self.db, a)
    }

    fn env(&self) -> Vec<(String, String)> {
        env(&self.conn, &self.db)
    }

    fn remove(&mut self) -> Result<()> {
        let mut stop_error = None;
        if let Some(c) = self.started.take() {
            let data = c.data.to_str().expect("plain path");
            let stopped = run_server_tool(
                c.as_postgres,
                c.data.parent().expect("data is in the directory"),
                &c.pg_ctl,
                &["-D", data, "-m", "immediate", "-w", "stop"],
            );
            // Not running (it never started) is fine; anything else means
            // a server may still be using the directory.
            if let Err(e) = stopped {
                if c.data.join("postmaster.pid").exists() {
                    stop_error = Some(e);
                }
            }
        }
        if let Some(e) = stop_error {
            return Err(Error::Invalid(format!(
                "the temporary cluster in {} could not be stopped ({e}); stop it and delete the directory",
                self.dir.as_ref().map(|d| d.display().to_string()).unwrap_or_default()
            )));
        }
        if let Some(d) = self.dir.take() {
            std::fs::remove_dir_all(&d).map_err(|e| Error::Io { path: d.display().to_string(), cause: e })?;
        }
        Ok(())
    }
}

/// Where `initdb`, `pg_ctl` and `postgres` are: next to the `initdb` on
/// PATH (links followed), else the newest of the usual packaged places.
pub(super) fn server_bindir() -> Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("initdb")).find(|f| f.is_file()))
        .unwrap_or_default();
    if let Some(initdb) = on_path {
        if let Some(dir) = std::fs::canonicalize(&initdb).ok().and_then(|f| f.parent().map(Path::to_path_buf)) {
            if dir.join("pg_ctl").is_file() {
                return Ok(dir);
            }
        }
    }
    let mut found: Vec<(u32, PathBuf)> = Vec::new();
    for (parent, prefix) in [("/usr/lib/postgresql", ""), ("/usr", "pgsql-")] {
        let Ok(entries) = std::fs::read_dir(parent) else { continue };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(v) = name.strip_prefix(prefix).and_then(|v| v.parse::<u32>().ok()) else { continue };
            let bin = e.path().join("bin");
            if bin.join("initdb").is_file() && bin.join("pg_ctl").is_file() {
                found.push((v, bin));
            }
        }
    }
    found.sort();
    found
        .pop()
        .map(|(_, b)| b)
        .ok_or_else(|| Error::ToolMissing { program: "initdb (PostgreSQL server package)".into() })
}

fn postgres_user() -> Result<(u32, u32)> {
    let name = std::ffi::CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam with a valid C string; the result is read at once,
    // before any other call could reuse its static buffer.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(Error::Invalid(
            "running as root, a temporary cluster runs as the 'postgres' user, and there is none".into(),
        ));
    }
    // SAFETY: checked non-null above.
    Ok(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(|e| Error::Io { path: path.display().to_string(), cause: e })
}

/// Runs a server program (as `postgres` via `runuser` when Arkiv runs as
/// root) in `dir`, where the `postgres` user can always be.
fn run_server_tool(as_postgres: bool, dir: &Path, program: &Path, args: &[&str]) -> Result<()> {
    let name = program.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut cmd = if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.args(args).current_dir(dir).stdin(std::process::Stdio::null());
    let out = cmd.output().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            Error::ToolMissing { program: if as_postgres { "runuser".into() } else { name.clone() } }
        }
        _ => Error::Io { path: name.clone(), cause: e },
    })?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    Err(Error::ToolFailed {
        program: name,
        status: out.status.to_string(),
        stderr: lines[lines.len().saturating_sub(3)..].join(" / "),
    })
}
