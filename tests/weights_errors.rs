//! Bad weights give typed errors, and a strict failure leaves the model untouched.

mod common;

use convnet::layers::Layer;
use convnet::models::{Depth, ResNet, ResNetConfig};
use convnet::weights::{Convention, LoadOptions, StoredTensor, WeightFile};
use convnet::Error;

fn keras_w8() -> ResNet {
    ResNet::new(ResNetConfig::keras_resnet50().with_width_divisor(8)).unwrap()
}

fn first_kernel(m: &ResNet) -> Vec<f32> {
    let mut out = None;
    m.visit_params(&mut Default::default(), &mut |_, _, v| {
        if out.is_none() {
            out = Some(v.iter().copied().collect::<Vec<_>>());
        }
    });
    out.unwrap()
}

#[test]
fn a_file_for_another_architecture_is_refused_and_changes_nothing() {
    // torchvision ResNet18 weights into the Keras ResNet50: nothing matches by name.
    let mut m = keras_w8();
    let before = first_kernel(&m);
    let w = WeightFile::open(common::fixture("torch_resnet18_w8/resnet18.safetensors")).unwrap();
    let e = w.load_into(&mut m, &LoadOptions::strict()).unwrap_err();
    assert!(matches!(e, Error::MissingWeights { .. }), "{e}");
    // The file's names follow PyTorch's convention: `bn_conv1.weight` is looked for, not found.
    assert!(e.to_string().contains("bn_conv1 (gamma) <- bn_conv1.weight"), "{e}");
    assert_eq!(first_kernel(&m), before, "a failed strict load must not modify the model");

    // ResNet18 weights into a torchvision ResNet50: names overlap, shapes do not.
    let mut r50 = ResNet::new(ResNetConfig::torchvision(Depth::R50).with_width_divisor(8)).unwrap();
    let e = w.load_into(&mut r50, &LoadOptions::strict()).unwrap_err();
    let Error::WeightShape {
        layer,
        expected,
        found,
        key,
        ..
    } = &e
    else {
        panic!("{e}")
    };
    assert_eq!(layer, "layer1/0/conv1");
    assert_eq!(key, "layer1.0.conv1.weight");
    assert_eq!((expected.as_slice(), found.as_slice()), (&[1, 1, 8, 8][..], &[3, 3, 8, 8][..]));
    assert!(
        e.to_string().contains("(1, 1, 8, 8)") && e.to_string().contains("(3, 3, 8, 8)"),
        "{e}"
    );
}

fn keras_tensors() -> Vec<(String, StoredTensor)> {
    let w = WeightFile::open(common::fixture("keras_resnet50_w8/resnet50.h5")).unwrap();
    w.keys().map(|k| (k.to_string(), w.get(k).unwrap().clone())).collect()
}

#[test]
fn a_missing_tensor_is_named() {
    let t: Vec<_> = keras_tensors()
        .into_iter()
        .filter(|(k, _)| k != "bn3b_branch2b/moving_variance")
        .collect();
    let w = WeightFile::from_tensors("edited", Convention::Keras, t).unwrap();
    let e = w.load_into(&mut keras_w8(), &LoadOptions::strict()).unwrap_err();
    let Error::MissingWeights { missing, .. } = &e else { panic!("{e}") };
    assert_eq!(missing, &["res3b/bn3b_branch2b (moving_variance) <- bn3b_branch2b/moving_variance"]);
    // Lenient: everything else is applied and the gap reported.
    let report = w.load_into(&mut keras_w8(), &LoadOptions::lenient()).unwrap();
    assert_eq!((report.applied.len(), report.missing.len()), (319, 1));
}

#[test]
fn a_mis_shaped_tensor_is_refused_with_both_shapes() {
    let t: Vec<_> = keras_tensors()
        .into_iter()
        .map(|(k, t)| {
            if k == "fc1000/kernel" {
                (k, StoredTensor::new(vec![1000, 256], t.data).unwrap())
            } else {
                (k, t)
            }
        })
        .collect();
    let w = WeightFile::from_tensors("edited", Convention::Keras, t).unwrap();
    let e = w.load_into(&mut keras_w8(), &LoadOptions::strict()).unwrap_err();
    assert!(matches!(&e, Error::WeightShape { layer, .. } if layer == "fc1000"), "{e}");
    assert!(e.to_string().contains("expected shape (256, 1000), found (1000, 256)"), "{e}");
}

#[test]
fn unused_tensors_are_an_error_in_strict_mode() {
    let mut t = keras_tensors();
    t.push(("extra_layer/kernel".into(), StoredTensor::new(vec![2], vec![0.0, 1.0]).unwrap()));
    let w = WeightFile::from_tensors("edited", Convention::Keras, t).unwrap();
    let e = w.load_into(&mut keras_w8(), &LoadOptions::strict()).unwrap_err();
    assert!(
        matches!(&e, Error::UnusedWeights { unused, .. } if unused == &["extra_layer/kernel"]),
        "{e}"
    );
}

#[test]
fn non_finite_weights_are_refused_by_default() {
    let t: Vec<_> = keras_tensors()
        .into_iter()
        .map(|(k, mut t)| {
            if k == "bn_conv1/gamma" {
                t.data[3] = f32::NAN;
            }
            (k, t)
        })
        .collect();
    let w = WeightFile::from_tensors("edited", Convention::Keras, t).unwrap();
    let e = w.load_into(&mut keras_w8(), &LoadOptions::strict()).unwrap_err();
    assert!(
        matches!(&e, Error::NonFinite { key, count: 1, .. } if key == "bn_conv1/gamma"),
        "{e}"
    );
    let opts = LoadOptions {
        allow_non_finite: true,
        ..LoadOptions::strict()
    };
    assert!(w.load_into(&mut keras_w8(), &opts).is_ok());
}

#[test]
fn truncated_files_are_format_errors_not_panics() {
    for file in [
        "keras_resnet50_w8/resnet50.h5",
        "keras_resnet50_w8/resnet50_keras1.h5",
        "torch_resnet18_w8/resnet18.safetensors",
        "torch_resnet18_w8/resnet18.pth",
    ] {
        let bytes = std::fs::read(common::fixture(file)).unwrap();
        let len = bytes.len();
        for n in [0, 4, 100, 4096, len / 3, len / 2, len * 9 / 10, len - 1000] {
            let r = std::panic::catch_unwind(|| WeightFile::from_bytes(bytes[..n].to_vec(), file));
            let r = r.unwrap_or_else(|_| panic!("{file} cut at {n} panicked"));
            match r {
                Err(Error::Format { .. }) => {}
                Err(e) => panic!("{file} cut at {n}: {e}"),
                Ok(_) => panic!("{file} cut at {n} of {len} bytes loaded"),
            }
        }
    }
}

#[test]
fn a_missing_file_is_an_io_error() {
    let e = WeightFile::open("/nonexistent/weights.h5").unwrap_err();
    assert!(matches!(e, Error::Io { .. }));
    assert!(e.to_string().contains("/nonexistent/weights.h5"));
}

#[test]
fn full_width_seed_model_gives_probabilities() {
    let mut m = ResNet::new(ResNetConfig::keras_resnet50()).unwrap();
    assert_eq!(m.param_count().total(), 25_636_712);
    // No pretrained file here: He-scaled deterministic pseudo-random weights instead.
    common::randomize(&mut m, 1);
    let x = ndarray::Array4::<f32>::from_shape_fn((2, 224, 224, 3), |(n, y, x, c)| ((n * 7 + y * 3 + x * 5 + c) % 255) as f32 - 120.0)
        .into_dyn();
    let p = m.forward(&x).unwrap();
    assert_eq!(p.shape(), &[2, 1000]);
    for row in p.outer_iter() {
        assert!((row.sum() - 1.0).abs() < 1e-4);
        assert!(row.iter().all(|v| v.is_finite() && *v >= 0.0));
    }
}
