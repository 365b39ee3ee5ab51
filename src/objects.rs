//! Object stores: opening buckets, preflight probes, and the streamed, parallel copy of
//! the source bucket into the target's blob pool.
//!
//! Memory stays flat in the size of the bucket: the source listing is consumed as a
//! stream and merge-joined, in key order, with the previous backup's listing (itself
//! streamed); only the transfers in flight and the records waiting for an earlier key
//! to finish are held.

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
use crate::config::StoreSettings;
use crate::progress::Progress;

/// Objects up to this size are sent in one PUT; larger ones in parts of this size,
/// PARTS_IN_FLIGHT at a time (rclone's defaults: measured faster and leaner than 8 MiB × 2).
pub const PART_SIZE: usize = 5 * 1024 * 1024;
/// Parts of one object in flight at once.
const PARTS_IN_FLIGHT: usize = 4;
const ATTEMPTS: u32 = 3;

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
        "source object {key} changed while it was copied (listed {listed} bytes, read {read}): Pachyderm objects are immutable, is something else writing to the bucket?"
    )]
    Changed { key: String, listed: u64, read: u64 },
    #[error("the source listing is not in key order at {0:?}; the store does not list as S3 does")]
    Unordered(String),
    #[error(transparent)]
    Catalog(#[from] catalog::CatalogError),
    #[error("reading {what} failed: {source}")]
    Read {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Opens a bucket, rooted at the URL's prefix.
pub fn open(settings: &StoreSettings, create_local: bool) -> Result<Arc<dyn ObjectStore>, ObjectsError> {
    let open_err = |detail: String| ObjectsError::Open { variable: settings.variable, url: settings.url.to_string(), detail };
    if settings.url.scheme() == "file" {
        let dir = settings.url.to_file_path().map_err(|()| open_err("not a local path".into()))?;
        if create_local {
            std::fs::create_dir_all(&dir).map_err(|e| open_err(format!("cannot create {}: {e}", dir.display())))?;
        } else if !dir.is_dir() {
            return Err(open_err(format!("{} is not a directory", dir.display())));
        }
        let store = object_store::local::LocalFileSystem::new_with_prefix(&dir).map_err(|e| open_err(e.to_string()))?;
        return Ok(Arc::new(store));
    }
    let options = settings.options.iter().map(|(k, v)| (k.clone(), v.expose().to_string()));
    let (store, prefix) = object_store::parse_url_opts(&settings.url, options).map_err(|e| open_err(e.to_string()))?;
    if prefix.as_ref().is_empty() { Ok(Arc::from(store)) } else { Ok(Arc::new(PrefixStore::new(store, prefix))) }
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

/// Preflight: a probe object can be written, read back and deleted.
pub async fn probe_writable(store: &Arc<dyn ObjectStore>, side: &'static str, run_id: &str) -> Result<(), ObjectsError> {
    let path = Path::from(format!(".pachyderm-backup-probe-{run_id}"));
    let err = |what: &str| {
        let what = what.to_string();
        move |source| ObjectsError::Store { side, what, source }
    };
    store.put(&path, PutPayload::from_static(b"probe")).await.map_err(err("writing a probe object (preflight)"))?;
    store.head(&path).await.map_err(err("reading the probe object back (preflight)"))?;
    store.delete(&path).await.map_err(err("deleting the probe object (preflight)"))?;
    Ok(())
}

/// What to do with one source object, decided from the reference listing alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Reuse(ObjectRecord),
    Copy { key: String, size: u64, etag: Option<String>, blob: String },
}

/// Merge-joins the source listing (in key order) with a reference listing (in key
/// order): an object whose key and blob tag are already recorded is reused.
pub struct Planner {
    reference: ListingReader,
    pending: Option<ObjectRecord>,
    last_key: Option<String>,
}

impl Planner {
    pub fn new(reference: ListingReader) -> Self {
        Planner { reference, pending: None, last_key: None }
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
            match &self.pending {
                Some(r) if r.key.as_str() < key => self.pending = None,
                Some(r) if r.key == key && r.blob == blob && r.size == size => {
                    let mut reused = r.clone();
                    reused.etag = etag.map(str::to_string);
                    self.pending = None;
                    return Ok(Plan::Reuse(reused));
                }
                _ => return Ok(Plan::Copy { key: key.to_string(), size, etag: etag.map(str::to_string), blob }),
            }
        }
    }
}

/// Copies the source bucket into the pool: every object not in `reference` is copied,
/// the others reused. Returns the new listing (compressed) and its counts; an object
/// counts as copied when this backup (`backup_id`) stored its blob, in this call or in
/// the pre-copy whose listing is `reference`.
/// `vanished_ok`: while Pachyderm runs (pre-copy), its garbage collector may delete an
/// object between listing and reading; such an object is left out, not an error.
pub async fn sync(
    source: &Arc<dyn ObjectStore>,
    sorted: bool,
    pool: &Arc<dyn ObjectStore>,
    reference: ListingReader,
    backup_id: &str,
    concurrency: usize,
    vanished_ok: bool,
    progress: &Progress,
) -> Result<(ListingWriter, ObjectCounts), ObjectsError> {
    let list_err = |source| ObjectsError::Store { side: "source", what: "listing".into(), source };
    let listing: futures::stream::BoxStream<'_, Result<ObjectMeta, ObjectsError>> = if sorted {
        source.list(None).map_err(list_err).boxed()
    } else {
        let mut all: Vec<ObjectMeta> = source.list(None).try_collect().await.map_err(list_err)?;
        all.sort_by(|a, b| a.location.cmp(&b.location));
        futures::stream::iter(all.into_iter().map(Ok)).boxed()
    };

    let mut planner = Planner::new(reference);
    let mut seq = 0u64;
    let jobs = listing
        .map(|meta| {
            let meta = meta?;
            progress.add_total(1, meta.size);
            let plan = planner.plan(meta.location.as_ref(), meta.size, meta.e_tag.as_deref(), meta.last_modified)?;
            seq += 1;
            Ok::<_, ObjectsError>((seq, plan))
        })
        .map_ok(|(seq, plan)| async move {
            match plan {
                Plan::Reuse(record) => {
                    progress.add_done(1, 0);
                    Ok((seq, Some(record)))
                }
                Plan::Copy { key, size, etag, blob } => match copy_with_retries(source, pool, &key, size, &blob, progress).await {
                    Ok(sha256) => {
                        progress.add_done(1, 0);
                        Ok((seq, Some(ObjectRecord { key, size, etag, blob, sha256, since: backup_id.to_string() })))
                    }
                    Err(ObjectsError::Store { side: "source", source: object_store::Error::NotFound { .. }, .. }) if vanished_ok => {
                        debug!(key, "object vanished before it was copied (Pachyderm's garbage collector)");
                        Ok((seq, None))
                    }
                    Err(e) => Err(e),
                },
            }
        })
        .try_buffer_unordered(concurrency);
    futures::pin_mut!(jobs);

    // Records come back out of order; the listing is written in key order.
    let mut waiting: BTreeMap<u64, Option<ObjectRecord>> = BTreeMap::new();
    let mut next = 1u64;
    let mut writer = ListingWriter::new();
    let mut stats = ObjectCounts::default();
    while let Some((seq, record)) = jobs.try_next().await? {
        waiting.insert(seq, record);
        while let Some(record) = waiting.remove(&next) {
            next += 1;
            let Some(record) = record else { continue };
            stats.count += 1;
            stats.bytes += record.size;
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

fn transient(e: &ObjectsError) -> bool {
    match e {
        ObjectsError::Store { source, .. } => !matches!(
            source,
            object_store::Error::NotFound { .. }
                | object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }
                | object_store::Error::Precondition { .. }
        ),
        _ => false,
    }
}

async fn copy_with_retries(
    source: &Arc<dyn ObjectStore>,
    pool: &Arc<dyn ObjectStore>,
    key: &str,
    size: u64,
    blob: &str,
    progress: &Progress,
) -> Result<String, ObjectsError> {
    let mut attempt = 1;
    loop {
        match copy_object(source, pool, key, size, blob, progress).await {
            Ok(sha) => return Ok(sha),
            Err(e) if attempt < ATTEMPTS && transient(&e) => {
                warn!(key, attempt, error = %e, "copy failed, retrying");
                tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Streams one object from the source into the pool, hashing on the way.
async fn copy_object(
    source: &Arc<dyn ObjectStore>,
    pool: &Arc<dyn ObjectStore>,
    key: &str,
    size: u64,
    blob: &str,
    progress: &Progress,
) -> Result<String, ObjectsError> {
    let src_err = |what: &str| {
        let what = format!("{what} {key}");
        move |source| ObjectsError::Store { side: "source", what: what.clone(), source }
    };
    let body = source.get(&catalog::recorded_path(key)).await.map_err(src_err("reading"))?.into_stream().map_err(src_err("reading"));
    let (sha256, read) = upload(pool, &catalog::recorded_path(blob), body, Some(size as usize), progress).await?;
    if read != size {
        return Err(ObjectsError::Changed { key: key.to_string(), listed: size, read });
    }
    Ok(sha256)
}

/// Uploads a stream of bytes, one PUT when it fits one part, multipart otherwise
/// (aborted on error), returning its SHA-256 and length.
pub async fn upload(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    body: impl futures::Stream<Item = Result<Bytes, ObjectsError>>,
    size_hint: Option<usize>,
    progress: &Progress,
) -> Result<(String, u64), ObjectsError> {
    let target_err = |what: &'static str| {
        let what = format!("{what} {path}");
        move |source| ObjectsError::Store { side: "target", what, source }
    };
    futures::pin_mut!(body);
    let mut hasher = Sha256::new();
    let mut length = 0u64;
    if size_hint.is_some_and(|s| s <= PART_SIZE) {
        let mut parts = Vec::new();
        while let Some(chunk) = body.try_next().await? {
            hasher.update(&chunk);
            length += chunk.len() as u64;
            progress.add_done(0, chunk.len() as u64);
            parts.push(chunk);
        }
        store.put(path, parts.into_iter().collect::<PutPayload>()).await.map_err(target_err("writing"))?;
        return Ok((hex::encode(hasher.finalize()), length));
    }
    let upload = store.put_multipart(path).await.map_err(target_err("starting the upload of"))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
    let streamed: Result<(), ObjectsError> = async {
        while let Some(chunk) = body.try_next().await? {
            hasher.update(&chunk);
            length += chunk.len() as u64;
            progress.add_done(0, chunk.len() as u64);
            writer.wait_for_capacity(PARTS_IN_FLIGHT).await.map_err(target_err("uploading"))?;
            writer.put(chunk);
        }
        Ok(())
    }
    .await;
    match streamed {
        Ok(()) => {
            writer.finish().await.map_err(target_err("completing the upload of"))?;
            Ok((hex::encode(hasher.finalize()), length))
        }
        Err(e) => {
            if let Err(abort) = writer.abort().await {
                warn!(path = %path, error = %abort, "could not abort the multipart upload; the bucket's lifecycle rule for incomplete uploads will remove it");
            }
            Err(e)
        }
    }
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
        let mut w = ListingWriter::new();
        for (k, size, etag) in records {
            w.push(&ObjectRecord {
                key: k.to_string(),
                size: *size,
                etag: Some(etag.to_string()),
                blob: catalog::blob_key(k, Some(etag), t0(), *size),
                sha256: format!("sha-{k}"),
                since: "old".into(),
            })
            .expect("sorted");
        }
        let (bytes, _) = w.finish().expect("finish");
        ListingReader::new(bytes, "test".into()).expect("decodes")
    }

    #[test]
    fn planner_reuses_same_key_and_tag_and_copies_the_rest() {
        let mut p = Planner::new(reference(&[("a", 1, "e"), ("c", 3, "e"), ("d", 4, "e"), ("f", 6, "e")]));
        assert!(matches!(p.plan("a", 1, Some("e"), t0()).expect("ok"), Plan::Reuse(r) if r.sha256 == "sha-a"));
        assert!(matches!(p.plan("b", 2, Some("e"), t0()).expect("ok"), Plan::Copy { .. }));
        assert!(matches!(p.plan("c", 3, Some("changed"), t0()).expect("ok"), Plan::Copy { .. }));
        assert!(matches!(p.plan("f", 6, Some("e"), t0()).expect("ok"), Plan::Reuse(_)));
        assert!(matches!(p.plan("g", 7, Some("e"), t0()).expect("ok"), Plan::Copy { .. }));
        assert!(matches!(p.plan("a", 1, Some("e"), t0()), Err(ObjectsError::Unordered(_))));
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
