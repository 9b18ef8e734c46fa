//! The training kernels on threads (`convnet::kernels::threaded`): the convolution forward, the
//! input and kernel gradients and the BatchNorm forward and backward against their direct-loop
//! references (f64) over random shapes (odd sizes, strides 1-3, dilation 1-2, every padding
//! mode, batch 1-4, channels 1-40), and the same bits on 1, 2 and 3 threads; the pooling
//! forward and backward against the one-thread batch kernels, bit for bit. Outputs start
//! NaN-filled, which proves every element is written.

mod common;

use std::sync::LazyLock;

use convnet::kernels::threaded::{self, Threads};
use convnet::kernels::{backward, reference, ConvGeometry, Padding, Padding2d, PoolGeometry, Window2d};
use proptest::prelude::*;

use common::fill;

static POOLS: LazyLock<Vec<Threads>> = LazyLock::new(|| [1, 2, 3].map(|t| Threads::new(t).unwrap()).into());

fn padding() -> impl Strategy<Value = Padding> {
    prop_oneof![
        Just(Padding::Valid),
        Just(Padding::Same),
        (0usize..3, 0usize..3, 0usize..3, 0usize..3).prop_map(|(t, b, l, r)| Padding::Explicit(Padding2d::new(t, b, l, r))),
    ]
}

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// The three kernels' outputs on `threads`.
fn run(threads: &Threads, g: &ConvGeometry, x: &[f32], k: &[f32], dy: &[f32]) -> [Vec<f32>; 3] {
    let mut y = vec![f32::NAN; g.output_len()];
    threaded::conv2d_forward(threads, x, g, &threaded::pack_kernel(k, g).unwrap(), &mut y).unwrap();
    let mut dx = vec![f32::NAN; g.input_len()];
    threaded::conv2d_backward_input(threads, dy, g, k, &mut dx).unwrap();
    let mut dk = vec![f32::NAN; g.kernel_len()];
    let mut scratch = vec![f32::NAN; 5];
    threaded::conv2d_backward_kernel(threads, x, g, dy, &mut dk, &mut scratch).unwrap();
    [y, dx, dk]
}

/// Compares every kernel with its reference (a bound of 1e-6 per product summed, values in
/// [-1, 1)) and the thread counts with each other, bit for bit.
fn check(g: &ConvGeometry, seed: u64) -> Result<(), TestCaseError> {
    let (x, k, dy) = (
        fill(g.input_len(), seed),
        fill(g.kernel_len(), seed ^ 1),
        fill(g.output_len(), seed ^ 2),
    );
    let runs: Vec<[Vec<f32>; 3]> = POOLS.iter().map(|t| run(t, g, &x, &k, &dy)).collect();
    let mut want_y = vec![0.0f64; g.output_len()];
    reference::conv2d(&to64(&x), g, &to64(&k), None, &mut want_y);
    let mut want_dx = vec![0.0f64; g.input_len()];
    reference::conv2d_backward_input(&to64(&dy), g, &to64(&k), &mut want_dx);
    let mut want_dk = vec![0.0f64; g.kernel_len()];
    reference::conv2d_backward_kernel(&to64(&x), g, &to64(&dy), &mut want_dk);
    let taps = g.window.kernel[0] * g.window.kernel[1];
    let bounds = [
        1e-6 * g.patch_len() as f64 + 1e-6,
        1e-6 * (taps * g.out_channels) as f64 + 1e-6,
        1e-6 * g.out_pixels() as f64 + 1e-6,
    ];
    for (what, (got, (want, bound))) in ["forward", "input gradient", "kernel gradient"]
        .iter()
        .zip(runs[0].iter().zip([&want_y, &want_dx, &want_dk].into_iter().zip(bounds)))
    {
        for (i, (a, b)) in got.iter().zip(want.iter()).enumerate() {
            prop_assert!((*a as f64 - b).abs() <= bound, "{} [{}]: {} vs {} for {:?}", what, i, a, b, g);
        }
    }
    for (t, r) in runs.iter().enumerate().skip(1) {
        for (what, (a, b)) in ["forward", "input gradient", "kernel gradient"].iter().zip(r.iter().zip(&runs[0])) {
            let same = a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
            prop_assert!(same, "{} on {} threads differs from 1 thread for {:?}", what, t + 1, g);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn threaded_convolutions_match_the_direct_loops_on_any_thread_count(
        (n, h, w, cin, cout) in (1usize..=4, 1usize..=13, 1usize..=13, 1usize..=40, 1usize..=40),
        (kh, kw, sh, sw, dh, dw) in (1usize..=4, 1usize..=4, 1usize..=3, 1usize..=3, 1usize..=2, 1usize..=2),
        pad in padding(),
        seed in any::<u64>(),
    ) {
        let window = Window2d { kernel: [kh, kw], stride: [sh, sw], dilation: [dh, dw], padding: pad };
        let Ok(g) = ConvGeometry::new([n, h, w, cin], cout, window) else { return Ok(()) };
        check(&g, seed)?;
    }

    #[test]
    fn threaded_batch_norm_matches_a_direct_f64_loop_on_any_thread_count(
        (pixels, c) in (1usize..=3000, 1usize..=40),
        relu in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let (x, dy) = (fill(pixels * c, seed), fill(pixels * c, seed ^ 1));
        let gamma: Vec<f32> = fill(c, seed ^ 2).iter().map(|v| v + 1.5).collect();
        let beta = fill(c, seed ^ 3);
        let eps = 1e-3f32;
        let mut outs = Vec::new();
        for t in POOLS.iter() {
            let mut y = vec![f32::NAN; x.len()];
            let stats = threaded::batch_norm_forward(t, &x, &gamma, &beta, eps, relu, &mut y).unwrap();
            prop_assert_eq!(stats.relu, relu);
            let mut dx = vec![f32::NAN; x.len()];
            let (dg, db) = threaded::batch_norm_backward(t, &x, &dy, &gamma, &beta, &stats, eps, &mut dx).unwrap();
            outs.push([y, dx, stats.mean, stats.variance, dg, db]);
        }
        for o in &outs[1..] {
            for (a, b) in o.iter().zip(&outs[0]) {
                prop_assert!(a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits()), "thread counts differ");
            }
        }
        // The direct loop, in f64.
        let [y, dx, mean, var, dg, db] = &outs[0];
        let n = pixels as f64;
        for ch in 0..c {
            let xs: Vec<f64> = (0..pixels).map(|p| x[p * c + ch] as f64).collect();
            // The gradient reaching the BatchNorm: with the fused ReLU, only where its output
            // (the kernel's, which the direct loop's agrees with below) is positive.
            let ds: Vec<f64> = (0..pixels)
                .map(|p| if relu && y[p * c + ch] <= 0.0 { 0.0 } else { dy[p * c + ch] as f64 })
                .collect();
            let m = xs.iter().sum::<f64>() / n;
            let v = xs.iter().map(|a| (a - m).powi(2)).sum::<f64>() / n;
            let inv = 1.0 / (v + eps as f64).sqrt();
            prop_assert!((mean[ch] as f64 - m).abs() <= 1e-6 && (var[ch] as f64 - v).abs() <= 1e-6);
            let xhat: Vec<f64> = xs.iter().map(|a| (a - m) * inv).collect();
            let sum_dy: f64 = ds.iter().sum();
            let sum_dyx: f64 = ds.iter().zip(&xhat).map(|(d, h)| d * h).sum();
            prop_assert!((db[ch] as f64 - sum_dy).abs() <= 1e-6 * n + 1e-5);
            prop_assert!((dg[ch] as f64 - sum_dyx).abs() <= 1e-5 * n + 1e-5);
            for p in 0..pixels {
                let affine = xhat[p] * gamma[ch] as f64 + beta[ch] as f64;
                let want_y = if relu { affine.max(0.0) } else { affine };
                let want_dx = gamma[ch] as f64 * inv * (ds[p] - sum_dy / n - xhat[p] * sum_dyx / n);
                prop_assert!((y[p * c + ch] as f64 - want_y).abs() <= 1e-4 * (1.0 + want_y.abs()));
                prop_assert!((dx[p * c + ch] as f64 - want_dx).abs() <= 1e-4 * (1.0 + want_dx.abs() * inv), "dx {} vs {}", dx[p * c + ch], want_dx);
            }
        }
    }
}

/// Batches large enough for the kernel gradient's partial sums over several pixel groups (and
/// for several im2col tiles and panels of output channels), each shape against the reference
/// and across thread counts.
#[test]
fn large_batches_split_the_same_way_on_any_thread_count() {
    let same = Window2d {
        padding: Padding::Same,
        ..Window2d::new([3, 3], [1, 1])
    };
    let strided = Window2d {
        padding: Padding::Explicit(Padding2d::uniform(1)),
        ..Window2d::new([3, 3], [2, 2])
    };
    for (input, cout, window) in [
        ([8, 32, 36, 3], 16, same),
        ([6, 30, 30, 16], 40, same),
        ([9, 31, 29, 24], 33, strided),
        ([16, 24, 24, 20], 7, Window2d::new([1, 1], [1, 1])),
    ] {
        let g = ConvGeometry::new(input, cout, window).unwrap();
        assert!(g.out_pixels() >= 2000, "{g:?}");
        check(&g, 11).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn threaded_pooling_is_the_batch_kernel_bit_for_bit(
        (n, h, w, c) in (1usize..=5, 1usize..=12, 1usize..=12, 1usize..=20),
        (kh, kw, sh, sw) in (1usize..=3, 1usize..=3, 1usize..=3, 1usize..=3),
        pad in padding(),
        max in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let window = Window2d { kernel: [kh, kw], stride: [sh, sw], dilation: [1, 1], padding: pad };
        let Ok(g) = PoolGeometry::new([n, h, w, c], window) else { return Ok(()) };
        let (x, dy) = (fill(g.input_len(), seed), fill(g.output_len(), seed ^ 1));
        let mut want_y = vec![0.0f32; g.output_len()];
        let mut want_dx = vec![0.0f32; g.input_len()];
        if max {
            convnet::kernels::max_pool2d(&x, &g, &mut want_y).unwrap();
            backward::max_pool2d_backward(&x, &g, &dy, &mut want_dx).unwrap();
        } else {
            convnet::kernels::avg_pool2d(&x, &g, &mut want_y).unwrap();
            backward::avg_pool2d_backward(&g, &dy, &mut want_dx).unwrap();
        }
        for t in POOLS.iter() {
            let mut y = vec![f32::NAN; g.output_len()];
            threaded::pool2d_forward(t, &x, &g, max, &mut y).unwrap();
            let mut dx = vec![f32::NAN; g.input_len()];
            threaded::pool2d_backward(t, &x, &g, max, &dy, &mut dx).unwrap();
            prop_assert!(y.iter().zip(&want_y).all(|(a, b)| a.to_bits() == b.to_bits()), "forward on {} threads", t.count());
            prop_assert!(dx.iter().zip(&want_dx).all(|(a, b)| a.to_bits() == b.to_bits()), "backward on {} threads", t.count());
        }
    }
}
