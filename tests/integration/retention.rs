//! Retention and garbage collection over 14 simulated nights (injected clock) against
//! the real S3 server: the kept set, the swept pool, and every kept backup still whole.

use std::collections::{BTreeMap, BTreeSet};

use crate::support::*;
use chrono::{TimeZone, Utc};
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use pachyderm_backup::config::{RawEnv, RunConfig};
use pachyderm_backup::cycle;
use pachyderm_backup::demo::{chunk_content, chunk_key, chunk_size};

fn config(bed: &Bed) -> RunConfig {
    let mut env = bed.env();
    env.extend([("PAUSE_MODE".to_string(), "none".to_string()), ("GC_GRACE".to_string(), "4h".to_string())]);
    RunConfig::from_env(&RawEnv::from_iter(env).expect("env")).expect("valid configuration")
}

fn never_stopped() -> cycle::Stop {
    tokio::sync::watch::channel(None).1
}

async fn all_objects(store: &std::sync::Arc<dyn ObjectStore>) -> BTreeMap<String, u64> {
    store.list(None).map_ok(|m| (m.location.to_string(), m.size)).try_collect().await.expect("list")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fourteen_nights_keep_the_expected_backups_and_sweep_the_rest() {
    let bed = Bed::new(BedOptions { chunks: 30, ..Default::default() }).await;
    // 2030-01-01 is a Tuesday: ISO week 1 runs Dec 31 – Jan 6, week 2 Jan 7–13.
    let first_night = Utc.with_ymd_and_hms(2030, 1, 1, 2, 0, 0).single().expect("valid");
    let mut present: BTreeSet<u64> = (1..=30).collect();
    let mut next = 31;
    let mut contents: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();

    for night in 0..14 {
        if night > 0 {
            // Between runs Pachyderm writes new chunks and collects old ones.
            bed.add_chunks(next..=next + 2).await;
            present.extend(next..=next + 2);
            next += 3;
            let oldest = *present.iter().next().expect("a chunk");
            bed.collect_chunks(oldest..=oldest).await;
            present.remove(&oldest);
        }
        if night == 4 {
            // A run that died before its manifest.
            bed.target.put(&"backups/20291231T000000Z/databases/pachyderm.pgdump".into(), "partial".into()).await.expect("put");
        }
        let summary = cycle::run_at(config(&bed), never_stopped(), first_night + chrono::Duration::days(night)).await.expect("a nightly run");
        if night > 0 {
            assert_eq!(
                (summary.manifest.objects.counts.copied, summary.manifest.objects.counts.reused),
                (3, present.len() as u64 - 3),
                "night {night} copies only the new chunks"
            );
        }
        contents.insert(summary.manifest.backup_id.clone(), present.clone());
    }

    // keep-daily 7: Jan 8–14; keep-weekly 4: Jan 14, Jan 13, Jan 6 (three weeks have backups);
    // keep-monthly 6: Jan 14; MIN_KEEP 3 is met.
    let kept: Vec<String> = bed.manifests().await.iter().map(|m| m.backup_id.clone()).collect();
    let expected: Vec<String> = [6, 8, 9, 10, 11, 12, 13, 14].iter().map(|d| format!("203001{d:02}T020000Z")).collect();
    assert_eq!(kept, expected);
    assert!(!bed.folders().await.contains(&"20291231T000000Z".to_string()), "the dead run's folder was collected");

    // The pool holds exactly the blobs the kept manifests reference.
    let mut referenced = BTreeSet::new();
    let mut logical = 0u64;
    for m in bed.manifests().await {
        logical += m.objects.counts.bytes + m.databases.iter().map(|d| d.size).sum::<u64>();
        let mut keys = BTreeSet::new();
        for r in bed.listing(&m).await {
            // Every kept backup still restores byte-identical objects.
            let i: u64 = contents[&m.backup_id]
                .iter()
                .copied()
                .find(|i| chunk_key(*i) == r.key)
                .unwrap_or_else(|| panic!("{} lists an unexpected {}", m.backup_id, r.key));
            assert!(read(&bed.target, &r.blob).await == chunk_content(i, chunk_size(i)), "{} of {} is not whole", r.key, m.backup_id);
            keys.insert(r.key.clone());
            referenced.insert(r.blob);
        }
        let want: BTreeSet<String> = contents[&m.backup_id].iter().map(|i| chunk_key(*i)).collect();
        assert_eq!(keys, want, "the listing of {}", m.backup_id);
    }
    let everything = all_objects(&bed.target).await;
    let pool: BTreeSet<String> = everything.keys().filter(|k| k.starts_with("blobs/")).cloned().collect();
    assert_eq!(pool, referenced, "unreferenced blobs were swept, referenced ones kept");
    let stored: u64 = everything.values().sum();
    eprintln!(
        "14 nights: {} backups kept, {stored} bytes stored for {logical} bytes of kept backups ({:.1}%)",
        kept.len(),
        100.0 * stored as f64 / logical as f64
    );
    assert!(stored < logical, "the pool shares blobs between backups");

    // A failed run leaves retention untouched.
    let before = all_objects(&bed.target).await;
    let mut broken = config(&bed);
    broken.database.server.port = pachyderm_backup::demo::free_port();
    broken.retention.daily = 1;
    let failed = cycle::run_at(broken, never_stopped(), first_night + chrono::Duration::days(40)).await;
    assert!(failed.is_err());
    assert_eq!(all_objects(&bed.target).await, before, "a failed run deleted something");
}
