//! Patch extraction ("im2col") for NHWC inputs.

use super::geometry::ConvGeometry;
use super::short_copy;
use crate::error::{Error, Result};

/// Writes `rows` im2col rows, starting at output pixel `first` (counted over the whole batch,
/// row-major over `(n, oy, ox)`), into `out` (`rows * g.patch_len()` elements).
///
/// Row `r` holds the input window of output pixel `first + r` in `(ky, kx, c)` order, the
/// order of a Keras HWIO kernel reshaped to `(kh * kw * in_channels, out_channels)`, so the
/// convolution is `rows x K` times `K x out_channels`. Taps that fall in the padding are
/// written as zeros: every element of `out[..rows * K]` is written on every call, so a reused
/// (or NaN-filled) buffer is safe.
pub fn im2col(input: &[f32], g: &ConvGeometry, first: usize, rows: usize, out: &mut [f32]) -> Result<()> {
    let k = g.patch_len();
    let end = first.checked_add(rows).filter(|&e| e <= g.out_pixels());
    if input.len() != g.input_len() || end.is_none() || out.len() < rows * k {
        return Err(Error::shape(
            "im2col",
            format!(
                "input of {} elements, pixels within {} and an output of {} elements",
                g.input_len(),
                g.out_pixels(),
                rows * k
            ),
            format!("input of {}, pixels {first}..{first}+{rows}, output of {}", input.len(), out.len()),
        ));
    }
    im2col_unchecked(input, g, first, rows, out);
    Ok(())
}

/// [`im2col`] without the length checks; callers guarantee them.
pub(crate) fn im2col_unchecked(input: &[f32], g: &ConvGeometry, first: usize, rows: usize, out: &mut [f32]) {
    im2col_channels_unchecked(input, g, g.in_channels, 0, first, rows, out);
}

/// [`im2col`] of the channels `c0..c0 + g.in_channels` of an input whose pixels hold
/// `pixel_channels` channels each (one group of a grouped convolution, `g` being one group's
/// geometry), without the length checks: callers guarantee that `input` holds
/// `g.input_len() / g.in_channels * pixel_channels` floats and `out` `rows * g.patch_len()`.
pub(crate) fn im2col_channels_unchecked(
    input: &[f32],
    g: &ConvGeometry,
    pixel_channels: usize,
    c0: usize,
    first: usize,
    rows: usize,
    out: &mut [f32],
) {
    let [ih, iw] = g.in_hw;
    let [oh, ow] = g.out_hw;
    let kw = g.window.kernel[1];
    let [sh, sw] = g.window.stride;
    let [dh, dw] = g.window.dilation;
    let (c, pc) = (g.in_channels, pixel_channels);
    let k = g.patch_len();
    let per_image = oh * ow;
    for (r, row) in out[..rows * k].chunks_exact_mut(k).enumerate() {
        let p = first + r;
        let n = p / per_image;
        let oy = (p % per_image) / ow;
        let ox = p % ow;
        let image = &input[n * ih * iw * pc..(n + 1) * ih * iw * pc];
        for (ky, dst_row) in row.chunks_exact_mut(kw * c).enumerate() {
            // A tap above/left of the input wraps to a huge value and fails the bound too.
            let iy = (oy * sh + ky * dh).wrapping_sub(g.pad.top);
            if iy >= ih {
                short_copy::zero(dst_row);
                continue;
            }
            let ix0 = (ox * sw).wrapping_sub(g.pad.left);
            let line = &image[iy * iw * pc..(iy + 1) * iw * pc];
            if dw == 1 && pc == c && ix0 < iw && ix0 + kw <= iw {
                // The whole row of taps is inside: one contiguous copy of kw * c floats.
                short_copy::copy(dst_row, &line[ix0 * c..(ix0 + kw) * c]);
                continue;
            }
            for (kx, dst) in dst_row.chunks_exact_mut(c).enumerate() {
                let ix = (ox * sw + kx * dw).wrapping_sub(g.pad.left);
                if ix < iw {
                    short_copy::copy(dst, &line[ix * pc + c0..ix * pc + c0 + c]);
                } else {
                    short_copy::zero(dst);
                }
            }
        }
    }
}
