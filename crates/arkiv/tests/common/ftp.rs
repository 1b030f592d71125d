//! A real FTP server for the tests: pyftpdlib (Debian's
//! `python3-pyftpdlib`, run by `/usr/bin/python3`) on a free loopback port,
//! serving a directory of a temporary directory, with one user and
//! password, or anonymous logins only.
//!
//! Why pyftpdlib: OpenDAL's FTP service (through the `suppaftp` crate) needs
//! passive mode, `APPE` (its writer appends to a staging file), `RNFR`/
//! `RNTO` (and renames that into place), `REST` before `RETR` (ranged
//! reads), `MKD`, `DELE` and Unix-style `LIST` output (it parses `LIST`, not
//! `MLSD`). pyftpdlib does all of these and runs unprivileged from a few
//! lines of Python, without a configuration file, PAM or system users.
//! Debian's rclone is built without `serve ftp`; vsftpd and pure-ftpd
//! authenticate system users through PAM and want root-owned configuration.
//!
//! The user and password reach the server in its environment, not on its
//! command line.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::garage::{find_executable, free_port, random_hex, wait_for_server};

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The server: full rights for the one user (or for anonymous logins) in
/// the served directory. Prints a line once it listens.
const SERVER: &str = r#"
import logging, os, sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer
logging.basicConfig(stream=sys.stderr, level=logging.INFO)
root = os.environ["ARKIV_TEST_FTP_ROOT"]
user = os.environ.get("ARKIV_TEST_FTP_USER", "")
authorizer = DummyAuthorizer()
if user:
    authorizer.add_user(user, os.environ["ARKIV_TEST_FTP_PASSWORD"], root, perm="elradfmwMT")
else:
    authorizer.add_anonymous(root, perm="elradfmwMT")
handler = FTPHandler
handler.authorizer = authorizer
# pyftpdlib answers a failed login after 3 s; 1 s, as vsftpd's default
# delay_failed_login, keeps the tests of wrong passwords shorter.
handler.auth_failed_timeout = 1
server = FTPServer(("127.0.0.1", int(os.environ["ARKIV_TEST_FTP_PORT"])), handler)
print("arkiv test FTP server listening", flush=True)
server.serve_forever()
"#;

pub struct FtpServer {
    dir: tempfile::TempDir,
    port: u16,
    /// `None`: anonymous logins only.
    user: Option<(String, String)>,
    child: Option<Child>,
}

/// A Python that has pyftpdlib: Debian's (where `python3-pyftpdlib`
/// installs it), else the first `python3` on PATH.
fn python() -> PathBuf {
    let candidates = [Some(PathBuf::from("/usr/bin/python3")), find_executable("python3")];
    for p in candidates.into_iter().flatten() {
        let ok = Command::new(&p)
            .args(["-c", "import pyftpdlib"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return p;
        }
    }
    panic!("no python3 with pyftpdlib: `apt-get install python3-pyftpdlib` (.ci/run does)")
}

impl FtpServer {
    /// A server with one user, with a random name and password.
    pub fn start() -> FtpServer {
        FtpServer::launch(Some((format!("backup-{}", random_hex(3)), format!("ftp-pw-{}", random_hex(12)))))
    }

    /// A server that only takes anonymous logins (`USER anonymous`).
    pub fn start_anonymous() -> FtpServer {
        FtpServer::launch(None)
    }

    fn launch(user: Option<(String, String)>) -> FtpServer {
        let python = python();
        let dir = tempfile::Builder::new().prefix("arkiv-ftp-").tempdir().expect("temporary directory");
        fs::create_dir_all(dir.path().join("files")).unwrap();
        let port = free_port();
        let mut s = FtpServer { dir, port, user, child: None };
        let log = fs::File::create(s.dir.path().join("ftp.log")).unwrap();
        let mut cmd = Command::new(&python);
        cmd.args(["-c", SERVER])
            .env_remove("PYTHONPATH")
            .env_remove("PYTHONHOME")
            .env("ARKIV_TEST_FTP_ROOT", s.files())
            .env("ARKIV_TEST_FTP_PORT", port.to_string());
        if let Some((u, p)) = &s.user {
            cmd.env("ARKIV_TEST_FTP_USER", u).env("ARKIV_TEST_FTP_PASSWORD", p);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", python.display()));
        s.child = Some(child);
        let log = s.dir.path().join("ftp.log");
        wait_for_server("the FTP server", &mut s.child, &log, port, START_TIMEOUT, |l| {
            l.contains("FTP server listening")
        })
        .unwrap_or_else(|e| panic!("{e}"));
        s
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("ftp.log")).unwrap_or_default()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory the server serves (the user's `/`).
    pub fn files(&self) -> PathBuf {
        self.dir.path().join("files")
    }

    pub fn user(&self) -> &str {
        &self.user.as_ref().expect("an anonymous server has no user").0
    }

    pub fn password(&self) -> &str {
        &self.user.as_ref().expect("an anonymous server has no password").1
    }

    /// `ftp://USER@127.0.0.1:PORT/PATH`, without the user for an anonymous
    /// server.
    pub fn url(&self, path: &str) -> String {
        let user = self.user.as_ref().map(|(u, _)| format!("{u}@")).unwrap_or_default();
        format!("ftp://{user}127.0.0.1:{}/{}", self.port, path.trim_start_matches('/'))
    }

    /// Where `path` of [`FtpServer::url`] lives on disk.
    pub fn path(&self, path: &str) -> PathBuf {
        self.files().join(path.trim_start_matches('/'))
    }

    /// The password, as the binary reads it (nothing for an anonymous
    /// server).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        self.user.iter().map(|(_, p)| ("ARKIV_FTP_PASSWORD", p.clone())).collect()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for FtpServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
