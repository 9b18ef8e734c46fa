use std::borrow::Cow;

use ndarray::{Array1, Array2, ArrayViewD};

use super::{expect_param_shape, Activation, Layer, LayerPath, ParamKind, ParamVisitor};
use crate::error::{Error, Result};
use crate::graph::{DenseOp, Lowering, Op, ValueId};

const NAME: &str = "Dense";

/// Fully connected layer on `(n, in_features)`: `y = act(x W + b)`, `W` stored `(in, out)` as Keras
/// does (a PyTorch `Linear.weight` is its transpose; the loaders convert).
#[derive(Clone, Debug)]
pub struct Dense {
    kernel: Array2<f32>,
    bias: Option<Array1<f32>>,
    activation: Option<Activation>,
}

impl Dense {
    /// A zero-initialised layer from `in_features` to `units`, with a bias, and an optional
    /// activation (`Some(Activation::Softmax)` for Keras' `Dense(1000, activation='softmax')`).
    pub fn new(in_features: usize, units: usize, activation: Option<Activation>) -> Result<Self> {
        if in_features == 0 || units == 0 {
            return Err(Error::config(
                NAME,
                format!("needs at least one input and one unit, got {in_features} -> {units}"),
            ));
        }
        crate::error::checked_product(NAME, &[in_features, units])?;
        Ok(Dense {
            kernel: Array2::zeros((in_features, units)),
            bias: Some(Array1::zeros(units)),
            activation,
        })
    }

    /// A layer with the given `(in, out)` kernel and optional bias.
    pub fn with_weights(kernel: Array2<f32>, bias: Option<Array1<f32>>, activation: Option<Activation>) -> Result<Self> {
        let (i, o) = kernel.dim();
        let mut d = Dense::new(i, o, activation)?;
        if let Some(b) = &bias {
            expect_param_shape(NAME, "bias", &[o], b.shape())?;
        }
        d.kernel = kernel.as_standard_layout().into_owned();
        d.bias = bias;
        Ok(d)
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.kernel.nrows()
    }

    /// Output units.
    pub fn units(&self) -> usize {
        self.kernel.ncols()
    }

    /// The activation applied after the affine map.
    pub fn activation(&self) -> Option<Activation> {
        self.activation
    }

    /// The `(in, out)` kernel.
    pub fn kernel(&self) -> &Array2<f32> {
        &self.kernel
    }

    /// The bias.
    pub fn bias(&self) -> Option<&Array1<f32>> {
        self.bias.as_ref()
    }
}

impl Layer for Dense {
    fn type_name(&self) -> &'static str {
        NAME
    }

    fn lower<'m>(&'m self, b: &mut Lowering<'m>, x: ValueId) -> Result<ValueId> {
        let kernel = self
            .kernel
            .as_slice()
            .ok_or_else(|| Error::config(NAME, "kernel is not contiguous"))?;
        let op = DenseOp {
            kernel: Cow::Borrowed(kernel),
            in_features: self.in_features(),
            units: self.units(),
            bias: self.bias.as_ref().and_then(|b| b.as_slice()).map(Cow::Borrowed),
        };
        let y = b.push(Op::Dense(op), &[x])?;
        match self.activation {
            Some(a) => a.lower(b, y),
            None => Ok(y),
        }
    }

    fn visit_params(&self, path: &mut LayerPath, f: &mut dyn FnMut(&LayerPath, ParamKind, ArrayViewD<'_, f32>)) {
        f(path, ParamKind::Kernel, self.kernel.view().into_dyn());
        if let Some(b) = &self.bias {
            f(path, ParamKind::Bias, b.view().into_dyn());
        }
    }

    fn visit_params_mut(&mut self, path: &mut LayerPath, visitor: &mut dyn ParamVisitor) -> Result<()> {
        visitor.visit(path, ParamKind::Kernel, self.kernel.view_mut().into_dyn())?;
        if let Some(b) = &mut self.bias {
            visitor.visit(path, ParamKind::Bias, b.view_mut().into_dyn())?;
        }
        Ok(())
    }
}
