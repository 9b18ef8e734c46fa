//! Times candle's ONNX evaluator (`candle_onnx::simple_eval`) on the exported ResNet50 and
//! prints one JSON line in `bench_resnet50`'s format.
//!
//! Usage: `candle-bench MODEL.onnx [--batch N] [--threads T] [--iters K] [--warmup W] [--check DIR]`
//! (the input: the same fixed pattern as `bench_resnet50`'s; candle's CPU kernels take their
//! thread count from `RAYON_NUM_THREADS`, which this sets from `--threads` before the first
//! kernel runs). `--check DIR` first prints how far the output on `DIR/check_input.npy` is from
//! `DIR/check_probs.npy` (onnxruntime's).

use std::collections::HashMap;
use std::time::Instant;

#[path = "../../peer_common.rs"]
mod peer_common;
use peer_common::{peak_rss_mib, read_npy};

use anyhow::{anyhow, Result};
use candle_core::{Device, Tensor};

fn run(model: &candle_onnx::onnx::ModelProto, input: &str, x: &Tensor) -> Result<Tensor> {
    let mut inputs = HashMap::new();
    inputs.insert(input.to_string(), x.clone());
    let mut out = candle_onnx::simple_eval(model, inputs)?;
    out.remove("probs").ok_or_else(|| anyhow!("no output named probs"))
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or_else(|| anyhow!("usage: candle-bench MODEL.onnx [--batch N] [--threads T] [--iters K] [--warmup W] [--check DIR]"))?;
    let (mut batch, mut threads, mut iters, mut warmup, mut check) = (1usize, 1usize, 20usize, 3usize, None);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| anyhow!("{flag} needs a value"))?;
        let num = || value.parse::<usize>().map_err(|_| anyhow!("{flag} needs a number"));
        match flag.as_str() {
            "--batch" => batch = num()?,
            "--threads" => threads = num()?,
            "--iters" => iters = num()?.max(1),
            "--warmup" => warmup = num()?,
            "--check" => check = Some(value),
            _ => return Err(anyhow!("unknown argument {flag}")),
        }
    }
    // Read by candle's CPU kernels (through rayon and the gemm crate) when they first start.
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    let model = candle_onnx::read_file(&path)?;
    let input = model
        .graph
        .as_ref()
        .and_then(|g| g.input.first())
        .ok_or_else(|| anyhow!("{path}: no graph input"))?
        .name
        .clone();
    if let Some(dir) = check {
        let (shape, data) = read_npy(&format!("{dir}/check_input.npy"))?;
        let (_, want) = read_npy(&format!("{dir}/check_probs.npy"))?;
        let got: Vec<f32> = run(&model, &input, &Tensor::from_vec(data, shape.clone(), &Device::Cpu)?)?
            .flatten_all()?
            .to_vec1()?;
        let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        println!(
            "check against onnxruntime: {} images, max abs difference of the probabilities {diff:e}",
            shape[0]
        );
    }
    let x: Vec<f32> = (0..batch * 224 * 224 * 3)
        .map(|i| {
            let (c, w, h, n) = (i % 3, (i / 3) % 224, (i / (3 * 224)) % 224, i / (3 * 224 * 224));
            ((h * 7 + w * 13 + c * 29 + n) % 255) as f32 - 120.0
        })
        .collect();
    let x = Tensor::from_vec(x, (batch, 224, 224, 3), &Device::Cpu)?;
    for _ in 0..warmup {
        run(&model, &input, &x)?;
    }
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        std::hint::black_box(run(&model, &input, &x)?);
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let q = |p: f64| times[((p * (times.len() - 1) as f64).round() as usize).min(times.len() - 1)];
    let median = q(0.5);
    println!(
        "{{\"model\": \"resnet50-keras\", \"engine\": \"candle-onnx 0.11.1\", \"batch\": {batch}, \"threads\": {threads}, \"iters\": {iters}, \"median_ms\": {median:.2}, \"p10_ms\": {:.2}, \"p90_ms\": {:.2}, \"images_per_s\": {:.2}, \"peak_rss_mib\": {:.1}}}",
        q(0.1),
        q(0.9),
        batch as f64 * 1000.0 / median,
        peak_rss_mib()
    );
    Ok(())
}
