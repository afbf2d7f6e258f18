//! The fan-out's packing and reorder buffer, on generated event chains delivered duplicated,
//! shuffled and with losses.

use std::time::Instant;

use proptest::prelude::*;

use super::*;
use crate::tenant::{Host, TenantId};

/// A chain of deletes (small, sized by their host lists) with rising seqs: `gaps[i]` apart,
/// each naming the one before as `prev`.
fn chain(gaps: &[(u64, usize)]) -> Vec<ViewEvent> {
    let mut prev = 0;
    let mut seq = 0;
    gaps.iter()
        .enumerate()
        .map(|(i, &(gap, hosts))| {
            seq += gap;
            let event = ViewEvent::Delete {
                seq,
                prev,
                id: TenantId::new(&format!("t{i}")).unwrap(),
                version: 1,
                hosts: (0..hosts)
                    .map(|h| Host::parse(&format!("h{h}.t{i}.example.test")).unwrap())
                    .collect(),
            };
            prev = seq;
            event
        })
        .collect()
}

fn messages(events: &[ViewEvent], max: usize) -> Vec<FanoutMessage> {
    let packed = pack(events, max).unwrap();
    assert!(packed.too_large.is_empty());
    packed
        .bodies
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect()
}

fn seqs(events: &[ViewEvent]) -> Vec<u64> {
    events.iter().map(ViewEvent::seq).collect()
}

fn gaps() -> impl Strategy<Value = Vec<(u64, usize)>> {
    prop::collection::vec((1u64..4, 0usize..6), 1..60)
}

proptest! {
    #[test]
    fn packed_messages_fit_and_hold_every_event_in_order(gaps in gaps(), max in 600usize..4000) {
        let events = chain(&gaps);
        let packed = pack(&events, max).unwrap();
        let mut all = Vec::new();
        for body in &packed.bodies {
            prop_assert!(body.len() <= max, "{} > {max}", body.len());
            let m: FanoutMessage = serde_json::from_str(body).unwrap();
            prop_assert_eq!(m.from_seq, m.events[0].seq());
            prop_assert_eq!(m.to_seq, m.events.last().unwrap().seq());
            prop_assert_eq!(m.prev, prev_of(&m.events[0]));
            all.extend(m.events);
        }
        let kept: Vec<u64> = seqs(&events).into_iter().filter(|s| !packed.too_large.contains(s)).collect();
        prop_assert_eq!(seqs(&all), kept);
        for range in publish_batches(&packed.bodies, max * 3) {
            prop_assert!(range.len() <= MAX_BATCH_ENTRIES);
            let total: usize = packed.bodies[range.clone()].iter().map(String::len).sum();
            prop_assert!(range.len() == 1 || total <= max * 3);
        }
    }

    /// Delivered at least once in any order: every event comes out once, in order.
    #[test]
    fn duplicated_and_shuffled_delivery_applies_each_event_once_in_order(
        gaps in gaps(),
        order in prop::collection::vec(any::<prop::sample::Index>(), 0..200),
    ) {
        let events = chain(&gaps);
        let messages = messages(&events, 700);
        let mut delivery: Vec<FanoutMessage> = order.iter().map(|i| messages[i.index(messages.len())].clone()).collect();
        delivery.extend(messages.iter().cloned()); // every message at least once
        let mut reorder = Reorder::new(0, 10_000);
        let now = Instant::now();
        let mut out = Vec::new();
        for m in delivery {
            out.extend(reorder.push(m, now));
        }
        prop_assert_eq!(seqs(&out), seqs(&events));
        prop_assert!(reorder.gap_since().is_none());
    }

    /// With messages lost, nothing is applied out of order or twice, the events applied are a
    /// gap-free prefix of the chain, and a lasting gap is reported; a repair past the loss lets
    /// the rest through.
    #[test]
    fn lost_messages_stop_at_a_reported_gap_and_a_repair_resumes(
        gaps in gaps(),
        lost in any::<prop::sample::Index>(),
        seed in any::<u64>(),
    ) {
        let events = chain(&gaps);
        let messages = messages(&events, 700);
        let lost = lost.index(messages.len());
        let mut delivery: Vec<FanoutMessage> =
            messages.iter().enumerate().filter(|&(i, _)| i != lost).map(|(_, m)| m.clone()).collect();
        // A deterministic shuffle.
        let mut state = seed | 1;
        for i in (1..delivery.len()).rev() {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            delivery.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let mut reorder = Reorder::new(0, 10_000);
        let now = Instant::now();
        let mut out = Vec::new();
        for m in delivery {
            out.extend(reorder.push(m, now));
        }
        let before: Vec<u64> = messages[..lost].iter().flat_map(|m| seqs(&m.events)).collect();
        prop_assert_eq!(seqs(&out), before.clone());
        prop_assert_eq!(reorder.gap_since().is_some(), lost + 1 < messages.len());
        // The repair brought the reader to the lost message's last event.
        out.extend(reorder.repaired(messages[lost].to_seq, now));
        let after: Vec<u64> = messages[lost + 1..].iter().flat_map(|m| seqs(&m.events)).collect();
        let expected: Vec<u64> = before.into_iter().chain(after).collect();
        prop_assert_eq!(seqs(&out), expected);
        prop_assert!(reorder.gap_since().is_none());
        prop_assert_eq!(reorder.applied(), events.last().unwrap().seq());
    }
}

#[test]
fn a_heartbeat_advances_a_reader_that_missed_nothing_and_waits_behind_a_gap() {
    let events = chain(&[(1, 0), (1, 0)]); // seqs 1, 2
    let now = Instant::now();
    let mut reorder = Reorder::new(0, 16);
    // The view moved to 9 with its newest event at 2: a reader at 0 has missed 1 and 2.
    assert!(reorder.push(FanoutMessage::heartbeat(9, 2), now).is_empty());
    assert_eq!(reorder.applied(), 0);
    assert_eq!(reorder.gap_since(), Some(now));
    let applied = reorder.push(messages(&events, 10_000)[0].clone(), now);
    assert_eq!(seqs(&applied), [1, 2]);
    assert_eq!(
        reorder.applied(),
        9,
        "the heartbeat applies once the events before it have"
    );
    assert!(reorder.gap_since().is_none());
    // An old duplicate changes nothing.
    assert!(reorder.push(messages(&events, 10_000)[0].clone(), now).is_empty());
}

#[test]
fn an_event_too_large_for_a_message_is_left_out_and_breaks_the_chain() {
    let events = chain(&[(1, 0), (1, 40), (1, 0)]);
    let packed = pack(&events, 900).unwrap();
    assert_eq!(packed.too_large, [2]);
    let messages: Vec<FanoutMessage> = packed
        .bodies
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect();
    let now = Instant::now();
    let mut reorder = Reorder::new(0, 16);
    let mut out = Vec::new();
    for m in messages {
        out.extend(reorder.push(m, now));
    }
    assert_eq!(seqs(&out), [1], "event 3 names 2 as its prev: it waits");
    assert!(reorder.gap_since().is_some());
    assert_eq!(seqs(&reorder.repaired(2, now)), [3]);
}

#[test]
fn the_buffer_says_when_it_overflows() {
    let events = chain(&[(1, 0), (1, 0), (1, 0), (1, 0)]);
    let messages = messages(&events, 200);
    assert_eq!(messages.len(), 4);
    let now = Instant::now();
    let mut reorder = Reorder::new(0, 2);
    for m in &messages[1..] {
        reorder.push(m.clone(), now);
    }
    assert!(reorder.overflowing());
    assert_eq!(seqs(&reorder.push(messages[0].clone(), now)), [1, 2, 3, 4]);
    assert!(!reorder.overflowing());
}
