//! Queued work (seed 002): a job is checked where it is submitted (the request's tenant context)
//! and again when it runs, which may be long after, on the other side of a move.
//!
//! `POST /jobs` queues `{"item": {...}, "delay_ms": n}` in the shard's file; a worker in every
//! backend claims due jobs (one claim per job across the shard's backends), re-checks the
//! tenant's placement through the sidecar, and then runs it here (writes the item, as
//! `POST /items` would), re-routes it into the queue of the shard that holds the tenant now,
//! or discards it when the tenant or its product is gone. `GET /jobs/{id}` says which.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::items::check_id;
use super::store::{self, StoredItem};
use super::{method_not_allowed, tenant_of, DemoState, Failure};
use crate::clock::now_ms;
use crate::tenant::{ShardId, TenantId};

/// The jobs table, in the shard's file.
pub(super) const SCHEMA: &str = r"
-- state: queued, running (claimed at claimed_ms), ran, rerouted, discarded; note says where.
CREATE TABLE IF NOT EXISTS jobs (
    id         TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL,
    body       TEXT NOT NULL,
    due_ms     INTEGER NOT NULL,
    state      TEXT NOT NULL DEFAULT 'queued',
    note       TEXT NOT NULL DEFAULT '',
    claimed_ms INTEGER NOT NULL DEFAULT 0
);
";

/// The longest a job may wait before it is due.
const MAX_DELAY_MS: u64 = 600_000;
/// How often the worker looks for due jobs.
const POLL: Duration = Duration::from_millis(100);
/// A job claimed this long ago by a backend that died is claimed again.
const CLAIM_EXPIRES_MS: u64 = 30_000;
/// How long a job that could not run now waits to be tried again.
const RETRY_MS: u64 = 500;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewJob {
    /// The item the job writes.
    item: Value,
    /// How long to wait before running it.
    #[serde(default)]
    delay_ms: u64,
}

/// A job as `GET /jobs/{id}` shows it.
#[derive(Debug, Serialize)]
struct JobView {
    id: String,
    tenant: String,
    state: String,
    note: String,
}

/// `/jobs` and `/jobs/{id}`.
pub(super) fn routes() -> Router<Arc<DemoState>> {
    Router::new()
        .route("/jobs", post(submit).fallback(method_not_allowed))
        .route("/jobs/{id}", get(status).fallback(method_not_allowed))
}

async fn submit(
    State(state): State<Arc<DemoState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let tenant = tenant_of(&headers)?;
    let bytes = body.map_err(|r| Failure::Rejected(r.status(), r.body_text()))?;
    let job: NewJob =
        serde_json::from_slice(&bytes).map_err(|e| Failure::BadRequest(format!("malformed job: {e}")))?;
    if job.delay_ms > MAX_DELAY_MS {
        return Err(Failure::BadRequest(format!("delay_ms: at most {MAX_DELAY_MS}")));
    }
    let id = format!("{:016x}", rand::random::<u64>());
    let due = now_ms() + job.delay_ms;
    let row = (id.clone(), tenant.clone(), job.item.to_string());
    state
        .store
        .write(move |tx| {
            store::fences(tx, &tenant)?.check(true)?;
            tx.execute(
                "INSERT INTO jobs (id, tenant, body, due_ms) VALUES (?1, ?2, ?3, ?4)",
                params![row.0, row.1.as_str(), row.2, due as i64],
            )?;
            Ok(())
        })
        .await?;
    let answer = serde_json::json!({ "id": id, "state": "queued" });
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

async fn status(
    State(state): State<Arc<DemoState>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Result<Json<JobView>, Failure> {
    let tenant = tenant_of(&headers)?;
    check_id(&id)?;
    let found = state
        .store
        .read(move |c| {
            c.query_row(
                "SELECT id, tenant, state, note FROM jobs WHERE id = ?1 AND tenant = ?2",
                params![id, tenant.as_str()],
                |r| {
                    Ok(JobView {
                        id: r.get(0)?,
                        tenant: r.get(1)?,
                        state: r.get(2)?,
                        note: r.get(3)?,
                    })
                },
            )
            .optional()
            .map_err(Failure::from)
        })
        .await?;
    found.map(Json).ok_or(Failure::NotFound)
}

/// A claimed job.
struct Claimed {
    id: String,
    tenant: TenantId,
    body: String,
}

/// Runs due jobs until `shutdown`.
pub(super) async fn work(state: Arc<DemoState>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(POLL) => {}
        }
        let claimed = match claim(&state).await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::warn!(error = %e, "claiming jobs failed");
                continue;
            }
        };
        for job in claimed {
            let (state_now, note) = match run_one(&state, &job).await {
                Ok(done) => done,
                Err(e) => {
                    tracing::info!(job = %job.id, error = %e, "job deferred");
                    ("queued", String::new())
                }
            };
            let id = job.id.clone();
            let due = now_ms() + RETRY_MS;
            let finished = state
                .store
                .write(move |tx| {
                    tx.execute(
                        "UPDATE jobs SET state = ?2, note = ?3, due_ms = ?4, claimed_ms = 0 WHERE id = ?1",
                        params![id, state_now, note, due as i64],
                    )?;
                    Ok(())
                })
                .await;
            if let Err(e) = finished {
                tracing::warn!(job = %job.id, error = %e, "recording a job's outcome failed");
            }
        }
    }
}

/// Claims the due jobs (and those a dead backend held too long) for this backend.
async fn claim(state: &DemoState) -> Result<Vec<Claimed>, Failure> {
    let now = now_ms() as i64;
    state
        .store
        .write(move |tx| {
            let mut stmt = tx.prepare_cached(
                "UPDATE jobs SET state = 'running', claimed_ms = ?1
                 WHERE (state = 'queued' AND due_ms <= ?1) OR (state = 'running' AND claimed_ms < ?2)
                 RETURNING id, tenant, body",
            )?;
            let rows = stmt.query_map(params![now, now - CLAIM_EXPIRES_MS as i64], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, tenant, body) = row?;
                // Rows are written through `submit`, which validated the tenant.
                if let Ok(tenant) = TenantId::new(&tenant) {
                    out.push(Claimed { id, tenant, body });
                }
            }
            Ok(out)
        })
        .await
}

/// The outcome of one job: its new state and a note, or an error (tried again later).
async fn run_one(state: &DemoState, job: &Claimed) -> Result<(&'static str, String), Failure> {
    if let Some(sidecar) = &state.sidecar {
        match sidecar.placement(&job.tenant).await? {
            None => return Ok(("discarded", "the tenant or its product is gone".into())),
            Some(p) if p.shard.as_str() != state.shard => {
                reroute(state, job, &p.shard).await?;
                return Ok(("rerouted", p.shard.to_string()));
            }
            Some(_) => {}
        }
    }
    let item = StoredItem {
        id: job.id.clone(),
        body: serde_json::from_str(&job.body).map_err(|e| Failure::Internal(e.to_string()))?,
    };
    state
        .store
        .write_everywhere(job.tenant.clone(), move |tx, db, t| {
            store::upsert(tx, db, t, &item)
        })
        .await?;
    Ok(("ran", state.shard.clone()))
}

/// Queues `job` at shard `to` (its file is beside this shard's), due now.
async fn reroute(state: &DemoState, job: &Claimed, to: &ShardId) -> Result<(), Failure> {
    let path = store::db_path(&state.data_dir, to);
    let (id, tenant, body) = (job.id.clone(), job.tenant.to_string(), job.body.clone());
    tokio::task::spawn_blocking(move || insert_at(&path, &id, &tenant, &body))
        .await
        .map_err(|e| Failure::Internal(e.to_string()))?
}

fn insert_at(path: &Path, id: &str, tenant: &str, body: &str) -> Result<(), Failure> {
    if !path.exists() {
        return Err(Failure::Unavailable(format!("no shard file {}", path.display())));
    }
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.execute_batch(SCHEMA)?;
    conn.execute(
        "INSERT INTO jobs (id, tenant, body, due_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (id) DO NOTHING",
        params![id, tenant, body, now_ms() as i64],
    )?;
    Ok(())
}
