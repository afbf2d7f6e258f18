//! `tenant-edge ctl`: the operator CLI over the catalogue API, built on the typed
//! [`CatalogueClient`].
//!
//! Exit codes: 0 done, 1 the catalogue refused (its message is printed), 2 the catalogue is
//! unreachable or the input file is unusable.

mod migrate;
mod output;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use self::migrate::{MigrateArgs, MigrateError};
use crate::feed::{CatalogueClient, ClientError, RealmDoc, ShardDoc, TenantDoc};
use crate::tenant::{Realm, ShardId, TenantId};

/// `tenant-edge ctl`: manage tenants, shards and realms in the catalogue.
#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// Base URL of the catalogue API.
    #[arg(
        long,
        global = true,
        env = "TENANT_EDGE_CATALOGUE",
        default_value = "http://127.0.0.1:7000"
    )]
    pub catalogue: String,
    /// Bearer token for the catalogue; else `--token-file`, else `data/dev/operator.token`
    /// when it exists (the dev stack's operator token).
    #[arg(long, global = true, env = "TENANT_EDGE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the bearer token (its first line).
    #[arg(long, global = true)]
    pub token_file: Option<std::path::PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// The `ctl` commands.
#[derive(Debug, clap::Subcommand)]
pub enum CtlCommand {
    /// Tenants: hosts, realm, placements.
    Tenants {
        /// What to do with tenants.
        #[command(subcommand)]
        cmd: TenantCmd,
    },
    /// The shard registry.
    Shards {
        /// What to do with shards.
        #[command(subcommand)]
        cmd: ShardCmd,
    },
    /// Realms: the regions a tenant's data may live in.
    Realms {
        /// What to do with realms.
        #[command(subcommand)]
        cmd: RealmCmd,
    },
    /// Tenant moves.
    Migrations {
        /// What to do with migrations.
        #[command(subcommand)]
        cmd: MigrationCmd,
    },
    /// Moves a tenant's product to another shard (or rolls the move back), resuming an open move.
    Migrate(MigrateArgs),
    /// Every edge reporting to a TCS, the laggards first: lag behind its view in sequences
    /// and seconds, when last heard from. Exits 3 when one is past a given bound.
    Fleet {
        /// Base URL of the TCS to ask (the dev stack's us-east-1 by default).
        #[arg(long, env = "TENANT_EDGE_TCS", default_value = "http://127.0.0.1:7101")]
        tcs: String,
        /// Fail when an edge is more than this many seconds behind.
        #[arg(long)]
        max_lag_seconds: Option<f64>,
        /// Fail when an edge is more than this many sequences behind.
        #[arg(long)]
        max_lag_seqs: Option<u64>,
    },
    /// Re-wraps every tenant's data key still wrapped by a previous master key with the
    /// current one (the catalogue started with `--previous-master-key`); no secret rewritten.
    RotateKeys {
        /// Tenants per request (the catalogue's default when left out; at most 10 000).
        #[arg(long)]
        page: Option<usize>,
    },
    /// Prints the change log.
    Changes {
        /// Print changes after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many.
        #[arg(long)]
        limit: Option<usize>,
    },
}

/// `ctl tenants ...`
#[derive(Debug, clap::Subcommand)]
pub enum TenantCmd {
    /// Creates or replaces the tenant in FILE (`-` for stdin).
    Put {
        /// The tenant document.
        file: PathBuf,
        /// Write only if the tenant's current version is this one (0: it must not exist).
        #[arg(long)]
        if_match: Option<u64>,
    },
    /// Creates or replaces every tenant in FILE (`-` for stdin): one JSON document per line,
    /// sent in batches, each written in one catalogue transaction (all or nothing).
    Import {
        /// The tenant documents, one per line.
        file: PathBuf,
        /// Tenants per batch.
        #[arg(long, default_value_t = crate::feed::client::IMPORT_BATCH, value_parser = clap::value_parser!(u32).range(1..=50_000))]
        batch: u32,
    },
    /// Prints a tenant.
    Get {
        /// Tenant id.
        #[arg(value_parser = TenantId::new)]
        id: TenantId,
    },
    /// Lists every tenant.
    List,
    /// Deletes a tenant.
    Delete {
        /// Tenant id.
        #[arg(value_parser = TenantId::new)]
        id: TenantId,
        /// Delete only if the tenant's current version is this one.
        #[arg(long)]
        if_match: Option<u64>,
    },
}

/// `ctl shards ...`
#[derive(Debug, clap::Subcommand)]
pub enum ShardCmd {
    /// Creates or replaces the shard in FILE (`-` for stdin).
    Put {
        /// The shard document.
        file: PathBuf,
    },
    /// Prints a shard.
    Get {
        /// Shard id.
        #[arg(value_parser = ShardId::new)]
        id: ShardId,
    },
    /// Lists every shard.
    List,
    /// Deletes a shard no tenant uses.
    Delete {
        /// Shard id.
        #[arg(value_parser = ShardId::new)]
        id: ShardId,
    },
}

/// `ctl realms ...`
#[derive(Debug, clap::Subcommand)]
pub enum RealmCmd {
    /// Creates or replaces the realm in FILE (`-` for stdin).
    Put {
        /// The realm document.
        file: PathBuf,
    },
    /// Prints a realm.
    Get {
        /// Realm name.
        #[arg(value_parser = Realm::new)]
        name: Realm,
    },
    /// Lists every realm.
    List,
    /// Deletes a realm no tenant is in.
    Delete {
        /// Realm name.
        #[arg(value_parser = Realm::new)]
        name: Realm,
    },
}

/// `ctl migrations ...`
#[derive(Debug, clap::Subcommand)]
pub enum MigrationCmd {
    /// Lists migrations, newest first.
    List {
        /// Only this tenant's.
        #[arg(long, value_parser = TenantId::new)]
        tenant: Option<TenantId>,
    },
    /// Prints a migration.
    Get {
        /// Migration id (`m-1`).
        id: String,
    },
}

/// Why a `ctl` command failed.
#[derive(Debug, thiserror::Error)]
enum CtlError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{path}: {detail}")]
    BadFile { path: PathBuf, detail: String },
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("TCS at {url}: {detail}")]
    Tcs {
        url: String,
        detail: String,
        unreachable: bool,
    },
    #[error("{n} edge(s) past the bound")]
    Behind { table: String, n: usize },
}

impl CtlError {
    fn exit_code(&self) -> u8 {
        match self {
            CtlError::Client(ClientError::Api(_) | ClientError::Protocol { .. }) => 1,
            CtlError::Client(ClientError::Unreachable { .. })
            | CtlError::BadFile { .. }
            | CtlError::Runtime(_) => 2,
            CtlError::Migrate(e) => e.exit_code(),
            CtlError::Tcs { unreachable, .. } => {
                if *unreachable {
                    2
                } else {
                    1
                }
            }
            CtlError::Behind { .. } => 3,
        }
    }
}

impl CtlArgs {
    /// Runs the command, printing its result to stdout and any error to stderr.
    pub fn run(self) -> ExitCode {
        let result = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(CtlError::Runtime)
            .and_then(|rt| rt.block_on(self.execute()));
        match result {
            Ok(out) => {
                print!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                if let CtlError::Behind { table, .. } = &e {
                    print!("{table}");
                }
                eprintln!("error: {e}");
                ExitCode::from(e.exit_code())
            }
        }
    }

    /// The token to present: `--token`, `--token-file`, or the dev stack's operator token.
    fn token(&self) -> Result<Option<String>, CtlError> {
        if let Some(t) = &self.token {
            return Ok(Some(t.clone()));
        }
        let dev = std::path::Path::new(crate::stack::DEV_OPERATOR_TOKEN);
        let file = match &self.token_file {
            Some(path) => path.as_path(),
            None if dev.exists() => dev,
            None => return Ok(None),
        };
        crate::feed::bearer::read_token_file(file).map_err(|e| CtlError::BadFile {
            path: file.to_owned(),
            detail: e.to_string(),
        })
    }

    /// Runs the command and returns what to print.
    async fn execute(self) -> Result<String, CtlError> {
        let token = self.token()?;
        let client = CatalogueClient::new(&self.catalogue)?.with_token(token.clone());
        match self.command {
            CtlCommand::Tenants { cmd } => tenants(&client, cmd).await,
            CtlCommand::Shards { cmd } => shards(&client, cmd).await,
            CtlCommand::Realms { cmd } => realms(&client, cmd).await,
            CtlCommand::Migrations { cmd } => migrations(&client, cmd).await,
            CtlCommand::Migrate(args) => {
                let m = migrate::run(&client, args).await?;
                Ok(format!("{} {}\n", m.id, m.phase))
            }
            CtlCommand::Fleet {
                tcs,
                max_lag_seconds,
                max_lag_seqs,
            } => fleet(&tcs, token.as_deref(), max_lag_seconds, max_lag_seqs).await,
            CtlCommand::Changes { after, limit } => {
                let page = client.changes(after, limit, None).await?;
                Ok(output::changes(&page.changes))
            }
            CtlCommand::RotateKeys { page } => rotate_keys(&client, page).await,
        }
    }
}

/// `ctl fleet`: the fleet view of one TCS as a table; [`CtlError::Behind`] when an edge is
/// past a bound.
async fn fleet(
    base: &str,
    token: Option<&str>,
    max_seconds: Option<f64>,
    max_seqs: Option<u64>,
) -> Result<String, CtlError> {
    let url = format!("{}/v1/fleet", base.trim_end_matches('/'));
    let failed = |detail: String, unreachable: bool| CtlError::Tcs {
        url: url.clone(),
        detail,
        unreachable,
    };
    let http = crate::http_client::build(crate::http_client::ClientOptions::default())
        .map_err(|e| failed(e.to_string(), true))?;
    let mut req = http.get(&url).timeout(std::time::Duration::from_secs(10));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| failed(crate::feed::error_chain(&e), true))?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| failed(e.to_string(), true))?;
    if !status.is_success() {
        let reason = serde_json::from_slice::<crate::feed::ApiError>(&body)
            .map(|e| e.reason)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        return Err(failed(format!("{status}: {reason}"), false));
    }
    let fleet: crate::feed::Fleet =
        serde_json::from_slice(&body).map_err(|e| failed(format!("not a fleet view: {e}"), false))?;
    let table = output::fleet(&fleet);
    let behind = fleet
        .edges
        .iter()
        .filter(|e| {
            max_seconds.is_some_and(|m| e.lag_seconds > m) || max_seqs.is_some_and(|m| e.lag_seqs > m)
        })
        .count();
    if behind > 0 {
        return Err(CtlError::Behind { table, n: behind });
    }
    Ok(table)
}

async fn tenants(client: &CatalogueClient, cmd: TenantCmd) -> Result<String, CtlError> {
    Ok(match cmd {
        TenantCmd::Put { file, if_match } => {
            let doc: TenantDoc = read_doc(&file)?;
            pretty(&client.put_tenant(&doc, if_match).await?)
        }
        TenantCmd::Import { file, batch } => import(client, &file, batch as usize).await?,
        TenantCmd::Get { id } => pretty(&client.get_tenant(&id).await?),
        TenantCmd::List => output::tenants(&client.list_tenants().await?),
        TenantCmd::Delete { id, if_match } => {
            let version = client.delete_tenant(&id, if_match).await?;
            format!("deleted tenant {id} (version {version})\n")
        }
    })
}

async fn shards(client: &CatalogueClient, cmd: ShardCmd) -> Result<String, CtlError> {
    Ok(match cmd {
        ShardCmd::Put { file } => pretty(&client.put_shard(&read_doc::<ShardDoc>(&file)?).await?),
        ShardCmd::Get { id } => pretty(&client.get_shard(&id).await?),
        ShardCmd::List => output::shards(&client.list_shards().await?),
        ShardCmd::Delete { id } => {
            client.delete_shard(&id).await?;
            format!("deleted shard {id}\n")
        }
    })
}

async fn realms(client: &CatalogueClient, cmd: RealmCmd) -> Result<String, CtlError> {
    Ok(match cmd {
        RealmCmd::Put { file } => pretty(&client.put_realm(&read_doc::<RealmDoc>(&file)?).await?),
        RealmCmd::Get { name } => pretty(&client.get_realm(&name).await?),
        RealmCmd::List => output::realms(&client.list_realms().await?),
        RealmCmd::Delete { name } => {
            client.delete_realm(&name).await?;
            format!("deleted realm {name}\n")
        }
    })
}

async fn migrations(client: &CatalogueClient, cmd: MigrationCmd) -> Result<String, CtlError> {
    Ok(match cmd {
        MigrationCmd::List { tenant } => output::migrations(&client.list_migrations(tenant.as_ref()).await?),
        MigrationCmd::Get { id } => pretty(&client.get_migration(&id).await?),
    })
}

/// `ctl rotate-keys`: the rotation page by page, one progress line per page.
async fn rotate_keys(client: &CatalogueClient, page: Option<usize>) -> Result<String, CtlError> {
    let (mut rewrapped, mut left, mut pages) = (0, 0, 0);
    let mut after: Option<crate::tenant::TenantId> = None;
    loop {
        let r = client.rotate_keys(after.as_ref(), page).await?;
        rewrapped += r.rewrapped;
        left += r.left;
        pages += 1;
        match r.next {
            Some(next) => {
                println!("re-wrapped {rewrapped} data keys so far (through tenant {next})");
                after = Some(next);
            }
            None => {
                let pages = if pages == 1 {
                    "1 page".to_owned()
                } else {
                    format!("{pages} pages")
                };
                let done = format!("re-wrapped {rewrapped} data keys with {} ({pages})", r.key_id);
                return Ok(match left {
                    0 => format!("{done}\n"),
                    _ => format!("{done}; {left} tenants were written meanwhile: run it again\n"),
                });
            }
        }
    }
}

/// `ctl tenants import`: streams FILE's lines in batches, one progress line per batch.
async fn import(client: &CatalogueClient, path: &Path, batch: usize) -> Result<String, CtlError> {
    use crate::feed::ImportError;
    let bad = |detail: String| CtlError::BadFile {
        path: path.to_owned(),
        detail,
    };
    let reader: Box<dyn std::io::BufRead> = if path == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(path).map_err(|e| bad(e.to_string()))?,
        ))
    };
    let started = std::time::Instant::now();
    let progress = |written: usize| {
        let rate = written as f64 / started.elapsed().as_secs_f64().max(1e-3);
        println!("imported {written} tenants ({rate:.0}/s)");
    };
    let written = client
        .import_lines(reader, batch, progress)
        .await
        .map_err(|e| match e {
            ImportError::Line { .. } => bad(e.to_string()),
            ImportError::Client(e) => CtlError::Client(e),
        })?;
    Ok(format!(
        "imported {written} tenants in {:.1} s\n",
        started.elapsed().as_secs_f64()
    ))
}

/// Reads and parses a document from `path`, or from stdin when it is `-`.
fn read_doc<T: DeserializeOwned>(path: &Path) -> Result<T, CtlError> {
    let bad = |detail: String| CtlError::BadFile {
        path: path.to_owned(),
        detail,
    };
    let mut text = String::new();
    if path == Path::new("-") {
        std::io::stdin().read_to_string(&mut text).map(drop)
    } else {
        std::fs::read_to_string(path).map(|t| text = t)
    }
    .map_err(|e| bad(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| bad(e.to_string()))
}

fn pretty<T: Serialize>(doc: &T) -> String {
    // Serialising our own documents to a string cannot fail; keep a fallback all the same.
    let mut out = serde_json::to_string_pretty(doc).unwrap_or_else(|e| format!("<unprintable: {e}>"));
    out.push('\n');
    out
}
