//! Layers: small structs implementing one object-safe [`Layer`] trait, composed by
//! [`Sequential`] and [`Residual`].
//!
//! Each layer checks its input in [`Layer::output_shape`] (which [`Sequential`] runs over the
//! whole model when it is built, so a shape error shows before any forward pass) and again in
//! [`Layer::forward`], returning [`Error::Shape`] rather than panicking.

mod activation;
mod batch_norm;
mod conv;
mod dense;
mod flatten;
mod padding;
mod params;
mod pool;
mod residual;
mod sequential;
mod summary;

pub use activation::{Activation, Relu, Softmax};
pub use batch_norm::{BatchNorm, KERAS_EPSILON};
pub use conv::{Conv2d, Conv2dConfig};
pub use dense::Dense;
pub use flatten::Flatten;
pub use padding::ZeroPadding2d;
pub use params::{LayerPath, ParamCount, ParamKind, ParamVisitor};
pub use pool::{AvgPool2d, GlobalAvgPool, MaxPool2d, Pool2dConfig};
pub use residual::Residual;
pub use sequential::Sequential;
pub use summary::{Summary, SummaryRow};

use std::fmt;

use ndarray::{ArrayD, ArrayViewD, CowArray, IxDyn};

use crate::error::{Error, Result, ShapeFmt};

/// A batch of activations: NHWC `(n, h, w, c)` for images, `(n, features)` after
/// [`Flatten`], [`GlobalAvgPool`] or [`Dense`].
pub type Tensor = ArrayD<f32>;

/// A callback that sees every named intermediate output of a forward pass.
pub type Tap<'a> = dyn FnMut(&LayerPath, &Tensor) + 'a;

/// One step of a network. Object safe: models hold `Box<dyn Layer>`.
pub trait Layer: Send + Sync + fmt::Debug {
    /// The layer's type as a summary prints it (Keras' class names: `Conv2D`, `Dense`, ...).
    fn type_name(&self) -> &'static str;

    /// The layer as `Any`, so passes such as [`inference::CompiledModel`](crate::inference::CompiledModel)
    /// can recognise the concrete layer types they know how to lower.
    fn as_any(&self) -> &dyn std::any::Any;

    /// The output shape for an input of `input` (batch axis included), or the shape error a
    /// forward pass on such an input would give.
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>>;

    /// Runs the layer on a batch.
    fn forward(&self, x: &Tensor) -> Result<Tensor>;

    /// Like [`forward`](Layer::forward), and calls `tap` with the path and output of every
    /// named sub-layer (containers override this; leaves have nothing inside to show).
    fn forward_tapped(&self, x: &Tensor, _path: &mut LayerPath, _tap: &mut Tap<'_>) -> Result<Tensor> {
        self.forward(x)
    }

    /// Shows every parameter tensor, read-only, with its path and kind.
    fn visit_params(&self, _path: &mut LayerPath, _f: &mut dyn FnMut(&LayerPath, ParamKind, ArrayViewD<'_, f32>)) {}

    /// Hands every parameter tensor, writable, to `visitor` (weight loaders use this).
    fn visit_params_mut(&mut self, _path: &mut LayerPath, _visitor: &mut dyn ParamVisitor) -> Result<()> {
        Ok(())
    }

    /// Appends this layer's summary rows (containers: one per sub-layer) and returns the
    /// output shape.
    fn summarize(&self, path: &mut LayerPath, input: &[usize], rows: &mut Vec<SummaryRow>) -> Result<Vec<usize>> {
        let output = self.output_shape(input)?;
        rows.push(SummaryRow {
            path: path.clone(),
            type_name: self.type_name().to_string(),
            output_shape: output.clone(),
            params: self.param_count(),
        });
        Ok(output)
    }

    /// Trainable and non-trainable parameter counts.
    fn param_count(&self) -> ParamCount {
        let mut count = ParamCount::default();
        self.visit_params(&mut LayerPath::default(), &mut |_, kind, v| count.add(kind, v.len()));
        count
    }
}

/// Refuses a batch holding NaN or infinite values ([`Error::NonFinite`], key `input`).
pub fn check_finite(x: &Tensor) -> Result<()> {
    let count = x.iter().filter(|v| !v.is_finite()).count();
    if count > 0 {
        return Err(Error::NonFinite {
            path: "the input batch".into(),
            key: "input".into(),
            count,
        });
    }
    Ok(())
}

/// Returns the NHWC dims of `shape`, or a shape error naming `layer`.
pub(crate) fn nhwc(layer: &str, shape: &[usize]) -> Result<[usize; 4]> {
    match *shape {
        [n, h, w, c] => Ok([n, h, w, c]),
        _ => Err(Error::shape(
            layer,
            "a rank-4 NHWC batch (n, h, w, c)",
            format!("rank {} {}", shape.len(), ShapeFmt(shape)),
        )),
    }
}

/// A standard-layout view of `x` and its data as one slice.
pub(crate) fn contiguous(x: &Tensor) -> CowArray<'_, f32, IxDyn> {
    x.as_standard_layout()
}

/// The elements of a standard-layout array, in order.
pub(crate) fn as_slice<'a>(x: &'a CowArray<'_, f32, IxDyn>) -> &'a [f32] {
    // `as_standard_layout` guarantees C order, so `as_slice` is always `Some`; an empty
    // slice would only be reachable through a broken ndarray invariant.
    x.as_slice().unwrap_or(&[])
}

/// Builds a tensor of `shape` from `data`, mapping ndarray's error into ours.
pub(crate) fn tensor(layer: &str, shape: &[usize], data: Vec<f32>) -> Result<Tensor> {
    let len = data.len();
    ArrayD::from_shape_vec(IxDyn(shape), data)
        .map_err(|_| Error::shape(layer, format!("{} elements for {}", len, ShapeFmt(shape)), format!("{len}")))
}

/// Checks that a parameter tensor handed in by a caller has the shape the layer needs.
pub(crate) fn expect_param_shape(layer: &str, what: &str, want: &[usize], got: &[usize]) -> Result<()> {
    if want != got {
        return Err(Error::shape(
            layer,
            format!("{what} of shape {}", ShapeFmt(want)),
            format!("{}", ShapeFmt(got)),
        ));
    }
    Ok(())
}
