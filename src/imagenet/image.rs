//! Images in: decoding, Pillow-exact resizing, and the Keras and torchvision preprocessing.
//!
//! The seed feeds its network with Keras' `load_img(path, target_size=(224, 224))` (Pillow's
//! NEAREST resize, no crop), `img_to_array` and `preprocess_input` (caffe mode). This module
//! reproduces that bit for bit; see [`keras_resnet_input`]. JPEG files are decoded by this
//! crate's own decoder, bit-identical to Pillow's libjpeg-turbo (the accurate integer IDCT,
//! fancy upsampling, its fixed-point colour conversion); PNGs by the `image` crate.

use std::path::Path;

use ::image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};
use ndarray::{Array4, Axis};

use super::{jpeg, stream};
use crate::budget::{read_regular_file, LoadBudget};
use crate::error::{Error, Result};
use crate::layers::Tensor;

/// Keras' caffe-mode means, subtracted from the B, G, R channels.
pub const CAFFE_BGR_MEAN: [f32; 3] = [103.939, 116.779, 123.68];

/// torchvision's ImageNet normalisation, R, G, B.
pub const TORCHVISION_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// torchvision's ImageNet standard deviations, R, G, B.
pub const TORCHVISION_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// How images are read: the [`LoadBudget`]'s image limits (file size, side, pixel count)
/// and whether a truncated stream is accepted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImageOptions {
    /// `max_image_file_bytes`, `max_image_side` and `max_image_pixels` apply.
    pub budget: LoadBudget,
    /// Accept a JPEG that ends before its last scan (as Pillow does with
    /// `ImageFile.LOAD_TRUNCATED_IMAGES = True`): the missing blocks decode as mid-grey. Off by
    /// default: a truncated JPEG or PNG (no end-of-image marker, no `IEND` chunk, a chunk cut
    /// short) is an [`Error::Image`]. A PNG whose pixel data is cut short is an error either
    /// way, since its decoder stops at the first missing byte.
    pub allow_truncated: bool,
}

impl ImageOptions {
    /// The default budget, truncated streams accepted.
    pub fn lenient() -> Self {
        ImageOptions {
            allow_truncated: true,
            ..Self::default()
        }
    }
}

/// An 8-bit RGB image, row-major `(height, width, 3)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// `height * width * 3` bytes, R, G, B per pixel.
    pub data: Vec<u8>,
}

impl RgbImage {
    /// An image from its bytes, checking the length.
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<Self> {
        if width.checked_mul(height).and_then(|p| p.checked_mul(3)) != Some(data.len()) {
            return Err(Error::shape(
                "RgbImage",
                format!("{width} x {height} x 3 bytes"),
                format!("{} bytes", data.len()),
            ));
        }
        Ok(RgbImage { width, height, data })
    }

    /// Pillow's `resize((width, height), Image.NEAREST)`: the source column of output column
    /// `x` is `trunc(xo)`, where `xo` starts at `scale / 2` and grows by `scale = in / out` per
    /// column as an accumulating `f64` sum (rows likewise), exactly as Pillow's
    /// `ImagingScaleAffine` computes it.
    pub fn resize_nearest(&self, width: usize, height: usize) -> Result<RgbImage> {
        self.check_target(width, height)?;
        let pick = |src: usize, dst: usize| -> Vec<usize> {
            let scale = src as f64 / dst as f64;
            let mut pos = scale * 0.5;
            (0..dst)
                .map(|_| {
                    let i = (pos as usize).min(src - 1);
                    pos += scale;
                    i
                })
                .collect()
        };
        let (cols, rows) = (pick(self.width, width), pick(self.height, height));
        let mut data = Vec::with_capacity(width * height * 3);
        for &y in &rows {
            let row = &self.data[y * self.width * 3..(y + 1) * self.width * 3];
            for &x in &cols {
                data.extend_from_slice(&row[x * 3..x * 3 + 3]);
            }
        }
        RgbImage::new(width, height, data)
    }

    /// Pillow's `resize((width, height), Image.BILINEAR)` (with its antialiasing support when
    /// shrinking), in Pillow's 8-bit fixed-point arithmetic: horizontal pass, then vertical.
    pub fn resize_bilinear(&self, width: usize, height: usize) -> Result<RgbImage> {
        self.check_target(width, height)?;
        let mut img = self.clone();
        if width != img.width {
            let coeffs = resample_coeffs(img.width, width);
            let mut out = vec![0u8; img.height * width * 3];
            for y in 0..img.height {
                let src = &img.data[y * img.width * 3..(y + 1) * img.width * 3];
                let dst = &mut out[y * width * 3..(y + 1) * width * 3];
                for (x, (start, k)) in coeffs.iter().enumerate() {
                    for c in 0..3 {
                        dst[x * 3 + c] = convolve(k.iter().enumerate().map(|(i, &w)| (src[(start + i) * 3 + c], w)));
                    }
                }
            }
            img = RgbImage {
                width,
                height: img.height,
                data: out,
            };
        }
        if height != img.height {
            let coeffs = resample_coeffs(img.height, height);
            let mut out = vec![0u8; height * img.width * 3];
            let stride = img.width * 3;
            for (y, (start, k)) in coeffs.iter().enumerate() {
                for i in 0..stride {
                    out[y * stride + i] = convolve(k.iter().enumerate().map(|(j, &w)| (img.data[(start + j) * stride + i], w)));
                }
            }
            img = RgbImage {
                width: img.width,
                height,
                data: out,
            };
        }
        Ok(img)
    }

    /// The `width x height` window whose top-left corner is `(left, top)`.
    pub fn crop(&self, left: usize, top: usize, width: usize, height: usize) -> Result<RgbImage> {
        if left.checked_add(width).is_none_or(|r| r > self.width) || top.checked_add(height).is_none_or(|b| b > self.height) {
            return Err(Error::shape(
                "crop",
                format!("a window inside {}x{}", self.width, self.height),
                format!("{width}x{height} at ({left}, {top})"),
            ));
        }
        let mut data = Vec::with_capacity(width * height * 3);
        for y in top..top + height {
            data.extend_from_slice(&self.data[(y * self.width + left) * 3..(y * self.width + left + width) * 3]);
        }
        RgbImage::new(width, height, data)
    }

    /// Keras' `img_to_array` plus a batch axis: `(1, height, width, 3)` floats, RGB, 0-255.
    pub fn to_tensor(&self) -> Tensor {
        let a = Array4::from_shape_fn((1, self.height, self.width, 3), |(_, y, x, c)| {
            f32::from(self.data[(y * self.width + x) * 3 + c])
        });
        a.into_dyn()
    }

    fn check_target(&self, width: usize, height: usize) -> Result<()> {
        if width == 0 || height == 0 || self.width == 0 || self.height == 0 {
            return Err(Error::shape(
                "resize",
                "non-empty source and target sizes",
                format!("{}x{} -> {width}x{height}", self.width, self.height),
            ));
        }
        width
            .checked_mul(height)
            .and_then(|p| p.checked_mul(3))
            .ok_or_else(|| Error::overflow("resize", "the target size"))?;
        Ok(())
    }
}

/// Pillow's fixed-point precision for 8-bit resampling.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's `precompute_coeffs` with the bilinear (triangle) filter, normalised and then
/// converted to fixed point as `normalize_coeffs_8bpc` does: per output index, the first
/// input index and the weights.
fn resample_coeffs(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i64>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // the bilinear filter's support is 1
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            let xmin = ((center - support + 0.5) as isize).max(0) as usize;
            let xmax = ((center + support + 0.5) as isize).min(in_size as isize) as usize;
            let w: Vec<f64> = (xmin..xmax)
                .map(|x| (1.0 - ((x as f64 - center + 0.5) * ss).abs()).max(0.0))
                .collect();
            let total: f64 = w.iter().sum();
            let fixed = w
                .iter()
                .map(|&v| {
                    let v = if total != 0.0 { v / total } else { v } * f64::from(1u32 << PRECISION_BITS);
                    (if v < 0.0 { v - 0.5 } else { v + 0.5 }) as i64
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn convolve(taps: impl Iterator<Item = (u8, i64)>) -> u8 {
    let acc = taps.fold(1i64 << (PRECISION_BITS - 1), |acc, (v, w)| acc + i64::from(v) * w);
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Decodes an image file (PNG or JPEG) and converts it to RGB as Pillow's `convert("RGB")`
/// does: grey is replicated, alpha dropped (not composited), palettes expanded; 16-bit
/// colour keeps the high byte, 16-bit grey is clipped at 255 (Pillow's `I;16` to `RGB`).
/// Within the default [`ImageOptions`]: truncated files are errors.
pub fn load_rgb(path: impl AsRef<Path>) -> Result<RgbImage> {
    load_rgb_with(path, &ImageOptions::default())
}

/// [`load_rgb`] with explicit options. Only regular files are read, and only up to
/// `budget.max_image_file_bytes`.
pub fn load_rgb_with(path: impl AsRef<Path>, options: &ImageOptions) -> Result<RgbImage> {
    let path = path.as_ref();
    let bytes = read_regular_file(path, options.budget.max_image_file_bytes, "max_image_file_bytes")?;
    decode_rgb(&bytes, &path.display().to_string(), options)
}

/// [`load_rgb_with`] on bytes in memory; `name` is used in messages.
pub fn decode_rgb(bytes: &[u8], name: &str, options: &ImageOptions) -> Result<RgbImage> {
    let err = |reason: String| Error::Image { path: name.into(), reason };
    let budget = &options.budget;
    LoadBudget::check(
        "max_image_file_bytes",
        budget.max_image_file_bytes,
        bytes.len() as u64,
        format_args!("{name} ({} bytes)", bytes.len()),
    )?;
    let reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| err(e.to_string()))?;
    match reader.format() {
        Some(ImageFormat::Jpeg) => return decode_jpeg(bytes, name, options),
        Some(ImageFormat::Png) if !options.allow_truncated => stream::png_complete(bytes).map_err(err)?,
        Some(ImageFormat::Png) => {}
        Some(other) => return Err(err(format!("{other:?} images are not read; PNG and JPEG are"))),
        None => return Err(err("neither a PNG nor a JPEG file".into())),
    }
    let mut decoder = reader.into_decoder().map_err(|e| err(e.to_string()))?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        return Err(err(format!("the image is empty ({w}x{h})")));
    }
    budget.check_image(w.into(), h.into(), name)?;
    let pixels = u64::from(w) * u64::from(h);
    // The decoder's own allocations: at most 8 bytes a pixel (16-bit RGBA) and its buffers.
    let mut limits = Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    limits.max_alloc = Some(pixels.saturating_mul(8).saturating_add(64 << 20));
    decoder.set_limits(limits).map_err(|e| err(e.to_string()))?;
    let img = DynamicImage::from_decoder(decoder).map_err(|e| err(e.to_string()))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let data = match img {
        DynamicImage::ImageRgb8(i) => i.into_raw(),
        DynamicImage::ImageRgba8(i) => i.into_raw().chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
        DynamicImage::ImageLuma8(i) => i.into_raw().into_iter().flat_map(|v| [v, v, v]).collect(),
        DynamicImage::ImageLumaA8(i) => i.into_raw().chunks_exact(2).flat_map(|p| [p[0]; 3]).collect(),
        DynamicImage::ImageRgb16(i) => i.into_raw().into_iter().map(|v| (v >> 8) as u8).collect(),
        DynamicImage::ImageRgba16(i) => i
            .into_raw()
            .chunks_exact(4)
            .flat_map(|p| [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8])
            .collect(),
        DynamicImage::ImageLuma16(i) => i.into_raw().into_iter().flat_map(|v| [v.min(255) as u8; 3]).collect(),
        DynamicImage::ImageLumaA16(i) => i.into_raw().chunks_exact(2).flat_map(|p| [(p[0] >> 8) as u8; 3]).collect(),
        other => other.to_rgb8().into_raw(),
    };
    RgbImage::new(w, h, data)
}

/// JPEG through this crate's Pillow-exact decoder, converted to RGB as Pillow's
/// `convert("RGB")` converts its mode: `L` replicated, `CMYK` (which Pillow reads inverted,
/// Adobe's convention) by `cmyk2rgb`.
fn decode_jpeg(bytes: &[u8], name: &str, options: &ImageOptions) -> Result<RgbImage> {
    let err = |reason: String| Error::Image { path: name.into(), reason };
    let budget = &options.budget;
    let (w, h) = jpeg::dimensions(bytes).map_err(err)?;
    budget.check_image(w as u64, h as u64, name)?;
    let d = jpeg::decode(bytes, options.allow_truncated, budget.max_image_pixels).map_err(err)?;
    let data = match d.channels {
        1 => d.data.iter().flat_map(|&v| [v; 3]).collect(),
        3 => d.data,
        _ => d
            .data
            .chunks_exact(4)
            .flat_map(|p| {
                // "CMYK;I": Pillow stores 255 - each sample, then cmyk2rgb.
                let k = 255 - i32::from(p[3]);
                let nk = 255 - k;
                let ch = |v: u8| {
                    let t = (255 - i32::from(v)) * nk + 128;
                    (nk - (((t >> 8) + t) >> 8)).clamp(0, 255) as u8
                };
                [ch(p[0]), ch(p[1]), ch(p[2])]
            })
            .collect(),
    };
    RgbImage::new(d.width, d.height, data)
}

/// Keras' `load_img(path, target_size=(height, width))`: decode, convert to RGB, and resize
/// with Pillow's NEAREST when the size differs (no crop, no EXIF rotation).
pub fn keras_load_img(path: impl AsRef<Path>, target_size: Option<(usize, usize)>) -> Result<RgbImage> {
    let img = load_rgb(path)?;
    match target_size {
        Some((h, w)) if (h, w) != (img.height, img.width) => img.resize_nearest(w, h),
        _ => Ok(img),
    }
}

/// Keras' `preprocess_input(x)` in caffe mode, in place on an NHWC RGB batch: RGB becomes BGR
/// and [`CAFFE_BGR_MEAN`] is subtracted (no scaling), in `f32` as Keras computes it.
pub fn preprocess_input_caffe(x: &mut Tensor) -> Result<()> {
    let shape = x.shape().to_vec();
    if shape.len() != 4 || shape[3] != 3 {
        return Err(Error::shape(
            "preprocess_input",
            "an NHWC batch with 3 channels",
            format!("{}", crate::error::ShapeFmt(&shape)),
        ));
    }
    for mut px in x.lanes_mut(Axis(3)) {
        let (r, g, b) = (px[0], px[1], px[2]);
        px[0] = b - CAFFE_BGR_MEAN[0];
        px[1] = g - CAFFE_BGR_MEAN[1];
        px[2] = r - CAFFE_BGR_MEAN[2];
    }
    Ok(())
}

/// Keras' `preprocess_input(x)` in "tf" mode (the V2 ResNets, MobileNets, Xception), in place
/// on an NHWC batch of 0-255 values: `x / 127.5 - 1`, in `f32` as Keras computes it, so every
/// value lands in [-1, 1]. The channels stay RGB.
pub fn preprocess_input_tf(x: &mut Tensor) {
    x.mapv_inplace(|v| v / 127.5 - 1.0);
}

/// How an ImageNet network of a given origin wants its images: the reference's own pipeline,
/// from an image file or an [`RgbImage`] to a `(1, 224, 224, 3)` NHWC batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Preprocessing {
    /// Keras' ResNet50 (V1): `load_img` at 224 x 224 (Pillow's NEAREST, no crop), caffe mode
    /// (BGR, [`CAFFE_BGR_MEAN`] subtracted). [`keras_resnet_input_from_image`].
    KerasCaffe,
    /// Keras' ResNet V2 and MobileNetV2: `load_img` at 224 x 224, then "tf" mode
    /// ([`preprocess_input_tf`]).
    KerasTf,
    /// torchvision's evaluation transform: shorter side to 256 (bilinear), centre crop 224,
    /// ImageNet mean and standard deviation. [`torchvision_input`].
    Torchvision,
}

impl Preprocessing {
    /// The network input for `img`.
    pub fn input_from_image(self, img: &RgbImage) -> Result<Tensor> {
        match self {
            Preprocessing::KerasCaffe => keras_resnet_input_from_image(img),
            Preprocessing::KerasTf => {
                let img = if (img.width, img.height) == (224, 224) {
                    img.clone()
                } else {
                    img.resize_nearest(224, 224)?
                };
                let mut x = img.to_tensor();
                preprocess_input_tf(&mut x);
                Ok(x)
            }
            Preprocessing::Torchvision => torchvision_input(img),
        }
    }

    /// The network input for the image file at `path` (PNG or JPEG).
    pub fn input_from_file(self, path: impl AsRef<Path>) -> Result<Tensor> {
        self.input_from_image(&load_rgb(path)?)
    }
}

/// The seed's whole input pipeline: `load_img(path, target_size=(224, 224))`, `img_to_array`,
/// batch axis, `preprocess_input` (caffe). Returns `(1, 224, 224, 3)`.
pub fn keras_resnet_input(path: impl AsRef<Path>) -> Result<Tensor> {
    keras_resnet_input_from_image(&load_rgb(path)?)
}

/// [`keras_resnet_input`] on an image already decoded: Pillow's NEAREST resize to 224 x 224
/// (when the size differs), then caffe-mode preprocessing. Returns `(1, 224, 224, 3)`.
pub fn keras_resnet_input_from_image(img: &RgbImage) -> Result<Tensor> {
    let img = if (img.width, img.height) == (224, 224) {
        img.clone()
    } else {
        img.resize_nearest(224, 224)?
    };
    let mut x = img.to_tensor();
    preprocess_input_caffe(&mut x)?;
    Ok(x)
}

/// torchvision's `Resize(256)` (shorter side to 256, the longer `int(256 * long / short)`,
/// Pillow bilinear with antialiasing) then `CenterCrop(224)` (offsets
/// `int(round((size - 224) / 2))`, Python's half-to-even rounding), on 8-bit RGB.
pub fn torchvision_crop(img: &RgbImage) -> Result<RgbImage> {
    const RESIZE: usize = 256;
    const CROP: usize = 224;
    let (w, h) = (img.width, img.height);
    if w == 0 || h == 0 {
        return Err(Error::shape("torchvision_crop", "a non-empty image", format!("{w}x{h}")));
    }
    let (nw, nh) = if w <= h {
        (RESIZE, (RESIZE as f64 * h as f64 / w as f64) as usize)
    } else {
        ((RESIZE as f64 * w as f64 / h as f64) as usize, RESIZE)
    };
    let resized = img.resize_bilinear(nw, nh)?;
    let offset = |size: usize| ((size as f64 - CROP as f64) / 2.0).round_ties_even().max(0.0) as usize;
    resized.crop(offset(nw), offset(nh), CROP, CROP)
}

/// torchvision's ImageNet evaluation transform: [`torchvision_crop`], `ToTensor()` (/255),
/// `Normalize(TORCHVISION_MEAN, TORCHVISION_STD)`, in `f32`. Returned NHWC `(1, 224, 224, 3)`,
/// RGB, ready for the torchvision presets. [`torchvision_input_from_file`] reads the file
/// first.
pub fn torchvision_input(img: &RgbImage) -> Result<Tensor> {
    let mut x = torchvision_crop(img)?.to_tensor();
    for mut px in x.lanes_mut(Axis(3)) {
        for c in 0..3 {
            px[c] = (px[c] / 255.0 - TORCHVISION_MEAN[c]) / TORCHVISION_STD[c];
        }
    }
    Ok(x)
}

/// [`torchvision_input`] on an image file (PNG or JPEG, decoded as Pillow decodes it, as
/// torchvision's `ImageFolder` does).
pub fn torchvision_input_from_file(path: impl AsRef<Path>) -> Result<Tensor> {
    torchvision_input(&load_rgb(path)?)
}
