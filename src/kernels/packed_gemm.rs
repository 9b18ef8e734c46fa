//! A GEMM for inference, `C = epilogue(A B)`, with `B` (the weights) packed once ahead of time
//! into 32-column panels, a micro-kernel chosen at run time ([`gemm_kernel`]: AVX-512, else
//! AVX2 + FMA on x86-64, NEON on aarch64, else a portable one built on `matrixmultiply`).
//!
//! The three SIMD kernels fuse each multiply-add (FMA) and sum `K` in the same order, so they
//! give the same bits; the portable kernel's bits are `matrixmultiply`'s (which fuses or not
//! depending on the CPU).
//!
//! The epilogue (bias, residual add, ReLU or ReLU6) runs in the micro-kernel's store, while the output
//! tile is still in registers. Every output element is computed by one micro-kernel call
//! sequence with `K` summed in the same order whatever the row and panel ranges a caller
//! splits the work into, so results do not depend on how the work is divided among threads.

use std::ops::Range;

use super::rectifier::Rectifier;
use crate::error::{Error, Result};

/// Columns per packed panel (two 16-lane AVX-512 vectors).
pub const NR: usize = 32;
/// Rows per micro-kernel call.
pub const MR: usize = 12;
/// The largest depth of one `K` block; the depth used is [`Blocking::kc`], chosen from the
/// caches at run time.
pub const KC: usize = 512;

/// The per-core data caches the GEMM's blocking is chosen from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheSizes {
    /// Level-1 data cache, bytes.
    pub l1d: usize,
    /// Level-2 cache, bytes.
    pub l2: usize,
}

impl CacheSizes {
    /// Assumed where the caches cannot be read: 32 KiB L1d and 512 KiB L2, smaller than on
    /// any x86-64 or aarch64 core of the last decade, so the blocks still fit.
    pub const FALLBACK: CacheSizes = CacheSizes {
        l1d: 32 << 10,
        l2: 512 << 10,
    };

    /// This machine's, read from Linux's `/sys/devices/system/cpu/cpu0/cache` (the level,
    /// type and size of each cache); [`CacheSizes::FALLBACK`] for any that cannot be read.
    pub fn detect() -> CacheSizes {
        let mut sizes = CacheSizes::FALLBACK;
        let dir = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
        let Ok(entries) = std::fs::read_dir(dir) else { return sizes };
        for entry in entries.flatten() {
            let read = |name: &str| std::fs::read_to_string(entry.path().join(name)).map(|s| s.trim().to_string()).ok();
            let (Some(level), Some(kind), Some(size)) = (read("level"), read("type"), read("size")) else {
                continue;
            };
            let Some(bytes) = parse_cache_size(&size) else { continue };
            match (level.as_str(), kind.as_str()) {
                ("1", "Data") => sizes.l1d = bytes,
                ("2", "Unified" | "Data") => sizes.l2 = bytes,
                _ => {}
            }
        }
        sizes
    }
}

/// `"48K"`, `"1024K"`, `"2M"` or a plain byte count; `None` for anything else or zero.
fn parse_cache_size(s: &str) -> Option<usize> {
    let (digits, unit) = match s.strip_suffix(['K', 'k']) {
        Some(d) => (d, 1 << 10),
        None => match s.strip_suffix(['M', 'm']) {
            Some(d) => (d, 1 << 20),
            None => (s, 1),
        },
    };
    digits.parse::<usize>().ok().and_then(|v| v.checked_mul(unit)).filter(|&v| v > 0)
}

/// The GEMM's cache blocking, chosen from the caches: how deep one `K` block runs and how large a
/// packed `B` is multiplied rows-outermost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blocking {
    /// Depth of one `K` block: the micro-tile's `MR x kc` rows of `A`, which every panel of the
    /// block reuses, fill at most half of L1d; a multiple of 32 in `128..=KC`. (The same for
    /// every kernel on a machine, so the SIMD kernels keep giving the same bits.)
    pub kc: usize,
    /// Largest packed `B` (bytes) multiplied rows-outermost, so that it stays in L2 while the
    /// micro-tiles of `A` stream past it once: a quarter of L2.
    pub rows_outer_max_b_bytes: usize,
}

impl Blocking {
    /// The blocking for these caches.
    pub fn for_caches(c: &CacheSizes) -> Blocking {
        let kc = (c.l1d / 2 / (MR * 4)) / 32 * 32;
        Blocking {
            kc: kc.clamp(128, KC),
            rows_outer_max_b_bytes: c.l2 / 4,
        }
    }
}

/// The blocking every GEMM of this process uses: [`Blocking::for_caches`] of
/// [`CacheSizes::detect`], read once.
pub fn blocking() -> Blocking {
    static CHOSEN: std::sync::OnceLock<Blocking> = std::sync::OnceLock::new();
    *CHOSEN.get_or_init(|| Blocking::for_caches(&CacheSizes::detect()))
}

/// `B` (`k x n`, row-major) packed into `ceil(n / NR)` panels of `k x NR` floats, the last one
/// zero-padded. When the portable kernel is the one selected ([`gemm_kernel`]), `B` is also
/// kept row-major as given, which that kernel multiplies in place (twice the memory, on the
/// machines without a SIMD kernel of this crate's).
#[derive(Clone, Debug, PartialEq)]
pub struct PackedB {
    k: usize,
    n: usize,
    data: Vec<f32>,
    /// `B` row-major (`k x n`, leading dimension `n`), or empty.
    plain: Vec<f32>,
}

impl PackedB {
    /// Packs a row-major `k x n` matrix with leading dimension `ldb` for the selected kernel
    /// ([`gemm_kernel`]).
    pub fn pack(b: &[f32], k: usize, n: usize, ldb: usize) -> Result<Self> {
        Self::pack_into(b, k, n, ldb, Vec::new())
    }

    /// [`PackedB::pack`] for `kernel` (with the row-major copy the portable kernel multiplies
    /// in place when `kernel` is [`GemmKernel::Portable`]), to time or test a kernel other than
    /// the selected one as it runs when selected. Any kernel can multiply any `PackedB`.
    pub fn pack_for(kernel: GemmKernel, b: &[f32], k: usize, n: usize, ldb: usize) -> Result<Self> {
        Self::pack_with(kernel, b, k, n, ldb, Vec::new())
    }

    /// [`PackedB::pack`] into `data`'s allocation (every element is written).
    pub(crate) fn pack_into(b: &[f32], k: usize, n: usize, ldb: usize, data: Vec<f32>) -> Result<Self> {
        Self::pack_with(gemm_kernel(), b, k, n, ldb, data)
    }

    fn pack_with(kernel: GemmKernel, b: &[f32], k: usize, n: usize, ldb: usize, mut data: Vec<f32>) -> Result<Self> {
        if ldb < n || (k > 0 && n > 0 && b.len() < (k - 1) * ldb + n) {
            return Err(Error::shape(
                "PackedB",
                format!("a {k} x {n} matrix with ld {ldb}"),
                format!("{} elements", b.len()),
            ));
        }
        let panels = n.div_ceil(NR);
        // Every element is written below (the last panel's padding columns with zeros), so
        // the old contents are kept rather than cleared first.
        data.resize(panels * k * NR, 0.0);
        for p in 0..panels {
            let cols = NR.min(n - p * NR);
            for r in 0..k {
                let src = &b[r * ldb + p * NR..r * ldb + p * NR + cols];
                let row = &mut data[(p * k + r) * NR..(p * k + r + 1) * NR];
                super::short_copy::copy(&mut row[..cols], src);
                super::short_copy::zero(&mut row[cols..]);
            }
        }
        let mut plain = Vec::new();
        if kernel == GemmKernel::Portable {
            plain.reserve_exact(k * n);
            for r in 0..k {
                plain.extend_from_slice(&b[r * ldb..r * ldb + n]);
            }
        }
        Ok(PackedB { k, n, data, plain })
    }

    /// The panels' storage, to reuse its allocation.
    pub(crate) fn into_panels(self) -> Vec<f32> {
        self.data
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
    /// The rectifier applied last.
    pub rectifier: Rectifier,
}

/// A GEMM micro-kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GemmKernel {
    /// 12 x 32 tiles, two 16-lane vectors a row (x86-64 with AVX-512F).
    Avx512,
    /// 6 x 16 sub-tiles of each 12 x 32 tile, two 8-lane vectors a row (x86-64 with AVX2 and FMA).
    Avx2Fma,
    /// 6 x 16 sub-tiles of each 12 x 32 tile, four 4-lane vectors a row (aarch64, where NEON is
    /// always present).
    Neon,
    /// Any CPU: each block multiplied by `matrixmultiply` (which picks its own kernel for the
    /// CPU at run time), then the epilogue in plain Rust.
    Portable,
}

impl GemmKernel {
    /// Whether this machine can run the kernel.
    pub fn is_available(self) -> bool {
        match self {
            GemmKernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            GemmKernel::Avx512 => std::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            GemmKernel::Avx2Fma => std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "aarch64")]
            GemmKernel::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Every kernel this machine can run, fastest first.
    pub fn available() -> Vec<GemmKernel> {
        [GemmKernel::Avx512, GemmKernel::Avx2Fma, GemmKernel::Neon, GemmKernel::Portable]
            .into_iter()
            .filter(|k| k.is_available())
            .collect()
    }

    /// The name `CONVNET_GEMM_KERNEL` takes: `avx512`, `avx2`, `neon`, `portable`.
    pub fn name(self) -> &'static str {
        match self {
            GemmKernel::Avx512 => "avx512",
            GemmKernel::Avx2Fma => "avx2",
            GemmKernel::Neon => "neon",
            GemmKernel::Portable => "portable",
        }
    }
}

/// The micro-kernel the fast executor runs: the fastest this machine has, or the one the
/// environment variable `CONVNET_GEMM_KERNEL` names (`avx512`, `avx2`, `neon` or `portable`) when the
/// machine has it, so tests and benchmarks can exercise a slower path on a faster machine. An
/// unknown or unavailable name is ignored (a kernel the CPU lacks is never run). Read once.
pub fn gemm_kernel() -> GemmKernel {
    static CHOSEN: std::sync::OnceLock<GemmKernel> = std::sync::OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let forced = std::env::var("CONVNET_GEMM_KERNEL").ok();
        let available = GemmKernel::available();
        let fastest = available.first().copied().unwrap_or(GemmKernel::Portable);
        available
            .into_iter()
            .find(|k| forced.as_deref() == Some(k.name()))
            .unwrap_or(fastest)
    })
}

/// Whether a SIMD micro-kernel of this crate's own (AVX-512, AVX2 + FMA or NEON) is used.
pub fn simd_available() -> bool {
    gemm_kernel() != GemmKernel::Portable
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
    unsafe { gemm_unchecked(a, lda, 0, b, c.as_mut_ptr(), ldc, rows, panels, e, gemm_kernel(), false, false) };
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
    // SAFETY: forwarded from this function's contract.
    unsafe { gemm_raw(a, lda, a_row0, b, c, c_len, ldc, rows, panels, e, false, false) }
}

/// The checked body of [`gemm_packed_raw`] and [`gemm_packed_raw_col_major_a`].
///
/// # Safety
/// As [`gemm_packed_raw`].
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_raw(
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
    accumulate: bool,
    col_major: bool,
) -> Result<()> {
    if col_major {
        check_col_major(a, lda, a_row0, b, c_len, ldc, &rows, &panels)?;
    } else {
        check(a, lda, a_row0, b, c_len, ldc, &rows, &panels, e)?;
    }
    if rows.is_empty() || panels.is_empty() {
        return Ok(());
    }
    // SAFETY: the caller guarantees `c` covers `c_len` floats and the block is ours alone.
    unsafe { gemm_unchecked(a, lda, a_row0, b, c, ldc, rows, panels, e, gemm_kernel(), accumulate, col_major) };
    Ok(())
}

/// [`gemm_packed_raw`] (no epilogue; adding to `C` when `accumulate`) with `A` stored column
/// by column: element `(i, p)` of `A` at `a[(i - a_row0) + p * lda]`. For a product whose left
/// factor is a transposed matrix (`C = Xᵀ Y`, `X` row-major), read in place.
///
/// # Safety
/// As [`gemm_packed_raw`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_packed_raw_col_major_a(
    a: &[f32],
    lda: usize,
    a_row0: usize,
    b: &PackedB,
    c: *mut f32,
    c_len: usize,
    ldc: usize,
    rows: Range<usize>,
    panels: Range<usize>,
    accumulate: bool,
) -> Result<()> {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        gemm_raw(
            a,
            lda,
            a_row0,
            b,
            c,
            c_len,
            ldc,
            rows,
            panels,
            &GemmEpilogue::default(),
            accumulate,
            true,
        )
    }
}

/// [`check`] for a column-major `A`: columns `lda` apart, each holding rows `a_row0..`.
#[allow(clippy::too_many_arguments)]
fn check_col_major(
    a: &[f32],
    lda: usize,
    a_row0: usize,
    b: &PackedB,
    c_len: usize,
    ldc: usize,
    rows: &Range<usize>,
    panels: &Range<usize>,
) -> Result<()> {
    if rows.is_empty() || panels.is_empty() || b.k == 0 {
        return Ok(());
    }
    let last = rows.end - 1;
    let ok = panels.end <= b.panels()
        && ldc >= b.n
        && rows.start >= a_row0
        && lda > last - a_row0
        && a.len() > (b.k - 1) * lda + (last - a_row0)
        && c_len >= last * ldc + b.n;
    if ok {
        return Ok(());
    }
    Err(Error::shape(
        "gemm_packed (column-major A)",
        format!(
            "A holding rows {a_row0}..={last} in {} columns, panels within {}, C holding row {last}",
            b.k,
            b.panels()
        ),
        format!("A {} (ld {lda}), C {c_len} (ld {ldc}), rows {rows:?}, panels {panels:?}", a.len()),
    ))
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
    gemm_packed_with(GemmKernel::Portable, a, lda, b, c, ldc, rows, panels, e)
}

/// [`gemm_packed`] on the given micro-kernel (for tests and comparisons of every kernel the
/// machine has); a kernel this machine cannot run is an [`Error::Config`].
#[allow(clippy::too_many_arguments)]
pub fn gemm_packed_with(
    kernel: GemmKernel,
    a: &[f32],
    lda: usize,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    rows: Range<usize>,
    panels: Range<usize>,
    e: &GemmEpilogue<'_>,
) -> Result<()> {
    if !kernel.is_available() {
        return Err(Error::config(
            "gemm_packed",
            format!("this machine cannot run the {kernel:?} kernel"),
        ));
    }
    check(a, lda, 0, b, c.len(), ldc, &rows, &panels, e)?;
    if rows.is_empty() || panels.is_empty() {
        return Ok(());
    }
    // SAFETY: `check` verified that every element written lies within `c`; the kernel's CPU
    // features were checked above.
    unsafe { gemm_unchecked(a, lda, 0, b, c.as_mut_ptr(), ldc, rows, panels, e, kernel, false, false) };
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
    kernel: GemmKernel,
    accumulate: bool,
    col_major: bool,
) {
    if kernel == GemmKernel::Portable {
        // SAFETY: forwarded from this function's contract.
        unsafe { portable_block(a, lda, a_row0, b, c, ldc, rows, panels, e, accumulate, col_major) };
        return;
    }
    let k = b.k;
    // Rows in near-equal micro-tiles of at most MR (49 rows: 10, 10, 10, 10, 9 rather than
    // 12, 12, 12, 12, 1), so no tile runs nearly empty; at most 6 for the kernels that run 6-row
    // sub-tiles (49 rows: 6, 6, 6, 6, 5, 5, 5, 5, 5 rather than 6 + 4 four times and 6 + 3;
    // on ResNet50's stage-5 shapes the difference was inside this machine's noise). Each output
    // is the same sum in the same order however the rows are grouped.
    let mr = match kernel {
        GemmKernel::Avx2Fma | GemmKernel::Neon => MR / 2,
        _ => MR,
    };
    let tiles = rows.len().div_ceil(mr);
    let (base, extra) = (rows.len() / tiles, rows.len() % tiles);
    let tile_rows = |t: usize| base + usize::from(t < extra);
    // Small B (it stays in L2): rows outermost, so each micro-tile of A stays in L1 across the
    // panels and C is written row by row. Large B: panels outermost, so each panel block stays in
    // L1 across the micro-tiles.
    let blocks = blocking();
    let rows_outer = b.k * b.n * 4 <= blocks.rows_outer_max_b_bytes;
    // Rows of `A` whose starts crowd into a few L1 sets (a leading dimension of 1024 floats puts
    // all 12 of a tile's rows in one) are copied, one `K` block at a time, to a stride that
    // spreads them: M=196 K=1024 N=256 went from 77-104 to 101-110 GFLOP/s on a Zen 4.
    let copy_stride = (!col_major && crowds_l1(lda)).then(|| spread_stride(blocks.kc.min(k)));
    let mut copied = match copy_stride {
        Some(_) => COPIED_A.with_borrow_mut(std::mem::take),
        None => Vec::new(),
    };
    let mut k0 = 0;
    while k0 < k {
        let kc = blocks.kc.min(k - k0);
        let (first, last) = (k0 == 0 && !accumulate, k0 + kc >= k);
        if let Some(ld) = copy_stride {
            copied.resize(rows.len() * ld, 0.0);
            for (i, dst) in rows.clone().zip(copied.chunks_exact_mut(ld)) {
                let at = (i - a_row0) * lda + k0;
                dst[..kc].copy_from_slice(&a[at..at + kc]);
            }
        }
        let run = |i: usize, r: usize, p: usize| {
            let (a, lda, at) = match copy_stride {
                Some(ld) => (&copied[..], ld, (i - rows.start) * ld),
                None if col_major => (a, lda, (i - a_row0) + k0 * lda),
                None => (a, lda, (i - a_row0) * lda + k0),
            };
            let tile = Tile {
                a: &a[at..],
                lda,
                col_major,
                b: &b.panel(p)[k0 * NR..(k0 + kc) * NR],
                kc,
                c_off: i * ldc + p * NR,
                ldc,
                rows: r,
                cols: NR.min(b.n - p * NR),
                first,
                col0: p * NR,
            };
            // SAFETY: forwarded from this function's contract.
            unsafe { tile.run(c, if last { Some(e) } else { None }, kernel) };
        };
        if rows_outer {
            let mut i = rows.start;
            for t in 0..tiles {
                for p in panels.clone() {
                    run(i, tile_rows(t), p);
                }
                i += tile_rows(t);
            }
        } else {
            for p in panels.clone() {
                let mut i = rows.start;
                for t in 0..tiles {
                    run(i, tile_rows(t), p);
                    i += tile_rows(t);
                }
            }
        }
        k0 += kc;
    }
    if copy_stride.is_some() {
        COPIED_A.with_borrow_mut(|slot| *slot = copied);
    }
}

thread_local! {
    /// Rows of `A` copied to a stride that does not crowd L1 ([`crowds_l1`]), reused from call
    /// to call.
    static COPIED_A: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Lines in one way of L1d: 4 KiB on the x86-64 and Arm cores seen (32 KiB 8-way, 48 KiB
/// 12-way), so addresses 4 KiB apart share a set.
const L1_SETS: usize = 64;

/// Whether the first lines of `MR` rows `lda` floats apart put more than half of them in one
/// L1 set: then the micro-tile's rows of `A` evict each other (and `B`'s lines) in an 8-way L1.
fn crowds_l1(lda: usize) -> bool {
    let mut per_set = [0usize; L1_SETS];
    (0..MR).any(|r| {
        let set = (r * lda * 4 / 64) % L1_SETS;
        per_set[set] += 1;
        per_set[set] > MR / 2
    })
}

/// A row stride of at least `kc` floats, whole lines, that does not crowd L1.
fn spread_stride(kc: usize) -> usize {
    let mut ld = kc.div_ceil(16) * 16;
    while crowds_l1(ld) {
        ld += 16;
    }
    ld
}

/// The portable kernel: `matrixmultiply` multiplies the whole block into `C` (adding to it when
/// `accumulate`), then the epilogue runs over the block in plain Rust.
/// Each output's sum over `K` is split by `K` alone (`matrixmultiply`'s own `K` blocking), not
/// by the rows or panels a caller asks for, so results still do not depend on the thread count.
/// (With the `threading` feature `matrixmultiply` may spread a large block over its own
/// threads.)
///
/// # Safety
/// As [`gemm_unchecked`].
#[allow(clippy::too_many_arguments)]
unsafe fn portable_block(
    a: &[f32],
    lda: usize,
    a_row0: usize,
    b: &PackedB,
    c: *mut f32,
    ldc: usize,
    rows: Range<usize>,
    panels: Range<usize>,
    e: &GemmEpilogue<'_>,
    accumulate: bool,
    col_major: bool,
) {
    thread_local! {
        /// The panels' columns laid out row-major again, reused from call to call.
        static UNPACKED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let (rsa, csa) = if col_major { (1, lda) } else { (lda, 1) };
    let a0 = rows.start - a_row0;
    let a_at = if col_major { a0 } else { a0 * lda };
    let col0 = panels.start * NR;
    let cols = b.n.min(panels.end * NR) - col0;
    let c_block = c.wrapping_add(rows.start * ldc + col0);
    if b.k == 0 {
        if !accumulate {
            for i in 0..rows.len() {
                // SAFETY: the block's rows lie inside `C` (`check`).
                unsafe { std::ptr::write_bytes(c_block.add(i * ldc), 0, cols) };
            }
        }
    } else if !b.plain.is_empty() {
        // SAFETY: as below, with `B` the row-major copy (`b.k x b.n`, leading dimension `b.n`)
        // from column `col0`.
        unsafe {
            sgemm_block(
                [rows.len(), b.k, cols],
                (a.as_ptr().add(a_at), rsa, csa),
                (b.plain.as_ptr().add(col0), b.n),
                (c_block, ldc),
                accumulate,
            )
        };
    } else {
        UNPACKED.with_borrow_mut(|unpacked| {
            // (`B` packed while another kernel was selected.) One product over every panel of
            // the block, so that `matrixmultiply` packs `A` once, not once per panel (which
            // halved its speed).
            unpacked.clear();
            unpacked.resize(b.k * cols, 0.0);
            for p in panels.clone() {
                let (from, width) = (p * NR - col0, NR.min(b.n - p * NR));
                for (r, src) in b.panel(p).chunks_exact(NR).enumerate() {
                    unpacked[r * cols + from..r * cols + from + width].copy_from_slice(&src[..width]);
                }
            }
            // SAFETY: `check` verified that `A` holds the block's rows (`b.k` deep, in the
            // layout `rsa`/`csa` give) and `C` the block; `unpacked` is `b.k x cols`.
            unsafe {
                sgemm_block(
                    [rows.len(), b.k, cols],
                    (a.as_ptr().add(a_at), rsa, csa),
                    (unpacked.as_ptr(), cols),
                    (c_block, ldc),
                    accumulate,
                )
            };
        });
    }
    if e.scale.is_none() && e.bias.is_none() && e.residual.is_none() && e.rectifier.is_identity() {
        return;
    }
    for i in rows {
        let at = i * ldc + col0;
        for j in 0..cols {
            // SAFETY: (at + j) is inside the block, which the caller guarantees `c` covers.
            let out = unsafe { &mut *c.add(at + j) };
            let col = col0 + j;
            let mut v = *out;
            if let Some(scale) = e.scale {
                v *= scale[col];
            }
            if let Some(bias) = e.bias {
                v += bias[col];
            }
            if let Some(res) = e.residual {
                v += res[at + j];
            }
            *out = e.rectifier.apply(v);
        }
    }
}

/// `C (+)= A B` for `[m, k, n]` by one `matrixmultiply` call (overwriting `C` unless
/// `accumulate`). `A` is `(pointer, row stride, column stride)`, `B` and `C` are `(pointer, row
/// stride)` with unit column stride.
///
/// With the `threading` feature, `matrixmultiply` spreads a large product over threads of its
/// own, which then nest inside the executor's: on the portable kernel with several threads,
/// `MATMUL_NUM_THREADS=1` (or building without `threading`) is faster (ResNet50, batch 8, 2
/// threads: 182 ms against 262 ms). Splitting the products small enough that it never does
/// (`m k + k n < 2^15`) was measured too: it repacks `A` for every few columns, which halved the
/// GEMM's speed.
///
/// # Safety
/// The pointers are valid for the extents the strides give (`C` for writes, and for reads when
/// `accumulate`), and no one else accesses `C` meanwhile.
unsafe fn sgemm_block(
    [m, k, n]: [usize; 3],
    (a, rsa, csa): (*const f32, usize, usize),
    (b, ldb): (*const f32, usize),
    (c, ldc): (*mut f32, usize),
    accumulate: bool,
) {
    // SAFETY: forwarded; with beta 0 `matrixmultiply` does not read `C`.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a,
            rsa as isize,
            csa as isize,
            b,
            ldb as isize,
            1,
            if accumulate { 1.0 } else { 0.0 },
            c,
            ldc as isize,
            1,
        )
    };
}

/// One micro-kernel call: `rows x cols` outputs at `c[c_off..]`, `kc` deep, from `rows` rows of
/// `A` `lda` apart. (Packing `A` into micro-panels first was measured: it did not pay on
/// ResNet50's shapes, the broadcasts stream from L1/L2 either way.)
struct Tile<'a> {
    a: &'a [f32],
    lda: usize,
    /// `A` is stored column by column: element `(r, p)` at `a[r + p * lda]` (a transposed
    /// matrix), instead of `a[r * lda + p]`.
    col_major: bool,
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
    unsafe fn run(&self, c: *mut f32, e: Option<&GemmEpilogue<'_>>, kernel: GemmKernel) {
        // SAFETY (the SIMD kernels): the kernel's CPU features were detected at run time
        // (`gemm_kernel`, `gemm_packed_with`). Every element the kernel reads or writes lies
        // inside the slices, whose extents `check` verified; lanes past the last column are
        // masked off or go through a buffer (masked lanes are never accessed, and their
        // addresses are formed with `wrapping_add`).
        match kernel {
            #[cfg(target_arch = "x86_64")]
            GemmKernel::Avx512 => unsafe { avx512::tile(self, c, e) },
            #[cfg(target_arch = "x86_64")]
            GemmKernel::Avx2Fma => unsafe { avx2::tile(self, c, e) },
            #[cfg(target_arch = "aarch64")]
            GemmKernel::Neon => unsafe { neon::tile(self, c, e) },
            // SAFETY: forwarded from this function's contract.
            _ => unsafe { self.portable(c, e) },
        }
    }

    /// A tile on the portable kernel (a kernel this build has no code for: never chosen, since
    /// [`GemmKernel::is_available`] is false for it): [`portable_block`] on the tile alone.
    ///
    /// # Safety
    /// As [`Tile::run`].
    unsafe fn portable(&self, c: *mut f32, e: Option<&GemmEpilogue<'_>>) {
        let mut acc = [[0.0f32; NR]; MR];
        let (rsa, csa) = if self.col_major { (1, self.lda) } else { (self.lda, 1) };
        if self.rows > 0 && self.kc > 0 {
            // SAFETY: `A` holds `rows <= MR` rows of `kc` (checked by the caller's `check`),
            // the panel block `kc` rows of `NR`, and `acc` `MR x NR`.
            unsafe {
                matrixmultiply::sgemm(
                    self.rows,
                    self.kc,
                    self.cols,
                    1.0,
                    self.a.as_ptr(),
                    rsa as isize,
                    csa as isize,
                    self.b.as_ptr(),
                    NR as isize,
                    1,
                    0.0,
                    acc.as_mut_ptr().cast::<f32>(),
                    NR as isize,
                    1,
                )
            };
        }
        // SAFETY: forwarded.
        unsafe { self.store_portable(&acc[..self.rows], c, e) };
    }

    /// Applies the epilogue to `acc` and writes the tile.
    ///
    /// # Safety
    /// As [`Tile::run`].
    unsafe fn store_portable(&self, acc: &[[f32; NR]], c: *mut f32, e: Option<&GemmEpilogue<'_>>) {
        for (r, row) in acc.iter().enumerate().take(self.rows) {
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
                    v = e.rectifier.apply(v);
                }
                unsafe { *out = v };
            }
        }
    }
}

/// One stretch of `K` for a micro-tile of a convolution computed without im2col: `rows` rows of
/// `A` read from `source[a..]`, `lda` apart, `kc` deep, multiplying rows `b_row..b_row + kc` of
/// the packed panel. For a stride-1 3x3 convolution each kernel tap is one segment whose rows
/// are consecutive input pixels (`lda` = channels).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Segment {
    /// Offset of row 0 in its source.
    pub a: usize,
    /// Distance between rows.
    pub lda: usize,
    /// First row of `B` it multiplies.
    pub b_row: usize,
    /// Depth.
    pub kc: usize,
    /// Read from the gather buffer (edge taps with padding) instead of the input.
    pub gathered: bool,
}

/// `C[rows, panel] = epilogue(sum over segments of A_seg B[b_row.., panel])` for one micro-tile
/// of `rows <= MR` output rows starting at `c_off`; `K` segments absent from `segs` count as
/// zero (taps entirely in the padding).
///
/// # Safety
/// `c` must be valid for `c_len` floats, and no other thread may access the tile (`rows` rows
/// `ldc` apart, the panel's columns at `c_off`) meanwhile. The tile is checked to lie within
/// `c_len`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_segments(
    input: &[f32],
    gathered: &[f32],
    segs: &[Segment],
    rows: usize,
    b: &PackedB,
    panel: usize,
    c: *mut f32,
    c_len: usize,
    c_off: usize,
    ldc: usize,
    e: &GemmEpilogue<'_>,
) -> Result<()> {
    if panel >= b.panels() || rows == 0 || rows > MR || ldc < b.n {
        return Err(Error::shape(
            "gemm_segments",
            format!("a panel below {}, 1..={MR} rows, ld >= {}", b.panels(), b.n),
            format!("panel {panel}, {rows} rows, ld {ldc}"),
        ));
    }
    let cols = NR.min(b.n - panel * NR);
    let end = c_off + (rows - 1) * ldc + cols;
    if end > c_len
        || e.residual.is_some_and(|r| r.len() < end)
        || e.bias.is_some_and(|v| v.len() < b.n)
        || e.scale.is_some_and(|v| v.len() < b.n)
    {
        return Err(Error::shape(
            "gemm_segments",
            format!("an output tile ending at {end}"),
            format!("C of {c_len} elements"),
        ));
    }
    for s in segs {
        let src = if s.gathered { gathered.len() } else { input.len() };
        if s.b_row + s.kc > b.k || (rows - 1) * s.lda + s.a + s.kc > src {
            return Err(Error::shape(
                "gemm_segments",
                format!("segments inside A ({src}) and B ({} rows), at most {MR} rows", b.k),
                format!("{s:?} with {rows} rows"),
            ));
        }
    }
    let seg = SegTile {
        input,
        gathered,
        segs,
        rows,
        b: b.panel(panel),
        c_off,
        ldc,
        cols,
        col0: panel * NR,
    };
    // SAFETY (SIMD kernels): their CPU features are present; the segments were checked above to
    // lie inside their sources and `B`, and the caller guarantees the output tile.
    match gemm_kernel() {
        #[cfg(target_arch = "x86_64")]
        GemmKernel::Avx512 => unsafe { avx512::segments(&seg, c, e) },
        #[cfg(target_arch = "x86_64")]
        GemmKernel::Avx2Fma => unsafe { avx2::segments(&seg, c, e) },
        #[cfg(target_arch = "aarch64")]
        GemmKernel::Neon => unsafe { neon::segments(&seg, c, e) },
        // SAFETY: as above.
        _ => unsafe { seg.portable(c, e) },
    }
    Ok(())
}

struct SegTile<'a> {
    input: &'a [f32],
    gathered: &'a [f32],
    segs: &'a [Segment],
    rows: usize,
    b: &'a [f32],
    c_off: usize,
    ldc: usize,
    cols: usize,
    col0: usize,
}

impl SegTile<'_> {
    /// # Safety
    /// As [`gemm_segments`].
    unsafe fn portable(&self, c: *mut f32, e: &GemmEpilogue<'_>) {
        let mut acc = [[0.0f32; NR]; MR];
        for s in self.segs {
            let src = if s.gathered { self.gathered } else { self.input };
            if s.kc == 0 {
                continue;
            }
            // SAFETY: `gemm_segments` checked that the segment's rows lie inside `src` and its
            // `B` rows inside the panel; `acc` holds `MR >= rows` rows of `NR`. Each segment
            // adds to `acc` (beta 1) in the segments' order.
            unsafe {
                matrixmultiply::sgemm(
                    self.rows,
                    s.kc,
                    self.cols,
                    1.0,
                    src.as_ptr().add(s.a),
                    s.lda as isize,
                    1,
                    self.b.as_ptr().add(s.b_row * NR),
                    NR as isize,
                    1,
                    1.0,
                    acc.as_mut_ptr().cast::<f32>(),
                    NR as isize,
                    1,
                )
            };
        }
        let tile = Tile {
            a: &[],
            lda: 0,
            col_major: false,
            b: &[],
            kc: 0,
            c_off: self.c_off,
            ldc: self.ldc,
            rows: self.rows,
            cols: self.cols,
            first: true,
            col0: self.col0,
        };
        // SAFETY: forwarded.
        unsafe { tile.store_portable(&acc[..self.rows], c, Some(e)) };
    }
}

/// Where a micro-kernel's outputs go and what happens to them on the way (the SIMD kernels'
/// stores).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
struct Store<'a, 'e> {
    c: *mut f32,
    c_off: usize,
    ldc: usize,
    cols: usize,
    col0: usize,
    first: bool,
    e: Option<&'a GemmEpilogue<'e>>,
}

/// Rows and columns of the sub-tiles the AVX2 and NEON kernels split each `MR x NR` tile into.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const SUB_ROWS: usize = 6;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const SUB_COLS: usize = 16;

/// The sub-tiles of a `rows x cols` tile: `(first row, rows, first column)`, the rows in
/// near-equal sub-tiles of at most [`SUB_ROWS`] (7 rows: 4 + 3, not 6 + 1, whose one-row pass
/// waits on its two accumulators' FMA latency; a 7-pixel output row is every micro-tile of
/// ResNet50's last stage). Each output is the same sum in the same order however the rows are
/// grouped.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn sub_tiles(rows: usize, cols: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    let n = rows.div_ceil(SUB_ROWS);
    let (base, extra) = (rows.checked_div(n).unwrap_or(0), rows.checked_rem(n).unwrap_or(0));
    let first_row = move |q: usize| q * base + q.min(extra);
    (0..cols.div_ceil(SUB_COLS)).flat_map(move |h| (0..n).map(move |q| (first_row(q), base + usize::from(q < extra), h * SUB_COLS)))
}

/// `f::<R, ...>(args)` for a sub-tile of `rows` (1 to 6) rows: `R` a constant, so the
/// accumulators stay in registers.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! by_sub_tile_rows {
    ($rows:expr, $f:ident $(::<$col:literal>)?, $($arg:expr),*) => {
        match $rows {
            6 => $f::<6 $(, $col)?>($($arg),*),
            5 => $f::<5 $(, $col)?>($($arg),*),
            4 => $f::<4 $(, $col)?>($($arg),*),
            3 => $f::<3 $(, $col)?>($($arg),*),
            2 => $f::<2 $(, $col)?>($($arg),*),
            _ => $f::<1 $(, $col)?>($($arg),*),
        }
    };
}

/// `tile` and `segments` of a kernel of 6 x 16 sub-tiles: each sub-tile runs the module's
/// `kernel::<R, COL_MAJOR>` or `seg_kernel::<R>`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! sub_tile_entry_points {
    () => {
        pub(super) unsafe fn tile(t: &Tile<'_>, c: *mut f32, e: Option<&GemmEpilogue<'_>>) {
            for (r0, rows, c0) in super::sub_tiles(t.rows, t.cols) {
                if t.col_major {
                    by_sub_tile_rows!(rows, kernel::<true>, t, c, e, r0, c0)
                } else {
                    by_sub_tile_rows!(rows, kernel::<false>, t, c, e, r0, c0)
                }
            }
        }

        /// A tile whose segments run deeper than [`SEG_CHUNK`](super::SEG_CHUNK) goes chunk by
        /// chunk of `K`, every sub-tile through each chunk before the next, its accumulators
        /// kept in a buffer between chunks (stored and reloaded exactly: the same sums in the
        /// same order, so the same bits).
        pub(super) unsafe fn segments(t: &SegTile<'_>, c: *mut f32, e: &GemmEpilogue<'_>) {
            if t.segs.iter().map(|s| s.kc).sum::<usize>() <= super::SEG_CHUNK {
                for (r0, rows, c0) in super::sub_tiles(t.rows, t.cols) {
                    by_sub_tile_rows!(rows, seg_kernel, t, c, e, r0, c0)
                }
                return;
            }
            let mut acc = [0.0f32; super::MR * super::NR];
            super::seg_chunks(t.segs, |parts| {
                for (r0, rows, c0) in super::sub_tiles(t.rows, t.cols) {
                    by_sub_tile_rows!(rows, seg_chunk, t, parts, &mut acc, r0, c0)
                }
            });
            for (r0, rows, c0) in super::sub_tiles(t.rows, t.cols) {
                by_sub_tile_rows!(rows, seg_finish, t, &acc, c, e, r0, c0)
            }
        }

        /// [`segments`] with every sub-tile through the whole depth at once (no chunks).
        #[cfg(test)]
        pub(super) unsafe fn segments_unchunked(t: &SegTile<'_>, c: *mut f32, e: &GemmEpilogue<'_>) {
            for (r0, rows, c0) in super::sub_tiles(t.rows, t.cols) {
                by_sub_tile_rows!(rows, seg_kernel, t, c, e, r0, c0)
            }
        }
    };
}

/// The deepest stretch of `K` the 6 x 16 sub-tile kernels run before moving to the tile's next
/// sub-tile: its `B` rows (128 x 16 floats, 8 KiB) and the tile's rows of `A` (12 x 128, 6 KiB)
/// stay in L1 while every sub-tile reads them. Without it each sub-tile streamed the tile's
/// whole panel (ResNet50's last-stage 3x3: 4608 x 32 floats, 576 KiB) from L2 on its own.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const SEG_CHUNK: usize = 128;

/// Most pieces of segments in one chunk.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const SEG_PARTS: usize = 16;

/// Depths `p0..p1` of segment `seg`: one piece of a chunk of `K`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct SegPart {
    seg: usize,
    p0: usize,
    p1: usize,
}

/// Calls `f` with the pieces of each chunk of `segs`' `K` in order: chunks of [`SEG_CHUNK`]
/// deep (a segment cut where a chunk ends), or fewer when [`SEG_PARTS`] pieces fill first.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn seg_chunks(segs: &[Segment], mut f: impl FnMut(&[SegPart])) {
    let mut parts = [SegPart::default(); SEG_PARTS];
    let (mut n, mut depth) = (0, 0);
    for (seg, s) in segs.iter().enumerate() {
        let mut p = 0;
        while p < s.kc {
            let take = (SEG_CHUNK - depth).min(s.kc - p);
            parts[n] = SegPart { seg, p0: p, p1: p + take };
            (n, depth, p) = (n + 1, depth + take, p + take);
            if depth == SEG_CHUNK || n == SEG_PARTS {
                f(&parts[..n]);
                (n, depth) = (0, 0);
            }
        }
    }
    if n > 0 {
        f(&parts[..n]);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{GemmEpilogue, SegTile, Store, Tile, MR};

    macro_rules! by_rows {
        ($rows:expr, $f:ident $(::<$($c:literal),+>)?, $($arg:expr),*) => {
            match $rows {
                12 => $f::<12 $($(, $c)+)?>($($arg),*),
                11 => $f::<11 $($(, $c)+)?>($($arg),*),
                10 => $f::<10 $($(, $c)+)?>($($arg),*),
                9 => $f::<9 $($(, $c)+)?>($($arg),*),
                8 => $f::<8 $($(, $c)+)?>($($arg),*),
                7 => $f::<7 $($(, $c)+)?>($($arg),*),
                6 => $f::<6 $($(, $c)+)?>($($arg),*),
                5 => $f::<5 $($(, $c)+)?>($($arg),*),
                4 => $f::<4 $($(, $c)+)?>($($arg),*),
                3 => $f::<3 $($(, $c)+)?>($($arg),*),
                2 => $f::<2 $($(, $c)+)?>($($arg),*),
                _ => $f::<1 $($(, $c)+)?>($($arg),*),
            }
        };
    }

    /// A tile of at most 16 columns (a 16-channel layer, or a panel's last columns) runs the
    /// half-width kernel: one vector a row, the other half's FMAs (all on zero padding) skipped.
    pub(super) unsafe fn tile(t: &Tile<'_>, c: *mut f32, e: Option<&GemmEpilogue<'_>>) {
        match (t.col_major, t.cols <= 16) {
            (true, true) => by_rows!(t.rows, kernel::<true, true>, t, c, e),
            (true, false) => by_rows!(t.rows, kernel::<true, false>, t, c, e),
            (false, true) => by_rows!(t.rows, kernel::<false, true>, t, c, e),
            (false, false) => by_rows!(t.rows, kernel::<false, false>, t, c, e),
        }
    }

    pub(super) unsafe fn segments(t: &SegTile<'_>, c: *mut f32, e: &GemmEpilogue<'_>) {
        if t.cols <= 16 {
            by_rows!(t.rows, seg_kernel::<true>, t, c, e)
        } else {
            by_rows!(t.rows, seg_kernel::<false>, t, c, e)
        }
    }

    /// Columns `col0..col0 + 32` of a per-column vector (masked), or `default` everywhere.
    /// (Always inlined into the AVX-512 micro-kernels, like [`store`].)
    #[inline(always)]
    unsafe fn load2(v: Option<&[f32]>, default: f32, m0: __mmask16, m1: __mmask16, col0: usize) -> (__m512, __m512) {
        match v {
            Some(v) => (
                _mm512_maskz_loadu_ps(m0, v.as_ptr().add(col0)),
                _mm512_maskz_loadu_ps(m1, v.as_ptr().wrapping_add(col0 + 16)),
            ),
            None => (_mm512_set1_ps(default), _mm512_set1_ps(default)),
        }
    }

    /// Writes `R` rows of accumulators: adds the old `C` unless `first`, then the epilogue.
    ///
    /// Always inlined into the micro-kernels (AVX-512 functions themselves, so the intrinsics
    /// inline there too): called out of line it passed the accumulators through memory, which
    /// measured 3% of a ResNet50 forward pass.
    #[inline(always)]
    unsafe fn store<const R: usize>(acc0: &[__m512; R], acc1: &[__m512; R], s: &Store<'_, '_>) {
        let m0: __mmask16 = if s.cols >= 16 { 0xFFFF } else { ((1u32 << s.cols) - 1) as u16 };
        let m1: __mmask16 = if s.cols >= 32 {
            0xFFFF
        } else if s.cols > 16 {
            ((1u32 << (s.cols - 16)) - 1) as u16
        } else {
            0
        };
        let cp = s.c;
        let (bias0, bias1) = load2(s.e.and_then(|e| e.bias), 0.0, m0, m1, s.col0);
        let (scale0, scale1) = load2(s.e.and_then(|e| e.scale), 1.0, m0, m1, s.col0);
        let scaled = s.e.is_some_and(|e| e.scale.is_some());
        let zero = _mm512_setzero_ps();
        let upper = _mm512_set1_ps(s.e.and_then(|e| e.rectifier.upper()).unwrap_or(0.0));
        for r in 0..R {
            let at = s.c_off + r * s.ldc;
            let (mut v0, mut v1) = (acc0[r], acc1[r]);
            if !s.first {
                v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, cp.add(at)));
                v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, cp.wrapping_add(at + 16)));
            }
            if let Some(e) = s.e {
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
                if !e.rectifier.is_identity() {
                    v0 = _mm512_min_ps(_mm512_max_ps(v0, zero), upper);
                    v1 = _mm512_min_ps(_mm512_max_ps(v1, zero), upper);
                }
            }
            _mm512_mask_storeu_ps(cp.add(at), m0, v0);
            _mm512_mask_storeu_ps(cp.wrapping_add(at + 16), m1, v1);
        }
    }

    #[target_feature(enable = "avx512f")]
    /// One tile; `COL_MAJOR`: `A` is stored column by column; `HALF`: only the first 16
    /// columns (the other accumulators stay zero and are not stored). Each variant does the same
    /// products in the same order.
    unsafe fn kernel<const R: usize, const COL_MAJOR: bool, const HALF: bool>(t: &Tile<'_>, cp: *mut f32, e: Option<&GemmEpilogue<'_>>) {
        const { assert!(R <= MR) };
        // Two separate accumulator arrays: with one `[[__m512; 2]; R]` LLVM split the loop in
        // two and ran at a third of the speed. The loop is written out again in `seg_kernel`:
        // sharing it as an inline function measured 5% slower end to end (35.7 -> 37.5 ms).
        let mut acc0 = [_mm512_setzero_ps(); R];
        let mut acc1 = [_mm512_setzero_ps(); R];
        let a = t.a.as_ptr();
        let b = t.b.as_ptr();
        for p in 0..t.kc {
            let b0 = _mm512_loadu_ps(b.add(p * 32));
            let b1 = if HALF {
                _mm512_setzero_ps()
            } else {
                _mm512_loadu_ps(b.add(p * 32 + 16))
            };
            for r in 0..R {
                let at = if COL_MAJOR { p * t.lda + r } else { r * t.lda + p };
                let av = _mm512_set1_ps(*a.add(at));
                acc0[r] = _mm512_fmadd_ps(av, b0, acc0[r]);
                if !HALF {
                    acc1[r] = _mm512_fmadd_ps(av, b1, acc1[r]);
                }
            }
        }
        store(
            &acc0,
            &acc1,
            &Store {
                c: cp,
                c_off: t.c_off,
                ldc: t.ldc,
                cols: t.cols,
                col0: t.col0,
                first: t.first,
                e,
            },
        );
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn seg_kernel<const R: usize, const HALF: bool>(t: &SegTile<'_>, cp: *mut f32, e: &GemmEpilogue<'_>) {
        const { assert!(R <= MR) };
        let mut acc0 = [_mm512_setzero_ps(); R];
        let mut acc1 = [_mm512_setzero_ps(); R];
        for s in t.segs {
            let a = if s.gathered { t.gathered.as_ptr() } else { t.input.as_ptr() }.add(s.a);
            let b = t.b.as_ptr().add(s.b_row * 32);
            let lda = s.lda;
            for p in 0..s.kc {
                let b0 = _mm512_loadu_ps(b.add(p * 32));
                let b1 = if HALF {
                    _mm512_setzero_ps()
                } else {
                    _mm512_loadu_ps(b.add(p * 32 + 16))
                };
                for r in 0..R {
                    let av = _mm512_set1_ps(*a.add(r * lda + p));
                    acc0[r] = _mm512_fmadd_ps(av, b0, acc0[r]);
                    if !HALF {
                        acc1[r] = _mm512_fmadd_ps(av, b1, acc1[r]);
                    }
                }
            }
        }
        store(
            &acc0,
            &acc1,
            &Store {
                c: cp,
                c_off: t.c_off,
                ldc: t.ldc,
                cols: t.cols,
                col0: t.col0,
                first: true,
                e: Some(e),
            },
        );
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! The AVX2 + FMA micro-kernel: each 12 x 32 tile as 6 x 16 sub-tiles (12 accumulators, two
    //! `B` vectors and a broadcast: 15 of the 16 vector registers), the same `K` order and the
    //! same epilogue as the AVX-512 kernel, so the same bits.

    use std::arch::x86_64::*;

    use super::{GemmEpilogue, SegPart, SegTile, Store, Tile, MR, NR, SUB_ROWS as RB};

    sub_tile_entry_points!();

    /// Lanes `< n` set.
    #[inline(always)]
    unsafe fn lanes(n: usize) -> __m256i {
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n.min(8) as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
    }

    /// Eight floats at `p`: a plain load for a full sub-tile, masked (masked-off lanes are not
    /// accessed) at the right edge. (Masked moves are slow on some cores, AMD Zen 1's
    /// `vmaskmovps` store above all, so full tiles never use them.)
    #[inline(always)]
    unsafe fn load(p: *const f32, full: bool, m: __m256i) -> __m256 {
        if full {
            _mm256_loadu_ps(p)
        } else {
            _mm256_maskload_ps(p, m)
        }
    }

    #[inline(always)]
    unsafe fn put(p: *mut f32, full: bool, m: __m256i, v: __m256) {
        if full {
            _mm256_storeu_ps(p, v)
        } else {
            _mm256_maskstore_ps(p, m, v)
        }
    }

    /// Columns `col0..col0 + 16` of a per-column vector, or `default` everywhere.
    #[inline(always)]
    unsafe fn load2(v: Option<&[f32]>, default: f32, full: bool, m0: __m256i, m1: __m256i, col0: usize) -> (__m256, __m256) {
        match v {
            Some(v) => (
                load(v.as_ptr().wrapping_add(col0), full, m0),
                load(v.as_ptr().wrapping_add(col0 + 8), full, m1),
            ),
            None => (_mm256_set1_ps(default), _mm256_set1_ps(default)),
        }
    }

    /// Writes `R` rows of accumulators: adds the old `C` unless `first`, then the epilogue (in
    /// the AVX-512 kernel's order: scale, bias, residual, rectifier).
    #[inline(always)]
    unsafe fn store<const R: usize>(acc0: &[__m256; R], acc1: &[__m256; R], s: &Store<'_, '_>) {
        let full = s.cols >= 16;
        let m0 = lanes(s.cols);
        let m1 = lanes(s.cols.saturating_sub(8));
        let cp = s.c;
        let (bias0, bias1) = load2(s.e.and_then(|e| e.bias), 0.0, full, m0, m1, s.col0);
        let (scale0, scale1) = load2(s.e.and_then(|e| e.scale), 1.0, full, m0, m1, s.col0);
        let scaled = s.e.is_some_and(|e| e.scale.is_some());
        let zero = _mm256_setzero_ps();
        let upper = _mm256_set1_ps(s.e.and_then(|e| e.rectifier.upper()).unwrap_or(0.0));
        for r in 0..R {
            let at = s.c_off + r * s.ldc;
            let (mut v0, mut v1) = (acc0[r], acc1[r]);
            if !s.first {
                v0 = _mm256_add_ps(v0, load(cp.wrapping_add(at), full, m0));
                v1 = _mm256_add_ps(v1, load(cp.wrapping_add(at + 8), full, m1));
            }
            if let Some(e) = s.e {
                if scaled {
                    v0 = _mm256_mul_ps(v0, scale0);
                    v1 = _mm256_mul_ps(v1, scale1);
                }
                v0 = _mm256_add_ps(v0, bias0);
                v1 = _mm256_add_ps(v1, bias1);
                if let Some(res) = e.residual {
                    v0 = _mm256_add_ps(v0, load(res.as_ptr().wrapping_add(at), full, m0));
                    v1 = _mm256_add_ps(v1, load(res.as_ptr().wrapping_add(at + 8), full, m1));
                }
                if !e.rectifier.is_identity() {
                    v0 = _mm256_min_ps(_mm256_max_ps(v0, zero), upper);
                    v1 = _mm256_min_ps(_mm256_max_ps(v1, zero), upper);
                }
            }
            put(cp.wrapping_add(at), full, m0, v0);
            put(cp.wrapping_add(at + 8), full, m1, v1);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    /// One sub-tile; `COL_MAJOR`: `A` is stored column by column (the same products in the
    /// same order).
    unsafe fn kernel<const R: usize, const COL_MAJOR: bool>(
        t: &Tile<'_>,
        cp: *mut f32,
        e: Option<&GemmEpilogue<'_>>,
        r0: usize,
        c0: usize,
    ) {
        const { assert!(R <= RB) };
        let mut acc0 = [_mm256_setzero_ps(); R];
        let mut acc1 = [_mm256_setzero_ps(); R];
        let a = t.a.as_ptr().add(if COL_MAJOR { r0 } else { r0 * t.lda });
        let b = t.b.as_ptr().add(c0);
        for p in 0..t.kc {
            let b0 = _mm256_loadu_ps(b.add(p * 32));
            let b1 = _mm256_loadu_ps(b.add(p * 32 + 8));
            for r in 0..R {
                let at = if COL_MAJOR { p * t.lda + r } else { r * t.lda + p };
                let av = _mm256_set1_ps(*a.add(at));
                acc0[r] = _mm256_fmadd_ps(av, b0, acc0[r]);
                acc1[r] = _mm256_fmadd_ps(av, b1, acc1[r]);
            }
        }
        store(
            &acc0,
            &acc1,
            &Store {
                c: cp,
                c_off: t.c_off + r0 * t.ldc + c0,
                ldc: t.ldc,
                cols: t.cols - c0,
                col0: t.col0 + c0,
                first: t.first,
                e,
            },
        );
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn seg_kernel<const R: usize>(t: &SegTile<'_>, cp: *mut f32, e: &GemmEpilogue<'_>, r0: usize, c0: usize) {
        const { assert!(R <= RB) };
        let mut acc0 = [_mm256_setzero_ps(); R];
        let mut acc1 = [_mm256_setzero_ps(); R];
        for s in t.segs {
            let lda = s.lda;
            let a = if s.gathered { t.gathered.as_ptr() } else { t.input.as_ptr() }.add(s.a + r0 * lda);
            let b = t.b.as_ptr().add(s.b_row * 32 + c0);
            for p in 0..s.kc {
                let b0 = _mm256_loadu_ps(b.add(p * 32));
                let b1 = _mm256_loadu_ps(b.add(p * 32 + 8));
                for r in 0..R {
                    let av = _mm256_set1_ps(*a.add(r * lda + p));
                    acc0[r] = _mm256_fmadd_ps(av, b0, acc0[r]);
                    acc1[r] = _mm256_fmadd_ps(av, b1, acc1[r]);
                }
            }
        }
        store(
            &acc0,
            &acc1,
            &Store {
                c: cp,
                c_off: t.c_off + r0 * t.ldc + c0,
                ldc: t.ldc,
                cols: t.cols - c0,
                col0: t.col0 + c0,
                first: true,
                e: Some(e),
            },
        );
    }

    /// Runs `parts` (one chunk of `K`) for one sub-tile, its accumulators loaded from and
    /// stored back to `acc` (the tile's `MR x NR`, row-major).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn seg_chunk<const R: usize>(t: &SegTile<'_>, parts: &[SegPart], acc: &mut [f32; MR * NR], r0: usize, c0: usize) {
        const { assert!(R <= RB) };
        let buf = acc.as_mut_ptr().add(r0 * NR + c0);
        let (mut acc0, mut acc1) = ([_mm256_setzero_ps(); R], [_mm256_setzero_ps(); R]);
        for r in 0..R {
            acc0[r] = _mm256_loadu_ps(buf.add(r * NR));
            acc1[r] = _mm256_loadu_ps(buf.add(r * NR + 8));
        }
        for part in parts {
            let s = &t.segs[part.seg];
            let lda = s.lda;
            let a = if s.gathered { t.gathered.as_ptr() } else { t.input.as_ptr() }.add(s.a + r0 * lda);
            let b = t.b.as_ptr().add(s.b_row * 32 + c0);
            for p in part.p0..part.p1 {
                let b0 = _mm256_loadu_ps(b.add(p * 32));
                let b1 = _mm256_loadu_ps(b.add(p * 32 + 8));
                for r in 0..R {
                    let av = _mm256_set1_ps(*a.add(r * lda + p));
                    acc0[r] = _mm256_fmadd_ps(av, b0, acc0[r]);
                    acc1[r] = _mm256_fmadd_ps(av, b1, acc1[r]);
                }
            }
        }
        for r in 0..R {
            _mm256_storeu_ps(buf.add(r * NR), acc0[r]);
            _mm256_storeu_ps(buf.add(r * NR + 8), acc1[r]);
        }
    }

    /// Writes one sub-tile's accumulators from `acc` through the epilogue.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn seg_finish<const R: usize>(t: &SegTile<'_>, acc: &[f32; MR * NR], cp: *mut f32, e: &GemmEpilogue<'_>, r0: usize, c0: usize) {
        const { assert!(R <= RB) };
        let buf = acc.as_ptr().add(r0 * NR + c0);
        let (mut acc0, mut acc1) = ([_mm256_setzero_ps(); R], [_mm256_setzero_ps(); R]);
        for r in 0..R {
            acc0[r] = _mm256_loadu_ps(buf.add(r * NR));
            acc1[r] = _mm256_loadu_ps(buf.add(r * NR + 8));
        }
        store(
            &acc0,
            &acc1,
            &Store {
                c: cp,
                c_off: t.c_off + r0 * t.ldc + c0,
                ldc: t.ldc,
                cols: t.cols - c0,
                col0: t.col0 + c0,
                first: true,
                e: Some(e),
            },
        );
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    //! The NEON micro-kernel (aarch64, where NEON is always present): each 12 x 32 tile as
    //! 6 x 16 sub-tiles (24 accumulators of four lanes, four `B` vectors and the broadcast `A`
    //! value: 29 of the 32 vector registers). Every product is a fused multiply-add (`fmla`)
    //! summed over `K` in the same order as the AVX-512 and AVX2 kernels, and the epilogue runs
    //! in the same order, so all three give the same bits.
    //!
    //! NEON has no masked loads or stores: a sub-tile narrower than 16 columns goes through a
    //! 16-float stack buffer, so nothing past the last column is read or written. (`B` panels
    //! are zero-padded to 32 columns, so their loads are always whole.)

    use std::arch::aarch64::*;

    use super::{GemmEpilogue, SegPart, SegTile, Store, Tile, MR, NR};

    use super::{SUB_COLS as CB, SUB_ROWS as RB};

    sub_tile_entry_points!();

    /// 16 floats at `p`, or its first `n < 16` through a buffer (the rest zero).
    #[inline(always)]
    unsafe fn load4(p: *const f32, n: usize) -> [float32x4_t; 4] {
        if n >= CB {
            [vld1q_f32(p), vld1q_f32(p.add(4)), vld1q_f32(p.add(8)), vld1q_f32(p.add(12))]
        } else {
            let mut buf = [0.0f32; CB];
            std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n);
            let b = buf.as_ptr();
            [vld1q_f32(b), vld1q_f32(b.add(4)), vld1q_f32(b.add(8)), vld1q_f32(b.add(12))]
        }
    }

    /// Stores 16 floats at `p`, or only the first `n < 16` through a buffer.
    #[inline(always)]
    unsafe fn store4(p: *mut f32, n: usize, v: [float32x4_t; 4]) {
        if n >= CB {
            for (i, v) in v.into_iter().enumerate() {
                vst1q_f32(p.add(4 * i), v);
            }
        } else {
            let mut buf = [0.0f32; CB];
            for (i, v) in v.into_iter().enumerate() {
                vst1q_f32(buf.as_mut_ptr().add(4 * i), v);
            }
            std::ptr::copy_nonoverlapping(buf.as_ptr(), p, n);
        }
    }

    /// Columns `col0..col0 + 16` of a per-column vector, or `default` everywhere.
    #[inline(always)]
    unsafe fn per_column(v: Option<&[f32]>, default: f32, n: usize, col0: usize) -> [float32x4_t; 4] {
        match v {
            Some(v) => load4(v.as_ptr().add(col0), n),
            None => [vdupq_n_f32(default); 4],
        }
    }

    /// Writes `R` rows of accumulators: adds the old `C` unless `first`, then the epilogue (in
    /// the AVX-512 kernel's order: scale, bias, residual, rectifier).
    #[inline(always)]
    unsafe fn store<const R: usize>(acc: &[[float32x4_t; 4]; R], s: &Store<'_, '_>) {
        let n = s.cols.min(CB);
        let bias = per_column(s.e.and_then(|e| e.bias), 0.0, n, s.col0);
        let scale = per_column(s.e.and_then(|e| e.scale), 1.0, n, s.col0);
        let scaled = s.e.is_some_and(|e| e.scale.is_some());
        let zero = vdupq_n_f32(0.0);
        let upper = vdupq_n_f32(s.e.and_then(|e| e.rectifier.upper()).unwrap_or(0.0));
        for (r, acc) in acc.iter().enumerate() {
            let at = s.c_off + r * s.ldc;
            let mut v = *acc;
            if !s.first {
                let old = load4(s.c.add(at), n);
                for q in 0..4 {
                    v[q] = vaddq_f32(v[q], old[q]);
                }
            }
            if let Some(e) = s.e {
                let res = e.residual.map(|res| load4(res.as_ptr().add(at), n));
                for q in 0..4 {
                    if scaled {
                        v[q] = vmulq_f32(v[q], scale[q]);
                    }
                    v[q] = vaddq_f32(v[q], bias[q]);
                    if let Some(res) = res {
                        v[q] = vaddq_f32(v[q], res[q]);
                    }
                    if !e.rectifier.is_identity() {
                        v[q] = vminq_f32(vmaxq_f32(v[q], zero), upper);
                    }
                }
            }
            store4(s.c.add(at), n, v);
        }
    }

    /// One sub-tile; `COL_MAJOR`: `A` is stored column by column (the same products in the
    /// same order).
    #[inline(never)]
    unsafe fn kernel<const R: usize, const COL_MAJOR: bool>(
        t: &Tile<'_>,
        cp: *mut f32,
        e: Option<&GemmEpilogue<'_>>,
        r0: usize,
        c0: usize,
    ) {
        const { assert!(R <= RB) };
        let mut acc = [[vdupq_n_f32(0.0); 4]; R];
        let a = t.a.as_ptr().add(if COL_MAJOR { r0 } else { r0 * t.lda });
        let b = t.b.as_ptr().add(c0);
        for p in 0..t.kc {
            let bp = b.add(p * 32);
            let bv = [vld1q_f32(bp), vld1q_f32(bp.add(4)), vld1q_f32(bp.add(8)), vld1q_f32(bp.add(12))];
            for (r, acc) in acc.iter_mut().enumerate() {
                let at = if COL_MAJOR { p * t.lda + r } else { r * t.lda + p };
                let av = *a.add(at);
                for q in 0..4 {
                    acc[q] = vfmaq_n_f32(acc[q], bv[q], av);
                }
            }
        }
        store(
            &acc,
            &Store {
                c: cp,
                c_off: t.c_off + r0 * t.ldc + c0,
                ldc: t.ldc,
                cols: t.cols - c0,
                col0: t.col0 + c0,
                first: t.first,
                e,
            },
        );
    }

    #[inline(never)]
    unsafe fn seg_kernel<const R: usize>(t: &SegTile<'_>, cp: *mut f32, e: &GemmEpilogue<'_>, r0: usize, c0: usize) {
        const { assert!(R <= RB) };
        let mut acc = [[vdupq_n_f32(0.0); 4]; R];
        for s in t.segs {
            let lda = s.lda;
            let a = if s.gathered { t.gathered.as_ptr() } else { t.input.as_ptr() }.add(s.a + r0 * lda);
            let b = t.b.as_ptr().add(s.b_row * 32 + c0);
            for p in 0..s.kc {
                let bp = b.add(p * 32);
                let bv = [vld1q_f32(bp), vld1q_f32(bp.add(4)), vld1q_f32(bp.add(8)), vld1q_f32(bp.add(12))];
                for (r, acc) in acc.iter_mut().enumerate() {
                    let av = *a.add(r * lda + p);
                    for q in 0..4 {
                        acc[q] = vfmaq_n_f32(acc[q], bv[q], av);
                    }
                }
            }
        }
        store(
            &acc,
            &Store {
                c: cp,
                c_off: t.c_off + r0 * t.ldc + c0,
                ldc: t.ldc,
                cols: t.cols - c0,
                col0: t.col0 + c0,
                first: true,
                e: Some(e),
            },
        );
    }

    /// Runs `parts` (one chunk of `K`) for one sub-tile, its accumulators loaded from and
    /// stored back to `acc` (the tile's `MR x NR`, row-major).
    #[inline(never)]
    unsafe fn seg_chunk<const R: usize>(t: &SegTile<'_>, parts: &[SegPart], acc: &mut [f32; MR * NR], r0: usize, c0: usize) {
        const { assert!(R <= RB) };
        let buf = acc.as_mut_ptr().add(r0 * NR + c0);
        let mut regs = [[vdupq_n_f32(0.0); 4]; R];
        for (r, v) in regs.iter_mut().enumerate() {
            for (q, v) in v.iter_mut().enumerate() {
                *v = vld1q_f32(buf.add(r * NR + 4 * q));
            }
        }
        for part in parts {
            let s = &t.segs[part.seg];
            let lda = s.lda;
            let a = if s.gathered { t.gathered.as_ptr() } else { t.input.as_ptr() }.add(s.a + r0 * lda);
            let b = t.b.as_ptr().add(s.b_row * 32 + c0);
            for p in part.p0..part.p1 {
                let bp = b.add(p * 32);
                let bv = [vld1q_f32(bp), vld1q_f32(bp.add(4)), vld1q_f32(bp.add(8)), vld1q_f32(bp.add(12))];
                for (r, acc) in regs.iter_mut().enumerate() {
                    let av = *a.add(r * lda + p);
                    for q in 0..4 {
                        acc[q] = vfmaq_n_f32(acc[q], bv[q], av);
                    }
                }
            }
        }
        for (r, v) in regs.iter().enumerate() {
            for (q, v) in v.iter().enumerate() {
                vst1q_f32(buf.add(r * NR + 4 * q), *v);
            }
        }
    }

    /// Writes one sub-tile's accumulators from `acc` through the epilogue.
    #[inline(never)]
    unsafe fn seg_finish<const R: usize>(t: &SegTile<'_>, acc: &[f32; MR * NR], cp: *mut f32, e: &GemmEpilogue<'_>, r0: usize, c0: usize) {
        const { assert!(R <= RB) };
        let buf = acc.as_ptr().add(r0 * NR + c0);
        let mut regs = [[vdupq_n_f32(0.0); 4]; R];
        for (r, v) in regs.iter_mut().enumerate() {
            for (q, v) in v.iter_mut().enumerate() {
                *v = vld1q_f32(buf.add(r * NR + 4 * q));
            }
        }
        store(
            &regs,
            &Store {
                c: cp,
                c_off: t.c_off + r0 * t.ldc + c0,
                ldc: t.ldc,
                cols: t.cols - c0,
                col0: t.col0 + c0,
                first: true,
                e: Some(e),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[test]
    fn sub_tiles_cover_the_tile_once_in_near_equal_rows() {
        for rows in 0..=MR {
            for cols in 1..=NR {
                let mut seen = vec![0u8; rows * cols.div_ceil(SUB_COLS)];
                let mut heights = Vec::new();
                for (r0, r, c0) in sub_tiles(rows, cols) {
                    assert!((1..=SUB_ROWS).contains(&r), "{rows} x {cols}: a sub-tile of {r} rows");
                    assert_eq!(c0 % SUB_COLS, 0);
                    for row in r0..r0 + r {
                        seen[row * cols.div_ceil(SUB_COLS) + c0 / SUB_COLS] += 1;
                    }
                    heights.push(r);
                }
                assert!(seen.iter().all(|&n| n == 1), "{rows} x {cols}: {seen:?}");
                let (lo, hi) = (heights.iter().min(), heights.iter().max());
                assert!(hi.zip(lo).is_none_or(|(h, l)| h - l <= 1), "{rows} rows: {heights:?}");
            }
        }
        let rows_of_7: Vec<usize> = sub_tiles(7, 16).map(|(_, r, _)| r).collect();
        assert_eq!(rows_of_7, [4, 3]);
    }

    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[test]
    fn seg_chunks_cut_the_depth_in_order() {
        let seg = |kc| Segment {
            a: 0,
            lda: kc,
            b_row: 0,
            kc,
            gathered: false,
        };
        for kcs in [vec![0], vec![5], vec![128], vec![300], vec![64; 9], vec![1; 40], vec![0, 200, 0, 77, 129]] {
            let segs: Vec<Segment> = kcs.iter().map(|&k| seg(k)).collect();
            let mut next = (0, 0);
            seg_chunks(&segs, |parts| {
                assert!(!parts.is_empty() && parts.len() <= SEG_PARTS);
                assert!(parts.iter().map(|p| p.p1 - p.p0).sum::<usize>() <= SEG_CHUNK);
                for p in parts {
                    // Every piece starts where the last ended (skipping empty segments).
                    while next.0 < p.seg {
                        assert_eq!(next.1, segs[next.0].kc, "{kcs:?}: segment {} cut short", next.0);
                        next = (next.0 + 1, 0);
                    }
                    assert_eq!((p.seg, p.p0), next, "{kcs:?}");
                    assert!(p.p0 < p.p1 && p.p1 <= segs[p.seg].kc);
                    next = (p.seg, p.p1);
                }
            });
            let depth: usize = kcs.iter().sum();
            let done: usize = kcs[..next.0].iter().sum::<usize>() + next.1;
            assert_eq!(done, depth, "{kcs:?}");
        }
    }

    /// Tiles deeper than `SEG_CHUNK` go chunk by chunk through the 6 x 16 sub-tile kernels:
    /// the same bits as the whole depth at once, and as the AVX-512 kernel.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[test]
    fn chunked_segments_give_the_whole_depths_bits() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        for case in 0..200 {
            let (rows, n) = (1 + next(MR), 1 + next(2 * NR));
            let segs: Vec<Segment> = (0..1 + next(6))
                .scan(0, |b_row, _| {
                    let kc = next(if case % 4 == 0 { 40 } else { 300 });
                    let lda = kc + next(3);
                    let s = Segment {
                        a: next(7),
                        lda,
                        b_row: *b_row,
                        kc,
                        gathered: next(2) == 1,
                    };
                    *b_row += kc;
                    Some(s)
                })
                .collect();
            let k: usize = segs.iter().map(|s| s.kc).sum();
            let src_len = 7 + MR * 303;
            let mut data = |len: usize| (0..len).map(|_| next(2001) as f32 / 1000.0 - 1.0).collect::<Vec<f32>>();
            let (input, gathered) = (data(src_len), data(src_len));
            let b = PackedB::pack(&data(k * n), k, n, n).unwrap();
            let (bias, scale, residual) = (data(n), data(n), data(rows * n));
            let e = GemmEpilogue {
                bias: Some(&bias),
                scale: (case % 3 == 0).then_some(&scale[..]),
                residual: (case % 2 == 0).then_some(&residual[..]),
                rectifier: Rectifier::Relu,
            };
            let panel = next(b.panels());
            let cols = NR.min(n - panel * NR);
            let tile = SegTile {
                input: &input,
                gathered: &gathered,
                segs: &segs,
                rows,
                b: b.panel(panel),
                c_off: panel * NR,
                ldc: n,
                cols,
                col0: panel * NR,
            };
            let run = |f: unsafe fn(&SegTile<'_>, *mut f32, &GemmEpilogue<'_>)| {
                let mut c = vec![f32::NAN; rows * n];
                // SAFETY: the segments lie inside `input`, `gathered` and `B`, and `c` holds the
                // tile (rows x the panel's columns at `c_off`, leading dimension `n`).
                unsafe { f(&tile, c.as_mut_ptr(), &e) };
                c
            };
            let mut outputs = Vec::new();
            #[cfg(target_arch = "x86_64")]
            if GemmKernel::Avx2Fma.is_available() {
                outputs.push(("avx2 chunked", run(avx2::segments)));
                outputs.push(("avx2 whole", run(avx2::segments_unchunked)));
            }
            #[cfg(target_arch = "x86_64")]
            if GemmKernel::Avx512.is_available() {
                outputs.push(("avx512", run(avx512::segments)));
            }
            #[cfg(target_arch = "aarch64")]
            {
                outputs.push(("neon chunked", run(neon::segments)));
                outputs.push(("neon whole", run(neon::segments_unchunked)));
            }
            for (name, c) in &outputs[1.min(outputs.len())..] {
                let same = c.iter().zip(&outputs[0].1).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "case {case} ({rows} rows, depth {k}): {name} differs from {}", outputs[0].0);
            }
        }
    }

    #[test]
    fn cache_sizes_parse_as_linux_writes_them() {
        assert_eq!(parse_cache_size("48K"), Some(48 << 10));
        assert_eq!(parse_cache_size("2M"), Some(2 << 20));
        assert_eq!(parse_cache_size("65536"), Some(65536));
        assert_eq!(parse_cache_size("0K"), None);
        assert_eq!(parse_cache_size("big"), None);
        assert_eq!(parse_cache_size("99999999999999999999K"), None);
    }

    #[test]
    fn blocking_follows_the_caches() {
        // Zen 4/5: 32/48 KiB L1d, 1 MiB L2; Intel server cores: 48 KiB, 2 MiB; Apple M1: 128 KiB.
        let zen5 = Blocking::for_caches(&CacheSizes {
            l1d: 48 << 10,
            l2: 1 << 20,
        });
        assert_eq!(
            zen5,
            Blocking {
                kc: 512,
                rows_outer_max_b_bytes: 256 << 10
            }
        );
        let small = Blocking::for_caches(&CacheSizes {
            l1d: 32 << 10,
            l2: 512 << 10,
        });
        assert_eq!(
            small,
            Blocking {
                kc: 320,
                rows_outer_max_b_bytes: 128 << 10
            }
        );
        let m1 = Blocking::for_caches(&CacheSizes {
            l1d: 128 << 10,
            l2: 12 << 20,
        });
        assert_eq!(m1.kc, KC);
        let tiny = Blocking::for_caches(&CacheSizes { l1d: 1 << 10, l2: 1 << 10 });
        assert_eq!(tiny.kc, 128);
        let detected = CacheSizes::detect();
        assert!(detected.l1d >= 4 << 10 && detected.l2 >= detected.l1d, "{detected:?}");
        assert!(blocking().kc.is_multiple_of(32) && (128..=KC).contains(&blocking().kc));
    }
}
