//! Tenant moves through the catalogue binary over real HTTP: creation (201 / 409 / 422),
//! phase changes by compare-and-set, the tenant placement each phase writes, the change log
//! holding both changes in order, the tenant lookup by host, and `ctl migrations`.

#![expect(clippy::unwrap_used, reason = "test helpers fail the test by unwrapping")]

#[path = "support/catalogue.rs"]
#[expect(dead_code, reason = "shared with catalogue_api.rs, which uses the rest")]
mod catalogue_support;

use catalogue_support::{acme, seed_registry, Catalogue, Reply};
use reqwest::Method;
use serde_json::{json, Value};

/// The registry of `seed_registry` plus jira-us-west-2 (with mover hooks), and acme on
/// jira-us-east-1 at version 1.
async fn seeded(c: &Catalogue) {
    seed_registry(c).await;
    let west = json!({"id": "jira-us-west-2", "product": "jira", "regions": ["us-west-2"],
                      "mover": "http://127.0.0.1:9100"});
    c.put("/v1/shards/jira-us-west-2", &west).await.expect(201);
    assert_eq!(c.get("/v1/shards/jira-us-west-2").await.expect(200), west);
    c.put("/v1/tenants/acme", &acme()).await.expect(201);
}

fn move_acme_to(shard: &str) -> Value {
    json!({"tenant": "acme", "product": "jira", "to": shard})
}

async fn set_phase(c: &Catalogue, id: &str, phase: &str, if_match: Option<&str>) -> Reply {
    let body = json!({ "phase": phase }).to_string();
    c.call(
        Method::PUT,
        &format!("/v1/migrations/{id}/phase"),
        Some(&body),
        if_match,
    )
    .await
}

/// acme's jira placement as `(shard, state)`, and acme's version.
async fn acme_jira(c: &Catalogue) -> (String, String, u64) {
    let t = c.get("/v1/tenants/acme").await.expect(200);
    let p = &t["placements"]["jira"];
    (
        p["shard"].as_str().unwrap().to_owned(),
        p["state"].as_str().unwrap().to_owned(),
        t["version"].as_u64().unwrap(),
    )
}

async fn head(c: &Catalogue) -> u64 {
    c.get("/healthz").await.expect(200)["head"].as_u64().unwrap()
}

/// `(kind, phase or placement state)` of every change after `after`.
async fn changes_after(c: &Catalogue, after: u64) -> Vec<(String, String)> {
    let page = c.get(&format!("/v1/changes?after={after}")).await.expect(200);
    page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ch| {
            let kind = ch["kind"].as_str().unwrap().to_owned();
            let what = match kind.as_str() {
                "migration" => ch["doc"]["phase"].clone(),
                _ => ch["doc"]["placements"]["jira"]["state"].clone(),
            };
            (kind, what.as_str().unwrap_or("-").to_owned())
        })
        .collect()
}

fn pair(kind: &str, what: &str) -> (String, String) {
    (kind.to_owned(), what.to_owned())
}

#[tokio::test]
async fn creation_checks_follow_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let c = Catalogue::start(dir.path()).await;
    seeded(&c).await;

    // Checked before anything exists, so that no open migration answers first.
    let invalid = [
        (
            json!({"tenant": "nobody", "product": "jira", "to": "jira-us-west-2"}),
            "unknown tenant",
        ),
        (
            json!({"tenant": "acme", "product": "confluence", "to": "confluence-us-east-1"}),
            "no confluence",
        ),
        (move_acme_to("jira-us-east-1"), "already on shard"),
        (move_acme_to("confluence-us-east-1"), "serves confluence"),
        (move_acme_to("jira-eu-west-1"), "outside realm us"),
        (move_acme_to("jira-nowhere-1"), "unknown shard"),
        (json!({"tenant": "acme", "product": "jira"}), "missing field"),
        (
            json!({"tenant": "acme", "product": "jira", "to": "x", "why": 1}),
            "unknown field",
        ),
    ];
    for (body, expected) in invalid {
        let refused = c.post("/v1/migrations", &body).await.expect(422);
        assert!(
            refused["reason"].as_str().unwrap().contains(expected),
            "{body}: {refused}"
        );
    }
    let created = c.post("/v1/migrations", &move_acme_to("jira-us-west-2")).await;
    assert_eq!(created.etag(), "\"1\"");
    let m = created.expect(201);
    assert_eq!(m["id"], "m-1");
    assert_eq!(m["phase"], "planned");
    assert_eq!(m["version"], 1);
    assert_eq!(
        (&m["from"], &m["to"]),
        (&json!("jira-us-east-1"), &json!("jira-us-west-2"))
    );
    assert_eq!(m["regions_to_add"], json!(["us-west-2"]));
    assert_eq!(m["regions_to_remove"], json!(["us-east-1"]));
    let open = c
        .post("/v1/migrations", &move_acme_to("jira-us-west-2"))
        .await
        .expect(409);
    assert!(open["reason"].as_str().unwrap().contains("m-1"), "{open}");

    let broken = c.call(Method::POST, "/v1/migrations", Some("{\"tenant\":"), None);
    broken.await.expect(400);

    let got = c.get("/v1/migrations/m-1").await;
    assert_eq!(got.etag(), "\"1\"");
    assert_eq!(got.expect(200), m);
    c.get("/v1/migrations/m-9").await.expect(404);
    c.get("/v1/migrations/acme").await.expect(404);
    assert_eq!(c.get("/v1/migrations").await.expect(200), json!([m]));
    assert_eq!(c.get("/v1/migrations?tenant=acme").await.expect(200), json!([m]));
    assert_eq!(c.get("/v1/migrations?tenant=globex").await.expect(200), json!([]));
    c.get("/v1/migrations?tenant=Bad!").await.expect(400);

    // The orchestrator's way in: the tenant owning a host.
    let tenant = c.get("/v1/tenants/acme").await.expect(200);
    let by_host = c.get("/v1/tenants?host=ACME.example.test").await.expect(200);
    assert_eq!(by_host, json!([tenant]));
    let nobody = c.get("/v1/tenants?host=nobody.example.test").await.expect(200);
    assert_eq!(nobody, json!([]));
    c.get("/v1/tenants?host=10.0.0.1").await.expect(400);
    assert_eq!(c.get("/v1/tenants").await.expect(200), json!([tenant]));
}

#[tokio::test]
async fn phases_move_the_tenant_by_compare_and_set() {
    let dir = tempfile::tempdir().unwrap();
    let c = Catalogue::start(dir.path()).await;
    seeded(&c).await;
    c.post("/v1/migrations", &move_acme_to("jira-us-west-2"))
        .await
        .expect(201);

    let before = head(&c).await;
    set_phase(&c, "m-1", "frozen", Some("\"2\"")).await.expect(409);
    set_phase(&c, "m-1", "copying", None).await.expect(422);
    set_phase(&c, "m-1", "melted", None).await.expect(422);
    set_phase(&c, "m-9", "frozen", None).await.expect(404);
    assert_eq!(head(&c).await, before, "refused changes wrote nothing");
    assert_eq!(acme_jira(&c).await, ("jira-us-east-1".into(), "active".into(), 1));

    let frozen = set_phase(&c, "m-1", "frozen", Some("\"1\"")).await;
    assert_eq!(frozen.etag(), "\"2\"");
    assert_eq!(frozen.expect(200)["phase"], "frozen");
    assert_eq!(acme_jira(&c).await, ("jira-us-east-1".into(), "frozen".into(), 2));
    assert_eq!(
        changes_after(&c, before).await,
        [pair("migration", "frozen"), pair("tenant", "frozen")]
    );

    set_phase(&c, "m-1", "copying", Some("2")).await.expect(200);
    let switching = head(&c).await;
    let switched = set_phase(&c, "m-1", "switched", Some("3")).await.expect(200);
    assert_eq!(switched["version"], 4);
    assert_eq!(acme_jira(&c).await, ("jira-us-west-2".into(), "active".into(), 3));
    assert_eq!(
        changes_after(&c, switching).await,
        [pair("migration", "switched"), pair("tenant", "active")]
    );
    // Past the switch there is no way back.
    set_phase(&c, "m-1", "rolled_back", None).await.expect(422);
    set_phase(&c, "m-1", "cleaning", None).await.expect(200);
    let done = set_phase(&c, "m-1", "done", None).await.expect(200);
    assert_eq!(done["version"], 6);
    assert_eq!(acme_jira(&c).await, ("jira-us-west-2".into(), "active".into(), 3));
    // Closed: the product can move again.
    c.post("/v1/migrations", &move_acme_to("jira-us-east-1"))
        .await
        .expect(201);
}

#[tokio::test]
async fn a_rollback_puts_the_tenant_back_and_ctl_shows_migrations() {
    let dir = tempfile::tempdir().unwrap();
    let c = Catalogue::start(dir.path()).await;
    seeded(&c).await;
    c.post("/v1/migrations", &move_acme_to("jira-us-west-2"))
        .await
        .expect(201);
    set_phase(&c, "m-1", "frozen", None).await.expect(200);
    set_phase(&c, "m-1", "copying", None).await.expect(200);
    let before = head(&c).await;
    set_phase(&c, "m-1", "rolled_back", None).await.expect(200);
    assert_eq!(acme_jira(&c).await, ("jira-us-east-1".into(), "active".into(), 3));
    assert_eq!(
        changes_after(&c, before).await,
        [pair("migration", "rolled_back"), pair("tenant", "active")]
    );
    c.post("/v1/migrations", &move_acme_to("jira-us-west-2"))
        .await
        .expect(201);

    let list = c.ctl(&["migrations", "list", "--tenant", "acme"], "").await;
    assert!(list.ok(), "{list:?}");
    let out = list.stdout;
    let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        rows,
        [
            vec!["ID", "TENANT", "PRODUCT", "FROM", "TO", "PHASE", "VERSION", "ADD", "REMOVE"],
            vec![
                "m-2",
                "acme",
                "jira",
                "jira-us-east-1",
                "jira-us-west-2",
                "planned",
                "1",
                "us-west-2",
                "us-east-1"
            ],
            vec![
                "m-1",
                "acme",
                "jira",
                "jira-us-east-1",
                "jira-us-west-2",
                "rolled_back",
                "4",
                "us-west-2",
                "us-east-1"
            ],
        ],
        "{out}"
    );
    let get = c.ctl(&["migrations", "get", "m-1"], "").await;
    assert!(get.ok(), "{get:?}");
    let doc: Value = serde_json::from_str(&get.stdout).unwrap();
    assert_eq!(doc, c.get("/v1/migrations/m-1").await.expect(200));
    let missing = c.ctl(&["migrations", "get", "m-9"], "").await;
    assert_eq!(missing.code, Some(1), "{missing:?}");

    let changes = c.ctl(&["changes", "--after", &before.to_string()], "").await;
    let out = changes.stdout;
    let first: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        first,
        [&(before + 1).to_string(), "migration", "m-1", "4", "rolled_back"],
        "{out}"
    );
}
