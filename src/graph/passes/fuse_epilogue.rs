//! A residual add and a ReLU or ReLU6 taken into the output pass of the op before them.

use super::sole_consumer;
use crate::graph::{Graph, Op, UnaryFn, ValueId};
use crate::kernels::Rectifier;

/// Applies, until none applies:
///
/// - a two-input [`Op::Add`] one of whose inputs is a convolution's output read by nothing
///   else becomes that convolution's fused residual (the convolution moves to the add's
///   place, where the other input exists) and takes the add's ReLU;
/// - a ReLU or ReLU6 whose input is read by nothing else becomes the rectifier of the
///   convolution, affine map or add that produced it.
///
/// Returns whether anything changed.
pub fn fuse_epilogue(graph: &mut Graph<'_>, keep: &[ValueId]) -> bool {
    let mut changed = false;
    loop {
        // (The candidates guarantee the ops matched below: the `return`s are not reached.)
        if let Some((conv_at, add_at, side)) = residual_candidate(graph, keep) {
            let nodes = graph.nodes_mut();
            let Op::Add { rectifier } = nodes[add_at].op else { return changed };
            let other = nodes[add_at].inputs[1 - side];
            let out = nodes[add_at].output;
            let Op::Conv2d(c) = &mut nodes[conv_at].op else { return changed };
            c.residual = true;
            c.rectifier = rectifier;
            nodes.remove(add_at);
            let mut conv = nodes.remove(conv_at);
            conv.inputs.push(other);
            conv.output = out;
            // The add sat after the conv: removing the conv moved it one place up.
            nodes.insert(add_at - 1, conv);
        } else if let Some((producer, rectify_at, rectifier)) = rectifier_candidate(graph, keep) {
            let nodes = graph.nodes_mut();
            let out = nodes[rectify_at].output;
            match &mut nodes[producer].op {
                Op::Conv2d(c) => c.rectifier = rectifier,
                Op::Affine { rectifier: r, .. } | Op::Add { rectifier: r } => *r = rectifier,
                _ => return changed,
            }
            nodes[producer].output = out;
            nodes.remove(rectify_at);
        } else {
            return changed;
        }
        changed = true;
    }
}

fn residual_candidate(graph: &Graph<'_>, keep: &[ValueId]) -> Option<(usize, usize, usize)> {
    graph.nodes().iter().enumerate().find_map(|(i, n)| {
        let Op::Add { .. } = n.op else { return None };
        let [a, b] = n.inputs[..] else { return None };
        if a == b {
            return None;
        }
        (0..2).find_map(|side| {
            let v = n.inputs[side];
            let p = graph.producer(v)?;
            let Op::Conv2d(c) = &graph.nodes()[p].op else { return None };
            (!c.residual && c.rectifier.is_identity() && sole_consumer(graph, v, keep) == Some(i)).then_some((p, i, side))
        })
    })
}

fn rectifier_candidate(graph: &Graph<'_>, keep: &[ValueId]) -> Option<(usize, usize, Rectifier)> {
    graph.nodes().iter().enumerate().find_map(|(i, n)| {
        let rectifier = match n.op {
            Op::Unary(UnaryFn::Relu) => Rectifier::Relu,
            Op::Unary(UnaryFn::Relu6) => Rectifier::Relu6,
            _ => return None,
        };
        let x = n.inputs[0];
        let p = graph.producer(x)?;
        let fusable = match &graph.nodes()[p].op {
            Op::Conv2d(c) => c.rectifier.is_identity(),
            Op::Affine { rectifier, .. } | Op::Add { rectifier } => rectifier.is_identity(),
            _ => false,
        };
        (fusable && sole_consumer(graph, x, keep) == Some(i)).then_some((p, i, rectifier))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::passes::test_util::{batch, max_diff, randomize};
    use crate::graph::passes::{batch_norm_to_affine, fold_batch_norm};
    use crate::kernels::Padding;
    use crate::layers::{Activation, ActivationLayer, BatchNorm, Conv2d, Conv2dConfig, Relu, Residual, Sequential};

    fn block(projection: bool) -> Residual {
        let conv = |i, o, s: usize| Conv2d::new(Conv2dConfig::new(i, o, [3, 3]).with_strides([s, s]).with_padding(Padding::Same)).unwrap();
        let stride = if projection { 2 } else { 1 };
        let mut main = Sequential::new();
        main.push("a", conv(4, 6, stride))
            .unwrap()
            .push("a_bn", BatchNorm::new(6, 1e-3).unwrap())
            .unwrap()
            .push("a_relu", Relu)
            .unwrap()
            .push("b", conv(6, if projection { 6 } else { 4 }, 1))
            .unwrap()
            .push("b_bn", BatchNorm::new(if projection { 6 } else { 4 }, 1e-3).unwrap())
            .unwrap();
        let short = projection.then(|| {
            let mut s = Sequential::new();
            s.push("s", Conv2d::new(Conv2dConfig::new(4, 6, [1, 1]).with_strides([2, 2])).unwrap())
                .unwrap();
            s
        });
        Residual::new(main, short, Some(Activation::Relu)).unwrap()
    }

    #[test]
    fn residual_blocks_fuse_into_their_last_conv() {
        for projection in [false, true] {
            let mut net = Sequential::new();
            net.push("block", block(projection)).unwrap();
            randomize(&mut net, 11);
            let before = Graph::lower(&net, &[9, 8, 4]).unwrap();
            let mut after = before.clone();
            fold_batch_norm(&mut after, &[]);
            assert!(fuse_epilogue(&mut after, &[]));
            after.check().unwrap();
            let kinds: Vec<&str> = after.nodes().iter().map(|n| n.op.kind()).collect();
            let want: &[&str] = if projection { &["Conv2d"; 3] } else { &["Conv2d"; 2] };
            assert_eq!(kinds, want, "projection {projection}");
            let last = after.nodes().last().unwrap();
            assert!(matches!(&last.op, Op::Conv2d(c) if c.residual && c.rectifier == Rectifier::Relu && c.scale.is_some()));
            assert_eq!(last.output, after.output());
            let x = batch(&[2, 9, 8, 4], 4);
            assert!(max_diff(&before, &after, &x) <= 1e-5);
        }
    }

    #[test]
    fn unfolded_batch_norms_take_the_relu_and_the_add_keeps_its_own() {
        let mut net = Sequential::new();
        net.push("block", block(false)).unwrap();
        randomize(&mut net, 12);
        let before = Graph::lower(&net, &[6, 6, 4]).unwrap();
        let mut after = before.clone();
        batch_norm_to_affine(&mut after);
        fuse_epilogue(&mut after, &[]);
        after.check().unwrap();
        let kinds: Vec<&str> = after.nodes().iter().map(|n| n.op.kind()).collect();
        assert_eq!(kinds, ["Conv2d", "Affine", "Conv2d", "Affine", "Add"]);
        assert!(matches!(
            after.nodes()[1].op,
            Op::Affine {
                rectifier: Rectifier::Relu,
                ..
            }
        ));
        assert!(matches!(
            after.nodes()[4].op,
            Op::Add {
                rectifier: Rectifier::Relu
            }
        ));
        assert!(max_diff(&before, &after, &batch(&[1, 6, 6, 4], 5)) <= 1e-5);
        // Tapping the add's input keeps the add.
        let mut kept = before.clone();
        let b_bn = kept.value_named("block/b_bn").unwrap();
        fold_batch_norm(&mut kept, &[b_bn]);
        fuse_epilogue(&mut kept, &[b_bn]);
        assert!(kept.nodes().iter().any(|n| matches!(n.op, Op::Add { .. })));
    }

    #[test]
    fn relu6_after_a_depthwise_conv_and_batch_norm_becomes_its_rectifier() {
        let conv = Conv2dConfig::new(6, 6, [3, 3]).with_groups(6).with_padding(Padding::Same);
        let mut net = Sequential::new();
        net.push("dw", Conv2d::new(conv).unwrap())
            .unwrap()
            .push("dw_bn", BatchNorm::new(6, 1e-3).unwrap())
            .unwrap()
            .push("dw_relu", ActivationLayer(Activation::Relu6))
            .unwrap();
        randomize(&mut net, 13);
        let before = Graph::lower(&net, &[7, 5, 6]).unwrap();
        let mut after = before.clone();
        fold_batch_norm(&mut after, &[]);
        assert!(fuse_epilogue(&mut after, &[]));
        assert_eq!(after.nodes().len(), 1);
        assert!(matches!(&after.nodes()[0].op, Op::Conv2d(c) if c.rectifier == Rectifier::Relu6 && c.groups == 6));
        // Inputs scaled up so that some outputs clamp at 6.
        let x = batch(&[2, 7, 5, 6], 6).mapv(|v| 8.0 * v);
        assert!(max_diff(&before, &after, &x) <= 1e-4);
    }
}
