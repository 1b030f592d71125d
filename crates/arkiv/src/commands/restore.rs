//! `arkiv restore`.

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Result;
use arkiv_source::bucket;
use arkiv_source::files::{self, restore::RestoreProgress, PathFilter, RestoreOptions};
use arkiv_source::stream::{self, StreamTarget, Streams};

use crate::cli::{Global, RestoreArgs};
use crate::output;
use crate::progress::Ticker;
use crate::Usage;

pub fn run(g: &Global, a: RestoreArgs) -> Result<ExitCode> {
    if let Some(url) = a.target.to_str().filter(|t| bucket::is_bucket_url(t)) {
        return run_bucket(g, &a, url);
    }
    if let Some(url) = a.target.to_str().filter(|t| arkiv_source::spec::kind_of(t).is_some()) {
        let target = arkiv_source::spec::target(url).expect("a target URL")?;
        return run_stream(g, &a, target.as_ref());
    }
    if let Some(flag) = stream_only_flag(&a) {
        return Err(Usage(format!("{flag} needs a database or command target, not a directory")).into());
    }
    let opts = RestoreOptions {
        target: a.target.clone(),
        includes: PathFilter::new(&a.includes)?,
        excludes: PathFilter::new(&a.excludes)?,
        overwrite: a.overwrite,
        dry_run: a.dry_run,
    };
    let repo = crate::context::open(g)?;
    let snap = repo.find_snapshot(&a.snapshot, &super::snapshot_filter(&a.filter))?;
    let indexed = repo.index()?;
    let progress = Arc::new(RestoreProgress::default());
    let ticker = progress_bar(g, &progress);
    let out = files::restore(&indexed, &snap.snapshot.tree, &opts, &progress);
    ticker.finish();
    let out = out?;
    if g.json {
        output::json(
            &serde_json::json!({ "snapshot": snap.id, "target": a.target, "dry_run": a.dry_run, "result": out }),
        );
    } else {
        // --quiet keeps errors and warnings: only the report of what was
        // done is left out.
        for w in &out.warnings {
            eprintln!("arkiv: warning: {w}");
        }
    }
    if !g.json && !g.quiet {
        if a.dry_run {
            for p in &out.planned {
                println!("would restore {} ({})", p.path, output::bytes(p.size));
            }
        }
        for s in &out.skipped_existing {
            println!("left alone (exists; use --overwrite): {s}");
        }
        let verb = if a.dry_run { "would restore" } else { "restored" };
        println!(
            "{verb} snapshot {} to {}: {} files ({}), {} directories, {} symlinks, {} hard links",
            snap.id.short(),
            a.target.display(),
            out.files,
            output::bytes(out.bytes),
            out.dirs,
            out.symlinks,
            out.hardlinks
        );
    }
    if let Some(e) = &out.storage_error {
        // Not damage: the storage could not be read. One line, not one per
        // file, and a plain failure: rerun once the store is back.
        anyhow::bail!("{} file(s) not restored: cannot read the repository: {e}", out.damaged.len());
    }
    if !out.damaged.is_empty() {
        for d in &out.damaged {
            eprintln!("arkiv: damaged: {}: {}", d.path, d.reason);
        }
        eprintln!("arkiv: restore is partial: {} file(s) could not be restored intact", out.damaged.len());
        return Ok(ExitCode::from(crate::EXIT_PARTIAL));
    }
    Ok(ExitCode::SUCCESS)
}

/// Restores a database or stream snapshot into a database, file or command.
fn run_stream(g: &Global, a: &RestoreArgs, target: &dyn StreamTarget) -> Result<ExitCode> {
    if !a.includes.is_empty() || !a.excludes.is_empty() || a.dry_run {
        return Err(Usage("--include, --exclude and --dry-run apply to restores into a directory".into()).into());
    }
    let opts = stream::RestoreOptions {
        tables: a.tables.clone(),
        schemas: a.schemas.clone(),
        clean: a.clean,
        overwrite: a.overwrite,
        database: a.database.clone(),
        globals: a.globals,
        stream: a.stream.clone(),
    };
    let repo = crate::context::open(g)?;
    let snap = repo.find_snapshot(&a.snapshot, &super::snapshot_filter(&a.filter))?;
    if !target.accepts(&snap.snapshot.source) {
        anyhow::bail!(
            "snapshot {} is a {} snapshot; it cannot be restored to {}",
            snap.id.short(),
            snap.snapshot.source,
            target.location()
        );
    }
    let indexed = repo.index()?;
    let streams = Streams::open(&indexed, snap.id, snap.snapshot.clone())?;
    let ticker = Ticker::new(g, &format!("restoring to {}", target.location()));
    let report = target.restore(&streams, &opts);
    ticker.finish();
    let report = report.map_err(|e| super::backup::failed("restore to", &target.location(), e))?;
    if g.json {
        output::json(&serde_json::json!({ "snapshot": snap.id, "result": report }));
    } else if !g.quiet {
        for n in &report.notes {
            println!("{n}");
        }
        println!(
            "restored snapshot {} to {}: {} stream(s), {} in {:.2}s",
            snap.id.short(),
            report.target,
            report.streams.len(),
            output::bytes(report.bytes),
            report.duration_secs
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Restores a snapshot's files as objects under a bucket prefix.
fn run_bucket(g: &Global, a: &RestoreArgs, url: &str) -> Result<ExitCode> {
    if let Some(flag) = stream_only_flag(a) {
        return Err(Usage(format!("{flag} does not apply to a bucket target")).into());
    }
    let opts = bucket::BucketRestoreOptions {
        includes: PathFilter::new(&a.includes)?,
        excludes: PathFilter::new(&a.excludes)?,
        overwrite: a.overwrite,
        dry_run: a.dry_run,
    };
    let target = bucket::Bucket::open(url, &crate::context::store_options(g)?)?;
    let repo = crate::context::open(g)?;
    let snap = repo.find_snapshot(&a.snapshot, &super::snapshot_filter(&a.filter))?;
    let indexed = repo.index()?;
    let progress = Arc::new(RestoreProgress::default());
    let ticker = progress_bar(g, &progress);
    let out = bucket::restore(&indexed, &snap.id.short(), &snap.snapshot.tree, &target, &opts, &progress);
    ticker.finish();
    let out = out.map_err(|e| super::backup::failed("restore to", target.location(), e))?;
    if g.json {
        output::json(&serde_json::json!({ "snapshot": snap.id, "dry_run": a.dry_run, "result": out }));
    } else if !g.quiet {
        for k in &out.planned {
            println!("would write {k}");
        }
        for p in &out.not_restorable {
            println!("left out (a bucket cannot hold it): {p}");
        }
        let verb = if a.dry_run { "would restore" } else { "restored" };
        println!(
            "{verb} snapshot {} to {}: {} objects ({}), {} replaced, in {:.2}s",
            snap.id.short(),
            out.target,
            out.objects,
            output::bytes(out.bytes),
            out.replaced,
            out.duration_secs
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The first flag given that only a database or command target honours.
fn stream_only_flag(a: &RestoreArgs) -> Option<&'static str> {
    [
        ("--table", !a.tables.is_empty()),
        ("--schema", !a.schemas.is_empty()),
        ("--clean", a.clean),
        ("--database", a.database.is_some()),
        ("--globals", a.globals),
        ("--stream", a.stream.is_some()),
    ]
    .into_iter()
    .find_map(|(flag, on)| on.then_some(flag))
}

/// The byte progress bar of a restore that writes a tree (to a directory
/// or a bucket).
fn progress_bar(g: &Global, progress: &Arc<RestoreProgress>) -> Ticker {
    let p = progress.clone();
    Ticker::start(g, "{elapsed_precise} [{bar:30}] {bytes}/{total_bytes} {msg}", move |bar| {
        bar.set_length(p.total_bytes.load(Ordering::Relaxed));
        bar.set_position(p.bytes.load(Ordering::Relaxed));
    })
}
