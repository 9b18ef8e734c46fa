use super::{Layer, Tensor};
use crate::error::{Error, Result, ShapeFmt};

/// An element-wise or last-axis activation, for layers that take one as an option
/// ([`Dense`](super::Dense), [`Residual`](super::Residual)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    /// `max(x, 0)`.
    Relu,
    /// Softmax over the last axis.
    Softmax,
}

impl Activation {
    /// Applies the activation in place.
    pub fn apply(self, x: &mut Tensor) -> Result<()> {
        match self {
            Activation::Relu => {
                x.mapv_inplace(|v| v.max(0.0));
                Ok(())
            }
            Activation::Softmax => softmax_last_axis(x),
        }
    }

    /// Keras' name for it.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Softmax => "softmax",
        }
    }
}

fn softmax_last_axis(x: &mut Tensor) -> Result<()> {
    if x.ndim() == 0 {
        return Err(Error::shape("Softmax", "at least one axis", "a scalar"));
    }
    let last = ndarray::Axis(x.ndim() - 1);
    for mut lane in x.lanes_mut(last) {
        let max = lane.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        lane.mapv_inplace(|v| (v - max).exp());
        let sum: f32 = lane.sum();
        lane.mapv_inplace(|v| v / sum);
    }
    Ok(())
}

/// Rectified linear unit, `max(x, 0)`, on a tensor of any shape.
#[derive(Clone, Copy, Debug, Default)]
pub struct Relu;

impl Layer for Relu {
    fn type_name(&self) -> &'static str {
        "Activation"
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        Ok(input.to_vec())
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.mapv(|v| v.max(0.0)))
    }
}

/// Softmax over the last axis (numerically stable: the lane maximum is subtracted first).
#[derive(Clone, Copy, Debug, Default)]
pub struct Softmax;

impl Layer for Softmax {
    fn type_name(&self) -> &'static str {
        "Activation"
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        if input.is_empty() {
            return Err(Error::shape("Softmax", "at least one axis", format!("{}", ShapeFmt(input))));
        }
        Ok(input.to_vec())
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = x.clone();
        softmax_last_axis(&mut y)?;
        Ok(y)
    }
}
