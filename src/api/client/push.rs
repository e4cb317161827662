//! Push rules (the whole set, one rule, its enabled flag and actions), /notifications, and
//! pushers (where a phone wants its notifications sent).

use axum::{extract::State, Router};
use ruma::{
    api::client::push::{
        delete_pushrule, get_notifications, get_pushers, get_pushrule, get_pushrule_actions,
        get_pushrule_enabled, get_pushrules_all, get_pushrules_global_scope, set_pusher,
        set_pushrule, set_pushrule_actions, set_pushrule_enabled, PushRule,
    },
    push::{InsertPushRuleError, RemovePushRuleError, Ruleset},
    serde::Raw,
    MilliSecondsSinceUnixEpoch, UInt,
};

use crate::{
    api::{ruma::Ruma, AppState, RouterExt},
    error::{Error, Result},
    service::{sessions::Session, Services},
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .ruma(all)
        .ruma(global)
        .ruma(get_rule)
        .ruma(set_rule)
        .ruma(delete_rule)
        .ruma(get_enabled)
        .ruma(set_enabled)
        .ruma(get_actions)
        .ruma(set_actions)
        .ruma(notifications)
        .ruma(pushers)
        .ruma(set_pusher)
}

async fn pushers(
    State(services): State<AppState>,
    req: Ruma<get_pushers::v3::Request>,
) -> Result<get_pushers::v3::Response> {
    let session = req.session()?;
    Ok(get_pushers::v3::Response::new(
        services.push.pushers(session.user)?,
    ))
}

async fn set_pusher(
    State(services): State<AppState>,
    req: Ruma<set_pusher::v3::Request>,
) -> Result<set_pusher::v3::Response> {
    let session = req.session()?;
    match req.body.action.clone() {
        set_pusher::v3::PusherAction::Post(post) => {
            services
                .push
                .set_pusher(
                    session.user,
                    &session.user_id,
                    Some(session.device_id.as_str()),
                    post.pusher,
                    post.append,
                )
                .await?
        }
        set_pusher::v3::PusherAction::Delete(ids) => {
            services.push.delete_pusher(session.user, &ids).await?
        }
        _ => return Err(Error::invalid_param("Unknown pusher action")),
    }
    Ok(set_pusher::v3::Response::new())
}

fn rules(services: &Services, session: &Session) -> Result<Ruleset> {
    Ok((*services.push.ruleset(session.user, &session.user_id)?).clone())
}

fn no_rule() -> Error {
    Error::not_found("No push rule with that ID")
}

async fn all(
    State(services): State<AppState>,
    req: Ruma<get_pushrules_all::v3::Request>,
) -> Result<get_pushrules_all::v3::Response> {
    let session = req.session()?;
    Ok(get_pushrules_all::v3::Response::new(rules(
        &services, session,
    )?))
}

async fn global(
    State(services): State<AppState>,
    req: Ruma<get_pushrules_global_scope::v3::Request>,
) -> Result<get_pushrules_global_scope::v3::Response> {
    let session = req.session()?;
    Ok(get_pushrules_global_scope::v3::Response::new(rules(
        &services, session,
    )?))
}

async fn get_rule(
    State(services): State<AppState>,
    req: Ruma<get_pushrule::v3::Request>,
) -> Result<get_pushrule::v3::Response> {
    let session = req.session()?;
    let ruleset = rules(&services, session)?;
    let rule = ruleset
        .get(req.body.kind.clone(), &req.body.rule_id)
        .ok_or_else(no_rule)?;
    Ok(get_pushrule::v3::Response::new(PushRule::from(rule)))
}

async fn set_rule(
    State(services): State<AppState>,
    req: Ruma<set_pushrule::v3::Request>,
) -> Result<set_pushrule::v3::Response> {
    let session = req.session()?;
    let b = &req.body;
    let mut ruleset = rules(&services, session)?;
    ruleset
        .insert(b.rule.clone(), b.after.as_deref(), b.before.as_deref())
        .map_err(|e| match e {
            InsertPushRuleError::UnknownRuleId => {
                Error::not_found("The before or after rule does not exist")
            }
            other => Error::bad_json(other.to_string()),
        })?;
    services.push.set_ruleset(session.user, ruleset).await?;
    Ok(set_pushrule::v3::Response::new())
}

async fn delete_rule(
    State(services): State<AppState>,
    req: Ruma<delete_pushrule::v3::Request>,
) -> Result<delete_pushrule::v3::Response> {
    let session = req.session()?;
    let mut ruleset = rules(&services, session)?;
    ruleset
        .remove(req.body.kind.clone(), &req.body.rule_id)
        .map_err(|e| match e {
            RemovePushRuleError::NotFound => no_rule(),
            other => Error::bad_json(other.to_string()),
        })?;
    services.push.set_ruleset(session.user, ruleset).await?;
    Ok(delete_pushrule::v3::Response::new())
}

async fn get_enabled(
    State(services): State<AppState>,
    req: Ruma<get_pushrule_enabled::v3::Request>,
) -> Result<get_pushrule_enabled::v3::Response> {
    let session = req.session()?;
    let ruleset = rules(&services, session)?;
    let rule = ruleset
        .get(req.body.kind.clone(), &req.body.rule_id)
        .ok_or_else(no_rule)?;
    Ok(get_pushrule_enabled::v3::Response::new(rule.enabled()))
}

async fn set_enabled(
    State(services): State<AppState>,
    req: Ruma<set_pushrule_enabled::v3::Request>,
) -> Result<set_pushrule_enabled::v3::Response> {
    let session = req.session()?;
    let mut ruleset = rules(&services, session)?;
    ruleset
        .set_enabled(req.body.kind.clone(), &req.body.rule_id, req.body.enabled)
        .map_err(|_| no_rule())?;
    services.push.set_ruleset(session.user, ruleset).await?;
    Ok(set_pushrule_enabled::v3::Response::new())
}

async fn get_actions(
    State(services): State<AppState>,
    req: Ruma<get_pushrule_actions::v3::Request>,
) -> Result<get_pushrule_actions::v3::Response> {
    let session = req.session()?;
    let ruleset = rules(&services, session)?;
    let rule = ruleset
        .get(req.body.kind.clone(), &req.body.rule_id)
        .ok_or_else(no_rule)?;
    Ok(get_pushrule_actions::v3::Response::new(
        rule.actions().to_vec(),
    ))
}

async fn set_actions(
    State(services): State<AppState>,
    req: Ruma<set_pushrule_actions::v3::Request>,
) -> Result<set_pushrule_actions::v3::Response> {
    let session = req.session()?;
    let mut ruleset = rules(&services, session)?;
    ruleset
        .set_actions(
            req.body.kind.clone(),
            &req.body.rule_id,
            req.body.actions.clone(),
        )
        .map_err(|_| no_rule())?;
    services.push.set_ruleset(session.user, ruleset).await?;
    Ok(set_pushrule_actions::v3::Response::new())
}

async fn notifications(
    State(services): State<AppState>,
    req: Ruma<get_notifications::v3::Request>,
) -> Result<get_notifications::v3::Response> {
    let session = req.session()?;
    let b = &req.body;
    let from = b
        .from
        .as_deref()
        .map(|f| {
            f.parse::<u64>()
                .map_err(|_| Error::invalid_param(format!("Invalid from token `{f}`")))
        })
        .transpose()?;
    let limit = b.limit.map_or(20, |l| u64::from(l) as usize).clamp(1, 100);
    let only_highlight = b.only.as_deref() == Some("highlight");
    let (list, next) = services
        .push
        .list(session.user, from, limit, only_highlight)?;
    let mut out = Vec::with_capacity(list.len());
    for (room, pos, n, read) in list {
        let room_id = services.rooms.events.room_id_of(room)?;
        let Some(json) =
            services
                .rooms
                .timeline
                .client_event_json(pos, &room_id, &session.user_id)?
        else {
            continue;
        };
        let event: Raw<_> =
            Raw::from_json(serde_json::value::to_raw_value(&json).map_err(Error::internal)?);
        let ts = MilliSecondsSinceUnixEpoch(UInt::new_saturating(n.ts));
        out.push(get_notifications::v3::Notification::new(
            n.actions, event, read, room_id, ts,
        ));
    }
    let mut resp = get_notifications::v3::Response::new(out);
    resp.next_token = next.map(|p| p.to_string());
    Ok(resp)
}
