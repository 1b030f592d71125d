//! PostgreSQL physical backups: non-exclusive base backups read straight
//! from the data directory, and restores that leave a data directory ready
//! to recover to any point the archived WAL reaches.
//!
//! A base backup holds one session open from `pg_backup_start` to
//! `pg_backup_stop` (the non-exclusive API: a crash or a lost connection
//! cancels it, and nothing is left behind in PGDATA), reads PGDATA and
//! each tablespace with the parallel file walker, and stores the
//! `backup_label` and `tablespace_map` that `pg_backup_stop` returns as
//! files of the snapshot. The snapshot is written only once every WAL
//! segment from the backup's start to its stop is in this repository: a
//! base backup without that WAL cannot be made consistent.
//!
//! Unchanged relation files (same size, mtime, ctime and inode as in the
//! previous base backup, and older than that backup's start) are not read
//! again, yet every snapshot names every file, so each restores on its
//! own. Every `full_read_interval` a backup reads everything regardless.
//!
//! The session uses the `postgres` driver rather than `psql`: the backup
//! must run statements in one session over minutes while files are read,
//! which a driver does simply. It reads `PGHOST`, `PGPORT`, `PGUSER` and
//! `PGPASSWORD` like libpq (but not `.pgpass` or `PGSSLMODE`: physical
//! backups run on the database host and normally connect over its socket).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arkiv_repo::retention::{self, GroupBy, KeepPolicy};
use arkiv_repo::{Id, Indexed, Name, Node, NodeKind, Repository, Snapshot, SnapshotEntry, Tree, Writer};
use chrono::{DateTime, FixedOffset, Utc};
use serde::{Deserialize, Serialize};

use super::checksum::{ChecksumFailure, PageChecker};
use super::wal::{Lsn, Segment, WalInventory, DEFAULT_SEGMENT_SIZE};
use super::{major_name, major_of, parse_tool_version, Conn};
use crate::error::{Error, Result};
use crate::files::backup::{walk_dir, BackupOptions, Observer, Progress};
use crate::files::{PathFilter, RestoreOptions};

/// The snapshot source name of a base backup.
pub const SOURCE: &str = "postgres-physical";

/// What PGDATA holds that a base backup leaves out, as the PostgreSQL
/// documentation lists it for `pg_basebackup` ("Backup Manifest" and
/// "Making a Base Backup Using the Low Level API"): runtime state that
/// the server rebuilds, WAL (archived separately), and files that would
/// confuse a restored server. Directories are kept, empty.
const EXCLUDED_CONTENTS: &[&str] = &[
    "pg_wal",
    "pg_dynshmem",
    "pg_notify",
    "pg_replslot",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
    // Walked separately: each entry is a link to a tablespace.
    "pg_tblspc",
];
const EXCLUDED_FILES: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "backup_label.old",
    "tablespace_map",
    "backup_manifest",
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
    "recovery.signal",
    "standby.signal",
];
/// Anywhere in PGDATA or a tablespace: temporary files and relcache init
/// files, which the server rebuilds.
const EXCLUDED_NAMES: &[&str] = &["pgsql_tmp*", "pg_internal.init"];

/// Everything a base backup records besides the files.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BaseBackupInfo {
    pub system_identifier: String,
    pub server_version_num: u32,
    pub pgdata: String,
    pub timeline: u32,
    pub start_lsn: String,
    pub stop_lsn: String,
    pub start_wal: String,
    pub stop_wal: String,
    pub started: DateTime<Utc>,
    pub stopped: DateTime<Utc>,
    pub wal_segment_size: u64,
    /// `pg_snapshot_xmax` at stop: every transaction id from here on was
    /// assigned after the backup, so it can be a recovery target from it.
    pub next_xid: Option<u64>,
    #[serde(default)]
    pub tablespaces: Vec<Tablespace>,
    /// When a backup in this chain last read every file.
    pub last_full_read: DateTime<Utc>,
    pub incremental: bool,
    /// Pages whose checksum was verified while reading (`None`: not verified).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages_checked: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checksum_failures: Vec<ChecksumFailure>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Tablespace {
    pub oid: u32,
    pub name: String,
    pub location: String,
}

impl BaseBackupInfo {
    pub fn of(s: &Snapshot) -> Option<BaseBackupInfo> {
        (s.source == SOURCE).then(|| serde_json::from_value(s.metadata.clone()).ok()).flatten()
    }

    fn lsn(text: &str) -> Lsn {
        text.parse().unwrap_or(Lsn(0))
    }

    pub fn start(&self) -> Lsn {
        Self::lsn(&self.start_lsn)
    }

    pub fn stop(&self) -> Lsn {
        Self::lsn(&self.stop_lsn)
    }

    fn start_segment(&self) -> Segment {
        Segment::of(self.timeline, self.start(), self.wal_segment_size)
    }

    fn stop_segment(&self) -> Segment {
        Segment::before(self.timeline, self.stop(), self.wal_segment_size)
    }
}

#[derive(Debug, Clone)]
pub struct BaseBackupOptions {
    pub pgdata: PathBuf,
    pub conn: Conn,
    /// Read every file, whatever the previous backup says.
    pub full: bool,
    /// Read every file when the last backup that did is older than this.
    pub full_read_interval: Duration,
    /// Ask for an immediate checkpoint rather than a spread one.
    pub fast_checkpoint: bool,
    /// How long to wait for the backup's WAL to reach the archive.
    pub archive_timeout: Duration,
    /// Verify page checksums while reading (when the cluster has them).
    pub verify_checksums: bool,
    pub tags: Vec<String>,
    pub host: Option<String>,
}

#[derive(Debug, Clone)]
pub struct BaseBackupOutcome {
    pub id: Id,
    pub snapshot: Snapshot,
    pub info: BaseBackupInfo,
}

/// A libpq-like connection for the held backup session.
fn connect(conn: &Conn) -> Result<postgres::Client> {
    let mut cfg = postgres::Config::new();
    let host =
        conn.host.clone().or_else(|| std::env::var("PGHOST").ok()).unwrap_or_else(|| "/var/run/postgresql".into());
    if host.starts_with('/') {
        cfg.host_path(&host);
    } else {
        cfg.host(&host);
    }
    let port = conn.port.or_else(|| std::env::var("PGPORT").ok().and_then(|p| p.parse().ok())).unwrap_or(5432);
    cfg.port(port);
    // pgBackRest's default too: the superuser initdb creates, whatever
    // the OS user running the backup is called.
    let user = conn.user.clone().or_else(|| std::env::var("PGUSER").ok()).unwrap_or_else(|| "postgres".into());
    cfg.user(&user);
    if let Ok(pw) = std::env::var("PGPASSWORD") {
        cfg.password(pw);
    }
    cfg.dbname("postgres").application_name("arkiv pg backup").connect_timeout(Duration::from_secs(30));
    cfg.connect(postgres::NoTls).map_err(|e| Error::Source {
        location: format!("{host}:{port}"),
        message: format!("cannot connect as {user}: {}", db_error(&e)),
    })
}

/// The server's own message when there is one, not the driver's wrapper.
fn db_error(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s = format!("{s}: {inner}");
                src = inner.source();
            }
            s
        }
    }
}

struct Session {
    client: postgres::Client,
    server: String,
}

impl Session {
    fn text(&mut self, sql: &str) -> Result<String> {
        let row = self.client.query_one(sql, &[]).map_err(|e| Error::Source {
            location: self.server.clone(),
            message: format!("{sql}: {}", db_error(&e)),
        })?;
        Ok(row.get::<_, Option<String>>(0).unwrap_or_default())
    }

    fn row(&mut self, sql: &str) -> Result<postgres::Row> {
        self.client
            .query_one(sql, &[])
            .map_err(|e| Error::Source { location: self.server.clone(), message: format!("{sql}: {}", db_error(&e)) })
    }
}

/// The system identifier in `global/pg_control` (its first 8 bytes).
pub fn control_system_identifier(pgdata: &Path) -> Result<u64> {
    let path = pgdata.join("global/pg_control");
    let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
    if bytes.len() < 8 {
        return Err(Error::Invalid(format!("{}: too short to be a pg_control file", path.display())));
    }
    Ok(u64::from_le_bytes(bytes[..8].try_into().unwrap()))
}

/// A line `KEY: value` of a backup label.
fn label_field<'a>(label: &'a str, key: &str) -> Option<&'a str> {
    label.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':')).map(str::trim)
}

fn filter_for(root: &Path) -> Result<PathFilter> {
    let base = globset::escape(&root.display().to_string());
    let mut patterns: Vec<String> = EXCLUDED_CONTENTS.iter().map(|d| format!("{base}/{d}/*")).collect();
    patterns.extend(EXCLUDED_FILES.iter().map(|f| format!("{base}/{f}")));
    patterns.extend(EXCLUDED_NAMES.iter().map(|n| n.to_string()));
    // Temporary relations (`t<backend>_<relfilenode>`), never needed.
    patterns.push(format!("{base}/base/*/t[0-9]*_[0-9]*"));
    Ok(PathFilter::new(&patterns)?)
}

fn tablespace_filter() -> Result<PathFilter> {
    Ok(PathFilter::new(EXCLUDED_NAMES)?)
}

/// A file node for bytes the backup got from the server, owned like PGDATA.
fn file_node(writer: &Writer, name: &str, bytes: &[u8], owner: &fs::Metadata) -> Result<Node> {
    let mut node = Node::new(Name::from(name), NodeKind::File);
    node.mode = 0o600;
    node.uid = owner.uid();
    node.gid = owner.gid();
    let now = Utc::now().timestamp_nanos_opt().unwrap_or(0);
    node.mtime_ns = now;
    node.ctime_ns = now;
    node.size = bytes.len() as u64;
    node.content = writer.save_bytes(bytes)?;
    Ok(node)
}

/// The newest base backup of this cluster's data directory, to compare with.
fn find_parent(
    repo: &Repository,
    system_identifier: &str,
    pgdata: &str,
) -> Result<Option<(SnapshotEntry, BaseBackupInfo)>> {
    Ok(base_backups(repo)?.into_iter().rfind(|(_, i)| i.system_identifier == system_identifier && i.pgdata == pgdata))
}

/// Takes a base backup of the cluster whose data directory is `opts.pgdata`.
pub fn backup(indexed: &Indexed, opts: &BaseBackupOptions, progress: &Progress) -> Result<BaseBackupOutcome> {
    let t0 = Instant::now();
    let pgdata = fs::canonicalize(&opts.pgdata).map_err(|e| Error::io(&opts.pgdata, e))?;
    let version_file = pgdata.join("PG_VERSION");
    let dir_version = fs::read_to_string(&version_file).map_err(|e| {
        Error::io(&version_file, std::io::Error::new(e.kind(), format!("not a PostgreSQL data directory ({e})")))
    })?;
    let control_sysid = control_system_identifier(&pgdata)?;
    let owner = fs::metadata(&pgdata).map_err(|e| Error::io(&pgdata, e))?;

    let client = connect(&opts.conn)?;
    let mut s = Session { client, server: opts.conn.server() };
    let version: u32 = s.text("select current_setting('server_version_num')")?.parse().unwrap_or(0);
    if version < 120_000 {
        return Err(Error::Source {
            location: s.server.clone(),
            message: format!("PostgreSQL {} is too old: physical backups need 12 or newer", major_name(version)),
        });
    }
    if major_name(version) != dir_version.trim() {
        return Err(Error::Invalid(format!(
            "{} holds PostgreSQL {} data but the server at {} runs {}: --pgdata names another cluster",
            pgdata.display(),
            dir_version.trim(),
            s.server,
            major_name(version)
        )));
    }
    let sysid = s.text("select system_identifier::text from pg_control_system()")?;
    if sysid != control_sysid.to_string() {
        return Err(Error::Invalid(format!(
            "{} belongs to cluster {control_sysid}, but the server at {} is cluster {sysid}: --pgdata and the \
             connection name different clusters",
            pgdata.display(),
            s.server
        )));
    }
    if s.text("select pg_is_in_recovery()::text")? == "true" {
        return Err(Error::Source {
            location: s.server.clone(),
            message: "is a standby; take physical backups from the primary".into(),
        });
    }
    let archive_mode = s.text("select current_setting('archive_mode')")?;
    if archive_mode == "off" {
        return Err(Error::Source {
            location: s.server.clone(),
            message: "archive_mode is off, so no WAL reaches the repository and a base backup could never be \
                      made consistent: set archive_mode = on and archive_command = 'arkiv pg wal-push … %p'"
                .into(),
        });
    }
    let seg_size: u64 = s
        .text("select setting from pg_settings where name = 'wal_segment_size'")?
        .parse::<u64>()
        .ok()
        .map(|v| if v < 1 << 20 { v * 8192 } else { v })
        .unwrap_or(DEFAULT_SEGMENT_SIZE);
    let tablespaces: Vec<Tablespace> = s
        .client
        .query(
            "select oid::int8, spcname::text, pg_tablespace_location(oid) from pg_tablespace \
             where spcname not in ('pg_default', 'pg_global') order by oid",
            &[],
        )
        .map_err(|e| Error::Source { location: s.server.clone(), message: db_error(&e) })?
        .iter()
        .map(|r| Tablespace { oid: r.get::<_, i64>(0) as u32, name: r.get(1), location: r.get(2) })
        .collect();

    let pgdata_text = pgdata.display().to_string();
    let repo = indexed.repo();
    let parent = if opts.full { None } else { find_parent(repo, &sysid, &pgdata_text)? };
    let now = Utc::now();
    let due = parent.as_ref().is_none_or(|(_, p)| {
        now.signed_duration_since(p.last_full_read).to_std().unwrap_or_default() >= opts.full_read_interval
    });
    let full_read = opts.full || due;

    let start_sql = if version >= 150_000 {
        format!("select pg_backup_start('arkiv', {})::text", opts.fast_checkpoint)
    } else {
        format!("select pg_start_backup('arkiv', {}, false)::text", opts.fast_checkpoint)
    };
    let checksums = opts.verify_checksums && s.text("select current_setting('data_checksums')")? == "on";
    let started = Utc::now();
    let begun: Lsn = s.text(&start_sql)?.parse()?;
    let checker = checksums.then(|| PageChecker::new(begun));

    let writer = Writer::new(indexed);
    let walked = (|| -> Result<(Tree, Vec<arkiv_repo::Skipped>, arkiv_repo::Summary)> {
        let parent_root = match &parent {
            Some((e, _)) if !full_read => Some(indexed.load_tree(&e.snapshot.tree)?),
            _ => None,
        };
        let walk_opts = BackupOptions {
            excludes: filter_for(&pgdata)?,
            force: full_read,
            missing_ok: true,
            unchanged_before_ns: parent
                .as_ref()
                .map(|(_, p)| (p.started.timestamp_nanos_opt().unwrap_or(0)) - 1_000_000_000),
            observer: checker.as_ref().map(|c| Observer(std::sync::Arc::new(c.clone()))),
            ..Default::default()
        };
        let mut root = walk_dir(indexed, &writer, &pgdata, parent_root.as_ref(), &walk_opts, progress)?;
        // Each tablespace is saved as a directory under pg_tblspc/<oid>,
        // where the server keeps its link: a restore puts it back at its
        // location (or another) and links it again.
        let tbl_opts = BackupOptions { excludes: tablespace_filter()?, ..walk_opts.clone() };
        let parent_tblspc = parent_root
            .as_ref()
            .and_then(|t| t.find(&Name::from("pg_tblspc")))
            .and_then(|n| n.subtree)
            .and_then(|id| indexed.load_tree(&id).ok());
        let mut tblspc = Tree::default();
        for ts in &tablespaces {
            let dir = PathBuf::from(&ts.location);
            let md = fs::metadata(&dir).map_err(|e| Error::io(&dir, e))?;
            let name = Name::from(ts.oid.to_string().as_str());
            let parent_ts = parent_tblspc
                .as_ref()
                .and_then(|t| t.find(&name))
                .and_then(|n| n.subtree)
                .and_then(|id| indexed.load_tree(&id).ok());
            let w = walk_dir(indexed, &writer, &dir, parent_ts.as_ref(), &tbl_opts, progress)?;
            let mut node = crate::files::meta::node_from_metadata(name, NodeKind::Dir, &md);
            node.subtree = Some(writer.save_tree(&w.tree)?);
            tblspc.nodes.push(node);
            root.skipped.extend(w.skipped);
            let (a, b) = (&mut root.summary, &w.summary);
            a.files_new += b.files_new;
            a.files_changed += b.files_changed;
            a.files_unmodified += b.files_unmodified;
            a.dirs += b.dirs;
            a.total_bytes += b.total_bytes;
            a.total_files += b.total_files;
        }
        tblspc.sort();
        if let Some(n) = root.tree.nodes.iter_mut().find(|n| n.name == Name::from("pg_tblspc")) {
            n.subtree = Some(writer.save_tree(&tblspc)?);
        }
        Ok((root.tree, root.skipped, root.summary))
    })();
    // Whatever happened while reading, the server must hear that the
    // backup is over; closing the session would also end it, but saying
    // so keeps the server log plain.
    let stop_sql = if version >= 150_000 {
        "select lsn::text, labelfile, spcmapfile from pg_backup_stop(false)"
    } else {
        "select lsn::text, labelfile, spcmapfile from pg_stop_backup(false, false)"
    };
    let stop = s.row(stop_sql);
    let (mut tree, skipped, mut summary) = walked?;
    let stop = stop?;
    let stopped = Utc::now();
    let stop_lsn: String = stop.get(0);
    let label: String = stop.get(1);
    let spcmap: Option<String> = stop.get(2);
    let next_xid = s.text("select pg_snapshot_xmax(pg_current_snapshot())::text").ok().and_then(|t| t.parse().ok());
    drop(s);

    let bad_label = || Error::Invalid(format!("pg_backup_stop returned a backup label arkiv cannot read:\n{label}"));
    let start_lsn = label_field(&label, "START WAL LOCATION")
        .and_then(|v| v.split_whitespace().next())
        .ok_or_else(bad_label)?
        .to_string();
    let timeline: u32 = label_field(&label, "START TIMELINE").and_then(|v| v.parse().ok()).ok_or_else(bad_label)?;

    tree.nodes.push(file_node(&writer, "backup_label", label.as_bytes(), &owner)?);
    if let Some(map) = spcmap.filter(|m| !m.is_empty()) {
        tree.nodes.push(file_node(&writer, "tablespace_map", map.as_bytes(), &owner)?);
    }
    tree.sort();
    let root = writer.save_tree(&tree)?;
    let stats = writer.finish()?;

    let info = BaseBackupInfo {
        system_identifier: sysid,
        server_version_num: version,
        pgdata: pgdata_text.clone(),
        timeline,
        start_wal: Segment::of(timeline, start_lsn.parse()?, seg_size).name(seg_size),
        stop_wal: Segment::before(timeline, stop_lsn.parse()?, seg_size).name(seg_size),
        start_lsn,
        stop_lsn,
        started,
        stopped,
        wal_segment_size: seg_size,
        next_xid,
        tablespaces,
        last_full_read: if full_read {
            started
        } else {
            parent.as_ref().map(|(_, p)| p.last_full_read).unwrap_or(started)
        },
        incremental: !full_read,
        pages_checked: checker.as_ref().map(|c| c.pages_checked()),
        checksum_failures: checker.as_ref().map(|c| c.failures()).unwrap_or_default(),
    };
    wait_for_wal(repo, &info, opts.archive_timeout)?;

    let mut snap = Snapshot::new(SOURCE, root);
    if let Some(h) = &opts.host {
        snap.host = h.clone();
    }
    snap.tags = opts.tags.clone();
    snap.paths = vec![pgdata_text];
    snap.parent = parent.map(|(e, _)| e.id);
    snap.skipped = skipped;
    summary.started = Some(started);
    summary.duration_secs = t0.elapsed().as_secs_f64();
    summary.blobs_new = stats.blobs_new;
    summary.bytes_new = stats.bytes_new;
    summary.bytes_stored = stats.bytes_stored;
    summary.bytes_read = progress.bytes_read.load(std::sync::atomic::Ordering::Relaxed);
    snap.summary = summary;
    snap.metadata = serde_json::to_value(&info).expect("base backup info serialises");
    let id = repo.save_snapshot(&snap)?;
    Ok(BaseBackupOutcome { id, snapshot: snap, info })
}

/// Waits until every segment from the backup's start to its stop is in
/// the repository: until then the backup cannot be restored, so it is
/// not recorded.
fn wait_for_wal(repo: &Repository, info: &BaseBackupInfo, timeout: Duration) -> Result<()> {
    let size = info.wal_segment_size;
    let (first, last) = (info.start_segment(), info.stop_segment());
    let deadline = Instant::now() + timeout;
    // One existence check per segment still missing, not a listing of the
    // whole archive each time: on object storage that can be thousands
    // of objects, and segments arrive in order.
    let mut names = (first.number..=last.number).map(|n| Segment { timeline: info.timeline, number: n }.name(size));
    let mut waiting = names.next();
    loop {
        while let Some(name) = &waiting {
            if !repo.archive_exists(name)? {
                break;
            }
            waiting = names.next();
        }
        let Some(missing) = &waiting else { return Ok(()) };
        if Instant::now() >= deadline {
            return Err(Error::Invalid(format!(
                "base backup not recorded: WAL segment {missing} (needed from {} to {}) did not reach the repository \
                 within {} s; check archive_command and the server log",
                info.start_wal,
                info.stop_wal,
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Where recovery stops.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// Replay everything archived (PostgreSQL's default).
    End,
    /// Stop as soon as the backup is consistent.
    Immediate,
    Time(DateTime<FixedOffset>),
    Lsn(Lsn),
    Xid(u64),
    Name(String),
}

impl Target {
    fn describe(&self) -> String {
        match self {
            Target::End => "the end of the archived WAL".into(),
            Target::Immediate => "the end of the base backup".into(),
            Target::Time(t) => format!("time {}", t.to_rfc3339()),
            Target::Lsn(l) => format!("LSN {l}"),
            Target::Xid(x) => format!("transaction {x}"),
            Target::Name(n) => format!("restore point '{n}'"),
        }
    }
}

/// Parses a `--time` value: RFC 3339, or PostgreSQL's own text form
/// (`2026-11-22 10:00:00.123456+00`); a time without an offset is UTC.
pub fn parse_time(s: &str) -> Result<DateTime<FixedOffset>> {
    let t = s.trim();
    if let Ok(v) = DateTime::parse_from_rfc3339(t) {
        return Ok(v);
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
        if let Ok(v) = DateTime::parse_from_str(t, f) {
            return Ok(v);
        }
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M"] {
        if let Ok(v) = chrono::NaiveDateTime::parse_from_str(t, f) {
            return Ok(v.and_utc().fixed_offset());
        }
    }
    Err(Error::Invalid(format!("'{s}' is not a time: use RFC 3339 (2026-11-22T10:00:00Z) or 2026-11-22 10:00:00+00")))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Promote,
    Pause,
    Shutdown,
}

impl std::str::FromStr for Action {
    type Err = Error;
    fn from_str(s: &str) -> Result<Action> {
        match s {
            "promote" => Ok(Action::Promote),
            "pause" => Ok(Action::Pause),
            "shutdown" => Ok(Action::Shutdown),
            _ => Err(Error::Invalid(format!("--action {s}: use promote, pause or shutdown"))),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PhysicalRestoreOptions {
    pub pgdata: PathBuf,
    /// A snapshot id or prefix; `None` or `latest`: the newest base backup
    /// that can reach the target.
    pub snapshot: Option<String>,
    pub target: Target,
    /// `latest`, `current` or a number; `None` leaves PostgreSQL's default
    /// (`latest`).
    pub timeline: Option<String>,
    pub action: Option<Action>,
    /// The `restore_command` the restored server will run.
    pub restore_command: String,
    /// Tablespaces put somewhere other than where they were (oid or name → dir).
    pub tablespace_map: Vec<(String, PathBuf)>,
    /// The directory of the `postgres` binary that will run the restore.
    pub pg_bin: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PhysicalRestoreOutcome {
    pub snapshot: Id,
    pub pgdata: String,
    pub target: String,
    pub backup_stopped: DateTime<Utc>,
    pub files: u64,
    pub bytes: u64,
    pub wal_needed_from: String,
    pub wal_needed_to: String,
    /// Why the server's version could not be compared, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version_note: Option<String>,
}

/// The window a repository can restore to.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

impl Window {
    fn describe(&self) -> String {
        let t = |v: Option<DateTime<Utc>>| v.map(|t| t.to_rfc3339()).unwrap_or_else(|| "(none)".into());
        format!("from {} to {}", t(self.from), t(self.to))
    }
}

/// Every base backup in the repository, oldest first.
pub fn base_backups(repo: &Repository) -> Result<Vec<(SnapshotEntry, BaseBackupInfo)>> {
    let mut v: Vec<_> =
        repo.list_snapshots()?.into_iter().filter_map(|e| BaseBackupInfo::of(&e.snapshot).map(|i| (e, i))).collect();
    v.sort_by_key(|(_, i)| i.stopped);
    Ok(v)
}

/// The recoverable window: from the end of the oldest base backup to the
/// last time WAL reached the archive.
pub fn window(backups: &[(SnapshotEntry, BaseBackupInfo)], wal: &WalInventory) -> Window {
    Window { from: backups.iter().map(|(_, i)| i.stopped).min(), to: wal.newest() }
}

/// The timelines recovery follows to reach a target timeline, oldest
/// first, each with the LSN where it begins: what the target timeline's
/// history file says.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    pub target: u32,
    /// (timeline, first LSN on it); the first begins at 0.
    pub timelines: Vec<(u32, Lsn)>,
}

impl History {
    /// Parses a `.history` file: lines `parentTLI<TAB>switchpoint<TAB>reason`.
    pub fn parse(target: u32, text: &str) -> Result<History> {
        let mut timelines = Vec::new();
        let mut begin = Lsn(0);
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let mut f = line.split_whitespace();
            let bad = || Error::Invalid(format!("{target:08X}.history: cannot read line '{line}'"));
            let tli: u32 = f.next().and_then(|t| t.parse().ok()).ok_or_else(bad)?;
            let switch: Lsn = f.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
            timelines.push((tli, begin));
            begin = switch;
        }
        timelines.push((target, begin));
        Ok(History { target, timelines })
    }

    fn first(target: u32) -> History {
        History { target, timelines: vec![(target, Lsn(0))] }
    }

    /// Where timeline `tli` ends on the way to the target (`None`: it is
    /// the target, or not on the way at all).
    fn end_of(&self, tli: u32) -> Option<Lsn> {
        let i = self.timelines.iter().position(|(t, _)| *t == tli)?;
        self.timelines.get(i + 1).map(|(_, b)| *b)
    }

    fn contains(&self, tli: u32) -> bool {
        self.timelines.iter().any(|(t, _)| *t == tli)
    }

    /// The timeline recovery reads segment `n` from: the newest whose
    /// beginning is in or before it (PostgreSQL's `XLogFileReadAnyTLI`).
    fn timeline_of(&self, n: u64, size: u64) -> u32 {
        self.timelines.iter().filter(|(_, b)| b.0 / size <= n).map(|(t, _)| *t).max().unwrap_or(self.target)
    }

    /// Whether a base backup can start recovery towards this target: it
    /// was taken on a timeline of this history before that timeline ended.
    fn admits(&self, info: &BaseBackupInfo) -> bool {
        self.contains(info.timeline) && self.end_of(info.timeline).is_none_or(|end| info.stop() <= end)
    }
}

/// Reads timeline `tli`'s history from the archive.
fn load_history(repo: &Repository, tli: u32) -> Result<History> {
    if tli <= 1 {
        return Ok(History::first(tli.max(1)));
    }
    let name = format!("{tli:08X}.history");
    match repo.archive_get(&name) {
        Ok((_, bytes)) => History::parse(tli, &String::from_utf8_lossy(&bytes)),
        Err(arkiv_repo::Error::NotFound { .. }) => Err(Error::Invalid(format!(
            "timeline {tli} has no history file ({name}) in the archive, so recovery cannot follow it"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// The timeline recovery will aim for, given `--timeline` and a backup.
fn target_timeline(spec: Option<&str>, wal: &WalInventory, backup: &BaseBackupInfo) -> u32 {
    match spec {
        Some("current") => backup.timeline,
        Some(n) if n.parse::<u32>().is_ok() => n.parse().unwrap(),
        // `latest`, PostgreSQL's default: the newest timeline with a history file.
        _ => wal.histories.iter().copied().chain([backup.timeline, 1]).max().unwrap_or(1),
    }
}

/// Whether the WAL after the backup holds restore point `name`: its
/// record carries the name as a NUL-padded string, searched for in each
/// segment recovery would read after the backup ended.
fn wal_has_restore_point(
    repo: &Repository,
    info: &BaseBackupInfo,
    wal: &WalInventory,
    hist: &History,
    name: &str,
    cache: &mut std::collections::HashMap<String, bool>,
) -> Result<bool> {
    let size = info.wal_segment_size;
    let mut needle = name.as_bytes().to_vec();
    needle.push(0);
    let max = wal.all(size).iter().map(|s| s.number).max().unwrap_or(0);
    for n in info.stop_segment().number..=max {
        let seg = Segment { timeline: hist.timeline_of(n, size), number: n }.name(size);
        if !wal.has(&seg) {
            break;
        }
        let found = match cache.get(&seg) {
            Some(f) => *f,
            None => {
                let object = if wal.segments.contains_key(&seg) { seg.clone() } else { format!("{seg}.partial") };
                let (_, bytes) = repo.archive_get(&object)?;
                let f = bytes.windows(needle.len()).any(|w| w == needle.as_slice());
                cache.insert(seg.clone(), f);
                f
            }
        };
        if found {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Chooses the base backup to restore for `target`, and the timeline
/// history recovery will follow from it.
fn choose(
    repo: &Repository,
    backups: &[(SnapshotEntry, BaseBackupInfo)],
    wal: &WalInventory,
    opts: &PhysicalRestoreOptions,
) -> Result<(SnapshotEntry, BaseBackupInfo, History)> {
    if backups.is_empty() {
        return Err(Error::Invalid(format!("{} holds no PostgreSQL base backup", repo.backend().location())));
    }
    let win = window(backups, wal);
    let mut histories: std::collections::HashMap<u32, History> = std::collections::HashMap::new();
    let mut history_for = |info: &BaseBackupInfo| -> Result<History> {
        let t = target_timeline(opts.timeline.as_deref(), wal, info);
        if let Some(h) = histories.get(&t) {
            return Ok(h.clone());
        }
        let h = load_history(repo, t)?;
        histories.insert(t, h.clone());
        Ok(h)
    };
    if let Some(spec) = opts.snapshot.as_deref().filter(|s| *s != "latest") {
        let id = repo.resolve_snapshot_id(spec)?;
        let (entry, info) = backups.iter().find(|(e, _)| e.id == id).cloned().ok_or_else(|| {
            Error::Invalid(format!("snapshot {spec} is not a PostgreSQL base backup (see `arkiv pg info`)"))
        })?;
        if let Target::Time(t) = &opts.target {
            if t.with_timezone(&Utc) < info.stopped {
                return Err(Error::Invalid(format!(
                    "{} is before base backup {} finished ({}): outside what it can recover (window {})",
                    opts.target.describe(),
                    entry.id.short(),
                    info.stopped.to_rfc3339(),
                    win.describe()
                )));
            }
        }
        let hist = history_for(&info)?;
        if !hist.admits(&info) {
            return Err(Error::Invalid(format!(
                "base backup {} (timeline {}) is not on the way to timeline {}: choose another, or --timeline",
                entry.id.short(),
                info.timeline,
                hist.target
            )));
        }
        return Ok((entry, info, hist));
    }
    if let Target::Time(t) = &opts.target {
        let t = t.with_timezone(&Utc);
        if win.from.is_some_and(|f| t < f) || win.to.is_some_and(|to| t > to) {
            return Err(Error::Invalid(format!(
                "{} is outside the recoverable window ({})",
                opts.target.describe(),
                win.describe()
            )));
        }
    }
    let mut scanned = std::collections::HashMap::new();
    for (entry, info) in backups.iter().rev() {
        let hist = history_for(info)?;
        if !hist.admits(info) {
            continue;
        }
        let fits = match &opts.target {
            Target::Time(t) => info.stopped <= t.with_timezone(&Utc),
            Target::Lsn(l) => info.stop() <= *l,
            Target::Xid(x) => info.next_xid.is_some_and(|n| n <= *x),
            // A restore point is found in the WAL after the backup.
            Target::Name(n) => wal_has_restore_point(repo, info, wal, &hist, n, &mut scanned)?,
            Target::End | Target::Immediate => true,
        };
        if fits {
            return Ok((entry.clone(), info.clone(), hist));
        }
    }
    Err(Error::Invalid(match &opts.target {
        Target::Name(n) => {
            format!("restore point '{n}' is not in the archived WAL after any base backup (window {})", win.describe())
        }
        t => format!(
            "no base backup ends before {}: it is outside the recoverable window ({})",
            t.describe(),
            win.describe()
        ),
    }))
}

/// Checks that every WAL segment recovery reads, from the backup's start
/// to where it must go, is archived on the timeline recovery reads it
/// from; returns the first and last segment names needed.
fn check_wal(info: &BaseBackupInfo, wal: &WalInventory, target: &Target, hist: &History) -> Result<(String, String)> {
    let size = info.wal_segment_size;
    let start = info.start_segment();
    let stop = info.stop_segment();
    let on_path = |s: &Segment| s.timeline == hist.timeline_of(s.number, size);
    let segs: Vec<Segment> = wal.all(size).into_iter().filter(|s| s.number >= start.number && on_path(s)).collect();
    let max = segs.iter().map(|s| s.number).max().unwrap_or(0);
    let end = match target {
        Target::Immediate => stop.number,
        Target::Lsn(l) => (l.0 / size).max(stop.number),
        Target::Time(t) => {
            let t = t.with_timezone(&Utc);
            segs.iter()
                .filter(|s| s.number >= stop.number)
                .filter(|s| wal.stored_at(&s.name(size)).is_some_and(|at| at >= t))
                .map(|s| s.number)
                .min()
                .unwrap_or(max)
        }
        Target::End | Target::Xid(_) | Target::Name(_) => max.max(stop.number),
    };
    let name = |n: u64| Segment { timeline: hist.timeline_of(n, size), number: n }.name(size);
    for n in start.number..=end {
        if !wal.has(&name(n)) {
            let reach = if n > stop.number {
                format!("recovery could only reach segment {}", name(n - 1))
            } else {
                "the base backup itself cannot be made consistent".to_string()
            };
            return Err(Error::Invalid(format!(
                "WAL segment {} is missing from the archive: {reach} (needed for {}{})",
                name(n),
                target.describe(),
                if hist.target > 1 { format!(" on timeline {}", hist.target) } else { String::new() }
            )));
        }
    }
    Ok((start.name(size), name(end)))
}

/// The major version of the `postgres` that will run the restore, when
/// it can be found.
fn server_binary_version(pg_bin: Option<&Path>) -> Result<Option<(PathBuf, u32)>> {
    let program = match pg_bin {
        Some(dir) => {
            let p = dir.join("postgres");
            if !p.exists() {
                return Err(Error::Invalid(format!("--pg-bin {}: no postgres binary there", dir.display())));
            }
            p
        }
        // The same programs a `--sandbox cluster` verify would run.
        None => match super::sandbox::server_bindir() {
            Ok(dir) if dir.join("postgres").is_file() => dir.join("postgres"),
            _ => return Ok(None),
        },
    };
    let out = std::process::Command::new(&program).arg("--version").output().map_err(|e| Error::io(&program, e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let num = parse_tool_version(&text).ok_or_else(|| {
        Error::Invalid(format!("{} --version printed '{}', not a PostgreSQL version", program.display(), text.trim()))
    })?;
    Ok(Some((program, num)))
}

fn is_empty_dir(dir: &Path) -> Result<bool> {
    match fs::read_dir(dir) {
        Ok(mut rd) => Ok(rd.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(Error::io(dir, e)),
    }
}

/// A setting's value quoted for postgresql.conf.
fn conf_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// Restores a base backup into `opts.pgdata` and sets it up to recover
/// to `opts.target` with WAL from this repository.
pub fn restore(
    indexed: &Indexed,
    opts: &PhysicalRestoreOptions,
    progress: &crate::files::restore::RestoreProgress,
) -> Result<PhysicalRestoreOutcome> {
    let repo = indexed.repo();
    if !is_empty_dir(&opts.pgdata)? {
        return Err(Error::Invalid(format!(
            "{} is not empty: a restore writes only into a new or empty data directory",
            opts.pgdata.display()
        )));
    }
    let backups = base_backups(repo)?;
    let wal = WalInventory::load(repo)?;
    let (entry, info, hist) = choose(repo, &backups, &wal, opts)?;
    let (from, to) = check_wal(&info, &wal, &opts.target, &hist)?;

    let backup_major = major_of(info.server_version_num);
    let version_note = match server_binary_version(opts.pg_bin.as_deref())? {
        Some((program, num)) if major_of(num) != backup_major => {
            return Err(Error::Invalid(format!(
                "base backup {} is of PostgreSQL {}, but {} is PostgreSQL {}: restore with the {} server binaries \
                 (--pg-bin), then upgrade with pg_upgrade",
                entry.id.short(),
                major_name(info.server_version_num),
                program.display(),
                major_name(num),
                major_name(info.server_version_num)
            )))
        }
        Some(_) => None,
        None => Some(format!(
            "no postgres binary on PATH to compare with: start this directory with PostgreSQL {}",
            major_name(info.server_version_num)
        )),
    };

    // Tablespaces go back where they were unless mapped elsewhere, and
    // only into empty directories.
    let mut locations = Vec::new();
    for ts in &info.tablespaces {
        let to = opts
            .tablespace_map
            .iter()
            .find(|(k, _)| *k == ts.oid.to_string() || *k == ts.name)
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| PathBuf::from(&ts.location));
        if !is_empty_dir(&to)? {
            return Err(Error::Invalid(format!(
                "tablespace {} goes to {}, which is not empty; give another place with --tablespace {}=DIR",
                ts.name,
                to.display(),
                ts.name
            )));
        }
        locations.push((ts.oid, to));
    }

    let root = entry.snapshot.tree;
    let base = RestoreOptions {
        target: opts.pgdata.clone(),
        excludes: PathFilter::new(&["/global/pg_control", "/pg_tblspc/*"])?,
        ..Default::default()
    };
    let mut out = crate::files::restore(indexed, &root, &base, progress)?;
    if let Some(e) = &out.storage_error {
        return Err(Error::Invalid(format!(
            "{} is unfinished: cannot read the repository: {e}",
            opts.pgdata.display()
        )));
    }
    let owner = fs::metadata(opts.pgdata.join("PG_VERSION")).map_err(|e| Error::io(&opts.pgdata, e))?;
    for (oid, to) in &locations {
        let sub = indexed.find_subtree(&root, &format!("pg_tblspc/{oid}"))?;
        let o = crate::files::restore(
            indexed,
            &sub,
            &RestoreOptions { target: to.clone(), ..Default::default() },
            progress,
        )?;
        out.files += o.files;
        out.bytes += o.bytes;
        chown(to, &owner)?;
        fs::set_permissions(to, fs::Permissions::from_mode(0o700)).map_err(|e| Error::io(to, e))?;
        let link = opts.pgdata.join("pg_tblspc").join(oid.to_string());
        std::os::unix::fs::symlink(to, &link).map_err(|e| Error::io(&link, e))?;
    }
    // pg_control last: until it is there the directory cannot be started
    // by mistake half-restored.
    let control = RestoreOptions {
        target: opts.pgdata.clone(),
        includes: PathFilter::new(&["/global/pg_control"])?,
        ..Default::default()
    };
    let o = crate::files::restore(indexed, &root, &control, progress)?;
    out.files += o.files;
    out.bytes += o.bytes;
    if !out.damaged.is_empty() {
        return Err(Error::Invalid(format!(
            "{} file(s) of base backup {} could not be restored intact (first: {}: {}); {} must not be started",
            out.damaged.len(),
            entry.id.short(),
            out.damaged[0].path,
            out.damaged[0].reason,
            opts.pgdata.display()
        )));
    }

    // A pg_wal that was a link must not lead back to the original
    // cluster's WAL: the restored server gets its own, empty.
    let pg_wal = opts.pgdata.join("pg_wal");
    if fs::symlink_metadata(&pg_wal).is_ok_and(|m| m.file_type().is_symlink()) {
        fs::remove_file(&pg_wal).map_err(|e| Error::io(&pg_wal, e))?;
    }
    for d in [pg_wal.clone(), pg_wal.join("archive_status")] {
        fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
        chown(&d, &owner)?;
    }
    // The tablespace links are made above; the map would make the server
    // make them again.
    let map = opts.pgdata.join("tablespace_map");
    if map.exists() {
        fs::remove_file(&map).map_err(|e| Error::io(&map, e))?;
    }

    let mut settings = format!(
        "\n# Added by arkiv pg restore on {}: base backup {} ({}), recovering to {}.\nrestore_command = {}\n",
        Utc::now().format("%Y-%m-%d %H:%M:%S UTC"),
        entry.id.short(),
        info.stopped.format("%Y-%m-%d %H:%M:%S UTC"),
        opts.target.describe(),
        conf_quote(&opts.restore_command)
    );
    match &opts.target {
        Target::End => {}
        Target::Immediate => settings.push_str("recovery_target = 'immediate'\n"),
        Target::Time(t) => settings.push_str(&format!(
            "recovery_target_time = {}\n",
            conf_quote(&t.format("%Y-%m-%d %H:%M:%S%.6f%:z").to_string())
        )),
        Target::Lsn(l) => settings.push_str(&format!("recovery_target_lsn = '{l}'\n")),
        Target::Xid(x) => settings.push_str(&format!("recovery_target_xid = '{x}'\n")),
        Target::Name(n) => settings.push_str(&format!("recovery_target_name = {}\n", conf_quote(n))),
    }
    if let Some(t) = &opts.timeline {
        settings.push_str(&format!("recovery_target_timeline = {}\n", conf_quote(t)));
    }
    if let Some(a) = opts.action.filter(|_| opts.target != Target::End) {
        let a = serde_json::to_value(a).unwrap();
        settings.push_str(&format!("recovery_target_action = '{}'\n", a.as_str().unwrap()));
    }
    let auto = opts.pgdata.join("postgresql.auto.conf");
    let mut text = fs::read_to_string(&auto).unwrap_or_default();
    text.push_str(&settings);
    fs::write(&auto, text).map_err(|e| Error::io(&auto, e))?;
    chown(&auto, &owner)?;
    let signal = opts.pgdata.join("recovery.signal");
    fs::write(&signal, b"").map_err(|e| Error::io(&signal, e))?;
    chown(&signal, &owner)?;
    chown(&opts.pgdata, &owner)?;
    fs::set_permissions(&opts.pgdata, fs::Permissions::from_mode(0o700)).map_err(|e| Error::io(&opts.pgdata, e))?;

    Ok(PhysicalRestoreOutcome {
        snapshot: entry.id,
        pgdata: opts.pgdata.display().to_string(),
        target: opts.target.describe(),
        backup_stopped: info.stopped,
        files: out.files,
        bytes: out.bytes,
        wal_needed_from: from,
        wal_needed_to: to,
        version_note,
    })
}

/// Gives `path` the owner of `like` when running as root (a restore by
/// root must leave a directory the postgres user can start).
fn chown(path: &Path, like: &fs::Metadata) -> Result<()> {
    if crate::files::meta::running_as_root() {
        std::os::unix::fs::lchown(path, Some(like.uid()), Some(like.gid())).map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}

/// WAL of one timeline as `pg info` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineWal {
    pub timeline: u32,
    pub first: String,
    pub last: String,
    pub segments: usize,
    /// Segments between first and last that are not archived.
    pub missing: Vec<String>,
    pub partial: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupSummary {
    pub id: Id,
    #[serde(flatten)]
    pub info: BaseBackupInfo,
    pub bytes: u64,
    pub files: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Info {
    pub backups: Vec<BackupSummary>,
    pub timelines: Vec<TimelineWal>,
    pub history: Vec<String>,
    pub window: Window,
}

pub fn info(repo: &Repository) -> Result<Info> {
    let backups = base_backups(repo)?;
    let wal = WalInventory::load(repo)?;
    let size = backups.last().map(|(_, i)| i.wal_segment_size).unwrap_or(DEFAULT_SEGMENT_SIZE);
    let mut timelines: Vec<TimelineWal> = Vec::new();
    let all = wal.all(size);
    let mut tlis: Vec<u32> = all.iter().map(|s| s.timeline).collect();
    tlis.dedup();
    for tli in tlis {
        let segs: Vec<&Segment> = all.iter().filter(|s| s.timeline == tli).collect();
        let (first, last) = (segs[0].number, segs[segs.len() - 1].number);
        let have: std::collections::HashSet<u64> = segs.iter().map(|s| s.number).collect();
        let missing = (first..=last)
            .filter(|n| !have.contains(n))
            .map(|n| Segment { timeline: tli, number: n }.name(size))
            .collect();
        let partial = wal.partials.keys().filter(|p| p.starts_with(&format!("{tli:08X}"))).max().cloned();
        timelines.push(TimelineWal {
            timeline: tli,
            first: segs[0].name(size),
            last: segs[segs.len() - 1].name(size),
            segments: segs.len(),
            missing,
            partial,
        });
    }
    let win = window(&backups, &wal);
    Ok(Info {
        backups: backups
            .into_iter()
            .map(|(e, info)| BackupSummary {
                id: e.id,
                bytes: e.snapshot.summary.total_bytes,
                files: e.snapshot.summary.total_files,
                info,
            })
            .collect(),
        timelines,
        history: wal.histories.iter().map(|t| format!("{t:08X}.history")).collect(),
        window: win,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct Expired {
    pub kept: Vec<Id>,
    pub removed: Vec<Id>,
    pub wal_removed: usize,
    /// The oldest segment still needed.
    pub wal_kept_from: Option<String>,
}

/// Forgets base backups the policy does not keep and deletes the WAL no
/// kept backup needs: every segment before the oldest kept backup's start.
/// History files are kept; they are tiny and recovery across timelines
/// needs every one of them.
pub fn expire(repo: &Repository, policy: &KeepPolicy, dry_run: bool) -> Result<Expired> {
    if policy.is_empty() {
        return Err(Error::Invalid("no retention rule given: say how many base backups to keep".into()));
    }
    let backups = base_backups(repo)?;
    let entries: Vec<SnapshotEntry> = backups.iter().map(|(e, _)| e.clone()).collect();
    let groups = retention::apply(&entries, policy, GroupBy::NONE);
    let mut kept = Vec::new();
    let mut removed = Vec::new();
    for d in groups.iter().flat_map(|g| &g.decisions) {
        if d.keep {
            kept.push(d.id);
        } else {
            removed.push(d.id);
        }
    }
    let oldest_kept = backups.iter().filter(|(e, _)| kept.contains(&e.id)).map(|(_, i)| i).min_by_key(|i| i.start());
    let mut wal_removed = 0;
    let wal_kept_from = oldest_kept.map(|i| i.start_wal.clone());
    if !dry_run {
        repo.require_full_access("expiring base backups")?;
        for id in &removed {
            repo.delete_snapshot(id)?;
        }
    }
    if let Some(oldest) = oldest_kept {
        let size = oldest.wal_segment_size;
        let first = oldest.start_segment().number;
        for e in repo.archive_list()? {
            let seg = match super::wal::WalFile::parse(&e.name) {
                Some(super::wal::WalFile::Segment(s))
                | Some(super::wal::WalFile::Partial(s))
                | Some(super::wal::WalFile::BackupHistory(s)) => Segment::parse(&s, size),
                _ => None,
            };
            if seg.is_some_and(|s| s.number < first) {
                if !dry_run {
                    repo.archive_delete(&e.name)?;
                }
                wal_removed += 1;
            }
        }
    }
    Ok(Expired { kept, removed, wal_removed, wal_kept_from })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_both_spellings() {
        let a = parse_time("2026-11-22T10:00:00.5Z").unwrap();
        let b = parse_time("2026-11-22 10:00:00.500000+00").unwrap();
        let c = parse_time("2026-11-22 11:00:00.5+01:00").unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(parse_time("2026-11-22 10:00:00.5").unwrap(), a);
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn history_files_say_which_timeline_each_segment_comes_from() {
        let h = History::parse(3, "1\t0/5000000\tno recovery target specified\n\n2\t0/9000000\tbefore 2026-11-22\n")
            .unwrap();
        assert_eq!(
            h.timelines,
            vec![(1, Lsn(0)), (2, "0/5000000".parse().unwrap()), (3, "0/9000000".parse().unwrap())]
        );
        let size = DEFAULT_SEGMENT_SIZE;
        assert_eq!(h.timeline_of(4, size), 1);
        assert_eq!(h.timeline_of(5, size), 2, "the switch segment is read from the new timeline");
        assert_eq!(h.timeline_of(12, size), 3);
        assert_eq!(h.end_of(1), Some("0/5000000".parse().unwrap()));
        assert_eq!(h.end_of(3), None);
        assert!(History::parse(2, "x y").is_err());
    }

    #[test]
    fn backup_labels_are_read() {
        let label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: \
                     0/2000060\nSTART TIMELINE: 1\n";
        assert_eq!(label_field(label, "START WAL LOCATION").unwrap().split_whitespace().next(), Some("0/2000028"));
        assert_eq!(label_field(label, "START TIMELINE"), Some("1"));
    }

    #[test]
    fn exclusions_follow_the_documented_list() {
        let f = filter_for(Path::new("/srv/pg [15]/data")).unwrap();
        for p in [
            "pg_wal/000000010000000000000001",
            "postmaster.pid",
            "base/5/pgsql_tmp",
            "base/5/t3_16384",
            "global/pg_internal.init",
            "pg_tblspc/16400",
        ] {
            assert!(f.matches(&Path::new("/srv/pg [15]/data").join(p)), "{p} should be left out");
        }
        for p in ["pg_wal", "base/5/16384", "global/pg_control", "postgresql.auto.conf", "pg_xact/0000"] {
            assert!(!f.matches(&Path::new("/srv/pg [15]/data").join(p)), "{p} must be kept");
        }
    }
}
