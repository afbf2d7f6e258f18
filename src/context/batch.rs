//! Lookups to one TCS region share requests when they pile up.
//!
//! Every miss would otherwise be its own HTTP/2 request, and at thousands of misses a second
//! the request machinery (headers, frames, URL, task wake-ups) on both ends costs far more than
//! the lookup. Each region has a queue drained by one task: a lookup finding no batch in flight
//! goes out at once, alone; lookups arriving while `in_flight` batches are out wait for the next
//! one and go together (at most `max_hosts`) in one `POST /v1/views/{view}/hosts`. So an idle
//! edge adds no delay, and a busy one sends fewer, fuller requests.
//!
//! Each thread that looks up has its own queue, whose task runs on that thread's runtime and
//! opens its own connection there, so that a lookup and its connection never wake each other
//! across threads: the edge's proxy threads each run a runtime of their own, and a lookup from
//! elsewhere (the trust checks' canary probes, on the main runtime) must not pull every proxy
//! thread's batches onto its thread. (A batcher owned by the first thread to look up cost the
//! cold path a third more CPU per request, edge and TCS, once canaries were configured.)
//! It speaks HTTP/2 on hyper's connection directly, not through reqwest: reqwest's layers
//! (redirect policy, URL re-parsing, retries) cost ~33 000 instructions per batch, more than
//! the lookups in it.

use std::sync::{Arc, Mutex, PoisonError};
use std::thread::ThreadId;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::client::{Answer, BuildError, Cause, TcsError};
use crate::feed::{HostBatchAnswer, HostLookup, MAX_HOST_BATCH};

/// Serialises exactly like [`crate::feed::HostBatch`], borrowing the queued hosts.
#[derive(serde::Serialize)]
struct HostBatchRef<'a> {
    hosts: Vec<&'a str>,
}

/// The most bytes a batch answer may have: [`MAX_HOST_BATCH`] records of a few hundred bytes
/// each fit many times over; more is a broken or hostile peer.
const MAX_ANSWER_BYTES: usize = 32 << 20;

/// How often an idle lookup connection is pinged, so a miss never pays for a handshake and a
/// dead peer is noticed.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// One lookup waiting for its batch.
struct Job {
    host: Box<str>,
    reply: oneshot::Sender<Result<Answer, TcsError>>,
}

/// Where and how a region's batches are sent.
#[derive(Debug)]
struct Target {
    /// For a request, and for the connection's whole handshake.
    timeout: Duration,
    /// Parsed once, absolute (HTTP/2 takes `:authority` from it).
    uri: http::Uri,
    /// `host:port` to connect to.
    authority: String,
    auth: HeaderValue,
    region: Arc<str>,
    max_hosts: usize,
    in_flight: usize,
}

/// The batching queue of one region.
#[derive(Debug)]
pub(crate) struct Batcher {
    target: Arc<Target>,
    /// A queue per thread that looks up; its task runs on the runtime of the lookup that
    /// started it, and is started again when that runtime is gone.
    queues: Mutex<Vec<(ThreadId, mpsc::UnboundedSender<Job>)>>,
}

impl Batcher {
    pub(crate) fn new(
        timeout: Duration,
        view_base: &str,
        auth: &str,
        region: Arc<str>,
        max_hosts: usize,
        in_flight: usize,
    ) -> Result<Self, BuildError> {
        let bad = |reason: String| BuildError::Url {
            region: region.to_string(),
            url: view_base.to_owned(),
            reason,
        };
        let uri: http::Uri = format!("{view_base}/hosts")
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(e.to_string()))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad(
                "only http:// is supported (TLS to TCS is not built in)".into()
            ));
        }
        let authority = match (uri.host(), uri.port_u16()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => format!("{host}:80"),
            (None, _) => return Err(bad("no host".into())),
        };
        let mut auth =
            HeaderValue::try_from(auth).map_err(|_| bad("the token is not a valid header value".into()))?;
        auth.set_sensitive(true);
        Ok(Batcher {
            target: Arc::new(Target {
                timeout,
                uri,
                authority,
                auth,
                region,
                // A TCS refuses bigger batches.
                max_hosts: max_hosts.clamp(1, MAX_HOST_BATCH),
                in_flight: in_flight.max(1),
            }),
            queues: Mutex::new(Vec::new()),
        })
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

    /// This thread's queue, started on this thread's runtime at its first lookup (or again
    /// once that runtime is gone). Queues of threads that ended are dropped on the way.
    fn sender(&self) -> mpsc::UnboundedSender<Job> {
        let me = std::thread::current().id();
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, tx)) = queues.iter().find(|(id, tx)| *id == me && !tx.is_closed()) {
            return tx.clone();
        }
        queues.retain(|(id, tx)| *id != me && !tx.is_closed());
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(drain(self.target.clone(), rx));
        queues.push((me, tx.clone()));
        tx
    }
}

/// Takes jobs off the queue: whatever waited while every batch slot was taken goes together.
/// The queue's task owns the region's connection: opened on the first batch, again on the
/// first batch after it closed.
async fn drain(target: Arc<Target>, mut queue: mpsc::UnboundedReceiver<Job>) {
    let slots = Arc::new(Semaphore::new(target.in_flight));
    let mut link: Option<SendRequest<Full<Bytes>>> = None;
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
        let send = match link.as_ref().filter(|send| !send.is_closed()) {
            Some(send) => send.clone(),
            None => match target.connect().await {
                Ok(send) => link.insert(send).clone(),
                Err(e) => {
                    fail(jobs, &e);
                    continue;
                }
            },
        };
        let target = target.clone();
        tokio::spawn(async move {
            let _slot = slot;
            target.send(send, jobs).await;
        });
    }
}

/// Tells every lookup of a batch that it failed (a caller may have given up meanwhile).
fn fail(jobs: Vec<Job>, e: &TcsError) {
    for job in jobs {
        let _ = job.reply.send(Err(e.clone()));
    }
}

impl Target {
    fn transport(&self, source: Cause) -> TcsError {
        TcsError::Transport {
            region: self.region.clone(),
            source,
        }
    }

    fn timed_out(&self) -> TcsError {
        self.transport(Arc::new(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {} ms", self.timeout.as_millis()),
        )))
    }

    /// Opens the region's HTTP/2 connection (prior knowledge, no TLS); its driver runs on
    /// this runtime.
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, TcsError> {
        let open = async {
            let tcp = tokio::net::TcpStream::connect(&self.authority).await?;
            tcp.set_nodelay(true)?;
            let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(KEEP_ALIVE)
                .keep_alive_while_idle(true)
                .handshake(TokioIo::new(tcp))
                .await
                .map_err(std::io::Error::other)?;
            let region = self.region.clone();
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%region, error = %e, "tcs lookup connection closed");
                }
            });
            Ok::<_, std::io::Error>(send)
        };
        match tokio::time::timeout(self.timeout, open).await {
            Ok(Ok(send)) => Ok(send),
            Ok(Err(e)) => Err(self.transport(Arc::new(e))),
            Err(_) => Err(self.timed_out()),
        }
    }

    async fn send(&self, send: SendRequest<Full<Bytes>>, jobs: Vec<Job>) {
        let answer = match tokio::time::timeout(self.timeout, self.ask(send, &jobs)).await {
            Ok(answer) => answer,
            Err(_) => Err(self.timed_out()),
        };
        match answer {
            Ok(results) => {
                for (job, found) in jobs.into_iter().zip(results) {
                    let answer = found.map_or(Answer::NotFound, Answer::Found);
                    // The caller may have given up meanwhile.
                    let _ = job.reply.send(Ok(answer));
                }
            }
            Err(e) => fail(jobs, &e),
        }
    }

    async fn ask(
        &self,
        mut send: SendRequest<Full<Bytes>>,
        jobs: &[Job],
    ) -> Result<Vec<Option<HostLookup>>, TcsError> {
        let body = serde_json::to_vec(&HostBatchRef {
            hosts: jobs.iter().map(|job| &*job.host).collect(),
        })
        .map_err(|e| self.transport(Arc::new(e)))?;
        let request = http::Request::post(self.uri.clone())
            .header(AUTHORIZATION, self.auth.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| self.transport(Arc::new(e)))?;
        send.ready().await.map_err(|e| self.transport(Arc::new(e)))?;
        let resp = send
            .send_request(request)
            .await
            .map_err(|e| self.transport(Arc::new(e)))?;
        if resp.status() != http::StatusCode::OK {
            return Err(TcsError::Status {
                region: self.region.clone(),
                status: resp.status().as_u16(),
            });
        }
        let bytes = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| self.transport(Arc::from(e)))?
            .to_bytes();
        // UTF-8 checked once for the whole answer: decoding from a `str` then checks no string
        // again (from bytes, each of a record's fifteen strings is checked on its own, a fifth
        // of the decoding).
        let text = std::str::from_utf8(&bytes).map_err(|e| self.transport(Arc::new(e)))?;
        let answer: HostBatchAnswer = serde_json::from_str(text).map_err(|e| self.transport(Arc::new(e)))?;
        if answer.results.len() != jobs.len() {
            return Err(TcsError::Protocol {
                region: self.region.clone(),
                reason: "batch answer has another number of results than hosts asked",
            });
        }
        Ok(answer.results)
    }
}
