//! Verify backups: every file a manifest names present with its size, `--deep` every
//! byte re-read and every SHA-256 checked, and the drill: the dumps restored into
//! scratch databases and every live chunk the metadata references found in the
//! backup's object listing. Nothing here writes to a backup but `damage/` records and,
//! the first time `--deep` reads a backup whose listing has pending SHA-256s (blobs a
//! store copied without giving one), its `checksums.jsonl.zst`.

use std::sync::Arc;

use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::catalog::{self, Catalog, CatalogError, Manifest, ObjectRecord};
use crate::config::{DumpIdentity, PgServer, Scratch};
use crate::database::{self, DatabaseError, Tools};
use crate::exit::ExitCode;
use crate::objects;
use crate::progress::Progress;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Database(#[from] DatabaseError),
}

impl VerifyError {
    /// `Config` for what the configuration lacks (a drill of encrypted dumps without
    /// RESTORE_IDENTITY_FILE), else `Failed`.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            VerifyError::Database(DatabaseError::IdentityMissing { .. }) => ExitCode::Config,
            _ => ExitCode::Failed,
        }
    }
}

/// What `verify` found wrong with one backup.
#[derive(Debug, Default)]
pub struct Findings {
    pub backup_id: String,
    pub checked_files: u64,
    pub checked_bytes: u64,
    pub problems: Vec<String>,
    /// Pending SHA-256s computed and recorded in the backup's checksums file.
    pub recorded_checksums: u64,
}

/// Every file the manifest names exists with its size; with `deep`, every byte is
/// re-read and every SHA-256 checked.
pub async fn verify(catalog: &Catalog, manifest: &Manifest, deep: bool, concurrency: usize, interval: std::time::Duration) -> Result<Findings, VerifyError> {
    let id = &manifest.backup_id;
    let mut f = Findings { backup_id: id.clone(), ..Default::default() };
    let folder = catalog.folder(id);
    for db in &manifest.databases {
        f.checked_files += 1;
        if let Some(problem) = check(folder.store(), &folder.recorded(&db.file), db.size, deep.then_some(db.sha256.as_str())).await {
            f.problems.push(format!("database {}: {problem}", db.name));
        }
    }
    for file in &manifest.cluster_objects {
        f.checked_files += 1;
        if let Err(e) = folder.store().head(&folder.recorded(file)).await {
            f.problems.push(format!("{file}: {e}"));
        }
    }
    if let Some(listing_file) = &manifest.objects.listing {
        // The listing itself: present, and its content what the manifest describes.
        let mut reader = match catalog.read_listing(id, manifest).await {
            Ok(r) => r,
            Err(e) if e.is_damage() => {
                f.problems.push(format!("{listing_file}: {e}"));
                return Ok(f);
            }
            Err(e) => return Err(e.into()),
        };
        let progress = Progress::start("verify", interval);
        progress.add_total(manifest.objects.counts.count, manifest.objects.counts.bytes);
        progress.totals_known();
        let mut unreadable = None;
        let pool = catalog.pool();
        // The SHA-256s of the pending records, in listing order (the checks are run in
        // order for it), recorded only if every pending blob read whole and right.
        let mut computed = catalog::ListingWriter::new().map_err(|e| CatalogError::Corrupt { what: "a temporary file".into(), detail: e.to_string() })?;
        let (mut pending, mut pending_bad) = (0u64, false);
        {
            let checks = futures::stream::iter(reader.by_ref())
                .map(|r| {
                    let progress = &progress;
                    async move {
                        let r = r?;
                        let checked = check_blob(pool.store(), &r, deep).await;
                        if let Err(p) = &checked {
                            // Recorded in the bucket: the next run copies this object
                            // again instead of reusing the damaged blob.
                            let record =
                                catalog::DamageRecord { blob: r.blob.clone(), problem: p.clone(), found_at: chrono::Utc::now(), backup_id: id.clone() };
                            if let Err(e) = catalog.record_damage(&record).await {
                                warn!(blob = %r.blob, error = %e, "could not record the damaged blob; the next run will not know to copy it again");
                            }
                        }
                        progress.add_done(1, r.size);
                        Ok::<_, CatalogError>((r, checked))
                    }
                })
                .buffered(concurrency);
            futures::pin_mut!(checks);
            while let Some(result) = checks.next().await {
                match result {
                    Ok((r, checked)) => {
                        f.checked_files += 1;
                        f.checked_bytes += if deep { r.size } else { 0 };
                        pending += u64::from(r.sha256.is_none());
                        match checked {
                            Ok(Some(sha256)) => {
                                let line = catalog::ChecksumRecord { key: r.key.clone(), blob: r.blob.clone(), sha256 };
                                computed.push_checksum(&line).map_err(|e| CatalogError::Corrupt { what: "a temporary file".into(), detail: e.to_string() })?;
                            }
                            Ok(None) => {}
                            Err(p) => {
                                pending_bad |= r.sha256.is_none();
                                f.problems.push(format!("object {} (blob {}): {p}", r.key, r.blob));
                            }
                        }
                    }
                    Err(e) => {
                        unreadable = Some(e);
                        break;
                    }
                }
            }
        }
        match unreadable {
            Some(e) => f.problems.push(format!("{listing_file}: {e}")),
            None => match reader.verify_whole(&manifest.objects) {
                Err(e) => f.problems.push(format!("{listing_file}: {e}")),
                Ok(()) if deep && pending > 0 && !pending_bad => {
                    let (listing, _) = computed.finish().map_err(|e| CatalogError::Corrupt { what: "a temporary file".into(), detail: e.to_string() })?;
                    // Written once: a concurrent verify computed the same sums.
                    if !catalog.has_checksums(id).await? {
                        catalog.put_listing_as(id, &catalog::BackupFile::Checksums, &listing).await?;
                        f.recorded_checksums = pending;
                        info!(blobs = pending, file = %catalog::BackupFile::Checksums.path(id), "recorded the SHA-256 of the blobs whose copy had none");
                    }
                }
                Ok(()) => {}
            },
        }
    }
    Ok(f)
}

/// Checks one blob of the listing: present, its size, the ETag its copy answered (a
/// pending record's); `deep`: its content, against the recorded SHA-256 or, pending,
/// against that ETag when it is an MD5. Returns the SHA-256 computed for a pending
/// record, or what is wrong.
async fn check_blob(store: &Arc<dyn ObjectStore>, r: &ObjectRecord, deep: bool) -> Result<Option<String>, String> {
    let path = catalog::recorded_path(&r.blob);
    let meta = match store.head(&path).await {
        Ok(m) => m,
        Err(object_store::Error::NotFound { .. }) => return Err("missing".into()),
        Err(e) => return Err(format!("unreadable: {e}")),
    };
    if meta.size != r.size {
        return Err(format!("size {} instead of {}", meta.size, r.size));
    }
    if let (Some(want), Some(got)) = (&r.blob_etag, &meta.e_tag)
        && want.trim_matches('"') != got.trim_matches('"')
    {
        return Err(format!("ETag {got} instead of {want}: the blob was written again since its copy"));
    }
    if !deep {
        return Ok(None);
    }
    let md5 = objects::Expect::of_blob(r).md5;
    let (sha256, read_md5) = digests_of(store, &path, md5.is_some()).await.map_err(|e| format!("unreadable: {e}"))?;
    match (&r.sha256, md5, read_md5) {
        (Some(want), _, _) if *want != sha256 => Err(format!("checksum {sha256} instead of {want}")),
        (Some(_), _, _) => Ok(None),
        (None, Some(want), Some(read)) if want != read => Err(format!("MD5 {} instead of the copy's ETag {}", hex::encode(read), hex::encode(want))),
        (None, _, _) => Ok(Some(sha256)),
    }
}

/// The SHA-256 (hex) of an object's bytes as read, and their MD5 if asked.
async fn digests_of(store: &Arc<dyn ObjectStore>, path: &Path, md5: bool) -> Result<(String, Option<[u8; 16]>), object_store::Error> {
    let mut sha256 = Sha256::new();
    let mut md5 = md5.then(<md5::Md5 as md5::Digest>::new);
    let mut stream = store.get(path).await?.into_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        sha256.update(&chunk);
        if let Some(m) = &mut md5 {
            md5::Digest::update(m, &chunk);
        }
    }
    Ok((hex::encode(sha256.finalize()), md5.map(|m| md5::Digest::finalize(m).into())))
}

/// Checks one object: its size, and with `sha256` its content.
async fn check(store: &Arc<dyn ObjectStore>, path: &Path, size: u64, sha256: Option<&str>) -> Option<String> {
    let meta = match store.head(path).await {
        Ok(m) => m,
        Err(object_store::Error::NotFound { .. }) => return Some("missing".into()),
        Err(e) => return Some(format!("unreadable: {e}")),
    };
    if meta.size != size {
        return Some(format!("size {} instead of {size}", meta.size));
    }
    let want = sha256?;
    match sha256_of(store, path).await {
        Ok(got) => (got != want).then(|| format!("checksum {got} instead of {want}")),
        Err(e) => Some(format!("unreadable: {e}")),
    }
}

/// The SHA-256 of an object's bytes as read, in hex.
pub(crate) async fn sha256_of(store: &Arc<dyn ObjectStore>, path: &Path) -> Result<String, object_store::Error> {
    let mut hasher = Sha256::new();
    let mut stream = store.get(path).await?.into_stream();
    while let Some(chunk) = stream.next().await {
        hasher.update(&chunk?);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The restore drill: the dumps restored into scratch databases (dropped afterwards),
/// then Pachyderm's own consistency: every live chunk of `storage.chunk_objects` is in
/// the backup's object listing. Encrypted dumps are decrypted with `identity`
/// (RESTORE_IDENTITY_FILE), checked before any scratch database is made.
#[allow(clippy::too_many_arguments)]
pub async fn drill(
    server: &PgServer,
    bin_dir: Option<&std::path::Path>,
    identity: Option<&DumpIdentity>,
    dump_scratch: Scratch,
    catalog: &Catalog,
    manifest: &Manifest,
    f: &mut Findings,
) -> Result<(), VerifyError> {
    let tools = Tools::find(bin_dir).await?;
    let folder = catalog.folder(&manifest.backup_id);
    for db in &manifest.databases {
        database::check_decryptable(&folder, &db.name, db, identity).await?;
    }
    let suffix = manifest.backup_id.to_ascii_lowercase().replace('-', "_");
    let mut scratch = Vec::new();
    let mut restored = Vec::new();
    let result = async {
        for db in &manifest.databases {
            let name = format!("pbdrill_{}_{suffix}", db.name);
            database::drop_database(server, &tools, &name).await?;
            database::ensure_database(server, &tools, &name).await?;
            scratch.push(name.clone());
            let progress = Progress::start("drill", std::time::Duration::from_secs(30));
            match database::restore(server, &name, &tools, &folder, db, identity, false, dump_scratch, &progress).await {
                Ok(_) => restored.push(db.name.clone()),
                Err(e) => f.problems.push(format!("database {} does not restore cleanly: {e}", db.name)),
            }
        }
        // Pachyderm's chunks can only be checked in a database that restored.
        if restored.iter().any(|d| d == "pachyderm") && manifest.objects.listing.is_some() {
            let name = format!("pbdrill_pachyderm_{suffix}");
            let missing = missing_chunks(server, &tools, &name, catalog, manifest).await?;
            if !missing.0.is_empty() {
                f.problems.push(format!(
                    "{} live chunk(s) referenced by storage.chunk_objects are missing from the backup's objects, first: {}",
                    missing.1,
                    missing.0.join(", ")
                ));
            }
            info!(chunks = missing.2, missing = missing.1, "drill: metadata and objects compared");
        }
        Ok::<_, VerifyError>(())
    }
    .await;
    for name in &scratch {
        if let Err(e) = database::drop_database(server, &tools, name).await {
            warn!(database = %name, error = %e, "could not drop a drill database");
        }
    }
    result
}

/// Live chunk keys of the restored metadata, streamed in key order and merge-joined
/// with the listing. Returns (first ten missing, missing count, chunks checked).
async fn missing_chunks(
    server: &PgServer,
    tools: &Tools,
    database: &str,
    catalog: &Catalog,
    manifest: &Manifest,
) -> Result<(Vec<String>, u64, u64), VerifyError> {
    let mut rows = database::rows(server, tools, database, &database::live_chunks(None)).await?;
    let mut listing = catalog.read_listing(&manifest.backup_id, manifest).await?;
    let mut pending = listing.next_record()?;
    let (mut missing, mut count, mut checked) = (Vec::new(), 0u64, 0u64);
    while let Some(key) = rows.next().await? {
        checked += 1;
        while pending.as_ref().is_some_and(|r| r.key < key) {
            pending = listing.next_record()?;
        }
        if pending.as_ref().is_none_or(|r| r.key != key) {
            count += 1;
            if missing.len() < 10 {
                missing.push(key);
            }
        }
    }
    Ok((missing, count, checked))
}
