//! The JPEG decoder against Pillow 13 (libjpeg-turbo 3.2): every fixture in
//! `tests/fixtures/jpeg/` (`make_jpegs.py`: baseline, optimised, progressive, restart markers,
//! 4:4:4, 4:2:2, 4:2:0, 4:4:0, 4:1:1, mixed samplings, grey, CMYK, RGB, tiny images) decodes
//! to Pillow's `convert("RGB")` array exactly, through `load_rgb`, the API the examples use.

mod common;

use std::fs::File;

use convnet::imagenet::image::{decode_rgb, load_rgb, ImageOptions};
use ndarray::Array3;
use ndarray_npy::ReadNpyExt;

fn pillow(rel: &str) -> Array3<u8> {
    Array3::<u8>::read_npy(File::open(common::fixture(rel)).unwrap()).unwrap()
}

fn cases() -> Vec<String> {
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(common::fixture("jpeg/cases.json")).unwrap()).unwrap();
    meta["cases"].as_object().unwrap().keys().cloned().collect()
}

fn compare(jpg: &str, npy: &str) -> Result<(), String> {
    let img = load_rgb(common::fixture(jpg)).map_err(|e| format!("{jpg}: {e}"))?;
    let want = pillow(npy);
    let (h, w, _) = want.dim();
    if (img.width, img.height) != (w, h) {
        return Err(format!("{jpg}: {}x{} decoded, Pillow has {w}x{h}", img.width, img.height));
    }
    let diffs: Vec<u8> = img.data.iter().zip(want.iter()).map(|(a, b)| a.abs_diff(*b)).collect();
    let max = diffs.iter().copied().max().unwrap_or(0);
    let off = diffs.iter().filter(|&&d| d != 0).count();
    println!("{jpg}: {w}x{h}, max diff {max}, {off} of {} values differ", diffs.len());
    if max != 0 {
        let first = diffs.iter().position(|&d| d != 0).unwrap();
        return Err(format!(
            "{jpg}: max diff {max}, {off} values differ, the first at pixel ({}, {})",
            first / 3 % w,
            first / 3 / w
        ));
    }
    Ok(())
}

#[test]
fn every_fixture_decodes_bit_identical_to_pillow() {
    let cases = cases();
    assert!(cases.len() >= 37, "{} cases", cases.len());
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|c| compare(&format!("jpeg/{c}.jpg"), &format!("jpeg/{c}.npy")).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn the_older_jpeg_fixtures_decode_as_pillow_decodes_them() {
    compare("malformed/cmyk.jpg", "malformed/cmyk.jpg.pillow.npy").unwrap();
}

#[test]
fn every_truncation_of_a_progressive_file_is_an_error_and_lenient_decoding_keeps_the_size() {
    let bytes = std::fs::read(common::fixture("jpeg/chelsea_progressive_q75_420.jpg")).unwrap();
    let step = (bytes.len() / 200).max(1);
    for n in (0..bytes.len() - 1).step_by(step) {
        let strict = std::panic::catch_unwind(|| decode_rgb(&bytes[..n], "cut.jpg", &ImageOptions::default()));
        assert!(matches!(strict, Ok(Err(convnet::Error::Image { .. }))), "cut at {n}: {strict:?}");
        let lenient = std::panic::catch_unwind(|| decode_rgb(&bytes[..n], "cut.jpg", &ImageOptions::lenient()));
        match lenient {
            Ok(Ok(img)) => assert_eq!((img.width, img.height), (203, 157), "cut at {n}"),
            Ok(Err(_)) => {} // cut before the frame header or the first scan
            Err(_) => panic!("cut at {n} panicked"),
        }
    }
}
