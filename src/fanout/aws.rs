//! `[fanout]`, the configuration both sides share, and the AWS SDK clients it builds.
//!
//! ```toml
//! [fanout]
//! kind = "sns"                       # "stream" (the default): every edge follows the NDJSON stream
//! topic = "tenant-edge-us-east-1"    # this region's topic: a name, or its ARN
//! aws_region = "us-east-1"           # the SDK's region (default: the node's region)
//! endpoint_url = "http://127.0.0.1:5000"   # an emulator or a VPC endpoint (optional)
//! queue_prefix = "tenant-edge-"      # edges: their queue is <prefix><edge id>
//! batch_ms = 500                     # TCS: events gathered into one publish
//! heartbeat_secs = 300               # TCS: an idle region still says where it is
//! ```
//!
//! Credentials come from the standard AWS chain (see [`crate::aws`]).

use serde::{Deserialize, Serialize};

/// How view changes reach edges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum FanoutConfig {
    /// Every edge holds an NDJSON change stream open to a TCS node: for tens of edges.
    #[default]
    Stream,
    /// TCS publishes batches to one SNS topic per region, each edge reads its own SQS queue;
    /// the stream stays as the repair path and the fallback.
    Sns(SnsConfig),
}

impl FanoutConfig {
    /// The SNS settings, when changes go through SNS.
    pub fn sns(&self) -> Option<&SnsConfig> {
        match self {
            FanoutConfig::Stream => None,
            FanoutConfig::Sns(sns) => Some(sns),
        }
    }
}

/// `[fanout] kind = "sns"`. Fields marked TCS or edge are read by that side only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnsConfig {
    /// This region's topic: a name (created if absent) or an ARN.
    pub topic: String,
    /// The AWS region of the SDK calls (default: the node's own region).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_region: Option<String>,
    /// Another endpoint than AWS's (an emulator, a VPC endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// Edge: its queue is named `<queue_prefix><edge id>`.
    #[serde(default = "default_queue_prefix")]
    pub queue_prefix: String,
    /// TCS: how long view events gather before they are published together.
    #[serde(default = "default_batch_ms")]
    pub batch_ms: u64,
    /// TCS: an idle region's publisher says where its view is this often. Each heartbeat
    /// costs every idle edge a receive and a delete; edges learn the view's position every few
    /// seconds from their fleet reports anyway, so this is the backstop, not the fast path.
    #[serde(default = "default_heartbeat_secs")]
    pub heartbeat_secs: u64,
    /// TCS: the publisher lease's length; it is renewed at a third of it.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// Edge: a gap in the messages lasting this long is repaired from TCS.
    #[serde(default = "default_gap_ms")]
    pub gap_ms: u64,
    /// Edge: how long a receive waits for a message (long poll, at most 20 s).
    #[serde(default = "default_wait_secs")]
    pub wait_secs: u64,
    /// Edge: after SQS failed, how long the edge follows the stream before trying it again.
    #[serde(default = "default_retry_secs")]
    pub retry_secs: u64,
    /// Edge: unsubscribe and delete the queue at shutdown (right for ephemeral edges; an edge
    /// that restarts in place may keep it to find what was sent meanwhile).
    #[serde(default = "default_true")]
    pub delete_queue_on_shutdown: bool,
}

fn default_queue_prefix() -> String {
    "tenant-edge-".to_owned()
}
fn default_batch_ms() -> u64 {
    500
}
fn default_heartbeat_secs() -> u64 {
    300
}
fn default_lease_ms() -> u64 {
    15_000
}
fn default_gap_ms() -> u64 {
    3_000
}
fn default_wait_secs() -> u64 {
    20
}
fn default_retry_secs() -> u64 {
    30
}
fn default_true() -> bool {
    true
}

impl SnsConfig {
    /// The settings for `topic` with every default (what a TOML table naming only the topic
    /// gives).
    pub fn new(topic: &str) -> Self {
        SnsConfig {
            topic: topic.to_owned(),
            aws_region: None,
            endpoint_url: None,
            queue_prefix: default_queue_prefix(),
            batch_ms: default_batch_ms(),
            heartbeat_secs: default_heartbeat_secs(),
            lease_ms: default_lease_ms(),
            gap_ms: default_gap_ms(),
            wait_secs: default_wait_secs(),
            retry_secs: default_retry_secs(),
            delete_queue_on_shutdown: true,
        }
    }

    /// Every problem with the settings.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let topic_ok = if self.topic.starts_with("arn:") {
            self.topic.split(':').count() == 6
        } else {
            valid_name(&self.topic, 256)
        };
        if !topic_ok {
            problems.push(format!(
                "fanout topic {:?}: a name of 1 to 256 of [A-Za-z0-9_-], or an SNS topic ARN",
                self.topic
            ));
        }
        if !self.queue_prefix.is_empty() && !valid_name(&self.queue_prefix, 40) {
            problems.push(format!(
                "fanout queue_prefix {:?}: at most 40 of [A-Za-z0-9_-]",
                self.queue_prefix
            ));
        }
        if let Some(url) = &self.endpoint_url {
            if reqwest::Url::parse(url).is_err() {
                problems.push(format!("fanout endpoint_url {url:?} is not a URL"));
            }
        }
        if !(10..=60_000).contains(&self.batch_ms) {
            problems.push(format!(
                "fanout batch_ms {} is not within 10..=60000",
                self.batch_ms
            ));
        }
        if !(1..=20).contains(&self.wait_secs) {
            problems.push(format!(
                "fanout wait_secs {} is not within 1..=20",
                self.wait_secs
            ));
        }
        if self.lease_ms < 1_000 || self.lease_ms > crate::feed::MAX_LEASE_MS {
            problems.push(format!(
                "fanout lease_ms {} is not within 1000..=600000",
                self.lease_ms
            ));
        }
        if self.heartbeat_secs == 0 || self.gap_ms == 0 || self.retry_secs == 0 {
            problems.push("fanout heartbeat_secs, gap_ms and retry_secs must be above 0".to_owned());
        }
        problems
    }

    /// The SDK configuration: the region (default: the node's), the endpoint if set.
    pub async fn sdk(&self, node_region: &str) -> aws_config::SdkConfig {
        let region = self.aws_region.as_deref().unwrap_or(node_region);
        crate::aws::sdk_config(region, self.endpoint_url.as_deref()).await
    }

    /// The queue of edge `edge_id`: `<prefix><id>`, with characters SQS refuses as `_`, at
    /// most 80 characters.
    pub fn queue_name(&self, edge_id: &str) -> String {
        let mut name: String = format!("{}{edge_id}", self.queue_prefix)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        name.truncate(80);
        name
    }
}

fn valid_name(name: &str, max: usize) -> bool {
    (1..=max).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub use crate::aws::sdk_error;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sns_is_a_kind_and_every_default_is_sane() {
        #[derive(Deserialize)]
        struct File {
            #[serde(default)]
            fanout: FanoutConfig,
        }
        let none: File = toml::from_str("").unwrap();
        assert_eq!(none.fanout, FanoutConfig::Stream);
        let sns: File = toml::from_str("[fanout]\nkind = \"sns\"\ntopic = \"t-us\"\n").unwrap();
        assert_eq!(sns.fanout, FanoutConfig::Sns(SnsConfig::new("t-us")));
        assert!(SnsConfig::new("t-us").problems().is_empty());
        assert!(toml::from_str::<File>("[fanout]\nkind = \"sns\"\ntopic = \"t\"\ntopik = 1\n").is_err());
        assert!(toml::from_str::<File>("[fanout]\nkind = \"sqs\"\n").is_err());
    }

    #[test]
    fn bad_settings_are_each_named() {
        let mut c = SnsConfig::new("no spaces");
        c.batch_ms = 0;
        c.wait_secs = 21;
        c.endpoint_url = Some("::".into());
        let problems = c.problems().join("; ");
        for field in ["topic", "batch_ms", "wait_secs", "endpoint_url"] {
            assert!(problems.contains(field), "{field} not named in {problems}");
        }
        assert!(SnsConfig::new("arn:aws:sns:us-east-1:123456789012:t")
            .problems()
            .is_empty());
    }

    #[test]
    fn queue_names_keep_to_what_sqs_accepts() {
        let c = SnsConfig::new("t");
        assert_eq!(c.queue_name("edge-1"), "tenant-edge-edge-1");
        assert_eq!(c.queue_name("host.example:8080"), "tenant-edge-host_example_8080");
        assert_eq!(c.queue_name(&"x".repeat(200)).len(), 80);
    }
}
