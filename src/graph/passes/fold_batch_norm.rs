//! BatchNorm folded into the convolution before it, and the rest turned into affine maps.

use std::borrow::Cow;

use super::sole_consumer;
use crate::graph::{Graph, Op, ValueId};
use crate::kernels::Rectifier;

/// Folds each BatchNorm whose input is a convolution's output read by nothing else into that
/// convolution's output pass: `y = acc * scale + (bias * scale + shift)` with the BatchNorm's
/// `scale` and `shift` ([`BatchNormOp::scale_shift`](crate::graph::BatchNormOp::scale_shift)).
/// The kernel itself is left alone: scaling it instead costs the same but rounds every product
/// differently (on the reference ResNet50 it moved the probabilities by 1.4e-5 from Keras'
/// against 7e-6 this way). Returns whether anything changed.
pub fn fold_batch_norm(graph: &mut Graph<'_>, keep: &[ValueId]) -> bool {
    let mut changed = false;
    while let Some((conv_at, bn_at)) = candidate(graph, keep) {
        // (`candidate` only returns a BatchNorm after a conv: the `break`s are not reached.)
        let nodes = graph.nodes_mut();
        let Op::BatchNorm(bn) = &nodes[bn_at].op else { break };
        let (scale, shift) = bn.scale_shift();
        let out = nodes[bn_at].output;
        let Op::Conv2d(c) = &mut nodes[conv_at].op else { break };
        let bias: Vec<f32> = (0..c.out_channels)
            .map(|o| c.bias.as_ref().map_or(0.0, |b| b[o]) * scale[o] + shift[o])
            .collect();
        c.bias = Some(Cow::Owned(bias));
        c.scale = Some(Cow::Owned(scale));
        nodes[conv_at].output = out;
        nodes.remove(bn_at);
        changed = true;
    }
    changed
}

fn candidate(graph: &Graph<'_>, keep: &[ValueId]) -> Option<(usize, usize)> {
    graph.nodes().iter().enumerate().find_map(|(i, n)| {
        let Op::BatchNorm(_) = n.op else { return None };
        let x = n.inputs[0];
        let p = graph.producer(x)?;
        let Op::Conv2d(c) = &graph.nodes()[p].op else { return None };
        let plain = c.scale.is_none() && !c.residual && c.rectifier.is_identity();
        (plain && sole_consumer(graph, x, keep) == Some(i)).then_some((p, i))
    })
}

/// Turns every remaining BatchNorm into the per-channel [`Op::Affine`] it computes.
pub fn batch_norm_to_affine(graph: &mut Graph<'_>) -> bool {
    let mut changed = false;
    for n in graph.nodes_mut() {
        if let Op::BatchNorm(bn) = &n.op {
            let (scale, shift) = bn.scale_shift();
            n.op = Op::Affine {
                scale: Cow::Owned(scale),
                shift: Cow::Owned(shift),
                rectifier: Rectifier::Identity,
            };
            changed = true;
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::passes::test_util::{batch, max_diff, randomize};
    use crate::kernels::Padding;
    use crate::layers::{BatchNorm, Conv2d, Conv2dConfig, Sequential};

    #[test]
    fn a_batch_norm_after_a_conv_becomes_its_output_scale() {
        let mut net = Sequential::new();
        net.push(
            "conv",
            Conv2d::new(Conv2dConfig::new(3, 5, [3, 3]).with_padding(Padding::Same)).unwrap(),
        )
        .unwrap()
        .push("bn", BatchNorm::new(5, 1e-3).unwrap())
        .unwrap()
        .push("bn2", BatchNorm::new(5, 1e-5).unwrap())
        .unwrap();
        randomize(&mut net, 5);
        let before = Graph::lower(&net, &[7, 6, 3]).unwrap();
        let mut after = before.clone();
        assert!(fold_batch_norm(&mut after, &[]));
        after.check().unwrap();
        // The second BatchNorm follows a conv that already has a scale: it becomes an affine map.
        assert_eq!(after.nodes().len(), 2);
        assert!(batch_norm_to_affine(&mut after));
        assert!(matches!(
            after.nodes()[1].op,
            Op::Affine {
                rectifier: Rectifier::Identity,
                ..
            }
        ));
        let x = batch(&[3, 7, 6, 3], 2);
        assert!(max_diff(&before, &after, &x) <= 1e-5);
        // The tap on the conv's own output keeps it unfolded.
        let mut kept = before.clone();
        let conv = kept.value_named("conv").unwrap();
        assert!(!fold_batch_norm(&mut kept, &[conv]));
    }
}
