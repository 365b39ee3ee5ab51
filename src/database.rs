//! PostgreSQL: preflight with `sqlx`, and `pg_dump` / `pg_restore` streamed to and
//! from the bucket (no local disk, bounded memory).

use std::path::{Path as FsPath, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::{ConnectOptions, Connection, Row};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tracing::{info, warn};

use crate::catalog::DatabaseEntry;
use crate::config::PgServer;
use crate::objects::{self, ObjectsError};
use crate::progress::Progress;

#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    #[error("cannot connect to database {database} on {host}:{port}: {source}; check PGHOST/PGPORT/PGUSER/PGPASSWORD and that the server accepts this client")]
    Connect {
        database: String,
        host: String,
        port: u16,
        #[source]
        source: sqlx::Error,
    },
    #[error("query on database {database} failed: {source}")]
    Query {
        database: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("{tool} not found ({detail}); install PostgreSQL's client tools or set PG_BIN_DIR")]
    ToolMissing { tool: String, detail: String },
    #[error(
        "{tool} is version {tool_major}, older than the server's {server_major} (database {database}): it would refuse to dump; install a newer client or set PG_BIN_DIR"
    )]
    ToolTooOld { tool: String, tool_major: u32, server_major: u32, database: String },
    #[error("pg_dump of {database} failed ({status}): {stderr}")]
    DumpFailed { database: String, status: String, stderr: String },
    #[error("pg_restore into {database} failed ({status}): {stderr}")]
    RestoreFailed { database: String, status: String, stderr: String },
    #[error(
        "the dump of {database} read from the bucket has SHA-256 {read}, the manifest says {recorded}: the dump is damaged, so database {database} as restored cannot be trusted; drop it and restore another backup (`pachyderm-backup list`)"
    )]
    DumpDamaged { database: String, read: String, recorded: String },
    #[error("database {database} on the restore server is not empty ({tables} tables): pass --clean to replace its content")]
    NotEmpty { database: String, tables: i64 },
    #[error("running {tool}: {source}")]
    Io {
        tool: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Objects(#[from] ObjectsError),
}

/// What preflight learned about one database.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub database: String,
    pub version: String,
    pub major: u32,
}

/// The client tools, found once.
#[derive(Debug, Clone)]
pub struct Tools {
    pub pg_dump: PathBuf,
    pub pg_restore: PathBuf,
    pub version: String,
    pub major: u32,
}

fn find_tool(bin_dir: Option<&FsPath>, name: &str) -> Result<PathBuf, DatabaseError> {
    if let Some(dir) = bin_dir {
        let path = dir.join(name);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(DatabaseError::ToolMissing { tool: name.into(), detail: format!("{} does not exist", path.display()) })
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| DatabaseError::ToolMissing { tool: name.into(), detail: "not on PATH".into() })
}

/// Parses `pg_dump (PostgreSQL) 17.2 (Debian 17.2-1)` into its major version.
pub fn parse_tool_version(output: &str) -> Option<(u32, String)> {
    let version = output.split_whitespace().find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))?;
    let major = version.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()?;
    Some((major, version.to_string()))
}

impl Tools {
    pub async fn find(bin_dir: Option<&FsPath>) -> Result<Self, DatabaseError> {
        let pg_dump = find_tool(bin_dir, "pg_dump")?;
        let pg_restore = find_tool(bin_dir, "pg_restore")?;
        // kill_on_drop: a `pg_dump --version` that hangs is killed with the bounded
        // preflight that gave up on it.
        let out = Command::new(&pg_dump)
            .arg("--version")
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|source| DatabaseError::Io { tool: pg_dump.display().to_string(), source })?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (major, version) =
            parse_tool_version(&text).ok_or_else(|| DatabaseError::ToolMissing { tool: "pg_dump".into(), detail: format!("unreadable version {text:?}") })?;
        Ok(Tools { pg_dump, pg_restore, version, major })
    }
}

pub fn connect_options(server: &PgServer, database: &str) -> PgConnectOptions {
    let mut o = PgConnectOptions::new_without_pgpass().host(&server.host).port(server.port).database(database).application_name("pachyderm-backup");
    if let Some(u) = &server.user {
        o = o.username(u);
    }
    if let Some(p) = &server.password {
        o = o.password(p.expose());
    }
    let mode = match server.sslmode.as_str() {
        "disable" => PgSslMode::Disable,
        "allow" => PgSslMode::Allow,
        "require" => PgSslMode::Require,
        "verify-ca" => PgSslMode::VerifyCa,
        "verify-full" => PgSslMode::VerifyFull,
        _ => PgSslMode::Prefer,
    };
    o = o.ssl_mode(mode);
    if let Some(ca) = &server.sslrootcert {
        o = o.ssl_root_cert(ca.as_str());
    }
    o.disable_statement_logging()
}

pub async fn connect(server: &PgServer, database: &str) -> Result<sqlx::PgConnection, DatabaseError> {
    connect_options(server, database).connect().await.map_err(|source| DatabaseError::Connect {
        database: database.into(),
        host: server.host.clone(),
        port: server.port,
        source,
    })
}

/// Preflight: the database answers, and the tools are new enough for its server.
pub async fn preflight(server: &PgServer, database: &str, tools: &Tools) -> Result<ServerInfo, DatabaseError> {
    let mut conn = connect(server, database).await?;
    let row = sqlx::query("SELECT current_setting('server_version_num')::int AS num, current_setting('server_version') AS version")
        .fetch_one(&mut conn)
        .await
        .map_err(|source| DatabaseError::Query { database: database.into(), source })?;
    let num: i32 = row.try_get("num").map_err(|source| DatabaseError::Query { database: database.into(), source })?;
    let version: String = row.try_get("version").map_err(|source| DatabaseError::Query { database: database.into(), source })?;
    let _ = conn.close().await;
    let major = (num / 10000) as u32;
    if tools.major < major {
        return Err(DatabaseError::ToolTooOld { tool: "pg_dump".into(), tool_major: tools.major, server_major: major, database: database.into() });
    }
    Ok(ServerInfo { database: database.into(), version, major })
}

/// libpq's variables for a child process, from `server` only: inherited `PG*`
/// variables are removed so that a restore never talks to the backup's source.
fn libpq_env(cmd: &mut Command, server: &PgServer) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PG") {
            cmd.env_remove(&k);
        }
    }
    cmd.env("PGHOST", &server.host).env("PGPORT", server.port.to_string()).env("PGSSLMODE", &server.sslmode).env("PGAPPNAME", "pachyderm-backup");
    if let Some(u) = &server.user {
        cmd.env("PGUSER", u);
    }
    if let Some(p) = &server.password {
        cmd.env("PGPASSWORD", p.expose());
    }
    if let Some(ca) = &server.sslrootcert {
        cmd.env("PGSSLROOTCERT", ca);
    }
}

/// Keeps the last part of a child's stderr for the error message.
async fn tail_stderr(mut stderr: tokio::process::ChildStderr) -> String {
    let mut all = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                all.extend_from_slice(&buf[..n]);
                if all.len() > 64 * 1024 {
                    all.drain(..all.len() - 32 * 1024);
                }
            }
        }
    }
    String::from_utf8_lossy(&all).trim().to_string()
}

/// Streams `pg_dump -Fc` of one database into `path`, hashing on the way.
pub async fn dump(
    server: &PgServer,
    info: &ServerInfo,
    tools: &Tools,
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    file: String,
    progress: &Progress,
) -> Result<DatabaseEntry, DatabaseError> {
    let database = &info.database;
    let mut cmd = Command::new(&tools.pg_dump);
    libpq_env(&mut cmd, server);
    cmd.arg("--format=custom").arg("--no-password").arg(format!("--dbname={database}"));
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| DatabaseError::Io { tool: tools.pg_dump.display().to_string(), source })?;
    let stdout = child.stdout.take().ok_or_else(|| DatabaseError::Io { tool: "pg_dump".into(), source: std::io::Error::other("no stdout") })?;
    let stderr = child.stderr.take().ok_or_else(|| DatabaseError::Io { tool: "pg_dump".into(), source: std::io::Error::other("no stderr") })?;
    let stderr = tokio::spawn(tail_stderr(stderr));
    let uploaded = objects::upload(store, path, objects::read_chunks(stdout, format!("pg_dump of {database}")), &objects::Expect::default(), progress).await;
    if let Err(e) = uploaded {
        // pg_dump dies of SIGPIPE once nobody reads it: the upload is the cause.
        let _ = child.kill().await;
        return Err(e.into());
    }
    let status = child.wait().await.map_err(|source| DatabaseError::Io { tool: "pg_dump".into(), source })?;
    let stderr = stderr.await.unwrap_or_default();
    if !status.success() {
        // The upload completed with a truncated dump: never leave it behind.
        let _ = store.delete(path).await;
        return Err(DatabaseError::DumpFailed { database: database.clone(), status: status.to_string(), stderr });
    }
    let (sha256, size) = uploaded?;
    if !stderr.is_empty() {
        warn!(database = %database, stderr = %stderr, "pg_dump wrote warnings");
    }
    info!(database = %database, size, "database dumped");
    Ok(DatabaseEntry { name: database.clone(), file, size, sha256, server_version: info.version.clone(), pg_dump_version: tools.version.clone() })
}

/// Number of user tables in a database (0: empty, safe to restore into).
pub async fn table_count(conn: &mut sqlx::PgConnection, database: &str) -> Result<i64, DatabaseError> {
    sqlx::query_scalar("SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')")
        .fetch_one(conn)
        .await
        .map_err(|source| DatabaseError::Query { database: database.into(), source })
}

/// Creates `database` on `server` unless it exists; returns whether it existed.
pub async fn ensure_database(server: &PgServer, database: &str) -> Result<bool, DatabaseError> {
    let mut conn = connect(server, "postgres").await?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(database)
        .fetch_one(&mut conn)
        .await
        .map_err(|source| DatabaseError::Query { database: database.into(), source })?;
    if !exists {
        on_database(&mut conn, "CREATE DATABASE", database, "").await?;
    }
    let _ = conn.close().await;
    Ok(exists)
}

pub async fn drop_database(server: &PgServer, database: &str) -> Result<(), DatabaseError> {
    let mut conn = connect(server, "postgres").await?;
    on_database(&mut conn, "DROP DATABASE IF EXISTS", database, "WITH (FORCE)").await?;
    let _ = conn.close().await;
    Ok(())
}

/// `<verb> "<database>" <rest>`: identifiers cannot be bound parameters, so the name is
/// quoted as PostgreSQL quotes identifiers.
async fn on_database(conn: &mut sqlx::PgConnection, verb: &str, database: &str, rest: &str) -> Result<(), DatabaseError> {
    let quoted = format!("\"{}\"", database.replace('"', "\"\""));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("{verb} {quoted} {rest}")))
        .execute(conn)
        .await
        .map_err(|source| DatabaseError::Query { database: database.into(), source })?;
    Ok(())
}

/// `SET` lines that newer `pg_restore` emits for settings an older server lacks: the
/// restore succeeds without them, so their single failure is not a failed restore.
const TOLERATED_ERRORS: [&str; 2] = ["unrecognized configuration parameter \"transaction_timeout\"", "errors ignored on restore: 1"];

/// Whether `pg_restore`'s failure is only the newer-tool `SET` it emits for an older
/// server (`SET transaction_timeout` from tools 17+ into servers ≤ 16).
pub fn only_tolerated_errors(stderr: &str) -> bool {
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error") || l.contains("ERROR")).collect();
    let set_failures = errors.iter().filter(|l| l.contains(TOLERATED_ERRORS[0])).count();
    let counted = errors.iter().any(|l| l.contains(TOLERATED_ERRORS[1]));
    set_failures == 1
        && counted
        && errors.iter().all(|l| {
            TOLERATED_ERRORS.iter().any(|t| l.contains(t))
                || l.contains("while PROCESSING TOC")
                || l.contains("from TOC entry")
                || l.contains("Command was: SET transaction_timeout")
        })
}

/// Streams a dump from the bucket into `pg_restore`, checking its SHA-256 against the
/// manifest's on the way (`pg_restore -Fc` from a pipe cannot wait for the check, so a
/// damaged dump is reported as soon as its last byte is read).
pub async fn restore(
    server: &PgServer,
    database: &str,
    tools: &Tools,
    store: &Arc<dyn ObjectStore>,
    entry: &DatabaseEntry,
    path: &Path,
    clean: bool,
    progress: &Progress,
) -> Result<u64, DatabaseError> {
    use sha2::Digest;
    // No --exit-on-error and no --single-transaction: the one SET that an older server
    // refuses must not stop the restore; the error list is judged afterwards.
    let mut cmd = Command::new(&tools.pg_restore);
    libpq_env(&mut cmd, server);
    cmd.arg("--no-password").arg("--no-owner").arg("--no-privileges").arg(format!("--dbname={database}"));
    if clean {
        cmd.arg("--clean").arg("--if-exists");
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| DatabaseError::Io { tool: tools.pg_restore.display().to_string(), source })?;
    let mut stdin = child.stdin.take().ok_or_else(|| DatabaseError::Io { tool: "pg_restore".into(), source: std::io::Error::other("no stdin") })?;
    let stderr = child.stderr.take().ok_or_else(|| DatabaseError::Io { tool: "pg_restore".into(), source: std::io::Error::other("no stderr") })?;
    let stderr = tokio::spawn(tail_stderr(stderr));
    let body = store.get(path).await.map_err(|source| ObjectsError::Store { side: "target", what: format!("reading {path}"), source })?;
    let mut stream = body.into_stream();
    let mut written = 0u64;
    let mut read = 0u64;
    let mut hasher = sha2::Sha256::new();
    let mut feed_error = None;
    let mut pg_restore_stopped = false;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => {
                hasher.update(&bytes);
                read += bytes.len() as u64;
                if pg_restore_stopped {
                    continue; // read on, for the checksum
                }
                if stdin.write_all(&bytes).await.is_err() {
                    // pg_restore stopped reading: its exit status says why.
                    pg_restore_stopped = true;
                    continue;
                }
                written += bytes.len() as u64;
                progress.add_done(0, bytes.len() as u64);
            }
            Err(source) => {
                feed_error = Some(ObjectsError::Store { side: "target", what: format!("reading {path}"), source });
                break;
            }
        }
    }
    drop(stdin);
    let status = child.wait().await.map_err(|source| DatabaseError::Io { tool: "pg_restore".into(), source })?;
    let stderr = stderr.await.unwrap_or_default();
    if let Some(e) = feed_error {
        return Err(e.into());
    }
    let sha = hex::encode(hasher.finalize());
    if sha != entry.sha256 || read != entry.size {
        return Err(DatabaseError::DumpDamaged { database: database.into(), read: sha, recorded: entry.sha256.clone() });
    }
    if !status.success() && !only_tolerated_errors(&stderr) {
        return Err(DatabaseError::RestoreFailed { database: database.into(), status: status.to_string(), stderr });
    }
    if !status.success() {
        info!(database, "pg_restore reported only the transaction_timeout setting the older server does not know: restored");
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_versions_parse() {
        assert_eq!(parse_tool_version("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"), Some((15, "15.18".into())));
        assert_eq!(parse_tool_version("pg_dump (PostgreSQL) 17.11\n"), Some((17, "17.11".into())));
        assert_eq!(parse_tool_version("pg_dump (PostgreSQL) 9.6.24"), Some((9, "9.6.24".into())));
        assert_eq!(parse_tool_version("nonsense"), None);
    }

    #[test]
    fn only_the_transaction_timeout_set_is_tolerated() {
        let tolerated = "pg_restore: error: could not execute query: ERROR:  unrecognized configuration parameter \"transaction_timeout\"\nCommand was: SET transaction_timeout = 0;\npg_restore: warning: errors ignored on restore: 1\n";
        assert!(only_tolerated_errors(tolerated));
        let real = format!("{tolerated}pg_restore: error: could not execute query: ERROR:  relation \"x\" already exists\n");
        assert!(!only_tolerated_errors(&real));
        assert!(!only_tolerated_errors("pg_restore: error: connection to server failed"));
    }
}
