use reqwest::Method;
use serde_json::json;

use super::*;
use crate::demo::items::MAX_BODY as MAX_ITEM_BODY;

#[tokio::test]
async fn items_crud_for_one_tenant() {
    let (_dir, shard) = start().await;
    let body = json!({"title": "first", "n": [1, 2, 3]});
    let (status, headers, answer) = shard
        .send(shard.req(Method::POST, "/items", Some("acme")).json(&body))
        .await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(headers["x-served-by"], "jira-us-east-1/b1");
    let id = answer["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 16);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    assert_eq!(headers["location"], format!("/items/{id}").as_str());

    let path = format!("/items/{id}");
    let (status, headers, got) = shard.send(shard.req(Method::GET, &path, Some("acme"))).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-served-by"], "jira-us-east-1/b1");
    assert_eq!(got, json!({"id": id, "tenant": "acme", "body": body}));

    let replaced = json!({"title": "second"});
    let (status, _, put) = shard
        .send(shard.req(Method::PUT, &path, Some("acme")).json(&replaced))
        .await;
    assert_eq!(status, 200);
    assert_eq!(put, json!({"id": id, "tenant": "acme", "body": replaced}));
    let (status, list) = shard.list("acme").await;
    assert_eq!(status, 200);
    assert_eq!(
        list,
        json!({"items": [{"id": id, "tenant": "acme", "body": replaced}]})
    );

    let (status, _, _) = shard.send(shard.req(Method::DELETE, &path, Some("acme"))).await;
    assert_eq!(status, 204);
    let (status, _, missing) = shard.send(shard.req(Method::GET, &path, Some("acme"))).await;
    assert_eq!(status, 404);
    assert_eq!(missing["status"], 404);
    // Deleting again is not an error: a replayed DELETE must not fail.
    let (status, _, _) = shard.send(shard.req(Method::DELETE, &path, Some("acme"))).await;
    assert_eq!(status, 204);
    assert_eq!(shard.list("acme").await, (200, json!({"items": []})));
    shard.stop().await;
}

#[tokio::test]
async fn put_creates_an_item_under_the_given_id_and_list_keeps_creation_order() {
    let (_dir, shard) = start().await;
    let first = shard.create("acme", &json!(1)).await;
    let (status, _, _) = shard
        .send(
            shard
                .req(Method::PUT, "/items/my-item_2", Some("acme"))
                .json(&json!("two")),
        )
        .await;
    assert_eq!(status, 200);
    let third = shard.create("acme", &json!(null)).await;
    let (_, list) = shard.list("acme").await;
    let ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [first.as_str(), "my-item_2", third.as_str()]);
    shard.stop().await;
}

#[tokio::test]
async fn tenants_are_isolated() {
    let (_dir, shard) = start().await;
    let id = shard.create("acme", &json!({"secret": "acme's"})).await;
    let path = format!("/items/{id}");
    let (status, _, _) = shard.send(shard.req(Method::GET, &path, Some("globex"))).await;
    assert_eq!(status, 404);
    assert_eq!(shard.list("globex").await, (200, json!({"items": []})));
    // A PUT by another tenant creates its own item; acme's stays as it was.
    let (status, _, _) = shard
        .send(
            shard
                .req(Method::PUT, &path, Some("globex"))
                .json(&json!("globex's")),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _, _) = shard
        .send(shard.req(Method::DELETE, &path, Some("initech")))
        .await;
    assert_eq!(status, 204);
    let (_, _, acme) = shard.send(shard.req(Method::GET, &path, Some("acme"))).await;
    assert_eq!(acme["body"], json!({"secret": "acme's"}));
    let (_, _, globex) = shard.send(shard.req(Method::GET, &path, Some("globex"))).await;
    assert_eq!(globex, json!({"id": id, "tenant": "globex", "body": "globex's"}));
    shard.stop().await;
}

#[tokio::test]
async fn bad_requests_get_json_errors() {
    let (_dir, shard) = start().await;
    let cases = [
        (shard.req(Method::GET, "/items", None), 400),
        (shard.req(Method::POST, "/items", None).json(&json!({})), 400),
        (shard.req(Method::GET, "/items/x", Some("Not A Tenant")), 400),
        (
            shard.req(Method::POST, "/items", Some("acme")).body("{not json"),
            400,
        ),
        (shard.req(Method::POST, "/items", Some("acme")), 400),
        (
            shard
                .req(Method::PUT, "/items/has.dot", Some("acme"))
                .json(&json!(1)),
            400,
        ),
        (shard.req(Method::PATCH, "/items", Some("acme")), 405),
        (shard.req(Method::POST, "/items/x", Some("acme")), 405),
        (
            shard
                .req(Method::POST, "/items", Some("acme"))
                .body(vec![b' '; MAX_ITEM_BODY + 1]),
            413,
        ),
    ];
    for (req, want) in cases {
        let (status, headers, body) = shard.send(req).await;
        assert_eq!(status, want, "{body}");
        assert_eq!(body["status"], want, "{body}");
        assert!(body["reason"].is_string(), "{body}");
        assert_eq!(headers["x-served-by"], "jira-us-east-1/b1");
    }
    // A body of exactly the limit is accepted.
    let mut big = vec![b' '; MAX_ITEM_BODY - 2];
    big.splice(0..0, *b"\"");
    big.push(b'"');
    let (status, _, _) = shard
        .send(shard.req(Method::POST, "/items", Some("acme")).body(big))
        .await;
    assert_eq!(status, 201);
    assert_eq!(shard.list("acme").await.1["items"].as_array().unwrap().len(), 1);
    shard.stop().await;
}

#[tokio::test]
async fn two_backends_of_a_shard_share_its_items() {
    let dir = tempfile::tempdir().unwrap();
    let b1 = start_in(dir.path(), "jira-us-east-1", "b1").await;
    let b2 = start_in(dir.path(), "jira-us-east-1", "b2").await;
    let id = b1.create("acme", &json!({"from": "b1"})).await;
    let path = format!("/items/{id}");
    let (status, headers, got) = b2.send(b2.req(Method::GET, &path, Some("acme"))).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-served-by"], "jira-us-east-1/b2");
    assert_eq!(got["body"], json!({"from": "b1"}));
    let (status, _, _) = b2.send(b2.req(Method::DELETE, &path, Some("acme"))).await;
    assert_eq!(status, 204);
    let (status, _, _) = b1.send(b1.req(Method::GET, &path, Some("acme"))).await;
    assert_eq!(status, 404);
    // Another shard in the same directory has its own file.
    let other = start_in(dir.path(), "jira-us-west-2", "b1").await;
    b1.create("acme", &json!("east")).await;
    assert_eq!(other.list("acme").await, (200, json!({"items": []})));
    assert!(dir.path().join("shard-jira-us-east-1.db").exists());
    assert!(dir.path().join("shard-jira-us-west-2.db").exists());
    for s in [b1, b2, other] {
        s.stop().await;
    }
}

#[tokio::test]
async fn items_survive_a_restart() {
    let (dir, shard) = start().await;
    let id = shard.create("acme", &json!({"keep": true})).await;
    shard.stop().await;
    let again = start_in(dir.path(), "jira-us-east-1", "b1").await;
    let (status, _, got) = again
        .send(again.req(Method::GET, &format!("/items/{id}"), Some("acme")))
        .await;
    assert_eq!(status, 200);
    assert_eq!(got, json!({"id": id, "tenant": "acme", "body": {"keep": true}}));
    again.stop().await;
}

#[tokio::test]
async fn paths_outside_items_keep_echoing() {
    let (_dir, shard) = start().await;
    for path in ["/", "/items/a/b", "/itemsx"] {
        let (status, _, body) = shard.send(shard.req(Method::GET, path, Some("acme"))).await;
        assert_eq!(status, 200);
        assert_eq!(body["path"], path);
        assert_eq!(body["tenant"], "acme");
    }
    shard.stop().await;
}
