//! Domain types shared by every role: hosts, tenant and shard identifiers, placements, and the
//! ingress view of a tenant.
//!
//! This module imports nothing of the roles. Every type here validates on construction, so code
//! holding one never re-checks it.

use std::collections::BTreeMap;
use std::fmt;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

/// The longest DNS name we accept, in bytes, without the trailing dot.
pub const MAX_HOST_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// Why a `Host` header (or `:authority`) was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// Nothing left after stripping the port and trailing dot.
    #[error("empty host")]
    Empty,
    /// Longer than 253 bytes.
    #[error("host longer than 253 bytes")]
    TooLong,
    /// A label was empty or longer than 63 bytes.
    #[error("bad label length")]
    BadLabel,
    /// A byte outside letters, digits, `-` (and `_` inside a label).
    #[error("invalid character in host")]
    BadChar,
    /// A label starts or ends with `-`.
    #[error("label starts or ends with a hyphen")]
    Hyphen,
    /// The port after `:` is not a number in 0..=65535.
    #[error("bad port")]
    BadPort,
    /// An IP literal (`[::1]`, `10.0.0.1`): tenants are named, never addressed.
    #[error("IP literal")]
    IpLiteral,
    /// `user@host` forms.
    #[error("userinfo in host")]
    Userinfo,
}

/// Normalises a raw `Host` value and returns the normalised name: borrowed from `raw` when it
/// is already normal (the common case), else written into `buf`.
///
/// Lowercases ASCII, strips a `:port` and one trailing dot, and checks DNS name rules. This is the
/// allocation-free form the proxy uses per request; [`Host::parse`] wraps it for everyone else.
/// A valid host is read in one pass over a byte-class table (~230 instructions for a 19-byte
/// host, against ~800 for the rule-by-rule form); anything else goes through [`normalize_slow`],
/// which says exactly what is wrong, and which the fast pass is tested against.
pub fn normalize_host<'a>(raw: &'a [u8], buf: &'a mut [u8; MAX_HOST_LEN]) -> Result<&'a str, HostError> {
    let Some(Valid { name_len, upper }) = valid_host(raw) else {
        return normalize_slow(raw, buf);
    };
    let name = &raw[..name_len];
    if !upper {
        // Every byte was checked to be ASCII.
        return std::str::from_utf8(name).map_err(|_| HostError::BadChar);
    }
    let out = &mut buf[..name_len];
    for (dst, &b) in out.iter_mut().zip(name) {
        *dst = b.to_ascii_lowercase();
    }
    std::str::from_utf8(out).map_err(|_| HostError::BadChar)
}

/// What [`valid_host`] found in a valid host.
struct Valid {
    /// Bytes of the name, before a trailing dot and a port.
    name_len: usize,
    /// Whether the name has upper-case letters.
    upper: bool,
}

/// Byte classes of a host name.
const C_BAD: u8 = 0;
const C_LOWER: u8 = 1;
const C_DIGIT: u8 = 2;
const C_UPPER: u8 = 3;
const C_HYPHEN: u8 = 4;
const C_UNDERSCORE: u8 = 5;
const C_DOT: u8 = 6;
const C_COLON: u8 = 7;

static HOST_CLASS: [u8; 256] = {
    let mut table = [C_BAD; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = match b {
            b'a'..=b'z' => C_LOWER,
            b'0'..=b'9' => C_DIGIT,
            b'A'..=b'Z' => C_UPPER,
            b'-' => C_HYPHEN,
            b'_' => C_UNDERSCORE,
            b'.' => C_DOT,
            b':' => C_COLON,
            _ => C_BAD,
        };
        i += 1;
    }
    table
};

/// One pass over a host that is valid as it is, or may be after lowercasing and stripping a
/// trailing dot and a port; `None` for anything else (then [`normalize_slow`] says why).
fn valid_host(raw: &[u8]) -> Option<Valid> {
    let mut label_start = 0;
    let mut all_digits = true;
    let mut upper = false;
    let mut name_len = raw.len();
    for (i, &b) in raw.iter().enumerate() {
        match HOST_CLASS[usize::from(b)] {
            C_LOWER | C_UNDERSCORE => all_digits = false,
            C_DIGIT => {}
            C_UPPER => {
                all_digits = false;
                upper = true;
            }
            C_HYPHEN if i > label_start => all_digits = false,
            C_DOT if i > label_start => {
                if raw[i - 1] == b'-' || i - label_start > MAX_LABEL_LEN {
                    return None;
                }
                label_start = i + 1;
                all_digits = true;
            }
            C_COLON => {
                name_len = i;
                if !valid_port(&raw[i + 1..]) {
                    return None;
                }
                break;
            }
            _ => return None,
        }
    }
    // One trailing dot, already ended its label.
    let name_len = if name_len > 0 && label_start == name_len && raw[name_len - 1] == b'.' {
        let end = name_len - 1;
        label_start = raw[..end].iter().rposition(|&b| b == b'.').map_or(0, |d| d + 1);
        all_digits = raw[label_start..end].iter().all(u8::is_ascii_digit);
        end
    } else {
        name_len
    };
    let last = &raw[label_start..name_len];
    let ok = !last.is_empty()
        && last.len() <= MAX_LABEL_LEN
        && last[last.len() - 1] != b'-'
        && !all_digits
        && name_len <= MAX_HOST_LEN;
    ok.then_some(Valid { name_len, upper })
}

/// 1 to 5 digits, at most 65535.
fn valid_port(port: &[u8]) -> bool {
    !port.is_empty()
        && port.len() <= 5
        && port.iter().all(u8::is_ascii_digit)
        && port.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')) <= 65535
}

/// [`normalize_host`] rule by rule: the exact error of an invalid host.
fn normalize_slow<'a>(raw: &[u8], buf: &'a mut [u8; MAX_HOST_LEN]) -> Result<&'a str, HostError> {
    let name = strip_port(raw)?;
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() {
        return Err(HostError::Empty);
    }
    if name.len() > MAX_HOST_LEN {
        return Err(HostError::TooLong);
    }
    let out = &mut buf[..name.len()];
    for (dst, &b) in out.iter_mut().zip(name) {
        *dst = b.to_ascii_lowercase();
    }
    check_labels(out)?;
    // Every byte was checked to be ASCII by `check_labels`.
    std::str::from_utf8(out).map_err(|_| HostError::BadChar)
}

fn strip_port(raw: &[u8]) -> Result<&[u8], HostError> {
    if raw.first() == Some(&b'[') {
        return Err(HostError::IpLiteral);
    }
    if raw.contains(&b'@') {
        return Err(HostError::Userinfo);
    }
    match raw.iter().position(|&b| b == b':') {
        None => Ok(raw),
        Some(i) => {
            if valid_port(&raw[i + 1..]) {
                Ok(&raw[..i])
            } else {
                Err(HostError::BadPort)
            }
        }
    }
}

fn check_labels(name: &[u8]) -> Result<(), HostError> {
    let mut last_all_digits = false;
    for label in name.split(|&b| b == b'.') {
        if label.is_empty() || label.len() > MAX_LABEL_LEN {
            return Err(HostError::BadLabel);
        }
        if !label
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(HostError::BadChar);
        }
        if label.first() == Some(&b'-') || label.last() == Some(&b'-') {
            return Err(HostError::Hyphen);
        }
        last_all_digits = label.iter().all(u8::is_ascii_digit);
    }
    // A top-level label is never all digits, so this is an IPv4 literal (or a numeric mistake).
    if last_all_digits {
        return Err(HostError::IpLiteral);
    }
    Ok(())
}

/// A normalised host name: lowercase, no port, no trailing dot, valid under DNS rules.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Host(CompactString);

impl Host {
    /// Normalises and validates a raw host value.
    pub fn parse(raw: &str) -> Result<Self, HostError> {
        let mut buf = [0u8; MAX_HOST_LEN];
        normalize_host(raw.as_bytes(), &mut buf).map(|s| Host(CompactString::new(s)))
    }

    /// The normalised name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Host {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        with_str(d, |raw| {
            Host::parse(raw).map_err(|e| serde::de::Error::custom(format!("host {raw:?}: {e}")))
        })
    }
}

/// Deserialises a string by lending it to `f`: borrowed from the input when it has no escapes,
/// so a name is allocated once (as the value), not twice (as a `String`, then the value).
fn with_str<'de, D, T>(d: D, f: impl FnOnce(&str) -> Result<T, D::Error>) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Lend<F>(F);
    impl<'de, T, E: serde::de::Error, F: FnOnce(&str) -> Result<T, E>> serde::de::Visitor<'de> for Lend<F> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }

        fn visit_str<E2: serde::de::Error>(self, v: &str) -> Result<T, E2> {
            (self.0)(v).map_err(|e| E2::custom(e))
        }
    }
    d.deserialize_str(Lend(f))
}

/// Why a name (tenant id, product, shard id, realm, region) was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: use 1-63 of a-z, 0-9 and '-', starting with a letter or digit")]
pub struct NameError {
    /// Which kind of name.
    pub kind: &'static str,
    /// The value as given.
    pub value: String,
}

fn valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_LABEL_LEN
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(CompactString);

        impl $name {
            /// Validates a name: 1-63 of `a-z`, `0-9`, `-`, starting with a letter or digit.
            pub fn new(s: &str) -> Result<Self, NameError> {
                if valid_name(s) {
                    Ok(Self(CompactString::new(s)))
                } else {
                    Err(NameError { kind: $kind, value: s.to_owned() })
                }
            }

            /// The name.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                with_str(d, |raw| Self::new(raw).map_err(serde::de::Error::custom))
            }
        }
    };
}

name_type!(
    /// A tenant's stable identifier (`acme`).
    TenantId,
    "tenant id"
);
name_type!(
    /// A product name (`jira`, `confluence`), as named in the route snapshot.
    Product,
    "product"
);
name_type!(
    /// A shard identifier (`jira-us-east-1`).
    ShardId,
    "shard id"
);
name_type!(
    /// A realm: the set of regions a tenant's data may live in (`us`, `eu`).
    Realm,
    "realm"
);
name_type!(
    /// A cloud region (`us-east-1`).
    Region,
    "region"
);

/// Whether a placement accepts every request, or only safe ones during a migration cutover.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlacementState {
    /// Serving normally.
    #[default]
    Active,
    /// Cut over in progress: unsafe methods get 503 + Retry-After, safe methods reach the source.
    Frozen,
}

/// Where one product of a tenant lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Placement {
    /// The shard holding the data.
    pub shard: ShardId,
    /// Whether writes are currently allowed.
    #[serde(default)]
    pub state: PlacementState,
}

/// The routing facts of one tenant: what the `ingress` view carries (never secrets).
///
/// `version` is the tenant's catalogue version; readers apply a record only when it is newer
/// than what they hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressRecord {
    /// Tenant id.
    pub id: TenantId,
    /// Catalogue version of the tenant, starting at 1 and bumped by every write.
    pub version: u64,
    /// The realm the tenant's data must stay in.
    pub realm: Realm,
    /// Every host that names this tenant.
    pub hosts: Vec<Host>,
    /// Product -> placement.
    pub placements: Placements,
    /// Product -> this tenant's request rate limit (per second) at the edge, where it differs
    /// from the route file's default for the product.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub rate_limits: std::collections::BTreeMap<Product, u32>,
    /// In a product's view only (never in `ingress`): the products' config and, when the view
    /// carries them, their secrets, still sealed. Kept as JSON text: parsed only when read.
    /// Boxed twice so that a record of the `ingress` view pays one thin pointer for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub products: Option<Box<crate::feed::ViewProducts>>,
    /// In a product's view carrying secrets: the tenant's wrapped data key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_key: Option<Box<crate::secrets::WrappedKey>>,
}

impl IngressRecord {
    /// The placement of `product`, if the tenant has it.
    pub fn placement(&self, product: &str) -> Option<&Placement> {
        self.placements.get(product)
    }
}

/// A tenant's placements by product, as the edge caches them: one small sorted slice (a tenant
/// has a handful of products), a tenth of a map's memory with a million tenants held. On the
/// wire it is a JSON object, like a map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placements(Box<[(Product, Placement)]>);

impl Placements {
    /// The placement of `product`.
    pub fn get(&self, product: &str) -> Option<&Placement> {
        self.0
            .iter()
            .find(|(p, _)| p.as_str() == product)
            .map(|(_, placement)| placement)
    }

    /// Every product and its placement, by product name.
    pub fn iter(&self) -> impl Iterator<Item = (&Product, &Placement)> {
        self.0.iter().map(|(p, placement)| (p, placement))
    }

    /// Number of products placed.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no product is placed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&BTreeMap<Product, Placement>> for Placements {
    fn from(map: &BTreeMap<Product, Placement>) -> Self {
        Placements(
            map.iter()
                .map(|(p, placement)| (p.clone(), placement.clone()))
                .collect(),
        )
    }
}

impl From<BTreeMap<Product, Placement>> for Placements {
    fn from(map: BTreeMap<Product, Placement>) -> Self {
        Placements(map.into_iter().collect())
    }
}

impl Serialize for Placements {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Placements {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Placements;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of product -> placement")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Placements, A::Error> {
                let mut placed: Vec<(Product, Placement)> = Vec::with_capacity(map.size_hint().unwrap_or(2));
                while let Some(entry) = map.next_entry::<Product, Placement>()? {
                    placed.push(entry);
                }
                placed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                if let Some(w) = placed.windows(2).find(|w| w[0].0 == w[1].0) {
                    return Err(serde::de::Error::custom(format!(
                        "product {} placed twice",
                        w[0].0
                    )));
                }
                Ok(Placements(placed.into_boxed_slice()))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

#[cfg(test)]
mod tests;

/// A small number standing for a product or shard name, the same for the whole process, so
/// that the request path matches placements and finds shard pools by integer instead of
/// reading and comparing names (with many tenants each name is a cold cache line).
///
/// Names are interned when a cache entry or a route snapshot is built, never per request.
/// They come from the catalogue's registry and the route file, so there are few of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sym(u32);

impl Sym {
    /// Stands for no name (never handed out by [`Sym::of`]).
    pub const NONE: Sym = Sym(u32::MAX);

    /// The number, to index per-name tables with.
    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// The number standing for `name`, made when first asked for.
    pub fn of(name: &str) -> Sym {
        use std::collections::HashMap;
        use std::sync::{OnceLock, RwLock};
        type Names = RwLock<HashMap<Box<str>, u32, foldhash::fast::RandomState>>;
        static NAMES: OnceLock<Names> = OnceLock::new();
        let names = NAMES.get_or_init(Names::default);
        if let Some(&n) = names.read().unwrap_or_else(|e| e.into_inner()).get(name) {
            return Sym(n);
        }
        let mut names = names.write().unwrap_or_else(|e| e.into_inner());
        let next = u32::try_from(names.len())
            .unwrap_or(u32::MAX - 1)
            .min(u32::MAX - 1);
        Sym(*names.entry(Box::from(name)).or_insert(next))
    }
}
