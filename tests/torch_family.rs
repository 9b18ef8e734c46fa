//! torchvision's ResNeXt, Wide ResNet and MobileNetV2 at reduced width (`tests/fixtures/torch_family`, made
//! by its `make_torch_family.py`: seeded random weights, BatchNorm statistics measured on four
//! photographs), loaded from the state_dict files, against PyTorch's logits, through both
//! executors. Logits are held to 3x PyTorch's own float32-vs-float64 spread (recorded beside
//! each fixture), probabilities to 1e-5.

mod common;

use convnet::layers::{Layer, Tensor};
use convnet::models::{Depth, MobileNetV2, MobileNetV2Config, ResNet, ResNetConfig};
use convnet::weights::{LoadOptions, WeightFile};
use ndarray::{concatenate, Axis};

fn batch() -> Tensor {
    let images =
        ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"].map(|i| common::npy(&format!("keras_resnet50_w8/input_{i}.npy")));
    concatenate(Axis(0), &images.iter().map(|a| a.view()).collect::<Vec<_>>()).unwrap()
}

fn softmax(logits: &Tensor) -> Tensor {
    let mut p = logits.clone();
    for mut row in p.outer_iter_mut() {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        row.mapv_inplace(|v| (v - max).exp());
        let sum = row.sum();
        row.mapv_inplace(|v| v / sum);
    }
    p
}

fn check(name: &str, build: impl Fn() -> Box<dyn Layer>, files: &[&str]) {
    let expected: serde_json::Value =
        serde_json::from_reader(std::fs::File::open(common::fixture(&format!("torch_family/{name}.json"))).unwrap()).unwrap();
    let spread = expected["float32_float64_logit_spread"].as_f64().unwrap() as f32;
    let tolerance = 3.0 * spread;
    let want = common::npy(&format!("torch_family/{name}_logits.npy"));
    let want_probs = softmax(&want);
    let x = batch();
    for file in files {
        let mut model = build();
        assert_eq!(model.param_count().trainable as u64, expected["params"].as_u64().unwrap(), "{name}");
        let weights = WeightFile::open(common::fixture(&format!("torch_family/{file}"))).unwrap();
        let report = weights.load_into(model.as_mut(), &LoadOptions::strict()).unwrap();
        assert!(report.is_complete(), "{report}");
        for (path, logits) in common::run_both_and_check_top5(model.as_ref(), &x, &expected["top5"], file) {
            let err = common::max_abs_diff(&logits, &want);
            let perr = common::max_abs_diff(&softmax(&logits), &want_probs);
            println!("{file} {path}: logits {err:e} (tolerance {tolerance:e}), probabilities {perr:e}");
            assert!(
                err <= tolerance,
                "{file} {path}: logits off by {err}, more than 3x PyTorch's f32/f64 spread {spread}"
            );
            assert!(perr <= 1e-5, "{file} {path}: probabilities off by {perr}");
        }
    }
}

#[test]
fn resnext50_32x4d_matches_pytorch() {
    // At 1/8 width with 4 groups of 32 channels per 64 planes: each group as wide as
    // resnext50_32x4d's (see the generator).
    let config = ResNetConfig::torchvision_resnext(Depth::R50, 4, 32).unwrap().with_width_divisor(8);
    let build = || Box::new(ResNet::new(config.clone()).unwrap()) as Box<dyn Layer>;
    check("resnext50_32x4d", build, &["resnext50_32x4d.safetensors"]);
}

#[test]
fn wide_resnet50_2_matches_pytorch() {
    let config = ResNetConfig::torchvision_wide(Depth::R50).unwrap().with_width_divisor(16);
    let build = || Box::new(ResNet::new(config.clone()).unwrap()) as Box<dyn Layer>;
    check("wide_resnet50_2", build, &["wide_resnet50_2.pth"]);
}

/// Depthwise convolutions (the compiled executor's direct loop), ReLU6, inverted residuals.
#[test]
fn mobilenet_v2_matches_pytorch() {
    let config = MobileNetV2Config::torchvision().with_width_mult(0.35).with_classes(100);
    let build = || Box::new(MobileNetV2::new(config.clone()).unwrap()) as Box<dyn Layer>;
    check("mobilenet_v2_035", build, &["mobilenet_v2_035.safetensors"]);
}
