//! Rooms shared by two Hearth servers over TLS on loopback: joins through the resident server,
//! messages, state, typing, receipts and presence both ways, and a peer that goes away and comes
//! back to every event it missed.

use serde_json::{json, Value};

use crate::common::{enc, eventually, TestServer, TEST_PASSWORD};

/// Bodies of the text messages of a room as `token`'s server has them, oldest first.
async fn texts(server: &TestServer, token: &str, room: &str) -> Vec<String> {
    let (status, body) = server
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1000",
                enc(room)
            ),
            Some(token),
        )
        .await;
    if status != 200 {
        return Vec::new();
    }
    let mut out: Vec<String> = body["chunk"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect();
    out.reverse();
    out
}

async fn state(
    server: &TestServer,
    token: &str,
    room: &str,
    kind: &str,
    key: &str,
) -> Option<Value> {
    let (status, body) = server
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/{kind}/{}",
                enc(room),
                enc(key)
            ),
            Some(token),
        )
        .await;
    if status != 200 {
        eprintln!("state {kind} on {}: {status} {body}", server.name());
    }
    (status == 200).then_some(body)
}

/// A /sync of `token` (no wait) that `pick` finds something in.
async fn synced<T>(
    server: &TestServer,
    token: &str,
    what: &str,
    pick: impl Fn(&Value) -> Option<T>,
) -> T {
    eventually(20, what, || async {
        let (status, body) = server
            .get("/_matrix/client/v3/sync?timeout=0", Some(token))
            .await;
        if status != 200 {
            return None;
        }
        pick(&body)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_on_one_server_is_joined_from_another_and_everything_flows_both_ways() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let (_alice, alice_tok, _) = a.register("alice", TEST_PASSWORD).await;
    let (bob, bob_tok, _) = b.register("bob", TEST_PASSWORD).await;
    let room = a
        .create_room(
            &alice_tok,
            json!({ "preset": "public_chat", "room_alias_name": "lounge", "name": "Lounge" }),
        )
        .await;
    a.say(&alice_tok, &room, "before bob").await;

    // Bob joins through A; B now holds the room's state.
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/join/{}?via={}", enc(&room), a.name()),
            Some(&bob_tok),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room_id"], room.as_str());
    let name = state(&b, &bob_tok, &room, "m.room.name", "")
        .await
        .expect("B has the name");
    assert_eq!(name["name"], "Lounge");
    // The history before the join came along.
    assert_eq!(texts(&b, &bob_tok, &room).await, ["before bob"]);
    // A has Bob's join.
    eventually(20, "A sees bob joined", || async {
        let m = state(&a, &alice_tok, &room, "m.room.member", &bob).await?;
        (m["membership"] == "join").then_some(())
    })
    .await;

    // Messages both ways.
    a.say(&alice_tok, &room, "hello bob").await;
    eventually(20, "bob gets alice's message", || async {
        texts(&b, &bob_tok, &room)
            .await
            .contains(&"hello bob".to_owned())
            .then_some(())
    })
    .await;
    b.say(&bob_tok, &room, "hi alice").await;
    eventually(20, "alice gets bob's message", || async {
        texts(&a, &alice_tok, &room)
            .await
            .contains(&"hi alice".to_owned())
            .then_some(())
    })
    .await;

    // State both ways: Alice renames the room, Bob changes his name in it.
    let (status, _) = a
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room)),
            Some(&alice_tok),
            json!({ "name": "Living room" }),
        )
        .await;
    assert_eq!(status, 200);
    eventually(20, "B has the new name", || async {
        let n = state(&b, &bob_tok, &room, "m.room.name", "").await?;
        (n["name"] == "Living room").then_some(())
    })
    .await;
    let (status, body) = b
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                enc(&room),
                enc(&bob)
            ),
            Some(&bob_tok),
            json!({ "membership": "join", "displayname": "Bobby" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    eventually(20, "A has bob's new name", || async {
        let m = state(&a, &alice_tok, &room, "m.room.member", &bob).await?;
        (m["displayname"] == "Bobby").then_some(())
    })
    .await;

    // Typing, receipts and presence.
    let (status, _) = b
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/typing/{}",
                enc(&room),
                enc(&bob)
            ),
            Some(&bob_tok),
            json!({ "typing": true, "timeout": 20000 }),
        )
        .await;
    assert_eq!(status, 200);
    synced(&a, &alice_tok, "alice sees bob typing", |s| {
        let ephemeral = s["rooms"]["join"][room.as_str()]["ephemeral"]["events"].as_array()?;
        ephemeral
            .iter()
            .any(|e| {
                e["type"] == "m.typing"
                    && e["content"]["user_ids"]
                        .as_array()
                        .is_some_and(|u| u.iter().any(|u| u == bob.as_str()))
            })
            .then_some(())
    })
    .await;
    let bobs_message = a.say(&alice_tok, &room, "read this").await;
    eventually(20, "bob gets the message to read", || async {
        texts(&b, &bob_tok, &room)
            .await
            .contains(&"read this".to_owned())
            .then_some(())
    })
    .await;
    let (status, _) = b
        .post(
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                enc(&room),
                enc(&bobs_message)
            ),
            Some(&bob_tok),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    synced(&a, &alice_tok, "alice sees bob's receipt", |s| {
        let ephemeral = s["rooms"]["join"][room.as_str()]["ephemeral"]["events"].as_array()?;
        ephemeral
            .iter()
            .any(|e| {
                e["type"] == "m.receipt"
                    && e["content"][bobs_message.as_str()]["m.read"][bob.as_str()].is_object()
            })
            .then_some(())
    })
    .await;
    let (status, _) = b
        .put(
            &format!("/_matrix/client/v3/presence/{}/status", enc(&bob)),
            Some(&bob_tok),
            json!({ "presence": "online", "status_msg": "around" }),
        )
        .await;
    assert_eq!(status, 200);
    synced(&a, &alice_tok, "alice sees bob's presence", |s| {
        s["presence"]["events"]
            .as_array()?
            .iter()
            .any(|e| e["sender"] == bob.as_str() && e["content"]["status_msg"] == "around")
            .then_some(())
    })
    .await;

    // A second user of B joins by alias.
    let (_carol, carol_tok, _) = b.register("carol", TEST_PASSWORD).await;
    let (status, body) = b
        .post(
            &format!(
                "/_matrix/client/v3/join/{}",
                enc(&format!("#lounge:{}", a.name()))
            ),
            Some(&carol_tok),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room_id"], room.as_str());
    b.say(&carol_tok, &room, "carol here").await;
    eventually(20, "alice gets carol's message", || async {
        texts(&a, &alice_tok, &room)
            .await
            .contains(&"carol here".to_owned())
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_was_down_gets_every_event_in_order_once() {
    let a = TestServer::start_federating_with(|c| {
        c.federation.max_backoff = hearth::config::HumanDuration(std::time::Duration::from_secs(1));
    })
    .await;
    let mut b = TestServer::start_federating().await;
    let (_alice, alice_tok, _) = a.register("alice", TEST_PASSWORD).await;
    let (_bob, bob_tok, _) = b.register("bob", TEST_PASSWORD).await;
    let room = a
        .create_room(&alice_tok, json!({ "preset": "public_chat" }))
        .await;
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/join/{}?via={}", enc(&room), a.name()),
            Some(&bob_tok),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    a.say(&alice_tok, &room, "m0").await;
    eventually(20, "bob gets m0", || async {
        (texts(&b, &bob_tok, &room).await == ["m0"]).then_some(())
    })
    .await;

    b.stop().await;
    let sent: Vec<String> = (1..=30).map(|i| format!("m{i}")).collect();
    for text in &sent {
        a.say(&alice_tok, &room, text).await;
    }
    // A keeps them queued for B while B is away.
    let queued = a
        .services()
        .db
        .scan_prefix(hearth::storage::Cf::FedQueue, b.name().as_bytes())
        .count();
    assert!(queued >= 30, "A queued {queued} rows for B");

    b.resume().await;
    let mut expected = vec!["m0".to_owned()];
    expected.extend(sent);
    eventually(30, "B gets all 31 messages in order", || async {
        let got = texts(&b, &bob_tok, &room).await;
        (got == expected).then_some(())
    })
    .await;
    eventually(10, "A's queue for B drains", || async {
        (a.services()
            .db
            .scan_prefix(hearth::storage::Cf::FedQueue, b.name().as_bytes())
            .count()
            == 0)
            .then_some(())
    })
    .await;
}

fn sdk_settings() -> matrix_sdk::config::SyncSettings {
    matrix_sdk::config::SyncSettings::default().timeout(std::time::Duration::from_millis(200))
}

/// The decrypted text bodies `client` has of a room, after syncing once.
async fn decrypted(client: &matrix_sdk::Client, room_id: &ruma::RoomId) -> Vec<String> {
    use matrix_sdk::room::MessagesOptions;
    let _ = client.sync_once(sdk_settings()).await;
    let Some(room) = client.get_room(room_id) else {
        return Vec::new();
    };
    let mut options = MessagesOptions::backward();
    options.limit = ruma::uint!(20);
    let Ok(messages) = room.messages(options).await else {
        return Vec::new();
    };
    messages
        .chunk
        .iter()
        .filter(|ev| ev.encryption_info().is_some())
        .filter_map(|ev| {
            ev.raw()
                .get_field::<Value>("content")
                .ok()
                .flatten()
                .and_then(|c| c["body"].as_str().map(str::to_owned))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_conversation_between_two_servers_decrypts_on_both_sides() {
    use matrix_sdk::ruma::{
        api::client::room::{create_room, Visibility},
        events::room::message::RoomMessageEventContent,
        OwnedServerName,
    };
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let alice = a.sdk_user("alice").await;
    let bob = b.sdk_user("bob").await;
    alice.sync_once(sdk_settings()).await.expect("alice syncs");
    bob.sync_once(sdk_settings()).await.expect("bob syncs");

    let mut request = create_room::v3::Request::new();
    request.preset = Some(create_room::v3::RoomPreset::PublicChat);
    request.visibility = Visibility::Public;
    let room = alice.create_room(request).await.expect("createRoom");
    room.enable_encryption().await.expect("encryption on");
    let via: OwnedServerName = a.name().try_into().unwrap();
    bob.join_room_by_id_or_alias(room.room_id().into(), &[via])
        .await
        .expect("bob joins through A");
    let bob_id = bob.user_id().unwrap().to_owned();
    eventually(20, "alice sees bob in the room", || async {
        alice.sync_once(sdk_settings()).await.ok()?;
        let member = room.get_member_no_sync(&bob_id).await.ok().flatten()?;
        (member.membership() == &matrix_sdk::ruma::events::room::member::MembershipState::Join)
            .then_some(())
    })
    .await;

    room.send(RoomMessageEventContent::text_plain("the secret plan"))
        .await
        .expect("alice sends encrypted");
    // B stored ciphertext only.
    let bob_token = bob.access_token().unwrap();
    eventually(20, "B has the encrypted event", || async {
        let (_, page) = b
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1",
                    enc(room.room_id().as_str())
                ),
                Some(&bob_token),
            )
            .await;
        (page["chunk"][0]["type"] == "m.room.encrypted"
            && !page.to_string().contains("the secret plan"))
        .then_some(())
    })
    .await;
    eventually(30, "bob decrypts alice's message", || async {
        decrypted(&bob, room.room_id())
            .await
            .contains(&"the secret plan".to_owned())
            .then_some(())
    })
    .await;

    let bob_room = bob.get_room(room.room_id()).expect("bob knows the room");
    bob_room
        .send(RoomMessageEventContent::text_plain("agreed"))
        .await
        .expect("bob sends encrypted");
    eventually(30, "alice decrypts bob's reply", || async {
        decrypted(&alice, room.room_id())
            .await
            .contains(&"agreed".to_owned())
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_state_changes_on_two_servers_resolve_to_the_same_state() {
    let mut a = TestServer::start_federating().await;
    let b = TestServer::start_federating_with(|c| {
        // B must not retry on its own while the test builds the fork.
        c.federation.max_backoff =
            hearth::config::HumanDuration(std::time::Duration::from_secs(60));
    })
    .await;
    let _ = tracing_subscriber::fmt()
        .with_env_filter("hearth=info")
        .with_test_writer()
        .try_init();
    eprintln!("A is {}, B is {}", a.name(), b.name());
    let (_alice, alice_tok, _) = a.register("alice", TEST_PASSWORD).await;
    let (bob, bob_tok, _) = b.register("bob", TEST_PASSWORD).await;
    let room = a
        .create_room(&alice_tok, json!({ "preset": "public_chat" }))
        .await;
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/join/{}?via={}", enc(&room), a.name()),
            Some(&bob_tok),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Bob may change state too.
    let mut pl = state(&a, &alice_tok, &room, "m.room.power_levels", "")
        .await
        .unwrap();
    pl["users"][bob.as_str()] = 100.into();
    let (status, _) = a
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.power_levels/",
                enc(&room)
            ),
            Some(&alice_tok),
            pl,
        )
        .await;
    assert_eq!(status, 200);
    eventually(20, "B sees bob's power", || async {
        let pl = state(&b, &bob_tok, &room, "m.room.power_levels", "").await?;
        (pl["users"][bob.as_str()] == 100).then_some(())
    })
    .await;

    // The fork: bob changes the topic while A is away; once A is back, alice changes it before
    // B's retry delivers bob's change, so each event is built without the other.
    a.stop().await;
    let (status, _) = b
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.topic/",
                enc(&room)
            ),
            Some(&bob_tok),
            json!({ "topic": "from B" }),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = b
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room)),
            Some(&bob_tok),
            json!({ "name": "named on B" }),
        )
        .await;
    assert_eq!(status, 200);
    // Let B fail a few times, so its next attempt is seconds away.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    a.resume().await;
    let (status, _) = a
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.topic/",
                enc(&room)
            ),
            Some(&alice_tok),
            json!({ "topic": "from A" }),
        )
        .await;
    assert_eq!(status, 200);

    // Both servers end with both branches and the same resolved state.
    let fork_seen = |s: &TestServer| {
        let room_id = ruma::RoomId::parse(&room).unwrap();
        s.services()
            .rooms
            .state
            .known_room(&room_id)
            .map(|(_, m)| m.extremities.len())
            .unwrap_or(0)
    };
    let resolved = eventually(30, "both servers agree on the state", || async {
        let ta = state(&a, &alice_tok, &room, "m.room.topic", "").await?;
        let tb = state(&b, &bob_tok, &room, "m.room.topic", "").await?;
        let na = state(&a, &alice_tok, &room, "m.room.name", "").await?;
        let nb = state(&b, &bob_tok, &room, "m.room.name", "").await?;
        let both_have_both = texts_of_topics(&a, &alice_tok, &room).await == 2
            && texts_of_topics(&b, &bob_tok, &room).await == 2;
        (both_have_both && ta == tb && na == nb).then_some((ta, na))
    })
    .await;
    assert!(
        resolved.0["topic"] == "from A" || resolved.0["topic"] == "from B",
        "{resolved:?}"
    );
    // Bob's name change had no rival: it holds on both sides.
    assert_eq!(resolved.1["name"], "named on B");
    assert!(fork_seen(&a) >= 1 && fork_seen(&b) >= 1);
}

/// How many topic changes a server has in the room's timeline.
async fn texts_of_topics(server: &TestServer, token: &str, room: &str) -> usize {
    let (_, body) = server
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1000",
                enc(room)
            ),
            Some(token),
        )
        .await;
    body["chunk"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.room.topic" && e["content"]["topic"] != "")
        .filter(|e| e["content"]["topic"] == "from A" || e["content"]["topic"] == "from B")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_cross_servers_and_are_accepted_or_rejected() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let (_alice, alice_tok, _) = a.register("alice", TEST_PASSWORD).await;
    let (bob, bob_tok, _) = b.register("bob", TEST_PASSWORD).await;
    let (carol, carol_tok, _) = b.register("carol", TEST_PASSWORD).await;
    let room = a
        .create_room(
            &alice_tok,
            json!({ "preset": "private_chat", "name": "Secret" }),
        )
        .await;
    for who in [&bob, &carol] {
        let (status, body) = a
            .post(
                &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
                Some(&alice_tok),
                json!({ "user_id": who }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    // The invite reaches bob's /sync on B with the room's name.
    synced(&b, &bob_tok, "bob's invite", |s| {
        s["rooms"]["invite"][room.as_str()]["invite_state"]["events"]
            .as_array()?
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Secret")
            .then_some(())
    })
    .await;
    // An uninvited user of B cannot get in; bob can, through the inviting server.
    let (_dave, dave_tok, _) = b.register("dave", TEST_PASSWORD).await;
    let (status, _) = b
        .post(
            &format!("/_matrix/client/v3/join/{}?via={}", enc(&room), a.name()),
            Some(&dave_tok),
            json!({}),
        )
        .await;
    assert_ne!(status, 200, "dave was not invited");
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
            Some(&bob_tok),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    b.say(&bob_tok, &room, "thanks for the invite").await;
    eventually(20, "alice gets bob's message", || async {
        texts(&a, &alice_tok, &room)
            .await
            .contains(&"thanks for the invite".to_owned())
            .then_some(())
    })
    .await;
    // Carol rejects hers; A records the leave.
    synced(&b, &carol_tok, "carol's invite", |s| {
        s["rooms"]["invite"][room.as_str()]
            .is_object()
            .then_some(())
    })
    .await;
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
            Some(&carol_tok),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    eventually(20, "A has carol's rejection", || async {
        let m = state(&a, &alice_tok, &room, "m.room.member", &carol).await?;
        (m["membership"] == "leave").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_directories_and_openid_tokens() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let (_alice, alice_tok, _) = a.register("alice", TEST_PASSWORD).await;
    let (bob, bob_tok, _) = b.register("bob", TEST_PASSWORD).await;
    let room = a
        .create_room(
            &alice_tok,
            json!({ "preset": "public_chat", "visibility": "public", "name": "Commons" }),
        )
        .await;
    // Bob browses A's directory through B.
    let (status, body) = b
        .get(
            &format!("/_matrix/client/v3/publicRooms?server={}", a.name()),
            Some(&bob_tok),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["room_id"] == room.as_str()),
        "{body}"
    );
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/publicRooms?server={}", a.name()),
            Some(&bob_tok),
            json!({ "filter": { "generic_search_term": "commons" } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["chunk"][0]["name"], "Commons", "{body}");
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/publicRooms?server={}", a.name()),
            Some(&bob_tok),
            json!({ "filter": { "generic_search_term": "nothing like it" } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["chunk"], json!([]));

    // An OpenID token of bob's, checked with B the way a third party does.
    let (status, token) = b
        .post(
            &format!("/_matrix/client/v3/user/{}/openid/request_token", enc(&bob)),
            Some(&bob_tok),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["matrix_server_name"], b.name());
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let check = |t: String| {
        let http = http.clone();
        let url = format!(
            "{}/_matrix/federation/v1/openid/userinfo?access_token={t}",
            b.federation_url()
        );
        async move {
            let r = http.get(url).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, info) = check(token["access_token"].as_str().unwrap().to_owned()).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["sub"], bob.as_str());
    let (status, info) = check("not-a-token".into()).await;
    assert_eq!(status, 401, "{info}");
    assert_eq!(info["errcode"], "M_UNKNOWN_TOKEN");
    // Nobody gets a token for somebody else.
    let (status, _) = a
        .post(
            &format!("/_matrix/client/v3/user/{}/openid/request_token", enc(&bob)),
            Some(&alice_tok),
            json!({}),
        )
        .await;
    assert_eq!(status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_of_another_server_knocks_is_invited_and_joins() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let (_alice, alice_tok, _) = a.register("alice", TEST_PASSWORD).await;
    let (bob, bob_tok, _) = b.register("bob", TEST_PASSWORD).await;
    let room = a
        .create_room(
            &alice_tok,
            json!({
                "preset": "private_chat",
                "name": "Knock first",
                "initial_state": [{ "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": "knock" } }],
            }),
        )
        .await;
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/knock/{}?via={}", enc(&room), a.name()),
            Some(&bob_tok),
            json!({ "reason": "let me in" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    synced(&b, &bob_tok, "bob's knock in his sync", |s| {
        s["rooms"]["knock"][room.as_str()]["knock_state"]["events"]
            .as_array()?
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Knock first")
            .then_some(())
    })
    .await;
    let m = state(&a, &alice_tok, &room, "m.room.member", &bob)
        .await
        .expect("A has the knock");
    assert_eq!(m["membership"], "knock");
    assert_eq!(m["reason"], "let me in");
    let (status, body) = a
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            Some(&alice_tok),
            json!({ "user_id": bob }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    synced(&b, &bob_tok, "bob's invite", |s| {
        s["rooms"]["invite"][room.as_str()]
            .is_object()
            .then_some(())
    })
    .await;
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&room)),
            Some(&bob_tok),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    eventually(20, "A has bob joined", || async {
        let m = state(&a, &alice_tok, &room, "m.room.member", &bob).await?;
        (m["membership"] == "join").then_some(())
    })
    .await;
}
