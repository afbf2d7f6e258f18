//! Command-line parsing and dispatch: one subcommand per role.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// The catalogue: tenants, shards, realms and the ordered change log over HTTP.
    Catalogue(crate::catalogue::CatalogueArgs),
    /// Operator CLI over the catalogue API.
    Ctl(crate::ctl::CtlArgs),
}

/// Parses the command line, sets up logging and runs the chosen role.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_json);
    match cli.command {
        Command::Catalogue(args) => args.run(),
        Command::Ctl(args) => args.run(),
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
