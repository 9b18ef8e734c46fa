use ndarray::ArrayViewD;

use super::{Layer, LayerPath, ParamKind, ParamVisitor, Sequential, SummaryRow};
use crate::error::{Error, Result};
use crate::graph::{Lowering, Op, ValueId};

const NAME: &str = "Concatenate";

/// Parallel branches on one input, their outputs concatenated along the channel axis (an
/// Inception module, a DenseNet layer with an identity branch): lowered to the branches' ops
/// and one [`Op::Concat`].
///
/// ```
/// use convnet::layers::{Concatenate, Conv2d, Conv2dConfig, Layer, Sequential};
/// use convnet::kernels::Padding;
/// let branch = |f: usize, k: usize| -> convnet::Result<Sequential> {
///     Sequential::new().with("conv", Conv2d::new(Conv2dConfig::new(8, f, [k, k]).with_padding(Padding::Same))?)
/// };
/// let block = Concatenate::new(vec![("b1".into(), branch(4, 1)?), ("b3".into(), branch(6, 3)?)])?;
/// assert_eq!(block.output_shape(&[1, 9, 9, 8])?, vec![1, 9, 9, 10]);
/// # Ok::<(), convnet::Error>(())
/// ```
///
/// Each branch's layers sit under the branch's name (`block/b1/conv`). An empty branch
/// (`Sequential::new()`) passes the input through (DenseNet's concatenation of the input).
#[derive(Debug)]
pub struct Concatenate {
    branches: Vec<(String, Sequential)>,
}

impl Concatenate {
    /// Branches by name; names must be non-empty, without `/`, and unique, and there must be
    /// at least one branch.
    pub fn new(branches: Vec<(String, Sequential)>) -> Result<Self> {
        if branches.is_empty() {
            return Err(Error::config(NAME, "needs at least one branch"));
        }
        for (i, (name, _)) in branches.iter().enumerate() {
            if name.is_empty() || name.contains('/') || branches[..i].iter().any(|(n, _)| n == name) {
                return Err(Error::config(
                    NAME,
                    format!("branch names must be non-empty, unique and contain no '/', got {name:?}"),
                ));
            }
        }
        Ok(Concatenate { branches })
    }

    /// The branches with their names.
    pub fn branches(&self) -> &[(String, Sequential)] {
        &self.branches
    }
}

impl Layer for Concatenate {
    fn type_name(&self) -> &'static str {
        NAME
    }

    fn lower<'m>(&'m self, b: &mut Lowering<'m>, x: ValueId) -> Result<ValueId> {
        let outs = self
            .branches
            .iter()
            .map(|(name, s)| b.scoped(name, |b| s.lower(b, x)))
            .collect::<Result<Vec<_>>>()?;
        b.within("concat", |b| b.push(Op::Concat, &outs))
    }

    fn visit_params(&self, path: &mut LayerPath, f: &mut dyn FnMut(&LayerPath, ParamKind, ArrayViewD<'_, f32>)) {
        for (name, s) in &self.branches {
            path.scoped(name, |p| s.visit_params(p, f));
        }
    }

    fn visit_params_mut(&mut self, path: &mut LayerPath, visitor: &mut dyn ParamVisitor) -> Result<()> {
        for (name, s) in &mut self.branches {
            path.scoped(name, |p| s.visit_params_mut(p, visitor))?;
        }
        Ok(())
    }

    fn summarize(&self, path: &mut LayerPath, input: &[usize], rows: &mut Vec<SummaryRow>) -> Result<Vec<usize>> {
        for (name, s) in &self.branches {
            path.scoped(name, |p| s.summarize(p, input, rows)).map_err(|e| e.in_layer(name))?;
        }
        let output = self.output_shape(input)?;
        rows.push(SummaryRow::join(path.clone(), NAME, output.clone()));
        Ok(output)
    }
}
