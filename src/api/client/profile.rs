//! Profiles: the whole profile and single fields (displayname, avatar_url, custom fields).

use axum::{extract::State, Router};
use ruma::{
    api::client::profile::{
        delete_profile_field, get_profile, get_profile_field, set_profile_field,
    },
    profile::ProfileFieldValue,
    UserId,
};

use serde_json::{Map, Value as JsonValue};

use crate::{
    api::{ruma::Ruma, AppState, RouterExt},
    error::{Error, Result},
    service::{replication::urlencode, sessions::Session, Services},
    storage::ShortId,
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .ruma(get_all)
        .ruma(get_field)
        .ruma(set_field)
        .ruma(delete_field)
}

/// The short ID of a local, existing user, or M_NOT_FOUND.
fn local_profile_owner(services: &Services, user_id: &UserId) -> Result<ShortId> {
    match services.users.get(user_id)? {
        Some((short, record)) if !record.deactivated => Ok(short),
        _ => Err(Error::not_found("Profile not found")),
    }
}

/// A user's whole profile: ours from storage, another server's user through its
/// /query/profile (not cached: a profile changes and the peer is the authority).
async fn profile_of(services: &Services, user_id: &UserId) -> Result<Map<String, JsonValue>> {
    if services.users.is_local(user_id) {
        // A bridged user not created yet is asked of its appservice first.
        services.appservice.user_exists(user_id).await?;
        let short = local_profile_owner(services, user_id)?;
        return Ok(services.profiles.all(short)?.into_iter().collect());
    }
    if !services.config.federation.enabled {
        return Err(Error::not_found(
            "Profiles of users on other servers need federation, which is off",
        ));
    }
    let server = user_id.server_name();
    let (status, body) = services
        .federation
        .request(
            server,
            http::Method::GET,
            &format!(
                "/_matrix/federation/v1/query/profile?user_id={}",
                urlencode(user_id.as_str())
            ),
            None,
        )
        .await?;
    let peer_error = |why: String| Error::upstream(format!("{server} answered {why}"));
    match status.as_u16() {
        200..=299 => {}
        404 => return Err(Error::not_found("Profile not found")),
        403 => return Err(Error::forbidden(format!("{server} refused the profile"))),
        s => return Err(peer_error(format!("{s} to the profile query"))),
    }
    let JsonValue::Object(mut fields) = body else {
        return Err(peer_error("a profile that is not a JSON object".into()));
    };
    // Synapse sends unset fields as null; for the client they are simply absent.
    fields.retain(|_, v| !v.is_null());
    Ok(fields)
}

/// Profile keys: the well-known ones, or namespaced lowercase names as the spec's grammar gives.
fn check_key_name(name: &str) -> Result<()> {
    if name.len() > 255 {
        return Err(Error::matrix(
            crate::error::custom_kind("M_KEY_TOO_LARGE"),
            "Profile keys are at most 255 bytes",
        ));
    }
    let segment_ok = |s: &str| {
        let mut chars = s.chars();
        chars.next().is_some_and(|c| c.is_ascii_lowercase())
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    let parts: Vec<&str> = name.split('.').collect();
    let namespaced = parts.len() >= 2 && parts.iter().all(|p| segment_ok(p));
    if matches!(name, "avatar_url" | "displayname" | "m.tz") || namespaced {
        Ok(())
    } else {
        Err(Error::invalid_param(format!(
            "Invalid profile key `{name}`"
        )))
    }
}

fn own_profile(session: &Session, user_id: &UserId) -> Result<()> {
    if session.user_id != user_id {
        return Err(Error::forbidden("You cannot change another user's profile"));
    }
    Ok(())
}

async fn get_all(
    State(services): State<AppState>,
    req: Ruma<get_profile::v3::Request>,
) -> Result<get_profile::v3::Response> {
    Ok(profile_of(&services, &req.body.user_id)
        .await?
        .into_iter()
        .collect())
}

async fn get_field(
    State(services): State<AppState>,
    req: Ruma<get_profile_field::v3::Request>,
) -> Result<get_profile_field::v3::Response> {
    let user_id = &req.body.user_id;
    let field = req.body.field.as_str();
    let local = services.users.is_local(user_id);
    let value = if local {
        let short = local_profile_owner(&services, user_id)?;
        services.profiles.get(short, field)?
    } else {
        profile_of(&services, user_id).await?.remove(field)
    }
    .ok_or_else(|| Error::not_found("Profile field not set"))?;
    let value = ProfileFieldValue::new(field, value).map_err(|e| {
        let why = format!("profile field {field} of {user_id}: {e}");
        if local {
            Error::internal(why)
        } else {
            Error::upstream(why)
        }
    })?;
    Ok(get_profile_field::v3::Response::new(value))
}

async fn set_field(
    State(services): State<AppState>,
    req: Ruma<set_profile_field::v3::Request>,
) -> Result<set_profile_field::v3::Response> {
    let session = req.session()?;
    own_profile(session, &req.body.user_id)?;
    let field = req.body.value.field_name();
    let field = field.as_str();
    check_key_name(field)?;
    services
        .profiles
        .set(
            session.user,
            field,
            Some(req.body.value.value().into_owned()),
        )
        .await?;
    Ok(set_profile_field::v3::Response::new())
}

async fn delete_field(
    State(services): State<AppState>,
    req: Ruma<delete_profile_field::v3::Request>,
) -> Result<delete_profile_field::v3::Response> {
    let session = req.session()?;
    own_profile(session, &req.body.user_id)?;
    check_key_name(req.body.field.as_str())?;
    services
        .profiles
        .set(session.user, req.body.field.as_str(), None)
        .await?;
    Ok(delete_profile_field::v3::Response::new())
}
