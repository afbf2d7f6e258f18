//! Unit tests of the view, the snapshot file and the configuration.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::config::TcsConfig;
use super::snapshot;
use super::view::{Applied, Backlog, IngressView};
use super::TcsError;
use crate::feed::{Change, ChangeBody, ShardDoc, ViewEvent, ViewSnapshot};
use crate::tenant::{Host, Product, Region, ShardId};

fn host(s: &str) -> Host {
    Host::parse(s).unwrap()
}

use crate::context::testing::{del, put};

fn shard(seq: u64) -> Change {
    let id = ShardId::new("jira-us-east-1").unwrap();
    let doc = ShardDoc {
        id: id.clone(),
        product: Product::new("jira").unwrap(),
        regions: vec![Region::new("us-east-1").unwrap()],
        mover: None,
        database: serde_json::Map::new(),
    };
    Change {
        seq,
        body: ChangeBody::Shard { id, doc: Some(doc) },
    }
}

fn owner(view: &IngressView, h: &str) -> Option<(String, u64)> {
    view.lookup(&host(h))
        .map(|(_, held)| (held.record.id.as_str().to_owned(), held.record.version))
}

fn backlog(view: &IngressView, after: u64) -> Vec<ViewEvent> {
    match view.subscribe(after).backlog {
        Backlog::Events(events) => events,
        Backlog::Resync(seq) => panic!("unexpected resync at {seq}"),
    }
}

fn prevs(events: &[ViewEvent]) -> Vec<(u64, u64)> {
    events
        .iter()
        .map(|e| match e {
            ViewEvent::Upsert { seq, prev, .. } | ViewEvent::Delete { seq, prev, .. } => (*seq, *prev),
            other => panic!("not a change event: {other:?}"),
        })
        .collect()
}

#[test]
fn upsert_indexes_every_host_and_reports_seq() {
    let view = IngressView::default();
    assert_eq!(
        view.apply(&put(1, "acme", 1, &["acme.example.test", "a.example.test"])),
        Applied::Upserted
    );
    let (seq, rec) = view.lookup(&host("A.example.test")).unwrap();
    assert_eq!((seq, rec.record.id.as_str()), (1, "acme"));
    assert_eq!(owner(&view, "acme.example.test"), Some(("acme".into(), 1)));
    assert_eq!(owner(&view, "other.example.test"), None);
    assert_eq!(view.len(), 1);
}

#[test]
fn replayed_changes_are_skipped() {
    let view = IngressView::default();
    let first = put(1, "acme", 1, &["acme.example.test"]);
    view.apply(&first);
    view.apply(&put(2, "acme", 2, &["new.example.test"]));
    // At-least-once delivery: the tailer may see both again.
    assert_eq!(view.apply(&first), Applied::Replayed);
    assert_eq!(
        view.apply(&put(2, "acme", 2, &["new.example.test"])),
        Applied::Replayed
    );
    assert_eq!(view.seq(), 2);
    assert_eq!(owner(&view, "new.example.test"), Some(("acme".into(), 2)));
    assert_eq!(owner(&view, "acme.example.test"), None);
    assert_eq!(backlog(&view, 0).len(), 2);
}

#[test]
fn older_version_is_skipped_but_seq_advances() {
    let view = IngressView::default();
    view.apply(&put(1, "acme", 5, &["acme.example.test"]));
    assert_eq!(
        view.apply(&put(2, "acme", 4, &["old.example.test"])),
        Applied::Advanced
    );
    assert_eq!(
        view.apply(&put(3, "acme", 5, &["old.example.test"])),
        Applied::Advanced
    );
    assert_eq!(view.apply(&del(4, "acme", 5)), Applied::Advanced);
    assert_eq!(view.seq(), 4);
    assert_eq!(owner(&view, "acme.example.test"), Some(("acme".into(), 5)));
    assert_eq!(owner(&view, "old.example.test"), None);
    assert_eq!(backlog(&view, 0).len(), 1);
}

#[test]
fn delete_then_recreate() {
    let view = IngressView::default();
    view.apply(&put(1, "acme", 1, &["acme.example.test"]));
    assert_eq!(view.apply(&del(2, "acme", 2)), Applied::Deleted);
    assert_eq!(owner(&view, "acme.example.test"), None);
    assert!(view.is_empty());
    // A re-created tenant may start its versions again: the delete left no tombstone.
    assert_eq!(
        view.apply(&put(3, "acme", 1, &["acme.example.test"])),
        Applied::Upserted
    );
    assert_eq!(owner(&view, "acme.example.test"), Some(("acme".into(), 1)));
    let events = backlog(&view, 0);
    assert!(
        matches!(&events[1], ViewEvent::Delete { id, version: 2, hosts, .. }
        if id.as_str() == "acme" && hosts == &[host("acme.example.test")])
    );
}

#[test]
fn deleting_an_unknown_tenant_only_advances() {
    let view = IngressView::default();
    assert_eq!(view.apply(&del(1, "ghost", 3)), Applied::Advanced);
    assert_eq!(view.seq(), 1);
    assert!(backlog(&view, 0).is_empty());
}

#[test]
fn upsert_reports_removed_hosts() {
    let view = IngressView::default();
    view.apply(&put(1, "acme", 1, &["a.example.test", "b.example.test"]));
    view.apply(&put(2, "acme", 2, &["b.example.test", "c.example.test"]));
    let events = backlog(&view, 1);
    let ViewEvent::Upsert {
        removed_hosts,
        record,
        ..
    } = &events[0]
    else {
        panic!("expected an upsert: {events:?}");
    };
    assert_eq!(removed_hosts, &[host("a.example.test")]);
    assert_eq!(record.version, 2);
    assert_eq!(owner(&view, "a.example.test"), None);
    assert_eq!(owner(&view, "c.example.test"), Some(("acme".into(), 2)));
}

#[test]
fn host_moving_between_tenants_follows_the_log() {
    let view = IngressView::default();
    view.apply(&put(1, "acme", 1, &["shared.example.test"]));
    view.apply(&put(2, "acme", 2, &["acme.example.test"]));
    view.apply(&put(3, "globex", 1, &["shared.example.test"]));
    assert_eq!(owner(&view, "shared.example.test"), Some(("globex".into(), 1)));
    // Deleting the former owner must not unmap a host that now names someone else.
    view.apply(&del(4, "acme", 3));
    assert_eq!(owner(&view, "shared.example.test"), Some(("globex".into(), 1)));
}

#[test]
fn prev_chains_events_across_silent_changes() {
    let view = IngressView::default();
    view.apply(&put(1, "acme", 1, &["acme.example.test"]));
    view.apply(&shard(2));
    view.apply(&put(3, "acme", 0, &["x.example.test"])); // stale: no event
    view.apply(&put(4, "globex", 1, &["globex.example.test"]));
    view.apply(&del(5, "acme", 2));
    assert_eq!(prevs(&backlog(&view, 0)), vec![(1, 0), (4, 1), (5, 4)]);
    assert_eq!(view.position(), (5, 5));
    view.apply(&shard(6));
    assert_eq!(view.position(), (6, 5));
    assert_eq!(prevs(&backlog(&view, 4)), vec![(5, 4)]);
}

#[test]
fn ring_overflow_asks_old_subscribers_to_resync() {
    let view = IngressView::new(2, 16);
    for seq in 1..=3 {
        view.apply(&put(seq, "acme", seq, &["acme.example.test"]));
    }
    // Event 1 was dropped: a subscriber that has not seen it must reload the snapshot.
    assert!(matches!(view.subscribe(0).backlog, Backlog::Resync(3)));
    assert_eq!(prevs(&backlog(&view, 1)), vec![(2, 1), (3, 2)]);
    assert!(backlog(&view, 3).is_empty());
}

#[test]
fn silent_changes_do_not_force_a_resync() {
    let view = IngressView::new(1, 16);
    view.apply(&put(1, "acme", 1, &["acme.example.test"]));
    for seq in 2..10 {
        view.apply(&shard(seq));
    }
    // Nothing was dropped, so an old position is still served from the ring.
    assert_eq!(prevs(&backlog(&view, 0)), vec![(1, 0)]);
}

#[tokio::test]
async fn live_receiver_gets_events_after_the_backlog() {
    let view = IngressView::default();
    view.apply(&put(1, "acme", 1, &["acme.example.test"]));
    let mut sub = view.subscribe(0);
    view.apply(&put(2, "globex", 1, &["globex.example.test"]));
    assert_eq!(prevs(&backlog_of(sub.backlog)), vec![(1, 0)]);
    assert_eq!(prevs(&[sub.live.recv().await.unwrap()]), vec![(2, 1)]);
}

fn backlog_of(b: Backlog) -> Vec<ViewEvent> {
    match b {
        Backlog::Events(e) => e,
        Backlog::Resync(seq) => panic!("unexpected resync at {seq}"),
    }
}

#[test]
fn restore_resumes_from_the_snapshot_seq() {
    let view = IngressView::default();
    view.apply(&put(1, "acme", 1, &["acme.example.test"]));
    view.apply(&put(2, "globex", 1, &["globex.example.test"]));
    let restored = IngressView::default();
    restored.restore(view.snapshot().to_owned_snapshot());
    assert_eq!(restored.position(), (2, 2));
    assert_eq!(
        owner(&restored, "globex.example.test"),
        Some(("globex".into(), 1))
    );
    assert_eq!(
        restored.apply(&put(2, "globex", 1, &["globex.example.test"])),
        Applied::Replayed
    );
    // What happened before the snapshot is unknown to the ring.
    assert!(matches!(restored.subscribe(1).backlog, Backlog::Resync(2)));
    restored.apply(&put(3, "acme", 2, &["acme.example.test"]));
    assert_eq!(prevs(&backlog(&restored, 2)), vec![(3, 2)]);
}

#[test]
fn snapshot_file_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/tcs.json");
    let view = IngressView::default();
    view.apply(&put(1, "acme", 1, &["acme.example.test"]));
    view.apply(&put(2, "globex", 3, &["globex.example.test"]));
    snapshot::write_atomic(&path, &view.snapshot()).unwrap();
    let loaded = snapshot::load(&path).unwrap();
    assert_eq!(loaded, view.snapshot().to_owned_snapshot());
    assert_eq!(loaded.seq, 2);
    // Overwriting leaves exactly the snapshot, no temp file.
    view.apply(&del(3, "acme", 2));
    snapshot::write_atomic(&path, &view.snapshot()).unwrap();
    assert_eq!(snapshot::load(&path).unwrap().records.len(), 1);
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["tcs.json"]);
}

#[test]
fn missing_or_corrupt_snapshot_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tcs.json");
    assert_eq!(snapshot::load(&path), None);
    std::fs::write(&path, b"{\"seq\": 12, \"records\": [").unwrap();
    assert_eq!(snapshot::load(&path), None);
    std::fs::write(&path, b"{\"seq\": 12, \"records\": [{\"id\": \"Bad Id\"}]}").unwrap();
    assert_eq!(snapshot::load(&path), None);
    std::fs::write(&path, b"{\"seq\": 12, \"records\": []}").unwrap();
    assert_eq!(
        snapshot::load(&path),
        Some(ViewSnapshot {
            seq: 12,
            epoch: String::new(),
            records: vec![]
        })
    );
}

#[tokio::test]
async fn snapshot_writer_writes_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tcs.json");
    let view = Arc::new(IngressView::default());
    view.apply(&put(7, "acme", 1, &["acme.example.test"]));
    let shutdown = CancellationToken::new();
    shutdown.cancel();
    snapshot::run_writer(Arc::clone(&view), path.clone(), 0, shutdown).await;
    assert_eq!(snapshot::load(&path).unwrap().seq, 7);
}

const EXAMPLE: &str = r#"
region = "us-east-1"
listen = "127.0.0.1:7101"
catalogue = "http://127.0.0.1:7000"
snapshot = "./data/tcs-us-east-1.json"
[[consumers]]
name = "edge"
token = "dev-edge-token"
views = ["ingress"]
"#;

#[test]
fn example_config_parses_with_defaults() {
    let cfg = TcsConfig::from_toml(EXAMPLE).unwrap();
    assert_eq!(cfg.region.as_str(), "us-east-1");
    assert_eq!(cfg.max_lag, 100);
    assert!(!cfg.allow_faults);
    assert_eq!(cfg.consumers[0].views, vec!["ingress"]);
    // The dev stack writes configs: what it writes must load again.
    let again = TcsConfig::from_toml(&toml::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(again, cfg);
    assert!(!format!("{cfg:?}").contains("dev-edge-token"));
}

fn problems(text: &str) -> Vec<String> {
    match TcsConfig::from_toml(text) {
        Err(TcsError::InvalidConfig { problems, .. }) => problems,
        other => panic!("expected an invalid config, got {other:?}"),
    }
}

#[test]
fn config_errors_are_collected() {
    let text = format!(
        "{EXAMPLE}\n[[consumers]]\nname = \"blank\"\ntoken = \" \"\nviews = []\n\
         [[consumers]]\nname = \"copy\"\ntoken = \"dev-edge-token\"\nviews = [\"billing\"]\n"
    );
    let found = problems(&text);
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(found[0].contains("\"blank\" has an empty token"), "{found:?}");
    assert!(found[1].contains("\"copy\" reuses"), "{found:?}");
    assert!(found[2].contains("unknown view \"billing\""), "{found:?}");
    assert!(found.iter().all(|p| !p.contains("dev-edge-token")));
}

#[test]
fn config_rejects_unknown_fields_and_bad_urls() {
    let extra = format!("colour = \"red\"\n{EXAMPLE}");
    assert!(matches!(
        TcsConfig::from_toml(&extra),
        Err(TcsError::ParseConfig { .. })
    ));
    let bad_url = EXAMPLE.replace("http://127.0.0.1:7000", "not a url");
    assert_eq!(problems(&bad_url).len(), 1);
}

#[test]
fn config_load_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tcs.toml");
    assert!(matches!(TcsConfig::load(&path), Err(TcsError::ReadConfig { .. })));
    std::fs::write(&path, EXAMPLE.replace("dev-edge-token", "")).unwrap();
    let err = TcsConfig::load(&path).unwrap_err();
    assert!(err.to_string().contains("tcs.toml"), "{err}");
    std::fs::write(&path, EXAMPLE).unwrap();
    assert_eq!(TcsConfig::load(&path).unwrap().listen.port(), 7101);
}

#[test]
fn constant_time_eq_compares_whole_strings() {
    use crate::feed::bearer::constant_time_eq;
    assert!(constant_time_eq(b"dev-edge-token", b"dev-edge-token"));
    assert!(!constant_time_eq(b"dev-edge-token", b"dev-edge-tokem"));
    assert!(!constant_time_eq(b"dev-edge-token", b"dev-edge-token\0"));
    assert!(!constant_time_eq(b"", b"x"));
}

/// A config built in code is held to the rules a file is: `bind` refuses it before binding.
#[tokio::test]
async fn a_config_built_in_code_is_validated_at_bind() {
    let mut cfg = super::standalone::config("us-east-1", Vec::new()).unwrap();
    cfg.catalogue = "not a url".into();
    match super::bind(cfg).await {
        Err(e) => assert!(e.to_string().contains("not a url"), "{e}"),
        Ok(_) => panic!("a TCS with no usable catalogue URL bound"),
    }
}
