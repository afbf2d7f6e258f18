//! The cache-file reader: never a panic on a truncated, altered or hostile file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tenant_edge::context::persist::{check, parse_chunk};

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = check(data.to_vec()) {
        let _ = file.parse();
        for chunk in file.chunks(3) {
            let _ = parse_chunk(chunk);
        }
    }
    let _ = parse_chunk(data);
});
