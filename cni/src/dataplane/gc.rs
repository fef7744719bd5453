//! GC: removes the bridge ports, veths, evio-ipam and host-local reservations of this network's
//! attachments that the runtime no longer lists (`cni.dev/valid-attachments`, or
//! `cni.dev/attachments` as libcni also sends it). Every stale item is tried; GC reports all
//! that failed.

use std::collections::HashSet;
use std::fs::File;

use serde_json::Value;
use tokio::time::Instant;

use super::attachment::{owner_prefix, parse_owner};
use super::error::{DataplaneError, Result};
use super::evio_ipam::AllocError;
use super::ipam::IpamError;
use super::netlink;
use super::pods::PodNetwork;
use super::reaper::RETIRED;
use crate::plugin_conf::{InvalidKey, TeardownConf};
use crate::spec::Request;

/// The keys a runtime lists live attachments under (libcni sends both).
const ATTACHMENT_KEYS: [&str; 2] = ["cni.dev/valid-attachments", "cni.dev/attachments"];

type Attachments = HashSet<(String, String)>;

fn valid_attachments(config: &Value) -> Result<Attachments> {
    // Without the list every attachment of the network would look stale.
    let list = ATTACHMENT_KEYS
        .iter()
        .find_map(|key| config[*key].as_array())
        .ok_or_else(|| InvalidKey {
            key: ATTACHMENT_KEYS.join(" or "),
            reason: "GC needs cni.dev/valid-attachments (a list)".into(),
        })?;
    Ok(list
        .iter()
        .filter_map(|a| {
            Some((
                a["containerID"].as_str()?.to_string(),
                a["ifname"].as_str()?.to_string(),
            ))
        })
        .collect())
}

pub(super) async fn gc(net: &PodNetwork, request: &Request, _deadline: Instant) -> Result<Value> {
    let valid = valid_attachments(&request.config)?;
    let is_valid = |container: &str, ifname: &str| {
        valid.contains(&(container.to_string(), ifname.to_string()))
    };
    let prefix = owner_prefix(request);
    let driver = net
        .drivers
        .pick(&TeardownConf::parse(&request.config))
        .await;
    let mut errors = Vec::new();
    match driver.owned_ports().await {
        Ok(ports) => {
            for (port, owner) in ports {
                let Some((container, ifname)) = parse_owner(&owner, &prefix) else {
                    continue;
                };
                if !is_valid(container, ifname) {
                    tracing::info!(port, container, ifname, "GC: removing stale bridge port");
                    errors.extend(driver.detach(&port).await.err());
                }
            }
        }
        Err(e) => errors.push(e),
    }
    match netlink::links(&net.handle).await {
        Ok(links) => {
            for link in links {
                // Retired veths are no attachment's: normally the reaper's, but GC makes sure.
                let stale = link.alias.starts_with(RETIRED)
                    || parse_owner(&link.alias, &prefix)
                        .is_some_and(|(container, ifname)| !is_valid(container, ifname));
                if stale {
                    tracing::info!(veth = %link.name, owner = %link.alias, "GC: removing stale veth");
                    if let Err(e) = netlink::delete_index(&net.handle, link.index).await {
                        errors.push(e.into());
                    }
                }
            }
        }
        Err(e) => errors.push(e.into()),
    }
    errors.extend(gc_evio_ipam(net, request).err());
    // flock blocks: not on an async worker.
    let (ipam, name) = (
        request.config["ipam"].clone(),
        request.config["name"].clone(),
    );
    let host_local = tokio::task::spawn_blocking(move || gc_host_local(&ipam, &name, &valid)).await;
    let host_local = host_local.unwrap_or_else(|e| Err(std::io::Error::other(e)));
    if let Err(source) = host_local {
        errors.push(DataplaneError::Io {
            what: "GC of host-local reservations".into(),
            source,
        });
    }
    DataplaneError::collect(errors).map(|()| Value::Null)
}

/// Releases the network's evio-ipam reservations the runtime no longer lists (whatever the
/// config's IPAM: a node may have switched away from evio-ipam).
pub(super) fn gc_evio_ipam(net: &PodNetwork, request: &Request) -> Result<Value> {
    let valid = valid_attachments(&request.config)?;
    match net.allocator.gc(request, &valid) {
        Ok(()) | Err(AllocError::NotEnabled) => Ok(Value::Null),
        Err(e) => Err(IpamError::from(e).into()),
    }
}

/// host-local keeps one file per address (`<containerID>\r\n<ifname>`) under
/// `<dataDir>/<network name>/`, guarded by `flock` on `lock`; stale ones are removed under
/// the same lock.
fn gc_host_local(ipam: &Value, name: &Value, valid: &Attachments) -> std::io::Result<()> {
    if ipam["type"].as_str() != Some("host-local") {
        return Ok(());
    }
    let base = ipam["dataDir"].as_str().unwrap_or("/var/lib/cni/networks");
    let Some(name) = name.as_str().filter(|n| !n.is_empty() && !n.contains('/')) else {
        return Ok(());
    };
    let dir = std::path::Path::new(base).join(name);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(()); // nothing reserved yet
    };
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))?;
    let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| std::io::Error::from(e))?;
    for entry in entries.filter_map(std::result::Result::ok) {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if file_name.parse::<std::net::IpAddr>().is_err() {
            continue; // lock, last_reserved_ip.*
        }
        let content = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let mut lines = content.split("\r\n").map(str::trim);
        let container = lines.next().unwrap_or_default().to_string();
        let ifname = lines.next().unwrap_or_default().to_string();
        if !valid.contains(&(container.clone(), ifname.clone())) {
            tracing::info!(address = %file_name, container, ifname, "GC: releasing stale host-local reservation");
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepts_both_attachment_keys() {
        let entry = json!([{"containerID": "c", "ifname": "eth0"}]);
        for key in ATTACHMENT_KEYS {
            let valid = valid_attachments(&json!({ key: entry.clone() }))
                .unwrap_or_else(|e| panic!("{key}: {e}"));
            assert!(valid.contains(&("c".to_string(), "eth0".to_string())));
        }
        let err = valid_attachments(&json!({})).map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("valid-attachments"), "{err}");
    }
}
