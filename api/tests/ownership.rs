//! Ownership safety over HTTP on a real single-member cluster (issue 14 item 8): a node's
//! lease is never claimed from it (only imported `legacy:` ranges are), and a release made
//! conditional on the lease's revision is refused once the lease has changed.

mod common;

use common::{acquired, lease_of, pool, Member};
use evio_api::{ClientError, ErrorCode};

async fn single() -> Member {
    Member::single("solo", pool("10.244.0.0/16", 8)).await
}

fn refused(result: Result<impl std::fmt::Debug, ClientError>, status: u16, code: ErrorCode) {
    match result {
        Err(e) => assert_eq!((e.status(), e.code()), (Some(status), Some(code)), "{e}"),
        Ok(v) => panic!("expected {status} {code}, got {v:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_nodes_lease_is_never_claimed() {
    let m = single().await;
    let client = m.client();
    let (held, _) = acquired(&client, "live-node").await;
    refused(
        client.claim("thief", "live-node").await,
        409,
        ErrorCode::NotLegacyOwner,
    );
    // Nothing changed: the live node keeps its subnet, the claimer got nothing.
    let still = lease_of(&client, "live-node")
        .await
        .unwrap_or_else(|| panic!("live-node lost its lease"));
    assert_eq!(still.subnet, held.subnet);
    assert!(lease_of(&client, "thief").await.is_none());
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_conditional_release_is_refused() {
    let m = single().await;
    let client = m.client();
    let (first, _) = acquired(&client, "n1").await;
    // The lease changes after it was read (here: released and acquired again).
    client.release("n1").await.unwrap_or_else(|e| panic!("{e}"));
    let (second, _) = acquired(&client, "n1").await;
    assert_ne!(first.revision, second.revision);
    refused(
        client.release_if("n1", first.revision).await,
        409,
        ErrorCode::RevisionMismatch,
    );
    assert!(lease_of(&client, "n1").await.is_some());
    // At the current revision it goes.
    client
        .release_if("n1", second.revision)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(lease_of(&client, "n1").await.is_none());
    m.shutdown().await;
}
