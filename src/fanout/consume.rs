//! The consumer, in the edge: its own SQS queue, subscribed to its region's topic with raw
//! delivery and a policy that admits only that topic; long polls of up to 10 messages; events
//! applied in order through the [`Reorder`] buffer, newer versions only, to hosts the edge
//! holds (the cache's rules, as for the stream); messages deleted once applied.
//!
//! The NDJSON stream is the repair path: after subscribing (the queue holds only what was
//! published since), when a gap in the messages lasts `gap_ms`, and when TCS's head (the answer
//! to the edge's fleet report) stays ahead of what the edge applied, the edge follows the
//! stream until it has caught up. When SQS or SNS cannot be reached, the edge follows the
//! stream instead, says so in `tenant_edge_fanout_transport` and `/admin/regions`, and tries
//! SQS again after `retry_secs`. A queue deleted under the edge is created again.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, QueueAttributeName};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::aws::{sdk_error, SnsConfig};
use super::{FanoutMessage, Reorder};
use crate::context::{self, Origin, StreamStatus, TenantCache, Transport};
use crate::feed::ViewEvent;
use crate::metrics::EdgeMetrics;

/// The most messages one receive returns (SQS's limit).
const BATCH: i32 = 10;
/// Early messages the reorder buffer holds before it asks for a repair.
const MAX_WAITING: usize = 1024;
/// A repair from the stream gives up after this long (the next gap check tries again).
const REPAIR_LIMIT: Duration = Duration::from_secs(15);
/// Repairs for being behind TCS, with no message from the queue between them, before the edge
/// sets its queue and subscription up again.
const UNHEARD_BEFORE_RESUBSCRIBE: u32 = 2;
/// Failed receives in a row before the edge falls back to the stream.
const FAILURES_BEFORE_FALLBACK: u32 = 3;

/// One edge's consumer of its region's fan-out.
pub struct Consumer {
    /// The settings.
    pub config: SnsConfig,
    /// The edge's id: its queue is named after it.
    pub edge_id: String,
    /// The edge's region.
    pub region: Arc<str>,
    /// The cache the events go to.
    pub cache: Arc<TenantCache>,
    /// What is applied, and the transport's state.
    pub status: Arc<StreamStatus>,
    /// Where counts go.
    pub metrics: EdgeMetrics,
}

/// The edge's queue and its subscription.
#[derive(Debug, Clone)]
struct Queue {
    url: String,
    subscription: Option<String>,
}

/// Why reading the queue stopped.
enum Stopped {
    Shutdown,
    /// The queue or its subscription is gone: set them up again.
    Gone,
    /// SQS failed: follow the stream for a while.
    Failed(String),
}

/// The SDK clients.
struct Clients {
    sqs: aws_sdk_sqs::Client,
    sns: aws_sdk_sns::Client,
}

impl Consumer {
    /// Reads the fan-out until `shutdown`, falling back to the stream while SQS fails; at
    /// shutdown unsubscribes and deletes the queue when configured to.
    pub async fn run(self, shutdown: CancellationToken) {
        let sdk = self.config.sdk(&self.region).await;
        let clients = Clients {
            sqs: aws_sdk_sqs::Client::new(&sdk),
            sns: aws_sdk_sns::Client::new(&sdk),
        };
        let mut last: Option<Queue> = None;
        self.set_transport(Transport::Fallback, "setting the queue up");
        loop {
            let stopped = match self.setup(&clients).await {
                Ok(queue) => {
                    last = Some(queue.clone());
                    self.read(&clients, &queue, &shutdown).await
                }
                Err(e) => Stopped::Failed(e),
            };
            match stopped {
                Stopped::Shutdown => break,
                Stopped::Gone => {
                    tracing::warn!(edge = %self.edge_id, "fan-out queue or subscription gone: setting them up again");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                Stopped::Failed(why) => {
                    tracing::warn!(error = %why, "fan-out unavailable: following the change stream");
                    self.set_transport(Transport::Fallback, &why);
                    if !self.fall_back(&shutdown).await {
                        break;
                    }
                }
            }
        }
        if self.config.delete_queue_on_shutdown {
            if let Some(queue) = last {
                self.tear_down(&clients, &queue).await;
            }
        }
    }

    fn set_transport(&self, transport: Transport, detail: &str) {
        let wait = Duration::from_secs(self.config.wait_secs);
        self.status.fanout.set(transport, detail, wait);
        let sqs = i64::from(transport == Transport::Sqs);
        self.metrics.fanout_transport.with_label_values(&["sqs"]).set(sqs);
        self.metrics
            .fanout_transport
            .with_label_values(&["stream"])
            .set(1 - sqs);
        self.status.notify();
    }

    fn count(&self, op: &str) {
        self.metrics.fanout_sqs_requests.with_label_values(&[op]).inc();
    }

    /// Follows the stream for `retry_secs`; false on shutdown.
    async fn fall_back(&self, shutdown: &CancellationToken) -> bool {
        let retry = tokio::time::sleep(Duration::from_secs(self.config.retry_secs));
        self.follow_until(retry, shutdown).await
    }

    /// Follows the stream until `done` resolves; false on shutdown.
    async fn follow_until(
        &self,
        done: impl std::future::Future<Output = ()>,
        shutdown: &CancellationToken,
    ) -> bool {
        let stop = shutdown.child_token();
        let follow = tokio::spawn(context::follow(
            self.cache.clone(),
            self.status.clone(),
            self.metrics.clone(),
            stop.clone(),
        ));
        let go_on = tokio::select! {
            () = shutdown.cancelled() => false,
            () = done => true,
        };
        stop.cancel();
        let _ = follow.await;
        go_on
    }

    /// The topic's ARN, the queue (created if absent, its policy admitting only the topic)
    /// and the queue's raw-delivery subscription to the topic.
    async fn setup(&self, c: &Clients) -> Result<Queue, String> {
        let topic = if self.config.topic.starts_with("arn:") {
            self.config.topic.clone()
        } else {
            // Idempotent: answers the ARN of the topic the publisher created.
            let out = c
                .sns
                .create_topic()
                .name(&self.config.topic)
                .send()
                .await
                .map_err(|e| format!("SNS topic {}: {}", self.config.topic, sdk_error(&e)))?;
            out.topic_arn.ok_or("SNS answered no topic ARN")?
        };
        let name = self.config.queue_name(&self.edge_id);
        self.count("create_queue");
        let created = c
            .sqs
            .create_queue()
            .queue_name(&name)
            .attributes(QueueAttributeName::MessageRetentionPeriod, "3600")
            .send()
            .await
            .map_err(|e| format!("SQS queue {name}: {}", sdk_error(&e)))?;
        let url = created.queue_url.ok_or("SQS answered no queue URL")?;
        self.count("get_queue_attributes");
        let attributes = c
            .sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| format!("SQS queue {name}: {}", sdk_error(&e)))?;
        let arn = attributes
            .attributes
            .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
            .ok_or("SQS answered no queue ARN")?;
        let policy = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": "only-the-region-topic",
                "Effect": "Allow",
                "Principal": {"Service": "sns.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": arn,
                "Condition": {"ArnEquals": {"aws:SourceArn": topic}},
            }],
        });
        self.count("set_queue_attributes");
        c.sqs
            .set_queue_attributes()
            .queue_url(&url)
            .attributes(QueueAttributeName::Policy, policy.to_string())
            .send()
            .await
            .map_err(|e| format!("SQS queue {name} policy: {}", sdk_error(&e)))?;
        let subscribed = c
            .sns
            .subscribe()
            .topic_arn(&topic)
            .protocol("sqs")
            .endpoint(&arn)
            .attributes("RawMessageDelivery", "true")
            .return_subscription_arn(true)
            .send()
            .await
            .map_err(|e| format!("SNS subscribe {name}: {}", sdk_error(&e)))?;
        tracing::info!(queue = %name, topic = %topic, "fan-out queue subscribed");
        Ok(Queue {
            url,
            subscription: subscribed.subscription_arn,
        })
    }

    async fn tear_down(&self, c: &Clients, queue: &Queue) {
        if let Some(arn) = &queue.subscription {
            if let Err(e) = c.sns.unsubscribe().subscription_arn(arn).send().await {
                tracing::warn!(error = %sdk_error(&e), "fan-out: unsubscribing failed");
            }
        }
        self.count("delete_queue");
        match c.sqs.delete_queue().queue_url(&queue.url).send().await {
            Ok(_) => tracing::info!(queue = %queue.url, "fan-out queue deleted"),
            Err(e) => tracing::warn!(error = %sdk_error(&e), "fan-out: deleting the queue failed"),
        }
    }

    /// Reads the queue until shutdown or failure.
    async fn read(&self, c: &Clients, queue: &Queue, shutdown: &CancellationToken) -> Stopped {
        // The queue holds only what was published since it subscribed: catch up first.
        if !self.repair("start", None, shutdown).await {
            return Stopped::Shutdown;
        }
        self.set_transport(Transport::Sqs, &queue.url);
        let mut reorder = Reorder::new(self.status.applied(), MAX_WAITING);
        // Receipts of messages not applied yet, by the message's last sequence.
        let mut held: Vec<(u64, String)> = Vec::new();
        let mut behind: Option<(u64, Instant)> = None;
        let mut failures = 0u32;
        // Repairs because TCS was ahead, in a row with no message in between: the
        // subscription itself may be gone (a topic deleted and created again).
        let mut unheard = 0u32;
        let gap = Duration::from_millis(self.config.gap_ms);
        loop {
            // Wait shorter while something may need a repair, so it is checked in time.
            let wait = if reorder.gap_since().is_some() || behind.is_some() {
                1
            } else {
                i32::try_from(self.config.wait_secs).unwrap_or(20)
            };
            self.count("receive_message");
            // A long poll is never abandoned for anything but shutdown: the queue would hand
            // the next message to the abandoned call, hiding it for the visibility timeout.
            let received = tokio::select! {
                () = shutdown.cancelled() => return Stopped::Shutdown,
                r = c.sqs.receive_message()
                    .queue_url(&queue.url)
                    .max_number_of_messages(BATCH)
                    .wait_time_seconds(wait)
                    .send() => Some(r),
            };
            let messages = match received {
                None => Vec::new(),
                Some(Ok(out)) => {
                    failures = 0;
                    self.status.fanout.received();
                    self.status.notify();
                    out.messages.unwrap_or_default()
                }
                Some(Err(e)) => {
                    let gone = e.as_service_error().is_some_and(
                        aws_sdk_sqs::operation::receive_message::ReceiveMessageError::is_queue_does_not_exist,
                    );
                    let why = sdk_error(&e);
                    if gone || why.contains("NonExistentQueue") || why.contains("QueueDoesNotExist") {
                        return Stopped::Gone;
                    }
                    failures += 1;
                    if failures >= FAILURES_BEFORE_FALLBACK {
                        return Stopped::Failed(why);
                    }
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(failures))).await;
                    continue;
                }
            };
            // A repair (or a resync of the stream) may have moved the edge: start from there.
            if self.status.applied() != reorder.applied() {
                reorder.repaired(self.status.applied(), std::time::Instant::now());
            }
            let mut malformed = Vec::new();
            for m in messages {
                let Some(receipt) = m.receipt_handle else { continue };
                let Some(message) = m.body.as_deref().and_then(decode) else {
                    self.metrics
                        .fanout_messages
                        .with_label_values(&["malformed"])
                        .inc();
                    malformed.push(receipt);
                    continue;
                };
                let to_seq = message.to_seq;
                let before = reorder.applied();
                let events = reorder.push(message, std::time::Instant::now());
                let result = if to_seq <= before {
                    "duplicate"
                } else if reorder.applied() >= to_seq {
                    "applied"
                } else {
                    "buffered"
                };
                self.metrics.fanout_messages.with_label_values(&[result]).inc();
                self.apply(events).await;
                held.push((to_seq, receipt));
                unheard = 0;
            }
            self.advance(reorder.applied());
            let applied = reorder.applied();
            let (done, waiting): (Vec<_>, Vec<_>) = held.into_iter().partition(|(to, _)| *to <= applied);
            held = waiting;
            let receipts = done
                .into_iter()
                .map(|(_, r)| r)
                .chain(malformed)
                .collect::<Vec<_>>();
            if let Err(e) = self.delete(c, queue, receipts).await {
                tracing::debug!(error = %e, "fan-out: deleting messages failed (they come again, as duplicates)");
            }
            // A gap that lasts, or TCS ahead of us for long: repair from the stream.
            let now = Instant::now();
            let gap_lasts = reorder.gap_since().is_some_and(|since| since.elapsed() >= gap);
            if reorder.overflowing() || gap_lasts {
                if !self.repair("gap", reorder.wanted(), shutdown).await {
                    return Stopped::Shutdown;
                }
                let events = reorder.repaired(self.status.applied(), std::time::Instant::now());
                self.apply(events).await;
                self.advance(reorder.applied());
            }
            // Where TCS said its view is, with its last fleet report: a heartbeat in effect.
            let (head, last_event) = self.status.fanout.tcs_position();
            let applied = self.status.applied();
            if last_event <= applied && head > applied && reorder.gap_since().is_none() {
                // Nothing happened in between but changes without events (shards, realms).
                let events = reorder.repaired(head, std::time::Instant::now());
                self.apply(events).await;
                self.advance(reorder.applied());
            }
            behind = match behind {
                Some((h, _)) if self.status.applied() >= h => None,
                Some((h, since)) if now.duration_since(since) >= gap => {
                    if !self.repair("behind", Some(h), shutdown).await {
                        return Stopped::Shutdown;
                    }
                    unheard += 1;
                    if unheard >= UNHEARD_BEFORE_RESUBSCRIBE {
                        tracing::warn!(edge = %self.edge_id, "fan-out: nothing from the topic while TCS moved on; subscribing again");
                        return Stopped::Gone;
                    }
                    let events = reorder.repaired(self.status.applied(), std::time::Instant::now());
                    self.apply(events).await;
                    self.advance(reorder.applied());
                    None
                }
                Some(b) => Some(b),
                None if last_event > self.status.applied() => Some((last_event, now)),
                None => None,
            };
        }
    }

    /// Applies events the reorder buffer let through (in order, each newer than the last).
    async fn apply(&self, events: Vec<ViewEvent>) {
        for event in events {
            match event {
                ViewEvent::Upsert {
                    record,
                    removed_hosts,
                    ..
                } => {
                    self.cache
                        .apply_upsert(record, &removed_hosts, &self.region, Origin::Stream)
                        .await;
                }
                ViewEvent::Delete { hosts, version, .. } => self.cache.apply_delete(&hosts, version).await,
                ViewEvent::Heartbeat { .. } | ViewEvent::Resync { .. } => continue,
            }
            self.metrics.fanout_events_applied.inc();
        }
    }

    fn advance(&self, applied: u64) {
        if applied != self.status.applied() {
            self.metrics
                .stream_seq
                .set(i64::try_from(applied).unwrap_or(i64::MAX));
            self.status.set_applied(applied);
        }
    }

    async fn delete(&self, c: &Clients, queue: &Queue, receipts: Vec<String>) -> Result<(), String> {
        for chunk in receipts.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(r)
                        .build()
                        .map_err(|e| e.to_string())
                })
                .collect::<Result<Vec<_>, _>>()?;
            self.count("delete_message_batch");
            c.sqs
                .delete_message_batch()
                .queue_url(&queue.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| sdk_error(&e))?;
        }
        Ok(())
    }

    /// Follows the stream until the edge has applied `target` (or TCS's last known head), or
    /// the stream's heartbeat says it has caught up, for at most [`REPAIR_LIMIT`]; false on
    /// shutdown.
    async fn repair(&self, reason: &str, target: Option<u64>, shutdown: &CancellationToken) -> bool {
        self.metrics.fanout_repairs.with_label_values(&[reason]).inc();
        let target = target.unwrap_or(0).max(self.status.fanout.tcs_position().1);
        let heartbeats = self.status.fanout.caught_up_count();
        let status = &self.status;
        let caught_up = async {
            let caught_up = status.until(|| {
                (target > 0 && status.applied() >= target) || status.fanout.caught_up_count() > heartbeats
            });
            if tokio::time::timeout(REPAIR_LIMIT, caught_up).await.is_err() {
                tracing::warn!(
                    reason,
                    target,
                    applied = status.applied(),
                    "fan-out repair from the stream did not catch up in time"
                );
            }
        };
        self.follow_until(caught_up, shutdown).await
    }
}

/// An edge without its proxy: the tenant cache, its fan-out consumer and nothing else, in
/// this process. What the fan-out's tests and bench run fifty of, where fifty edge processes
/// would not fit the machine.
pub struct Headless {
    /// The cache the consumer keeps fresh.
    pub cache: Arc<TenantCache>,
    /// What it applied, and its transport.
    pub status: Arc<StreamStatus>,
    /// Its counts.
    pub metrics: EdgeMetrics,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Headless {
    /// Starts one, reading its region's TCS (`tcs`) with the edge's token, and its own queue
    /// named after `id`.
    pub fn start(tcs: context::TcsEndpoint, config: SnsConfig, id: &str) -> Result<Headless, String> {
        let region: Arc<str> = Arc::from(tcs.region.as_str());
        let client = context::TcsClient::new(&[tcs], &region, context::LookupConfig::default())
            .map_err(|e| e.to_string())?;
        let client = Arc::new(client);
        let metrics = EdgeMetrics::new().map_err(|e| e.to_string())?;
        let cache = Arc::new(TenantCache::new(
            &context::CacheConfig::default(),
            client.clone(),
            metrics.clone(),
        ));
        let status = Arc::new(StreamStatus::new(&client));
        let stop = CancellationToken::new();
        let consumer = Consumer {
            config,
            edge_id: id.to_owned(),
            region,
            cache: cache.clone(),
            status: status.clone(),
            metrics: metrics.clone(),
        };
        let task = tokio::spawn(consumer.run(stop.clone()));
        Ok(Headless {
            cache,
            status,
            metrics,
            stop,
            task,
        })
    }

    /// The version of `host` it holds (0: none).
    pub fn version(&self, host: &str) -> u64 {
        self.cache.peek(host).map_or(0, |e| e.record.version)
    }

    /// Resolves once SQS carries its changes.
    pub async fn on_sqs(&self) {
        self.status
            .until(|| self.status.fanout.transport() == Transport::Sqs)
            .await;
    }

    /// Stops it; its queue is deleted when the config says so.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// A body: the fan-out message itself (raw delivery), or an SNS envelope holding it
/// (a subscription without raw delivery).
fn decode(body: &str) -> Option<FanoutMessage> {
    if let Ok(message) = serde_json::from_str::<FanoutMessage>(body) {
        return Some(message);
    }
    #[derive(serde::Deserialize)]
    struct Envelope {
        #[serde(rename = "Message")]
        message: String,
    }
    let envelope: Envelope = serde_json::from_str(body).ok()?;
    serde_json::from_str(&envelope.message).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_and_enveloped_bodies_decode_and_others_do_not() {
        let m = FanoutMessage::heartbeat(7, 5);
        let raw = m.to_body();
        assert_eq!(decode(&raw), Some(m.clone()));
        let envelope = serde_json::json!({"Type": "Notification", "Message": raw}).to_string();
        assert_eq!(decode(&envelope), Some(m));
        assert_eq!(decode("{\"from_seq\": 1}"), None);
        assert_eq!(decode("not json"), None);
    }
}
