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

use ndarray::{s, ArrayView2, Axis, Ix2};

use super::op::{ConvOp, Op, UnaryFn};
use super::reference::{self, check_input, per_channel, tensor};
use super::{Graph, Node};
use crate::error::{Error, Result, ShapeFmt};
use crate::kernels::threaded::{self, Threads};
use crate::kernels::{self, backward, Rectifier};
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
    /// Compute `dL/dx`, the input's gradient (on by default). Off, the backward skips every
    /// node no trainable parameter lies before (a frozen backbone costs no backward) and
    /// [`Gradients::input`] holds zeros.
    pub input_gradient: bool,
}

impl Default for TrainingMode {
    /// PyTorch's momentum 0.1, nothing frozen, the input's gradient computed.
    fn default() -> Self {
        TrainingMode {
            batch_norm_momentum: 0.1,
            frozen: Vec::new(),
            input_gradient: true,
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
    /// Mean, biased variance (what the batch was normalised with), the forward's per-channel
    /// map, and whether the ReLU after it was fused in.
    kernel: threaded::BatchNormStats,
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
    /// Time each node's backward took, in the graph's node order (zero for nodes the gradient
    /// did not reach).
    pub node_times: Vec<std::time::Duration>,
}

/// The threads a pass runs on: its own single thread, or a caller's pool.
enum ThreadsRef<'g> {
    Own(Threads),
    Borrowed(&'g Threads),
}

impl ThreadsRef<'_> {
    fn get(&self) -> &Threads {
        match self {
            ThreadsRef::Own(t) => t,
            ThreadsRef::Borrowed(t) => t,
        }
    }
}

/// A training-mode forward pass over `graph`, keeping what the backward needs.
pub struct ForwardPass<'g, 'm> {
    graph: &'g Graph<'m>,
    threads: ThreadsRef<'g>,
    mode: TrainingMode,
    values: Vec<Option<Tensor>>,
    stats: Vec<Option<BatchStats>>,
    /// `fused[i]`: node `i` is a BatchNorm whose ReLU (node `i + 1`, its output's one reader)
    /// ran with it as one pass; the BatchNorm's own output was not kept.
    fused: Vec<bool>,
    output: Tensor,
    times: Vec<std::time::Duration>,
}

impl std::fmt::Debug for ForwardPass<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardPass").field("nodes", &self.graph.nodes().len()).finish()
    }
}

/// Runs `graph` on `x` in training mode, on the calling thread.
pub fn forward<'g, 'm>(graph: &'g Graph<'m>, x: &crate::layers::TensorRef, mode: &TrainingMode) -> Result<ForwardPass<'g, 'm>> {
    forward_on(graph, x, mode, ThreadsRef::Own(Threads::new(1)?))
}

/// [`forward`] on `threads` (the backward runs on them too); the results are the same bits
/// whatever the thread count.
pub fn forward_with<'g, 'm>(
    graph: &'g Graph<'m>,
    x: &crate::layers::TensorRef,
    mode: &TrainingMode,
    threads: &'g Threads,
) -> Result<ForwardPass<'g, 'm>> {
    forward_on(graph, x, mode, ThreadsRef::Borrowed(threads))
}

fn forward_on<'g, 'm>(
    graph: &'g Graph<'m>,
    x: &crate::layers::TensorRef,
    mode: &TrainingMode,
    threads: ThreadsRef<'g>,
) -> Result<ForwardPass<'g, 'm>> {
    let pool = threads.get();
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
    // The input, copied into a reused buffer (logical order, whatever `x`'s layout).
    let mut input = pool.take(x.len());
    match x.as_slice() {
        Some(s) => input.copy_from_slice(s),
        None => input.iter_mut().zip(x.iter()).for_each(|(d, &v)| *d = v),
    }
    values[graph.input().0] = Some(tensor(x.shape(), input)?);
    let mut times = vec![std::time::Duration::ZERO; graph.nodes().len()];
    let fused = fused_relus(graph, mode);
    for (i, node) in graph.nodes().iter().enumerate() {
        if i > 0 && fused[i - 1] {
            // This ReLU ran with the BatchNorm before it.
            continue;
        }
        let start = std::time::Instant::now();
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
                let (y, s) = batch_norm_training(pool, bn.gamma.as_ref(), bn.beta.as_ref(), bn.epsilon, fused[i], inputs[0])
                    .map_err(|e| e.in_layer(&node.path.to_string()))?;
                stats[i] = Some(s);
                if fused[i] {
                    values[graph.nodes()[i + 1].output.0] = Some(y);
                    times[i] = start.elapsed();
                    continue;
                }
                y
            }
            Op::Conv2d(c) if c.groups == 1 => conv_forward(pool, c, &inputs).map_err(|e| e.in_layer(&node.path.to_string()))?,
            Op::MaxPool(p) | Op::AvgPool(p) => {
                let x = inputs[0];
                let g = p
                    .geometry(x.shape()[0], &x.shape()[1..])
                    .map_err(|e| e.in_layer(&node.path.to_string()))?;
                let mut y = pool.take(g.output_len());
                let max = matches!(node.op, Op::MaxPool(_));
                threaded::pool2d_forward(pool, slice(x), &g, max, &mut y).map_err(|e| e.in_layer(&node.path.to_string()))?;
                tensor(&[g.batch, g.out_hw[0], g.out_hw[1], g.channels], y)?
            }
            Op::Unary(f) => {
                let (f, x) = (*f, slice(inputs[0]));
                let mut y = pool.take(x.len());
                pool.elementwise(&mut y, &|at, out| out.iter_mut().zip(&x[at..]).for_each(|(o, &v)| *o = f.apply(v)));
                tensor(inputs[0].shape(), y)?
            }
            Op::Add { rectifier } if inputs.len() == 2 && inputs[0].shape() == inputs[1].shape() => {
                let (rectifier, a, b) = (*rectifier, slice(inputs[0]), slice(inputs[1]));
                let mut y = pool.take(a.len());
                pool.elementwise(&mut y, &|at, out| {
                    for ((o, &p), &q) in out.iter_mut().zip(&a[at..]).zip(&b[at..]) {
                        *o = rectifier.apply(p + q);
                    }
                });
                tensor(inputs[0].shape(), y)?
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
        times[i] = start.elapsed();
    }
    let output = values[graph.output().0].clone().unwrap_or_default();
    Ok(ForwardPass {
        graph,
        threads,
        mode: mode.clone(),
        values,
        stats,
        fused,
        output,
        times,
    })
}

impl ForwardPass<'_, '_> {
    /// Ends the pass, handing its values' buffers back to its threads for the next step.
    pub fn recycle(mut self) {
        let threads = self.threads.get();
        for v in self.values.drain(..).flatten() {
            threads.give(v.into_raw_vec_and_offset().0);
        }
    }

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
                    mean: bn.mean.iter().zip(&s.kernel.mean).map(|(&r, &b)| (1.0 - m) * r + m * b).collect(),
                    variance: bn
                        .variance
                        .iter()
                        .zip(&s.kernel.variance)
                        .map(|(&r, &b)| ((1.0 - m) as f64 * r as f64 + m as f64 * b as f64 * unbias) as f32)
                        .collect(),
                })
            })
            .collect()
    }

    /// Time each node's forward took, in the graph's node order.
    pub fn node_times(&self) -> &[std::time::Duration] {
        &self.times
    }

    /// A value computed by the forward pass. The output of a BatchNorm whose one reader is a
    /// ReLU is not kept (the two run as one pass): asking for it is an error.
    pub fn value(&self, v: super::ValueId) -> Result<&Tensor> {
        self.values.get(v.0).and_then(Option::as_ref).ok_or_else(|| {
            let fused = self.graph.nodes().iter().zip(&self.fused).any(|(n, &f)| f && n.output == v);
            let why = if fused {
                ": a BatchNorm's output that its ReLU overwrote in the same pass"
            } else {
                ""
            };
            Error::config("training", format!("value {} is not in this pass{why}", v.0))
        })
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
        // Values some trainable parameter lies before: the only ones whose gradient matters
        // when the input's gradient is not wanted.
        let mut upstream = vec![self.mode.input_gradient; self.graph.value_count()];
        if !self.mode.input_gradient {
            for node in self.graph.nodes() {
                let trainable = matches!(node.op, Op::Conv2d(_) | Op::BatchNorm(_) | Op::Dense(_)) && !self.mode.is_frozen(&node.path);
                upstream[node.output.0] = trainable || node.inputs.iter().any(|v| upstream[v.0]);
            }
        }
        let mut grads: Vec<Option<Tensor>> = vec![None; self.graph.value_count()];
        grads[from.0] = Some(grad.as_standard_layout().into_owned());
        let mut params = BTreeMap::new();
        let threads = self.threads.get();
        // The kernel gradients' partial sums (kept in the threads' store between steps).
        let mut scratch = threads.take_partials();
        let mut node_times = vec![std::time::Duration::ZERO; self.graph.nodes().len()];
        for (i, node) in self.graph.nodes().iter().enumerate().rev() {
            let Some(dy) = grads[node.output.0].take() else { continue };
            if !upstream[node.output.0] {
                threads.give(dy.into_raw_vec_and_offset().0);
                continue;
            }
            if i > 0 && self.fused[i - 1] {
                // A ReLU fused into the BatchNorm before it: that BatchNorm's backward masks
                // `dy` (its output had this node as its only reader).
                grads[node.inputs[0].0] = Some(dy);
                continue;
            }
            let start = std::time::Instant::now();
            let kept = |v: super::ValueId| {
                self.values[v.0]
                    .as_ref()
                    .ok_or_else(|| Error::config("backward", format!("{}: a value of the forward pass is missing", node.name())))
            };
            let inputs: Vec<&Tensor> = node.inputs.iter().map(|&v| kept(v)).collect::<Result<_>>()?;
            // (A fused BatchNorm's own output was not kept; its backward reads only `x`.)
            let y = kept(if self.fused[i] {
                self.graph.nodes()[i + 1].output
            } else {
                node.output
            })?;
            let frozen = self.mode.is_frozen(&node.path);
            let wanted = upstream[node.inputs[0].0];
            let (dx, dp) = backward_op(threads, &mut scratch, node, &inputs, y, &dy, self.stats[i].as_ref(), frozen, wanted)
                .map_err(|e| e.in_layer(&node.path.to_string()))?;
            threads.give(dy.into_raw_vec_and_offset().0);
            for (v, d) in node.inputs.iter().zip(dx) {
                let Some(d) = d else { continue };
                match &mut grads[v.0] {
                    Some(acc) if acc.shape() == d.shape() => {
                        if let (Some(a), Some(b)) = (acc.as_slice_mut(), d.as_slice()) {
                            threads.elementwise(a, &|at, out| out.iter_mut().zip(&b[at..]).for_each(|(o, v)| *o += v));
                        } else {
                            *acc += &d;
                        }
                        threads.give(d.into_raw_vec_and_offset().0);
                    }
                    Some(acc) => *acc += &d,
                    slot => *slot = Some(d),
                }
            }
            if !frozen {
                for (kind, g) in dp {
                    params.insert((node.path.clone(), kind), g);
                }
            }
            node_times[i] = start.elapsed();
        }
        threads.give_partials(scratch);
        let input = match grads[self.graph.input().0].take() {
            Some(g) => g,
            None => {
                let shape = self.values[self.graph.input().0].as_ref().map_or(&[0][..], |x| x.shape());
                tensor(shape, threads.take_zeroed(shape.iter().product()))?
            }
        };
        Ok(Gradients { params, input, node_times })
    }
}

/// For each node, whether it is a training-mode BatchNorm whose output's only reader is a ReLU
/// right after it (not the graph's output): the pair then runs as one pass forward and one
/// backward, and the BatchNorm's output is never written.
fn fused_relus(graph: &Graph<'_>, mode: &TrainingMode) -> Vec<bool> {
    let mut readers = vec![0usize; graph.value_count()];
    for node in graph.nodes() {
        node.inputs.iter().for_each(|v| readers[v.0] += 1);
    }
    let nodes = graph.nodes();
    (0..nodes.len())
        .map(|i| {
            let (node, next) = (&nodes[i], nodes.get(i + 1));
            matches!(node.op, Op::BatchNorm(_))
                && !mode.is_frozen(&node.path)
                && node.output != graph.output()
                && readers[node.output.0] == 1
                && next.is_some_and(|n| matches!(n.op, Op::Unary(UnaryFn::Relu)) && n.inputs == [node.output])
        })
        .collect()
}

/// Training-mode BatchNorm over the last axis (with a ReLU after it when `relu`): `(y, batch
/// statistics)`.
fn batch_norm_training(
    threads: &Threads,
    gamma: &[f32],
    beta: &[f32],
    epsilon: f32,
    relu: bool,
    x: &Tensor,
) -> Result<(Tensor, BatchStats)> {
    let mut y = threads.take(x.len());
    let kernel = threaded::batch_norm_forward(threads, slice(x), gamma, beta, epsilon, relu, &mut y)?;
    let count = x.len() / gamma.len().max(1);
    Ok((tensor(x.shape(), y)?, BatchStats { kernel, count }))
}

/// A dense convolution's forward on the threads, then its epilogue
/// (`act(conv * scale + bias + residual)`, as [`reference::eval`] applies it).
fn conv_forward(threads: &Threads, c: &ConvOp<'_>, inputs: &[&Tensor]) -> Result<Tensor> {
    let x = inputs[0];
    let g = c.geometry(x.shape()[0], &x.shape()[1..])?;
    let packed = threaded::pack_kernel_reused(threads, &c.kernel, &g)?;
    let mut y = threads.take(g.output_len());
    let result = threaded::conv2d_forward(threads, slice(x), &g, &packed, &mut y);
    threads.give_packed(packed);
    result?;
    let residual = if c.residual { Some(slice(inputs[1])) } else { None };
    if c.scale.is_some() || c.bias.is_some() || residual.is_some() || !c.rectifier.is_identity() {
        let n = c.out_channels;
        for (i, px) in y.chunks_exact_mut(n).enumerate() {
            for (o, v) in px.iter_mut().enumerate() {
                let mut t = c.scale.as_ref().map_or(*v, |s| *v * s[o]) + c.bias.as_ref().map_or(0.0, |b| b[o]);
                if let Some(r) = residual {
                    t += r[i * n + o];
                }
                *v = c.rectifier.apply(t);
            }
        }
    }
    tensor(&[g.batch, g.out_hw[0], g.out_hw[1], c.out_channels], y)
}

type OpGrads = (Vec<Option<Tensor>>, Vec<(ParamKind, Tensor)>);

fn slice(t: &Tensor) -> &[f32] {
    t.as_slice().unwrap_or(&[])
}

/// The backward of one node: the gradients of its inputs (in order) and of its parameters.
/// `frozen` skips the parameter gradients (and is how a frozen BatchNorm ran: in inference mode);
/// `!wanted` lets a convolution skip its first input's gradient (nothing before it needs one).
#[allow(clippy::too_many_arguments)]
fn backward_op(
    threads: &Threads,
    scratch: &mut Vec<f32>,
    node: &Node<'_>,
    inputs: &[&Tensor],
    y: &Tensor,
    dy: &Tensor,
    stats: Option<&BatchStats>,
    frozen: bool,
    wanted: bool,
) -> Result<OpGrads> {
    let x = inputs[0];
    let same = |d: Tensor| (vec![Some(d)], Vec::new());
    Ok(match &node.op {
        Op::Conv2d(c) => conv_backward(threads, scratch, c, inputs, y, dy, frozen, wanted)?,
        Op::BatchNorm(bn) => match stats {
            Some(s) => batch_norm_backward(threads, bn.gamma.as_ref(), bn.beta.as_ref(), bn.epsilon, s, x, dy)?,
            None => {
                // Inference mode (frozen): an affine map.
                let (scale, _) = bn.scale_shift();
                same(per_channel(dy, |d, ch| d * scale[ch]))
            }
        },
        Op::Affine { scale, rectifier, .. } => same(per_channel_masked(threads, dy, y, *rectifier, |d, ch| d * scale[ch])?),
        Op::Add { rectifier } => {
            let d = if rectifier.is_identity() {
                copy(threads, dy)?
            } else {
                rectifier_mask(threads, *rectifier, dy, y)?
            };
            let mut grads: Vec<Option<Tensor>> = inputs[1..].iter().map(|_| copy(threads, &d).map(Some)).collect::<Result<_>>()?;
            grads.insert(0, Some(d));
            (grads, Vec::new())
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
            let (f, xs, ys, ds) = (*f, slice(x), slice(y), slice(dy));
            let mut dx = threads.take(xs.len());
            threads.elementwise(&mut dx, &|at, out| {
                let n = out.len();
                let (d, x, y) = (&ds[at..at + n], &xs[at..at + n], &ys[at..at + n]);
                match f {
                    // PyTorch's threshold backward: the gradient passes where the output is positive.
                    UnaryFn::Relu => {
                        for ((o, &d), &y) in out.iter_mut().zip(d).zip(y) {
                            *o = if y > 0.0 { d } else { 0.0 };
                        }
                    }
                    UnaryFn::Relu6 => {
                        for ((o, &d), &x) in out.iter_mut().zip(d).zip(x) {
                            *o = if x > 0.0 && x < 6.0 { d } else { 0.0 };
                        }
                    }
                    UnaryFn::Sigmoid => {
                        for ((o, &d), &y) in out.iter_mut().zip(d).zip(y) {
                            *o = d * y * (1.0 - y);
                        }
                    }
                }
            });
            same(tensor(x.shape(), dx)?)
        }
        Op::MaxPool(p) | Op::AvgPool(p) => {
            let g = p.geometry(x.shape()[0], &x.shape()[1..])?;
            let mut dx = threads.take(g.input_len());
            threaded::pool2d_backward(threads, slice(x), &g, matches!(node.op, Op::MaxPool(_)), slice(dy), &mut dx)?;
            same(tensor(x.shape(), dx)?)
        }
        Op::GlobalAvgPool => {
            let s = x.shape();
            let mut dx = threads.take_zeroed(x.len());
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

/// `dy` where `y > 0`, else 0 (ReLU's backward, from its output).
fn rectifier_mask(threads: &Threads, rectifier: Rectifier, dy: &Tensor, y: &Tensor) -> Result<Tensor> {
    let (ds, ys) = (slice(dy), slice(y));
    let mut out = threads.take(ds.len());
    threads.elementwise(&mut out, &|at, o| {
        for ((o, &d), &y) in o.iter_mut().zip(&ds[at..]).zip(&ys[at..]) {
            *o = if rectifier.passes(y) { d } else { 0.0 };
        }
    });
    tensor(dy.shape(), out)
}

/// A copy of `t` in a reused buffer.
fn copy(threads: &Threads, t: &Tensor) -> Result<Tensor> {
    let src = slice(t);
    let mut out = threads.take(src.len());
    threads.elementwise(&mut out, &|at, o| o.copy_from_slice(&src[at..at + o.len()]));
    tensor(t.shape(), out)
}

fn per_channel_masked(threads: &Threads, dy: &Tensor, y: &Tensor, rectifier: Rectifier, f: impl Fn(f32, usize) -> f32) -> Result<Tensor> {
    Ok(if rectifier.is_identity() {
        per_channel(dy, f)
    } else {
        per_channel(&rectifier_mask(threads, rectifier, dy, y)?, f)
    })
}

/// Training-mode BatchNorm backward ([`threaded::batch_norm_backward`]).
fn batch_norm_backward(
    threads: &Threads,
    gamma: &[f32],
    beta: &[f32],
    epsilon: f32,
    s: &BatchStats,
    x: &Tensor,
    dy: &Tensor,
) -> Result<OpGrads> {
    let c = gamma.len();
    let mut dx = threads.take(x.len());
    let (dgamma, dbeta) = threaded::batch_norm_backward(threads, slice(x), slice(dy), gamma, beta, &s.kernel, epsilon, &mut dx)?;
    let params = vec![(ParamKind::Gamma, tensor(&[c], dgamma)?), (ParamKind::Beta, tensor(&[c], dbeta)?)];
    Ok((vec![Some(tensor(x.shape(), dx)?)], params))
}

/// A grouped convolution's gradients, group by group on the direct kernels: each group's
/// channels gathered contiguous, its gradients scattered back into `dx` and `dk`.
fn grouped_conv_backward(
    c: &ConvOp<'_>,
    gg: &kernels::ConvGeometry,
    xs: &[f32],
    ds: &[f32],
    frozen: bool,
    dx: &mut [f32],
    dk: &mut [f32],
) -> Result<()> {
    let (groups, cin, cout) = (c.groups, gg.in_channels, gg.out_channels);
    let mut ws = Vec::new();
    let (mut xg, mut dg, mut kg) = (Vec::new(), Vec::new(), Vec::new());
    let mut dxg = vec![0.0f32; gg.input_len()];
    let mut dkg = vec![0.0f32; gg.kernel_len()];
    for group in 0..groups {
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
        backward::conv2d_backward_input(&dg, gg, &kg, &mut dxg, &mut ws)?;
        if !frozen {
            backward::conv2d_backward_kernel(&xg, gg, &dg, &mut dkg, &mut ws)?;
        }
        for (dst, src) in dx.chunks_exact_mut(cin * groups).zip(dxg.chunks_exact(cin)) {
            dst[group * cin..(group + 1) * cin].copy_from_slice(src);
        }
        for (dst, src) in dk.chunks_exact_mut(cout * groups).zip(dkg.chunks_exact(cout)) {
            dst[group * cout..(group + 1) * cout].copy_from_slice(src);
        }
    }
    Ok(())
}

/// Convolution backward, through its epilogue (`act(conv * scale + bias + residual)`), group by
/// group for a grouped convolution. Without `want_input`, the input's gradient is not computed
/// (`None`).
#[allow(clippy::too_many_arguments)]
fn conv_backward(
    threads: &Threads,
    scratch: &mut Vec<f32>,
    c: &ConvOp<'_>,
    inputs: &[&Tensor],
    y: &Tensor,
    dy: &Tensor,
    frozen: bool,
    want_input: bool,
) -> Result<OpGrads> {
    let x = inputs[0];
    let masked = if c.rectifier.is_identity() {
        None
    } else {
        Some(rectifier_mask(threads, c.rectifier, dy, y)?)
    };
    let dz = masked.as_ref().unwrap_or(dy);
    let residual_grad = if c.residual { Some(copy(threads, dz)?) } else { None };
    let scaled = c.scale.as_ref().map(|scale| per_channel(dz, |d, ch| d * scale[ch]));
    let dacc = scaled.as_ref().unwrap_or(dz);
    let batch = x.shape()[0];
    let gg = c.geometry(batch, &x.shape()[1..])?;
    let (groups, cin) = (c.groups, gg.in_channels);
    let (xs, ds) = (slice(x), slice(dacc));
    let mut dx = if want_input { Some(threads.take(x.len())) } else { None };
    // (Frozen: no kernel gradient; the grouped path then skips it too.)
    let mut dk = if frozen { Vec::new() } else { threads.take(c.kernel.len()) };
    if groups == 1 {
        // A dense convolution: both GEMMs on the threads.
        if let Some(dx) = &mut dx {
            threaded::conv2d_backward_input(threads, ds, &gg, &c.kernel, dx)?;
        }
        if !frozen {
            threaded::conv2d_backward_kernel(threads, xs, &gg, ds, &mut dk, scratch)?;
        }
    } else {
        let dx = dx.get_or_insert_with(|| threads.take(x.len()));
        grouped_conv_backward(c, &gg, xs, ds, frozen, dx, &mut dk)?;
    }
    let mut params = Vec::new();
    if !frozen {
        let kshape = [c.kernel_size[0], c.kernel_size[1], cin, c.out_channels];
        params.push((ParamKind::Kernel, tensor(&kshape, dk)?));
        if c.bias.is_some() {
            let mut db = vec![0.0; c.out_channels];
            backward::conv2d_backward_bias(slice(dz), c.out_channels, &mut db)?;
            params.push((ParamKind::Bias, tensor(&[c.out_channels], db)?));
        }
    }
    for t in [masked, scaled].into_iter().flatten() {
        threads.give(t.into_raw_vec_and_offset().0);
    }
    let mut grads = vec![match dx {
        Some(dx) => Some(tensor(x.shape(), dx)?),
        None => None,
    }];
    if let Some(r) = residual_grad {
        grads.push(Some(r));
    }
    Ok((grads, params))
}
