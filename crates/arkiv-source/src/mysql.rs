//! MySQL and MariaDB: one consistent logical dump per database, restored
//! into a database of any name.
//!
//! Each database is dumped on its own with `mariadb-dump` (or `mysqldump`)
//! `--single-transaction --routines --triggers --events` and *without*
//! `--databases`, so the dump carries no `CREATE DATABASE`/`USE` and can be
//! fed into whatever database the operator names at restore time. The dump
//! streams straight into the repository as `<database>.sql`.
//!
//! Passwords never pass through Arkiv: the client tools read them from
//! `MYSQL_PWD`, `~/.my.cnf` or an option file named by
//! `?defaults-extra-file=`, so they appear on no command line, in no log
//! and in no snapshot. A password written into the URL is refused.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;

use crate::error::{Error, Result};
use crate::process::Tool;
use crate::stream::{
    stream_base, stream_name, RestoreOptions, RestoreReport, StreamBackup, StreamSource, StreamTarget, Streams,
};
use crate::verify::{is_true, scratch_name, Assertion, Sandbox};

/// The suffix of a database's stream: `shop.sql`.
pub const STREAM_SUFFIX: &str = ".sql";

/// Databases left out when a URL names none. The first three are views of
/// the running server, not data. `mysql` is the server's own catalog
/// (users, grants, time zones, mostly non-transactional Aria/MyISAM
/// tables): restored as an ordinary database it is useless and restored as
/// `mysql` it replaces the target's accounts, so it is backed up only when
/// named (`mysql://host/mysql`).
pub const SKIPPED_DATABASES: [&str; 4] = ["information_schema", "performance_schema", "sys", "mysql"];

/// Storage engines whose tables a single transaction makes consistent.
const TRANSACTIONAL_ENGINES: [&str; 2] = ["InnoDB", "XtraDB"];

/// A parsed `mysql://[user@]host[:port]/[database][?options]` (or
/// `mariadb://`). It never holds a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MysqlUrl {
    /// `mysql` or `mariadb`, as written (kept so the location reads back
    /// the way the operator wrote it).
    pub scheme: String,
    pub user: Option<String>,
    /// `None`: the client's default (the local socket, or what an option
    /// file says).
    pub host: Option<String>,
    pub port: Option<u16>,
    pub database: Option<String>,
    /// `?socket=/run/mysqld/mysqld.sock`.
    pub socket: Option<PathBuf>,
    /// `?defaults-extra-file=/etc/arkiv/my.cnf`: an option file read after
    /// the global ones (where a password can live).
    pub defaults_extra_file: Option<PathBuf>,
}

const URL_OPTIONS: &str = "socket, defaults-extra-file";

impl MysqlUrl {
    pub fn parse(url: &str) -> Result<MysqlUrl> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| Error::Invalid(format!("{url}: expected mysql://[user@]host[:port]/[database]")))?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "mysql" && scheme != "mariadb" {
            return Err(Error::Invalid(format!("{url}: not a mysql:// or mariadb:// URL")));
        }
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        if let Some(u) = userinfo {
            if let Some((user, _)) = u.split_once(':') {
                return Err(password_in_url(&scheme, user, hostport));
            }
        }
        let user = userinfo.map(|u| percent_decode(u, url)).transpose()?.filter(|u| !u.is_empty());
        let (host, port) = split_host_port(hostport, url)?;
        let database = match path.trim_end_matches('/') {
            "" => None,
            p => Some(percent_decode(p, url)?),
        };
        let mut parsed = MysqlUrl { scheme, user, host, port, database, socket: None, defaults_extra_file: None };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v, url)?;
            if v.is_empty() {
                return Err(Error::Invalid(format!("{url}: option '{k}' needs a value")));
            }
            match k {
                "socket" => parsed.socket = Some(PathBuf::from(v)),
                "defaults-extra-file" | "defaults_extra_file" => parsed.defaults_extra_file = Some(PathBuf::from(v)),
                "password" | "pass" | "pwd" => return Err(password_in_url(&parsed.scheme, "", hostport)),
                _ => {
                    return Err(Error::Invalid(format!("{url}: unknown option '{k}' (known: {URL_OPTIONS})")));
                }
            }
        }
        Ok(parsed)
    }

    /// The same server, another database (or none).
    pub fn with_database(&self, database: Option<&str>) -> MysqlUrl {
        MysqlUrl { database: database.map(str::to_string), ..self.clone() }
    }

    /// The URL again, canonical and password-free; [`MysqlUrl::parse`]
    /// reads it back to the same value (the verify sandbox relies on that).
    pub fn location(&self) -> String {
        let mut s = format!("{}://", self.scheme);
        if let Some(u) = &self.user {
            s.push_str(&percent_encode(u, ""));
            s.push('@');
        }
        match &self.host {
            Some(h) if h.contains(':') => s.push_str(&format!("[{h}]")),
            Some(h) => s.push_str(h),
            None => {}
        }
        if let Some(p) = self.port {
            s.push_str(&format!(":{p}"));
        }
        s.push('/');
        if let Some(d) = &self.database {
            s.push_str(&percent_encode(d, ""));
        }
        let mut opts = Vec::new();
        if let Some(p) = &self.socket {
            opts.push(format!("socket={}", percent_encode(&p.to_string_lossy(), "/")));
        }
        if let Some(p) = &self.defaults_extra_file {
            opts.push(format!("defaults-extra-file={}", percent_encode(&p.to_string_lossy(), "/")));
        }
        if !opts.is_empty() {
            s.push('?');
            s.push_str(&opts.join("&"));
        }
        s
    }

    /// The client options that reach the server. `--defaults-extra-file`
    /// must come first: the tools only accept it there.
    fn connection_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        if let Some(f) = &self.defaults_extra_file {
            let mut o = OsString::from("--defaults-extra-file=");
            o.push(f);
            a.push(o);
        }
        if let Some(u) = &self.user {
            a.push(format!("--user={u}").into());
        }
        if let Some(h) = &self.host {
            a.push(format!("--host={h}").into());
        }
        if let Some(p) = self.port {
            a.push(format!("--port={p}").into());
        }
        if let Some(s) = &self.socket {
            let mut o = OsString::from("--socket=");
            o.push(s);
            a.push(o);
        }
        a
    }
}

fn password_in_url(scheme: &str, user: &str, host: &str) -> Error {
    let user = if user.is_empty() { String::new() } else { format!("{user}:…@") };
    Error::Invalid(format!(
        "{scheme}://{user}{host}: a password does not belong in the URL (it would show in process lists, logs and the \
         snapshot); put it in MYSQL_PWD, in ~/.my.cnf ([client] password=…), or in an option file named by \
         ?defaults-extra-file=/path"
    ))
}

fn split_host_port(hostport: &str, url: &str) -> Result<(Option<String>, Option<u16>)> {
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (h, after) =
            rest.split_once(']').ok_or_else(|| Error::Invalid(format!("{url}: unclosed '[' in the host")))?;
        (h, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    let port = match port {
        None | Some("") => None,
        Some(p) => Some(p.parse::<u16>().map_err(|_| Error::Invalid(format!("{url}: '{p}' is not a port number")))?),
    };
    let host = percent_decode(host, url)?;
    Ok(((!host.is_empty()).then_some(host), port))
}

/// Decodes `%XX` escapes (a database or user name may hold `/`, `@`, `?`).
pub(crate) fn percent_decode(s: &str, url: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let code = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| Error::Invalid(format!("{url}: bad %-escape in '{s}'")))?;
            out.push(code);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::Invalid(format!("{url}: '{s}' is not UTF-8 once decoded")))
}

/// Escapes everything but unreserved characters (and those in `keep`).
pub(crate) fn percent_encode(s: &str, keep: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~$".contains(&b) || keep.as_bytes().contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A string as an SQL literal that no `sql_mode` or character set can
/// misread: hex bytes, converted to text.
fn sql_str(s: &str) -> String {
    let hex: String = s.bytes().map(|b| format!("{b:02X}")).collect();
    format!("CONVERT(X'{hex}' USING utf8mb4)")
}

fn ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

/// Names are selected as `HEX(name)` so that tabs, newlines and backslashes
/// in them survive the client's batch output.
fn unhex(s: &str) -> Result<String> {
    let s = s.trim();
    let bytes: Option<Vec<u8>> =
        (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect();
    bytes
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| Error::Invalid(format!("the server answered '{s}' where a hex-encoded name was expected")))
}

/// The dump and client programs found on this machine.
#[derive(Debug, Clone)]
struct Tools {
    dump: &'static str,
    dump_version: String,
    client: &'static str,
}

impl Tools {
    /// `mariadb-dump` and `mariadb` when installed (they know MariaDB's
    /// newer syntax and also dump MySQL), else `mysqldump` and `mysql`.
    fn find() -> Result<Tools> {
        let (dump, dump_version) = first_present(&["mariadb-dump", "mysqldump"])?;
        let (client, _) = first_present(&["mariadb", "mysql"])?;
        Ok(Tools { dump, dump_version, client })
    }

    /// MySQL's own mysqldump (not MariaDB's under that name).
    fn is_oracle_mysqldump(&self) -> bool {
        self.dump == "mysqldump" && !self.dump_version.contains("MariaDB")
    }
}

fn first_present(programs: &[&'static str]) -> Result<(&'static str, String)> {
    for p in programs {
        match Tool::new(p).arg("--version").output() {
            Ok(v) => return Ok((p, v.trim().to_string())),
            Err(Error::ToolMissing { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Error::ToolMissing { program: programs.join(" or ") })
}

/// Talks to one server through the command-line client.
struct Server<'a> {
    url: &'a MysqlUrl,
    tools: &'a Tools,
}

impl Server<'_> {
    /// Runs `sql` and returns its rows, each split into columns.
    fn query(&self, database: Option<&str>, sql: &str) -> Result<Vec<Vec<String>>> {
        let mut tool = Tool::new(self.tools.client).args(self.url.connection_args()).args(["-N", "-B"]);
        if let Some(d) = database {
            tool = tool.arg(format!("--database={d}"));
        }
        let out = tool.arg("-e").arg(sql).output().map_err(|e| self.failed(e))?;
        Ok(out.lines().map(|l| l.split('\t').map(str::to_string).collect()).collect())
    }

    /// The first column of the first row, if any.
    fn value(&self, database: Option<&str>, sql: &str) -> Result<Option<String>> {
        Ok(self.query(database, sql)?.into_iter().next().and_then(|r| r.into_iter().next()))
    }

    fn count(&self, database: Option<&str>, sql: &str) -> Result<u64> {
        let v = self.value(database, sql)?.unwrap_or_default();
        v.trim().parse().map_err(|_| self.error(format!("expected a count from '{sql}', got '{v}'")))
    }

    /// A tool's failure, named by the server it was talking to.
    fn failed(&self, e: Error) -> Error {
        match e {
            Error::ToolFailed { program, status, stderr } => {
                // The tools start their messages with their own name.
                let why = if stderr.is_empty() { status } else { stderr };
                match why.starts_with(&format!("{program}:")) {
                    true => self.error(why),
                    false => self.error(format!("{program}: {why}")),
                }
            }
            other => other,
        }
    }

    fn error(&self, message: String) -> Error {
        Error::Source { location: self.url.location(), message }
    }

    fn database_info(&self, name: &str) -> Result<Option<DatabaseInfo>> {
        let rows = self.query(
            None,
            &format!(
                "SELECT HEX(schema_name), default_character_set_name, default_collation_name \
                 FROM information_schema.schemata WHERE schema_name = {}",
                sql_str(name)
            ),
        )?;
        rows.into_iter().next().map(DatabaseInfo::from_row).transpose()
    }

    fn databases(&self) -> Result<Vec<DatabaseInfo>> {
        self.query(
            None,
            "SELECT HEX(schema_name), default_character_set_name, default_collation_name \
             FROM information_schema.schemata ORDER BY schema_name",
        )?
        .into_iter()
        .map(DatabaseInfo::from_row)
        .collect()
    }

    fn table_count(&self, name: &str) -> Result<u64> {
        self.count(
            None,
            &format!("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = {}", sql_str(name)),
        )
    }

    /// Creates `name` unless it exists, with the character set and collation
    /// the original had (a dump without `--databases` does not carry them).
    fn create_database(&self, name: &str, like: Option<&DatabaseInfo>) -> Result<()> {
        let mut sql = format!("CREATE DATABASE IF NOT EXISTS {}", ident(name));
        if let Some(d) = like {
            if is_word(&d.charset) && is_word(&d.collation) {
                sql.push_str(&format!(" CHARACTER SET {} COLLATE {}", d.charset, d.collation));
            }
        }
        self.query(None, &sql).map(|_| ())
    }

    fn drop_database(&self, name: &str) -> Result<()> {
        self.query(None, &format!("DROP DATABASE IF EXISTS {}", ident(name))).map(|_| ())
    }

    /// Feeds a dump into `database`; the client stops at the first error
    /// and exits non-zero, which fails the restore.
    fn load(&self, database: &str, input: &mut dyn std::io::Read) -> Result<u64> {
        Tool::new(self.tools.client)
            .args(self.url.connection_args())
            .arg(format!("--database={database}"))
            .feed(input)
            .map_err(|e| self.failed(e))
    }
}

fn is_word(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A database as the server describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DatabaseInfo {
    pub name: String,
    pub charset: String,
    pub collation: String,
}

impl DatabaseInfo {
    fn from_row(row: Vec<String>) -> Result<DatabaseInfo> {
        let mut it = row.into_iter();
        let name = unhex(&it.next().unwrap_or_default())?;
        Ok(DatabaseInfo { name, charset: it.next().unwrap_or_default(), collation: it.next().unwrap_or_default() })
    }
}

/// `mysql://…` as a source.
#[derive(Debug, Clone)]
pub struct MysqlSource {
    pub url: MysqlUrl,
}

impl MysqlSource {
    pub fn new(url: &str) -> Result<MysqlSource> {
        Ok(MysqlSource { url: MysqlUrl::parse(url)? })
    }
}

impl StreamSource for MysqlSource {
    fn kind(&self) -> &'static str {
        "mysql"
    }

    fn location(&self) -> String {
        self.url.location()
    }

    fn backup(&self, out: &mut StreamBackup) -> Result<serde_json::Value> {
        let t0 = Instant::now();
        let tools = Tools::find()?;
        let server = Server { url: &self.url, tools: &tools };
        // Also the connection check: a server that cannot be reached or
        // refuses the credentials fails here, before any stream starts.
        let version = server.value(None, "SELECT VERSION()")?.unwrap_or_default();
        let databases = match &self.url.database {
            Some(d) => vec![server
                .database_info(d)?
                .ok_or_else(|| server.error(format!("there is no database '{d}' (or this user cannot see it)")))?],
            None => server.databases()?.into_iter().filter(|d| !SKIPPED_DATABASES.contains(&d.name.as_str())).collect(),
        };
        if databases.is_empty() {
            return Err(server.error(format!(
                "no databases to back up ({} are left out unless named)",
                SKIPPED_DATABASES.join(", ")
            )));
        }
        let sizes = server.query(
            None,
            "SELECT HEX(table_schema), COALESCE(SUM(data_length + index_length), 0) \
             FROM information_schema.tables GROUP BY table_schema",
        )?;
        let size_of = |name: &str| -> Option<u64> {
            sizes.iter().find(|r| r.first().and_then(|h| unhex(h).ok()).as_deref() == Some(name))?.get(1)?.parse().ok()
        };
        let engines = TRANSACTIONAL_ENGINES.map(sql_str).join(", ");
        let loose = server.query(
            None,
            &format!(
                "SELECT HEX(table_schema), HEX(table_name), engine FROM information_schema.tables \
                 WHERE table_type = 'BASE TABLE' AND engine NOT IN ({})",
                engines
            ),
        )?;
        let mut dbs = Vec::new();
        for db in &databases {
            let name = stream_name(&db.name, STREAM_SUFFIX);
            let mut dump = Tool::new(tools.dump).args(self.url.connection_args()).args([
                "--single-transaction",
                "--routines",
                "--triggers",
                "--events",
                "--hex-blob",
                "--no-tablespaces",
                "--default-character-set=utf8mb4",
            ]);
            if tools.is_oracle_mysqldump() {
                // The dump seeds a named database, not a replica: GTID
                // state in it would fail the restore on a GTID server.
                dump = dump.arg("--set-gtid-purged=OFF");
            }
            let t1 = Instant::now();
            let bytes = out.add_tool(&name, dump.arg("--").arg(&db.name).stream()?).map_err(|e| server.failed(e))?;
            let not_transactional: Vec<String> = loose
                .iter()
                .filter(|r| r.first().and_then(|h| unhex(h).ok()).as_deref() == Some(db.name.as_str()))
                .map(|r| {
                    let table = r.get(1).and_then(|h| unhex(h).ok()).unwrap_or_default();
                    format!("{table} ({})", r.get(2).map(String::as_str).unwrap_or("?"))
                })
                .collect();
            if !not_transactional.is_empty() {
                tracing::warn!(
                    database = %db.name,
                    "tables not covered by the dump's transaction (dumped as they were when read): {}",
                    not_transactional.join(", ")
                );
            }
            dbs.push(json!({
                "name": db.name,
                "stream": name,
                "charset": db.charset,
                "collation": db.collation,
                "size_bytes": size_of(&db.name).unwrap_or(0),
                "dump_bytes": bytes,
                "seconds": t1.elapsed().as_secs_f64(),
                "not_transactional": not_transactional,
            }));
        }
        Ok(json!({
            "server_version": version,
            "tool": tools.dump,
            "tool_version": tools.dump_version,
            "databases": dbs,
            "seconds": t0.elapsed().as_secs_f64(),
        }))
    }
}

/// The databases of a snapshot: original name, stream.
fn snapshot_databases<'s>(streams: &'s Streams) -> Vec<(String, &'s crate::stream::StoredStream)> {
    streams.list.iter().filter_map(|s| Some((stream_base(&s.name, STREAM_SUFFIX)?, s))).collect()
}

/// What the source recorded about a database (its character set).
fn recorded_info(streams: &Streams, name: &str) -> Option<DatabaseInfo> {
    let dbs = streams.metadata().get("databases")?.as_array()?;
    let d = dbs.iter().find(|d| d.get("name").and_then(|n| n.as_str()) == Some(name))?;
    serde_json::from_value(d.clone()).ok()
}

/// `mysql://…/database` as a restore target. Without a database in the URL
/// every database of the snapshot goes back under its own name.
#[derive(Debug, Clone)]
pub struct MysqlTarget {
    pub url: MysqlUrl,
}

impl MysqlTarget {
    pub fn new(url: &str) -> Result<MysqlTarget> {
        Ok(MysqlTarget { url: MysqlUrl::parse(url)? })
    }
}

impl StreamTarget for MysqlTarget {
    fn location(&self) -> String {
        self.url.location()
    }

    fn accepts(&self, kind: &str) -> bool {
        kind == "mysql"
    }

    fn restore(&self, streams: &Streams, opts: &RestoreOptions) -> Result<RestoreReport> {
        opts.reject_unsupported("a MySQL/MariaDB server", &["clean", "overwrite", "database", "stream"])?;
        let t0 = Instant::now();
        let all = snapshot_databases(streams);
        let names = || all.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ");
        let mut chosen: Vec<(String, &crate::stream::StoredStream)> = match (&opts.database, &opts.stream) {
            (Some(d), _) => {
                let one = all.iter().find(|(n, _)| n == d).ok_or_else(|| {
                    Error::Invalid(format!(
                        "snapshot {} has no database '{d}' (it has: {})",
                        streams.id.short(),
                        names()
                    ))
                })?;
                vec![one.clone()]
            }
            (None, Some(_)) => {
                let s = streams.single(opts)?;
                let n = stream_base(&s.name, STREAM_SUFFIX).ok_or_else(|| {
                    Error::Invalid(format!("stream '{}' is not a database dump (*{STREAM_SUFFIX})", s.name))
                })?;
                vec![(n, s)]
            }
            (None, None) => all.clone(),
        };
        if chosen.is_empty() {
            return Err(Error::Invalid(format!("snapshot {} holds no database dumps", streams.id.short())));
        }
        if let Some(target) = &self.url.database {
            if chosen.len() > 1 {
                return Err(Error::Invalid(format!(
                    "snapshot {} has {} databases ({}); choose the one to restore into '{target}' with --database",
                    streams.id.short(),
                    chosen.len(),
                    names()
                )));
            }
        }
        let plan: Vec<(String, String, &crate::stream::StoredStream)> = chosen
            .drain(..)
            .map(|(orig, s)| (self.url.database.clone().unwrap_or_else(|| orig.clone()), orig, s))
            .collect();
        let tools = Tools::find()?;
        let server = Server { url: &self.url, tools: &tools };
        let mut notes = Vec::new();
        // Every target is checked before any is touched, so a refusal
        // leaves the server exactly as it was.
        let mut exists = Vec::new();
        for (target, _, _) in &plan {
            let found = server.database_info(target)?.is_some();
            if found && !opts.clean && !opts.overwrite {
                let tables = server.table_count(target)?;
                if tables > 0 {
                    return Err(server.error(format!(
                        "database '{target}' already holds {tables} tables or views; restore into a new database, \
                         or add --clean to drop and recreate it (--overwrite restores over it)"
                    )));
                }
            }
            exists.push(found);
        }
        let mut report_streams = Vec::new();
        let mut bytes = 0;
        for ((target, orig, s), found) in plan.iter().zip(exists) {
            if found && opts.clean {
                server.drop_database(target)?;
                notes.push(format!("dropped and recreated database '{target}' (--clean)"));
            } else if !found {
                notes.push(format!("created database '{target}'"));
            }
            server.create_database(target, recorded_info(streams, orig).as_ref())?;
            let n = server.load(target, &mut streams.reader(s))?;
            if target != orig {
                notes.push(format!("database '{orig}' restored as '{target}'"));
            }
            report_streams.push((s.name.clone(), n));
            bytes += n;
        }
        Ok(RestoreReport {
            target: self.url.location(),
            streams: report_streams,
            bytes,
            duration_secs: t0.elapsed().as_secs_f64(),
            notes,
        })
    }
}

/// A verified restore into scratch databases on a server: the snapshot's
/// own (from its recorded location) or the one `--sandbox mysql://…`
/// names. Each database of the snapshot gets its own scratch database,
/// all dropped at the end.
pub struct MysqlSandbox {
    server: MysqlUrl,
    tools: Option<Tools>,
    base: String,
    /// Original name → scratch database, in restore order; a database is
    /// listed before it is created so that `remove` drops it even if the
    /// restore failed half-way.
    scratch: Vec<(String, String)>,
}

impl MysqlSandbox {
    pub fn new(location: &str, spec: Option<&str>) -> Result<MysqlSandbox> {
        let url = MysqlUrl::parse(spec.unwrap_or(location))?;
        Ok(MysqlSandbox { server: url.with_database(None), tools: None, base: scratch_name(), scratch: Vec::new() })
    }

    fn server(&self) -> Result<Server<'_>> {
        let tools = self.tools.as_ref().ok_or_else(|| Error::Invalid("the sandbox was not restored".into()))?;
        Ok(Server { url: &self.server, tools })
    }

    /// The database queries run in: the first one restored.
    fn default_database(&self) -> Option<&str> {
        self.scratch.first().map(|(_, s)| s.as_str())
    }

    /// `table` or `database.table` (by the snapshot's database names) to a
    /// scratch database and table.
    fn resolve<'t>(&self, name: &'t str) -> std::result::Result<(String, &'t str), String> {
        if let Some((db, table)) = name.split_once('.') {
            if let Some((_, s)) = self.scratch.iter().find(|(o, _)| o == db) {
                return Ok((s.clone(), table));
            }
        }
        let d = self.default_database().ok_or("nothing was restored")?;
        Ok((d.to_string(), name))
    }

    fn original<'s>(&'s self, scratch: &'s str) -> &'s str {
        self.scratch.iter().find(|(_, s)| s == scratch).map(|(o, _)| o.as_str()).unwrap_or(scratch)
    }
}

impl Sandbox for MysqlSandbox {
    fn location(&self) -> String {
        self.server.with_database(self.default_database()).location()
    }

    fn restore(&mut self, streams: &Streams) -> Result<u64> {
        self.tools = Some(Tools::find()?);
        let dbs = snapshot_databases(streams);
        if dbs.is_empty() {
            return Err(Error::Invalid(format!("snapshot {} holds no database dumps", streams.id.short())));
        }
        let mut bytes = 0;
        for (i, (orig, s)) in dbs.iter().enumerate() {
            let scratch = if dbs.len() == 1 { self.base.clone() } else { format!("{}_{i}", self.base) };
            self.scratch.push((orig.clone(), scratch.clone()));
            let server = self.server()?;
            server.create_database(&scratch, recorded_info(streams, orig).as_ref())?;
            bytes += server.load(&scratch, &mut streams.reader(s))?;
        }
        Ok(bytes)
    }

    fn check(&mut self, assertion: &Assertion) -> std::result::Result<String, String> {
        let server = self.server().map_err(|e| e.to_string())?;
        match assertion {
            Assertion::Sql { query } => {
                let answer =
                    server.value(self.default_database(), query).map_err(|e| e.to_string())?.unwrap_or_default();
                if is_true(&answer) {
                    Ok(answer)
                } else {
                    Err(format!("answered '{answer}'"))
                }
            }
            Assertion::Table { name } => {
                let (db, table) = self.resolve(name)?;
                let n = server
                    .count(
                        None,
                        &format!(
                            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = {} AND table_name = {}",
                            sql_str(&db),
                            sql_str(table)
                        ),
                    )
                    .map_err(|e| e.to_string())?;
                match n {
                    0 => Err(format!("no table '{table}' in restored database '{}'", self.original(&db))),
                    _ => Ok("exists".into()),
                }
            }
            Assertion::MinRows { table, rows } => {
                let (db, t) = self.resolve(table)?;
                let n = server
                    .count(None, &format!("SELECT COUNT(*) FROM {}.{}", ident(&db), ident(t)))
                    .map_err(|e| e.to_string())?;
                if n >= *rows {
                    Ok(format!("{n} rows"))
                } else {
                    Err(format!("{n} rows, expected at least {rows}"))
                }
            }
            Assertion::Command { .. } => Err("command assertions are run by verify::run".into()),
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        env.push(("MYSQL_HOST".to_string(), self.server.host.clone().unwrap_or_else(|| "localhost".into())));
        if let Some(p) = self.server.port {
            env.push(("MYSQL_TCP_PORT".into(), p.to_string()));
        }
        if let Some(s) = &self.server.socket {
            env.push(("MYSQL_UNIX_PORT".into(), s.to_string_lossy().into_owned()));
        }
        if let Some(u) = &self.server.user {
            env.push(("MYSQL_USER".into(), u.clone()));
        }
        if let Some(d) = self.default_database() {
            env.push(("MYSQL_DATABASE".into(), d.to_string()));
        }
        env
    }

    fn remove(&mut self) -> Result<()> {
        if self.tools.is_none() {
            return Ok(());
        }
        let mut failed = Vec::new();
        for (_, scratch) in std::mem::take(&mut self.scratch) {
            if let Err(e) = self.server()?.drop_database(&scratch) {
                failed.push(format!("{scratch}: {e}"));
            }
        }
        match failed.is_empty() {
            true => Ok(()),
            false => Err(Error::Source {
                location: self.server.location(),
                message: format!("could not drop scratch database(s): {}", failed.join("; ")),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_read_back() {
        let u = MysqlUrl::parse("mysql://app@db.example:3307/shop?socket=/run/mysqld/mysqld.sock").unwrap();
        assert_eq!(u.user.as_deref(), Some("app"));
        assert_eq!(u.host.as_deref(), Some("db.example"));
        assert_eq!(u.port, Some(3307));
        assert_eq!(u.database.as_deref(), Some("shop"));
        assert_eq!(u.socket, Some(PathBuf::from("/run/mysqld/mysqld.sock")));
        for s in [
            "mysql://app@db.example:3307/shop?socket=/run/mysqld/mysqld.sock",
            "mariadb:///",
            "mysql://[::1]:3306/a%2Fb%20c",
            "mysql://u%40x@h/?defaults-extra-file=/etc/arkiv/my%26.cnf",
        ] {
            let u = MysqlUrl::parse(s).unwrap();
            assert_eq!(MysqlUrl::parse(&u.location()).unwrap(), u, "{s} -> {}", u.location());
        }
        assert_eq!(MysqlUrl::parse("mysql://[::1]:3306/a%2Fb").unwrap().database.as_deref(), Some("a/b"));
    }

    #[test]
    fn a_password_in_the_url_is_refused_without_repeating_it() {
        for s in ["mysql://app:s3cret@db/shop", "mariadb://app:s3cret@db", "mysql://db/shop?password=s3cret"] {
            let e = MysqlUrl::parse(s).unwrap_err().to_string();
            assert!(e.contains("MYSQL_PWD") && e.contains("defaults-extra-file"), "{e}");
            assert!(!e.contains("s3cret"), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        assert!(MysqlUrl::parse("mysql://h:port/x").unwrap_err().to_string().contains("not a port"));
        assert!(MysqlUrl::parse("mysql://h/x?ssl=1").unwrap_err().to_string().contains("unknown option 'ssl'"));
        assert!(MysqlUrl::parse("postgres://h/x").is_err());
    }

    #[test]
    fn connection_args_put_the_option_file_first_and_hold_no_password() {
        let u = MysqlUrl::parse("mysql://app@h:3307/x?socket=/s&defaults-extra-file=/etc/my.cnf").unwrap();
        let a: Vec<String> = u.connection_args().iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(a, ["--defaults-extra-file=/etc/my.cnf", "--user=app", "--host=h", "--port=3307", "--socket=/s"]);
    }

    #[test]
    fn names_survive_as_sql_literals_and_identifiers() {
        assert_eq!(sql_str("a'b"), "CONVERT(X'612762' USING utf8mb4)");
        assert_eq!(ident("we`ird"), "`we``ird`");
        assert_eq!(unhex("612F62").unwrap(), "a/b");
        assert!(unhex("zz").is_err());
    }
}
