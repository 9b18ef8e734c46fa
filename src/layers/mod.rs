//! Layers: small structs implementing one object-safe [`Layer`] trait, composed by
//! [`Sequential`], [`Residual`], [`Concatenate`] and [`ChannelGate`]. Each lowers itself into
//! the op graph ([`crate::graph`]); multi-branch blocks are graph structure (an add, a
//! concatenation, a channel-wise multiply), not special cases.
//!
//! Each layer checks its input in [`Layer::output_shape`] (which [`Sequential`] runs over the
//! whole model when it is built, so a shape error shows before any forward pass) and again in
//! [`Layer::forward`], returning [`Error::Shape`] rather than panicking.

mod activation;
mod batch_norm;
mod concat;
mod conv;
mod dense;
mod flatten;
mod gate;
mod padding;
mod params;
mod pool;
mod residual;
mod sequential;
mod summary;

pub use activation::{Activation, ActivationLayer, Relu, Softmax};
pub use batch_norm::{BatchNorm, KERAS_EPSILON};
pub use concat::Concatenate;
pub use conv::{Conv2d, Conv2dConfig};
pub use dense::Dense;
pub use flatten::Flatten;
pub use gate::ChannelGate;
pub use padding::ZeroPadding2d;
pub use params::{LayerPath, ParamCount, ParamKind, ParamVisitor};
pub use pool::{AvgPool2d, GlobalAvgPool, MaxPool2d, Pool2dConfig};
pub use residual::Residual;
pub use sequential::Sequential;
pub use summary::{Summary, SummaryRow};

use std::fmt;

use ndarray::{ArrayD, ArrayViewD};

use crate::graph::{Lowering, ValueId};

use crate::error::{Error, Result, ShapeFmt};

/// A batch of activations: NHWC `(n, h, w, c)` for images, `(n, features)` after
/// [`Flatten`], [`GlobalAvgPool`] or [`Dense`].
pub type Tensor = ArrayD<f32>;

/// A borrowed batch: what `&Tensor`, `&ArrayViewD<f32>` and any other dynamic-rank `f32`
/// array dereference to, so functions taking `&TensorRef` accept owned arrays and views alike.
pub type TensorRef = ndarray::ArrayRef<f32, ndarray::IxDyn>;

/// Intermediate values by the names they were asked for (see [`Layer::forward_with_taps`]).
pub type Taps = Vec<(String, Tensor)>;

/// One step of a network. Object safe: models hold `Box<dyn Layer>`.
///
/// A layer describes what it computes by lowering itself into the crate's one op graph
/// ([`Layer::lower`], see [`graph`](crate::graph)); its forward pass, output shape and taps are
/// derived from that graph by default, so the layer-by-layer path and the compiled one
/// ([`CompiledModel`](crate::inference::CompiledModel)) run the same ops.
///
/// A layer of your own that is not built from the graph's ops lowers to an opaque op
/// ([`Lowering::opaque`]) and implements [`forward`](Layer::forward) and
/// [`output_shape`](Layer::output_shape) itself; it then runs inside compiled models too:
///
/// ```
/// use convnet::graph::{Lowering, ValueId};
/// use convnet::layers::{Layer, Tensor, TensorRef};
/// #[derive(Debug)]
/// struct Square;
/// impl Layer for Square {
///     fn type_name(&self) -> &'static str { "Square" }
///     fn lower<'m>(&'m self, b: &mut Lowering<'m>, x: ValueId) -> convnet::Result<ValueId> { b.opaque(self, x) }
///     fn output_shape(&self, input: &[usize]) -> convnet::Result<Vec<usize>> { Ok(input.to_vec()) }
///     fn forward(&self, x: &TensorRef) -> convnet::Result<Tensor> { Ok(x.mapv(|v| v * v)) }
/// }
/// let y = Square.forward(&ndarray::ArrayD::from_elem(ndarray::IxDyn(&[1, 2]), 3.0))?;
/// assert_eq!(y[[0, 1]], 9.0);
/// # Ok::<(), convnet::Error>(())
/// ```
pub trait Layer: Send + Sync + fmt::Debug {
    /// The layer's type as a summary prints it (Keras' class names: `Conv2D`, `Dense`, ...).
    fn type_name(&self) -> &'static str;

    /// Adds this layer's ops to `b`, reading `x`, and returns the layer's output value.
    /// Shapes are checked as ops are added, so a shape error names the failing layer.
    fn lower<'m>(&'m self, b: &mut Lowering<'m>, x: ValueId) -> Result<ValueId>;

    /// The output shape for an input of `input` (batch axis included), or the shape error a
    /// forward pass on such an input would give.
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        crate::graph::layer_output_shape(self, input)
    }

    /// Runs the layer on a batch: the lowered graph on the reference executor
    /// ([`graph::reference`](crate::graph::reference)). A batch holding NaN or infinity is
    /// refused with [`Error::NonFinite`], as by every entry point of the crate, and an output
    /// holding them is [`Error::NonFiniteOutput`], naming the first layer that produced any.
    fn forward(&self, x: &TensorRef) -> Result<Tensor> {
        crate::graph::forward_layer(self, x)
    }

    /// Runs the layer and also returns the outputs of the sub-layers named in `names`: layer
    /// paths as displayed (`res2c`, `layer1/0/conv1` or `layer1.0.conv1`), or a layer's own
    /// name where it is unique (as Keras summaries print it). An unknown name is an error.
    fn forward_with_taps(&self, x: &TensorRef, names: &[&str]) -> Result<(Tensor, Taps)> {
        crate::graph::forward_layer_with_taps(self, x, names)
    }

    /// The per-image input shape the layer is built for, when it has one (a
    /// [`ResNet`](crate::models::ResNet)'s `[224, 224, 3]`); compiled models default to it.
    fn input_shape(&self) -> Option<Vec<usize>> {
        None
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
pub fn check_finite(x: &TensorRef) -> Result<()> {
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
