//! Times training steps: forward, backward, BatchNorm statistics and an SGD-with-momentum
//! update, on random (seeded) data.
//!
//! ```text
//! cargo run --release --example bench_train -- [--model resnet20|resnet50] [--batch N] [--threads T] [--steps K] [--warmup W]
//! ```
//!
//! `resnet20` is the small-image ResNet-20 on 28x28x1 (Fashion-MNIST's shape, 10 classes),
//! `resnet50` torchvision's ResNet50 at 224x224x3 (1000 classes). The last line printed is one
//! JSON object: `{"model", "batch", "threads", "steps", "ms_per_step", "images_per_s",
//! "peak_rss_mib"}`, the time being the median over the timed steps.
//! `benches/compare/train.sh` runs it beside PyTorch.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use convnet::init::{initialize, InitScheme, Rng};
use convnet::models::{Depth, ResNet, ResNetConfig};
use convnet::train::{Optimizer, Rule, Trainer, TrainingMode};
use ndarray::{ArrayD, IxDyn};

/// Times training steps.
#[derive(Parser)]
#[command(name = "bench_train")]
struct Args {
    /// The network.
    #[arg(long, value_enum, default_value_t = Model::Resnet20)]
    model: Model,
    /// Images per batch (default: 128 for resnet20, 16 for resnet50).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    batch: Option<u64>,
    /// Threads (0: every core).
    #[arg(long, default_value_t = 0)]
    threads: u64,
    /// Timed steps.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    steps: u64,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Print where a step's time goes (mean over the timed steps), by op kind and by node.
    #[arg(long)]
    profile: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Model {
    Resnet20,
    Resnet50,
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn run(a: Args) -> convnet::Result<()> {
    let (name, config, default_batch) = match a.model {
        Model::Resnet20 => ("resnet20", ResNetConfig::small_image_resnet(20, [28, 28, 1], 10)?, 128),
        Model::Resnet50 => (
            "resnet50",
            ResNetConfig::torchvision(Depth::R50).with_input_shape([224, 224, 3]),
            16,
        ),
    };
    let batch = a.batch.map_or(default_batch, |b| b as usize);
    let mut model = ResNet::new(config.clone())?;
    initialize(&mut model, &InitScheme::torchvision_resnet(), 0)?;
    let [h, w, c] = config.input_shape;
    let mut rng = Rng::new(1);
    let x = ArrayD::from_shape_simple_fn(IxDyn(&[batch, h, w, c]), || rng.normal() as f32);
    let labels: Vec<usize> = (0..batch).map(|_| rng.below(config.classes)).collect();
    // No gradient for the input images, as in PyTorch (a leaf tensor without requires_grad).
    let mode = TrainingMode {
        input_gradient: false,
        ..TrainingMode::default()
    };
    let trainer = Trainer::new(mode, a.threads as usize)?;
    let mut sgd = Optimizer::new(Rule::sgd(0.9, 0.0, false));
    let mut times = Vec::new();
    // (node, op, forward ms, backward ms) summed over the timed steps.
    let mut nodes: Vec<(String, &'static str, f64, f64)> = Vec::new();
    for i in 0..a.warmup + a.steps {
        let t = Instant::now();
        let step = trainer.compute_gradients(&model, &x, &labels, 0.0)?;
        step.apply_running_stats(&mut model)?;
        sgd.step(&mut model, &step.gradients, 0.01)?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if i >= a.warmup {
            times.push(ms);
            if nodes.is_empty() {
                nodes = step.times.iter().map(|n| (n.name.clone(), n.op, 0.0, 0.0)).collect();
            }
            for (acc, n) in nodes.iter_mut().zip(&step.times) {
                acc.2 += n.forward.as_secs_f64() * 1e3;
                acc.3 += n.backward.as_secs_f64() * 1e3;
            }
        }
        eprintln!("step {i}: {ms:.1} ms, loss {:.4}", step.loss);
        trainer.recycle(step);
    }
    let mean_step = times.iter().sum::<f64>() / times.len() as f64;
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    if a.profile {
        print_profile(&nodes, a.steps as f64, mean_step);
    }
    println!(
        "{}",
        serde_json::json!({
            "model": name,
            "batch": batch,
            "threads": trainer.threads(),
            "steps": a.steps,
            "ms_per_step": (median * 100.0).round() / 100.0,
            "images_per_s": (batch as f64 / (median / 1e3) * 10.0).round() / 10.0,
            "peak_rss_mib": (peak_rss_mib() * 10.0).round() / 10.0,
        })
    );
    Ok(())
}

/// Prints the mean time per step of each op kind and of the slowest nodes.
fn print_profile(nodes: &[(String, &'static str, f64, f64)], steps: f64, step_ms: f64) {
    let mut kinds: Vec<(&str, f64, f64)> = Vec::new();
    for &(_, op, f, b) in nodes {
        match kinds.iter_mut().find(|k| k.0 == op) {
            Some(k) => {
                k.1 += f / steps;
                k.2 += b / steps;
            }
            None => kinds.push((op, f / steps, b / steps)),
        }
    }
    kinds.sort_by(|a, b| (b.1 + b.2).total_cmp(&(a.1 + a.2)));
    let ops: f64 = kinds.iter().map(|k| k.1 + k.2).sum();
    println!("| op | forward ms | backward ms | share of the step |");
    println!("|---|---:|---:|---:|");
    for (op, f, b) in &kinds {
        println!("| {op} | {f:.1} | {b:.1} | {:.0}% |", 100.0 * (f + b) / step_ms);
    }
    println!(
        "| rest (lowering, loss, gradient sums, optimizer, statistics) | | | {:.0}% ({:.1} ms) |",
        100.0 * (step_ms - ops) / step_ms,
        step_ms - ops
    );
    let mut slow: Vec<_> = nodes.iter().collect();
    slow.sort_by(|a, b| (b.2 + b.3).total_cmp(&(a.2 + a.3)));
    println!();
    println!("| slowest nodes | op | forward ms | backward ms |");
    println!("|---|---|---:|---:|");
    for (name, op, f, b) in slow.iter().take(12) {
        println!("| {name} | {op} | {:.1} | {:.1} |", f / steps, b / steps);
    }
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
