//! Lowering a layer tree into [`Op`]s: BatchNorm folding, epilogue fusion, padding folding,
//! and buffer slots assigned by liveness.

use super::exec::{ConvOp, ConvWeights, Op};
use super::{InferenceOptions, Value};
use crate::error::{Error, Result, ShapeFmt};
use crate::kernels::packed_gemm::PackedB;
use crate::kernels::winograd::{WinogradTile, WinogradWeights};
use crate::kernels::{ConvGeometry, Padding, Padding2d, PoolGeometry, Window2d};
use crate::layers::{
    Activation, AvgPool2d, BatchNorm, Conv2d, Dense, Flatten, GlobalAvgPool, Layer, MaxPool2d, Relu, Residual, Sequential, Softmax,
    ZeroPadding2d,
};
use crate::models::ResNet;

pub(crate) struct Graph {
    pub ops: Vec<Op>,
    pub values: Vec<Value>,
    pub slot_sizes: Vec<usize>,
    /// The value whose storage each value is (itself, or what a `Flatten` views).
    pub roots: Vec<usize>,
    pub input: usize,
    pub output: usize,
}

/// A residual to add (and maybe ReLU) at the end of a branch.
#[derive(Clone, Copy)]
struct Tail {
    residual: usize,
    relu: bool,
}

struct Builder {
    options: InferenceOptions,
    ops: Vec<Op>,
    shapes: Vec<Vec<usize>>,
    nonneg: Vec<bool>,
    /// The value whose storage this one shares (a `Flatten` is a view).
    alias: Vec<Option<usize>>,
    path: Vec<String>,
}

/// A window's own padding rule resolved for the input after `extra` zero padding, plus that
/// padding: the explicit padding that replaces a `ZeroPadding2D` followed by the window.
fn fold_padding(own: Padding, extra: Padding2d, hw: [usize; 2], kernel: [usize; 2], stride: [usize; 2], dilation: [usize; 2]) -> Padding2d {
    let padded = [hw[0] + extra.top + extra.bottom, hw[1] + extra.left + extra.right];
    let own = own.resolve(padded, kernel, stride, dilation);
    Padding2d::new(
        own.top + extra.top,
        own.bottom + extra.bottom,
        own.left + extra.left,
        own.right + extra.right,
    )
}

fn unsupported(what: &str) -> Error {
    Error::config("CompiledModel", format!("cannot compile a {what} layer for fast inference"))
}

pub(crate) fn compile(model: &dyn Layer, input_shape: &[usize], options: &InferenceOptions) -> Result<Graph> {
    if input_shape.is_empty() || input_shape.contains(&0) {
        return Err(Error::shape(
            "CompiledModel",
            "a non-empty per-image input shape",
            format!("{}", ShapeFmt(input_shape)),
        ));
    }
    // The model's own shape check names the failing layer.
    let mut full = vec![1];
    full.extend_from_slice(input_shape);
    model.output_shape(&full)?;
    let mut b = Builder {
        options: *options,
        ops: Vec::new(),
        shapes: Vec::new(),
        nonneg: Vec::new(),
        alias: Vec::new(),
        path: Vec::new(),
    };
    let input = b.value(input_shape.to_vec(), false);
    let mut output = b.lower(model, input)?;
    if b.root(output) == b.root(input) {
        // An identity (or reshape-only) model still gets its own output buffer.
        output = b.affine("copy", output, None, false)?;
    }
    let (values, slot_sizes) = b.assign_slots(input, output);
    let roots = (0..values.len()).map(|v| b.root(v)).collect();
    Ok(Graph {
        ops: b.ops,
        values,
        slot_sizes,
        roots,
        input,
        output,
    })
}

impl Builder {
    fn value(&mut self, shape: Vec<usize>, nonneg: bool) -> usize {
        self.shapes.push(shape);
        self.nonneg.push(nonneg);
        self.alias.push(None);
        self.shapes.len() - 1
    }

    fn root(&self, mut v: usize) -> usize {
        while let Some(a) = self.alias[v] {
            v = a;
        }
        v
    }

    fn name(&self, leaf: &str) -> String {
        self.path
            .iter()
            .map(String::as_str)
            .chain([leaf])
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("/")
    }

    fn hwc(&self, x: usize, layer: &str) -> Result<[usize; 3]> {
        match *self.shapes[x].as_slice() {
            [h, w, c] => Ok([h, w, c]),
            ref s => Err(Error::shape(layer, "an NHWC image", format!("{}", ShapeFmt(s)))),
        }
    }

    fn lower(&mut self, layer: &dyn Layer, x: usize) -> Result<usize> {
        let any = layer.as_any();
        if let Some(m) = any.downcast_ref::<ResNet>() {
            return self.lower_seq(m.network(), x, None);
        }
        if let Some(s) = any.downcast_ref::<Sequential>() {
            return self.lower_seq(s, x, None);
        }
        self.lower_group(&[("", layer)], x, None).map(|(y, _, _)| y)
    }

    /// Lowers a sequence; `tail` (a residual to add) is fused into the last group when that
    /// group can take it, else applied by an `Add`.
    fn lower_seq(&mut self, seq: &Sequential, mut x: usize, tail: Option<Tail>) -> Result<usize> {
        let layers: Vec<(&str, &dyn Layer)> = seq.iter().collect();
        let mut i = 0;
        let mut tail_used = false;
        while i < layers.len() {
            let (y, used, took) = self.lower_group(&layers[i..], x, tail)?;
            x = y;
            i += used;
            tail_used |= took;
        }
        match tail {
            Some(t) if !tail_used => self.add(x, t),
            _ => Ok(x),
        }
    }

    fn add(&mut self, x: usize, t: Tail) -> Result<usize> {
        if self.shapes[x] != self.shapes[t.residual] {
            return Err(Error::shape(
                "Residual",
                format!("{}", ShapeFmt(&self.shapes[x])),
                format!("{}", ShapeFmt(&self.shapes[t.residual])),
            ));
        }
        let y = self.value(self.shapes[x].clone(), t.relu);
        self.ops.push(Op::Add {
            name: self.name("add"),
            a: x,
            b: t.residual,
            relu: t.relu,
            y,
        });
        Ok(y)
    }

    /// An element-wise ReLU or a last-axis softmax op after `x`.
    fn activation(&mut self, name: &str, x: usize, a: Activation) -> usize {
        let y = self.value(self.shapes[x].clone(), true);
        let name = self.name(name);
        self.ops.push(match a {
            Activation::Relu => Op::Relu { name, x, y },
            Activation::Softmax => Op::Softmax { name, x, y },
        });
        y
    }

    fn affine(&mut self, name: &str, x: usize, bn: Option<&BatchNorm>, relu: bool) -> Result<usize> {
        let c = *self.shapes[x].last().unwrap_or(&1);
        let (scale, shift) = match bn {
            Some(bn) => {
                let (s, t) = bn.scale_shift();
                (s.to_vec(), t.to_vec())
            }
            None => (vec![1.0; c], vec![0.0; c]),
        };
        let y = self.value(self.shapes[x].clone(), relu || self.nonneg[x]);
        self.ops.push(Op::Affine {
            name: self.name(name),
            scale,
            shift,
            relu,
            x,
            y,
        });
        Ok(y)
    }

    /// Lowers the group of layers that starts `layers` and returns (output, layers consumed,
    /// whether `tail` was fused). `tail` is only fused when the group ends the sequence.
    fn lower_group(&mut self, layers: &[(&str, &dyn Layer)], x: usize, tail: Option<Tail>) -> Result<(usize, usize, bool)> {
        let kind = |i: usize| layers.get(i).map(|(_, l)| l.as_any());
        let (name, layer) = layers[0];
        let any = layer.as_any();

        // ZeroPadding2D folded into the following convolution or (after a ReLU) max pool.
        if let Some(pad) = any.downcast_ref::<ZeroPadding2d>() {
            if let Some(conv) = kind(1).and_then(|a| a.downcast_ref::<Conv2d>()) {
                return self
                    .conv_group(&layers[1..], conv, pad.padding, x, tail)
                    .map(|(y, n, t)| (y, n + 1, t));
            }
            if let Some(pool) = kind(1).and_then(|a| a.downcast_ref::<MaxPool2d>()).filter(|_| self.nonneg[x]) {
                let y = self.pool(
                    layers[1].0,
                    x,
                    pool.config().pool_size,
                    pool.config().strides,
                    pool.config().padding,
                    pad.padding,
                    true,
                )?;
                return Ok((y, 2, false));
            }
            let [h, w, c] = self.hwc(x, "ZeroPadding2D")?;
            let p = pad.padding;
            let y = self.value(vec![h + p.top + p.bottom, w + p.left + p.right, c], self.nonneg[x]);
            self.ops.push(Op::Pad {
                name: self.name(name),
                pad: p,
                x,
                y,
            });
            return Ok((y, 1, false));
        }
        if let Some(conv) = any.downcast_ref::<Conv2d>() {
            return self.conv_group(layers, conv, Padding2d::default(), x, tail);
        }
        if let Some(bn) = any.downcast_ref::<BatchNorm>() {
            let relu = kind(1).is_some_and(|a| a.is::<Relu>());
            let y = self.affine(name, x, Some(bn), relu)?;
            return Ok((y, 1 + usize::from(relu), false));
        }
        if any.is::<Relu>() {
            return Ok((self.activation(name, x, Activation::Relu), 1, false));
        }
        if any.is::<Softmax>() {
            return Ok((self.activation(name, x, Activation::Softmax), 1, false));
        }
        if let Some(p) = any.downcast_ref::<MaxPool2d>() {
            let c = p.config();
            return Ok((
                self.pool(name, x, c.pool_size, c.strides, c.padding, Padding2d::default(), true)?,
                1,
                false,
            ));
        }
        if let Some(p) = any.downcast_ref::<AvgPool2d>() {
            let c = p.config();
            return Ok((
                self.pool(name, x, c.pool_size, c.strides, c.padding, Padding2d::default(), false)?,
                1,
                false,
            ));
        }
        if any.is::<GlobalAvgPool>() {
            let [_, _, c] = self.hwc(x, "GlobalAveragePooling2D")?;
            let y = self.value(vec![c], self.nonneg[x]);
            self.ops.push(Op::GlobalAvgPool {
                name: self.name(name),
                x,
                y,
            });
            return Ok((y, 1, false));
        }
        if any.is::<Flatten>() {
            let y = self.value(vec![self.shapes[x].iter().product()], self.nonneg[x]);
            self.alias[y] = Some(x);
            return Ok((y, 1, false));
        }
        if let Some(d) = any.downcast_ref::<Dense>() {
            return Ok((self.dense(name, d, x)?, 1, false));
        }
        if let Some(r) = any.downcast_ref::<Residual>() {
            self.path.push(name.to_string());
            let out = self.residual(r, x);
            self.path.pop();
            return Ok((out?, 1, false));
        }
        if let Some(s) = any.downcast_ref::<Sequential>() {
            self.path.push(name.to_string());
            let out = self.lower_seq(s, x, None);
            self.path.pop();
            return Ok((out?, 1, false));
        }
        if let Some(m) = any.downcast_ref::<ResNet>() {
            return Ok((self.lower_seq(m.network(), x, None)?, 1, false));
        }
        Err(unsupported(layer.type_name()))
    }

    fn residual(&mut self, r: &Residual, x: usize) -> Result<usize> {
        let short = match r.shortcut() {
            Some(s) => self.lower_seq(s, x, None)?,
            None => x,
        };
        let y = self.lower_seq(
            r.main(),
            x,
            Some(Tail {
                residual: short,
                relu: r.activation() == Some(Activation::Relu),
            }),
        )?;
        // A ReLU after the add was fused into the branch's last convolution (or its `Add`).
        Ok(match r.activation() {
            Some(Activation::Softmax) => self.activation("softmax", y, Activation::Softmax),
            _ => y,
        })
    }

    /// `Conv2d` (`layers[0]`), then an optional `BatchNorm` and `Relu`; `extra` is zero padding
    /// to fold in. The tail is fused when the group ends the sequence and has no ReLU of its own.
    fn conv_group(
        &mut self,
        layers: &[(&str, &dyn Layer)],
        conv: &Conv2d,
        extra: Padding2d,
        x: usize,
        tail: Option<Tail>,
    ) -> Result<(usize, usize, bool)> {
        let mut used = 1;
        let bn = layers.get(1).and_then(|(_, l)| l.as_any().downcast_ref::<BatchNorm>());
        used += usize::from(bn.is_some());
        let relu = layers.get(used).is_some_and(|(_, l)| l.as_any().is::<Relu>());
        used += usize::from(relu);
        let name = self.name(layers[0].0);

        let [h, w, c] = self.hwc(x, "Conv2D")?;
        let cfg = conv.config();
        let pad = fold_padding(cfg.padding, extra, [h, w], cfg.kernel_size, cfg.strides, cfg.dilation);
        let window = Window2d {
            kernel: cfg.kernel_size,
            stride: cfg.strides,
            dilation: cfg.dilation,
            padding: Padding::Explicit(pad),
        };
        let geometry = ConvGeometry::new([1, h, w, c], cfg.filters, window).map_err(|e| e.in_layer(&name))?;

        let n = cfg.filters;
        let kernel: Vec<f32> = conv.kernel().iter().copied().collect();
        let mut bias: Vec<f32> = conv.bias().map_or_else(|| vec![0.0; n], |b| b.to_vec());
        let fold = bn.is_some() && self.options.fold_batch_norm;
        // The BatchNorm becomes the GEMM output pass's `acc * scale + bias`. (Scaling the kernel
        // instead costs the same but changes the rounding of every product: on the reference
        // ResNet50 it moved the probabilities by 1.4e-5 from Keras' against 7e-6 this way.)
        let scale = match (bn, fold) {
            (Some(bn), true) => {
                let (scale, shift) = bn.scale_shift();
                bias.iter_mut()
                    .zip(scale.iter().zip(shift.iter()))
                    .for_each(|(b, (s, t))| *b = *b * s + t);
                Some(scale.to_vec())
            }
            _ => None,
        };
        let weights = match WinogradTile::choose(&geometry).filter(|_| self.options.winograd) {
            Some(tile) => ConvWeights::Winograd(WinogradWeights::new(&kernel, c, n, tile)?),
            None => ConvWeights::Gemm(PackedB::pack(&kernel, geometry.patch_len(), n, n)?),
        };
        let is_last = used == layers.len();
        let fused_tail = tail.filter(|_| is_last && !relu && (fold || bn.is_none()));
        let conv_relu = if bn.is_none() || fold {
            relu || fused_tail.is_some_and(|t| t.relu)
        } else {
            false
        };
        let y = self.value(vec![geometry.out_hw[0], geometry.out_hw[1], n], conv_relu);
        self.ops.push(Op::Conv(ConvOp {
            name: name.clone(),
            geometry,
            weights,
            scale,
            bias,
            relu: conv_relu,
            residual: fused_tail.map(|t| t.residual),
            x,
            y,
        }));
        let y = match (bn, fold) {
            (Some(bn), false) => self.affine(&format!("{}+bn", layers[0].0), y, Some(bn), relu)?,
            _ => y,
        };
        Ok((y, used, fused_tail.is_some()))
    }

    #[allow(clippy::too_many_arguments)]
    fn pool(
        &mut self,
        name: &str,
        x: usize,
        size: [usize; 2],
        strides: Option<[usize; 2]>,
        padding: Padding,
        extra: Padding2d,
        max: bool,
    ) -> Result<usize> {
        let [h, w, c] = self.hwc(x, "pooling")?;
        let stride = strides.unwrap_or(size);
        let pad = fold_padding(padding, extra, [h, w], size, stride, [1, 1]);
        let window = Window2d {
            kernel: size,
            stride,
            dilation: [1, 1],
            padding: Padding::Explicit(pad),
        };
        let geometry = PoolGeometry::new([1, h, w, c], window).map_err(|e| e.in_layer(name))?;
        let y = self.value(vec![geometry.out_hw[0], geometry.out_hw[1], c], self.nonneg[x]);
        let name = self.name(name);
        self.ops.push(if max {
            Op::MaxPool { name, geometry, x, y }
        } else {
            Op::AvgPool { name, geometry, x, y }
        });
        Ok(y)
    }

    fn dense(&mut self, name: &str, d: &Dense, x: usize) -> Result<usize> {
        let features = match *self.shapes[x].as_slice() {
            [f] if f == d.in_features() => f,
            ref s => {
                return Err(Error::shape(
                    "Dense",
                    format!("({},) features per image", d.in_features()),
                    format!("{}", ShapeFmt(s)),
                ))
            }
        };
        let kernel: Vec<f32> = d.kernel().iter().copied().collect();
        let weights = PackedB::pack(&kernel, features, d.units(), d.units())?;
        let bias = d.bias().map_or_else(|| vec![0.0; d.units()], |b| b.to_vec());
        let y = self.value(vec![d.units()], false);
        self.ops.push(Op::Dense {
            name: self.name(name),
            weights,
            bias,
            x,
            y,
        });
        Ok(match d.activation() {
            Some(a) => self.activation(&format!("{name}_{}", a.name()), y, a),
            None => y,
        })
    }

    /// Gives every stored value a buffer slot, reusing a slot once its last reader has run.
    fn assign_slots(&self, input: usize, output: usize) -> (Vec<Value>, Vec<usize>) {
        let n = self.shapes.len();
        let size = |v: usize| self.shapes[v].iter().product::<usize>();
        // Last op reading each storage root (usize::MAX: never released).
        let mut last_use = vec![0usize; n];
        for (i, op) in self.ops.iter().enumerate() {
            for v in op.inputs().into_iter().flatten() {
                last_use[self.root(v)] = i;
            }
        }
        last_use[self.root(output)] = usize::MAX;
        let mut slot_of = vec![usize::MAX; n];
        let mut sizes: Vec<usize> = Vec::new();
        let mut free: Vec<usize> = Vec::new();
        let take = |need: usize, sizes: &mut Vec<usize>, free: &mut Vec<usize>| -> usize {
            let fit = free
                .iter()
                .enumerate()
                .filter(|(_, &s)| sizes[s] >= need)
                .min_by_key(|(_, &s)| sizes[s])
                .map(|(i, _)| i);
            let pick = fit.or_else(|| free.iter().enumerate().max_by_key(|(_, &s)| sizes[s]).map(|(i, _)| i));
            match pick {
                Some(i) => {
                    let s = free.swap_remove(i);
                    sizes[s] = sizes[s].max(need);
                    s
                }
                None => {
                    sizes.push(need);
                    sizes.len() - 1
                }
            }
        };
        slot_of[self.root(input)] = take(size(input), &mut sizes, &mut free);
        for (i, op) in self.ops.iter().enumerate() {
            let out = self.root(op.output());
            slot_of[out] = take(size(out), &mut sizes, &mut free);
            for v in op.inputs().into_iter().flatten() {
                let r = self.root(v);
                if last_use[r] == i && !free.contains(&slot_of[r]) && r != self.root(output) {
                    free.push(slot_of[r]);
                }
            }
            if last_use[out] == 0 && out != self.root(output) {
                // written but never read
                free.push(slot_of[out]);
            }
        }
        let values = (0..n)
            .map(|v| Value {
                shape: self.shapes[v].clone(),
                slot: slot_of[self.root(v)],
            })
            .collect();
        (values, sizes)
    }
}
