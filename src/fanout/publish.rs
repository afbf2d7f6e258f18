//! The publisher, in TCS: one per region at a time, by a lease in the catalogue's store. The
//! holder gathers the `ingress` view's events for `batch_ms`, packs them into messages and
//! publishes them to the region's topic with `PublishBatch`, in order; a failed call is retried
//! with backoff until it goes through or the lease is lost, never overtaken by a later one. An
//! idle region gets a heartbeat every `heartbeat_secs`, so edges see a head they have missed.
//!
//! During a handover two nodes may publish the same events for a moment: edges apply by
//! sequence and version, so duplicates do nothing.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sns::types::PublishBatchRequestEntry;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::aws::{sdk_error, SnsConfig};
use super::{pack, publish_batches, FanoutMessage, MAX_MESSAGE};
use crate::clock::Backoff;
use crate::feed::{CatalogueClient, ViewEvent};
use crate::tcs::metrics::TcsMetrics;
use crate::tcs::view::{Backlog, IngressView};

/// Between retries of a failed publish: from 100 ms up to 5 s.
const RETRY: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

/// One region's publisher, run by every TCS node of the region; only the lease's holder
/// publishes.
pub struct Publisher {
    /// The settings.
    pub config: SnsConfig,
    /// The node's region.
    pub region: String,
    /// Who this node is, for the lease (unique among the region's nodes).
    pub holder: String,
    /// The catalogue, which keeps the lease.
    pub catalogue: CatalogueClient,
    /// The view whose events are published.
    pub view: Arc<IngressView>,
    /// Where counts go.
    pub metrics: TcsMetrics,
}

/// Why the publishing turn ended.
enum Ended {
    Shutdown,
    LeaseLost,
}

impl Publisher {
    /// The lease's name: one per region.
    pub fn lease_name(&self) -> String {
        format!("fanout-{}", self.region)
    }

    /// Competes for the lease and publishes while holding it, until `shutdown`; gives the
    /// lease up on the way out.
    pub async fn run(self, shutdown: CancellationToken) {
        let sdk = self.config.sdk(&self.region).await;
        let sns = aws_sdk_sns::Client::new(&sdk);
        let renew_every = Duration::from_millis(self.config.lease_ms / 3);
        let mut topic_arn: Option<String> = None;
        loop {
            if self.acquire().await {
                tracing::info!(region = %self.region, holder = %self.holder, "fan-out publisher lease taken");
                self.metrics.fanout_leader.set(1);
                let ended = match self.topic(&sns, &mut topic_arn).await {
                    Some(arn) => self.publish(&sns, &arn, &shutdown).await,
                    None => Ended::LeaseLost,
                };
                self.metrics.fanout_leader.set(0);
                if let Ended::Shutdown = ended {
                    // Give the lease up, so another node takes over at once.
                    let _ = self.catalogue.lease(&self.lease_name(), &self.holder, 0).await;
                    return;
                }
                tracing::info!(region = %self.region, "fan-out publisher lease lost");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(renew_every) => {}
            }
        }
    }

    /// Takes or renews the lease; whether this node holds it.
    async fn acquire(&self) -> bool {
        match self
            .catalogue
            .lease(&self.lease_name(), &self.holder, self.config.lease_ms)
            .await
        {
            Ok(lease) => lease.held_by(&self.holder),
            Err(e) => {
                tracing::warn!(error = %crate::feed::error_chain(&e), "fan-out lease: catalogue unreachable");
                false
            }
        }
    }

    /// The topic's ARN: the configured one, or the named topic's (created if absent).
    async fn topic(&self, sns: &aws_sdk_sns::Client, known: &mut Option<String>) -> Option<String> {
        if self.config.topic.starts_with("arn:") {
            return Some(self.config.topic.clone());
        }
        if let Some(arn) = known {
            return Some(arn.clone());
        }
        match sns.create_topic().name(&self.config.topic).send().await {
            Ok(out) => {
                *known = out.topic_arn;
                known.clone()
            }
            Err(e) => {
                tracing::warn!(error = %sdk_error(&e), topic = %self.config.topic, "fan-out topic unavailable");
                None
            }
        }
    }

    /// Publishes the view's events while the lease holds.
    async fn publish(&self, sns: &aws_sdk_sns::Client, arn: &str, shutdown: &CancellationToken) -> Ended {
        let batch = Duration::from_millis(self.config.batch_ms);
        let heartbeat = Duration::from_secs(self.config.heartbeat_secs);
        let renew_every = Duration::from_millis(self.config.lease_ms / 3);
        let mut renew_at = Instant::now() + renew_every;
        // Start where the view is: what a previous holder left unpublished shows as a hole in
        // the chain, which edges repair from TCS. The first heartbeat tells them at once.
        let (head, mut last_event) = self.view.position();
        let mut turn = Turn {
            publisher: self,
            sns,
            arn: arn.to_owned(),
            shutdown,
        };
        if !turn
            .send(&[FanoutMessage::heartbeat(head, last_event).to_body()])
            .await
        {
            return Ended::Shutdown;
        }
        let mut sub = self.view.subscribe(last_event);
        // What the view applied between reading its position and subscribing.
        if let Backlog::Events(backlog) = std::mem::replace(&mut sub.backlog, Backlog::Events(Vec::new())) {
            if !self.publish_events(&mut turn, backlog, &mut last_event).await {
                return Ended::Shutdown;
            }
        }
        let mut idle_since = Instant::now();
        loop {
            // Wait for an event, a renewal, a heartbeat or shutdown.
            let first = tokio::select! {
                () = shutdown.cancelled() => return Ended::Shutdown,
                r = sub.live.recv() => Some(r),
                () = tokio::time::sleep_until(renew_at.min(idle_since + heartbeat)) => None,
            };
            if Instant::now() >= renew_at {
                tracing::debug!(region = %self.region, "fan-out lease renewal");
                if !self.acquire().await {
                    return Ended::LeaseLost;
                }
                renew_at = Instant::now() + renew_every;
            }
            let mut events: Vec<ViewEvent> = Vec::new();
            let mut resync = false;
            let mut take = |r: Result<ViewEvent, RecvError>, events: &mut Vec<ViewEvent>| match r {
                Ok(e @ (ViewEvent::Upsert { .. } | ViewEvent::Delete { .. })) if e.seq() > last_event => {
                    events.push(e);
                }
                // The view was reloaded from another log: start again from where it is.
                Ok(ViewEvent::Resync { .. }) | Err(_) => resync = true,
                Ok(_) => {}
            };
            match first {
                None => {
                    if Instant::now() >= idle_since + heartbeat {
                        let (seq, last) = self.view.position();
                        // Only once every event is out: a heartbeat never claims a head whose
                        // events are still on their way.
                        if last <= last_event
                            && !turn.send(&[FanoutMessage::heartbeat(seq, last).to_body()]).await
                        {
                            return Ended::Shutdown;
                        }
                        idle_since = Instant::now();
                    }
                    continue;
                }
                Some(r) => {
                    take(r, &mut events);
                    // Gather for the batch window.
                    let until = Instant::now() + batch;
                    loop {
                        tokio::select! {
                            () = shutdown.cancelled() => return Ended::Shutdown,
                            () = tokio::time::sleep_until(until) => break,
                            r = sub.live.recv() => take(r, &mut events),
                        }
                    }
                }
            }
            if resync {
                // The channel overflowed: take the missed events from the ring, or, if they are
                // gone, say where the view is so edges repair.
                sub = self.view.subscribe(last_event);
                match std::mem::replace(&mut sub.backlog, Backlog::Events(Vec::new())) {
                    Backlog::Events(backlog) => {
                        events = backlog;
                    }
                    Backlog::Resync(seq) => {
                        let (_, last) = self.view.position();
                        events.clear();
                        if !turn.send(&[FanoutMessage::heartbeat(seq, last).to_body()]).await {
                            return Ended::Shutdown;
                        }
                        last_event = last;
                        continue;
                    }
                }
            }
            if !self.publish_events(&mut turn, events, &mut last_event).await {
                return Ended::Shutdown;
            }
            idle_since = Instant::now();
        }
    }

    /// Packs and publishes the events after `last_event`, moving it past them; false on
    /// shutdown.
    async fn publish_events(
        &self,
        turn: &mut Turn<'_>,
        mut events: Vec<ViewEvent>,
        last_event: &mut u64,
    ) -> bool {
        events.retain(|e| {
            e.seq() > *last_event && !matches!(e, ViewEvent::Heartbeat { .. } | ViewEvent::Resync { .. })
        });
        let Some(last) = events.last().map(ViewEvent::seq) else {
            return true;
        };
        let packed = match pack(&events, MAX_MESSAGE) {
            Ok(packed) => packed,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode fan-out message");
                return true;
            }
        };
        if !packed.too_large.is_empty() {
            tracing::warn!(seqs = ?packed.too_large, "view events too large for one SNS message: edges repair them from TCS");
        }
        self.metrics.fanout_batch_events.observe(events.len() as f64);
        tracing::debug!(
            events = events.len(),
            messages = packed.bodies.len(),
            last,
            "fan-out batch"
        );
        if !turn.send(&packed.bodies).await {
            return false;
        }
        *last_event = last;
        true
    }
}

impl FanoutMessage {
    /// The message as its JSON body.
    pub fn to_body(&self) -> String {
        // Plain data: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// One lease holder's publishing: the client, the topic and when to stop.
struct Turn<'a> {
    publisher: &'a Publisher,
    sns: &'a aws_sdk_sns::Client,
    arn: String,
    shutdown: &'a CancellationToken,
}

impl Turn<'_> {
    /// Publishes `bodies` in order, each call retried with backoff until it goes through;
    /// false on shutdown.
    async fn send(&mut self, bodies: &[String]) -> bool {
        let metrics = &self.publisher.metrics;
        for range in publish_batches(bodies, MAX_MESSAGE) {
            let chunk = &bodies[range];
            let mut failures = 0u32;
            loop {
                match self.call(chunk).await {
                    Ok(0) => {
                        metrics.fanout_calls.with_label_values(&["ok"]).inc();
                        metrics
                            .fanout_published
                            .with_label_values(&["ok"])
                            .inc_by(chunk.len() as u64);
                        break;
                    }
                    Ok(failed) => {
                        // Some entries failed: the whole call is sent again, in order (the
                        // ones that went through become duplicates, which edges skip).
                        metrics.fanout_calls.with_label_values(&["partial"]).inc();
                        metrics
                            .fanout_published
                            .with_label_values(&["failed"])
                            .inc_by(failed as u64);
                    }
                    Err(e) => {
                        metrics.fanout_calls.with_label_values(&["failed"]).inc();
                        metrics
                            .fanout_published
                            .with_label_values(&["failed"])
                            .inc_by(chunk.len() as u64);
                        if failures == 0 || failures % 20 == 0 {
                            tracing::warn!(error = %e, failures, "fan-out publish failed, retrying");
                        }
                        if e.contains("NotFound") {
                            // The topic went away (an emulator restarted, an operator's
                            // mistake): a topic named in the config is created again.
                            let mut fresh = None;
                            if let Some(arn) = self.publisher.topic(self.sns, &mut fresh).await {
                                self.arn = arn;
                            }
                        }
                    }
                }
                failures = failures.saturating_add(1);
                tokio::select! {
                    () = self.shutdown.cancelled() => return false,
                    () = tokio::time::sleep(RETRY.delay(failures)) => {}
                }
            }
        }
        true
    }

    /// One `PublishBatch`; how many entries failed.
    async fn call(&self, chunk: &[String]) -> Result<usize, String> {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, body)| {
                PublishBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message(body)
                    .build()
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        let out = self
            .sns
            .publish_batch()
            .topic_arn(&self.arn)
            .set_publish_batch_request_entries(Some(entries))
            .send()
            .await
            .map_err(|e| sdk_error(&e))?;
        Ok(out.failed().len())
    }
}
