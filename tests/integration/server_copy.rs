//! S3 server-side copy (COPY_MODE), proved at the wire: the source and the backup
//! bucket are two buckets of one moto behind the recording proxy, reached with one set
//! of credentials, so every request of the run is seen and counted there.

use crate::support::fault_proxy::{FaultProxy, Faults, Recorded};
use crate::support::*;
use object_store::{ObjectStore, ObjectStoreExt};
use pachyderm_backup::catalog::{self, ObjectRecord};
use pachyderm_backup::demo::{chunk_content, chunk_key, chunk_size};
use sha2::{Digest, Sha256};

const CHUNKS: u64 = 24;

/// A bed whose two buckets are reached through the proxy with the same endpoint and
/// credentials: what `COPY_MODE=auto` copies server-side.
async fn bed_behind_proxy(faults: Faults) -> (Bed, FaultProxy) {
    let mut bed = Bed::new(BedOptions { chunks: CHUNKS, ..Default::default() }).await;
    let proxy = FaultProxy::start(bed.moto.as_ref().expect("an S3 bed").port).await;
    proxy.set(faults);
    bed.set("AWS_ENDPOINT", &proxy.url());
    (bed, proxy)
}

async fn listing(bed: &Bed, m: &catalog::Manifest) -> Vec<ObjectRecord> {
    let mut reader = bed.catalog().read_listing(&m.backup_id, m).await.expect("listing");
    let mut out = Vec::new();
    while let Some(r) = reader.next_record().expect("record") {
        out.push(r);
    }
    out
}

/// Every record's SHA-256 is that of the source object's real bytes, and every chunk
/// is in the listing.
async fn assert_real_checksums(bed: &Bed, records: &[ObjectRecord]) {
    assert_eq!(records.len() as u64, CHUNKS, "{records:?}");
    for r in records {
        let bytes = read(&bed.source, &r.key).await;
        assert_eq!(r.sha256, hex::encode(Sha256::digest(&bytes)), "{}: the recorded SHA-256 is the content's", r.key);
        assert_eq!(r.size, bytes.len() as u64, "{}", r.key);
    }
}

fn source_body_gets(requests: &[Recorded]) -> usize {
    requests.iter().filter(|r| r.is_object_get() && r.path.starts_with("/pach-data/")).count()
}

fn copies(requests: &[Recorded]) -> Vec<&Recorded> {
    requests.iter().filter(|r| r.copy_source).collect()
}

/// The backup restores byte for byte and verifies deep.
async fn assert_restores(bed: &Bed) {
    bed.run(&["verify", "--deep"]).await.expect_code(0);
    let dest_dir = bed.dir.path().join("restored");
    std::fs::create_dir_all(&dest_dir).expect("dir");
    let url = format!("file://{}", dest_dir.display());
    run_with(bed, restore_env(&bed.pg, &url), &["restore", "--skip-databases"]).await.expect_code(0);
    let dest: std::sync::Arc<dyn ObjectStore> = std::sync::Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&dest_dir).expect("store"));
    for i in 1..=CHUNKS {
        assert!(read(&dest, &chunk_key(i)).await == chunk_content(i, chunk_size(i)), "chunk {i} restored byte-identical");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_account_copies_server_side_without_reading_a_byte_and_records_the_stores_sha256() {
    let (bed, proxy) = bed_behind_proxy(Faults::default()).await;
    let out = bed.run(&["run"]).await;
    out.expect_code(0);
    assert!(out.said().iter().any(|l| l.contains("copied server-side (S3 CopyObject)")), "{}", out.stderr);

    let requests = proxy.requests();
    assert_eq!(
        source_body_gets(&requests),
        0,
        "no object body of the source was read: {:?}",
        requests.iter().filter(|r| r.is_object_get()).collect::<Vec<_>>()
    );
    let copies = copies(&requests);
    assert_eq!(copies.len() as u64, CHUNKS, "one CopyObject per object");
    assert!(copies.iter().all(|r| r.status == 200 && r.method == "PUT" && r.path.starts_with("/backups/nightly/")), "{copies:?}");
    // Each copy answered with the listed ETag (an MD5): it is the listed object, and its
    // size needs no HEAD.
    let heads: Vec<&Recorded> = requests.iter().filter(|r| r.method == "HEAD" && r.path.starts_with("/backups/nightly/blobs/")).collect();
    assert!(heads.is_empty(), "the copies were read back: {heads:?}");

    let m = bed.manifests().await.pop().expect("a backup");
    assert_eq!(m.objects.counts.copied, CHUNKS, "counted as copied");
    assert_real_checksums(&bed, &listing(&bed, &m).await).await;
    assert_restores(&bed).await;
}

/// A restore into a bucket of the same account copies every blob back server-side: no
/// blob is read through the process, and each copy's SHA-256, given by the store, must
/// be the recorded one. A blob damaged in the pool is never restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_within_one_account_copies_server_side_and_never_restores_damage() {
    let (bed, proxy) = bed_behind_proxy(Faults::default()).await;
    bed.run(&["run"]).await.expect_code(0);
    let moto = bed.moto.as_ref().expect("an S3 bed");
    moto.create_bucket("restored");
    proxy.clear_requests();
    let out = run_with(&bed, restore_env(&bed.pg, "s3://restored"), &["restore", "--skip-databases"]).await;
    out.expect_code(0);
    assert!(out.said().iter().any(|l| l.contains("copied server-side (S3 CopyObject)")), "{}", out.stderr);
    let requests = proxy.requests();
    let blob_gets: Vec<_> = requests.iter().filter(|r| r.is_object_get() && r.path.starts_with("/backups/nightly/blobs/")).collect();
    assert!(blob_gets.is_empty(), "no blob read through the process: {blob_gets:?}");
    let copies = copies(&requests);
    assert_eq!(copies.len() as u64, CHUNKS, "one CopyObject per object");
    assert!(copies.iter().all(|r| r.status == 200 && r.path.starts_with("/restored/")), "{copies:?}");
    // The bucket was empty: nothing in it to skip, nothing looked for first.
    let heads: Vec<_> = requests.iter().filter(|r| r.method == "HEAD" && r.path.starts_with("/restored/")).collect();
    assert!(heads.is_empty(), "objects looked for in an empty restore bucket: {heads:?}");
    let restored = moto.store("restored");
    for i in 1..=CHUNKS {
        assert!(read(&restored, &chunk_key(i)).await == chunk_content(i, chunk_size(i)), "chunk {i} restored byte-identical");
    }

    // One blob of the pool altered, its size kept: the store's SHA-256 of the copy
    // differs from the record, the copy is removed, and the restore fails naming it.
    let m = bed.manifests().await.pop().expect("a backup");
    let victim = listing(&bed, &m).await.remove(3);
    let mut bytes = read(&bed.target, &victim.blob).await.to_vec();
    bytes[0] ^= 0xff;
    bed.target.put(&victim.blob.as_str().into(), bytes.into()).await.expect("alter a blob");
    moto.create_bucket("restored-again");
    let out = run_with(&bed, restore_env(&bed.pg, "s3://restored-again"), &["restore", "--skip-databases"]).await;
    out.expect_code(1);
    assert!(out.stderr.contains(&victim.key) && out.stderr.contains("not the recorded SHA-256"), "{}", out.stderr);
    let again = moto.store("restored-again");
    assert!(again.head(&victim.key.as_str().into()).await.is_err(), "the damaged object is not in the restore bucket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_mode_stream_reads_every_object_through_the_process() {
    let (mut bed, proxy) = bed_behind_proxy(Faults::default()).await;
    bed.set("COPY_MODE", "stream");
    let out = bed.run(&["run"]).await;
    out.expect_code(0);
    assert!(out.said().iter().any(|l| l.contains("streamed through this process: COPY_MODE=stream")), "{}", out.stderr);
    let requests = proxy.requests();
    assert!(source_body_gets(&requests) as u64 >= CHUNKS, "every object read");
    assert!(copies(&requests).is_empty(), "no CopyObject");
    let m = bed.manifests().await.pop().expect("a backup");
    assert_real_checksums(&bed, &listing(&bed, &m).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_server_side_copy_is_streamed_and_said_once() {
    let (bed, proxy) = bed_behind_proxy(Faults { refuse_copy: true, ..Default::default() }).await;
    let out = bed.run(&["run"]).await;
    out.expect_code(0);
    let said: Vec<String> = out.said().into_iter().filter(|l| l.contains("refused a server-side copy")).collect();
    assert_eq!(said.len(), 1, "said once: {}", out.stderr);
    assert!(said[0].contains("403") && said[0].contains("AccessDenied"), "{said:?}");

    let requests = proxy.requests();
    let copies = copies(&requests);
    assert_eq!(copies.len() as u64, CHUNKS, "each object tried server-side once");
    assert!(copies.iter().all(|r| r.fault.as_deref() == Some("refuse_copy")), "{copies:?}");
    assert!(source_body_gets(&requests) as u64 >= CHUNKS, "then streamed");

    let m = bed.manifests().await.pop().expect("a backup");
    assert_eq!(m.objects.counts.copied, CHUNKS);
    assert_real_checksums(&bed, &listing(&bed, &m).await).await;
    assert_restores(&bed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_mode_server_on_a_local_source_is_a_configuration_error() {
    let mut bed = Bed::new(BedOptions { buckets: Buckets::Local, chunks: 1, ..Default::default() }).await;
    bed.set("COPY_MODE", "server");
    let out = bed.run(&["run"]).await;
    out.expect_code(2);
    assert!(out.stderr.contains("COPY_MODE") && out.stderr.contains("is not an S3 bucket"), "{}", out.stderr);
}
