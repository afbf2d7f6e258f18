//! The cache file on real files in temp dirs; prewarm against a real TCS API on loopback.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::context::testing::{self, put};
use crate::context::{CacheConfig, Origin, TcsClient};
use crate::metrics::EdgeMetrics;
use crate::tcs::Tcs;
use crate::tenant::{Host, Placement, PlacementState, Product, Realm, ShardId, TenantId};

fn record(id: &str, version: u64, hosts: &[&str]) -> IngressRecord {
    let placements: BTreeMap<Product, Placement> = [(
        Product::new("jira").unwrap(),
        Placement {
            shard: ShardId::new("jira-us-east-1").unwrap(),
            state: PlacementState::Frozen,
        },
    )]
    .into();
    IngressRecord {
        id: TenantId::new(id).unwrap(),
        version,
        realm: Realm::new("us").unwrap(),
        hosts: hosts.iter().map(|h| Host::parse(h).unwrap()).collect(),
        placements: placements.into(),
        rate_limits: Default::default(),
        products: None,
        data_key: None,
    }
}

/// A cache whose TCS is `url` (nothing listens there unless a test serves one).
fn cache_at(url: &str) -> Arc<TenantCache> {
    let endpoint = testing::endpoint("us-east-1", url);
    let client = TcsClient::new(&[endpoint], "us-east-1", crate::context::LookupConfig::default()).unwrap();
    Arc::new(TenantCache::new(
        &CacheConfig::default(),
        Arc::new(client),
        EdgeMetrics::new().unwrap(),
    ))
}

fn cache() -> Arc<TenantCache> {
    // Port 9 (discard) is closed on loopback: every fetch fails fast.
    cache_at("http://127.0.0.1:9")
}

fn status_of(cache: &TenantCache) -> Arc<StreamStatus> {
    Arc::new(StreamStatus::new(&cache.client))
}

/// Puts `record` in the cache for each of its hosts, unless a newer version is held (pushes
/// from the stream only update hosts already held, so tests load through `restore`).
async fn push(cache: &TenantCache, record: IngressRecord) {
    let region: Arc<str> = "us-east-1".into();
    cache.restore(vec![record], &region, Origin::Stream).await;
}

/// Puts `record` in the cache as a restore from the cache file would.
async fn from_file(cache: &TenantCache, record: IngressRecord) {
    let region: Arc<str> = "file".into();
    cache.restore(vec![record], &region, Origin::File).await;
}

async fn version_of(cache: &TenantCache, host: &str) -> Option<u64> {
    cache.peek(host).map(|e| e.record.version)
}

/// A cache holding `acme` on two hosts (one stale), and `globex`.
async fn warm_cache() -> Arc<TenantCache> {
    let cache = cache();
    let region: Arc<str> = "us-east-1".into();
    // A fill left `www.acme` at version 1 while the stream moved both hosts to version 2...
    let old = vec![record("acme", 1, &["www.acme.example.test"])];
    cache.restore(old, &region, Origin::Fetch).await;
    push(
        &cache,
        record("acme", 2, &["acme.example.test", "acme.example.net"]),
    )
    .await;
    push(&cache, record("globex", 5, &["globex.example.test"])).await;
    cache
}

#[tokio::test]
async fn records_are_deduplicated_by_tenant_keeping_the_highest_version() {
    let cache = warm_cache().await;
    let records = cache.records();
    let ids: Vec<(&str, u64)> = records.iter().map(|r| (r.id.as_str(), r.version)).collect();
    assert_eq!(ids, [("acme", 2), ("globex", 5)]);
}

#[tokio::test]
async fn file_round_trip_restores_every_host_with_its_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/edge-cache.json");
    let warm = warm_cache().await;
    write_atomic(&path, 17, 1234, &warm.records()).unwrap();

    let read_back = read(&path).unwrap().unwrap();
    assert_eq!(
        (
            read_back.seq,
            read_back.written_ms,
            read_back.records,
            read_back.hosts
        ),
        (17, 1234, 2, 3)
    );
    let cold = cache();
    let stream = status_of(&cold);
    let file = FileStatus::new(Some(path.clone()));
    restore_file(&cold, &stream, &path, &file).await;
    assert_eq!(stream.applied(), 17);
    assert_eq!(version_of(&cold, "acme.example.test").await, Some(2));
    assert_eq!(version_of(&cold, "acme.example.net").await, Some(2));
    // The stale host was only held by the older record: it is not brought back.
    assert_eq!(version_of(&cold, "www.acme.example.test").await, None);
    let globex = cold.peek("globex.example.test").unwrap();
    assert_eq!(*globex.record, record("globex", 5, &["globex.example.test"]));
    assert_eq!(globex.origin, Origin::File);
    let report = file.report();
    assert_eq!((report.loaded_records, report.loaded_seq), (2, 17));
}

#[tokio::test]
async fn restore_never_moves_a_host_backwards() {
    let cache = cache();
    push(&cache, record("acme", 4, &["acme.example.test"])).await;
    from_file(&cache, record("acme", 3, &["acme.example.test"])).await;
    assert_eq!(version_of(&cache, "acme.example.test").await, Some(4));
}

#[tokio::test]
async fn many_records_round_trip_through_the_parallel_parser() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge-cache.json");
    // Enough bytes to be split into chunks parsed on several threads.
    let records: Vec<Arc<IngressRecord>> = (0..20_000)
        .map(|i| {
            let id = format!("t{i:05}");
            Arc::new(record(&id, i + 1, &[&format!("{id}.example.test")]))
        })
        .collect();
    write_atomic(&path, 99, 1, &records).unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() > 2 * (1 << 20));
    let file = read(&path).unwrap().unwrap();
    let parsed = file.parse().unwrap();
    assert_eq!(parsed.len(), records.len());
    assert!(parsed.iter().zip(&records).all(|(a, b)| a == &**b));
    // The pipelined restore gets every host too.
    let cache = cache();
    assert_eq!(cache.restore_file_records(&file).unwrap(), records.len());
    assert_eq!(version_of(&cache, "t19999.example.test").await, Some(20_000));
}

fn written_file(dir: &Path) -> (PathBuf, Vec<u8>) {
    let path = dir.join("edge-cache.json");
    let records = vec![
        Arc::new(record("acme", 2, &["acme.example.test"])),
        Arc::new(record("globex", 5, &["globex.example.test"])),
    ];
    write_atomic(&path, 8, 1, &records).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

#[test]
fn a_truncated_or_altered_file_is_rejected_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (_, bytes) = written_file(dir.path());
    assert!(check(bytes.clone()).is_ok());
    let lines: Vec<usize> = (0..bytes.len()).filter(|&i| bytes[i] == b'\n').collect();
    // Cut anywhere, at a line end or inside a line, the file is refused.
    for cut in [
        lines[0] + 1,
        lines[1] + 1,
        lines[2] + 1,
        lines[1] - 3,
        bytes.len() - 1,
    ] {
        assert!(check(bytes[..cut].to_vec()).is_err(), "cut at {cut} accepted");
    }
    // A flipped letter inside a record still parses, but fails the checksum.
    let mut altered = bytes.clone();
    let at = bytes.windows(4).position(|w| w == b"acme").unwrap();
    altered[at] = b'b';
    assert_eq!(check(altered).unwrap_err(), "checksum mismatch");
    assert!(check(b"".to_vec()).is_err());
    assert!(check(b"not a cache file\n".to_vec()).is_err());
}

#[tokio::test]
async fn a_corrupt_file_is_logged_set_aside_and_the_edge_starts_empty() {
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes) = written_file(dir.path());
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let cache = cache();
    let stream = status_of(&cache);
    let file = FileStatus::new(Some(path.clone()));
    restore_file(&cache, &stream, &path, &file).await;
    assert!(cache.peek("acme.example.test").is_none());
    assert_eq!(stream.applied(), 0);
    assert_eq!(file.report().loaded_records, 0);
    assert!(!path.exists());
    assert!(dir.path().join("edge-cache.json.corrupt").exists());
}

#[tokio::test]
async fn a_missing_file_is_a_first_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge-cache.json");
    assert!(read(&path).unwrap().is_none());
    let cache = cache();
    let stream = status_of(&cache);
    restore_file(&cache, &stream, &path, &FileStatus::new(None)).await;
    assert_eq!(stream.applied(), 0);
}

#[tokio::test]
async fn writes_skip_unchanged_content_and_follow_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge-cache.json");
    let cache = warm_cache().await;
    let stream = status_of(&cache);
    stream.set_applied(30);
    let file = FileStatus::new(Some(path.clone()));
    let print = write_once(&cache, &stream, &path, &file, None).await;
    let print = write_once(&cache, &stream, &path, &file, print).await;
    let report = file.report();
    assert_eq!((report.writes, report.unchanged), (1, 1));
    assert_eq!((report.last_write_seq, report.last_write_records), (30, 2));
    // A newer version of one tenant is a change.
    push(&cache, record("globex", 6, &["globex.example.test"])).await;
    write_once(&cache, &stream, &path, &file, print).await;
    assert_eq!(file.report().writes, 2);
    let records = read(&path).unwrap().unwrap().parse().unwrap();
    assert_eq!(records[1].version, 6);
}

#[tokio::test]
async fn the_writer_writes_once_more_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge-cache.json");
    let cache = warm_cache().await;
    let stream = status_of(&cache);
    let file = Arc::new(FileStatus::new(Some(path.clone())));
    let shutdown = CancellationToken::new();
    let every = Duration::from_secs(3600);
    let writer = tokio::spawn(write_periodically(
        cache,
        stream,
        path.clone(),
        every,
        file.clone(),
        shutdown.clone(),
    ));
    shutdown.cancel();
    writer.await.unwrap();
    assert_eq!(file.report().writes, 1);
    assert_eq!(read(&path).unwrap().unwrap().records, 2);
}

#[tokio::test]
async fn a_failed_write_is_reported_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    // The "directory" is a file: creating it fails.
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, b"x").unwrap();
    let path = blocker.join("edge-cache.json");
    let cache = warm_cache().await;
    let stream = status_of(&cache);
    let file = FileStatus::new(Some(path.clone()));
    assert!(write_once(&cache, &stream, &path, &file, None).await.is_none());
    let report = file.report();
    assert_eq!((report.writes, report.write_failures), (0, 1));
    assert!(report.last_error.is_some());
}

/// A TCS API on a loopback port, its view filled through the real applier.
async fn serve_tcs(shutdown: &CancellationToken) -> (Tcs, String) {
    let tcs = testing::tcs();
    let url = testing::serve_on_loopback(&tcs, shutdown).await;
    (tcs, url)
}

#[tokio::test]
async fn prewarm_loads_the_bulk_snapshot_over_what_the_file_gave() {
    let shutdown = CancellationToken::new();
    let (tcs, url) = serve_tcs(&shutdown).await;
    tcs.ingress().apply(&put(1, "acme", 1, &["acme.example.test"]));
    tcs.ingress().apply(&put(2, "acme", 2, &["acme.example.test"]));
    tcs.ingress()
        .apply(&put(3, "initech", 1, &["initech.example.test"]));
    let cache = cache_at(&url);
    let stream = status_of(&cache);
    // The file knew a tenant since deleted and an older acme.
    let region: Arc<str> = "file".into();
    let from_file = vec![
        record("acme", 1, &["acme.example.test"]),
        record("gone", 1, &["gone.example.test"]),
    ];
    cache.restore(from_file, &region, Origin::File).await;
    let file = FileStatus::new(None);
    assert!(prewarm(&cache, &stream, &file).await);
    assert_eq!(stream.applied(), 3);
    assert_eq!(version_of(&cache, "acme.example.test").await, Some(2));
    assert_eq!(version_of(&cache, "initech.example.test").await, Some(1));
    assert_eq!(version_of(&cache, "gone.example.test").await, None);
    assert!(file.report().prewarmed);
    shutdown.cancel();
}

#[tokio::test]
async fn prewarm_without_any_tcs_keeps_what_the_file_gave() {
    let cache = cache();
    let stream = status_of(&cache);
    stream.set_applied(12);
    from_file(&cache, record("acme", 1, &["acme.example.test"])).await;
    let file = FileStatus::new(None);
    assert!(!prewarm(&cache, &stream, &file).await);
    assert_eq!(stream.applied(), 12);
    assert_eq!(version_of(&cache, "acme.example.test").await, Some(1));
    assert!(!file.report().prewarmed);
}

#[test]
fn a_restore_larger_than_the_bound_keeps_the_bound() {
    let endpoint = testing::endpoint("us-east-1", "http://127.0.0.1:9");
    let client =
        Arc::new(TcsClient::new(&[endpoint], "us-east-1", crate::context::LookupConfig::default()).unwrap());
    let config = CacheConfig {
        max_entries: 500,
        ..CacheConfig::default()
    };
    let cache = TenantCache::with_capacity(&config, client, EdgeMetrics::new().unwrap(), 1000);
    let records: Vec<_> = (0..1000)
        .map(|i| record(&format!("t{i}"), 1, &[&format!("t{i}.example.test")]))
        .collect();
    let region: Arc<str> = "us-east-1".into();
    // Outside a runtime the sweep runs inline, so the bound holds on return.
    futures::executor::block_on(cache.restore(records, &region, Origin::Snapshot));
    assert!(cache.len() <= 500, "{} hosts held", cache.len());
    assert!(
        cache.len() >= 500 - 500 / 16,
        "a sweep drops only down to its low-water mark"
    );
}

#[tokio::test]
async fn a_record_that_does_not_parse_leaves_the_cache_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge-cache.json");
    // A well-framed, checksummed file whose second record is not a record (another build).
    let good = serde_json::to_string(&record("acme", 2, &["acme.example.test"])).unwrap();
    let header = format!(r#"{{"format":"{FORMAT}","version":{VERSION},"seq":5,"written_ms":1}}"#);
    let covered = format!("{header}\n{good}\n{{\"id\":\"globex\"}}\n");
    let trailer = format!(
        r#"{{"records":2,"hosts":2,"crc32":{}}}"#,
        crc32fast::hash(covered.as_bytes())
    );
    std::fs::write(&path, format!("{covered}{trailer}\n")).unwrap();
    assert!(read(&path).unwrap().is_some(), "the framing is sound");
    let cache = cache();
    let stream = status_of(&cache);
    let file = FileStatus::new(Some(path.clone()));
    restore_file(&cache, &stream, &path, &file).await;
    assert!(cache.peek("acme.example.test").is_none());
    assert_eq!(stream.applied(), 0);
    assert_eq!(file.report().loaded_records, 0);
}
