//! PostgreSQL physical backups, WAL archiving and point-in-time recovery
//! end to end, through the `arkiv` binary, against clusters of the tests'
//! own: each test runs `initdb` for a cluster whose `archive_command` is
//! `arkiv pg wal-push` into a scratch repository, takes base backups with
//! `arkiv pg backup`, and restores with `arkiv pg restore` into new data
//! directories that it then starts, so PostgreSQL itself replays the WAL
//! through `arkiv pg wal-fetch` and the rows it ends with are checked.
//!
//! PostgreSQL will not run as root, and the server runs the archive and
//! restore commands as its own user: clusters are the postgres user's, and
//! the repository and its password file are opened up to that user.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use common::{assert_code, bare_command, describe, parse_json, stderr, Scratch};
use serde_json::Value;

/// The newest PostgreSQL server programs installed, in Debian's layout
/// (`/usr/lib/postgresql/<major>/bin`), and their major version.
fn pg_installed() -> &'static (String, u32) {
    static FOUND: std::sync::OnceLock<(String, u32)> = std::sync::OnceLock::new();
    FOUND.get_or_init(|| {
        fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server programs in /usr/lib/postgresql (.ci/run installs them)")
            .flatten()
            .filter_map(|e| {
                let major: u32 = e.file_name().to_str()?.parse().ok()?;
                let bin = e.path().join("bin");
                bin.join("initdb").exists().then(|| (bin.display().to_string(), major))
            })
            .max_by_key(|(_, m)| *m)
            .expect("no /usr/lib/postgresql/<major>/bin/initdb")
    })
}

fn pg_bin() -> &'static str {
    &pg_installed().0
}

// ---- processes ----

/// A command for `program` run as the postgres user, with no ARKIV_* or
/// PG* variables leaking in from the caller's environment.
fn as_postgres(program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(program);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("ARKIV_") || k.starts_with("PG") || k == "RUST_LOG" {
            c.env_remove(&*k);
        }
    }
    c.stdin(Stdio::null());
    c
}

fn output(mut c: Command) -> Output {
    c.output().unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"))
}

fn text(o: &Output) -> String {
    format!("--- stdout ---\n{}\n--- stderr ---\n{}", common::stdout(o), stderr(o))
}

fn chown_postgres(path: &Path) {
    let o = output({
        let mut c = Command::new("chown");
        c.args(["-R", "postgres:postgres"]).arg(path);
        c
    });
    assert!(o.status.success(), "chown -R postgres {}: {}", path.display(), text(&o));
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

/// Polls `f` every 100 ms until it returns something or `limit` passes.
fn poll<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---- the repository ----

/// A scratch repository the postgres user can use too: the scratch
/// directory is traversable, the repository writable by everyone and the
/// password in a file the server's archive and restore commands read.
struct Repo {
    s: Scratch,
    password_file: PathBuf,
}

impl Repo {
    fn new() -> Repo {
        let s = Scratch::new();
        set_mode(s.path(), 0o755);
        let password_file = s.join("password");
        fs::write(&password_file, format!("{}\n", s.password)).unwrap();
        set_mode(&password_file, 0o644);
        let r = Repo { s, password_file };
        r.share();
        r
    }

    fn path(&self) -> &Path {
        &self.s.repo
    }

    /// Opens the repository `init` made as root to the postgres user, whose
    /// archive_command writes into it. (Later commands run as root are not
    /// followed by this: what they add must not stop the archiving.)
    fn share(&self) {
        let o = output({
            let mut c = Command::new("chmod");
            c.args(["-R", "a+rwX"]).arg(self.path());
            c
        });
        assert!(o.status.success(), "chmod -R a+rwX {}: {}", self.path().display(), text(&o));
    }

    /// The command line PostgreSQL runs to archive a segment.
    fn archive_command(&self) -> String {
        format!(
            "{} pg wal-push --repo {} --password-file {} %p",
            common::arkiv_bin(),
            path_str(self.path()),
            path_str(&self.password_file)
        )
    }

    /// `arkiv --repo R --password-file F ARGS…` (as root), whatever happens.
    /// Each command and what it said on stderr go to the test's output,
    /// which a failing test shows.
    fn run_with(&self, password_file: &Path, args: &[&str]) -> Output {
        let mut c = bare_command();
        c.arg("--repo").arg(self.path()).arg("--password-file").arg(password_file).args(args);
        let started = Instant::now();
        let o = common::run(c);
        eprintln!(
            "$ arkiv {} → {:?} in {:.1} s{}",
            describe(args),
            o.status.code(),
            started.elapsed().as_secs_f64(),
            if o.stderr.is_empty() { String::new() } else { format!("\n{}", stderr(&o).trim_end()) }
        );
        o
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_with(&self.password_file, args)
    }

    fn ok(&self, args: &[&str]) -> Output {
        let o = self.run(args);
        assert_code(&o, 0, &describe(args));
        o
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend(args);
        parse_json(&self.ok(&a))
    }

    /// `pg backup --json` of a running cluster; returns the report.
    fn backup(&self, c: &Cluster, extra: &[&str]) -> Value {
        let port = c.port.to_string();
        let mut a = vec!["pg", "backup", "--pgdata", path_str(&c.data), "--host", path_str(c.sock()), "--port", &port];
        a.extend(extra);
        let v = self.json(&a);
        for k in ["id", "start_lsn", "stop_lsn"] {
            assert!(v[k].is_string(), "pg backup --json has no {k}: {v}");
        }
        assert!(v["timeline"].is_u64() && v["incremental"].is_boolean(), "pg backup --json: {v}");
        v
    }

    fn info(&self) -> Value {
        self.json(&["pg", "info"])
    }

    /// `pg restore --pgdata PGDATA ARGS…`, whatever happens.
    fn restore(&self, pgdata: &Path, args: &[&str]) -> Output {
        let mut a = vec!["pg", "restore", "--pgdata", path_str(pgdata)];
        a.extend(args);
        self.run(&a)
    }

    /// Restores into a new cluster and starts it; returns the cluster and
    /// what the restore printed.
    fn restore_and_start(&self, args: &[&str], archiving: bool) -> (Cluster, Output) {
        let mut c = Cluster::home();
        let o = self.restore(&c.data, args);
        assert_code(&o, 0, &format!("pg restore --pgdata {} {}", c.data.display(), args.join(" ")));
        c.adopt_data();
        c.start(archiving);
        (c, o)
    }

    /// Every archived file: name → where it lies in the repository.
    fn archived(&self) -> Vec<(String, PathBuf)> {
        fn go(dir: &Path, out: &mut Vec<(String, PathBuf)>) {
            let Ok(entries) = fs::read_dir(dir) else { return };
            for e in entries {
                let p = e.unwrap().path();
                if p.is_dir() {
                    go(&p, out);
                } else {
                    out.push((p.file_name().unwrap().to_string_lossy().into_owned(), p));
                }
            }
        }
        let mut out = Vec::new();
        go(&self.path().join("archive"), &mut out);
        out.sort();
        out
    }

    /// The names of archived WAL segments (not history, backup or partial
    /// files) of `timeline`.
    fn segments(&self, timeline: u64) -> Vec<String> {
        let prefix = format!("{timeline:08X}");
        self.archived()
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| n.len() == 24 && n.starts_with(&prefix) && n.chars().all(|c| c.is_ascii_hexdigit()))
            .collect()
    }
}

// ---- clusters ----

/// A PostgreSQL cluster of one test: a directory of the postgres user's
/// holding the data directory, the server log and the socket. Stopped
/// (immediately) and removed when dropped.
struct Cluster {
    home: tempfile::TempDir,
    data: PathBuf,
    port: u16,
    running: bool,
}

impl Cluster {
    /// A home for a cluster whose data directory does not exist yet.
    fn home() -> Cluster {
        let home = tempfile::Builder::new().prefix("arkiv-pitr-").tempdir().expect("temporary directory");
        chown_postgres(home.path());
        let data = home.path().join("data");
        Cluster { home, data, port: common::garage::free_port(), running: false }
    }

    /// A new cluster from `initdb`, not started.
    fn initdb() -> Cluster {
        Cluster::initdb_with(&[])
    }

    /// A new cluster from `initdb` with extra options, not started.
    fn initdb_with(extra: &[&str]) -> Cluster {
        let c = Cluster::home();
        let mut cmd = as_postgres(Path::new(pg_bin()).join("initdb"));
        cmd.current_dir(c.home.path())
            .args(["-A", "trust", "-U", "postgres", "--no-sync"])
            .args(extra)
            .arg("-D")
            .arg(&c.data);
        let o = output(cmd);
        assert!(o.status.success(), "initdb: {}", text(&o));
        c
    }

    /// A new cluster archiving its WAL into `repo`, started.
    fn archiving(repo: &Repo) -> Cluster {
        Cluster::archiving_with(repo, &repo.archive_command(), &[])
    }

    /// A new cluster (initdb with `initdb_extra`) whose archive_command is
    /// `command`, started.
    fn archiving_with(repo: &Repo, command: &str, initdb_extra: &[&str]) -> Cluster {
        let _ = repo;
        let mut c = Cluster::initdb_with(initdb_extra);
        c.append_conf(&format!(
            "wal_level = replica\n\
             archive_mode = on\n\
             archive_command = '{}'\n\
             archive_timeout = 0\n\
             track_commit_timestamp = on\n\
             max_wal_senders = 4\n\
             unix_socket_directories = '{}'\n\
             port = {}\n\
             listen_addresses = ''\n",
            command,
            path_str(c.sock()),
            c.port
        ));
        c.start(true);
        c
    }

    /// The socket directory.
    fn sock(&self) -> &Path {
        self.home.path()
    }

    fn append_conf(&self, text: &str) {
        use std::io::Write;
        let mut f = fs::OpenOptions::new().append(true).open(self.data.join("postgresql.conf")).unwrap();
        writeln!(f, "\n{text}").unwrap();
    }

    /// Makes a data directory written by root (a restore) the postgres
    /// user's, as PostgreSQL wants it.
    fn adopt_data(&self) {
        chown_postgres(&self.data);
        set_mode(&self.data, 0o700);
    }

    /// Starts the server on this cluster's port and socket; a restored
    /// cluster archives only when `archiving` (its configuration is the
    /// original's, archive_command included).
    fn start(&mut self, archiving: bool) {
        self.try_start(archiving).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Cluster::start`], or why the server did not start.
    fn try_start(&mut self, archiving: bool) -> Result<(), String> {
        let mut opts = format!("-p {} -k {}", self.port, path_str(self.sock()));
        if !archiving {
            opts.push_str(" -c archive_mode=off");
        }
        let mut cmd = as_postgres(Path::new(pg_bin()).join("pg_ctl"));
        cmd.current_dir(self.home.path())
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.log_path())
            .args(["-t", "120", "-w", "-o", &opts, "start"]);
        let o = output(cmd);
        // Running or not, stop it when dropped.
        self.running = true;
        if o.status.success() {
            Ok(())
        } else {
            Err(format!("pg_ctl start failed: {}\n--- server log ---\n{}", text(&o), self.log()))
        }
    }

    fn stop(&mut self) {
        if self.running {
            let mut cmd = as_postgres(Path::new(pg_bin()).join("pg_ctl"));
            cmd.current_dir(self.home.path()).arg("-D").arg(&self.data).args(["-m", "immediate", "-w", "stop"]);
            let _ = cmd.output();
            self.running = false;
        }
    }

    fn log_path(&self) -> PathBuf {
        self.home.path().join("log")
    }

    /// The server log (its end, when long).
    fn log(&self) -> String {
        let log = fs::read_to_string(self.log_path()).unwrap_or_default();
        let skip = log.len().saturating_sub(6000);
        let start = (skip..log.len()).find(|&i| log.is_char_boundary(i)).unwrap_or(log.len());
        log[start..].to_string()
    }

    fn try_psql(&self, sql: &str) -> Result<String, String> {
        let o = output({
            let mut c = Command::new("psql");
            c.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
                .arg(self.sock())
                .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", "postgres", "-c", sql])
                .stdin(Stdio::null());
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("PG") {
                    c.env_remove(k);
                }
            }
            c
        });
        if o.status.success() {
            Ok(common::stdout(&o).trim_end().to_string())
        } else {
            Err(stderr(&o))
        }
    }

    fn psql(&self, sql: &str) -> String {
        self.try_psql(sql).unwrap_or_else(|e| panic!("psql -c {sql}: {e}\n--- server log ---\n{}", self.log()))
    }

    /// Switches to a new WAL segment and waits until the one switched from
    /// (and so everything before it) is archived.
    fn switch_wal_and_wait(&self) {
        let seg = self.psql("select pg_walfile_name(pg_switch_wal())");
        self.wait_archived(&seg, Duration::from_secs(120));
    }

    /// Waits until segment `seg` is archived: no segment waits for the
    /// archiver any more and `seg` is done (or the archiver went past it).
    fn wait_archived(&self, seg: &str, limit: Duration) {
        let started = Instant::now();
        let mut last = String::new();
        let done = poll(limit, || {
            let r = self.psql(&format!(
                "select coalesce(last_archived_wal, ''),
                        (select count(*) from pg_ls_archive_statusdir() where name like '%.ready'),
                        (select count(*) from pg_ls_archive_statusdir() where name = '{seg}.done'),
                        failed_count, coalesce(last_failed_wal, '')
                 from pg_stat_archiver"
            ));
            let f: Vec<&str> = r.split('|').collect();
            let (archived, ready, is_done) = (f[0], f[1], f[2]);
            let past =
                archived.len() >= 24 && archived[..24].chars().all(|c| c.is_ascii_hexdigit()) && &archived[..24] >= seg;
            last = r.clone();
            (ready == "0" && (is_done == "1" || past)).then_some(())
        });
        assert!(
            done.is_some(),
            "segment {seg} not archived after {:?}: last_archived_wal|ready|done|failed_count|last_failed_wal = {last}\n\
             --- server log ---\n{}",
            started.elapsed(),
            self.log()
        );
    }

    /// Waits until recovery reached its target: paused there, or over
    /// (promoted). Returns "paused" or "promoted".
    fn wait_recovered(&self) -> &'static str {
        self.try_wait_recovered().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Cluster::wait_recovered`], or why recovery did not get there
    /// (the server stopped, or two minutes passed), with the server log.
    fn try_wait_recovered(&self) -> Result<&'static str, String> {
        let mut last = String::new();
        let mut stopped = false;
        let state = poll(Duration::from_secs(120), || {
            // The pause state is an error once recovery is over.
            match self.try_psql(
                "select case when pg_is_in_recovery() then pg_get_wal_replay_pause_state() else 'promoted' end",
            ) {
                Ok(r) => {
                    last = r.clone();
                    match r.as_str() {
                        "paused" => Some("paused"),
                        "promoted" => Some("promoted"),
                        _ => None,
                    }
                }
                Err(e) => {
                    last = e;
                    // The postmaster removes its pid file when it exits.
                    stopped = !self.data.join("postmaster.pid").exists();
                    stopped.then_some("stopped")
                }
            }
        });
        match state {
            Some(s) if s != "stopped" => Ok(s),
            _ => Err(format!(
                "recovery did not reach its target: {}; last answer: {}\n--- server log ---\n{}",
                if stopped { "the server stopped" } else { "still recovering after 120 s" },
                last.trim_end(),
                self.log()
            )),
        }
    }

    /// The ids in table `t`.
    fn ids(&self) -> BTreeSet<i64> {
        ids_of(&self.psql("select coalesce(string_agg(id::text, ',' order by id), '') from t"))
    }

    /// Each row of `t` with the time its transaction committed, in
    /// microseconds since the epoch, in commit order.
    fn commit_times(&self) -> Vec<(i64, i64)> {
        let r = self.psql(
            "select id, (extract(epoch from pg_xact_commit_timestamp(xmin)) * 1000000)::bigint from t order by 2, 1",
        );
        r.lines()
            .map(|l| {
                let (id, at) = l.split_once('|').unwrap_or_else(|| panic!("commit time row: {l}"));
                (id.parse().unwrap(), at.parse().unwrap_or_else(|_| panic!("no commit timestamp: {l}")))
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn ids_of(list: &str) -> BTreeSet<i64> {
    list.split(',').filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect()
}

fn range(from: i64, to: i64) -> BTreeSet<i64> {
    (from..=to).collect()
}

/// An archiving cluster with a table `t (id int primary key)` holding
/// `rows` rows, and a base backup of it; returns the backup's report.
fn cluster_with_backup(rows: i64) -> (Repo, Cluster, Value) {
    let repo = Repo::new();
    let pg = Cluster::archiving(&repo);
    pg.psql(&format!("create table t (id int primary key); insert into t select generate_series(1, {rows})"));
    let b = repo.backup(&pg, &[]);
    (repo, pg, b)
}

// ---- WAL names and times ----

/// The name of the WAL segment holding `lsn` ("0/3000028") on `timeline`
/// (16 MiB segments).
fn segment_of(timeline: u64, lsn: &str) -> String {
    let (hi, lo) = lsn.split_once('/').unwrap_or_else(|| panic!("not an LSN: {lsn}"));
    let pos = (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap();
    let seg = pos / (16 << 20);
    format!("{timeline:08X}{:08X}{:08X}", seg / 256, seg % 256)
}

fn backup_segments(b: &Value) -> (String, String) {
    let tl = b["timeline"].as_u64().unwrap();
    (segment_of(tl, b["start_lsn"].as_str().unwrap()), segment_of(tl, b["stop_lsn"].as_str().unwrap()))
}

fn at_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap()
}

/// RFC 3339 with microseconds: `2026-11-22T10:00:00.123456Z`.
fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// PostgreSQL's text form: `2026-11-22 10:00:00.123456+00`.
fn pg_text(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string()
}

/// A time as `pg info` prints it: RFC 3339 or PostgreSQL's text form.
fn parse_time(v: &Value) -> DateTime<Utc> {
    let s = v.as_str().unwrap_or_else(|| panic!("not a time: {v}"));
    DateTime::parse_from_rfc3339(s)
        .or_else(|_| DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%#z"))
        .unwrap_or_else(|e| panic!("cannot read the time {s}: {e}"))
        .with_timezone(&Utc)
}

// ---- point-in-time recovery ----

#[test]
fn pitr_to_twenty_random_times_is_exact() {
    let repo = Repo::new();
    let pg = Cluster::archiving(&repo);
    pg.psql("create table t (id serial primary key, stamp timestamptz default clock_timestamp())");
    repo.backup(&pg, &[]);
    // Half the rows, a second base backup, the other half: a target before
    // the second backup must be restored from the first.
    let rows = "do $$ begin
                  for i in 1..30 loop
                    insert into t default values; commit;
                    perform pg_sleep(0.03 + (i % 4) * 0.01);
                  end loop;
                end $$";
    pg.psql(rows);
    repo.backup(&pg, &[]);
    pg.psql(rows);
    pg.switch_wal_and_wait();
    let commits = pg.commit_times();
    assert_eq!(commits.len(), 60);
    let (first, last) = (commits[0].1, commits[commits.len() - 1].1);

    // Twenty times strictly inside, none within 2 ms of a commit.
    let mut rng = common::Rng::new(0x5049_5452);
    let mut targets = Vec::new();
    while targets.len() < 20 {
        let t = first + 1 + (rng.next_u64() % (last - first - 1) as u64) as i64;
        if commits.iter().all(|&(_, c)| (c - t).abs() > 2_000) {
            targets.push(t);
        }
    }

    let all = Instant::now();
    for (i, &t) in targets.iter().enumerate() {
        let when = if i % 2 == 0 { rfc3339(at_micros(t)) } else { pg_text(at_micros(t)) };
        let one = Instant::now();
        let (c, o) = repo.restore_and_start(&["--time", &when, "--action", "pause"], false);
        let state = c.wait_recovered();
        let expected: BTreeSet<i64> = commits.iter().filter(|&&(_, at)| at <= t).map(|&(id, _)| id).collect();
        let got = c.ids();
        assert_eq!(
            got,
            expected,
            "restore to {when}: rows differ (expected up to id {:?}, committed at {:?}; next commits at {:?})\n{}",
            expected.iter().max(),
            commits.iter().filter(|&&(_, at)| at <= t).map(|&(_, at)| rfc3339(at_micros(at))).last(),
            commits.iter().filter(|&&(_, at)| at > t).map(|&(_, at)| rfc3339(at_micros(at))).next(),
            text(&o)
        );
        assert_eq!(state, "paused", "--action pause: recovery should pause at {when}\n{}", text(&o));
        drop(c);
        println!("target {:2} {when}: {} rows, {:.1} s", i + 1, got.len(), one.elapsed().as_secs_f64());
    }
    println!("20 restores in {:.1} s", all.elapsed().as_secs_f64());
}

#[test]
fn pitr_to_lsn_xid_and_restore_point() {
    let (repo, pg, b) = cluster_with_backup(10);
    pg.psql("insert into t select generate_series(11, 20)");
    let lsn = pg.psql("select pg_current_wal_lsn()");
    let xid = pg.psql("insert into t select generate_series(21, 30); select pg_current_xact_id()");
    assert!(xid.parse::<u64>().is_ok(), "xid: {xid}");
    pg.psql("insert into t select generate_series(31, 35)");
    pg.psql("select pg_create_restore_point('before_phase3')");
    pg.psql("insert into t select generate_series(36, 50)");
    pg.switch_wal_and_wait();
    let id = b["id"].as_str().unwrap();

    restore_cases(
        &repo,
        &[
            (&["--lsn", &lsn], range(1, 20)),
            (&["--xid", &xid], range(1, 30)),
            (&[id, "--xid", &xid], range(1, 30)),
            (&["--name", "before_phase3"], range(1, 35)),
            (&["--immediate"], range(1, 10)),
            (&[], range(1, 50)),
        ],
    );
}

/// Restores with each set of arguments, starts the result and compares
/// the ids in `t` with the expected ones; every case is tried and the
/// failures are reported together.
fn restore_cases(repo: &Repo, cases: &[(&[&str], BTreeSet<i64>)]) {
    let mut failures = Vec::new();
    for (args, expected) in cases {
        let mut c = Cluster::home();
        let o = repo.restore(&c.data, args);
        if o.status.code() != Some(0) {
            failures.push(format!("pg restore {} exited with {:?}\n{}", args.join(" "), o.status, text(&o)));
            continue;
        }
        c.adopt_data();
        if let Err(e) = c.try_start(false).and_then(|_| c.try_wait_recovered().map(|_| ())) {
            failures.push(format!("pg restore {}: {e}\n{}", args.join(" "), text(&o)));
            continue;
        }
        let got = c.ids();
        if got != *expected {
            failures.push(format!(
                "pg restore {}: {} rows (ids {:?}..{:?}), expected {} (ids {:?}..{:?})\n{}",
                args.join(" "),
                got.len(),
                got.first(),
                got.last(),
                expected.len(),
                expected.first(),
                expected.last(),
                text(&o)
            ));
        }
    }
    assert!(failures.is_empty(), "{} of {} restores failed:\n\n{}", failures.len(), cases.len(), failures.join("\n\n"));
}

#[test]
fn without_a_snapshot_restore_chooses_a_base_backup_from_before_the_target() {
    let (repo, pg, _) = cluster_with_backup(10);
    pg.psql("insert into t select generate_series(11, 20)");
    let lsn = pg.psql("select pg_current_wal_lsn()");
    let xid = pg.psql("insert into t select generate_series(21, 30); select pg_current_xact_id()");
    pg.psql("select pg_create_restore_point('after_30')");
    std::thread::sleep(Duration::from_millis(50));
    let time = pg.psql("select clock_timestamp()");
    std::thread::sleep(Duration::from_millis(50));
    pg.psql("insert into t select generate_series(31, 40)");
    // The second backup is after every target but the last two.
    repo.backup(&pg, &[]);
    pg.psql("insert into t select generate_series(41, 50)");
    pg.switch_wal_and_wait();

    restore_cases(
        &repo,
        &[
            (&["--lsn", &lsn], range(1, 20)),
            (&["--xid", &xid], range(1, 30)),
            (&["--time", &time], range(1, 30)),
            (&["--name", "after_30"], range(1, 30)),
            (&["--immediate"], range(1, 40)),
            (&[], range(1, 50)),
        ],
    );
}

#[test]
fn a_promoted_restore_archives_a_new_timeline_that_can_be_recovered_again() {
    let repo = Repo::new();
    let mut a = Cluster::archiving(&repo);
    a.psql("create table t (id int primary key)");
    repo.backup(&a, &[]);
    a.psql(
        "do $$ begin
           for i in 1..20 loop insert into t values (i); commit; perform pg_sleep(0.05); end loop;
         end $$",
    );
    a.switch_wal_and_wait();
    let commits = a.commit_times();
    let t1 = (commits[9].1 + commits[10].1) / 2;
    let first_ten: BTreeSet<i64> = commits[..10].iter().map(|c| c.0).collect();
    a.stop();

    // Timeline 2: the restore, promoted, archiving into the same repository.
    let (b, o) = repo.restore_and_start(&["--time", &rfc3339(at_micros(t1)), "--action", "promote"], true);
    assert_eq!(b.wait_recovered(), "promoted", "--action promote\n{}", text(&o));
    assert_eq!(b.ids(), first_ten, "{}", text(&o));
    assert_eq!(b.psql("select substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"), "00000002");
    b.psql("insert into t select generate_series(1001, 1005)");
    b.switch_wal_and_wait();
    drop(b);

    let info = repo.info();
    let timelines: Vec<u64> =
        info["timelines"].as_array().unwrap().iter().map(|t| t["timeline"].as_u64().unwrap()).collect();
    assert!(timelines.contains(&1) && timelines.contains(&2), "{info}");
    let tl2 = info["timelines"].as_array().unwrap().iter().find(|t| t["timeline"] == 2).unwrap();
    assert!(tl2["first"].as_str().unwrap().starts_with("00000002"), "{info}");
    assert!(tl2["segments"].as_u64().unwrap() >= 1, "{info}");
    assert!(info["history"].as_array().unwrap().contains(&Value::from("00000002.history")), "{info}");
    for t in info["timelines"].as_array().unwrap() {
        assert_eq!(t["missing"], serde_json::json!([]), "no segment is missing: {info}");
    }

    // To the end of the latest timeline (the default): timeline 1 up to
    // T1, then timeline 2.
    let mut expected = first_ten.clone();
    expected.extend(1001..=1005);
    for args in [&[][..], &["--timeline", "latest"][..]] {
        let (c, o) = repo.restore_and_start(args, false);
        c.wait_recovered();
        assert_eq!(c.ids(), expected, "pg restore {}\n{}", args.join(" "), text(&o));
    }
    // Staying on timeline 1 (the backup's) gives all of its rows.
    for tl in ["1", "current"] {
        let (c, o) = repo.restore_and_start(&["--timeline", tl], false);
        c.wait_recovered();
        assert_eq!(c.ids(), range(1, 20), "pg restore --timeline {tl}\n{}", text(&o));
    }
}

#[test]
fn a_segment_missing_on_the_latest_timeline_is_not_covered_by_an_older_timeline() {
    // Timeline 1 goes on for four segments after T1; timeline 2 branches
    // at T1 and has four segments of its own, with the same numbers.
    let repo = Repo::new();
    let mut a = Cluster::archiving(&repo);
    a.psql("create table t (id int primary key)");
    repo.backup(&a, &[]);
    a.psql("insert into t select generate_series(1, 10)");
    std::thread::sleep(Duration::from_millis(50));
    let t1 = a.psql("select clock_timestamp()");
    std::thread::sleep(Duration::from_millis(50));
    for i in 0..4 {
        a.psql(&format!("insert into t select generate_series({}, {})", 11 + 10 * i, 20 + 10 * i));
        a.switch_wal_and_wait();
    }
    a.stop();
    let (b, o) = repo.restore_and_start(&["--time", &t1, "--action", "promote"], true);
    assert_eq!(b.wait_recovered(), "promoted", "{}", text(&o));
    for i in 0..3 {
        b.psql(&format!("insert into t select generate_series({}, {})", 1001 + 10 * i, 1010 + 10 * i));
        b.switch_wal_and_wait();
    }
    drop(b);

    // A segment of timeline 2 (not its first or last) that timeline 1
    // has under the same number goes missing.
    let (tl1, tl2) = (repo.segments(1), repo.segments(2));
    let victim = tl2[1..tl2.len() - 1]
        .iter()
        .find(|s| tl1.contains(&format!("00000001{}", &s[8..])))
        .unwrap_or_else(|| panic!("no timeline 2 segment shares a number with timeline 1: {tl1:?} {tl2:?}"))
        .clone();
    let (_, path) = repo.archived().into_iter().find(|(n, _)| *n == victim).unwrap();
    fs::remove_file(&path).unwrap();

    let info = repo.info();
    let tl = info["timelines"].as_array().unwrap().iter().find(|t| t["timeline"] == 2).expect("timeline 2");
    assert!(tl["missing"].as_array().unwrap().contains(&Value::from(victim.as_str())), "pg info: {info}");

    // PostgreSQL following timeline 2 never reads timeline 1's segment of
    // that number: recovery would end at the gap and promote, without
    // the rows after it. The restore must refuse instead.
    let mut home = Cluster::home();
    let o = repo.restore(&home.data, &[]);
    if o.status.success() {
        // Show what the accepted restore leads to.
        home.adopt_data();
        let end = home
            .try_start(false)
            .and_then(|_| home.try_wait_recovered())
            .map(|_| format!("{:?}", home.ids()))
            .unwrap_or_else(|e| e);
        panic!(
            "pg restore with timeline 2's {victim} missing (timeline 1 has that number) exited 0, expected 1 \
             naming it; started, the restored server ends with ids {end} instead of 1..=10 and 1001..=1030\n{}",
            text(&o)
        );
    }
    assert_code(&o, 1, &format!("pg restore (timeline 2's {victim} missing; timeline 1 has that number)"));
    assert!(stderr(&o).contains(&victim), "the error should name {victim}: {}", stderr(&o));
}

// ---- incremental base backups ----

#[test]
fn incremental_base_backup_rereads_only_changed_files() {
    let repo = Repo::new();
    let pg = Cluster::archiving(&repo);
    pg.psql(
        "create table big as select g as id, md5(g::text) as v from generate_series(1, 200000) g;
         create table t (id int primary key, v text);
         insert into t select g, 'old' from generate_series(1, 100) g;
         checkpoint",
    );
    // A file written less than a second before a backup started is read
    // again by the next one (its mtime cannot tell a later write apart):
    // let what the setup wrote settle first.
    std::thread::sleep(Duration::from_millis(2_000));
    let first = repo.backup(&pg, &[]);
    let n = |v: &Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"));
    assert_eq!(first["incremental"], false, "{first}");
    assert!(n(&first, "files_read") > 500, "a whole cluster is read: {first}");

    pg.psql("update t set v = 'new' where id <= 50");
    let second = repo.backup(&pg, &[]);
    assert_eq!(second["incremental"], true, "{second}");
    assert!(n(&second, "files_unchanged") > 0, "{second}");
    assert!(
        n(&second, "files_read") * 10 < n(&first, "files_read"),
        "the second backup read {} files, the first {}",
        n(&second, "files_read"),
        n(&first, "files_read")
    );

    let full = repo.backup(&pg, &["--full"]);
    assert_eq!(full["incremental"], false, "{full}");
    assert_eq!(n(&full, "files_unchanged"), 0, "{full}");
    assert!(n(&full, "files_read") * 10 >= n(&first, "files_read") * 9, "--full: {full}, first: {first}");

    // Changes after the second backup are not in it.
    pg.psql("update t set v = 'later'");
    pg.switch_wal_and_wait();
    let (c, o) = repo.restore_and_start(&[second["id"].as_str().unwrap(), "--immediate"], false);
    c.wait_recovered();
    assert_eq!(c.psql("select v, count(*) from t group by v order by v"), "new|50\nold|50", "{}", text(&o));
    assert_eq!(c.psql("select count(*), sum(id) from big"), "200000|20000100000", "{}", text(&o));
}

// ---- bad input ----

#[test]
fn wal_push_and_fetch_keep_one_content_per_name_and_fail_as_postgres_needs() {
    let repo = Repo::new();
    let c = Cluster::initdb();
    let name = "000000010000000000000001";
    let seg = c.data.join("pg_wal").join(name);
    let original = fs::read(&seg).unwrap();
    let seg = path_str(&seg);

    repo.ok(&["pg", "wal-push", seg]);
    repo.ok(&["pg", "wal-push", seg]);
    let fetched = repo.s.join("fetched");
    repo.ok(&["pg", "wal-fetch", name, path_str(&fetched)]);
    assert!(fs::read(&fetched).unwrap() == original, "wal-fetch returned other bytes than were pushed");

    // Another file under the same name is refused and changes nothing.
    let mut changed = original.clone();
    changed[3 * 8192 + 100] ^= 0x55;
    let other = repo.s.join("other").join(name);
    common::write_file(&other, &changed);
    let o = repo.run(&["pg", "wal-push", path_str(&other)]);
    assert_code(&o, 1, "pg wal-push of different content under a stored name");
    let e = stderr(&o);
    assert_eq!(e.trim_end().lines().count(), 1, "expected a one-line error, got:\n{e}");
    assert!(e.contains("different"), "{e}");
    fs::remove_file(&fetched).unwrap();
    repo.ok(&["pg", "wal-fetch", name, path_str(&fetched)]);
    assert!(fs::read(&fetched).unwrap() == original, "the first content was replaced");

    // Any other failure of wal-push is exit 1 too (PostgreSQL retries).
    let wrong = repo.s.join("wrong-password");
    fs::write(&wrong, "not the password\n").unwrap();
    let missing = repo.s.join("000000010000000000000002");
    for (what, o) in [
        ("pg wal-push with a wrong password", repo.run_with(&wrong, &["pg", "wal-push", seg])),
        ("pg wal-push of a missing file", repo.run(&["pg", "wal-push", path_str(&missing)])),
    ] {
        assert_code(&o, 1, what);
        let e = stderr(&o);
        assert_eq!(e.trim_end().lines().count(), 1, "{what}: expected a one-line error, got:\n{e}");
    }

    // Absent names end recovery: exit 1 (PostgreSQL asks for history files
    // that never existed at every start).
    for absent in ["000000010000000000000099", "00000002.history"] {
        let dest = repo.s.join(format!("absent-{absent}"));
        let o = repo.run(&["pg", "wal-fetch", absent, path_str(&dest)]);
        assert_code(&o, 1, &format!("pg wal-fetch {absent}"));
        let e = stderr(&o);
        assert!(e.contains(absent) || e.contains("not"), "stderr should say {absent} is not archived: {e}");
        assert!(!dest.exists(), "wal-fetch of an absent name wrote {}", dest.display());
    }

    // Anything else must abort recovery: an exit code above 125.
    let dest = repo.s.join("with-wrong-password");
    let o = repo.run_with(&wrong, &["pg", "wal-fetch", name, path_str(&dest)]);
    assert!(o.status.code().is_some_and(|c| c > 125), "wal-fetch with a wrong password: {:?}\n{}", o.status, text(&o));
    assert!(!dest.exists());

    let mut cmd = bare_command();
    cmd.arg("--repo").arg(repo.s.join("no-such-repo")).arg("--password-file").arg(&repo.password_file).args([
        "pg",
        "wal-fetch",
        name,
        path_str(&dest),
    ]);
    let o = common::run(cmd);
    assert!(
        o.status.code().is_some_and(|c| c > 125),
        "wal-fetch from a missing repository: {:?}\n{}",
        o.status,
        text(&o)
    );

    // Damaged object: flip a byte in the stored file.
    let (_, stored) = repo.archived().into_iter().find(|(n, _)| n == name).expect("the segment's object");
    let mut bytes = fs::read(&stored).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(&stored, &bytes).unwrap();
    let o = repo.run(&["pg", "wal-fetch", name, path_str(&dest)]);
    assert!(o.status.code().is_some_and(|c| c > 125), "wal-fetch of a damaged object: {:?}\n{}", o.status, text(&o));
}

#[test]
fn a_missing_segment_fails_the_restore_naming_it() {
    let (repo, pg, b) = cluster_with_backup(10);
    for i in 0..4 {
        pg.psql(&format!("insert into t select generate_series({}, {})", 100 * i + 11, 100 * i + 110));
        pg.switch_wal_and_wait();
    }
    let (_, stop) = backup_segments(&b);
    let after: Vec<String> = repo.segments(b["timeline"].as_u64().unwrap()).into_iter().filter(|s| *s > stop).collect();
    assert!(after.len() >= 3, "segments after the backup's {stop}: {after:?}");
    let victim = after[1].clone();
    let (_, path) = repo.archived().into_iter().find(|(n, _)| *n == victim).unwrap();
    assert_eq!(path, repo.path().join("archive").join(&victim[..16]).join(&victim));
    fs::remove_file(&path).unwrap();

    let info = repo.info();
    let tl = info["timelines"].as_array().unwrap().iter().find(|t| t["timeline"] == 1).expect("timeline 1");
    assert!(tl["missing"].as_array().unwrap().contains(&Value::from(victim.as_str())), "pg info: {info}");

    let home = Cluster::home();
    let o = repo.restore(&home.data, &[]);
    assert_code(&o, 1, "pg restore with a segment missing");
    assert!(stderr(&o).contains(&victim), "the error should name {victim}: {}", stderr(&o));
}

#[test]
fn restore_into_a_directory_with_files_is_refused_and_changes_nothing() {
    let (repo, _pg, _) = cluster_with_backup(10);
    let home = Cluster::home();
    common::write_file(home.data.join("precious"), b"keep me");
    fs::create_dir_all(home.data.join("sub")).unwrap();
    let before = common::listing(&home.data);
    let o = repo.restore(&home.data, &[]);
    assert_code(&o, 1, "pg restore into a directory with files");
    assert!(stderr(&o).contains("not empty"), "{}", stderr(&o));
    assert_eq!(common::listing(&home.data), before, "the directory was changed");
    assert_eq!(fs::read(home.data.join("precious")).unwrap(), b"keep me");

    // An empty directory is fine.
    let empty = Cluster::home();
    fs::create_dir(&empty.data).unwrap();
    let o = repo.restore(&empty.data, &[]);
    assert_code(&o, 0, "pg restore into an empty directory");
    assert!(empty.data.join("recovery.signal").exists(), "no recovery.signal in the restored directory");
}

#[test]
fn archiving_into_an_unreachable_repository_fails_then_catches_up() {
    let (repo, pg, _) = cluster_with_backup(100);
    pg.psql("insert into t select generate_series(101, 200)");
    pg.switch_wal_and_wait();

    let away = repo.s.join("repo-away");
    fs::rename(repo.path(), &away).unwrap();
    let failing = (|| {
        for i in 0..3 {
            pg.psql(&format!("insert into t select generate_series({}, {})", 201 + 100 * i, 300 + 100 * i));
            pg.psql("select pg_switch_wal()");
        }
        poll(Duration::from_secs(60), || {
            let f: i64 = pg.psql("select failed_count from pg_stat_archiver").parse().unwrap();
            (f > 0).then_some(f)
        })
    })();
    let pending = pg.psql("select count(*) from pg_ls_archive_statusdir() where name like '%.ready'");
    let log = pg.log();
    fs::rename(&away, repo.path()).unwrap();
    assert!(failing.is_some(), "the archiver never failed with the repository away\n--- server log ---\n{log}");
    assert_ne!(pending, "0", "segments were archived with the repository away");

    // Back: the archiver catches up (a new segment wakes it).
    pg.psql("insert into t select generate_series(501, 600)");
    let seg = pg.psql("select pg_walfile_name(pg_switch_wal())");
    pg.wait_archived(&seg, Duration::from_secs(180));
    let (c, o) = repo.restore_and_start(&[], false);
    c.wait_recovered();
    assert_eq!(c.ids(), range(1, 600), "{}", text(&o));
}

#[test]
fn a_restore_for_another_major_version_is_refused() {
    let (repo, _pg, _) = cluster_with_backup(10);
    let fake = repo.s.join("pg16");
    fs::create_dir_all(&fake).unwrap();
    let postgres = fake.join("postgres");
    let (major, other) = (pg_installed().1, pg_installed().1 + 1);
    fs::write(&postgres, format!("#!/bin/sh\necho 'postgres (PostgreSQL) {other}.4'\n")).unwrap();
    set_mode(&postgres, 0o755);

    let home = Cluster::home();
    let o = repo.restore(&home.data, &["--pg-bin", path_str(&fake)]);
    assert_code(&o, 1, "pg restore --pg-bin (PostgreSQL 16)");
    let e = stderr(&o);
    assert!(
        e.contains(&format!("PostgreSQL {major}")) && e.contains(&format!("PostgreSQL {other}")),
        "the error should name both versions: {e}"
    );
    assert!(
        !home.data.exists() || fs::read_dir(&home.data).unwrap().next().is_none(),
        "a refused restore wrote into {}",
        home.data.display()
    );

    // The right version's programs are fine.
    let (c, o) = repo.restore_and_start(&["--pg-bin", pg_bin()], false);
    c.wait_recovered();
    assert_eq!(c.ids(), range(1, 10), "{}", text(&o));
}

#[test]
fn a_time_outside_the_recoverable_window_is_refused() {
    let (repo, pg, b) = cluster_with_backup(10);
    pg.psql(
        "do $$ begin
           for i in 11..20 loop insert into t values (i); commit; perform pg_sleep(0.1); end loop;
         end $$",
    );
    pg.switch_wal_and_wait();
    let info = repo.info();
    let backup = info["backups"].as_array().unwrap().iter().find(|x| x["id"] == b["id"]).expect("the backup in info");
    let stopped = parse_time(&backup["stopped"]);
    let (from, to) = (parse_time(&info["window"]["from"]), parse_time(&info["window"]["to"]));
    assert!(from < to, "window {from} .. {to}");
    assert!(from >= parse_time(&backup["started"]), "window from {from}: {info}");

    let second = chrono::Duration::seconds(1);
    let outside = [
        rfc3339(stopped - second),
        pg_text(from - second * 60),
        "2000-01-01T00:00:00Z".to_string(),
        rfc3339(to + second * 60),
        pg_text(Utc::now() + chrono::Duration::days(1)),
    ];
    for when in outside {
        let home = Cluster::home();
        let o = repo.restore(&home.data, &["--time", &when]);
        assert_code(&o, 1, &format!("pg restore --time {when} (window {from} .. {to})"));
        assert!(stderr(&o).contains("window"), "--time {when}: {}", stderr(&o));
    }

    // Inside, it restores.
    let mid = from + (to - from) / 2;
    let home = Cluster::home();
    let o = repo.restore(&home.data, &["--time", &rfc3339(mid)]);
    assert_code(&o, 0, &format!("pg restore --time {} (window {from} .. {to})", rfc3339(mid)));
}

#[test]
fn expire_keeps_the_last_backups_and_the_wal_they_need() {
    let (repo, pg, first) = cluster_with_backup(10);
    for i in 0..2 {
        pg.psql(&format!("insert into t select generate_series({}, {})", 11 + 10 * i, 20 + 10 * i));
        pg.switch_wal_and_wait();
    }
    let second = repo.backup(&pg, &[]);
    pg.psql("insert into t select generate_series(31, 40)");
    pg.switch_wal_and_wait();
    let (first_id, second_id) = (first["id"].as_str().unwrap(), second["id"].as_str().unwrap());
    let (keep_from, _) = backup_segments(&second);
    let before = repo.segments(1);
    assert!(before.iter().any(|s| *s < keep_from), "no segment before {keep_from}: {before:?}");

    let dry = repo.json(&["pg", "expire", "--keep-last", "1", "--dry-run"]);
    assert_eq!(dry["removed"], serde_json::json!([first_id]), "{dry}");
    assert_eq!(dry["kept"], serde_json::json!([second_id]), "{dry}");
    assert_eq!(repo.segments(1), before, "--dry-run deleted segments");
    assert_eq!(repo.info()["backups"].as_array().unwrap().len(), 2, "--dry-run forgot a backup");

    let v = repo.json(&["pg", "expire", "--keep-last", "1"]);
    assert_eq!(v["removed"], serde_json::json!([first_id]), "{v}");
    assert_eq!(v["kept"], serde_json::json!([second_id]), "{v}");
    let after = repo.segments(1);
    let gone = before.iter().filter(|s| !after.contains(s)).count() as u64;
    assert!(gone > 0 && v["wal_removed"].as_u64().unwrap() >= gone, "{gone} segments gone: {v}");
    assert!(after.iter().all(|s| *s >= keep_from), "segments before {keep_from} are left: {after:?}");
    assert_eq!(after, before.iter().filter(|s| **s >= keep_from).cloned().collect::<Vec<_>>());
    let info = repo.info();
    let ids: Vec<&str> = info["backups"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [second_id], "{info}");

    // The window starts at the kept backup now.
    let before_second = rfc3339(parse_time(&second["stopped"]) - chrono::Duration::seconds(1));
    let home = Cluster::home();
    let o = repo.restore(&home.data, &["--time", &before_second]);
    assert_code(&o, 1, &format!("pg restore --time {before_second} (before the only backup left)"));
    assert!(stderr(&o).contains("window"), "{}", stderr(&o));

    let (c, o) = repo.restore_and_start(&[], false);
    c.wait_recovered();
    assert_eq!(c.ids(), range(1, 40), "{}", text(&o));
}

// ---- asynchronous archiving, streaming and page checksums ----

#[test]
fn asynchronous_archiving_pushes_every_segment_through_the_spool() {
    let repo = Repo::new();
    let spool_home = tempfile::Builder::new().prefix("arkiv-spool-").tempdir().unwrap();
    chown_postgres(spool_home.path());
    let spool = spool_home.path().join("spool");
    let command =
        format!("{} --spool {} --parallel 3 %p", repo.archive_command().trim_end_matches(" %p"), path_str(&spool));
    let mut c = Cluster::archiving_with(&repo, &command, &[]);
    c.psql("create table t(id int primary key)");
    let b = repo.backup(&c, &[]);
    assert!(b["id"].is_string());
    for i in 0..6 {
        c.psql(&format!("insert into t select g from generate_series({}, {}) g", i * 1000 + 1, i * 1000 + 1000));
        c.psql("select pg_switch_wal()");
    }
    c.switch_wal_and_wait();
    let status: Value = serde_json::from_slice(&fs::read(spool.join("status.json")).unwrap()).unwrap();
    assert!(status["pushed_total"].as_u64().unwrap() >= 7, "{status}");
    assert_eq!(status["waiting"], 0, "{status}");
    assert!(status["last_error"].is_null(), "{status}");
    assert!(repo.segments(1).len() >= 8, "{:?}", repo.segments(1));
    c.stop();
    let (r, _) = repo.restore_and_start(&[], false);
    assert_eq!(r.wait_recovered(), "promoted");
    assert_eq!(r.ids(), range(1, 6000));
}

#[test]
fn streamed_wal_recovers_rows_whose_segment_was_never_archived() {
    let repo = Repo::new();
    let c = Cluster::archiving(&repo);
    c.psql("create table t(id int primary key)");
    c.psql("insert into t select g from generate_series(1, 100) g");
    repo.backup(&c, &[]);
    let recv = tempfile::Builder::new().prefix("arkiv-receive-").tempdir().unwrap();
    let dir = recv.path().join("wal");
    let mut cmd = bare_command();
    cmd.arg("--repo")
        .arg(repo.path())
        .arg("--password-file")
        .arg(&repo.password_file)
        .args(["pg", "receive", "--dir"])
        .arg(&dir)
        .arg("--host")
        .arg(c.sock())
        .args(["--port", &c.port.to_string(), "--user", "postgres", "--slot", "arkiv_test", "--create-slot"])
        .args(["--interval-ms", "200", "--pg-bin", pg_bin()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("arkiv pg receive");
    // The tail: committed after the last archived segment, never switched.
    c.psql("insert into t values (101), (102)");
    let lsn = c.psql("select pg_current_wal_lsn()");
    let streamed = poll(Duration::from_secs(30), || {
        let flushed = c.psql(
            "select coalesce(flush_lsn::text, '0/0') from pg_stat_replication where application_name = 'pg_receivewal'",
        );
        let partial = repo.archived().iter().any(|(n, _)| n.ends_with(".partial"));
        (partial && !flushed.is_empty() && c.psql(&format!("select '{flushed}'::pg_lsn >= '{lsn}'::pg_lsn")) == "t")
            .then_some(())
    });
    // Let one more interval store the partial with the tail in it.
    std::thread::sleep(Duration::from_millis(800));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let mut err = String::new();
    use std::io::Read;
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(streamed.is_some(), "the streamer did not store the tail; its stderr:\n{err}");
    assert!(status.success(), "pg receive exited {status}: {err}");
    // pg_receivewal dies with its supervisor (it may take a moment to exit).
    let gone = poll(Duration::from_secs(10), || {
        let running = fs::read_dir("/proc").unwrap().flatten().any(|p| {
            let cmd = fs::read(p.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            cmd.contains("pg_receivewal") && cmd.contains(path_str(&dir))
        });
        (!running).then_some(())
    });
    assert!(gone.is_some(), "pg_receivewal outlived its supervisor");
    let (r, _) = repo.restore_and_start(&[], false);
    assert_eq!(r.wait_recovered(), "promoted");
    assert_eq!(r.ids(), range(1, 102), "the streamed tail is recovered");
    c.psql("select pg_drop_replication_slot('arkiv_test')");
}

#[test]
fn page_checksum_failures_are_found_while_reading() {
    let repo = Repo::new();
    let mut c = Cluster::archiving_with(&repo, &repo.archive_command(), &["--data-checksums"]);
    c.psql("create table t(id int primary key, v text)");
    c.psql("insert into t select g, repeat('x', 100) from generate_series(1, 5000) g");
    c.psql("checkpoint");
    let first = repo.backup(&c, &[]);
    assert!(first["pages_checked"].as_u64().unwrap() > 100, "{first}");
    assert_eq!(first["checksum_failures"].as_array().map(Vec::len), Some(0), "{first}");
    let file = c.data.join(c.psql("select pg_relation_filepath('t')"));
    c.stop();
    // One byte in the middle of block 2, as a failing disk would leave it.
    let mut bytes = fs::read(&file).unwrap();
    bytes[2 * 8192 + 4000] ^= 0x40;
    fs::write(&file, bytes).unwrap();
    c.start(true);
    let port = c.port.to_string();
    let o = repo.run(&[
        "--json",
        "pg",
        "backup",
        "--pgdata",
        path_str(&c.data),
        "--host",
        path_str(c.sock()),
        "--port",
        &port,
        "--full",
    ]);
    assert_code(&o, 3, "pg backup of a damaged cluster");
    let v = parse_json(&o);
    let fails = v["checksum_failures"].as_array().unwrap();
    assert_eq!(fails.len(), 1, "{v}");
    assert_eq!(fails[0]["block"], 2, "{v}");
    assert!(fails[0]["path"].as_str().unwrap().ends_with(file.file_name().unwrap().to_str().unwrap()), "{v}");
    assert!(stderr(&o).contains("block 2"), "{}", stderr(&o));
    // The damaged backup is kept (it is a faithful copy); turning the check off passes.
    let v = repo.backup(&c, &["--no-verify-checksums"]);
    assert!(v["pages_checked"].is_null(), "{v}");
}

#[test]
fn a_tablespace_is_backed_up_and_restored_to_a_new_location() {
    let repo = Repo::new();
    let mut c = Cluster::archiving(&repo);
    let places = tempfile::Builder::new().prefix("arkiv-tblspc-").tempdir().unwrap();
    chown_postgres(places.path());
    let original = places.path().join("original");
    fs::create_dir(&original).unwrap();
    chown_postgres(&original);
    c.psql(&format!("create tablespace fast location '{}'", path_str(&original)));
    c.psql("create table t(id int primary key) tablespace fast");
    c.psql("insert into t select g from generate_series(1, 500) g");
    repo.backup(&c, &[]);
    c.psql("insert into t select g from generate_series(501, 600) g");
    c.switch_wal_and_wait();
    // The original location is in use: restoring there is refused.
    let d = tempfile::Builder::new().prefix("arkiv-pitr-refused-").tempdir().unwrap();
    let o = repo.restore(&d.path().join("data"), &[]);
    assert_code(&o, 1, "pg restore onto a tablespace location in use");
    assert!(stderr(&o).contains("tablespace fast") && stderr(&o).contains("not empty"), "{}", stderr(&o));
    c.stop();
    let moved = places.path().join("moved");
    let (r, _) = repo.restore_and_start(&["--tablespace", &format!("fast={}", path_str(&moved))], false);
    assert_eq!(r.wait_recovered(), "promoted");
    assert_eq!(r.ids(), range(1, 600));
    let link =
        fs::read_link(r.data.join("pg_tblspc").join(r.psql("select oid from pg_tablespace where spcname = 'fast'")))
            .unwrap();
    assert_eq!(link, moved);
    use std::os::unix::fs::MetadataExt;
    let pg_version = fs::metadata(r.data.join("PG_VERSION")).unwrap();
    assert_eq!(fs::metadata(&moved).unwrap().uid(), pg_version.uid(), "the location is the server's, like PGDATA");
    assert_eq!(
        r.psql("select pg_tablespace_location(oid) from pg_tablespace where spcname = 'fast'"),
        path_str(&moved)
    );
}
