//! Max, average and global-average pooling over NHWC tensors.
//!
//! Each output pixel reduces whole channel rows at once (contiguous in NHWC), so the inner
//! loops run over `channels` and vectorise.

use super::geometry::PoolGeometry;
use crate::error::{Error, Result};

fn check(g: &PoolGeometry, input: &[f32], output: &[f32], what: &str) -> Result<()> {
    if input.len() != g.input_len() || output.len() != g.output_len() {
        return Err(Error::shape(
            what,
            format!("input of {} and output of {} elements", g.input_len(), g.output_len()),
            format!("input of {} and output of {}", input.len(), output.len()),
        ));
    }
    Ok(())
}

/// The image and the real (non-padding) input rows and columns under output pixel `p`
/// (counted over the whole batch) of a pooling window.
pub(crate) fn window_cells(g: &PoolGeometry, p: usize) -> (usize, std::ops::Range<usize>, std::ops::Range<usize>) {
    let [ih, iw] = g.in_hw;
    let [oh, ow] = g.out_hw;
    let [kh, kw] = g.window.kernel;
    let [sh, sw] = g.window.stride;
    let (oy, ox) = ((p / ow) % oh, p % ow);
    let y0 = (oy * sh).saturating_sub(g.pad.top);
    let y1 = (oy * sh + kh).saturating_sub(g.pad.top).min(ih);
    let x0 = (ox * sw).saturating_sub(g.pad.left);
    let x1 = (ox * sw + kw).saturating_sub(g.pad.left).min(iw);
    (p / (oh * ow), y0..y1.max(y0), x0..x1.max(x0))
}

/// Calls `f(out_row, in_row)` for every input row under every output window, after `init`
/// on each output row, then `finish(out_row, taps)`; `output` holds the output pixels from
/// `first` on (counted over the batch).
fn for_each_window(
    input: &[f32],
    g: &PoolGeometry,
    first: usize,
    output: &mut [f32],
    init: f32,
    reduce: impl Fn(&mut [f32], &[f32]),
    finish: impl Fn(&mut [f32], usize),
) {
    let [ih, iw] = g.in_hw;
    let c = g.channels;
    if c == 0 {
        return;
    }
    for (p, out) in output.chunks_exact_mut(c).enumerate() {
        let (n, rows, cols) = window_cells(g, first + p);
        let (y0, y1, x0, x1) = (rows.start, rows.end, cols.start, cols.end);
        out.fill(init);
        for iy in y0..y1 {
            for ix in x0..x1 {
                let at = ((n * ih + iy) * iw + ix) * c;
                reduce(out, &input[at..at + c]);
            }
        }
        finish(out, (y1.saturating_sub(y0)) * (x1.saturating_sub(x0)));
    }
}

/// Max pooling. Padding cells never win (Keras pads with `-inf`); a NaN input is skipped like
/// `f32::max` does.
pub fn max_pool2d(input: &[f32], g: &PoolGeometry, output: &mut [f32]) -> Result<()> {
    check(g, input, output, "max_pool2d kernel")?;
    max_pool_unchecked(input, g, 0, output);
    Ok(())
}

fn max_pool_unchecked(input: &[f32], g: &PoolGeometry, first: usize, output: &mut [f32]) {
    for_each_window(
        input,
        g,
        first,
        output,
        f32::NEG_INFINITY,
        |o, x| o.iter_mut().zip(x).for_each(|(o, &x)| *o = o.max(x)),
        |_, _| {},
    );
}

/// Average pooling: each window's sum divided by the number of *real* (non-padding) elements
/// under it, as Keras' `AveragePooling2D(padding='same')` does.
pub fn avg_pool2d(input: &[f32], g: &PoolGeometry, output: &mut [f32]) -> Result<()> {
    check(g, input, output, "avg_pool2d kernel")?;
    avg_pool_unchecked(input, g, 0, output);
    Ok(())
}

fn avg_pool_unchecked(input: &[f32], g: &PoolGeometry, first: usize, output: &mut [f32]) {
    for_each_window(
        input,
        g,
        first,
        output,
        0.0,
        |o, x| o.iter_mut().zip(x).for_each(|(o, &x)| *o += x),
        |o, count| {
            let inv = 1.0 / count as f32;
            o.iter_mut().for_each(|v| *v *= inv);
        },
    );
}

/// Output pixels `pixels` (counted over the batch) of max pooling (`max`) or average pooling,
/// written to `output` (those pixels' channels only), so that threads can split a pooling. The
/// same values as [`max_pool2d`] and [`avg_pool2d`] give for those pixels.
pub(crate) fn pool2d_pixels(input: &[f32], g: &PoolGeometry, max: bool, pixels: std::ops::Range<usize>, output: &mut [f32]) -> Result<()> {
    let total = g.output_len() / g.channels.max(1);
    if input.len() != g.input_len() || pixels.end > total || output.len() != pixels.len() * g.channels {
        return Err(Error::shape(
            "pooling kernel",
            format!("an input of {} and the output pixels of {total}", g.input_len()),
            format!("an input of {}, pixels {pixels:?} and an output of {}", input.len(), output.len()),
        ));
    }
    if max {
        max_pool_unchecked(input, g, pixels.start, output);
    } else {
        avg_pool_unchecked(input, g, pixels.start, output);
    }
    Ok(())
}

/// Global average pooling: `(n, h, w, c)` NHWC to `(n, c)`.
pub fn global_avg_pool(input: &[f32], shape: [usize; 4], output: &mut [f32]) -> Result<()> {
    let [n, h, w, c] = shape;
    let want_in = crate::error::checked_product("global_avg_pool kernel", &shape)?;
    if input.len() != want_in || output.len() != n * c || h * w == 0 {
        return Err(Error::shape(
            "global_avg_pool kernel",
            format!("a non-empty input of {want_in} and an output of {} elements", n * c),
            format!("input of {} ({h}x{w} pixels) and output of {}", input.len(), output.len()),
        ));
    }
    if c == 0 {
        return Ok(());
    }
    let inv = 1.0 / (h * w) as f32;
    for (image, out) in input.chunks_exact(h * w * c).zip(output.chunks_exact_mut(c)) {
        out.fill(0.0);
        for px in image.chunks_exact(c) {
            out.iter_mut().zip(px).for_each(|(o, &x)| *o += x);
        }
        out.iter_mut().for_each(|v| *v *= inv);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{Padding, Window2d};

    #[test]
    fn pixel_ranges_give_the_whole_poolings_bits() {
        let window = Window2d {
            padding: Padding::Same,
            ..Window2d::new([3, 3], [2, 2])
        };
        let g = PoolGeometry::new([2, 9, 7, 5], window).unwrap();
        let input: Vec<f32> = (0..g.input_len()).map(|i| ((i * 37) % 101) as f32 - 50.0).collect();
        let pixels = g.output_len() / g.channels;
        for max in [true, false] {
            let mut whole = vec![0.0; g.output_len()];
            if max {
                max_pool2d(&input, &g, &mut whole).unwrap();
            } else {
                avg_pool2d(&input, &g, &mut whole).unwrap();
            }
            for parts in [1, 2, 3, 7] {
                let mut split = vec![0.0; g.output_len()];
                for t in 0..parts {
                    let mine = pixels * t / parts..pixels * (t + 1) / parts;
                    let out = &mut split[mine.start * g.channels..mine.end * g.channels];
                    pool2d_pixels(&input, &g, max, mine, out).unwrap();
                }
                assert!(
                    split.iter().zip(&whole).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "max {max}, {parts} parts"
                );
            }
        }
        let mut out = vec![0.0; 2 * g.channels];
        assert!(pool2d_pixels(&input, &g, true, pixels - 1..pixels + 1, &mut out).is_err());
        assert!(pool2d_pixels(&input, &g, true, 0..1, &mut out).is_err());
    }
}
