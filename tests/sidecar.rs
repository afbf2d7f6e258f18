//! `tenant-edge sidecar`: TCS's API for one product's view on localhost, answered from the
//! edge's cache machinery with the tenant's secrets opened; against a real stack (catalogue and
//! two TCS regions as processes), the sidecar in this process.

#![expect(clippy::unwrap_used, reason = "test helpers fail the test by unwrapping")]

mod common;

use std::time::Duration;

use common::{eventually, metric, tcs_faults, Stack};
use serde_json::{json, Value};
use tenant_edge::secrets::KeySettings;
use tenant_edge::sidecar::{SidecarConfig, Started};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "sidecar-secret-93f1c2";

/// A sidecar of `view` for the stack, with the catalogue's key file, as edited.
async fn sidecar(stack: &Stack, view: &str, edit: impl FnOnce(&mut SidecarConfig)) -> Sidecar {
    let token = stack.product_token(view).unwrap().to_owned();
    sidecar_of(stack, &[view], token, edit).await
}

/// A sidecar of `views` for the service holding `token`.
async fn sidecar_of(
    stack: &Stack,
    views: &[&str],
    token: String,
    edit: impl FnOnce(&mut SidecarConfig),
) -> Sidecar {
    let mut cfg = SidecarConfig::new(
        views[0],
        tenant_edge::tenant::Region::new("us-east-1").unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        stack.inner.tcs_endpoints(&token),
    );
    if views.len() > 1 {
        cfg.view = None;
        cfg.views = views.iter().map(|v| (*v).to_owned()).collect();
    }
    cfg.secrets = Some(KeySettings {
        master_key: Some(stack.inner.master_key_file()),
        ..KeySettings::default()
    });
    cfg.lookup.timeout_ms = 500;
    cfg.lookup.check_interval_ms = 200;
    cfg.cache.negative_ttl_secs = 1;
    // As the stack's edges: a demo tenant that must exist.
    cfg.lookup.canaries = vec!["acme.example.test".into()];
    edit(&mut cfg);
    let stop = CancellationToken::new();
    let started = tenant_edge::sidecar::start(cfg, stop.clone()).await.unwrap();
    Sidecar {
        url: format!("http://{}", started.addr),
        token,
        http: reqwest::Client::new(),
        stop,
        started,
    }
}

struct Sidecar {
    url: String,
    token: String,
    http: reqwest::Client,
    stop: CancellationToken,
    started: Started,
}

impl Sidecar {
    async fn get(&self, path: &str) -> (u16, String) {
        self.get_as(path, Some(&self.token)).await
    }

    async fn get_as(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let mut req = self.http.get(format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn lookup(&self, host: &str) -> (u16, Value) {
        let (status, body) = self.get(&format!("/v1/views/jira/hosts/{host}")).await;
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    async fn stop(self) {
        self.stop.cancel();
        self.started.wait().await;
    }
}

fn acme(config_db: &str) -> Value {
    json!({
        "id": "acme", "hosts": ["acme.example.test", "acme-alias.example.test"], "realm": "us",
        "placements": {"jira": {"shard": "jira-us-east-1"}, "confluence": {"shard": "confluence-us-east-1"}},
        "products": {
            "jira": {"config": {"db": config_db}, "secrets": {"db_password": SECRET}},
            "confluence": {"config": {"db": "acme_wiki"}, "secrets": {"db_password": "confluence-only-secret"}}
        }
    })
}

/// Writes [`acme`] with jira's database `acme_jira`; its stored version.
async fn put_acme(stack: &Stack) -> u64 {
    let (status, stored) = stack.put_tenant(&acme("acme_jira")).await;
    assert_eq!(status, 200, "{stored}");
    stored["version"].as_u64().unwrap()
}

/// A tenant without secrets (`plain.example.test`), in both regions.
async fn put_plain(stack: &Stack) {
    let doc = json!({"id": "plain", "hosts": ["plain.example.test"], "realm": "us",
        "placements": {"jira": {"shard": "jira-us-east-1"}}});
    let (status, stored) = stack.put_tenant(&doc).await;
    assert!((200..300).contains(&status), "{stored}");
    let version = stored["version"].as_u64().unwrap();
    for url in &stack.tcs_urls {
        stack.wait_in_tcs(url, "plain.example.test", version).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_with_the_secrets_opened_and_the_api_of_tcs() {
    let stack = Stack::start().await;
    let version = put_acme(&stack).await;
    let cache_file = stack.dir.path().join("sidecar-jira.cache");
    let side = sidecar(&stack, "jira", |cfg| {
        cfg.cache_file = Some(cache_file.clone());
        cfg.cache_file_interval_secs = 1;
    })
    .await;

    // A lookup: the jira view's record, its secret in plaintext, nothing of confluence; with
    // the sequence the sidecar is current to (0 until its change stream has applied a change,
    // which may come after the first fill on a busy machine).
    let (status, answer) = eventually(Duration::from_secs(10), || async {
        let (status, v) = side.lookup("acme.example.test").await;
        let current = v["record"]["version"].as_u64() == Some(version) && v["seq"].as_u64() > Some(0);
        (status == 200 && current).then_some((status, v))
    })
    .await;
    assert_eq!(status, 200);
    let record = &answer["record"];
    assert_eq!(
        record["products"]["jira"]["config"]["db"], "acme_jira",
        "{answer}"
    );
    assert_eq!(record["products"]["jira"]["secrets"]["db_password"], SECRET);
    assert!(record["products"].get("confluence").is_none(), "{answer}");
    assert!(record.get("data_key").is_none(), "{answer}");
    assert_eq!(record["placements"]["jira"]["shard"], "jira-us-east-1");
    // Its other host: the same tenant, opened once.
    let (status, alias) = side.lookup("acme-alias.example.test").await;
    assert_eq!(status, 200);
    assert_eq!(
        alias["record"]["products"]["jira"]["secrets"]["db_password"],
        SECRET
    );

    // Only the service's own token, only its own view.
    let lookup = "/v1/views/jira/hosts/acme.example.test";
    assert_eq!(side.get_as(lookup, None).await.0, 401);
    assert_eq!(side.get_as(lookup, Some("not-a-token")).await.0, 401);
    let confluence = stack.product_token("confluence").unwrap();
    assert_eq!(side.get_as(lookup, Some(confluence)).await.0, 401);
    let (status, body) = side.get("/v1/views/confluence/hosts/acme.example.test").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(side.get_as("/admin/cache", None).await.0, 401);
    assert_eq!(side.get("/v1/views/jira/hosts/nobody.example.test").await.0, 404);
    assert_eq!(side.get("/v1/views/jira/hosts/bad%20host").await.0, 400);

    // A batch, in order, null for the unknown.
    let batch: Value = side
        .http
        .post(format!("{}/v1/views/jira/hosts", side.url))
        .bearer_auth(&side.token)
        .json(&json!({"hosts": ["nobody.example.test", "acme.example.test", "not a host"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let results = batch["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert!(results[0].is_null() && results[2].is_null(), "{batch}");
    assert_eq!(
        results[1]["record"]["products"]["jira"]["secrets"]["db_password"],
        SECRET
    );

    // By tenant id: from the cache for a tenant it answered for, from TCS for another.
    let (status, body) = side.get("/v1/views/jira/tenants/acme/placements/jira").await;
    assert_eq!(status, 200, "{body}");
    let placement: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(placement["shard"], "jira-us-east-1");
    assert_eq!(placement["version"].as_u64(), Some(version));
    let (status, body) = side.get("/v1/views/jira/tenants/globex/placements/jira").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        side.get("/v1/views/jira/tenants/nobody/placements/jira").await.0,
        404
    );
    assert_eq!(
        side.get("/v1/views/jira/tenants/acme/placements/bamboo").await.0,
        404
    );

    // The bulk endpoints pass through, sealed as TCS serves them.
    let (status, snapshot) = side.get("/v1/views/jira/snapshot").await;
    assert_eq!(status, 200);
    assert!(snapshot.contains("acme_jira") && !snapshot.contains(SECRET));
    let mut stream = side
        .http
        .get(format!("{}/v1/views/jira/changes?after=0", side.url))
        .bearer_auth(&side.token)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    common::read_stream_until(&mut stream, "acme_jira").await;
    drop(stream);
    assert_eq!(side.get("/v1/views/jira/changes?after=x").await.0, 400);

    // A change reaches it through the change stream, and is opened once more.
    let (status, _) = stack.put_tenant(&acme("acme_jira_2")).await;
    assert_eq!(status, 200);
    eventually(Duration::from_secs(10), || async {
        let (_, v) = side.lookup("acme.example.test").await;
        (v["record"]["products"]["jira"]["config"]["db"] == "acme_jira_2").then_some(())
    })
    .await;
    let (status, admin) = side.get("/admin/tenants/acme.example.test").await;
    assert_eq!(status, 200);
    let admin: Value = serde_json::from_str(&admin).unwrap();
    assert_eq!(admin["origin"], "stream", "{admin}");
    assert!(
        !admin.to_string().contains(SECRET),
        "admin shows what is cached: sealed"
    );

    // Readiness, metrics and admin as the edge's.
    let (status, ready) = side.get_as("/readyz", None).await;
    assert_eq!(status, 200, "{ready}");
    let (_, regions) = side.get("/admin/regions").await;
    let regions: Value = serde_json::from_str(&regions).unwrap();
    assert_eq!(regions["view"], "jira");
    assert_eq!(regions["regions"].as_array().unwrap().len(), 2);
    let (_, metrics) = side.get_as("/metrics", None).await;
    assert!(
        metric(&metrics, "tenant_edge_tenant_cache_hits_total") >= 1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "tenant_edge_secret_opens_total{result=\"ok\"}"),
        2.0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "tenant_edge_sidecar_requests_total{endpoint=\"lookup\",status=\"200\"}"
        ) >= 3.0
    );
    assert!(
        metric(
            &metrics,
            "tenant_edge_sidecar_requests_total{endpoint=\"lookup\",status=\"401\"}"
        ) >= 3.0
    );

    // The cache file keeps ciphertext only.
    side.stop().await;
    let kept = std::fs::read_to_string(&cache_file).unwrap();
    assert!(
        kept.contains("acme_jira_2") && kept.contains("ciphertext"),
        "{kept}"
    );
    assert!(!kept.contains(SECRET));
}

/// A service reading two views runs one sidecar for both: each view its own cache, answers
/// and cache file, one `/readyz`, one `/metrics` with each view's series labelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sidecar_serves_every_view_of_its_service() {
    let stack = Stack::start().await;
    let version = put_acme(&stack).await;
    let cache_file = stack.dir.path().join("support.cache");
    let side = sidecar_of(
        &stack,
        &["jira", "confluence"],
        common::SUPPORT_TOKEN.to_owned(),
        |cfg| cfg.cache_file = Some(cache_file.clone()),
    )
    .await;
    side.started.ready().await;

    // Each view answers with its own product, its secret opened, nothing of the other.
    for (view, db, secret) in [
        ("jira", "acme_jira", SECRET),
        ("confluence", "acme_wiki", "confluence-only-secret"),
    ] {
        let path = format!("/v1/views/{view}/hosts/acme.example.test");
        let record: Value = eventually(Duration::from_secs(10), || async {
            let (status, body) = side.get(&path).await;
            let v: Value = serde_json::from_str(&body).ok()?;
            (status == 200 && v["record"]["version"].as_u64() == Some(version)).then(|| v["record"].clone())
        })
        .await;
        let products = record["products"].as_object().unwrap();
        assert_eq!(products.keys().collect::<Vec<_>>(), [view], "{record}");
        assert_eq!(products[view]["config"]["db"], db);
        assert_eq!(products[view]["secrets"]["db_password"], secret);
    }
    // A view it does not serve: 403, naming those it does; a product's own token: 401.
    let (status, body) = side.get("/v1/views/ingress/hosts/acme.example.test").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("jira") && body.contains("confluence"), "{body}");
    let jira = stack.product_token("jira").unwrap();
    let (status, _) = side
        .get_as("/v1/views/jira/hosts/acme.example.test", Some(jira))
        .await;
    assert_eq!(status, 401);

    // One readiness for both; one exposition, each family once, each view's series labelled.
    let (status, ready) = side.get_as("/readyz", None).await;
    assert_eq!(status, 200, "{ready}");
    let ready: Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(ready["views"]["jira"]["ready"], true, "{ready}");
    assert_eq!(ready["views"]["confluence"]["ready"], true, "{ready}");
    let (_, text) = side.get_as("/metrics", None).await;
    let families = text
        .lines()
        .filter(|l| l.starts_with("# TYPE tenant_edge_sidecar_requests_total "))
        .count();
    assert_eq!(families, 1, "{text}");
    for view in ["jira", "confluence"] {
        let served = text.lines().any(|l| {
            l.starts_with("tenant_edge_sidecar_requests_total{")
                && l.contains("endpoint=\"lookup\"")
                && l.contains(&format!("view=\"{view}\""))
        });
        assert!(served, "no lookup counted for {view}: {text}");
    }
    // The admin endpoints: the first view's where the edge has them, each view's by name.
    for path in [
        "/admin/cache",
        "/admin/views/jira/cache",
        "/admin/views/confluence/cache",
    ] {
        assert_eq!(side.get(path).await.0, 200, "{path}");
    }
    let (status, cached) = side
        .get("/admin/views/confluence/tenants/acme.example.test")
        .await;
    assert_eq!(status, 200, "{cached}");
    assert!(
        cached.contains("acme_wiki") && !cached.contains("acme_jira"),
        "{cached}"
    );

    // At shutdown, a cache file per view, each holding its own view's tenants only.
    side.stop().await;
    let jira_file = std::fs::read_to_string(stack.dir.path().join("support.jira.cache")).unwrap();
    let wiki_file = std::fs::read_to_string(stack.dir.path().join("support.confluence.cache")).unwrap();
    assert!(jira_file.contains("acme_jira") && !jira_file.contains("acme_wiki"));
    assert!(wiki_file.contains("acme_wiki") && !wiki_file.contains("acme_jira"));
    assert!(!cache_file.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_that_does_not_open_is_a_503_never_a_half_record() {
    let stack = Stack::start().await;
    let version = put_acme(&stack).await;
    put_plain(&stack).await;
    let wrong_key = stack.dir.path().join("other.key");
    tenant_edge::secrets::MasterKey::load_or_create(&wrong_key).unwrap();
    let side = sidecar(&stack, "jira", |cfg| {
        cfg.secrets = Some(KeySettings {
            master_key: Some(wrong_key.clone()),
            ..KeySettings::default()
        });
    })
    .await;
    stack
        .wait_in_tcs(&stack.tcs_urls[0], "acme.example.test", version)
        .await;
    stack
        .wait_in_tcs(&stack.tcs_urls[1], "acme.example.test", version)
        .await;
    let (status, body) = side.get("/v1/views/jira/hosts/acme.example.test").await;
    assert_eq!(status, 503, "{body}");
    assert!(!body.contains("acme_jira"), "{body}");
    // A tenant without secrets is answered.
    let (status, body) = side.get("/v1/views/jira/hosts/plain.example.test").await;
    assert_eq!(status, 200, "{body}");
    // And a batch holding the sealed tenant fails whole.
    let r = side
        .http
        .post(format!("{}/v1/views/jira/hosts", side.url))
        .bearer_auth(&side.token)
        .json(&json!({"hosts": ["plain.example.test", "acme.example.test"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    side.stop().await;

    // Without any master key: the same.
    let side = sidecar(&stack, "jira", |cfg| cfg.secrets = None).await;
    assert_eq!(side.get("/v1/views/jira/hosts/acme.example.test").await.0, 503);
    assert_eq!(side.get("/v1/views/jira/hosts/plain.example.test").await.0, 200);
    side.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_is_checked_whole() {
    let tcs = vec![tenant_edge::context::TcsEndpoint {
        region: "us-east-1".into(),
        url: "http://127.0.0.1:1".into(),
        token: "t".into(),
    }];
    let mut cfg = SidecarConfig::new(
        "ingress",
        tenant_edge::tenant::Region::new("eu-west-1").unwrap(),
        "0.0.0.0:7400".parse().unwrap(),
        tcs,
    );
    cfg.secrets = Some(KeySettings::default());
    let problems = cfg.check().unwrap_err().join("\n");
    for expected in ["ingress", "loopback", "eu-west-1", "master_key"] {
        assert!(problems.contains(expected), "{expected}: {problems}");
    }
    let err = tenant_edge::sidecar::start(cfg, CancellationToken::new())
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("loopback"), "{err}");
}

/// The edge's resilience cases, through the sidecar: every region failing, an emptied region,
/// a slow region.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_region_failing_known_tenants_keep_answering() {
    let stack = Stack::start().await;
    let version = put_acme(&stack).await;
    stack
        .wait_in_tcs(&stack.tcs_urls[0], "acme.example.test", version)
        .await;
    stack
        .wait_in_tcs(&stack.tcs_urls[1], "acme.example.test", version)
        .await;
    let side = sidecar(&stack, "jira", |_| {}).await;
    for host in ["acme.example.test", "globex.example.test"] {
        assert_eq!(side.lookup(host).await.0, 200);
    }
    for url in &stack.tcs_urls {
        tcs_faults(&stack, url, Some(json!({"error_rate": 1.0}))).await;
    }
    for i in 0..200 {
        let host = ["acme.example.test", "globex.example.test"][i % 2];
        let (status, v) = side.lookup(host).await;
        assert_eq!(status, 200, "{host}: {v}");
    }
    let (status, v) = side.lookup("acme.example.test").await;
    assert_eq!(status, 200);
    assert_eq!(v["record"]["products"]["jira"]["secrets"]["db_password"], SECRET);
    let (status, body) = side.get("/v1/views/jira/hosts/initech.example.test").await;
    assert_eq!(status, 503, "no TCS answered: an outage, not a deletion: {body}");
    assert_eq!(side.get_as("/readyz", None).await.0, 200);
    side.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_region_is_distrusted_and_a_slow_one_is_hedged_around() {
    let stack = Stack::start().await;
    let side = sidecar(&stack, "jira", |_| {}).await;
    for host in ["acme.example.test", "globex.example.test"] {
        assert_eq!(side.lookup(host).await.0, 200);
    }
    stack
        .wait_in_tcs(&stack.tcs_urls[0], "initech.example.test", 0)
        .await;
    stack
        .wait_in_tcs(&stack.tcs_urls[1], "initech.example.test", 0)
        .await;
    // The local region says 404 for everything: its canaries (the tenants held) go missing,
    // it is distrusted, and its 404 is not believed.
    tcs_faults(&stack, &stack.tcs_urls[0], Some(json!({"empty": true}))).await;
    eventually(Duration::from_secs(10), || async {
        let (_, r) = side.get("/admin/regions").await;
        let r: Value = serde_json::from_str(&r).ok()?;
        let local = r["regions"]
            .as_array()?
            .iter()
            .find(|g| g["region"] == "us-east-1")?
            .clone();
        (local["trust"] == "canary_missing").then_some(())
    })
    .await;
    let (status, body) = side.get("/v1/views/jira/hosts/initech.example.test").await;
    assert_eq!(status, 200, "resolved through the trusted region: {body}");
    tcs_faults(&stack, &stack.tcs_urls[0], None).await;

    // The local region turns slow: a miss is answered by the other region.
    tcs_faults(&stack, &stack.tcs_urls[0], Some(json!({"latency_ms": 2000}))).await;
    let (status, _) = stack
        .put_tenant(
            &json!({"id": "slowpoke", "hosts": ["slowpoke.example.test"], "realm": "us",
            "placements": {"jira": {"shard": "jira-us-east-1"}}}),
        )
        .await;
    assert_eq!(status, 201);
    stack
        .wait_in_tcs(&stack.tcs_urls[1], "slowpoke.example.test", 0)
        .await;
    let (status, body) = side.get("/v1/views/jira/hosts/slowpoke.example.test").await;
    assert_eq!(status, 200, "{body}");
    let (_, seen) = side.get("/admin/tenants/slowpoke.example.test").await;
    let seen: Value = serde_json::from_str(&seen).unwrap();
    assert_eq!(seen["region"], "eu-west-1", "the fast region's answer: {seen}");
    tcs_faults(&stack, &stack.tcs_urls[0], None).await;
    side.stop().await;
}

/// KMS as the master key: a tenant opened before KMS went away keeps answering with its
/// plaintext; one never opened answers 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_kms_unreachable_opened_tenants_keep_answering_and_new_ones_are_503() {
    let (mut moto, kms) = common::kms_key().await;
    let key_id = kms.key_id.clone();
    let stack = Stack::start_with(common::StackOptions {
        kms: Some(kms.clone()),
        ..Default::default()
    })
    .await;
    put_plain(&stack).await;
    let mut versions = Vec::new();
    for id in ["acme", "umbrella"] {
        let mut doc = acme("acme_jira");
        doc["id"] = json!(id);
        doc["hosts"] = json!([format!("{id}.example.test")]);
        let (status, stored) = stack.put_tenant(&doc).await;
        assert!((200..300).contains(&status), "{stored}");
        assert_eq!(stored["data_key"]["key_id"], format!("kms:{key_id}"));
        versions.push((id, stored["version"].as_u64().unwrap()));
    }
    for (id, version) in &versions {
        let host = format!("{id}.example.test");
        stack.wait_in_tcs(&stack.tcs_urls[0], &host, *version).await;
        stack.wait_in_tcs(&stack.tcs_urls[1], &host, *version).await;
    }
    let side = sidecar(&stack, "jira", |cfg| {
        cfg.secrets = Some(KeySettings {
            kms: Some(kms),
            ..KeySettings::default()
        });
    })
    .await;
    let (status, v) = side.lookup("acme.example.test").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["record"]["products"]["jira"]["secrets"]["db_password"], SECRET);

    moto.stop();
    for _ in 0..20 {
        let (status, v) = side.lookup("acme.example.test").await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["record"]["products"]["jira"]["secrets"]["db_password"], SECRET);
    }
    let (status, body) = side.get("/v1/views/jira/hosts/umbrella.example.test").await;
    assert_eq!(status, 503, "never opened, and KMS is unreachable: {body}");
    assert!(!body.contains("acme_jira"));
    assert_eq!(
        side.get("/v1/views/jira/hosts/plain.example.test").await.0,
        200,
        "no secrets"
    );
    let (_, metrics) = side.get_as("/metrics", None).await;
    assert!(metric(&metrics, "tenant_edge_secret_opens_total{result=\"failed\"}") >= 1.0);
    side.stop().await;
}

/// The stack's sidecar of `product`.
fn sidecar_url(stack: &Stack, product: &str) -> String {
    let name = format!("sidecar-{product}");
    stack
        .inner
        .sidecars
        .iter()
        .find(|p| p.name() == name)
        .unwrap()
        .url()
}

/// The first backend port of `shard`.
fn backend_port(stack: &Stack, shard: &str) -> u16 {
    stack.backends.iter().find(|(id, _)| id == shard).unwrap().1[0]
}

fn served_by(r: &reqwest::Response) -> String {
    r.headers()["x-served-by"].to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_shards_find_each_tenants_database_through_their_sidecar() {
    let stack = Stack::start_with(common::StackOptions {
        sidecars: true,
        ..Default::default()
    })
    .await;
    // Through the edge: the shard names acme's jira database, found through its sidecar, and
    // the credential it got (as a fingerprint).
    let (status, echo) = stack.get_json("acme.example.test", "/").await;
    assert_eq!(status, 200, "{echo}");
    let db = &echo["database"];
    assert_eq!(db["name"], "acme_jira", "{echo}");
    assert_eq!(db["host"], "jira-us-east-1.db.internal");
    let token = stack.product_token("jira").unwrap();
    let url = format!(
        "{}/v1/views/jira/hosts/acme.example.test",
        sidecar_url(&stack, "jira")
    );
    let view: Value = stack
        .http
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let password = view["record"]["products"]["jira"]["secrets"]["db_password"]
        .as_str()
        .unwrap();
    assert_eq!(db["credential"], tenant_edge::demo::fingerprint(password));
    let (status, echo) = stack.get_json("globex.example.test", "/wiki/spaces").await;
    assert_eq!(status, 200, "{echo}");
    assert_eq!(
        echo["database"]["host"], "confluence-eu-west-1.db.internal",
        "{echo}"
    );

    // Defence in depth: acme sent straight to a shard that does not hold it is refused with a
    // 421 naming the version to fetch...
    let other = backend_port(&stack, "jira-eu-west-1");
    let direct = |tenant: &'static str, version: &'static str| {
        stack
            .http
            .get(format!("http://127.0.0.1:{other}/"))
            .header("x-tenant-id", tenant)
            .header("x-forwarded-host", "acme.example.test")
            .header("x-tenant-context-version", version)
            .send()
    };
    let r = direct("acme", "1").await.unwrap();
    assert_eq!(r.status(), 421);
    let moved: u64 = r.headers()["tenant-moved"].to_str().unwrap().parse().unwrap();
    assert_eq!(moved, view["record"]["version"].as_u64().unwrap());
    // ... unless the edge routed by a newer context than the view holds (the sidecar lags).
    assert_eq!(direct("acme", "1000000").await.unwrap().status(), 200);
    // A host the view gives to another tenant: refused.
    assert_eq!(direct("globex", "1").await.unwrap().status(), 503);
    let no_host = stack
        .http
        .get(format!("http://127.0.0.1:{other}/"))
        .header("x-tenant-id", "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(no_host.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_carries_the_database_location_and_queued_work_follows_the_tenant() {
    let stack = Stack::start_with(common::StackOptions {
        sidecars: true,
        show_backend_headers: true,
        ..Default::default()
    })
    .await;
    // A job for acme, queued on its shard and due after the move.
    let r = stack
        .http
        .post(format!("http://127.0.0.1:{}/jobs", stack.edge_http))
        .header("host", "acme.example.test")
        .json(&json!({"item": {"from": "a job"}, "delay_ms": 5000}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(served_by(&r).starts_with("jira-us-east-1/"), "{}", served_by(&r));
    let job: Value = r.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_owned();

    let args = [
        "migrate",
        "--host",
        "acme.example.test",
        "--product",
        "jira",
        "--to",
        "jira-us-west-2",
        "--drain-ms",
        "300",
    ];
    let ran = common::ctl::ctl(&stack.catalogue_url, Some(stack.operator_token()), &args, "").await;
    assert!(ran.ok(), "{}", ran.stderr);

    // Served by the target, which finds acme's data on its own database through its sidecar.
    eventually(Duration::from_secs(10), || async {
        let r = stack.get("acme.example.test", "/").await;
        let by = served_by(&r);
        let echo: Value = r.json().await.ok()?;
        (by.starts_with("jira-us-west-2/") && echo["database"]["host"] == "jira-us-west-2.db.internal")
            .then_some(())
    })
    .await;

    // The job: re-checked at the source when due, re-routed to the target, run there.
    let status = eventually(Duration::from_secs(20), || async {
        let (status, v) = stack.get_json("acme.example.test", &format!("/jobs/{id}")).await;
        (status == 200 && v["state"] == "ran").then_some(v)
    })
    .await;
    assert_eq!(status["note"], "jira-us-west-2", "{status}");
    let at_source = rusqlite::Connection::open(stack.dir.path().join("shards/shard-jira-us-east-1.db"))
        .unwrap()
        .query_row("SELECT state, note FROM jobs WHERE id = ?1", [&id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })
        .unwrap();
    assert_eq!(at_source, ("rerouted".to_owned(), "jira-us-west-2".to_owned()));
    let (status, item) = stack.get_json("acme.example.test", &format!("/items/{id}")).await;
    assert_eq!(status, 200, "{item}");
    assert_eq!(item["body"]["from"], "a job");
}
