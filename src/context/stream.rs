//! Follows a TCS view's change stream and applies it to the cache, in order.
//!
//! The stream is read from the local region, failing over to the others. Every event carries
//! the sequence of the previous one, so a gap is detected and repaired by a resync from the
//! bulk snapshot; a silent stream (no heartbeat) is treated as dead and reconnected.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::client::Region;
use super::{Origin, TcsClient, TcsError, TenantCache};
use crate::clock::{now_ms, Backoff};
use crate::feed::{Lines, ViewEvent, MAX_STREAM_LINE};
use crate::metrics::EdgeMetrics;

/// A stream that says nothing (not even a heartbeat) for this long is considered dead.
const SILENCE_LIMIT: Duration = Duration::from_secs(5);
/// Between reconnects: from ~100 ms up to 5 s.
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

/// What the edge knows of its change-stream subscription, for `/readyz`, `/admin` and metrics.
#[derive(Debug)]
pub struct StreamStatus {
    /// The last catalogue sequence applied ([`StreamStatus::applied`]); set only through
    /// [`StreamStatus::set_applied`] and [`StreamStatus::raise_applied`], which wake
    /// [`StreamStatus::applied_at_least`].
    applied: AtomicU64,
    /// Woken when the applied seq moves and when a message arrives.
    moved: tokio::sync::Notify,
    /// Per region: connected now, and the last time (unix ms) a message arrived.
    pub regions: Vec<RegionStatus>,
    /// The wide fan-out's state, when changes come through SNS/SQS.
    pub fanout: FanoutStatus,
}

/// Which transport carries changes to an edge configured for the wide fan-out, for
/// `/admin/regions` and readiness.
#[derive(Debug, Default)]
pub struct FanoutStatus {
    /// 0: not configured (the stream only); 1: SQS; 2: the stream, SQS having failed.
    transport: std::sync::atomic::AtomicU8,
    /// Unix ms of the last receive from SQS that went through (0: never).
    last_receive_ms: AtomicU64,
    /// How long a receive may wait, in ms: a receive older than this plus a margin means SQS
    /// is not being read.
    wait_ms: AtomicU64,
    /// The queue read, or why SQS is not.
    detail: std::sync::Mutex<String>,
    /// The region TCS's head, from its answer to this edge's last fleet report (0: unknown).
    tcs_head: AtomicU64,
    /// The view's newest event at that head: nothing was missed up to the head by an edge
    /// that applied this far.
    tcs_last_event: AtomicU64,
    /// Heartbeats the stream applied while caught up ([`FanoutStatus::caught_up_count`]).
    caught_up: AtomicU64,
}

/// What [`FanoutStatus`] says a transport is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// No fan-out configured: the stream.
    Stream,
    /// SQS carries changes.
    Sqs,
    /// SQS failed; the stream carries changes meanwhile.
    Fallback,
}

impl FanoutStatus {
    /// The transport now.
    pub fn transport(&self) -> Transport {
        match self.transport.load(Ordering::Acquire) {
            1 => Transport::Sqs,
            2 => Transport::Fallback,
            _ => Transport::Stream,
        }
    }

    /// Records the transport and what to say of it (the queue, or why not SQS).
    pub fn set(&self, transport: Transport, detail: &str, wait: Duration) {
        let n = match transport {
            Transport::Stream => 0,
            Transport::Sqs => 1,
            Transport::Fallback => 2,
        };
        self.wait_ms.store(
            u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        *self
            .detail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = detail.to_owned();
        self.transport.store(n, Ordering::Release);
    }

    /// The queue read, or why SQS is not.
    pub fn detail(&self) -> String {
        self.detail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A receive from SQS went through.
    pub fn received(&self) {
        self.last_receive_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Ms since the last receive that went through (`None`: never).
    pub fn since_receive_ms(&self) -> Option<u64> {
        match self.last_receive_ms.load(Ordering::Relaxed) {
            0 => None,
            at => Some(now_ms().saturating_sub(at)),
        }
    }

    /// Whether SQS is being read now: the transport is SQS and a receive went through within
    /// a wait and a margin.
    pub fn live(&self) -> bool {
        let limit = self.wait_ms.load(Ordering::Relaxed) + SILENCE_LIMIT.as_millis() as u64;
        self.transport() == Transport::Sqs && self.since_receive_ms().is_some_and(|ms| ms < limit)
    }

    /// Heartbeats the stream has applied while caught up: a repair from the stream is done
    /// when one more arrives.
    pub fn caught_up_count(&self) -> u64 {
        self.caught_up.load(Ordering::Acquire)
    }

    /// The head TCS last told this edge (0: unknown).
    pub fn tcs_head(&self) -> u64 {
        self.tcs_head.load(Ordering::Acquire)
    }

    /// The head TCS last told this edge and the view's newest event then, read together
    /// (`(0, 0)`: unknown).
    pub fn tcs_position(&self) -> (u64, u64) {
        let _guard = self
            .detail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (
            self.tcs_head.load(Ordering::Acquire),
            self.tcs_last_event.load(Ordering::Acquire),
        )
    }

    /// Records where TCS said its view is: its head and newest event.
    pub fn set_tcs_position(&self, head: u64, last_event: u64) {
        let _guard = self
            .detail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.tcs_last_event.store(last_event, Ordering::Release);
        self.tcs_head.store(head, Ordering::Release);
    }
}

/// One region's subscription state.
#[derive(Debug)]
pub struct RegionStatus {
    /// Region name.
    pub name: Arc<str>,
    /// Whether the edge is reading this region's stream now.
    pub connected: AtomicBool,
    /// Unix time in ms of the last message from this region (0: never).
    pub last_message_ms: AtomicU64,
}

impl StreamStatus {
    /// A status for every region of `client`, nothing applied yet.
    pub fn new(client: &TcsClient) -> Self {
        let regions = client
            .region_names()
            .map(|name| RegionStatus {
                name: name.clone(),
                connected: AtomicBool::new(false),
                last_message_ms: AtomicU64::new(0),
            })
            .collect();
        StreamStatus {
            applied: AtomicU64::new(0),
            moved: tokio::sync::Notify::new(),
            regions,
            fanout: FanoutStatus::default(),
        }
    }

    /// The last catalogue sequence applied.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Records that everything up to `seq` is applied (it may go back: a resync from another
    /// region's snapshot).
    pub fn set_applied(&self, seq: u64) {
        self.applied.store(seq, Ordering::Release);
        self.moved.notify_waiters();
    }

    /// Records `seq` as applied unless a later one already is.
    pub fn raise_applied(&self, seq: u64) {
        self.applied.fetch_max(seq, Ordering::AcqRel);
        self.moved.notify_waiters();
    }

    /// Resolves once the applied sequence is `seq` or later: what a caller waits on instead
    /// of polling.
    pub async fn applied_at_least(&self, seq: u64) {
        crate::clock::when_notified(&self.moved, || self.applied() >= seq).await;
    }

    /// Resolves once `done` holds, checked each time the applied seq moves or a message
    /// arrives.
    pub async fn until(&self, done: impl Fn() -> bool) {
        crate::clock::when_notified(&self.moved, done).await;
    }

    /// Resolves once a region's stream is live ([`StreamStatus::any_live`]).
    pub async fn live(&self) {
        crate::clock::when_notified(&self.moved, || self.any_live()).await;
    }

    /// Wakes whoever waits on [`StreamStatus::live`] (the fan-out's receives make an edge live).
    pub fn notify(&self) {
        self.moved.notify_waiters();
    }

    /// Whether any region's stream has spoken within the silence limit, or SQS is being read.
    pub fn any_live(&self) -> bool {
        if self.fanout.live() {
            return true;
        }
        let now = now_ms();
        self.regions.iter().any(|r| {
            r.connected.load(Ordering::Relaxed)
                && now.saturating_sub(r.last_message_ms.load(Ordering::Relaxed))
                    < SILENCE_LIMIT.as_millis() as u64
        })
    }
}

/// Follows the change stream until `shutdown`, reconnecting with backoff and failing over
/// between regions (local first).
pub async fn follow(
    cache: Arc<TenantCache>,
    status: Arc<StreamStatus>,
    metrics: EdgeMetrics,
    shutdown: CancellationToken,
) {
    let client = cache.client.clone();
    if client.regions.is_empty() {
        return;
    }
    let mut index = 0;
    let mut failures = 0u32;
    loop {
        let region = &client.regions[index];
        let follower = Follower {
            cache: &cache,
            client: &client,
            region,
            status: &status,
            metrics: &metrics,
        };
        let outcome = tokio::select! {
            () = shutdown.cancelled() => {
                status.regions[index].connected.store(false, Ordering::Relaxed);
                return;
            }
            outcome = follower.run() => outcome,
        };
        status.regions[index].connected.store(false, Ordering::Relaxed);
        match outcome {
            Ok(spoke) => {
                if spoke {
                    failures = 0;
                }
                tracing::info!(region = %region.name, "tcs change stream ended, reconnecting");
            }
            Err(e) => {
                tracing::warn!(error = %e, region = %region.name, "tcs change stream failed");
                // Fail over to the next region; come back to the local one after a full turn.
                index = (index + 1) % client.regions.len();
            }
        }
        failures = failures.saturating_add(1);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(BACKOFF.delay(failures)) => {}
        }
    }
}

struct Follower<'a> {
    cache: &'a TenantCache,
    client: &'a TcsClient,
    region: &'a Region,
    status: &'a StreamStatus,
    metrics: &'a EdgeMetrics,
}

/// What to do after one event.
enum Next {
    Continue,
    /// Repair from the snapshot; `Some(seq)` when TCS itself said so, at its seq `seq`.
    Resync(Option<u64>),
}

impl Follower<'_> {
    fn region_status(&self) -> Option<&RegionStatus> {
        self.status.regions.iter().find(|r| r.name == self.region.name)
    }

    /// Reads one connection's worth of stream. `Ok(true)` when it delivered at least a message.
    async fn run(&self) -> Result<bool, TcsError> {
        let after = self.status.applied();
        let url = format!(
            "{}/v1/views/{}/changes?after={after}",
            self.region.base, self.client.view
        );
        let transport = |source: reqwest::Error| TcsError::Transport {
            region: self.region.name.clone(),
            source: Arc::new(source),
        };
        let resp = self
            .client
            .stream_http
            .get(url)
            .header("authorization", &self.region.auth)
            .send()
            .await;
        let mut resp = resp.map_err(transport)?;
        if resp.status() != reqwest::StatusCode::OK {
            return Err(TcsError::Status {
                region: self.region.name.clone(),
                status: resp.status().as_u16(),
            });
        }
        if let Some(s) = self.region_status() {
            s.connected.store(true, Ordering::Relaxed);
        }
        let mut lines = Lines::new(MAX_STREAM_LINE);
        let mut spoke = false;
        loop {
            let chunk = match tokio::time::timeout(SILENCE_LIMIT, resp.chunk()).await {
                Err(_) => {
                    tracing::warn!(region = %self.region.name, "tcs change stream went silent");
                    return Ok(spoke);
                }
                Ok(chunk) => chunk.map_err(transport)?,
            };
            let Some(chunk) = chunk else { return Ok(spoke) };
            lines.push(&chunk);
            while let Some(line) = lines.next_line().map_err(|_| TcsError::Protocol {
                region: self.region.name.clone(),
                reason: "a change-stream line over the limit",
            })? {
                spoke = true;
                if let Next::Resync(at) = self.on_line(&line).await {
                    self.resync(at).await?;
                    return Ok(true);
                }
            }
        }
    }

    async fn on_line(&self, line: &[u8]) -> Next {
        if let Some(s) = self.region_status() {
            s.last_message_ms.store(now_ms(), Ordering::Relaxed);
            // A message (a heartbeat a second at most, or an event) may make the stream live.
            self.status.moved.notify_waiters();
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            return Next::Continue;
        }
        match serde_json::from_slice::<ViewEvent>(line) {
            Ok(event) => self.on_event(event).await,
            Err(e) => {
                tracing::warn!(error = %e, region = %self.region.name, "malformed change-stream line, resyncing");
                Next::Resync(None)
            }
        }
    }

    async fn on_event(&self, event: ViewEvent) -> Next {
        let applied = self.status.applied();
        match event {
            ViewEvent::Upsert {
                seq,
                prev,
                record,
                removed_hosts,
            } => {
                if prev > applied {
                    return Next::Resync(None);
                }
                if seq > applied {
                    self.cache
                        .apply_upsert(record, &removed_hosts, &self.region.name, Origin::Stream)
                        .await;
                    self.advance(seq, "upsert");
                }
            }
            ViewEvent::Delete {
                seq,
                prev,
                hosts,
                version,
                ..
            } => {
                if prev > applied {
                    return Next::Resync(None);
                }
                if seq > applied {
                    self.cache.apply_delete(&hosts, version).await;
                    self.advance(seq, "delete");
                }
            }
            ViewEvent::Heartbeat { seq, last_event } => {
                if last_event > applied {
                    return Next::Resync(None);
                }
                if seq > applied {
                    self.advance(seq, "heartbeat");
                }
                self.status.fanout.caught_up.fetch_add(1, Ordering::AcqRel);
                self.status.moved.notify_waiters();
            }
            ViewEvent::Resync { seq } => return Next::Resync(Some(seq)),
        }
        Next::Continue
    }

    /// Counts the event, then moves the seq: whoever waits on the seq sees the count too.
    fn advance(&self, seq: u64, kind: &'static str) {
        self.metrics
            .stream_seq
            .set(i64::try_from(seq).unwrap_or(i64::MAX));
        if kind != "heartbeat" {
            self.metrics.stream_events.with_label_values(&[kind]).inc();
        }
        self.status.set_applied(seq);
    }

    async fn resync(&self, at: Option<u64>) -> Result<(), TcsError> {
        // An edge holding nothing has nothing to repair: it resumes at TCS's seq instead of
        // fetching every tenant of the region (a million records, seconds of CPU) to keep none.
        if let Some(seq) = at.filter(|_| self.cache.holds_nothing()) {
            tracing::info!(region = %self.region.name, seq, "nothing cached; resuming the change stream at TCS's seq");
            // Counted before the seq moves: whoever waits on the seq sees the count too.
            self.metrics.stream_events.with_label_values(&["resync"]).inc();
            self.status.raise_applied(seq);
            return Ok(());
        }
        tracing::info!(region = %self.region.name, "resyncing tenant contexts from the bulk snapshot");
        let snapshot = self.client.snapshot(self.region).await?;
        let seq = snapshot.seq;
        self.cache.resync(snapshot, &self.region.name, false).await;
        self.metrics.stream_events.with_label_values(&["resync"]).inc();
        self.status.set_applied(seq);
        Ok(())
    }
}
