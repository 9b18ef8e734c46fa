//! The seed's input pipeline (`load_img` nearest 224x224, `img_to_array`, caffe
//! `preprocess_input`) against the arrays Keras fed its network.

mod common;

use convnet::imagenet::image::{keras_resnet_input, load_rgb, torchvision_crop, torchvision_input, RgbImage};

#[test]
fn png_inputs_are_reproduced_exactly() {
    for image in ["chelsea.png", "coffee.png", "astronaut.png"] {
        let got = keras_resnet_input(common::fixture(&format!("keras_resnet50_w8/images/{image}"))).unwrap();
        let want = common::npy(&format!("keras_resnet50_w8/input_{image}.npy"));
        assert_eq!(got.shape(), &[1, 224, 224, 3]);
        assert_eq!(common::max_abs_diff(&got, &want), 0.0, "{image}");
    }
}

/// The JPEG decoder is Pillow's bit for bit, so the JPEG input is exact like the PNG ones.
#[test]
fn jpeg_input_matches_keras_exactly() {
    let got = keras_resnet_input(common::fixture("keras_resnet50_w8/images/rocket.jpg")).unwrap();
    let want = common::npy("keras_resnet50_w8/input_rocket.jpg.npy");
    let diffs: Vec<f32> = got.iter().zip(want.iter()).map(|(a, b)| (a - b).abs()).collect();
    let max = diffs.iter().cloned().fold(0.0, f32::max);
    let exact = diffs.iter().filter(|&&d| d == 0.0).count() as f64 / diffs.len() as f64;
    let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
    println!("rocket.jpg: max diff {max}, mean {mean}, exact {:.1}%", exact * 100.0);
    assert_eq!(max, 0.0, "max diff {max}, {:.2}% exact", exact * 100.0);
}

#[test]
fn nearest_resize_follows_pillows_accumulated_positions() {
    // 5 -> 3 columns: scale 5/3, positions 0.833, 2.5, 4.167 -> 0, 2, 4.
    let img = RgbImage::new(5, 1, (0..15).collect()).unwrap();
    let r = img.resize_nearest(3, 1).unwrap();
    assert_eq!(r.data, vec![0, 1, 2, 6, 7, 8, 12, 13, 14]);
    // Upsampling 2 -> 4 repeats each pixel twice.
    let img = RgbImage::new(2, 1, vec![1, 1, 1, 9, 9, 9]).unwrap();
    assert_eq!(img.resize_nearest(4, 1).unwrap().data, vec![1, 1, 1, 1, 1, 1, 9, 9, 9, 9, 9, 9]);
}

fn pillow(name: &str) -> ndarray::Array3<u8> {
    use ndarray_npy::ReadNpyExt;
    ndarray::Array3::<u8>::read_npy(std::fs::File::open(common::fixture(&format!("pillow/{name}.npy"))).unwrap()).unwrap()
}

fn assert_same(got: &RgbImage, want: &ndarray::Array3<u8>, what: &str) {
    assert_eq!((got.height, got.width, 3), want.dim(), "{what}");
    let differing = got.data.iter().zip(want.iter()).filter(|(a, b)| a != b).count();
    assert_eq!(differing, 0, "{what}: {differing} bytes differ from Pillow");
}

/// Against Pillow 13 itself (`tests/fixtures/pillow/make_pillow_cases.py`).
#[test]
fn resizes_match_pillow_byte_for_byte() {
    let img = load_rgb(common::fixture("keras_resnet50_w8/images/chelsea.png")).unwrap();
    assert_same(
        &img.resize_bilinear(113, 75).unwrap(),
        &pillow("bilinear_down_113x75"),
        "bilinear shrink",
    );
    assert_same(
        &img.crop(200, 100, 40, 30).unwrap().resize_bilinear(97, 71).unwrap(),
        &pillow("bilinear_up_97x71"),
        "bilinear enlarge",
    );
    assert_same(&img.resize_nearest(97, 71).unwrap(), &pillow("nearest_97x71"), "nearest shrink");
    assert_same(
        &img.resize_nearest(500, 333).unwrap(),
        &pillow("nearest_up_500x333"),
        "nearest enlarge",
    );
    assert_same(
        &torchvision_crop(&img).unwrap(),
        &pillow("torchvision_crop"),
        "torchvision Resize(256) + CenterCrop(224)",
    );
}

#[test]
fn torchvision_pipeline_shapes_and_normalises() {
    let img = load_rgb(common::fixture("keras_resnet50_w8/images/chelsea.png")).unwrap();
    let x = torchvision_input(&img).unwrap();
    assert_eq!(x.shape(), &[1, 224, 224, 3]);
    let (lo, hi) = x.iter().fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    assert!(lo >= -2.2 && hi <= 2.7, "{lo} {hi}");
}
