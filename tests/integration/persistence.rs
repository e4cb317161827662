//! Accounts, devices, tokens and profiles survive a restart on the same data folder.

use serde_json::json;

use crate::common::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_devices_tokens_and_profiles_survive_restart() {
    let mut server = TestServer::start().await;
    let (user_id, token, device_id) = server.register("carol", "a long password").await;
    let (status, login) = server.login("carol", "a long password").await;
    assert_eq!(status, 200, "{login}");
    let second_device = login["device_id"].as_str().unwrap().to_owned();
    let path = format!("/_matrix/client/v3/profile/{user_id}/displayname");
    let (status, _) = server
        .put(&path, Some(&token), json!({ "displayname": "Carol" }))
        .await;
    assert_eq!(status, 200);
    let (status, _) = server
        .put(
            &format!("/_matrix/client/v3/devices/{device_id}"),
            Some(&token),
            json!({ "display_name": "laptop" }),
        )
        .await;
    assert_eq!(status, 200);
    let spare_token = server.registration_token(Some(5)).await;

    server.restart().await;

    let (status, whoami) = server
        .get("/_matrix/client/v3/account/whoami", Some(&token))
        .await;
    assert_eq!(status, 200, "{whoami}");
    assert_eq!(whoami["user_id"], user_id.as_str());
    assert_eq!(whoami["device_id"], device_id.as_str());

    let (_, profile) = server
        .get(&format!("/_matrix/client/v3/profile/{user_id}"), None)
        .await;
    assert_eq!(profile["displayname"], "Carol");

    let (_, devices) = server.get("/_matrix/client/v3/devices", Some(&token)).await;
    let mut ids: Vec<&str> = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut expected = vec![device_id.as_str(), second_device.as_str()];
    expected.sort();
    assert_eq!(ids, expected);
    let laptop = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device_id"] == device_id.as_str())
        .unwrap();
    assert_eq!(laptop["display_name"], "laptop");

    let (status, _) = server.login("carol", "a long password").await;
    assert_eq!(status, 200);
    let (_, validity) = server
        .get(
            &format!(
                "/_matrix/client/v1/register/m.login.registration_token/validity?token={spare_token}"
            ),
            None,
        )
        .await;
    assert_eq!(validity["valid"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_tokens_rotate_and_survive_restart() {
    let mut server = TestServer::start().await;
    server.register("dave", "a long password").await;
    let (status, login) = server
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": "dave" },
                "password": "a long password",
                "refresh_token": true,
            }),
        )
        .await;
    assert_eq!(status, 200, "{login}");
    assert!(login["expires_in_ms"].as_u64().unwrap() > 0);
    let refresh = login["refresh_token"].as_str().unwrap().to_owned();
    let old_access = login["access_token"].as_str().unwrap().to_owned();

    server.restart().await;

    let (status, refreshed) = server
        .post(
            "/_matrix/client/v3/refresh",
            None,
            json!({ "refresh_token": refresh }),
        )
        .await;
    assert_eq!(status, 200, "{refreshed}");
    let new_access = refreshed["access_token"].as_str().unwrap().to_owned();
    let new_refresh = refreshed["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(new_refresh, refresh);
    // The old access token is replaced; the new one works.
    let (status, _) = server
        .get("/_matrix/client/v3/account/whoami", Some(&old_access))
        .await;
    assert_eq!(status, 401);
    let (status, _) = server
        .get("/_matrix/client/v3/account/whoami", Some(&new_access))
        .await;
    assert_eq!(status, 200);
    // Once the new access token has been used, the old refresh token is spent.
    let (status, body) = server
        .post(
            "/_matrix/client/v3/refresh",
            None,
            json!({ "refresh_token": refresh }),
        )
        .await;
    assert_eq!((status, &body["errcode"]), (401, &json!("M_UNKNOWN_TOKEN")));
}
