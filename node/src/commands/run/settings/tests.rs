use super::*;
use crate::host::MIN_TOKEN_BYTES;
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
}

fn write_private(path: &std::path::Path, text: &str) {
    evio_raft::data_dir::write_atomic(path, text.as_bytes(), 0o600)
        .unwrap_or_else(|e| panic!("{e}"));
}

fn parse(args: &[&str]) -> RunArgs {
    let mut full = vec!["evio-node"];
    full.extend_from_slice(args);
    match Cli::try_parse_from(full) {
        Ok(cli) => cli.run,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn config_file_fills_what_flags_leave_out() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let token = dir.path().join("token");
    write_private(&token, &format!("{}\n", "s".repeat(MIN_TOKEN_BYTES)));
    let config = dir.path().join("evio.json");
    let body = serde_json::json!({
        "node-name": "from-file", "listen": "127.0.0.1:7999", "join": ["10.10.0.1:7700"],
        "pod-cidr": "10.244.0.0/16", "node-bits": "8", "voters": 5,
        "cluster-token-file": token, "voter-grace": "2m",
        "kubernetes": true, "join-from-kubernetes": true, "kubeconfig": "/etc/evio/kubeconfig",
        "node-gc-grace": "15m", "ca-file": "/etc/evio/ca.pem",
        "etcd-endpoints": ["https://10.0.0.5:2379"], "etcd-ca-file": "/etc/etcd/ca.pem",
    });
    std::fs::write(&config, body.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let config_arg = config.to_string_lossy().to_string();
    let s = parse(&["--config", &config_arg, "--node-name", "from-flag"])
        .settings()
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(s.node_name, "from-flag");
    assert_eq!(s.listen, "127.0.0.1:7999");
    assert_eq!(s.join, vec!["10.10.0.1:7700".to_string()]);
    assert_eq!(s.voters, 5);
    assert_eq!(s.token, "s".repeat(MIN_TOKEN_BYTES));
    assert_eq!(s.voter_grace, Duration::from_secs(120));
    assert_eq!(s.pool.block_count(), 256);
    assert!(s.kubernetes && s.join_from_kubernetes);
    assert_eq!(s.kubeconfig, Some(PathBuf::from("/etc/evio/kubeconfig")));
    assert_eq!(s.node_gc_grace, Duration::from_secs(900));
    // Keys of the flattened flag groups (TLS, etcd) come from the file too.
    assert!(matches!(
        &s.tls,
        crate::tls::TlsMode::Managed { join_trust: Some(crate::tls::JoinTrust::CaFile(f)), .. }
            if f == std::path::Path::new("/etc/evio/ca.pem")
    ));
    let etcd_ca = s.etcd.as_ref().and_then(|e| e.ca_file.clone());
    assert_eq!(etcd_ca, Some(PathBuf::from("/etc/etcd/ca.pem")));
}

#[test]
fn a_bad_config_file_key_or_value_is_named() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for (body, needle) in [
        (r#"{"voters": "five"}"#, "voters"),
        (r#"{"no-such-key": 1}"#, "no-such-key"),
        (r#"["listen"]"#, "not a valid evio-node config"),
    ] {
        let config = dir.path().join("evio.json");
        std::fs::write(&config, body).unwrap_or_else(|e| panic!("{e}"));
        let config_arg = config.to_string_lossy().to_string();
        let err = parse(&["--config", &config_arg])
            .settings()
            .map(|_| ())
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains(needle) && msg.contains(&config_arg),
            "{body}: {msg}"
        );
    }
}

#[test]
fn a_switch_in_the_file_holds_unless_a_flag_sets_it() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let token = dir.path().join("token");
    write_private(&token, &"t".repeat(MIN_TOKEN_BYTES));
    let config = dir.path().join("evio.json");
    let body = serde_json::json!({
        "pod-cidr": "10.244.0.0/16", "node-bits": "8", "cluster-token-file": token,
        "bootstrap": true, "auth-reads": true, "node-name": "n",
    });
    std::fs::write(&config, body.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let config_arg = config.to_string_lossy().to_string();
    let s = parse(&["--config", &config_arg])
        .settings()
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(s.bootstrap && s.auth_reads);
    assert_eq!(s.listen, "0.0.0.0:7700", "the default under the file");
}

#[test]
fn bad_settings_name_the_value() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let token = dir.path().join("token");
    write_private(&token, &"t".repeat(MIN_TOKEN_BYTES));
    let token_arg = token.to_string_lossy().to_string();
    let base = [
        "--node-name",
        "n",
        "--pod-cidr",
        "10.244.0.0/16",
        "--node-bits",
        "8",
        "--cluster-token-file",
        &token_arg,
        "--bootstrap",
    ];
    let cases: [(&[&str], &str); 14] = [
        (&["--etcd-endpoints", "127.0.0.1:2379"], "127.0.0.1:2379"),
        // TLS flags: bad combinations name the flags.
        (
            &["--insecure-plaintext", "--ca-hash", "sha256:00"],
            "--insecure-plaintext",
        ),
        (&["--ca-hash", "md5:1"], "--ca-hash"),
        (&["--cert-file", "/c"], "--key-file"),
        (&["--cert-file", "/c", "--key-file", "/k"], "--ca-file"),
        (&["--cert-lifetime", "1s"], "--cert-lifetime"),
        (
            &[
                "--etcd-endpoints",
                "http://127.0.0.1:2379",
                "--etcd-username-file",
                "/u",
            ],
            "password file",
        ),
        (&["--voters", "4"], "--voters 4"),
        (&["--node-gc-grace", "soon"], "--node-gc-grace \"soon\""),
        (&["--node-gc-grace", "0s"], "--node-gc-grace 0"),
        (&["--voter-grace", "soon"], "soon"),
        (&["--heartbeat-ms", "900"], "--heartbeat-ms 900"),
        (&["--node-bits", "x"], "\"x\""),
        (
            &["--config", "/nonexistent/evio.json"],
            "/nonexistent/evio.json",
        ),
    ];
    for (extra, needle) in cases {
        let mut args: Vec<&str> = base.to_vec();
        // a later --node-bits would be a duplicate flag: replace the base value instead
        if extra[0] == "--node-bits" {
            args[5] = extra[1];
        } else {
            args.extend_from_slice(extra);
        }
        let err = parse(&args).settings().map(|_| ()).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains(needle), "{extra:?}: {msg}");
    }
    // the base without --bootstrap
    let no_join = parse(&base[..base.len() - 1]);
    let err = no_join.settings().map(|_| ()).unwrap_err();
    assert!(format!("{err:#}").contains("--join"), "{err:#}");
}
