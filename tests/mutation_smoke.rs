//! Randomly corrupted weights files and images (a few bytes changed, in the header region or
//! anywhere) give a typed error or load; they never panic. A bounded, deterministic smoke
//! test; the coverage-guided fuzzing belongs to the robustness work.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};

use convnet::imagenet::image::{decode_rgb, ImageOptions};
use convnet::weights::WeightFile;

#[test]
fn corrupted_inputs_never_panic() {
    let files = [
        "keras_resnet50_w8/resnet50.h5",
        "keras_resnet50_w8/resnet50_keras1.h5",
        "torch_resnet18_w8/resnet18.safetensors",
        "torch_resnet18_w8/resnet18.pth",
        "keras_resnet50_w8/images/chelsea.png",
        "keras_resnet50_w8/images/rocket.jpg",
    ];
    let mut state: u64 = 0x5eed;
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    let mut report = Vec::new();
    for file in files {
        let original = std::fs::read(common::fixture(file)).unwrap();
        let (mut errors, mut loaded) = (0, 0);
        for round in 0..120 {
            let mut bytes = original.clone();
            for _ in 0..1 + next() % 8 {
                // even rounds hit the first 4 KiB (headers, pickles, chunk tables), odd ones anywhere
                let at = if round % 2 == 0 {
                    next() % bytes.len().min(4096)
                } else {
                    next() % bytes.len()
                };
                bytes[at] = next() as u8;
            }
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                if file.ends_with(".png") || file.ends_with(".jpg") {
                    decode_rgb(&bytes, file, &ImageOptions::default()).map(|_| ())
                } else {
                    WeightFile::from_bytes(bytes.clone(), file).map(|_| ())
                }
            }));
            match outcome {
                Ok(Ok(())) => loaded += 1,
                Ok(Err(_)) => errors += 1,
                Err(_) => panic!("{file}: round {round} panicked"),
            }
        }
        report.push(format!("{file}: {errors} errors, {loaded} loaded"));
    }
    println!("{}", report.join("\n"));
}
