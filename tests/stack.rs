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

/// `tenant-edge stack`, as a script starts it: every role a child process, tenants imported
/// from a file before TCS starts, the edge config overlaid from a file; one JSON line says
/// where each part listens and which process it is; SIGTERM stops every part.
#[test]
fn the_stack_command_starts_children_and_prints_where_they_listen() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let docs = dir.path().join("tenants.jsonl");
    // More than two batches of the import, and a partial one at the end.
    let lines: Vec<String> = (0..12_001)
        .map(|i| {
            serde_json::json!({"id": format!("t{i}"), "hosts": [format!("t{i}.bench.test")],
                "realm": "us", "placements": {"jira": {"shard": "jira-us-east-1"}}})
            .to_string()
        })
        .collect();
    std::fs::write(&docs, lines.join("\n") + "\n").unwrap();
    let overrides = dir.path().join("edge.toml");
    std::fs::write(&overrides, "access_log = false\n[cache]\nmax_entries = 50\n").unwrap();
    let stack_dir = dir.path().join("stack");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tenant-edge"))
        .args(["stack", "--regions", "us-east-1", "--no-demo-tenants"])
        .arg("--dir")
        .arg(&stack_dir)
        .arg("--routes")
        .arg(root.join("routes/dev.toml"))
        .arg("--import")
        .arg(&docs)
        .arg("--edge-overrides")
        .arg(&overrides)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let started: serde_json::Value = stdout
        .lines()
        .map_while(Result::ok)
        .find(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(&line).unwrap())
        .expect("the stack printed where it listens");
    let edge = &started["edges"][0];
    let pids: Vec<i64> = [&started["catalogue"], &started["tcs"][0], edge]
        .iter()
        .map(|p| p["pid"].as_i64().unwrap())
        .collect();
    assert!(
        pids.iter().all(|&p| p != i64::from(child.id())),
        "every role is a child"
    );
    assert_eq!(started["shards"].as_array().unwrap().len(), 12);
    let get = |host: &str| {
        let out = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
            .arg(format!("host: {host}"))
            .arg(format!("http://{}/", edge["http"].as_str().unwrap()))
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(get("t1.bench.test"), "200", "an imported tenant routes");
    assert_eq!(get("t12000.bench.test"), "200", "the last batch was imported");
    assert_eq!(get("acme.example.test"), "404", "no demo tenants");
    let written = std::fs::read_to_string(stack_dir.join("edge.toml")).unwrap();
    let written: toml::Table = written.parse().unwrap();
    assert_eq!(written["cache"]["max_entries"].as_integer(), Some(50));
    assert_eq!(written["access_log"].as_bool(), Some(false));
    let token = std::fs::read_to_string(started["operator_token_file"].as_str().unwrap()).unwrap();
    assert!(!token.trim().is_empty());

    let term = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    assert!(child.wait().unwrap().success(), "a signalled stack exits cleanly");
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z ")),
            "part {pid} still runs"
        );
    }
}

#[test]
fn the_stack_command_refuses_an_unknown_override_before_starting() {
    let dir = tempfile::tempdir().unwrap();
    let overrides = dir.path().join("edge.toml");
    std::fs::write(&overrides, "acces_log = false\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tenant-edge"))
        .arg("stack")
        .arg("--dir")
        .arg(dir.path().join("stack"))
        .arg("--routes")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("routes/dev.toml"))
        .arg("--edge-overrides")
        .arg(&overrides)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("acces_log"), "{said}");
    assert!(!dir.path().join("stack").exists(), "nothing was started");
}
