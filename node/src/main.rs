//! `evio-node`: the evio daemon and its command-line client.
//!
//! - `run`: the production daemon, one member of the lease cluster ([`commands::run`]).
//! - `dev`: the embedded default — a single-member cluster on this host ([`commands::dev`]).
//! - `config-gen`: the init container — this node's conflist from its lease ([`commands::config_gen`]).
//! - `import-etcd`: the original Evio ranges in etcd become reserved leases ([`commands::import_etcd`]).
//! - `leases`, `cluster`: the CLI client for a running member's HTTP API ([`commands::client`]).
//! - `status`: the status page's picture in a terminal ([`commands::status`]).
//!
//! The daemon's HTTP API (and Raft RPC) is served by [`serve`].

mod cli;
mod cni_service;
mod commands;
mod conflist;
mod daemon;
mod etcd;
mod host;
mod kube;
mod node_info;
mod serve;
mod tls;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "evio-node",
    version,
    about = "evio: partition-tolerant pod networking for Kubernetes at the edge"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a single-member cluster on this host: bootstrap, lease for this host, conflist, API.
    Dev(commands::dev::DevArgs),
    /// Run a cluster member (the production daemon): bootstrap or join, API, Raft.
    Run(Box<commands::run::RunArgs>),
    /// Query and change leases through a member's API.
    #[command(subcommand)]
    Leases(commands::client::LeasesCommand),
    /// Cluster state through a member's API.
    #[command(subcommand)]
    Cluster(commands::client::ClusterCommand),
    /// Members, leader, term and the pool's blocks as one member sees them (the terminal
    /// twin of the status page at `/`).
    Status(commands::status::StatusArgs),
    /// Write this node's CNI conflist from its lease (the init container).
    ConfigGen(commands::config_gen::ConfigGenArgs),
    /// Import the original Evio ranges from etcd as reserved leases.
    ImportEtcd(commands::import_etcd::ImportEtcdArgs),
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EVIO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn,sled=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    evio_raft::alloc::limit_arenas();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Dev(args) => commands::dev::run(args).await,
        Command::Run(args) => commands::run::run(*args).await,
        Command::Leases(cmd) => commands::client::leases(cmd).await,
        Command::Cluster(cmd) => commands::client::cluster(cmd).await,
        Command::Status(args) => commands::status::run(args).await,
        Command::ConfigGen(args) => commands::config_gen::run(args).await,
        Command::ImportEtcd(args) => commands::import_etcd::run(args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line with the whole cause chain; no backtrace for operator errors.
            eprintln!("evio-node: error: {e:#}");
            if let Some(hint) = tls::revoked_hint(&e) {
                eprintln!("evio-node: {hint}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}
