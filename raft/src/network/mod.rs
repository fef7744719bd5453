//! Raft RPC between members over HTTP (JSON bodies): the client openraft calls
//! ([`client`]) and the axum routes that answer it ([`server`]), sharing the paths and
//! headers defined here.

pub mod client;
pub mod contact;
pub mod server;

use openraft::raft::InstallSnapshotRequest;
use serde::{Deserialize, Serialize};

use crate::types::{SnapshotMeta, TypeConfig, Vote};

pub use client::{Denied, HttpNetwork, HttpPeer, PeerHttp};
pub use contact::{Contact, Contacts};
pub use server::{router, RpcRefusal};

pub const APPEND_PATH: &str = "/raft/append";
pub const VOTE_PATH: &str = "/raft/vote";
pub const SNAPSHOT_PATH: &str = "/raft/snapshot";
/// Every Raft RPC path starts with this; the API requires the cluster token under it.
pub const PATH_PREFIX: &str = "/raft/";
/// Header carrying the sender's cluster id; a member refuses RPC from another cluster.
pub const CLUSTER_HEADER: &str = "x-evio-cluster";
/// Header naming the node id an RPC is meant for: a new member that reuses a dead member's
/// address must not answer for it (openraft's leader panics on such replies).
pub const TARGET_HEADER: &str = "x-evio-target-node";
/// Test-only (feature `test-hooks`): comma-separated peer addresses this process must not dial,
/// to cut one network path (e.g. member to leader) while every other path works.
pub const DENY_PEERS_ENV: &str = "EVIO_TEST_DENY_PEERS";
/// Snapshots travel in chunks of at most this many bytes (openraft's `snapshot_max_chunk_size`).
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// The largest Raft RPC body a member accepts: a snapshot chunk with its header, or an append
/// of openraft's default 300 entries (a few hundred bytes each).
pub const RPC_BODY_LIMIT: usize = 2 << 20;
/// Content type of a snapshot chunk: [`SnapshotChunk`] framing, not JSON.
pub const SNAPSHOT_CONTENT_TYPE: &str = "application/x-evio-snapshot-chunk";

/// An install-snapshot RPC on the wire: a 4-byte big-endian length, that many bytes of JSON
/// header (vote, meta, offset, done), then the chunk's raw bytes. Sending the chunk as a JSON
/// array of numbers made it 3–4 times its size.
#[derive(Serialize, Deserialize)]
struct SnapshotChunkHeader {
    vote: Vote,
    meta: SnapshotMeta,
    offset: u64,
    done: bool,
}

/// Why a snapshot chunk body cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("body shorter than its header length")]
    Truncated,
    #[error("header: {0}")]
    Header(#[from] serde_json::Error),
}

pub(crate) fn encode_snapshot_chunk(
    rpc: &InstallSnapshotRequest<TypeConfig>,
) -> Result<Vec<u8>, serde_json::Error> {
    let header = serde_json::to_vec(&SnapshotChunkHeader {
        vote: rpc.vote,
        meta: rpc.meta.clone(),
        offset: rpc.offset,
        done: rpc.done,
    })?;
    let len = u32::try_from(header.len()).map_err(serde::ser::Error::custom)?;
    let mut body = Vec::with_capacity(4 + header.len() + rpc.data.len());
    body.extend_from_slice(&len.to_be_bytes());
    body.extend_from_slice(&header);
    body.extend_from_slice(&rpc.data);
    Ok(body)
}

pub(crate) fn decode_snapshot_chunk(
    body: &[u8],
) -> Result<InstallSnapshotRequest<TypeConfig>, ChunkError> {
    let (len, rest) = body.split_first_chunk::<4>().ok_or(ChunkError::Truncated)?;
    let len = u32::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return Err(ChunkError::Truncated);
    }
    let (header, data) = rest.split_at(len);
    let header: SnapshotChunkHeader = serde_json::from_slice(header)?;
    Ok(InstallSnapshotRequest {
        vote: header.vote,
        meta: header.meta,
        offset: header.offset,
        data: data.to_vec(),
        done: header.done,
    })
}
