//! The test bed: real PostgreSQL (Debian's server, started per test on a free port),
//! a real S3 server (moto), local directories, and the Kubernetes stand-in; plus a
//! runner for the real binary. A missing server is a failing test that says how to
//! install it, never a skip.
#![allow(dead_code)]

pub mod emulators;
pub mod fault_proxy;
pub mod kube_jobs;
pub mod kube_standin;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::{ObjectStore, ObjectStoreExt};
use pachyderm_backup::catalog::{Catalog, Manifest};
pub use pachyderm_backup::demo::{TempPostgres, seed_chunks};

use emulators::{Azurite, FakeGcs};
use kube_standin::StandIn;

pub const INSTALL: &str = "run scripts/test.sh (it installs PostgreSQL, moto, Azurite, fake-gcs-server, Prometheus, the Pushgateway and openssl), or: apt-get install -y postgresql prometheus prometheus-pushgateway openssl && pip install 'moto[s3]' flask flask-cors";

fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file())
}

/// A moto S3 server of its own.
pub struct Moto {
    child: std::process::Child,
    pub port: u16,
}

impl Moto {
    pub async fn start() -> Moto {
        Moto::start_with(&[]).await
    }

    /// A moto serving HTTPS only, with this certificate and key (see [`TestCa`]).
    pub async fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Moto {
        Moto::start_with(&["-c".into(), cert.display().to_string(), "-k".into(), key.display().to_string()]).await
    }

    async fn start_with(extra: &[String]) -> Moto {
        let program = on_path("moto_server").unwrap_or_else(|| panic!("moto_server is not installed: {INSTALL}"));
        for _ in 0..5 {
            let port = pachyderm_backup::demo::free_port();
            let child = std::process::Command::new(&program)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .args(extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn moto_server");
            let mut moto = Moto { child, port };
            for _ in 0..300 {
                if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                    return moto;
                }
                if let Ok(Some(_)) = moto.child.try_wait() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = moto.child.kill();
        }
        panic!("moto_server did not start: {INSTALL}");
    }

    fn http(&self, method: &str, path: &str) -> String {
        self.http_with(method, path, "", "")
    }

    fn http_with(&self, method: &str, path: &str, headers: &str, body: &str) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect to moto");
        write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}", self.port, body.len())
            .expect("write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    /// A bucket with S3 Object Lock and a default retention of `days` in `mode`.
    pub fn create_locked_bucket(&self, bucket: &str, mode: &str, days: u32) {
        let answer = self.http_with("PUT", &format!("/{bucket}"), "x-amz-bucket-object-lock-enabled: true\r\n", "");
        assert!(answer.starts_with("HTTP/1.1 200"), "creating locked bucket {bucket}: {answer}");
        let rule = format!(
            "<ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention><Mode>{mode}</Mode><Days>{days}</Days></DefaultRetention></Rule></ObjectLockConfiguration>"
        );
        let answer = self.http_with("PUT", &format!("/{bucket}?object-lock"), "", &rule);
        assert!(answer.starts_with("HTTP/1.1 200"), "setting the default retention of {bucket}: {answer}");
    }

    /// Every version in a bucket, oldest listing order: (key, is a delete marker).
    pub fn versions(&self, bucket: &str) -> Vec<(String, bool)> {
        let answer = self.http("GET", &format!("/{bucket}?versions&max-keys=100000"));
        let mut out = Vec::new();
        for (tag, marker) in [("<Version>", false), ("<DeleteMarker>", true)] {
            for chunk in answer.split(tag).skip(1) {
                let key = chunk.split("<Key>").nth(1).and_then(|k| k.split("</Key>").next()).unwrap_or_default();
                out.push((key.to_string(), marker));
            }
        }
        out
    }

    /// Creates a bucket on a moto started with [`Moto::start_tls`], trusting `ca`.
    pub async fn create_bucket_over_tls(&self, bucket: &str, ca: &std::path::Path) {
        use object_store::client::{HttpConnector, HttpRequest, HttpRequestBody, ReqwestConnector};
        let client = ReqwestConnector::default().connect(&tls_client_options(ca)).expect("an HTTPS client");
        let request: HttpRequest =
            http::Request::builder().method("PUT").uri(format!("https://127.0.0.1:{}/{bucket}", self.port)).body(HttpRequestBody::empty()).expect("request");
        let answer = client.execute(request).await.unwrap_or_else(|e| panic!("creating bucket {bucket} over TLS: {e}"));
        assert!(answer.status().is_success(), "creating bucket {bucket} over TLS: {}", answer.status());
    }

    /// A store of `bucket` on a moto started with [`Moto::start_tls`], trusting `ca`.
    pub fn store_over_tls(&self, bucket: &str, ca: &std::path::Path) -> Arc<dyn ObjectStore> {
        Arc::new(
            AmazonS3Builder::new()
                .with_endpoint(format!("https://127.0.0.1:{}", self.port))
                .with_bucket_name(bucket)
                .with_region("us-east-1")
                .with_access_key_id("test")
                .with_secret_access_key("test")
                .with_virtual_hosted_style_request(false)
                .with_client_options(tls_client_options(ca))
                .build()
                .expect("S3 store over TLS"),
        )
    }

    pub fn create_bucket(&self, bucket: &str) {
        let answer = self.http("PUT", &format!("/{bucket}"));
        assert!(answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"), "creating bucket {bucket}: {answer}");
    }

    pub fn delete_bucket(&self, bucket: &str) -> String {
        self.http("DELETE", &format!("/{bucket}"))
    }

    pub fn store(&self, bucket: &str) -> Arc<dyn ObjectStore> {
        local_s3_store(self.port, bucket, "test", "test")
    }

    /// The object_store variables for one side (`SOURCE_`, `TARGET_`, `RESTORE_` or "").
    pub fn env(&self, side: &str) -> Vec<(String, String)> {
        [("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_REGION", "us-east-1"), ("AWS_ALLOW_HTTP", "true")]
            .iter()
            .map(|(k, v)| (format!("{side}{k}"), v.to_string()))
            .chain([(format!("{side}AWS_ENDPOINT"), format!("http://127.0.0.1:{}", self.port))])
            .collect()
    }
}

/// An s3s-fs S3 server of its own (a disk-backed S3 in Rust, `cargo install s3s-fs`):
/// unlike moto, it refuses a body whose MD5 is not the `Content-MD5` sent (BadDigest),
/// and it checks SigV4 signatures.
pub struct S3sFs {
    child: std::process::Child,
    pub port: u16,
    pub root: tempfile::TempDir,
}

pub const INSTALL_S3S: &str = "run scripts/test.sh (it installs it), or: cargo install s3s-fs@0.14.1 --locked --features binary";

impl S3sFs {
    pub const ACCESS_KEY: &str = "test";
    pub const SECRET_KEY: &str = "testtesttest";

    pub async fn start() -> S3sFs {
        let program = on_path("s3s-fs").unwrap_or_else(|| panic!("s3s-fs is not installed: {INSTALL_S3S}"));
        let root = tempfile::tempdir().expect("a directory for s3s-fs");
        for _ in 0..5 {
            let port = pachyderm_backup::demo::free_port();
            let child = std::process::Command::new(&program)
                .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", Self::ACCESS_KEY, "--secret-key", Self::SECRET_KEY])
                .arg(root.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn s3s-fs");
            let mut child = child;
            for _ in 0..100 {
                if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                    return S3sFs { child, port, root };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("s3s-fs did not start: {INSTALL_S3S}");
    }

    /// A bucket is a directory of its root.
    pub fn create_bucket(&self, bucket: &str) {
        std::fs::create_dir_all(self.root.path().join(bucket)).expect("create the bucket's directory");
    }

    pub fn store(&self, bucket: &str) -> Arc<dyn ObjectStore> {
        local_s3_store(self.port, bucket, Self::ACCESS_KEY, Self::SECRET_KEY)
    }

    /// The object_store variables for one side (`SOURCE_`, `TARGET_`, `RESTORE_` or ""),
    /// at `endpoint` (this server's, or a proxy's in front of it).
    pub fn env(&self, side: &str, endpoint: &str) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", Self::ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", Self::SECRET_KEY),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ENDPOINT", endpoint),
        ]
        .iter()
        .map(|(k, v)| (format!("{side}{k}"), v.to_string()))
        .collect()
    }
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bucket of an S3 server on this machine (plain HTTP, path-style).
fn local_s3_store(port: u16, bucket: &str, key: &str, secret: &str) -> Arc<dyn ObjectStore> {
    Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(format!("http://127.0.0.1:{port}"))
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_access_key_id(key)
            .with_secret_access_key(secret)
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .build()
            .expect("S3 store"),
    )
}

/// HTTP client options trusting the CA certificates of a PEM file.
fn tls_client_options(ca: &std::path::Path) -> object_store::ClientOptions {
    let pem = std::fs::read(ca).expect("read the CA certificate");
    object_store::Certificate::from_pem_bundle(&pem).expect("PEM").into_iter().fold(object_store::ClientOptions::new(), |o, c| o.with_root_certificate(c))
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A throwaway certificate authority (the `openssl` command), and the certificates it
/// signs, in a directory of its own.
pub struct TestCa {
    pub dir: PathBuf,
    /// The CA's certificate (PEM): what a client trusts.
    pub cert: PathBuf,
    key: PathBuf,
}

/// Runs `openssl` with `args` (words separated by spaces; the paths here hold none).
fn openssl(args: &str, dir: &std::path::Path) {
    let program = on_path("openssl").unwrap_or_else(|| panic!("openssl is not installed: {INSTALL}"));
    let out = std::process::Command::new(program).args(args.split_whitespace()).current_dir(dir).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A new P-256 key, unencrypted.
const NEW_KEY: &str = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";

impl TestCa {
    /// A CA named `name`, valid for two days.
    pub fn new(dir: &std::path::Path, name: &str) -> TestCa {
        std::fs::create_dir_all(dir).expect("CA dir");
        let ca = TestCa { dir: dir.to_path_buf(), cert: dir.join(format!("{name}.crt")), key: dir.join(format!("{name}.key")) };
        openssl(&format!("req -x509 {NEW_KEY} -days 2 -subj /CN={name} -keyout {} -out {}", ca.key.display(), ca.cert.display()), dir);
        ca
    }

    /// A certificate for `name` signed by this CA, and its key (mode 0600): a server's
    /// (`subjectAltName` localhost and 127.0.0.1) or, with `client`, a client's whose
    /// common name is `name` (what PostgreSQL's `cert` authentication matches).
    pub fn issue(&self, name: &str, client: bool) -> (PathBuf, PathBuf) {
        let [cert, key, csr, ext] = ["crt", "key", "csr", "ext"].map(|e| self.dir.join(format!("{name}.{e}")));
        let usage = if client { "extendedKeyUsage=clientAuth" } else { "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1" };
        std::fs::write(&ext, format!("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n{usage}\n")).expect("extensions");
        openssl(&format!("req {NEW_KEY} -subj /CN={name} -keyout {} -out {}", key.display(), csr.display()), &self.dir);
        let (ca_cert, ca_key) = (self.cert.display(), self.key.display());
        let signed = format!("-in {} -extfile {} -out {}", csr.display(), ext.display(), cert.display());
        openssl(&format!("x509 -req -CA {ca_cert} -CAkey {ca_key} -CAcreateserial -days 2 {signed}"), &self.dir);
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod key");
        (cert, key)
    }
}

/// Turns TLS on in `pg` (a server certificate from `ca`) and makes `user` (a superuser,
/// created here) log in over TCP with a client certificate of `ca` only: `hostssl …
/// cert` in pg_hba.conf, every other connection of `user` rejected. The `postgres`
/// user keeps its trusted connections, for the tests' own psql.
pub async fn require_client_certificates(pg: &TempPostgres, ca: &TestCa, user: &str) {
    let data = PathBuf::from(pg.psql("postgres", "SHOW data_directory").expect("data directory").trim());
    let (cert, key) = ca.issue("pg-server", false);
    for (from, name) in [(&cert, "server.crt"), (&key, "server.key"), (&ca.cert, "client-ca.crt")] {
        let to = data.join(name);
        std::fs::copy(from, &to).expect("copy into the data directory");
        std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
        // The server runs as `postgres` when the tests run as root (initdb refuses root).
        if pachyderm_backup::demo::is_root() {
            let status = std::process::Command::new("chown").arg("postgres:postgres").arg(&to).status().expect("chown");
            assert!(status.success(), "chown {}", to.display());
        }
    }
    let hba = PathBuf::from(pg.psql("postgres", "SHOW hba_file").expect("hba file").trim());
    let rules = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
    std::fs::write(&hba, format!("hostssl all {user} 127.0.0.1/32 cert\nhost all {user} all reject\n{rules}")).expect("write pg_hba.conf");
    pg.psql("postgres", &format!("CREATE ROLE {user} LOGIN SUPERUSER")).expect("create the role");
    for setting in ["ssl = on", "ssl_cert_file = 'server.crt'", "ssl_key_file = 'server.key'", "ssl_ca_file = 'client-ca.crt'"] {
        pg.psql("postgres", &format!("ALTER SYSTEM SET {setting}")).expect("configure TLS");
    }
    pg.psql("postgres", "SELECT pg_reload_conf()").expect("reload");
    wait_until("the server reloaded with TLS on", Duration::from_secs(20), || pg.psql("postgres", "SHOW ssl").is_ok_and(|s| s.trim() == "on")).await;
}

/// Starts a PostgreSQL server with the fixture (`chunks` live chunks).
pub async fn postgres(chunks: u64) -> TempPostgres {
    tokio::task::spawn_blocking(move || {
        let pg = TempPostgres::start().unwrap_or_else(|e| panic!("{e}: {INSTALL}"));
        pg.load_fixture(chunks as usize).expect("load the fixture");
        pg
    })
    .await
    .expect("postgres start")
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Buckets {
    S3,
    Local,
    /// Source and backup bucket: two containers of one Azurite account.
    Azure,
    /// The source in fake-gcs-server (read only there), the backup bucket a local directory.
    GcsSource,
}

pub struct BedOptions {
    pub buckets: Buckets,
    pub chunks: u64,
    pub pachw: bool,
    pub workers: Vec<(&'static str, i64)>,
}

impl Default for BedOptions {
    fn default() -> Self {
        BedOptions { buckets: Buckets::S3, chunks: 40, pachw: true, workers: vec![("default-edges-v1", 1), ("default-montage-v1", 2)] }
    }
}

/// Everything one test needs.
pub struct Bed {
    pub pg: TempPostgres,
    pub kube: StandIn,
    pub moto: Option<Moto>,
    pub azurite: Option<Azurite>,
    pub gcs: Option<FakeGcs>,
    pub source: Arc<dyn ObjectStore>,
    pub target: Arc<dyn ObjectStore>,
    pub source_url: String,
    pub target_url: String,
    pub dir: tempfile::TempDir,
    pub chunks: u64,
    extra: Vec<(String, String)>,
}

impl Bed {
    pub async fn new(opts: BedOptions) -> Bed {
        let pg = postgres(opts.chunks).await;
        let kube = StandIn::start("pachyderm").await;
        kube.seed_pachyderm(opts.pachw, &opts.workers);
        kube.settle().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let azurite = match opts.buckets {
            Buckets::Azure => {
                let azurite = Azurite::start().await;
                azurite.create_container("pach-data");
                azurite.create_container("backups");
                Some(azurite)
            }
            _ => None,
        };
        let (moto, source, target, source_url, target_url) = match opts.buckets {
            Buckets::S3 => {
                let moto = Moto::start().await;
                moto.create_bucket("pach-data");
                moto.create_bucket("backups");
                let (s, t) = (moto.store("pach-data"), moto.store("backups"));
                (Some(moto), s, t, "s3://pach-data".to_string(), "s3://backups/nightly".to_string())
            }
            Buckets::Local | Buckets::GcsSource => {
                let (s, t) = (dir.path().join("source"), dir.path().join("target"));
                std::fs::create_dir_all(&s).expect("source dir");
                std::fs::create_dir_all(&t).expect("target dir");
                let store =
                    |p: &std::path::Path| -> Arc<dyn ObjectStore> { Arc::new(object_store::local::LocalFileSystem::new_with_prefix(p).expect("local store")) };
                (None, store(&s), store(&t), format!("file://{}", s.display()), format!("file://{}", t.display()))
            }
            Buckets::Azure => {
                let a = azurite.as_ref().expect("started above");
                (None, a.store("pach-data"), a.store("backups"), "az://pach-data".to_string(), "az://backups/nightly".to_string())
            }
        };
        seed_chunks(&source, 1..=opts.chunks).await.expect("seed the source bucket");
        let (gcs, source_url) = match opts.buckets {
            // The emulator loads the seeded directory as bucket `source`.
            Buckets::GcsSource => (Some(FakeGcs::start(dir.path()).await), "gs://source".to_string()),
            _ => (None, source_url),
        };
        let target = match opts.buckets {
            Buckets::S3 | Buckets::Azure => Arc::new(object_store::prefix::PrefixStore::new(target, "nightly")) as Arc<dyn ObjectStore>,
            Buckets::Local | Buckets::GcsSource => target,
        };
        Bed { pg, kube, moto, azurite, gcs, source, target, source_url, target_url, dir, chunks: opts.chunks, extra: Vec::new() }
    }

    pub fn set(&mut self, k: &str, v: &str) -> &mut Self {
        self.extra.retain(|(key, _)| key != k);
        self.extra.push((k.to_string(), v.to_string()));
        self
    }

    pub fn env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            ("PGHOST".into(), "127.0.0.1".into()),
            ("PGPORT".into(), self.pg.port.to_string()),
            ("PGUSER".into(), "postgres".into()),
            ("PGSSLMODE".into(), "disable".into()),
            ("PG_BIN_DIR".into(), self.pg.bin.display().to_string()),
            ("SOURCE_URL".into(), self.source_url.clone()),
            ("TARGET_URL".into(), self.target_url.clone()),
            ("LOG_FORMAT".into(), "json".into()),
            ("PROGRESS_INTERVAL".into(), "1s".into()),
            ("PAUSE_TIMEOUT".into(), "20s".into()),
            ("RESUME_TIMEOUT".into(), "20s".into()),
            ("LEASE_DURATION".into(), "15s".into()),
            ("COPY_CONCURRENCY".into(), "8".into()),
        ];
        if let Some(m) = &self.moto {
            env.extend(m.env(""));
        }
        if let Some(a) = &self.azurite {
            env.extend(a.env(""));
        }
        if let Some(g) = &self.gcs {
            env.extend(g.env("SOURCE_"));
        }
        env.extend(self.kube.env());
        for (k, v) in &self.extra {
            env.retain(|(key, _)| key != k);
            if v != "<unset>" {
                env.push((k.clone(), v.clone()));
            }
        }
        env
    }

    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        binary(args, &self.env())
    }

    pub async fn run(&self, args: &[&str]) -> Output {
        run_to_end(self.command(args)).await
    }

    pub fn catalog(&self) -> Catalog {
        Catalog::new(self.target.clone())
    }

    pub async fn manifests(&self) -> Vec<Manifest> {
        self.catalog().complete().await.expect("read the catalog")
    }

    /// Folders under backups/, complete or not.
    pub async fn folders(&self) -> Vec<String> {
        self.catalog().entries().await.expect("read the catalog").into_iter().map(|e| e.id).collect()
    }

    /// The stand-in's workloads are back at their seeded replicas, unannotated.
    /// Starts `args` (a run) and holds it paused in its capture for as long as the test
    /// needs: the pause is held (pods that do not terminate) until a lock on
    /// `storage.chunk_objects` is in place, then the capture's read of the chunks written
    /// since the pre-copy waits on it. (The dumps run after the resume: a lock taken
    /// before the run holds them there, not in the pause.)
    pub async fn start_held(&self, args: &[&str]) -> (Running, TableLock) {
        self.kube.pods_never_terminate(true);
        let running = Running::start(self.command(args));
        wait_until("pachd scaled to 0 by the pause", Duration::from_secs(120), || self.kube.replicas("deployments", "pachd") == Some(0)).await;
        let lock = TableLock::chunks(&self.pg).await;
        self.kube.pods_never_terminate(false);
        wait_until("the paused capture blocked on storage.chunk_objects", Duration::from_secs(60), || dump_is_blocked(&self.pg)).await;
        (running, lock)
    }

    /// Every record of backup `m`'s listing, read as a run reads it.
    pub async fn listing(&self, m: &Manifest) -> Vec<pachyderm_backup::catalog::ObjectRecord> {
        self.catalog().read_listing(&m.backup_id, m).await.expect("listing").map(|r| r.expect("record")).collect()
    }

    /// Nothing but the Lease was written to the cluster: no pause was attempted.
    pub fn assert_never_paused(&self) {
        let writes: Vec<String> =
            self.kube.mutating_requests().iter().filter(|r| !r.path.contains("/leases")).map(|r| format!("{} {}", r.method, r.path)).collect();
        assert!(writes.is_empty(), "writes before preflight passed: {writes:?}");
    }

    pub fn assert_resumed(&self) {
        assert_eq!(self.kube.replicas("deployments", "pachd"), Some(1), "pachd replicas");
        if self.kube.get("deployments", "pachw").is_some() {
            assert_eq!(self.kube.replicas("deployments", "pachw"), Some(2), "pachw replicas");
        }
        assert_eq!(self.kube.replicas("replicationcontrollers", "default-edges-v1"), Some(1), "worker replicas");
        assert_eq!(self.kube.replicas("replicationcontrollers", "default-montage-v1"), Some(2), "worker replicas");
        assert_eq!(self.kube.annotations_containing("pachyderm-backup/"), Vec::<String>::new(), "pause annotations left behind");
    }

    /// What a dead run's bucket lock looks like once its LEASE_DURATION has passed:
    /// `lock.json` (if any) rewritten with an expiry in the past.
    pub async fn expire_bucket_lock(&self) {
        let path = object_store::path::Path::from(pachyderm_backup::catalog::LOCK);
        let Ok(found) = self.target.get(&path).await else { return };
        let mut lock: serde_json::Value = serde_json::from_slice(&found.bytes().await.expect("read the lock")).expect("a lock record");
        lock["expires_at"] = serde_json::json!(chrono::Utc::now() - chrono::Duration::seconds(1));
        self.target.put(&path, serde_json::to_vec(&lock).expect("json").into()).await.expect("expire the lock");
    }

    /// Adds chunks `range` to the source bucket (and nothing to the database).
    /// New chunks as Pachyderm writes them: the objects uploaded, then their rows in
    /// `storage.chunk_objects` marked uploaded.
    pub async fn add_chunks(&self, range: std::ops::RangeInclusive<u64>) {
        seed_chunks(&self.source, range.clone()).await.expect("seed more chunks");
        self.pg
            .psql(
                "pachyderm",
                &format!(
                    "INSERT INTO storage.chunk_objects (chunk_id, gen, uploaded, tombstone, size) SELECT sha256(convert_to('chunk-' || i, 'UTF8')), i, true, false, 1024 FROM generate_series({}, {}) i",
                    range.start(),
                    range.end()
                ),
            )
            .expect("record the new chunks");
    }

    /// Chunks collected as Pachyderm's garbage collector does: tombstoned, the object
    /// deleted, the row deleted.
    pub async fn collect_chunks(&self, range: std::ops::RangeInclusive<u64>) {
        let rows = |verb: &str| {
            format!(
                "{verb} storage.chunk_objects WHERE chunk_id IN (SELECT sha256(convert_to('chunk-' || i, 'UTF8')) FROM generate_series({}, {}) i)",
                range.start(),
                range.end()
            )
        };
        self.pg.psql("pachyderm", &rows("UPDATE").replace("WHERE", "SET tombstone = true WHERE")).expect("tombstone");
        for i in range.clone() {
            object_store::ObjectStoreExt::delete(&*self.source, &pachyderm_backup::demo::chunk_key(i).as_str().into()).await.expect("delete the chunk");
        }
        self.pg.psql("pachyderm", &rows("DELETE FROM")).expect("delete the rows");
    }
}

/// The restore server (`RESTORE_PG*`) and bucket (`RESTORE_URL`) variables.
pub fn restore_env(pg: &TempPostgres, url: &str) -> Vec<(String, String)> {
    vec![
        ("RESTORE_PGHOST".into(), "127.0.0.1".into()),
        ("RESTORE_PGPORT".into(), pg.port.to_string()),
        ("RESTORE_PGUSER".into(), "postgres".into()),
        ("RESTORE_PGSSLMODE".into(), "disable".into()),
        ("RESTORE_URL".into(), url.into()),
    ]
}

/// Runs the binary with the bed's variables plus `extra`.
pub async fn run_with(bed: &Bed, extra: Vec<(String, String)>, args: &[&str]) -> Output {
    let mut env = bed.env();
    env.extend(extra);
    run_to_end(binary(args, &env)).await
}

/// The real binary with exactly `env` (the machine's own variables are not inherited,
/// so a stray AWS_* cannot change a test).
pub fn binary(args: &[&str], env: &[(String, String)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_pachyderm-backup"));
    cmd.args(args).env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default()).env("HOME", std::env::var_os("HOME").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    cmd
}

#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Every JSON log line.
    pub fn logs(&self) -> Vec<serde_json::Value> {
        self.stderr.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// stderr as a person reads it: each JSON line's message, split into its lines,
    /// and any other line as it is.
    pub fn said(&self) -> Vec<String> {
        self.stderr
            .lines()
            .flat_map(|l| match serde_json::from_str::<serde_json::Value>(l) {
                Ok(v) => v["message"].as_str().unwrap_or_default().lines().map(str::to_string).collect::<Vec<_>>(),
                Err(_) => vec![l.to_string()],
            })
            .collect()
    }

    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, Some(code), "exit code\n--- stdout\n{}\n--- stderr\n{}", self.stdout, self.stderr);
        self
    }
}

pub async fn run_to_end(mut cmd: tokio::process::Command) -> Output {
    let child = cmd.spawn().expect("spawn pachyderm-backup");
    let out = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .expect("pachyderm-backup did not finish within 5 minutes")
        .expect("wait");
    Output { code: out.status.code(), stdout: String::from_utf8_lossy(&out.stdout).into(), stderr: String::from_utf8_lossy(&out.stderr).into() }
}

/// A running binary, for signal tests.
pub struct Running {
    pub child: tokio::process::Child,
}

impl Running {
    pub fn start(mut cmd: tokio::process::Command) -> Running {
        Running { child: cmd.spawn().expect("spawn pachyderm-backup") }
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running");
        let status = std::process::Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().expect("kill");
        assert!(status.success());
    }

    pub async fn finish(self) -> Output {
        let out = tokio::time::timeout(Duration::from_secs(300), self.child.wait_with_output()).await.expect("finish in time").expect("wait");
        Output { code: out.status.code(), stdout: String::from_utf8_lossy(&out.stdout).into(), stderr: String::from_utf8_lossy(&out.stderr).into() }
    }
}

/// Polls `f` until it is true, for at most `limit` (a bound on a wait, not a timed
/// assertion: the condition is what is tested).
pub async fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "gave up waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Holds an ACCESS EXCLUSIVE lock on a fixture table, so that what reads it blocks:
/// pg_dump (after the resume) on a table taken before the run, or the paused capture's
/// read of the new chunks ([`Bed::start_held`]).
pub struct TableLock {
    conn: Option<sqlx::PgConnection>,
}

impl TableLock {
    /// The lock on `pachyderm`'s `pfs.commits`: pg_dump of `pachyderm` blocks.
    pub async fn take(pg: &TempPostgres) -> TableLock {
        TableLock::take_on(pg, "pachyderm", "pfs.commits").await
    }

    pub async fn take_on(pg: &TempPostgres, database: &str, table: &str) -> TableLock {
        use sqlx::{ConnectOptions, Executor};
        let mut conn = sqlx::postgres::PgConnectOptions::new_without_pgpass()
            .host("127.0.0.1")
            .port(pg.port)
            .username("postgres")
            .database(database)
            .connect()
            .await
            .expect("connect for the lock");
        let statement = format!("BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE");
        conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(statement))).await.expect("lock");
        TableLock { conn: Some(conn) }
    }

    /// The lock on `pachyderm`'s `storage.chunk_objects`, which the paused capture reads.
    pub async fn chunks(pg: &TempPostgres) -> TableLock {
        TableLock::take_on(pg, "pachyderm", "storage.chunk_objects").await
    }

    /// Runs `sql` in the lock's transaction, then commits it (and so releases the lock).
    pub async fn commit_with(mut self, sql: &str) {
        use sqlx::Executor;
        let mut c = self.conn.take().expect("a held lock");
        c.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(format!("{sql}; COMMIT")))).await.expect("write and commit");
    }

    pub async fn release(mut self) {
        use sqlx::Executor;
        if let Some(mut c) = self.conn.take() {
            let _ = c.execute("ROLLBACK").await;
        }
    }
}

/// Whether a session of pachyderm-backup (pg_dump, or the capture's psql) waits on a
/// lock in `pachyderm`.
pub fn dump_is_blocked(pg: &TempPostgres) -> bool {
    dump_blocked_in(pg, "pachyderm")
}

/// Whether a pg_dump session of pachyderm-backup waits on a lock in `database`.
pub fn dump_blocked_in(pg: &TempPostgres, database: &str) -> bool {
    pg.psql(
        "postgres",
        &format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{database}' AND wait_event_type = 'Lock' AND application_name = 'pachyderm-backup'"),
    )
    .map(|s| s.trim() != "0")
    .unwrap_or(false)
}

/// A listener that accepts connections, holds them and never answers (a server that
/// hangs), and how many it accepted.
pub fn hanging_port() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(conn);
        }
    });
    (port, accepted)
}

/// Row checksums of every table of `database`, by table.
pub fn table_checksums(pg: &TempPostgres, database: &str) -> Vec<String> {
    let tables = pg
        .psql(database, "SELECT schemaname || '.' || tablename FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1")
        .expect("list tables");
    tables
        .lines()
        .filter(|t| !t.is_empty())
        .map(|t| {
            let sum = pg
                .psql(database, &format!("SELECT count(*) || ':' || coalesce(md5(string_agg(x::text, '|' ORDER BY x::text)), '') FROM {t} x"))
                .expect("checksum");
            format!("{t} {}", sum.trim())
        })
        .collect()
}

/// Reads a whole object.
pub async fn read(store: &Arc<dyn ObjectStore>, key: &str) -> bytes::Bytes {
    store.get(&pachyderm_backup::catalog::recorded_path(key)).await.unwrap_or_else(|e| panic!("get {key}: {e}")).bytes().await.expect("body")
}

/// The keys of one JSON object, in order and with duplicates (serde_json's `Value`
/// keeps only the last of a duplicated key, which is how jq and Loki lose a field).
pub fn json_keys(line: &str) -> Option<Vec<String>> {
    struct Keys(Vec<String>);
    impl<'de> serde::Deserialize<'de> for Keys {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Visit;
            impl<'de> serde::de::Visitor<'de> for Visit {
                type Value = Keys;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
                    let mut keys = Vec::new();
                    while let Some((k, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                        keys.push(k);
                    }
                    Ok(Keys(keys))
                }
            }
            d.deserialize_map(Visit)
        }
    }
    serde_json::from_str::<Keys>(line).ok().map(|k| k.0)
}
