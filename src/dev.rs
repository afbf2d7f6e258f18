//! `tenant-edge dev`: the whole stack on loopback in one process, for a first run.
//!
//! Starts the demo shards named in the route file (their items in `<data>/shards`), the
//! catalogue (in a data dir it creates), one TCS per dev region, and the edge; seeds realms,
//! shards and the demo tenants; prints one banner; stops everything cleanly on Ctrl-C. The
//! configs it uses are written into the data dir, so what runs here can be run role by role too.

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use crate::routes::RoutesFile;
use crate::stack::{ports, Ports, Run, Stack, StackError};

/// Options of `tenant-edge dev`.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Directory for the catalogue database, TCS snapshots and generated configs.
    #[arg(long, default_value = "data/dev")]
    pub data: PathBuf,
    /// Route snapshot of the dev stack.
    #[arg(long, default_value = "routes/dev.toml")]
    pub routes: PathBuf,
    /// Directory holding `dev.crt` and `dev.key` for the HTTPS listener.
    #[arg(long, default_value = "certs")]
    pub certs: PathBuf,
    /// The catalogue's store: `sqlite` (in --data) or a PostgreSQL connection string.
    #[arg(
        long,
        env = "TENANT_EDGE_CATALOGUE_STORE",
        default_value = "sqlite",
        hide_env_values = true
    )]
    pub catalogue_store: crate::catalogue::StoreConfig,
    /// How changes reach the edge: `stream` (the NDJSON change stream) or `sns` (each region's
    /// SNS topic, the edge's own SQS queue).
    #[arg(long, value_enum, default_value = "stream")]
    pub fanout: Fanout,
    /// With `--fanout sns`: the AWS endpoint (an emulator such as moto_server, or a VPC
    /// endpoint). Without it, the dev stack starts moto_server itself on a free loopback port.
    #[arg(long, requires = "fanout")]
    pub aws_endpoint: Option<String>,
}

/// `--fanout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fanout {
    /// The NDJSON change stream.
    Stream,
    /// SNS and one SQS queue per edge.
    Sns,
}

/// The AWS endpoint of `--fanout sns`, and the emulator started for it (kept running until
/// the stack stops).
fn aws_endpoint(
    args: &DevArgs,
) -> Result<(Option<String>, Option<crate::stack::moto::MotoServer>), StackError> {
    if args.fanout == Fanout::Stream {
        if args.aws_endpoint.is_some() {
            return Err(StackError::Spec("--aws-endpoint is for --fanout sns".into()));
        }
        return Ok((None, None));
    }
    if let Some(url) = &args.aws_endpoint {
        return Ok((Some(url.clone()), None));
    }
    let moto = crate::stack::moto::MotoServer::start().map_err(|e| {
        StackError::Spec(format!(
            "--fanout sns without --aws-endpoint starts moto_server, which failed ({e}); \
             install it (pip install 'moto[server]') or name an endpoint"
        ))
    })?;
    // The emulator takes any key, but the SDK signs every request and must find one. Set
    // before any AWS client exists, and only when the environment names none.
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() && std::env::var_os("AWS_PROFILE").is_none() {
        std::env::set_var("AWS_ACCESS_KEY_ID", "dev");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "dev");
    }
    Ok((Some(moto.endpoint()), Some(moto)))
}

/// Runs the dev stack until `shutdown` is cancelled (Ctrl-C or SIGTERM in the binary): every
/// role in this process, on the contract's ports, the route file used in place (editing it
/// reloads the edge). Any part failing stops the whole stack.
pub async fn run(args: DevArgs, shutdown: CancellationToken) -> Result<(), StackError> {
    let template = RoutesFile::load(&args.routes)?;
    let data = args.data.clone();
    let (endpoint, _moto) = aws_endpoint(&args)?;
    let mut stack = Stack::builder(&args.data, template);
    if args.fanout == Fanout::Sns {
        let mut sns = crate::fanout::aws::SnsConfig::new("tenant-edge-");
        sns.endpoint_url.clone_from(&endpoint);
        stack = stack.fanout(sns);
    }
    let stack = stack
        .run(Run::InProcess)
        .ports(Ports::Contract)
        .routes_in_place(&args.routes)
        .certs(&args.certs)
        .catalogue_store(args.catalogue_store.clone())
        .sidecars(true)
        .tcs(|_, cfg| cfg.allow_faults = true)
        .edge(move |_, cfg| {
            cfg.threads = 2;
            cfg.access_log = true;
            cfg.cache_file = Some(data.join("edge-cache.json"));
            cfg.cache_file_interval_secs = 30;
        });
    let stack = tokio::select! {
        started = stack.start() => started?,
        () = shutdown.cancelled() => return Ok(()),
    };
    let routes = crate::routes::RouteSnapshot::load_file(&args.routes)?;
    print_banner(&args, &routes, endpoint.as_deref());
    stack.run_until(shutdown).await
}

fn print_banner(args: &DevArgs, routes: &crate::routes::RouteSnapshot, aws: Option<&str>) {
    let backends: usize = routes.shards.values().map(|s| s.backends.len()).sum();
    let (http, https, admin) = (ports::EDGE_HTTP, ports::EDGE_HTTPS, ports::EDGE_ADMIN);
    let lines = [
        String::new(),
        format!("tenant-edge dev stack is up (data in {})", args.data.display()),
        format!("  edge        http://127.0.0.1:{http}   https://127.0.0.1:{https} (h2)   admin http://127.0.0.1:{admin}"),
        format!(
            "  catalogue   http://127.0.0.1:{}   (token: {}/operator.token, every scope; ctl reads it)",
            ports::CATALOGUE,
            args.data.display()
        ),
        format!(
            "  tcs         us-east-1 http://127.0.0.1:{}   eu-west-1 http://127.0.0.1:{}",
            ports::TCS_US_EAST_1,
            ports::TCS_EU_WEST_1
        ),
        format!(
            "  shards      {} demo shards, {backends} backends (routes: {})",
            routes.shards.len(),
            args.routes.display()
        ),
        format!(
            "  sidecars    jira http://127.0.0.1:{}   confluence http://127.0.0.1:{}   (token: {}/<product>.token)",
            ports::SIDECARS,
            ports::SIDECARS + 1,
            args.data.display()
        ),
        "  tenants     acme.example.test, globex.example.test, initech.example.test".into(),
        match aws {
            Some(url) => format!("  fan-out     SNS topics tenant-edge-<region>, the edge's SQS queue, at {url}"),
            None => "  fan-out     the TCS change stream (--fanout sns for SNS/SQS)".into(),
        },
        String::new(),
        "Try:".into(),
        format!("  curl -s -H 'Host: acme.example.test' http://127.0.0.1:{http}/"),
        format!("  curl -s -H 'Host: globex.example.test' http://127.0.0.1:{http}/wiki/spaces"),
        format!(
            "  curl -s -H \"Authorization: Bearer $(cat {}/jira.token)\" http://127.0.0.1:{}/v1/views/jira/hosts/acme.example.test",
            args.data.display(),
            ports::SIDECARS
        ),
        format!(
            "  curl -s -H \"Authorization: Bearer $(cat {}/operator.token)\" http://127.0.0.1:{}/v1/tenants",
            args.data.display(),
            ports::CATALOGUE
        ),
        format!("  curl -sk --http2 --resolve acme.example.test:{https}:127.0.0.1 https://acme.example.test:{https}/wiki"),
        String::new(),
        "Ctrl-C stops everything.".into(),
    ];
    println!("{}", lines.join("\n"));
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Args {
        #[command(flatten)]
        dev: DevArgs,
    }

    #[test]
    fn an_aws_endpoint_is_for_the_sns_fanout_only() {
        let sns = Args::try_parse_from([
            "dev",
            "--fanout",
            "sns",
            "--aws-endpoint",
            "http://127.0.0.1:5000",
        ])
        .unwrap();
        assert_eq!(sns.dev.fanout, Fanout::Sns);
        let (endpoint, moto) = aws_endpoint(&sns.dev).unwrap();
        assert_eq!(endpoint.as_deref(), Some("http://127.0.0.1:5000"));
        assert!(moto.is_none(), "an endpoint given: no emulator started");
        assert!(Args::try_parse_from(["dev", "--aws-endpoint", "http://127.0.0.1:5000"]).is_err());
        let stream =
            Args::try_parse_from(["dev", "--fanout", "stream", "--aws-endpoint", "http://x"]).unwrap();
        assert!(aws_endpoint(&stream.dev).is_err());
        assert!(Args::try_parse_from(["dev", "--fanout", "sqs"]).is_err());
        let default = Args::try_parse_from(["dev"]).unwrap();
        assert_eq!(aws_endpoint(&default.dev).unwrap().0, None);
    }
}
