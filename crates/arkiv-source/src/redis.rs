//! Redis: the server's RDB snapshot, fetched over the replication protocol
//! with `redis-cli --rdb -` and stored as the stream `dump.rdb`.
//!
//! Redis loads an RDB only when it starts, so a restore writes the file
//! (for the operator to put in place as the server's `dbfilename` while it
//! is stopped) rather than talking to a live server; the verify sandbox
//! does exactly that with a throw-away `redis-server` on a free port.
//!
//! The password comes from `REDISCLI_AUTH`, the variable `redis-cli` itself
//! reads, so it is on no command line and in no snapshot; a password in
//! the URL is refused.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::error::{Error, Result};
use crate::mysql::{percent_decode, percent_encode};
use crate::process::Tool;
use crate::stream::{RestoreOptions, RestoreReport, StreamBackup, StreamSource, StreamTarget, Streams};
use crate::verify::{scratch_name, Assertion, Sandbox};

/// The stream an RDB snapshot is stored as, and the file name a restore
/// into a directory writes.
pub const STREAM: &str = "dump.rdb";

/// Redis's own default port.
const DEFAULT_PORT: u16 = 6379;

/// How long a sandbox server may take to accept connections at all (once
/// it answers `LOADING`, it is given as long as loading takes).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A parsed `redis://[user@]host[:port]`. It never holds a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// An ACL user (Redis 6+); without one, the `default` user.
    pub user: Option<String>,
    pub host: String,
    pub port: u16,
}

impl RedisUrl {
    pub fn parse(url: &str) -> Result<RedisUrl> {
        let rest = strip_scheme(url)?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        if userinfo.is_some_and(|u| u.contains(':')) {
            return Err(password_in_url(hostport));
        }
        let mut user = userinfo.map(|u| percent_decode(u, url)).transpose()?.filter(|u| !u.is_empty());
        if hostport.is_empty() {
            return Err(Error::Invalid(format!(
                "{url}: no host; back up from redis://host[:port], restore to a file with redis:///path/to/dump.rdb"
            )));
        }
        if !path.trim_end_matches('/').is_empty() {
            return Err(Error::Invalid(format!(
                "{url}: an RDB snapshot holds every database of the server; leave the database number out"
            )));
        }
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=').unwrap_or((pair, "")) {
                ("user", v) if !v.is_empty() => user = Some(percent_decode(v, url)?),
                ("password" | "pass" | "auth", _) => return Err(password_in_url(hostport)),
                (k, _) => return Err(Error::Invalid(format!("{url}: unknown option '{k}' (known: user)"))),
            }
        }
        let (host, port) = match hostport.strip_prefix('[') {
            Some(r) => {
                let (h, after) =
                    r.split_once(']').ok_or_else(|| Error::Invalid(format!("{url}: unclosed '[' in the host")))?;
                (h.to_string(), after.strip_prefix(':'))
            }
            None => match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            },
        };
        let port = match port {
            None | Some("") => DEFAULT_PORT,
            Some(p) => p.parse().map_err(|_| Error::Invalid(format!("{url}: '{p}' is not a port number")))?,
        };
        Ok(RedisUrl { user, host, port })
    }

    /// The URL again, password-free.
    pub fn location(&self) -> String {
        let user = self.user.as_ref().map(|u| format!("{}@", percent_encode(u, ""))).unwrap_or_default();
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        format!("redis://{user}{host}:{}", self.port)
    }

    fn cli(&self) -> Tool {
        let mut t = Tool::new("redis-cli").arg("-h").arg(&self.host).arg("-p").arg(self.port.to_string());
        if let Some(u) = &self.user {
            // The password stays in REDISCLI_AUTH, which redis-cli sends
            // with this user name.
            t = t.arg("--user").arg(u);
        }
        t
    }

    fn error(&self, message: String) -> Error {
        Error::Source { location: self.location(), message }
    }

    /// A tool's failure, named by the server.
    fn failed(&self, e: Error) -> Error {
        match e {
            Error::ToolFailed { program, status, stderr } => {
                let why = if stderr.is_empty() { status } else { stderr };
                self.error(format!("{program}: {why}"))
            }
            other => other,
        }
    }
}

fn strip_scheme(url: &str) -> Result<&str> {
    let (scheme, rest) =
        url.split_once("://").ok_or_else(|| Error::Invalid(format!("{url}: expected redis://host[:port]")))?;
    match scheme.to_ascii_lowercase().as_str() {
        "redis" => Ok(rest),
        "rediss" => Err(Error::Invalid(format!(
            "{url}: TLS (rediss://) is not supported yet; reach the server over a TLS tunnel (stunnel, ssh -L) and \
             use redis://"
        ))),
        _ => Err(Error::Invalid(format!("{url}: not a redis:// URL"))),
    }
}

fn password_in_url(host: &str) -> Error {
    Error::Invalid(format!(
        "redis://…@{host}: a password does not belong in the URL (it would show in process lists, logs and the \
         snapshot); set REDISCLI_AUTH, and name an ACL user as redis://user@host"
    ))
}

/// The facts `INFO` gives, from its `field:value` lines.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Info {
    pub version: String,
    pub used_memory: Option<u64>,
    /// `db0` → (keys, keys with an expiry).
    pub keyspace: Vec<(String, u64, u64)>,
}

impl Info {
    /// Parses an `INFO` reply; anything else (an error such as `NOAUTH`)
    /// is returned as the error text.
    pub fn parse(reply: &str) -> std::result::Result<Info, String> {
        let mut info = Info::default();
        for line in reply.lines().map(str::trim) {
            let Some((k, v)) = line.split_once(':') else { continue };
            match k {
                "redis_version" => info.version = v.to_string(),
                "used_memory" => info.used_memory = v.parse().ok(),
                db if db.starts_with("db") && db[2..].bytes().all(|b| b.is_ascii_digit()) => {
                    let field = |name: &str| {
                        v.split(',').find_map(|f| f.strip_prefix(name)?.strip_prefix('=')?.parse::<u64>().ok())
                    };
                    info.keyspace.push((db.to_string(), field("keys").unwrap_or(0), field("expires").unwrap_or(0)));
                }
                _ => {}
            }
        }
        if info.version.is_empty() {
            let first = reply.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("no reply");
            return Err(first.to_string());
        }
        Ok(info)
    }
}

/// `redis://host[:port]` as a source.
#[derive(Debug, Clone)]
pub struct RedisSource {
    pub url: RedisUrl,
}

impl RedisSource {
    pub fn new(url: &str) -> Result<RedisSource> {
        Ok(RedisSource { url: RedisUrl::parse(url)? })
    }
}

/// Keeps the first bytes of a stream: an RDB starts with `REDIS` and a
/// four-digit format version, and anything else is not a snapshot.
struct Head<R> {
    inner: R,
    head: Vec<u8>,
}

impl<R: Read> Read for Head<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let want = 9usize.saturating_sub(self.head.len()).min(n);
        self.head.extend_from_slice(&buf[..want]);
        Ok(n)
    }
}

impl StreamSource for RedisSource {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn location(&self) -> String {
        self.url.location()
    }

    fn backup(&self, out: &mut StreamBackup) -> Result<serde_json::Value> {
        let t0 = Instant::now();
        let tool_version = Tool::new("redis-cli").arg("--version").output()?.trim().to_string();
        // redis-cli prints an error reply (NOAUTH, WRONGPASS) and exits 0,
        // so the reply itself says whether the server let us in.
        let reply = self.url.cli().arg("INFO").output().map_err(|e| self.url.failed(e))?;
        let info = Info::parse(&reply).map_err(|why| {
            let hint = if why.contains("NOAUTH") || why.contains("WRONGPASS") {
                " (set REDISCLI_AUTH to the password; an ACL user goes in the URL as redis://user@host)"
            } else {
                ""
            };
            self.url.error(format!("INFO answered '{why}'{hint}"))
        })?;
        let t1 = Instant::now();
        let mut rdb = Head { inner: self.url.cli().arg("--rdb").arg("-").stream()?, head: Vec::new() };
        let added = out.add(STREAM, &mut rdb);
        let Head { inner: tool, head } = rdb;
        let bytes = match added {
            Ok(n) => tool.finish().map(|_| n),
            Err(e) => {
                tool.kill();
                Err(e)
            }
        }
        .map_err(|e| self.url.failed(e))?;
        let rdb_version = match head.strip_prefix(b"REDIS") {
            Some(v) if v.len() == 4 && v.iter().all(u8::is_ascii_digit) => String::from_utf8_lossy(v).into_owned(),
            _ => {
                return Err(self.url.error(format!(
                    "redis-cli --rdb did not produce an RDB file (it starts with {:?})",
                    String::from_utf8_lossy(&head)
                )))
            }
        };
        let keyspace: serde_json::Map<String, serde_json::Value> = info
            .keyspace
            .iter()
            .map(|(db, keys, expires)| (db.clone(), json!({ "keys": keys, "expires": expires })))
            .collect();
        Ok(json!({
            "redis_version": info.version,
            "used_memory": info.used_memory,
            "keyspace": keyspace,
            "rdb_version": rdb_version,
            "rdb_bytes": bytes,
            "rdb_seconds": t1.elapsed().as_secs_f64(),
            "tool": "redis-cli",
            "tool_version": tool_version,
            "seconds": t0.elapsed().as_secs_f64(),
        }))
    }
}

/// `redis:///path/to/dump.rdb` (or a directory, which gets `dump.rdb`) as a
/// restore target: the RDB file, written whole under a temporary name and
/// renamed into place, so a server never starts on half a file.
#[derive(Debug, Clone)]
pub struct RedisFileTarget {
    pub path: PathBuf,
}

impl RedisFileTarget {
    pub fn new(url: &str) -> Result<RedisFileTarget> {
        let rest = strip_scheme(url)?;
        match rest.strip_prefix('/') {
            Some(path) if !path.is_empty() => Ok(RedisFileTarget { path: PathBuf::from(percent_decode(rest, url)?) }),
            _ => Err(Error::Invalid(format!(
                "{url}: a running Redis server cannot take an RDB (it loads one only when it starts); restore to a \
                 file with redis:///var/lib/redis/dump.rdb, then stop the server, put the file in place as its \
                 dbfilename in its dir, and start it"
            ))),
        }
    }

    /// The file to write: the target itself, or `dump.rdb` in it when it
    /// is a directory.
    fn file(&self) -> PathBuf {
        if self.path.is_dir() || self.path.as_os_str().to_string_lossy().ends_with('/') {
            self.path.join(STREAM)
        } else {
            self.path.clone()
        }
    }
}

/// Writes `input` to `path` through a temporary file in the same
/// directory, synced before the rename.
fn write_file(path: &Path, input: &mut dyn Read, overwrite: bool) -> Result<u64> {
    let io = |p: &Path| {
        let p = p.display().to_string();
        move |e: std::io::Error| Error::Io { path: p, cause: e }
    };
    if !overwrite && path.symlink_metadata().is_ok() {
        return Err(Error::Invalid(format!("{}: exists; give --overwrite to replace it", path.display())));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| Error::Invalid(format!("{}: not a file name", path.display())))?;
    let tmp = dir.join(format!(".{}.{}.arkiv-tmp", name.to_string_lossy(), scratch_name()));
    let result = (|| {
        // An RDB holds every key and value: readable by its owner only,
        // like the SQLite restore's file.
        use std::os::unix::fs::OpenOptionsExt;
        let mut f =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(io(&tmp))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = match input.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(crate::process::input_error(e)),
            };
            f.write_all(&buf[..n]).map_err(io(&tmp))?;
            total += n as u64;
        }
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))?;
        Ok(total)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

impl StreamTarget for RedisFileTarget {
    fn location(&self) -> String {
        format!("redis://{}", self.path.display())
    }

    fn accepts(&self, kind: &str) -> bool {
        kind == "redis"
    }

    fn restore(&self, streams: &Streams, opts: &RestoreOptions) -> Result<RestoreReport> {
        opts.reject_unsupported("an RDB file", &["overwrite", "stream"])?;
        let t0 = Instant::now();
        let s = streams.single(opts)?;
        let file = self.file();
        let bytes = write_file(&file, &mut streams.reader(s), opts.overwrite)?;
        Ok(RestoreReport {
            target: format!("redis://{}", file.display()),
            streams: vec![(s.name.clone(), bytes)],
            bytes,
            duration_secs: t0.elapsed().as_secs_f64(),
            notes: vec![format!(
                "to load it: stop the server, move {} to its dir as its dbfilename (CONFIG GET dir / dbfilename), \
                 switch appendonly off or remove the old AOF, and start the server",
                file.display()
            )],
        })
    }
}

/// A throw-away `redis-server` on a free loopback port, started on the
/// restored RDB with persistence off, killed and its directory removed at
/// the end.
pub struct RedisSandbox {
    dir: PathBuf,
    port: u16,
    server: Option<Child>,
}

impl RedisSandbox {
    /// A sandbox takes no `--sandbox` spec: the server is always Arkiv's own.
    pub fn new(spec: Option<&str>) -> Result<RedisSandbox> {
        if let Some(s) = spec {
            return Err(Error::Invalid(format!(
                "--sandbox {s}: a Redis snapshot is verified in a redis-server Arkiv starts itself; give no --sandbox"
            )));
        }
        Ok(RedisSandbox { dir: std::env::temp_dir().join(scratch_name()), port: 0, server: None })
    }

    fn file(&self) -> PathBuf {
        self.dir.join(STREAM)
    }

    fn cli(&self) -> Tool {
        // The production password means nothing to the sandbox server,
        // which has none (and would reject an AUTH).
        Tool::new("redis-cli").env_remove("REDISCLI_AUTH").args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        lines[lines.len().saturating_sub(3)..].join(" / ")
    }

    fn start(&mut self) -> Result<()> {
        // A free port can be taken between asking and binding; the server
        // then exits at once and another port is tried.
        for _ in 0..3 {
            self.port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| Error::Io { path: "127.0.0.1 (a free port)".into(), cause: e })?
                .port();
            let child = Command::new("redis-server")
                .arg("--port")
                .arg(self.port.to_string())
                .args(["--bind", "127.0.0.1", "--dbfilename", STREAM, "--save", "", "--appendonly", "no"])
                .args(["--daemonize", "no"])
                .arg("--dir")
                .arg(&self.dir)
                .arg("--logfile")
                .arg(self.dir.join("redis.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => Error::ToolMissing { program: "redis-server".into() },
                    _ => Error::Io { path: "redis-server".into(), cause: e },
                })?;
            self.server = Some(child);
            match self.wait_ready() {
                Ok(()) => return Ok(()),
                Err(e) if self.log_tail().contains("Address already in use") => {
                    tracing::debug!("sandbox port {} was taken: {e}", self.port);
                    self.stop();
                    let _ = std::fs::remove_file(self.dir.join("redis.log"));
                }
                Err(e) => return Err(e),
            }
        }
        Err(self.error("could not find a free port for redis-server".into()))
    }

    fn wait_ready(&mut self) -> Result<()> {
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.server.as_mut().and_then(|c| c.try_wait().transpose()) {
                let status = status.map_err(|e| Error::Io { path: "redis-server".into(), cause: e })?;
                self.server = None;
                return Err(self.error(format!("redis-server exited ({status}): {}", self.log_tail())));
            }
            match self.cli().arg("PING").output() {
                Ok(r) if r.trim() == "PONG" => return Ok(()),
                // Still reading the RDB: as long as it takes.
                Ok(r) if r.starts_with("LOADING") => {}
                Ok(_) | Err(Error::ToolFailed { .. }) if t0.elapsed() < START_TIMEOUT => {}
                Ok(r) => return Err(self.error(format!("redis-server answered PING with '{}'", r.trim()))),
                Err(e) => return Err(e),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn error(&self, message: String) -> Error {
        Error::Source { location: self.location(), message }
    }

    /// A command's reply as `redis-cli` shows it to a person, which marks
    /// its type: `(integer) 1`, `(nil)`, `(error) …`, `(empty array)`.
    fn command(&self, args: &[String]) -> std::result::Result<String, String> {
        let out = self.cli().arg("--no-raw").args(args).output().map_err(|e| e.to_string())?;
        Ok(out.trim().to_string())
    }
}

/// Whether a reply (as `redis-cli --no-raw` prints it) counts as true: not
/// an error, not nil, not empty, not the integer 0.
pub fn reply_is_true(reply: &str) -> bool {
    let r = reply.trim();
    !(r.is_empty()
        || r.starts_with("(error)")
        || r == "(nil)"
        || r == "(integer) 0"
        || r == "(empty array)"
        || r == "(empty list or set)"
        || r == "\"\"")
}

/// Splits a command line into words; single and double quotes group words
/// with spaces (`SISMEMBER "my set" x`).
pub fn split_words(line: &str) -> std::result::Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err(format!("unclosed quote in '{line}'"));
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

impl Sandbox for RedisSandbox {
    fn location(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn restore(&mut self, streams: &Streams) -> Result<u64> {
        let s = streams.single(&RestoreOptions::default())?;
        {
            use std::os::unix::fs::DirBuilderExt;
            // Private: the restored RDB in it holds the production data.
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&self.dir)
                .map_err(|e| Error::Io { path: self.dir.display().to_string(), cause: e })?;
        }
        let bytes = write_file(&self.file(), &mut streams.reader(s), false)?;
        self.start()?;
        Ok(bytes)
    }

    fn check(&mut self, assertion: &Assertion) -> std::result::Result<String, String> {
        match assertion {
            Assertion::Sql { query } => {
                let words = split_words(query)?;
                if words.is_empty() {
                    return Err("no command given".into());
                }
                let reply = self.command(&words)?;
                match reply_is_true(&reply) {
                    true => Ok(reply),
                    false => Err(format!("answered {reply}")),
                }
            }
            Assertion::Table { name } => match self.command(&["EXISTS".into(), name.clone()])?.as_str() {
                "(integer) 1" => Ok("exists".into()),
                "(integer) 0" => Err(format!("no key '{name}' in db0")),
                other => Err(format!("EXISTS answered {other}")),
            },
            Assertion::MinRows { table, rows } => {
                let db = table
                    .strip_prefix("db")
                    .and_then(|n| n.parse::<u32>().ok())
                    .ok_or_else(|| format!("'{table}' is not a Redis database; name one as db0, db1, …"))?;
                let reply = self.cli().args(["-n", &db.to_string(), "DBSIZE"]).output().map_err(|e| e.to_string())?;
                let n: u64 = reply.trim().parse().map_err(|_| format!("DBSIZE answered '{}'", reply.trim()))?;
                if n >= *rows {
                    Ok(format!("{n} keys"))
                } else {
                    Err(format!("{n} keys, expected at least {rows}"))
                }
            }
            Assertion::Command { .. } => Err("command assertions are run by verify::run".into()),
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("REDIS_HOST".into(), "127.0.0.1".into()),
            ("REDIS_PORT".into(), self.port.to_string()),
            ("REDIS_URL".into(), self.location()),
            ("ARKIV_SANDBOX_FILE".into(), self.file().display().to_string()),
        ]
    }

    fn remove(&mut self) -> Result<()> {
        self.stop();
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::Io { path: self.dir.display().to_string(), cause: e })
            }
            _ => Ok(()),
        }
    }
}

impl Drop for RedisSandbox {
    fn drop(&mut self) {
        // `remove` is the way out; this only makes sure no server outlives
        // a sandbox that was abandoned (a panic).
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_read_back() {
        let u = RedisUrl::parse("redis://cache.example:6380").unwrap();
        assert_eq!(u, RedisUrl { user: None, host: "cache.example".into(), port: 6380 });
        assert_eq!(u.location(), "redis://cache.example:6380");
        let u = RedisUrl::parse("redis://backup@[::1]/").unwrap();
        assert_eq!((u.user.as_deref(), u.host.as_str(), u.port), (Some("backup"), "::1", 6379));
        assert_eq!(RedisUrl::parse(&u.location()).unwrap(), u);
        assert_eq!(RedisUrl::parse("redis://h?user=bk").unwrap().user.as_deref(), Some("bk"));
    }

    #[test]
    fn passwords_database_numbers_and_tls_are_refused_clearly() {
        for s in ["redis://:s3cret@h", "redis://bk:s3cret@h:6379", "redis://h?password=s3cret"] {
            let e = RedisUrl::parse(s).unwrap_err().to_string();
            assert!(e.contains("REDISCLI_AUTH") && !e.contains("s3cret"), "{e}");
        }
        assert!(RedisUrl::parse("redis://h/2").unwrap_err().to_string().contains("every database"));
        assert!(RedisUrl::parse("rediss://h").unwrap_err().to_string().contains("TLS"));
        assert!(RedisUrl::parse("redis://h:x").unwrap_err().to_string().contains("not a port"));
    }

    #[test]
    fn a_file_target_is_a_path_and_a_server_is_refused() {
        assert_eq!(
            RedisFileTarget::new("redis:///var/lib/redis/dump.rdb").unwrap().path,
            Path::new("/var/lib/redis/dump.rdb")
        );
        let e = RedisFileTarget::new("redis://localhost:6379").unwrap_err().to_string();
        assert!(e.contains("loads one only when it starts"), "{e}");
    }

    #[test]
    fn info_is_read_and_an_error_reply_is_not() {
        let reply = "# Server\r\nredis_version:7.0.15\r\n# Memory\r\nused_memory:1024\r\n# Keyspace\r\n\
                     db0:keys=3,expires=1,avg_ttl=0\r\ndb2:keys=5,expires=0,avg_ttl=0\r\n";
        let i = Info::parse(reply).unwrap();
        assert_eq!(i.version, "7.0.15");
        assert_eq!(i.used_memory, Some(1024));
        assert_eq!(i.keyspace, [("db0".to_string(), 3, 1), ("db2".to_string(), 5, 0)]);
        assert_eq!(Info::parse("NOAUTH Authentication required.\n").unwrap_err(), "NOAUTH Authentication required.");
    }

    #[test]
    fn replies_and_words() {
        for t in ["(integer) 1", "\"yes\"", "1) \"a\"", "OK"] {
            assert!(reply_is_true(t), "{t}");
        }
        for f in ["(integer) 0", "(nil)", "(error) ERR unknown command", "(empty array)", ""] {
            assert!(!reply_is_true(f), "{f}");
        }
        assert_eq!(split_words(r#"SISMEMBER "my set" 'a b' x"#).unwrap(), ["SISMEMBER", "my set", "a b", "x"]);
        assert_eq!(split_words("GET ''").unwrap(), ["GET", ""]);
        assert!(split_words("GET \"x").is_err());
    }
}
