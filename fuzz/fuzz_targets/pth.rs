//! Fuzzes the .pth (zip + restricted pickle) reader (the bytes are always read as that format).
#![no_main]

#[path = "weights.rs"]
mod weights;

libfuzzer_sys::fuzz_target!(|data: &[u8]| weights::fuzz_weights(data, convnet::weights::WeightFormat::Pth));
