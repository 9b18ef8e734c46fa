//! Convolution forward and both backward GEMMs on a pool of threads, on the packed GEMM's
//! micro-kernels: what a training step runs. Each has a direct-loop twin in
//! [`reference`](super::reference) that the property tests compare it with.
//!
//! Every output element is computed by one thread with `K` summed in one fixed order, and how
//! the work is cut depends on the shapes only, never on the thread count: results are the same
//! bits on 1 thread and on 8.
//!
//! - forward, `Y = X W`: im2col tiles of output pixels (none for a 1x1 stride-1 convolution),
//!   split over the threads by tiles or, when there are too few tiles, by panels of output
//!   channels;
//! - input gradient, `dX = col2im(dY Wᵀ)`: image by image, so the scatter of one image's patch
//!   gradients never meets another thread's (a 1x1 stride-1 convolution is one GEMM split by
//!   rows);
//! - kernel gradient, `dW = im2col(X)ᵀ dY`: patch rows by output channels, summed over the
//!   output pixels in groups fixed by the shape (each group's partial added in group order),
//!   `dY` packed and `im2col(X)ᵀ` gathered a block of pixels at a time.

use std::sync::{Mutex, PoisonError};

use super::backward::{check, col2im_add};
use super::geometry::{ConvGeometry, Padding, Padding2d, PoolGeometry, Window2d};
use super::im2col::im2col_unchecked;
use super::implicit::{pieces, tap_segments};
use super::packed_gemm::{gemm_packed_raw, gemm_packed_raw_col_major_a, gemm_segments, GemmEpilogue, PackedB, MR, NR};
use super::short_copy;
use crate::error::{Error, Result};
use crate::inference::pool::{parallel, share, SendPtr, ThreadPool};

/// Output pixels per group of the kernel gradient's partial sums (at least), at most
/// [`KERNEL_GRAD_MAX_GROUPS`] groups, and at most [`KERNEL_GRAD_PARTIAL_BYTES`] of partials.
const KERNEL_GRAD_GROUP_PIXELS: usize = 4096;
const KERNEL_GRAD_MAX_GROUPS: usize = 32;
const KERNEL_GRAD_PARTIAL_BYTES: usize = 32 << 20;
/// Output pixels gathered and multiplied at once in the kernel gradient (at most one `K` block;
/// fixed, not [`blocking`](super::packed_gemm::blocking)'s, because the partial sums it groups
/// fix the result's bits).
const KERNEL_GRAD_BLOCK: usize = super::packed_gemm::KC;
/// Patch rows of the kernel gradient gathered at once (a multiple of `MR`).
const KERNEL_GRAD_ROW_CHUNK: usize = 8 * MR;

/// Input channels from which a convolution reads its input in place (no im2col).
const IMPLICIT_MIN_CHANNELS: usize = 16;

/// Bytes of im2col tile (or of patch gradients) a thread fills before multiplying it.
const TILE_BYTES: usize = 256 << 10;

/// Elements per piece of the element-wise loops.
const ELEMENTWISE_CHUNK: usize = 1 << 14;

/// Buffers kept for reuse, at most this many.
const KEPT_BUFFERS: usize = 4096;

/// Threads for the training kernels, each with scratch space it keeps between calls, and a
/// store of buffers that training steps hand back and take again, so a steady-state step
/// allocates no new large buffer.
#[derive(Debug)]
pub struct Threads {
    pool: ThreadPool,
    scratch: Vec<Mutex<Vec<f32>>>,
    buffers: Mutex<Vec<Vec<f32>>>,
    partials: Mutex<Vec<f32>>,
}

impl Threads {
    /// `threads` threads (the caller's included; 0 means every core the OS reports).
    pub fn new(threads: usize) -> Result<Self> {
        let pool = ThreadPool::new(threads)?;
        let scratch = (0..pool.threads()).map(|_| Mutex::new(Vec::new())).collect();
        Ok(Threads {
            pool,
            scratch,
            buffers: Mutex::new(Vec::new()),
            partials: Mutex::new(Vec::new()),
        })
    }

    /// A buffer of `len` floats, reused if one large enough was handed back, else new. Its
    /// contents are unspecified: callers overwrite every element.
    ///
    /// Of the buffers large enough, the smallest (so that large buffers stay for large
    /// requests), then the one needing the fewest new elements written (a buffer handed back
    /// shorter than its capacity is zero-extended).
    pub(crate) fn take(&self, len: usize) -> Vec<f32> {
        let mut kept = self.buffers.lock().unwrap_or_else(PoisonError::into_inner);
        let best = kept
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len)
            .min_by_key(|(_, b)| (b.capacity(), len.saturating_sub(b.len())))
            .map(|(i, _)| i);
        let mut v = match best {
            Some(i) => kept.swap_remove(i),
            None => Vec::with_capacity(len),
        };
        // Only the tail beyond the old length is written here; the rest is left as it was.
        v.resize(len, 0.0);
        v
    }

    /// The buffer for [`conv2d_backward_kernel`]'s partial sums, as large as the last one
    /// handed back with [`Threads::give_partials`].
    pub(crate) fn take_partials(&self) -> Vec<f32> {
        std::mem::take(&mut *self.partials.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Keeps the partial sums' buffer for the next step.
    pub(crate) fn give_partials(&self, v: Vec<f32>) {
        *self.partials.lock().unwrap_or_else(PoisonError::into_inner) = v;
    }

    /// [`Threads::take`], zero-filled.
    pub(crate) fn take_zeroed(&self, len: usize) -> Vec<f32> {
        let mut v = self.take(len);
        v.fill(0.0);
        v
    }

    /// Hands a packed matrix's storage back for reuse.
    pub(crate) fn give_packed(&self, p: PackedB) {
        self.give(p.into_panels());
    }

    /// Hands a buffer back for reuse.
    pub(crate) fn give(&self, v: Vec<f32>) {
        if v.capacity() == 0 {
            return;
        }
        let mut kept = self.buffers.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.len() < KEPT_BUFFERS {
            kept.push(v);
        }
    }

    /// Runs `f(offset, piece)` over pieces of `out` on the threads (element-wise loops).
    pub(crate) fn elementwise(&self, out: &mut [f32], f: &(dyn Fn(usize, &mut [f32]) + Sync)) {
        let (len, ptr) = (out.len(), SendPtr(out.as_mut_ptr()));
        let pieces = len.div_ceil(ELEMENTWISE_CHUNK);
        let _ = self.for_each(pieces, &|i, _| {
            let at = i * ELEMENTWISE_CHUNK;
            let n = ELEMENTWISE_CHUNK.min(len - at);
            // SAFETY: each piece is handed to one call; it lies inside `out`.
            f(at, unsafe { std::slice::from_raw_parts_mut(ptr.get().add(at), n) });
            Ok(())
        });
    }

    /// Number of threads.
    pub fn count(&self) -> usize {
        self.pool.threads()
    }

    /// Runs `f(t, scratch of thread t)` on every thread; the first error wins.
    pub(crate) fn run(&self, f: &(dyn Fn(usize, &mut Vec<f32>) -> Result<()> + Sync)) -> Result<()> {
        parallel(&self.pool, &|t| {
            let mut ws = self.scratch[t].lock().unwrap_or_else(PoisonError::into_inner);
            f(t, &mut ws)
        })
    }

    /// Runs `f(i)` for every item `i` in `0..items`, each thread taking a contiguous share.
    pub(crate) fn for_each(&self, items: usize, f: &(dyn Fn(usize, &mut Vec<f32>) -> Result<()> + Sync)) -> Result<()> {
        let n = self.count();
        self.run(&|t, ws| share(items, t, n).try_for_each(|i| f(i, ws)))
    }
}

fn grow(ws: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if ws.len() < len {
        ws.resize(len, 0.0);
    }
    &mut ws[..len]
}

fn pointwise(g: &ConvGeometry) -> bool {
    g.window.kernel == [1, 1] && g.window.stride == [1, 1] && g.pad.is_zero()
}

/// Rows per tile for `k`-wide rows: what fits [`TILE_BYTES`], a multiple of `MR`, at least
/// 8 `MR`, at most `m`.
fn tile_rows(k: usize, m: usize) -> usize {
    ((TILE_BYTES / (4 * k.max(1))) / MR * MR).max(8 * MR).min(m.max(1))
}

/// `W` (HWIO, `K x N`) packed for [`conv2d_forward`].
pub fn pack_kernel(kernel: &[f32], g: &ConvGeometry) -> Result<PackedB> {
    check("conv2d kernel", &[("kernel", g.kernel_len(), kernel.len())])?;
    PackedB::pack(kernel, g.patch_len(), g.out_channels, g.out_channels)
}

/// [`pack_kernel`] into a buffer from the threads' store (hand it back with
/// [`Threads::give_packed`]).
pub(crate) fn pack_kernel_reused(threads: &Threads, kernel: &[f32], g: &ConvGeometry) -> Result<PackedB> {
    check("conv2d kernel", &[("kernel", g.kernel_len(), kernel.len())])?;
    let buffer = threads.take(g.out_channels.div_ceil(NR) * NR * g.patch_len());
    PackedB::pack_into(kernel, g.patch_len(), g.out_channels, g.out_channels, buffer)
}

/// `Wᵀ` (`N x K`), packed (in buffers from the threads' store).
fn pack_kernel_transposed(threads: &Threads, kernel: &[f32], g: &ConvGeometry) -> Result<PackedB> {
    let (k, n) = (g.patch_len(), g.out_channels);
    let mut t = threads.take(k * n);
    for (r, row) in kernel.chunks_exact(n.max(1)).enumerate() {
        for (o, &v) in row.iter().enumerate() {
            t[o * k + r] = v;
        }
    }
    let packed = PackedB::pack_into(&t, n, k, k, threads.take(k.div_ceil(NR) * NR * n));
    threads.give(t);
    packed
}

/// For a stride-1 convolution, the input gradient is itself a stride-1 convolution: of the
/// output gradient, by the kernel turned 180 degrees with its input and output channels
/// swapped, padded by `(k - 1) * dilation - pad` on each side. Its geometry and (HWIO) kernel,
/// or `None` when the padding exceeds the window (the scatter path handles that).
fn transposed_convolution(threads: &Threads, g: &ConvGeometry, kernel: &[f32]) -> Result<Option<(ConvGeometry, Vec<f32>)>> {
    let [kh, kw] = g.window.kernel;
    let [sh_, sw_] = [(kh - 1) * g.window.dilation[0], (kw - 1) * g.window.dilation[1]];
    let p = g.pad;
    if g.window.stride != [1, 1] || p.top > sh_ || p.bottom > sh_ || p.left > sw_ || p.right > sw_ {
        return Ok(None);
    }
    let pad = Padding2d {
        top: sh_ - p.top,
        bottom: sh_ - p.bottom,
        left: sw_ - p.left,
        right: sw_ - p.right,
    };
    let window = Window2d {
        padding: Padding::Explicit(pad),
        ..g.window
    };
    let t = ConvGeometry::new([g.batch, g.out_hw[0], g.out_hw[1], g.out_channels], g.in_channels, window)?;
    if t.out_hw != g.in_hw {
        return Ok(None);
    }
    let (cin, cout) = (g.in_channels, g.out_channels);
    // (Every element is written below.)
    let mut flipped = threads.take(kernel.len());
    for ky in 0..kh {
        for kx in 0..kw {
            let src = ((kh - 1 - ky) * kw + (kw - 1 - kx)) * cin * cout;
            let dst = (ky * kw + kx) * cout * cin;
            for i in 0..cin {
                for o in 0..cout {
                    flipped[dst + o * cin + i] = kernel[src + i * cout + o];
                }
            }
        }
    }
    Ok(Some((t, flipped)))
}

/// NHWC convolution `output = input * W` with `W` from [`pack_kernel`]; `output` is
/// write-only.
pub fn conv2d_forward(threads: &Threads, input: &[f32], g: &ConvGeometry, kernel: &PackedB, output: &mut [f32]) -> Result<()> {
    check(
        "conv2d forward",
        &[
            ("input", g.input_len(), input.len()),
            ("output", g.output_len(), output.len()),
            ("packed kernel", g.patch_len() * g.out_channels, kernel.k() * kernel.n()),
        ],
    )?;
    let (m, k, n) = (g.out_pixels(), g.patch_len(), g.out_channels);
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        output.fill(0.0);
        return Ok(());
    }
    let (out, out_len) = (SendPtr(output.as_mut_ptr()), output.len());
    let e = GemmEpilogue::default();
    let (panels, nt) = (kernel.panels(), threads.count());
    if pointwise(g) {
        let units = m.div_ceil(MR);
        return threads.run(&|t, _| {
            let u = share(units, t, nt);
            let rows = u.start * MR..(u.end * MR).min(m);
            // SAFETY: each thread writes its own rows of the output.
            unsafe { gemm_packed_raw(input, k, 0, kernel, out.get(), out_len, n, rows, 0..panels, &e) }
        });
    }
    // (Not on the portable kernel, which multiplies whole blocks through `matrixmultiply`.)
    if g.in_channels >= IMPLICIT_MIN_CHANNELS && super::packed_gemm::gemm_kernel() != super::packed_gemm::GemmKernel::Portable {
        return conv2d_forward_implicit(threads, input, g, kernel, output);
    }
    let tile = tile_rows(k, m);
    let tiles = m.div_ceil(tile);
    // Too few tiles to share evenly: every thread fills every tile and multiplies its panels.
    let by_panels = tiles < 4 * nt && panels >= nt;
    threads.run(&|t, ws| {
        let (my_tiles, my_panels) = if by_panels {
            (0..tiles, share(panels, t, nt))
        } else {
            (share(tiles, t, nt), 0..panels)
        };
        if my_panels.is_empty() {
            return Ok(());
        }
        for ti in my_tiles {
            let rows = ti * tile..((ti + 1) * tile).min(m);
            let a = grow(ws, rows.len() * k);
            im2col_unchecked(input, g, rows.start, rows.len(), a);
            // SAFETY: each thread writes its own tiles (or panels) of the output.
            unsafe { gemm_packed_raw(a, k, rows.start, kernel, out.get(), out_len, n, rows, my_panels.clone(), &e)? };
        }
        Ok(())
    })
}

/// [`conv2d_forward`] without im2col: each micro-tile of up to `MR` output pixels of one output
/// row multiplies, tap by tap, the input pixels under it in place. Threads take output rows
/// (or, with few rows, panels of output channels).
fn conv2d_forward_implicit(threads: &Threads, input: &[f32], g: &ConvGeometry, kernel: &PackedB, output: &mut [f32]) -> Result<()> {
    let ([oh, ow], n) = (g.out_hw, g.out_channels);
    let (units, panels, nt) = (g.batch * oh, kernel.panels(), threads.count());
    let by_panels = units < 4 * nt && panels >= nt;
    let (out, out_len) = (SendPtr(output.as_mut_ptr()), output.len());
    let e = GemmEpilogue::default();
    let taps = g.window.kernel[0] * g.window.kernel[1];
    threads.run(&|t, ws| {
        let (rows, my_panels) = if by_panels {
            (0..units, share(panels, t, nt))
        } else {
            (share(units, t, nt), 0..panels)
        };
        let gathered = grow(ws, taps * MR * g.in_channels);
        let mut segments = Vec::with_capacity(taps);
        for u in rows {
            let (img, oy) = (u / oh, u % oh);
            for cols in pieces(ow, MR) {
                tap_segments(g, input, img, oy, &cols, gathered, &mut segments);
                let c_off = ((img * oh + oy) * ow + cols.start) * n;
                for p in my_panels.clone() {
                    // SAFETY: this thread alone writes these pixels x this panel of the output.
                    unsafe {
                        gemm_segments(
                            input,
                            gathered,
                            &segments,
                            cols.len(),
                            kernel,
                            p,
                            out.get(),
                            out_len,
                            c_off + p * NR,
                            n,
                            &e,
                        )?
                    };
                }
            }
        }
        Ok(())
    })
}

/// The input gradient `grad_in = col2im(grad_out Wᵀ)` of a convolution by the HWIO `kernel`;
/// `grad_in` is overwritten. A stride-1 convolution's is computed as a convolution (see
/// `transposed_convolution`), any other's as GEMMs whose rows are scattered back.
pub fn conv2d_backward_input(threads: &Threads, grad_out: &[f32], g: &ConvGeometry, kernel: &[f32], grad_in: &mut [f32]) -> Result<()> {
    check(
        "conv2d backward (input)",
        &[
            ("output gradient", g.output_len(), grad_out.len()),
            ("input gradient", g.input_len(), grad_in.len()),
            ("kernel", g.kernel_len(), kernel.len()),
        ],
    )?;
    if g.out_pixels() > 0 && !pointwise(g) {
        if let Some((t, flipped)) = transposed_convolution(threads, g, kernel)? {
            let packed = pack_kernel_reused(threads, &flipped, &t)?;
            threads.give(flipped);
            let result = conv2d_forward(threads, grad_out, &t, &packed, grad_in);
            threads.give_packed(packed);
            return result;
        }
    }
    let packed_t = pack_kernel_transposed(threads, kernel, g)?;
    let result = backward_input_gemm(threads, grad_out, g, &packed_t, grad_in);
    threads.give_packed(packed_t);
    result
}

/// [`conv2d_backward_input`] as `col2im(grad_out Wᵀ)`, with `kernel_t` = `Wᵀ` packed.
fn backward_input_gemm(threads: &Threads, grad_out: &[f32], g: &ConvGeometry, kernel_t: &PackedB, grad_in: &mut [f32]) -> Result<()> {
    let (k, n) = (g.patch_len(), g.out_channels);
    if k == 0 || n == 0 || g.out_pixels() == 0 {
        grad_in.fill(0.0);
        return Ok(());
    }
    let (panels, nt) = (kernel_t.panels(), threads.count());
    let e = GemmEpilogue::default();
    let (dx, dx_len) = (SendPtr(grad_in.as_mut_ptr()), grad_in.len());
    if pointwise(g) {
        let m = g.out_pixels();
        let units = m.div_ceil(MR);
        return threads.run(&|t, _| {
            let u = share(units, t, nt);
            let rows = u.start * MR..(u.end * MR).min(m);
            // SAFETY: each thread writes its own rows of the input gradient.
            unsafe { gemm_packed_raw(grad_out, n, 0, kernel_t, dx.get(), dx_len, k, rows, 0..panels, &e) }
        });
    }
    let per_out = g.out_hw[0] * g.out_hw[1];
    let one = ConvGeometry { batch: 1, ..*g };
    let tile = tile_rows(k, per_out);
    per_image(threads, g.batch, grad_in, &|img, dx_img, ws| {
        dx_img.fill(0.0);
        let dy_img = &grad_out[img * per_out * n..(img + 1) * per_out * n];
        let mut first = 0;
        while first < per_out {
            let rows = tile.min(per_out - first);
            let cols = grow(ws, rows * k);
            let (ptr, len) = (cols.as_mut_ptr(), cols.len());
            // SAFETY: `cols` is this thread's scratch, holding `rows x k` floats.
            unsafe { gemm_packed_raw(&dy_img[first * n..], n, 0, kernel_t, ptr, len, k, 0..rows, 0..panels, &e)? };
            col2im_add(cols, &one, first, rows, dx_img);
            first += rows;
        }
        Ok(())
    })
}

/// The kernel gradient `grad_kernel = im2col(input)ᵀ grad_out` (HWIO like the kernel,
/// overwritten): a GEMM whose rows are the patch entries (`K`, a multiple of the micro-tile for
/// every 3x3 convolution of 16 or more channels), whose columns are the output channels (`N`, so
/// a 16-channel layer fills the AVX2 kernel's 16 columns) and whose depth is the output pixels.
///
/// The pixels are cut into groups fixed by the shape, each summed into its own partial
/// gradient; a group's pixels are taken a block at a time: the block of `grad_out` packed as
/// `B`, the block's patches gathered transposed (`im2col(input)ᵀ`, patch rows by pixels) as `A`,
/// a chunk of patch rows at a time so it stays in cache. `scratch` holds the partials (grown and
/// kept for the next call).
pub fn conv2d_backward_kernel(
    threads: &Threads,
    input: &[f32],
    g: &ConvGeometry,
    grad_out: &[f32],
    grad_kernel: &mut [f32],
    scratch: &mut Vec<f32>,
) -> Result<()> {
    check(
        "conv2d backward (kernel)",
        &[
            ("input", g.input_len(), input.len()),
            ("output gradient", g.output_len(), grad_out.len()),
            ("kernel gradient", g.kernel_len(), grad_kernel.len()),
        ],
    )?;
    let (m, k, n) = (g.out_pixels(), g.patch_len(), g.out_channels);
    if m == 0 || k == 0 || n == 0 {
        grad_kernel.fill(0.0);
        return Ok(());
    }
    let groups = (m / KERNEL_GRAD_GROUP_PIXELS)
        .clamp(1, KERNEL_GRAD_MAX_GROUPS)
        .min((KERNEL_GRAD_PARTIAL_BYTES / (4 * n * k)).max(1));
    let chunks = k.div_ceil(KERNEL_GRAD_ROW_CHUNK);
    // Few groups: each unit also takes only one chunk of patch rows, so there is work for
    // every thread (decided by the shape, not by the thread count).
    let chunk_units = if groups >= KERNEL_GRAD_MAX_GROUPS / 4 { 1 } else { chunks };
    let partials = grow(scratch, groups * k * n);
    let (part_ptr, part_len) = (SendPtr(partials.as_mut_ptr()), partials.len());
    let panels = n.div_ceil(NR);
    threads.for_each(groups * chunk_units, &|u, ws| {
        let (group, my_chunks) = (u / chunk_units, share(chunks, u % chunk_units, chunk_units));
        let pixels = share(m, group, groups);
        let base = group * k * n;
        // `B` in this thread's scratch, `A` in a buffer from the store (both kept for reuse).
        let mut packed = std::mem::take(ws);
        let mut gathered = threads.take(KERNEL_GRAD_ROW_CHUNK.min(k) * KERNEL_GRAD_BLOCK);
        let mut block = pixels.start;
        let mut result = Ok(());
        while block < pixels.end && result.is_ok() {
            let rows = KERNEL_GRAD_BLOCK.min(pixels.end - block);
            let b = PackedB::pack_into(&grad_out[block * n..(block + rows) * n], rows, n, n, packed)?;
            for chunk in my_chunks.clone() {
                let r0 = chunk * KERNEL_GRAD_ROW_CHUNK;
                let r1 = (r0 + KERNEL_GRAD_ROW_CHUNK).min(k);
                let a = &mut gathered[..(r1 - r0) * rows];
                gather_patches(input, g, block, rows, r0..r1, a);
                // SAFETY: rows `r0..r1` of this group's partial (`k x n` at `base`) are this
                // unit's alone, and lie inside `partials`.
                result = unsafe {
                    let (c, c_len) = (part_ptr.get().add(base), part_len - base);
                    gemm_packed_raw_col_major_a(a, r1 - r0, r0, &b, c, c_len, n, r0..r1, 0..panels, block != pixels.start)
                };
                if result.is_err() {
                    break;
                }
            }
            packed = b.into_panels();
            block += rows;
        }
        *ws = packed;
        threads.give(gathered);
        result
    })?;
    // The partials added in group order.
    let partials: &[f32] = partials;
    let (first, rest) = partials.split_at(k * n);
    grad_kernel.copy_from_slice(first);
    for part in rest.chunks_exact(k * n) {
        grad_kernel.iter_mut().zip(part).for_each(|(d, p)| *d += p);
    }
    Ok(())
}

/// What [`per_image`] runs: `f(image, its part of the output, the thread's scratch)`.
type PerImage<'a> = dyn Fn(usize, &mut [f32], &mut Vec<f32>) -> Result<()> + Sync + 'a;

/// Runs `f` for every image in `0..batch` on the threads, `out` cut into `batch` equal parts.
fn per_image(threads: &Threads, batch: usize, out: &mut [f32], f: &PerImage<'_>) -> Result<()> {
    let per = out.len() / batch.max(1);
    let ptr = SendPtr(out.as_mut_ptr());
    threads.for_each(batch, &|img, ws| {
        // SAFETY: `img < batch`, so part `img` (`per` floats at `img * per`) lies inside `out`;
        // the parts are disjoint and each is handed to one call.
        f(img, unsafe { std::slice::from_raw_parts_mut(ptr.get().add(img * per), per) }, ws)
    })
}

/// Max or average pooling ([`super::max_pool2d`] / [`super::avg_pool2d`]), the images shared
/// among the threads; `output` is overwritten.
pub fn pool2d_forward(threads: &Threads, input: &[f32], g: &PoolGeometry, max: bool, output: &mut [f32]) -> Result<()> {
    check(
        "pool2d forward",
        &[("input", g.input_len(), input.len()), ("output", g.output_len(), output.len())],
    )?;
    let one = PoolGeometry { batch: 1, ..*g };
    let per_in = one.input_len();
    per_image(threads, g.batch, output, &|img, y, _| {
        let x = &input[img * per_in..(img + 1) * per_in];
        if max {
            super::max_pool2d(x, &one, y)
        } else {
            super::avg_pool2d(x, &one, y)
        }
    })
}

/// The input gradient of [`pool2d_forward`] ([`super::backward::max_pool2d_backward`] /
/// [`super::backward::avg_pool2d_backward`]), the images shared among the threads;
/// `grad_in` is overwritten.
pub fn pool2d_backward(threads: &Threads, input: &[f32], g: &PoolGeometry, max: bool, grad_out: &[f32], grad_in: &mut [f32]) -> Result<()> {
    check(
        "pool2d backward",
        &[
            ("input", g.input_len(), input.len()),
            ("output gradient", g.output_len(), grad_out.len()),
            ("input gradient", g.input_len(), grad_in.len()),
        ],
    )?;
    let one = PoolGeometry { batch: 1, ..*g };
    let (per_in, per_out) = (one.input_len(), one.output_len());
    per_image(threads, g.batch, grad_in, &|img, dxi, _| {
        let dyi = &grad_out[img * per_out..(img + 1) * per_out];
        if max {
            super::backward::max_pool2d_backward(&input[img * per_in..(img + 1) * per_in], &one, dyi, dxi)
        } else {
            super::backward::avg_pool2d_backward(&one, dyi, dxi)
        }
    })
}

/// Writes patch entries `patch` of the im2col rows of output pixels `first..first + pixels`
/// into `a`, row-major `pixels x patch.len()` (padding taps zero): `im2col(input)ᵀ`'s rows
/// `patch`, column-major.
fn gather_patches(input: &[f32], g: &ConvGeometry, first: usize, pixels: usize, patch: std::ops::Range<usize>, a: &mut [f32]) {
    let [ih, iw] = g.in_hw;
    let [oh, ow] = g.out_hw;
    let kw = g.window.kernel[1];
    let ([sh, sw], [dh, dw]) = (g.window.stride, g.window.dilation);
    let cin = g.in_channels;
    let width = patch.len();
    // The runs of one tap: (tap row offset, tap column offset, first channel, channels,
    // first column of `a`).
    let mut pieces = Vec::new();
    let mut j = patch.start;
    while j < patch.end {
        let (tap, ch) = (j / cin, j % cin);
        let len = (cin - ch).min(patch.end - j);
        pieces.push(((tap / kw) * dh, (tap % kw) * dw, ch, len, j - patch.start));
        j += len;
    }
    // The output pixel's (image, row, column), stepped along rather than divided out.
    let (mut img, mut oy, mut ox) = (first / (oh * ow), (first / ow) % oh, first % ow);
    for row in a.chunks_exact_mut(width).take(pixels) {
        let image = &input[img * ih * iw * cin..(img + 1) * ih * iw * cin];
        let (y0, x0) = (oy * sh, ox * sw);
        for &(ky, kx, ch, len, at) in &pieces {
            let iy = (y0 + ky).wrapping_sub(g.pad.top);
            let ix = (x0 + kx).wrapping_sub(g.pad.left);
            let dst = &mut row[at..at + len];
            if iy < ih && ix < iw {
                let src = (iy * iw + ix) * cin + ch;
                short_copy::copy(dst, &image[src..src + len]);
            } else {
                short_copy::zero(dst);
            }
        }
        ox += 1;
        if ox == ow {
            ox = 0;
            oy += 1;
            if oy == oh {
                oy = 0;
                img += 1;
            }
        }
    }
}

/// The BatchNorm passes over one chunk of `c`-channel pixel rows, as functions of plain
/// slices so that the channel loops vectorise (written as closures over the callers' vectors
/// they compiled to scalar code that reloaded every pointer per element).
mod bn_rows {
    /// `s[ch] += x[p, ch]` over the rows.
    pub(super) fn sums(x: &[f32], s: &mut [f64]) {
        for px in x.chunks_exact(s.len()) {
            s.iter_mut().zip(px).for_each(|(s, &v)| *s += v as f64);
        }
    }

    /// `s[ch] += (x[p, ch] - mean[ch])^2` over the rows.
    pub(super) fn squared_deviations(x: &[f32], mean: &[f64], s: &mut [f64]) {
        for px in x.chunks_exact(s.len()) {
            s.iter_mut().zip(px).zip(mean).for_each(|((s, &v), m)| {
                let d = v as f64 - m;
                *s += d * d;
            });
        }
    }

    /// `y = (x - mean) * scale + beta`, then ReLU if `RELU`.
    pub(super) fn normalise<const RELU: bool>(x: &[f32], mean: &[f32], scale: &[f32], beta: &[f32], y: &mut [f32]) {
        let c = mean.len();
        for (d, px) in y.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
            let params = mean.iter().zip(scale).zip(beta);
            for ((o, &v), ((&m, &k), &b)) in d.iter_mut().zip(px).zip(params) {
                let t = (v - m) * k + b;
                *o = if RELU { t.max(0.0) } else { t };
            }
        }
    }

    /// The gradient reaching the BatchNorm's output: `g`, or 0 where the fused ReLU's output
    /// (recomputed with the forward's arithmetic) was not positive.
    #[inline(always)]
    fn reaching<const RELU: bool>(g: f32, v: f32, m: f32, k: f32, b: f32) -> f32 {
        if RELU && (v - m) * k + b <= 0.0 {
            0.0
        } else {
            g
        }
    }

    /// `s_dy[ch] += d`, `s_dyx[ch] += d * x_hat` over the rows (`d` as [`reaching`] gives it).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gradient_sums<const RELU: bool>(
        x: &[f32],
        dy: &[f32],
        mean: &[f32],
        inv: &[f32],
        scale: &[f32],
        beta: &[f32],
        s_dy: &mut [f64],
        s_dyx: &mut [f64],
    ) {
        let c = mean.len();
        for (px, dpx) in x.chunks_exact(c).zip(dy.chunks_exact(c)) {
            let params = mean.iter().zip(inv).zip(scale.iter().zip(beta));
            let sums = s_dy.iter_mut().zip(s_dyx.iter_mut());
            for (((&v, &g), ((&m, &i), (&k, &b))), (sd, sx)) in px.iter().zip(dpx).zip(params).zip(sums) {
                let d = reaching::<RELU>(g, v, m, k, b);
                *sd += d as f64;
                *sx += (d * ((v - m) * i)) as f64;
            }
        }
    }

    /// The per-channel terms of the input gradient.
    pub(super) struct GradientTerms<'a> {
        pub(super) mean: &'a [f32],
        pub(super) inv: &'a [f32],
        pub(super) scale: &'a [f32],
        pub(super) beta: &'a [f32],
        /// `gamma * inv_std`.
        pub(super) k: &'a [f32],
        pub(super) mean_dy: &'a [f32],
        pub(super) mean_dyx: &'a [f32],
    }

    /// `dx = k * (d - mean(d) - x_hat * mean(d * x_hat))` over the rows.
    pub(super) fn input_gradient<const RELU: bool>(x: &[f32], dy: &[f32], t: &GradientTerms<'_>, dx: &mut [f32]) {
        let c = t.mean.len();
        for ((o, px), dpx) in dx.chunks_exact_mut(c).zip(x.chunks_exact(c)).zip(dy.chunks_exact(c)) {
            let norm = t.mean.iter().zip(t.inv).zip(t.scale.iter().zip(t.beta));
            let terms = t.k.iter().zip(t.mean_dy).zip(t.mean_dyx);
            for ((((o, &v), &g), ((&m, &i), (&k, &b))), ((&kk, &md), &mx)) in o.iter_mut().zip(px).zip(dpx).zip(norm).zip(terms) {
                let d = reaching::<RELU>(g, v, m, k, b);
                *o = kk * (d - md - (v - m) * i * mx);
            }
        }
    }
}

/// Pixels per partial sum of the BatchNorm reductions (a constant, so the sums are added in
/// the same order whatever the thread count).
const STATS_CHUNK: usize = 1024;

/// A pointer to per-chunk results that threads write disjoint elements of.
struct Slots<T>(*mut T);
// SAFETY: every user writes only the elements of the chunks it owns.
unsafe impl<T> Sync for Slots<T> {}
impl<T> Slots<T> {
    fn get(&self) -> *mut T {
        self.0
    }
}

/// Per-channel sums over the pixels of `c`-channel rows: `f(pixel row, partial sums)` adds
/// one chunk's rows into its partial (`width` sums per channel), and the partials are added
/// in chunk order, in f64.
fn channel_sums(
    threads: &Threads,
    pixels: usize,
    c: usize,
    width: usize,
    f: &(dyn Fn(std::ops::Range<usize>, &mut [f64]) + Sync),
) -> Result<Vec<f64>> {
    let chunks = pixels.div_ceil(STATS_CHUNK);
    let mut partial = vec![0.0f64; chunks * c * width];
    let slots = Slots(partial.as_mut_ptr());
    threads.for_each(chunks, &|ch, _| {
        // SAFETY: chunk `ch`'s `c * width` partial sums are written by this call alone.
        let out = unsafe { std::slice::from_raw_parts_mut(slots.get().add(ch * c * width), c * width) };
        f(ch * STATS_CHUNK..((ch + 1) * STATS_CHUNK).min(pixels), out);
        Ok(())
    })?;
    let mut total = vec![0.0f64; c * width];
    for p in partial.chunks_exact(c * width) {
        total.iter_mut().zip(p).for_each(|(t, v)| *t += v);
    }
    Ok(total)
}

/// A training-mode BatchNorm's batch statistics and the per-channel map its forward applied
/// (`y = (x - mean) * scale + beta`, then ReLU if fused).
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNormStats {
    /// Batch mean per channel.
    pub mean: Vec<f32>,
    /// Biased batch variance per channel (what the batch was normalised with).
    pub variance: Vec<f32>,
    /// `gamma / sqrt(variance + epsilon)` per channel, as the forward multiplied by it.
    pub scale: Vec<f32>,
    /// Whether the forward applied ReLU to its output (a BatchNorm and the ReLU after it run
    /// as one pass; the backward then masks `dy` where the output was not positive).
    pub relu: bool,
}

/// Training-mode BatchNorm over the last axis of `x` (`c` channels), with a ReLU after it when
/// `relu`: writes `y` and returns the batch statistics (two passes over `x`, f64 sums, then
/// the normalising pass).
pub fn batch_norm_forward(
    threads: &Threads,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    epsilon: f32,
    relu: bool,
    y: &mut [f32],
) -> Result<BatchNormStats> {
    let c = gamma.len();
    if c == 0 || !x.len().is_multiple_of(c) || beta.len() != c || y.len() != x.len() {
        return Err(Error::shape(
            "BatchNorm",
            format!("whole {c}-channel pixels, {c} offsets and an output of the input's size"),
            format!("{} values, {} offsets, an output of {}", x.len(), beta.len(), y.len()),
        ));
    }
    let pixels = x.len() / c;
    let count = pixels.max(1) as f64;
    let sums = channel_sums(threads, pixels, c, 1, &|rows, s| bn_rows::sums(&x[rows.start * c..rows.end * c], s))?;
    let mean: Vec<f64> = sums.iter().map(|s| s / count).collect();
    let sq = channel_sums(threads, pixels, c, 1, &|rows, s| {
        bn_rows::squared_deviations(&x[rows.start * c..rows.end * c], &mean, s)
    })?;
    let variance: Vec<f64> = sq.iter().map(|s| s / count).collect();
    let stats = BatchNormStats {
        mean: mean.iter().map(|&m| m as f32).collect(),
        variance: variance.iter().map(|&v| v as f32).collect(),
        scale: variance
            .iter()
            .zip(gamma)
            .map(|(v, &g)| (g as f64 / (v + epsilon as f64).sqrt()) as f32)
            .collect(),
        relu,
    };
    let (mean32, scale) = (&stats.mean, &stats.scale);
    let (out, chunks) = (Slots(y.as_mut_ptr()), pixels.div_ceil(STATS_CHUNK));
    threads.for_each(chunks, &|ch, _| {
        let rows = ch * STATS_CHUNK..((ch + 1) * STATS_CHUNK).min(pixels);
        // SAFETY: each chunk's pixels are written by one call; the range is inside `y`.
        let dst = unsafe { std::slice::from_raw_parts_mut(out.get().add(rows.start * c), rows.len() * c) };
        let src = &x[rows.start * c..rows.end * c];
        if relu {
            bn_rows::normalise::<true>(src, mean32, scale, beta, dst);
        } else {
            bn_rows::normalise::<false>(src, mean32, scale, beta, dst);
        }
        Ok(())
    })?;
    Ok(stats)
}

/// Training-mode BatchNorm backward with the statistics of [`batch_norm_forward`] (and the
/// same `beta`): writes `dx` and returns `(dgamma, dbeta)`. With `d = dy` (masked to where the
/// forward's output was positive when it applied ReLU, the mask recomputed from `x` with the
/// forward's own arithmetic), `x_hat = (x - mean) * inv_std`, `dgamma = sum(d * x_hat)`,
/// `dbeta = sum(d)` and `dx = gamma * inv_std * (d - mean(d) - x_hat * mean(d * x_hat))`.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward(
    threads: &Threads,
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    beta: &[f32],
    stats: &BatchNormStats,
    epsilon: f32,
    dx: &mut [f32],
) -> Result<(Vec<f32>, Vec<f32>)> {
    let c = gamma.len();
    let BatchNormStats {
        mean,
        variance,
        scale,
        relu,
    } = stats;
    let counts = [mean.len(), variance.len(), scale.len(), beta.len()];
    if c == 0 || !x.len().is_multiple_of(c) || dy.len() != x.len() || dx.len() != x.len() || counts.iter().any(|&n| n != c) {
        return Err(Error::shape(
            "BatchNorm backward",
            format!("whole {c}-channel pixels, gradients of the input's size and {c} statistics and offsets"),
            format!(
                "{} values, gradients of {} and {}, {:?} statistics and offsets",
                x.len(),
                dy.len(),
                dx.len(),
                counts
            ),
        ));
    }
    let pixels = x.len() / c;
    let inv: Vec<f32> = variance
        .iter()
        .map(|&v| (1.0 / (v as f64 + epsilon as f64).sqrt()) as f32)
        .collect();
    let relu = *relu;
    let sums = channel_sums(threads, pixels, c, 2, &|rows, s| {
        let (s_dy, s_dyx) = s.split_at_mut(c);
        let span = rows.start * c..rows.end * c;
        let (x, dy) = (&x[span.clone()], &dy[span]);
        if relu {
            bn_rows::gradient_sums::<true>(x, dy, mean, &inv, scale, beta, s_dy, s_dyx);
        } else {
            bn_rows::gradient_sums::<false>(x, dy, mean, &inv, scale, beta, s_dy, s_dyx);
        }
    })?;
    let (sum_dy, sum_dyx) = sums.split_at(c);
    let n = pixels.max(1) as f64;
    let k: Vec<f32> = gamma.iter().zip(&inv).map(|(&g, &i)| g * i).collect();
    let mdy: Vec<f32> = sum_dy.iter().map(|&s| (s / n) as f32).collect();
    let mdx: Vec<f32> = sum_dyx.iter().map(|&s| (s / n) as f32).collect();
    let (out, chunks) = (Slots(dx.as_mut_ptr()), pixels.div_ceil(STATS_CHUNK));
    threads.for_each(chunks, &|chunk, _| {
        let rows = chunk * STATS_CHUNK..((chunk + 1) * STATS_CHUNK).min(pixels);
        let span = rows.start * c..rows.end * c;
        // SAFETY: each chunk's pixels are written by one call; the range is inside `dx`.
        let dst = unsafe { std::slice::from_raw_parts_mut(out.get().add(span.start), span.len()) };
        let (x, dy) = (&x[span.clone()], &dy[span]);
        let per_channel = bn_rows::GradientTerms {
            mean,
            inv: &inv,
            scale,
            beta,
            k: &k,
            mean_dy: &mdy,
            mean_dyx: &mdx,
        };
        if relu {
            bn_rows::input_gradient::<true>(x, dy, &per_channel, dst);
        } else {
            bn_rows::input_gradient::<false>(x, dy, &per_channel, dst);
        }
        Ok(())
    })?;
    Ok((
        sum_dyx.iter().map(|&v| v as f32).collect(),
        sum_dy.iter().map(|&v| v as f32).collect(),
    ))
}
