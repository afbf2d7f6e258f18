//! The view snapshot file: written atomically so a crash leaves the old or the new file, never
//! a torn one, and read back at start so TCS resumes tailing from its seq.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::view::{IngressView, SharedSnapshot};
use crate::feed::ViewSnapshot;

/// How often the writer checks whether the view changed.
pub const WRITE_INTERVAL: Duration = Duration::from_secs(1);

/// Why a snapshot could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
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
    /// The view could not be encoded (not expected for valid records).
    #[error("encoding snapshot: {0}")]
    Encode(#[from] serde_json::Error),
    /// The blocking write task failed.
    #[error("snapshot task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Writes `snap` to `path` atomically: temp file in the same directory, write, fsync, rename,
/// fsync the directory.
pub fn write_atomic(path: &Path, snap: &SharedSnapshot) -> Result<(), SnapshotError> {
    crate::durable::replace_file(path, |file| {
        let mut out = std::io::BufWriter::new(file);
        serde_json::to_writer(&mut out, snap)?;
        out.flush().map_err(crate::durable::step("writing", path))?;
        Ok(())
    })
}

impl From<crate::durable::FileError> for SnapshotError {
    fn from(e: crate::durable::FileError) -> Self {
        SnapshotError::Io {
            step: e.step,
            path: e.path,
            source: e.source,
        }
    }
}

/// The snapshot file of view `name` beside `ingress`'s `path`: `tcs-us.json` -> `tcs-us.jira.json`.
pub fn path_of_view(path: &Path, name: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .map_or_else(|| "view".into(), |s| s.to_string_lossy().into_owned());
    path.with_file_name(format!("{stem}.{name}.json"))
}

/// Reads a snapshot. A missing file is a first start; an unreadable or corrupt one is logged
/// and ignored: TCS then replays the catalogue log from 0, which is slow but correct.
pub fn load(path: &Path) -> Option<ViewSnapshot> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(path = %path.display(), "no view snapshot; starting from seq 0");
            return None;
        }
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot read view snapshot; starting from seq 0");
            return None;
        }
    };
    match serde_json::from_slice::<ViewSnapshot>(&bytes) {
        Ok(snap) => Some(snap),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "corrupt view snapshot ignored; starting from seq 0");
            None
        }
    }
}

/// Writes the view to `path` off the async runtime.
pub async fn write_view(view: &IngressView, path: &Path) -> Result<u64, SnapshotError> {
    let snap = view.snapshot();
    let seq = snap.seq;
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || write_atomic(&path, &snap)).await??;
    Ok(seq)
}

/// Writes the view at most once per [`WRITE_INTERVAL`] when its seq moved, and once more when
/// `shutdown` is cancelled. `written` is the seq already on disk.
pub async fn run_writer(
    view: Arc<IngressView>,
    path: PathBuf,
    mut written: u64,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(WRITE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        if view.seq() != written {
            written = write_logged(&view, &path).await.unwrap_or(written);
        }
    }
    if view.seq() != written {
        write_logged(&view, &path).await;
    }
}

async fn write_logged(view: &IngressView, path: &Path) -> Option<u64> {
    match write_view(view, path).await {
        Ok(seq) => {
            tracing::debug!(seq, path = %path.display(), "view snapshot written");
            Some(seq)
        }
        Err(e) => {
            tracing::error!(error = %e, "writing view snapshot failed; will retry");
            None
        }
    }
}
