//! Suspicion: which TCS regions are believed when they say a host does not exist.
//!
//! The seeds' worst outage was a fleet caching a storm of false 404s from an emptied table.
//! Every check period each region is pinged (which also keeps its pooled connection warm), asked
//! for the configured canary hosts that must exist, and its share of `404`s in the period is
//! compared with the other regions'. A region failing any of these is distrusted until it passes
//! again: its `404`s are ignored, its `Found` answers are still used.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::client::{Region, Trust};
use super::TcsClient;
use crate::metrics::EdgeMetrics;

/// Runs the checks every `check_interval_ms` until `shutdown`.
pub async fn watch_regions(client: Arc<TcsClient>, metrics: EdgeMetrics, shutdown: CancellationToken) {
    let period = Duration::from_millis(client.config.check_interval_ms.max(10));
    loop {
        check_once(&client, &metrics).await;
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
    }
}

/// One round of checks over every region.
pub async fn check_once(client: &TcsClient, metrics: &EdgeMetrics) {
    let ratios: Vec<Option<f64>> = client
        .regions
        .iter()
        .map(|r| take_ratio(r, client.config.min_samples))
        .collect();
    let verdicts = futures::future::join_all(client.regions.iter().enumerate().map(|(i, region)| {
        let ratios = &ratios;
        async move {
            if !client.ping(region).await {
                return Trust::Unreachable;
            }
            for canary in &client.config.canaries {
                if client.probe(region, canary).await == Some(false) {
                    return Trust::CanaryMissing;
                }
            }
            if departs(i, ratios, client.config.not_found_tolerance) {
                return Trust::NotFoundRatio;
            }
            Trust::Trusted
        }
    }))
    .await;
    for (region, verdict) in client.regions.iter().zip(verdicts) {
        let before = region.set_trust(verdict);
        if before != verdict {
            if verdict == Trust::Trusted {
                tracing::info!(region = %region.name, "tcs region trusted again");
            } else {
                tracing::warn!(region = %region.name, reason = ?verdict, "tcs region distrusted");
            }
        }
        metrics
            .region_trust
            .with_label_values(&[&region.name])
            .set(verdict as i64);
    }
}

/// The region's share of `404`s in the period that just ended, if it answered enough lookups.
fn take_ratio(region: &Region, min_samples: u64) -> Option<f64> {
    let lookups = region.window_lookups.swap(0, Ordering::Relaxed);
    let not_found = region.window_not_found.swap(0, Ordering::Relaxed);
    (lookups >= min_samples.max(1)).then(|| not_found as f64 / lookups as f64)
}

/// Whether region `i`'s share of `404`s exceeds the lowest other region's by more than
/// `tolerance`. Regions without enough samples are not judged and do not judge.
fn departs(i: usize, ratios: &[Option<f64>], tolerance: f64) -> bool {
    let Some(mine) = ratios[i] else { return false };
    let others = ratios
        .iter()
        .enumerate()
        .filter(|&(j, _)| j != i)
        .filter_map(|(_, r)| *r);
    others
        .fold(None, |low: Option<f64>, r| Some(low.map_or(r, |l| l.min(r))))
        .is_some_and(|low| mine - low > tolerance)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_departure() {
        assert!(departs(0, &[Some(0.9), Some(0.1)], 0.2));
        assert!(!departs(1, &[Some(0.9), Some(0.1)], 0.2));
        assert!(!departs(0, &[Some(0.25), Some(0.1)], 0.2));
        assert!(!departs(0, &[Some(0.9), None], 0.2), "nobody to compare with");
        assert!(!departs(0, &[None, Some(0.0)], 0.2), "too few samples to judge");
        assert!(departs(2, &[Some(0.1), Some(0.5), Some(0.95)], 0.2));
    }
}
