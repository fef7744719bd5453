//! Reading one nftables chain in-process, over nfnetlink (`NFT_MSG_GETRULE`, a dump): each
//! rule's handle and comment, what `nft -a list chain` shows of it that `masquerade` needs,
//! without a process per ADD. Changes still go through `nft` (they are rare: once per lease
//! change, or after someone removed evio's rule).

use std::net::IpAddr;

use rtnetlink::packet_core::{
    Emitable, ErrorBuffer, NetlinkBuffer, NetlinkHeader, NlaBuffer, NlasIterator, NLMSG_DONE,
    NLMSG_ERROR, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use rtnetlink::sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_USERDATA: u16 = 7;
/// The comment's type in a rule's user data (libnftnl's `NFTNL_UDATA_RULE_COMMENT`).
const UDATA_RULE_COMMENT: u8 = 0;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

#[derive(Debug, thiserror::Error)]
#[error("listing nftables chain {family} {table} {chain} over netlink: {reason}")]
pub struct ListError {
    family: &'static str,
    table: String,
    chain: String,
    reason: String,
}

/// One rule of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub handle: u64,
    pub comment: Option<String>,
}

/// The rules of `chain` in `table` of the family of `addresses` (`ip` or `ip6`), in order.
/// A table or chain that does not exist has no rules.
pub fn list_chain(addresses: IpAddr, table: &str, chain: &str) -> Result<Vec<Rule>, ListError> {
    let (family, name) = match addresses {
        IpAddr::V4(_) => (NFPROTO_IPV4, "ip"),
        IpAddr::V6(_) => (NFPROTO_IPV6, "ip6"),
    };
    let fail = |reason: String| ListError {
        family: name,
        table: table.to_string(),
        chain: chain.to_string(),
        reason,
    };
    let socket = dump_rules(family, table, chain).map_err(|e| fail(e.to_string()))?;
    let mut rules = Vec::new();
    loop {
        // The kernel queues the first part of a dump within the send and each next part
        // within the receive before: nothing is ever waited for (the socket does not block).
        let (datagram, _) = socket
            .recv_from_full()
            .map_err(|e| fail(format!("receive: {e}")))?;
        let mut rest = &datagram[..];
        while !rest.is_empty() {
            let message = NetlinkBuffer::new_checked(rest).map_err(|e| fail(e.to_string()))?;
            let length = (message.length() as usize)
                .next_multiple_of(4)
                .min(rest.len());
            if message.flags() & NLM_F_DUMP_INTR != 0 {
                return Err(fail("the ruleset changed during the dump".into()));
            }
            match message.message_type() {
                NLMSG_DONE => return Ok(rules),
                NLMSG_ERROR => {
                    let code = ErrorBuffer::new_checked(message.payload())
                        .ok()
                        .and_then(|e| e.code())
                        .map_or(0, |c| -c.get());
                    return Err(fail(std::io::Error::from_raw_os_error(code).to_string()));
                }
                t if t == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE => {
                    // After the 4-byte nfgenmsg.
                    let attributes = message.payload().get(4..).unwrap_or_default();
                    rules.push(rule(attributes).map_err(fail)?);
                }
                _ => {}
            }
            rest = &rest[length..];
        }
    }
}

/// Sends the dump request on a new, non-blocking socket.
fn dump_rules(family: u8, table: &str, chain: &str) -> std::io::Result<Socket> {
    let mut attributes = Vec::new();
    for (kind, value) in [(NFTA_RULE_TABLE, table), (NFTA_RULE_CHAIN, chain)] {
        let mut value = value.as_bytes().to_vec();
        value.push(0);
        let start = attributes.len();
        attributes.resize(start + 4 + value.len().next_multiple_of(4), 0);
        let mut nla = NlaBuffer::new(&mut attributes[start..]);
        nla.set_kind(kind);
        nla.set_length((4 + value.len()) as u16);
        nla.value_mut()[..value.len()].copy_from_slice(&value);
    }
    let mut header = NetlinkHeader::default();
    header.message_type = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETRULE;
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.length = (header.buffer_len() + 4 + attributes.len()) as u32;
    let mut request = vec![0; header.buffer_len()];
    header.emit(&mut request);
    // struct nfgenmsg: the family, NFNETLINK_V0, resource id 0.
    request.extend_from_slice(&[family, 0, 0, 0]);
    request.extend_from_slice(&attributes);

    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.set_non_blocking(true)?;
    socket.send_to(&request, &SocketAddr::new(0, 0), 0)?;
    Ok(socket)
}

/// A rule's handle and comment from its attributes.
fn rule(attributes: &[u8]) -> Result<Rule, String> {
    let mut handle = None;
    let mut comment = None;
    for nla in NlasIterator::new(attributes) {
        let nla = nla.map_err(|e| e.to_string())?;
        match nla.kind() {
            NFTA_RULE_HANDLE => handle = nla.value().try_into().ok().map(u64::from_be_bytes),
            NFTA_RULE_USERDATA => comment = udata_comment(nla.value()),
            _ => {}
        }
    }
    Ok(Rule {
        handle: handle.ok_or("a rule without a handle")?,
        comment,
    })
}

/// The comment in a rule's user data: type-length-value items of one byte each, the comment's
/// value a NUL-terminated string.
fn udata_comment(mut udata: &[u8]) -> Option<String> {
    while let [kind, length, rest @ ..] = udata {
        let value = rest.get(..usize::from(*length))?;
        if *kind == UDATA_RULE_COMMENT {
            let text = value.split(|b| *b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        udata = &rest[value.len()..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_comment_among_other_user_data() {
        let mut udata = vec![1, 2, 0xaa, 0xbb]; // some other item first
        udata.extend_from_slice(&[UDATA_RULE_COMMENT, 6]);
        udata.extend_from_slice(b"evio\0\0");
        assert_eq!(udata_comment(&udata).as_deref(), Some("evio"));
        assert_eq!(udata_comment(&[1, 9, 0]), None, "a truncated item");
        assert_eq!(udata_comment(&[]), None);
    }
}
