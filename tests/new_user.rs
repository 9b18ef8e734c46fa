//! The rough edges a new user hit, each with its fixed behaviour: views accepted, the
//! NCHW/NHWC helpers, probabilities vs logits, both input forms of both pipelines, the width
//! hint on a mis-sized file, `threads: 0`, and shape messages.

mod common;

use convnet::imagenet::image::{
    keras_resnet_input, keras_resnet_input_from_image, load_rgb, torchvision_input, torchvision_input_from_file,
};
use convnet::imagenet::{decode_logits, decode_predictions};
use convnet::inference::{CompiledModel, InferenceOptions};
use convnet::init::{initialize, InitScheme};
use convnet::layers::Layer;
use convnet::models::{Depth, ResNet, ResNetConfig};
use convnet::weights::{LoadOptions, WeightFile};
use convnet::Error;
use ndarray::{s, Array4, ArrayD, IxDyn};

fn small_model() -> ResNet {
    let mut m = ResNet::new(ResNetConfig::torchvision(Depth::R18).with_width_divisor(16)).unwrap();
    initialize(&mut m, &InitScheme::torchvision_resnet(), 3).unwrap();
    m
}

fn batch(n: usize, size: usize) -> ArrayD<f32> {
    ArrayD::from_shape_fn(IxDyn(&[n, size, size, 3]), |i| {
        ((i[0] * 7 + i[1] * 3 + i[2] + i[3]) % 17) as f32 / 17.0 - 0.5
    })
}

#[test]
fn forward_and_run_take_views_as_well_as_owned_arrays() {
    let m = small_model();
    let x = batch(3, 64);
    let owned = m.forward(&x).unwrap();
    let view = x.slice(s![1..3, .., .., ..]).into_dyn();
    let from_view = m.forward(&view).unwrap();
    assert_eq!(from_view.shape(), &[2, 1000]);
    let diff = common::max_abs_diff(&from_view, &owned.slice(s![1..3, ..]).to_owned().into_dyn());
    assert!(diff < 1e-5, "{diff}");
    let mut fast = CompiledModel::new(&m, &[64, 64, 3], &InferenceOptions::default()).unwrap();
    let fast_view = fast.run(&view).unwrap();
    assert!(common::max_abs_diff(&fast_view, &from_view) < 1e-4);
    // The trait method itself, on a dyn Layer.
    let dynamic: &dyn Layer = &m;
    assert_eq!(dynamic.forward(&view).unwrap(), from_view);
}

#[test]
fn nchw_and_nhwc_helpers_take_any_4d_array_and_return_the_crate_tensor() {
    let nchw = Array4::from_shape_fn((2, 3, 4, 5), |(n, c, h, w)| (n * 1000 + c * 100 + h * 10 + w) as f32);
    let nhwc: convnet::layers::Tensor = convnet::nchw_to_nhwc(&nchw).unwrap();
    assert_eq!(nhwc.shape(), &[2, 4, 5, 3]);
    assert_eq!(nhwc[[1, 2, 3, 0]], nchw[[1, 0, 2, 3]]);
    let back = convnet::nhwc_to_nchw(&nhwc.view()).unwrap();
    assert_eq!(back, nchw.into_dyn());
    let e = convnet::nchw_to_nhwc(&ArrayD::<f32>::zeros(IxDyn(&[2, 3, 4]))).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }) && e.to_string().contains("(2, 3, 4)"), "{e}");
}

#[test]
fn decode_predictions_refuses_logits_and_decode_logits_applies_the_softmax() {
    let m = small_model();
    let logits = m.forward(&batch(2, 64)).unwrap();
    let e = decode_predictions(&logits, 5).unwrap_err();
    assert!(e.to_string().contains("decode_logits"), "{e}");
    let top = decode_logits(&logits, 5).unwrap();
    // The softmax of the row, computed here in f64.
    let row = logits.slice(s![0, ..]);
    let max = row.iter().copied().fold(f32::MIN, f32::max) as f64;
    let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
    let best = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap();
    assert_eq!(top[0][0].index, best.0);
    let p = ((*best.1 as f64 - max).exp() / sum) as f32;
    assert!((top[0][0].probability - p).abs() < 1e-6, "{} vs {p}", top[0][0].probability);
    // Probabilities pass.
    let probs = ArrayD::from_elem(IxDyn(&[1, 1000]), 1e-3f32);
    assert_eq!(decode_predictions(&probs, 3).unwrap()[0].len(), 3);
}

#[test]
fn both_pipelines_take_a_path_or_a_decoded_image() {
    let path = common::fixture("keras_resnet50_w8/images/rocket.jpg");
    let img = load_rgb(&path).unwrap();
    assert_eq!(keras_resnet_input(&path).unwrap(), keras_resnet_input_from_image(&img).unwrap());
    assert_eq!(torchvision_input_from_file(&path).unwrap(), torchvision_input(&img).unwrap());
    // And the Keras form is Keras' input exactly.
    assert_eq!(
        keras_resnet_input_from_image(&img).unwrap(),
        common::npy("keras_resnet50_w8/input_rocket.jpg.npy")
    );
}

#[test]
fn a_file_of_another_width_names_the_width_divisor() {
    let mut full = ResNet::new(ResNetConfig::torchvision(Depth::R18)).unwrap();
    let file = WeightFile::open(common::fixture("torch_resnet18_w8/resnet18.safetensors")).unwrap();
    let e = file.load_into(&mut full, &LoadOptions::strict()).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("8 times narrower in the file") && msg.contains("with_width_divisor"),
        "{msg}"
    );
    let mut narrower = ResNet::new(ResNetConfig::torchvision(Depth::R18).with_width_divisor(16)).unwrap();
    let msg = file.load_into(&mut narrower, &LoadOptions::strict()).unwrap_err().to_string();
    assert!(msg.contains("2 times wider in the file"), "{msg}");
}

#[test]
fn zero_threads_means_every_available_core() {
    let m = small_model();
    let options = InferenceOptions {
        threads: 0,
        ..Default::default()
    };
    let fast = CompiledModel::new(&m, &[64, 64, 3], &options).unwrap();
    assert_eq!(fast.threads(), std::thread::available_parallelism().unwrap().get());
}

#[test]
fn shape_messages_are_well_formed_on_both_paths() {
    let m = small_model();
    let wrong = ArrayD::<f32>::zeros(IxDyn(&[2, 32, 32, 1]));
    let slow = m.forward(&wrong).unwrap_err().to_string();
    let mut fast = CompiledModel::new(&m, &[64, 64, 3], &InferenceOptions::default()).unwrap();
    let quick = fast.run(&wrong).unwrap_err().to_string();
    for msg in [slow, quick] {
        assert!(!msg.contains("))") && !msg.contains("(("), "{msg}");
        assert_eq!(msg.matches('(').count(), msg.matches(')').count(), "{msg}");
        assert!(msg.contains("32, 32, 1)") && msg.contains("3 input channels"), "{msg}");
    }
}
