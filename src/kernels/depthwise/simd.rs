//! The depthwise loop written out in SIMD intrinsics for 3x3 and 5x5 kernels, one body generic
//! over the register type ([`Lanes`]: AVX-512's 16 lanes, AVX2's 8), instantiated inside each
//! ISA's `#[target_feature]` entry point.
//!
//! For every output row and every chunk of one register's channels, the chunk's `KH x KW` tap
//! weights are loaded into registers once; the row is then swept in runs of `P` output pixels,
//! each summing its taps with fused multiply-adds in `(ky, kx)` order into its own accumulator.
//! Pixels whose window lies inside the input row take every tap at fixed offsets from one
//! pointer; the few pixels at the left and right edges check each tap's column. Either way an
//! output's sum is the same sequence of operations wherever the thread split falls.

use std::ops::Range;

use crate::kernels::geometry::{interior_runs, ConvGeometry};
use crate::kernels::packed_gemm::GemmEpilogue;

/// One SIMD register of `f32` lanes and the operations the loop needs. Loads and stores of a
/// chunk that is not full touch only the chunk's `n` lanes.
pub(in crate::kernels) trait Lanes {
    /// Lanes a register.
    const LANES: usize;
    /// The register.
    type V: Copy;
    /// Which lanes a partial chunk covers.
    type Mask: Copy;

    /// The first `n` lanes (`n <= LANES`).
    unsafe fn mask(n: usize) -> Self::Mask;
    unsafe fn splat(v: f32) -> Self::V;
    /// `LANES` floats at `p`, or with `FULL = false` the mask's lanes (the rest zero).
    unsafe fn load<const FULL: bool>(p: *const f32, m: Self::Mask) -> Self::V;
    unsafe fn store<const FULL: bool>(p: *mut f32, m: Self::Mask, v: Self::V);
    /// `a * b + acc`, rounded once.
    unsafe fn fma(a: Self::V, b: Self::V, acc: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    /// `min(max(v, 0), upper)`, a NaN becoming 0 (as [`Rectifier::apply`]).
    ///
    /// [`Rectifier::apply`]: crate::kernels::Rectifier::apply
    unsafe fn clamp(v: Self::V, upper: Self::V) -> Self::V;
}

/// The AVX-512 registers.
#[cfg(target_arch = "x86_64")]
pub(in crate::kernels) struct Avx512;

#[cfg(target_arch = "x86_64")]
impl Lanes for Avx512 {
    const LANES: usize = 16;
    type V = std::arch::x86_64::__m512;
    type Mask = std::arch::x86_64::__mmask16;

    #[inline(always)]
    unsafe fn mask(n: usize) -> Self::Mask {
        ((1u32 << n) - 1) as u16
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self::V {
        std::arch::x86_64::_mm512_set1_ps(v)
    }
    #[inline(always)]
    unsafe fn load<const FULL: bool>(p: *const f32, m: Self::Mask) -> Self::V {
        use std::arch::x86_64::*;
        if FULL {
            _mm512_loadu_ps(p)
        } else {
            _mm512_maskz_loadu_ps(m, p)
        }
    }
    #[inline(always)]
    unsafe fn store<const FULL: bool>(p: *mut f32, m: Self::Mask, v: Self::V) {
        use std::arch::x86_64::*;
        if FULL {
            _mm512_storeu_ps(p, v)
        } else {
            _mm512_mask_storeu_ps(p, m, v)
        }
    }
    #[inline(always)]
    unsafe fn fma(a: Self::V, b: Self::V, acc: Self::V) -> Self::V {
        std::arch::x86_64::_mm512_fmadd_ps(a, b, acc)
    }
    #[inline(always)]
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V {
        std::arch::x86_64::_mm512_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V {
        std::arch::x86_64::_mm512_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn clamp(v: Self::V, upper: Self::V) -> Self::V {
        use std::arch::x86_64::*;
        // `max` returns its second operand when the first is a NaN.
        _mm512_min_ps(_mm512_max_ps(v, _mm512_setzero_ps()), upper)
    }
}

/// The AVX2 registers (with FMA).
#[cfg(target_arch = "x86_64")]
pub(super) struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Lanes for Avx2 {
    const LANES: usize = 8;
    type V = std::arch::x86_64::__m256;
    type Mask = std::arch::x86_64::__m256i;

    #[inline(always)]
    unsafe fn mask(n: usize) -> Self::Mask {
        use std::arch::x86_64::*;
        // Lane i is on (all ones) when i < n.
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self::V {
        std::arch::x86_64::_mm256_set1_ps(v)
    }
    #[inline(always)]
    unsafe fn load<const FULL: bool>(p: *const f32, m: Self::Mask) -> Self::V {
        use std::arch::x86_64::*;
        if FULL {
            _mm256_loadu_ps(p)
        } else {
            _mm256_maskload_ps(p, m)
        }
    }
    #[inline(always)]
    unsafe fn store<const FULL: bool>(p: *mut f32, m: Self::Mask, v: Self::V) {
        use std::arch::x86_64::*;
        if FULL {
            _mm256_storeu_ps(p, v)
        } else {
            _mm256_maskstore_ps(p, m, v)
        }
    }
    #[inline(always)]
    unsafe fn fma(a: Self::V, b: Self::V, acc: Self::V) -> Self::V {
        std::arch::x86_64::_mm256_fmadd_ps(a, b, acc)
    }
    #[inline(always)]
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V {
        std::arch::x86_64::_mm256_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V {
        std::arch::x86_64::_mm256_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn clamp(v: Self::V, upper: Self::V) -> Self::V {
        use std::arch::x86_64::*;
        _mm256_min_ps(_mm256_max_ps(v, _mm256_setzero_ps()), upper)
    }
}

/// Whether the intrinsics loop runs a `kh x kw` kernel (the others take the portable loop).
pub(super) fn supports(kernel: [usize; 2]) -> bool {
    matches!(kernel, [3, 3] | [5, 5])
}

/// The whole loop on AVX-512. The caller checked every extent ([`check_extents`]), that the
/// CPU has AVX-512F, and that the kernel size is one [`supports`] accepts.
///
/// [`check_extents`]: super::check_extents
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn rows_avx512(x: &[f32], g: &ConvGeometry, kernel: &[f32], e: &GemmEpilogue<'_>, rows: Range<usize>, out: &mut [f32]) {
    let call = Call {
        x,
        g,
        kernel,
        e,
        rows,
        out,
    };
    match (g.window.kernel, g.window.stride[1], g.window.dilation[1]) {
        ([3, 3], 1, 1) => call.rows::<Avx512, 3, 3, 8, 1>(),
        ([3, 3], 2, 1) => call.rows::<Avx512, 3, 3, 4, 2>(),
        ([3, 3], _, _) => call.rows::<Avx512, 3, 3, 8, 0>(),
        (_, 1, 1) => call.rows::<Avx512, 5, 5, 4, 1>(),
        _ => call.rows::<Avx512, 5, 5, 4, 0>(),
    }
}

/// The whole loop on AVX2 + FMA; as [`rows_avx512`]. Its 16 registers hold the 9 weights of
/// a 3x3 kernel and 4 accumulators.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn rows_avx2(x: &[f32], g: &ConvGeometry, kernel: &[f32], e: &GemmEpilogue<'_>, rows: Range<usize>, out: &mut [f32]) {
    let call = Call {
        x,
        g,
        kernel,
        e,
        rows,
        out,
    };
    match (g.window.kernel, g.window.stride[1], g.window.dilation[1]) {
        ([3, 3], 1, 1) => call.rows::<Avx2, 3, 3, 4, 1>(),
        ([3, 3], 2, 1) => call.rows::<Avx2, 3, 3, 4, 2>(),
        ([3, 3], _, _) => call.rows::<Avx2, 3, 3, 4, 0>(),
        (_, 1, 1) => call.rows::<Avx2, 5, 5, 4, 1>(),
        _ => call.rows::<Avx2, 5, 5, 4, 0>(),
    }
}

/// One call's operands.
struct Call<'a, 'e> {
    x: &'a [f32],
    g: &'a ConvGeometry,
    kernel: &'a [f32],
    e: &'a GemmEpilogue<'e>,
    rows: Range<usize>,
    out: &'a mut [f32],
}

impl Call<'_, '_> {
    /// Every row, one register of channels at a time ([`Row::chunk`]). `SW` is the column
    /// stride when it is 1 or 2 and there is no dilation, else 0 (see [`Row::interior`]).
    #[inline(always)]
    unsafe fn rows<S: Lanes, const KH: usize, const KW: usize, const P: usize, const SW: usize>(self) {
        let g = self.g;
        let c = g.in_channels;
        let ([ih, iw], [oh, ow]) = (g.in_hw, g.out_hw);
        let (sh, dh) = (g.window.stride[0], g.window.dilation[0]);
        let (lo, hi) = g.interior_columns();
        for r in self.rows.clone() {
            let (n, oy) = (r / oh, r % oh);
            // Which kernel rows land inside the input (a row above it wraps and fails the bound).
            let mut valid = 0u32;
            for ky in 0..KH {
                if (oy * sh + ky * dh).wrapping_sub(g.pad.top) < ih {
                    valid |= 1 << ky;
                }
            }
            let at = (r - self.rows.start) * ow * c;
            let row = Row {
                g,
                kernel: self.kernel,
                image: self.x.as_ptr().add(n * ih * iw * c),
                top: (oy * sh).wrapping_sub(g.pad.top),
                valid,
                out: self.out.as_mut_ptr().add(at),
                residual: self.e.residual.map(|v| v.as_ptr().add(at)),
                e: self.e,
            };
            let mut c0 = 0;
            while c0 + S::LANES <= c {
                row.chunk::<S, KH, KW, P, SW, true>(c0, S::mask(S::LANES), lo, hi);
                c0 += S::LANES;
            }
            if c0 < c {
                row.chunk::<S, KH, KW, P, SW, false>(c0, S::mask(c - c0), lo, hi);
            }
        }
    }
}

/// One output row's shared state.
struct Row<'a> {
    g: &'a ConvGeometry,
    kernel: &'a [f32],
    /// The image's first element.
    image: *const f32,
    /// The input row under kernel row 0 (wrapped when above the input).
    top: usize,
    /// Bit `ky` set when kernel row `ky` lands inside the input.
    valid: u32,
    /// The output row's first element, and the residual's.
    out: *mut f32,
    residual: Option<*const f32>,
    e: &'a GemmEpilogue<'a>,
}

impl Row<'_> {
    /// Channels `c0..` (one register, masked by `m` unless `FULL`) of the whole row, the
    /// chunk's weights loaded once: the edge columns `0..lo` and `hi..ow` one by one with each
    /// tap's column checked, the interior `lo..hi` in runs of `P` pixels, then 4, 2 and 1.
    #[inline(always)]
    unsafe fn chunk<S: Lanes, const KH: usize, const KW: usize, const P: usize, const SW: usize, const FULL: bool>(
        &self,
        c0: usize,
        m: S::Mask,
        lo: usize,
        hi: usize,
    ) {
        let c = self.g.in_channels;
        let mut w = [[S::splat(0.0); KW]; KH];
        for (ky, w) in w.iter_mut().enumerate() {
            for (kx, w) in w.iter_mut().enumerate() {
                *w = S::load::<FULL>(self.kernel.as_ptr().add((ky * KW + kx) * c + c0), m);
            }
        }
        let ep = Epilogue::<S>::load::<FULL>(self.e, c0, m);
        for ox in 0..lo {
            self.edge::<S, KH, KW, FULL>(&w, &ep, c0, m, ox);
        }
        for (ox, n) in interior_runs(lo, hi, P) {
            match n {
                _ if n == P => self.interior::<S, KH, KW, P, SW, FULL>(&w, &ep, c0, m, ox),
                4 => self.interior::<S, KH, KW, 4, SW, FULL>(&w, &ep, c0, m, ox),
                2 => self.interior::<S, KH, KW, 2, SW, FULL>(&w, &ep, c0, m, ox),
                _ => self.interior::<S, KH, KW, 1, SW, FULL>(&w, &ep, c0, m, ox),
            }
        }
        for ox in hi..self.g.out_hw[1] {
            self.edge::<S, KH, KW, FULL>(&w, &ep, c0, m, ox);
        }
    }

    /// `Q` pixels from column `ox`, every tap inside the input row. With a stride `SW` of 1 or
    /// 2 (and no dilation) each input pixel the run covers is loaded once and multiplied into
    /// every output pixel whose window holds it; otherwise (`SW = 0`: the stride and dilation
    /// as the geometry says) every tap loads its own. Either way each pixel's taps are summed in
    /// `(ky, kx)` order.
    #[inline(always)]
    unsafe fn interior<S: Lanes, const KH: usize, const KW: usize, const Q: usize, const SW: usize, const FULL: bool>(
        &self,
        w: &[[S::V; KW]; KH],
        ep: &Epilogue<S>,
        c0: usize,
        m: S::Mask,
        ox: usize,
    ) {
        let g = self.g;
        let c = g.in_channels;
        let iw = g.in_hw[1];
        let ([_, sw], [dh, dw]) = (g.window.stride, g.window.dilation);
        let left = ox * sw - g.pad.left;
        let mut acc = [S::splat(0.0); Q];
        for (ky, w) in w.iter().enumerate() {
            if self.valid & (1 << ky) == 0 {
                continue;
            }
            let iy = self.top.wrapping_add(ky * dh);
            let base = self.image.add((iy * iw + left) * c + c0);
            if SW > 0 {
                for j in 0..(Q - 1) * SW + KW {
                    let v = S::load::<FULL>(base.add(j * c), m);
                    for (kx, w) in w.iter().enumerate() {
                        if j >= kx && (j - kx).is_multiple_of(SW) && (j - kx) / SW < Q {
                            let p = (j - kx) / SW;
                            acc[p] = S::fma(v, *w, acc[p]);
                        }
                    }
                }
            } else {
                for (kx, w) in w.iter().enumerate() {
                    let tap = base.add(kx * dw * c);
                    for (p, acc) in acc.iter_mut().enumerate() {
                        *acc = S::fma(S::load::<FULL>(tap.add(p * sw * c), m), *w, *acc);
                    }
                }
            }
        }
        for (p, acc) in acc.iter().enumerate() {
            self.finish::<S, FULL>(ep, (ox + p) * c + c0, m, *acc);
        }
    }

    /// Column `ox`, each tap's column checked.
    #[inline(always)]
    unsafe fn edge<S: Lanes, const KH: usize, const KW: usize, const FULL: bool>(
        &self,
        w: &[[S::V; KW]; KH],
        ep: &Epilogue<S>,
        c0: usize,
        m: S::Mask,
        ox: usize,
    ) {
        let g = self.g;
        let c = g.in_channels;
        let iw = g.in_hw[1];
        let ([_, sw], [dh, dw]) = (g.window.stride, g.window.dilation);
        let mut acc = S::splat(0.0);
        for (ky, w) in w.iter().enumerate() {
            if self.valid & (1 << ky) == 0 {
                continue;
            }
            let iy = self.top.wrapping_add(ky * dh);
            for (kx, w) in w.iter().enumerate() {
                // A tap left of the input wraps to a huge value and fails the bound too.
                let ix = (ox * sw + kx * dw).wrapping_sub(g.pad.left);
                if ix < iw {
                    acc = S::fma(S::load::<FULL>(self.image.add((iy * iw + ix) * c + c0), m), *w, acc);
                }
            }
        }
        self.finish::<S, FULL>(ep, ox * c + c0, m, acc);
    }

    /// The epilogue of one pixel's chunk at `at` in the output row, and its store.
    #[inline(always)]
    unsafe fn finish<S: Lanes, const FULL: bool>(&self, ep: &Epilogue<S>, at: usize, m: S::Mask, v: S::V) {
        ep.store::<FULL>(v, self.out.add(at), self.residual.map(|r| r.add(at)), m);
    }
}

/// A chunk's epilogue operands (`GemmEpilogue`'s per-channel scale and bias, the rectifier's
/// bound), in registers.
pub(in crate::kernels) struct Epilogue<S: Lanes> {
    scale: Option<S::V>,
    bias: Option<S::V>,
    upper: Option<S::V>,
}

impl<S: Lanes> Epilogue<S> {
    /// Channels `c0..` of `e` (one register, masked by `m` unless `FULL`).
    #[inline(always)]
    pub(in crate::kernels) unsafe fn load<const FULL: bool>(e: &GemmEpilogue<'_>, c0: usize, m: S::Mask) -> Self {
        Epilogue {
            scale: e.scale.map(|s| S::load::<FULL>(s.as_ptr().add(c0), m)),
            bias: e.bias.map(|b| S::load::<FULL>(b.as_ptr().add(c0), m)),
            upper: e.rectifier.upper().map(|u| S::splat(u)),
        }
    }

    /// `v` scaled, biased, plus the residual at `residual` when there is one, rectified, and
    /// stored at `out`.
    #[inline(always)]
    pub(in crate::kernels) unsafe fn store<const FULL: bool>(&self, mut v: S::V, out: *mut f32, residual: Option<*const f32>, m: S::Mask) {
        if let Some(s) = self.scale {
            v = S::mul(v, s);
        }
        if let Some(b) = self.bias {
            v = S::add(v, b);
        }
        if let Some(res) = residual {
            v = S::add(v, S::load::<FULL>(res, m));
        }
        if let Some(u) = self.upper {
            v = S::clamp(v, u);
        }
        S::store::<FULL>(out, m, v);
    }
}
