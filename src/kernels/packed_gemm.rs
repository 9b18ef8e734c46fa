//! A GEMM for inference, `C = epilogue(A B)`, with `B` (the weights) packed once ahead of time
//! into 32-column panels, an AVX-512 micro-kernel chosen at run time, and a portable kernel
//! with the same blocking everywhere else.
//!
//! The epilogue (bias, residual add, ReLU) runs in the micro-kernel's store, while the output
//! tile is still in registers. Every output element is computed by one micro-kernel call
//! sequence with `K` summed in the same order whatever the row and panel ranges a caller
//! splits the work into, so results do not depend on how the work is divided among threads.

use std::ops::Range;

use crate::error::{Error, Result};

/// Columns per packed panel (two 16-lane AVX-512 vectors).
pub const NR: usize = 32;
/// Rows per micro-kernel call.
pub const MR: usize = 12;
/// Depth of one `K` block (the `kc x NR` block of `B` stays in L1).
pub const KC: usize = 256;

/// `B` (`k x n`, row-major) packed into `ceil(n / NR)` panels of `k x NR` floats, the last one
/// zero-padded.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedB {
    k: usize,
    n: usize,
    data: Vec<f32>,
}

impl PackedB {
    /// Packs a row-major `k x n` matrix with leading dimension `ldb`.
    pub fn pack(b: &[f32], k: usize, n: usize, ldb: usize) -> Result<Self> {
        if ldb < n || (k > 0 && n > 0 && b.len() < (k - 1) * ldb + n) {
            return Err(Error::shape(
                "PackedB",
                format!("a {k} x {n} matrix with ld {ldb}"),
                format!("{} elements", b.len()),
            ));
        }
        let panels = n.div_ceil(NR);
        let mut data = vec![0.0; panels * k * NR];
        for p in 0..panels {
            let cols = NR.min(n - p * NR);
            for r in 0..k {
                let src = &b[r * ldb + p * NR..r * ldb + p * NR + cols];
                data[(p * k + r) * NR..(p * k + r) * NR + cols].copy_from_slice(src);
            }
        }
        Ok(PackedB { k, n, data })
    }

    /// Rows (`K`).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns (`N`).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Number of `NR`-column panels.
    pub fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    fn panel(&self, p: usize) -> &[f32] {
        &self.data[p * self.k * NR..(p + 1) * self.k * NR]
    }
}

/// What the GEMM does to each output element before storing it:
/// `c = act(ab * scale[col] + bias[col] + residual[row, col])`.
#[derive(Clone, Copy, Debug, Default)]
pub struct GemmEpilogue<'a> {
    /// Per-column scale, `n` elements (a BatchNorm folded into the output pass).
    pub scale: Option<&'a [f32]>,
    /// Per-column bias, `n` elements.
    pub bias: Option<&'a [f32]>,
    /// A matrix added element-wise, row-major with the same leading dimension as `C`, indexed
    /// by the same (row, column) as `C`.
    pub residual: Option<&'a [f32]>,
    /// Apply ReLU last.
    pub relu: bool,
}

/// Whether the AVX-512 micro-kernel is used on this machine.
pub fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `C[rows, cols of panels] = epilogue(A[rows, :] B[:, panels])`, row-major, for the rows in
/// `rows` and the `NR`-column panels in `panels` (so several threads can each take a disjoint
/// block). `a` has leading dimension `lda` and `b.k()` columns; `c` and the residual have
/// leading dimension `ldc` and `b.n()` columns. `C` is write-only.
#[allow(clippy::too_many_arguments)]
pub fn gemm_packed(
    a: &[f32],
    lda: usize,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    rows: Range<usize>,
    panels: Range<usize>,
    e: &GemmEpilogue<'_>,
) -> Result<()> {
    check(a, lda, 0, b, c.len(), ldc, &rows, &panels, e)?;
    if rows.is_empty() || panels.is_empty() {
        return Ok(());
    }
    // SAFETY: `check` verified that every element written lies within `c`.
    unsafe { gemm_unchecked(a, lda, 0, b, c.as_mut_ptr(), ldc, rows, panels, e, simd_available()) };
    Ok(())
}

/// [`gemm_packed`] writing through a raw pointer, so that several threads can each fill a
/// disjoint block (rows or panels) of the same output.
///
/// Row `i` of the output reads row `i - a_row0` of `a` (an im2col tile holding only the rows
/// of one block).
///
/// # Safety
/// `c` must be valid for reads and writes of `c_len` floats, and no other thread may access
/// the elements of the block (`rows` x the columns of `panels`) during the call.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_packed_raw(
    a: &[f32],
    lda: usize,
    a_row0: usize,
    b: &PackedB,
    c: *mut f32,
    c_len: usize,
    ldc: usize,
    rows: Range<usize>,
    panels: Range<usize>,
    e: &GemmEpilogue<'_>,
) -> Result<()> {
    check(a, lda, a_row0, b, c_len, ldc, &rows, &panels, e)?;
    if rows.is_empty() || panels.is_empty() {
        return Ok(());
    }
    // SAFETY: the caller guarantees `c` covers `c_len` floats and the block is ours alone.
    unsafe { gemm_unchecked(a, lda, a_row0, b, c, ldc, rows, panels, e, simd_available()) };
    Ok(())
}

/// [`gemm_packed`] forced onto the portable kernel (for tests and comparisons).
#[allow(clippy::too_many_arguments)]
pub fn gemm_packed_portable(
    a: &[f32],
    lda: usize,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    rows: Range<usize>,
    panels: Range<usize>,
    e: &GemmEpilogue<'_>,
) -> Result<()> {
    check(a, lda, 0, b, c.len(), ldc, &rows, &panels, e)?;
    if rows.is_empty() || panels.is_empty() {
        return Ok(());
    }
    // SAFETY: `check` verified that every element written lies within `c`.
    unsafe { gemm_unchecked(a, lda, 0, b, c.as_mut_ptr(), ldc, rows, panels, e, false) };
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn check(
    a: &[f32],
    lda: usize,
    a_row0: usize,
    b: &PackedB,
    c_len: usize,
    ldc: usize,
    rows: &Range<usize>,
    panels: &Range<usize>,
    e: &GemmEpilogue<'_>,
) -> Result<()> {
    let bad = |what: String| {
        Err(Error::shape(
            "gemm_packed",
            what,
            format!("A {} (ld {lda}), C {c_len} (ld {ldc}), rows {rows:?}, panels {panels:?}", a.len()),
        ))
    };
    if rows.is_empty() || panels.is_empty() {
        return Ok(());
    }
    if panels.end > b.panels() || lda < b.k || ldc < b.n {
        return bad(format!(
            "panels within {} and leading dimensions >= {} (A) and {} (C)",
            b.panels(),
            b.k,
            b.n
        ));
    }
    let last = rows.end - 1;
    if rows.start < a_row0 || a.len() < (last - a_row0) * lda + b.k || c_len < last * ldc + b.n {
        return bad(format!("A and C holding row {last}"));
    }
    if e.bias.is_some_and(|v| v.len() < b.n)
        || e.scale.is_some_and(|v| v.len() < b.n)
        || e.residual.is_some_and(|r| r.len() < last * ldc + b.n)
    {
        return bad("a bias of n and a residual of C's extent".into());
    }
    Ok(())
}

/// # Safety
/// `c` covers every element of the block, which no one else accesses meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_unchecked(
    a: &[f32],
    lda: usize,
    a_row0: usize,
    b: &PackedB,
    c: *mut f32,
    ldc: usize,
    rows: Range<usize>,
    panels: Range<usize>,
    e: &GemmEpilogue<'_>,
    simd: bool,
) {
    let k = b.k;
    let mut k0 = 0;
    while k0 < k {
        let kc = KC.min(k - k0);
        let (first, last) = (k0 == 0, k0 + kc >= k);
        for p in panels.clone() {
            let cols = NR.min(b.n - p * NR);
            let bp = &b.panel(p)[k0 * NR..(k0 + kc) * NR];
            let mut i = rows.start;
            while i < rows.end {
                let r = MR.min(rows.end - i);
                let tile = Tile {
                    a: &a[(i - a_row0) * lda + k0..],
                    lda,
                    b: bp,
                    kc,
                    c_off: i * ldc + p * NR,
                    ldc,
                    rows: r,
                    cols,
                    first,
                    col0: p * NR,
                };
                // SAFETY: forwarded from this function's contract.
                unsafe { tile.run(c, if last { Some(e) } else { None }, simd) };
                i += r;
            }
        }
        k0 += kc;
    }
}

/// One micro-kernel call: `rows x cols` outputs at `c[c_off..]`, `kc` deep, from `rows` rows of
/// `A` `lda` apart. (Packing `A` into micro-panels first was measured: it did not pay on
/// ResNet50's shapes, the broadcasts stream from L1/L2 either way.)
struct Tile<'a> {
    a: &'a [f32],
    lda: usize,
    b: &'a [f32],
    kc: usize,
    c_off: usize,
    ldc: usize,
    rows: usize,
    cols: usize,
    first: bool,
    col0: usize,
}

impl Tile<'_> {
    /// # Safety
    /// `c` covers the tile's `rows x cols` elements at `c_off` (leading dimension `ldc`).
    unsafe fn run(&self, c: *mut f32, e: Option<&GemmEpilogue<'_>>, simd: bool) {
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: AVX-512F was detected at run time. Every element the kernel reads or
            // writes lies inside the slices, whose extents `check` verified; lanes past the
            // last column are masked off (masked lanes are never accessed, and their addresses
            // are formed with `wrapping_add`).
            unsafe { avx512::tile(self, c, e) };
            return;
        }
        let _ = simd;
        // SAFETY: forwarded from this function's contract.
        unsafe { self.portable(c, e) };
    }

    /// # Safety
    /// As [`Tile::run`].
    unsafe fn portable(&self, c: *mut f32, e: Option<&GemmEpilogue<'_>>) {
        let mut acc = [[0.0f32; NR]; MR];
        let rows = self.rows;
        for p in 0..self.kc {
            let brow = &self.b[p * NR..(p + 1) * NR];
            for (r, row) in acc.iter_mut().enumerate().take(rows) {
                let av = self.a[r * self.lda + p];
                for (x, &bv) in row.iter_mut().zip(brow) {
                    *x += av * bv;
                }
            }
        }
        for (r, row) in acc.iter().enumerate().take(rows) {
            let at = self.c_off + r * self.ldc;
            for (j, &acc) in row.iter().enumerate().take(self.cols) {
                let mut v = acc;
                // SAFETY: (at + j) is inside the tile, which the caller guarantees `c` covers.
                let out = unsafe { c.add(at + j) };
                if !self.first {
                    v += unsafe { *out };
                }
                if let Some(e) = e {
                    if let Some(scale) = e.scale {
                        v *= scale[self.col0 + j];
                    }
                    if let Some(bias) = e.bias {
                        v += bias[self.col0 + j];
                    }
                    if let Some(res) = e.residual {
                        v += res[at + j];
                    }
                    if e.relu {
                        v = v.max(0.0);
                    }
                }
                unsafe { *out = v };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{GemmEpilogue, Tile, MR};

    pub(super) unsafe fn tile(t: &Tile<'_>, c: *mut f32, e: Option<&GemmEpilogue<'_>>) {
        match t.rows {
            12 => kernel::<12>(t, c, e),
            11 => kernel::<11>(t, c, e),
            10 => kernel::<10>(t, c, e),
            9 => kernel::<9>(t, c, e),
            8 => kernel::<8>(t, c, e),
            7 => kernel::<7>(t, c, e),
            6 => kernel::<6>(t, c, e),
            5 => kernel::<5>(t, c, e),
            4 => kernel::<4>(t, c, e),
            3 => kernel::<3>(t, c, e),
            2 => kernel::<2>(t, c, e),
            _ => kernel::<1>(t, c, e),
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn kernel<const R: usize>(t: &Tile<'_>, cp: *mut f32, e: Option<&GemmEpilogue<'_>>) {
        const { assert!(R <= MR) };
        let m0: __mmask16 = if t.cols >= 16 { 0xFFFF } else { ((1u32 << t.cols) - 1) as u16 };
        let m1: __mmask16 = if t.cols >= 32 {
            0xFFFF
        } else if t.cols > 16 {
            ((1u32 << (t.cols - 16)) - 1) as u16
        } else {
            0
        };
        let mut acc0 = [_mm512_setzero_ps(); R];
        let mut acc1 = [_mm512_setzero_ps(); R];
        let a = t.a.as_ptr();
        let b = t.b.as_ptr();
        for p in 0..t.kc {
            let b0 = _mm512_loadu_ps(b.add(p * 32));
            let b1 = _mm512_loadu_ps(b.add(p * 32 + 16));
            for r in 0..R {
                let av = _mm512_set1_ps(*a.add(r * t.lda + p));
                acc0[r] = _mm512_fmadd_ps(av, b0, acc0[r]);
                acc1[r] = _mm512_fmadd_ps(av, b1, acc1[r]);
            }
        }
        let (bias0, bias1) = match e.and_then(|e| e.bias) {
            Some(bias) => (
                _mm512_maskz_loadu_ps(m0, bias.as_ptr().add(t.col0)),
                _mm512_maskz_loadu_ps(m1, bias.as_ptr().wrapping_add(t.col0 + 16)),
            ),
            None => (_mm512_setzero_ps(), _mm512_setzero_ps()),
        };
        let (scale0, scale1) = match e.and_then(|e| e.scale) {
            Some(scale) => (
                _mm512_maskz_loadu_ps(m0, scale.as_ptr().add(t.col0)),
                _mm512_maskz_loadu_ps(m1, scale.as_ptr().wrapping_add(t.col0 + 16)),
            ),
            None => (_mm512_set1_ps(1.0), _mm512_set1_ps(1.0)),
        };
        let scaled = e.is_some_and(|e| e.scale.is_some());
        let zero = _mm512_setzero_ps();
        for r in 0..R {
            let at = t.c_off + r * t.ldc;
            let (mut v0, mut v1) = (acc0[r], acc1[r]);
            if !t.first {
                v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, cp.add(at)));
                v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, cp.wrapping_add(at + 16)));
            }
            if let Some(e) = e {
                if scaled {
                    v0 = _mm512_mul_ps(v0, scale0);
                    v1 = _mm512_mul_ps(v1, scale1);
                }
                v0 = _mm512_add_ps(v0, bias0);
                v1 = _mm512_add_ps(v1, bias1);
                if let Some(res) = e.residual {
                    v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, res.as_ptr().add(at)));
                    v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, res.as_ptr().wrapping_add(at + 16)));
                }
                if e.relu {
                    v0 = _mm512_max_ps(v0, zero);
                    v1 = _mm512_max_ps(v1, zero);
                }
            }
            _mm512_mask_storeu_ps(cp.add(at), m0, v0);
            _mm512_mask_storeu_ps(cp.wrapping_add(at + 16), m1, v1);
        }
    }
}
