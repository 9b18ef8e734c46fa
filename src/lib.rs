//! # convnet
//!
//! Convolutional neural networks on the CPU, in Rust: Keras-exact layers over a GEMM-backed
//! convolution kernel, composed into residual networks.
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
//!
//! // Shapes are checked before anything runs...
//! assert_eq!(net.output_shape(&[2, 33, 33, 3])?, vec![2, 10]);
//! // ...and a forward pass maps an NHWC batch to class probabilities.
//! let probs = net.forward(&ArrayD::zeros(IxDyn(&[2, 33, 33, 3])))?;
//! assert_eq!(probs.shape(), &[2, 10]);
//! println!("{}", net.summary(&[1, 33, 33, 3])?);
//! # Ok::<(), convnet::Error>(())
//! ```
//!
//! ## Data layout, chosen once
//!
//! - Batches are 4-D `f32` [`ndarray`] arrays in **NHWC** `(batch, height, width, channels)`,
//!   Keras' `channels_last`. After [`layers::Flatten`], [`layers::GlobalAvgPool`] and
//!   [`layers::Dense`] they are `(batch, features)`. The type is [`layers::Tensor`]
//!   (`ArrayD<f32>`).
//! - Convolution kernels are **HWIO** `(kh, kw, in_channels, out_channels)`, exactly as Keras
//!   stores them; dense kernels are `(in, out)`.
//! - Coming from PyTorch (NCHW)? Convert a batch once with
//!   `x.permuted_axes([0, 2, 3, 1]).as_standard_layout().into_owned()`, or
//!   [`nchw_to_nhwc`]; and back with [`nhwc_to_nchw`]. Weight files in PyTorch's layouts are
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
//! - [`init`]: seeded He / Glorot / PyTorch-default initialisers.
//! - `download` (feature `download`): md5-verified, atomic downloads into a cache.
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
pub mod train;
pub mod weights;

pub use error::{Error, Result};

use ndarray::Array4;

/// The README's Rust examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// Converts an NCHW batch (PyTorch's layout) into NHWC, the layout every layer here takes.
pub fn nchw_to_nhwc(x: &Array4<f32>) -> Array4<f32> {
    x.view().permuted_axes([0, 2, 3, 1]).as_standard_layout().into_owned()
}

/// Converts an NHWC batch into NCHW.
pub fn nhwc_to_nchw(x: &Array4<f32>) -> Array4<f32> {
    x.view().permuted_axes([0, 3, 1, 2]).as_standard_layout().into_owned()
}
