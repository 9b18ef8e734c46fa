//! Every case in `tests/fixtures/keras_layers/` (computed by tf-keras 2.21 with
//! `shared/tools/keras_layer_cases.py`), run through the public layer API and compared with
//! Keras' own output at max abs error <= 1e-5.

mod common;

use convnet::inference::{CompiledModel, InferenceOptions};
use convnet::kernels::{Padding, Padding2d};
use convnet::layers::*;
use ndarray::{Ix1, Ix2, Ix4};
use serde_json::Value;

const TOLERANCE: f32 = 1e-5;

fn pair(v: &Value) -> [usize; 2] {
    let a = v.as_array().expect("a pair");
    [a[0].as_u64().unwrap() as usize, a[1].as_u64().unwrap() as usize]
}

fn padding(v: &Value) -> Padding {
    match v.as_str() {
        Some("valid") => Padding::Valid,
        Some("same") => Padding::Same,
        other => panic!("padding {other:?}"),
    }
}

fn activation(v: &Value) -> Option<Activation> {
    match v.as_str() {
        Some("linear") | None => None,
        Some("relu") => Some(Activation::Relu),
        Some("softmax") => Some(Activation::Softmax),
        other => panic!("activation {other:?}"),
    }
}

/// Builds the layer a case describes, with its Keras weights.
fn build(class: &str, cfg: &Value, input_shape: &[usize], z: &mut ndarray_npy::NpzReader<std::fs::File>) -> Box<dyn Layer> {
    let w = |z: &mut _, n: &str| common::npz_array(z, n);
    match class {
        "Conv2D" => {
            let kernel = w(z, "kernel").unwrap().into_dimensionality::<Ix4>().unwrap();
            let bias = w(z, "bias").map(|b| b.into_dimensionality::<Ix1>().unwrap());
            let config = Conv2dConfig::new(input_shape[3], cfg["filters"].as_u64().unwrap() as usize, pair(&cfg["kernel_size"]))
                .with_strides(pair(&cfg["strides"]))
                .with_dilation(pair(&cfg["dilation_rate"]))
                .with_padding(padding(&cfg["padding"]))
                .with_bias(cfg["use_bias"].as_bool().unwrap());
            Box::new(Conv2d::with_weights(config, kernel, bias).unwrap())
        }
        "BatchNormalization" => {
            let get = |z: &mut _, n| w(z, n).unwrap().into_dimensionality::<Ix1>().unwrap();
            let (g, b, m, v) = (get(z, "gamma"), get(z, "beta"), get(z, "moving_mean"), get(z, "moving_variance"));
            Box::new(BatchNorm::with_weights(cfg["epsilon"].as_f64().unwrap() as f32, g, b, m, v).unwrap())
        }
        "MaxPooling2D" | "AveragePooling2D" => {
            let c = Pool2dConfig::new(pair(&cfg["pool_size"]))
                .with_strides(pair(&cfg["strides"]))
                .with_padding(padding(&cfg["padding"]));
            if class == "MaxPooling2D" {
                Box::new(MaxPool2d::new(c).unwrap())
            } else {
                Box::new(AvgPool2d::new(c).unwrap())
            }
        }
        "GlobalAveragePooling2D" => Box::new(GlobalAvgPool),
        "Dense" => {
            let kernel = w(z, "kernel").unwrap().into_dimensionality::<Ix2>().unwrap();
            let bias = w(z, "bias").map(|b| b.into_dimensionality::<Ix1>().unwrap());
            Box::new(Dense::with_weights(kernel, bias, activation(&cfg["activation"])).unwrap())
        }
        "Activation" => match activation(&cfg["activation"]) {
            Some(Activation::Relu) => Box::new(Relu),
            Some(Activation::Softmax) => Box::new(Softmax),
            Some(a) => Box::new(ActivationLayer(a)),
            None => panic!("linear activation case"),
        },
        "ZeroPadding2D" => {
            let p = &cfg["padding"];
            let ([t, b], [l, r]) = (pair(&p[0]), pair(&p[1]));
            Box::new(ZeroPadding2d::new(Padding2d::new(t, b, l, r)))
        }
        "Flatten" => Box::new(Flatten),
        other => panic!("no builder for {other}"),
    }
}

#[test]
fn all_23_keras_layer_cases_match_keras() {
    let cases: Value = serde_json::from_reader(std::fs::File::open(common::fixture("keras_layers/cases.json")).unwrap()).unwrap();
    let cases = cases.as_object().unwrap();
    assert_eq!(cases.len(), 23);
    let mut report = Vec::new();
    for (name, case) in cases {
        let mut z = common::npz(&format!("keras_layers/{name}.npz"));
        let x = common::npz_array(&mut z, "x").unwrap();
        let want = common::npz_array(&mut z, "y").unwrap();
        let input_shape: Vec<usize> = case["input_shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let output_shape: Vec<usize> = case["output_shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(x.shape(), &input_shape[..], "{name}: input shape");
        let layer = build(case["class"].as_str().unwrap(), &case["config"], &input_shape, &mut z);
        assert_eq!(layer.output_shape(&input_shape).unwrap(), output_shape, "{name}: output_shape()");
        let got = layer.forward(&x).unwrap();
        let err = common::max_abs_diff(&got, &want);
        // The same layer through the fast executor (both thread counts), same tolerance.
        let mut fast_err = 0.0f32;
        for threads in [1, 2] {
            let options = InferenceOptions {
                threads,
                ..InferenceOptions::default()
            };
            let mut fast = CompiledModel::new(layer.as_ref(), &input_shape[1..], &options).unwrap();
            fast_err = fast_err.max(common::max_abs_diff(&fast.run(&x).unwrap(), &want));
        }
        report.push(format!("{name}: max abs err {err:e} (compiled {fast_err:e})"));
        assert!(err <= TOLERANCE, "{name}: max abs error {err} > {TOLERANCE}");
        assert!(fast_err <= TOLERANCE, "{name}: compiled max abs error {fast_err} > {TOLERANCE}");
    }
    println!("{}", report.join("\n"));
}
