//! Times the seed's full-width ResNet50, or another ImageNet preset, on the compiled inference
//! path.
//!
//! ```text
//! cargo run --release --example bench_resnet50 -- [--model NAME] [--weights FILE] [--batch N] [--threads T] [--iters K] [--warmup W] [--profile] [--unfused] [--no-winograd] [--no-fuse-blocks] [--schedule auto|lanes|serial] [--check DIR]
//! ```
//!
//! `--model NAME` times any preset of [`convnet::models::zoo`] (`resnext50_32x4d`,
//! `mobilenet_v2`, `ResNet50V2`, `MobileNetV2`, ...; default: the seed's `keras/ResNet50`).
//! Random (deterministic, He-scaled) weights unless `--weights` names a weights file (Keras
//! HDF5, `.pth` or `.safetensors`).
//! `--profile` prints the time of each layer (median over the iterations) before the summary;
//! `--unfused` times the layer-by-layer forward pass instead, for comparison; `--no-winograd`
//! computes the 3x3 convolutions by direct GEMM instead of Winograd F(2x2, 3x3);
//! `--no-fuse-blocks` runs an inverted residual block's three convolutions one by one (see
//! [`InferenceOptions::fuse_blocks`]); `--check DIR`
//! first compares the output on `DIR/check_input.npy` with `DIR/check_probs.npy` (written by
//! `benches/compare/export_onnx.py` or `export_torchvision_onnx.py` from onnxruntime: the
//! probabilities, or a torchvision preset's logits). The last line printed is one JSON object
//! (`model`: `resnet50-keras` for the seed's network, else the preset's name):
//! `{"model": "resnet50-keras", "batch": N, "threads": T, "iters": K, "median_ms": ..., "p10_ms": ...,
//!   "p90_ms": ..., "images_per_s": ..., "peak_rss_mib": ..., "gemm_kernel": "avx512"}`
//! (`gemm_kernel`: the micro-kernel that ran, `CONVNET_GEMM_KERNEL` forces another one).

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use convnet::imagenet::image::Preprocessing;
use convnet::inference::{BatchSchedule, CompiledModel, InferenceOptions};
use convnet::layers::{LayerPath, ParamKind, ParamVisitor};
use convnet::models::zoo;
use convnet::weights::{LoadOptions, WeightFile};
use ndarray::{ArrayD, ArrayViewMutD, IxDyn};

/// Times ResNet50 (or another ImageNet preset) on the compiled path.
#[derive(Parser)]
#[command(name = "bench_resnet50")]
struct Args {
    /// The ImageNet preset (models::zoo): the seed's Keras ResNet50 by default.
    #[arg(long, default_value = "keras/ResNet50")]
    model: String,
    /// A weights file for it (default: deterministic random weights).
    #[arg(long)]
    weights: Option<String>,
    /// Images per batch.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    batch: u64,
    /// Threads (default: all available cores).
    #[arg(long, default_value_t = default_threads(), value_parser = clap::value_parser!(u64).range(1..))]
    threads: u64,
    /// Timed iterations.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    iters: u64,
    /// Untimed iterations first.
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Print the median time of each layer.
    #[arg(long)]
    profile: bool,
    /// Time the layer-by-layer (reference) forward pass instead.
    #[arg(long)]
    unfused: bool,
    /// Compute 3x3 convolutions by direct GEMM instead of Winograd.
    #[arg(long)]
    no_winograd: bool,
    /// Run each inverted residual block's convolutions one by one instead of as one op.
    #[arg(long)]
    no_fuse_blocks: bool,
    /// How a batch is spread over the threads.
    #[arg(long, value_enum, default_value_t = Schedule::Auto)]
    schedule: Schedule,
    /// Compare with onnxruntime's output in DIR first (check_input.npy, check_probs.npy).
    #[arg(long, value_name = "DIR")]
    check: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Schedule {
    Auto,
    Lanes,
    Serial,
}

fn default_threads() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
}

/// He-uniform kernels, BatchNorm statistics near identity, from a fixed seed.
struct RandomWeights(u64);

impl ParamVisitor for RandomWeights {
    fn visit(&mut self, _: &LayerPath, kind: ParamKind, mut v: ArrayViewMutD<'_, f32>) -> convnet::Result<()> {
        let fan_in: usize = v.shape().iter().rev().skip(1).product::<usize>().max(1);
        let limit = (6.0 / fan_in as f32).sqrt();
        v.mapv_inplace(|_| {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let r = (self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            match kind {
                ParamKind::Kernel => 2.0 * limit * r,
                ParamKind::Gamma => 1.0 + 0.2 * r,
                ParamKind::MovingVariance => 1.0 + r.abs(),
                _ => 0.1 * r,
            }
        });
        Ok(())
    }
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((p * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1)]
}

fn run(a: Args) -> convnet::Result<()> {
    let preset = zoo::find(&a.model)?;
    let mut boxed = preset.build()?;
    match &a.weights {
        Some(path) => {
            WeightFile::open(path)?.load_into(boxed.as_mut(), &LoadOptions::strict())?;
        }
        None => boxed.visit_params_mut(&mut Default::default(), &mut RandomWeights(42))?,
    }
    let model = boxed.as_ref();
    let options = InferenceOptions {
        threads: a.threads as usize,
        winograd: !a.no_winograd,
        fuse_blocks: !a.no_fuse_blocks,
        schedule: match a.schedule {
            Schedule::Auto => BatchSchedule::Auto,
            Schedule::Lanes => BatchSchedule::ImageLanes,
            Schedule::Serial => BatchSchedule::ImageSerial,
        },
        ..Default::default()
    };
    if let Some(dir) = &a.check {
        use ndarray_npy::ReadNpyExt;
        let read = |name: &str| {
            let path = format!("{dir}/{name}");
            let f = std::fs::File::open(&path).map_err(|e| convnet::Error::Io {
                path: path.clone(),
                source: e,
            })?;
            ArrayD::<f32>::read_npy(f).map_err(|e| convnet::Error::Format {
                format: "npy",
                path,
                reason: e.to_string(),
            })
        };
        let (input, want) = (read("check_input.npy")?, read("check_probs.npy")?);
        let got = CompiledModel::new(model, &[224, 224, 3], &options)?.run(&input)?;
        if got.shape() != want.shape() {
            return Err(convnet::Error::Shape {
                layer: "--check".into(),
                expected: format!("the model's output shape {:?}", got.shape()),
                got: format!("{:?} in check_probs.npy", want.shape()),
            });
        }
        let diff = got.iter().zip(want.iter()).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        let what = if preset.softmax { "probabilities" } else { "logits" };
        println!(
            "check against onnxruntime: {} images, max abs difference of the {what} {diff:e}",
            input.shape()[0]
        );
    }
    // A deterministic image-like batch, at the scale the preset's preprocessing gives.
    let scale = if preset.preprocessing == Preprocessing::KerasCaffe {
        1.0
    } else {
        1.0 / 128.0
    };
    let x = ArrayD::from_shape_fn(IxDyn(&[a.batch as usize, 224, 224, 3]), |i| {
        (((i[1] * 7 + i[2] * 13 + i[3] * 29 + i[0]) % 255) as f32 - 120.0) * scale
    });
    let mut times = Vec::with_capacity(a.iters as usize);
    let mut per_layer: Vec<(String, Vec<f64>)> = Vec::new();
    let mut fast = if a.unfused {
        None
    } else {
        Some(CompiledModel::new(model, &[224, 224, 3], &options)?)
    };
    let mut out = vec![0.0; a.batch as usize * 1000];
    for i in 0..a.warmup + a.iters {
        let t = Instant::now();
        match &mut fast {
            None => {
                model.forward(&x)?;
            }
            Some(fast) if a.profile && i >= a.warmup => {
                let layers = fast.profile(&x)?;
                if per_layer.is_empty() {
                    per_layer = layers.iter().map(|(n, _)| (n.clone(), Vec::new())).collect();
                }
                for ((_, v), (_, d)) in per_layer.iter_mut().zip(&layers) {
                    v.push(d.as_secs_f64() * 1e3);
                }
            }
            Some(fast) => fast.run_into(x.view(), &mut out)?,
        }
        if i >= a.warmup {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    if a.profile && !per_layer.is_empty() {
        let rows: Vec<(String, f64)> = per_layer
            .into_iter()
            .map(|(n, mut v)| {
                v.sort_by(f64::total_cmp);
                (n, v[v.len() / 2])
            })
            .collect();
        let total: f64 = rows.iter().map(|r| r.1).sum();
        println!("per-layer medians (ms), {} kernel calls, sum {total:.2} ms:", rows.len());
        for (n, t) in &rows {
            println!("  {n:<40} {t:8.3}  {:5.1}%", 100.0 * t / total);
        }
    }
    times.sort_by(f64::total_cmp);
    let median = percentile(&times, 0.5);
    let round2 = |v: f64| (v * 100.0).round() / 100.0;
    let line = serde_json::json!({
        "model": if preset.name == "keras/ResNet50" { "resnet50-keras" } else { preset.name },
        "batch": a.batch,
        "threads": if a.unfused { 0 } else { a.threads },
        "iters": a.iters,
        "median_ms": round2(median),
        "p10_ms": round2(percentile(&times, 0.1)),
        "p90_ms": round2(percentile(&times, 0.9)),
        "images_per_s": round2(a.batch as f64 * 1000.0 / median),
        "peak_rss_mib": (peak_rss_mib() * 10.0).round() / 10.0,
        "gemm_kernel": if a.unfused { "matrixmultiply (layer path)" } else { convnet::kernels::packed_gemm::gemm_kernel().name() },
    });
    println!("{line}");
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
