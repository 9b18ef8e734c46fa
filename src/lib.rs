pub mod error;
pub mod kernels;
pub mod layers;

pub use error::{Error, Result};
