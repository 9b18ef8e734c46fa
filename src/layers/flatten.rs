use super::Layer;
use crate::error::Result;
use crate::graph::{Lowering, Op, ValueId};

/// Flattens every axis after the batch axis, in NHWC `(h, w, c)` order as Keras'
/// `Flatten` does on `channels_last` data.
#[derive(Clone, Copy, Debug, Default)]
pub struct Flatten;

impl Layer for Flatten {
    fn type_name(&self) -> &'static str {
        "Flatten"
    }

    fn lower<'m>(&'m self, b: &mut Lowering<'m>, x: ValueId) -> Result<ValueId> {
        b.push(Op::Flatten, &[x])
    }
}
