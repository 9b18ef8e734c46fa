//! Batches prepared on a background thread: one epoch of a [`Dataset`] shuffled by a seed,
//! gathered into batches and augmented off the training thread, a few batches ahead, so the
//! arithmetic never waits on them.
//!
//! An epoch's batches and augmentations depend only on the [`LoaderConfig`] and the epoch
//! number, so a run resumed at epoch `e` sees exactly the batches an uninterrupted run sees.
//!
//! ```
//! use std::sync::Arc;
//! use convnet::data::{Dataset, Loader, LoaderConfig};
//! let images = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[10, 4, 4, 1]));
//! let data = Arc::new(Dataset::new(images, vec![0, 1, 0, 1, 0, 1, 0, 1, 0, 1], 2)?);
//! let config = LoaderConfig { batch: 4, ..LoaderConfig::default() };
//! let sizes: Vec<usize> = Loader::epoch(data, &config, 0)?.map(|b| b.map(|b| b.labels.len())).collect::<Result<_, _>>()?;
//! assert_eq!(sizes, [4, 4, 2]);
//! # Ok::<(), convnet::Error>(())
//! ```

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::{augment, batch_indices, Dataset};
use crate::error::{Error, Result};
use crate::init::Rng;
use crate::layers::Tensor;

/// Random crops and flips, as [`augment`] applies them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Augmentation {
    /// Each image is shifted by up to this many pixels along each axis (a random crop of the
    /// image padded by `pad`).
    pub pad: usize,
    /// The value the uncovered border is filled with (0 for raw images, the normalised value
    /// of black for normalised ones).
    pub fill: f32,
    /// Mirror left-right with probability 1/2.
    pub flip: bool,
}

/// How a [`Loader`] cuts an epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct LoaderConfig {
    /// Images per batch.
    pub batch: usize,
    /// Seed of the shuffling and the augmentation (with the epoch number).
    pub seed: u64,
    /// Drop the last, partial batch instead of keeping it.
    pub drop_last: bool,
    /// Augment each batch, or not.
    pub augmentation: Option<Augmentation>,
    /// Batches prepared ahead of the training thread (at least 1).
    pub prefetch: usize,
}

impl Default for LoaderConfig {
    /// Batches of 128, seed 0, the last partial batch kept, no augmentation, 2 ahead.
    fn default() -> Self {
        LoaderConfig {
            batch: 128,
            seed: 0,
            drop_last: false,
            augmentation: None,
            prefetch: 2,
        }
    }
}

/// One batch: NHWC images and their labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// `(batch, h, w, c)`.
    pub images: Tensor,
    /// One class index per image.
    pub labels: Vec<usize>,
}

/// What a [`Loader`] draws batches from: an in-memory [`Dataset`], or an
/// [`ImageFolder`](super::ImageFolder) that turns its decoded images into tensors on the
/// loader's thread.
pub trait BatchSource: Send + Sync + 'static {
    /// Number of images.
    fn len(&self) -> usize;
    /// True when there is no image.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The images at `indices`, in that order, as an NHWC batch, and their labels.
    fn batch(&self, indices: &[usize]) -> Result<(Tensor, Vec<usize>)>;
}

impl BatchSource for Dataset {
    fn len(&self) -> usize {
        Dataset::len(self)
    }

    fn batch(&self, indices: &[usize]) -> Result<(Tensor, Vec<usize>)> {
        Dataset::batch(self, indices)
    }
}

/// One epoch's batches, prepared by a background thread; an iterator of `Result<Batch>`.
/// Dropping it early stops the thread.
#[derive(Debug)]
pub struct Loader {
    batches: usize,
    rx: Option<Receiver<Result<Batch>>>,
    worker: Option<JoinHandle<()>>,
}

impl Loader {
    /// Starts preparing epoch `epoch` of `data` as `config` says.
    pub fn epoch<S: BatchSource>(data: Arc<S>, config: &LoaderConfig, epoch: u64) -> Result<Self> {
        if config.batch == 0 {
            return Err(Error::config("Loader", "a batch holds at least one image"));
        }
        let seed = config.seed.wrapping_mul(1_000_003).wrapping_add(epoch);
        let order = batch_indices(data.len(), config.batch, seed, config.drop_last);
        let batches = order.len();
        let (tx, rx) = sync_channel(config.prefetch.max(1));
        let augmentation = config.augmentation;
        let worker = std::thread::Builder::new()
            .name("convnet-loader".into())
            .spawn(move || {
                let mut rng = Rng::new(seed ^ 0x05EE_DA06_u64);
                for indices in order {
                    let batch = data.batch(&indices).and_then(|(mut images, labels)| {
                        if let Some(a) = augmentation {
                            augment(&mut images, a.pad, a.fill, a.flip, &mut rng)?;
                        }
                        Ok(Batch { images, labels })
                    });
                    let failed = batch.is_err();
                    // A closed channel: the consumer stopped early.
                    if tx.send(batch).is_err() || failed {
                        return;
                    }
                }
            })
            .map_err(|e| Error::io("spawning the data loader thread", e))?;
        Ok(Loader {
            batches,
            rx: Some(rx),
            worker: Some(worker),
        })
    }

    /// Batches in this epoch.
    pub fn batches(&self) -> usize {
        self.batches
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        let rx = self.rx.as_ref()?;
        match rx.recv() {
            Ok(b) => Some(b),
            Err(_) => {
                // The thread finished (or died): a panic there is reported, not swallowed.
                self.rx = None;
                match self.worker.take().map(JoinHandle::join) {
                    Some(Err(_)) => Some(Err(Error::config("Loader", "the data loader thread panicked"))),
                    _ => None,
                }
            }
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Closing the channel first lets a worker blocked on a full channel finish.
        self.rx = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}
