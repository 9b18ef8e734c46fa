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

use convnet::budget::LoadBudget;
use convnet::imagenet::{decode_predictions, image::keras_resnet_input, Prediction};
use convnet::models::{ResNet, ResNetConfig};
use convnet::weights::{LoadOptions, WeightFile};

const WEIGHTS_FILE: &str = "resnet50_weights_tf_dim_ordering_tf_kernels.h5";
const WEIGHTS_URL: &str =
    "https://github.com/fchollet/deep-learning-models/releases/download/v0.2/resnet50_weights_tf_dim_ordering_tf_kernels.h5";

struct Args {
    image: Option<PathBuf>,
    weights: Option<PathBuf>,
    top: usize,
    json: bool,
    summary: bool,
    width_divisor: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        image: None,
        weights: None,
        top: 5,
        json: false,
        summary: true,
        width_divisor: 1,
    };
    // Paths may be any bytes the OS allows (not only UTF-8); options are ASCII.
    let mut it = std::env::args_os().skip(1);
    let number = |v: Option<std::ffi::OsString>, what: &str| {
        v.and_then(|v| v.to_str().and_then(|s| s.parse().ok()))
            .filter(|&n: &usize| n > 0)
            .ok_or(format!("{what} needs a positive number"))
    };
    while let Some(arg) = it.next() {
        match arg.to_str() {
            Some("--weights") => a.weights = Some(it.next().ok_or("--weights needs a file")?.into()),
            Some("--top") => a.top = number(it.next(), "--top")?,
            Some("--width-divisor") => a.width_divisor = number(it.next(), "--width-divisor")?,
            Some("--json") => a.json = true,
            Some("--no-summary") => a.summary = false,
            Some("-h" | "--help") => return Err(String::new()),
            Some(s) if s.starts_with('-') => return Err(format!("unknown option {s}")),
            _ if a.image.is_none() => a.image = Some(arg.into()),
            _ => return Err(format!("unexpected argument {}", arg.to_string_lossy())),
        }
    }
    Ok(a)
}

/// `--weights`, the caches, or a download.
fn find_weights(explicit: Option<PathBuf>, quiet: bool) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return Ok(p); // the loader refuses what is not a readable regular file
    }
    let mut candidates = vec![cache_dir().join(WEIGHTS_FILE)];
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".keras/models").join(WEIGHTS_FILE));
    }
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    download_weights(quiet).map_err(|e| {
        format!(
            "{e}\n\nThe pretrained weights are needed: download {WEIGHTS_URL}\n(md5 a7b3fe01876f51b976af0dea6bc144eb, 102,853,048 bytes) and either pass it with\n--weights FILE or put it at {}.",
            candidates[0].display()
        )
    })
}

#[cfg(feature = "download")]
fn cache_dir() -> PathBuf {
    convnet::download::cache_dir()
}

#[cfg(not(feature = "download"))]
fn cache_dir() -> PathBuf {
    std::env::var_os("CONVNET_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".convnet-cache"))
}

#[cfg(feature = "download")]
fn download_weights(quiet: bool) -> Result<PathBuf, String> {
    if !quiet {
        eprintln!("Downloading {WEIGHTS_URL}");
    }
    convnet::download::fetch_cached(&convnet::download::KERAS_RESNET50_WEIGHTS, &cache_dir(), !quiet).map_err(|e| e.to_string())
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
    convnet::download::fetch_cached(&convnet::download::KERAS_ELEPHANT_JPG, &cache_dir(), !quiet).map_err(|e| e.to_string())
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
    let mut model = ResNet::new(ResNetConfig::keras_resnet50().with_width_divisor(args.width_divisor)).map_err(|e| e.to_string())?;
    let weights_path = find_weights(args.weights, quiet)?;
    // Decode only what the model takes, within the default budget.
    let weights = WeightFile::open_for_model(&weights_path, &model, &LoadBudget::default()).map_err(|e| e.to_string())?;
    weights.load_into(&mut model, &LoadOptions::strict()).map_err(|e| e.to_string())?;
    if args.summary && !args.json {
        println!("{}", model.summary().map_err(|e| e.to_string())?);
    }
    let image = find_image(args.image, quiet)?;
    let x = keras_resnet_input(&image).map_err(|e| e.to_string())?;
    let shape: Vec<String> = x.shape().iter().map(usize::to_string).collect();
    let preds = model.forward(&x).map_err(|e| e.to_string())?;
    let top = decode_predictions(&preds, args.top).map_err(|e| e.to_string())?.remove(0);
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
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("error: {msg}");
            }
            eprintln!("usage: elephant [IMAGE] [--weights FILE] [--top N] [--json] [--no-summary] [--width-divisor N]");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}
