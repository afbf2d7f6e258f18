//! Putting many records into the cache at once: sized up front, parsed and inserted in
//! parallel, and read back out once per tenant for writing.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::format::{parse_chunk, CacheFile};
use crate::context::{Entry, Origin, TenantCache};
use crate::tenant::IngressRecord;

/// Pieces the record lines are cut into, so that the threads share the work evenly.
const PIPELINE_CHUNKS: usize = 64;

impl TenantCache {
    /// Every distinct tenant record held, once. Entries are per host, and hosts of one tenant
    /// may hold different versions for a moment (a fill racing a push): the highest wins.
    /// Sorted by tenant id, so equal caches give equal files.
    pub fn records(&self) -> Vec<Arc<IngressRecord>> {
        let mut records: Vec<Arc<IngressRecord>> = Vec::with_capacity(self.known.len());
        self.known.for_each(|_, e| records.push(e.record.clone()));
        records.sort_unstable_by(|a, b| a.id.cmp(&b.id).then(b.version.cmp(&a.version)));
        records.dedup_by(|later, first| later.id == first.id);
        records
    }

    /// Inserts records learnt outside the change stream for every host each names, unless a
    /// version at least as new is already held. Returns the number of hosts visited.
    pub async fn restore(&self, records: Vec<IngressRecord>, region: &Arc<str>, origin: Origin) -> usize {
        let keyed = keyed_entries(records, region, origin);
        let hosts = keyed.len();
        self.insert_keyed(keyed, false);
        self.known.sweep_if_over();
        hosts
    }

    /// `fresh`: the cache held nothing when restoring began, so no host needs a version check.
    fn insert_keyed(&self, keyed: Vec<(Box<str>, Arc<Entry>)>, fresh: bool) {
        for (host, entry) in keyed {
            if fresh {
                self.known.insert_unchecked(host, entry);
            } else {
                self.put_if_newer(&host, &entry);
            }
        }
    }

    /// Parses `file`'s records and inserts them on one thread per core (the map takes
    /// concurrent inserts without locks). Blocks: call it from `spawn_blocking`. Returns the
    /// number of hosts inserted, or why a record did not parse; records inserted before that
    /// stay, so the caller decides what to keep.
    pub fn restore_file_records(&self, file: &CacheFile) -> Result<usize, String> {
        let fresh = self.is_empty();
        let region: Arc<str> = "file".into();
        let chunks = file.chunks(PIPELINE_CHUNKS);
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        let hosts = std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        let mut hosts = 0;
                        while let Some(chunk) = chunks.get(next.fetch_add(1, Ordering::Relaxed)) {
                            if failed.load(Ordering::Relaxed) {
                                break;
                            }
                            let keyed = parse_chunk(chunk)
                                .map(|r| keyed_entries(r, &region, Origin::File))
                                .inspect_err(|_| failed.store(true, Ordering::Relaxed))?;
                            hosts += keyed.len();
                            self.insert_keyed(keyed, fresh);
                        }
                        Ok::<usize, String>(hosts)
                    })
                })
                .collect();
            workers.into_iter().try_fold(0, |sum, worker| {
                let hosts = worker
                    .join()
                    .map_err(|_| "a restoring thread panicked".to_owned())??;
                Ok::<usize, String>(sum + hosts)
            })
        });
        self.known.sweep_if_over();
        hosts
    }
}

/// One cache entry per record, shared by each of its hosts, keyed as the cache keys them.
fn keyed_entries(
    records: Vec<IngressRecord>,
    region: &Arc<str>,
    origin: Origin,
) -> Vec<(Box<str>, Arc<Entry>)> {
    let learnt_at = Instant::now();
    let mut keyed = Vec::with_capacity(records.len());
    for record in records {
        let entry = Arc::new(Entry::learnt_at(record, origin, region.clone(), learnt_at));
        for host in &entry.record.hosts {
            keyed.push((host.as_str().into(), entry.clone()));
        }
    }
    keyed
}
