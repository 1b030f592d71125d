//! PostgreSQL: logical dumps (`pg_dump`, `pg_dumpall --globals-only`)
//! restored with `pg_restore`, and verified in a scratch database or a
//! temporary cluster.
//!
//! Everything goes through the standard client programs (`psql`,
//! `pg_dump`, `pg_restore`) rather than a driver: they are what operators
//! already trust and debug with, they read `PGPASSWORD`, `.pgpass`,
//! `PGSSLMODE` and the rest of libpq's environment, and a snapshot holds
//! exactly what `pg_dump` wrote, so it can always be restored by hand.

pub mod checksum;
pub mod logical;
pub mod physical;
pub mod receive;
pub mod sandbox;
pub mod spool;
pub mod url;
pub mod wal;

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use crate::error::{Error, Result};
use crate::process::Tool;
pub use logical::{PgDumpSource, PgTarget};
pub use url::{Conn, Only, PgUrl};

/// The database connected to for server-wide work (listing and creating
/// databases), as `pg_dumpall` and `createdb` do.
pub const MAINTENANCE_DB: &str = "postgres";

/// The stream `pg_dumpall --globals-only` is stored under.
pub const GLOBALS_STREAM: &str = "globals.sql";

/// The suffix of each database's `pg_dump` stream.
pub const DUMP_SUFFIX: &str = ".pgdump";

/// Runs one query with `psql` and returns its unaligned, tuples-only
/// output (trailing newline trimmed). A connection failure becomes a
/// one-line error naming the server.
pub fn query(conn: &Conn, db: &str, sql: &str) -> Result<String> {
    let out = conn
        .tool("psql", Some(db))
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg(sql)
        .output()
        .map_err(|e| connection_error(e, conn))?;
    Ok(out.trim_end_matches('\n').to_string())
}

/// A client program's failure to reach the server, reported as such with
/// libpq's own reason (`Connection refused`, `password authentication
/// failed`, …) rather than as "psql failed".
pub fn connection_error(e: Error, conn: &Conn) -> Error {
    match e {
        Error::ToolFailed { program, stderr, .. }
            if stderr.contains("connection to server") || stderr.contains("could not connect") =>
        {
            let reason = stderr.trim_start_matches(&format!("{program}: ")).trim_start_matches("error: ");
            Error::Source { location: conn.server(), message: format!("cannot connect: {reason}") }
        }
        other => other,
    }
}

/// `"ident"` with inner quotes doubled.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// An escape-string literal, safe whatever `standard_conforming_strings`
/// is set to.
pub fn quote_literal(s: &str) -> String {
    format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// A server version as `server_version_num` spells it (150020, 90624)
/// reduced to its major release (150000, 90600).
pub fn major_of(num: u32) -> u32 {
    if num >= 100_000 {
        num / 10_000 * 10_000
    } else {
        num / 100 * 100
    }
}

/// A major release for people: `15`, `9.6`.
pub fn major_name(num: u32) -> String {
    if num >= 100_000 {
        (num / 10_000).to_string()
    } else {
        format!("{}.{}", num / 10_000, num / 100 % 100)
    }
}

/// The version a client program prints (`pg_dump (PostgreSQL) 15.20
/// (Debian …)`, `pg_restore (PostgreSQL) 17devel`) as a version number.
pub fn parse_tool_version(text: &str) -> Option<u32> {
    let v = text.split("(PostgreSQL)").nth(1)?.split_whitespace().next()?;
    let mut parts = v.split('.').map(|p| p.chars().take_while(char::is_ascii_digit).collect::<String>());
    let major: u32 = parts.next()?.parse().ok()?;
    let second: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let third: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    Some(if major >= 10 { major * 10_000 + second } else { major * 10_000 + second * 100 + third })
}

/// A client program's version: its `--version` line and number.
pub fn tool_version(program: &str) -> Result<(String, u32)> {
    let text = Tool::new(program).arg("--version").output()?;
    let line = text.lines().next().unwrap_or("").trim().to_string();
    let num = parse_tool_version(&line)
        .ok_or_else(|| Error::Invalid(format!("{program} --version printed '{line}', not a PostgreSQL version")))?;
    Ok((line, num))
}

/// Whether `pg_dump` of version `dump` can dump a server of version
/// `server` (both as `server_version_num`): it refuses newer servers, so
/// this says so up front, with the fix.
pub fn check_dump_version(dump: u32, server: u32, at: &str) -> std::result::Result<(), String> {
    if major_of(server) > major_of(dump) {
        return Err(format!(
            "pg_dump {} cannot dump PostgreSQL {} at {at}: install the PostgreSQL {} client tools (or newer)",
            major_name(dump),
            major_name(server),
            major_name(server)
        ));
    }
    Ok(())
}

/// Whether `pg_restore` of version `restore` can read a dump written by
/// `pg_dump` of version `dumped_by`: archives of a newer `pg_dump` may use
/// a format an older `pg_restore` cannot read.
pub fn check_restore_version(restore: u32, dumped_by: u32) -> std::result::Result<(), String> {
    if major_of(dumped_by) > major_of(restore) {
        return Err(format!(
            "pg_restore {} cannot read a dump made by pg_dump {}: install the PostgreSQL {} client tools (or newer)",
            major_name(restore),
            major_name(dumped_by),
            major_name(dumped_by)
        ));
    }
    Ok(())
}

/// Whether database `db` exists on the server.
pub fn database_exists(conn: &Conn, db: &str) -> Result<bool> {
    let n = query(
        conn,
        MAINTENANCE_DB,
        &format!("select count(*) from pg_database where datname = {}", quote_literal(db)),
    )?;
    Ok(n.trim() == "1")
}

/// How many tables, views, sequences and other relations database `db`
/// holds outside the system schemas: a database with none is empty enough
/// to restore into.
pub fn user_relations(conn: &Conn, db: &str) -> Result<u64> {
    let n = query(
        conn,
        db,
        "select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace \
         where c.relkind in ('r','p','v','m','S','f') and n.nspname <> 'information_schema' \
         and n.nspname !~ '^pg_'",
    )?;
    n.trim().parse().map_err(|_| Error::Invalid(format!("psql: expected a count of relations, got '{n}'")))
}

/// `CREATE DATABASE` from `template0`, so nothing added to `template1`
/// clashes with what the dump creates.
pub fn create_database(conn: &Conn, db: &str) -> Result<()> {
    query(conn, MAINTENANCE_DB, &format!("create database {} template template0", quote_ident(db))).map(|_| ())
}

pub fn drop_database(conn: &Conn, db: &str) -> Result<()> {
    query(conn, MAINTENANCE_DB, &format!("drop database if exists {}", quote_ident(db))).map(|_| ())
}

/// What replaying `pg_dumpall --globals-only` output did.
#[derive(Debug, Default)]
pub struct GlobalsReplay {
    /// Roles and tablespaces that existed already (their `ALTER ROLE`
    /// still applied).
    pub existed: Vec<String>,
    /// Every other error psql reported.
    pub errors: Vec<String>,
}

/// Replays a globals script with psql, statement by statement. It is not
/// stopped at the first error: on a server that already has some of the
/// roles (always `postgres`) their `CREATE ROLE` fails while the
/// `ALTER ROLE` after it brings them to the recorded attributes, which is
/// the point. Which errors matter is the caller's decision.
pub fn replay_globals(conn: &Conn, sql: Vec<u8>) -> Result<GlobalsReplay> {
    // Not `Tool::feed`: the errors psql prints while carrying on are the
    // result here, not just a failure's explanation.
    let mut cmd = Command::new("psql");
    cmd.args(["--no-password", "-X", "-q", "-v", "ON_ERROR_STOP=0", "-v", "VERBOSITY=terse", "-f", "-"]);
    if let Some(h) = &conn.host {
        cmd.arg("--host").arg(h);
    }
    if let Some(p) = conn.port {
        cmd.arg("--port").arg(p.to_string());
    }
    if let Some(u) = &conn.user {
        cmd.arg("--username").arg(u);
    }
    cmd.arg(format!("--dbname=dbname={}", url::conninfo_value(MAINTENANCE_DB)));
    if std::env::var_os("PGCONNECT_TIMEOUT").is_none() {
        cmd.env("PGCONNECT_TIMEOUT", "15");
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::ToolMissing { program: "psql".into() },
        _ => Error::Io { path: "psql".into(), cause: e },
    })?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let writer = std::thread::spawn(move || stdin.write_all(&sql));
    let mut err = String::new();
    let read = child.stderr.take().expect("stderr is piped").read_to_string(&mut err);
    let status = child.wait().map_err(|e| Error::Io { path: "psql".into(), cause: e })?;
    let written = writer.join().expect("writer thread");
    read.map_err(|e| Error::Io { path: "psql (standard error)".into(), cause: e })?;
    if !status.success() {
        let tail: Vec<&str> = err.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        let e = Error::ToolFailed {
            program: "psql".into(),
            status: status.to_string(),
            stderr: tail[tail.len().saturating_sub(3)..].join(" / "),
        };
        return Err(connection_error(e, conn));
    }
    written.map_err(|e| Error::Io { path: "psql (standard input)".into(), cause: e })?;
    let mut out = GlobalsReplay::default();
    for line in err.lines().filter(|l| l.contains("ERROR:")) {
        let msg = line[line.find("ERROR:").expect("contains ERROR:") + 6..].trim().to_string();
        if msg.ends_with("already exists") {
            out.existed.push(msg);
        } else {
            out.errors.push(msg);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_tool_output() {
        assert_eq!(parse_tool_version("pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)"), Some(150020));
        assert_eq!(parse_tool_version("pg_restore (PostgreSQL) 17devel"), Some(170000));
        assert_eq!(parse_tool_version("pg_dump (PostgreSQL) 16beta1"), Some(160000));
        assert_eq!(parse_tool_version("pg_dump (PostgreSQL) 9.6.24"), Some(90624));
        assert_eq!(parse_tool_version("mysqldump  Ver 10.19"), None);
        assert_eq!(major_name(90624), "9.6");
        assert_eq!(major_name(170002), "17");
    }

    #[test]
    fn an_older_pg_dump_is_refused_for_a_newer_server_with_the_fix() {
        let e = check_dump_version(150020, 170002, "db:5432").unwrap_err();
        assert_eq!(
            e,
            "pg_dump 15 cannot dump PostgreSQL 17 at db:5432: install the PostgreSQL 17 client tools (or newer)"
        );
        // Minor releases and older servers are fine.
        assert!(check_dump_version(150020, 150001, "x").is_ok());
        assert!(check_dump_version(150001, 150020, "x").is_ok());
        assert!(check_dump_version(170000, 90624, "x").is_ok());
        assert!(check_dump_version(90624, 90500, "x").is_ok());
        assert!(check_dump_version(90500, 90624, "x").unwrap_err().contains("pg_dump 9.5 cannot dump PostgreSQL 9.6"));
    }

    #[test]
    fn an_older_pg_restore_is_refused_for_a_newer_dump() {
        assert!(check_restore_version(150020, 150001).is_ok());
        assert!(check_restore_version(170000, 150020).is_ok());
        let e = check_restore_version(140000, 160002).unwrap_err();
        assert!(e.starts_with("pg_restore 14 cannot read a dump made by pg_dump 16"), "{e}");
    }

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(quote_ident("shop"), "\"shop\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's \\ here"), "E'it''s \\\\ here'");
    }

    #[test]
    fn connection_failures_name_the_server() {
        let conn = Conn { host: Some("db".into()), port: Some(1), user: None };
        let e = Error::ToolFailed {
            program: "psql".into(),
            status: "exit status 2".into(),
            stderr: "psql: error: connection to server at \"db\", port 1 failed: Connection refused".into(),
        };
        let e = connection_error(e, &conn).to_string();
        assert!(e.starts_with("db:1: cannot connect: connection to server"), "{e}");
    }
}
