//! The jobs the daemon runs, derived from the configuration, and the
//! command line each becomes.
//!
//! A job runs as a child process of the `arkiv` binary (the same one that
//! runs the daemon) rather than inside the daemon: a crash, a hang or a
//! memory spike in one source (a stuck `pg_dump`, a huge restore) cannot
//! take the daemon and its API down with it; cancelling or timing out is
//! killing a process group, which also ends the dump tools it started; and
//! every job behaves exactly as the same command typed by an operator,
//! which is what the operations guides document. The price is one process
//! start and one key derivation per run, small against any backup.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::catalog::Outcome;
use crate::config::Config;
use crate::schedule::Schedule;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    Backup,
    /// forget + prune by the repository's policy.
    Retention,
    /// The repository's structure.
    Check,
    /// A subset of the repository's data, read and verified.
    CheckData,
    /// Copy to one replica.
    Replicate,
    /// A test restore of a source's latest snapshot.
    Verify,
    /// A restore requested through the API.
    Restore,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Backup => "backup",
            JobKind::Retention => "retention",
            JobKind::Check => "check",
            JobKind::CheckData => "check-data",
            JobKind::Replicate => "replicate",
            JobKind::Verify => "verify",
            JobKind::Restore => "restore",
        }
    }

    pub fn parse(s: &str) -> Option<JobKind> {
        Some(match s {
            "backup" => JobKind::Backup,
            "retention" => JobKind::Retention,
            "check" => JobKind::Check,
            "check-data" => JobKind::CheckData,
            "replicate" => JobKind::Replicate,
            "verify" => JobKind::Verify,
            "restore" => JobKind::Restore,
            _ => return None,
        })
    }
}

/// One job the daemon knows: scheduled, or run on demand when `schedule`
/// is `None`.
#[derive(Debug, Clone)]
pub struct JobDef {
    /// `backup:shop`, `retention:main`, `replicate:main:offsite`.
    pub name: String,
    pub kind: JobKind,
    /// The source (backup, verify) or repository (the rest).
    pub target: String,
    /// The repository whose concurrency limit it counts against.
    pub repository: String,
    pub schedule: Option<Schedule>,
}

impl JobDef {
    pub fn name_of(kind: JobKind, target: &str) -> String {
        format!("{}:{target}", kind.as_str())
    }

    /// Retries and timeout for runs of this job; on-demand jobs get the
    /// defaults (no timeout, 2 retries).
    pub fn policy(&self, default_tz: &str) -> Schedule {
        self.schedule.clone().unwrap_or_else(|| Schedule::cron("0 0 * * *", default_tz))
    }
}

/// Every job of a configuration, by name.
pub fn job_defs(c: &Config) -> BTreeMap<String, JobDef> {
    let tz = c.daemon.timezone.as_str();
    let sched = |s: &Option<crate::config::ScheduleConfig>| s.as_ref().and_then(|s| Schedule::from_config(s, tz).ok());
    let mut out = BTreeMap::new();
    let mut add = |kind: JobKind, target: &str, repository: &str, schedule: Option<Schedule>| {
        let name = JobDef::name_of(kind, target);
        out.insert(name.clone(), JobDef { name, kind, target: target.into(), repository: repository.into(), schedule });
    };
    for (name, s) in &c.sources {
        let repo = c.repository_for(name).map(|(r, _)| r.to_string()).unwrap_or_default();
        add(JobKind::Backup, name, &repo, sched(&s.schedule));
        if s.pitr.is_none() {
            add(JobKind::Verify, name, &repo, s.verify.as_ref().and_then(|v| sched(&v.schedule)));
        }
    }
    for (name, r) in &c.repositories {
        if let Some(ret) = &r.retention {
            let s = sched(&ret.schedule).unwrap_or_else(|| Schedule::cron("0 4 * * *", tz));
            add(JobKind::Retention, name, name, Some(s));
        }
        let check = r.check.clone().unwrap_or_default();
        let (structure, data) = if check.enabled {
            (
                Some(sched(&check.schedule).unwrap_or_else(|| Schedule::cron("0 3 * * *", tz))),
                Some(sched(&check.read_data_schedule).unwrap_or_else(|| Schedule::cron("0 5 * * 0", tz))),
            )
        } else {
            (None, None)
        };
        add(JobKind::Check, name, name, structure);
        add(JobKind::CheckData, name, name, data);
        let rep_schedule = r.replicate.as_ref().and_then(|p| sched(&p.schedule));
        for replica in &r.replicas {
            add(JobKind::Replicate, &format!("{name}:{replica}"), name, rep_schedule.clone());
        }
    }
    out
}

/// The replicate jobs to queue after a successful backup into `repository`.
pub fn replicas_after_backup(c: &Config, repository: &str) -> Vec<String> {
    let Some(r) = c.repositories.get(repository) else { return Vec::new() };
    if !r.replicate.as_ref().and_then(|p| p.after_backup).unwrap_or(true) {
        return Vec::new();
    }
    r.replicas.iter().map(|replica| JobDef::name_of(JobKind::Replicate, &format!("{repository}:{replica}"))).collect()
}

/// Flags that make a child open a configured repository by its settings.
fn repo_flags(c: &Config, repository: &str, out: &mut Vec<String>) -> Result<(), String> {
    c.repository(Some(repository)).map_err(|e| e.to_string())?;
    out.extend(["--repo".into(), repository.into()]);
    Ok(())
}

/// The arguments (after the executable) that run `kind` on `target`.
/// `extra` carries what an API request adds (a restore's snapshot and target).
pub fn argv(
    config_path: &Path,
    c: &Config,
    kind: JobKind,
    target: &str,
    extra: &[String],
) -> Result<Vec<String>, String> {
    let mut a: Vec<String> =
        vec!["--config".into(), config_path.display().to_string(), "--json".into(), "--no-progress".into()];
    match kind {
        JobKind::Backup => {
            let s = c.source(target).map_err(|e| e.to_string())?;
            if let Some(p) = &s.pitr {
                let (repo, _) = c.repository_for(target).map_err(|e| e.to_string())?;
                repo_flags(c, repo, &mut a)?;
                a.extend(["pg".into(), "backup".into(), "--pgdata".into(), p.pgdata.display().to_string()]);
                if let Some(h) = &p.host {
                    a.extend(["--host".into(), h.clone()]);
                }
                if let Some(port) = p.port {
                    a.extend(["--port".into(), port.to_string()]);
                }
                if let Some(u) = &p.user {
                    a.extend(["--user".into(), u.clone()]);
                }
                if let Some(i) = &p.full_read_interval {
                    a.extend(["--full-read-interval".into(), i.clone()]);
                }
                if let Some(h) = &s.host {
                    a.extend(["--hostname".into(), h.clone()]);
                }
                for t in &s.tags {
                    a.extend(["--tag".into(), t.clone()]);
                }
            } else {
                a.extend(["backup".into(), "--source".into(), target.into()]);
            }
        }
        JobKind::Verify => {
            a.extend(["verify".into(), "--source".into(), target.into()]);
            a.extend(extra.iter().cloned());
        }
        JobKind::Retention => {
            let r = c.repositories.get(target).ok_or_else(|| format!("no repository named '{target}'"))?;
            let ret = r.retention.as_ref().ok_or_else(|| format!("repository '{target}' has no retention policy"))?;
            repo_flags(c, target, &mut a)?;
            a.push("forget".into());
            let counts = [
                ("--keep-last", ret.keep_last),
                ("--keep-hourly", ret.keep_hourly),
                ("--keep-daily", ret.keep_daily),
                ("--keep-weekly", ret.keep_weekly),
                ("--keep-monthly", ret.keep_monthly),
                ("--keep-yearly", ret.keep_yearly),
            ];
            for (flag, n) in counts {
                if let Some(n) = n {
                    a.extend([flag.into(), n.to_string()]);
                }
            }
            if let Some(w) = &ret.keep_within {
                a.extend(["--keep-within".into(), w.clone()]);
            }
            for t in &ret.keep_tags {
                a.extend(["--keep-tag".into(), t.clone()]);
            }
            if ret.prune.unwrap_or(true) {
                a.push("--prune".into());
                if let Some(g) = &ret.prune_grace {
                    a.extend(["--grace".into(), g.clone()]);
                }
                if let Some(m) = &ret.max_unused {
                    a.extend(["--max-unused".into(), m.clone()]);
                }
            }
        }
        JobKind::Check => {
            repo_flags(c, target, &mut a)?;
            a.push("check".into());
        }
        JobKind::CheckData => {
            repo_flags(c, target, &mut a)?;
            let subset = c.repositories.get(target).and_then(|r| r.check.clone()).unwrap_or_default().read_data_subset;
            a.extend(["check".into(), "--read-data-subset".into(), subset]);
        }
        JobKind::Replicate => {
            let (from, to) = target.split_once(':').ok_or_else(|| format!("'{target}' is not FROM:TO"))?;
            repo_flags(c, from, &mut a)?;
            a.push("copy".into());
            pair_flags(c, to, &mut a)?;
        }
        JobKind::Restore => {
            repo_flags(c, target, &mut a)?;
            a.push("restore".into());
            a.extend(extra.iter().cloned());
        }
    }
    Ok(a)
}

/// `--to …` flags naming a configured repository by its settings (copy and
/// replication-status take a location, not a name, for their second side).
pub fn pair_flags(c: &Config, to: &str, a: &mut Vec<String>) -> Result<(), String> {
    let (_, r) = c.repository(Some(to)).map_err(|e| e.to_string())?;
    a.extend(["--to".into(), r.url.clone()]);
    if let Some(d) = &r.data_url {
        a.extend(["--to-data-repo".into(), d.clone()]);
    }
    if let Some(p) = &r.password_file {
        a.extend(["--to-password-file".into(), p.display().to_string()]);
    }
    if let Some(k) = &r.key_file {
        a.extend(["--to-key-file".into(), k.display().to_string()]);
    }
    Ok(())
}

/// Reads what a job printed with `--json`: the last JSON document on
/// standard output (a multi-source backup prints one per source).
pub fn parse_outcome(stdout: &[u8]) -> Outcome {
    let mut last = None;
    for v in serde_json::Deserializer::from_slice(stdout).into_iter::<serde_json::Value>() {
        match v {
            Ok(v) => last = Some(v),
            Err(_) => break,
        }
    }
    let Some(v) = last else { return Outcome::default() };
    let summary = v.pointer("/snapshot/summary");
    Outcome {
        snapshot: v.get("id").and_then(|i| i.as_str()).map(String::from),
        bytes: summary.and_then(|s| s.get("bytes_read")).and_then(|b| b.as_u64()),
        files: summary.and_then(|s| s.get("total_files")).and_then(|b| b.as_u64()),
        error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[repositories.main]
url = "/srv/backup"
password_file = "/etc/arkiv/pw"
replicas = ["offsite"]
[repositories.main.retention]
keep_daily = 7
keep_within = "2d"
prune_grace = "1h"
[repositories.offsite]
url = "s3://bucket/arkiv?endpoint=http://127.0.0.1:3900"
key_file = "/etc/arkiv/offsite.key"
[repositories.offsite.check]
enabled = false

[sources.files]
paths = ["/srv/data"]
schedule = { every = "1h" }
[sources.db]
pitr = { pgdata = "/var/lib/postgresql/15/main", port = 5433 }
"#;

    #[test]
    fn every_job_of_a_configuration_is_known() {
        let c = Config::parse("c.toml", CONFIG).unwrap();
        let jobs = job_defs(&c);
        let names: Vec<&str> = jobs.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "backup:db",
                "backup:files",
                "check-data:main",
                "check-data:offsite",
                "check:main",
                "check:offsite",
                "replicate:main:offsite",
                "retention:main",
                "verify:files"
            ]
        );
        assert!(jobs["backup:files"].schedule.is_some());
        assert!(jobs["backup:db"].schedule.is_none(), "no schedule: on demand only");
        assert!(jobs["check:main"].schedule.is_some(), "checks run daily by default");
        assert!(jobs["check:offsite"].schedule.is_none(), "disabled");
        assert_eq!(replicas_after_backup(&c, "main"), ["replicate:main:offsite"]);
    }

    #[test]
    fn each_job_becomes_the_command_an_operator_would_type() {
        let c = Config::parse("c.toml", CONFIG).unwrap();
        let p = Path::new("/etc/arkiv.toml");
        let head = "--config /etc/arkiv.toml --json --no-progress";
        let line = |k, t: &str| format!("{head} {}", argv(p, &c, k, t, &[]).unwrap()[4..].join(" "));
        assert_eq!(line(JobKind::Backup, "files"), format!("{head} backup --source files"));
        assert_eq!(
            line(JobKind::Backup, "db"),
            format!("{head} --repo main pg backup --pgdata /var/lib/postgresql/15/main --port 5433")
        );
        assert_eq!(
            line(JobKind::Retention, "main"),
            format!("{head} --repo main forget --keep-daily 7 --keep-within 2d --prune --grace 1h")
        );
        assert_eq!(line(JobKind::CheckData, "main"), format!("{head} --repo main check --read-data-subset 10%"));
        assert_eq!(
            line(JobKind::Replicate, "main:offsite"),
            format!(
                "{head} --repo main copy --to s3://bucket/arkiv?endpoint=http://127.0.0.1:3900 --to-key-file /etc/arkiv/offsite.key"
            )
        );
        assert!(argv(p, &c, JobKind::Retention, "offsite", &[]).unwrap_err().contains("no retention policy"));
    }

    #[test]
    fn outcomes_are_read_from_the_last_json_document() {
        let out = br#"{"id":"aaa","snapshot":{"summary":{"bytes_read":1}}}
{"id":"bbb","snapshot":{"summary":{"bytes_read":42,"total_files":7}}}"#;
        let o = parse_outcome(out);
        assert_eq!((o.snapshot.as_deref(), o.bytes, o.files), (Some("bbb"), Some(42), Some(7)));
        assert_eq!(parse_outcome(b"not json").snapshot, None);
    }
}
