//! The one lowered representation every model runs as.
//!
//! Each [`Layer`] lowers itself ([`Layer::lower`]) into a [`Graph`]: typed [`Op`]s over
//! explicit values with static per-image shapes, checked as each node is added. Two executors
//! run that graph:
//!
//! - the **reference executor** ([`reference`](mod@reference)): plain kernels, one function per op, the
//!   definition of what each op computes. [`Layer::forward`] is this executor.
//! - the **fast executor** ([`crate::inference::CompiledModel`]): the same graph after the
//!   rewriting [`passes`] (padding and BatchNorm folding, epilogue fusion, Winograd selection),
//!   then buffer liveness and scheduling, run by packed-GEMM kernels over threads.
//!
//! Both are tested against each other on every golden and on random graphs, so they cannot
//! drift. A layer built from existing layers lowers to their ops (a [`Residual`](crate::layers::Residual)
//! is an [`Op::Add`] of its branches); a layer that is not lowers to [`Op::Opaque`], which
//! calls its own forward, so every model compiles.
//!
//! ```
//! use convnet::graph::Graph;
//! use convnet::layers::{Conv2d, Conv2dConfig, Relu, Sequential};
//! let mut net = Sequential::new();
//! net.push("conv", Conv2d::new(Conv2dConfig::new(3, 8, [3, 3]))?)?.push("relu", Relu)?;
//! let graph = Graph::lower(&net, &[32, 32, 3])?;
//! assert_eq!(graph.nodes().len(), 2);
//! assert_eq!(graph.shape(graph.output()), &[30, 30, 8]);
//! println!("{graph}");
//! # Ok::<(), convnet::Error>(())
//! ```

mod guard;
mod op;
pub mod passes;
pub mod reference;
pub mod training;

pub use op::{BatchNormOp, ConvAlgorithm, ConvOp, DenseOp, Op, Param, PoolOp, UnaryFn};

use std::collections::BTreeMap;
use std::fmt;

use crate::error::{Error, Result, ShapeFmt};
use crate::layers::{Layer, LayerPath};

/// A value of the graph (the output of one node, or the graph input).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub(crate) usize);

impl ValueId {
    /// The value's index (values are numbered from 0, the graph input).
    pub fn index(self) -> usize {
        self.0
    }
}

/// One op applied to its inputs.
#[derive(Clone, Debug)]
pub struct Node<'m> {
    /// The layer that produced it (the path the summary and the weight files use).
    pub path: LayerPath,
    /// The op.
    pub op: Op<'m>,
    /// The values it reads, in order.
    pub inputs: Vec<ValueId>,
    /// The value it writes.
    pub output: ValueId,
}

impl Node<'_> {
    /// `path` as displayed (`res2a/res2a_branch2a`), or the op kind for an unnamed node.
    pub fn name(&self) -> String {
        let p = self.path.to_string();
        if p.is_empty() {
            self.op.kind().to_string()
        } else {
            p
        }
    }
}

/// A lowered model: nodes in execution order over per-image values.
#[derive(Clone, Debug)]
pub struct Graph<'m> {
    shapes: Vec<Vec<usize>>,
    nodes: Vec<Node<'m>>,
    input: ValueId,
    output: ValueId,
    /// Layer paths (as displayed) and the values they output.
    names: BTreeMap<String, ValueId>,
}

impl<'m> Graph<'m> {
    /// Lowers `model` for images of per-image shape `input_shape` (`[h, w, c]`, no batch axis).
    pub fn lower(model: &'m dyn Layer, input_shape: &[usize]) -> Result<Self> {
        let mut b = Lowering::new(input_shape)?;
        let x = b.input();
        let y = model.lower(&mut b, x)?;
        Ok(b.finish(y))
    }

    /// The nodes, in execution order.
    pub fn nodes(&self) -> &[Node<'m>] {
        &self.nodes
    }

    /// The nodes, mutable (for passes; [`Graph::check`] verifies the result).
    pub(crate) fn nodes_mut(&mut self) -> &mut Vec<Node<'m>> {
        &mut self.nodes
    }

    /// The graph input.
    pub fn input(&self) -> ValueId {
        self.input
    }

    /// The graph output.
    pub fn output(&self) -> ValueId {
        self.output
    }

    /// Number of values.
    pub fn value_count(&self) -> usize {
        self.shapes.len()
    }

    /// Per-image shape of a value.
    pub fn shape(&self, v: ValueId) -> &[usize] {
        &self.shapes[v.0]
    }

    /// The layer paths whose outputs are values of the graph, with those values.
    pub fn names(&self) -> impl Iterator<Item = (&str, ValueId)> {
        self.names.iter().map(|(k, &v)| (k.as_str(), v))
    }

    /// The value a tap name refers to: a layer path as displayed with `/` (`res2a/res2a_branch2a`)
    /// or `.` (`layer1.0.conv1`), or a layer's own name where it is unique (`res2a_branch2a`,
    /// as Keras summaries print it). Unknown and ambiguous names are [`Error::Config`].
    pub fn value_named(&self, name: &str) -> Result<ValueId> {
        let norm = name.replace('.', "/");
        if let Some(&v) = self.names.get(&norm) {
            return Ok(v);
        }
        let mut hits = self
            .names
            .iter()
            .filter(|(k, _)| k.rsplit('/').next() == Some(norm.as_str()))
            .map(|(_, &v)| v);
        match (hits.next(), hits.next()) {
            (Some(v), None) => Ok(v),
            (Some(_), Some(_)) => Err(Error::config(
                "taps",
                format!("{name:?} names more than one layer; give its full path"),
            )),
            (None, _) => Err(Error::config(
                "taps",
                format!("no layer named {name:?} in this model (names are layer paths, e.g. the summary's)"),
            )),
        }
    }

    /// The indices of the nodes that read `v`.
    pub fn consumers(&self, v: ValueId) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].inputs.contains(&v)).collect()
    }

    /// The index of the node writing `v` (`None` for the input).
    pub fn producer(&self, v: ValueId) -> Option<usize> {
        self.nodes.iter().position(|n| n.output == v)
    }

    /// Checks the graph's invariants: every value read is the input or written earlier, each
    /// value is written once, and every node's output shape is what its op gives for its
    /// inputs. Passes run it after every rewrite.
    pub fn check(&self) -> Result<()> {
        let mut ready = vec![false; self.shapes.len()];
        ready[self.input.0] = true;
        for n in &self.nodes {
            let name = n.name();
            for v in &n.inputs {
                if !ready.get(v.0).copied().unwrap_or(false) {
                    return Err(Error::config("graph", format!("{name} reads value {} before it is written", v.0)));
                }
            }
            if ready[n.output.0] {
                return Err(Error::config("graph", format!("{name} writes value {} a second time", n.output.0)));
            }
            let shapes: Vec<&[usize]> = n.inputs.iter().map(|v| self.shapes[v.0].as_slice()).collect();
            let want = n.op.output_shape(&shapes).map_err(|e| e.in_layer(&name))?;
            if want != self.shapes[n.output.0] {
                return Err(Error::shape(
                    name,
                    format!("an output of {}", ShapeFmt(&want)),
                    format!("{}", ShapeFmt(&self.shapes[n.output.0])),
                ));
            }
            ready[n.output.0] = true;
        }
        if !ready[self.output.0] {
            return Err(Error::config("graph", "the output is never written"));
        }
        Ok(())
    }

    /// Whether every element of `v` is known to be `>= 0` (a ReLU's output, or one that only
    /// pads, pools or flattens such a value). Zero padding before a max pool can then be folded
    /// into the pool's ignored padding.
    pub fn is_nonnegative(&self, v: ValueId) -> bool {
        let Some(p) = self.producer(v) else { return false };
        let n = &self.nodes[p];
        match &n.op {
            Op::Unary(UnaryFn::Relu | UnaryFn::Relu6 | UnaryFn::Sigmoid) => true,
            Op::Conv2d(c) => !c.rectifier.is_identity(),
            Op::Affine { rectifier, .. } | Op::Add { rectifier } => !rectifier.is_identity(),
            Op::Softmax { .. } => true,
            Op::Pad(_) | Op::MaxPool(_) | Op::AvgPool(_) | Op::GlobalAvgPool | Op::Flatten => self.is_nonnegative(n.inputs[0]),
            Op::Concat => n.inputs.iter().all(|&i| self.is_nonnegative(i)),
            _ => false,
        }
    }
}

impl fmt::Display for Graph<'_> {
    /// One line per node: `v3 = Conv2d(v2) res2a/res2a_branch2a (28, 28, 64)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "v{} = input {}", self.input.0, ShapeFmt(self.shape(self.input)))?;
        for n in &self.nodes {
            let ins: Vec<String> = n.inputs.iter().map(|v| format!("v{}", v.0)).collect();
            writeln!(
                f,
                "v{} = {}({}) {} {}",
                n.output.0,
                n.op.kind(),
                ins.join(", "),
                n.path,
                ShapeFmt(self.shape(n.output))
            )?;
        }
        write!(f, "output v{}", self.output.0)
    }
}

/// The builder a [`Layer::lower`] adds its nodes to.
pub struct Lowering<'m> {
    graph: Graph<'m>,
    path: LayerPath,
}

impl fmt::Debug for Lowering<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lowering")
            .field("nodes", &self.graph.nodes.len())
            .field("path", &self.path)
            .finish()
    }
}

impl<'m> Lowering<'m> {
    /// An empty graph whose input has per-image shape `input_shape`.
    pub fn new(input_shape: &[usize]) -> Result<Self> {
        if input_shape.is_empty() || input_shape.contains(&0) {
            return Err(Error::shape(
                "model input",
                "a non-empty per-image shape",
                format!("{}", ShapeFmt(input_shape)),
            ));
        }
        crate::error::checked_product("model input", input_shape)?;
        Ok(Lowering {
            graph: Graph {
                shapes: vec![input_shape.to_vec()],
                nodes: Vec::new(),
                input: ValueId(0),
                output: ValueId(0),
                names: BTreeMap::new(),
            },
            path: LayerPath::default(),
        })
    }

    /// The graph input.
    pub fn input(&self) -> ValueId {
        self.graph.input
    }

    /// Per-image shape of a value.
    pub fn shape(&self, v: ValueId) -> &[usize] {
        self.graph.shape(v)
    }

    /// The path of the layer being lowered.
    pub fn path(&self) -> &LayerPath {
        &self.path
    }

    /// Adds `op` over `inputs` and returns its output, or the op's shape error for them.
    pub fn push(&mut self, op: Op<'m>, inputs: &[ValueId]) -> Result<ValueId> {
        if let Some(v) = inputs.iter().find(|v| v.0 >= self.graph.shapes.len()) {
            return Err(Error::config(op.kind(), format!("value {} is not in this graph", v.0)));
        }
        let shapes: Vec<&[usize]> = inputs.iter().map(|v| self.graph.shapes[v.0].as_slice()).collect();
        let shape = op.output_shape(&shapes)?;
        let output = ValueId(self.graph.shapes.len());
        self.graph.shapes.push(shape);
        self.graph.nodes.push(Node {
            path: self.path.clone(),
            op,
            inputs: inputs.to_vec(),
            output,
        });
        Ok(output)
    }

    /// Adds a layer that is not built from the graph's ops: the executors call its
    /// [`Layer::forward`] (which it must implement, with [`Layer::output_shape`]). It must act
    /// on each image independently, as every op does.
    pub fn opaque(&mut self, layer: &'m dyn Layer, x: ValueId) -> Result<ValueId> {
        self.push(Op::Opaque(layer), &[x])
    }

    /// Lowers `f` with `name` appended to the layer path, prefixing its errors with `name`, and
    /// records its output under the path (for taps).
    pub fn scoped(&mut self, name: &str, f: impl FnOnce(&mut Self) -> Result<ValueId>) -> Result<ValueId> {
        self.path.push(name);
        let out = f(self).map_err(|e| e.in_layer(name));
        if let Ok(v) = &out {
            self.graph.names.entry(self.path.to_string()).or_insert(*v);
        }
        self.path.pop();
        out
    }

    /// Lowers `f` with `name` appended to the layer path, without recording a tap name (for a
    /// layer's internal parts, such as a Residual's `add`).
    pub fn within(&mut self, name: &str, f: impl FnOnce(&mut Self) -> Result<ValueId>) -> Result<ValueId> {
        self.path.push(name);
        let out = f(self);
        self.path.pop();
        out
    }

    /// Checks that every value fits in memory indexing for `batch` images.
    fn check_batch(&self, batch: usize) -> Result<()> {
        for (v, shape) in self.graph.shapes.iter().enumerate() {
            if shape.iter().try_fold(batch, |acc, &d| acc.checked_mul(d)).is_none() {
                let at = self
                    .graph
                    .nodes
                    .iter()
                    .find(|n| n.output.0 == v)
                    .map_or("model input".to_string(), Node::name);
                return Err(Error::overflow(
                    at,
                    format!("the element count of {} images of {}", batch, ShapeFmt(shape)),
                ));
            }
        }
        Ok(())
    }

    /// The graph with `output` as its result.
    pub fn finish(mut self, output: ValueId) -> Graph<'m> {
        self.graph.output = output;
        self.graph
    }
}

/// Per-image shape of a batch, or a shape error.
pub(crate) fn per_image(shape: &[usize]) -> Result<&[usize]> {
    match shape {
        [_, rest @ ..] if !rest.is_empty() => Ok(rest),
        _ => Err(Error::shape(
            "model input",
            "a batch (n, ...) with at least one axis after the batch axis",
            format!("{}", ShapeFmt(shape)),
        )),
    }
}

/// What [`Layer::forward`] does: lowers `layer` for `x`'s shape and runs the reference
/// executor. Refuses non-finite input ([`Error::NonFinite`]).
pub(crate) fn forward_layer<L: Layer + ?Sized>(layer: &L, x: &crate::layers::TensorRef) -> Result<crate::layers::Tensor> {
    let _active = guard::enter(layer)?;
    let mut b = Lowering::new(per_image(x.shape())?)?;
    let input = b.input();
    let y = layer.lower(&mut b, input)?;
    let graph = b.finish(y);
    reference::run(&graph, x)
}

/// What [`Layer::output_shape`] does for built-in layers: the lowered graph's output shape.
pub(crate) fn layer_output_shape<L: Layer + ?Sized>(layer: &L, input: &[usize]) -> Result<Vec<usize>> {
    let _active = guard::enter(layer)?;
    let mut b = Lowering::new(per_image(input)?)?;
    let x = b.input();
    let y = layer.lower(&mut b, x)?;
    b.check_batch(input[0])?;
    let mut out = vec![input[0]];
    out.extend_from_slice(b.shape(y));
    Ok(out)
}

/// What [`Layer::forward_with_taps`] does.
pub(crate) fn forward_layer_with_taps<L: Layer + ?Sized>(
    layer: &L,
    x: &crate::layers::TensorRef,
    names: &[&str],
) -> Result<(crate::layers::Tensor, crate::layers::Taps)> {
    let _active = guard::enter(layer)?;
    let mut b = Lowering::new(per_image(x.shape())?)?;
    let input = b.input();
    let y = layer.lower(&mut b, input)?;
    let graph = b.finish(y);
    let taps = names.iter().map(|n| graph.value_named(n)).collect::<Result<Vec<_>>>()?;
    let (y, values) = reference::run_with_taps(&graph, x, &taps)?;
    Ok((y, names.iter().map(|n| n.to_string()).zip(values).collect()))
}
