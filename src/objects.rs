//! Object stores: opening buckets, preflight probes, and the streamed, parallel copy of
//! the source bucket into the target's blob pool.
//!
//! Memory stays flat in the size of the bucket: the source listing ([`scan`]) or the
//! database's live chunks is consumed as a stream and merge-joined, in key order, with a
//! reference listing streamed from its temporary file; only the transfers in flight and
//! the records waiting for an earlier key to finish are held.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};
use tracing::{debug, warn};

use crate::catalog::{self, ListingReader, ListingWriter, ObjectCounts, ObjectRecord};
use crate::config::{CopyMode, StoreSettings};
use crate::object_lock::{self, ObjectLock};
use crate::progress::{Counters, Progress};
use crate::s3::{self, PutFailure};
use crate::scan;
use crate::server_copy::{self, Copied, ServerCopy};

/// Objects up to this size are sent in one PUT; larger ones in parts of this size,
/// PARTS_IN_FLIGHT at a time (rclone's defaults: measured faster and leaner than 8 MiB × 2).
pub const PART_SIZE: usize = 5 * 1024 * 1024;
/// Parts of one object in flight at once.
const PARTS_IN_FLIGHT: usize = 4;
const ATTEMPTS: u32 = 3;

/// What the bodies held in memory (read whole before one PUT, or the parts of a
/// multipart upload) may take at once across the process, whatever COPY_CONCURRENCY:
/// a transfer that would go past it waits. Streamed PUTs hold next to nothing and take
/// none of it. Below the chart's 512Mi limit with room for the rest of the process.
pub const BUFFER_BUDGET_MIB: u32 = 256;

static BUFFERS: Buffers = Buffers::new(BUFFER_BUDGET_MIB);

/// A budget of MiB that transfers hold while their bodies are in memory.
pub struct Buffers {
    permits: tokio::sync::Semaphore,
    total: u32,
    high_water: std::sync::atomic::AtomicU32,
}

impl Buffers {
    pub const fn new(mib: u32) -> Self {
        Buffers { permits: tokio::sync::Semaphore::const_new(mib as usize), total: mib, high_water: std::sync::atomic::AtomicU32::new(0) }
    }

    /// Waits until `bytes` (in whole MiB, at most the whole budget) may be held, and
    /// holds them until the guard is dropped.
    pub async fn hold(&self, bytes: u64) -> Option<tokio::sync::SemaphorePermit<'_>> {
        let mib = u32::try_from(bytes.div_ceil(1024 * 1024)).unwrap_or(u32::MAX).clamp(1, self.total.max(1));
        // The semaphore is never closed: an error cannot happen, and would only mean
        // going without the budget.
        let permit = self.permits.acquire_many(mib).await.ok()?;
        let in_use = self.total.saturating_sub(u32::try_from(self.permits.available_permits()).unwrap_or(u32::MAX));
        self.high_water.fetch_max(in_use, std::sync::atomic::Ordering::Relaxed);
        Some(permit)
    }

    /// The most MiB held at once so far.
    pub fn high_water_mib(&self) -> u32 {
        self.high_water.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The process's budget for bodies held in memory ([`BUFFER_BUDGET_MIB`]).
pub fn buffers() -> &'static Buffers {
    &BUFFERS
}

#[derive(Debug, thiserror::Error)]
pub enum ObjectsError {
    #[error("cannot open {variable} ({url}): {detail}")]
    Open { variable: &'static str, url: String, detail: String },
    #[error("{side} bucket failed while {what}: {source}")]
    Store {
        side: &'static str,
        what: String,
        #[source]
        source: object_store::Error,
    },
    #[error(
        "object {key} as read does not match what its store says it holds ({detail}): damaged on the way, or changed at the source (Pachyderm objects are immutable: is something else writing to the bucket?); it was not stored"
    )]
    Mismatch { key: String, detail: String, read_sha256: String },
    #[error("the source listing is not in key order at {0:?}; the store does not list as S3 does")]
    Unordered(String),
    #[error(
        "chunk {key} is live in Pachyderm's database (storage.chunk_objects) but the source bucket has no such object: Pachyderm's metadata and its bucket disagree, so no whole backup can be made; check the bucket's lifecycle rules and whether SOURCE_URL is the bucket pachd uses"
    )]
    MissingChunk { key: String },
    #[error("reading the live chunks from the database failed: {0}")]
    Index(String),
    #[error(transparent)]
    Catalog(#[from] catalog::CatalogError),
    #[error(transparent)]
    ObjectLock(#[from] crate::object_lock::LockError),
    #[error("reading {what} failed: {source}")]
    Read {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Whether opening a local directory (`file://`) as a bucket creates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// A bucket written to (the backup bucket of a run, a restore's): created if absent.
    IfMissing,
    /// A bucket that must already be there: a missing directory is a wrong URL.
    Never,
}

/// Opens a bucket, rooted at the URL's prefix.
pub fn open(settings: &StoreSettings, create: Create) -> Result<Arc<dyn ObjectStore>, ObjectsError> {
    let open_err = |detail: String| ObjectsError::Open { variable: settings.variable, url: settings.url.to_string(), detail };
    if settings.url.scheme() == "file" {
        let dir = settings.url.to_file_path().map_err(|()| open_err("not a local path".into()))?;
        if create == Create::IfMissing {
            std::fs::create_dir_all(&dir).map_err(|e| open_err(format!("cannot create {}: {e}", dir.display())))?;
        } else if !dir.is_dir() {
            return Err(open_err(format!("{} is not a directory", dir.display())));
        }
        let store = object_store::local::LocalFileSystem::new_with_prefix(&dir).map_err(|e| open_err(e.to_string()))?;
        return Ok(Arc::new(store));
    }
    // As object_store's `parse_url_opts` builds it, with the HTTP client's options
    // given whole so that they carry the bucket's CA bundle.
    let (scheme, prefix) = object_store::ObjectStoreScheme::parse(&settings.url).map_err(|e| open_err(e.to_string()))?;
    let built: Result<Box<dyn ObjectStore>, object_store::Error> = match scheme {
        object_store::ObjectStoreScheme::AmazonS3 => crate::s3::s3_builder(settings).build().map(|s| Box::new(s) as _),
        object_store::ObjectStoreScheme::GoogleCloudStorage => crate::gcs::builder(settings).build().map(|s| Box::new(s) as _),
        object_store::ObjectStoreScheme::MicrosoftAzure => crate::azure::builder(settings).build().map(|s| Box::new(s) as _),
        _ => {
            let options = settings.options.iter().map(|(k, v)| (k.clone(), v.expose().to_string()));
            object_store::parse_url_opts(&settings.url, options).map(|(store, _)| store)
        }
    };
    let store = built.map_err(|e| open_err(e.to_string()))?;
    if prefix.as_ref().is_empty() { Ok(Arc::from(store)) } else { Ok(Arc::new(PrefixStore::new(store, prefix))) }
}

/// The source bucket of a run, and its server-side copier when objects are copied by
/// the store ([`server_copy::route`]). Derefs to the store: listings, probes and HEADs
/// go through object_store.
pub struct Source {
    store: Arc<dyn ObjectStore>,
    server: Option<ServerCopy>,
    /// The PUTs of what is streamed, when the pool is an S3 bucket.
    put: Option<s3::Put>,
    /// Its objects' ETags are MD5s of their content (S3, GCS), so one the listing left
    /// out is worth a HEAD: the bytes are then checked against it.
    md5_etags: bool,
}

impl Source {
    /// Opens the source bucket and decides, once, how its objects reach `target`.
    pub fn open(settings: &StoreSettings, target: &StoreSettings, mode: CopyMode) -> Result<Source, ObjectsError> {
        Ok(Source {
            store: open(settings, Create::Never)?,
            server: server_copy::open(server_copy::route(mode, settings, target), settings, target),
            put: s3::Put::open(target),
            md5_etags: matches!(settings.url.scheme(), "s3" | "s3a" | "gs"),
        })
    }
}

impl Source {
    /// Preflight: finds out whether the backup bucket (its Object Lock `lock`) checks
    /// Content-MD5 (then the copy leaves the MD5 check to it), with a probe at `key`;
    /// without it, the copy checks every MD5 itself.
    pub async fn probe_content_md5(&self, key: &Path, lock: &ObjectLock) {
        if let Some(put) = &self.put {
            put.probe(key.as_ref(), lock).await;
        }
    }
}

/// A source read by this process only (no server-side copy).
impl From<Arc<dyn ObjectStore>> for Source {
    fn from(store: Arc<dyn ObjectStore>) -> Source {
        Source { store, server: None, put: None, md5_etags: false }
    }
}

impl std::ops::Deref for Source {
    type Target = Arc<dyn ObjectStore>;

    fn deref(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }
}

/// Opens the backup bucket after reading its Object Lock: a locked bucket takes writes
/// only with checksums, and retention must leave what the lock protects.
pub async fn open_backup_bucket(settings: &StoreSettings, create: Create) -> Result<(Arc<dyn ObjectStore>, ObjectLock), ObjectsError> {
    let lock = object_lock::detect(settings).await?;
    match &lock {
        ObjectLock::Off => return Ok((open(settings, create)?, lock)),
        ObjectLock::Unknown(why) => warn!(
            variable = settings.variable,
            "cannot tell whether the backup bucket has Object Lock ({why}): uploads carry checksums as a locked bucket requires, and retention may put delete markers over locked versions; grant s3:GetBucketObjectLockConfiguration"
        ),
        ObjectLock::On { .. } => tracing::info!(variable = settings.variable, object_lock = %lock, "the backup bucket has S3 Object Lock"),
    }
    let store =
        object_lock::open_locked(settings).map_err(|detail| ObjectsError::Open { variable: settings.variable, url: settings.url.to_string(), detail })?;
    Ok((store, lock))
}

/// Whether listings of this store come sorted by key (the cloud APIs guarantee it; a
/// local directory walk does not).
pub fn lists_sorted(settings: &StoreSettings) -> bool {
    settings.url.scheme() != "file"
}

/// Preflight: the bucket can be listed.
pub async fn probe_listable(store: &Arc<dyn ObjectStore>, side: &'static str) -> Result<(), ObjectsError> {
    store.list(None).next().await.transpose().map_err(|source| ObjectsError::Store { side, what: "listing (preflight)".into(), source })?;
    Ok(())
}

/// Preflight: a probe object (at `path`) can be written, read back and deleted.
pub async fn probe_writable(store: &Arc<dyn ObjectStore>, side: &'static str, path: &Path) -> Result<(), ObjectsError> {
    let err = |what: &str| {
        let what = what.to_string();
        move |source| ObjectsError::Store { side, what, source }
    };
    store.put(&path, PutPayload::from_static(b"probe")).await.map_err(err("writing a probe object (preflight)"))?;
    store.head(&path).await.map_err(err("reading the probe object back (preflight)"))?;
    store.delete(&path).await.map_err(err("deleting the probe object (preflight)"))?;
    Ok(())
}

static OFFSET_IGNORED_LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Listing pages fetched again after a failure, from the last key received.
const LIST_ATTEMPTS: u32 = 5;

/// Lists `prefix` (the keys above `after`, when given), resuming after the last key
/// received when a page fails (a reset or a cut body on page 4,000 of a large bucket
/// must not fail the run). Only stores that list in key order can resume from a key;
/// the others are listed once.
pub fn list_resuming(
    store: Arc<dyn ObjectStore>,
    prefix: Option<Path>,
    after: Option<Path>,
    sorted: bool,
) -> futures::stream::BoxStream<'static, Result<ObjectMeta, object_store::Error>> {
    struct State {
        store: Arc<dyn ObjectStore>,
        prefix: Option<Path>,
        pages: futures::stream::BoxStream<'static, Result<ObjectMeta, object_store::Error>>,
        last: Option<Path>,
        /// The key the pages were asked to start after.
        offset: Option<Path>,
        failures: u32,
        sorted: bool,
        done: bool,
    }
    let pages = match &after {
        Some(after) => store.list_with_offset(prefix.as_ref(), after),
        None => store.list(prefix.as_ref()),
    };
    let state = State { store, prefix, pages, last: after.clone(), offset: after, failures: 0, sorted, done: false };
    futures::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        loop {
            match s.pages.next().await {
                // A store that ignores the offset (S3's start-after, Azure's startFrom:
                // Azurite, fake-gcs-server, some S3-compatible servers) lists from the
                // first key: what it should have skipped is skipped here.
                Some(Ok(meta)) if s.offset.as_ref().is_some_and(|o| meta.location <= *o) => {
                    if !OFFSET_IGNORED_LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        warn!(
                            offset = s.offset.as_ref().map(|p| p.to_string()).as_deref(),
                            key = %meta.location,
                            "the store ignores the listing offset (start-after): each range is listed from the bucket's first key and the keys before it skipped here, which is slower (said once)"
                        );
                    }
                }
                Some(Ok(meta)) => {
                    s.last = Some(meta.location.clone());
                    s.failures = 0;
                    return Some((Ok(meta), s));
                }
                Some(Err(e)) if s.sorted && s.failures + 1 < LIST_ATTEMPTS && retriable(&e) => {
                    s.failures += 1;
                    warn!(error = %e, after = s.last.as_ref().map(|p| p.to_string()).as_deref(), attempt = s.failures, "a listing page failed: listing again from the last key received");
                    tokio::time::sleep(Duration::from_millis(200 << s.failures)).await;
                    s.pages = match &s.last {
                        Some(last) => s.store.list_with_offset(s.prefix.as_ref(), last),
                        None => s.store.list(s.prefix.as_ref()),
                    };
                    s.offset = s.last.clone();
                }
                Some(Err(e)) => {
                    s.done = true;
                    return Some((Err(e), s));
                }
                None => return None,
            }
        }
    })
    .boxed()
}

/// Whether a store error may pass on retry (not a refusal or an absence).
fn retriable(e: &object_store::Error) -> bool {
    !matches!(
        e,
        object_store::Error::NotFound { .. }
            | object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
            | object_store::Error::Precondition { .. }
            | object_store::Error::AlreadyExists { .. }
            | object_store::Error::NotImplemented { .. }
            | object_store::Error::NotSupported { .. }
    )
}

/// What to do with one source object, decided from the reference listing alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Reuse(ObjectRecord),
    Copy {
        key: String,
        size: u64,
        etag: Option<String>,
        blob: String,
    },
    /// A live chunk the reference does not hold (or holds damaged): its size and tag are
    /// read from the source (HEAD) before it is copied, under a fresh key if `fresh`.
    Fetch {
        key: String,
        fresh: bool,
    },
}

/// One object to back up, as its index gives it.
pub enum Entry {
    /// From a listing of the source bucket: what the store says it holds.
    Listed(ObjectMeta),
    /// From Pachyderm's database: a chunk key, immutable once uploaded.
    Live(String),
}

/// Merge-joins the source listing (in key order) with a reference listing (in key
/// order): an object whose key and blob tag are already recorded is reused, unless
/// its blob is known damaged; then, and for every copy of a `--full` run, it is copied
/// under a fresh key (`catalog::fresh_blob_key`), so no blob is ever overwritten.
pub struct Planner {
    reference: ListingReader,
    pending: Option<ObjectRecord>,
    last_key: Option<String>,
    heal: Heal,
}

/// Reused blobs a run checks (HEAD: present, size as recorded) before it reuses any.
pub const REUSE_SAMPLE: usize = 64;

/// Bad blobs past which the pool is treated as lost (`run --full`) rather than healed
/// one record at a time: a wiped pool must not mean millions of records held and written.
pub const WIDESPREAD_DAMAGE: usize = 1000;

/// What `check_reused` found.
#[derive(Debug, Default)]
pub struct ReuseCheck {
    pub checked: usize,
    /// Missing or of the wrong size, with what is wrong (at most WIDESPREAD_DAMAGE).
    pub bad: Vec<(ObjectRecord, String)>,
    /// More than WIDESPREAD_DAMAGE bad blobs: copy everything again.
    pub widespread: bool,
}

/// The hot-path guard against damage nobody recorded (a blob deleted by a lifecycle rule
/// or by hand): a sample of the blobs the reference listing names, chosen afresh each
/// run (the `sample` lowest hashes of run id and blob), checked for presence and size.
/// One bad blob in the sample means the pool was damaged: then every blob is checked.
/// Returns the bad records and what is wrong with each. Only a missing blob or a wrong
/// size counts: an unreadable answer is a store problem, not damage.
pub async fn check_reused(
    store: &Arc<dyn ObjectStore>,
    reference: &catalog::Listing,
    what: &str,
    salt: &str,
    sample: usize,
    concurrency: usize,
) -> Result<ReuseCheck, ObjectsError> {
    let reader = || ListingReader::new(reference, what.to_string());
    let mut lowest: BTreeMap<[u8; 16], ObjectRecord> = BTreeMap::new();
    for record in reader()? {
        let record = record?;
        let mut rank = [0u8; 16];
        rank.copy_from_slice(&Sha256::new().chain_update(salt).chain_update(&record.blob).finalize()[..16]);
        lowest.insert(rank, record);
        if lowest.len() > sample {
            lowest.pop_last();
        }
    }
    let sampled: Vec<Result<ObjectRecord, catalog::CatalogError>> = lowest.into_values().map(Ok).collect();
    let sample = heads(store, sampled.into_iter(), concurrency).await?;
    if sample.bad.is_empty() {
        return Ok(sample);
    }
    warn!(sampled = sample.checked, bad = sample.bad.len(), "reused blobs are missing or the wrong size: checking every blob the previous backup names");
    heads(store, reader()?, concurrency).await
}

/// HEADs the blob of every record, streamed, until WIDESPREAD_DAMAGE bad ones.
async fn heads(
    store: &Arc<dyn ObjectStore>,
    records: impl Iterator<Item = Result<ObjectRecord, catalog::CatalogError>>,
    concurrency: usize,
) -> Result<ReuseCheck, ObjectsError> {
    let mut checked = 0;
    let mut bad = Vec::new();
    let results = futures::stream::iter(records)
        .map(|r| async move {
            let r = r?;
            let problem = match store.head(&catalog::recorded_path(&r.blob)).await {
                Ok(m) if m.size == r.size => None,
                Ok(m) => Some(format!("size {} instead of {}", m.size, r.size)),
                Err(object_store::Error::NotFound { .. }) => Some("missing".to_string()),
                Err(e) => {
                    warn!(blob = %r.blob, error = %e, "could not check a reused blob");
                    None
                }
            };
            Ok::<_, ObjectsError>(problem.map(|p| (r, p)))
        })
        .buffer_unordered(concurrency.max(1));
    futures::pin_mut!(results);
    while let Some(result) = results.next().await {
        checked += 1;
        bad.extend(result?);
        if bad.len() > WIDESPREAD_DAMAGE {
            bad.truncate(WIDESPREAD_DAMAGE);
            return Ok(ReuseCheck { checked, bad, widespread: true });
        }
    }
    Ok(ReuseCheck { checked, bad, widespread: false })
}

/// What the pool is not trusted with, for one run.
#[derive(Debug, Clone, Default)]
pub struct Heal {
    /// Blobs `verify` found missing or wrong.
    pub damaged: std::collections::HashSet<String>,
    /// `run --full`: every copy under a fresh key.
    pub full: bool,
    /// The run's backup id: the fresh keys' suffix.
    pub backup_id: String,
}

impl Planner {
    pub fn new(reference: ListingReader) -> Self {
        Planner::healing(reference, Heal::default())
    }

    pub fn healing(reference: ListingReader, heal: Heal) -> Self {
        Planner { reference, pending: None, last_key: None, heal }
    }

    pub fn plan(&mut self, key: &str, size: u64, etag: Option<&str>, last_modified: DateTime<Utc>) -> Result<Plan, ObjectsError> {
        if self.last_key.as_deref().is_some_and(|k| k >= key) {
            return Err(ObjectsError::Unordered(key.to_string()));
        }
        self.last_key = Some(key.to_string());
        let blob = catalog::blob_key(key, etag, last_modified, size);
        loop {
            if self.pending.is_none() {
                self.pending = self.reference.next_record()?;
            }
            // The same object, pooled under its key or a fresh variant of it.
            let same =
                |r: &ObjectRecord| r.key == key && r.size == size && (r.blob == blob || r.blob.strip_prefix(blob.as_str()).is_some_and(|s| s.starts_with('.')));
            match &self.pending {
                Some(r) if r.key.as_str() < key => self.pending = None,
                Some(r) if same(r) && !self.heal.damaged.contains(&r.blob) => {
                    let mut reused = r.clone();
                    reused.etag = etag.map(str::to_string);
                    self.pending = None;
                    return Ok(Plan::Reuse(reused));
                }
                Some(r) if same(r) => {
                    warn!(key, blob = %r.blob, "the pooled copy is damaged: copying the object again under a fresh key");
                    let blob = catalog::fresh_blob_key(&blob, &self.heal.backup_id);
                    self.pending = None;
                    return Ok(Plan::Copy { key: key.to_string(), size, etag: etag.map(str::to_string), blob });
                }
                _ => {
                    let blob = if self.heal.full { catalog::fresh_blob_key(&blob, &self.heal.backup_id) } else { blob };
                    return Ok(Plan::Copy { key: key.to_string(), size, etag: etag.map(str::to_string), blob });
                }
            }
        }
    }

    /// The plan for a live chunk named by the database: Pachyderm never rewrites a chunk
    /// key (a new generation is a new key), so the key alone says the reference's record
    /// is the same object. A `--full` run reuses only what it copied itself (its pre-copy).
    pub fn plan_live(&mut self, key: &str) -> Result<Plan, ObjectsError> {
        if self.last_key.as_deref().is_some_and(|k| k >= key) {
            return Err(ObjectsError::Unordered(key.to_string()));
        }
        self.last_key = Some(key.to_string());
        loop {
            if self.pending.is_none() {
                self.pending = self.reference.next_record()?;
            }
            match &self.pending {
                Some(r) if r.key.as_str() < key => self.pending = None,
                Some(r) if r.key == key => {
                    let trusted = !self.heal.damaged.contains(&r.blob) && !(self.heal.full && r.since != self.heal.backup_id);
                    let plan = if trusted { Plan::Reuse(r.clone()) } else { Plan::Fetch { key: key.to_string(), fresh: true } };
                    self.pending = None;
                    return Ok(plan);
                }
                _ => return Ok(Plan::Fetch { key: key.to_string(), fresh: self.heal.full }),
            }
        }
    }
}

/// The generation of a Pachyderm chunk key (`chunk/<hex>.<gen as %016x>`).
fn chunk_gen(key: &str) -> Option<i64> {
    let (_, generation) = key.strip_prefix("chunk/")?.rsplit_once('.')?;
    i64::from_str_radix(generation, 16).ok()
}

/// The records of `listing` whose chunk generation is past `floor`: what the pre-copy
/// holds of the chunks written since the floor was read, the reference of the pause's
/// copy (the only records it can reuse). Few: the bucket's growth during the pre-copy.
pub fn recent(listing: ListingReader, floor: i64) -> Result<catalog::Listing, ObjectsError> {
    let mut out = ListingWriter::new().map_err(|source| ObjectsError::Read { what: "the recent chunks".into(), source })?;
    for record in listing {
        let record = record?;
        if chunk_gen(&record.key).is_some_and(|g| g > floor) {
            out.push(&record).map_err(|source| ObjectsError::Read { what: "the recent chunks".into(), source })?;
        }
    }
    Ok(out.finish().map_err(|source| ObjectsError::Read { what: "the recent chunks".into(), source })?.0)
}

/// Two listings merged in key order (`newer`'s record kept for a key in both).
pub fn merge(mut older: ListingReader, mut newer: ListingReader) -> Result<catalog::Listing, ObjectsError> {
    let err = |source| ObjectsError::Read { what: "the merged reference listing".into(), source };
    let mut out = ListingWriter::new().map_err(err)?;
    let (mut a, mut b) = (older.next_record()?, newer.next_record()?);
    loop {
        let record = match (a.take(), b.take()) {
            (None, None) => break,
            (Some(x), None) => {
                a = older.next_record()?;
                x
            }
            (Some(x), Some(y)) if x.key < y.key => {
                (a, b) = (older.next_record()?, Some(y));
                x
            }
            (x, Some(y)) => {
                a = match x {
                    Some(x) if x.key == y.key => older.next_record()?,
                    x => x,
                };
                b = newer.next_record()?;
                y
            }
        };
        out.push(&record).map_err(err)?;
    }
    Ok(out.finish().map_err(err)?.0)
}

/// The source listed whole, in key order ([`scan::sorted`]: key ranges listed at once,
/// or a local directory sorted through temporary files).
pub async fn listed(source: &Arc<dyn ObjectStore>, sorted: bool) -> Result<futures::stream::BoxStream<'static, Result<Entry, ObjectsError>>, ObjectsError> {
    Ok(scan::sorted(source, sorted, scan::RUN).await?.map_ok(Entry::Listed).boxed())
}

/// What an object listed and then not found when read means to a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vanished {
    /// While Pachyderm runs (the pre-copy), its garbage collector may delete an object
    /// between listing and reading: it is left out.
    LeftOut,
    /// The object must be there (the paused capture, or the live chunks of the
    /// snapshot after the resume): the copy fails, naming it.
    Fails,
}

/// The prefix of Pachyderm's chunks in its bucket.
pub const CHUNK_PREFIX: &str = "chunk";

/// The entries of a backup indexed by the database: `live` (chunk keys in key order)
/// and whatever the source holds outside `chunk/`, listed prefix by prefix (one
/// delimited listing of the top level, then each other prefix), so `chunk/` itself is
/// never listed. Outside objects are few (Pachyderm writes none that last) and held.
pub async fn indexed<'a>(
    source: &Arc<dyn ObjectStore>,
    live: futures::stream::BoxStream<'a, Result<String, ObjectsError>>,
) -> Result<futures::stream::BoxStream<'a, Result<Entry, ObjectsError>>, ObjectsError> {
    let list_err = |source| ObjectsError::Store { side: "source", what: "listing outside chunk/".into(), source };
    let top = source.list_with_delimiter(None).await.map_err(list_err)?;
    let mut outside = top.objects;
    for prefix in top.common_prefixes.iter().filter(|p| p.as_ref() != CHUNK_PREFIX) {
        let more: Vec<ObjectMeta> = source.list(Some(prefix)).try_collect().await.map_err(list_err)?;
        outside.extend(more);
    }
    outside.sort_by(|a, b| a.location.cmp(&b.location));
    let after: Vec<_> = outside.split_off(outside.partition_point(|m| m.location.as_ref() < "chunk/"));
    let before = futures::stream::iter(outside.into_iter().map(|m| Ok(Entry::Listed(m))));
    let after = futures::stream::iter(after.into_iter().map(|m| Ok(Entry::Listed(m))));
    Ok(before.chain(live.map_ok(Entry::Live)).chain(after).boxed())
}

/// Copies what `entries` name (in key order: [`listed`], or [`indexed`] and the live
/// chunks) into the pool: every object not in `reference` is copied, the others
/// reused. A live chunk the reference does not hold is read from the source (HEAD)
/// first; one that is not there fails the copy, naming it. Returns the new listing and
/// its counts; an object counts as copied when this backup (`backup_id`) stored its
/// blob, in this call or in the pre-copy whose listing is `reference`.
/// `vanished`: what an object deleted between listing and reading means.
#[allow(clippy::too_many_arguments)]
pub async fn copy_entries(
    source: &Source,
    entries: futures::stream::BoxStream<'_, Result<Entry, ObjectsError>>,
    pool: &Arc<dyn ObjectStore>,
    reference: ListingReader,
    heal: &Heal,
    concurrency: usize,
    vanished: Vanished,
    progress: &Progress,
) -> Result<(ListingWriter, ObjectCounts), ObjectsError> {
    let backup_id = heal.backup_id.as_str();
    let mut planner = Planner::healing(reference, heal.clone());
    let mut seq = 0u64;
    let jobs = entries
        .map(|entry| {
            let plan = match entry? {
                Entry::Listed(meta) => {
                    progress.add_total(1, meta.size);
                    planner.plan(meta.location.as_ref(), meta.size, meta.e_tag.as_deref(), meta.last_modified)?
                }
                Entry::Live(key) => {
                    let plan = planner.plan_live(&key)?;
                    if let Plan::Reuse(r) = &plan {
                        progress.add_total(1, r.size);
                    }
                    plan
                }
            };
            seq += 1;
            Ok::<_, ObjectsError>((seq, plan))
        })
        .map_ok(|(seq, plan)| async move {
            let (key, size, etag, blob) = match plan {
                Plan::Reuse(record) => {
                    progress.add_done(1, 0);
                    return Ok((seq, Some(record)));
                }
                Plan::Copy { key, size, etag, blob } => (key, size, etag, blob),
                Plan::Fetch { key, fresh } => {
                    let meta = match source.head(&catalog::recorded_path(&key)).await {
                        Ok(meta) => meta,
                        Err(object_store::Error::NotFound { .. }) => return Err(ObjectsError::MissingChunk { key }),
                        Err(source) => return Err(ObjectsError::Store { side: "source", what: format!("reading the size of {key}"), source }),
                    };
                    progress.add_total(1, meta.size);
                    let blob = catalog::blob_key(&key, meta.e_tag.as_deref(), meta.last_modified, meta.size);
                    let blob = if fresh { catalog::fresh_blob_key(&blob, backup_id) } else { blob };
                    (key, meta.size, meta.e_tag, blob)
                }
            };
            let transfer = Transfer { key: &key, blob: &blob, size, etag: etag.as_deref() };
            let copied = match &source.server {
                Some(server) if server.takes(size) => copy_server_side(server, source, pool, transfer, progress).await,
                _ => stream_checked(source, pool, transfer, progress).await,
            };
            match copied {
                Ok(Stored { sha256, blob_etag }) => {
                    progress.add_done(1, 0);
                    Ok((seq, Some(ObjectRecord { key, size, etag, blob, sha256, blob_etag, since: backup_id.to_string() })))
                }
                Err(ObjectsError::Store { side: "source", source: object_store::Error::NotFound { .. }, .. }) if vanished == Vanished::LeftOut => {
                    debug!(key, "object vanished before it was copied (Pachyderm's garbage collector)");
                    Ok((seq, None))
                }
                Err(e) => Err(e),
            }
        })
        .try_buffer_unordered(concurrency);
    futures::pin_mut!(jobs);

    // Records come back out of order; the listing is written in key order.
    let mut waiting: BTreeMap<u64, Option<ObjectRecord>> = BTreeMap::new();
    let mut next = 1u64;
    let mut writer = ListingWriter::new().map_err(|source| ObjectsError::Read { what: "the new listing".into(), source })?;
    let mut stats = ObjectCounts::default();
    while let Some((seq, record)) = jobs.try_next().await? {
        waiting.insert(seq, record);
        while let Some(record) = waiting.remove(&next) {
            next += 1;
            let Some(record) = record else { continue };
            stats.count += 1;
            stats.bytes += record.size;
            stats.pending += u64::from(record.sha256.is_none());
            if record.since == backup_id {
                stats.copied += 1;
                stats.copied_bytes += record.size;
            } else {
                stats.reused += 1;
                stats.reused_bytes += record.size;
            }
            writer.push(&record).map_err(|source| ObjectsError::Read { what: "the new listing".into(), source })?;
        }
    }
    progress.totals_known();
    Ok((writer, stats))
}

/// The ETag to check a streamed object's bytes against: the listed one, or, when the
/// listing gave none (some S3-compatible servers), the object's own from a HEAD; the
/// record keeps the listed one, which names its blob.
async fn tag_to_check(source: &Source, key: &str, listed: Option<&str>) -> Result<Option<String>, ObjectsError> {
    if listed.is_some() || !source.md5_etags {
        return Ok(listed.map(str::to_string));
    }
    match source.head(&catalog::recorded_path(key)).await {
        Ok(meta) => Ok(meta.e_tag),
        Err(source) => Err(ObjectsError::Store { side: "source", what: format!("reading the ETag of {key}"), source }),
    }
}

/// One source object to copy into the pool: its key, size and listed ETag, and the
/// blob it becomes.
#[derive(Clone, Copy)]
struct Transfer<'a> {
    key: &'a str,
    blob: &'a str,
    size: u64,
    etag: Option<&'a str>,
}

/// What the pool holds of one copied object: its SHA-256 (None: pending, the store
/// copied it and gave none) and, when pending, the copy's ETag.
struct Stored {
    sha256: Option<String>,
    blob_etag: Option<String>,
}

/// One object streamed into the pool, its bytes checked against its size and ETag.
async fn stream_checked(source: &Source, pool: &Arc<dyn ObjectStore>, transfer: Transfer<'_>, progress: &Progress) -> Result<Stored, ObjectsError> {
    let Transfer { key, blob, size, etag } = transfer;
    let tag = tag_to_check(source, key, etag).await?;
    let sha256 = copy_verified(source, "source", key, pool, source.put.as_ref(), blob, Expect::listed(size, tag.as_deref()), progress).await?;
    Ok(Stored { sha256: Some(sha256), blob_etag: None })
}

/// One object copied by the store, its SHA-256 the store's (or pending, with the copy's
/// ETag), its size the listed one (the copy's ETag is the listed MD5, or a HEAD says so);
/// streamed instead when the store will not, fails, or its copy is not the listed
/// object (streaming checks the bytes themselves, and overwrites such a copy).
async fn copy_server_side(
    server: &ServerCopy,
    source: &Source,
    pool: &Arc<dyn ObjectStore>,
    transfer: Transfer<'_>,
    progress: &Progress,
) -> Result<Stored, ObjectsError> {
    let Transfer { key, blob, size, etag } = transfer;
    let stream = || stream_checked(source, pool, transfer, progress);
    let (sha256, copied_etag) = match server.copy(key, blob, etag, size).await {
        Ok(Copied::Done { sha256, etag }) => (sha256, etag),
        Ok(Copied::Missing) => {
            let source = object_store::Error::NotFound { path: key.to_string(), source: "the server-side copy found no such source object".into() };
            return Err(ObjectsError::Store { side: "source", what: format!("copying {key} server-side"), source });
        }
        Err(why) => {
            debug!(key, ?why, "streamed instead of copied server-side");
            return stream().await;
        }
    };
    let stored = |blob_etag: Option<String>| {
        progress.add_done(0, size);
        let blob_etag = if sha256.is_none() { blob_etag } else { None };
        Ok(Stored { sha256: sha256.clone(), blob_etag })
    };
    // The copy of a single-part object keeps its ETag, the MD5 of its content: the copy
    // answering with the listed one is the listed object, size included, without a HEAD.
    if let (Some(listed), Some(copied)) = (Expect::listed(size, etag).md5, copied_etag.as_deref())
        && hex::encode(listed) == copied
    {
        return stored(copied_etag.clone());
    }
    match pool.head(&catalog::recorded_path(blob)).await {
        Ok(meta) if meta.size == size => stored(copied_etag.clone().or(meta.e_tag.map(|e| e.trim_matches('"').to_string()))),
        Ok(meta) => {
            warn!(key, listed = size, copied = meta.size, "the server-side copy is not the size listed: streaming the object instead");
            stream().await
        }
        Err(source) => Err(ObjectsError::Store { side: "target", what: format!("reading the size of the server-side copy {blob}"), source }),
    }
}

fn transient(e: &ObjectsError) -> bool {
    match e {
        ObjectsError::Store { source, .. } => retriable(source),
        // Bytes that differ from what the store says it holds: damaged on the way.
        ObjectsError::Mismatch { .. } => true,
        _ => false,
    }
}

/// What the bytes read must match before they are written: anything else was damaged
/// on the way (or changed at the source) and is never stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expect {
    pub size: Option<u64>,
    /// The store's MD5 of the content: a single-part upload's ETag on S3 and GCS.
    pub md5: Option<[u8; 16]>,
    /// `md5` is known to be the content's: bytes that do not match it are damaged, even
    /// read twice the same (no fall back to the double read of SSE-KMS ETags).
    pub md5_certain: bool,
    pub sha256: Option<String>,
}

impl Expect {
    /// A source object as listed: its size, and its ETag when it has the shape of an
    /// MD5 (32 hex digits; multipart ETags carry a `-N`, Azure's and local ones other
    /// shapes). An ETag of that shape that is not the content's MD5 (S3 with SSE-KMS
    /// or SSE-C) is recognised by `copy_verified` and falls back to a double read.
    pub fn listed(size: u64, etag: Option<&str>) -> Self {
        let md5 = etag.map(|e| e.trim_matches('"')).filter(|e| e.len() == 32).and_then(|e| hex::decode(e).ok()).and_then(|b| <[u8; 16]>::try_from(b).ok());
        Expect { size: Some(size), md5, md5_certain: false, sha256: None }
    }

    /// A blob as recorded in a listing: size and SHA-256.
    pub fn recorded(size: u64, sha256: &str) -> Self {
        Expect { size: Some(size), md5: None, md5_certain: false, sha256: Some(sha256.to_string()) }
    }

    /// A blob as its listing records it: its size and SHA-256, or, while the SHA-256 is
    /// pending, the MD5 its copy's ETag gives: when the ETag is one, and unless the
    /// source listed a different one (then the store's ETags are not MD5s: encryption).
    /// That ETag is the one the store gave the blob when it wrote it: bytes that do not
    /// match it are damage however often read.
    pub fn of_blob(record: &ObjectRecord) -> Self {
        let trim = |e: &String| e.trim_matches('"').to_string();
        match &record.sha256 {
            Some(sha256) => Expect::recorded(record.size, sha256),
            None => {
                let copied = record.blob_etag.as_ref().map(trim);
                let md5_etag = copied.filter(|c| record.etag.as_ref().map(trim).is_none_or(|listed| listed == *c));
                Expect { md5_certain: true, ..Expect::listed(record.size, md5_etag.as_deref()) }
            }
        }
    }

    /// What differs between the bytes read and this expectation, if anything.
    /// `md5`: the MD5 read, when this process computed it (not when the store checks it).
    fn check(&self, length: u64, md5: Option<&[u8]>, sha256: &str) -> Option<String> {
        if let Some(size) = self.size.filter(|s| *s != length) {
            return Some(format!("{length} bytes read, {size} expected"));
        }
        if let (Some(want), Some(read)) = (self.md5, md5)
            && want.as_slice() != read
        {
            return Some(format!("MD5 {} read, the store's ETag says {}", hex::encode(read), hex::encode(want)));
        }
        match &self.sha256 {
            Some(want) if want != sha256 => Some(format!("SHA-256 {sha256} read, {want} expected")),
            _ => None,
        }
    }
}

/// The digests of a stream as it passes: SHA-256 always, MD5 when there is one to
/// compare with.
struct Digests {
    sha256: Sha256,
    md5: Option<md5::Md5>,
    length: u64,
}

impl Digests {
    fn new(md5: bool) -> Self {
        Digests { sha256: Sha256::new(), md5: md5.then(<md5::Md5 as md5::Digest>::new), length: 0 }
    }

    fn update(&mut self, chunk: &Bytes, progress: &Counters) {
        self.sha256.update(chunk);
        if let Some(m) = self.md5.as_mut() {
            md5::Digest::update(m, chunk);
        }
        self.length += chunk.len() as u64;
        progress.done_bytes.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    fn finish(self) -> Digested {
        Digested { length: self.length, md5: self.md5.map(|m| md5::Digest::finalize(m).to_vec()), sha256: self.sha256.finalize().into() }
    }
}

struct Digested {
    length: u64,
    /// None when not computed.
    md5: Option<Vec<u8>>,
    sha256: [u8; 32],
}

impl Digested {
    fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }
}

/// Logged once a run: the source's ETags are not content MD5s.
static ETAG_NOT_MD5_LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Copies `from_key` of `from` to `to_key` of `to`, streamed, checked against `expect`
/// before the write completes, retried (ATTEMPTS) on transient failures and damaged
/// bytes. Returns the SHA-256 of what was written.
#[allow(clippy::too_many_arguments)]
pub async fn copy_verified(
    from: &Arc<dyn ObjectStore>,
    from_side: &'static str,
    from_key: &str,
    to: &Arc<dyn ObjectStore>,
    to_put: Option<&s3::Put>,
    to_key: &str,
    mut expect: Expect,
    progress: &Progress,
) -> Result<String, ObjectsError> {
    let mut attempt = 1;
    let mut mismatched_read: Option<String> = None;
    loop {
        match copy_object(from, from_side, from_key, to, to_put, to_key, &expect, progress).await {
            Ok(sha) => return Ok(sha),
            // Twice the same bytes, twice not the ETag's MD5: the ETag is no content
            // MD5 (S3 SSE-KMS/SSE-C). Those bytes are what the store holds; a third
            // read must give them again.
            Err(ObjectsError::Mismatch { read_sha256, .. })
                if expect.md5.is_some() && !expect.md5_certain && !read_sha256.is_empty() && mismatched_read.as_ref() == Some(&read_sha256) =>
            {
                if !ETAG_NOT_MD5_LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    warn!(
                        key = from_key,
                        "the {from_side} store's ETags are not MD5 digests of the content (SSE-KMS or SSE-C?): such objects are checked by reading them twice"
                    );
                }
                expect.md5 = None;
                expect.sha256 = Some(read_sha256);
            }
            Err(e) if attempt < ATTEMPTS && transient(&e) => {
                if let ObjectsError::Mismatch { read_sha256, .. } = &e {
                    mismatched_read = Some(read_sha256.clone());
                }
                warn!(key = from_key, attempt, error = %e, "copy failed, retrying");
                tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Streams one object into another store, hashing on the way.
#[allow(clippy::too_many_arguments)]
async fn copy_object(
    from: &Arc<dyn ObjectStore>,
    from_side: &'static str,
    from_key: &str,
    to: &Arc<dyn ObjectStore>,
    to_put: Option<&s3::Put>,
    to_key: &str,
    expect: &Expect,
    progress: &Progress,
) -> Result<String, ObjectsError> {
    let src_err = |what: &str| {
        let what = format!("{what} {from_key}");
        move |source| ObjectsError::Store { side: from_side, what: what.clone(), source }
    };
    let body = from.get(&catalog::recorded_path(from_key)).await.map_err(src_err("reading"))?.into_stream().map_err(src_err("reading"));
    let path = catalog::recorded_path(to_key);
    let streamed = match (to_put, expect.size) {
        (Some(put), Some(size)) => {
            let checks = put.checks().await;
            put.streams(size, expect.md5.is_some(), expect.sha256.is_some(), checks).then_some((put, size, checks))
        }
        _ => None,
    };
    let uploaded = match streamed {
        Some((put, size, checks)) => upload_streamed(put, checks, &path, size, body, expect, progress).await,
        None => upload(to, to_put, &path, body, expect, progress).await,
    };
    let (sha256, _) = uploaded.map_err(|e| match e {
        ObjectsError::Mismatch { detail, read_sha256, .. } => ObjectsError::Mismatch { key: from_key.to_string(), detail, read_sha256 },
        e => e,
    })?;
    Ok(sha256)
}

/// Uploads a stream of bytes, one PUT when it fits one part, multipart otherwise,
/// returning its SHA-256 and length. The bytes are checked against `expect` before
/// the PUT is sent or the multipart upload completed (aborted otherwise), so what
/// does not match is never stored. A single PUT goes through `put` when given: the
/// store then checks the expected MD5 (when it checks Content-MD5) and this process
/// does not hash it.
pub async fn upload(
    store: &Arc<dyn ObjectStore>,
    put: Option<&s3::Put>,
    path: &Path,
    body: impl futures::Stream<Item = Result<Bytes, ObjectsError>>,
    expect: &Expect,
    progress: &Progress,
) -> Result<(String, u64), ObjectsError> {
    let target_err = |what: &'static str| {
        let what = format!("{what} {path}");
        move |source| ObjectsError::Store { side: "target", what, source }
    };
    futures::pin_mut!(body);
    let verdict = |digest: Digests| {
        let digested = digest.finish();
        let sha = digested.sha256_hex();
        match expect.check(digested.length, digested.md5.as_deref(), &sha) {
            None => Ok(digested),
            Some(detail) => Err(ObjectsError::Mismatch { key: path.to_string(), detail, read_sha256: sha }),
        }
    };
    if let Some(size) = expect.size.filter(|s| *s <= PART_SIZE as u64) {
        let _held = BUFFERS.hold(size).await;
        let store_checks_md5 = match put {
            Some(put) => expect.md5.is_some() && put.checks().await.content_md5,
            None => false,
        };
        let mut digest = Digests::new(expect.md5.is_some() && !store_checks_md5);
        let mut parts = Vec::new();
        while let Some(chunk) = body.try_next().await? {
            digest.update(&chunk, &progress.counters);
            parts.push(chunk);
        }
        let checked = verdict(digest)?;
        let sha = checked.sha256_hex();
        match put {
            Some(put) => put.put(path.as_ref(), parts, &checked.sha256, expect.md5.as_ref()).await.map_err(|failure| match failure {
                PutFailure::Digest(said) => ObjectsError::Mismatch {
                    key: path.to_string(),
                    detail: format!("the store received other bytes than the source's MD5 and the SHA-256 read: {said}"),
                    read_sha256: sha.clone(),
                },
                PutFailure::Store { error, .. } => target_err("writing")(error),
            })?,
            None => {
                store.put(path, parts.into_iter().collect::<PutPayload>()).await.map_err(target_err("writing"))?;
            }
        }
        return Ok((sha, checked.length));
    }
    let mut digest = Digests::new(expect.md5.is_some());
    // The part being filled and those in flight.
    let _held = BUFFERS.hold((PART_SIZE * (PARTS_IN_FLIGHT + 1)) as u64).await;
    let upload = store.put_multipart(path).await.map_err(target_err("starting the upload of"))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
    let streamed: Result<(String, u64), ObjectsError> = async {
        while let Some(chunk) = body.try_next().await? {
            digest.update(&chunk, &progress.counters);
            writer.wait_for_capacity(PARTS_IN_FLIGHT).await.map_err(target_err("uploading"))?;
            writer.put(chunk);
        }
        verdict(digest).map(|d| (d.sha256_hex(), d.length))
    }
    .await;
    match streamed {
        Ok(checked) => {
            writer.finish().await.map_err(target_err("completing the upload of"))?;
            Ok(checked)
        }
        Err(e) => {
            if let Err(abort) = writer.abort().await {
                warn!(path = %path, error = %abort, "could not abort the multipart upload; the bucket's lifecycle rule for incomplete uploads will remove it");
            }
            Err(e)
        }
    }
}

/// Streams a body of `size` bytes from the GET into one PUT, hashing on the way, the
/// last piece held back until the whole is checked against `expect`: a body that does
/// not match ends in an error, short of its Content-Length, and the store keeps
/// nothing. The MD5 is the store's to check when it checks Content-MD5.
async fn upload_streamed(
    put: &s3::Put,
    checks: s3::Checks,
    path: &Path,
    size: u64,
    body: impl futures::Stream<Item = Result<Bytes, ObjectsError>> + Send + 'static,
    expect: &Expect,
    progress: &Progress,
) -> Result<(String, u64), ObjectsError> {
    let digest = Digests::new(expect.md5.is_some() && !checks.content_md5);
    let verdict: Arc<std::sync::Mutex<Option<Result<Digested, ObjectsError>>>> = Arc::default();
    let checked = held_back(body, digest, expect.clone(), path.to_string(), progress.counters.clone(), verdict.clone());
    let sha256 = expect.sha256.as_deref().and_then(|h| <[u8; 32]>::try_from(hex::decode(h).ok()?).ok());
    let sent = put.put_streamed(path.as_ref(), size, expect.md5.as_ref(), sha256.as_ref(), checked).await;
    let verdict = verdict.lock().map(|mut v| v.take()).unwrap_or(None);
    let target_err = |error| ObjectsError::Store { side: "target", what: format!("writing {path}"), source: error };
    match (verdict, sent) {
        // What was read does not match, or the source failed: the body was cut short.
        (Some(Err(e)), _) => Err(e),
        (Some(Ok(d)), Ok(())) => Ok((d.sha256_hex(), d.length)),
        (Some(Ok(d)), Err(PutFailure::Digest(said))) => Err(ObjectsError::Mismatch {
            key: path.to_string(),
            detail: format!("the store received other bytes than their MD5 or SHA-256 says: {said}"),
            read_sha256: d.sha256_hex(),
        }),
        (_, Err(PutFailure::Store { error, .. })) => Err(target_err(error)),
        (None, Err(PutFailure::Digest(said))) => {
            Err(target_err(object_store::Error::Generic { store: "S3", source: format!("the store refused the body before its end: {said}").into() }))
        }
        (None, Ok(())) => Err(target_err(object_store::Error::Generic { store: "S3", source: "the store answered before the whole body was sent".into() })),
    }
}

/// The body of a streamed PUT: `body`'s pieces as they come, hashed, the last one held
/// back until the whole has been checked; the outcome is left in `verdict`.
fn held_back(
    body: impl futures::Stream<Item = Result<Bytes, ObjectsError>> + Send + 'static,
    digest: Digests,
    expect: Expect,
    path: String,
    progress: Arc<Counters>,
    verdict: Arc<std::sync::Mutex<Option<Result<Digested, ObjectsError>>>>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let cut = |verdict: &std::sync::Mutex<Option<Result<Digested, ObjectsError>>>, e: ObjectsError| {
        let said = e.to_string();
        if let Ok(mut v) = verdict.lock() {
            *v = Some(Err(e));
        }
        std::io::Error::other(said)
    };
    let state = (body.boxed(), Some(digest), None::<Bytes>);
    futures::stream::unfold(state, move |(mut body, mut digest, mut held)| {
        let (expect, path, progress, verdict) = (expect.clone(), path.clone(), progress.clone(), verdict.clone());
        async move {
            let d = digest.as_mut()?;
            loop {
                match body.next().await {
                    Some(Ok(piece)) => {
                        d.update(&piece, &progress);
                        if let Some(size) = expect.size.filter(|s| d.length > *s) {
                            let e = ObjectsError::Mismatch { key: path, detail: format!("more than the {size} bytes listed read"), read_sha256: String::new() };
                            return Some((Err(cut(&verdict, e)), (body, None, None)));
                        }
                        if let Some(previous) = held.replace(piece) {
                            return Some((Ok(previous), (body, digest, held)));
                        }
                    }
                    Some(Err(e)) => return Some((Err(cut(&verdict, e)), (body, None, None))),
                    None => {
                        let digested = digest.take()?.finish();
                        let sha = digested.sha256_hex();
                        return match expect.check(digested.length, digested.md5.as_deref(), &sha) {
                            None => {
                                if let Ok(mut v) = verdict.lock() {
                                    *v = Some(Ok(digested));
                                }
                                held.take().map(|last| (Ok(last), (body, None, None)))
                            }
                            Some(detail) => Some((Err(cut(&verdict, ObjectsError::Mismatch { key: path, detail, read_sha256: sha })), (body, None, None))),
                        };
                    }
                }
            }
        }
    })
}

/// Turns an `AsyncRead` (a child's stdout) into a stream of chunks.
pub fn read_chunks<R: AsyncRead + Unpin + Send + 'static>(reader: R, what: String) -> impl futures::Stream<Item = Result<Bytes, ObjectsError>> + Send {
    futures::stream::try_unfold((reader, what), |(mut reader, what)| async move {
        let mut buf = vec![0u8; 1024 * 1024];
        let mut filled = 0;
        // Fill whole buffers: fewer, larger parts.
        while filled < buf.len() {
            let n = reader.read(&mut buf[filled..]).await.map_err(|source| ObjectsError::Read { what: what.clone(), source })?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            return Ok(None);
        }
        buf.truncate(filled);
        Ok(Some((Bytes::from(buf), (reader, what))))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().expect("valid")
    }

    fn reference(records: &[(&str, u64, &str)]) -> ListingReader {
        let mut w = ListingWriter::new().expect("a temporary file");
        for (k, size, etag) in records {
            w.push(&ObjectRecord {
                key: k.to_string(),
                size: *size,
                etag: Some(etag.to_string()),
                blob: catalog::blob_key(k, Some(etag), t0(), *size),
                sha256: Some(format!("sha-{k}")),
                blob_etag: None,
                since: "old".into(),
            })
            .expect("sorted");
        }
        let (bytes, _) = w.finish().expect("finish");
        ListingReader::new(&bytes, "test".into()).expect("decodes")
    }

    #[test]
    fn recent_keeps_chunks_past_the_floor_and_merge_keeps_key_order() {
        let key = |g: u64| format!("chunk/ab.{g:016x}");
        let (k1, k5, k9) = (key(1), key(5), key(9));
        let listing = reference(&[("a-outside", 1, "t"), (&k1, 1, "t"), (&k5, 1, "t"), (&k9, 1, "t")]);
        let recent = ListingReader::new(&super::recent(listing, 4).expect("recent"), "r".into()).expect("reader");
        assert_eq!(recent.map(|r| r.expect("record").key).collect::<Vec<_>>(), vec![k5.clone(), k9.clone()]);

        let older = reference(&[("a", 1, "old"), ("c", 1, "old"), ("e", 1, "old")]);
        let newer = reference(&[("b", 2, "new"), ("c", 2, "new"), ("f", 2, "new")]);
        let merged = ListingReader::new(&super::merge(older, newer).expect("merge"), "m".into()).expect("reader");
        let got: Vec<(String, u64)> = merged.map(|r| r.map(|r| (r.key, r.size)).expect("record")).collect();
        assert_eq!(got, vec![("a".into(), 1), ("b".into(), 2), ("c".into(), 2), ("e".into(), 1), ("f".into(), 2)]);
    }

    #[test]
    fn planner_reuses_same_key_and_tag_and_copies_the_rest() {
        let mut p = Planner::new(reference(&[("a", 1, "e"), ("c", 3, "e"), ("d", 4, "e"), ("f", 6, "e")]));
        assert!(matches!(p.plan("a", 1, Some("e"), t0()).expect("ok"), Plan::Reuse(r) if r.sha256.as_deref() == Some("sha-a")));
        assert!(matches!(p.plan("b", 2, Some("e"), t0()).expect("ok"), Plan::Copy { .. }));
        assert!(matches!(p.plan("c", 3, Some("changed"), t0()).expect("ok"), Plan::Copy { .. }));
        assert!(matches!(p.plan("f", 6, Some("e"), t0()).expect("ok"), Plan::Reuse(_)));
        assert!(matches!(p.plan("g", 7, Some("e"), t0()).expect("ok"), Plan::Copy { .. }));
        assert!(matches!(p.plan("a", 1, Some("e"), t0()), Err(ObjectsError::Unordered(_))));
    }

    #[test]
    fn damaged_and_full_copies_go_to_fresh_keys_and_are_reused_after() {
        let blob = |k: &str, size| catalog::blob_key(k, Some("e"), t0(), size);
        let damaged = Heal { damaged: [blob("b", 2)].into(), full: false, backup_id: "B2".into() };
        let mut p = Planner::healing(reference(&[("a", 1, "e"), ("b", 2, "e")]), damaged);
        assert!(matches!(p.plan("a", 1, Some("e"), t0()).expect("ok"), Plan::Reuse(_)));
        let healed = catalog::fresh_blob_key(&blob("b", 2), "B2");
        assert!(matches!(p.plan("b", 2, Some("e"), t0()).expect("ok"), Plan::Copy { blob, .. } if blob == healed));
        // A later run reuses the fresh key: it is the same object.
        let mut w = ListingWriter::new().expect("a temporary file");
        w.push(&ObjectRecord {
            key: "b".into(),
            size: 2,
            etag: Some("e".into()),
            blob: healed.clone(),
            sha256: Some("s".into()),
            blob_etag: None,
            since: "B2".into(),
        })
        .expect("push");
        let (bytes, _) = w.finish().expect("finish");
        let mut later = Planner::new(ListingReader::new(&bytes, "t".into()).expect("decodes"));
        assert!(matches!(later.plan("b", 2, Some("e"), t0()).expect("ok"), Plan::Reuse(r) if r.blob == healed));
        let full = Heal { damaged: Default::default(), full: true, backup_id: "B3".into() };
        let mut p = Planner::healing(ListingReader::empty().expect("empty"), full);
        assert!(matches!(p.plan("a", 1, Some("e"), t0()).expect("ok"), Plan::Copy { blob: b, .. } if b == catalog::fresh_blob_key(&blob("a", 1), "B3")));
    }

    #[test]
    fn only_an_md5_shaped_etag_is_compared_and_every_difference_is_named() {
        let md5 = hex::decode("9e107d9d372bb6826bd81d3542a419d6").expect("hex");
        assert_eq!(Expect::listed(3, Some("\"9e107d9d372bb6826bd81d3542a419d6\"")).md5.map(|m| m.to_vec()), Some(md5.clone()));
        // Multipart, Azure and local ETags are no content MD5.
        for etag in ["\"9e107d9d372bb6826bd81d3542a419d6-3\"", "0x8DC4E2B1A2F3C4D", "1a2b-3c4d-5e", "not-hex-not-hex-not-hex-not-hex!"] {
            assert_eq!(Expect::listed(3, Some(etag)).md5, None, "{etag}");
        }
        let e = Expect::listed(3, Some("9e107d9d372bb6826bd81d3542a419d6"));
        assert_eq!(e.check(3, Some(&md5), "any"), None);
        assert!(e.check(2, Some(&md5), "any").is_some_and(|d| d.contains("2 bytes read, 3 expected")));
        assert!(e.check(3, Some(&[0u8; 16]), "any").is_some_and(|d| d.contains("the store's ETag says")));
        // Not computed here: the store checks it (Content-MD5).
        assert_eq!(e.check(3, None, "any"), None);
        assert!(e.check(2, None, "any").is_some_and(|d| d.contains("2 bytes read, 3 expected")));
        let r = Expect::recorded(3, "abc");
        assert_eq!(r.check(3, None, "abc"), None);
        assert!(r.check(3, None, "abd").is_some_and(|d| d.contains("abc expected")));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn transfers_wait_for_the_buffer_budget_and_all_finish() {
        let budget: &'static Buffers = Box::leak(Box::new(Buffers::new(10)));
        let held = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let most = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let tasks: Vec<_> = (0..20u32)
            .map(|i| {
                let (held, most) = (held.clone(), most.clone());
                tokio::spawn(async move {
                    // 1–4 MiB each, and one larger than the whole budget.
                    let mib = if i == 7 { 64 } else { 1 + i % 4 };
                    let _guard = budget.hold(u64::from(mib) * 1024 * 1024 - 1).await;
                    let now = held.fetch_add(mib.min(10), std::sync::atomic::Ordering::SeqCst) + mib.min(10);
                    most.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    held.fetch_sub(mib.min(10), std::sync::atomic::Ordering::SeqCst);
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("a transfer finished");
        }
        let most = most.load(std::sync::atomic::Ordering::SeqCst);
        assert!(most <= 10, "{most} MiB held at once with a budget of 10");
        assert!(budget.high_water_mib() <= 10 && budget.high_water_mib() >= 4, "{}", budget.high_water_mib());
    }

    proptest! {
        /// Whatever the two sorted key sets, exactly the keys present in both (with the
        /// same tag) are reused.
        #[test]
        fn planner_matches_a_set_intersection(previous in proptest::collection::btree_set("[a-c]{1,4}", 0..30), current in proptest::collection::btree_set("[a-c]{1,4}", 0..30)) {
            let prev: Vec<(&str, u64, &str)> = previous.iter().map(|k| (k.as_str(), k.len() as u64, "e")).collect();
            let mut p = Planner::new(reference(&prev));
            for k in &current {
                let reused = matches!(p.plan(k, k.len() as u64, Some("e"), t0()).expect("sorted"), Plan::Reuse(_));
                prop_assert_eq!(reused, previous.contains(k));
            }
        }
    }
}
