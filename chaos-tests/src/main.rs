//! `evio-chaos`: one seeded chaos run against real `evio-node run` processes in network
//! namespaces. Exit 0 only when every invariant held; 1 on a violation; 2 when the run
//! itself could not be carried out.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;
use evio_chaos::cluster::{Binaries, Cluster};
use evio_chaos::faults::{parse_faults, Fault};
use evio_chaos::run::{run, Options};

#[derive(Parser)]
#[command(
    name = "evio-chaos",
    about = "Chaos run against real evio-node processes (root)"
)]
struct Args {
    /// Members (each a network namespace running `evio-node run`).
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Seed of the fault schedule and the workload.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How long faults are injected (e.g. 30s, 2m).
    #[arg(long, default_value = "30s")]
    duration: String,
    /// Where to write the JSON report.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Faults: partition, loss, kill, pause, wipe, disk-full, all, or single names.
    #[arg(long, default_value = "all")]
    faults: String,
    /// Concurrent lease clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Lease keys the clients share.
    #[arg(long, default_value_t = 6)]
    keys: usize,
    /// The evio-node binary. Default: beside evio-chaos.
    #[arg(long)]
    evio_node: Option<PathBuf>,
    /// The evio-cni binary. Default: beside evio-chaos.
    #[arg(long)]
    evio_cni: Option<PathBuf>,
    /// Keep the run directory (data dirs, node logs) even when every invariant held.
    #[arg(long)]
    keep: bool,
}

fn beside_me(name: &str, given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(p) => p,
        None => std::env::current_exe()
            .context("locating evio-chaos")?
            .with_file_name(name),
    };
    if !path.is_file() {
        bail!(
            "{name} not found at {} (build it, e.g. cargo build -p {name}, or pass --{name} PATH)",
            path.display()
        );
    }
    path.canonicalize()
        .with_context(|| format!("resolving {}", path.display()))
}

fn preflight() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("evio-chaos needs root (network namespaces, iptables, tmpfs)");
    }
    for tool in ["ip", "iptables", "mount", "umount"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            bail!("{tool} is missing (run scripts/install-deps.sh)");
        }
    }
    if !Path::new("/usr/lib/cni/host-local").is_file() {
        bail!("/usr/lib/cni/host-local is missing (run scripts/install-deps.sh)");
    }
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EVIO_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    match real_main() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("evio-chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> anyhow::Result<bool> {
    let args = Args::parse();
    if !(3..=9).contains(&args.nodes) {
        bail!("--nodes {}: use 3 to 9 members", args.nodes);
    }
    let duration = humantime::parse_duration(&args.duration)
        .with_context(|| format!("--duration {:?}: expected e.g. 30s or 2m", args.duration))?;
    let faults: Vec<Fault> = parse_faults(&args.faults)?;
    if args.clients == 0 || args.keys == 0 {
        bail!("--clients and --keys must be at least 1");
    }
    preflight()?;
    let bins = Binaries {
        evio_node: beside_me("evio-node", args.evio_node)?,
        evio_cni: beside_me("evio-cni", args.evio_cni)?,
    };
    let run_dir = tempfile::Builder::new()
        .prefix("evio-chaos-")
        .tempdir()
        .context("creating the run directory")?;
    let cluster = Cluster::create(args.nodes, run_dir.path(), bins)?;
    let hub = cluster.hub_path();
    // The harness's clients live in the hub namespace: every runtime thread joins it.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || {
            let joined = std::fs::File::open(&hub)
                .map_err(|e| e.to_string())
                .and_then(|f| {
                    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| e.to_string())
                });
            if let Err(e) = joined {
                // Clients outside the hub would reach nothing; better to stop loudly.
                eprintln!(
                    "evio-chaos: joining the hub namespace {}: {e}",
                    hub.display()
                );
                std::process::abort();
            }
        })
        .build()
        .context("starting the runtime")?;
    let options = Options {
        seed: args.seed,
        duration,
        faults,
        clients: args.clients,
        keys: args.keys,
    };
    let mut cluster = cluster;
    let outcome = runtime.block_on(async move {
        let result = tokio::spawn(async move {
            let report = run(&mut cluster, &options).await;
            (cluster, report)
        })
        .await;
        result
    });
    let (cluster, report) = outcome.context("the run task failed")?;
    // Cleanup (processes, mounts, namespaces) before reporting, also on error.
    drop(cluster);
    drop(runtime);
    let report = report?;
    print!("{}", report.summary());
    if let Some(path) = &args.report {
        let json = serde_json::to_vec_pretty(&report)?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, json).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    }
    if !report.passed || args.keep {
        let kept = run_dir.keep();
        println!("node logs and data dirs kept in {}", kept.display());
    }
    Ok(report.passed)
}
