//! Pushers and delivery to a push gateway: a recording gateway on loopback checks every request
//! against the Push Gateway API and answers as a real one would (taking it, rejecting a pushkey,
//! or being down).

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use axum::{extract::State, routing::post, Json, Router};
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::common::{assert_err, enc, eventually, TestServer, TEST_PASSWORD};

const APP_ID: &str = "org.hearth.test.ios";

#[derive(Clone, Default)]
struct Gateway {
    /// Notifications the gateway took (answered 200), in order of arrival.
    taken: Arc<Mutex<Vec<Value>>>,
    /// Requests answered with an error while down.
    refused: Arc<Mutex<usize>>,
    down: Arc<AtomicBool>,
    /// Pushkeys answered as rejected.
    reject: Arc<Mutex<Vec<String>>>,
}

/// Checks one request body against the Push Gateway API's `/notify` schema.
fn check_schema(body: &Value) {
    let n = body["notification"]
        .as_object()
        .unwrap_or_else(|| panic!("no notification object: {body}"));
    for field in [
        "event_id",
        "room_id",
        "type",
        "sender",
        "sender_display_name",
        "room_name",
        "room_alias",
    ] {
        if let Some(v) = n.get(field) {
            assert!(v.is_string(), "{field} must be a string: {body}");
        }
    }
    if let Some(p) = n.get("prio") {
        assert!(p == "high" || p == "low", "prio: {body}");
    }
    if let Some(t) = n.get("user_is_target") {
        assert!(t.is_boolean(), "user_is_target: {body}");
    }
    if let Some(c) = n.get("content") {
        assert!(c.is_object(), "content: {body}");
    }
    if let Some(counts) = n.get("counts") {
        for (k, v) in counts.as_object().expect("counts is an object") {
            assert!(
                ["unread", "missed_calls"].contains(&k.as_str()) && v.is_u64(),
                "counts.{k}: {body}"
            );
        }
    }
    let devices = n["devices"].as_array().expect("devices is required");
    assert!(!devices.is_empty(), "devices: {body}");
    for d in devices {
        assert!(
            d["app_id"].is_string() && d["pushkey"].is_string(),
            "{body}"
        );
        if let Some(ts) = d.get("pushkey_ts") {
            assert!(ts.is_u64(), "pushkey_ts: {body}");
        }
        if let Some(data) = d.get("data") {
            assert!(data.is_object(), "data: {body}");
            assert!(data.get("url").is_none(), "data keeps no url: {body}");
        }
        if let Some(t) = d.get("tweaks") {
            assert!(t.is_object(), "tweaks: {body}");
        }
    }
}

async fn notify(
    State(g): State<Gateway>,
    Json(body): Json<Value>,
) -> (axum::http::StatusCode, Json<Value>) {
    check_schema(&body);
    if g.down.load(Ordering::SeqCst) {
        *g.refused.lock() += 1;
        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, Json(json!({})));
    }
    let key = body["notification"]["devices"][0]["pushkey"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    g.taken.lock().push(body);
    let rejected: Vec<String> = g
        .reject
        .lock()
        .iter()
        .filter(|k| **k == key)
        .cloned()
        .collect();
    (
        axum::http::StatusCode::OK,
        Json(json!({ "rejected": rejected })),
    )
}

impl Gateway {
    /// Starts the gateway; its notify URL.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/_matrix/push/v1/notify", post(notify))
            .with_state(self.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{addr}/_matrix/push/v1/notify")
    }

    /// Notifications taken about `event_id`.
    fn about(&self, event_id: &str) -> Vec<Value> {
        self.taken
            .lock()
            .iter()
            .filter(|n| n["notification"]["event_id"] == event_id)
            .cloned()
            .collect()
    }

    /// Waits until the notification about `event_id` was taken; it.
    async fn wait_for(&self, event_id: &str) -> Value {
        eventually(20, &format!("a notification about {event_id}"), || async {
            self.about(event_id).into_iter().next()
        })
        .await
    }
}

/// A server whose pushers may reach a gateway on loopback.
async fn server() -> TestServer {
    TestServer::start_with(|c| c.push.ip_range_allow = vec!["127.0.0.1/32".into()]).await
}

fn pusher(url: &str, pushkey: &str) -> Value {
    json!({
        "kind": "http",
        "app_id": APP_ID,
        "pushkey": pushkey,
        "app_display_name": "Hearth test",
        "device_display_name": "phone",
        "lang": "en",
        "data": { "url": url, "session": "abc" },
    })
}

async fn set_pusher(s: &TestServer, token: &str, body: Value) -> (u16, Value) {
    s.post("/_matrix/client/v3/pushers/set", Some(token), body)
        .await
}

async fn pushers(s: &TestServer, token: &str) -> Vec<Value> {
    let (status, body) = s.get("/_matrix/client/v3/pushers", Some(token)).await;
    assert_eq!(status, 200, "{body}");
    body["pushers"].as_array().unwrap().clone()
}

#[tokio::test]
async fn notifications_reach_the_gateway_once_with_counts_priorities_and_badge_updates() {
    let s = server().await;
    let gateway = Gateway::default();
    let url = gateway.start().await;
    let (alice, alice_token, _) = s.register("alice", TEST_PASSWORD).await;
    let (bob, bob_token, _) = s.register("bob", TEST_PASSWORD).await;
    let (status, body) = set_pusher(&s, &bob_token, pusher(&url, "bob-phone")).await;
    assert_eq!(status, 200, "{body}");
    let listed = pushers(&s, &bob_token).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["pushkey"], "bob-phone");
    assert_eq!(listed[0]["data"]["url"], url.as_str());

    // A direct chat: the invite rings, then every message, with sound (high priority).
    let dm = s
        .create_room(
            &alice_token,
            json!({ "is_direct": true, "invite": [bob], "preset": "trusted_private_chat", "name": "Lunch" }),
        )
        .await;
    let invite = eventually(20, "the invite's notification", || async {
        gateway
            .taken
            .lock()
            .iter()
            .find(|n| n["notification"]["membership"] == "invite")
            .cloned()
    })
    .await;
    assert_eq!(invite["notification"]["user_is_target"], true, "{invite}");
    s.join(&bob_token, &dm).await;
    let hello = s.say(&alice_token, &dm, "hello bob").await;
    let n = gateway.wait_for(&hello).await;
    let note = &n["notification"];
    assert_eq!(note["room_id"], dm.as_str(), "{n}");
    assert_eq!(note["type"], "m.room.message", "{n}");
    assert_eq!(note["sender"], alice.as_str(), "{n}");
    assert_eq!(note["sender_display_name"], "alice", "{n}");
    assert_eq!(note["room_name"], "Lunch", "{n}");
    assert_eq!(note["content"]["body"], "hello bob", "{n}");
    assert_eq!(note["prio"], "high", "{n}");
    assert_eq!(note["counts"]["unread"], 1, "{n}");
    let device = &note["devices"][0];
    assert_eq!(device["app_id"], APP_ID);
    assert_eq!(device["pushkey"], "bob-phone");
    assert_eq!(device["data"], json!({ "session": "abc" }), "{n}");
    assert_eq!(device["tweaks"]["sound"], "default", "{n}");
    let second = s.say(&alice_token, &dm, "are you there").await;
    let n = gateway.wait_for(&second).await;
    assert_eq!(n["notification"]["counts"]["unread"], 2, "{n}");

    // A group room: a plain message is low priority; @room highlights.
    let group = s
        .create_room(
            &alice_token,
            json!({ "preset": "public_chat", "name": "Team" }),
        )
        .await;
    s.join(&bob_token, &group).await;
    let (_, carol_token, _) = s.register("carol", TEST_PASSWORD).await;
    s.join(&carol_token, &group).await;
    let plain = s.say(&alice_token, &group, "standup in 5").await;
    let n = gateway.wait_for(&plain).await;
    assert_eq!(n["notification"]["prio"], "low", "{n}");
    assert!(
        n["notification"]["devices"][0]["tweaks"]
            .get("sound")
            .is_none(),
        "{n}"
    );
    assert_eq!(n["notification"]["counts"]["unread"], 3, "{n}");
    let (status, body) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/atroom", enc(&group)),
            Some(&alice_token),
            json!({ "msgtype": "m.text", "body": "@room fire drill", "m.mentions": { "room": true } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let at_room = body["event_id"].as_str().unwrap().to_owned();
    let n = gateway.wait_for(&at_room).await;
    assert_eq!(n["notification"]["prio"], "high", "{n}");
    assert_eq!(
        n["notification"]["devices"][0]["tweaks"]["highlight"], true,
        "{n}"
    );

    // A room bob muted with a push rule sends nothing.
    let muted = s
        .create_room(
            &alice_token,
            json!({ "preset": "public_chat", "name": "Noisy" }),
        )
        .await;
    s.join(&bob_token, &muted).await;
    let (status, body) = s
        .put(
            &format!("/_matrix/client/v3/pushrules/global/room/{}", enc(&muted)),
            Some(&bob_token),
            json!({ "actions": [] }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let quiet = s.say(&alice_token, &muted, "nobody hears this").await;
    let after = s.say(&alice_token, &dm, "lunch at noon").await;
    let n = gateway.wait_for(&after).await;
    assert!(gateway.about(&quiet).is_empty(), "a muted room notified");
    assert_eq!(n["notification"]["counts"]["unread"], 5, "{n}");

    // Reading the direct chat sends the new, smaller badge.
    let before = gateway.taken.lock().len();
    let (status, body) = s
        .post(
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                enc(&dm),
                enc(&after)
            ),
            Some(&bob_token),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let badge = eventually(20, "a badge update", || async {
        gateway.taken.lock()[before..]
            .iter()
            .find(|n| n["notification"].get("event_id").is_none())
            .cloned()
    })
    .await;
    // Three unread in the group room remain: the plain message, @room, none from the muted room.
    assert_eq!(badge["notification"]["counts"]["unread"], 2, "{badge}");
    assert_eq!(badge["notification"]["prio"], "low", "{badge}");

    // Each event reached the gateway exactly once; alice, who has no pusher, got nothing.
    for event in [&hello, &second, &plain, &at_room, &after] {
        assert_eq!(gateway.about(event).len(), 1, "{event} delivered once");
    }
    assert!(gateway
        .taken
        .lock()
        .iter()
        .all(|n| n["notification"]["devices"][0]["pushkey"] == "bob-phone"));
}

#[tokio::test]
async fn a_rejected_pushkey_removes_the_pusher_and_logging_out_removes_a_devices_pushers() {
    let s = server().await;
    let gateway = Gateway::default();
    let url = gateway.start().await;
    let (_, alice_token, _) = s.register("alice", TEST_PASSWORD).await;
    let (_, bob_token, _) = s.register("bob", TEST_PASSWORD).await;
    let room = s
        .create_room(&alice_token, json!({ "preset": "public_chat" }))
        .await;
    s.join(&bob_token, &room).await;
    let (status, body) = set_pusher(&s, &bob_token, pusher(&url, "stale-key")).await;
    assert_eq!(status, 200, "{body}");
    gateway.reject.lock().push("stale-key".into());
    let first = s.say(&alice_token, &room, "one").await;
    gateway.wait_for(&first).await;
    eventually(20, "the rejected pusher to go", || async {
        pushers(&s, &bob_token).await.is_empty().then_some(())
    })
    .await;
    let second = s.say(&alice_token, &room, "two").await;
    // A third pusher's delivery shows the queue moved past the second message.
    let (_, carol_token, _) = s.register("carol", TEST_PASSWORD).await;
    s.join(&carol_token, &room).await;
    let (status, body) = set_pusher(&s, &carol_token, pusher(&url, "carol-phone")).await;
    assert_eq!(status, 200, "{body}");
    let third = s.say(&alice_token, &room, "three").await;
    gateway.wait_for(&third).await;
    assert!(
        gateway.about(&second).is_empty(),
        "a rejected pusher still got a notification"
    );

    // Logging out the device that set a pusher deletes it.
    let (status, login) = s.login("carol", TEST_PASSWORD).await;
    assert_eq!(status, 200, "{login}");
    let other_token = login["access_token"].as_str().unwrap();
    let (status, body) = s
        .post("/_matrix/client/v3/logout", Some(&carol_token), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(pushers(&s, other_token).await.is_empty());
}

#[tokio::test]
async fn a_gateway_that_was_down_gets_every_notification_once_across_a_restart() {
    let mut s = server().await;
    let gateway = Gateway::default();
    let url = gateway.start().await;
    let (_, alice_token, _) = s.register("alice", TEST_PASSWORD).await;
    let (bob, bob_token, _) = s.register("bob", TEST_PASSWORD).await;
    let room = s
        .create_room(
            &alice_token,
            json!({ "is_direct": true, "invite": [bob], "preset": "trusted_private_chat" }),
        )
        .await;
    s.join(&bob_token, &room).await;
    let (status, body) = set_pusher(&s, &bob_token, pusher(&url, "bob-phone")).await;
    assert_eq!(status, 200, "{body}");
    gateway.down.store(true, Ordering::SeqCst);
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(s.say(&alice_token, &room, &format!("while down {i}")).await);
    }
    eventually(20, "the gateway to be tried", || async {
        (*gateway.refused.lock() > 0).then_some(())
    })
    .await;
    s.restart().await;
    for i in 0..2 {
        sent.push(
            s.say(&alice_token, &room, &format!("after restart {i}"))
                .await,
        );
    }
    gateway.down.store(false, Ordering::SeqCst);
    for event in &sent {
        gateway.wait_for(event).await;
    }
    let taken: Vec<String> = gateway
        .taken
        .lock()
        .iter()
        .filter_map(|n| n["notification"]["event_id"].as_str().map(str::to_owned))
        .collect();
    for event in &sent {
        assert_eq!(
            taken.iter().filter(|e| *e == event).count(),
            1,
            "{event} taken once"
        );
    }
    // In the order they were sent.
    let order: Vec<&String> = taken.iter().filter(|e| sent.contains(e)).collect();
    assert_eq!(order, sent.iter().collect::<Vec<_>>());
}

#[tokio::test]
async fn bad_pushers_are_refused_and_change_nothing() {
    let s = TestServer::start().await;
    let (_, token, _) = s.register("dave", TEST_PASSWORD).await;
    let good_path = "/_matrix/push/v1/notify";
    for (url, why) in [
        (format!("ftp://push.example.org{good_path}"), "not http(s)"),
        (
            "https://push.example.org/notify".to_owned(),
            "not the notify path",
        ),
        ("not a url".to_owned(), "not a URL"),
        (format!("http://127.0.0.1:9{good_path}"), "loopback"),
        (format!("https://10.1.2.3{good_path}"), "a private address"),
        (format!("https://[::1]{good_path}"), "IPv6 loopback"),
    ] {
        let resp = set_pusher(&s, &token, pusher(&url, "k")).await;
        assert_eq!(resp.0, 400, "{why}: {}", resp.1);
        assert_eq!(resp.1["errcode"], "M_INVALID_PARAM", "{why}: {}", resp.1);
    }
    let mut long_app = pusher("https://push.example.org/_matrix/push/v1/notify", "k");
    long_app["app_id"] = "a".repeat(65).into();
    assert_err(
        &set_pusher(&s, &token, long_app).await,
        400,
        "M_INVALID_PARAM",
    );
    let mut long_key = pusher("https://push.example.org/_matrix/push/v1/notify", "k");
    long_key["pushkey"] = "k".repeat(513).into();
    assert_err(
        &set_pusher(&s, &token, long_key).await,
        400,
        "M_INVALID_PARAM",
    );
    let mut email = pusher("https://push.example.org/_matrix/push/v1/notify", "k");
    email["kind"] = "email".into();
    assert_err(&set_pusher(&s, &token, email).await, 400, "M_INVALID_PARAM");
    let mut no_url = pusher("https://push.example.org/_matrix/push/v1/notify", "k");
    no_url["data"] = json!({});
    let resp = set_pusher(&s, &token, no_url).await;
    assert_eq!(resp.0, 400, "{}", resp.1);
    let mut no_app = pusher("https://push.example.org/_matrix/push/v1/notify", "k");
    no_app.as_object_mut().unwrap().remove("app_id");
    let resp = set_pusher(&s, &token, no_app).await;
    assert_eq!(resp.0, 400, "{}", resp.1);
    let resp = s
        .post(
            "/_matrix/client/v3/pushers/set",
            Some(&token),
            json!("not an object"),
        )
        .await;
    assert_eq!(resp.0, 400, "{}", resp.1);
    assert!(pushers(&s, &token).await.is_empty(), "nothing was stored");
    // Unauthenticated: no pushers at all.
    assert_err(
        &s.get("/_matrix/client/v3/pushers", None).await,
        401,
        "M_MISSING_TOKEN",
    );
    // Deleting a pusher that does not exist changes nothing.
    let (status, body) = set_pusher(
        &s,
        &token,
        json!({ "kind": null, "app_id": APP_ID, "pushkey": "none" }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(pushers(&s, &token).await.is_empty());
}

#[tokio::test]
async fn a_pushkey_moves_to_the_user_now_signed_in_unless_appended() {
    let s = server().await;
    let gateway = Gateway::default();
    let url = gateway.start().await;
    let (_, erin_token, _) = s.register("erin", TEST_PASSWORD).await;
    let (_, frank_token, _) = s.register("frank", TEST_PASSWORD).await;
    let (status, _) = set_pusher(&s, &erin_token, pusher(&url, "shared-phone")).await;
    assert_eq!(status, 200);
    let mut appended = pusher(&url, "shared-phone");
    appended["append"] = true.into();
    let (status, _) = set_pusher(&s, &frank_token, appended).await;
    assert_eq!(status, 200);
    assert_eq!(
        pushers(&s, &erin_token).await.len(),
        1,
        "append keeps erin's"
    );
    let (status, _) = set_pusher(&s, &frank_token, pusher(&url, "shared-phone")).await;
    assert_eq!(status, 200);
    assert!(
        pushers(&s, &erin_token).await.is_empty(),
        "the phone is frank's now"
    );
    let listed = pushers(&s, &frank_token).await;
    assert_eq!(listed.len(), 1);
    // Deleting it with kind null.
    let (status, body) = set_pusher(
        &s,
        &frank_token,
        json!({ "kind": null, "app_id": APP_ID, "pushkey": "shared-phone" }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(pushers(&s, &frank_token).await.is_empty());
}
