//! The account flow of a real client (matrix-sdk): register with a registration token, a second
//! device, whoami, profile, devices with UIAA deletion, logout.

use matrix_sdk::{
    ruma::{
        api::client::{
            account::register,
            uiaa::{self, AuthData, MatrixUserIdentifier, UserIdentifier},
        },
        mxc_uri, OwnedDeviceId,
    },
    Client,
};

use crate::common::{assert_err, TestServer};

async fn client(server: &TestServer) -> Client {
    Client::builder()
        .homeserver_url(server.url())
        .build()
        .await
        .expect("client builds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_lifecycle_with_matrix_sdk() {
    let server = TestServer::start().await;
    let token = server.registration_token(Some(1)).await;
    let password = "correct horse battery";

    // Registration: the first attempt returns the UIAA flows, the second passes the token stage.
    let alice = client(&server).await;
    let mut request = register::v3::Request::new();
    request.username = Some("alice".to_owned());
    request.password = Some(password.to_owned());
    request.initial_device_display_name = Some("first".to_owned());
    let err = alice
        .matrix_auth()
        .register(request.clone())
        .await
        .expect_err("registration needs a stage");
    let info = err.as_uiaa_response().expect("a UIAA response");
    assert!(info
        .flows
        .iter()
        .any(|f| f.stages == vec![uiaa::AuthType::RegistrationToken]));
    let mut stage = uiaa::RegistrationToken::new(token.clone());
    stage.session = info.session.clone();
    request.auth = Some(AuthData::RegistrationToken(stage));
    let registered = alice
        .matrix_auth()
        .register(request)
        .await
        .expect("registration with token");
    assert_eq!(registered.user_id.as_str(), "@alice:localhost:8448");
    let first_device = registered.device_id.clone().expect("a device");
    let first_token = registered.access_token.clone().expect("a token");

    // The token allowed one use; it is spent now.
    let (_, validity) = server
        .get(
            &format!(
                "/_matrix/client/v1/register/m.login.registration_token/validity?token={token}"
            ),
            None,
        )
        .await;
    assert_eq!(validity["valid"], false);

    // A second device logs in with the password.
    let second = client(&server).await;
    second
        .matrix_auth()
        .login_username("alice", password)
        .initial_device_display_name("second")
        .await
        .expect("password login");
    let second_device: OwnedDeviceId = second.device_id().expect("device").to_owned();
    assert_ne!(second_device, first_device);

    let whoami = second.whoami().await.expect("whoami");
    assert_eq!(whoami.user_id.as_str(), "@alice:localhost:8448");
    assert_eq!(whoami.device_id.as_ref(), Some(&second_device));

    // Profile, set on one device, read back on the other.
    let account = alice.account();
    account
        .set_display_name(Some("Alice Liddell"))
        .await
        .expect("set display name");
    let avatar = mxc_uri!("mxc://localhost:8448/abcdefgh");
    account
        .set_avatar_url(Some(avatar))
        .await
        .expect("set avatar");
    assert_eq!(
        second
            .account()
            .get_display_name()
            .await
            .unwrap()
            .as_deref(),
        Some("Alice Liddell")
    );
    assert_eq!(
        second.account().get_avatar_url().await.unwrap().as_deref(),
        Some(avatar)
    );

    // Both devices are listed, with their display names.
    let devices = alice.devices().await.expect("devices").devices;
    let mut listed: Vec<_> = devices
        .iter()
        .map(|d| (d.device_id.clone(), d.display_name.clone()))
        .collect();
    listed.sort();
    let mut expected = vec![
        (first_device.clone(), Some("first".to_owned())),
        (second_device.clone(), Some("second".to_owned())),
    ];
    expected.sort();
    assert_eq!(listed, expected);

    // Deleting the first device from the second needs the password (UIAA).
    let err = second
        .delete_devices(std::slice::from_ref(&first_device), None)
        .await
        .expect_err("deletion needs auth");
    let info = err.as_uiaa_response().expect("a UIAA response");
    let mut password_stage = uiaa::Password::new(
        UserIdentifier::Matrix(MatrixUserIdentifier::new("alice".to_owned())),
        password.to_owned(),
    );
    password_stage.session = info.session.clone();
    second
        .delete_devices(
            std::slice::from_ref(&first_device),
            Some(AuthData::Password(password_stage)),
        )
        .await
        .expect("deletion with password");
    let devices = second.devices().await.expect("devices").devices;
    assert_eq!(
        devices
            .iter()
            .map(|d| d.device_id.clone())
            .collect::<Vec<_>>(),
        vec![second_device.clone()]
    );
    // The deleted device's token died with it.
    assert_err(
        &server
            .get("/_matrix/client/v3/account/whoami", Some(&first_token))
            .await,
        401,
        "M_UNKNOWN_TOKEN",
    );

    // Logging out kills the second device's token too.
    let second_token = second.access_token().expect("token");
    second.matrix_auth().logout().await.expect("logout");
    assert_err(
        &server
            .get("/_matrix/client/v3/account/whoami", Some(&second_token))
            .await,
        401,
        "M_UNKNOWN_TOKEN",
    );
}
