//! Upsampling and colour conversion, as libjpeg-turbo's `jdsample.c` (fancy upsampling: the
//! triangle filters `h2v1`, `h1v2`, `h2v2`; box replication for other integral ratios) and
//! `jdcolor.c` (fixed-point YCbCr and YCCK conversion) compute them.

use super::{ColorSpace, Decoded, Frame};

type R<T> = Result<T, String>;

/// A component's samples at full resolution: `out_w x out_h` (at least the image's size).
struct Full {
    data: Vec<u8>,
    stride: usize,
}

/// Row `y` of a plane with edge rows replicated: libjpeg's context rows above the first and
/// below the last real row are copies of them.
fn row(plane: &[u8], stride: usize, height: usize, y: isize) -> &[u8] {
    let y = y.clamp(0, height as isize - 1) as usize;
    &plane[y * stride..(y + 1) * stride]
}

fn upsample(frame: &Frame, ci: usize, plane: &[u8]) -> Full {
    let c = &frame.components[ci];
    let (fh, fv) = (frame.max_h / c.h, frame.max_v / c.v);
    let (w, h, stride) = (c.width, c.height, c.blocks_w * 8);
    let out_w = w * fh;
    let out_h = h * fv;
    let mut out = vec![0u8; out_w * out_h];
    match (fh, fv) {
        (1, 1) => {
            for y in 0..h {
                out[y * out_w..(y + 1) * out_w].copy_from_slice(&plane[y * stride..y * stride + w]);
            }
        }
        (2, 1) if w > 2 => {
            for y in 0..h {
                h2v1_fancy(&plane[y * stride..y * stride + w], &mut out[y * out_w..(y + 1) * out_w]);
            }
        }
        (1, 2) => {
            for y in 0..h {
                let this = &plane[y * stride..y * stride + w];
                for (v, (other, bias)) in [
                    (row(plane, stride, h, y as isize - 1), 1),
                    (row(plane, stride, h, y as isize + 1), 2),
                ]
                .into_iter()
                .enumerate()
                {
                    let o = &mut out[(2 * y + v) * out_w..(2 * y + v + 1) * out_w];
                    for x in 0..w {
                        o[x] = ((i32::from(this[x]) * 3 + i32::from(other[x]) + bias) >> 2) as u8;
                    }
                }
            }
        }
        (2, 2) if w > 2 => {
            for y in 0..h {
                let this = &plane[y * stride..y * stride + w];
                for (v, other) in [row(plane, stride, h, y as isize - 1), row(plane, stride, h, y as isize + 1)]
                    .into_iter()
                    .enumerate()
                {
                    h2v2_fancy_row(this, &other[..w], &mut out[(2 * y + v) * out_w..(2 * y + v + 1) * out_w]);
                }
            }
        }
        _ => {
            // Box replication (libjpeg's h2v1/h2v2/int upsample).
            for y in 0..out_h {
                let src = &plane[(y / fv) * stride..];
                let o = &mut out[y * out_w..(y + 1) * out_w];
                for x in 0..out_w {
                    o[x] = src[x / fh];
                }
            }
        }
    }
    Full { data: out, stride: out_w }
}

/// `h2v1_fancy_upsample`: each output sample is 3/4 of its nearer and 1/4 of its further
/// input sample, rounding alternately down and up.
fn h2v1_fancy(input: &[u8], out: &mut [u8]) {
    let w = input.len();
    let s = |i: usize| i32::from(input[i]);
    out[0] = input[0];
    out[1] = ((s(0) * 3 + s(1) + 2) >> 2) as u8;
    for x in 1..w - 1 {
        let v = s(x) * 3;
        out[2 * x] = ((v + s(x - 1) + 1) >> 2) as u8;
        out[2 * x + 1] = ((v + s(x + 1) + 2) >> 2) as u8;
    }
    out[2 * w - 2] = ((s(w - 1) * 3 + s(w - 2) + 1) >> 2) as u8;
    out[2 * w - 1] = input[w - 1];
}

/// One output row of `h2v2_fancy_upsample`: vertical sums `3 * this + other`, then the
/// horizontal triangle filter, rounding with 8 and 7.
fn h2v2_fancy_row(this: &[u8], other: &[u8], out: &mut [u8]) {
    let w = this.len();
    let sum = |x: usize| i32::from(this[x]) * 3 + i32::from(other[x]);
    let mut this_sum = sum(0);
    let mut next_sum = sum(1);
    out[0] = ((this_sum * 4 + 8) >> 4) as u8;
    out[1] = ((this_sum * 3 + next_sum + 7) >> 4) as u8;
    let mut last_sum = this_sum;
    this_sum = next_sum;
    for x in 2..w {
        next_sum = sum(x);
        out[2 * x - 2] = ((this_sum * 3 + last_sum + 8) >> 4) as u8;
        out[2 * x - 1] = ((this_sum * 3 + next_sum + 7) >> 4) as u8;
        last_sum = this_sum;
        this_sum = next_sum;
    }
    out[2 * w - 2] = ((this_sum * 3 + last_sum + 8) >> 4) as u8;
    out[2 * w - 1] = ((this_sum * 4 + 7) >> 4) as u8;
}

const SCALEBITS: u32 = 16;
const ONE_HALF: i32 = 1 << (SCALEBITS - 1);

/// `FIX(x)`: `x` in 16.16 fixed point, rounded.
const fn fix(x: f64) -> i32 {
    (x * (1u32 << SCALEBITS) as f64 + 0.5) as i32
}

/// libjpeg's `build_ycc_rgb_table` terms for a chroma sample `c`: `(Cr->R, Cb->B, Cr->G,
/// Cb->G)`; the G terms are still scaled (summed, then shifted).
#[inline]
fn ycc_terms(cb: u8, cr: u8) -> (i32, i32, i32) {
    let (b, r) = (i32::from(cb) - 128, i32::from(cr) - 128);
    let cr_r = (fix(1.40200) * r + ONE_HALF) >> SCALEBITS;
    let cb_b = (fix(1.77200) * b + ONE_HALF) >> SCALEBITS;
    let g = (-fix(0.71414) * r + (-fix(0.34414) * b + ONE_HALF)) >> SCALEBITS;
    (cr_r, g, cb_b)
}

#[inline]
fn clamp(x: i32) -> u8 {
    x.clamp(0, 255) as u8
}

/// Upsamples every component and converts to libjpeg's output colour space for Pillow's
/// mode: grey (1 sample), RGB (3), or CMYK (4, YCCK converted).
pub(crate) fn convert(frame: &Frame, planes: &[Vec<u8>], space: ColorSpace) -> R<Decoded> {
    let (w, h) = (frame.width, frame.height);
    let full: Vec<Full> = (0..frame.components.len()).map(|ci| upsample(frame, ci, &planes[ci])).collect();
    let at = |c: usize, x: usize, y: usize| full[c].data[y * full[c].stride + x];
    let channels = match space {
        ColorSpace::Grey => 1,
        ColorSpace::YCbCr | ColorSpace::Rgb => 3,
        ColorSpace::Cmyk | ColorSpace::Ycck => 4,
    };
    let mut data = Vec::with_capacity(w * h * channels);
    for y in 0..h {
        for x in 0..w {
            match space {
                ColorSpace::Grey => data.push(at(0, x, y)),
                ColorSpace::Rgb => data.extend([at(0, x, y), at(1, x, y), at(2, x, y)]),
                ColorSpace::Cmyk => data.extend([at(0, x, y), at(1, x, y), at(2, x, y), at(3, x, y)]),
                ColorSpace::YCbCr => {
                    let yy = i32::from(at(0, x, y));
                    let (r, g, b) = ycc_terms(at(1, x, y), at(2, x, y));
                    data.extend([clamp(yy + r), clamp(yy + g), clamp(yy + b)]);
                }
                ColorSpace::Ycck => {
                    let yy = i32::from(at(0, x, y));
                    let (r, g, b) = ycc_terms(at(1, x, y), at(2, x, y));
                    data.extend([clamp(255 - (yy + r)), clamp(255 - (yy + g)), clamp(255 - (yy + b)), at(3, x, y)]);
                }
            }
        }
    }
    Ok(Decoded {
        width: w,
        height: h,
        channels,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fancy_filters_keep_flat_areas_flat_and_interpolate_ramps() {
        let mut out = [0u8; 8];
        h2v1_fancy(&[10, 10, 10, 10], &mut out);
        assert_eq!(out, [10; 8]);
        h2v1_fancy(&[0, 40, 80, 120], &mut out);
        assert_eq!(out, [0, 10, 30, 50, 70, 90, 110, 120]);
        h2v2_fancy_row(&[0, 40, 80, 120], &[0, 40, 80, 120], &mut out);
        assert_eq!(out, [0, 10, 30, 50, 70, 90, 110, 120]);
    }

    #[test]
    fn ycc_of_grey_is_grey_and_primaries_match_libjpeg() {
        assert_eq!(ycc_terms(128, 128), (0, 0, 0));
        // Pure red in JPEG's YCbCr (76, 85, 255) decodes to libjpeg's (254, 0, 0).
        let (r, g, b) = ycc_terms(85, 255);
        assert_eq!((clamp(76 + r), clamp(76 + g), clamp(76 + b)), (254, 0, 0));
    }
}
