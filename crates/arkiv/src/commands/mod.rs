//! One module per group of commands; each turns parsed arguments into
//! library calls and prints the result.

pub(crate) mod backup;
mod browse;
mod daemon;
mod keys;
mod maintenance;
mod pg;
mod replicate;
mod restore;
mod retention;
mod verify;

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::{Cli, Command, FilterArgs};

pub fn run(cli: Cli) -> Result<ExitCode> {
    let mut global = cli.global.clone();
    let config = match &global.config {
        Some(path) => Some(arkiv_control::Config::load(path)?),
        None => None,
    };
    if let Some(c) = &config {
        // A named source brings its own repository (unless --repo names one).
        let sources: Vec<String> = match &cli.command {
            Command::Backup(a) => a.sources.clone(),
            Command::Verify(a) => a.source.iter().cloned().collect(),
            _ => Vec::new(),
        };
        crate::context::apply_config(&mut global, c, &sources)?;
    }
    let g = &global;
    match cli.command {
        Command::Init(a) => maintenance::init(g, a),
        Command::Backup(a) => backup::run(g, config.as_ref(), a),
        Command::Snapshots(a) => browse::snapshots(g, a),
        Command::Ls(a) => browse::ls(g, a),
        Command::Diff(a) => browse::diff(g, a),
        Command::Find(a) => browse::find(g, a),
        Command::Restore(a) => restore::run(g, a),
        Command::Verify(a) => verify::run(g, config.as_ref(), a),
        Command::Check(a) => maintenance::check(g, a),
        Command::Stats(a) => maintenance::stats(g, a),
        Command::Key(k) => keys::run(g, k),
        Command::Cat(a) => maintenance::cat(g, a),
        Command::Forget(a) => retention::forget(g, a),
        Command::Prune(a) => retention::prune(g, a),
        Command::Copy(a) => replicate::copy(g, a),
        Command::ReplicationStatus(a) => replicate::status(g, a),
        Command::Pg(c) => pg::run(g, c),
        Command::Serve => daemon::serve(g, config.as_ref()),
        Command::Config(c) => daemon::config(g, config.as_ref(), c),
        Command::Token(c) => daemon::token(g, config.as_ref(), c),
        Command::Audit(c) => daemon::audit(g, config.as_ref(), c),
    }
}

pub fn snapshot_filter(f: &FilterArgs) -> arkiv_repo::SnapshotFilter {
    arkiv_repo::SnapshotFilter { host: f.host.clone(), tags: f.tags.clone(), paths: f.paths.clone(), source: None }
}
