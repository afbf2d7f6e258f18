//! Views per consumer: the dev stack's TCS serves `jira` and `confluence` beside `ingress`,
//! each with its product's config and sealed secrets, each readable by its own service's token
//! only; every endpoint works for every view; the `ingress` view never carries a secret.

#![expect(clippy::unwrap_used, reason = "test helpers fail the test by unwrapping")]

mod common;

use common::{eventually, Stack, EDGE_TOKEN};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tenant_edge::context::{CacheConfig, LookupConfig, StreamStatus, TcsClient, TcsEndpoint, TenantCache};
use tenant_edge::metrics::EdgeMetrics;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "view-secret-4b7e21";

/// The jira view's tenants in a cache of the edge's machinery, reading TCS in us-east-1.
struct JiraCache {
    cache: Arc<TenantCache>,
    client: Arc<TcsClient>,
    metrics: EdgeMetrics,
}

impl JiraCache {
    fn new(stack: &Stack, token: &str) -> Self {
        let endpoints = [TcsEndpoint {
            region: "us-east-1".into(),
            url: stack.tcs_urls[0].clone(),
            token: token.to_owned(),
        }];
        let client = TcsClient::for_view(&endpoints, "us-east-1", LookupConfig::default(), "jira");
        let client = Arc::new(client.unwrap());
        let metrics = EdgeMetrics::new().unwrap();
        let cache = TenantCache::new(&CacheConfig::default(), client.clone(), metrics.clone());
        JiraCache {
            cache: Arc::new(cache),
            client,
            metrics,
        }
    }

    /// Follows the view's change stream until the token is cancelled.
    fn follow(&self) -> (Arc<StreamStatus>, CancellationToken, tokio::task::JoinHandle<()>) {
        let status = Arc::new(StreamStatus::new(&self.client));
        let stop = CancellationToken::new();
        let task = tokio::spawn(tenant_edge::context::follow(
            self.cache.clone(),
            status.clone(),
            self.metrics.clone(),
            stop.clone(),
        ));
        (status, stop, task)
    }
}

/// The jira view's change stream from the start, opened (200) with `token`.
async fn jira_changes(stack: &Stack, token: &str) -> reqwest::Response {
    let stream = stack
        .http
        .get(format!("{}/v1/views/jira/changes?after=0", stack.tcs_urls[0]))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    stream
}

async fn call(stack: &Stack, path: &str, token: Option<&str>) -> (u16, String) {
    let mut req = stack.http.get(format!("{}{path}", stack.tcs_urls[0]));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn each_product_reads_its_own_view_and_nothing_else() {
    let mut stack = Stack::start().await;
    let doc = json!({
        "id": "acme", "hosts": ["acme.example.test"], "realm": "us",
        "placements": {"jira": {"shard": "jira-us-east-1"}, "confluence": {"shard": "confluence-us-east-1"}},
        "products": {
            "jira": {"config": {"db": "acme_jira"}, "secrets": {"db_password": SECRET}},
            "confluence": {"config": {"db": "acme_wiki"}, "secrets": {"db_password": "other-secret-value"}}
        }
    });
    let (status, stored) = stack.put_tenant(&doc).await;
    assert_eq!(status, 200, "{stored}");
    let version = stored["version"].as_u64().unwrap();
    let jira = stack.product_token("jira").unwrap().to_owned();
    let confluence = stack.product_token("confluence").unwrap().to_owned();

    // The jira view: jira's config and its sealed secret, nothing of confluence.
    let lookup = "/v1/views/jira/hosts/acme.example.test";
    let record: Value = eventually(Duration::from_secs(10), || async {
        let (status, body) = call(&stack, lookup, Some(&jira)).await;
        let v: Value = serde_json::from_str(&body).ok()?;
        (status == 200 && v["record"]["version"].as_u64() == Some(version)).then_some(v)
    })
    .await;
    let r = &record["record"];
    assert_eq!(r["products"]["jira"]["config"]["db"], "acme_jira", "{record}");
    assert!(
        r["products"]["jira"]["secrets"]["db_password"]["ciphertext"].is_string(),
        "{record}"
    );
    assert!(r["products"].get("confluence").is_none(), "{record}");
    assert!(r["data_key"]["key_id"].is_string(), "{record}");
    assert!(!record.to_string().contains(SECRET));

    // Isolation: no token 401, another product's token 403, the edge's token 403.
    assert_eq!(call(&stack, lookup, None).await.0, 401);
    assert_eq!(call(&stack, lookup, Some(&confluence)).await.0, 403);
    assert_eq!(call(&stack, lookup, Some(EDGE_TOKEN)).await.0, 403);
    assert_eq!(
        call(&stack, "/v1/views/ingress/hosts/acme.example.test", Some(&jira))
            .await
            .0,
        403
    );
    let (status, theirs) = call(
        &stack,
        "/v1/views/confluence/hosts/acme.example.test",
        Some(&confluence),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        theirs.contains("acme_wiki") && !theirs.contains("acme_jira"),
        "{theirs}"
    );

    // The ingress view: routing facts only.
    let (status, ingress) = call(
        &stack,
        "/v1/views/ingress/hosts/acme.example.test",
        Some(EDGE_TOKEN),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        !ingress.contains("products") && !ingress.contains("ciphertext") && !ingress.contains("data_key"),
        "{ingress}"
    );

    // Every endpoint answers for the view: by tenant id (placement), snapshot, change stream.
    let (status, placement) = call(&stack, "/v1/views/jira/tenants/acme/placements/jira", Some(&jira)).await;
    assert_eq!(status, 200, "{placement}");
    let (status, snapshot) = call(&stack, "/v1/views/jira/snapshot", Some(&jira)).await;
    assert_eq!(status, 200);
    assert!(snapshot.contains("acme_jira") && !snapshot.contains(SECRET));
    let mut stream = jira_changes(&stack, &jira).await;
    let seen = common::read_stream_until(&mut stream, "acme_jira").await;
    assert!(!seen.contains(SECRET));
    drop(stream);
    let batch = stack
        .http
        .post(format!("{}/v1/views/jira/hosts", stack.tcs_urls[0]))
        .bearer_auth(&jira)
        .json(&json!({"hosts": ["acme.example.test", "nobody.example.test"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(batch.status(), 200);
    assert!(batch.text().await.unwrap().contains("acme_jira"));

    // Restarted without the jira view's snapshot file: the view is caught up from the log.
    assert!(stack.tcs[0].terminate(), "TCS stops on SIGTERM");
    let file = stack.dir.path().join("tcs-us-east-1.jira.json");
    let kept = std::fs::read_to_string(&file).unwrap();
    assert!(kept.contains("acme_jira") && !kept.contains(SECRET));
    std::fs::remove_file(&file).unwrap();
    stack.tcs[0].restart().unwrap();
    // A new client each time: the old one's connections went with the old process.
    let url = format!("{}{lookup}", stack.tcs_urls[0]);
    eventually(Duration::from_secs(10), || async {
        let r = reqwest::Client::new()
            .get(&url)
            .bearer_auth(&jira)
            .send()
            .await
            .ok()?;
        let body = r.text().await.ok()?;
        body.contains("acme_jira").then_some(())
    })
    .await;

    // The edge's cache machinery reads a product's view as it reads ingress: a miss fills
    // from the view with the product's config, the change stream pushes the next version.
    let jira_view = JiraCache::new(&stack, &jira);
    let cache = jira_view.cache.clone();
    let tenant_edge::context::Resolved::Found(entry) = cache.resolve("acme.example.test").await.unwrap()
    else {
        panic!("acme not found in the jira view");
    };
    let products = entry.record.products.as_deref().unwrap().parse().unwrap();
    assert_eq!(products.len(), 1, "jira's view carries jira only");
    let (_, stop, follow) = jira_view.follow();
    let mut next = doc.clone();
    next["products"]["jira"]["config"]["db"] = json!("acme_jira_2");
    let (status_code, _) = stack.put_tenant(&next).await;
    assert_eq!(status_code, 200);
    eventually(Duration::from_secs(10), || async {
        let entry = cache.peek("acme.example.test")?;
        let db = entry
            .record
            .products
            .as_deref()?
            .parse()
            .ok()?
            .into_values()
            .next()?
            .config
            .get("db")?
            .clone();
        (db == "acme_jira_2").then_some(())
    })
    .await;
    stop.cancel();
    follow.await.unwrap();
}

/// TCS stops on SIGTERM while its readers hold their connections: a cache's HTTP/2 lookup
/// connection (idle after a fill), its change stream being followed, and another reader's stream
/// nobody reads. The streams end at shutdown and the idle connection is told to go (GOAWAY);
/// `terminate` fails the test if the process takes more than 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcs_stops_while_readers_hold_connections() {
    let mut stack = Stack::start().await;
    let jira = stack.product_token("jira").unwrap().to_owned();
    let jira_view = JiraCache::new(&stack, &jira);
    assert!(matches!(
        jira_view.cache.resolve("acme.example.test").await.unwrap(),
        tenant_edge::context::Resolved::Found(_)
    ));
    let (status, stop, follow) = jira_view.follow();
    let unread = jira_changes(&stack, &jira).await;
    eventually(Duration::from_secs(10), || async {
        status.any_live().then_some(())
    })
    .await;

    assert!(
        stack.tcs[0].terminate(),
        "TCS stops on SIGTERM with its readers connected"
    );
    stop.cancel();
    follow.await.unwrap();
    drop(unread);
}
