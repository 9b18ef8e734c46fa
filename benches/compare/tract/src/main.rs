//! Times tract on the exported ResNet50 and prints one JSON line in `bench_resnet50`'s format.
//!
//! Usage: `tract-bench MODEL.onnx [--batch N] [--threads T] [--iters K] [--warmup W] [--check DIR]`
//! (the input: the same fixed pattern as `bench_resnet50`'s; threads > 1 use tract's
//! multithreaded matmul). `--check DIR` first runs `DIR/check_input.npy` and prints how far the
//! output is from `DIR/check_probs.npy` (onnxruntime's), as `bench_resnet50 --check` does.

use std::time::Instant;

#[path = "../../peer_common.rs"]
mod peer_common;
use peer_common::{peak_rss_mib, read_npy};

use tract_linalg::multithread::{self, Executor};
use tract_onnx::prelude::*;

fn check(path: &str, dir: &str) -> TractResult<()> {
    let (shape, input) = read_npy(&format!("{dir}/check_input.npy"))?;
    let (_, want) = read_npy(&format!("{dir}/check_probs.npy"))?;
    let model = tract_onnx::onnx()
        .model_for_path(path)?
        .with_input_fact(0, f32::fact(&shape).into())?
        .into_optimized()?
        .into_runnable()?;
    let x = tract_ndarray::ArrayD::from_shape_vec(shape.clone(), input)?;
    let out = model.run(tvec!(Tensor::from(x).into()))?;
    let got = out[0].to_plain_array_view::<f32>()?;
    let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    println!(
        "check against onnxruntime: {} images, max abs difference of the probabilities {diff:e}",
        shape[0]
    );
    Ok(())
}

fn main() -> TractResult<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: tract-bench MODEL.onnx [--batch N] [--threads T] [--iters K] [--warmup W] [--check DIR]"))?;
    let (mut batch, mut threads, mut iters, mut warmup) = (1usize, 1usize, 20usize, 3usize);
    while let Some(flag) = args.next() {
        if flag == "--check" {
            check(&path, &args.next().ok_or_else(|| anyhow::anyhow!("--check needs a folder"))?)?;
            continue;
        }
        let value: usize = args
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a number"))?;
        match flag.as_str() {
            "--batch" => batch = value,
            "--threads" => threads = value,
            "--iters" => iters = value.max(1),
            "--warmup" => warmup = value,
            _ => return Err(anyhow::anyhow!("unknown argument {flag}")),
        }
    }
    if threads > 1 {
        multithread::set_default_executor(Executor::multithread(threads));
    }
    let model = tract_onnx::onnx()
        .model_for_path(&path)?
        .with_input_fact(0, f32::fact([batch, 224, 224, 3]).into())?
        .into_optimized()?
        .into_runnable()?;
    let x: Tensor = tract_ndarray::Array4::<f32>::from_shape_fn((batch, 224, 224, 3), |(n, h, w, c)| {
        ((h * 7 + w * 13 + c * 29 + n) % 255) as f32 - 120.0
    })
    .into();
    for _ in 0..warmup {
        model.run(tvec!(x.clone().into()))?;
    }
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        model.run(tvec!(x.clone().into()))?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let q = |p: f64| times[((p * (times.len() - 1) as f64).round() as usize).min(times.len() - 1)];
    let median = q(0.5);
    println!(
        "{{\"model\": \"resnet50-keras\", \"engine\": \"tract 0.23.9\", \"batch\": {batch}, \"threads\": {threads}, \"iters\": {iters}, \"median_ms\": {median:.2}, \"p10_ms\": {:.2}, \"p90_ms\": {:.2}, \"images_per_s\": {:.2}, \"peak_rss_mib\": {:.1}}}",
        q(0.1),
        q(0.9),
        batch as f64 * 1000.0 / median,
        peak_rss_mib()
    );
    Ok(())
}
