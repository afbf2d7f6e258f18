//! Bearer tokens on the wire (`Authorization: Bearer <token>`), for every API that takes one:
//! the catalogue, the TCS views and admin endpoints, the demo shards' mover hooks.

use http::header::{HeaderMap, AUTHORIZATION};

/// The token of an `Authorization: Bearer ...` field (scheme case-insensitive, surrounding
/// whitespace trimmed), if there is one.
pub fn bearer_token(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(AUTHORIZATION)?.as_bytes();
    let scheme = value.get(..7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| value[7..].trim_ascii())
}

/// Whether `headers` carry `token` as their bearer token, compared in constant time.
pub fn bears(headers: &HeaderMap, token: &str) -> bool {
    bearer_token(headers).is_some_and(|presented| constant_time_eq(presented, token.as_bytes()))
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// The token a token file holds: its first line, trimmed; `None` when that is empty.
pub fn read_token_file(path: &std::path::Path) -> std::io::Result<Option<String>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .next()
        .map(|l| l.trim().to_owned())
        .filter(|t| !t.is_empty()))
}
