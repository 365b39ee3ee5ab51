//! The local demo cycle, and the throwaway parts it shares with the test harness: a
//! PostgreSQL server started on a free port in a temporary directory, the
//! Pachyderm-like fixture, and a bucket of Pachyderm-shaped chunk objects.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};

pub const PACHYDERM_FIXTURE: &str = include_str!("pachyderm.sql");
pub const DEX_FIXTURE: &str = include_str!("dex.sql");

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("PostgreSQL's server programs (initdb, pg_ctl) were not found: install them with `apt-get install -y postgresql` (or set PG_SERVER_BIN_DIR)")]
    NoServer,
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("demo bucket: {0}")]
    Store(#[from] object_store::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The newest installed server's `bin/` (Debian keeps each major under
/// /usr/lib/postgresql/N/bin), or `PG_SERVER_BIN_DIR`.
pub fn server_bin_dir() -> Result<PathBuf, DemoError> {
    if let Some(dir) = std::env::var_os("PG_SERVER_BIN_DIR") {
        let dir = PathBuf::from(dir);
        return if dir.join("initdb").is_file() { Ok(dir) } else { Err(DemoError::NoServer) };
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| DemoError::NoServer)?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").is_file())
        .collect();
    candidates.sort();
    candidates.pop().map(|(_, p)| p).ok_or(DemoError::NoServer)
}

/// Whether this process runs as root (server programs then run as `postgres`).
pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// Runs a server program, as the `postgres` user when we are root (initdb refuses root).
fn as_server_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.arg("-u").arg("postgres").arg("--").arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut cmd: Command, what: &str) -> Result<String, DemoError> {
    let out = cmd.output().map_err(|e| DemoError::Command { what: what.into(), detail: e.to_string() })?;
    if !out.status.success() {
        return Err(DemoError::Command {
            what: what.into(),
            detail: format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// A free TCP port on the loopback interface.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// A PostgreSQL server of its own, stopped and deleted on drop.
pub struct TempPostgres {
    pub port: u16,
    pub bin: PathBuf,
    dir: tempfile::TempDir,
    running: bool,
}

impl TempPostgres {
    pub fn start() -> Result<Self, DemoError> {
        Self::start_with(server_bin_dir()?)
    }

    pub fn start_with(bin: PathBuf) -> Result<Self, DemoError> {
        let dir = tempfile::Builder::new().prefix("pachyderm-backup-pg-").tempdir()?;
        if is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg("postgres:postgres").arg(dir.path());
                    c
                },
                "chown of the server directory to postgres",
            )?;
        }
        let data = dir.path().join("data");
        let mut initdb = as_server_user(&bin.join("initdb"));
        initdb.arg("-D").arg(&data).args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"]);
        run(initdb, "initdb")?;
        let mut pg = TempPostgres { port: 0, bin, dir, running: false };
        pg.start_server()?;
        Ok(pg)
    }

    fn start_server(&mut self) -> Result<(), DemoError> {
        // A port can be taken between choosing and binding: try a few.
        let mut last = None;
        for _ in 0..5 {
            let port = free_port();
            let mut ctl = as_server_user(&self.bin.join("pg_ctl"));
            ctl.arg("-D")
                .arg(self.dir.path().join("data"))
                .arg("-l")
                .arg(self.dir.path().join("server.log"))
                .args(["-w", "-t", "30", "-o"])
                .arg(format!("-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off -c max_connections=50", self.dir.path().display()))
                .arg("start");
            match run(ctl, "pg_ctl start") {
                Ok(_) => {
                    self.port = port;
                    self.running = true;
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(DemoError::NoServer))
    }

    /// Stops the server at once (a crash, for failure tests).
    pub fn stop(&mut self) -> Result<(), DemoError> {
        let mut ctl = as_server_user(&self.bin.join("pg_ctl"));
        ctl.arg("-D").arg(self.dir.path().join("data")).args(["-m", "immediate", "-w", "stop"]);
        run(ctl, "pg_ctl stop")?;
        self.running = false;
        Ok(())
    }

    /// `psql` against this server's `database`, stopping at the first error.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, DemoError> {
        let mut c = Command::new(self.bin.join("psql"));
        c.args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(self.port.to_string())
            .arg("-d")
            .arg(database)
            .arg("-c")
            .arg(sql);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("PG") {
                c.env_remove(k);
            }
        }
        run(c, &format!("psql on {database}"))
    }

    /// Creates `pachyderm` (with `chunks` live chunks) and `dex` from the fixtures.
    pub fn load_fixture(&self, chunks: usize) -> Result<(), DemoError> {
        self.psql("postgres", "CREATE DATABASE pachyderm")?;
        self.psql("postgres", "CREATE DATABASE dex")?;
        self.psql("pachyderm", &PACHYDERM_FIXTURE.replace("{{CHUNKS}}", &chunks.to_string()))?;
        self.psql("dex", DEX_FIXTURE)?;
        Ok(())
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        if self.running {
            let _ = self.stop();
        }
    }
}

/// The size of fixture chunk `i`, as the fixture SQL computes it: 1–64 KiB, with a
/// 9 MiB and a 20 MiB chunk in every 150.
pub fn chunk_size(i: u64) -> usize {
    match i % 150 {
        0 => 20 * 1024 * 1024,
        75 => 9 * 1024 * 1024,
        _ => 1024 * (1 + ((i * 7919) % 64) as usize),
    }
}

/// The bucket key of fixture chunk `i`, as Pachyderm names it.
pub fn chunk_key(i: u64) -> String {
    let id = Sha256::digest(format!("chunk-{i}").as_bytes());
    format!("chunk/{}.{:016x}", hex::encode(id), i)
}

/// Incompressible, deterministic content for chunk `i`.
pub fn chunk_content(i: u64, size: usize) -> Bytes {
    let mut state = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(size);
    Bytes::from(out)
}

/// Writes chunks `range` into `store`, eight at a time.
pub async fn seed_chunks(store: &Arc<dyn ObjectStore>, range: std::ops::RangeInclusive<u64>) -> Result<(), DemoError> {
    use futures::StreamExt;
    let results: Vec<Result<(), object_store::Error>> = futures::stream::iter(range.map(|i| {
        let store = store.clone();
        async move {
            let content = chunk_content(i, chunk_size(i));
            store.put(&object_store::path::Path::from(chunk_key(i)), PutPayload::from_bytes(content)).await.map(|_| ())
        }
    }))
    .buffer_unordered(8)
    .collect()
    .await;
    for r in results {
        r?;
    }
    Ok(())
}
