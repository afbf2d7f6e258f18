//! The edge's reports of itself to its region's TCS, for the fleet view.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{client, StreamStatus, TenantCache};

/// Reports this edge to its region's TCS every `every` (`POST /v1/fleet/edges/{id}`): its
/// id, region, build version, applied sequence and cache size, so operators see which edges
/// are behind (`GET /v1/fleet`, `ctl fleet`). A failed report is logged at debug level and
/// retried at the next tick: the TCS forgets an edge only after a minute of silence. The
/// answer's `head` is kept ([`super::FanoutStatus::tcs_head`]): the fan-out repairs from it.
#[derive(Debug, Clone)]
pub struct FleetReporter {
    /// The edge's id.
    pub id: String,
    /// The edge's region.
    pub region: String,
    /// The region's TCS, with this edge's token.
    pub tcs: client::TcsEndpoint,
    /// Between reports.
    pub every: Duration,
}

impl FleetReporter {
    /// Reports until `shutdown`.
    pub async fn run(self, cache: Arc<TenantCache>, stream: Arc<StreamStatus>, shutdown: CancellationToken) {
        let http = match crate::http_client::build(crate::http_client::ClientOptions::default()) {
            Ok(http) => http,
            Err(e) => {
                tracing::warn!(error = %e, "no fleet reports: cannot build an HTTP client");
                return;
            }
        };
        let url = format!(
            "{}/v1/fleet/edges/{}",
            self.tcs.url.trim_end_matches('/'),
            self.id
        );
        let mut tick = tokio::time::interval(self.every);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let report = crate::feed::FleetReport {
                region: self.region.clone(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                applied_seq: stream.applied(),
                cache_entries: cache.len(),
            };
            let sent = http
                .post(&url)
                .bearer_auth(&self.tcs.token)
                .timeout(self.every)
                .json(&report)
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => {
                    #[derive(serde::Deserialize)]
                    struct Answer {
                        head: u64,
                        #[serde(default)]
                        last_event: u64,
                    }
                    if let Ok(answer) = r.json::<Answer>().await {
                        stream.fanout.set_tcs_position(answer.head, answer.last_event);
                    }
                }
                Ok(r) => tracing::debug!(status = %r.status(), "fleet report refused"),
                Err(e) => tracing::debug!(error = %crate::feed::error_chain(&e), "fleet report failed"),
            }
        }
    }
}
