//! Full cycles against real PostgreSQL, a real S3 server (moto) or local directories,
//! and the Kubernetes stand-in, through the real binary.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::*;
use pachyderm_backup::catalog::{self, ObjectRecord};
use sha2::{Digest, Sha256};

/// Restores every dump of `m` into fresh databases and compares every table's rows.
/// Restores dump `db` of `m` into a new database `copy` with pg_restore itself.
async fn restore_dump(bed: &Bed, m: &catalog::Manifest, db: &catalog::DatabaseEntry, copy: &str) {
    let bytes = read(&bed.target, &format!("backups/{}/{}", m.backup_id, db.file)).await;
    assert_eq!(bytes.len() as u64, db.size);
    assert_eq!(hex::encode(Sha256::digest(&bytes)), db.sha256, "dump checksum of {}", db.name);
    let file = bed.dir.path().join(format!("{}.pgdump", db.name));
    std::fs::write(&file, &bytes).expect("write dump");
    bed.pg.psql("postgres", &format!("CREATE DATABASE {copy}")).expect("create");
    let status = std::process::Command::new(bed.pg.bin.join("pg_restore"))
        .args(["-h", "127.0.0.1", "-U", "postgres", "-p", &bed.pg.port.to_string(), "--exit-on-error", "-d", copy])
        .arg(&file)
        .status()
        .expect("pg_restore");
    assert!(status.success(), "pg_restore of {}", db.name);
}

async fn assert_dumps_restore(bed: &Bed, m: &catalog::Manifest) {
    assert_eq!(m.databases.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), vec!["pachyderm", "dex"]);
    for db in &m.databases {
        let copy = format!("{}_restored", db.name);
        restore_dump(bed, m, db, &copy).await;
        assert_eq!(table_checksums(&bed.pg, &db.name), table_checksums(&bed.pg, &copy), "tables of {} differ after restore", db.name);
    }
}

async fn assert_pool_identical(bed: &Bed, m: &catalog::Manifest) {
    let records = bed.listing(m).await;
    assert_eq!(records.len() as u64, bed.chunks, "listing size");
    let mut keys: Vec<&str> = records.iter().map(|r| r.key.as_str()).collect();
    let sorted = {
        let mut k = keys.clone();
        k.sort();
        k
    };
    assert_eq!(keys, sorted, "listing sorted by key");
    for r in &records {
        let original = read(&bed.source, &r.key).await;
        let pooled = read(&bed.target, &r.blob).await;
        assert!(original == pooled, "blob {} differs from its source {}", r.blob, r.key);
        assert_eq!(hex::encode(Sha256::digest(&pooled)).as_str(), r.sha256.as_deref().unwrap_or("pending"), "sha256 of {}", r.key);
        assert_eq!(r.size, original.len() as u64);
    }
    keys.dedup();
    assert_eq!(keys.len(), records.len());
}

async fn full_cycle(buckets: Buckets, chunks: u64) {
    let bed = Bed::new(BedOptions { buckets, chunks, ..Default::default() }).await;
    let out = bed.run(&["run"]).await;
    out.expect_code(0);
    bed.assert_resumed();
    let manifests = bed.manifests().await;
    assert_eq!(manifests.len(), 1);
    let m = &manifests[0];
    assert!(m.paused_by_us);
    assert!(m.downtime_seconds > 0.0, "downtime recorded");
    assert_eq!(m.pachyderm_version.as_deref(), Some("2.11.4"));
    assert_eq!(m.objects.counts.count, chunks);
    assert_eq!(m.objects.counts.copied, chunks);
    for phase in ["preflight", "precopy", "pause", "capture", "resume"] {
        assert!(m.phases.contains_key(phase), "phase {phase} timed");
    }
    assert!(m.cluster_objects.iter().any(|f| f == "cluster/deployments/pachd.json"), "{:?}", m.cluster_objects);
    assert!(!m.cluster_objects.iter().any(|f| f.contains("secret")));
    // The pachd object is captured clean of our annotations and of server fields.
    let pachd: serde_json::Value =
        serde_json::from_slice(&read(&bed.target, &format!("backups/{}/cluster/deployments/pachd.json", m.backup_id)).await).expect("json");
    assert!(pachd["metadata"].get("resourceVersion").is_none());
    // 10.6: captured while paused, saved at the replicas it had, which the manifest
    // records for every workload; the workers (re-created by pachd) are not saved.
    assert_eq!(pachd["spec"]["replicas"], 1, "saved at its original replicas");
    let replicas: Vec<(&str, i32)> = m.original_replicas.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(
        replicas,
        [("deployment/pachd", 1), ("deployment/pachw", 2), ("replicationcontroller/default-edges-v1", 1), ("replicationcontroller/default-montage-v1", 2)]
    );
    assert!(!m.cluster_objects.iter().any(|f| f.contains("replicationcontrollers")), "{:?}", m.cluster_objects);

    // The manifest is the last object written to the backup's folder.
    let folder = object_store::path::Path::from(format!("backups/{}", m.backup_id));
    let metas: Vec<object_store::ObjectMeta> = futures::TryStreamExt::try_collect(bed.target.list(Some(&folder))).await.expect("list");
    let manifest_time = metas.iter().find(|o| o.location.as_ref().ends_with("manifest.json")).expect("manifest").last_modified;
    assert!(metas.iter().all(|o| o.last_modified <= manifest_time), "an object was written after the manifest");

    assert_dumps_restore(&bed, m).await;
    assert_pool_identical(&bed, m).await;

    // Pause order and waits, as the stand-in saw them.
    let patches: Vec<String> =
        bed.kube.mutating_requests().iter().filter(|r| r.method == "PATCH").map(|r| r.path.rsplit('/').next().unwrap_or("").to_string()).collect();
    assert_eq!(&patches[..2], ["pachd", "pachw"], "pachd is stopped first: {patches:?}");
    assert_eq!(patches.iter().filter(|p| *p == "pachd").count(), 2, "pachd paused and resumed once each");

    // 10.4: `kubectl describe deploy pachd` tells the story, naming the run, and every
    // write says who made it (managedFields, audit logs).
    let events = bed.kube.events();
    let reasons: Vec<&str> = events.iter().filter_map(|e| e["reason"].as_str()).collect();
    assert_eq!(reasons, ["Paused", "Resumed", "BackupSucceeded"], "{events:#?}");
    let pachd_uid = bed.kube.get("deployments", "pachd").expect("pachd")["metadata"]["uid"].clone();
    for e in &events {
        assert_eq!((e["regarding"]["kind"].as_str(), e["regarding"]["name"].as_str()), (Some("Deployment"), Some("pachd")), "{e}");
        assert_eq!(e["regarding"]["uid"], pachd_uid, "describe finds Events by the object's uid: {e}");
        assert_eq!(e["reportingController"], "pachyderm-backup", "{e}");
        assert!(e["note"].as_str().is_some_and(|n| n.contains(&m.backup_id)), "the Event names the run: {e}");
    }
    for r in bed.kube.requests() {
        assert!(r.user_agent.starts_with("pachyderm-backup/"), "User-Agent {:?} on {} {}", r.user_agent, r.method, r.path);
        if r.mutating() {
            assert!(r.query.split('&').any(|q| q == "fieldManager=pachyderm-backup"), "no field manager on {} {}?{}", r.method, r.path, r.query);
        }
    }

    // JSON logs, one progress line at least, a final summary.
    let logs = out.logs();
    assert!(logs.iter().any(|l| l["message"] == "backup complete" && l["objects"] == chunks), "summary line");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_cycle_on_s3() {
    full_cycle(Buckets::S3, 160).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_cycle_on_local_directories() {
    full_cycle(Buckets::Local, 80).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_cycle_copies_only_new_objects() {
    let bed = Bed::new(BedOptions { chunks: 30, ..Default::default() }).await;
    bed.run(&["run"]).await.expect_code(0);
    bed.add_chunks(31..=35).await;
    bed.run(&["run"]).await.expect_code(0);
    let manifests = bed.manifests().await;
    assert_eq!(manifests.len(), 2);
    let second = &manifests[1];
    assert_eq!(second.objects.counts.count, 35);
    assert_eq!(second.objects.counts.copied, 5, "exactly the 5 new objects are copied");
    assert_eq!(second.objects.counts.reused, 30);
    let records = bed.listing(second).await;
    assert_eq!(records.iter().filter(|r| r.since == second.backup_id).count(), 5);
    // Without pre-copy the delta is copied while paused: same counts.
    let mut bed = bed;
    bed.add_chunks(36..=37).await;
    bed.set("PRECOPY", "false");
    bed.run(&["run"]).await.expect_code(0);
    let third = bed.manifests().await.pop().expect("third");
    assert_eq!((third.objects.counts.copied, third.objects.counts.reused), (2, 35));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_skip_records_no_objects() {
    let mut bed = Bed::new(BedOptions { chunks: 5, ..Default::default() }).await;
    bed.set("OBJECTS", "skip");
    bed.run(&["run"]).await.expect_code(0);
    let m = bed.manifests().await.pop().expect("backup");
    assert_eq!(m.objects.mode, pachyderm_backup::catalog::ObjectsMode::Skip);
    assert_eq!(m.objects.listing, None);
    assert_eq!(m.source_url, None, "no bucket was copied: no source recorded (not a placeholder)");
    assert_eq!(m.objects.counts.count, 0);
    let blobs: Vec<_> = futures::TryStreamExt::try_collect::<Vec<_>>(bed.target.list(Some(&"blobs".into()))).await.expect("list");
    assert!(blobs.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_paused_cluster_stays_paused() {
    let bed = Bed::new(BedOptions { chunks: 5, ..Default::default() }).await;
    bed.kube.operator_patch("deployments", "pachd", serde_json::json!({"spec": {"replicas": 0}}));
    wait_until("pachd pods gone", Duration::from_secs(10), || bed.kube.live_pods("deployments/pachd") == 0).await;
    bed.run(&["run"]).await.expect_code(0);
    assert_eq!(bed.kube.replicas("deployments", "pachd"), Some(0), "pachd stays paused");
    assert_eq!(bed.kube.replicas("deployments", "pachw"), Some(2), "pachw resumed");
    assert_eq!(bed.kube.annotations_containing("pachyderm-backup/"), Vec::<String>::new());
    let m = bed.manifests().await.pop().expect("backup");
    assert_eq!(m.databases.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pachyderm_pause_mode_flips_the_configmap_and_restarts_pachd() {
    let mut bed = Bed::new(BedOptions { chunks: 5, ..Default::default() }).await;
    bed.set("PAUSE_MODE", "pachyderm");
    bed.run(&["run"]).await.expect_code(0);
    let cm = bed.kube.get("configmaps", "pachd-config").expect("configmap");
    assert_eq!(cm["data"]["MODE"], "full");
    assert!(cm["metadata"]["annotations"]["pachyderm.com/updatedAt"].is_string());
    let modes: Vec<String> = bed
        .kube
        .mutating_requests()
        .iter()
        .filter(|r| r.path.ends_with("/configmaps/pachd-config"))
        .map(|r| r.body["data"]["MODE"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(modes, vec!["paused", "full"]);
    let restarts = bed
        .kube
        .mutating_requests()
        .iter()
        .filter(|r| {
            r.path.ends_with("/deployments/pachd") && r.body["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"].is_string()
        })
        .count();
    assert_eq!(restarts, 2, "pachd restarted into and out of paused mode");
    assert_eq!(bed.kube.replicas("replicationcontrollers", "default-montage-v1"), Some(2), "workers untouched in this mode");
    assert_eq!(bed.kube.annotations_containing("pachyderm-backup/"), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_pachw_is_fine() {
    let bed = Bed::new(BedOptions { chunks: 3, pachw: false, ..Default::default() }).await;
    bed.run(&["run"]).await.expect_code(0);
    bed.assert_resumed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lease_exits_3_and_an_expired_one_is_taken_over() {
    let bed = Bed::new(BedOptions { chunks: 3, ..Default::default() }).await;
    bed.kube.hold_lease("pachyderm-backup", "other-pod/run", Duration::from_secs(1), 600);
    let out = bed.run(&["run"]).await;
    out.expect_code(3);
    assert!(out.stderr.contains("other-pod/run"), "names the holder: {}", out.stderr);
    assert!(bed.kube.mutating_requests().iter().all(|r| r.path.contains("leases")), "nothing but the Lease was touched");
    assert!(bed.manifests().await.is_empty());

    let bed2 = Bed::new(BedOptions { chunks: 3, ..Default::default() }).await;
    bed2.kube.hold_lease("pachyderm-backup", "dead-pod/run", Duration::from_secs(120), 60);
    bed2.run(&["run"]).await.expect_code(0);
    assert_eq!(bed2.manifests().await.len(), 1);
    let lease = bed2.kube.get("leases", "pachyderm-backup").expect("lease");
    assert!(lease["spec"]["holderIdentity"].is_null(), "released at the end: {lease}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_while_paused_is_resumed_by_the_next_run_and_by_resume() {
    for recover_with in ["run", "resume"] {
        let bed = Bed::new(BedOptions { chunks: 3, ..Default::default() }).await;
        let (running, lock) = bed.start_held(&["run"]).await;
        assert_eq!(bed.kube.replicas("deployments", "pachd"), Some(0));
        running.signal("KILL");
        let out = running.finish().await;
        assert_eq!(out.code, None, "killed by a signal");
        lock.release().await;
        assert_eq!(bed.kube.replicas("deployments", "pachd"), Some(0), "a SIGKILL cannot resume");
        assert!(!bed.kube.annotations_containing("pachyderm-backup/replicas").is_empty(), "the original replicas are on the objects");
        // The dead run's Lease expires (LEASE_DURATION 15s in the bed); shorten the wait.
        bed.kube.hold_lease("pachyderm-backup", "dead", Duration::from_secs(100), 15);
        bed.expire_bucket_lock().await;
        match recover_with {
            "run" => {
                let out = bed.run(&["run"]).await;
                out.expect_code(0);
                assert!(out.stderr.contains("a previous run left the cluster paused"), "{}", out.stderr);
                assert_eq!(bed.manifests().await.len(), 1, "the dead run left no manifest; the new one did");
            }
            _ => {
                let out = bed.run(&["resume"]).await;
                out.expect_code(0);
                assert!(out.stdout.contains("deployment/pachd"), "{}", out.stdout);
                assert!(bed.manifests().await.is_empty());
            }
        }
        bed.assert_resumed();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_if_stale_leaves_a_live_run_alone() {
    let bed = Bed::new(BedOptions { chunks: 3, ..Default::default() }).await;
    bed.kube.operator_patch(
        "deployments",
        "pachd",
        serde_json::json!({"metadata": {"annotations": {"pachyderm-backup/replicas": "1", "pachyderm-backup/paused-by": "live"}}, "spec": {"replicas": 0}}),
    );
    bed.kube.hold_lease("pachyderm-backup", "live-run", Duration::from_secs(1), 600);
    bed.run(&["resume", "--if-stale"]).await.expect_code(0);
    assert_eq!(bed.kube.replicas("deployments", "pachd"), Some(0), "a live run's pause is its own business");
    bed.run(&["resume"]).await.expect_code(3);
    bed.kube.hold_lease("pachyderm-backup", "live-run", Duration::from_secs(700), 600);
    bed.run(&["resume", "--if-stale"]).await.expect_code(0);
    assert_eq!(bed.kube.replicas("deployments", "pachd"), Some(1), "a stale pause is resumed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_shows_complete_backups_only() {
    let bed = Bed::new(BedOptions { chunks: 3, ..Default::default() }).await;
    bed.run(&["run"]).await.expect_code(0);
    // A dead run's folder without a manifest.
    object_store::ObjectStoreExt::put(&*bed.target, &"backups/20200101T000000Z/databases/pachyderm.pgdump".into(), "partial".into()).await.expect("put");
    let out = bed.run(&["list"]).await;
    out.expect_code(0);
    let id = &bed.manifests().await[0].backup_id;
    assert!(out.stdout.contains(id.as_str()), "{}", out.stdout);
    assert!(!out.stdout.contains("20200101T000000Z"), "{}", out.stdout);
    let all = bed.run(&["list", "--all"]).await;
    assert!(all.stdout.contains("20200101T000000Z") && all.stdout.contains("partial"), "{}", all.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_values_are_captured_when_asked_and_never_secrets_otherwise() {
    let mut bed = Bed::new(BedOptions { chunks: 3, ..Default::default() }).await;
    bed.kube.seed_helm_release("pachyderm", 1, serde_json::json!({"pachd": {"replicas": 1}}));
    bed.kube.seed_helm_release("pachyderm", 2, serde_json::json!({"pachd": {"replicas": 1, "storage": {"backend": "MINIO"}}}));
    bed.run(&["run"]).await.expect_code(0);
    assert!(bed.kube.requests().iter().all(|r| !r.path.contains("/secrets")), "no Secret is read unless HELM_RELEASE is set");
    bed.set("HELM_RELEASE", "pachyderm");
    bed.run(&["run"]).await.expect_code(0);
    let m = bed.manifests().await.pop().expect("backup");
    let file = m.cluster_objects.iter().find(|f| f.starts_with("cluster/helm/")).expect("helm values captured");
    let saved: serde_json::Value = serde_json::from_slice(&read(&bed.target, &format!("backups/{}/{file}", m.backup_id)).await).expect("json");
    assert_eq!(saved["revision"], 2, "the newest revision");
    assert_eq!(saved["values"]["pachd"]["storage"]["backend"], "MINIO");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_command_prints_the_plan_then_applies_it() {
    let mut bed = Bed::new(BedOptions { chunks: 3, ..Default::default() }).await;
    for _ in 0..3 {
        bed.run(&["run"]).await.expect_code(0);
    }
    let ids: Vec<String> = bed.manifests().await.iter().map(|m| m.backup_id.clone()).collect();
    assert_eq!(ids.len(), 3);
    for (k, v) in [("KEEP_LAST", "1"), ("KEEP_DAILY", "0"), ("KEEP_WEEKLY", "0"), ("KEEP_MONTHLY", "0"), ("MIN_KEEP", "1")] {
        bed.set(k, v);
    }
    let out = bed.run(&["retention", "--dry-run"]).await;
    out.expect_code(0);
    assert!(out.stdout.contains("dry run: 1 kept, 2 pruned"), "{}", out.stdout);
    assert_eq!(out.stdout.lines().filter(|l| l.contains(" delete ")).count(), 2, "{}", out.stdout);
    assert_eq!(bed.manifests().await.len(), 3, "a dry run deletes nothing");
    let listed = bed.run(&["list"]).await;
    assert!(listed.stdout.contains("keep-last") && listed.stdout.contains("(pruned at next retention)"), "{}", listed.stdout);
    bed.run(&["retention"]).await.expect_code(0);
    let left: Vec<String> = bed.manifests().await.iter().map(|m| m.backup_id.clone()).collect();
    assert_eq!(left, vec![ids[2].clone()], "only the newest is left");
    assert_eq!(bed.folders().await, left, "pruned folders are gone entirely");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pachyderm_mode_pause_left_behind_is_not_ignored_after_a_mode_change() {
    // A run with PAUSE_MODE=pachyderm died while paused; then the mode changed to scale.
    let mut bed = Bed::new(BedOptions { chunks: 3, ..Default::default() }).await;
    bed.kube.operator_patch(
        "configmaps",
        "pachd-config",
        serde_json::json!({"metadata": {"annotations": {"pachyderm-backup/mode": "full", "pachyderm-backup/paused-by": "dead-run"}}, "data": {"MODE": "paused"}}),
    );
    let out = bed.run(&["run"]).await;
    out.expect_code(4);
    assert!(out.stderr.contains("configmap/pachd-config") && out.stderr.contains("PAUSE_MODE=pachyderm pachyderm-backup resume"), "{}", out.stderr);
    assert!(bed.kube.mutating_requests().iter().all(|r| r.path.contains("/leases")), "nothing was paused on top of it");
    assert!(bed.manifests().await.is_empty());
    bed.run(&["resume"]).await.expect_code(4);
    bed.set("PAUSE_MODE", "pachyderm");
    bed.run(&["resume"]).await.expect_code(0);
    let cm = bed.kube.get("configmaps", "pachd-config").expect("configmap");
    assert_eq!(cm["data"]["MODE"], "full");
    bed.assert_resumed();
}

/// 10.2: what log pipelines read. Every line of stderr is one JSON object (no plain
/// text), no key twice on a line (jq and Loki keep the last, Elasticsearch refuses
/// the line), no Rust `Debug` values, the run's backup id on every line once claimed
/// and the phase on every line inside one, and a failure said once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_json_lines_with_unique_keys_and_the_run_on_each() {
    let mut bed = Bed::new(BedOptions { buckets: Buckets::Local, chunks: 5, ..Default::default() }).await;
    bed.set("PROGRESS_INTERVAL", "1s");
    let ok = bed.run(&["run"]).await;
    ok.expect_code(0);
    bed.set("MAX_DOWNTIME", "2s");
    bed.kube.pods_never_terminate(true);
    let failed = bed.run(&["run"]).await;
    bed.kube.pods_never_terminate(false);
    failed.expect_code(1);

    for out in [&ok, &failed] {
        let mut claimed = false;
        let mut phases = 0;
        for line in out.stderr.lines() {
            let keys = json_keys(line).unwrap_or_else(|| panic!("not a JSON object: {line:?}\n{}", out.stderr));
            let unique: BTreeSet<&String> = keys.iter().collect();
            assert_eq!(unique.len(), keys.len(), "a key twice: {line}");
            let v: serde_json::Value = serde_json::from_str(line).expect("json");
            for (k, value) in v.as_object().expect("object") {
                let text = value.as_str().unwrap_or_default();
                assert!(!text.starts_with("Some(") && text != "None", "Debug value in {k}: {line}");
            }
            claimed |= v["message"] == "run starting";
            if claimed {
                assert!(v["backup_id"].as_str().is_some_and(|id| id.starts_with("20")), "no backup_id: {line}");
            }
            phases += usize::from(v["phase"].is_string());
        }
        assert!(claimed, "no run starting line:\n{}", out.stderr);
        assert!(phases > 0, "no line carries its phase:\n{}", out.stderr);
    }
    let errors: Vec<&str> = failed.stderr.lines().filter(|l| l.contains("\"level\":\"ERROR\"")).collect();
    assert_eq!(errors.len(), 1, "the failure is said once: {errors:#?}");
    assert!(errors[0].contains("MAX_DOWNTIME") && errors[0].contains("\"exit_code\":1"), "{}", errors[0]);
}

/// 10.9: the demo's closing hint is a command that works as printed (before, it named
/// `pachyderm-backup`, which `cargo run` puts on no PATH).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_ends_with_a_command_that_works_as_printed() {
    let dir = tempfile::tempdir().expect("dir");
    let demo_dir = dir.path().join("demo");
    let out = run_to_end(binary(&["demo", "--dir", &demo_dir.display().to_string(), "--objects", "5"], &[])).await;
    out.expect_code(0);
    let hint = out.stdout.lines().find_map(|l| l.trim().strip_prefix("list it:")).unwrap_or_else(|| panic!("no hint:\n{}", out.stdout)).trim().to_string();
    let mut sh = tokio::process::Command::new("sh");
    sh.args(["-c", &hint]).env_clear().env("PATH", "/usr/bin:/bin").stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let listed = run_to_end(sh).await;
    listed.expect_code(0);
    let id = out.stdout.lines().find_map(|l| l.strip_prefix("backup ")).and_then(|l| l.split_whitespace().next()).expect("backup id");
    assert!(listed.stdout.contains(id), "{hint}:\n{}", listed.stdout);
}

/// The database is the index (#15): chunks that arrive between the pre-copy and the
/// pause are copied, exactly those, and `chunk/` is never listed while paused; what
/// lies outside `chunk/` is listed and kept. The drill passes on the backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_written_before_the_pause_are_read_from_the_database_not_listed() {
    use crate::support::fault_proxy::FaultProxy;
    let mut bed = Bed::new(BedOptions { chunks: 30, ..Default::default() }).await;
    let proxy = FaultProxy::start(bed.moto.as_ref().expect("an S3 bed").port).await;
    bed.set("SOURCE_AWS_ENDPOINT", &proxy.url());
    object_store::ObjectStoreExt::put(&*bed.source, &"zz-other/notes.txt".into(), bytes::Bytes::from_static(b"not a chunk").into()).await.expect("put");

    // Held in the pause (pods that do not terminate) until the new chunks are written.
    bed.kube.pods_never_terminate(true);
    let running = Running::start(bed.command(&["run"]));
    wait_until("pachd scaled to 0 by the pause", Duration::from_secs(120), || bed.kube.replicas("deployments", "pachd") == Some(0)).await;
    proxy.clear_requests();
    // Generations past the floor (the fixture's pending rows hold it at 2,000,000), as
    // Pachyderm's sequence gives new chunks: copied by the pause. And one below it, as a
    // chunk whose row was created before the pre-copy and uploaded after it listed:
    // copied after the resume by the listing, the snapshot's live set being whole.
    bed.add_chunks(3_000_001..=3_000_003).await;
    bed.add_chunks(31..=31).await;
    bed.kube.pods_never_terminate(false);
    let out = running.finish().await;
    out.expect_code(0);

    let m = bed.manifests().await.pop().expect("a backup");
    assert_eq!(m.objects.index, Some(catalog::ObjectsIndex::Database));
    assert_eq!(
        (m.objects.counts.count, m.objects.counts.copied),
        (35, 35),
        "30 pre-copied + 4 new chunks + 1 object outside chunk/, all copied by this backup"
    );
    assert!(m.phases.contains_key("listing"), "the listing is made after the resume: {:?}", m.phases);
    let records = bed.listing(&m).await;
    let keys: Vec<&str> = records.iter().map(|r| r.key.as_str()).collect();
    for i in [31, 3_000_001, 3_000_002, 3_000_003] {
        assert!(keys.contains(&pachyderm_backup::demo::chunk_key(i).as_str()), "chunk {i} in the listing");
    }
    assert_eq!(keys.last(), Some(&"zz-other/notes.txt"));
    let paused = proxy.requests();
    // A listing covers chunk/ when its prefix does and it does not stop at the top level.
    let prefix = |q: &str| q.split('&').find_map(|p| p.strip_prefix("prefix=")).unwrap_or("").to_string();
    let chunk_listings: Vec<_> = paused
        .iter()
        .filter(|r| r.is_list() && (prefix(&r.query).starts_with("chunk") || (prefix(&r.query).is_empty() && !r.query.contains("delimiter"))))
        .collect();
    assert!(paused.iter().any(|r| r.is_list() && prefix(&r.query).starts_with("zz-other")), "the prefix outside chunk/ is listed: {paused:?}");
    assert!(chunk_listings.is_empty(), "no listing of chunk/ while paused: {chunk_listings:?}");
    let heads: Vec<_> = paused.iter().filter(|r| r.method == "HEAD" && r.path.contains("/chunk/")).collect();
    assert_eq!(heads.len(), 4, "one HEAD per new chunk: {heads:?}");
    assert!(
        out.logs().iter().any(|l| l["message"].as_str().is_some_and(|m| m.starts_with("objects indexed by storage.chunk_objects")) && l["floor"] == 2_000_000),
        "{}",
        out.stderr
    );

    // The next run reuses all of it, and the drill finds every live chunk.
    bed.run(&["run"]).await.expect_code(0);
    let next = bed.manifests().await.pop().expect("second backup");
    assert_eq!((next.objects.counts.copied, next.objects.counts.reused), (0, 35));
    run_with(&bed, restore_env(&bed.pg, ""), &["verify", "--drill"]).await.expect_code(0);
}

/// A live chunk whose object is gone fails the run before any manifest, naming it, and
/// the cluster is resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_chunk_missing_from_the_bucket_fails_the_run_and_names_it() {
    let mut bed = Bed::new(BedOptions { chunks: 10, ..Default::default() }).await;
    let lost = pachyderm_backup::demo::chunk_key(7);
    object_store::ObjectStoreExt::delete(&*bed.source, &lost.as_str().into()).await.expect("delete");
    // Found while paused (no pre-copy: the whole live set is joined in the pause), and
    // found by the listing after the resume (with a pre-copy).
    for precopy in ["false", "true"] {
        bed.set("PRECOPY", precopy);
        let out = bed.run(&["run"]).await;
        out.expect_code(1);
        assert!(out.stderr.contains(&lost) && out.stderr.contains("storage.chunk_objects"), "PRECOPY={precopy}: {}", out.stderr);
        assert!(bed.manifests().await.is_empty(), "no backup");
        bed.assert_resumed();
    }
}

/// A Pachyderm whose database has no `storage.chunk_objects` of the known shape: the
/// bucket is listed while paused, and the manifest says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_chunk_table_the_whole_bucket_is_listed() {
    let bed = Bed::new(BedOptions { chunks: 12, ..Default::default() }).await;
    bed.pg.psql("pachyderm", "ALTER TABLE storage.chunk_objects RENAME COLUMN gen TO generation").expect("alter");
    let out = bed.run(&["run"]).await;
    out.expect_code(0);
    let m = bed.manifests().await.pop().expect("a backup");
    assert_eq!(m.objects.index, Some(catalog::ObjectsIndex::Listing));
    assert_eq!(m.objects.counts.count, 12);
    assert!(
        out.logs()
            .iter()
            .any(|l| l["message"].as_str().is_some_and(|m| m.contains("listing of the whole source bucket") && m.contains("storage.chunk_objects"))),
        "{}",
        out.stderr
    );
}

/// A listing larger than one part (millions of objects make hundreds of megabytes) goes
/// up from its temporary file in parts, and reads back record for record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_of_many_parts_is_uploaded_from_its_file_and_reads_back() {
    use futures::TryStreamExt;
    let moto = Moto::start().await;
    moto.create_bucket("backups");
    let catalog = pachyderm_backup::catalog::Catalog::new(moto.store("backups"));
    let mut writer = catalog::ListingWriter::new().expect("a temporary file");
    let record = |i: u32| {
        let sha = hex::encode(Sha256::digest(i.to_le_bytes()));
        ObjectRecord {
            key: format!("chunk/{sha}.{i:016x}"),
            size: u64::from(i),
            etag: None,
            blob: format!("blobs/chunk/{sha}@{i}"),
            sha256: Some(sha),
            blob_etag: None,
            since: "b1".into(),
        }
    };
    let mut records: Vec<ObjectRecord> = (0..200_000).map(record).collect();
    records.sort_by(|a, b| a.key.cmp(&b.key));
    for r in &records {
        writer.push(r).expect("push");
    }
    let (listing, _) = writer.finish().expect("finish");
    assert!(listing.len() > 2 * 5 * 1024 * 1024, "more than two parts: {} bytes", listing.len());
    let path = catalog::BackupFile::Listing.path("b1");
    catalog.put_listing("b1", &listing).await.expect("upload");
    let stored = read(&moto.store("backups"), path.as_ref()).await;
    let local: Vec<bytes::Bytes> = listing.chunks(1 << 20).try_collect().await.expect("read the file");
    assert_eq!(stored, local.concat(), "the object is the file, byte for byte");
    let back = catalog::Listing::from_bytes(&stored).expect("spill");
    let read_back: Vec<String> = catalog::ListingReader::new(&back, "back".into()).expect("reader").map(|r| r.expect("record").key).collect();
    assert_eq!(read_back, records.iter().map(|r| r.key.clone()).collect::<Vec<_>>());
}

/// The pre-copy lists the source in 16 key ranges (split at `chunk/1` … `chunk/f`),
/// in small pages here, and the listing it makes is exactly what one lister sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pre_copy_lists_sixteen_key_ranges_and_misses_nothing() {
    use crate::support::fault_proxy::{FaultProxy, Faults};
    let mut bed = Bed::new(BedOptions { chunks: 64, ..Default::default() }).await;
    let proxy = FaultProxy::start(bed.moto.as_ref().expect("an S3 bed").port).await;
    proxy.set(Faults { max_keys: Some(3), ..Default::default() });
    bed.set("SOURCE_AWS_ENDPOINT", &proxy.url());
    // Before, between (`chunk0` sorts after every `chunk/` key) and after the chunks.
    for key in ["a-first/x", "chunk0", "zz-other/notes.txt"] {
        object_store::ObjectStoreExt::put(&*bed.source, &key.into(), bytes::Bytes::from_static(b"not a chunk").into()).await.expect("put");
    }
    let one_lister: Vec<String> =
        futures::TryStreamExt::try_collect::<Vec<_>>(bed.source.list(None)).await.expect("list").into_iter().map(|m| m.location.to_string()).collect();

    bed.run(&["run"]).await.expect_code(0);
    let m = bed.manifests().await.pop().expect("a backup");
    let keys: Vec<String> = bed.listing(&m).await.into_iter().map(|r| r.key).collect();
    let mut sorted_keys = one_lister.clone();
    sorted_keys.sort();
    assert_eq!(keys, sorted_keys, "the listing holds every object once, in key order");

    let starts: BTreeSet<String> = proxy
        .requests()
        .iter()
        .filter(|r| r.is_list() && r.path.contains("pach-data"))
        .filter_map(|r| r.query.split('&').find_map(|p| p.strip_prefix("start-after=")).map(|s| s.replace("%2F", "/")))
        .collect();
    for digit in "123456789abcdef".chars() {
        assert!(starts.contains(&format!("chunk/{digit}")), "a listing starts after chunk/{digit}: {starts:?}");
    }
}

/// The pause holds only the snapshots: the dumps run after the resume and still hold
/// the paused instant. Tables locked in both databases from before the run hold
/// pg_dump, not the pause, which ends; rows written in those locks' transactions once
/// the cluster is back are in neither dump, and the rows from before are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dumps_run_after_the_resume_and_hold_the_paused_instant() {
    let bed = Bed::new(BedOptions { chunks: 5, ..Default::default() }).await;
    let dex = TableLock::take_on(&bed.pg, "dex", "connector").await;
    let pachyderm = TableLock::take_on(&bed.pg, "pachyderm", "storage.keys").await;
    let running = Running::start(bed.command(&["run"]));
    wait_until("both dumps blocked", Duration::from_secs(120), || dump_blocked_in(&bed.pg, "dex") && dump_blocked_in(&bed.pg, "pachyderm")).await;
    bed.assert_resumed();
    dex.commit_with("INSERT INTO connector VALUES ('after-resume', 'oidc', 'written once the cluster was back', NULL)").await;
    pachyderm.commit_with("INSERT INTO storage.keys VALUES ('after-resume', '\\x00')").await;
    let out = running.finish().await;
    out.expect_code(0);

    let m = bed.manifests().await.pop().expect("a backup");
    assert!(m.phases.contains_key("dump") && m.phases.contains_key("capture"), "{:?}", m.phases);
    for (db, table, key) in [("dex", "connector", "id"), ("pachyderm", "storage.keys", "name")] {
        let entry = m.databases.iter().find(|d| d.name == db).expect("dumped");
        let copy = format!("{db}_at_pause");
        restore_dump(&bed, &m, entry, &copy).await;
        let count =
            |database: &str, filter: &str| bed.pg.psql(database, &format!("SELECT count(*) FROM {table} WHERE {filter}")).expect("count").trim().to_string();
        assert_eq!(count(&copy, &format!("{key} = 'after-resume'")), "0", "{db}: a row written after the resume");
        assert_eq!(count(&copy, "true"), (count(db, "true").parse::<u64>().expect("count") - 1).to_string(), "{db}: every row from before");
    }
}

/// Bodies held in memory share one budget, whatever COPY_CONCURRENCY: twelve objects of
/// 6 MiB copied at once into a local bucket (multipart: 25 MiB held each, 300 MiB in
/// all without the budget) never hold more than it, and every copy completes whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_held_in_memory_share_one_budget() {
    use object_store::ObjectStoreExt;
    use pachyderm_backup::objects::{self, BUFFER_BUDGET_MIB, Expect};
    use std::sync::Arc;

    let dir = tempfile::tempdir().expect("dir");
    let (from, to) = (dir.path().join("from"), dir.path().join("to"));
    std::fs::create_dir_all(&from).expect("dir");
    std::fs::create_dir_all(&to).expect("dir");
    let source: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&from).expect("store"));
    let target: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&to).expect("store"));
    let size = 6 * 1024 * 1024 + 1;
    for i in 0..12u64 {
        source.put(&format!("o{i}").as_str().into(), pachyderm_backup::demo::chunk_content(i, size).into()).await.expect("seed");
    }
    let progress = pachyderm_backup::progress::Progress::start("test", Duration::from_secs(3600));
    let copies = (0..12u64).map(|i| {
        let (source, target, progress) = (&source, &target, &progress);
        async move {
            let key = format!("o{i}");
            let sha = objects::copy_verified(source, "source", &key, target, None, &key, Expect::listed(size as u64, None), progress).await.expect("copied");
            assert_eq!(sha, hex::encode(Sha256::digest(pachyderm_backup::demo::chunk_content(i, size))), "{key} whole");
        }
    });
    futures::future::join_all(copies).await;
    let high = objects::buffers().high_water_mib();
    assert!((25..=BUFFER_BUDGET_MIB).contains(&high), "{high} MiB held at once (the budget is {BUFFER_BUDGET_MIB} MiB)");
}
