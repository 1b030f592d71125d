//! `arkiv verify`: a test restore into a sandbox, with assertions.

use std::process::ExitCode;

use anyhow::Result;
use arkiv_source::stream::Streams;
use arkiv_source::verify::{self, Assertion, DirSandbox, Sandbox};

use arkiv_control::Config;

use crate::cli::{Global, VerifyArgs};
use crate::output;
use crate::progress::Ticker;
use crate::Usage;

/// Exit status of a verify whose restore or assertions failed: the run
/// itself worked, the backup did not pass.
pub const EXIT_VERIFY_FAILED: u8 = 1;

pub fn run(g: &Global, config: Option<&Config>, mut a: VerifyArgs) -> Result<ExitCode> {
    let mut filter = super::snapshot_filter(&a.filter);
    if let Some(name) = a.source.clone() {
        let Some(c) = config else {
            return Err(Usage(
                "--source names a source of the configuration file: give --config (or ARKIV_CONFIG)".into(),
            )
            .into());
        };
        let s = c.source(&name)?;
        // The source's own snapshots: those of its location.
        filter.paths = match c.source_url(&name)? {
            Some(url) if arkiv_source::bucket::is_bucket_url(&url) => {
                vec![arkiv_source::bucket::Bucket::open(&url, &crate::context::store_options(g)?)?
                    .location()
                    .to_string()]
            }
            Some(url) => vec![arkiv_source::spec::source(&url).expect("checked when the file was read")?.location()],
            None => {
                arkiv_source::files::backup::absolute_paths(&s.paths)?.iter().map(|p| p.display().to_string()).collect()
            }
        };
        if let Some(v) = &s.verify {
            a.sandbox = a.sandbox.or_else(|| v.sandbox.clone());
            a.sql.extend(v.sql.iter().cloned());
            a.tables.extend(v.tables.iter().cloned());
            a.rows.extend(v.rows.iter().cloned());
            a.commands.extend(v.commands.iter().cloned());
        }
    }
    let assertions = assertions(&a)?;
    let repo = crate::context::open(g)?;
    let snap = repo.find_snapshot(&a.snapshot, &filter)?;
    let kind = snap.snapshot.source.clone();
    let location = snap.snapshot.paths.first().cloned().unwrap_or_default();
    let mut sandbox: Box<dyn Sandbox> = match arkiv_source::spec::sandbox(&kind, &location, a.sandbox.as_deref()) {
        Some(s) => s?,
        None if a.sandbox.is_some() => {
            anyhow::bail!("--sandbox does not apply to {kind} snapshots: they are verified in a temporary directory")
        }
        None => Box::new(DirSandbox::new()?),
    };
    let indexed = repo.index()?;
    let streams = Streams::open(&indexed, snap.id, snap.snapshot.clone())?;
    let ticker = Ticker::new(g, &format!("verifying {} in {}", snap.id.short(), sandbox.location()));
    let report = verify::run(sandbox.as_mut(), &streams, &assertions);
    ticker.finish();
    if g.json {
        output::json(
            &serde_json::json!({ "snapshot": snap.id, "source": kind, "passed": report.passed(), "report": report }),
        );
    } else {
        if let Some(e) = &report.restore_error {
            eprintln!("arkiv: verify: restore into {} failed: {e}", report.sandbox);
        } else if !g.quiet {
            println!(
                "restored snapshot {} ({kind}) into {} in {:.2}s ({})",
                snap.id.short(),
                report.sandbox,
                report.restore_secs,
                output::bytes(report.bytes)
            );
        }
        for c in &report.checks {
            if c.passed && !g.quiet {
                println!("ok    {}: {}", c.assertion.describe(), c.detail);
            } else if !c.passed {
                eprintln!("FAIL  {}: {}", c.assertion.describe(), c.detail);
            }
        }
    }
    if let Some(e) = &report.cleanup_error {
        eprintln!("arkiv: verify: the sandbox {} could not be removed: {e}", report.sandbox);
    }
    if !report.passed() {
        if !g.json {
            let failed = report.checks.iter().filter(|c| !c.passed).count();
            match &report.restore_error {
                Some(_) => eprintln!("arkiv: verify failed: snapshot {} did not restore", snap.id.short()),
                None => eprintln!(
                    "arkiv: verify failed: {failed} of {} assertion(s) failed on snapshot {}",
                    report.checks.len(),
                    snap.id.short()
                ),
            }
        }
        return Ok(ExitCode::from(EXIT_VERIFY_FAILED));
    }
    if !g.json && !g.quiet {
        println!("verified: {} assertion(s) passed; sandbox removed", report.checks.len());
    }
    Ok(ExitCode::SUCCESS)
}

fn assertions(a: &VerifyArgs) -> Result<Vec<Assertion>> {
    let mut v: Vec<Assertion> = a.sql.iter().map(|q| Assertion::Sql { query: q.clone() }).collect();
    v.extend(a.tables.iter().map(|t| Assertion::Table { name: t.clone() }));
    for r in &a.rows {
        v.push(Assertion::min_rows(r).map_err(|e| crate::Usage(e.to_string()))?);
    }
    v.extend(a.commands.iter().map(|c| Assertion::Command { command: c.clone() }));
    Ok(v)
}
