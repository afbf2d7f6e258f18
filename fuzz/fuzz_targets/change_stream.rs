//! The TCS change-stream decoder: bytes split into lines (bounded), each decoded as an event;
//! never a panic, never a line longer than the bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tenant_edge::feed::{Lines, ViewEvent};

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut lines = Lines::new(MAX);
    // Fed in uneven chunks, as a network delivers them.
    for chunk in data.chunks(97) {
        lines.push(chunk);
        loop {
            match lines.next_line() {
                Ok(Some(line)) => {
                    assert!(line.len() <= MAX);
                    let _ = serde_json::from_slice::<ViewEvent>(&line);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
