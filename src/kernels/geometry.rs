//! Window geometry shared by convolution and pooling: padding rules and output sizes.

use crate::error::{Error, Result, ShapeFmt};

/// Explicit zero (convolution) or ignored (pooling) padding around the spatial axes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Padding2d {
    /// Rows added above the input.
    pub top: usize,
    /// Rows added below the input.
    pub bottom: usize,
    /// Columns added left of the input.
    pub left: usize,
    /// Columns added right of the input.
    pub right: usize,
}

impl Padding2d {
    /// The same amount on all four sides.
    pub const fn uniform(p: usize) -> Self {
        Padding2d {
            top: p,
            bottom: p,
            left: p,
            right: p,
        }
    }

    /// `(top, bottom)` rows and `(left, right)` columns, as Keras' `ZeroPadding2D(((t, b), (l, r)))`.
    pub const fn new(top: usize, bottom: usize, left: usize, right: usize) -> Self {
        Padding2d { top, bottom, left, right }
    }

    /// True when no side is padded.
    pub const fn is_zero(&self) -> bool {
        self.top == 0 && self.bottom == 0 && self.left == 0 && self.right == 0
    }
}

/// How a convolution or pooling window treats the border.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Padding {
    /// No padding: `out = floor((in - d(k-1) - 1) / s) + 1`.
    #[default]
    Valid,
    /// Keras/TensorFlow `'same'`: `out = ceil(in / s)`; the total padding
    /// `max((out-1)s + d(k-1) + 1 - in, 0)` is split with the smaller half on the top/left and
    /// **the extra row/column at the bottom/right** (PyTorch's symmetric padding differs).
    Same,
    /// Fixed amounts, e.g. torchvision's `padding=3` as `Padding2d::uniform(3)`.
    Explicit(Padding2d),
}

impl Padding {
    /// The concrete amounts for an input of `in_hw`, under `window` (kernel, stride, dilation).
    pub fn resolve(&self, in_hw: [usize; 2], kernel: [usize; 2], stride: [usize; 2], dilation: [usize; 2]) -> Padding2d {
        match *self {
            Padding::Valid => Padding2d::default(),
            Padding::Explicit(p) => p,
            Padding::Same => {
                let split = |i: usize| {
                    let (n, k, s, d) = (in_hw[i], kernel[i], stride[i].max(1), dilation[i]);
                    let out = n.div_ceil(s);
                    let span = d.saturating_mul(k.saturating_sub(1)).saturating_add(1);
                    let need = (out.saturating_sub(1)).saturating_mul(s).saturating_add(span);
                    let pad = need.saturating_sub(n);
                    (pad / 2, pad - pad / 2)
                };
                let (top, bottom) = split(0);
                let (left, right) = split(1);
                Padding2d { top, bottom, left, right }
            }
        }
    }
}

/// A sliding window over the two spatial axes: kernel size, stride, dilation and padding rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Window2d {
    /// Window height and width.
    pub kernel: [usize; 2],
    /// Step between windows, vertical and horizontal.
    pub stride: [usize; 2],
    /// Spacing between the taps of the window (1 = dense).
    pub dilation: [usize; 2],
    /// Border rule.
    pub padding: Padding,
}

impl Window2d {
    /// A dense window with the given kernel and stride, no padding.
    pub fn new(kernel: [usize; 2], stride: [usize; 2]) -> Self {
        Window2d {
            kernel,
            stride,
            dilation: [1, 1],
            padding: Padding::Valid,
        }
    }

    /// Checks that no size is zero.
    pub fn validate(&self, layer: &str) -> Result<()> {
        for (what, v) in [("kernel size", self.kernel), ("stride", self.stride), ("dilation", self.dilation)] {
            if v[0] == 0 || v[1] == 0 {
                return Err(Error::config(layer, format!("{what} must be at least 1, got {}x{}", v[0], v[1])));
            }
        }
        Ok(())
    }

    /// The spatial extent the window covers: `d(k-1) + 1` per axis.
    pub fn span(&self) -> [usize; 2] {
        [
            self.dilation[0].saturating_mul(self.kernel[0] - 1).saturating_add(1),
            self.dilation[1].saturating_mul(self.kernel[1] - 1).saturating_add(1),
        ]
    }

    /// Resolves the padding and the output size for an input of `in_hw`, or explains why the
    /// window does not fit (an input smaller than the kernel under `Valid` padding).
    pub fn plan(&self, layer: &str, in_hw: [usize; 2]) -> Result<(Padding2d, [usize; 2])> {
        self.validate(layer)?;
        let pad = self.padding.resolve(in_hw, self.kernel, self.stride, self.dilation);
        let span = self.span();
        let padded = [
            in_hw[0].checked_add(pad.top).and_then(|v| v.checked_add(pad.bottom)),
            in_hw[1].checked_add(pad.left).and_then(|v| v.checked_add(pad.right)),
        ];
        let [Some(ph), Some(pw)] = padded else {
            return Err(Error::overflow(layer, "the padded input size"));
        };
        if ph < span[0] || pw < span[1] {
            return Err(Error::shape(
                layer,
                format!(
                    "a padded input of at least {}x{} for a {}x{} window",
                    span[0], span[1], self.kernel[0], self.kernel[1]
                ),
                format!("{ph}x{pw}, from an input of {}", ShapeFmt(&in_hw)),
            ));
        }
        let out = [(ph - span[0]) / self.stride[0] + 1, (pw - span[1]) / self.stride[1] + 1];
        Ok((pad, out))
    }
}

/// Everything a 2-D convolution kernel needs to know about one call, NHWC in and out,
/// kernel in Keras' HWIO layout `(kh, kw, in_channels, out_channels)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvGeometry {
    /// Images in the batch.
    pub batch: usize,
    /// Input height and width.
    pub in_hw: [usize; 2],
    /// Input channels.
    pub in_channels: usize,
    /// Output channels (filters).
    pub out_channels: usize,
    /// Kernel size, stride, dilation.
    pub window: Window2d,
    /// Resolved padding.
    pub pad: Padding2d,
    /// Output height and width.
    pub out_hw: [usize; 2],
}

impl ConvGeometry {
    /// Plans a convolution of an NHWC input of `input` = `[n, h, w, c]` into `out_channels`.
    pub fn new(input: [usize; 4], out_channels: usize, window: Window2d) -> Result<Self> {
        const LAYER: &str = "conv2d kernel";
        let (pad, out_hw) = window.plan(LAYER, [input[1], input[2]])?;
        if input[3] == 0 || out_channels == 0 {
            return Err(Error::config(
                LAYER,
                format!("channels must be at least 1, got {} in and {out_channels} out", input[3]),
            ));
        }
        let g = ConvGeometry {
            batch: input[0],
            in_hw: [input[1], input[2]],
            in_channels: input[3],
            out_channels,
            window,
            pad,
            out_hw,
        };
        // Every size the kernels index with must fit in usize.
        crate::error::checked_product(LAYER, &[g.batch, g.in_hw[0], g.in_hw[1], g.in_channels])?;
        crate::error::checked_product(LAYER, &[g.batch, g.out_hw[0], g.out_hw[1], g.out_channels.max(g.patch_len())])?;
        crate::error::checked_product(LAYER, &[window.kernel[0], window.kernel[1], g.in_channels, g.out_channels])?;
        Ok(g)
    }

    /// Length of one im2col row: `kh * kw * in_channels` (the GEMM's K).
    pub fn patch_len(&self) -> usize {
        self.window.kernel[0] * self.window.kernel[1] * self.in_channels
    }

    /// Output pixels over the whole batch (the GEMM's M).
    pub fn out_pixels(&self) -> usize {
        self.batch * self.out_hw[0] * self.out_hw[1]
    }

    /// Elements of the NHWC input.
    pub fn input_len(&self) -> usize {
        self.batch * self.in_hw[0] * self.in_hw[1] * self.in_channels
    }

    /// Elements of the NHWC output.
    pub fn output_len(&self) -> usize {
        self.out_pixels() * self.out_channels
    }

    /// The output columns `lo..hi` (maybe empty) whose every kernel tap lies inside the input
    /// row: the direct loops take them without checking a tap's column.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // (only the x86-64 loops use it)
    pub(crate) fn interior_columns(&self) -> (usize, usize) {
        let (sw, reach) = (self.window.stride[1], (self.window.kernel[1] - 1) * self.window.dilation[1]);
        let ow = self.out_hw[1];
        let (iw, left) = (self.in_hw[1], self.pad.left);
        let lo = left.div_ceil(sw).min(ow);
        let hi = if iw + left > reach {
            ((iw + left - reach - 1) / sw + 1).min(ow)
        } else {
            0
        };
        (lo, hi.max(lo))
    }

    /// Elements of the HWIO kernel.
    pub fn kernel_len(&self) -> usize {
        self.patch_len() * self.out_channels
    }

    /// Multiply-adds times two: the FLOP count of the convolution.
    pub fn flops(&self) -> u64 {
        2 * self.out_pixels() as u64 * self.patch_len() as u64 * self.out_channels as u64
    }
}

/// Geometry of a pooling call: NHWC in, NHWC out, the same channel count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PoolGeometry {
    /// Images in the batch.
    pub batch: usize,
    /// Input height and width.
    pub in_hw: [usize; 2],
    /// Channels (unchanged by pooling).
    pub channels: usize,
    /// Pool size, strides, padding (dilation is 1).
    pub window: Window2d,
    /// Resolved padding; padded cells never take part in the result.
    pub pad: Padding2d,
    /// Output height and width.
    pub out_hw: [usize; 2],
}

impl PoolGeometry {
    /// Plans pooling over an NHWC input of `input` = `[n, h, w, c]`.
    pub fn new(input: [usize; 4], window: Window2d) -> Result<Self> {
        const LAYER: &str = "pool2d kernel";
        if window.dilation != [1, 1] {
            return Err(Error::config(LAYER, "pooling windows are dense (dilation 1)"));
        }
        let (pad, out_hw) = window.plan(LAYER, [input[1], input[2]])?;
        if pad.top >= window.kernel[0] || pad.bottom >= window.kernel[0] || pad.left >= window.kernel[1] || pad.right >= window.kernel[1] {
            return Err(Error::config(
                LAYER,
                format!(
                    "padding {pad:?} must be smaller than the pool size {}x{} on every side",
                    window.kernel[0], window.kernel[1]
                ),
            ));
        }
        crate::error::checked_product(LAYER, &[input[0], input[1], input[2], input[3]])?;
        Ok(PoolGeometry {
            batch: input[0],
            in_hw: [input[1], input[2]],
            channels: input[3],
            window,
            pad,
            out_hw,
        })
    }

    /// Elements of the NHWC input.
    pub fn input_len(&self) -> usize {
        self.batch * self.in_hw[0] * self.in_hw[1] * self.channels
    }

    /// Elements of the NHWC output.
    pub fn output_len(&self) -> usize {
        self.batch * self.out_hw[0] * self.out_hw[1] * self.channels
    }
}

/// The runs a direct loop splits the interior columns `lo..hi` into: `(first column, length)`,
/// `widest` columns at a time, then one run each of 4, 2 and 1 for what is left (`widest` is 8
/// or 4).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // (only the x86-64 loops use it)
pub(crate) fn interior_runs(lo: usize, hi: usize, widest: usize) -> impl Iterator<Item = (usize, usize)> {
    let full = (hi - lo) / widest;
    let mut ox = lo + full * widest;
    let tail = [4, 2, 1].map(|n| {
        let run = (n < widest && ox + n <= hi).then_some((ox, n));
        ox += run.map_or(0, |(_, n)| n);
        run
    });
    (0..full).map(move |r| (lo + r * widest, widest)).chain(tail.into_iter().flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interior_runs_cover_the_columns_once_in_order() {
        for widest in [4, 8] {
            for (lo, hi) in [(0, 0), (1, 1), (1, 56), (0, 13), (2, 9), (0, 7), (3, 4)] {
                let runs: Vec<_> = interior_runs(lo, hi, widest).collect();
                let mut next = lo;
                for &(ox, n) in &runs {
                    assert_eq!(ox, next, "{runs:?}");
                    assert!([widest, 4, 2, 1].contains(&n));
                    next += n;
                }
                assert_eq!(next, hi, "{lo}..{hi} by {widest}: {runs:?}");
                assert!(runs.iter().filter(|r| r.1 < widest).count() <= 3);
            }
        }
    }

    #[test]
    fn interior_columns_are_the_ones_without_edge_taps() {
        for (w, k, s, d, pad) in [
            (56, 3, 1, 1, Padding::Same),
            (112, 3, 2, 1, Padding::Same),
            (7, 5, 1, 2, Padding::Same),
            (3, 5, 1, 1, Padding::Valid),
        ] {
            let Ok(g) = ConvGeometry::new(
                [1, 4, w, 2],
                2,
                Window2d {
                    padding: pad,
                    dilation: [d, d],
                    ..Window2d::new([3, k], [1, s])
                },
            ) else {
                continue;
            };
            let (lo, hi) = g.interior_columns();
            for ox in 0..g.out_hw[1] {
                let inside = (0..k).all(|kx| (ox * s + kx * d).checked_sub(g.pad.left).is_some_and(|ix| ix < w));
                assert_eq!(inside, (lo..hi).contains(&ox), "column {ox} of {g:?}");
            }
        }
    }

    #[test]
    fn same_padding_puts_the_extra_row_bottom_right() {
        // 8 -> 4 with k=3, s=2: pad = (4-1)*2 + 3 - 8 = 1, all of it at the bottom/right.
        let p = Padding::Same.resolve([8, 10], [3, 3], [2, 2], [1, 1]);
        assert_eq!(p, Padding2d::new(0, 1, 0, 1));
        // 9 -> 5: pad = 4*2 + 3 - 9 = 2, split 1/1.
        let p = Padding::Same.resolve([9, 9], [3, 3], [2, 2], [1, 1]);
        assert_eq!(p, Padding2d::uniform(1));
        // dilation 2, k=3 spans 5: pad 4 -> 2/2.
        let p = Padding::Same.resolve([10, 9], [3, 3], [1, 1], [2, 2]);
        assert_eq!(p, Padding2d::uniform(2));
    }

    #[test]
    fn valid_output_sizes_match_the_keras_formula() {
        let w = Window2d::new([7, 7], [2, 2]);
        assert_eq!(w.plan("t", [230, 230]).unwrap().1, [112, 112]);
        let w = Window2d::new([3, 3], [2, 2]);
        assert_eq!(w.plan("t", [112, 112]).unwrap().1, [55, 55]);
    }

    #[test]
    fn a_window_larger_than_the_input_is_a_shape_error() {
        let w = Window2d::new([5, 5], [1, 1]);
        assert!(matches!(w.plan("t", [4, 9]), Err(Error::Shape { .. })));
        let w = Window2d::new([0, 5], [1, 1]);
        assert!(matches!(w.plan("t", [4, 9]), Err(Error::Config { .. })));
    }
}
