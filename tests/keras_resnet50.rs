//! The seed's ResNet50 at 1/8 width (`tests/fixtures/keras_resnet50_w8`, made by
//! `shared/tools/keras_reference.py --width-divisor 8 --seed 0`) against Keras' own outputs,
//! loaded from both HDF5 layouts.

mod common;

use convnet::layers::Tensor;
use convnet::models::{ResNet, ResNetConfig};
use convnet::weights::{LoadOptions, WeightFile};
use ndarray::{concatenate, Axis};

const IMAGES: [&str; 4] = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"];

fn model(file: &str) -> ResNet {
    let mut m = ResNet::new(ResNetConfig::keras_resnet50().with_width_divisor(8)).unwrap();
    let w = WeightFile::open(common::fixture(&format!("keras_resnet50_w8/{file}"))).unwrap();
    let report = w.load_into(&mut m, &LoadOptions::strict()).unwrap();
    assert_eq!(report.applied.len(), 320, "{report}");
    m
}

fn input(image: &str) -> Tensor {
    common::npy(&format!("keras_resnet50_w8/input_{image}.npy"))
}

fn check_probs(m: &ResNet, layout: &str) {
    for image in IMAGES {
        let got = m.forward(&input(image)).unwrap();
        let want = common::npy(&format!("keras_resnet50_w8/probs_{image}.npy"));
        let err = common::max_abs_diff(&got, &want);
        println!("{layout} {image}: max abs error {err:e}");
        assert!(err <= 1e-5, "{layout} {image}: max abs error {err}");
        let sum: f32 = got.sum();
        assert!((sum - 1.0).abs() < 1e-4, "{image}: probabilities sum to {sum}");
    }
    let batch = concatenate(Axis(0), &IMAGES.map(input).iter().map(|a| a.view()).collect::<Vec<_>>()).unwrap();
    let got = m.forward(&batch).unwrap();
    let err = common::max_abs_diff(&got, &common::npy("keras_resnet50_w8/batch_probs.npy"));
    println!("{layout} batch of 4: max abs error {err:e}");
    assert!(err <= 1e-5, "{layout} batch of 4: max abs error {err}");
}

#[test]
fn keras2_layout_reproduces_keras_probabilities() {
    check_probs(&model("resnet50.h5"), "keras 2");
}

#[test]
fn keras1_layout_reproduces_keras_probabilities() {
    check_probs(&model("resnet50_keras1.h5"), "keras 1");
}

#[test]
fn both_layouts_hold_identical_weights() {
    let a = WeightFile::open(common::fixture("keras_resnet50_w8/resnet50.h5")).unwrap();
    let b = WeightFile::open(common::fixture("keras_resnet50_w8/resnet50_keras1.h5")).unwrap();
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for k in a.keys() {
        assert_eq!(a.get(k), b.get(k), "{k}");
    }
}

#[test]
fn activation_taps_match_keras_layer_by_layer() {
    let m = model("resnet50.h5");
    let taps = ["conv1_relu", "pool1", "res2c", "res3d", "res4f", "res5c", "avg_pool"];
    let (_, got) = m.forward_with_taps(&input("chelsea.png"), &taps).unwrap();
    // The same taps from the fast executor (kept out of its fusions), on 1 and 2 threads.
    let mut fast = Vec::new();
    for threads in [1, 2] {
        let options = convnet::inference::InferenceOptions {
            threads,
            ..Default::default()
        };
        let mut compiled = convnet::inference::CompiledModel::for_model(&m, &options).unwrap();
        fast.extend(compiled.run_with_taps(&input("chelsea.png"), &taps).unwrap().1);
    }
    assert_eq!(got.len(), taps.len());
    assert_eq!(fast.len(), 2 * taps.len());
    for (name, t) in got.into_iter().chain(fast) {
        let want = common::npy(&format!("keras_resnet50_w8/act_chelsea.png__{name}.npy"));
        let rel = common::max_rel_diff(&t, &want);
        println!("tap {name}: max relative error {rel:e}");
        assert!(rel <= 1e-4, "{name}: max relative error {rel}");
    }
}

#[test]
fn top5_of_expected_json_with_names() {
    let m = model("resnet50_keras1.h5");
    let expected: serde_json::Value =
        serde_json::from_reader(std::fs::File::open(common::fixture("keras_resnet50_w8/expected.json")).unwrap()).unwrap();
    for image in IMAGES {
        let probs = m.forward(&input(image)).unwrap();
        let top = convnet::imagenet::decode_predictions(&probs, 5).unwrap();
        let want = expected["images"][image].as_array().unwrap();
        for (p, w) in top[0].iter().zip(want) {
            assert_eq!(p.wnid, w[0].as_str().unwrap(), "{image}");
            assert_eq!(p.label, w[1].as_str().unwrap(), "{image}");
            assert!((p.probability - w[2].as_f64().unwrap() as f32).abs() <= 1e-5, "{image}");
        }
    }
}

#[test]
fn forward_is_deterministic() {
    let m = model("resnet50.h5");
    let x = input("coffee.png");
    assert_eq!(m.forward(&x).unwrap(), m.forward(&x).unwrap());
}

/// From the JPEG file itself (decoded here, bit-identical to Pillow) to Keras' probabilities.
#[test]
fn rocket_jpg_decoded_here_gives_keras_probabilities() {
    let m = model("resnet50.h5");
    let x = convnet::imagenet::image::keras_resnet_input(common::fixture("keras_resnet50_w8/images/rocket.jpg")).unwrap();
    let got = m.forward(&x).unwrap();
    let err = common::max_abs_diff(&got, &common::npy("keras_resnet50_w8/probs_rocket.jpg.npy"));
    println!("rocket.jpg from the file: max abs error {err:e}");
    assert!(err <= 1e-5, "max abs error {err}");
}
