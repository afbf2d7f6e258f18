//! The NDJSON change stream of a view: the retained backlog and a heartbeat saying where the
//! view was when it was taken, then live events, with a heartbeat line each second the stream
//! is idle.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures::stream::{self, Stream, StreamExt};
use prometheus::IntGauge;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::broadcast::Receiver;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::feed::ViewEvent;
use crate::tcs::view::{Backlog, IngressView};

/// An idle stream sends a heartbeat this often.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// Counts open subscriptions for as long as the stream lives.
pub(super) struct SubscriberGuard(IntGauge);

impl SubscriberGuard {
    pub(super) fn new(gauge: IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The response body streaming `view`'s events with `seq > after`.
pub(super) fn change_stream(
    view: Arc<IngressView>,
    after: u64,
    shutdown: CancellationToken,
    guard: SubscriberGuard,
) -> Body {
    let sub = view.subscribe(after);
    let backlog = match sub.backlog {
        Backlog::Resync(seq) => {
            // Nothing after a resync: the subscriber reloads the snapshot and comes back.
            return Body::from_stream(stream::once(async move {
                drop(guard);
                Ok::<_, Infallible>(line(&ViewEvent::Resync { seq }))
            }));
        }
        Backlog::Events(events) => events,
    };
    let mut heartbeat = tokio::time::interval_at(Instant::now() + HEARTBEAT, HEARTBEAT);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let live = Live {
        view,
        rx: sub.live,
        after,
        heartbeat,
        shutdown,
        done: false,
        _guard: guard,
    };
    // The backlog ends with where the view was when it was taken, so a subscriber repairing a
    // gap knows at once that it has caught up, even while events keep coming.
    let (seq, last_event) = sub.at;
    let backlog = stream::iter(backlog)
        .chain(stream::once(
            async move { ViewEvent::Heartbeat { seq, last_event } },
        ))
        .map(|e| line(&e));
    Body::from_stream(backlog.chain(live.into_stream()).map(Ok::<_, Infallible>))
}

struct Live {
    view: Arc<IngressView>,
    rx: Receiver<ViewEvent>,
    after: u64,
    heartbeat: Interval,
    shutdown: CancellationToken,
    /// Set after a final `Resync`: the stream ends on the next poll.
    done: bool,
    _guard: SubscriberGuard,
}

/// What one wait on the live side produced.
enum Step {
    Send(ViewEvent),
    Skip,
    End,
}

impl Live {
    fn into_stream(self) -> impl Stream<Item = Bytes> {
        stream::unfold(self, |mut live| async move {
            let event = live.next_event().await?;
            Some((line(&event), live))
        })
    }

    async fn next_event(&mut self) -> Option<ViewEvent> {
        if self.done {
            return None;
        }
        loop {
            let step = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => Step::End,
                r = self.rx.recv() => self.on_recv(r),
                _ = self.heartbeat.tick() => self.on_idle(),
            };
            match step {
                Step::Send(event) => {
                    self.heartbeat.reset();
                    return Some(event);
                }
                Step::Skip => {}
                Step::End => return None,
            }
        }
    }

    fn on_recv(&mut self, r: Result<ViewEvent, RecvError>) -> Step {
        match r {
            Ok(event) if event.seq() > self.after => Step::Send(event),
            Ok(_) => Step::Skip,
            Err(RecvError::Lagged(_)) => self.resync(),
            Err(RecvError::Closed) => Step::End,
        }
    }

    // The position is read before checking the channel: an event applied before that read is
    // already queued and goes out first, so a heartbeat never claims a seq whose event the
    // subscriber has not been sent yet.
    fn on_idle(&mut self) -> Step {
        let (seq, last_event) = self.view.position();
        match self.rx.try_recv() {
            Ok(event) => self.on_recv(Ok(event)),
            Err(TryRecvError::Empty) => Step::Send(ViewEvent::Heartbeat { seq, last_event }),
            Err(TryRecvError::Lagged(_)) => self.resync(),
            Err(TryRecvError::Closed) => Step::End,
        }
    }

    /// The subscriber fell further behind than the channel holds: tell it and hang up.
    fn resync(&mut self) -> Step {
        self.done = true;
        Step::Send(ViewEvent::Resync { seq: self.view.seq() })
    }
}

fn line(event: &ViewEvent) -> Bytes {
    match serde_json::to_vec(event) {
        Ok(mut bytes) => {
            bytes.push(b'\n');
            Bytes::from(bytes)
        }
        Err(e) => {
            // Not expected for these types; an empty chunk keeps the stream well-formed.
            tracing::error!(error = %e, "cannot encode view event");
            Bytes::new()
        }
    }
}
