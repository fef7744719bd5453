//! Link, address and route changes over rtnetlink, in the host namespace or inside a pod's
//! network namespace (no `ip` exec on the pod path).

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth};

/// A netlink or namespace failure, with what was being done and the typed cause (the
/// kernel's errno stays readable: [`NetlinkError::errno`]).
#[derive(Debug, thiserror::Error)]
#[error("{action}: {source}")]
pub struct NetlinkError {
    pub action: String,
    #[source]
    pub source: NetlinkCause,
}

#[derive(Debug, thiserror::Error)]
pub enum NetlinkCause {
    #[error(transparent)]
    Netlink(#[from] rtnetlink::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Errno(#[from] nix::errno::Errno),
    #[error("{0}")]
    Other(String),
}

impl NetlinkError {
    pub fn new(action: impl Into<String>, source: impl Into<NetlinkCause>) -> Self {
        Self {
            action: action.into(),
            source: source.into(),
        }
    }

    pub(super) fn other(action: impl Into<String>, reason: &str) -> Self {
        Self::new(action, NetlinkCause::Other(reason.into()))
    }

    /// The kernel's errno (positive), when the kernel answered one.
    pub fn errno(&self) -> Option<i32> {
        match &self.source {
            NetlinkCause::Netlink(rtnetlink::Error::NetlinkError(m)) => Some(-m.raw_code()),
            NetlinkCause::Io(e) => e.raw_os_error(),
            NetlinkCause::Errno(e) => Some(*e as i32),
            _ => None,
        }
    }

    pub fn source_text(&self) -> String {
        self.source.to_string()
    }
}

pub(super) fn fail(action: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let action = action.into();
    move |e| NetlinkError::new(action, e)
}

/// True for "no such device" / "not found" answers.
fn is_not_found(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -nix::libc::ENODEV)
}

pub(super) fn is_exists(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -nix::libc::EEXIST)
}

/// A netlink handle on the namespace of the calling thread.
pub fn connect() -> Result<Handle, NetlinkError> {
    let (connection, handle, _) = rtnetlink::new_connection()
        .map_err(|e| NetlinkError::new("opening a netlink socket", e))?;
    tokio::spawn(connection);
    Ok(handle)
}

/// The index of link `name`, which must exist.
pub async fn link_index(handle: &Handle, name: &str) -> Result<u32, NetlinkError> {
    link_by_name(handle, name)
        .await?
        .map(|l| l.header.index)
        .ok_or_else(|| NetlinkError::other(format!("finding link {name}"), "no such link"))
}

/// The link `request` asks for, if any (`shown` names it in an error).
async fn one_link(
    request: rtnetlink::LinkGetRequest,
    shown: &(dyn std::fmt::Display + Sync),
) -> Result<Option<LinkMessage>, NetlinkError> {
    match request.execute().try_next().await {
        Ok(link) => Ok(link),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(fail(format!("looking up link {shown}"))(e)),
    }
}

/// The link called `name`, if any.
pub async fn link_by_name(
    handle: &Handle,
    name: &str,
) -> Result<Option<LinkMessage>, NetlinkError> {
    one_link(handle.link().get().match_name(name.to_string()), &name).await
}

/// The link with `index`, if any.
pub async fn link_by_index(
    handle: &Handle,
    index: u32,
) -> Result<Option<LinkMessage>, NetlinkError> {
    one_link(handle.link().get().match_index(index), &index).await
}

/// One `RTM_SETLINK` (`action` says what it does, for the error).
pub async fn set_link(
    handle: &Handle,
    message: LinkMessage,
    action: impl FnOnce() -> String,
) -> Result<(), NetlinkError> {
    let outcome = handle.link().set(message).execute().await;
    outcome.map_err(|e| NetlinkError::new(action(), e))
}

/// The link that carries `addr` (assigned to it in this namespace): its name and MTU.
pub async fn link_carrying(
    handle: &Handle,
    addr: Ipv4Addr,
) -> Result<Option<(String, u32)>, NetlinkError> {
    let wanted = IpAddr::V4(addr);
    let mut addresses = handle.address().get().execute();
    let mut index = None;
    while let Some(msg) = addresses
        .try_next()
        .await
        .map_err(fail("listing addresses"))?
    {
        let carries = msg.attributes.iter().any(|a| {
            matches!(a, AddressAttribute::Address(ip) | AddressAttribute::Local(ip) if *ip == wanted)
        });
        if carries {
            index = Some(msg.header.index);
            break;
        }
    }
    let Some(link) = (match index {
        Some(index) => link_by_index(handle, index).await?,
        None => None,
    }) else {
        return Ok(None);
    };
    let (mut name, mut mtu) = (String::new(), None);
    for attr in link.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = n,
            LinkAttribute::Mtu(m) => mtu = Some(m),
            _ => {}
        }
    }
    Ok(mtu.map(|mtu| (name, mtu)))
}

pub fn mac_of(link: &LinkMessage) -> String {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(mac) => Some(mac_text(mac)),
            _ => None,
        })
        .unwrap_or_default()
}

/// `aa:bb:cc:dd:ee:ff`, as CNI results carry MACs.
pub fn mac_text(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// What [`ensure_linux_bridge`] found or did.
pub enum Ensured {
    /// It existed: its link as found.
    Found(LinkMessage),
    Created,
    /// A concurrent creator won.
    Exists,
}

/// Creates a Linux bridge `name` unless it exists.
pub async fn ensure_linux_bridge(
    handle: &Handle,
    name: &str,
    mtu: u32,
) -> Result<Ensured, NetlinkError> {
    if let Some(link) = link_by_name(handle, name).await? {
        return Ok(Ensured::Found(link));
    }
    match handle
        .link()
        .add(LinkBridge::new(name).mtu(mtu).build())
        .execute()
        .await
    {
        Ok(()) => Ok(Ensured::Created),
        Err(e) if is_exists(&e) => Ok(Ensured::Exists),
        Err(e) => Err(fail(format!("creating bridge {name}"))(e)),
    }
}

/// Waits (up to 5 s: an OVS bridge's interface appears once vswitchd gets to it) for the
/// bridge's link (`known` when the caller just found it), brings it up unless it is and gives
/// it `addresses`. Returns its index.
pub async fn bridge_ready(
    handle: &Handle,
    name: &str,
    addresses: &[ipnetwork::IpNetwork],
    known: Option<LinkMessage>,
) -> Result<u32, NetlinkError> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut known = known;
    let link = loop {
        if let Some(link) = known.take() {
            break link;
        }
        if let Some(link) = link_by_name(handle, name).await? {
            break link;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(NetlinkError::other(
                format!("waiting for bridge interface {name}"),
                "it did not appear within 5 s",
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    let index = link.header.index;
    if !is_up(&link) {
        set_up(handle, index).await?;
    }
    for address in addresses {
        add_address(handle, index, address.ip(), address.prefix()).await?;
    }
    Ok(index)
}

/// Puts link `port` on Linux bridge `bridge`, with hairpin mode if asked.
pub async fn enslave(
    handle: &Handle,
    port: u32,
    bridge: u32,
    hairpin: bool,
) -> Result<(), NetlinkError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(port).controller(bridge).build())
        .execute()
        .await
        .map_err(fail(format!("attaching link {port} to bridge {bridge}")))?;
    if hairpin {
        handle
            .link()
            .set_port(rtnetlink::LinkBridgePort::new(port).hairpin(true).build())
            .execute()
            .await
            .map_err(fail(format!("setting hairpin mode on link {port}")))?;
    }
    Ok(())
}

/// The bridge `link` is attached to, if any.
pub fn controller_of(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(index) => Some(*index),
        _ => None,
    })
}

pub async fn set_up(handle: &Handle, index: u32) -> Result<(), NetlinkError> {
    let up = LinkUnspec::new_with_index(index).up().build();
    set_link(handle, up, || format!("bringing link {index} up")).await
}

/// Adds an address; an address already present is fine. IPv6 addresses skip duplicate address
/// detection (`nodad`): the pool hands each address to one pod only, and DAD would keep a new
/// address "tentative" (unusable as a source, not answering neighbour solicitations) for about
/// a second after every ADD and every bridge creation.
pub async fn add_address(
    handle: &Handle,
    index: u32,
    addr: IpAddr,
    prefix: u8,
) -> Result<(), NetlinkError> {
    use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
    let mut request = handle.address().add(index, addr, prefix);
    if addr.is_ipv6() {
        request
            .message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    match request.execute().await {
        Ok(()) => Ok(()),
        Err(e) if is_exists(&e) => Ok(()),
        Err(e) => Err(fail(format!("adding {addr}/{prefix} to link {index}"))(e)),
    }
}

/// Creates a veth pair whose host end `host` stays here (up, `owner` as its alias, on bridge
/// `controller` when given) and whose other end is born as `pod_ifname` inside the namespace
/// open at `netns`: created there directly, never moved (moving a netdev between namespaces
/// costs a kernel synchronisation of tens of milliseconds). One request creates both ends (the
/// pod end cannot be created up: the kernel opens it before the pair is linked); the alias (which the kernel takes only in a change) is set while the host end
/// is looked up. Returns the host end as it is then (its index, MAC and controller).
pub async fn create_veth(
    handle: &Handle,
    host: &str,
    pod_ifname: &str,
    owner: &str,
    mtu: u32,
    netns: &File,
    controller: Option<u32>,
) -> Result<LinkMessage, NetlinkError> {
    use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
    use rtnetlink::LinkMessageBuilder;
    use std::os::fd::AsRawFd;
    let pod_end = LinkUnspec::new_with_name(pod_ifname)
        .mtu(mtu)
        .setns_by_fd(netns.as_raw_fd())
        .build();
    let mut pair = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(host.to_string())
        .mtu(mtu)
        .up()
        .set_info_data(InfoData::Veth(InfoVeth::Peer(pod_end)));
    if let Some(bridge) = controller {
        pair = pair.controller(bridge);
    }
    handle
        .link()
        .add(pair.build())
        .execute()
        .await
        .map_err(fail(format!(
            "creating veth {host} with {pod_ifname} in the pod netns"
        )))?;
    let alias = LinkUnspec::new_with_name(host).alias(owner).build();
    let (aliased, found) = tokio::join!(
        set_link(handle, alias, || format!("tagging {host}")),
        link_by_name(handle, host)
    );
    let found = found.and_then(|link| {
        link.ok_or_else(|| NetlinkError::other(format!("finding link {host}"), "no such link"))
    });
    match (aliased, found) {
        (Ok(()), Ok(link)) => Ok(link),
        (Err(e), _) | (_, Err(e)) => {
            // The pair exists but is unusable: remove it (and its pod end) before reporting.
            if let Err(e) = delete_link(handle, host).await {
                tracing::warn!(error = %e, veth = host, "removing a half-made veth failed");
            }
            Err(e)
        }
    }
}

/// Whether `link` is administratively up.
pub fn is_up(link: &LinkMessage) -> bool {
    link.header
        .flags
        .contains(rtnetlink::packet_route::link::LinkFlags::Up)
}

/// Whether `file` is a network namespace (nsfs), as `CNI_NETNS` must be.
pub fn is_netns(file: &File) -> bool {
    nix::sys::statfs::fstatfs(file)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// Whether `link` is a Linux bridge.
pub fn is_bridge(link: &LinkMessage) -> bool {
    use rtnetlink::packet_route::link::{InfoKind, LinkInfo};
    link.attributes.iter().any(|a| {
        matches!(a, LinkAttribute::LinkInfo(infos)
            if infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge))))
    })
}

/// Deletes link `name`; absent is fine (DEL is idempotent). Returns whether it existed.
pub async fn delete_link(handle: &Handle, name: &str) -> Result<bool, NetlinkError> {
    match link_by_name(handle, name).await? {
        Some(link) => delete_index(handle, link.header.index).await,
        None => Ok(false),
    }
}

/// Deletes the link with `index`; absent is fine. An index, unlike a name, is never handed to
/// a newer link soon after (the kernel allocates them cyclically).
pub async fn delete_index(handle: &Handle, index: u32) -> Result<bool, NetlinkError> {
    match handle.link().del(index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(fail(format!("deleting link {index}"))(e)),
    }
}

/// Takes link `index` down (a bridge forwards nothing to it) and marks it for deletion:
/// `alias` (kept across a daemon restart) and link group `group` (the kernel deletes a whole
/// group in one request, paying its RCU waits once). Returns false if it no longer exists.
pub async fn retire(
    handle: &Handle,
    index: u32,
    alias: &str,
    group: u32,
) -> Result<bool, NetlinkError> {
    let request = handle
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .down()
                .alias(alias)
                .link_group(group)
                .build(),
        )
        .execute()
        .await;
    match request {
        Ok(()) => Ok(true),
        // Gone meanwhile: its netns was deleted and the kernel took the pair with it.
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(fail(format!("retiring link {index}"))(e)),
    }
}

/// Takes link `index` down.
pub async fn set_down(handle: &Handle, index: u32) -> Result<(), NetlinkError> {
    let down = LinkUnspec::new_with_index(index).down().build();
    set_link(handle, down, || format!("taking link {index} down")).await
}

/// Deletes every link of `group` in one request.
pub async fn delete_group(handle: &Handle, group: u32) -> Result<(), NetlinkError> {
    let mut request = handle.link().del(0);
    request
        .message_mut()
        .attributes
        .push(LinkAttribute::Group(group));
    match request.execute().await {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(fail(format!("deleting link group {group:#x}"))(e)),
    }
}

pub fn alias_of(link: &LinkMessage) -> &str {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfAlias(alias) => Some(alias.as_str()),
            _ => None,
        })
        .unwrap_or_default()
}

/// What GC, CHECK and the reaper need to know of a link.
pub struct LinkSummary {
    pub index: u32,
    pub name: String,
    pub alias: String,
    /// The bridge it is attached to, if any.
    pub controller: Option<u32>,
}

/// Every link in the namespace.
pub async fn links(handle: &Handle) -> Result<Vec<LinkSummary>, NetlinkError> {
    let mut out = Vec::new();
    let mut stream = handle.link().get().execute();
    while let Some(link) = stream.try_next().await.map_err(fail("listing links"))? {
        let mut summary = LinkSummary {
            index: link.header.index,
            name: String::new(),
            alias: String::new(),
            controller: None,
        };
        for attr in link.attributes {
            match attr {
                LinkAttribute::IfName(n) => summary.name = n,
                LinkAttribute::IfAlias(a) => summary.alias = a,
                LinkAttribute::Controller(c) => summary.controller = Some(c),
                _ => {}
            }
        }
        out.push(summary);
    }
    Ok(out)
}
