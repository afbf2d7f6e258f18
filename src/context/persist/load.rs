//! Putting many records into the cache at once: sized up front, parsed and inserted in
//! parallel, and read back out once per tenant for writing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::format::{parse_chunk, CacheFile};
use crate::context::{CacheConfig, Entry, Origin, TcsClient, TenantCache};
use crate::metrics::EdgeMetrics;
use crate::tenant::IngressRecord;

/// Pieces the record lines are cut into, so inserting can start while the rest still parses.
const PIPELINE_CHUNKS: usize = 64;

impl TenantCache {
    /// [`TenantCache::new`] with room for `hosts` entries from the start. Restoring a million
    /// hosts into a table that grows as it goes takes about twice as long: every growth
    /// rehashes what is already there.
    pub fn with_capacity(
        config: &CacheConfig,
        client: Arc<TcsClient>,
        metrics: EdgeMetrics,
        hosts: u64,
    ) -> Self {
        let mut cache = Self::new(config, client, metrics);
        if hosts > 0 {
            cache.positive = super::super::positive_cache(config, hosts);
        }
        cache
    }

    /// Every distinct tenant record held, once. Entries are per host, and hosts of one tenant
    /// may hold different versions for a moment (a fill racing a push): the highest wins.
    /// Sorted by tenant id, so equal caches give equal files.
    pub fn records(&self) -> Vec<Arc<IngressRecord>> {
        let mut records: Vec<Arc<IngressRecord>> =
            self.positive.iter().map(|(_, e)| e.record.clone()).collect();
        records.sort_unstable_by(|a, b| a.id.cmp(&b.id).then(b.version.cmp(&a.version)));
        records.dedup_by(|later, first| later.id == first.id);
        records
    }

    /// Inserts records learnt outside the change stream for every host each names, unless a
    /// version at least as new is already held. Returns the number of hosts visited.
    ///
    /// Meant for start-up, before serving and before the stream follower runs: the check and
    /// the insert are two steps, so a concurrent writer of the same host could be overwritten.
    pub async fn restore(&self, records: Vec<IngressRecord>, region: &Arc<str>, origin: Origin) -> usize {
        let keyed = keyed_entries(records, region, origin);
        let hosts = keyed.len();
        self.insert_keyed(keyed, false).await;
        hosts
    }

    /// `fresh`: the cache held nothing when restoring began, so no host needs a version check.
    async fn insert_keyed(&self, keyed: Vec<(String, Arc<Entry>)>, fresh: bool) {
        for (host, entry) in keyed {
            if fresh || !self.positive.contains_key(&host) {
                self.positive.insert(host, entry).await;
            } else {
                self.put_if_newer(&host, entry).await;
            }
        }
    }

    /// Parses `file`'s records on one thread per core and inserts them, as they come, on the
    /// calling thread (moka's insert mostly serialises on its own bookkeeping, so more
    /// inserting threads would not help; everything else, allocations included, happens on
    /// the parsing threads). Blocks: call it from `spawn_blocking`. Returns the number of
    /// hosts inserted, or why a record did not parse; records inserted before that stay, so
    /// the caller decides what to keep.
    pub fn restore_file_records(&self, file: &CacheFile) -> Result<usize, String> {
        let fresh = self.is_empty();
        let region: Arc<str> = "file".into();
        let chunks = file.chunks(PIPELINE_CHUNKS);
        let next = AtomicUsize::new(0);
        let parsers = std::thread::available_parallelism().map_or(1, usize::from);
        let (tx, rx) = std::sync::mpsc::sync_channel(parsers * 2);
        std::thread::scope(|s| {
            for _ in 0..parsers {
                let (tx, chunks, next, region) = (tx.clone(), &chunks, &next, &region);
                s.spawn(move || {
                    while let Some(chunk) = chunks.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let keyed = parse_chunk(chunk).map(|r| keyed_entries(r, region, Origin::File));
                        // The receiver is gone after an error: stop parsing.
                        if tx.send(keyed).is_err() {
                            return;
                        }
                    }
                });
            }
            drop(tx);
            let mut hosts = 0;
            for keyed in rx {
                let keyed = keyed?;
                hosts += keyed.len();
                futures::executor::block_on(self.insert_keyed(keyed, fresh));
            }
            Ok(hosts)
        })
    }
}

/// One cache entry per record, shared by each of its hosts, keyed as the cache keys them.
fn keyed_entries(
    records: Vec<IngressRecord>,
    region: &Arc<str>,
    origin: Origin,
) -> Vec<(String, Arc<Entry>)> {
    let learnt_at = Instant::now();
    let mut keyed = Vec::with_capacity(records.len());
    for record in records {
        let entry = Arc::new(Entry::learnt_at(record, origin, region.clone(), learnt_at));
        for host in &entry.record.hosts {
            keyed.push((host.as_str().to_owned(), entry.clone()));
        }
    }
    keyed
}
