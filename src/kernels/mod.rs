//! Kernels over plain slices: usable, testable and benchmarkable without any layer type.
//!
//! Layout: activations are NHWC, row-major; convolution kernels are HWIO
//! `(kh, kw, in_channels, out_channels)`, Keras' layout, which reshapes to the GEMM's
//! `K x N` operand with no copy. Every fast kernel has a direct-loop twin in [`reference`](mod@reference)
//! that the property tests (`tests/kernels_prop.rs`) compare it with.

pub mod backward;
pub mod conv;
pub mod depthwise;
pub mod fma_peak;
pub mod gemm;
pub mod geometry;
pub mod im2col;
pub(crate) mod implicit;
pub mod narrow_groups;
pub mod packed_gemm;
pub mod pool;
pub mod rectifier;
pub mod reference;
mod short_copy;
pub mod threaded;
pub mod winograd;

pub use conv::{conv2d, conv2d_grouped, conv2d_tiled, ConvStrategy, Epilogue};
pub use gemm::{sgemm, sgemm_row_major};
pub use geometry::{ConvGeometry, Padding, Padding2d, PoolGeometry, Window2d};
pub use im2col::im2col;
pub use pool::{avg_pool2d, global_avg_pool, max_pool2d};
pub use rectifier::Rectifier;
