//! evio-ipam's config: host-local's `ranges` (range sets, one address from each) and
//! `routes`, or host-local's older single-range form (`subnet`, `rangeStart`, `rangeEnd`,
//! `gateway`), so switching a conflist from host-local is changing `type`. `dataDir` is not
//! needed; when present it names where host-local kept its reservations (imported on first
//! use). Either IP family.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::plugin_conf::{deserialize_keyed, invalid, InvalidKey};

/// host-local's default `dataDir`.
pub const HOST_LOCAL_DATA_DIR: &str = "/var/lib/cni/networks";

/// One range: addresses `start..=end` of `subnet` (the prefix pods get), `gateway` excluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNetwork,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: Option<IpAddr>,
}

impl Range {
    pub fn contains(&self, ip: IpAddr) -> bool {
        same_family(ip, self.start)
            && ordinal(self.start) <= ordinal(ip)
            && ordinal(ip) <= ordinal(self.end)
    }

    /// Whether a pod may get `ip` (not the gateway, not the subnet's network or v4
    /// broadcast address).
    pub fn assignable(&self, ip: IpAddr) -> bool {
        let broadcast = match self.subnet {
            IpNetwork::V4(n) if n.prefix() < 31 => Some(IpAddr::V4(n.broadcast())),
            _ => None,
        };
        let network = match self.subnet.prefix() < max_prefix(ip) - 1 {
            true => Some(self.subnet.network()),
            false => None,
        };
        self.contains(ip)
            && Some(ip) != self.gateway
            && Some(ip) != broadcast
            && Some(ip) != network
    }

    fn overlaps(&self, other: &Range) -> bool {
        same_family(self.start, other.start)
            && ordinal(self.start) <= ordinal(other.end)
            && ordinal(other.start) <= ordinal(self.end)
    }

    pub fn describe(&self) -> String {
        format!("{}-{} of {}", self.start, self.end, self.subnet)
    }
}

/// The parsed `ipam` object.
#[derive(Debug, Clone, PartialEq)]
pub struct IpamConf {
    /// One address per range set; within a set the ranges are tried in order.
    pub range_sets: Vec<Vec<Range>>,
    /// Routes for the result, as given (each `dst` checked).
    pub routes: Vec<Value>,
    /// Where host-local's reservations for this network are (import source).
    pub host_local_dir: PathBuf,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRange {
    subnet: IpNetwork,
    range_start: Option<IpAddr>,
    range_end: Option<IpAddr>,
    gateway: Option<IpAddr>,
}

#[derive(Deserialize)]
struct RawRoute {
    dst: IpNetwork,
    gw: Option<IpAddr>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    #[serde(default)]
    ranges: Vec<Vec<RawRange>>,
    subnet: Option<IpNetwork>,
    range_start: Option<IpAddr>,
    range_end: Option<IpAddr>,
    gateway: Option<IpAddr>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    data_dir: Option<PathBuf>,
}

impl IpamConf {
    /// Parses the `ipam` object of a network config, naming the bad key.
    pub fn parse(ipam: &Value) -> Result<Self, InvalidKey> {
        let raw: RawConf = deserialize_keyed(ipam, "ipam")?;
        let mut raw_sets = raw.ranges;
        if let Some(subnet) = raw.subnet {
            if !raw_sets.is_empty() {
                return Err(invalid("ipam.subnet", "give ranges or subnet, not both"));
            }
            raw_sets.push(vec![RawRange {
                subnet,
                range_start: raw.range_start,
                range_end: raw.range_end,
                gateway: raw.gateway,
            }]);
        }
        if raw_sets.is_empty() {
            return Err(invalid("ipam.ranges", "at least one range set is needed"));
        }
        let mut range_sets = Vec::with_capacity(raw_sets.len());
        let mut all: Vec<(String, Range)> = Vec::new();
        for (i, set) in raw_sets.into_iter().enumerate() {
            if set.is_empty() {
                return Err(invalid(
                    format!("ipam.ranges[{i}]"),
                    "a range set needs a range",
                ));
            }
            let mut ranges = Vec::with_capacity(set.len());
            for (j, raw) in set.into_iter().enumerate() {
                let key = format!("ipam.ranges[{i}][{j}]");
                let range = range(&key, raw)?;
                if let Some((other, _)) = all.iter().find(|(_, r)| r.overlaps(&range)) {
                    return Err(invalid(key, format!("overlaps {other}")));
                }
                all.push((key, range.clone()));
                ranges.push(range);
            }
            range_sets.push(ranges);
        }
        let routes = raw
            .routes
            .into_iter()
            .map(|r| match r.gw {
                Some(gw) => json!({"dst": canonical(r.dst).to_string(), "gw": gw.to_string()}),
                None => json!({"dst": canonical(r.dst).to_string()}),
            })
            .collect();
        Ok(Self {
            range_sets,
            routes,
            host_local_dir: raw
                .data_dir
                .unwrap_or_else(|| PathBuf::from(HOST_LOCAL_DATA_DIR)),
        })
    }
}

/// `subnet` without host bits ("10.1.2.3/16" → "10.1.0.0/16").
fn canonical(net: IpNetwork) -> IpNetwork {
    IpNetwork::new(net.network(), net.prefix()).unwrap_or(net)
}

fn range(key: &str, raw: RawRange) -> Result<Range, InvalidKey> {
    let subnet = canonical(raw.subnet);
    let first = ordinal(subnet.network());
    let last = first + ((1u128 << (max_prefix(subnet.ip()) - subnet.prefix()) as u32) - 1);
    // host-local's defaults: network + 1 to the last address (v4: before the broadcast).
    let v4_small = matches!(subnet, IpNetwork::V4(n) if n.prefix() >= 31);
    let default_start = if v4_small { first } else { first + 1 };
    let default_end = match subnet {
        IpNetwork::V4(_) if !v4_small => last - 1,
        _ => last,
    };
    let v6 = subnet.is_ipv6();
    let inside = |field: &str, ip: IpAddr| {
        if same_family(ip, subnet.ip()) && subnet.contains(ip) {
            Ok(ip)
        } else {
            Err(invalid(
                format!("{key}.{field}"),
                format!("{ip} is not in subnet {subnet}"),
            ))
        }
    };
    let start = match raw.range_start {
        Some(ip) => inside("rangeStart", ip)?,
        None => from_ordinal(default_start, v6),
    };
    let end = match raw.range_end {
        Some(ip) => inside("rangeEnd", ip)?,
        None => from_ordinal(default_end, v6),
    };
    if ordinal(start) > ordinal(end) {
        return Err(invalid(
            format!("{key}.rangeEnd"),
            format!("{end} is before rangeStart {start}"),
        ));
    }
    let gateway = match raw.gateway {
        Some(ip) => Some(inside("gateway", ip)?),
        None if !v4_small => Some(from_ordinal(first + 1, v6)),
        None => None,
    };
    Ok(Range {
        subnet,
        start,
        end,
        gateway,
    })
}

pub(super) fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

fn max_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

/// The address as a number (within its family).
pub(super) fn ordinal(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a).into(),
        IpAddr::V6(a) => a.into(),
    }
}

pub(super) fn from_ordinal(n: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(n.into())
    } else {
        // Ordinals of v4 ranges never exceed u32.
        IpAddr::V4(u32::try_from(n).unwrap_or(u32::MAX).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<IpamConf, InvalidKey> {
        IpamConf::parse(&v)
    }

    #[test]
    fn host_local_ranges_and_defaults() {
        let conf = parse(
            json!({"type": "evio-ipam", "ranges": [[{"subnet": "10.1.0.0/16",
            "rangeStart": "10.1.3.2", "rangeEnd": "10.1.3.254", "gateway": "10.1.3.1"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let r = &conf.range_sets[0][0];
        assert_eq!(r.start.to_string(), "10.1.3.2");
        assert_eq!(
            r.gateway.map(|g| g.to_string()).as_deref(),
            Some("10.1.3.1")
        );
        assert_eq!(conf.routes, vec![json!({"dst": "0.0.0.0/0"})]);
        assert_eq!(conf.host_local_dir, PathBuf::from(HOST_LOCAL_DATA_DIR));

        let legacy = parse(json!({"subnet": "10.2.0.0/24"})).unwrap_or_else(|e| panic!("{e}"));
        let r = &legacy.range_sets[0][0];
        assert_eq!(
            (r.start.to_string(), r.end.to_string()),
            ("10.2.0.1".into(), "10.2.0.254".into())
        );
        assert!(!r.assignable("10.2.0.1".parse().unwrap_or_else(|e| panic!("{e}"))));
        assert!(r.assignable("10.2.0.2".parse().unwrap_or_else(|e| panic!("{e}"))));

        let v6 = parse(json!({"ranges": [[{"subnet": "fd00:1::/120"}]]}))
            .unwrap_or_else(|e| panic!("{e}"));
        let r = &v6.range_sets[0][0];
        assert_eq!(
            (r.start.to_string(), r.end.to_string()),
            ("fd00:1::1".into(), "fd00:1::ff".into())
        );
    }

    #[test]
    fn bad_input_names_the_key() {
        for (conf, key) in [
            (json!({}), "ipam.ranges"),
            (json!({"ranges": "x"}), "ipam.ranges"),
            (json!({"ranges": [[]]}), "ipam.ranges[0]"),
            (
                json!({"ranges": [[{"subnet": "10.0.0.0/33"}]]}),
                "ipam.ranges[0][0].subnet",
            ),
            (
                json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.1.1"}]]}),
                "ipam.ranges[0][0].rangeStart",
            ),
            (
                json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeEnd": "fd00::1"}]]}),
                "ipam.ranges[0][0].rangeEnd",
            ),
            (
                json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.9", "rangeEnd": "10.0.0.3"}]]}),
                "ipam.ranges[0][0].rangeEnd",
            ),
            (
                json!({"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.0.0.0/25"}]]}),
                "ipam.ranges[1][0]",
            ),
            (
                json!({"routes": [{"dst": "nope"}], "subnet": "10.0.0.0/24"}),
                "ipam.routes[0].dst",
            ),
        ] {
            let err = parse(conf.clone()).map(|_| ()).unwrap_err();
            assert_eq!(err.key, key, "{conf}: {err}");
        }
    }
}
