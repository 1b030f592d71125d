//! SQLite databases: `sqlite:///absolute/path/app.db` as a source, a
//! restore target and a verify sandbox.
//!
//! The copy is made with SQLite's online backup API, never by reading the
//! file: a database being written has its truth split between the main
//! file and its `-wal` or `-journal`, and only SQLite knows how to read a
//! consistent state out of them.
//!
//! The backup API needs a destination database, which is the one place this
//! source stages data instead of streaming it. The copy goes into an
//! in-memory database (SQLite's `memdb`, serialised without a copy) when the
//! database is at most [`DEFAULT_MEMORY_LIMIT`] (or `ARKIV_SQLITE_MEMORY_LIMIT`
//! bytes), and into a file in a private temporary directory when it is
//! larger, removed as soon as it is stored. Memory is the common case and
//! costs no disk; the file keeps a multi-gigabyte database from costing as
//! much RAM. Streaming the pages straight out of SQLite (no staging at all)
//! would need the `sqlite_dbpage` virtual table, which the bundled SQLite
//! is not built with, and the backup API's own destination cannot be a
//! stream because it restarts from page 1 whenever another connection
//! writes.
//!
//! Consistency: in WAL mode the whole copy runs inside one read
//! transaction, which sees one committed state and does not block writers.
//! In the rollback-journal modes a read transaction blocks every writer's
//! commit, so the copy goes a few pages at a time with pauses in between;
//! SQLite restarts it whenever a writer commits, and after a few restarts it
//! is done in one read transaction after all (writers wait for that copy,
//! bounded by their busy timeout).

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

/// The SQLite build this source uses, for callers (and tests) that want
/// the very same library.
pub use rusqlite;
use rusqlite::backup::{Backup, StepResult};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use crate::error::{Error, Result};
use crate::stream::{RestoreOptions, RestoreReport, StoredStream, StreamBackup, StreamSource, StreamTarget, Streams};
use crate::verify::{self, Assertion, Sandbox};

/// Databases up to this size are copied in memory, larger ones into a
/// temporary file.
pub const DEFAULT_MEMORY_LIMIT: u64 = 256 << 20;

/// Overrides [`DEFAULT_MEMORY_LIMIT`], in bytes (`0`: always a temporary
/// file).
pub const MEMORY_LIMIT_ENV: &str = "ARKIV_SQLITE_MEMORY_LIMIT";

/// SQLite's `memdb` refuses to grow past 1 GiB unless told otherwise, so an
/// in-memory copy is never attempted above it.
const MEMDB_MAX: u64 = 1 << 30;

/// Pages per incremental step in rollback-journal mode: 256 pages of 4 KiB
/// is a millisecond or so of holding the read lock.
const STEP_PAGES: i32 = 256;

/// The gap between incremental steps in which writers can commit.
const STEP_PAUSE: Duration = Duration::from_millis(5);

/// Restarts caused by writers before the copy is taken in one read
/// transaction instead.
const MAX_RESTARTS: u32 = 3;

/// How long the copy waits for a writer's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Turns what follows `sqlite:` into an absolute path.
///
/// `sqlite:///srv/app.db` is the URL form (empty host, absolute path);
/// `sqlite:/srv/app.db` and `sqlite:data/app.db` are paths as written, the
/// latter relative to the working directory. A host (`sqlite://db1/x`) is
/// refused: SQLite files are local.
pub fn parse_path(rest: &str) -> Result<PathBuf> {
    let path = match rest.strip_prefix("//") {
        Some(after) if after.starts_with('/') => after,
        Some(after) => {
            return Err(Error::Invalid(format!(
                "sqlite://{after}: an SQLite database is a local file; write sqlite:///absolute/path (three slashes)"
            )))
        }
        None => rest,
    };
    if path.is_empty() {
        return Err(Error::Invalid("sqlite: needs a database file, e.g. sqlite:///srv/app/app.db".into()));
    }
    if path.ends_with('/') || Path::new(path).file_name().is_none() {
        return Err(Error::Invalid(format!("sqlite:{rest}: names a directory, not a database file")));
    }
    std::path::absolute(path).map_err(|e| Error::Io { path: path.to_string(), cause: e })
}

/// The recorded location of a database file: `sqlite:///abs/path`.
pub fn url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// `sqlite:///path/app.db` as a source.
#[derive(Debug, Clone)]
pub struct SqliteSource {
    pub path: PathBuf,
    /// Databases larger than this are copied through a temporary file.
    pub memory_limit: u64,
    /// Where that temporary file goes (its own private directory in here).
    pub temp_dir: PathBuf,
}

impl SqliteSource {
    /// The source named by what follows `sqlite:`.
    pub fn new(rest: &str) -> Result<SqliteSource> {
        let memory_limit = match std::env::var(MEMORY_LIMIT_ENV) {
            Ok(v) => v.trim().parse().map_err(|_| {
                Error::Invalid(format!("{MEMORY_LIMIT_ENV}='{v}': expected a number of bytes (0: never in memory)"))
            })?,
            Err(_) => DEFAULT_MEMORY_LIMIT,
        };
        Ok(SqliteSource { path: parse_path(rest)?, memory_limit, temp_dir: std::env::temp_dir() })
    }

    fn fail(&self, message: impl Into<String>) -> Error {
        Error::Source { location: self.location(), message: message.into() }
    }
}

/// What a copy is of, read in the same transaction as the pages (or from
/// the copy itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Facts {
    page_size: u64,
    page_count: u64,
    tables: u64,
}

/// The one number a statement answers (a count, a pragma).
fn number(conn: &Connection, sql: &str) -> rusqlite::Result<u64> {
    // SQLite integers are signed; counts and sizes never negative.
    conn.query_row(sql, [], |r| r.get::<_, i64>(0)).map(|n| n.max(0) as u64)
}

fn facts(conn: &Connection) -> rusqlite::Result<Facts> {
    // The first statement starts the read transaction the rest share.
    let tables = number(conn, "SELECT count(*) FROM sqlite_master WHERE type = 'table'")?;
    let page_size = number(conn, "PRAGMA page_size")?;
    let page_count = number(conn, "PRAGMA page_count")?;
    Ok(Facts { page_size, page_count, tables })
}

/// How the pages were copied, for the metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    /// All pages in one read transaction.
    OneTransaction,
    /// Step by step between writers' commits, restarted this many times.
    Incremental { restarts: u32 },
    /// Stepping was restarted too often; then one read transaction.
    OneTransactionAfterRestarts { restarts: u32 },
}

/// Copies every page of `src` into `dest` inside one read transaction of
/// `src`, so the copy and the facts are of one committed state.
fn copy_in_one_transaction(src: &Connection, dest: &mut Connection) -> rusqlite::Result<Facts> {
    src.execute_batch("BEGIN")?;
    let copied = (|| {
        let facts = facts(src)?;
        let backup = Backup::new(src, dest)?;
        let since = Instant::now();
        loop {
            match backup.step(-1)? {
                StepResult::Done => return Ok(facts),
                // The read lock is already held, so this is only the
                // destination, which nobody else uses; retried for form.
                _ if since.elapsed() < BUSY_TIMEOUT => thread::sleep(STEP_PAUSE),
                _ => return Err(busy_error()),
            }
        }
    })();
    // Ending a read-only transaction cannot lose anything; its error would
    // only hide the copy's.
    let _ = src.execute_batch("COMMIT");
    copied
}

/// Copies `src` a few pages at a time so writers can commit in between.
/// Returns `None` when writers kept restarting it.
fn copy_incrementally(src: &Connection, dest: &mut Connection) -> rusqlite::Result<Option<u32>> {
    let backup = Backup::new(src, dest)?;
    let mut restarts = 0;
    let mut copied_before = 0;
    let mut busy_since: Option<Instant> = None;
    loop {
        let step = backup.step(STEP_PAGES)?;
        let p = backup.progress();
        let copied = p.pagecount - p.remaining;
        match step {
            StepResult::Done => return Ok(Some(restarts)),
            StepResult::More => {
                busy_since = None;
                // A restart begins again at page 1, so it shows as a step
                // that got no further than the last one.
                if copied <= copied_before {
                    restarts += 1;
                    if restarts > MAX_RESTARTS {
                        return Ok(None);
                    }
                }
                copied_before = copied;
            }
            _ => {
                if busy_since.get_or_insert_with(Instant::now).elapsed() > BUSY_TIMEOUT {
                    return Err(busy_error());
                }
            }
        }
        thread::sleep(STEP_PAUSE);
    }
}

/// How long a lock poll sleeps; see [`wait_for_lock`].
const LOCK_POLL: Duration = Duration::from_micros(500);

/// The source connection's busy handler. SQLite's own busy timeout sleeps
/// longer and longer between tries (up to 100 ms), and in rollback-journal
/// mode a writer that commits back to back leaves readers only the moment
/// between two of its transactions: polled that slowly, the backup waited
/// seconds for each lock. Short, even polls find those moments.
fn wait_for_lock(attempt: i32) -> bool {
    thread::sleep(LOCK_POLL);
    // Sleeps only ever overshoot, so this many attempts is at least the
    // timeout.
    (attempt as u128) < BUSY_TIMEOUT.as_micros() / LOCK_POLL.as_micros()
}

fn busy_error() -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
        Some(format!("the database stayed locked for {}s", BUSY_TIMEOUT.as_secs())),
    )
}

/// An SQLite error in words an operator can act on.
fn explain(e: &rusqlite::Error) -> String {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => "not an SQLite database (or an encrypted one)".into(),
        _ => e.to_string(),
    }
}

/// Opens an existing database without ever creating one.
fn open_existing(path: &Path) -> rusqlite::Result<Connection> {
    // Read-write so that a hot journal left by a crashed writer is rolled
    // back (a read-only connection cannot read such a database at all);
    // SQLite falls back to read-only by itself when the file is not
    // writable.
    Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)
}

/// Where the copy is made.
enum Staging {
    Memory,
    File(tempfile::TempDir),
}

impl Staging {
    fn open(&self) -> rusqlite::Result<Connection> {
        match self {
            // No leading `/`: a private memdb, not one shared with other
            // connections of the process (two backups at once).
            Staging::Memory => Connection::open_with_flags(
                "file:arkiv-sqlite-copy?vfs=memdb",
                OpenFlags::SQLITE_OPEN_READ_WRITE
                    | OpenFlags::SQLITE_OPEN_CREATE
                    | OpenFlags::SQLITE_OPEN_URI
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            ),
            Staging::File(dir) => {
                let c = Connection::open_with_flags(
                    dir.path().join("copy.db"),
                    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                // A scratch copy needs no crash safety: if we crash it is
                // thrown away.
                c.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF")?;
                Ok(c)
            }
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Staging::Memory => "memory",
            Staging::File(_) => "temporary file",
        }
    }
}

impl StreamSource for SqliteSource {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn location(&self) -> String {
        url(&self.path)
    }

    fn backup(&self, out: &mut StreamBackup) -> Result<serde_json::Value> {
        let t0 = Instant::now();
        let md = fs::metadata(&self.path).map_err(|e| {
            self.fail(if e.kind() == std::io::ErrorKind::NotFound { "no such file".to_string() } else { e.to_string() })
        })?;
        if !md.is_file() {
            return Err(self.fail("not a regular file"));
        }
        let name = self.path.file_name().expect("parse_path insists on a file name").to_string_lossy().into_owned();
        let sql = |e: rusqlite::Error| self.fail(explain(&e));
        let src = open_existing(&self.path).map_err(sql)?;
        src.busy_handler(Some(wait_for_lock)).map_err(sql)?;
        // A backup is a reader: checkpointing the application's WAL when our
        // connection closes is its business, not ours.
        src.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true).map_err(sql)?;
        let journal_mode: String = src.query_row("PRAGMA journal_mode", [], |r| r.get(0)).map_err(sql)?;
        let before = facts(&src).map_err(sql)?;
        if before.page_count == 0 {
            return Err(self.fail("holds no database yet (0 pages)"));
        }
        let size = before.page_size * before.page_count;
        let staging = if size <= self.memory_limit.min(MEMDB_MAX) {
            Staging::Memory
        } else {
            let dir = tempfile::Builder::new()
                .prefix("arkiv-sqlite-")
                .tempdir_in(&self.temp_dir)
                .map_err(|e| Error::Io { path: self.temp_dir.display().to_string(), cause: e })?;
            Staging::File(dir)
        };
        let mut dest = staging.open().map_err(|e| self.fail(format!("opening the {} copy: {e}", staging.name())))?;

        let wal = journal_mode.eq_ignore_ascii_case("wal");
        let (facts, method) = if wal {
            (copy_in_one_transaction(&src, &mut dest).map_err(sql)?, Method::OneTransaction)
        } else {
            match copy_incrementally(&src, &mut dest).map_err(sql)? {
                // Stepping sees no single transaction of the source, so the
                // facts are read from what was copied.
                Some(restarts) => (
                    facts(&dest).map_err(|e| self.fail(format!("reading the copy: {e}")))?,
                    Method::Incremental { restarts },
                ),
                None => {
                    tracing::warn!(
                        "{}: writers kept restarting the copy; copying in one read transaction (writers wait)",
                        self.location()
                    );
                    let f = copy_in_one_transaction(&src, &mut dest).map_err(sql)?;
                    (f, Method::OneTransactionAfterRestarts { restarts: MAX_RESTARTS + 1 })
                }
            }
        };
        drop(src);

        let bytes = match &staging {
            Staging::Memory => {
                let data =
                    dest.serialize(rusqlite::MAIN_DB).map_err(|e| self.fail(format!("serialising the copy: {e}")))?;
                out.add(&name, &data[..])?
            }
            Staging::File(dir) => {
                // Closed first so every page is in the file.
                drop(dest);
                let path = dir.path().join("copy.db");
                let f = fs::File::open(&path).map_err(|e| Error::Io { path: path.display().to_string(), cause: e })?;
                out.add(&name, f)?
            }
        };
        if bytes != facts.page_size * facts.page_count {
            return Err(self.fail(format!(
                "the copy is {bytes} bytes, not {} pages of {} bytes",
                facts.page_count, facts.page_size
            )));
        }
        let (method, restarts) = match method {
            Method::OneTransaction => ("one read transaction", 0),
            Method::Incremental { restarts } => ("incremental", restarts),
            Method::OneTransactionAfterRestarts { restarts } => ("one read transaction after restarts", restarts),
        };
        Ok(serde_json::json!({
            "path": self.path.display().to_string(),
            "sqlite_version": rusqlite::version(),
            "journal_mode": journal_mode.to_ascii_lowercase(),
            "page_size": facts.page_size,
            "page_count": facts.page_count,
            "tables": facts.tables,
            "file_size": md.len(),
            "bytes": bytes,
            "method": method,
            "restarts": restarts,
            "staged_in": staging.name(),
            "seconds": t0.elapsed().as_secs_f64(),
        }))
    }
}

/// A file being restored next to its final place: removed with SQLite's
/// side files unless it was renamed into place.
struct Pending {
    path: PathBuf,
    keep: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        for suffix in ["-wal", "-shm", "-journal"] {
            let _ = fs::remove_file(side_file(&self.path, suffix));
        }
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn side_file(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Runs `PRAGMA integrity_check` on a file; `Err` holds what it found.
fn integrity_check(path: &Path) -> std::result::Result<(), String> {
    let conn = open_existing(path).map_err(|e| explain(&e))?;
    let mut stmt = conn.prepare("PRAGMA integrity_check(20)").map_err(|e| explain(&e))?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.collect())
        .map_err(|e: rusqlite::Error| explain(&e))?;
    if rows.len() == 1 && rows[0] == "ok" {
        Ok(())
    } else {
        Err(rows.join("; "))
    }
}

/// Writes one stream to `target`: into a temporary file beside it, checked
/// with `PRAGMA integrity_check`, then renamed into place, so the target is
/// either the old file or a whole, checked database. `location` names the
/// target in errors.
fn restore_file(
    streams: &Streams,
    stream: &StoredStream,
    target: &Path,
    overwrite: bool,
    location: &str,
) -> Result<u64> {
    let fail = |m: String| Error::Source { location: location.to_string(), message: m };
    let dir = target.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(fail(format!("directory {} does not exist", dir.display())));
    }
    let existing = match fs::symlink_metadata(target) {
        Ok(md) if md.is_dir() => return Err(fail("is a directory".into())),
        Ok(md) if md.file_type().is_symlink() => {
            return Err(fail("is a symbolic link; give the path of the file it points to".into()))
        }
        Ok(_) if !overwrite => return Err(fail("exists; use --overwrite to replace it".into())),
        Ok(md) => Some(md.permissions().mode()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::Io { path: target.display().to_string(), cause: e }),
    };
    // SQLite applies a WAL or a hot journal found beside a database to it,
    // whatever database it came from: left there, the old file's would
    // corrupt the restored one.
    for suffix in ["-wal", "-journal"] {
        let side = side_file(target, suffix);
        if fs::metadata(&side).map(|m| m.len() > 0).unwrap_or(false) {
            return Err(fail(format!(
                "{} exists: the database is open or was not closed cleanly, and SQLite would apply that file to the \
                 restored one; stop the application (or remove it) first",
                side.display()
            )));
        }
    }

    let file_name = target.file_name().expect("a file path").to_string_lossy();
    let pending =
        Pending { path: dir.join(format!(".{file_name}.{}.arkiv-restore", verify::scratch_name())), keep: false };
    let io_err = |p: &Path, e: std::io::Error| Error::Io { path: p.display().to_string(), cause: e };
    // 0600: a database copy is as private as the data in it; a replaced
    // file's mode is kept below.
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&pending.path)
        .map_err(|e| io_err(&pending.path, e))?;
    let mut reader = streams.reader(stream);
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(|e| fail(format!("reading the snapshot: {e}")))?;
        if n == 0 {
            break;
        }
        f.write_all(&buf[..n]).map_err(|e| io_err(&pending.path, e))?;
        bytes += n as u64;
    }
    f.sync_all().map_err(|e| io_err(&pending.path, e))?;
    drop(f);
    if bytes != stream.size {
        return Err(fail(format!("stream {} gave {bytes} bytes, the snapshot says {}", stream.name, stream.size)));
    }
    integrity_check(&pending.path)
        .map_err(|found| fail(format!("the restored copy fails PRAGMA integrity_check: {found}")))?;
    if let Some(mode) = existing {
        fs::set_permissions(&pending.path, fs::Permissions::from_mode(mode)).map_err(|e| io_err(&pending.path, e))?;
    }
    fs::rename(&pending.path, target).map_err(|e| io_err(target, e))?;
    let mut pending = pending;
    pending.keep = true;
    // The rename is durable only once the directory is.
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_err(dir, e))?;
    Ok(bytes)
}

/// `sqlite:///path/restored.db` as a restore target.
#[derive(Debug, Clone)]
pub struct SqliteTarget {
    pub path: PathBuf,
}

impl SqliteTarget {
    pub fn new(rest: &str) -> Result<SqliteTarget> {
        Ok(SqliteTarget { path: parse_path(rest)? })
    }
}

impl StreamTarget for SqliteTarget {
    fn location(&self) -> String {
        url(&self.path)
    }

    fn accepts(&self, kind: &str) -> bool {
        kind == "sqlite"
    }

    fn restore(&self, streams: &Streams, opts: &RestoreOptions) -> Result<RestoreReport> {
        opts.reject_unsupported("an SQLite file", &["overwrite", "stream"])?;
        let t0 = Instant::now();
        let s = streams.single(opts)?;
        let replaced = self.path.exists();
        let bytes = restore_file(streams, s, &self.path, opts.overwrite, &self.location())?;
        let mut notes = vec![format!("{}: PRAGMA integrity_check ok", self.path.display())];
        if replaced {
            notes.push(format!("{}: replaced the existing file", self.path.display()));
        }
        Ok(RestoreReport {
            target: self.location(),
            streams: vec![(s.name.clone(), bytes)],
            bytes,
            duration_secs: t0.elapsed().as_secs_f64(),
            notes,
        })
    }
}

/// A verified restore of an SQLite snapshot: the file restored into a
/// private temporary directory, assertions run on it with SQLite.
pub struct SqliteSandbox {
    /// Where the temporary directory is made.
    parent: PathBuf,
    dir: Option<tempfile::TempDir>,
    file: Option<PathBuf>,
    conn: Option<Connection>,
}

impl SqliteSandbox {
    /// `parent`: the directory to make the sandbox in (`--sandbox DIR`);
    /// the system's temporary directory if `None`.
    pub fn new(parent: Option<&str>) -> SqliteSandbox {
        SqliteSandbox {
            parent: parent.map(PathBuf::from).unwrap_or_else(std::env::temp_dir),
            dir: None,
            file: None,
            conn: None,
        }
    }

    fn conn(&mut self) -> std::result::Result<&Connection, String> {
        if self.conn.is_none() {
            let file = self.file.as_ref().ok_or("nothing was restored")?;
            self.conn = Some(open_existing(file).map_err(|e| explain(&e))?);
        }
        Ok(self.conn.as_ref().expect("just opened"))
    }
}

/// A table name as an SQL identifier; `main.` is the only schema a single
/// file has.
fn quote_table(name: &str) -> String {
    let name = name.strip_prefix("main.").unwrap_or(name);
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A value as the report shows it.
fn render(v: ValueRef) -> String {
    match v {
        ValueRef::Null => "NULL".into(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => f.to_string(),
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
        ValueRef::Blob(b) => format!("<blob of {} bytes>", b.len()),
    }
}

impl Sandbox for SqliteSandbox {
    fn location(&self) -> String {
        match (&self.file, &self.dir) {
            (Some(f), _) => url(f),
            (None, Some(d)) => url(d.path()),
            (None, None) => url(&self.parent),
        }
    }

    fn restore(&mut self, streams: &Streams) -> Result<u64> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", verify::scratch_name()))
            .tempdir_in(&self.parent)
            .map_err(|e| Error::Io { path: self.parent.display().to_string(), cause: e })?;
        let s = streams.single(&RestoreOptions::default())?;
        let file = dir.path().join(&s.name);
        self.dir = Some(dir);
        self.file = Some(file.clone());
        restore_file(streams, s, &file, false, &url(&file))
    }

    fn check(&mut self, assertion: &Assertion) -> std::result::Result<String, String> {
        let conn = self.conn()?;
        match assertion {
            Assertion::Sql { query } => {
                let answer = conn.query_row(query, [], |r| r.get_ref(0).map(render)).map_err(|e| match e {
                    rusqlite::Error::QueryReturnedNoRows => "returned no rows".to_string(),
                    e => explain(&e),
                })?;
                if verify::is_true(&answer) {
                    Ok(answer)
                } else {
                    Err(format!("answered {answer}"))
                }
            }
            Assertion::Table { name } => {
                let bare = name.strip_prefix("main.").unwrap_or(name);
                let kind: Option<String> = conn
                    .query_row(
                        "SELECT type FROM sqlite_master WHERE type IN ('table', 'view') AND name = ?1 COLLATE NOCASE",
                        [bare],
                        |r| r.get(0),
                    )
                    .map(Some)
                    .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(explain(&e)) })?;
                kind.ok_or_else(|| format!("no table or view named {bare}"))
            }
            Assertion::MinRows { table, rows } => {
                let n =
                    number(conn, &format!("SELECT count(*) FROM {}", quote_table(table))).map_err(|e| explain(&e))?;
                if n >= *rows {
                    Ok(format!("{n} rows"))
                } else {
                    Err(format!("{n} rows"))
                }
            }
            Assertion::Command { .. } => Err("command assertions are run by verify::run".into()),
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        self.file.iter().map(|f| ("ARKIV_SANDBOX_FILE".to_string(), f.display().to_string())).collect()
    }

    fn remove(&mut self) -> Result<()> {
        // The connection goes first: its WAL side files live in the sandbox.
        self.conn = None;
        match self.dir.take() {
            Some(dir) => {
                let path = dir.path().display().to_string();
                dir.close().map_err(|e| Error::Io { path, cause: e })
            }
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_local_files() {
        assert_eq!(parse_path("///srv/app/app.db").unwrap(), PathBuf::from("/srv/app/app.db"));
        assert_eq!(parse_path("/srv/app.db").unwrap(), PathBuf::from("/srv/app.db"));
        let rel = parse_path("data/app.db").unwrap();
        assert!(rel.is_absolute() && rel.ends_with("data/app.db"), "{}", rel.display());
        assert!(parse_path("//db1/srv/app.db").unwrap_err().to_string().contains("three slashes"));
        assert!(parse_path("").unwrap_err().to_string().contains("needs a database file"));
        assert!(parse_path("///srv/").unwrap_err().to_string().contains("directory"));
        assert_eq!(url(&parse_path("///srv/app.db").unwrap()), "sqlite:///srv/app.db");
    }

    #[test]
    fn table_names_are_quoted_and_main_is_the_only_schema() {
        assert_eq!(quote_table("users"), "\"users\"");
        assert_eq!(quote_table("main.users"), "\"users\"");
        assert_eq!(quote_table("we\"ird"), "\"we\"\"ird\"");
    }

    fn repo(dir: &Path) -> arkiv_repo::Repository {
        use arkiv_repo::{Backend, Credential, InitOptions, KdfParams, Repository};
        let opts =
            InitOptions { kdf: KdfParams { memory_kib: 1024, iterations: 1, parallelism: 1 }, ..Default::default() };
        Repository::init(Backend::local(&dir.join("repo")).unwrap(), &Credential::password("pw"), opts).unwrap()
    }

    fn reopen(dir: &Path) -> arkiv_repo::Repository {
        use arkiv_repo::{Backend, Credential, Repository};
        Repository::open(Backend::local(&dir.join("repo")).unwrap(), &Credential::password("pw")).unwrap()
    }

    fn sample_db(path: &Path, journal: &str, rows: u32) {
        let c = Connection::open(path).unwrap();
        c.execute_batch(&format!(
            "PRAGMA journal_mode = {journal}; CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); \
             CREATE TABLE u (x)"
        ))
        .unwrap();
        let tx = c.unchecked_transaction().unwrap();
        for i in 0..rows {
            tx.execute("INSERT INTO t (v) VALUES (?1)", [format!("row {i} {}", "x".repeat(200))]).unwrap();
        }
        tx.commit().unwrap();
    }

    /// Backs up `db` with the given memory limit and restores it to `out`.
    fn round_trip(dir: &Path, db: &Path, memory_limit: u64, out: &Path) -> serde_json::Value {
        let src = SqliteSource { path: db.to_path_buf(), memory_limit, temp_dir: dir.join("tmp") };
        fs::create_dir_all(&src.temp_dir).unwrap();
        let indexed = reopen(dir).index().unwrap();
        let progress = crate::files::Progress::default();
        let done = crate::stream::backup(&indexed, &src, &Default::default(), &progress).unwrap();
        assert_eq!(fs::read_dir(&src.temp_dir).unwrap().count(), 0, "the staging directory is left behind");
        let indexed = reopen(dir).index().unwrap();
        let streams = Streams::open(&indexed, done.id.unwrap(), done.snapshot.clone()).unwrap();
        let target = SqliteTarget { path: out.to_path_buf() };
        target.restore(&streams, &RestoreOptions::default()).unwrap();
        done.snapshot.metadata
    }

    #[test]
    fn memory_and_file_staging_give_the_same_database() {
        let dir = tempfile::tempdir().unwrap();
        repo(dir.path());
        for journal in ["wal", "delete"] {
            let db = dir.path().join(format!("{journal}.db"));
            sample_db(&db, journal, 500);
            let (a, b) = (dir.path().join(format!("{journal}-mem.db")), dir.path().join(format!("{journal}-file.db")));
            let ma = round_trip(dir.path(), &db, u64::MAX, &a);
            let mb = round_trip(dir.path(), &db, 0, &b);
            assert_eq!(ma["staged_in"], "memory");
            assert_eq!(mb["staged_in"], "temporary file");
            assert_eq!(ma["tables"], 2);
            assert_eq!(ma["journal_mode"], journal);
            assert_eq!(ma["page_count"], mb["page_count"]);
            assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap(), "{journal}: staging changed the bytes");
            let n: u32 = Connection::open(&a).unwrap().query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
            assert_eq!(n, 500);
        }
    }

    #[test]
    fn a_file_that_is_not_sqlite_is_named_and_refused() {
        let dir = tempfile::tempdir().unwrap();
        let indexed = repo(dir.path()).index().unwrap();
        let bad = dir.path().join("notes.db");
        fs::write(&bad, vec![b'x'; 8192]).unwrap();
        let progress = crate::files::Progress::default();
        for (path, says) in [(bad, "not an SQLite database"), (dir.path().join("gone.db"), "no such file")] {
            let src = SqliteSource { path: path.clone(), memory_limit: u64::MAX, temp_dir: std::env::temp_dir() };
            let err = crate::stream::backup(&indexed, &src, &Default::default(), &progress).err().unwrap().to_string();
            assert!(err.contains(&url(&path)) && err.contains(says), "{err}");
        }
    }
}
