//! Winograd convolution for stride-1, undilated 3x3 kernels (Lavin & Gray, 2015):
//! F(2x2, 3x3) and F(4x4, 3x3).
//!
//! The output is cut into `m x m` tiles (`m` = 2 or 4). Each tile reads a `t x t` input patch
//! `d` (`t = m + 2`), and `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`: the element-wise product, summed
//! over input channels, becomes `t²` independent GEMMs (one per position of the transformed
//! tile) of `tiles x in_channels` by `in_channels x out_channels`. Per output pixel and channel
//! pair that is `t² / m²` multiplies instead of 9: 4 for F(2x2, 3x3) (2.25 times fewer) and
//! 2.25 for F(4x4, 3x3) (4 times fewer), for the price of the two transforms (a few additions
//! per value) and of weights `t² / 9` times larger.
//!
//! F(2x2, 3x3)'s transforms hold only 0, ±1 and ±1/2, so its rounding stays close to the direct
//! convolution's; F(4x4, 3x3)'s reach 8 and 1/24 and round a little more. `tests/kernels_prop.rs`
//! holds both to the GEMM path's bound against [`reference::conv2d`](super::reference::conv2d),
//! and the ResNet parity tests hold the whole network to the Keras and PyTorch tolerances.
//!
//! Layouts: a block of `count` tiles is transformed into `v[(p * count + i) * in_channels + c]`
//! (position `p` of tile `i`, channel `c`), multiplied into
//! `m[(p * count + i) * out_channels + o]`, and transformed back into the NHWC output, where
//! the epilogue (scale, bias, residual, ReLU: the same as the GEMM's) is applied.

use std::ops::Range;

#[cfg(target_arch = "x86_64")]
use super::packed_gemm::GemmKernel;
use super::packed_gemm::{gemm_kernel, gemm_packed, GemmEpilogue, PackedB, NR};
use super::ConvGeometry;
use crate::error::{Error, Result};

/// Channels a transform handles per step (one AVX-512 vector).
const LANES: usize = 16;

/// Largest transformed tile side (F(4x4, 3x3)).
const MAX_T: usize = 6;

/// Which Winograd algorithm: the size of the output tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WinogradTile {
    /// F(2x2, 3x3): 2x2 output tiles from 4x4 input patches, 16 GEMMs.
    F2x2,
    /// F(4x4, 3x3): 4x4 output tiles from 6x6 input patches, 36 GEMMs.
    F4x4,
}

impl WinogradTile {
    /// Output tile side `m`.
    pub const fn output(self) -> usize {
        match self {
            WinogradTile::F2x2 => 2,
            WinogradTile::F4x4 => 4,
        }
    }

    /// Input patch side `t = m + 2`.
    pub const fn input(self) -> usize {
        self.output() + 2
    }

    /// Positions of a transformed tile, `t²`: the number of GEMMs.
    pub const fn positions(self) -> usize {
        self.input() * self.input()
    }

    /// The output tiles of a convolution: `(rows, columns)` per image.
    pub fn grid(self, g: &ConvGeometry) -> [usize; 2] {
        [g.out_hw[0].div_ceil(self.output()), g.out_hw[1].div_ceil(self.output())]
    }

    /// Output tiles over the whole batch.
    pub fn tile_count(self, g: &ConvGeometry) -> usize {
        let [th, tw] = self.grid(g);
        g.batch * th * tw
    }

    /// Whether its tiles cover at most 1/8 more pixels than the output has (the work on the
    /// overhang is wasted).
    fn fits(self, g: &ConvGeometry) -> bool {
        let [th, tw] = self.grid(g);
        let m = self.output();
        8 * th * tw * m * m <= 9 * g.out_hw[0] * g.out_hw[1]
    }

    /// The algorithm the compiled model uses for a convolution, if any: F(2x2, 3x3) for a
    /// stride-1, undilated 3x3 window ([`supports`]) whose output its tiles fit (they cover at
    /// most 1/8 more pixels than the output has).
    ///
    /// Measured on ResNet50 (`examples/bench_resnet50.rs --profile`, one thread): its 7x7 stage
    /// computes 64 outputs for 49 with 2x2 tiles and still ran 0.5 ms faster per image, but its
    /// transformed weights, 16/9 the size, add 21 MiB, so that stage stays on the direct GEMM.
    /// F(4x4, 3x3) on the 56x56 and 28x28 stages saved only 0.4 ms more per image and moved the
    /// Keras reference's probabilities by 1.03e-5 (F(2x2, 3x3): 7.5e-6), past the 1e-5
    /// tolerance, so it is never chosen; it stays available to call directly.
    pub fn choose(g: &ConvGeometry) -> Option<WinogradTile> {
        Some(WinogradTile::F2x2).filter(|t| supports(g) && t.fits(g))
    }
}

/// Whether a convolution's geometry is one Winograd computes: a 3x3 window, stride 1,
/// dilation 1 (any padding).
pub fn supports(g: &ConvGeometry) -> bool {
    g.window.kernel == [3, 3] && g.window.stride == [1, 1] && g.window.dilation == [1, 1]
}

/// The three matrices of one algorithm, as 1-D transforms over `LANES`-wide channel vectors.
trait Transform {
    const TILE: WinogradTile;
    /// `G` (`t x 3`; rows past `t` unused).
    const G: [[f64; 3]; MAX_T];
    /// `Bᵀ x` for one column or row `x` of `t` values.
    fn input<const W: usize>(x: &[[f32; W]; MAX_T]) -> [[f32; W]; MAX_T];
    /// `Aᵀ x` for one column or row `x` of `t` values (`m` results).
    fn output<const W: usize>(x: &[[f32; W]; MAX_T]) -> [[f32; W]; 4];
}

struct F2;
struct F4;

impl Transform for F2 {
    const TILE: WinogradTile = WinogradTile::F2x2;
    const G: [[f64; 3]; MAX_T] = [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0],
        [0.0; 3],
        [0.0; 3],
    ];

    /// `Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]`.
    #[inline(always)]
    fn input<const W: usize>(x: &[[f32; W]; MAX_T]) -> [[f32; W]; MAX_T] {
        let mut r = [[0.0; W]; MAX_T];
        for l in 0..W {
            let (d0, d1, d2, d3) = (x[0][l], x[1][l], x[2][l], x[3][l]);
            r[0][l] = d0 - d2;
            r[1][l] = d1 + d2;
            r[2][l] = d2 - d1;
            r[3][l] = d1 - d3;
        }
        r
    }

    /// `Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]]`.
    #[inline(always)]
    fn output<const W: usize>(x: &[[f32; W]; MAX_T]) -> [[f32; W]; 4] {
        let mut y = [[0.0; W]; 4];
        for l in 0..W {
            let (m0, m1, m2, m3) = (x[0][l], x[1][l], x[2][l], x[3][l]);
            y[0][l] = m0 + m1 + m2;
            y[1][l] = m1 - m2 - m3;
        }
        y
    }
}

impl Transform for F4 {
    const TILE: WinogradTile = WinogradTile::F4x4;
    const G: [[f64; 3]; MAX_T] = [
        [1.0 / 4.0, 0.0, 0.0],
        [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
        [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
        [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
        [0.0, 0.0, 1.0],
    ];

    /// `Bᵀ = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
    /// [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]`.
    #[inline(always)]
    fn input<const W: usize>(x: &[[f32; W]; MAX_T]) -> [[f32; W]; MAX_T] {
        let mut r = [[0.0; W]; MAX_T];
        for l in 0..W {
            let (d0, d1, d2, d3, d4, d5) = (x[0][l], x[1][l], x[2][l], x[3][l], x[4][l], x[5][l]);
            let (a, b) = (d4 - 4.0 * d2, d3 - 4.0 * d1);
            let (c, e) = (d4 - d2, 2.0 * (d3 - d1));
            r[0][l] = 4.0 * d0 - 5.0 * d2 + d4;
            r[1][l] = a + b;
            r[2][l] = a - b;
            r[3][l] = c + e;
            r[4][l] = c - e;
            r[5][l] = 4.0 * d1 - 5.0 * d3 + d5;
        }
        r
    }

    /// `Aᵀ = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]`.
    #[inline(always)]
    fn output<const W: usize>(x: &[[f32; W]; MAX_T]) -> [[f32; W]; 4] {
        let mut y = [[0.0; W]; 4];
        for l in 0..W {
            let (m0, m1, m2, m3, m4, m5) = (x[0][l], x[1][l], x[2][l], x[3][l], x[4][l], x[5][l]);
            let (a, b, c, d) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
            y[0][l] = m0 + a + c;
            y[1][l] = b + 2.0 * d;
            y[2][l] = a + 4.0 * c;
            y[3][l] = b + 8.0 * d + m5;
        }
        y
    }
}

/// A 3x3 kernel transformed to `G g Gᵀ` and packed as `t²` GEMM operands (one per position),
/// each `in_channels x out_channels`.
#[derive(Clone, Debug, PartialEq)]
pub struct WinogradWeights {
    tile: WinogradTile,
    positions: Vec<PackedB>,
    in_channels: usize,
    out_channels: usize,
}

impl WinogradWeights {
    /// Transforms an HWIO kernel `(3, 3, in_channels, out_channels)` for `tile`.
    pub fn new(kernel: &[f32], in_channels: usize, out_channels: usize, tile: WinogradTile) -> Result<Self> {
        let (ci, co) = (in_channels, out_channels);
        if kernel.len() != 9 * ci * co || ci == 0 || co == 0 {
            return Err(Error::shape(
                "WinogradWeights",
                format!("a (3, 3, {ci}, {co}) kernel of {} elements", 9 * ci * co),
                format!("{} elements", kernel.len()),
            ));
        }
        let g_mat = match tile {
            WinogradTile::F2x2 => F2::G,
            WinogradTile::F4x4 => F4::G,
        };
        let t = tile.input();
        let mut u = vec![vec![0.0f32; ci * co]; tile.positions()];
        for i in 0..ci {
            for o in 0..co {
                let g = |ky: usize, kx: usize| f64::from(kernel[((ky * 3 + kx) * ci + i) * co + o]);
                // G g: t x 3.
                let mut gg = [[0.0f64; 3]; MAX_T];
                for (row, gr) in gg.iter_mut().zip(&g_mat).take(t) {
                    for (kx, v) in row.iter_mut().enumerate() {
                        *v = (0..3).map(|ky| gr[ky] * g(ky, kx)).sum();
                    }
                }
                // (G g) Gᵀ: t x t.
                for (a, row) in gg.iter().enumerate().take(t) {
                    for (b, gb) in g_mat.iter().enumerate().take(t) {
                        let v: f64 = (0..3).map(|kx| row[kx] * gb[kx]).sum();
                        u[a * t + b][i * co + o] = v as f32;
                    }
                }
            }
        }
        let positions = u.iter().map(|m| PackedB::pack(m, ci, co, co)).collect::<Result<_>>()?;
        Ok(WinogradWeights {
            tile,
            positions,
            in_channels: ci,
            out_channels: co,
        })
    }

    /// The algorithm these weights are for.
    pub fn tile(&self) -> WinogradTile {
        self.tile
    }

    /// Input channels.
    pub fn in_channels(&self) -> usize {
        self.in_channels
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// The packed `in_channels x out_channels` operand of position `p`.
    pub fn position(&self, p: usize) -> Option<&PackedB> {
        self.positions.get(p)
    }

    /// Floats held (the packed panels, zero-padded to whole panels).
    pub fn len(&self) -> usize {
        self.positions.iter().map(|p| p.panels() * p.k() * NR).sum()
    }

    /// Whether there is no weight at all (never, for weights built by [`WinogradWeights::new`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn check_geometry(g: &ConvGeometry, what: &str) -> Result<()> {
    if supports(g) {
        Ok(())
    } else {
        Err(Error::config(
            what,
            format!(
                "Winograd needs a 3x3 window, stride 1 and dilation 1, found {:?}, stride {:?}, dilation {:?}",
                g.window.kernel, g.window.stride, g.window.dilation
            ),
        ))
    }
}

/// Transforms tiles `tiles` (indices over the batch, row-major per image) of the input `x` into
/// `v` (`positions * tiles.len() * in_channels` floats, layout in the [module docs](self)).
pub fn transform_input(x: &[f32], g: &ConvGeometry, tile: WinogradTile, tiles: Range<usize>, v: &mut [f32]) -> Result<()> {
    check_geometry(g, "winograd::transform_input")?;
    let (cin, count, p) = (g.in_channels, tiles.len(), tile.positions());
    if x.len() < g.input_len() || v.len() < p * count * cin || tiles.end > tile.tile_count(g) {
        return Err(Error::shape(
            "winograd::transform_input",
            format!("an input of {} and {} transformed floats", g.input_len(), p * count * cin),
            format!("{} and {} (tiles {tiles:?} of {})", x.len(), v.len(), tile.tile_count(g)),
        ));
    }
    match gemm_kernel() {
        // SAFETY: the kernel's CPU features were detected at run time; the body is safe code.
        #[cfg(target_arch = "x86_64")]
        GemmKernel::Avx512 => unsafe { transform_input_avx512(x, g, tile, tiles, v) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        GemmKernel::Avx2Fma => unsafe { transform_input_avx2(x, g, tile, tiles, v) },
        _ => transform_input_any(x, g, tile, tiles, v),
    }
    Ok(())
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transform_input_avx512(x: &[f32], g: &ConvGeometry, tile: WinogradTile, tiles: Range<usize>, v: &mut [f32]) {
    transform_input_any(x, g, tile, tiles, v);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn transform_input_avx2(x: &[f32], g: &ConvGeometry, tile: WinogradTile, tiles: Range<usize>, v: &mut [f32]) {
    transform_input_any(x, g, tile, tiles, v);
}

/// (Compiled once per GEMM kernel's instruction set: for AVX-512, which vectorizes the channel
/// loops 16 wide, for AVX2, 8 wide, and for the target's baseline, which is NEON on aarch64.
/// Rust never fuses a multiply and an add on its own, so all give the same bits.)
#[inline(always)]
fn transform_input_any(x: &[f32], g: &ConvGeometry, tile: WinogradTile, tiles: Range<usize>, v: &mut [f32]) {
    match tile {
        WinogradTile::F2x2 => transform_input_body::<F2>(x, g, tiles, v),
        WinogradTile::F4x4 => transform_input_body::<F4>(x, g, tiles, v),
    }
}

#[inline(always)]
fn transform_input_body<X: Transform>(x: &[f32], g: &ConvGeometry, tiles: Range<usize>, v: &mut [f32]) {
    let ([ih, iw], cin) = (g.in_hw, g.in_channels);
    let (m, t) = (X::TILE.output(), X::TILE.input());
    let [th, tw] = X::TILE.grid(g);
    let stride = tiles.len() * cin;
    for (i, tile) in tiles.enumerate() {
        let (img, ty, tx) = (tile / (th * tw), tile / tw % th, tile % tw);
        // The input pixels of the patch (None: padding).
        let mut src: [[Option<&[f32]>; MAX_T]; MAX_T] = [[None; MAX_T]; MAX_T];
        for (r, row) in src.iter_mut().enumerate().take(t) {
            let iy = (m * ty + r) as isize - g.pad.top as isize;
            if iy < 0 || iy as usize >= ih {
                continue;
            }
            for (c, s) in row.iter_mut().enumerate().take(t) {
                let ix = (m * tx + c) as isize - g.pad.left as isize;
                if ix >= 0 && (ix as usize) < iw {
                    let at = ((img * ih + iy as usize) * iw + ix as usize) * cin;
                    *s = Some(&x[at..at + cin]);
                }
            }
        }
        let out = i * cin;
        let mut c = 0;
        while c + LANES <= cin {
            input_chunk::<X, LANES>(&src, c, v, stride, out);
            c += LANES;
        }
        while c < cin {
            input_chunk::<X, 1>(&src, c, v, stride, out);
            c += 1;
        }
    }
}

/// `Bᵀ d B` for channels `c..c + W` of one patch, stored at `v[p * stride + out + c..]`.
#[inline(always)]
fn input_chunk<X: Transform, const W: usize>(src: &[[Option<&[f32]>; MAX_T]; MAX_T], c: usize, v: &mut [f32], stride: usize, out: usize) {
    let t = X::TILE.input();
    // d[column][row], so each column is one 1-D transform's input.
    let mut d = [[[0.0f32; W]; MAX_T]; MAX_T];
    for (r, row) in src.iter().enumerate().take(t) {
        for (col, s) in row.iter().enumerate().take(t) {
            if let Some(s) = s {
                d[col][r].copy_from_slice(&s[c..c + W]);
            }
        }
    }
    // Bᵀ on the columns (r[column][row]), then on the rows.
    let mut r = [[[0.0f32; W]; MAX_T]; MAX_T];
    for (rc, dc) in r.iter_mut().zip(&d).take(t) {
        *rc = X::input(dc);
    }
    // (`r` is indexed [column][row]; this walks its second index.)
    #[allow(clippy::needless_range_loop)]
    for row in 0..t {
        let line: [[f32; W]; MAX_T] = std::array::from_fn(|col| r[col][row]);
        let out_row = X::input(&line);
        for (col, vals) in out_row.iter().enumerate().take(t) {
            let at = (row * t + col) * stride + out + c;
            v[at..at + W].copy_from_slice(vals);
        }
    }
}

/// Multiplies the transformed tiles `v` (`count` tiles) by the weights into `m`, for the
/// `NR`-column panels `panels` of the output channels.
pub fn multiply(v: &[f32], w: &WinogradWeights, count: usize, m: &mut [f32], panels: Range<usize>) -> Result<()> {
    let (cin, cout, p) = (w.in_channels, w.out_channels, w.tile.positions());
    if v.len() < p * count * cin || m.len() < p * count * cout {
        return Err(Error::shape(
            "winograd::multiply",
            format!("{} and {} floats for {count} tiles", p * count * cin, p * count * cout),
            format!("{} and {}", v.len(), m.len()),
        ));
    }
    let none = GemmEpilogue::default();
    for (k, b) in w.positions.iter().enumerate() {
        let a = &v[k * count * cin..(k + 1) * count * cin];
        let c = &mut m[k * count * cout..(k + 1) * count * cout];
        gemm_packed(a, cin, b, c, cout, 0..count, panels.clone(), &none)?;
    }
    Ok(())
}

/// Transforms the products `m` of tiles `tiles` back (`Aᵀ M A`) and writes output channels
/// `channels` of their pixels, through the epilogue, into the NHWC output at `out`.
///
/// # Safety
/// `out` must be valid for reads and writes of `out_len` floats, and no other thread may
/// access the pixels of these tiles in these channels meanwhile. (`out_len` is checked to
/// cover the whole output of `g`.)
#[allow(clippy::too_many_arguments)]
pub unsafe fn transform_output(
    m: &[f32],
    g: &ConvGeometry,
    tile: WinogradTile,
    tiles: Range<usize>,
    channels: Range<usize>,
    e: &GemmEpilogue<'_>,
    out: *mut f32,
    out_len: usize,
) -> Result<()> {
    check_geometry(g, "winograd::transform_output")?;
    let (cout, count, p) = (g.out_channels, tiles.len(), tile.positions());
    let short = |v: Option<&[f32]>, need: usize| v.is_some_and(|v| v.len() < need);
    if m.len() < p * count * cout
        || out_len < g.output_len()
        || tiles.end > tile.tile_count(g)
        || channels.end > cout
        || short(e.scale, cout)
        || short(e.bias, cout)
        || short(e.residual, g.output_len())
    {
        return Err(Error::shape(
            "winograd::transform_output",
            format!(
                "{} products, an output of {}, tiles within {}, channels within {cout}",
                p * count * cout,
                g.output_len(),
                tile.tile_count(g)
            ),
            format!("{} products, {out_len} output, tiles {tiles:?}, channels {channels:?}", m.len()),
        ));
    }
    let pass = OutputPass {
        m,
        g,
        tiles,
        channels,
        e,
        out,
    };
    match gemm_kernel() {
        // SAFETY: the kernel's CPU features were detected at run time; the rest is forwarded.
        #[cfg(target_arch = "x86_64")]
        GemmKernel::Avx512 => unsafe { transform_output_avx512(tile, pass) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        GemmKernel::Avx2Fma => unsafe { transform_output_avx2(tile, pass) },
        // SAFETY: forwarded (the extents were checked above).
        _ => unsafe { transform_output_any(tile, pass) },
    }
    Ok(())
}

/// The arguments of one [`transform_output`] call, extents checked.
struct OutputPass<'a> {
    m: &'a [f32],
    g: &'a ConvGeometry,
    tiles: Range<usize>,
    channels: Range<usize>,
    e: &'a GemmEpilogue<'a>,
    out: *mut f32,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transform_output_avx512(tile: WinogradTile, pass: OutputPass<'_>) {
    // SAFETY: forwarded.
    unsafe { transform_output_any(tile, pass) };
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn transform_output_avx2(tile: WinogradTile, pass: OutputPass<'_>) {
    // SAFETY: forwarded.
    unsafe { transform_output_any(tile, pass) };
}

/// # Safety
/// As [`transform_output`], with the extents already checked.
#[inline(always)]
unsafe fn transform_output_any(tile: WinogradTile, pass: OutputPass<'_>) {
    // SAFETY: forwarded.
    unsafe {
        match tile {
            WinogradTile::F2x2 => transform_output_body::<F2>(pass),
            WinogradTile::F4x4 => transform_output_body::<F4>(pass),
        }
    }
}

/// # Safety
/// As [`transform_output`], with the extents already checked.
#[inline(always)]
unsafe fn transform_output_body<X: Transform>(pass: OutputPass<'_>) {
    let OutputPass {
        m,
        g,
        tiles,
        channels,
        e,
        out,
    } = pass;
    let ([oh, ow], cout) = (g.out_hw, g.out_channels);
    let mt = X::TILE.output();
    let [th, tw] = X::TILE.grid(g);
    let stride = tiles.len() * cout;
    for (i, tile) in tiles.enumerate() {
        let (img, ty, tx) = (tile / (th * tw), tile / tw % th, tile % tw);
        // Output offsets of the tile's pixels (None: past the edge).
        let mut at = [[None; 4]; 4];
        for (r, row) in at.iter_mut().enumerate().take(mt) {
            for (c, a) in row.iter_mut().enumerate().take(mt) {
                let (oy, ox) = (mt * ty + r, mt * tx + c);
                if oy < oh && ox < ow {
                    *a = Some(((img * oh + oy) * ow + ox) * cout);
                }
            }
        }
        let src = i * cout;
        let mut c = channels.start;
        while c + LANES <= channels.end {
            // SAFETY: forwarded.
            unsafe { output_chunk::<X, LANES>(m, stride, src, c, &at, e, out) };
            c += LANES;
        }
        while c < channels.end {
            // SAFETY: forwarded.
            unsafe { output_chunk::<X, 1>(m, stride, src, c, &at, e, out) };
            c += 1;
        }
    }
}

/// `Aᵀ M A` for channels `c..c + W` of one tile, then the epilogue, stored at the tile's pixels.
///
/// # Safety
/// Every `at[r][c] + c + W` is within the output, which `out` covers.
#[inline(always)]
unsafe fn output_chunk<X: Transform, const W: usize>(
    m: &[f32],
    stride: usize,
    src: usize,
    c: usize,
    at: &[[Option<usize>; 4]; 4],
    e: &GemmEpilogue<'_>,
    out: *mut f32,
) {
    let (mt, t) = (X::TILE.output(), X::TILE.input());
    // s[column][row].
    let mut s = [[[0.0f32; W]; MAX_T]; MAX_T];
    for row in 0..t {
        for (col, sc) in s.iter_mut().enumerate().take(t) {
            let from = (row * t + col) * stride + src + c;
            sc[row].copy_from_slice(&m[from..from + W]);
        }
    }
    // Aᵀ on the columns (z[column][output row]), then on the rows.
    let mut z = [[[0.0f32; W]; 4]; MAX_T];
    for (zc, sc) in z.iter_mut().zip(&s).take(t) {
        *zc = X::output(sc);
    }
    let scale: [f32; W] = e.scale.map_or([1.0; W], |v| std::array::from_fn(|l| v[c + l]));
    let bias: [f32; W] = e.bias.map_or([0.0; W], |v| std::array::from_fn(|l| v[c + l]));
    for (row, at_row) in at.iter().enumerate().take(mt) {
        let line: [[f32; W]; MAX_T] = std::array::from_fn(|col| if col < t { z[col][row] } else { [0.0; W] });
        let mut y = X::output(&line);
        for (yq, a) in y.iter_mut().zip(at_row).take(mt) {
            let Some(a) = *a else { continue };
            let o = a + c;
            for l in 0..W {
                yq[l] = yq[l] * scale[l] + bias[l];
            }
            if let Some(r) = e.residual {
                for l in 0..W {
                    yq[l] += r[o + l];
                }
            }
            if !e.rectifier.is_identity() {
                for v in yq.iter_mut() {
                    *v = e.rectifier.apply(*v);
                }
            }
            // SAFETY: `o + W` is within the output (the caller's contract).
            unsafe { std::ptr::copy_nonoverlapping(yq.as_ptr(), out.add(o), W) };
        }
    }
}

/// Floats of scratch a block of `count` tiles needs (transformed input and products).
pub fn workspace_len(tile: WinogradTile, in_channels: usize, out_channels: usize, count: usize) -> usize {
    tile.positions() * count * (in_channels + out_channels)
}

/// A whole stride-1 3x3 convolution by Winograd, single-threaded, `block` tiles at a time:
/// `output = epilogue(conv(input))`. `workspace` grows as needed.
pub fn conv2d_winograd(
    input: &[f32],
    g: &ConvGeometry,
    weights: &WinogradWeights,
    e: &GemmEpilogue<'_>,
    output: &mut [f32],
    block: usize,
    workspace: &mut Vec<f32>,
) -> Result<()> {
    check_geometry(g, "conv2d_winograd")?;
    if weights.in_channels != g.in_channels || weights.out_channels != g.out_channels {
        return Err(Error::shape(
            "conv2d_winograd",
            format!("weights for {} -> {} channels", g.in_channels, g.out_channels),
            format!("{} -> {}", weights.in_channels, weights.out_channels),
        ));
    }
    let tile = weights.tile;
    let block = block.max(1);
    let (cin, cout) = (g.in_channels, g.out_channels);
    let need = workspace_len(tile, cin, cout, block);
    if workspace.len() < need {
        workspace.resize(need, 0.0);
    }
    let total = tile.tile_count(g);
    let panels = 0..cout.div_ceil(NR);
    let mut start = 0;
    while start < total {
        let tiles = start..(start + block).min(total);
        let (v, m) = workspace.split_at_mut(tile.positions() * block * cin);
        transform_input(input, g, tile, tiles.clone(), v)?;
        multiply(v, weights, tiles.len(), m, panels.clone())?;
        // SAFETY: `output` is a live exclusive slice of `output.len()` floats.
        unsafe { transform_output(m, g, tile, tiles.clone(), 0..cout, e, output.as_mut_ptr(), output.len())? };
        start = tiles.end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{Padding, Rectifier, Window2d};

    fn fill(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// The transforms compiled for any CPU (what runs without AVX-512) give the same bits as
    /// the dispatched ones (AVX-512 here, when the CPU has it): the same operations in the same
    /// order, only vectorized differently. The dispatched ones are held to the reference by
    /// `tests/kernels_prop.rs`.
    #[test]
    fn portable_transforms_match_the_dispatched_ones() {
        for (i, (n, h, w, cin, cout, tile)) in [
            (1, 7, 9, 19, 33, WinogradTile::F2x2),
            (2, 8, 8, 32, 16, WinogradTile::F2x2),
            (1, 11, 6, 17, 40, WinogradTile::F4x4),
            (2, 5, 13, 3, 5, WinogradTile::F4x4),
        ]
        .into_iter()
        .enumerate()
        {
            let g = ConvGeometry::new(
                [n, h, w, cin],
                cout,
                Window2d {
                    padding: Padding::Same,
                    ..Window2d::new([3, 3], [1, 1])
                },
            )
            .unwrap();
            let x = fill(g.input_len(), i as u32);
            let total = tile.tile_count(&g);
            let tiles = 1..total;
            let len = tile.positions() * tiles.len();
            let (mut fast, mut plain) = (vec![f32::NAN; len * cin], vec![f32::NAN; len * cin]);
            transform_input(&x, &g, tile, tiles.clone(), &mut fast).unwrap();
            transform_input_any(&x, &g, tile, tiles.clone(), &mut plain);
            assert_eq!(fast, plain, "input transform, case {i}");

            let m = fill(len * cout, 7 + i as u32);
            let (scale, bias, res) = (fill(cout, 8), fill(cout, 9), fill(g.output_len(), 10));
            let e = GemmEpilogue {
                scale: Some(&scale),
                bias: Some(&bias),
                residual: Some(&res),
                rectifier: Rectifier::Relu6,
            };
            let channels = 1..cout;
            let (mut fast, mut plain) = (vec![f32::NAN; g.output_len()], vec![f32::NAN; g.output_len()]);
            // SAFETY: each output buffer is a live exclusive slice of the whole output.
            unsafe {
                transform_output(&m, &g, tile, tiles.clone(), channels.clone(), &e, fast.as_mut_ptr(), fast.len()).unwrap();
                let pass = OutputPass {
                    m: &m,
                    g: &g,
                    tiles: tiles.clone(),
                    channels: channels.clone(),
                    e: &e,
                    out: plain.as_mut_ptr(),
                };
                transform_output_any(tile, pass);
            }
            let same = fast.iter().zip(&plain).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "output transform, case {i}");
            // Written exactly where the tiles and channels say: tile 0 and channel 0 stay NaN.
            assert!(fast[0].is_nan() && !fast[g.output_len() - 1].is_nan());
        }
    }
}
