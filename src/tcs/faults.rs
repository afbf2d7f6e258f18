//! Fault injection: the production chaos the edge must survive (a slow TCS, a failing TCS, a
//! TCS whose table was emptied, a TCS whose ingest stalled), switched on at run time through
//! `PUT /admin/faults` for tests and demos.
//!
//! Only a TCS started with `allow_faults` (config or `--allow-faults`) serves the admin
//! routes; elsewhere they do not exist (404). The request path pays one `ArcSwap` load when
//! no fault is set.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus::IntCounter;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::Tcs;
use crate::feed::ApiError;

/// The longest latency an operator may inject: long enough for any demo, short enough that a
/// typo does not park requests for days.
pub const MAX_LATENCY_MS: u64 = 600_000;

/// The faults in force; every field defaults to "no fault". This is also the JSON of
/// `/admin/faults`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Every `/v1/views/...` answer is delayed by this many milliseconds.
    pub latency_ms: u64,
    /// This fraction (0.0 to 1.0) of `/v1/views/...` requests answer 503.
    pub error_rate: f64,
    /// Behave like an emptied table: lookups answer 404, the snapshot has no records. The
    /// change stream is unaffected (an emptied table sends no deletes).
    pub empty: bool,
    /// The tailer stops applying catalogue changes; it keeps its position and catches up
    /// when the pause is lifted.
    pub pause_ingest: bool,
}

impl Faults {
    /// Whether nothing is injected.
    pub fn is_none(&self) -> bool {
        self.latency_ms == 0 && self.error_rate <= 0.0 && !self.empty && !self.pause_ingest
    }

    /// Checks what serde cannot: the error rate is a fraction, the latency is bounded.
    pub fn validate(&self) -> Result<(), FaultsError> {
        // `contains` is false for NaN too.
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(FaultsError::Invalid(format!(
                "error_rate {} is outside [0, 1]",
                self.error_rate
            )));
        }
        if self.latency_ms > MAX_LATENCY_MS {
            return Err(FaultsError::Invalid(format!(
                "latency_ms {} is above {MAX_LATENCY_MS}",
                self.latency_ms
            )));
        }
        Ok(())
    }

    /// Whether this request draws an injected error.
    pub fn draws_error(&self) -> bool {
        // `random` is in [0, 1): a rate of 1.0 always fails, 0.0 never does.
        self.error_rate > 0.0 && rand::random::<f64>() < self.error_rate
    }
}

/// Why a fault setting was refused.
#[derive(Debug, thiserror::Error)]
pub enum FaultsError {
    /// The body is not a JSON fault setting (syntax, type, unknown field).
    #[error("malformed faults: {0}")]
    Malformed(String),
    /// The setting parsed but a value is out of range.
    #[error("invalid faults: {0}")]
    Invalid(String),
    /// This instance was started without `allow_faults`.
    #[error("fault injection is not allowed on this instance")]
    NotAllowed,
}

impl FaultsError {
    fn status(&self) -> StatusCode {
        match self {
            FaultsError::Malformed(_) => StatusCode::BAD_REQUEST,
            FaultsError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            // As if the routes did not exist, which is what the router does too.
            FaultsError::NotAllowed => StatusCode::NOT_FOUND,
        }
    }
}

impl IntoResponse for FaultsError {
    fn into_response(self) -> Response {
        let status = self.status();
        ApiError::new(status, self.to_string()).into_response()
    }
}

/// A request drew an injected error; the API answers 503.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("injected fault: service unavailable")]
pub struct Injected;

/// The faults of one TCS instance: read on every view request, written by the admin routes.
#[derive(Debug)]
pub struct FaultSwitch {
    allowed: bool,
    active: ArcSwapOption<Faults>,
    // The tailer waits on this rather than reading `active`, so lifting a pause wakes it.
    pause: watch::Sender<bool>,
}

impl FaultSwitch {
    /// A switch with no fault set; `allowed` decides whether faults may ever be set.
    pub fn new(allowed: bool) -> Self {
        Self {
            allowed,
            active: ArcSwapOption::empty(),
            pause: watch::channel(false).0,
        }
    }

    /// Whether this instance accepts faults at all.
    pub fn allowed(&self) -> bool {
        self.allowed
    }

    /// The faults in force, if any: one `ArcSwap` load.
    pub fn active(&self) -> Option<Faults> {
        self.active.load().as_deref().copied()
    }

    /// The faults in force, all defaults when none.
    pub fn current(&self) -> Faults {
        self.active().unwrap_or_default()
    }

    /// Replaces the faults in force, once validated and if faults are allowed.
    pub fn set(&self, faults: Faults) -> Result<(), FaultsError> {
        if !self.allowed {
            return Err(FaultsError::NotAllowed);
        }
        faults.validate()?;
        let stored = (!faults.is_none()).then(|| Arc::new(faults));
        // Under the watch's lock, so concurrent writers cannot leave the pause flag and the
        // stored faults disagreeing; the tailer is only woken when the flag flips.
        self.pause.send_if_modified(|paused| {
            self.active.store(stored);
            let flipped = *paused != faults.pause_ingest;
            *paused = faults.pause_ingest;
            flipped
        });
        Ok(())
    }

    /// Clears every fault (nothing to clear when faults are not allowed).
    pub fn clear(&self) {
        // Defaults always validate; a switch that refuses faults holds none.
        let _ = self.set(Faults::default());
    }

    /// Whether ingest is paused, as a watch the tailer can wait on.
    pub fn pause_watch(&self) -> watch::Receiver<bool> {
        self.pause.subscribe()
    }

    /// What every `/v1/views/...` request goes through first: the injected latency, then an
    /// injected error (counted in `errors`). Returns the faults in force for the rest of the
    /// request, read once so that it sees one consistent setting.
    pub async fn before_answer(&self, errors: &IntCounter) -> Result<Option<Faults>, Injected> {
        let Some(faults) = self.active() else {
            return Ok(None);
        };
        if faults.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
        }
        if faults.draws_error() {
            errors.inc();
            return Err(Injected);
        }
        Ok(Some(faults))
    }
}

/// `GET`/`PUT`/`DELETE /admin/faults`, or no route at all when faults are not allowed. Each
/// call needs the config's `admin_token` as its bearer token (401 otherwise), compared in
/// constant time.
pub fn admin_router(tcs: Tcs) -> Router {
    if !tcs.faults().allowed() {
        return Router::new();
    }
    Router::new()
        .route(
            "/admin/faults",
            get(show_faults).put(put_faults).delete(clear_faults),
        )
        .route_layer(axum::middleware::from_fn_with_state(tcs.clone(), admin_only))
        .with_state(tcs)
}

/// Lets a call through with the admin token.
async fn admin_only(
    State(tcs): State<Tcs>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let admin = tcs.config().admin_token.as_deref();
    if admin.is_some_and(|a| crate::feed::bearer::bears(request.headers(), a)) {
        next.run(request).await
    } else {
        crate::feed::ApiError::new(axum::http::StatusCode::UNAUTHORIZED, "the admin token is needed")
            .into_response()
    }
}

async fn show_faults(State(tcs): State<Tcs>) -> Json<Faults> {
    Json(tcs.faults().current())
}

async fn put_faults(State(tcs): State<Tcs>, body: Bytes) -> Result<Json<Faults>, FaultsError> {
    let faults: Faults = serde_json::from_slice(&body).map_err(|e| FaultsError::Malformed(e.to_string()))?;
    tcs.faults().set(faults)?;
    tracing::warn!(
        region = %tcs.config().region,
        latency_ms = faults.latency_ms,
        error_rate = faults.error_rate,
        empty = faults.empty,
        pause_ingest = faults.pause_ingest,
        "injected faults set"
    );
    Ok(Json(tcs.faults().current()))
}

async fn clear_faults(State(tcs): State<Tcs>) -> Json<Faults> {
    tcs.faults().clear();
    tracing::warn!(region = %tcs.config().region, "injected faults cleared");
    Json(tcs.faults().current())
}

#[cfg(test)]
mod tests;
