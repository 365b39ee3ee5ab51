//! One run: lock → recover → preflight → pre-copy → PAUSE → capture → RESUME →
//! commit → retention → report.
//!
//! This module owns the resume guarantee. Once the pause has begun, the capture runs
//! inside a `select!` against `MAX_DOWNTIME`, SIGTERM/SIGINT and the loss of the Lease;
//! whichever ends first, the code after it resumes the cluster. Resume is driven by
//! the annotations on the objects, so a pause interrupted half-way is undone too, and a
//! run killed outright is undone by the next one (recover) or by `resume`.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::time::Instant;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{FutureExt, StreamExt, TryStreamExt};
use tokio::sync::watch;
use tracing::{Instrument, error, info, warn};

use crate::catalog::ObjectCounts;
use crate::catalog::{self, BackupFile, Catalog, Manifest, ObjectsEntry, ObjectsIndex};
use crate::cluster::copy_job::{self, CopyJobs};
use crate::cluster::{Cluster, ClusterError, LeaseGuard, PauseReport};
use crate::config::{ObjectsMode, PauseMode, RunConfig};
use crate::database::{self, Tools};
use crate::exit::ExitCode;
use crate::metrics::{Ended, Pusher, RunReport, Sample};
use crate::objects::{self, Create};
use crate::progress::Progress;
use crate::retention;
use crate::shards;

/// The phases, as named in logs, metrics and the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Lock,
    Recover,
    Preflight,
    Precopy,
    Pause,
    Capture,
    Resume,
    /// After the resume: the database dumps, each at the snapshot exported while paused.
    Dump,
    /// After the resume: the backup's listing, from the live chunks of the dump's
    /// snapshot merged with what the pre-copy and the pause copied.
    Listing,
    Commit,
    Retention,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Lock => "lock",
            Phase::Recover => "recover",
            Phase::Preflight => "preflight",
            Phase::Precopy => "precopy",
            Phase::Pause => "pause",
            Phase::Capture => "capture",
            Phase::Resume => "resume",
            Phase::Dump => "dump",
            Phase::Listing => "listing",
            Phase::Commit => "commit",
            Phase::Retention => "retention",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a run failed, by exit code.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Another run (or retention, or restore) holds the Lease or the bucket lock.
    #[error("{0}")]
    Locked(String),
    #[error("backup failed in phase {phase} ({reason}): {message}\nthe cluster is {state}; no backup was recorded")]
    Failed { phase: Phase, reason: &'static str, message: String, state: &'static str },
    #[error("backup {backup_id} is complete, but retention failed: {message}")]
    RetentionFailed { backup_id: String, message: String },
    #[error(
        "RESUME FAILED: {message}\nTHE CLUSTER MAY STILL BE PAUSED. Objects still carrying pause annotations: {}.\nRun `pachyderm-backup resume` (same environment), or restore each object's replicas from its `pachyderm-backup/replicas` annotation by hand (kubectl scale).",
        if .still_paused.is_empty() { "unknown (the API could not be read)".to_string() } else { .still_paused.join(", ") }
    )]
    ResumeFailed { message: String, still_paused: Vec<String> },
}

impl RunError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            RunError::Config(_) => ExitCode::Config,
            RunError::Locked(_) => ExitCode::Locked,
            RunError::Failed { .. } | RunError::RetentionFailed { .. } => ExitCode::Failed,
            RunError::ResumeFailed { .. } => ExitCode::ResumeFailed,
        }
    }

    /// The phase and reason the failure is pushed with. `None` for `Locked`, whose
    /// holder reports for itself, and for `RetentionFailed`, reported with the backup
    /// it follows (`RunReport::success`).
    pub fn reported_as(&self) -> Option<(Phase, &'static str)> {
        match self {
            RunError::Config(_) => Some((Phase::Preflight, "config")),
            RunError::Failed { phase, reason, .. } => Some((*phase, *reason)),
            RunError::ResumeFailed { .. } => Some((Phase::Resume, "resume")),
            RunError::Locked(_) | RunError::RetentionFailed { .. } => None,
        }
    }
}

/// A failure inside a phase: a short reason for the metric label, and the message.
#[derive(Debug)]
pub struct StepError {
    pub reason: &'static str,
    pub message: String,
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

macro_rules! step_from {
    ($($t:ty => $reason:literal),* $(,)?) => {$(
        impl From<$t> for StepError {
            fn from(e: $t) -> Self {
                StepError { reason: $reason, message: error_chain(&e) }
            }
        }
    )*};
}

step_from! {
    crate::database::DatabaseError => "database",
    crate::objects::ObjectsError => "objects",
    crate::cluster::ClusterError => "kubernetes",
    crate::catalog::CatalogError => "target_bucket",
    crate::retention::RetentionError => "retention",
}

pub use crate::error_chain;

/// One preflight step, bounded by PREFLIGHT_TIMEOUT.
async fn bounded<T, E: Into<StepError>>(limit: std::time::Duration, what: &str, step: impl Future<Output = Result<T, E>>) -> Result<T, StepError> {
    match tokio::time::timeout(limit, step).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => Err(StepError {
            reason: "timeout",
            message: format!("{what} did not finish within PREFLIGHT_TIMEOUT ({}); nothing was paused", humantime::format_duration(limit)),
        }),
    }
}

/// The state a failure before the pause leaves the cluster in.
const UNTOUCHED: &str = "untouched (never paused)";

/// Turns a phase's error into the run's, saying what state the cluster is in.
fn fail(phase: Phase, state: &'static str) -> impl Fn(StepError) -> RunError {
    move |e| RunError::Failed { phase, reason: e.reason, message: e.message, state }
}

/// SIGTERM / SIGINT, as seen by the run: `Some(name)` once one arrived.
pub type Stop = watch::Receiver<Option<&'static str>>;

async fn stopped(stop: &mut Stop) -> &'static str {
    loop {
        if let Some(signal) = *stop.borrow() {
            return signal;
        }
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Why a step was cut short by a lost lock: (reason, message), one wording for every phase.
struct Lost(&'static str, &'static str);

const LEASE_LOST: Lost = Lost("lease_lost", "the Lease was lost: another run may be starting");
const LOCK_LOST: Lost = Lost("lock_lost", "the bucket lock was lost: another writer may be starting");

impl Lost {
    fn error(&self) -> StepError {
        StepError { reason: self.0, message: self.1.into() }
    }
}

async fn lease_lost(lease: &mut Option<LeaseGuard>) {
    match lease {
        Some(l) => l.lost().await,
        None => std::future::pending().await,
    }
}

/// What a successful run made.
#[derive(Debug)]
pub struct Summary {
    pub manifest: Manifest,
    pub retention: Option<retention::Outcome>,
}

/// How a run went in time, as its report and its manifest tell it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timings {
    pub phases: BTreeMap<Phase, f64>,
    /// The downtime this run expected before it paused (`downtime_estimate`).
    pub estimate: Option<f64>,
    /// The paused interval, `resumed_at − paused_at`, once resumed: also when the
    /// capture was cut short (a phase cut short is not in `phases`).
    pub downtime: Option<f64>,
    /// The shards of a sharded pre-copy (COPY_SHARDS > 1), in index order.
    pub shards: Vec<shards::ShardSummary>,
}

impl Timings {
    async fn time<T>(&mut self, phase: Phase, f: impl Future<Output = T>) -> T {
        let (out, seconds) = timed(phase, f).await;
        self.add(phase, seconds);
        out
    }

    fn add(&mut self, phase: Phase, seconds: f64) {
        *self.phases.entry(phase).or_default() += seconds;
    }

    fn resumed(&mut self, paused_at: DateTime<Utc>, resumed_at: DateTime<Utc>) {
        self.downtime = Some((resumed_at - paused_at).as_seconds_f64());
    }

    /// The phases by name, as the manifest records them.
    fn named(&self) -> BTreeMap<String, f64> {
        self.phases.iter().map(|(phase, seconds)| (phase.name().to_string(), *seconds)).collect()
    }
}

/// `f` in its phase's span, and how long it took: for phases that run side by side.
async fn timed<T>(phase: Phase, f: impl Future<Output = T>) -> (T, f64) {
    let start = Instant::now();
    let out = f.instrument(tracing::error_span!("phase", phase = phase.name())).await;
    (out, start.elapsed().as_secs_f64())
}

/// The parts written during the capture, and what it leaves for after the resume.
struct Captured {
    /// Every database at the pause's instant, by name: dumped after the resume.
    snapshots: Vec<(String, database::Snapshot)>,
    objects: ObjectsEntry,
    cluster_objects: Vec<String>,
    original_replicas: BTreeMap<String, i32>,
    written_bytes: u64,
    /// Every file written to the backup folder, with its size: checked at the commit.
    parts: Vec<(String, u64)>,
    /// The listing left for after the resume (`objects` is then still empty).
    deferred: Option<Deferred>,
}

/// What the pause leaves for after the resume when the database is the index and the
/// pre-copy ran: the pause copied only the chunks past the generation floor; the full
/// merge of the live set (read at the still-held snapshot) with everything copied is
/// no longer in the downtime.
struct Deferred {
    /// The database whose snapshot (in `Captured::snapshots`) the listing reads.
    database: String,
    /// The records the pause's copy wrote (or reused).
    paused: catalog::Listing,
}

/// The pre-copy's split of the live set: the generation floor read before it listed,
/// and its records of the chunks past that floor (the pause's only reuse candidates).
struct Recent {
    floor: i64,
    records: catalog::Listing,
}

/// The run's notion of now: wall time, or a start time injected by a caller (the
/// retention tests simulate nights) advanced by the real elapsed time.
#[derive(Clone, Copy)]
struct Clock {
    origin: DateTime<Utc>,
    real: Instant,
}

impl Clock {
    fn now(&self) -> DateTime<Utc> {
        self.origin + chrono::Duration::from_std(self.real.elapsed()).unwrap_or_default()
    }
}

/// One earlier paused run, as its manifest tells it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PausedRun {
    pub downtime: f64,
    pub objects: u64,
    /// Its objects were indexed by listing the whole bucket while paused (no table of
    /// the known shape): its downtime grew with the bucket.
    pub listed: bool,
}

/// The downtime to expect from the last (up to 3) paused runs, oldest first: the
/// longest of them. A run that listed the bucket while paused is scaled by the
/// bucket's growth since (objects now over objects then, never below 1: that listing
/// is linear in the objects); a run indexed by the database is not, its pause holding
/// only the snapshots and the chunks written since the pre-copy. `None` without history.
pub fn downtime_estimate(history: &[PausedRun], objects_now: Option<u64>) -> Option<f64> {
    history
        .iter()
        .rev()
        .take(3)
        .map(|run| {
            let growth = match (objects_now, run.objects, run.listed) {
                (Some(now), then, true) if then > 0 => (now as f64 / then as f64).max(1.0),
                _ => 1.0,
            };
            run.downtime * growth
        })
        .reduce(f64::max)
}

/// pg_dump's `--compress` for DUMP_COMPRESSION, or why this pg_dump cannot (a preflight
/// failure: nothing is paused).
fn dump_compression(cfg: &RunConfig, tools: &Tools) -> Result<String, StepError> {
    cfg.database.compression.argument(tools.major).map_err(|m| StepError { reason: "config", message: format!("DUMP_COMPRESSION: {m}") })
}

/// One line of `check`: what was checked, and what was found or what is wrong.
pub type CheckLine = (String, Result<String, String>);

/// The preflight alone (`pachyderm-backup check`, the chart's `helm test`): every check
/// a run makes before it pauses, each bounded by PREFLIGHT_TIMEOUT, all of them run
/// and reported even when one fails. Pauses nothing, takes no lock; writes and deletes
/// one probe object in the backup bucket.
pub async fn check(cfg: &RunConfig) -> Vec<CheckLine> {
    let limit = cfg.preflight_timeout;
    let mut lines: Vec<CheckLine> = Vec::new();
    let mut line = |what: String, r: Result<String, StepError>| lines.push((what, r.map_err(|e| e.message)));
    if cfg.cluster.pause_mode != PauseMode::None {
        match Cluster::connect(&cfg.cluster).await {
            Ok(c) => {
                let namespace = c.namespace().to_string();
                line(
                    format!("Kubernetes permissions in namespace {namespace}"),
                    bounded(limit, "checking Kubernetes permissions", c.check_permissions()).await.map(|()| "granted".into()),
                );
                line(
                    "Pachyderm version".into(),
                    bounded(limit, "reading Pachyderm's version", c.pachyderm_version()).await.map(|v| v.unwrap_or_else(|| "unknown".into())),
                );
            }
            Err(e) => line("Kubernetes API".into(), Err(e.into())),
        }
    }
    match bounded(limit, "finding pg_dump and its version", Tools::find(cfg.database.bin_dir.as_deref())).await {
        Ok(tools) => {
            let compress = dump_compression(cfg, &tools);
            line("pg_dump".into(), compress.map(|c| format!("{} ({}), --compress={c}", tools.version, tools.pg_dump.display())));
            for db in &cfg.database.databases {
                let r = bounded(limit, &format!("checking database {db}"), database::preflight(&cfg.database.server, db, &tools)).await;
                line(format!("database {db}"), r.map(|s| format!("PostgreSQL {}", s.version)));
            }
        }
        Err(e) => line("pg_dump".into(), Err(e)),
    }
    if cfg.copy.objects == ObjectsMode::Copy {
        let listed = async { objects::probe_listable(&objects::open(&cfg.source, Create::Never)?, "source").await };
        line(format!("source bucket {}", redact_url(&cfg.source.url)), bounded(limit, "listing the source bucket", listed).await.map(|()| "listable".into()));
    }
    let written = async {
        let catalog = Catalog::open(&cfg.target, Create::Never).await?;
        let folder = catalog.check_folder(Utc::now());
        let probe = folder.path(&BackupFile::Probe);
        objects::probe_writable(folder.store(), "target", &probe).await?;
        let content_md5 = match crate::s3::Put::open(&cfg.target) {
            Some(put) if put.probe(probe.as_ref(), catalog.object_lock()).await.content_md5 => "; checks Content-MD5 (the copy leaves the MD5 check to it)",
            Some(_) => "; does not check Content-MD5 (the copy checks the MD5 itself)",
            None => "",
        };
        Ok::<_, objects::ObjectsError>(format!("writable; S3 Object Lock {}{content_md5}", catalog.object_lock()))
    };
    line(format!("target bucket {}", redact_url(&cfg.target.url)), bounded(limit, "writing a probe to the target bucket", written).await);
    let pusher = Pusher::new(cfg.common.push.clone(), cfg.common.cluster_name.clone().unwrap_or_default());
    if let Some(answer) = pusher.probe().await {
        lines.push(("Pushgateway".into(), answer));
    }
    lines
}

/// Runs one full cycle.
pub async fn run(cfg: RunConfig, stop: Stop) -> Result<Summary, RunError> {
    run_at(cfg, stop, Utc::now()).await
}

/// Runs one full cycle as if it started at `start` (ids, manifest times, retention).
pub async fn run_at(cfg: RunConfig, stop: Stop, start: DateTime<Utc>) -> Result<Summary, RunError> {
    let mut run = Run::new(cfg, stop, start).await;
    let outcome = run.attempt().await;
    run.report(outcome).await
}

/// One run: what its steps share, from the configuration to the report.
struct Run {
    cfg: RunConfig,
    stop: Stop,
    clock: Clock,
    timings: Timings,
    /// When the next run is due (SCHEDULE), as of this one's start.
    next_due: Option<DateTime<Utc>>,
    /// The metric label and the manifest's `cluster`.
    cluster_name: String,
    pusher: Pusher,
    /// Once connected (never with PAUSE_MODE=none).
    cluster: Option<Cluster>,
    /// Once connected, with COPY_SHARDS > 1: the Jobs of the sharded pre-copy.
    copy_jobs: Option<CopyJobs>,
    /// This run's backup id once it holds its locks (the bucket lock, and the Lease when
    /// connected): from then on its failure is also an Event on pachd.
    locked: Option<String>,
}

/// This run's backup: where it is written, what it copies from, and its claim.
struct Backup {
    catalog: Catalog,
    source: Option<objects::Source>,
    id: String,
    run_token: String,
}

/// The locks a run holds until its report; losing either aborts it.
struct Locks {
    lease: Option<LeaseGuard>,
    bucket: catalog::BucketLock,
}

impl Locks {
    async fn release(self) {
        if let Some(l) = self.lease {
            l.release().await;
        }
        self.bucket.release().await;
    }
}

/// A committed backup, and how the retention after it went (`Err`: its message).
struct Committed {
    manifest: Manifest,
    written_bytes: u64,
    retention: Result<retention::Outcome, String>,
}

/// The cluster's metric label, as the run finds it before connecting: CLUSTER_NAME,
/// else the namespace (PACHYDERM_NAMESPACE, else the kubeconfig's or the pod's, as
/// the client will read it: no request is made), else `local`. Known from the start,
/// so a run that fails before it connects is reported under the same label.
async fn cluster_name(cfg: &RunConfig) -> String {
    if let Some(name) = cfg.common.cluster_name.clone().or_else(|| cfg.cluster.namespace.clone()) {
        return name;
    }
    match cfg.cluster.pause_mode {
        PauseMode::None => "local".into(),
        _ => kube::Config::infer().await.map(|c| c.default_namespace).unwrap_or_else(|_| "local".into()),
    }
}

impl Run {
    async fn new(cfg: RunConfig, stop: Stop, start: DateTime<Utc>) -> Run {
        let clock = Clock { origin: start, real: Instant::now() };
        let next_due = cfg.common.schedule.as_ref().and_then(|s| s.next_after(&start));
        let cluster_name = cluster_name(&cfg).await;
        let pusher = Pusher::new(cfg.common.push.clone(), cluster_name.clone());
        Run { cfg, stop, clock, timings: Timings::default(), next_due, cluster_name, pusher, cluster: None, copy_jobs: None, locked: None }
    }

    /// The run up to its report: connect, lock, claim, then `run_locked` and, after a
    /// commit, retention; every lock released again.
    async fn attempt(&mut self) -> Result<Committed, RunError> {
        let cfg = &self.cfg;
        let started_at = self.clock.now();
        let mode = cfg.cluster.pause_mode;

        // Buckets first: opening them touches nothing.
        let source: Option<objects::Source> = match cfg.copy.objects {
            ObjectsMode::Copy => Some(objects::Source::open(&cfg.source, &cfg.target, cfg.copy.mode).map_err(|e| fail(Phase::Preflight, UNTOUCHED)(e.into()))?),
            ObjectsMode::Skip => None,
        };
        let catalog = bounded(cfg.preflight_timeout, "opening the target bucket", Catalog::open(&cfg.target, Create::IfMissing))
            .await
            .map_err(fail(Phase::Preflight, UNTOUCHED))?;

        // Kubernetes: connect, and check every permission before the first call that needs
        // one (the Lease, the recovery), so a missing one is named in the preflight's list.
        if mode != PauseMode::None {
            self.cluster = Some(Cluster::connect(&cfg.cluster).await.map_err(|e| fail(Phase::Lock, UNTOUCHED)(e.into()))?);
        }
        if let Some(c) = &self.cluster {
            self.timings
                .time(Phase::Preflight, bounded(cfg.preflight_timeout, "checking Kubernetes permissions", c.check_permissions()))
                .await
                .map_err(fail(Phase::Preflight, UNTOUCHED))?;
        }
        if let Some(s) = &cfg.copy.shards {
            let jobs = CopyJobs::connect(s).await.map_err(|e| fail(Phase::Lock, UNTOUCHED)(e.into()))?;
            self.timings
                .time(Phase::Preflight, bounded(cfg.preflight_timeout, "checking the copy Job's Kubernetes permissions", jobs.check_permissions()))
                .await
                .map_err(fail(Phase::Preflight, UNTOUCHED))?;
            self.copy_jobs = Some(jobs);
        }
        let cluster_name = &self.cluster_name;

        // The backup bucket: complete backups of this cluster only (another cluster's would
        // be pruned and swept by this one), then a backup id claimed for this run alone.
        let entries = catalog.entries().await.map_err(|e| fail(Phase::Preflight, UNTOUCHED)(e.into()))?;
        if let Some(other) = entries.iter().filter_map(|e| e.manifest.as_ref()).find(|m| m.cluster != *cluster_name) {
            return Err(RunError::Config(foreign_cluster(&other.cluster, &other.backup_id, cluster_name)));
        }
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "pachyderm-backup".into());
        // Unique to this run, also among runs of one process (the tests run several).
        static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let run_token = format!("{host}/{}-{}", std::process::id(), RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        // The bucket lock: one writer of the backup bucket at a time, in every pause mode.
        let bucket = match self.timings.time(Phase::Lock, catalog.lock(&run_token, "run", cfg.cluster.lease_duration)).await {
            Ok(l) => l,
            Err(e @ catalog::CatalogError::Locked { .. }) => return Err(RunError::Locked(e.to_string())),
            Err(e) => return Err(fail(Phase::Lock, UNTOUCHED)(e.into())),
        };
        let backup_id = match catalog.claim_backup_id(started_at, &run_token).await {
            Ok(id) => id,
            Err(e) => {
                bucket.release().await;
                return Err(fail(Phase::Preflight, UNTOUCHED)(e.into()));
            }
        };
        let holder = format!("{host}/{backup_id}");
        // The caller's "run" span, if any, carries the id from here on.
        tracing::Span::current().record("backup_id", backup_id.as_str());
        info!(cluster = %cluster_name, pause_mode = %format!("{mode:?}").to_ascii_lowercase(), "run starting");

        let mut lease = None;
        if let Some(c) = &self.cluster {
            match self.timings.time(Phase::Lock, c.acquire_lease(&holder)).await {
                Ok(l) => lease = Some(l),
                Err(e) => {
                    catalog.abandon(&backup_id, &run_token).await;
                    bucket.release().await;
                    return Err(match e {
                        e @ ClusterError::LeaseHeld { .. } => RunError::Locked(e.to_string()),
                        e => fail(Phase::Lock, UNTOUCHED)(e.into()),
                    });
                }
            }
        }

        let previous: Vec<Manifest> = entries.into_iter().filter_map(|e| e.manifest).filter(|m| m.objects.listing.is_some()).collect();
        self.locked = Some(backup_id.clone());
        let backup = Backup { catalog, source, id: backup_id, run_token };
        let mut locks = Locks { lease, bucket };
        // Boxed: the run's future is mostly this one, and a caller that polls the run
        // on a small stack (a test thread's 2 MiB, in a debug build) overflows holding it.
        let committed = match Box::pin(run_locked(self, &backup, &mut locks, previous)).await {
            // Retention only after a committed backup, still under the Lease.
            Ok((manifest, written_bytes)) => {
                let retention = retention::apply(&backup.catalog, &self.cfg.retention, self.cfg.gc_grace, self.clock.now(), retention::Mode::Delete);
                let retention = self.timings.time(Phase::Retention, retention).await.map_err(|e| error_chain(&e));
                Ok(Committed { manifest, written_bytes, retention })
            }
            Err(e) => {
                // Still under the bucket lock: the failed run's partial folder goes now.
                backup.catalog.abandon(&backup.id, &backup.run_token).await;
                info!("retention skipped: it runs only after a committed backup");
                Err(e)
            }
        };
        locks.release().await;
        committed
    }

    /// The run's one exit: every outcome is pushed, but `Locked` (the run holding the
    /// cluster or the bucket reports for itself); under the Lease it is an Event too.
    async fn report(self, outcome: Result<Committed, RunError>) -> Result<Summary, RunError> {
        let ended = Ended { at: self.clock.now(), duration: self.clock.real.elapsed(), next_due: self.next_due };
        let (manifest, written_bytes, retention) = match outcome {
            Ok(Committed { manifest, written_bytes, retention }) => (manifest, written_bytes, retention),
            Err(e) => {
                let Some((phase, reason)) = e.reported_as() else { return Err(e) };
                if let (Some(c), Some(backup_id)) = (&self.cluster, &self.locked) {
                    c.event(true, "BackupFailed", "Backup", &format!("pachyderm-backup run {backup_id} failed in phase {phase}: {e}")).await;
                }
                let resumed = !matches!(e, RunError::ResumeFailed { .. });
                self.pusher.push(&RunReport::failure(ended, &self.timings, phase, reason, resumed).sample()).await;
                return Err(e);
            }
        };
        let report = RunReport::success(ended, &self.timings, &manifest, written_bytes, retention.as_ref().map_err(String::as_str));
        self.pusher.push(&report.sample()).await;
        info!(
            duration_seconds = report.duration,
            downtime_seconds = manifest.downtime_seconds,
            databases = manifest.databases.len(),
            database_bytes = manifest.databases.iter().map(|d| d.size).sum::<u64>(),
            objects = manifest.objects.counts.count,
            object_bytes = manifest.objects.counts.bytes,
            objects_copied = manifest.objects.counts.copied,
            objects_reused = manifest.objects.counts.reused,
            transferred_bytes = written_bytes,
            retained = report.retained,
            pruned = report.pruned,
            freed_bytes = report.freed,
            "backup complete"
        );
        if let Some(c) = &self.cluster {
            let note = format!("pachyderm-backup run {} completed: {:.0}s of downtime", manifest.backup_id, manifest.downtime_seconds);
            c.event(false, "BackupSucceeded", "Backup", &note).await;
        }
        match retention {
            Ok(kept) => Ok(Summary { manifest, retention: Some(kept) }),
            Err(message) => {
                error!(error = %message, "retention failed; the new backup is complete");
                Err(RunError::RetentionFailed { backup_id: manifest.backup_id, message })
            }
        }
    }
}

/// Under the Lease and the bucket lock: recover → preflight → pre-copy → PAUSE →
/// capture → RESUME → dump ∥ listing → commit; the committed manifest and the bytes
/// written.
async fn run_locked(run: &mut Run, backup: &Backup, locks: &mut Locks, previous: Vec<Manifest>) -> Result<(Manifest, u64), RunError> {
    let Run { cfg, stop, clock, timings: t, cluster_name, pusher, cluster, copy_jobs, .. } = run;
    let (cfg, clock, cluster, copy_jobs) = (&*cfg, *clock, cluster.as_ref(), copy_jobs.as_ref());
    let Backup { catalog, source, id: backup_id, run_token } = backup;
    let Locks { lease, bucket: bucket_lock } = locks;
    let started_at = clock.origin;
    let interrupted = |phase: Phase, signal: &'static str, state: &'static str| RunError::Failed {
        phase,
        reason: "signal",
        message: format!("interrupted by {signal}"),
        state,
    };

    // Recover: a previous run that died while paused left its annotations.
    if let Some(c) = cluster {
        let leftovers = t.time(Phase::Recover, c.paused_objects()).await.map_err(|e| fail(Phase::Recover, UNTOUCHED)(e.into()))?;
        if !leftovers.is_empty() {
            warn!(objects = %leftovers.join(","), "a previous run left the cluster paused: resuming it first");
            t.time(Phase::Recover, c.resume(&format!("pachyderm-backup run {backup_id}, recovering a previous run")))
                .await
                .map_err(|e| resume_failed(e, leftovers.clone()))?;
        }
    }

    // Preflight: nothing is paused until every check has passed.
    // Each step bounded: a server that accepts and never answers must not hold the
    // run until the Job's deadline.
    let limit = cfg.preflight_timeout;
    let preflight = async {
        let tools = bounded(limit, "finding pg_dump and its version", Tools::find(cfg.database.bin_dir.as_deref())).await?;
        dump_compression(cfg, &tools)?;
        let mut servers = Vec::new();
        for db in &cfg.database.databases {
            servers.push(bounded(limit, &format!("checking database {db}"), database::preflight(&cfg.database.server, db, &tools)).await?);
        }
        if let Some(s) = &source {
            bounded(limit, "listing the source bucket", objects::probe_listable(s, "source")).await?;
        }
        let folder = catalog.folder(backup_id);
        bounded(limit, "writing a probe to the target bucket", objects::probe_writable(folder.store(), "target", &folder.path(&BackupFile::Probe))).await?;
        if let Some(s) = &source {
            let probe = async {
                s.probe_content_md5(&folder.path(&BackupFile::Probe), catalog.object_lock()).await;
                Ok::<_, StepError>(())
            };
            bounded(limit, "finding out whether the target bucket checks Content-MD5", probe).await?;
        }
        let version = match cluster {
            Some(c) => bounded(limit, "reading Pachyderm's version", c.pachyderm_version()).await?,
            None => None,
        };
        Ok::<_, StepError>((tools, servers, version))
    };
    let (tools, servers, pachyderm_version) = tokio::select! {
        r = t.time(Phase::Preflight, preflight) => r.map_err(fail(Phase::Preflight, UNTOUCHED))?,
        s = stopped(stop) => return Err(interrupted(Phase::Preflight, s, UNTOUCHED)),
    };
    info!(databases = servers.len(), tools = %tools.version, "preflight passed");

    // What the pool already holds: the newest complete backup whose listing verifies
    // (a damaged one is skipped and reported; its objects are then copied again).
    let mut reference_listing: Option<(String, catalog::Listing)> = None;
    for m in previous.iter().rev() {
        match catalog.verified_listing(m).await {
            Ok(bytes) => {
                reference_listing = bytes.map(|b| (m.backup_id.clone(), b));
                break;
            }
            Err(e) if e.is_damage() => {
                warn!(folder = %catalog.folder(&m.backup_id), problem = %e, "damaged backup, not used as the reference for this run: {}", catalog::DAMAGED_ADVICE)
            }
            Err(e) => return Err(fail(Phase::Preflight, UNTOUCHED)(e.into())),
        }
    }
    // Blobs `verify` found damaged are copied again under fresh keys, never reused;
    // `--full` trusts nothing in the pool.
    let mut damage = catalog.damage_records().await.map_err(|e| fail(Phase::Preflight, UNTOUCHED)(e.into()))?;
    if !damage.is_empty() {
        info!(blobs = damage.len(), "verify recorded damaged blobs: their objects are copied again");
    }
    if cfg.copy.full {
        info!("--full: every object is copied again under a fresh key; nothing in the pool is reused");
        reference_listing = None;
    }
    let mut heal = objects::Heal { damaged: damage.iter().map(|(_, r)| r.blob.clone()).collect(), full: cfg.copy.full, backup_id: backup_id.to_string() };
    // Before the pause, a sample of what will be reused is checked; damage found is
    // recorded (so a failed run does not forget it) and healed by this run.
    if let (Some((id, bytes)), Some(_)) = (&reference_listing, &source) {
        let what = format!("the listing of {id}");
        let guard = objects::check_reused(catalog.pool().store(), bytes, &what, backup_id, objects::REUSE_SAMPLE, cfg.copy.concurrency);
        let found = tokio::select! {
            r = guard => r.map_err(|e| fail(Phase::Preflight, UNTOUCHED)(e.into()))?,
            s = stopped(stop) => return Err(interrupted(Phase::Preflight, s, UNTOUCHED)),
        };
        info!(checked = found.checked, bad = found.bad.len(), "reused blobs checked (present, size as recorded)");
        if found.widespread {
            warn!(
                bad_at_least = found.bad.len(),
                "the blob pool lost more than {} blobs the previous backup names: copying everything again, as `run --full`",
                objects::WIDESPREAD_DAMAGE
            );
            heal.full = true;
            reference_listing = None;
        } else {
            for (record, problem) in found.bad {
                warn!(blob = %record.blob, key = %record.key, %problem, "a blob the previous backup names is damaged: this run copies its object again");
                let recorded = catalog::DamageRecord { blob: record.blob.clone(), problem, found_at: Utc::now(), backup_id: id.clone() };
                match catalog.record_damage(&recorded).await {
                    Ok(path) => damage.push((path, recorded)),
                    Err(e) => warn!(blob = %record.blob, error = %e, "could not record the damaged blob"),
                }
                heal.damaged.insert(record.blob);
            }
        }
    }
    let reference = || async {
        match &reference_listing {
            Some((id, listing)) => catalog::ListingReader::new(listing, format!("the listing of {id}")),
            None => catalog::ListingReader::empty(),
        }
    };

    // Pre-copy, cluster running: most objects cross before the pause.
    let mut precopied: Option<catalog::Listing> = None;
    let mut precopied_objects = None;
    let mut recent = None;
    if let (Some(src), true) = (&source, cfg.copy.precopy) {
        // Read before the pre-copy lists: every chunk uploaded after it has a higher
        // generation, so the pause copies those alone.
        let floor = match index_database(&servers) {
            Some(db) => bounded(limit, "reading the chunk generation floor", database::gen_floor(&cfg.database.server, &tools, db))
                .await
                .map_err(fail(Phase::Precopy, UNTOUCHED))?,
            None => None,
        };
        let reference_id = reference_listing.as_ref().map(|(id, _)| id.clone());
        let keep_failed_job = Cell::new(false);
        let work = async {
            // COPY_SHARDS > 1: the pods of an Indexed Job copy, this one waits.
            if let Some(jobs) = copy_jobs {
                let task = shards::ShardTask { backup_id: backup_id.clone(), index: 0, count: jobs.count(), reference: reference_id, full: heal.full };
                // Boxed, as run_locked is: polled on a test thread's small stack in a
                // debug build, the run's future overflowed it once this was inlined.
                let sharded = Box::pin(shards::precopy(cfg, jobs, catalog, &task)).await;
                keep_failed_job.set(matches!(sharded, Err(shards::ShardError::JobFailed { .. })));
                let sharded = sharded.map_err(|e| StepError { reason: "shards", message: error_chain(&e) })?;
                return Ok::<_, StepError>((sharded.listing, sharded.counts.count, sharded.summaries));
            }
            let progress = Progress::start("precopy", cfg.common.progress_interval);
            let (listing, stats) = objects::copy_entries(
                src,
                objects::listed(src, objects::lists_sorted(&cfg.source)).await?,
                catalog.pool().store(),
                reference().await?,
                &heal,
                cfg.copy.concurrency,
                objects::Vanished::LeftOut,
                &progress,
            )
            .await?;
            info!(objects = stats.count, copied = stats.copied, copied_bytes = stats.copied_bytes, reused = stats.reused, "pre-copy done");
            let (bytes, _) = listing.finish().map_err(|e| StepError { reason: "objects", message: format!("finishing the pre-copy listing: {e}") })?;
            Ok::<_, StepError>((bytes, stats.count, Vec::new()))
        };
        // A sharded pre-copy watches PRECOPY_TIMEOUT itself, to name the unfinished shards.
        let work = async {
            match cfg.copy.precopy_timeout.filter(|_| copy_jobs.is_none()) {
                Some(limit) => tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
                    Err(StepError {
                        reason: "precopy_timeout",
                        message: format!("the pre-copy did not finish within PRECOPY_TIMEOUT ({}); nothing was paused", humantime::format_duration(limit)),
                    })
                }),
                None => work.await,
            }
        };
        let outcome = tokio::select! {
            r = t.time(Phase::Precopy, work) => Ok(r),
            s = stopped(stop) => Err(s),
        };
        // The copy Job goes with the pre-copy, whatever its end, but a failed one: its
        // pods' logs say why (the next run removes it).
        if let Some(jobs) = copy_jobs
            && !keep_failed_job.get()
        {
            jobs.delete(&copy_job::job_name(backup_id)).await.unwrap_or_else(|e| warn!(error = %e, "could not delete the copy Job; the next run removes it"));
        }
        match outcome {
            Ok(r) => {
                let (bytes, count, summaries) = r.map_err(fail(Phase::Precopy, UNTOUCHED))?;
                t.shards = summaries;
                if let Some(floor) = floor {
                    let records = catalog::ListingReader::new(&bytes, "the pre-copy listing".into())
                        .map_err(objects::ObjectsError::from)
                        .and_then(|listing| objects::recent(listing, floor))
                        .map_err(|e| fail(Phase::Precopy, UNTOUCHED)(e.into()))?;
                    recent = Some(Recent { floor, records });
                }
                precopied = Some(bytes);
                precopied_objects = Some(count);
            }
            Err(s) => return Err(interrupted(Phase::Precopy, s, UNTOUCHED)),
        }
    }

    // The downtime to expect, from the last paused runs: a pause that would run past
    // MAX_DOWNTIME is refused now, before anything is paused, instead of being
    // aborted at MAX_DOWNTIME with that much downtime spent for nothing.
    if cluster.is_some() {
        let history: Vec<PausedRun> = previous
            .iter()
            .filter(|m| m.paused_by_us && m.downtime_seconds > 0.0)
            .map(|m| PausedRun { downtime: m.downtime_seconds, objects: m.objects.counts.count, listed: m.objects.index == Some(ObjectsIndex::Listing) })
            .collect();
        if let Some(estimate) = downtime_estimate(&history, precopied_objects) {
            t.estimate = Some(estimate);
            let limit = cfg.max_downtime.as_secs_f64();
            info!(
                estimate_seconds = estimate,
                max_downtime_seconds = limit,
                "downtime estimate: the longest of the last paused runs (those that listed the bucket while paused scaled by its growth since)"
            );
            if estimate > limit {
                let message = format!(
                    "the expected downtime, {estimate:.0}s (the longest of the last paused runs' downtime; those that listed the bucket while paused scaled by its growth since), exceeds MAX_DOWNTIME ({}): the run would be aborted at MAX_DOWNTIME after pausing that long for nothing. Raise MAX_DOWNTIME, or find what made the last runs slow (their phases are in their manifests)",
                    humantime::format_duration(cfg.max_downtime)
                );
                return Err(fail(Phase::Precopy, UNTOUCHED)(StepError { reason: "downtime_estimate", message }));
            }
        }
    }

    // PAUSE and CAPTURE, bounded by MAX_DOWNTIME, signals and the Lease.
    let paused_at = clock.now();
    if cluster.is_some() {
        pusher.push(&Sample::paused(paused_at.timestamp() as f64)).await;
    }
    let current = Cell::new(Phase::Pause);
    let pause_report: Cell<Option<PauseReport>> = Cell::new(None);
    let guarded = async {
        if let Some(c) = cluster {
            let report = t.time(Phase::Pause, c.pause(backup_id)).await?;
            if report.paused_by_us() {
                c.event(false, "Paused", "Pause", &format!("paused by pachyderm-backup run {backup_id} for a backup: {}", report.paused.join(", "))).await;
            }
            pause_report.set(Some(report));
        }
        current.set(Phase::Capture);
        let reference = match &precopied {
            Some(listing) => catalog::ListingReader::new(listing, "the pre-copy listing".into())?,
            None => reference().await?,
        };
        let plan = Plan { tools: &tools, servers: &servers, heal: &heal, reference, recent: recent.as_ref() };
        let captured = t.time(Phase::Capture, capture(cfg, cluster, backup, plan)).await?;
        Ok::<_, StepError>(captured)
    };
    // A panic (a bug) inside the pause or capture must not unwind past the resume.
    let guarded = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(guarded));
    let captured = tokio::select! {
        r = guarded => match r {
            Ok(r) => r.map_err(|e| (current.get(), e)),
            Err(panic) => {
                let what = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_default();
                Err((current.get(), StepError { reason: "panic", message: format!("internal error (a bug, please report it): {what}") }))
            }
        },
        _ = tokio::time::sleep(cfg.max_downtime) => Err((current.get(), StepError { reason: "max_downtime", message: format!("MAX_DOWNTIME ({}) reached: capture aborted", humantime::format_duration(cfg.max_downtime)) })),
        s = stopped(stop) => Err((current.get(), StepError { reason: "signal", message: format!("interrupted by {s}") })),
        _ = lease_lost(lease) => Err((current.get(), LEASE_LOST.error())),
        _ = bucket_lock.lost() => Err((current.get(), LOCK_LOST.error())),
    };
    if let Err((phase, _)) = &captured {
        warn!(failed_phase = %phase, "capture aborted: resuming the cluster (the error follows once the cluster is resumed)");
    }

    // RESUME, whatever happened above.
    let pause_report = pause_report.take().unwrap_or_default();
    if let Some(c) = cluster {
        let resumed = t.time(Phase::Resume, c.resume(&format!("pachyderm-backup run {backup_id}"))).await;
        if let Err(e) = resumed {
            let still = c.paused_objects().await.unwrap_or_default();
            return Err(resume_failed(e, still));
        }
    }
    let resumed_at = clock.now();
    if cluster.is_some() {
        t.resumed(paused_at, resumed_at);
    }
    let mut captured = match captured {
        Ok(c) => c,
        Err((phase, e)) => {
            let state = if pause_report.paused_by_us() || phase == Phase::Pause { "resumed" } else { "as it was (this run did not pause it)" };
            return Err(fail(phase, state)(e));
        }
    };

    // DUMP and LISTING, side by side with the cluster running again: both read the
    // snapshots the pause exported, so they hold the paused instant whatever the
    // cluster writes now.
    let snapshots = std::mem::take(&mut captured.snapshots);
    let deferred = captured.deferred.take();
    let tools = &tools;
    let dumps = async {
        let progress = Progress::start("dump", cfg.common.progress_interval);
        let compress = dump_compression(cfg, tools)?;
        let compress = compress.as_str();
        futures::future::try_join_all(servers.iter().map(|info| {
            let progress = &progress;
            let at = snapshots.iter().find(|(db, _)| *db == info.database).map(|(_, s)| s.id.as_str());
            async move {
                let Some(at) = at else {
                    return Err(StepError { reason: "panic", message: format!("internal error (a bug, please report it): no snapshot of {}", info.database) });
                };
                database::dump(&cfg.database.server, info, tools, &catalog.folder(backup_id), &cfg.database.recipients, compress, Some(at), progress)
                    .await
                    .map_err(StepError::from)
            }
        }))
        .await
    };
    let listing = async {
        let Some(deferred) = &deferred else { return Ok(None) };
        // A deferral exists only after a pre-copy of a source: never a silent skip.
        let (Some(src), Some(precopied), Some((_, snapshot))) = (&source, &precopied, snapshots.iter().find(|(db, _)| *db == deferred.database)) else {
            return Err(StepError {
                reason: "panic",
                message: "internal error (a bug, please report it): a deferred listing without a pre-copy or a snapshot".into(),
            });
        };
        let progress = Progress::start("listing", cfg.common.progress_interval);
        let live = live_chunks(cfg, tools, &deferred.database, &snapshot.id, None).await?;
        let entries = objects::indexed(src, live).await?;
        let reference = objects::merge(
            catalog::ListingReader::new(precopied, "the pre-copy listing".into())?,
            catalog::ListingReader::new(&deferred.paused, "the paused copy's listing".into())?,
        )?;
        let reference = catalog::ListingReader::new(&reference, "the pre-copy and paused listings".into())?;
        let (listing, stats) =
            objects::copy_entries(src, entries, catalog.pool().store(), reference, &heal, cfg.copy.concurrency, objects::Vanished::Fails, &progress).await?;
        write_listing(catalog, backup_id, listing, stats, ObjectsIndex::Database).await.map(Some)
    };
    let after = futures::future::try_join(
        timed(Phase::Dump, dumps).map(|(r, secs)| r.map(|v| (v, secs)).map_err(|e| (Phase::Dump, e))),
        timed(Phase::Listing, listing).map(|(r, secs)| r.map(|v| (v, secs)).map_err(|e| (Phase::Listing, e))),
    );
    let ((databases, dump_secs), (listed, listing_secs)) = tokio::select! {
        r = after => r.map_err(|(phase, e)| fail(phase, "resumed")(e))?,
        s = stopped(stop) => return Err(interrupted(Phase::Dump, s, "resumed")),
        _ = lease_lost(lease) => return Err(fail(Phase::Dump, "resumed")(LEASE_LOST.error())),
        _ = bucket_lock.lost() => return Err(fail(Phase::Dump, "resumed")(LOCK_LOST.error())),
    };
    // The snapshots' sessions end here: the dumps and the listing no longer need them.
    drop(snapshots);
    t.add(Phase::Dump, dump_secs);
    captured.parts.extend(databases.iter().map(|d| (d.file.clone(), d.size)));
    captured.written_bytes += databases.iter().map(|d| d.size).sum::<u64>();
    if deferred.is_some() {
        t.add(Phase::Listing, listing_secs);
    }
    if let Some((objects, size)) = listed {
        captured.written_bytes += objects.counts.copied_bytes + size;
        captured.parts.push((BackupFile::Listing.name(), size));
        captured.objects = objects;
    }
    if !pause_report.operator_paused.is_empty() {
        info!(objects = %pause_report.operator_paused.join(","), "left stopped, as its operator had it");
    }

    // COMMIT: the manifest, last.
    let manifest = Manifest {
        format_version: catalog::format_version(&captured.objects.counts),
        backup_id: backup_id.to_string(),
        cluster: cluster_name.clone(),
        namespace: cluster.map(|c| c.namespace().to_string()),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        pachyderm_version,
        pause_mode: cfg.cluster.pause_mode,
        paused_by_us: pause_report.paused_by_us(),
        started_at,
        paused_at: cluster.map(|_| paused_at),
        resumed_at: cluster.map(|_| resumed_at),
        finished_at: clock.now(),
        downtime_seconds: t.downtime.unwrap_or(0.0),
        phases: t.named(),
        source_url: source.as_ref().map(|_| redact_url(&cfg.source.url)),
        databases,
        objects: captured.objects,
        cluster_objects: captured.cluster_objects,
        original_replicas: captured.original_replicas,
    };
    t.time(Phase::Commit, catalog.commit(&manifest, run_token, &captured.parts)).await.map_err(|e| fail(Phase::Commit, "resumed")(e.into()))?;
    info!("manifest written: the backup is complete");
    // What the new backup copied again is whole now; its records are done with (not
    // with OBJECTS=skip: nothing was copied).
    if source.is_some() {
        catalog.clear_damage(&damage.into_iter().map(|(path, _)| path).collect::<Vec<_>>()).await;
    }
    Ok((manifest, captured.written_bytes))
}

/// The refusal to back up into a prefix that holds another cluster's backups: its
/// retention would prune them and its sweep delete their blobs.
fn foreign_cluster(other: &str, backup_id: &str, ours: &str) -> crate::config::ConfigError {
    crate::config::ConfigError(vec![crate::config::Problem {
        variable: "TARGET_URL".into(),
        problem: format!("holds backups of cluster {other:?} (backup {backup_id}), and this run is cluster {ours:?} (CLUSTER_NAME, or the namespace)"),
        expected: "a prefix of its own for each cluster (e.g. s3://backups/<cluster>), or the same CLUSTER_NAME as the backups already there".into(),
    }])
}

fn resume_failed(e: ClusterError, still_paused: Vec<String>) -> RunError {
    let err = RunError::ResumeFailed { message: error_chain(&e), still_paused };
    error!("{err}");
    err
}

/// A URL without credentials or query, for the manifest.
fn redact_url(url: &url::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_password(None);
    let _ = u.set_username("");
    u.set_query(None);
    u.to_string()
}

/// The database whose `storage.chunk_objects` indexes the objects, when DATABASES lists
/// it (else the first listed).
const PACHYDERM_DATABASE: &str = "pachyderm";

/// What the capture works from: the preflight's findings and what it may reuse.
struct Plan<'a> {
    tools: &'a Tools,
    servers: &'a [database::ServerInfo],
    heal: &'a objects::Heal,
    reference: catalog::ListingReader,
    recent: Option<&'a Recent>,
}

/// The capture, while paused: every database's snapshot, then objects ∥ cluster
/// objects. The dumps are not in it: they read the snapshots after the resume.
async fn capture(cfg: &RunConfig, cluster: Option<&Cluster>, backup: &Backup, plan: Plan<'_>) -> Result<Captured, StepError> {
    let Backup { catalog, source, id: backup_id, .. } = backup;
    let Plan { tools, servers, heal, reference, recent } = plan;
    let progress = Progress::start("capture", cfg.common.progress_interval);
    // Every database at the pause's instant, held open until the dumps after the resume
    // have read it (pg_dump --snapshot): the dumps grow with the metadata (a row per
    // chunk), the downtime does not. Pachyderm's live chunks are read at the same
    // snapshot as its dump, so the objects captured are exactly those the dump names.
    let snapshots = futures::future::try_join_all(
        servers
            .iter()
            .map(|info| async move { database::Snapshot::export(&cfg.database.server, tools, &info.database).await.map(|s| (info.database.clone(), s)) }),
    )
    .await?;
    let snapshot = match (source, index_database(servers)) {
        (Some(_), Some(db)) => snapshots.iter().find(|(name, _)| name == db).map(|(name, s)| (name.as_str(), s)),
        _ => None,
    };
    let objects = async {
        let Some(src) = source else { return Ok::<_, StepError>(CapturedObjects::Done(ObjectsEntry::skipped(), 0)) };
        let (entries, index) = match &snapshot {
            Some((db, s)) if s.chunk_index => {
                if let Some(recent) = recent {
                    info!(database = %db, floor = recent.floor, "objects indexed by storage.chunk_objects at the dump's snapshot: the pause copies the chunks written since the pre-copy began; the listing is made after the resume");
                    let live = live_chunks(cfg, tools, db, &s.id, Some(recent.floor)).await?;
                    let reference = catalog::ListingReader::new(&recent.records, "the pre-copy's recent chunks".into())?;
                    let entries = live.map_ok(objects::Entry::Live).boxed();
                    let (listing, _) =
                        objects::copy_entries(src, entries, catalog.pool().store(), reference, heal, cfg.copy.concurrency, objects::Vanished::Fails, &progress)
                            .await?;
                    let (paused, _) =
                        listing.finish().map_err(|e| StepError { reason: "objects", message: format!("finishing the paused copy's listing: {e}") })?;
                    return Ok(CapturedObjects::Deferred(paused));
                }
                info!(database = %db, "objects indexed by storage.chunk_objects at the dump's snapshot: only what lies outside chunk/ is listed");
                let live = live_chunks(cfg, tools, db, &s.id, None).await?;
                (objects::indexed(src, live).await?, ObjectsIndex::Database)
            }
            other => {
                let why = match other {
                    Some((db, _)) => format!("database {db} has no storage.chunk_objects of the shape this version reads (another Pachyderm version?)"),
                    None => "no database to read it from".to_string(),
                };
                warn!("objects indexed by a listing of the whole source bucket while paused: {why}");
                (objects::listed(src, objects::lists_sorted(&cfg.source)).await?, ObjectsIndex::Listing)
            }
        };
        let (listing, stats) =
            objects::copy_entries(src, entries, catalog.pool().store(), reference, heal, cfg.copy.concurrency, objects::Vanished::Fails, &progress).await?;
        let (entry, size) = write_listing(catalog, backup_id, listing, stats, index).await?;
        Ok(CapturedObjects::Done(entry, size))
    };
    let kube_objects = async {
        let Some(c) = cluster else { return Ok::<_, StepError>((Vec::new(), BTreeMap::new(), 0)) };
        let mut names = Vec::new();
        let mut size = 0;
        let capture = c.capture().await?;
        for (file, json) in capture.files {
            let len = json.len() as u64;
            catalog.put_file(backup_id, &file, Bytes::from(json)).await?;
            size += len;
            names.push((file.name(), len));
        }
        Ok((names, capture.replicas, size))
    };
    let (objects, (cluster_objects, original_replicas, cluster_size)) = tokio::try_join!(objects, kube_objects)?;
    let mut parts: Vec<(String, u64)> = cluster_objects.clone();
    let mut written_bytes = cluster_size;
    let cluster_objects = cluster_objects.into_iter().map(|(file, _)| file).collect();
    let (objects, deferred) = match (objects, snapshot) {
        (CapturedObjects::Done(entry, listing_size), _) => {
            if let Some(listing) = &entry.listing {
                parts.push((listing.clone(), listing_size));
            }
            written_bytes += entry.counts.copied_bytes + listing_size;
            (entry, None)
        }
        (CapturedObjects::Deferred(paused), Some((db, _))) => (ObjectsEntry::skipped(), Some(Deferred { database: db.to_string(), paused })),
        (CapturedObjects::Deferred(_), None) => {
            return Err(StepError { reason: "panic", message: "internal error (a bug, please report it): a deferred listing without a snapshot".into() });
        }
    };
    Ok(Captured { snapshots, objects, cluster_objects, original_replicas, written_bytes, parts, deferred })
}

/// The capture's objects: done, or (database index with a pre-copy) only the chunks
/// past the floor copied, the listing left for after the resume.
enum CapturedObjects {
    Done(ObjectsEntry, u64),
    Deferred(catalog::Listing),
}

/// The database whose `storage.chunk_objects` indexes the objects: the one named
/// `pachyderm` in DATABASES, else the first listed.
fn index_database(servers: &[database::ServerInfo]) -> Option<&str> {
    servers.iter().find(|s| s.database == PACHYDERM_DATABASE).or(servers.first()).map(|s| s.database.as_str())
}

/// The live chunk keys of `database` at `snapshot`, past the generation `after` if given.
async fn live_chunks(
    cfg: &RunConfig,
    tools: &Tools,
    database: &str,
    snapshot: &str,
    after: Option<i64>,
) -> Result<futures::stream::BoxStream<'static, Result<String, objects::ObjectsError>>, StepError> {
    let rows = database::rows_at(&cfg.database.server, tools, database, &database::live_chunks(after), Some(snapshot)).await?;
    Ok(futures::stream::try_unfold(rows, |mut rows| async move { Ok(rows.next().await?.map(|key| (key, rows))) })
        .map_err(|e: database::DatabaseError| objects::ObjectsError::Index(error_chain(&e)))
        .boxed())
}

/// Writes the backup's listing; its manifest entry and size.
async fn write_listing(
    catalog: &Catalog,
    backup_id: &str,
    listing: catalog::ListingWriter,
    counts: ObjectCounts,
    index: ObjectsIndex,
) -> Result<(ObjectsEntry, u64), StepError> {
    let (listing, sha) = listing.finish().map_err(|e| StepError { reason: "objects", message: format!("finishing the listing: {e}") })?;
    let size = listing.len();
    catalog.put_listing(backup_id, &listing).await?;
    Ok((ObjectsEntry { mode: ObjectsMode::Copy, index: Some(index), listing: Some(BackupFile::Listing.name()), listing_sha256: Some(sha), counts }, size))
}

#[cfg(test)]
mod tests {
    use super::{PausedRun, Phase, RunError, Timings, UNTOUCHED, downtime_estimate, foreign_cluster};

    #[test]
    fn every_failure_is_reported_with_its_phase_but_a_lock_held_elsewhere() {
        let failed = RunError::Failed { phase: Phase::Lock, reason: "kubernetes", message: "connection refused".into(), state: UNTOUCHED };
        assert_eq!(failed.reported_as(), Some((Phase::Lock, "kubernetes")));
        assert_eq!(RunError::Config(foreign_cluster("a", "20260101-020000", "b")).reported_as(), Some((Phase::Preflight, "config")));
        assert_eq!(RunError::ResumeFailed { message: "refused".into(), still_paused: Vec::new() }.reported_as(), Some((Phase::Resume, "resume")));
        // The holder reports for itself; a failed retention with its committed backup.
        assert_eq!(RunError::Locked("held".into()).reported_as(), None);
        assert_eq!(RunError::RetentionFailed { backup_id: "x".into(), message: "m".into() }.reported_as(), None);
    }

    #[test]
    fn the_manifest_names_the_phases_and_the_downtime_is_resumed_at_minus_paused_at() {
        let mut t = Timings::default();
        t.add(Phase::Dump, 1.5);
        t.add(Phase::Lock, 0.25);
        t.add(Phase::Dump, 0.5);
        let named: Vec<(String, f64)> = t.named().into_iter().collect();
        assert_eq!(named, [("dump".to_string(), 2.0), ("lock".to_string(), 0.25)]);
        let paused_at = chrono::Utc::now();
        t.resumed(paused_at, paused_at + chrono::Duration::milliseconds(2750));
        assert_eq!(t.downtime, Some(2.75));
    }

    #[test]
    fn the_estimate_is_the_longest_recent_downtime_scaled_by_growth_when_it_listed() {
        let listed = |downtime, objects| PausedRun { downtime, objects, listed: true };
        let indexed = |downtime, objects| PausedRun { downtime, objects, listed: false };
        let cases: &[(&[PausedRun], Option<u64>, Option<f64>)] = &[
            (&[], Some(100), None),
            (&[listed(10.0, 100)], None, Some(10.0)),
            (&[listed(10.0, 100)], Some(100), Some(10.0)),
            // The bucket doubled since: the paused listing takes twice as long.
            (&[listed(10.0, 100)], Some(200), Some(20.0)),
            // Indexed by the database, the pause does not grow with the bucket.
            (&[indexed(10.0, 100)], Some(200), Some(10.0)),
            (&[indexed(10.0, 100), listed(4.0, 100)], Some(300), Some(12.0)),
            // A smaller bucket never lowers it.
            (&[listed(10.0, 100)], Some(50), Some(10.0)),
            // The longest of the last three; older runs no longer count.
            (&[indexed(99.0, 100), indexed(5.0, 100), indexed(12.0, 100), indexed(8.0, 100)], Some(100), Some(12.0)),
            (&[listed(10.0, 0)], Some(1000), Some(10.0)),
        ];
        for (history, now, want) in cases {
            assert_eq!(downtime_estimate(history, *now), *want, "{history:?}, {now:?}");
        }
    }
}
