//! The commands behind the CLI, each returning a `Failure` with its [`ExitCode`].

use std::path::Path;

use chrono::Utc;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::catalog::{BackupFile, Catalog};
use crate::cluster::{Cluster, ClusterError, LeaseState};
use crate::config::{CatalogConfig, ClusterSettings, ConfigError, PauseMode, RawEnv, RestoreConfig, RunConfig, VARIABLES, vars};
use crate::cycle::{self, RunError, Stop, error_chain};
use crate::exit::ExitCode;
use crate::metrics::{Pusher, verify_sample};
use crate::objects::Create;
use crate::progress::human_bytes;
use crate::restore::{self, RestoreOptions};
use crate::shards::{self, ShardTask};
use crate::{demo, retention, verify};

/// A command's failure: the exit code and what to tell the operator.
#[derive(Debug)]
pub struct Failure {
    pub code: ExitCode,
    pub message: String,
    /// For a run: the phase it failed in and why, as log fields of the failure's line.
    pub phase: Option<&'static str>,
    pub reason: Option<&'static str>,
    /// The span to log the failure in (a run's: its backup id on the last line too).
    pub span: Option<tracing::Span>,
}

impl Failure {
    pub fn new(code: ExitCode, message: impl Into<String>) -> Self {
        Failure { code, message: message.into(), phase: None, reason: None, span: None }
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::new(ExitCode::Config, e.to_string())
    }
}

impl From<RunError> for Failure {
    fn from(e: RunError) -> Self {
        let (phase, reason) = match &e {
            RunError::Failed { phase, reason, .. } => (Some(phase.name()), Some(*reason)),
            RunError::ResumeFailed { .. } => (Some("resume"), Some("resume")),
            _ => (None, None),
        };
        Failure { code: e.exit_code(), message: e.to_string(), phase, reason, span: None }
    }
}

fn failed(e: impl std::error::Error) -> Failure {
    Failure::new(ExitCode::Failed, error_chain(&e))
}

/// A bucket lock that could not be taken: `Locked` when another writer holds it.
fn locked(e: crate::catalog::CatalogError) -> Failure {
    match e {
        crate::catalog::CatalogError::Locked { .. } => Failure::new(ExitCode::Locked, e.to_string()),
        e => failed(e),
    }
}

/// Who holds a lock: this pod (or host) and process.
fn holder(command: &str) -> String {
    format!("{}/{command}-{}", std::env::var("HOSTNAME").unwrap_or_else(|_| "pachyderm-backup".into()), std::process::id())
}

/// How long the bucket lock of a command without LEASE_DURATION stays valid unrenewed.
const RESTORE_LOCK_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// SIGTERM and SIGINT, delivered to whoever holds the receiver.
pub fn watch_signals() -> Stop {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            warn!("cannot listen for signals; SIGTERM will kill the run without a resume");
            return;
        };
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            warn!(signal = name, "signal received: stopping and resuming the cluster");
            let _ = tx.send(Some(name));
        }
    });
    rx
}

pub async fn run(raw: &RawEnv, stop: Stop, full: bool) -> Result<(), Failure> {
    let mut cfg = RunConfig::from_env(raw)?;
    cfg.copy.full = full;
    // Every line of the run carries its backup id once claimed, the last one included
    // (an error-level span: RUST_LOG=warn keeps it).
    let span = tracing::error_span!("run", backup_id = tracing::field::Empty);
    let summary = tracing::Instrument::instrument(cycle::run(cfg, stop), span.clone()).await.map_err(|e| Failure { span: Some(span), ..Failure::from(e) })?;
    match &summary.retention {
        Some(r) => {
            println!("backup {} complete; retention kept {}, pruned {}, freed {}", summary.manifest.backup_id, r.retained, r.pruned, human_bytes(r.bytes_freed))
        }
        None => println!("backup {} complete", summary.manifest.backup_id),
    }
    Ok(())
}

/// One shard of the run's copy Job; exit 0 once its listing and summary are written.
pub async fn copy_shard(raw: &RawEnv, mut stop: Stop, task: ShardTask) -> Result<(), Failure> {
    let cfg = RunConfig::from_env(raw)?;
    if task.index >= task.count {
        return Err(Failure::new(ExitCode::Config, format!("--index {} is not below --shards {}", task.index, task.count)));
    }
    let span = tracing::error_span!("copy_shard", backup_id = %task.backup_id, shard = task.index);
    let copied = tracing::Instrument::instrument(shards::copy_shard(&cfg, &task), span);
    let summary = tokio::select! {
        r = copied => r.map_err(failed)?,
        _ = stop.wait_for(Option::is_some) => return Err(Failure::new(ExitCode::Failed, format!("shard {} stopped by a signal; the Job retries it", task.index))),
    };
    let c = summary.objects;
    println!("shard {} of {} done: {} objects, {} copied ({}), {} reused", task.index, task.count, c.count, c.copied, human_bytes(c.copied_bytes), c.reused);
    Ok(())
}

/// The preflight alone, every check run and printed (one line each); exit 1 if any
/// failed. A bad configuration stops it first with exit 2, as it stops a run.
pub async fn check(raw: &RawEnv) -> Result<(), Failure> {
    let cfg = RunConfig::from_env(raw)?;
    let lines = cycle::check(&cfg).await;
    let failed: Vec<&str> = lines.iter().filter(|(_, r)| r.is_err()).map(|(what, _)| what.as_str()).collect();
    println!("ok    configuration");
    for (what, result) in &lines {
        match result {
            Ok(found) => println!("ok    {what}: {found}"),
            Err(problem) => println!("FAIL  {what}: {problem}"),
        }
    }
    if failed.is_empty() {
        println!("every check passed: a run would pause the cluster now");
        Ok(())
    } else {
        Err(Failure::new(ExitCode::Failed, format!("check failed: {}; nothing was paused", failed.join(", "))))
    }
}

pub async fn list(raw: &RawEnv, json: bool, all: bool) -> Result<(), Failure> {
    let cfg = CatalogConfig::from_env(raw)?;
    let catalog = Catalog::open(&cfg.target, Create::Never).await.map_err(failed)?;
    let entries = catalog.entries().await.map_err(failed)?;
    let complete: Vec<_> = entries.iter().filter_map(|e| e.manifest.as_ref().map(|m| (m.backup_id.clone(), m.started_at))).collect();
    let decisions = retention::plan(&complete, &cfg.retention);
    if json {
        let rows: Vec<serde_json::Value> = entries
            .iter()
            .filter(|e| all || !e.is_partial())
            .map(|e| {
                let reasons = decisions.iter().find(|d| d.id == e.id).map(|d| d.reasons.iter().map(|r| r.to_string()).collect::<Vec<_>>());
                serde_json::json!({ "id": e.id, "complete": e.manifest.is_some(), "damaged": e.damaged, "manifest": e.manifest, "kept_by": reasons })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default());
        return Ok(());
    }
    println!("{:<22} {:<9} {:>8} {:>11} {:>9} {:>12} {:>10}  kept by", "ID", "STATUS", "AGE", "DATABASES", "OBJECTS", "OBJECT SIZE", "DOWNTIME");
    let now = Utc::now();
    for e in entries.iter().rev() {
        match &e.manifest {
            Some(m) => {
                let age =
                    humantime::format_duration(std::time::Duration::from_secs(now.signed_duration_since(m.finished_at).num_seconds().max(0) as u64 / 60 * 60))
                        .to_string();
                let kept = decisions
                    .iter()
                    .find(|d| d.id == e.id)
                    .map(|d| if d.keep() { d.reasons.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(",") } else { "(pruned at next retention)".into() })
                    .unwrap_or_default();
                println!(
                    "{:<22} {:<9} {:>8} {:>11} {:>9} {:>12} {:>9.1}s  {}",
                    m.backup_id,
                    "complete",
                    if age.is_empty() { "0m".into() } else { age.split_whitespace().take(2).collect::<Vec<_>>().join("") },
                    human_bytes(m.databases.iter().map(|d| d.size).sum()),
                    m.objects.counts.count,
                    human_bytes(m.objects.counts.bytes),
                    m.downtime_seconds,
                    kept
                );
            }
            None => match &e.damaged {
                Some(why) => println!("{:<22} {:<9} {why}; {}", e.id, "DAMAGED", crate::catalog::DAMAGED_ADVICE),
                None if all => println!("{:<22} {:<9}", e.id, "partial"),
                None => {}
            },
        }
    }
    Ok(())
}

pub async fn resume(raw: &RawEnv, if_stale: bool) -> Result<(), Failure> {
    let (_, settings) = ClusterSettings::from_env(raw)?;
    if settings.pause_mode == PauseMode::None {
        println!("PAUSE_MODE=none: there is no cluster to resume");
        return Ok(());
    }
    let cluster = Cluster::connect(&settings).await.map_err(failed)?;
    if if_stale && let LeaseState::Held { holder, until } = cluster.lease_holder().await.map_err(failed)? {
        info!(%holder, %until, "a live run holds the Lease: nothing to do");
        return Ok(());
    }
    let holder = format!("{}/resume-{}", std::env::var("HOSTNAME").unwrap_or_else(|_| "pachyderm-backup".into()), Utc::now().timestamp());
    let lease = match cluster.acquire_lease(&holder).await {
        Ok(l) => l,
        Err(e @ ClusterError::LeaseHeld { .. }) if if_stale => {
            info!("{e}: nothing to do");
            return Ok(());
        }
        Err(e @ ClusterError::LeaseHeld { .. }) => return Err(Failure::new(ExitCode::Locked, format!("{e}; a live run resumes its own cluster"))),
        Err(e) => return Err(failed(e)),
    };
    let result = cluster.resume("the `pachyderm-backup resume` command").await;
    lease.release().await;
    match result {
        Ok(resumed) if resumed.is_empty() => {
            println!("nothing was paused by pachyderm-backup");
            Ok(())
        }
        Ok(resumed) => {
            println!("resumed: {}", resumed.join(", "));
            Ok(())
        }
        Err(e) => {
            // The run's own RESUME FAILED message, with what still carries a pause.
            let still_paused = cluster.paused_objects().await.unwrap_or_default();
            let err = RunError::ResumeFailed { message: error_chain(&e), still_paused };
            Err(Failure::new(ExitCode::ResumeFailed, err.to_string()))
        }
    }
}

pub async fn retention(raw: &RawEnv, dry_run: bool) -> Result<(), Failure> {
    let cfg = CatalogConfig::from_env(raw)?;
    let catalog = Catalog::open(&cfg.target, Create::Never).await.map_err(failed)?;
    // Under the Lease, so that no run commits a backup while blobs are swept. A dry
    // run deletes nothing: it needs no Lease, nor any access to Kubernetes.
    let cluster = match cfg.cluster.pause_mode {
        _ if dry_run => None,
        PauseMode::None => None,
        _ => Some(Cluster::connect(&cfg.cluster).await.map_err(failed)?),
    };
    let lease = match &cluster {
        Some(c) if !dry_run => Some(c.acquire_lease(&format!("retention-{}", Utc::now().timestamp())).await.map_err(|e| match e {
            ClusterError::LeaseHeld { .. } => Failure::new(ExitCode::Locked, e.to_string()),
            e => failed(e),
        })?),
        _ => None,
    };
    // And under the bucket lock, which every writer takes whatever the pause mode.
    let bucket_lock = if dry_run { None } else { Some(catalog.lock(&holder("retention"), "retention", cfg.cluster.lease_duration).await.map_err(locked)?) };
    let mode = if dry_run { retention::Mode::DryRun } else { retention::Mode::Delete };
    let outcome = retention::apply(&catalog, &cfg.retention, cfg.gc_grace, Utc::now(), mode).await;
    if let Some(l) = bucket_lock {
        l.release().await;
    }
    if let Some(l) = lease {
        l.release().await;
    }
    let outcome = outcome.map_err(|e| match e {
        retention::RetentionError::SharedPrefix(_) => Failure::new(ExitCode::Config, e.to_string()),
        e => failed(e),
    })?;
    for (id, why) in &outcome.damaged {
        println!("{id:<22} DAMAGED {why}");
    }
    for d in &outcome.decisions {
        let reasons: Vec<String> = d.reasons.iter().map(|r| r.to_string()).collect();
        println!("{:<22} {:<6} {}", d.id, if d.keep() { "keep" } else { "delete" }, reasons.join(","));
    }
    println!(
        "{}{} kept, {} pruned, {} unreferenced blobs ({}), {} unfinished folders{}",
        if dry_run { "dry run: " } else { "" },
        outcome.retained,
        outcome.pruned,
        outcome.blobs_deleted,
        human_bytes(outcome.bytes_freed),
        outcome.leftovers_removed,
        if outcome.swept { String::new() } else { format!(", pool not swept: {} damaged backup(s)", outcome.damaged.len()) }
    );
    if !outcome.locked.is_empty() || outcome.locked_leftovers > 0 || outcome.locked_blobs > 0 {
        let until = outcome.locked.iter().map(|(_, t)| *t).max();
        println!(
            "object lock: {} backup(s), {} unfinished folder(s) and {} blob(s) are still protected by the bucket's Object Lock and were left for a later run{}",
            outcome.locked.len(),
            outcome.locked_leftovers,
            outcome.locked_blobs,
            until.map(|t| format!(" (the last backup unlocks at {t})")).unwrap_or_default()
        );
    }
    Ok(())
}

pub fn variables(json: bool) -> Result<(), Failure> {
    if json {
        println!("{}", serde_json::to_string_pretty(VARIABLES).unwrap_or_default());
    } else {
        println!("| variable | default | meaning |\n|---|---|---|");
        for v in VARIABLES {
            println!("| `{}` | {} | {} |", v.name, v.default, v.description);
        }
    }
    Ok(())
}

/// The demo: a throwaway PostgreSQL with the fixture, a local source bucket of
/// Pachyderm-shaped chunks, a local backup bucket, `PAUSE_MODE=none`.
pub async fn demo(raw: &RawEnv, dir: &Path, objects_count: u64, stop: Stop) -> Result<(), Failure> {
    let demo_err = |e: demo::DemoError| Failure::new(ExitCode::Failed, e.to_string());
    let source = dir.join("source");
    let target = dir.join("backup-bucket");
    std::fs::create_dir_all(&source).map_err(failed)?;
    // A second demo run keeps the first one's objects, so its backup reuses them all.
    let seeded = std::fs::read_dir(source.join("chunk")).map(|mut d| d.next().is_some()).unwrap_or(false);
    println!("starting a throwaway PostgreSQL with a Pachyderm-like fixture…");
    let pg = tokio::task::spawn_blocking(move || {
        let pg = demo::TempPostgres::start()?;
        pg.load_fixture(objects_count as usize)?;
        Ok::<_, demo::DemoError>(pg)
    })
    .await
    .map_err(|e| Failure::new(ExitCode::Failed, e.to_string()))?
    .map_err(demo_err)?;
    if !seeded {
        println!("seeding {objects_count} chunk objects into {}…", source.display());
        let store: std::sync::Arc<dyn object_store::ObjectStore> =
            std::sync::Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&source).map_err(failed)?);
        demo::seed_chunks(&store, 1..=objects_count).await.map_err(demo_err)?;
    }
    let vars = [
        ("PAUSE_MODE", "none".to_string()),
        ("PGHOST", "127.0.0.1".to_string()),
        ("PGPORT", pg.port.to_string()),
        ("PGUSER", "postgres".to_string()),
        ("PGSSLMODE", "disable".to_string()),
        ("PG_BIN_DIR", pg.bin.display().to_string()),
        ("SOURCE_URL", format!("file://{}", source.display())),
        ("TARGET_URL", format!("file://{}", target.display())),
        ("CLUSTER_NAME", "demo".to_string()),
        ("GC_GRACE", "4h".to_string()),
    ];
    // The demo's own settings, plus a Pushgateway if one is given, to watch its metrics.
    let push = raw.pushgateway_url.iter().map(|u| ("PUSHGATEWAY_URL".to_string(), u.clone()));
    let raw = RawEnv::from_iter(vars.iter().map(|(k, v)| (k.to_string(), v.clone())).chain(push))?;
    let cfg = RunConfig::from_env(&raw)?;
    println!("running one backup cycle (PAUSE_MODE=none: no cluster)…");
    let started = std::time::Instant::now();
    let summary = cycle::run(cfg, stop).await?;
    let m = &summary.manifest;
    println!();
    println!("backup {} complete in {:.1}s", m.backup_id, started.elapsed().as_secs_f64());
    for d in &m.databases {
        println!("  database {:<10} {:>10}  sha256 {}…", d.name, human_bytes(d.size), &d.sha256[..16]);
    }
    println!(
        "  objects: {} ({}), {} copied, {} reused",
        m.objects.counts.count,
        human_bytes(m.objects.counts.bytes),
        m.objects.counts.copied,
        m.objects.counts.reused
    );
    println!("  the backup is in {}/backups/{}/ (manifest.json written last)", target.display(), m.backup_id);
    // The binary as it ran (`cargo run` puts none on PATH), so the hint works as printed.
    let me = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "pachyderm-backup".into());
    println!("  list it:  TARGET_URL=file://{} {me} list", target.display());
    drop(pg);
    Ok(())
}

pub struct RestoreArgs {
    pub backup: Option<String>,
    pub clean: bool,
    pub force: bool,
    pub cluster_objects: bool,
    pub helm_values: bool,
    pub skip_databases: bool,
    pub skip_objects: bool,
}

/// `restore --cluster-objects`: the saved objects as one `v1` List on stdout, for
/// `kubectl apply -f -` (Deployments at their original replicas); `--helm-values`: the
/// saved Helm values instead. What to do with them goes to the log.
async fn print_cluster_objects(catalog: &Catalog, manifest: &crate::catalog::Manifest, helm_values: bool) -> Result<(), Failure> {
    let id = &manifest.backup_id;
    let mut items = Vec::new();
    let mut helm = Vec::new();
    for file in &manifest.cluster_objects {
        let bytes = catalog.read_file(id, file).await.map_err(failed)?;
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| Failure::new(ExitCode::Failed, format!("{file} of backup {id} is not JSON: {e}")))?;
        if BackupFile::is_helm_values(file) { helm.push(value) } else { items.push(value) }
    }
    if helm_values {
        if helm.is_empty() {
            info!(backup_id = %id, "this backup holds no Helm values (HELM_RELEASE was not set)");
        }
        for values in &helm {
            println!("{}", serde_json::to_string_pretty(values).unwrap_or_default());
        }
        return Ok(());
    }
    if items.is_empty() {
        info!(backup_id = %id, "this backup holds no cluster objects (taken with PAUSE_MODE=none, or outside Kubernetes): nothing to apply");
    } else if manifest.original_replicas.is_empty() {
        warn!(
            backup_id = %id,
            "this backup was written by an older version: its objects were saved as they were while paused (pachd and pachw at 0 replicas, Services with the old cluster's IPs, the worker ReplicationControllers): edit before applying (set the replicas, remove spec.clusterIP(s), drop the ReplicationControllers and kube-root-ca.crt)"
        );
    } else {
        let replicas: Vec<String> = manifest.original_replicas.iter().map(|(k, n)| format!("{k}={n}")).collect();
        info!(
            backup_id = %id,
            objects = items.len(),
            original_replicas = %replicas.join(","),
            helm_values = !helm.is_empty(),
            "restore the databases and the bucket first, then: pachyderm-backup restore --cluster-objects | kubectl apply -n <namespace> -f - (pachd and pachw start at their original replicas; pachd re-creates the pipeline workers)"
        );
    }
    let list = serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": items });
    println!("{}", serde_json::to_string_pretty(&list).unwrap_or_default());
    Ok(())
}

pub async fn restore(raw: &RawEnv, args: RestoreArgs) -> Result<(), Failure> {
    let print_only = args.cluster_objects || args.helm_values;
    let cfg = RestoreConfig::from_env(raw, !print_only && !args.skip_databases, !print_only && !args.skip_objects)?;
    let catalog = Catalog::open(&cfg.target, Create::Never).await.map_err(failed)?;
    let manifest = restore::choose(&catalog, args.backup.as_deref()).await.map_err(failed)?;
    if print_only {
        return print_cluster_objects(&catalog, &manifest, args.helm_values).await;
    }
    info!(backup_id = %manifest.backup_id, "restoring");
    let opts = RestoreOptions { clean: args.clean, force: args.force, databases: !args.skip_databases, objects: !args.skip_objects };
    // Under the bucket lock: no retention may sweep the blobs being restored.
    let bucket_lock = catalog.lock(&holder("restore"), "restore", RESTORE_LOCK_TTL).await.map_err(locked)?;
    let restored = restore::restore(&cfg, &catalog, &manifest, &opts).await;
    bucket_lock.release().await;
    let s = restored.map_err(|e| Failure { code: e.exit_code(), ..failed(&e) })?;
    info!(backup_id = %s.backup_id, databases = s.databases.len(), objects = s.objects, object_bytes = s.objects_bytes, skipped = s.skipped, mismatches = 0, seconds = s.seconds, "restore complete");
    println!("restored backup {} in {:.1}s", s.backup_id, s.seconds);
    for (db, bytes) in &s.databases {
        println!("  database {db}: {} of dump", human_bytes(*bytes));
    }
    println!("  objects: {} restored ({}), {} already there, 0 mismatches", s.objects, human_bytes(s.objects_bytes), s.skipped);
    Ok(())
}

pub struct VerifyArgs {
    pub backup: Option<String>,
    pub all: bool,
    pub deep: bool,
    pub drill: bool,
}

pub async fn verify(raw: &RawEnv, args: VerifyArgs) -> Result<(), Failure> {
    let cfg = RestoreConfig::from_env(raw, args.drill, false)?;
    let mut cluster = cfg.common.cluster_name.clone();
    let outcome = verify_backups(&cfg, &args, &mut cluster).await;
    // Every outcome reaches the Pushgateway: a verify that cannot even read the
    // backup is the failure the verify alert exists for.
    let label = cluster.or_else(|| raw.pachyderm_namespace.clone()).unwrap_or_else(|| "unknown".into());
    Pusher::new(cfg.common.push.clone(), label).push(&verify_sample(Utc::now().timestamp() as f64, outcome.is_ok())).await;
    outcome
}

async fn verify_backups(cfg: &RestoreConfig, args: &VerifyArgs, cluster: &mut Option<String>) -> Result<(), Failure> {
    let catalog = Catalog::open(&cfg.target, Create::Never).await.map_err(failed)?;
    let mut problems = Vec::new();
    let manifests = if args.all {
        let entries = catalog.entries().await.map_err(failed)?;
        for e in &entries {
            if let Some(why) = &e.damaged {
                println!("{} DAMAGED: {why}", e.id);
                problems.push(format!("{}: {why}", e.id));
            }
        }
        entries.into_iter().filter_map(|e| e.manifest).collect()
    } else {
        vec![restore::choose(&catalog, args.backup.as_deref()).await.map_err(failed)?]
    };
    // The drill restores the dumps: their bytes are checked first.
    let deep = args.deep || args.drill;
    for m in &manifests {
        cluster.get_or_insert_with(|| m.cluster.clone());
        let mut f = verify::verify(&catalog, m, deep, cfg.concurrency, cfg.common.progress_interval).await.map_err(failed)?;
        if args.drill {
            let server = cfg.server.as_ref().ok_or_else(|| Failure::new(ExitCode::Config, format!("{} is needed for --drill", vars::RESTORE_PGHOST.name)))?;
            verify::drill(server, cfg.bin_dir.as_deref(), cfg.identity.as_ref(), cfg.scratch, &catalog, m, &mut f)
                .await
                .map_err(|e| Failure { code: e.exit_code(), ..failed(&e) })?;
        }
        let verdict = if f.problems.is_empty() { "ok" } else { "PROBLEMS" };
        println!(
            "{} {verdict}: {} files checked{}{}",
            m.backup_id,
            f.checked_files,
            if deep { format!(", {} re-read", human_bytes(f.checked_bytes)) } else { String::new() },
            if f.recorded_checksums > 0 { format!(", the SHA-256 of {} blob(s) copied without one recorded", f.recorded_checksums) } else { String::new() }
        );
        for p in &f.problems {
            println!("  - {p}");
        }
        problems.extend(f.problems.into_iter().map(|p| format!("{}: {p}", m.backup_id)));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Failure::new(ExitCode::Failed, format!("verification found {} problem(s):\n  {}", problems.len(), problems.join("\n  "))))
    }
}
