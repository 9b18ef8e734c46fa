//! scikit-learn's 8x8 handwritten digits (1,797 images, BSD-3-Clause), as the
//! `sklearn/datasets/data/digits.csv.gz` file of its wheel stores them: one row per image, 64
//! pixel values 0 to 16 and then the label.

use std::io::Read;
use std::path::Path;

use flate2::read::GzDecoder;
use ndarray::IxDyn;

use super::Dataset;
use crate::budget::read_regular_file;
use crate::error::{Error, Result};
use crate::layers::Tensor;

/// Reads `digits.csv.gz` (or the uncompressed CSV) as 1-channel 8x8 images scaled to [0, 1]
/// (`/ 16`) with labels 0 to 9. A malformed row is an [`Error::Format`] naming it.
pub fn load_digits(path: impl AsRef<Path>) -> Result<Dataset> {
    let path = path.as_ref();
    let err = |reason: String| Error::Format {
        format: "digits CSV",
        path: path.display().to_string(),
        reason,
    };
    let raw = read_regular_file(path, 64 << 20, "max_file_bytes")?;
    let text = if raw.starts_with(&[0x1F, 0x8B]) {
        let mut s = String::new();
        GzDecoder::new(&raw[..])
            .take((raw.len() as u64).saturating_mul(16).saturating_add(1 << 20))
            .read_to_string(&mut s)
            .map_err(|e| err(format!("gzip: {e}")))?;
        s
    } else {
        String::from_utf8(raw).map_err(|_| err("not UTF-8 text".into()))?
    };
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for (row, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let values: Vec<f32> = line
            .split(',')
            .map(|v| {
                v.trim()
                    .parse::<f32>()
                    .map_err(|_| err(format!("row {row}: {v:?} is not a number")))
            })
            .collect::<Result<_>>()?;
        if values.len() != 65 {
            return Err(err(format!(
                "row {row} has {} values, 65 expected (64 pixels and the label)",
                values.len()
            )));
        }
        if values[..64].iter().any(|v| !(0.0..=16.0).contains(v)) {
            return Err(err(format!("row {row} has a pixel outside 0..=16")));
        }
        let label = values[64];
        if label.fract() != 0.0 || !(0.0..10.0).contains(&label) {
            return Err(err(format!("row {row} has the label {label}, not a digit 0 to 9")));
        }
        pixels.extend(values[..64].iter().map(|v| v / 16.0));
        labels.push(label as usize);
    }
    let n = labels.len();
    let images = Tensor::from_shape_vec(IxDyn(&[n, 8, 8, 1]), pixels).map_err(|e| err(e.to_string()))?;
    Dataset::new(images, labels, 10)
}
