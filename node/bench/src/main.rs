//! `evio-bench`: evio against its anchors, side by side in one run on this machine (issue 8).
//! Each subcommand starts what it measures itself (real `evio-node run` and `etcd` processes
//! on free 127.0.0.1 ports, data in /var/tmp), prints medians, p99, ratios and whether the goal
//! was met, optionally writes the figures as JSON, and cleans up even when it fails.

mod cluster;
mod failover;
mod join;
mod lease;
mod members;
mod memory;
mod original_evio;
mod pods;
mod stats;

use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "evio-bench", about = "evio benchmarks against their anchors")]
struct Cli {
    /// The evio-node binary to run (default: the one beside this executable).
    #[arg(long, global = true)]
    evio_node: Option<PathBuf>,
    /// The etcd server binary (Debian `etcd-server`).
    #[arg(long, global = true, default_value = "etcd")]
    etcd: PathBuf,
    /// An extra argument for every `evio-node run` started (repeat it), e.g.
    /// `--evio-run-arg=--election-timeout-ms=200`.
    #[arg(long = "evio-run-arg", global = true, allow_hyphen_values = true)]
    evio_run_args: Vec<String>,
    #[command(subcommand)]
    bench: Bench,
}

/// One variant per figure; a new benchmark is a new variant and a match arm in `main`.
#[derive(Subcommand)]
enum Bench {
    /// Lease acquire latency/throughput, 1 and 16 clients: evio vs the original algorithm on etcd.
    Lease(Common),
    /// SIGKILL the leader, time until a write succeeds: evio vs etcd, 20 trials.
    Failover(Common),
    /// RSS of idle members with 256 and 65,536 leases: evio vs etcd.
    Memory(Common),
    /// Acquire latency at 256 vs 65,536 leases.
    Scale(Common),
    /// A 4th member joining 3 voters holding 65,536 leases (log compacted): catch-up time,
    /// snapshot size, RSS.
    Join(JoinArgs),
    /// Pod ADD/DEL latency, sequential: evio-cni (OVS netdev, LXBR) vs the reference bridge plugin.
    Pods(PodArgs),
    /// N members started at once as a DaemonSet would (default 256): time until all hold
    /// leases, leader CPU and RSS, idle CPU per follower, acquire p50/p99, a failover.
    Members(MembersArgs),
    /// Node fill: 253 pods, 8 concurrent ADDs, then DEL all: evio-cni vs the bridge plugin.
    Fill(PodArgs),
}

#[derive(Args)]
struct JoinArgs {
    #[command(flatten)]
    common: Common,
    /// Leases held when the member joins (default: 65,536, the whole pool; 1,500 with --quick).
    #[arg(long)]
    leases: Option<usize>,
}

#[derive(Args)]
struct MembersArgs {
    #[command(flatten)]
    common: Common,
    /// How many members (2 to 256; default 256, 4 with --quick).
    #[arg(long)]
    members: Option<usize>,
}

#[derive(Args)]
struct PodArgs {
    #[command(flatten)]
    common: Common,
    /// The evio-cni binary (default: the one beside this executable).
    #[arg(long)]
    evio_cni: Option<PathBuf>,
    /// Which evio bridge types to measure: ovs, lxbr or both (OVS needs ovs-vswitchd running).
    #[arg(long, default_value = "both")]
    kind: String,
    /// evio's IPAM: host-local (exec'd), evio-ipam (the daemon's own) or both.
    #[arg(long, default_value = "host-local")]
    ipam: String,
    /// Pods per plugin (default: 200 for pods, 253 for fill).
    #[arg(long)]
    pods: Option<usize>,
    /// Concurrent ADDs/DELs (fill).
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    /// pods: also print where evio's ADD and DEL spend their time, step by step (p50s the
    /// daemon logs per request).
    #[arg(long)]
    breakdown: bool,
}

impl PodArgs {
    fn evio_cni(&self) -> Result<PathBuf> {
        match &self.evio_cni {
            Some(path) => Ok(path.clone()),
            None => Ok(std::env::current_exe()
                .context("locate evio-bench")?
                .with_file_name("evio-cni")),
        }
    }

    fn count(&self, full: usize) -> usize {
        match (self.pods, self.common.quick) {
            (Some(n), _) => n,
            (None, true) => 3,
            (None, false) => full,
        }
    }
}

#[derive(Args)]
struct Common {
    /// Also write the figures to this JSON file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Tiny sizes (seconds): keeps the command working in CI; the figures mean nothing.
    #[arg(long)]
    quick: bool,
}

/// The binaries a benchmark runs.
pub struct Bins {
    pub evio_node: PathBuf,
    pub etcd: PathBuf,
    pub evio_run_args: Vec<String>,
}

fn resolve_bins(cli: &Cli) -> Result<Bins> {
    let evio_node = match &cli.evio_node {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .context("locate evio-bench")?
            .with_file_name("evio-node"),
    };
    if !evio_node.is_file() {
        return Err(anyhow!(
            "evio-node not found at {} (build it: cargo build --release -p evio-node, or pass --evio-node PATH)",
            evio_node.display()
        ));
    }
    Ok(Bins {
        evio_node,
        etcd: cli.etcd.clone(),
        evio_run_args: cli.evio_run_args.clone(),
    })
}

async fn run(cli: Cli) -> Result<()> {
    let bins = resolve_bins(&cli)?;
    let (common, figures) = match &cli.bench {
        Bench::Lease(c) => (c, lease::run(&bins, c.quick).await?),
        Bench::Failover(c) => (c, failover::run(&bins, c.quick).await?),
        Bench::Memory(c) => (c, memory::memory(&bins, c.quick).await?),
        Bench::Scale(c) => (c, memory::scale(&bins, c.quick).await?),
        Bench::Members(a) => (
            &a.common,
            members::run(&bins, a.common.quick, a.members).await?,
        ),
        Bench::Join(a) => (&a.common, join::run(&bins, a.common.quick, a.leases).await?),
        Bench::Pods(a) => (
            &a.common,
            pods::pods(
                &bins,
                &a.evio_cni()?,
                &a.kind,
                &a.ipam,
                a.count(200),
                a.breakdown,
            )
            .await?,
        ),
        Bench::Fill(a) => (
            &a.common,
            pods::fill(
                &bins,
                &a.evio_cni()?,
                &a.kind,
                &a.ipam,
                a.count(253),
                a.parallel,
            )
            .await?,
        ),
    };
    if let Some(path) = &common.json {
        let mut bytes = serde_json::to_vec_pretty(&figures)?;
        bytes.push(b'\n');
        evio_raft::data_dir::write_atomic(path, &bytes, 0o644)
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EVIO_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // On Ctrl-C the benchmark future is dropped: its clusters kill their processes and remove
    // their directories on the way out.
    let result = tokio::select! {
        result = run(cli) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("evio-bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
