//! Request path normalisation and the product prefix matcher: both run once per request.

use std::borrow::Cow;

/// Why a request path was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Empty, or not starting with `/` (authority-form, asterisk-form, garbage).
    #[error("path does not start with '/'")]
    NotAbsolute,
}

/// What kind of dot segment a path segment is, once `%2e` is read as `.`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dots {
    One,
    Two,
}

/// Reads `seg` as a dot segment (`.`, `..`, `%2e`, `.%2E`, ...), or `None` for a normal one.
///
/// Percent-encoded dots count because a backend that decodes before resolving would otherwise
/// see a different path than the one we matched the product on.
fn dot_segment(seg: &[u8]) -> Option<Dots> {
    let mut dots = 0;
    let mut rest = seg;
    while !rest.is_empty() {
        match rest {
            [b'.', tail @ ..] => rest = tail,
            [b'%', b'2', b'e' | b'E', tail @ ..] => rest = tail,
            _ => return None,
        }
        dots += 1;
        if dots > 2 {
            return None;
        }
    }
    match dots {
        1 => Some(Dots::One),
        2 => Some(Dots::Two),
        _ => None,
    }
}

/// True when `path` (after the leading `/`) has no empty inner segment and no dot segment.
fn is_normal(rest: &str) -> bool {
    let mut segments = rest.split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        // A trailing `/` (empty last segment) is meaningful and kept.
        if (seg.is_empty() && !last) || dot_segment(seg.as_bytes()).is_some() {
            return false;
        }
    }
    true
}

/// Normalises the path component of a request target (no query string).
///
/// Resolves `.` and `..` segments, also percent-encoded (`%2e`, `.%2E`, ...), with `..` above
/// the root staying at the root, and collapses repeated `/`. A trailing `/` is kept. Returns
/// `Cow::Borrowed` without allocating when the path is already normal, which is the common case.
/// Other percent escapes are left alone: the backend receives what the client sent.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    let rest = path.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    if is_normal(rest) {
        return Ok(Cow::Borrowed(path));
    }
    Ok(Cow::Owned(resolve(rest)))
}

/// The slow path of [`normalize_path`]: rebuilds the path segment by segment.
fn resolve(rest: &str) -> String {
    // `out` holds "/seg1/seg2" without a trailing slash; the root is the empty string.
    let mut out = String::with_capacity(rest.len() + 1);
    let mut directory = false;
    for seg in rest.split('/') {
        match dot_segment(seg.as_bytes()) {
            Some(Dots::Two) => {
                let parent = out.rfind('/').unwrap_or(0);
                out.truncate(parent);
                directory = true;
            }
            Some(Dots::One) => directory = true,
            None if seg.is_empty() => directory = true,
            None => {
                out.push('/');
                out.push_str(seg);
                directory = false;
            }
        }
    }
    if out.is_empty() || directory {
        out.push('/');
    }
    out
}

/// Checks a configured prefix; returns why it is unusable, if it is.
pub(crate) fn prefix_problem(prefix: &str) -> Option<&'static str> {
    let Some(rest) = prefix.strip_prefix('/') else {
        return Some("must start with '/'");
    };
    if prefix.bytes().any(|b| b == b'?' || b == b'#') {
        return Some("must not contain '?' or '#'");
    }
    if prefix
        .bytes()
        .any(|b| b.is_ascii_control() || b == b' ' || !b.is_ascii())
    {
        return Some("must be printable ASCII without spaces");
    }
    if prefix.contains("//") {
        return Some("must not contain '//'");
    }
    if rest.split('/').any(|seg| dot_segment(seg.as_bytes()).is_some()) {
        return Some("must not contain '.' or '..' segments");
    }
    if prefix.len() > 1 && prefix.ends_with('/') {
        return Some("must not end with '/' (\"/wiki\" already matches \"/wiki/\")");
    }
    None
}

/// True when `prefix` matches `path` on a segment boundary (`/wiki` matches `/wiki`, `/wiki/`,
/// `/wiki/x`, not `/wikipedia`; `/` matches every path).
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return path.starts_with('/');
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Longest-prefix matcher over the products' path prefixes, built once per snapshot.
#[derive(Debug, Clone, Default)]
pub(crate) struct PathMatcher {
    /// `(prefix, product index)`, longest prefix first, so the first hit is the longest match.
    entries: Vec<(Box<str>, usize)>,
}

impl PathMatcher {
    /// Builds the matcher; prefixes must already be validated and unique.
    pub(crate) fn new(mut entries: Vec<(Box<str>, usize)>) -> Self {
        entries.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Self { entries }
    }

    /// The index of the product whose prefix is the longest match for `path`.
    ///
    /// A linear scan: a snapshot has a handful of prefixes, and this touches no heap.
    pub(crate) fn find(&self, path: &str) -> Option<usize> {
        self.entries
            .iter()
            .find(|(prefix, _)| prefix_matches(prefix, path))
            .map(|&(_, index)| index)
    }

    /// The prefixes in match order (longest first).
    pub(crate) fn entries(&self) -> &[(Box<str>, usize)] {
        &self.entries
    }
}
