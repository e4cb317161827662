//! PDUs per room version: content hashes, signatures, reference-hash event IDs, v12 room IDs and
//! redaction, all by the rules ruma keeps for each version.

use ruma::{
    canonical_json::redact,
    room_version_rules::{EventIdFormatVersion, RedactionRules, RoomVersionRules},
    signatures::{hash_and_sign_event, reference_hash},
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedRoomId, RoomVersionId, ServerName,
};

use crate::ServerSigningKey;

#[derive(Debug, thiserror::Error)]
pub enum PduError {
    #[error("unsupported room version {0}")]
    UnsupportedVersion(RoomVersionId),
    #[error("event is not valid: {0}")]
    Invalid(String),
}

/// The rules of a room version this server supports.
pub fn rules(version: &RoomVersionId) -> Result<RoomVersionRules, PduError> {
    version
        .rules()
        .ok_or_else(|| PduError::UnsupportedVersion(version.clone()))
}

/// The event ID of a PDU: random for v1/v2 (the caller generates it), the reference hash for v3+.
pub fn event_id(
    object: &CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<Option<OwnedEventId>, PduError> {
    match rules.event_id_format {
        EventIdFormatVersion::V1 => Ok(None),
        _ => {
            let hash =
                reference_hash(object, rules).map_err(|e| PduError::Invalid(e.to_string()))?;
            OwnedEventId::try_from(format!("${hash}"))
                .map(Some)
                .map_err(|e| PduError::Invalid(e.to_string()))
        }
    }
}

/// The room ID of a v12 room: `!` and the reference hash of its create event.
pub fn room_id_from_create(
    create: &CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<OwnedRoomId, PduError> {
    let hash = reference_hash(create, rules).map_err(|e| PduError::Invalid(e.to_string()))?;
    OwnedRoomId::try_from(format!("!{hash}")).map_err(|e| PduError::Invalid(e.to_string()))
}

/// Adds the content hash and this server's signature to a PDU.
pub fn hash_and_sign(
    origin: &ServerName,
    key: &ServerSigningKey,
    object: &mut CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<(), PduError> {
    hash_and_sign_event(origin.as_str(), key.pair(), object, &rules.redaction)
        .map_err(|e| PduError::Invalid(e.to_string()))
}

/// Adds this server's signature to someone else's PDU (an invite we accept for our user, a
/// restricted join we vouch for). Event signatures cover the redacted event, not the whole JSON.
pub fn countersign(
    origin: &ServerName,
    key: &ServerSigningKey,
    object: &mut CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<(), PduError> {
    ruma::signatures::sign_event(origin.as_str(), key.pair(), object, &rules.redaction)
        .map_err(|e| PduError::Invalid(e.to_string()))
}

/// The redacted form of a PDU under a room version's rules (`redacted_because` goes in unsigned).
pub fn redacted(
    object: CanonicalJsonObject,
    rules: &RedactionRules,
    redacted_because: Option<CanonicalJsonObject>,
) -> Result<CanonicalJsonObject, PduError> {
    let because = redacted_because.map(ruma::canonical_json::RedactedBecause::from_json);
    redact(object, rules, because).map_err(|e| PduError::Invalid(e.to_string()))
}

/// Reads a string field of a PDU.
pub fn str_field<'a>(object: &'a CanonicalJsonObject, field: &str) -> Option<&'a str> {
    match object.get(field) {
        Some(CanonicalJsonValue::String(s)) => Some(s),
        _ => None,
    }
}
