use super::Layer;
use crate::error::Result;
use crate::graph::{Lowering, Op, ValueId};
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

    fn lower<'m>(&'m self, b: &mut Lowering<'m>, x: ValueId) -> Result<ValueId> {
        b.push(Op::Pad(self.padding), &[x])
    }
}
