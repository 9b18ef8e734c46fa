use ndarray::ArrayViewD;

use super::{Layer, LayerPath, ParamKind, ParamVisitor, Summary, SummaryRow};
use crate::error::{Error, Result};
use crate::graph::{Lowering, ValueId};

/// Layers run one after another, each under a unique name.
///
/// ```
/// use convnet::layers::{Conv2d, Conv2dConfig, Layer, Relu, Sequential};
/// let mut net = Sequential::new();
/// net.push("conv", Conv2d::new(Conv2dConfig::new(3, 8, [3, 3]))?)?
///    .push("relu", Relu)?;
/// assert_eq!(net.output_shape(&[1, 32, 32, 3])?, vec![1, 30, 30, 8]);
/// # Ok::<(), convnet::Error>(())
/// ```
#[derive(Debug, Default)]
pub struct Sequential {
    layers: Vec<(String, Box<dyn Layer>)>,
}

impl Sequential {
    /// An empty sequence (the identity).
    pub fn new() -> Self {
        Sequential::default()
    }

    /// Appends `layer` under `name`; names must be non-empty, without `/`, and unique here.
    pub fn push(&mut self, name: impl Into<String>, layer: impl Layer + 'static) -> Result<&mut Self> {
        self.push_boxed(name, Box::new(layer))
    }

    /// [`push`](Sequential::push) for a layer that is already boxed.
    pub fn push_boxed(&mut self, name: impl Into<String>, layer: Box<dyn Layer>) -> Result<&mut Self> {
        let name = name.into();
        if name.is_empty() || name.contains('/') {
            return Err(Error::config(
                "Sequential",
                format!("layer names must be non-empty and contain no '/', got {name:?}"),
            ));
        }
        if self.get(&name).is_some() {
            return Err(Error::config("Sequential", format!("the name {name:?} is used twice")));
        }
        self.layers.push((name, layer));
        Ok(self)
    }

    /// Appends every layer of `other`, under its name there (names must stay unique here).
    pub fn append(&mut self, other: Sequential) -> Result<&mut Self> {
        for (name, layer) in other.layers {
            self.push_boxed(name, layer)?;
        }
        Ok(self)
    }

    /// Builder form of [`push`](Sequential::push).
    pub fn with(mut self, name: impl Into<String>, layer: impl Layer + 'static) -> Result<Self> {
        self.push(name, layer)?;
        Ok(self)
    }

    /// Number of direct children.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// True when there are no children.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// The direct children with their names, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &dyn Layer)> {
        self.layers.iter().map(|(n, l)| (n.as_str(), l.as_ref()))
    }

    /// The direct child called `name`.
    pub fn get(&self, name: &str) -> Option<&dyn Layer> {
        self.layers.iter().find(|(n, _)| n == name).map(|(_, l)| l.as_ref())
    }

    /// The direct child called `name`, mutable.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Box<dyn Layer>> {
        self.layers.iter_mut().find(|(n, _)| n == name).map(|(_, l)| l)
    }

    /// The children, mutable, with their names (for passes that rewrite a model).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut Box<dyn Layer>)> {
        self.layers.iter_mut().map(|(n, l)| (n.as_str(), l))
    }

    /// Keras-style summary for an input of `input` (batch axis included).
    pub fn summary(&self, input: &[usize]) -> Result<Summary> {
        let mut rows = Vec::new();
        let output = self.summarize(&mut LayerPath::default(), input, &mut rows)?;
        Ok(Summary::new(input.to_vec(), output, rows))
    }
}

impl Layer for Sequential {
    fn type_name(&self) -> &'static str {
        "Sequential"
    }

    fn lower<'m>(&'m self, b: &mut Lowering<'m>, x: ValueId) -> Result<ValueId> {
        let mut y = x;
        for (name, l) in &self.layers {
            y = b.scoped(name, |b| l.lower(b, y))?;
        }
        Ok(y)
    }

    fn visit_params(&self, path: &mut LayerPath, f: &mut dyn FnMut(&LayerPath, ParamKind, ArrayViewD<'_, f32>)) {
        for (name, l) in &self.layers {
            path.scoped(name, |p| l.visit_params(p, f));
        }
    }

    fn visit_params_mut(&mut self, path: &mut LayerPath, visitor: &mut dyn ParamVisitor) -> Result<()> {
        for (name, l) in &mut self.layers {
            path.scoped(name, |p| l.visit_params_mut(p, visitor))?;
        }
        Ok(())
    }

    fn summarize(&self, path: &mut LayerPath, input: &[usize], rows: &mut Vec<SummaryRow>) -> Result<Vec<usize>> {
        let mut shape = input.to_vec();
        for (name, l) in &self.layers {
            shape = path.scoped(name, |p| l.summarize(p, &shape, rows)).map_err(|e| e.in_layer(name))?;
        }
        Ok(shape)
    }
}
