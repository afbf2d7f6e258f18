//! The catalogue on PostgreSQL, over real HTTP, against a real server this test binary starts:
//! two catalogue processes serving one database, the database lost and back while the
//! catalogue runs, and an unreachable database at start.

#![expect(clippy::unwrap_used, reason = "test helpers fail the test by unwrapping")]

#[path = "support/catalogue.rs"]
#[expect(dead_code, reason = "shared with catalogue_api.rs, which uses the rest")]
mod catalogue_support;

use std::time::{Duration, Instant};

use catalogue_support::{acme, seed_registry, seqs, Catalogue, BIN};
use serde_json::json;
use tenant_edge::catalogue::StoreConfig;
use tenant_edge::stack::postgres::PgServer;

fn postgres(url: &str) -> StoreConfig {
    StoreConfig::Postgres(url.to_owned())
}

/// A write through one catalogue wakes a long-poll parked on the other: the commit's
/// notification reaches every instance. Both see one log, with one epoch.
#[tokio::test]
async fn two_catalogues_serve_one_database() {
    let url = PgServer::shared().unwrap().fresh_database().unwrap();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Catalogue::start_on(da.path(), postgres(&url)).await;
    let b = Catalogue::start_on(db.path(), postgres(&url)).await;
    seed_registry(&a).await; // seqs 1..=5
    assert_eq!(b.get("/v1/shards").await.expect(200).as_array().unwrap().len(), 3);

    let mut wakes = Vec::new();
    for round in 0..20u64 {
        let head = 5 + round;
        let poll = {
            let (http, base, token) = (
                b.http.clone(),
                b.base.clone(),
                b.stack.operator_token().to_owned(),
            );
            tokio::spawn(async move {
                let page: serde_json::Value = http
                    .get(format!("{base}/v1/changes?after={head}&wait_ms=20000"))
                    .bearer_auth(token)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                (page, Instant::now())
            })
        };
        b.wait_for_parked_polls(1).await;
        let mut doc = acme();
        doc["hosts"] = json!([format!("acme-{round}.example.test")]);
        a.put("/v1/tenants/acme", &doc)
            .await
            .expect(if round == 0 { 201 } else { 200 });
        let written = Instant::now();
        let (page, woke) = tokio::time::timeout(Duration::from_secs(10), poll)
            .await
            .map_err(|_| "the other instance's long-poll never woke")
            .unwrap()
            .unwrap();
        assert_eq!(page["changes"][0]["seq"], head + 1, "{page}");
        assert_eq!(page["changes"][0]["version"], round + 1, "{page}");
        wakes.push(woke.saturating_duration_since(written));
    }
    wakes.sort();
    eprintln!(
        "write on one catalogue -> long-poll woken on the other: p50 {:?}, max {:?} ({} writes)",
        wakes[wakes.len() / 2],
        wakes[wakes.len() - 1],
        wakes.len()
    );
    let (pa, pb) = (
        a.get("/v1/changes?after=0").await.expect(200),
        b.get("/v1/changes?after=0").await.expect(200),
    );
    assert_eq!(pa, pb, "one log");
    assert_eq!(pa["head"], 25);
}

/// The database stopped under a running catalogue: every call is 503 with `Retry-After` and no
/// driver message; once it is back, the catalogue serves again without a restart, and the
/// write refused while it was down left nothing behind.
#[tokio::test]
async fn a_lost_database_is_503_and_the_catalogue_recovers_by_itself() {
    let pg_dir = tempfile::tempdir().unwrap();
    let mut pg = PgServer::start(pg_dir.path(), &[]).unwrap();
    let url = pg.url("postgres");
    let dir = tempfile::tempdir().unwrap();
    let c = Catalogue::start_on(dir.path(), postgres(&url)).await;
    seed_registry(&c).await;
    c.put("/v1/tenants/acme", &acme()).await.expect(201);

    pg.kill();
    for reply in [
        c.put("/v1/tenants/acme", &acme()).await,
        c.get("/v1/tenants/acme").await,
        c.get("/v1/changes?after=0").await,
    ] {
        assert_eq!(reply.status.as_u16(), 503, "{}", reply.json);
        assert_eq!(reply.headers["retry-after"], "1");
        let reason = reply.json["reason"].as_str().unwrap();
        assert!(
            !reason.contains("error") && !reason.contains("os error"),
            "a driver message: {reason}"
        );
    }

    pg.restart().unwrap();
    // The pool drops its dead connections and opens new ones at the next call.
    let back = c.get("/v1/tenants/acme").await.expect(200);
    assert_eq!(back["version"], 1, "the refused write left nothing: {back}");
    assert_eq!(c.put("/v1/tenants/acme", &acme()).await.expect(200)["version"], 2);
    let page = c.get("/v1/changes?after=0").await.expect(200);
    let seqs = seqs(&page);
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
}

/// An unreachable database at start: the catalogue exits at once with an error naming where
/// it tried, and the password of the connection string appears nowhere.
#[test]
fn an_unreachable_database_at_start_is_a_clear_error() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .args([
            "catalogue",
            "--listen",
            "127.0.0.1:0",
            "--allow-unauthenticated",
            "--data",
        ])
        .arg(dir.path())
        .arg("--store")
        .arg(format!("postgres://edge:s3cret-pw@127.0.0.1:{port}/catalogue"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "cannot connect to PostgreSQL at postgres://edge@127.0.0.1:{port}/catalogue"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret-pw"), "{stderr}");

    let bad = std::process::Command::new(BIN)
        .args(["catalogue", "--store", "mysql://x"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("expected `sqlite` or a PostgreSQL connection string")
    );
}

/// A bulk import cut by a crash of the database while its transaction is open leaves nothing
/// of it behind: after the restart the catalogue holds none of its tenants and the log none of
/// its changes, and the import can be run again whole.
#[tokio::test]
async fn a_crash_during_an_import_leaves_nothing_half_written() {
    let pg_dir = tempfile::tempdir().unwrap();
    let mut pg = PgServer::start(pg_dir.path(), &[]).unwrap();
    let url = pg.url("postgres");
    let dir = tempfile::tempdir().unwrap();
    let c = Catalogue::start_on(dir.path(), postgres(&url)).await;
    seed_registry(&c).await; // seqs 1..=5
    let batch: Vec<serde_json::Value> = (0..5000)
        .map(|i| {
            json!({"id": format!("bulk-{i}"), "hosts": [format!("bulk-{i}.example.test")], "realm": "us",
                   "placements": {"jira": {"shard": "jira-us-east-1"}}})
        })
        .collect();
    let body = json!(batch);

    // The import's transaction is open once the catalogue's connection is in one; then kill.
    let (watcher, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let import = {
        let (http, base, token) = (
            c.http.clone(),
            c.base.clone(),
            c.stack.operator_token().to_owned(),
        );
        let body = body.clone();
        tokio::spawn(async move {
            http.post(format!("{base}/v1/tenants"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let open: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE application_name = 'tenant-edge catalogue' AND xact_start IS NOT NULL
                   AND query LIKE '%tenant_placements%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if open > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the import never opened its transaction"
        );
        assert!(
            !import.is_finished(),
            "the import finished before the crash could cut it"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    pg.kill();
    assert_eq!(import.await.unwrap().as_u16(), 503);

    pg.restart().unwrap();
    assert_eq!(
        c.get("/v1/tenants").await.expect(200).as_array().unwrap().len(),
        0
    );
    let page = c.get("/v1/changes?after=0").await.expect(200);
    assert_eq!(page["head"], 5, "{page}");
    let again = c.post("/v1/tenants", &body).await.expect(200);
    assert_eq!(again["written"], 5000);
    assert_eq!(
        c.get("/v1/changes?after=0&limit=10").await.expect(200)["head"],
        5005
    );
}
