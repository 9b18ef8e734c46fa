//! Code generation: an optimised [`Graph`] becomes the flat list of kernel calls the fast
//! executor runs, over values with buffer slots assigned by [`liveness`](super::liveness).

use std::borrow::Cow;

use super::exec::{ConvOp, ConvWeights, Op};
use super::fused;
use super::liveness;
use super::Value;
use crate::error::Result;
use crate::graph::{ConvAlgorithm, Graph, Op as GraphOp, ValueId};
use crate::kernels::narrow_groups;
use crate::kernels::packed_gemm::{gemm_kernel, PackedB};
use crate::kernels::winograd::WinogradWeights;
use crate::kernels::Rectifier;

/// The kernel calls of one compiled input shape.
pub(crate) struct Program<'m> {
    pub ops: Vec<Op<'m>>,
    pub values: Vec<Value>,
    pub slot_sizes: Vec<usize>,
    /// The value whose storage each value is (itself, or what a flatten views).
    pub roots: Vec<usize>,
    pub input: usize,
    pub output: usize,
}

fn owned(p: &Option<Cow<'_, [f32]>>, len: usize, fill: f32) -> Vec<f32> {
    p.as_ref().map_or_else(|| vec![fill; len], |p| p.to_vec())
}

/// Generates the kernel calls for `graph` (already optimised); `keep` are values whose
/// buffers must survive the run (taps).
/// With `fuse_blocks`, inverted residual blocks become one op each ([`fused`]).
pub(crate) fn generate<'m>(graph: &Graph<'m>, keep: &[ValueId], fuse_blocks: bool) -> Result<Program<'m>> {
    let mut shapes: Vec<Vec<usize>> = (0..graph.value_count()).map(|v| graph.shape(ValueId(v)).to_vec()).collect();
    let mut alias: Vec<Option<usize>> = vec![None; shapes.len()];
    let mut ops = Vec::with_capacity(graph.nodes().len());
    for node in graph.nodes() {
        let name = node.name();
        let (x, y) = (node.inputs[0].0, node.output.0);
        let generic = || Op::Generic {
            name: name.clone(),
            op: node.op.clone(),
            inputs: node.inputs.iter().map(|v| v.0).collect(),
            y,
        };
        ops.push(match &node.op {
            // (A grouped convolution is never marked for Winograd.)
            GraphOp::Conv2d(c) if c.groups == 1 || c.algorithm == ConvAlgorithm::Gemm => {
                let geometry = c.geometry(1, &shapes[x]).map_err(|e| e.in_layer(&name))?;
                let (n, cout) = (c.out_channels, geometry.out_channels);
                let weights = match c.algorithm {
                    ConvAlgorithm::Winograd(tile) => ConvWeights::Winograd(WinogradWeights::new(&c.kernel, c.in_channels, n, tile)?),
                    _ if c.groups == 1 => ConvWeights::Gemm(PackedB::pack(&c.kernel, geometry.patch_len(), n, n)?),
                    // Depthwise: the HWIO kernel `(kh, kw, 1, channels)` is already the direct
                    // loop's `(kh, kw, channels)`.
                    _ if geometry.in_channels == 1 && cout == 1 => ConvWeights::Depthwise(c.kernel.to_vec()),
                    // Groups of 4 or 8 channels in and out on AVX-512: the direct loop, whose
                    // kernel `(kh, kw, width, channels)` is the HWIO one.
                    _ if geometry.in_channels == cout && narrow_groups::supports(gemm_kernel(), cout, n) => ConvWeights::NarrowGroups {
                        kernel: c.kernel.to_vec(),
                        width: cout,
                    },
                    // Grouped: one packed operand per group, the group's columns of the kernel.
                    _ => ConvWeights::Grouped(
                        (0..c.groups)
                            .map(|group| PackedB::pack(&c.kernel[group * cout..], geometry.patch_len(), cout, n))
                            .collect::<Result<Vec<_>>>()?,
                    ),
                };
                Op::Conv(ConvOp {
                    name,
                    geometry,
                    groups: c.groups,
                    weights,
                    scale: c.scale.as_ref().map(|s| s.to_vec()),
                    bias: owned(&c.bias, n, 0.0),
                    rectifier: c.rectifier,
                    residual: c.residual.then(|| node.inputs[1].0),
                    x,
                    y,
                })
            }
            GraphOp::Affine { scale, shift, rectifier } => Op::Affine {
                name,
                scale: scale.to_vec(),
                shift: shift.to_vec(),
                rectifier: *rectifier,
                x,
                y,
            },
            GraphOp::Unary(f) => Op::Unary { name, f: *f, x, y },
            GraphOp::Add { rectifier } if node.inputs.len() == 2 => Op::Add {
                name,
                a: x,
                b: node.inputs[1].0,
                rectifier: *rectifier,
                y,
            },
            GraphOp::Pad(pad) => Op::Pad { name, pad: *pad, x, y },
            GraphOp::MaxPool(p) => Op::MaxPool {
                geometry: p.geometry(1, &shapes[x]).map_err(|e| e.in_layer(&name))?,
                name,
                x,
                y,
            },
            GraphOp::AvgPool(p) => Op::AvgPool {
                geometry: p.geometry(1, &shapes[x]).map_err(|e| e.in_layer(&name))?,
                name,
                x,
                y,
            },
            GraphOp::GlobalAvgPool => Op::GlobalAvgPool { name, x, y },
            GraphOp::Dense(d) => Op::Dense {
                name,
                weights: PackedB::pack(&d.kernel, d.in_features, d.units, d.units)?,
                bias: owned(&d.bias, d.units, 0.0),
                x,
                y,
            },
            GraphOp::Softmax { axis } if *axis + 1 == shapes[x].len() => Op::Softmax { name, x, y },
            GraphOp::Flatten => {
                alias[y] = Some(x);
                continue;
            }
            _ => generic(),
        });
    }
    let root = |alias: &[Option<usize>], mut v: usize| {
        while let Some(a) = alias[v] {
            v = a;
        }
        v
    };
    let (input, mut output) = (graph.input().0, graph.output().0);
    if root(&alias, output) == root(&alias, input) {
        // An identity (or reshape-only) model still gets its own output buffer.
        let c = *shapes[output].last().unwrap_or(&1);
        let y = shapes.len();
        shapes.push(shapes[output].clone());
        alias.push(None);
        ops.push(Op::Affine {
            name: "copy".into(),
            scale: vec![1.0; c],
            shift: vec![0.0; c],
            rectifier: Rectifier::Identity,
            x: output,
            y,
        });
        output = y;
    }
    let roots: Vec<usize> = (0..shapes.len()).map(|v| root(&alias, v)).collect();
    let kept: Vec<usize> = keep.iter().map(|v| roots[v.0]).chain([roots[output]]).collect();
    let ops = if fuse_blocks {
        fused::fuse_inverted_residuals(ops, &roots, &kept)
    } else {
        ops
    };
    let (slots, slot_sizes) = liveness::assign_slots(&ops, &shapes, &roots, roots[input], &kept);
    let values = shapes
        .into_iter()
        .enumerate()
        .map(|(v, shape)| Value {
            shape,
            slot: slots[roots[v]],
        })
        .collect();
    Ok(Program {
        ops,
        values,
        slot_sizes,
        roots,
        input,
        output,
    })
}
