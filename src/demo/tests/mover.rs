use reqwest::Method;
use serde_json::json;

use super::*;

const UNSAFE: [Method; 3] = [Method::POST, Method::PUT, Method::DELETE];

/// Every item method on `/items` or `/items/{id}` for `tenant`, with a JSON body where one fits.
fn item_requests(shard: &Running, tenant: &str, id: &str) -> Vec<(Method, reqwest::RequestBuilder)> {
    let one = format!("/items/{id}");
    vec![
        (Method::GET, shard.req(Method::GET, "/items", Some(tenant))),
        (Method::GET, shard.req(Method::GET, &one, Some(tenant))),
        (
            Method::POST,
            shard.req(Method::POST, "/items", Some(tenant)).json(&json!(1)),
        ),
        (
            Method::PUT,
            shard.req(Method::PUT, &one, Some(tenant)).json(&json!(2)),
        ),
        (Method::DELETE, shard.req(Method::DELETE, &one, Some(tenant))),
        (Method::GET, shard.req(Method::GET, "/", Some(tenant))),
        (Method::POST, shard.req(Method::POST, "/wiki/x", Some(tenant))),
    ]
}

#[tokio::test]
async fn a_frozen_tenant_reads_but_cannot_write_on_any_backend() {
    let dir = tempfile::tempdir().unwrap();
    let b1 = start_in(dir.path(), "jira-us-east-1", "b1").await;
    let b2 = start_in(dir.path(), "jira-us-east-1", "b2").await;
    let id = b1.create("acme", &json!("before")).await;
    let answer = b1.hook("freeze", json!({"tenant": "acme"})).await;
    assert_eq!(
        answer,
        json!({"tenant": "acme", "frozen": true, "moved": null, "items": 1, "regions": {"us-east-1": 1}})
    );
    // The fence lives in the shard's file: the other backend honours it too.
    for shard in [&b1, &b2] {
        for (method, req) in item_requests(shard, "acme", &id) {
            let (status, headers, body) = shard.send(req).await;
            if UNSAFE.contains(&method) {
                assert_eq!(status, 503, "{method} {body}");
                assert_eq!(headers["retry-after"], "1");
                assert_eq!(body["status"], 503);
            } else {
                assert_eq!(status, 200, "{method} {body}");
            }
        }
    }
    // Other tenants write as usual, and the frozen tenant's data is unchanged.
    b2.create("globex", &json!("unaffected")).await;
    let (_, list) = b2.list("acme").await;
    assert_eq!(list["items"][0]["body"], "before");
    assert_eq!(list["items"].as_array().unwrap().len(), 1);

    let answer = b2.hook("unfreeze", json!({"tenant": "acme"})).await;
    assert_eq!(answer["frozen"], false);
    b1.create("acme", &json!("after")).await;
    b1.stop().await;
    b2.stop().await;
}

#[tokio::test]
async fn a_released_tenant_gets_421_with_the_version_for_every_request() {
    let (_dir, shard) = start().await;
    let id = shard.create("acme", &json!("x")).await;
    let answer = shard
        .hook("release", json!({"tenant": "acme", "version": 7}))
        .await;
    assert_eq!(
        answer,
        json!({"tenant": "acme", "frozen": false, "moved": 7, "items": 1, "regions": {"us-east-1": 1}})
    );
    for (method, req) in item_requests(&shard, "acme", &id) {
        let (status, headers, body) = shard.send(req).await;
        assert_eq!(status, 421, "{method} {body}");
        assert_eq!(headers["tenant-moved"], "7");
        assert_eq!(headers["x-served-by"], "jira-us-east-1/b1");
        assert_eq!(body["status"], 421);
    }
    // HEAD too (no body to read).
    let resp = shard.req(Method::HEAD, "/", Some("acme")).send().await.unwrap();
    assert_eq!(resp.status(), 421);
    // An older release retried late does not lower the version; a newer one raises it.
    shard
        .hook("release", json!({"tenant": "acme", "version": 5}))
        .await;
    let (_, headers, _) = shard.send(shard.req(Method::GET, "/items", Some("acme"))).await;
    assert_eq!(headers["tenant-moved"], "7");
    let answer = shard
        .hook("release", json!({"tenant": "acme", "version": 9}))
        .await;
    assert_eq!(answer["moved"], 9);
    // Another tenant is untouched.
    assert_eq!(shard.list("globex").await.0, 200);
    shard.stop().await;
}

#[tokio::test]
async fn export_then_import_moves_identical_items_and_delete_keeps_the_fence() {
    let dir = tempfile::tempdir().unwrap();
    let source = start_in(dir.path(), "jira-us-east-1", "b1").await;
    let target = start_in(dir.path(), "jira-us-west-2", "b1").await;
    for n in 0..5 {
        source
            .create("acme", &json!({"n": n, "nested": {"list": [n, "s"]}}))
            .await;
    }
    source.create("globex", &json!("stays")).await;
    // The target held a stale fence from an earlier, rolled back attempt.
    target
        .hook("release", json!({"tenant": "acme", "version": 3}))
        .await;
    target.hook("freeze", json!({"tenant": "acme"})).await;

    source.hook("freeze", json!({"tenant": "acme"})).await;
    let (status, _, export) = source
        .send(source.req(Method::GET, "/mover/export?tenant=acme", None))
        .await;
    assert_eq!(status, 200);
    assert_eq!(export["tenant"], "acme");
    assert_eq!(export["items"].as_array().unwrap().len(), 5);
    let answer = target.hook("import", export.clone()).await;
    assert_eq!(
        answer,
        json!({"tenant": "acme", "frozen": false, "moved": null, "items": 5, "regions": {"us-west-2": 5}})
    );
    // Import is an upsert: again changes nothing.
    assert_eq!(target.hook("import", export.clone()).await, answer);

    let (status, _, moved) = target
        .send(target.req(Method::GET, "/mover/export?tenant=acme", None))
        .await;
    assert_eq!(status, 200);
    assert_eq!(moved, export);
    assert_eq!(target.list("acme").await, source.list("acme").await);
    // The import cleared the target's fences: it takes writes.
    target.create("acme", &json!("new home")).await;

    source
        .hook("release", json!({"tenant": "acme", "version": 12}))
        .await;
    let answer = source.hook("delete", json!({"tenant": "acme"})).await;
    assert_eq!(
        answer,
        json!({"tenant": "acme", "frozen": true, "moved": 12, "items": 0, "regions": {"us-east-1": 0}})
    );
    assert_eq!(source.hook("delete", json!({"tenant": "acme"})).await, answer);
    let (status, _, empty) = source
        .send(source.req(Method::GET, "/mover/export?tenant=acme", None))
        .await;
    assert_eq!(status, 200);
    assert_eq!(empty, json!({"tenant": "acme", "items": []}));
    let (status, headers, _) = source.send(source.req(Method::GET, "/items", Some("acme"))).await;
    assert_eq!(status, 421);
    assert_eq!(headers["tenant-moved"], "12");
    // Delete touched only acme.
    assert_eq!(source.list("globex").await.1["items"][0]["body"], "stays");
    source.stop().await;
    target.stop().await;
}

#[tokio::test]
async fn fence_hooks_are_idempotent_and_survive_a_restart() {
    let (dir, shard) = start().await;
    let first = shard.hook("freeze", json!({"tenant": "acme"})).await;
    assert_eq!(shard.hook("freeze", json!({"tenant": "acme"})).await, first);
    shard
        .hook("release", json!({"tenant": "acme", "version": 4}))
        .await;
    let released = shard
        .hook("release", json!({"tenant": "acme", "version": 4}))
        .await;
    assert_eq!(
        released,
        json!({"tenant": "acme", "frozen": true, "moved": 4, "items": 0, "regions": {"us-east-1": 0}})
    );
    // Unfreeze lifts only the freeze; the tenant stays moved.
    let unfrozen = shard.hook("unfreeze", json!({"tenant": "acme"})).await;
    assert_eq!(shard.hook("unfreeze", json!({"tenant": "acme"})).await, unfrozen);
    assert_eq!(
        unfrozen,
        json!({"tenant": "acme", "frozen": false, "moved": 4, "items": 0, "regions": {"us-east-1": 0}})
    );
    shard.stop().await;

    let again = start_in(dir.path(), "jira-us-east-1", "b1").await;
    let (status, headers, _) = again.send(again.req(Method::GET, "/", Some("acme"))).await;
    assert_eq!(status, 421);
    assert_eq!(headers["tenant-moved"], "4");
    // An empty import brings the tenant back without items.
    let back = again.hook("import", json!({"tenant": "acme", "items": []})).await;
    assert_eq!(
        back,
        json!({"tenant": "acme", "frozen": false, "moved": null, "items": 0, "regions": {"us-east-1": 0}})
    );
    assert_eq!(again.list("acme").await, (200, json!({"items": []})));
    again.stop().await;
}

#[tokio::test]
async fn bad_hook_requests_get_json_errors() {
    let (_dir, shard) = start().await;
    let post = |path: &str| shard.req(Method::POST, path, None);
    let cases = [
        (post("/mover/freeze").json(&json!({})), 422),
        (post("/mover/freeze").json(&json!({"tenant": "Not Valid"})), 422),
        (post("/mover/freeze").body("{"), 415),
        (
            post("/mover/freeze")
                .header("content-type", "application/json")
                .body("{"),
            400,
        ),
        (post("/mover/release").json(&json!({"tenant": "acme"})), 422),
        (
            post("/mover/import").json(&json!({"tenant": "acme", "items": [{"id": "a b", "body": 1}]})),
            400,
        ),
        (shard.req(Method::GET, "/mover/export", None), 400),
        (shard.req(Method::GET, "/mover/freeze", None), 405),
        (post("/mover/nothing"), 404),
    ];
    for (req, want) in cases {
        let (status, _, body) = shard.send(req).await;
        assert_eq!(status, want, "{body}");
        assert_eq!(body["status"], want, "{body}");
    }
    // Nothing was imported by the refused import.
    assert_eq!(shard.list("acme").await, (200, json!({"items": []})));
    shard.stop().await;
}

/// The tenant's item count in each data region of `shard`.
async fn regions(shard: &Running, tenant: &str) -> Value {
    let url = format!("/mover/regions?tenant={tenant}");
    let (status, _, counts) = shard.send(shard.req(Method::GET, &url, None)).await;
    assert_eq!(status, 200);
    counts
}

#[tokio::test]
async fn overlapping_shards_share_the_data_of_their_common_regions() {
    let dir = tempfile::tempdir().unwrap();
    let single = start_in(dir.path(), "jira-us-east-1", "b1").await;
    let multi = start_in(dir.path(), "jira-us-multi", "b1").await;
    for n in 0..3 {
        single.create("acme", &json!({ "n": n })).await;
    }
    // The multi-region shard already sees acme's data in us-east-1, its home region.
    assert_eq!(
        regions(&multi, "acme").await,
        json!({"us-east-1": 3, "us-west-2": 0})
    );
    assert_eq!(multi.list("acme").await, single.list("acme").await);

    // Copy adds one region: only us-west-2 is written.
    let (_, _, export) = single
        .send(single.req(Method::GET, "/mover/export?tenant=acme", None))
        .await;
    let mut import = export.clone();
    import["regions"] = json!(["us-west-2"]);
    let answer = multi.hook("import", import).await;
    assert_eq!(answer["regions"], json!({"us-east-1": 3, "us-west-2": 3}));

    // A multi-region shard writes every item to each of its regions.
    multi.create("acme", &json!("written at the multi shard")).await;
    assert_eq!(
        regions(&multi, "acme").await,
        json!({"us-east-1": 4, "us-west-2": 4})
    );
    assert_eq!(single.list("acme").await.1["items"].as_array().unwrap().len(), 4);

    // Clean removes one region and leaves the shared one alone.
    let answer = multi
        .hook("delete", json!({"tenant": "acme", "regions": ["us-west-2"]}))
        .await;
    assert_eq!(answer["regions"], json!({"us-east-1": 4, "us-west-2": 0}));
    assert_eq!(single.list("acme").await.1["items"].as_array().unwrap().len(), 4);

    // A region the shard does not keep data in is refused, and nothing changes.
    for hook in ["delete", "import"] {
        let body = json!({"tenant": "acme", "items": [], "regions": ["eu-west-1"]});
        let (status, _, err) = multi
            .send(
                multi
                    .req(Method::POST, &format!("/mover/{hook}"), None)
                    .json(&body),
            )
            .await;
        assert_eq!(status, 400, "{hook}: {err}");
        assert!(err["reason"].as_str().unwrap().contains("eu-west-1"), "{err}");
    }
    assert_eq!(
        regions(&multi, "acme").await,
        json!({"us-east-1": 4, "us-west-2": 0})
    );
    single.stop().await;
    multi.stop().await;
}

#[tokio::test]
async fn the_hooks_need_the_mover_token() {
    let dir = tempfile::tempdir().unwrap();
    let shard = start_in(dir.path(), "jira-us-east-1", "b1").await;
    let http = reqwest::Client::new();
    for token in [None, Some("wrong-token-of-16-chars")] {
        let mut req = http
            .post(format!("{}/mover/freeze", shard.base))
            .json(&json!({"tenant": "acme"}));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{token:?}");
    }
    // Not frozen: a write still lands (`create` asserts 201).
    shard
        .create("acme", &json!({"title": "after the refused freezes"}))
        .await;
}
