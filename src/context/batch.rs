//! Lookups to one TCS region share requests when they pile up.
//!
//! Every miss would otherwise be its own HTTP/2 request, and at thousands of misses a second
//! the request machinery (headers, frames, URL, task wake-ups) on both ends costs far more than
//! the lookup. Each region has a queue drained by one task: a lookup finding no batch in flight
//! goes out at once, alone; lookups arriving while `in_flight` batches are out wait for the next
//! one and go together (at most `max_hosts`) in one `POST /v1/views/ingress/hosts`. So an idle
//! edge adds no delay, and a busy one sends fewer, fuller requests.
//!
//! The queue's task runs on the runtime of the first lookup (a proxy thread) and opens its own
//! connection there, so that a lookup and its connection never wake each other across threads.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};

use super::client::{Answer, TcsError};
use crate::feed::{HostBatch, HostBatchAnswer, HostLookup, MAX_HOST_BATCH};

/// One lookup waiting for its batch.
struct Job {
    host: Box<str>,
    reply: oneshot::Sender<Result<Answer, TcsError>>,
}

/// Where and how a region's batches are sent.
#[derive(Debug)]
struct Target {
    /// The client to use when the queue's task cannot build its own.
    shared_http: reqwest::Client,
    timeout: Duration,
    url: String,
    auth: String,
    region: Arc<str>,
    max_hosts: usize,
    in_flight: usize,
}

/// The batching queue of one region.
#[derive(Debug)]
pub(crate) struct Batcher {
    target: Arc<Target>,
    /// The queue's sender; its task runs on the runtime of the lookup that started it, and is
    /// started again when that runtime is gone.
    queue: Mutex<Option<mpsc::UnboundedSender<Job>>>,
}

impl Batcher {
    pub(crate) fn new(
        http: reqwest::Client,
        timeout: Duration,
        base: &str,
        auth: &str,
        region: Arc<str>,
        max_hosts: usize,
        in_flight: usize,
    ) -> Self {
        Batcher {
            target: Arc::new(Target {
                shared_http: http,
                timeout,
                url: format!("{base}/v1/views/ingress/hosts"),
                auth: auth.to_owned(),
                region,
                // A TCS refuses bigger batches.
                max_hosts: max_hosts.clamp(1, MAX_HOST_BATCH),
                in_flight: in_flight.max(1),
            }),
            queue: Mutex::new(None),
        }
    }

    /// What the region says of `host`, asked in the next batch.
    pub(crate) async fn lookup(&self, host: &str) -> Result<Answer, TcsError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            host: host.into(),
            reply,
        };
        let abandoned = || TcsError::Abandoned {
            region: self.target.region.clone(),
        };
        self.sender().send(job).map_err(|_| abandoned())?;
        answer.await.unwrap_or_else(|_| Err(abandoned()))
    }

    fn sender(&self) -> mpsc::UnboundedSender<Job> {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        match &*queue {
            Some(tx) if !tx.is_closed() => tx.clone(),
            _ => {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(drain(self.target.clone(), rx));
                queue.insert(tx).clone()
            }
        }
    }
}

/// Takes jobs off the queue: whatever waited while every batch slot was taken goes together.
async fn drain(target: Arc<Target>, mut queue: mpsc::UnboundedReceiver<Job>) {
    let http = super::client::lookup_http(target.timeout).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "lookup client not built; sharing the edge's");
        target.shared_http.clone()
    });
    let slots = Arc::new(Semaphore::new(target.in_flight));
    while let Some(first) = queue.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut jobs = vec![first];
        while jobs.len() < target.max_hosts {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        // A hedge's loser or a timed-out caller no longer waits.
        jobs.retain(|job| !job.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let (target, http) = (target.clone(), http.clone());
        tokio::spawn(async move {
            let _slot = slot;
            target.send(&http, jobs).await;
        });
    }
}

impl Target {
    async fn send(&self, http: &reqwest::Client, jobs: Vec<Job>) {
        let hosts = jobs.iter().map(|job| job.host.to_string()).collect();
        match self.ask(http, HostBatch { hosts }, jobs.len()).await {
            Ok(results) => {
                for (job, found) in jobs.into_iter().zip(results) {
                    let answer = found.map_or(Answer::NotFound, Answer::Found);
                    // The caller may have given up meanwhile.
                    let _ = job.reply.send(Ok(answer));
                }
            }
            Err(e) => {
                for job in jobs {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }

    async fn ask(
        &self,
        http: &reqwest::Client,
        batch: HostBatch,
        n: usize,
    ) -> Result<Vec<Option<HostLookup>>, TcsError> {
        let transport = |source| TcsError::Transport {
            region: self.region.clone(),
            source: Arc::new(source),
        };
        let resp = http
            .post(&self.url)
            .header("authorization", &self.auth)
            .json(&batch)
            .send()
            .await
            .map_err(transport)?;
        if resp.status() != reqwest::StatusCode::OK {
            return Err(TcsError::Status {
                region: self.region.clone(),
                status: resp.status().as_u16(),
            });
        }
        let answer: HostBatchAnswer = resp.json().await.map_err(transport)?;
        if answer.results.len() != n {
            return Err(TcsError::Protocol {
                region: self.region.clone(),
                reason: "batch answer has another number of results than hosts asked",
            });
        }
        Ok(answer.results)
    }
}
