//! A real SFTP server for the tests: OpenSSH's sshd on a free loopback
//! port, with its own host key, configuration and authorized client key,
//! all in a temporary directory.
//!
//! OpenDAL's SFTP service runs the `ssh` client (through the `openssh`
//! crate), which reads `~/.ssh/known_hosts` of the user's passwd entry
//! whatever `$HOME` says. So that the tests never touch the real one,
//! [`SshServer::configure`] puts a small `ssh` wrapper first on the
//! binary's PATH that points the client at this server's own known_hosts
//! file (and at no configuration file); the locations the tests use keep
//! the default `known_hosts=strict`. The `openssh` crate keeps its control
//! sockets under `$XDG_STATE_HOME`, which is pointed into the temporary
//! directory too.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::garage::{find_executable, free_port, wait_for_server};

const SSHD: &str = "/usr/sbin/sshd";
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct SshServer {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "arkiv-test", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run ssh-keygen (install openssh-client): {e}"));
    assert!(out.status.success(), "ssh-keygen failed: {}", String::from_utf8_lossy(&out.stderr));
}

impl SshServer {
    /// Starts sshd and waits until it accepts connections.
    pub fn start() -> SshServer {
        assert!(Path::new(SSHD).is_file(), "{SSHD} is missing: install openssh-server (.ci/run does)");
        let real_ssh = find_executable("ssh").expect("the ssh client is missing: install openssh-client");
        // sshd's privilege separation directory.
        fs::create_dir_all("/run/sshd").expect("creating /run/sshd");
        let dir = tempfile::Builder::new().prefix("arkiv-sshd-").tempdir().expect("temporary directory");
        let root = dir.path();
        keygen(&root.join("host_key"));
        keygen(&root.join("client_key"));
        fs::copy(root.join("client_key.pub"), root.join("authorized_keys")).unwrap();
        fs::create_dir_all(root.join("files")).unwrap();
        fs::create_dir_all(root.join("state")).unwrap();
        let port = free_port();
        let host_key = fs::read_to_string(root.join("host_key.pub")).unwrap();
        let host_key: Vec<&str> = host_key.split_whitespace().take(2).collect();
        fs::write(root.join("known_hosts"), format!("[127.0.0.1]:{port} {}\n", host_key.join(" "))).unwrap();
        let config = format!(
            "ListenAddress 127.0.0.1
Port {port}
HostKey {host_key}
AuthorizedKeysFile {authorized}
PidFile {pid}
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin yes
MaxStartups 100
MaxSessions 100
LogLevel INFO
Subsystem sftp internal-sftp
",
            host_key = root.join("host_key").display(),
            authorized = root.join("authorized_keys").display(),
            pid = root.join("sshd.pid").display(),
        );
        fs::write(root.join("sshd_config"), config).unwrap();
        let bin = root.join("bin");
        fs::create_dir_all(&bin).unwrap();
        let wrapper = bin.join("ssh");
        fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec {} -F none -o UserKnownHostsFile={} -o GlobalKnownHostsFile=/dev/null \"$@\"\n",
                real_ssh.display(),
                root.join("known_hosts").display()
            ),
        )
        .unwrap();
        fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
        let mut s = SshServer { dir, port, child: None };
        s.launch();
        s
    }

    fn launch(&mut self) {
        let log = fs::File::create(self.dir.path().join("sshd.log")).unwrap();
        let child = Command::new(SSHD)
            .arg("-f")
            .arg(self.dir.path().join("sshd_config"))
            .args(["-D", "-e"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {SSHD}: {e}"));
        self.child = Some(child);
        let log = self.dir.path().join("sshd.log");
        wait_for_server("sshd", &mut self.child, &log, self.port, START_TIMEOUT, |l| l.contains("Server listening on"))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A directory the tests may use for repositories (absolute).
    pub fn files(&self) -> PathBuf {
        self.dir.path().join("files")
    }

    /// The private key the server accepts.
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client_key")
    }

    /// The known_hosts file that names this server's host key.
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    /// `sftp://root@127.0.0.1:PORT/ABS_PATH?key=CLIENT_KEY` (strict host key
    /// checking against [`SshServer::known_hosts`]).
    pub fn url(&self, abs_path: &Path) -> String {
        assert!(abs_path.is_absolute(), "{} is not absolute", abs_path.display());
        format!("sftp://root@127.0.0.1:{}{}?key={}", self.port, abs_path.display(), self.client_key().display())
    }

    /// The environment the binary needs to reach this server: the `ssh`
    /// wrapper first on PATH and the control sockets under the temporary
    /// directory.
    pub fn env(&self) -> [(&'static str, String); 2] {
        let mut path = vec![self.dir.path().join("bin")];
        if let Some(p) = std::env::var_os("PATH") {
            path.extend(std::env::split_paths(&p));
        }
        [
            ("PATH", std::env::join_paths(path).unwrap().to_string_lossy().into_owned()),
            ("XDG_STATE_HOME", self.dir.path().join("state").display().to_string()),
        ]
    }

    pub fn configure<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.envs(self.env())
    }

    /// Client processes still running for this server: `ssh` control
    /// masters the binary left behind (their command lines name this
    /// server's temporary directory).
    pub fn client_processes(&self) -> Vec<(u32, String)> {
        let needle = self.dir.path().to_string_lossy().into_owned();
        let own = std::process::id();
        let sshd = self.child.as_ref().map(|c| c.id());
        let mut out = Vec::new();
        let Ok(entries) = fs::read_dir("/proc") else { return out };
        for e in entries.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
            if pid == own || Some(pid) == sshd {
                continue;
            }
            let Ok(cmdline) = fs::read(e.path().join("cmdline")) else { continue };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(&needle) && cmdline.contains("ssh") && !cmdline.contains(SSHD) {
                out.push((pid, cmdline.trim().to_string()));
            }
        }
        out
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // What the binary's SFTP client left running, found by this
        // server's unique directory in its command line and ended by id.
        for (pid, _) in self.client_processes() {
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
    }
}

impl Drop for SshServer {
    fn drop(&mut self) {
        self.kill();
    }
}
