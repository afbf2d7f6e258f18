//! The lean HTTP/1.1 head parser: never a panic, and every range it returns (fields to drop)
//! lies inside the bytes it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tenant_edge::edge::h1::parse::{request, Limits, Parsed};

const LIMITS: Limits = Limits {
    max_target: 8192,
    max_head: 32768,
};

fuzz_target!(|data: &[u8]| {
    let mut drops = Vec::new();
    if let Ok(Parsed::Complete(head)) = request(data, LIMITS, &mut drops) {
        for r in &drops {
            assert!(r.start <= r.end && r.end <= data.len(), "{r:?} outside {} bytes", data.len());
        }
        let _ = tenant_edge::edge::h1::view(data, &head);
    }
});
