//! [`PodNetwork`]: what the daemon's CNI service calls. It owns the node-wide state (netlink
//! handle, bridge drivers, masquerade, the reaper), bounds every request by a deadline,
//! serialises requests for the same attachment and converts errors to CNI errors once. The
//! verbs themselves live in `add`, `del`, `check`, `gc`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rtnetlink::Handle;
use serde_json::Value;
use tokio::time::Instant;

use super::attachment::parse_any_owner;
use super::bridge::Drivers;
use super::error::{DataplaneError, Result};
use super::evio_ipam::Allocator;
use super::masquerade::Masquerade;
use super::netlink::{self, NetlinkError};
use super::reaper::Reaper;
use super::{add, check, del, gc, ipam};
use crate::plugin_conf::PluginConf;
use crate::spec::{CniError, Command, Request};

/// Requests served at once; more wait their turn (kubelet may send dozens together).
const MAX_IN_FLIGHT: usize = 8;
/// What undoing a failed ADD may take after its deadline.
pub(super) const ROLLBACK_BUDGET: Duration = Duration::from_secs(5);

/// The daemon-side limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Everything one request may take (shorter than the shim's wait, so the runtime always
    /// hears why). IPAM and `nft` still running then are killed.
    pub deadline: Duration,
    /// Each OVSDB call.
    pub ovsdb_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(60),
            ovsdb_timeout: Duration::from_secs(10),
        }
    }
}

/// One lock per (container id, ifname) in use: a late ADD never races the DEL of the same
/// attachment.
#[derive(Default)]
struct Attachments(Mutex<HashMap<AttachmentKey, Arc<tokio::sync::Mutex<()>>>>);

/// (container id, ifname).
type AttachmentKey = (String, String);

struct AttachmentTurn<'a> {
    owner: &'a Attachments,
    key: AttachmentKey,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for AttachmentTurn<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut map = self.owner.0.lock().unwrap_or_else(|p| p.into_inner());
        // Nobody else holds or waits for it: forget it (the map stays as big as the work).
        if map
            .get(&self.key)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            map.remove(&self.key);
        }
    }
}

impl Attachments {
    async fn turn(&self, request: &Request) -> AttachmentTurn<'_> {
        let key = (request.container_id.clone(), request.ifname.clone());
        let lock = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        AttachmentTurn {
            owner: self,
            key,
            guard: Some(lock.lock_owned().await),
        }
    }
}

/// A pod interface on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedPod {
    pub container_id: String,
    pub ifname: String,
    pub network: String,
    pub host_veth: String,
    /// From this daemon's ADD result; empty for one adopted when the daemon started.
    pub addresses: Vec<String>,
    pub attached_at: Option<SystemTime>,
}

/// An attachment this daemon knows: made by its ADD (kept until the DEL), or found on the
/// host when it started (adopted after a restart: no address known).
#[derive(Debug, Clone)]
struct Added {
    network: String,
    addresses: Vec<String>,
    at: Option<SystemTime>,
}

/// The node's pod networking.
pub struct PodNetwork {
    pub(super) handle: Handle,
    pub(super) drivers: Drivers,
    /// Bridge creation is serialised (one creator per bridge name).
    pub(super) bridge_lock: tokio::sync::Mutex<()>,
    pub(super) masquerade: Masquerade,
    pub(super) reaper: Reaper,
    /// evio-ipam, served in-process.
    pub(super) allocator: Allocator,
    /// Bounds the requests in flight on the shared netlink socket: with ~50 at once its
    /// receive buffer overflowed and an answer was lost (an ADD then waited forever).
    in_flight: tokio::sync::Semaphore,
    attachments: Attachments,
    added: Mutex<HashMap<AttachmentKey, Added>>,
    /// One link listing for the status page at a time: anonymous readers must not crowd
    /// the netlink socket the CNI requests share.
    listing: tokio::sync::Mutex<()>,
    limits: Limits,
}

impl PodNetwork {
    /// Must be called inside a tokio runtime (the netlink connection runs on it).
    pub fn new() -> Result<Self, NetlinkError> {
        Self::with_limits(Limits::default())
    }

    pub fn with_limits(limits: Limits) -> Result<Self, NetlinkError> {
        let handle = netlink::connect()?;
        Ok(Self {
            reaper: Reaper::start(handle.clone()),
            handle,
            drivers: Drivers::new(limits.ovsdb_timeout),
            bridge_lock: tokio::sync::Mutex::new(()),
            in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
            masquerade: Masquerade::default(),
            allocator: Allocator::new(None),
            attachments: Attachments::default(),
            added: Mutex::default(),
            listing: tokio::sync::Mutex::new(()),
            limits,
        })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Enables evio-ipam with its reservations kept under `state_dir`.
    pub fn with_ipam_dir(mut self, state_dir: std::path::PathBuf) -> Self {
        self.allocator = Allocator::new(Some(state_dir));
        self
    }

    /// evio-ipam (the daemon sets the node's blocks on it as its lease changes).
    pub fn allocator(&self) -> &Allocator {
        &self.allocator
    }

    /// Runs one verb under the request's deadline (with its attachment's turn when it has
    /// one) and converts its error for the runtime.
    async fn serve<'a, F, Fut>(&'a self, request: &'a Request, verb: F) -> Result<Value, CniError>
    where
        F: FnOnce(&'a PodNetwork, &'a Request, Instant) -> Fut,
        Fut: std::future::Future<Output = Result<Value>> + 'a,
    {
        // Below the shim's wait, leaving the backstop's rollback time, so the runtime always
        // hears why rather than a timeout.
        let budget = self.limits.deadline.min(
            request
                .reply_timeout()
                .saturating_sub(ROLLBACK_BUDGET * 2 + Duration::from_secs(1)),
        );
        let deadline = Instant::now() + budget;
        let keyed = matches!(
            request.command,
            Command::Add | Command::Del | Command::Check
        );
        let run = async {
            let _attachment = match keyed {
                true => Some(self.attachments.turn(request).await),
                false => None,
            };
            let _turn = self
                .in_flight
                .acquire()
                .await
                .map_err(|_| DataplaneError::Deadline("shutting down".into()))?;
            verb(self, request, deadline).await
        };
        // Steps bound themselves by `deadline` and undo what they did; this is the backstop
        // for one that does not.
        let outcome = tokio::time::timeout_at(deadline + ROLLBACK_BUDGET * 2, run)
            .await
            .unwrap_or_else(|_| {
                Err(DataplaneError::Deadline(format!(
                    "{:?} did not finish within {} s",
                    request.command,
                    budget.as_secs()
                )))
            });
        outcome.map_err(|e| e.into_cni(&request.version()))
    }

    /// Sets up the pod interface; returns the CNI result for the config's version.
    pub async fn add(&self, request: &Request) -> Result<Value, CniError> {
        let result = self.serve(request, add::add).await?;
        let addresses = result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ip| ip["address"].as_str().map(str::to_string))
            .collect();
        self.added_lock().insert(
            (request.container_id.clone(), request.ifname.clone()),
            Added {
                network: request.config["name"].as_str().unwrap_or_default().into(),
                addresses,
                at: Some(SystemTime::now()),
            },
        );
        Ok(result)
    }

    fn added_lock(&self) -> std::sync::MutexGuard<'_, HashMap<AttachmentKey, Added>> {
        self.added.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The host veths with an evio owner tag: (container id, ifname) -> (network, veth).
    async fn tagged_veths(&self) -> Result<HashMap<AttachmentKey, (String, String)>, NetlinkError> {
        Ok(netlink::links(&self.handle)
            .await?
            .into_iter()
            .filter_map(|link| {
                let (network, container, ifname) = parse_any_owner(&link.alias)?;
                let key = (container.to_string(), ifname.to_string());
                Some((key, (network.to_string(), link.name)))
            })
            .collect())
    }

    /// Takes over the attachments found on the host (made before this daemon started): one
    /// daemon serves a host, so every tagged veth is its pods'.
    pub async fn adopt_attached(&self) -> Result<usize, NetlinkError> {
        let found = self.tagged_veths().await?;
        let mut added = self.added_lock();
        for (key, (network, _)) in &found {
            added.entry(key.clone()).or_insert_with(|| Added {
                network: network.clone(),
                addresses: Vec::new(),
                at: None,
            });
        }
        Ok(found.len())
    }

    /// The pod interfaces this daemon attached (or adopted) whose host veth is still there,
    /// sorted by container and ifname; the others are forgotten (GC removed them).
    pub async fn attached(&self) -> Result<Vec<AttachedPod>, NetlinkError> {
        let veths = {
            let _one_at_a_time = self.listing.lock().await;
            self.tagged_veths().await?
        };
        let mut added = self.added_lock();
        added.retain(|key, _| veths.contains_key(key));
        let mut pods: Vec<AttachedPod> = added
            .iter()
            .filter_map(|(key, known)| {
                let (_, veth) = veths.get(key)?;
                Some(AttachedPod {
                    container_id: key.0.clone(),
                    ifname: key.1.clone(),
                    network: known.network.clone(),
                    host_veth: veth.clone(),
                    addresses: known.addresses.clone(),
                    attached_at: known.at,
                })
            })
            .collect();
        drop(added);
        pods.sort_by(|a, b| (&a.container_id, &a.ifname).cmp(&(&b.container_id, &b.ifname)));
        Ok(pods)
    }

    /// Removes the pod interface and releases its address. Idempotent; needs no netns.
    pub async fn del(&self, request: &Request) -> Result<Value, CniError> {
        let result = self.serve(request, del::del).await?;
        self.added_lock()
            .remove(&(request.container_id.clone(), request.ifname.clone()));
        Ok(result)
    }

    /// Verifies the pod's interface, address, routes and bridge port against `prevResult`,
    /// then delegates CHECK to IPAM.
    pub async fn check(&self, request: &Request) -> Result<Value, CniError> {
        self.serve(request, check::check).await
    }

    /// Removes evio veths, OVS ports and host-local reservations of attachments the runtime
    /// no longer lists.
    pub async fn gc(&self, request: &Request) -> Result<Value, CniError> {
        self.serve(request, gc::gc).await
    }

    /// Ready when the config is valid, its bridge kind can serve and its IPAM plugin is
    /// installed (and ready, when it answers STATUS itself).
    pub async fn status(&self, request: &Request) -> Result<Value, CniError> {
        self.serve(request, status).await
    }

    /// A request from the `evio-ipam` binary (another plugin's IPAM): served by the
    /// allocator, in the attachment's turn like evio-cni's own requests.
    pub async fn ipam(&self, request: &Request) -> Result<Value, CniError> {
        self.serve(request, |net, request, deadline| async move {
            match request.command {
                Command::Gc => gc::gc_evio_ipam(net, request),
                command => Ok(ipam::run(&net.allocator, request, command, deadline).await?),
            }
        })
        .await
    }

    /// Waits until the veths of deleted pods are gone (DEL leaves their deletion to a queue).
    pub async fn settled(&self) {
        self.reaper.drained().await
    }
}

async fn status(net: &PodNetwork, request: &Request, deadline: Instant) -> Result<Value> {
    let conf = PluginConf::parse(&request.config)?;
    let unavailable = |e: &dyn std::fmt::Display| DataplaneError::Unavailable(e.to_string());
    let evio_ipam = super::evio_ipam::is_requested(request);
    if !evio_ipam {
        ipam::plugin_path(request).map_err(|e| unavailable(&e))?;
    }
    let driver = net.drivers.pick(&conf.teardown()).await;
    driver
        .available()
        .await
        .map_err(|e| unavailable(&format!("{}: {e}", driver.describe())))?;
    if evio_ipam {
        net.allocator.status().map_err(|e| unavailable(&e))?;
    } else if ipam::supports(request, "1.1.0", deadline).await {
        ipam::delegate(request, Command::Status, deadline).await?;
    }
    Ok(Value::Null)
}

/// Pods route through the host: forwarding must be on. Failing to set it is logged, not
/// fatal (it may be managed, and already on, elsewhere).
pub(super) fn enable_forwarding(ipv6: bool) {
    if let Err(e) = std::fs::write("/proc/sys/net/ipv4/ip_forward", b"1") {
        tracing::warn!(error = %e, "cannot enable IPv4 forwarding");
    }
    // Only for IPv6 pod networks: with forwarding on, the host stops taking router
    // advertisements on links whose accept_ra is 1 (README: IPv6).
    if ipv6 {
        if let Err(e) = std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", b"1") {
            tracing::warn!(error = %e, "cannot enable IPv6 forwarding");
        }
    }
}
