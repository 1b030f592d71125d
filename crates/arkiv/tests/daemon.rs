//! The daemon (`arkiv serve`) driven as an operator drives it: the HTTP API
//! with its tokens, roles and limits, jobs run, retried, timed out,
//! cancelled and interrupted, stops by SIGTERM and by `kill -9`, the audit
//! chain, `config check`, TLS and the token commands.
//!
//! Every test starts its own daemon on a free loopback port with its own
//! temporary directory, repository and catalog. The [`Daemon`] guard kills
//! the daemon and every process it started when the test ends, also when it
//! panics. Nothing waits a fixed time for something that can be polled.

mod common;

use std::cell::Cell;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use common::garage::{find_executable, free_port};
use common::{assert_code, bare_command, random_files, stderr, stdout, Scratch, FAST_KDF, PASSWORD};
use serde_json::{json, Value};

const ADMIN: &str = "admin-token-0123456789abcdefghij";
const OPERATOR: &str = "operator-token-0123456789abcdefgh";
const VIEWER: &str = "viewer-token-0123456789abcdefghij";
/// Well-formed, but no such token exists.
const WRONG: &str = "arkiv_0000000000000000000000000000000000000000000000000000000000000000";

/// Daemon settings most tests share; a test adds its own lines after them.
const DAEMON_DEFAULTS: &str = "max_concurrent_jobs = 2\nshutdown_grace = \"2s\"\nauth_failures_per_minute = 1000";

// ---------------------------------------------------------------- polling

/// Polls `f` every 50 ms until it gives a value; panics after `timeout`
/// with the last thing it reported.
fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) => {
                if start.elapsed() > timeout {
                    panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------- HTTP

#[derive(Debug)]
struct Resp {
    status: u16,
    body: String,
    content_type: String,
    www_authenticate: Option<String>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("response ({}) is not JSON: {e}\n{}", self.status, self.body))
    }

    /// Asserts an error response: JSON with exactly one key, `error`, whose
    /// value is one non-empty line.
    fn assert_error(&self, status: u16, what: &str) -> String {
        assert_eq!(self.status, status, "{what}: {}", self.body);
        assert!(
            self.content_type.starts_with("application/json"),
            "{what}: content type {:?}: {}",
            self.content_type,
            self.body
        );
        let v = self.json();
        let obj = v.as_object().unwrap_or_else(|| panic!("{what}: not an object: {v}"));
        assert_eq!(obj.len(), 1, "{what}: only an error: {v}");
        let e = v["error"].as_str().unwrap_or_else(|| panic!("{what}: no error string: {v}"));
        assert!(!e.trim().is_empty() && !e.contains('\n'), "{what}: error is not one line: {e:?}");
        e.to_string()
    }
}

/// One request on a fresh connection (daemons restart on the same port, so
/// no connection is pooled); a transport failure is `Err`.
fn try_http(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> Result<Resp, String> {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(20)).max_idle_connections(0).build();
    let mut req = agent.request(method, url);
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let res = match body {
        Some(b) => req.set("Content-Type", "application/json").send_string(b),
        None => req.call(),
    };
    let resp = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(format!("{method} {url}: {e}")),
    };
    let status = resp.status();
    let content_type = resp.header("content-type").unwrap_or("").to_string();
    let www_authenticate = resp.header("www-authenticate").map(String::from);
    let body = resp.into_string().map_err(|e| format!("{method} {url}: reading the body: {e}"))?;
    Ok(Resp { status, body, content_type, www_authenticate })
}

fn http(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> Resp {
    try_http(method, url, token, body).unwrap_or_else(|e| panic!("{e}"))
}

// ---------------------------------------------------------------- processes

struct Proc {
    pid: i32,
    ppid: i32,
    pgid: i32,
    zombie: bool,
    cmdline: String,
}

/// Every process of the machine, from /proc.
fn processes() -> Vec<Proc> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else { return out };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else { continue };
        // "pid (comm) S ppid pgrp ...": comm may hold spaces and parentheses.
        let Some(close) = stat.rfind(')') else { continue };
        let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if rest.len() < 3 {
            continue;
        }
        let cmdline = fs::read(e.path().join("cmdline"))
            .map(|b| {
                b.split(|c| *c == 0)
                    .filter(|p| !p.is_empty())
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        out.push(Proc {
            pid,
            ppid: rest[1].parse().unwrap_or(0),
            pgid: rest[2].parse().unwrap_or(0),
            zombie: rest[0] == "Z" || rest[0] == "X",
            cmdline,
        });
    }
    out
}

/// The live (not zombie) descendants of `pid`, with their command lines.
fn descendants(pid: i32) -> Vec<(i32, String)> {
    let all = processes();
    let mut out: Vec<(i32, String)> = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for c in all.iter().filter(|c| c.ppid == p) {
            frontier.push(c.pid);
            if !c.zombie {
                out.push((c.pid, c.cmdline.clone()));
            }
        }
    }
    out
}

/// Whether `pid` still runs `cmdline` (not gone, not a zombie, not reused).
fn still_running(pid: i32, cmdline: &str) -> bool {
    processes().iter().any(|p| p.pid == pid && !p.zombie && p.cmdline == cmdline)
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: signalling one process this test started, by its id.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// The process groups of `pids` other than this test's own: each job runs
/// in a group of its own, which holds the dump command it started too.
fn job_groups(pids: &[(i32, String)]) -> Vec<i32> {
    // SAFETY: getpgrp has no preconditions.
    let own = unsafe { libc::getpgrp() };
    let mut out: Vec<i32> = processes()
        .iter()
        .filter(|p| pids.iter().any(|(pid, _)| *pid == p.pid) && p.pgid > 1 && p.pgid != own)
        .map(|p| p.pgid)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// SIGKILL to each job group that still has a live member.
fn kill_groups(groups: &[i32]) {
    let all = processes();
    for g in groups {
        if all.iter().any(|p| p.pgid == *g && !p.zombie) {
            // SAFETY: a process group made by a job of a daemon this test started.
            unsafe {
                libc::kill(-g, libc::SIGKILL);
            }
        }
    }
}

/// Processes a test started (through a daemon) that may outlive it: their
/// job groups, and each of them by id if it still runs the same command,
/// are killed when the test ends.
struct Reaper {
    tree: Vec<(i32, String)>,
    groups: Vec<i32>,
}

impl Reaper {
    fn new(tree: &[(i32, String)]) -> Reaper {
        Reaper { groups: job_groups(tree), tree: tree.to_vec() }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        kill_groups(&self.groups);
        for (pid, cmd) in &self.tree {
            if still_running(*pid, cmd) {
                signal(*pid, libc::SIGKILL);
            }
        }
    }
}

// ---------------------------------------------------------------- set-up

/// A test's directory: a repository (fast key derivation) with its password
/// file, a token file per role, some files to back up, and a configuration.
struct Setup {
    s: Scratch,
    port: u16,
    config: PathBuf,
    catalog: PathBuf,
    data: PathBuf,
    starts: Cell<u32>,
}

impl Setup {
    fn new() -> Setup {
        let s = Scratch::new();
        fs::write(s.join("pw"), format!("{PASSWORD}\n")).unwrap();
        for (role, token) in [("admin", ADMIN), ("operator", OPERATOR), ("viewer", VIEWER)] {
            fs::write(s.join(format!("{role}.token")), format!("{token}\n")).unwrap();
        }
        let data = s.join("data");
        random_files(&data, 7, 5, 10_000);
        let config = s.join("arkiv.toml");
        let catalog = s.join("state/catalog.db");
        Setup { port: free_port(), config, catalog, data, s, starts: Cell::new(0) }
    }

    fn dir(&self) -> &Path {
        self.s.path()
    }

    /// The configuration text: `[daemon]` with `daemon` added, the three
    /// users, the repository `main`, the source `files`, then `rest`.
    fn config_text(&self, daemon: &str, rest: &str) -> String {
        let d = self.dir().display();
        format!(
            r#"[daemon]
listen = "127.0.0.1:{port}"
catalog = "{catalog}"
{daemon}

[users.admin]
role = "admin"
token_file = "{d}/admin.token"

[users.operator]
role = "operator"
token_file = "{d}/operator.token"

[users.viewer]
role = "viewer"
token_file = "{d}/viewer.token"

[repositories.main]
url = "{repo}"
password_file = "{d}/pw"

[sources.files]
paths = ["{data}"]
rpo = "1h"

{rest}
"#,
            port = self.port,
            catalog = self.catalog.display(),
            repo = self.s.repo.display(),
            data = self.data.display(),
        )
    }

    fn write_config(&self, daemon: &str, rest: &str) {
        fs::write(&self.config, self.config_text(daemon, rest)).unwrap();
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The binary with `--config` set.
    fn cli(&self, args: &[&str]) -> Output {
        let mut c = bare_command();
        c.env_remove("ARKIV_CONFIG").arg("-c").arg(&self.config).args(args);
        common::run(c)
    }

    /// Starts `arkiv serve` and waits until /readyz answers 200.
    fn start(&self) -> Daemon {
        let d = self.spawn();
        wait_for("the daemon to listen", Duration::from_secs(30), || {
            d.check_alive()?;
            if d.log().contains("arkiv: serving on http://") {
                Ok(())
            } else {
                Err(d.log())
            }
        });
        wait_for("/readyz to answer 200", Duration::from_secs(30), || {
            d.check_alive()?;
            match try_http("GET", &self.url("/readyz"), None, None) {
                Ok(r) if r.status == 200 => Ok(()),
                Ok(r) => Err(format!("{} {}", r.status, r.body)),
                Err(e) => Err(e),
            }
        });
        d
    }

    /// Starts `arkiv serve` without waiting; its standard error goes to a
    /// file of its own.
    fn spawn(&self) -> Daemon {
        self.spawn_with(&self.config)
    }

    /// `arkiv serve` with another configuration file.
    fn spawn_with(&self, config: &Path) -> Daemon {
        let n = self.starts.get() + 1;
        self.starts.set(n);
        let log = self.s.join(format!("daemon-{n}.log"));
        let err = fs::File::create(&log).unwrap();
        let mut c = bare_command();
        c.env_remove("ARKIV_CONFIG").arg("-c").arg(config).arg("serve").stdout(Stdio::null()).stderr(err);
        let child = c.spawn().expect("starting arkiv serve");
        Daemon { pid: child.id() as i32, child: Some(child), log }
    }

    /// `arkiv audit verify`.
    fn audit_verify(&self) -> Output {
        self.cli(&["audit", "verify"])
    }
}

/// A running `arkiv serve`; killed with everything it started when dropped.
struct Daemon {
    child: Option<Child>,
    pid: i32,
    log: PathBuf,
}

impl Daemon {
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with the daemon's log once it has exited (for polls that
    /// wait on a daemon that should be running).
    fn check_alive(&self) -> Result<(), String> {
        // A shared borrow cannot call try_wait; /proc tells the same.
        let alive = processes().iter().any(|p| p.pid == self.pid && !p.zombie);
        if alive {
            Ok(())
        } else {
            panic!("the daemon exited early; its log:\n{}", self.log())
        }
    }

    fn sigterm(&self) {
        signal(self.pid, libc::SIGTERM);
    }

    /// Waits for the daemon to exit by itself.
    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("the daemon runs");
        let status = wait_for("the daemon to exit", timeout, || match child.try_wait() {
            Ok(Some(s)) => Ok(s),
            Ok(None) => Err("still running".into()),
            Err(e) => Err(e.to_string()),
        });
        self.child = None;
        status
    }

    /// `kill -9` of the daemon alone: what it started is left to itself.
    fn kill9(&mut self) {
        let mut child = self.child.take().expect("the daemon runs");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- daemon log {} ---\n{}", self.log.display(), self.log());
        }
        let Some(mut child) = self.child.take() else { return };
        // Stopped, the daemon starts nothing more; its jobs' groups hold
        // whatever they are starting right now. The tree is read before
        // the daemon goes: its children's children are then no longer
        // found below it.
        signal(self.pid, libc::SIGSTOP);
        let tree = descendants(self.pid);
        kill_groups(&job_groups(&tree));
        for (pid, cmd) in tree.iter().rev() {
            if still_running(*pid, cmd) {
                signal(*pid, libc::SIGKILL);
            }
        }
        signal(self.pid, libc::SIGKILL);
        let _ = child.wait();
    }
}

// ---------------------------------------------------------------- jobs

fn trigger(st: &Setup, token: &str, job: &str) -> Value {
    let r = http("POST", &st.url("/v1/jobs"), Some(token), Some(&json!({ "job": job }).to_string()));
    assert_eq!(r.status, 202, "POST /v1/jobs {job}: {}", r.body);
    let v = r.json();
    assert_eq!(v["job"], job);
    // The scheduler may already have started it when the answer is read.
    assert!(v["status"] == "queued" || v["status"] == "running", "{v}");
    assert_eq!(v["trigger"], "api", "{v}");
    v
}

fn get_run(st: &Setup, id: i64) -> Value {
    let r = http("GET", &st.url(&format!("/v1/jobs/{id}")), Some(VIEWER), None);
    assert_eq!(r.status, 200, "GET /v1/jobs/{id}: {}", r.body);
    r.json()
}

fn id_of(run: &Value) -> i64 {
    run["id"].as_i64().unwrap_or_else(|| panic!("no run id in {run}"))
}

/// Waits until run `id` has one of `statuses`.
fn wait_status(st: &Setup, id: i64, statuses: &[&str], timeout: Duration) -> Value {
    wait_for(&format!("run {id} to be {statuses:?}"), timeout, || {
        let v = get_run(st, id);
        if statuses.iter().any(|s| v["status"] == *s) {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    })
}

/// Runs of the daemon, newest first, as `GET /v1/jobs?QUERY` lists them.
fn list_runs(st: &Setup, query: &str) -> Vec<Value> {
    let r = http("GET", &st.url(&format!("/v1/jobs?{query}")), Some(VIEWER), None);
    assert_eq!(r.status, 200, "GET /v1/jobs?{query}: {}", r.body);
    r.json().as_array().expect("an array of runs").clone()
}

/// Waits until run `id` runs and its command (`marker`, e.g. `sleep 3006`)
/// has started below the daemon; returns the job's process tree.
fn wait_running_with(st: &Setup, d: &Daemon, id: i64, marker: &str) -> Vec<(i32, String)> {
    wait_status(st, id, &["running"], Duration::from_secs(20));
    wait_for(&format!("'{marker}' to run below the daemon"), Duration::from_secs(20), || {
        let tree = descendants(d.pid);
        if tree.iter().any(|(_, c)| c == marker) {
            Ok(tree)
        } else {
            Err(format!("{tree:?}"))
        }
    })
}

fn cancel(st: &Setup, token: &str, id: i64) -> Resp {
    http("POST", &st.url(&format!("/v1/jobs/{id}/cancel")), Some(token), Some(""))
}

/// The value of the metric line that starts with `series` (name and labels).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

fn metrics(st: &Setup) -> String {
    let r = http("GET", &st.url("/metrics"), None, None);
    assert_eq!(r.status, 200, "/metrics: {}", r.body);
    r.body
}

fn wait_metric(st: &Setup, series: &str, want: f64) {
    wait_for(&format!("{series} to be {want}"), Duration::from_secs(20), || {
        let text = metrics(st);
        match metric(&text, series) {
            Some(v) if v == want => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
}

// ---------------------------------------------------------------- sqlite3

/// The `sqlite3` program, if installed (the tests that edit the catalog
/// behind the daemon's back skip that part without it).
fn sqlite3() -> Option<PathBuf> {
    let p = find_executable("sqlite3");
    if p.is_none() {
        eprintln!("sqlite3 is not installed: the catalog is not edited or read directly in this test");
    }
    p
}

fn sql(bin: &Path, db: &Path, statement: &str) -> String {
    let out = Command::new(bin)
        .arg("-cmd")
        .arg(".timeout 10000")
        .arg(db)
        .arg(statement)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "sqlite3 {statement}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

// ================================================================ tests

/// Every route with no token, a wrong token and each role: exactly the
/// status the role allows; the public routes need none; the OpenAPI
/// document lists every route.
#[test]
fn every_route_answers_each_role_with_exactly_its_status() {
    let st = Setup::new();
    st.write_config(
        DAEMON_DEFAULTS,
        r#"
[sources.blocker]
url = "command:sleep 3001"

[sources.slow]
url = "command:sleep 3001"
"#,
    );
    let d = st.start();

    // Public routes: no token needed.
    for path in ["/healthz", "/readyz", "/metrics", "/v1/openapi.json"] {
        let r = http("GET", &st.url(path), None, None);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    assert_eq!(http("GET", &st.url("/healthz"), None, None).json()["status"], "ok");
    assert!(metrics(&st).contains("arkiv_jobs_running"));

    // A finished run (for its record and log), then a run holding the
    // repository's only slot, so that every run queued below stays queued
    // and can be cancelled without a race.
    let done = id_of(&trigger(&st, ADMIN, "backup:files"));
    wait_status(&st, done, &["succeeded"], Duration::from_secs(30));
    let blocker = id_of(&trigger(&st, ADMIN, "backup:blocker"));
    wait_status(&st, blocker, &["running"], Duration::from_secs(20));

    let callers: [(&str, Option<&str>); 5] = [
        ("no token", None),
        ("wrong token", Some(WRONG)),
        ("viewer", Some(VIEWER)),
        ("operator", Some(OPERATOR)),
        ("admin", Some(ADMIN)),
    ];
    let expect = |needed: &str, ok: u16| -> [u16; 5] {
        match needed {
            "viewer" => [401, 401, ok, ok, ok],
            "operator" => [401, 401, 403, ok, ok],
            "admin" => [401, 401, 403, 403, ok],
            _ => unreachable!(),
        }
    };
    let check = |method: &str, path: &str, caller: &str, r: &Resp, want: u16| {
        assert_eq!(r.status, want, "{method} {path} as {caller}: {}", r.body);
        if want == 401 {
            r.assert_error(401, &format!("{method} {path} as {caller}"));
            assert_eq!(r.www_authenticate.as_deref(), Some("Bearer"), "{method} {path} as {caller}");
        } else if want == 403 {
            let e = r.assert_error(403, &format!("{method} {path} as {caller}"));
            assert!(e.contains("needs"), "{e}");
        }
    };
    let mut tested: Vec<(&str, String)> = Vec::new();

    // Reads.
    let reads: [(&str, &str); 11] = [
        ("/v1/sources", "viewer"),
        ("/v1/sources/files", "viewer"),
        ("/v1/snapshots", "viewer"),
        ("/v1/jobs", "viewer"),
        ("/v1/jobs/{id}", "viewer"),
        ("/v1/jobs/{id}/log", "viewer"),
        ("/v1/repositories", "viewer"),
        ("/v1/repositories/main", "viewer"),
        ("/v1/audit", "admin"),
        ("/v1/audit/verify", "admin"),
        ("/v1/tokens", "admin"),
    ];
    for (route, needed) in reads {
        let path = route.replace("{id}", &done.to_string());
        for ((caller, token), want) in callers.iter().zip(expect(needed, 200)) {
            let r = http("GET", &st.url(&path), *token, None);
            check("GET", &path, caller, &r, want);
            if want == 200 {
                if route.ends_with("/log") {
                    assert!(r.body.contains("exit: 0"), "{}", r.body);
                } else {
                    let _ = r.json();
                }
            }
        }
        tested.push(("get", route.replace("files", "{name}").replace("main", "{name}")));
    }

    // Requests that queue a run: each accepted run is cancelled at once
    // (it is still queued behind the blocker), so the next is not a 409.
    let restore_target = st.s.join("restored");
    let posts: [(&str, String); 3] = [
        ("/v1/jobs", json!({ "job": "backup:slow" }).to_string()),
        (
            "/v1/restores",
            json!({ "repository": "main", "snapshot": "latest", "target": restore_target.display().to_string() })
                .to_string(),
        ),
        ("/v1/verifies", json!({ "source": "files" }).to_string()),
    ];
    for (path, body) in &posts {
        for ((caller, token), want) in callers.iter().zip(expect("operator", 202)) {
            let r = http("POST", &st.url(path), *token, Some(body));
            check("POST", path, caller, &r, want);
            if want == 202 {
                let run = r.json();
                assert_eq!(run["status"], "queued", "{run}");
                assert_eq!(run["trigger"], "api");
                assert_eq!(run["requested_by"], *caller);
                // The same job again while it is queued: 409.
                let again = http("POST", &st.url(path), *token, Some(body));
                again.assert_error(409, &format!("POST {path} twice"));
                let c = cancel(&st, ADMIN, id_of(&run));
                assert_eq!(c.status, 202, "{}", c.body);
                assert_eq!(get_run(&st, id_of(&run))["status"], "cancelled");
            }
        }
        tested.push(("post", path.to_string()));
    }

    // Cancel: a queued run for each caller; refused callers leave it queued.
    let mut queued = id_of(&trigger(&st, ADMIN, "backup:slow"));
    for ((caller, token), want) in callers.iter().zip(expect("operator", 202)) {
        let path = format!("/v1/jobs/{queued}/cancel");
        let r = http("POST", &st.url(&path), *token, Some(""));
        check("POST", &path, caller, &r, want);
        if want == 202 {
            assert_eq!(r.json()["status"], "cancelled", "{}", r.body);
            // Cancelling a finished run is a conflict.
            cancel(&st, ADMIN, queued).assert_error(409, "cancelling a cancelled run");
            queued = id_of(&trigger(&st, ADMIN, "backup:slow"));
        } else {
            assert_eq!(get_run(&st, queued)["status"], "queued", "a refused cancel changes nothing");
        }
    }
    assert_eq!(cancel(&st, ADMIN, queued).status, 202);
    tested.push(("post", "/v1/jobs/{id}/cancel".into()));

    // Tokens: create, then revoke.
    for ((caller, token), want) in callers.iter().zip(expect("admin", 201)) {
        let body = json!({ "name": "made-by-api", "role": "viewer" }).to_string();
        let r = http("POST", &st.url("/v1/tokens"), *token, Some(&body));
        check("POST", "/v1/tokens", caller, &r, want);
        if want == 201 {
            let t = r.json();
            assert_eq!((t["name"].as_str(), t["role"].as_str()), (Some("made-by-api"), Some("viewer")));
            let new = t["token"].as_str().unwrap().to_string();
            assert_eq!(http("GET", &st.url("/v1/sources"), Some(&new), None).status, 200, "the new token works");
            assert_eq!(http("GET", &st.url("/v1/tokens"), Some(&new), None).status, 403, "as a viewer");
        }
    }
    tested.push(("post", "/v1/tokens".into()));
    for ((caller, token), want) in callers.iter().zip(expect("admin", 204)) {
        let r = http("DELETE", &st.url("/v1/tokens/made-by-api"), *token, None);
        check("DELETE", "/v1/tokens/made-by-api", caller, &r, want);
    }
    http("DELETE", &st.url("/v1/tokens/made-by-api"), Some(ADMIN), None).assert_error(404, "revoking twice");
    tested.push(("delete", "/v1/tokens/{name}".into()));

    // Another scheme than Bearer is a 401 as well.
    let agent = ureq::AgentBuilder::new().max_idle_connections(0).build();
    match agent.get(&st.url("/v1/sources")).set("Authorization", &format!("Basic {ADMIN}")).call() {
        Err(ureq::Error::Status(401, _)) => {}
        other => panic!("Basic authentication: {other:?}"),
    }

    // A queued run has no log yet.
    let q = id_of(&trigger(&st, ADMIN, "backup:slow"));
    http("GET", &st.url(&format!("/v1/jobs/{q}/log")), Some(VIEWER), None).assert_error(404, "the log of a queued run");
    assert_eq!(cancel(&st, ADMIN, q).status, 202);

    assert_eq!(cancel(&st, ADMIN, blocker).status, 202);
    wait_status(&st, blocker, &["cancelled"], Duration::from_secs(15));

    // The OpenAPI document lists every route tested, with its method.
    let doc = http("GET", &st.url("/v1/openapi.json"), None, None).json();
    let paths = doc["paths"].as_object().expect("paths");
    for (method, path) in &tested {
        let p = paths
            .get(path.as_str())
            .unwrap_or_else(|| panic!("{path} missing from the OpenAPI document: {:?}", paths.keys()));
        assert!(p.get(*method).is_some(), "{method} {path} missing from the OpenAPI document: {p}");
    }
    drop(d);
}

/// Too many failed authentications from one address: 429, then even a good
/// token is refused for the rest of the minute.
#[test]
fn failed_authentications_are_rate_limited_per_address() {
    let st = Setup::new();
    st.write_config("auth_failures_per_minute = 3", "");
    let _d = st.start();
    assert_eq!(http("GET", &st.url("/v1/sources"), Some(ADMIN), None).status, 200);
    for i in 1..=3 {
        http("GET", &st.url("/v1/sources"), Some(WRONG), None).assert_error(401, &format!("wrong token {i}"));
    }
    let e = http("GET", &st.url("/v1/sources"), Some(WRONG), None).assert_error(429, "the 4th wrong token");
    assert!(e.contains("too many"), "{e}");
    http("GET", &st.url("/v1/sources"), Some(ADMIN), None).assert_error(429, "a good token within the minute");
    http("POST", &st.url("/v1/jobs"), Some(ADMIN), Some(r#"{"job":"backup:files"}"#)).assert_error(429, "a POST");
    // The public routes are not behind authentication.
    assert_eq!(http("GET", &st.url("/healthz"), None, None).status, 200);
    let m = metrics(&st);
    assert_eq!(metric(&m, "arkiv_api_auth_failures_total"), Some(3.0), "{m}");
    assert!(runs_in_catalog(&st) == 0, "the refused POST queued nothing");
}

/// Runs in the catalog, read without the API (which refuses this address).
fn runs_in_catalog(st: &Setup) -> usize {
    match sqlite3() {
        Some(bin) => sql(&bin, &st.catalog, "SELECT count(*) FROM job_runs").parse().unwrap(),
        None => 0,
    }
}

/// Malformed requests get a 4xx with a one-line JSON error, queue nothing,
/// and the daemon goes on serving.
#[test]
fn malformed_requests_get_one_line_json_errors_and_change_nothing() {
    let st = Setup::new();
    st.write_config(&format!("{DAEMON_DEFAULTS}\nmax_body_bytes = 4096"), "");
    let _d = st.start();
    let big = json!({ "job": "backup:files", "pad": "x".repeat(8000) }).to_string();
    let target = st.s.join("r").display().to_string();
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("/v1/jobs", r#"{"job":"#.into(), 400, "malformed"),
        ("/v1/jobs", "not json at all".into(), 400, "malformed"),
        ("/v1/jobs", String::new(), 400, "malformed"),
        ("/v1/jobs", r#"{"job":"backup:files","when":"now"}"#.into(), 400, "unknown field"),
        ("/v1/jobs", r#"{"job":42}"#.into(), 400, "invalid type"),
        ("/v1/jobs", r#"{}"#.into(), 400, "missing field"),
        ("/v1/jobs", big, 413, "limit"),
        ("/v1/jobs", r#"{"job":"backup:nope"}"#.into(), 404, "backup:nope"),
        ("/v1/jobs", r#"{"job":"nonsense"}"#.into(), 404, "nonsense"),
        ("/v1/jobs", r#"{"job":"restore:main"}"#.into(), 400, "/v1/restores"),
        (
            "/v1/restores",
            json!({ "repository": "main", "snapshot": "-x", "target": target }).to_string(),
            400,
            "snapshot",
        ),
        (
            "/v1/restores",
            json!({ "repository": "main", "snapshot": "--help", "target": target }).to_string(),
            400,
            "snapshot",
        ),
        (
            "/v1/restores",
            json!({ "repository": "main", "snapshot": "latest", "target": "--overwrite" }).to_string(),
            400,
            "target",
        ),
        (
            "/v1/restores",
            json!({ "repository": "nope", "snapshot": "latest", "target": target }).to_string(),
            404,
            "nope",
        ),
        // A command target would run a shell command as the daemon's user.
        (
            "/v1/restores",
            json!({ "repository": "main", "snapshot": "latest", "target": "command:id > /tmp/pwned" }).to_string(),
            400,
            "command: restore target is refused",
        ),
        (
            "/v1/restores",
            json!({ "repository": "main", "snapshot": "latest", "target": "postgres://app:secret@db/x" }).to_string(),
            400,
            "password in the target URL",
        ),
        (
            "/v1/restores",
            json!({ "repository": "main", "snapshot": "latest", "target": target, "force": true }).to_string(),
            400,
            "unknown field",
        ),
        ("/v1/verifies", json!({ "source": "files", "snapshot": "-x" }).to_string(), 400, "snapshot"),
        ("/v1/verifies", json!({ "source": "nope" }).to_string(), 404, "nope"),
        ("/v1/tokens", json!({ "name": "x", "role": "root" }).to_string(), 400, "malformed"),
        ("/v1/tokens", json!({ "name": "a b", "role": "viewer" }).to_string(), 400, "token name"),
    ];
    for (path, body, status, mention) in &cases {
        let what = format!("POST {path} {}", if body.len() > 100 { "(a large body)" } else { body });
        let e = http("POST", &st.url(path), Some(ADMIN), Some(body)).assert_error(*status, &what);
        assert!(e.contains(mention), "{what}: the error should mention {mention:?}: {e}");
        assert_eq!(http("GET", &st.url("/v1/sources"), Some(VIEWER), None).status, 200, "serving after {what}");
    }
    let gets: [(&str, u16); 4] = [
        ("/v1/jobs?status=bogus", 400),
        ("/v1/jobs/999999", 404),
        ("/v1/sources/nope", 404),
        ("/v1/no-such-route", 404),
    ];
    for (path, status) in gets {
        http("GET", &st.url(path), Some(ADMIN), None).assert_error(status, path);
    }
    assert!(list_runs(&st, "").is_empty(), "nothing was queued");
    let audit = http("GET", &st.url("/v1/audit"), Some(ADMIN), None).json();
    let actions: Vec<&str> = audit.as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).collect();
    assert_eq!(actions, ["daemon.start"], "refused requests are not audited as done");
}

/// PRODUCT BUG (open): the API's errors are JSON `{"error"}` (the OpenAPI
/// document says so for these very routes), but a path or query parameter
/// that does not parse is answered by axum's own rejection, in
/// `text/plain` (`Invalid URL: Cannot parse `abc` to a `i64``,
/// `Failed to deserialize query string: ...`). Until 1501760 it was also
/// answered before authentication (400 instead of 401 without a token).
#[test]
fn unparsable_path_and_query_parameters_get_json_errors() {
    let st = Setup::new();
    st.write_config(DAEMON_DEFAULTS, "");
    let _d = st.start();
    for path in ["/v1/jobs/abc", "/v1/jobs/abc/log", "/v1/jobs?limit=abc", "/v1/jobs?before=x", "/v1/audit?after=x"] {
        http("GET", &st.url(path), Some(ADMIN), None).assert_error(400, path);
    }
    http("POST", &st.url("/v1/jobs/abc/cancel"), Some(ADMIN), Some("")).assert_error(400, "POST /v1/jobs/abc/cancel");
    http("POST", &st.url("/v1/jobs/abc/cancel"), None, Some(""))
        .assert_error(401, "POST /v1/jobs/abc/cancel without a token");
}

/// A backup through the API: its record, log, source status, snapshot list
/// and metrics; replication queued after it; every series at zero before.
#[test]
fn a_backup_through_the_api_is_recorded_everywhere() {
    let st = Setup::new();
    // A replica, so that replication follows the backup.
    let second = st.s.join("second");
    let mut init = bare_command();
    init.env("ARKIV_PASSWORD", PASSWORD).args(["init", "--repo"]).arg(&second).args(FAST_KDF);
    assert_code(&common::run(init), 0, "init second");
    let config = st.config_text(DAEMON_DEFAULTS, &format!(
        "[sources.cmd]\nurl = \"command:echo hello\"\n\n[repositories.second]\nurl = \"{}\"\npassword_file = \"{}/pw\"\n",
        second.display(),
        st.dir().display()
    ));
    let config = config.replacen("[repositories.main]\n", "[repositories.main]\nreplicas = [\"second\"]\n", 1);
    fs::write(&st.config, &config).unwrap();
    let check = st.cli(&["--json", "config", "check"]);
    assert_code(&check, 0, "config check");
    let jobs: Vec<String> = common::parse_json(&check)["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j.as_str().unwrap().to_string())
        .collect();
    assert!(jobs.contains(&"replicate:main:second".to_string()), "{jobs:?}");

    let _d = st.start();

    // Every series of every source, job, repository and replica at 0.
    let m = metrics(&st);
    for source in ["files", "cmd"] {
        for series in [
            format!("arkiv_backup_last_success_timestamp_seconds{{source=\"{source}\"}}"),
            format!("arkiv_backup_duration_seconds_count{{source=\"{source}\"}}"),
            format!("arkiv_backup_bytes_total{{source=\"{source}\"}}"),
        ] {
            assert_eq!(metric(&m, &series), Some(0.0), "{series} in\n{m}");
        }
    }
    assert_eq!(metric(&m, "arkiv_source_rpo_seconds{source=\"files\"}"), Some(3600.0), "{m}");
    assert_eq!(metric(&m, "arkiv_source_rpo_seconds{source=\"cmd\"}"), Some(0.0), "{m}");
    for job in &jobs {
        let series = format!("arkiv_job_failures_total{{job=\"{job}\"}}");
        assert_eq!(metric(&m, &series), Some(0.0), "{series} in\n{m}");
        for status in ["succeeded", "partial", "failed", "cancelled", "interrupted"] {
            let series = format!("arkiv_job_runs_total{{job=\"{job}\",status=\"{status}\"}}");
            assert_eq!(metric(&m, &series), Some(0.0), "{series} in\n{m}");
        }
    }
    for repo in ["main", "second"] {
        for name in ["arkiv_repository_size_bytes", "arkiv_repository_snapshots"] {
            let series = format!("{name}{{repository=\"{repo}\"}}");
            assert!(metric(&m, &series).is_some(), "{series} in\n{m}");
        }
    }
    for name in ["arkiv_replication_lag_seconds", "arkiv_replication_missing_snapshots"] {
        let series = format!("{name}{{repository=\"main\",replica=\"second\"}}");
        assert!(metric(&m, &series).is_some(), "{series} in\n{m}");
    }
    assert_eq!(metric(&m, "arkiv_jobs_running"), Some(0.0));
    assert_eq!(metric(&m, "arkiv_jobs_queued"), Some(0.0));

    let before = http("GET", &st.url("/v1/sources/files"), Some(VIEWER), None).json();
    assert_eq!(before["last_success"], Value::Null);
    assert_eq!(before["rpo_met"], false, "no backup yet: the RPO is not met");

    let id = id_of(&trigger(&st, OPERATOR, "backup:files"));
    let run = wait_status(&st, id, &["succeeded"], Duration::from_secs(30));
    let snapshot = run["snapshot"].as_str().unwrap_or_else(|| panic!("no snapshot: {run}")).to_string();
    assert_eq!(snapshot.len(), 64, "{run}");
    assert_eq!(run["bytes"].as_u64(), Some(50_000), "{run}");
    assert_eq!(run["files"].as_u64(), Some(5), "{run}");
    assert_eq!(
        (run["kind"].as_str(), run["target"].as_str(), run["attempt"].as_u64()),
        (Some("backup"), Some("files"), Some(1))
    );
    assert_eq!(run["requested_by"], "operator");
    assert!(run["started_at"].is_string() && run["ended_at"].is_string(), "{run}");
    assert_eq!(run["error"], Value::Null);

    let log = http("GET", &st.url(&format!("/v1/jobs/{id}/log")), Some(VIEWER), None);
    assert_eq!(log.status, 200);
    assert!(log.content_type.starts_with("text/plain"), "{}", log.content_type);
    assert!(
        log.body.contains(&format!("$ arkiv --config {}", fs::canonicalize(&st.config).unwrap().display())),
        "{}",
        log.body
    );
    assert!(log.body.contains("backup --source files"), "{}", log.body);
    assert!(log.body.lines().any(|l| l == "exit: 0"), "{}", log.body);

    let src = http("GET", &st.url("/v1/sources/files"), Some(VIEWER), None).json();
    assert_eq!(src["last_success"], run["ended_at"], "{src}");
    assert_eq!(src["rpo_met"], true, "{src}");
    assert_eq!(src["last_run"]["id"], id);
    assert_eq!(src["running"], false);
    assert_eq!(src["kind"], "files");
    assert_eq!(src["repository"], "main");
    let all = http("GET", &st.url("/v1/sources"), Some(VIEWER), None).json();
    let names: Vec<&str> = all.as_array().unwrap().iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, ["cmd", "files"]);

    // The snapshot list is refreshed after the run.
    wait_for("the snapshot in /v1/snapshots", Duration::from_secs(20), || {
        let r = http("GET", &st.url("/v1/snapshots?repository=main&source=files"), Some(VIEWER), None).json();
        if r.as_array().unwrap().iter().any(|s| s["id"] == snapshot.as_str()) {
            Ok(())
        } else {
            Err(r.to_string())
        }
    });
    let ts = wait_for("the last-success metric", Duration::from_secs(20), || {
        match metric(&metrics(&st), "arkiv_backup_last_success_timestamp_seconds{source=\"files\"}") {
            Some(v) if v > 0.0 => Ok(v),
            other => Err(format!("{other:?}")),
        }
    });
    let ended = chrono::DateTime::parse_from_rfc3339(run["ended_at"].as_str().unwrap()).unwrap().timestamp_millis()
        as f64
        / 1000.0;
    assert!((ts - ended).abs() < 0.01, "metric {ts} vs ended_at {ended}");
    wait_metric(&st, "arkiv_job_runs_total{job=\"backup:files\",status=\"succeeded\"}", 1.0);
    let m = metrics(&st);
    assert_eq!(metric(&m, "arkiv_backup_bytes_total{source=\"files\"}"), Some(50_000.0));
    assert_eq!(metric(&m, "arkiv_backup_duration_seconds_count{source=\"files\"}"), Some(1.0));
    assert_eq!(metric(&m, "arkiv_job_failures_total{job=\"backup:files\"}"), Some(0.0));

    // Replication was queued by the backup and copies the snapshot.
    let rep = wait_for("replication after the backup", Duration::from_secs(20), || {
        list_runs(&st, "job=replicate:main:second").into_iter().next().ok_or_else(|| "no run yet".to_string())
    });
    assert_eq!(rep["trigger"], "after-backup", "{rep}");
    let rep = wait_status(&st, id_of(&rep), &["succeeded", "failed"], Duration::from_secs(30));
    assert_eq!(rep["status"], "succeeded", "{rep}");
    let copied = common::run({
        let mut c = bare_command();
        c.env("ARKIV_REPO", &second).env("ARKIV_PASSWORD", PASSWORD).args(["--json", "snapshots"]);
        c
    });
    assert_code(&copied, 0, "snapshots of the replica");
    assert_eq!(common::parse_json(&copied).as_array().map(|a| a.len()), Some(1), "{}", stdout(&copied));

    let repos = http("GET", &st.url("/v1/repositories/main"), Some(VIEWER), None).json();
    assert_eq!(repos["replicas"], json!(["second"]), "{repos}");

    // A restore and a test restore through the API, as jobs.
    let target = st.s.join("restored");
    let body = json!({ "repository": "main", "snapshot": snapshot, "target": target.display().to_string() });
    let r = http("POST", &st.url("/v1/restores"), Some(OPERATOR), Some(&body.to_string()));
    assert_eq!(r.status, 202, "{}", r.body);
    let run = r.json();
    assert_eq!((run["job"].as_str(), run["kind"].as_str()), (Some("restore:main"), Some("restore")), "{run}");
    let run = wait_status(&st, id_of(&run), &["succeeded", "failed", "partial"], Duration::from_secs(30));
    assert_eq!(run["status"], "succeeded", "{run}");
    common::assert_same_tree(&st.data, &common::restored(&target, &st.data));
    let r = http("POST", &st.url("/v1/verifies"), Some(OPERATOR), Some(r#"{"source":"files"}"#));
    assert_eq!(r.status, 202, "{}", r.body);
    let run = wait_status(&st, id_of(&r.json()), &["succeeded", "failed", "partial"], Duration::from_secs(30));
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["job"], "verify:files");
}

/// A failing source: its error recorded, a retry after the backoff that
/// fails too, the failure counter, an unreachable database; the daemon
/// serves throughout.
#[test]
fn failures_are_recorded_retried_and_the_daemon_keeps_serving() {
    let st = Setup::new();
    st.write_config(
        DAEMON_DEFAULTS,
        r#"
[sources.bad]
url = "command:sh -c 'echo partial; exit 7'"
schedule = { every = "1h", retries = 1, retry_backoff = "1s" }

[sources.pg]
url = "postgres://postgres@127.0.0.1:1/x"
schedule = { every = "1h", retries = 0 }
"#,
    );
    let _d = st.start();

    let first = id_of(&trigger(&st, OPERATOR, "backup:bad"));
    let run = wait_status(&st, first, &["failed", "succeeded", "partial"], Duration::from_secs(30));
    assert_eq!(run["status"], "failed", "{run}");
    let error = run["error"].as_str().unwrap_or_else(|| panic!("no error: {run}"));
    assert!(error.contains("exit status 7"), "{error}");
    assert_eq!(run["snapshot"], Value::Null);
    let log = http("GET", &st.url(&format!("/v1/jobs/{first}/log")), Some(VIEWER), None).body;
    assert!(log.contains("exit status 7") && log.lines().any(|l| l == "exit: 1"), "{log}");

    let retry = wait_for("the retry", Duration::from_secs(20), || {
        list_runs(&st, "job=backup:bad")
            .into_iter()
            .find(|r| r["retry_of"] == first)
            .ok_or_else(|| "none yet".to_string())
    });
    assert_eq!(retry["trigger"], "retry", "{retry}");
    assert_eq!(retry["attempt"], 2, "{retry}");
    let not_before: &str = retry["not_before"].as_str().unwrap();
    assert!(not_before > run["ended_at"].as_str().unwrap(), "the retry waits for the backoff: {retry} after {run}");
    let retry = wait_status(&st, id_of(&retry), &["failed", "succeeded", "partial"], Duration::from_secs(30));
    assert_eq!(retry["status"], "failed", "{retry}");
    assert!(retry["error"].as_str().is_some_and(|e| e.contains("exit status 7")), "{retry}");
    wait_metric(&st, "arkiv_job_failures_total{job=\"backup:bad\"}", 2.0);
    wait_metric(&st, "arkiv_job_runs_total{job=\"backup:bad\",status=\"failed\"}", 2.0);

    let pg = id_of(&trigger(&st, OPERATOR, "backup:pg"));
    let run = wait_status(&st, pg, &["failed", "succeeded", "partial"], Duration::from_secs(60));
    assert_eq!(run["status"], "failed", "{run}");
    let error = run["error"].as_str().unwrap_or_else(|| panic!("no error: {run}"));
    assert!(error.contains("127.0.0.1:1") || error.to_lowercase().contains("connect"), "{error}");

    assert_eq!(http("GET", &st.url("/healthz"), None, None).status, 200);
    assert_eq!(http("GET", &st.url("/readyz"), None, None).status, 200);
    let src = http("GET", &st.url("/v1/sources/bad"), Some(VIEWER), None).json();
    assert_eq!(src["last_success"], Value::Null, "{src}");
    assert_eq!(src["last_run"]["status"], "failed", "{src}");
    // One retry only (retries = 1); none for the database (retries = 0).
    assert_eq!(list_runs(&st, "job=backup:bad").len(), 2);
    assert_eq!(list_runs(&st, "job=backup:pg").len(), 1);
    assert_eq!(list_runs(&st, "status=failed&kind=backup").len(), 3);
}

/// A run past its timeout is stopped and failed; a run cancelled through the
/// API ends cancelled; neither leaves its command running.
#[test]
fn timeouts_and_cancels_stop_the_whole_job() {
    let st = Setup::new();
    st.write_config(
        DAEMON_DEFAULTS,
        r#"
[sources.slow]
url = "command:sleep 3006"
schedule = { every = "1h", timeout = "2s", retries = 0 }

[sources.slow2]
url = "command:sleep 3016"
"#,
    );
    let d = st.start();

    let id = id_of(&trigger(&st, OPERATOR, "backup:slow"));
    let tree = wait_running_with(&st, &d, id, "sleep 3006");
    let run = wait_status(&st, id, &["failed", "succeeded", "cancelled"], Duration::from_secs(20));
    assert_eq!(run["status"], "failed", "{run}");
    assert!(run["error"].as_str().is_some_and(|e| e.contains("timed out")), "{run}");
    wait_for("the timed-out job's processes to end", Duration::from_secs(5), || {
        let left: Vec<_> = tree.iter().filter(|(p, c)| still_running(*p, c)).collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    });

    let id = id_of(&trigger(&st, OPERATOR, "backup:slow2"));
    let tree = wait_running_with(&st, &d, id, "sleep 3016");
    let r = cancel(&st, OPERATOR, id);
    assert_eq!(r.status, 202, "{}", r.body);
    let t0 = Instant::now();
    let run = wait_status(&st, id, &["cancelled", "failed", "succeeded"], Duration::from_secs(5));
    assert_eq!(run["status"], "cancelled", "{run}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    wait_for("the cancelled job's processes to end", Duration::from_secs(5), || {
        let left: Vec<_> = tree.iter().filter(|(p, c)| still_running(*p, c)).collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    });
    assert!(!descendants(d.pid).iter().any(|(_, c)| c.starts_with("sleep 30")), "{:?}", descendants(d.pid));
    // Neither is retried: a timeout with retries = 0, a cancel never.
    assert_eq!(list_runs(&st, "kind=backup").len(), 2);
    let m = metrics(&st);
    assert_eq!(metric(&m, "arkiv_job_runs_total{job=\"backup:slow2\",status=\"cancelled\"}"), Some(1.0), "{m}");
    assert_eq!(metric(&m, "arkiv_job_failures_total{job=\"backup:slow\"}"), Some(1.0), "{m}");
}

/// SIGTERM with a job running: not ready, no new runs, the grace period,
/// then the run is interrupted and the daemon exits 0; the next start
/// queues it again.
#[test]
fn sigterm_waits_for_the_grace_period_then_interrupts_and_the_next_start_requeues() {
    let st = Setup::new();
    // A grace period long enough to look at the stopping daemon.
    st.write_config(&DAEMON_DEFAULTS.replace("\"2s\"", "\"3s\""), "[sources.slow]\nurl = \"command:sleep 3007\"\n");
    let mut d = st.start();
    let id = id_of(&trigger(&st, OPERATOR, "backup:slow"));
    let tree = wait_running_with(&st, &d, id, "sleep 3007");
    let _reaper = Reaper::new(&tree);

    let t0 = Instant::now();
    d.sigterm();
    let r = wait_for("/readyz to answer 503", Duration::from_secs(10), || {
        match try_http("GET", &st.url("/readyz"), None, None) {
            Ok(r) if r.status == 503 => Ok(r),
            Ok(r) => Err(format!("{} {}", r.status, r.body)),
            Err(e) => Err(e),
        }
    });
    assert_eq!(r.json()["status"], "stopping");
    // While stopping, nothing new is accepted, and the job still runs.
    http("POST", &st.url("/v1/jobs"), Some(OPERATOR), Some(r#"{"job":"backup:files"}"#))
        .assert_error(409, "a job while stopping");
    assert_eq!(get_run(&st, id)["status"], "running");
    assert!(t0.elapsed() < Duration::from_secs(3), "all seen within the grace period: {:?}", t0.elapsed());

    let status = d.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "exit status; log:\n{}", fs::read_to_string(&d.log).unwrap_or_default());
    assert!(t0.elapsed() >= Duration::from_millis(2900), "the daemon waited the grace period: {:?}", t0.elapsed());
    let left: Vec<_> = tree.iter().filter(|(p, c)| still_running(*p, c)).collect();
    assert!(left.is_empty(), "the job was stopped: {left:?}");
    if let Some(bin) = sqlite3() {
        assert_eq!(sql(&bin, &st.catalog, &format!("SELECT status FROM job_runs WHERE id = {id}")), "interrupted");
        assert_eq!(sql(&bin, &st.catalog, "SELECT count(*) FROM job_runs"), "1", "backup:files was not queued");
    }

    let d2 = st.start();
    let old = get_run(&st, id);
    assert_eq!(old["status"], "interrupted", "{old}");
    assert!(old["error"].as_str().is_some_and(|e| e.contains("grace")), "{old}");
    let again = wait_for("the run queued again", Duration::from_secs(10), || {
        list_runs(&st, "job=backup:slow").into_iter().find(|r| r["retry_of"] == id).ok_or_else(|| "none".to_string())
    });
    assert_eq!(again["trigger"], "reschedule", "{again}");
    assert_eq!(again["requested_by"], "operator", "{again}");
    assert!(id_of(&again) > id);
    let runs = list_runs(&st, "");
    assert_eq!(runs.len(), 2, "{runs:?}");
    let audit = http("GET", &st.url("/v1/audit"), Some(ADMIN), None).json();
    let actions: Vec<&str> = audit.as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).collect();
    assert_eq!(actions, ["daemon.start", "job.trigger", "daemon.stop", "daemon.start"]);
    drop(d2);
}

/// `kill -9` with a job running: the catalog still says running; the next
/// daemon marks it interrupted and queues it again, with all history kept
/// and the audit chain intact.
#[test]
fn after_kill_9_the_next_daemon_interrupts_and_requeues_with_history_intact() {
    let st = Setup::new();
    st.write_config(DAEMON_DEFAULTS, "[sources.slow]\nurl = \"command:sleep 3008\"\n");
    let mut d = st.start();
    let first = id_of(&trigger(&st, OPERATOR, "backup:files"));
    let done = wait_status(&st, first, &["succeeded"], Duration::from_secs(30));
    let id = id_of(&trigger(&st, OPERATOR, "backup:slow"));
    let tree = wait_running_with(&st, &d, id, "sleep 3008");
    let _reaper = Reaper::new(&tree);
    d.kill9();

    if let Some(bin) = sqlite3() {
        assert_eq!(sql(&bin, &st.catalog, &format!("SELECT status FROM job_runs WHERE id = {id}")), "running");
    }

    let _d2 = st.start();
    let old = get_run(&st, id);
    assert_eq!(old["status"], "interrupted", "{old}");
    assert!(old["ended_at"].is_string() && old["error"].is_string(), "{old}");
    let again = wait_for("the run queued again", Duration::from_secs(10), || {
        list_runs(&st, "job=backup:slow").into_iter().find(|r| r["retry_of"] == id).ok_or_else(|| "none".to_string())
    });
    assert_eq!(again["trigger"], "reschedule", "{again}");
    assert_eq!(again["attempt"], 1, "{again}");
    let runs = list_runs(&st, "");
    let ids: Vec<i64> = runs.iter().map(id_of).collect();
    assert_eq!(ids, [id_of(&again), id, first], "newest first, nothing lost");
    assert_eq!(get_run(&st, first), done, "the finished run is as it was");
    // Paging, newest first.
    let page: Vec<i64> = list_runs(&st, "limit=1").iter().map(id_of).collect();
    assert_eq!(page, [id_of(&again)]);
    let page: Vec<i64> = list_runs(&st, &format!("limit=5&before={}", id_of(&again))).iter().map(id_of).collect();
    assert_eq!(page, [id, first]);
    let page: Vec<i64> = list_runs(&st, "status=interrupted").iter().map(id_of).collect();
    assert_eq!(page, [id]);
    let out = st.audit_verify();
    assert_code(&out, 0, "audit verify");
    assert!(stdout(&out).starts_with("audit log intact: "), "{}", stdout(&out));
    let v = http("GET", &st.url("/v1/audit/verify"), Some(ADMIN), None).json();
    assert_eq!(v["ok"], true, "{v}");
}

/// A daemon killed with `kill -9` leaves no process of its jobs running:
/// not the job's `arkiv`, nor the dump command that one started.
///
/// PRODUCT BUG found at edda919, fixed by e604f70 ("a job's tools die with
/// it"): PR_SET_PDEATHSIG sent SIGTERM to the job's `arkiv` alone, which
/// died of it without ending its command, left running as an orphan (here
/// `sh -c sleep 3009` and `sleep 3009`) while the restarted daemon ran the
/// job again beside it.
#[test]
fn after_kill_9_no_job_process_is_left_running() {
    let st = Setup::new();
    st.write_config(DAEMON_DEFAULTS, "[sources.slow]\nurl = \"command:sleep 3009\"\n");
    let mut d = st.start();
    let id = id_of(&trigger(&st, OPERATOR, "backup:slow"));
    let tree = wait_running_with(&st, &d, id, "sleep 3009");
    let _reaper = Reaper::new(&tree);
    d.kill9();
    let left = (|| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left: Vec<_> = tree.iter().filter(|(p, c)| still_running(*p, c)).cloned().collect();
            if left.is_empty() || Instant::now() > deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })();
    assert!(
        left.is_empty(),
        "processes of the job still run 5 s after the daemon was killed: {left:?} (the job's tree was {tree:?})"
    );
}

/// The audit log: intact after API calls; an edited entry and a deleted one
/// are named by `arkiv audit verify` and by GET /v1/audit/verify.
#[test]
fn the_audit_chain_names_an_edited_or_deleted_entry() {
    let st = Setup::new();
    st.write_config(DAEMON_DEFAULTS, "[sources.slow]\nurl = \"command:sleep 3010\"\n");
    let d = st.start();
    let id = id_of(&trigger(&st, OPERATOR, "backup:slow"));
    // Cancelled once running: a run between queued and running may answer
    // 409 "cancel it again".
    wait_running_with(&st, &d, id, "sleep 3010");
    assert_eq!(cancel(&st, ADMIN, id).status, 202);
    wait_status(&st, id, &["cancelled"], Duration::from_secs(15));
    let r = http("POST", &st.url("/v1/tokens"), Some(ADMIN), Some(r#"{"name":"ci","role":"operator"}"#));
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(http("DELETE", &st.url("/v1/tokens/ci"), Some(ADMIN), None).status, 204);
    let r = http("POST", &st.url("/v1/verifies"), Some(OPERATOR), Some(r#"{"source":"files"}"#));
    assert_eq!(r.status, 202, "{}", r.body);

    let entries = http("GET", &st.url("/v1/audit"), Some(ADMIN), None).json();
    let entries = entries.as_array().unwrap().clone();
    let actions: Vec<(&str, &str)> =
        entries.iter().map(|e| (e["actor"].as_str().unwrap(), e["action"].as_str().unwrap())).collect();
    assert_eq!(
        actions,
        [
            ("daemon", "daemon.start"),
            ("operator", "job.trigger"),
            ("admin", "job.cancel"),
            ("admin", "token.create"),
            ("admin", "token.revoke"),
            ("operator", "verify.request")
        ]
    );
    let seqs: Vec<i64> = entries.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
    for w in entries.windows(2) {
        assert_eq!(w[1]["prev_hash"], w[0]["hash"]);
    }
    assert_eq!(http("GET", &st.url("/v1/audit?after=4&limit=1"), Some(ADMIN), None).json()[0]["seq"], 5);

    let out = st.audit_verify();
    assert_code(&out, 0, "audit verify");
    assert!(stdout(&out).starts_with("audit log intact: 6 entries, head "), "{}", stdout(&out));
    let api = http("GET", &st.url("/v1/audit/verify"), Some(ADMIN), None).json();
    assert_eq!((api["ok"].as_bool(), api["entries"].as_u64()), (Some(true), Some(6)), "{api}");
    assert_eq!(api["head"], entries[5]["hash"]);
    let list = st.cli(&["audit", "list"]);
    assert_code(&list, 0, "audit list");
    assert_eq!(stdout(&list).lines().count(), 6, "{}", stdout(&list));

    let Some(bin) = sqlite3() else { return };
    sql(&bin, &st.catalog, "UPDATE audit_log SET actor = 'mallory' WHERE seq = 3");
    let out = st.audit_verify();
    assert_code(&out, 1, "audit verify after an edit");
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!("arkiv: error: audit log {}: entry 3 ", st.catalog.display()))
            && err.contains("edited"),
        "{err}"
    );
    let api = http("GET", &st.url("/v1/audit/verify"), Some(ADMIN), None).json();
    assert_eq!(api["ok"], false, "{api}");
    assert!(api["problem"].as_str().is_some_and(|p| p.starts_with("entry 3 ")), "{api}");
    assert_eq!(api["entries"], 2, "{api}");

    // Put it back: the chain is whole again.
    sql(&bin, &st.catalog, "UPDATE audit_log SET actor = 'admin' WHERE seq = 3");
    assert_code(&st.audit_verify(), 0, "audit verify after undoing the edit");

    sql(&bin, &st.catalog, "DELETE FROM audit_log WHERE seq = 4");
    let out = st.audit_verify();
    assert_code(&out, 1, "audit verify after a deletion");
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("entry 4 is missing"), "{err}");
    let api = http("GET", &st.url("/v1/audit/verify"), Some(ADMIN), None).json();
    assert_eq!(api["ok"], false, "{api}");
    assert!(api["problem"].as_str().is_some_and(|p| p.contains("entry 4 is missing")), "{api}");
    // Appending goes on after the gap and does not hide it.
    assert_eq!(http("POST", &st.url("/v1/tokens"), Some(ADMIN), Some(r#"{"name":"ci2","role":"viewer"}"#)).status, 201);
    assert!(stderr(&st.audit_verify()).contains("entry 4 is missing"));
    drop(d);
}

/// `config check` and `serve` on valid and invalid files: one line naming
/// the file, line and key; `serve` refuses to start on what check refuses.
#[test]
fn config_check_names_file_line_and_key_and_serve_refuses_the_same_file() {
    let st = Setup::new();
    st.write_config(
        DAEMON_DEFAULTS,
        "[sources.slow]\nurl = \"command:sleep 1\"\nschedule = { cron = \"*/5 * * * *\" }\n",
    );
    let out = st.cli(&["config", "check"]);
    assert_code(&out, 0, "config check");
    let text = stdout(&out);
    assert!(text.starts_with(&format!("{}: ok (1 repositories, 2 sources, ", st.config.display())), "{text}");
    for job in ["backup:files", "backup:slow", "check:main", "check-data:main", "verify:files"] {
        assert!(text.lines().any(|l| l.trim_start().starts_with(job)), "{job} in {text}");
    }

    let line_of = |text: &str, needle: &str| text.lines().position(|l| l.contains(needle)).expect("the line") + 1;
    let one_error = |out: &Output, what: &str| -> String {
        assert_code(out, 1, what);
        let err = stderr(out);
        assert_eq!(err.trim_end().lines().count(), 1, "{what}: one line: {err}");
        assert!(err.starts_with(&format!("arkiv: error: {}: ", st.config.display())), "{what}: {err}");
        err.trim_end().to_string()
    };

    // A cron expression that is not one.
    let bad = st.config_text(
        DAEMON_DEFAULTS,
        "[sources.slow]\nurl = \"command:sleep 1\"\nschedule = { cron = \"every day\" }\n",
    );
    fs::write(&st.config, &bad).unwrap();
    let n = line_of(&bad, "every day");
    let cron_error = one_error(&st.cli(&["config", "check"]), "bad cron");
    assert!(cron_error.contains(&format!("line {n}: sources.slow.schedule: ")), "{cron_error}");

    // serve: the same line, and no listener.
    let mut d = st.spawn();
    let status = d.wait_exit(Duration::from_secs(20));
    assert!(!status.success(), "serve accepted a bad configuration");
    let log = d.log();
    assert_eq!(log.trim_end(), cron_error, "serve's error");
    assert!(try_http("GET", &st.url("/healthz"), None, None).is_err(), "nothing listens");
    assert!(!st.catalog.exists(), "no catalog was made");

    // A secret written inline.
    let inline =
        st.config_text(DAEMON_DEFAULTS, "").replace("password_file = ", "password = \"hunter2\"\npassword_file = ");
    fs::write(&st.config, &inline).unwrap();
    let n = line_of(&inline, "hunter2");
    let e = one_error(&st.cli(&["config", "check"]), "inline password");
    assert!(e.contains(&format!("line {n}: password: secrets are never")), "{e}");
    assert!(!e.contains("hunter2"), "the secret is not repeated: {e}");

    // A password file that does not exist.
    let missing =
        st.config_text(DAEMON_DEFAULTS, "").replace(&format!("{}/pw", st.dir().display()), "/nonexistent/arkiv-pw");
    fs::write(&st.config, &missing).unwrap();
    let n = line_of(&missing, "/nonexistent/arkiv-pw");
    let e = one_error(&st.cli(&["config", "check"]), "missing password file");
    assert!(e.contains(&format!("line {n}: repositories.main.password_file: /nonexistent/arkiv-pw: ")), "{e}");

    // A misspelt key.
    let typo = st.config_text(DAEMON_DEFAULTS, "").replace("shutdown_grace", "shutdown_grase");
    fs::write(&st.config, &typo).unwrap();
    let e = one_error(&st.cli(&["config", "check"]), "misspelt key");
    assert!(e.contains("shutdown_grase") && e.contains(&format!("line {}", line_of(&typo, "shutdown_grase"))), "{e}");

    // A user's token file with too short a token: check and serve refuse it.
    let text = st.config_text(DAEMON_DEFAULTS, "");
    fs::write(&st.config, &text).unwrap();
    fs::write(st.s.join("viewer.token"), "short\n").unwrap();
    let n = line_of(&text, "viewer.token");
    let e = one_error(&st.cli(&["config", "check"]), "short token");
    assert!(e.contains(&format!("line {n}: users.viewer.token_file: ")) && e.contains("at least 24"), "{e}");
    let mut d = st.spawn();
    assert!(!d.wait_exit(Duration::from_secs(20)).success(), "serve accepted a short token");
    assert!(d.log().contains("at least 24"), "{}", d.log());
}

/// A second `arkiv serve` on the same catalog (a manual start next to the
/// service, an overlapping restart) is refused, on the same address or on
/// another one, and changes nothing of the running daemon's runs.
///
/// PRODUCT BUG found at edda919, fixed by e604f70 ("one daemon per catalog
/// (lock, then port, before recovery)"): serve recovered the catalog before
/// binding its address, so a second daemon that then failed to listen had
/// already marked the first daemon's live run interrupted, queued it again
/// (which the first daemon then ran a second time) and written daemon.start;
/// on another port it would simply have run beside the first.
#[test]
fn a_second_daemon_on_the_same_catalog_leaves_the_first_daemons_runs_alone() {
    let st = Setup::new();
    st.write_config(DAEMON_DEFAULTS, "[sources.slow]\nurl = \"command:sleep 3011\"\n");
    let d = st.start();
    let id = id_of(&trigger(&st, OPERATOR, "backup:slow"));
    wait_running_with(&st, &d, id, "sleep 3011");

    let other_port = st.s.join("other-port.toml");
    let text = fs::read_to_string(&st.config).unwrap();
    fs::write(&other_port, text.replace(&format!("127.0.0.1:{}", st.port), &format!("127.0.0.1:{}", free_port())))
        .unwrap();
    for (what, config) in [("the same address", &st.config), ("another address", &other_port)] {
        let mut second = st.spawn_with(config);
        let status = second.wait_exit(Duration::from_secs(20));
        assert!(!status.success(), "a second daemon on {what} was not refused: {}", second.log());
        let log = second.log();
        assert!(log.starts_with("arkiv: error: ") && log.trim_end().lines().count() == 1, "on {what}: {log}");
        assert!(!log.contains("serving on"), "on {what}: {log}");

        let run = get_run(&st, id);
        assert_eq!(run["status"], "running", "after a second daemon on {what}, the first daemon's run: {run}");
        let runs = list_runs(&st, "");
        assert_eq!(runs.len(), 1, "after a second daemon on {what}, no run was queued again: {runs:#?}");
        let audit = http("GET", &st.url("/v1/audit"), Some(ADMIN), None).json();
        let actions: Vec<&str> = audit.as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).collect();
        assert_eq!(actions, ["daemon.start", "job.trigger"], "after a second daemon on {what}");
    }
    assert!(descendants(d.pid).iter().any(|(_, c)| c == "sleep 3011"), "the job still runs");
    drop(d);
}

/// HTTPS with tls_cert and tls_key; plain HTTP on the same port is refused.
#[test]
fn tls_serves_https_and_refuses_plain_http() {
    let st = Setup::new();
    let (cert, key) = (st.s.join("c.pem"), st.s.join("k.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args(["-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"])
        .stdin(Stdio::null())
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
    st.write_config(
        &format!("{DAEMON_DEFAULTS}\ntls_cert = \"{}\"\ntls_key = \"{}\"", cert.display(), key.display()),
        "",
    );
    assert_code(&st.cli(&["config", "check"]), 0, "config check");
    let d = st.spawn();
    wait_for("the daemon to listen", Duration::from_secs(30), || {
        d.check_alive()?;
        if d.log().contains("arkiv: serving on https://127.0.0.1:") {
            Ok(())
        } else {
            Err(d.log())
        }
    });
    let https = format!("https://127.0.0.1:{}", st.port);
    let curl = |path: &str, token: Option<&str>| -> Output {
        let mut c = Command::new("curl");
        c.args(["-sS", "--max-time", "10", "--cacert"]).arg(&cert).args(["-w", "\n%{http_code}"]);
        if let Some(t) = token {
            c.arg("-H").arg(format!("Authorization: Bearer {t}"));
        }
        c.arg(format!("{https}{path}")).stdin(Stdio::null()).output().expect("curl")
    };
    let ready = wait_for("/readyz over HTTPS", Duration::from_secs(30), || {
        let o = curl("/readyz", None);
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        if o.status.success() && text.ends_with("\n200") {
            Ok(text)
        } else {
            Err(format!("{text} {}", String::from_utf8_lossy(&o.stderr)))
        }
    });
    assert!(ready.contains("ready"), "{ready}");
    let o = curl("/healthz", None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("\"status\":\"ok\"") && text.ends_with("\n200"), "{text}");
    let o = curl("/v1/sources", Some(VIEWER));
    assert!(String::from_utf8_lossy(&o.stdout).ends_with("\n200"), "{}", String::from_utf8_lossy(&o.stdout));
    let o = curl("/v1/sources", Some(WRONG));
    assert!(String::from_utf8_lossy(&o.stdout).ends_with("\n401"), "{}", String::from_utf8_lossy(&o.stdout));
    // Without the CA the certificate is not trusted.
    let o = Command::new("curl").args(["-sS", "--max-time", "10"]).arg(format!("{https}/healthz")).output().unwrap();
    assert!(!o.status.success(), "an untrusted certificate was accepted");
    // Plain HTTP to the TLS port: no HTTP answer.
    match try_http("GET", &st.url("/healthz"), None, None) {
        Err(_) => {}
        Ok(r) => assert_ne!(r.status, 200, "plain HTTP was served: {}", r.body),
    }
    // And the daemon is still fine after it.
    assert!(String::from_utf8_lossy(&curl("/healthz", None).stdout).ends_with("\n200"));
    drop(d);
}

/// Tokens made with `arkiv token create` work until `token revoke`; a
/// `[users.X]` token works until the user leaves the file.
#[test]
fn token_commands_and_configured_users_grant_and_revoke_access() {
    let st = Setup::new();
    let extra = st.s.join("x.token");
    fs::write(&extra, "xxxxxxxx-user-token-0123456789abcdef\n").unwrap();
    let users_x = format!("[users.x]\nrole = \"operator\"\ntoken_file = \"{}\"\n", extra.display());
    st.write_config(DAEMON_DEFAULTS, &users_x);
    let mut d = st.start();
    let x_token = "xxxxxxxx-user-token-0123456789abcdef";
    assert_eq!(http("GET", &st.url("/v1/sources"), Some(x_token), None).status, 200, "the configured user");
    assert_eq!(http("GET", &st.url("/v1/tokens"), Some(x_token), None).status, 403, "an operator");

    // Created while the daemon runs.
    let out = st.cli(&["--json", "token", "create", "--name", "ci", "--role", "operator"]);
    assert_code(&out, 0, "token create");
    let v = common::parse_json(&out);
    assert_eq!((v["name"].as_str(), v["role"].as_str()), (Some("ci"), Some("operator")), "{v}");
    let ci = v["token"].as_str().unwrap().to_string();
    assert!(ci.starts_with("arkiv_") && ci.len() >= 24, "{ci}");
    let out = st.cli(&["token", "create", "--name", "keep", "--role", "viewer"]);
    assert_code(&out, 0, "token create");
    let keep = stdout(&out).trim().to_string();
    assert_eq!(keep.lines().count(), 1, "only the token on stdout: {keep}");

    assert_eq!(http("GET", &st.url("/v1/sources"), Some(&ci), None).status, 200);
    let r = http("POST", &st.url("/v1/jobs"), Some(&ci), Some(r#"{"job":"backup:files"}"#));
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.json()["requested_by"], "ci");
    wait_status(&st, id_of(&r.json()), &["succeeded"], Duration::from_secs(30));
    assert_eq!(http("GET", &st.url("/v1/sources"), Some(&keep), None).status, 200);

    let out = st.cli(&["token", "create", "--name", "ci", "--role", "viewer"]);
    assert_ne!(out.status.code(), Some(0), "a second token named ci");
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));

    let out = st.cli(&["token", "revoke", "ci"]);
    assert_code(&out, 0, "token revoke");
    http("GET", &st.url("/v1/sources"), Some(&ci), None).assert_error(401, "a revoked token");
    assert_ne!(st.cli(&["token", "revoke", "ci"]).status.code(), Some(0), "revoking twice");

    let list = st.cli(&["--json", "token", "list"]);
    assert_code(&list, 0, "token list");
    let list = common::parse_json(&list);
    let by_name = |n: &str| {
        list.as_array().unwrap().iter().find(|t| t["name"] == n).cloned().unwrap_or_else(|| panic!("{n} in {list}"))
    };
    assert!(by_name("ci")["revoked_at"].is_string(), "{list}");
    assert_eq!(by_name("ci")["origin"], "cli");
    assert!(by_name("ci")["last_used_at"].is_string(), "{list}");
    assert_eq!(by_name("x")["origin"], "config");
    assert!(by_name("x")["revoked_at"].is_null());
    assert!(!list.to_string().contains(&keep) && !list.to_string().contains(x_token), "no token is shown");
    let api = http("GET", &st.url("/v1/tokens"), Some(ADMIN), None).json();
    assert_eq!(api.as_array().unwrap().len(), list.as_array().unwrap().len(), "{api}");

    // The user leaves the file: after a restart its token no longer works;
    // tokens made with the CLI are kept.
    d.sigterm();
    assert_eq!(d.wait_exit(Duration::from_secs(30)).code(), Some(0));
    st.write_config(DAEMON_DEFAULTS, "");
    let _d = st.start();
    http("GET", &st.url("/v1/sources"), Some(x_token), None).assert_error(401, "a user gone from the file");
    assert_eq!(http("GET", &st.url("/v1/sources"), Some(&keep), None).status, 200, "a CLI token survives the restart");
    http("GET", &st.url("/v1/sources"), Some(&ci), None).assert_error(401, "a revoked token stays revoked");
    let list = common::parse_json(&st.cli(&["--json", "token", "list"]));
    let x = list.as_array().unwrap().iter().find(|t| t["name"] == "x").unwrap();
    assert!(x["revoked_at"].is_string(), "{list}");

    let out = st.audit_verify();
    assert_code(&out, 0, "audit verify");
    let entries = http("GET", &st.url("/v1/audit?limit=1000"), Some(ADMIN), None).json();
    let cli: Vec<(&str, &str)> = entries
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor"] == "cli")
        .map(|e| (e["action"].as_str().unwrap(), e["target"].as_str().unwrap()))
        .collect();
    assert_eq!(cli, [("token.create", "ci"), ("token.create", "keep"), ("token.revoke", "ci")]);
}
