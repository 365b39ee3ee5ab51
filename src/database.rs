//! PostgreSQL: preflight, `pg_dump` / `pg_restore` streamed to and from the bucket (no
//! local disk, bounded memory), with the dumps encrypted with age on the way when
//! DUMP_RECIPIENTS is set.
//!
//! Every connection is libpq's, made by the client tools of one directory (PG_BIN_DIR)
//! with one environment ([`libpq_variables`]): the preflight and the restore's own
//! statements run `psql`, so what the preflight checks (TLS with its root and client
//! certificates, the password file, a service file, GSSAPI, target_session_attrs…) is
//! exactly what pg_dump and pg_restore will do.

use std::path::{Path as FsPath, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tracing::{info, warn};

use crate::catalog::{BackupFile, DatabaseEntry, DumpEncryption, Folder};
use crate::config::{DumpIdentity, PgServer, Scratch};
use crate::objects::{self, ObjectsError};
use crate::progress::Progress;

#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    #[error(
        "cannot connect to database {database} on {server}: {detail}; check {prefix}PGHOST/{prefix}PGPORT/{prefix}PGUSER/{prefix}PGPASSWORD, the TLS settings ({prefix}PGSSLMODE, {prefix}PGSSLROOTCERT, {prefix}PGSSLCERT, {prefix}PGSSLKEY) and that the server accepts this client"
    )]
    Connect { database: String, server: String, prefix: &'static str, detail: String },
    #[error("query on database {database} failed: {detail}")]
    Query { database: String, detail: String },
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
    #[error(
        "the dump of {database} read from the bucket has SHA-256 {read}, the manifest says {recorded}: the dump is damaged. It was checked whole before pg_restore ran: nothing was written to database {database}. Restore another backup (`pachyderm-backup list`)"
    )]
    DumpDamagedNothingWritten { database: String, read: String, recorded: String },
    #[error(
        "writing the dump of {database} to the scratch file {path} failed: {source}; give TMPDIR more room, or lower RESTORE_SCRATCH_LIMIT (RESTORE_JOBS=1 streams every dump into pg_restore)"
    )]
    Scratch {
        database: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the dump of {database} is encrypted with age to {}: set RESTORE_IDENTITY_FILE to an age identity file holding the secret key of one of them",
        .recipients.join(", ")
    )]
    IdentityMissing { database: String, recipients: Vec<String> },
    #[error(
        "the dump of {database} is encrypted to {} and the identity given (RESTORE_IDENTITY_FILE, the key of {}) matches none of them: give the identity file of one of those recipients",
        .recipients.join(", "),
        .given.join(", ")
    )]
    WrongIdentity { database: String, recipients: Vec<String>, given: Vec<String> },
    #[error("the dump of {database} is encrypted with {format:?}, which this version does not read: use a newer pachyderm-backup")]
    UnknownEncryption { database: String, format: String },
    #[error("decrypting the dump of {database} failed: {detail}")]
    DecryptFailed { database: String, detail: String },
    #[error("encrypting the dump of {database} failed: {detail}")]
    EncryptFailed { database: String, detail: String },
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

/// The client tools, found once, in one directory: one libpq for every connection.
#[derive(Debug, Clone)]
pub struct Tools {
    pub pg_dump: PathBuf,
    pub pg_restore: PathBuf,
    /// Runs the preflight and the restore's own statements.
    pub psql: PathBuf,
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
        // From pg_dump's own directory when found on PATH: the same libpq.
        let psql = match (bin_dir, pg_dump.parent()) {
            (None, Some(dir)) if dir.join("psql").is_file() => dir.join("psql"),
            _ => find_tool(bin_dir, "psql")?,
        };
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
        Ok(Tools { pg_dump, pg_restore, psql, version, major })
    }
}

/// Preflight: the database answers, through the libpq of pg_dump (psql from the same
/// directory, the same variables), and the tools are new enough for its server.
pub async fn preflight(server: &PgServer, database: &str, tools: &Tools) -> Result<ServerInfo, DatabaseError> {
    let out = psql(server, tools, database, "SELECT current_setting('server_version_num');\nSELECT current_setting('server_version');\n", &[]).await?;
    let mut lines = out.lines();
    let unreadable = || DatabaseError::Query { database: database.into(), detail: format!("unreadable server version {:?}", out.trim()) };
    let num: u32 = lines.next().and_then(|n| n.trim().parse().ok()).ok_or_else(unreadable)?;
    let version = lines.next().map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).ok_or_else(unreadable)?;
    let major = num / 10000;
    if tools.major < major {
        return Err(DatabaseError::ToolTooOld { tool: "pg_dump".into(), tool_major: tools.major, server_major: major, database: database.into() });
    }
    Ok(ServerInfo { database: database.into(), version, major })
}

/// Everything libpq reads for `server`, by libpq's names: the variables given for it
/// (`PG*`, or `RESTORE_PG*` without the prefix), and the program's defaults
/// (sslmode prefer, application_name pachyderm-backup).
pub fn libpq_variables(server: &PgServer) -> Vec<(String, String)> {
    let mut vars: std::collections::BTreeMap<String, String> = server.libpq.iter().map(|(k, v)| (k.clone(), v.expose().to_string())).collect();
    vars.entry("PGAPPNAME".into()).or_insert_with(|| "pachyderm-backup".into());
    if !server.host.is_empty() {
        vars.insert("PGHOST".into(), server.host.clone());
    }
    vars.insert("PGPORT".into(), server.port.to_string());
    vars.insert("PGSSLMODE".into(), server.sslmode.clone());
    let optional = [
        ("PGUSER", server.user.clone()),
        ("PGPASSWORD", server.password.as_ref().map(|p| p.expose().to_string())),
        ("PGSSLROOTCERT", server.sslrootcert.clone()),
        ("PGSSLCERT", server.sslcert.clone()),
        ("PGSSLKEY", server.sslkey.clone()),
    ];
    for (name, value) in optional {
        if let Some(v) = value {
            vars.insert(name.into(), v);
        }
    }
    vars.into_iter().collect()
}

/// libpq's environment for a child process, from `server` only: inherited `PG*`
/// variables are removed first, so that a restore never talks to the backup's source.
fn libpq_env(cmd: &mut Command, server: &PgServer) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PG") {
            cmd.env_remove(&k);
        }
    }
    for (k, v) in libpq_variables(server) {
        cmd.env(k, v);
    }
}

/// A database name as a libpq connection string (`dbname='…'`): a name is never read
/// as a connection string of its own (a manifest's `host=… dbname=…` would be).
pub fn conninfo_dbname(database: &str) -> String {
    format!("dbname='{}'", database.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// psql's arguments for one script on `database`: no psqlrc, never a password prompt,
/// unaligned tuples only, stopping at the first error.
fn psql_command(server: &PgServer, tools: &Tools, database: &str, vars: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(&tools.psql);
    libpq_env(&mut cmd, server);
    cmd.args(["--no-psqlrc", "--no-password", "--quiet", "--tuples-only", "--no-align", "--set=ON_ERROR_STOP=1"]);
    for (name, value) in vars {
        cmd.arg(format!("--set={name}={value}"));
    }
    cmd.arg(format!("--dbname={}", conninfo_dbname(database))).arg("--file=-");
    cmd.kill_on_drop(true);
    cmd
}

/// How psql failed: exit 2 is a connection that could not be made (or was lost).
fn psql_failed(server: &PgServer, database: &str, status: std::process::ExitStatus, stderr: &str) -> DatabaseError {
    let detail = if stderr.trim().is_empty() { format!("psql {status}") } else { stderr.trim().to_string() };
    match status.code() {
        Some(2) => DatabaseError::Connect { database: database.into(), server: server.describe(), prefix: server.prefix, detail },
        _ => DatabaseError::Query { database: database.into(), detail },
    }
}

/// Runs `sql` (a script read from standard input) with psql on `database`. Values go in
/// as psql variables (`vars`) that the script quotes itself, `:'name'` as a literal and
/// `:"name"` as an identifier: nothing is ever spliced into SQL here. Returns the output.
async fn psql(server: &PgServer, tools: &Tools, database: &str, sql: &str, vars: &[(&str, &str)]) -> Result<String, DatabaseError> {
    let mut cmd = psql_command(server, tools, database, vars);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| DatabaseError::Io { tool: tools.psql.display().to_string(), source })?;
    if let Some(mut stdin) = child.stdin.take() {
        // psql that could not connect reads nothing: its exit status says why.
        let _ = stdin.write_all(sql.as_bytes()).await;
    }
    let out = child.wait_with_output().await.map_err(|source| DatabaseError::Io { tool: "psql".into(), source })?;
    if !out.status.success() {
        return Err(psql_failed(server, database, out.status, &String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The rows of one single-column query, streamed (`COPY (…) TO STDOUT` through psql):
/// nothing is held but the line being read.
pub struct Rows {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    stderr: tokio::task::JoinHandle<String>,
    server: PgServer,
    database: String,
}

/// Streams the values of `select` (one column) on `database`.
pub async fn rows(server: &PgServer, tools: &Tools, database: &str, select: &str) -> Result<Rows, DatabaseError> {
    rows_at(server, tools, database, select, None).await
}

/// Streams the values of `select` (one column) on `database`, read at `snapshot` (one
/// exported by [`Snapshot::export`]) when given.
pub async fn rows_at(server: &PgServer, tools: &Tools, database: &str, select: &str, snapshot: Option<&str>) -> Result<Rows, DatabaseError> {
    let vars: Vec<(&str, &str)> = snapshot.map(|id| ("snapshot", id)).into_iter().collect();
    let script = match snapshot {
        Some(_) => format!("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;\nSET TRANSACTION SNAPSHOT :'snapshot';\nCOPY ({select}) TO STDOUT;\nCOMMIT;\n"),
        None => format!("COPY ({select}) TO STDOUT;\n"),
    };
    let mut cmd = psql_command(server, tools, database, &vars);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| DatabaseError::Io { tool: tools.psql.display().to_string(), source })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(script.as_bytes()).await;
    }
    let stdout = child.stdout.take().ok_or_else(|| DatabaseError::Io { tool: "psql".into(), source: std::io::Error::other("no stdout") })?;
    let stderr = child.stderr.take().ok_or_else(|| DatabaseError::Io { tool: "psql".into(), source: std::io::Error::other("no stderr") })?;
    Ok(Rows {
        child,
        lines: tokio::io::BufReader::new(stdout).lines(),
        stderr: tokio::spawn(tail_stderr(stderr)),
        server: server.clone(),
        database: database.into(),
    })
}

impl Rows {
    /// The next value; `None` once every row was read and psql ended well.
    pub async fn next(&mut self) -> Result<Option<String>, DatabaseError> {
        match self.lines.next_line().await {
            Ok(Some(line)) => Ok(Some(copy_text_value(&line))),
            Ok(None) => {
                let status = self.child.wait().await.map_err(|source| DatabaseError::Io { tool: "psql".into(), source })?;
                if status.success() {
                    return Ok(None);
                }
                let stderr = (&mut self.stderr).await.unwrap_or_default();
                Err(psql_failed(&self.server, &self.database, status, &stderr))
            }
            Err(source) => Err(DatabaseError::Io { tool: "psql".into(), source }),
        }
    }
}

/// Pachyderm's own record of its bucket: each live row of `storage.chunk_objects` is the
/// object `chunk/<hex chunk_id>.<gen as %016x>` (`chunk.chunkKey` under the `chunk/`
/// prefix `storage.New` gives its store), and nothing else of Pachyderm's lives in the
/// bucket (its start-up probe `test/<uuid>` is deleted at once). `ORDER BY chunk_id,
/// gen` is the keys' byte order (hex keeps bytea's order, `.` sorts before every hex
/// digit, the generation is fixed-width), so the primary key streams them unsorted.
/// With `after`, only the generations past it (see [`gen_floor`]).
pub fn live_chunks(after: Option<i64>) -> String {
    let after = after.map(|g| format!(" AND gen > {g}")).unwrap_or_default();
    format!(
        "SELECT 'chunk/' || encode(chunk_id, 'hex') || '.' || lpad(to_hex(gen), 16, '0') FROM storage.chunk_objects WHERE uploaded AND NOT tombstone{after} ORDER BY chunk_id, gen"
    )
}

/// The highest chunk generation whose object, if live, was in the bucket before now:
/// `gen` is a sequence, so every chunk uploaded from now on has a higher one, except
/// those already being uploaded (rows not yet `uploaded`), which the floor stays below.
/// Read before the pre-copy lists, it splits the live set into what the pre-copy may
/// hold and the few chunks the pause must copy. `None`: no table of the known shape.
pub async fn gen_floor(server: &PgServer, tools: &Tools, database: &str) -> Result<Option<i64>, DatabaseError> {
    let sql = format!(
        "SELECT ({CHUNK_COLUMNS}) = 4 AS known \\gset\n\\if :known\nSELECT 'floor ' || coalesce(least(max(gen), min(gen) FILTER (WHERE NOT uploaded AND NOT tombstone) - 1), 0) FROM storage.chunk_objects;\n\\endif\n"
    );
    let out = psql(server, tools, database, &sql, &[]).await?;
    Ok(out.lines().find_map(|l| l.strip_prefix("floor ")).and_then(|g| g.trim().parse().ok()))
}

/// The columns [`live_chunks`] reads, with their types: a table of another shape (another
/// Pachyderm version) is not read as an index.
const CHUNK_COLUMNS: &str = "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'storage' AND table_name = 'chunk_objects' AND ((column_name = 'chunk_id' AND data_type = 'bytea') OR (column_name = 'gen' AND data_type = 'bigint') OR (column_name IN ('uploaded', 'tombstone') AND data_type = 'boolean'))";

/// One instant of a database, held: `pg_export_snapshot()` in a read-only
/// repeatable-read transaction of a psql session that stays open until this is
/// dropped, so `pg_dump --snapshot` and the live-chunk query read the same instant.
pub struct Snapshot {
    pub id: String,
    /// `storage.chunk_objects` exists with the columns [`live_chunks`] reads.
    pub chunk_index: bool,
    // Closing psql's input ends the session (and the transaction); kill_on_drop ends it
    // too if psql does not read.
    _stdin: tokio::process::ChildStdin,
    _session: tokio::process::Child,
}

impl Snapshot {
    pub async fn export(server: &PgServer, tools: &Tools, database: &str) -> Result<Snapshot, DatabaseError> {
        let mut cmd = psql_command(server, tools, database, &[]);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| DatabaseError::Io { tool: tools.psql.display().to_string(), source })?;
        let missing = |what: &str| DatabaseError::Io { tool: "psql".into(), source: std::io::Error::other(format!("no {what}")) };
        let mut stdin = child.stdin.take().ok_or_else(|| missing("stdin"))?;
        let stdout = child.stdout.take().ok_or_else(|| missing("stdout"))?;
        let stderr = tokio::spawn(tail_stderr(child.stderr.take().ok_or_else(|| missing("stderr"))?));
        // psql prints each result as soon as it has it: the line arrives while the
        // transaction stays open behind it.
        // The session idles in its transaction until the listing after the resume
        // imports the snapshot: a server-wide idle timeout must not end it first.
        let script = format!(
            "SET idle_in_transaction_session_timeout = 0;\nBEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;\nSELECT pg_export_snapshot() || ' ' || ({CHUNK_COLUMNS});\n"
        );
        let _ = stdin.write_all(script.as_bytes()).await;
        let _ = stdin.flush().await;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = lines.next_line().await.map_err(|source| DatabaseError::Io { tool: "psql".into(), source })?;
        let Some((id, columns)) = line.as_deref().and_then(|l| l.trim().split_once(' ')) else {
            let status = child.wait().await.map_err(|source| DatabaseError::Io { tool: "psql".into(), source })?;
            let stderr = stderr.await.unwrap_or_default();
            return Err(psql_failed(server, database, status, &format!("exporting a snapshot: {stderr}")));
        };
        Ok(Snapshot { id: id.to_string(), chunk_index: columns == "4", _stdin: stdin, _session: child })
    }
}

/// One value of COPY's text format, its backslash escapes undone.
fn copy_text_value(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some('v') => out.push('\u{b}'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
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

/// The `format` of an age-encrypted dump in the manifest.
pub const AGE_FORMAT: &str = "age";

/// Where the encryptor writes: the ciphertext waits here until the upload takes it.
#[derive(Clone, Default)]
struct Ciphertext(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Ciphertext {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Ciphertext {
    fn take(&self) -> Bytes {
        Bytes::from(std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner())))
    }
}

/// Encrypts a stream with age to `recipients` as it flows: the header, then age's
/// STREAM (64 KiB chunks, each authenticated), so about one buffer is held at a time.
/// The stream fails if `plain` does; a stream that ends is a complete age file.
pub fn encrypt_stream(
    plain: impl Stream<Item = Result<Bytes, ObjectsError>> + Send + 'static,
    recipients: &[age::x25519::Recipient],
    what: String,
) -> Result<impl Stream<Item = Result<Bytes, ObjectsError>> + Send + 'static, age::EncryptError> {
    let encryptor = age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))?;
    let sink = Ciphertext::default();
    let writer = encryptor.wrap_output(sink.clone())?;
    let state = (plain.boxed(), Some(writer), sink, what);
    Ok(futures::stream::try_unfold(state, |(mut plain, mut writer, sink, what)| async move {
        use std::io::Write;
        let failed = |what: &String| {
            let what = what.clone();
            move |source| ObjectsError::Read { what, source }
        };
        loop {
            let Some(w) = writer.as_mut() else { return Ok(None) };
            match plain.try_next().await? {
                Some(chunk) => w.write_all(&chunk).map_err(failed(&what))?,
                // The last chunk, marked as such: a file cut short never decrypts.
                None => drop(writer.take().map(|w| w.finish()).transpose().map_err(failed(&what))?),
            }
            let out = sink.take();
            if !out.is_empty() {
                return Ok(Some((out, (plain, writer, sink, what))));
            }
        }
    }))
}

/// DUMP_COMPRESSION: how pg_dump compresses a dump (`--compress`). pg_dump's own default
/// (gzip level 6) spends most of a dump's time compressing: measured on a 287 MB table,
/// zstd:1 dumps as fast as no compression into a smaller file than gzip:6, and gzip:1
/// takes 0.4× gzip:6's time for 4 % more (docs/BENCHMARKS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpCompression {
    /// zstd:1 with a pg_dump that has zstd (16 and newer), gzip level 1 before.
    Auto,
    None,
    /// A level, or 0 for the method's default level.
    Gzip(u8),
    Lz4(u8),
    Zstd(u8),
}

impl DumpCompression {
    /// DUMP_COMPRESSION's value: `auto`, `none`, `0`-`9` (gzip levels, as pg_dump ≤ 15
    /// spells them), or `gzip`, `lz4`, `zstd`, each with an optional `:level`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim().to_ascii_lowercase();
        let (method, level) = match text.split_once(':') {
            Some((m, l)) => (m, Some(l)),
            None => (text.as_str(), None),
        };
        let level = |max: u8| match level {
            None => Ok(0),
            Some(l) => l.parse::<u8>().ok().filter(|n| (1..=max).contains(n)).ok_or_else(|| format!("level {l:?} of {method} is not 1-{max}")),
        };
        match method {
            "auto" if level(0).is_ok() => Ok(DumpCompression::Auto),
            "none" | "0" if level(0).is_ok() => Ok(DumpCompression::None),
            "gzip" => Ok(DumpCompression::Gzip(level(9)?)),
            "lz4" => Ok(DumpCompression::Lz4(level(12)?)),
            "zstd" => Ok(DumpCompression::Zstd(level(22)?)),
            digit if digit.len() == 1 && level(0).is_ok() && ("1"..="9").contains(&digit) => Ok(DumpCompression::Gzip(digit.parse().unwrap_or(6))),
            _ => Err(format!("{text:?} is not a compression")),
        }
    }

    /// pg_dump's `--compress` argument for pg_dump `major`, or why that pg_dump cannot.
    pub fn argument(self, major: u32) -> Result<String, String> {
        let methods = major >= 16;
        let with_level = |method: &str, level: u8| if level == 0 { method.to_string() } else { format!("{method}:{level}") };
        match self {
            DumpCompression::Auto if methods => Ok("zstd:1".into()),
            DumpCompression::Auto => Ok("1".into()),
            DumpCompression::None => Ok(if methods { "none" } else { "0" }.into()),
            DumpCompression::Gzip(level) if methods => Ok(with_level("gzip", level)),
            DumpCompression::Gzip(level) => Ok(if level == 0 { 6 } else { level }.to_string()),
            DumpCompression::Lz4(_) | DumpCompression::Zstd(_) if !methods => {
                Err(format!("pg_dump {major} compresses with gzip only: lz4 and zstd need pg_dump 16 or newer (PG_BIN_DIR)"))
            }
            DumpCompression::Lz4(level) => Ok(with_level("lz4", level)),
            DumpCompression::Zstd(level) => Ok(with_level("zstd", level)),
        }
    }
}

/// Streams `pg_dump -Fc` of one database into its file of `folder`, compressed with `compress` (pg_dump's `--compress`), hashing on the way, at `snapshot` when given. With
/// `recipients` (DUMP_RECIPIENTS) the dump is encrypted to them with age as it streams,
/// and stored as an age file; the size and SHA-256 recorded are of the stored
/// (encrypted) bytes.
#[allow(clippy::too_many_arguments)]
pub async fn dump(
    server: &PgServer,
    info: &ServerInfo,
    tools: &Tools,
    folder: &Folder,
    recipients: &[age::x25519::Recipient],
    compress: &str,
    snapshot: Option<&str>,
    progress: &Progress,
) -> Result<DatabaseEntry, DatabaseError> {
    let database = &info.database;
    let (file, encryption) = if recipients.is_empty() {
        warn!(
            database = %database,
            "DUMP_RECIPIENTS is unset: the dump of {database} is stored UNENCRYPTED in the backup bucket; the pachyderm database holds Pachyderm's chunk-encryption keys, so whoever can read the bucket can read all of Pachyderm's data. Set DUMP_RECIPIENTS to an age public key (age-keygen) to encrypt the dumps"
        );
        (BackupFile::Dump(database.clone()), None)
    } else {
        let encryption = DumpEncryption { format: AGE_FORMAT.into(), recipients: recipients.iter().map(|r| r.to_string()).collect() };
        (BackupFile::AgeDump(database.clone()), Some(encryption))
    };
    let (store, path) = (folder.store(), &folder.path(&file));
    let mut cmd = Command::new(&tools.pg_dump);
    libpq_env(&mut cmd, server);
    cmd.arg("--format=custom").arg(format!("--compress={compress}")).arg("--no-password").arg(format!("--dbname={}", conninfo_dbname(database)));
    if let Some(id) = snapshot {
        cmd.arg(format!("--snapshot={id}"));
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| DatabaseError::Io { tool: tools.pg_dump.display().to_string(), source })?;
    let stdout = child.stdout.take().ok_or_else(|| DatabaseError::Io { tool: "pg_dump".into(), source: std::io::Error::other("no stdout") })?;
    let stderr = child.stderr.take().ok_or_else(|| DatabaseError::Io { tool: "pg_dump".into(), source: std::io::Error::other("no stderr") })?;
    let stderr = tokio::spawn(tail_stderr(stderr));
    let what = format!("pg_dump of {database}");
    let plain = objects::read_chunks(stdout, what.clone());
    let body = match encryption {
        None => plain.boxed(),
        Some(_) => {
            encrypt_stream(plain, recipients, what).map_err(|e| DatabaseError::EncryptFailed { database: database.clone(), detail: e.to_string() })?.boxed()
        }
    };
    let uploaded = objects::upload(store, None, path, body, &objects::Expect::default(), progress).await;
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
    info!(database = %database, size, encrypted = encryption.is_some(), "database dumped");
    Ok(DatabaseEntry {
        name: database.clone(),
        file: file.name(),
        size,
        sha256,
        server_version: info.version.clone(),
        pg_dump_version: tools.version.clone(),
        compression: Some(compress.to_string()),
        encryption,
    })
}

/// Number of user tables in `database` (0: empty, safe to restore into), or `None`
/// when the database does not exist. An unreachable server fails here, clearly.
pub async fn table_count(server: &PgServer, tools: &Tools, database: &str) -> Result<Option<i64>, DatabaseError> {
    if !exists(server, tools, database).await? {
        return Ok(None);
    }
    let out =
        psql(server, tools, database, "SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema');\n", &[]).await?;
    let tables =
        out.trim().parse().map_err(|_| DatabaseError::Query { database: database.into(), detail: format!("unreadable table count {:?}", out.trim()) })?;
    Ok(Some(tables))
}

/// Whether `database` exists on `server` (asked of its `postgres` database).
async fn exists(server: &PgServer, tools: &Tools, database: &str) -> Result<bool, DatabaseError> {
    let out = psql(server, tools, "postgres", "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db');\n", &[("db", database)]).await?;
    Ok(out.trim() == "t")
}

/// Creates `database` on `server` unless it exists; returns whether it existed.
pub async fn ensure_database(server: &PgServer, tools: &Tools, database: &str) -> Result<bool, DatabaseError> {
    let existed = exists(server, tools, database).await?;
    if !existed {
        psql(server, tools, "postgres", "CREATE DATABASE :\"db\";\n", &[("db", database)]).await?;
    }
    Ok(existed)
}

pub async fn drop_database(server: &PgServer, tools: &Tools, database: &str) -> Result<(), DatabaseError> {
    psql(server, tools, "postgres", "DROP DATABASE IF EXISTS :\"db\" WITH (FORCE);\n", &[("db", database)]).await?;
    Ok(())
}

/// `SET` lines that newer `pg_restore` emits for settings an older server lacks: the
/// restore succeeds without them, so their failure (once per connection: each
/// `--jobs` worker has its own) is not a failed restore.
const TOLERATED_ERRORS: [&str; 2] = ["unrecognized configuration parameter \"transaction_timeout\"", "errors ignored on restore: "];

/// Whether `pg_restore`'s failure is only the newer-tool `SET` it emits for an older
/// server (`SET transaction_timeout` from tools 17+ into servers ≤ 16).
pub fn only_tolerated_errors(stderr: &str) -> bool {
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error") || l.contains("ERROR")).collect();
    let set_failures = errors.iter().filter(|l| l.contains(TOLERATED_ERRORS[0])).count();
    let counted = errors.iter().any(|l| l.contains(TOLERATED_ERRORS[1]));
    set_failures >= 1
        && counted
        && errors.iter().all(|l| {
            TOLERATED_ERRORS.iter().any(|t| l.contains(t))
                || l.contains("while PROCESSING TOC")
                || l.contains("from TOC entry")
                || l.contains("Command was: SET transaction_timeout")
        })
}

/// The identities a dump needs: None for a dump stored in plaintext. Checked against the
/// manifest alone (no I/O): a dump encrypted to none of the identity's keys is refused
/// before anything starts.
pub fn identities_for<'a>(
    database: &str,
    entry: &DatabaseEntry,
    identity: Option<&'a DumpIdentity>,
) -> Result<Option<&'a [age::x25519::Identity]>, DatabaseError> {
    let Some(encryption) = &entry.encryption else { return Ok(None) };
    if encryption.format != AGE_FORMAT {
        return Err(DatabaseError::UnknownEncryption { database: database.into(), format: encryption.format.clone() });
    }
    let Some(identity) = identity else {
        return Err(DatabaseError::IdentityMissing { database: database.into(), recipients: encryption.recipients.clone() });
    };
    let given = identity.recipients();
    if !given.iter().any(|g| encryption.recipients.contains(g)) {
        return Err(DatabaseError::WrongIdentity { database: database.into(), recipients: encryption.recipients.clone(), given });
    }
    Ok(Some(&identity.identities))
}

/// What went wrong opening an age file: the identity, or the file.
fn decrypt_error(database: &str, entry: &DatabaseEntry, identity: Option<&DumpIdentity>, e: age::DecryptError) -> DatabaseError {
    match e {
        age::DecryptError::NoMatchingKeys => DatabaseError::WrongIdentity {
            database: database.into(),
            recipients: entry.encryption.as_ref().map(|e| e.recipients.clone()).unwrap_or_default(),
            given: identity.map(DumpIdentity::recipients).unwrap_or_default(),
        },
        e => DatabaseError::DecryptFailed { database: database.into(), detail: e.to_string() },
    }
}

/// Checks, before anything is written, that an encrypted dump opens with `identity`:
/// its header (a few hundred bytes) is read from the bucket and its file key unwrapped.
/// A dump stored in plaintext needs nothing.
pub async fn check_decryptable(folder: &Folder, database: &str, entry: &DatabaseEntry, identity: Option<&DumpIdentity>) -> Result<(), DatabaseError> {
    let Some(identities) = identities_for(database, entry, identity)? else { return Ok(()) };
    let path = &folder.recorded(&entry.file);
    // The header and nonce: about 100 bytes a recipient.
    let head = folder.store().get_range(path, 0..entry.size.min(1024 * 1024)).await.map_err(|source| ObjectsError::Store {
        side: "target",
        what: format!("reading {path}"),
        source,
    })?;
    let decryptor = age::Decryptor::new_buffered(&head[..]).map_err(|e| decrypt_error(database, entry, identity, e))?;
    decryptor.decrypt(identities.iter().map(|i| i as &dyn age::Identity)).map_err(|e| decrypt_error(database, entry, identity, e))?;
    Ok(())
}

/// Why feeding `pg_restore` stopped early.
enum FeedError {
    Open(age::DecryptError),
    Decrypt(std::io::Error),
    /// The writer refused a write: pg_restore stopped reading, or the scratch file is full.
    Write {
        written: u64,
        source: std::io::Error,
    },
}

/// Feeds `pg_restore`'s stdin from the bytes read from the bucket, decrypting them with
/// `identities` when given. Returns the bytes written; stops early (dropping `stored`,
/// so the reader reads on only to hash) when pg_restore stops reading or a decryption
/// fails.
async fn feed_pg_restore(
    stored: futures::channel::mpsc::Receiver<std::io::Result<Bytes>>,
    mut stdin: impl tokio::io::AsyncWrite + Unpin,
    identities: Option<&[age::x25519::Identity]>,
    progress: &Progress,
) -> Result<u64, FeedError> {
    use futures::AsyncReadExt as _;
    let stored = stored.into_async_read();
    let mut plain: std::pin::Pin<Box<dyn futures::AsyncRead + Send + '_>> = match identities {
        None => Box::pin(stored),
        Some(identities) => {
            let decryptor = age::Decryptor::new_async_buffered(stored).await.map_err(FeedError::Open)?;
            Box::pin(decryptor.decrypt_async(identities.iter().map(|i| i as &dyn age::Identity)).map_err(FeedError::Open)?)
        }
    };
    let mut buf = vec![0u8; 256 * 1024];
    let mut written = 0u64;
    loop {
        let n = plain.read(&mut buf).await.map_err(FeedError::Decrypt)?;
        if n == 0 {
            break;
        }
        if let Err(source) = stdin.write_all(&buf[..n]).await {
            return Err(FeedError::Write { written, source });
        }
        written += n as u64;
        progress.add_done(0, n as u64);
    }
    stdin.flush().await.map_err(|source| FeedError::Write { written, source })?;
    Ok(written)
}

/// Reads a dump from the bucket, hashing every stored byte, and feeds it (decrypted
/// when `identities` are given) into `into`. Returns the stored bytes' SHA-256 and
/// length, and what the feed wrote; once the feeder has stopped, the reader reads on
/// for the checksum.
async fn fetch_dump(
    folder: &Folder,
    entry: &DatabaseEntry,
    into: impl tokio::io::AsyncWrite + Unpin,
    identities: Option<&[age::x25519::Identity]>,
    progress: &Progress,
) -> (Result<(String, u64), ObjectsError>, Result<u64, FeedError>) {
    use sha2::Digest;
    let path = &folder.recorded(&entry.file);
    let body = match folder.store().get(path).await {
        Ok(body) => body,
        Err(source) => return (Err(ObjectsError::Store { side: "target", what: format!("reading {path}"), source }), Ok(0)),
    };
    let (tx, rx) = futures::channel::mpsc::channel::<std::io::Result<Bytes>>(4);
    let read = async move {
        let mut stream = body.into_stream();
        let mut tx = Some(tx);
        let mut hasher = sha2::Sha256::new();
        let mut read = 0u64;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => {
                    hasher.update(&bytes);
                    read += bytes.len() as u64;
                    if let Some(t) = tx.as_mut()
                        && futures::SinkExt::send(t, Ok(bytes)).await.is_err()
                    {
                        tx = None; // the feeder has stopped: read on for the checksum
                    }
                }
                Err(source) => return Err(ObjectsError::Store { side: "target", what: format!("reading {path}"), source }),
            }
        }
        Ok((hex::encode(hasher.finalize()), read))
    };
    tokio::join!(read, feed_pg_restore(rx, into, identities, progress))
}

/// A fetch judged: the stored bytes against the manifest first (`checked_whole`: before
/// pg_restore ran), then the decryption. A refused write is the caller's to judge:
/// `Err((written, error))` inside.
#[allow(clippy::type_complexity)]
fn fetched(
    database: &str,
    entry: &DatabaseEntry,
    identity: Option<&DumpIdentity>,
    read: Result<(String, u64), ObjectsError>,
    fed: Result<u64, FeedError>,
    checked_whole: bool,
) -> Result<Result<u64, (u64, std::io::Error)>, DatabaseError> {
    let (sha, read) = read?;
    if sha != entry.sha256 || read != entry.size {
        let (database, recorded) = (database.to_string(), entry.sha256.clone());
        return Err(if checked_whole {
            DatabaseError::DumpDamagedNothingWritten { database, read: sha, recorded }
        } else {
            DatabaseError::DumpDamaged { database, read: sha, recorded }
        });
    }
    match fed {
        Ok(written) => Ok(Ok(written)),
        Err(FeedError::Open(e)) => Err(decrypt_error(database, entry, identity, e)),
        Err(FeedError::Decrypt(e)) => Err(DatabaseError::DecryptFailed { database: database.into(), detail: e.to_string() }),
        Err(FeedError::Write { written, source }) => Ok(Err((written, source))),
    }
}

/// The common arguments of every pg_restore of ours.
fn pg_restore_command(tools: &Tools, server: &PgServer, database: &str, clean: bool) -> Command {
    let mut cmd = Command::new(&tools.pg_restore);
    libpq_env(&mut cmd, server);
    // No --exit-on-error and no --single-transaction: the one SET that an older server
    // refuses must not stop the restore; the error list is judged afterwards.
    cmd.arg("--no-password").arg("--no-owner").arg("--no-privileges").arg(format!("--dbname={}", conninfo_dbname(database)));
    if clean {
        cmd.arg("--clean").arg("--if-exists");
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::piped()).kill_on_drop(true);
    cmd
}

/// pg_restore's outcome: a failure unless its only errors are the tolerated ones.
fn judge_pg_restore(database: &str, status: std::process::ExitStatus, stderr: String) -> Result<(), DatabaseError> {
    if !status.success() && !only_tolerated_errors(&stderr) {
        return Err(DatabaseError::RestoreFailed { database: database.into(), status: status.to_string(), stderr });
    }
    if !status.success() {
        info!(database, "pg_restore reported only the transaction_timeout setting the older server does not know: restored");
    }
    Ok(())
}

/// A dump of at most RESTORE_SCRATCH_LIMIT: downloaded (and decrypted) to a scratch
/// file, its SHA-256 checked whole, and only then restored, by `jobs` parallel
/// pg_restore workers (`-j` needs a file: it reads the dump's table of contents first
/// and seeks). A damaged dump writes nothing to the database.
#[allow(clippy::too_many_arguments)]
async fn restore_from_scratch(
    server: &PgServer,
    database: &str,
    tools: &Tools,
    folder: &Folder,
    entry: &DatabaseEntry,
    identity: Option<&DumpIdentity>,
    identities: Option<&[age::x25519::Identity]>,
    clean: bool,
    jobs: u32,
    progress: &Progress,
) -> Result<u64, DatabaseError> {
    let dir = std::env::temp_dir();
    let scratch_err = |path: &FsPath| {
        let (database, path) = (database.to_string(), path.display().to_string());
        move |source| DatabaseError::Scratch { database, path, source }
    };
    let file = tempfile::Builder::new().prefix("pachyderm-backup-dump-").tempfile_in(&dir).map_err(scratch_err(&dir))?;
    let writer = tokio::fs::File::from_std(file.reopen().map_err(scratch_err(file.path()))?);
    let (read, fed) = fetch_dump(folder, entry, writer, identities, progress).await;
    let written = match fetched(database, entry, identity, read, fed, true)? {
        Ok(written) => written,
        Err((_, source)) => return Err(scratch_err(file.path())(source)),
    };
    let mut cmd = pg_restore_command(tools, server, database, clean);
    cmd.arg(format!("--jobs={jobs}")).arg(file.path()).stdin(Stdio::null());
    let mut child = cmd.spawn().map_err(|source| DatabaseError::Io { tool: tools.pg_restore.display().to_string(), source })?;
    let stderr = child.stderr.take().ok_or_else(|| DatabaseError::Io { tool: "pg_restore".into(), source: std::io::Error::other("no stderr") })?;
    let stderr = tokio::spawn(tail_stderr(stderr));
    let status = child.wait().await.map_err(|source| DatabaseError::Io { tool: "pg_restore".into(), source })?;
    judge_pg_restore(database, status, stderr.await.unwrap_or_default())?;
    info!(database, jobs, bytes = written, "database restored from a scratch file, checked whole first, by parallel pg_restore jobs");
    Ok(written)
}

/// Restores a dump from the bucket into `database`. One of at most
/// RESTORE_SCRATCH_LIMIT goes through a scratch file, checked whole first, then
/// restored by RESTORE_JOBS parallel jobs ([`restore_from_scratch`]). A larger one
/// streams into `pg_restore`, its SHA-256 checked on the way (`pg_restore -Fc` from a
/// pipe cannot wait for the check, so a damaged dump is reported as soon as its last
/// byte is read). An encrypted dump is decrypted with `identity` between the two: the
/// checksum is of the stored bytes, and age authenticates every 64 KiB of the
/// plaintext besides.
#[allow(clippy::too_many_arguments)]
pub async fn restore(
    server: &PgServer,
    database: &str,
    tools: &Tools,
    folder: &Folder,
    entry: &DatabaseEntry,
    identity: Option<&DumpIdentity>,
    clean: bool,
    scratch: Scratch,
    progress: &Progress,
) -> Result<u64, DatabaseError> {
    let identities = identities_for(database, entry, identity)?;
    if scratch.takes(entry.size) {
        return restore_from_scratch(server, database, tools, folder, entry, identity, identities, clean, scratch.jobs, progress).await;
    }
    let mut cmd = pg_restore_command(tools, server, database, clean);
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| DatabaseError::Io { tool: tools.pg_restore.display().to_string(), source })?;
    let stdin = child.stdin.take().ok_or_else(|| DatabaseError::Io { tool: "pg_restore".into(), source: std::io::Error::other("no stdin") })?;
    let stderr = child.stderr.take().ok_or_else(|| DatabaseError::Io { tool: "pg_restore".into(), source: std::io::Error::other("no stderr") })?;
    let stderr = tokio::spawn(tail_stderr(stderr));
    let (read, fed) = fetch_dump(folder, entry, stdin, identities, progress).await;
    let status = child.wait().await.map_err(|source| DatabaseError::Io { tool: "pg_restore".into(), source })?;
    let stderr = stderr.await.unwrap_or_default();
    // A refused write is pg_restore having stopped reading: its exit status says why.
    let written = fetched(database, entry, identity, read, fed, false)?.unwrap_or_else(|(written, _)| written);
    judge_pg_restore(database, status, stderr)?;
    Ok(written)
}

#[cfg(test)]
mod tests {

    #[test]
    fn dump_compression_reads_as_pg_dump_takes_it() {
        let cases: &[(&str, u32, Result<&str, &str>)] = &[
            ("auto", 17, Ok("zstd:1")),
            ("auto", 15, Ok("1")),
            ("none", 17, Ok("none")),
            ("0", 14, Ok("0")),
            ("gzip", 17, Ok("gzip")),
            ("gzip", 15, Ok("6")),
            ("gzip:1", 15, Ok("1")),
            ("GZIP:9", 17, Ok("gzip:9")),
            ("5", 17, Ok("gzip:5")),
            ("zstd", 16, Ok("zstd")),
            ("zstd:3", 17, Ok("zstd:3")),
            ("lz4:1", 17, Ok("lz4:1")),
            ("zstd:1", 15, Err("pg_dump 15 compresses with gzip only")),
            ("lz4", 14, Err("need pg_dump 16")),
        ];
        for (text, major, want) in cases {
            let got = DumpCompression::parse(text).and_then(|c| c.argument(*major));
            match want {
                Ok(arg) => assert_eq!(got.as_deref(), Ok(*arg), "{text} with pg_dump {major}"),
                Err(part) => assert!(got.as_ref().is_err_and(|e| e.contains(part)), "{text} with pg_dump {major}: {got:?}"),
            }
        }
        for bad in ["brotli", "zstd:0", "zstd:23", "gzip:10", "lz4:x", "10", "auto:1", "none:3", ""] {
            assert!(DumpCompression::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
    use super::*;

    #[test]
    fn tool_versions_parse() {
        assert_eq!(parse_tool_version("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"), Some((15, "15.18".into())));
        assert_eq!(parse_tool_version("pg_dump (PostgreSQL) 17.11\n"), Some((17, "17.11".into())));
        assert_eq!(parse_tool_version("pg_dump (PostgreSQL) 9.6.24"), Some((9, "9.6.24".into())));
        assert_eq!(parse_tool_version("nonsense"), None);
    }

    fn server(prefix: &'static str) -> PgServer {
        PgServer {
            prefix,
            host: "db".into(),
            port: 5433,
            user: Some("backup".into()),
            password: Some(crate::config::Secret::new("pw")),
            sslmode: "verify-full".into(),
            sslrootcert: Some("/tls/ca.crt".into()),
            sslcert: Some("/tls/tls.crt".into()),
            sslkey: Some("/tls/tls.key".into()),
            libpq: [("PGSSLCRL", "/tls/crl.pem"), ("PGCONNECT_TIMEOUT", "5")].iter().map(|(k, v)| (k.to_string(), crate::config::Secret::new(*v))).collect(),
        }
    }

    #[test]
    fn every_libpq_variable_of_the_server_reaches_its_clients() {
        let vars = libpq_variables(&server(""));
        let names: Vec<&str> = vars.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            ["PGAPPNAME", "PGCONNECT_TIMEOUT", "PGHOST", "PGPASSWORD", "PGPORT", "PGSSLCERT", "PGSSLCRL", "PGSSLKEY", "PGSSLMODE", "PGSSLROOTCERT", "PGUSER"]
        );
        let get = |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        assert_eq!((get("PGAPPNAME"), get("PGPORT"), get("PGSSLKEY")), (Some("pachyderm-backup"), Some("5433"), Some("/tls/tls.key")));
        // The user's PGAPPNAME wins; a service without a host sets no PGHOST.
        let mut s = server("RESTORE_");
        s.host = String::new();
        s.libpq.insert("PGAPPNAME".into(), crate::config::Secret::new("nightly-backup"));
        s.libpq.insert("PGSERVICE".into(), crate::config::Secret::new("scratch"));
        let vars = libpq_variables(&s);
        assert!(vars.contains(&("PGAPPNAME".into(), "nightly-backup".into())) && vars.contains(&("PGSERVICE".into(), "scratch".into())));
        assert!(!vars.iter().any(|(k, _)| k == "PGHOST" || k.starts_with("RESTORE_")), "libpq's names only: {vars:?}");
        assert_eq!(s.describe(), "service scratch");
        let e = DatabaseError::Connect { database: "pachyderm".into(), server: s.describe(), prefix: s.prefix, detail: "refused".into() };
        assert!(e.to_string().contains("RESTORE_PGSSLCERT"), "{e}");
    }

    #[test]
    fn names_and_copy_values_are_quoted_and_unquoted() {
        assert_eq!(conninfo_dbname("pachyderm"), "dbname='pachyderm'");
        assert_eq!(conninfo_dbname("host=evil dbname='x'"), "dbname='host=evil dbname=\\'x\\''");
        assert_eq!(conninfo_dbname("a\\b"), "dbname='a\\\\b'");
        assert_eq!(copy_text_value("chunk/ab.0001"), "chunk/ab.0001");
        assert_eq!(copy_text_value("a\\tb\\\\c\\n"), "a\tb\\c\n");
    }

    #[test]
    fn only_the_transaction_timeout_set_is_tolerated() {
        let tolerated = "pg_restore: error: could not execute query: ERROR:  unrecognized configuration parameter \"transaction_timeout\"\nCommand was: SET transaction_timeout = 0;\npg_restore: warning: errors ignored on restore: 1\n";
        assert!(only_tolerated_errors(tolerated));
        let real = format!("{tolerated}pg_restore: error: could not execute query: ERROR:  relation \"x\" already exists\n");
        assert!(!only_tolerated_errors(&real));
        assert!(!only_tolerated_errors("pg_restore: error: connection to server failed"));
        // pg_restore --jobs: one failed SET per worker connection, as tools 17 print it.
        let set = "pg_restore: error: could not execute query: ERROR:  unrecognized configuration parameter \"transaction_timeout\"\nCommand was: SET transaction_timeout = 0;\n";
        let jobs = format!("{}pg_restore: warning: errors ignored on restore: 2\n", set.repeat(6));
        assert!(only_tolerated_errors(&jobs));
        assert!(!only_tolerated_errors(set), "no count line: pg_restore did not finish");
    }

    fn decrypt(stored: &[u8], identity: &age::x25519::Identity) -> std::io::Result<Vec<u8>> {
        use std::io::Read;
        let mut plain = Vec::new();
        let decryptor = age::Decryptor::new(stored).map_err(std::io::Error::other)?;
        decryptor.decrypt(std::iter::once(identity as &dyn age::Identity)).map_err(std::io::Error::other)?.read_to_end(&mut plain)?;
        Ok(plain)
    }

    #[tokio::test]
    async fn dumps_are_encrypted_as_they_stream() {
        let (ours, theirs, stranger) = (age::x25519::Identity::generate(), age::x25519::Identity::generate(), age::x25519::Identity::generate());
        let recipients = [ours.to_public(), theirs.to_public()];
        // Several of age's 64 KiB chunks and a partial last one, arriving unevenly.
        let plain: Vec<u8> = (0..3 * 1024 * 1024 + 12_345u32).map(|i| (i * 7 % 251) as u8).collect();
        let chunks: Vec<Result<Bytes, ObjectsError>> = plain.chunks(700_001).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let pieces: Vec<Bytes> =
            encrypt_stream(futures::stream::iter(chunks), &recipients, "test".into()).expect("encryptor").try_collect().await.expect("encrypted");
        assert!(
            pieces.len() >= 5 && pieces.iter().all(|p| p.len() < 1024 * 1024),
            "the ciphertext flows out as the plaintext comes in: {} pieces",
            pieces.len()
        );
        let stored = pieces.concat();
        assert!(stored.starts_with(b"age-encryption.org/v1\n"));
        assert_eq!(decrypt(&stored, &ours).expect("ours opens it"), plain);
        assert_eq!(decrypt(&stored, &theirs).expect("theirs too"), plain);
        let refused = age::Decryptor::new(&stored[..]).expect("header").decrypt(std::iter::once(&stranger as &dyn age::Identity)).err();
        assert!(matches!(refused, Some(age::DecryptError::NoMatchingKeys)));
        let cut = decrypt(&stored[..stored.len() - 100], &ours).expect_err("a file cut short never decrypts");
        assert!(!cut.to_string().is_empty() && !age::DecryptError::InvalidMac.to_string().is_empty(), "age's messages are readable");
        // An empty dump is a valid (empty) age file; a failed read fails the stream.
        let empty: Vec<Bytes> = encrypt_stream(futures::stream::empty(), &recipients, "t".into()).expect("encryptor").try_collect().await.expect("empty");
        assert_eq!(decrypt(&empty.concat(), &ours).expect("opens"), Vec::<u8>::new());
        let broken =
            futures::stream::iter([Ok(Bytes::from_static(b"PGDMP")), Err(ObjectsError::Read { what: "t".into(), source: std::io::Error::other("cut") })]);
        let result: Result<Vec<Bytes>, _> = encrypt_stream(broken, &recipients, "t".into()).expect("encryptor").try_collect().await;
        assert!(result.is_err());
    }

    #[test]
    fn the_identity_is_checked_against_the_manifest() {
        let ours = age::x25519::Identity::generate();
        let identity = |i: &age::x25519::Identity| DumpIdentity { file: "key.txt".into(), identities: vec![i.clone()] };
        let entry = |encryption: Option<DumpEncryption>| DatabaseEntry {
            name: "pachyderm".into(),
            file: "databases/pachyderm.pgdump.age".into(),
            size: 1,
            sha256: "00".into(),
            server_version: "17".into(),
            pg_dump_version: "17".into(),
            compression: Some("zstd:1".into()),
            encryption,
        };
        let age_to = |r: &age::x25519::Identity| Some(DumpEncryption { format: AGE_FORMAT.into(), recipients: vec![r.to_public().to_string()] });
        assert!(identities_for("pachyderm", &entry(None), None).expect("plaintext").is_none());
        assert!(identities_for("pachyderm", &entry(age_to(&ours)), Some(&identity(&ours))).expect("ours").is_some());
        let e = identities_for("pachyderm", &entry(age_to(&ours)), None).err().expect("refused");
        assert!(matches!(e, DatabaseError::IdentityMissing { .. }) && e.to_string().contains("RESTORE_IDENTITY_FILE"), "{e}");
        let other = age::x25519::Identity::generate();
        let e = identities_for("pachyderm", &entry(age_to(&ours)), Some(&identity(&other))).err().expect("refused");
        let text = e.to_string();
        assert!(text.contains(&ours.to_public().to_string()) && text.contains(&other.to_public().to_string()) && text.contains("matches none"), "{text}");
        let unknown = Some(DumpEncryption { format: "gpg".into(), recipients: vec![] });
        assert!(matches!(identities_for("pachyderm", &entry(unknown), Some(&identity(&ours))), Err(DatabaseError::UnknownEncryption { .. })));
        // Manifests written before encryption existed: no field, plaintext.
        let old = r#"{"name":"dex","file":"databases/dex.pgdump","size":1,"sha256":"00","server_version":"17","pg_dump_version":"17"}"#;
        assert_eq!(serde_json::from_str::<DatabaseEntry>(old).expect("parses").encryption, None);
        let json = serde_json::to_value(entry(age_to(&ours))).expect("json");
        assert_eq!(json["encryption"]["format"], "age");
        assert_eq!(json["encryption"]["recipients"][0], ours.to_public().to_string());
        assert!(serde_json::to_value(entry(None)).expect("json")["encryption"].is_null());
    }
}
