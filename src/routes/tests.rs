use std::borrow::Cow;
use std::sync::Arc;

use proptest::prelude::*;

use super::path::{prefix_matches, prefix_problem, PathMatcher};
use super::*;

const DEV: &str = include_str!("../../routes/dev.toml");

const MINIMAL: &str = r#"
[[products]]
name = "jira"
prefixes = ["/"]
[[products]]
name = "confluence"
prefixes = ["/wiki", "/wiki/admin-x"]
[[shards]]
id = "jira-us-east-1"
product = "jira"
region = "us-east-1"
backends = ["127.0.0.1:9100"]
"#;

fn snapshot(text: &str) -> RouteSnapshot {
    match RouteSnapshot::from_toml_str(text) {
        Ok(s) => s,
        Err(e) => panic!("snapshot rejected:\n{e}"),
    }
}

fn problems(text: &str) -> Vec<String> {
    match RouteSnapshot::from_toml_str(text) {
        Ok(_) => panic!("snapshot accepted, expected problems"),
        Err(e) => e.problems(),
    }
}

fn assert_has(problems: &[String], needle: &str) {
    assert!(
        problems.iter().any(|p| p.contains(needle)),
        "no problem containing {needle:?} in:\n{}",
        problems.join("\n")
    );
}

#[test]
fn dev_file_is_the_contract_stack() {
    let s = snapshot(DEV);
    assert_eq!(s.version, "dev-1");
    assert_eq!(
        s.summary(),
        "ok: 2 products, 6 shards, 12 backends (version dev-1)"
    );
    let multi = s.shard("jira-us-multi").unwrap();
    let regions: Vec<&str> = multi.data_regions.iter().map(|r| r.as_str()).collect();
    assert_eq!(regions, ["us-east-1", "us-west-2"]);
    let shard = s.shard("confluence-eu-west-1").unwrap();
    assert_eq!(shard.product.as_str(), "confluence");
    assert_eq!(shard.region.as_str(), "eu-west-1");
    let ports: Vec<u16> = shard.backends.iter().map(|b| b.port()).collect();
    assert_eq!(ports, [9108, 9109]);
    assert!(s.shard("nope").is_none());
    assert_eq!(s.health_check.path, "/healthz");
}

#[test]
fn health_check_defaults_apply_when_omitted() {
    let hc = snapshot(MINIMAL).health_check;
    assert_eq!(hc.path, "/healthz");
    assert_eq!(hc.interval, Duration::from_millis(1000));
    assert_eq!(hc.timeout, Duration::from_millis(500));
    assert_eq!((hc.rise, hc.fall, hc.eject_after), (1, 2, 3));
    assert_eq!(hc.eject, Duration::from_millis(5000));
}

#[test]
fn default_version_is_a_stable_hash_of_the_contents() {
    let a = snapshot(MINIMAL).version;
    assert_eq!(a, snapshot(MINIMAL).version);
    assert_eq!(a.len(), 12);
    assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
    let changed = MINIMAL.replace("9100", "9200");
    assert_ne!(a, snapshot(&changed).version);
}

#[test]
fn match_path_takes_the_longest_prefix_on_segment_boundaries() {
    let s = snapshot(MINIMAL);
    let product = |p: &str| s.match_path(p).map(|r| r.name.as_str().to_owned());
    for path in ["/wiki", "/wiki/", "/wiki/x", "/wiki/admin-x", "/wiki/admin-x/y"] {
        assert_eq!(product(path).as_deref(), Some("confluence"), "{path}");
    }
    for path in ["/", "/wikipedia", "/wik", "/browse/X-1", "/Wiki"] {
        assert_eq!(product(path).as_deref(), Some("jira"), "{path}");
    }
    let confluence = s.match_path("/wiki").unwrap();
    assert_eq!(s.products[confluence.index].name, confluence.name);
}

#[test]
fn without_a_root_prefix_unmatched_paths_have_no_product() {
    let text = MINIMAL.replace(r#"prefixes = ["/"]"#, r#"prefixes = ["/jira"]"#);
    let s = snapshot(&text);
    assert!(s.match_path("/").is_none());
    assert!(s.match_path("/jiraffe").is_none());
    assert_eq!(s.match_path("/jira/x").unwrap().name.as_str(), "jira");
}

#[test]
fn every_problem_is_reported_with_its_place() {
    let text = r#"
version = "has space"
[health_check]
interval_ms = 100
timeout_ms = 100
rise = 0
fall = 0
eject_ms = 0
eject_after = 0
path = "healthz"
[[products]]
name = "jira"
prefixes = ["/", "/", "wiki", "/a/../b", "/a//b", "/x?y", "/x#y", "/%2e", "/t/"]
[[products]]
name = "jira"
prefixes = ["/"]
[[products]]
name = "jira"
prefixes = ["/"]
[[products]]
name = "Bad_Name"
prefixes = []
[[shards]]
id = "jira-x"
product = "jira"
region = "us-east-1"
backends = ["nope", "127.0.0.1:1", "127.0.0.1:1", "127.0.0.1:0"]
[[shards]]
id = "jira-x"
product = "bitbucket"
region = "us-east-1"
backends = []
[[shards]]
id = "UPPER"
product = "jira"
region = "Mars 1"
backends = ["10.0.0.1:80"]
"#;
    let p = problems(text);
    let expected = [
        "version: \"has space\"",
        "health_check: path \"healthz\"",
        "health_check.timeout_ms: 100 must be less than interval_ms (100)",
        "health_check.rise: 0 is out of range",
        "health_check.fall: 0 is out of range",
        "health_check.eject_ms: 0 is out of range",
        "health_check.eject_after: 0 is out of range",
        "products[0] (jira): prefix \"wiki\": must start with '/'",
        "products[0] (jira): prefix \"/a/../b\": must not contain '.' or '..' segments",
        "products[0] (jira): prefix \"/a//b\": must not contain '//'",
        "products[0] (jira): prefix \"/x?y\": must not contain '?' or '#'",
        "products[0] (jira): prefix \"/x#y\": must not contain '?' or '#'",
        "products[0] (jira): prefix \"/%2e\": must not contain '.' or '..' segments",
        "products[0] (jira): prefix \"/t/\": must not end with '/'",
        "products[1] (jira): duplicate product name, first at products[0]",
        "products[1] (jira): prefix \"/\": already used by products[0] (jira)",
        "products[0] (jira): prefix \"/\": listed twice",
        "products[2] (jira): duplicate product name, first at products[0]",
        "products[2] (jira): prefix \"/\": already used by products[0] (jira)",
        "products[3] (Bad_Name): no prefixes",
        "products[3] (Bad_Name): invalid product \"Bad_Name\"",
        "shards[0] (jira-x): backend \"nope\": invalid socket address",
        "shards[0] (jira-x): backend \"127.0.0.1:1\": listed twice",
        "shards[0] (jira-x): backend \"127.0.0.1:0\": port 0",
        "shards[1] (jira-x): duplicate shard id, first at shards[0]",
        "shards[1] (jira-x): unknown product \"bitbucket\"",
        "shards[1] (jira-x): no backends",
        "shards[2] (UPPER): invalid shard id",
        "shards[2] (UPPER): invalid region \"Mars 1\"",
    ];
    for needle in expected {
        assert_has(&p, needle);
    }
    assert_eq!(
        p.len(),
        expected.len(),
        "unexpected extra problems:\n{}",
        p.join("\n")
    );
}

/// `MINIMAL` with `data_regions = [list]` on its shard.
fn with_data_regions(list: &str) -> String {
    MINIMAL.replace(
        "region = \"us-east-1\"\n",
        &format!("region = \"us-east-1\"\ndata_regions = [{list}]\n"),
    )
}

fn data_regions_of(text: &str) -> Vec<String> {
    let s = snapshot(text);
    let shard = s.shard("jira-us-east-1").unwrap();
    shard.data_regions.iter().map(|r| r.to_string()).collect()
}

#[test]
fn data_regions_default_to_the_region_and_must_include_it() {
    assert_eq!(data_regions_of(MINIMAL), ["us-east-1"]);
    // Home first, whatever the order in the file.
    assert_eq!(
        data_regions_of(&with_data_regions(r#""us-west-2", "us-east-1""#)),
        ["us-east-1", "us-west-2"]
    );
    assert_has(
        &problems(&with_data_regions(r#""us-west-2""#)),
        "data_regions must include the shard's region us-east-1",
    );
    assert_has(
        &problems(&with_data_regions(r#""us-east-1", "eu-west-1", "eu-west-1""#)),
        "data region eu-west-1 listed twice",
    );
    assert_has(
        &problems(&with_data_regions(r#""us-east-1", "Not A Region""#)),
        "shards[0] (jira-us-east-1)",
    );
}

#[test]
fn no_products_is_a_problem() {
    assert_has(&problems("version = \"x\"\n"), "products: none defined");
}

#[test]
fn syntax_errors_are_one_problem_with_line_and_column() {
    let p = problems("version = \"a\"\n[[products]]\nname = \n");
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].starts_with("line 3, column 8: "), "{}", p[0]);
}

#[test]
fn unknown_fields_are_rejected() {
    let p = problems(&format!("{MINIMAL}\n[health_check]\nintervl_ms = 5\n"));
    assert_eq!(p.len(), 1, "{p:?}");
    assert_has(&p, "unknown field `intervl_ms`");
}

#[test]
fn route_error_displays_one_problem_per_line() {
    let err = RouteSnapshot::from_toml_str("").unwrap_err();
    assert_eq!(err.to_string().lines().count(), err.problems().len());
}

#[test]
fn json_view_has_version_shards_and_match_order() {
    let json = snapshot(DEV).to_json();
    assert_eq!(json["version"], "dev-1");
    assert_eq!(json["health_check"]["interval_ms"], 1000);
    assert_eq!(json["shards"]["jira-us-west-2"]["backends"][1], "127.0.0.1:9103");
    assert_eq!(json["match_order"][0]["prefix"], "/wiki");
    assert_eq!(json["match_order"][1]["product"], "jira");
    assert_eq!(json["products"][1]["name"], "confluence");
}

#[test]
fn normalize_path_cases() {
    let cases = [
        ("/", "/"),
        ("/a/b", "/a/b"),
        ("/a/b/", "/a/b/"),
        ("//", "/"),
        ("/a//b///c", "/a/b/c"),
        ("/a/./b", "/a/b"),
        ("/a/.", "/a/"),
        ("/a/b/..", "/a/"),
        ("/a/../b", "/b"),
        ("/..", "/"),
        ("/../../x", "/x"),
        ("/a/%2e/b", "/a/b"),
        ("/a/%2E%2e/b", "/b"),
        ("/a/.%2e/b", "/b"),
        ("/a/%2e./b", "/b"),
        ("/wiki/../secret", "/secret"),
        ("/a/.../b", "/a/.../b"),
        ("/a/%2e%2e%2e", "/a/%2e%2e%2e"),
        ("/a/.b/c.", "/a/.b/c."),
        ("/%2f..", "/%2f.."),
    ];
    for (input, want) in cases {
        assert_eq!(normalize_path(input).unwrap(), want, "{input}");
    }
}

#[test]
fn normalize_path_borrows_when_nothing_changes() {
    for path in ["/", "/wiki/x", "/a/b/", "/a/.b/c..d"] {
        assert!(matches!(normalize_path(path), Ok(Cow::Borrowed(_))), "{path}");
    }
    assert!(matches!(normalize_path("/a//b"), Ok(Cow::Owned(_))));
}

#[test]
fn normalize_path_rejects_relative_forms() {
    for path in ["", "*", "wiki", "http://x/y", "%2f"] {
        assert_eq!(normalize_path(path), Err(PathError::NotAbsolute), "{path:?}");
    }
}

#[test]
fn prefix_problems_accept_good_prefixes() {
    for prefix in ["/", "/wiki", "/a/b-c", "/%7euser"] {
        assert_eq!(prefix_problem(prefix), None, "{prefix}");
    }
}

fn naive_match(prefixes: &[(String, usize)], path: &str) -> Option<usize> {
    prefixes
        .iter()
        .filter(|(p, _)| p == "/" || path == p || path.starts_with(&format!("{p}/")))
        .max_by_key(|(p, _)| p.len())
        .map(|&(_, i)| i)
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("%2e".to_owned()),
        Just(".%2E".to_owned()),
        "[a-c.%]{1,4}",
    ]
}

fn path_strategy() -> impl Strategy<Value = String> {
    prop::collection::vec(segment(), 0..8).prop_map(|segs| format!("/{}", segs.join("/")))
}

proptest! {
    #[test]
    fn normalize_never_panics(input in ".*") {
        let _ = normalize_path(&input);
    }

    #[test]
    fn normalize_arbitrary_absolute_paths_is_idempotent(path in "/.{0,40}") {
        let once = normalize_path(&path).unwrap().into_owned();
        prop_assert_eq!(&*normalize_path(&once).unwrap(), &once);
        prop_assert!(!once.contains("//") && !once.contains("/./") && !once.contains("/../"));
    }

    #[test]
    fn normalize_is_idempotent_and_clean(path in path_strategy()) {
        let once = normalize_path(&path).unwrap().into_owned();
        let twice = normalize_path(&once).unwrap();
        prop_assert!(matches!(twice, Cow::Borrowed(_)), "{} -> {} not stable", path, once);
        prop_assert_eq!(&once, &*twice);
        prop_assert!(once.starts_with('/'));
        for bad in ["/./", "/../", "//"] {
            prop_assert!(!once.contains(bad), "{} -> {}", path, once);
        }
        prop_assert!(!once.ends_with("/.") && !once.ends_with("/.."), "{} -> {}", path, once);
    }

    #[test]
    fn matcher_agrees_with_naive_reference(
        prefixes in prop::collection::btree_set("/[ab]{1,2}(/[ab]{1,2}){0,2}", 0..6),
        root in any::<bool>(),
        path in "/[ab/]{0,10}",
    ) {
        let mut entries: Vec<(String, usize)> = prefixes.into_iter().enumerate().map(|(i, p)| (p, i)).collect();
        if root {
            entries.push(("/".to_owned(), entries.len()));
        }
        let matcher = PathMatcher::new(entries.iter().map(|(p, i)| (Box::from(p.as_str()), *i)).collect());
        prop_assert_eq!(matcher.find(&path), naive_match(&entries, &path));
        for (p, _) in &entries {
            prop_assert_eq!(prefix_matches(p, &path), naive_match(&[(p.clone(), 0)], &path).is_some());
        }
    }
}

mod store {
    use super::*;

    fn write_atomically(path: &std::path::Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[test]
    fn load_fails_on_a_bad_or_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.toml");
        assert!(matches!(RouteStore::load(&path), Err(RouteError::Read { .. })));
        write_atomically(&path, "[[products]]\nname = \"x\"\nprefixes = [\"x\"]\n");
        assert!(matches!(RouteStore::load(&path), Err(RouteError::Invalid { .. })));
    }

    #[test]
    fn reload_swaps_good_files_and_keeps_the_old_on_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.toml");
        write_atomically(&path, MINIMAL);
        let store = RouteStore::load(&path).unwrap();
        let mut updates = store.subscribe();
        let first = store.load_full();

        // Unchanged contents: counted, but nothing swapped and nobody woken.
        let same = store.reload().unwrap();
        assert!(Arc::ptr_eq(&first, &same));
        assert!(!updates.has_changed().unwrap());

        write_atomically(&path, &MINIMAL.replace("9100", "9200"));
        let second = store.reload().unwrap();
        assert_ne!(second.version, first.version);
        assert!(updates.has_changed().unwrap());
        assert!(Arc::ptr_eq(&updates.borrow_and_update(), &second));

        write_atomically(&path, "not = [toml");
        assert!(store.reload().is_err());
        assert!(Arc::ptr_eq(&store.load_full(), &second));
        assert!(!updates.has_changed().unwrap());
        assert_eq!((store.reloads_ok(), store.reloads_failed()), (2, 1));
        assert_eq!(
            store.current().shard("jira-us-east-1").unwrap().backends[0].port(),
            9200
        );
    }
}
