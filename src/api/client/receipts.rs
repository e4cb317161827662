//! Typing notices, read receipts and read markers.

use axum::{extract::State, Router};
use ruma::{
    api::client::receipt::create_receipt::v3::ReceiptType,
    api::client::{
        read_marker::set_read_marker, receipt::create_receipt, typing::create_typing_event,
    },
    events::receipt::ReceiptThread,
    EventId, RoomId,
};
use serde_json::json;

use super::room::joined_room;
use crate::{
    api::{ruma::Ruma, AppState, RouterExt},
    error::{Error, Result},
    service::Services,
    storage::ShortId,
    util::now_ms,
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router.ruma(typing).ruma(receipt).ruma(read_markers)
}

async fn typing(
    State(services): State<AppState>,
    req: Ruma<create_typing_event::v3::Request>,
) -> Result<create_typing_event::v3::Response> {
    use create_typing_event::v3::Typing;
    let session = req.session()?;
    if req.body.user_id != session.user_id {
        return Err(Error::forbidden("You can only set your own typing state"));
    }
    let room = joined_room(&services, &session.user_id, &req.body.room_id)?;
    let timeout = match &req.body.state {
        Typing::Yes(info) => Some(info.timeout),
        _ => None,
    };
    services.typing.set(room, session.user_id.clone(), timeout);
    let edu = json!({
        "edu_type": "m.typing",
        "content": {
            "room_id": req.body.room_id,
            "user_id": session.user_id,
            "typing": timeout.is_some(),
        },
    });
    // Typing is best effort: a full queue must not fail the request.
    if let Err(e) = services.sender.edu_to_room(room, edu).await {
        tracing::warn!("cannot queue a typing notice: {e}");
    }
    Ok(create_typing_event::v3::Response::new())
}

/// The short ID of an event of this room, or 404.
fn event_of_room(services: &Services, room: ShortId, event_id: &EventId) -> Result<ShortId> {
    services
        .rooms
        .events
        .event_short(event_id)?
        .filter(|s| {
            services
                .rooms
                .events
                .event_meta(*s)
                .ok()
                .flatten()
                .is_some_and(|m| m.room == room)
        })
        .ok_or_else(|| Error::not_found("Event not found in this room"))
}

async fn set_receipt(
    services: &Services,
    session: &crate::service::sessions::Session,
    room_id: &RoomId,
    kind: &ReceiptType,
    thread: &ReceiptThread,
    event_id: &EventId,
) -> Result<()> {
    let room = joined_room(services, &session.user_id, room_id)?;
    event_of_room(services, room, event_id)?;
    match kind {
        ReceiptType::FullyRead => {
            services
                .account_data
                .set(
                    session.user,
                    room,
                    "m.fully_read",
                    Some(&json!({ "event_id": event_id })),
                )
                .await
        }
        ReceiptType::Read | ReceiptType::ReadPrivate => {
            let thread = match thread {
                ReceiptThread::Unthreaded => String::new(),
                other => other
                    .as_str()
                    .ok_or_else(|| Error::invalid_param("Invalid thread_id"))?
                    .to_owned(),
            };
            if let ReceiptThread::Thread(root) = thread_kind(&thread) {
                event_of_room(services, room, &root)?;
            }
            let ts = now_ms();
            services
                .receipts
                .set(room, session.user, kind.as_ref(), &thread, event_id, ts)
                .await?;
            if *kind == ReceiptType::Read {
                let mut data = json!({ "ts": ts });
                if !thread.is_empty() {
                    data["thread_id"] = thread.as_str().into();
                }
                let edu = json!({
                    "edu_type": "m.receipt",
                    "content": { room_id.as_str(): { "m.read": { session.user_id.as_str(): {
                        "event_ids": [event_id],
                        "data": data,
                    }}}},
                });
                services.sender.edu_to_room(room, edu).await?;
            }
            Ok(())
        }
        _ => Err(Error::invalid_param(format!("Unknown receipt type {kind}"))),
    }
}

/// A thread ID as ruma sees it, to check thread roots exist.
fn thread_kind(thread: &str) -> ReceiptThread {
    match thread {
        "" => ReceiptThread::Unthreaded,
        "main" => ReceiptThread::Main,
        other => EventId::parse(other)
            .map(ReceiptThread::Thread)
            .unwrap_or(ReceiptThread::Unthreaded),
    }
}

async fn receipt(
    State(services): State<AppState>,
    req: Ruma<create_receipt::v3::Request>,
) -> Result<create_receipt::v3::Response> {
    let session = req.session()?;
    let b = &req.body;
    if b.receipt_type == ReceiptType::FullyRead && b.thread != ReceiptThread::Unthreaded {
        return Err(Error::bad_json("m.fully_read cannot be threaded"));
    }
    set_receipt(
        &services,
        session,
        &b.room_id,
        &b.receipt_type,
        &b.thread,
        &b.event_id,
    )
    .await?;
    Ok(create_receipt::v3::Response::new())
}

async fn read_markers(
    State(services): State<AppState>,
    req: Ruma<set_read_marker::v3::Request>,
) -> Result<set_read_marker::v3::Response> {
    let session = req.session()?;
    let b = &req.body;
    let markers = [
        (ReceiptType::FullyRead, &b.fully_read),
        (ReceiptType::Read, &b.read_receipt),
        (ReceiptType::ReadPrivate, &b.private_read_receipt),
    ];
    for (receipt_type, event) in markers {
        if let Some(e) = event {
            set_receipt(
                &services,
                session,
                &b.room_id,
                &receipt_type,
                &ReceiptThread::Unthreaded,
                e,
            )
            .await?;
        }
    }
    Ok(set_read_marker::v3::Response::new())
}
