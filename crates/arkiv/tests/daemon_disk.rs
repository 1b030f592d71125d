//! The daemon when a repository's disk is full, and the WAL archive lag
//! metric read from a spool: failures land in the job record, the API and
//! the metrics, and the daemon keeps serving.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{random_files, FAST_KDF, PASSWORD};
use serde_json::Value;

struct Daemon {
    child: Child,
    port: u16,
    token: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn start(config: &Path, port: u16, token: &str) -> Daemon {
        let child = common::bare_command()
            .args(["-c"])
            .arg(config)
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let d = Daemon { child, port, token: token.into() };
        wait_for("the daemon to be ready", Duration::from_secs(30), || {
            ureq::get(&d.url("/readyz")).call().is_ok_and(|r| r.status() == 200)
        });
        d
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn get(&self, path: &str) -> Value {
        ureq::get(&self.url(path))
            .set("Authorization", &format!("Bearer {}", self.token))
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .into_json()
            .unwrap()
    }

    fn post(&self, path: &str, body: Value) -> Value {
        ureq::post(&self.url(path))
            .set("Authorization", &format!("Bearer {}", self.token))
            .send_json(body)
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
            .into_json()
            .unwrap()
    }

    fn metrics(&self) -> String {
        ureq::get(&self.url("/metrics")).call().unwrap().into_string().unwrap()
    }
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
}

struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.0).status().is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// A directory with a token file, a password file and a config around `body`.
fn setup(dir: &Path, body: &str) -> (PathBuf, u16, String) {
    let port = common::garage::free_port();
    let token = format!("daemon-test-token-{}", common::garage::random_hex(8));
    fs::write(dir.join("token"), format!("{token}\n")).unwrap();
    fs::write(dir.join("pw"), format!("{PASSWORD}\n")).unwrap();
    let config = dir.join("arkiv.toml");
    fs::write(
        &config,
        format!(
            "[daemon]\nlisten = \"127.0.0.1:{port}\"\ncatalog = \"{d}/state/catalog.db\"\nshutdown_grace = \"2s\"\n\
             [users.ops]\nrole = \"admin\"\ntoken_file = \"{d}/token\"\n{body}",
            d = dir.display()
        ),
    )
    .unwrap();
    (config, port, token)
}

#[test]
fn a_full_repository_disk_fails_the_run_with_the_cause_and_the_daemon_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let out = Command::new("mount").args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"]).arg(&mnt).output().unwrap();
    if !out.status.success() {
        if std::env::var_os("ARKIV_TEST_NO_MOUNT").is_some() {
            eprintln!("skipping (ARKIV_TEST_NO_MOUNT is set): cannot mount a tmpfs");
            return;
        }
        panic!("cannot mount a tmpfs (this test needs root): {}", String::from_utf8_lossy(&out.stderr));
    }
    let _unmount = Mounted(mnt.clone());
    let repo = mnt.join("repo");
    let data = dir.path().join("data");
    random_files(&data, 7, 3, 10_000_000);
    let (config, port, token) = setup(
        dir.path(),
        &format!(
            "[repositories.main]\nurl = \"{}\"\npassword_file = \"{}/pw\"\n\
             [sources.big]\npaths = [\"{}\"]\nschedule = {{ every = \"1day\", retries = 0 }}\n",
            repo.display(),
            dir.path().display(),
            data.display()
        ),
    );
    let mut init = vec!["init".to_string(), "--repo".into(), repo.display().to_string()];
    init.extend(FAST_KDF.iter().map(|s| s.to_string()));
    let status = common::bare_command()
        .args(&init)
        .arg("--password-file")
        .arg(dir.path().join("pw"))
        .arg("-q")
        .status()
        .unwrap();
    assert!(status.success());

    let d = Daemon::start(&config, port, &token);
    let run = d.post("/v1/jobs", serde_json::json!({ "job": "backup:big" }));
    let id = run["id"].as_i64().unwrap();
    let mut last = Value::Null;
    wait_for("the backup onto a full disk to fail", Duration::from_secs(60), || {
        last = d.get(&format!("/v1/jobs/{id}"));
        last["status"] == "failed"
    });
    let error = last["error"].as_str().unwrap();
    assert!(error.contains("No space left on device"), "the run's error does not say why: {error}");
    assert!(!error.contains('\n'), "one line: {error}");
    // The API, the metrics and health all still answer, and say so.
    let sources = d.get("/v1/sources");
    assert_eq!(sources[0]["last_run"]["status"], "failed");
    assert_eq!(sources[0]["last_success"], Value::Null);
    assert_eq!(sources[0]["rpo_met"], Value::Null, "no rpo configured");
    let m = d.metrics();
    assert_eq!(metric(&m, "arkiv_job_failures_total{job=\"backup:big\"}"), 1.0);
    assert_eq!(metric(&m, "arkiv_backup_last_success_timestamp_seconds{source=\"big\"}"), 0.0);
    assert!(ureq::get(&d.url("/healthz")).call().is_ok());
    let log = ureq::get(&d.url(&format!("/v1/jobs/{id}/log")))
        .set("Authorization", &format!("Bearer {token}"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(log.contains("No space left on device") && log.contains("exit: 1"), "{log}");
    drop(d);

    // The repository the failure happened in still checks clean.
    let out = common::bare_command()
        .args(["--repo"])
        .arg(&repo)
        .arg("--password-file")
        .arg(dir.path().join("pw"))
        .arg("check")
        .output()
        .unwrap();
    assert!(out.status.success(), "check after the failed backup: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_wal_archive_lag_metric_is_read_from_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    fs::create_dir(&spool).unwrap();
    let (config, port, token) = setup(
        dir.path(),
        &format!(
            "[repositories.main]\nurl = \"{d}/repo\"\npassword_file = \"{d}/pw\"\n\
             [sources.db]\npitr = {{ pgdata = \"{d}/pgdata\", spool = \"{}\" }}\n",
            spool.display(),
            d = dir.path().display()
        ),
    );
    let d = Daemon::start(&config, port, &token);
    // No status yet (nothing archived): the series exists at zero.
    assert_eq!(metric(&d.metrics(), "arkiv_wal_archive_lag_seconds{source=\"db\"}"), 0.0);
    let oldest = chrono::Utc::now() - chrono::Duration::seconds(120);
    fs::write(
        spool.join("status.json"),
        serde_json::json!({ "waiting": 3, "waiting_bytes": 50331648, "oldest_waiting": oldest, "pushed_total": 10 })
            .to_string(),
    )
    .unwrap();
    let m = d.metrics();
    let lag = metric(&m, "arkiv_wal_archive_lag_seconds{source=\"db\"}");
    assert!((119.0..130.0).contains(&lag), "lag {lag}");
    assert_eq!(metric(&m, "arkiv_wal_archive_waiting_files{source=\"db\"}"), 3.0);
    // Caught up: nothing waiting means no lag, whatever the old timestamp.
    fs::write(spool.join("status.json"), serde_json::json!({ "waiting": 0, "oldest_waiting": oldest }).to_string())
        .unwrap();
    assert_eq!(metric(&d.metrics(), "arkiv_wal_archive_lag_seconds{source=\"db\"}"), 0.0);
}
