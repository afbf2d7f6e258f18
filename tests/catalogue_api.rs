//! The catalogue binary over real HTTP: status codes of the contract, compare-and-set, the
//! change log and its long-poll, durability across a restart, and `ctl`.

#![expect(clippy::unwrap_used, reason = "test helpers fail the test by unwrapping")]

#[path = "support/catalogue.rs"]
mod catalogue_support;

use std::net::TcpListener;
use std::time::Duration;

use catalogue_support::ctl::ctl;
use catalogue_support::{acme, seed_registry, seqs, Catalogue};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test]
async fn tenants_follow_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let c = Catalogue::start(dir.path()).await;
    assert_eq!(c.get("/healthz").await.expect(200)["status"], "ok");
    seed_registry(&c).await;

    let created = c.put("/v1/tenants/acme", &acme()).await;
    assert_eq!(created.etag(), "\"1\"");
    assert_eq!(created.expect(201)["version"], 1);
    let mut both = acme();
    both["placements"]["confluence"] = json!({"shard": "confluence-us-east-1"});
    let replaced = c.put("/v1/tenants/acme", &both).await;
    assert_eq!(replaced.etag(), "\"2\"");
    assert_eq!(replaced.expect(200)["version"], 2);

    // Compare-and-set: stale and current versions, quoted or not; garbage is a 400.
    let stale = c.put_if("/v1/tenants/acme", &both, "\"1\"").await.expect(409);
    assert!(
        stale["reason"].as_str().unwrap().contains("current version is 2"),
        "{stale}"
    );
    assert_eq!(
        c.put_if("/v1/tenants/acme", &both, "2").await.expect(200)["version"],
        3
    );
    c.put_if("/v1/tenants/acme", &both, "three").await.expect(400);

    let thief = json!({"id": "globex", "hosts": ["acme.example.test"], "realm": "eu"});
    let taken = c.put("/v1/tenants/globex", &thief).await.expect(409);
    assert!(taken["reason"].as_str().unwrap().contains("acme"), "{taken}");

    let mut abroad = acme();
    abroad["placements"]["jira"]["shard"] = json!("jira-eu-west-1");
    let outside = c.put("/v1/tenants/acme", &abroad).await.expect(422);
    assert!(
        outside["reason"].as_str().unwrap().contains("outside realm us"),
        "{outside}"
    );
    let mut unknown = acme();
    unknown["placements"]["jira"]["shard"] = json!("jira-nowhere-1");
    let unknown = c.put("/v1/tenants/acme", &unknown).await.expect(422);
    assert!(
        unknown["reason"]
            .as_str()
            .unwrap()
            .contains("unknown shard jira-nowhere-1"),
        "{unknown}"
    );
    c.put("/v1/tenants/other", &acme()).await.expect(422);
    c.put("/v1/tenants/acme", &json!({"id": 5})).await.expect(422);
    c.put("/v1/tenants/Acme!", &acme()).await.expect(400);

    let broken = c.call(Method::PUT, "/v1/tenants/acme", Some("{\"id\": \"acme\","), None);
    broken.await.expect(400);
    let (status, body) = c.declare_huge_body("/v1/tenants/acme").await;
    assert_eq!(status, "HTTP/1.1 413 Payload Too Large");
    assert_eq!(body["status"], 413, "{body}");
    // Nothing refused above changed the tenant.
    let current = c.get("/v1/tenants/acme").await;
    assert_eq!(current.etag(), "\"3\"");
    let mut expected = both.clone();
    expected["version"] = json!(3);
    expected["placements"]["jira"]["state"] = json!("active");
    expected["placements"]["confluence"]["state"] = json!("active");
    assert_eq!(current.expect(200), expected);
    assert_eq!(c.get("/v1/tenants").await.expect(200), json!([expected]));

    c.delete("/v1/shards/jira-us-east-1", None).await.expect(409);
    c.delete("/v1/tenants/acme", Some("\"2\"")).await.expect(409);
    let gone = c.delete("/v1/tenants/acme", Some("\"3\"")).await;
    assert_eq!(gone.etag(), "\"4\"");
    gone.expect(204);
    c.get("/v1/tenants/acme").await.expect(404);
    c.delete("/v1/tenants/acme", None).await.expect(404);
    c.get("/v1/nothing-here").await.expect(404);
    c.delete("/v1/shards/jira-us-east-1", None).await.expect(204);
}

#[tokio::test]
async fn the_change_log_lists_every_write_and_long_polls() {
    let dir = tempfile::tempdir().unwrap();
    let c = Catalogue::start(dir.path()).await;
    seed_registry(&c).await; // seqs 1..=5
    c.put("/v1/tenants/acme", &acme()).await.expect(201); // 6
    c.delete("/v1/tenants/acme", None).await.expect(204); // 7

    let page = c.get("/v1/changes?after=0").await.expect(200);
    assert_eq!(page["head"], 7);
    let seqs = seqs(&page);
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    let kinds: Vec<&str> = page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ch| ch["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["realm", "realm", "shard", "shard", "shard", "tenant", "tenant"]
    );
    assert_eq!(page["changes"][5]["doc"]["id"], "acme");
    assert_eq!(page["changes"][6]["version"], 2);
    assert_eq!(page["changes"][6]["doc"], Value::Null);

    let paged = c.get("/v1/changes?after=2&limit=2").await.expect(200);
    assert_eq!(paged["changes"][0]["seq"], 3);
    assert_eq!(paged["changes"].as_array().unwrap().len(), 2);
    c.get("/v1/changes?after=minus-one").await.expect(400);

    // Nothing new: a short wait answers empty with the head.
    let idle = c.get("/v1/changes?after=7&wait_ms=20").await.expect(200);
    let epoch = page["epoch"].as_str().unwrap();
    assert_eq!(epoch.len(), 32, "the log's epoch: {epoch:?}");
    assert_eq!(idle, json!({"changes": [], "head": 7, "epoch": epoch}));

    // A long wait answers as soon as a write lands.
    let client = c.http.clone();
    let token = c.stack.operator_token().to_owned();
    let url = format!("{}/v1/changes?after=7&wait_ms=30000", c.base);
    let poll = tokio::spawn(async move {
        client
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    });
    // Write only once the poll is parked, so that the write is what wakes it.
    c.wait_for_parked_polls(1).await;
    c.put("/v1/tenants/acme", &acme()).await.expect(201);
    // After its 30 s the poll would re-read and find the write too, so only answering well before
    // then shows that the write woke it. The bound is generous: a wake takes milliseconds.
    let woke = tokio::time::timeout(Duration::from_secs(20), poll)
        .await
        .map_err(|_| "the long-poll did not wake on the write")
        .unwrap()
        .unwrap();
    assert_eq!(woke["changes"][0]["seq"], 8, "{woke}");
    assert_eq!(woke["changes"][0]["kind"], "tenant");
    assert_eq!(woke["changes"][0]["version"], 3);
}

#[tokio::test]
async fn a_restart_keeps_everything_and_ctl_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let c = Catalogue::start(dir.path()).await;
        seed_registry(&c).await;
        c.put("/v1/tenants/acme", &acme()).await.expect(201);
        c.put("/v1/tenants/acme", &acme()).await.expect(200);
        (
            c.get("/v1/tenants/acme").await.expect(200),
            c.get("/v1/changes").await.expect(200),
        )
        // Dropped here: killed without a chance to flush anything.
    };
    let c = Catalogue::start(dir.path()).await;
    assert_eq!(c.get("/v1/tenants/acme").await.expect(200), before.0);
    assert_eq!(c.get("/v1/changes").await.expect(200), before.1);
    assert_eq!(c.get("/healthz").await.expect(200)["head"], 7);

    let initech = r#"{"id": "initech", "hosts": ["initech.example.test"], "realm": "us",
                      "placements": {"jira": {"shard": "jira-us-east-1"}}}"#;
    let put = c.ctl(&["tenants", "put", "-"], initech).await;
    assert!(put.ok(), "{put:?}");
    let stored: Value = serde_json::from_str(&put.stdout).unwrap();
    assert_eq!(stored["version"], 1);

    let list = c.ctl(&["tenants", "list"], "").await;
    assert!(list.ok(), "{list:?}");
    let out = list.stdout;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    let cells = |line: &str| line.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(cells(lines[0]), ["ID", "VERSION", "REALM", "HOSTS", "PLACEMENTS"]);
    assert_eq!(
        cells(lines[1]),
        ["acme", "2", "us", "acme.example.test", "jira=jira-us-east-1"]
    );
    assert_eq!(cells(lines[2])[..2], ["initech", "1"]);
    // Columns are aligned: every row's second column starts where the header's does.
    let at = lines[0].find("VERSION").unwrap();
    assert!(
        lines[1..]
            .iter()
            .all(|l| l[at..].starts_with(|ch: char| ch.is_ascii_digit())),
        "{out}"
    );

    let missing = c.ctl(&["tenants", "get", "nobody"], "").await;
    assert_eq!(missing.code, Some(1), "{missing:?}");
    assert!(missing.stderr.contains("404"), "{missing:?}");
    drop(c);
    let unreachable = ctl(&unused_base(), None, &["tenants", "list"], "").await;
    assert_eq!(unreachable.code, Some(2), "{unreachable:?}");
}

fn numbered(i: usize) -> Value {
    json!({"id": format!("t{i}"), "hosts": [format!("t{i}.example.test")], "realm": "us",
           "placements": {"jira": {"shard": "jira-us-east-1"}}})
}

#[tokio::test]
async fn bulk_import_is_all_or_nothing_and_logs_every_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let c = Catalogue::start(dir.path()).await;
    seed_registry(&c).await;
    let head = c.get("/healthz").await.expect(200)["head"].as_u64().unwrap();

    // One bad document refuses the whole batch, naming it.
    let mut batch: Vec<Value> = (0..3).map(numbered).collect();
    batch[1]["placements"]["jira"]["shard"] = json!("jira-eu-west-1");
    let refused = c.post("/v1/tenants", &json!(batch)).await.expect(422);
    let error = refused["reason"].as_str().unwrap();
    assert!(
        error.contains("tenants[1] (t1)") && error.contains("outside realm us"),
        "{refused}"
    );
    c.get("/v1/tenants/t0").await.expect(404);
    // Two documents claiming one host: a conflict, nothing written.
    let mut clash: Vec<Value> = (0..2).map(numbered).collect();
    clash[1]["hosts"] = json!(["t0.example.test"]);
    c.post("/v1/tenants", &json!(clash)).await.expect(409);
    assert_eq!(c.get("/healthz").await.expect(200)["head"], head);

    let written = c
        .post("/v1/tenants", &json!((0..3).map(numbered).collect::<Vec<_>>()))
        .await
        .expect(200);
    assert_eq!(written, json!({"written": 3, "head": head + 3}));
    assert_eq!(c.get("/v1/tenants/t2").await.expect(200)["version"], 1);
    let changes = c.get(&format!("/v1/changes?after={head}")).await.expect(200);
    assert_eq!(changes["changes"].as_array().unwrap().len(), 3, "{changes}");

    // `ctl tenants import`: JSON lines in batches, a progress line per batch; existing tenants
    // are replaced (a new version), new ones created.
    let lines: String = (1..6).map(|i| format!("{}\n", numbered(i))).collect();
    let out = c.ctl(&["tenants", "import", "--batch", "2", "-"], &lines).await;
    assert!(out.ok(), "{out:?}");
    let stdout = out.stdout;
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("imported ") && l.ends_with("/s)"))
            .count(),
        3,
        "{stdout}"
    );
    assert!(stdout.contains("imported 5 tenants in"), "{stdout}");
    assert_eq!(c.get("/v1/tenants/t2").await.expect(200)["version"], 2);
    assert_eq!(c.get("/v1/tenants/t5").await.expect(200)["version"], 1);
    let bad = c
        .ctl(&["tenants", "import", "-"], "{\"id\": \"t9\"}\nnot json\n")
        .await;
    assert_eq!(bad.code, Some(2), "{bad:?}");
    assert!(bad.stderr.contains("line 1"), "{bad:?}");

    // Documents too large for one request body at the full batch size: the batch is cut by
    // bytes too (about 2.4 MB of documents here, the request body limit being 1 MiB).
    let big: String = (100..3100)
        .map(|i| {
            let mut doc = numbered(i);
            doc["products"] = json!({"jira": {"config": {"notes": "x".repeat(700)}}});
            format!("{doc}\n")
        })
        .collect();
    let out = c.ctl(&["tenants", "import", "-"], &big).await;
    assert!(out.ok(), "{out:?}");
    // Documents that grow when written out (the placement's state, the version): the budget
    // counts what is sent, not the lines read.
    let grow: String = (5000..11000)
        .map(|i| {
            let mut doc = numbered(i);
            doc["products"] =
                json!({"jira": {"config": {"db": format!("t{i}_jira"), "db_host": "db-7.jira.internal"}}});
            format!("{doc}\n")
        })
        .collect();
    let grown = c.ctl(&["tenants", "import", "-"], &grow).await;
    assert!(grown.ok(), "{grown:?}");
    assert!(
        grown.stdout.contains("imported 6000 tenants in"),
        "{}",
        grown.stdout
    );
    let batches = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("imported ") && l.ends_with("/s)"))
        .count();
    assert!(batches >= 3, "{}", out.stdout);
    assert!(out.stdout.contains("imported 3000 tenants in"), "{}", out.stdout);

    // Read back a page at a time: 10 006 tenants now, more than one page holds.
    let more: String = (20000..21000).map(|i| format!("{}\n", numbered(i))).collect();
    assert!(c.ctl(&["tenants", "import", "-"], &more).await.ok());
    let ids = |page: &Value| -> Vec<String> {
        page.as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let first = ids(&c.get("/v1/tenants?limit=4000").await.expect(200));
    let last = first.last().unwrap().clone();
    let rest = ids(&c
        .get(&format!("/v1/tenants?after={last}&limit=10000"))
        .await
        .expect(200));
    assert_eq!((first.len(), rest.len()), (4000, 6006));
    let paged: Vec<String> = first.into_iter().chain(rest).collect();
    assert!(paged.windows(2).all(|w| w[0] < w[1]), "by id, each once");
    for bad in ["limit=0", "limit=10001", "after=t1&page=2"] {
        c.get(&format!("/v1/tenants?{bad}")).await.expect(400);
    }
    // `ctl tenants list` goes page by page and lists every one: a header and a line each.
    let listed = c.ctl(&["tenants", "list"], "").await;
    assert!(listed.ok(), "{listed:?}");
    let listed: Vec<&str> = listed
        .stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(listed, paged);
}

/// A loopback URL where nothing listens.
fn unused_base() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}")
}

#[tokio::test]
async fn sigterm_answers_parked_polls_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Catalogue::start(dir.path()).await;
    let url = format!("{}/v1/changes?after=0&wait_ms=30000", c.base);
    let poll = tokio::spawn(c.http.get(url).bearer_auth(c.stack.operator_token()).send());
    c.wait_for_parked_polls(1).await;
    c.stack.catalogue_mut().signal_term();

    // Graceful shutdown waits for requests in flight; the poll must be cut short, not waited
    // out for its 30 s.
    let answered = tokio::time::timeout(Duration::from_secs(20), poll)
        .await
        .map_err(|_| "the parked poll held up shutdown")
        .unwrap()
        .unwrap()
        .unwrap();
    let answered = answered.json::<Value>().await.unwrap();
    assert_eq!(answered["changes"], json!([]));
    assert_eq!(answered["head"], 0);
    // Already signalled: a second signal would stop it at once.
    let stopped = tokio::task::spawn_blocking(move || c.stack.catalogue_mut().wait_exit())
        .await
        .unwrap();
    assert!(stopped, "a clean exit");
}

#[tokio::test]
async fn every_call_needs_a_token_holding_its_scope() {
    let dir = tempfile::tempdir().unwrap();
    let c = Catalogue::start(dir.path()).await;
    seed_registry(&c).await;
    c.put("/v1/tenants/acme", &acme()).await.expect(201);
    let read_only = c.stack.tcs_token().to_owned();
    let http = reqwest::Client::new();
    let call = |method: Method, path: &str, token: Option<&str>| {
        let mut req = http.request(method, format!("{}{path}", c.base)).json(&json!({}));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let writes = [
        (Method::PUT, "/v1/tenants/acme"),
        (Method::DELETE, "/v1/tenants/acme"),
        (Method::POST, "/v1/tenants"),
        (Method::PUT, "/v1/shards/jira-x"),
        (Method::DELETE, "/v1/shards/jira-us-east-1"),
        (Method::PUT, "/v1/realms/us"),
        (Method::DELETE, "/v1/realms/us"),
        (Method::POST, "/v1/migrations"),
        (Method::PUT, "/v1/migrations/1/phase"),
    ];
    for (method, path) in writes {
        for token in [None, Some("not-a-token-of-this-catalogue")] {
            let r = call(method.clone(), path, token).await.unwrap();
            assert_eq!(
                r.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {token:?}"
            );
            assert_eq!(r.headers()["www-authenticate"], "Bearer");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["status"], 401);
        }
        let r = call(method.clone(), path, Some(&read_only)).await.unwrap();
        assert_eq!(
            r.status(),
            StatusCode::FORBIDDEN,
            "{method} {path} with a read token"
        );
    }
    for path in [
        "/v1/tenants",
        "/v1/tenants/acme",
        "/v1/changes",
        "/v1/shards",
        "/v1/realms",
        "/v1/migrations",
    ] {
        let r = call(Method::GET, path, None).await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "GET {path}");
        let r = call(Method::GET, path, Some(&read_only)).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "GET {path} with a read token");
    }
    let r = call(Method::GET, "/healthz", None).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "health is open");
    // Nothing refused changed anything.
    assert_eq!(c.get("/v1/tenants/acme").await.expect(200)["version"], 1);
}

#[tokio::test]
async fn a_catalogue_without_tokens_refuses_to_start_unless_open_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(catalogue_support::BIN)
            .args(["catalogue", "--data", data])
            .args(args)
            .env("RUST_LOG", "error")
            .output()
            .unwrap()
    };
    let out = run(&["--listen", "127.0.0.1:0"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--tokens"),
        "{out:?}"
    );
    let out = run(&["--listen", "0.0.0.0:0", "--allow-unauthenticated"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("loopback"),
        "{out:?}"
    );
    // A token file others may read is refused.
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        "[[tokens]]\nname = \"x\"\ntoken = \"0123456789abcdef0123\"\nscopes = [\"admin\"]\n",
    )
    .unwrap();
    let out = run(&["--listen", "127.0.0.1:0", "--tokens", tokens.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("chmod 600"),
        "{out:?}"
    );
}
