//! Any program's output as a backup, and any program's input as a restore:
//! for data Arkiv has no source of its own for (a Firestore export,
//! `mongodump --archive`, an application's own export).
//!
//! The command line runs under `sh -c`. Its standard output is the stream;
//! a command that exits with anything but 0 never becomes a snapshot, since
//! a dump tool that failed half-way has usually still written something.

use std::time::Instant;

use crate::error::{Error, Result};
use crate::process::Tool;
use crate::stream::{RestoreOptions, RestoreReport, StreamBackup, StreamSource, StreamTarget, Streams};

/// The stream name a command's output is stored under unless one is given.
pub const DEFAULT_STREAM: &str = "stdout";

/// `command:<command line>` as a source.
#[derive(Debug, Clone)]
pub struct CommandSource {
    pub command: String,
    /// The name the output is stored under.
    pub stream: String,
}

impl CommandSource {
    pub fn new(command: &str) -> Result<CommandSource> {
        if command.trim().is_empty() {
            return Err(Error::Invalid("command: needs a command line, e.g. command:'mongodump --archive'".into()));
        }
        Ok(CommandSource { command: command.to_string(), stream: DEFAULT_STREAM.into() })
    }
}

impl StreamSource for CommandSource {
    fn kind(&self) -> &'static str {
        "command"
    }

    fn location(&self) -> String {
        format!("command:{}", self.command)
    }

    fn backup(&self, out: &mut StreamBackup) -> Result<serde_json::Value> {
        let t0 = Instant::now();
        let bytes = out.add_tool(&self.stream, Tool::shell(&self.command).stream()?)?;
        Ok(serde_json::json!({ "command": self.command, "bytes": bytes, "seconds": t0.elapsed().as_secs_f64() }))
    }
}

/// `command:<command line>` as a restore target: the stream is piped into
/// its standard input.
#[derive(Debug, Clone)]
pub struct CommandTarget {
    pub command: String,
}

impl StreamTarget for CommandTarget {
    fn location(&self) -> String {
        format!("command:{}", self.command)
    }

    fn accepts(&self, kind: &str) -> bool {
        // Any stream can be piped into a program; a directory tree cannot.
        !crate::stream::is_tree_kind(kind)
    }

    fn restore(&self, streams: &Streams, opts: &RestoreOptions) -> Result<RestoreReport> {
        opts.reject_unsupported("a command", &["stream"])?;
        let t0 = Instant::now();
        let s = streams.single(opts)?;
        let mut reader = streams.reader(s);
        let bytes = Tool::shell(&self.command).show_output().feed(&mut reader)?;
        Ok(RestoreReport {
            target: self.location(),
            streams: vec![(s.name.clone(), bytes)],
            bytes,
            duration_secs: t0.elapsed().as_secs_f64(),
            notes: Vec::new(),
        })
    }
}
