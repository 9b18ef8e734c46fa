//! The dataset readers: IDX (plain and gzip) with their typed errors, Fashion-MNIST as Debian
//! installs it, the digits CSV, and the small-image ResNet presets' parameter counts.

mod common;

use std::io::Write;
use std::path::PathBuf;

use convnet::budget::LoadBudget;
use convnet::data::digits::load_digits;
use convnet::data::idx::{fashion_mnist, read_idx, read_idx_dataset, FASHION_MNIST_DIR};
use convnet::layers::Layer;
use convnet::models::{ResNet, ResNetConfig};
use convnet::Error;
use flate2::write::GzEncoder;

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("convnet-datasets-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn idx(shape: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, shape.len() as u8];
    for d in shape {
        v.extend(d.to_be_bytes());
    }
    v.extend(data);
    v
}

fn write_gz(name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir().join(name);
    let mut e = GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    std::fs::write(&p, e.finish().unwrap()).unwrap();
    p
}

#[test]
fn idx_files_plain_and_gzipped_read_the_same() {
    let data: Vec<u8> = (0..2 * 3 * 4).map(|i| i as u8 * 10).collect();
    let plain = dir().join("plain.idx");
    std::fs::write(&plain, idx(&[2, 3, 4], &data)).unwrap();
    let gz = write_gz("x.idx.gz", &idx(&[2, 3, 4], &data));
    let a = read_idx(&plain, &LoadBudget::default()).unwrap();
    assert_eq!((a.shape.clone(), a.data.clone()), (vec![2, 3, 4], data));
    assert_eq!(read_idx(&gz, &LoadBudget::default()).unwrap(), a);
    let labels = write_gz("y.idx.gz", &idx(&[2], &[3, 9]));
    let ds = read_idx_dataset(&gz, &labels, 10, &LoadBudget::default()).unwrap();
    assert_eq!((ds.len(), ds.image_shape(), ds.labels()), (2, [3, 4, 1], &[3usize, 9][..]));
    assert_eq!(ds.images()[[1, 2, 3, 0]], 230.0 / 255.0);
}

#[test]
fn bad_idx_files_are_typed_errors() {
    let images = write_gz("i.idx.gz", &idx(&[3, 2, 2], &[0; 12]));
    // Counts that disagree.
    let two = write_gz("two.idx.gz", &idx(&[2], &[0, 1]));
    let e = read_idx_dataset(&images, &two, 10, &LoadBudget::default()).unwrap_err();
    assert!(
        matches!(e, Error::Format { .. }) && e.to_string().contains("2 labels for the 3 images"),
        "{e}"
    );
    // A label out of range.
    let bad = write_gz("bad.idx.gz", &idx(&[3], &[0, 1, 10]));
    let e = read_idx_dataset(&images, &bad, 10, &LoadBudget::default()).unwrap_err();
    assert!(e.to_string().contains("label 10 of image 2"), "{e}");
    // Truncated data, and a truncated gzip stream.
    let short = write_gz("short.idx.gz", &idx(&[3, 2, 2], &[0; 7]));
    assert!(read_idx(&short, &LoadBudget::default())
        .unwrap_err()
        .to_string()
        .contains("truncated"));
    let whole = std::fs::read(&images).unwrap();
    let cut = dir().join("cut.idx.gz");
    std::fs::write(&cut, &whole[..whole.len() / 2]).unwrap();
    assert!(matches!(read_idx(&cut, &LoadBudget::default()), Err(Error::Format { .. })));
    // A gzip bomb beyond the budget.
    let bomb = write_gz("bomb.idx.gz", &idx(&[1 << 24], &vec![0; 1 << 24]));
    let e = read_idx(&bomb, &LoadBudget::default()).unwrap_err();
    assert!(matches!(e, Error::Budget { .. }), "{e}");
    // A folder without the files names the package.
    let e = fashion_mnist(dir().join("nowhere")).unwrap_err().to_string();
    assert!(e.contains("apt-get install dataset-fashion-mnist"), "{e}");
}

/// Fashion-MNIST from Debian's `dataset-fashion-mnist` (`.ci/run` installs it and sets
/// `CONVNET_REQUIRE_FASHION_MNIST=1`, so there a missing package fails the test).
#[test]
fn fashion_mnist_from_the_debian_package() {
    if !std::path::Path::new(FASHION_MNIST_DIR).exists() && std::env::var_os("CONVNET_REQUIRE_FASHION_MNIST").is_none() {
        eprintln!("skipped: {FASHION_MNIST_DIR} is absent (apt-get install dataset-fashion-mnist)");
        return;
    }
    let (train, test) = fashion_mnist(FASHION_MNIST_DIR).unwrap();
    assert_eq!((train.len(), test.len()), (60_000, 10_000));
    assert_eq!(train.image_shape(), [28, 28, 1]);
    // Balanced classes: 6,000 and 1,000 of each.
    for (set, per) in [(&train, 6000), (&test, 1000)] {
        let mut counts = [0usize; 10];
        set.labels().iter().for_each(|&l| counts[l] += 1);
        assert_eq!(counts, [per; 10]);
    }
    let (mean, std) = train.channel_stats();
    // The dataset's well-known statistics: mean 0.2860, std 0.3530.
    assert!(
        (mean[0] - 0.2860).abs() < 1e-3 && (std[0] - 0.3530).abs() < 1e-3,
        "{mean:?} {std:?}"
    );
}

#[test]
fn digits_csv_reads_1797_images_and_refuses_bad_rows() {
    let d = load_digits(common::fixture("digits/digits.csv.gz")).unwrap();
    assert_eq!((d.len(), d.image_shape()), (1797, [8, 8, 1]));
    let mut counts = [0usize; 10];
    d.labels().iter().for_each(|&l| counts[l] += 1);
    assert_eq!(counts, [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]);
    let bad = dir().join("bad.csv");
    std::fs::write(&bad, format!("{},11\n", vec!["0"; 64].join(","))).unwrap();
    assert!(load_digits(&bad).unwrap_err().to_string().contains("label 11"));
}

#[test]
fn small_image_resnets_have_the_documented_parameter_counts() {
    let count = |depth, shape| {
        let m = ResNet::new(ResNetConfig::small_image_resnet(depth, shape, 10).unwrap()).unwrap();
        let c = m.param_count();
        (c.trainable, c.total())
    };
    assert_eq!(count(20, [32, 32, 3]), (272_474, 274_042));
    assert_eq!(count(20, [28, 28, 1]).0, 272_186);
    assert!(count(32, [32, 32, 3]).0 > 460_000 && count(56, [32, 32, 3]).0 > 850_000);
    assert!(ResNetConfig::small_image_resnet(21, [32, 32, 3], 10).is_err());
    let m = ResNet::new(ResNetConfig::small_image_resnet(20, [28, 28, 1], 10).unwrap()).unwrap();
    assert_eq!(m.output_shape(&[2, 28, 28, 1]).unwrap(), vec![2, 10]);
}
