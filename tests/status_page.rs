//! The edge's status page (`/` on the admin listener) in a real browser: headless Chromium
//! (Debian's `chromium`, installed by `make deps`) loads it against a running stack; the page
//! shows the regions, the hottest tenants and a tenant being moved, and a screenshot is kept in
//! the test's target directory as an artefact.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// The browser: Debian's `chromium`, or another Chromium on the PATH.
fn chromium() -> String {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if found {
            return name.to_owned();
        }
    }
    panic!("no Chromium on the PATH: `make deps` installs Debian's chromium");
}

async fn browse(args: &[&str]) -> String {
    let mut cmd = tokio::process::Command::new(chromium());
    cmd.args([
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
    ])
    .args(args)
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("chromium finished within 90 s")
        .unwrap();
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_regions_tenants_and_moves_in_a_browser() {
    let stack = Stack::start().await;
    // acme is the hottest tenant; initech is being moved (its jira placement frozen).
    for _ in 0..400 {
        assert_eq!(stack.get("acme.example.test", "/").await.status(), 200);
    }
    assert_eq!(stack.get("initech.example.test", "/").await.status(), 200);
    let doc = json!({"id": "initech", "hosts": ["initech.example.test"], "realm": "us",
        "placements": {"jira": {"shard": "jira-us-east-1", "state": "frozen"}}});
    let (status, stored) = stack.put_tenant(&doc).await;
    assert_eq!(status, 200, "{stored}");
    eventually(Duration::from_secs(10), || async {
        let t = stack.admin_json("/admin/tenants/initech.example.test").await;
        (t["context"]["placements"]["jira"]["state"] == "frozen").then_some(())
    })
    .await;

    // The page as served: its load time, and that it is HTML from the binary.
    let url = stack.admin("/");
    let started = Instant::now();
    let r = stack.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let served = r.text().await.unwrap();
    println!("status page: {} bytes in {:?}", served.len(), started.elapsed());

    // In the browser.
    let dom = browse(&["--dump-dom", &url]).await;
    let section = |id: &str| {
        let at = dom
            .find(&format!("id=\"{id}\""))
            .unwrap_or_else(|| panic!("no #{id} in {dom}"));
        let end = dom[at..].find("</table>").map_or(dom.len(), |e| at + e);
        dom[at..end].to_owned()
    };
    let regions = section("regions");
    for expected in ["us-east-1", "eu-west-1", "trusted", "connected"] {
        assert!(regions.contains(expected), "{expected} not in {regions}");
    }
    assert!(section("hottest").contains("acme"), "{dom}");
    let moving = section("moving");
    assert!(moving.contains("initech") && moving.contains("jira"), "{moving}");
    let version = stack.admin_json("/admin/routes").await["version"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(section("route-version").contains(&version), "{dom}");
    assert!(section("shards").contains("jira-us-east-1"), "{dom}");
    assert!(dom.contains("http-equiv=\"refresh\""), "the page reloads itself");

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    browse(&[
        "--window-size=1280,1400",
        &format!("--screenshot={}", shot.display()),
        &url,
    ])
    .await;
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    println!("screenshot kept at {}", shot.display());
}
