//! Logical backups: one `pg_dump -Fc -Z0` stream per database, plus
//! `pg_dumpall --globals-only` for roles and tablespaces, and their
//! restore with `pg_restore` into a named database.
//!
//! Dumps are uncompressed (`-Z0`) because Arkiv compresses and
//! deduplicates chunks itself: a compressed dump changes everywhere when
//! one row changes and would be stored anew every time.
//!
//! Restores read the dump from `pg_restore`'s standard input. A custom
//! format dump written to a pipe has no table offsets, so `pg_restore`
//! reads it front to back; that still works for a whole database and for
//! `--table`/`--schema` (it skips the data blocks it does not want), only
//! parallel restore (`-j`) would need a seekable file, and Arkiv does not
//! offer it.

use std::io::Read;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::url::{PgUrl, BACKUP_OPTIONS, RESTORE_OPTIONS};
use super::{
    check_dump_version, check_restore_version, connection_error, create_database, database_exists, drop_database,
    query, quote_ident, replay_globals, tool_version, user_relations, Conn, Only, DUMP_SUFFIX, GLOBALS_STREAM,
    MAINTENANCE_DB,
};
use crate::error::{Error, Result};
use crate::stream::{
    stream_base, stream_name, RestoreOptions, RestoreReport, StoredStream, StreamBackup, StreamSource, StreamTarget,
    Streams,
};

/// What the snapshot's metadata says about one database.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatabaseInfo {
    pub name: String,
    /// `pg_database_size` when the dump started.
    pub bytes: u64,
    pub encoding: String,
    pub stream: String,
    pub dump_bytes: u64,
    pub seconds: f64,
}

/// `postgres://…` as a backup source.
#[derive(Debug, Clone)]
pub struct PgDumpSource {
    pub url: PgUrl,
}

impl PgDumpSource {
    pub fn new(spec: &str) -> Result<PgDumpSource> {
        let url = PgUrl::parse(spec)?;
        url.reject("a backup", BACKUP_OPTIONS)?;
        Ok(PgDumpSource { url })
    }

    fn source_error(&self, message: impl Into<String>) -> Error {
        Error::Source { location: self.location(), message: message.into() }
    }

    /// The databases to dump with their size and encoding, by name.
    fn databases(&self, info_db: &str) -> Result<Vec<(String, u64, String)>> {
        let filter = match &self.url.dbname {
            Some(_) => "datname = current_database()".to_string(),
            None => "datallowconn and not datistemplate".to_string(),
        };
        // JSON, because a database name may hold any separator psql could
        // be told to use.
        let sql = format!(
            "select coalesce(json_agg(json_build_array(datname, pg_database_size(oid), \
             pg_encoding_to_char(encoding)) order by datname), '[]') from pg_database where {filter}"
        );
        let text = query(&self.url.conn, info_db, &sql)?;
        let list: Vec<(String, u64, String)> = serde_json::from_str(&text)
            .map_err(|e| self.source_error(format!("unexpected answer listing databases ({e}): {text}")))?;
        for x in &self.url.exclude_databases {
            if !list.iter().any(|(n, _, _)| n == x) {
                return Err(self.source_error(format!("exclude-database={x}: no such database on the server")));
            }
        }
        Ok(list.into_iter().filter(|(n, _, _)| !self.url.exclude_databases.contains(n)).collect())
    }
}

impl StreamSource for PgDumpSource {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn location(&self) -> String {
        self.url.location()
    }

    fn backup(&self, out: &mut StreamBackup) -> Result<serde_json::Value> {
        let t0 = Instant::now();
        let conn = &self.url.conn;
        let info_db = self.url.dbname.as_deref().unwrap_or(MAINTENANCE_DB);
        let version = query(
            conn,
            info_db,
            "select current_setting('server_version') || '|' || current_setting('server_version_num')",
        )?;
        let (server_version, num) = version.rsplit_once('|').unwrap_or((&version, ""));
        let server_num: u32 =
            num.parse().map_err(|_| self.source_error(format!("unexpected server version answer '{version}'")))?;
        let (dump_version, dump_num) = tool_version("pg_dump")?;
        check_dump_version(dump_num, server_num, &conn.server()).map_err(|m| self.source_error(m))?;

        let databases = self.databases(info_db)?;
        if databases.is_empty() {
            return Err(self.source_error("no database to back up"));
        }
        let globals = self.url.globals.unwrap_or(self.url.dbname.is_none());
        let mut meta_globals = serde_json::Value::Null;
        if globals {
            let t = Instant::now();
            // pg_dumpall ignores a database in --dbname; --database names
            // the one it connects to.
            let mut tool = conn.tool("pg_dumpall", None).arg(format!("--database={info_db}")).arg("--globals-only");
            if !self.url.role_passwords {
                tool = tool.arg("--no-role-passwords");
            }
            let bytes = out.add_tool(GLOBALS_STREAM, tool.stream()?).map_err(|e| connection_error(e, conn))?;
            meta_globals = serde_json::json!({
                "stream": GLOBALS_STREAM,
                "bytes": bytes,
                "seconds": t.elapsed().as_secs_f64(),
                "role_passwords": self.url.role_passwords,
            });
        }
        let mut infos = Vec::new();
        for (name, size, encoding) in databases {
            let t = Instant::now();
            let stream = stream_name(&name, DUMP_SUFFIX);
            let mut tool = conn.tool("pg_dump", Some(&name)).args(["--format=custom", "--compress=0"]);
            match self.url.only {
                Some(Only::Schema) => tool = tool.arg("--schema-only"),
                Some(Only::Data) => tool = tool.arg("--data-only"),
                None => {}
            }
            let dump_bytes = out.add_tool(&stream, tool.stream()?).map_err(|e| connection_error(e, conn))?;
            infos.push(DatabaseInfo {
                name,
                bytes: size,
                encoding,
                stream,
                dump_bytes,
                seconds: t.elapsed().as_secs_f64(),
            });
        }
        Ok(serde_json::json!({
            "server": conn.server(),
            "server_version": server_version,
            "server_version_num": server_num,
            "pg_dump_version": dump_version,
            "pg_dump_version_num": dump_num,
            "mode": self.url.only.map(Only::as_str).unwrap_or("full"),
            "all_databases": self.url.dbname.is_none(),
            "globals": meta_globals,
            "databases": infos,
            "seconds": t0.elapsed().as_secs_f64(),
        }))
    }
}

/// The database dumps a snapshot holds, by database name.
pub fn dumps<'s>(streams: &'s Streams) -> Vec<(String, &'s StoredStream)> {
    streams.list.iter().filter_map(|s| stream_base(&s.name, DUMP_SUFFIX).map(|db| (db, s))).collect()
}

/// The one database dump to restore: the one asked for, or the only one.
pub fn choose_dump<'s>(streams: &'s Streams, wanted: Option<&str>, how: &str) -> Result<(String, &'s StoredStream)> {
    let all = dumps(streams);
    let names = || all.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ");
    match wanted {
        Some(w) => all.iter().find(|(n, _)| n == w).cloned().ok_or_else(|| {
            Error::Invalid(format!(
                "snapshot {} has no dump of database '{w}' (it has: {})",
                streams.id.short(),
                names()
            ))
        }),
        None if all.len() == 1 => Ok(all[0].clone()),
        None if all.is_empty() => {
            Err(Error::Invalid(format!("snapshot {} holds no database dump", streams.id.short())))
        }
        None => Err(Error::Invalid(format!(
            "snapshot {} holds {} databases ({}); choose one with {how}",
            streams.id.short(),
            all.len(),
            names()
        ))),
    }
}

/// Fails clearly when the installed `pg_restore` is older than the
/// `pg_dump` that wrote the snapshot.
pub fn check_pg_restore(streams: &Streams) -> Result<()> {
    let (_, restore_num) = tool_version("pg_restore")?;
    if let Some(dumped_by) = streams.metadata()["pg_dump_version_num"].as_u64() {
        check_restore_version(restore_num, dumped_by as u32).map_err(Error::Invalid)?;
    }
    Ok(())
}

/// How one dump is restored.
pub struct PgRestore<'a> {
    pub conn: &'a Conn,
    pub db: &'a str,
    pub clean: bool,
    pub tables: &'a [String],
    pub schemas: &'a [String],
    pub owner: bool,
    pub single_transaction: bool,
}

impl PgRestore<'_> {
    /// Feeds the dump to `pg_restore`; returns the bytes restored.
    pub fn run(&self, streams: &Streams, dump: &StoredStream) -> Result<u64> {
        // `pg_restore --schema` restores the objects in a schema but not
        // the schema itself, so into a new database it would fail on the
        // first table; the schema is made here if it is missing.
        for s in self.schemas {
            query(self.conn, self.db, &format!("create schema if not exists {}", quote_ident(s)))?;
        }
        let mut tool = self.conn.tool("pg_restore", Some(self.db)).arg("--exit-on-error");
        if self.single_transaction {
            // A failure then leaves the database as it was, `--clean`'s
            // drops included.
            tool = tool.arg("--single-transaction");
        }
        if self.clean {
            tool = tool.args(["--clean", "--if-exists"]);
        }
        if !self.owner {
            tool = tool.args(["--no-owner", "--no-privileges"]);
        }
        for t in self.tables {
            tool = tool.arg(format!("--table={t}"));
        }
        for s in self.schemas {
            tool = tool.arg(format!("--schema={s}"));
        }
        let mut reader = streams.reader(dump);
        tool.feed(&mut reader).map_err(|e| connection_error(e, self.conn))
    }
}

/// Reads the snapshot's globals script and replays it; errors other than
/// "already exists" fail.
pub fn restore_globals(conn: &Conn, streams: &Streams) -> Result<(u64, Vec<String>)> {
    let s = streams.get(GLOBALS_STREAM).ok_or_else(|| {
        Error::Invalid(format!(
            "snapshot {} holds no globals (roles, tablespaces): it was taken of one database without globals=true",
            streams.id.short()
        ))
    })?;
    let mut sql = Vec::with_capacity(s.size as usize);
    streams.reader(s).read_to_end(&mut sql).map_err(crate::process::input_error)?;
    let len = sql.len() as u64;
    let replay = replay_globals(conn, sql)?;
    if !replay.errors.is_empty() {
        return Err(Error::Source {
            location: conn.server(),
            message: format!("replaying {GLOBALS_STREAM} failed: {}", replay.errors.join("; ")),
        });
    }
    let mut notes = Vec::new();
    if !replay.existed.is_empty() {
        notes.push(format!(
            "globals: {} role(s)/tablespace(s) existed already and were updated to the snapshot's attributes",
            replay.existed.len()
        ));
    }
    Ok((len, notes))
}

/// `postgres://…/db` as a restore target.
#[derive(Debug, Clone)]
pub struct PgTarget {
    pub url: PgUrl,
}

impl PgTarget {
    pub fn new(spec: &str) -> Result<PgTarget> {
        let url = PgUrl::parse(spec)?;
        url.reject("a restore target", RESTORE_OPTIONS)?;
        Ok(PgTarget { url })
    }
}

impl StreamTarget for PgTarget {
    fn location(&self) -> String {
        self.url.location()
    }

    fn accepts(&self, kind: &str) -> bool {
        kind == "postgres"
    }

    fn restore(&self, streams: &Streams, opts: &RestoreOptions) -> Result<RestoreReport> {
        opts.reject_unsupported("PostgreSQL", &["table", "schema", "clean", "overwrite", "database", "globals"])?;
        let t0 = Instant::now();
        let conn = &self.url.conn;
        let (source_db, dump) = choose_dump(streams, opts.database.as_deref(), "--database")?;
        let db = self.url.dbname.clone().unwrap_or_else(|| source_db.clone());
        check_pg_restore(streams)?;
        // Not `Error::Source`: the caller names the target URL already.
        let server = conn.server();
        let at = |m: String| Error::Invalid(format!("{m} (at {server})"));
        let mut report = RestoreReport { target: conn.url(Some(&db)), ..Default::default() };

        // Everything that can refuse is checked before anything changes.
        let exists = database_exists(conn, &db)?;
        let relations = if exists { user_relations(conn, &db)? } else { 0 };
        // A data-only dump is meant for tables that exist: the database
        // having them is the normal case, and rows that clash fail the
        // (single-transaction) restore as a whole.
        let data_only = streams.metadata()["mode"].as_str() == Some(Only::Data.as_str());
        if data_only && opts.overwrite {
            return Err(at(format!(
                "snapshot {} is data-only: it is restored into the existing tables of '{db}', \
                 and --overwrite would replace them with an empty database",
                streams.id.short()
            )));
        }
        if opts.overwrite && (!opts.tables.is_empty() || !opts.schemas.is_empty()) {
            // --overwrite replaces the whole database with what is restored:
            // with --table or --schema that would be a database of one table.
            return Err(at(format!(
                "--overwrite replaces all of '{db}' and cannot be combined with --table or --schema; \
                 use --clean to replace only the tables or schemas restored"
            )));
        }
        if relations > 0 && !data_only && !opts.clean && !opts.overwrite {
            return Err(at(format!(
                "database '{db}' already holds {relations} table(s) or other relations and was left as it is; \
                 restore into a new database, or give --clean (drop and recreate what the dump holds) \
                 or --overwrite (replace the whole database)"
            )));
        }
        if opts.globals {
            let (bytes, notes) = restore_globals(conn, streams)?;
            report.streams.push((GLOBALS_STREAM.to_string(), bytes));
            report.bytes += bytes;
            report.notes.extend(notes);
        }

        // --overwrite restores into a new database and swaps it in only
        // once the restore succeeded, so a failed one leaves the old
        // database as it was.
        let replace = exists && relations > 0 && opts.overwrite;
        let into = if replace { crate::verify::scratch_name().replace("verify", "restore") } else { db.clone() };
        let created = !exists || replace;
        if created {
            create_database(conn, &into)?;
        }
        let restore = PgRestore {
            conn,
            db: &into,
            clean: opts.clean && !created,
            tables: &opts.tables,
            schemas: &opts.schemas,
            owner: self.url.owner,
            single_transaction: self.url.single_transaction,
        };
        let bytes = match restore.run(streams, dump) {
            Ok(n) => n,
            Err(e) => {
                if created {
                    // Best effort: the restore's own error is the one to
                    // report; at worst an empty database of ours is left.
                    let _ = drop_database(conn, &into);
                }
                return Err(e);
            }
        };
        if replace {
            query(conn, MAINTENANCE_DB, &format!("drop database {}", quote_ident(&db))).map_err(|e| {
                let _ = drop_database(conn, &into);
                at(format!("cannot replace database '{db}' (it is left as it was): {e}"))
            })?;
            query(
                conn,
                MAINTENANCE_DB,
                &format!("alter database {} rename to {}", quote_ident(&into), quote_ident(&db)),
            )
            .map_err(|e| {
                at(format!("the old '{db}' was dropped but the restored copy '{into}' could not be renamed: {e}"))
            })?;
            report.notes.push(format!("replaced database '{db}'"));
        } else if created {
            report.notes.push(format!("created database '{db}'"));
        }
        report.streams.push((dump.name.clone(), bytes));
        report.bytes += bytes;
        if source_db != db {
            report.notes.push(format!("database '{source_db}' restored as '{db}'"));
        }
        report.duration_secs = t0.elapsed().as_secs_f64();
        Ok(report)
    }
}
