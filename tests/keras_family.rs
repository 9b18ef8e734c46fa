//! Keras' ResNet50V2 (at 1/8 width) and MobileNetV2 (alpha 0.35) from `model.save_weights`
//! files with Keras' own layer names (`tests/fixtures/keras_family`, made by its
//! `make_keras_family.py`: seeded random weights, BatchNorm statistics measured on four
//! photographs), against Keras' outputs, through both executors. Logits are held to 3x Keras'
//! own float32-vs-float64 spread (recorded beside each fixture), probabilities to 1e-5.

mod common;

use convnet::imagenet::image::{preprocess_input_tf, Preprocessing, CAFFE_BGR_MEAN};
use convnet::inference::{CompiledModel, InferenceOptions};
use convnet::kernels::Padding;
use convnet::layers::{Conv2d, Conv2dConfig, Layer, Sequential, Tensor};
use convnet::models::{Depth, MobileNetV2, MobileNetV2Config, ResNet, ResNetConfig, ResNetV2, ResNetV2Config};
use convnet::weights::{LoadOptions, WeightFile};
use convnet::Error;
use ndarray::{concatenate, Axis};

const IMAGES: [&str; 4] = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"];

/// The four photographs in Keras' "tf" mode: the pixels of `load_img(target_size=(224, 224))`
/// recovered from the caffe-mode inputs Keras wrote (means added back, rounded, RGB again),
/// then [`preprocess_input_tf`]. The generator feeds Keras the same.
fn batch() -> Tensor {
    let images = IMAGES.map(|i| {
        let mut x = common::npy(&format!("keras_resnet50_w8/input_{i}.npy"));
        for mut px in x.lanes_mut(Axis(3)) {
            let bgr = [px[0], px[1], px[2]];
            for c in 0..3 {
                px[c] = (bgr[2 - c] + CAFFE_BGR_MEAN[2 - c]).round();
            }
        }
        preprocess_input_tf(&mut x);
        x
    });
    concatenate(Axis(0), &images.iter().map(|a| a.view()).collect::<Vec<_>>()).unwrap()
}

#[test]
fn tf_mode_preprocessing_is_keras_load_img_and_preprocess_input() {
    let want = batch();
    for (i, image) in IMAGES.iter().enumerate() {
        let got = Preprocessing::KerasTf
            .input_from_file(common::fixture(&format!("keras_resnet50_w8/images/{image}")))
            .unwrap();
        let row = want.index_axis(Axis(0), i).insert_axis(Axis(0)).to_owned();
        assert_eq!(common::max_abs_diff(&got, &row), 0.0, "{image}");
        assert!(got.iter().all(|v| (-1.0..=1.0).contains(v)));
    }
}

/// Loads `name.h5` strictly into `build(false)` (logits) and `build(true)` (the preset's
/// softmax), runs both executors, and checks logits, probabilities and the top 5.
fn check(name: &str, build: impl Fn(bool) -> Box<dyn Layer>) {
    let expected: serde_json::Value =
        serde_json::from_reader(std::fs::File::open(common::fixture(&format!("keras_family/{name}.json"))).unwrap()).unwrap();
    let spread = expected["float32_float64_logit_spread"].as_f64().unwrap() as f32;
    let tolerance = 3.0 * spread;
    let want_logits = common::npy(&format!("keras_family/{name}_logits.npy"));
    let want_probs = common::npy(&format!("keras_family/{name}_probs.npy"));
    let weights = WeightFile::open(common::fixture(&format!("keras_family/{name}.h5"))).unwrap();
    let x = batch();
    for softmax in [false, true] {
        let mut model = build(softmax);
        // Keras counts BatchNorm statistics among the parameters.
        assert_eq!(model.param_count().total() as u64, expected["params"].as_u64().unwrap(), "{name}");
        let report = weights.load_into(model.as_mut(), &LoadOptions::strict()).unwrap();
        assert!(report.is_complete(), "{report}");
        for (path, out) in common::run_both_and_check_top5(model.as_ref(), &x, &expected["top5"], name) {
            let (what, err, tol) = if softmax {
                ("probabilities", common::max_abs_diff(&out, &want_probs), 1e-5)
            } else {
                ("logits", common::max_abs_diff(&out, &want_logits), tolerance)
            };
            println!("{name} {path}: {what} off by {err:e} (tolerance {tol:e})");
            assert!(
                err <= tol,
                "{name} {path}: {what} off by {err}, more than {tol} (Keras' f32/f64 spread {spread})"
            );
        }
    }
}

/// Pre-activation blocks, the stride on each stage's last block, 1x1 max-pool shortcuts.
#[test]
fn resnet50v2_matches_keras() {
    let build = |softmax| {
        let config = ResNetV2Config::keras(Depth::R50)
            .with_width_divisor(8)
            .with_classes(100)
            .with_softmax(softmax);
        Box::new(ResNetV2::new(config).unwrap()) as Box<dyn Layer>
    };
    check("resnet50v2_w8", build);
}

/// Keras' DepthwiseConv2D kernels `(3, 3, c, 1)`, 'same' padding, `correct_pad` before the
/// stride-2 depthwise convolutions, fused ReLU6.
#[test]
fn mobilenet_v2_matches_keras() {
    let build = |softmax| {
        let config = MobileNetV2Config::keras(0.35).with_classes(100).with_softmax(softmax);
        Box::new(MobileNetV2::new(config).unwrap()) as Box<dyn Layer>
    };
    check("mobilenet_v2_035", build);
}

#[test]
fn a_v2_file_in_a_v1_preset_is_a_typed_error_naming_the_layer_and_the_builder() {
    let weights = WeightFile::open(common::fixture("keras_family/resnet50v2_w8.h5")).unwrap();
    // tf.keras' ResNet50 (V1) has the same naming scheme as ResNet50V2.
    let mut v1 = ResNet::new(ResNetConfig::keras_modern(Depth::R50).unwrap().with_width_divisor(8)).unwrap();
    let err = weights.load_into(&mut v1, &LoadOptions::strict()).unwrap_err();
    let text = err.to_string();
    // V2's stem keeps 64 filters (and V1's is 8 wide here): the first layer that differs.
    assert!(matches!(&err, Error::WeightShape { layer, .. } if layer == "conv1_conv"), "{text}");
    assert!(
        text.contains("pre-activation ResNet (V2") && text.contains("models::ResNetV2"),
        "{text}"
    );
    // And the other way round: a V1 file into a V2 model.
    let v1_file = WeightFile::open(common::fixture("keras_resnet50_w8/resnet50.h5")).unwrap();
    let mut v2 = ResNetV2::new(ResNetV2Config::keras(Depth::R50).with_width_divisor(8)).unwrap();
    let text = v1_file.load_into(&mut v2, &LoadOptions::strict()).unwrap_err().to_string();
    assert!(text.contains("not a ResNet V2"), "{text}");
}

/// A one-layer depthwise convolution named `name` of 4 channels and `multiplier` (with a bias
/// when named `dw`, as the Keras case has).
fn depthwise_layer(name: &str, multiplier: usize, strides: usize, padding: Padding) -> Sequential {
    let conv = Conv2dConfig::new(4, 4 * multiplier, [3, 3])
        .with_groups(4)
        .with_strides([strides, strides])
        .with_padding(padding)
        .with_bias(name == "dw");
    let mut net = Sequential::new();
    net.push(name, Conv2d::new(conv).unwrap()).unwrap();
    net
}

#[test]
fn keras_depthwise_kernels_load_in_tensorflows_channel_order() {
    // DepthwiseConv2D(3, strides=2, padding='same', depth_multiplier=2): output c * 2 + m is
    // input channel c's m-th filter.
    let weights = WeightFile::open(common::fixture("keras_family/depthwise_case.h5")).unwrap();
    let mut net = depthwise_layer("dw", 2, 2, Padding::Same);
    let report = weights.load_into(&mut net, &LoadOptions::strict()).unwrap();
    assert!(report.is_complete(), "{report}");
    let mut z = common::npz("keras_family/depthwise_case.npz");
    let (x, want) = (common::npz_array(&mut z, "x").unwrap(), common::npz_array(&mut z, "y").unwrap());
    let layer_by_layer = net.forward(&x).unwrap();
    let compiled = CompiledModel::new(&net, &[9, 7, 4], &InferenceOptions::default())
        .unwrap()
        .run(&x)
        .unwrap();
    for (path, y) in [("layer by layer", layer_by_layer), ("compiled", compiled)] {
        let err = common::max_abs_diff(&y, &want);
        assert!(err <= 1e-5, "{path}: off by {err}");
    }
}

#[test]
fn a_depthwise_kernel_of_the_wrong_shape_is_a_typed_error_naming_the_layer() {
    // A multiplier-2 kernel, (3, 3, 4, 2), for a layer of multiplier 1: (3, 3, 1, 8) against
    // (3, 3, 1, 4) in the model's layout.
    let file = WeightFile::open(common::fixture("malformed/depthwise_multiplier2.h5")).unwrap();
    let mut net = depthwise_layer("d", 1, 1, Padding::Valid);
    let err = file.load_into(&mut net, &LoadOptions::strict()).unwrap_err();
    match &err {
        Error::WeightShape {
            layer, expected, found, ..
        } => {
            assert_eq!(
                (layer.as_str(), &expected[..], &found[..]),
                ("d", &[3, 3, 1, 4][..], &[3, 3, 1, 8][..]),
                "{err}"
            );
        }
        other => panic!("expected a shape error, got {other}"),
    }
    // The same file fits a multiplier-2 layer.
    let mut net2 = depthwise_layer("d", 2, 1, Padding::Valid);
    assert!(file.load_into(&mut net2, &LoadOptions::strict()).unwrap().is_complete());
    // Three axes cannot be a depthwise kernel: refused when the file is read, naming the layer.
    let err = WeightFile::open(common::fixture("malformed/depthwise_3d.h5")).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, Error::Format { .. }) && text.contains("layer d") && text.contains("depthwise"),
        "{text}"
    );
}
