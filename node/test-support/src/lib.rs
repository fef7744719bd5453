//! What the workspace's integration tests share (a dev-dependency only): the binaries this
//! target dir built, prerequisites that skip outside CI and fail loudly under `CI=true`, real
//! `evio-node` processes and clusters of them (`process`, `cluster`), CNI plugins exec'd as a
//! runtime does with guards that clean up (`cni`), a real etcd server (`etcd`, feature `etcd`)
//! and the local stand-in for the Kubernetes API server (`kube_standin`).
//!
//! Helpers panic with a message instead of returning errors: they run only inside tests.

pub mod cluster;
pub mod cni;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod kube_standin;
pub mod process;

use std::path::{Path, PathBuf};
use std::process::Command;

pub use process::{dev_command, evio_node, evio_node_bin, spawn_dev, Proc};

/// Whether this run is CI's (`CI=true`): there a missing prerequisite fails the test.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether the test can run here: all `checks` hold. Under CI=true a missing one fails the
/// test loudly; elsewhere the test is skipped with the reason.
pub fn prerequisites(test: &str, checks: &[(&str, bool)]) -> bool {
    if checks.iter().all(|(_, ok)| *ok) {
        return true;
    }
    let why = checks
        .iter()
        .map(|(what, ok)| format!("{what}={ok}"))
        .collect::<Vec<_>>()
        .join(" ");
    let why = format!("{why} (run scripts/install-deps.sh and scripts/ovs-start.sh as root)");
    assert!(!ci(), "{test} prerequisites missing under CI: {why}");
    eprintln!("skipping {test} outside CI: {why}");
    false
}

/// True when `program` can run; under CI=true a missing program fails the test loudly.
pub fn have(program: &str, package: &str) -> bool {
    let found = on_path(program);
    if !found {
        assert!(
            !ci(),
            "{program} is missing (Debian package {package}; scripts/install-deps.sh installs it)"
        );
        eprintln!("SKIPPED: {program} missing (install {package})");
    }
    found
}

/// A tool of the Python venv that scripts/install-py-tools.sh makes (`$EVIO_PY_TOOLS`, else
/// `${HOME:-/root}/.cache/evio/py-tools`): its path, or None (and a note) when it is missing
/// outside CI; under CI=true a missing tool fails the test.
pub fn py_tool(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("EVIO_PY_TOOLS").map_or_else(
        || {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            PathBuf::from(home).join(".cache/evio/py-tools")
        },
        PathBuf::from,
    );
    let tool = dir.join("bin").join(name);
    if tool.exists() {
        return Some(tool);
    }
    let missing = format!(
        "{} missing: run scripts/install-py-tools.sh",
        tool.display()
    );
    assert!(!ci(), "{missing}");
    eprintln!("SKIPPED: {missing}");
    None
}

/// Whether `program` is a file or found on `PATH`.
pub fn on_path(program: &str) -> bool {
    Path::new(program).is_file()
        || std::env::var_os("PATH").is_some_and(|paths| {
            std::env::split_paths(&paths).any(|dir| dir.join(program).is_file())
        })
}

/// A binary of this workspace (`evio-node`, `evio-cni`, ...) from the target dir the running
/// test was built into: test executables live in `<target>/<profile>/deps/`, binaries one
/// level up. `cargo test --workspace` builds them all; a test run alone needs
/// `cargo build -p <package>` first, and this says so.
pub fn target_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("{} is not in <target>/<profile>/deps", exe.display()));
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it first (cargo build --workspace, or cargo build -p <its package>)",
        path.display()
    );
    path
}

/// Runs `program args`, which must succeed; returns its stdout.
pub fn run(program: &str, args: &[&str]) -> String {
    output_ok(Command::new(program).args(args))
}

/// Runs `cmd`, which must succeed (else the test fails with its stderr and stdout); returns
/// its stdout.
pub fn output_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs `cmd`, which must fail (else the test fails with its stderr); returns its stderr.
pub fn output_fails(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{cmd:?} succeeded: {stderr}");
    stderr
}

/// Six hex digits that differ between tests running at once (clock nanoseconds and the pid),
/// for names of links, bridges and namespaces that must not collide.
pub fn unique_tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{:06x}",
        (nanos ^ std::process::id().rotate_left(16)) & 0xff_ffff
    )
}
