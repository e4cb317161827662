//! Server-side key backups: backup versions and the session keys stored in them.

use std::collections::BTreeMap;

use axum::{extract::State, Router};
use ruma::{
    api::client::backup::{
        add_backup_keys, add_backup_keys_for_room, add_backup_keys_for_session,
        create_backup_version, delete_backup_keys, delete_backup_keys_for_room,
        delete_backup_keys_for_session, delete_backup_version, get_backup_info, get_backup_keys,
        get_backup_keys_for_room, get_backup_keys_for_session, get_latest_backup_info,
        update_backup_version, KeyBackupData, RoomKeyBackup,
    },
    serde::Raw,
    OwnedRoomId, RoomId, UInt,
};
use serde_json::{json, Value as JsonValue};

use crate::{
    api::{ruma::Ruma, AppState, RouterExt},
    error::{Error, Result},
    service::key_backup::{KeyData, SessionKey, VersionInfo},
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .ruma(create_version)
        .ruma(latest_version)
        .ruma(get_version)
        .ruma(update_version)
        .ruma(delete_version)
        .ruma(put_keys)
        .ruma(put_room_keys)
        .ruma(put_session_key)
        .ruma(get_keys)
        .ruma(get_room_keys)
        .ruma(get_session_key)
        .ruma(delete_keys)
        .ruma(delete_room_keys)
        .ruma(delete_session_key)
}

const MEGOLM_V1: &str = "m.megolm_backup.v1.curve25519-aes-sha2";

/// The `algorithm` and `auth_data` of a version body. ruma keeps the body raw, so the shape is
/// checked here: 400 M_BAD_JSON unless both are present and well-formed.
fn algorithm_and_auth_data(body: &JsonValue) -> Result<(String, JsonValue)> {
    let algorithm = body
        .get("algorithm")
        .and_then(JsonValue::as_str)
        .ok_or_else(|| Error::bad_json("algorithm must be a string"))?;
    let auth_data = body
        .get("auth_data")
        .filter(|a| a.is_object())
        .ok_or_else(|| Error::bad_json("auth_data must be an object"))?;
    // Other algorithms' auth_data is opaque to the server; this one's shape the spec defines.
    if algorithm == MEGOLM_V1 {
        if !auth_data
            .get("public_key")
            .is_some_and(JsonValue::is_string)
        {
            return Err(Error::bad_json("auth_data.public_key must be a string"));
        }
        if auth_data.get("signatures").is_some_and(|s| !s.is_object()) {
            return Err(Error::bad_json("auth_data.signatures must be an object"));
        }
    }
    Ok((algorithm.to_owned(), auth_data.clone()))
}

fn json<T>(raw: &Raw<T>) -> Result<JsonValue> {
    serde_json::from_str(raw.json().get()).map_err(|e| Error::bad_json(e.to_string()))
}

fn raw<T>(value: &JsonValue) -> Result<Raw<T>> {
    Ok(Raw::from_json(
        serde_json::value::to_raw_value(value).map_err(Error::internal)?,
    ))
}

fn count(n: u64) -> UInt {
    UInt::new_saturating(n)
}

/// Version info as both GET endpoints answer it.
fn info_parts(
    info: VersionInfo,
) -> Result<(
    Raw<ruma::api::client::backup::BackupAlgorithm>,
    UInt,
    String,
    String,
)> {
    let algorithm = raw(&json!({ "algorithm": info.algorithm, "auth_data": info.auth_data }))?;
    Ok((algorithm, count(info.count), info.etag, info.version))
}

async fn create_version(
    State(services): State<AppState>,
    req: Ruma<create_backup_version::v3::Request>,
) -> Result<create_backup_version::v3::Response> {
    let session = req.session()?;
    let (algorithm, auth_data) = algorithm_and_auth_data(&json(&req.body.algorithm)?)?;
    let version = services
        .key_backup
        .create_version(session.user, &algorithm, &auth_data)
        .await?;
    Ok(create_backup_version::v3::Response::new(version))
}

async fn latest_version(
    State(services): State<AppState>,
    req: Ruma<get_latest_backup_info::v3::Request>,
) -> Result<get_latest_backup_info::v3::Response> {
    let session = req.session()?;
    let info = services
        .key_backup
        .latest_version(session.user)?
        .ok_or_else(|| Error::not_found("No current backup version"))?;
    let (algorithm, count, etag, version) = info_parts(info)?;
    Ok(get_latest_backup_info::v3::Response::new(
        algorithm, count, etag, version,
    ))
}

async fn get_version(
    State(services): State<AppState>,
    req: Ruma<get_backup_info::v3::Request>,
) -> Result<get_backup_info::v3::Response> {
    let session = req.session()?;
    let info = services
        .key_backup
        .version(session.user, &req.body.version)?
        .ok_or_else(|| Error::not_found("Unknown backup version"))?;
    let (algorithm, count, etag, version) = info_parts(info)?;
    Ok(get_backup_info::v3::Response::new(
        algorithm, count, etag, version,
    ))
}

async fn update_version(
    State(services): State<AppState>,
    req: Ruma<update_backup_version::v3::Request>,
) -> Result<update_backup_version::v3::Response> {
    let session = req.session()?;
    let body = json(&req.body.algorithm)?;
    let (algorithm, auth_data) = algorithm_and_auth_data(&body)?;
    match body.get("version") {
        None => {}
        Some(JsonValue::String(v)) if *v == req.body.version => {}
        Some(_) => {
            return Err(Error::invalid_param(
                "The version in the body does not match the one in the path",
            ))
        }
    }
    services
        .key_backup
        .update_version(session.user, &req.body.version, &algorithm, &auth_data)
        .await?;
    Ok(update_backup_version::v3::Response::new())
}

async fn delete_version(
    State(services): State<AppState>,
    req: Ruma<delete_backup_version::v3::Request>,
) -> Result<delete_backup_version::v3::Response> {
    let session = req.session()?;
    services
        .key_backup
        .delete_version(session.user, &req.body.version)
        .await?;
    Ok(delete_backup_version::v3::Response::new())
}

/// One uploaded key, checked; nothing is stored unless every key of a request is valid.
fn session_key(
    room_id: &RoomId,
    session_id: &str,
    data: &Raw<KeyBackupData>,
) -> Result<SessionKey> {
    if session_id.is_empty() {
        return Err(Error::invalid_param("Session IDs cannot be empty"));
    }
    Ok(SessionKey {
        room_id: room_id.to_string(),
        session_id: session_id.to_owned(),
        data: KeyData::from_json(json(data)?)?,
    })
}

fn room_keys<'a>(
    room_id: &'a RoomId,
    sessions: &'a BTreeMap<String, Raw<KeyBackupData>>,
) -> impl Iterator<Item = Result<SessionKey>> + 'a {
    sessions
        .iter()
        .map(move |(session_id, data)| session_key(room_id, session_id, data))
}

async fn put_keys(
    State(services): State<AppState>,
    req: Ruma<add_backup_keys::v3::Request>,
) -> Result<add_backup_keys::v3::Response> {
    let session = req.session()?;
    let keys = req
        .body
        .rooms
        .iter()
        .flat_map(|(room_id, backup)| room_keys(room_id, &backup.sessions))
        .collect::<Result<Vec<_>>>()?;
    let (etag, n) = services
        .key_backup
        .add_keys(session.user, &req.body.version, keys)
        .await?;
    Ok(add_backup_keys::v3::Response::new(etag, count(n)))
}

async fn put_room_keys(
    State(services): State<AppState>,
    req: Ruma<add_backup_keys_for_room::v3::Request>,
) -> Result<add_backup_keys_for_room::v3::Response> {
    let session = req.session()?;
    let keys = room_keys(&req.body.room_id, &req.body.sessions).collect::<Result<Vec<_>>>()?;
    let (etag, n) = services
        .key_backup
        .add_keys(session.user, &req.body.version, keys)
        .await?;
    Ok(add_backup_keys_for_room::v3::Response::new(etag, count(n)))
}

async fn put_session_key(
    State(services): State<AppState>,
    req: Ruma<add_backup_keys_for_session::v3::Request>,
) -> Result<add_backup_keys_for_session::v3::Response> {
    let session = req.session()?;
    let key = session_key(
        &req.body.room_id,
        &req.body.session_id,
        &req.body.session_data,
    )?;
    let (etag, n) = services
        .key_backup
        .add_keys(session.user, &req.body.version, vec![key])
        .await?;
    Ok(add_backup_keys_for_session::v3::Response::new(
        etag,
        count(n),
    ))
}

/// Stored keys grouped by room, as the GET endpoints answer them.
fn sessions_by_room(
    keys: Vec<SessionKey>,
) -> Result<BTreeMap<OwnedRoomId, BTreeMap<String, Raw<KeyBackupData>>>> {
    let mut rooms: BTreeMap<OwnedRoomId, BTreeMap<String, Raw<KeyBackupData>>> = BTreeMap::new();
    for k in keys {
        let room_id = OwnedRoomId::try_from(k.room_id)
            .map_err(|e| Error::internal(format!("stored backup room ID: {e}")))?;
        rooms
            .entry(room_id)
            .or_default()
            .insert(k.session_id, raw(&k.data.json)?);
    }
    Ok(rooms)
}

async fn get_keys(
    State(services): State<AppState>,
    req: Ruma<get_backup_keys::v3::Request>,
) -> Result<get_backup_keys::v3::Response> {
    let session = req.session()?;
    let keys = services
        .key_backup
        .get_keys(session.user, &req.body.version, None, None)?;
    let rooms = sessions_by_room(keys)?
        .into_iter()
        .map(|(room_id, sessions)| (room_id, RoomKeyBackup::new(sessions)))
        .collect();
    Ok(get_backup_keys::v3::Response::new(rooms))
}

/// A room without keys answers an empty `sessions` object, as the spec says (not 404).
async fn get_room_keys(
    State(services): State<AppState>,
    req: Ruma<get_backup_keys_for_room::v3::Request>,
) -> Result<get_backup_keys_for_room::v3::Response> {
    let session = req.session()?;
    let keys = services.key_backup.get_keys(
        session.user,
        &req.body.version,
        Some(req.body.room_id.as_str()),
        None,
    )?;
    let sessions = sessions_by_room(keys)?
        .remove(&req.body.room_id)
        .unwrap_or_default();
    Ok(get_backup_keys_for_room::v3::Response::new(sessions))
}

async fn get_session_key(
    State(services): State<AppState>,
    req: Ruma<get_backup_keys_for_session::v3::Request>,
) -> Result<get_backup_keys_for_session::v3::Response> {
    let session = req.session()?;
    let key = services
        .key_backup
        .get_keys(
            session.user,
            &req.body.version,
            Some(req.body.room_id.as_str()),
            Some(&req.body.session_id),
        )?
        .pop()
        .ok_or_else(|| Error::not_found("No key for that session in this backup"))?;
    Ok(get_backup_keys_for_session::v3::Response::new(raw(&key
        .data
        .json)?))
}

async fn delete_keys(
    State(services): State<AppState>,
    req: Ruma<delete_backup_keys::v3::Request>,
) -> Result<delete_backup_keys::v3::Response> {
    let session = req.session()?;
    let (etag, n) = services
        .key_backup
        .delete_keys(session.user, &req.body.version, None, None)
        .await?;
    Ok(delete_backup_keys::v3::Response::new(etag, count(n)))
}

async fn delete_room_keys(
    State(services): State<AppState>,
    req: Ruma<delete_backup_keys_for_room::v3::Request>,
) -> Result<delete_backup_keys_for_room::v3::Response> {
    let session = req.session()?;
    let (etag, n) = services
        .key_backup
        .delete_keys(
            session.user,
            &req.body.version,
            Some(req.body.room_id.as_str()),
            None,
        )
        .await?;
    Ok(delete_backup_keys_for_room::v3::Response::new(
        etag,
        count(n),
    ))
}

async fn delete_session_key(
    State(services): State<AppState>,
    req: Ruma<delete_backup_keys_for_session::v3::Request>,
) -> Result<delete_backup_keys_for_session::v3::Response> {
    let session = req.session()?;
    let (etag, n) = services
        .key_backup
        .delete_keys(
            session.user,
            &req.body.version,
            Some(req.body.room_id.as_str()),
            Some(&req.body.session_id),
        )
        .await?;
    Ok(delete_backup_keys_for_session::v3::Response::new(
        etag,
        count(n),
    ))
}
