//! **evio-ipam**: the daemon's own IPAM. Addresses come from the node's leased block(s),
//! one per range set for each (container id, ifname), kept in a [`store::Store`] per network
//! that outlives the daemon. evio-cni's ADD serves `"ipam": {"type": "evio-ipam"}` in-process;
//! other plugins exec the `evio-ipam` binary, which forwards here over the CNI socket. Either
//! IP family.

pub mod conf;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Mutex, RwLock};

use ipnetwork::IpNetwork;
use serde_json::{json, Value};

use self::conf::{from_ordinal, ordinal, IpamConf, Range};
use self::store::{Key, Store, StoreError};
use super::error::{CODE_CHECK_FAILED, CODE_PLUGIN_NOT_AVAILABLE};
use crate::plugin_conf::InvalidKey;
use crate::result;
use crate::spec::{code, valid_id, Request, ID_RULE};

/// The `ipam.type` (and binary name) served by the daemon.
pub const PLUGIN: &str = "evio-ipam";
/// No free address left in a range set (plugin-specific code, as the spec allows).
pub const CODE_NO_ADDRESS: u32 = 103;

#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error(transparent)]
    Config(#[from] InvalidKey),
    #[error("range {range} is outside this node's block ({blocks})")]
    OutsideBlock { range: String, blocks: String },
    #[error("this node holds no lease yet: evio-ipam has no block to allocate from")]
    NoLease,
    #[error("evio-ipam is not enabled in this daemon (no state directory)")]
    NotEnabled,
    #[error("no free address in range set {set} ({ranges})")]
    Exhausted { set: usize, ranges: String },
    #[error("{container} {ifname} holds no evio-ipam address on network {network}")]
    NotHeld {
        container: String,
        ifname: String,
        network: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AllocError {
    pub fn code(&self) -> u32 {
        match self {
            AllocError::Config(_) | AllocError::OutsideBlock { .. } => code::INVALID_NETWORK_CONFIG,
            AllocError::NoLease => code::TRY_AGAIN_LATER,
            AllocError::NotEnabled => CODE_PLUGIN_NOT_AVAILABLE,
            AllocError::Exhausted { .. } => CODE_NO_ADDRESS,
            AllocError::NotHeld { .. } => CODE_CHECK_FAILED,
            AllocError::Store(_) => code::IO_FAILURE,
        }
    }
}

/// Whether the request's `ipam.type` is evio-ipam (served by the daemon, not exec'd).
pub fn is_requested(request: &Request) -> bool {
    request.config["ipam"]["type"].as_str() == Some(PLUGIN)
}

/// The node's evio-ipam: its blocks (from its lease) and one store per network.
pub struct Allocator {
    state_dir: Option<PathBuf>,
    blocks: RwLock<Vec<IpNetwork>>,
    /// Every operation is a few small file writes: done under this lock, which also orders
    /// concurrent ADDs so no address is handed out twice.
    networks: Mutex<HashMap<String, Store>>,
}

impl Allocator {
    /// `state_dir`: where the stores live (None: evio-ipam refuses requests).
    pub fn new(state_dir: Option<PathBuf>) -> Self {
        Self {
            state_dir,
            blocks: RwLock::new(Vec::new()),
            networks: Mutex::new(HashMap::new()),
        }
    }

    /// The blocks this node holds (its lease): the only addresses evio-ipam hands out.
    pub fn set_node_blocks(&self, blocks: Vec<IpNetwork>) {
        *self.blocks.write().unwrap_or_else(|p| p.into_inner()) = blocks;
    }

    pub fn node_blocks(&self) -> Vec<IpNetwork> {
        self.blocks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Checks an ADD's config against the node's blocks without allocating (so a bad one
    /// fails before anything is built).
    pub fn validate(&self, request: &Request) -> Result<IpamConf, AllocError> {
        network_name(request)?;
        let conf = IpamConf::parse(&request.config["ipam"])?;
        self.state_dir.as_ref().ok_or(AllocError::NotEnabled)?;
        let blocks = self.node_blocks();
        if blocks.is_empty() {
            return Err(AllocError::NoLease);
        }
        for range in conf.range_sets.iter().flatten() {
            let within = blocks
                .iter()
                .any(|b| b.contains(range.start) && b.contains(range.end));
            if !within {
                return Err(AllocError::OutsideBlock {
                    range: range.describe(),
                    blocks: blocks
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        Ok(conf)
    }

    /// Runs `f` on the request's network store (opened, and host-local imported, on first use).
    fn with_store<T>(
        &self,
        request: &Request,
        host_local_dir: Option<PathBuf>,
        f: impl FnOnce(&mut Store) -> Result<T, AllocError>,
    ) -> Result<T, AllocError> {
        let network = network_name(request)?;
        let state_dir = self.state_dir.as_ref().ok_or(AllocError::NotEnabled)?;
        let blocks = self.node_blocks();
        let mut networks = self.networks.lock().unwrap_or_else(|p| p.into_inner());
        let store = match networks.entry(network.to_string()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(Store::open(state_dir.join(network))?)
            }
        };
        let host_local_dir = host_local_dir
            .unwrap_or_else(|| PathBuf::from(conf::HOST_LOCAL_DATA_DIR))
            .join(network);
        store.import_once(&host_local_dir, &blocks)?;
        f(store)
    }

    /// ADD: the attachment's addresses (the ones it holds already, else new ones), as an
    /// IPAM result in the request's version.
    pub fn add(&self, request: &Request) -> Result<Value, AllocError> {
        let conf = self.validate(request)?;
        let key = key_of(request);
        let ips = self.with_store(request, Some(conf.host_local_dir.clone()), |store| {
            let mut ips = Vec::with_capacity(conf.range_sets.len());
            let held_before = !store.addresses(&key).is_empty();
            for (set, ranges) in conf.range_sets.iter().enumerate() {
                let held = store.addresses(&key).iter().find_map(|ip| {
                    ranges
                        .iter()
                        .find(|r| r.contains(*ip))
                        .map(|r| (*ip, r.clone()))
                });
                let (ip, range) = match held {
                    Some(found) => found,
                    None => match next_free(store, ranges) {
                        Some((ip, range)) => {
                            store.reserve(key.clone(), ip)?;
                            (ip, range.clone())
                        }
                        None => {
                            // Nothing half-done: what this ADD reserved goes again.
                            if !held_before {
                                store.release(&key)?;
                            }
                            return Err(AllocError::Exhausted {
                                set,
                                ranges: ranges
                                    .iter()
                                    .map(Range::describe)
                                    .collect::<Vec<_>>()
                                    .join(", "),
                            });
                        }
                    },
                };
                ips.push((ip, range));
            }
            Ok(ips)
        })?;
        let ips: Vec<Value> = ips
            .iter()
            .map(|(ip, range)| {
                let mut entry = json!({"address": format!("{ip}/{}", range.subnet.prefix())});
                if let Some(gw) = range.gateway {
                    entry["gateway"] = json!(gw.to_string());
                }
                entry
            })
            .collect();
        let version = request.version();
        let out = json!({"cniVersion": version, "ips": ips, "routes": conf.routes, "dns": {}});
        Ok(result::convert(&out, &version))
    }

    /// DEL: releases what the attachment holds (nothing held is fine). Needs no ranges.
    pub fn del(&self, request: &Request) -> Result<(), AllocError> {
        let key = key_of(request);
        let dir = host_local_dir(request);
        self.with_store(request, dir, |store| Ok(store.release(&key).map(|_| ())?))
    }

    /// CHECK: the attachment still holds an address.
    pub fn check(&self, request: &Request) -> Result<(), AllocError> {
        let key = key_of(request);
        let dir = host_local_dir(request);
        let network = network_name(request)?.to_string();
        self.with_store(request, dir, |store| {
            match store.addresses(&key).is_empty() {
                false => Ok(()),
                true => Err(AllocError::NotHeld {
                    container: key.0.clone(),
                    ifname: key.1.clone(),
                    network,
                }),
            }
        })
    }

    /// GC: releases every reservation of the network not in `valid`. A network evio-ipam
    /// never served is left alone (nor is host-local's state imported for it).
    pub fn gc(&self, request: &Request, valid: &HashSet<Key>) -> Result<(), AllocError> {
        let state_dir = self.state_dir.as_ref().ok_or(AllocError::NotEnabled)?;
        if !is_requested(request) && !state_dir.join(network_name(request)?).exists() {
            return Ok(());
        }
        let dir = host_local_dir(request);
        self.with_store(request, dir, |store| Ok(store.retain(valid).map(|_| ())?))
    }

    /// STATUS: ready when enabled and the node holds a block.
    pub fn status(&self) -> Result<(), AllocError> {
        self.state_dir.as_ref().ok_or(AllocError::NotEnabled)?;
        if self.node_blocks().is_empty() {
            return Err(AllocError::NoLease);
        }
        Ok(())
    }
}

fn key_of(request: &Request) -> Key {
    (request.container_id.clone(), request.ifname.clone())
}

fn host_local_dir(request: &Request) -> Option<PathBuf> {
    request.config["ipam"]["dataDir"]
        .as_str()
        .map(PathBuf::from)
}

/// The network's name, which names its store directory.
fn network_name(request: &Request) -> Result<&str, AllocError> {
    let name = &request.config["name"];
    name.as_str().filter(|n| valid_id(n)).ok_or_else(|| {
        AllocError::Config(InvalidKey {
            key: "name".into(),
            reason: format!("{name}: {ID_RULE}"),
        })
    })
}

/// The first free address of a range set, round-robin within each range from where the
/// last search stopped.
fn next_free<'r>(store: &mut Store, ranges: &'r [Range]) -> Option<(IpAddr, &'r Range)> {
    for range in ranges {
        let (first, last) = (ordinal(range.start), ordinal(range.end));
        let v6 = range.start.is_ipv6();
        let from = store
            .cursor(range.start)
            .filter(|c| (first..=last).contains(c))
            .unwrap_or(first);
        // Bounded by the range, and a range of more than 2^20 addresses is never full in
        // practice: the search stops there rather than scanning an IPv6 /64.
        let size = (last - first).saturating_add(1).min(1 << 20);
        for step in 0..size {
            let n = first + (from - first + step) % (last - first).saturating_add(1).max(1);
            let ip = from_ordinal(n, v6);
            if range.assignable(ip) && !store.is_held(ip) {
                store.advance(range.start, if n == last { first } else { n + 1 });
                return Some((ip, range));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Command;

    fn request(container: &str, ipam: Value) -> Request {
        Request {
            command: Command::Add,
            container_id: container.into(),
            netns: String::new(),
            ifname: "eth0".into(),
            args: String::new(),
            path: String::new(),
            plugin: Default::default(),
            config: json!({"cniVersion": "1.0.0", "name": "n1", "ipam": ipam}),
        }
    }

    fn allocator(dir: &std::path::Path, blocks: &[&str]) -> Allocator {
        let a = Allocator::new(Some(dir.to_path_buf()));
        a.set_node_blocks(
            blocks
                .iter()
                .map(|b| b.parse().unwrap_or_else(|e| panic!("{e}")))
                .collect(),
        );
        a
    }

    #[test]
    fn one_address_per_attachment_round_robin_both_families() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let a = allocator(dir.path(), &["10.5.3.0/24", "fd00:5::300/120"]);
        let ipam = json!({"type": "evio-ipam", "dataDir": dir.path().join("none"), "ranges": [
            [{"subnet": "10.5.0.0/16", "rangeStart": "10.5.3.2", "rangeEnd": "10.5.3.4", "gateway": "10.5.3.1"}],
            [{"subnet": "fd00:5::/64", "rangeStart": "fd00:5::302", "rangeEnd": "fd00:5::3ff"}]]});
        let r1 = a
            .add(&request("c1", ipam.clone()))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            r1["ips"][0],
            json!({"address": "10.5.3.2/16", "gateway": "10.5.3.1"})
        );
        assert_eq!(r1["ips"][1]["address"], "fd00:5::302/64");
        // Asked again: the same addresses.
        assert_eq!(
            a.add(&request("c1", ipam.clone()))
                .unwrap_or_else(|e| panic!("{e}")),
            r1
        );
        let r2 = a
            .add(&request("c2", ipam.clone()))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r2["ips"][0]["address"], "10.5.3.3/16");
        a.del(&request("c1", ipam.clone()))
            .unwrap_or_else(|e| panic!("{e}"));
        // Round-robin: .4 before the released .2.
        let r3 = a
            .add(&request("c3", ipam.clone()))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r3["ips"][0]["address"], "10.5.3.4/16");
        let r4 = a
            .add(&request("c4", ipam.clone()))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r4["ips"][0]["address"], "10.5.3.2/16");
        let err = a.add(&request("c5", ipam.clone())).map(|_| ()).unwrap_err();
        assert_eq!(err.code(), CODE_NO_ADDRESS, "{err}");
        // The failed ADD kept nothing of the first set's... and none of the second's.
        assert!(a.check(&request("c5", ipam.clone())).is_err());

        let outside = json!({"type": "evio-ipam", "ranges": [[{"subnet": "10.6.0.0/16"}]]});
        let err = a.add(&request("c6", outside)).map(|_| ()).unwrap_err();
        assert_eq!(err.code(), code::INVALID_NETWORK_CONFIG, "{err}");

        let valid: HashSet<Key> = [("c2".to_string(), "eth0".to_string())].into();
        a.gc(&request("gc", ipam.clone()), &valid)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(a.check(&request("c2", ipam.clone())).is_ok());
        assert!(a.check(&request("c3", ipam.clone())).is_err());

        let none = Allocator::new(Some(dir.path().to_path_buf()));
        assert_eq!(
            none.add(&request("c7", ipam))
                .map(|_| ())
                .unwrap_err()
                .code(),
            code::TRY_AGAIN_LATER
        );
    }
}
