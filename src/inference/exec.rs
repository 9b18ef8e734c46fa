//! The compiled model's operations and how each one runs.

use std::ops::Range;
use std::sync::Mutex;

use ndarray::{ArrayD, ArrayViewD, IxDyn};

use super::aligned::AlignedBuf;
use super::fused::FusedBlock;
use super::pool::{parallel, share, SendPtr, ThreadPool};
use super::Value;
use crate::error::{Error, Result};
use crate::graph::{self, UnaryFn};
use crate::kernels::implicit::{pieces, tap_segments};
use crate::kernels::packed_gemm::{gemm_packed_raw, gemm_segments, GemmEpilogue, PackedB, Segment, MR, NR};
use crate::kernels::winograd::{self, WinogradWeights};
use crate::kernels::{self, ConvGeometry, PoolGeometry, Rectifier};

/// Bytes of im2col tile a thread fills before multiplying it (sized for L2).
const IM2COL_TILE_BYTES: usize = 1 << 20;

/// Bytes of transformed input and products a thread holds for one block of Winograd tiles.
/// (Measured on ResNet50 with 0.25 to 4 MiB: 2 MiB was as fast as any, within the noise.)
const WINOGRAD_BLOCK_BYTES: usize = 2 << 20;

/// Input channels from which a convolution reads its input in place (one GEMM segment per
/// kernel tap) instead of copying it through im2col.
const IMPLICIT_MIN_CHANNELS: usize = 16;

/// One thread's scratch space: an im2col tile or gathered edge taps, and the segment list.
#[derive(Debug, Default)]
pub(crate) struct Workspace {
    pub floats: AlignedBuf,
    pub segments: Vec<Segment>,
}

/// Everything an op needs at run time besides the buffers.
pub(crate) struct Ctx<'a> {
    pub values: &'a [Value],
    pub batch: usize,
    pub pool: &'a ThreadPool,
    pub workspaces: &'a [Mutex<Workspace>],
}

/// A convolution with folded weights and a fused epilogue.
pub(crate) struct ConvOp {
    pub name: String,
    /// Geometry for one image (the batch is set at run time); of one group when `groups > 1`.
    pub geometry: ConvGeometry,
    /// Channel groups (1: dense). Group `i` reads input channels `i * cin..(i + 1) * cin` and
    /// writes output channels `i * cout..(i + 1) * cout` (`cin`, `cout`: `geometry`'s).
    pub groups: usize,
    pub weights: ConvWeights,
    /// A folded BatchNorm's per-channel scale, applied in the GEMM's output pass.
    pub scale: Option<Vec<f32>>,
    pub bias: Vec<f32>,
    pub rectifier: Rectifier,
    pub residual: Option<usize>,
    pub x: usize,
    pub y: usize,
}

/// A convolution's weights, packed for the kernel that computes it.
pub(crate) enum ConvWeights {
    /// The kernel as one `K x N` GEMM operand (im2col, pointwise and implicit convolutions).
    Gemm(PackedB),
    /// A 3x3 stride-1 kernel transformed for Winograd F(2x2, 3x3).
    Winograd(WinogradWeights),
    /// A grouped convolution's kernel, one `K x N` operand per group.
    Grouped(Vec<PackedB>),
    /// A depthwise kernel (one filter per channel), `(kh, kw, channels)`.
    Depthwise(Vec<f32>),
    /// A kernel of narrow groups for [`kernels::narrow_groups`], `(kh, kw, width, channels)`:
    /// groups of `width` channels in and out.
    NarrowGroups { kernel: Vec<f32>, width: usize },
}

impl ConvOp {
    fn panels(&self) -> usize {
        self.geometry.out_channels.div_ceil(NR)
    }

    /// The largest number of tiles in a Winograd block at `batch`, and the number of blocks
    /// (near-equal; block `b` holds the tiles `share(total, b, blocks)`).
    fn winograd_blocks(&self, w: &WinogradWeights, batch: usize) -> (usize, usize) {
        let g = ConvGeometry { batch, ..self.geometry };
        let per_tile = 4 * winograd::workspace_len(w.tile(), g.in_channels, g.out_channels, 1);
        let total = w.tile().tile_count(&g);
        let blocks = total.div_ceil((WINOGRAD_BLOCK_BYTES / per_tile).max(MR)).max(1);
        (total.div_ceil(blocks), blocks)
    }

    pub(crate) fn is_pointwise(&self) -> bool {
        self.geometry.window.kernel == [1, 1] && self.geometry.window.stride == [1, 1] && self.geometry.pad.is_zero()
    }

    /// Reads its input in place, tap by tap (no im2col), in micro-tiles of one output row's
    /// pixels. Not:
    /// - on the portable kernel, which multiplies whole blocks through `matrixmultiply` and
    ///   gains nothing from micro-tiles;
    /// - for a strided 1x1 convolution, whose im2col is a subsampling copy and whose GEMM then
    ///   runs in `K` blocks over tiles spanning output rows (ResNet50's projection shortcuts on
    ///   AVX2, one thread: 2.56-2.83 ms each before, 2.16-2.48 after; AVX-512 unchanged);
    /// - on the 6 x 16 sub-tile kernels (AVX2, NEON), for output rows narrower than `MR`
    ///   pixels: a 7-pixel micro-tile runs as a 4-row and a 3-row pass, neither with enough
    ///   accumulators to hide the FMA latency, where im2col's tiles span rows (ResNet50's
    ///   last-stage 3x3 on AVX2: 2.90-2.92 ms before, 2.56-2.64 after; on AVX-512, with 7 x 32
    ///   tiles at full speed, im2col measured 2.24-2.34 against 2.06-2.16 ms, so it stays).
    fn implicit(&self) -> bool {
        use crate::kernels::packed_gemm::{gemm_kernel, GemmKernel};
        let kernel = gemm_kernel();
        !self.is_pointwise()
            && self.geometry.window.kernel != [1, 1]
            && self.geometry.in_channels >= IMPLICIT_MIN_CHANNELS
            && kernel != GemmKernel::Portable
            && (self.geometry.out_hw[1] >= MR || kernel == GemmKernel::Avx512)
    }

    fn taps(&self) -> usize {
        self.geometry.window.kernel[0] * self.geometry.window.kernel[1]
    }

    /// Output rows per tile: as many as fit [`IM2COL_TILE_BYTES`], a multiple of `MR`, at least 8 `MR`.
    fn tile_rows(&self) -> usize {
        let k = self.geometry.patch_len().max(1);
        ((IM2COL_TILE_BYTES / (4 * k)) / MR * MR).max(8 * MR)
    }
}

pub(crate) enum Op<'m> {
    Conv(ConvOp),
    /// An inverted residual block's convolutions in one op ([`fused`](super::fused)).
    Fused(Box<FusedBlock>),
    /// Per-channel `y = x * scale + shift`, then the rectifier (an unfolded BatchNorm).
    Affine {
        name: String,
        scale: Vec<f32>,
        shift: Vec<f32>,
        rectifier: Rectifier,
        x: usize,
        y: usize,
    },
    Unary {
        name: String,
        f: UnaryFn,
        x: usize,
        y: usize,
    },
    Add {
        name: String,
        a: usize,
        b: usize,
        rectifier: Rectifier,
        y: usize,
    },
    Pad {
        name: String,
        pad: kernels::Padding2d,
        x: usize,
        y: usize,
    },
    MaxPool {
        name: String,
        geometry: PoolGeometry,
        x: usize,
        y: usize,
    },
    AvgPool {
        name: String,
        geometry: PoolGeometry,
        x: usize,
        y: usize,
    },
    GlobalAvgPool {
        name: String,
        x: usize,
        y: usize,
    },
    Dense {
        name: String,
        weights: PackedB,
        bias: Vec<f32>,
        x: usize,
        y: usize,
    },
    /// Softmax along the last axis.
    Softmax {
        name: String,
        x: usize,
        y: usize,
    },
    /// Any other graph op, run by the reference executor on copies of its inputs (grouped
    /// convolutions, concatenation, opaque layers, ...): correct, not fast.
    Generic {
        name: String,
        op: graph::Op<'m>,
        inputs: Vec<usize>,
        y: usize,
    },
}

/// Read-only views of up to two buffers and a writable view of another, distinct one.
/// (`b` may repeat `a`; no allocation.)
pub(crate) fn split(bufs: &mut [AlignedBuf], a: usize, b: usize, write: usize) -> (&[f32], &[f32], &mut [f32]) {
    assert!(
        a != write && b != write && a < bufs.len() && b < bufs.len() && write < bufs.len(),
        "an op may not write its own input"
    );
    let ptr = bufs.as_mut_ptr();
    // SAFETY: all indices are in bounds, and `write` differs from `a` and `b`, so the mutable
    // borrow does not overlap the shared ones.
    unsafe { (&**ptr.add(a), &**ptr.add(b), &mut **ptr.add(write)) }
}

impl Op<'_> {
    /// The values this op reads.
    pub fn inputs(&self) -> Vec<usize> {
        match self {
            Op::Conv(c) => [Some(c.x), c.residual].into_iter().flatten().collect(),
            Op::Fused(f) => [Some(f.x()), f.project.residual].into_iter().flatten().collect(),
            Op::Add { a, b, .. } => vec![*a, *b],
            Op::Generic { inputs, .. } => inputs.clone(),
            Op::Affine { x, .. }
            | Op::Unary { x, .. }
            | Op::Pad { x, .. }
            | Op::MaxPool { x, .. }
            | Op::AvgPool { x, .. }
            | Op::GlobalAvgPool { x, .. }
            | Op::Dense { x, .. }
            | Op::Softmax { x, .. } => vec![*x],
        }
    }

    /// Weights (floats) this op reads.
    pub fn weight_len(&self) -> usize {
        match self {
            Op::Conv(c) => Op::conv_weight_len(&c.weights),
            Op::Fused(f) => f.weight_len(),
            Op::Dense { weights, .. } => weights.k() * weights.n(),
            _ => 0,
        }
    }

    /// Floats of a convolution's weights.
    pub fn conv_weight_len(weights: &ConvWeights) -> usize {
        match weights {
            ConvWeights::Gemm(b) => b.k() * b.n(),
            ConvWeights::Winograd(w) => w.len(),
            ConvWeights::Grouped(bs) => bs.iter().map(|b| b.k() * b.n()).sum(),
            ConvWeights::Depthwise(k) | ConvWeights::NarrowGroups { kernel: k, .. } => k.len(),
        }
    }

    /// The value this op writes.
    pub fn output(&self) -> usize {
        match self {
            Op::Conv(c) => c.y,
            Op::Fused(f) => f.project.y,
            Op::Affine { y, .. }
            | Op::Generic { y, .. }
            | Op::Unary { y, .. }
            | Op::Add { y, .. }
            | Op::Pad { y, .. }
            | Op::MaxPool { y, .. }
            | Op::AvgPool { y, .. }
            | Op::GlobalAvgPool { y, .. }
            | Op::Dense { y, .. }
            | Op::Softmax { y, .. } => *y,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Op::Conv(c) => &c.name,
            Op::Fused(f) => &f.name,
            Op::Affine { name, .. }
            | Op::Generic { name, .. }
            | Op::Unary { name, .. }
            | Op::Add { name, .. }
            | Op::Pad { name, .. }
            | Op::MaxPool { name, .. }
            | Op::AvgPool { name, .. }
            | Op::GlobalAvgPool { name, .. }
            | Op::Dense { name, .. }
            | Op::Softmax { name, .. } => name,
        }
    }

    /// Scratch floats a thread needs for this op at `batch`, and segments.
    pub fn workspace_len(&self, batch: usize) -> (usize, usize) {
        let c = match self {
            Op::Conv(c) => c,
            Op::Fused(f) => return (f.workspace_len(), 0),
            _ => return (0, 0),
        };
        match &c.weights {
            ConvWeights::Winograd(w) => {
                let (block, _) = c.winograd_blocks(w, batch);
                (
                    winograd::workspace_len(w.tile(), c.geometry.in_channels, c.geometry.out_channels, block),
                    0,
                )
            }
            ConvWeights::Gemm(_) if c.implicit() => (c.taps() * MR * c.geometry.in_channels, c.taps()),
            ConvWeights::Gemm(_) | ConvWeights::Grouped(_) if !c.is_pointwise() => {
                let g = ConvGeometry { batch, ..c.geometry };
                (c.tile_rows().min(g.out_pixels()) * g.patch_len(), 0)
            }
            ConvWeights::Gemm(_) | ConvWeights::Grouped(_) | ConvWeights::Depthwise(_) | ConvWeights::NarrowGroups { .. } => (0, 0),
        }
    }

    pub fn run(&self, ctx: &Ctx<'_>, bufs: &mut [AlignedBuf]) -> Result<()> {
        let v = |i: usize| &ctx.values[i];
        let n = ctx.batch;
        match self {
            Op::Fused(f) => super::fused::run(f, ctx, bufs),
            Op::Conv(c) => match &c.weights {
                ConvWeights::Winograd(w) => conv_winograd(c, w, ctx, bufs),
                ConvWeights::Gemm(b) if c.implicit() => conv_implicit(c, b, ctx, bufs),
                ConvWeights::Gemm(b) => conv(c, b, ctx, bufs),
                ConvWeights::Grouped(bs) => conv_grouped(c, bs, ctx, bufs),
                ConvWeights::Depthwise(k) => conv_direct(c, ctx, bufs, &|x, g, e, rows, out| {
                    kernels::depthwise::depthwise_conv2d_rows(x, g, k, e, rows, out)
                }),
                ConvWeights::NarrowGroups { kernel, width } => conv_direct(c, ctx, bufs, &|x, g, e, rows, out| {
                    kernels::narrow_groups::grouped_conv2d_rows(x, g, *width, kernel, e, rows, out)
                }),
            },
            Op::Affine {
                scale,
                shift,
                rectifier,
                x,
                y,
                ..
            } => {
                let (r0, _, w) = split(bufs, v(*x).slot, v(*x).slot, v(*y).slot);
                let len = n * v(*x).len();
                for (dst, src) in w[..len].chunks_exact_mut(scale.len()).zip(r0[..len].chunks_exact(scale.len())) {
                    for (((d, &s), &a), &b) in dst.iter_mut().zip(src).zip(scale).zip(shift) {
                        *d = rectifier.apply(s * a + b);
                    }
                }
                Ok(())
            }
            Op::Unary { f, x, y, .. } => {
                let (r0, _, w) = split(bufs, v(*x).slot, v(*x).slot, v(*y).slot);
                let len = n * v(*x).len();
                w[..len].iter_mut().zip(&r0[..len]).for_each(|(d, &s)| *d = f.apply(s));
                Ok(())
            }
            Op::Add { a, b, rectifier, y, .. } => {
                let (r0, r1, w) = split(bufs, v(*a).slot, v(*b).slot, v(*y).slot);
                let len = n * v(*a).len();
                for ((d, p), q) in w[..len].iter_mut().zip(&r0[..len]).zip(&r1[..len]) {
                    *d = rectifier.apply(p + q);
                }
                Ok(())
            }
            Op::Pad { pad, x, y, .. } => {
                let (r0, _, w) = split(bufs, v(*x).slot, v(*x).slot, v(*y).slot);
                let (xs, ys) = (&v(*x).shape, &v(*y).shape);
                let (ih, iw, c) = (xs[0], xs[1], xs[2]);
                let (oh, ow) = (ys[0], ys[1]);
                w[..n * oh * ow * c].fill(0.0);
                for img in 0..n {
                    for row in 0..ih {
                        let src = &r0[((img * ih + row) * iw) * c..((img * ih + row) * iw + iw) * c];
                        let at = ((img * oh + row + pad.top) * ow + pad.left) * c;
                        w[at..at + iw * c].copy_from_slice(src);
                    }
                }
                Ok(())
            }
            Op::MaxPool { geometry, x, y, .. } | Op::AvgPool { geometry, x, y, .. } => {
                let g = PoolGeometry { batch: n, ..*geometry };
                let (r0, _, w) = split(bufs, v(*x).slot, v(*x).slot, v(*y).slot);
                let (src, c) = (&r0[..g.input_len()], g.channels);
                let (out_len, out) = (w.len().min(g.output_len()), SendPtr(w.as_mut_ptr()));
                let (max, pixels, threads) = (matches!(self, Op::MaxPool { .. }), g.output_len() / c.max(1), ctx.pool.threads());
                // Output pixels split over the threads.
                parallel(ctx.pool, &|t| {
                    let mine = share(pixels, t, threads);
                    if mine.end * c > out_len {
                        return Err(Error::shape(
                            self.name(),
                            format!("an output of {} floats", mine.end * c),
                            format!("{out_len}"),
                        ));
                    }
                    // SAFETY: inside the output (checked above); threads take disjoint pixels.
                    let dst = unsafe { std::slice::from_raw_parts_mut(out.get().add(mine.start * c), mine.len() * c) };
                    kernels::pool::pool2d_pixels(src, &g, max, mine, dst)
                })
            }
            Op::GlobalAvgPool { x, y, .. } => {
                let s = &v(*x).shape;
                let dims = [n, s[0], s[1], s[2]];
                let (r0, _, w) = split(bufs, v(*x).slot, v(*x).slot, v(*y).slot);
                kernels::global_avg_pool(&r0[..n * v(*x).len()], dims, &mut w[..n * s[2]])
            }
            Op::Dense { weights, bias, x, y, .. } => {
                let (r0, _, w) = split(bufs, v(*x).slot, v(*x).slot, v(*y).slot);
                let (k, units) = (weights.k(), weights.n());
                let a = &r0[..n * k];
                // The real extent of the buffer bounds every write, whatever the shapes claim.
                let out_len = w.len().min(n * units);
                let out = SendPtr(w.as_mut_ptr());
                let e = GemmEpilogue {
                    scale: None,
                    bias: Some(bias),
                    residual: None,
                    rectifier: Rectifier::Identity,
                };
                let panels = weights.panels();
                let threads = ctx.pool.threads();
                parallel(ctx.pool, &|t| {
                    // SAFETY: threads take disjoint panel ranges of the output.
                    unsafe { gemm_packed_raw(a, k, 0, weights, out.get(), out_len, units, 0..n, share(panels, t, threads), &e) }
                })
            }
            Op::Generic { op, inputs, y, .. } => {
                let inputs = inputs
                    .iter()
                    .map(|&i| batch_view(&bufs[v(i).slot], n, &v(i).shape).map(|a| a.to_owned()))
                    .collect::<Result<Vec<ArrayD<f32>>>>()?;
                let refs: Vec<&ArrayD<f32>> = inputs.iter().collect();
                let out = graph::reference::eval(op, &refs)?;
                let len = n * v(*y).len();
                let (dst, src) = (&mut bufs[v(*y).slot], out.as_standard_layout());
                match src.as_slice() {
                    Some(src) if src.len() == len && dst.len() >= len => dst[..len].copy_from_slice(src),
                    _ => {
                        return Err(Error::shape(
                            self.name(),
                            format!("an output of {len} elements"),
                            format!("{}", out.len()),
                        ))
                    }
                }
                Ok(())
            }
            Op::Softmax { x, y, .. } => {
                let (r0, _, w) = split(bufs, v(*x).slot, v(*x).slot, v(*y).slot);
                // Lanes along the last axis (one per pixel for an image-shaped value).
                let c = *v(*x).shape.last().unwrap_or(&1);
                let total = n * v(*x).len();
                for (dst, src) in w[..total].chunks_exact_mut(c).zip(r0[..total].chunks_exact(c)) {
                    let max = src.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                    let mut sum = 0.0;
                    for (d, &s) in dst.iter_mut().zip(src) {
                        *d = (s - max).exp();
                        sum += *d;
                    }
                    dst.iter_mut().for_each(|d| *d /= sum);
                }
                Ok(())
            }
        }
    }
}

/// A buffer's first `batch` values of per-image `shape`, as an array view.
fn batch_view<'a>(buf: &'a [f32], batch: usize, shape: &[usize]) -> Result<ArrayViewD<'a, f32>> {
    let mut full = vec![batch];
    full.extend_from_slice(shape);
    let len: usize = full.iter().product();
    let data = buf
        .get(..len)
        .ok_or_else(|| Error::shape("buffer", format!("{len} elements"), format!("{}", buf.len())))?;
    ArrayViewD::from_shape(IxDyn(&full), data).map_err(|e| Error::shape("buffer", format!("{full:?}"), e.to_string()))
}

/// What every convolution path shares for one call: the geometry at this batch size, the
/// input, the output (through a pointer threads write disjoint blocks of) and the epilogue.
struct ConvCall<'a> {
    g: ConvGeometry,
    x: &'a [f32],
    out: SendPtr,
    /// The real extent of the output buffer; it bounds every write, whatever `g` claims.
    out_len: usize,
    e: GemmEpilogue<'a>,
}

/// How evenly `n` equal work items split over `threads`: 1 when every thread gets as many.
fn balance(n: usize, threads: usize) -> f64 {
    n as f64 / (threads * n.div_ceil(threads)).max(1) as f64
}

/// Runs a convolution: `units` near-equal row units (im2col tiles, output rows, Winograd
/// blocks) by the weight panels, split over the threads by rows or by output-channel panels,
/// whichever splits more evenly. On a tie, rows when `prefer_rows` (each thread would otherwise
/// redo the per-row work, an im2col or an input transform), else panels (each thread then
/// reads only its share of the weights: the skinny late-stage GEMMs). `body` does one thread's
/// block with its own workspace.
#[allow(clippy::type_complexity)]
fn run_conv(
    c: &ConvOp,
    ctx: &Ctx<'_>,
    bufs: &mut [AlignedBuf],
    units: usize,
    prefer_rows: bool,
    body: &(dyn Fn(&ConvCall<'_>, &mut Workspace, Range<usize>, Range<usize>) -> Result<()> + Sync),
) -> Result<()> {
    let v = |i: usize| &ctx.values[i];
    let g = ConvGeometry {
        batch: ctx.batch,
        ..c.geometry
    };
    let xs = v(c.x).slot;
    let (x, res, w) = split(bufs, xs, c.residual.map_or(xs, |r| v(r).slot), v(c.y).slot);
    // (All groups' channels: `g` is one group's geometry.)
    let (input_len, output_len) = (g.input_len() * c.groups, g.output_len() * c.groups);
    let call = ConvCall {
        g,
        x: &x[..input_len],
        out_len: w.len().min(output_len),
        out: SendPtr(w.as_mut_ptr()),
        e: GemmEpilogue {
            scale: c.scale.as_deref(),
            bias: Some(&c.bias),
            residual: c.residual.map(|_| &res[..output_len]),
            rectifier: c.rectifier,
        },
    };
    let panels = c.panels();
    let threads = ctx.pool.threads();
    let (by_units, by_panels) = (balance(units, threads), balance(panels, threads));
    let by_rows = by_units > by_panels || (prefer_rows && by_units == by_panels);
    parallel(ctx.pool, &|t| {
        let (my_units, my_panels) = if by_rows {
            (share(units, t, threads), 0..panels)
        } else {
            (0..units, share(panels, t, threads))
        };
        if my_units.is_empty() || my_panels.is_empty() {
            return Ok(());
        }
        let mut ws = ctx.workspaces[t].lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        body(&call, &mut ws, my_units, my_panels)
    })
}

/// `(rows per tile, tiles)` for an im2col convolution over `m` output pixels: near-equal
/// tiles no longer than the L2-sized [`ConvOp::tile_rows`], as many as the threads can share
/// evenly (a multiple of them, when there are at least that many), and at least `min_tiles`
/// (a grouped convolution, whose narrow groups leave no panels to share, splits its rows).
fn im2col_tiles(c: &ConvOp, m: usize, threads: usize, min_tiles: usize) -> (usize, usize) {
    let tiles = m.div_ceil(c.tile_rows().min(m).max(1));
    let tiles = if tiles >= threads {
        tiles.next_multiple_of(threads)
    } else {
        tiles.max(min_tiles).min(m.max(1))
    };
    (m.div_ceil(tiles), tiles)
}

/// A convolution as GEMMs over the output pixels: the input itself for a 1x1 stride-1
/// convolution (one GEMM per thread, its rows in `MR`-row units), else im2col tiles sized for
/// L2, each filled by the thread that multiplies it (the stem's 7x7 on 3 channels).
fn conv(c: &ConvOp, weights: &PackedB, ctx: &Ctx<'_>, bufs: &mut [AlignedBuf]) -> Result<()> {
    let g = ConvGeometry {
        batch: ctx.batch,
        ..c.geometry
    };
    let (m, k, n) = (g.out_pixels(), g.patch_len(), g.out_channels);
    let pointwise = c.is_pointwise();
    let (tile, units) = if pointwise {
        (MR, m.div_ceil(MR))
    } else {
        im2col_tiles(c, m, ctx.pool.threads(), 1)
    };
    let gemm = |call: &ConvCall<'_>, a: &[f32], a_row0: usize, rows: Range<usize>, panels: Range<usize>| {
        // SAFETY: the calling thread alone writes these rows x panels of the output.
        unsafe { gemm_packed_raw(a, k, a_row0, weights, call.out.get(), call.out_len, n, rows, panels, &call.e) }
    };
    run_conv(c, ctx, bufs, units, !pointwise, &|call, ws, my_units, panels| {
        if pointwise {
            // One GEMM over the thread's rows, straight from the input.
            return gemm(call, call.x, 0, my_units.start * tile..(my_units.end * tile).min(m), panels);
        }
        for ti in my_units {
            let rows = ti * tile..((ti + 1) * tile).min(m);
            if rows.is_empty() {
                break; // (rounding the tile count up to the threads can leave the last ones empty)
            }
            let a = &mut ws.floats[..rows.len() * k];
            kernels::im2col::im2col_unchecked(call.x, &call.g, rows.start, rows.len(), a);
            gemm(call, a, rows.start, rows, panels.clone())?;
        }
        Ok(())
    })
}

/// A grouped convolution as one GEMM per group over the output pixels: group `i`'s input
/// channels read in place for a 1x1 stride-1 convolution, else gathered by im2col tiles, times
/// its own packed kernel, written (through the fused epilogue) into its own output channels.
fn conv_grouped(c: &ConvOp, weights: &[PackedB], ctx: &Ctx<'_>, bufs: &mut [AlignedBuf]) -> Result<()> {
    let g = ConvGeometry {
        batch: ctx.batch,
        ..c.geometry
    };
    let (m, k) = (g.out_pixels(), g.patch_len());
    let (cin, cout) = (g.in_channels, g.out_channels);
    let (x_channels, y_channels) = (cin * c.groups, cout * c.groups);
    let pointwise = c.is_pointwise();
    let (tile, units) = if pointwise {
        (MR, m.div_ceil(MR))
    } else {
        im2col_tiles(c, m, ctx.pool.threads(), ctx.pool.threads())
    };
    run_conv(c, ctx, bufs, units, true, &|call, ws, my_units, panels| {
        let rows_of = |u: Range<usize>| u.start * tile..(u.end * tile).min(m);
        for (group, b) in weights.iter().enumerate() {
            let off = group * cout;
            let e = GemmEpilogue {
                scale: call.e.scale.map(|s| &s[off..]),
                bias: call.e.bias.map(|s| &s[off..]),
                residual: call.e.residual.map(|s| &s[off..]),
                rectifier: call.e.rectifier,
            };
            // SAFETY: `off` lies inside the output (`call.out_len` covers every group's
            // channels, and the GEMM checks its writes against the length left); the calling
            // thread alone writes these rows x panels of each group's channels.
            let gemm = |a: &[f32], lda: usize, a_row0: usize, rows: Range<usize>| unsafe {
                gemm_packed_raw(
                    a,
                    lda,
                    a_row0,
                    b,
                    call.out.get().add(off),
                    call.out_len - off,
                    y_channels,
                    rows,
                    panels.clone(),
                    &e,
                )
            };
            if pointwise {
                gemm(&call.x[group * cin..], x_channels, 0, rows_of(my_units.clone()))?;
                continue;
            }
            for u in my_units.clone() {
                let rows = rows_of(u..u + 1);
                if rows.is_empty() {
                    break; // (rounding the tile count up to the threads can leave the last ones empty)
                }
                let a = &mut ws.floats[..rows.len() * k];
                kernels::im2col::im2col_channels_unchecked(call.x, &call.g, x_channels, group * cin, rows.start, rows.len(), a);
                gemm(a, k, rows.start, rows)?;
            }
        }
        Ok(())
    })
}

/// The rows of a convolution a direct loop computes: `kernel(x, g, e, rows, out)` for the
/// whole convolution's geometry `g` (all channels), output rows split over the threads.
type DirectRows<'a> = dyn Fn(&[f32], &ConvGeometry, &GemmEpilogue<'_>, Range<usize>, &mut [f32]) -> Result<()> + Sync + 'a;

/// A depthwise ([`kernels::depthwise`]) or narrow grouped ([`kernels::narrow_groups`])
/// convolution by its direct loop, output rows split over the threads.
fn conv_direct(c: &ConvOp, ctx: &Ctx<'_>, bufs: &mut [AlignedBuf], kernel: &DirectRows<'_>) -> Result<()> {
    let [oh, ow] = c.geometry.out_hw;
    let channels = c.geometry.in_channels * c.groups;
    run_conv(c, ctx, bufs, ctx.batch * oh, true, &|call, _, rows, _| {
        let g = ConvGeometry {
            in_channels: channels,
            out_channels: channels,
            ..call.g
        };
        let (start, len) = (rows.start * ow * channels, rows.len() * ow * channels);
        if start + len > call.out_len {
            return Err(Error::shape(
                "direct convolution",
                format!("an output of at least {} floats", start + len),
                format!("{}", call.out_len),
            ));
        }
        // SAFETY: inside the output (checked above), and the calling thread alone writes
        // these rows.
        let out = unsafe { std::slice::from_raw_parts_mut(call.out.get().add(start), len) };
        let e = GemmEpilogue {
            residual: call.e.residual.map(|r| &r[start..start + len]),
            ..call.e
        };
        kernel(call.x, &g, &e, rows, out)
    })
}

/// A convolution without im2col: each micro-tile of up to `MR` output pixels in one output row
/// multiplies, for every kernel tap, the input pixels under it (consecutive in NHWC, `stride *
/// channels` apart) straight from the input (see [`tap_segments`]).
fn conv_implicit(c: &ConvOp, weights: &PackedB, ctx: &Ctx<'_>, bufs: &mut [AlignedBuf]) -> Result<()> {
    let [oh, ow] = c.geometry.out_hw;
    let n = c.geometry.out_channels;
    run_conv(c, ctx, bufs, ctx.batch * oh, false, &|call, ws, rows, panels| {
        let Workspace { floats, segments } = ws;
        // Panel-major: one packed panel of B stays in cache while every row uses it.
        for p in panels {
            for u in rows.clone() {
                let (img, oy) = (u / oh, u % oh);
                for cols in pieces(ow, MR) {
                    tap_segments(&call.g, call.x, img, oy, &cols, floats, segments);
                    let c_off = ((img * oh + oy) * ow + cols.start) * n + p * NR;
                    // SAFETY: this thread alone writes these pixels x this panel of the output.
                    unsafe {
                        gemm_segments(
                            call.x,
                            floats,
                            segments,
                            cols.len(),
                            weights,
                            p,
                            call.out.get(),
                            call.out_len,
                            c_off,
                            n,
                            &call.e,
                        )?
                    };
                }
            }
        }
        Ok(())
    })
}

/// A stride-1 3x3 convolution by Winograd F(2x2, 3x3) ([`winograd`]), a block of output tiles
/// at a time: transform the block's input patches, 16 GEMMs, transform back through the
/// epilogue. Threads split the blocks or the output-channel panels, whichever divides more
/// evenly (with panels, each thread transforms the whole input block itself).
fn conv_winograd(c: &ConvOp, w: &WinogradWeights, ctx: &Ctx<'_>, bufs: &mut [AlignedBuf]) -> Result<()> {
    let (block, blocks) = c.winograd_blocks(w, ctx.batch);
    let (cin, cout, tile) = (c.geometry.in_channels, c.geometry.out_channels, w.tile());
    run_conv(c, ctx, bufs, blocks, true, &|call, ws, my_blocks, panels| {
        let total = tile.tile_count(&call.g);
        let channels = panels.start * NR..(panels.end * NR).min(cout);
        let (v, m) = ws.floats.split_at_mut(tile.positions() * block * cin);
        for b in my_blocks {
            let tiles = share(total, b, blocks);
            winograd::transform_input(call.x, &call.g, tile, tiles.clone(), v)?;
            winograd::multiply(v, w, tiles.len(), m, panels.clone())?;
            // SAFETY: this thread alone writes these tiles' pixels in these channels.
            unsafe { winograd::transform_output(m, &call.g, tile, tiles, channels.clone(), &call.e, call.out.get(), call.out_len)? };
        }
        Ok(())
    })
}
