use ndarray::{s, ArrayD, IxDyn};

use super::{nhwc, Layer, Tensor};
use crate::error::{checked_product, Result};
use crate::kernels::Padding2d;

/// Zero padding around the spatial axes of an NHWC batch (Keras' `ZeroPadding2D`).
#[derive(Clone, Copy, Debug, Default)]
pub struct ZeroPadding2d {
    /// Amounts per side.
    pub padding: Padding2d,
}

impl ZeroPadding2d {
    /// The same padding on all four sides (`ZeroPadding2D(3)`).
    pub fn uniform(p: usize) -> Self {
        ZeroPadding2d {
            padding: Padding2d::uniform(p),
        }
    }

    /// Asymmetric padding (`ZeroPadding2D(((top, bottom), (left, right)))`).
    pub fn new(padding: Padding2d) -> Self {
        ZeroPadding2d { padding }
    }
}

impl Layer for ZeroPadding2d {
    fn type_name(&self) -> &'static str {
        "ZeroPadding2D"
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let [n, h, w, c] = nhwc("ZeroPadding2D", input)?;
        let p = self.padding;
        let grow = |v: usize, a: usize, b: usize| v.checked_add(a).and_then(|v| v.checked_add(b));
        let (Some(oh), Some(ow)) = (grow(h, p.top, p.bottom), grow(w, p.left, p.right)) else {
            return Err(crate::Error::overflow("ZeroPadding2D", "the padded size"));
        };
        checked_product("ZeroPadding2D", &[n, oh, ow, c])?;
        Ok(vec![n, oh, ow, c])
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let out = self.output_shape(x.shape())?;
        let p = self.padding;
        let mut y = ArrayD::zeros(IxDyn(&out));
        let (h, w) = (x.shape()[1], x.shape()[2]);
        y.slice_mut(s![.., p.top..p.top + h, p.left..p.left + w, ..]).assign(x);
        Ok(y)
    }
}
