//! The backup bucket's layout (docs/FORMAT.md is its spec): backup folders, the
//! manifest that commits a backup, the object listing, and the shared blob pool.

use std::io::{BufRead, Write};
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

/// The newest format this program reads and writes. Format 2 adds listing records
/// whose SHA-256 is pending (a blob the store copied without giving one); a backup is
/// written in the lowest format that describes it ([`format_version`]), so a reader of
/// format 1 still reads every backup without such a record.
pub const FORMAT_VERSION: u32 = 2;

/// The format a backup with these objects is written in.
pub fn format_version(objects: &ObjectCounts) -> u32 {
    if objects.pending > 0 { 2 } else { 1 }
}
pub const BACKUPS_DIR: &str = "backups";
pub const BLOBS_DIR: &str = "blobs";
/// At the prefix's root: the writer (run, retention, restore) that holds the bucket.
pub const LOCK: &str = "lock.json";
/// Pool blobs that `verify` found missing or wrong, one record each: the next run
/// copies their objects again under fresh keys instead of reusing them.
pub const DAMAGE_DIR: &str = "damage";
/// Between a blob's source key and its tag: a character object_store never
/// percent-encodes (`~` it does), so the key in the bucket is the key in the listing.
pub const BLOB_TAG_SEPARATOR: char = '@';

/// A key recorded in a listing (a source key or a blob key), as a path. Recorded keys
/// come from paths, so they parse as they are; encoding them again would turn a `%`
/// of the original key into `%25` and miss the object.
pub fn recorded_path(key: &str) -> Path {
    Path::parse(key).unwrap_or_else(|_| Path::from(key))
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("target bucket failed while {what}: {source}")]
    Store {
        what: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{what} in the target bucket is not valid: {detail}; it was written by another tool or damaged")]
    Corrupt { what: String, detail: String },
    #[error("backup {0} has no manifest: it is not a complete backup (run `pachyderm-backup list` to see the complete ones)")]
    NotFound(String),
    #[error("backup {id} was written in format {found}, newer than this program reads ({FORMAT_VERSION}): use a newer pachyderm-backup")]
    TooNew { id: String, found: u32 },
    #[error("{what} is missing from the target bucket: the backup is damaged")]
    Missing { what: String },
    #[error("backup id {id} was claimed by another run ({holder}) while this one ran: two runs share one target bucket")]
    ClaimLost { id: String, holder: String },
    #[error("backup {id} is not whole: {detail}; it was not committed")]
    Incomplete { id: String, detail: String },
    #[error(
        "the backup bucket is locked by {holder} ({command}) until {expires_at}: another run, retention or restore is writing to it; try again later (a dead holder's lock expires by itself)"
    )]
    Locked { holder: String, command: String, expires_at: DateTime<Utc> },
}

impl CatalogError {
    /// Whether the error is damage in the bucket (to skip and report) rather than a
    /// failure to reach it (to retry later).
    pub fn is_damage(&self) -> bool {
        matches!(self, CatalogError::Corrupt { .. } | CatalogError::TooNew { .. } | CatalogError::Missing { .. })
    }
}

fn store_err(what: impl Into<String>) -> impl FnOnce(object_store::Error) -> CatalogError {
    let what = what.into();
    move |source| CatalogError::Store { what, source }
}

/// One database dump in a manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DatabaseEntry {
    pub name: String,
    pub file: String,
    pub size: u64,
    pub sha256: String,
    pub server_version: String,
    pub pg_dump_version: String,
    /// pg_dump's `--compress` (DUMP_COMPRESSION); null in manifests written before it
    /// was recorded (pg_dump's default, gzip level 6). pg_restore reads any.
    #[serde(default)]
    pub compression: Option<String>,
    /// How the file is encrypted; null: plaintext (and every manifest written before
    /// encryption existed). `size` and `sha256` are of the stored bytes either way.
    #[serde(default)]
    pub encryption: Option<DumpEncryption>,
}

/// A dump encrypted client-side (docs/FORMAT.md, Dumps).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DumpEncryption {
    /// `age` (age-encryption.org/v1).
    pub format: String,
    /// The public keys (`age1…`) it is encrypted to: the identity of any one decrypts it.
    pub recipients: Vec<String>,
}

pub use crate::config::{ObjectsMode, PauseMode};

/// What named the objects captured while paused.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ObjectsIndex {
    /// Pachyderm's `storage.chunk_objects`, read at the dump's snapshot; only what lies
    /// outside `chunk/` was listed.
    Database,
    /// A listing of the whole source bucket.
    Listing,
}

/// The object side of a manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ObjectsEntry {
    pub mode: ObjectsMode,
    /// Null with `skip`, and in manifests written before it was recorded (a listing).
    #[serde(default)]
    pub index: Option<ObjectsIndex>,
    /// The listing file, relative to the backup folder; absent with `skip`.
    pub listing: Option<String>,
    pub listing_sha256: Option<String>,
    #[serde(flatten)]
    pub counts: ObjectCounts,
}

impl ObjectsEntry {
    /// OBJECTS=skip: no listing, nothing counted.
    pub fn skipped() -> Self {
        ObjectsEntry { mode: ObjectsMode::Skip, index: None, listing: None, listing_sha256: None, counts: ObjectCounts::default() }
    }
}

/// Objects of a backup and how many bytes crossed: copied by this backup, or reused
/// from the pool.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ObjectCounts {
    pub count: u64,
    pub bytes: u64,
    pub copied: u64,
    pub copied_bytes: u64,
    pub reused: u64,
    pub reused_bytes: u64,
    /// Records whose SHA-256 is pending (format 2); absent when none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pending: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `manifest.json`: written last, it is what makes a backup exist.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format_version: u32,
    pub backup_id: String,
    pub cluster: String,
    pub namespace: Option<String>,
    pub tool_version: String,
    pub pachyderm_version: Option<String>,
    pub pause_mode: PauseMode,
    /// Whether this run paused the cluster (false: paused by its operator, or `none`).
    pub paused_by_us: bool,
    pub started_at: DateTime<Utc>,
    pub paused_at: Option<DateTime<Utc>>,
    pub resumed_at: Option<DateTime<Utc>>,
    pub finished_at: DateTime<Utc>,
    pub downtime_seconds: f64,
    pub phases: std::collections::BTreeMap<String, f64>,
    /// SOURCE_URL without credentials; null when the backup holds no objects (OBJECTS=skip).
    #[serde(default)]
    pub source_url: Option<String>,
    pub databases: Vec<DatabaseEntry>,
    pub objects: ObjectsEntry,
    pub cluster_objects: Vec<String>,
    /// The replicas of every workload before the pause (`deployment/pachd`,
    /// `replicationcontroller/<worker>`): the saved Deployments carry them too.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub original_replicas: std::collections::BTreeMap<String, i32>,
}

/// One line of `objects.jsonl.zst`: a source object and where its bytes are pooled.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ObjectRecord {
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
    pub blob: String,
    /// Hex SHA-256 of the content; null: pending (format 2), the blob was copied by a
    /// store that gave none. `verify --deep` reads it once and records its SHA-256 in
    /// the backup's [`BackupFile::Checksums`], which readers of the listing fill in.
    pub sha256: Option<String>,
    /// The blob's ETag as its copy answered, kept with a pending SHA-256: what the
    /// blob's bytes are checked against (when it is an MD5) until their SHA-256 is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob_etag: Option<String>,
    /// The backup that first stored this blob in the pool.
    pub since: String,
}

/// One line of a backup's `checksums.jsonl.zst`: the SHA-256 `verify --deep` computed
/// for a record of its listing that had none.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChecksumRecord {
    pub key: String,
    pub blob: String,
    pub sha256: String,
}

/// A folder under `backups/`: complete (a manifest), damaged (a manifest that cannot be
/// read), or partial (no manifest: a run in progress, or one that died).
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    pub manifest: Option<Manifest>,
    /// Why the manifest cannot be used. A damaged folder is never deleted automatically.
    pub damaged: Option<String>,
    /// For folders without a manifest: the newest object's time (dead-run collection).
    pub newest_modified: Option<DateTime<Utc>>,
}

impl Entry {
    pub fn is_partial(&self) -> bool {
        self.manifest.is_none() && self.damaged.is_none()
    }
}

/// What a damaged folder's log line and `list` say to do about it.
pub const DAMAGED_ADVICE: &str = "it is skipped by run, list, retention and restore and never deleted automatically; \
     restore the file from the bucket's versioning if you have it, or move the folder away by hand (README: Damaged backups)";

/// The pool key of a source object. The tag changes whenever the object's identity does
/// (etag, or last-modified where a store lists no etag, and size), so an object
/// rewritten under the same key becomes a new blob and old backups keep theirs.
pub fn blob_key(key: &str, etag: Option<&str>, last_modified: DateTime<Utc>, size: u64) -> String {
    use sha2::{Digest, Sha256};
    let identity = match etag {
        Some(e) => format!("etag:{}:{size}", e.trim_matches('"')),
        None => format!("mtime:{}:{size}", last_modified.timestamp_nanos_opt().unwrap_or_default()),
    };
    let tag = hex::encode(&Sha256::digest(identity.as_bytes())[..8]);
    format!("{BLOBS_DIR}/{key}{BLOB_TAG_SEPARATOR}{tag}")
}

/// A fresh pool key for a blob copied again (healing, `run --full`): never the key of
/// a blob an older backup references, so nothing is overwritten.
pub fn fresh_blob_key(blob: &str, backup_id: &str) -> String {
    format!("{blob}.{backup_id}")
}

/// A pool blob `verify` found damaged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DamageRecord {
    pub blob: String,
    pub problem: String,
    pub found_at: DateTime<Utc>,
    pub backup_id: String,
}

/// Backup ids sort by time: `20261121T020000Z`, `-2`, `-3`… when taken.
pub fn backup_id(time: DateTime<Utc>, attempt: u32) -> String {
    let base = time.format("%Y%m%dT%H%M%SZ").to_string();
    if attempt <= 1 { base } else { format!("{base}-{attempt}") }
}

/// A folder's place in time: its second, then its attempt (`-10` after `-9`, which a
/// plain string order would not give).
fn id_order(id: &str) -> (&str, u32) {
    match id.rsplit_once('-').map(|(base, n)| (base, n.parse::<u32>())) {
        Some((base, Ok(n))) => (base, n),
        _ => (id, 1),
    }
}

/// Which attempt of the second `base` the id `name` is (`base` 1, `base-N` N).
fn id_attempt(name: &str, base: &str) -> Option<u32> {
    match name.strip_prefix(base)? {
        "" => Some(1),
        rest => rest.strip_prefix('-')?.parse().ok(),
    }
}

/// A file of a backup folder (docs/FORMAT.md, Layout). Its [`name`](BackupFile::name),
/// relative to the folder, is what a manifest records; writers name files only
/// through it, so the layout is spelled once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupFile {
    /// Written first, with a create-if-absent put: whoever writes it owns the backup id.
    Claim,
    /// Written and deleted by the preflight, inside the claimed folder: a run killed
    /// before deleting it leaves it where retention collects dead runs' leftovers.
    Probe,
    /// Written last: what makes the backup exist.
    Manifest,
    /// The source bucket's listing (none with OBJECTS=skip).
    Listing,
    /// The dump of a database, stored as pg_dump wrote it.
    Dump(String),
    /// The dump of a database, encrypted with age (DUMP_RECIPIENTS).
    AgeDump(String),
    /// A file of the cluster capture, as [`BackupFile::cluster_object`] or
    /// [`BackupFile::helm_values`] name it under `cluster/`.
    Cluster(String),
    /// The listing of one shard of a sharded pre-copy (COPY_SHARDS), by its index.
    ShardListing(u32),
    /// What that shard copied, written after its listing: the shard is done.
    ShardSummary(u32),
    /// The SHA-256s `verify --deep` computed for the listing's pending records, written
    /// once, after the manifest (which does not name it).
    Checksums,
}

const CLUSTER_DIR: &str = "cluster";
const HELM_DIR: &str = "helm";
const SHARDS_DIR: &str = "shards";

impl BackupFile {
    /// The name relative to the backup folder, as the manifest records it.
    pub fn name(&self) -> String {
        match self {
            BackupFile::Claim => "claim.json".into(),
            BackupFile::Probe => "preflight-probe".into(),
            BackupFile::Manifest => "manifest.json".into(),
            BackupFile::Listing => "objects.jsonl.zst".into(),
            BackupFile::Dump(database) => format!("databases/{database}.pgdump"),
            BackupFile::AgeDump(database) => format!("databases/{database}.pgdump.age"),
            BackupFile::Cluster(name) => format!("{CLUSTER_DIR}/{name}"),
            BackupFile::ShardListing(index) => format!("{SHARDS_DIR}/{index}.jsonl.zst"),
            BackupFile::ShardSummary(index) => format!("{SHARDS_DIR}/{index}.json"),
            BackupFile::Checksums => "checksums.jsonl.zst".into(),
        }
    }

    /// Its key in the bucket, in backup `id`'s folder.
    pub fn path(&self, id: &str) -> Path {
        folder_path(id, &self.name())
    }

    /// A Kubernetes object of the capture (`kind` as the API's plural: `deployments`).
    pub fn cluster_object(kind: &str, name: &str) -> BackupFile {
        BackupFile::Cluster(format!("{kind}/{name}.json"))
    }

    /// The user values of Helm release `release` (HELM_RELEASE).
    pub fn helm_values(release: &str) -> BackupFile {
        BackupFile::Cluster(format!("{HELM_DIR}/{release}-values.json"))
    }

    /// Whether a file a manifest names among its `cluster_objects` is Helm values
    /// rather than an object for `kubectl apply`.
    pub fn is_helm_values(recorded: &str) -> bool {
        recorded.starts_with(&format!("{CLUSTER_DIR}/{HELM_DIR}/"))
    }
}

/// The key of `file` (a name relative to the folder) in backup `id`'s folder.
fn folder_path(id: &str, file: &str) -> Path {
    Path::from(format!("{BACKUPS_DIR}/{id}/{file}"))
}

/// The prefix every file of backup `id` is under.
fn folder_prefix(id: &str) -> Path {
    Path::from(format!("{BACKUPS_DIR}/{id}"))
}

/// One backup folder, for the code that streams its files through object_store
/// itself (pg_dump into a multipart upload, pg_restore and `verify` from downloads,
/// the preflight's probe). Displays as `backups/<id>/`.
#[derive(Clone)]
pub struct Folder {
    store: Arc<dyn ObjectStore>,
    id: String,
}

impl Folder {
    /// The bucket, to stream a file whose key [`path`](Folder::path) or
    /// [`recorded`](Folder::recorded) gave: uploads and downloads go through
    /// object_store's own streaming and multipart calls, which take the store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The key of a file a writer names.
    pub fn path(&self, file: &BackupFile) -> Path {
        file.path(&self.id)
    }

    /// The key of a file as the manifest names it: a reader follows the manifest,
    /// whichever writer of the format filled it.
    pub fn recorded(&self, file: &str) -> Path {
        folder_path(&self.id, file)
    }
}

impl std::fmt::Display for Folder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{BACKUPS_DIR}/{}/", self.id)
    }
}

/// The blob pool (`blobs/`, keys made by [`blob_key`] and [`fresh_blob_key`] and
/// recorded in listings), for the code that copies, checks and sweeps blobs.
#[derive(Clone)]
pub struct Pool {
    store: Arc<dyn ObjectStore>,
}

impl Pool {
    /// The bucket a recorded blob key ([`recorded_path`]) is read from or written to:
    /// `objects`' copy and check functions take any store (the source, the pool, a
    /// restore bucket) and stream through object_store themselves.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Every blob, listed again from the last key after a failed page. A store that
    /// does not list in key order (a local directory) may then skip some: a blob
    /// skipped by a sweep is only not deleted yet, so nothing referenced is at risk.
    pub fn list(&self) -> futures::stream::BoxStream<'static, Result<object_store::ObjectMeta, object_store::Error>> {
        crate::objects::list_resuming(self.store.clone(), Some(Path::from(BLOBS_DIR)), None, true)
    }

    /// Deletes `blobs` with the store's bulk API; one already gone is not an error.
    pub async fn delete(&self, blobs: Vec<Path>) -> Result<(), object_store::Error> {
        let mut deleted = self.store.delete_stream(futures::stream::iter(blobs.into_iter().map(Ok)).boxed());
        while let Some(r) = deleted.next().await {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// A damage record's key: one per blob, named by the first 16 bytes of its SHA-256.
fn damage_path(blob: &str) -> Path {
    use sha2::Digest;
    let name = hex::encode(&sha2::Sha256::digest(blob.as_bytes())[..16]);
    Path::from(format!("{DAMAGE_DIR}/{name}.json"))
}

/// The folder `check` probes in: `check-<time>`, never a backup id (those start with
/// a digit), left to retention's collection of dead runs if `check` dies in between.
fn check_id(time: DateTime<Utc>) -> String {
    format!("check-{}", time.format("%Y%m%dT%H%M%SZ"))
}

/// A compressed listing, spilled to an anonymous temporary file (gone with its last
/// clone). Even compressed a listing is tens of bytes an object (its hashes do not
/// compress): the 12.5 million chunks of a 100 TB bucket would be most of a gigabyte
/// held in memory, per listing. Cheap to clone; each reader reads it from the start.
#[derive(Clone)]
pub struct Listing {
    file: Arc<std::fs::File>,
    len: u64,
    /// The backup's `checksums.jsonl.zst`: readers fill the pending records' SHA-256
    /// from it.
    checksums: Option<Box<Listing>>,
}

impl Listing {
    /// A listing of these compressed bytes.
    pub fn from_bytes(bytes: &[u8]) -> std::io::Result<Listing> {
        let mut file = tempfile::tempfile()?;
        file.write_all(bytes)?;
        Ok(Listing { file: Arc::new(file), len: bytes.len() as u64, checksums: None })
    }

    /// Compressed bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// This listing, its pending records filled from `checksums` as they are read.
    pub fn with_checksums(mut self, checksums: Listing) -> Listing {
        self.checksums = Some(Box::new(checksums));
        self
    }

    fn lines(&self) -> std::io::Result<std::io::BufReader<zstd::Decoder<'static, std::io::BufReader<ListingBytes>>>> {
        let bytes = ListingBytes { file: self.file.clone(), pos: 0, len: self.len };
        Ok(std::io::BufReader::new(zstd::Decoder::new(bytes)?))
    }

    #[cfg(test)]
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut ListingBytes { file: self.file.clone(), pos: 0, len: self.len }, &mut out).expect("read the temporary file");
        out
    }

    /// The compressed bytes, in chunks of `size`, for an upload.
    pub fn chunks(&self, size: usize) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
        let (file, len) = (self.file.clone(), self.len);
        futures::stream::try_unfold(0u64, move |pos| {
            let file = file.clone();
            async move {
                if pos >= len {
                    return Ok(None);
                }
                let n = (len - pos).min(size as u64) as usize;
                let mut buf = vec![0u8; n];
                std::os::unix::fs::FileExt::read_exact_at(&*file, &mut buf, pos)?;
                Ok(Some((Bytes::from(buf), pos + n as u64)))
            }
        })
    }
}

/// A reader of a [`Listing`] at its own position (positional reads: clones share the file).
struct ListingBytes {
    file: Arc<std::fs::File>,
    pos: u64,
    len: u64,
}

impl std::io::Read for ListingBytes {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let take = (self.len.saturating_sub(self.pos) as usize).min(buf.len());
        let n = std::os::unix::fs::FileExt::read_at(&*self.file, &mut buf[..take], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Writes the listing compressed into a temporary file ([`Listing`]).
pub struct ListingWriter {
    encoder: zstd::Encoder<'static, std::io::BufWriter<std::fs::File>>,
    last_key: Option<String>,
    hasher: sha2::Sha256,
}

impl ListingWriter {
    pub fn new() -> std::io::Result<Self> {
        use sha2::Digest;
        let file = std::io::BufWriter::with_capacity(1 << 20, tempfile::tempfile()?);
        let mut encoder = zstd::Encoder::new(file, 3)?;
        // The frame's content checksum: a flipped bit in the stored listing fails the
        // decode instead of naming another blob.
        encoder.include_checksum(true)?;
        Ok(ListingWriter { encoder, last_key: None, hasher: sha2::Sha256::new() })
    }

    pub fn push(&mut self, record: &ObjectRecord) -> std::io::Result<()> {
        self.push_line(&record.key, record)
    }

    /// A line of a checksums file, which is in the listing's key order too.
    pub fn push_checksum(&mut self, record: &ChecksumRecord) -> std::io::Result<()> {
        self.push_line(&record.key, record)
    }

    fn push_line(&mut self, key: &str, record: &impl Serialize) -> std::io::Result<()> {
        use sha2::Digest;
        if self.last_key.as_deref().is_some_and(|k| k >= key) {
            return Err(std::io::Error::other(format!("listing out of order at {key:?}")));
        }
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.hasher.update(&line);
        self.encoder.write_all(&line)?;
        self.last_key = Some(key.to_string());
        Ok(())
    }

    /// The listing and the SHA-256 of the uncompressed lines.
    pub fn finish(self) -> std::io::Result<(Listing, String)> {
        use sha2::Digest;
        let file = self.encoder.finish()?.into_inner().map_err(|e| e.into_error())?;
        let len = file.metadata()?.len();
        Ok((Listing { file: Arc::new(file), len, checksums: None }, hex::encode(self.hasher.finalize())))
    }
}

/// Reads a listing record by record from its compressed bytes, hashing the lines as
/// read (not as re-serialised), so that `verify_whole` checks exactly what is stored.
pub struct ListingReader {
    lines: std::io::BufReader<zstd::Decoder<'static, std::io::BufReader<ListingBytes>>>,
    what: String,
    buf: String,
    hasher: sha2::Sha256,
    count: u64,
    checksums: Option<ChecksumReader>,
}

impl ListingReader {
    pub fn new(listing: &Listing, what: String) -> Result<Self, CatalogError> {
        use sha2::Digest;
        let corrupt = |what: &str, e: std::io::Error| CatalogError::Corrupt { what: what.to_string(), detail: e.to_string() };
        let lines = listing.lines().map_err(|e| corrupt(&what, e))?;
        let checksums = match &listing.checksums {
            Some(c) => {
                let what = format!("the checksums of {what}");
                Some(ChecksumReader { lines: c.lines().map_err(|e| corrupt(&what, e))?, what, buf: String::new(), ahead: None })
            }
            None => None,
        };
        Ok(ListingReader { lines, what, buf: String::new(), hasher: sha2::Sha256::new(), count: 0, checksums })
    }

    /// An empty listing, for a backup without objects.
    pub fn empty() -> Result<Self, CatalogError> {
        let io = |e: std::io::Error| CatalogError::Corrupt { what: "an empty listing".into(), detail: e.to_string() };
        let (listing, _) = ListingWriter::new().and_then(ListingWriter::finish).map_err(io)?;
        ListingReader::new(&listing, "empty listing".into())
    }

    pub fn next_record(&mut self) -> Result<Option<ObjectRecord>, CatalogError> {
        use sha2::Digest;
        self.buf.clear();
        let n = self.lines.read_line(&mut self.buf).map_err(|e| CatalogError::Corrupt { what: self.what.clone(), detail: e.to_string() })?;
        if n == 0 {
            return Ok(None);
        }
        self.hasher.update(self.buf.as_bytes());
        self.count += 1;
        let mut record: ObjectRecord =
            serde_json::from_str(self.buf.trim_end()).map_err(|e| CatalogError::Corrupt { what: self.what.clone(), detail: e.to_string() })?;
        if let (None, Some(checksums)) = (&record.sha256, &mut self.checksums) {
            record.sha256 = checksums.find(&record.key, &record.blob)?;
        }
        Ok(Some(record))
    }

    /// After the last record: the lines read are the ones the manifest describes.
    pub fn verify_whole(self, objects: &ObjectsEntry) -> Result<(), CatalogError> {
        use sha2::Digest;
        let corrupt = |detail: String| CatalogError::Corrupt { what: self.what.clone(), detail };
        if self.count != objects.counts.count {
            return Err(corrupt(format!("{} records, the manifest says {}", self.count, objects.counts.count)));
        }
        let sha = hex::encode(self.hasher.clone().finalize());
        match &objects.listing_sha256 {
            Some(want) if *want != sha => Err(corrupt(format!("SHA-256 {sha}, the manifest says {want}"))),
            _ => Ok(()),
        }
    }
}

/// Reads a checksums file alongside its listing (both in key order).
struct ChecksumReader {
    lines: std::io::BufReader<zstd::Decoder<'static, std::io::BufReader<ListingBytes>>>,
    what: String,
    buf: String,
    ahead: Option<ChecksumRecord>,
}

impl ChecksumReader {
    /// The SHA-256 recorded for `blob` at `key`, if any.
    fn find(&mut self, key: &str, blob: &str) -> Result<Option<String>, CatalogError> {
        loop {
            if self.ahead.is_none() {
                self.buf.clear();
                let corrupt = |detail: String| CatalogError::Corrupt { what: self.what.clone(), detail };
                if self.lines.read_line(&mut self.buf).map_err(|e| corrupt(e.to_string()))? == 0 {
                    return Ok(None);
                }
                self.ahead = Some(serde_json::from_str(self.buf.trim_end()).map_err(|e| corrupt(e.to_string()))?);
            }
            match &self.ahead {
                Some(c) if c.key.as_str() < key => self.ahead = None,
                Some(c) if c.key == key && c.blob == blob => return Ok(Some(c.sha256.clone())),
                _ => return Ok(None),
            }
        }
    }
}

impl Iterator for ListingReader {
    type Item = Result<ObjectRecord, CatalogError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().transpose()
    }
}

/// `lock.json`: who holds the backup bucket, until when.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LockRecord {
    holder: String,
    command: String,
    acquired_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

/// The bucket lock, held and renewed (every third of its TTL) until released. Every
/// writer of the backup bucket takes it, so a sweep never races a run that reuses
/// blobs, whatever the pause mode (PAUSE_MODE=none has no Lease) or the command.
pub struct BucketLock {
    store: Arc<dyn ObjectStore>,
    holder: String,
    renewer: tokio::task::JoinHandle<()>,
    lost: tokio::sync::watch::Receiver<bool>,
}

impl BucketLock {
    /// Resolves if the lock was lost (renewals failed past its expiry, or another
    /// holder took it over): the holder must stop writing.
    pub async fn lost(&mut self) {
        crate::until_lost(&mut self.lost).await
    }

    /// Stops renewing and deletes the lock if it is still this holder's.
    pub async fn release(self) {
        self.renewer.abort();
        let path = Path::from(LOCK);
        if read_lock(&self.store).await.ok().flatten().is_some_and(|l| l.holder == self.holder) {
            if let Err(e) = self.store.delete(&path).await {
                tracing::warn!(error = %e, "could not release the bucket lock; it expires by itself");
            }
        }
    }
}

async fn read_lock(store: &Arc<dyn ObjectStore>) -> Result<Option<LockRecord>, CatalogError> {
    match store.get(&Path::from(LOCK)).await {
        Ok(r) => {
            let bytes = r.bytes().await.map_err(store_err("reading the bucket lock"))?;
            // A lock that cannot be read is treated as expired: it cannot block forever.
            Ok(Some(serde_json::from_slice(&bytes).unwrap_or(LockRecord {
                holder: "unreadable lock.json".into(),
                command: "?".into(),
                acquired_at: DateTime::<Utc>::MIN_UTC,
                expires_at: DateTime::<Utc>::MIN_UTC,
            })))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(store_err("reading the bucket lock")(e)),
    }
}

/// The backup bucket, under its prefix.
#[derive(Clone)]
pub struct Catalog {
    store: Arc<dyn ObjectStore>,
    pool: Pool,
    object_lock: crate::object_lock::ObjectLock,
}

impl Catalog {
    /// The backup bucket of `settings` (TARGET_URL), with its S3 Object Lock.
    pub async fn open(settings: &crate::config::StoreSettings, create: crate::objects::Create) -> Result<Catalog, crate::objects::ObjectsError> {
        let (store, object_lock) = crate::objects::open_backup_bucket(settings, create).await?;
        Ok(Catalog { object_lock, ..Catalog::new(store) })
    }

    /// A bucket already open, without Object Lock.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Catalog { pool: Pool { store: store.clone() }, store, object_lock: crate::object_lock::ObjectLock::Off }
    }

    /// The bucket's S3 Object Lock, as read when it was opened.
    pub fn object_lock(&self) -> &crate::object_lock::ObjectLock {
        &self.object_lock
    }

    /// Backup `id`'s folder.
    pub fn folder(&self, id: &str) -> Folder {
        Folder { store: self.store.clone(), id: id.to_string() }
    }

    /// The folder `check` writes its probe in, named for `time`.
    pub fn check_folder(&self, time: DateTime<Utc>) -> Folder {
        self.folder(&check_id(time))
    }

    /// The blob pool every backup shares.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Takes the bucket lock for `command` (create-if-absent; an expired lock is taken
    /// over) and renews it in the background until released.
    pub async fn lock(&self, holder: &str, command: &str, ttl: std::time::Duration) -> Result<BucketLock, CatalogError> {
        let path = Path::from(LOCK);
        let ttl_chrono = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        let record = |now: DateTime<Utc>| LockRecord { holder: holder.into(), command: command.into(), acquired_at: now, expires_at: now + ttl_chrono };
        let body = |r: &LockRecord| PutPayload::from_bytes(Bytes::from(serde_json::to_vec(r).unwrap_or_default()));
        let mut attempts = 0;
        loop {
            attempts += 1;
            let now = Utc::now();
            let opts = object_store::PutOptions { mode: object_store::PutMode::Create, ..Default::default() };
            let created = match self.store.put_opts(&path, body(&record(now)), opts).await {
                Ok(_) => true,
                Err(object_store::Error::AlreadyExists { .. }) => false,
                // No conditional writes: check, write, read back.
                Err(object_store::Error::NotImplemented { .. }) => match read_lock(&self.store).await? {
                    Some(l) if l.expires_at > now && l.holder != holder => false,
                    _ => {
                        self.put(&path, Bytes::from(serde_json::to_vec(&record(now)).unwrap_or_default())).await?;
                        read_lock(&self.store).await?.is_some_and(|l| l.holder == holder)
                    }
                },
                Err(e) => return Err(store_err("taking the bucket lock")(e)),
            };
            if created {
                break;
            }
            match read_lock(&self.store).await? {
                Some(l) if l.expires_at > Utc::now() || attempts > 3 => {
                    return Err(CatalogError::Locked { holder: l.holder, command: l.command, expires_at: l.expires_at });
                }
                Some(l) => {
                    tracing::warn!(holder = %l.holder, command = %l.command, expired_at = %l.expires_at, "taking over an expired bucket lock (its holder died)");
                    match self.store.delete(&path).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(store_err("removing an expired bucket lock")(e)),
                    }
                }
                None => {}
            }
        }
        let (tx, lost) = tokio::sync::watch::channel(false);
        let store = self.store.clone();
        let me = holder.to_string();
        let command = command.to_string();
        let renewer = tokio::spawn(tracing::Instrument::in_current_span(async move {
            let mut valid_until = Utc::now() + ttl_chrono;
            loop {
                tokio::time::sleep(ttl / 3).await;
                let now = Utc::now();
                // object_store's own retries may take minutes: an attempt ends by the
                // lock's expiry, so a renewal that hangs loses the lock in time.
                let left = (valid_until - now).to_std().unwrap_or_default().max(std::time::Duration::from_millis(100));
                let attempt = async {
                    match read_lock(&store).await {
                        Ok(Some(l)) if l.holder == me => {
                            let r = LockRecord { holder: me.clone(), command: command.clone(), acquired_at: l.acquired_at, expires_at: now + ttl_chrono };
                            Some(store.put(&Path::from(LOCK), PutPayload::from_bytes(Bytes::from(serde_json::to_vec(&r).unwrap_or_default()))).await.is_ok())
                        }
                        Ok(_) => None,
                        Err(_) => Some(false),
                    }
                };
                let renewed = match tokio::time::timeout(left, attempt).await {
                    Ok(Some(renewed)) => renewed,
                    Ok(None) => {
                        tracing::error!("the bucket lock was taken over by another holder");
                        let _ = tx.send(true);
                        return;
                    }
                    Err(_) => false,
                };
                if renewed {
                    valid_until = now + ttl_chrono;
                } else if Utc::now() >= valid_until {
                    tracing::error!("the bucket lock could not be renewed before it expired");
                    let _ = tx.send(true);
                    return;
                } else {
                    tracing::warn!("renewing the bucket lock failed; retrying until it expires");
                }
            }
        }));
        Ok(BucketLock { store: self.store.clone(), holder: holder.to_string(), renewer, lost })
    }

    /// Every folder under `backups/`, sorted by id (= by time), manifests read. A
    /// manifest that cannot be read makes its folder damaged, reported, never fatal:
    /// one bad folder must not stop every run, list, retention and restore.
    pub async fn entries(&self) -> Result<Vec<Entry>, CatalogError> {
        let listing = self.store.list_with_delimiter(Some(&Path::from(BACKUPS_DIR))).await.map_err(store_err("listing backups/"))?;
        let mut ids: Vec<String> = listing.common_prefixes.iter().filter_map(|p| p.filename().map(str::to_string)).collect();
        ids.sort_by(|a, b| id_order(a).cmp(&id_order(b)));
        let entries: Vec<Entry> = futures::stream::iter(ids.into_iter().map(|id| async move {
            match self.manifest(&id).await {
                Ok(m) => Ok(Entry { id, manifest: Some(m), damaged: None, newest_modified: None }),
                Err(CatalogError::NotFound(_)) => {
                    let newest = self
                        .store
                        .list(Some(&folder_prefix(&id)))
                        .map_ok(|m| m.last_modified)
                        .try_fold(None, |acc: Option<DateTime<Utc>>, t| async move { Ok(Some(acc.map_or(t, |a| a.max(t)))) })
                        .await
                        .map_err(store_err(format!("listing backups/{id}")))?;
                    Ok(Entry { id, manifest: None, damaged: None, newest_modified: newest })
                }
                Err(e) if e.is_damage() => {
                    tracing::warn!(folder = %self.folder(&id), problem = %e, "damaged backup: {DAMAGED_ADVICE}");
                    Ok(Entry { id, manifest: None, damaged: Some(e.to_string()), newest_modified: None })
                }
                Err(e) => Err(e),
            }
        }))
        .buffered(16)
        .try_collect()
        .await?;
        Ok(entries)
    }

    pub async fn manifest(&self, id: &str) -> Result<Manifest, CatalogError> {
        let path = BackupFile::Manifest.path(id);
        let bytes = match self.store.get(&path).await {
            Ok(r) => r.bytes().await.map_err(store_err(format!("reading {path}")))?,
            Err(object_store::Error::NotFound { .. }) => return Err(CatalogError::NotFound(id.to_string())),
            Err(e) => return Err(store_err(format!("reading {path}"))(e)),
        };
        // The version first: a newer format may not parse as this one.
        #[derive(Deserialize)]
        struct Version {
            format_version: u32,
        }
        let corrupt = |detail: String| CatalogError::Corrupt { what: path.to_string(), detail };
        let version: Version = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if version.format_version > FORMAT_VERSION {
            return Err(CatalogError::TooNew { id: id.to_string(), found: version.format_version });
        }
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if manifest.backup_id != id {
            return Err(corrupt(format!("it names backup {}, not its folder's", manifest.backup_id)));
        }
        Ok(manifest)
    }

    /// The complete backups, oldest first (damaged folders skipped, and logged).
    pub async fn complete(&self) -> Result<Vec<Manifest>, CatalogError> {
        Ok(self.entries().await?.into_iter().filter_map(|e| e.manifest).collect())
    }

    /// Claims a free id for a backup starting at `time`: the first id whose folder is
    /// empty and whose claim this run creates (create-if-absent), so two runs started
    /// in the same second never share one.
    pub async fn claim_backup_id(&self, time: DateTime<Utc>, holder: &str) -> Result<String, CatalogError> {
        let body = Bytes::from(serde_json::json!({ "holder": holder, "claimed_at": Utc::now() }).to_string());
        // Past every folder of this second, even one whose predecessor was deleted
        // since: the ids of one second follow each other in time.
        let base = backup_id(time, 1);
        let listing = self.store.list_with_delimiter(Some(&Path::from(BACKUPS_DIR))).await.map_err(store_err("listing backups/ to claim a backup id"))?;
        let highest = listing.common_prefixes.iter().filter_map(|p| p.filename()).filter_map(|name| id_attempt(name, &base)).max();
        for attempt in highest.map_or(1, |n| n + 1).. {
            let id = backup_id(time, attempt);
            let taken = self.store.list(Some(&folder_prefix(&id))).next().await.transpose().map_err(store_err(format!("checking backups/{id}")))?.is_some();
            if taken {
                continue;
            }
            let path = BackupFile::Claim.path(&id);
            let opts = object_store::PutOptions { mode: object_store::PutMode::Create, ..Default::default() };
            match self.store.put_opts(&path, PutPayload::from_bytes(body.clone()), opts).await {
                Ok(_) => return Ok(id),
                Err(object_store::Error::AlreadyExists { .. }) => continue,
                // A store without conditional writes: the listing above decided; the
                // commit checks the claim is still this run's.
                Err(object_store::Error::NotImplemented { .. }) => {
                    self.put(&path, body.clone()).await?;
                    return Ok(id);
                }
                Err(e) => return Err(store_err(format!("claiming backups/{id}"))(e)),
            }
        }
        unreachable!("the attempts are unbounded")
    }

    /// A backup's listing, downloaded into a temporary file, and its path (None: a
    /// backup without objects).
    async fn download_listing(&self, id: &str, manifest: &Manifest) -> Result<Option<(String, Listing)>, CatalogError> {
        let Some(file) = &manifest.objects.listing else { return Ok(None) };
        let path = folder_path(id, file);
        let Some(listing) = self.download(&path).await? else { return Err(CatalogError::Missing { what: path.to_string() }) };
        // Pending SHA-256s are filled from what `verify --deep` recorded, if it ran.
        let listing = match manifest.objects.counts.pending {
            0 => listing,
            _ => match self.download(&BackupFile::Checksums.path(id)).await? {
                Some(checksums) => listing.with_checksums(checksums),
                None => listing,
            },
        };
        Ok(Some((path.to_string(), listing)))
    }

    /// Whether backup `id` has its checksums file.
    pub async fn has_checksums(&self, id: &str) -> Result<bool, CatalogError> {
        let path = BackupFile::Checksums.path(id);
        match self.store.head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_err(format!("reading {path}"))(e)),
        }
    }

    /// A listing file of backup `id` other than its own (a shard's), downloaded into a
    /// temporary file; `None` when it is not there.
    pub async fn get_listing(&self, id: &str, file: &BackupFile) -> Result<Option<Listing>, CatalogError> {
        self.download(&file.path(id)).await
    }

    /// A file of backup `id`, whole; `None` when it is not there.
    pub async fn get_file(&self, id: &str, file: &BackupFile) -> Result<Option<Bytes>, CatalogError> {
        let path = file.path(id);
        let read_err = || store_err(format!("reading {path}"));
        match self.store.get(&path).await {
            Ok(r) => r.bytes().await.map(Some).map_err(read_err()),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(read_err()(e)),
        }
    }

    /// Removes the shard files of backup `id` once merged into its pre-copy listing.
    pub async fn delete_shards(&self, id: &str) -> Result<(), CatalogError> {
        let prefix = folder_path(id, SHARDS_DIR);
        self.delete_under(&prefix, &prefix.to_string()).await
    }

    /// Deletes every key under `prefix` (one already gone is fine).
    async fn delete_under(&self, prefix: &Path, what: &str) -> Result<(), CatalogError> {
        let locations = self.store.list(Some(prefix)).map_ok(|m| m.location).boxed();
        let mut deleted = self.store.delete_stream(locations);
        while let Some(r) = deleted.next().await {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_err(format!("deleting {what}"))(e)),
            }
        }
        Ok(())
    }

    /// `path` downloaded into a temporary file; `None` when it is not there.
    async fn download(&self, path: &Path) -> Result<Option<Listing>, CatalogError> {
        let read_err = store_err(format!("reading {path}"));
        let mut body = match self.store.get(path).await {
            Ok(r) => r.into_stream(),
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(read_err(e)),
        };
        let spill = |e: std::io::Error| CatalogError::Corrupt { what: path.to_string(), detail: format!("spilling to a temporary file: {e}") };
        let mut out = std::io::BufWriter::with_capacity(1 << 20, tempfile::tempfile().map_err(spill)?);
        while let Some(chunk) = body.try_next().await.map_err(store_err(format!("reading {path}")))? {
            out.write_all(&chunk).map_err(spill)?;
        }
        let file = out.into_inner().map_err(|e| spill(e.into_error()))?;
        let len = file.metadata().map_err(spill)?.len();
        Ok(Some(Listing { file: Arc::new(file), len, checksums: None }))
    }

    pub async fn read_listing(&self, id: &str, manifest: &Manifest) -> Result<ListingReader, CatalogError> {
        match self.download_listing(id, manifest).await? {
            Some((what, listing)) => ListingReader::new(&listing, what),
            None => ListingReader::empty(),
        }
    }

    /// A backup's listing, as stored, once read whole and checked against its manifest:
    /// the reference a run plans from.
    pub async fn verified_listing(&self, manifest: &Manifest) -> Result<Option<Listing>, CatalogError> {
        let Some((what, listing)) = self.download_listing(&manifest.backup_id, manifest).await? else { return Ok(None) };
        let mut reader = ListingReader::new(&listing, what)?;
        while reader.next_record()?.is_some() {}
        reader.verify_whole(&manifest.objects)?;
        Ok(Some(listing))
    }

    /// Reads a backup's whole listing, handing each record to `each`, and checks it
    /// against the manifest (count and SHA-256): an error means `each` saw a listing
    /// that is not the one committed.
    pub async fn read_verified_listing(&self, manifest: &Manifest, mut each: impl FnMut(&ObjectRecord)) -> Result<(), CatalogError> {
        let mut reader = self.read_listing(&manifest.backup_id, manifest).await?;
        while let Some(record) = reader.next_record()? {
            each(&record);
        }
        reader.verify_whole(&manifest.objects)
    }

    async fn put(&self, path: &Path, bytes: Bytes) -> Result<(), CatalogError> {
        self.store.put(path, PutPayload::from_bytes(bytes)).await.map_err(store_err(format!("writing {path}")))?;
        Ok(())
    }

    /// Writes a file of backup `id`.
    pub async fn put_file(&self, id: &str, file: &BackupFile, bytes: Bytes) -> Result<(), CatalogError> {
        self.put(&file.path(id), bytes).await
    }

    /// Reads a file of backup `id` whole, as its manifest names it.
    pub async fn read_file(&self, id: &str, recorded: &str) -> Result<Bytes, CatalogError> {
        let path = folder_path(id, recorded);
        let read_err = || store_err(format!("reading {path}"));
        self.store.get(&path).await.map_err(read_err())?.bytes().await.map_err(read_err())
    }

    /// Uploads backup `id`'s listing from its file, a part at a time.
    pub async fn put_listing(&self, id: &str, listing: &Listing) -> Result<(), CatalogError> {
        self.put_listing_as(id, &BackupFile::Listing, listing).await
    }

    /// Uploads a listing as `file` of backup `id` (a shard's), a part at a time.
    pub async fn put_listing_as(&self, id: &str, file: &BackupFile, listing: &Listing) -> Result<(), CatalogError> {
        const PART: usize = 5 * 1024 * 1024;
        let path = &file.path(id);
        let write_err = store_err(format!("writing {path}"));
        let read_err = |e: std::io::Error| CatalogError::Corrupt { what: path.to_string(), detail: format!("reading the temporary file: {e}") };
        let mut chunks = std::pin::pin!(listing.chunks(PART));
        if listing.len() <= PART as u64 {
            let bytes = chunks.try_next().await.map_err(read_err)?.unwrap_or_default();
            return self.put(path, bytes).await;
        }
        let upload = self.store.put_multipart(path).await.map_err(store_err(format!("writing {path}")))?;
        let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, PART);
        while let Some(chunk) = chunks.try_next().await.map_err(read_err)? {
            if let Err(e) = writer.wait_for_capacity(4).await {
                let _ = writer.abort().await;
                return Err(write_err(e));
            }
            writer.put(chunk);
        }
        writer.finish().await.map_err(write_err)?;
        Ok(())
    }

    /// Commits a backup: checks that its folder holds this run's claim and every part
    /// the manifest names with its size (a concurrent retention, or a run that took the
    /// same id, may have removed something), then writes the manifest, last.
    pub async fn commit(&self, manifest: &Manifest, holder: &str, parts: &[(String, u64)]) -> Result<(), CatalogError> {
        let id = &manifest.backup_id;
        let prefix = folder_prefix(id);
        let present: std::collections::HashMap<String, u64> = self
            .store
            .list(Some(&prefix))
            .map_ok(|m| (m.location.as_ref().strip_prefix(&format!("{prefix}/")).unwrap_or(m.location.as_ref()).to_string(), m.size))
            .try_collect()
            .await
            .map_err(store_err(format!("listing backups/{id} before the commit")))?;
        let Some(claimed_by) = self.claim_holder(id).await? else {
            return Err(CatalogError::Incomplete { id: id.clone(), detail: format!("its {} is gone (removed by a retention run?)", BackupFile::Claim.name()) });
        };
        if claimed_by != holder {
            return Err(CatalogError::ClaimLost { id: id.clone(), holder: claimed_by });
        }
        for (file, size) in parts {
            match present.get(file) {
                Some(s) if s == size => {}
                Some(s) => return Err(CatalogError::Incomplete { id: id.clone(), detail: format!("{file} holds {s} bytes, {size} were written") }),
                None => return Err(CatalogError::Incomplete { id: id.clone(), detail: format!("{file} is missing") }),
            }
        }
        let json = serde_json::to_vec_pretty(manifest).map_err(|e| CatalogError::Corrupt { what: "the manifest".into(), detail: e.to_string() })?;
        self.put(&BackupFile::Manifest.path(id), Bytes::from(json)).await
    }

    /// Who claimed a backup id (None: no claim; an unreadable claim names nobody).
    async fn claim_holder(&self, id: &str) -> Result<Option<String>, CatalogError> {
        match self.store.get(&BackupFile::Claim.path(id)).await {
            Ok(r) => {
                let bytes = r.bytes().await.map_err(store_err(format!("reading the claim of {id}")))?;
                let holder = serde_json::from_slice::<serde_json::Value>(&bytes).ok().and_then(|v| v["holder"].as_str().map(str::to_string));
                Ok(Some(holder.unwrap_or_default()))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_err(format!("reading the claim of {id}"))(e)),
        }
    }

    /// Records a damaged pool blob (idempotent: one record per blob).
    pub async fn record_damage(&self, record: &DamageRecord) -> Result<Path, CatalogError> {
        let json = serde_json::to_vec(record).map_err(|e| CatalogError::Corrupt { what: "a damage record".into(), detail: e.to_string() })?;
        let path = damage_path(&record.blob);
        self.put(&path, Bytes::from(json)).await?;
        Ok(path)
    }

    /// Every damage record, with its path (to clear it once healed). An unreadable
    /// record is skipped: it can only cost a reuse, never a copy.
    pub async fn damage_records(&self) -> Result<Vec<(Path, DamageRecord)>, CatalogError> {
        let paths: Vec<Path> =
            self.store.list(Some(&Path::from(DAMAGE_DIR))).map_ok(|m| m.location).try_collect().await.map_err(store_err("listing damage records"))?;
        let mut records = Vec::new();
        for path in paths {
            let bytes = match self.store.get(&path).await {
                Ok(r) => r.bytes().await.map_err(store_err(format!("reading {path}")))?,
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(store_err(format!("reading {path}"))(e)),
            };
            if let Ok(record) = serde_json::from_slice(&bytes) {
                records.push((path, record));
            }
        }
        Ok(records)
    }

    /// Deletes damage records a committed backup has healed.
    pub async fn clear_damage(&self, paths: &[Path]) {
        for path in paths {
            if let Err(e) = self.store.delete(path).await {
                tracing::warn!(record = %path, error = %e, "could not clear a damage record; the next run copies that object again");
            }
        }
    }

    /// Removes the folder of a run that failed before its commit, if the claim in it is
    /// still `holder`'s (never another run's, never a committed backup). What cannot be
    /// removed now is collected by retention after GC_GRACE.
    pub async fn abandon(&self, id: &str, holder: &str) {
        let ours = matches!(self.claim_holder(id).await, Ok(Some(h)) if h == holder);
        let committed = self.store.head(&BackupFile::Manifest.path(id)).await.is_ok();
        if !ours || committed {
            return;
        }
        match self.delete_backup(id).await {
            Ok(()) => tracing::info!(backup_id = id, "the failed run's partial folder was removed"),
            Err(e) => tracing::warn!(backup_id = id, error = %e, "could not remove the failed run's partial folder; retention collects it after GC_GRACE"),
        }
    }

    /// Deletes a backup folder, manifest first: a half-deleted backup is never complete.
    pub async fn delete_backup(&self, id: &str) -> Result<(), CatalogError> {
        match self.store.delete(&BackupFile::Manifest.path(id)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(store_err(format!("deleting the manifest of {id}"))(e)),
        }
        self.delete_under(&folder_prefix(id), &format!("backups/{id}")).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn ids_sort_by_time() {
        let a = Utc.with_ymd_and_hms(2026, 11, 21, 2, 0, 0).single().expect("valid");
        assert_eq!(backup_id(a, 1), "20261121T020000Z");
        assert_eq!(backup_id(a, 2), "20261121T020000Z-2");
        let b = a + chrono::Duration::days(1);
        assert!(backup_id(a, 2) < backup_id(b, 1));
    }

    /// docs/FORMAT.md's Layout, key by key: this module is the only one that spells it.
    #[test]
    fn every_key_is_where_format_md_puts_it() {
        use sha2::Digest;
        let t = Utc.with_ymd_and_hms(2026, 11, 21, 2, 0, 0).single().expect("valid");
        let id = backup_id(t, 1);
        let files = [
            (BackupFile::Claim, "claim.json"),
            (BackupFile::Probe, "preflight-probe"),
            (BackupFile::Manifest, "manifest.json"),
            (BackupFile::Dump("pachyderm".into()), "databases/pachyderm.pgdump"),
            (BackupFile::AgeDump("pachyderm".into()), "databases/pachyderm.pgdump.age"),
            (BackupFile::Listing, "objects.jsonl.zst"),
            (BackupFile::cluster_object("deployments", "pachd"), "cluster/deployments/pachd.json"),
            (BackupFile::helm_values("pachyderm"), "cluster/helm/pachyderm-values.json"),
            (BackupFile::ShardListing(7), "shards/7.jsonl.zst"),
            (BackupFile::ShardSummary(7), "shards/7.json"),
            (BackupFile::Checksums, "checksums.jsonl.zst"),
        ];
        let catalog = Catalog::new(Arc::new(object_store::memory::InMemory::new()));
        let folder = catalog.folder(&id);
        for (file, name) in &files {
            assert_eq!(file.name(), *name);
            assert_eq!(file.path(&id).as_ref(), format!("backups/20261121T020000Z/{name}"));
            assert_eq!(folder.path(file), folder.recorded(name), "a reader finds {name} where the writer put it");
        }
        assert_eq!(folder.to_string(), "backups/20261121T020000Z/");
        assert_eq!(catalog.check_folder(t).path(&BackupFile::Probe).as_ref(), "backups/check-20261121T020000Z/preflight-probe");
        assert!(BackupFile::is_helm_values(&BackupFile::helm_values("pachyderm").name()));
        assert!(!BackupFile::is_helm_values(&BackupFile::cluster_object("configmaps", "helm").name()));
        assert_eq!(Path::from(LOCK).as_ref(), "lock.json");
        let blob = blob_key("chunk/ab.0000000000000001", Some("\"e\""), t, 1);
        let tag = hex::encode(&sha2::Sha256::digest(b"etag:e:1")[..8]);
        assert_eq!(blob, format!("blobs/chunk/ab.0000000000000001@{tag}"));
        assert_eq!(fresh_blob_key(&blob, &id), format!("{blob}.20261121T020000Z"));
        let name = hex::encode(&sha2::Sha256::digest(blob.as_bytes())[..16]);
        assert_eq!(damage_path(&blob).as_ref(), format!("damage/{name}.json"));
    }

    #[tokio::test]
    async fn an_id_claimed_in_a_second_follows_every_folder_of_that_second() {
        let catalog = Catalog::new(Arc::new(object_store::memory::InMemory::new()));
        let time = Utc.with_ymd_and_hms(2026, 11, 21, 2, 0, 0).single().expect("a time");
        assert_eq!(catalog.claim_backup_id(time, "a").await.expect("claim"), "20261121T020000Z");
        assert_eq!(catalog.claim_backup_id(time, "b").await.expect("claim"), "20261121T020000Z-2");
        // The first folder of the second deleted (retention, a dead run swept): the next
        // claim of that second still comes after -2, never before it.
        catalog.put_file("20261121T020000Z-10", &BackupFile::helm_values("x"), Bytes::from_static(b"{}")).await.expect("put");
        catalog.store.delete(&BackupFile::Claim.path("20261121T020000Z")).await.expect("delete");
        assert_eq!(catalog.claim_backup_id(time, "c").await.expect("claim"), "20261121T020000Z-11");
        let ids: Vec<String> = catalog.entries().await.expect("entries").into_iter().map(|e| e.id).collect();
        assert_eq!(ids, ["20261121T020000Z-2", "20261121T020000Z-10", "20261121T020000Z-11"], "in time order, not string order");
        assert_eq!(id_attempt("20261121T020000Z-2x", "20261121T020000Z"), None);
        assert_eq!(id_attempt("20261121T0200001Z", "20261121T020000Z"), None);
    }

    #[tokio::test]
    async fn the_catalog_writes_and_the_pool_lists_where_the_layout_says() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let catalog = Catalog::new(store.clone());
        let id = "20261121T020000Z";
        catalog.put_file(id, &BackupFile::helm_values("pachyderm"), Bytes::from_static(b"{}")).await.expect("put");
        let (listing, _) = ListingWriter::new().and_then(ListingWriter::finish).expect("an empty listing");
        catalog.put_listing(id, &listing).await.expect("put the listing");
        let blob = blob_key("chunk/a", None, Utc::now(), 1);
        let record = DamageRecord { blob: blob.clone(), problem: "missing".into(), found_at: Utc::now(), backup_id: id.into() };
        let damage = catalog.record_damage(&record).await.expect("record");
        store.put(&recorded_path(&blob), PutPayload::from_static(b"x")).await.expect("put a blob");
        let mut keys: Vec<String> = store.list(None).map_ok(|m| m.location.to_string()).try_collect().await.expect("list");
        keys.sort();
        let mut want =
            vec![BackupFile::helm_values("pachyderm").path(id).to_string(), BackupFile::Listing.path(id).to_string(), damage.to_string(), blob.clone()];
        want.sort();
        assert_eq!(keys, want);
        let pooled: Vec<String> = catalog.pool().list().map_ok(|m| m.location.to_string()).try_collect().await.expect("list the pool");
        assert_eq!(pooled, vec![blob.clone()]);
        assert_eq!(catalog.read_file(id, "cluster/helm/pachyderm-values.json").await.expect("read").as_ref(), b"{}");
        catalog.pool().delete(vec![recorded_path(&blob), recorded_path("blobs/gone@0")]).await.expect("a blob already gone is no error");
        assert!(catalog.pool().list().try_next().await.expect("list").is_none());
    }

    #[test]
    fn a_changed_object_is_a_new_blob() {
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().expect("valid");
        let k = "chunk/ab.0000000000000001";
        assert_eq!(blob_key(k, Some("\"e1\""), t, 10), blob_key(k, Some("e1"), t, 10));
        assert_ne!(blob_key(k, Some("e1"), t, 10), blob_key(k, Some("e2"), t, 10));
        assert_ne!(blob_key(k, Some("e1"), t, 10), blob_key(k, Some("e1"), t, 11));
        assert_ne!(blob_key(k, None, t, 10), blob_key(k, None, t + chrono::Duration::seconds(1), 10));
        assert!(blob_key(k, None, t, 10).starts_with("blobs/chunk/ab.0000000000000001@"));
        // What object_store stores is what the listing records: no encoding on the way.
        let odd = blob_key("dir/we%ird~key", Some("e"), t, 1);
        assert_eq!(recorded_path(&odd).as_ref(), odd);
    }

    #[test]
    fn a_listing_verifies_over_the_bytes_read_whatever_their_spacing() {
        use sha2::Digest;
        // Written by another tool to FORMAT.md's spec, with spaces serde would not write.
        let text = "{\"key\": \"a\", \"size\": 1, \"etag\": null, \"blob\": \"blobs/a@0\", \"sha256\": \"00\", \"since\": \"b1\"}\n";
        let objects = |count, sha: &str| ObjectsEntry {
            mode: ObjectsMode::Copy,
            index: Some(ObjectsIndex::Listing),
            listing: Some(BackupFile::Listing.name()),
            listing_sha256: Some(sha.into()),
            counts: ObjectCounts { count, ..Default::default() },
        };
        let sha = hex::encode(sha2::Sha256::digest(text.as_bytes()));
        let read = |bytes: &[u8]| {
            let mut r = ListingReader::new(&Listing::from_bytes(&zstd::encode_all(bytes, 3).expect("zstd")).expect("spill"), "t".into()).expect("decodes");
            while r.next_record().expect("record").is_some() {}
            r
        };
        read(text.as_bytes()).verify_whole(&objects(1, &sha)).expect("verifies");
        assert!(read(text.as_bytes()).verify_whole(&objects(2, &sha)).is_err(), "count");
        assert!(read(text.as_bytes()).verify_whole(&objects(1, "00")).is_err(), "sha");
        // A written listing carries the frame checksum: a flipped bit fails the decode.
        let mut w = ListingWriter::new().expect("a temporary file");
        w.push(&ObjectRecord {
            key: "a".into(),
            size: 1,
            etag: None,
            blob: "blobs/a@0".into(),
            sha256: Some("00".into()),
            blob_etag: None,
            since: "b1".into(),
        })
        .expect("push");
        let (bytes, _) = w.finish().expect("finish");
        let mut flipped = bytes.bytes();
        let at = flipped.len() - 6;
        flipped[at] ^= 1;
        let mut r = ListingReader::new(&Listing::from_bytes(&flipped).expect("spill"), "t".into()).expect("header");
        let mut failed = false;
        loop {
            match r.next_record() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        assert!(failed, "a flipped bit in a checksummed frame is found");
    }

    #[test]
    fn listing_round_trips_and_refuses_disorder() {
        let mut w = ListingWriter::new().expect("a temporary file");
        let r = |k: &str| ObjectRecord {
            key: k.into(),
            size: 1,
            etag: None,
            blob: format!("blobs/{k}@0"),
            sha256: Some("00".into()),
            blob_etag: None,
            since: "b1".into(),
        };
        w.push(&r("a")).expect("first");
        w.push(&r("b")).expect("second");
        assert!(w.push(&r("a")).is_err());
        let (bytes, sha) = w.finish().expect("finish");
        assert_eq!(sha.len(), 64);
        let mut reader = ListingReader::new(&bytes, "test".into()).expect("decodes");
        assert_eq!(reader.next_record().expect("ok"), Some(r("a")));
        assert_eq!(reader.next_record().expect("ok"), Some(r("b")));
        assert_eq!(reader.next_record().expect("ok"), None);
        assert_eq!(ListingReader::empty().expect("empty").next_record().expect("ok"), None);
    }

    #[test]
    fn pending_records_are_filled_from_the_checksums_of_their_own_blob_only() {
        let record = |k: &str, sha: Option<&str>| ObjectRecord {
            key: k.into(),
            size: 1,
            etag: None,
            blob: format!("blobs/{k}@0"),
            sha256: sha.map(str::to_string),
            blob_etag: sha.is_none().then(|| "e".into()),
            since: "b1".into(),
        };
        let mut w = ListingWriter::new().expect("a temporary file");
        for r in [record("a", None), record("b", Some("bb")), record("c", None), record("d", None), record("e", None)] {
            w.push(&r).expect("push");
        }
        let (listing, sha) = w.finish().expect("finish");
        // Recorded for a (its blob), for c under another blob (a later copy), none for d,
        // and for a key the listing does not hold.
        let mut c = ListingWriter::new().expect("a temporary file");
        for (k, blob) in [("a", "blobs/a@0"), ("c", "blobs/c@0.2026"), ("cc", "blobs/cc@0"), ("e", "blobs/e@0")] {
            c.push_checksum(&ChecksumRecord { key: k.into(), blob: blob.into(), sha256: format!("sum-{k}") }).expect("push");
        }
        let (checksums, _) = c.finish().expect("finish");
        let mut reader = ListingReader::new(&listing.with_checksums(checksums), "t".into()).expect("decodes");
        let read: Vec<Option<String>> = reader.by_ref().map(|r| r.expect("record").sha256).collect();
        assert_eq!(read, [Some("sum-a".into()), Some("bb".into()), None, None, Some("sum-e".into())]);
        let counts = ObjectCounts { count: 5, pending: 4, ..Default::default() };
        let entry = ObjectsEntry { mode: ObjectsMode::Copy, index: None, listing: None, listing_sha256: Some(sha), counts };
        reader.verify_whole(&entry).expect("the lines as stored are what the manifest describes");
        assert_eq!(format_version(&counts), 2);
        assert_eq!(format_version(&ObjectCounts { count: 5, ..Default::default() }), 1);
    }
}
