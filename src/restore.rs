//! Restore a backup into a (new) PostgreSQL server and bucket, and verify backups:
//! every file present with its size, `--deep` every checksum, `--drill` a restore of
//! the databases into scratch databases and a check that every live chunk the
//! metadata references is in the backup's object listing.

use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::catalog::{self, Catalog, CatalogError, Manifest, ObjectRecord};
use crate::config::{DumpIdentity, PgServer, RestoreConfig};
use crate::database::{self, DatabaseError, Tools};
use crate::objects::{self, ObjectsError};
use crate::progress::Progress;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Database(#[from] DatabaseError),
    #[error(transparent)]
    Objects(#[from] ObjectsError),
    #[error("there is no complete backup in the target bucket")]
    NoBackup,
    #[error("nothing was written: {}", .0.join("; "))]
    Refused(Vec<String>),
    #[error("{0} is needed for this command")]
    Missing(&'static str),
}

impl RestoreError {
    /// 2 for what the configuration lacks (an encrypted backup without
    /// RESTORE_IDENTITY_FILE), else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            RestoreError::Database(DatabaseError::IdentityMissing { .. }) => 2,
            _ => 1,
        }
    }
}

/// Picks a backup: the given id, or the newest complete one.
pub async fn choose(catalog: &Catalog, id: Option<&str>) -> Result<Manifest, RestoreError> {
    match id {
        Some(id) => Ok(catalog.manifest(id).await?),
        None => catalog.complete().await?.pop().ok_or(RestoreError::NoBackup),
    }
}

#[derive(Debug, Default)]
pub struct RestoreSummary {
    pub backup_id: String,
    pub databases: Vec<(String, u64)>,
    pub objects: u64,
    pub objects_bytes: u64,
    pub skipped: u64,
    pub seconds: f64,
}

pub struct RestoreOptions {
    pub clean: bool,
    pub force: bool,
    pub databases: bool,
    pub objects: bool,
}

/// Restores `manifest`: checks every destination first (refusing non-empty ones
/// without `--clean` / `--force`), then databases and objects.
pub async fn restore(cfg: &RestoreConfig, catalog: &Catalog, manifest: &Manifest, opts: &RestoreOptions) -> Result<RestoreSummary, RestoreError> {
    let started = Instant::now();
    let mut refusals = Vec::new();
    let server =
        if opts.databases && !manifest.databases.is_empty() { Some(cfg.server.as_ref().ok_or(RestoreError::Missing("RESTORE_PGHOST"))?) } else { None };
    let restore_objects = opts.objects && manifest.objects.listing.is_some();
    let destination = if restore_objects { Some(objects::open(cfg.destination.as_ref().ok_or(RestoreError::Missing("RESTORE_URL"))?, true)?) } else { None };

    // Every check before the first write.
    let tools = match server {
        Some(_) => Some(Tools::find(cfg.bin_dir.as_deref()).await?),
        None => None,
    };
    // Encrypted dumps: the identity opens each one's header.
    if server.is_some() {
        for db in &manifest.databases {
            database::check_decryptable(catalog.store(), &db.name, db, &catalog::backup_path(&manifest.backup_id, &db.file), cfg.identity.as_ref()).await?;
        }
    }
    if let (Some(server), Some(tools)) = (server, &tools) {
        for db in &manifest.databases {
            // Missing (None): it is created. An unreachable server fails here, clearly.
            if let Some(tables) = database::table_count(server, tools, &db.name).await?
                && tables > 0
                && !opts.clean
            {
                refusals.push(DatabaseError::NotEmpty { database: db.name.clone(), tables }.to_string());
            }
        }
    }
    if let Some(dest) = &destination {
        let occupied =
            dest.list(None).next().await.transpose().map_err(|source| ObjectsError::Store { side: "restore", what: "listing (preflight)".into(), source })?;
        if let Some(meta) = occupied {
            if !opts.force {
                refusals.push(format!("the restore bucket (RESTORE_URL) is not empty (it holds {} and maybe more): pass --force to restore into it; objects already restored are then skipped", meta.location));
            }
        }
    }
    if !refusals.is_empty() {
        return Err(RestoreError::Refused(refusals));
    }

    let mut summary = RestoreSummary { backup_id: manifest.backup_id.clone(), ..Default::default() };
    if let (Some(server), Some(tools)) = (server, &tools) {
        for db in &manifest.databases {
            let progress = Progress::start("restore-database", std::time::Duration::from_secs(30));
            database::ensure_database(server, tools, &db.name).await?;
            let path = catalog::backup_path(&manifest.backup_id, &db.file);
            let bytes = database::restore(server, &db.name, tools, catalog.store(), db, &path, cfg.identity.as_ref(), opts.clean, &progress).await?;
            info!(database = %db.name, bytes, "database restored");
            summary.databases.push((db.name.clone(), bytes));
        }
    }
    if let Some(dest) = destination {
        let (restored, bytes, skipped) = restore_objects_into(catalog, manifest, &dest, cfg.concurrency, cfg.common.progress_interval).await?;
        summary.objects = restored;
        summary.objects_bytes = bytes;
        summary.skipped = skipped;
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Copies every blob of the listing back to its key, checked against its recorded
/// size and SHA-256 before each write completes (a damaged blob is never restored);
/// an object already there with the right size and checksum is skipped. The listing
/// itself is checked against the manifest once read whole.
async fn restore_objects_into(
    catalog: &Catalog,
    manifest: &Manifest,
    dest: &Arc<dyn ObjectStore>,
    concurrency: usize,
    interval: std::time::Duration,
) -> Result<(u64, u64, u64), RestoreError> {
    let mut listing = catalog.read_listing(&manifest.backup_id, manifest).await?;
    let progress = Progress::start("restore-objects", interval);
    progress.add_total(manifest.objects.counts.count, manifest.objects.counts.bytes);
    progress.totals_known();
    let pool = catalog.store().clone();
    let (mut restored, mut bytes, mut skipped) = (0, 0, 0);
    {
        let records = futures::stream::iter(listing.by_ref());
        let results = records
            .map_err(RestoreError::from)
            .map_ok(|record: ObjectRecord| {
                let pool = pool.clone();
                let dest = dest.clone();
                let progress = &progress;
                async move {
                    let path = catalog::recorded_path(&record.key);
                    if already_restored(&dest, &path, &record).await {
                        progress.add_done(1, record.size);
                        return Ok::<_, RestoreError>((0u64, 0u64, 1u64));
                    }
                    let expect = objects::Expect::recorded(record.size, &record.sha256);
                    objects::copy_verified(&pool, "target", &record.blob, &dest, &record.key, expect, progress).await?;
                    progress.add_done(1, 0);
                    Ok((1, record.size, 0))
                }
            })
            .try_buffer_unordered(concurrency);
        futures::pin_mut!(results);
        while let Some((r, b, s)) = results.try_next().await? {
            restored += r;
            bytes += b;
            skipped += s;
        }
    }
    listing.verify_whole(&manifest.objects)?;
    Ok((restored, bytes, skipped))
}

async fn already_restored(dest: &Arc<dyn ObjectStore>, path: &Path, record: &ObjectRecord) -> bool {
    match dest.head(path).await {
        Ok(meta) if meta.size == record.size => match dest.get(path).await {
            Ok(r) => {
                let mut hasher = Sha256::new();
                let mut stream = r.into_stream();
                while let Some(chunk) = stream.next().await {
                    match chunk {
                        Ok(c) => hasher.update(&c),
                        Err(_) => return false,
                    }
                }
                hex::encode(hasher.finalize()) == record.sha256
            }
            Err(_) => false,
        },
        _ => false,
    }
}

/// What `verify` found wrong with one backup.
#[derive(Debug, Default)]
pub struct Findings {
    pub backup_id: String,
    pub checked_files: u64,
    pub checked_bytes: u64,
    pub problems: Vec<String>,
}

/// Every file the manifest names exists with its size; with `deep`, every byte is
/// re-read and every SHA-256 checked.
pub async fn verify(catalog: &Catalog, manifest: &Manifest, deep: bool, concurrency: usize, interval: std::time::Duration) -> Result<Findings, RestoreError> {
    let id = &manifest.backup_id;
    let mut f = Findings { backup_id: id.clone(), ..Default::default() };
    let store = catalog.store().clone();
    for db in &manifest.databases {
        let path = catalog::backup_path(id, &db.file);
        f.checked_files += 1;
        if let Some(problem) = check(&store, &path, db.size, deep.then_some(db.sha256.as_str())).await {
            f.problems.push(format!("database {}: {problem}", db.name));
        }
    }
    for file in &manifest.cluster_objects {
        f.checked_files += 1;
        if let Err(e) = store.head(&catalog::backup_path(id, file)).await {
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
        {
            let checks = futures::stream::iter(reader.by_ref())
                .map(|r| {
                    let store = store.clone();
                    let progress = &progress;
                    async move {
                        let r = r?;
                        let problem = check(&store, &catalog::recorded_path(&r.blob), r.size, deep.then_some(r.sha256.as_str())).await;
                        if let Some(p) = &problem {
                            // Recorded in the bucket: the next run copies this object
                            // again instead of reusing the damaged blob.
                            let record =
                                catalog::DamageRecord { blob: r.blob.clone(), problem: p.clone(), found_at: chrono::Utc::now(), backup_id: id.clone() };
                            if let Err(e) = catalog.record_damage(&record).await {
                                warn!(blob = %r.blob, error = %e, "could not record the damaged blob; the next run will not know to copy it again");
                            }
                        }
                        let problem = problem.map(|p| format!("object {} (blob {}): {p}", r.key, r.blob));
                        progress.add_done(1, r.size);
                        Ok::<_, CatalogError>((r.size, problem))
                    }
                })
                .buffer_unordered(concurrency);
            futures::pin_mut!(checks);
            while let Some(result) = checks.next().await {
                match result {
                    Ok((size, problem)) => {
                        f.checked_files += 1;
                        f.checked_bytes += if deep { size } else { 0 };
                        f.problems.extend(problem);
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
            None => {
                if let Err(e) = reader.verify_whole(&manifest.objects) {
                    f.problems.push(format!("{listing_file}: {e}"));
                }
            }
        }
    }
    Ok(f)
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
    let mut hasher = Sha256::new();
    let mut stream = match store.get(path).await {
        Ok(r) => r.into_stream(),
        Err(e) => return Some(format!("unreadable: {e}")),
    };
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => hasher.update(&c),
            Err(e) => return Some(format!("unreadable: {e}")),
        }
    }
    let got = hex::encode(hasher.finalize());
    (got != want).then(|| format!("checksum {got} instead of {want}"))
}

/// The restore drill: the dumps restored into scratch databases (dropped afterwards),
/// then Pachyderm's own consistency: every live chunk of `storage.chunk_objects` is in
/// the backup's object listing. Encrypted dumps are decrypted with `identity`
/// (RESTORE_IDENTITY_FILE), checked before any scratch database is made.
pub async fn drill(
    server: &PgServer,
    bin_dir: Option<&std::path::Path>,
    identity: Option<&DumpIdentity>,
    catalog: &Catalog,
    manifest: &Manifest,
    f: &mut Findings,
) -> Result<(), RestoreError> {
    let tools = Tools::find(bin_dir).await?;
    for db in &manifest.databases {
        database::check_decryptable(catalog.store(), &db.name, db, &catalog::backup_path(&manifest.backup_id, &db.file), identity).await?;
    }
    let suffix = manifest.backup_id.to_ascii_lowercase().replace('-', "_");
    let mut scratch = Vec::new();
    let result = async {
        for db in &manifest.databases {
            let name = format!("pbdrill_{}_{suffix}", db.name);
            database::drop_database(server, &tools, &name).await?;
            database::ensure_database(server, &tools, &name).await?;
            scratch.push(name.clone());
            let progress = Progress::start("drill", std::time::Duration::from_secs(30));
            let path = catalog::backup_path(&manifest.backup_id, &db.file);
            if let Err(e) = database::restore(server, &name, &tools, catalog.store(), db, &path, identity, false, &progress).await {
                f.problems.push(format!("database {} does not restore cleanly: {e}", db.name));
            }
        }
        if manifest.databases.iter().any(|d| d.name == "pachyderm") && manifest.objects.listing.is_some() {
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
        Ok::<_, RestoreError>(())
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
) -> Result<(Vec<String>, u64, u64), RestoreError> {
    let mut rows = database::rows(
        server,
        tools,
        database,
        "SELECT key FROM (SELECT 'chunk/' || encode(chunk_id, 'hex') || '.' || lpad(to_hex(gen), 16, '0') AS key FROM storage.chunk_objects WHERE uploaded AND NOT tombstone) k ORDER BY key COLLATE \"C\"",
    )
    .await?;
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
