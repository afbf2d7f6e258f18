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
    assert_eq!(cfg.served(), ["jira"]);
    assert!(cfg.prewarm);
    assert_eq!(cfg.cache_file_interval_secs, 30);
    let settings = cfg.cache_settings("jira");
    assert_eq!(settings.view, "jira");
    assert_eq!(settings.region, "us-east-1");
    assert_eq!(settings.cache_file, Some(PathBuf::from("sidecar-jira.cache")));
}

#[test]
fn several_views_each_have_a_cache_file() {
    let two = GOOD.replace("view = \"jira\"", "views = [\"jira\", \"confluence\"]");
    let cfg = load(&two).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.served(), ["jira", "confluence"]);
    let file = |view: &str| cfg.cache_settings(view).cache_file;
    assert_eq!(file("jira"), Some(PathBuf::from("sidecar-jira.jira.cache")));
    assert_eq!(
        file("confluence"),
        Some(PathBuf::from("sidecar-jira.confluence.cache"))
    );
    // Ambiguous or empty: refused, every problem named.
    let both = GOOD.replace("view = \"jira\"", "view = \"jira\"\nviews = [\"confluence\"]");
    assert!(load(&both).unwrap_err().contains("give one of them"));
    let none = GOOD.replace("view = \"jira\"", "");
    assert!(load(&none).unwrap_err().contains("no view"));
    let twice = GOOD.replace("view = \"jira\"", "views = [\"jira\", \"ingress\", \"jira\"]");
    let err = load(&twice).unwrap_err();
    assert!(err.contains("named twice") && err.contains("the edge's"), "{err}");
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
