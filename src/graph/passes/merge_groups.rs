//! Narrow convolution groups merged into wider ones with block-diagonal kernels.

use std::borrow::Cow;

use crate::graph::{Graph, Op};
use crate::kernels::narrow_groups;
use crate::kernels::packed_gemm::gemm_kernel;

/// Rewrites each grouped convolution whose groups are narrower than `width` output channels
/// (ResNeXt's first stages: 32 groups of 4 or 8) into one with `s` times fewer, `s` times
/// wider groups, `s` the largest divisor of the group count with `s * width_of_a_group <=
/// width`. Each merged group's kernel is block-diagonal: input channel block `j` feeds only
/// output channel block `j`, all else zero. The convolution does `s` times the
/// multiply-adds, but as GEMMs `width` columns wide that the packed kernel runs near its peak,
/// where a 4-column GEMM per group wastes 7 of every 8 lanes and pays its call overhead 32
/// times. Every added product is an exact zero, summed into the same partial sums in the same
/// order, so the result is unchanged. Depthwise convolutions (one input and output channel a
/// group) keep their own direct kernel and are left alone, and so are the groups
/// [`narrow_groups`] runs on this CPU (4 or 8 channels on AVX-512). Returns whether anything
/// changed.
pub fn merge_groups(graph: &mut Graph<'_>, width: usize) -> bool {
    let mut changed = false;
    for node in graph.nodes_mut() {
        let Op::Conv2d(c) = &mut node.op else { continue };
        let (g, cin_g, cout_g) = (c.groups, c.in_channels / c.groups.max(1), c.out_channels / c.groups.max(1));
        let direct = cin_g == cout_g && narrow_groups::supports(gemm_kernel(), cout_g, c.out_channels);
        if g <= 1 || (cin_g == 1 && cout_g == 1) || direct || cout_g >= width {
            continue;
        }
        let Some(s) = (2..=g).rev().find(|&s| g % s == 0 && s * cout_g <= width) else {
            continue;
        };
        let [kh, kw] = c.kernel_size;
        let (wide_in, cout) = (s * cin_g, c.out_channels);
        let mut kernel = vec![0.0f32; kh * kw * wide_in * cout];
        for tap in 0..kh * kw {
            for i in 0..cin_g {
                let old = &c.kernel[(tap * cin_g + i) * cout..][..cout];
                for j in 0..s {
                    // Input channel `j * cin_g + i` of each merged group feeds its `j`-th block
                    // of outputs: columns `o` with `(o / cout_g) % s == j`.
                    let row = &mut kernel[(tap * wide_in + j * cin_g + i) * cout..][..cout];
                    for (o, (w, &v)) in row.iter_mut().zip(old).enumerate() {
                        if (o / cout_g) % s == j {
                            *w = v;
                        }
                    }
                }
            }
        }
        c.kernel = Cow::Owned(kernel);
        c.groups = g / s;
        changed = true;
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::merge_groups;
    use crate::graph::passes::test_util::{batch, max_diff, randomize};
    use crate::graph::{Graph, Op};
    use crate::kernels::Padding;
    use crate::layers::{Conv2d, Conv2dConfig, Sequential};

    #[test]
    fn narrow_groups_merge_and_compute_the_same() {
        // (in, out, groups, width) -> groups after.
        for (cin, cout, groups, width, after) in [
            (16, 32, 4, 16, 2),
            (24, 48, 6, 32, 2),
            (12, 12, 12, 32, 12),
            (16, 64, 4, 16, 4),
            (6, 9, 3, 7, 3),
        ] {
            let conv = Conv2dConfig::new(cin, cout, [3, 3])
                .with_groups(groups)
                .with_strides([2, 1])
                .with_padding(Padding::Same);
            let mut net = Sequential::new();
            net.push("c", Conv2d::new(conv).unwrap()).unwrap();
            randomize(&mut net, 21);
            let before = Graph::lower(&net, &[9, 7, cin]).unwrap();
            let mut merged = before.clone();
            assert_eq!(merge_groups(&mut merged, width), after != groups, "{cin} {cout} {groups}");
            merged.check().unwrap();
            let Op::Conv2d(c) = &merged.nodes()[0].op else { panic!() };
            assert_eq!(c.groups, after);
            // Exact zeros add nothing: the same bits.
            assert_eq!(max_diff(&before, &merged, &batch(&[2, 9, 7, cin], 3)), 0.0, "{cin} {cout} {groups}");
        }
    }
}
