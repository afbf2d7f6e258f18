//! `ctl migrate`: drives a tenant move through its phases, calling the shards' mover hooks.
//!
//! The migration document in the catalogue is the only state: every run reads the recorded
//! phase and carries on from there, and every step's hook is idempotent, so a run that died
//! anywhere can simply be started again. Each phase change is a compare-and-set (`If-Match`)
//! write, so two orchestrators cannot both advance the same migration.
//!
//! Copy and clean act on data regions, as the catalogue computed them when the move was planned:
//! copy imports into `regions_to_add` only (the target's regions the source lacks), clean
//! deletes from `regions_to_remove` only (the source's regions the target lacks), and a rollback
//! deletes only what the copy added. Between overlapping shards the data in shared regions is
//! never touched.

use std::time::Duration;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::feed::{CatalogueClient, ClientError};
use crate::feed::{MigrationDoc, Phase};
use crate::tenant::{Host, Product, Region, ShardId, TenantId};

/// Time allowed for one hook call; export and import carry a whole tenant.
const HOOK_TIMEOUT: Duration = Duration::from_secs(60);

/// `ctl migrate`: move (or roll back the move of) one tenant's product to another shard.
#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// A host of the tenant to move.
    #[arg(long, value_parser = Host::parse)]
    pub host: Host,
    /// The product to move.
    #[arg(long, value_parser = Product::new)]
    pub product: Product,
    /// The target shard.
    #[arg(long, value_parser = ShardId::new)]
    pub to: ShardId,
    /// Abandon the open move instead (only before the switch): the tenant is back on the source.
    #[arg(long)]
    pub rollback: bool,
    /// How long to wait after the freeze for edges to learn it, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub drain_ms: u64,
}

/// Why a move could not go on.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A catalogue call failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// No tenant owns the host.
    #[error("no tenant owns host {0}")]
    UnknownHost(Host),
    /// `--rollback` without an open migration of the tenant's product.
    #[error("{0}: no open migration to roll back")]
    NothingToRollBack(String),
    /// `--rollback` after the switch: the target owns the tenant now.
    #[error("{id} is {phase}: past the switch a move cannot be rolled back (move the tenant back with a new migration)")]
    TooLateToRollBack {
        /// Migration id.
        id: String,
        /// Its phase.
        phase: Phase,
    },
    /// A shard the move needs has no mover hooks registered.
    #[error("shard {0} has no mover URL in the catalogue")]
    NoMover(ShardId),
    /// A mover hook failed.
    #[error("{shard} {hook} hook at {url}: {detail}")]
    Hook {
        /// The shard called.
        shard: ShardId,
        /// The hook (`freeze`, `export`, ...).
        hook: &'static str,
        /// The URL called.
        url: String,
        /// What went wrong.
        detail: String,
    },
}

impl MigrateError {
    /// 2 when something could not be reached, 1 when something refused.
    pub(super) fn exit_code(&self) -> u8 {
        match self {
            MigrateError::Client(ClientError::Unreachable { .. }) => 2,
            _ => 1,
        }
    }
}

/// What export answers and import takes; items stay opaque JSON here. `regions`: where import
/// writes.
#[derive(Debug, Serialize, Deserialize)]
struct Export {
    tenant: TenantId,
    items: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    regions: Option<Vec<Region>>,
}

/// One shard's mover hooks.
struct Mover {
    shard: ShardId,
    base: String,
}

/// A run of the orchestrator over one migration.
struct Run<'a> {
    catalogue: &'a CatalogueClient,
    http: reqwest::Client,
    /// Presented to the shards' mover hooks: the operator's catalogue token.
    token: Option<String>,
    label: String,
    source: Mover,
    target: Mover,
    drain: Duration,
}

/// Runs `ctl migrate`; progress lines go to stdout as the steps happen.
pub(super) async fn run(
    catalogue: &CatalogueClient,
    args: MigrateArgs,
) -> Result<MigrationDoc, MigrateError> {
    let tenant = catalogue
        .tenant_by_host(&args.host)
        .await?
        .ok_or_else(|| MigrateError::UnknownHost(args.host.clone()))?;
    let label = format!("[{}/{}]", tenant.id, args.product);
    let open = open_migration(catalogue, &tenant.id, &args.product).await?;
    let m = match (open, args.rollback) {
        (Some(m), rollback) if rollback || m.to == args.to => {
            println!("{label} resuming {}: {} -> {} at {}", m.id, m.from, m.to, m.phase);
            m
        }
        (_, true) => return Err(MigrateError::NothingToRollBack(label)),
        // Not ours to resume: the catalogue answers 409 for a second open migration.
        (_, false) => {
            let m = catalogue
                .create_migration(&tenant.id, &args.product, &args.to)
                .await?;
            println!("{label} planned {}: {} -> {}", m.id, m.from, m.to);
            m
        }
    };
    let http = crate::http_client::build(crate::http_client::ClientOptions {
        timeout: Some(HOOK_TIMEOUT),
        ..Default::default()
    })
    .map_err(|e| MigrateError::Hook {
        shard: m.from.clone(),
        hook: "client",
        url: String::new(),
        detail: e.to_string(),
    })?;
    let run = Run {
        source: mover(catalogue, &m.from).await?,
        target: mover(catalogue, &m.to).await?,
        catalogue,
        http,
        token: catalogue.token().map(str::to_owned),
        label,
        drain: Duration::from_millis(args.drain_ms),
    };
    if args.rollback {
        run.rollback(m).await
    } else {
        run.forward(m).await
    }
}

/// The open migration of `tenant`'s `product`, if any.
async fn open_migration(
    catalogue: &CatalogueClient,
    tenant: &TenantId,
    product: &Product,
) -> Result<Option<MigrationDoc>, ClientError> {
    let all = catalogue.list_migrations(Some(tenant)).await?;
    Ok(all
        .into_iter()
        .find(|m| &m.product == product && m.phase.is_open()))
}

async fn mover(catalogue: &CatalogueClient, shard: &ShardId) -> Result<Mover, MigrateError> {
    let doc = catalogue.get_shard(shard).await?;
    let base = doc.mover.ok_or_else(|| MigrateError::NoMover(shard.clone()))?;
    Ok(Mover {
        shard: shard.clone(),
        base: base.trim_end_matches('/').to_owned(),
    })
}

impl Run<'_> {
    /// Drives `m` from its recorded phase to `done`, one idempotent step at a time.
    async fn forward(&self, mut m: MigrationDoc) -> Result<MigrationDoc, MigrateError> {
        loop {
            let (next, note) = match m.phase {
                Phase::Planned => {
                    self.hook(&self.source, "freeze", &m.tenant).await?;
                    let note = format!("source {} fenced for writes", m.from);
                    (Phase::Frozen, note)
                }
                Phase::Frozen => {
                    // Edges learn the freeze through the change stream; until they do they
                    // still send writes, which the source's fence turns into 503s.
                    tokio::time::sleep(self.drain).await;
                    let note = format!(
                        "waited {} ms for edges to learn the freeze",
                        self.drain.as_millis()
                    );
                    (Phase::Copying, note)
                }
                Phase::Copying => {
                    let note = self.copy(&m).await?;
                    (Phase::Switched, note)
                }
                Phase::Switched => {
                    // The tenant's version now is the one carrying the switch: whoever the
                    // source turns away must fetch at least that.
                    let version = self.catalogue.get_tenant(&m.tenant).await?.version;
                    let body = json!({"tenant": m.tenant, "version": version});
                    self.call(&self.source, "release", Method::POST, &body).await?;
                    let note = format!("source {} released at tenant version {version}", m.from);
                    (Phase::Cleaning, note)
                }
                Phase::Cleaning => {
                    let note = if m.regions_to_remove.is_empty() {
                        format!("nothing to delete: {} keeps every region of {}", m.to, m.from)
                    } else {
                        self.delete(&self.source, &m.tenant, &m.regions_to_remove).await?;
                        format!("deleted from {} in {}", m.from, joined(&m.regions_to_remove))
                    };
                    (Phase::Done, note)
                }
                Phase::Done | Phase::RolledBack => return Ok(m),
            };
            m = self.advance(&m, next, &note).await?;
        }
    }

    /// Brings the tenant back online at the source; only before the switch.
    async fn rollback(&self, m: MigrationDoc) -> Result<MigrationDoc, MigrateError> {
        if !m.phase.can_become(Phase::RolledBack) {
            return Err(MigrateError::TooLateToRollBack {
                id: m.id,
                phase: m.phase,
            });
        }
        // Only what the copy added: the regions the target shares with the source hold the
        // source's own data.
        let emptied = if m.regions_to_add.is_empty() {
            "nothing copied".to_owned()
        } else {
            self.delete(&self.target, &m.tenant, &m.regions_to_add).await?;
            format!("target {} emptied in {}", m.to, joined(&m.regions_to_add))
        };
        self.hook(&self.source, "unfreeze", &m.tenant).await?;
        let note = format!("{emptied}, source {} unfrozen", m.from);
        self.advance(&m, Phase::RolledBack, &note).await
    }

    /// Compare-and-set of the phase, then one progress line.
    async fn advance(&self, m: &MigrationDoc, next: Phase, note: &str) -> Result<MigrationDoc, MigrateError> {
        let m = self.catalogue.set_phase(&m.id, next, Some(m.version)).await?;
        println!("{} {} ({note})", self.label, m.phase);
        Ok(m)
    }

    /// Copies the tenant into the regions the target adds (exported from the source's home
    /// region), and makes the target accept it; the progress note.
    async fn copy(&self, m: &MigrationDoc) -> Result<String, MigrateError> {
        if m.regions_to_add.is_empty() {
            let nothing = Export {
                tenant: m.tenant.clone(),
                items: Vec::new(),
                regions: Some(Vec::new()),
            };
            self.call(&self.target, "import", Method::POST, &nothing).await?;
            return Ok(format!(
                "nothing to copy: {} already holds every region of {}",
                m.to, m.from
            ));
        }
        let mut export = self.export(&m.tenant).await?;
        let count = export.items.len();
        export.regions = Some(m.regions_to_add.clone());
        self.call(&self.target, "import", Method::POST, &export).await?;
        Ok(format!(
            "copied {count} items to {} in {}",
            m.to,
            joined(&m.regions_to_add)
        ))
    }

    /// Deletes the tenant's items from `regions` of `mover`'s shard.
    async fn delete(&self, mover: &Mover, tenant: &TenantId, regions: &[Region]) -> Result<(), MigrateError> {
        let body = json!({ "tenant": tenant, "regions": regions });
        self.call(mover, "delete", Method::POST, &body).await
    }

    /// Every item of the tenant at the source.
    async fn export(&self, tenant: &TenantId) -> Result<Export, MigrateError> {
        let url = format!("{}/mover/export", self.source.base);
        let fail = |detail: String| MigrateError::Hook {
            shard: self.source.shard.clone(),
            hook: "export",
            url: url.clone(),
            detail,
        };
        let resp = self
            .authorised(self.http.get(&url))
            .query(&[("tenant", tenant.as_str())])
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        let resp = checked(resp).await.map_err(fail)?;
        resp.json().await.map_err(|e| fail(e.to_string()))
    }

    /// `req` with the operator's token, when there is one.
    fn authorised(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// A hook whose body is `{"tenant"}`.
    async fn hook(&self, mover: &Mover, hook: &'static str, tenant: &TenantId) -> Result<(), MigrateError> {
        self.call(mover, hook, Method::POST, &json!({ "tenant": tenant }))
            .await
    }

    async fn call<B: Serialize>(
        &self,
        mover: &Mover,
        hook: &'static str,
        method: Method,
        body: &B,
    ) -> Result<(), MigrateError> {
        let url = format!("{}/mover/{hook}", mover.base);
        let fail = |detail: String| MigrateError::Hook {
            shard: mover.shard.clone(),
            hook,
            url: url.clone(),
            detail,
        };
        let resp = self
            .authorised(self.http.request(method, &url))
            .json(body)
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        checked(resp).await.map_err(fail).map(drop)
    }
}

fn joined(regions: &[Region]) -> String {
    regions.iter().map(Region::as_str).collect::<Vec<_>>().join(", ")
}

/// `resp` when it is a success; otherwise its status and body as the reason.
async fn checked(resp: reqwest::Response) -> Result<reqwest::Response, String> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    Err(format!("{status} {}", text.trim()))
}
