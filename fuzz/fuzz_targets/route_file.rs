//! The route-file parser and validator: never a panic; a file it accepts serves every path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tenant_edge::routes::RouteSnapshot;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(snapshot) = RouteSnapshot::from_toml_str(text) {
        for path in ["/", "/wiki", "/wiki/x", "/a/b"] {
            let _ = snapshot.match_path(path);
        }
        let _ = snapshot.to_json();
        let _ = snapshot.summary();
    }
});
