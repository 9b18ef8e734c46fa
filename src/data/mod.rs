//! Datasets for training, read without any network access: labelled image batches in memory
//! ([`Dataset`]), seeded shuffling into batches ([`batch_indices`]), and readers for IDX files
//! (MNIST, Fashion-MNIST; [`idx`]) and scikit-learn's 8x8 digits ([`digits`]).
//!
//! ```no_run
//! use convnet::data::{batch_indices, idx};
//! let (train, test) = idx::fashion_mnist(idx::FASHION_MNIST_DIR)?;
//! assert_eq!((train.len(), test.len()), (60_000, 10_000));
//! for batch in batch_indices(train.len(), 128, 7, false) {
//!     let (x, labels) = train.batch(&batch)?;
//!     // ... compute_gradients(&model, &x, &labels, ...)
//! }
//! # Ok::<(), convnet::Error>(())
//! ```

pub mod digits;
pub mod folder;
pub mod idx;
pub mod loader;

pub use folder::{FolderOptions, ImageFolder, Preprocess, Skipped};
pub use loader::{Augmentation, Batch, BatchSource, Loader, LoaderConfig};

use ndarray::{Axis, IxDyn};

use crate::error::{Error, Result, ShapeFmt};
use crate::init::Rng;
use crate::layers::Tensor;

/// Labelled images: an NHWC batch `(n, h, w, c)` and one class index per image.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    images: Tensor,
    labels: Vec<usize>,
    classes: usize,
}

impl Dataset {
    /// A dataset, checking that there is one label per image and every label is below
    /// `classes`.
    pub fn new(images: Tensor, labels: Vec<usize>, classes: usize) -> Result<Self> {
        if images.ndim() != 4 || images.shape()[0] != labels.len() {
            return Err(Error::shape(
                "Dataset",
                format!("an NHWC batch of {} images, one per label", labels.len()),
                format!("{}", ShapeFmt(images.shape())),
            ));
        }
        if let Some((i, &l)) = labels.iter().enumerate().find(|(_, &l)| l >= classes) {
            return Err(Error::config(
                "Dataset",
                format!("label {l} of image {i} is not below the {classes} classes"),
            ));
        }
        Ok(Dataset { images, labels, classes })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there is no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// All images, `(n, h, w, c)`.
    pub fn images(&self) -> &Tensor {
        &self.images
    }

    /// All labels.
    pub fn labels(&self) -> &[usize] {
        &self.labels
    }

    /// The number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// One image's shape, `[h, w, c]`.
    pub fn image_shape(&self) -> [usize; 3] {
        let s = self.images.shape();
        [s[1], s[2], s[3]]
    }

    /// The first `n` images and the rest.
    pub fn split_at(&self, n: usize) -> Result<(Dataset, Dataset)> {
        if n > self.len() {
            return Err(Error::config("Dataset", format!("cannot split {} images at {n}", self.len())));
        }
        let part = |r: std::ops::Range<usize>| Dataset {
            images: self.images.slice_axis(Axis(0), r.clone().into()).to_owned(),
            labels: self.labels[r].to_vec(),
            classes: self.classes,
        };
        Ok((part(0..n), part(n..self.len())))
    }

    /// The images at `indices` as one batch, with their labels.
    pub fn batch(&self, indices: &[usize]) -> Result<(Tensor, Vec<usize>)> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(Error::config("Dataset", format!("image {bad} of {}", self.len())));
        }
        let [h, w, c] = self.image_shape();
        let per = h * w * c;
        let src = self
            .images
            .as_slice()
            .ok_or_else(|| Error::config("Dataset", "images not contiguous"))?;
        let mut data = Vec::with_capacity(indices.len() * per);
        for &i in indices {
            data.extend_from_slice(&src[i * per..(i + 1) * per]);
        }
        let x = Tensor::from_shape_vec(IxDyn(&[indices.len(), h, w, c]), data)
            .map_err(|e| Error::shape("Dataset", "a batch", e.to_string()))?;
        Ok((x, indices.iter().map(|&i| self.labels[i]).collect()))
    }

    /// Each channel's mean and standard deviation over the whole dataset (population), for
    /// [`normalize`](Self::normalize).
    pub fn channel_stats(&self) -> (Vec<f32>, Vec<f32>) {
        let c = self.image_shape()[2];
        let mut sum = vec![0f64; c];
        let mut sq = vec![0f64; c];
        for px in self.images.as_slice().unwrap_or(&[]).chunks_exact(c) {
            for k in 0..c {
                sum[k] += f64::from(px[k]);
                sq[k] += f64::from(px[k]) * f64::from(px[k]);
            }
        }
        let n = (self.images.len() / c.max(1)).max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(q, m)| ((q / n - m * m).max(0.0).sqrt().max(1e-12)) as f32)
            .collect();
        (mean.into_iter().map(|m| m as f32).collect(), std)
    }

    /// `(x - mean) / std` per channel, in place.
    pub fn normalize(&mut self, mean: &[f32], std: &[f32]) -> Result<()> {
        let c = self.image_shape()[2];
        if mean.len() != c || std.len() != c || std.iter().any(|&s| s <= 0.0 || !s.is_finite()) {
            return Err(Error::config(
                "Dataset",
                format!("{c} means and {c} positive standard deviations are needed"),
            ));
        }
        for mut px in self.images.lanes_mut(Axis(3)) {
            for k in 0..c {
                px[k] = (px[k] - mean[k]) / std[k];
            }
        }
        Ok(())
    }
}

/// Augments an NHWC batch in place: each image is shifted by a random offset in
/// `-pad..=pad` along each axis, the uncovered border filled with `fill` (a random crop of the
/// image padded by `pad`, as torchvision's `RandomCrop(size, padding=pad)`), and, when
/// `flip`, mirrored left-right with probability 1/2. Deterministic for the `rng`'s seed.
pub fn augment(x: &mut Tensor, pad: usize, fill: f32, flip: bool, rng: &mut Rng) -> Result<()> {
    if x.ndim() != 4 {
        return Err(Error::shape("augment", "an NHWC batch", format!("{}", ShapeFmt(x.shape()))));
    }
    let (h, w, c) = (x.shape()[1], x.shape()[2], x.shape()[3]);
    let mut out = vec![fill; h * w * c];
    for mut img in x.outer_iter_mut() {
        let dy = rng.below(2 * pad + 1) as isize - pad as isize;
        let dx = rng.below(2 * pad + 1) as isize - pad as isize;
        let mirror = flip && rng.below(2) == 1;
        out.fill(fill);
        for y in 0..h {
            let sy = y as isize + dy;
            if sy < 0 || sy >= h as isize {
                continue;
            }
            for x_ in 0..w {
                let sx0 = if mirror { w - 1 - x_ } else { x_ } as isize + dx;
                if sx0 < 0 || sx0 >= w as isize {
                    continue;
                }
                for k in 0..c {
                    out[(y * w + x_) * c + k] = img[[sy as usize, sx0 as usize, k]];
                }
            }
        }
        for (dst, &v) in img.iter_mut().zip(&out) {
            *dst = v;
        }
    }
    Ok(())
}

/// The indices `0..len` in batches of `batch`, shuffled by `seed` (Fisher-Yates on the
/// crate's seeded generator, so the same seed gives the same batches everywhere). The last
/// partial batch is kept unless `drop_last`.
pub fn batch_indices(len: usize, batch: usize, seed: u64, drop_last: bool) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..len).collect();
    let mut rng = Rng::new(seed);
    for i in (1..len).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let batch = batch.max(1);
    order
        .chunks(batch)
        .filter(|c| !drop_last || c.len() == batch)
        .map(<[usize]>::to_vec)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_every_index_once_and_depend_on_the_seed() {
        let b = batch_indices(103, 10, 5, false);
        assert_eq!(b.len(), 11);
        let mut all: Vec<usize> = b.concat();
        all.sort();
        assert_eq!(all, (0..103).collect::<Vec<_>>());
        assert_eq!(batch_indices(103, 10, 5, true).len(), 10);
        assert_eq!(b, batch_indices(103, 10, 5, false));
        assert_ne!(b, batch_indices(103, 10, 6, false));
    }

    #[test]
    fn augmentation_shifts_within_the_padding_and_flips() {
        let x0 = Tensor::from_shape_fn(IxDyn(&[64, 3, 4, 1]), |i| (1 + i[1] * 4 + i[2]) as f32);
        let mut x = x0.clone();
        augment(&mut x, 1, 0.0, false, &mut Rng::new(3)).unwrap();
        let mut shifted = 0;
        for (a, b) in x.outer_iter().zip(x0.outer_iter()) {
            // Every kept value comes from the original image; zeros fill the rest.
            assert!(a.iter().all(|&v| v == 0.0 || b.iter().any(|&o| o == v)));
            shifted += usize::from(a != b);
        }
        assert!(shifted > 32, "most of 64 images move: {shifted}");
        let mut y = x0.clone();
        augment(&mut y, 0, 0.0, true, &mut Rng::new(3)).unwrap();
        let flipped = y.outer_iter().zip(x0.outer_iter()).filter(|(a, b)| a != b).count();
        assert!((16..=48).contains(&flipped), "{flipped}");
        assert!(y.outer_iter().all(|img| img[[0, 0, 0]] == 1.0 || img[[0, 0, 0]] == 4.0));
    }

    #[test]
    fn labels_and_shapes_are_checked() {
        let x = Tensor::zeros(IxDyn(&[3, 2, 2, 1]));
        assert!(Dataset::new(x.clone(), vec![0, 1], 2).is_err());
        let e = Dataset::new(x.clone(), vec![0, 1, 2], 2).unwrap_err();
        assert!(e.to_string().contains("label 2 of image 2"), "{e}");
        let d = Dataset::new(x, vec![0, 1, 1], 2).unwrap();
        let (a, b) = d.split_at(1).unwrap();
        assert_eq!((a.len(), b.len()), (1, 2));
        assert!(d.batch(&[0, 3]).is_err());
        assert_eq!(d.batch(&[2, 0]).unwrap().1, vec![1, 0]);
    }
}
