//! Restore a backup into a (new) PostgreSQL server and bucket: every destination
//! checked before the first write, the dumps streamed into `pg_restore` with their
//! SHA-256 checked on the way, the objects copied back checked against their recorded
//! SHA-256. Verifying backups (and the restore drill) is `verify.rs`'s.

use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use tracing::{debug, info, warn};

use crate::catalog::{self, Catalog, CatalogError, Manifest, ObjectRecord};
use crate::config::{RestoreConfig, vars};
use crate::database::{self, DatabaseError, Tools};
use crate::exit::ExitCode;
use crate::objects::{self, Create, ObjectsError};
use crate::progress::Progress;
use crate::s3;
use crate::server_copy::{self, Copied, ServerCopy};
use crate::verify::sha256_of;

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
    /// `Config` for what the configuration lacks (an encrypted backup without
    /// RESTORE_IDENTITY_FILE), else `Failed`.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            RestoreError::Database(DatabaseError::IdentityMissing { .. }) => ExitCode::Config,
            _ => ExitCode::Failed,
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
    let server = if opts.databases && !manifest.databases.is_empty() {
        Some(cfg.server.as_ref().ok_or(RestoreError::Missing(vars::RESTORE_PGHOST.name))?)
    } else {
        None
    };
    let restore_objects = opts.objects && manifest.objects.listing.is_some();
    let destination = if restore_objects {
        Some(objects::open(cfg.destination.as_ref().ok_or(RestoreError::Missing(vars::RESTORE_URL.name))?, Create::IfMissing)?)
    } else {
        None
    };

    // Every check before the first write.
    let tools = match server {
        Some(_) => Some(Tools::find(cfg.bin_dir.as_deref()).await?),
        None => None,
    };
    // Encrypted dumps: the identity opens each one's header.
    let folder = catalog.folder(&manifest.backup_id);
    if server.is_some() {
        for db in &manifest.databases {
            database::check_decryptable(&folder, &db.name, db, cfg.identity.as_ref()).await?;
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
    // An empty restore bucket holds nothing to skip: no object is looked for first.
    let mut look_first = true;
    if let Some(dest) = &destination {
        let occupied =
            dest.list(None).next().await.transpose().map_err(|source| ObjectsError::Store { side: "restore", what: "listing (preflight)".into(), source })?;
        look_first = occupied.is_some();
        if let Some(meta) = occupied
            && !opts.force
        {
            refusals.push(format!("the restore bucket (RESTORE_URL) is not empty (it holds {} and maybe more): pass --force to restore into it; objects already restored are then skipped", meta.location));
        }
    }
    if !refusals.is_empty() {
        return Err(RestoreError::Refused(refusals));
    }

    let mut summary = RestoreSummary { backup_id: manifest.backup_id.clone(), ..Default::default() };
    // The databases and the objects are independent: restored side by side, the
    // restore takes the longer of the two, not their sum.
    let databases = async {
        let mut restored = Vec::new();
        if let (Some(server), Some(tools)) = (server, &tools) {
            for db in &manifest.databases {
                let progress = Progress::start("restore-database", std::time::Duration::from_secs(30));
                database::ensure_database(server, tools, &db.name).await?;
                let bytes = database::restore(server, &db.name, tools, &folder, db, cfg.identity.as_ref(), opts.clean, cfg.scratch, &progress).await?;
                info!(database = %db.name, bytes, "database restored");
                restored.push((db.name.clone(), bytes));
            }
        }
        Ok::<_, RestoreError>(restored)
    };
    let objects = async {
        match (destination, &cfg.destination) {
            (Some(dest), Some(settings)) => {
                let server = server_copy::open(server_copy::restore_route(cfg.copy_mode, &cfg.target, settings), &cfg.target, settings);
                let put = s3::Put::open(settings);
                restore_objects_into(catalog, manifest, &dest, look_first, server.as_ref(), put.as_ref(), cfg.concurrency, cfg.common.progress_interval).await
            }
            _ => Ok((0, 0, 0)),
        }
    };
    let (databases, (restored, bytes, skipped)) = tokio::try_join!(databases, objects)?;
    summary.databases = databases;
    summary.objects = restored;
    summary.objects_bytes = bytes;
    summary.skipped = skipped;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Copies every blob of the listing back to its key, checked against its recorded
/// size and SHA-256 (a damaged blob is never restored); an object already there with
/// the right size and checksum is skipped (`look_first`: the bucket was not empty). The
/// listing itself is checked against the manifest once read whole.
#[allow(clippy::too_many_arguments)]
async fn restore_objects_into(
    catalog: &Catalog,
    manifest: &Manifest,
    dest: &Arc<dyn ObjectStore>,
    look_first: bool,
    server: Option<&ServerCopy>,
    put: Option<&s3::Put>,
    concurrency: usize,
    interval: std::time::Duration,
) -> Result<(u64, u64, u64), RestoreError> {
    let mut listing = catalog.read_listing(&manifest.backup_id, manifest).await?;
    let progress = Progress::start("restore-objects", interval);
    progress.add_total(manifest.objects.counts.count, manifest.objects.counts.bytes);
    progress.totals_known();
    let pool = catalog.pool();
    let (mut restored, mut bytes, mut skipped) = (0, 0, 0);
    {
        let records = futures::stream::iter(listing.by_ref());
        let results = records
            .map_err(RestoreError::from)
            .map_ok(|record: ObjectRecord| {
                let dest = dest.clone();
                let progress = &progress;
                async move {
                    let path = catalog::recorded_path(&record.key);
                    if look_first && already_restored(&dest, &path, &record).await {
                        progress.add_done(1, record.size);
                        return Ok::<_, RestoreError>((0u64, 0u64, 1u64));
                    }
                    restore_one(pool.store(), server, &dest, put, &record, progress).await?;
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

/// One blob back to its key. Server-side when the backup bucket and the restore bucket
/// are one account's: the store's SHA-256 of the copy must be the recorded one, and a
/// copy that differs is deleted and the blob streamed instead, which names the damage.
/// Streamed, the bytes are checked before the write completes.
async fn restore_one(
    pool: &Arc<dyn ObjectStore>,
    server: Option<&ServerCopy>,
    dest: &Arc<dyn ObjectStore>,
    put: Option<&s3::Put>,
    record: &ObjectRecord,
    progress: &Progress,
) -> Result<(), RestoreError> {
    if let Some(server) = server.filter(|s| checkable_copy(s, record)) {
        match server.copy(&record.blob, &record.key, None, record.size).await {
            Ok(Copied::Done { sha256, etag }) => match copy_matches(record, sha256.as_deref(), etag.as_deref()) {
                Some(true) => {
                    progress.add_done(0, record.size);
                    return Ok(());
                }
                Some(false) => {
                    warn!(key = %record.key, blob = %record.blob, recorded = ?record.sha256.as_ref().or(record.blob_etag.as_ref()), copied = ?sha256.or(etag), "the server-side copy is not the recorded SHA-256 (or ETag): it is deleted, and the blob streamed to check it");
                    let path = catalog::recorded_path(&record.key);
                    dest.delete(&path).await.map_err(|source| ObjectsError::Store {
                        side: "restore",
                        what: format!("deleting the damaged copy {path}"),
                        source,
                    })?;
                }
                // Nothing to check the copy against: streaming checks it (and overwrites it).
                None => server.note_no_sha256(),
            },
            // Streaming names what is missing, as it names damage.
            Ok(Copied::Missing) => {}
            Err(why) => debug!(key = %record.key, ?why, "streamed instead of copied server-side"),
        }
    }
    objects::copy_verified(pool, "target", &record.blob, dest, put, &record.key, objects::Expect::of_blob(record), progress).await?;
    Ok(())
}

/// Whether the server-side copy of a blob could be checked: one copy request (a copy in
/// parts has neither a SHA-256 nor an MD5 ETag) whose answer gives what the record has,
/// the SHA-256 while the store gives it, or, pending, an MD5 ETag. Else the blob is
/// streamed, checked, rather than copied and then streamed again.
fn checkable_copy(server: &ServerCopy, record: &ObjectRecord) -> bool {
    let whole = record.size <= server_copy::MAX_SERVER_COPY && server.takes(record.size);
    whole
        && match record.sha256 {
            Some(_) => !server.gave_no_sha256(),
            None => objects::Expect::of_blob(record).md5.is_some(),
        }
}

/// Whether a server-side copy is the recorded blob: by the store's SHA-256 of it, or for
/// a pending record by its ETag (a copy keeps a single-part object's MD5 ETag); None
/// when the store's answer says nothing that can be compared.
fn copy_matches(record: &ObjectRecord, sha256: Option<&str>, etag: Option<&str>) -> Option<bool> {
    match (&record.sha256, sha256) {
        (Some(want), Some(got)) => Some(want == got),
        (Some(_), None) => None,
        (None, _) => {
            let md5 = objects::Expect::of_blob(record).md5?;
            Some(etag.is_some_and(|e| e.trim_matches('"') == hex::encode(md5)))
        }
    }
}

async fn already_restored(dest: &Arc<dyn ObjectStore>, path: &Path, record: &ObjectRecord) -> bool {
    match dest.head(path).await {
        // A pending record has no SHA-256 to compare: it is copied again.
        Ok(meta) if meta.size == record.size => match &record.sha256 {
            Some(want) => sha256_of(dest, path).await.is_ok_and(|sha256| sha256 == *want),
            None => false,
        },
        _ => false,
    }
}
