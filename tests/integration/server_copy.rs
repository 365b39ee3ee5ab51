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
        assert_eq!(r.sha256.as_deref(), Some(hex::encode(Sha256::digest(&bytes)).as_str()), "{}: the recorded SHA-256 is the content's", r.key);
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
    assert!(out.stderr.contains("COPY_MODE") && out.stderr.contains("is not an S3 bucket (s3://), an Azure container"), "{}", out.stderr);
}

/// A bed whose source and backup bucket are two buckets of one s3s-fs, reached through
/// the recording proxy with one set of credentials: s3s-fs copies server-side but
/// gives no SHA-256 of its copies (a store that cannot compute one).
async fn s3s_bed() -> (Bed, S3sFs, FaultProxy) {
    let mut bed = Bed::new(BedOptions { chunks: CHUNKS, ..Default::default() }).await;
    let s3s = S3sFs::start().await;
    s3s.create_bucket("pach-data");
    s3s.create_bucket("backups");
    let source = s3s.store("pach-data");
    for i in 1..=CHUNKS {
        source.put(&chunk_key(i).as_str().into(), chunk_content(i, chunk_size(i)).into()).await.expect("seed the s3s-fs source");
    }
    let proxy = FaultProxy::start(s3s.port).await;
    for (k, v) in s3s.env("", &proxy.url()) {
        bed.set(&k, &v);
    }
    bed.set("PAUSE_MODE", "none");
    bed.source = source;
    bed.target = std::sync::Arc::new(object_store::prefix::PrefixStore::new(s3s.store("backups"), "nightly"));
    (bed, s3s, proxy)
}

/// A store that copies server-side without giving the copy's SHA-256 (s3s-fs): the
/// copies stay server-side, each record is marked pending with the copy's ETag (format
/// 2), the backup restores checked against that ETag's MD5, `verify --deep` reads every
/// blob once and records its SHA-256, and the next run carries the SHA-256s forward.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_without_the_stores_sha256_is_marked_pending_until_verify_deep_records_it() {
    let (bed, _s3s, proxy) = s3s_bed().await;
    let out = bed.run(&["run"]).await;
    out.expect_code(0);
    let requests = proxy.requests();
    assert_eq!(
        source_body_gets(&requests),
        0,
        "no object body of the source was read: {:?}",
        requests.iter().filter(|r| r.is_object_get()).collect::<Vec<_>>()
    );
    assert_eq!(copies(&requests).len() as u64, CHUNKS, "one CopyObject per object");

    let first = bed.manifests().await.pop().expect("a backup");
    assert_eq!(first.format_version, 2, "a listing with pending records is format 2");
    assert_eq!(first.objects.counts.pending, CHUNKS, "{:?}", first.objects.counts);
    let records = listing(&bed, &first).await;
    for r in &records {
        assert_eq!(r.sha256, None, "{}: pending", r.key);
        let etag = r.blob_etag.as_deref().unwrap_or_else(|| panic!("{}: the copy's ETag is recorded", r.key));
        assert_eq!(etag, hex::encode(<md5::Md5 as md5::Digest>::digest(read(&bed.source, &r.key).await)), "{}: s3s-fs's ETag is the content's MD5", r.key);
    }

    // Restored before any verify: every blob checked against its copy's ETag.
    let dest_dir = bed.dir.path().join("restored");
    std::fs::create_dir_all(&dest_dir).expect("dir");
    let url = format!("file://{}", dest_dir.display());
    run_with(&bed, restore_env(&bed.pg, &url), &["restore", "--skip-databases"]).await.expect_code(0);
    let dest: std::sync::Arc<dyn ObjectStore> = std::sync::Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&dest_dir).expect("store"));
    for i in 1..=CHUNKS {
        assert!(read(&dest, &chunk_key(i)).await == chunk_content(i, chunk_size(i)), "chunk {i} restored byte-identical");
    }

    bed.run(&["verify"]).await.expect_code(0);
    let checksums = catalog::BackupFile::Checksums.path(&first.backup_id);
    assert!(bed.target.head(&checksums).await.is_err(), "a shallow verify reads no blob and records nothing");
    let out = bed.run(&["verify", "--deep"]).await;
    out.expect_code(0);
    assert!(out.stdout.contains(&format!("the SHA-256 of {CHUNKS} blob(s) copied without one recorded")), "{}", out.stdout);
    let written = bed.target.head(&checksums).await.expect("verify --deep wrote the checksums file");
    // Read back as every reader reads it: the pending records are filled.
    assert_real_checksums(&bed, &listing(&bed, &first).await).await;
    let out = bed.run(&["verify", "--deep"]).await;
    out.expect_code(0);
    assert!(!out.stdout.contains("recorded"), "written once: {}", out.stdout);
    assert_eq!(bed.target.head(&checksums).await.expect("still there").last_modified, written.last_modified, "written once");

    // The next run reuses every blob and records its SHA-256: nothing pending, format 1.
    bed.run(&["run"]).await.expect_code(0);
    let second = bed.manifests().await.pop().expect("a second backup");
    assert_ne!(second.backup_id, first.backup_id);
    assert_eq!((second.objects.counts.reused, second.objects.counts.pending), (CHUNKS, 0), "{:?}", second.objects.counts);
    assert_eq!(second.format_version, 1, "no pending record: readers of format 1 read it");
    assert_real_checksums(&bed, &listing(&bed, &second).await).await;
}

/// A pending blob damaged in the pool (its bytes changed on the server's disk, size
/// kept): `verify --deep` names it and records no SHA-256 of it, and restore refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_pending_blob_is_never_recorded_nor_restored() {
    let (bed, s3s, _proxy) = s3s_bed().await;
    bed.run(&["run"]).await.expect_code(0);
    let m = bed.manifests().await.pop().expect("a backup");
    let victim = listing(&bed, &m).await.remove(5);
    assert_eq!(victim.sha256, None, "pending");
    let file = s3s.root.path().join("backups/nightly").join(&victim.blob);
    let mut bytes = std::fs::read(&file).expect("the blob's file on the server");
    bytes[0] ^= 0xff;
    std::fs::write(&file, bytes).expect("damage the blob");

    let out = bed.run(&["verify", "--deep"]).await;
    out.expect_code(1);
    assert!(out.stdout.contains(&victim.blob), "{}", out.stdout);
    assert!(bed.target.head(&catalog::BackupFile::Checksums.path(&m.backup_id)).await.is_err(), "no SHA-256 recorded from a damaged pool");

    let dest_dir = bed.dir.path().join("restored");
    std::fs::create_dir_all(&dest_dir).expect("dir");
    let url = format!("file://{}", dest_dir.display());
    let out = run_with(&bed, restore_env(&bed.pg, &url), &["restore", "--skip-databases"]).await;
    out.expect_code(1);
    assert!(out.stderr.contains(&victim.key), "{}", out.stderr);
    assert!(!dest_dir.join(&victim.key).exists(), "the damaged object is not restored");
}

/// A restore within one s3s-fs account (a store whose copies carry no SHA-256): a
/// pending backup is copied back server-side, each copy checked by its ETag; once
/// `verify --deep` has recorded the SHA-256s, the first copy that cannot be checked
/// against one turns the copies off for the rest of the restore (said once) and every
/// blob streams, checked, instead of being copied and then streamed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_from_a_store_without_sha256_copies_only_what_it_can_check() {
    let (bed, s3s, proxy) = s3s_bed().await;
    bed.run(&["run"]).await.expect_code(0);
    let blob_gets = |requests: &[Recorded]| requests.iter().filter(|r| r.is_object_get() && r.path.starts_with("/backups/nightly/blobs/")).count();

    s3s.create_bucket("restored");
    proxy.clear_requests();
    run_with(&bed, restore_env(&bed.pg, "s3://restored"), &["restore", "--skip-databases"]).await.expect_code(0);
    let requests = proxy.requests();
    assert_eq!((copies(&requests).len() as u64, blob_gets(&requests)), (CHUNKS, 0), "pending blobs copied server-side, checked by their ETag");
    assert_restored(&s3s.store("restored")).await;

    bed.run(&["verify", "--deep"]).await.expect_code(0);
    s3s.create_bucket("restored-again");
    proxy.clear_requests();
    let out = run_with(&bed, restore_env(&bed.pg, "s3://restored-again"), &["restore", "--skip-databases"]).await;
    out.expect_code(0);
    let said: Vec<String> = out.said().into_iter().filter(|l| l.contains("gives no SHA-256 of its copies")).collect();
    assert_eq!(said.len(), 1, "said once: {}", out.stderr);
    let requests = proxy.requests();
    let copied = copies(&requests).len();
    assert!(copied <= 8, "{copied} copies made that could not be checked (at most one a transfer in flight)");
    assert_eq!(blob_gets(&requests) as u64, CHUNKS, "every blob streamed, checked against its SHA-256");
    assert_restored(&s3s.store("restored-again")).await;
}

async fn assert_restored(store: &std::sync::Arc<dyn ObjectStore>) {
    for i in 1..=CHUNKS {
        assert!(read(store, &chunk_key(i)).await == chunk_content(i, chunk_size(i)), "chunk {i} restored byte-identical");
    }
}

/// Above CopyObject's 5 GiB an object is copied in parts (UploadPartCopy), proved at the
/// copier's level with parts of 5 MiB (its own are 512 MiB: a 5 GiB object is beyond
/// this test bed): every part is copied by the store (no GET through the process), the
/// copy is byte-identical with a multipart ETag, and a copy whose parts the store
/// refuses is aborted, leaving nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_copied_in_parts_is_whole_and_a_failed_copy_leaves_nothing() {
    use pachyderm_backup::config::{RawEnv, RunConfig};
    use pachyderm_backup::server_copy::{Copied, Fallback, ServerCopy};
    const MIB: u64 = 1024 * 1024;
    let (bed, proxy) = bed_behind_proxy(Faults::default()).await;
    let cfg = RunConfig::from_env(&RawEnv::from_iter(bed.env()).expect("the variables")).expect("a configuration");
    let copier = ServerCopy::new(&cfg.source, &cfg.target).expect("the copier");
    let body: Vec<u8> = (0..12 * MIB + 3).map(|i| (i % 251) as u8).collect();
    bed.source.put(&"big".into(), body.clone().into()).await.expect("seed");
    let etag = bed.source.head(&"big".into()).await.expect("head").e_tag;
    let size = body.len() as u64;

    proxy.clear_requests();
    match copier.copy_in_parts("big", "blobs/big@0", etag.as_deref(), size, 5 * MIB).await {
        Ok(Copied::Done { sha256: None, etag: Some(e) }) if e.ends_with("-3") => {}
        other => panic!("{other:?}"),
    }
    assert!(read(&bed.target, "blobs/big@0").await == body, "copied byte-identical");
    let requests = proxy.requests();
    assert!(requests.iter().all(|r| r.method != "GET"), "nothing read through the process: {requests:?}");
    let parts: Vec<&Recorded> = requests.iter().filter(|r| r.copy_source && r.query.contains("partNumber=")).collect();
    assert_eq!(parts.len(), 3, "{requests:?}");
    assert!(parts.iter().all(|r| r.method == "PUT" && r.status == 200), "{parts:?}");
    assert_eq!(requests.iter().filter(|r| r.method == "POST").count(), 2, "created and completed: {requests:?}");

    // The store refuses the parts (403, as for a source the pool's credentials cannot read).
    proxy.clear_requests();
    proxy.set(Faults { refuse_copy: true, ..Default::default() });
    match copier.copy_in_parts("big", "blobs/big@1", etag.as_deref(), size, 5 * MIB).await {
        Err(Fallback::Refused(why)) => assert!(why.contains("403"), "{why}"),
        other => panic!("{other:?}"),
    }
    let requests = proxy.requests();
    assert!(requests.iter().any(|r| r.method == "DELETE" && r.query.contains("uploadId=") && r.status == 204), "the upload is aborted: {requests:?}");
    assert!(bed.target.head(&"blobs/big@1".into()).await.is_err(), "nothing left at the key");
}
