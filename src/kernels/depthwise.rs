//! Depthwise convolution (one filter per channel: groups = channels, multiplier 1) as a direct
//! NHWC loop, vectorised over the channels, which are contiguous in each pixel: for every output
//! pixel, the taps' input pixels times the taps' per-channel weights, summed tap by tap in
//! `(ky, kx)` order, then the epilogue (scale, bias, residual, rectifier, as [`GemmEpilogue`]).
//! A GEMM per channel would multiply a `pixels x taps` matrix by a single column.
//!
//! Each output element is one sum in a fixed order, so the result does not depend on how rows
//! are split over threads. With the AVX-512 or AVX2 GEMM kernel selected
//! ([`gemm_kernel`](super::packed_gemm::gemm_kernel)), 3x3 and 5x5 kernels run a loop written in
//! intrinsics (fused multiply-adds, the tap weights in registers, each loaded pixel reused
//! across the outputs it reaches at strides 1 and 2: the `simd` module); other kernel sizes,
//! and every size on the other paths (NEON on aarch64 included), run the same loop in plain
//! Rust, which the compiler vectorises with separate multiplies and adds. The paths differ in
//! that rounding only, inside the tolerances the property tests hold them to.

#[cfg(target_arch = "x86_64")]
pub(super) mod simd;

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
    check_extents("depthwise_conv2d", x, g, 1, kernel, e, &rows, out)?;
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

/// Checks a direct convolution's operands (`g` the whole convolution, `width` input channels a
/// group, so `kernel` is `(kh, kw, width, channels)`) against the rows it is asked for: the
/// extents every index of the loops stays within.
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_extents(
    name: &str,
    x: &[f32],
    g: &ConvGeometry,
    width: usize,
    kernel: &[f32],
    e: &GemmEpilogue<'_>,
    rows: &Range<usize>,
    out: &[f32],
) -> Result<()> {
    let c = g.in_channels;
    let [oh, ow] = g.out_hw;
    let taps = g.window.kernel[0] * g.window.kernel[1];
    let len = rows.len() * ow * c;
    let ok = g.out_channels == c
        && x.len() >= g.input_len()
        && kernel.len() == taps * width * c
        && rows.end <= g.batch * oh
        && out.len() >= len
        && e.scale.is_none_or(|v| v.len() >= c)
        && e.bias.is_none_or(|v| v.len() >= c)
        && e.residual.is_none_or(|r| r.len() >= len);
    if ok {
        return Ok(());
    }
    Err(Error::shape(
        name,
        format!(
            "{c} channels in and out, an input of {}, a kernel of {}, rows within {} and an output of {len}",
            g.input_len(),
            taps * width * c,
            g.batch * oh
        ),
        format!(
            "{} out, input {}, kernel {}, rows {rows:?}, output {}",
            g.out_channels,
            x.len(),
            kernel.len(),
            out.len()
        ),
    ))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn rows_avx512(x: &[f32], g: &ConvGeometry, kernel: &[f32], e: &GemmEpilogue<'_>, rows: Range<usize>, out: &mut [f32]) {
    if simd::supports(g.window.kernel) {
        simd::rows_avx512(x, g, kernel, e, rows, out);
    } else {
        rows_any(x, g, kernel, e, rows, out);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_avx2(x: &[f32], g: &ConvGeometry, kernel: &[f32], e: &GemmEpilogue<'_>, rows: Range<usize>, out: &mut [f32]) {
    if simd::supports(g.window.kernel) {
        simd::rows_avx2(x, g, kernel, e, rows, out);
    } else {
        rows_any(x, g, kernel, e, rows, out);
    }
}

/// The loop (extents checked by the caller): each output row in runs of up to [`PIXELS`]
/// pixels, their channels in chunks of 16, 8, 4 and 1, each (pixel, chunk) summed in its own
/// fixed-size accumulator (registers once vectorised: the pixels' sums are independent, so
/// they overlap in the pipeline) over the taps in `(ky, kx)` order, then through the epilogue
/// and stored once.
#[inline(always)]
fn rows_any(x: &[f32], g: &ConvGeometry, kernel: &[f32], e: &GemmEpilogue<'_>, rows: Range<usize>, out: &mut [f32]) {
    let c = g.in_channels;
    let ([ih, iw], [oh, ow]) = (g.in_hw, g.out_hw);
    let first = rows.start;
    for r in rows {
        let (n, oy) = (r / oh, r % oh);
        let image = &x[n * ih * iw * c..(n + 1) * ih * iw * c];
        let mut ox = 0;
        while ox < ow {
            let run = Run {
                g,
                image,
                kernel,
                e,
                oy,
                ox,
                pixels: (ow - ox).min(PIXELS),
                at: ((r - first) * ow + ox) * c,
            };
            let mut c0 = 0;
            while c0 < c {
                c0 += match c - c0 {
                    16.. => run.chunk::<16>(c0, out),
                    8.. => run.chunk::<8>(c0, out),
                    4.. => run.chunk::<4>(c0, out),
                    _ => run.chunk::<1>(c0, out),
                };
            }
            ox += run.pixels;
        }
    }
}

/// Output pixels of one row computed together.
const PIXELS: usize = 4;

/// Up to [`PIXELS`] consecutive output pixels of one row.
struct Run<'a> {
    g: &'a ConvGeometry,
    image: &'a [f32],
    kernel: &'a [f32],
    e: &'a GemmEpilogue<'a>,
    oy: usize,
    /// The first pixel's column.
    ox: usize,
    /// How many (1..=PIXELS).
    pixels: usize,
    /// The first pixel's first element in the output (and the residual).
    at: usize,
}

/// `v[at..at + W]` as an array (one bounds check).
#[inline(always)]
fn lanes<const W: usize>(v: &[f32], at: usize) -> [f32; W] {
    let mut a = [0.0; W];
    a.copy_from_slice(&v[at..at + W]);
    a
}

impl Run<'_> {
    /// Channels `c0..c0 + W` of the run's pixels, written to `out`; returns `W`.
    #[inline(always)]
    fn chunk<const W: usize>(&self, c0: usize, out: &mut [f32]) -> usize {
        let g = self.g;
        let c = g.in_channels;
        let [ih, iw] = g.in_hw;
        let ([kh, kw], [sh, sw], [dh, dw]) = (g.window.kernel, g.window.stride, g.window.dilation);
        let mut acc = [[0.0f32; W]; PIXELS];
        // Whether every tap of every pixel of a full run is inside the row: then no column is
        // checked, and the taps' inputs are fixed offsets from one base.
        let left = (self.ox * sw).wrapping_sub(g.pad.left);
        let interior = self.pixels == PIXELS && left < iw && left + (PIXELS - 1) * sw + (kw - 1) * dw < iw;
        for ky in 0..kh {
            // A tap above/left of the input wraps to a huge value and fails the bound too.
            let iy = (self.oy * sh + ky * dh).wrapping_sub(g.pad.top);
            if iy >= ih {
                continue;
            }
            if interior {
                let row = &self.image[(iy * iw + left) * c + c0..];
                for kx in 0..kw {
                    let w: [f32; W] = lanes(self.kernel, (ky * kw + kx) * c + c0);
                    for (p, acc) in acc.iter_mut().enumerate() {
                        let src: [f32; W] = lanes(row, (p * sw + kx * dw) * c);
                        for l in 0..W {
                            acc[l] += src[l] * w[l];
                        }
                    }
                }
                continue;
            }
            for kx in 0..kw {
                let w: [f32; W] = lanes(self.kernel, (ky * kw + kx) * c + c0);
                for (p, acc) in acc.iter_mut().enumerate().take(self.pixels) {
                    let ix = ((self.ox + p) * sw + kx * dw).wrapping_sub(g.pad.left);
                    if ix >= iw {
                        continue;
                    }
                    let src: [f32; W] = lanes(self.image, (iy * iw + ix) * c + c0);
                    for l in 0..W {
                        acc[l] += src[l] * w[l];
                    }
                }
            }
        }
        let e = self.e;
        let scale: Option<[f32; W]> = e.scale.map(|s| lanes(s, c0));
        let bias: Option<[f32; W]> = e.bias.map(|b| lanes(b, c0));
        for (p, acc) in acc.iter_mut().enumerate().take(self.pixels) {
            let at = self.at + p * c + c0;
            if let Some(s) = &scale {
                (0..W).for_each(|l| acc[l] *= s[l]);
            }
            if let Some(b) = &bias {
                (0..W).for_each(|l| acc[l] += b[l]);
            }
            if let Some(res) = e.residual {
                let v: [f32; W] = lanes(res, at);
                (0..W).for_each(|l| acc[l] += v[l]);
            }
            if let Some(upper) = e.rectifier.upper() {
                // Compare-and-select, which vectorises (`f32::max` and `min` do not, for their
                // NaN rules); the same values as `Rectifier::apply`, a NaN becoming 0 in both.
                for a in acc.iter_mut() {
                    let v = if *a > 0.0 { *a } else { 0.0 };
                    *a = if v > upper { upper } else { v };
                }
            }
            out[at..at + W].copy_from_slice(acc);
        }
        W
    }
}
