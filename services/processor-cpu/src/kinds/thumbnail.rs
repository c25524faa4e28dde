//! `thumbnail`: shrinks a PNG or JPEG to fit a `width` × `height` box, keeping its aspect
//! ratio, and returns it as a PNG. Images are never enlarged (like PIL's `thumbnail`).

use std::io::Cursor;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use image::imageops::FilterType;
use image::{DynamicImage, ImageError, ImageFormat, ImageReader};
use jetjobs::processor::{Handler, JobContext, JobError, KindDef, constrain, schema_of};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

pub const KIND: &str = "thumbnail";

/// Steps reported as progress: decode, resize, encode.
const STEPS: u64 = 3;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ThumbnailRequest {
    /// A PNG or JPEG image, base64 (standard alphabet, padded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_b64: Option<String>,
    /// Or the id of an uploaded blob (`POST /v1/blobs`) holding the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_blob: Option<String>,
    /// Width of the box the thumbnail must fit in, at least 1.
    pub width: u32,
    /// Height of the box the thumbnail must fit in, at least 1.
    pub height: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct ThumbnailResult {
    /// The thumbnail, a PNG, base64.
    pub image_b64: String,
    pub width: u32,
    pub height: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThumbnailLimits {
    /// Largest `width` or `height` a request may ask for.
    pub max_dimension: u32,
    /// Widest or tallest input image, checked from its header before decoding.
    pub max_input_dimension: u32,
    /// Most memory the decoder may allocate.
    pub max_alloc_bytes: u64,
    /// Longest `image_b64` in a result, so the outcome event fits in a NATS message.
    pub max_result_bytes: usize,
}

pub struct Thumbnail {
    limits: ThumbnailLimits,
}

impl Thumbnail {
    pub fn new(limits: ThumbnailLimits) -> Self {
        Self { limits }
    }
}

impl Handler for Thumbnail {
    type Payload = ThumbnailRequest;
    type Output = ThumbnailResult;

    fn def(&self) -> KindDef {
        KindDef::new(
            KIND,
            "Shrinks a PNG or JPEG (`image_b64`, or blob `image_blob`) to fit `width` × `height`, keeping its aspect ratio; returns a PNG.",
        )
        .upload_field("image_blob")
    }

    /// The derived schema plus what [`check_box`] checks.
    fn schema(&self) -> serde_json::Value {
        let mut schema = schema_of::<ThumbnailRequest>();
        let bounds = json!({"minimum": 1, "maximum": self.limits.max_dimension});
        constrain(&mut schema, "width", bounds.clone());
        constrain(&mut schema, "height", bounds);
        if let Some(object) = schema.as_object_mut() {
            object.insert(
                "oneOf".into(),
                json!([
                    {"required": ["image_b64"], "properties": {"image_b64": {"type": "string"}}},
                    {"required": ["image_blob"], "properties": {"image_blob": {"type": "string"}}}
                ]),
            );
        }
        schema
    }

    async fn handle(
        &self,
        payload: ThumbnailRequest,
        ctx: JobContext,
    ) -> Result<ThumbnailResult, JobError> {
        check_request(&payload, &self.limits)?;
        let limits = self.limits;
        let (width, height) = (payload.width, payload.height);
        let source = match (payload.image_b64, payload.image_blob) {
            (Some(b64), None) => Source::Base64(b64),
            (None, Some(id)) => Source::Bytes(read_blob(&ctx, &id).await?),
            _ => {
                return Err(JobError::permanent(
                    "give exactly one of image_b64 and image_blob",
                ));
            }
        };
        ctx.blocking(move |ctx| {
            let bytes = match source {
                Source::Base64(b64) => decode_base64(&b64)?,
                Source::Bytes(bytes) => bytes,
            };
            let thumbnail = make_thumbnail(
                &bytes,
                (width, height),
                &limits,
                |done, total| ctx.progress(done, total),
                || ctx.is_cancelled(),
            )?;
            let image_b64 = STANDARD.encode(&thumbnail.png);
            if image_b64.len() > limits.max_result_bytes {
                return Err(JobError::Permanent(format!(
                    "the {}x{} thumbnail is {} bytes of base64, above the limit of {}; ask for a smaller one",
                    thumbnail.width,
                    thumbnail.height,
                    image_b64.len(),
                    limits.max_result_bytes
                )));
            }
            Ok(ThumbnailResult {
                image_b64,
                width: thumbnail.width,
                height: thumbnail.height,
            })
        })
        .await?
    }
}

enum Source {
    Base64(String),
    Bytes(Vec<u8>),
}

/// Largest image blob read: an image is decoded whole, so it is read whole, within this.
const MAX_IMAGE_BLOB_BYTES: u64 = 64 << 20;

async fn read_blob(ctx: &JobContext, id: &str) -> Result<Vec<u8>, JobError> {
    use tokio::io::AsyncReadExt as _;
    let info = ctx.blob_info(id).await?;
    if info.size > MAX_IMAGE_BLOB_BYTES {
        return Err(JobError::Permanent(format!(
            "blob {id} is {} bytes, above the {MAX_IMAGE_BLOB_BYTES} bytes an image may have",
            info.size
        )));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(info.size).unwrap_or_default());
    ctx.blob(id)
        .await?
        .take(MAX_IMAGE_BLOB_BYTES + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| JobError::Retryable(format!("reading blob {id}: {e}")))?;
    Ok(bytes)
}

/// An encoded thumbnail and its size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Png {
    pub png: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

/// What the handler refuses before any work: not exactly one image source, or a box
/// outside the limits.
pub fn check_request(request: &ThumbnailRequest, limits: &ThumbnailLimits) -> Result<(), JobError> {
    if request.image_b64.is_some() == request.image_blob.is_some() {
        return Err(JobError::permanent(
            "give exactly one of image_b64 and image_blob",
        ));
    }
    check_box(request.width, request.height, limits)
}

pub fn check_box(width: u32, height: u32, limits: &ThumbnailLimits) -> Result<(), JobError> {
    let max = limits.max_dimension;
    if width == 0 || height == 0 {
        return Err(JobError::Permanent(format!(
            "width and height must be at least 1 (got {width}x{height})"
        )));
    }
    if width > max || height > max {
        return Err(JobError::Permanent(format!(
            "width and height must be at most {max} (got {width}x{height})"
        )));
    }
    Ok(())
}

pub fn decode_base64(data: &str) -> Result<Vec<u8>, JobError> {
    STANDARD
        .decode(data.as_bytes())
        .map_err(|e| JobError::Permanent(format!("image_b64 is not valid base64: {e}")))
}

/// The largest size with the aspect ratio of `image` that fits in `bounds`, never larger
/// than `image` itself and never smaller than 1×1.
pub fn fit_within(image: (u32, u32), bounds: (u32, u32)) -> (u32, u32) {
    let (w, h) = (u64::from(image.0), u64::from(image.1));
    let (bw, bh) = (u64::from(bounds.0), u64::from(bounds.1));
    if w <= bw && h <= bh {
        return image;
    }
    // Width binds when w/h >= bw/bh; the other side is rounded to nearest, which cannot
    // exceed its bound because the exact value does not.
    let (nw, nh) = if w * bh >= h * bw {
        (bw, (h * bw + w / 2) / w)
    } else {
        ((w * bh + h / 2) / h, bh)
    };
    let clamp = |v: u64| u32::try_from(v.max(1)).unwrap_or(u32::MAX);
    (clamp(nw), clamp(nh))
}

/// Decodes `bytes` (PNG or JPEG, within `limits`), shrinks it to fit `bounds`, and
/// encodes the result as PNG. Every failure caused by the input is permanent.
pub fn make_thumbnail(
    bytes: &[u8],
    bounds: (u32, u32),
    limits: &ThumbnailLimits,
    mut progress: impl FnMut(u64, u64),
    cancelled: impl Fn() -> bool,
) -> Result<Png, JobError> {
    let image = decode(bytes, limits)?;
    progress(1, STEPS);
    if cancelled() {
        return Err(super::cancelled());
    }

    let (width, height) = fit_within((image.width(), image.height()), bounds);
    let image = if (width, height) == (image.width(), image.height()) {
        image
    } else if image.width() >= width.saturating_mul(2) || image.height() >= height.saturating_mul(2)
    {
        // Area averaging: fast, and every source pixel counts, so no aliasing on big
        // reductions; it does alias when the sizes are close, hence the filter below.
        image.thumbnail_exact(width, height)
    } else {
        image.resize_exact(width, height, FilterType::CatmullRom)
    };
    progress(2, STEPS);
    if cancelled() {
        return Err(super::cancelled());
    }

    let mut png = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
        .map_err(|e| JobError::Permanent(format!("cannot encode the thumbnail as PNG: {e}")))?;
    progress(3, STEPS);
    Ok(Png { png, width, height })
}

fn decode(bytes: &[u8], limits: &ThumbnailLimits) -> Result<DynamicImage, JobError> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| JobError::Permanent(format!("cannot read the image: {e}")))?;
    match reader.format() {
        Some(ImageFormat::Png | ImageFormat::Jpeg) => {}
        Some(other) => {
            return Err(JobError::Permanent(format!(
                "unsupported image format {}; send a PNG or a JPEG",
                other
                    .extensions_str()
                    .first()
                    .copied()
                    .unwrap_or("(unknown)")
            )));
        }
        None => {
            return Err(JobError::permanent(
                "image_b64 is not a PNG or a JPEG image",
            ));
        }
    }
    // Checked against the header before any pixel is decoded: a tiny file claiming
    // a huge image (a decompression bomb) fails here, not in the allocator.
    let mut decode_limits = image::Limits::default();
    decode_limits.max_image_width = Some(limits.max_input_dimension);
    decode_limits.max_image_height = Some(limits.max_input_dimension);
    decode_limits.max_alloc = Some(limits.max_alloc_bytes);
    reader.limits(decode_limits);
    reader.decode().map_err(|e| match e {
        ImageError::Limits(e) => JobError::Permanent(format!(
            "the image is too large to process ({e}); the limits are {} pixels per side and {} bytes of memory",
            limits.max_input_dimension, limits.max_alloc_bytes
        )),
        e => JobError::Permanent(format!("cannot decode the image: {e}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage};

    /// The box's limits are refused at submit; the image itself (its format, its size)
    /// can only be judged by decoding it, which is the handler's.
    #[test]
    fn the_schema_refuses_the_boxes_the_handler_refuses() {
        let limits = ThumbnailLimits {
            max_dimension: 64,
            ..LIMITS
        };
        let mut payloads = vec![
            json!({"width": 1, "height": 1}),
            json!({"image_b64": "AA==", "width": 1}),
            json!({"image_b64": "AA==", "width": 1, "height": 1, "x": 0}),
            json!({"image_b64": "AA==", "width": -1, "height": 1}),
            json!({"image_b64": 5, "width": 1, "height": 1}),
            json!({"image_blob": "b", "width": 1, "height": 1}),
            json!({"image_blob": "b", "image_b64": "AA==", "width": 1, "height": 1}),
        ];
        for width in [0, 1, 64, 65] {
            for height in [0, 1, 64, 65] {
                payloads.push(json!({"image_b64": "AA==", "width": width, "height": height}));
            }
        }
        let thumbnail = Thumbnail::new(limits);
        jetjobs::testing::assert_schema_agrees(&Handler::schema(&thumbnail), &payloads, |p| {
            serde_json::from_value::<ThumbnailRequest>(p.clone())
                .is_ok_and(|r| check_request(&r, &limits).is_ok())
        });
    }

    const LIMITS: ThumbnailLimits = ThumbnailLimits {
        max_dimension: 4096,
        max_input_dimension: 16_384,
        max_alloc_bytes: 256 * 1024 * 1024,
        max_result_bytes: 768 * 1024,
    };

    fn gradient(width: u32, height: u32) -> DynamicImage {
        DynamicImage::ImageRgb8(RgbImage::from_fn(width, height, |x, y| {
            Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
        }))
    }

    fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut out), format)
            .expect("encode a test image");
        out
    }

    fn thumbnail(
        bytes: &[u8],
        bounds: (u32, u32),
        limits: &ThumbnailLimits,
    ) -> Result<Png, JobError> {
        make_thumbnail(bytes, bounds, limits, |_, _| {}, || false)
    }

    fn permanent_message(outcome: Result<Png, JobError>) -> String {
        match outcome {
            Err(JobError::Permanent(message)) => message,
            other => panic!("expected a permanent error, got {other:?}"),
        }
    }

    #[test]
    fn fits_the_box_and_keeps_the_aspect_ratio() {
        assert_eq!(fit_within((400, 200), (100, 100)), (100, 50));
        assert_eq!(fit_within((200, 400), (100, 100)), (50, 100));
        assert_eq!(fit_within((400, 200), (300, 50)), (100, 50));
        assert_eq!(fit_within((1000, 333), (100, 100)), (100, 33));
        assert_eq!(fit_within((1000, 335), (100, 100)), (100, 34));
        assert_eq!(fit_within((10_000, 1), (100, 100)), (100, 1));
        assert_eq!(fit_within((1, 10_000), (100, 100)), (1, 100));
    }

    #[test]
    fn never_enlarges() {
        assert_eq!(fit_within((50, 20), (100, 100)), (50, 20));
        assert_eq!(fit_within((100, 100), (100, 100)), (100, 100));
    }

    #[test]
    fn always_within_bounds() {
        for (w, h) in [(3, 7), (4097, 1), (999, 1000), (640, 480), (1, 1)] {
            for (bw, bh) in [(1, 1), (2, 3), (100, 100), (33, 7)] {
                let (nw, nh) = fit_within((w, h), (bw, bh));
                assert!(
                    nw >= 1 && nh >= 1 && nw <= bw.max(1) && nh <= bh.max(1),
                    "{w}x{h} in {bw}x{bh} gave {nw}x{nh}"
                );
            }
        }
    }

    #[test]
    fn shrinks_a_png() {
        let png = encode(&gradient(400, 200), ImageFormat::Png);
        let mut reports = Vec::new();
        let out = make_thumbnail(
            &png,
            (100, 100),
            &LIMITS,
            |d, t| reports.push((d, t)),
            || false,
        )
        .expect("thumbnail");
        assert_eq!((out.width, out.height), (100, 50));
        assert_eq!(reports, vec![(1, 3), (2, 3), (3, 3)]);
        let decoded = image::load_from_memory_with_format(&out.png, ImageFormat::Png)
            .expect("the result is a PNG");
        assert_eq!((decoded.width(), decoded.height()), (100, 50));
    }

    #[test]
    fn shrinks_a_jpeg_slightly() {
        // Under a 2x reduction: the filtered path.
        let jpeg = encode(&gradient(300, 300), ImageFormat::Jpeg);
        let out = thumbnail(&jpeg, (200, 250), &LIMITS).expect("thumbnail");
        assert_eq!((out.width, out.height), (200, 200));
        let decoded = image::load_from_memory(&out.png).expect("the result decodes");
        assert_eq!((decoded.width(), decoded.height()), (200, 200));
        assert_eq!(image::guess_format(&out.png).ok(), Some(ImageFormat::Png));
    }

    #[test]
    fn small_images_are_kept_as_they_are() {
        let png = encode(&gradient(40, 30), ImageFormat::Png);
        let out = thumbnail(&png, (100, 100), &LIMITS).expect("thumbnail");
        assert_eq!((out.width, out.height), (40, 30));
    }

    #[test]
    fn garbage_fails_permanently() {
        let message = permanent_message(thumbnail(b"definitely not an image", (10, 10), &LIMITS));
        assert!(message.contains("not a PNG or a JPEG"), "{message}");

        // A PNG signature with nothing valid after it.
        let mut truncated = encode(&gradient(50, 50), ImageFormat::Png);
        truncated.truncate(40);
        let message = permanent_message(thumbnail(&truncated, (10, 10), &LIMITS));
        assert!(message.contains("cannot decode"), "{message}");

        match decode_base64("@@not base64@@") {
            Err(JobError::Permanent(message)) => assert!(message.contains("base64"), "{message}"),
            other => panic!("expected a permanent error, got {other:?}"),
        }
    }

    #[test]
    fn other_formats_are_refused() {
        // A GIF header: recognised, but this processor does not decode it.
        let message = permanent_message(thumbnail(
            b"GIF89a\x01\x00\x01\x00\x00\x00\x00;",
            (10, 10),
            &LIMITS,
        ));
        assert!(
            message.contains("unsupported image format gif"),
            "{message}"
        );
    }

    #[test]
    fn oversize_images_are_refused_before_decoding() {
        let png = encode(&gradient(400, 200), ImageFormat::Png);
        let small_side = ThumbnailLimits {
            max_input_dimension: 300,
            ..LIMITS
        };
        let message = permanent_message(thumbnail(&png, (100, 100), &small_side));
        assert!(message.contains("too large"), "{message}");

        let small_memory = ThumbnailLimits {
            max_alloc_bytes: 10_000,
            ..LIMITS
        };
        let message = permanent_message(thumbnail(&png, (100, 100), &small_memory));
        assert!(message.contains("too large"), "{message}");
    }

    #[test]
    fn the_box_is_checked() {
        assert!(check_box(1, 1, &LIMITS).is_ok());
        assert!(check_box(4096, 4096, &LIMITS).is_ok());
        for (w, h) in [(0, 10), (10, 0), (4097, 10), (10, 4097)] {
            assert!(
                matches!(check_box(w, h, &LIMITS), Err(JobError::Permanent(_))),
                "{w}x{h}"
            );
        }
    }

    #[test]
    fn cancellation_stops_it() {
        let png = encode(&gradient(400, 200), ImageFormat::Png);
        let outcome = make_thumbnail(&png, (100, 100), &LIMITS, |_, _| {}, || true);
        assert_eq!(outcome, Err(JobError::Retryable("cancelled".to_string())));
    }
}
