//! Azure and GCS proven on real emulators (Azurite, fake-gcs-server), configured with
//! the variables a user sets: a full cycle, a second run that reuses everything, and a
//! restore that gives back the databases and every object, byte for byte.

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use pachyderm_backup::demo::{chunk_content, chunk_key, chunk_size};

use crate::support::fault_proxy::{FaultProxy, Recorded};
use crate::support::*;

async fn keys(store: &Arc<dyn ObjectStore>) -> Vec<String> {
    let mut k: Vec<String> = store.list(None).map_ok(|m| m.location.to_string()).try_collect().await.expect("list");
    k.sort();
    k
}

/// Two runs: the first copies every chunk (saying `how`), the second reuses them all.
async fn two_runs(bed: &Bed, how: &str) {
    let first = bed.run(&["run"]).await;
    first.expect_code(0);
    let m = bed.manifests().await;
    assert_eq!(m.len(), 1);
    assert_eq!((m[0].objects.counts.count, m[0].objects.counts.copied), (bed.chunks, bed.chunks), "the first run copies every chunk");
    assert!(first.said().iter().any(|l| l.contains(how)), "{}", first.stderr);

    bed.run(&["run"]).await.expect_code(0);
    let newest = bed.manifests().await.pop().expect("a second backup");
    assert_eq!((newest.objects.counts.copied, newest.objects.counts.reused), (0, bed.chunks), "the second run reuses everything");
    bed.run(&["verify", "--deep"]).await.expect_code(0);
}

/// Drops both databases, so that the restore has to bring them back.
fn drop_databases(bed: &Bed) {
    bed.pg.psql("postgres", "DROP DATABASE pachyderm WITH (FORCE)").expect("drop");
    bed.pg.psql("postgres", "DROP DATABASE dex WITH (FORCE)").expect("drop");
}

/// An Azure source and an Azure backup bucket (two containers of one account, reached
/// at its own endpoint with its account key: `AZURE_STORAGE_ACCOUNT_NAME`,
/// `AZURE_STORAGE_ACCOUNT_KEY`, `AZURE_STORAGE_ENDPOINT`), COPY_MODE=stream: streamed,
/// reused, restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_source_and_backup_bucket_round_trip() {
    let mut bed = Bed::new(BedOptions { buckets: Buckets::Azure, chunks: 30, ..Default::default() }).await;
    bed.set("COPY_MODE", "stream");
    let before = (table_checksums(&bed.pg, "pachyderm"), table_checksums(&bed.pg, "dex"));
    let original = keys(&bed.source).await;
    assert_eq!(original.len() as u64, bed.chunks);
    two_runs(&bed, "objects are streamed through this process: COPY_MODE=stream").await;
    let m = bed.manifests().await.pop().expect("a backup");
    assert_eq!((m.format_version, m.objects.counts.pending), (1, 0), "streamed: every SHA-256 computed on the way");

    // A restore from Azure streams: its copies would carry no SHA-256 to check.
    let mut forced = restore_env(&bed.pg, &bed.source_url);
    forced.push(("COPY_MODE".into(), "server".into()));
    let out = run_with(&bed, forced, &["restore"]).await;
    out.expect_code(2);
    assert!(out.stderr.contains("COPY_MODE") && out.stderr.contains("no SHA-256"), "{}", out.stderr);

    drop_databases(&bed);
    for k in &original {
        bed.source.delete(&k.as_str().into()).await.expect("delete");
    }
    let out = run_with(&bed, restore_env(&bed.pg, &bed.source_url), &["restore"]).await;
    out.expect_code(0);
    assert!(out.stdout.contains("30 restored") && out.stdout.contains("0 mismatches"), "{}", out.stdout);
    assert_eq!((table_checksums(&bed.pg, "pachyderm"), table_checksums(&bed.pg, "dex")), before, "every table's rows are back");
    assert_eq!(keys(&bed.source).await, original, "the same keys and no extra ones");
    for i in 1..=bed.chunks {
        assert!(read(&bed.source, &chunk_key(i)).await == chunk_content(i, chunk_size(i)), "chunk {i} restored byte-identical");
    }
}

/// A GCS source (`SOURCE_GOOGLE_SERVICE_ACCOUNT_KEY`, `SOURCE_GOOGLE_BASE_URL`) into a
/// local backup bucket: streamed, reused, and restored into a local bucket (the
/// emulator takes no writes through GCS' XML API, which object_store writes with).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_source_round_trip() {
    let bed = Bed::new(BedOptions { buckets: Buckets::GcsSource, chunks: 30, ..Default::default() }).await;
    let before = (table_checksums(&bed.pg, "pachyderm"), table_checksums(&bed.pg, "dex"));
    let original = keys(&bed.source).await;
    two_runs(&bed, "objects are streamed through this process: TARGET_URL is not an S3 bucket").await;

    drop_databases(&bed);
    let restored_dir = bed.dir.path().join("restored");
    std::fs::create_dir_all(&restored_dir).expect("restore dir");
    let out = run_with(&bed, restore_env(&bed.pg, &format!("file://{}", restored_dir.display())), &["restore"]).await;
    out.expect_code(0);
    assert!(out.stdout.contains("30 restored") && out.stdout.contains("0 mismatches"), "{}", out.stdout);
    assert_eq!((table_checksums(&bed.pg, "pachyderm"), table_checksums(&bed.pg, "dex")), before, "every table's rows are back");
    let restored: Arc<dyn ObjectStore> = Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&restored_dir).expect("local store"));
    assert_eq!(keys(&restored).await, original, "the source's keys, no extra ones");
    for i in 1..=bed.chunks {
        assert!(read(&restored, &chunk_key(i)).await == chunk_content(i, chunk_size(i)), "chunk {i} restored byte-identical");
    }
}

/// Two containers of one Azure account, behind the recording proxy: the run copies
/// every object server-side (Copy Blob From URL between SAS URLs: no body read through
/// the process), records each SHA-256 pending with the copy's ETag, `verify --deep`
/// records them, the next run reuses every blob with its SHA-256, and the restore
/// streams each blob back, checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_containers_of_one_account_copy_server_side() {
    let mut bed = Bed::new(BedOptions { buckets: Buckets::Azure, chunks: 30, ..Default::default() }).await;
    let port = bed.azurite.as_ref().expect("an Azure bed").port;
    let proxy = FaultProxy::start(port).await;
    bed.set("AZURE_STORAGE_ENDPOINT", &format!("{}/devstoreaccount1", proxy.url()));
    let out = bed.run(&["run"]).await;
    out.expect_code(0);
    assert!(out.said().iter().any(|l| l.contains("copied server-side (Azure Copy Blob From URL)")), "{}", out.stderr);
    let requests = proxy.requests();
    let body_gets: Vec<&Recorded> = requests.iter().filter(|r| r.method == "GET" && r.path.starts_with("/devstoreaccount1/pach-data/")).collect();
    assert!(body_gets.is_empty(), "no object of the source read through the process: {body_gets:?}");
    let copies: Vec<&Recorded> = requests.iter().filter(|r| r.copy_source).collect();
    assert_eq!(copies.len() as u64, bed.chunks, "one copy per object");
    assert!(copies.iter().all(|r| r.method == "PUT" && r.status == 202 && r.path.starts_with("/devstoreaccount1/backups/nightly/blobs/")), "{copies:?}");

    let first = bed.manifests().await.pop().expect("a backup");
    assert_eq!((first.format_version, first.objects.counts.pending), (2, bed.chunks), "{:?}", first.objects.counts);
    assert!(bed.listing(&first).await.iter().all(|r| r.sha256.is_none() && r.blob_etag.is_some()), "pending, with the copy's ETag");
    let out = bed.run(&["verify", "--deep"]).await;
    out.expect_code(0);
    assert!(out.stdout.contains(&format!("the SHA-256 of {} blob(s) copied without one recorded", bed.chunks)), "{}", out.stdout);
    for r in bed.listing(&first).await {
        let bytes = read(&bed.source, &r.key).await;
        assert_eq!(r.sha256, Some(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes))), "{}: recorded by verify --deep", r.key);
    }

    proxy.clear_requests();
    bed.run(&["run"]).await.expect_code(0);
    let second = bed.manifests().await.pop().expect("a second backup");
    assert_eq!((second.objects.counts.reused, second.objects.counts.pending, second.format_version), (bed.chunks, 0, 1), "{:?}", second.objects.counts);
    assert!(proxy.requests().iter().all(|r| !r.copy_source), "nothing copied again");

    bed.azurite.as_ref().expect("an Azure bed").create_container("restored");
    let out = run_with(&bed, restore_env(&bed.pg, "az://restored"), &["restore", "--skip-databases"]).await;
    out.expect_code(0);
    assert!(out.said().iter().any(|l| l.contains("no SHA-256 to check a restored blob against")), "{}", out.stderr);
    let restored = bed.azurite.as_ref().expect("an Azure bed").store("restored");
    for i in 1..=bed.chunks {
        assert!(read(&restored, &chunk_key(i)).await == chunk_content(i, chunk_size(i)), "chunk {i} restored byte-identical");
    }
}

/// GCS rewrite between two buckets of one project on fake-gcs-server, at the level of
/// the copier a run uses (the emulator takes no writes through object_store's XML API,
/// so a whole run cannot write its catalog there): configured from the variables a user
/// sets, `auto` routes it server-side, every object is copied by the service with no
/// body read through the process, each copy's MD5 (the record's pending check) is the
/// content's, and a missing source object is said to be missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_buckets_of_one_project_copy_server_side_by_rewrite() {
    use pachyderm_backup::config::{CopyMode, RawEnv, RunConfig};
    use pachyderm_backup::server_copy::{Copied, Route, ServerCopy, route};
    let bed = Bed::new(BedOptions { buckets: Buckets::GcsSource, chunks: 6, ..Default::default() }).await;
    let gcs = bed.gcs.as_ref().expect("a GCS bed");
    let proxy = FaultProxy::start(gcs.port).await;
    let mut env: Vec<(String, String)> =
        bed.env().into_iter().filter(|(k, _)| !k.starts_with("SOURCE_GOOGLE_") && k != "SOURCE_URL" && k != "TARGET_URL").collect();
    env.extend(gcs.env("").into_iter().map(|(k, v)| if k == "GOOGLE_BASE_URL" { (k, proxy.url()) } else { (k, v) }));
    env.push(("SOURCE_URL".into(), "gs://source".into()));
    env.push(("TARGET_URL".into(), "gs://target/nightly".into()));
    let cfg = RunConfig::from_env(&RawEnv::from_iter(env).expect("the variables")).expect("a configuration");
    assert_eq!(route(CopyMode::Auto, &cfg.source, &cfg.target), Route::Server);
    let copier = ServerCopy::new(&cfg.source, &cfg.target).expect("the copier");
    assert_eq!(copier.request(), "GCS rewrite");

    let target: Arc<dyn ObjectStore> = Arc::new(
        object_store::gcp::GoogleCloudStorageBuilder::new()
            .with_bucket_name("target")
            .with_base_url(format!("http://127.0.0.1:{}", gcs.port).as_str())
            .with_service_account_key(crate::support::emulators::FakeGcs::KEY)
            .with_client_options(object_store::ClientOptions::new().with_allow_http(true))
            .build()
            .expect("the target bucket"),
    );
    for i in 1..=bed.chunks {
        let (key, content) = (chunk_key(i), chunk_content(i, chunk_size(i)));
        let blob = format!("blobs/{key}@0");
        match copier.copy(&key, &blob, None, content.len() as u64).await {
            Ok(Copied::Done { sha256: None, etag: Some(md5) }) => {
                assert_eq!(md5, hex::encode(<md5::Md5 as md5::Digest>::digest(&content)), "{key}: the copy's MD5 is the content's")
            }
            other => panic!("{key}: {other:?}"),
        }
        assert!(read(&target, &format!("nightly/{blob}")).await == content, "{key} copied byte-identical");
    }
    assert!(matches!(copier.copy("chunk/absent", "blobs/absent", None, 1).await, Ok(Copied::Missing)), "a missing source object");

    let requests = proxy.requests();
    let gets: Vec<&Recorded> = requests.iter().filter(|r| r.method == "GET").collect();
    assert!(gets.is_empty(), "no object read through the copier: {gets:?}");
    let rewrites = requests.iter().filter(|r| r.method == "POST" && r.path.contains("/rewriteTo/b/target/o/nightly%2Fblobs%2F")).count();
    assert_eq!(rewrites as u64, bed.chunks + 1, "{requests:?}");
}
