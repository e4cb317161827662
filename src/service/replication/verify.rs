//! Step one of a received event: its signatures (the origin's and the sender's server's),
//! its content hash (a mismatch is stored redacted, as the spec says) and its event ID.

use ruma::{
    room_version_rules::RoomVersionRules,
    signatures::{required_server_signatures_to_verify_event, verify_event, Verified},
    state_res, CanonicalJsonObject, CanonicalJsonValue, OwnedEventId,
};

use super::{bad_event, Checked, Service};
use crate::{error::Result, service::rooms::pdu::Pdu};

impl Service {
    /// Checks a received PDU's signatures (fetching the signers' keys) and content hash, and
    /// derives its event ID. A hash mismatch gives the redacted event, as the spec asks.
    pub async fn verify(
        &self,
        rules: &RoomVersionRules,
        mut object: CanonicalJsonObject,
    ) -> Result<Checked> {
        object.remove("unsigned");
        state_res::check_pdu_format(&object, &rules.event_format).map_err(bad_event)?;
        let servers = required_server_signatures_to_verify_event(&object, &rules.signatures)
            .map_err(bad_event)?;
        let mut keys = ruma::signatures::PublicKeyMap::new();
        for server in servers {
            let key_ids: Vec<String> = match object.get("signatures") {
                Some(CanonicalJsonValue::Object(sigs)) => match sigs.get(server.as_str()) {
                    Some(CanonicalJsonValue::Object(k)) => k.keys().cloned().collect(),
                    _ => Vec::new(),
                },
                _ => Vec::new(),
            };
            let Some(key_id) = key_ids.first() else {
                return Err(bad_event(format!("no signature of {server}")));
            };
            let (server_keys, _) = self
                .federation
                .server_keys(&server, Some(key_id))
                .await
                .map_err(|e| bad_event(format!("no keys of {server}: {e}")))?;
            keys.extend(server_keys.key_map(&server));
        }
        let verified = verify_event(&keys, &object, rules)
            .map_err(|e| bad_event(format!("bad signature: {e}")))?;
        let event_id = match hearth_federation::pdu::event_id(&object, rules).map_err(bad_event)? {
            Some(id) => id,
            None => match object.get("event_id") {
                Some(CanonicalJsonValue::String(s)) => {
                    OwnedEventId::try_from(s.as_str()).map_err(bad_event)?
                }
                _ => return Err(bad_event("no event_id")),
            },
        };
        if verified == Verified::Signatures {
            tracing::info!(%event_id, "content hash mismatch: storing the redacted event");
            object = hearth_federation::pdu::redacted(object, &rules.redaction, None)
                .map_err(bad_event)?;
        }
        let pdu = Pdu::from_canonical(event_id.clone(), &object).map_err(bad_event)?;
        Ok(Checked {
            event_id,
            object,
            pdu,
        })
    }
}
