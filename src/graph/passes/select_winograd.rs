//! Winograd chosen for the convolutions it suits.

use crate::error::Result;
use crate::graph::{ConvAlgorithm, Graph, Op};
use crate::kernels::winograd::WinogradTile;

/// Marks each dense (1-group) convolution that [`WinogradTile::choose`] accepts (3x3, stride 1,
/// undilated, output tiles overhanging by at most 1/8) to run as Winograd F(2x2, 3x3) in the
/// fast executor. Returns whether anything changed.
pub fn select_winograd(graph: &mut Graph<'_>) -> Result<bool> {
    let mut changed = false;
    let shapes: Vec<Vec<usize>> = graph.nodes().iter().map(|n| graph.shape(n.inputs[0]).to_vec()).collect();
    for (n, shape) in graph.nodes_mut().iter_mut().zip(shapes) {
        if let Op::Conv2d(c) = &mut n.op {
            if c.groups != 1 || c.algorithm != ConvAlgorithm::Gemm {
                continue;
            }
            if let Some(tile) = WinogradTile::choose(&c.geometry(1, &shape)?) {
                c.algorithm = ConvAlgorithm::Winograd(tile);
                changed = true;
            }
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Padding;
    use crate::layers::{Conv2d, Conv2dConfig, Sequential};

    #[test]
    fn only_stride_1_3x3_dense_convs_whose_tiles_fit_are_chosen() {
        let conv = |k: usize, s: usize, groups: usize| {
            Conv2d::new(
                Conv2dConfig::new(8, 8, [k, k])
                    .with_strides([s, s])
                    .with_padding(Padding::Same)
                    .with_groups(groups),
            )
            .unwrap()
        };
        let mut net = Sequential::new();
        net.push("a", conv(3, 1, 1))
            .unwrap()
            .push("b", conv(3, 2, 1))
            .unwrap()
            .push("c", conv(1, 1, 1))
            .unwrap()
            .push("d", conv(3, 1, 2))
            .unwrap()
            .push("e", conv(3, 1, 1))
            .unwrap();
        // 14x14: the 2x2 tiles fit exactly; after the stride-2 conv 7x7: 8x8 of tiles for 7x7.
        let mut g = Graph::lower(&net, &[14, 14, 8]).unwrap();
        assert!(select_winograd(&mut g).unwrap());
        let chosen: Vec<bool> = g
            .nodes()
            .iter()
            .map(|n| matches!(&n.op, Op::Conv2d(c) if c.algorithm != ConvAlgorithm::Gemm))
            .collect();
        assert_eq!(chosen, [true, false, false, false, false]);
    }
}
