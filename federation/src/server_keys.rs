//! Server keys as /_matrix/key/v2/server publishes them: building our signed response, and
//! checking one fetched from a peer (its server name, its self-signature, its validity).

use std::collections::BTreeMap;

use ruma::{
    serde::Base64,
    signatures::{verify_json, PublicKeyMap},
    CanonicalJsonObject, CanonicalJsonValue, ServerName,
};
use serde::{Deserialize, Serialize};

use crate::{keys::KeyError, ServerSigningKey};

/// A server's published keys, as cached by its peers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerKeys {
    /// Current keys: key ID → unpadded base64 public key.
    pub verify_keys: BTreeMap<String, String>,
    /// Retired keys: key ID → (public key, when it expired).
    pub old_verify_keys: BTreeMap<String, (String, u64)>,
    /// Until when the current keys may be used without asking again.
    pub valid_until_ts: u64,
}

impl ServerKeys {
    /// The public key of a key ID, current or retired, as verification wants it.
    pub fn public_key(&self, key_id: &str) -> Option<&str> {
        self.verify_keys
            .get(key_id)
            .map(String::as_str)
            .or_else(|| self.old_verify_keys.get(key_id).map(|(k, _)| k.as_str()))
    }

    /// All keys of `server` in the shape ruma's verification takes.
    pub fn key_map(&self, server: &ServerName) -> PublicKeyMap {
        let mut set = BTreeMap::new();
        for (id, key) in &self.verify_keys {
            if let Ok(k) = Base64::parse(key) {
                set.insert(id.clone(), k);
            }
        }
        for (id, (key, _)) in &self.old_verify_keys {
            if let Ok(k) = Base64::parse(key) {
                set.insert(id.clone(), k);
            }
        }
        BTreeMap::from([(server.to_string(), set)])
    }
}

/// Our /_matrix/key/v2/server response, signed by `key`.
pub fn key_response(
    key: &ServerSigningKey,
    server_name: &ServerName,
    valid_until_ts: u64,
) -> Result<CanonicalJsonObject, KeyError> {
    let mut verify_keys = CanonicalJsonObject::new();
    verify_keys.insert(
        key.key_id(),
        CanonicalJsonValue::Object(CanonicalJsonObject::from([(
            "key".to_owned(),
            CanonicalJsonValue::String(key.public_key_base64()),
        )])),
    );
    let mut object = CanonicalJsonObject::from([
        (
            "server_name".to_owned(),
            CanonicalJsonValue::String(server_name.to_string()),
        ),
        (
            "valid_until_ts".to_owned(),
            CanonicalJsonValue::Integer(valid_until_ts.try_into().unwrap_or(ruma::Int::MAX)),
        ),
        (
            "verify_keys".to_owned(),
            CanonicalJsonValue::Object(verify_keys),
        ),
        (
            "old_verify_keys".to_owned(),
            CanonicalJsonValue::Object(CanonicalJsonObject::new()),
        ),
    ]);
    key.sign_json(server_name.as_str(), &mut object)?;
    Ok(object)
}

/// Checks a key response claimed to be `server`'s: it names that server, and every current key
/// signed it (so it really comes from the holder of those keys).
pub fn verify_key_response(
    object: &CanonicalJsonObject,
    server: &ServerName,
) -> Result<ServerKeys, KeyError> {
    let bad = |why: &str| KeyError::Invalid(format!("key response of {server}: {why}"));
    match object.get("server_name") {
        Some(CanonicalJsonValue::String(s)) if s == server.as_str() => {}
        _ => return Err(bad("wrong or missing server_name")),
    }
    let valid_until_ts = match object.get("valid_until_ts") {
        Some(CanonicalJsonValue::Integer(i)) => u64::try_from(i64::from(*i)).unwrap_or(0),
        _ => return Err(bad("missing valid_until_ts")),
    };
    let mut keys = ServerKeys {
        valid_until_ts,
        ..Default::default()
    };
    let Some(CanonicalJsonValue::Object(verify)) = object.get("verify_keys") else {
        return Err(bad("missing verify_keys"));
    };
    for (id, v) in verify {
        if let CanonicalJsonValue::Object(o) = v {
            if let Some(CanonicalJsonValue::String(k)) = o.get("key") {
                keys.verify_keys.insert(id.clone(), k.clone());
            }
        }
    }
    if keys.verify_keys.is_empty() {
        return Err(bad("no verify keys"));
    }
    if let Some(CanonicalJsonValue::Object(old)) = object.get("old_verify_keys") {
        for (id, v) in old {
            if let CanonicalJsonValue::Object(o) = v {
                if let (
                    Some(CanonicalJsonValue::String(k)),
                    Some(CanonicalJsonValue::Integer(ts)),
                ) = (o.get("key"), o.get("expired_ts"))
                {
                    let ts = u64::try_from(i64::from(*ts)).unwrap_or(0);
                    keys.old_verify_keys.insert(id.clone(), (k.clone(), ts));
                }
            }
        }
    }
    // Every current key must have signed the response.
    let mut current = ServerKeys {
        verify_keys: keys.verify_keys.clone(),
        ..Default::default()
    };
    current.valid_until_ts = keys.valid_until_ts;
    let map = current.key_map(server);
    let signed_by: Vec<String> = match object.get("signatures") {
        Some(CanonicalJsonValue::Object(s)) => match s.get(server.as_str()) {
            Some(CanonicalJsonValue::Object(by)) => by.keys().cloned().collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    if keys.verify_keys.keys().any(|id| !signed_by.contains(id)) {
        return Err(bad("not signed by all of its keys"));
    }
    // Notaries add their own signatures; only the server's are checked here.
    let mut own = object.clone();
    if let Some(CanonicalJsonValue::Object(sigs)) = own.get_mut("signatures") {
        sigs.retain(|entity, _| entity == server.as_str());
    }
    verify_json(&map, &own).map_err(|e| bad(&e.to_string()))?;
    Ok(keys)
}
