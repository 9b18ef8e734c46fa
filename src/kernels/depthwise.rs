//! Depthwise convolution (one filter per channel: groups = channels, multiplier 1) as a direct
//! NHWC loop, vectorised over the channels, which are contiguous in each pixel: for every output
//! pixel, the taps' input pixels times the taps' per-channel weights, summed tap by tap in
//! `(ky, kx)` order, then the epilogue (scale, bias, residual, ReLU, as [`GemmEpilogue`]).
//! A GEMM per channel would multiply a `pixels x taps` matrix by a single column.
//!
//! Each output element is one sum in a fixed order, so the result does not depend on how rows
//! are split over threads. Compiled for AVX-512 and AVX2 (chosen with the GEMM kernel,
//! [`gemm_kernel`](super::packed_gemm::gemm_kernel)) and for the target's baseline (NEON on
//! aarch64); Rust never fuses a multiply and an add on its own, so all give the same bits.

use std::ops::Range;

use super::geometry::ConvGeometry;
use super::packed_gemm::GemmEpilogue;
use crate::error::{Error, Result};

/// Output rows `rows` (counted over the batch, `(n, oy)`) of a depthwise convolution of `x`
/// (`g.input_len()` floats: `g.in_channels` channels) by `kernel` (`(kh, kw, channels)`, the
/// HWIO kernel of a depthwise layer with multiplier 1), written to `out` (those rows only:
/// `rows.len() * ow * channels` floats), through `e` (whose `residual`, when present, holds
/// the same rows as `out`). `g.out_channels` must equal `g.in_channels`.
pub fn depthwise_conv2d_rows(
    x: &[f32],
    g: &ConvGeometry,
    kernel: &[f32],
    e: &GemmEpilogue<'_>,
    rows: Range<usize>,
    out: &mut [f32],
) -> Result<()> {
    let c = g.in_channels;
    let [oh, ow] = g.out_hw;
    let taps = g.window.kernel[0] * g.window.kernel[1];
    let len = rows.len() * ow * c;
    let ok = g.out_channels == c
        && x.len() >= g.input_len()
        && kernel.len() == taps * c
        && rows.end <= g.batch * oh
        && out.len() >= len
        && e.scale.is_none_or(|v| v.len() >= c)
        && e.bias.is_none_or(|v| v.len() >= c)
        && e.residual.is_none_or(|r| r.len() >= len);
    if !ok {
        return Err(Error::shape(
            "depthwise_conv2d",
            format!(
                "{c} channels in and out, an input of {}, a kernel of {}, rows within {} and an output of {len}",
                g.input_len(),
                taps * c,
                g.batch * oh
            ),
            format!(
                "{} out, input {}, kernel {}, rows {rows:?}, output {}",
                g.out_channels,
                x.len(),
                kernel.len(),
                out.len()
            ),
        ));
    }
    match super::packed_gemm::gemm_kernel() {
        // SAFETY: the kernel's CPU features were detected at run time; the body is safe code.
        #[cfg(target_arch = "x86_64")]
        super::packed_gemm::GemmKernel::Avx512 => unsafe { rows_avx512(x, g, kernel, e, rows, out) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        super::packed_gemm::GemmKernel::Avx2Fma => unsafe { rows_avx2(x, g, kernel, e, rows, out) },
        _ => rows_any(x, g, kernel, e, rows, out),
    }
    Ok(())
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn rows_avx512(x: &[f32], g: &ConvGeometry, kernel: &[f32], e: &GemmEpilogue<'_>, rows: Range<usize>, out: &mut [f32]) {
    rows_any(x, g, kernel, e, rows, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_avx2(x: &[f32], g: &ConvGeometry, kernel: &[f32], e: &GemmEpilogue<'_>, rows: Range<usize>, out: &mut [f32]) {
    rows_any(x, g, kernel, e, rows, out);
}

/// The loop (extents checked by the caller).
#[inline(always)]
fn rows_any(x: &[f32], g: &ConvGeometry, kernel: &[f32], e: &GemmEpilogue<'_>, rows: Range<usize>, out: &mut [f32]) {
    let c = g.in_channels;
    let ([ih, iw], [oh, ow]) = (g.in_hw, g.out_hw);
    let ([kh, kw], [sh, sw], [dh, dw]) = (g.window.kernel, g.window.stride, g.window.dilation);
    let first = rows.start;
    for r in rows {
        let (n, oy) = (r / oh, r % oh);
        let image = &x[n * ih * iw * c..(n + 1) * ih * iw * c];
        for ox in 0..ow {
            let at = ((r - first) * ow + ox) * c;
            let acc = &mut out[at..at + c];
            acc.fill(0.0);
            for ky in 0..kh {
                // A tap above/left of the input wraps to a huge value and fails the bound too.
                let iy = (oy * sh + ky * dh).wrapping_sub(g.pad.top);
                if iy >= ih {
                    continue;
                }
                for kx in 0..kw {
                    let ix = (ox * sw + kx * dw).wrapping_sub(g.pad.left);
                    if ix >= iw {
                        continue;
                    }
                    let src = &image[(iy * iw + ix) * c..(iy * iw + ix + 1) * c];
                    let w = &kernel[(ky * kw + kx) * c..(ky * kw + kx + 1) * c];
                    for ((a, &v), &k) in acc.iter_mut().zip(src).zip(w) {
                        *a += v * k;
                    }
                }
            }
            if let Some(scale) = e.scale {
                acc.iter_mut().zip(scale).for_each(|(a, &s)| *a *= s);
            }
            if let Some(bias) = e.bias {
                acc.iter_mut().zip(bias).for_each(|(a, &b)| *a += b);
            }
            if let Some(res) = e.residual {
                acc.iter_mut().zip(&res[at..at + c]).for_each(|(a, &v)| *a += v);
            }
            if !e.rectifier.is_identity() {
                acc.iter_mut().for_each(|a| *a = e.rectifier.apply(*a));
            }
        }
    }
}
