//! Rewrites of a [`Graph`] that keep what it computes (up to float rounding), each small and
//! tested alone against the reference executor on the unrewritten graph:
//!
//! - [`fold_padding`]: a zero [`Op::Pad`](super::Op::Pad) into the padding of the convolution
//!   (or, on a non-negative input, the max pool) that alone reads it;
//! - [`fold_batch_norm`]: a BatchNorm into the output pass of the convolution before it
//!   (`acc * scale + bias`), then [`batch_norm_to_affine`] for the rest;
//! - [`fuse_epilogue`]: a residual add and a ReLU into the op that produces their input;
//! - [`select_winograd`]: Winograd F(2x2, 3x3) for the stride-1 3x3 convolutions it suits;
//! - [`merge_groups`]: narrow convolution groups into GEMM-wide ones (block-diagonal kernels).
//!
//! [`optimize`] runs them in that order and checks the graph ([`Graph::check`]) after each.
//! No pass removes a value listed in `keep` (taps), the graph's input or its output.

mod fold_batch_norm;
mod fold_padding;
mod fuse_epilogue;
mod merge_groups;
mod select_winograd;

pub use fold_batch_norm::{batch_norm_to_affine, fold_batch_norm};
pub use fold_padding::fold_padding;
pub use fuse_epilogue::fuse_epilogue;
pub use merge_groups::merge_groups;
pub use select_winograd::select_winograd;

use super::{Graph, ValueId};
use crate::error::Result;

/// The output channels [`optimize`] merges narrow convolution groups up to: half the packed
/// kernel's 32-column panel, which on ResNeXt50 (groups of 4 and 8) measured faster than
/// full panels (the merged groups multiply-add zeros in proportion to their width).
pub const MERGED_GROUP_WIDTH: usize = 16;

/// Which rewrites [`optimize`] applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PassOptions {
    /// [`fold_batch_norm`].
    pub fold_batch_norm: bool,
    /// [`select_winograd`].
    pub winograd: bool,
}

/// Runs every pass, checking the graph after each; values in `keep` survive.
pub fn optimize(graph: &mut Graph<'_>, options: PassOptions, keep: &[ValueId]) -> Result<()> {
    let check = |g: &Graph<'_>, pass: &str| {
        g.check()
            .map_err(|e| crate::Error::config("graph", format!("after the {pass} pass: {e}")))
    };
    fold_padding(graph, keep);
    check(graph, "fold_padding")?;
    if options.fold_batch_norm {
        fold_batch_norm(graph, keep);
        check(graph, "fold_batch_norm")?;
    }
    batch_norm_to_affine(graph);
    check(graph, "batch_norm_to_affine")?;
    fuse_epilogue(graph, keep);
    check(graph, "fuse_epilogue")?;
    if options.winograd {
        select_winograd(graph)?;
        check(graph, "select_winograd")?;
    }
    merge_groups(graph, MERGED_GROUP_WIDTH);
    check(graph, "merge_groups")?;
    Ok(())
}

/// The node that alone reads `v`, when `v` may disappear: it is not kept, not the graph's
/// input or output, and read by exactly one node.
pub(crate) fn sole_consumer(graph: &Graph<'_>, v: ValueId, keep: &[ValueId]) -> Option<usize> {
    if keep.contains(&v) || v == graph.output() || v == graph.input() {
        return None;
    }
    match graph.consumers(v).as_slice() {
        [only] => Some(*only),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use crate::graph::{reference, Graph};
    use crate::layers::Tensor;

    /// A deterministic batch in [-1, 1).
    pub fn batch(shape: &[usize], seed: u64) -> Tensor {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let n: usize = shape.iter().product();
        let data = (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(shape), data).unwrap()
    }

    /// Fills every parameter of `model` with deterministic values (variances positive).
    pub fn randomize(model: &mut dyn crate::layers::Layer, seed: u64) {
        use crate::layers::{LayerPath, ParamKind, ParamVisitor};
        struct Fill(u64);
        impl ParamVisitor for Fill {
            fn visit(&mut self, _: &LayerPath, kind: ParamKind, mut v: ndarray::ArrayViewMutD<'_, f32>) -> crate::Result<()> {
                let r = batch(v.shape(), self.0);
                self.0 += 1;
                v.zip_mut_with(&r, |v, &r| {
                    *v = match kind {
                        ParamKind::MovingVariance => 0.5 + r.abs(),
                        ParamKind::Gamma => 1.0 + 0.5 * r,
                        _ => r * 0.5,
                    }
                });
                Ok(())
            }
        }
        model.visit_params_mut(&mut LayerPath::default(), &mut Fill(seed)).unwrap();
    }

    /// Largest absolute difference between the two graphs' outputs on `x`.
    pub fn max_diff(a: &Graph<'_>, b: &Graph<'_>, x: &Tensor) -> f32 {
        let (ya, yb) = (reference::run(a, x).unwrap(), reference::run(b, x).unwrap());
        assert_eq!(ya.shape(), yb.shape());
        ya.iter().zip(yb.iter()).map(|(p, q)| (p - q).abs()).fold(0.0, f32::max)
    }
}
