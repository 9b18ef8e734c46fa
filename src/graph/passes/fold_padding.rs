//! Zero padding folded into the window that reads it.

use super::sole_consumer;
use crate::graph::{Graph, Op, ValueId};
use crate::kernels::Padding2d;

fn add(a: Padding2d, b: Padding2d) -> Padding2d {
    Padding2d::new(a.top + b.top, a.bottom + b.bottom, a.left + b.left, a.right + b.right)
}

/// Folds each [`Op::Pad`] read only by a convolution (as its data input) into the
/// convolution's padding, and each one read only by a max pool into the pool's ignored
/// padding when the padded value is non-negative (zeros then never win a max; pool padding
/// must stay smaller than the window). Average pools keep their pad: their divisor counts the
/// zeros. Returns whether anything changed. (The `break`s cannot be reached: `candidate`
/// only returns a pad read by a conv or max pool.)
pub fn fold_padding(graph: &mut Graph<'_>, keep: &[ValueId]) -> bool {
    let mut changed = false;
    while let Some((pad_at, reader)) = candidate(graph, keep) {
        let nodes = graph.nodes_mut();
        let Op::Pad(p) = nodes[pad_at].op else { break };
        let x = nodes[pad_at].inputs[0];
        match &mut nodes[reader].op {
            Op::Conv2d(c) => c.padding = add(c.padding, p),
            Op::MaxPool(pool) => pool.padding = add(pool.padding, p),
            _ => break,
        }
        nodes[reader].inputs[0] = x;
        nodes.remove(pad_at);
        changed = true;
    }
    changed
}

fn candidate(graph: &Graph<'_>, keep: &[ValueId]) -> Option<(usize, usize)> {
    graph.nodes().iter().enumerate().find_map(|(i, n)| {
        let Op::Pad(p) = n.op else { return None };
        let reader = sole_consumer(graph, n.output, keep)?;
        let r = &graph.nodes()[reader];
        if r.inputs[0] != n.output || r.inputs[1..].contains(&n.output) {
            return None;
        }
        let fits = match &r.op {
            Op::Conv2d(_) => true,
            Op::MaxPool(pool) => {
                let q = add(pool.padding, p);
                graph.is_nonnegative(n.inputs[0])
                    && q.top < pool.size[0]
                    && q.bottom < pool.size[0]
                    && q.left < pool.size[1]
                    && q.right < pool.size[1]
            }
            _ => false,
        };
        fits.then_some((i, reader))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::passes::test_util::{batch, max_diff, randomize};
    use crate::kernels::Padding;
    use crate::layers::{AvgPool2d, Conv2d, Conv2dConfig, MaxPool2d, Pool2dConfig, Relu, Sequential, ZeroPadding2d};

    fn kinds(g: &Graph<'_>) -> Vec<&'static str> {
        g.nodes().iter().map(|n| n.op.kind()).collect()
    }

    #[test]
    fn pads_fold_into_convs_and_after_a_relu_into_max_pools_only() {
        let mut net = Sequential::new();
        net.push("pad", ZeroPadding2d::new(Padding2d::new(1, 2, 0, 3)))
            .unwrap()
            .push(
                "conv",
                Conv2d::new(Conv2dConfig::new(3, 4, [3, 3]).with_strides([2, 1]).with_padding(Padding::Same)).unwrap(),
            )
            .unwrap()
            .push("relu", Relu)
            .unwrap()
            .push("pad2", ZeroPadding2d::uniform(1))
            .unwrap()
            .push("pool", MaxPool2d::new(Pool2dConfig::new([3, 3]).with_strides([2, 2])).unwrap())
            .unwrap()
            .push("pad3", ZeroPadding2d::uniform(1))
            .unwrap()
            .push("avg", AvgPool2d::new(Pool2dConfig::new([2, 2])).unwrap())
            .unwrap();
        randomize(&mut net, 3);
        let before = Graph::lower(&net, &[11, 9, 3]).unwrap();
        let mut after = before.clone();
        assert!(fold_padding(&mut after, &[]));
        after.check().unwrap();
        assert_eq!(kinds(&after), ["Conv2d", "Unary", "MaxPool", "Pad", "AvgPool"]);
        let x = batch(&[2, 11, 9, 3], 1);
        assert!(max_diff(&before, &after, &x) <= 1e-6);
        // A kept (tapped) pad stays.
        let mut kept = before.clone();
        let pad = kept.value_named("pad").unwrap();
        fold_padding(&mut kept, &[pad]);
        assert_eq!(kinds(&kept)[0], "Pad");
    }

    #[test]
    fn a_pad_before_a_max_pool_of_signed_values_stays() {
        let mut net = Sequential::new();
        net.push("pad", ZeroPadding2d::uniform(1))
            .unwrap()
            .push("pool", MaxPool2d::new(Pool2dConfig::new([3, 3])).unwrap())
            .unwrap();
        let mut g = Graph::lower(&net, &[6, 6, 2]).unwrap();
        assert!(!fold_padding(&mut g, &[]));
    }
}
