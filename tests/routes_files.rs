//! Route files on disk: every sample parses, `check-routes` behaves as documented, and a running
//! store follows edits of its file.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns unwrap freely"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use tenant_edge::routes::{RouteSnapshot, RouteStore};
use tokio_util::sync::CancellationToken;

/// Generous: only a broken watcher ever waits this long.
const DEADLINE: Duration = Duration::from_secs(10);

fn routes_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("routes")
}

fn check_routes(file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tenant-edge"))
        .arg("check-routes")
        .arg(file)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn every_sample_file_parses() {
    let mut parsed = Vec::new();
    for entry in std::fs::read_dir(routes_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            if let Err(e) = RouteSnapshot::load_file(&path) {
                panic!("{}:\n{e}", path.display());
            }
            parsed.push(path);
        }
    }
    assert!(
        parsed.iter().any(|p| p.ends_with("dev.toml")),
        "parsed only {parsed:?}"
    );
    assert!(
        parsed.iter().any(|p| p.ends_with("example.toml")),
        "parsed only {parsed:?}"
    );
}

#[test]
fn check_routes_accepts_the_dev_file() {
    let out = check_routes(&routes_dir().join("dev.toml"));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.trim(),
        "ok: 2 products, 6 shards, 12 backends (version dev-1)"
    );
}

#[test]
fn check_routes_prints_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    let text = r#"
[health_check]
timeout_ms = 2000
[[products]]
name = "jira"
prefixes = ["wiki"]
[[shards]]
id = "jira-x"
product = "bitbucket"
region = "us-east-1"
backends = ["nope"]
"#;
    std::fs::write(&file, text).unwrap();
    let out = check_routes(&file);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    for needle in [
        "4 problem(s)",
        "health_check.timeout_ms: 2000 must be less than interval_ms (1000)",
        "products[0] (jira): prefix \"wiki\": must start with '/'",
        "shards[0] (jira-x): unknown product \"bitbucket\"",
        "shards[0] (jira-x): backend \"nope\": invalid socket address",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
}

#[test]
fn check_routes_exits_2_on_an_unreadable_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = check_routes(&dir.path().join("missing.toml"));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

async fn wait_for_failed_reloads(store: &RouteStore, at_least: u64) {
    let seen = tokio::time::timeout(DEADLINE, store.failed_at_least(at_least)).await;
    assert!(seen.is_ok(), "no failed reload seen");
}

#[tokio::test(flavor = "current_thread")]
async fn store_follows_edits_of_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    let dev = std::fs::read_to_string(routes_dir().join("dev.toml")).unwrap();
    write_atomically(&path, &dev);
    let store = Arc::new(RouteStore::load(&path).unwrap());
    let mut updates = store.subscribe();
    let shutdown = CancellationToken::new();
    let watcher = store.spawn_watcher(shutdown.clone());

    let edited = dev
        .replace("dev-1", "dev-2")
        .replace("127.0.0.1:9109", "127.0.0.1:9119");
    write_atomically(&path, &edited);
    tokio::time::timeout(DEADLINE, updates.changed())
        .await
        .unwrap()
        .unwrap();
    let current = store.load_full();
    assert_eq!(current.version, "dev-2");
    assert_eq!(
        current.shard("confluence-eu-west-1").unwrap().backends[1].port(),
        9119
    );
    assert!(Arc::ptr_eq(&current, &updates.borrow_and_update()));

    let failed_before = store.reloads_failed();
    write_atomically(&path, &edited.replace("127.0.0.1:9100", "nope"));
    wait_for_failed_reloads(&store, failed_before + 1).await;
    assert_eq!(store.current().version, "dev-2");
    assert!(!updates.has_changed().unwrap());

    shutdown.cancel();
    tokio::time::timeout(DEADLINE, watcher).await.unwrap().unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn store_reloads_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    let dev = std::fs::read_to_string(routes_dir().join("dev.toml")).unwrap();
    write_atomically(&path, &dev);
    let store = Arc::new(RouteStore::load(&path).unwrap());
    let mut updates = store.subscribe();
    // Changed before the watcher exists, so only the signal can make the store notice.
    write_atomically(&path, &dev.replace("dev-1", "dev-hup"));
    let shutdown = CancellationToken::new();
    let watcher = store.spawn_watcher(shutdown.clone());

    // The handler is installed by `spawn_watcher`, so SIGHUP no longer ends this process.
    let status = Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::timeout(DEADLINE, updates.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.current().version, "dev-hup");

    shutdown.cancel();
    tokio::time::timeout(DEADLINE, watcher).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_follows_in_place_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    let dev = std::fs::read_to_string(routes_dir().join("dev.toml")).unwrap();
    std::fs::write(&path, &dev).unwrap();
    let store = Arc::new(RouteStore::load(&path).unwrap());
    let mut updates = store.subscribe();
    let shutdown = CancellationToken::new();
    let watcher = store.spawn_watcher(shutdown.clone());

    // Truncate-and-write, as `>` in a shell or a plain editor save does.
    std::fs::write(&path, dev.replace("dev-1", "dev-inplace")).unwrap();
    tokio::time::timeout(DEADLINE, updates.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.current().version, "dev-inplace");

    shutdown.cancel();
    tokio::time::timeout(DEADLINE, watcher).await.unwrap().unwrap();
}
