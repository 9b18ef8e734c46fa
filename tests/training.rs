//! Training against PyTorch, step for step (`tests/fixtures/torch_training`, made by
//! `shared/tools/torch_training_reference.py`): a torchvision-style ResNet18 at 1/8 width with a
//! 10-class head, one training-mode forward and backward of a batch of 8.

mod common;

use convnet::layers::{Layer, LayerPath, ParamKind};
use convnet::models::{Depth, ResNet, ResNetConfig};
use convnet::train::{compute_gradients, TrainingMode};
use convnet::weights::{Convention, LoadOptions, WeightFile};
use ndarray::{s, ArrayD, IxDyn};
use ndarray_npy::ReadNpyExt;

fn model() -> ResNet {
    let cfg = ResNetConfig::torchvision(Depth::R18)
        .with_width_divisor(8)
        .with_classes(10)
        .with_input_shape([64, 64, 3]);
    let mut m = ResNet::new(cfg).unwrap();
    WeightFile::open(common::fixture("torch_training/initial.safetensors"))
        .unwrap()
        .load_into(&mut m, &LoadOptions::strict())
        .unwrap();
    m
}

fn labels() -> Vec<usize> {
    let f = std::fs::File::open(common::fixture("torch_training/labels.npy")).unwrap();
    ndarray::Array1::<i64>::read_npy(f).unwrap().iter().map(|&l| l as usize).collect()
}

fn batch(i: usize) -> ArrayD<f32> {
    common::npy("torch_training/x_nhwc.npy")
        .slice(s![8 * i..8 * (i + 1), .., .., ..])
        .to_owned()
        .into_dyn()
}

/// A stored tensor in the model's layout (PyTorch kernels `(out, in, kh, kw)` to HWIO, `Linear`
/// weights to `(in, out)`).
fn stored(file: &WeightFile, key: &str, kind: ParamKind) -> ArrayD<f32> {
    let t = file.get(key).unwrap_or_else(|| panic!("{key} missing"));
    let a = ArrayD::from_shape_vec(IxDyn(&t.shape), t.data.clone()).unwrap();
    match (kind, a.ndim()) {
        (ParamKind::Kernel, 4) => a.permuted_axes(IxDyn(&[2, 3, 1, 0])).as_standard_layout().into_owned(),
        (ParamKind::Kernel, 2) => a.reversed_axes().as_standard_layout().into_owned(),
        _ => a,
    }
}

#[test]
fn gradients_and_running_statistics_match_pytorch() {
    let mut m = model();
    let want = WeightFile::open(common::fixture("torch_training/grads.safetensors")).unwrap();
    let step = compute_gradients(&m, &batch(0), &labels()[..8], 0.0, &TrainingMode::default()).unwrap();
    let loss = want.get("loss").unwrap().data[0];
    println!("loss {} vs {loss}", step.loss);
    assert!((step.loss - loss).abs() <= 1e-5, "loss {} vs {loss}", step.loss);
    let logits = stored(&want, "logits", ParamKind::Bias);
    assert!(common::max_abs_diff(&step.output, &logits) <= 5e-5);
    // Every parameter's gradient (PyTorch's own float32-vs-float64 spread: 8.8e-6).
    let mut count = 0;
    let mut worst = 0.0f32;
    m.visit_params(&mut LayerPath::default(), &mut |path, kind, _| {
        if !kind.is_trainable() {
            return;
        }
        let key = format!("grad.{}", Convention::Torch.key(path, kind));
        let got = step
            .gradients
            .params
            .get(&(path.clone(), kind))
            .unwrap_or_else(|| panic!("no gradient for {key}"));
        let err = common::max_abs_diff(got, &stored(&want, &key, kind));
        worst = worst.max(err);
        assert!(err <= 5e-5, "{key}: {err}");
        count += 1;
    });
    assert_eq!(count, step.gradients.params.len());
    assert_eq!(count, 62, "ResNet18's 20 convolutions, 20 BatchNorms (2 each) and fc (2)");
    let input = stored(&want, "input_grad", ParamKind::Bias);
    let input_err = common::max_abs_diff(&step.gradients.input, &input);
    println!("{count} parameter gradients within {worst:e}, input gradient {input_err:e}");
    assert!(input_err <= 5e-5, "input gradient {input_err}");

    // The running statistics after that forward (momentum 0.1, unbiased variance).
    step.apply_running_stats(&mut m).unwrap();
    let after = WeightFile::open(common::fixture("torch_training/after_forward.safetensors")).unwrap();
    let mut stats = 0;
    let mut worst = 0.0f32;
    m.visit_params(&mut LayerPath::default(), &mut |path, kind, v| {
        if kind.is_trainable() {
            return;
        }
        let key = Convention::Torch.key(path, kind);
        let err = common::max_abs_diff(&v.to_owned(), &stored(&after, &key, kind));
        worst = worst.max(err);
        assert!(err <= 1e-6, "{key}: {err}");
        stats += 1;
    });
    println!("{stats} running statistics within {worst:e}");
    assert_eq!(stats, 40);
}

#[test]
fn label_smoothing_matches_pytorch() {
    let m = model();
    let want = WeightFile::open(common::fixture("torch_training/smooth.safetensors")).unwrap();
    let step = compute_gradients(&m, &batch(0), &labels()[..8], 0.1, &TrainingMode::default()).unwrap();
    let loss = want.get("loss").unwrap().data[0];
    assert!((step.loss - loss).abs() <= 1e-6, "smoothed loss {} vs {loss}", step.loss);
    for (key, kind) in [("grad.fc.weight", ParamKind::Kernel), ("grad.fc.bias", ParamKind::Bias)] {
        let got = &step.gradients.params[&(LayerPath::new(["fc"]), kind)];
        let err = common::max_abs_diff(got, &stored(&want, key, kind));
        assert!(err <= 5e-5, "{key}: {err}");
    }
}

/// Typed errors, not panics: labels out of range or of the wrong count, non-finite input.
#[test]
fn bad_training_input_is_a_typed_error() {
    let m = model();
    let x = batch(0);
    let mode = TrainingMode::default();
    assert!(matches!(
        compute_gradients(&m, &x, &[0; 7], 0.0, &mode),
        Err(convnet::Error::Shape { .. })
    ));
    let e = compute_gradients(&m, &x, &[0, 1, 2, 3, 4, 5, 6, 10], 0.0, &mode).unwrap_err();
    assert!(e.to_string().contains("label 10 of image 7"), "{e}");
    let mut bad = x.clone();
    bad[[3, 1, 1, 1]] = f32::INFINITY;
    assert!(matches!(
        compute_gradients(&m, &bad, &[0; 8], 0.0, &mode),
        Err(convnet::Error::NonFinite { .. })
    ));
    assert!(compute_gradients(
        &m,
        &x,
        &[0; 8],
        0.0,
        &TrainingMode {
            batch_norm_momentum: 1.5,
            ..mode
        }
    )
    .is_err());
}

/// A frozen backbone: no gradients for its parameters, its BatchNorms in inference mode (their
/// statistics untouched), gradients still reaching the input through it.
#[test]
fn frozen_layers_get_no_gradients_and_keep_their_statistics() {
    let m = model();
    let mode = TrainingMode {
        frozen: vec!["conv1".into(), "bn1".into(), "layer1".into(), "layer2.0".into()],
        ..TrainingMode::default()
    };
    let step = compute_gradients(&m, &batch(1), &labels()[8..16], 0.0, &mode).unwrap();
    assert!(step.gradients.params.keys().all(|(p, _)| {
        let p = p.to_string();
        !(p == "conv1" || p == "bn1" || p.starts_with("layer1/") || p.starts_with("layer2/0/"))
    }));
    assert!(step
        .gradients
        .params
        .contains_key(&(LayerPath::new(["layer2", "1", "conv1"]), ParamKind::Kernel)));
    assert!(step
        .running_stats
        .iter()
        .all(|s| !s.path.to_string().starts_with("layer1/") && s.path.to_string() != "bn1"));
    assert!(step.gradients.input.iter().any(|&v| v != 0.0));
}
