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

pub const FORMAT_VERSION: u32 = 1;
pub const BACKUPS_DIR: &str = "backups";
pub const BLOBS_DIR: &str = "blobs";
pub const MANIFEST: &str = "manifest.json";
pub const LISTING: &str = "objects.jsonl.zst";
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
}

/// The object side of a manifest.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ObjectsEntry {
    /// `copy` or `skip`.
    pub mode: String,
    /// The listing file, relative to the backup folder; absent with `skip`.
    pub listing: Option<String>,
    pub listing_sha256: Option<String>,
    #[serde(flatten)]
    pub counts: ObjectCounts,
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
    pub pause_mode: String,
    /// Whether this run paused the cluster (false: paused by its operator, or `none`).
    pub paused_by_us: bool,
    pub started_at: DateTime<Utc>,
    pub paused_at: Option<DateTime<Utc>>,
    pub resumed_at: Option<DateTime<Utc>>,
    pub finished_at: DateTime<Utc>,
    pub downtime_seconds: f64,
    pub phases: std::collections::BTreeMap<String, f64>,
    pub source_url: String,
    pub databases: Vec<DatabaseEntry>,
    pub objects: ObjectsEntry,
    pub cluster_objects: Vec<String>,
}

/// One line of `objects.jsonl.zst`: a source object and where its bytes are pooled.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ObjectRecord {
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
    pub blob: String,
    pub sha256: String,
    /// The backup that first stored this blob in the pool.
    pub since: String,
}

/// A folder under `backups/`, complete (with a manifest) or not.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    pub manifest: Option<Manifest>,
    /// For folders without a manifest: the newest object's time (dead-run collection).
    pub newest_modified: Option<DateTime<Utc>>,
}

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

/// Backup ids sort by time: `20261121T020000Z`, `-2`, `-3`… when taken.
pub fn backup_id(time: DateTime<Utc>, attempt: u32) -> String {
    let base = time.format("%Y%m%dT%H%M%SZ").to_string();
    if attempt <= 1 { base } else { format!("{base}-{attempt}") }
}

pub fn backup_path(id: &str, file: &str) -> Path {
    Path::from(format!("{BACKUPS_DIR}/{id}/{file}"))
}

/// Writes the listing compressed in memory: a few dozen bytes an object.
pub struct ListingWriter {
    encoder: zstd::Encoder<'static, Vec<u8>>,
    last_key: Option<String>,
    hasher: sha2::Sha256,
}

impl ListingWriter {
    pub fn new() -> Self {
        use sha2::Digest;
        ListingWriter { encoder: zstd::Encoder::new(Vec::new(), 3).expect("zstd level 3 is valid"), last_key: None, hasher: sha2::Sha256::new() }
    }

    pub fn push(&mut self, record: &ObjectRecord) -> std::io::Result<()> {
        use sha2::Digest;
        if self.last_key.as_deref().is_some_and(|k| k >= record.key.as_str()) {
            return Err(std::io::Error::other(format!("listing out of order at {:?}", record.key)));
        }
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.hasher.update(&line);
        self.encoder.write_all(&line)?;
        self.last_key = Some(record.key.clone());
        Ok(())
    }

    /// The compressed bytes and the SHA-256 of the uncompressed lines.
    pub fn finish(self) -> std::io::Result<(Bytes, String)> {
        use sha2::Digest;
        let bytes = self.encoder.finish()?;
        Ok((Bytes::from(bytes), hex::encode(self.hasher.finalize())))
    }
}

impl Default for ListingWriter {
    fn default() -> Self {
        Self::new()
    }
}

/// Reads a listing record by record from its compressed bytes.
pub struct ListingReader {
    lines: std::io::BufReader<zstd::Decoder<'static, std::io::BufReader<std::io::Cursor<Bytes>>>>,
    what: String,
    buf: String,
}

impl ListingReader {
    pub fn new(compressed: Bytes, what: String) -> Result<Self, CatalogError> {
        let decoder = zstd::Decoder::new(std::io::Cursor::new(compressed)).map_err(|e| CatalogError::Corrupt { what: what.clone(), detail: e.to_string() })?;
        Ok(ListingReader { lines: std::io::BufReader::new(decoder), what, buf: String::new() })
    }

    /// An empty listing, for a backup without objects.
    pub fn empty() -> Self {
        let (bytes, _) = ListingWriter::new().finish().expect("an empty zstd frame");
        ListingReader::new(bytes, "empty listing".into()).expect("an empty zstd frame decodes")
    }

    pub fn next_record(&mut self) -> Result<Option<ObjectRecord>, CatalogError> {
        self.buf.clear();
        let n = self.lines.read_line(&mut self.buf).map_err(|e| CatalogError::Corrupt { what: self.what.clone(), detail: e.to_string() })?;
        if n == 0 {
            return Ok(None);
        }
        serde_json::from_str(self.buf.trim_end()).map(Some).map_err(|e| CatalogError::Corrupt { what: self.what.clone(), detail: e.to_string() })
    }
}

/// The backup bucket, under its prefix.
#[derive(Clone)]
pub struct Catalog {
    store: Arc<dyn ObjectStore>,
}

impl Catalog {
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Catalog { store }
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Every folder under `backups/`, sorted by id (= by time), manifests read.
    pub async fn entries(&self) -> Result<Vec<Entry>, CatalogError> {
        let listing = self.store.list_with_delimiter(Some(&Path::from(BACKUPS_DIR))).await.map_err(store_err("listing backups/"))?;
        let mut ids: Vec<String> = listing.common_prefixes.iter().filter_map(|p| p.filename().map(str::to_string)).collect();
        ids.sort();
        let entries: Vec<Entry> = futures::stream::iter(ids.into_iter().map(|id| async move {
            match self.manifest(&id).await {
                Ok(m) => Ok(Entry { id, manifest: Some(m), newest_modified: None }),
                Err(CatalogError::NotFound(_)) => {
                    let prefix = Path::from(format!("{BACKUPS_DIR}/{id}"));
                    let newest = self
                        .store
                        .list(Some(&prefix))
                        .map_ok(|m| m.last_modified)
                        .try_fold(None, |acc: Option<DateTime<Utc>>, t| async move { Ok(Some(acc.map_or(t, |a| a.max(t)))) })
                        .await
                        .map_err(store_err(format!("listing backups/{id}")))?;
                    Ok(Entry { id, manifest: None, newest_modified: newest })
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
        let path = backup_path(id, MANIFEST);
        let bytes = match self.store.get(&path).await {
            Ok(r) => r.bytes().await.map_err(store_err(format!("reading {path}")))?,
            Err(object_store::Error::NotFound { .. }) => return Err(CatalogError::NotFound(id.to_string())),
            Err(e) => return Err(store_err(format!("reading {path}"))(e)),
        };
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| CatalogError::Corrupt { what: path.to_string(), detail: e.to_string() })?;
        if manifest.format_version > FORMAT_VERSION {
            return Err(CatalogError::TooNew { id: id.to_string(), found: manifest.format_version });
        }
        Ok(manifest)
    }

    /// The complete backups, oldest first.
    pub async fn complete(&self) -> Result<Vec<Manifest>, CatalogError> {
        Ok(self.entries().await?.into_iter().filter_map(|e| e.manifest).collect())
    }

    /// A free id for a backup starting at `time`.
    pub async fn new_backup_id(&self, time: DateTime<Utc>) -> Result<String, CatalogError> {
        for attempt in 1.. {
            let id = backup_id(time, attempt);
            let prefix = Path::from(format!("{BACKUPS_DIR}/{id}"));
            let taken = self.store.list(Some(&prefix)).next().await.transpose().map_err(store_err(format!("checking backups/{id}")))?.is_some();
            if !taken {
                return Ok(id);
            }
        }
        unreachable!("the attempts are unbounded")
    }

    pub async fn read_listing(&self, id: &str, manifest: &Manifest) -> Result<ListingReader, CatalogError> {
        let Some(file) = &manifest.objects.listing else { return Ok(ListingReader::empty()) };
        let path = backup_path(id, file);
        let bytes = self.store.get(&path).await.map_err(store_err(format!("reading {path}")))?.bytes().await.map_err(store_err(format!("reading {path}")))?;
        ListingReader::new(bytes, path.to_string())
    }

    pub async fn put(&self, path: &Path, bytes: Bytes) -> Result<(), CatalogError> {
        self.store.put(path, PutPayload::from_bytes(bytes)).await.map_err(store_err(format!("writing {path}")))?;
        Ok(())
    }

    /// Commits a backup. Everything else of it must be written before.
    pub async fn commit(&self, manifest: &Manifest) -> Result<(), CatalogError> {
        let json = serde_json::to_vec_pretty(manifest).map_err(|e| CatalogError::Corrupt { what: "the manifest".into(), detail: e.to_string() })?;
        self.put(&backup_path(&manifest.backup_id, MANIFEST), Bytes::from(json)).await
    }

    /// Deletes a backup folder, manifest first: a half-deleted backup is never complete.
    pub async fn delete_backup(&self, id: &str) -> Result<(), CatalogError> {
        match self.store.delete(&backup_path(id, MANIFEST)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(store_err(format!("deleting the manifest of {id}"))(e)),
        }
        let prefix = Path::from(format!("{BACKUPS_DIR}/{id}"));
        let locations = self.store.list(Some(&prefix)).map_ok(|m| m.location).boxed();
        let mut deleted = self.store.delete_stream(locations);
        while let Some(r) = deleted.next().await {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_err(format!("deleting backups/{id}"))(e)),
            }
        }
        Ok(())
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
    fn listing_round_trips_and_refuses_disorder() {
        let mut w = ListingWriter::new();
        let r = |k: &str| ObjectRecord { key: k.into(), size: 1, etag: None, blob: format!("blobs/{k}@0"), sha256: "00".into(), since: "b1".into() };
        w.push(&r("a")).expect("first");
        w.push(&r("b")).expect("second");
        assert!(w.push(&r("a")).is_err());
        let (bytes, sha) = w.finish().expect("finish");
        assert_eq!(sha.len(), 64);
        let mut reader = ListingReader::new(bytes, "test".into()).expect("decodes");
        assert_eq!(reader.next_record().expect("ok"), Some(r("a")));
        assert_eq!(reader.next_record().expect("ok"), Some(r("b")));
        assert_eq!(reader.next_record().expect("ok"), None);
        assert_eq!(ListingReader::empty().next_record().expect("ok"), None);
    }
}
