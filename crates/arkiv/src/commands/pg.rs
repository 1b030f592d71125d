//! `arkiv pg …`: PostgreSQL physical backups, the archive and restore
//! commands PostgreSQL runs, point-in-time restores, and WAL retention.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use arkiv_repo::retention::{parse_duration, KeepPolicy};
use arkiv_source::postgres::physical::{self, Action, BaseBackupOptions, PhysicalRestoreOptions, Target};
use arkiv_source::postgres::receive::ReceiveOptions;
use arkiv_source::postgres::spool::Spool;
use arkiv_source::postgres::wal::{self, Fetched, Pushed};

use crate::cli::{
    ArchiverArgs, Global, PgBackupArgs, PgCommand, PgExpireArgs, PgRestoreArgs, ReceiveArgs, WalFetchArgs, WalPushArgs,
};
use crate::output;
use crate::progress::Ticker;
use crate::Usage;

/// `wal-fetch`'s status for anything but "not archived": above 125, so
/// PostgreSQL stops recovery rather than taking it for the end of the WAL
/// and promoting a server that is missing data.
const EXIT_FETCH_ERROR: u8 = 255;

pub fn run(g: &Global, c: PgCommand) -> Result<ExitCode> {
    match c {
        PgCommand::WalPush(a) => wal_push(g, a),
        PgCommand::WalFetch(a) => Ok(wal_fetch(g, a)),
        PgCommand::Backup(a) => backup(g, a),
        PgCommand::Restore(a) => restore(g, a),
        PgCommand::Info => info(g),
        PgCommand::Expire(a) => expire(g, a),
        PgCommand::Archiver(a) => archiver(g, a),
        PgCommand::Receive(a) => receive(g, a),
    }
}

fn wal_push(g: &Global, a: WalPushArgs) -> Result<ExitCode> {
    if let Some(dir) = &a.spool {
        return wal_push_async(g, &a, dir);
    }
    let repo = crate::context::open(g)?;
    let how = wal::push(&repo, &a.path, a.compression)?;
    let name = a.path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    if g.json {
        output::json(&serde_json::json!({ "name": name, "already_stored": how == Pushed::AlreadyStored }));
    } else if how == Pushed::AlreadyStored {
        tracing::info!("{name} was already archived with the same content");
    }
    Ok(ExitCode::SUCCESS)
}

/// The global flags that say which repository and how to open it, for
/// a process this one starts.
fn repository_args(g: &Global) -> Vec<String> {
    let mut v = Vec::new();
    let mut add = |flag: &str, val: String| {
        v.push(flag.to_string());
        v.push(val);
    };
    if let Some(r) = &g.repo {
        add("--repo", location_word(r));
    }
    if let Some(d) = &g.data_repo {
        add("--data-repo", location_word(d));
    }
    if let Some(k) = &g.key_file {
        add("--key-file", absolute(k));
    }
    if let Some(f) = &g.password_file {
        add("--password-file", absolute(f));
    }
    if let Some(c) = &g.cache_dir {
        add("--cache-dir", absolute(c));
    }
    v
}

fn wal_push_async(g: &Global, a: &WalPushArgs, dir: &Path) -> Result<ExitCode> {
    let spool = Spool::new(dir)?;
    let name = a.path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let pg_wal = std::path::absolute(a.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))?;
    let start = || -> arkiv_source::Result<()> {
        let exe = std::env::current_exe().map_err(|e| arkiv_source::Error::Invalid(format!("finding arkiv: {e}")))?;
        let log =
            std::fs::File::options().create(true).append(true).open(spool.dir.join("archiver.log")).map_err(|e| {
                arkiv_source::Error::Io { path: spool.dir.join("archiver.log").display().to_string(), cause: e }
            })?;
        let mut c = std::process::Command::new(exe);
        c.args(repository_args(g))
            .args(["pg", "archiver", "--spool"])
            .arg(&spool.dir)
            .arg("--pg-wal")
            .arg(&pg_wal)
            .args(["--parallel", &a.parallel.to_string(), "--compression", &a.compression.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().map_err(|e| arkiv_source::Error::Invalid(e.to_string()))?)
            .stderr(log);
        // Its own session: PostgreSQL's archiver may signal our process
        // group, and the pusher must outlive this short command.
        // SAFETY: setsid in the child before exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            c.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        c.spawn().map_err(|e| arkiv_source::Error::Invalid(format!("starting the archiver: {e}")))?;
        Ok(())
    };
    if spool.await_pushed(&name, std::time::Duration::from_secs(a.wait), &start)? {
        Ok(ExitCode::SUCCESS)
    } else {
        anyhow::bail!(
            "{name} is still waiting for the archiver after {} s (see {}); PostgreSQL will retry",
            a.wait,
            spool.dir.join("status.json").display()
        )
    }
}

fn archiver(g: &Global, a: ArchiverArgs) -> Result<ExitCode> {
    let repo = crate::context::open(g)?;
    let spool = Spool::new(&a.spool)?;
    let idle = if a.idle_exit == 0 { std::time::Duration::MAX } else { std::time::Duration::from_secs(a.idle_exit) };
    arkiv_source::postgres::spool::run_pusher(&repo, &spool, &a.pg_wal, a.parallel, a.compression, idle)?;
    Ok(ExitCode::SUCCESS)
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn receive(g: &Global, a: ReceiveArgs) -> Result<ExitCode> {
    let repo = crate::context::open(g)?;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGTERM, on_stop as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_stop as *const () as libc::sighandler_t);
    }
    let opts = ReceiveOptions {
        conn: a.conn.conn(),
        slot: a.slot,
        create_slot: a.create_slot,
        dir: a.dir,
        interval: std::time::Duration::from_millis(a.interval_ms.max(50)),
        pg_bin: a.pg_bin,
    };
    arkiv_source::postgres::receive::run(&repo, &opts, &STOP)?;
    Ok(ExitCode::SUCCESS)
}

fn wal_fetch(g: &Global, a: WalFetchArgs) -> ExitCode {
    let fetched = crate::context::open(g).and_then(|repo| Ok(wal::fetch(&repo, &a.name, &a.dest, a.prefetch)?));
    match fetched {
        Ok(Fetched::Found) => ExitCode::SUCCESS,
        Ok(Fetched::Partial) => {
            eprintln!("arkiv: {} is only archived as a partial segment; recovery replays what it holds", a.name);
            ExitCode::SUCCESS
        }
        Ok(Fetched::NotFound) => {
            // PostgreSQL asks for files that may not exist (the next
            // timeline's history, the segment after the last): normal, and
            // the server logs nothing either.
            if !g.quiet {
                eprintln!("arkiv: {} is not in the archive", a.name);
            }
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("arkiv: error: cannot fetch {}: {e:#}", a.name);
            ExitCode::from(EXIT_FETCH_ERROR)
        }
    }
}

fn backup(g: &Global, a: PgBackupArgs) -> Result<ExitCode> {
    let interval = parse_duration(&a.full_read_interval).map_err(|e| Usage(format!("--full-read-interval: {e}")))?;
    let opts = BaseBackupOptions {
        pgdata: a.pgdata,
        conn: a.conn.conn(),
        full: a.full,
        full_read_interval: interval.to_std().unwrap_or_default(),
        fast_checkpoint: !a.spread_checkpoint,
        archive_timeout: std::time::Duration::from_secs(a.archive_timeout),
        verify_checksums: !a.no_verify_checksums,
        tags: a.tags,
        host: a.hostname,
    };
    let indexed = crate::context::open(g)?.index()?;
    let progress = Arc::new(arkiv_source::files::Progress::default());
    let p = progress.clone();
    let ticker = Ticker::start(g, "{spinner} {elapsed_precise} {msg}", move |bar| {
        bar.set_message(format!(
            "{} files, {} read",
            p.files.load(Ordering::Relaxed),
            output::bytes(p.bytes_read.load(Ordering::Relaxed))
        ));
    });
    let out = physical::backup(&indexed, &opts, &progress);
    ticker.finish();
    let out = out?;
    let s = &out.snapshot.summary;
    let files_read = s.files_new + s.files_changed;
    if g.json {
        output::json(&serde_json::json!({
            "id": out.id,
            "start_lsn": out.info.start_lsn,
            "stop_lsn": out.info.stop_lsn,
            "start_wal": out.info.start_wal,
            "stop_wal": out.info.stop_wal,
            "timeline": out.info.timeline,
            "started": out.info.started,
            "stopped": out.info.stopped,
            "incremental": out.info.incremental,
            "parent": out.snapshot.parent,
            "files": s.total_files,
            "files_read": files_read,
            "files_unchanged": s.files_unmodified,
            "bytes": s.total_bytes,
            "bytes_read": s.bytes_read,
            "bytes_stored": s.bytes_stored,
            "duration_secs": s.duration_secs,
            "skipped": out.snapshot.skipped,
            "pages_checked": out.info.pages_checked,
            "checksum_failures": out.info.checksum_failures,
        }));
    } else if !g.quiet {
        println!(
            "base backup {} of {} saved: {} files ({}), {} read{}, {} stored, WAL {} to {}, {:.1} s",
            out.id.short(),
            out.info.pgdata,
            s.total_files,
            output::bytes(s.total_bytes),
            output::bytes(s.bytes_read),
            if out.info.incremental { format!(" ({} files unchanged)", s.files_unmodified) } else { String::new() },
            output::bytes(s.bytes_stored),
            out.info.start_wal,
            out.info.stop_wal,
            s.duration_secs
        );
    }
    if !out.info.checksum_failures.is_empty() {
        for f in &out.info.checksum_failures {
            eprintln!("arkiv: page checksum failure: {} block {}", f.path, f.block);
        }
        eprintln!(
            "arkiv: base backup {} saved, but {} page(s) failed their checksum: the cluster's files are damaged; an \
             older base backup may hold good copies",
            out.id.short(),
            out.info.checksum_failures.len()
        );
        return Ok(ExitCode::from(crate::EXIT_PARTIAL));
    }
    Ok(ExitCode::SUCCESS)
}

/// A word for a shell: quoted unless plainly safe.
fn shell_word(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._:=@%+,-".contains(&b)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn absolute(p: &Path) -> String {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string()
}

/// The location as given, made absolute when it is a directory: the
/// restored server runs the command from its data directory.
fn location_word(loc: &str) -> String {
    if loc.contains("://") {
        loc.to_string()
    } else {
        absolute(Path::new(loc))
    }
}

/// The `restore_command` that fetches from this repository the way this
/// command opened it, and a note when the restored server will need
/// something from its environment.
fn restore_command(g: &Global) -> Result<(String, Option<String>)> {
    let exe = std::env::current_exe().context("finding the arkiv binary for restore_command")?;
    let repo = g.repo.as_deref().ok_or_else(|| Usage("no repository given: use --repo or ARKIV_REPO".into()))?;
    let mut words = vec![exe.display().to_string()];
    words.extend(repository_args(g));
    words.extend(["pg".into(), "wal-fetch".into()]);
    let mut notes = Vec::new();
    if g.key_file.is_none() && g.password_file.is_none() {
        notes.push(
            "restore_command has no password file: the restored server needs ARKIV_PASSWORD in its environment \
             (or restore again with --password-file)",
        );
    }
    if repo.contains("://") {
        notes.push(
            "the repository is remote: the restored server needs its credentials (e.g. AWS_ACCESS_KEY_ID) in its \
             environment",
        );
    }
    let note = (!notes.is_empty()).then(|| notes.join("; "));
    let mut cmd: Vec<String> = words.iter().map(|w| shell_word(w)).collect();
    cmd.push("%f".into());
    cmd.push("\"%p\"".into());
    Ok((cmd.join(" "), note))
}

fn restore(g: &Global, a: PgRestoreArgs) -> Result<ExitCode> {
    let target = if let Some(t) = &a.time {
        Target::Time(physical::parse_time(t).map_err(|e| Usage(format!("--time: {e}")))?)
    } else if let Some(l) = &a.lsn {
        Target::Lsn(l.parse().map_err(|e| Usage(format!("--lsn: {e}")))?)
    } else if let Some(x) = a.xid {
        Target::Xid(x)
    } else if let Some(n) = &a.name {
        Target::Name(n.clone())
    } else if a.immediate {
        Target::Immediate
    } else {
        Target::End
    };
    let action: Option<Action> =
        a.action.as_deref().map(str::parse).transpose().map_err(|e: arkiv_source::Error| Usage(e.to_string()))?;
    if action.is_some() && target == Target::End {
        return Err(Usage(
            "--action applies when a target is given (--time, --lsn, --xid, --name or --immediate); without one the \
             server replays all archived WAL and promotes"
                .into(),
        )
        .into());
    }
    if let Some(t) = &a.timeline {
        if !(t == "latest" || t == "current" || t.parse::<u32>().is_ok()) {
            return Err(Usage(format!("--timeline {t}: use latest, current or a timeline number")).into());
        }
    }
    let mut map = Vec::new();
    for t in &a.tablespaces {
        let (k, v) = t.split_once('=').ok_or_else(|| Usage(format!("--tablespace {t}: write it as NAME=DIR")))?;
        map.push((k.to_string(), PathBuf::from(v)));
    }
    let (restore_command, mut note) = match &a.restore_command {
        Some(c) => (c.clone(), None),
        None => restore_command(g)?,
    };
    let opts = PhysicalRestoreOptions {
        pgdata: std::path::absolute(&a.pgdata).unwrap_or(a.pgdata.clone()),
        snapshot: a.snapshot,
        target,
        timeline: a.timeline,
        action,
        restore_command,
        tablespace_map: map,
        pg_bin: a.pg_bin,
    };
    let indexed = crate::context::open(g)?.index()?;
    let progress = Arc::new(arkiv_source::files::restore::RestoreProgress::default());
    let p = progress.clone();
    let ticker = Ticker::start(g, "{elapsed_precise} [{bar:30}] {bytes}/{total_bytes} {msg}", move |bar| {
        bar.set_length(p.total_bytes.load(Ordering::Relaxed));
        bar.set_position(p.bytes.load(Ordering::Relaxed));
    });
    let out = physical::restore(&indexed, &opts, &progress);
    ticker.finish();
    let out = out?;
    if let Some(v) = &out.version_note {
        note = Some(match note {
            Some(n) => format!("{n}; {v}"),
            None => v.clone(),
        });
    }
    if g.json {
        let mut v = serde_json::to_value(&out)?;
        v["note"] = serde_json::json!(note);
        output::json(&v);
    } else if !g.quiet {
        println!(
            "restored base backup {} ({} files, {}) into {}; it recovers to {} with WAL {} … {} from the repository \
             once started",
            out.snapshot.short(),
            out.files,
            output::bytes(out.bytes),
            out.pgdata,
            out.target,
            out.wal_needed_from,
            out.wal_needed_to
        );
        if let Some(n) = note {
            println!("note: {n}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn info(g: &Global) -> Result<ExitCode> {
    let repo = crate::context::open(g)?;
    let info = physical::info(&repo)?;
    if g.json {
        output::json(&info);
        return Ok(ExitCode::SUCCESS);
    }
    println!("Base backups: {}", info.backups.len());
    if !info.backups.is_empty() {
        println!(
            "  {:<10} {:<20} {:>3} {:<12} {:<12} {:>10}  kind",
            "id", "stopped", "tli", "start lsn", "stop lsn", "size"
        );
    }
    for b in &info.backups {
        println!(
            "  {:<10} {:<20} {:>3} {:<12} {:<12} {:>10}  {}",
            b.id.short(),
            output::time(&b.info.stopped),
            b.info.timeline,
            b.info.start_lsn,
            b.info.stop_lsn,
            output::bytes(b.bytes),
            if b.info.incremental { "incremental" } else { "full read" }
        );
    }
    println!("WAL:");
    if info.timelines.is_empty() {
        println!("  (none archived)");
    }
    for t in &info.timelines {
        println!("  timeline {}: {} … {} ({} segments)", t.timeline, t.first, t.last, t.segments);
        if !t.missing.is_empty() {
            println!("    missing: {}", t.missing.join(", "));
        }
        if let Some(p) = &t.partial {
            println!("    streamed partial: {p}");
        }
    }
    if !info.history.is_empty() {
        println!("History files: {}", info.history.join(", "));
    }
    match (info.window.from, info.window.to) {
        (Some(f), Some(t)) => println!("Recoverable window: {} to {}", output::time(&f), output::time(&t)),
        _ => println!("Recoverable window: none (needs a base backup and its WAL)"),
    }
    Ok(ExitCode::SUCCESS)
}

fn expire(g: &Global, a: PgExpireArgs) -> Result<ExitCode> {
    let policy = KeepPolicy {
        last: a.keep_last,
        daily: a.keep_daily,
        weekly: a.keep_weekly,
        within: a
            .keep_within
            .as_deref()
            .map(parse_duration)
            .transpose()
            .map_err(|e| Usage(format!("--keep-within: {e}")))?,
        ..Default::default()
    };
    if policy.is_empty() {
        return Err(Usage("say what to keep: --keep-last, --keep-daily, --keep-weekly or --keep-within".into()).into());
    }
    let repo = crate::context::open(g)?;
    let out = physical::expire(&repo, &policy, a.dry_run)?;
    if g.json {
        output::json(&out);
    } else if !g.quiet {
        let verb = if a.dry_run { "would remove" } else { "removed" };
        println!(
            "{verb} {} base backup(s) and {} WAL file(s); kept {} base backup(s){}",
            out.removed.len(),
            out.wal_removed,
            out.kept.len(),
            out.wal_kept_from.as_ref().map(|w| format!(", WAL from {w}")).unwrap_or_default()
        );
        for id in &out.removed {
            println!("  {verb} {}", id.short());
        }
    }
    Ok(ExitCode::SUCCESS)
}
