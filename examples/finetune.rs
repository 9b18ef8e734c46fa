//! Fine-tunes a pretrained ResNet50 on a folder of your own images, then classifies with it.
//!
//! ```text
//! cargo run --release --example finetune -- --weights resnet50_weights_tf_dim_ordering_tf_kernels.h5 --data photos/ [--epochs N] [--unfreeze-last-stage] [--out DIR]
//! cargo run --release --example finetune -- --classify DIR IMAGE...
//! ```
//!
//! `--data` holds one sub-folder of JPEG/PNG images per class (Keras'
//! `image_dataset_from_directory` and torchvision's `ImageFolder` layout; classes in sorted
//! order). The backbone loads by layer name from a Keras `.h5` (the seed's weights file; Keras
//! preprocessing) or a torchvision `.pth` / `.safetensors` (torchvision's), its 1000-class head
//! is replaced by one of N classes, and the backbone is frozen (BatchNorm in inference mode):
//! only the head trains, with Adam. `--unfreeze-last-stage` also trains the last
//! residual stage, at `--stage-lr-factor` times the head's learning rate. A fifth of each class
//! (`--val-fraction`) is held out, and the validation accuracy printed after each epoch.
//! Images that do not decode are skipped and counted.
//!
//! The best epoch's model is saved in `OUT/` (`model.safetensors` and `finetune.json`, which
//! names the architecture, the input size, the preprocessing and the class names), and
//! `--classify OUT IMAGE...` prints each image's top classes with it, as the elephant example
//! does with ImageNet's. `--width-divisor 8` takes the reduced reference networks of
//! `tests/fixtures/`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use convnet::data::{Augmentation, BatchSource, FolderOptions, ImageFolder, Loader, LoaderConfig, Preprocess};
use convnet::inference::{CompiledModel, InferenceOptions};
use convnet::init::{initialize, InitScheme};
use convnet::models::{Depth, ResNet, ResNetConfig};
use convnet::train::{Gradients, Optimizer, Rule, Trainer, TrainingMode};
use convnet::weights::{save_safetensors, Convention, LoadOptions, WeightFile};
use serde_json::json;

/// Fine-tunes a ResNet50 on an image folder, or classifies images with the result.
#[derive(Parser)]
#[command(name = "finetune")]
struct Args {
    /// The pretrained backbone: a Keras `.h5`, or a torchvision `.pth` / `.safetensors`.
    #[arg(long, required_unless_present = "classify")]
    weights: Option<PathBuf>,
    /// The image folder (one sub-folder per class).
    #[arg(long, required_unless_present = "classify")]
    data: Option<PathBuf>,
    /// The backbone's width divisor (8 for the reference fixtures; 1 for the real ResNet50).
    #[arg(long, default_value_t = 1)]
    width_divisor: usize,
    /// Input side the images are resized to.
    #[arg(long, default_value_t = 224)]
    size: usize,
    /// Epochs.
    #[arg(long, default_value_t = 5)]
    epochs: u64,
    /// Images per batch.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    batch: u64,
    /// The head's learning rate (Adam).
    #[arg(long, default_value_t = 0.001)]
    lr: f32,
    /// Also train the last residual stage.
    #[arg(long)]
    unfreeze_last_stage: bool,
    /// The last stage's learning rate, as a fraction of the head's.
    #[arg(long, default_value_t = 0.1)]
    stage_lr_factor: f32,
    /// Fraction of each class held out for validation.
    #[arg(long, default_value_t = 0.2)]
    val_fraction: f64,
    /// Threads (0: every core).
    #[arg(long, default_value_t = 0)]
    threads: u64,
    /// Seed of the head's initial weights, the split, the shuffling and the flips.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where the fine-tuned model goes.
    #[arg(long, default_value = "finetuned")]
    out: PathBuf,
    /// One JSON line per epoch.
    #[arg(long)]
    json: bool,
    /// Classify images with the fine-tuned model in DIR (then give the images).
    #[arg(long, value_name = "DIR")]
    classify: Option<PathBuf>,
    /// The images to classify.
    images: Vec<PathBuf>,
}

/// The backbone family a weights file belongs to.
#[derive(Clone, Copy, PartialEq)]
enum Family {
    Keras,
    Torchvision,
}

impl Family {
    fn of(path: &Path) -> Family {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("h5" | "hdf5" | "keras") => Family::Keras,
            _ => Family::Torchvision,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Family::Keras => "keras",
            Family::Torchvision => "torchvision",
        }
    }

    fn parse(s: &str) -> Result<Family, String> {
        match s {
            "keras" => Ok(Family::Keras),
            "torchvision" => Ok(Family::Torchvision),
            _ => Err(format!("unknown architecture {s:?} in finetune.json")),
        }
    }

    /// ResNet50 of this family with a global-average-pooling head of `classes`, taking
    /// `size` x `size` images. (Keras: the applications' layout with the seed's names, so the
    /// seed's weights file loads and any input size works.)
    fn config(self, divisor: usize, size: usize, classes: usize) -> ResNetConfig {
        let base = match self {
            Family::Keras => ResNetConfig::keras_applications_resnet50(),
            Family::Torchvision => ResNetConfig::torchvision(Depth::R50),
        };
        base.with_width_divisor(divisor)
            .with_classes(classes)
            .with_input_shape([size, size, 3])
    }

    fn preprocess(self) -> Preprocess {
        match self {
            Family::Keras => Preprocess::KerasCaffe,
            Family::Torchvision => Preprocess::Torchvision,
        }
    }

    fn head(self) -> &'static str {
        match self {
            Family::Keras => "fc1000",
            Family::Torchvision => "fc",
        }
    }

    /// Whether the top-level layer `name` belongs to the last residual stage.
    fn in_last_stage(self, name: &str) -> bool {
        match self {
            Family::Keras => name.starts_with("res5") || name.starts_with("bn5"),
            Family::Torchvision => name == "layer4",
        }
    }
}

fn accuracy(model: &ResNet, data: &ImageFolder, threads: usize) -> Result<f64, String> {
    let options = InferenceOptions {
        threads,
        ..InferenceOptions::default()
    };
    let mut compiled = CompiledModel::new(model, &data.image_shape(), &options).map_err(|e| e.to_string())?;
    let all: Vec<usize> = (0..data.len()).collect();
    let mut right = 0;
    for chunk in all.chunks(32) {
        let (x, labels) = data.batch(chunk).map_err(|e| e.to_string())?;
        let out = compiled.run(&x).map_err(|e| e.to_string())?;
        for (row, &label) in out.outer_iter().zip(&labels) {
            let best = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i);
            right += usize::from(best == Some(label));
        }
    }
    Ok(right as f64 / data.len().max(1) as f64)
}

/// Splits `g` into the last stage's gradients and the rest (the head's).
fn split_gradients(g: &Gradients, family: Family) -> (Gradients, Gradients) {
    let empty = || Gradients {
        params: Default::default(),
        input: Default::default(),
        node_times: Vec::new(),
    };
    let (mut stage, mut head) = (empty(), empty());
    for (k, v) in &g.params {
        let top = k.0.to_string();
        let top = top.split('/').next().unwrap_or_default().to_string();
        let dst = if family.in_last_stage(&top) { &mut stage } else { &mut head };
        dst.params.insert(k.clone(), v.clone());
    }
    (stage, head)
}

fn train(args: &Args) -> Result<(), String> {
    let (Some(weights), Some(data)) = (&args.weights, &args.data) else {
        return Err("--weights and --data are needed to fine-tune".into());
    };
    let family = Family::of(weights);
    let folder = ImageFolder::open(data, &FolderOptions::new([args.size, args.size], family.preprocess())).map_err(|e| e.to_string())?;
    let classes = folder.classes().to_vec();
    if classes.len() < 2 {
        return Err(format!("{} holds one class folder; fine-tuning needs two or more", data.display()));
    }
    for s in folder.skipped() {
        eprintln!("skipped {}: {}", s.path.display(), s.reason);
    }
    let (train_set, val_set) = folder.split(args.val_fraction, args.seed).map_err(|e| e.to_string())?;
    if !args.json {
        println!(
            "{} classes {:?}: {} training and {} validation images, {} unreadable files skipped",
            classes.len(),
            classes,
            train_set.len(),
            val_set.len(),
            folder.skipped().len()
        );
    }
    let mut model = ResNet::new(family.config(args.width_divisor, args.size, classes.len())).map_err(|e| e.to_string())?;
    initialize(&mut model, &InitScheme::torch(), args.seed).map_err(|e| e.to_string())?;
    let file = WeightFile::open(weights).map_err(|e| e.to_string())?;
    let report = file.load_into(&mut model, &LoadOptions::lenient()).map_err(|e| e.to_string())?;
    // Everything but the head must come from the file.
    let head = family.head();
    let foreign: Vec<&String> = report.missing.iter().filter(|m| !m.starts_with(head)).collect();
    if !foreign.is_empty() || report.applied.is_empty() {
        return Err(format!(
            "{} is not a ResNet50 {} backbone of width 1/{}: {} of its parameters are missing ({:?} ...)",
            weights.display(),
            family.name(),
            args.width_divisor,
            foreign.len(),
            foreign.iter().take(3).collect::<Vec<_>>()
        ));
    }
    let layers: Vec<String> = model.network().iter().map(|(n, _)| n.to_string()).collect();
    let frozen: Vec<String> = layers
        .iter()
        .filter(|n| n.as_str() != head && !(args.unfreeze_last_stage && family.in_last_stage(n)))
        .cloned()
        .collect();
    let mode = TrainingMode {
        frozen,
        input_gradient: false,
        ..TrainingMode::default()
    };
    let trainer = Trainer::new(mode, args.threads as usize).map_err(|e| e.to_string())?;
    // Adam: pretrained features can be far from zero-mean and unit-scale, which SGD on a new
    // head handles badly.
    let mut head_sgd = Optimizer::new(Rule::adam(0.0));
    let mut stage_sgd = Optimizer::new(Rule::adam(0.0));
    let train_set = Arc::new(train_set);
    let loader = LoaderConfig {
        batch: args.batch as usize,
        seed: args.seed,
        drop_last: false,
        augmentation: Some(Augmentation {
            pad: args.size / 16,
            fill: 0.0,
            flip: true,
        }),
        prefetch: 2,
    };
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let mut best = -1.0;
    for epoch in 0..args.epochs {
        let (mut loss, mut seen) = (0.0f64, 0usize);
        for b in Loader::epoch(Arc::clone(&train_set), &loader, epoch).map_err(|e| e.to_string())? {
            let b = b.map_err(|e| e.to_string())?;
            let step = trainer
                .compute_gradients(&model, &b.images, &b.labels, 0.0)
                .map_err(|e| e.to_string())?;
            step.apply_running_stats(&mut model).map_err(|e| e.to_string())?;
            let (stage, head_grads) = split_gradients(&step.gradients, family);
            head_sgd.step(&mut model, &head_grads, args.lr).map_err(|e| e.to_string())?;
            if !stage.params.is_empty() {
                stage_sgd
                    .step(&mut model, &stage, args.lr * args.stage_lr_factor)
                    .map_err(|e| e.to_string())?;
            }
            loss += step.loss as f64 * b.labels.len() as f64;
            seen += b.labels.len();
            trainer.recycle(step);
        }
        let acc = accuracy(&model, &val_set, trainer.threads())?;
        let improved = acc > best;
        if improved {
            best = acc;
            save_safetensors(&model, args.out.join("model.safetensors"), Convention::Torch).map_err(|e| e.to_string())?;
            let meta = json!({
                "architecture": family.name(),
                "width_divisor": args.width_divisor,
                "size": args.size,
                "classes": classes,
            });
            std::fs::write(args.out.join("finetune.json"), meta.to_string()).map_err(|e| e.to_string())?;
        }
        let train_loss = loss / seen.max(1) as f64;
        if args.json {
            println!(
                "{}",
                json!({"epoch": epoch + 1, "train_loss": train_loss, "val_accuracy": acc, "best_val_accuracy": best})
            );
        } else {
            println!(
                "epoch {}: training loss {train_loss:.4}, validation accuracy {:.2}%{}",
                epoch + 1,
                100.0 * acc,
                if improved { " (best so far: saved)" } else { "" }
            );
        }
    }
    if !args.json {
        println!("best validation accuracy {:.2}%, model in {}", 100.0 * best, args.out.display());
    }
    Ok(())
}

/// `--classify DIR IMAGE...`: each image's top classes under the fine-tuned model.
fn classify(dir: &Path, images: &[PathBuf], threads: usize, json_out: bool) -> Result<(), String> {
    let meta_path = dir.join("finetune.json");
    let text = std::fs::read_to_string(&meta_path).map_err(|e| format!("{}: {e}", meta_path.display()))?;
    let meta: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", meta_path.display()))?;
    let field = |k: &str| meta.get(k).ok_or_else(|| format!("{}: no {k}", meta_path.display()));
    let family = Family::parse(field("architecture")?.as_str().unwrap_or_default())?;
    let divisor = field("width_divisor")?.as_u64().ok_or("width_divisor is not a count")? as usize;
    let size = field("size")?.as_u64().ok_or("size is not a count")? as usize;
    let classes: Vec<String> = field("classes")?
        .as_array()
        .ok_or("classes is not a list")?
        .iter()
        .map(|c| c.as_str().unwrap_or_default().to_string())
        .collect();
    if images.is_empty() {
        return Err("give the images to classify after --classify DIR".into());
    }
    let mut model = ResNet::new(family.config(divisor, size, classes.len())).map_err(|e| e.to_string())?;
    WeightFile::open(dir.join("model.safetensors"))
        .and_then(|f| f.load_into(&mut model, &LoadOptions::strict()))
        .map_err(|e| e.to_string())?;
    let options = InferenceOptions {
        threads,
        ..InferenceOptions::default()
    };
    let mut compiled = CompiledModel::new(&model, &[size, size, 3], &options).map_err(|e| e.to_string())?;
    for path in images {
        let img = convnet::imagenet::image::load_rgb(path)
            .and_then(|i| i.resize_bilinear(size, size))
            .map_err(|e| e.to_string())?;
        let x = family.preprocess().tensor(&img).map_err(|e| e.to_string())?;
        let out = compiled.run(&x).map_err(|e| e.to_string())?;
        let scores: Vec<f32> = out.iter().copied().collect();
        let probs = if family == Family::Keras { scores } else { softmax(&scores) };
        let mut ranked: Vec<(usize, f32)> = probs.into_iter().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        if json_out {
            let top: Vec<_> = ranked.iter().take(5).map(|&(i, p)| json!([classes[i], p])).collect();
            println!("{}", json!({"image": path.display().to_string(), "top": top}));
        } else {
            let top: Vec<String> = ranked.iter().take(5).map(|&(i, p)| format!("('{}', {p})", classes[i])).collect();
            println!("{}: [{}]", path.display(), top.join(", "));
        }
    }
    Ok(())
}

fn softmax(v: &[f32]) -> Vec<f32> {
    let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = v.iter().map(|x| (x - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

fn main() -> ExitCode {
    let args = Args::parse();
    let r = match &args.classify {
        Some(dir) => classify(dir, &args.images, args.threads as usize, args.json),
        None => train(&args),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
