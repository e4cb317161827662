//! Account data (global and per room) and room tags.

use axum::{extract::State, Router};
use ruma::{
    api::client::{
        config::{
            get_global_account_data, get_room_account_data, set_global_account_data,
            set_room_account_data,
        },
        tag::{create_tag, delete_tag, get_tags},
    },
    serde::Raw,
    RoomId, UserId,
};
use serde_json::{json, Value as JsonValue};

use crate::{
    api::{ruma::Ruma, AppState, RouterExt},
    error::{Error, Result},
    service::{account_data::GLOBAL, Services},
    storage::ShortId,
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .ruma(set_global)
        .ruma(get_global)
        .ruma(set_room)
        .ruma(get_room)
        .ruma(get_tags_handler)
        .ruma(put_tag)
        .ruma(remove_tag)
}

/// Types the server manages itself; clients change them through their own endpoints.
const SERVER_MANAGED: &[&str] = &["m.fully_read", "m.push_rules"];

fn own(session_user: &UserId, user: &UserId) -> Result<()> {
    if session_user != user {
        return Err(Error::forbidden(
            "You can only access your own account data",
        ));
    }
    Ok(())
}

fn writable(kind: &str) -> Result<()> {
    if SERVER_MANAGED.contains(&kind) {
        return Err(Error::bad_json(format!(
            "{kind} is managed by the server and cannot be set here"
        ))
        .with_status(http::StatusCode::METHOD_NOT_ALLOWED));
    }
    Ok(())
}

fn object<T>(data: &Raw<T>) -> Result<JsonValue> {
    let content: JsonValue =
        serde_json::from_str(data.json().get()).map_err(|e| Error::bad_json(e.to_string()))?;
    if !content.is_object() {
        return Err(Error::bad_json(
            "Account data content must be a JSON object",
        ));
    }
    Ok(content)
}

fn to_raw<T>(content: &JsonValue) -> Result<Raw<T>> {
    Ok(Raw::from_json(
        serde_json::value::to_raw_value(content).map_err(Error::internal)?,
    ))
}

/// A room the user knows (any membership), for room account data; 403 otherwise.
fn known_room(services: &Services, user: &UserId, room_id: &RoomId) -> Result<ShortId> {
    let not_in = || Error::forbidden("You are not in this room");
    let room = services
        .rooms
        .events
        .room_short(room_id)?
        .ok_or_else(not_in)?;
    if services
        .rooms
        .membership
        .membership_of(user, room)?
        .is_none()
    {
        return Err(not_in());
    }
    Ok(room)
}

async fn set_global(
    State(services): State<AppState>,
    req: Ruma<set_global_account_data::v3::Request>,
) -> Result<set_global_account_data::v3::Response> {
    let session = req.session()?;
    own(&session.user_id, &req.body.user_id)?;
    let kind = req.body.event_type.to_string();
    writable(&kind)?;
    let content = object(&req.body.data)?;
    services
        .account_data
        .set(session.user, GLOBAL, &kind, Some(&content))
        .await?;
    Ok(set_global_account_data::v3::Response::new())
}

async fn get_global(
    State(services): State<AppState>,
    req: Ruma<get_global_account_data::v3::Request>,
) -> Result<get_global_account_data::v3::Response> {
    let session = req.session()?;
    own(&session.user_id, &req.body.user_id)?;
    let content = services
        .account_data
        .get(session.user, GLOBAL, &req.body.event_type.to_string())?
        .ok_or_else(|| Error::not_found("No account data of that type"))?;
    Ok(get_global_account_data::v3::Response::new(to_raw(
        &content,
    )?))
}

async fn set_room(
    State(services): State<AppState>,
    req: Ruma<set_room_account_data::v3::Request>,
) -> Result<set_room_account_data::v3::Response> {
    let session = req.session()?;
    own(&session.user_id, &req.body.user_id)?;
    let kind = req.body.event_type.to_string();
    writable(&kind)?;
    let room = known_room(&services, &session.user_id, &req.body.room_id)?;
    let content = object(&req.body.data)?;
    services
        .account_data
        .set(session.user, room, &kind, Some(&content))
        .await?;
    Ok(set_room_account_data::v3::Response::new())
}

async fn get_room(
    State(services): State<AppState>,
    req: Ruma<get_room_account_data::v3::Request>,
) -> Result<get_room_account_data::v3::Response> {
    let session = req.session()?;
    own(&session.user_id, &req.body.user_id)?;
    let room = known_room(&services, &session.user_id, &req.body.room_id)?;
    let content = services
        .account_data
        .get(session.user, room, &req.body.event_type.to_string())?
        .ok_or_else(|| Error::not_found("No account data of that type"))?;
    Ok(get_room_account_data::v3::Response::new(to_raw(&content)?))
}

fn tags_of(services: &Services, user: ShortId, room: ShortId) -> Result<JsonValue> {
    Ok(services
        .account_data
        .get(user, room, "m.tag")?
        .and_then(|c| c.get("tags").cloned())
        .filter(JsonValue::is_object)
        .unwrap_or_else(|| json!({})))
}

async fn get_tags_handler(
    State(services): State<AppState>,
    req: Ruma<get_tags::v3::Request>,
) -> Result<get_tags::v3::Response> {
    let session = req.session()?;
    own(&session.user_id, &req.body.user_id)?;
    let room = known_room(&services, &session.user_id, &req.body.room_id)?;
    let tags = serde_json::from_value(tags_of(&services, session.user, room)?)
        .map_err(|e| Error::internal(format!("stored tags: {e}")))?;
    Ok(get_tags::v3::Response::new(tags))
}

async fn put_tag(
    State(services): State<AppState>,
    req: Ruma<create_tag::v3::Request>,
) -> Result<create_tag::v3::Response> {
    let session = req.session()?;
    own(&session.user_id, &req.body.user_id)?;
    let room = known_room(&services, &session.user_id, &req.body.room_id)?;
    if req.body.tag.len() > 255 {
        return Err(Error::invalid_param("Tags are at most 255 bytes"));
    }
    let mut tags = tags_of(&services, session.user, room)?;
    tags[req.body.tag.as_str()] =
        serde_json::to_value(&req.body.tag_info).map_err(Error::internal)?;
    services
        .account_data
        .set(session.user, room, "m.tag", Some(&json!({ "tags": tags })))
        .await?;
    Ok(create_tag::v3::Response::new())
}

async fn remove_tag(
    State(services): State<AppState>,
    req: Ruma<delete_tag::v3::Request>,
) -> Result<delete_tag::v3::Response> {
    let session = req.session()?;
    own(&session.user_id, &req.body.user_id)?;
    let room = known_room(&services, &session.user_id, &req.body.room_id)?;
    let mut tags = tags_of(&services, session.user, room)?;
    if let Some(map) = tags.as_object_mut() {
        map.remove(&req.body.tag);
    }
    services
        .account_data
        .set(session.user, room, "m.tag", Some(&json!({ "tags": tags })))
        .await?;
    Ok(delete_tag::v3::Response::new())
}
