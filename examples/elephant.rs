//! The seed program: build the Keras ResNet50, load
//! `resnet50_weights_tf_dim_ordering_tf_kernels.h5`, print `model.summary()`, read
//! `elephant.jpg`, preprocess it as Keras does, and print the top ImageNet predictions.
//!
//! ```text
//! cargo run --release --example elephant -- [IMAGE] [--model NAME] [--weights FILE] [--top N] [--json] [--no-summary]
//! ```
//!
//! `--model NAME` classifies with another ImageNet preset of [`convnet::models::zoo`] instead
//! of the seed's Keras ResNet50, each with its own framework's preprocessing and weights file:
//! `ResNet50V2`, `ResNet101V2`, `ResNet152V2`, `MobileNetV2`, `MobileNetV2_0.35` (Keras, "tf"
//! mode), `resnet18` ... `resnet152`, `resnext50_32x4d`, `resnext101_32x8d`,
//! `resnext101_64x4d`, `wide_resnet50_2`, `wide_resnet101_2`, `mobilenet_v2` (torchvision,
//! resize 256, crop 224, mean/std); `--list-models` prints them with their weights files.
//!
//! `--width-divisor N` builds the same network with every width divided by N, to run the whole
//! program on the reduced reference fixtures (`tests/fixtures/keras_resnet50_w8`, N = 8).
//!
//! IMAGE defaults to `elephant.jpg` in the working directory, else the photo Keras' own tests
//! use (downloaded into the cache). Weights come from `--weights`, else the cache
//! (`$CONVNET_CACHE`, `$XDG_CACHE_HOME/convnet` or `~/.cache/convnet`), else Keras' own cache
//! `~/.keras/models/`, else they are downloaded from their release URL and md5-verified.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
#[cfg(feature = "download")]
use convnet::remote::KERAS_ELEPHANT_JPG;
use convnet::remote::{cache_dir, Remote};

use convnet::budget::LoadBudget;
use convnet::imagenet::{decode_logits, decode_predictions, Prediction};
use convnet::models::zoo::{self, Preset};
use convnet::weights::{LoadOptions, WeightFile};

/// The seed program, from the command line.
#[derive(Parser)]
#[command(name = "elephant", about = "Classify an image with the Keras ResNet50, as the seed program does")]
struct Args {
    /// The image (PNG or JPEG); default: elephant.jpg here, else Keras' test photo (downloaded).
    image: Option<PathBuf>,
    /// The ImageNet preset (see --list-models): Keras' ResNet50 by default.
    #[arg(long, default_value = "keras/ResNet50")]
    model: String,
    /// Print the presets and their weights files, then exit.
    #[arg(long)]
    list_models: bool,
    /// The weights file (Keras .h5, PyTorch .pth or .safetensors); default: the cache, Keras'
    /// or torch's cache, else a download.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// How many predictions to print.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1000))]
    top: u64,
    /// Print one JSON object instead of the summary and Python-style lines.
    #[arg(long)]
    json: bool,
    /// Skip the model summary.
    #[arg(long)]
    no_summary: bool,
    /// Divide every width by N (the reduced fixtures in tests/fixtures/keras_resnet50_w8 use 8).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    width_divisor: u64,
}

/// `--weights`, the caches (ours, then Keras' `~/.keras/models` or torch's
/// `~/.cache/torch/hub/checkpoints`), or a download.
fn find_weights(explicit: Option<PathBuf>, remote: &Remote, quiet: bool) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return Ok(p); // the loader refuses what is not a readable regular file
    }
    let file = remote.file_name;
    let mut candidates = vec![cache_dir().join(file)];
    if let Some(home) = std::env::var_os("HOME") {
        for framework_cache in [".keras/models", ".cache/torch/hub/checkpoints"] {
            candidates.push(Path::new(&home).join(framework_cache).join(file));
        }
    }
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    download_weights(remote, quiet).map_err(|e| {
        let md5 = remote.md5.map_or(String::new(), |m| format!(" (md5 {m})"));
        format!(
            "{e}\n\nThe pretrained weights are needed: download {}{md5}\nand either pass it with --weights FILE or put it at {}.",
            remote.url,
            candidates[0].display()
        )
    })
}

#[cfg(feature = "download")]
fn download_weights(remote: &Remote, quiet: bool) -> Result<PathBuf, String> {
    if !quiet {
        eprintln!("Downloading {}", remote.url);
    }
    convnet::download::fetch_cached(remote, &cache_dir(), !quiet).map_err(|e| e.to_string())
}

#[cfg(not(feature = "download"))]
fn download_weights(_remote: &Remote, _quiet: bool) -> Result<PathBuf, String> {
    Err("the weights are not cached and this build has no `download` feature".into())
}

/// The image argument, `elephant.jpg` here, or Keras' test photo (downloaded).
fn find_image(explicit: Option<PathBuf>, quiet: bool) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let local = PathBuf::from("elephant.jpg");
    if local.is_file() {
        return Ok(local);
    }
    download_elephant(quiet).map_err(|e| format!("{e}\n\nNo image given and no elephant.jpg in the working directory: pass an image path."))
}

#[cfg(feature = "download")]
fn download_elephant(quiet: bool) -> Result<PathBuf, String> {
    convnet::download::fetch_cached(&KERAS_ELEPHANT_JPG, &cache_dir(), !quiet).map_err(|e| e.to_string())
}

#[cfg(not(feature = "download"))]
fn download_elephant(_quiet: bool) -> Result<PathBuf, String> {
    Err("this build has no `download` feature".into())
}

/// Python's repr of a list of tuples, as the seed prints `decode_predictions`' result.
fn python_repr(preds: &[Prediction]) -> String {
    let items: Vec<String> = preds
        .iter()
        .map(|p| format!("('{}', '{}', {})", p.wnid, p.label, p.probability))
        .collect();
    format!("[{}]", items.join(", "))
}

/// The presets, one line each.
fn list_models() {
    for p in zoo::PRESETS {
        let pre = format!("{:?}", p.preprocessing);
        println!("{:<30} {:<12} {}", p.name, pre, p.weights.file_name);
    }
}

fn run(args: Args) -> Result<(), String> {
    if args.list_models {
        list_models();
        return Ok(());
    }
    let quiet = args.json;
    let preset: &Preset = zoo::find(&args.model).map_err(|e| e.to_string())?;
    let mut model = preset
        .build_with_width_divisor(args.width_divisor as usize)
        .map_err(|e| e.to_string())?;
    let weights_path = find_weights(args.weights, &preset.weights, quiet)?;
    // Decode only what the model takes, within the default budget.
    let weights = WeightFile::open_for_model(&weights_path, model.as_ref(), &LoadBudget::default()).map_err(|e| e.to_string())?;
    weights
        .load_into(model.as_mut(), &LoadOptions::strict())
        .map_err(|e| e.to_string())?;
    if !args.no_summary && !args.json {
        println!("{}", preset.summary(model.as_ref()).map_err(|e| e.to_string())?);
    }
    let image = find_image(args.image, quiet)?;
    let x = preset.preprocessing.input_from_file(&image).map_err(|e| e.to_string())?;
    let shape: Vec<String> = x.shape().iter().map(usize::to_string).collect();
    let out = model.forward(&x).map_err(|e| e.to_string())?;
    // Keras' presets end in a softmax; torchvision's give logits.
    let decoded = if preset.softmax {
        decode_predictions(&out, args.top as usize)
    } else {
        decode_logits(&out, args.top as usize)
    };
    let top = decoded.map_err(|e| e.to_string())?.remove(0);
    if args.json {
        let predictions: Vec<serde_json::Value> = top
            .iter()
            .map(|p| serde_json::json!({"wnid": p.wnid, "label": p.label, "probability": p.probability}))
            .collect();
        let line = serde_json::json!({"image": image.display().to_string(), "model": preset.name, "predictions": predictions});
        println!("{line}");
    } else {
        println!("Input image shape: ({})", shape.join(", "));
        println!("Predicted: {}", python_repr(&top));
    }
    Ok(())
}

fn main() -> ExitCode {
    // clap reads paths as OsStrings (non-UTF-8 names work) and exits with status 2 and a
    // usage message on a bad command line.
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}
