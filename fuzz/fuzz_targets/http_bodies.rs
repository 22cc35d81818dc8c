//! The HTTP/JSON API's body parsing (`src/api/http.rs`): the produce body
//! `{"record":{"value":"<base64>"}}`, the consume body `{"offset":N}` (N a
//! number or a string) and the `{offset}` of `GET /v1/records/{offset}`.
//!
//! Every input goes through all three parsers. None may panic; an error is
//! a non-empty message (the 400 reply), and whatever is accepted survives a
//! round trip through the canonical form of its body.
#![no_main]

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use libfuzzer_sys::fuzz_target;
use sidelog::api::http::{parse_consume_body, parse_offset_path, parse_produce_body};

fuzz_target!(|data: &[u8]| {
    match parse_produce_body(data) {
        Ok(value) => {
            // The value's canonical body parses back to the same bytes. (An
            // accepted body need not be valid JSON throughout: serde_json
            // does not check UTF-8 inside the fields it ignores.)
            let body = serde_json::json!({ "record": { "value": B64.encode(&value) } }).to_string();
            assert_eq!(parse_produce_body(body.as_bytes()).as_deref(), Ok(&value[..]));
        }
        Err(message) => assert!(!message.is_empty()),
    }

    match parse_consume_body(data) {
        Ok(offset) => {
            for body in [
                format!("{{\"offset\":{offset}}}"),
                format!("{{\"offset\":\"{offset}\"}}"),
            ] {
                assert_eq!(parse_consume_body(body.as_bytes()), Ok(offset), "{body}");
            }
        }
        Err(message) => assert!(!message.is_empty()),
    }

    let path = String::from_utf8_lossy(data);
    match parse_offset_path(&path) {
        Ok(offset) => {
            assert_eq!(path.parse::<u64>(), Ok(offset));
            assert_eq!(parse_offset_path(&offset.to_string()), Ok(offset));
        }
        Err(message) => {
            assert!(path.parse::<u64>().is_err());
            assert!(!message.is_empty());
        }
    }
});
