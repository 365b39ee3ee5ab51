//! Peak memory of a nightly run's object pipeline at a bucket size no local test bed
//! can hold (`scripts/bench.sh scale`): N chunk objects listed from a synthetic store
//! that makes its listing pages on demand (16 key ranges at once, as from S3),
//! merge-joined with a reference listing of the same N records (the previous backup:
//! every object reused), the new listing written, then read back into retention's
//! mark of referenced blobs. Everything the run holds per object is in this process;
//! the synthetic store holds nothing. Prints the counts, the time and the peak RSS.
//!
//! Usage: cargo run --release --example scale -- 10000000

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use pachyderm_backup::catalog::{self, ListingReader, ListingWriter, ObjectRecord};
use pachyderm_backup::{objects, progress::Progress, retention};

/// N chunk keys in key order, their first hex digits uniform (as content hashes are).
#[derive(Debug, Clone, Copy)]
struct Synthetic {
    n: u64,
}

impl Synthetic {
    fn key(&self, i: u64) -> String {
        let spread = ((i as u128) << 64) / self.n as u128;
        format!("chunk/{spread:016x}{:048x}.{i:016x}", i)
    }

    fn meta(&self, i: u64) -> ObjectMeta {
        ObjectMeta { location: Path::from(self.key(i)), last_modified: modified(), size: 64, e_tag: Some(format!("\"{i:032x}\"")), version: None }
    }

    /// The first index whose key is above `offset` (keys grow with the index).
    fn first_after(&self, offset: &str) -> u64 {
        let (mut lo, mut hi) = (0, self.n);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.key(mid).as_str() <= offset { lo = mid + 1 } else { hi = mid }
        }
        lo
    }

    fn from(&self, range: Range<u64>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let me = *self;
        futures::stream::iter(range).map(move |i| Ok(me.meta(i))).boxed()
    }
}

fn modified() -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default()
}

impl fmt::Display for Synthetic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Synthetic({})", self.n)
    }
}

fn refused<T>(what: &str) -> object_store::Result<T> {
    Err(object_store::Error::NotImplemented { operation: what.into(), implementer: "Synthetic".into() })
}

#[async_trait]
impl ObjectStore for Synthetic {
    async fn put_opts(&self, _: &Path, _: PutPayload, _: PutOptions) -> object_store::Result<PutResult> {
        refused("put")
    }
    async fn put_multipart_opts(&self, _: &Path, _: PutMultipartOptions) -> object_store::Result<Box<dyn MultipartUpload>> {
        refused("put_multipart")
    }
    async fn get_opts(&self, _: &Path, _: GetOptions) -> object_store::Result<GetResult> {
        refused("get")
    }
    fn delete_stream(&self, _: BoxStream<'static, object_store::Result<Path>>) -> BoxStream<'static, object_store::Result<Path>> {
        futures::stream::once(async { refused("delete") }).boxed()
    }
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        match prefix {
            None => self.from(0..self.n),
            Some(_) => futures::stream::once(async { refused("list with a prefix") }).boxed(),
        }
    }
    fn list_with_offset(&self, prefix: Option<&Path>, offset: &Path) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        match prefix {
            None => self.from(self.first_after(offset.as_ref())..self.n),
            Some(_) => futures::stream::once(async { refused("list with a prefix") }).boxed(),
        }
    }
    async fn list_with_delimiter(&self, _: Option<&Path>) -> object_store::Result<ListResult> {
        refused("list_with_delimiter")
    }
    async fn copy_opts(&self, _: &Path, _: &Path, _: CopyOptions) -> object_store::Result<()> {
        refused("copy")
    }
}

fn peak_rss_mib() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string()))
        .and_then(|kib| kib.parse::<u64>().ok())
        .map(|kib| format!("{} MiB", kib / 1024))
        .unwrap_or_else(|| "unknown".into())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = std::env::args().nth(1).map(|a| a.replace('_', "").parse()).transpose()?.unwrap_or(1_000_000);
    let synthetic = Synthetic { n };

    // The previous backup's listing: every object, pooled.
    let started = Instant::now();
    let mut previous = ListingWriter::new()?;
    for i in 0..n {
        let meta = synthetic.meta(i);
        let key = meta.location.to_string();
        let blob = catalog::blob_key(&key, meta.e_tag.as_deref(), meta.last_modified, meta.size);
        previous.push(&ObjectRecord {
            key,
            size: meta.size,
            etag: meta.e_tag,
            blob,
            sha256: Some(format!("{i:064x}")),
            blob_etag: None,
            since: "previous".into(),
        })?;
    }
    let (previous, _) = previous.finish()?;
    println!(
        "reference listing: {n} records, {} bytes compressed, {:.1}s; peak RSS so far {}",
        previous.len(),
        started.elapsed().as_secs_f64(),
        peak_rss_mib()
    );

    // The nightly pre-copy: the source listed (16 ranges at once) and merge-joined.
    let started = Instant::now();
    let source = objects::Source::from(Arc::new(synthetic) as Arc<dyn ObjectStore>);
    let pool: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let heal = objects::Heal { backup_id: "nightly".into(), ..Default::default() };
    let progress = Progress::start("scale", Duration::from_secs(30));
    let reference = ListingReader::new(&previous, "the previous listing".into())?;
    let (listing, counts) =
        objects::copy_entries(&source, objects::listed(&source, true).await?, &pool, reference, &heal, 16, objects::Vanished::LeftOut, &progress).await?;
    let (listing, _) = listing.finish()?;
    println!(
        "pre-copy: {} objects, {} reused, {} copied, {:.1}s ({:.0} objects/s); listing {} bytes; peak RSS so far {}",
        counts.count,
        counts.reused,
        counts.copied,
        started.elapsed().as_secs_f64(),
        counts.count as f64 / started.elapsed().as_secs_f64(),
        listing.len(),
        peak_rss_mib()
    );

    // Retention's mark: every blob the kept listings name.
    let started = Instant::now();
    let reader = ListingReader::new(&listing, "the new listing".into())?;
    let referenced: retention::Referenced = reader.map(|r| r.map(|r| retention::blob_fingerprint(&r.blob))).collect::<Result<_, _>>()?;
    let missing = (0..n)
        .step_by((n / 1000).max(1) as usize)
        .filter(|i| !referenced.contains(&catalog::blob_key(&synthetic.key(*i), Some(&format!("\"{i:032x}\"")), modified(), 64)))
        .count();
    println!("retention mark: {:.1}s, {missing} of a sample unreferenced; peak RSS {}", started.elapsed().as_secs_f64(), peak_rss_mib());
    Ok(())
}
