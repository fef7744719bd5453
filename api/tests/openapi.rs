//! The OpenAPI document: served at `GET /openapi.json`, identical to `docs/openapi.json`
//! (regenerate with `EVIO_UPDATE_OPENAPI=1 cargo test -p evio-api --test openapi`), covering
//! every route, and valid OpenAPI 3.1 according to `openapi-spec-validator` (pinned in
//! scripts/install-py-tools.sh).

use std::path::PathBuf;

mod common;

use common::{pool, Member};

fn docs_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json")
}

#[tokio::test]
async fn served_document_matches_docs_and_covers_every_route() {
    let member = Member::start("openapi", pool("10.244.0.0/16", 8), Default::default()).await;
    evio_raft::tls::ensure_provider();
    let response = reqwest::get(format!("{}/openapi.json", member.base))
        .await
        .unwrap_or_else(|e| panic!("GET /openapi.json: {e}"));
    assert_eq!(response.status(), 200);
    let served = response.text().await.unwrap_or_default();
    member.shutdown().await;
    assert_eq!(served, evio_api::server::openapi::json());

    let path = docs_file();
    if std::env::var_os("EVIO_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, format!("{served}\n"))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    let kept = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        kept.trim_end(),
        served,
        "docs/openapi.json is stale: EVIO_UPDATE_OPENAPI=1 cargo test -p evio-api --test openapi"
    );

    let doc: serde_json::Value =
        serde_json::from_str(&served).unwrap_or_else(|e| panic!("not JSON: {e}"));
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );
    let routes = [
        ("/v1/leases", "get"),
        ("/v1/leases/{node}", "get"),
        ("/v1/leases/{node}", "put"),
        ("/v1/leases/{node}", "delete"),
        ("/v1/leases/{node}/claim", "post"),
        ("/v1/reservations", "post"),
        ("/v1/cluster", "get"),
        ("/v1/cluster/join", "post"),
        ("/v1/cluster/members/{id}", "delete"),
        ("/v1/node", "get"),
        ("/v1/node/pods", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/v1/cluster/certificate", "post"),
        ("/openapi.json", "get"),
        ("/", "get"),
        (evio_raft::network::APPEND_PATH, "post"),
        (evio_raft::network::VOTE_PATH, "post"),
        (evio_raft::network::SNAPSHOT_PATH, "post"),
    ];
    for (path, method) in routes {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} undocumented"
        );
    }
    let documented: usize = doc["paths"]
        .as_object()
        .map(|p| {
            p.values()
                .filter_map(|v| v.as_object())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    assert_eq!(
        documented,
        routes.len(),
        "a documented route is not in this list"
    );
    // Every error code is in the schema, and 503s say Retry-After.
    let codes = &doc["components"]["schemas"]["ErrorCode"]["enum"];
    for code in [
        "rate_limited",
        "no_quorum",
        "payload_too_large",
        "body_not_allowed",
    ] {
        assert!(
            codes
                .as_array()
                .is_some_and(|c| c.iter().any(|v| v == code)),
            "{code}: {codes}"
        );
    }
    assert!(
        doc["paths"]["/v1/leases/{node}"]["put"]["responses"]["503"]["headers"]["Retry-After"]
            .is_object()
    );
}

#[test]
fn document_is_valid_openapi() {
    let Some(validator) = evio_test_support::py_tool("openapi-spec-validator") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, evio_api::server::openapi::json()).unwrap_or_else(|e| panic!("{e}"));
    let out = std::process::Command::new(&validator)
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", validator.display()));
    assert!(
        out.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
