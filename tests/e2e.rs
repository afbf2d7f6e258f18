//! End to end: catalogue -> TCS -> edge -> demo shards, every role a real process on loopback.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn shard_of(body: &Value) -> &str {
    body["shard"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_every_demo_tenant_and_product() {
    let stack = Stack::start().await;
    let cases = [
        ("acme.example.test", "/", "jira-us-east-1", "acme"),
        ("acme.example.test", "/wiki", "confluence-us-east-1", "acme"),
        ("ACME.example.test.:8080", "/browse/X-1", "jira-us-east-1", "acme"),
        ("acme.example.test", "/wikipedia", "jira-us-east-1", "acme"),
        ("globex.example.test", "/", "jira-eu-west-1", "globex"),
        (
            "globex.example.test",
            "/wiki/spaces/x",
            "confluence-eu-west-1",
            "globex",
        ),
        ("initech.example.test", "/projects", "jira-us-east-1", "initech"),
    ];
    for (host, path, shard, tenant) in cases {
        let (status, body) = stack.get_json(host, path).await;
        assert_eq!(status, 200, "{host}{path}: {body}");
        assert_eq!(shard_of(&body), shard, "{host}{path}: {body}");
        assert_eq!(body["tenant"], tenant, "{host}{path}: {body}");
        let headers = &body["headers"];
        assert_eq!(headers["x-tenant-shard"], shard);
        assert_eq!(headers["x-tenant-context-version"], "1");
        assert!(
            headers["x-request-id"].as_str().is_some_and(|s| s.len() == 24),
            "{body}"
        );
        assert_eq!(
            headers["x-forwarded-host"],
            host.to_ascii_lowercase()
                .trim_end_matches(":8080")
                .trim_end_matches('.')
        );
    }
    // Dot segments are resolved before matching, and the backend sees the normalised path.
    let (status, body) = stack.get_json("acme.example.test", "/x/../wiki/./page?q=1").await;
    assert_eq!(status, 200);
    assert_eq!(shard_of(&body), "confluence-us-east-1");
    assert_eq!(body["path"], "/wiki/page?q=1");
    // TLS with HTTP/2 through ALPN.
    let said = curl_h2(
        stack.edge_https,
        "/wiki",
        &["-o", "/dev/null", "-w", "%{http_version} %{http_code}"],
    )
    .await;
    assert_eq!(said, "2 200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tenant_headers_never_reach_a_shard() {
    let stack = Stack::start().await;
    let r = stack
        .http
        .get(format!("http://127.0.0.1:{}/", stack.edge_http))
        .header("host", "acme.example.test")
        .header("x-tenant-id", "globex")
        .header("x-tenant-shard", "jira-eu-west-1")
        .header("X-Tenant-Admin", "yes")
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["tenant"], "acme");
    assert_eq!(body["headers"]["x-tenant-shard"], "jira-us-east-1");
    assert!(body["headers"].get("x-tenant-admin").is_none(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors() {
    let stack = Stack::start().await;
    let port = stack.edge_http;
    assert_eq!(raw_status(port, "GET / HTTP/1.1\r\n\r\n"), 400, "missing Host");
    assert_eq!(
        raw_status(
            port,
            "GET / HTTP/1.1\r\nHost: acme.example.test\r\nHost: globex.example.test\r\n\r\n"
        ),
        400,
        "duplicated Host"
    );
    assert_eq!(
        raw_status(port, "GET / HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n"),
        400,
        "IP literal"
    );
    assert_eq!(
        raw_status(port, "GET / HTTP/1.1\r\nHost: bad_host..test\r\n\r\n"),
        400,
        "malformed"
    );
    assert_eq!(
        raw_status(
            port,
            "GET http://globex.example.test/ HTTP/1.1\r\nHost: acme.example.test\r\n\r\n"
        ),
        400,
        "absolute URI disagrees with Host"
    );
    let (status, body) = stack.get_json("nobody.example.test", "/").await;
    assert_eq!(status, 404);
    assert_eq!(body["reason"], "unknown host");
    assert_eq!(body["status"], 404);
    assert!(body["request_id"].as_str().is_some_and(|s| !s.is_empty()));
    let (status, body) = stack.get_json("initech.example.test", "/wiki").await;
    assert_eq!(status, 404, "initech has no confluence: {body}");
    assert_eq!(body["reason"], "product not provisioned for this tenant");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalogue_update_reaches_the_edge_without_restart() {
    let stack = Stack::start().await;
    let (_, body) = stack.get_json("acme.example.test", "/").await;
    assert_eq!(shard_of(&body), "jira-us-east-1");
    // A tenant created after the edge started, whose host the edge has already been asked for
    // (and cached as unknown), becomes routable through the stream.
    assert_eq!(stack.get("hooli.example.test", "/").await.status(), 404);

    let started = Instant::now();
    let doc = json!({"id": "acme", "hosts": ["acme.example.test"], "realm": "us",
        "placements": {"jira": {"shard": "jira-us-west-2"}, "confluence": {"shard": "confluence-us-east-1"}}});
    assert_eq!(stack.put_tenant(&doc).await.0, 200);
    let hooli = json!({"id": "hooli", "hosts": ["hooli.example.test"], "realm": "us",
        "placements": {"jira": {"shard": "jira-us-east-1"}}});
    assert_eq!(stack.put_tenant(&hooli).await.0, 201);
    eventually(Duration::from_secs(10), || async {
        let (_, body) = stack.get_json("acme.example.test", "/").await;
        (shard_of(&body) == "jira-us-west-2").then_some(())
    })
    .await;
    println!("catalogue write -> edge routing change: {:?}", started.elapsed());
    let (_, body) = stack.get_json("acme.example.test", "/").await;
    assert_eq!(body["headers"]["x-tenant-context-version"], "2");
    eventually(Duration::from_secs(10), || async {
        (stack.get("hooli.example.test", "/").await.status() == 200).then_some(())
    })
    .await;
    // A delete reaches the edge too.
    let r = stack
        .http
        .delete(format!("{}/v1/tenants/hooli", stack.catalogue_url))
        .bearer_auth(stack.operator_token())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    eventually(Duration::from_secs(10), || async {
        (stack.get("hooli.example.test", "/").await.status() == 404).then_some(())
    })
    .await;
    let admin: Value = stack.admin_json("/admin/tenants/acme.example.test").await;
    assert_eq!(admin["version"], 2);
    assert_eq!(admin["context"]["placements"]["jira"]["shard"], "jira-us-west-2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_file_hot_reload_keeps_old_snapshot_on_error() {
    let stack = Stack::start().await;
    assert_eq!(stack.admin_json("/admin/routes").await["version"], "test-1");
    stack.write_routes("test-2", &stack.backends);
    eventually(Duration::from_secs(10), || async {
        (stack.admin_json("/admin/routes").await["version"] == "test-2").then_some(())
    })
    .await;

    std::fs::write(
        &stack.routes,
        "version = \"broken\"\n[[products]]\nname = \"jira\"\nprefixes = [\"nope\"]\n",
    )
    .unwrap();
    eventually(Duration::from_secs(10), || async {
        let text = stack.metrics().await;
        text.contains("tenant_edge_route_reloads_total{result=\"failed\"} 1")
            .then_some(())
    })
    .await;
    assert_eq!(stack.admin_json("/admin/routes").await["version"], "test-2");
    let (status, body) = stack.get_json("acme.example.test", "/").await;
    assert_eq!((status, shard_of(&body)), (200, "jira-us-east-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_failure_fails_over_then_503() {
    let mut stack = Stack::start().await;
    stack.shard_proc("jira-us-east-1", 1).kill();
    for _ in 0..20 {
        let (status, body) = stack.get_json("acme.example.test", "/").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["backend"], "b2");
    }
    stack.shard_proc("jira-us-east-1", 2).kill();
    let r = stack.get("acme.example.test", "/").await;
    assert!(matches!(r.status().as_u16(), 502 | 503), "{}", r.status());
    // Once the health checks have noticed, the answer is a clean 503 with Retry-After.
    eventually(Duration::from_secs(10), || async {
        let r = stack.get("acme.example.test", "/").await;
        (r.status() == 503 && r.headers().contains_key("retry-after")).then_some(())
    })
    .await;
    // Other shards are unaffected.
    let (status, body) = stack.get_json("acme.example.test", "/wiki").await;
    assert_eq!((status, shard_of(&body)), (200, "confluence-us-east-1"));
    // The backend comes back, the health checks notice.
    stack.shard_proc("jira-us-east-1", 2).restart().unwrap();
    eventually(Duration::from_secs(10), || async {
        (stack.get("acme.example.test", "/").await.status() == 200).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcs_outage_serves_known_tenants_and_503s_unknown_hosts() {
    let mut stack = Stack::start().await;
    assert_eq!(stack.get("acme.example.test", "/").await.status(), 200);
    for tcs in &mut stack.tcs {
        tcs.kill();
    }
    for _ in 0..50 {
        assert_eq!(stack.get("acme.example.test", "/").await.status(), 200);
    }
    let r = stack.get("never-seen.example.test", "/").await;
    assert_eq!(r.status(), 503, "an outage must not look like a deletion");
    assert!(r.headers().contains_key("retry-after"));
    let r = stack.http.get(stack.admin("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200, "an edge that knows tenants stays ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcs_restart_resumes_from_its_snapshot_file() {
    let mut stack = Stack::start().await;
    let token = format!("Bearer {EDGE_TOKEN}");
    let client = stack.http.clone();
    let lookup = |url: String| {
        let http = client.clone();
        let token = token.clone();
        async move {
            match http.get(url).header("authorization", token).send().await {
                Ok(r) => (
                    r.status().as_u16(),
                    r.json::<Value>().await.unwrap_or(Value::Null),
                ),
                Err(_) => (0, Value::Null),
            }
        }
    };
    let url = format!("{}/v1/views/ingress/hosts/globex.example.test", stack.tcs_urls[0]);
    assert_eq!(lookup(url.clone()).await.0, 200);
    // Stop TCS cleanly (it writes its snapshot), then take the catalogue away: a TCS that
    // resumes from its file still answers, one that had to replay the log could not.
    assert!(stack.tcs[0].terminate(), "TCS stops cleanly on SIGTERM");
    stack.catalogue_mut().kill();
    stack.tcs[0].restart().unwrap();
    let (status, body) = eventually(Duration::from_secs(10), || async {
        let (s, b) = lookup(url.clone()).await;
        (s != 0).then_some((s, b))
    })
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["record"]["id"], "globex");
    assert!(body["seq"].as_u64().unwrap() > 0);
    // And once the catalogue is back it catches up with writes made meanwhile.
    stack.catalogue_mut().restart().unwrap();
    let doc = json!({"id": "globex", "hosts": ["globex.example.test", "globex2.example.test"], "realm": "eu",
        "placements": {"jira": {"shard": "jira-eu-west-1"}}});
    assert_eq!(stack.put_tenant(&doc).await.0, 200);
    let url2 = format!(
        "{}/v1/views/ingress/hosts/globex2.example.test",
        stack.tcs_urls[0]
    );
    eventually(Duration::from_secs(30), || async {
        (lookup(url2.clone()).await.0 == 200).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcs_checks_consumer_tokens() {
    let stack = Stack::start().await;
    let url = format!("{}/v1/views/ingress/hosts/acme.example.test", stack.tcs_urls[0]);
    let status = |token: Option<&str>| {
        let mut req = stack.http.get(url.clone());
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(None).await, 401);
    assert_eq!(status(Some("wrong")).await, 401);
    assert_eq!(status(Some("billing-token")).await, 403);
    assert_eq!(status(Some(EDGE_TOKEN)).await, 200);
}
