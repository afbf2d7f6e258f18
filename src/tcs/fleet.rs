//! Fleet freshness: the latest report of every edge that reports to this TCS, and how far
//! behind the view's head each one is, in sequences and in seconds. Edges silent for longer
//! than the expiry are forgotten.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::tail::TailStatus;
use crate::feed::{Fleet, FleetEdge, FleetReport};

/// Most edges remembered: a bound on what reports can make a TCS hold.
pub const MAX_EDGES: usize = 100_000;

/// Why a report was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReportError {
    /// The id is not 1 to 128 characters of letters, digits, `-`, `_` and `.`.
    #[error("an edge id is 1 to 128 letters, digits, '-', '_' or '.'")]
    BadId,
    /// [`MAX_EDGES`] other edges are remembered already.
    #[error("too many edges reporting")]
    Full,
}

/// The edges' latest reports.
#[derive(Debug)]
pub struct Edges {
    reports: Mutex<HashMap<String, (FleetReport, Instant)>>,
    expiry: Duration,
}

impl Edges {
    /// No edge yet; an edge silent for `expiry` is forgotten.
    pub fn new(expiry: Duration) -> Self {
        Self {
            reports: Mutex::default(),
            expiry,
        }
    }

    /// Records edge `id`'s report, replacing its last.
    pub fn report(&self, id: &str, report: FleetReport) -> Result<(), ReportError> {
        let valid = (1..=128).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !valid {
            return Err(ReportError::BadId);
        }
        let mut reports = self
            .reports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if reports.len() >= MAX_EDGES && !reports.contains_key(id) {
            self.expire(&mut reports);
            if reports.len() >= MAX_EDGES {
                return Err(ReportError::Full);
            }
        }
        reports.insert(id.to_owned(), (report, Instant::now()));
        Ok(())
    }

    /// Every edge heard from within the expiry, against the view at `head`, the most behind
    /// first (by seconds, then sequences, then id).
    pub fn fleet(&self, region: &str, head: u64, status: &TailStatus) -> Fleet {
        let now = Instant::now();
        let mut reports = self
            .reports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.expire(&mut reports);
        let mut edges: Vec<FleetEdge> = reports
            .iter()
            .map(|(id, (report, heard))| FleetEdge {
                id: id.clone(),
                lag_seqs: head.saturating_sub(report.applied_seq),
                lag_seconds: status
                    .behind_since(report.applied_seq)
                    .map_or(0.0, |since| now.saturating_duration_since(since).as_secs_f64()),
                last_heard_seconds: now.saturating_duration_since(*heard).as_secs_f64(),
                report: report.clone(),
            })
            .collect();
        drop(reports);
        edges.sort_by(|a, b| {
            b.lag_seconds
                .total_cmp(&a.lag_seconds)
                .then(b.lag_seqs.cmp(&a.lag_seqs))
                .then(a.id.cmp(&b.id))
        });
        Fleet {
            region: region.to_owned(),
            head,
            edges,
        }
    }

    fn expire(&self, reports: &mut HashMap<String, (FleetReport, Instant)>) {
        reports.retain(|_, (_, heard)| heard.elapsed() < self.expiry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(applied_seq: u64) -> FleetReport {
        FleetReport {
            region: "us-east-1".into(),
            version: "0.1.0".into(),
            applied_seq,
            cache_entries: 3,
        }
    }

    #[test]
    fn laggards_come_first_with_their_lag_in_sequences_and_seconds() {
        let status = TailStatus::default();
        status.advanced(10);
        std::thread::sleep(Duration::from_millis(30));
        status.advanced(12);
        let edges = Edges::new(Duration::from_secs(60));
        edges.report("caught-up", report(12)).unwrap();
        edges.report("behind-two", report(10)).unwrap();
        edges.report("behind-more", report(4)).unwrap();
        let fleet = edges.fleet("us-east-1", 12, &status);
        let ids: Vec<&str> = fleet.edges.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["behind-more", "behind-two", "caught-up"]);
        let lag: Vec<u64> = fleet.edges.iter().map(|e| e.lag_seqs).collect();
        assert_eq!(lag, [8, 2, 0]);
        // behind-more has missed seq 10's page, older than seq 12's: behind longer.
        assert!(fleet.edges[0].lag_seconds >= 0.03, "{:?}", fleet.edges[0]);
        assert!(fleet.edges[1].lag_seconds < fleet.edges[0].lag_seconds);
        assert_eq!(fleet.edges[2].lag_seconds, 0.0);
    }

    #[test]
    fn silent_edges_are_forgotten_and_bad_ids_refused() {
        let status = TailStatus::default();
        let edges = Edges::new(Duration::from_millis(500));
        edges.report("e1", report(1)).unwrap();
        assert_eq!(edges.fleet("r", 1, &status).edges.len(), 1);
        std::thread::sleep(Duration::from_millis(600));
        assert!(edges.fleet("r", 1, &status).edges.is_empty());
        for bad in ["", "a/b", "a b", &"x".repeat(129)] {
            assert_eq!(edges.report(bad, report(1)), Err(ReportError::BadId), "{bad:?}");
        }
    }

    #[test]
    fn a_reload_from_a_new_log_starts_the_history_again() {
        let status = TailStatus::default();
        status.advanced(500);
        status.advanced(3);
        assert!(status.behind_since(3).is_none());
        assert!(status.behind_since(2).is_some());
    }
}
