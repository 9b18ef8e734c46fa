//! Buffer liveness: every stored value gets a buffer slot, and a slot is reused once the last
//! op reading its value has run.

use super::exec::Op;

/// Assigns a slot to every storage root that an op writes (and to the input); returns the
/// slot of each root (`usize::MAX` for values never stored) and each slot's per-image size in
/// floats. Values in `kept` (the output, taps) are never released.
pub(crate) fn assign_slots(
    ops: &[Op<'_>],
    shapes: &[Vec<usize>],
    roots: &[usize],
    input: usize,
    kept: &[usize],
) -> (Vec<usize>, Vec<usize>) {
    let n = shapes.len();
    let size = |v: usize| shapes[v].iter().product::<usize>();
    // The last op reading each storage root (usize::MAX: never released).
    let mut last_use = vec![0usize; n];
    for (i, op) in ops.iter().enumerate() {
        for v in op.inputs() {
            last_use[roots[v]] = i;
        }
    }
    for &k in kept {
        last_use[k] = usize::MAX;
    }
    let mut slot_of = vec![usize::MAX; n];
    let mut sizes: Vec<usize> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    // The smallest free slot that is large enough, else the largest free one (grown), else a new one.
    let take = |need: usize, sizes: &mut Vec<usize>, free: &mut Vec<usize>| -> usize {
        let fit = free
            .iter()
            .enumerate()
            .filter(|(_, &s)| sizes[s] >= need)
            .min_by_key(|(_, &s)| sizes[s])
            .map(|(i, _)| i);
        let pick = fit.or_else(|| free.iter().enumerate().max_by_key(|(_, &s)| sizes[s]).map(|(i, _)| i));
        match pick {
            Some(i) => {
                let s = free.swap_remove(i);
                sizes[s] = sizes[s].max(need);
                s
            }
            None => {
                sizes.push(need);
                sizes.len() - 1
            }
        }
    };
    slot_of[input] = take(size(input), &mut sizes, &mut free);
    for (i, op) in ops.iter().enumerate() {
        let out = roots[op.output()];
        slot_of[out] = take(size(out), &mut sizes, &mut free);
        for v in op.inputs() {
            let r = roots[v];
            if last_use[r] == i && !free.contains(&slot_of[r]) {
                free.push(slot_of[r]);
            }
        }
        if last_use[out] == 0 {
            // written but never read
            free.push(slot_of[out]);
        }
    }
    (slot_of, sizes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::UnaryFn;

    fn relu(x: usize, y: usize) -> Op<'static> {
        Op::Unary {
            name: String::new(),
            f: UnaryFn::Relu,
            x,
            y,
        }
    }

    #[test]
    fn a_chain_ping_pongs_between_two_slots_and_kept_values_keep_theirs() {
        let shapes = vec![vec![4]; 5];
        let roots: Vec<usize> = (0..5).collect();
        let ops: Vec<Op<'static>> = (0..4).map(|i| relu(i, i + 1)).collect();
        let (slots, sizes) = assign_slots(&ops, &shapes, &roots, 0, &[4]);
        assert_eq!(sizes.len(), 2);
        for i in 0..4 {
            assert_ne!(slots[i], slots[i + 1], "an op never writes its input's slot");
        }
        // Keeping value 2 (a tap) takes a third slot.
        let (slots, sizes) = assign_slots(&ops, &shapes, &roots, 0, &[4, 2]);
        assert_eq!(sizes.len(), 3);
        assert!([3, 4].iter().all(|&v| slots[v] != slots[2]));
    }
}
