//! Shared by the weights fuzz targets: any bytes, read as `format`, give a `WeightFile` or a
//! typed error, never a panic, an abort or a hang; whatever loads is then matched against a
//! small model.

use convnet::layers::{Dense, Sequential};
use convnet::weights::{LoadOptions, WeightFile, WeightFormat};

pub fn fuzz_weights(data: &[u8], format: WeightFormat) {
    if let Ok(file) = WeightFile::from_bytes_as(data.to_vec(), "fuzz", format) {
        let mut model = Sequential::new();
        if let Ok(d) = Dense::new(3, 2, None) {
            let _ = model.push("d", d);
        }
        let _ = file.load_into(&mut model, &LoadOptions::lenient());
    }
}
