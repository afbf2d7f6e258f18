//! Static stability: the tenant-context cache written to a file and read back at start, and the
//! optional prewarm from the bulk snapshot.
//!
//! With every TCS region down, a running edge keeps serving what it holds; with this file, an
//! edge *restarted* during such an outage does too. The file also records the change-stream
//! sequence the cache was current to, so the stream resumes from there instead of replaying
//! everything (TCS answers `Resync` when it cannot, and the follower handles that).

mod format;
mod load;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{StreamStatus, TenantCache};
use crate::clock::now_ms;
use crate::tenant::IngressRecord;

pub use format::{check, parse_chunk, read, write_atomic, CacheFile, FORMAT, VERSION};

/// How long prewarm waits for one region's bulk snapshot before trying the next.
const PREWARM_LIMIT: Duration = Duration::from_secs(30);

/// Why the cache file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// A file-system step failed.
    #[error("{step} {path}: {source}")]
    Io {
        /// What was being done.
        step: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is cut short, altered, or not a cache file.
    #[error("cache file {path} is unusable: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A record could not be encoded (not expected for valid records).
    #[error("encoding cache file: {0}")]
    Encode(#[from] serde_json::Error),
    /// The blocking write task failed.
    #[error("cache file task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// What the edge did with its cache file, for `/admin/cache`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FileReport {
    /// The file, when configured.
    pub path: Option<PathBuf>,
    /// Unix ms of the last successful write (0: none yet).
    pub last_write_ms: u64,
    /// Change-stream sequence recorded by the last write.
    pub last_write_seq: u64,
    /// Tenants in the last write.
    pub last_write_records: u64,
    /// Successful writes since start.
    pub writes: u64,
    /// Writes skipped because nothing changed since the previous one.
    pub unchanged: u64,
    /// Failed writes since start.
    pub write_failures: u64,
    /// The last write error, if the last attempt failed.
    pub last_error: Option<String>,
    /// Tenants restored from the file at start.
    pub loaded_records: u64,
    /// Sequence the restored file was current to.
    pub loaded_seq: u64,
    /// When the restored file had been written (unix ms; 0: nothing restored).
    pub loaded_written_ms: u64,
    /// Whether a prewarm from the bulk snapshot succeeded at start.
    pub prewarmed: bool,
}

/// Shared, updatable [`FileReport`].
#[derive(Debug, Default)]
pub struct FileStatus(Mutex<FileReport>);

impl FileStatus {
    /// A status for `path` (None: the file is off).
    pub fn new(path: Option<PathBuf>) -> Self {
        FileStatus(Mutex::new(FileReport {
            path,
            ..FileReport::default()
        }))
    }

    /// A copy of the current report.
    pub fn report(&self) -> FileReport {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FileReport> {
        // A report is plain counters: a panic elsewhere cannot leave it unusable.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Reads and checks the cache file at `path`, off the runtime. A missing file is a first
/// start (logged as such); an unreadable, truncated or altered one is logged and set aside,
/// and the edge starts empty. Never fails.
pub async fn read_file(path: &Path) -> Option<CacheFile> {
    let owned = path.to_owned();
    let read = tokio::task::spawn_blocking(move || read(&owned)).await;
    match read.map_err(PersistError::from).and_then(|r| r) {
        Ok(Some(file)) => Some(file),
        Ok(None) => {
            tracing::info!(path = %path.display(), "no tenant-context cache file yet, starting empty");
            None
        }
        Err(e) => {
            tracing::error!(error = %e, "ignoring the tenant-context cache file, starting empty");
            set_aside(path, &e);
            None
        }
    }
}

/// Restores a checked file into `cache` (see [`TenantCache::restore_file_records`]) and sets
/// `stream.applied` to the sequence it was current to. A record that does not parse (a file
/// written by a different build) leaves the cache empty: the edge then fills on demand.
pub async fn restore(cache: &Arc<TenantCache>, stream: &StreamStatus, file: CacheFile, status: &FileStatus) {
    let started = Instant::now();
    let (seq, written_ms, records) = (file.seq, file.written_ms, file.records);
    let filler = cache.clone();
    let task = tokio::task::spawn_blocking(move || filler.restore_file_records(&file));
    let hosts = match task.await {
        Ok(Ok(hosts)) => hosts,
        outcome => {
            let reason = match outcome {
                Ok(Err(reason)) => reason,
                Err(e) => e.to_string(),
                Ok(Ok(_)) => String::new(),
            };
            cache.known.clear();
            tracing::error!(reason, "ignoring the tenant-context cache file, starting empty");
            return;
        }
    };
    stream.raise_applied(seq);
    tracing::info!(
        records,
        hosts,
        seq,
        written_ms,
        took_ms = started.elapsed().as_millis() as u64,
        "tenant contexts restored from the cache file"
    );
    let mut report = status.lock();
    report.loaded_records = records;
    report.loaded_seq = seq;
    report.loaded_written_ms = written_ms;
}

/// [`read_file`], then [`restore`].
pub async fn restore_file(cache: &Arc<TenantCache>, stream: &StreamStatus, path: &Path, status: &FileStatus) {
    if let Some(file) = read_file(path).await {
        restore(cache, stream, file, status).await;
    }
}

/// Keeps a corrupt file for a post-mortem instead of letting the next write replace it.
fn set_aside(path: &Path, error: &PersistError) {
    if let PersistError::Corrupt { .. } = error {
        let mut aside = path.as_os_str().to_owned();
        aside.push(".corrupt");
        if let Err(e) = std::fs::rename(path, &aside) {
            tracing::warn!(error = %e, "could not set the corrupt cache file aside");
        }
    }
}

/// Loads the whole view from TCS (local region first, then the others) through
/// [`TenantCache::resync`] and sets `stream.applied` to its sequence. Failures are logged;
/// the edge then serves what it has and fills on demand. Returns whether a region answered.
pub async fn prewarm(cache: &TenantCache, stream: &StreamStatus, status: &FileStatus) -> bool {
    for region in &cache.client.regions {
        let snapshot = match tokio::time::timeout(PREWARM_LIMIT, cache.client.snapshot(region)).await {
            Ok(Ok(snapshot)) => snapshot,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "prewarm: bulk snapshot failed, trying the next region");
                continue;
            }
            Err(_) => {
                tracing::warn!(region = %region.name, "prewarm: bulk snapshot timed out, trying the next region");
                continue;
            }
        };
        let (seq, records) = (snapshot.seq, snapshot.records.len());
        cache.resync(snapshot, &region.name, true).await;
        stream.set_applied(seq);
        status.lock().prewarmed = true;
        tracing::info!(region = %region.name, seq, records, "prewarmed tenant contexts from the bulk snapshot");
        return true;
    }
    tracing::warn!("prewarm: no region served its bulk snapshot; serving what is cached");
    false
}

/// Writes the cache to `path` every `every`, and once more when `shutdown` is cancelled.
/// Await the task after cancelling so the last write completes.
pub async fn write_periodically(
    cache: Arc<TenantCache>,
    stream: Arc<StreamStatus>,
    path: PathBuf,
    every: Duration,
    status: Arc<FileStatus>,
    shutdown: CancellationToken,
) {
    let mut last = None;
    loop {
        let stopping = tokio::select! {
            () = shutdown.cancelled() => true,
            () = tokio::time::sleep(every) => false,
        };
        last = write_once(&cache, &stream, &path, &status, last).await;
        if stopping {
            return;
        }
    }
}

/// Writes the cache to `path` now, whatever the last write held (the hand-over of an
/// upgrade: the new process reads it before it accepts). Whether it was written.
pub async fn write_now(
    cache: &Arc<TenantCache>,
    stream: &StreamStatus,
    path: &Path,
    status: &FileStatus,
) -> bool {
    write_once(cache, stream, path, status, None).await.is_some()
}

/// One write, skipped when the content is what the previous write produced. Returns the
/// fingerprint of what the file now holds (None: unknown, write next time).
async fn write_once(
    cache: &Arc<TenantCache>,
    stream: &StreamStatus,
    path: &Path,
    status: &FileStatus,
    last: Option<u64>,
) -> Option<u64> {
    // The sequence is read before the entries: everything applied up to it is then in what we
    // collect. Reading it after could record a delete as applied while the file still holds
    // the deleted tenant, which a resumed stream would never correct.
    let seq = stream.applied();
    let (cache, owned) = (cache.clone(), path.to_owned());
    let task = tokio::task::spawn_blocking(move || {
        let records = cache.records();
        let print = fingerprint(seq, &records);
        if Some(print) == last {
            return Ok((print, None));
        }
        let count = records.len() as u64;
        write_atomic(&owned, seq, now_ms(), &records).map(|()| (print, Some(count)))
    });
    let outcome = task.await.map_err(PersistError::from).and_then(|r| r);
    let mut report = status.lock();
    match outcome {
        Ok((print, None)) => {
            report.unchanged += 1;
            Some(print)
        }
        Ok((print, Some(records))) => {
            report.last_write_ms = now_ms();
            report.last_write_seq = seq;
            report.last_write_records = records;
            report.writes += 1;
            report.last_error = None;
            tracing::debug!(path = %path.display(), seq, records, "tenant-context cache file written");
            Some(print)
        }
        Err(e) => {
            report.write_failures += 1;
            report.last_error = Some(e.to_string());
            tracing::warn!(error = %e, "writing the tenant-context cache file failed");
            None
        }
    }
}

/// Identifies a file's content: its sequence and the set of (tenant, version). A record's
/// version changes with any of its fields, so equal fingerprints mean equal records.
fn fingerprint(seq: u64, records: &[Arc<IngressRecord>]) -> u64 {
    let mut h = DefaultHasher::new();
    seq.hash(&mut h);
    records.len().hash(&mut h);
    for r in records {
        r.id.hash(&mut h);
        r.version.hash(&mut h);
    }
    h.finish()
}

#[cfg(test)]
mod tests;
