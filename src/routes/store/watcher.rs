//! Reload triggers of a [`RouteStore`]: file-system events (debounced) and SIGHUP.

use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::RouteStore;

/// Editors write a file in several steps (truncate, write, rename): wait for this much quiet
/// before reloading, so one save is one reload.
const DEBOUNCE: Duration = Duration::from_millis(100);

pub(super) fn spawn(store: Arc<RouteStore>, shutdown: CancellationToken) -> JoinHandle<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    // Both set up before returning, so a change made right after this call is not missed.
    let watcher = watch_file(store.path(), tx);
    let hangup = signal(SignalKind::hangup())
        .map_err(
            |e| tracing::warn!(error = %e, "cannot listen for SIGHUP; route reloads on file change only"),
        )
        .ok();
    tokio::spawn(async move {
        // Dropping the watcher stops the events, so it lives as long as the task.
        let _watcher = watcher;
        run(store, rx, hangup, shutdown).await;
    })
}

async fn run(
    store: Arc<RouteStore>,
    mut events: mpsc::UnboundedReceiver<()>,
    mut hangup: Option<Signal>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            Some(()) = events.recv() => {
                debounce(&mut events).await;
                reload(&store).await;
            }
            Some(()) = next_hangup(&mut hangup) => {
                tracing::info!("SIGHUP: reloading routes");
                reload(&store).await;
            }
        }
    }
}

async fn next_hangup(hangup: &mut Option<Signal>) -> Option<()> {
    match hangup {
        Some(sig) => sig.recv().await,
        None => std::future::pending().await,
    }
}

/// Swallows events until none came for [`DEBOUNCE`].
async fn debounce(events: &mut mpsc::UnboundedReceiver<()>) {
    while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, events.recv()).await {}
}

/// Reads and parses on the blocking pool: file I/O has no place on a runtime worker.
async fn reload(store: &Arc<RouteStore>) {
    let store = Arc::clone(store);
    // The outcome is logged and counted by `reload` itself.
    if let Err(e) = tokio::task::spawn_blocking(move || store.reload()).await {
        tracing::error!(error = %e, "route reload task failed");
    }
}

/// Watches the directory holding `path` and sends `()` for each event touching its file name.
fn watch_file(path: &Path, tx: mpsc::UnboundedSender<()>) -> Option<RecommendedWatcher> {
    let Some(name) = path.file_name().map(OsString::from) else {
        tracing::warn!(path = %path.display(), "route file has no file name; not watching it");
        return None;
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let handler = move |event: notify::Result<Event>| match event {
        Ok(event) if concerns(&event, &name) => {
            // The receiver is gone only when the task ended: nothing left to tell.
            let _ = tx.send(());
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "route file watch error"),
    };
    let watched = notify::recommended_watcher(handler)
        .and_then(|mut w| w.watch(dir, RecursiveMode::NonRecursive).map(|()| w));
    watched
        .map_err(|e| tracing::warn!(dir = %dir.display(), error = %e, "cannot watch route file; reload with SIGHUP"))
        .ok()
}

/// True for an event that may have changed the file (our own reads are ignored, or each reload
/// would trigger the next).
fn concerns(event: &Event, name: &OsString) -> bool {
    let read_only = match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => false,
        EventKind::Access(_) => true,
        _ => false,
    };
    if event.need_rescan() {
        return true;
    }
    !read_only
        && event
            .paths
            .iter()
            .any(|p| p.file_name() == Some(name.as_os_str()))
}
