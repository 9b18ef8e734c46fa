//! Fixture helpers shared by the integration tests.
#![allow(dead_code)]

use std::fs::File;
use std::path::PathBuf;

use convnet::layers::Tensor;
use ndarray::{ArrayD, IxDyn};
use ndarray_npy::{NpzReader, ReadNpyExt};

/// `tests/fixtures/<rel>`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

/// Reads a float32 `.npy` file.
pub fn npy(rel: &str) -> Tensor {
    let f = File::open(fixture(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    ArrayD::<f32>::read_npy(f).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Opens an `.npz` archive.
pub fn npz(rel: &str) -> NpzReader<File> {
    NpzReader::new(File::open(fixture(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))).unwrap()
}

/// Reads array `name` from an open `.npz`, or `None` if absent.
pub fn npz_array(z: &mut NpzReader<File>, name: &str) -> Option<ArrayD<f32>> {
    let names = z.names().unwrap();
    let key = names.iter().find(|n| *n == name || *n == &format!("{name}.npy"))?.clone();
    Some(z.by_name::<ndarray::OwnedRepr<f32>, IxDyn>(&key).unwrap())
}

/// Largest absolute element difference; panics if the shapes differ.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    a.iter().zip(b.iter()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Largest difference relative to the reference's overall scale (max |b|).
pub fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
    max_abs_diff(a, b) / scale
}
