//! Every way a run can fail ends with the cluster at its original replicas and no
//! manifest; nothing is paused before preflight has passed.

use std::time::Duration;

use crate::support::*;
use axum::http::Method;

/// The run failed with exit 1, the cluster is back, and no backup was recorded.
async fn assert_failed_cleanly(bed: &Bed, out: &Output, says: &str) {
    out.expect_code(1);
    assert!(out.stderr.contains(says), "the error should say {says:?}:\n{}", out.stderr);
    bed.assert_resumed();
    assert!(bed.manifests().await.is_empty(), "a failed run left a manifest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_during_the_dump() {
    let mut bed = Bed::new(BedOptions { chunks: 5, ..Default::default() }).await;
    let lock = TableLock::take(&bed.pg).await;
    let running = Running::start(bed.command(&["run"]));
    wait_until("pg_dump blocked on the lock", Duration::from_secs(60), || dump_is_blocked(&bed.pg)).await;
    bed.pg.stop().expect("stop PostgreSQL");
    drop(lock);
    let out = running.finish().await;
    assert_failed_cleanly(&bed, &out, "server closed the connection").await;
    assert!(out.stderr.contains("pg_dump of"), "names the dump: {}", out.stderr);
    assert!(out.logs().iter().any(|l| l["phase"] == "dump" && l["reason"] == "database"), "failure logged with its phase and reason");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_bucket_failing_during_the_copy() {
    let mut bed = Bed::new(BedOptions { chunks: 20, ..Default::default() }).await;
    bed.set("PRECOPY", "false");
    // Hold the pause (pods terminate only when allowed) so the bucket breaks exactly
    // between the pause and the capture's copy.
    bed.kube.pods_never_terminate(true);
    let running = Running::start(bed.command(&["run"]));
    wait_until("the cluster paused", Duration::from_secs(60), || bed.kube.replicas("deployments", "pachd") == Some(0)).await;
    // The run's claim is already in it: S3 deletes only an empty bucket.
    let claimed: Vec<object_store::path::Path> =
        futures::TryStreamExt::try_collect(futures::TryStreamExt::map_ok(bed.target.list(None), |m| m.location)).await.expect("list");
    for path in &claimed {
        object_store::ObjectStoreExt::delete(&*bed.target, path).await.expect("empty the target bucket");
    }
    let answer = bed.moto.as_ref().expect("moto").delete_bucket("backups");
    assert!(answer.starts_with("HTTP/1.1 204"), "delete the target bucket: {answer}");
    bed.kube.pods_never_terminate(false);
    let out = running.finish().await;
    bed.moto.as_ref().expect("moto").create_bucket("backups");
    assert_failed_cleanly(&bed, &out, "target bucket failed while").await;
    assert!(out.stderr.contains("NoSuchBucket"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_capture() {
    let bed = Bed::new(BedOptions { chunks: 5, ..Default::default() }).await;
    let (running, lock) = bed.start_held(&["run"]).await;
    assert_eq!(bed.kube.replicas("deployments", "pachd"), Some(0), "paused");
    running.signal("TERM");
    let out = running.finish().await;
    lock.release().await;
    assert_failed_cleanly(&bed, &out, "interrupted by SIGTERM").await;
    assert!(!dump_is_blocked(&bed.pg), "the capture's session was ended with the run");
}

/// After the resume, the dumps: a SIGTERM there ends pg_dump too, and no manifest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_the_dump_after_the_resume() {
    let bed = Bed::new(BedOptions { chunks: 5, ..Default::default() }).await;
    let lock = TableLock::take(&bed.pg).await;
    let running = Running::start(bed.command(&["run"]));
    wait_until("pg_dump blocked on the lock", Duration::from_secs(60), || dump_is_blocked(&bed.pg)).await;
    bed.assert_resumed();
    running.signal("TERM");
    let out = running.finish().await;
    lock.release().await;
    assert_failed_cleanly(&bed, &out, "interrupted by SIGTERM").await;
    assert!(out.logs().iter().any(|l| l["phase"] == "dump" && l["reason"] == "signal"), "{}", out.stderr);
    assert!(!dump_is_blocked(&bed.pg), "pg_dump was killed with the run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_downtime_aborts_the_capture_and_resumes() {
    let mut bed = Bed::new(BedOptions { chunks: 5, ..Default::default() }).await;
    bed.set("MAX_DOWNTIME", "8s");
    let (running, lock) = bed.start_held(&["run"]).await;
    let out = running.finish().await;
    lock.release().await;
    assert_failed_cleanly(&bed, &out, "MAX_DOWNTIME (8s) reached").await;
    // A long phase logs a progress line at PROGRESS_INTERVAL (1s in the bed).
    let progress = out.logs().into_iter().filter(|l| l["phase"] == "capture" && l["message"].as_str().is_some_and(|m| m.starts_with("progress:"))).count();
    assert!(progress >= 1, "no progress line during a capture cut at 8s:\n{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_that_never_terminate_hit_pause_timeout() {
    let mut bed = Bed::new(BedOptions { chunks: 5, ..Default::default() }).await;
    bed.set("PAUSE_TIMEOUT", "2s");
    bed.kube.pods_never_terminate(true);
    let out = bed.run(&["run"]).await;
    bed.kube.pods_never_terminate(false);
    assert_failed_cleanly(&bed, &out, "did not happen within 2s").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_error_half_way_through_the_pause_resumes_what_was_paused() {
    let bed = Bed::new(BedOptions { chunks: 5, ..Default::default() }).await;
    bed.kube.fail(Method::PATCH, "replicationcontrollers/default-montage-v1", 500, 1);
    let out = bed.run(&["run"]).await;
    assert_failed_cleanly(&bed, &out, "scaling replicationcontroller/default-montage-v1 to 0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_resume_exits_4_and_says_what_is_still_paused() {
    let bed = Bed::new(BedOptions { chunks: 5, ..Default::default() }).await;
    let (running, lock) = bed.start_held(&["run"]).await;
    bed.kube.fail(Method::PATCH, "deployments/pachd", 500, 1000);
    running.signal("TERM");
    let out = running.finish().await;
    lock.release().await;
    out.expect_code(4);
    assert!(out.stderr.contains("RESUME FAILED") && out.stderr.contains("deployment/pachd"), "{}", out.stderr);
    assert_eq!(bed.kube.replicas("deployments", "pachd"), Some(0));
    // 13.5: `resume` failing the same way says the same, with what is still paused.
    let out = bed.run(&["resume"]).await;
    out.expect_code(4);
    assert!(
        out.stderr.contains("RESUME FAILED") && out.stderr.contains("Objects still carrying pause annotations") && out.stderr.contains("deployment/pachd"),
        "{}",
        out.stderr
    );
    bed.kube.clear_faults();
    bed.run(&["resume"]).await.expect_code(0);
    bed.assert_resumed();
    // 10.4: the story on pachd, for `kubectl describe`.
    let reasons: Vec<String> = bed.kube.events().iter().filter_map(|e| e["reason"].as_str().map(str::to_string)).collect();
    // The run's failed resume, its failed backup, the `resume` command's failure, then
    // its success.
    assert_eq!(reasons, ["Paused", "ResumeFailed", "BackupFailed", "ResumeFailed", "Resumed"]);
    let warnings = bed.kube.events().iter().filter(|e| e["type"] == "Warning").count();
    assert_eq!(warnings, 3, "failed resumes and a failed backup are warnings");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_failures_touch_nothing() {
    // Missing RBAC.
    let bed = Bed::new(BedOptions { chunks: 3, ..Default::default() }).await;
    bed.kube.deny("patch replicationcontrollers");
    let out = bed.run(&["run"]).await;
    assert_failed_cleanly(&bed, &out, "patch replicationcontrollers").await;
    bed.assert_never_paused();

    // Unreachable database.
    let mut bed = Bed::new(BedOptions { chunks: 3, ..Default::default() }).await;
    bed.set("PGPORT", &pachyderm_backup::demo::free_port().to_string());
    let out = bed.run(&["run"]).await;
    assert_failed_cleanly(&bed, &out, "cannot connect to database pachyderm").await;
    bed.assert_never_paused();

    // A database that does not exist.
    let mut bed = Bed::new(BedOptions { chunks: 3, ..Default::default() }).await;
    bed.set("DATABASES", "pachyderm,nosuchdb");
    let out = bed.run(&["run"]).await;
    assert_failed_cleanly(&bed, &out, "nosuchdb").await;
    bed.assert_never_paused();

    // A target bucket that does not exist (not writable).
    let mut bed = Bed::new(BedOptions { chunks: 3, ..Default::default() }).await;
    bed.set("TARGET_URL", "s3://no-such-bucket/x");
    let out = bed.run(&["run"]).await;
    assert_failed_cleanly(&bed, &out, "target bucket failed").await;
    bed.assert_never_paused();

    // 15.4: a compression this pg_dump (15, the bed's) does not have.
    let mut bed = Bed::new(BedOptions { chunks: 3, ..Default::default() }).await;
    bed.set("DUMP_COMPRESSION", "zstd:1");
    let out = bed.run(&["run"]).await;
    assert_failed_cleanly(&bed, &out, "DUMP_COMPRESSION: pg_dump 15 compresses with gzip only").await;
    bed.assert_never_paused();

    // pg_dump missing from PG_BIN_DIR.
    let mut bed = Bed::new(BedOptions { chunks: 3, ..Default::default() }).await;
    let empty = bed.dir.path().join("empty-bin");
    std::fs::create_dir_all(&empty).expect("dir");
    bed.set("PG_BIN_DIR", &empty.display().to_string());
    let out = bed.run(&["run"]).await;
    assert_failed_cleanly(&bed, &out, "pg_dump not found").await;
    bed.assert_never_paused();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_api_error_during_resume_is_retried() {
    let bed = Bed::new(BedOptions { chunks: 5, ..Default::default() }).await;
    let (running, lock) = bed.start_held(&["run"]).await;
    // kube retries 429/503/504 by itself; a 500 is ours to retry.
    bed.kube.fail(Method::PATCH, "deployments/pachd", 500, 2);
    running.signal("TERM");
    let out = running.finish().await;
    lock.release().await;
    assert_failed_cleanly(&bed, &out, "interrupted by SIGTERM").await;
    assert!(out.stderr.contains("retrying the resume"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preflight_step_that_hangs_is_bounded() {
    // A database server that accepts and never answers.
    let mut bed = Bed::new(BedOptions { chunks: 3, ..Default::default() }).await;
    bed.set("PGPORT", &hanging_port().0.to_string());
    bed.set("PREFLIGHT_TIMEOUT", "2s");
    let out = bed.run(&["run"]).await;
    assert_failed_cleanly(&bed, &out, "checking database pachyderm did not finish within PREFLIGHT_TIMEOUT (2s)").await;
    bed.assert_never_paused();

    // A pg_dump whose `--version` never returns.
    let mut bed = Bed::new(BedOptions { chunks: 3, ..Default::default() }).await;
    let bin = bed.dir.path().join("hanging-bin");
    std::fs::create_dir_all(&bin).expect("dir");
    for tool in ["pg_dump", "pg_restore", "psql"] {
        let path = bin.join(tool);
        std::fs::write(&path, "#!/bin/sh\nexec sleep 600\n").expect("write");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    }
    bed.set("PG_BIN_DIR", &bin.display().to_string());
    bed.set("PREFLIGHT_TIMEOUT", "2s");
    let out = bed.run(&["run"]).await;
    assert_failed_cleanly(&bed, &out, "finding pg_dump and its version did not finish within PREFLIGHT_TIMEOUT (2s)").await;
    bed.assert_never_paused();
}

/// 10.7: one failed renewal (a 500, then a 409) no longer aborts a capture while two
/// thirds of the Lease are left: renewals are retried until the renew deadline. A
/// Lease another holder has taken is lost at once: the run stops and resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_renewal_survives_a_blip_and_stops_when_taken() {
    let bed = Bed::new(BedOptions { chunks: 5, ..Default::default() }).await;
    let renewals = || bed.kube.requests().iter().filter(|r| r.method == "PUT" && r.path.contains("/leases/")).count();
    let lock = TableLock::take(&bed.pg).await;
    let running = Running::start(bed.command(&["run"]));
    wait_until("pg_dump blocked on the lock", Duration::from_secs(60), || dump_is_blocked(&bed.pg)).await;
    let before = renewals();
    bed.kube.fail(Method::PUT, "/leases/", 500, 1);
    bed.kube.fail(Method::PUT, "/leases/", 409, 1);
    // LEASE_DURATION is 15 s in the bed: renewed every 5 s, retried after 1 s, then 2 s.
    wait_until("two failed renewals and a good one", Duration::from_secs(30), || renewals() >= before + 3).await;
    lock.release().await;
    let out = running.finish().await;
    out.expect_code(0);
    assert!(out.stderr.contains("retrying while it is still valid"), "{}", out.stderr);
    bed.assert_resumed();

    let bed = Bed::new(BedOptions { chunks: 5, ..Default::default() }).await;
    let (running, lock) = bed.start_held(&["run"]).await;
    bed.kube.hold_lease("pachyderm-backup", "another-run", Duration::from_secs(0), 600);
    let out = running.finish().await;
    lock.release().await;
    assert_failed_cleanly(&bed, &out, "was lost during the run").await;
}

/// 10.5: `check` runs the whole preflight, reports every problem (not only the first)
/// and touches nothing; a run checks permissions before its first call that needs one,
/// so a missing Lease permission is named by the preflight, not met as a raw 403; a
/// bare invocation prints help; `retention --dry-run` needs no Kubernetes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_everything_and_touches_nothing() {
    let mut bed = Bed::new(BedOptions { chunks: 3, ..Default::default() }).await;
    // A Role from before Events: warned about, never fatal.
    bed.kube.deny("create events");
    let out = bed.run(&["check"]).await;
    out.expect_code(0);
    assert!(out.stderr.contains("no Events will be recorded"), "{}", out.stderr);
    for line in [
        "ok    Kubernetes permissions",
        "ok    pg_dump",
        "ok    database pachyderm",
        "ok    database dex",
        "ok    source bucket",
        "ok    target bucket",
        "does not check Content-MD5",
    ] {
        assert!(out.stdout.contains(line), "no {line:?} in:\n{}", out.stdout);
    }
    assert!(bed.kube.mutating_requests().is_empty(), "check wrote to the cluster: {:?}", bed.kube.mutating_requests());
    assert!(bed.manifests().await.is_empty());

    bed.kube.deny("get leases");
    bed.set("DATABASES", "pachyderm,nosuchdb");
    let out = bed.run(&["check"]).await;
    out.expect_code(1);
    for line in ["FAIL  Kubernetes permissions", "get leases", "FAIL  database nosuchdb", "ok    database pachyderm", "ok    target bucket"] {
        assert!(out.stdout.contains(line), "no {line:?} in:\n{}", out.stdout);
    }

    bed.set("DATABASES", "pachyderm,dex");
    let out = bed.run(&["run"]).await;
    assert_failed_cleanly(&bed, &out, "lacks permissions the run needs: get leases").await;
    assert!(bed.kube.requests().iter().all(|r| !r.path.contains("/leases")), "the Lease was called before the permissions were checked");

    let out = bed.run(&[]).await;
    out.expect_code(2);
    assert!(out.stderr.contains("Usage:") && out.stderr.contains("check"), "a bare invocation prints help:\n{}", out.stderr);

    let no_cluster = vec![("KUBECONFIG".to_string(), "/nonexistent/kubeconfig".to_string())];
    let out = run_with(&bed, no_cluster.clone(), &["retention", "--dry-run"]).await;
    out.expect_code(0);
    run_with(&bed, no_cluster, &["list"]).await.expect_code(0);
}

/// 15.2: a pause the last runs say would outlast MAX_DOWNTIME is refused before
/// anything is paused (before, the run paused and was aborted at MAX_DOWNTIME, that
/// much downtime spent for nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_expected_to_outlast_max_downtime_is_refused() {
    let mut bed = Bed::new(BedOptions { chunks: 5, ..Default::default() }).await;
    bed.run(&["run"]).await.expect_code(0);
    let first = bed.manifests().await.pop().expect("backup");
    assert!(first.downtime_seconds > 0.0);
    let limit_ms = ((first.downtime_seconds * 1000.0) / 2.0).max(1.0) as u64;
    bed.set("MAX_DOWNTIME", &format!("{limit_ms}ms"));
    let patches_before = bed.kube.mutating_requests().iter().filter(|r| r.method == "PATCH").count();
    let out = bed.run(&["run"]).await;
    out.expect_code(1);
    assert!(out.said().iter().any(|l| l.contains("the expected downtime") && l.contains("exceeds MAX_DOWNTIME")), "{}", out.stderr);
    assert!(out.logs().iter().any(|l| l["reason"] == "downtime_estimate" && l["exit_code"] == 1), "{}", out.stderr);
    let patches_after = bed.kube.mutating_requests().iter().filter(|r| r.method == "PATCH").count();
    assert_eq!(patches_after, patches_before, "the cluster was paused");
    bed.assert_resumed();
    assert_eq!(bed.manifests().await.len(), 1);
}
