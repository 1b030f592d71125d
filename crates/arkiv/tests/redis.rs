//! The Redis source against real servers: each test starts its own
//! `redis-server` on a free port (the machine's shared one is left to
//! others), backs it up with `redis-cli --rdb`, restores the RDB file,
//! and proves it by starting another server on that file and reading the
//! keys back.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{assert_code, parse_json, stderr, Scratch};

/// A redis-server of the test's own, stopped when dropped.
struct Server {
    port: u16,
    child: Child,
    password: Option<String>,
}

impl Server {
    /// Persistence off, and no wait before a replication transfer (the
    /// default waits 5 s for more replicas to join).
    fn start(dir: &Path, dbfilename: &str, password: Option<&str>) -> Server {
        std::fs::create_dir_all(dir).unwrap();
        let port = common::garage::free_port();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--repl-diskless-sync-delay", "0", "--dbfilename", dbfilename])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(p) = password {
            cmd.args(["--requirepass", p]);
        }
        let child = cmd.spawn().expect("redis-server is installed");
        let server = Server { port, child, password: password.map(str::to_string) };
        let t0 = Instant::now();
        while server.cli(&["PING"]) != "PONG" {
            assert!(t0.elapsed() < Duration::from_secs(20), "redis-server on port {port} did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn cli(&self, args: &[&str]) -> String {
        let mut c = Command::new("redis-cli");
        c.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]).args(args);
        match &self.password {
            Some(p) => c.env("REDISCLI_AUTH", p),
            None => c.env_remove("REDISCLI_AUTH"),
        };
        let out = c.output().expect("redis-cli is installed");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Keys of every type, in two databases, one with an expiry far away.
fn seed(r: &Server, n: u32) {
    for i in 0..n {
        assert_eq!(r.cli(&["SET", &format!("user:{i}"), &format!("value {i} ✓")]), "OK");
    }
    r.cli(&["HSET", "hash", "a", "1", "b", "two"]);
    r.cli(&["RPUSH", "list", "x", "y", "z"]);
    r.cli(&["SADD", "set", "m1", "m2"]);
    r.cli(&["ZADD", "zset", "1", "one", "2", "two"]);
    r.cli(&["SET", "expiring", "soon", "EX", "86400"]);
    r.cli(&["-n", "3", "SET", "elsewhere", "in db3"]);
}

/// What the data reads as, whatever server holds it.
fn contents(r: &Server, n: u32) -> Vec<String> {
    let mut v: Vec<String> = (0..n).map(|i| r.cli(&["GET", &format!("user:{i}")])).collect();
    v.push(r.cli(&["HGETALL", "hash"]));
    v.push(r.cli(&["LRANGE", "list", "0", "-1"]));
    v.push(r.cli(&["SORT", "set", "ALPHA"]));
    v.push(r.cli(&["ZRANGE", "zset", "0", "-1", "WITHSCORES"]));
    v.push(r.cli(&["GET", "expiring"]));
    v.push((r.cli(&["TTL", "expiring"]).parse::<i64>().unwrap() > 0).to_string());
    v.push(r.cli(&["-n", "3", "GET", "elsewhere"]));
    v.push(r.cli(&["DBSIZE"]));
    v
}

fn one_line(out: &Output) -> String {
    let err = stderr(out);
    assert_eq!(err.trim().lines().count(), 1, "one line expected:\n{err}");
    err
}

#[test]
fn an_rdb_backup_restores_to_a_file_a_server_starts_on_with_every_key() {
    let s = Scratch::new();
    let live = Server::start(&s.join("live"), "dump.rdb", None);
    seed(&live, 200);
    let want = contents(&live, 200);
    assert_eq!(want.last().unwrap(), "205");
    let id = s.backup(&[&live.url()]);

    let snap = &s.snapshots()[0];
    assert_eq!(snap["source"], "redis");
    assert_eq!(snap["paths"][0], live.url());
    let meta = &snap["metadata"];
    assert!(meta["redis_version"].as_str().unwrap().starts_with('7'), "{meta}");
    assert_eq!(meta["keyspace"]["db0"]["keys"], 205);
    assert_eq!(meta["keyspace"]["db0"]["expires"], 1);
    assert_eq!(meta["keyspace"]["db3"]["keys"], 1);
    assert!(meta["used_memory"].as_u64().unwrap() > 0, "{meta}");
    assert_eq!(meta["streams"][0]["name"], "dump.rdb");

    let restored = s.join("restored");
    std::fs::create_dir(&restored).unwrap();
    let file = restored.join("from-backup.rdb");
    s.ok(&["restore", &id, "--target", &format!("redis://{}", file.display())]);
    assert!(std::fs::read(&file).unwrap().starts_with(b"REDIS"));
    drop(live);
    let again = Server::start(&restored, "from-backup.rdb", None);
    assert_eq!(contents(&again, 200), want);
}

#[test]
fn an_existing_rdb_file_is_replaced_only_with_overwrite_and_a_directory_gets_dump_rdb() {
    let s = Scratch::new();
    let live = Server::start(&s.join("live"), "dump.rdb", None);
    seed(&live, 3);
    let id = s.backup(&[&live.url()]);
    let dir = s.join("target");
    std::fs::create_dir(&dir).unwrap();
    let file = dir.join("dump.rdb");
    std::fs::write(&file, b"precious").unwrap();

    let out = s.run(&["restore", &id, "--target", &format!("redis://{}", file.display())]);
    assert_code(&out, 1, "restore over an existing file");
    assert!(one_line(&out).contains("--overwrite"));
    assert_eq!(std::fs::read(&file).unwrap(), b"precious");
    // The directory form means the same file.
    let out = s.run(&["restore", &id, "--target", &format!("redis://{}", dir.display())]);
    assert_code(&out, 1, "restore into a directory holding dump.rdb");
    assert_eq!(std::fs::read(&file).unwrap(), b"precious");

    s.ok(&["restore", &id, "--target", &format!("redis://{}", dir.display()), "--overwrite"]);
    assert!(std::fs::read(&file).unwrap().starts_with(b"REDIS"));
    let names: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(names, [file.clone()], "no temporary file left behind");

    // A live server is not a restore target.
    let out = s.run(&["restore", &id, "--target", &live.url()]);
    assert_code(&out, 1, "restore into a running server");
    assert!(one_line(&out).contains("dbfilename"));
}

#[test]
fn an_unreachable_server_fails_in_one_line_and_makes_no_snapshot() {
    let s = Scratch::new();
    let port = common::garage::free_port();
    let out = s.run(&["backup", &format!("redis://127.0.0.1:{port}")]);
    assert_code(&out, 1, "backup of a server that is not there");
    let err = one_line(&out);
    assert!(err.contains(&format!("127.0.0.1:{port}")) && err.contains("Connection refused"), "{err}");
    assert!(s.snapshots().is_empty());
}

#[test]
fn the_password_comes_from_rediscli_auth_and_never_from_the_url() {
    let s = Scratch::new();
    let live = Server::start(&s.join("live"), "dump.rdb", Some("sekrit-pw"));
    seed(&live, 10);
    let backup = |auth: Option<&str>, url: &str| {
        let mut c = s.cmd(&["backup", url]);
        match auth {
            Some(p) => c.env("REDISCLI_AUTH", p),
            None => c.env_remove("REDISCLI_AUTH"),
        };
        common::run(c)
    };
    for auth in [None, Some("wrong-pw")] {
        let out = backup(auth, &live.url());
        assert_code(&out, 1, &format!("backup with REDISCLI_AUTH {auth:?}"));
        let err = one_line(&out);
        assert!(err.contains("REDISCLI_AUTH") && !err.contains("wrong-pw"), "{err}");
    }
    let out = backup(None, &format!("redis://:sekrit-pw@127.0.0.1:{}", live.port));
    assert_code(&out, 1, "backup with a password in the URL");
    let err = one_line(&out);
    assert!(err.contains("REDISCLI_AUTH") && !err.contains("sekrit-pw"), "{err}");
    assert!(s.snapshots().is_empty());

    assert_code(&backup(Some("sekrit-pw"), &live.url()), 0, "backup with REDISCLI_AUTH");
    // An ACL user, named in the URL, with its password in REDISCLI_AUTH.
    assert_eq!(live.cli(&["ACL", "SETUSER", "bk", "on", ">bk-pw", "+@all", "~*"]), "OK");
    assert_code(&backup(Some("bk-pw"), &format!("redis://bk@127.0.0.1:{}", live.port)), 0, "backup as an ACL user");
    let snaps = s.snapshots();
    assert_eq!(snaps.len(), 2);
    let text = serde_json::to_string(&snaps).unwrap();
    assert!(!text.contains("sekrit-pw") && !text.contains("bk-pw"));
}

fn is_listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[test]
fn verify_starts_a_server_on_the_rdb_checks_keys_and_removes_it() {
    let s = Scratch::new();
    let live = Server::start(&s.join("live"), "dump.rdb", None);
    seed(&live, 50);
    let id = s.backup(&[&live.url()]);
    drop(live);

    let out = s.run(&[
        "--json",
        "verify",
        &id,
        "--assert-rows",
        "db0>=55",
        "--assert-rows",
        "db3>=1",
        "--assert-table",
        "user:49",
        "--assert-sql",
        "SISMEMBER set m2",
        "--assert-command",
        "test \"$(redis-cli -h $REDIS_HOST -p $REDIS_PORT GET user:7)\" = 'value 7 ✓' && echo $ARKIV_SANDBOX_FILE",
    ]);
    assert_code(&out, 0, "verify");
    let v = parse_json(&out);
    assert_eq!(v["passed"], true, "{v}");
    let checks = v["report"]["checks"].as_array().unwrap();
    let details: Vec<&str> = checks.iter().map(|c| c["detail"].as_str().unwrap()).collect();
    assert_eq!(details[..4], ["(integer) 1", "exists", "55 keys", "1 keys"], "{details:?}");
    let file = PathBuf::from(details[4]);
    assert!(file.ends_with("dump.rdb"), "{file:?}");
    assert!(!file.parent().unwrap().exists(), "the sandbox directory was removed");
    let port: u16 = v["report"]["sandbox"].as_str().unwrap().rsplit(':').next().unwrap().parse().unwrap();
    assert!(!is_listening(port), "the sandbox server was stopped");

    let out = s.run(&[
        "--json",
        "verify",
        &id,
        "--assert-rows",
        "db0>=56",
        "--assert-table",
        "user:50",
        "--assert-sql",
        "GET nothing",
    ]);
    assert_code(&out, 1, "verify with failing assertions");
    let v = parse_json(&out);
    let details: Vec<&str> =
        v["report"]["checks"].as_array().unwrap().iter().map(|c| c["detail"].as_str().unwrap()).collect();
    assert_eq!(details, ["answered (nil)", "no key 'user:50' in db0", "55 keys, expected at least 56"]);
    let port: u16 = v["report"]["sandbox"].as_str().unwrap().rsplit(':').next().unwrap().parse().unwrap();
    assert!(!is_listening(port), "the sandbox server was stopped after a failure");
}
