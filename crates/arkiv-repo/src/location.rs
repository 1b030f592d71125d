//! Repository locations: a path or a URL, turned into a storage [`Store`].
//!
//! Credentials never appear in a location: they come from each provider's
//! standard environment variables and files (AWS_ACCESS_KEY_ID and
//! ~/.aws/credentials, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_KEY,
//! an SSH agent or key file), so a location can be logged, printed and put
//! in a config file without leaking a secret.

use std::collections::BTreeMap;

use opendal::Operator;

use crate::backend::{describe, IoPolicy, Store};
use crate::error::{Error, Result};
use crate::fault::{FaultConfig, FaultLayer};

/// How to open stores beyond what the location says.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    pub policy: IoPolicy,
    /// Injected failures, for tests of what a flaky backend does.
    pub faults: Option<FaultConfig>,
}

/// The scheme of a location, as `arkiv` names backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Local,
    S3,
    Gcs,
    Azblob,
    Sftp,
    Webdav,
    Ftp,
}

/// A parsed location: scheme, the part after it and its query options.
#[derive(Debug, Clone)]
pub struct Location {
    pub scheme: Scheme,
    /// Bucket, container or host (with user and port).
    pub authority: String,
    /// The path inside it, without leading or trailing slashes.
    pub path: String,
    pub options: BTreeMap<String, String>,
    /// `webdavs://` or `ftps://`: the TLS variant of the scheme.
    pub secure: bool,
    raw: String,
}

impl Location {
    pub fn parse(spec: &str) -> Result<Location> {
        let invalid = |why: &str| Error::Invalid(format!("repository location '{}': {why}", redact(spec)));
        let Some((scheme, rest)) = spec.split_once("://") else {
            if spec.is_empty() {
                return Err(invalid("empty"));
            }
            return Ok(Location {
                scheme: Scheme::Local,
                authority: String::new(),
                path: spec.to_string(),
                options: BTreeMap::new(),
                secure: false,
                raw: spec.to_string(),
            });
        };
        let scheme_name = scheme.to_ascii_lowercase();
        let secure = matches!(scheme_name.as_str(), "webdavs" | "ftps");
        let scheme = match scheme_name.as_str() {
            "file" => Scheme::Local,
            "s3" => Scheme::S3,
            "gs" | "gcs" => Scheme::Gcs,
            "azblob" | "az" => Scheme::Azblob,
            "sftp" => Scheme::Sftp,
            "webdav" | "webdavs" => Scheme::Webdav,
            "ftp" | "ftps" => Scheme::Ftp,
            other => {
                return Err(invalid(&format!(
                    "unknown scheme '{other}' (use a path, s3://, gs://, azblob://, sftp://, webdav(s):// or ftp://)"
                )))
            }
        };
        let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut options = BTreeMap::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| invalid(&format!("option '{pair}' has no value")))?;
            let v = percent_decode(v).ok_or_else(|| invalid(&format!("option '{k}' is not valid percent-encoding")))?;
            options.insert(k.to_string(), v);
        }
        if scheme == Scheme::Local {
            return Ok(Location {
                scheme,
                authority: String::new(),
                path: main.to_string(),
                options,
                secure,
                raw: spec.into(),
            });
        }
        let (authority, path) = main.split_once('/').unwrap_or((main, ""));
        if authority.is_empty() {
            return Err(invalid("no bucket, container or host"));
        }
        if authority.contains(':') && authority.contains('@') && authority.split('@').next().unwrap().contains(':') {
            return Err(invalid("passwords do not belong in a location; use the provider's environment variables"));
        }
        Ok(Location {
            scheme,
            authority: authority.to_string(),
            path: path.trim_matches('/').to_string(),
            options,
            secure,
            raw: spec.to_string(),
        })
    }

    /// The user and the host (with port) of an `sftp://` or `ftp://`
    /// authority.
    fn user_and_host(&self) -> (Option<String>, String) {
        match self.authority.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_string()), h.to_string()),
            None => (None, self.authority.clone()),
        }
    }

    /// How messages name it: scheme, authority and path, no query.
    pub fn display(&self) -> String {
        redact(&self.raw)
    }

    fn take(&mut self, key: &str) -> Option<String> {
        self.options.remove(key)
    }

    fn finish_options(&self) -> Result<()> {
        match self.options.keys().next() {
            None => Ok(()),
            Some(k) => Err(Error::Invalid(format!("repository location '{}': unknown option '{k}'", self.display()))),
        }
    }
}

/// A location without its query (where options, never secrets, live, but
/// which makes messages long) and without any password in it.
pub fn redact(spec: &str) -> String {
    let base = spec.split('?').next().unwrap_or(spec);
    match base.split_once("://") {
        Some((scheme, rest)) => {
            let (auth, path) = rest.split_once('/').map(|(a, p)| (a, Some(p))).unwrap_or((rest, None));
            let auth = match auth.rsplit_once('@') {
                Some((user, host)) => format!("{}@{host}", user.split(':').next().unwrap_or(user)),
                None => auth.to_string(),
            };
            match path {
                Some(p) => format!("{scheme}://{auth}/{p}"),
                None => format!("{scheme}://{auth}"),
            }
        }
        None => base.to_string(),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Opens the store a location names.
pub fn open_store(spec: &str, opts: &StoreOptions) -> Result<Store> {
    // The HTTP client OpenDAL's services share; installed here rather than
    // by a constructor before `main` (OpenDAL's auto-registration), which
    // would run in every process that links this crate.
    static HTTP: std::sync::Once = std::sync::Once::new();
    HTTP.call_once(opendal::install_default);
    let mut loc = Location::parse(spec)?;
    let display = loc.display();
    let bad = |e: opendal::Error| Error::Backend { op: "open", path: display.clone(), message: describe(&e) };
    let root = format!("/{}", loc.path);
    let op = match loc.scheme {
        Scheme::Local => {
            loc.finish_options()?;
            if opts.faults.is_none() {
                return Store::local(std::path::Path::new(&loc.path));
            }
            // Faults go around the local service too, so tests of flaky
            // storage need no server.
            let store = Store::local(std::path::Path::new(&loc.path))?;
            let op = store.op().clone();
            return Ok(Store::with_root(layered(op, opts), display, std::path::PathBuf::from(&loc.path)));
        }
        Scheme::S3 => {
            let mut b = opendal::services::S3::default().bucket(&loc.authority).root(&root);
            if let Some(e) = loc.take("endpoint") {
                b = b.endpoint(&e);
            }
            // Most S3-compatible servers accept any region name; AWS itself
            // needs the right one, from the option or AWS_REGION.
            let region = loc
                .take("region")
                .or_else(|| env("AWS_REGION"))
                .or_else(|| env("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|| "us-east-1".into());
            b = b.region(&region);
            if let Some(c) = loc.take("storage_class") {
                b = b.default_storage_class(&c);
            }
            if let Some(p) = loc.take("profile") {
                b = b.profile(&p);
            }
            if loc.take("virtual_host").as_deref() == Some("true") {
                b = b.enable_virtual_host_style();
            }
            loc.finish_options()?;
            Operator::new(b).map_err(bad)?
        }
        Scheme::Gcs => {
            let mut b = opendal::services::Gcs::default().bucket(&loc.authority).root(&root);
            if let Some(e) = loc.take("endpoint") {
                b = b.endpoint(&e);
            }
            if let Some(c) = loc.take("storage_class") {
                b = b.default_storage_class(&c);
            }
            if let Some(p) = loc.take("credential_path").or_else(|| env("GOOGLE_APPLICATION_CREDENTIALS")) {
                b = b.credential_path(&p);
            }
            loc.finish_options()?;
            Operator::new(b).map_err(bad)?
        }
        Scheme::Azblob => {
            let mut b = opendal::services::Azblob::default().container(&loc.authority).root(&root);
            let account = loc.take("account").or_else(|| env("AZURE_STORAGE_ACCOUNT"));
            let endpoint =
                loc.take("endpoint").or_else(|| account.as_ref().map(|a| format!("https://{a}.blob.core.windows.net")));
            match endpoint {
                Some(e) => b = b.endpoint(&e),
                None => {
                    return Err(Error::Invalid(format!(
                        "{display}: no storage account: set AZURE_STORAGE_ACCOUNT or add ?account=NAME"
                    )))
                }
            }
            if let Some(a) = &account {
                b = b.account_name(a);
            }
            if let Some(k) = env("AZURE_STORAGE_KEY") {
                b = b.account_key(&k);
            }
            if let Some(t) = env("AZURE_STORAGE_SAS_TOKEN") {
                b = b.sas_token(&t);
            }
            loc.finish_options()?;
            Operator::new(b).map_err(bad)?
        }
        Scheme::Sftp => {
            let (user, host) = loc.user_and_host();
            let mut b = opendal::services::Sftp::default().endpoint(&format!("ssh://{host}")).root(&root);
            if let Some(u) = user {
                b = b.user(&u);
            }
            if let Some(k) = loc.take("key") {
                b = b.key(&k);
            }
            let strategy = loc.take("known_hosts").unwrap_or_else(|| "strict".into());
            if !matches!(strategy.as_str(), "strict" | "accept" | "add") {
                return Err(Error::Invalid(format!("{display}: known_hosts must be strict, accept or add")));
            }
            b = b.known_hosts_strategy(&strategy);
            loc.finish_options()?;
            Operator::new(b).map_err(bad)?
        }
        Scheme::Webdav => {
            let mut b = opendal::services::Webdav::default()
                .endpoint(&format!("{}://{}", if loc.secure { "https" } else { "http" }, loc.authority))
                .root(&root);
            if let Some(u) = env("ARKIV_WEBDAV_USER") {
                b = b.username(&u);
            }
            if let Some(p) = env("ARKIV_WEBDAV_PASSWORD") {
                b = b.password(&p);
            }
            loc.finish_options()?;
            Operator::new(b).map_err(bad)?
        }
        Scheme::Ftp => {
            let (user, host) = loc.user_and_host();
            let mut b = opendal::services::Ftp::default()
                .endpoint(&format!("{}://{host}", if loc.secure { "ftps" } else { "ftp" }))
                .root(&root);
            // OpenDAL logs in only when given a user, and FTP servers refuse
            // every command before a login (`530 Log in with USER and PASS
            // first`, seen with pyftpdlib), so a location without a user
            // could never work: it means an anonymous login, as in FTP URLs
            // (RFC 1738).
            b = b.user(&user.unwrap_or_else(|| "anonymous".into()));
            if let Some(p) = env("ARKIV_FTP_PASSWORD") {
                b = b.password(&p);
            }
            loc.finish_options()?;
            Operator::new(b).map_err(bad)?.layer(ftp::MissingDirsListEmpty)
        }
    };
    let store = Store::remote(layered(op, opts), display);
    Ok(match loc.scheme {
        // Not FTP: OpenDAL's FTP service has no rename (`operation is not
        // supported`, so every write failed), and its writer stages each
        // upload itself: it appends to `NAME.RANDOM` in the repository's
        // root and renames that into place when the upload completes.
        Scheme::Sftp | Scheme::Webdav => store.with_rename_writes(),
        _ => store,
    })
}

/// Faults innermost, so the timeout limits injected hangs as it would a
/// real one; retries are the backend's own, around everything.
fn layered(op: Operator, opts: &StoreOptions) -> Operator {
    let op = match &opts.faults {
        Some(f) => op.layer(FaultLayer::new(f.clone())),
        None => op,
    };
    op.layer(
        opendal::layers::TimeoutLayer::new().with_timeout(opts.policy.timeout).with_io_timeout(opts.policy.io_timeout),
    )
}

mod ftp {
    //! Works around two faults of OpenDAL 0.59's FTP service that the tests
    //! against a real server (pyftpdlib) found.
    //!
    //! **Listing a missing directory never ends.** The service answers it
    //! with `NotFound` (its `LIST` gets `550`) instead of an empty list, and
    //! its lister sends the `LIST` again on every call; the recursive
    //! listing OpenDAL simulates for FTP calls again on `NotFound`, forever
    //! (`ServicerFlatLister skipping entry due to not found during listing:
    //! deletions/`, repeated). A fresh repository has no `snapshots/`, and
    //! every backup lists `deletions/`. This layer asks first whether the
    //! directory exists (a `LIST` of its parent) and lists a missing one as
    //! empty, as OpenDAL's contract for services says. Arkiv never removes
    //! directories, so one that existed when asked is still there when
    //! listed.
    //!
    //! **A ranged read leaves a stale reply behind.** The service reads a
    //! range with `REST` and `RETR`, stops after the range and hands the
    //! control connection back to its pool without ending the transfer.
    //! The server then answers `426 Transfer aborted` on that connection,
    //! often only after the pool's `NOOP` check got its `200`, so the next
    //! command sent on the connection reads the `426` as its own reply and
    //! fails: restores failed 3 times in 20 with `read …: ftp error:
    //! Invalid response: [426] 426 Transfer aborted; 592 bytes transmitted`.
    //! So every ranged read here reads on to the end of the object,
    //! discarding what follows the range: the transfer completes, and the
    //! pool's `NOOP` check then reads the transfer's `226` and drops the
    //! connection, as it already does after every whole-object read. The
    //! cost is traffic: a restore reads each pack from the start of every
    //! run of blobs it wants to the pack's end.

    use std::sync::Arc;

    use opendal::raw::oio;
    use opendal::raw::oio::ReadStream;
    use opendal::raw::*;
    use opendal::{Buffer, BytesRange, Capability, Error, ErrorKind, OperationContext, Result};

    #[derive(Debug, Clone, Copy)]
    pub struct MissingDirsListEmpty;

    impl Layer for MissingDirsListEmpty {
        fn apply_service(&self, inner: Servicer) -> Servicer {
            Arc::new(FtpService { inner })
        }
    }

    #[derive(Debug)]
    pub struct FtpService {
        inner: Servicer,
    }

    impl Service for FtpService {
        type Reader = FtpReader;
        type Writer = oio::Writer;
        type Lister = FtpLister;
        type Deleter = oio::Deleter;
        type Copier = oio::Copier;
        type Composer = oio::Composer;

        crate::fault::forward_to_inner!(
            info, capability, create_dir, stat, write, delete, copy, compose, rename, restore, presign
        );

        fn read(&self, ctx: &OperationContext, path: &str, args: OpRead) -> Result<Self::Reader> {
            Ok(FtpReader { inner: self.inner.read(ctx, path, args)? })
        }
        fn list(&self, ctx: &OperationContext, path: &str, args: OpList) -> Result<Self::Lister> {
            Ok(FtpLister {
                srv: self.inner.clone(),
                ctx: ctx.clone(),
                path: path.to_string(),
                args: Some(args),
                inner: None,
            })
        }
    }

    /// Reads every range on to the end of the object (see above).
    #[doc(hidden)]
    pub struct FtpReader {
        inner: oio::Reader,
    }

    impl oio::Read for FtpReader {
        async fn open(&self, range: BytesRange) -> Result<(RpRead, Box<dyn oio::ReadStreamDyn>)> {
            let (rp, inner) = self.inner.open(BytesRange::new(range.offset(), None)).await?;
            Ok((rp, Box::new(ToTheEnd { inner, left: range.size() })))
        }

        async fn read(&self, range: BytesRange) -> Result<(RpRead, Buffer)> {
            let expected = range.size();
            let (rp, mut stream) = self.open(range).await?;
            let buf = stream.read_all().await?;
            if expected.is_some_and(|n| buf.len() as u64 != n) {
                return Err(Error::new(ErrorKind::Unexpected, "reader got unexpected data size"));
            }
            Ok((rp, buf))
        }
    }

    /// Gives `left` bytes (all, if `None`) and reads the rest of the
    /// transfer, unused, before it gives the last of them.
    struct ToTheEnd {
        inner: Box<dyn oio::ReadStreamDyn>,
        left: Option<u64>,
    }

    impl oio::ReadStream for ToTheEnd {
        async fn read(&mut self) -> Result<Buffer> {
            if self.left == Some(0) {
                return Ok(Buffer::new());
            }
            let mut buf = self.inner.read().await?;
            if let Some(left) = self.left {
                if buf.len() as u64 >= left {
                    buf.truncate(left as usize);
                    self.left = Some(0);
                    while !self.inner.read().await?.is_empty() {}
                } else {
                    self.left = Some(left - buf.len() as u64);
                }
            }
            Ok(buf)
        }
    }

    /// Lists `path` once it is known to exist; nothing if it does not.
    #[doc(hidden)]
    pub struct FtpLister {
        srv: Servicer,
        ctx: OperationContext,
        path: String,
        /// Taken when the listing starts (or is found to be empty).
        args: Option<OpList>,
        inner: Option<oio::Lister>,
    }

    impl oio::List for FtpLister {
        async fn next(&mut self) -> Result<Option<oio::Entry>> {
            if let Some(args) = self.args.take() {
                let root = self.path.is_empty() || self.path == "/";
                if self.path.ends_with('/') && !root {
                    match self.srv.stat(&self.ctx, &self.path, OpStat::default()).await {
                        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
                        Err(e) => return Err(e),
                        Ok(_) => {}
                    }
                }
                self.inner = Some(self.srv.list(&self.ctx, &self.path, args)?);
            }
            match &mut self.inner {
                Some(l) => l.next().await,
                None => Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_into_scheme_authority_path_and_options() {
        let l =
            Location::parse("s3://bucket/some/prefix/?endpoint=http%3A%2F%2F127.0.0.1%3A3900&region=garage").unwrap();
        assert_eq!(l.scheme, Scheme::S3);
        assert_eq!(l.authority, "bucket");
        assert_eq!(l.path, "some/prefix");
        assert_eq!(l.options["endpoint"], "http://127.0.0.1:3900");
        assert_eq!(l.display(), "s3://bucket/some/prefix/");
        assert_eq!(Location::parse("/var/backups").unwrap().scheme, Scheme::Local);
        assert_eq!(Location::parse("file:///var/backups").unwrap().path, "/var/backups");
        assert_eq!(Location::parse("sftp://backup@host:2222/srv/repo").unwrap().authority, "backup@host:2222");
    }

    #[test]
    fn bad_locations_are_refused_with_the_reason() {
        let err = |s: &str| Location::parse(s).unwrap_err().to_string();
        assert!(err("nfs://x/y").contains("unknown scheme 'nfs'"));
        assert!(err("s3:///prefix").contains("no bucket"));
        assert!(err("s3://b/p?endpoint").contains("has no value"));
        let e = err("sftp://user:hunter2@host/repo");
        assert!(e.contains("passwords do not belong") && !e.contains("hunter2"), "{e}");
        let e = open_store("s3://b/p?endpiont=http://x", &StoreOptions::default()).unwrap_err().to_string();
        assert!(e.contains("unknown option 'endpiont'"), "{e}");
    }

    /// Azure Blob is not run against a real server here; this checks the
    /// request it sends: the container and path, and a SharedKey signature
    /// made from AZURE_STORAGE_KEY (and the key itself never on the wire).
    #[test]
    fn azure_requests_name_the_container_and_are_signed_with_the_shared_key() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
            String::from_utf8_lossy(&req).to_string()
        });
        // A base64 account key, as Azure issues them.
        let key = "c2VjcmV0LWF6dXJlLWtleS1mb3ItdGVzdHMtb25seQ==";
        std::env::set_var("AZURE_STORAGE_KEY", key);
        let store = open_store(
            &format!("azblob://backups/host1?account=acct&endpoint=http://127.0.0.1:{port}"),
            &StoreOptions::default(),
        )
        .unwrap();
        std::env::remove_var("AZURE_STORAGE_KEY");
        let backend = crate::backend::Backend::new(store, None);
        let err = backend.read(crate::backend::FileKind::Config, "config").unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err}");
        let req = server.join().unwrap();
        let lower = req.to_ascii_lowercase();
        assert!(req.starts_with("GET /backups/host1/config "), "{req}");
        assert!(lower.contains("authorization: sharedkey acct:"), "{req}");
        assert!(lower.contains("x-ms-version:") && lower.contains("x-ms-date:"), "{req}");
        assert!(!req.contains(key), "the account key went over the wire: {req}");
    }

    /// Google Cloud Storage is not run against a real server here either;
    /// this follows a whole credential flow on the wire. The credential file
    /// is a workload-identity one (an external account, as CI systems and
    /// other clouds use): its subject token, read from a file, is exchanged
    /// at the file's `token_url` for an access token, which then signs the
    /// object read as a bearer token. Both ends are a loopback listener.
    #[test]
    fn gcs_requests_exchange_the_credential_file_for_a_token_and_name_the_bucket_and_object() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for _ in 0..2 {
                let (mut conn, _) = listener.accept().unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 8192];
                // Headers, then as much body as Content-Length says.
                loop {
                    let n = conn.read(&mut buf).unwrap();
                    req.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&req).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                            })
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        if req.len() >= end + 4 + len {
                            break;
                        }
                    }
                    if n == 0 {
                        break;
                    }
                }
                let text = String::from_utf8_lossy(&req).to_string();
                let reply: &[u8] = if text.starts_with("POST /token") {
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 148\r\nConnection: close\r\n\r\n{\"access_token\":\"ya29.arkiv-test-token\",\"issued_token_type\":\"urn:ietf:params:oauth:token-type:access_token\",\"token_type\":\"Bearer\",\"expires_in\":3600}"
                } else {
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                };
                conn.write_all(reply).unwrap();
                seen.push(text);
            }
            seen
        });
        let dir = tempfile::tempdir().unwrap();
        let subject = dir.path().join("subject-token");
        std::fs::write(&subject, "subject-token-from-the-ci-system").unwrap();
        let cred = dir.path().join("credential.json");
        std::fs::write(
            &cred,
            format!(
                r#"{{"type":"external_account","audience":"//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/ci/providers/arkiv","subject_token_type":"urn:ietf:params:oauth:token-type:jwt","token_url":"http://127.0.0.1:{port}/token","credential_source":{{"file":"{}","format":{{"type":"text"}}}}}}"#,
                subject.display()
            ),
        )
        .unwrap();
        let store = open_store(
            &format!("gs://backups/host1?endpoint=http://127.0.0.1:{port}&credential_path={}", cred.display()),
            &StoreOptions::default(),
        )
        .unwrap();
        let backend = crate::backend::Backend::new(store, None);
        let err = backend.read(crate::backend::FileKind::Config, "config").unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err}");
        let seen = server.join().unwrap();
        assert!(seen[0].starts_with("POST /token "), "{}", seen[0]);
        assert!(seen[0].contains("subject-token-from-the-ci-system"), "{}", seen[0]);
        assert!(seen[0].contains("token-exchange"), "an STS token exchange: {}", seen[0]);
        let get = &seen[1];
        assert!(get.starts_with("GET /storage/v1/b/backups/o/host1%2Fconfig?alt=media "), "{get}");
        assert!(get.to_ascii_lowercase().contains("authorization: bearer ya29.arkiv-test-token"), "{get}");
    }

    #[test]
    fn redaction_drops_query_and_passwords() {
        assert_eq!(redact("s3://b/p?endpoint=http://x"), "s3://b/p");
        assert_eq!(redact("ftp://u:secret@host/p"), "ftp://u@host/p");
        assert_eq!(redact("/plain/path"), "/plain/path");
    }

    #[test]
    fn every_remote_scheme_builds_an_operator_offline() {
        // Building an operator validates its configuration without a request.
        let opts = StoreOptions::default();
        open_store("s3://bucket/p?endpoint=http://127.0.0.1:9&region=x&storage_class=STANDARD_IA", &opts).unwrap();
        open_store("gs://bucket/p?endpoint=http://127.0.0.1:9", &opts).unwrap();
        open_store("azblob://container/p?account=acct&endpoint=http://127.0.0.1:9", &opts).unwrap();
        open_store("webdav://127.0.0.1:9/dav", &opts).unwrap();
        open_store("ftp://user@127.0.0.1:9/p", &opts).unwrap();
        let e = open_store("sftp://u@h/p?known_hosts=maybe", &opts).unwrap_err().to_string();
        assert!(e.contains("known_hosts"), "{e}");
    }
}
