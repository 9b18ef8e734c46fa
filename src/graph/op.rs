//! The op set of the lowered graph and each op's shape rule.
//!
//! Shapes here are **per image** (no batch axis): `[h, w, c]` for images, `[features]` after
//! [`Op::Flatten`], [`Op::GlobalAvgPool`] or [`Op::Dense`]. Every op acts on each image of a
//! batch independently, so one graph serves every batch size. What each op computes is defined
//! once, by the reference executor ([`super::reference`]); the fast executor
//! ([`crate::inference`]) is tested against it.

use std::borrow::Cow;
use std::fmt;

use crate::error::{checked_product, Error, Result, ShapeFmt};
use crate::kernels::winograd::WinogradTile;
use crate::kernels::{ConvGeometry, Padding, Padding2d, PoolGeometry, Rectifier, Window2d};
use crate::layers::Layer;

/// Parameter data: borrowed from the model it was lowered from, or owned when a pass computed it.
pub type Param<'m> = Cow<'m, [f32]>;

/// How the fast executor computes a convolution (the reference executor ignores it: every
/// algorithm computes the same function).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConvAlgorithm {
    /// Chosen by the executor (direct GEMM over the input or im2col tiles).
    #[default]
    Gemm,
    /// Winograd with this tile (set by [`passes::select_winograd`](super::passes::select_winograd)).
    Winograd(WinogradTile),
}

/// A 2-D convolution over `[h, w, in_channels]` with its fused epilogue:
/// `y = act(conv(x) * scale + bias + residual)`, each term optional.
#[derive(Clone)]
pub struct ConvOp<'m> {
    /// HWIO kernel `(kh, kw, in_channels / groups, out_channels)`, row-major.
    pub kernel: Param<'m>,
    /// Kernel height and width.
    pub kernel_size: [usize; 2],
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Channel groups: 1 is dense, `in_channels` depthwise. Output channel `o` reads input
    /// channels of group `o / (out_channels / groups)`.
    pub groups: usize,
    /// Vertical and horizontal stride.
    pub stride: [usize; 2],
    /// Dilation.
    pub dilation: [usize; 2],
    /// Zero padding, resolved for this graph's input size.
    pub padding: Padding2d,
    /// Per-output-channel bias.
    pub bias: Option<Param<'m>>,
    /// Per-output-channel scale applied to the convolution before the bias (a folded BatchNorm).
    pub scale: Option<Param<'m>>,
    /// Whether the op's second input is added (a fused residual).
    pub residual: bool,
    /// The rectifier applied last (a fused ReLU or ReLU6).
    pub rectifier: Rectifier,
    /// The fast executor's algorithm.
    pub algorithm: ConvAlgorithm,
}

impl ConvOp<'_> {
    /// The window with its padding made explicit.
    pub fn window(&self) -> Window2d {
        Window2d {
            kernel: self.kernel_size,
            stride: self.stride,
            dilation: self.dilation,
            padding: Padding::Explicit(self.padding),
        }
    }

    /// The kernel call for `batch` images of `input` (`[h, w, c]`); for grouped convolutions,
    /// the geometry of one group.
    pub fn geometry(&self, batch: usize, input: &[usize]) -> Result<ConvGeometry> {
        let [h, w, c] = hwc("Conv2D", input)?;
        if c != self.in_channels {
            return Err(Error::shape(
                "Conv2D",
                format!("{} input channels", self.in_channels),
                format!("{c}, in a per-image input of shape {}", ShapeFmt(input)),
            ));
        }
        let g = self.groups;
        ConvGeometry::new([batch, h, w, c / g], self.out_channels / g, self.window())
    }
}

/// Batch normalisation at inference: `y = gamma (x - mean) / sqrt(variance + epsilon) + beta`
/// over the last axis.
#[derive(Clone)]
pub struct BatchNormOp<'m> {
    /// Scale.
    pub gamma: Param<'m>,
    /// Shift.
    pub beta: Param<'m>,
    /// Moving mean.
    pub mean: Param<'m>,
    /// Moving variance.
    pub variance: Param<'m>,
    /// Added to the variance.
    pub epsilon: f32,
}

impl BatchNormOp<'_> {
    /// The per-channel affine map it computes, `y = x * scale + shift`, with
    /// `scale = gamma / sqrt(variance + epsilon)` and `shift = beta - mean * scale`.
    pub fn scale_shift(&self) -> (Vec<f32>, Vec<f32>) {
        let scale: Vec<f32> = self
            .gamma
            .iter()
            .zip(self.variance.iter())
            .map(|(&g, &v)| g / (v + self.epsilon).sqrt())
            .collect();
        let shift = self
            .beta
            .iter()
            .zip(self.mean.iter())
            .zip(&scale)
            .map(|((&b, &m), &s)| b - m * s)
            .collect();
        (scale, shift)
    }
}

/// A pooling window (dilation 1) with explicit padding; padded cells never take part (max
/// ignores them, average divides by the real cells only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolOp {
    /// Window height and width.
    pub size: [usize; 2],
    /// Step.
    pub stride: [usize; 2],
    /// Ignored border cells.
    pub padding: Padding2d,
}

impl PoolOp {
    /// The window with its padding made explicit.
    pub fn window(&self) -> Window2d {
        Window2d {
            kernel: self.size,
            stride: self.stride,
            dilation: [1, 1],
            padding: Padding::Explicit(self.padding),
        }
    }

    /// The kernel call for `batch` images of `input` (`[h, w, c]`).
    pub fn geometry(&self, batch: usize, input: &[usize]) -> Result<PoolGeometry> {
        let [h, w, c] = hwc("pooling", input)?;
        PoolGeometry::new([batch, h, w, c], self.window())
    }
}

/// A fully connected layer, `y = x W + b`, `W` stored `(in, out)`.
#[derive(Clone)]
pub struct DenseOp<'m> {
    /// `(in_features, units)` kernel, row-major.
    pub kernel: Param<'m>,
    /// Input features.
    pub in_features: usize,
    /// Output units.
    pub units: usize,
    /// Bias (`units`).
    pub bias: Option<Param<'m>>,
}

/// An element-wise function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryFn {
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)`.
    Relu6,
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
}

impl UnaryFn {
    /// The function on one value.
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            UnaryFn::Relu => x.max(0.0),
            UnaryFn::Relu6 => x.clamp(0.0, 6.0),
            UnaryFn::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        }
    }
}

/// One operation of the graph. Inputs are given by the [`Node`](super::Node) holding it.
#[derive(Clone)]
pub enum Op<'m> {
    /// Convolution, one input (two with a fused residual).
    Conv2d(ConvOp<'m>),
    /// BatchNorm at inference, over the last axis.
    BatchNorm(BatchNormOp<'m>),
    /// Per-channel `y = x * scale + shift` over the last axis, then the rectifier.
    Affine {
        /// Per-channel scale.
        scale: Param<'m>,
        /// Per-channel shift.
        shift: Param<'m>,
        /// The rectifier applied last.
        rectifier: Rectifier,
    },
    /// The sum of N inputs of one shape, left to right, then the rectifier.
    Add {
        /// The rectifier applied last.
        rectifier: Rectifier,
    },
    /// Concatenation of N `[h, w, c_i]` inputs along the channel (last) axis.
    Concat,
    /// `x * s`: input 0 of shape `[.., c]` times input 1 of shape `[c]` broadcast over the
    /// other axes (a squeeze-and-excitation block's channel weighting).
    ChannelMul,
    /// An element-wise function.
    Unary(UnaryFn),
    /// Max pooling.
    MaxPool(PoolOp),
    /// Average pooling.
    AvgPool(PoolOp),
    /// `[h, w, c]` to `[c]`, the mean over the pixels.
    GlobalAvgPool,
    /// Zero padding around the spatial axes.
    Pad(Padding2d),
    /// Fully connected, `[in] -> [units]`.
    Dense(DenseOp<'m>),
    /// Softmax along a per-image axis (the last one for Keras' default).
    Softmax {
        /// The per-image axis (0 = the first axis after the batch axis).
        axis: usize,
    },
    /// All axes into one, in row-major (`h, w, c`) order.
    Flatten,
    /// A layer that is not built from these ops: runs its own [`Layer::forward`].
    Opaque(&'m dyn Layer),
}

impl fmt::Debug for Op<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind())
    }
}

/// `[h, w, c]` of a per-image shape, or a shape error naming `what`.
pub(crate) fn hwc(what: &str, shape: &[usize]) -> Result<[usize; 3]> {
    match *shape {
        [h, w, c] => Ok([h, w, c]),
        _ => Err(Error::shape(
            what,
            "a rank-4 NHWC batch (n, h, w, c)",
            format!("rank {} per-image shape {}", shape.len() + 1, ShapeFmt(shape)),
        )),
    }
}

fn same_shapes(what: &str, inputs: &[&[usize]]) -> Result<Vec<usize>> {
    let Some(first) = inputs.first() else {
        return Err(Error::config(what, "needs at least one input"));
    };
    if let Some(other) = inputs.iter().find(|s| *s != first) {
        return Err(Error::shape(
            what,
            format!("inputs of one shape {}", ShapeFmt(first)),
            format!("{}", ShapeFmt(other)),
        ));
    }
    Ok(first.to_vec())
}

fn param_len(what: &str, name: &str, want: usize, got: usize) -> Result<()> {
    if want != got {
        return Err(Error::shape(what, format!("a {name} of {want} values"), format!("{got}")));
    }
    Ok(())
}

fn channels_of(what: &str, shape: &[usize], want: usize) -> Result<()> {
    match shape.last() {
        Some(&c) if c == want => Ok(()),
        _ => Err(Error::shape(
            what,
            format!("a batch whose last axis has {want} channels"),
            format!("per-image shape {}", ShapeFmt(shape)),
        )),
    }
}

impl Op<'_> {
    /// A short name for the op's kind (`Conv2d`, `Add`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Conv2d(_) => "Conv2d",
            Op::BatchNorm(_) => "BatchNorm",
            Op::Affine { .. } => "Affine",
            Op::Add { .. } => "Add",
            Op::Concat => "Concat",
            Op::ChannelMul => "ChannelMul",
            Op::Unary(_) => "Unary",
            Op::MaxPool(_) => "MaxPool",
            Op::AvgPool(_) => "AvgPool",
            Op::GlobalAvgPool => "GlobalAvgPool",
            Op::Pad(_) => "Pad",
            Op::Dense(_) => "Dense",
            Op::Softmax { .. } => "Softmax",
            Op::Flatten => "Flatten",
            Op::Opaque(_) => "Opaque",
        }
    }

    /// How many inputs the op takes (`None`: any number from 1).
    pub fn arity(&self) -> Option<usize> {
        match self {
            Op::Conv2d(c) => Some(1 + usize::from(c.residual)),
            Op::Add { .. } | Op::Concat => None,
            Op::ChannelMul => Some(2),
            _ => Some(1),
        }
    }

    /// The per-image output shape for these per-image input shapes, or the shape error the
    /// op would give.
    pub fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        let kind = self.kind();
        match self.arity() {
            Some(n) if inputs.len() != n => {
                return Err(Error::config(kind, format!("takes {n} inputs, was given {}", inputs.len())));
            }
            None if inputs.is_empty() => return Err(Error::config(kind, "needs at least one input")),
            _ => {}
        }
        let x = inputs[0];
        let out = match self {
            Op::Conv2d(c) => {
                if c.groups == 0 || c.in_channels % c.groups != 0 || c.out_channels % c.groups != 0 {
                    return Err(Error::config(
                        "Conv2D",
                        format!(
                            "groups ({}) must divide both the input channels ({}) and the filters ({})",
                            c.groups, c.in_channels, c.out_channels
                        ),
                    ));
                }
                let want = checked_product(
                    "Conv2D",
                    &[c.kernel_size[0], c.kernel_size[1], c.in_channels / c.groups, c.out_channels],
                )?;
                param_len("Conv2D", "kernel", want, c.kernel.len())?;
                for (name, p) in [("bias", &c.bias), ("scale", &c.scale)] {
                    if let Some(p) = p {
                        param_len("Conv2D", name, c.out_channels, p.len())?;
                    }
                }
                let g = c.geometry(1, x)?;
                let y = vec![g.out_hw[0], g.out_hw[1], c.out_channels];
                if c.residual && inputs[1] != y.as_slice() {
                    return Err(Error::shape(
                        "Conv2D",
                        format!("a residual of the output's shape {}", ShapeFmt(&y)),
                        format!("{}", ShapeFmt(inputs[1])),
                    ));
                }
                y
            }
            Op::BatchNorm(bn) => {
                let c = bn.gamma.len();
                for (name, p) in [("beta", &bn.beta), ("moving mean", &bn.mean), ("moving variance", &bn.variance)] {
                    param_len("BatchNormalization", name, c, p.len())?;
                }
                channels_of("BatchNormalization", x, c)?;
                x.to_vec()
            }
            Op::Affine { scale, shift, .. } => {
                param_len("Affine", "shift", scale.len(), shift.len())?;
                channels_of("Affine", x, scale.len())?;
                x.to_vec()
            }
            Op::Add { .. } => same_shapes("Add", inputs)?,
            Op::Concat => {
                let [h, w, _] = hwc("Concatenate", x)?;
                let mut c = 0usize;
                for s in inputs {
                    let [hi, wi, ci] = hwc("Concatenate", s)?;
                    if [hi, wi] != [h, w] {
                        return Err(Error::shape(
                            "Concatenate",
                            format!("inputs of one spatial size {h}x{w}"),
                            format!("{}", ShapeFmt(s)),
                        ));
                    }
                    c = c
                        .checked_add(ci)
                        .ok_or_else(|| Error::overflow("Concatenate", "the channel count"))?;
                }
                vec![h, w, c]
            }
            Op::ChannelMul => {
                let c = *x.last().unwrap_or(&0);
                if inputs[1] != [c] {
                    return Err(Error::shape(
                        "Multiply",
                        format!("per-channel weights of shape ({c},)"),
                        format!("{}", ShapeFmt(inputs[1])),
                    ));
                }
                x.to_vec()
            }
            Op::Unary(_) => x.to_vec(),
            Op::MaxPool(p) | Op::AvgPool(p) => {
                let g = p.geometry(1, x)?;
                vec![g.out_hw[0], g.out_hw[1], g.channels]
            }
            Op::GlobalAvgPool => {
                let [h, w, c] = hwc("GlobalAveragePooling2D", x)?;
                if h == 0 || w == 0 {
                    return Err(Error::shape(
                        "GlobalAveragePooling2D",
                        "a non-empty image",
                        format!("{}", ShapeFmt(x)),
                    ));
                }
                vec![c]
            }
            Op::Pad(p) => {
                let [h, w, c] = hwc("ZeroPadding2D", x)?;
                let grow = |v: usize, a: usize, b: usize| v.checked_add(a).and_then(|v| v.checked_add(b));
                let (Some(oh), Some(ow)) = (grow(h, p.top, p.bottom), grow(w, p.left, p.right)) else {
                    return Err(Error::overflow("ZeroPadding2D", "the padded size"));
                };
                checked_product("ZeroPadding2D", &[oh, ow, c])?;
                vec![oh, ow, c]
            }
            Op::Dense(d) => {
                param_len("Dense", "kernel", d.in_features * d.units, d.kernel.len())?;
                if let Some(b) = &d.bias {
                    param_len("Dense", "bias", d.units, b.len())?;
                }
                if x != [d.in_features] {
                    let dims: Vec<String> = x.iter().map(usize::to_string).collect();
                    return Err(Error::shape(
                        "Dense",
                        format!("(n, {}) features", d.in_features),
                        format!("(n, {})", dims.join(", ")),
                    ));
                }
                vec![d.units]
            }
            Op::Softmax { axis } => {
                if *axis >= x.len() {
                    return Err(Error::shape(
                        "Softmax",
                        format!("at least {} axes after the batch axis", axis + 1),
                        format!("per-image shape {}", ShapeFmt(x)),
                    ));
                }
                x.to_vec()
            }
            Op::Flatten => vec![checked_product("Flatten", x)?],
            Op::Opaque(layer) => {
                let mut full = vec![1];
                full.extend_from_slice(x);
                let out = layer.output_shape(&full)?;
                if out.first() != Some(&1) {
                    return Err(Error::shape(
                        layer.type_name(),
                        "an output with the input's batch axis first",
                        format!("{} for a batch of 1", ShapeFmt(&out)),
                    ));
                }
                out[1..].to_vec()
            }
        };
        checked_product(kind, &out)?;
        Ok(out)
    }
}
