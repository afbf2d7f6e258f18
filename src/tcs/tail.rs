//! The tailer: long-polls the catalogue's change log from the view's applied seq and applies
//! every page in order. At least once and in order; the view makes replays harmless.
//!
//! While ingest is paused (an injected fault) it applies nothing and keeps its position, but
//! keeps long-polling from the newest head it saw, so lag and readiness show the stall.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::metrics::TcsMetrics;
use super::view::{Applied, IngressView};
use crate::clock::Backoff;
use crate::feed::ChangesPage;

/// How long the catalogue may hold a poll open when it has nothing new.
pub const WAIT_MS: u64 = 25_000;
/// Most changes per page.
pub const PAGE_LIMIT: u32 = 1000;
/// Between failed catalogue polls: from ~100 ms up to 10 s.
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
// The catalogue answers within `WAIT_MS`; beyond this margin the connection is presumed dead.
const POLL_MARGIN: Duration = Duration::from_secs(10);

/// Why one poll failed.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// Connection, timeout or body error.
    #[error("polling the catalogue: {0}")]
    Http(#[from] reqwest::Error),
    /// The catalogue answered with an error status.
    #[error("catalogue answered {0}")]
    Status(reqwest::StatusCode),
}

/// What the tailer knows about the catalogue, for readiness and lag metrics.
#[derive(Debug, Default)]
pub struct TailStatus {
    head: AtomicU64,
    last_ok: Mutex<Option<Instant>>,
}

impl TailStatus {
    /// The catalogue's newest seq, as of the last successful poll.
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Relaxed)
    }

    /// How long ago the last poll succeeded, if one ever did.
    pub fn since_last_ok(&self) -> Option<Duration> {
        self.last_ok
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map(|t| t.elapsed())
    }

    /// Records a successful poll that saw `head`.
    pub fn record_ok(&self, head: u64) {
        self.head.store(head, Ordering::Relaxed);
        *self.last_ok.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }
}

/// Tails one catalogue into one view.
#[derive(Debug, Clone)]
pub struct Tailer {
    client: reqwest::Client,
    changes_url: String,
    view: Arc<IngressView>,
    status: Arc<TailStatus>,
    metrics: TcsMetrics,
    pause: watch::Receiver<bool>,
}

impl Tailer {
    /// A tailer of the catalogue at `catalogue` (base URL) into `view`.
    pub fn new(
        client: reqwest::Client,
        catalogue: &str,
        view: Arc<IngressView>,
        status: Arc<TailStatus>,
        metrics: TcsMetrics,
    ) -> Self {
        let changes_url = format!("{}/v1/changes", catalogue.trim_end_matches('/'));
        Self {
            client,
            changes_url,
            view,
            status,
            metrics,
            // Its sender is gone at once: never paused.
            pause: watch::channel(false).1,
        }
    }

    /// The same tailer, applying nothing while `pause` holds `true`.
    pub fn with_pause(mut self, pause: watch::Receiver<bool>) -> Self {
        self.pause = pause;
        self
    }

    /// Polls until `shutdown` is cancelled, backing off (capped, jittered) after errors.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut failures = 0u32;
        loop {
            let result = tokio::select! {
                () = shutdown.cancelled() => return,
                r = self.poll_once() => r,
            };
            match result {
                Ok(_) => failures = 0,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    self.metrics.tail_errors.inc();
                    let delay = BACKOFF.delay(failures);
                    tracing::warn!(error = %error_chain(&e), failures, retry_in_ms = delay.as_millis() as u64, "catalogue poll failed");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// One long poll from the view's seq; applies what it got and returns how many changes.
    /// Paused, or paused during the poll: applies nothing and returns 0.
    pub async fn poll_once(&self) -> Result<usize, PollError> {
        let mut pause = self.pause.clone();
        if *pause.borrow_and_update() {
            return self.watch_head(pause).await.map(|()| 0);
        }
        let after = self.view.seq();
        let page = tokio::select! {
            biased;
            () = flipped(&mut pause) => return Ok(0),
            page = self.fetch(after) => page?,
        };
        self.status.record_ok(page.head);
        if *pause.borrow() {
            return Ok(0);
        }
        if page.head < after {
            tracing::warn!(
                after,
                head = page.head,
                "catalogue head is behind the view: snapshot from another catalogue?"
            );
        }
        if let Some(first) = page.changes.first() {
            if first.seq != after + 1 {
                // The log is dense; a hole means changes were lost upstream or compacted away.
                tracing::warn!(after, first = first.seq, "gap in the catalogue change log");
            }
        }
        for change in &page.changes {
            self.count(self.view.apply(change));
        }
        Ok(page.changes.len())
    }

    /// Paused: long-polls from the newest head seen (so the catalogue answers only when it
    /// moves) to keep head and readiness current, and drops the page; returns early when the
    /// pause is lifted.
    async fn watch_head(&self, mut pause: watch::Receiver<bool>) -> Result<(), PollError> {
        let from = self.view.seq().max(self.status.head());
        tokio::select! {
            biased;
            () = flipped(&mut pause) => Ok(()),
            page = self.fetch(from) => {
                self.status.record_ok(page?.head);
                Ok(())
            }
        }
    }

    async fn fetch(&self, after: u64) -> Result<ChangesPage, PollError> {
        let resp = self
            .client
            .get(&self.changes_url)
            .query(&[
                ("after", after),
                ("limit", u64::from(PAGE_LIMIT)),
                ("wait_ms", WAIT_MS),
            ])
            .timeout(Duration::from_millis(WAIT_MS) + POLL_MARGIN)
            .send()
            .await?;
        if !resp.status().is_success() {
            return Err(PollError::Status(resp.status()));
        }
        Ok(resp.json::<ChangesPage>().await?)
    }

    fn count(&self, applied: Applied) {
        let kind = match applied {
            Applied::Upserted => "upsert",
            Applied::Deleted => "delete",
            Applied::Advanced | Applied::Replayed => return,
        };
        self.metrics.events.with_label_values(&["ingress", kind]).inc();
    }
}

/// Resolves when the pause flag flips; never when nobody can flip it any more.
async fn flipped(pause: &mut watch::Receiver<bool>) {
    if pause.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// `reqwest` errors say "error sending request" and keep the cause (refused, reset, timed
/// out) in their sources; an operator needs the cause.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
