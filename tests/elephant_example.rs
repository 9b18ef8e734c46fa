//! The seed program end to end (`examples/elephant.rs`), on the reduced reference network:
//! weights file in, summary and Keras' top-5 out.

mod common;

use std::path::PathBuf;
use std::process::Command;

fn example() -> PathBuf {
    common::example("elephant")
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(example())
        .args(args)
        .env("CONVNET_CACHE", std::env::temp_dir().join("convnet-example-test-cache"))
        .output()
        .unwrap()
}

/// The example on a fixture image with the reduced network's weights, plus `extra` options.
fn run_fixture(image: &str, weights: &str, extra: &[&str]) -> std::process::Output {
    let (image, weights) = (
        common::fixture(&format!("keras_resnet50_w8/images/{image}")),
        common::fixture(&format!("keras_resnet50_w8/{weights}")),
    );
    let mut args = vec![
        image.to_str().unwrap(),
        "--weights",
        weights.to_str().unwrap(),
        "--width-divisor",
        "8",
    ];
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn prints_summary_input_shape_and_keras_top5() {
    let out = run_fixture("coffee.png", "resnet50_keras1.h5", &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("Model: \"resnet50\"") && stdout.contains("Total params: 641,112"),
        "{stdout}"
    );
    assert!(stdout.contains("Input image shape: (1, 224, 224, 3)"), "{stdout}");
    let line = stdout.lines().find(|l| l.starts_with("Predicted: ")).unwrap();
    assert!(line.starts_with("Predicted: [('n09246464', 'cliff', 0.46229"), "{line}");
    assert_eq!(line.matches("('n").count(), 5);
}

#[test]
fn json_output_is_one_object_with_the_expected_predictions() {
    let out = run_fixture("astronaut.png", "resnet50.h5", &["--json", "--top", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let expected: serde_json::Value =
        serde_json::from_reader(std::fs::File::open(common::fixture("keras_resnet50_w8/expected.json")).unwrap()).unwrap();
    let preds = v["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 2);
    for (p, e) in preds.iter().zip(expected["images"]["astronaut.png"].as_array().unwrap()) {
        assert_eq!(p["wnid"], e[0]);
        assert_eq!(p["label"], e[1]);
        assert!((p["probability"].as_f64().unwrap() - e[2].as_f64().unwrap()).abs() < 1e-5);
    }
    assert!(v["image"].as_str().unwrap().ends_with("astronaut.png"));
}

#[test]
fn bad_input_fails_cleanly_with_a_message() {
    let weights = common::fixture("keras_resnet50_w8/resnet50.h5");
    // full-width model, reduced weights: a typed shape error, not a panic
    let out = run(&["x.png", "--weights", weights.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expected shape (7, 7, 3, 64), found (7, 7, 3, 8)"), "{err}");
    assert!(
        err.contains("8 times narrower in the file") && err.contains("with_width_divisor"),
        "{err}"
    );
    // unreadable image
    let out = run(&["/nonexistent.png", "--weights", weights.to_str().unwrap(), "--width-divisor", "8"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.png"));
    // usage error
    let out = run(&["--top", "zero"]);
    assert_eq!(out.status.code(), Some(2));
}

/// A file name that is not UTF-8 is a path like any other: read (here: it does not exist, so
/// a clear error and exit status 1), never a panic.
#[cfg(unix)]
#[test]
fn a_non_utf8_image_path_is_an_error_not_a_panic() {
    use std::os::unix::ffi::OsStrExt;
    let weights = common::fixture("keras_resnet50_w8/resnet50_keras1.h5");
    let out = Command::new(example())
        .arg(std::ffi::OsStr::from_bytes(b"/nonexistent/\xff\xfe.png"))
        .arg("--weights")
        .arg(&weights)
        .args(["--width-divisor", "8", "--no-summary", "--json"])
        .env("CONVNET_CACHE", std::env::temp_dir().join("convnet-example-test-cache"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.stdout.is_empty(), "no (invalid) JSON on stdout");
}

/// `--model resnet50` is torchvision's ResNet50: its state_dict file, torchvision's
/// preprocessing (resize 256, crop 224, mean/std) and logits decoded with a softmax. The
/// example's top 5 is the library's, step by step.
#[test]
fn a_torchvision_preset_by_name_preprocesses_and_decodes_as_torchvision() {
    use convnet::imagenet::{decode_logits, image::Preprocessing};
    use convnet::models::zoo;
    use convnet::weights::{LoadOptions, WeightFile};
    let weights = common::fixture("torch_resnet50_w8/resnet50.safetensors");
    let image = common::fixture("keras_resnet50_w8/images/chelsea.png");
    let out = run(&[
        image.to_str().unwrap(),
        "--model",
        "resnet50",
        "--weights",
        weights.to_str().unwrap(),
        "--width-divisor",
        "8",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["model"], "torchvision/resnet50");

    let preset = zoo::find("resnet50").unwrap();
    assert_eq!(preset.preprocessing, Preprocessing::Torchvision);
    let mut model = preset.build_with_width_divisor(8).unwrap();
    WeightFile::open(&weights)
        .unwrap()
        .load_into(model.as_mut(), &LoadOptions::strict())
        .unwrap();
    let x = Preprocessing::Torchvision.input_from_file(&image).unwrap();
    let want = decode_logits(&model.forward(&x).unwrap(), 5).unwrap().remove(0);
    let got = v["predictions"].as_array().unwrap();
    assert_eq!(got.len(), 5);
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g["wnid"], w.wnid.as_str());
        assert!(
            (g["probability"].as_f64().unwrap() - w.probability as f64).abs() < 1e-6,
            "{g} vs {w:?}"
        );
    }
}

/// A Keras V2 file of another class count under `--model ResNet50V2`: a typed shape error
/// naming the classifier, and an unknown model name lists the presets.
#[test]
fn a_preset_with_the_wrong_file_or_an_unknown_name_fails_with_a_message() {
    let weights = common::fixture("keras_family/resnet50v2_w8.h5");
    let image = common::fixture("keras_resnet50_w8/images/coffee.png");
    let out = run(&[
        image.to_str().unwrap(),
        "--model",
        "ResNet50V2",
        "--weights",
        weights.to_str().unwrap(),
        "--width-divisor",
        "8",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("predictions") && err.contains("(256, 1000)") && err.contains("(256, 100)"),
        "{err}"
    );
    let out = run(&["--model", "vgg16"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("vgg16") && err.contains("keras/MobileNetV2"), "{err}");
}
