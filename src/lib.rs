//! # convnet
//!
//! Convolutional neural networks on the CPU, in Rust: Keras-exact layers over a GEMM-backed
//! convolution kernel, composed into residual networks, run on a fast compiled path and
//! trained with PyTorch's and Keras' optimizers. Everything computes in `f32`.
//!
//! A freshly built layer holds zeros (its kernels, biases and BatchNorm statistics): load a
//! weights file ([`weights::WeightFile`]) or initialise it with a seeded scheme
//! ([`init::initialize`], He / Glorot / PyTorch's defaults) before using it.
//!
//! ```
//! use convnet::kernels::Padding;
//! use convnet::layers::{Activation, BatchNorm, Conv2d, Conv2dConfig, Dense, GlobalAvgPool, Layer, Relu, Residual, Sequential};
//! use ndarray::{ArrayD, IxDyn};
//!
//! // A stem, one residual block with an identity shortcut, and a classifier.
//! let mut block = Sequential::new();
//! block.push("conv_a", Conv2d::new(Conv2dConfig::new(16, 16, [3, 3]).with_padding(Padding::Same))?)?
//!      .push("bn_a", BatchNorm::new(16, 1e-3)?)?;
//! let mut net = Sequential::new();
//! net.push("stem", Conv2d::new(Conv2dConfig::new(3, 16, [3, 3]).with_strides([2, 2]))?)?
//!    .push("stem_relu", Relu)?
//!    .push("block", Residual::new(block, None, Some(Activation::Relu))?)?
//!    .push("pool", GlobalAvgPool)?
//!    .push("fc", Dense::new(16, 10, Some(Activation::Softmax))?)?;
//! // Built layers hold zeros: give them Keras' initialisers (Glorot kernels, zero biases,
//! // identity BatchNorm), seeded.
//! convnet::init::initialize(&mut net, &convnet::init::InitScheme::keras(), 42)?;
//!
//! // Shapes are checked before anything runs...
//! assert_eq!(net.output_shape(&[2, 33, 33, 3])?, vec![2, 10]);
//! // ...and a forward pass maps an NHWC batch (owned, or any view) to class probabilities.
//! let x = ArrayD::from_shape_fn(IxDyn(&[2, 33, 33, 3]), |i| (i[1] * 33 + i[2]) as f32 / 1089.0);
//! let probs = net.forward(&x)?;
//! assert_eq!(probs.shape(), &[2, 10]);
//! assert!((probs.sum() - 2.0).abs() < 1e-5);
//! let first = net.forward(&x.slice(ndarray::s![0..1, .., .., ..]).into_dyn())?;
//! let same = first.iter().zip(probs.iter()).all(|(a, b)| (a - b).abs() < 1e-6);
//! assert!(same, "the first image alone gives its row of the batch");
//! println!("{}", net.summary(&[1, 33, 33, 3])?);
//! # Ok::<(), convnet::Error>(())
//! ```
//!
//! ## Data layout, chosen once
//!
//! - Batches are 4-D `f32` [`ndarray`] arrays in **NHWC** `(batch, height, width, channels)`,
//!   Keras' `channels_last`. After [`layers::Flatten`], [`layers::GlobalAvgPool`] and
//!   [`layers::Dense`] they are `(batch, features)`. The type is [`layers::Tensor`]
//!   (`ArrayD<f32>`); inputs are taken as [`layers::TensorRef`], which owned arrays and views
//!   both dereference to.
//! - Convolution kernels are **HWIO** `(kh, kw, in_channels, out_channels)`, exactly as Keras
//!   stores them; dense kernels are `(in, out)`.
//! - Coming from PyTorch (NCHW)? Convert a batch once with [`nchw_to_nhwc`] (any 4-D array
//!   or view in, a [`layers::Tensor`] out); and back with [`nhwc_to_nchw`]. Weight files in PyTorch's layouts are
//!   converted once at load time, never per forward pass.
//!
//! ## Modules
//!
//! - [`kernels`]: GEMM wrapper, im2col, the convolution driver, pooling, their gradients, and
//!   their direct-loop [`kernels::reference`] twins. Slices in, slices out; no layer types.
//! - [`layers`]: the [`layers::Layer`] trait and the layers, [`layers::Sequential`],
//!   [`layers::Residual`], Keras-style summaries.
//! - [`models`]: [`models::ResNet`] from [`models::Bottleneck`] / [`models::BasicBlock`]
//!   builders, with presets for the seed's Keras ResNet50, the later Keras layouts and
//!   torchvision's ResNet18-152.
//! - [`weights`]: Keras HDF5 and PyTorch `.safetensors` / `.pth` files, loaded by name with a
//!   report of what was applied, missing, unused, mis-shaped or ambiguous; any model saved back
//!   to `.safetensors`.
//! - [`imagenet`]: the 1000 classes, `decode_predictions`, and Keras' and torchvision's image
//!   pipelines (Pillow-exact resizing).
//! - [`graph`]: the one lowered representation every model runs as: typed ops over values, the
//!   reference executor ([`Layer::forward`](layers::Layer::forward)), the rewriting passes, and
//!   the training-mode forward and backward of every op.
//! - [`inference`]: the fast executor: BatchNorm folded, bias/residual/ReLU fused into the GEMM's
//!   output pass (AVX-512, AVX2 + FMA or portable micro-kernels), Winograd, convolutions without
//!   im2col, buffers planned once per input shape, threads.
//! - [`train`]: gradients by layer path, softmax cross-entropy, PyTorch's and Keras' optimizers,
//!   learning-rate schedules, checkpoints.
//! - [`data`]: datasets in memory, seeded batches, IDX (Fashion-MNIST) and digits readers.
//! - [`init`]: seeded He / Glorot / PyTorch-default initialisers.
//! - `download` (feature `download`): md5-verified, atomic downloads into a cache.
//! - [`remote`]: where the pretrained weights and sample images live, and the cache folder.
//! - [`budget`]: the resource budget every loader checks before it allocates.
//! - [`error`]: the one [`Error`] type; bad input is a typed error, never a panic.
//!
//! ## Features
//!
//! | feature | default | what it does |
//! |---|---|---|
//! | `threading` | on | lets `matrixmultiply` split large GEMMs over threads (`MATMUL_NUM_THREADS`, at most 4) |
//! | `download` | on | the `download` module (pretrained weights, sample images); off, the crate has no network code |

#![warn(missing_docs)]

pub mod budget;
pub mod data;
#[cfg(feature = "download")]
pub mod download;
pub mod error;
pub mod graph;
pub mod imagenet;
pub mod inference;
pub mod init;
pub mod kernels;
pub mod layers;
pub mod models;
pub mod remote;
pub mod train;
pub mod weights;

pub use error::{Error, Result};

/// The README's Rust examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// Converts an NCHW batch (PyTorch's layout) into NHWC, the layout every layer here takes.
/// Takes any 4-dimensional `f32` array or view (`&Array4`, `&ArrayD`, `&ArrayViewD`, ...);
/// another rank is [`Error::Shape`].
pub fn nchw_to_nhwc<D: ndarray::Dimension>(x: &ndarray::ArrayRef<f32, D>) -> Result<layers::Tensor> {
    permute4(x, [0, 2, 3, 1], "nchw_to_nhwc")
}

/// Converts an NHWC batch into NCHW (PyTorch's layout); see [`nchw_to_nhwc`].
pub fn nhwc_to_nchw<D: ndarray::Dimension>(x: &ndarray::ArrayRef<f32, D>) -> Result<layers::Tensor> {
    permute4(x, [0, 3, 1, 2], "nhwc_to_nchw")
}

fn permute4<D: ndarray::Dimension>(x: &ndarray::ArrayRef<f32, D>, axes: [usize; 4], what: &str) -> Result<layers::Tensor> {
    if x.ndim() != 4 {
        return Err(Error::Shape {
            layer: what.into(),
            expected: "a 4-dimensional batch".into(),
            got: format!("{}", error::ShapeFmt(x.shape())),
        });
    }
    Ok(x.view()
        .into_dyn()
        .permuted_axes(ndarray::IxDyn(&axes))
        .as_standard_layout()
        .into_owned())
}
