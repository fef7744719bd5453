//! Unit tests of [`super`] (a sibling file keeps pool.rs to the model itself).

use super::*;

fn pool(cidr: &str, bits: u8) -> Pool {
    match Pool::parse(cidr, bits) {
        Ok(pool) => pool,
        Err(e) => panic!("{cidr} / {bits}: {e}"),
    }
}

#[test]
fn block_table() {
    // (cidr, nodeBits, index, subnet, gateway, rangeStart, rangeEnd, blocks, pods per block)
    let cases = [
        (
            "10.244.0.0/16",
            8,
            0,
            "10.244.0.0/24",
            "10.244.0.1",
            "10.244.0.2",
            "10.244.0.254",
            256,
            253,
        ),
        (
            "10.244.0.0/16",
            8,
            3,
            "10.244.3.0/24",
            "10.244.3.1",
            "10.244.3.2",
            "10.244.3.254",
            256,
            253,
        ),
        (
            "10.244.0.0/16",
            8,
            255,
            "10.244.255.0/24",
            "10.244.255.1",
            "10.244.255.2",
            "10.244.255.254",
            256,
            253,
        ),
        // The original shipped config carries host bits: they are masked.
        (
            "10.244.0.16/16",
            8,
            1,
            "10.244.1.0/24",
            "10.244.1.1",
            "10.244.1.2",
            "10.244.1.254",
            256,
            253,
        ),
        // nodeBits 0: the whole CIDR is one block.
        (
            "10.244.0.0/16",
            0,
            0,
            "10.244.0.0/16",
            "10.244.0.1",
            "10.244.0.2",
            "10.244.255.254",
            1,
            65533,
        ),
        // /30 blocks: one pod address each.
        (
            "192.168.0.0/24",
            6,
            63,
            "192.168.0.252/30",
            "192.168.0.253",
            "192.168.0.254",
            "192.168.0.254",
            64,
            1,
        ),
        // /8 with 16 bits: 65,536 blocks of /24.
        (
            "10.0.0.0/8",
            16,
            65535,
            "10.255.255.0/24",
            "10.255.255.1",
            "10.255.255.2",
            "10.255.255.254",
            65536,
            253,
        ),
        (
            "10.0.0.0/8",
            12,
            999,
            "10.62.112.0/20",
            "10.62.112.1",
            "10.62.112.2",
            "10.62.127.254",
            4096,
            4093,
        ),
    ];
    check_rows(&cases, Family::V4);
}

/// (cidr, nodeBits, index, subnet, gateway, rangeStart, rangeEnd, blocks, pods per block)
type Row = (
    &'static str,
    u8,
    u32,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    u64,
    u64,
);

fn check_rows(rows: &[Row], family: Family) {
    for &(cidr, bits, index, subnet, gw, start, end, blocks, pods) in rows {
        let p = pool(cidr, bits);
        let b = p
            .block(index)
            .unwrap_or_else(|| panic!("{cidr}/{bits} block {index}"));
        assert_eq!(b.family(), family, "{cidr}");
        assert_eq!(p.families(), vec![family], "{cidr}");
        assert_eq!(b.subnet.to_string(), subnet, "{cidr} {bits} {index}");
        assert_eq!(b.gateway.to_string(), gw, "{cidr} {bits} {index}");
        assert_eq!(b.range_start.to_string(), start, "{cidr} {bits} {index}");
        assert_eq!(b.range_end.to_string(), end, "{cidr} {bits} {index}");
        assert_eq!(p.block_count(), blocks, "{cidr} {bits}");
        assert_eq!(p.pods_per_block(), pods, "{cidr} {bits}");
        assert_eq!(p.index_of(b.subnet), Some(index));
        assert!(p.block(blocks as u32).is_none() || blocks > u64::from(u32::MAX));
    }
}

#[test]
fn masks_host_bits() {
    assert_eq!(
        pool("10.244.0.16/16", 8).pod_cidr().to_string(),
        "10.244.0.0/16"
    );
}

#[test]
fn rejects_bad_input() {
    assert!(matches!(
        Pool::parse("10.244.0.0/16", 15),
        Err(PoolError::TooFewHostBits { host_bits: 1, .. })
    ));
    assert!(matches!(
        Pool::parse("10.244.0.0/16", 17),
        Err(PoolError::TooFewHostBits { host_bits: -1, .. })
    ));
    assert!(matches!(
        Pool::parse("10.0.0.1/32", 0),
        Err(PoolError::TooFewHostBits { .. })
    ));
}

#[test]
fn node_bits_from_string_or_number() {
    assert_eq!(Pool::parse_node_bits("8"), Ok(8));
    assert_eq!(Pool::parse_node_bits(" 16 "), Ok(16));
    assert!(Pool::parse_node_bits("eight").is_err());
    assert!(Pool::parse_node_bits("31").is_err());
    assert!(Pool::parse_node_bits("-1").is_err());
}

#[test]
fn index_of_rejects_foreign_subnets() {
    let p = pool("10.244.0.0/16", 8);
    let foreign: IpNetwork = "10.245.0.0/24".parse().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.index_of(foreign), None);
    let wrong_size: IpNetwork = "10.244.0.0/25".parse().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.index_of(wrong_size), None);
}

#[test]
fn ipv6_block_table() {
    // (cidr, nodeBits, index, subnet, gateway, rangeStart, rangeEnd, blocks, pods per block)
    let cases = [
        // /48 with 16 bits: one /64 per node.
        (
            "fd00:10::/48",
            16,
            0,
            "fd00:10::/64",
            "fd00:10::1",
            "fd00:10::2",
            "fd00:10::ffff:ffff:ffff:fffe",
            65536,
            u64::MAX - 2,
        ),
        (
            "fd00:10::/48",
            16,
            65535,
            "fd00:10:0:ffff::/64",
            "fd00:10:0:ffff::1",
            "fd00:10:0:ffff::2",
            "fd00:10:0:ffff:ffff:ffff:ffff:fffe",
            65536,
            u64::MAX - 2,
        ),
        // /56 with 8 bits: one /64 per node.
        (
            "fd00:10:244::/56",
            8,
            3,
            "fd00:10:244:3::/64",
            "fd00:10:244:3::1",
            "fd00:10:244:3::2",
            "fd00:10:244:3:ffff:ffff:ffff:fffe",
            256,
            u64::MAX - 2,
        ),
        // host bits masked, as for IPv4
        (
            "fd00:10:244:0:1::/56",
            8,
            255,
            "fd00:10:244:ff::/64",
            "fd00:10:244:ff::1",
            "fd00:10:244:ff::2",
            "fd00:10:244:ff:ffff:ffff:ffff:fffe",
            256,
            u64::MAX - 2,
        ),
        // the /120 edge: 256 addresses a block, like an IPv4 /24
        (
            "fd00:10:244::/112",
            8,
            2,
            "fd00:10:244::200/120",
            "fd00:10:244::201",
            "fd00:10:244::202",
            "fd00:10:244::2fe",
            256,
            253,
        ),
        // the smallest block: /126, one pod
        (
            "fd00::/120",
            6,
            63,
            "fd00::fc/126",
            "fd00::fd",
            "fd00::fe",
            "fd00::fe",
            64,
            1,
        ),
        // a /64 pool with 30 node bits: /94 blocks of 2^34 addresses
        (
            "fd00:1:2:3::/64",
            30,
            1,
            "fd00:1:2:3:0:4::/94",
            "fd00:1:2:3:0:4:0:1",
            "fd00:1:2:3:0:4:0:2",
            "fd00:1:2:3:0:7:ffff:fffe",
            1 << 30,
            (1 << 34) - 3,
        ),
    ];
    check_rows(&cases, Family::V6);
}

#[test]
fn ipv6_refusals_carry_the_numbers() {
    // /127 blocks: one host bit
    let err = Pool::parse("fd00::/119", 8).map(|_| ()).unwrap_err();
    assert_eq!(
        err,
        PoolError::TooFewHostBits {
            cidr: "fd00::/119".parse().unwrap_or_else(|e| panic!("{e}")),
            node_bits: 8,
            host_bits: 1
        }
    );
    let msg = err.to_string();
    assert!(
        msg.contains("fd00::/119") && msg.contains("nodeBits 8") && msg.contains("1 host bits"),
        "{msg}"
    );
}

#[test]
fn dual_stack_pairs_blocks_by_index() {
    for text in [
        "10.244.0.0/16,fd00:10:244::/56",
        "fd00:10:244::/56, 10.244.0.0/16",
    ] {
        let p = pool(text, 8);
        assert!(p.is_dual_stack());
        assert_eq!(p.pod_cidr().to_string(), "10.244.0.0/16", "IPv4 is primary");
        assert_eq!(p.pod_cidr_list(), "10.244.0.0/16,fd00:10:244::/56");
        assert_eq!(p.family_names(), "IPv4+IPv6");
        assert_eq!(
            p.to_string(),
            "podCIDR 10.244.0.0/16,fd00:10:244::/56 nodeBits 8"
        );
        assert_eq!(Pool::parse(&p.pod_cidr_list(), 8), Ok(p), "round trip");
        let blocks = p.blocks(7);
        let subnets: Vec<String> = blocks.iter().map(|b| b.subnet.to_string()).collect();
        assert_eq!(subnets, ["10.244.7.0/24", "fd00:10:244:7::/64"]);
        assert_eq!(blocks[1].gateway.to_string(), "fd00:10:244:7::1");
        assert_eq!(p.index_of(blocks[1].subnet), Some(7));
        assert_eq!(p.index_of(blocks[0].subnet), Some(7));
        assert!(p.contains("fd00:10:244:7::9".parse().unwrap_or_else(|e| panic!("{e}"))));
        assert!(p.contains("10.244.7.9".parse().unwrap_or_else(|e| panic!("{e}"))));
        assert!(p.blocks(256).is_empty());
        // JSON: both CIDRs, and a single-family pool's JSON is what earlier versions wrote
        let json = serde_json::to_string(&p).unwrap_or_default();
        assert_eq!(
            json,
            r#"{"podCidr":"10.244.0.0/16","podCidrV6":"fd00:10:244::/56","nodeBits":8}"#
        );
    }
    let v4 = pool("10.244.0.0/16", 8);
    assert_eq!(
        serde_json::to_string(&v4).unwrap_or_default(),
        r#"{"podCidr":"10.244.0.0/16","nodeBits":8}"#
    );
    assert_eq!(v4.blocks(1).len(), 1);
}

#[test]
fn dual_stack_refusals_name_the_values() {
    let err = Pool::parse("10.244.0.0/16,10.245.0.0/16", 8)
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(
            err,
            PoolError::SameFamilyTwice {
                family: Family::V4,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("two IPv4 networks"), "{err}");
    let err = Pool::parse("fd00::/56,fd01::/56", 8)
        .map(|_| ())
        .unwrap_err();
    assert!(err.to_string().contains("two IPv6 networks"), "{err}");
    let err = Pool::parse("10.0.0.0/8,fd00::/56,fd01::/56", 8)
        .map(|_| ())
        .unwrap_err();
    assert!(err.to_string().contains("3 networks"), "{err}");
    // each family needs room for its blocks: a /24 with 8 node bits is /32 blocks
    let err = Pool::parse("10.244.0.0/24,fd00::/56", 8)
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(err, PoolError::TooFewHostBits { host_bits: 0, .. }),
        "{err}"
    );
    let err = Pool::parse("10.244.0.0/16,fd00::/121", 8)
        .map(|_| ())
        .unwrap_err();
    assert!(err.to_string().contains("fd00::/121"), "{err}");
    refused_naming("10.244.0.0/16,", 8, "10.244.0.0/16,");
}

#[test]
fn refusals_name_the_bad_value() {
    for (cidr, bits, named) in [
        ("10.244.0.0/33", 8, "10.244.0.0/33"),
        ("banana", 8, "banana"),
        ("10.244.0.0/24", 7, "nodeBits 7"),
        ("fd00::/128", 0, "0 host bits"),
        ("fd00::/129", 8, "fd00::/129"),
        ("fd00:::/64", 8, "fd00:::/64"),
    ] {
        refused_naming(cidr, bits, named);
    }
}

/// `cidr` with `bits` is refused with an error that names `named`.
fn refused_naming(cidr: &str, bits: u8, named: &str) {
    match Pool::parse(cidr, bits) {
        Ok(pool) => panic!("{cidr} nodeBits {bits} was accepted: {pool}"),
        Err(e) => assert!(e.to_string().contains(named), "{e}"),
    }
}
