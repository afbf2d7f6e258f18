//! Host normalisation and path normalisation with matching: never a panic; a normalised host
//! parses as itself; normalising is idempotent; a normalised path matches as its own product.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use tenant_edge::routes::{normalize_path, RouteSnapshot};
use tenant_edge::tenant::{normalize_host, Host, MAX_HOST_LEN};

fn routes() -> &'static RouteSnapshot {
    static ROUTES: OnceLock<RouteSnapshot> = OnceLock::new();
    ROUTES.get_or_init(|| {
        RouteSnapshot::from_toml_str(include_str!("../../routes/dev.toml")).expect("the dev routes are valid")
    })
}

fuzz_target!(|data: &[u8]| {
    let mut buf = [0u8; MAX_HOST_LEN];
    if let Ok(host) = normalize_host(data, &mut buf) {
        let host = host.to_owned();
        let parsed = Host::parse(&host).expect("a normalised host parses");
        assert_eq!(parsed.as_str(), host, "parsing a normalised host keeps it");
        let mut again = [0u8; MAX_HOST_LEN];
        assert_eq!(normalize_host(host.as_bytes(), &mut again).ok(), Some(host.as_str()));
    }
    if let Ok(path) = std::str::from_utf8(data) {
        if let Ok(normal) = normalize_path(path) {
            let normal = normal.into_owned();
            let twice = normalize_path(&normal).expect("a normalised path normalises");
            assert_eq!(twice, normal.as_str(), "normalising is idempotent");
            let product = routes().match_path(&normal).map(|p| p.index);
            assert_eq!(product, routes().match_path(&twice).map(|p| p.index));
        }
    }
});
