//! Command-line definitions. Kept apart from what the commands do so the
//! help text, the flags and their environment variables read in one place.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "arkiv",
    version,
    about = "Backup and disaster recovery for the data an application lives on",
    after_help = "Exit codes: 0 success, 1 error, 2 bad usage, 3 partial (finished, but some files could not be saved or restored).\nLogs: set RUST_LOG (e.g. RUST_LOG=debug) for detail on standard error."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Repository location: a directory, or s3://BUCKET/PREFIX, gs://, azblob://, sftp://USER@HOST/PATH, webdav://, ftp://;
    /// with --config, also the name of a configured repository
    #[arg(short = 'r', long, env = "ARKIV_REPO", global = true)]
    pub repo: Option<String>,
    /// Configuration file naming repositories and sources (see docs/config.md)
    #[arg(short = 'c', long, env = "ARKIV_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Where file data lives when it is kept apart from metadata (a cold tier); same forms as --repo
    #[arg(long, env = "ARKIV_DATA_REPO", global = true)]
    pub data_repo: Option<String>,
    /// Limit in seconds on each storage request without a body; a transfer step (one upload or read) gets five times as long
    #[arg(long, env = "ARKIV_TIMEOUT", global = true, default_value_t = 60)]
    pub timeout: u64,
    /// Retries of a storage request that failed for a temporary reason
    #[arg(long, env = "ARKIV_RETRIES", global = true, default_value_t = 6)]
    pub retries: u32,
    /// Storage requests in flight at once, for object stores
    #[arg(long, env = "ARKIV_CONNECTIONS", global = true, default_value_t = 8)]
    pub connections: usize,
    /// Directory for the local cache of a remote repository's metadata
    #[arg(long, env = "ARKIV_CACHE_DIR", global = true)]
    pub cache_dir: Option<PathBuf>,
    /// Do not cache a remote repository's metadata locally
    #[arg(long, global = true)]
    pub no_cache: bool,
    /// Read the password from this file (first line)
    #[arg(long, env = "ARKIV_PASSWORD_FILE", global = true)]
    pub password_file: Option<PathBuf>,
    /// Open the repository with a key file instead of a password
    #[arg(long, env = "ARKIV_KEY_FILE", global = true)]
    pub key_file: Option<PathBuf>,
    /// Print results as JSON on standard output
    #[arg(long, global = true)]
    pub json: bool,
    /// Print only errors and warnings
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Never draw progress bars, even on a terminal
    #[arg(long, global = true)]
    pub no_progress: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new repository
    Init(InitArgs),
    /// Back up files and directories (or standard input)
    Backup(BackupArgs),
    /// List snapshots
    Snapshots(FilterArgs),
    /// List the files in a snapshot
    Ls(LsArgs),
    /// Show what changed between two snapshots
    Diff(DiffArgs),
    /// Find files by name or path pattern across snapshots
    Find(FindArgs),
    /// Restore a snapshot into a directory, a database, a file or a command
    Restore(RestoreArgs),
    /// Prove a snapshot restores: restore it into a throw-away sandbox, check it, remove it
    Verify(VerifyArgs),
    /// Verify the repository's structure and, optionally, its data
    Check(CheckArgs),
    /// Show repository or snapshot sizes
    Stats(StatsArgs),
    /// Manage the key slots that unlock the repository
    #[command(subcommand)]
    Key(KeyCommand),
    /// Print a repository object, decrypted (for debugging)
    Cat(CatArgs),
    /// Remove snapshots by retention policy (or by id)
    Forget(ForgetArgs),
    /// Delete data no snapshot needs, in two phases with a grace period
    Prune(PruneCmd),
    /// Copy snapshots into another repository (only what it lacks)
    Copy(CopyArgs),
    /// Compare two repositories' snapshots: what is missing where, how far behind
    ReplicationStatus(ReplicationArgs),
    /// PostgreSQL physical backups, WAL archiving and point-in-time recovery
    #[command(subcommand)]
    Pg(PgCommand),
    /// Run the daemon: schedules, jobs, HTTP API and metrics, from --config
    Serve,
    /// Work with the configuration file
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Manage the daemon's API tokens (in its catalog)
    #[command(subcommand)]
    Token(TokenCommand),
    /// The daemon's audit log
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate the file given with --config: every error names its key and line
    Check,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token and print it (shown once; only its hash is kept)
    Create {
        /// A name for the token (who or what uses it); recorded in the audit log
        #[arg(long)]
        name: String,
        /// viewer (read), operator (also run and cancel jobs, restore, verify) or admin (also tokens and the audit log)
        #[arg(long, value_parser = ["viewer", "operator", "admin"])]
        role: String,
    },
    /// List tokens (never the tokens themselves)
    List,
    /// Revoke a token by name
    Revoke { name: String },
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Walk the hash chain: exit 0 when intact, 1 naming the first edited or deleted entry
    Verify,
    /// Print the entries
    List {
        /// Entries after this sequence number
        #[arg(long, default_value_t = 0)]
        after: i64,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

#[derive(Subcommand, Debug)]
pub enum PgCommand {
    /// Archive one WAL file: use as archive_command = 'arkiv pg wal-push --repo R --password-file F %p'
    WalPush(WalPushArgs),
    /// Fetch one WAL file: used as restore_command = 'arkiv pg wal-fetch --repo R … %f "%p"' (written by pg restore).
    /// Exit 1: not in the archive (recovery ends there); 255: any other error (recovery stops)
    WalFetch(WalFetchArgs),
    /// Take a base backup of a running cluster (non-exclusive), reading its data directory
    Backup(PgBackupArgs),
    /// Restore a base backup into a new data directory, set up to recover to a point in time
    Restore(PgRestoreArgs),
    /// Show base backups, archived WAL per timeline and the recoverable window
    Info,
    /// Forget old base backups and delete the WAL no kept backup needs
    Expire(PgExpireArgs),
    /// Push every ready WAL file of a cluster in parallel (started by wal-push --spool; runs until idle)
    Archiver(ArchiverArgs),
    /// Stream WAL with pg_receivewal over a replication slot, storing the open segment every second
    Receive(ReceiveArgs),
}

#[derive(Args, Debug)]
pub struct ArchiverArgs {
    /// The spool directory shared with wal-push --spool
    #[arg(long)]
    pub spool: PathBuf,
    /// The cluster's pg_wal directory
    #[arg(long)]
    pub pg_wal: PathBuf,
    /// Uploads in parallel
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Exit after this many seconds with nothing to push (0: never)
    #[arg(long, default_value_t = 60)]
    pub idle_exit: u64,
    /// zstd level for WAL
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(-7..=22))]
    pub compression: i32,
}

#[derive(Args, Debug)]
pub struct ReceiveArgs {
    /// Directory pg_receivewal writes into (files are removed once stored)
    #[arg(long)]
    pub dir: PathBuf,
    /// A role with the REPLICATION attribute to connect as
    #[command(flatten)]
    pub conn: PgConnArgs,
    /// Replication slot to stream from
    #[arg(long, default_value = "arkiv")]
    pub slot: String,
    /// Create the slot if it does not exist
    #[arg(long)]
    pub create_slot: bool,
    /// How often the open segment is stored, in milliseconds
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Directory holding pg_receivewal (default: PATH)
    #[arg(long)]
    pub pg_bin: Option<PathBuf>,
}

/// How `pg backup` and `pg receive` reach the server.
#[derive(Args, Debug)]
pub struct PgConnArgs {
    /// Server host or socket directory (default: PGHOST, else /var/run/postgresql)
    #[arg(long)]
    pub host: Option<String>,
    /// Server port (default: PGPORT, else 5432)
    #[arg(short, long)]
    pub port: Option<u16>,
    /// Role to connect as (default: PGUSER, else postgres)
    #[arg(short = 'U', long)]
    pub user: Option<String>,
}

impl PgConnArgs {
    pub fn conn(&self) -> arkiv_source::postgres::Conn {
        arkiv_source::postgres::Conn { host: self.host.clone(), port: self.port, user: self.user.clone() }
    }
}

#[derive(Args, Debug)]
pub struct WalPushArgs {
    /// The WAL file (%p)
    pub path: PathBuf,
    /// Asynchronous mode: a background archiver (started on demand) pushes every ready file in parallel;
    /// this command only waits for its file's turn. The directory holds its markers and status.json
    #[arg(long)]
    pub spool: Option<PathBuf>,
    /// Seconds to wait for the archiver before failing (PostgreSQL then retries)
    #[arg(long, default_value_t = 60)]
    pub wait: u64,
    /// Uploads in parallel in asynchronous mode
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// zstd level for WAL (1 is about twice as fast as 3 on WAL, for a few percent more space)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(-7..=22))]
    pub compression: i32,
}

#[derive(Args, Debug)]
pub struct WalFetchArgs {
    /// The WAL file's name (%f)
    pub name: String,
    /// Where to write it (%p)
    pub dest: PathBuf,
    /// Segments fetched ahead, in parallel, into pg_wal/arkiv-prefetch
    #[arg(long, default_value_t = 8)]
    pub prefetch: usize,
}

#[derive(Args, Debug)]
pub struct PgBackupArgs {
    /// The cluster's data directory
    #[arg(long, env = "PGDATA")]
    pub pgdata: PathBuf,
    /// A superuser (or a role with pg_backup_start rights) to connect as
    #[command(flatten)]
    pub conn: PgConnArgs,
    /// Read every file, even those unchanged since the previous base backup
    #[arg(long)]
    pub full: bool,
    /// Read every file when the last backup that did is older than this (e.g. 7d)
    #[arg(long, default_value = "7d")]
    pub full_read_interval: String,
    /// Do not verify page checksums while reading (verified by default when the cluster has data checksums)
    #[arg(long)]
    pub no_verify_checksums: bool,
    /// Let the backup's checkpoint spread out over checkpoint_completion_target instead of forcing it at once
    #[arg(long)]
    pub spread_checkpoint: bool,
    /// Seconds to wait for the backup's WAL to reach the repository before giving up
    #[arg(long, default_value_t = 300)]
    pub archive_timeout: u64,
    /// Tag the snapshot (repeatable)
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Host name to record instead of this machine's
    #[arg(long = "hostname")]
    pub hostname: Option<String>,
}

#[derive(Args, Debug)]
pub struct PgRestoreArgs {
    /// Base backup to restore: an id or prefix; default (or `latest`): the newest one that reaches the target
    pub snapshot: Option<String>,
    /// The new data directory (must be missing or empty)
    #[arg(long)]
    pub pgdata: PathBuf,
    /// Recover to this time (RFC 3339, or 2026-11-22 10:00:00+00; no offset means UTC)
    #[arg(long, group = "target")]
    pub time: Option<String>,
    /// Recover to this WAL position (e.g. 0/3000028)
    #[arg(long, group = "target")]
    pub lsn: Option<String>,
    /// Recover to the commit of this transaction id
    #[arg(long, group = "target")]
    pub xid: Option<u64>,
    /// Recover to this named restore point (pg_create_restore_point)
    #[arg(long, group = "target")]
    pub name: Option<String>,
    /// Stop as soon as the base backup is consistent
    #[arg(long, group = "target")]
    pub immediate: bool,
    /// Timeline to follow: latest, current or a number (PostgreSQL's default: latest)
    #[arg(long)]
    pub timeline: Option<String>,
    /// What the server does at the target: promote, pause or shutdown (PostgreSQL's default: pause)
    #[arg(long)]
    pub action: Option<String>,
    /// Put tablespace OID-or-NAME in DIR instead of its original location (repeatable)
    #[arg(long = "tablespace", value_name = "TABLESPACE=DIR")]
    pub tablespaces: Vec<String>,
    /// Directory of the postgres binary that will run the restored cluster (checked for its major version)
    #[arg(long)]
    pub pg_bin: Option<PathBuf>,
    /// The restore_command to write instead of arkiv's own wal-fetch
    #[arg(long)]
    pub restore_command: Option<String>,
}

#[derive(Args, Debug)]
pub struct PgExpireArgs {
    /// Keep the N newest base backups
    #[arg(long)]
    pub keep_last: Option<u32>,
    /// Keep one base backup per day for the N newest days with one
    #[arg(long)]
    pub keep_daily: Option<u32>,
    /// Keep one base backup per week for the N newest weeks with one
    #[arg(long)]
    pub keep_weekly: Option<u32>,
    /// Keep base backups younger than this before the newest (e.g. 30d): the PITR window
    #[arg(long)]
    pub keep_within: Option<String>,
    /// Only say what would be removed
    #[arg(short = 'n', long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// Forget these snapshots (ids or prefixes) instead of applying a policy
    pub snapshots: Vec<String>,
    /// Keep the N newest snapshots
    #[arg(long)]
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the last N hours
    #[arg(long)]
    pub keep_hourly: Option<u32>,
    /// Keep the newest snapshot of each of the last N days
    #[arg(long)]
    pub keep_daily: Option<u32>,
    /// Keep the newest snapshot of each of the last N ISO weeks
    #[arg(long)]
    pub keep_weekly: Option<u32>,
    /// Keep the newest snapshot of each of the last N months
    #[arg(long)]
    pub keep_monthly: Option<u32>,
    /// Keep the newest snapshot of each of the last N years
    #[arg(long)]
    pub keep_yearly: Option<u32>,
    /// Keep every snapshot this close to the newest one (e.g. 30d, 1y6m, 12h)
    #[arg(long)]
    pub keep_within: Option<String>,
    /// Keep every snapshot with this tag (repeatable)
    #[arg(long = "keep-tag")]
    pub keep_tags: Vec<String>,
    /// Apply the policy separately to each group: any of host,source,paths,tags, or "" for one group
    #[arg(long, default_value = "host,source,paths")]
    pub group_by: String,
    /// Show what would be kept and removed, and why; change nothing
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Run prune afterwards
    #[arg(long)]
    pub prune: bool,
    #[command(flatten)]
    pub prune_opts: PruneArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Args, Debug, Clone)]
pub struct PruneArgs {
    /// How long unused data waits before deletion, so running backups can still use it (e.g. 24h, 2d)
    #[arg(long, default_value = "24h")]
    pub grace: String,
    /// Delete unused data at once; only safe when nothing else writes to the repository
    #[arg(long)]
    pub instant: bool,
    /// Unused space tolerated in partly used packs, in percent of used space, before they are repacked
    #[arg(long, default_value = "5%")]
    pub max_unused: String,
}

#[derive(Args, Debug)]
pub struct PruneCmd {
    #[command(flatten)]
    pub opts: PruneArgs,
    /// Show what prune would delete and repack; change nothing
    #[arg(short = 'n', long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct CopyArgs {
    /// Snapshots to copy (default: all that the destination lacks)
    pub snapshots: Vec<String>,
    #[command(flatten)]
    pub pair: RepoPair,
    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Args, Debug)]
pub struct ReplicationArgs {
    #[command(flatten)]
    pub pair: RepoPair,
}

/// Two repositories, each with its own credentials; when a side's are not
/// given, the global ones (--password-file, ARKIV_PASSWORD, --key-file) apply.
#[derive(Args, Debug, Clone)]
pub struct RepoPair {
    /// Source (or first) repository; defaults to --repo
    #[arg(long)]
    pub from: Option<String>,
    /// Its data location, when kept apart
    #[arg(long)]
    pub from_data_repo: Option<String>,
    /// Password file for --from
    #[arg(long, env = "ARKIV_FROM_PASSWORD_FILE")]
    pub from_password_file: Option<PathBuf>,
    /// Key file for --from
    #[arg(long, env = "ARKIV_FROM_KEY_FILE")]
    pub from_key_file: Option<PathBuf>,
    /// Destination (or second) repository
    #[arg(long, required = true)]
    pub to: String,
    /// Its data location, when kept apart
    #[arg(long)]
    pub to_data_repo: Option<String>,
    /// Password file for --to
    #[arg(long, env = "ARKIV_TO_PASSWORD_FILE")]
    pub to_password_file: Option<PathBuf>,
    /// Key file for --to
    #[arg(long, env = "ARKIV_TO_KEY_FILE")]
    pub to_key_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// zstd level for new data, 0 (off) to 22
    #[arg(long, default_value_t = 3)]
    pub compression: i32,
    /// Target pack size in MiB (16 to 64 recommended)
    #[arg(long, default_value_t = 16)]
    pub pack_size_mib: u32,
    /// Argon2id memory cost in KiB for the first password slot
    #[arg(long, default_value_t = 32768)]
    pub argon2_memory_kib: u32,
    /// Argon2id passes for the first password slot
    #[arg(long, default_value_t = 4)]
    pub argon2_iterations: u32,
    /// Unlock with a new key file written here instead of a password
    #[arg(long)]
    pub new_key_file: Option<PathBuf>,
    /// Chunk and name data as the repository --from does (its own encryption key, though), so
    /// `copy` between the two moves blobs without re-chunking
    #[arg(long, requires = "from")]
    pub copy_chunker_params: bool,
    /// The repository whose chunker parameters are copied
    #[arg(long)]
    pub from: Option<String>,
    /// Password file for --from (else the global password)
    #[arg(long, env = "ARKIV_FROM_PASSWORD_FILE")]
    pub from_password_file: Option<PathBuf>,
    /// Key file for --from
    #[arg(long, env = "ARKIV_FROM_KEY_FILE")]
    pub from_key_file: Option<PathBuf>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct FilterArgs {
    /// Only snapshots from this host
    #[arg(long)]
    pub host: Option<String>,
    /// Only snapshots with this tag (repeat for all of several)
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Only snapshots that include this path
    #[arg(long = "path")]
    pub paths: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct BackupArgs {
    /// Files and directories to back up, or one source URL: postgres://, mysql://, sqlite:///path,
    /// redis://, command:'COMMAND LINE', s3://bucket/prefix (docs/sources.md)
    pub paths: Vec<PathBuf>,
    /// Leave out matching paths (a pattern without '/' matches a name anywhere; with '/', a path)
    #[arg(short = 'e', long = "exclude")]
    pub excludes: Vec<String>,
    /// Read exclude patterns from a file, one per line ('#' starts a comment)
    #[arg(long = "exclude-file")]
    pub exclude_files: Vec<PathBuf>,
    /// Leave out the contents of directories with a CACHEDIR.TAG
    #[arg(long)]
    pub exclude_caches: bool,
    /// Stay on the file system of each path given
    #[arg(short = 'x', long)]
    pub one_file_system: bool,
    /// Tag the snapshot (repeatable)
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Record this host name instead of the machine's
    #[arg(long)]
    pub host: Option<String>,
    /// Compare against this snapshot instead of the latest of the same paths
    #[arg(long)]
    pub parent: Option<String>,
    /// Read every file, even those unchanged since the parent snapshot
    #[arg(long)]
    pub force: bool,
    /// Read and count everything, write nothing
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Back up standard input as one file
    #[arg(long)]
    pub stdin: bool,
    /// The file name standard input is saved under (implies --stdin)
    #[arg(long)]
    pub stdin_filename: Option<String>,
    /// Back up this source of the configuration file (repeatable)
    #[arg(short = 's', long = "source", value_name = "NAME")]
    pub sources: Vec<String>,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Snapshot: `latest`, an id or a unique prefix
    pub snapshot: String,
    /// Only list below this path
    pub path: Option<String>,
    /// Show type, mode, size and time
    #[arg(short, long)]
    pub long: bool,
    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    pub first: String,
    pub second: String,
}

#[derive(Args, Debug)]
pub struct FindArgs {
    /// Patterns (same rules as --exclude)
    #[arg(required = true)]
    pub patterns: Vec<String>,
    /// Search only this snapshot
    #[arg(long)]
    pub snapshot: Option<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot: `latest`, an id or a unique prefix
    pub snapshot: String,
    /// Directory to restore into (created if missing), or a target URL for database and stream
    /// snapshots: postgres://…/newdb, mysql://…/db, sqlite:///path, redis:///path/dump.rdb, command:'…'
    #[arg(short, long)]
    pub target: PathBuf,
    /// Restore only this table (PostgreSQL; repeatable)
    #[arg(long = "table")]
    pub tables: Vec<String>,
    /// Restore only this schema (PostgreSQL; repeatable)
    #[arg(long = "schema")]
    pub schemas: Vec<String>,
    /// Drop the objects being restored from the target first
    #[arg(long)]
    pub clean: bool,
    /// From a snapshot of several databases, restore this one
    #[arg(long)]
    pub database: Option<String>,
    /// Also restore server-wide objects (PostgreSQL roles and tablespaces)
    #[arg(long)]
    pub globals: bool,
    /// From a snapshot of several streams, restore this one (to a command or file)
    #[arg(long)]
    pub stream: Option<String>,
    /// Restore only matching paths (and everything inside matching directories)
    #[arg(short, long = "include")]
    pub includes: Vec<String>,
    /// Do not restore matching paths
    #[arg(short, long = "exclude")]
    pub excludes: Vec<String>,
    /// Replace files that already exist at the target
    #[arg(long)]
    pub overwrite: bool,
    /// List what would be restored, write nothing
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Snapshot: `latest` (the default), an id or a unique prefix
    #[arg(default_value = "latest")]
    pub snapshot: String,
    /// Verify the latest snapshot of this source of the configuration file, with its [verify] settings
    #[arg(short = 's', long = "source", value_name = "NAME")]
    pub source: Option<String>,
    /// Where to restore: a server URL (postgres://…, mysql://…) instead of the snapshot's own server,
    /// or `cluster` for a temporary PostgreSQL cluster on a free port
    #[arg(long)]
    pub sandbox: Option<String>,
    /// A query whose answer must be true (repeatable)
    #[arg(long = "assert-sql", value_name = "QUERY")]
    pub sql: Vec<String>,
    /// A table that must exist (repeatable; for Redis, a key)
    #[arg(long = "assert-table", value_name = "TABLE")]
    pub tables: Vec<String>,
    /// A minimum row count, TABLE>=N (repeatable; for Redis, db0>=N keys)
    #[arg(long = "assert-rows", value_name = "TABLE>=N")]
    pub rows: Vec<String>,
    /// A command that must exit 0, run with the sandbox's address in its environment (repeatable)
    #[arg(long = "assert-command", value_name = "COMMAND")]
    pub commands: Vec<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Also read and verify every pack
    #[arg(long)]
    pub read_data: bool,
    /// Read and verify a random subset of packs: N%, a fraction, or n/m
    #[arg(long, conflicts_with = "read_data")]
    pub read_data_subset: Option<String>,
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// A snapshot to size instead of the whole repository
    pub snapshot: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// List key slots
    List,
    /// Add a password slot, or a key file slot with --new-key-file
    Add(KeyAddArgs),
    /// Remove a key slot by id or unique prefix
    Remove { id: String },
    /// Change the password: add a slot with the new one, remove the current
    Passwd(KeyAddArgs),
}

#[derive(Args, Debug)]
pub struct KeyAddArgs {
    /// Read the new password from this file (otherwise prompt, or ARKIV_NEW_PASSWORD)
    #[arg(long)]
    pub new_password_file: Option<PathBuf>,
    /// Create a key file here and add a slot for it
    #[arg(long, conflicts_with = "new_password_file")]
    pub new_key_file: Option<PathBuf>,
    /// Argon2id memory cost in KiB for the new password slot
    #[arg(long, default_value_t = 32768)]
    pub argon2_memory_kib: u32,
    /// Argon2id passes for the new password slot
    #[arg(long, default_value_t = 4)]
    pub argon2_iterations: u32,
    /// The new slot may add snapshots but never forget, prune or manage keys
    #[arg(long)]
    pub append_only: bool,
}

#[derive(Args, Debug)]
pub struct CatArgs {
    /// config | keys | snapshot | index | tree | blob | pack
    pub kind: String,
    /// The object's id (a snapshot may be `latest` or a prefix)
    pub id: Option<String>,
}
