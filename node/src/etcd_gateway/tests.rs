//! The gateway client's pure parts (no etcd here: tests/etcd_mirror.rs runs a real one).

use super::*;

#[test]
fn prefix_ends_like_etcd() {
    assert_eq!(prefix_end(b"/evpn/"), b"/evpn0".to_vec());
    assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
    assert_eq!(prefix_end(b"\xff"), vec![0]);
}

#[test]
fn answers_decode_with_string_integers_and_base64() {
    let answer: RangeAnswer = serde_json::from_str(
        r#"{"header":{"revision":"7"},"kvs":[{"key":"L2V2cG4vYQ==","value":"b2s=","version":"1"}],"count":"1"}"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(answer.count, 1);
    assert_eq!(answer.kvs[0].key_str(), "/evpn/a");
    assert_eq!(answer.kvs[0].value_str(), "ok");
    // proto3 leaves out zero values: an empty range is `{}` apart from the header.
    let empty: RangeAnswer =
        serde_json::from_str(r#"{"header":{}}"#).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(empty.count, 0);
    assert!(empty.kvs.is_empty());
}
