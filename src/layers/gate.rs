use ndarray::ArrayViewD;

use super::{Layer, LayerPath, ParamKind, ParamVisitor, Sequential, SummaryRow};
use crate::error::Result;
use crate::graph::{Lowering, Op, ValueId};

const NAME: &str = "Multiply";

/// `x * gate(x)`: a gate branch maps the image to one weight per channel, which then scales
/// every pixel of that channel (squeeze-and-excitation: the gate is global pooling, two dense
/// or 1x1 layers and a sigmoid). Lowered to the gate's ops and one [`Op::ChannelMul`].
///
/// ```
/// use convnet::layers::{Activation, ChannelGate, Dense, GlobalAvgPool, Layer, Sequential};
/// let mut gate = Sequential::new();
/// gate.push("squeeze", GlobalAvgPool)?
///     .push("reduce", Dense::new(32, 8, Some(Activation::Relu))?)?
///     .push("expand", Dense::new(8, 32, Some(Activation::Sigmoid))?)?;
/// let se = ChannelGate::new(gate);
/// assert_eq!(se.output_shape(&[2, 7, 7, 32])?, vec![2, 7, 7, 32]);
/// # Ok::<(), convnet::Error>(())
/// ```
#[derive(Debug)]
pub struct ChannelGate {
    gate: Sequential,
}

impl ChannelGate {
    /// A gate whose output for an `(n, h, w, c)` input is `(n, c)`.
    pub fn new(gate: Sequential) -> Self {
        ChannelGate { gate }
    }

    /// The gate branch.
    pub fn gate(&self) -> &Sequential {
        &self.gate
    }
}

impl Layer for ChannelGate {
    fn type_name(&self) -> &'static str {
        NAME
    }

    fn lower<'m>(&'m self, b: &mut Lowering<'m>, x: ValueId) -> Result<ValueId> {
        let w = self.gate.lower(b, x)?;
        b.within("multiply", |b| b.push(Op::ChannelMul, &[x, w]))
    }

    fn visit_params(&self, path: &mut LayerPath, f: &mut dyn FnMut(&LayerPath, ParamKind, ArrayViewD<'_, f32>)) {
        self.gate.visit_params(path, f)
    }

    fn visit_params_mut(&mut self, path: &mut LayerPath, visitor: &mut dyn ParamVisitor) -> Result<()> {
        self.gate.visit_params_mut(path, visitor)
    }

    fn summarize(&self, path: &mut LayerPath, input: &[usize], rows: &mut Vec<SummaryRow>) -> Result<Vec<usize>> {
        self.gate.summarize(path, input, rows)?;
        let output = self.output_shape(input)?;
        rows.push(SummaryRow::join(path.clone(), NAME, output.clone()));
        Ok(output)
    }
}
