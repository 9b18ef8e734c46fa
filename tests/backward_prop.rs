//! The training kernels' gradients: the GEMM-backed convolution backward (input and kernel)
//! and the pooling backward against their direct-loop references over random shapes (strides
//! 1-3, dilation 1-2, every padding mode, odd sizes, batch 1-3), and the references against
//! central finite differences of the forward kernels in f64.

mod common;

use convnet::kernels::{backward, reference, ConvGeometry, Padding, Padding2d, PoolGeometry, Window2d};
use proptest::prelude::*;

use common::fill;

fn padding() -> impl Strategy<Value = Padding> {
    prop_oneof![
        Just(Padding::Valid),
        Just(Padding::Same),
        (0usize..3, 0usize..3, 0usize..3, 0usize..3).prop_map(|(t, b, l, r)| Padding::Explicit(Padding2d::new(t, b, l, r))),
    ]
}

/// `sum(weights * f(x))` with `weights` fixed: a scalar whose gradient is checked.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn conv_backward_matches_the_direct_loops(
        (n, h, w, cin, cout) in (1usize..=3, 1usize..=11, 1usize..=11, 1usize..=9, 1usize..=9),
        (kh, kw, sh, sw, dh, dw) in (1usize..=4, 1usize..=4, 1usize..=3, 1usize..=3, 1usize..=2, 1usize..=2),
        pad in padding(),
        seed in any::<u64>(),
    ) {
        let window = Window2d { kernel: [kh, kw], stride: [sh, sw], dilation: [dh, dw], padding: pad };
        let Ok(g) = ConvGeometry::new([n, h, w, cin], cout, window) else { return Ok(()) };
        let (x, k, dy) = (fill(g.input_len(), seed), fill(g.kernel_len(), seed ^ 1), fill(g.output_len(), seed ^ 2));
        let mut ws = vec![f32::NAN; 7];
        // NaN-filled outputs: every element must be written.
        let mut dx = vec![f32::NAN; g.input_len()];
        backward::conv2d_backward_input(&dy, &g, &k, &mut dx, &mut ws).unwrap();
        let mut dk = vec![f32::NAN; g.kernel_len()];
        backward::conv2d_backward_kernel(&x, &g, &dy, &mut dk, &mut ws).unwrap();
        let mut want_dx = vec![0.0f64; g.input_len()];
        reference::conv2d_backward_input(&to64(&dy), &g, &to64(&k), &mut want_dx);
        let mut want_dk = vec![0.0f64; g.kernel_len()];
        reference::conv2d_backward_kernel(&to64(&x), &g, &to64(&dy), &mut want_dk);
        // Each element sums at most kh*kw*cout (input) or n*oh*ow (kernel) products of values in [-1, 1).
        let bound_dx = 1e-6 * (kh * kw * cout) as f64 + 1e-6;
        let bound_dk = 1e-6 * g.out_pixels() as f64 + 1e-6;
        for (i, (a, b)) in dx.iter().zip(&want_dx).enumerate() {
            prop_assert!((*a as f64 - b).abs() <= bound_dx, "dx[{}]: {} vs {} for {:?}", i, a, b, g);
        }
        for (i, (a, b)) in dk.iter().zip(&want_dk).enumerate() {
            prop_assert!((*a as f64 - b).abs() <= bound_dk, "dk[{}]: {} vs {} for {:?}", i, a, b, g);
        }
        let mut db = vec![f32::NAN; cout];
        backward::conv2d_backward_bias(&dy, cout, &mut db).unwrap();
        for (o, v) in db.iter().enumerate() {
            let want: f64 = dy.iter().skip(o).step_by(cout).map(|&d| d as f64).sum();
            prop_assert!((*v as f64 - want).abs() <= 1e-6 * g.out_pixels() as f64 + 1e-6);
        }
    }

    #[test]
    fn pool_backward_matches_the_direct_loops(
        (n, h, w, c) in (1usize..=3, 1usize..=10, 1usize..=10, 1usize..=5),
        (kh, kw, sh, sw) in (1usize..=3, 1usize..=3, 1usize..=3, 1usize..=3),
        pad in padding(),
        (ties, seed) in (any::<bool>(), any::<u64>()),
    ) {
        let window = Window2d { kernel: [kh, kw], stride: [sh, sw], dilation: [1, 1], padding: pad };
        let Ok(g) = PoolGeometry::new([n, h, w, c], window) else { return Ok(()) };
        // With `ties`, values from a small set, so windows hold equal maxima.
        let x: Vec<f32> = fill(g.input_len(), seed).iter().map(|&v| if ties { (v * 2.0).round() } else { v }).collect();
        let dy = fill(g.output_len(), seed ^ 3);
        let mut got = vec![f32::NAN; g.input_len()];
        let mut want = vec![0.0; g.input_len()];
        backward::max_pool2d_backward(&x, &g, &dy, &mut got).unwrap();
        reference::max_pool2d_backward(&x, &g, &dy, &mut want);
        for (a, b) in got.iter().zip(&want) {
            prop_assert!((a - b).abs() <= 1e-5, "max: {} vs {} for {:?}", a, b, g);
        }
        backward::avg_pool2d_backward(&g, &dy, &mut got).unwrap();
        reference::avg_pool2d_backward(&g, &dy, &mut want);
        for (a, b) in got.iter().zip(&want) {
            prop_assert!((a - b).abs() <= 1e-5, "avg: {} vs {} for {:?}", a, b, g);
        }
    }
}

/// The references are the gradients of the forward kernels: a central difference of
/// `sum(dy * conv(x, k))` in f64 against each of them, on a strided, dilated, padded case.
#[test]
fn conv_gradients_are_the_forward_kernels_derivatives() {
    let window = Window2d {
        kernel: [3, 2],
        stride: [2, 1],
        dilation: [1, 2],
        padding: Padding::Explicit(Padding2d::new(1, 0, 2, 1)),
    };
    let g = ConvGeometry::new([2, 5, 6, 3], 4, window).unwrap();
    let (x, k, dy) = (
        to64(&fill(g.input_len(), 1)),
        to64(&fill(g.kernel_len(), 2)),
        to64(&fill(g.output_len(), 3)),
    );
    let loss = |x: &[f64], k: &[f64]| {
        let mut y = vec![0.0; g.output_len()];
        reference::conv2d(x, &g, k, None, &mut y);
        dot(&y, &dy)
    };
    let mut dx = vec![0.0; g.input_len()];
    reference::conv2d_backward_input(&dy, &g, &k, &mut dx);
    let mut dk = vec![0.0; g.kernel_len()];
    reference::conv2d_backward_kernel(&x, &g, &dy, &mut dk);
    let h = 1e-5;
    for i in 0..x.len() {
        let (mut p, mut m) = (x.clone(), x.clone());
        p[i] += h;
        m[i] -= h;
        let fd = (loss(&p, &k) - loss(&m, &k)) / (2.0 * h);
        assert!((fd - dx[i]).abs() <= 1e-7, "dx[{i}]: {fd} vs {}", dx[i]);
    }
    for i in 0..k.len() {
        let (mut p, mut m) = (k.clone(), k.clone());
        p[i] += h;
        m[i] -= h;
        let fd = (loss(&x, &p) - loss(&x, &m)) / (2.0 * h);
        assert!((fd - dk[i]).abs() <= 1e-7, "dk[{i}]: {fd} vs {}", dk[i]);
    }
}

/// The same for the pools (in f32: the pool kernels are f32 only; away from ties, a max pool is
/// linear in its winners, an average pool linear everywhere).
#[test]
fn pool_gradients_are_the_forward_kernels_derivatives() {
    let window = Window2d {
        kernel: [3, 2],
        stride: [2, 1],
        dilation: [1, 1],
        padding: Padding::Same,
    };
    let g = PoolGeometry::new([2, 5, 6, 3], window).unwrap();
    // Distinct values 0.01 apart, so a step of 1e-3 never changes a window's winner.
    let len = g.input_len();
    let x: Vec<f32> = (0..len).map(|i| ((i * 37) % len) as f32 * 0.01 - 1.0).collect();
    let dy = fill(g.output_len(), 8);
    for max in [true, false] {
        let forward = |x: &[f32]| {
            let mut y = vec![0.0; g.output_len()];
            if max {
                convnet::kernels::max_pool2d(x, &g, &mut y).unwrap();
            } else {
                convnet::kernels::avg_pool2d(x, &g, &mut y).unwrap();
            }
            y.iter().zip(&dy).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>()
        };
        let mut dx = vec![0.0; g.input_len()];
        if max {
            backward::max_pool2d_backward(&x, &g, &dy, &mut dx).unwrap();
        } else {
            backward::avg_pool2d_backward(&g, &dy, &mut dx).unwrap();
        }
        let h = 1e-3f32;
        for i in 0..x.len() {
            let (mut p, mut m) = (x.clone(), x.clone());
            p[i] += h;
            m[i] -= h;
            let fd = (forward(&p) - forward(&m)) / (2.0 * h as f64);
            assert!((fd - dx[i] as f64).abs() <= 1e-3, "max {max} dx[{i}]: {fd} vs {}", dx[i]);
        }
    }
    let mut dgap = vec![0.0; 2 * 5 * 6 * 3];
    backward::global_avg_pool_backward([2, 5, 6, 3], &fill(6, 9), &mut dgap).unwrap();
    assert!((dgap[0] - fill(6, 9)[0] / 30.0).abs() < 1e-7);
    assert!(backward::global_avg_pool_backward([2, 5, 6, 3], &fill(5, 9), &mut dgap).is_err());
}
