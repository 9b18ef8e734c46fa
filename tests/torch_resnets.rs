//! torchvision-style ResNets at 1/8 width (`tests/fixtures/torch_resnet{18,50}_w8`, made by
//! `shared/tools/torch_reference.py --width-divisor 8 --seed 0`), loaded from `.safetensors`
//! and `.pth`, against PyTorch's logits.

mod common;

use convnet::layers::Tensor;
use convnet::models::{Depth, ResNet, ResNetConfig};
use convnet::weights::{LoadOptions, WeightFile};
use ndarray::{concatenate, Axis};

/// The four Keras-preprocessed images, as one NHWC batch (the torch fixtures' input, before
/// their transpose to NCHW).
fn batch() -> Tensor {
    let images =
        ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"].map(|i| common::npy(&format!("keras_resnet50_w8/input_{i}.npy")));
    concatenate(Axis(0), &images.iter().map(|a| a.view()).collect::<Vec<_>>()).unwrap()
}

/// ResNet18/8 matches PyTorch at 1e-4 absolute. ResNet50/8 is ill-conditioned in f32: a
/// relative perturbation of 1e-7 (one ulp) of the input moves its logits by 2.5e-3, and an
/// f64 evaluation of the same network (reference kernels in f64) lies 0.3e-3-1.8e-3 from
/// PyTorch's f32 logits and 0.2e-3-1.9e-3 from ours. So no f32 implementation summing in another
/// order than oneDNN can match it at 1e-4 absolute; it is held to 1e-4 *relative* to the
/// logits' largest magnitude (about 17), i.e. 1.7e-3, and to the exact top-5 order.
const R50_RELATIVE: f32 = 1e-4;

fn check(depth: Depth, dir: &str, file: &str) {
    let mut model = ResNet::new(ResNetConfig::torchvision(depth).with_width_divisor(8)).unwrap();
    let expected: serde_json::Value =
        serde_json::from_reader(std::fs::File::open(common::fixture(&format!("{dir}/expected.json"))).unwrap()).unwrap();
    assert_eq!(model.param_count().trainable as u64, expected["params"].as_u64().unwrap());
    let weights = WeightFile::open(common::fixture(&format!("{dir}/{file}"))).unwrap();
    let report = weights.load_into(&mut model, &LoadOptions::strict()).unwrap();
    assert!(report.is_complete(), "{report}");
    let logits = model.forward(&batch()).unwrap();
    let want = common::npy(&format!("{dir}/logits.npy"));
    let err = common::max_abs_diff(&logits, &want);
    let rel = common::max_rel_diff(&logits, &want);
    println!("{file}: max abs error {err:e}, relative {rel:e}");
    match depth {
        Depth::R50 => assert!(rel <= R50_RELATIVE, "{file}: max relative error {rel} (abs {err})"),
        _ => assert!(err <= 1e-4, "{file}: max abs error {err}"),
    }
    for (row, top) in logits.outer_iter().zip(expected["top5"].as_array().unwrap()) {
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        let want: Vec<usize> = top.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(&order[..5], &want[..], "{file}");
    }
}

#[test]
fn resnet18_from_safetensors() {
    check(Depth::R18, "torch_resnet18_w8", "resnet18.safetensors");
}

#[test]
fn resnet18_from_pth() {
    check(Depth::R18, "torch_resnet18_w8", "resnet18.pth");
}

#[test]
fn resnet50_from_safetensors() {
    check(Depth::R50, "torch_resnet50_w8", "resnet50.safetensors");
}

#[test]
fn pth_and_safetensors_hold_the_same_tensors() {
    let a = WeightFile::open(common::fixture("torch_resnet18_w8/resnet18.pth")).unwrap();
    let b = WeightFile::open(common::fixture("torch_resnet18_w8/resnet18.safetensors")).unwrap();
    assert_eq!(a.len(), b.len());
    for k in a.keys() {
        assert_eq!(a.get(k), b.get(k), "{k}");
    }
}
