use super::Layer;
use crate::error::{Error, Result, ShapeFmt};
use crate::graph::{Lowering, Op, UnaryFn, ValueId};

/// An activation, for layers that take one as an option ([`Dense`](super::Dense),
/// [`Residual`](super::Residual)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)` (MobileNet's).
    Relu6,
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
    /// Softmax over the last axis.
    Softmax,
}

impl Activation {
    /// Keras' name for it.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Relu6 => "relu6",
            Activation::Sigmoid => "sigmoid",
            Activation::Softmax => "softmax",
        }
    }

    /// Adds the activation's op after `x`.
    pub fn lower(self, b: &mut Lowering<'_>, x: ValueId) -> Result<ValueId> {
        let op = match self {
            Activation::Relu => Op::Unary(UnaryFn::Relu),
            Activation::Relu6 => Op::Unary(UnaryFn::Relu6),
            Activation::Sigmoid => Op::Unary(UnaryFn::Sigmoid),
            Activation::Softmax => Op::Softmax {
                axis: last_axis(b.shape(x))?,
            },
        };
        b.push(op, &[x])
    }
}

fn last_axis(shape: &[usize]) -> Result<usize> {
    shape
        .len()
        .checked_sub(1)
        .ok_or_else(|| Error::shape("Softmax", "at least one axis after the batch axis", format!("{}", ShapeFmt(shape))))
}

/// Rectified linear unit, `max(x, 0)`, on a tensor of any shape.
#[derive(Clone, Copy, Debug, Default)]
pub struct Relu;

impl Layer for Relu {
    fn type_name(&self) -> &'static str {
        "Activation"
    }

    fn lower<'m>(&'m self, b: &mut Lowering<'m>, x: ValueId) -> Result<ValueId> {
        Activation::Relu.lower(b, x)
    }
}

/// Softmax over the last axis (numerically stable: the lane maximum is subtracted first).
#[derive(Clone, Copy, Debug, Default)]
pub struct Softmax;

impl Layer for Softmax {
    fn type_name(&self) -> &'static str {
        "Activation"
    }

    fn lower<'m>(&'m self, b: &mut Lowering<'m>, x: ValueId) -> Result<ValueId> {
        Activation::Softmax.lower(b, x)
    }
}

/// An element-wise [`Activation`] as a layer of its own (Keras' `Activation('relu6')` or
/// `Activation('sigmoid')`); softmax acts on the last axis.
#[derive(Clone, Copy, Debug)]
pub struct ActivationLayer(pub Activation);

impl Layer for ActivationLayer {
    fn type_name(&self) -> &'static str {
        "Activation"
    }

    fn lower<'m>(&'m self, b: &mut Lowering<'m>, x: ValueId) -> Result<ValueId> {
        self.0.lower(b, x)
    }
}
