use super::{contiguous, Layer, Tensor};
use crate::error::{Error, Result, ShapeFmt};

/// Flattens every axis after the batch axis, in NHWC `(h, w, c)` order as Keras'
/// `Flatten` does on `channels_last` data.
#[derive(Clone, Copy, Debug, Default)]
pub struct Flatten;

impl Layer for Flatten {
    fn type_name(&self) -> &'static str {
        "Flatten"
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        if input.len() < 2 {
            return Err(Error::shape("Flatten", "a batch of rank >= 2", format!("{}", ShapeFmt(input))));
        }
        Ok(vec![input[0], crate::error::checked_product("Flatten", &input[1..])?])
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let shape = self.output_shape(x.shape())?;
        let x = contiguous(x).into_owned();
        x.into_shape_with_order(shape)
            .map_err(|e| Error::shape("Flatten", "a reshapeable batch", e.to_string()))
    }
}
