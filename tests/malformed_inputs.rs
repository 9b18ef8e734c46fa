//! A table of malformed and unusual inputs across every loader, the image path and the forward
//! pass. Each case names the error variant it must give (or `Ok` for inputs that are unusual
//! but valid, whose values are then checked), and runs under `catch_unwind`, asserting that no
//! panic was needed. The small files come from `tests/fixtures/malformed/make_malformed.py`.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};

use convnet::budget::LoadBudget;
use convnet::imagenet::image::{decode_rgb, load_rgb, ImageOptions, RgbImage};
use convnet::layers::{Dense, Layer, Tensor};
use convnet::models::{ResNet, ResNetConfig};
use convnet::weights::{Convention, LoadOptions, StoredTensor, WeightFile};
use convnet::Error;
use ndarray::{ArrayD, IxDyn};

fn variant(r: &convnet::Result<()>) -> &'static str {
    match r {
        Ok(()) => "Ok",
        Err(Error::Shape { .. }) => "Shape",
        Err(Error::Config { .. }) => "Config",
        Err(Error::Overflow { .. }) => "Overflow",
        Err(Error::Io { .. }) => "Io",
        Err(Error::Format { .. }) => "Format",
        Err(Error::UnsafePickle { .. }) => "UnsafePickle",
        Err(Error::Dtype { .. }) => "Dtype",
        Err(Error::NonFinite { .. }) => "NonFinite",
        Err(Error::WeightShape { .. }) => "WeightShape",
        Err(Error::MissingWeights { .. }) => "MissingWeights",
        Err(Error::UnusedWeights { .. }) => "UnusedWeights",
        Err(Error::Image { .. }) => "Image",
        Err(Error::Download { .. }) => "Download",
        Err(Error::Budget { .. }) => "Budget",
        Err(Error::NotARegularFile { .. }) => "NotARegularFile",
        Err(_) => "other",
    }
}

fn bytes(rel: &str) -> Vec<u8> {
    std::fs::read(common::fixture(rel)).unwrap()
}

fn open(rel: &str) -> convnet::Result<WeightFile> {
    WeightFile::open(common::fixture(rel))
}

/// A Dense 3 -> 2 (Keras names it `d`; PyTorch files call it `fc`).
fn dense() -> convnet::layers::Sequential {
    convnet::layers::Sequential::new()
        .with("d", Dense::new(3, 2, None).unwrap())
        .unwrap()
}

fn torch_dense() -> convnet::layers::Sequential {
    convnet::layers::Sequential::new()
        .with("fc", Dense::new(3, 2, None).unwrap())
        .unwrap()
}

fn load_keras(rel: &str) -> convnet::Result<()> {
    open(rel)?.load_into(&mut dense(), &LoadOptions::strict()).map(|_| ())
}

fn load_torch(rel: &str) -> convnet::Result<()> {
    open(rel)?.load_into(&mut torch_dense(), &LoadOptions::strict()).map(|_| ())
}

fn image(rel: &str) -> convnet::Result<RgbImage> {
    load_rgb(common::fixture(&format!("malformed/{rel}")))
}

fn pillow(rel: &str) -> Vec<u8> {
    use ndarray_npy::ReadNpyExt;
    ndarray::Array3::<u8>::read_npy(std::fs::File::open(common::fixture(&format!("malformed/{rel}.pillow.npy"))).unwrap())
        .unwrap()
        .into_raw_vec_and_offset()
        .0
}

fn truncated(rel: &str, fraction: f64) -> convnet::Result<()> {
    let b = bytes(rel);
    WeightFile::from_bytes(b[..(b.len() as f64 * fraction) as usize].to_vec(), rel).map(|_| ())
}

fn seed_model() -> ResNet {
    ResNet::new(ResNetConfig::keras_resnet50().with_width_divisor(8)).unwrap()
}

fn forward(shape: &[usize], fill: f32) -> convnet::Result<()> {
    seed_model().forward(&ArrayD::from_elem(IxDyn(shape), fill)).map(|_| ())
}

fn compiled(shape: &[usize], fill: f32) -> convnet::Result<()> {
    let model = seed_model();
    let mut fast = convnet::inference::CompiledModel::new(&model, &[224, 224, 3], &Default::default())?;
    fast.run(&ArrayD::from_elem(IxDyn(shape), fill)).map(|_| ())
}

type Case = (&'static str, &'static str, Box<dyn Fn() -> convnet::Result<()>>);

fn cases() -> Vec<Case> {
    let m = "malformed";
    let f = move |name: &str| format!("{m}/{name}");
    let _ = f;
    vec![
        // --- Keras HDF5 ---
        (
            "h5 truncated to 1%",
            "Format",
            Box::new(|| truncated("keras_resnet50_w8/resnet50.h5", 0.01)),
        ),
        (
            "h5 truncated to 30%",
            "Format",
            Box::new(|| truncated("keras_resnet50_w8/resnet50.h5", 0.3)),
        ),
        (
            "h5 truncated to 70%",
            "Format",
            Box::new(|| truncated("keras_resnet50_w8/resnet50.h5", 0.7)),
        ),
        (
            "keras 1 h5 truncated to 95%",
            "Format",
            Box::new(|| truncated("keras_resnet50_w8/resnet50_keras1.h5", 0.95)),
        ),
        (
            "h5 without layer_names",
            "Format",
            Box::new(|| load_keras("malformed/no_layer_names.h5")),
        ),
        ("h5 float32 dense loads", "Ok", Box::new(|| load_keras("malformed/dense_f32.h5"))),
        (
            "h5 float64 datasets are converted to float32",
            "Ok",
            Box::new(|| {
                let (a, b) = (open("malformed/dense_f64.h5")?, open("malformed/dense_f32.h5")?);
                assert_eq!(a.get("d/kernel"), b.get("d/kernel"));
                Ok(())
            }),
        ),
        (
            "h5 float16 datasets are refused",
            "Dtype",
            Box::new(|| load_keras("malformed/dense_f16.h5")),
        ),
        (
            "h5 integer datasets are refused",
            "Dtype",
            Box::new(|| load_keras("malformed/dense_int.h5")),
        ),
        (
            "h5 weight_names naming a missing dataset",
            "Format",
            Box::new(|| load_keras("malformed/dense_missing_dataset.h5")),
        ),
        (
            "h5 layer_names naming a missing group",
            "Format",
            Box::new(|| load_keras("malformed/dense_missing_group.h5")),
        ),
        (
            "h5 two datasets for one slot (kernel and W)",
            "Format",
            Box::new(|| load_keras("malformed/dense_duplicate.h5")),
        ),
        (
            "h5 for another architecture",
            "MissingWeights",
            Box::new(|| {
                open("keras_resnet50_w8/resnet50.h5")?
                    .load_into(&mut dense(), &LoadOptions::strict())
                    .map(|_| ())
            }),
        ),
        // --- safetensors ---
        (
            "safetensors truncated to 0.5%",
            "Format",
            Box::new(|| truncated("torch_resnet18_w8/resnet18.safetensors", 0.005)),
        ),
        (
            "safetensors truncated to 60%",
            "Format",
            Box::new(|| truncated("torch_resnet18_w8/resnet18.safetensors", 0.6)),
        ),
        (
            "safetensors with a huge header length",
            "Format",
            Box::new(|| open("malformed/huge_header.safetensors").map(|_| ())),
        ),
        (
            "safetensors with a broken JSON header",
            "Format",
            Box::new(|| open("malformed/bad_json.safetensors").map(|_| ())),
        ),
        (
            "safetensors float16 tensor is refused",
            "Dtype",
            Box::new(|| load_torch("malformed/linear_f16.safetensors")),
        ),
        (
            "safetensors int32 tensor is refused",
            "Dtype",
            Box::new(|| load_torch("malformed/linear_i32.safetensors")),
        ),
        (
            "safetensors float64 tensors are converted",
            "Ok",
            Box::new(|| load_torch("malformed/linear_f64.safetensors")),
        ),
        (
            "wrong magic (text) read as weights",
            "Format",
            Box::new(|| WeightFile::from_bytes(b"hello, not weights".to_vec(), "text").map(|_| ())),
        ),
        (
            "empty weights file",
            "Format",
            Box::new(|| WeightFile::from_bytes(Vec::new(), "empty").map(|_| ())),
        ),
        // --- .pth ---
        (
            "pth truncated to 50%",
            "Format",
            Box::new(|| truncated("torch_resnet18_w8/resnet18.pth", 0.5)),
        ),
        (
            "pth truncated to 99%",
            "Format",
            Box::new(|| truncated("torch_resnet18_w8/resnet18.pth", 0.99)),
        ),
        (
            "pth pickle calling os.system",
            "UnsafePickle",
            Box::new(|| open("malformed/evil.pth").map(|_| ())),
        ),
        (
            "pth pickle with an opcode a state_dict never uses",
            "UnsafePickle",
            Box::new(|| open("malformed/unknown_opcode.pth").map(|_| ())),
        ),
        (
            "pth archive without data.pkl",
            "Format",
            Box::new(|| open("malformed/no_pickle.pth").map(|_| ())),
        ),
        (
            "pth tensor whose storage is missing",
            "Format",
            Box::new(|| open("malformed/missing_storage.pth").map(|_| ())),
        ),
        (
            "pth tensor whose storage is too short",
            "Format",
            Box::new(|| open("malformed/short_storage.pth").map(|_| ())),
        ),
        (
            "pth hand-written state_dict loads",
            "Ok",
            Box::new(|| {
                let w = open("malformed/ok_tensor.pth")?;
                assert_eq!(w.get("w").map(|t| t.shape.clone()), Some(vec![2, 3]));
                Ok(())
            }),
        ),
        // --- weights into models ---
        (
            "NaN weights are refused, naming the tensor",
            "NonFinite",
            Box::new(|| {
                let w = WeightFile::from_tensors(
                    "nan",
                    Convention::Keras,
                    [
                        ("d/kernel".to_string(), StoredTensor::new(vec![3, 2], vec![f32::NAN; 6])?),
                        ("d/bias".to_string(), StoredTensor::new(vec![2], vec![0.0; 2])?),
                    ],
                )?;
                w.load_into(&mut dense(), &LoadOptions::strict()).map(|_| ())
            }),
        ),
        (
            "a tensor of the wrong rank",
            "WeightShape",
            Box::new(|| {
                let w = WeightFile::from_tensors(
                    "rank",
                    Convention::Keras,
                    [
                        ("d/kernel".to_string(), StoredTensor::new(vec![6], vec![0.0; 6])?),
                        ("d/bias".to_string(), StoredTensor::new(vec![2], vec![0.0; 2])?),
                    ],
                )?;
                w.load_into(&mut dense(), &LoadOptions::strict()).map(|_| ())
            }),
        ),
        (
            "an extra tensor",
            "UnusedWeights",
            Box::new(|| {
                let t = |n: &str, s: Vec<usize>| (n.to_string(), StoredTensor::new(s.clone(), vec![0.0; s.iter().product()]).unwrap());
                let w = WeightFile::from_tensors(
                    "extra",
                    Convention::Keras,
                    [t("d/kernel", vec![3, 2]), t("d/bias", vec![2]), t("e/kernel", vec![1])],
                )?;
                w.load_into(&mut dense(), &LoadOptions::strict()).map(|_| ())
            }),
        ),
        (
            "a stored tensor whose data does not fill its shape",
            "Shape",
            Box::new(|| StoredTensor::new(vec![2, 3], vec![0.0; 5]).map(|_| ())),
        ),
        // --- images ---
        ("empty image file", "Image", Box::new(|| image("empty.png").map(|_| ()))),
        ("text file named .png", "Image", Box::new(|| image("not_an_image.png").map(|_| ()))),
        (
            "JPEG whose Huffman table overflows its code lengths (found by the image fuzzer)",
            "Image",
            Box::new(|| image("jpeg_overfull_huffman.jpg").map(|_| ())),
        ),
        (
            "truncated PNG",
            "Image",
            Box::new(|| {
                let b = bytes("keras_resnet50_w8/images/chelsea.png");
                decode_rgb(&b[..b.len() / 2], "half.png", &ImageOptions::default()).map(|_| ())
            }),
        ),
        (
            "truncated JPEG",
            "Image",
            Box::new(|| {
                let b = bytes("keras_resnet50_w8/images/rocket.jpg");
                decode_rgb(&b[..200], "cut.jpg", &ImageOptions::default()).map(|_| ())
            }),
        ),
        (
            "PNG header claiming 60000 x 60000 pixels",
            "Image",
            Box::new(|| image("huge.png").map(|_| ())),
        ),
        (
            "image above a configured size limit",
            "Budget",
            Box::new(|| {
                decode_rgb(
                    &bytes("keras_resnet50_w8/images/chelsea.png"),
                    "chelsea.png",
                    &ImageOptions {
                        budget: LoadBudget {
                            max_image_side: 100,
                            ..LoadBudget::default()
                        },
                        allow_truncated: false,
                    },
                )
                .map(|_| ())
            }),
        ),
        (
            "missing image file",
            "Io",
            Box::new(|| load_rgb("/nonexistent/elephant.jpg").map(|_| ())),
        ),
        (
            "grey PNG becomes RGB as Pillow does",
            "Ok",
            Box::new(|| {
                assert_eq!(image("grey.png")?.data, pillow("grey.png"));
                Ok(())
            }),
        ),
        (
            "RGBA PNG drops alpha as Pillow does",
            "Ok",
            Box::new(|| {
                assert_eq!(image("rgba.png")?.data, pillow("rgba.png"));
                Ok(())
            }),
        ),
        (
            "palette PNG expands as Pillow does",
            "Ok",
            Box::new(|| {
                assert_eq!(image("palette.png")?.data, pillow("palette.png"));
                Ok(())
            }),
        ),
        (
            "16-bit grey PNG clips at 255 as Pillow does",
            "Ok",
            Box::new(|| {
                assert_eq!(image("grey16.png")?.data, pillow("grey16.png"));
                Ok(())
            }),
        ),
        (
            "CMYK JPEG is decoded to RGB within 1 level of Pillow",
            "Ok",
            Box::new(|| {
                let img = image("cmyk.jpg")?;
                assert_eq!((img.width, img.height), (7, 5));
                assert!(img.data.iter().zip(pillow("cmyk.jpg")).all(|(a, b)| a.abs_diff(b) <= 1));
                Ok(())
            }),
        ),
        // --- forward pass ---
        ("forward on a rank-3 input", "Shape", Box::new(|| forward(&[224, 224, 3], 0.0))),
        (
            "forward on the wrong spatial size for the fixed head",
            "Shape",
            Box::new(|| forward(&[1, 160, 160, 3], 0.0)),
        ),
        (
            "compiled model on the wrong spatial size",
            "Shape",
            Box::new(|| compiled(&[1, 160, 160, 3], 0.0)),
        ),
        (
            "compiled model on NaN input",
            "NonFinite",
            Box::new(|| compiled(&[1, 224, 224, 3], f32::NAN)),
        ),
        (
            "forward on the wrong channel count",
            "Shape",
            Box::new(|| forward(&[1, 224, 224, 4], 0.0)),
        ),
        (
            "forward on NaN input",
            "NonFinite",
            Box::new(|| forward(&[1, 224, 224, 3], f32::NAN)),
        ),
        (
            "forward on infinite input",
            "NonFinite",
            Box::new(|| forward(&[1, 224, 224, 3], f32::INFINITY)),
        ),
        (
            "decode_predictions on the wrong width",
            "Shape",
            Box::new(|| convnet::imagenet::decode_predictions(&Tensor::zeros(IxDyn(&[1, 10])), 5).map(|_| ())),
        ),
        (
            "Dense on a 4-D input",
            "Shape",
            Box::new(|| Dense::new(3, 2, None)?.forward(&Tensor::zeros(IxDyn(&[1, 1, 1, 3]))).map(|_| ())),
        ),
    ]
}

#[test]
fn every_malformed_input_gives_its_error_variant_without_panicking() {
    let cases = cases();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let mut failures = Vec::new();
    for (name, want, run) in &cases {
        match catch_unwind(AssertUnwindSafe(run)) {
            Err(_) => failures.push(format!("{name}: PANICKED")),
            Ok(r) => {
                let got = variant(&r);
                if got != *want {
                    failures.push(format!("{name}: expected {want}, got {got} ({r:?})"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
