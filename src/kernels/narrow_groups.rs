//! Grouped convolution with narrow groups (4 or 8 channels in and out each: ResNeXt50's first
//! two stages) as a direct NHWC loop on AVX-512: 16 output channels (4 or 2 groups) of 4
//! consecutive output pixels in registers; for each tap, each pixel's 16 input channels loaded
//! once and, for each of the group's `G` input channels `i`, permuted so that every lane holds
//! its own group's channel `i` (an in-lane `vpermilps` for groups of 4, a `vpermps` for 8),
//! then multiplied by weight row `(tap, i)` and added. A GEMM per group would multiply a
//! `pixels x taps*G` matrix by only `G` columns; merged groups (`merge_groups`) multiply zeros.
//!
//! Groups of 4 with a 3x3 kernel at stride 1 or 2 (ResNeXt50's stage 1) take a second loop,
//! `rows_3x3`, that permutes each input pixel once per kernel row and multiplies it into every
//! output pixel of a run whose window holds it: stage 1's grouped convolutions went from 1.3-1.5
//! to 1.0-1.1 ms an image (batch 1, 1 thread, Zen 4). For groups of 8 it measured slower.
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
        let three = g.window.kernel == [3, 3] && g.window.dilation == [1, 1];
        match (width, three, g.window.stride[1]) {
            (4, true, 1) => avx512::rows_3x3::<4, 8, 1>(x, g, kernel, e, rows, out),
            (4, true, 2) => avx512::rows_3x3::<4, 4, 2>(x, g, kernel, e, rows, out),
            (4, _, _) => avx512::rows::<4>(x, g, kernel, e, rows, out),
            // For groups of 8 the column loop measured slower than the general one (ResNeXt50's
            // stage 2: 2.5-2.8 ms against 1.9-2.3 an image), so they keep it.
            _ => avx512::rows::<8>(x, g, kernel, e, rows, out),
        }
    }
    Ok(())
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use crate::kernels::depthwise::simd::{Avx512, Lanes};
    use crate::kernels::geometry::{interior_runs, ConvGeometry};
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
                    let ep = Epilogue::load::<true>(e, c0, Avx512::mask(16));
                    for (p, acc) in acc.iter().enumerate().take(pixels) {
                        let at = ((r - first) * ow + ox + p) * c + c0;
                        ep.store::<true>(*acc, op.add(at), e.residual.map(|res| res.as_ptr().add(at)), Avx512::mask(16));
                    }
                }
                ox += pixels;
            }
        }
    }

    /// The epilogue operands of a 16-channel chunk, as the depthwise loop keeps them.
    type Epilogue = crate::kernels::depthwise::simd::Epilogue<Avx512>;

    /// One output row's operands for the 3x3 loop.
    struct Row {
        image: *const f32,
        kernel: *const f32,
        out: *mut f32,
        residual: Option<*const f32>,
        c: usize,
        iw: usize,
        pad_left: usize,
        /// The input row under kernel row 0 (wrapped when above the input).
        top: usize,
        /// Which kernel rows land inside the input.
        valid: [bool; 3],
    }

    /// 3x3 kernels without dilation at column stride `SW` (1 or 2): each output row's 16-channel
    /// chunks in turn; the edge columns (a tap outside the input row) one at a time, the interior
    /// in runs of `Q` pixels, then 4, 2 and 1, where each input pixel a run covers is loaded and
    /// permuted once per kernel row and multiplied into every output pixel whose window holds it
    /// (a run of 8 at stride 1 permutes 10 pixels, not 24). Each output's sum is the same
    /// sequence as [`rows`]': taps in `(ky, kx)` order, `i` in order within a tap.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn rows_3x3<const G: usize, const Q: usize, const SW: usize>(
        x: &[f32],
        g: &ConvGeometry,
        kernel: &[f32],
        e: &GemmEpilogue<'_>,
        rows: Range<usize>,
        out: &mut [f32],
    ) {
        let c = g.in_channels;
        let ([ih, iw], [oh, ow]) = (g.in_hw, g.out_hw);
        let sh = g.window.stride[0];
        let (lo, hi) = g.interior_columns();
        for r in rows.clone() {
            let (n, oy) = (r / oh, r % oh);
            let top = (oy * sh).wrapping_sub(g.pad.top);
            let at = (r - rows.start) * ow * c;
            let row = Row {
                image: x.as_ptr().add(n * ih * iw * c),
                kernel: kernel.as_ptr(),
                out: out.as_mut_ptr().add(at),
                residual: e.residual.map(|v| v.as_ptr().add(at)),
                c,
                iw,
                pad_left: g.pad.left,
                top,
                valid: [top < ih, top.wrapping_add(1) < ih, top.wrapping_add(2) < ih],
            };
            for c0 in (0..c).step_by(16) {
                let ep = Epilogue::load::<true>(e, c0, Avx512::mask(16));
                for ox in (0..lo).chain(hi..ow) {
                    edge::<G, SW>(&row, &ep, c0, ox);
                }
                for (ox, n) in interior_runs(lo, hi, Q) {
                    match n {
                        _ if n == Q => interior::<G, Q, SW>(&row, &ep, c0, ox),
                        4 => interior::<G, 4, SW>(&row, &ep, c0, ox),
                        2 => interior::<G, 2, SW>(&row, &ep, c0, ox),
                        _ => interior::<G, 1, SW>(&row, &ep, c0, ox),
                    }
                }
            }
        }
    }

    /// `Q` interior pixels from column `ox`, channels `c0..c0 + 16`.
    #[inline(always)]
    unsafe fn interior<const G: usize, const Q: usize, const SW: usize>(row: &Row, ep: &Epilogue, c0: usize, ox: usize) {
        let c = row.c;
        let left = ox * SW - row.pad_left;
        let mut acc = [_mm512_setzero_ps(); Q];
        for ky in 0..3 {
            if !row.valid[ky] {
                continue;
            }
            let iy = row.top.wrapping_add(ky);
            let base = row.image.add((iy * row.iw + left) * c + c0);
            let w = row.kernel.add(ky * 3 * G * c + c0);
            // Input column `J` of the run, each a separate instantiation so that every
            // accumulator index is a constant (a loop over the columns stayed rolled, and
            // indexing the accumulators at run time put them on the stack).
            macro_rules! columns {
                ($($j:literal)*) => {$(
                    if $j < (Q - 1) * SW + 3 {
                        column::<G, Q, SW, $j>(&mut acc, base.add($j * c), w, c);
                    }
                )*};
            }
            columns!(0 1 2 3 4 5 6 7 8 9);
        }
        for (p, acc) in acc.iter().enumerate() {
            finish(row, ep, (ox + p) * c + c0, *acc);
        }
    }

    /// Input column `J` of an interior run (at `x`): loaded, permuted `G` ways, and multiplied
    /// into each output pixel `p` whose kernel column `kx = J - p * SW` reaches it.
    #[inline(always)]
    unsafe fn column<const G: usize, const Q: usize, const SW: usize, const J: usize>(
        acc: &mut [__m512; Q],
        x: *const f32,
        w: *const f32,
        c: usize,
    ) {
        let v = _mm512_loadu_ps(x);
        for i in 0..G {
            let vi = spread::<G>(v, i);
            for kx in 0..3 {
                if J >= kx && (J - kx).is_multiple_of(SW) && (J - kx) / SW < Q {
                    let p = (J - kx) / SW;
                    acc[p] = _mm512_fmadd_ps(vi, _mm512_loadu_ps(w.add((kx * G + i) * c)), acc[p]);
                }
            }
        }
    }

    /// Column `ox`, each tap's column checked, channels `c0..c0 + 16`.
    #[inline(always)]
    unsafe fn edge<const G: usize, const SW: usize>(row: &Row, ep: &Epilogue, c0: usize, ox: usize) {
        let c = row.c;
        let mut acc = _mm512_setzero_ps();
        for ky in 0..3 {
            if !row.valid[ky] {
                continue;
            }
            let iy = row.top.wrapping_add(ky);
            for kx in 0..3 {
                // A tap left of the input wraps to a huge value and fails the bound too.
                let ix = (ox * SW + kx).wrapping_sub(row.pad_left);
                if ix >= row.iw {
                    continue;
                }
                let v = _mm512_loadu_ps(row.image.add((iy * row.iw + ix) * c + c0));
                let w = row.kernel.add(((ky * 3 + kx) * G) * c + c0);
                for i in 0..G {
                    acc = _mm512_fmadd_ps(spread::<G>(v, i), _mm512_loadu_ps(w.add(i * c)), acc);
                }
            }
        }
        finish(row, ep, ox * c + c0, acc);
    }

    /// The epilogue of one pixel's chunk at `at` in the output row, and its store.
    #[inline(always)]
    unsafe fn finish(row: &Row, ep: &Epilogue, at: usize, v: __m512) {
        ep.store::<true>(v, row.out.add(at), row.residual.map(|r| r.add(at)), Avx512::mask(16));
    }
}
