//! The compiled inference path (BatchNorm folded, epilogues fused, threads) against the same
//! Keras and PyTorch references as the layer-by-layer path, at the same tolerances.

mod common;

use convnet::inference::{CompiledModel, InferenceOptions};
use convnet::layers::Tensor;
use convnet::models::{Depth, ResNet, ResNetConfig};
use convnet::weights::{LoadOptions, WeightFile};
use ndarray::{concatenate, Axis};

const IMAGES: [&str; 4] = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"];

fn batch() -> Tensor {
    let images = IMAGES.map(|i| common::npy(&format!("keras_resnet50_w8/input_{i}.npy")));
    concatenate(Axis(0), &images.iter().map(|a| a.view()).collect::<Vec<_>>()).unwrap()
}

fn keras_w8() -> ResNet {
    let mut m = ResNet::new(ResNetConfig::keras_resnet50().with_width_divisor(8)).unwrap();
    WeightFile::open(common::fixture("keras_resnet50_w8/resnet50.h5"))
        .unwrap()
        .load_into(&mut m, &LoadOptions::strict())
        .unwrap();
    m
}

fn opts(threads: usize, fold: bool) -> InferenceOptions {
    InferenceOptions {
        threads,
        fold_batch_norm: fold,
        winograd: true,
        ..Default::default()
    }
}

#[test]
fn compiled_keras_resnet50_matches_keras_for_every_thread_count() {
    let model = keras_w8();
    let want = common::npy("keras_resnet50_w8/batch_probs.npy");
    let x = batch();
    // (fold, winograd): every optimization on, then each one off.
    for (fold, winograd) in [(true, true), (true, false), (false, true)] {
        let mut first: Option<Tensor> = None;
        for threads in [1, 2, 3] {
            let options = InferenceOptions {
                winograd,
                ..opts(threads, fold)
            };
            let mut fast = CompiledModel::new(&model, &[224, 224, 3], &options).unwrap();
            let got = fast.run(&x).unwrap();
            let err = common::max_abs_diff(&got, &want);
            println!("threads {threads} fold {fold} winograd {winograd}: max abs error {err:e}");
            assert!(err <= 1e-5, "threads {threads}, fold {fold}, winograd {winograd}: {err}");
            // Single images through the same compiled model (a second batch size).
            for (i, image) in IMAGES.iter().enumerate() {
                let one = fast.run(&common::npy(&format!("keras_resnet50_w8/input_{image}.npy"))).unwrap();
                assert!(common::max_abs_diff(&one, &want.slice(ndarray::s![i..i + 1, ..]).to_owned().into_dyn()) <= 1e-5);
            }
            // Deterministic, and identical whatever the thread count.
            assert_eq!(fast.run(&x).unwrap(), got);
            match &first {
                None => first = Some(got),
                Some(f) => assert_eq!(f, &got, "threads {threads} differ from 1 thread (fold {fold}, winograd {winograd})"),
            }
        }
    }
}

#[test]
fn compiled_torchvision_resnets_match_pytorch() {
    for (depth, dir, file) in [
        (Depth::R18, "torch_resnet18_w8", "resnet18.pth"),
        (Depth::R50, "torch_resnet50_w8", "resnet50.safetensors"),
    ] {
        let mut model = ResNet::new(ResNetConfig::torchvision(depth).with_width_divisor(8)).unwrap();
        WeightFile::open(common::fixture(&format!("{dir}/{file}")))
            .unwrap()
            .load_into(&mut model, &LoadOptions::strict())
            .unwrap();
        let mut fast = CompiledModel::new(&model, &[224, 224, 3], &opts(2, true)).unwrap();
        let got = fast.run(&batch()).unwrap();
        let want = common::npy(&format!("{dir}/logits.npy"));
        let (abs, rel) = (common::max_abs_diff(&got, &want), common::max_rel_diff(&got, &want));
        println!("{file}: abs {abs:e} rel {rel:e}");
        // ResNet18 as tests/torch_resnets.rs, ResNet50/8 at its 1e-4 relative with the SIMD
        // kernels (AVX-512 and AVX2 + FMA give the same bits: 4.4e-5). ResNet50/8 is
        // ill-conditioned in f32 (see there): an f64 evaluation lies up to 1.8e-3 (1.06e-4 of the
        // largest logit) from PyTorch's own f32 logits, so any f32 summation order differs from
        // PyTorch's by about that; the portable kernel, which rounds each product before adding
        // it, measured 1.23e-4, and is held to twice PyTorch's own f32-vs-f64 spread.
        let r50_bound = if convnet::kernels::packed_gemm::simd_available() {
            1e-4
        } else {
            2.2e-4
        };
        match depth {
            Depth::R18 => assert!(abs <= 1e-4, "{file}: {abs}"),
            _ => assert!(rel <= r50_bound, "{file}: {rel}"),
        }
    }
}

/// Every preset's structure (padding folded into pools, global pooling heads, basic blocks,
/// modern Keras names) gives the same numbers compiled as layer by layer.
#[test]
fn compiled_presets_match_their_layer_by_layer_forward() {
    let x = batch().slice(ndarray::s![0..2, .., .., ..]).to_owned().into_dyn();
    for cfg in [
        ResNetConfig::keras_applications_resnet50().with_width_divisor(8),
        ResNetConfig::keras_modern(Depth::R101).unwrap().with_width_divisor(16),
        ResNetConfig::torchvision(Depth::R34).with_width_divisor(8),
    ] {
        let mut model = ResNet::new(cfg.clone()).unwrap();
        common::randomize(&mut model, 7);
        let want = model.forward(&x).unwrap();
        for threads in [1, 2] {
            let mut fast = CompiledModel::new(&model, &[224, 224, 3], &opts(threads, true)).unwrap();
            let got = fast.run(&x).unwrap();
            let rel = common::max_rel_diff(&got, &want);
            assert!(rel <= 1e-4, "{} threads {threads}: relative error {rel}", cfg.name);
        }
    }
}

/// The full-width network, where the compiled model's scheduling differs from the small
/// fixtures': Winograd blocks split over threads by tile blocks (56x56) and by output panels
/// (28x28, 14x14), and a batch run image by image up to the last stage, then over the whole
/// batch (see `CompiledModel`). Same numbers as the layer-by-layer forward, and bit for bit the
/// same as one image at a time on one thread.
#[test]
fn full_width_resnet50_schedules_agree() {
    let mut model = ResNet::new(ResNetConfig::keras_resnet50()).unwrap();
    common::randomize(&mut model, 11);
    let x = batch().slice(ndarray::s![0..3, .., .., ..]).to_owned().into_dyn();
    let want = model.forward(&x).unwrap();
    let image = |i: usize| x.slice(ndarray::s![i..i + 1, .., .., ..]).to_owned().into_dyn();
    let mut one = CompiledModel::new(&model, &[224, 224, 3], &opts(1, true)).unwrap();
    let singles: Vec<Tensor> = (0..3).map(|i| one.run(&image(i)).unwrap()).collect();
    let singles = concatenate(Axis(0), &singles.iter().map(|a| a.view()).collect::<Vec<_>>()).unwrap();
    let rel = common::max_rel_diff(&singles, &want);
    println!("full width: relative error {rel:e}");
    assert!(rel <= 1e-4, "relative error {rel}");
    for threads in [2, 3] {
        let mut fast = CompiledModel::new(&model, &[224, 224, 3], &opts(threads, true)).unwrap();
        assert_eq!(fast.run(&x).unwrap(), singles, "batch of 3 on {threads} threads");
        for i in 0..3 {
            let got = fast.run(&image(i)).unwrap();
            assert_eq!(
                got.as_slice().unwrap(),
                singles.slice(ndarray::s![i, ..]).as_slice().unwrap(),
                "image {i} on {threads} threads"
            );
        }
    }
}

#[test]
fn wrong_input_shapes_are_typed_errors() {
    let model = keras_w8();
    let mut fast = CompiledModel::new(&model, &[224, 224, 3], &opts(1, true)).unwrap();
    // 150 rows end as 5x7 before the 7x7 average pool: the model cannot take them.
    let e = fast.run(&ndarray::ArrayD::zeros(ndarray::IxDyn(&[1, 150, 224, 3]))).unwrap_err();
    assert!(matches!(e, convnet::Error::Shape { .. }), "{e}");
    assert!(fast.run(&ndarray::ArrayD::zeros(ndarray::IxDyn(&[224, 224, 3]))).is_err());
    assert!(fast.run(&ndarray::ArrayD::zeros(ndarray::IxDyn(&[1, 224, 224, 4]))).is_err());
    // Compiling for an input the fixed head cannot take fails at compile time.
    assert!(CompiledModel::new(&model, &[160, 160, 3], &opts(1, true)).is_err());
    let mut out = vec![0.0; 999];
    assert!(fast
        .run_into(ndarray::ArrayD::zeros(ndarray::IxDyn(&[1, 224, 224, 3])).view(), &mut out)
        .is_err());
}

#[test]
fn profile_names_every_layer() {
    let model = keras_w8();
    let mut fast = CompiledModel::new(&model, &[224, 224, 3], &opts(1, true)).unwrap();
    let times = fast.profile(&common::npy("keras_resnet50_w8/input_chelsea.png.npy")).unwrap();
    assert_eq!(times.len(), fast.op_count());
    let names: Vec<&str> = times.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.contains(&"conv1") && names.contains(&"res2a/res2a_branch2c") && names.contains(&"fc1000"),
        "{names:?}"
    );
    // 53 convolutions (BN folded, ReLU and the residual add fused), pool1, avg_pool, fc1000, softmax.
    assert_eq!(names.len(), 53 + 4, "{names:?}");
}

mod compiled_conv {
    use convnet::inference::{CompiledModel, InferenceOptions};
    use convnet::kernels::{reference, ConvGeometry, Padding, Padding2d, Window2d};
    use convnet::layers::{Activation, ActivationLayer, BatchNorm, Conv2d, Conv2dConfig, Layer, Relu, Residual, Sequential};
    use ndarray::{Array1, Array4, ArrayD, IxDyn};
    use proptest::prelude::*;

    use super::common::fill;

    /// `conv`, a BatchNorm of seeded statistics and (with `relu`) a ReLU, compiled with the
    /// BatchNorm folded on 1-3 threads, against the layer-by-layer forward on `x`; the compiled
    /// result the same bits on every thread count.
    fn compiled_conv_bn_matches_layers(conv: Conv2d, channels: usize, relu: bool, x: &ArrayD<f32>, seed: u64) -> Result<(), TestCaseError> {
        let stat = |salt: u64, lo: f32| Array1::from(fill(channels, seed ^ salt).iter().map(|v| lo + v.abs()).collect::<Vec<_>>());
        let (beta, mean) = (Array1::from(fill(channels, seed ^ 3)), Array1::from(fill(channels, seed ^ 4)));
        let bn = BatchNorm::with_weights(1e-3, stat(2, 0.5), beta, mean, stat(5, 0.2)).unwrap();
        let mut net = Sequential::new();
        net.push("conv", conv).unwrap();
        net.push("bn", bn).unwrap();
        if relu {
            net.push("relu", Relu).unwrap();
        }
        let want = net.forward(x).unwrap();
        let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        let mut first = None;
        for threads in 1..=3 {
            let opts = InferenceOptions {
                threads,
                fold_batch_norm: true,
                ..Default::default()
            };
            let got = CompiledModel::new(&net, &x.shape()[1..], &opts).unwrap().run(x).unwrap();
            prop_assert_eq!(got.shape(), want.shape());
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                prop_assert!((a - b).abs() <= 1e-5 * scale, "element {i}: {a} vs {b} ({threads} threads)");
            }
            match &first {
                None => first = Some(got),
                Some(f) => prop_assert!(*f == got, "{threads} threads gave other bits"),
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

        /// The compiled convolution (im2col for few channels, in-place taps for 16 or more, both
        /// with fused bias and ReLU, split over 1-3 threads) against the direct-loop reference.
        #[test]
        fn compiled_conv_matches_reference(
            (n, h, w, cin, cout) in (1usize..=3, 1usize..=13, 1usize..=13, 1usize..=40, 1usize..=70),
            (kh, kw, sh, sw, dh, dw) in (1usize..=5, 1usize..=5, 1usize..=3, 1usize..=3, 1usize..=2, 1usize..=2),
            pad in prop_oneof![Just(Padding::Valid), Just(Padding::Same), (0usize..3, 0usize..3, 0usize..3, 0usize..3).prop_map(|(t, b, l, r)| Padding::Explicit(Padding2d::new(t, b, l, r)))],
            (threads, relu, seed) in (1usize..=3, any::<bool>(), any::<u64>()),
        ) {
            let window = Window2d { kernel: [kh, kw], stride: [sh, sw], dilation: [dh, dw], padding: pad };
            let Ok(g) = ConvGeometry::new([n, h, w, cin], cout, window) else { return Ok(()) };
            let kernel = fill(g.kernel_len(), seed);
            let bias = fill(cout, seed ^ 1);
            let x = fill(g.input_len(), seed ^ 2);
            let cfg = Conv2dConfig::new(cin, cout, [kh, kw]).with_strides([sh, sw]).with_dilation([dh, dw]).with_padding(pad);
            let conv = Conv2d::with_weights(cfg, Array4::from_shape_vec((kh, kw, cin, cout), kernel.clone()).unwrap(), Some(Array1::from(bias.clone()))).unwrap();
            let mut net = Sequential::new();
            net.push("conv", conv).unwrap();
            if relu {
                net.push("relu", Relu).unwrap();
            }
            let mut fast = CompiledModel::new(&net, &[h, w, cin], &InferenceOptions { threads, fold_batch_norm: true, winograd: true, ..Default::default() }).unwrap();
            let got = fast.run(&ArrayD::from_shape_vec(IxDyn(&[n, h, w, cin]), x.clone()).unwrap()).unwrap();
            let mut want = vec![0.0; g.output_len()];
            reference::conv2d(&x, &g, &kernel, Some(&bias), &mut want);
            let mut scale = vec![0.0; g.output_len()];
            let abs = |v: &[f32]| v.iter().map(|a| a.abs()).collect::<Vec<_>>();
            reference::conv2d(&abs(&x), &g, &abs(&kernel), None, &mut scale);
            for (i, (a, (b, s))) in got.iter().zip(want.iter().zip(&scale)).enumerate() {
                let b = if relu { b.max(0.0) } else { *b };
                prop_assert!((a - b).abs() <= 1e-5 * (s + 1.0), "element {i}: {a} vs {b} for {g:?}");
            }
        }

        /// A depthwise convolution (groups = channels: the direct NHWC loop), with a BatchNorm
        /// folded into its epilogue and a ReLU, compiled on 1-3 threads, against the
        /// layer-by-layer forward, over kernel sizes, strides, dilations and padding modes; the
        /// same bits on every thread count.
        #[test]
        fn compiled_depthwise_conv_matches_layer_by_layer(
            (n, h, w, c) in (1usize..=2, 1usize..=12, 1usize..=12, 1usize..=40),
            (kh, kw, s, d) in (1usize..=5, 1usize..=5, 1usize..=2, 1usize..=2),
            pad in prop_oneof![Just(Padding::Valid), Just(Padding::Same), (0usize..3, 0usize..3, 0usize..3, 0usize..3).prop_map(|(t, b, l, r)| Padding::Explicit(Padding2d::new(t, b, l, r)))],
            (relu, seed) in (any::<bool>(), any::<u64>()),
        ) {
            let window = Window2d { kernel: [kh, kw], stride: [s, s], dilation: [d, d], padding: pad };
            if ConvGeometry::new([n, h, w, c], c, window).is_err() { return Ok(()); }
            let cfg = Conv2dConfig::new(c, c, [kh, kw]).with_strides([s, s]).with_dilation([d, d]).with_padding(pad).with_groups(c);
            let kernel = Array4::from_shape_vec((kh, kw, 1, c), fill(kh * kw * c, seed)).unwrap();
            let conv = Conv2d::with_weights(cfg, kernel, Some(Array1::from(fill(c, seed ^ 1)))).unwrap();
            let x = ArrayD::from_shape_vec(IxDyn(&[n, h, w, c]), fill(n * h * w * c, seed ^ 6)).unwrap();
            compiled_conv_bn_matches_layers(conv, c, relu, &x, seed)?;
        }

        /// A grouped convolution (1x1 read in place, others through each group's im2col), with
        /// a BatchNorm folded into its epilogue and a ReLU, compiled on 1-3 threads, against
        /// the layer-by-layer forward (the reference executor's direct grouped loop); the
        /// compiled result the same bits on every thread count.
        #[test]
        fn compiled_grouped_conv_matches_layer_by_layer(
            (n, h, w, groups, cin, cout) in (1usize..=2, 1usize..=11, 1usize..=11, 2usize..=5, 1usize..=6, 1usize..=40),
            (k, s, same, relu, seed) in (prop_oneof![Just(1usize), Just(3)], 1usize..=2, any::<bool>(), any::<bool>(), any::<u64>()),
        ) {
            let (cin_all, cout_all) = (cin * groups, cout * groups);
            let padding = if same { Padding::Same } else { Padding::Valid };
            if !same && (h < k || w < k) { return Ok(()); }
            let cfg = Conv2dConfig::new(cin_all, cout_all, [k, k]).with_strides([s, s]).with_padding(padding).with_groups(groups);
            let kernel = Array4::from_shape_vec((k, k, cin, cout_all), fill(k * k * cin * cout_all, seed)).unwrap();
            let conv = Conv2d::with_weights(cfg, kernel, Some(Array1::from(fill(cout_all, seed ^ 1)))).unwrap();
            let x = ArrayD::from_shape_vec(IxDyn(&[n, h, w, cin_all]), fill(n * h * w * cin_all, seed ^ 6)).unwrap();
            compiled_conv_bn_matches_layers(conv, cout_all, relu, &x, seed)?;
        }

        /// ResNeXt's narrow groups, 4 or 8 channels in and out over a multiple of 16 channels
        /// (AVX-512's direct loop, `kernels::narrow_groups`; merged into GEMM-wide groups on
        /// the other kernels), and groups of 4 in to 8 out (always merged), compiled against
        /// the layer-by-layer forward.
        #[test]
        fn compiled_narrow_grouped_conv_matches_layer_by_layer(
            (n, h, w, blocks) in (1usize..=2, 1usize..=9, 1usize..=9, 1usize..=3),
            (width, wider_out) in (prop_oneof![Just(4usize), Just(8)], any::<bool>()),
            (s, same, relu, seed) in (1usize..=2, any::<bool>(), any::<bool>(), any::<u64>()),
        ) {
            let c = 16 * blocks;
            let groups = c / width;
            let cout_all = if wider_out { 2 * c } else { c };
            let padding = if same { Padding::Same } else { Padding::Valid };
            if !same && (h < 3 || w < 3) { return Ok(()); }
            let cfg = Conv2dConfig::new(c, cout_all, [3, 3]).with_strides([s, s]).with_padding(padding).with_groups(groups);
            let kernel = Array4::from_shape_vec((3, 3, width, cout_all), fill(9 * width * cout_all, seed)).unwrap();
            let conv = Conv2d::with_weights(cfg, kernel, Some(Array1::from(fill(cout_all, seed ^ 1)))).unwrap();
            let x = ArrayD::from_shape_vec(IxDyn(&[n, h, w, c]), fill(n * h * w * c, seed ^ 6)).unwrap();
            compiled_conv_bn_matches_layers(conv, cout_all, relu, &x, seed)?;
        }
    }

    /// A seeded BatchNorm over `channels`.
    fn batch_norm(channels: usize, seed: u64) -> BatchNorm {
        let stat = |salt: u64, lo: f32| Array1::from(fill(channels, seed ^ salt).iter().map(|v| lo + v.abs()).collect::<Vec<_>>());
        let (beta, mean) = (Array1::from(fill(channels, seed ^ 3)), Array1::from(fill(channels, seed ^ 4)));
        BatchNorm::with_weights(1e-3, stat(2, 0.5), beta, mean, stat(5, 0.2)).unwrap()
    }

    /// A convolution of seeded weights (no bias) and its BatchNorm, then ReLU6 when `relu6`.
    fn conv_bn(cfg: Conv2dConfig, relu6: bool, seed: u64) -> Sequential {
        let (k, cin, cout) = (cfg.kernel_size, cfg.in_channels / cfg.groups, cfg.filters);
        let kernel = Array4::from_shape_vec((k[0], k[1], cin, cout), fill(k[0] * k[1] * cin * cout, seed)).unwrap();
        let mut s = Sequential::new();
        s.push("conv", Conv2d::with_weights(cfg.with_bias(false), kernel, None).unwrap())
            .unwrap();
        s.push("bn", batch_norm(cout, seed ^ 9)).unwrap();
        if relu6 {
            s.push("relu6", ActivationLayer(Activation::Relu6)).unwrap();
        }
        s
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// An inverted residual block (1x1 expansion or none, depthwise convolution, 1x1
        /// projection, each with its BatchNorm, ReLU6 after the first two, the residual add
        /// where the shapes agree) large enough to be fused into one op: compiled on 1-3
        /// threads against the layer-by-layer forward, and the same bits as the three
        /// convolutions run one by one (`fuse_blocks: false`) on every thread count.
        #[test]
        fn compiled_inverted_residual_blocks_match_unfused_bit_for_bit(
            (n, h, w, cin, wide, extra) in (1usize..=2, 8usize..=60, 8usize..=60, 1usize..=24, 1usize..=4, 0usize..=20),
            (expand, k, s, d, cout) in (any::<bool>(), prop_oneof![Just(1usize), Just(3), Just(5)], 1usize..=2, 1usize..=2, 1usize..=32),
            (pad, seed) in (0usize..=3, any::<u64>()),
        ) {
            // The depthwise input at least 256 KiB an image (the fusing threshold), up to 4 times
            // as wide: the rows of a thread's share in several bands of 256 KiB.
            let hidden = (1usize << 16).div_ceil(h * w) * wide + extra;
            let cin = if expand { cin } else { hidden };
            let padding = match pad {
                0 => Padding::Valid,
                1 => Padding::Same,
                p => Padding::Explicit(Padding2d::new(p - 1, p, 1, p - 2)),
            };
            let window = Window2d { kernel: [k, k], stride: [s, s], dilation: [d, d], padding };
            let Ok(g) = ConvGeometry::new([n, h, w, hidden], hidden, window) else { return Ok(()) };
            let mut main = Sequential::new();
            if expand {
                main.push("expand", conv_bn(Conv2dConfig::new(cin, hidden, [1, 1]), true, seed)).unwrap();
            }
            let dw = Conv2dConfig::new(hidden, hidden, [k, k]).with_strides([s, s]).with_dilation([d, d]).with_padding(padding).with_groups(hidden);
            main.push("depthwise", conv_bn(dw, true, seed ^ 1)).unwrap();
            main.push("project", conv_bn(Conv2dConfig::new(hidden, cout, [1, 1]), false, seed ^ 2)).unwrap();
            let residual = g.out_hw == [h, w] && cout == cin;
            let mut net = Sequential::new();
            if residual {
                net.push("block", Residual::new(main, None, None).unwrap()).unwrap();
            } else {
                net.push("block", main).unwrap();
            }
            let x = ArrayD::from_shape_vec(IxDyn(&[n, h, w, cin]), fill(n * h * w * cin, seed ^ 6)).unwrap();
            let want = net.forward(&x).unwrap();
            let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            let mut first = None;
            for threads in 1..=3 {
                for fuse_blocks in [true, false] {
                    let opts = InferenceOptions { threads, fuse_blocks, ..Default::default() };
                    let mut fast = CompiledModel::new(&net, &[h, w, cin], &opts).unwrap();
                    let names: Vec<String> = fast.profile(&x).unwrap().into_iter().map(|(name, _)| name).collect();
                    let fused = names.iter().any(|name| name.ends_with("depthwise, project]"));
                    prop_assert_eq!(fused, fuse_blocks, "{:?}", names);
                    let got = fast.run(&x).unwrap();
                    prop_assert_eq!(got.shape(), want.shape());
                    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                        prop_assert!((a - b).abs() <= 1e-5 * scale, "element {i}: {a} vs {b} ({threads} threads, fused {fuse_blocks})");
                    }
                    match &first {
                        None => first = Some(got),
                        Some(f) => prop_assert!(*f == got, "{threads} threads, fused {fuse_blocks}: other bits"),
                    }
                }
            }
        }
    }
}
