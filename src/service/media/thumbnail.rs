//! Thumbnail generation, pure and synchronous: the caller runs it on a blocking thread. Input is
//! untrusted, so the format is sniffed from the bytes (never the declared type), only PNG, JPEG,
//! GIF and WebP are decoded, and dimensions and allocations are bounded before decoding, so a
//! hostile image cannot exhaust memory or time.

use std::io::Cursor;

use image::{
    codecs::{gif::GifDecoder, jpeg::JpegEncoder, webp::WebPDecoder},
    AnimationDecoder, DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits,
};

/// Largest thumbnail side a client (or a peer) may ask for.
pub const MAX_THUMBNAIL_SIDE: u32 = 4096;
/// Widest or tallest image decoded.
const MAX_DIMENSION: u32 = 16_384;
/// Largest image decoded, in pixels (about 40 megapixels: a large photo).
const MAX_PIXELS: u64 = 40_000_000;
/// Largest allocation a decoder may make.
const MAX_ALLOC: u64 = 512 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Crop,
    Scale,
}

impl Method {
    /// The byte that stands for the method in thumbnail keys.
    pub fn as_u8(self) -> u8 {
        match self {
            Method::Crop => 1,
            Method::Scale => 2,
        }
    }

    /// The name the spec gives the method in query strings.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Crop => "crop",
            Method::Scale => "scale",
        }
    }
}

pub struct Thumbnail {
    pub data: Vec<u8>,
    pub content_type: &'static str,
    pub width: u32,
    pub height: u32,
}

pub enum Outcome {
    Thumbnail(Thumbnail),
    /// Serve the original: it is no larger than asked (never upscale), or animated and asked for.
    Original,
}

#[derive(Debug)]
pub enum ThumbnailError {
    /// Not an image format we thumbnail.
    NotAnImage,
    /// Dimensions over the limits above.
    TooLarge,
    /// Looked like an image but did not decode.
    Corrupt(String),
}

/// The formats we decode, sniffed from the content.
fn sniff(source: &[u8]) -> Option<ImageFormat> {
    match image::guess_format(source).ok()? {
        f @ (ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Gif | ImageFormat::WebP) => {
            Some(f)
        }
        _ => None,
    }
}

/// The content type a thumbnail of `source` will have: JPEG stays JPEG, anything else becomes PNG
/// (keeps transparency; `image` encodes WebP only losslessly). `None` for content we cannot
/// thumbnail.
pub fn output_type(source: &[u8]) -> Option<&'static str> {
    Some(match sniff(source)? {
        ImageFormat::Jpeg => "image/jpeg",
        _ => "image/png",
    })
}

fn limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_DIMENSION);
    limits.max_image_height = Some(MAX_DIMENSION);
    limits.max_alloc = Some(MAX_ALLOC);
    limits
}

fn corrupt(e: impl std::fmt::Display) -> ThumbnailError {
    ThumbnailError::Corrupt(e.to_string())
}

/// The dimensions of an image, read from its header only.
pub fn dimensions(source: &[u8]) -> Option<(u32, u32)> {
    let format = sniff(source)?;
    let mut reader = ImageReader::with_format(Cursor::new(source), format);
    reader.limits(limits());
    reader.into_dimensions().ok()
}

fn is_animated(format: ImageFormat, source: &[u8]) -> bool {
    match format {
        ImageFormat::Gif => GifDecoder::new(Cursor::new(source))
            .map(|mut d| {
                let _ = d.set_limits(limits());
                d.into_frames().take(2).filter(|f| f.is_ok()).count() > 1
            })
            .unwrap_or(false),
        ImageFormat::WebP => WebPDecoder::new(Cursor::new(source))
            .map(|d| d.has_animation())
            .unwrap_or(false),
        // APNG: `image` decodes only its first frame here, so it is treated as still.
        _ => false,
    }
}

/// `ceil(a * b / c)` without overflow for image-sized numbers.
fn mul_div_ceil(a: u32, b: u32, c: u32) -> u32 {
    (a as u64 * b as u64)
        .div_ceil(c.max(1) as u64)
        .min(u32::MAX as u64) as u32
}

/// The size a `scale` thumbnail gets: the original aspect ratio, and never smaller than the
/// requested box (the spec's "MUST NOT return a smaller thumbnail than requested"): one side
/// equals the request, the other is at least its request. `None` when that would need upscaling.
pub fn scale_size(width: u32, height: u32, want_w: u32, want_h: u32) -> Option<(u32, u32)> {
    let (w, h) = if want_w as u64 * height as u64 >= want_h as u64 * width as u64 {
        (want_w, mul_div_ceil(height, want_w, width))
    } else {
        (mul_div_ceil(width, want_h, height), want_h)
    };
    (w < width || h < height)
        .then_some((w.min(width), h.min(height)))
        .filter(|&(w, h)| w >= 1 && h >= 1 && w <= width && h <= height)
}

/// Makes a thumbnail of `source` of at least `want_w`×`want_h` (see the spec's Thumbnails
/// section): `scale` keeps the aspect ratio, `crop` gives exactly the requested size (cut from
/// the centre), and neither upscales.
pub fn generate(
    source: &[u8],
    want_w: u32,
    want_h: u32,
    method: Method,
    animated: bool,
) -> Result<Outcome, ThumbnailError> {
    let format = sniff(source).ok_or(ThumbnailError::NotAnImage)?;
    let (width, height) = {
        let mut reader = ImageReader::with_format(Cursor::new(source), format);
        reader.limits(limits());
        reader.into_dimensions().map_err(|e| match e {
            image::ImageError::Limits(_) => ThumbnailError::TooLarge,
            e => corrupt(e),
        })?
    };
    if width == 0 || height == 0 {
        return Err(corrupt("empty image"));
    }
    if width as u64 * height as u64 > MAX_PIXELS {
        return Err(ThumbnailError::TooLarge);
    }
    if animated && is_animated(format, source) {
        return Ok(Outcome::Original);
    }
    if width <= want_w && height <= want_h {
        return Ok(Outcome::Original);
    }

    let decode = || {
        let mut reader = ImageReader::with_format(Cursor::new(source), format);
        reader.limits(limits());
        reader.decode().map_err(|e| match e {
            image::ImageError::Limits(_) => ThumbnailError::TooLarge,
            e => corrupt(e),
        })
    };
    let image: DynamicImage = match method {
        Method::Scale => {
            let Some((w, h)) = scale_size(width, height, want_w, want_h) else {
                return Ok(Outcome::Original);
            };
            decode()?.thumbnail_exact(w, h)
        }
        Method::Crop if width >= want_w && height >= want_h => {
            // Scale to cover the box, then cut the box from the middle.
            let (w, h) = if want_w as u64 * height as u64 >= want_h as u64 * width as u64 {
                (want_w, mul_div_ceil(height, want_w, width).max(want_h))
            } else {
                (mul_div_ceil(width, want_h, height).max(want_w), want_h)
            };
            let scaled = decode()?.thumbnail_exact(w.min(width), h.min(height));
            let (sw, sh) = (scaled.width(), scaled.height());
            scaled.crop_imm(
                (sw.saturating_sub(want_w)) / 2,
                (sh.saturating_sub(want_h)) / 2,
                want_w.min(sw),
                want_h.min(sh),
            )
        }
        Method::Crop => {
            // One side is already smaller than asked: cut the requested aspect ratio from the
            // middle at the largest size the original has, without scaling.
            let (w, h) = if width < want_w {
                (width, mul_div_ceil(width, want_h, want_w).min(height))
            } else {
                (mul_div_ceil(height, want_w, want_h).min(width), height)
            };
            decode()?.crop_imm((width - w) / 2, (height - h) / 2, w.max(1), h.max(1))
        }
    };

    let mut data = Vec::new();
    let content_type = if format == ImageFormat::Jpeg {
        let rgb = image.to_rgb8();
        JpegEncoder::new_with_quality(&mut data, 80)
            .encode_image(&rgb)
            .map_err(corrupt)?;
        "image/jpeg"
    } else {
        image
            .write_to(&mut Cursor::new(&mut data), ImageFormat::Png)
            .map_err(corrupt)?;
        "image/png"
    };
    Ok(Outcome::Thumbnail(Thumbnail {
        data,
        content_type,
        width: image.width(),
        height: image.height(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbaImage::from_fn(w, h, |x, y| image::Rgba([x as u8, y as u8, 7, 255]));
        let mut out = Vec::new();
        DynamicImage::ImageRgba8(img)
            .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    fn dims(outcome: Outcome) -> (u32, u32) {
        match outcome {
            Outcome::Thumbnail(t) => {
                let decoded = image::load_from_memory(&t.data).unwrap();
                assert_eq!((decoded.width(), decoded.height()), (t.width, t.height));
                (t.width, t.height)
            }
            Outcome::Original => (0, 0),
        }
    }

    #[test]
    fn scale_keeps_aspect_and_covers_the_box() {
        assert_eq!(scale_size(300, 200, 64, 64), Some((96, 64)));
        assert_eq!(scale_size(200, 300, 64, 64), Some((64, 96)));
        assert_eq!(scale_size(640, 480, 320, 240), Some((320, 240)));
        // Covering the box would need upscaling one side: the original is served.
        assert_eq!(scale_size(300, 20, 64, 64), None);
        let source = png(300, 200);
        for (w, h, method, expected) in [
            (64, 64, Method::Scale, (96, 64)),
            (32, 32, Method::Crop, (32, 32)),
            (600, 600, Method::Crop, (0, 0)),
            (400, 100, Method::Crop, (300, 75)),
        ] {
            let thumbnail = generate(&source, w, h, method, false).unwrap();
            assert_eq!(dims(thumbnail), expected, "{w}x{h} {method:?}");
        }
    }

    fn encoded(w: u32, h: u32, format: ImageFormat) -> Vec<u8> {
        let img = image::RgbaImage::from_fn(w, h, |x, y| image::Rgba([x as u8, y as u8, 9, 255]));
        let img = if format == ImageFormat::Jpeg {
            DynamicImage::ImageRgb8(DynamicImage::ImageRgba8(img).to_rgb8())
        } else {
            DynamicImage::ImageRgba8(img)
        };
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), format).unwrap();
        out
    }

    fn animated_gif(w: u32, h: u32) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut encoder = image::codecs::gif::GifEncoder::new(&mut out);
            for shade in [0u8, 200] {
                let frame = image::RgbaImage::from_pixel(w, h, image::Rgba([shade, 0, 0, 255]));
                encoder.encode_frame(image::Frame::new(frame)).unwrap();
            }
        }
        out
    }

    #[test]
    fn jpeg_webp_and_gif_inputs_are_thumbnailed() {
        for (format, out_type) in [
            (ImageFormat::Jpeg, "image/jpeg"),
            (ImageFormat::WebP, "image/png"),
            (ImageFormat::Gif, "image/png"),
        ] {
            let source = encoded(200, 100, format);
            assert_eq!(output_type(&source), Some(out_type), "{format:?}");
            match generate(&source, 32, 32, Method::Crop, false).unwrap() {
                Outcome::Thumbnail(t) => {
                    assert_eq!((t.width, t.height, t.content_type), (32, 32, out_type));
                }
                Outcome::Original => panic!("{format:?} was not thumbnailed"),
            }
        }
        // An animated GIF: its first frame when still is asked for, the original when animated.
        let gif = animated_gif(100, 100);
        assert_eq!(
            dims(generate(&gif, 32, 32, Method::Scale, false).unwrap()),
            (32, 32)
        );
        assert!(matches!(
            generate(&gif, 32, 32, Method::Scale, true).unwrap(),
            Outcome::Original
        ));
        // A still image asked for animated is thumbnailed as usual.
        let still = encoded(100, 100, ImageFormat::Png);
        assert_eq!(
            dims(generate(&still, 32, 32, Method::Scale, true).unwrap()),
            (32, 32)
        );
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(matches!(
            generate(b"just some text", 32, 32, Method::Crop, false),
            Err(ThumbnailError::NotAnImage)
        ));
        let mut truncated = png(300, 200);
        truncated.truncate(80);
        assert!(matches!(
            generate(&truncated, 32, 32, Method::Crop, false),
            Err(ThumbnailError::Corrupt(_))
        ));
        // A header claiming a huge image is refused before anything is allocated.
        let mut huge = png(1, 1);
        huge[16..20].copy_from_slice(&60_000u32.to_be_bytes());
        huge[20..24].copy_from_slice(&60_000u32.to_be_bytes());
        assert!(generate(&huge, 32, 32, Method::Crop, false).is_err());
    }
}
