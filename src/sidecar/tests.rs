use super::*;

fn load(text: &str) -> Result<SidecarConfig, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("sidecar.toml");
    std::fs::write(&path, text).map_err(|e| e.to_string())?;
    SidecarConfig::load(&path).map_err(|e| e.to_string())
}

const GOOD: &str = r#"
view = "jira"
region = "us-east-1"
listen = "127.0.0.1:7400"
cache_file = "sidecar-jira.cache"
prewarm = true

[secrets]
master_key = "master.key"

[[tcs]]
region = "us-east-1"
url = "http://127.0.0.1:7101"
token = "jira-token"
"#;

#[test]
fn a_good_config_loads() {
    let cfg = load(GOOD).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.view, "jira");
    assert!(cfg.prewarm);
    assert_eq!(cfg.cache_file_interval_secs, 30);
    let settings = cfg.cache_settings();
    assert_eq!(settings.view, "jira");
    assert_eq!(settings.region, "us-east-1");
}

#[test]
fn unknown_settings_and_kms_with_a_key_file_are_refused() {
    let err = load(&format!("{GOOD}\nbogus = 1\n")).unwrap_err();
    assert!(err.contains("bogus"), "{err}");
    let both = GOOD.replace(
        "master_key = \"master.key\"",
        "master_key = \"master.key\"\n[secrets.kms]\nkey_id = \"k\"",
    );
    let err = load(&both).unwrap_err();
    assert!(err.contains("two master keys"), "{err}");
    let open = GOOD.replace("127.0.0.1:7400", "0.0.0.0:7400");
    assert!(load(&open).unwrap_err().contains("loopback"));
}
