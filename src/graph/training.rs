//! Training over the same graph the executors run: a forward pass that keeps what the backward
//! needs (every value, and each BatchNorm's batch statistics), and the backward of every op,
//! one function per op beside [`super::reference::eval`], so a new op brings
//! its gradient in the same place.
//!
//! BatchNorm runs in training mode unless its layer is frozen: it normalises with the batch
//! mean and the biased batch variance over `n * h * w` values per channel, and reports new
//! running statistics, `(1 - momentum) * running + momentum * batch`, with the unbiased variance
//! (`n / (n - 1)`), as PyTorch and Keras both do. A frozen BatchNorm (Keras' `trainable =
//! False`) runs in inference mode and keeps its statistics. Frozen layers get no parameter
//! gradients; gradients still flow through them to the layers before.

use std::collections::BTreeMap;

use ndarray::{s, ArrayD, ArrayView2, Axis, Ix2, IxDyn};

use super::op::{ConvOp, Op, UnaryFn};
use super::reference::{self, check_input, per_channel, tensor};
use super::{Graph, Node};
use crate::error::{Error, Result, ShapeFmt};
use crate::kernels::{self, backward};
use crate::layers::{check_finite, LayerPath, ParamKind, Tensor};

/// How a training step treats the layers.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainingMode {
    /// BatchNorm running-statistics momentum in PyTorch's convention, the weight of the batch
    /// statistic: `running = (1 - momentum) * running + momentum * batch` (PyTorch's default
    /// 0.1; Keras' `momentum = 0.99` is 0.01 here, see [`TrainingMode::keras_momentum`]).
    pub batch_norm_momentum: f32,
    /// Layer paths (as displayed, `layer1/0` or `layer1.0`) whose layers, and everything under
    /// them, are frozen: no parameter gradients, BatchNorm in inference mode.
    pub frozen: Vec<String>,
}

impl Default for TrainingMode {
    /// PyTorch's momentum 0.1, nothing frozen.
    fn default() -> Self {
        TrainingMode {
            batch_norm_momentum: 0.1,
            frozen: Vec::new(),
        }
    }
}

impl TrainingMode {
    /// Keras' convention: `moving = momentum * moving + (1 - momentum) * batch` (Keras' default
    /// `momentum = 0.99`).
    pub fn keras_momentum(momentum: f32) -> Self {
        TrainingMode {
            batch_norm_momentum: 1.0 - momentum,
            ..Self::default()
        }
    }

    /// Whether the layer at `path` is frozen.
    pub fn is_frozen(&self, path: &LayerPath) -> bool {
        let p = path.to_string();
        self.frozen.iter().any(|f| {
            let f = f.replace('.', "/");
            f.is_empty() || p == f || p.starts_with(&format!("{f}/"))
        })
    }
}

/// A BatchNorm's batch statistics in a training forward pass.
#[derive(Clone, Debug)]
struct BatchStats {
    mean: Vec<f32>,
    /// Biased variance (what the batch was normalised with).
    variance: Vec<f32>,
    /// Values per channel.
    count: usize,
}

/// New running statistics for one BatchNorm after a training forward pass.
#[derive(Clone, Debug, PartialEq)]
pub struct RunningStats {
    /// The BatchNorm's layer path.
    pub path: LayerPath,
    /// New moving mean.
    pub mean: Vec<f32>,
    /// New moving variance.
    pub variance: Vec<f32>,
}

/// Parameter gradients by layer path and kind, and the input's gradient.
#[derive(Clone, Debug)]
pub struct Gradients {
    /// `dL/dparam` for every parameter of a layer that is not frozen, in the model's layouts
    /// (HWIO conv kernels, `(in, out)` dense kernels).
    pub params: BTreeMap<(LayerPath, ParamKind), Tensor>,
    /// `dL/dx`.
    pub input: Tensor,
}

/// A training-mode forward pass over `graph`, keeping what the backward needs.
pub struct ForwardPass<'g, 'm> {
    graph: &'g Graph<'m>,
    mode: TrainingMode,
    values: Vec<Option<Tensor>>,
    stats: Vec<Option<BatchStats>>,
    output: Tensor,
}

impl std::fmt::Debug for ForwardPass<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardPass").field("nodes", &self.graph.nodes().len()).finish()
    }
}

/// Runs `graph` on `x` in training mode.
pub fn forward<'g, 'm>(graph: &'g Graph<'m>, x: &crate::layers::TensorRef, mode: &TrainingMode) -> Result<ForwardPass<'g, 'm>> {
    check_input(graph, x.shape())?;
    check_finite(x)?;
    if !(0.0..=1.0).contains(&mode.batch_norm_momentum) {
        return Err(Error::config(
            "training",
            format!("the BatchNorm momentum is a weight in [0, 1], got {}", mode.batch_norm_momentum),
        ));
    }
    let mut values: Vec<Option<Tensor>> = vec![None; graph.value_count()];
    let mut stats = vec![None; graph.nodes().len()];
    values[graph.input().0] = Some(x.as_standard_layout().into_owned());
    for (i, node) in graph.nodes().iter().enumerate() {
        let inputs: Vec<&Tensor> = node
            .inputs
            .iter()
            .map(|v| {
                values[v.0]
                    .as_ref()
                    .ok_or_else(|| Error::config("graph", format!("{} reads a value not yet written", node.name())))
            })
            .collect::<Result<_>>()?;
        let y = match &node.op {
            Op::BatchNorm(bn) if !mode.is_frozen(&node.path) => {
                let (y, s) = batch_norm_training(bn.gamma.as_ref(), bn.beta.as_ref(), bn.epsilon, inputs[0]);
                stats[i] = Some(s);
                y
            }
            Op::Opaque(layer) => {
                return Err(Error::config(
                    layer.type_name(),
                    format!(
                        "{}: a layer lowered to an opaque op has no gradient; build it from the graph's ops to train it",
                        node.name()
                    ),
                ))
            }
            op => reference::eval(op, &inputs).map_err(|e| e.in_layer(&node.path.to_string()))?,
        };
        values[node.output.0] = Some(y);
    }
    let output = values[graph.output().0].clone().unwrap_or_default();
    Ok(ForwardPass {
        graph,
        mode: mode.clone(),
        values,
        stats,
        output,
    })
}

impl ForwardPass<'_, '_> {
    /// The graph's output.
    pub fn output(&self) -> &Tensor {
        &self.output
    }

    /// Each trained BatchNorm's new running statistics, with the momentum of this pass's mode.
    pub fn running_stats_update(&self) -> Vec<RunningStats> {
        let m = self.mode.batch_norm_momentum;
        self.graph
            .nodes()
            .iter()
            .zip(&self.stats)
            .filter_map(|(node, s)| {
                let (Op::BatchNorm(bn), Some(s)) = (&node.op, s) else { return None };
                let unbias = if s.count > 1 { s.count as f64 / (s.count - 1) as f64 } else { 1.0 };
                Some(RunningStats {
                    path: node.path.clone(),
                    mean: bn.mean.iter().zip(&s.mean).map(|(&r, &b)| (1.0 - m) * r + m * b).collect(),
                    variance: bn
                        .variance
                        .iter()
                        .zip(&s.variance)
                        .map(|(&r, &b)| ((1.0 - m) as f64 * r as f64 + m as f64 * b as f64 * unbias) as f32)
                        .collect(),
                })
            })
            .collect()
    }

    /// A value computed by the forward pass.
    pub fn value(&self, v: super::ValueId) -> Result<&Tensor> {
        self.values
            .get(v.0)
            .and_then(Option::as_ref)
            .ok_or_else(|| Error::config("training", format!("value {} is not in this pass", v.0)))
    }

    /// Back-propagates `grad_output` (`dL/dy`, the output's shape) through every node.
    pub fn backward(&self, grad_output: &Tensor) -> Result<Gradients> {
        self.backward_from(self.graph.output(), grad_output)
    }

    /// Back-propagates `grad` as the gradient of the value `from` (nodes after it, which it
    /// does not reach, are skipped: a loss taken before a final softmax).
    pub fn backward_from(&self, from: super::ValueId, grad: &Tensor) -> Result<Gradients> {
        let at = self.value(from)?;
        if grad.shape() != at.shape() {
            return Err(Error::shape(
                "backward",
                format!("a gradient of {}", ShapeFmt(at.shape())),
                format!("{}", ShapeFmt(grad.shape())),
            ));
        }
        let mut grads: Vec<Option<Tensor>> = vec![None; self.graph.value_count()];
        grads[from.0] = Some(grad.as_standard_layout().into_owned());
        let mut params = BTreeMap::new();
        for (i, node) in self.graph.nodes().iter().enumerate().rev() {
            let Some(dy) = grads[node.output.0].take() else { continue };
            let kept = |v: super::ValueId| {
                self.values[v.0]
                    .as_ref()
                    .ok_or_else(|| Error::config("backward", format!("{}: a value of the forward pass is missing", node.name())))
            };
            let inputs: Vec<&Tensor> = node.inputs.iter().map(|&v| kept(v)).collect::<Result<_>>()?;
            let y = kept(node.output)?;
            let frozen = self.mode.is_frozen(&node.path);
            let (dx, dp) =
                backward_op(node, &inputs, y, &dy, self.stats[i].as_ref(), frozen).map_err(|e| e.in_layer(&node.path.to_string()))?;
            for (v, d) in node.inputs.iter().zip(dx) {
                let Some(d) = d else { continue };
                match &mut grads[v.0] {
                    Some(acc) => *acc += &d,
                    slot => *slot = Some(d),
                }
            }
            if !frozen {
                for (kind, g) in dp {
                    params.insert((node.path.clone(), kind), g);
                }
            }
        }
        let input = grads[self.graph.input().0]
            .take()
            .unwrap_or_else(|| ArrayD::zeros(self.values[self.graph.input().0].as_ref().map_or(IxDyn(&[0]), |x| x.raw_dim())));
        Ok(Gradients { params, input })
    }
}

/// Training-mode BatchNorm over the last axis: `(y, batch statistics)`.
fn batch_norm_training(gamma: &[f32], beta: &[f32], epsilon: f32, x: &Tensor) -> (Tensor, BatchStats) {
    let c = gamma.len();
    let data = x.as_slice().unwrap_or(&[]);
    let count = data.len() / c.max(1);
    let mut sum = vec![0.0f64; c];
    for px in data.chunks_exact(c) {
        sum.iter_mut().zip(px).for_each(|(s, &v)| *s += v as f64);
    }
    let mean: Vec<f64> = sum.iter().map(|s| s / count.max(1) as f64).collect();
    let mut sq = vec![0.0f64; c];
    for px in data.chunks_exact(c) {
        sq.iter_mut()
            .zip(px)
            .zip(&mean)
            .for_each(|((s, &v), m)| *s += (v as f64 - m).powi(2));
    }
    let variance: Vec<f64> = sq.iter().map(|s| s / count.max(1) as f64).collect();
    let inv: Vec<f64> = variance.iter().map(|v| 1.0 / (v + epsilon as f64).sqrt()).collect();
    let mut y = x.clone();
    if let Some(out) = y.as_slice_mut() {
        for px in out.chunks_exact_mut(c) {
            for (ch, v) in px.iter_mut().enumerate() {
                *v = ((*v as f64 - mean[ch]) * inv[ch] * gamma[ch] as f64 + beta[ch] as f64) as f32;
            }
        }
    }
    let stats = BatchStats {
        mean: mean.iter().map(|&m| m as f32).collect(),
        variance: variance.iter().map(|&v| v as f32).collect(),
        count,
    };
    (y, stats)
}

type OpGrads = (Vec<Option<Tensor>>, Vec<(ParamKind, Tensor)>);

fn slice(t: &Tensor) -> &[f32] {
    t.as_slice().unwrap_or(&[])
}

/// The backward of one node: the gradients of its inputs (in order) and of its parameters.
/// `frozen` skips the parameter gradients (and is how a frozen BatchNorm ran: in inference mode).
fn backward_op(node: &Node<'_>, inputs: &[&Tensor], y: &Tensor, dy: &Tensor, stats: Option<&BatchStats>, frozen: bool) -> Result<OpGrads> {
    let x = inputs[0];
    let same = |d: Tensor| (vec![Some(d)], Vec::new());
    Ok(match &node.op {
        Op::Conv2d(c) => conv_backward(c, inputs, y, dy, frozen)?,
        Op::BatchNorm(bn) => match stats {
            Some(s) => batch_norm_backward(bn.gamma.as_ref(), bn.epsilon, s, x, dy)?,
            None => {
                // Inference mode (frozen): an affine map.
                let (scale, _) = bn.scale_shift();
                same(per_channel(dy, |d, ch| d * scale[ch]))
            }
        },
        Op::Affine { scale, relu, .. } => same(per_channel_masked(dy, y, *relu, |d, ch| d * scale[ch])),
        Op::Add { relu } => {
            let d = if *relu { relu_mask(dy, y) } else { dy.clone() };
            (inputs.iter().map(|_| Some(d.clone())).collect(), Vec::new())
        }
        Op::Concat => {
            let last = Axis(x.ndim() - 1);
            let mut at = 0;
            let parts = inputs
                .iter()
                .map(|t| {
                    let c = t.shape()[t.ndim() - 1];
                    let part = dy.slice_axis(last, (at..at + c).into()).as_standard_layout().into_owned();
                    at += c;
                    Some(part)
                })
                .collect();
            (parts, Vec::new())
        }
        Op::ChannelMul => {
            let w = inputs[1];
            let c = *w.shape().last().unwrap_or(&1);
            let per_image = x.len() / x.shape()[0].max(1);
            let mut dx = dy.clone();
            let mut dw = vec![0.0f32; w.len()];
            if let Some(d) = dx.as_slice_mut() {
                for (img, (dimg, ximg)) in d.chunks_exact_mut(per_image).zip(slice(x).chunks_exact(per_image)).enumerate() {
                    let wi = &slice(w)[img * c..(img + 1) * c];
                    let dwi = &mut dw[img * c..(img + 1) * c];
                    for (dpx, xpx) in dimg.chunks_exact_mut(c).zip(ximg.chunks_exact(c)) {
                        for ch in 0..c {
                            dwi[ch] += dpx[ch] * xpx[ch];
                            dpx[ch] *= wi[ch];
                        }
                    }
                }
            }
            (vec![Some(dx), Some(tensor(w.shape(), dw)?)], Vec::new())
        }
        Op::Unary(f) => {
            let d = ndarray::Zip::from(dy).and(x).and(y).map_collect(|&d, &x, &y| match f {
                // PyTorch's threshold backward: the gradient passes where the output is positive.
                UnaryFn::Relu => {
                    if y > 0.0 {
                        d
                    } else {
                        0.0
                    }
                }
                UnaryFn::Relu6 => {
                    if x > 0.0 && x < 6.0 {
                        d
                    } else {
                        0.0
                    }
                }
                UnaryFn::Sigmoid => d * y * (1.0 - y),
            });
            same(d)
        }
        Op::MaxPool(p) | Op::AvgPool(p) => {
            let g = p.geometry(x.shape()[0], &x.shape()[1..])?;
            let mut dx = vec![0.0; g.input_len()];
            match node.op {
                Op::MaxPool(_) => backward::max_pool2d_backward(slice(x), &g, slice(dy), &mut dx)?,
                _ => backward::avg_pool2d_backward(&g, slice(dy), &mut dx)?,
            }
            same(tensor(x.shape(), dx)?)
        }
        Op::GlobalAvgPool => {
            let s = x.shape();
            let mut dx = vec![0.0; x.len()];
            backward::global_avg_pool_backward([s[0], s[1], s[2], s[3]], slice(dy), &mut dx)?;
            same(tensor(s, dx)?)
        }
        Op::Pad(p) => {
            let (h, w) = (x.shape()[1], x.shape()[2]);
            same(
                dy.slice(s![.., p.top..p.top + h, p.left..p.left + w, ..])
                    .as_standard_layout()
                    .into_owned()
                    .into_dyn(),
            )
        }
        Op::Dense(d) => {
            let x2 = x
                .view()
                .into_dimensionality::<Ix2>()
                .map_err(|e| Error::shape("Dense", "(n, in)", e.to_string()))?;
            let dy2 = dy
                .view()
                .into_dimensionality::<Ix2>()
                .map_err(|e| Error::shape("Dense", "(n, units)", e.to_string()))?;
            let w = ArrayView2::from_shape((d.in_features, d.units), d.kernel.as_ref())
                .map_err(|e| Error::shape("Dense", "(in, out)", e.to_string()))?;
            let mut dx = ndarray::Array2::<f32>::zeros(x2.raw_dim());
            kernels::sgemm(1.0, dy2, w.t(), 0.0, dx.view_mut())?;
            let mut params = Vec::new();
            if !frozen {
                let mut dw = ndarray::Array2::<f32>::zeros((d.in_features, d.units));
                kernels::sgemm(1.0, x2.t(), dy2, 0.0, dw.view_mut())?;
                params.push((ParamKind::Kernel, dw.into_dyn()));
                if d.bias.is_some() {
                    params.push((ParamKind::Bias, dy2.sum_axis(Axis(0)).into_dyn()));
                }
            }
            (vec![Some(dx.into_dyn())], params)
        }
        Op::Softmax { axis } => {
            let mut dx = dy.as_standard_layout().into_owned();
            for (mut d, yl) in dx.lanes_mut(Axis(axis + 1)).into_iter().zip(y.lanes(Axis(axis + 1))) {
                let dot: f32 = d.iter().zip(yl.iter()).map(|(a, b)| a * b).sum();
                d.iter_mut().zip(yl.iter()).for_each(|(g, &p)| *g = p * (*g - dot));
            }
            same(dx)
        }
        Op::Flatten => same(
            dy.as_standard_layout()
                .into_owned()
                .into_shape_with_order(x.raw_dim())
                .map_err(|e| Error::shape("Flatten", "a reshapeable gradient", e.to_string()))?,
        ),
        Op::Opaque(layer) => return Err(Error::config(layer.type_name(), "an opaque layer has no gradient")),
    })
}

fn relu_mask(dy: &Tensor, y: &Tensor) -> Tensor {
    ndarray::Zip::from(dy).and(y).map_collect(|&d, &y| if y > 0.0 { d } else { 0.0 })
}

fn per_channel_masked(dy: &Tensor, y: &Tensor, relu: bool, f: impl Fn(f32, usize) -> f32) -> Tensor {
    let d = if relu { relu_mask(dy, y) } else { dy.clone() };
    per_channel(&d, f)
}

/// Training-mode BatchNorm backward, with `x_hat = (x - mean) * inv_std`:
/// `dgamma = sum(dy * x_hat)`, `dbeta = sum(dy)`,
/// `dx = gamma * inv_std * (dy - mean(dy) - x_hat * mean(dy * x_hat))`.
fn batch_norm_backward(gamma: &[f32], epsilon: f32, s: &BatchStats, x: &Tensor, dy: &Tensor) -> Result<OpGrads> {
    let c = gamma.len();
    let inv: Vec<f64> = s.variance.iter().map(|&v| 1.0 / (v as f64 + epsilon as f64).sqrt()).collect();
    let (xs, ds) = (slice(x), slice(dy));
    let mut sum_dy = vec![0.0f64; c];
    let mut sum_dy_xhat = vec![0.0f64; c];
    for (px, dpx) in xs.chunks_exact(c).zip(ds.chunks_exact(c)) {
        for ch in 0..c {
            let xhat = (px[ch] as f64 - s.mean[ch] as f64) * inv[ch];
            sum_dy[ch] += dpx[ch] as f64;
            sum_dy_xhat[ch] += dpx[ch] as f64 * xhat;
        }
    }
    let n = s.count.max(1) as f64;
    let mut dx = vec![0.0f32; xs.len()];
    for ((out, px), dpx) in dx.chunks_exact_mut(c).zip(xs.chunks_exact(c)).zip(ds.chunks_exact(c)) {
        for ch in 0..c {
            let xhat = (px[ch] as f64 - s.mean[ch] as f64) * inv[ch];
            out[ch] = (gamma[ch] as f64 * inv[ch] * (dpx[ch] as f64 - sum_dy[ch] / n - xhat * sum_dy_xhat[ch] / n)) as f32;
        }
    }
    let params = vec![
        (ParamKind::Gamma, tensor(&[c], sum_dy_xhat.iter().map(|&v| v as f32).collect())?),
        (ParamKind::Beta, tensor(&[c], sum_dy.iter().map(|&v| v as f32).collect())?),
    ];
    Ok((vec![Some(tensor(x.shape(), dx)?)], params))
}

/// Convolution backward, through its epilogue (`act(conv * scale + bias + residual)`), group by
/// group for a grouped convolution.
fn conv_backward(c: &ConvOp<'_>, inputs: &[&Tensor], y: &Tensor, dy: &Tensor, frozen: bool) -> Result<OpGrads> {
    let x = inputs[0];
    let dz = if c.relu { relu_mask(dy, y) } else { dy.clone() };
    let residual_grad = c.residual.then(|| dz.clone());
    let dacc = match &c.scale {
        Some(scale) => per_channel(&dz, |d, ch| d * scale[ch]),
        None => dz.clone(),
    };
    let batch = x.shape()[0];
    let gg = c.geometry(batch, &x.shape()[1..])?;
    let (groups, cin, cout) = (c.groups, gg.in_channels, gg.out_channels);
    let (xs, ds) = (slice(x), slice(&dacc));
    let mut dx = vec![0.0f32; x.len()];
    let mut dk = vec![0.0f32; c.kernel.len()];
    let mut ws = Vec::new();
    let (mut xg, mut dg, mut kg) = (Vec::new(), Vec::new(), Vec::new());
    let mut dxg = vec![0.0f32; gg.input_len()];
    let mut dkg = vec![0.0f32; gg.kernel_len()];
    for group in 0..groups {
        // One group's channels, contiguous (no copy for a dense convolution).
        let (xv, dv, kv): (&[f32], &[f32], &[f32]) = if groups == 1 {
            (xs, ds, c.kernel.as_ref())
        } else {
            xg.clear();
            xs.chunks_exact(cin * groups)
                .for_each(|px| xg.extend_from_slice(&px[group * cin..(group + 1) * cin]));
            dg.clear();
            ds.chunks_exact(cout * groups)
                .for_each(|px| dg.extend_from_slice(&px[group * cout..(group + 1) * cout]));
            kg.clear();
            c.kernel
                .chunks_exact(cout * groups)
                .for_each(|row| kg.extend_from_slice(&row[group * cout..(group + 1) * cout]));
            (&xg, &dg, &kg)
        };
        backward::conv2d_backward_input(dv, &gg, kv, &mut dxg, &mut ws)?;
        if !frozen {
            backward::conv2d_backward_kernel(xv, &gg, dv, &mut dkg, &mut ws)?;
        }
        if groups == 1 {
            dx.copy_from_slice(&dxg);
            dk.copy_from_slice(&dkg);
        } else {
            for (dst, src) in dx.chunks_exact_mut(cin * groups).zip(dxg.chunks_exact(cin)) {
                dst[group * cin..(group + 1) * cin].copy_from_slice(src);
            }
            for (dst, src) in dk.chunks_exact_mut(cout * groups).zip(dkg.chunks_exact(cout)) {
                dst[group * cout..(group + 1) * cout].copy_from_slice(src);
            }
        }
    }
    let mut params = Vec::new();
    if !frozen {
        let kshape = [c.kernel_size[0], c.kernel_size[1], cin, c.out_channels];
        params.push((ParamKind::Kernel, tensor(&kshape, dk)?));
        if c.bias.is_some() {
            let mut db = vec![0.0; c.out_channels];
            backward::conv2d_backward_bias(slice(&dz), c.out_channels, &mut db)?;
            params.push((ParamKind::Bias, tensor(&[c.out_channels], db)?));
        }
    }
    let mut grads = vec![Some(tensor(x.shape(), dx)?)];
    if let Some(r) = residual_grad {
        grads.push(Some(r));
    }
    Ok((grads, params))
}
