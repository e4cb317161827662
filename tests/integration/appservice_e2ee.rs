//! Encrypted bridging: an appservice that keeps its users' devices itself (MSC4190 device
//! management, MSC3202 device lists and key counts, MSC2409/MSC4203 to-device messages in
//! transactions) exchanges encrypted messages with a matrix-sdk client. The appservice side is
//! matrix-sdk-crypto's `OlmMachine` (the crypto of Element X and of matrix-rust-sdk bridges),
//! fed only from transactions and calling the homeserver with the as_token, `user_id=` and
//! `device_id=`.

use std::{collections::BTreeMap, time::Duration};

use axum::{extract::State, routing::put, Json, Router};
use matrix_sdk::{
    config::SyncSettings,
    room::MessagesOptions,
    ruma::{
        api::{
            client::{
                keys::{claim_keys, get_keys, upload_keys},
                room::create_room,
                sync::sync_events::DeviceLists,
                to_device::send_event_to_device,
            },
            IncomingResponse,
        },
        events::{room::message::RoomMessageEventContent, AnyToDeviceEvent},
        serde::Raw,
        uint, OneTimeKeyAlgorithm, OwnedDeviceId, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
    },
};
use matrix_sdk_crypto::{
    types::requests::AnyOutgoingRequest, DecryptionSettings, EncryptionSettings,
    EncryptionSyncChanges, OlmMachine, TrustRequirement,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::common::{enc, eventually, TestServer};

const AS_TOKEN: &str = "as-token-of-the-encrypted-bridge";
const HS_TOKEN: &str = "hs-token-of-the-encrypted-bridge";
const DEVICE: &str = "BRIDGEDEVICE";

fn registration(url: &str) -> String {
    format!(
        r##"
id: "encrypted-bridge"
url: "{url}"
as_token: "{AS_TOKEN}"
hs_token: "{HS_TOKEN}"
sender_localpart: "_ebridge"
rate_limited: false
receive_ephemeral: true
de.sorunome.msc2409.push_ephemeral: true
org.matrix.msc3202: true
io.element.msc4190: true
namespaces:
  users:
    - exclusive: true
      regex: "@_ebridge_.*"
"##
    )
}

fn settings() -> SyncSettings {
    SyncSettings::default().timeout(Duration::from_millis(200))
}

fn decryption() -> DecryptionSettings {
    DecryptionSettings {
        sender_device_trust_requirement: TrustRequirement::Untrusted,
    }
}

/// The appservice: receives transactions over HTTP, and acts for one puppet's device.
struct Bridge {
    http: reqwest::Client,
    base: String,
    user: OwnedUserId,
    machine: OlmMachine,
    transactions: mpsc::UnboundedReceiver<Value>,
    /// Every transaction processed so far.
    seen: Vec<Value>,
    /// Messages decrypted from the room timeline.
    decrypted: Vec<String>,
}

async fn receive(
    State(tx): State<mpsc::UnboundedSender<Value>>,
    headers: axum::http::HeaderMap,
    Json(body): Json<Value>,
) -> (axum::http::StatusCode, Json<Value>) {
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some(&format!("Bearer {HS_TOKEN}"))
    {
        return (
            axum::http::StatusCode::FORBIDDEN,
            Json(json!({ "errcode": "M_FORBIDDEN" })),
        );
    }
    let _ = tx.send(body);
    (axum::http::StatusCode::OK, Json(json!({})))
}

impl Bridge {
    /// A call to the homeserver as the puppet's device.
    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = format!(
            "{}{path}{sep}user_id={}&device_id={DEVICE}",
            self.base,
            enc(self.user.as_str())
        );
        let resp = self
            .http
            .request(method, url)
            .bearer_auth(AS_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {body}");
        body
    }

    /// Sends what the Olm machine wants sent, until it wants nothing more.
    async fn flush(&self) {
        loop {
            let requests = self.machine.outgoing_requests().await.unwrap();
            if requests.is_empty() {
                return;
            }
            for r in requests {
                self.send(r.request_id(), r.request()).await;
            }
        }
    }

    async fn send(&self, id: &matrix_sdk::ruma::TransactionId, request: &AnyOutgoingRequest) {
        use reqwest::Method;
        match request {
            AnyOutgoingRequest::KeysUpload(r) => {
                let body = json!({
                    "device_keys": r.device_keys,
                    "one_time_keys": r.one_time_keys,
                    "fallback_keys": r.fallback_keys,
                });
                let resp = self
                    .call(Method::POST, "/_matrix/client/v3/keys/upload", body)
                    .await;
                let resp: upload_keys::v3::Response = parse(resp);
                self.machine.mark_request_as_sent(id, &resp).await.unwrap();
            }
            AnyOutgoingRequest::KeysQuery(r) => {
                let body = json!({ "device_keys": r.device_keys });
                let resp = self
                    .call(Method::POST, "/_matrix/client/v3/keys/query", body)
                    .await;
                let resp: get_keys::v3::Response = parse(resp);
                self.machine.mark_request_as_sent(id, &resp).await.unwrap();
            }
            AnyOutgoingRequest::KeysClaim(r) => self.claim(id, r).await,
            AnyOutgoingRequest::ToDeviceRequest(r) => self.to_device(r).await,
            other => panic!("the bridge does not send {other:?}"),
        }
    }

    async fn claim(&self, id: &matrix_sdk::ruma::TransactionId, r: &claim_keys::v3::Request) {
        let body = json!({ "one_time_keys": r.one_time_keys });
        let resp = self
            .call(reqwest::Method::POST, "/_matrix/client/v3/keys/claim", body)
            .await;
        let resp: claim_keys::v3::Response = parse(resp);
        self.machine.mark_request_as_sent(id, &resp).await.unwrap();
    }

    async fn to_device(&self, r: &matrix_sdk_crypto::types::requests::ToDeviceRequest) {
        let path = format!(
            "/_matrix/client/v3/sendToDevice/{}/{}",
            enc(&r.event_type.to_string()),
            enc(r.txn_id.as_str())
        );
        self.call(
            reqwest::Method::PUT,
            &path,
            json!({ "messages": r.messages }),
        )
        .await;
        let resp = send_event_to_device::v3::Response::new();
        self.machine
            .mark_request_as_sent(&r.txn_id, &resp)
            .await
            .unwrap();
    }

    /// Feeds one transaction to the machine: to-device messages, device lists and key counts,
    /// then the room events (decrypting what it can).
    async fn process(&mut self, txn: Value) {
        let to_device: Vec<Raw<AnyToDeviceEvent>> =
            serde_json::from_value(txn["de.sorunome.msc2409.to_device"].clone())
                .unwrap_or_default();
        let lists = &txn["org.matrix.msc3202.device_lists"];
        let mut changed_devices = DeviceLists::new();
        changed_devices.changed =
            serde_json::from_value(lists["changed"].clone()).unwrap_or_default();
        changed_devices.left = serde_json::from_value(lists["left"].clone()).unwrap_or_default();
        let user = self.user.as_str();
        let counts: BTreeMap<OneTimeKeyAlgorithm, UInt> = serde_json::from_value(
            txn["org.matrix.msc3202.device_one_time_keys_count"][user][DEVICE].clone(),
        )
        .unwrap_or_default();
        let fallback: Option<Vec<OneTimeKeyAlgorithm>> = serde_json::from_value(
            txn["org.matrix.msc3202.device_unused_fallback_key_types"][user][DEVICE].clone(),
        )
        .ok();
        self.machine
            .receive_sync_changes(
                EncryptionSyncChanges {
                    to_device_events: to_device,
                    changed_devices: &changed_devices,
                    one_time_keys_counts: &counts,
                    unused_fallback_keys: fallback.as_deref(),
                    next_batch_token: None,
                },
                &decryption(),
            )
            .await
            .unwrap();
        for event in txn["events"].as_array().cloned().unwrap_or_default() {
            if event["type"] != "m.room.encrypted" {
                continue;
            }
            let room_id: OwnedRoomId = event["room_id"].as_str().unwrap().try_into().unwrap();
            let raw = Raw::from_json(serde_json::value::to_raw_value(&event).unwrap());
            if let Ok(d) = self
                .machine
                .decrypt_room_event(&raw, &room_id, &decryption())
                .await
            {
                let clear: Value = d.event.deserialize_as().unwrap();
                if let Some(body) = clear["content"]["body"].as_str() {
                    self.decrypted.push(body.to_owned());
                }
            }
        }
        self.seen.push(txn);
        self.flush().await;
    }

    /// Processes transactions until `done` holds of the bridge.
    async fn until(&mut self, what: &str, done: impl Fn(&Bridge) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !done(self) {
            let txn = tokio::time::timeout_at(deadline, self.transactions.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}; seen: {:#?}", self.seen))
                .expect("the transaction channel stays open");
            self.process(txn).await;
        }
    }

    /// Encrypts and sends a message to the room as the puppet.
    async fn send_encrypted(&self, room: &RoomId, members: &[&UserId], body: &str) {
        self.machine
            .update_tracked_users(members.iter().copied())
            .await
            .unwrap();
        self.flush().await;
        if let Some((id, claim)) = self
            .machine
            .get_missing_sessions(members.iter().copied())
            .await
            .unwrap()
        {
            self.claim(&id, &claim).await;
        }
        for r in self
            .machine
            .share_room_key(room, members.iter().copied(), EncryptionSettings::default())
            .await
            .unwrap()
        {
            self.to_device(&r).await;
        }
        let content = Raw::new(&json!({ "msgtype": "m.text", "body": body }))
            .unwrap()
            .cast_unchecked();
        let encrypted = self
            .machine
            .encrypt_room_event_raw(room, "m.room.message", &content)
            .await
            .unwrap();
        let path = format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.encrypted/{}",
            enc(room.as_str()),
            enc(body)
        );
        self.call(
            reqwest::Method::PUT,
            &path,
            serde_json::to_value(&encrypted.content).unwrap(),
        )
        .await;
    }
}

/// A ruma response from the JSON body of a 200.
fn parse<R: IncomingResponse>(body: Value) -> R {
    let resp = axum::http::Response::builder()
        .status(200)
        .body(serde_json::to_vec(&body).unwrap())
        .unwrap();
    R::try_from_http_response(resp).expect("a valid response")
}

/// The body of the latest message from `sender` that bob's client decrypted.
async fn decrypted_by(
    client: &matrix_sdk::Client,
    room: &RoomId,
    sender: &UserId,
) -> Option<String> {
    client.sync_once(settings()).await.ok()?;
    let room = client.get_room(room)?;
    let mut options = MessagesOptions::backward();
    options.limit = uint!(20);
    let messages = room.messages(options).await.ok()?;
    messages
        .chunk
        .iter()
        .filter(|ev| ev.encryption_info().is_some())
        .filter_map(|ev| ev.raw().deserialize_as::<Value>().ok())
        .find(|ev| ev["sender"] == sender.as_str())
        .and_then(|ev| ev["content"]["body"].as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_appservice_with_its_own_devices_exchanges_encrypted_messages_through_transactions() {
    // The appservice's HTTP side: transactions go to a channel that the test drains.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new()
        .route("/_matrix/app/v1/transactions/{txn}", put(receive))
        .with_state(tx);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bridge.yaml");
    std::fs::write(&file, registration(&url)).unwrap();
    let server = TestServer::start_with(|c| {
        c.appservice.registration_files = vec![file];
    })
    .await;

    // MSC4190: the appservice registers its puppet and creates the puppet's device, no login.
    let user: OwnedUserId = format!("@_ebridge_alice:{}", server.name())
        .try_into()
        .unwrap();
    let (status, body) = server
        .request(
            reqwest::Method::POST,
            "/_matrix/client/v3/register",
            Some(AS_TOKEN),
            Some(json!({
                "type": "m.login.application_service",
                "username": "_ebridge_alice",
                "inhibit_login": true,
            })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .request(
            reqwest::Method::PUT,
            &format!(
                "/_matrix/client/v3/devices/{DEVICE}?user_id={}",
                enc(user.as_str())
            ),
            Some(AS_TOKEN),
            Some(json!({ "display_name": "bridge" })),
        )
        .await;
    assert!(
        status == 200 || status == 201,
        "device created: {status} {body}"
    );

    let device: OwnedDeviceId = DEVICE.into();
    let mut bridge = Bridge {
        http: reqwest::Client::new(),
        base: server.url(),
        user: user.clone(),
        machine: OlmMachine::new(&user, &device).await,
        transactions: rx,
        seen: Vec::new(),
        decrypted: Vec::new(),
    };
    // Identity and one-time keys, uploaded with user_id= and device_id=.
    bridge.flush().await;
    let (_, keys) = server
        .request(
            reqwest::Method::POST,
            &format!(
                "/_matrix/client/v3/keys/query?user_id={}",
                enc(user.as_str())
            ),
            Some(AS_TOKEN),
            Some(json!({ "device_keys": { user.as_str(): [] } })),
        )
        .await;
    assert!(
        keys["device_keys"][user.as_str()][DEVICE].is_object(),
        "the puppet's device keys are published: {keys}"
    );

    // A real client in an encrypted room with the puppet.
    let bob = server.sdk_user("bob").await;
    bob.sync_once(settings()).await.expect("bob syncs");
    let bob_id = bob.user_id().unwrap().to_owned();
    let room = bob
        .create_room(create_room::v3::Request::new())
        .await
        .expect("createRoom");
    room.enable_encryption().await.expect("encryption enabled");
    room.invite_user_by_id(&user).await.expect("invite");
    let room_id = room.room_id().to_owned();
    bridge
        .until("the invite", |b| {
            b.seen.iter().any(|t| {
                t["events"].as_array().is_some_and(|e| {
                    e.iter()
                        .any(|e| e["type"] == "m.room.member" && e["state_key"] == user.as_str())
                })
            })
        })
        .await;
    bridge
        .call(
            reqwest::Method::POST,
            &format!("/_matrix/client/v3/join/{}", enc(room_id.as_str())),
            json!({}),
        )
        .await;
    bob.sync_once(settings()).await.expect("bob sees the join");

    // Bob's client claims a key of the puppet's device and sends it the room key over
    // to-device: both reach the appservice in transactions, and it reads bob's message.
    room.send(RoomMessageEventContent::text_plain("hello, bridge"))
        .await
        .expect("encrypted send");
    bridge
        .until("bob's message, decrypted", |b| {
            b.decrypted.iter().any(|m| m == "hello, bridge")
        })
        .await;
    let to_device: Vec<&Value> = bridge
        .seen
        .iter()
        .filter_map(|t| t["de.sorunome.msc2409.to_device"].as_array())
        .flatten()
        .collect();
    assert!(
        to_device.iter().any(|m| m["type"] == "m.room.encrypted"
            && m["sender"] == bob_id.as_str()
            && m["to_user_id"] == user.as_str()
            && m["to_device_id"] == DEVICE),
        "the room key came as a to-device message addressed to the puppet's device: {to_device:#?}"
    );
    let counts: Vec<u64> = bridge
        .seen
        .iter()
        .filter_map(|t| {
            t["org.matrix.msc3202.device_one_time_keys_count"][user.as_str()][DEVICE]
                ["signed_curve25519"]
                .as_u64()
        })
        .collect();
    assert!(
        !counts.is_empty(),
        "the claim of a one-time key was reported with the device's new count"
    );
    // The device's inbox stayed empty: what the appservice gets by transaction is not also
    // kept for a /sync that never comes.
    let (_, sync) = server
        .request(
            reqwest::Method::GET,
            &format!(
                "/_matrix/client/v3/sync?timeout=0&user_id={}&device_id={DEVICE}",
                enc(user.as_str())
            ),
            Some(AS_TOKEN),
            None,
        )
        .await;
    assert!(
        sync["to_device"]["events"]
            .as_array()
            .is_none_or(|e| e.is_empty()),
        "{sync}"
    );

    // The puppet answers, encrypted for bob's device; bob's client decrypts it.
    bridge
        .send_encrypted(&room_id, &[&bob_id, &user], "hello from the bridge")
        .await;
    let answer = eventually(30, "bob decrypts the puppet's answer", || async {
        decrypted_by(&bob, &room_id, &user).await
    })
    .await;
    assert_eq!(answer, "hello from the bridge");

    // Bob signs in on a second device: the appservice hears of bob's device-list change, and
    // its next message is readable there too.
    let bob2 = server.sdk_login("bob").await;
    bob2.sync_once(settings())
        .await
        .expect("bob's second device syncs");
    bridge
        .until("bob's device-list change", |b| {
            b.seen.iter().any(|t| {
                t["org.matrix.msc3202.device_lists"]["changed"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|u| u == bob_id.as_str()))
            })
        })
        .await;
    bridge
        .send_encrypted(&room_id, &[&bob_id, &user], "for both of your devices")
        .await;
    let answer = eventually(30, "bob's second device decrypts", || async {
        decrypted_by(&bob2, &room_id, &user).await
    })
    .await;
    assert_eq!(answer, "for both of your devices");
}
