//! Plain direct-loop implementations of every kernel: the oracle the fast paths are tested
//! against, and the baseline the benches compare them with. Clarity over speed.

use num_traits::Float;

use super::geometry::{ConvGeometry, PoolGeometry};

/// Row-major `C[m x n] = A[m x k] B[k x n]`, triple loop (in `f32`, or `f64` for a
/// higher-precision oracle).
pub fn gemm<T: Float>(m: usize, k: usize, n: usize, a: &[T], b: &[T], c: &mut [T]) {
    for i in 0..m {
        for j in 0..n {
            let mut acc = T::zero();
            for p in 0..k {
                acc = acc + a[i * k + p] * b[p * n + j];
            }
            c[i * n + j] = acc;
        }
    }
}

/// Direct NHWC convolution with an HWIO kernel: for every output element, a sum over the
/// window taps that fall inside the input (padding taps contribute zero), plus the bias.
pub fn conv2d<T: Float>(input: &[T], g: &ConvGeometry, kernel: &[T], bias: Option<&[T]>, output: &mut [T]) {
    conv2d_grouped(input, g, 1, kernel, bias, output);
}

/// Direct grouped NHWC convolution: `g` is one group's geometry, the input has
/// `g.in_channels * groups` channels, the HWIO kernel `(kh, kw, g.in_channels, groups *
/// g.out_channels)`; output channel `o` reads the input channels of group `o / g.out_channels`.
pub fn conv2d_grouped<T: Float>(input: &[T], g: &ConvGeometry, groups: usize, kernel: &[T], bias: Option<&[T]>, output: &mut [T]) {
    let [ih, iw] = g.in_hw;
    let [oh, ow] = g.out_hw;
    let [kh, kw] = g.window.kernel;
    let [sh, sw] = g.window.stride;
    let [dh, dw] = g.window.dilation;
    let (ci, co) = (g.in_channels, g.out_channels);
    let (cin_all, cout_all) = (ci * groups, co * groups);
    for n in 0..g.batch {
        for oy in 0..oh {
            for ox in 0..ow {
                for o in 0..cout_all {
                    let group = o / co;
                    let mut acc = bias.map_or(T::zero(), |b| b[o]);
                    for ky in 0..kh {
                        let iy = (oy * sh + ky * dh) as isize - g.pad.top as isize;
                        if iy < 0 || iy >= ih as isize {
                            continue;
                        }
                        for kx in 0..kw {
                            let ix = (ox * sw + kx * dw) as isize - g.pad.left as isize;
                            if ix < 0 || ix >= iw as isize {
                                continue;
                            }
                            for c in 0..ci {
                                let x = input[((n * ih + iy as usize) * iw + ix as usize) * cin_all + group * ci + c];
                                let w = kernel[((ky * kw + kx) * ci + c) * cout_all + o];
                                acc = acc + x * w;
                            }
                        }
                    }
                    output[((n * oh + oy) * ow + ox) * cout_all + o] = acc;
                }
            }
        }
    }
}

/// Visits the input values under one pooling window (padding cells are skipped).
fn pool_window(input: &[f32], g: &PoolGeometry, n: usize, oy: usize, ox: usize, c: usize, mut f: impl FnMut(f32)) {
    let [ih, iw] = g.in_hw;
    pool_cells(g, oy, ox, |iy, ix| f(input[((n * ih + iy) * iw + ix) * g.channels + c]));
}

fn pool(input: &[f32], g: &PoolGeometry, output: &mut [f32], reduce: impl Fn(&[f32]) -> f32) {
    let [oh, ow] = g.out_hw;
    let mut taps = Vec::new();
    for n in 0..g.batch {
        for oy in 0..oh {
            for ox in 0..ow {
                for c in 0..g.channels {
                    taps.clear();
                    pool_window(input, g, n, oy, ox, c, |v| taps.push(v));
                    output[((n * oh + oy) * ow + ox) * g.channels + c] = reduce(&taps);
                }
            }
        }
    }
}

/// Max pooling; padding never wins (Keras pads with -inf).
pub fn max_pool2d(input: &[f32], g: &PoolGeometry, output: &mut [f32]) {
    pool(input, g, output, |t| t.iter().copied().fold(f32::NEG_INFINITY, f32::max));
}

/// Average pooling over the real (non-padding) elements of each window, as Keras does.
pub fn avg_pool2d(input: &[f32], g: &PoolGeometry, output: &mut [f32]) {
    pool(input, g, output, |t| t.iter().sum::<f32>() / t.len() as f32);
}

/// The input gradient of [`conv2d`] by direct loops: every output gradient times every kernel
/// tap, added to the input cell the tap read (padding taps dropped). `grad_in` is overwritten.
pub fn conv2d_backward_input<T: Float>(grad_out: &[T], g: &ConvGeometry, kernel: &[T], grad_in: &mut [T]) {
    grad_in.iter_mut().for_each(|v| *v = T::zero());
    conv_taps(g, |o_at, x_at, w_at| {
        for o in 0..g.out_channels {
            for c in 0..g.in_channels {
                grad_in[x_at + c] = grad_in[x_at + c] + grad_out[o_at + o] * kernel[w_at + c * g.out_channels + o];
            }
        }
    });
}

/// The kernel gradient of [`conv2d`] by direct loops: every input cell a tap read times the
/// output gradient, summed over the output pixels. `grad_kernel` (HWIO) is overwritten.
pub fn conv2d_backward_kernel<T: Float>(input: &[T], g: &ConvGeometry, grad_out: &[T], grad_kernel: &mut [T]) {
    grad_kernel.iter_mut().for_each(|v| *v = T::zero());
    conv_taps(g, |o_at, x_at, w_at| {
        for c in 0..g.in_channels {
            for o in 0..g.out_channels {
                let at = w_at + c * g.out_channels + o;
                grad_kernel[at] = grad_kernel[at] + input[x_at + c] * grad_out[o_at + o];
            }
        }
    });
}

/// Calls `f(output pixel offset, input pixel offset, kernel tap offset)` for every (output
/// pixel, tap inside the input) pair of a convolution.
fn conv_taps(g: &ConvGeometry, mut f: impl FnMut(usize, usize, usize)) {
    let [ih, iw] = g.in_hw;
    let [oh, ow] = g.out_hw;
    let [kh, kw] = g.window.kernel;
    let (ci, co) = (g.in_channels, g.out_channels);
    for n in 0..g.batch {
        for oy in 0..oh {
            for ox in 0..ow {
                for ky in 0..kh {
                    let iy = (oy * g.window.stride[0] + ky * g.window.dilation[0]) as isize - g.pad.top as isize;
                    if iy < 0 || iy >= ih as isize {
                        continue;
                    }
                    for kx in 0..kw {
                        let ix = (ox * g.window.stride[1] + kx * g.window.dilation[1]) as isize - g.pad.left as isize;
                        if ix < 0 || ix >= iw as isize {
                            continue;
                        }
                        let o_at = ((n * oh + oy) * ow + ox) * co;
                        let x_at = ((n * ih + iy as usize) * iw + ix as usize) * ci;
                        f(o_at, x_at, (ky * kw + kx) * ci * co);
                    }
                }
            }
        }
    }
}

/// The gradient of [`max_pool2d`] by direct loops: to the first strictly largest cell of each
/// window (NaN never wins).
pub fn max_pool2d_backward(input: &[f32], g: &PoolGeometry, grad_out: &[f32], grad_in: &mut [f32]) {
    grad_in.fill(0.0);
    let ch = g.channels;
    pool_windows(g, |out_px, cells| {
        for c in 0..ch {
            let mut best: Option<(f32, usize)> = None;
            for &px in cells {
                let at = px * ch + c;
                if input[at] > best.map_or(f32::NEG_INFINITY, |b| b.0) {
                    best = Some((input[at], at));
                }
            }
            if let Some((_, at)) = best {
                grad_in[at] += grad_out[out_px * ch + c];
            }
        }
    });
}

/// The gradient of [`avg_pool2d`] by direct loops.
pub fn avg_pool2d_backward(g: &PoolGeometry, grad_out: &[f32], grad_in: &mut [f32]) {
    grad_in.fill(0.0);
    let ch = g.channels;
    pool_windows(g, |out_px, cells| {
        for c in 0..ch {
            let d = grad_out[out_px * ch + c] / cells.len() as f32;
            for &px in cells {
                grad_in[px * ch + c] += d;
            }
        }
    });
}

/// Calls `f(output pixel, input pixels)` for every pooling window of the batch: the output
/// pixel's index `(n * oh + oy) * ow + ox` and those of the real cells its window covers,
/// `(n * ih + iy) * iw + ix`, in row-major order.
fn pool_windows(g: &PoolGeometry, mut f: impl FnMut(usize, &[usize])) {
    let ([oh, ow], [ih, iw]) = (g.out_hw, g.in_hw);
    let mut cells = Vec::new();
    for n in 0..g.batch {
        for oy in 0..oh {
            for ox in 0..ow {
                cells.clear();
                pool_cells(g, oy, ox, |iy, ix| cells.push((n * ih + iy) * iw + ix));
                f((n * oh + oy) * ow + ox, &cells);
            }
        }
    }
}

/// Calls `f(iy, ix)` for the real cells of one pooling window, in row-major order.
fn pool_cells(g: &PoolGeometry, oy: usize, ox: usize, mut f: impl FnMut(usize, usize)) {
    let [ih, iw] = g.in_hw;
    for ky in 0..g.window.kernel[0] {
        let iy = (oy * g.window.stride[0] + ky) as isize - g.pad.top as isize;
        if iy < 0 || iy >= ih as isize {
            continue;
        }
        for kx in 0..g.window.kernel[1] {
            let ix = (ox * g.window.stride[1] + kx) as isize - g.pad.left as isize;
            if ix >= 0 && ix < iw as isize {
                f(iy as usize, ix as usize);
            }
        }
    }
}
