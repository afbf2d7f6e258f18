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
use crate::feed::{error_chain, CatalogueClient, ChangesPage, ClientError};

/// How long the catalogue may hold a poll open when it has nothing new.
pub const WAIT_MS: u64 = 25_000;
/// Most changes per page.
pub const PAGE_LIMIT: usize = 1000;
/// Between failed catalogue polls: from ~100 ms up to 10 s.
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));

/// Why one poll failed: unreachable, an error status, or an answer off the contract.
pub type PollError = ClientError;

/// What the tailer knows about the catalogue, for readiness and lag metrics.
#[derive(Debug, Default)]
pub struct TailStatus {
    head: AtomicU64,
    last_ok: Mutex<Option<Instant>>,
    /// Woken once a successful poll's page is applied, for [`crate::tcs::Tcs::ready`] (not at
    /// `record_ok`, which comes before: the head would be new and the view not yet).
    polled: tokio::sync::Notify,
    /// When the view reached each recent seq (one entry a page, the newest last, bounded), so
    /// an edge's lag can be told in seconds.
    advances: Mutex<std::collections::VecDeque<(u64, Instant)>>,
}

/// Pages remembered by [`TailStatus::advanced`].
const ADVANCES: usize = 4096;

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

    /// Records that the view reached `seq` now; a lower `seq` (a reload from a new log)
    /// starts the history again.
    pub fn advanced(&self, seq: u64) {
        let mut advances = self.advances.lock().unwrap_or_else(PoisonError::into_inner);
        if advances.back().is_some_and(|&(last, _)| seq < last) {
            advances.clear();
        }
        if advances.back().is_none_or(|&(last, _)| seq > last) {
            if advances.len() == ADVANCES {
                advances.pop_front();
            }
            advances.push_back((seq, Instant::now()));
        }
    }

    /// Since when the view has held a change after `applied` (`None` when it holds none): how
    /// long a reader at `applied` has been behind. When that change is older than the history,
    /// the oldest entry's age, a lower bound.
    pub fn behind_since(&self, applied: u64) -> Option<Instant> {
        let advances = self.advances.lock().unwrap_or_else(PoisonError::into_inner);
        let &(newest, _) = advances.back()?;
        if applied >= newest {
            return None;
        }
        advances
            .iter()
            .find(|&&(seq, _)| seq > applied)
            .map(|&(_, at)| at)
    }

    /// Woken once each successful poll's page is applied (see [`crate::clock::when_notified`]).
    pub fn polled(&self) -> &tokio::sync::Notify {
        &self.polled
    }
}

/// Tails one catalogue into one view.
#[derive(Debug, Clone)]
pub struct Tailer {
    client: CatalogueClient,
    view: Arc<IngressView>,
    /// The views beside `view` (products' views): every change goes to each, in step.
    others: Vec<Arc<IngressView>>,
    status: Arc<TailStatus>,
    metrics: TcsMetrics,
    pause: watch::Receiver<bool>,
}

impl Tailer {
    /// A tailer of the catalogue `client` talks to into `view`.
    pub fn new(
        client: CatalogueClient,
        view: Arc<IngressView>,
        status: Arc<TailStatus>,
        metrics: TcsMetrics,
    ) -> Self {
        Self {
            client,
            view,
            others: Vec::new(),
            status,
            metrics,
            // Its sender is gone at once: never paused.
            pause: watch::channel(false).1,
        }
    }

    /// The same tailer, applying every change to `others` too.
    pub fn with_others(mut self, others: Vec<Arc<IngressView>>) -> Self {
        self.others = others;
        self
    }

    /// Brings every other view up to the main one's seq, from the log (a view whose snapshot
    /// file was missing or older); before the first poll.
    async fn catch_up_others(&self) -> Result<(), PollError> {
        let target = self.view.seq();
        for view in &self.others {
            self.replay(view, target).await?;
        }
        Ok(())
    }

    /// Applies the log to `view` from its seq up to `target`, then moves it to `target` (what
    /// is left between held no change for it).
    async fn replay(&self, view: &IngressView, target: u64) -> Result<(), PollError> {
        while view.seq() < target {
            let page = self.client.changes(view.seq(), Some(PAGE_LIMIT), Some(0)).await?;
            self.status.record_ok(page.head);
            for change in page.changes.iter().filter(|c| c.seq <= target) {
                view.apply(change);
            }
            if page.changes.last().is_none_or(|c| c.seq >= target) {
                break;
            }
        }
        view.advance_to(target);
        Ok(())
    }

    /// The same tailer, applying nothing while `pause` holds `true`.
    pub fn with_pause(mut self, pause: watch::Receiver<bool>) -> Self {
        self.pause = pause;
        self
    }

    /// Polls until `shutdown` is cancelled, backing off (capped, jittered) after errors.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut failures = 0u32;
        while !self.others.is_empty() {
            let caught_up = tokio::select! {
                () = shutdown.cancelled() => return,
                r = self.catch_up_others() => r,
            };
            match caught_up {
                Ok(()) => break,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let delay = BACKOFF.delay(failures);
                    tracing::warn!(error = %error_chain(&e), "catching the product views up failed");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        failures = 0;
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
        let known = self.view.epoch();
        let new_epoch = !known.is_empty() && !page.epoch.is_empty() && known != page.epoch;
        if new_epoch || page.head < after {
            // Restored from a backup, re-created, or a failover that lost the log's tail: its
            // sequence numbers are not the ones the view counts in.
            tracing::warn!(
                after,
                head = page.head,
                view_epoch = %known,
                epoch = %page.epoch,
                "the catalogue's log is not the one the view follows: reloading the view in full"
            );
            return self.reload().await;
        }
        if known.is_empty() && !page.epoch.is_empty() {
            self.view.set_epoch(&page.epoch);
        }
        if let Some(first) = page.changes.first() {
            if first.seq != after + 1 {
                // The log is dense; a hole means changes were lost upstream or compacted away.
                tracing::warn!(after, first = first.seq, "gap in the catalogue change log");
            }
        }
        for change in &page.changes {
            self.count(self.view.apply(change));
            for view in &self.others {
                view.apply(change);
            }
        }
        if !page.changes.is_empty() {
            self.status.advanced(self.view.seq());
        }
        self.status.polled.notify_waiters();
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

    /// Rebuilds the view from the catalogue's whole log (page by page into a fresh view), then
    /// swaps it in at once; subscribers are told to resync. Returns how many tenants it holds.
    async fn reload(&self) -> Result<usize, PollError> {
        let fresh = self.view.empty_like();
        let mut epoch = String::new();
        loop {
            let page = self
                .client
                .changes(fresh.seq(), Some(PAGE_LIMIT), Some(0))
                .await?;
            self.status.record_ok(page.head);
            epoch.clone_from(&page.epoch);
            for change in &page.changes {
                fresh.apply(change);
            }
            if page.changes.is_empty() || fresh.seq() >= page.head {
                break;
            }
        }
        let mut snapshot = fresh.snapshot().to_owned_snapshot();
        snapshot.epoch.clone_from(&epoch);
        let tenants = snapshot.records.len();
        tracing::info!(seq = snapshot.seq, tenants, epoch = %snapshot.epoch, "view reloaded in full");
        // The others from the same log, up to the same seq.
        let target = snapshot.seq;
        for view in &self.others {
            let fresh = view.empty_like();
            self.replay(&fresh, target).await?;
            let mut snap = fresh.snapshot().to_owned_snapshot();
            snap.epoch.clone_from(&epoch);
            view.reload(snap);
        }
        self.view.reload(snapshot);
        self.status.advanced(self.view.seq());
        self.metrics
            .events
            .with_label_values(&["ingress", "reload"])
            .inc();
        self.status.polled.notify_waiters();
        Ok(tenants)
    }

    async fn fetch(&self, after: u64) -> Result<ChangesPage, PollError> {
        self.client.changes(after, Some(PAGE_LIMIT), Some(WAIT_MS)).await
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
