//! A source bucket listed whole, in key order, at the store's rate and in memory that
//! does not grow with the bucket.
//!
//! One ListObjectsV2 lister reads 10,000–20,000 keys a second on real S3, so one lister
//! takes 10–20 minutes over the 12.5 million chunks of a 100 TB Pachyderm bucket.
//! Pachyderm's chunk keys are `chunk/<content hash>.<gen>`, uniform in their first hex
//! digit, so the key space is cut at `chunk/1` … `chunk/f` into [`TILES`] ranges listed
//! concurrently. The first range streams straight to the caller; the others spill to
//! compressed temporary files as they list and are read back in order once the caller
//! reaches them, so what the caller sees is one listing in key order.
//!
//! A local directory lists unsorted (a directory walk): it is sorted externally, in
//! runs of [`RUN`] entries sorted and spilled, then merged.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{BufRead, Seek, Write};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore};
use serde::{Deserialize, Serialize};

use crate::objects::{CHUNK_PREFIX, ObjectsError, list_resuming};

/// Key ranges listed at once: one per leading hex digit of a chunk key.
pub const TILES: usize = 16;
/// Entries sorted in memory at a time when a local directory is sorted (about 20 MiB).
pub const RUN: usize = 131_072;

/// The source, listed whole in key order (see the module comment): by [`TILES`]
/// concurrent key ranges when the store lists sorted, else sorted in runs of `run`.
pub async fn sorted(
    source: &Arc<dyn ObjectStore>,
    lists_sorted: bool,
    run: usize,
) -> Result<BoxStream<'static, Result<ObjectMeta, ObjectsError>>, ObjectsError> {
    sorted_range(source, lists_sorted, &KeyRange { after: None, until: None, cuts: tile_bounds() }, run).await
}

/// A range of keys: above `after` (none: from the first key), up to and including
/// `until` (none: to the last), listed at once in the pieces `cuts` make (bounds
/// strictly inside the range, in order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    pub after: Option<Path>,
    pub until: Option<Path>,
    pub cuts: Vec<Path>,
}

impl KeyRange {
    pub fn contains(&self, key: &Path) -> bool {
        self.after.as_ref().is_none_or(|a| key > a) && self.until.as_ref().is_none_or(|u| key <= u)
    }
}

/// The keys of `range`, in key order: its pieces listed at once when the store lists
/// sorted, else the whole store listed, filtered and sorted in runs of `run`.
pub async fn sorted_range(
    source: &Arc<dyn ObjectStore>,
    lists_sorted: bool,
    range: &KeyRange,
    run: usize,
) -> Result<BoxStream<'static, Result<ObjectMeta, ObjectsError>>, ObjectsError> {
    if lists_sorted {
        return Ok(tiled(source.clone(), range));
    }
    let whole = range.after.is_none() && range.until.is_none();
    let keep = range.clone();
    let listed = source.list(None).map_err(list_err).try_filter(move |meta| std::future::ready(whole || keep.contains(&meta.location)));
    external_sort(listed.boxed(), run).await
}

/// The upper bounds of all tiles but the last: `chunk/1` … `chunk/f`. Tile `i` holds the
/// keys above bound `i - 1` (none for the first) and up to bound `i` (none for the last):
/// every key falls in exactly one tile, whatever it is.
pub fn tile_bounds() -> Vec<Path> {
    (1..TILES).map(|digit| Path::from(format!("{CHUNK_PREFIX}/{digit:x}"))).collect()
}

fn list_err(source: object_store::Error) -> ObjectsError {
    ObjectsError::Store { side: "source", what: "listing".into(), source }
}

fn spill_err(source: std::io::Error) -> ObjectsError {
    ObjectsError::Read { what: "a listing spilled to a temporary file".into(), source }
}

/// One key range: above `after`, up to and including `until`.
fn tile(store: Arc<dyn ObjectStore>, after: Option<Path>, until: Option<Path>) -> BoxStream<'static, Result<ObjectMeta, ObjectsError>> {
    list_resuming(store, None, after, true)
        .map_err(list_err)
        .try_take_while(move |meta| std::future::ready(Ok(until.as_ref().is_none_or(|u| meta.location <= *u))))
        .boxed()
}

/// The pieces of `range` (cut at its `cuts`), listed at once, returned in order.
fn tiled(store: Arc<dyn ObjectStore>, range: &KeyRange) -> BoxStream<'static, Result<ObjectMeta, ObjectsError>> {
    let bounds = &range.cuts;
    let first = tile(store.clone(), range.after.clone(), bounds.first().or(range.until.as_ref()).cloned());
    // Spawned now, so every range lists while the caller still reads the first.
    let rest: Vec<_> = (0..bounds.len())
        .map(|i| {
            let range = tile(store.clone(), Some(bounds[i].clone()), bounds.get(i + 1).or(range.until.as_ref()).cloned());
            tokio_util::task::AbortOnDropHandle::new(tokio::spawn(spill(range)))
        })
        .collect();
    let spilled = futures::stream::iter(rest)
        .then(|task| async move {
            match task.await {
                Ok(spilled) => spilled.and_then(Spill::into_entries).map(|entries| futures::stream::iter(entries).boxed()),
                Err(joined) => Err(spill_err(std::io::Error::other(joined))),
            }
        })
        .try_flatten();
    // A dropped listing (a failed run) aborts the listers still running.
    first.chain(spilled).boxed()
}

/// A whole range listed into a [`Spill`].
async fn spill(mut range: BoxStream<'static, Result<ObjectMeta, ObjectsError>>) -> Result<Spill, ObjectsError> {
    let mut writer = SpillWriter::new().map_err(spill_err)?;
    while let Some(meta) = range.try_next().await? {
        writer.push(&meta).map_err(spill_err)?;
    }
    writer.finish().map_err(spill_err)
}

/// `unsorted` sorted in runs of `run` entries, each spilled, then merged.
async fn external_sort(
    mut unsorted: BoxStream<'static, Result<ObjectMeta, ObjectsError>>,
    run: usize,
) -> Result<BoxStream<'static, Result<ObjectMeta, ObjectsError>>, ObjectsError> {
    let run = run.max(1);
    let mut runs = Vec::new();
    let mut batch: Vec<ObjectMeta> = Vec::with_capacity(run.min(RUN));
    loop {
        let next = unsorted.try_next().await?;
        if next.is_none() || batch.len() == run {
            batch.sort_by(|a, b| a.location.cmp(&b.location));
            if next.is_none() && runs.is_empty() {
                // One run: no file needed.
                return Ok(futures::stream::iter(batch.into_iter().map(Ok)).boxed());
            }
            let mut writer = SpillWriter::new().map_err(spill_err)?;
            for meta in batch.drain(..) {
                writer.push(&meta).map_err(spill_err)?;
            }
            runs.push(writer.finish().map_err(spill_err)?.into_entries()?);
        }
        match next {
            Some(meta) => batch.push(meta),
            None => break,
        }
    }
    Ok(futures::stream::iter(Merge::new(runs)).boxed())
}

/// The k-way merge of sorted runs: the heap holds each run's next entry.
struct Merge {
    runs: Vec<SpillEntries>,
    heads: BinaryHeap<Reverse<(Path, usize)>>,
    pending: Vec<Option<ObjectMeta>>,
    failed: Option<ObjectsError>,
}

impl Merge {
    fn new(runs: Vec<SpillEntries>) -> Self {
        let n = runs.len();
        let mut merge = Merge { runs, heads: BinaryHeap::new(), pending: (0..n).map(|_| None).collect(), failed: None };
        for i in 0..n {
            merge.advance(i);
        }
        merge
    }

    fn advance(&mut self, i: usize) {
        match self.runs[i].next() {
            Some(Ok(meta)) => {
                self.heads.push(Reverse((meta.location.clone(), i)));
                self.pending[i] = Some(meta);
            }
            Some(Err(e)) => self.failed = Some(e),
            None => {}
        }
    }
}

impl Iterator for Merge {
    type Item = Result<ObjectMeta, ObjectsError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.failed.take() {
            self.heads.clear();
            return Some(Err(e));
        }
        let Reverse((_, i)) = self.heads.pop()?;
        let meta = self.pending[i].take();
        self.advance(i);
        meta.map(Ok)
    }
}

/// One listed object as spilled: what the copy needs of an `ObjectMeta`.
#[derive(Serialize, Deserialize)]
struct Spilled {
    key: String,
    size: u64,
    modified: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    etag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
}

/// Listed objects, compressed into an anonymous temporary file.
struct SpillWriter {
    encoder: zstd::Encoder<'static, std::io::BufWriter<std::fs::File>>,
}

impl SpillWriter {
    fn new() -> std::io::Result<Self> {
        // Level 1: the spill is read once, soon; speed over size.
        Ok(SpillWriter { encoder: zstd::Encoder::new(std::io::BufWriter::with_capacity(1 << 16, tempfile::tempfile()?), 1)? })
    }

    fn push(&mut self, meta: &ObjectMeta) -> std::io::Result<()> {
        let record =
            Spilled { key: meta.location.to_string(), size: meta.size, modified: meta.last_modified, etag: meta.e_tag.clone(), version: meta.version.clone() };
        serde_json::to_writer(&mut self.encoder, &record).map_err(std::io::Error::other)?;
        self.encoder.write_all(b"\n")
    }

    fn finish(self) -> std::io::Result<Spill> {
        let file = self.encoder.finish()?.into_inner().map_err(|e| e.into_error())?;
        Ok(Spill { file })
    }
}

struct Spill {
    file: std::fs::File,
}

impl Spill {
    fn into_entries(mut self) -> Result<SpillEntries, ObjectsError> {
        self.file.rewind().map_err(spill_err)?;
        let decoder = zstd::Decoder::new(self.file).map_err(spill_err)?;
        Ok(SpillEntries { lines: std::io::BufReader::with_capacity(1 << 16, decoder), line: String::new() })
    }
}

/// A spill read back, entry by entry.
struct SpillEntries {
    lines: std::io::BufReader<zstd::Decoder<'static, std::io::BufReader<std::fs::File>>>,
    line: String,
}

impl Iterator for SpillEntries {
    type Item = Result<ObjectMeta, ObjectsError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.line.clear();
        match self.lines.read_line(&mut self.line) {
            Ok(0) => None,
            Ok(_) => Some(
                serde_json::from_str::<Spilled>(self.line.trim_end())
                    .map(|s| ObjectMeta { location: Path::from(s.key), last_modified: s.modified, size: s.size, e_tag: s.etag, version: s.version })
                    .map_err(|e| spill_err(std::io::Error::other(e))),
            ),
            Err(e) => Some(Err(spill_err(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt, PutPayload};
    use proptest::prelude::*;

    async fn store_with(keys: &[String]) -> Arc<dyn ObjectStore> {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        for key in keys {
            store.put(&Path::from(key.as_str()), PutPayload::from(key.clone().into_bytes())).await.expect("put");
        }
        store
    }

    async fn keys_of(stream: BoxStream<'static, Result<ObjectMeta, ObjectsError>>) -> Vec<String> {
        stream.map_ok(|m| m.location.to_string()).try_collect().await.expect("listing")
    }

    fn sorted_unique(keys: &[String]) -> Vec<String> {
        let set: std::collections::BTreeSet<String> = keys.iter().map(|k| Path::from(k.as_str()).to_string()).collect();
        set.into_iter().collect()
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    }

    #[test]
    fn the_keys_at_and_around_every_bound_fall_in_exactly_one_tile() {
        let mut keys: Vec<String> = ["a", "chunk/", "chunk/0", "chunk0", "chunk/f", "chunk/fff.0", "chunk/g", "z/y", "chunk/0.1"].map(String::from).to_vec();
        for b in tile_bounds() {
            keys.push(b.to_string());
            keys.push(format!("{b}0"));
            keys.push(format!("{b}.0000000000000001"));
        }
        runtime().block_on(async {
            let store = store_with(&keys).await;
            assert_eq!(keys_of(sorted(&store, true, RUN).await.expect("listed")).await, sorted_unique(&keys));
        });
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof!["chunk/[0-9a-g]{0,3}(\\.[0-9]{1,2})?", "[a-z]{1,3}(/[a-z0-9]{1,2})?", "chunk[/0-9]?",]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn tiles_list_what_one_lister_lists(keys in proptest::collection::vec(key(), 0..60)) {
            runtime().block_on(async {
                let store = store_with(&keys).await;
                let one = keys_of(store.list(None).map_err(list_err).boxed()).await;
                prop_assert_eq!(keys_of(sorted(&store, true, RUN).await.expect("listed")).await, one);
                Ok(())
            })?;
        }

        #[test]
        fn an_external_sort_in_small_runs_sorts(keys in proptest::collection::vec(key(), 0..60), run in 1usize..8) {
            runtime().block_on(async {
                let store = store_with(&keys).await;
                // InMemory lists sorted; reversed, the input is the worst case for runs.
                let mut metas: Vec<ObjectMeta> = store.list(None).try_collect().await.expect("list");
                metas.reverse();
                let unsorted = futures::stream::iter(metas.into_iter().map(Ok)).boxed();
                let listed = keys_of(external_sort(unsorted, run).await.expect("sorted")).await;
                prop_assert_eq!(listed, sorted_unique(&keys));
                Ok(())
            })?;
        }
    }

    #[test]
    fn a_spill_keeps_every_field() {
        let meta = ObjectMeta {
            location: Path::from("chunk/ab.0000000000000002"),
            last_modified: DateTime::from_timestamp(1_700_000_000, 5).expect("time"),
            size: 7,
            e_tag: Some("\"x\"".into()),
            version: Some("v1".into()),
        };
        let mut writer = SpillWriter::new().expect("writer");
        writer.push(&meta).expect("push");
        let back: Vec<ObjectMeta> = writer.finish().expect("finish").into_entries().expect("entries").collect::<Result<_, _>>().expect("read");
        assert_eq!(back, vec![meta]);
    }
}
