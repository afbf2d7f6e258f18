//! The wide fan-out's message format and its two pure halves, shared by the TCS publisher and
//! the edge consumer (issue: changes through SNS to one SQS queue per edge):
//!
//! - [`pack`]: a batch of view events into messages of at most [`MAX_MESSAGE`] bytes, each
//!   `{from_seq, to_seq, prev, events}`, split between events; and [`publish_batches`], those
//!   messages grouped into `PublishBatch` calls (at most [`MAX_BATCH_ENTRIES`] entries and
//!   [`MAX_MESSAGE`] bytes a call, as SNS allows).
//! - [`Reorder`]: the consumer's reorder buffer. Queues deliver at least once and in no
//!   particular order; a message applies only once everything before it has (`prev <=
//!   applied`), events at or below the applied sequence are skipped, and a message waiting for
//!   an earlier one marks a gap, which the caller repairs from TCS when it lasts.
//!
//! Nothing here does I/O or reads a clock: the caller passes the time in.

pub mod aws;
pub mod consume;
pub mod publish;

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::feed::ViewEvent;

/// The largest SNS message (and `PublishBatch` call) in bytes.
pub const MAX_MESSAGE: usize = 256 * 1024;
/// The most entries of one `PublishBatch` call.
pub const MAX_BATCH_ENTRIES: usize = 10;
/// What a message's envelope adds to its events' JSON, at most (the four field names, three
/// numbers of up to 20 digits, brackets and commas).
const ENVELOPE: usize = 128;

/// One fan-out message: the view's events `from_seq..=to_seq` (upserts and deletes, in order,
/// chained by their `prev`), or none for a heartbeat (`from_seq = to_seq` = the view's head).
/// `prev` is the sequence of the view's event before the first one (a heartbeat's: the view's
/// newest event), so a reader that applied up to `prev` misses nothing by applying this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FanoutMessage {
    /// The first event's sequence (a heartbeat's head).
    pub from_seq: u64,
    /// The last event's sequence (a heartbeat's head).
    pub to_seq: u64,
    /// The view's event before `from_seq`.
    pub prev: u64,
    /// The events, in sequence order.
    pub events: Vec<ViewEvent>,
}

impl FanoutMessage {
    /// A heartbeat: the view is at `head`, its newest event at `last_event`.
    pub fn heartbeat(head: u64, last_event: u64) -> Self {
        FanoutMessage {
            from_seq: head,
            to_seq: head,
            prev: last_event,
            events: Vec::new(),
        }
    }
}

/// What [`pack`] made of a batch of events.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Packed {
    /// The messages, as their JSON bodies, in sequence order.
    pub bodies: Vec<String>,
    /// Events left out because one alone exceeds `max_bytes`: readers see the hole in the
    /// `prev` chain and repair from TCS.
    pub too_large: Vec<u64>,
}

/// Packs `events` (upserts and deletes of one view, in sequence order) into messages of at
/// most `max_bytes`, each holding as many whole events as fit.
pub fn pack(events: &[ViewEvent], max_bytes: usize) -> Result<Packed, serde_json::Error> {
    let mut packed = Packed::default();
    let mut current: Vec<&ViewEvent> = Vec::new();
    let mut size = ENVELOPE;
    let budget = max_bytes.saturating_sub(ENVELOPE);
    let flush = |current: &mut Vec<&ViewEvent>, packed: &mut Packed| -> Result<(), serde_json::Error> {
        if let (Some(first), Some(last)) = (current.first(), current.last()) {
            let message = FanoutMessage {
                from_seq: first.seq(),
                to_seq: last.seq(),
                prev: prev_of(first),
                events: current.iter().map(|e| (*e).clone()).collect(),
            };
            packed.bodies.push(serde_json::to_string(&message)?);
            current.clear();
        }
        Ok(())
    };
    for event in events {
        let len = serde_json::to_vec(event)?.len() + 1;
        if len > budget {
            flush(&mut current, &mut packed)?;
            size = ENVELOPE;
            packed.too_large.push(event.seq());
            continue;
        }
        if size + len > max_bytes {
            flush(&mut current, &mut packed)?;
            size = ENVELOPE;
        }
        current.push(event);
        size += len;
    }
    flush(&mut current, &mut packed)?;
    Ok(packed)
}

/// The `prev` of an event (a heartbeat's newest event; a resync has none).
fn prev_of(event: &ViewEvent) -> u64 {
    match event {
        ViewEvent::Upsert { prev, .. } | ViewEvent::Delete { prev, .. } => *prev,
        ViewEvent::Heartbeat { last_event, .. } => *last_event,
        ViewEvent::Resync { seq } => *seq,
    }
}

/// Groups message bodies into `PublishBatch` calls, in order: at most
/// [`MAX_BATCH_ENTRIES`] entries and `max_bytes` in all a call. Returns index ranges into
/// `bodies`.
pub fn publish_batches(bodies: &[String], max_bytes: usize) -> Vec<std::ops::Range<usize>> {
    let mut calls = Vec::new();
    let mut start = 0;
    let mut size = 0;
    for (i, body) in bodies.iter().enumerate() {
        let full = i - start == MAX_BATCH_ENTRIES || (i > start && size + body.len() > max_bytes);
        if full {
            calls.push(start..i);
            start = i;
            size = 0;
        }
        size += body.len();
    }
    if start < bodies.len() {
        calls.push(start..bodies.len());
    }
    calls
}

/// The consumer's reorder buffer: messages in, events out in sequence order, once each.
#[derive(Debug)]
pub struct Reorder {
    applied: u64,
    /// Messages waiting for an earlier one, by their `prev`.
    waiting: BTreeMap<u64, FanoutMessage>,
    /// Since when a message has been waiting.
    gap_since: Option<Instant>,
    max_waiting: usize,
}

impl Reorder {
    /// A buffer for a reader that applied everything up to `applied`, holding at most
    /// `max_waiting` early messages.
    pub fn new(applied: u64, max_waiting: usize) -> Self {
        Reorder {
            applied,
            waiting: BTreeMap::new(),
            gap_since: None,
            max_waiting: max_waiting.max(1),
        }
    }

    /// Everything up to this sequence is applied.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Since when a message has waited for an earlier one that has not come: the caller
    /// repairs from TCS once this is a few seconds old. `None` when nothing waits.
    pub fn gap_since(&self) -> Option<Instant> {
        self.gap_since
    }

    /// The sequence a repair must reach for every waiting message to apply (the largest
    /// `prev` waited on); `None` when nothing waits.
    pub fn wanted(&self) -> Option<u64> {
        self.waiting.keys().next_back().copied()
    }

    /// Whether more messages wait than the buffer holds: repair now.
    pub fn overflowing(&self) -> bool {
        self.waiting.len() > self.max_waiting
    }

    /// Takes one delivered message (at least once, in any order) at `now`; returns the events
    /// that can be applied now, in sequence order, each newer than everything before it.
    pub fn push(&mut self, message: FanoutMessage, now: Instant) -> Vec<ViewEvent> {
        if message.to_seq > self.applied {
            let prev = message.prev;
            let keep = self
                .waiting
                .get(&prev)
                .is_none_or(|held| held.to_seq < message.to_seq);
            if keep {
                self.waiting.insert(prev, message);
            }
        }
        self.drain(now)
    }

    /// A repair from TCS brought the reader to `seq` (which may be below the buffer's
    /// position, after a resync from another log): messages it covers are dropped, those
    /// after it apply as usual.
    pub fn repaired(&mut self, seq: u64, now: Instant) -> Vec<ViewEvent> {
        self.applied = seq;
        self.gap_since = None;
        self.drain(now)
    }

    fn drain(&mut self, now: Instant) -> Vec<ViewEvent> {
        let mut out = Vec::new();
        loop {
            self.waiting.retain(|_, m| m.to_seq > self.applied);
            let Some((&prev, _)) = self.waiting.range(..=self.applied).next() else {
                break;
            };
            let Some(message) = self.waiting.remove(&prev) else {
                break;
            };
            for event in message.events {
                if event.seq() > self.applied {
                    self.applied = event.seq();
                    out.push(event);
                }
            }
            self.applied = self.applied.max(message.to_seq);
        }
        if self.waiting.is_empty() {
            self.gap_since = None;
        } else {
            self.gap_since.get_or_insert(now);
        }
        out
    }
}

#[cfg(test)]
mod tests;
