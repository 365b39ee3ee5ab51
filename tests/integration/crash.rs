//! Kill -9 at every phase (issue 9.5). For each phase the real binary's `run` is held
//! in that phase by the test bed (a database port that never answers, a slow wire, pods
//! that never terminate, a locked table, a held request) and killed with SIGKILL there;
//! the test first checks the run really was in that phase (what the cluster and the
//! backup bucket show), then that:
//! 1. nothing non-whole is listed, verified or restored, and every backup listed passes
//!    `verify --all --deep`;
//! 2. the next `run` succeeds and its backup passes `verify --deep`;
//! 3. the cluster ends at its original replicas with no pause annotation (the next run's
//!    recover resumes what the killed one paused);
//! 4. the dead run's folder (no manifest) survives the next run's retention (it is young)
//!    and is removed by retention once past GC_GRACE, every kept backup still whole.
//!
//! Every hold is a condition polled, never a sleep: a phase is killed only once the bed
//! shows the run is in it, and the state found after the kill proves it.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::support::fault_proxy::{FaultProxy, Faults, Recorded};
use crate::support::*;
use chrono::Utc;
use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::path::Path;
use pachyderm_backup::catalog::{self, BackupFile};
use pachyderm_backup::retention::{self, Policy};

/// Where the run is killed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Checking database `pachyderm`, whose port accepts and never answers.
    Preflight,
    /// Copying objects before the pause, through a slow wire.
    Precopy,
    /// Paused (every workload at 0, annotated), waiting for pods that never terminate.
    Pause,
    /// The dump of `pachyderm` blocked on a lock; the dump of `dex` written (the listing
    /// is made after the resume).
    DumpPachyderm,
    /// The dump of `dex` blocked on a lock; the dump of `pachyderm` written.
    DumpDex,
    /// The capture's object copy (PRECOPY=false) through a slow wire, cluster paused.
    Copy,
    /// Commit: every part written and checked present, the claim being read back, no manifest.
    Commit,
    /// Retention's mark: the new backup committed, its listing being read.
    RetentionMark,
    /// Retention's prune: the pruned backup's manifest deleted, its files not yet.
    RetentionPrune,
    /// Retention's sweep: the pruned backup gone, the blob pool being listed.
    RetentionSweep,
}

use Phase::*;

const PHASES: [Phase; 10] = [Preflight, Precopy, Pause, DumpPachyderm, DumpDex, Copy, Commit, RetentionMark, RetentionPrune, RetentionSweep];

impl Phase {
    /// The cluster is paused by the dead run (and must be resumed by the next one).
    fn paused_at_kill(self) -> bool {
        matches!(self, Pause | Copy)
    }

    /// The killed run had committed its backup (killed in its retention).
    fn committed(self) -> bool {
        matches!(self, RetentionMark | RetentionPrune | RetentionSweep)
    }
}

/// A source or target reached through the fault proxy.
fn proxied(phase: Phase) -> Option<&'static str> {
    match phase {
        Precopy | Copy => Some("SOURCE_AWS_ENDPOINT"),
        Commit | RetentionMark | RetentionPrune | RetentionSweep => Some("TARGET_AWS_ENDPOINT"),
        _ => None,
    }
}

/// The proxy path of a file of backup `id` (path-style: /bucket/prefix/key).
fn target_path(id: &str, file: &str) -> String {
    format!("/backups/nightly/backups/{id}/{file}")
}

/// Sessions of pachyderm-backup (its pg_dumps, orphaned by the kill, included).
fn sessions(pg: &TempPostgres) -> usize {
    pg.psql("postgres", "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pachyderm-backup'")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(usize::MAX)
}

/// The files of a backup folder, relative to it.
async fn files(bed: &Bed, id: &str) -> BTreeSet<String> {
    let prefix = Path::from(format!("{}/{id}", catalog::BACKUPS_DIR));
    let strip = format!("{prefix}/");
    bed.target.list(Some(&prefix)).map_ok(|m| m.location.as_ref().trim_start_matches(&strip).to_string()).try_collect().await.expect("list a folder")
}

async fn exists(bed: &Bed, key: &str) -> bool {
    object_store::ObjectStoreExt::head(&*bed.target, &Path::from(key)).await.is_ok()
}

async fn complete_ids(bed: &Bed) -> BTreeSet<String> {
    bed.manifests().await.into_iter().map(|m| m.backup_id).collect()
}

async fn partial_ids(bed: &Bed) -> BTreeSet<String> {
    let complete = complete_ids(bed).await;
    bed.folders().await.into_iter().filter(|f| !complete.contains(f)).collect()
}

/// The newest folder under backups/ that was not there `before`.
async fn new_folder(bed: &Bed, before: &BTreeSet<String>) -> Option<String> {
    bed.folders().await.into_iter().filter(|f| !before.contains(f)).max()
}

/// Polls `f` until it holds; fails at once, with the run's output, if the run ends
/// first (it was never held in the phase), and after `limit` otherwise.
async fn hold_until<Fut: Future<Output = bool>>(running: &mut Running, what: &str, limit: Duration, mut f: impl FnMut() -> Fut) {
    let deadline = Instant::now() + limit;
    loop {
        if f().await {
            return;
        }
        if let Ok(Some(status)) = running.child.try_wait() {
            use tokio::io::AsyncReadExt;
            let mut stderr = String::new();
            if let Some(mut e) = running.child.stderr.take() {
                let _ = e.read_to_string(&mut stderr).await;
            }
            panic!("the run ended ({status}) before {what}:\n{stderr}");
        }
        assert!(Instant::now() < deadline, "gave up waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How much of the pool a killed copy wrote (it must have written some, not all).
async fn pool(bed: &Bed) -> String {
    let blobs: Vec<object_store::ObjectMeta> = bed.target.list(Some(&Path::from(catalog::BLOBS_DIR))).try_collect().await.expect("list blobs");
    assert!(!blobs.is_empty() && blobs.len() < 40, "killed during the copy: {} of 40 blobs written", blobs.len());
    format!("; {} of 40 blobs copied", blobs.len())
}

fn workloads_at_zero(bed: &Bed) -> bool {
    [("deployments", "pachd"), ("deployments", "pachw"), ("replicationcontrollers", "default-edges-v1"), ("replicationcontrollers", "default-montage-v1")]
        .iter()
        .all(|(kind, name)| bed.kube.replicas(kind, name) == Some(0))
}

fn never_paused(bed: &Bed) -> bool {
    bed.kube.mutating_requests().iter().all(|r| r.path.contains("/leases"))
}

fn seen(proxy: &FaultProxy, f: impl Fn(&Recorded) -> bool) -> bool {
    proxy.requests().iter().any(f)
}

/// Starts `run`, holds it in `phase`, kills it with SIGKILL there and checks everything
/// the issue asks of what is left.
async fn kill_at(phase: Phase) {
    let started = Instant::now();
    let mut bed = Bed::new(BedOptions { chunks: 40, ..Default::default() }).await;
    let proxy = match proxied(phase) {
        Some(variable) => {
            let proxy = FaultProxy::start(bed.moto.as_ref().expect("an S3 bed").port).await;
            bed.set(variable, &proxy.url());
            Some(proxy)
        }
        None => None,
    };

    // Retention needs work: two earlier backups (all kept), then a policy keeping the
    // two newest, so that the killed run's retention prunes the oldest. Chunk 1 is gone
    // from the source after the oldest: its blob is the pool's garbage once that is pruned.
    let mut earlier: Vec<String> = Vec::new();
    if phase.committed() {
        bed.set("KEEP_LAST", "100");
        bed.run(&["run"]).await.expect_code(0);
        bed.collect_chunks(1..=1).await;
        bed.run(&["run"]).await.expect_code(0);
        earlier = bed.manifests().await.into_iter().map(|m| m.backup_id).collect();
        assert_eq!(earlier.len(), 2);
        bed.set("KEEP_LAST", "2");
        bed.set("MIN_KEEP", "1");
    }
    let oldest = earlier.first().cloned().unwrap_or_default();
    let folders_before: BTreeSet<String> = bed.folders().await.into_iter().collect();

    // Hold the run in its phase.
    let mut hanging = None;
    let mut lock = None;
    let mut dex_lock = None;
    match phase {
        Preflight => {
            let (port, accepted) = hanging_port();
            bed.set("PGPORT", &port.to_string());
            bed.set("PREFLIGHT_TIMEOUT", "60s");
            hanging = Some(accepted);
        }
        Precopy | Copy => {
            if phase == Copy {
                bed.set("PRECOPY", "false");
            }
            // A slow source: 40 objects, 8 at a time, 500 ms each: the copy lasts ≥ 2.5 s.
            proxy.as_ref().expect("proxy").set(Faults {
                latency: Duration::from_millis(500),
                only_path_prefix: Some("/pach-data".into()),
                ..Default::default()
            });
        }
        Pause => bed.kube.pods_never_terminate(true),
        DumpDex => dex_lock = Some(TableLock::take_on(&bed.pg, "dex", "client").await),
        // The run is held at its pachyderm dump while the proxy's rules are set for the
        // backup id it claimed.
        DumpPachyderm | Commit | RetentionMark | RetentionPrune | RetentionSweep => lock = Some(TableLock::take(&bed.pg).await),
    }
    let mut running = Running::start(bed.command(&["run"]));
    let limit = Duration::from_secs(60);
    let at_kill;
    match phase {
        Preflight => {
            let accepted = hanging.clone().expect("hanging port");
            hold_until(&mut running, "a connection to the hanging database port", limit, || {
                let n = accepted.load(Ordering::SeqCst);
                async move { n > 0 }
            })
            .await;
        }
        Precopy | Copy => {
            let (bed, proxy) = (&bed, proxy.as_ref().expect("proxy"));
            let what = if phase == Precopy { "the pre-copy's first blobs written" } else { "the paused capture's first blobs written" };
            hold_until(&mut running, what, limit, || async move {
                let paused = bed.kube.replicas("deployments", "pachd") == Some(0);
                if paused != (phase == Copy) || !seen(proxy, Recorded::is_object_get) {
                    return false;
                }
                bed.target.list(Some(&Path::from(catalog::BLOBS_DIR))).try_next().await.ok().flatten().is_some()
            })
            .await;
        }
        Pause => {
            hold_until(&mut running, "every workload scaled to 0, pods still terminating", limit, || {
                let zero = workloads_at_zero(&bed);
                async move { zero }
            })
            .await;
        }
        DumpPachyderm | DumpDex => {
            let (held, other) = if phase == DumpPachyderm { ("pachyderm", "dex") } else { ("dex", "pachyderm") };
            let (bed, folders_before) = (&bed, &folders_before);
            hold_until(&mut running, &format!("pg_dump of {held} blocked, the {other} dump written"), limit, || async move {
                if !dump_blocked_in(&bed.pg, held) {
                    return false;
                }
                let Some(id) = new_folder(bed, folders_before).await else { return false };
                files(bed, &id).await.contains(&format!("databases/{other}.pgdump"))
            })
            .await;
        }
        Commit | RetentionMark | RetentionPrune | RetentionSweep => {
            let (bed_ref, folders_before) = (&bed, &folders_before);
            hold_until(&mut running, "pg_dump of pachyderm blocked, the run's folder claimed", limit, || async move {
                dump_is_blocked(&bed_ref.pg) && new_folder(bed_ref, folders_before).await.is_some()
            })
            .await;
            let claimed = new_folder(&bed, &folders_before).await.expect("the run's folder");
            let proxy = proxy.as_ref().expect("proxy");
            // Latency on one path only: what the run does from now on to that path alone
            // is held (the rest of the run goes through untouched).
            let held = match phase {
                // The commit lists the folder, then reads the claim back: held there,
                // every part is written and nothing is left to write but the manifest.
                Commit => target_path(&claimed, &BackupFile::Claim.name()),
                // Retention's mark reads the kept listings, newest first: the new
                // backup's, then the previous one's (its last read before the prune).
                RetentionMark => target_path(&claimed, &BackupFile::Listing.name()),
                _ => target_path(&earlier[1], &BackupFile::Listing.name()),
            };
            let latency = if phase == Commit || phase == RetentionMark { Duration::from_secs(120) } else { Duration::from_secs(1) };
            // Reads only: the listing is written after the resume, once the lock is released.
            proxy.set(Faults { latency, only_path_prefix: Some(held.clone()), only_method: Some("GET"), ..Default::default() });
            proxy.clear_requests();
            lock.take().expect("lock").release().await;
            let what = match phase {
                Commit => "the commit reading the claim back",
                RetentionMark => "retention's mark reading the new listing",
                _ => "retention's mark reading the previous listing",
            };
            hold_until(&mut running, what, limit, || {
                let got = seen(proxy, |r| r.method == "GET" && r.path == held);
                async move { got }
            })
            .await;
            match phase {
                // That GET is held 1 s; from now on every request to the target is slow.
                // S3 deletes go through POST ?delete (the key in the body), so the prune
                // is recognised by the listing of the pruned folder that follows the
                // deletion of its manifest.
                RetentionPrune => {
                    proxy.set(Faults { latency: Duration::from_secs(1), only_path_prefix: Some("/backups".into()), ..Default::default() });
                    proxy.clear_requests();
                    hold_until(&mut running, "the prune listing the oldest folder, its manifest deleted", limit, || {
                        let got = seen(proxy, |r| r.is_list() && r.query.contains(oldest.as_str()));
                        async move { got }
                    })
                    .await;
                }
                // Every request slow and every listing page one key: the sweep's listing
                // of ≥ 40 blobs lasts ≥ 4 s.
                RetentionSweep => {
                    proxy.set(Faults {
                        latency: Duration::from_millis(100),
                        max_keys: Some(1),
                        only_path_prefix: Some("/backups".into()),
                        ..Default::default()
                    });
                    proxy.clear_requests();
                    hold_until(&mut running, "the sweep listing the blob pool", limit, || {
                        let got = seen(proxy, |r| r.is_list() && r.query.contains("blobs"));
                        async move { got }
                    })
                    .await;
                }
                _ => {}
            }
        }
    }

    // SIGKILL: no handler, no resume, no cleanup.
    running.signal("KILL");
    let out = running.finish().await;
    assert_eq!(out.code, None, "{phase:?}: killed by a signal\n{}", out.stderr);
    let killed_after = started.elapsed();

    // Release what held the run; the dead run's orphaned pg_dumps end on their broken pipe.
    if let Some(l) = lock.take() {
        l.release().await;
    }
    if let Some(l) = dex_lock.take() {
        l.release().await;
    }
    wait_until("the killed run's database sessions gone", Duration::from_secs(30), || sessions(&bed.pg) == 0).await;
    if let Some(p) = &proxy {
        p.set(Faults::default());
    }
    bed.kube.pods_never_terminate(false);

    // The state found proves where the run was killed.
    let id = new_folder(&bed, &folders_before).await.expect("the killed run claimed a folder");
    let f = files(&bed, &id).await;
    let complete = complete_ids(&bed).await;
    let annotations = bed.kube.annotations_containing("pachyderm-backup/replicas");
    assert!(exists(&bed, catalog::LOCK).await, "{phase:?}: the killed run's bucket lock is still there (it never finished)");
    let names = |f: &BTreeSet<String>| f.iter().cloned().collect::<Vec<_>>().join(", ");
    match phase {
        Preflight | Precopy => {
            assert!(never_paused(&bed), "{phase:?}: nothing but the Lease was written to the cluster");
            assert_eq!(f, BTreeSet::from([BackupFile::Claim.name()]), "{phase:?}: only the claim");
            at_kill = format!("cluster never paused; folder {{{}}}{}", names(&f), if phase == Precopy { pool(&bed).await } else { String::new() });
        }
        Pause | Copy => {
            assert!(workloads_at_zero(&bed), "{phase:?}: a SIGKILL cannot resume");
            assert_eq!(annotations.len(), 4, "{phase:?}: the original replicas are on every paused object: {annotations:?}");
            match phase {
                Pause => assert_eq!(f, BTreeSet::from([BackupFile::Claim.name()]), "{phase:?}: nothing captured yet"),
                _ => assert!(!f.contains(&BackupFile::Listing.name()), "{phase:?}: the copy had not finished: {f:?}"),
            }
            at_kill =
                format!("paused ({} annotated); folder {{{}}}{}", annotations.len(), names(&f), if phase == Copy { pool(&bed).await } else { String::new() });
        }
        // The dumps run after the resume, at the snapshots the pause exported.
        DumpPachyderm | DumpDex => {
            bed.assert_resumed();
            match phase {
                DumpPachyderm => assert!(f.contains("databases/dex.pgdump") && !f.contains("databases/pachyderm.pgdump"), "{phase:?}: {f:?}"),
                _ => assert!(f.contains("databases/pachyderm.pgdump") && !f.contains("databases/dex.pgdump"), "{phase:?}: {f:?}"),
            }
            at_kill = format!("resumed; folder {{{}}}", names(&f));
        }
        Commit => {
            bed.assert_resumed();
            for part in [BackupFile::Claim, BackupFile::Dump("pachyderm".into()), BackupFile::Dump("dex".into()), BackupFile::Listing].map(|p| p.name()) {
                assert!(f.contains(&part), "{phase:?}: {part} written before the commit: {f:?}");
            }
            assert!(f.iter().any(|p| p.starts_with("cluster/")), "{phase:?}: cluster objects written: {f:?}");
            assert!(!f.contains(&BackupFile::Manifest.name()), "{phase:?}: no manifest");
            at_kill = format!("resumed; every part written ({} files), no manifest", f.len());
        }
        RetentionMark | RetentionPrune | RetentionSweep => {
            bed.assert_resumed();
            assert!(complete.contains(&id), "{phase:?}: the killed run had committed {id}");
            assert!(complete.contains(&earlier[1]), "{phase:?}: the kept older backup is untouched");
            let oldest_files = files(&bed, &oldest).await;
            match phase {
                RetentionMark => assert!(complete.contains(&oldest), "{phase:?}: nothing deleted during the mark"),
                RetentionPrune => assert!(
                    !oldest_files.is_empty() && !oldest_files.contains(&BackupFile::Manifest.name()),
                    "{phase:?}: the pruned backup's manifest deleted first, its files still there: {oldest_files:?}"
                ),
                _ => assert!(oldest_files.is_empty(), "{phase:?}: the pruned backup was deleted before the sweep: {oldest_files:?}"),
            }
            at_kill = format!(
                "new backup committed; oldest {}; lock.json left",
                if oldest_files.is_empty() {
                    "deleted".to_string()
                } else if oldest_files.contains(&BackupFile::Manifest.name()) {
                    "intact".to_string()
                } else {
                    format!("without manifest ({} files left)", oldest_files.len())
                }
            );
        }
    }
    assert_eq!(complete.contains(&id), phase.committed(), "{phase:?}: the killed run's folder is complete only if it had written its manifest: {f:?}");

    // 1. Nothing non-whole is listed, verified or restored; what is listed verifies.
    let partial = partial_ids(&bed).await;
    if !complete.is_empty() {
        bed.run(&["verify", "--all", "--deep"]).await.expect_code(0);
    }
    let listed = |out: &Output| -> Vec<(String, bool)> {
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("list --json: {e}\n{}", out.stdout));
        rows.iter().map(|r| (r["id"].as_str().expect("id").to_string(), r["complete"].as_bool().expect("complete"))).collect()
    };
    let out = bed.run(&["list", "--json"]).await;
    out.expect_code(0);
    let rows = listed(&out);
    assert_eq!(rows.iter().map(|(i, _)| i.clone()).collect::<BTreeSet<_>>(), complete, "{phase:?}: list shows the complete backups only");
    assert!(rows.iter().all(|(_, c)| *c));
    let out = bed.run(&["list", "--json", "--all"]).await;
    out.expect_code(0);
    for (i, c) in listed(&out) {
        assert_eq!(c, complete.contains(&i), "{phase:?}: list --all: {i} complete={c}");
    }
    let text = bed.run(&["list"]).await;
    text.expect_code(0);
    for p in &partial {
        assert!(!text.stdout.contains(p.as_str()), "{phase:?}: list shows the partial {p}:\n{}", text.stdout);
        let out = bed.run(&["verify", "--backup", p, "--deep"]).await;
        assert_ne!(out.code, Some(0), "{phase:?}: verify of the partial {p} must fail");
        assert!(out.stderr.contains("has no manifest"), "{phase:?}: {}", out.stderr);
        let out = bed.run(&["restore", "--cluster-objects", "--backup", p]).await;
        assert_ne!(out.code, Some(0), "{phase:?}: restore of the partial {p} must be refused");
        assert!(out.stderr.contains("has no manifest"), "{phase:?}: {}", out.stderr);
    }

    // 2. The next run succeeds (once the dead run's Lease and bucket lock have expired:
    // both LEASE_DURATION, 15 s in the bed, shortened here).
    if phase == Preflight {
        bed.set("PGPORT", &bed.pg.port.to_string());
    }
    bed.kube.hold_lease("pachyderm-backup", "dead", Duration::from_secs(100), 15);
    bed.expire_bucket_lock().await;
    let before = complete_ids(&bed).await;
    let out = bed.run(&["run"]).await;
    out.expect_code(0);
    let recovered = out.stderr.contains("a previous run left the cluster paused");
    assert_eq!(recovered, phase.paused_at_kill(), "{phase:?}: the next run's recover resumes what the dead run paused:\n{}", out.stderr);
    let after = complete_ids(&bed).await;
    let new: Vec<&String> = after.iter().filter(|i| !before.contains(*i)).collect();
    assert_eq!(new.len(), 1, "{phase:?}: one new backup");
    let next = new[0].clone();
    bed.run(&["verify", "--backup", &next, "--deep"]).await.expect_code(0);
    // 3. The cluster is back as it was.
    bed.assert_resumed();
    let next_run = format!("exit 0{}; {} verifies --deep; cluster resumed", if recovered { ", recovered the pause" } else { "" }, next);

    // 4. The dead run's folder is young: the next run's retention left it. Past GC_GRACE
    // retention collects every leftover, and every kept backup still verifies.
    let leftovers = partial_ids(&bed).await;
    if !phase.committed() {
        assert!(leftovers.contains(&id), "{phase:?}: a young leftover is not collected ({leftovers:?})");
    }
    if phase == RetentionPrune {
        assert!(leftovers.contains(&oldest), "{phase:?}: the half-deleted backup is a leftover ({leftovers:?})");
    }
    let kept_before = complete_ids(&bed).await;
    let keep_all = Policy { last: 100, min_keep: 1, ..Default::default() };
    let grace = Duration::from_secs(24 * 3600);
    let outcome =
        retention::apply(&bed.catalog(), &keep_all, grace, Utc::now() + chrono::Duration::days(30), retention::Mode::Delete).await.expect("retention");
    assert_eq!(outcome.leftovers_removed, leftovers.len(), "{phase:?}: every leftover collected");
    assert!(outcome.damaged.is_empty() && outcome.swept, "{phase:?}: {outcome:?}");
    assert!(partial_ids(&bed).await.is_empty(), "{phase:?}: no folder without manifest is left");
    assert!(!bed.folders().await.contains(&id) || phase.committed(), "{phase:?}: the killed run's folder is gone");
    assert_eq!(complete_ids(&bed).await, kept_before, "{phase:?}: every complete backup kept");
    if phase.committed() {
        // The oldest backup (pruned by now) alone held chunk 1: its blob was garbage.
        assert_eq!(outcome.blobs_deleted, 1, "{phase:?}: chunk 1's blob swept");
    }
    bed.run(&["verify", "--all", "--deep"]).await.expect_code(0);
    let collected = format!(
        "{} leftover(s) removed [{}], {} blobs swept; {} backups verify --deep",
        outcome.leftovers_removed,
        leftovers.iter().cloned().collect::<Vec<_>>().join(", "),
        outcome.blobs_deleted,
        kept_before.len()
    );
    // One row of the summary (shown with --nocapture).
    eprintln!(
        "| {phase:?} | killed after {:.1}s: {at_kill} | {next_run} | {collected} | {:.1}s |",
        killed_after.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// One test per row of `PHASES`, so each phase passes or fails on its own.
macro_rules! kill_9_at {
    ($($name:ident => $phase:expr),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                kill_at($phase).await;
            }
        )*
        /// Every phase of the table has its test.
        #[test]
        fn every_phase_has_a_case() {
            let covered: Vec<Phase> = vec![$($phase),*];
            assert_eq!(covered, PHASES.to_vec());
        }
    };
}

kill_9_at! {
    killed_in_preflight => Preflight,
    killed_in_precopy => Precopy,
    killed_in_pause => Pause,
    killed_in_the_pachyderm_dump => DumpPachyderm,
    killed_in_the_dex_dump => DumpDex,
    killed_in_the_capture_copy => Copy,
    killed_in_commit => Commit,
    killed_in_retention_mark => RetentionMark,
    killed_in_retention_prune => RetentionPrune,
    killed_in_retention_sweep => RetentionSweep,
}
