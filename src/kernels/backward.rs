//! Gradients of the convolution and pooling kernels, for training: the input gradient and
//! the weight gradient of a convolution as GEMMs over bounded tiles of output pixels, and the
//! pooling gradients. Each has a direct-loop twin in [`reference`](super::reference) that the
//! property tests compare it with.
//!
//! For `y = conv(x, W)` with the im2col matrix `X` (`pixels x K`, `K = kh * kw * in`) and `W`
//! as `K x N`, `Y = X W`, so
//!
//! - `dW = Xᵀ dY` (summed over the tiles of output pixels), and
//! - `dX = col2im(dY Wᵀ)`: each row of `dY Wᵀ` is the gradient of one output pixel's patch, added
//!   back onto the input pixels it was read from (padding taps are dropped).

use ndarray::{ArrayView2, ArrayViewMut2};

use super::conv::tile_rows;
use super::gemm::sgemm;
use super::geometry::{ConvGeometry, PoolGeometry};
use super::im2col::im2col_unchecked;
use super::pool::window_cells;
use crate::error::{Error, Result};

/// Each `(name, expected, found)` length must match, else an [`Error::Shape`] naming it.
pub(crate) fn check(what: &str, pairs: &[(&str, usize, usize)]) -> Result<()> {
    for &(name, want, got) in pairs {
        if want != got {
            return Err(Error::shape(what, format!("{name} of {want} elements"), format!("{got}")));
        }
    }
    Ok(())
}

fn view<'a>(data: &'a [f32], rows: usize, cols: usize) -> Result<ArrayView2<'a, f32>> {
    ArrayView2::from_shape((rows, cols), data).map_err(|e| Error::shape("conv2d backward", format!("{rows} x {cols}"), e.to_string()))
}

fn view_mut<'a>(data: &'a mut [f32], rows: usize, cols: usize) -> Result<ArrayViewMut2<'a, f32>> {
    ArrayViewMut2::from_shape((rows, cols), data).map_err(|e| Error::shape("conv2d backward", format!("{rows} x {cols}"), e.to_string()))
}

/// Adds the patch gradients `cols` (`rows x K`, output pixels `first..first + rows`) back onto
/// the input pixels they were read from: the inverse scatter of `im2col`.
pub(crate) fn col2im_add(cols: &[f32], g: &ConvGeometry, first: usize, rows: usize, grad_in: &mut [f32]) {
    let [ih, iw] = g.in_hw;
    let [oh, ow] = g.out_hw;
    let kw = g.window.kernel[1];
    let [sh, sw] = g.window.stride;
    let [dh, dw] = g.window.dilation;
    let c = g.in_channels;
    let k = g.patch_len();
    let per_image = oh * ow;
    for (r, row) in cols[..rows * k].chunks_exact(k).enumerate() {
        let p = first + r;
        let n = p / per_image;
        let oy = (p % per_image) / ow;
        let ox = p % ow;
        for (ky, taps) in row.chunks_exact(kw * c).enumerate() {
            let iy = (oy * sh + ky * dh).wrapping_sub(g.pad.top);
            if iy >= ih {
                continue;
            }
            for (kx, src) in taps.chunks_exact(c).enumerate() {
                let ix = (ox * sw + kx * dw).wrapping_sub(g.pad.left);
                if ix < iw {
                    let at = ((n * ih + iy) * iw + ix) * c;
                    grad_in[at..at + c].iter_mut().zip(src).for_each(|(d, s)| *d += s);
                }
            }
        }
    }
}

/// Runs `f(first, rows, tile)` over the output pixels `0..g.out_pixels()` in tiles of patch
/// rows, `tile` being `workspace` grown to `rows * g.patch_len()` floats (and kept for reuse).
fn for_each_tile(g: &ConvGeometry, workspace: &mut Vec<f32>, mut f: impl FnMut(usize, usize, &mut [f32]) -> Result<()>) -> Result<()> {
    let (m, k) = (g.out_pixels(), g.patch_len());
    if m == 0 || k == 0 {
        return Ok(());
    }
    let tile = tile_rows(g).clamp(1, m);
    if workspace.len() < tile * k {
        workspace.resize(tile * k, 0.0);
    }
    let mut first = 0;
    while first < m {
        let rows = tile.min(m - first);
        f(first, rows, &mut workspace[..rows * k])?;
        first += rows;
    }
    Ok(())
}

/// The input gradient of [`conv2d`](super::conv2d): `grad_in = col2im(grad_out Wᵀ)`.
///
/// - `grad_out`: `g.output_len()` elements, NHWC; `kernel`: HWIO, `g.kernel_len()`;
/// - `grad_in`: `g.input_len()` elements, overwritten;
/// - `workspace`: grown to one tile of patch gradients, then reused.
pub fn conv2d_backward_input(
    grad_out: &[f32],
    g: &ConvGeometry,
    kernel: &[f32],
    grad_in: &mut [f32],
    workspace: &mut Vec<f32>,
) -> Result<()> {
    check(
        "conv2d backward (input)",
        &[
            ("output gradient", g.output_len(), grad_out.len()),
            ("kernel", g.kernel_len(), kernel.len()),
            ("input gradient", g.input_len(), grad_in.len()),
        ],
    )?;
    grad_in.fill(0.0);
    let (k, n) = (g.patch_len(), g.out_channels);
    let w = view(kernel, k, n)?;
    for_each_tile(g, workspace, |first, rows, tile| {
        let dy = view(&grad_out[first * n..(first + rows) * n], rows, n)?;
        sgemm(1.0, dy, w.t(), 0.0, view_mut(tile, rows, k)?)?;
        col2im_add(tile, g, first, rows, grad_in);
        Ok(())
    })
}

/// The kernel gradient of [`conv2d`](super::conv2d): `grad_kernel = im2col(input)ᵀ grad_out`,
/// HWIO like the kernel, overwritten. `workspace` as in [`conv2d_backward_input`].
pub fn conv2d_backward_kernel(
    input: &[f32],
    g: &ConvGeometry,
    grad_out: &[f32],
    grad_kernel: &mut [f32],
    workspace: &mut Vec<f32>,
) -> Result<()> {
    check(
        "conv2d backward (kernel)",
        &[
            ("input", g.input_len(), input.len()),
            ("output gradient", g.output_len(), grad_out.len()),
            ("kernel gradient", g.kernel_len(), grad_kernel.len()),
        ],
    )?;
    grad_kernel.fill(0.0);
    let (k, n) = (g.patch_len(), g.out_channels);
    let mut dw = view_mut(grad_kernel, k, n)?;
    for_each_tile(g, workspace, |first, rows, tile| {
        im2col_unchecked(input, g, first, rows, tile);
        let dy = view(&grad_out[first * n..(first + rows) * n], rows, n)?;
        sgemm(1.0, view(tile, rows, k)?.t(), dy, 1.0, dw.view_mut())
    })
}

/// The bias gradient: `grad_bias[o] = sum of grad_out[.., o]` over every output pixel.
pub fn conv2d_backward_bias(grad_out: &[f32], channels: usize, grad_bias: &mut [f32]) -> Result<()> {
    if channels == 0 || !grad_out.len().is_multiple_of(channels) || grad_bias.len() != channels {
        return Err(Error::shape(
            "bias backward",
            format!("an output gradient of whole {channels}-channel pixels and a bias of {channels}"),
            format!("{} and {}", grad_out.len(), grad_bias.len()),
        ));
    }
    grad_bias.fill(0.0);
    for px in grad_out.chunks_exact(channels) {
        grad_bias.iter_mut().zip(px).for_each(|(b, d)| *b += d);
    }
    Ok(())
}

/// The gradient of [`max_pool2d`](super::max_pool2d): each output's gradient goes to the input
/// cell that won its window, the first in row-major window order among equal values (as
/// PyTorch's CPU kernel picks it); padding never wins, nor does NaN (which the forward pass
/// skips), and a window of only `-inf` and NaN passes no gradient. `grad_in` is overwritten.
pub fn max_pool2d_backward(input: &[f32], g: &PoolGeometry, grad_out: &[f32], grad_in: &mut [f32]) -> Result<()> {
    check(
        "max_pool2d backward",
        &[
            ("input", g.input_len(), input.len()),
            ("output gradient", g.output_len(), grad_out.len()),
            ("input gradient", g.input_len(), grad_in.len()),
        ],
    )?;
    grad_in.fill(0.0);
    let c = g.channels;
    let mut best = vec![(f32::NEG_INFINITY, usize::MAX); c];
    for_each_output(g, |p, cells| {
        best.fill((f32::NEG_INFINITY, usize::MAX));
        for &at in cells {
            for (ch, b) in best.iter_mut().enumerate() {
                // Strictly greater: the first of equal maxima wins; NaN never does (the forward
                // pass skips it, as `f32::max` does).
                let v = input[at + ch];
                if v > b.0 {
                    *b = (v, at + ch);
                }
            }
        }
        for (ch, &(_, at)) in best.iter().enumerate() {
            if at != usize::MAX {
                grad_in[at] += grad_out[p * c + ch];
            }
        }
    });
    Ok(())
}

/// The gradient of [`avg_pool2d`](super::avg_pool2d): each output's gradient divided by the
/// number of real (non-padding) cells in its window, added to each of them. `grad_in` is
/// overwritten.
pub fn avg_pool2d_backward(g: &PoolGeometry, grad_out: &[f32], grad_in: &mut [f32]) -> Result<()> {
    check(
        "avg_pool2d backward",
        &[
            ("output gradient", g.output_len(), grad_out.len()),
            ("input gradient", g.input_len(), grad_in.len()),
        ],
    )?;
    grad_in.fill(0.0);
    let c = g.channels;
    for_each_output(g, |p, cells| {
        let count = cells.len();
        if count == 0 {
            return;
        }
        let inv = 1.0 / count as f32;
        for &at in cells {
            for ch in 0..c {
                grad_in[at + ch] += grad_out[p * c + ch] * inv;
            }
        }
    });
    Ok(())
}

/// The gradient of [`global_avg_pool`](super::global_avg_pool) on `(n, h, w, c)`: each
/// pixel's share, `grad_out / (h * w)`. `grad_in` is overwritten.
pub fn global_avg_pool_backward(shape: [usize; 4], grad_out: &[f32], grad_in: &mut [f32]) -> Result<()> {
    let [n, h, w, c] = shape;
    let len = crate::error::checked_product("global_avg_pool backward", &shape)?;
    if grad_out.len() != n * c || grad_in.len() != len || h * w == 0 {
        return Err(Error::shape(
            "global_avg_pool backward",
            format!("an output gradient of {} and an input gradient of {len} elements", n * c),
            format!("{} and {}", grad_out.len(), grad_in.len()),
        ));
    }
    let inv = 1.0 / (h * w) as f32;
    for (image, dy) in grad_in.chunks_exact_mut((h * w * c).max(1)).zip(grad_out.chunks_exact(c.max(1))) {
        for px in image.chunks_exact_mut(c.max(1)) {
            px.iter_mut().zip(dy).for_each(|(d, &g)| *d = g * inv);
        }
    }
    Ok(())
}

/// Calls `f(output pixel, input cell offsets)` for every output pixel of a pooling window, the
/// cells in row-major window order (padding left out).
fn for_each_output(g: &PoolGeometry, mut f: impl FnMut(usize, &[usize])) {
    let [ih, iw] = g.in_hw;
    let c = g.channels;
    let mut cells = Vec::with_capacity(g.window.kernel[0] * g.window.kernel[1]);
    for p in 0..g.batch * g.out_hw[0] * g.out_hw[1] {
        let (n, rows, cols) = window_cells(g, p);
        cells.clear();
        cells.extend(rows.flat_map(|iy| cols.clone().map(move |ix| ((n * ih + iy) * iw + ix) * c)));
        f(p, &cells);
    }
}
