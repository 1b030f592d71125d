//! A real WebDAV server for the tests: `rclone serve webdav` (Debian's
//! `rclone` package) on a free loopback port, serving a directory of a
//! temporary directory, with HTTP basic authentication.
//!
//! Why rclone: it is one packaged binary that starts in well under a second
//! without a configuration file or root, and its server is Go's
//! `golang.org/x/net/webdav`, a complete class-1 implementation (PROPFIND
//! with `Depth: 0` and `1`, MKCOL, PUT, ranged GET, MOVE and COPY with
//! `Overwrite`, DELETE) — every method OpenDAL's WebDAV service sends.
//! Apache's mod_dav would need a configuration, modules and a run directory
//! for the same.
//!
//! The user and password are given to rclone in its environment
//! (`RCLONE_USER`, `RCLONE_PASS`), so they are not on its command line.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::garage::{find_executable, free_port, random_hex, wait_for_server};

const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct WebDavServer {
    dir: tempfile::TempDir,
    port: u16,
    user: String,
    password: String,
    child: Option<Child>,
}

impl WebDavServer {
    /// Starts rclone with a random user and password and waits until it
    /// accepts connections.
    pub fn start() -> WebDavServer {
        let rclone = find_executable("rclone")
            .unwrap_or_else(|| panic!("rclone is not installed: `apt-get install rclone` (.ci/run does)"));
        let dir = tempfile::Builder::new().prefix("arkiv-webdav-").tempdir().expect("temporary directory");
        fs::create_dir_all(dir.path().join("files")).unwrap();
        let port = free_port();
        let mut s = WebDavServer {
            dir,
            port,
            user: format!("backup-{}", random_hex(3)),
            password: format!("dav-pw-{}", random_hex(12)),
            child: None,
        };
        let log = fs::File::create(s.dir.path().join("rclone.log")).unwrap();
        let mut cmd = Command::new(&rclone);
        // Nothing of the caller's rclone configuration.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("RCLONE_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .args(["serve", "webdav"])
            .arg(s.files())
            .args(["--addr", &format!("127.0.0.1:{port}"), "--log-level", "INFO"])
            .env("RCLONE_CONFIG", s.dir.path().join("rclone.conf"))
            .env("RCLONE_USER", &s.user)
            .env("RCLONE_PASS", &s.password)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", rclone.display()));
        s.child = Some(child);
        let log = s.dir.path().join("rclone.log");
        wait_for_server("rclone", &mut s.child, &log, port, START_TIMEOUT, |l| l.contains("WebDav Server started"))
            .unwrap_or_else(|e| panic!("{e}"));
        s
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("rclone.log")).unwrap_or_default()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory the server serves (its `/`).
    pub fn files(&self) -> PathBuf {
        self.dir.path().join("files")
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// `webdav://127.0.0.1:PORT/PATH`.
    pub fn url(&self, path: &str) -> String {
        format!("webdav://127.0.0.1:{}/{}", self.port, path.trim_start_matches('/'))
    }

    /// Where `path` of [`WebDavServer::url`] lives on disk.
    pub fn path(&self, path: &str) -> PathBuf {
        self.files().join(path.trim_start_matches('/'))
    }

    /// The credentials, as the binary reads them.
    pub fn env(&self) -> [(&'static str, String); 2] {
        [("ARKIV_WEBDAV_USER", self.user.clone()), ("ARKIV_WEBDAV_PASSWORD", self.password.clone())]
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for WebDavServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
