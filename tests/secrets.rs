//! Tenant secrets: written in plaintext over the catalogue API, stored only sealed with the
//! tenant's data key (wrapped by the catalogue's master key file). A known secret is looked
//! for in everything the stack keeps or serves: the catalogue's database files, its change
//! log and tenant answers, TCS's answers and snapshot files, the edge's cache file.

#![expect(clippy::unwrap_used, reason = "test helpers fail the test by unwrapping")]

mod common;

use std::path::Path;

use common::{Stack, StackOptions, EDGE_TOKEN};
use serde_json::{json, Value};

const SECRET: &str = "s3cr3t-grep-me-7d1f90";

fn acme_with_secrets(secret: &Value) -> Value {
    json!({
        "id": "acme",
        "hosts": ["acme.example.test"],
        "realm": "us",
        "placements": {"jira": {"shard": "jira-us-east-1"}, "confluence": {"shard": "confluence-us-east-1"}},
        "products": {
            "jira": {"config": {"db": "acme_jira", "db_host": "db1.jira.internal"},
                     "secrets": {"db_password": secret}},
            "confluence": {"config": {"db": "acme_wiki"}}
        }
    })
}

/// Every file under `dir` holding `needle`'s bytes.
fn files_holding(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    found.push(path.display().to_string());
                }
            }
        }
    }
    found
}

#[tokio::test]
async fn a_secret_is_stored_and_served_only_sealed() {
    let mut stack = Stack::start_with(StackOptions {
        cache_file_interval_secs: Some(1),
        ..StackOptions::default()
    })
    .await;
    let (status, stored) = stack.put_tenant(&acme_with_secrets(&json!(SECRET))).await;
    assert_eq!(status, 200, "{stored}");
    let text = stored.to_string();
    assert!(!text.contains(SECRET), "the answer carries the plaintext: {text}");
    let sealed = stored["products"]["jira"]["secrets"]["db_password"].clone();
    assert!(
        sealed["ciphertext"].is_string() && sealed["nonce"].is_string(),
        "{sealed}"
    );
    assert!(stored["data_key"]["key_id"]
        .as_str()
        .unwrap()
        .starts_with("file:"));
    assert_eq!(stored["products"]["jira"]["config"]["db"], "acme_jira");

    // Written back as read (sealed): kept, with the same data key.
    let mut again = stored.clone();
    again["hosts"] = json!(["acme.example.test", "acme2.example.test"]);
    let (status, rewritten) = stack.put_tenant(&again).await;
    assert_eq!(status, 200, "{rewritten}");
    assert_eq!(rewritten["data_key"], stored["data_key"]);
    assert_eq!(rewritten["products"]["jira"]["secrets"]["db_password"], sealed);
    // A sealed value moved to another name does not open there: refused.
    let mut moved = stored.clone();
    moved["products"]["jira"]["secrets"] = json!({"api_key": sealed});
    let (status, refused) = stack.put_tenant(&moved).await;
    assert_eq!(status, 422, "{refused}");
    assert!(!refused.to_string().contains(SECRET));
    // Bad names are refused before anything is sealed.
    let (status, _) = stack
        .put_tenant(
            &acme_with_secrets(&json!(SECRET))
                .as_object()
                .cloned()
                .map(|mut o| {
                    o["products"]["jira"]["secrets"] = json!({"Bad Name": SECRET});
                    Value::Object(o)
                })
                .unwrap(),
        )
        .await;
    assert_eq!(status, 422);

    // Served: the change log and the tenant answers carry only sealed values; TCS's ingress
    // view carries no products at all.
    let changes = stack
        .http
        .get(format!("{}/v1/changes?after=0&limit=10000", stack.catalogue_url))
        .bearer_auth(stack.operator_token())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(changes.contains("ciphertext") && !changes.contains(SECRET));
    stack
        .wait_in_tcs(&stack.tcs_urls[0].clone(), "acme2.example.test", 0)
        .await;
    let lookup: Value = stack
        .http
        .get(format!(
            "{}/v1/views/ingress/hosts/acme.example.test",
            stack.tcs_urls[0]
        ))
        .bearer_auth(EDGE_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let lookup = lookup.to_string();
    assert!(
        !lookup.contains("products") && !lookup.contains("ciphertext"),
        "{lookup}"
    );
    assert_eq!(stack.get_json("acme.example.test", "/").await.0, 200);

    // Kept: nothing the stack wrote holds the plaintext (database, WAL, snapshots, cache file).
    let dir = stack.dir.path().to_path_buf();
    stack.stop().await;
    assert!(dir.join("catalogue/master.key").exists());
    let holding = files_holding(&dir, SECRET);
    assert!(holding.is_empty(), "plaintext secret found in {holding:?}");
    // ... while the sealed form is where the catalogue keeps tenants (the check can fail).
    let db = files_holding(&dir, sealed["ciphertext"].as_str().unwrap());
    assert!(db.iter().any(|f| f.contains("catalogue")), "{db:?}");
}

/// A catalogue in this process (SQLite in `dir`, no tokens, loopback) with these keys, seeded
/// with the dev route file's realms and shards; its URL, and what stops it.
async fn catalogue(
    dir: &Path,
    master_key: Option<std::path::PathBuf>,
    previous_master_keys: Vec<std::path::PathBuf>,
    kms: Option<tenant_edge::catalogue::KmsConfig>,
) -> (
    String,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let cfg = tenant_edge::catalogue::CatalogueConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        store: tenant_edge::catalogue::StoreConfig::Sqlite,
        tokens: None,
        allow_unauthenticated: true,
        new_log_epoch: false,
        master_key,
        previous_master_keys,
        kms,
    };
    let bound = tenant_edge::catalogue::bind(cfg).await.unwrap();
    let url = format!("http://{}", bound.addr());
    let stop = tokio_util::sync::CancellationToken::new();
    let serving = tokio::spawn({
        let stop = stop.clone();
        async move { bound.serve(stop).await.unwrap() }
    });
    let client = tenant_edge::feed::CatalogueClient::new(&url).unwrap();
    let routes = tenant_edge::routes::RouteSnapshot::load_file(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("routes/dev.toml"),
    )
    .unwrap();
    tenant_edge::stack::seed(&client, &routes, false).await.unwrap();
    (url, stop, serving)
}

async fn put(url: &str, doc: &Value) -> (u16, Value) {
    let url = format!("{url}/v1/tenants/{}", doc["id"].as_str().unwrap());
    let r = reqwest::Client::new().put(url).json(doc).send().await.unwrap();
    (
        r.status().as_u16(),
        r.json::<Value>().await.unwrap_or(Value::Null),
    )
}

async fn get(url: &str, path: &str) -> Value {
    reqwest::get(format!("{url}{path}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn rotation_rewraps_data_keys_and_leaves_secrets_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (dir.path().join("old.key"), dir.path().join("new.key"));
    let (url, stop, serving) = catalogue(dir.path(), Some(old.clone()), Vec::new(), None).await;
    let (status, before) = put(&url, &acme_with_secrets(&json!(SECRET))).await;
    assert_eq!(status, 201, "{before}");
    // Four more, so that the rotation goes page by page.
    for i in 1..=4 {
        let mut doc = acme_with_secrets(&json!(format!("{SECRET}-{i}")));
        doc["id"] = json!(format!("t{i}"));
        doc["hosts"] = json!([format!("t{i}.example.test")]);
        let (status, body) = put(&url, &doc).await;
        assert_eq!(status, 201, "{body}");
    }
    stop.cancel();
    serving.await.unwrap();

    // The new key current, the old one still accepted: rotation moves every data key.
    let (url, stop, serving) = catalogue(dir.path(), Some(new.clone()), vec![old.clone()], None).await;
    let head = get(&url, "/v1/changes?after=0&limit=1").await["head"]
        .as_u64()
        .unwrap();
    let http = reqwest::Client::new();
    // Pages are bounded and named exactly.
    for bad in ["limit=0", "limit=10001", "page=2", "after=Not%20An%20Id"] {
        let r = http
            .post(format!("{url}/v1/keys/rotate?{bad}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    let r = http
        .get(format!("{url}/v1/tenants?host=acme.example.test&limit=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "a host names one tenant: no page of it");
    // One page of two: acme and t1, and where the next page starts.
    let r = http
        .post(format!("{url}/v1/keys/rotate?limit=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rotated: Value = r.json().await.unwrap();
    assert_eq!(rotated["rewrapped"], 2, "{rotated}");
    assert_eq!(rotated["next"], "t1", "{rotated}");
    let t2 = get(&url, "/v1/tenants/t2").await;
    assert_eq!(
        t2["data_key"]["key_id"], before["data_key"]["key_id"],
        "t2 is on the next page"
    );
    let after = get(&url, "/v1/tenants/acme").await;
    assert_ne!(after["data_key"]["key_id"], before["data_key"]["key_id"]);
    assert_eq!(after["data_key"]["key_id"], rotated["key_id"]);
    assert_eq!(after["products"], before["products"], "no secret rewritten");
    let page = get(&url, &format!("/v1/changes?after={head}")).await;
    assert_eq!(
        page["changes"].as_array().unwrap().len(),
        2,
        "each key re-wrapped is a change: {page}"
    );
    // The rest through the operator's CLI, two a page from the start: a progress line a page.
    let rest = common::ctl::ctl(
        &url,
        Some("unused-on-an-open-catalogue"),
        &["rotate-keys", "--page", "2"],
        "",
    )
    .await;
    assert!(rest.ok(), "{}", rest.stderr);
    assert!(
        rest.stdout.contains("through tenant t3") && rest.stdout.contains("re-wrapped 3 data keys with"),
        "{}",
        rest.stdout
    );
    assert!(rest.stdout.contains("(3 pages)"), "{}", rest.stdout);
    for id in ["t2", "t3", "t4"] {
        let doc = get(&url, &format!("/v1/tenants/{id}")).await;
        assert_eq!(doc["data_key"]["key_id"], rotated["key_id"], "{id}");
    }
    // Again: nothing left to move.
    let again = common::ctl::ctl(&url, Some("unused-on-an-open-catalogue"), &["rotate-keys"], "").await;
    assert!(again.ok(), "{}", again.stderr);
    assert!(
        again.stdout.contains("re-wrapped 0 data keys"),
        "{}",
        again.stdout
    );
    stop.cancel();
    serving.await.unwrap();

    // The old key gone: the tenant, written back as read, still opens.
    let (url, stop, serving) = catalogue(dir.path(), Some(new), Vec::new(), None).await;
    let (status, body) = put(&url, &after).await;
    assert_eq!(status, 200, "{body}");
    stop.cancel();
    serving.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_kms_master_key_writing_a_secret_needs_kms() {
    let (mut moto, kms) = common::kms_key().await;
    let key = kms.key_id.clone();
    let dir = tempfile::tempdir().unwrap();
    let (url, stop, serving) = catalogue(dir.path(), None, Vec::new(), Some(kms)).await;
    let (status, stored) = put(&url, &acme_with_secrets(&json!(SECRET))).await;
    assert_eq!(status, 201, "{stored}");
    assert_eq!(stored["data_key"]["key_id"], format!("kms:{key}"));
    assert!(!stored.to_string().contains(SECRET));
    assert!(
        !dir.path().join("master.key").exists(),
        "no key file beside a KMS key"
    );

    // KMS gone: a secret cannot be sealed (503, nothing written), a tenant without one can.
    moto.stop();
    let mut other = acme_with_secrets(&json!(SECRET));
    other["id"] = json!("acme2");
    other["hosts"] = json!(["acme2.example.test"]);
    let (status, body) = put(&url, &other).await;
    assert_eq!(status, 503, "{body}");
    other.as_object_mut().unwrap().remove("products");
    assert_eq!(put(&url, &other).await.0, 201);
    assert!(files_holding(dir.path(), SECRET).is_empty());
    stop.cancel();
    serving.await.unwrap();
}
