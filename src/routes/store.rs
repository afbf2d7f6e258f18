//! The live route snapshot: one `ArcSwap`, one writer, a change feed for derived state.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::{ArcSwap, Guard};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{RouteError, RouteSnapshot};

mod watcher;

/// Holds the current [`RouteSnapshot`] of one file and replaces it atomically on reload.
///
/// Readers call [`RouteStore::current`] per request and never hold the guard across `.await`.
/// Reloads are built off the hot path; a bad file is logged, counted and ignored, so the old
/// snapshot keeps serving.
#[derive(Debug)]
pub struct RouteStore {
    path: PathBuf,
    current: ArcSwap<RouteSnapshot>,
    updates: watch::Sender<Arc<RouteSnapshot>>,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    /// Woken after every rejected reload, for [`RouteStore::failed_at_least`].
    rejected: tokio::sync::Notify,
    /// Serialises reloads, so a slow read can never swap in a file older than a faster one.
    writer: Mutex<()>,
}

impl RouteStore {
    /// Loads `path`; fails when the file is unreadable or invalid (so a bad file fails at start).
    pub fn load(path: impl Into<PathBuf>) -> Result<Self, RouteError> {
        let path = path.into();
        let snapshot = RouteSnapshot::load_file(&path)?;
        Ok(Self::from_snapshot(path, snapshot))
    }

    /// A store serving `snapshot`, reloading later from `path`.
    pub fn from_snapshot(path: impl Into<PathBuf>, snapshot: RouteSnapshot) -> Self {
        let snapshot = Arc::new(snapshot);
        let (updates, _) = watch::channel(Arc::clone(&snapshot));
        Self {
            path: path.into(),
            current: ArcSwap::new(snapshot),
            updates,
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            rejected: tokio::sync::Notify::new(),
            writer: Mutex::new(()),
        }
    }

    /// The file this store reloads from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current snapshot, for the hot path: cheap, lock-free; do not hold across `.await`.
    pub fn current(&self) -> Guard<Arc<RouteSnapshot>> {
        self.current.load()
    }

    /// The current snapshot as an owned `Arc`, for holders that outlive a request.
    pub fn load_full(&self) -> Arc<RouteSnapshot> {
        self.current.load_full()
    }

    /// Re-reads and validates the file, and swaps it in when valid.
    ///
    /// Blocking (file I/O and parsing): call it from a blocking context or a background task.
    /// On failure the error is logged and counted and the old snapshot stays. A file whose
    /// contents did not change counts as a successful reload but swaps nothing and wakes no
    /// subscriber.
    pub fn reload(&self) -> Result<Arc<RouteSnapshot>, RouteError> {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        match RouteSnapshot::load_file(&self.path) {
            Ok(next) => Ok(self.install(next)),
            Err(e) => {
                self.reloads_failed.fetch_add(1, Ordering::Relaxed);
                self.rejected.notify_waiters();
                tracing::warn!(path = %self.path.display(), error = %e, "route snapshot rejected, keeping the old one");
                Err(e)
            }
        }
    }

    fn install(&self, next: RouteSnapshot) -> Arc<RouteSnapshot> {
        self.reloads_ok.fetch_add(1, Ordering::Relaxed);
        let old = self.current.load_full();
        if old.content_hash == next.content_hash {
            tracing::debug!(version = %old.version, "route snapshot unchanged");
            return old;
        }
        let next = Arc::new(next);
        self.current.store(Arc::clone(&next));
        self.updates.send_replace(Arc::clone(&next));
        tracing::info!(old = %old.version, new = %next.version, "route snapshot reloaded");
        next
    }

    /// Successful reloads since start (unchanged files included).
    pub fn reloads_ok(&self) -> u64 {
        self.reloads_ok.load(Ordering::Relaxed)
    }

    /// Rejected reloads since start (unreadable or invalid files).
    pub fn reloads_failed(&self) -> u64 {
        self.reloads_failed.load(Ordering::Relaxed)
    }

    /// Resolves once `n` reloads or more have been rejected since start (a file the watcher
    /// could not use leaves no other trace but the log).
    pub async fn failed_at_least(&self, n: u64) {
        crate::clock::when_notified(&self.rejected, || self.reloads_failed() >= n).await;
    }

    /// A receiver woken after every swap, holding the new snapshot, so holders of derived state
    /// (backend pools, metric handles) rebuild it. The current value counts as already seen.
    pub fn subscribe(&self) -> watch::Receiver<Arc<RouteSnapshot>> {
        self.updates.subscribe()
    }

    /// Reloads on change of the file (debounced) and on SIGHUP until `shutdown` is cancelled.
    ///
    /// Watches the parent directory, so editors that write a new file and rename it over the old
    /// one are seen. The watch is in place when this returns. Must be called inside a tokio
    /// runtime (any flavour); if the watch or the signal cannot be set up, that is logged and
    /// the other trigger still works.
    pub fn spawn_watcher(self: &Arc<Self>, shutdown: CancellationToken) -> JoinHandle<()> {
        watcher::spawn(Arc::clone(self), shutdown)
    }
}
