//! Restore and verify, proved by round trips on the real test bed.

use std::path::PathBuf;

use crate::support::*;
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use pachyderm_backup::demo::{chunk_content, chunk_key, chunk_size};

/// A toolset of another PostgreSQL major, fetched by scripts/fetch-postgres.sh.
fn pg_tools(major: u32) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("target/postgresql/{major}/bin"));
    assert!(dir.join("pg_restore").is_file(), "PostgreSQL {major} tools are missing: run scripts/fetch-postgres.sh 17.11.0 14.22.0 (scripts/test.sh does)");
    dir
}

async fn keys(store: &std::sync::Arc<dyn ObjectStore>) -> Vec<String> {
    let mut k: Vec<String> = store.list(None).map_ok(|m| m.location.to_string()).try_collect().await.expect("list");
    k.sort();
    k
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_after_destroying_the_source() {
    let bed = Bed::new(BedOptions { chunks: 60, ..Default::default() }).await;
    let before = (table_checksums(&bed.pg, "pachyderm"), table_checksums(&bed.pg, "dex"));
    let original_keys = keys(&bed.source).await;
    bed.run(&["run"]).await.expect_code(0);

    // Destroy the source: databases dropped, bucket emptied.
    bed.pg.psql("postgres", "DROP DATABASE pachyderm WITH (FORCE)").expect("drop");
    bed.pg.psql("postgres", "DROP DATABASE dex WITH (FORCE)").expect("drop");
    for k in &original_keys {
        bed.source.delete(&k.as_str().into()).await.expect("delete");
    }
    assert!(keys(&bed.source).await.is_empty());

    let out = run_with(&bed, restore_env(&bed.pg, &bed.source_url), &["restore"]).await;
    out.expect_code(0);
    assert!(out.stdout.contains("60 restored") && out.stdout.contains("0 mismatches"), "{}", out.stdout);
    assert_eq!((table_checksums(&bed.pg, "pachyderm"), table_checksums(&bed.pg, "dex")), before, "every table's rows are back");
    assert_eq!(keys(&bed.source).await, original_keys, "the same keys and no extra ones");
    for i in 1..=60 {
        assert!(read(&bed.source, &chunk_key(i)).await == chunk_content(i, chunk_size(i)), "chunk {i} restored byte-identical");
    }
    assert!(out.logs().iter().any(|l| l["message"] == "restore complete" && l["mismatches"] == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_tools_restore_into_older_servers() {
    let mut bed = Bed::new(BedOptions { chunks: 5, ..Default::default() }).await;
    let tools17 = pg_tools(17);
    bed.set("PG_BIN_DIR", &tools17.display().to_string());
    bed.run(&["run"]).await.expect_code(0);
    let m = bed.manifests().await.pop().expect("backup");
    assert!(m.databases[0].pg_dump_version.starts_with("17."), "dumped with tools 17: {:?}", m.databases[0]);
    // 15.4: pg_dump 17 has zstd: DUMP_COMPRESSION=auto takes zstd:1, and it restores.
    assert!(m.databases.iter().all(|d| d.compression.as_deref() == Some("zstd:1")), "{:?}", m.databases);
    let want = table_checksums(&bed.pg, "pachyderm");
    for server in [bed.pg.bin.clone(), pg_tools(14)] {
        let older = tokio::task::spawn_blocking(move || TempPostgres::start_with(server).expect("start the older server")).await.expect("join");
        let version = older.psql("postgres", "SHOW server_version").expect("version");
        let out = run_with(&bed, restore_env(&older, "file:///nonexistent"), &["restore", "--skip-objects"]).await;
        out.expect_code(0);
        assert!(
            out.stderr.contains("only the transaction_timeout setting the older server does not know"),
            "the newer tools' SET was met and tolerated:\n{}",
            out.stderr
        );
        assert_eq!(table_checksums(&older, "pachyderm"), want, "restored into server {}", version.trim());
        assert!(!table_checksums(&older, "dex").is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_object_restore_resumes_without_recopying() {
    let bed = Bed::new(BedOptions { buckets: Buckets::Local, chunks: 40, ..Default::default() }).await;
    bed.run(&["run"]).await.expect_code(0);
    let dest_dir = bed.dir.path().join("restored");
    std::fs::create_dir_all(&dest_dir).expect("dir");
    let dest: std::sync::Arc<dyn ObjectStore> = std::sync::Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&dest_dir).expect("store"));
    // What an interrupted restore left: 15 objects done, one written with wrong bytes.
    for i in 1..=15 {
        dest.put(&chunk_key(i).into(), chunk_content(i, chunk_size(i)).into()).await.expect("put");
    }
    dest.put(&chunk_key(16).into(), vec![0u8; chunk_size(16)].into()).await.expect("put");
    let url = format!("file://{}", dest_dir.display());
    let refused = run_with(&bed, restore_env(&bed.pg, &url), &["restore", "--skip-databases"]).await;
    refused.expect_code(1);
    assert!(refused.stderr.contains("--force"), "{}", refused.stderr);
    let out = run_with(&bed, restore_env(&bed.pg, &url), &["restore", "--skip-databases", "--force"]).await;
    out.expect_code(0);
    assert!(out.stdout.contains("25 restored") && out.stdout.contains("15 already there"), "{}", out.stdout);
    for i in 1..=40 {
        assert!(read(&dest, &chunk_key(i)).await == chunk_content(i, chunk_size(i)), "chunk {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_write_nothing() {
    let bed = Bed::new(BedOptions { buckets: Buckets::Local, chunks: 5, ..Default::default() }).await;
    bed.run(&["run"]).await.expect_code(0);
    let empty_dir = bed.dir.path().join("empty");
    std::fs::create_dir_all(&empty_dir).expect("dir");
    let empty_url = format!("file://{}", empty_dir.display());

    // Non-empty databases without --clean (the source server still has them).
    let out = run_with(&bed, restore_env(&bed.pg, &empty_url), &["restore"]).await;
    out.expect_code(1);
    assert!(out.stderr.contains("database pachyderm on the restore server is not empty") && out.stderr.contains("--clean"), "{}", out.stderr);
    assert_eq!(std::fs::read_dir(&empty_dir).expect("dir").count(), 0, "no object written");

    // A non-empty bucket without --force, into a fresh server: no database created.
    let fresh = tokio::task::spawn_blocking(|| TempPostgres::start().expect("start")).await.expect("join");
    let out = run_with(&bed, restore_env(&fresh, &bed.source_url), &["restore"]).await;
    out.expect_code(1);
    assert!(out.stderr.contains("is not empty") && out.stderr.contains("--force"), "{}", out.stderr);
    assert_eq!(fresh.psql("postgres", "SELECT count(*) FROM pg_database WHERE datname IN ('pachyderm', 'dex')").expect("q").trim(), "0");

    // An unknown backup id.
    let out = run_with(&bed, restore_env(&fresh, &empty_url), &["restore", "--backup", "19990101T000000Z"]).await;
    out.expect_code(1);
    assert!(out.stderr.contains("19990101T000000Z has no manifest"), "{}", out.stderr);
    assert_eq!(std::fs::read_dir(&empty_dir).expect("dir").count(), 0);

    // --clean replaces the content.
    bed.pg.psql("pachyderm", "DELETE FROM auth.role_bindings").expect("change");
    let out = run_with(&bed, restore_env(&bed.pg, &empty_url), &["restore", "--clean"]).await;
    out.expect_code(0);
    assert_eq!(bed.pg.psql("pachyderm", "SELECT count(*) FROM auth.role_bindings").expect("q").trim(), "200");

    // 10.6: the saved objects, as one List `kubectl apply -f -` takes in a new cluster:
    // pachd at its original replicas, no per-namespace or controller-owned object that
    // would collide, no address the old cluster allocated (a headless Service keeps None).
    let out = run_with(&bed, vec![], &["restore", "--cluster-objects"]).await;
    out.expect_code(0);
    let list: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not one JSON List ({e}):\n{}", out.stdout));
    assert_eq!((list["apiVersion"].as_str(), list["kind"].as_str()), (Some("v1"), Some("List")));
    let items = list["items"].as_array().expect("items");
    let named = |kind: &str, name: &str| items.iter().find(|i| i["kind"] == kind && i["metadata"]["name"] == name).cloned();
    assert_eq!(named("Deployment", "pachd").expect("pachd")["spec"]["replicas"], 1);
    assert!(named("ConfigMap", "kube-root-ca.crt").is_none() && named("ConfigMap", "console-lock").is_none(), "objects the cluster makes were saved");
    assert!(named("ConfigMap", "pachd-config").is_some());
    let pachd_svc = named("Service", "pachd").expect("service");
    assert!(pachd_svc["spec"].get("clusterIP").is_none() && pachd_svc["spec"].get("clusterIPs").is_none(), "{pachd_svc}");
    assert_eq!(named("Service", "pachd-peer").expect("headless")["spec"]["clusterIP"], "None");
    for item in items {
        let meta = item["metadata"].as_object().expect("metadata");
        for server_set in ["uid", "resourceVersion", "creationTimestamp", "namespace", "ownerReferences"] {
            assert!(!meta.contains_key(server_set), "{server_set} kept in {item}");
        }
    }
    assert!(out.stderr.contains("kubectl apply"), "what to do is said:\n{}", out.stderr);

    // A backup without cluster objects says so, and prints an empty List.
    let mut quiet = run_with(&bed, vec![("PAUSE_MODE".into(), "none".into()), ("CLUSTER_NAME".into(), "pachyderm".into())], &["run"]).await;
    quiet.expect_code(0);
    quiet = run_with(&bed, vec![], &["restore", "--cluster-objects"]).await;
    quiet.expect_code(0);
    assert!(quiet.stderr.contains("holds no cluster objects"), "{}", quiet.stderr);
    let empty: serde_json::Value = serde_json::from_str(&quiet.stdout).expect("json");
    assert_eq!(empty["items"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_deep_catches_altered_and_deleted_blobs() {
    let bed = Bed::new(BedOptions { buckets: Buckets::Local, chunks: 20, ..Default::default() }).await;
    bed.run(&["run"]).await.expect_code(0);
    bed.run(&["verify"]).await.expect_code(0);
    let out = bed.run(&["verify", "--deep"]).await;
    out.expect_code(0);
    assert!(out.stdout.contains(" ok: "), "{}", out.stdout);

    let m = bed.manifests().await.pop().expect("backup");
    let mut reader = bed.catalog().read_listing(&m.backup_id, &m).await.expect("listing");
    let (a, b) = (reader.next_record().expect("r").expect("a"), reader.next_record().expect("r").expect("b"));
    // Same size, other bytes: only --deep can see it.
    bed.target.put(&a.blob.as_str().into(), vec![7u8; a.size as usize].into()).await.expect("alter");
    bed.run(&["verify"]).await.expect_code(0);
    let out = bed.run(&["verify", "--deep"]).await;
    out.expect_code(1);
    assert!(out.stdout.contains(&format!("object {} (blob {}): checksum", a.key, a.blob)), "{}", out.stdout);
    bed.target.delete(&b.blob.as_str().into()).await.expect("delete");
    let out = bed.run(&["verify"]).await;
    out.expect_code(1);
    assert!(out.stdout.contains(&format!("object {} (blob {}): missing", b.key, b.blob)), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_drill_checks_metadata_against_objects() {
    let bed = Bed::new(BedOptions { chunks: 12, ..Default::default() }).await;
    bed.run(&["run"]).await.expect_code(0);
    let out = run_with(&bed, restore_env(&bed.pg, ""), &["verify", "--drill"]).await;
    out.expect_code(0);
    assert!(out.logs().iter().any(|l| l["message"] == "drill: metadata and objects compared" && l["chunks"] == 12 && l["missing"] == 0), "{}", out.stderr);
    assert_eq!(bed.pg.psql("postgres", "SELECT count(*) FROM pg_database WHERE datname LIKE 'pbdrill%'").expect("q").trim(), "0", "scratch databases dropped");

    // A backup whose listing lacks a chunk its metadata references. A run no longer
    // makes one (it fails, naming the chunk); a backup written by an older version that
    // listed a bucket which had lost the object looks like this.
    let m = bed.manifests().await.pop().expect("backup");
    let mut writer = pachyderm_backup::catalog::ListingWriter::new().expect("a temporary file");
    for r in bed.listing(&m).await.into_iter().filter(|r| r.key != chunk_key(7)) {
        writer.push(&r).expect("push");
    }
    let (bytes, sha) = writer.finish().expect("finish");
    let mut damaged = m.clone();
    damaged.objects.listing_sha256 = Some(sha);
    damaged.objects.counts.count -= 1;
    bed.catalog().put_listing(&m.backup_id, &bytes).await.expect("put listing");
    bed.target
        .put(&pachyderm_backup::catalog::BackupFile::Manifest.path(&m.backup_id), serde_json::to_vec(&damaged).expect("json").into())
        .await
        .expect("put manifest");
    let out = run_with(&bed, restore_env(&bed.pg, ""), &["verify", "--drill"]).await;
    out.expect_code(1);
    assert!(out.stdout.contains("1 live chunk(s) referenced by storage.chunk_objects are missing") && out.stdout.contains(&chunk_key(7)), "{}", out.stdout);
    assert_eq!(bed.pg.psql("postgres", "SELECT count(*) FROM pg_database WHERE datname LIKE 'pbdrill%'").expect("q").trim(), "0");
}

/// A dump within RESTORE_SCRATCH_LIMIT is downloaded to a scratch file, checked whole,
/// and only then restored by parallel pg_restore jobs: a damaged dump writes nothing to
/// the database. Above the limit (here 0) it streams into pg_restore as before, and a
/// damaged dump is found once pg_restore has written what came before the damage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_within_the_scratch_limit_is_checked_whole_before_anything_is_written() {
    let bed = Bed::new(BedOptions { buckets: Buckets::Local, chunks: 5, ..Default::default() }).await;
    let before = (table_checksums(&bed.pg, "pachyderm"), table_checksums(&bed.pg, "dex"));
    bed.run(&["run"]).await.expect_code(0);
    let m = bed.manifests().await.pop().expect("a backup");
    let drop_both = || {
        for db in ["pachyderm", "dex"] {
            bed.pg.psql("postgres", &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).expect("drop");
        }
    };
    let restore = |extra: &[(&str, &str)]| {
        let mut env = restore_env(&bed.pg, "");
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        run_with(&bed, env, &["restore", "--skip-objects"])
    };

    drop_both();
    let out = restore(&[]).await;
    out.expect_code(0);
    let scratch: Vec<String> = out.said().into_iter().filter(|l| l.contains("restored from a scratch file")).collect();
    assert_eq!(scratch.len(), 2, "both dumps (default RESTORE_JOBS=4, RESTORE_SCRATCH_LIMIT=1GiB): {}", out.stderr);
    assert_eq!((table_checksums(&bed.pg, "pachyderm"), table_checksums(&bed.pg, "dex")), before, "every table's rows are back");

    // The pachyderm dump altered in its last bytes, its size kept.
    let path: object_store::path::Path = format!("backups/{}/databases/pachyderm.pgdump", m.backup_id).into();
    let mut dump = read(&bed.target, path.as_ref()).await.to_vec();
    let at = dump.len() - 10;
    dump[at] ^= 0xff;
    bed.target.put(&path, dump.into()).await.expect("alter the dump");

    drop_both();
    let out = restore(&[]).await;
    out.expect_code(1);
    assert!(out.stderr.contains("nothing was written to database pachyderm"), "{}", out.stderr);
    assert!(table_checksums(&bed.pg, "pachyderm").is_empty(), "no table of the damaged dump was restored");

    drop_both();
    let out = restore(&[("RESTORE_SCRATCH_LIMIT", "0")]).await;
    out.expect_code(1);
    assert!(!out.stderr.contains("scratch file"), "streamed: {}", out.stderr);
    assert!(out.stderr.contains("cannot be trusted; drop it"), "{}", out.stderr);
    assert!(!table_checksums(&bed.pg, "pachyderm").is_empty(), "streamed, pg_restore wrote before the damage was known");
}

/// The databases and the objects are restored side by side: with pg_restore held on a
/// lock of `pfs.commits` (its `--clean` drop waits), every object is restored meanwhile,
/// and the restore finishes once the lock goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_are_restored_while_a_database_restore_waits() {
    let bed = Bed::new(BedOptions { buckets: Buckets::Local, chunks: 12, ..Default::default() }).await;
    bed.run(&["run"]).await.expect_code(0);
    let dest_dir = bed.dir.path().join("restored");
    std::fs::create_dir_all(&dest_dir).expect("dir");
    let lock = TableLock::take(&bed.pg).await;
    let mut env = bed.env();
    env.extend(restore_env(&bed.pg, &format!("file://{}", dest_dir.display())));
    let running = Running::start(binary(&["restore", "--clean"], &env));
    let chunks = bed.chunks;
    wait_until("every object restored while pg_restore waits on the lock", std::time::Duration::from_secs(120), || {
        (1..=chunks).all(|i| dest_dir.join(chunk_key(i)).is_file())
    })
    .await;
    let waiting = bed.pg.psql("postgres", "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'").expect("query");
    assert_ne!(waiting.trim(), "0", "pg_restore waits on the lock while the objects are restored");
    lock.release().await;
    running.finish().await.expect_code(0);
    let dest: std::sync::Arc<dyn ObjectStore> = std::sync::Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&dest_dir).expect("store"));
    for i in 1..=chunks {
        assert!(read(&dest, &chunk_key(i)).await == chunk_content(i, chunk_size(i)), "chunk {i}");
    }
}
