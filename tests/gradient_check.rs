//! Finite-difference checks of the backward pass: for every layer type, a Residual block, a
//! concatenation and a channel gate, the analytic gradients of `sum(w * y)` (parameters and
//! input) against central differences of the training-mode forward pass.

mod common;

use convnet::graph::training::{forward, TrainingMode};
use convnet::graph::Graph;
use convnet::kernels::{Padding, Padding2d};
use convnet::layers::*;
use ndarray::{ArrayD, ArrayViewMutD, IxDyn};

fn tensor(shape: &[usize], seed: u64) -> Tensor {
    ArrayD::from_shape_vec(IxDyn(shape), common::fill(shape.iter().product(), seed)).unwrap()
}

/// `sum(w * y)` in f64 for the training-mode forward of `net` on `x`.
fn loss(net: &dyn Layer, x: &Tensor, w: &Tensor) -> f64 {
    let g = Graph::lower(net, &x.shape()[1..]).unwrap();
    let y = forward(&g, x, &TrainingMode::default()).unwrap().output().clone();
    y.iter().zip(w.iter()).map(|(a, b)| *a as f64 * *b as f64).sum()
}

/// Adds `delta` to element `index` of parameter number `which` (in visit order).
fn nudge(net: &mut dyn Layer, which: usize, index: usize, delta: f32) {
    struct Nudge(usize, usize, f32, usize);
    impl ParamVisitor for Nudge {
        fn visit(&mut self, _: &LayerPath, _: ParamKind, mut v: ArrayViewMutD<'_, f32>) -> convnet::Result<()> {
            if self.3 == self.0 {
                if let Some(e) = v.iter_mut().nth(self.1) {
                    *e += self.2;
                }
            }
            self.3 += 1;
            Ok(())
        }
    }
    net.visit_params_mut(&mut LayerPath::default(), &mut Nudge(which, index, delta, 0))
        .unwrap();
}

fn check(name: &str, net: &mut dyn Layer, input_shape: &[usize]) {
    common::randomize(net, 3);
    let x = tensor(input_shape, 1);
    let g = Graph::lower(&*net, &input_shape[1..]).unwrap();
    let pass = forward(&g, &x, &TrainingMode::default()).unwrap();
    let w = tensor(pass.output().shape(), 2);
    let grads = pass.backward(&w).unwrap();
    let h = 1e-3f32;
    let close = |fd: f64, an: f32, what: &str| {
        assert!(
            (fd - an as f64).abs() <= 2e-3 * (1.0 + an.abs() as f64),
            "{name} {what}: finite difference {fd} vs backward {an}"
        );
    };
    // The input: a spread of coordinates.
    let n = x.len();
    for i in (0..n).step_by((n / 23).max(1)) {
        let (mut p, mut m) = (x.clone(), x.clone());
        p.as_slice_mut().unwrap()[i] += h;
        m.as_slice_mut().unwrap()[i] -= h;
        let fd = (loss(&*net, &p, &w) - loss(&*net, &m, &w)) / (2.0 * h as f64);
        close(fd, grads.input.as_slice().unwrap()[i], &format!("input[{i}]"));
    }
    // Every trainable parameter, a spread of coordinates each.
    let mut params = Vec::new();
    net.visit_params(&mut LayerPath::default(), &mut |p, k, v| params.push((p.clone(), k, v.len())));
    let mut checked = 0;
    for (which, (path, kind, len)) in params.into_iter().enumerate() {
        if !kind.is_trainable() {
            continue;
        }
        let an = &grads.params[&(path.clone(), kind)];
        for i in (0..len).step_by((len / 7).max(1)) {
            nudge(net, which, i, h);
            let up = loss(&*net, &x, &w);
            nudge(net, which, i, -2.0 * h);
            let down = loss(&*net, &x, &w);
            nudge(net, which, i, h);
            close(
                (up - down) / (2.0 * h as f64),
                an.iter().nth(i).copied().unwrap(),
                &format!("{path} {kind:?}[{i}]"),
            );
        }
        checked += 1;
    }
    assert_eq!(checked, grads.params.len(), "{name}: every parameter with a gradient was checked");
}

fn conv(cfg: Conv2dConfig) -> Conv2d {
    Conv2d::new(cfg).unwrap()
}

#[test]
fn every_layer_type_passes_a_finite_difference_check() {
    let one = |name: &str, layer: Box<dyn Layer>, shape: &[usize]| {
        let mut net = Sequential::new();
        net.push_boxed(name, layer).unwrap();
        check(name, &mut net, shape);
    };
    let same = |i, o, k| Conv2dConfig::new(i, o, [k, k]).with_padding(Padding::Same);
    one(
        "conv",
        Box::new(conv(
            Conv2dConfig::new(3, 4, [3, 2])
                .with_strides([2, 1])
                .with_dilation([1, 2])
                .with_padding(Padding::Same),
        )),
        &[2, 7, 8, 3],
    );
    one(
        "conv_nobias",
        Box::new(conv(
            same(3, 4, 3)
                .with_bias(false)
                .with_padding(Padding::Explicit(Padding2d::new(1, 0, 2, 1))),
        )),
        &[2, 5, 5, 3],
    );
    one("grouped", Box::new(conv(same(4, 6, 3).with_groups(2))), &[2, 5, 5, 4]);
    one("depthwise", Box::new(conv(same(4, 4, 3).with_groups(4))), &[1, 5, 6, 4]);
    one("batch_norm", Box::new(BatchNorm::new(3, 1e-3).unwrap()), &[3, 4, 4, 3]);
    one("dense", Box::new(Dense::new(5, 4, None).unwrap()), &[3, 5]);
    one(
        "dense_softmax",
        Box::new(Dense::new(5, 4, Some(Activation::Softmax)).unwrap()),
        &[3, 5],
    );
    one("relu", Box::new(Relu), &[2, 3, 3, 2]);
    one("relu6", Box::new(ActivationLayer(Activation::Relu6)), &[2, 3, 3, 2]);
    one("sigmoid", Box::new(ActivationLayer(Activation::Sigmoid)), &[2, 3, 3, 2]);
    one("softmax", Box::new(Softmax), &[2, 3, 3, 4]);
    one(
        "max_pool",
        Box::new(MaxPool2d::new(Pool2dConfig::new([3, 3]).with_strides([2, 2]).with_padding(Padding::Same)).unwrap()),
        &[2, 7, 6, 2],
    );
    one(
        "avg_pool",
        Box::new(AvgPool2d::new(Pool2dConfig::new([2, 3]).with_strides([1, 2]).with_padding(Padding::Same)).unwrap()),
        &[2, 5, 6, 2],
    );
    one("global_avg_pool", Box::new(GlobalAvgPool), &[2, 3, 4, 3]);
    one(
        "zero_padding",
        Box::new(ZeroPadding2d::new(Padding2d::new(1, 2, 0, 1))),
        &[2, 3, 3, 2],
    );
    one("flatten", Box::new(Flatten), &[2, 3, 2, 2]);
}

#[test]
fn residual_concat_and_gate_blocks_pass_a_finite_difference_check() {
    let same = |i, o| Conv2dConfig::new(i, o, [3, 3]).with_padding(Padding::Same);
    let mut main = Sequential::new();
    main.push("a", conv(same(3, 4).with_strides([2, 2])))
        .unwrap()
        .push("a_bn", BatchNorm::new(4, 1e-3).unwrap())
        .unwrap()
        .push("a_relu", Relu)
        .unwrap()
        .push("b", conv(same(4, 4)))
        .unwrap()
        .push("b_bn", BatchNorm::new(4, 1e-5).unwrap())
        .unwrap();
    let mut short = Sequential::new();
    short
        .push("s", conv(Conv2dConfig::new(3, 4, [1, 1]).with_strides([2, 2])))
        .unwrap()
        .push("s_bn", BatchNorm::new(4, 1e-3).unwrap())
        .unwrap();
    let mut net = Sequential::new();
    net.push("block", Residual::new(main, Some(short), Some(Activation::Relu)).unwrap())
        .unwrap();
    let mut id = Sequential::new();
    id.push("c", conv(same(4, 4))).unwrap();
    net.push("identity", Residual::new(id, None, Some(Activation::Relu)).unwrap())
        .unwrap();
    let b1 = Sequential::new().with("conv", conv(Conv2dConfig::new(4, 2, [1, 1]))).unwrap();
    net.push(
        "concat",
        Concatenate::new(vec![("b1".into(), b1), ("id".into(), Sequential::new())]).unwrap(),
    )
    .unwrap();
    let gate = Sequential::new()
        .with("squeeze", GlobalAvgPool)
        .unwrap()
        .with("reduce", Dense::new(6, 3, Some(Activation::Relu)).unwrap())
        .unwrap()
        .with("expand", Dense::new(3, 6, Some(Activation::Sigmoid)).unwrap())
        .unwrap();
    net.push("gate", ChannelGate::new(gate))
        .unwrap()
        .push("pool", GlobalAvgPool)
        .unwrap()
        .push("fc", Dense::new(6, 3, None).unwrap())
        .unwrap();
    check("blocks", &mut net, &[3, 8, 7, 3]);
}
