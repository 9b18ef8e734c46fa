//! The presets build the networks their references describe: parameter counts, output shapes.

mod common;

use convnet::layers::Layer;
use convnet::models::{Depth, ResNet, ResNetConfig};

fn counts(cfg: ResNetConfig) -> (usize, usize, usize) {
    let c = ResNet::new(cfg).unwrap().param_count();
    (c.total(), c.trainable, c.non_trainable)
}

#[test]
fn seed_keras_resnet50_has_keras_parameter_counts() {
    assert_eq!(counts(ResNetConfig::keras_resnet50()), (25_636_712, 25_583_592, 53_120));
    // The fixture network at 1/8 width.
    assert_eq!(counts(ResNetConfig::keras_resnet50().with_width_divisor(8)).0, 641_112);
    // Layout B has the same weights.
    assert_eq!(counts(ResNetConfig::keras_applications_resnet50()).0, 25_636_712);
}

#[test]
fn torchvision_presets_have_torchvision_parameter_counts() {
    // torchvision counts parameters only (BatchNorm statistics are buffers).
    assert_eq!(counts(ResNetConfig::torchvision(Depth::R50)).1, 25_557_032);
    assert_eq!(counts(ResNetConfig::torchvision(Depth::R18)).1, 11_689_512);
    assert_eq!(counts(ResNetConfig::torchvision(Depth::R34)).1, 21_797_672);
    assert_eq!(counts(ResNetConfig::torchvision(Depth::R101)).1, 44_549_160);
    assert_eq!(counts(ResNetConfig::torchvision(Depth::R152)).1, 60_192_808);
    assert_eq!(counts(ResNetConfig::torchvision(Depth::R18).with_width_divisor(8)).1, 241_712);
    assert_eq!(counts(ResNetConfig::torchvision(Depth::R50).with_width_divisor(8)).1, 631_152);
}

/// torchvision's ResNeXt and Wide ResNet builders (`torchvision.models.resnext50_32x4d()` and so
/// on, counted with `sum(p.numel() for p in net.parameters())`; BatchNorm statistics are
/// buffers: 68,224 floats for the 50-layer nets, 202,880 for ResNeXt-101 and 137,856 for Wide
/// ResNet-101).
#[test]
fn resnext_and_wide_resnet_presets_have_torchvision_parameter_counts() {
    let resnext = |d, g, w| counts(ResNetConfig::torchvision_resnext(d, g, w).unwrap());
    assert_eq!(resnext(Depth::R50, 32, 4), (25_028_904 + 68_224, 25_028_904, 68_224));
    assert_eq!(resnext(Depth::R101, 32, 8), (88_791_336 + 202_880, 88_791_336, 202_880));
    assert_eq!(resnext(Depth::R101, 64, 4), (83_455_272 + 202_880, 83_455_272, 202_880));
    let wide = |d| counts(ResNetConfig::torchvision_wide(d).unwrap());
    assert_eq!(wide(Depth::R50), (68_883_240 + 68_224, 68_883_240, 68_224));
    assert_eq!(wide(Depth::R101), (126_886_696 + 137_856, 126_886_696, 137_856));
    assert_eq!(
        ResNetConfig::torchvision_resnext(Depth::R50, 32, 4).unwrap().name,
        "resnext50_32x4d"
    );
    assert_eq!(ResNetConfig::torchvision_wide(Depth::R101).unwrap().name, "wide_resnet101_2");
    // Basic-block depths have no bottleneck to widen or group.
    assert!(ResNetConfig::torchvision_resnext(Depth::R18, 32, 4).is_err());
    assert!(ResNetConfig::torchvision_wide(Depth::R34).is_err());
    let mut basic = ResNetConfig::torchvision(Depth::R18);
    basic.groups = 2;
    assert!(ResNet::new(basic).is_err());
    // Too narrow for its groups: a typed error, not a zero-channel layer.
    let mut narrow = ResNetConfig::torchvision_resnext(Depth::R50, 32, 4).unwrap().with_width_divisor(64);
    narrow.base_width = 4;
    let err = ResNet::new(narrow).unwrap_err().to_string();
    assert!(err.contains("no channels per group"), "{err}");
}

#[test]
fn keras_modern_resnet50_matches_keras_applications() {
    // keras.applications.ResNet50(): 25,636,712 parameters, as the classic layout.
    assert_eq!(counts(ResNetConfig::keras_modern(Depth::R50).unwrap()).0, 25_636_712);
    assert!(ResNetConfig::keras_modern(Depth::R18).is_err());
}

#[test]
fn seed_summary_shapes_follow_the_reference_page() {
    let model = ResNet::new(ResNetConfig::keras_resnet50()).unwrap();
    let s = model.summary().unwrap();
    let shape_of = |name: &str| {
        s.rows
            .iter()
            .find(|r| r.path.leaf() == name)
            .map(|r| r.output_shape.clone())
            .unwrap()
    };
    assert_eq!(shape_of("conv1_pad"), [1, 230, 230, 3]);
    assert_eq!(shape_of("conv1"), [1, 112, 112, 64]);
    assert_eq!(shape_of("pool1"), [1, 55, 55, 64]);
    assert_eq!(shape_of("res2c"), [1, 55, 55, 256]);
    assert_eq!(shape_of("res3d"), [1, 28, 28, 512]);
    assert_eq!(shape_of("res4f"), [1, 14, 14, 1024]);
    assert_eq!(shape_of("res5c"), [1, 7, 7, 2048]);
    assert_eq!(shape_of("flatten"), [1, 2048]);
    assert_eq!(shape_of("fc1000"), [1, 1000]);
    let text = s.to_string();
    assert!(text.starts_with("Model: \"resnet50\""), "{text}");
    assert!(
        text.contains("res2a_branch2a (Conv2D)") && text.contains("Total params: 25,636,712"),
        "{text}"
    );
    assert!(text.contains("Trainable params: 25,583,592") && text.contains("Non-trainable params: 53,120"));
    // 107 layers with weights hold 320 arrays.
    let mut arrays = 0;
    model.visit_params(&mut Default::default(), &mut |_, _, _| arrays += 1);
    assert_eq!(arrays, 320);

    let b = ResNet::new(ResNetConfig::keras_applications_resnet50()).unwrap().summary().unwrap();
    assert_eq!(
        b.rows.iter().find(|r| r.path.leaf() == "pool1").unwrap().output_shape,
        [1, 56, 56, 64]
    );
}

#[test]
fn torchvision_paths_are_state_dict_paths() {
    let model = ResNet::new(ResNetConfig::torchvision(Depth::R50).with_width_divisor(8)).unwrap();
    let mut names = Vec::new();
    model.visit_params(&mut Default::default(), &mut |p, k, _| names.push(format!("{} {k:?}", p.dotted())));
    assert!(names.contains(&"layer1.0.downsample.0 Kernel".to_string()), "{names:?}");
    assert!(names.contains(&"layer4.2.bn3 MovingVariance".to_string()));
    assert!(names.contains(&"fc Kernel".to_string()));
    assert_eq!(model.output_shape(&[2, 224, 224, 3]).unwrap(), vec![2, 1000]);
    // A global-pooling head takes any input size; the seed's fixed head does not.
    assert_eq!(model.output_shape(&[1, 160, 128, 3]).unwrap(), vec![1, 1000]);
    let seed = ResNet::new(ResNetConfig::keras_resnet50().with_width_divisor(8)).unwrap();
    assert!(seed.output_shape(&[1, 160, 160, 3]).is_err());
}

/// torchvision's `mobilenet_v2(width_mult=w)`: parameters and BatchNorm buffers as
/// `sum(p.numel() for p in net.parameters())` counts them.
#[test]
fn mobilenet_v2_presets_have_torchvision_parameter_counts() {
    use convnet::models::{MobileNetV2, MobileNetV2Config};
    for (width, params, buffers) in [(1.0, 3_504_872, 34_112), (0.5, 1_968_680, 18_544), (0.35, 1_677_128, 14_080)] {
        let c = MobileNetV2::new(MobileNetV2Config::torchvision().with_width_mult(width))
            .unwrap()
            .param_count();
        assert_eq!((c.trainable, c.non_trainable), (params, buffers), "width {width}");
    }
    assert!(MobileNetV2::new(MobileNetV2Config::torchvision().with_width_mult(0.0)).is_err());
    assert!(MobileNetV2::new(MobileNetV2Config::torchvision().with_classes(0)).is_err());
}

/// `keras.applications.MobileNetV2(alpha=a)`: `model.count_params()` (BatchNorm statistics
/// included) for every alpha Keras ships weights for, and its layer names.
#[test]
fn mobilenet_v2_presets_have_keras_parameter_counts_and_names() {
    use convnet::models::{MobileNetV2, MobileNetV2Config};
    let counts = [
        (1.0, 3_538_984),
        (0.35, 1_691_208),
        (0.5, 1_987_224),
        (0.75, 2_663_064),
        (1.3, 5_431_048),
        (1.4, 6_156_712),
    ];
    for (alpha, total) in counts {
        let model = MobileNetV2::new(MobileNetV2Config::keras(alpha)).unwrap();
        assert_eq!(model.param_count().total(), total, "alpha {alpha}");
    }
    let model = MobileNetV2::new(MobileNetV2Config::keras(0.35)).unwrap();
    let summary = model.network().summary(&[1, 224, 224, 3]).unwrap().to_string();
    for name in [
        "Conv1",
        "bn_Conv1",
        "expanded_conv_depthwise",
        "expanded_conv_project_BN",
        "block_1_pad",
        "block_2_add",
        "block_16_project_BN",
        "Conv_1_bn",
        "out_relu",
        "predictions",
    ] {
        assert!(summary.contains(name), "no {name} in\n{summary}");
    }
    // 224 -> 112 (Conv1) -> 56, 28, 14, 7 at blocks 1, 3, 6 and 13.
    assert!(summary.contains("(None, 7, 7, 1280)"), "{summary}");
}

/// A group count that does not divide the channels is refused, naming the layer's config.
#[test]
fn a_group_count_that_does_not_divide_the_channels_is_a_typed_error() {
    use convnet::layers::{Conv2d, Conv2dConfig};
    for (cin, cout, groups) in [(6, 8, 4), (8, 6, 4), (8, 8, 0), (8, 8, 16)] {
        let err = Conv2d::new(Conv2dConfig::new(cin, cout, [3, 3]).with_groups(groups)).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, convnet::Error::Config { .. }) && text.contains("groups"),
            "{cin} {cout} {groups}: {text}"
        );
    }
}

/// SE-ResNet50 (a custom configuration): torchvision's ResNet50 plus 2,530,992 parameters of
/// squeeze-and-excitation (per block `2 C^2 / 16 + C / 16 + C`), 28,088,024 in all, as timm's
/// `seresnet50`; the compiled executor gives the layer-by-layer numbers.
#[test]
fn se_resnet50_has_the_squeeze_and_excitation_parameters_and_runs_compiled() {
    assert_eq!(counts(ResNetConfig::torchvision_se(Depth::R50)).1, 28_088_024);
    let mut model = ResNet::new(ResNetConfig::torchvision_se(Depth::R50).with_width_divisor(16).with_classes(10)).unwrap();
    common::randomize(&mut model, 3);
    let x = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[2, 64, 64, 3]), common::fill(2 * 64 * 64 * 3, 9)).unwrap();
    let want = model.forward(&x).unwrap();
    let options = convnet::inference::InferenceOptions {
        threads: 2,
        ..Default::default()
    };
    let got = convnet::inference::CompiledModel::new(&model, &[64, 64, 3], &options)
        .unwrap()
        .run(&x)
        .unwrap();
    let rel = common::max_rel_diff(&got, &want);
    assert!(rel <= 1e-4, "relative error {rel}");
    let mut too_narrow = ResNetConfig::torchvision_se(Depth::R50).with_width_divisor(64);
    too_narrow.se_reduction = Some(64);
    let err = ResNet::new(too_narrow).unwrap_err().to_string();
    assert!(err.contains("squeeze"), "{err}");
}

/// Keras' `ResNet50V2`, `ResNet101V2` and `ResNet152V2` (keras.applications; the counts
/// `model.count_params()` gives): trainable and BatchNorm statistics together.
#[test]
fn keras_resnet_v2_presets_have_keras_parameter_counts() {
    use convnet::models::ResNetV2;
    for (depth, total) in [(Depth::R50, 25_613_800), (Depth::R101, 44_675_560), (Depth::R152, 60_380_648)] {
        let model = ResNetV2::keras(depth).unwrap();
        assert_eq!(model.param_count().total(), total, "ResNet{}V2", depth.layers());
    }
    assert!(ResNetV2::keras(Depth::R18).is_err());
    // Keras' names, so `save_weights` files load by name.
    let model = ResNetV2::keras(Depth::R50).unwrap();
    let mut names = Vec::new();
    model.visit_params(&mut Default::default(), &mut |p, _, _| names.push(p.to_string()));
    for want in [
        "conv1_conv",
        "conv2_block1_preact_bn",
        "conv2_block1_0_conv",
        "conv2_block3_2_conv",
        "post_bn",
        "predictions",
    ] {
        assert!(names.iter().any(|n| n.ends_with(want)), "no {want} in {:?}", &names[..8]);
    }
    // Each stage's last block halves the size (64 -> 16 after the stem, then 8, 4, 2).
    let config = convnet::models::ResNetV2Config::keras(Depth::R50)
        .with_input_shape([64, 64, 3])
        .with_classes(10);
    let mut small = ResNetV2::new(config).unwrap();
    let rows = small.network().summary(&[1, 64, 64, 3]).unwrap().to_string();
    assert!(rows.contains("conv2_block3_2_conv") && rows.contains("(None, 8, 8, 64)"), "{rows}");
    common::randomize(&mut small, 5);
    let x = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[2, 64, 64, 3]), common::fill(2 * 64 * 64 * 3, 4)).unwrap();
    let want = small.forward(&x).unwrap();
    let options = convnet::inference::InferenceOptions {
        threads: 2,
        ..Default::default()
    };
    let got = convnet::inference::CompiledModel::new(&small, &[64, 64, 3], &options)
        .unwrap()
        .run(&x)
        .unwrap();
    let rel = common::max_rel_diff(&got, &want);
    assert!(rel <= 1e-4, "relative error {rel}");
}

/// Every ImageNet preset by name builds its reference's network: Keras' `count_params()`
/// (BatchNorm statistics included) and torchvision's `sum(p.numel() for p in parameters())`.
#[test]
fn every_zoo_preset_has_its_references_parameter_count() {
    use convnet::models::zoo;
    let keras_totals = [
        ("keras/ResNet50", 25_636_712),
        ("keras/ResNet50V2", 25_613_800),
        ("keras/ResNet101V2", 44_675_560),
        ("keras/ResNet152V2", 60_380_648),
        ("keras/MobileNetV2", 3_538_984),
        ("keras/MobileNetV2_0.35", 1_691_208),
    ];
    let torch_params = [
        ("torchvision/resnet18", 11_689_512),
        ("torchvision/resnet34", 21_797_672),
        ("torchvision/resnet50", 25_557_032),
        ("torchvision/resnet101", 44_549_160),
        ("torchvision/resnet152", 60_192_808),
        ("torchvision/resnext50_32x4d", 25_028_904),
        ("torchvision/resnext101_32x8d", 88_791_336),
        ("torchvision/resnext101_64x4d", 83_455_272),
        ("torchvision/wide_resnet50_2", 68_883_240),
        ("torchvision/wide_resnet101_2", 126_886_696),
        ("torchvision/mobilenet_v2", 3_504_872),
    ];
    assert_eq!(keras_totals.len() + torch_params.len(), zoo::PRESETS.len());
    for (name, want) in keras_totals {
        assert_eq!(zoo::find(name).unwrap().build().unwrap().param_count().total(), want, "{name}");
    }
    for (name, want) in torch_params {
        assert_eq!(zoo::find(name).unwrap().build().unwrap().param_count().trainable, want, "{name}");
    }
}
