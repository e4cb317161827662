//! Rooms shared with a real Synapse, in room versions 11 and 12: Synapse users join a Hearth room
//! and Hearth users join a Synapse room, by alias and by ID; messages, state, EDUs, redactions,
//! power levels, leaves and rejoins both ways; forks from both sides talking at once; Hearth
//! catching up after downtime; and each side looks up the other's profiles and aliases.

use serde_json::{json, Value};

use crate::{
    common::{assert_err, enc, eventually, TestServer, TEST_PASSWORD},
    synapse::Synapse,
};

const VERSIONS: [&str; 2] = ["11", "12"];

/// The client API of either server, for the helpers below.
trait ClientApi {
    async fn get_json(&self, path: &str, token: &str) -> (u16, Value);
    async fn put_json(&self, path: &str, token: &str, body: Value) -> (u16, Value);
    fn label(&self) -> String;
}

impl ClientApi for TestServer {
    async fn get_json(&self, path: &str, token: &str) -> (u16, Value) {
        self.get(path, Some(token)).await
    }
    async fn put_json(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.put(path, Some(token), body).await
    }
    fn label(&self) -> String {
        format!("Hearth {}", self.name())
    }
}

impl ClientApi for Synapse {
    async fn get_json(&self, path: &str, token: &str) -> (u16, Value) {
        self.get(path, Some(token)).await
    }
    async fn put_json(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.put(path, Some(token), body).await
    }
    fn label(&self) -> String {
        format!("Synapse {}", self.server_name())
    }
}

/// Bodies of the text messages of a room as `token`'s server has them, oldest first.
async fn texts(server: &impl ClientApi, token: &str, room: &str) -> Vec<String> {
    let (status, body) = server
        .get_json(
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1000",
                enc(room)
            ),
            token,
        )
        .await;
    if status != 200 {
        eprintln!("messages on {}: {status} {body}", server.label());
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

/// Waits until `token`'s server shows `text` in the room.
async fn sees(server: &impl ClientApi, token: &str, room: &str, text: &str) {
    eventually(
        30,
        &format!("{} shows {text:?}", server.label()),
        || async {
            texts(server, token, room)
                .await
                .iter()
                .any(|t| t == text)
                .then_some(())
        },
    )
    .await;
}

/// A state event's content as `token`'s server has it.
async fn state(
    server: &impl ClientApi,
    token: &str,
    room: &str,
    kind: &str,
    key: &str,
) -> Option<Value> {
    let (status, body) = server
        .get_json(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/{kind}/{}",
                enc(room),
                enc(key)
            ),
            token,
        )
        .await;
    (status == 200).then_some(body)
}

/// Waits until `token`'s server has `user` joined to the room.
async fn sees_joined(server: &impl ClientApi, token: &str, room: &str, user: &str) {
    eventually(
        30,
        &format!("{} has {user} joined", server.label()),
        || async {
            let m = state(server, token, room, "m.room.member", user).await?;
            (m["membership"] == "join").then_some(())
        },
    )
    .await;
}

/// The room version as `token`'s server has it in the create event.
async fn room_version(server: &impl ClientApi, token: &str, room: &str) -> Value {
    let create = state(server, token, room, "m.room.create", "")
        .await
        .unwrap_or_else(|| panic!("{} has no create event", server.label()));
    create["room_version"].clone()
}

/// Sends a text message on Synapse; the event ID.
async fn synapse_say(synapse: &Synapse, token: &str, room: &str, text: &str) -> String {
    let (status, body) = synapse
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
                enc(room),
                enc(text)
            ),
            Some(token),
            json!({ "msgtype": "m.text", "body": text }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["event_id"].as_str().expect("event_id").to_owned()
}

/// Polls /sync (no wait) on `token`'s server until `pick` finds something in it.
async fn synced<T>(
    server: &impl ClientApi,
    token: &str,
    what: &str,
    pick: impl Fn(&Value) -> Option<T>,
) -> T {
    eventually(30, &format!("{}: {what}", server.label()), || async {
        let (status, body) = server
            .get_json("/_matrix/client/v3/sync?timeout=0", token)
            .await;
        if status != 200 {
            return None;
        }
        pick(&body)
    })
    .await
}

/// Whether a /sync shows `user` typing in the room.
fn typing(sync: &Value, room: &str, user: &str) -> Option<()> {
    sync["rooms"]["join"][room]["ephemeral"]["events"]
        .as_array()?
        .iter()
        .any(|e| {
            e["type"] == "m.typing"
                && e["content"]["user_ids"]
                    .as_array()
                    .is_some_and(|u| u.iter().any(|u| u == user))
        })
        .then_some(())
}

/// Whether a /sync shows `user`'s read receipt on `event` in the room.
fn receipt(sync: &Value, room: &str, user: &str, event: &str) -> Option<()> {
    sync["rooms"]["join"][room]["ephemeral"]["events"]
        .as_array()?
        .iter()
        .any(|e| e["type"] == "m.receipt" && e["content"][event]["m.read"][user].is_object())
        .then_some(())
}

/// Whether a /sync shows `user`'s presence with this status message.
fn presence(sync: &Value, user: &str, status_msg: &str) -> Option<()> {
    sync["presence"]["events"]
        .as_array()?
        .iter()
        .any(|e| e["sender"] == user && e["content"]["status_msg"] == status_msg)
        .then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synapse_users_join_hearth_rooms_by_alias_and_by_id() {
    let hearth = TestServer::start_federating().await;
    let synapse = Synapse::start().await;
    let (alice, alice_tok, _) = hearth.register("alice", TEST_PASSWORD).await;
    let (bob, bob_tok) = synapse.register("bob").await;
    let (carol, carol_tok) = synapse.register("carol").await;

    for version in VERSIONS {
        let alias_name = format!("hearth-v{version}");
        let room = hearth
            .create_room(
                &alice_tok,
                json!({
                    "room_version": version,
                    "preset": "public_chat",
                    "room_alias_name": alias_name,
                    "name": format!("Hearth v{version}"),
                }),
            )
            .await;
        let before = format!("v{version}: before anyone from Synapse");
        hearth.say(&alice_tok, &room, &before).await;

        // Bob joins by alias: Synapse asks Hearth's /query/directory, then joins through it.
        let alias = format!("#{alias_name}:{}", hearth.name());
        let (status, body) = synapse
            .post(
                &format!("/_matrix/client/v3/join/{}", enc(&alias)),
                Some(&bob_tok),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "v{version}: bob joins {alias}: {body}");
        assert_eq!(body["room_id"], room.as_str());
        assert_eq!(room_version(&synapse, &bob_tok, &room).await, version);
        // Carol joins too, by ID: Synapse is in the room now, so this join is Synapse's own,
        // and reaches Hearth in a transaction.
        let (status, body) = synapse
            .post(
                &format!("/_matrix/client/v3/join/{}", enc(&room)),
                Some(&carol_tok),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "v{version}: carol joins {room}: {body}");
        sees_joined(&hearth, &alice_tok, &room, &bob).await;
        sees_joined(&hearth, &alice_tok, &room, &carol).await;
        sees_joined(&synapse, &bob_tok, &room, &alice).await;

        // Messages both ways, and the one from before the joins (Synapse backfills it).
        let from_hearth = format!("v{version}: hello from Hearth");
        hearth.say(&alice_tok, &room, &from_hearth).await;
        sees(&synapse, &bob_tok, &room, &from_hearth).await;
        sees(&synapse, &carol_tok, &room, &from_hearth).await;
        sees(&synapse, &bob_tok, &room, &before).await;
        let from_bob = format!("v{version}: hello from bob on Synapse");
        synapse_say(&synapse, &bob_tok, &room, &from_bob).await;
        let from_carol = format!("v{version}: hello from carol on Synapse");
        synapse_say(&synapse, &carol_tok, &room, &from_carol).await;
        sees(&hearth, &alice_tok, &room, &from_bob).await;
        sees(&hearth, &alice_tok, &room, &from_carol).await;

        // A state change on Hearth's side reaches Synapse.
        let topic = format!("v{version}: a topic set on Hearth");
        let (status, body) = hearth
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.topic/",
                    enc(&room)
                ),
                Some(&alice_tok),
                json!({ "topic": topic }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        eventually(30, "Synapse has the topic", || async {
            let t = state(&synapse, &bob_tok, &room, "m.room.topic", "").await?;
            (t["topic"] == topic.as_str()).then_some(())
        })
        .await;
        // And one on Synapse's side (bob's name in the room) reaches Hearth.
        let (status, body) = synapse
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                    enc(&room),
                    enc(&bob)
                ),
                Some(&bob_tok),
                json!({ "membership": "join", "displayname": "Bob in the room" }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        eventually(30, "Hearth has bob's name in the room", || async {
            let m = state(&hearth, &alice_tok, &room, "m.room.member", &bob).await?;
            (m["displayname"] == "Bob in the room").then_some(())
        })
        .await;

        // A room without an alias, joined by ID through Hearth named as the server to join via.
        let room = hearth
            .create_room(
                &alice_tok,
                json!({ "room_version": version, "preset": "public_chat" }),
            )
            .await;
        let (status, body) = synapse
            .post(
                &format!(
                    "/_matrix/client/v3/join/{}?server_name={}",
                    enc(&room),
                    enc(&hearth.name())
                ),
                Some(&carol_tok),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "v{version}: carol joins {room}: {body}");
        assert_eq!(body["room_id"], room.as_str());
        assert_eq!(room_version(&synapse, &carol_tok, &room).await, version);
        sees_joined(&hearth, &alice_tok, &room, &carol).await;
        let from_hearth = format!("v{version}: hello carol");
        hearth.say(&alice_tok, &room, &from_hearth).await;
        sees(&synapse, &carol_tok, &room, &from_hearth).await;
        let from_carol = format!("v{version}: hello alice");
        synapse_say(&synapse, &carol_tok, &room, &from_carol).await;
        sees(&hearth, &alice_tok, &room, &from_carol).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hearth_users_join_synapse_rooms_by_alias_and_by_id() {
    let hearth = TestServer::start_federating().await;
    let synapse = Synapse::start().await;
    let (sam, sam_tok) = synapse.register("sam").await;
    let (hal, hal_tok, _) = hearth.register("hal", TEST_PASSWORD).await;
    let (hugh, hugh_tok, _) = hearth.register("hugh", TEST_PASSWORD).await;

    for version in VERSIONS {
        let alias_name = format!("synapse-v{version}");
        let (status, body) = synapse
            .post(
                "/_matrix/client/v3/createRoom",
                Some(&sam_tok),
                json!({
                    "room_version": version,
                    "preset": "public_chat",
                    "room_alias_name": alias_name,
                    "name": format!("Synapse v{version}"),
                }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let room = body["room_id"].as_str().expect("room_id").to_owned();
        let before = format!("v{version}: before anyone from Hearth");
        synapse_say(&synapse, &sam_tok, &room, &before).await;

        // Hal joins by alias, resolved by Synapse's /query/directory.
        let alias = format!("#{alias_name}:{}", synapse.server_name());
        let (status, body) = hearth
            .post(
                &format!("/_matrix/client/v3/join/{}", enc(&alias)),
                Some(&hal_tok),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "v{version}: hal joins {alias}: {body}");
        assert_eq!(body["room_id"], room.as_str());
        assert_eq!(room_version(&hearth, &hal_tok, &room).await, version);
        // Hugh joins too, by ID: Hearth is in the room now, so this join is Hearth's own, and
        // reaches Synapse in a transaction.
        let (status, body) = hearth
            .post(
                &format!("/_matrix/client/v3/join/{}", enc(&room)),
                Some(&hugh_tok),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "v{version}: hugh joins {room}: {body}");
        let name = state(&hearth, &hal_tok, &room, "m.room.name", "")
            .await
            .expect("Hearth has the room's name");
        assert_eq!(name["name"], format!("Synapse v{version}"));
        sees_joined(&synapse, &sam_tok, &room, &hal).await;
        sees_joined(&synapse, &sam_tok, &room, &hugh).await;
        sees_joined(&hearth, &hal_tok, &room, &sam).await;

        // Messages both ways.
        let from_synapse = format!("v{version}: hello from Synapse");
        synapse_say(&synapse, &sam_tok, &room, &from_synapse).await;
        sees(&hearth, &hal_tok, &room, &from_synapse).await;
        sees(&hearth, &hugh_tok, &room, &from_synapse).await;
        let from_hal = format!("v{version}: hello from hal on Hearth");
        hearth.say(&hal_tok, &room, &from_hal).await;
        let from_hugh = format!("v{version}: hello from hugh on Hearth");
        let hughs_message = hearth.say(&hugh_tok, &room, &from_hugh).await;
        sees(&synapse, &sam_tok, &room, &from_hal).await;
        sees(&synapse, &sam_tok, &room, &from_hugh).await;

        // Typing, receipts and presence both ways (EDUs).
        let (status, body) = hearth
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/typing/{}",
                    enc(&room),
                    enc(&hal)
                ),
                Some(&hal_tok),
                json!({ "typing": true, "timeout": 20000 }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        synced(&synapse, &sam_tok, "hal typing", |s| typing(s, &room, &hal)).await;
        let (status, body) = synapse
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/typing/{}",
                    enc(&room),
                    enc(&sam)
                ),
                Some(&sam_tok),
                json!({ "typing": true, "timeout": 20000 }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        synced(&hearth, &hal_tok, "sam typing", |s| typing(s, &room, &sam)).await;
        let sams_message = format!("v{version}: read this, hal");
        let sams_message = synapse_say(&synapse, &sam_tok, &room, &sams_message).await;
        let (status, body) = synapse
            .post(
                &format!(
                    "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                    enc(&room),
                    enc(&hughs_message)
                ),
                Some(&sam_tok),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        synced(&hearth, &hal_tok, "sam's receipt", |s| {
            receipt(s, &room, &sam, &hughs_message)
        })
        .await;
        eventually(30, "Hearth has sam's message to read", || async {
            let (status, _) = hearth
                .get(
                    &format!(
                        "/_matrix/client/v3/rooms/{}/event/{}",
                        enc(&room),
                        enc(&sams_message)
                    ),
                    Some(&hal_tok),
                )
                .await;
            (status == 200).then_some(())
        })
        .await;
        let (status, body) = hearth
            .post(
                &format!(
                    "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                    enc(&room),
                    enc(&sams_message)
                ),
                Some(&hal_tok),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        synced(&synapse, &sam_tok, "hal's receipt", |s| {
            receipt(s, &room, &hal, &sams_message)
        })
        .await;
        let hal_status = format!("hal around for v{version}");
        let (status, body) = hearth
            .put(
                &format!("/_matrix/client/v3/presence/{}/status", enc(&hal)),
                Some(&hal_tok),
                json!({ "presence": "online", "status_msg": hal_status }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        synced(&synapse, &sam_tok, "hal's presence", |s| {
            presence(s, &hal, &hal_status)
        })
        .await;
        let sam_status = format!("sam around for v{version}");
        let (status, body) = synapse
            .put(
                &format!("/_matrix/client/v3/presence/{}/status", enc(&sam)),
                Some(&sam_tok),
                json!({ "presence": "online", "status_msg": sam_status }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        synced(&hearth, &hal_tok, "sam's presence", |s| {
            presence(s, &sam, &sam_status)
        })
        .await;

        // A state change on Synapse's side reaches Hearth, one on Hearth's reaches Synapse.
        let topic = format!("v{version}: a topic set on Synapse");
        let (status, body) = synapse
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.topic/",
                    enc(&room)
                ),
                Some(&sam_tok),
                json!({ "topic": topic }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        eventually(30, "Hearth has the topic", || async {
            let t = state(&hearth, &hal_tok, &room, "m.room.topic", "").await?;
            (t["topic"] == topic.as_str()).then_some(())
        })
        .await;
        let (status, body) = hearth
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                    enc(&room),
                    enc(&hal)
                ),
                Some(&hal_tok),
                json!({ "membership": "join", "displayname": "Hal in the room" }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        eventually(30, "Synapse has hal's name in the room", || async {
            let m = state(&synapse, &sam_tok, &room, "m.room.member", &hal).await?;
            (m["displayname"] == "Hal in the room").then_some(())
        })
        .await;

        // A room without an alias, joined by ID through Synapse named as the server to join via.
        let (status, body) = synapse
            .post(
                "/_matrix/client/v3/createRoom",
                Some(&sam_tok),
                json!({ "room_version": version, "preset": "public_chat" }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let room = body["room_id"].as_str().expect("room_id").to_owned();
        let (status, body) = hearth
            .post(
                &format!(
                    "/_matrix/client/v3/join/{}?via={}",
                    enc(&room),
                    enc(synapse.server_name().as_str())
                ),
                Some(&hugh_tok),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "v{version}: hugh joins {room}: {body}");
        assert_eq!(body["room_id"], room.as_str());
        assert_eq!(room_version(&hearth, &hugh_tok, &room).await, version);
        sees_joined(&synapse, &sam_tok, &room, &hugh).await;
        let from_synapse = format!("v{version}: hello hugh");
        synapse_say(&synapse, &sam_tok, &room, &from_synapse).await;
        sees(&hearth, &hugh_tok, &room, &from_synapse).await;
        let from_hugh = format!("v{version}: hello sam");
        hearth.say(&hugh_tok, &room, &from_hugh).await;
        sees(&synapse, &sam_tok, &room, &from_hugh).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hearth_and_synapse_look_up_each_others_profiles_and_aliases() {
    let hearth = TestServer::start_federating().await;
    let synapse = Synapse::start().await;
    let (alice, alice_tok, _) = hearth.register("alice", TEST_PASSWORD).await;
    let (sam, sam_tok) = synapse.register("sam").await;

    let (status, body) = synapse
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&sam)),
            Some(&sam_tok),
            json!({ "displayname": "Sam of Synapse" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = hearth
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&alice)),
            Some(&alice_tok),
            json!({ "displayname": "Alice of Hearth" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Hearth's client API answers for Synapse's users by asking Synapse.
    let (status, body) = hearth
        .get(&format!("/_matrix/client/v3/profile/{}", enc(&sam)), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["displayname"], "Sam of Synapse");
    // Unset fields are absent, not null.
    assert!(body.get("avatar_url").is_none(), "{body}");
    let (status, body) = hearth
        .get(
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&sam)),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["displayname"], "Sam of Synapse");
    assert_err(
        &hearth
            .get(
                &format!("/_matrix/client/v3/profile/{}/avatar_url", enc(&sam)),
                None,
            )
            .await,
        404,
        "M_NOT_FOUND",
    );
    let nobody = format!("@nobody:{}", synapse.server_name());
    assert_err(
        &hearth
            .get(
                &format!("/_matrix/client/v3/profile/{}", enc(&nobody)),
                None,
            )
            .await,
        404,
        "M_NOT_FOUND",
    );

    // Synapse's client API answers for Hearth's users by asking Hearth.
    let (status, body) = synapse
        .get(
            &format!("/_matrix/client/v3/profile/{}", enc(&alice)),
            Some(&sam_tok),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["displayname"], "Alice of Hearth");
    let nobody = format!("@nobody:{}", hearth.name());
    let (status, body) = synapse
        .get(
            &format!("/_matrix/client/v3/profile/{}", enc(&nobody)),
            Some(&sam_tok),
        )
        .await;
    assert_eq!(status, 404, "{body}");

    // Aliases: each resolves the other's through /query/directory.
    let (status, body) = synapse
        .post(
            "/_matrix/client/v3/createRoom",
            Some(&sam_tok),
            json!({
                "preset": "public_chat",
                "visibility": "public",
                "room_alias_name": "plaza",
                "name": "The Plaza",
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let synapse_room = body["room_id"].as_str().expect("room_id").to_owned();
    let hearth_room = hearth
        .create_room(
            &alice_tok,
            json!({
                "preset": "public_chat",
                "visibility": "public",
                "room_alias_name": "hall",
                "name": "The Hall",
            }),
        )
        .await;

    let synapse_alias = format!("#plaza:{}", synapse.server_name());
    let (status, body) = hearth
        .get(
            &format!("/_matrix/client/v3/directory/room/{}", enc(&synapse_alias)),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room_id"], synapse_room.as_str());
    let servers = body["servers"].as_array().expect("servers");
    assert!(
        servers.iter().any(|s| s == synapse.server_name().as_str()),
        "{body}"
    );
    assert_err(
        &hearth
            .get(
                &format!(
                    "/_matrix/client/v3/directory/room/{}",
                    enc(&format!("#nowhere:{}", synapse.server_name()))
                ),
                None,
            )
            .await,
        404,
        "M_NOT_FOUND",
    );

    let hearth_alias = format!("#hall:{}", hearth.name());
    let (status, body) = synapse
        .get(
            &format!("/_matrix/client/v3/directory/room/{}", enc(&hearth_alias)),
            Some(&sam_tok),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room_id"], hearth_room.as_str());
    assert!(
        body["servers"]
            .as_array()
            .expect("servers")
            .iter()
            .any(|s| s == hearth.name().as_str()),
        "{body}"
    );
    let (status, body) = synapse
        .get(
            &format!(
                "/_matrix/client/v3/directory/room/{}",
                enc(&format!("#nowhere:{}", hearth.name()))
            ),
            Some(&sam_tok),
        )
        .await;
    assert_eq!(status, 404, "{body}");

    // Public room directories: each lists the other's rooms (federation /publicRooms), in full
    // and filtered.
    let listed = |body: &Value, room: &str, name: &str| {
        body["chunk"]
            .as_array()
            .is_some_and(|c| c.iter().any(|r| r["room_id"] == room && r["name"] == name))
    };
    let synapse_server = synapse.server_name();
    let (status, body) = hearth
        .get(
            &format!("/_matrix/client/v3/publicRooms?server={synapse_server}"),
            Some(&alice_tok),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(listed(&body, &synapse_room, "The Plaza"), "{body}");
    let (status, body) = hearth
        .post(
            &format!("/_matrix/client/v3/publicRooms?server={synapse_server}"),
            Some(&alice_tok),
            json!({ "filter": { "generic_search_term": "plaza" }, "limit": 5 }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(listed(&body, &synapse_room, "The Plaza"), "{body}");
    let hearth_server = hearth.name();
    let (status, body) = synapse
        .get(
            &format!("/_matrix/client/v3/publicRooms?server={hearth_server}"),
            Some(&sam_tok),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(listed(&body, &hearth_room, "The Hall"), "{body}");
    let (status, body) = synapse
        .post(
            &format!("/_matrix/client/v3/publicRooms?server={hearth_server}"),
            Some(&sam_tok),
            json!({ "filter": { "generic_search_term": "hall" }, "limit": 5 }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(listed(&body, &hearth_room, "The Hall"), "{body}");
    let (status, body) = synapse
        .post(
            &format!("/_matrix/client/v3/publicRooms?server={hearth_server}"),
            Some(&sam_tok),
            json!({ "filter": { "generic_search_term": "nothing like it" } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["chunk"], json!([]), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hearth_back_from_downtime_catches_up_on_a_synapse_room() {
    let mut hearth = TestServer::start_federating().await;
    // Synapse gives up on a transaction at the first refused connection and, with a retry
    // interval over an hour, drops what it could not send and marks Hearth for catch-up. When
    // Hearth talks to it again, Synapse sends the room's newest events only; Hearth fetches what
    // lies before them (get_missing_events, more than one answer's worth).
    let synapse = Synapse::start_with(|c| {
        c["federation"]["max_long_retries"] = 0.into();
        c["federation"]["destination_min_retry_interval"] = (2 * 3600 * 1000).into();
        c["federation"]["destination_max_retry_interval"] = (4 * 3600 * 1000).into();
    })
    .await;
    let (_sam, sam_tok) = synapse.register("sam").await;
    let (hal, hal_tok, _) = hearth.register("hal", TEST_PASSWORD).await;

    for version in VERSIONS {
        let (status, body) = synapse
            .post(
                "/_matrix/client/v3/createRoom",
                Some(&sam_tok),
                json!({ "room_version": version, "preset": "public_chat" }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let room = body["room_id"].as_str().expect("room_id").to_owned();
        let (status, body) = hearth
            .post(
                &format!(
                    "/_matrix/client/v3/join/{}?via={}",
                    enc(&room),
                    enc(synapse.server_name().as_str())
                ),
                Some(&hal_tok),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "v{version}: {body}");
        sees_joined(&synapse, &sam_tok, &room, &hal).await;
        let m0 = format!("v{version}: m0");
        synapse_say(&synapse, &sam_tok, &room, &m0).await;
        sees(&hearth, &hal_tok, &room, &m0).await;

        hearth.stop().await;
        // More than one get_missing_events answer holds (20).
        let missed: Vec<String> = (1..=30).map(|i| format!("v{version}: m{i}")).collect();
        for text in &missed {
            synapse_say(&synapse, &sam_tok, &room, text).await;
        }
        hearth.resume().await;
        // Hal speaks first: his transaction tells Synapse that Hearth is back.
        let from_hal = format!("v{version}: hal is back");
        hearth.say(&hal_tok, &room, &from_hal).await;
        sees(&synapse, &sam_tok, &room, &from_hal).await;
        let back = format!("v{version}: welcome back");
        synapse_say(&synapse, &sam_tok, &room, &back).await;
        sees(&hearth, &hal_tok, &room, &back).await;
        // Every missed message, in order among themselves (where hal's lands among them is the
        // order Hearth learnt of them).
        let mut want = vec![m0.clone()];
        want.extend(missed);
        want.push(back);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let got = texts(&hearth, &hal_tok, &room).await;
            let sams: Vec<&String> = got.iter().filter(|t| **t != from_hal).collect();
            if sams.iter().copied().eq(want.iter()) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "v{version}: Hearth has {got:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// Waits until `token`'s server has `event` redacted (no body left).
async fn sees_redacted(server: &impl ClientApi, token: &str, room: &str, event: &str) {
    eventually(
        30,
        &format!("{} has {event} redacted", server.label()),
        || async {
            let (status, body) = server
                .get_json(
                    &format!(
                        "/_matrix/client/v3/rooms/{}/event/{}",
                        enc(room),
                        enc(event)
                    ),
                    token,
                )
                .await;
            (status == 200 && body["content"].get("body").is_none()).then_some(())
        },
    )
    .await;
}

/// Waits until `token`'s server has `user`'s membership in the room as `membership`.
async fn sees_membership(
    server: &impl ClientApi,
    token: &str,
    room: &str,
    user: &str,
    membership: &str,
) {
    eventually(
        30,
        &format!("{} has {user} {membership}", server.label()),
        || async {
            let m = state(server, token, room, "m.room.member", user).await?;
            (m["membership"] == membership).then_some(())
        },
    )
    .await;
}

/// Gives `user` power level 50 in the room, as `token`'s user (who may).
async fn promote(server: &impl ClientApi, token: &str, room: &str, user: &str) {
    let path = format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.power_levels/",
        enc(room)
    );
    let (status, mut levels) = server.get_json(&path, token).await;
    assert_eq!(status, 200, "{levels}");
    levels["users"][user] = 50.into();
    let (status, body) = server.put_json(&path, token, levels).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_messages_redactions_powers_leaves_and_rejoins_with_synapse() {
    let hearth = TestServer::start_federating().await;
    let synapse = Synapse::start().await;
    let (sam, sam_tok) = synapse.register("sam").await;
    let (hal, hal_tok, _) = hearth.register("hal", TEST_PASSWORD).await;

    for version in VERSIONS {
        // One room on each side, the other side's user joined.
        let (status, body) = synapse
            .post(
                "/_matrix/client/v3/createRoom",
                Some(&sam_tok),
                json!({ "room_version": version, "preset": "public_chat" }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let on_synapse = body["room_id"].as_str().expect("room_id").to_owned();
        let on_hearth = hearth
            .create_room(
                &hal_tok,
                json!({ "room_version": version, "preset": "public_chat" }),
            )
            .await;
        let (status, body) = hearth
            .post(
                &format!(
                    "/_matrix/client/v3/join/{}?via={}",
                    enc(&on_synapse),
                    enc(synapse.server_name().as_str())
                ),
                Some(&hal_tok),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = synapse
            .post(
                &format!(
                    "/_matrix/client/v3/join/{}?server_name={}",
                    enc(&on_hearth),
                    enc(&hearth.name())
                ),
                Some(&sam_tok),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        sees_joined(&synapse, &sam_tok, &on_synapse, &hal).await;
        sees_joined(&hearth, &hal_tok, &on_hearth, &sam).await;

        for room in [&on_synapse, &on_hearth] {
            // Both sides talk at once: the DAG forks and each side merges the other's branch.
            let hearth_side = async {
                for i in 0..5 {
                    hearth
                        .say(&hal_tok, room, &format!("v{version}: hal {i} in {room}"))
                        .await;
                }
            };
            let synapse_side = async {
                for i in 0..5 {
                    synapse_say(
                        &synapse,
                        &sam_tok,
                        room,
                        &format!("v{version}: sam {i} in {room}"),
                    )
                    .await;
                }
            };
            tokio::join!(hearth_side, synapse_side);
            for i in 0..5 {
                for who in ["hal", "sam"] {
                    let text = format!("v{version}: {who} {i} in {room}");
                    sees(&hearth, &hal_tok, room, &text).await;
                    sees(&synapse, &sam_tok, room, &text).await;
                }
            }
            // Both branches end in one: a message after the merge has every extremity as its
            // ancestor, and both sides take it.
            let after = format!("v{version}: after the fork in {room}");
            hearth.say(&hal_tok, room, &after).await;
            sees(&synapse, &sam_tok, room, &after).await;

            // Redactions both ways (v11 and later carry `redacts` in the content).
            let hals = hearth
                .say(&hal_tok, room, &format!("v{version}: hal regrets this"))
                .await;
            let sams = synapse_say(
                &synapse,
                &sam_tok,
                room,
                &format!("v{version}: sam regrets this"),
            )
            .await;
            sees(
                &synapse,
                &sam_tok,
                room,
                &format!("v{version}: hal regrets this"),
            )
            .await;
            sees(
                &hearth,
                &hal_tok,
                room,
                &format!("v{version}: sam regrets this"),
            )
            .await;
            let (status, body) = hearth
                .put(
                    &format!(
                        "/_matrix/client/v3/rooms/{}/redact/{}/r-{version}",
                        enc(room),
                        enc(&hals)
                    ),
                    Some(&hal_tok),
                    json!({ "reason": "oops" }),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            let (status, body) = synapse
                .put(
                    &format!(
                        "/_matrix/client/v3/rooms/{}/redact/{}/r-{version}",
                        enc(room),
                        enc(&sams)
                    ),
                    Some(&sam_tok),
                    json!({ "reason": "oops" }),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            sees_redacted(&synapse, &sam_tok, room, &hals).await;
            sees_redacted(&hearth, &hal_tok, room, &sams).await;
            sees_redacted(&hearth, &hal_tok, room, &hals).await;
            sees_redacted(&synapse, &sam_tok, room, &sams).await;
        }

        // Each room's creator raises the other side's user to moderator, who then renames the
        // room: power levels written on one side authorise events on the other.
        promote(&synapse, &sam_tok, &on_synapse, &hal).await;
        promote(&hearth, &hal_tok, &on_hearth, &sam).await;
        eventually(30, "Hearth has hal's new power", || async {
            let pl = state(&hearth, &hal_tok, &on_synapse, "m.room.power_levels", "").await?;
            (pl["users"][&hal] == 50).then_some(())
        })
        .await;
        eventually(30, "Synapse has sam's new power", || async {
            let pl = state(&synapse, &sam_tok, &on_hearth, "m.room.power_levels", "").await?;
            (pl["users"][&sam] == 50).then_some(())
        })
        .await;
        let name = format!("v{version}: named by hal");
        let (status, body) = hearth
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.name/",
                    enc(&on_synapse)
                ),
                Some(&hal_tok),
                json!({ "name": name }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        eventually(30, "Synapse has hal's room name", || async {
            let n = state(&synapse, &sam_tok, &on_synapse, "m.room.name", "").await?;
            (n["name"] == name.as_str()).then_some(())
        })
        .await;
        let name = format!("v{version}: named by sam");
        let (status, body) = synapse
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.name/",
                    enc(&on_hearth)
                ),
                Some(&sam_tok),
                json!({ "name": name }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        eventually(30, "Hearth has sam's room name", || async {
            let n = state(&hearth, &hal_tok, &on_hearth, "m.room.name", "").await?;
            (n["name"] == name.as_str()).then_some(())
        })
        .await;

        // Hal leaves the Synapse room and comes back: Hearth is in it no more, so the rejoin
        // goes through Synapse again.
        let (status, body) = hearth
            .post(
                &format!("/_matrix/client/v3/rooms/{}/leave", enc(&on_synapse)),
                Some(&hal_tok),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        sees_membership(&synapse, &sam_tok, &on_synapse, &hal, "leave").await;
        let missed = format!("v{version}: while hal was away");
        synapse_say(&synapse, &sam_tok, &on_synapse, &missed).await;
        let (status, body) = hearth
            .post(
                &format!(
                    "/_matrix/client/v3/join/{}?via={}",
                    enc(&on_synapse),
                    enc(synapse.server_name().as_str())
                ),
                Some(&hal_tok),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "v{version}: hal rejoins: {body}");
        sees_joined(&synapse, &sam_tok, &on_synapse, &hal).await;
        let back = format!("v{version}: hal is back in");
        hearth.say(&hal_tok, &on_synapse, &back).await;
        sees(&synapse, &sam_tok, &on_synapse, &back).await;
        let welcome = format!("v{version}: welcome back, hal");
        synapse_say(&synapse, &sam_tok, &on_synapse, &welcome).await;
        sees(&hearth, &hal_tok, &on_synapse, &welcome).await;

        // Sam leaves the Hearth room and comes back the same way.
        let (status, body) = synapse
            .post(
                &format!("/_matrix/client/v3/rooms/{}/leave", enc(&on_hearth)),
                Some(&sam_tok),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        sees_membership(&hearth, &hal_tok, &on_hearth, &sam, "leave").await;
        hearth
            .say(
                &hal_tok,
                &on_hearth,
                &format!("v{version}: while sam was away"),
            )
            .await;
        let (status, body) = synapse
            .post(
                &format!(
                    "/_matrix/client/v3/join/{}?server_name={}",
                    enc(&on_hearth),
                    enc(&hearth.name())
                ),
                Some(&sam_tok),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "v{version}: sam rejoins: {body}");
        sees_joined(&hearth, &hal_tok, &on_hearth, &sam).await;
        let back = format!("v{version}: sam is back in");
        synapse_say(&synapse, &sam_tok, &on_hearth, &back).await;
        sees(&hearth, &hal_tok, &on_hearth, &back).await;
        let welcome = format!("v{version}: welcome back, sam");
        hearth.say(&hal_tok, &on_hearth, &welcome).await;
        sees(&synapse, &sam_tok, &on_hearth, &welcome).await;
    }
}

/// Whether a /sync shows an invite to the room whose invite state names it `name`.
fn invited_to(sync: &Value, room: &str, name: &str) -> Option<()> {
    sync["rooms"]["invite"][room]["invite_state"]["events"]
        .as_array()?
        .iter()
        .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == name)
        .then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_between_hearth_and_synapse_are_accepted_and_rejected() {
    let hearth = TestServer::start_federating().await;
    let synapse = Synapse::start().await;
    let (sam, sam_tok) = synapse.register("sam").await;
    let (sue, sue_tok) = synapse.register("sue").await;
    let (hal, hal_tok, _) = hearth.register("hal", TEST_PASSWORD).await;
    let (hugh, hugh_tok, _) = hearth.register("hugh", TEST_PASSWORD).await;

    for version in VERSIONS {
        // Sam's private room on Synapse; hal is invited, hugh too.
        let name = format!("Synapse secret v{version}");
        let (status, body) = synapse
            .post(
                "/_matrix/client/v3/createRoom",
                Some(&sam_tok),
                json!({ "room_version": version, "preset": "private_chat", "name": name }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let room = body["room_id"].as_str().expect("room_id").to_owned();
        let before = format!("v{version}: before the invites");
        synapse_say(&synapse, &sam_tok, &room, &before).await;
        for who in [&hal, &hugh] {
            let (status, body) = synapse
                .post(
                    &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
                    Some(&sam_tok),
                    json!({ "user_id": who }),
                )
                .await;
            assert_eq!(status, 200, "v{version}: sam invites {who}: {body}");
        }
        synced(&hearth, &hal_tok, "hal's invite", |s| {
            invited_to(s, &room, &name)
        })
        .await;
        // No server named: Hearth joins through the inviter's.
        let (status, body) = hearth
            .post(
                &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
                Some(&hal_tok),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "v{version}: hal accepts: {body}");
        sees_joined(&synapse, &sam_tok, &room, &hal).await;
        // The history from before the join came along with it.
        assert_eq!(texts(&hearth, &hal_tok, &room).await, [before.as_str()]);
        let from_hal = format!("v{version}: thanks for the invite, sam");
        hearth.say(&hal_tok, &room, &from_hal).await;
        sees(&synapse, &sam_tok, &room, &from_hal).await;
        let from_sam = format!("v{version}: welcome, hal");
        synapse_say(&synapse, &sam_tok, &room, &from_sam).await;
        sees(&hearth, &hal_tok, &room, &from_sam).await;
        // Hugh says no. Hearth is in the room now (through hal), so the rejection is a leave
        // Hearth sends itself.
        synced(&hearth, &hugh_tok, "hugh's invite", |s| {
            invited_to(s, &room, &name)
        })
        .await;
        let (status, body) = hearth
            .post(
                &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
                Some(&hugh_tok),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "v{version}: hugh rejects: {body}");
        sees_membership(&synapse, &sam_tok, &room, &hugh, "leave").await;
        // Sam asks again, and this time hugh accepts. Hearth is in the room already, so the
        // invite also reaches it in a transaction, and the join is Hearth's own.
        let (status, body) = synapse
            .post(
                &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
                Some(&sam_tok),
                json!({ "user_id": hugh }),
            )
            .await;
        assert_eq!(status, 200, "v{version}: sam invites hugh again: {body}");
        synced(&hearth, &hugh_tok, "hugh's new invite", |s| {
            invited_to(s, &room, &name)
        })
        .await;
        let (status, body) = hearth
            .post(
                &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
                Some(&hugh_tok),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "v{version}: hugh accepts: {body}");
        sees_joined(&synapse, &sam_tok, &room, &hugh).await;
        let from_hugh = format!("v{version}: hugh is in after all");
        hearth.say(&hugh_tok, &room, &from_hugh).await;
        sees(&synapse, &sam_tok, &room, &from_hugh).await;

        // Another private room on Synapse: hugh rejects while no Hearth user is in it, so
        // Hearth goes through make_leave/send_leave on Synapse.
        let name = format!("Synapse other secret v{version}");
        let (status, body) = synapse
            .post(
                "/_matrix/client/v3/createRoom",
                Some(&sam_tok),
                json!({
                    "room_version": version,
                    "preset": "private_chat",
                    "name": name,
                    "invite": [hugh],
                }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let other = body["room_id"].as_str().expect("room_id").to_owned();
        synced(&hearth, &hugh_tok, "hugh's second invite", |s| {
            invited_to(s, &other, &name)
        })
        .await;
        let (status, body) = hearth
            .post(
                &format!("/_matrix/client/v3/rooms/{}/leave", enc(&other)),
                Some(&hugh_tok),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "v{version}: hugh rejects: {body}");
        sees_membership(&synapse, &sam_tok, &other, &hugh, "leave").await;
        let filter = enc(&json!({ "room": { "include_leave": true } }).to_string());
        eventually(30, "hugh's rejection in his /sync", || async {
            let (status, body) = hearth
                .get(
                    &format!("/_matrix/client/v3/sync?timeout=0&filter={filter}"),
                    Some(&hugh_tok),
                )
                .await;
            (status == 200 && body["rooms"]["leave"][other.as_str()].is_object()).then_some(())
        })
        .await;

        // Hal's private room on Hearth; sam is invited and accepts, sue rejects.
        let name = format!("Hearth secret v{version}");
        let room = hearth
            .create_room(
                &hal_tok,
                json!({ "room_version": version, "preset": "private_chat", "name": name }),
            )
            .await;
        for who in [&sam, &sue] {
            let (status, body) = hearth
                .post(
                    &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
                    Some(&hal_tok),
                    json!({ "user_id": who }),
                )
                .await;
            assert_eq!(status, 200, "v{version}: hal invites {who}: {body}");
        }
        synced(&synapse, &sam_tok, "sam's invite", |s| {
            invited_to(s, &room, &name)
        })
        .await;
        let (status, body) = synapse
            .post(
                &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
                Some(&sam_tok),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "v{version}: sam accepts: {body}");
        sees_joined(&hearth, &hal_tok, &room, &sam).await;
        let from_sam = format!("v{version}: thanks for the invite, hal");
        synapse_say(&synapse, &sam_tok, &room, &from_sam).await;
        sees(&hearth, &hal_tok, &room, &from_sam).await;
        let from_hal = format!("v{version}: welcome, sam");
        hearth.say(&hal_tok, &room, &from_hal).await;
        sees(&synapse, &sam_tok, &room, &from_hal).await;
        synced(&synapse, &sue_tok, "sue's invite", |s| {
            invited_to(s, &room, &name)
        })
        .await;
        let (status, body) = synapse
            .post(
                &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
                Some(&sue_tok),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "v{version}: sue rejects: {body}");
        sees_membership(&hearth, &hal_tok, &room, &sue, "leave").await;

        // A direct chat created with the invite in it: Synapse's user gets it marked direct.
        let dm = hearth
            .create_room(
                &hal_tok,
                json!({
                    "room_version": version,
                    "preset": "trusted_private_chat",
                    "is_direct": true,
                    "invite": [sam],
                }),
            )
            .await;
        synced(&synapse, &sam_tok, "sam's direct invite", |s| {
            s["rooms"]["invite"][dm.as_str()]["invite_state"]["events"]
                .as_array()?
                .iter()
                .any(|e| {
                    e["type"] == "m.room.member"
                        && e["state_key"] == sam.as_str()
                        && e["content"]["is_direct"] == true
                })
                .then_some(())
        })
        .await;
        let (status, body) = synapse
            .post(
                &format!("/_matrix/client/v3/join/{}", enc(&dm)),
                Some(&sam_tok),
                json!({}),
            )
            .await;
        assert_eq!(
            status, 200,
            "v{version}: sam accepts the direct chat: {body}"
        );
        let from_sam = format!("v{version}: just between us");
        synapse_say(&synapse, &sam_tok, &dm, &from_sam).await;
        sees(&hearth, &hal_tok, &dm, &from_sam).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hearth_user_joining_a_synapse_room_sees_its_recent_history() {
    let hearth = TestServer::start_federating().await;
    let synapse = Synapse::start().await;
    let (_sam, sam_tok) = synapse.register("sam").await;
    let (_hal, hal_tok, _) = hearth.register("hal", TEST_PASSWORD).await;

    for version in VERSIONS {
        let (status, body) = synapse
            .post(
                "/_matrix/client/v3/createRoom",
                Some(&sam_tok),
                json!({ "room_version": version, "preset": "public_chat" }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let room = body["room_id"].as_str().expect("room_id").to_owned();
        // More than the 50 events Hearth fetches at a join.
        let said: Vec<String> = (1..=60).map(|i| format!("v{version}: m{i}")).collect();
        for text in &said {
            synapse_say(&synapse, &sam_tok, &room, text).await;
        }
        let (status, body) = hearth
            .post(
                &format!(
                    "/_matrix/client/v3/join/{}?via={}",
                    enc(&room),
                    enc(synapse.server_name().as_str())
                ),
                Some(&hal_tok),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "v{version}: {body}");
        // The latest 50, in order, are there as soon as the join returns.
        assert_eq!(texts(&hearth, &hal_tok, &room).await, said[10..]);
    }
}
