use ndarray::{Array1, Array2, ArrayViewD, Ix2};

use super::{expect_param_shape, Activation, Layer, LayerPath, ParamKind, ParamVisitor, Tensor};
use crate::error::{Error, Result, ShapeFmt};
use crate::kernels;

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

    fn check(&self, input: &[usize]) -> Result<usize> {
        match *input {
            [n, f] if f == self.in_features() => Ok(n),
            _ => Err(Error::shape(
                NAME,
                format!("(n, {}) features", self.in_features()),
                format!("{}", ShapeFmt(input)),
            )),
        }
    }
}

impl Layer for Dense {
    fn type_name(&self) -> &'static str {
        NAME
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        Ok(vec![self.check(input)?, self.units()])
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let n = self.check(x.shape())?;
        let x2 = x
            .view()
            .into_dimensionality::<Ix2>()
            .map_err(|e| Error::shape(NAME, "a rank-2 batch", e.to_string()))?;
        let mut y = Array2::<f32>::zeros((n, self.units()));
        kernels::sgemm(1.0, x2, self.kernel.view(), 0.0, y.view_mut()).map_err(|e| super::conv::rename(e, NAME))?;
        if let Some(b) = &self.bias {
            y += b;
        }
        let mut y = y.into_dyn();
        if let Some(a) = self.activation {
            a.apply(&mut y)?;
        }
        Ok(y)
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
