//! The daemon end to end, as the issue asks for it: from one configuration
//! file it backs up a directory and a PostgreSQL database every minute into
//! a local repository and replicates them to a second; the API shows the
//! runs; the metrics move; `kill -9` and a restart lose no history; and
//! what reached the second repository restores.
//!
//! One test, a few minutes of wall time: it waits for real minute
//! boundaries of the scheduler (`* * * * *`). It talks to the machine's
//! PostgreSQL on 127.0.0.1:5432 (user `postgres`, no password), in
//! databases named after its process that it drops when it ends, also
//! when it fails. Everything waits by polling with deadlines, generous
//! because other tests run beside it on a small machine.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::{assert_code, bare_command, run, FAST_KDF};
use serde_json::{json, Value};

const SERVER: &str = "postgres://postgres@127.0.0.1:5432";
const TOKEN: &str = "e2e-operator-token-0123456789abcdef";
const POLL: Duration = Duration::from_millis(500);

// ---- PostgreSQL

fn psql(db: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", "5432", "-U", "postgres"])
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql])
        .output()
        .expect("psql runs");
    assert!(out.status.success(), "psql -d {db} -c {sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

/// The databases of this test, dropped when it ends (also when it fails).
struct Dbs {
    prefix: String,
}

impl Dbs {
    fn new() -> Dbs {
        Dbs { prefix: format!("arkiv_t{}_e2e", std::process::id()) }
    }

    fn name(&self, n: &str) -> String {
        format!("{}_{n}", self.prefix)
    }

    fn create(&self, n: &str) -> String {
        let name = self.name(n);
        psql("postgres", &format!("create database \"{name}\""));
        name
    }
}

impl Drop for Dbs {
    fn drop(&mut self) {
        let names = psql(
            "postgres",
            &format!("select datname from pg_database where datname like '{}\\_%'", self.prefix.replace('_', "\\_")),
        );
        for n in names.lines().filter(|n| !n.is_empty()) {
            psql("postgres", &format!("drop database if exists \"{n}\" with (force)"));
        }
    }
}

/// Row count and a digest of the whole table, to compare two databases.
fn digest(db: &str) -> String {
    psql(db, "select count(*) || ':' || md5(string_agg(t::text, ',' order by t.id)) from items t")
}

// ---- the daemon process

/// A running `arkiv serve`, killed when dropped (also on panic).
struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// Starts the daemon on `config`, its standard error going to `log`, and
    /// waits until it says it listens.
    fn start(config: &Path, log: &Path) -> Daemon {
        let err = fs::File::create(log).expect("daemon log file");
        let child = bare_command()
            .arg("-c")
            .arg(config)
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("arkiv serve starts");
        let mut d = Daemon { child: Some(child), log: log.to_path_buf() };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = d.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("arkiv serve exited with {status} before listening:\n{}", tail(&d.log, 50));
            }
            if fs::read_to_string(&d.log).unwrap_or_default().contains("arkiv: serving on http://") {
                return d;
            }
            assert!(Instant::now() < deadline, "arkiv serve did not say it listens within 60 s:\n{}", tail(&d.log, 50));
            std::thread::sleep(POLL);
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    /// `kill -9`: no signal handler, no shutdown grace, nothing flushed.
    fn kill9(&mut self) {
        let mut c = self.child.take().expect("daemon running");
        c.kill().expect("SIGKILL the daemon");
        let status = c.wait().expect("reap the daemon");
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL), "{status}");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The last `n` lines of a file, for failure messages.
fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!("--- {} (last {n} lines) ---\n{}", path.display(), lines[lines.len().saturating_sub(n)..].join("\n"))
}

/// Processes whose command line mentions `needle` (other than this test).
fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let Ok(raw) = fs::read(e.path().join("cmdline")) else { continue };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        // A zombie has an empty command line and holds nothing.
        if cmd.contains(needle) {
            out.push((pid, cmd.trim_end().to_string()));
        }
    }
    out
}

// ---- the API

struct Api {
    base: String,
    agent: ureq::Agent,
}

impl Api {
    fn new(port: u16) -> Api {
        Api {
            base: format!("http://127.0.0.1:{port}"),
            agent: ureq::AgentBuilder::new().timeout(Duration::from_secs(20)).build(),
        }
    }

    fn get(&self, path: &str) -> Value {
        match self.agent.get(&format!("{}{path}", self.base)).set("Authorization", &format!("Bearer {TOKEN}")).call() {
            Ok(r) => r.into_json().unwrap_or_else(|e| panic!("GET {path}: not JSON: {e}")),
            Err(ureq::Error::Status(code, r)) => panic!("GET {path}: {code} {}", r.into_string().unwrap_or_default()),
            Err(e) => panic!("GET {path}: {e}"),
        }
    }

    fn post(&self, path: &str, body: Value) -> (u16, Value) {
        match self
            .agent
            .post(&format!("{}{path}", self.base))
            .set("Authorization", &format!("Bearer {TOKEN}"))
            .send_json(body)
        {
            Ok(r) => (r.status(), r.into_json().unwrap_or(Value::Null)),
            Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(Value::Null)),
            Err(e) => panic!("POST {path}: {e}"),
        }
    }

    /// `/metrics` needs no token.
    fn metrics(&self) -> Metrics {
        let text = self
            .agent
            .get(&format!("{}/metrics", self.base))
            .call()
            .unwrap_or_else(|e| panic!("GET /metrics: {e}"))
            .into_string()
            .unwrap();
        Metrics(text)
    }

    /// Runs, newest first.
    fn runs(&self, query: &str) -> Vec<Value> {
        self.get(&format!("/v1/jobs?limit=1000&{query}")).as_array().expect("/v1/jobs is an array").clone()
    }

    fn run(&self, id: i64) -> Value {
        self.get(&format!("/v1/jobs/{id}"))
    }

    /// Succeeded runs of `job` the scheduler started, oldest first.
    fn scheduled(&self, job: &str) -> Vec<Value> {
        let mut v: Vec<Value> = self
            .runs(&format!("job={job}&status=succeeded"))
            .into_iter()
            .filter(|r| r["trigger"] == "schedule")
            .collect();
        v.reverse();
        v
    }

    fn snapshots(&self, repository: &str) -> Vec<Value> {
        self.get(&format!("/v1/snapshots?repository={repository}")).as_array().expect("an array").clone()
    }

    fn repository(&self, name: &str) -> Value {
        self.get(&format!("/v1/repositories/{name}"))
    }

    /// What a failure message shows: the newest runs, one line each.
    fn recent_runs(&self) -> String {
        let Ok(r) = self
            .agent
            .get(&format!("{}/v1/jobs?limit=30", self.base))
            .set("Authorization", &format!("Bearer {TOKEN}"))
            .call()
        else {
            return "(API unreachable)".into();
        };
        let v: Value = r.into_json().unwrap_or(Value::Null);
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|r| {
                        format!(
                            "  #{} {} {} {} not_before={} started={} ended={} error={}",
                            r["id"],
                            r["job"],
                            r["trigger"],
                            r["status"],
                            r["not_before"],
                            r["started_at"],
                            r["ended_at"],
                            r["error"]
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    }
}

/// The text exposition of `/metrics`.
struct Metrics(String);

impl Metrics {
    /// The value of one series, named with its labels as exposed
    /// (`arkiv_job_runs_total{job="backup:db",status="succeeded"}`).
    fn get(&self, series: &str) -> f64 {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                (k == series).then(|| v.parse::<f64>().unwrap_or_else(|e| panic!("{l}: {e}")))
            })
            .unwrap_or_else(|| panic!("no series {series} in /metrics:\n{}", self.0))
    }

    fn last_success(&self, source: &str) -> f64 {
        self.get(&format!("arkiv_backup_last_success_timestamp_seconds{{source=\"{source}\"}}"))
    }
    fn duration_count(&self, source: &str) -> f64 {
        self.get(&format!("arkiv_backup_duration_seconds_count{{source=\"{source}\"}}"))
    }
    fn bytes(&self, source: &str) -> f64 {
        self.get(&format!("arkiv_backup_bytes_total{{source=\"{source}\"}}"))
    }
    fn runs(&self, job: &str, status: &str) -> f64 {
        self.get(&format!("arkiv_job_runs_total{{job=\"{job}\",status=\"{status}\"}}"))
    }
    fn repo_size(&self, repository: &str) -> f64 {
        self.get(&format!("arkiv_repository_size_bytes{{repository=\"{repository}\"}}"))
    }
    fn lag(&self) -> f64 {
        self.get("arkiv_replication_lag_seconds{repository=\"main\",replica=\"second\"}")
    }
    fn missing(&self) -> f64 {
        self.get("arkiv_replication_missing_snapshots{repository=\"main\",replica=\"second\"}")
    }
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str().unwrap_or_else(|| panic!("not a time: {v}")).parse().unwrap_or_else(|e| panic!("{v}: {e}"))
}

fn id_of(v: &Value) -> i64 {
    v["id"].as_i64().unwrap_or_else(|| panic!("no id in {v}"))
}

// ---- the test's world

struct World {
    root: PathBuf,
    password_file: PathBuf,
    data: PathBuf,
    main: PathBuf,
    second: PathBuf,
    db: String,
    api: Api,
    logs: Vec<PathBuf>,
}

impl World {
    /// Polls `f` every 500 ms until it gives a value; fails after `limit`
    /// showing the newest runs and the daemon's log.
    fn wait<T>(&self, limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(v) = f() {
                return v;
            }
            if Instant::now() >= deadline {
                panic!(
                    "waited {} s for {what} (now {})\nnewest runs:\n{}\n{}",
                    limit.as_secs(),
                    Utc::now(),
                    self.api.recent_runs(),
                    self.logs.last().map(|l| tail(l, 40)).unwrap_or_default()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    fn arkiv<S: AsRef<OsStr>>(&self, args: &[S]) -> std::process::Output {
        let mut c = bare_command();
        c.args(args);
        run(c)
    }

    /// Changes both sources, so the next backups store something new.
    fn change_sources(&self, round: u64) {
        common::write_file(self.data.join(format!("round-{round}.bin")), &common::random_bytes(1000 + round, 30_000));
        psql(
            &self.db,
            &format!("insert into items (name) select 'round {round} item ' || g from generate_series(1, 500) g"),
        );
    }

    /// Waits until both sources have a scheduled run that started after
    /// `after` and succeeded; returns them (files, db).
    fn wait_scheduled_after(&self, after: DateTime<Utc>, limit: Duration, what: &str) -> (Value, Value) {
        self.wait(limit, what, || {
            let pick = |job: &str| self.api.scheduled(job).into_iter().find(|r| time(&r["started_at"]) > after);
            Some((pick("backup:files")?, pick("backup:db")?))
        })
    }

    /// Waits until every snapshot of main is in second (as the daemon
    /// last saw both) and the snapshots of `runs` are among them; returns
    /// the repository status of main.
    fn wait_replicated(&self, runs: &[&Value], limit: Duration, what: &str) -> Value {
        self.wait(limit, what, || {
            let main = self.api.snapshots("main");
            let second = self.api.snapshots("second");
            let key = |s: &Value| {
                (s["source"].as_str().unwrap_or("").to_string(), s["time"].as_str().unwrap_or("").to_string())
            };
            let in_second: Vec<_> = second.iter().map(key).collect();
            for r in runs {
                let snap = r["snapshot"].as_str()?;
                let s = main.iter().find(|s| s["id"] == snap)?;
                if !in_second.contains(&key(s)) {
                    return None;
                }
            }
            if !main.iter().all(|s| in_second.contains(&key(s))) {
                return None;
            }
            let repo = self.api.repository("main");
            (repo["state"]["replication"]["second"]["missing_in_replica"] == 0).then_some(repo)
        })
    }
}

#[test]
fn the_daemon_backs_up_every_minute_replicates_reports_and_survives_kill_9() {
    let started = Instant::now();
    let tmp = tempfile::Builder::new().prefix("arkiv-e2e-").tempdir().expect("temporary directory");
    let root = fs::canonicalize(tmp.path()).unwrap();
    let dbs = Dbs::new();

    // ---- 1. a database, a directory, two repositories, a configuration
    let db = dbs.create("src");
    psql(
        &db,
        "create table items (id serial primary key, name text not null, added timestamptz not null default now());
         insert into items (name) select 'item ' || g from generate_series(1, 1000) g;",
    );
    let data = root.join("data");
    common::random_files(&data, 7, 12, 20_000);
    common::write_file(data.join("docs/readme.txt"), b"the data the daemon keeps safe\n");

    let password_file = root.join("pw");
    fs::write(&password_file, "e2e repository password\n").unwrap();
    let token_file = root.join("ops.token");
    fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let (main, second) = (root.join("main"), root.join("second"));
    for repo in [&main, &second] {
        let mut c = bare_command();
        c.arg("init").arg("--repo").arg(repo).arg("--password-file").arg(&password_file).arg("-q").args(FAST_KDF);
        assert_code(&run(c), 0, &format!("init --repo {}", repo.display()));
    }
    let port = common::garage::free_port();
    let state = root.join("state");
    let config = root.join("arkiv.toml");
    fs::write(
        &config,
        format!(
            r#"[daemon]
listen = "127.0.0.1:{port}"
catalog = "{catalog}"
shutdown_grace = "5s"

[users.ops]
role = "admin"
token_file = "{token}"

[repositories.main]
url = "{main}"
password_file = "{pw}"
replicas = ["second"]

[repositories.second]
url = "{second}"
password_file = "{pw}"

[sources.files]
paths = ["{data}"]
schedule = {{ cron = "* * * * *" }}

[sources.db]
url = "{SERVER}/{db}"
schedule = {{ cron = "* * * * *" }}

[sources.slow]
url = "command:sh -c 'sleep 20; echo done'"
"#,
            catalog = state.join("catalog.db").display(),
            token = token_file.display(),
            main = main.display(),
            second = second.display(),
            pw = password_file.display(),
            data = data.display(),
        ),
    )
    .unwrap();
    let mut w = World {
        root: root.clone(),
        password_file: password_file.clone(),
        data: data.clone(),
        main: main.clone(),
        second: second.clone(),
        db: db.clone(),
        api: Api::new(port),
        logs: vec![root.join("daemon-1.log")],
    };
    let cfg = config.to_str().unwrap();
    assert_code(&w.arkiv(&["-c", cfg, "config", "check"]), 0, "config check");

    // ---- 2. the daemon runs both backups at each minute
    let mut daemon = Daemon::start(&config, &w.logs[0]);
    let t_start = Utc::now();
    eprintln!("daemon {} started at {t_start}", daemon.pid());

    // The first minute: both sources backed up and replicated.
    let (f1, d1) =
        w.wait_scheduled_after(t_start, Duration::from_secs(150), "the first scheduled backups of files and db");
    w.wait_replicated(&[&f1, &d1], Duration::from_secs(90), "the first backups to reach the second repository");
    let m1 = w.api.metrics();
    for s in ["files", "db"] {
        assert!(m1.last_success(s) > 0.0, "last success of {s} after its first backup:\n{}", m1.0);
        assert!(m1.duration_count(s) >= 1.0, "{s}");
        assert!(m1.bytes(s) > 0.0, "{s}");
        assert!(m1.runs(&format!("backup:{s}"), "succeeded") >= 1.0, "{s}");
    }
    assert!(m1.repo_size("main") > 0.0 && m1.repo_size("second") > 0.0, "{}", m1.0);
    eprintln!("first minute done at {} ({} s into the test)", Utc::now(), started.elapsed().as_secs());

    // Something new to store in the next minute, so sizes and bytes must move.
    let t_change1 = Utc::now();
    w.change_sources(1);
    let (f2, d2) = w.wait_scheduled_after(t_change1, Duration::from_secs(150), "the next minute's scheduled backups");
    let main_status = w.wait_replicated(
        &[&f2, &d2],
        Duration::from_secs(90),
        "the second minute's backups to reach the second repository",
    );
    eprintln!("second minute done at {} ({} s into the test)", Utc::now(), started.elapsed().as_secs());

    // Two consecutive minutes, started by the scheduler at the minute.
    for job in ["backup:files", "backup:db"] {
        let runs = w.api.scheduled(job);
        assert!(runs.len() >= 2, "{job}: {runs:?}");
        for r in &runs {
            let due = time(&r["not_before"]);
            let start = time(&r["started_at"]);
            // Due in the minute's first second. (Not at .000: the
            // scheduler's due times keep the sub-second part of the
            // daemon's start, as croner carries it over.)
            assert_eq!(due.timestamp() % 60, 0, "{job} run {} was due off the minute: {r}", r["id"]);
            let late = (start - due).num_milliseconds();
            eprintln!("{job} run {} due {due}, started {late} ms later", r["id"]);
            assert!((0..=20_000).contains(&late), "{job} run {} started {late} ms after its minute: {r}", r["id"]);
            assert!(time(&r["queued_at"]) - due < chrono::Duration::seconds(10), "queued late: {r}");
            assert!(time(&r["ended_at"]) >= start, "{r}");
        }
        let gap = time(&runs[1]["not_before"]) - time(&runs[0]["not_before"]);
        assert_eq!(gap.num_seconds(), 60, "{job}: the first two scheduled runs are not a minute apart: {runs:?}");
        let start_gap = (time(&runs[1]["started_at"]) - time(&runs[0]["started_at"])).num_milliseconds();
        assert!((40_000..=80_000).contains(&start_gap), "{job}: starts {start_gap} ms apart: {runs:?}");
    }
    // Both sources are due at the same minute.
    assert_eq!(w.api.scheduled("backup:files")[0]["not_before"], w.api.scheduled("backup:db")[0]["not_before"]);

    // ---- 3. the API shows the runs, the snapshots in both repositories, replication
    let main_snaps = w.api.snapshots("main");
    for (r, source, kind) in
        [(&f1, "files", "files"), (&d1, "db", "postgres"), (&f2, "files", "files"), (&d2, "db", "postgres")]
    {
        assert_eq!(r["kind"], "backup", "{r}");
        assert_eq!(r["target"], source, "{r}");
        assert_eq!(r["job"], format!("backup:{source}"), "{r}");
        assert!(r["error"].is_null(), "{r}");
        assert!(r["retry_of"].is_null(), "{r}");
        assert!(r["bytes"].as_u64().is_some_and(|b| b > 0), "a backup that read nothing: {r}");
        assert!(r["files"].as_u64().is_some_and(|f| f >= 1), "{r}");
        let snap = r["snapshot"].as_str().unwrap_or_else(|| panic!("no snapshot id: {r}"));
        assert!(snap.len() == 64 && snap.bytes().all(|b| b.is_ascii_hexdigit()), "{snap}");
        let seen =
            main_snaps.iter().find(|s| s["id"] == snap).unwrap_or_else(|| panic!("{snap} not in main: {main_snaps:?}"));
        assert_eq!(seen["source"], kind, "{seen}");
        assert_eq!(seen["repository"], "main");
    }
    // The files run of the second minute read the new file (and only it changed).
    assert!(f2["bytes"].as_u64().unwrap() >= 30_000, "{f2}");
    assert!(f2["files"].as_u64().unwrap() >= 14, "{f2}");
    let second_snaps = w.api.snapshots("second");
    for kind in ["files", "postgres"] {
        assert!(main_snaps.iter().filter(|s| s["source"] == kind).count() >= 2, "{kind} in main: {main_snaps:?}");
        assert!(second_snaps.iter().filter(|s| s["source"] == kind).count() >= 2, "{kind} in second: {second_snaps:?}");
    }
    assert!(second_snaps.iter().all(|s| s["repository"] == "second"));
    let rep = &main_status["state"]["replication"]["second"];
    assert_eq!(rep["missing_in_replica"], 0, "{main_status}");
    assert!(rep["lag_seconds"].as_f64().is_some_and(|l| l >= 0.0), "no replication lag shown: {main_status}");
    assert_eq!(main_status["replicas"], json!(["second"]));
    assert!(main_status["state"]["size_bytes"].as_u64().is_some_and(|s| s > 0), "{main_status}");
    assert!(main_status["state"]["snapshots"].as_u64().is_some_and(|n| n >= 4), "{main_status}");
    let repos = w.api.get("/v1/repositories");
    let second_status =
        repos.as_array().unwrap().iter().find(|r| r["name"] == "second").expect("second listed").clone();
    assert!(second_status["state"]["size_bytes"].as_u64().is_some_and(|s| s > 0), "{second_status}");
    assert!(second_status["state"]["snapshots"].as_u64().is_some_and(|n| n >= 4), "{second_status}");
    let replications = w.api.runs("job=replicate:main:second&status=succeeded");
    assert!(!replications.is_empty(), "no successful replication run");
    for r in &replications {
        assert_eq!(r["trigger"], "after-backup", "{r}");
        assert_eq!(r["kind"], "replicate", "{r}");
        assert_eq!(r["target"], "main:second", "{r}");
    }
    let sources = w.api.get("/v1/sources");
    for (name, kind) in [("files", "files"), ("db", "postgres")] {
        let s = sources.as_array().unwrap().iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("{sources}"));
        assert_eq!(s["kind"], kind, "{s}");
        assert_eq!(s["repository"], "main", "{s}");
        assert_eq!(s["schedule"], "cron * * * * *", "{s}");
        assert!(!s["last_success"].is_null(), "{s}");
        assert!(!s["last_run"].is_null(), "{s}");
        let next = time(&s["next_run"]);
        assert_eq!(next.timestamp() % 60, 0, "next run not at a minute: {s}");
        assert!(next > Utc::now() - chrono::Duration::seconds(5), "next run in the past: {s}");
        assert!(next <= Utc::now() + chrono::Duration::seconds(61), "next run over a minute ahead: {s}");
    }
    let slow = sources.as_array().unwrap().iter().find(|s| s["name"] == "slow").expect("slow listed");
    assert!(slow["schedule"].is_null() && slow["next_run"].is_null() && slow["last_success"].is_null(), "{slow}");

    // ---- 4. the metrics moved between the two minutes
    let m2 = w.api.metrics();
    for s in ["files", "db"] {
        assert!(
            m2.last_success(s) > m1.last_success(s),
            "{s}: last success {} -> {}",
            m1.last_success(s),
            m2.last_success(s)
        );
        assert!(m2.duration_count(s) >= 2.0 && m2.duration_count(s) > m1.duration_count(s), "{s}:\n{}", m2.0);
        assert!(m2.bytes(s) > m1.bytes(s), "{s}: bytes {} -> {}", m1.bytes(s), m2.bytes(s));
        let job = format!("backup:{s}");
        assert!(m2.runs(&job, "succeeded") >= 2.0 && m2.runs(&job, "succeeded") > m1.runs(&job, "succeeded"), "{job}");
        assert_eq!(m2.runs(&job, "failed"), 0.0, "{job}:\n{}", m2.0);
    }
    assert!(
        m2.repo_size("main") > m1.repo_size("main"),
        "main size {} -> {}",
        m1.repo_size("main"),
        m2.repo_size("main")
    );
    assert!(
        m2.repo_size("second") > m1.repo_size("second"),
        "second {} -> {}",
        m1.repo_size("second"),
        m2.repo_size("second")
    );
    assert!(m2.runs("replicate:main:second", "succeeded") >= 1.0, "{}", m2.0);
    assert!(m2.lag() >= 0.0);
    assert_eq!(m2.missing(), 0.0, "{}", m2.0);
    // The catalog and the metrics agree on the newest success.
    let newest_db = w.api.runs("job=backup:db&status=succeeded")[0].clone();
    assert!(
        (time(&newest_db["ended_at"]).timestamp_millis() as f64 / 1000.0 - m2.last_success("db")).abs() < 1.0,
        "{newest_db} vs {}",
        m2.last_success("db")
    );

    // ---- 5. a run going when the daemon is killed with SIGKILL
    let (code, queued) = w.api.post("/v1/jobs", json!({ "job": "backup:slow" }));
    assert_eq!(code, 202, "{queued}");
    assert_eq!(queued["status"], "queued", "{queued}");
    assert_eq!(queued["trigger"], "api", "{queued}");
    assert_eq!(queued["requested_by"], "ops", "{queued}");
    let slow_id = id_of(&queued);
    w.wait(Duration::from_secs(90), "backup:slow to be running", || {
        (w.api.run(slow_id)["status"] == "running").then_some(())
    });
    w.wait(Duration::from_secs(10), "arkiv_jobs_running to show it", || {
        (w.api.metrics().get("arkiv_jobs_running") >= 1.0).then_some(())
    });
    // Let the child get into its command before pulling the rug.
    std::thread::sleep(Duration::from_secs(2));
    let before = w.api.runs("");
    let killed = w.api.run(slow_id);
    assert_eq!(killed["status"], "running", "slow finished too early: {killed}");
    let running: Vec<i64> = before.iter().filter(|r| r["status"] == "running").map(id_of).collect();
    assert_eq!(running, [slow_id], "runs running at the kill");
    let m_before_kill = w.api.metrics();
    eprintln!("kill -9 of daemon {} with run {slow_id} running; {} runs listed", daemon.pid(), before.len());
    daemon.kill9();

    // The job's process does not outlive the daemon that started it.
    w.wait(Duration::from_secs(30), "the killed daemon's job processes to end", || {
        let left = processes_mentioning(cfg);
        left.is_empty().then_some(()).or_else(|| {
            eprintln!("still running: {left:?}");
            None
        })
    });

    // ---- restart on the same configuration
    w.logs.push(root.join("daemon-2.log"));
    let t_restart = Utc::now();
    let daemon2 = Daemon::start(&config, w.logs.last().unwrap());
    eprintln!("daemon {} restarted at {t_restart}", daemon2.pid());
    let after = w.api.runs("");
    let after_by_id: BTreeMap<i64, &Value> = after.iter().map(|r| (id_of(r), r)).collect();
    assert!(after.len() > before.len(), "{} runs before the kill, {} after", before.len(), after.len());
    for b in &before {
        let id = id_of(b);
        let a = after_by_id.get(&id).unwrap_or_else(|| panic!("run {id} lost in the restart: {b}"));
        match b["status"].as_str().unwrap() {
            "running" => {
                assert_eq!(a["status"], "interrupted", "the killed run: {a}");
                assert!(a["error"].as_str().is_some_and(|e| !e.is_empty()), "interrupted without a reason: {a}");
                assert!(!a["ended_at"].is_null(), "{a}");
                assert_eq!(a["started_at"], b["started_at"], "{a}");
            }
            "queued" => assert_eq!(a["job"], b["job"], "{a}"),
            _ => {
                for field in [
                    "job",
                    "kind",
                    "target",
                    "trigger",
                    "status",
                    "queued_at",
                    "not_before",
                    "started_at",
                    "ended_at",
                    "bytes",
                    "files",
                    "snapshot",
                    "error",
                    "retry_of",
                ] {
                    assert_eq!(
                        a[field], b[field],
                        "run {id} changed its {field} in the restart:\nbefore {b}\nafter  {a}"
                    );
                }
            }
        }
    }
    let again = w.wait(Duration::from_secs(10), "the interrupted run to be queued again", || {
        w.api.runs("job=backup:slow").into_iter().find(|r| r["retry_of"] == slow_id)
    });
    assert_eq!(again["trigger"], "reschedule", "{again}");
    assert_eq!(again["job"], "backup:slow", "{again}");
    assert!(id_of(&again) > slow_id);
    // History-derived metrics come back from the catalog.
    let m_restart = w.api.metrics();
    for s in ["files", "db"] {
        assert!(
            (m_restart.last_success(s) - m_before_kill.last_success(s)).abs() < 1.0,
            "{s}: last success {} before the kill, {} after the restart",
            m_before_kill.last_success(s),
            m_restart.last_success(s)
        );
    }
    assert!(m_restart.repo_size("main") > 0.0 && m_restart.repo_size("second") > 0.0, "{}", m_restart.0);
    // The audit log says what the start did.
    let audit = w.api.get("/v1/audit?limit=1000");
    let start_entry = audit
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["action"] == "daemon.start")
        .unwrap_or_else(|| panic!("no daemon.start in the audit log: {audit}"));
    let detail: Value = serde_json::from_str(start_entry["detail"].as_str().unwrap()).unwrap();
    assert_eq!(detail["interrupted"], json!([slow_id]), "{start_entry}");
    assert!(detail["requeued"].as_array().unwrap().contains(&json!(id_of(&again))), "{start_entry}");
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "job.trigger" && e["target"] == "backup:slow" && e["actor"] == "ops"),
        "{audit}"
    );

    // The repeated run finishes.
    let again_id = id_of(&again);
    let done = w.wait(Duration::from_secs(120), "the rescheduled backup:slow to finish", || {
        let r = w.api.run(again_id);
        matches!(r["status"].as_str(), Some("succeeded" | "failed" | "partial" | "cancelled" | "interrupted"))
            .then_some(r)
    });
    assert_eq!(done["status"], "succeeded", "the rescheduled run: {done}\n{}", tail(w.logs.last().unwrap(), 40));
    assert!(done["snapshot"].is_string(), "{done}");

    // ---- scheduled backups go on after the restart
    let t_change2 = Utc::now();
    w.change_sources(2);
    let (f3, d3) = w.wait_scheduled_after(
        t_change2.max(t_restart),
        Duration::from_secs(200),
        "scheduled backups after the restart",
    );
    for r in [&f3, &d3] {
        assert_eq!(r["trigger"], "schedule", "{r}");
        assert_eq!(time(&r["not_before"]).timestamp() % 60, 0, "{r}");
    }
    w.wait_replicated(
        &[&f3, &d3, &done],
        Duration::from_secs(120),
        "the backups after the restart to reach the second repository",
    );
    eprintln!("third minute done at {} ({} s into the test)", Utc::now(), started.elapsed().as_secs());
    let m3 = w.api.metrics();
    for s in ["files", "db"] {
        assert!(m3.last_success(s) > m_before_kill.last_success(s), "{s}");
        assert!(m3.duration_count(s) >= 1.0, "{s}");
    }
    assert!(m3.runs("backup:slow", "succeeded") >= 1.0, "{}", m3.0);
    // No run failed in the whole test, and nothing is left running.
    let all = w.api.runs("");
    let bad: Vec<&Value> =
        all.iter().filter(|r| matches!(r["status"].as_str(), Some("failed" | "cancelled" | "partial"))).collect();
    assert!(bad.is_empty(), "runs that did not succeed: {bad:?}");
    let interrupted: Vec<i64> = all.iter().filter(|r| r["status"] == "interrupted").map(id_of).collect();
    assert_eq!(interrupted, [slow_id]);

    // ---- the audit chain is whole
    let v = w.arkiv(&["-c", cfg, "audit", "verify"]);
    assert_code(&v, 0, "audit verify");
    let v = w.api.get("/v1/audit/verify");
    assert_eq!(v["ok"], true, "{v}");

    // ---- 6. what reached the second repository restores
    let second_snaps = w.api.snapshots("second");
    let newest = |kind: &str| {
        second_snaps
            .iter()
            .filter(|s| s["source"] == kind)
            .max_by_key(|s| time(&s["time"]))
            .unwrap_or_else(|| panic!("no {kind} snapshot in second: {second_snaps:?}"))["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (db_snap, files_snap) = (newest("postgres"), newest("files"));
    let restored_db = dbs.name("restored");
    let mut c = bare_command();
    c.arg("--repo").arg(&w.second).arg("--password-file").arg(&w.password_file);
    c.args(["restore", &db_snap, "--target", &format!("{SERVER}/{restored_db}")]);
    assert_code(&run(c), 0, &format!("--repo second restore {db_snap} --target {restored_db}"));
    assert_eq!(psql(&restored_db, "select count(*) from items"), "2000");
    assert_eq!(digest(&restored_db), digest(&w.db));

    let target = w.root.join("restored-files");
    let mut c = bare_command();
    c.arg("--repo").arg(&w.second).arg("--password-file").arg(&w.password_file);
    c.args(["restore", &files_snap, "--target"]).arg(&target);
    assert_code(&run(c), 0, &format!("--repo second restore {files_snap}"));
    common::assert_same_tree(&w.data, &common::restored(&target, &w.data));

    // The main repository is whole too.
    let mut c = bare_command();
    c.arg("--repo").arg(&w.main).arg("--password-file").arg(&w.password_file).arg("check");
    assert_code(&run(c), 0, "--repo main check");

    // ---- 7. clean up (the guards also do this when something above fails)
    drop(daemon2);
    eprintln!("done in {} s", started.elapsed().as_secs());
}
