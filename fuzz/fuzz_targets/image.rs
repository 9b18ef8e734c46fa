//! Fuzzes image decoding and the Keras / torchvision preprocessing: any bytes give an image or
//! a typed error, never a panic, an abort or a huge allocation.
#![no_main]

use convnet::imagenet::image::{decode_rgb, preprocess_input_caffe, torchvision_input, ImageOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let budget = convnet::budget::LoadBudget { max_image_side: 4096, max_image_pixels: 4 << 20, ..Default::default() };
    let limits = ImageOptions { budget, allow_truncated: data.last().is_some_and(|b| b & 1 == 1) };
    if let Ok(img) = decode_rgb(data, "fuzz", &limits) {
        if let Ok(small) = img.resize_nearest(224, 224) {
            let mut x = small.to_tensor();
            let _ = preprocess_input_caffe(&mut x);
        }
        if img.width * img.height <= 1 << 20 {
            let _ = torchvision_input(&img);
        }
    }
});
