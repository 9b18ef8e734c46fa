use ndarray::ArrayViewD;

use super::{Activation, Layer, LayerPath, ParamKind, ParamVisitor, Sequential, SummaryRow};
use crate::error::{Error, Result, ShapeFmt};
use crate::graph::{Lowering, Op, ValueId};
use crate::kernels::Rectifier;

const NAME: &str = "Residual";

/// `act(main(x) + shortcut(x))`: a residual connection with an identity shortcut (`None`) or
/// a projection (`Some`, e.g. a strided 1x1 convolution and a BatchNorm).
///
/// The children of both branches sit directly under the block's own path, so a block named
/// `res2a` holds `res2a/res2a_branch2a` and `res2a/res2a_branch1`, and a torchvision block
/// `layer1/0` holds `layer1/0/conv1` and `layer1/0/downsample/0`. Their names must not collide.
#[derive(Debug)]
pub struct Residual {
    main: Sequential,
    shortcut: Option<Sequential>,
    activation: Option<Activation>,
}

impl Residual {
    /// A residual block; `activation` runs after the add (ResNets use `Some(Activation::Relu)`).
    pub fn new(main: Sequential, shortcut: Option<Sequential>, activation: Option<Activation>) -> Result<Self> {
        if let Some(s) = &shortcut {
            if let Some((name, _)) = s.iter().find(|(n, _)| main.get(n).is_some()) {
                return Err(Error::config(
                    NAME,
                    format!("the name {name:?} is used in both the main branch and the shortcut"),
                ));
            }
        }
        Ok(Residual {
            main,
            shortcut,
            activation,
        })
    }

    /// The main branch.
    pub fn main(&self) -> &Sequential {
        &self.main
    }

    /// The projection shortcut, if any.
    pub fn shortcut(&self) -> Option<&Sequential> {
        self.shortcut.as_ref()
    }

    /// The main branch, mutable.
    pub fn main_mut(&mut self) -> &mut Sequential {
        &mut self.main
    }

    /// The projection shortcut, mutable.
    pub fn shortcut_mut(&mut self) -> Option<&mut Sequential> {
        self.shortcut.as_mut()
    }

    /// The activation after the add.
    pub fn activation(&self) -> Option<Activation> {
        self.activation
    }
}

fn mismatch(main: &[usize], short: &[usize]) -> Error {
    Error::shape(
        NAME,
        format!("a shortcut of the main branch's shape {}", ShapeFmt(main)),
        format!("{}", ShapeFmt(short)),
    )
}

impl Layer for Residual {
    fn type_name(&self) -> &'static str {
        NAME
    }

    /// The shortcut first, then the main branch (so the main branch's last op directly
    /// precedes the add, ready to take it into its epilogue), then `Add(main, shortcut)` and
    /// the activation.
    fn lower<'m>(&'m self, b: &mut Lowering<'m>, x: ValueId) -> Result<ValueId> {
        let short = match &self.shortcut {
            Some(s) => s.lower(b, x)?,
            None => x,
        };
        let main = self.main.lower(b, x)?;
        if b.shape(main) != b.shape(short) {
            return Err(mismatch(b.shape(main), b.shape(short)));
        }
        let y = b.within("add", |b| {
            b.push(
                Op::Add {
                    rectifier: Rectifier::Identity,
                },
                &[main, short],
            )
        })?;
        match self.activation {
            Some(a) => a.lower(b, y),
            None => Ok(y),
        }
    }

    fn visit_params(&self, path: &mut LayerPath, f: &mut dyn FnMut(&LayerPath, ParamKind, ArrayViewD<'_, f32>)) {
        self.main.visit_params(path, f);
        if let Some(s) = &self.shortcut {
            s.visit_params(path, f);
        }
    }

    fn visit_params_mut(&mut self, path: &mut LayerPath, visitor: &mut dyn ParamVisitor) -> Result<()> {
        self.main.visit_params_mut(path, visitor)?;
        if let Some(s) = &mut self.shortcut {
            s.visit_params_mut(path, visitor)?;
        }
        Ok(())
    }

    fn summarize(&self, path: &mut LayerPath, input: &[usize], rows: &mut Vec<SummaryRow>) -> Result<Vec<usize>> {
        let main = self.main.summarize(path, input, rows)?;
        let short = match &self.shortcut {
            Some(s) => s.summarize(path, input, rows)?,
            None => input.to_vec(),
        };
        if main != short {
            return Err(mismatch(&main, &short));
        }
        let row = |path: LayerPath, type_name: &str| SummaryRow::join(path, type_name, main.clone());
        if self.activation.is_some() {
            // `res2a_add` under a named block; plain `add` under an indexed one (`layer1.0.add`).
            let leaf = path.leaf();
            let add = if leaf.is_empty() || leaf.bytes().all(|b| b.is_ascii_digit()) {
                "add".to_string()
            } else {
                format!("{leaf}_add")
            };
            rows.push(row(path.scoped(&add, |p| p.clone()), "Add"));
            rows.push(row(path.clone(), "Activation"));
        } else {
            rows.push(row(path.clone(), "Add"));
        }
        Ok(main)
    }
}
