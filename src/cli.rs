//! Command-line parsing and dispatch: one subcommand per role.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// `tenant-edge`: edge ingress routing for multi-tenant SaaS.
#[derive(Debug, Parser)]
#[command(name = "tenant-edge", version, about)]
pub struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    pub log_json: bool,
    /// The role to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The roles and tools of the binary.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Starts the whole stack on loopback: catalogue, two TCS regions, the edge, demo shards.
    Dev(crate::dev::DevArgs),
    /// Starts a stack of child processes on free loopback ports and prints where each part
    /// listens as one JSON line (for scripts and benchmarks); runs until Ctrl-C or SIGTERM.
    Stack(crate::stack::cli::StackArgs),
    /// Runs the catalogue: the tenant/shard/realm store, its API and the ordered change log.
    Catalogue(crate::catalogue::CatalogueArgs),
    /// Operator CLI over the catalogue API.
    Ctl(crate::ctl::CtlArgs),
    /// Runs a Tenant Context Service: tails the catalogue, serves the `ingress` view.
    Tcs {
        /// The TCS configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Serve `/admin/faults` (fault injection for tests and demos), whatever the config says.
        #[arg(long)]
        allow_faults: bool,
    },
    /// Runs the edge proxy.
    Proxy {
        /// The edge's TOML config file.
        #[arg(long)]
        config: PathBuf,
        /// Take the listening sockets over from the edge running with this config: wait on its
        /// `upgrade_sock` until it is sent SIGQUIT, restore the cache file it writes then, and
        /// only then accept. The old edge drains and exits.
        #[arg(long)]
        upgrade: bool,
    },
    /// Runs a sidecar: a product service's tenant-context cache on localhost, with TCS's API
    /// for the service's view and its secrets opened.
    Sidecar {
        /// The sidecar's TOML config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Validates a route snapshot file: prints a summary (exit 0) or every problem (exit 1).
    CheckRoutes {
        /// The `routes/*.toml` file.
        file: PathBuf,
    },
    /// Runs one demo shard backend.
    DemoShard {
        /// The shard it stands in for.
        #[arg(long)]
        shard: String,
        /// Its backend name inside the shard.
        #[arg(long)]
        backend: String,
        /// Listen address.
        #[arg(long)]
        listen: SocketAddr,
        /// The product the shard serves.
        #[arg(long, value_parser = crate::tenant::Product::new)]
        product: crate::tenant::Product,
        /// The regions holding the shard's data, home region first (comma-separated).
        #[arg(long, value_delimiter = ',', required = true, value_parser = crate::tenant::Region::new)]
        regions: Vec<crate::tenant::Region>,
        /// Directory of the shard's files (`shard-<shard>.db`, `data-<product>-<region>.db`);
        /// give every backend of a shard, and every shard of the stack, the same one.
        #[arg(long)]
        data: PathBuf,
        /// File whose first line is the token the mover hooks ask for (the orchestrator's).
        #[arg(long)]
        mover_token_file: Option<PathBuf>,
        /// Leave the mover hooks open without a token (loopback only).
        #[arg(long)]
        allow_unauthenticated: bool,
        /// The product's sidecar (`http://127.0.0.1:7201`): tenant requests are checked against
        /// the context it holds, and queued jobs re-check their tenant's placement there.
        #[arg(long, requires = "sidecar_token_file")]
        sidecar: Option<String>,
        /// File whose first line is the product service's token, which its sidecar asks for.
        #[arg(long, requires = "sidecar")]
        sidecar_token_file: Option<PathBuf>,
    },
}

/// Parses the command line, sets up logging and runs the chosen role.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_json);
    match cli.command {
        Command::CheckRoutes { file } => check_routes(&file),
        Command::Catalogue(args) => run_role(Some(ROLE_DRAIN_GRACE), |shutdown| {
            crate::catalogue::run(args.into(), shutdown)
        }),
        Command::Ctl(args) => args.run(),
        Command::Dev(args) => run_role(None, |shutdown| crate::dev::run(args, shutdown)),
        Command::Stack(args) => run_role(None, |shutdown| crate::stack::cli::run(args, shutdown)),
        Command::Tcs { config, allow_faults } => match crate::tcs::TcsConfig::load(&config) {
            Ok(mut cfg) => {
                cfg.allow_faults |= allow_faults;
                run_role(Some(ROLE_DRAIN_GRACE), |shutdown| crate::tcs::run(cfg, shutdown))
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Sidecar { config } => match crate::sidecar::SidecarConfig::load(&config) {
            Ok(cfg) => run_role_threads(cfg.threads, |shutdown| crate::sidecar::run(cfg, shutdown)),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Proxy { config, upgrade } => match crate::edge::EdgeConfig::load(&config) {
            Ok(cfg) if upgrade => run_role(None, |shutdown| crate::edge::run_upgrade(cfg, shutdown)),
            Ok(cfg) => run_role(None, |shutdown| crate::edge::run(cfg, shutdown)),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::DemoShard {
            shard,
            backend,
            listen,
            product,
            regions,
            data,
            mover_token_file,
            allow_unauthenticated,
            sidecar,
            sidecar_token_file,
        } => {
            let mover_token = match mover_token_file
                .as_deref()
                .map(crate::feed::bearer::read_token_file)
            {
                None => None,
                Some(Ok(token)) => token,
                Some(Err(e)) => {
                    tracing::error!(error = %e, "cannot read the mover token file");
                    return ExitCode::FAILURE;
                }
            };
            let sidecar = match (
                sidecar,
                sidecar_token_file
                    .as_deref()
                    .map(crate::feed::bearer::read_token_file),
            ) {
                (Some(url), Some(Ok(Some(token)))) => Some(crate::demo::SidecarLink { url, token }),
                (None, _) => None,
                (Some(_), _) => {
                    tracing::error!("cannot read a token from the sidecar token file");
                    return ExitCode::FAILURE;
                }
            };
            let cfg = crate::demo::DemoShardConfig {
                shard,
                backend,
                listen,
                product,
                regions,
                data_dir: data,
                mover_token,
                allow_unauthenticated,
                sidecar,
            };
            run_role(Some(ROLE_DRAIN_GRACE), |shutdown| crate::demo::run(cfg, shutdown))
        }
    }
}

/// `check-routes`: exit 0 when valid, 1 when invalid, 2 when the file cannot be read.
fn check_routes(file: &std::path::Path) -> ExitCode {
    use crate::routes::{RouteError, RouteSnapshot};
    match RouteSnapshot::load_file(file) {
        Ok(snapshot) => {
            println!("{}", snapshot.summary());
            ExitCode::SUCCESS
        }
        Err(e @ RouteError::Read { .. }) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(RouteError::Invalid { problems }) => {
            eprintln!("{}: {} problem(s):", file.display(), problems.len());
            for problem in &problems {
                eprintln!("  {problem}");
            }
            ExitCode::FAILURE
        }
    }
}

/// How long the catalogue, a TCS or a demo shard may take to finish its requests in flight
/// after the first signal (it stops accepting at once; long-polls and change streams end at
/// once). The edge and `dev` bound their drain themselves (`drain_timeout_ms`).
const ROLE_DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs a long-lived role on a fresh runtime until it ends or Ctrl-C / SIGTERM cancels it;
/// past `grace` after the signal it is stopped with its requests in flight.
fn run_role<F, Fut, E>(grace: Option<std::time::Duration>, role: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    run_role_on(tokio::runtime::Runtime::new(), grace, role)
}

/// [`run_role`] on a runtime of `threads` workers: one is a single-threaded runtime, whose
/// every task runs on the thread that waits for I/O, so an answer wakes no other thread.
fn run_role_threads<F, Fut, E>(threads: usize, role: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    run_role_on(runtime, None, role)
}

fn run_role_on<F, Fut, E>(
    runtime: std::io::Result<tokio::runtime::Runtime>,
    grace: Option<std::time::Duration>,
    role: F,
) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    let result = runtime.block_on(async {
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        let overdue = async {
            shutdown.cancelled().await;
            match grace {
                Some(grace) => tokio::time::sleep(grace).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            done = role(shutdown.clone()) => done.map_err(|e| e.to_string()),
            () = overdue => Err(format!("requests still in flight {grace:?} after the signal")),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "stopped with an error");
            ExitCode::FAILURE
        }
    }
}

/// Cancels `shutdown` on Ctrl-C or SIGTERM (the role drains); a second one exits at once.
async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    next_signal(term.as_mut()).await;
    tracing::info!("shutting down (a second signal stops at once)");
    shutdown.cancel();
    next_signal(term.as_mut()).await;
    tracing::warn!("second signal: exiting now");
    std::process::exit(130);
}

/// Resolves on the next Ctrl-C or SIGTERM.
async fn next_signal(term: Option<&mut tokio::signal::unix::Signal>) {
    let term = async {
        match term {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// Sets up `tracing`: text by default, JSON lines with `--log-json`; `RUST_LOG` filters.
pub fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
