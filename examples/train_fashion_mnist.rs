//! Trains a small-image ResNet on Fashion-MNIST (60,000 training and 10,000 test images,
//! 28x28 grey, MIT licence), read from Debian's `dataset-fashion-mnist` package.
//!
//! ```text
//! sudo apt-get install dataset-fashion-mnist
//! cargo run --release --example train_fashion_mnist -- [--epochs N] [--batch N] [--threads T] [--out DIR] [--resume DIR] [--json]
//! ```
//!
//! ResNet-20 (3x3 stride-1 stem, BasicBlocks at 16/32/64, 1x1-projection shortcuts, 272,186
//! parameters for one input channel), Nesterov SGD with momentum 0.9 and weight decay 5e-4,
//! a cosine schedule with a one-epoch linear warm-up, random 2-pixel shifts and horizontal
//! flips prepared on a loader thread. Each epoch shows a progress bar (running loss, accuracy,
//! images/s), then the test accuracy. After every epoch the run is checkpointed in
//! `OUT/last/` (model, optimizer state and `progress.json`), and the best model so far is
//! saved as `OUT/best.safetensors` (PyTorch names, with `OUT/classes.txt`). `--resume
//! OUT/last` continues an interrupted run where it stopped and ends where an uninterrupted run
//! ends, bit for bit. `--json` prints one JSON line per epoch instead of the progress bars.
//!
//! The data directory comes from `--data`, else `CONVNET_FASHION_MNIST`, else the package's
//! `/usr/share/datasets/fashion-mnist`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use convnet::data::idx::{fashion_mnist, FASHION_MNIST_CLASSES, FASHION_MNIST_DIR};
use convnet::data::{Augmentation, Dataset, Loader, LoaderConfig};
use convnet::inference::{CompiledModel, InferenceOptions};
use convnet::init::{initialize, InitScheme};
use convnet::models::{ResNet, ResNetConfig};
use convnet::train::{load_checkpoint, save_checkpoint, LrSchedule, Optimizer, Rule, Trainer, TrainingMode};
use convnet::weights::{save_safetensors, Convention};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

/// Trains a ResNet on Fashion-MNIST.
#[derive(Parser)]
#[command(name = "train_fashion_mnist")]
struct Args {
    /// The folder holding the four IDX files (default: $CONVNET_FASHION_MNIST, else Debian's).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Epochs in the whole run (a resumed run continues up to this many).
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u64).range(1..))]
    epochs: u64,
    /// Images per batch.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..))]
    batch: u64,
    /// Threads (0: every core).
    #[arg(long, default_value_t = 0)]
    threads: u64,
    /// Peak learning rate.
    #[arg(long, default_value_t = 0.1)]
    lr: f32,
    /// Network depth, 6n + 2 (8, 14, 20, 32, ...).
    #[arg(long, default_value_t = 20)]
    depth: usize,
    /// Seed of the initial weights, the shuffling and the augmentation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where checkpoints and the best model go.
    #[arg(long, default_value = "fashion-mnist-run")]
    out: PathBuf,
    /// Continue from a checkpoint folder (`OUT/last`).
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// One JSON line per epoch instead of progress bars.
    #[arg(long)]
    json: bool,
    /// Train on the first N training images only (quick runs).
    #[arg(long)]
    limit: Option<usize>,
    /// Test on the first N test images only.
    #[arg(long)]
    test_limit: Option<usize>,
    /// Stop after this many epochs of this invocation (to try `--resume`).
    #[arg(long)]
    stop_after: Option<u64>,
}

/// What `OUT/last/progress.json` records besides the model and the optimizer.
struct Progress {
    epochs_done: u64,
    best_accuracy: f64,
    best_epoch: u64,
}

fn data_dir(args: &Args) -> PathBuf {
    args.data
        .clone()
        .or_else(|| std::env::var_os("CONVNET_FASHION_MNIST").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(FASHION_MNIST_DIR))
}

fn load_data(args: &Args) -> Result<(Dataset, Dataset), String> {
    let dir = data_dir(args);
    if !dir.join("train-images-idx3-ubyte.gz").is_file() && !dir.join("train-images-idx3-ubyte").is_file() {
        return Err(format!(
            "no Fashion-MNIST in {}: install Debian's package (sudo apt-get install dataset-fashion-mnist), \
             or pass --data DIR (or set CONVNET_FASHION_MNIST) to a folder holding train-images-idx3-ubyte.gz, \
             train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz",
            dir.display()
        ));
    }
    let (mut train, mut test) = fashion_mnist(&dir).map_err(|e| e.to_string())?;
    if let Some(n) = args.limit.filter(|&n| n < train.len()) {
        train = train.split_at(n).map_err(|e| e.to_string())?.0;
    }
    if let Some(n) = args.test_limit.filter(|&n| n < test.len()) {
        test = test.split_at(n).map_err(|e| e.to_string())?.0;
    }
    let (mean, std) = train.channel_stats();
    train.normalize(&mean, &std).map_err(|e| e.to_string())?;
    test.normalize(&mean, &std).map_err(|e| e.to_string())?;
    Ok((train, test))
}

/// Test accuracy on the compiled inference path (BatchNorm with its running statistics).
fn accuracy(model: &ResNet, data: &Dataset, threads: usize) -> Result<f64, String> {
    let options = InferenceOptions {
        threads,
        ..InferenceOptions::default()
    };
    let mut compiled = CompiledModel::new(model, &data.image_shape(), &options).map_err(|e| e.to_string())?;
    let mut right = 0;
    let indices: Vec<usize> = (0..data.len()).collect();
    for chunk in indices.chunks(500) {
        let (x, labels) = data.batch(chunk).map_err(|e| e.to_string())?;
        let logits = compiled.run(&x).map_err(|e| e.to_string())?;
        for (row, &label) in logits.outer_iter().zip(&labels) {
            right += usize::from(argmax(row) == Some(label));
        }
    }
    Ok(right as f64 / data.len().max(1) as f64)
}

/// The index of a row's largest score.
fn argmax(row: ndarray::ArrayViewD<'_, f32>) -> Option<usize> {
    row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i)
}

fn write_progress(dir: &Path, p: &Progress) -> Result<(), String> {
    let text = json!({"epochs_done": p.epochs_done, "best_accuracy": p.best_accuracy, "best_epoch": p.best_epoch}).to_string();
    std::fs::write(dir.join("progress.json"), text).map_err(|e| format!("{}: {e}", dir.display()))
}

fn read_progress(dir: &Path) -> Result<Progress, String> {
    let path = dir.join("progress.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e} (is this a checkpoint folder, OUT/last?)", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let field = |k: &str| v.get(k).ok_or_else(|| format!("{}: no {k}", path.display()));
    Ok(Progress {
        epochs_done: field("epochs_done")?.as_u64().ok_or("epochs_done is not a count")?,
        best_accuracy: field("best_accuracy")?.as_f64().ok_or("best_accuracy is not a number")?,
        best_epoch: field("best_epoch")?.as_u64().ok_or("best_epoch is not a count")?,
    })
}

fn run(args: Args) -> Result<(), String> {
    let (train, test) = load_data(&args)?;
    let train = Arc::new(train);
    let config = ResNetConfig::small_image_resnet(args.depth, train.image_shape(), 10).map_err(|e| e.to_string())?;
    let mut model = ResNet::new(config).map_err(|e| e.to_string())?;
    initialize(&mut model, &InitScheme::torchvision_resnet(), args.seed).map_err(|e| e.to_string())?;
    let batch = args.batch as usize;
    let steps_per_epoch = train.len().div_ceil(batch) as u64;
    let schedule = LrSchedule::CosineWithWarmup {
        warmup: steps_per_epoch,
        total: steps_per_epoch * args.epochs,
        min_lr: 0.0,
    };
    let mut sgd = Optimizer::new(Rule::sgd(0.9, 5e-4, true));
    let mut progress = Progress {
        epochs_done: 0,
        best_accuracy: 0.0,
        best_epoch: 0,
    };
    if let Some(dir) = &args.resume {
        load_checkpoint(dir, &mut model, &mut sgd).map_err(|e| format!("resuming from {}: {e}", dir.display()))?;
        progress = read_progress(dir)?;
        if sgd.steps() != progress.epochs_done * steps_per_epoch {
            return Err(format!(
                "{} holds {} optimizer steps after {} epochs, not {} steps per epoch: resume with the run's own --batch and data",
                dir.display(),
                sgd.steps(),
                progress.epochs_done,
                steps_per_epoch
            ));
        }
    }
    // No gradient for the images themselves (it would only cost the stem's input gradient).
    let mode = TrainingMode {
        input_gradient: false,
        ..TrainingMode::default()
    };
    let trainer = Trainer::new(mode, args.threads as usize).map_err(|e| e.to_string())?;
    let threads = trainer.threads();
    // A blank (black) pixel after normalisation fills what a shift uncovers.
    let blank = train.images().iter().copied().fold(f32::INFINITY, f32::min);
    let loader = LoaderConfig {
        batch,
        seed: args.seed,
        drop_last: false,
        augmentation: Some(Augmentation {
            pad: 2,
            fill: blank,
            flip: true,
        }),
        prefetch: 3,
    };
    if !args.json {
        println!(
            "{}: {} training and {} test images, {} threads, epochs {}..={}",
            model.config().name,
            train.len(),
            test.len(),
            threads,
            progress.epochs_done + 1,
            args.epochs
        );
    }
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    for (ran, epoch) in (progress.epochs_done..args.epochs).enumerate() {
        if args.stop_after.is_some_and(|n| ran as u64 >= n) {
            break;
        }
        let start = Instant::now();
        let bar = if args.json {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(steps_per_epoch).with_style(
                ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed} < {eta})")
                    .map_err(|e| e.to_string())?
                    .progress_chars("=> "),
            )
        };
        bar.set_prefix(format!("{}/{}", epoch + 1, args.epochs));
        let (mut loss_sum, mut right, mut seen) = (0.0f64, 0usize, 0usize);
        for b in Loader::epoch(Arc::clone(&train), &loader, epoch).map_err(|e| e.to_string())? {
            let b = b.map_err(|e| e.to_string())?;
            let step = trainer
                .compute_gradients(&model, &b.images, &b.labels, 0.0)
                .map_err(|e| e.to_string())?;
            step.apply_running_stats(&mut model).map_err(|e| e.to_string())?;
            let lr = schedule.lr(args.lr, sgd.steps());
            sgd.step(&mut model, &step.gradients, lr).map_err(|e| e.to_string())?;
            loss_sum += step.loss as f64 * b.labels.len() as f64;
            seen += b.labels.len();
            for (row, &label) in step.output.outer_iter().zip(&b.labels) {
                right += usize::from(argmax(row) == Some(label));
            }
            trainer.recycle(step);
            let secs = start.elapsed().as_secs_f64();
            bar.set_message(format!(
                "loss {:.4} acc {:.2}% {:.0} img/s",
                loss_sum / seen as f64,
                100.0 * right as f64 / seen as f64,
                seen as f64 / secs
            ));
            bar.inc(1);
        }
        bar.finish();
        let train_secs = start.elapsed().as_secs_f64();
        let acc = accuracy(&model, &test, threads)?;
        let improved = acc > progress.best_accuracy;
        progress.epochs_done = epoch + 1;
        if improved {
            progress.best_accuracy = acc;
            progress.best_epoch = epoch + 1;
            save_safetensors(&model, args.out.join("best.safetensors"), Convention::Torch).map_err(|e| e.to_string())?;
            std::fs::write(args.out.join("classes.txt"), FASHION_MNIST_CLASSES.join("\n") + "\n").map_err(|e| e.to_string())?;
        }
        let last = args.out.join("last");
        save_checkpoint(&last, &model, &sgd).map_err(|e| e.to_string())?;
        write_progress(&last, &progress)?;
        let line = json!({
            "epoch": epoch + 1,
            "train_loss": loss_sum / seen.max(1) as f64,
            "train_accuracy": right as f64 / seen.max(1) as f64,
            "test_accuracy": acc,
            "best_test_accuracy": progress.best_accuracy,
            "seconds": (train_secs * 10.0).round() / 10.0,
            "images_per_s": (seen as f64 / train_secs).round(),
            "threads": threads,
        });
        if args.json {
            println!("{line}");
        } else {
            println!(
                "epoch {}: test accuracy {:.2}%{} ({:.0} s, {:.0} images/s)",
                epoch + 1,
                100.0 * acc,
                if improved { ", the best so far: saved" } else { "" },
                train_secs,
                seen as f64 / train_secs
            );
        }
    }
    if !args.json {
        println!(
            "best test accuracy {:.2}% (epoch {}), model in {}",
            100.0 * progress.best_accuracy,
            progress.best_epoch,
            args.out.join("best.safetensors").display()
        );
    }
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
