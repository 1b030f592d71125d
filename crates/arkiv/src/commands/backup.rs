//! `arkiv backup`.

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Result;
use arkiv_source::bucket;
use arkiv_source::files::{self, BackupOptions, PathFilter, Progress};
use arkiv_source::stream::{self, StreamOptions, StreamSource};

use arkiv_control::Config;

use crate::cli::{BackupArgs, Global};
use crate::output;
use crate::progress::Ticker;
use crate::Usage;

pub fn run(g: &Global, config: Option<&Config>, a: BackupArgs) -> Result<ExitCode> {
    if !a.sources.is_empty() {
        return run_configured(g, config, a);
    }
    if let Some(url) = a.paths.first().and_then(|p| p.to_str()).filter(|p| arkiv_source::spec::is_source_url(p)) {
        if a.paths.len() > 1 {
            return Err(Usage("a source URL is backed up on its own: give it alone, without paths".into()).into());
        }
        return run_url(g, &a, url);
    }
    let stdin = a.stdin || a.stdin_filename.is_some();
    if stdin && !a.paths.is_empty() {
        return Err(Usage("--stdin takes no paths".into()).into());
    }
    if !stdin && a.paths.is_empty() {
        return Err(Usage("nothing to back up: give at least one path, or --stdin".into()).into());
    }
    if let Some(name) = a.stdin_filename.as_deref().filter(|n| n.is_empty() || n.contains('/')) {
        return Err(Usage(format!("--stdin-filename '{name}' must be a plain file name")).into());
    }
    let mut patterns = a.excludes.clone();
    patterns.extend(PathFilter::read_pattern_files(&a.exclude_files)?);
    let opts = BackupOptions {
        paths: a.paths.clone(),
        excludes: PathFilter::new(&patterns)?,
        exclude_caches: a.exclude_caches,
        one_file_system: a.one_file_system,
        tags: a.tags.clone(),
        host: a.host.clone(),
        parent: a.parent.clone(),
        force: a.force,
        dry_run: a.dry_run,
        ..Default::default()
    };
    let indexed = crate::context::open(g)?.index()?;
    let progress = Arc::new(Progress::default());
    let p = progress.clone();
    let ticker = Ticker::start(g, "{spinner} {elapsed_precise} {msg}", move |bar| {
        bar.set_message(format!(
            "{} files, {} dirs, {} processed ({} read), {} errors",
            p.files.load(Ordering::Relaxed),
            p.dirs.load(Ordering::Relaxed),
            output::bytes(p.bytes.load(Ordering::Relaxed)),
            output::bytes(p.bytes_read.load(Ordering::Relaxed)),
            p.errors.load(Ordering::Relaxed),
        ));
        bar.tick();
    });
    let outcome = if stdin {
        let name = a.stdin_filename.clone().unwrap_or_else(|| "stdin".into());
        files::backup_stream(&indexed, &name, std::io::stdin().lock(), &opts, &progress)
    } else {
        files::backup(&indexed, &opts, &progress)
    };
    ticker.finish();
    report(g, a.dry_run, outcome?)
}

/// Backs up sources named in the configuration file, one after another;
/// the first that fails stops the run.
fn run_configured(g: &Global, config: Option<&Config>, a: BackupArgs) -> Result<ExitCode> {
    let Some(c) = config else {
        return Err(
            Usage("--source names a source of the configuration file: give --config (or ARKIV_CONFIG)".into()).into()
        );
    };
    if !a.paths.is_empty() || a.stdin || a.stdin_filename.is_some() {
        return Err(
            Usage("--source takes no paths or --stdin: the configuration file says what to back up".into()).into()
        );
    }
    let mut code = ExitCode::SUCCESS;
    for name in &a.sources {
        let s = c.source(name)?;
        let mut args = a.clone();
        args.sources.clear();
        args.tags = s.tags.iter().chain(&a.tags).cloned().collect();
        args.host = a.host.clone().or_else(|| s.host.clone());
        if !g.quiet && !g.json && a.sources.len() > 1 {
            println!("== {name}");
        }
        let done = match c.source_url(name)? {
            Some(url) => run_url(g, &args, &url)?,
            None => {
                args.paths = s.paths.clone();
                args.excludes = s.exclude.iter().chain(&a.excludes).cloned().collect();
                run(g, None, args)?
            }
        };
        if done != ExitCode::SUCCESS {
            code = done;
        }
    }
    Ok(code)
}

/// Backs up what a source URL names: a bucket, or a stream source.
fn run_url(g: &Global, a: &BackupArgs, url: &str) -> Result<ExitCode> {
    if bucket::is_bucket_url(url) {
        return run_bucket(g, a, url);
    }
    let source = arkiv_source::spec::source(url).expect("a source URL")?;
    run_stream(g, a, source.as_ref())
}

/// Backs up the objects under a bucket prefix.
fn run_bucket(g: &Global, a: &BackupArgs, url: &str) -> Result<ExitCode> {
    // --force applies: it re-reads objects the parent says are unchanged.
    if let Some(flag) = file_only_flag(a, false) {
        return Err(Usage(format!("{flag} applies to files, not to a bucket")).into());
    }
    let mut source = bucket::BucketSource::open(url, &crate::context::store_options(g)?)?;
    source.force = a.force;
    let opts = StreamOptions { tags: a.tags.clone(), host: a.host.clone(), dry_run: a.dry_run };
    let indexed = crate::context::open(g)?.index()?;
    let progress = Arc::new(Progress::default());
    let p = progress.clone();
    let ticker = Ticker::start(g, "{spinner} {elapsed_precise} {msg}", move |bar| {
        bar.set_message(format!(
            "{} objects, {} processed ({} read)",
            p.files.load(Ordering::Relaxed),
            output::bytes(p.bytes.load(Ordering::Relaxed)),
            output::bytes(p.bytes_read.load(Ordering::Relaxed)),
        ));
        bar.tick();
    });
    let outcome = bucket::backup(&indexed, &source, &opts, &progress);
    ticker.finish();
    let outcome = outcome.map_err(|e| failed("backup of", source.bucket.location(), e))?;
    if !g.json && !g.quiet {
        let m = &outcome.snapshot.summary;
        println!(
            "objects: {} new, {} changed, {} unchanged (not read)",
            m.files_new, m.files_changed, m.files_unmodified
        );
    }
    report(g, a.dry_run, outcome)
}

/// Backs up a database or other stream source.
fn run_stream(g: &Global, a: &BackupArgs, source: &dyn StreamSource) -> Result<ExitCode> {
    if let Some(flag) = file_only_flag(a, true) {
        return Err(Usage(format!("{flag} applies to files, not to a {} source", source.kind())).into());
    }
    let opts = StreamOptions { tags: a.tags.clone(), host: a.host.clone(), dry_run: a.dry_run };
    let indexed = crate::context::open(g)?.index()?;
    let progress = Arc::new(Progress::default());
    let p = progress.clone();
    let label = source.kind();
    let ticker = Ticker::start(g, "{spinner} {elapsed_precise} {msg}", move |bar| {
        bar.set_message(format!(
            "{label}: {} streams, {} read",
            p.files.load(Ordering::Relaxed),
            output::bytes(p.bytes_read.load(Ordering::Relaxed)),
        ));
        bar.tick();
    });
    let outcome = stream::backup(&indexed, source, &opts, &progress);
    ticker.finish();
    let outcome = outcome.map_err(|e| failed("backup of", &source.location(), e))?;
    if !g.json && !g.quiet {
        if let Some(streams) = outcome.snapshot.metadata.get("streams").and_then(|s| s.as_array()) {
            for s in streams {
                println!(
                    "stream {}: {} in {:.2}s",
                    s["name"].as_str().unwrap_or("?"),
                    output::bytes(s["bytes"].as_u64().unwrap_or(0)),
                    s["seconds"].as_f64().unwrap_or(0.0)
                );
            }
        }
    }
    report(g, a.dry_run, outcome)
}

fn report(g: &Global, dry_run: bool, outcome: files::BackupOutcome) -> Result<ExitCode> {
    let s = &outcome.snapshot;
    if g.json {
        output::json(&serde_json::json!({
            "id": outcome.id,
            "dry_run": dry_run,
            "partial": s.is_partial(),
            "snapshot": s,
        }));
    } else if !g.quiet {
        let m = &s.summary;
        if s.source == "files" {
            println!(
                "files: {} new, {} changed, {} unmodified; {} directories",
                m.files_new, m.files_changed, m.files_unmodified, m.dirs
            );
        }
        println!(
            "added: {} of new data in {} blobs ({} stored); {} read of {} total",
            output::bytes(m.bytes_new),
            m.blobs_new,
            output::bytes(m.bytes_stored),
            output::bytes(m.bytes_read),
            output::bytes(m.total_bytes)
        );
        match outcome.id {
            Some(id) => println!("snapshot {} saved in {:.2}s", id.short(), m.duration_secs),
            None => println!("dry run: nothing was written ({:.2}s)", m.duration_secs),
        }
    }
    if s.is_partial() {
        let n = s.skipped.iter().filter(|k| k.error).count();
        eprintln!("arkiv: backup is partial: {n} item(s) could not be read (listed in the snapshot)");
        return Ok(ExitCode::from(crate::EXIT_PARTIAL));
    }
    Ok(ExitCode::SUCCESS)
}

/// "backup of LOCATION failed: …", without naming the location twice when
/// the error already starts with it.
pub fn failed(what: &str, location: &str, e: impl std::fmt::Display) -> anyhow::Error {
    let text = e.to_string();
    match text.strip_prefix(location).and_then(|rest| rest.strip_prefix(": ")) {
        Some(rest) => anyhow::anyhow!("{what} {location} failed: {rest}"),
        None => anyhow::anyhow!("{what} {location} failed: {text}"),
    }
}

/// The first flag given that only a files backup honours; `--force` counts
/// as one unless the source compares against a parent too (buckets).
fn file_only_flag(a: &BackupArgs, force_too: bool) -> Option<&'static str> {
    [
        ("--exclude", !a.excludes.is_empty()),
        ("--exclude-file", !a.exclude_files.is_empty()),
        ("--exclude-caches", a.exclude_caches),
        ("--one-file-system", a.one_file_system),
        ("--parent", a.parent.is_some()),
        ("--force", force_too && a.force),
        ("--stdin", a.stdin || a.stdin_filename.is_some()),
    ]
    .into_iter()
    .find_map(|(flag, on)| on.then_some(flag))
}
