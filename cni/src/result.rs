//! ADD results across spec versions, and chaining. When evio-cni is not the first plugin of a
//! conflist, ADD receives the previous plugin's result as `prevResult`, possibly in another
//! result version than the config's (a plugin answers in the newest version it supports). The
//! spec wants it passed on: evio answers with the previous interfaces, ips, routes and dns
//! first, its own appended (its ips' `interface` indexes shifted past the previous
//! interfaces), all in the config's `cniVersion`.

use ipnetwork::IpNetwork;
use serde_json::{Map, Value};

use crate::spec::{code, version_key, CniError, SUPPORTED_VERSIONS};

/// Fields spec 1.1.0 added to interfaces and routes; earlier versions do not define them.
const INTERFACE_FIELDS_SINCE_1_1: [&str; 3] = ["mtu", "socketPath", "pciID"];
const ROUTE_FIELDS_SINCE_1_1: [&str; 5] = ["mtu", "advmss", "priority", "table", "scope"];

/// `result` (any version from 0.3.0 to 1.1.0) expressed in `version`: 0.3.x and 0.4.0 ips
/// carry `"version": "4"|"6"`, 1.x ips do not; fields of 1.1.0 are dropped below it.
pub fn convert(result: &Value, version: &str) -> Value {
    let mut out = result.clone();
    out["cniVersion"] = Value::String(version.to_string());
    let before_1_0 = version_key(version) < version_key("1.0.0");
    let before_1_1 = version_key(version) < version_key("1.1.0");
    for ip in objects_mut(&mut out, "ips") {
        if before_1_0 {
            let v6 = ip
                .get("address")
                .and_then(Value::as_str)
                .is_some_and(|a| a.contains(':'));
            ip.insert("version".into(), Value::from(if v6 { "6" } else { "4" }));
        } else {
            ip.remove("version");
        }
    }
    if before_1_1 {
        for interface in objects_mut(&mut out, "interfaces") {
            INTERFACE_FIELDS_SINCE_1_1.iter().for_each(|f| {
                interface.remove(*f);
            });
        }
        for route in objects_mut(&mut out, "routes") {
            ROUTE_FIELDS_SINCE_1_1.iter().for_each(|f| {
                route.remove(*f);
            });
        }
    }
    out
}

fn objects_mut<'a>(
    result: &'a mut Value,
    key: &str,
) -> impl Iterator<Item = &'a mut Map<String, Value>> {
    result
        .get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
}

/// The config's `prevResult`, checked and converted to the config's `version`; `None` when
/// evio-cni is first in the chain. Checked before ADD touches anything, so a malformed one
/// leaves nothing behind.
pub fn prev_result(config: &Value, version: &str) -> Result<Option<Value>, CniError> {
    let prev = match config.get("prevResult") {
        None | Some(Value::Null) => return Ok(None),
        Some(prev) => prev,
    };
    let invalid = |key: String, why: &str| {
        CniError::new(
            version,
            code::INVALID_NETWORK_CONFIG,
            format!("invalid prevResult: {key} {why}"),
        )
        .with_details(prev.to_string())
    };
    if !prev.is_object() {
        return Err(invalid("prevResult".into(), "must be a result object"));
    }
    // A result names its version; one without is taken as the config's.
    if let Some(v) = prev.get("cniVersion") {
        if !v.as_str().is_some_and(|v| SUPPORTED_VERSIONS.contains(&v)) {
            return Err(CniError::new(
                version,
                code::INCOMPATIBLE_VERSION,
                format!("prevResult has unsupported cniVersion {v}"),
            )
            .with_details(format!("supported: {}", SUPPORTED_VERSIONS.join(", "))));
        }
    }
    let list = |key: &str| -> Result<Vec<Value>, CniError> {
        match prev.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => Ok(items.clone()),
            Some(_) => Err(invalid(format!("prevResult.{key}"), "must be a list")),
        }
    };
    // ipnetwork reads a bare address as a host prefix; a result must name the length.
    let is_cidr = |v: &Value| {
        v.as_str()
            .is_some_and(|s| s.contains('/') && s.parse::<IpNetwork>().is_ok())
    };
    // The list `key`, each of whose items needs a `field` that `ok` accepts.
    let each = |key: &str, field: &str, ok: &dyn Fn(&Value) -> bool, must: &str| {
        let items = list(key)?;
        match items
            .iter()
            .position(|item| !item.get(field).is_some_and(ok))
        {
            Some(i) => Err(invalid(format!("prevResult.{key}[{i}].{field}"), must)),
            None => Ok(items),
        }
    };
    let interfaces = each("interfaces", "name", &Value::is_string, "must be a name")?;
    let with_prefix = "must be an address with prefix length";
    for (i, ip) in each("ips", "address", &is_cidr, with_prefix)?
        .iter()
        .enumerate()
    {
        match ip.get("interface") {
            None | Some(Value::Null) => {}
            Some(index) => {
                if index.as_u64().is_none_or(|n| n >= interfaces.len() as u64) {
                    return Err(invalid(
                        format!("prevResult.ips[{i}].interface"),
                        "must index prevResult.interfaces",
                    ));
                }
            }
        }
    }
    each(
        "routes",
        "dst",
        &is_cidr,
        "must be a destination with prefix length",
    )?;
    if !matches!(prev.get("dns"), None | Some(Value::Null | Value::Object(_))) {
        return Err(invalid("prevResult.dns".into(), "must be an object"));
    }
    Ok(Some(convert(prev, version)))
}

/// The chain's result after evio: `prev`'s interfaces, ips, routes and dns followed by
/// `own`'s, in `version`. `own`'s ip `interface` indexes count from its own first interface;
/// they are shifted past `prev`'s interfaces.
pub fn chain(prev: Option<&Value>, own: &Value, version: &str) -> Value {
    let own = convert(own, version);
    let Some(prev) = prev else {
        return own;
    };
    let prev = convert(prev, version);
    let items = |result: &Value, key: &str| -> Vec<Value> {
        result[key].as_array().cloned().unwrap_or_default()
    };
    let shift = items(&prev, "interfaces").len() as u64;
    let own_ips = items(&own, "ips").into_iter().map(|mut ip| {
        if let Some(index) = ip["interface"].as_u64() {
            ip["interface"] = Value::from(index + shift);
        }
        ip
    });
    let mut routes = items(&prev, "routes");
    for route in items(&own, "routes") {
        if !routes.contains(&route) {
            routes.push(route);
        }
    }
    let mut merged = Map::new();
    merged.insert("cniVersion".into(), Value::from(version));
    let interfaces: Vec<Value> = items(&prev, "interfaces")
        .into_iter()
        .chain(items(&own, "interfaces"))
        .collect();
    merged.insert("interfaces".into(), Value::Array(interfaces));
    let ips: Vec<Value> = items(&prev, "ips").into_iter().chain(own_ips).collect();
    merged.insert("ips".into(), Value::Array(ips));
    merged.insert("routes".into(), Value::Array(routes));
    merged.insert("dns".into(), merge_dns(&prev["dns"], &own["dns"]));
    Value::Object(merged)
}

/// The previous plugin's DNS settings first; ours fill in what it left out and add servers,
/// search domains and options it did not list.
fn merge_dns(prev: &Value, own: &Value) -> Value {
    let mut dns = prev.as_object().cloned().unwrap_or_default();
    if !dns.contains_key("domain") {
        if let Some(domain) = own.get("domain") {
            dns.insert("domain".into(), domain.clone());
        }
    }
    for key in ["nameservers", "search", "options"] {
        let Some(extra) = own.get(key).and_then(Value::as_array) else {
            continue;
        };
        let mut list = dns
            .get(key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for item in extra {
            if !list.contains(item) {
                list.push(item.clone());
            }
        }
        dns.insert(key.into(), Value::Array(list));
    }
    Value::Object(dns)
}

/// The ips of the interface called `ifname` in `sandbox` (CHECK's view of a chained result,
/// where evio's address need not come first). A result whose ips name no interface at all
/// (written by something else than evio) is taken as all ours.
pub fn ips_of<'a>(result: &'a Value, ifname: &str, sandbox: &str) -> Vec<&'a Value> {
    let ips: Vec<&Value> = result["ips"].as_array().into_iter().flatten().collect();
    if ips.iter().all(|ip| ip.get("interface").is_none()) {
        return ips;
    }
    let index = result["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .position(|i| {
            i["name"] == ifname && i.get("sandbox").is_none_or(|s| s == sandbox || s == "")
        });
    match index {
        Some(index) => ips
            .into_iter()
            .filter(|ip| ip["interface"].as_u64() == Some(index as u64))
            .collect(),
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What evio builds for itself: bridge, host veth, pod interface; its ip on interface 2.
    fn own(version: &str) -> Value {
        json!({
            "cniVersion": version,
            "interfaces": [
                {"name": "evioB", "mac": "02:00:00:00:00:01"},
                {"name": "evio0123", "mac": "02:00:00:00:00:02"},
                {"name": "eth0", "mac": "02:00:00:00:00:03", "sandbox": "/run/netns/p"},
            ],
            "ips": [{"address": "10.90.0.2/16", "gateway": "10.90.0.1", "interface": 2}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.90.0.1"}],
            "dns": {"nameservers": ["10.90.0.10"], "search": ["svc.local"]},
        })
    }

    /// A previous plugin's result in `version`: one interface with an IPv4 and an IPv6
    /// address, a route, DNS; 1.1.0 adds its newer fields.
    fn prev(version: &str) -> Value {
        let old = version_key(version) < version_key("1.0.0");
        let mut ips = vec![
            json!({"address": "10.90.200.5/24", "interface": 0}),
            json!({"address": "fd00:90::5/64", "gateway": "fd00:90::1", "interface": 0}),
        ];
        if old {
            ips[0]["version"] = json!("4");
            ips[1]["version"] = json!("6");
        }
        let mut result = json!({
            "cniVersion": version,
            "interfaces": [{"name": "net1", "mac": "02:00:00:00:01:01", "sandbox": "/run/netns/p"}],
            "ips": ips,
            "routes": [{"dst": "10.90.201.0/24", "gw": "10.90.200.1"}],
            "dns": {"nameservers": ["10.90.200.53"], "domain": "example"},
        });
        if version == "1.1.0" {
            result["interfaces"][0]["mtu"] = json!(1400);
            result["routes"][0]["table"] = json!(100);
        }
        result
    }

    #[test]
    fn merges_every_version_pair() {
        for config in SUPPORTED_VERSIONS {
            for previous in SUPPORTED_VERSIONS {
                let config_json = json!({"cniVersion": config, "prevResult": prev(previous)});
                let checked = prev_result(&config_json, config)
                    .unwrap_or_else(|e| panic!("{config}/{previous}: {e}"));
                let merged = chain(checked.as_ref(), &own(config), config);
                let case = format!("config {config}, prevResult {previous}: {merged}");
                assert_eq!(merged["cniVersion"], config, "{case}");
                let names = evio_test_support::cni::interface_names(&merged);
                assert_eq!(names, ["net1", "evioB", "evio0123", "eth0"], "{case}");
                let ips = merged["ips"].as_array().cloned().unwrap_or_default();
                assert_eq!(ips.len(), 3, "{case}");
                assert_eq!(ips[0]["interface"], 0, "{case}");
                assert_eq!(ips[1]["address"], "fd00:90::5/64", "{case}");
                // evio's ip points at its pod interface, now fourth
                assert_eq!(ips[2]["address"], "10.90.0.2/16", "{case}");
                assert_eq!(ips[2]["interface"], 3, "{case}");
                let old = version_key(config) < version_key("1.0.0");
                let versions: Vec<&Value> = ips.iter().map(|ip| &ip["version"]).collect();
                if old {
                    assert_eq!(versions, [&json!("4"), &json!("6"), &json!("4")], "{case}");
                } else {
                    assert!(versions.iter().all(|v| v.is_null()), "{case}");
                }
                let mut prev_route = json!({"dst": "10.90.201.0/24", "gw": "10.90.200.1"});
                let newest = config == "1.1.0" && previous == "1.1.0";
                if newest {
                    prev_route["table"] = json!(100);
                }
                let own_route = json!({"dst": "0.0.0.0/0", "gw": "10.90.0.1"});
                assert_eq!(merged["routes"], json!([prev_route, own_route]), "{case}");
                assert_eq!(
                    merged["interfaces"][0].get("mtu").is_some(),
                    newest,
                    "{case}"
                );
                assert_eq!(
                    merged["dns"],
                    json!({"nameservers": ["10.90.200.53", "10.90.0.10"], "domain": "example",
                           "search": ["svc.local"]}),
                    "{case}"
                );
            }
        }
    }

    #[test]
    fn first_in_chain_answers_its_own_result_in_the_config_version() {
        let config = json!({"cniVersion": "0.3.1"});
        assert_eq!(prev_result(&config, "0.3.1").ok(), Some(None));
        let result = chain(None, &own("0.3.1"), "0.3.1");
        assert_eq!(result["ips"][0]["version"], "4");
        assert_eq!(result["ips"][0]["interface"], 2);
        assert_eq!(result["interfaces"], own("0.3.1")["interfaces"]);
        let result = chain(None, &own("1.1.0"), "1.1.0");
        assert!(result["ips"][0].get("version").is_none());
    }

    #[test]
    fn empty_prev_result_passes_through() {
        // e.g. a plugin that created nothing (a meta plugin run first)
        let config = json!({"cniVersion": "1.0.0", "prevResult": {"cniVersion": "1.0.0"}});
        let prev = prev_result(&config, "1.0.0").unwrap_or_else(|e| panic!("{e}"));
        let merged = chain(prev.as_ref(), &own("1.0.0"), "1.0.0");
        assert_eq!(merged["ips"][0]["interface"], 2);
        assert_eq!(merged["interfaces"].as_array().map(Vec::len), Some(3));
        assert_eq!(merged["dns"], own("1.0.0")["dns"]);
    }

    #[test]
    fn refuses_malformed_prev_results_naming_the_key() {
        let cases = [
            (json!("nope"), code::INVALID_NETWORK_CONFIG, "result object"),
            (
                json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.90.0.2/24"}}),
                code::INCOMPATIBLE_VERSION,
                "0.2.0",
            ),
            (
                json!({"cniVersion": "1.0.0", "interfaces": {}}),
                code::INVALID_NETWORK_CONFIG,
                "prevResult.interfaces",
            ),
            (
                json!({"cniVersion": "1.0.0", "interfaces": [{"mac": "x"}]}),
                code::INVALID_NETWORK_CONFIG,
                "prevResult.interfaces[0].name",
            ),
            (
                json!({"cniVersion": "1.0.0", "ips": [{"address": "10.90.0.2"}]}),
                code::INVALID_NETWORK_CONFIG,
                "prevResult.ips[0].address",
            ),
            (
                json!({"cniVersion": "1.0.0", "interfaces": [{"name": "a"}],
                       "ips": [{"address": "10.90.0.2/24", "interface": 1}]}),
                code::INVALID_NETWORK_CONFIG,
                "prevResult.ips[0].interface",
            ),
            (
                json!({"cniVersion": "1.0.0", "routes": [{"gw": "10.90.0.1"}]}),
                code::INVALID_NETWORK_CONFIG,
                "prevResult.routes[0].dst",
            ),
            (
                json!({"cniVersion": "1.0.0", "dns": []}),
                code::INVALID_NETWORK_CONFIG,
                "prevResult.dns",
            ),
        ];
        for (prev, want, needle) in cases {
            let config = json!({"cniVersion": "1.0.0", "prevResult": prev});
            let err = prev_result(&config, "1.0.0")
                .err()
                .unwrap_or_else(|| panic!("accepted: {needle}"));
            assert_eq!(err.code, want, "{err:?}");
            assert!(err.msg.contains(needle), "{needle}: {err:?}");
            assert_eq!(err.cni_version, "1.0.0");
        }
    }

    #[test]
    fn finds_its_own_ips_in_a_chained_result() {
        let merged = chain(Some(&prev("1.0.0")), &own("1.0.0"), "1.0.0");
        let ours = ips_of(&merged, "eth0", "/run/netns/p");
        assert_eq!(ours.len(), 1);
        assert_eq!(ours[0]["address"], "10.90.0.2/16");
        assert_eq!(ips_of(&merged, "net1", "/run/netns/p").len(), 2);
        assert!(ips_of(&merged, "eth1", "/run/netns/p").is_empty());
        let bare = json!({"ips": [{"address": "10.90.0.2/16"}]});
        assert_eq!(ips_of(&bare, "eth0", "/run/netns/p").len(), 1);
    }
}
