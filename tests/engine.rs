//! One engine: the reference executor (`Layer::forward`) and the fast one (`CompiledModel`)
//! run the same lowered graph, agree on random models, on a user's own layer, on softmax axes
//! and on the NaN policy.

mod common;

use convnet::graph::{Graph, Lowering, Op, ValueId};
use convnet::inference::{CompiledModel, InferenceOptions};
use convnet::init::Rng;
use convnet::kernels::{Padding, Padding2d};
use convnet::layers::*;
use convnet::models::{Depth, ResNet, ResNetConfig};
use convnet::Error;
use ndarray::{ArrayD, IxDyn};
use proptest::prelude::*;

fn opts(threads: usize) -> InferenceOptions {
    InferenceOptions {
        threads,
        ..InferenceOptions::default()
    }
}

fn tensor(shape: &[usize], seed: u64) -> Tensor {
    ArrayD::from_shape_vec(IxDyn(shape), common::fill(shape.iter().product(), seed)).unwrap()
}

/// The bug this issue started from: a per-pixel softmax normalised over the whole image on
/// the compiled path (sums of 0.02-0.39), silently.
#[test]
fn softmax_normalises_the_last_axis_on_both_paths() {
    let mut net = Sequential::new();
    net.push("conv", Conv2d::new(Conv2dConfig::new(3, 4, [1, 1])).unwrap())
        .unwrap()
        .push("softmax", Softmax)
        .unwrap();
    common::randomize(&mut net, 3);
    let x = tensor(&[1, 2, 2, 3], 1);
    let slow = net.forward(&x).unwrap();
    let fast = CompiledModel::new(&net, &[2, 2, 3], &opts(2)).unwrap().run(&x).unwrap();
    for y in [&slow, &fast] {
        for px in y.as_slice().unwrap().chunks(4) {
            assert!((px.iter().sum::<f32>() - 1.0).abs() < 1e-6, "{px:?}");
        }
    }
    assert!(common::max_abs_diff(&slow, &fast) <= 1e-6);
    assert!(matches!(
        Graph::lower(&net, &[2, 2, 3]).unwrap().nodes()[1].op,
        Op::Softmax { axis: 2 }
    ));
    // A softmax along another axis (a layer of one's own, built from a graph op) runs on the
    // reference kernel inside the compiled model.
    let rows = Sequential::new().with("rows", RowSoftmax).unwrap();
    let slow = rows.forward(&x).unwrap();
    let fast = CompiledModel::new(&rows, &[2, 2, 3], &opts(1)).unwrap().run(&x).unwrap();
    assert_eq!(slow, fast);
    // Along the rows: each (column, channel) pair of the two rows sums to 1.
    let s = fast.as_slice().unwrap();
    for i in 0..6 {
        assert!((s[i] + s[i + 6] - 1.0).abs() < 1e-6);
    }
}

/// Softmax over the image rows: a layer of one's own made of a graph op.
#[derive(Debug)]
struct RowSoftmax;

impl Layer for RowSoftmax {
    fn type_name(&self) -> &'static str {
        "RowSoftmax"
    }
    fn lower<'m>(&'m self, b: &mut Lowering<'m>, x: ValueId) -> convnet::Result<ValueId> {
        b.push(Op::Softmax { axis: 0 }, &[x])
    }
}

/// Every entry point refuses a non-finite input with the same error.
#[test]
fn nan_and_infinity_are_refused_on_every_path() {
    let mut net = Sequential::new();
    net.push("conv", Conv2d::new(Conv2dConfig::new(2, 2, [1, 1])).unwrap()).unwrap();
    let model = ResNet::new(ResNetConfig::torchvision(Depth::R18).with_width_divisor(16)).unwrap();
    for bad in [f32::NAN, f32::INFINITY] {
        let mut x = tensor(&[1, 3, 3, 2], 2);
        x[[0, 1, 1, 1]] = bad;
        let mut big = tensor(&[1, 224, 224, 3], 2);
        big[[0, 5, 5, 0]] = bad;
        let errors = [
            net.forward(&x).unwrap_err(),
            net.forward_with_taps(&x, &["conv"]).unwrap_err(),
            CompiledModel::new(&net, &[3, 3, 2], &opts(1)).unwrap().run(&x).unwrap_err(),
            Layer::forward(&model, &big).unwrap_err(),
            model.forward(&big).unwrap_err(),
            CompiledModel::for_model(&model, &opts(2)).unwrap().run(&big).unwrap_err(),
        ];
        for e in errors {
            assert!(matches!(e, Error::NonFinite { count: 1, .. }), "{e}");
        }
    }
}

/// A layer that is not built from the graph's ops: `y = x * |x|` per element, plus a learned
/// per-channel offset.
#[derive(Debug)]
struct SignedSquare {
    offset: Vec<f32>,
}

impl Layer for SignedSquare {
    fn type_name(&self) -> &'static str {
        "SignedSquare"
    }
    fn lower<'m>(&'m self, b: &mut Lowering<'m>, x: ValueId) -> convnet::Result<ValueId> {
        b.opaque(self, x)
    }
    fn output_shape(&self, input: &[usize]) -> convnet::Result<Vec<usize>> {
        match input.last() {
            Some(&c) if c == self.offset.len() => Ok(input.to_vec()),
            _ => Err(Error::Shape {
                layer: "SignedSquare".into(),
                expected: format!("{} channels", self.offset.len()),
                got: format!("{input:?}"),
            }),
        }
    }
    fn forward(&self, x: &convnet::layers::TensorRef) -> convnet::Result<Tensor> {
        self.output_shape(x.shape())?;
        let c = self.offset.len();
        let mut y = x.as_standard_layout().into_owned();
        for px in y.as_slice_mut().unwrap().chunks_mut(c) {
            px.iter_mut().zip(&self.offset).for_each(|(v, o)| *v = *v * v.abs() + o);
        }
        Ok(y)
    }
}

/// A layer that forgets to implement its forward pass.
#[derive(Debug)]
struct Forgetful;

impl Layer for Forgetful {
    fn type_name(&self) -> &'static str {
        "Forgetful"
    }
    fn lower<'m>(&'m self, b: &mut Lowering<'m>, x: ValueId) -> convnet::Result<ValueId> {
        b.opaque(self, x)
    }
}

#[test]
fn a_users_own_layer_compiles_and_runs_inside_a_compiled_model() {
    let mut block = Sequential::new();
    block
        .push(
            "conv",
            Conv2d::new(Conv2dConfig::new(4, 4, [3, 3]).with_padding(Padding::Same)).unwrap(),
        )
        .unwrap()
        .push(
            "square",
            SignedSquare {
                offset: vec![0.1, -0.2, 0.3, 0.0],
            },
        )
        .unwrap();
    let mut net = Sequential::new();
    net.push("stem", Conv2d::new(Conv2dConfig::new(3, 4, [3, 3])).unwrap())
        .unwrap()
        .push("block", Residual::new(block, None, Some(Activation::Relu)).unwrap())
        .unwrap()
        .push("pool", GlobalAvgPool)
        .unwrap()
        .push("fc", Dense::new(4, 5, Some(Activation::Softmax)).unwrap())
        .unwrap();
    common::randomize(&mut net, 9);
    let x = tensor(&[3, 11, 10, 3], 4);
    let want = net.forward(&x).unwrap();
    let graph = Graph::lower(&net, &[11, 10, 3]).unwrap();
    assert!(graph
        .nodes()
        .iter()
        .any(|n| matches!(n.op, Op::Opaque(_)) && n.path.to_string() == "block/square"));
    for threads in [1, 2, 3] {
        let mut fast = CompiledModel::new(&net, &[11, 10, 3], &opts(threads)).unwrap();
        let got = fast.run(&x).unwrap();
        assert!(common::max_abs_diff(&got, &want) <= 1e-5, "threads {threads}");
        let (_, taps) = fast.run_with_taps(&x, &["block/square", "stem"]).unwrap();
        let (_, want_taps) = net.forward_with_taps(&x, &["block/square", "stem"]).unwrap();
        for ((n, a), (_, b)) in taps.iter().zip(&want_taps) {
            assert!(common::max_abs_diff(a, b) <= 1e-5, "tap {n}");
        }
    }
    // Its own shape error, named by its path, at compile time.
    let e = CompiledModel::new(&net, &[11, 10, 2], &opts(1)).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    // A layer that lowers to itself but has no forward is an error, not a stack overflow.
    let mut bad = Sequential::new();
    bad.push("forgetful", Forgetful).unwrap();
    let e = bad.forward(&tensor(&[1, 2], 1)).unwrap_err();
    assert!(e.to_string().contains("opaque"), "{e}");
    assert!(Forgetful.forward(&tensor(&[1, 2], 1)).is_err());
}

/// Taps by the names the summary prints: full paths with `/` or `.`, Keras' unique leaf names;
/// unknown and ambiguous names are errors on both paths.
#[test]
fn taps_use_the_summarys_names_and_unknown_names_are_errors() {
    let mut model = ResNet::new(ResNetConfig::keras_resnet50().with_width_divisor(16)).unwrap();
    common::randomize(&mut model, 5);
    let x = tensor(&[2, 224, 224, 3], 6);
    let summary = model.summary().unwrap().to_string();
    let names = ["res2a_branch2a", "res3b", "bn4a_branch1", "pool1", "avg_pool"];
    for n in names {
        assert!(summary.contains(&format!(" {n} (")), "{n} is not in the summary");
    }
    let (y, slow) = model.forward_with_taps(&x, &names).unwrap();
    let mut fast = CompiledModel::for_model(&model, &opts(2)).unwrap();
    let (fy, quick) = fast.run_with_taps(&x, &names).unwrap();
    assert!(common::max_rel_diff(&fy, &y) <= 1e-4);
    for ((n, a), (m, b)) in slow.iter().zip(&quick) {
        assert_eq!(n, m);
        assert!(common::max_rel_diff(b, a) <= 1e-4, "{n}: {}", common::max_rel_diff(b, a));
    }
    assert_eq!(slow[1].1.shape(), &[2, 28, 28, 32]);
    // The plain run (no taps) gives the same output as the tapped one.
    assert!(common::max_rel_diff(&fast.run(&x).unwrap(), &fy) <= 1e-6);
    for bad in ["res9z", "bn4a_branch"] {
        assert!(matches!(model.forward_with_taps(&x, &[bad]), Err(Error::Config { .. })));
        assert!(matches!(fast.run_with_taps(&x, &[bad]), Err(Error::Config { .. })));
    }
    // torchvision paths, dotted or slashed; `conv1` is unique only as a full path.
    let tv = ResNet::new(ResNetConfig::torchvision(Depth::R18).with_width_divisor(16)).unwrap();
    let (_, t) = tv.forward_with_taps(&x, &["layer1.0.conv1", "layer1/0/conv1", "layer2"]).unwrap();
    assert_eq!(t[0].1, t[1].1);
    assert!(
        matches!(tv.forward_with_taps(&x, &["bn2"]), Err(Error::Config { .. })),
        "bn2 is in every block"
    );
}

/// A compiled model takes every input shape its graph allows, each compiled on first use.
#[test]
fn a_compiled_model_takes_any_input_shape_the_model_allows() {
    let mut model = ResNet::new(ResNetConfig::torchvision(Depth::R18).with_width_divisor(16)).unwrap();
    common::randomize(&mut model, 8);
    let mut fast = CompiledModel::for_model(&model, &opts(2)).unwrap();
    for shape in [[1, 224, 224, 3], [3, 160, 192, 3], [2, 65, 33, 3], [1, 224, 224, 3]] {
        let x = tensor(&shape, shape[1] as u64);
        let rel = common::max_rel_diff(&fast.run(&x).unwrap(), &model.forward(&x).unwrap());
        assert!(rel <= 1e-4, "{shape:?}: {rel}");
    }
    // A model with no input shape of its own needs one.
    let net = Sequential::new().with("relu", Relu).unwrap();
    assert!(matches!(CompiledModel::for_model(&net, &opts(1)), Err(Error::Config { .. })));
    // An identity model still copies its input out.
    let x = tensor(&[2, 3, 3, 2], 1);
    assert_eq!(
        CompiledModel::new(&Sequential::new(), &[3, 3, 2], &opts(1))
            .unwrap()
            .run(&x)
            .unwrap(),
        x
    );
}

/// Every batch schedule computes every element in the same order: the same bits, and `Auto`
/// (which measures the two on the first batches of a size) gives them on every call.
#[test]
fn every_batch_schedule_gives_the_same_bits() {
    use convnet::inference::BatchSchedule;
    let mut model = ResNet::new(ResNetConfig::keras_resnet50().with_width_divisor(16)).unwrap();
    common::randomize(&mut model, 21);
    let x = tensor(&[3, 224, 224, 3], 5);
    let run = |schedule: BatchSchedule, calls: usize| {
        let options = InferenceOptions {
            threads: 2,
            schedule,
            ..InferenceOptions::default()
        };
        let mut fast = CompiledModel::for_model(&model, &options).unwrap();
        (0..calls).map(|_| fast.run(&x).unwrap()).collect::<Vec<_>>()
    };
    let lanes = run(BatchSchedule::ImageLanes, 1).remove(0);
    assert_eq!(run(BatchSchedule::ImageSerial, 1)[0], lanes);
    for y in run(BatchSchedule::Auto, 6) {
        assert_eq!(y, lanes);
    }
    assert!(common::max_rel_diff(&lanes, &model.forward(&x).unwrap()) <= 1e-4);
}

/// Builds a random small network from the seed: stacks of every layer type (convolutions of
/// every padding mode, stride, dilation and group count, BatchNorm, every activation,
/// padding, pools), residual blocks with and without projections, concatenations and channel
/// gates, and a head.
fn random_model(seed: u64, channels: usize) -> Sequential {
    let mut rng = Rng::new(seed);
    let pick = |rng: &mut Rng, n: usize| rng.below(n);
    let mut net = Sequential::new();
    let mut c = channels;
    let blocks = 1 + pick(&mut rng, 5);
    let conv = |rng: &mut Rng, cin: usize, cout: usize| {
        let k = 1 + rng.below(3);
        let groups = if cin.is_multiple_of(2) && cout.is_multiple_of(2) && rng.below(3) == 0 {
            2
        } else {
            1
        };
        let padding = match rng.below(3) {
            0 => Padding::Valid,
            1 => Padding::Same,
            _ => Padding::Explicit(Padding2d::new(rng.below(2), rng.below(3), rng.below(2), rng.below(2))),
        };
        Conv2dConfig::new(cin, cout, [k, 1 + rng.below(3)])
            .with_strides([1 + rng.below(2), 1 + rng.below(2)])
            .with_dilation([1 + rng.below(2), 1])
            .with_padding(padding)
            .with_bias(rng.below(2) == 0)
            .with_groups(groups)
    };
    let same3 = |cin: usize, cout: usize| Conv2dConfig::new(cin, cout, [3, 3]).with_padding(Padding::Same);
    for i in 0..blocks {
        let name = format!("l{i}");
        match pick(&mut rng, 11) {
            0 | 1 => {
                let cout = 1 + pick(&mut rng, 6) * 2;
                net.push(name, Conv2d::new(conv(&mut rng, c, cout)).unwrap()).unwrap();
                c = cout;
            }
            2 => {
                net.push(name, BatchNorm::new(c, 1e-3).unwrap()).unwrap();
            }
            3 => {
                let a = [Activation::Relu, Activation::Relu6, Activation::Sigmoid, Activation::Softmax][pick(&mut rng, 4)];
                net.push(name, ActivationLayer(a)).unwrap();
            }
            4 => {
                net.push(
                    name,
                    ZeroPadding2d::new(Padding2d::new(pick(&mut rng, 2), pick(&mut rng, 2), pick(&mut rng, 3), 1)),
                )
                .unwrap();
            }
            5 => {
                let cfg = Pool2dConfig::new([2 + pick(&mut rng, 2), 2]).with_strides([1 + pick(&mut rng, 2), 1 + pick(&mut rng, 2)]);
                let cfg = cfg.with_padding(if pick(&mut rng, 2) == 0 { Padding::Same } else { Padding::Valid });
                if pick(&mut rng, 2) == 0 {
                    net.push(name, MaxPool2d::new(cfg).unwrap()).unwrap();
                } else {
                    net.push(name, AvgPool2d::new(cfg).unwrap()).unwrap();
                }
            }
            6 | 7 => {
                // A residual block: identity, or a strided projection.
                let projection = pick(&mut rng, 2) == 0;
                let (cout, stride) = if projection { (c + 2, 2) } else { (c, 1) };
                let mut main = Sequential::new();
                main.push("a", Conv2d::new(same3(c, cout).with_strides([stride, stride])).unwrap())
                    .unwrap()
                    .push("a_bn", BatchNorm::new(cout, 1e-3).unwrap())
                    .unwrap()
                    .push("a_relu", Relu)
                    .unwrap()
                    .push("b", Conv2d::new(same3(cout, cout)).unwrap())
                    .unwrap()
                    .push("b_bn", BatchNorm::new(cout, 1e-5).unwrap())
                    .unwrap();
                let short = projection.then(|| {
                    let mut s = Sequential::new();
                    s.push("s", Conv2d::new(Conv2dConfig::new(c, cout, [1, 1]).with_strides([2, 2])).unwrap())
                        .unwrap()
                        .push("s_bn", BatchNorm::new(cout, 1e-3).unwrap())
                        .unwrap();
                    s
                });
                let act = [Some(Activation::Relu), None][pick(&mut rng, 2)];
                net.push(name, Residual::new(main, short, act).unwrap()).unwrap();
                c = cout;
            }
            8 => {
                let (c1, c2) = (1 + pick(&mut rng, 4), 1 + pick(&mut rng, 4));
                let b1 = Sequential::new()
                    .with("conv", Conv2d::new(Conv2dConfig::new(c, c1, [1, 1])).unwrap())
                    .unwrap();
                let b2 = Sequential::new()
                    .with("conv", Conv2d::new(same3(c, c2)).unwrap())
                    .unwrap()
                    .with("relu", Relu)
                    .unwrap();
                let branches = vec![
                    ("b1".to_string(), b1),
                    ("b2".to_string(), b2),
                    ("id".to_string(), Sequential::new()),
                ];
                net.push(name, Concatenate::new(branches).unwrap()).unwrap();
                c += c1 + c2;
            }
            9 => {
                let r = 1 + pick(&mut rng, 3);
                let gate = Sequential::new()
                    .with("squeeze", GlobalAvgPool)
                    .unwrap()
                    .with("reduce", Dense::new(c, r, Some(Activation::Relu)).unwrap())
                    .unwrap()
                    .with("expand", Dense::new(r, c, Some(Activation::Sigmoid)).unwrap())
                    .unwrap();
                net.push(name, ChannelGate::new(gate)).unwrap();
            }
            _ => {
                net.push(name, SignedSquare { offset: vec![0.05; c] }).unwrap();
            }
        }
    }
    match pick(&mut rng, 3) {
        0 => {
            net.push("gap", GlobalAvgPool)
                .unwrap()
                .push("fc", Dense::new(c, 3, Some(Activation::Softmax)).unwrap())
                .unwrap();
        }
        1 => {
            net.push("flatten", Flatten).unwrap();
        }
        _ => {}
    }
    net
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random small models through both executors (1-3 threads, folding on or off), batch 1-3,
    /// odd sizes. Models whose shapes do not fit the input are skipped (their error is typed).
    #[test]
    fn random_models_agree_on_both_executors(
        seed in any::<u64>(),
        (batch, h, w, c) in (1usize..=3, 3usize..=13, 3usize..=13, 1usize..=5),
        (threads, fold, winograd) in (1usize..=3, any::<bool>(), any::<bool>()),
    ) {
        let mut net = random_model(seed, c);
        common::randomize(&mut net, seed as u32);
        let Ok(out_shape) = net.output_shape(&[batch, h, w, c]) else { return Ok(()) };
        let x = tensor(&[batch, h, w, c], seed ^ 7);
        let options = InferenceOptions { threads, fold_batch_norm: fold, winograd, ..Default::default() };
        let mut fast = CompiledModel::new(&net, &[h, w, c], &options).unwrap();
        let want = match net.forward(&x) {
            Ok(y) => y,
            // (Stacked signed squares can overflow: then both executors say so.)
            Err(Error::NonFiniteOutput { .. }) => {
                let overflowed = matches!(fast.run(&x), Err(Error::NonFiniteOutput { .. }));
                prop_assert!(overflowed, "the fast executor must report the overflow too");
                return Ok(());
            }
            Err(e) => panic!("{e}"),
        };
        prop_assert_eq!(want.shape(), out_shape.as_slice());
        let got = fast.run(&x).unwrap();
        let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        let err = common::max_abs_diff(&got, &want);
        prop_assert!(err <= 2e-5 * scale, "error {} (scale {}) for\n{}", err, scale, fast.graph(&[h, w, c]).unwrap());
        // Bit-identical whatever the thread count.
        let mut one = CompiledModel::new(&net, &[h, w, c], &InferenceOptions { threads: 1, ..options }).unwrap();
        prop_assert_eq!(one.run(&x).unwrap(), got);
    }
}

/// A finite input whose output is not (here an infinite dense weight) is a typed error on both
/// executors, never NaN or infinity handed back; the reference executor names the layer.
#[test]
fn a_non_finite_output_is_an_error_naming_its_first_layer() {
    let mut net = Sequential::new();
    net.push("conv", Conv2d::new(Conv2dConfig::new(2, 3, [1, 1])).unwrap())
        .unwrap()
        .push("pool", GlobalAvgPool)
        .unwrap()
        .push("fc", Dense::new(3, 2, Some(Activation::Softmax)).unwrap())
        .unwrap();
    common::randomize(&mut net, 4);
    let x = tensor(&[2, 3, 3, 2], 9);
    assert!(net.forward(&x).is_ok());
    struct Huge;
    impl ParamVisitor for Huge {
        fn visit(&mut self, path: &LayerPath, kind: ParamKind, mut v: ndarray::ArrayViewMutD<'_, f32>) -> convnet::Result<()> {
            if path.to_string() == "fc" && kind == ParamKind::Kernel {
                v.fill(f32::INFINITY);
            }
            Ok(())
        }
    }
    net.visit_params_mut(&mut LayerPath::default(), &mut Huge).unwrap();
    let e = net.forward(&x).unwrap_err();
    assert!(
        matches!(e, Error::NonFiniteOutput { .. }) && e.to_string().contains("output of fc"),
        "{e}"
    );
    let e = CompiledModel::new(&net, &[3, 3, 2], &opts(2)).unwrap().run(&x).unwrap_err();
    assert!(matches!(e, Error::NonFiniteOutput { .. }), "{e}");
}
