//! Calls: delayed events (MSC4140) as Element Call uses them for its call membership, TURN
//! credentials (`/voip/turnServer`) and MatrixRTC transport discovery (MSC4143).

use serde_json::{json, Value};

use crate::common::{assert_err, enc, eventually, TestServer, TEST_PASSWORD};

const DELAYED: &str = "/_matrix/client/unstable/org.matrix.msc4140/delayed_events";
const CALL_MEMBER: &str = "org.matrix.msc3401.call.member";

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A room of `token`'s user where every member may send call memberships, as in rooms Element
/// creates.
async fn call_room(server: &TestServer, token: &str) -> String {
    server
        .create_room(
            token,
            json!({
                "preset": "public_chat",
                "power_level_content_override": { "events": { CALL_MEMBER: 0 } },
            }),
        )
        .await
}

/// The state key Element Call gives a member's call membership.
fn member_key(user_id: &str, device_id: &str) -> String {
    format!("_{user_id}_{device_id}")
}

/// `PUT /state` with a delay; the raw answer.
async fn delayed_state(
    server: &TestServer,
    token: &str,
    room: &str,
    key: &str,
    delay: &str,
) -> (u16, Value) {
    server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{room}/state/{CALL_MEMBER}/{}?org.matrix.msc4140.delay={delay}",
                enc(key)
            ),
            Some(token),
            json!({}),
        )
        .await
}

/// Schedules a call membership; its delay ID.
async fn schedule_leave(
    server: &TestServer,
    token: &str,
    room: &str,
    key: &str,
    delay_ms: u64,
) -> String {
    let (status, body) = delayed_state(server, token, room, key, &delay_ms.to_string()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("event_id").is_none(), "{body}");
    body["delay_id"].as_str().expect("delay_id").to_owned()
}

/// The call membership under `key` as an event, once it exists.
async fn member_event(server: &TestServer, token: &str, room: &str, key: &str) -> Option<Value> {
    let (status, body) = server
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{room}/state/{CALL_MEMBER}/{}?format=event",
                enc(key)
            ),
            Some(token),
        )
        .await;
    match status {
        200 => Some(body),
        404 => None,
        _ => panic!("state of {key}: {status} {body}"),
    }
}

/// The user's scheduled delayed events.
async fn list(server: &TestServer, token: &str) -> Vec<Value> {
    let (status, body) = server.get(DELAYED, Some(token)).await;
    assert_eq!(status, 200, "{body}");
    body["delayed_events"].as_array().expect("a list").clone()
}

fn ids(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["delay_id"].as_str().unwrap())
        .collect()
}

async fn act(
    server: &TestServer,
    token: Option<&str>,
    delay_id: &str,
    action: &str,
) -> (u16, Value) {
    server
        .post(&format!("{DELAYED}/{delay_id}/{action}"), token, json!({}))
        .await
}

/// The latest timeline events of the room, as its sender sees them.
async fn timeline(server: &TestServer, token: &str, room: &str) -> Vec<Value> {
    let (status, body) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=20"),
            Some(token),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["chunk"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_call_membership_fires_after_its_delay_and_sets_the_state() {
    let server = TestServer::start().await;
    let (alice_id, alice, device) = server.register("alice", TEST_PASSWORD).await;
    let room = call_room(&server, &alice).await;
    let key = member_key(&alice_id, &device);

    let before = now_ms();
    let delay_id = schedule_leave(&server, &alice, &room, &key, 1500).await;
    let listed = list(&server, &alice).await;
    assert_eq!(ids(&listed), [delay_id.as_str()]);
    let item = &listed[0];
    assert_eq!(item["room_id"], room.as_str());
    assert_eq!(item["type"], CALL_MEMBER);
    assert_eq!(item["state_key"], key.as_str());
    assert_eq!(item["content"], json!({}));
    assert_eq!(item["delay"], 1500);
    let since = item["running_since"].as_u64().unwrap();
    assert!(since >= before && since <= now_ms(), "{item}");

    let event = eventually(10, "the delayed call membership", || {
        member_event(&server, &alice, &room, &key)
    })
    .await;
    assert_eq!(event["sender"], alice_id.as_str());
    assert_eq!(event["content"], json!({}));
    // Never before its time: the server stamps the event when it sends it.
    let sent_at = event["origin_server_ts"].as_u64().unwrap();
    assert!(
        sent_at >= since + 1500,
        "sent at {sent_at}, due {}",
        since + 1500
    );
    assert!(list(&server, &alice).await.is_empty());

    // Its sender sees which delayed event it was (MSC4140's unsigned delay_id).
    let in_timeline = timeline(&server, &alice, &room)
        .await
        .into_iter()
        .find(|e| e["event_id"] == event["event_id"])
        .expect("in the timeline");
    assert_eq!(
        in_timeline["unsigned"]["org.matrix.msc4140.delay_id"],
        delay_id.as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_delayed_event_fires_only_after_its_new_deadline() {
    let server = TestServer::start().await;
    let (alice_id, alice, device) = server.register("alice", TEST_PASSWORD).await;
    let room = call_room(&server, &alice).await;
    let key = member_key(&alice_id, &device);
    let delay_id = schedule_leave(&server, &alice, &room, &key, 3000).await;

    // The heartbeat Element Call sends while it is in the call.
    let restarted_at = now_ms();
    let resp = act(&server, Some(&alice), &delay_id, "restart").await;
    assert_eq!(resp.0, 200, "{}", resp.1);
    let listed = list(&server, &alice).await;
    assert!(listed[0]["running_since"].as_u64().unwrap() >= restarted_at);

    let event = eventually(15, "the restarted call membership", || {
        member_event(&server, &alice, &room, &key)
    })
    .await;
    let sent_at = event["origin_server_ts"].as_u64().unwrap();
    assert!(
        sent_at >= restarted_at + 3000,
        "sent at {sent_at}, restarted at {restarted_at}"
    );
    // Once sent it can no longer be restarted.
    assert_err(
        &act(&server, Some(&alice), &delay_id, "restart").await,
        404,
        "M_NOT_FOUND",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_delayed_event_never_fires() {
    let server = TestServer::start().await;
    let (alice_id, alice, device) = server.register("alice", TEST_PASSWORD).await;
    let room = call_room(&server, &alice).await;
    let key = member_key(&alice_id, &device);
    let delay_id = schedule_leave(&server, &alice, &room, &key, 1000).await;

    // The older form, with the action in the body.
    let (status, body) = server
        .post(
            &format!("{DELAYED}/{delay_id}"),
            Some(&alice),
            json!({ "action": "cancel" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(list(&server, &alice).await.is_empty());
    for action in ["cancel", "restart", "send"] {
        assert_err(
            &act(&server, Some(&alice), &delay_id, action).await,
            404,
            "M_NOT_FOUND",
        );
    }

    // Delayed events are sent in the order they come due: once one scheduled after the
    // cancelled one, for later, has been sent, the cancelled one would have been too.
    let witness = member_key(&alice_id, "WITNESS");
    schedule_leave(&server, &alice, &room, &witness, 1500).await;
    eventually(10, "the later delayed event", || {
        member_event(&server, &alice, &room, &witness)
    })
    .await;
    assert!(member_event(&server, &alice, &room, &key).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_events_pending_across_a_restart_fire_after_it() {
    let mut server = TestServer::start().await;
    let (alice_id, alice, device) = server.register("alice", TEST_PASSWORD).await;
    let room = call_room(&server, &alice).await;
    let soon = member_key(&alice_id, &device);
    let later = member_key(&alice_id, "OTHER");
    let soon_id = schedule_leave(&server, &alice, &room, &soon, 2000).await;
    let later_id = schedule_leave(&server, &alice, &room, &later, 3_600_000).await;

    server.restart().await;

    let event = eventually(15, "the delayed event after the restart", || {
        member_event(&server, &alice, &room, &soon)
    })
    .await;
    assert_eq!(event["sender"], alice_id.as_str());
    // The other is still scheduled, as it was.
    let listed = list(&server, &alice).await;
    assert_eq!(ids(&listed), [later_id.as_str()]);
    assert_eq!(listed[0]["delay"], 3_600_000);
    assert_err(
        &act(&server, Some(&alice), &soon_id, "cancel").await,
        404,
        "M_NOT_FOUND",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_send_action_sends_a_delayed_event_at_once() {
    let server = TestServer::start().await;
    let (alice_id, alice, _) = server.register("alice", TEST_PASSWORD).await;
    let room = call_room(&server, &alice).await;
    let path = format!(
        "/_matrix/client/v3/rooms/{room}/send/m.room.message/txn1?org.matrix.msc4140.delay=3600000"
    );
    let content = json!({ "msgtype": "m.text", "body": "I am off" });
    let (status, body) = server.put(&path, Some(&alice), content.clone()).await;
    assert_eq!(status, 200, "{body}");
    let delay_id = body["delay_id"].as_str().unwrap().to_owned();
    // A retried request schedules nothing new.
    let (status, again) = server.put(&path, Some(&alice), content.clone()).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["delay_id"], delay_id.as_str());
    assert_eq!(ids(&list(&server, &alice).await), [delay_id.as_str()]);

    let resp = act(&server, Some(&alice), &delay_id, "send").await;
    assert_eq!(resp.0, 200, "{}", resp.1);
    // Sent before the answer: in the timeline at once.
    let sent = timeline(&server, &alice, &room)
        .await
        .into_iter()
        .find(|e| e["content"] == content)
        .expect("the message is in the timeline");
    assert_eq!(sent["sender"], alice_id.as_str());
    assert_eq!(
        sent["unsigned"]["org.matrix.msc4140.delay_id"],
        delay_id.as_str()
    );
    assert!(list(&server, &alice).await.is_empty());
    assert_err(
        &act(&server, Some(&alice), &delay_id, "send").await,
        404,
        "M_NOT_FOUND",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_shows_only_the_users_own_scheduled_events() {
    let server = TestServer::start().await;
    let (alice_id, alice, device) = server.register("alice", TEST_PASSWORD).await;
    let (bob_id, bob, bob_device) = server.register("bob", TEST_PASSWORD).await;
    let room = call_room(&server, &alice).await;
    let (status, body) = server
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&room)),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let later = schedule_leave(
        &server,
        &alice,
        &room,
        &member_key(&alice_id, &device),
        7_200_000,
    )
    .await;
    let (status, body) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t?org.matrix.msc4140.delay=3600000"),
            Some(&alice),
            json!({ "msgtype": "m.text", "body": "bye" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let sooner = body["delay_id"].as_str().unwrap().to_owned();
    let bobs = schedule_leave(
        &server,
        &bob,
        &room,
        &member_key(&bob_id, &bob_device),
        3_600_000,
    )
    .await;

    let listed = list(&server, &alice).await;
    // The next due first.
    assert_eq!(ids(&listed), [sooner.as_str(), later.as_str()]);
    assert_eq!(listed[0]["type"], "m.room.message");
    assert!(listed[0].get("state_key").is_none(), "{}", listed[0]);
    assert_eq!(listed[0]["content"]["body"], "bye");
    assert_eq!(ids(&list(&server, &bob).await), [bobs.as_str()]);

    // Someone else's delayed event is not found, and stays.
    for action in ["cancel", "restart", "send"] {
        assert_err(
            &act(&server, Some(&bob), &later, action).await,
            404,
            "M_NOT_FOUND",
        );
    }
    assert_eq!(
        ids(&list(&server, &alice).await),
        [sooner.as_str(), later.as_str()]
    );

    // Without a token the delay ID alone is the credential (as in Synapse), so that a service
    // a client hands it to (an SFU) can keep it alive; a wrong one finds nothing.
    assert_err(
        &act(&server, None, "hde_unknown", "restart").await,
        404,
        "M_NOT_FOUND",
    );
    let resp = act(&server, None, &later, "restart").await;
    assert_eq!(resp.0, 200, "{}", resp.1);
    assert_err(&server.get(DELAYED, None).await, 401, "M_MISSING_TOKEN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_state_change_cancels_a_delayed_state_event() {
    let server = TestServer::start().await;
    let (alice_id, alice, device) = server.register("alice", TEST_PASSWORD).await;
    let (_, bob, _) = server.register("bob", TEST_PASSWORD).await;
    let room = call_room(&server, &alice).await;
    let (status, body) = server
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&room)),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let key = member_key(&alice_id, &device);
    let state = format!(
        "/_matrix/client/v3/rooms/{room}/state/{CALL_MEMBER}/{}",
        enc(&key)
    );
    let delay_id = schedule_leave(&server, &alice, &room, &key, 3_600_000).await;

    // Her own change leaves it scheduled.
    let (status, body) = server
        .put(&state, Some(&alice), json!({ "joined": true }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids(&list(&server, &alice).await), [delay_id.as_str()]);

    // Someone else setting the same state cancels it, as Synapse does.
    let (status, body) = server.put(&state, Some(&bob), json!({ "by": "bob" })).await;
    assert_eq!(status, 200, "{body}");
    assert!(list(&server, &alice).await.is_empty());
    assert_err(
        &act(&server, Some(&alice), &delay_id, "send").await,
        404,
        "M_NOT_FOUND",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_event_its_sender_may_no_longer_send_is_dropped() {
    let server = TestServer::start().await;
    let (alice_id, alice, device) = server.register("alice", TEST_PASSWORD).await;
    let (bob_id, bob, bob_device) = server.register("bob", TEST_PASSWORD).await;
    let room = call_room(&server, &alice).await;
    let (status, body) = server
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&room)),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let key = member_key(&bob_id, &bob_device);
    schedule_leave(&server, &bob, &room, &key, 1000).await;
    let (status, body) = server
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/leave"),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Sent in the order they come due: once a later one has been sent, Bob's was tried.
    let witness = member_key(&alice_id, &device);
    schedule_leave(&server, &alice, &room, &witness, 1500).await;
    eventually(10, "the later delayed event", || {
        member_event(&server, &alice, &room, &witness)
    })
    .await;
    assert!(member_event(&server, &alice, &room, &key).await.is_none());
    assert!(list(&server, &bob).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_delayed_event_requests_are_refused_and_store_nothing() {
    let server = TestServer::start_with(|c| {
        c.delayed_events.max_delay = "10s".parse().unwrap();
        c.delayed_events.max_per_user = 1;
    })
    .await;
    let (alice_id, alice, device) = server.register("alice", TEST_PASSWORD).await;
    let (_, bob, _) = server.register("bob", TEST_PASSWORD).await;
    let room = call_room(&server, &alice).await;
    let key = member_key(&alice_id, &device);
    let kept = schedule_leave(&server, &alice, &room, &key, 10_000).await;
    let before = server.db_fingerprint();

    // Past the maximum: Synapse's answer, which Element Call reads to retry with the maximum.
    let resp = delayed_state(&server, &alice, &room, &key, "10001").await;
    assert_err(&resp, 400, "M_UNKNOWN");
    assert_eq!(resp.1["org.matrix.msc4140.errcode"], "M_MAX_DELAY_EXCEEDED");
    assert_eq!(resp.1["org.matrix.msc4140.max_delay"], 10_000);

    // Not a non-negative whole number of milliseconds.
    for bad in ["-1", "1.5", "soon", "", "99999999999999999999999"] {
        let resp = delayed_state(&server, &alice, &room, &key, bad).await;
        assert_err(&resp, 400, "M_INVALID_PARAM");
    }

    // Over the per-user limit: 429 with the time until one of hers is sent.
    let resp = server
        .http
        .put(format!(
            "{}/_matrix/client/v3/rooms/{room}/state/{CALL_MEMBER}/other?org.matrix.msc4140.delay=5000",
            server.url()
        ))
        .bearer_auth(&alice)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().get("retry-after").is_some());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED");

    // Not in the room, content that is no object, and a redaction through /send.
    let resp = delayed_state(&server, &bob, &room, "x", "1000").await;
    assert_err(&resp, 403, "M_FORBIDDEN");
    let resp = server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.redaction/t?org.matrix.msc4140.delay=1000"),
            Some(&alice),
            json!({}),
        )
        .await;
    assert_err(&resp, 400, "M_BAD_JSON");

    // Management: unknown IDs, bad actions.
    for action in ["cancel", "restart", "send"] {
        assert_err(
            &act(&server, Some(&alice), "hde_nope", action).await,
            404,
            "M_NOT_FOUND",
        );
    }
    assert_err(
        &act(&server, Some(&alice), &kept, "explode").await,
        404,
        "M_UNRECOGNIZED",
    );
    let update = format!("{DELAYED}/{kept}");
    assert_err(
        &server
            .post(&update, Some(&alice), json!({ "action": "explode" }))
            .await,
        400,
        "M_INVALID_PARAM",
    );
    assert_err(
        &server
            .post(&update, Some(&alice), json!({ "action": 1 }))
            .await,
        400,
        "M_INVALID_PARAM",
    );
    assert_err(
        &server.post(&update, Some(&alice), json!({})).await,
        400,
        "M_MISSING_PARAM",
    );

    assert_eq!(
        server.db_fingerprint(),
        before,
        "a refused request changed stored data"
    );
    assert_eq!(ids(&list(&server, &alice).await), [kept.as_str()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_max_delay_turns_delayed_events_off() {
    let server =
        TestServer::start_with(|c| c.delayed_events.max_delay = "0".parse().unwrap()).await;
    let (alice_id, alice, device) = server.register("alice", TEST_PASSWORD).await;
    let room = call_room(&server, &alice).await;
    let (_, versions) = server.get("/_matrix/client/versions", None).await;
    assert!(
        versions["unstable_features"]
            .get("org.matrix.msc4140")
            .is_none(),
        "{versions}"
    );
    let before = server.db_fingerprint();

    let resp = delayed_state(
        &server,
        &alice,
        &room,
        &member_key(&alice_id, &device),
        "1000",
    )
    .await;
    assert_err(&resp, 400, "M_UNKNOWN");
    assert_eq!(
        resp.1["org.matrix.msc4140.errcode"],
        "M_MAX_DELAY_UNSUPPORTED"
    );
    assert_eq!(server.db_fingerprint(), before);
    assert!(list(&server, &alice).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_events_are_advertised_with_their_limits() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", TEST_PASSWORD).await;
    let (_, versions) = server.get("/_matrix/client/versions", None).await;
    assert_eq!(versions["unstable_features"]["org.matrix.msc4140"], true);
    let (status, caps) = server
        .get("/_matrix/client/v3/capabilities", Some(&alice))
        .await;
    assert_eq!(status, 200, "{caps}");
    assert_eq!(
        caps["capabilities"]["org.matrix.msc4140.delayed_events"],
        json!({ "max_delay_ms": 86_400_000, "max_scheduled": 100 })
    );
}

const TURN: &str = "/_matrix/client/v3/voip/turnServer";
const TURN_SECRET: &str = "the coturn static-auth-secret";

/// base64(HMAC-SHA1(secret, username)): the password coturn expects under `use-auth-secret`.
fn coturn_password(secret: &str, username: &str) -> String {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_credentials_follow_coturns_shared_secret_scheme() {
    let uris = vec![
        "turn:turn.example.org:3478?transport=udp".to_owned(),
        "turns:turn.example.org:5349?transport=tcp".to_owned(),
    ];
    let server = TestServer::start_with(|c| {
        c.turn.uris = uris.clone();
        c.turn.shared_secret = TURN_SECRET.into();
        c.turn.user_lifetime = "2h".parse().unwrap();
    })
    .await;
    let (alice_id, alice, _) = server.register("alice", TEST_PASSWORD).await;

    for path in [TURN, "/_matrix/client/r0/voip/turnServer"] {
        let before = now_ms() / 1000;
        let (status, body) = server.get(path, Some(&alice)).await;
        let after = now_ms() / 1000;
        assert_eq!(status, 200, "{body}");
        let username = body["username"].as_str().unwrap();
        let (expiry, user) = username.split_once(':').unwrap();
        assert_eq!(user, alice_id);
        let expiry: u64 = expiry.parse().unwrap();
        assert!(
            (before + 7200..=after + 7200).contains(&expiry),
            "expiry {expiry}"
        );
        assert_eq!(body["password"], coturn_password(TURN_SECRET, username));
        assert_eq!(body["ttl"], 7200);
        assert_eq!(body["uris"], json!(uris));
    }
    assert_err(&server.get(TURN, None).await, 401, "M_MISSING_TOKEN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_answers_fixed_credentials_or_nothing_when_unconfigured() {
    let server = TestServer::start_with(|c| {
        c.turn.uris = vec!["turn:turn.example.org".into()];
        c.turn.username = "calls".into();
        c.turn.password = "calls password".into();
    })
    .await;
    let (_, alice, _) = server.register("alice", TEST_PASSWORD).await;
    let (status, body) = server.get(TURN, Some(&alice)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({
            "username": "calls",
            "password": "calls password",
            "uris": ["turn:turn.example.org"],
            "ttl": 3600,
        })
    );

    // No TURN server: an empty answer, as Synapse gives.
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", TEST_PASSWORD).await;
    let (status, body) = server.get(TURN, Some(&alice)).await;
    assert_eq!((status, body), (200, json!({})));
}

const RTC_TRANSPORTS: &str = "/_matrix/client/unstable/org.matrix.msc4143/rtc/transports";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_rtc_transports_are_discoverable_as_configured() {
    let livekit = json!({
        "type": "livekit",
        "livekit_service_url": "https://rtc.example.org/livekit/jwt",
        "x_extra": { "kept": true },
    });
    let server = TestServer::start_with(|c| {
        c.well_known.client = "https://matrix.example.org".into();
        c.matrix_rtc.transports = vec![livekit.as_object().unwrap().clone()];
    })
    .await;
    let (_, alice, _) = server.register("alice", TEST_PASSWORD).await;

    let (status, body) = server.get("/.well-known/matrix/client", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["m.homeserver"]["base_url"],
        "https://matrix.example.org"
    );
    assert_eq!(body["org.matrix.msc4143.rtc_foci"], json!([livekit]));

    let (status, body) = server.get(RTC_TRANSPORTS, Some(&alice)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({ "rtc_transports": [livekit] }));
    assert_err(
        &server.get(RTC_TRANSPORTS, None).await,
        401,
        "M_MISSING_TOKEN",
    );
    let (_, versions) = server.get("/_matrix/client/versions", None).await;
    assert_eq!(versions["unstable_features"]["org.matrix.msc4143"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_rtc_transports_discovery_lists_none() {
    let server =
        TestServer::start_with(|c| c.well_known.client = "https://m.example.org".into()).await;
    let (_, alice, _) = server.register("alice", TEST_PASSWORD).await;
    let (status, body) = server.get("/.well-known/matrix/client", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("org.matrix.msc4143.rtc_foci").is_none(), "{body}");
    let (status, body) = server.get(RTC_TRANSPORTS, Some(&alice)).await;
    assert_eq!((status, body), (200, json!({ "rtc_transports": [] })));
}
