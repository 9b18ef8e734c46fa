//! The files this crate knows where to find (pretrained weights, sample images) and the local
//! cache folder, defined once for the [`download`](crate::download) module (feature
//! `download`) and for programs that tell users where to get a file themselves.

use std::path::PathBuf;

/// The 2016 Keras ResNet50 weights (`fchollet/deep-learning-models` release v0.2) that the
/// seed loads, with their published md5.
pub const KERAS_RESNET50_WEIGHTS: Remote = Remote {
    url: "https://github.com/fchollet/deep-learning-models/releases/download/v0.2/resnet50_weights_tf_dim_ordering_tf_kernels.h5",
    file_name: "resnet50_weights_tf_dim_ordering_tf_kernels.h5",
    md5: Some("a7b3fe01876f51b976af0dea6bc144eb"),
};

/// The elephant photo Keras' own application tests classify.
pub const KERAS_ELEPHANT_JPG: Remote = Remote {
    url: "https://storage.googleapis.com/tensorflow/keras-applications/tests/elephant.jpg",
    file_name: "elephant.jpg",
    md5: None,
};

/// A file that can be downloaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remote {
    /// Where it lives.
    pub url: &'static str,
    /// Its name in the cache.
    pub file_name: &'static str,
    /// Its published md5 (hex), checked after download when known.
    pub md5: Option<&'static str>,
}

/// The cache folder: `$CONVNET_CACHE`, else `$XDG_CACHE_HOME/convnet`, else
/// `$HOME/.cache/convnet`, else `.convnet-cache` in the working directory.
pub fn cache_dir() -> PathBuf {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    env("CONVNET_CACHE")
        .or_else(|| env("XDG_CACHE_HOME").map(|p| p.join("convnet")))
        .or_else(|| env("HOME").map(|p| p.join(".cache").join("convnet")))
        .unwrap_or_else(|| PathBuf::from(".convnet-cache"))
}
