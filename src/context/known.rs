//! The known tenants by normalised host: the map every request reads.
//!
//! A hit must cost the same on every core at once, so reading writes no shared memory: the map
//! is lock-free (papaya: epoch-protected reads, a reader pins only its own thread's slot), the
//! entry is lent rather than cloned, and the only write a hit makes is the entry's last-use
//! time, at most once a millisecond. Writers (fills, pushes, restores) compare versions
//! atomically per key. The bound is kept by a sweep that drops the longest-idle entries once
//! the map outgrows it, off the request path: approximate LRU, like Redis's, which is what a
//! routing table of tenants needs (a tenant idle for an hour is cheap to fetch again).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use papaya::{Compute, Operation};

use super::{CacheConfig, Entry, Hasher};

type Map = papaya::HashMap<Box<str>, Arc<Entry>, Hasher>;

/// A sweep frees this share of `max` (1/8): a sweep walks the whole map, so under a steady
/// stream of misses into a full cache the walk is paid once per `max / 8` misses, eight entries
/// walked per miss. (At 1/64 the sweep was a third of the edge's CPU with 100 000 entries and
/// 10 000 misses a second; at 1/16, 5% of it with 25 000 misses a second.) The map holds 7/8 of
/// its bound just after a sweep.
const SWEEP_SHARE: usize = 8;

/// Known tenant contexts, bounded by an idle-time sweep.
pub(super) struct Known {
    map: Map,
    max: usize,
    /// What a sweep shrinks the map to: a little under `max`, so sweeps are rare.
    low_water: usize,
    ttl: Option<Duration>,
    sweeping: AtomicBool,
    /// Sweeps run, and entries they dropped (expired or idlest), for `/admin/cache`.
    pub(super) sweeps: AtomicU64,
    pub(super) swept: AtomicU64,
}

/// What a versioned write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wrote {
    Inserted,
    Replaced,
    Kept,
}

impl Known {
    /// An empty map sized for `initial` hosts.
    pub(super) fn new(config: &CacheConfig, initial: u64) -> Self {
        let max = usize::try_from(config.max_entries).unwrap_or(usize::MAX).max(1);
        let initial = usize::try_from(initial).unwrap_or(0).min(max);
        Known {
            map: papaya::HashMap::builder()
                .capacity(initial)
                .hasher(Hasher::default())
                .build(),
            max,
            low_water: max - max / SWEEP_SHARE,
            ttl: (config.ttl_secs > 0).then(|| Duration::from_secs(config.ttl_secs)),
            sweeping: AtomicBool::new(false),
            sweeps: AtomicU64::new(0),
            swept: AtomicU64::new(0),
        }
    }

    /// Calls `f` with the live entry for `host` and its age, marking it used. `None` when absent
    /// or past its time to live (then it is dropped).
    #[inline]
    pub(super) fn with<R>(&self, host: &str, f: impl FnOnce(&Arc<Entry>, Duration) -> R) -> Option<R> {
        let guard = self.map.guard();
        let entry = self.map.get(host, &guard)?;
        let age = entry.learnt_at.elapsed();
        if self.expired(age) {
            let _ = self
                .map
                .remove_if(host, |_, held| Arc::ptr_eq(held, entry), &guard);
            return None;
        }
        entry.touch(age);
        Some(f(entry, age))
    }

    /// Whether an entry of this age is past its time to live.
    fn expired(&self, age: Duration) -> bool {
        self.ttl.is_some_and(|ttl| age >= ttl)
    }

    /// The entry for `host`, without marking it used (for `/admin` and tests).
    pub(super) fn peek(&self, host: &str) -> Option<Arc<Entry>> {
        let guard = self.map.guard();
        let entry = self.map.get(host, &guard)?;
        (!self.expired(entry.learnt_at.elapsed())).then(|| entry.clone())
    }

    /// Writes `entry` for `host` when `replace(held version)` says so, or when nothing is held
    /// and `insert` is set. One atomic step per key: concurrent writers of a host never undo
    /// each other's newer version.
    pub(super) fn write(
        self: &Arc<Self>,
        host: &str,
        entry: &Arc<Entry>,
        insert: bool,
        replace: impl Fn(u64) -> bool,
    ) -> Wrote {
        let guard = self.map.guard();
        let outcome = self.map.compute(
            host.into(),
            |held| match held {
                Some((_, held)) if replace(held.record.version) => Operation::Insert(entry.clone()),
                None if insert => Operation::Insert(entry.clone()),
                _ => Operation::Abort(()),
            },
            &guard,
        );
        match outcome {
            Compute::Inserted(..) => {
                drop(guard);
                self.sweep_if_over();
                Wrote::Inserted
            }
            Compute::Updated { .. } => Wrote::Replaced,
            Compute::Removed(..) | Compute::Aborted(()) => Wrote::Kept,
        }
    }

    /// Inserts without looking at what is held: for filling an empty cache. The caller calls
    /// [`Self::sweep_if_over`] when done.
    pub(super) fn insert_unchecked(&self, host: Box<str>, entry: Arc<Entry>) {
        self.map.pin().insert(host, entry);
    }

    /// Drops `host` when `drop(held version)` says so.
    pub(super) fn remove_if(&self, host: &str, drop: impl Fn(u64) -> bool) {
        let _ = self
            .map
            .pin()
            .remove_if(host, |_, held| drop(held.record.version));
    }

    /// Drops `host` whatever is held.
    pub(super) fn remove(&self, host: &str) {
        self.map.pin().remove(host);
    }

    /// Drops everything.
    pub(super) fn clear(&self) {
        self.map.pin().clear();
    }

    /// Hosts held (expired ones included until swept or hit).
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// Calls `f` with every live entry.
    pub(super) fn for_each(&self, mut f: impl FnMut(&str, &Arc<Entry>)) {
        let guard = self.map.guard();
        for (host, entry) in self.map.iter(&guard) {
            if self.ttl.is_none_or(|ttl| entry.learnt_at.elapsed() < ttl) {
                f(host, entry);
            }
        }
    }

    /// Starts a sweep when the map outgrew its bound and no sweep is running: on a blocking
    /// thread when called inside tokio (a sweep of a million hosts takes tens of ms), else here.
    pub(super) fn sweep_if_over(self: &Arc<Self>) {
        if self.map.len() <= self.max || self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        let sweep = move || {
            this.sweep();
            this.sweeping.store(false, Ordering::Release);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(sweep)),
            Err(_) => sweep(),
        }
    }

    /// Drops expired entries, then the longest-idle ones until the map is at its low-water mark.
    fn sweep(&self) {
        let now = Instant::now();
        let guard = self.map.guard();
        let mut idle: Vec<(Duration, &str, &Arc<Entry>)> = Vec::with_capacity(self.map.len());
        let mut expired = 0;
        for (host, entry) in self.map.iter(&guard) {
            let age = now.saturating_duration_since(entry.learnt_at);
            if self.expired(age) {
                let _ = self
                    .map
                    .remove_if(&**host, |_, held| Arc::ptr_eq(held, entry), &guard);
                expired += 1;
            } else {
                idle.push((age.saturating_sub(entry.last_used()), host, entry));
            }
        }
        let excess = idle.len().saturating_sub(self.low_water);
        if excess > 0 {
            idle.select_nth_unstable_by(excess - 1, |a, b| b.0.cmp(&a.0));
            for (_, host, entry) in &idle[..excess] {
                // A host replaced since the walk was just used: keep the new entry.
                let _ = self
                    .map
                    .remove_if(*host, |_, held| Arc::ptr_eq(held, entry), &guard);
            }
        }
        self.sweeps.fetch_add(1, Ordering::Relaxed);
        self.swept.fetch_add((expired + excess) as u64, Ordering::Relaxed);
        tracing::debug!(
            expired,
            evicted = excess,
            held = self.map.len(),
            took_us = now.elapsed().as_micros() as u64,
            "swept the tenant cache"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::Origin;
    use crate::tenant::IngressRecord;

    fn entry(id: &str, version: u64, learnt_at: Instant) -> Arc<Entry> {
        let record: IngressRecord = serde_json::from_value(serde_json::json!({
            "id": id, "version": version, "realm": "us",
            "hosts": [format!("{id}.example.test")],
            "placements": {"jira": {"shard": "jira-us-east-1"}},
        }))
        .unwrap();
        Arc::new(Entry::learnt_at(
            record,
            Origin::Fetch,
            "us-east-1".into(),
            learnt_at,
        ))
    }

    fn known(max: u64) -> Arc<Known> {
        Arc::new(Known::new(
            &CacheConfig {
                max_entries: max,
                ..CacheConfig::default()
            },
            0,
        ))
    }

    #[test]
    fn versioned_writes_never_go_backwards() {
        let k = known(100);
        let now = Instant::now();
        assert_eq!(k.write("a", &entry("a", 2, now), true, |_| true), Wrote::Inserted);
        assert_eq!(
            k.write("a", &entry("a", 1, now), true, |held| held < 1),
            Wrote::Kept
        );
        assert_eq!(
            k.write("a", &entry("a", 3, now), false, |held| held < 3),
            Wrote::Replaced
        );
        assert_eq!(k.peek("a").unwrap().record.version, 3);
        assert_eq!(k.write("b", &entry("b", 1, now), false, |_| true), Wrote::Kept);
        assert!(k.peek("b").is_none());
        k.remove_if("a", |held| held < 3);
        assert!(k.peek("a").is_some());
        k.remove_if("a", |held| held < 4);
        assert!(k.peek("a").is_none());
    }

    #[test]
    fn sweep_keeps_the_recently_used_and_the_bound() {
        let k = known(64);
        // Learnt a minute ago and not used since: idle for a minute, unless hit below.
        let long_ago = Instant::now() - Duration::from_secs(60);
        for i in 0..64 {
            let id = format!("t{i}");
            k.write(&id, &entry(&id, 1, long_ago), true, |_| true);
        }
        for i in 0..8 {
            assert!(k.with(&format!("t{i}"), |_, _| ()).is_some());
        }
        // Over the bound by one: the sweep drops the idlest down to the low-water mark.
        k.write("new", &entry("new", 1, Instant::now()), true, |_| true);
        assert_eq!(k.len(), 64 - 64 / SWEEP_SHARE);
        assert!(k.peek("new").is_some());
        for i in 0..8 {
            assert!(k.peek(&format!("t{i}")).is_some(), "t{i} was used and must stay");
        }
    }

    #[test]
    fn expired_entries_are_neither_served_nor_listed() {
        let k = Arc::new(Known::new(
            &CacheConfig {
                ttl_secs: 30,
                ..CacheConfig::default()
            },
            0,
        ));
        k.write(
            "old",
            &entry("old", 1, Instant::now() - Duration::from_secs(31)),
            true,
            |_| true,
        );
        k.write("new", &entry("new", 1, Instant::now()), true, |_| true);
        let mut listed = Vec::new();
        k.for_each(|host, _| listed.push(host.to_owned()));
        assert_eq!(listed, ["new"]);
        assert!(k.with("old", |_, _| ()).is_none());
        assert_eq!(k.len(), 1, "an expired entry that is hit is dropped");
    }
}
