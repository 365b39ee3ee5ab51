//! COPY_SHARDS: the pre-copy as a Kubernetes Indexed Job. The stand-in acts as the Job
//! controller and the kubelet: each index runs as a subprocess of the real binary
//! (`copy-shard`, `JOB_COMPLETION_INDEX`) with the environment of the Job's pod
//! template, which the run made from its own Pod, against the real S3 bed (moto).

use std::sync::Arc;
use std::time::Duration;

use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt};
use pachyderm_backup::catalog::{Catalog, Manifest, ObjectRecord};

use crate::support::*;

/// Objects outside `chunk/`, before and after it in key order: shard 0 and the last.
const OUTSIDE: [&str; 3] = ["aaa/first", "chunk0-not-a-chunk", "test/last"];

async fn sharded_bed() -> Bed {
    let bed = Bed::new(BedOptions { chunks: 48, ..Default::default() }).await;
    for key in OUTSIDE {
        bed.source.put(&Path::from(key), bytes::Bytes::from(format!("content of {key}")).into()).await.expect("seed");
    }
    bed
}

/// The run's variables with COPY_SHARDS, as its pod `pod` has them, and that pod
/// seeded in the stand-in with the same (POD_NAME, POD_NAMESPACE from the downward API).
fn as_pod(bed: &Bed, pod: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = bed.env();
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push((k.to_string(), v.to_string()));
    }
    bed.kube.seed_own_pod(pod, &env);
    env.push(("POD_NAME".into(), pod.into()));
    env.push(("POD_NAMESPACE".into(), bed.kube.namespace.clone()));
    env
}

fn catalog_at(bed: &Bed, prefix: &str) -> Catalog {
    let backups = bed.moto.as_ref().expect("an S3 bed").store("backups");
    Catalog::new(Arc::new(PrefixStore::new(backups, prefix)))
}

async fn records(catalog: &Catalog, m: &Manifest) -> Vec<ObjectRecord> {
    catalog.read_listing(&m.backup_id, m).await.expect("listing").map(|r| r.expect("record")).collect()
}

async fn pool(catalog: &Catalog) -> Vec<(String, bytes::Bytes)> {
    let store = catalog.pool().store().clone();
    let mut keys: Vec<Path> =
        futures::TryStreamExt::try_collect::<Vec<_>>(catalog.pool().list()).await.expect("list the pool").into_iter().map(|m| m.location).collect();
    keys.sort();
    let mut out = Vec::new();
    for k in keys {
        out.push((k.to_string(), read(&store, k.as_ref()).await));
    }
    out
}

fn no_pause_written(bed: &Bed) {
    let writes: Vec<String> = bed
        .kube
        .mutating_requests()
        .iter()
        .filter(|r| r.path.contains("/deployments") || r.path.contains("/replicationcontrollers") || r.path.contains("/configmaps"))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(writes.is_empty(), "the cluster was written to (paused): {writes:?}");
}

/// (verb, resource, object name).
type Call = (String, String, Option<String>);

/// Every call the run made for its copy Job, and every SelfSubjectAccessReview it asked.
fn job_calls_and_reviews(bed: &Bed) -> (Vec<Call>, Vec<Call>) {
    let mut calls = Vec::new();
    let mut reviews = Vec::new();
    for r in bed.kube.requests() {
        if r.path.contains("selfsubjectaccessreviews") {
            let a = &r.body["spec"]["resourceAttributes"];
            if a["resource"] == "jobs" || (a["resource"] == "pods" && a["name"].is_string()) {
                reviews.push((
                    a["verb"].as_str().unwrap_or("").to_string(),
                    a["resource"].as_str().unwrap_or("").to_string(),
                    a["name"].as_str().map(str::to_string),
                ));
            }
            continue;
        }
        let parts: Vec<&str> = r.path.trim_matches('/').split('/').collect();
        let Some(at) = parts.iter().position(|p| *p == "namespaces") else { continue };
        let (resource, name) = (parts.get(at + 2).copied().unwrap_or(""), parts.get(at + 3).map(|s| s.to_string()));
        let job_call = resource == "jobs" || (resource == "pods" && name.is_some());
        if !job_call {
            continue;
        }
        let verb = match (r.method.as_str(), &name) {
            ("GET", Some(_)) => "get",
            ("GET", None) => "list",
            ("POST", _) => "create",
            ("DELETE", _) => "delete",
            (m, _) => m,
        };
        calls.push((verb.to_string(), resource.to_string(), name));
    }
    (calls, reviews)
}

/// Four shards copy exactly what one pod copies: the same records (but for the backup
/// id each names as the copier), the same pool, byte for byte; the Job is made from
/// the run's own Pod, asked for (SSAR) before any call, and deleted; a second sharded
/// run reuses everything.
#[tokio::test]
async fn four_shards_copy_exactly_what_one_pod_copies() {
    let bed = sharded_bed().await;
    let one = run_with(&bed, vec![("TARGET_URL".into(), "s3://backups/one".into())], &["run"]).await;
    one.expect_code(0);
    let env = as_pod(&bed, "nightly-29012345-abcde", &[("TARGET_URL", "s3://backups/four"), ("COPY_SHARDS", "4"), ("COPY_PARALLELISM", "2")]);
    let four = run_to_end(binary(&["run"], &env)).await;
    assert_eq!(four.code, Some(0), "--- stderr\n{}\n--- pods\n{}", four.stderr, bed.kube.job_logs());

    let (a, b) = (catalog_at(&bed, "one"), catalog_at(&bed, "four"));
    let (ma, mb) = (a.complete().await.expect("catalog").remove(0), b.complete().await.expect("catalog").remove(0));
    let (ra, rb) = (records(&a, &ma).await, records(&b, &mb).await);
    assert_eq!(ra.len() as u64, bed.chunks + OUTSIDE.len() as u64);
    let lines = |records: &[ObjectRecord], id: &str| -> Vec<String> {
        records
            .iter()
            .map(|r| {
                serde_json::to_string(&ObjectRecord { since: if r.since == id { "<this backup>".into() } else { r.since.clone() }, ..r.clone() }).expect("json")
            })
            .collect()
    };
    assert_eq!(lines(&ra, &ma.backup_id), lines(&rb, &mb.backup_id), "the sharded listing is not one pod's");
    assert_eq!(ma.objects.counts, mb.objects.counts);
    assert_eq!(pool(&a).await, pool(&b).await, "the pools differ");

    assert_eq!(bed.kube.job_pods_started(), 4, "one pod per shard, none retried");
    assert!(bed.kube.jobs().is_empty(), "the copy Job is deleted with the pre-copy: {:?}", bed.kube.jobs());
    let left: Vec<_> =
        futures::TryStreamExt::try_collect::<Vec<_>>(b.pool().store().list(Some(&Path::from(format!("backups/{}/shards", mb.backup_id))))).await.expect("list");
    assert!(left.is_empty(), "the shard files are merged and removed: {left:?}");
    assert!(four.said().iter().any(|l| l.contains("copy Job created")), "{}", four.stderr);

    // Every call for the Job was asked for first (the chart's Role grants exactly these).
    let (calls, reviews) = job_calls_and_reviews(&bed);
    assert!(!calls.is_empty());
    for call in &calls {
        let covered = reviews.iter().any(|(v, r, n)| *v == call.0 && *r == call.1 && (n.is_none() || *n == call.2));
        assert!(covered, "{call:?} was made without a SelfSubjectAccessReview for it: {reviews:?}");
    }
    let mut reviewed: Vec<String> = reviews.iter().map(|(v, r, n)| format!("{v} {r}{}", n.as_deref().map(|n| format!("/{n}")).unwrap_or_default())).collect();
    reviewed.sort();
    assert_eq!(reviewed, ["create jobs", "delete jobs", "get jobs", "get pods/nightly-29012345-abcde", "list jobs"]);

    // The second sharded run copies nothing: each shard plans from the last listing.
    bed.kube.seed_own_pod("nightly-29012346-fghij", &env);
    let mut env2 = env.clone();
    env2.retain(|(k, _)| k != "POD_NAME");
    env2.push(("POD_NAME".into(), "nightly-29012346-fghij".into()));
    run_to_end(binary(&["run"], &env2)).await.expect_code(0);
    let newest = b.complete().await.expect("catalog").pop().expect("a second backup");
    assert_eq!((newest.objects.counts.copied, newest.objects.counts.reused), (0, ra.len() as u64));
}

/// A pod lost once (its node drained, say) is retried by the Job, and the run goes on.
#[tokio::test]
async fn an_index_that_fails_once_is_retried_and_the_run_succeeds() {
    let bed = sharded_bed().await;
    bed.kube.kill_index(2, 1);
    let env = as_pod(&bed, "nightly-1-aaaaa", &[("COPY_SHARDS", "3")]);
    let out = run_to_end(binary(&["run"], &env)).await;
    assert_eq!(out.code, Some(0), "--- stderr\n{}\n--- pods\n{}", out.stderr, bed.kube.job_logs());
    assert_eq!(bed.kube.job_pods_started(), 4, "three shards, one of them twice");
    let m = bed.manifests().await.remove(0);
    assert_eq!(m.objects.counts.count, bed.chunks + OUTSIDE.len() as u64);
    bed.assert_resumed();
}

/// An index that fails on every try fails the run before any pause, naming it; the
/// failed Job is kept for its pods' logs, and the next run removes it.
#[tokio::test]
async fn an_index_that_always_fails_fails_the_run_before_any_pause() {
    let bed = sharded_bed().await;
    bed.kube.kill_index(1, 100);
    let env = as_pod(&bed, "nightly-1-bbbbb", &[("COPY_SHARDS", "3")]);
    let out = run_to_end(binary(&["run"], &env)).await;
    out.expect_code(1);
    let said = out.said().join("\n");
    assert!(said.contains("shards 1 did not finish") && said.contains("phase precopy"), "{said}");
    no_pause_written(&bed);
    assert!(bed.manifests().await.is_empty());
    let jobs = bed.kube.jobs();
    assert_eq!(jobs.len(), 1, "the failed Job is kept for its logs");
    assert_eq!(jobs[0]["status"]["failedIndexes"], "1");
}

/// A Job still running at PRECOPY_TIMEOUT fails the run before any pause, naming the
/// shards that had not finished; the Job goes with the run.
#[tokio::test]
async fn a_job_past_precopy_timeout_fails_the_run_before_any_pause_naming_the_shards() {
    let bed = sharded_bed().await;
    bed.kube.hold_jobs(true);
    let env = as_pod(&bed, "nightly-1-fffff", &[("COPY_SHARDS", "3"), ("PRECOPY_TIMEOUT", "3s")]);
    let out = run_to_end(binary(&["run"], &env)).await;
    out.expect_code(1);
    let said = out.said().join("\n");
    assert!(said.contains("did not finish within PRECOPY_TIMEOUT (3s): shards 0-2 were still copying"), "{said}");
    no_pause_written(&bed);
    assert!(bed.manifests().await.is_empty());
    assert!(bed.kube.jobs().is_empty(), "the timed-out Job is deleted: {:?}", bed.kube.jobs());
    assert_eq!(bed.kube.job_pods_started(), 0);
}

/// A coordinator killed while its Job runs leaves the Job behind (its Pod still
/// exists); the next run deletes it before making its own, and nothing is orphaned.
#[tokio::test]
async fn a_coordinator_killed_mid_copy_leaves_a_job_the_next_run_removes() {
    let bed = sharded_bed().await;
    bed.kube.hold_jobs(true);
    let env = as_pod(&bed, "nightly-1-ccccc", &[("COPY_SHARDS", "2")]);
    let running = Running::start(binary(&["run"], &env));
    wait_until("the copy Job created", Duration::from_secs(120), || !bed.kube.jobs().is_empty()).await;
    let dead_job = bed.kube.jobs()[0]["metadata"]["name"].as_str().expect("a name").to_string();
    running.signal("KILL");
    running.finish().await;
    assert_eq!(bed.kube.jobs().len(), 1, "SIGKILL deletes nothing");
    // What the next run finds once the dead run's Lease and bucket lock have expired.
    bed.kube.hold_lease("pachyderm-backup", "dead", Duration::from_secs(100), 15);
    bed.expire_bucket_lock().await;

    let env = as_pod(&bed, "nightly-2-ddddd", &[("COPY_SHARDS", "2")]);
    let next = Running::start(binary(&["run"], &env));
    wait_until("the dead run's Job deleted", Duration::from_secs(120), || bed.kube.jobs().iter().all(|j| j["metadata"]["name"] != dead_job.as_str())).await;
    bed.kube.hold_jobs(false);
    let out = next.finish().await;
    assert_eq!(out.code, Some(0), "--- stderr\n{}\n--- pods\n{}", out.stderr, bed.kube.job_logs());
    assert!(out.said().iter().any(|l| l.contains("copy Job left by an earlier run")), "{}", out.stderr);
    assert!(bed.kube.jobs().is_empty(), "nothing orphaned: {:?}", bed.kube.jobs());
    assert_eq!(bed.kube.job_pods_started(), 2, "the dead run's held pods never ran");
    bed.assert_resumed();
}

/// Without the permissions the Job needs, the run stops in its preflight, naming them.
#[tokio::test]
async fn a_role_without_the_job_permissions_stops_the_run_in_preflight() {
    let bed = sharded_bed().await;
    bed.kube.deny("create jobs");
    let env = as_pod(&bed, "nightly-1-eeeee", &[("COPY_SHARDS", "2")]);
    let out = run_to_end(binary(&["run"], &env)).await;
    out.expect_code(1);
    assert!(out.said().join("\n").contains("create jobs.batch (namespace pachyderm)"), "{}", out.stderr);
    assert!(bed.kube.jobs().is_empty());
    bed.assert_never_paused();
}
