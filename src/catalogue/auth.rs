//! Who may call the catalogue API: bearer tokens from a token file, each with a name and
//! scopes. `read` (tenants, shards, realms, migrations, the change log: what TCS needs),
//! `write` (tenants, shards, realms), `migrate` (migrations and their phases), `admin` (every
//! scope). No token or an unknown one: 401; a token without the scope: 403. Tokens are compared
//! in constant time and never logged (the token's name is). `/healthz` is open.
//!
//! A catalogue with no token refuses to start unless told `--allow-unauthenticated`, and then
//! only on a loopback address.

use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::feed::ApiError;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Tenants, shards, realms, migrations and the change log, read only.
    Read,
    /// Tenants, shards and realms, written.
    Write,
    /// Migrations and their phases.
    Migrate,
    /// Everything.
    Admin,
}

/// One token of the token file.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiToken {
    /// Who holds it (logged; the token never is).
    pub name: String,
    /// The secret.
    pub token: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiToken")
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// The token file: `[[tokens]]` with `name`, `token`, `scopes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFile {
    /// The tokens.
    pub tokens: Vec<ApiToken>,
}

impl TokenFile {
    /// Reads a token file; refused when others than its owner may read it, when a token is
    /// shorter than 16 characters, or when two tokens are equal.
    pub fn load(path: &Path) -> Result<TokenFile, String> {
        let what = |e: &dyn std::fmt::Display| format!("token file {}: {e}", path.display());
        let meta = std::fs::metadata(path).map_err(|e| what(&e))?;
        {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(what(&"readable by others than its owner (chmod 600)"));
            }
        }
        let text = std::fs::read_to_string(path).map_err(|e| what(&e))?;
        let file: TokenFile = toml::from_str(&text).map_err(|e| what(&e.message()))?;
        file.check().map_err(|e| what(&e))?;
        Ok(file)
    }

    fn check(&self) -> Result<(), String> {
        if self.tokens.is_empty() {
            return Err("no tokens".into());
        }
        for (i, t) in self.tokens.iter().enumerate() {
            if t.token.len() < 16 || !t.token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!("token {:?}: 16 or more visible ASCII characters", t.name));
            }
            if t.scopes.is_empty() {
                return Err(format!("token {:?}: no scopes", t.name));
            }
            if self.tokens[..i].iter().any(|o| o.token == t.token) {
                return Err(format!("token {:?} is also another token", t.name));
            }
        }
        Ok(())
    }

    /// Writes the file owner-only (0600), through a temporary file and a rename.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = toml::to_string_pretty(self).map_err(std::io::Error::other)?;
        write_private(path, text.as_bytes())
    }
}

/// Writes `bytes` to `path` readable by its owner only (0600), whole or not at all
/// ([`crate::durable::replace_private`]).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    crate::durable::replace_private(path, bytes).map_err(std::io::Error::other)
}

/// A fresh random token: 32 hex digits (128 bits).
pub fn new_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Who may call the API.
#[derive(Debug, Clone)]
pub enum Access {
    /// Only holders of these tokens, each within its scopes.
    Tokens(Arc<[ApiToken]>),
    /// Anyone (`--allow-unauthenticated`, loopback only).
    Open,
}

/// The scope a request needs; `None` for the open endpoints.
fn needed(method: &Method, path: &str) -> Option<Scope> {
    if path == "/healthz" {
        return None;
    }
    let read = matches!(*method, Method::GET | Method::HEAD);
    // A lease coordinates readers (the TCS nodes of a region, which hold `read` tokens) and
    // changes no catalogue data.
    if path.starts_with("/v1/leases/") {
        return Some(Scope::Read);
    }
    // Re-wrapping every tenant's data key is the operator's act.
    if path.starts_with("/v1/keys") {
        return Some(Scope::Admin);
    }
    Some(if path.starts_with("/v1/migrations") {
        if read {
            Scope::Read
        } else {
            Scope::Migrate
        }
    } else if read {
        Scope::Read
    } else {
        Scope::Write
    })
}

/// Lets a request through when its bearer token holds the scope it needs.
pub async fn check(State(access): State<Access>, request: Request, next: Next) -> Response {
    let Access::Tokens(tokens) = &access else {
        return next.run(request).await;
    };
    let Some(scope) = needed(request.method(), request.uri().path()) else {
        return next.run(request).await;
    };
    // Every token is compared, whichever matches: the time taken says nothing of which.
    let mut holder = None;
    if let Some(presented) = crate::feed::bearer::bearer_token(request.headers()) {
        for t in tokens.iter() {
            if crate::feed::bearer::constant_time_eq(presented, t.token.as_bytes()) {
                holder = Some(t);
            }
        }
    }
    match holder {
        None => {
            let mut r =
                ApiError::new(StatusCode::UNAUTHORIZED, "a valid bearer token is needed").into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            r
        }
        Some(t) if !(t.scopes.contains(&scope) || t.scopes.contains(&Scope::Admin)) => {
            tracing::info!(token = %t.name, ?scope, path = request.uri().path(), "refused: scope not held");
            ApiError::new(
                StatusCode::FORBIDDEN,
                format!("the token lacks the {scope:?} scope").to_lowercase(),
            )
            .into_response()
        }
        Some(_) => next.run(request).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_needs_its_scope() {
        assert_eq!(needed(&Method::GET, "/healthz"), None);
        assert_eq!(needed(&Method::GET, "/v1/changes"), Some(Scope::Read));
        assert_eq!(needed(&Method::PUT, "/v1/tenants/acme"), Some(Scope::Write));
        assert_eq!(needed(&Method::DELETE, "/v1/realms/us"), Some(Scope::Write));
        assert_eq!(needed(&Method::POST, "/v1/tenants"), Some(Scope::Write));
        assert_eq!(needed(&Method::POST, "/v1/migrations"), Some(Scope::Migrate));
        assert_eq!(
            needed(&Method::PUT, "/v1/migrations/7/phase"),
            Some(Scope::Migrate)
        );
        assert_eq!(needed(&Method::GET, "/v1/migrations/7"), Some(Scope::Read));
        assert_eq!(needed(&Method::PUT, "/v1/leases/fanout-us"), Some(Scope::Read));
        assert_eq!(needed(&Method::POST, "/v1/keys/rotate"), Some(Scope::Admin));
        assert_eq!(needed(&Method::POST, "/nowhere"), Some(Scope::Write));
    }

    #[test]
    fn token_files_are_checked_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let file = TokenFile {
            tokens: vec![ApiToken {
                name: "operator".into(),
                token: new_token(),
                scopes: vec![Scope::Admin],
            }],
        };
        file.write(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(TokenFile::load(&path).unwrap(), file);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(TokenFile::load(&path).unwrap_err().contains("chmod 600"));
        let short = TokenFile {
            tokens: vec![ApiToken {
                name: "x".into(),
                token: "short".into(),
                scopes: vec![Scope::Read],
            }],
        };
        assert!(short.check().is_err());
        assert!(
            !format!("{:?}", file.tokens[0]).contains(&file.tokens[0].token),
            "never printed"
        );
    }
}
