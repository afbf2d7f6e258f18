//! Request extraction with the catalogue's own error answers: every malformed path, header,
//! query or body gets a JSON [`crate::feed::ApiError`], never axum's default text.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use super::{Failure, MAX_BODY};
use crate::tenant::{NameError, Realm, ShardId, TenantId};

/// A name taken from the URL path.
pub(super) trait PathName: Sized + Send {
    /// Validates the raw path segment.
    fn parse(raw: &str) -> Result<Self, NameError>;
}

macro_rules! path_name {
    ($($t:ty),*) => {$(
        impl PathName for $t {
            fn parse(raw: &str) -> Result<Self, NameError> {
                <$t>::new(raw)
            }
        }
    )*};
}
path_name!(TenantId, ShardId, Realm);

/// Migration ids are looked up as given: one of another shape is simply not found.
impl PathName for String {
    fn parse(raw: &str) -> Result<Self, NameError> {
        Ok(raw.to_owned())
    }
}

/// The `{id}` (or `{name}`) of the URL, validated: a malformed one is a 400.
pub(super) struct Id<T>(pub T);

impl<S: Send + Sync, T: PathName> FromRequestParts<S> for Id<T> {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Failure> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|r| Failure::Http(r.status(), r.body_text()))?;
        T::parse(&raw)
            .map(Id)
            .map_err(|e| Failure::Http(StatusCode::BAD_REQUEST, e.to_string()))
    }
}

/// The `If-Match` version, if any: `"3"` or `3`. Anything else is a 400.
pub(super) struct IfMatch(pub Option<u64>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Failure> {
        parse_if_match(&parts.headers).map(IfMatch)
    }
}

fn parse_if_match(headers: &HeaderMap) -> Result<Option<u64>, Failure> {
    let mut values = headers.get_all(header::IF_MATCH).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let bad = |what: &str| Failure::bad_request(format!("If-Match must be one version like \"3\": {what}"));
    if values.next().is_some() {
        return Err(bad("several given"));
    }
    let raw = value.to_str().map_err(|_| bad("not ASCII"))?.trim();
    let digits = raw
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .unwrap_or(raw);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(&format!("got {raw:?}")));
    }
    digits.parse().map(Some).map_err(|_| bad("too large"))
}

/// A JSON document body: a syntax error is a 400, a well-formed body that does not fit the
/// document (types, names, hosts, unknown fields) is a 422 carrying serde's message.
pub(super) struct Doc<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Doc<T> {
    type Rejection = Failure;

    async fn from_request(req: Request, state: &S) -> Result<Self, Failure> {
        // Refuse a declared oversize body before reading any of it. One that is streamed
        // without a length is cut off by the body limit: Bytes' rejection keeps its 413.
        if declared_length(req.headers()).is_some_and(|n| n > MAX_BODY as u64) {
            return Err(Failure::Http(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body larger than {MAX_BODY} bytes"),
            ));
        }
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|r| Failure::Http(r.status(), r.body_text()))?;
        let value: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| Failure::bad_request(format!("malformed JSON: {e}")))?;
        serde_json::from_value(value)
            .map(Doc)
            .map_err(|e| Failure::Http(StatusCode::UNPROCESSABLE_ENTITY, format!("invalid document: {e}")))
    }
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// A query string: a malformed one is a 400.
pub(super) struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Failure> {
        let Query(q) = Query::<T>::from_request_parts(parts, state)
            .await
            .map_err(|r| Failure::bad_request(r.body_text()))?;
        Ok(Params(q))
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn if_match(values: &[&str]) -> Result<Option<u64>, Failure> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(header::IF_MATCH, HeaderValue::from_str(v).unwrap());
        }
        parse_if_match(&headers)
    }

    #[test]
    fn if_match_takes_quoted_or_bare_versions() {
        assert_eq!(if_match(&[]).unwrap(), None);
        assert_eq!(if_match(&["\"3\""]).unwrap(), Some(3));
        assert_eq!(if_match(&["3"]).unwrap(), Some(3));
        assert_eq!(if_match(&[" \"12\" "]).unwrap(), Some(12));
    }

    #[test]
    fn if_match_rejects_everything_else() {
        for bad in [
            "",
            "\"\"",
            "\"3",
            "W/\"3\"",
            "*",
            "+3",
            "-1",
            "abc",
            "99999999999999999999999",
        ] {
            assert!(if_match(&[bad]).is_err(), "{bad:?} was accepted");
        }
        assert!(if_match(&["1", "2"]).is_err());
    }
}
