//! A real S3 server for the tests: a single-node Garage
//! (<https://garagehq.deuxfleurs.fr>) in a temporary directory, on free
//! loopback ports, with one access key and one bucket (`arkiv`).
//!
//! Each test starts its own; it is killed when the handle is dropped.
//! `stop` and `restart` (same directories, ports and keys) simulate an
//! outage of the store.

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The bucket every Garage of the tests holds.
pub const BUCKET: &str = "arkiv";

/// How long a (re)start may take before the test gives up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// AWS variables of the caller's environment that could change what the
/// binary does: they are removed from every command [`Garage::configure`]s.
pub const AWS_NOISE: [&str; 9] = [
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_ROLE_ARN",
];

pub struct Garage {
    dir: tempfile::TempDir,
    binary: PathBuf,
    s3_port: u16,
    access_key: String,
    secret_key: String,
    child: Option<Child>,
}

/// `n` random bytes as lowercase hex.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)).expect("reading /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A loopback port nothing listens on right now.
/// Waits until a server a test started is ready: its log (`log_file`)
/// satisfies `ready` and `port` accepts connections. The error says why it
/// is not (it exited, or `timeout` passed), with the log.
pub fn wait_for_server(
    name: &str,
    child: &mut Option<Child>,
    log_file: &Path,
    port: u16,
    timeout: Duration,
    ready: impl Fn(&str) -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let log = || fs::read_to_string(log_file).unwrap_or_default();
    loop {
        if let Some(status) = child.as_mut().expect("a started server").try_wait().unwrap() {
            *child = None;
            return Err(format!("{name} exited with {status} while starting\n--- {name} log ---\n{}", log()));
        }
        if ready(&log()) && TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{name} did not start within {timeout:?}\n--- {name} log ---\n{}", log()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free loopback port").port()
}

/// Looks for an executable on PATH, then in cargo's bin directory (where
/// `cargo install` puts it even when PATH does not name that directory).
pub fn find_executable(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    if let Some(c) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(c).join("bin"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(h).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

impl Garage {
    /// Starts a fresh server and waits until it answers.
    pub fn start() -> Garage {
        Garage::start_with_keys(&format!("GK{}", random_hex(12)), &random_hex(32))
    }

    /// Starts a fresh server whose access key is `access_key` (`GK` and 24
    /// hex digits) with secret `secret_key` (64 hex digits): for a second
    /// server the binary reaches with the same credentials as the first.
    pub fn start_with_keys(access_key: &str, secret_key: &str) -> Garage {
        let binary = find_executable("garage")
            .unwrap_or_else(|| panic!("garage is not installed: run .ci/run or `cargo install garage --locked`"));
        let dir = tempfile::Builder::new().prefix("arkiv-garage-").tempdir().expect("temporary directory");
        let (s3_port, rpc_port) = loop {
            let (a, b) = (free_port(), free_port());
            if a != b {
                break (a, b);
            }
        };
        let root = dir.path();
        let config = format!(
            r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "sqlite"
replication_factor = 1
compression_level = "none"
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:{s3_port}"
root_domain = ".s3.garage.localhost"
"#,
            meta = root.join("meta").display(),
            data = root.join("data").display(),
            secret = random_hex(32),
        );
        fs::write(root.join("garage.toml"), config).expect("writing garage.toml");
        let mut g = Garage {
            dir,
            binary,
            s3_port,
            access_key: access_key.to_string(),
            secret_key: secret_key.to_string(),
            child: None,
        };
        g.launch();
        g
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("garage.log")
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn launch(&mut self) {
        assert!(self.child.is_none(), "garage is already running");
        // Appended to, so a restart's log follows the first run's; the
        // readiness line is looked for only after this offset.
        let offset = fs::metadata(self.log_path()).map(|m| m.len() as usize).unwrap_or(0);
        let log = fs::OpenOptions::new().create(true).append(true).open(self.log_path()).expect("garage log file");
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(self.dir.path().join("garage.toml"))
            .args(["server", "--single-node", "--default-bucket"])
            .env("GARAGE_DEFAULT_ACCESS_KEY", &self.access_key)
            .env("GARAGE_DEFAULT_SECRET_KEY", &self.secret_key)
            .env("GARAGE_DEFAULT_BUCKET", BUCKET)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        self.child = Some(child);
        let log = self.log_path();
        let listening = |l: &str| l.get(offset..).is_some_and(|l| l.contains("S3 API server listening"));
        if let Err(e) = wait_for_server("garage", &mut self.child, &log, self.s3_port, START_TIMEOUT, listening) {
            self.kill();
            panic!("{e}");
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the server (as a crash or an outage would): connections are
    /// refused until [`Garage::restart`].
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts the stopped server again with the same data, ports and keys.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn port(&self) -> u16 {
        self.s3_port
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// A location in the bucket: `s3://arkiv/PREFIX?endpoint=...`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}?endpoint={}", self.endpoint())
    }

    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// The credentials, as the binary reads them.
    pub fn env(&self) -> [(&'static str, String); 2] {
        [("AWS_ACCESS_KEY_ID", self.access_key.clone()), ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone())]
    }

    /// Gives `cmd` this server's credentials and nothing else of the
    /// caller's AWS configuration.
    pub fn configure<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        for v in AWS_NOISE {
            cmd.env_remove(v);
        }
        cmd.envs(self.env())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every repository object under `prefix` (`config`, `keys/NAME`,
    /// `snapshots/NAME`, `index/NAME`, `data/XX/NAME`), listed through the
    /// S3 API by the same storage code the binary uses.
    pub fn objects(&self, prefix: &str) -> BTreeSet<String> {
        use arkiv_repo::location::{open_store, StoreOptions};
        use arkiv_repo::{Backend, FileKind};
        // The S3 service reads its credentials from the process environment;
        // one listing at a time, so parallel tests in one process (plain
        // `cargo test`) never see each other's keys.
        static ENV: Mutex<()> = Mutex::new(());
        let _guard = ENV.lock().unwrap_or_else(|e| e.into_inner());
        for v in AWS_NOISE {
            std::env::remove_var(v);
        }
        for (k, v) in self.env() {
            std::env::set_var(k, v);
        }
        let result = (|| -> arkiv_repo::Result<BTreeSet<String>> {
            let store = open_store(&self.url(prefix), &StoreOptions::default())?;
            let backend = Backend::new(store, None);
            let mut out = BTreeSet::new();
            if backend.exists(FileKind::Config, "config")? {
                out.insert("config".to_string());
            }
            for kind in [FileKind::Key, FileKind::Snapshot, FileKind::Index, FileKind::Pack] {
                for (name, _) in backend.list(kind)? {
                    out.insert(kind.path(&name));
                }
            }
            Ok(out)
        })();
        for (k, _) in self.env() {
            std::env::remove_var(k);
        }
        result.unwrap_or_else(|e| panic!("listing {}: {e}\n--- garage log ---\n{}", self.url(prefix), self.log()))
    }

    /// The objects of one kind under `prefix` (`"data/"`, `"index/"`, ...).
    pub fn objects_in(&self, prefix: &str, dir: &str) -> BTreeSet<String> {
        self.objects(prefix).into_iter().filter(|o| o.starts_with(dir)).collect()
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.kill();
    }
}
