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

/// A deterministic pseudo-random fill in [-1, 1).
pub fn fill(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Fills a model with deterministic pseudo-random weights: He-scaled kernels, BatchNorm
/// statistics near identity, small biases.
pub fn randomize(model: &mut dyn convnet::layers::Layer, seed: u32) {
    use convnet::layers::{LayerPath, ParamKind, ParamVisitor};
    struct Fill(u32);
    impl ParamVisitor for Fill {
        fn visit(&mut self, _: &LayerPath, kind: ParamKind, mut v: ndarray::ArrayViewMutD<'_, f32>) -> convnet::Result<()> {
            let fan_in: usize = v.shape().iter().rev().skip(1).product::<usize>().max(1);
            let scale = (6.0 / fan_in as f32).sqrt();
            v.mapv_inplace(|_| {
                self.0 = self.0.wrapping_mul(1664525).wrapping_add(1013904223);
                let r = (self.0 >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
                match kind {
                    ParamKind::MovingVariance => 0.5 + r.abs(),
                    ParamKind::Gamma => 1.0 + 0.5 * r,
                    ParamKind::Kernel => r * scale,
                    _ => 0.2 * r,
                }
            });
            Ok(())
        }
    }
    model.visit_params_mut(&mut LayerPath::default(), &mut Fill(seed)).unwrap();
}

/// The example's binary, (re)built first: a filtered test run does not build examples, and
/// a stale binary would test old code.
pub fn example(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == name) {
        let mut cargo = std::process::Command::new(env!("CARGO"));
        // Without the variables cargo sets for a test process: build scripts that watch one
        // (ring's watches CARGO_MANIFEST_DIR) would otherwise rerun and rebuild their crates,
        // and the next top-level `cargo test` would rebuild them back.
        for (key, _) in std::env::vars_os() {
            let key_text = key.to_string_lossy();
            if [
                "CARGO_MANIFEST_",
                "CARGO_PKG_",
                "CARGO_CRATE_",
                "CARGO_PRIMARY_",
                "CARGO_TARGET_TMPDIR",
                "CARGO_BIN_EXE_",
            ]
            .iter()
            .any(|p| key_text.starts_with(p))
            {
                cargo.env_remove(&key);
            }
        }
        let status = cargo
            // The test profile: optimised, and the dependencies `cargo test` already built.
            .args([
                "build",
                "--profile",
                "test",
                "--example",
                name,
                "--manifest-path",
                concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
            ])
            .status()
            .unwrap();
        assert!(status.success());
        built.push(name.to_string());
    }
    p
}

/// Runs `model` on `x` through both executors (layer by layer, and compiled on 2 threads for
/// 224 x 224 x 3 images), and checks each output's top 5 per row against `top5` (the
/// generator's `[[class, ...], ...]`); returns the two outputs, named.
#[allow(dead_code)]
pub fn run_both_and_check_top5(
    model: &dyn convnet::layers::Layer,
    x: &Tensor,
    top5: &serde_json::Value,
    what: &str,
) -> [(&'static str, Tensor); 2] {
    let layer_by_layer = model.forward(x).unwrap();
    let options = convnet::inference::InferenceOptions {
        threads: 2,
        ..Default::default()
    };
    let compiled = convnet::inference::CompiledModel::new(model, &[224, 224, 3], &options)
        .unwrap()
        .run(x)
        .unwrap();
    let outputs = [("layer by layer", layer_by_layer), ("compiled", compiled)];
    for (path, out) in &outputs {
        for (row, top) in out.outer_iter().zip(top5.as_array().unwrap()) {
            let mut order: Vec<usize> = (0..row.len()).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            let want: Vec<usize> = top.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
            assert_eq!(&order[..5], &want[..], "{what} {path}");
        }
    }
    outputs
}
