//! DEL: keyed on the container id alone (the netns may be gone), idempotent, and reading the
//! config leniently. The address is released while the links are retired; every step runs
//! and DEL reports all that failed, not only the first.

use std::path::Path;

use serde_json::Value;
use tokio::time::Instant;

use super::attachment::{host_veth_name, retired_pod_name};
use super::bridge::BridgeDriver;
use super::error::{DataplaneError, Result};
use super::ipam;
use super::netlink;
use super::pod_netns::{self, PodNetns};
use super::pods::PodNetwork;
use super::reaper::{RETIRED, RETIRED_GROUP};
use super::timing::Laps;
use crate::plugin_conf::TeardownConf;
use crate::spec::{Command, Request};

pub(super) async fn del(net: &PodNetwork, request: &Request, deadline: Instant) -> Result<Value> {
    let started = std::time::Instant::now();
    let mut laps = Laps::start();
    let driver = net
        .drivers
        .pick(&TeardownConf::parse(&request.config))
        .await;
    // host-local's exec is most of a DEL: it runs while the links are retired. Releasing the
    // address first is the reference bridge plugin's order too; a runtime calls DEL once the
    // pod's processes are gone.
    laps.lap("parse");
    let mut ipam_laps = Laps::start();
    let release = async {
        if request.config["ipam"]["type"].is_string() {
            ipam::run(&net.allocator, request, Command::Del, deadline).await?;
        }
        ipam_laps.lap("|ipam");
        Ok::<_, DataplaneError>(())
    };
    let mut link_laps = Laps::start();
    let (mut errors, released) = tokio::join!(
        retire_links(net, &*driver, request, &mut link_laps),
        release
    );
    laps.lap("concurrent");
    laps.extend(link_laps);
    laps.extend(ipam_laps);
    errors.extend(released.err());
    laps.log(
        "DEL",
        request.config["name"].as_str().unwrap_or_default(),
        &request.container_id,
        started,
    );
    DataplaneError::collect(errors).map(|()| Value::Null)
}

/// DEL's link part: the bridge port goes, the pair is cut off (host end down) and its
/// interface name in the pod netns freed; the kernel's slow part, deleting the pair, happens
/// after the answer (see `reaper`). Returns what failed.
async fn retire_links(
    net: &PodNetwork,
    driver: &dyn BridgeDriver,
    request: &Request,
    laps: &mut Laps,
) -> Vec<DataplaneError> {
    let mut errors = Vec::new();
    let host = host_veth_name(&request.container_id, &request.ifname);
    if let Err(e) = driver.detach(&host).await {
        errors.push(e);
    }
    laps.lap("|detach");
    match retire_host_end(net, &host).await {
        Ok(Some(index)) => {
            laps.lap("|retire_host");
            retire_pod_end(request, index).await;
            laps.lap("|retire_pod");
        }
        Ok(None) => {}
        Err(e) => errors.push(e),
    }
    errors
}

/// Marks the host end for the reaper; returns its index when this DEL retired it.
async fn retire_host_end(net: &PodNetwork, host: &str) -> Result<Option<u32>> {
    let Some(link) = netlink::link_by_name(&net.handle, host).await? else {
        return Ok(None); // deleted already, or with its netns
    };
    let alias = netlink::alias_of(&link);
    if alias.starts_with(RETIRED) {
        return Ok(None); // a repeated DEL
    }
    let index = link.header.index;
    // The kernel keeps at most 255 bytes of alias; the prefix is what counts.
    let mut retired = format!("{RETIRED}{alias}");
    while retired.len() > 255 {
        retired.pop();
    }
    if !netlink::retire(&net.handle, index, &retired, RETIRED_GROUP).await? {
        return Ok(None); // gone with its netns meanwhile
    }
    net.reaper.delete_later();
    Ok(Some(index))
}

/// Frees `CNI_IFNAME` in the pod netns (renamed, down) so the runtime may reuse it at once.
/// Best effort: the netns may be gone, and the reaper deletes the pair either way.
async fn retire_pod_end(request: &Request, host_index: u32) {
    if request.netns.is_empty() || !Path::new(&request.netns).exists() {
        return;
    }
    let retired_name = retired_pod_name(&request.container_id, &request.ifname);
    let outcome = match PodNetns::open(Path::new(&request.netns), false).await {
        Ok(pod) => {
            pod_netns::retire_pod_end(&pod, &request.ifname, host_index, &retired_name).await
        }
        Err(e) => Err(e),
    };
    if let Err(e) = outcome {
        tracing::warn!(error = %e, netns = %request.netns, "retiring the pod interface failed");
    }
}
