//! The seed program: build the Keras ResNet50, load
//! `resnet50_weights_tf_dim_ordering_tf_kernels.h5`, print `model.summary()`, read
//! `elephant.jpg`, preprocess it as Keras does, and print the top ImageNet predictions.
//!
//! ```text
//! cargo run --release --example elephant -- [IMAGE] [--weights FILE] [--top N] [--json] [--no-summary]
//! ```
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
use convnet::remote::{cache_dir, KERAS_RESNET50_WEIGHTS};

use convnet::budget::LoadBudget;
use convnet::imagenet::{decode_predictions, image::keras_resnet_input, Prediction};
use convnet::models::{ResNet, ResNetConfig};
use convnet::weights::{LoadOptions, WeightFile};

/// The seed program, from the command line.
#[derive(Parser)]
#[command(name = "elephant", about = "Classify an image with the Keras ResNet50, as the seed program does")]
struct Args {
    /// The image (PNG or JPEG); default: elephant.jpg here, else Keras' test photo (downloaded).
    image: Option<PathBuf>,
    /// The Keras HDF5 weights file; default: the cache, Keras' cache, else a download.
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

/// `--weights`, the caches, or a download.
fn find_weights(explicit: Option<PathBuf>, quiet: bool) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return Ok(p); // the loader refuses what is not a readable regular file
    }
    let file = KERAS_RESNET50_WEIGHTS.file_name;
    let mut candidates = vec![cache_dir().join(file)];
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".keras/models").join(file));
    }
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    download_weights(quiet).map_err(|e| {
        format!(
            "{e}\n\nThe pretrained weights are needed: download {}\n(md5 {}, 102,853,048 bytes) and either pass it with\n--weights FILE or put it at {}.",
            KERAS_RESNET50_WEIGHTS.url,
            KERAS_RESNET50_WEIGHTS.md5.unwrap_or("unpublished"),
            candidates[0].display()
        )
    })
}

#[cfg(feature = "download")]
fn download_weights(quiet: bool) -> Result<PathBuf, String> {
    if !quiet {
        eprintln!("Downloading {}", KERAS_RESNET50_WEIGHTS.url);
    }
    convnet::download::fetch_cached(&KERAS_RESNET50_WEIGHTS, &cache_dir(), !quiet).map_err(|e| e.to_string())
}

#[cfg(not(feature = "download"))]
fn download_weights(_quiet: bool) -> Result<PathBuf, String> {
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

fn run(args: Args) -> Result<(), String> {
    let quiet = args.json;
    let mut model =
        ResNet::new(ResNetConfig::keras_resnet50().with_width_divisor(args.width_divisor as usize)).map_err(|e| e.to_string())?;
    let weights_path = find_weights(args.weights, quiet)?;
    // Decode only what the model takes, within the default budget.
    let weights = WeightFile::open_for_model(&weights_path, &model, &LoadBudget::default()).map_err(|e| e.to_string())?;
    weights.load_into(&mut model, &LoadOptions::strict()).map_err(|e| e.to_string())?;
    if !args.no_summary && !args.json {
        println!("{}", model.summary().map_err(|e| e.to_string())?);
    }
    let image = find_image(args.image, quiet)?;
    let x = keras_resnet_input(&image).map_err(|e| e.to_string())?;
    let shape: Vec<String> = x.shape().iter().map(usize::to_string).collect();
    let preds = model.forward(&x).map_err(|e| e.to_string())?;
    let top = decode_predictions(&preds, args.top as usize).map_err(|e| e.to_string())?.remove(0);
    if args.json {
        let predictions: Vec<serde_json::Value> = top
            .iter()
            .map(|p| serde_json::json!({"wnid": p.wnid, "label": p.label, "probability": p.probability}))
            .collect();
        let line = serde_json::json!({"image": image.display().to_string(), "predictions": predictions});
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
