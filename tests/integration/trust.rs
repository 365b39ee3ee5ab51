//! Damaged or foreign metadata in the backup bucket, bytes damaged on the way, parts
//! removed under a run: nothing is deleted that a kept backup needs, nothing broken is
//! reported whole, and one bad folder never stops the rest. On the real test bed.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use chrono::Utc;
use object_store::{ObjectStore, ObjectStoreExt};
use pachyderm_backup::catalog::{self, Manifest, ObjectRecord};
use pachyderm_backup::retention::{self, Policy};

fn quiet(bed: &mut Bed) {
    bed.set("PAUSE_MODE", "none");
}

async fn exists(store: &std::sync::Arc<dyn ObjectStore>, key: &str) -> bool {
    store.head(&catalog::recorded_path(key)).await.is_ok()
}

fn listing_path(m: &Manifest) -> object_store::path::Path {
    catalog::BackupFile::Listing.path(&m.backup_id)
}

/// A listing as an older writer stored it: plain zstd, no frame checksum.
fn zstd_without_checksum(lines: &[u8]) -> Bytes {
    Bytes::from(zstd::encode_all(lines, 3).expect("zstd"))
}

fn lines_of(records: &[ObjectRecord]) -> Vec<u8> {
    records.iter().flat_map(|r| [serde_json::to_vec(r).expect("json"), b"\n".to_vec()].concat()).collect()
}

/// Retention as the nightly run applies it, a month from now (every blob past grace).
async fn retention_later(bed: &Bed, policy: &Policy) -> retention::Outcome {
    retention::apply(&bed.catalog(), policy, Duration::from_secs(3600), Utc::now() + chrono::Duration::days(30), retention::Mode::Delete)
        .await
        .expect("retention")
}

/// 14.1: a kept listing that does not match its manifest (one flipped character that
/// still decodes, half of it in a valid frame, a flipped bit in a checksummed frame)
/// marks nothing and sweeps nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_never_sweeps_from_a_listing_that_does_not_verify() {
    let mut bed = Bed::new(BedOptions { buckets: Buckets::Local, chunks: 40, ..Default::default() }).await;
    quiet(&mut bed);
    bed.run(&["run"]).await.expect_code(0);
    let newest = bed.manifests().await.pop().expect("a backup");
    let original = bed.listing(&newest).await;
    let stored = read(&bed.target, listing_path(&newest).as_ref()).await;

    let mut renamed = original.clone();
    renamed[3].blob.push('x');
    let half = &original[..original.len() / 2];
    let mut flipped = stored.to_vec();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    let cases: [(&str, Bytes); 3] = [
        ("a blob key altered", zstd_without_checksum(&lines_of(&renamed))),
        ("its first half", zstd_without_checksum(&lines_of(half))),
        ("a flipped bit", Bytes::from(flipped)),
    ];
    for (what, damaged) in cases {
        bed.target.put(&listing_path(&newest), damaged.into()).await.expect("damage the listing");
        let outcome = retention_later(&bed, &Policy { daily: 7, min_keep: 3, ..Default::default() }).await;
        assert_eq!(outcome.damaged.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), vec![newest.backup_id.as_str()], "{what}: reported damaged");
        assert!(!outcome.swept && outcome.blobs_deleted == 0, "{what}: nothing swept");
        for r in &original {
            assert!(exists(&bed.target, &r.blob).await, "{what}: blob {} of the newest backup was deleted", r.blob);
        }
        let out = bed.run(&["verify"]).await;
        out.expect_code(1);
        assert!(out.stdout.contains("objects.jsonl.zst"), "{what}: verify names the listing:\n{}", out.stdout);
    }
    // Repaired, the same retention sweeps again.
    bed.target.put(&listing_path(&newest), stored.into()).await.expect("repair");
    let outcome = retention_later(&bed, &Policy { daily: 7, min_keep: 3, ..Default::default() }).await;
    assert!(outcome.swept && outcome.damaged.is_empty());
    bed.run(&["verify", "--deep"]).await.expect_code(0);
}

/// 14.2: with KEEP_LAST=1 and the newest listing truncated, garbage or missing,
/// retention keeps the newest backup that verifies (and the damaged one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_newest_backup_that_verifies() {
    let mut bed = Bed::new(BedOptions { buckets: Buckets::Local, chunks: 20, ..Default::default() }).await;
    quiet(&mut bed);
    // The runs' own retention keeps everything; the one under test is applied below.
    bed.set("KEEP_LAST", "100");
    let policy = Policy { last: 1, min_keep: 1, ..Default::default() };
    for (n, damage) in ["truncated", "garbage", "missing"].into_iter().enumerate() {
        bed.add_chunks(100 + n as u64..=100 + n as u64).await;
        bed.run(&["run"]).await.expect_code(0);
        bed.add_chunks(200 + n as u64..=200 + n as u64).await;
        bed.run(&["run"]).await.expect_code(0);
        // The catalog's order is time order, even for runs of one second whose first
        // folder the previous round's retention deleted (they once took its freed id).
        let all = bed.manifests().await;
        let (good, bad) = (all[all.len() - 2].clone(), all[all.len() - 1].clone());
        let path = listing_path(&bad);
        match damage {
            "truncated" => {
                let bytes = read(&bed.target, path.as_ref()).await;
                bed.target.put(&path, bytes.slice(..bytes.len() / 2).into()).await.expect("truncate");
            }
            "garbage" => {
                bed.target.put(&path, Bytes::from_static(b"not a zstd frame at all").into()).await.expect("garbage");
            }
            _ => bed.target.delete(&path).await.expect("delete"),
        }
        let outcome = retention_later(&bed, &policy).await;
        let kept: Vec<&str> = outcome.decisions.iter().filter(|d| d.keep()).map(|d| d.id.as_str()).collect();
        let started: Vec<(String, String)> = all.iter().map(|m| (m.backup_id.clone(), m.started_at.to_rfc3339())).collect();
        assert_eq!(
            kept,
            vec![good.backup_id.as_str()],
            "{damage}: the newest backup that verifies is the one kept (damaged: {:?}; started: {started:?})",
            outcome.damaged
        );
        let folders = bed.folders().await;
        assert!(folders.contains(&good.backup_id) && folders.contains(&bad.backup_id), "{damage}: {folders:?}");
        bed.catalog().read_verified_listing(&good, |_| {}).await.expect("the kept backup verifies");
        for r in bed.listing(&good).await {
            assert!(exists(&bed.target, &r.blob).await, "{damage}: blob {} of the kept backup was deleted", r.blob);
        }
        let out = bed.run(&["verify", "--backup", &good.backup_id, "--deep"]).await;
        out.expect_code(0);
        // An operator removes the damaged folder; the next round starts clean.
        bed.catalog().delete_backup(&bad.backup_id).await.expect("remove the damaged folder");
    }
}

/// 14.3: a damaged manifest (even the oldest) is skipped and reported by every command
/// and never deleted; the rest keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_manifest_is_skipped_and_reported_never_fatal() {
    let mut bed = Bed::new(BedOptions { buckets: Buckets::Local, chunks: 10, ..Default::default() }).await;
    quiet(&mut bed);
    bed.set("KEEP_LAST", "100");
    for _ in 0..4 {
        bed.run(&["run"]).await.expect_code(0);
    }
    let all = bed.manifests().await;
    let manifest_path = |m: &Manifest| catalog::BackupFile::Manifest.path(&m.backup_id);
    let text = serde_json::to_string_pretty(&all[1]).expect("json");
    let too_new = text.replacen("\"format_version\": 1", "\"format_version\": 99", 1);
    let other_id = text.replacen(&all[1].backup_id, "19990101T000000Z", 1);
    let damages: [(usize, Bytes); 4] = [
        (0, Bytes::from(text[..text.len() / 2].to_string())),
        (1, Bytes::from_static(b"{\"format_version\": 1, \"backup_id\": 7}")),
        (2, Bytes::from(too_new)),
        (3, Bytes::from(other_id)),
    ];
    for (i, bytes) in &damages {
        bed.target.put(&manifest_path(&all[*i]), bytes.clone().into()).await.expect("damage");
    }
    let damaged: BTreeSet<String> = all.iter().map(|m| m.backup_id.clone()).collect();

    let out = bed.run(&["list"]).await;
    out.expect_code(0);
    assert_eq!(out.stdout.matches("DAMAGED").count(), 4, "list shows every damaged folder:\n{}", out.stdout);
    let out = bed.run(&["retention"]).await;
    out.expect_code(0);
    assert!(out.stdout.contains("pool not swept: 4 damaged"), "{}", out.stdout);
    let out = bed.run(&["run"]).await;
    out.expect_code(0);
    assert!(out.logs().iter().any(|l| l["message"].as_str().is_some_and(|m| m.contains("damaged backup")) && l["folder"].as_str().is_some()), "{}", out.stderr);
    bed.run(&["verify"]).await.expect_code(0);
    let out = bed.run(&["verify", "--all"]).await;
    out.expect_code(1);
    for id in &damaged {
        assert!(out.stdout.contains(&format!("{id} DAMAGED")), "verify --all names {id}:\n{}", out.stdout);
    }
    bed.run(&["restore", "--cluster-objects"]).await.expect_code(0);
    let folders: BTreeSet<String> = bed.folders().await.into_iter().collect();
    assert!(damaged.is_subset(&folders), "a damaged folder was deleted: {folders:?}");
}

/// 14.4: two clusters never share a prefix, and two runs started in the same second
/// never share a backup id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_prefix_one_cluster_one_run_per_id() {
    let mut bed = Bed::new(BedOptions { buckets: Buckets::Local, chunks: 10, ..Default::default() }).await;
    quiet(&mut bed);
    bed.set("CLUSTER_NAME", "alpha");
    bed.run(&["run"]).await.expect_code(0);
    bed.set("CLUSTER_NAME", "beta");
    let before = bed.folders().await;
    let out = bed.run(&["run"]).await;
    out.expect_code(2);
    let said = out.said().join("\n");
    assert!(said.contains("TARGET_URL") && said.contains("\"alpha\"") && said.contains("\"beta\""), "{}", out.stderr);
    assert_eq!(bed.folders().await, before, "nothing written");

    // A prefix that already mixes two clusters (written by an older version): retention
    // refuses and deletes nothing.
    let m = bed.manifests().await.pop().expect("alpha's backup");
    let mut foreign = m.clone();
    foreign.backup_id = "20000101T000000Z".into();
    foreign.cluster = "beta".into();
    bed.target.put(&catalog::BackupFile::Manifest.path(&foreign.backup_id), serde_json::to_vec(&foreign).expect("json").into()).await.expect("put");
    bed.set("CLUSTER_NAME", "alpha");
    bed.set("KEEP_LAST", "1");
    bed.set("KEEP_DAILY", "0");
    bed.set("KEEP_WEEKLY", "0");
    bed.set("KEEP_MONTHLY", "0");
    bed.set("MIN_KEEP", "1");
    let out = bed.run(&["retention"]).await;
    out.expect_code(2);
    assert!(out.stderr.contains("more than one cluster (alpha, beta)"), "{}", out.stderr);
    assert_eq!(bed.manifests().await.len(), 2, "nothing deleted");
    bed.catalog().delete_backup(&foreign.backup_id).await.expect("clean up");

    // Two claims in the same second: two ids (create-if-absent), never one shared.
    let start = Utc::now();
    let catalog = bed.catalog();
    let (a, b) = tokio::join!(catalog.claim_backup_id(start, "run-a"), catalog.claim_backup_id(start, "run-b"));
    let (a, b) = (a.expect("claim a"), b.expect("claim b"));
    assert_ne!(a, b, "two runs share one backup id");
}

/// 9.6: every writer of the backup bucket is exclusive, in every pause mode: a
/// retention started while a run holds the bucket is refused (exit 3) and sweeps
/// nothing; a dead holder's lock expires and is taken over; two runs at once, one wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_and_retention_never_overlap() {
    let mut bed = Bed::new(BedOptions { buckets: Buckets::Local, chunks: 10, ..Default::default() }).await;
    quiet(&mut bed);
    bed.set("KEEP_LAST", "100");
    bed.run(&["run"]).await.expect_code(0);

    // A run holding the bucket (its dump held by a table lock) and a retention racing it.
    let lock = TableLock::take(&bed.pg).await;
    let running = Running::start(bed.command(&["run"]));
    wait_until("pg_dump blocked on the lock", Duration::from_secs(60), || dump_is_blocked(&bed.pg)).await;
    let out = bed.run(&["retention"]).await;
    out.expect_code(3);
    assert!(out.stderr.contains("the backup bucket is locked by") && out.stderr.contains("(run)"), "{}", out.stderr);
    let out = bed.run(&["run"]).await;
    out.expect_code(3);
    lock.release().await;
    running.finish().await.expect_code(0);
    bed.run(&["retention"]).await.expect_code(0);
    assert!(!exists(&bed.target, catalog::LOCK).await, "released");

    // A dead holder's lock: live, it refuses; expired, it is taken over.
    let lock_at = |expires: chrono::DateTime<Utc>| {
        serde_json::json!({"holder": "dead-pod/123", "command": "run", "acquired_at": Utc::now(), "expires_at": expires}).to_string()
    };
    let path = object_store::path::Path::from(catalog::LOCK);
    bed.target.put(&path, lock_at(Utc::now() + chrono::Duration::hours(1)).into()).await.expect("put");
    let out = bed.run(&["run"]).await;
    out.expect_code(3);
    assert!(out.stderr.contains("dead-pod/123"), "{}", out.stderr);
    bed.target.put(&path, lock_at(Utc::now() - chrono::Duration::seconds(1)).into()).await.expect("put");
    let out = bed.run(&["run"]).await;
    out.expect_code(0);
    assert!(out.stderr.contains("taking over an expired bucket lock"), "{}", out.stderr);

    // Two runs started together: one backs up, the other is refused, never both at once.
    let before = bed.manifests().await.len();
    let (a, b) = tokio::join!(bed.run(&["run"]), bed.run(&["run"]));
    let mut codes = [a.code, b.code];
    codes.sort();
    assert!(codes == [Some(0), Some(0)] || codes == [Some(0), Some(3)], "{codes:?}\n{}\n{}", a.stderr, b.stderr);
    assert_eq!(bed.manifests().await.len(), before + codes.iter().filter(|c| **c == Some(0)).count());
    bed.run(&["verify", "--all", "--deep"]).await.expect_code(0);
}

/// 14.5: a part removed under a running backup (a concurrent retention) stops the
/// commit: no manifest names what is not there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_checks_every_part_it_names() {
    let mut bed = Bed::new(BedOptions { buckets: Buckets::Local, chunks: 10, ..Default::default() }).await;
    quiet(&mut bed);
    let lock = TableLock::take(&bed.pg).await;
    let running = Running::start(bed.command(&["run"]));
    wait_until("pg_dump blocked on the lock", Duration::from_secs(60), || dump_is_blocked(&bed.pg)).await;
    let target = bed.dir.path().join("target/backups");
    // The dex dump, written while the pachyderm dump waits (the listing is written
    // after the resume, so the dump is the part removed under the run's feet).
    let dex = || std::fs::read_dir(&target).ok().and_then(|mut d| d.next()).and_then(|e| e.ok()).map(|e| e.path().join("databases/dex.pgdump"));
    wait_until("the dex dump written", Duration::from_secs(60), || dex().is_some_and(|p| p.is_file())).await;
    std::fs::remove_file(dex().expect("dex dump")).expect("remove the dex dump");
    lock.release().await;
    let out = running.finish().await;
    out.expect_code(1);
    assert!(out.stderr.contains("dex.pgdump is missing") && out.stderr.contains("not committed"), "{}", out.stderr);
    assert!(bed.manifests().await.is_empty(), "a manifest names a removed part");
}

/// 14.7: a dump damaged in the bucket is caught while it streams into pg_restore, and
/// the drill reads every byte before restoring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_dump_never_restores_silently() {
    let mut bed = Bed::new(BedOptions { buckets: Buckets::Local, chunks: 5, ..Default::default() }).await;
    quiet(&mut bed);
    bed.run(&["run"]).await.expect_code(0);
    let m = bed.manifests().await.pop().expect("backup");
    let dump = bed.catalog().folder(&m.backup_id).recorded(&m.databases[0].file);
    let mut bytes = read(&bed.target, dump.as_ref()).await.to_vec();
    // Inside the table of contents, near the start of the custom format.
    bytes[200] ^= 0x20;
    bed.target.put(&dump, Bytes::from(bytes).into()).await.expect("damage the dump");

    let fresh = tokio::task::spawn_blocking(|| TempPostgres::start().expect("start")).await.expect("join");
    let out = run_with(&bed, restore_env(&fresh, "file:///nonexistent"), &["restore", "--skip-objects"]).await;
    out.expect_code(1);
    assert!(out.stderr.contains(&format!("the dump of {} read from the bucket has SHA-256", m.databases[0].name)), "{}", out.stderr);
    let out = run_with(&bed, restore_env(&fresh, "file:///nonexistent"), &["verify", "--drill"]).await;
    out.expect_code(1);
    assert!(
        out.stdout.contains(&format!("database {}: checksum", m.databases[0].name)),
        "the drill checks the dump's bytes first:\n{}\n--- stderr\n{}",
        out.stdout,
        out.stderr
    );
}

/// 14.10: a file:// backup bucket holds dumps with Pachyderm's chunk keys: owner-only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_backup_bucket_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let mut bed = Bed::new(BedOptions { buckets: Buckets::Local, chunks: 5, ..Default::default() }).await;
    quiet(&mut bed);
    let target = bed.dir.path().join("target");
    std::fs::remove_dir(&target).expect("let the run create it");
    bed.run(&["run"]).await.expect_code(0);
    let mut seen = 0;
    let mut stack = vec![target];
    while let Some(path) = stack.pop() {
        let meta = std::fs::metadata(&path).expect("meta");
        assert_eq!(meta.permissions().mode() & 0o077, 0, "{} is {:o}", path.display(), meta.permissions().mode());
        seen += 1;
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&path).expect("dir").map(|e| e.expect("entry").path()));
        }
    }
    assert!(seen > 10, "walked {seen} entries");
}

/// 9.1: damage `verify` finds in the pool heals: the next run copies exactly those
/// objects again under fresh keys (never overwriting a blob an older backup
/// references), and `run --full` re-copies everything without trusting the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_pool_heals() {
    let mut bed = Bed::new(BedOptions { buckets: Buckets::Local, chunks: 20, ..Default::default() }).await;
    quiet(&mut bed);
    bed.set("KEEP_LAST", "100");
    bed.run(&["run"]).await.expect_code(0);
    let first = bed.manifests().await.pop().expect("backup");
    let listed = bed.listing(&first).await;
    let (gone, flipped) = (&listed[0], &listed[1]);
    bed.target.delete(&catalog::recorded_path(&gone.blob)).await.expect("delete a blob");
    let bad = vec![0x5au8; flipped.size as usize];
    bed.target.put(&catalog::recorded_path(&flipped.blob), bad.clone().into()).await.expect("damage a blob");

    let out = bed.run(&["verify", "--deep"]).await;
    out.expect_code(1);
    let damage_dir = bed.dir.path().join("target").join(catalog::DAMAGE_DIR);
    assert_eq!(std::fs::read_dir(&damage_dir).expect("damage records").count(), 2, "verify recorded both blobs");
    // A metadata-only run copies nothing, so it heals nothing: the records stay.
    bed.set("OBJECTS", "skip");
    bed.run(&["run"]).await.expect_code(0);
    assert_eq!(std::fs::read_dir(&damage_dir).expect("damage records").count(), 2, "OBJECTS=skip cleared the damage records");
    bed.set("OBJECTS", "copy");

    let out = bed.run(&["run"]).await;
    out.expect_code(0);
    let healed = bed.manifests().await.pop().expect("backup");
    assert_eq!((healed.objects.counts.copied, healed.objects.counts.reused), (2, 18), "exactly the damaged objects copied again");
    for r in bed.listing(&healed).await {
        if r.key == gone.key || r.key == flipped.key {
            assert_eq!(r.blob, catalog::fresh_blob_key(if r.key == gone.key { &gone.blob } else { &flipped.blob }, &healed.backup_id), "a fresh key");
        }
    }
    assert!(!exists(&bed.target, &gone.blob).await, "the old key is never rewritten");
    assert!(read(&bed.target, &flipped.blob).await == bad, "the old key is never rewritten");
    assert_eq!(std::fs::read_dir(&damage_dir).map(|d| d.count()).unwrap_or(0), 0, "records cleared once healed");
    bed.run(&["verify", "--backup", &healed.backup_id, "--deep"]).await.expect_code(0);
    let out = bed.run(&["run"]).await;
    out.expect_code(0);
    let next = bed.manifests().await.pop().expect("backup");
    assert_eq!(next.objects.counts.copied, 0, "healed blobs are reused afterwards");

    // --full: nothing in the pool is trusted.
    let out = bed.run(&["run", "--full"]).await;
    out.expect_code(0);
    let full = bed.manifests().await.pop().expect("backup");
    assert_eq!((full.objects.counts.copied, full.objects.counts.reused), (20, 0));
    assert!(bed.listing(&full).await.iter().all(|r| r.blob.ends_with(&format!(".{}", full.backup_id))), "every blob under a fresh key");
    bed.run(&["verify", "--backup", &full.backup_id, "--deep"]).await.expect_code(0);
}

/// 9.1, the hot-path guard: blobs lost with nobody running `verify` (a lifecycle rule,
/// a hand) are found by the next run's sampled check, which widens to every blob once
/// the sample finds one, and that run copies them again. Before, it reused them all
/// ("0 copied") and committed a backup that could not restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_lost_unseen_are_found_and_healed_by_the_next_run() {
    let mut bed = Bed::new(BedOptions { buckets: Buckets::Local, chunks: 80, ..Default::default() }).await;
    quiet(&mut bed);
    bed.set("KEEP_LAST", "100");
    bed.run(&["run"]).await.expect_code(0);
    let first = bed.manifests().await.pop().expect("backup");
    let listed = bed.listing(&first).await;
    assert!(listed.len() > pachyderm_backup::objects::REUSE_SAMPLE, "the bed must hold more objects than the sample");
    // More lost than the sample can miss (80 − 30 < 64), so the widening is exercised.
    let lost: Vec<&ObjectRecord> = listed.iter().step_by(2).take(30).collect();
    for r in &lost[1..] {
        bed.target.delete(&catalog::recorded_path(&r.blob)).await.expect("delete a blob");
    }
    bed.target.put(&catalog::recorded_path(&lost[0].blob), Bytes::from_static(b"short").into()).await.expect("truncate a blob");

    let out = bed.run(&["run"]).await;
    out.expect_code(0);
    let healed = bed.manifests().await.pop().expect("backup");
    assert_eq!(healed.objects.counts.copied, 30, "every lost object copied again:\n{}", out.stderr);
    let logs = out.logs();
    assert!(logs.iter().any(|l| l["message"].as_str().is_some_and(|m| m.contains("checking every blob"))), "the sample did not widen");
    let damage_dir = bed.dir.path().join("target").join(catalog::DAMAGE_DIR);
    assert_eq!(std::fs::read_dir(&damage_dir).map(|d| d.count()).unwrap_or(0), 0, "records cleared once healed");
    bed.run(&["verify", "--backup", &healed.backup_id, "--deep"]).await.expect_code(0);
}

/// 9.8: a backup bucket under S3 Object Lock (default retention, governance mode).
/// Before, the first upload failed (S3 wants a checksum header in a locked bucket) and
/// retention "deleted" locked backups with delete markers, hiding what stays stored.
/// Now: runs complete, nothing a backup wrote is ever rewritten or hidden, retention
/// keeps and reports what the lock protects, and the backups verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_under_object_lock_is_written_once_and_never_pruned_early() {
    let mut bed = Bed::new(BedOptions { chunks: 20, ..Default::default() }).await;
    quiet(&mut bed);
    bed.set("KEEP_LAST", "1").set("MIN_KEEP", "1");
    let moto = bed.moto.as_ref().expect("S3 bed");
    moto.delete_bucket("backups");
    moto.create_locked_bucket("backups", "GOVERNANCE", 1);

    bed.run(&["run"]).await.expect_code(0);
    let second = bed.run(&["run"]).await;
    second.expect_code(0);
    assert_eq!(bed.manifests().await.len(), 2, "the nightly retention pruned a backup the lock protects:\n{}", second.stderr);

    let out = bed.run(&["retention"]).await;
    out.expect_code(0);
    assert!(
        out.stdout.contains("object-lock") && out.stdout.contains("object lock: 1 backup(s)"),
        "retention does not report the locked backup:\n{}",
        out.stdout
    );
    assert_eq!(bed.manifests().await.len(), 2, "retention pruned a locked backup");
    bed.run(&["verify", "--all", "--deep"]).await.expect_code(0);

    // Only the bucket lock and the claims' bookkeeping may be written twice or deleted;
    // every part of a backup and every blob has exactly one version and no marker.
    let versions = moto.versions("backups");
    let mut seen = BTreeSet::new();
    for (key, marker) in &versions {
        if key.ends_with(catalog::LOCK) || key.ends_with(&catalog::BackupFile::Claim.name()) || key.ends_with(&catalog::BackupFile::Probe.name()) {
            continue;
        }
        assert!(!marker, "{key} was deleted (a delete marker over a locked version)");
        assert!(seen.insert(key.clone()), "{key} was written twice");
    }
    assert!(seen.iter().any(|k| k.starts_with("nightly/blobs/")), "no blob among the versions: {versions:?}");
}
