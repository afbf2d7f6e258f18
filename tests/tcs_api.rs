//! The TCS HTTP API over real loopback sockets. The view is filled through the real applier
//! (`IngressView::apply`) with catalogue changes, exactly as the tailer does.

#![expect(clippy::unwrap_used, reason = "test helpers fail loudly")]
#![expect(clippy::panic, reason = "test helpers fail loudly")]

#[path = "support/tcs.rs"]
mod tcs_support;

use reqwest::StatusCode;
use tcs_support::{config, del, put, seq_prev, Ndjson, Server, AUDIT_TOKEN, EDGE_TOKEN};
use tenant_edge::feed::{
    ApiError, Change, ChangeBody, HostBatchAnswer, HostLookup, MigrationDoc, Phase, PlacementLookup,
    ViewEvent, ViewSnapshot,
};
use tenant_edge::tcs::view::Applied;
use tenant_edge::tcs::Tcs;

fn seeded() -> Tcs {
    let tcs = Tcs::new(config("127.0.0.1:1")).unwrap();
    let view = tcs.ingress();
    view.apply(&put(1, "acme", 1, &["acme.example.test"]));
    view.apply(&put(2, "globex", 1, &["globex.example.test"]));
    view.apply(&put(3, "initech", 1, &["initech.example.test"]));
    tcs
}

#[tokio::test]
async fn lookup_answers_200_404_400() {
    let srv = Server::start(seeded()).await;
    let resp = srv
        .get("/v1/views/ingress/hosts/ACME.example.test.", EDGE_TOKEN)
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let found: HostLookup = resp.json().await.unwrap();
    assert_eq!((found.seq, found.record.id.as_str()), (3, "acme"));

    let resp = srv
        .get("/v1/views/ingress/hosts/nobody.example.test", EDGE_TOKEN)
        .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(resp.json::<ApiError>().await.unwrap().status, 404);

    for bad in ["10.0.0.1", "bad!host.example.test", "-x.example.test"] {
        let resp = srv
            .get(&format!("/v1/views/ingress/hosts/{bad}"), EDGE_TOKEN)
            .await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(resp.json::<ApiError>().await.unwrap().status, 400);
    }
    srv.stop().await;
}

#[tokio::test]
async fn batch_lookup_answers_each_host_in_order() {
    let srv = Server::start(seeded()).await;
    let post = |body: serde_json::Value, token: &'static str| {
        srv.client
            .post(srv.url("/v1/views/ingress/hosts"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let hosts = [
        "globex.example.test",
        "nobody.example.test",
        "ACME.example.test.",
        "bad!host",
        "acme.example.test",
    ];
    let resp = post(serde_json::json!({ "hosts": hosts }), EDGE_TOKEN)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let answer: HostBatchAnswer = resp.json().await.unwrap();
    let ids: Vec<Option<&str>> = answer
        .results
        .iter()
        .map(|r| r.as_ref().map(|f| f.record.id.as_str()))
        .collect();
    assert_eq!(ids, [Some("globex"), None, Some("acme"), None, Some("acme")]);
    assert!(answer.results.iter().flatten().all(|f| f.seq == 3));

    let empty = post(serde_json::json!({ "hosts": [] }), EDGE_TOKEN)
        .await
        .unwrap();
    assert_eq!(empty.json::<HostBatchAnswer>().await.unwrap().results.len(), 0);

    let too_many = vec!["acme.example.test"; tenant_edge::feed::MAX_HOST_BATCH + 1];
    for bad in [
        serde_json::json!({ "hosts": too_many }),
        serde_json::json!({ "hosts": "acme.example.test" }),
        serde_json::json!({ "hosts": [], "extra": 1 }),
    ] {
        let resp = post(bad, EDGE_TOKEN).await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(resp.json::<ApiError>().await.unwrap().status, 400);
    }
    let unauthorised = srv
        .client
        .post(srv.url("/v1/views/ingress/hosts"))
        .json(&serde_json::json!({ "hosts": hosts }))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorised.status(), StatusCode::UNAUTHORIZED);
    srv.stop().await;
}

#[tokio::test]
async fn auth_is_checked_before_anything_else() {
    let srv = Server::start(seeded()).await;
    let path = "/v1/views/ingress/hosts/acme.example.test";
    let missing = srv.client.get(srv.url(path)).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(missing.headers()["www-authenticate"], "Bearer");
    for wrong in ["dev-edge-tokem", "dev-edge-token-and-more", ""] {
        let resp = srv.get(path, wrong).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{wrong:?}");
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    }
    let basic = srv
        .client
        .get(srv.url(path))
        .basic_auth("edge", Some(EDGE_TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);
    // Unknown views are not revealed before authentication.
    assert_eq!(
        srv.get("/v1/views/billing/snapshot", "nope").await.status(),
        StatusCode::UNAUTHORIZED
    );

    let forbidden = srv.get(path, AUDIT_TOKEN).await;
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
    assert_eq!(forbidden.json::<ApiError>().await.unwrap().status, 403);
    assert_eq!(
        srv.get("/v1/views/ingress/changes", AUDIT_TOKEN).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        srv.get("/v1/views/billing/snapshot", EDGE_TOKEN).await.status(),
        StatusCode::NOT_FOUND
    );
    srv.stop().await;
}

/// acme at version 2 with jira frozen on jira-us-east-1 (seq 4), then a migration change
/// (seq 5) that only advances the view.
fn with_placements() -> Tcs {
    let tcs = seeded();
    let view = tcs.ingress();
    let mut acme = put(4, "acme", 2, &["acme.example.test"]);
    if let ChangeBody::Tenant { doc: Some(doc), .. } = &mut acme.body {
        doc.placements =
            serde_json::from_str(r#"{"jira": {"shard": "jira-us-east-1", "state": "frozen"}}"#).unwrap();
    }
    assert_eq!(view.apply(&acme), Applied::Upserted);
    let migration: MigrationDoc = serde_json::from_value(serde_json::json!({
        "id": "m-1", "tenant": "acme", "product": "jira", "from": "jira-us-east-1",
        "to": "jira-us-west-2", "phase": "frozen", "version": 2, "regions_to_add": ["us-west-2"],
        "regions_to_remove": ["us-east-1"], "created_ms": 1, "updated_ms": 2}))
    .unwrap();
    assert_eq!(migration.phase, Phase::Frozen);
    let change = Change {
        seq: 5,
        body: ChangeBody::Migration {
            id: migration.id.clone(),
            doc: migration,
        },
    };
    assert_eq!(view.apply(&change), Applied::Advanced);
    tcs
}

#[tokio::test]
async fn placement_by_tenant_answers_200_404_400() {
    let srv = Server::start(with_placements()).await;
    let resp = srv
        .get("/v1/views/ingress/tenants/acme/placements/jira", EDGE_TOKEN)
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({"tenant": "acme", "product": "jira", "shard": "jira-us-east-1",
                           "state": "frozen", "version": 2, "seq": 5})
    );
    let _: PlacementLookup = serde_json::from_value(body).unwrap();

    for missing in [
        "tenants/nobody/placements/jira",
        "tenants/acme/placements/confluence",
    ] {
        let resp = srv.get(&format!("/v1/views/ingress/{missing}"), EDGE_TOKEN).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{missing}");
        assert_eq!(resp.json::<ApiError>().await.unwrap().status, 404);
    }
    // globex exists but has no placement at all.
    let resp = srv
        .get("/v1/views/ingress/tenants/globex/placements/jira", EDGE_TOKEN)
        .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    for bad in ["tenants/Acme!/placements/jira", "tenants/acme/placements/JIRA"] {
        let resp = srv.get(&format!("/v1/views/ingress/{bad}"), EDGE_TOKEN).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    srv.stop().await;
}

#[tokio::test]
async fn placement_by_tenant_needs_a_consumer_of_the_view() {
    let srv = Server::start(with_placements()).await;
    let path = "/v1/views/ingress/tenants/acme/placements/jira";
    let anonymous = srv.client.get(srv.url(path)).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        srv.get(path, "not-a-token").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let forbidden = srv.get(path, AUDIT_TOKEN).await;
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
    assert_eq!(forbidden.json::<ApiError>().await.unwrap().status, 403);
    assert_eq!(
        srv.get("/v1/views/billing/tenants/acme/placements/jira", EDGE_TOKEN)
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    srv.stop().await;
}

#[tokio::test]
async fn snapshot_returns_the_whole_view() {
    let tcs = seeded();
    let expected = tcs.ingress().snapshot().to_owned_snapshot();
    let srv = Server::start(tcs).await;
    let resp = srv.get("/v1/views/ingress/snapshot", EDGE_TOKEN).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let snap: ViewSnapshot = resp.json().await.unwrap();
    assert_eq!(snap, expected);
    assert_eq!((snap.seq, snap.records.len()), (3, 3));
    srv.stop().await;
}

#[tokio::test]
async fn change_stream_sends_backlog_then_live_events() {
    let tcs = seeded();
    let view = tcs.ingress();
    let srv = Server::start(tcs).await;
    let resp = srv.get("/v1/views/ingress/changes?after=1", EDGE_TOKEN).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let mut lines = Ndjson::new(resp);
    let mut seen = vec![lines.next_change().await, lines.next_change().await];
    // The subscription exists once the headers arrived: this event must follow, gap-free.
    view.apply(&del(4, "acme", 2));
    seen.push(lines.next_change().await);
    view.apply(&put(5, "acme", 1, &["acme.example.test"]));
    seen.push(lines.next_change().await);
    let chain: Vec<(u64, u64)> = seen.iter().map(seq_prev).collect();
    assert_eq!(chain, vec![(2, 1), (3, 2), (4, 3), (5, 4)]);
    assert!(matches!(&seen[2], ViewEvent::Delete { id, .. } if id.as_str() == "acme"));
    srv.stop().await;
}

#[tokio::test]
async fn idle_change_stream_sends_heartbeats() {
    let srv = Server::start(seeded()).await;
    let resp = srv.get("/v1/views/ingress/changes?after=3", EDGE_TOKEN).await;
    let mut lines = Ndjson::new(resp);
    let beat = lines.next_event().await.unwrap();
    assert_eq!(
        beat,
        ViewEvent::Heartbeat {
            seq: 3,
            last_event: 3
        }
    );
    srv.stop().await;
}

#[tokio::test]
async fn change_stream_asks_for_resync_when_events_are_gone() {
    // A TCS restored from a snapshot does not know the events before it.
    let snap = seeded().ingress().snapshot().to_owned_snapshot();
    let restored = Tcs::new(config("127.0.0.1:1")).unwrap();
    restored.ingress().restore(snap);
    let srv = Server::start(restored).await;
    let resp = srv.get("/v1/views/ingress/changes?after=1", EDGE_TOKEN).await;
    let mut lines = Ndjson::new(resp);
    assert_eq!(lines.next_event().await, Some(ViewEvent::Resync { seq: 3 }));
    assert_eq!(lines.next_event().await, None);
    let bad = srv.get("/v1/views/ingress/changes?after=soon", EDGE_TOKEN).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    srv.stop().await;
}

// Single-threaded runtime: the server's stream task cannot run while the test applies, so the
// subscriber is guaranteed to overflow its channel.
#[tokio::test(flavor = "current_thread")]
async fn lagging_subscriber_gets_resync_and_is_closed() {
    let tcs = Tcs::with_capacities(config("127.0.0.1:1"), 1000, 2).unwrap();
    let view = tcs.ingress();
    let srv = Server::start(tcs).await;
    let resp = srv.get("/v1/views/ingress/changes?after=0", EDGE_TOKEN).await;
    for seq in 1..=10 {
        view.apply(&put(seq, "acme", seq, &["acme.example.test"]));
    }
    let mut lines = Ndjson::new(resp);
    // The (empty) backlog's closing heartbeat, then the resync.
    let start = ViewEvent::Heartbeat {
        seq: 0,
        last_event: 0,
    };
    assert_eq!(lines.next_event().await, Some(start));
    assert_eq!(lines.next_event().await, Some(ViewEvent::Resync { seq: 10 }));
    assert_eq!(lines.next_event().await, None);
    srv.stop().await;
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let tcs = seeded();
    let srv = Server::start(tcs.clone()).await;
    assert_eq!(srv.get("/healthz", "").await.status(), StatusCode::OK);
    // No catalogue poll has succeeded: not ready.
    let resp = srv.get("/readyz", "").await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp
        .json::<ApiError>()
        .await
        .unwrap()
        .reason
        .contains("no successful"));
    tcs.status().record_ok(3 + 100);
    assert_eq!(srv.get("/readyz", "").await.status(), StatusCode::OK);
    tcs.status().record_ok(3 + 101);
    assert_eq!(
        srv.get("/readyz", "").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );

    srv.get("/v1/views/ingress/hosts/acme.example.test", EDGE_TOKEN)
        .await;
    srv.get("/v1/views/ingress/hosts/nobody.example.test", EDGE_TOKEN)
        .await;
    let text = srv.get("/metrics", "").await.text().await.unwrap();
    for line in [
        r#"tcs_lookups_total{result="hit",view="ingress",region="us-east-1"} 1"#,
        r#"tcs_lookups_total{result="miss",view="ingress",region="us-east-1"} 1"#,
        r#"tcs_applied_seq{view="ingress",region="us-east-1"} 3"#,
        r#"tcs_catalogue_head{region="us-east-1"} 104"#,
        r#"tcs_lag{view="ingress",region="us-east-1"} 101"#,
        r#"tcs_faults_active{region="us-east-1"} 0"#,
        r#"tcs_fault_errors_total{region="us-east-1"} 0"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    srv.stop().await;
}

/// `tcs::bind` then serve, end to end against a real catalogue whose first poll fails: the
/// tailer recovers from the error, applies the log, the API answers, shutdown writes the
/// snapshot, and a restart resumes from it instead of replaying the log.
#[tokio::test]
async fn serve_tails_the_catalogue_and_resumes_from_its_snapshot() {
    use tenant_edge::tcs;
    use tokio_util::sync::CancellationToken;
    let mut catalogue = tcs_support::TappedCatalogue::start().await;
    catalogue.put_realm_us().await; // seq 1
    catalogue.put_tenant("acme").await; // seq 2
    catalogue.put_tenant("globex").await; // seq 3
    catalogue.delete_tenant("globex").await; // seq 4
    catalogue.fail_next_poll();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&catalogue.addr.to_string());
    cfg.snapshot = dir.path().join("tcs-us-east-1.json");

    let bound = tcs::bind(cfg.clone()).await.unwrap();
    let addr = bound.addr();
    assert_ne!(addr.port(), 0, "the bound port is reported");
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(bound.serve(shutdown.clone()));
    assert_eq!(catalogue.polls.next().await, 0); // answered 503
    catalogue.polls.wait_for_poll_after(4).await;

    let client = reqwest::Client::new();
    let get = |path: &str| {
        client
            .get(format!("http://{addr}{path}"))
            .bearer_auth(EDGE_TOKEN)
            .send()
    };
    let found: HostLookup = get("/v1/views/ingress/hosts/acme.example.test")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!((found.seq, found.record.version), (4, 1));
    let gone = get("/v1/views/ingress/hosts/globex.example.test").await.unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    assert_eq!(get("/readyz").await.unwrap().status(), StatusCode::OK);
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(r#"tcs_tail_errors_total{region="us-east-1"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"tcs_events_total{type="delete",view="ingress",region="us-east-1"} 1"#),
        "{metrics}"
    );

    shutdown.cancel();
    running.await.unwrap().unwrap();
    let snap: ViewSnapshot = serde_json::from_slice(&std::fs::read(&cfg.snapshot).unwrap()).unwrap();
    assert_eq!((snap.seq, snap.records.len()), (4, 1));

    let shutdown = CancellationToken::new();
    let running = tokio::spawn(tcs::bind(cfg).await.unwrap().serve(shutdown.clone()));
    assert_eq!(catalogue.polls.next().await, 4);
    shutdown.cancel();
    running.await.unwrap().unwrap();
}
