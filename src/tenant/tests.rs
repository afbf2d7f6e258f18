use super::*;
use proptest::prelude::*;

fn norm(raw: &str) -> Result<String, HostError> {
    let mut buf = [0u8; MAX_HOST_LEN];
    normalize_host(raw.as_bytes(), &mut buf).map(str::to_owned)
}

#[test]
fn normalises_case_port_and_trailing_dot() {
    assert_eq!(norm("ACME.Example.Test").as_deref(), Ok("acme.example.test"));
    assert_eq!(norm("acme.example.test:8080").as_deref(), Ok("acme.example.test"));
    assert_eq!(norm("acme.example.test.").as_deref(), Ok("acme.example.test"));
    assert_eq!(norm("acme.example.test.:443").as_deref(), Ok("acme.example.test"));
    assert_eq!(norm("localhost").as_deref(), Ok("localhost"));
}

#[test]
fn rejects_malformed_hosts() {
    assert_eq!(norm(""), Err(HostError::Empty));
    assert_eq!(norm("."), Err(HostError::Empty));
    assert_eq!(norm("a..b"), Err(HostError::BadLabel));
    assert_eq!(norm("acme.example.test.."), Err(HostError::BadLabel));
    assert_eq!(norm("ac me.test"), Err(HostError::BadChar));
    assert_eq!(norm("-acme.test"), Err(HostError::Hyphen));
    assert_eq!(norm("acme-.test"), Err(HostError::Hyphen));
    assert_eq!(norm("acme.test:"), Err(HostError::BadPort));
    assert_eq!(norm("acme.test:99999"), Err(HostError::BadPort));
    assert_eq!(norm("acme.test:80:80"), Err(HostError::BadPort));
    assert_eq!(norm("[::1]:80"), Err(HostError::IpLiteral));
    assert_eq!(norm("10.0.0.1"), Err(HostError::IpLiteral));
    assert_eq!(norm("10.0.0.1:80"), Err(HostError::IpLiteral));
    assert_eq!(norm("user@acme.test"), Err(HostError::Userinfo));
    assert_eq!(norm("acmé.test"), Err(HostError::BadChar));
    let label = "a".repeat(64);
    assert_eq!(norm(&format!("{label}.test")), Err(HostError::BadLabel));
    let long = ["abcdefghi"; 26].join(".");
    assert_eq!(long.len(), 259);
    assert_eq!(norm(&long), Err(HostError::TooLong));
}

#[test]
fn names_are_checked() {
    assert!(TenantId::new("acme").is_ok());
    assert!(TenantId::new("acme-2").is_ok());
    assert!(TenantId::new("").is_err());
    assert!(TenantId::new("-acme").is_err());
    assert!(TenantId::new("Acme").is_err());
    assert!(ShardId::new(&"a".repeat(64)).is_err());
}

#[test]
fn record_round_trips_as_json() {
    let json = r#"{"id":"acme","version":3,"realm":"us","hosts":["acme.example.test"],
        "placements":{"jira":{"shard":"jira-us-east-1"},"confluence":{"shard":"c-1","state":"frozen"}}}"#;
    let rec: IngressRecord = serde_json::from_str(json).unwrap();
    assert_eq!(rec.placement("jira").unwrap().state, PlacementState::Active);
    assert_eq!(rec.placement("confluence").unwrap().state, PlacementState::Frozen);
    assert!(rec.placement("bitbucket").is_none());
    let back: IngressRecord = serde_json::from_str(&serde_json::to_string(&rec).unwrap()).unwrap();
    assert_eq!(back, rec);
}

#[test]
fn bad_host_in_json_is_an_error() {
    let json = r#"{"id":"acme","version":1,"realm":"us","hosts":["10.0.0.1"],"placements":{}}"#;
    assert!(serde_json::from_str::<IngressRecord>(json).is_err());
}

/// The one-pass form and the rule-by-rule form agree, result and error alike.
fn agrees(raw: &[u8]) -> Result<(), TestCaseError> {
    let (mut a, mut b) = ([0u8; MAX_HOST_LEN], [0u8; MAX_HOST_LEN]);
    let fast = normalize_host(raw, &mut a).map(str::to_owned);
    let slow = normalize_slow(raw, &mut b).map(str::to_owned);
    prop_assert_eq!(fast, slow, "{:?}", String::from_utf8_lossy(raw));
    Ok(())
}

#[test]
fn the_fast_pass_agrees_on_edge_cases() {
    for raw in [
        "a",
        "a.",
        "a..",
        ".a",
        "a.b.",
        "a.b.:80",
        "a.b:80.",
        "1.2",
        "1.a",
        "a.1",
        "a.1.",
        "a-.b",
        "a.-b",
        "-a",
        "a-",
        "a_b.c",
        "_a",
        "A.B.C",
        "Ab.cD:0",
        "a:65535",
        "a:65536",
        "a:",
        "a::1",
        "a.b:8a",
        ".",
        ":80",
        "",
        "x@y",
        "[x]",
        "a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r.s.t.u.v.w.x.y.z",
    ] {
        agrees(raw.as_bytes()).unwrap();
    }
    let label = "a".repeat(63);
    agrees(format!("{label}.{label}.{label}.{label}").as_bytes()).unwrap(); // 255 bytes
    agrees(format!("{label}.{label}.{label}.{}", "a".repeat(61)).as_bytes()).unwrap(); // 253
    agrees(format!("{label}.{label}.{label}.{}.", "a".repeat(61)).as_bytes()).unwrap();
    agrees(format!("{label}a.b").as_bytes()).unwrap();
    agrees(format!("b.{label}a").as_bytes()).unwrap();
    agrees(format!("b.{label}a.").as_bytes()).unwrap();
}

proptest! {
    #[test]
    fn the_fast_pass_agrees_with_the_rules(raw in "[a-zA-Z0-9._:@-]{0,80}") {
        agrees(raw.as_bytes())?;
    }

    #[test]
    fn the_fast_pass_agrees_on_long_and_odd_bytes(raw in proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'.'), Just(b'-'), Just(b'9'), Just(b':'), any::<u8>()], 0..300)) {
        agrees(&raw)?;
    }

    #[test]
    fn normalisation_is_idempotent(raw in "[a-zA-Z0-9.:_-]{0,80}") {
        if let Ok(once) = norm(&raw) {
            prop_assert_eq!(norm(&once), Ok(once.clone()));
            prop_assert!(once.len() <= MAX_HOST_LEN);
            prop_assert!(!once.ends_with('.'));
            prop_assert!(once.bytes().all(|b| !b.is_ascii_uppercase()));
        }
    }

    #[test]
    fn never_panics_on_bytes(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut buf = [0u8; MAX_HOST_LEN];
        let _ = normalize_host(&raw, &mut buf);
    }

    #[test]
    fn valid_names_with_ports_normalise(labels in proptest::collection::vec("[a-z][a-z0-9]{0,10}", 1..5), port in 0u16..) {
        let name = labels.join(".");
        prop_assert_eq!(norm(&format!("{}:{}", name.to_uppercase(), port)), Ok(name));
    }
}

#[test]
fn placements_read_and_write_as_an_object_sorted_by_product() {
    let json = r#"{"wiki":{"shard":"wiki-1"},"jira":{"shard":"jira-1","state":"frozen"}}"#;
    let placements: Placements = serde_json::from_str(json).unwrap();
    assert_eq!(placements.len(), 2);
    assert_eq!(placements.get("jira").unwrap().state, PlacementState::Frozen);
    assert_eq!(placements.get("wiki").unwrap().shard.as_str(), "wiki-1");
    assert!(placements.get("confluence").is_none());
    let names: Vec<&str> = placements.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(names, ["jira", "wiki"]);
    let written = serde_json::to_string(&placements).unwrap();
    assert_eq!(serde_json::from_str::<Placements>(&written).unwrap(), placements);
    assert!(written.starts_with(r#"{"jira":"#), "{written}");
}

#[test]
fn a_product_placed_twice_is_refused() {
    let json = r#"{"jira":{"shard":"a"},"jira":{"shard":"b"}}"#;
    let err = serde_json::from_str::<Placements>(json).unwrap_err();
    assert!(err.to_string().contains("placed twice"), "{err}");
}

#[test]
fn valid_hosts_take_the_one_pass() {
    for raw in [
        "t1.bench.test",
        "acme.example.test",
        "Acme.Example.Test:8443",
        "a.b.",
        "x_y.z",
    ] {
        assert!(valid_host(raw.as_bytes()).is_some(), "{raw}");
    }
    for raw in ["a..b", "10.0.0.1", "-a.b", "a@b", "a.b:x"] {
        assert!(valid_host(raw.as_bytes()).is_none(), "{raw}");
    }
}
