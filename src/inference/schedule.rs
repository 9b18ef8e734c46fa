//! The batch schedule: where a batch run image by image switches to running layer by layer
//! over the whole batch.

use super::exec::Op;
use super::program::Program;

/// See [`lane_split`].
pub(crate) const BATCHED_WEIGHT_RATIO: usize = 2;

/// Where a batch run image by image switches to running layer by layer over the whole batch:
/// `(first op of the whole-batch part, the one value crossing the switch)`, or `(ops, output)`
/// for a model run image by image to its end.
///
/// Early layers have large activations and small weights: each image is best run alone,
/// keeping its activations in its core's cache. Late layers the reverse: over the whole batch,
/// their weights are read once per batch instead of once per image per core. The switch is the
/// first op boundary that exactly one value crosses after which every layer with weights has
/// at least [`BATCHED_WEIGHT_RATIO`] times more weight bytes than per-image activation bytes
/// (its input and output). On ResNet50 that is the start of the last stage. An op run by the
/// reference executor (`Generic`) counts as weight-heavy only when the whole tail is.
pub(crate) fn lane_split(program: &Program<'_>) -> (usize, usize) {
    let ops = &program.ops;
    let n = ops.len();
    let len = |v: usize| program.values[v].shape.iter().product::<usize>();
    let weight_heavy = |op: &Op<'_>| {
        let weights = op.weight_len();
        let acts = op.inputs().into_iter().map(len).sum::<usize>() + len(op.output());
        weights == 0 || weights >= BATCHED_WEIGHT_RATIO * acts
    };
    // The first boundary from which every op is weight-heavy.
    let Some(from) = (0..n).find(|&i| ops[i..].iter().all(weight_heavy)).filter(|&i| i > 0) else {
        return (n, program.output);
    };
    let produced_at = |v: usize| ops.iter().position(|op| op.output() == v);
    for i in from..n {
        // The values crossing boundary i: produced before it (or the input), read at or after it.
        let mut crossing = ops[i..]
            .iter()
            .flat_map(|op| op.inputs())
            .map(|v| program.roots[v])
            .filter(|&v| produced_at(v).is_none_or(|p| p < i));
        if let Some(v) = crossing.next() {
            if crossing.all(|w| w == v) {
                return (i, v);
            }
        }
    }
    (n, program.output)
}

#[cfg(test)]
mod tests {
    use super::lane_split;
    use crate::graph::passes::{optimize, PassOptions};
    use crate::graph::Graph;
    use crate::inference::program::{generate, Program};
    use crate::models::{ResNet, ResNetConfig};

    fn program<'m>(model: &'m ResNet) -> Program<'m> {
        let mut g = Graph::lower(model, &[224, 224, 3]).unwrap();
        optimize(
            &mut g,
            PassOptions {
                fold_batch_norm: true,
                winograd: true,
            },
            &[],
        )
        .unwrap();
        generate(&g, &[], true).unwrap()
    }

    #[test]
    fn resnet50_batches_switch_to_layer_by_layer_at_the_last_stage() {
        let model = ResNet::new(ResNetConfig::keras_resnet50()).unwrap();
        let p = program(&model);
        let (at, value) = lane_split(&p);
        assert_eq!(p.ops[at].name(), "res5a/res5a_branch1");
        // The crossing value is res4f's output, which both res5a branches read.
        assert_eq!(p.ops[at - 1].output(), value);
        assert!(p.ops[at..].iter().filter(|op| op.inputs().contains(&value)).count() == 2);
        // Scaled down, only the classifier's weights outweigh its activations.
        let small = ResNet::new(ResNetConfig::keras_resnet50().with_width_divisor(8)).unwrap();
        let p = program(&small);
        assert_eq!(p.ops[lane_split(&p).0].name(), "avg_pool");
    }
}
