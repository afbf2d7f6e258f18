//! The stack builder in process, as a library user starts it: every role a task of the test
//! process, every port picked by the kernel (the edges' proxy listeners included), two edges.

use std::path::Path;

use tenant_edge::routes::RoutesFile;
use tenant_edge::stack::{Run, Stack, StackError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_stack_on_port_zero_routes_through_every_edge() {
    let dir = tempfile::tempdir().unwrap();
    let routes = RoutesFile::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("routes/dev.toml")).unwrap();
    let mut stack = Stack::builder(dir.path(), routes)
        .run(Run::InProcess)
        .certs(Path::new(env!("CARGO_MANIFEST_DIR")).join("certs"))
        .edges(2)
        .start()
        .await
        .unwrap();
    assert_eq!(stack.edges.len(), 2);
    assert_eq!(stack.tcs.len(), 2);
    assert_eq!(stack.shards.len(), 12);
    let http = reqwest::Client::new();
    for edge in &stack.edges {
        assert_ne!(edge.http.port(), 0, "the port picked is reported");
        assert_ne!(edge.https.unwrap().port(), 0);
        let r = http
            .get(format!("http://{}/wiki/x", edge.http))
            .header("host", "acme.example.test")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["shard"], "confluence-us-east-1");
    }
    // The route file the edges read names the ports the demo shards bound.
    let written = RoutesFile::load(&stack.routes).unwrap();
    assert_eq!(written, stack.routes_file);
    let bound: Vec<String> = stack.shards.iter().map(|s| s.addr().to_string()).collect();
    for shard in &written.shards {
        for backend in &shard.backends {
            assert!(bound.contains(backend), "{backend} is not a started shard");
        }
    }
    // Every config the stack ran with is in its directory, and every file holding a secret
    // is its owner's alone.
    use std::os::unix::fs::PermissionsExt;
    for file in [
        "edge.toml",
        "edge1.toml",
        "tcs-us-east-1.toml",
        "tcs-eu-west-1.toml",
        "catalogue-tokens.toml",
        "operator.token",
        "edge.token",
    ] {
        let mode = std::fs::metadata(dir.path().join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    let operator = std::fs::read_to_string(dir.path().join("operator.token")).unwrap();
    assert_eq!(operator.trim(), stack.operator_token());
    // The catalogue refuses a call without the token.
    let r = http
        .get(format!("{}/v1/tenants", stack.catalogue().url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(matches!(stack.tcs[0].restart(), Err(StackError::Spec(_))));
    stack.stop().await;
}

#[tokio::test]
async fn a_bad_request_for_a_stack_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let none = Stack::builder(dir.path(), RoutesFile::default())
        .regions(&[])
        .unwrap()
        .start()
        .await;
    assert!(
        matches!(none, Err(StackError::Spec(_))),
        "edges without a TCS region"
    );
    let bad = Stack::builder(dir.path(), RoutesFile::default()).regions(&["Not A Region"]);
    assert!(bad.is_err());
    let contract = Stack::builder(dir.path(), RoutesFile::default())
        .ports(tenant_edge::stack::Ports::Contract)
        .edges(2)
        .start()
        .await;
    assert!(
        matches!(contract, Err(StackError::Spec(_))),
        "the contract's ports fit one edge"
    );
}
