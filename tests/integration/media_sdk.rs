//! Media as a real client uses it (matrix-sdk): an image sent in a room as `m.image`, then
//! downloaded and thumbnailed by another member through the authenticated media endpoints.

use matrix_sdk::{
    attachment::AttachmentConfig,
    media::{MediaFormat, MediaRequestParameters, MediaThumbnailSettings},
    ruma::{
        api::client::{media::get_content_thumbnail::v3::Method, room::create_room},
        events::room::MediaSource,
        uint, OwnedMxcUri,
    },
};

use crate::common::TestServer;

/// A 300×200 PNG with a gradient, so thumbnails are real work.
pub fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
    });
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .expect("encode png");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_sent_in_a_room_is_downloaded_and_thumbnailed_by_another_member() {
    let server = TestServer::start().await;
    let alice = server.sdk_user("alice").await;
    let bob = server.sdk_user("bob").await;
    let bob_id = bob.user_id().expect("bob is logged in").to_owned();

    let room = alice
        .create_room(create_room::v3::Request::new())
        .await
        .expect("createRoom");
    room.invite_user_by_id(&bob_id).await.expect("invite");
    let bob_room = bob
        .join_room_by_id(room.room_id())
        .await
        .expect("bob joins");

    let image = png(300, 200);
    let sent = room
        .send_attachment(
            "cat.png",
            &mime::IMAGE_PNG,
            image.clone(),
            AttachmentConfig::new(),
        )
        .await
        .expect("image uploaded and sent");

    // Bob reads the event and finds the image's mxc:// URI in it.
    let event = bob_room
        .event(&sent.event_id, None)
        .await
        .expect("bob sees the event");
    let content: serde_json::Value = event
        .raw()
        .get_field("content")
        .expect("content")
        .expect("has content");
    assert_eq!(content["msgtype"], "m.image", "{content}");
    assert_eq!(content["body"], "cat.png");
    let uri = OwnedMxcUri::from(content["url"].as_str().expect("url"));
    assert_eq!(
        uri.server_name().expect("valid mxc").as_str(),
        server.config.server_name.as_str()
    );

    let media = bob.media();
    let request = |format| MediaRequestParameters {
        source: MediaSource::Plain(uri.clone()),
        format,
    };
    let downloaded = media
        .get_media_content(&request(MediaFormat::File), false)
        .await
        .expect("download");
    assert!(downloaded == image, "the download is byte-identical");

    // `scale` keeps the aspect ratio and, per the spec, is never smaller than the requested
    // box ("Servers MUST NOT return a smaller thumbnail than requested"): 300×200 in a 64×64 box
    // is 96×64. `crop` gives exactly the requested size.
    let scaled = media
        .get_media_content(
            &request(MediaFormat::Thumbnail(MediaThumbnailSettings::with_method(
                Method::Scale,
                uint!(64),
                uint!(64),
            ))),
            false,
        )
        .await
        .expect("scale thumbnail");
    let scaled = image::load_from_memory(&scaled).expect("thumbnail decodes");
    assert_eq!((scaled.width(), scaled.height()), (96, 64));

    let cropped = media
        .get_media_content(
            &request(MediaFormat::Thumbnail(MediaThumbnailSettings::with_method(
                Method::Crop,
                uint!(32),
                uint!(32),
            ))),
            false,
        )
        .await
        .expect("crop thumbnail");
    let cropped = image::load_from_memory(&cropped).expect("thumbnail decodes");
    assert_eq!((cropped.width(), cropped.height()), (32, 32));

    // The SDK went through the authenticated endpoints: they need a token.
    let (status, body) = server
        .get(
            &format!(
                "/_matrix/client/v1/media/download/{}/{}",
                uri.server_name().expect("server"),
                uri.media_id().expect("media id")
            ),
            None,
        )
        .await;
    assert_eq!(status, 401, "{body}");
}
