//! A labelled image folder, as Keras' `image_dataset_from_directory` and torchvision's
//! `ImageFolder` read one: one sub-folder per class (classes in sorted name order, the label
//! being the index), JPEG and PNG files inside (`.jpg`, `.jpeg`, `.png`, any case; other
//! files and hidden entries are ignored, as torchvision ignores them).
//!
//! Opening the folder decodes every image on all cores, through the crate's image pipeline
//! (Pillow-exact JPEG, the [`ImageOptions`] budget), and resizes it (Pillow-exact bilinear) to
//! the size the network takes, keeping 8-bit RGB in memory (`n x h x w x 3` bytes). A file
//! that does not decode is skipped and reported by [`ImageFolder::skipped`], or, with
//! [`FolderOptions::strict`], refuses the whole folder. Batches are made (preprocessed to
//! floats) on the [`Loader`](super::Loader)'s thread.
//!
//! ```no_run
//! use convnet::data::{FolderOptions, ImageFolder, Preprocess};
//! let folder = ImageFolder::open("photos", &FolderOptions::new([224, 224], Preprocess::KerasCaffe))?;
//! println!("{} images of {:?}, {} unreadable files skipped", folder.len(), folder.classes(), folder.skipped().len());
//! # Ok::<(), convnet::Error>(())
//! ```

use std::path::{Path, PathBuf};

use ndarray::IxDyn;

use super::loader::BatchSource;
use super::Dataset;
use crate::error::{Error, Result};
use crate::imagenet::image::{load_rgb_with, ImageOptions, RgbImage, CAFFE_BGR_MEAN, TORCHVISION_MEAN, TORCHVISION_STD};
use crate::layers::Tensor;

/// How 8-bit RGB pixels become the network's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preprocess {
    /// Keras' `preprocess_input` for ResNet50 (caffe mode): RGB to BGR, minus the ImageNet
    /// BGR means, no scaling.
    KerasCaffe,
    /// torchvision's `ToTensor` then `Normalize(mean, std)` with the ImageNet statistics.
    Torchvision,
    /// `pixel / 255`, in `[0, 1]`.
    Unit,
}

impl Preprocess {
    /// `img` as a batch of one, `(1, h, w, 3)`, preprocessed as a folder's batches are (an
    /// image whose data is not `h x w x 3` bytes is an [`Error::Shape`]).
    pub fn tensor(self, img: &RgbImage) -> Result<Tensor> {
        let mut data = vec![0.0f32; img.data.len()];
        for (o, px) in data.chunks_exact_mut(3).zip(img.data.chunks_exact(3)) {
            self.apply(px, o);
        }
        Tensor::from_shape_vec(IxDyn(&[1, img.height, img.width, 3]), data)
            .map_err(|e| Error::shape("Preprocess", format!("{}x{}x3 bytes", img.height, img.width), e.to_string()))
    }

    /// The float value of channel `c` (R, G, B) of a pixel, in the network's channel order.
    fn apply(self, rgb: &[u8], out: &mut [f32]) {
        match self {
            Preprocess::KerasCaffe => {
                for (c, o) in out.iter_mut().enumerate() {
                    *o = f32::from(rgb[2 - c]) - CAFFE_BGR_MEAN[c];
                }
            }
            Preprocess::Torchvision => {
                for (c, o) in out.iter_mut().enumerate() {
                    *o = (f32::from(rgb[c]) / 255.0 - TORCHVISION_MEAN[c]) / TORCHVISION_STD[c];
                }
            }
            Preprocess::Unit => {
                for (c, o) in out.iter_mut().enumerate() {
                    *o = f32::from(rgb[c]) / 255.0;
                }
            }
        }
    }
}

/// How an [`ImageFolder`] is read.
#[derive(Clone, Debug, PartialEq)]
pub struct FolderOptions {
    /// `[height, width]` every image is resized to.
    pub size: [usize; 2],
    /// How pixels become floats.
    pub preprocess: Preprocess,
    /// Limits and leniency of the image decoders.
    pub image: ImageOptions,
    /// Refuse the folder when any image does not decode (else skip and report it).
    pub strict: bool,
    /// Threads decoding (0: every core).
    pub threads: usize,
}

impl FolderOptions {
    /// Images resized to `size`, preprocessed by `preprocess`, the default image budget,
    /// unreadable files skipped, all cores.
    pub fn new(size: [usize; 2], preprocess: Preprocess) -> Self {
        FolderOptions {
            size,
            preprocess,
            image: ImageOptions::default(),
            strict: false,
            threads: 0,
        }
    }
}

/// A file left out of an [`ImageFolder`], and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Skipped {
    /// The file.
    pub path: PathBuf,
    /// The decoder's error.
    pub reason: String,
}

/// The decoded images of a class-per-folder tree; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct ImageFolder {
    classes: Vec<String>,
    images: Vec<RgbImage>,
    labels: Vec<usize>,
    paths: Vec<PathBuf>,
    skipped: Vec<Skipped>,
    size: [usize; 2],
    preprocess: Preprocess,
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ["jpg", "jpeg", "png"].contains(&e.to_ascii_lowercase().as_str()))
}

fn hidden(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))
}

/// The entries of `dir`, sorted by name.
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir.display(), e))? {
        let e = e.map_err(|e| Error::io(dir.display(), e))?;
        if !hidden(&e.path()) {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

impl ImageFolder {
    /// Reads the folder `root`: the class sub-folders, then every image in them.
    ///
    /// Errors: `root` missing or unreadable ([`Error::Io`]); no class sub-folder, a class
    /// folder without any JPEG or PNG, or no image that decodes ([`Error::Config`], naming the
    /// folder); with `strict`, the first image that does not decode ([`Error::Image`]).
    pub fn open(root: impl AsRef<Path>, options: &FolderOptions) -> Result<Self> {
        let root = root.as_ref();
        let [h, w] = options.size;
        if h == 0 || w == 0 {
            return Err(Error::config(
                "ImageFolder",
                format!("images are resized to a non-empty size, not {h}x{w}"),
            ));
        }
        let class_dirs: Vec<PathBuf> = sorted_entries(root)?.into_iter().filter(|p| p.is_dir()).collect();
        if class_dirs.is_empty() {
            return Err(Error::config(
                "ImageFolder",
                format!("{} holds no class folders (one sub-folder of images per class)", root.display()),
            ));
        }
        let mut classes = Vec::new();
        let mut files = Vec::new();
        for (label, dir) in class_dirs.iter().enumerate() {
            let found: Vec<PathBuf> = sorted_entries(dir)?.into_iter().filter(|p| p.is_file() && is_image(p)).collect();
            if found.is_empty() {
                return Err(Error::config(
                    "ImageFolder",
                    format!("class folder {} holds no .jpg, .jpeg or .png file", dir.display()),
                ));
            }
            classes.push(dir.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned()));
            files.extend(found.into_iter().map(|p| (p, label)));
        }
        let decoded = decode_all(&files, options)?;
        let mut folder = ImageFolder {
            classes,
            images: Vec::new(),
            labels: Vec::new(),
            paths: Vec::new(),
            skipped: Vec::new(),
            size: options.size,
            preprocess: options.preprocess,
        };
        for ((path, label), r) in files.into_iter().zip(decoded) {
            match r {
                Ok(img) => {
                    folder.images.push(img);
                    folder.labels.push(label);
                    folder.paths.push(path);
                }
                Err(e) if !options.strict => folder.skipped.push(Skipped {
                    path,
                    reason: e.to_string(),
                }),
                Err(e) => return Err(e),
            }
        }
        if folder.images.is_empty() {
            return Err(Error::config(
                "ImageFolder",
                format!("no image in {} decodes ({} skipped)", root.display(), folder.skipped.len()),
            ));
        }
        Ok(folder)
    }

    /// Class names, in label order (sorted).
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Number of images read.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// True when no image was read (never, for an opened folder).
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// One label per image.
    pub fn labels(&self) -> &[usize] {
        &self.labels
    }

    /// The file of each image.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Files that did not decode, and why.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    /// The per-image input shape, `[h, w, 3]`.
    pub fn image_shape(&self) -> [usize; 3] {
        [self.size[0], self.size[1], 3]
    }

    /// Splits the images into `(rest, held_out)`, `held_out` holding `fraction` of each class
    /// (at least one image of a class with two or more), chosen by `seed`.
    pub fn split(&self, fraction: f64, seed: u64) -> Result<(ImageFolder, ImageFolder)> {
        if !(0.0..1.0).contains(&fraction) {
            return Err(Error::config(
                "ImageFolder",
                format!("a held-out fraction in [0, 1), not {fraction}"),
            ));
        }
        let mut held = Vec::new();
        for class in 0..self.classes.len() {
            let mine: Vec<usize> = (0..self.len()).filter(|&i| self.labels[i] == class).collect();
            let order = super::batch_indices(mine.len(), mine.len().max(1), seed.wrapping_add(class as u64), false).concat();
            let n = ((mine.len() as f64 * fraction).round() as usize).max(usize::from(fraction > 0.0 && mine.len() > 1));
            held.extend(order.into_iter().take(n).map(|j| mine[j]));
        }
        held.sort_unstable();
        let pick = |keep: &dyn Fn(usize) -> bool| ImageFolder {
            classes: self.classes.clone(),
            images: (0..self.len()).filter(|&i| keep(i)).map(|i| self.images[i].clone()).collect(),
            labels: (0..self.len()).filter(|&i| keep(i)).map(|i| self.labels[i]).collect(),
            paths: (0..self.len()).filter(|&i| keep(i)).map(|i| self.paths[i].clone()).collect(),
            skipped: self.skipped.clone(),
            size: self.size,
            preprocess: self.preprocess,
        };
        let is_held = |i: usize| held.binary_search(&i).is_ok();
        Ok((pick(&|i| !is_held(i)), pick(&is_held)))
    }

    /// Every image as floats in memory (`4 x h x w x 3` bytes each).
    pub fn to_dataset(&self) -> Result<Dataset> {
        let all: Vec<usize> = (0..self.len()).collect();
        let (x, labels) = BatchSource::batch(self, &all)?;
        Dataset::new(x, labels, self.classes.len())
    }
}

impl BatchSource for ImageFolder {
    fn len(&self) -> usize {
        self.images.len()
    }

    fn batch(&self, indices: &[usize]) -> Result<(Tensor, Vec<usize>)> {
        let [h, w] = self.size;
        let per = h * w * 3;
        let mut data = vec![0.0f32; indices.len() * per];
        let mut labels = Vec::with_capacity(indices.len());
        for (dst, &i) in data.chunks_exact_mut(per).zip(indices) {
            let img = self
                .images
                .get(i)
                .ok_or_else(|| Error::config("ImageFolder", format!("image {i} of a folder of {} images", self.images.len())))?;
            for (o, px) in dst.chunks_exact_mut(3).zip(img.data.chunks_exact(3)) {
                self.preprocess.apply(px, o);
            }
            labels.push(self.labels[i]);
        }
        let x = Tensor::from_shape_vec(IxDyn(&[indices.len(), h, w, 3]), data)
            .map_err(|e| Error::shape("ImageFolder", "an NHWC batch", e.to_string()))?;
        Ok((x, labels))
    }
}

/// Decodes and resizes every file on `options.threads` threads, in file order.
fn decode_all(files: &[(PathBuf, usize)], options: &FolderOptions) -> Result<Vec<Result<RgbImage>>> {
    let threads = match options.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        t => t,
    }
    .clamp(1, files.len().max(1));
    let [h, w] = options.size;
    let decode = |path: &Path| load_rgb_with(path, &options.image).and_then(|img| img.resize_bilinear(w, h));
    let mut out: Vec<Option<Result<RgbImage>>> = (0..files.len()).map(|_| None).collect();
    let chunk = files.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for (slots, part) in out.chunks_mut(chunk).zip(files.chunks(chunk)) {
            s.spawn(move || {
                for (slot, (path, _)) in slots.iter_mut().zip(part) {
                    *slot = Some(decode(path));
                }
            });
        }
    });
    Ok(out
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(Error::config("ImageFolder", "an image was not decoded"))))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("convnet-folder-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn png(path: &Path, v: u8) {
        ::image::RgbImage::from_pixel(5, 4, ::image::Rgb([v, v / 2, 255 - v]))
            .save(path)
            .unwrap();
    }

    #[test]
    fn classes_sorted_unreadable_files_skipped_and_counted_or_refused() {
        let root = scratch("mixed");
        for (class, v) in [("b_dogs", 10u8), ("a_cats", 200)] {
            std::fs::create_dir_all(root.join(class)).unwrap();
            png(&root.join(class).join("1.png"), v);
            png(&root.join(class).join("2.PNG"), v);
        }
        std::fs::write(root.join("a_cats").join("bad.jpg"), b"not a jpeg").unwrap();
        std::fs::write(root.join("a_cats").join("readme.txt"), b"ignored").unwrap();
        let options = FolderOptions::new([3, 2], Preprocess::Unit);
        let f = ImageFolder::open(&root, &options).unwrap();
        assert_eq!(f.classes(), ["a_cats", "b_dogs"]);
        assert_eq!((f.len(), f.labels()), (4, &[0, 0, 1, 1][..]));
        assert_eq!(f.skipped().len(), 1);
        assert!(f.skipped()[0].path.ends_with("bad.jpg"));
        let (x, labels) = f.batch(&[2, 0]).unwrap();
        assert_eq!((x.shape(), labels), (&[2, 3, 2, 3][..], vec![1, 0]));
        assert!((x[[1, 0, 0, 0]] - 200.0 / 255.0).abs() < 1e-6);
        assert!(f.batch(&[4]).is_err());
        let strict = FolderOptions {
            strict: true,
            ..options.clone()
        };
        assert!(matches!(ImageFolder::open(&root, &strict), Err(Error::Image { .. })));
        let (rest, held) = f.split(0.5, 1).unwrap();
        assert_eq!((rest.len(), held.len()), (2, 2));
        assert_eq!(held.labels(), [0, 1]);
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn empty_and_missing_folders_are_typed_errors() {
        let options = FolderOptions::new([4, 4], Preprocess::KerasCaffe);
        assert!(matches!(
            ImageFolder::open("/nonexistent/convnet-folder", &options),
            Err(Error::Io { .. })
        ));
        let root = scratch("empty");
        let e = ImageFolder::open(&root, &options).unwrap_err();
        assert!(e.to_string().contains("no class folders"), "{e}");
        std::fs::create_dir_all(root.join("cats")).unwrap();
        let e = ImageFolder::open(&root, &options).unwrap_err();
        assert!(e.to_string().contains("holds no .jpg"), "{e}");
        std::fs::write(root.join("cats").join("x.png"), b"garbage").unwrap();
        let e = ImageFolder::open(&root, &options).unwrap_err();
        assert!(e.to_string().contains("no image") && e.to_string().contains("1 skipped"), "{e}");
        let _ = std::fs::remove_dir_all(root);
    }
}
