//! The materialised `ingress` view: tenant id -> routing record, host -> the same record, the
//! applied catalogue sequence, and a bounded ring of recent events for the change stream.
//!
//! One writer (the tailer) applies catalogue changes in order; readers (lookups, snapshots,
//! subscribers) take the read lock for a few map operations and clone `Arc`s, never holding it
//! across an `.await`, so the applier is never blocked for long.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::broadcast;

use crate::feed::{Change, ChangeBody, TenantDoc, ViewEvent, ViewSnapshot};
use crate::tenant::{Host, IngressRecord, TenantId};

/// How many recent events the change stream can replay to a resuming subscriber.
pub const DEFAULT_RING_CAPACITY: usize = 100_000;
/// How many live events a subscriber may fall behind before it is told to resync.
pub const DEFAULT_CHANNEL_CAPACITY: usize = 4096;

/// What [`IngressView::apply`] did with a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Its sequence was not newer than the view's: a replay, ignored.
    Replayed,
    /// The sequence advanced but the view did not change (older version, other entity).
    Advanced,
    /// A tenant was created or changed: an `Upsert` event was emitted.
    Upserted,
    /// A tenant was deleted: a `Delete` event was emitted.
    Deleted,
}

/// Where a new subscriber starts: what it must be sent before live events.
#[derive(Debug)]
pub enum Backlog {
    /// Every retained event with `seq > after`, in order.
    Events(Vec<ViewEvent>),
    /// Events after `after` were dropped: the subscriber must reload the snapshot.
    Resync(u64),
}

/// A subscription to the change stream: the backlog, then live events on `live`.
#[derive(Debug)]
pub struct Subscription {
    /// Events to send first.
    pub backlog: Backlog,
    /// Events applied after the backlog was taken, without gap or overlap.
    pub live: broadcast::Receiver<ViewEvent>,
    /// The view's applied sequence and newest event when the backlog was taken: a heartbeat
    /// of these, sent after the backlog, claims nothing the subscriber has not been sent.
    pub at: (u64, u64),
}

#[derive(Debug, Default)]
struct State {
    seq: u64,
    last_event: u64,
    /// Ordered by id, for snapshots.
    records: BTreeMap<TenantId, Arc<Held>>,
    /// Every host to its tenant's record, the record itself rather than its id: a lookup is one
    /// hash probe, not a probe and then a walk of a million-entry tree.
    hosts: HostIndex,
    ring: VecDeque<ViewEvent>,
    /// No event with a seq at or below this is guaranteed to be in the ring (evicted, or
    /// emitted before the snapshot this view was loaded from).
    forgotten_upto: u64,
    /// The catalogue log's epoch the seqs belong to; empty until the first page says it.
    epoch: String,
    /// The seq the view had before it was last reloaded in full from a new log (0 if never):
    /// a subscriber resuming from above the view's seq but not above this counted in the old
    /// log's numbers, and must resync.
    reloaded_above: u64,
}

type HostIndex = HashMap<Host, Arc<Held>, foldhash::fast::RandomState>;

/// A tenant's record as the view holds it (by id and by each host): the record, and its JSON
/// rendered once per change. Answering a lookup or writing a snapshot copies those bytes
/// instead of walking the record's fields, each a separate allocation and, with a million
/// tenants, a separate cache miss.
#[derive(Debug)]
pub struct Held {
    /// The record.
    pub record: IngressRecord,
    /// The record as JSON, exactly as `serde_json` writes it (`None` only if it would not
    /// serialise, which no record does: then it is written field by field each time).
    json: Option<Box<RawValue>>,
}

impl Serialize for Held {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.json {
            Some(json) => json.serialize(s),
            None => self.record.serialize(s),
        }
    }
}

impl State {
    /// The record of the tenant `host` names.
    fn record_for(&self, host: &Host) -> Option<&Arc<Held>> {
        self.hosts.get(host)
    }

    /// Holds `record` by id and by each of its hosts.
    fn insert(&mut self, record: IngressRecord) {
        let json = serde_json::value::to_raw_value(&record)
            .inspect_err(|e| tracing::error!(tenant = %record.id, error = %e, "record does not serialise"))
            .ok();
        let held = Arc::new(Held { record, json });
        for h in &held.record.hosts {
            self.hosts.insert(h.clone(), Arc::clone(&held));
        }
        self.records.insert(held.record.id.clone(), held);
    }
}

/// What a view holds of each tenant beyond its routing facts: nothing (`ingress`), or some
/// products' config and, with `secrets`, their sealed secrets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Projection {
    /// The products whose config (and secrets) the view carries; empty: the `ingress` view.
    pub products: Vec<crate::tenant::Product>,
    /// Whether their secrets (sealed) and the wrapped data key come too.
    pub secrets: bool,
}

/// A view: every tenant's routing facts (and, for a product's view, its projection of the
/// tenant), kept current by [`IngressView::apply`].
#[derive(Debug)]
pub struct IngressView {
    state: RwLock<State>,
    ring_capacity: usize,
    events: broadcast::Sender<ViewEvent>,
    projection: Projection,
}

impl Default for IngressView {
    fn default() -> Self {
        Self::new(DEFAULT_RING_CAPACITY, DEFAULT_CHANNEL_CAPACITY)
    }
}

impl IngressView {
    /// An empty view at seq 0 that retains `ring_capacity` events and lets live subscribers
    /// trail by `channel_capacity` events.
    pub fn new(ring_capacity: usize, channel_capacity: usize) -> Self {
        Self::projecting(ring_capacity, channel_capacity, Projection::default())
    }

    /// [`IngressView::new`] for a view that projects tenants through `projection`.
    pub fn projecting(ring_capacity: usize, channel_capacity: usize, projection: Projection) -> Self {
        Self {
            state: RwLock::new(State::default()),
            ring_capacity: ring_capacity.max(1),
            events: broadcast::channel(channel_capacity.max(1)).0,
            projection,
        }
    }

    /// An empty view projecting as this one does (a reload builds one aside).
    pub fn empty_like(&self) -> Self {
        Self::projecting(DEFAULT_RING_CAPACITY, 1, self.projection.clone())
    }

    /// Replaces the contents with a snapshot. Events before it are unknown, so a subscriber
    /// resuming from an older seq is told to resync, and the next event's `prev` is the
    /// snapshot's seq.
    pub fn restore(&self, snap: ViewSnapshot) {
        let mut st = self.write();
        let reloaded_above = st.reloaded_above;
        *st = State {
            seq: snap.seq,
            last_event: snap.seq,
            forgotten_upto: snap.seq,
            epoch: snap.epoch,
            reloaded_above,
            ..State::default()
        };
        st.hosts.reserve(snap.records.len());
        for record in snap.records {
            st.insert(record);
        }
    }

    /// Replaces the contents with `snap`, a full reload from a catalogue log that is not the
    /// one this view's seqs count in (a new epoch, or a head behind the view). Live subscribers
    /// are told to resync at once, and one resuming later from the old log's numbers is too.
    pub fn reload(&self, snap: ViewSnapshot) {
        let seq = snap.seq;
        {
            let mut st = self.write();
            st.reloaded_above = st.reloaded_above.max(st.seq);
        }
        self.restore(snap);
        let _ = self.events.send(ViewEvent::Resync { seq });
    }

    /// Moves the applied seq to `seq` when it is behind (what is between held no change for
    /// this view).
    pub fn advance_to(&self, seq: u64) {
        let mut st = self.write();
        st.seq = st.seq.max(seq);
    }

    /// The epoch of the catalogue log the view's seqs belong to (empty until known).
    pub fn epoch(&self) -> String {
        self.read().epoch.clone()
    }

    /// Records the epoch of the log the view follows, the first time a page says it.
    pub fn set_epoch(&self, epoch: &str) {
        let mut st = self.write();
        if st.epoch != epoch {
            st.epoch = epoch.to_owned();
        }
    }

    /// Applies one catalogue change. Changes must come in sequence order; replays (seq not
    /// newer than the view's) and stale tenant versions are ignored, so applying at least once
    /// is safe.
    pub fn apply(&self, change: &Change) -> Applied {
        let mut st = self.write();
        if change.seq <= st.seq {
            return Applied::Replayed;
        }
        st.seq = change.seq;
        let event = match &change.body {
            ChangeBody::Tenant { id, version, doc } => {
                tenant_change(&mut st, &self.projection, change.seq, id, *version, doc)
            }
            // Migrations reach the view through the tenant change written with them.
            ChangeBody::Shard { .. } | ChangeBody::Realm { .. } | ChangeBody::Migration { .. } => None,
        };
        let Some(event) = event else {
            return Applied::Advanced;
        };
        let applied = match event {
            ViewEvent::Delete { .. } => Applied::Deleted,
            _ => Applied::Upserted,
        };
        self.emit(&mut st, event);
        applied
    }

    // Sent under the write lock so that `subscribe` (under the read lock) sees every event
    // either in the ring or on the channel, never both and never neither.
    fn emit(&self, st: &mut State, event: ViewEvent) {
        st.last_event = event.seq();
        if st.ring.len() >= self.ring_capacity {
            if let Some(old) = st.ring.pop_front() {
                st.forgotten_upto = old.seq();
            }
        }
        st.ring.push_back(event.clone());
        // No receivers is normal: nobody is subscribed.
        let _ = self.events.send(event);
    }

    /// The tenant a normalised host names, with the seq the view is current to.
    pub fn lookup(&self, host: &Host) -> Option<(u64, Arc<Held>)> {
        let st = self.read();
        st.record_for(host).map(|held| (st.seq, Arc::clone(held)))
    }

    /// What each of `hosts` names, under one read of the view, with the seq it is current to.
    pub fn lookup_many<'h>(
        &self,
        hosts: impl IntoIterator<Item = Option<&'h Host>>,
    ) -> (u64, Vec<Option<Arc<Held>>>) {
        let st = self.read();
        let found = hosts
            .into_iter()
            .map(|host| st.record_for(host?).cloned())
            .collect();
        (st.seq, found)
    }

    /// The tenant `id`, with the seq the view is current to.
    pub fn tenant(&self, id: &str) -> Option<(u64, Arc<Held>)> {
        let st = self.read();
        st.records.get(id).map(|r| (st.seq, Arc::clone(r)))
    }

    /// The applied catalogue sequence.
    pub fn seq(&self) -> u64 {
        self.read().seq
    }

    /// The applied sequence and the sequence of the newest emitted event.
    pub fn position(&self) -> (u64, u64) {
        let st = self.read();
        (st.seq, st.last_event)
    }

    /// How many tenants the view holds.
    pub fn len(&self) -> usize {
        self.read().records.len()
    }

    /// Whether the view holds no tenant.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole view at one seq; the records are shared, not copied.
    pub fn snapshot(&self) -> SharedSnapshot {
        let st = self.read();
        SharedSnapshot {
            seq: st.seq,
            epoch: st.epoch.clone(),
            records: st.records.values().cloned().collect(),
        }
    }

    /// Subscribes to events with `seq > after`: the retained backlog and a live receiver,
    /// taken together so nothing falls between them.
    pub fn subscribe(&self, after: u64) -> Subscription {
        let st = self.read();
        let live = self.events.subscribe();
        let backlog = if after < st.forgotten_upto || (after > st.seq && after <= st.reloaded_above) {
            Backlog::Resync(st.seq)
        } else {
            Backlog::Events(st.ring.iter().filter(|e| e.seq() > after).cloned().collect())
        };
        Subscription {
            backlog,
            live,
            at: (st.seq, st.last_event),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // A panic under the lock cannot leave the maps half-updated in a way readers care
        // about more than an outage, so keep serving.
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The view at one seq with shared records; serialises exactly like [`ViewSnapshot`].
#[derive(Debug, Clone, Serialize)]
pub struct SharedSnapshot {
    /// The sequence the view was current to.
    pub seq: u64,
    /// The catalogue log's epoch.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    /// Every tenant, ordered by id.
    #[serde(serialize_with = "serialize_records")]
    pub records: Vec<Arc<Held>>,
}

impl SharedSnapshot {
    /// An owned copy in the wire type.
    pub fn to_owned_snapshot(&self) -> ViewSnapshot {
        ViewSnapshot {
            seq: self.seq,
            epoch: self.epoch.clone(),
            records: self.records.iter().map(|held| held.record.clone()).collect(),
        }
    }
}

fn serialize_records<S: serde::Serializer>(records: &[Arc<Held>], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(records.iter().map(|held| &**held))
}

fn tenant_change(
    st: &mut State,
    projection: &Projection,
    seq: u64,
    id: &TenantId,
    version: u64,
    doc: &Option<TenantDoc>,
) -> Option<ViewEvent> {
    let held = st.records.get(id).map(|held| held.record.version);
    // No tombstones: a re-created tenant may restart its versions, and replays are already
    // excluded by seq, so only a live record's version can make a change stale.
    if held.is_some_and(|h| version <= h) {
        return None;
    }
    let prev = st.last_event;
    match doc {
        Some(doc) => Some(upsert(st, projection, seq, prev, version, doc)),
        None => delete(st, seq, prev, id, version),
    }
}

fn upsert(
    st: &mut State,
    projection: &Projection,
    seq: u64,
    prev: u64,
    version: u64,
    doc: &TenantDoc,
) -> ViewEvent {
    let mut record = doc.project(&projection.products, projection.secrets);
    record.version = version;
    let removed_hosts: Vec<Host> = match st.records.get(&record.id) {
        Some(old) => old
            .record
            .hosts
            .iter()
            .filter(|h| !record.hosts.contains(h))
            .cloned()
            .collect(),
        None => Vec::new(),
    };
    unindex_hosts(&mut st.hosts, &record.id, &removed_hosts);
    st.insert(record.clone());
    ViewEvent::Upsert {
        seq,
        prev,
        record,
        removed_hosts,
    }
}

fn delete(st: &mut State, seq: u64, prev: u64, id: &TenantId, version: u64) -> Option<ViewEvent> {
    // Deleting a tenant the view never held changes nothing a reader could hold either.
    let old = st.records.remove(id)?;
    unindex_hosts(&mut st.hosts, id, &old.record.hosts);
    Some(ViewEvent::Delete {
        seq,
        prev,
        id: id.clone(),
        version,
        hosts: old.record.hosts.clone(),
    })
}

// Only drop a mapping that still points at this tenant: the host may already name another.
fn unindex_hosts(hosts: &mut HostIndex, id: &TenantId, gone: &[Host]) {
    for h in gone {
        if hosts.get(h).is_some_and(|held| held.record.id == *id) {
            hosts.remove(h);
        }
    }
}
