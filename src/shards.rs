//! The pre-copy past one pod (COPY_SHARDS > 1): the source's key space cut into shards,
//! each copied by one index of a Kubernetes Indexed Job (`copy-shard`), and the
//! shards' listings put back together into the one pre-copy listing the run goes on
//! with, exactly as if one pod had copied everything.
//!
//! Pachyderm's chunk keys are `chunk/<content hash>.<gen>`, uniform in their leading hex
//! digits, so shard `i` of `n` holds the chunks whose first two hex digits fall in
//! `[256·i/n, 256·(i+1)/n)`. The shards are contiguous key ranges: the first also holds
//! every key before `chunk/`, the last every key after it (Pachyderm writes none that
//! last), so the merge is the shards' listings one after the other, in index order.
//!
//! A shard is done once its summary (`shards/<i>.json`) is written, after its listing
//! (`shards/<i>.jsonl.zst`): a retried index that finds both, for the same job, reuses
//! them instead of copying again.

use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::catalog::{BackupFile, Catalog, CatalogError, Listing, ListingReader, ListingWriter, ObjectCounts};
use crate::cluster::ClusterError;
use crate::cluster::copy_job::{self, CopyJobs, job_name};
use crate::config::RunConfig;
use crate::objects::{self, CHUNK_PREFIX, Create, ObjectsError};
use crate::progress::Progress;
use crate::scan::{self, KeyRange};

/// Leading-hex-digit prefixes shards are cut at: the first two digits of a chunk key.
const PREFIXES: u32 = 256;
/// Pieces each shard's range is listed in at once (as [`scan::TILES`] for one pod).
const PIECES: u32 = 16;

/// The key range of shard `index` of `count` (1 ≤ count ≤ 256, index < count).
pub fn range(index: u32, count: u32) -> KeyRange {
    let bound = |i: u32| (i > 0 && i < count).then(|| Path::from(format!("{CHUNK_PREFIX}/{:02x}", i * PREFIXES / count)));
    // Its pieces are cut at three hex digits, evenly: a shard of one two-digit prefix
    // still lists in 16 pieces.
    let (lo, hi) = (index * PREFIXES / count * 16, (index + 1) * PREFIXES / count * 16);
    let cuts = (1..PIECES).map(|j| lo + j * (hi - lo) / PIECES).map(|u| Path::from(format!("{CHUNK_PREFIX}/{u:03x}"))).collect();
    KeyRange { after: bound(index), until: bound(index + 1), cuts }
}

/// What one index of the Job is asked to do: its arguments on the command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardTask {
    pub backup_id: String,
    pub index: u32,
    pub count: u32,
    /// The backup whose listing says what the pool already holds.
    pub reference: Option<String>,
    /// Every object copied under a fresh key (`run --full`, or a pool found damaged).
    pub full: bool,
}

/// A shard's outcome, written after its listing: the shard is done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardSummary {
    pub task: ShardTask,
    pub objects: ObjectCounts,
    /// SHA-256 of the listing's uncompressed lines (as a manifest records its listing's).
    pub listing_sha256: String,
    pub seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error(transparent)]
    Objects(#[from] ObjectsError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("the reference backup {0} named by the run has no readable manifest: {1}")]
    Reference(String, CatalogError),
    #[error("shard {index}'s files are not what its summary says ({detail}); the run copies it again on its next attempt")]
    Damaged { index: u32, detail: String },
    #[error("the listing of shard {index} does not follow the previous shard's in key order at {key:?}: the shards overlap (a bug)")]
    Order { index: u32, key: String },
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(
        "the copy Job {job} failed ({reason}: {message}); shards {shards} did not finish, each tried {tries} times. Their pods' logs: `kubectl logs -n {namespace} -l batch.kubernetes.io/job-name={job}` (the Job is kept until the next run)",
        tries = copy_job::RETRIES_PER_INDEX + 1
    )]
    JobFailed { job: String, namespace: String, reason: String, message: String, shards: String },
    #[error("the sharded pre-copy did not finish within PRECOPY_TIMEOUT ({}): shards {shards} were still copying; raise PRECOPY_TIMEOUT or COPY_PARALLELISM", humantime::format_duration(*.limit))]
    Timeout { limit: Duration, shards: String },
    #[error("COPY_SHARDS is 1: there is no Job to run (a bug)")]
    NotSharded,
}

fn spill_err(what: &str) -> impl Fn(std::io::Error) -> ObjectsError + '_ {
    move |source| ObjectsError::Read { what: what.to_string(), source }
}

/// `copy-shard`: copies shard `task.index` of the source into the pool, or reuses what
/// an earlier attempt of the same task left.
pub async fn copy_shard(cfg: &RunConfig, task: &ShardTask) -> Result<ShardSummary, ShardError> {
    let started = Instant::now();
    let catalog = Catalog::open(&cfg.target, Create::Never).await?;
    if let Some(summary) = done(&catalog, task).await? {
        info!(shard = task.index, objects = summary.objects.count, "this shard was copied by an earlier attempt: reused");
        return Ok(summary);
    }
    let source = objects::Source::open(&cfg.source, &cfg.target, cfg.copy.mode)?;
    source.probe_content_md5(&catalog.folder(&task.backup_id).path(&BackupFile::Probe), catalog.object_lock()).await;
    let reference = match &task.reference {
        Some(id) => {
            let manifest = catalog.manifest(id).await.map_err(|e| ShardError::Reference(id.clone(), e))?;
            match catalog.verified_listing(&manifest).await? {
                Some(listing) => ListingReader::new(&listing, format!("the listing of {id}"))?,
                None => ListingReader::empty()?,
            }
        }
        None => ListingReader::empty()?,
    };
    let damaged = catalog.damage_records().await?.into_iter().map(|(_, r)| r.blob).collect();
    let heal = objects::Heal { damaged, full: task.full, backup_id: task.backup_id.clone() };
    let range = range(task.index, task.count);
    let entries = scan::sorted_range(&source, objects::lists_sorted(&cfg.source), &range, scan::RUN).await?.map_ok(objects::Entry::Listed);
    let progress = Progress::start("copy-shard", cfg.common.progress_interval);
    let (writer, counts) = objects::copy_entries(
        &source,
        Box::pin(entries),
        catalog.pool().store(),
        reference,
        &heal,
        cfg.copy.concurrency,
        objects::Vanished::LeftOut,
        &progress,
    )
    .await?;
    let (listing, sha256) = writer.finish().map_err(spill_err("the shard's listing"))?;
    catalog.put_listing_as(&task.backup_id, &BackupFile::ShardListing(task.index), &listing).await?;
    let summary = ShardSummary { task: task.clone(), objects: counts, listing_sha256: sha256, seconds: started.elapsed().as_secs_f64() };
    let body = serde_json::to_vec_pretty(&summary).map_err(|e| spill_err("the shard's summary")(std::io::Error::other(e)))?;
    catalog.put_file(&task.backup_id, &BackupFile::ShardSummary(task.index), body.into()).await?;
    Ok(summary)
}

/// The summary of shard `task.index` when an earlier attempt of this same task finished
/// it. A summary of another task (another reference, shard count or `full`) is not
/// this one's and is copied over.
pub async fn done(catalog: &Catalog, task: &ShardTask) -> Result<Option<ShardSummary>, ShardError> {
    let Some(bytes) = catalog.get_file(&task.backup_id, &BackupFile::ShardSummary(task.index)).await? else { return Ok(None) };
    match serde_json::from_slice::<ShardSummary>(&bytes) {
        Ok(summary) if summary.task == *task => Ok(Some(summary)),
        Ok(_) => Ok(None),
        Err(e) => {
            warn!(shard = task.index, error = %e, "an unreadable shard summary: copying the shard again");
            Ok(None)
        }
    }
}

/// The shards' listings, checked against their summaries and joined in index order
/// into the pre-copy listing, with their counts summed.
pub async fn merge(catalog: &Catalog, summaries: &[ShardSummary]) -> Result<(Listing, ObjectCounts), ShardError> {
    let mut out = ListingWriter::new().map_err(spill_err("the merged pre-copy listing"))?;
    let mut total = ObjectCounts::default();
    let mut last: Option<String> = None;
    for summary in summaries {
        let index = summary.task.index;
        let damaged = |detail: String| ShardError::Damaged { index, detail };
        let listing =
            catalog.get_listing(&summary.task.backup_id, &BackupFile::ShardListing(index)).await?.ok_or_else(|| damaged("its listing is missing".into()))?;
        let mut reader = ListingReader::new(&listing, format!("the listing of shard {index}"))?;
        while let Some(record) = reader.next_record()? {
            if last.as_deref().is_some_and(|k| k >= record.key.as_str()) {
                return Err(ShardError::Order { index, key: record.key });
            }
            last = Some(record.key.clone());
            out.push(&record).map_err(spill_err("the merged pre-copy listing"))?;
        }
        let entry = crate::catalog::ObjectsEntry {
            mode: crate::config::ObjectsMode::Copy,
            listing: None,
            listing_sha256: Some(summary.listing_sha256.clone()),
            counts: summary.objects,
            index: None,
        };
        reader.verify_whole(&entry).map_err(|e| damaged(e.to_string()))?;
        let c = summary.objects;
        total.count += c.count;
        total.bytes += c.bytes;
        total.copied += c.copied;
        total.copied_bytes += c.copied_bytes;
        total.reused += c.reused;
        total.reused_bytes += c.reused_bytes;
        total.pending += c.pending;
    }
    Ok((out.finish().map_err(spill_err("the merged pre-copy listing"))?.0, total))
}

/// The sharded pre-copy as the run sees it: one listing, its counts, and each shard's.
pub struct Sharded {
    pub listing: Listing,
    pub counts: ObjectCounts,
    pub summaries: Vec<ShardSummary>,
}

/// The arguments of `copy-shard` for `task` (its index comes from the Job).
pub fn args(task: &ShardTask) -> Vec<String> {
    let mut args = vec!["copy-shard".to_string(), "--backup".into(), task.backup_id.clone(), "--shards".into(), task.count.to_string()];
    if let Some(r) = &task.reference {
        args.extend(["--reference".to_string(), r.clone()]);
    }
    if task.full {
        args.push("--full".into());
    }
    args
}

/// The pre-copy as an Indexed Job: the Job made (after removing any a dead run left),
/// read until it is over, the shards' listings merged. A Job that fails, or outlives
/// PRECOPY_TIMEOUT, fails the pre-copy naming the shards that did not finish; a failed
/// Job is left for its pods' logs (the next run removes it), every other is deleted by
/// the caller ([`CopyJobs::delete`] of [`job_name`]).
pub async fn precopy(cfg: &RunConfig, jobs: &CopyJobs, catalog: &Catalog, task: &ShardTask) -> Result<Sharded, ShardError> {
    let started = Instant::now();
    let name = job_name(&task.backup_id);
    let lease = &cfg.cluster.lease_name;
    for left in jobs.remove_leftovers(lease, &name).await? {
        warn!(job = %left, "a copy Job left by an earlier run (which died before deleting it) was deleted");
    }
    let settings = cfg.copy.shards.as_ref().ok_or(ShardError::NotSharded)?;
    let pod = jobs.own_pod().await?;
    jobs.create(&copy_job::job(&pod, &name, lease, args(task), settings, cfg.copy.precopy_timeout.map(|t| t + copy_job::DEADLINE_MARGIN))?).await?;
    info!(job = %name, namespace = jobs.namespace(), shards = task.count, parallelism = settings.parallelism, "copy Job created: the pre-copy runs in its pods");

    let tasks: Vec<ShardTask> = (0..task.count).map(|index| ShardTask { index, ..task.clone() }).collect();
    let mut summaries: Vec<Option<ShardSummary>> = vec![None; tasks.len()];
    let mut last_line = Instant::now();
    let unfinished = |summaries: &[Option<ShardSummary>]| (0..task.count).filter(|i| summaries[*i as usize].is_none()).collect::<Vec<u32>>();
    loop {
        let state = jobs.state(&name).await?;
        for &i in &state.completed {
            let Some(slot) = summaries.get_mut(i as usize) else { continue };
            if slot.is_none() {
                let summary = done(catalog, &tasks[i as usize])
                    .await?
                    .ok_or_else(|| ShardError::Damaged { index: i, detail: "Kubernetes reports its pod succeeded, but its summary is missing".into() })?;
                info!(
                    shard = i,
                    objects = summary.objects.count,
                    bytes = summary.objects.bytes,
                    copied = summary.objects.copied,
                    copied_bytes = summary.objects.copied_bytes,
                    seconds = summary.seconds,
                    "shard done"
                );
                *slot = Some(summary);
            }
        }
        match state.outcome {
            copy_job::Outcome::Complete => break,
            copy_job::Outcome::Failed { reason, message } => {
                let failed = if state.failed.is_empty() { unfinished(&summaries) } else { state.failed.clone() };
                return Err(ShardError::JobFailed { job: name, namespace: jobs.namespace().into(), reason, message, shards: format_indexes(&failed) });
            }
            copy_job::Outcome::Running => {}
        }
        if let Some(limit) = cfg.copy.precopy_timeout
            && started.elapsed() > limit
        {
            return Err(ShardError::Timeout { limit, shards: format_indexes(&unfinished(&summaries)) });
        }
        if last_line.elapsed() >= cfg.common.progress_interval {
            last_line = Instant::now();
            let done: Vec<&ShardSummary> = summaries.iter().flatten().collect();
            info!(
                shards_done = done.len(),
                shards = task.count,
                running = state.active,
                objects = done.iter().map(|s| s.objects.count).sum::<u64>(),
                bytes = done.iter().map(|s| s.objects.bytes).sum::<u64>(),
                elapsed_seconds = started.elapsed().as_secs(),
                "copy Job progress (objects and bytes of the shards done; each running pod logs its own progress)"
            );
        }
        tokio::time::sleep(poll_interval(cfg.common.progress_interval)).await;
    }
    let summaries: Vec<ShardSummary> = summaries
        .into_iter()
        .enumerate()
        .map(|(i, s)| s.ok_or(ShardError::Damaged { index: i as u32, detail: "the Job is complete without it".into() }))
        .collect::<Result<_, _>>()?;
    let (listing, counts) = merge(catalog, &summaries).await?;
    if let Err(e) = catalog.delete_shards(&task.backup_id).await {
        warn!(error = %e, "the merged shard files could not be removed; they go with the backup folder");
    }
    info!(
        objects = counts.count,
        copied = counts.copied,
        copied_bytes = counts.copied_bytes,
        reused = counts.reused,
        seconds = started.elapsed().as_secs_f64(),
        "sharded pre-copy done"
    );
    Ok(Sharded { listing, counts, summaries })
}

/// How often the Job is read: often enough to see it end soon, rarely enough for the API
/// server.
fn poll_interval(progress_interval: Duration) -> Duration {
    progress_interval.clamp(Duration::from_millis(500), Duration::from_secs(5))
}

/// The shards a Job's `completedIndexes` (`"0,2-4"`, Kubernetes' compressed form) names.
pub fn parse_indexes(text: &str) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let n = |s: &str| s.trim().parse::<u32>().map_err(|_| format!("{text:?} is not a list of indexes"));
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (n(a)?, n(b)?);
                if a > b {
                    return Err(format!("{text:?} has a decreasing interval"));
                }
                out.extend(a..=b);
            }
            None => out.push(n(part)?),
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Indexes as Kubernetes writes them: `0,2-4`.
pub fn format_indexes(indexes: &[u32]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < indexes.len() {
        let start = indexes[i];
        while i + 1 < indexes.len() && indexes[i + 1] == indexes[i] + 1 {
            i += 1;
        }
        parts.push(if indexes[i] == start { start.to_string() } else { format!("{start}-{}", indexes[i]) });
        i += 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn shards_are_cut_at_two_hex_digits() {
        let r = range(0, 4);
        assert_eq!((r.after, r.until.as_ref().map(|p| p.to_string())), (None, Some("chunk/40".to_string())));
        let r = range(1, 4);
        assert_eq!((r.after.map(|p| p.to_string()), r.until.map(|p| p.to_string())), (Some("chunk/40".into()), Some("chunk/80".into())));
        let r = range(3, 4);
        assert_eq!((r.after.map(|p| p.to_string()), r.until), (Some("chunk/c0".into()), None));
        // One shard is the whole bucket.
        let r = range(0, 1);
        assert_eq!((r.after, r.until), (None, None));
        // A shard of one prefix still lists in 16 pieces.
        let r = range(0xab, 256);
        assert_eq!(r.cuts.first().map(|p| p.to_string()), Some("chunk/ab1".into()));
        assert_eq!(r.cuts.last().map(|p| p.to_string()), Some("chunk/abf".into()));
        assert_eq!(r.cuts.len(), 15);
    }

    #[test]
    fn indexes_read_and_write_as_kubernetes_does() {
        for (text, want) in [("", vec![]), ("0", vec![0]), ("0,2-4", vec![0, 2, 3, 4]), ("1-1,7", vec![1, 7]), ("3, 1", vec![1, 3])] {
            assert_eq!(parse_indexes(text).as_deref(), Ok(&want[..]), "{text:?}");
        }
        for bad in ["a", "1-", "4-2", "-1"] {
            assert!(parse_indexes(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_indexes(&[0, 2, 3, 4, 9]), "0,2-4,9");
        assert_eq!(format_indexes(&[]), "");
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof!["[a-z/]{0,8}", "chunk/[0-9a-f]{0,4}", "chunk/[0-9a-f]{64}\\.[0-9a-f]{16}", "chunk[0-~]{0,3}", Just("chunk/".to_string()),]
    }

    proptest! {
        /// Every key is in exactly one shard, the shards follow each other in key
        /// order, and every cut lies inside its shard, in order.
        #[test]
        fn the_shards_partition_the_key_space(count in 1u32..=256, keys in proptest::collection::vec(key(), 1..40)) {
            let ranges: Vec<KeyRange> = (0..count).map(|i| range(i, count)).collect();
            let mut owner_of = Vec::new();
            for k in &keys {
                let p = Path::from(k.as_str());
                let owners: Vec<usize> = ranges.iter().enumerate().filter(|(_, r)| r.contains(&p)).map(|(i, _)| i).collect();
                prop_assert_eq!(owners.len(), 1, "{:?} is in shards {:?}", k, owners);
                owner_of.push((p, owners[0]));
            }
            for (a, ia) in &owner_of {
                for (b, ib) in &owner_of {
                    if ia < ib { prop_assert!(a < b, "{} (shard {}) sorts after {} (shard {})", a, ia, b, ib); }
                }
            }
            for r in &ranges {
                for w in r.cuts.windows(2) { prop_assert!(w[0] < w[1]); }
                for c in &r.cuts { prop_assert!(r.contains(c), "cut {} outside its shard", c); }
            }
        }

        #[test]
        fn indexes_round_trip(mut v in proptest::collection::vec(0u32..300, 0..30)) {
            v.sort_unstable();
            v.dedup();
            prop_assert_eq!(parse_indexes(&format_indexes(&v)), Ok(v));
        }
    }
}
