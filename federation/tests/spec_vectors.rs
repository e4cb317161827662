//! The signing test vectors of the spec's appendices, reproduced byte for byte.

use base64::Engine;
use hearth_federation::{pdu, ServerSigningKey};
use ruma::{CanonicalJsonObject, CanonicalJsonValue, RoomVersionId};
use serde_json::json;

fn spec_key() -> ServerSigningKey {
    // The spec's seed has non-zero trailing bits, which strict decoders refuse.
    let lenient = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let seed = lenient
        .decode("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1")
        .unwrap();
    ServerSigningKey::from_seed(&seed.try_into().unwrap(), "1").unwrap()
}

fn object(value: serde_json::Value) -> CanonicalJsonObject {
    match CanonicalJsonValue::try_from(value).unwrap() {
        CanonicalJsonValue::Object(o) => o,
        _ => panic!("not an object"),
    }
}

fn signature(object: &CanonicalJsonObject) -> String {
    let v = serde_json::to_value(object).unwrap();
    v["signatures"]["domain"]["ed25519:1"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn signing_an_empty_object() {
    let mut o = object(json!({}));
    spec_key().sign_json("domain", &mut o).unwrap();
    assert_eq!(
        signature(&o),
        "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"
    );
}

#[test]
fn signing_an_object_with_data() {
    let mut o = object(json!({ "one": 1, "two": "Two" }));
    spec_key().sign_json("domain", &mut o).unwrap();
    assert_eq!(
        signature(&o),
        "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"
    );
}

#[test]
fn signing_a_minimal_event() {
    let mut o = object(json!({
        "room_id": "!x:domain",
        "sender": "@a:domain",
        "origin": "domain",
        "origin_server_ts": 1000000,
        "signatures": {},
        "hashes": {},
        "type": "X",
        "content": {},
        "prev_events": [],
        "auth_events": [],
        "depth": 3,
        "unsigned": { "age_ts": 1000000 }
    }));
    let rules = pdu::rules(&RoomVersionId::V1).unwrap();
    pdu::hash_and_sign("domain".try_into().unwrap(), &spec_key(), &mut o, &rules).unwrap();
    let v = serde_json::to_value(&o).unwrap();
    assert_eq!(
        v["hashes"]["sha256"],
        "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"
    );
    assert_eq!(
        signature(&o),
        "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg"
    );
}

#[test]
fn signing_an_event_with_redactable_content() {
    let mut o = object(json!({
        "content": { "body": "Here is the message content" },
        "event_id": "$0:domain",
        "origin": "domain",
        "origin_server_ts": 1000000,
        "type": "m.room.message",
        "room_id": "!r:domain",
        "sender": "@u:domain",
        "signatures": {},
        "unsigned": { "age_ts": 1000000 }
    }));
    let rules = pdu::rules(&RoomVersionId::V1).unwrap();
    pdu::hash_and_sign("domain".try_into().unwrap(), &spec_key(), &mut o, &rules).unwrap();
    let v = serde_json::to_value(&o).unwrap();
    assert_eq!(
        v["hashes"]["sha256"],
        "onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g"
    );
    assert_eq!(
        signature(&o),
        "Wm+VzmOUOz08Ds+0NTWb1d4CZrVsJSikkeRxh6aCcUwu6pNC78FunoD7KNWzqFn241eYHYMGCA5McEiVPdhzBA"
    );
}

#[test]
fn generated_keys_round_trip_through_der() {
    let key = ServerSigningKey::generate("abc").unwrap();
    let again = ServerSigningKey::from_der(key.der(), "abc").unwrap();
    assert_eq!(key.public_key_base64(), again.public_key_base64());
    assert_eq!(again.key_id(), "ed25519:abc");
}
