//! The reference executor: runs a [`Graph`] node by node with plain kernels (im2col + GEMM
//! convolutions, direct pooling loops), one function per op. This is the definition of what
//! each op computes; [`Layer::forward`](crate::layers::Layer::forward) is this executor, and the
//! fast executor is tested against it.
//!
//! Inputs holding NaN or infinity are refused ([`Error::NonFinite`]), as by every entry point
//! of the crate; an output holding them (from a finite input) is [`Error::NonFiniteOutput`],
//! naming the first node whose output held any.

use ndarray::{s, ArrayD, Axis, Ix2, IxDyn};

use super::op::{ConvOp, DenseOp, Op, PoolOp};
use super::{Graph, ValueId};
use crate::error::{Error, Result, ShapeFmt};
use crate::kernels::{self, Epilogue};
use crate::layers::{check_finite, Tensor, TensorRef};

/// Runs `graph` on the batch `x` (`(n, ...)` with the graph's per-image input shape).
pub fn run(graph: &Graph<'_>, x: &TensorRef) -> Result<Tensor> {
    run_with_taps(graph, x, &[]).map(|(y, _)| y)
}

/// Runs `graph` on `x` and also returns the values `taps`, in order.
pub fn run_with_taps(graph: &Graph<'_>, x: &TensorRef, taps: &[ValueId]) -> Result<(Tensor, Vec<Tensor>)> {
    check_input(graph, x.shape())?;
    check_finite(x)?;
    // The reference executor keeps every value owned (a copy of the input is small beside the
    // arithmetic); the fast path reads views without copying.
    let x: Tensor = x.to_owned();
    let batch = x.shape()[0];
    let n = graph.value_count();
    // The last node reading each value; kept values are never freed.
    let mut last_use = vec![0usize; n];
    for (i, node) in graph.nodes().iter().enumerate() {
        for v in &node.inputs {
            last_use[v.0] = i;
        }
    }
    for v in taps.iter().chain([&graph.output()]) {
        last_use[v.0] = usize::MAX;
    }
    let mut values: Vec<Option<Tensor>> = vec![None; n];
    let input = graph.input();
    for (i, node) in graph.nodes().iter().enumerate() {
        let inputs: Vec<&Tensor> = node
            .inputs
            .iter()
            .map(|v| {
                if *v == input { Some(&x) } else { values[v.0].as_ref() }
                    .ok_or_else(|| Error::config("graph", format!("{} reads value {} before it is written", node.name(), v.0)))
            })
            .collect::<Result<_>>()?;
        let y = eval(&node.op, &inputs).map_err(|e| e.in_layer(&node.path.to_string()))?;
        let want = batched(batch, graph.shape(node.output));
        if y.shape() != want.as_slice() {
            return Err(Error::shape(
                node.name(),
                format!("an output of {}", ShapeFmt(&want)),
                format!("{}", ShapeFmt(y.shape())),
            ));
        }
        values[node.output.0] = Some(y);
        for v in &node.inputs {
            if last_use[v.0] == i {
                values[v.0] = None;
            }
        }
    }
    let take = |v: ValueId, values: &[Option<Tensor>]| -> Tensor {
        if v == input {
            x.clone()
        } else {
            values[v.0].clone().unwrap_or_default()
        }
    };
    let tapped = taps.iter().map(|&v| take(v, &values)).collect();
    let y = take(graph.output(), &values);
    let count = y.iter().filter(|v| !v.is_finite()).count();
    if count > 0 {
        return Err(Error::NonFiniteOutput {
            count,
            origin: format!("they first appear in the output of {}", first_non_finite(graph, &x)),
        });
    }
    Ok((y, tapped))
}

/// The first node whose output holds NaN or infinity: the graph run again keeping every value
/// (only after an output turned out non-finite, so the forward pass itself scans nothing).
fn first_non_finite(graph: &Graph<'_>, x: &Tensor) -> String {
    let mut values: Vec<Option<Tensor>> = vec![None; graph.value_count()];
    values[graph.input().0] = Some(x.clone());
    for node in graph.nodes() {
        let inputs: Option<Vec<&Tensor>> = node.inputs.iter().map(|v| values[v.0].as_ref()).collect();
        let Some(y) = inputs.and_then(|i| eval(&node.op, &i).ok()) else {
            break;
        };
        if y.iter().any(|v| !v.is_finite()) {
            return node.name();
        }
        values[node.output.0] = Some(y);
    }
    "an unknown layer".into()
}

fn batched(batch: usize, shape: &[usize]) -> Vec<usize> {
    let mut s = vec![batch];
    s.extend_from_slice(shape);
    s
}

pub(crate) fn check_input(graph: &Graph<'_>, shape: &[usize]) -> Result<()> {
    let want = graph.shape(graph.input());
    if shape.len() != want.len() + 1 || &shape[1..] != want || shape[0] == 0 {
        return Err(Error::shape(
            "model input",
            format!("a batch of shape (n, {}", &ShapeFmt(want).to_string()[1..]),
            format!("{}", ShapeFmt(shape)),
        ));
    }
    Ok(())
}

/// Evaluates one op on batched inputs (the batch axis first).
pub fn eval(op: &Op<'_>, inputs: &[&Tensor]) -> Result<Tensor> {
    let x = inputs.first().ok_or_else(|| Error::config(op.kind(), "needs at least one input"))?;
    let batch = *x.shape().first().unwrap_or(&0);
    let per_image: Vec<&[usize]> = inputs.iter().map(|t| t.shape().get(1..).unwrap_or(&[])).collect();
    let out_shape = batched(batch, &op.output_shape(&per_image)?);
    match op {
        Op::Conv2d(c) => conv(c, inputs, &out_shape),
        Op::BatchNorm(bn) => {
            let (scale, shift) = bn.scale_shift();
            Ok(per_channel(x, |v, c| v * scale[c] + shift[c]))
        }
        Op::Affine { scale, shift, rectifier } => Ok(per_channel(x, |v, c| rectifier.apply(v * scale[c] + shift[c]))),
        Op::Add { rectifier } => {
            let mut y = x.as_standard_layout().into_owned();
            for other in &inputs[1..] {
                y += *other;
            }
            if !rectifier.is_identity() {
                y.mapv_inplace(|v| rectifier.apply(v));
            }
            Ok(y)
        }
        Op::Concat => {
            let views: Vec<_> = inputs.iter().map(|t| t.view()).collect();
            ndarray::concatenate(Axis(x.ndim() - 1), &views)
                .map(|y| y.as_standard_layout().into_owned())
                .map_err(|e| Error::shape("Concatenate", "inputs of one spatial size", e.to_string()))
        }
        Op::ChannelMul => {
            let w = inputs[1].as_standard_layout();
            let w = w.as_slice().unwrap_or(&[]);
            let c = w.len() / batch.max(1);
            let mut y = x.as_standard_layout().into_owned();
            let per_image = y.len() / batch.max(1);
            if let Some(data) = y.as_slice_mut() {
                for (image, w) in data.chunks_exact_mut(per_image.max(1)).zip(w.chunks_exact(c.max(1))) {
                    for px in image.chunks_exact_mut(c.max(1)) {
                        px.iter_mut().zip(w).for_each(|(v, &w)| *v *= w);
                    }
                }
            }
            Ok(y)
        }
        Op::Unary(f) => Ok(x.mapv(|v| f.apply(v))),
        Op::MaxPool(p) => pool(p, x, &out_shape, true),
        Op::AvgPool(p) => pool(p, x, &out_shape, false),
        Op::GlobalAvgPool => {
            let s = x.shape();
            let dims = [s[0], s[1], s[2], s[3]];
            let x = x.as_standard_layout();
            let mut y = vec![0.0; dims[0] * dims[3]];
            kernels::global_avg_pool(x.as_slice().unwrap_or(&[]), dims, &mut y)?;
            tensor(&out_shape, y)
        }
        Op::Pad(p) => {
            let mut y = ArrayD::zeros(IxDyn(&out_shape));
            let (h, w) = (x.shape()[1], x.shape()[2]);
            y.slice_mut(s![.., p.top..p.top + h, p.left..p.left + w, ..]).assign(*x);
            Ok(y)
        }
        Op::Dense(d) => dense(d, x, &out_shape),
        Op::Softmax { axis } => {
            let mut y = x.as_standard_layout().into_owned();
            for mut lane in y.lanes_mut(Axis(axis + 1)) {
                let max = lane.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                lane.mapv_inplace(|v| (v - max).exp());
                let sum: f32 = lane.sum();
                lane.mapv_inplace(|v| v / sum);
            }
            Ok(y)
        }
        Op::Flatten => x
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order(IxDyn(&out_shape))
            .map_err(|e| Error::shape("Flatten", "a reshapeable batch", e.to_string())),
        Op::Opaque(layer) => layer.forward(x),
    }
}

pub(super) fn tensor(shape: &[usize], data: Vec<f32>) -> Result<Tensor> {
    let len = data.len();
    ArrayD::from_shape_vec(IxDyn(shape), data)
        .map_err(|_| Error::shape("graph", format!("{} elements for {}", len, ShapeFmt(shape)), format!("{len}")))
}

/// `f(value, channel)` over every element, the channel being the last axis.
pub(super) fn per_channel(x: &Tensor, f: impl Fn(f32, usize) -> f32) -> Tensor {
    let mut y = x.as_standard_layout().into_owned();
    let c = *x.shape().last().unwrap_or(&1);
    if let Some(s) = y.as_slice_mut() {
        for px in s.chunks_exact_mut(c.max(1)) {
            px.iter_mut().enumerate().for_each(|(i, v)| *v = f(*v, i));
        }
    }
    y
}

fn conv(c: &ConvOp<'_>, inputs: &[&Tensor], out_shape: &[usize]) -> Result<Tensor> {
    let x = inputs[0];
    let g = c.geometry(x.shape()[0], &x.shape()[1..])?;
    let x = x.as_standard_layout();
    let residual = match c.residual {
        true => Some(inputs[1].as_standard_layout()),
        false => None,
    };
    let mut y = vec![0.0; g.output_len() * c.groups];
    // Without a scale the bias, residual and ReLU run in the kernel's own epilogue (the
    // layer-by-layer numbers the Keras goldens were first matched with); a folded scale comes
    // first, so then the rest follows the GEMM here.
    let epilogue = match &c.scale {
        None => Epilogue {
            bias: c.bias.as_deref(),
            residual: residual.as_ref().and_then(|r| r.as_slice()),
            rectifier: c.rectifier,
        },
        Some(_) => Epilogue::default(),
    };
    kernels::conv2d_grouped(
        x.as_slice().unwrap_or(&[]),
        &g,
        c.groups,
        &c.kernel,
        &epilogue,
        &mut y,
        &mut Vec::new(),
    )?;
    if let Some(scale) = &c.scale {
        let r = residual.as_ref().and_then(|r| r.as_slice());
        let n = c.out_channels;
        for (i, px) in y.chunks_exact_mut(n).enumerate() {
            for (o, v) in px.iter_mut().enumerate() {
                let mut t = *v * scale[o] + c.bias.as_ref().map_or(0.0, |b| b[o]);
                if let Some(r) = r {
                    t += r[i * n + o];
                }
                *v = c.rectifier.apply(t);
            }
        }
    }
    tensor(out_shape, y)
}

fn pool(p: &PoolOp, x: &Tensor, out_shape: &[usize], max: bool) -> Result<Tensor> {
    let g = p.geometry(x.shape()[0], &x.shape()[1..])?;
    let x = x.as_standard_layout();
    let mut y = vec![0.0; g.output_len()];
    let src = x.as_slice().unwrap_or(&[]);
    if max {
        kernels::max_pool2d(src, &g, &mut y)?;
    } else {
        kernels::avg_pool2d(src, &g, &mut y)?;
    }
    tensor(out_shape, y)
}

fn dense(d: &DenseOp<'_>, x: &Tensor, out_shape: &[usize]) -> Result<Tensor> {
    let x2 = x
        .view()
        .into_dimensionality::<Ix2>()
        .map_err(|e| Error::shape("Dense", "a rank-2 batch", e.to_string()))?;
    let w = ndarray::ArrayView2::from_shape((d.in_features, d.units), &d.kernel)
        .map_err(|e| Error::shape("Dense", "an (in, out) kernel", e.to_string()))?;
    let mut y = ndarray::Array2::<f32>::zeros((x2.nrows(), d.units));
    kernels::sgemm(1.0, x2, w, 0.0, y.view_mut())?;
    if let Some(b) = &d.bias {
        for mut row in y.rows_mut() {
            row.iter_mut().zip(b.iter()).for_each(|(v, b)| *v += b);
        }
    }
    y.into_dyn()
        .into_shape_with_order(IxDyn(out_shape))
        .map_err(|e| Error::shape("Dense", "(n, units)", e.to_string()))
}
