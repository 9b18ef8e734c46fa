//! The training examples end to end, as a user runs them: `train_fashion_mnist` on a slice of
//! the real data (interrupted and resumed, it ends with the same bits as an uninterrupted run;
//! 1 and 2 threads give the same model; a missing dataset names the package to install), and
//! `finetune` on a generated image folder.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use convnet::data::idx::FASHION_MNIST_DIR;

fn run(name: &str, args: &[&str]) -> Output {
    let out = Command::new(common::example(name)).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{name} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("convnet-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

fn fashion_mnist_present() -> bool {
    if Path::new(FASHION_MNIST_DIR).exists() {
        return true;
    }
    assert!(
        std::env::var_os("CONVNET_REQUIRE_FASHION_MNIST").is_none(),
        "{FASHION_MNIST_DIR} is absent (apt-get install dataset-fashion-mnist)"
    );
    eprintln!("skipped: {FASHION_MNIST_DIR} is absent (apt-get install dataset-fashion-mnist)");
    false
}

#[test]
fn fashion_mnist_resumed_ends_where_an_uninterrupted_run_ends() {
    if !fashion_mnist_present() {
        return;
    }
    let base = ["--limit", "1024", "--test-limit", "400", "--batch", "64", "--epochs", "2", "--json"];
    let small = [&base[..], &["--depth", "8"]].concat();
    let whole = scratch("fm-whole");
    let whole_s = whole.to_str().unwrap();
    let lines = json_lines(&run(
        "train_fashion_mnist",
        &[&small[..], &["--out", whole_s, "--threads", "2"]].concat(),
    ));
    assert_eq!(lines.len(), 2);
    let acc = lines[1]["test_accuracy"].as_f64().unwrap();
    // Two short epochs on 1,024 images: well above chance (10%), far from converged.
    assert!(acc > 0.3, "{lines:?}");
    assert_eq!(
        lines[1]["best_test_accuracy"].as_f64().unwrap(),
        acc.max(lines[0]["test_accuracy"].as_f64().unwrap())
    );
    // Stopped after one epoch, resumed (on one thread) for the second.
    let parts = scratch("fm-parts");
    let parts_s = parts.to_str().unwrap();
    run(
        "train_fashion_mnist",
        &[&small[..], &["--out", parts_s, "--threads", "2", "--stop-after", "1"]].concat(),
    );
    let last = parts.join("last");
    let resumed = json_lines(&run(
        "train_fashion_mnist",
        &[
            &small[..],
            &["--out", parts_s, "--threads", "1", "--resume", last.to_str().unwrap()],
        ]
        .concat(),
    ));
    assert_eq!(resumed.len(), 1, "only the second epoch runs");
    assert_eq!(resumed[0]["epoch"], 2);
    assert_eq!(resumed[0]["test_accuracy"], lines[1]["test_accuracy"]);
    for file in ["last/model.safetensors", "last/optimizer.safetensors", "best.safetensors"] {
        let (a, b) = (std::fs::read(whole.join(file)).unwrap(), std::fs::read(parts.join(file)).unwrap());
        assert!(a == b, "{file} differs between the uninterrupted and the resumed run");
    }
    // The best model loads for inference with its class names.
    let classes = std::fs::read_to_string(whole.join("classes.txt")).unwrap();
    assert_eq!(classes.lines().collect::<Vec<_>>(), convnet::data::idx::FASHION_MNIST_CLASSES);
    // A checkpoint of another architecture is refused, naming the problem.
    let other = Command::new(common::example("train_fashion_mnist"))
        .args([&base[..], &["--depth", "14", "--out", parts_s, "--resume", last.to_str().unwrap()]].concat())
        .output()
        .unwrap();
    assert!(!other.status.success());
    assert!(
        String::from_utf8_lossy(&other.stderr).contains("resuming from"),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
    let _ = std::fs::remove_dir_all(whole);
    let _ = std::fs::remove_dir_all(parts);
}

#[test]
fn a_missing_dataset_names_the_package_to_install() {
    let out = Command::new(common::example("train_fashion_mnist"))
        .args(["--data", "/nonexistent/fashion", "--epochs", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("apt-get install dataset-fashion-mnist") && err.contains("/nonexistent/fashion"),
        "{err}"
    );
}

/// A two-class folder that differs visibly: `dots` (white squares at random places on black)
/// and `stripes` (bands of random width, phase, direction and colours), 64x64
/// PNG and JPEG files, plus one corrupt file and one non-image file.
fn texture_folder(root: &Path, per_class: usize, seed: u64) {
    let mut rng = convnet::init::Rng::new(seed);
    for class in ["dots", "stripes"] {
        let dir = root.join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..per_class {
            let mut fg = [rng.below(256) as u8, rng.below(256) as u8, rng.below(256) as u8];
            let mut bg = fg.map(|c| c.wrapping_add(128));
            if class == "dots" {
                (fg, bg) = ([255; 3], [0; 3]);
            }
            let mut img = image::RgbImage::from_pixel(64, 64, image::Rgb(bg));
            if class == "dots" {
                for _ in 0..(12 + rng.below(12)) {
                    let (x0, y0) = (rng.below(60) as u32, rng.below(60) as u32);
                    for (x, y) in (0..4).flat_map(|dx| (0..4).map(move |dy| (x0 + dx, y0 + dy))) {
                        img.put_pixel(x, y, image::Rgb(fg));
                    }
                }
            } else {
                let (width, phase, vertical) = (3 + rng.below(5), rng.below(16), rng.below(2) == 1);
                for (x, y, p) in img.enumerate_pixels_mut() {
                    let t = (if vertical { x } else { y }) as usize + phase;
                    if (t / width).is_multiple_of(2) {
                        *p = image::Rgb(fg);
                    }
                }
            }
            let ext = if i % 3 == 0 { "jpg" } else { "png" };
            img.save(dir.join(format!("{i:03}.{ext}"))).unwrap();
        }
    }
    std::fs::write(root.join("dots").join("broken.jpg"), b"\xFF\xD8\xFF\xE0 not really a JPEG").unwrap();
    std::fs::write(root.join("stripes").join("notes.txt"), "not an image").unwrap();
}

#[test]
fn finetune_tells_stripes_from_dots_on_the_reference_backbone() {
    let root = scratch("textures");
    texture_folder(&root.join("train"), 40, 5);
    let out = root.join("model");
    let weights = common::fixture("keras_resnet50_w8/resnet50.h5");
    let train_dir = root.join("train");
    let args = [
        "--weights",
        weights.to_str().unwrap(),
        "--data",
        train_dir.to_str().unwrap(),
        "--width-divisor",
        "8",
        "--size",
        "64",
        "--epochs",
        "14",
        "--batch",
        "8",
        "--lr",
        "0.003",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ];
    let result = run("finetune", &args);
    let lines = json_lines(&result);
    assert_eq!(lines.len(), 14);
    let best = lines.iter().map(|l| l["val_accuracy"].as_f64().unwrap()).fold(0.0, f64::max);
    assert!(best >= 0.95, "validation accuracy {best}: {lines:?}");
    let err = String::from_utf8_lossy(&result.stderr);
    assert!(
        err.contains("skipped") && err.contains("broken.jpg"),
        "the corrupt file is reported: {err}"
    );
    // The saved model classifies new images with the folder's class names.
    texture_folder(&root.join("new"), 3, 99);
    let mut images: Vec<String> = Vec::new();
    for class in ["dots", "stripes"] {
        for i in 0..3 {
            let p = root
                .join("new")
                .join(class)
                .join(format!("{i:03}.{}", if i % 3 == 0 { "jpg" } else { "png" }));
            images.push(p.to_str().unwrap().to_string());
        }
    }
    let mut classify_args = vec!["--classify", out.to_str().unwrap(), "--json"];
    classify_args.extend(images.iter().map(String::as_str));
    let preds = json_lines(&run("finetune", &classify_args));
    assert_eq!(preds.len(), 6);
    let right = preds
        .iter()
        .filter(|p| {
            p["image"]
                .as_str()
                .unwrap()
                .contains(&format!("/{}/", p["top"][0][0].as_str().unwrap()))
        })
        .count();
    assert!(right >= 5, "{preds:?}");
    let _ = std::fs::remove_dir_all(root);
}
