//! Grouped convolution with narrow groups (4 or 8 channels in and out each: ResNeXt50's first
//! two stages) as a direct NHWC loop on AVX-512: 16 output channels (4 or 2 groups) of 4
//! consecutive output pixels in registers; for each tap, each pixel's 16 input channels loaded
//! once and, for each of the group's `G` input channels `i`, permuted so that every lane holds
//! its own group's channel `i` (an in-lane `vpermilps` for groups of 4, a `vpermps` for 8),
//! then multiplied by weight row `(tap, i)` and added. A GEMM per group would multiply a
//! `pixels x taps*G` matrix by only `G` columns; merged groups (`merge_groups`) multiply zeros.
//!
//! Each output is summed over the taps in `(ky, kx)` order and, within a tap, over `i` in order,
//! with fused multiply-adds, so the result does not depend on how rows are split over threads.
//! Only on AVX-512: [`supports`] says when the executor may call it; elsewhere such groups are
//! merged into GEMM-wide ones.

use std::ops::Range;

use super::geometry::ConvGeometry;
use super::packed_gemm::{GemmEpilogue, GemmKernel};
use crate::error::{Error, Result};

/// Whether [`grouped_conv2d_rows`] runs groups of `width` channels in and out over `channels`
/// channels on `kernel`: AVX-512, groups of 4 or 8, channels a multiple of 16.
pub fn supports(kernel: GemmKernel, width: usize, channels: usize) -> bool {
    cfg!(target_arch = "x86_64") && kernel == GemmKernel::Avx512 && matches!(width, 4 | 8) && channels.is_multiple_of(16)
}

/// Output rows `rows` (counted over the batch, `(n, oy)`) of a grouped convolution of `x` with
/// groups of `width` channels in and out (`g` the whole convolution's geometry,
/// `g.in_channels == g.out_channels`), by its HWIO `kernel` `(kh, kw, width, channels)`, into
/// `out` (those rows only), through `e` (whose `residual` holds the same rows as `out`).
/// Refused (a typed error) unless [`supports`] the selected GEMM kernel and these widths.
pub fn grouped_conv2d_rows(
    x: &[f32],
    g: &ConvGeometry,
    width: usize,
    kernel: &[f32],
    e: &GemmEpilogue<'_>,
    rows: Range<usize>,
    out: &mut [f32],
) -> Result<()> {
    let c = g.in_channels;
    let selected = super::packed_gemm::gemm_kernel();
    if !supports(selected, width, c) {
        return Err(Error::config(
            "narrow grouped convolution",
            format!(
                "groups of {width} over {c} channels on the {} kernel: needs AVX-512, groups of 4 or 8, channels a multiple of 16",
                selected.name()
            ),
        ));
    }
    super::depthwise::check_extents("narrow grouped convolution", x, g, width, kernel, e, &rows, out)?;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512F was detected at run time (`supports`); every index the loop forms is
    // within the extents checked above.
    unsafe {
        if width == 4 {
            avx512::rows::<4>(x, g, kernel, e, rows, out);
        } else {
            avx512::rows::<8>(x, g, kernel, e, rows, out);
        }
    }
    Ok(())
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use crate::kernels::geometry::ConvGeometry;
    use crate::kernels::packed_gemm::GemmEpilogue;

    /// Output pixels of one row computed together.
    const PIXELS: usize = 4;

    /// Lane `l` of the result holds lane `G * (l / G) + i` of `v`.
    #[inline(always)]
    unsafe fn spread<const G: usize>(v: __m512, i: usize) -> __m512 {
        if G == 4 {
            // Within each 128-bit lane (one group), element `i` everywhere.
            match i {
                0 => _mm512_permute_ps::<0x00>(v),
                1 => _mm512_permute_ps::<0x55>(v),
                2 => _mm512_permute_ps::<0xAA>(v),
                _ => _mm512_permute_ps::<0xFF>(v),
            }
        } else {
            let lo = i as i32;
            let hi = 8 + i as i32;
            let idx = _mm512_set_epi32(hi, hi, hi, hi, hi, hi, hi, hi, lo, lo, lo, lo, lo, lo, lo, lo);
            _mm512_permutexvar_ps(idx, v)
        }
    }

    /// The loop; the caller checked every extent and the CPU's AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn rows<const G: usize>(
        x: &[f32],
        g: &ConvGeometry,
        kernel: &[f32],
        e: &GemmEpilogue<'_>,
        rows: Range<usize>,
        out: &mut [f32],
    ) {
        let c = g.in_channels;
        let ([ih, iw], [oh, ow]) = (g.in_hw, g.out_hw);
        let ([kh, kw], [sh, sw], [dh, dw]) = (g.window.kernel, g.window.stride, g.window.dilation);
        let (xp, kp, op) = (x.as_ptr(), kernel.as_ptr(), out.as_mut_ptr());
        let zero = _mm512_setzero_ps();
        let upper = _mm512_set1_ps(e.rectifier.upper().unwrap_or(0.0));
        let first = rows.start;
        for r in rows {
            let (n, oy) = (r / oh, r % oh);
            let image = n * ih * iw * c;
            let mut ox = 0;
            while ox < ow {
                let pixels = (ow - ox).min(PIXELS);
                for c0 in (0..c).step_by(16) {
                    let mut acc = [zero; PIXELS];
                    for ky in 0..kh {
                        // A tap above/left of the input wraps to a huge value and fails the bound.
                        let iy = (oy * sh + ky * dh).wrapping_sub(g.pad.top);
                        if iy >= ih {
                            continue;
                        }
                        for kx in 0..kw {
                            let tap = ky * kw + kx;
                            let mut w = [zero; G];
                            for (i, w) in w.iter_mut().enumerate() {
                                *w = _mm512_loadu_ps(kp.add((tap * G + i) * c + c0));
                            }
                            for (p, acc) in acc.iter_mut().enumerate().take(pixels) {
                                let ix = ((ox + p) * sw + kx * dw).wrapping_sub(g.pad.left);
                                if ix >= iw {
                                    continue;
                                }
                                let v = _mm512_loadu_ps(xp.add(image + (iy * iw + ix) * c + c0));
                                for (i, w) in w.iter().enumerate() {
                                    *acc = _mm512_fmadd_ps(spread::<G>(v, i), *w, *acc);
                                }
                            }
                        }
                    }
                    let scale = e.scale.map(|s| _mm512_loadu_ps(s.as_ptr().add(c0)));
                    let bias = e.bias.map(|b| _mm512_loadu_ps(b.as_ptr().add(c0)));
                    for (p, acc) in acc.iter().enumerate().take(pixels) {
                        let at = ((r - first) * ow + ox + p) * c + c0;
                        let mut v = *acc;
                        if let Some(s) = scale {
                            v = _mm512_mul_ps(v, s);
                        }
                        if let Some(b) = bias {
                            v = _mm512_add_ps(v, b);
                        }
                        if let Some(res) = e.residual {
                            v = _mm512_add_ps(v, _mm512_loadu_ps(res.as_ptr().add(at)));
                        }
                        if !e.rectifier.is_identity() {
                            v = _mm512_min_ps(_mm512_max_ps(v, zero), upper);
                        }
                        _mm512_storeu_ps(op.add(at), v);
                    }
                }
                ox += pixels;
            }
        }
    }
}
