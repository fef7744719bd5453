//! The JSON shapes' wire form.

use super::ErrorCode;

/// The wire name (serde) and `as_str` agree, and a code from a newer server decodes.
#[test]
fn error_codes_round_trip() {
    for code in [
        ErrorCode::InvalidNodeName,
        ErrorCode::BodyNotAllowed,
        ErrorCode::HoldsOtherLease,
        ErrorCode::RateLimited,
        ErrorCode::NoQuorum,
        ErrorCode::Timeout,
    ] {
        let json = serde_json::to_string(&code).unwrap_or_default();
        assert_eq!(json, format!("\"{}\"", code.as_str()));
    }
    let newer: ErrorCode = serde_json::from_str("\"some_new_code\"").unwrap_or(ErrorCode::Internal);
    assert_eq!(newer, ErrorCode::Unknown);
}
