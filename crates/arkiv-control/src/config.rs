//! The configuration file (TOML): repositories and named sources.
//!
//! One file serves the CLI (`arkiv --config arkiv.toml backup --source
//! shop`) and the daemon, so a source is described once. Unknown keys are
//! errors, not silently ignored: a misspelt `pasword_file` must not turn
//! into a backup that cannot be opened. Every key is documented in
//! `docs/config.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {error}")]
    Read { path: String, error: std::io::Error },
    /// The TOML parser's message names the line and column.
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// A whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The daemon (`arkiv serve`): where it listens and keeps its catalog.
    #[serde(default)]
    pub daemon: DaemonConfig,
    /// API users declared in the file (more are made with `arkiv token create`).
    #[serde(default)]
    pub users: BTreeMap<String, UserConfig>,
    /// Repositories by name.
    #[serde(default)]
    pub repositories: BTreeMap<String, RepositoryConfig>,
    /// Sources by name.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
    /// Where the file was read from, for error messages.
    #[serde(skip)]
    pub path: String,
    /// The file's text, to name the line of a key in validation errors.
    #[serde(skip)]
    text: String,
}

/// `[daemon]`: everything `arkiv serve` needs besides what to back up.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Address and port of the HTTP API.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The SQLite catalog: job runs, snapshots seen, audit log, API tokens.
    #[serde(default = "default_catalog")]
    pub catalog: PathBuf,
    /// Where each job run's log is kept; default: `job-logs` beside the catalog.
    #[serde(default)]
    pub job_log_dir: Option<PathBuf>,
    /// Time zone of cron expressions that do not name their own (IANA name).
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// Jobs running at once, over all repositories.
    #[serde(default = "default_max_jobs")]
    pub max_concurrent_jobs: usize,
    /// CPU niceness added to each job (0 to 19): backups are batch work,
    /// the API and the databases being backed up are not.
    #[serde(default = "default_job_nice")]
    pub job_nice: i32,
    /// How long SIGTERM waits for running jobs before marking them interrupted.
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// TLS certificate chain (PEM); with `tls_key`, the API is served over HTTPS.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Largest request body the API reads.
    #[serde(default = "default_body_limit")]
    pub max_body_bytes: usize,
    /// Failed authentications allowed per client address and minute (0: no limit).
    #[serde(default = "default_auth_failures")]
    pub auth_failures_per_minute: u32,
    /// How long finished job runs and their logs are kept (0: forever).
    /// Each job's newest run in every final state is kept regardless.
    #[serde(default = "default_keep_history", with = "humantime_serde")]
    pub keep_history: Duration,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            listen: default_listen(),
            catalog: default_catalog(),
            job_log_dir: None,
            timezone: default_timezone(),
            max_concurrent_jobs: default_max_jobs(),
            job_nice: default_job_nice(),
            shutdown_grace: default_grace(),
            tls_cert: None,
            tls_key: None,
            max_body_bytes: default_body_limit(),
            auth_failures_per_minute: default_auth_failures(),
            keep_history: default_keep_history(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:8470".into()
}
fn default_catalog() -> PathBuf {
    PathBuf::from("/var/lib/arkiv/catalog.db")
}
fn default_timezone() -> String {
    "UTC".into()
}
fn default_max_jobs() -> usize {
    2
}
fn default_job_nice() -> i32 {
    10
}
fn default_grace() -> Duration {
    Duration::from_secs(300)
}
fn default_body_limit() -> usize {
    64 * 1024
}
fn default_auth_failures() -> u32 {
    10
}
fn default_keep_history() -> Duration {
    Duration::from_secs(90 * 86_400)
}

/// An API user whose token the operator keeps in a file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub role: Role,
    /// A file whose first line is the bearer token (at least 24 characters).
    pub token_file: PathBuf,
}

/// What an API token may do; each role may do everything the one before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads status, snapshots, jobs and repositories.
    Viewer,
    /// Also starts and cancels jobs, restores and verifies.
    Operator,
    /// Also manages tokens and reads the audit log.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// When a job runs. Exactly one of `cron` and `every`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// A cron expression: 5 fields, or 6 with seconds first.
    #[serde(default)]
    pub cron: Option<String>,
    /// An interval (`15m`, `4h`), counted from the previous due time.
    #[serde(default, with = "humantime_serde")]
    pub every: Option<Duration>,
    /// IANA time zone of `cron` and of the window; default `[daemon] timezone`.
    #[serde(default)]
    pub timezone: Option<String>,
    /// Do not start before this local time of day (`HH:MM`).
    #[serde(default)]
    pub not_before: Option<String>,
    /// Do not start after this local time of day (`HH:MM`).
    #[serde(default)]
    pub not_after: Option<String>,
    /// A random delay up to this long added to each start.
    #[serde(default, with = "humantime_serde")]
    pub jitter: Option<Duration>,
    /// After downtime, run once for the runs missed (default true).
    #[serde(default)]
    pub catch_up: Option<bool>,
    /// A run still going after this long is stopped and failed.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Further attempts after a failure (default 2).
    #[serde(default)]
    pub retries: Option<u32>,
    /// Wait before the first retry, doubled for each further one (default 1m).
    #[serde(default, with = "humantime_serde")]
    pub retry_backoff: Option<Duration>,
    /// Higher runs first when jobs wait for a free slot (default 0).
    #[serde(default)]
    pub priority: Option<i32>,
}

/// `[repositories.NAME.retention]`: forget + prune on a schedule.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    #[serde(default)]
    pub keep_last: Option<u32>,
    #[serde(default)]
    pub keep_hourly: Option<u32>,
    #[serde(default)]
    pub keep_daily: Option<u32>,
    #[serde(default)]
    pub keep_weekly: Option<u32>,
    #[serde(default)]
    pub keep_monthly: Option<u32>,
    #[serde(default)]
    pub keep_yearly: Option<u32>,
    /// restic's units: `30d`, `1y2m` (m = months).
    #[serde(default)]
    pub keep_within: Option<String>,
    #[serde(default)]
    pub keep_tags: Vec<String>,
    /// Prune after forgetting (default true).
    #[serde(default)]
    pub prune: Option<bool>,
    /// prune's grace period (default 24h).
    #[serde(default)]
    pub prune_grace: Option<String>,
    /// prune's `--max-unused` (default 5%).
    #[serde(default)]
    pub max_unused: Option<String>,
    /// Default: daily at 04:00.
    #[serde(default)]
    pub schedule: Option<ScheduleConfig>,
}

/// `[repositories.NAME.check]`: structure checks and data reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The structure check; default daily at 03:00.
    #[serde(default)]
    pub schedule: Option<ScheduleConfig>,
    /// The data read; default Sundays at 05:00.
    #[serde(default)]
    pub read_data_schedule: Option<ScheduleConfig>,
    /// The part of the data each read checks, as `check --read-data-subset` (default 10%).
    #[serde(default = "default_subset")]
    pub read_data_subset: String,
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig { enabled: true, schedule: None, read_data_schedule: None, read_data_subset: default_subset() }
    }
}

fn yes() -> bool {
    true
}
fn default_subset() -> String {
    "10%".into()
}

/// `[repositories.NAME.replicate]`: copies to the replicas.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicateConfig {
    /// Also copy after each successful backup into this repository (default true).
    #[serde(default)]
    pub after_backup: Option<bool>,
    /// A schedule besides that (none by default).
    #[serde(default)]
    pub schedule: Option<ScheduleConfig>,
}

/// `[sources.NAME.pitr]`: a PostgreSQL cluster backed up physically
/// (`arkiv pg backup`) with its WAL archived by `arkiv pg wal-push`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PitrConfig {
    pub pgdata: PathBuf,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub user: Option<String>,
    /// The `wal-push --spool` directory, whose status.json gives the archive lag metric.
    #[serde(default)]
    pub spool: Option<PathBuf>,
    /// As `pg backup --full-read-interval` (default 7d).
    #[serde(default)]
    pub full_read_interval: Option<String>,
}

/// Where snapshots go and what opens them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// A directory or a storage URL (`s3://…`, `sftp://…`), as `--repo`.
    pub url: String,
    /// A second location for data packs (a cold tier), as `--data-repo`.
    #[serde(default)]
    pub data_url: Option<String>,
    /// A file whose first line is the password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// A key file, instead of a password.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The local cache of a remote repository's metadata.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Repositories (by name) that receive copies of this one's snapshots.
    #[serde(default)]
    pub replicas: Vec<String>,
    /// Jobs on this repository at once (default 1).
    #[serde(default)]
    pub max_concurrent_jobs: Option<usize>,
    #[serde(default)]
    pub retention: Option<RetentionConfig>,
    #[serde(default)]
    pub check: Option<CheckConfig>,
    #[serde(default)]
    pub replicate: Option<ReplicateConfig>,
}

/// Something to back up: a database or bucket (`url`), a command
/// (`url = "command:…"`) or files (`paths`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// A source URL: `postgres://…`, `mysql://…`, `sqlite:///…`,
    /// `redis://…`, `command:…`, `s3://…`.
    #[serde(default)]
    pub url: Option<String>,
    /// Files and directories (the files source).
    #[serde(default)]
    pub paths: Vec<PathBuf>,
    /// Exclude patterns (files source).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// The repository it goes to; may be left out when there is only one.
    #[serde(default)]
    pub repository: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Recorded instead of this machine's host name.
    #[serde(default)]
    pub host: Option<String>,
    /// Source options, the same as the URL's query parameters
    /// (`only = "schema"`): kept apart so the URL stays readable.
    #[serde(default)]
    pub options: BTreeMap<String, toml::Value>,
    /// How a test restore of this source is checked.
    #[serde(default)]
    pub verify: Option<VerifyConfig>,
    /// A PostgreSQL cluster backed up physically, instead of `url` or `paths`.
    #[serde(default)]
    pub pitr: Option<PitrConfig>,
    /// When the daemon backs it up; none: only on demand.
    #[serde(default)]
    pub schedule: Option<ScheduleConfig>,
    /// The recovery point objective: the newest successful backup may be at most this old.
    #[serde(default, with = "humantime_serde")]
    pub rpo: Option<Duration>,
}

/// A test restore's sandbox and assertions, as `arkiv verify` takes them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    /// A server URL to restore on instead of the source's own, or
    /// `cluster` (PostgreSQL: a temporary cluster).
    #[serde(default)]
    pub sandbox: Option<String>,
    /// Queries whose answer must be true.
    #[serde(default)]
    pub sql: Vec<String>,
    /// Tables that must exist.
    #[serde(default)]
    pub tables: Vec<String>,
    /// Minimum row counts, `"TABLE>=N"`.
    #[serde(default)]
    pub rows: Vec<String>,
    /// Commands that must exit 0.
    #[serde(default)]
    pub commands: Vec<String>,
    /// When the daemon runs a test restore; none: only on demand.
    #[serde(default)]
    pub schedule: Option<ScheduleConfig>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read { path: shown.clone(), error })?;
        Config::parse(&shown, &text)
    }

    /// Parses and checks a configuration; `path` names it in errors.
    pub fn parse(path: &str, text: &str) -> Result<Config, ConfigError> {
        if let Some((key, line)) = inline_secret(text) {
            return Err(ConfigError::Invalid {
                path: path.to_string(),
                message: format!(
                    "line {line}: {key}: secrets are never written in the configuration; use password_file, key_file or token_file (or the provider's environment variables)"
                ),
            });
        }
        let mut config: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.to_string(), message: one_line(&e.to_string()) })?;
        config.path = path.to_string();
        config.text = text.to_string();
        config.validate()?;
        Ok(config)
    }

    fn invalid(&self, message: String) -> ConfigError {
        ConfigError::Invalid { path: self.path.clone(), message }
    }

    /// An error about `key` (a dotted path), naming the line it is on.
    fn invalid_at(&self, key: &str, message: impl std::fmt::Display) -> ConfigError {
        match line_of(&self.text, key) {
            Some(line) => self.invalid(format!("line {line}: {key}: {message}")),
            None => self.invalid(format!("{key}: {message}")),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let d = &self.daemon;
        if d.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(self.invalid_at("daemon.listen", format!("'{}' is not ADDRESS:PORT", d.listen)));
        }
        crate::schedule::parse_tz(&d.timezone).map_err(|e| self.invalid_at("daemon.timezone", e))?;
        if d.max_concurrent_jobs == 0 {
            return Err(self.invalid_at("daemon.max_concurrent_jobs", "must be at least 1"));
        }
        if !(0..=19).contains(&d.job_nice) {
            return Err(self.invalid_at("daemon.job_nice", format!("{} is not between 0 and 19", d.job_nice)));
        }
        if d.tls_cert.is_some() != d.tls_key.is_some() {
            return Err(self.invalid_at("daemon.tls_cert", "tls_cert and tls_key go together"));
        }
        for (name, u) in &self.users {
            if u.token_file.as_os_str().is_empty() {
                return Err(self.invalid_at(&format!("users.{name}.token_file"), "is empty"));
            }
        }
        for (name, r) in &self.repositories {
            if r.url.trim().is_empty() {
                return Err(self.invalid_at(&format!("repositories.{name}.url"), "is empty"));
            }
            if url_has_password(&r.url) || r.data_url.as_deref().is_some_and(url_has_password) {
                return Err(self.invalid_at(
                    &format!("repositories.{name}.url"),
                    "a password in the URL: secrets are never written in the configuration; use the provider's environment variables or files",
                ));
            }
            if r.password_file.is_some() && r.key_file.is_some() {
                return Err(
                    self.invalid_at(&format!("repositories.{name}"), "give password_file or key_file, not both")
                );
            }
            for replica in &r.replicas {
                if replica == name {
                    return Err(self.invalid_at(
                        &format!("repositories.{name}.replicas"),
                        "a repository cannot replicate to itself",
                    ));
                }
                if !self.repositories.contains_key(replica) {
                    return Err(self.invalid_at(
                        &format!("repositories.{name}.replicas"),
                        format!("no repository named '{replica}'"),
                    ));
                }
            }
            if r.max_concurrent_jobs == Some(0) {
                return Err(self.invalid_at(&format!("repositories.{name}.max_concurrent_jobs"), "must be at least 1"));
            }
            if let Some(ret) = &r.retention {
                let key = format!("repositories.{name}.retention");
                let counts = [
                    ret.keep_last,
                    ret.keep_hourly,
                    ret.keep_daily,
                    ret.keep_weekly,
                    ret.keep_monthly,
                    ret.keep_yearly,
                ];
                if counts.iter().all(|c| c.unwrap_or(0) == 0) && ret.keep_within.is_none() && ret.keep_tags.is_empty() {
                    return Err(self.invalid_at(&key, "keeps nothing: give at least one keep_* rule"));
                }
                if let Some(w) = &ret.keep_within {
                    check_restic_duration(w).map_err(|e| self.invalid_at(&format!("{key}.keep_within"), e))?;
                }
                if let Some(m) = &ret.max_unused {
                    let ok =
                        m.trim().trim_end_matches('%').trim().parse::<f64>().is_ok_and(|p| (0.0..=100.0).contains(&p));
                    if !ok {
                        return Err(
                            self.invalid_at(&format!("{key}.max_unused"), format!("'{m}' is not a percentage like 5%"))
                        );
                    }
                }
                if let Some(g) = &ret.prune_grace {
                    check_restic_duration(g).map_err(|e| self.invalid_at(&format!("{key}.prune_grace"), e))?;
                }
                self.check_schedule(&format!("{key}.schedule"), ret.schedule.as_ref())?;
            }
            if let Some(c) = &r.check {
                let key = format!("repositories.{name}.check");
                self.check_schedule(&format!("{key}.schedule"), c.schedule.as_ref())?;
                self.check_schedule(&format!("{key}.read_data_schedule"), c.read_data_schedule.as_ref())?;
                if !is_subset(&c.read_data_subset) {
                    return Err(self.invalid_at(
                        &format!("{key}.read_data_subset"),
                        format!(
                            "'{}' is not a subset: N% (10%), a fraction (0.1) or n/m (1/7), at most all of it",
                            c.read_data_subset
                        ),
                    ));
                }
            }
            if let Some(rep) = &r.replicate {
                self.check_schedule(&format!("repositories.{name}.replicate.schedule"), rep.schedule.as_ref())?;
                if r.replicas.is_empty() {
                    return Err(
                        self.invalid_at(&format!("repositories.{name}.replicate"), "there are no replicas to copy to")
                    );
                }
            }
        }
        for (name, s) in &self.sources {
            let key = format!("sources.{name}");
            let given = [s.url.is_some(), !s.paths.is_empty(), s.pitr.is_some()];
            match given.iter().filter(|g| **g).count() {
                0 => {
                    return Err(self.invalid_at(
                        &key,
                        "needs url (a database, bucket or command), paths (files) or pitr (a PostgreSQL cluster)",
                    ));
                }
                1 => {}
                _ => return Err(self.invalid_at(&key, "give one of url, paths and pitr, not both")),
            }
            if let Some(url) = &s.url {
                if url_has_password(url) {
                    return Err(self.invalid_at(
                        &format!("{key}.url"),
                        "a password in the URL: secrets are never written in the configuration; use the source's environment (PGPASSWORD, MYSQL_PWD, REDISCLI_AUTH) or its password file (.pgpass, option files)",
                    ));
                }
                if !arkiv_source::spec::is_source_url(url) {
                    return Err(self.invalid_at(&format!("{key}.url"), format!(
                        "'{url}' is not a source URL (postgres://, mysql://, sqlite://, redis://, command:, s3://, gs://, azblob://); for files use paths"
                    )));
                }
            }
            if s.url.is_none() && !s.options.is_empty() {
                return Err(self.invalid_at(&format!("{key}.options"), "options apply to a url"));
            }
            if s.paths.is_empty() && !s.exclude.is_empty() {
                return Err(self.invalid_at(&format!("{key}.exclude"), "exclude applies to paths"));
            }
            if let Some(p) = &s.pitr {
                if s.verify.is_some() {
                    return Err(self.invalid_at(
                        &format!("{key}.verify"),
                        "a pitr source is proven by `arkiv pg restore` into a scratch directory, not by verify (not scheduled by the daemon yet)",
                    ));
                }
                if let Some(i) = &p.full_read_interval {
                    check_restic_duration(i)
                        .map_err(|e| self.invalid_at(&format!("{key}.pitr.full_read_interval"), e))?;
                }
            }
            self.check_schedule(&format!("{key}.schedule"), s.schedule.as_ref())?;
            if let Some(v) = &s.verify {
                self.check_schedule(&format!("{key}.verify.schedule"), v.schedule.as_ref())?;
            }
            self.source_url(name)?;
            self.repository_for(name)?;
        }
        Ok(())
    }

    /// What `arkiv config check` adds to parsing: the files the
    /// configuration points to exist and can be read. Each problem names
    /// its key and line.
    pub fn check_files(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut readable = |key: String, path: &Path| {
            if let Err(e) = std::fs::File::open(path) {
                let at = line_of(&self.text, &key).map(|l| format!("line {l}: ")).unwrap_or_default();
                out.push(format!("{at}{key}: {}: {e}", path.display()));
            }
        };
        for (name, r) in &self.repositories {
            if let Some(p) = &r.password_file {
                readable(format!("repositories.{name}.password_file"), p);
            }
            if let Some(p) = &r.key_file {
                readable(format!("repositories.{name}.key_file"), p);
            }
        }
        if let Some(p) = &self.daemon.tls_cert {
            readable("daemon.tls_cert".into(), p);
        }
        if let Some(p) = &self.daemon.tls_key {
            readable("daemon.tls_key".into(), p);
        }
        for (name, s) in &self.sources {
            if let Some(p) = &s.pitr {
                readable(format!("sources.{name}.pitr.pgdata"), &p.pgdata.join("PG_VERSION"));
            }
        }
        for name in self.users.keys() {
            if let Err(e) = self.user_token(name) {
                out.push(e.to_string().trim_start_matches(&format!("{}: ", self.path)).to_string());
            }
        }
        out
    }

    fn check_schedule(&self, key: &str, s: Option<&ScheduleConfig>) -> Result<(), ConfigError> {
        if let Some(s) = s {
            crate::schedule::Schedule::from_config(s, &self.daemon.timezone).map_err(|e| self.invalid_at(key, e))?;
        }
        Ok(())
    }

    /// Reads the file each user's token is kept in; the token's first line,
    /// checked for length.
    pub fn user_token(&self, name: &str) -> Result<String, ConfigError> {
        let u = &self.users[name];
        let text = std::fs::read_to_string(&u.token_file)
            .map_err(|error| ConfigError::Read { path: u.token_file.display().to_string(), error })?;
        let token = text.lines().next().unwrap_or("").trim().to_string();
        if token.len() < 24 {
            return Err(self.invalid_at(
                &format!("users.{name}.token_file"),
                format!("{}: the token must be at least 24 characters", u.token_file.display()),
            ));
        }
        Ok(token)
    }

    pub fn source(&self, name: &str) -> Result<&SourceConfig, ConfigError> {
        self.sources.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.sources.keys().map(String::as_str).collect();
            self.invalid(format!(
                "no source named '{name}' (configured: {})",
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            ))
        })
    }

    /// A repository by name; with no name, the only one there is.
    pub fn repository(&self, name: Option<&str>) -> Result<(&str, &RepositoryConfig), ConfigError> {
        match name {
            Some(n) => self.repositories.get_key_value(n).map(|(k, v)| (k.as_str(), v)).ok_or_else(|| {
                let known: Vec<&str> = self.repositories.keys().map(String::as_str).collect();
                self.invalid(format!(
                    "no repository named '{n}' (configured: {})",
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                ))
            }),
            None => match self.repositories.len() {
                1 => Ok(self.repositories.iter().next().map(|(k, v)| (k.as_str(), v)).expect("one repository")),
                0 => Err(self.invalid("no repositories configured".into())),
                _ => Err(self.invalid("several repositories configured: name one".into())),
            },
        }
    }

    /// The repository a source goes to.
    pub fn repository_for(&self, source: &str) -> Result<(&str, &RepositoryConfig), ConfigError> {
        let s = self.source(source)?;
        // Replicas receive copies; with one repository that is not a
        // replica, sources go there unless they say otherwise.
        let primaries: Vec<&String> =
            self.repositories.keys().filter(|n| !self.repositories.values().any(|r| r.replicas.contains(n))).collect();
        let name = match (&s.repository, primaries.as_slice()) {
            (Some(n), _) => Some(n.as_str()),
            (None, [only]) => Some(only.as_str()),
            (None, _) => None,
        };
        self.repository(name).map_err(|e| match e {
            ConfigError::Invalid { message, .. } => {
                let message = if message.starts_with("several repositories") {
                    format!(
                        "{} repositories are not replicas of another ({}): set repository = \"…\"",
                        primaries.len(),
                        primaries.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ")
                    )
                } else {
                    message
                };
                self.invalid_at(&format!("sources.{source}"), message)
            }
            other => other,
        })
    }

    /// The source's URL with its `options` appended as query parameters,
    /// or `None` for a files source.
    pub fn source_url(&self, name: &str) -> Result<Option<String>, ConfigError> {
        let s = self.source(name)?;
        let Some(url) = &s.url else { return Ok(None) };
        if s.options.is_empty() {
            return Ok(Some(url.clone()));
        }
        if arkiv_source::spec::kind_of(url) == Some("command") {
            return Err(self.invalid(format!("sources.{name}.options: a command takes no options")));
        }
        let mut out = url.clone();
        let mut sep = if url.contains('?') { '&' } else { '?' };
        for (k, v) in &s.options {
            let v = match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Array(items) => {
                    let mut parts = Vec::new();
                    for i in items {
                        match i {
                            toml::Value::String(s) => parts.push(s.clone()),
                            other => parts.push(other.to_string()),
                        }
                    }
                    parts.join(",")
                }
                other => {
                    return Err(self.invalid(format!("sources.{name}.options.{k}: {other} is not a plain value")));
                }
            };
            out.push(sep);
            out.push_str(&encode(k));
            out.push('=');
            out.push_str(&encode(&v));
            sep = '&';
        }
        Ok(Some(out))
    }
}

/// Percent-encodes a query component (RFC 3986 unreserved kept).
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' | b',' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A key that would hold a secret inline (`password = "…"`): refused
/// with a pointer to the file-based key rather than as an unknown field.
fn inline_secret(text: &str) -> Option<(String, usize)> {
    const SECRETS: [&str; 6] = ["password", "token", "secret", "secret_key", "access_key", "secret_access_key"];
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with('#') || t.starts_with('[') {
            continue;
        }
        // Keys at the start of the line, and inside inline tables
        // (`options = { password = "…" }`).
        let mut candidates = vec![t];
        candidates.extend(t.match_indices(['{', ',']).map(|(at, _)| &t[at + 1..]));
        for c in candidates {
            let Some((key, _)) = c.split_once('=') else { continue };
            let key = key.trim().trim_matches('"');
            let last = key.rsplit('.').next().unwrap_or(key);
            if SECRETS.contains(&last) {
                return Some((key.to_string(), i + 1));
            }
        }
    }
    None
}

/// Whether a URL carries a password (user information or a `password=`
/// query value), as every source decides it.
pub(crate) fn url_has_password(url: &str) -> bool {
    arkiv_source::spec::carries_password(url)
}

/// A read-data subset `check --read-data-subset` accepts.
fn is_subset(s: &str) -> bool {
    arkiv_repo::check::ReadData::parse_subset(s).is_ok()
}

/// Checks a duration in restic's units (`30d`, `1y2m`, `24h`) with the
/// parser retention itself uses.
fn check_restic_duration(s: &str) -> Result<(), String> {
    arkiv_repo::retention::parse_duration(s)
        .map(|_| ())
        .map_err(|_| format!("'{s}' is not a duration such as 30d, 12h or 1y2m (m = months)"))
}

/// The line (1-based) that sets `key`, a dotted path: the line of its own
/// `[table]` header, or of the key inside the nearest enclosing table.
fn line_of(text: &str, key: &str) -> Option<usize> {
    let parts: Vec<&str> = key.split('.').collect();
    let lines: Vec<&str> = text.lines().collect();
    let header_of = |l: &str| -> Option<String> {
        let t = l.trim();
        let inner = t
            .strip_prefix("[[")
            .and_then(|x| x.strip_suffix("]]"))
            .or_else(|| t.strip_prefix('[').and_then(|x| x.strip_suffix(']')))?;
        Some(inner.split('.').map(|p| p.trim().trim_matches('"')).collect::<Vec<_>>().join("."))
    };
    for depth in (0..=parts.len()).rev() {
        let table = parts[..depth].join(".");
        let start = if depth == 0 {
            Some(0)
        } else {
            lines.iter().position(|l| header_of(l).as_deref() == Some(table.as_str())).map(|i| i + 1)
        };
        let Some(start) = start else { continue };
        if depth == parts.len() {
            return Some(start);
        }
        let next = parts[depth];
        for (i, l) in lines.iter().enumerate().skip(start) {
            if header_of(l).is_some() {
                break;
            }
            let t = l.trim_start();
            if let Some(rest) = t.strip_prefix(next).or_else(|| t.strip_prefix(&format!("\"{next}\""))) {
                let rest = rest.trim_start();
                if rest.starts_with('=') || rest.starts_with('.') {
                    return Some(i + 1);
                }
            }
        }
        if depth > 0 {
            return Some(start);
        }
    }
    None
}

fn one_line(s: &str) -> String {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[repositories.main]
url = "/var/backups/arkiv"
password_file = "/etc/arkiv/password"

[sources.shop]
url = "command:pg_dump shop"
tags = ["prod"]

[sources.shop.verify]
sql = ["select count(*) > 0 from orders"]
rows = ["orders>=10"]

[sources.uploads]
paths = ["/srv/uploads"]
exclude = ["*.tmp"]
"#;

    #[test]
    fn the_documented_shape_parses() {
        let c = Config::parse("arkiv.toml", EXAMPLE).unwrap();
        assert_eq!(c.repository_for("shop").unwrap().0, "main");
        assert_eq!(c.source_url("uploads").unwrap(), None);
        assert_eq!(c.sources["shop"].verify.as_ref().unwrap().rows, ["orders>=10"]);
    }

    #[test]
    fn keep_history_defaults_to_90_days_and_takes_durations() {
        let c = Config::parse("arkiv.toml", EXAMPLE).unwrap();
        assert_eq!(c.daemon.keep_history, Duration::from_secs(90 * 86_400));
        for (text, secs) in [("180d", 180 * 86_400), ("0s", 0), ("12h", 12 * 3600)] {
            let c = Config::parse("arkiv.toml", &format!("[daemon]\nkeep_history = \"{text}\"\n{EXAMPLE}")).unwrap();
            assert_eq!(c.daemon.keep_history, Duration::from_secs(secs), "{text}");
        }
        assert!(Config::parse("arkiv.toml", &format!("[daemon]\nkeep_history = \"forever\"\n{EXAMPLE}")).is_err());
    }

    #[test]
    fn a_misspelt_key_is_an_error_naming_it_and_its_line() {
        let text = EXAMPLE.replace("password_file", "pasword_file");
        let e = Config::parse("arkiv.toml", &text).unwrap_err().to_string();
        assert!(e.starts_with("arkiv.toml: ") && e.contains("pasword_file") && e.contains("line 4"), "{e}");
    }

    #[test]
    fn options_become_query_parameters() {
        let text = r#"
[repositories.r]
url = "/r"
[sources.db]
url = "postgres://app@db:5432/shop"
options = { only = "schema", "exclude-table" = ["a b", "c"] }
"#;
        let c = Config::parse("c.toml", text).unwrap();
        assert_eq!(
            c.source_url("db").unwrap().unwrap(),
            "postgres://app@db:5432/shop?exclude-table=a%20b,c&only=schema"
        );
    }

    #[test]
    fn a_source_needs_exactly_one_of_url_and_paths() {
        let both = "[repositories.r]\nurl='/r'\n[sources.x]\nurl='command:true'\npaths=['/a']\n";
        assert!(Config::parse("c", both).unwrap_err().to_string().contains("not both"));
        let neither = "[repositories.r]\nurl='/r'\n[sources.x]\ntags=['a']\n";
        assert!(Config::parse("c", neither).unwrap_err().to_string().contains("needs url"));
        let bad = "[repositories.r]\nurl='/r'\n[sources.x]\nurl='/srv/data'\n";
        assert!(Config::parse("c", bad).unwrap_err().to_string().contains("not a source URL"));
    }

    #[test]
    fn daemon_errors_name_the_key_and_its_line() {
        let text =
            "[repositories.r]\nurl = '/r'\n\n[sources.x]\npaths = ['/x']\n[sources.x.schedule]\ncron = 'every day'\n";
        let e = Config::parse("c.toml", text).unwrap_err().to_string();
        assert!(e.starts_with("c.toml: line 6: sources.x.schedule: cron expression 'every day' is invalid"), "{e}");
        let text = "[repositories.r]\nurl = '/r'\nreplicas = ['zz']\n";
        let e = Config::parse("c.toml", text).unwrap_err().to_string();
        assert!(e.starts_with("c.toml: line 3: repositories.r.replicas: no repository named 'zz'"), "{e}");
        let text = "[daemon]\nlisten = 'localhost'\n";
        let e = Config::parse("c.toml", text).unwrap_err().to_string();
        assert!(e.starts_with("c.toml: line 2: daemon.listen: 'localhost' is not ADDRESS:PORT"), "{e}");
        let text = "[daemon]\njob_nice = 25\n";
        let e = Config::parse("c.toml", text).unwrap_err().to_string();
        assert!(e.starts_with("c.toml: line 2: daemon.job_nice: 25 is not between 0 and 19"), "{e}");
        let text = "[repositories.r]\nurl = '/r'\n[repositories.r.retention]\nprune = true\n";
        let e = Config::parse("c.toml", text).unwrap_err().to_string();
        assert!(e.contains("line 3: repositories.r.retention: keeps nothing"), "{e}");
    }

    #[test]
    fn inline_secrets_are_refused_with_the_file_based_key_named() {
        let text = "[repositories.r]\nurl = '/r'\npassword = 'hunter2'\n";
        let e = Config::parse("c.toml", text).unwrap_err().to_string();
        assert!(e.contains("line 3: password: secrets are never written") && e.contains("password_file"), "{e}");
        assert!(!e.contains("hunter2"));
    }

    #[test]
    fn secrets_in_inline_tables_and_urls_and_bad_check_or_prune_values_are_refused() {
        let base = "[repositories.r]\nurl = '/r'\n";
        let cases = [
            (
                "[sources.x]\nurl = 'postgres://app@db/shop'\noptions = { only = 'schema', password = 'x' }\n",
                "line 5: password: secrets",
            ),
            ("[sources.x]\nurl = 'postgres://app:pw@db/shop'\n", "line 4: sources.x.url: a password in the URL"),
            (
                "[repositories.r.check]\nread_data_subset = '10'\n",
                "repositories.r.check.read_data_subset: '10' is not a subset",
            ),
            (
                "[repositories.r.retention]\nkeep_last = 1\nmax_unused = 'lots'\n",
                "repositories.r.retention.max_unused: 'lots'",
            ),
        ];
        for (extra, expected) in cases {
            let e = Config::parse("c.toml", &format!("{base}{extra}")).unwrap_err().to_string();
            assert!(e.contains(expected), "{extra}: {e}");
            assert!(!e.contains("pw@"), "{e}");
        }
        assert!(is_subset("1/7") && is_subset("0.5"));
        assert!(!is_subset("150%"));
    }

    #[test]
    fn sources_go_to_the_one_repository_that_is_not_a_replica() {
        let text = "[repositories.main]\nurl = '/m'\nreplicas = ['far']\n[repositories.far]\nurl = '/f'\n[sources.x]\npaths = ['/x']\n";
        let c = Config::parse("c.toml", text).unwrap();
        assert_eq!(c.repository_for("x").unwrap().0, "main");
    }

    #[test]
    fn a_source_must_name_an_existing_repository_when_there_are_several() {
        let text = "[repositories.a]\nurl='/a'\n[repositories.b]\nurl='/b'\n[sources.x]\npaths=['/x']\n";
        let e = Config::parse("c", text).unwrap_err().to_string();
        assert!(e.contains("2 repositories are not replicas of another (a, b): set repository"), "{e}");
        let text = "[repositories.a]\nurl='/a'\n[sources.x]\npaths=['/x']\nrepository='zz'\n";
        let e = Config::parse("c", text).unwrap_err().to_string();
        assert!(e.contains("no repository named 'zz'") && e.contains("sources.x"), "{e}");
    }
}
