//! `media`: a few clients upload large files of random bytes, download them back (checking every
//! byte), then ask for one thumbnail of each of many distinct images. Upload and download
//! throughput in MB/s and thumbnails per second.
//!
//! Every thumbnail is of an image never thumbnailed before, so each is a fresh generation, not a
//! cache hit; the images are uploaded before the clock starts. (A server that makes thumbnails at
//! upload time would answer from those: run.sh configures Synapse to make them on request, as
//! Hearth does.)

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use clap::Args;
use serde_json::json;

use crate::{
    client::{Server, User},
    common::{register_all, run_concurrently, run_id},
    report::{Metric, Report},
    stats::{Failures, Latencies},
    Common,
};

#[derive(Args, Debug, Clone)]
pub struct MediaArgs {
    /// Files uploaded and downloaded in the throughput phases.
    #[arg(long, default_value_t = 40)]
    pub files: usize,
    /// Size of each file in MB (10^6 bytes).
    #[arg(long, default_value_t = 10)]
    pub file_mb: usize,
    /// Concurrent clients, each its own account.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Distinct images thumbnailed, one thumbnail each.
    #[arg(long, default_value_t = 120)]
    pub images: usize,
    /// Size of each image (a PNG of this width and height).
    #[arg(long, default_value_t = 1024)]
    pub image_width: u32,
    #[arg(long, default_value_t = 768)]
    pub image_height: u32,
    /// Side of the square `crop` thumbnail asked for.
    #[arg(long, default_value_t = 96)]
    pub thumbnail_side: u32,
}

/// xorshift64*: fast, reproducible bytes that no compression or deduplication can shrink.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A PNG photo stand-in: smooth gradients with noise, different for every `seed`.
fn image_png(width: u32, height: u32, seed: u64) -> Result<Vec<u8>, String> {
    let noise = random_bytes((width * height) as usize, seed);
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        let n = noise[(y * width + x) as usize] / 8;
        let s = seed as u32;
        image::Rgb([
            ((x + s) % 256) as u8 ^ n,
            ((y * 2 + s) % 256) as u8,
            ((x + y + s * 7) % 256) as u8 ^ n,
        ])
    });
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .map_err(|e| format!("encoding a PNG: {e}"))?;
    Ok(out)
}

/// What one phase measured.
#[derive(Default)]
struct Phase {
    latencies: Latencies,
    failures: Failures,
    bytes: u64,
    done: u64,
    wall: Duration,
}

impl Phase {
    fn merge(&mut self, other: Phase) {
        self.latencies.extend(other.latencies);
        self.failures.merge(other.failures);
        self.bytes += other.bytes;
        self.done += other.done;
    }

    fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.wall.as_secs_f64()
    }
}

/// Runs `work` for every item index, `clients` workers at a time, worker `w` as `users[w]`
/// taking items `w, w + clients, ...`; wall time is from the first request to the last answer.
async fn run_phase<F, Fut>(users: &[User], items: usize, work: F) -> Phase
where
    F: Fn(User, usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Phase> + Send,
{
    let clients = users.len();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (w, user) in users.iter().enumerate() {
        let (user, work) = (user.clone(), work.clone());
        tasks.spawn(async move {
            let mut phase = Phase::default();
            for i in (w..items).step_by(clients) {
                phase.merge(work(user.clone(), i).await);
            }
            phase
        });
    }
    let mut total = Phase::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(phase) => total.merge(phase),
            Err(e) => total.failures.add("worker", e),
        }
    }
    total.wall = started.elapsed();
    total
}

pub async fn run(server: &Server, common: &Common, args: &MediaArgs) -> Result<Report, String> {
    let clients = args.clients.max(1);
    let run = run_id();
    let names = (0..clients).map(|i| format!("media{run}c{i}")).collect();
    let users = register_all(server, names, common.setup_concurrency).await?;
    // Large bodies take longer than the default per-request limit on a slow server.
    let server =
        server.fresh_pool_with_timeout(Duration::from_secs_f64(common.timeout.max(120.0)))?;

    let size = args.file_mb * 1_000_000;
    let files: Arc<Vec<Bytes>> = Arc::new(
        (0..args.files)
            .map(|i| Bytes::from(random_bytes(size, i as u64 + 1)))
            .collect(),
    );

    // Upload: every file once.
    let uris: Arc<slots::Slots> = Arc::new(slots::Slots::new(args.files));
    let upload = {
        let (server, files, uris) = (server.clone(), files.clone(), uris.clone());
        run_phase(&users, args.files, move |user, i| {
            let (server, files, uris) = (server.clone(), files.clone(), uris.clone());
            async move {
                let mut phase = Phase::default();
                let started = Instant::now();
                match server
                    .upload(&user, "application/octet-stream", files[i].clone())
                    .await
                {
                    Ok(uri) => {
                        phase.latencies.push(started.elapsed());
                        phase.bytes += files[i].len() as u64;
                        phase.done += 1;
                        uris.set(i, uri);
                    }
                    Err(e) => phase.failures.add(format!("upload: {}", e.category()), e),
                }
                phase
            }
        })
        .await
    };

    // Download: every uploaded file, by another client than the one that uploaded it.
    let download = {
        let (server, files, uris) = (server.clone(), files.clone(), uris.clone());
        let shifted: Vec<User> = users
            .iter()
            .cycle()
            .skip(1)
            .take(clients)
            .cloned()
            .collect();
        run_phase(&shifted, args.files, move |user, i| {
            let (server, files, uris) = (server.clone(), files.clone(), uris.clone());
            async move {
                let mut phase = Phase::default();
                let Some(uri) = uris.get(i) else {
                    return phase;
                };
                let started = Instant::now();
                match server.download(&user, &uri).await {
                    Ok(body) if body == files[i][..] => {
                        phase.latencies.push(started.elapsed());
                        phase.bytes += body.len() as u64;
                        phase.done += 1;
                    }
                    Ok(body) => phase.failures.add(
                        "download: wrong bytes",
                        format!(
                            "{uri}: {} bytes, not the {} uploaded",
                            body.len(),
                            files[i].len()
                        ),
                    ),
                    Err(e) => phase.failures.add(format!("download: {}", e.category()), e),
                }
                phase
            }
        })
        .await
    };

    // Thumbnails: distinct images, uploaded untimed, then one crop thumbnail of each.
    let (w, h) = (args.image_width, args.image_height);
    let images: Vec<usize> = (0..args.images).collect();
    let image_uris = {
        let (server, owner) = (server.clone(), users[0].clone());
        run_concurrently(images, clients, move |i| {
            let (server, owner) = (server.clone(), owner.clone());
            async move {
                let png = tokio::task::spawn_blocking(move || image_png(w, h, i as u64 + 1000))
                    .await
                    .map_err(|e| format!("image task: {e}"))??;
                server
                    .upload(&owner, "image/png", Bytes::from(png))
                    .await
                    .map_err(|e| format!("uploading image {i}: {e}"))
            }
        })
        .await?
    };
    let image_uris = Arc::new(image_uris);
    let side = args.thumbnail_side;
    let thumbs: Arc<slots::Slots<Vec<u8>>> = Arc::new(slots::Slots::new(args.images));
    let thumbnail = {
        let (server, image_uris, thumbs) = (server.clone(), image_uris.clone(), thumbs.clone());
        run_phase(&users, args.images, move |user, i| {
            let (server, image_uris, thumbs) = (server.clone(), image_uris.clone(), thumbs.clone());
            async move {
                let mut phase = Phase::default();
                let started = Instant::now();
                match server
                    .thumbnail(&user, &image_uris[i], (side, side), "crop")
                    .await
                {
                    Ok(body) => {
                        phase.latencies.push(started.elapsed());
                        phase.bytes += body.len() as u64;
                        phase.done += 1;
                        thumbs.set(i, body);
                    }
                    Err(e) => phase
                        .failures
                        .add(format!("thumbnail: {}", e.category()), e),
                }
                phase
            }
        })
        .await
    };
    // Checked after the clock stopped: each is an image of the size asked for.
    let mut thumbnail_failures = Failures::default();
    for i in 0..args.images {
        let Some(body) = thumbs.get(i) else { continue };
        match image::load_from_memory(&body) {
            Ok(img) if (img.width(), img.height()) == (side, side) => {}
            Ok(img) => thumbnail_failures.add(
                "thumbnail: wrong size",
                format!("{}x{}, not {side}x{side}", img.width(), img.height()),
            ),
            Err(e) => thumbnail_failures.add("thumbnail: not an image", e),
        }
    }

    let thumbs_per_sec = thumbnail.done as f64 / thumbnail.wall.as_secs_f64();
    let (upload_rate, download_rate) = (upload.mb_per_sec(), download.mb_per_sec());
    let mut failures = Failures::default();
    failures.merge(upload.failures);
    failures.merge(download.failures);
    failures.merge(thumbnail.failures);
    failures.merge(thumbnail_failures);
    Ok(Report {
        scenario: "media",
        metrics: vec![
            Metric::new(
                "upload_mb_per_sec",
                "upload throughput",
                upload_rate,
                "MB/s",
            ),
            Metric::new(
                "download_mb_per_sec",
                "download throughput",
                download_rate,
                "MB/s",
            ),
            Metric::new(
                "thumbnails_per_sec",
                "thumbnails generated",
                thumbs_per_sec,
                "thumbnails/s",
            ),
            Metric::new(
                "upload_p50_ms",
                "upload latency p50",
                upload.latencies.percentile_ms(50.0),
                "ms",
            ),
            Metric::new(
                "download_p50_ms",
                "download latency p50",
                download.latencies.percentile_ms(50.0),
                "ms",
            ),
            Metric::new(
                "thumbnail_p50_ms",
                "thumbnail latency p50",
                thumbnail.latencies.percentile_ms(50.0),
                "ms",
            ),
            Metric::new("uploaded", "files uploaded", upload.done as f64, "files").info(),
            Metric::new(
                "downloaded",
                "files downloaded and checked",
                download.done as f64,
                "files",
            )
            .info(),
            Metric::new(
                "thumbnails",
                "thumbnails received",
                thumbnail.done as f64,
                "thumbnails",
            )
            .info(),
        ],
        params: json!({
            "files": args.files,
            "file_mb": args.file_mb,
            "clients": clients,
            "images": args.images,
            "image_size": format!("{w}x{h}"),
            "thumbnail": format!("{side}x{side} crop"),
        }),
        failures,
        notes: vec![format!(
            "{} MB uploaded in {:.1} s, downloaded in {:.1} s; {} thumbnails in {:.1} s",
            upload.bytes / 1_000_000,
            upload.wall.as_secs_f64(),
            download.wall.as_secs_f64(),
            thumbnail.done,
            thumbnail.wall.as_secs_f64()
        )],
    })
}

/// Results written by concurrent workers into numbered slots.
mod slots {
    use std::sync::Mutex;

    pub struct Slots<T = String>(Mutex<Vec<Option<T>>>);

    impl<T: Clone> Slots<T> {
        pub fn new(n: usize) -> Self {
            Self(Mutex::new((0..n).map(|_| None).collect()))
        }

        pub fn set(&self, i: usize, value: T) {
            if let Ok(mut slots) = self.0.lock() {
                if let Some(slot) = slots.get_mut(i) {
                    *slot = Some(value);
                }
            }
        }

        pub fn get(&self, i: usize) -> Option<T> {
            self.0.lock().ok()?.get(i).cloned().flatten()
        }
    }
}
