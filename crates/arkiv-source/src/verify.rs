//! Verified test restores: a snapshot restored into a throw-away place (a
//! scratch database, a temporary PostgreSQL cluster, a redis-server on a
//! free port, a temporary file), checked by assertions, then removed —
//! removed also when an assertion fails or the restore itself does.
//!
//! A backup nobody has restored is a hope; this is what turns it into
//! evidence, so the report says how long the restore took (the RTO a real
//! incident would see) and which assertion failed with what it found.

use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::stream::Streams;

/// One thing a restored copy must satisfy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Assertion {
    /// A query whose first column of the first row must be true (`t`,
    /// `true`, `1`).
    Sql { query: String },
    /// A table (optionally `schema.table`) that must exist.
    Table { name: String },
    /// A table that must hold at least this many rows (for Redis: the key
    /// count of a database, named `db0`, `db1`, …).
    MinRows { table: String, rows: u64 },
    /// A command that must exit 0; it runs with the sandbox's connection
    /// details in its environment (see [`Sandbox::env`]).
    Command { command: String },
}

impl Assertion {
    /// Parses `--assert-rows TABLE>=N` (also `TABLE=N`, read as at least N).
    pub fn min_rows(spec: &str) -> Result<Assertion> {
        let (t, n) = spec
            .split_once(">=")
            .or_else(|| spec.split_once('='))
            .ok_or_else(|| Error::Invalid(format!("--assert-rows '{spec}': expected TABLE>=COUNT")))?;
        let rows =
            n.trim().parse().map_err(|_| Error::Invalid(format!("--assert-rows '{spec}': '{n}' is not a count")))?;
        let table = t.trim();
        if table.is_empty() {
            return Err(Error::Invalid(format!("--assert-rows '{spec}': no table named")));
        }
        Ok(Assertion::MinRows { table: table.to_string(), rows })
    }

    pub fn describe(&self) -> String {
        match self {
            Assertion::Sql { query } => format!("sql: {query}"),
            Assertion::Table { name } => format!("table {name} exists"),
            Assertion::MinRows { table, rows } => format!("{table} has at least {rows} rows"),
            Assertion::Command { command } => format!("command succeeds: {command}"),
        }
    }
}

/// How one assertion went.
#[derive(Debug, Clone, Serialize)]
pub struct Checked {
    pub assertion: Assertion,
    pub passed: bool,
    /// What was found (a count, a query's answer, a command's error).
    pub detail: String,
}

/// What a verified restore found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Where the sandbox was (gone now), without passwords.
    pub sandbox: String,
    pub restore_secs: f64,
    pub checks_secs: f64,
    pub bytes: u64,
    pub checks: Vec<Checked>,
    /// Set when the restore itself failed (then no check ran).
    pub restore_error: Option<String>,
    /// Set when the sandbox could not be removed: the operator must.
    pub cleanup_error: Option<String>,
}

impl VerifyReport {
    pub fn passed(&self) -> bool {
        self.restore_error.is_none() && self.checks.iter().all(|c| c.passed)
    }
}

/// A throw-away restore destination for one kind of source.
///
/// Three steps rather than one call so that [`run`] can guarantee the
/// cleanup: whatever `restore` or `check` do, `remove` is called once the
/// sandbox exists.
pub trait Sandbox {
    /// Where it is, without passwords.
    fn location(&self) -> String;

    /// Restores the snapshot into the sandbox; returns the bytes restored.
    fn restore(&mut self, streams: &Streams) -> Result<u64>;

    /// Evaluates one assertion. `Ok(detail)` passed, `Err` failed; the
    /// error's text is what the report shows. Command assertions are run
    /// by [`run`] with [`Sandbox::env`], not here.
    fn check(&mut self, assertion: &Assertion) -> std::result::Result<String, String>;

    /// Environment a command assertion gets to reach the restored copy
    /// (`PGHOST`/`PGPORT`/`PGDATABASE`, `ARKIV_SANDBOX_FILE`, …), plus
    /// `ARKIV_SANDBOX` with [`Sandbox::location`].
    fn env(&self) -> Vec<(String, String)>;

    /// Removes everything the sandbox made.
    fn remove(&mut self) -> Result<()>;
}

/// Restores into `sandbox`, runs the assertions, removes the sandbox.
pub fn run(sandbox: &mut dyn Sandbox, streams: &Streams, assertions: &[Assertion]) -> VerifyReport {
    let t0 = Instant::now();
    let restored = sandbox.restore(streams);
    let restore_secs = t0.elapsed().as_secs_f64();
    let mut report = VerifyReport {
        sandbox: sandbox.location(),
        restore_secs,
        checks_secs: 0.0,
        bytes: *restored.as_ref().unwrap_or(&0),
        checks: Vec::new(),
        restore_error: restored.err().map(|e| e.to_string()),
        cleanup_error: None,
    };
    if report.restore_error.is_none() {
        let t1 = Instant::now();
        for a in assertions {
            let r = match a {
                Assertion::Command { command } => run_command(command, &sandbox.env(), &sandbox.location()),
                other => sandbox.check(other),
            };
            let (passed, detail) = match r {
                Ok(d) => (true, d),
                Err(d) => (false, d),
            };
            report.checks.push(Checked { assertion: a.clone(), passed, detail });
        }
        report.checks_secs = t1.elapsed().as_secs_f64();
    }
    if let Err(e) = sandbox.remove() {
        report.cleanup_error = Some(e.to_string());
    }
    report
}

fn run_command(command: &str, env: &[(String, String)], location: &str) -> std::result::Result<String, String> {
    let mut tool = crate::process::Tool::shell(command).env("ARKIV_SANDBOX", location);
    for (k, v) in env {
        tool = tool.env(k, v);
    }
    tool.output().map(|out| out.trim().lines().last().unwrap_or("exit status 0").to_string()).map_err(|e| e.to_string())
}

/// The sandbox of snapshots without one of their own (files, buckets,
/// command output): the snapshot restored into a temporary directory,
/// checked by commands that get its path as `ARKIV_SANDBOX_DIR`.
pub struct DirSandbox {
    dir: Option<tempfile::TempDir>,
    path: std::path::PathBuf,
}

impl DirSandbox {
    pub fn new() -> Result<DirSandbox> {
        let dir = tempfile::Builder::new()
            .prefix("arkiv-verify-")
            .tempdir()
            .map_err(|e| Error::Io { path: std::env::temp_dir().display().to_string(), cause: e })?;
        let path = dir.path().to_path_buf();
        Ok(DirSandbox { dir: Some(dir), path })
    }
}

impl Sandbox for DirSandbox {
    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn restore(&mut self, streams: &Streams) -> Result<u64> {
        let opts = crate::files::RestoreOptions { target: self.path.clone(), ..Default::default() };
        let progress = crate::files::restore::RestoreProgress::default();
        let out = crate::files::restore(streams.indexed, &streams.snapshot.tree, &opts, &progress)?;
        if let Some(e) = out.storage_error {
            return Err(Error::Invalid(format!("cannot read the repository: {e}")));
        }
        if let Some(d) = out.damaged.first() {
            return Err(Error::Invalid(format!(
                "{} file(s) damaged, first {}: {}",
                out.damaged.len(),
                d.path,
                d.reason
            )));
        }
        Ok(out.bytes)
    }

    fn check(&mut self, a: &Assertion) -> std::result::Result<String, String> {
        Err(format!("'{}' needs a database; a directory sandbox can only run --assert-command", a.describe()))
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![("ARKIV_SANDBOX_DIR".into(), self.location())]
    }

    fn remove(&mut self) -> Result<()> {
        match self.dir.take() {
            Some(d) => d.close().map_err(|e| Error::Io { path: self.location(), cause: e }),
            None => Ok(()),
        }
    }
}

/// Whether a query's answer reads as true.
pub fn is_true(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "t" | "true" | "1" | "yes" | "on")
}

/// A name for a throw-away database or directory: recognisable, unique.
pub fn scratch_name() -> String {
    let n: u64 = rand_u64();
    format!("arkiv_verify_{:012x}", n & 0xffff_ffff_ffff)
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS per process; mixing in the time
    // and pid makes two sandboxes of one process differ too.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_assertions_parse_and_bad_ones_say_why() {
        assert_eq!(
            Assertion::min_rows("public.users>=100").unwrap(),
            Assertion::MinRows { table: "public.users".into(), rows: 100 }
        );
        assert_eq!(Assertion::min_rows("t = 5").unwrap(), Assertion::MinRows { table: "t".into(), rows: 5 });
        assert!(Assertion::min_rows("users").unwrap_err().to_string().contains("TABLE>=COUNT"));
        assert!(Assertion::min_rows("users>=many").unwrap_err().to_string().contains("not a count"));
    }

    #[test]
    fn scratch_names_differ() {
        assert_ne!(scratch_name(), scratch_name());
        assert!(scratch_name().starts_with("arkiv_verify_"));
    }

    struct Fake {
        restore_fails: bool,
        removed: bool,
    }

    impl Sandbox for Fake {
        fn location(&self) -> String {
            "fake".into()
        }
        fn restore(&mut self, _: &Streams) -> Result<u64> {
            if self.restore_fails {
                Err(Error::Invalid("restore broke".into()))
            } else {
                Ok(7)
            }
        }
        fn check(&mut self, a: &Assertion) -> std::result::Result<String, String> {
            match a {
                Assertion::Table { name } if name == "present" => Ok("exists".into()),
                _ => Err("missing".into()),
            }
        }
        fn env(&self) -> Vec<(String, String)> {
            vec![("FAKE_DB".into(), "x".into())]
        }
        fn remove(&mut self) -> Result<()> {
            self.removed = true;
            Ok(())
        }
    }

    fn streams_for_test(dir: &std::path::Path) -> (arkiv_repo::Indexed, arkiv_repo::Snapshot, arkiv_repo::Id) {
        use arkiv_repo::{Backend, Credential, InitOptions, KdfParams, Repository};
        let opts =
            InitOptions { kdf: KdfParams { memory_kib: 1024, iterations: 1, parallelism: 1 }, ..Default::default() };
        let repo = Repository::init(Backend::local(&dir.join("repo")).unwrap(), &Credential::password("pw"), opts)
            .expect("init");
        let indexed = repo.index().unwrap();
        let progress = crate::files::Progress::default();
        let src = crate::command::CommandSource::new("printf data").unwrap();
        let out = crate::stream::backup(&indexed, &src, &Default::default(), &progress).unwrap();
        let id = out.id.unwrap();
        // The index loaded before the backup does not know its blobs.
        let repo = Repository::open(Backend::local(&dir.join("repo")).unwrap(), &Credential::password("pw")).unwrap();
        (repo.index().unwrap(), out.snapshot, id)
    }

    #[test]
    fn a_failed_assertion_is_reported_and_the_sandbox_still_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (indexed, snap, id) = streams_for_test(dir.path());
        let streams = Streams::open(&indexed, id, snap).unwrap();
        let mut fake = Fake { restore_fails: false, removed: false };
        let asserts = vec![
            Assertion::Table { name: "present".into() },
            Assertion::Table { name: "absent".into() },
            Assertion::Command { command: "test \"$FAKE_DB\" = x && test \"$ARKIV_SANDBOX\" = fake".into() },
            Assertion::Command { command: "exit 5".into() },
        ];
        let r = run(&mut fake, &streams, &asserts);
        assert!(fake.removed);
        assert!(!r.passed());
        let passed: Vec<bool> = r.checks.iter().map(|c| c.passed).collect();
        assert_eq!(passed, [true, false, true, false]);
        assert!(r.checks[3].detail.contains("exit status 5"), "{}", r.checks[3].detail);
        assert_eq!(r.bytes, 7);
    }

    #[test]
    fn a_failed_restore_runs_no_check_and_still_removes_the_sandbox() {
        let dir = tempfile::tempdir().unwrap();
        let (indexed, snap, id) = streams_for_test(dir.path());
        let streams = Streams::open(&indexed, id, snap).unwrap();
        let mut fake = Fake { restore_fails: true, removed: false };
        let r = run(&mut fake, &streams, &[Assertion::Table { name: "present".into() }]);
        assert!(fake.removed);
        assert!(!r.passed());
        assert!(r.checks.is_empty());
        assert_eq!(r.restore_error.as_deref(), Some("restore broke"));
    }
}
