//! Fuzzes the safetensors weights reader: any bytes give a WeightFile or a typed error, never a panic,
//! an abort or a hang; whatever loads can then be matched against a model without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = convnet::weights::WeightFile::from_bytes(data.to_vec(), "fuzz") {
        let mut model = convnet::layers::Sequential::new();
        if let Ok(d) = convnet::layers::Dense::new(3, 2, None) {
            let _ = model.push("d", d);
        }
        let _ = file.load_into(&mut model, &convnet::weights::LoadOptions::lenient());
    }
});
