//! IDX files (the format of MNIST and Fashion-MNIST), plain or gzip-compressed, and the
//! Fashion-MNIST dataset as Debian's `dataset-fashion-mnist` package installs it.
//!
//! An IDX file is a 4-byte magic (`0, 0, type, rank`), `rank` big-endian `u32` dimensions,
//! then the values. Only unsigned bytes (type `0x08`) are read, which is what both datasets
//! use. A file whose data is shorter or longer than its dimensions say is an
//! [`Error::Format`].

use std::io::Read;
use std::path::Path;

use flate2::read::GzDecoder;
use ndarray::IxDyn;

use super::Dataset;
use crate::budget::{read_regular_file, LoadBudget};
use crate::error::{Error, Result};
use crate::layers::Tensor;

/// Where `apt-get install dataset-fashion-mnist` puts the four files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Fashion-MNIST's ten class names, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// An IDX array of bytes: its dimensions and values, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    /// The dimensions as stored.
    pub shape: Vec<usize>,
    /// The values.
    pub data: Vec<u8>,
}

fn format_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Format {
        format: "IDX",
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Reads an IDX file, gunzipping it first when it starts with gzip's magic. The decompressed
/// size is bounded by `budget.max_decoded_bytes`, or 16 times the file's size plus 1 MiB.
pub fn read_idx(path: impl AsRef<Path>, budget: &LoadBudget) -> Result<IdxArray> {
    let path = path.as_ref();
    let raw = read_regular_file(path, budget.max_file_bytes, "max_file_bytes")?;
    let bytes = if raw.starts_with(&[0x1F, 0x8B]) {
        let limit = budget
            .max_decoded_bytes
            .unwrap_or_else(|| (raw.len() as u64).saturating_mul(16).saturating_add(1 << 20));
        let mut out = Vec::new();
        GzDecoder::new(&raw[..])
            .take(limit.saturating_add(1))
            .read_to_end(&mut out)
            .map_err(|e| format_error(path, format!("gzip: {e} (a truncated or corrupt .gz)")))?;
        LoadBudget::check(
            "max_decoded_bytes",
            limit,
            out.len() as u64,
            format_args!("{}: gunzipped", path.display()),
        )?;
        out
    } else {
        raw
    };
    parse_idx(&bytes, path)
}

fn parse_idx(b: &[u8], path: &Path) -> Result<IdxArray> {
    if b.len() < 4 || b[0] != 0 || b[1] != 0 {
        return Err(format_error(path, "no IDX magic (0, 0, type, rank)"));
    }
    if b[2] != 0x08 {
        return Err(format_error(
            path,
            format!("element type 0x{:02X}; only unsigned bytes (0x08) are read", b[2]),
        ));
    }
    let rank = usize::from(b[3]);
    let header = 4 + 4 * rank;
    let dims = b
        .get(4..header)
        .ok_or_else(|| format_error(path, format!("truncated inside its {rank} dimensions")))?;
    let shape: Vec<usize> = dims
        .chunks_exact(4)
        .map(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize)
        .collect();
    let count = crate::error::checked_product("IDX", &shape)?;
    let data = &b[header..];
    if data.len() != count {
        return Err(format_error(
            path,
            format!(
                "its dimensions {shape:?} call for {count} values and it holds {} ({})",
                data.len(),
                if data.len() < count { "truncated" } else { "trailing data" }
            ),
        ));
    }
    Ok(IdxArray {
        shape,
        data: data.to_vec(),
    })
}

/// An images file `(n, h, w)` and a labels file `(n)` as a [`Dataset`]: pixels scaled to
/// [0, 1] (`/ 255`), one channel. The counts must agree and every label be below `classes`.
pub fn read_idx_dataset(images: impl AsRef<Path>, labels: impl AsRef<Path>, classes: usize, budget: &LoadBudget) -> Result<Dataset> {
    let (images, labels) = (images.as_ref(), labels.as_ref());
    let x = read_idx(images, budget)?;
    let y = read_idx(labels, budget)?;
    let [n, h, w] = x.shape[..] else {
        return Err(format_error(
            images,
            format!("an images file has 3 dimensions (n, h, w), this one {:?}", x.shape),
        ));
    };
    let [m] = y.shape[..] else {
        return Err(format_error(
            labels,
            format!("a labels file has 1 dimension, this one {:?}", y.shape),
        ));
    };
    if n != m {
        return Err(format_error(
            labels,
            format!("{m} labels for the {n} images of {}", images.display()),
        ));
    }
    if let Some((i, &l)) = y.data.iter().enumerate().find(|(_, &l)| usize::from(l) >= classes) {
        return Err(format_error(
            labels,
            format!("label {l} of image {i} is not below the {classes} classes"),
        ));
    }
    let pixels: Vec<f32> = x.data.iter().map(|&v| f32::from(v) / 255.0).collect();
    let t = Tensor::from_shape_vec(IxDyn(&[n, h, w, 1]), pixels).map_err(|e| format_error(images, e.to_string()))?;
    Dataset::new(t, y.data.iter().map(|&l| usize::from(l)).collect(), classes)
}

/// Fashion-MNIST's training (60,000) and test (10,000) sets from `dir`
/// (`train-images-idx3-ubyte.gz`, `train-labels-idx1-ubyte.gz`, `t10k-...`); see
/// [`FASHION_MNIST_DIR`]. A missing folder or file is an [`Error::Io`] that names the Debian
/// package to install.
pub fn fashion_mnist(dir: impl AsRef<Path>) -> Result<(Dataset, Dataset)> {
    let dir = dir.as_ref();
    let budget = LoadBudget::default();
    let file = |name: &str| -> Result<std::path::PathBuf> {
        let p = dir.join(name);
        if !p.exists() {
            return Err(Error::Io {
                path: p.display().to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("not found; `apt-get install dataset-fashion-mnist` puts the files in {FASHION_MNIST_DIR}"),
                ),
            });
        }
        Ok(p)
    };
    let train = read_idx_dataset(
        file("train-images-idx3-ubyte.gz")?,
        file("train-labels-idx1-ubyte.gz")?,
        10,
        &budget,
    )?;
    let test = read_idx_dataset(file("t10k-images-idx3-ubyte.gz")?, file("t10k-labels-idx1-ubyte.gz")?, 10, &budget)?;
    Ok((train, test))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(shape: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, 8, shape.len() as u8];
        for d in shape {
            v.extend(d.to_be_bytes());
        }
        v.extend(data);
        v
    }

    #[test]
    fn parses_and_refuses_wrong_counts() {
        let p = Path::new("x.idx");
        let a = parse_idx(&idx(&[2, 3], &[1, 2, 3, 4, 5, 6]), p).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        let short = parse_idx(&idx(&[2, 3], &[1, 2, 3]), p).unwrap_err().to_string();
        assert!(short.contains("truncated"), "{short}");
        let long = parse_idx(&idx(&[1], &[1, 2]), p).unwrap_err().to_string();
        assert!(long.contains("trailing"), "{long}");
        assert!(parse_idx(&[0, 0, 0x0D, 1, 0, 0, 0, 1, 0, 0, 0, 0], p)
            .unwrap_err()
            .to_string()
            .contains("0x0D"));
        assert!(parse_idx(&[0, 0, 8, 3, 0, 0], p).is_err());
        let huge = parse_idx(&idx(&[u32::MAX, u32::MAX, u32::MAX], &[]), p);
        assert!(huge.is_err());
    }
}
