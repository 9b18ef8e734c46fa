//! Property tests: every fast kernel against its direct-loop reference in
//! `convnet::kernels::reference`, over random shapes (odd sizes, kernels up to 7x7,
//! non-square kernels, strides 1-3, dilation 1-2, every padding mode, batch 1-3, channels
//! 1-70). Outputs start NaN-filled, which proves the kernels write every element they own.

use convnet::kernels::{self, reference, ConvGeometry, ConvStrategy, Epilogue, Padding, Padding2d, PoolGeometry, Rectifier, Window2d};
use proptest::prelude::*;

mod common;

use common::fill;

fn padding_strategy() -> impl Strategy<Value = Padding> {
    prop_oneof![
        Just(Padding::Valid),
        Just(Padding::Same),
        (0usize..4, 0usize..4, 0usize..4, 0usize..4).prop_map(|(t, b, l, r)| Padding::Explicit(Padding2d::new(t, b, l, r))),
    ]
}

/// The three epilogue rectifiers.
fn rectifier_strategy() -> impl Strategy<Value = Rectifier> {
    prop_oneof![Just(Rectifier::Identity), Just(Rectifier::Relu), Just(Rectifier::Relu6)]
}

/// The rectifiers' definitions, written out (not through `Rectifier::apply`).
fn rectify(r: Rectifier, v: f64) -> f64 {
    match r {
        Rectifier::Identity => v,
        Rectifier::Relu => v.max(0.0),
        Rectifier::Relu6 => v.clamp(0.0, 6.0),
    }
}

/// Checks `got`, output rows `rows` of a direct grouped convolution (groups of `width`
/// channels in and out over `g.in_channels`) of `x` by `k` through `e`, against the reference's
/// grouped loop in f64 with `e`'s epilogue applied after it.
fn check_direct_rows(
    x: &[f32],
    k: &[f32],
    g: &ConvGeometry,
    width: usize,
    rows: std::ops::Range<usize>,
    e: &convnet::kernels::packed_gemm::GemmEpilogue<'_>,
    got: &[f32],
) -> Result<(), TestCaseError> {
    let c = g.in_channels;
    let one = ConvGeometry {
        in_channels: width,
        out_channels: width,
        ..*g
    };
    let row_len = g.out_hw[1] * c;
    let wide = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
    let mut want = vec![0.0f64; g.output_len()];
    reference::conv2d_grouped(&wide(x), &one, c / width, &wide(k), None, &mut want);
    for (i, &a) in got.iter().enumerate() {
        let ch = i % c;
        let mut b = want[rows.start * row_len + i];
        if let Some(s) = e.scale {
            b *= s[ch] as f64;
        }
        if let Some(v) = e.bias {
            b += v[ch] as f64;
        }
        if let Some(r) = e.residual {
            b += r[i] as f64;
        }
        let b = rectify(e.rectifier, b);
        prop_assert!(
            (a as f64 - b).abs() <= 1e-5 * (1.0 + b.abs()),
            "element {i}: {a} vs {b} for {g:?}, groups of {width}"
        );
    }
    Ok(())
}

/// A direct convolution loop under test: `(x, g, kernel, e, rows, out)` as
/// `depthwise_conv2d_rows` and `grouped_conv2d_rows` take them.
type DirectLoop<'a> = &'a dyn Fn(
    &[f32],
    &ConvGeometry,
    &[f32],
    &convnet::kernels::packed_gemm::GemmEpilogue<'_>,
    std::ops::Range<usize>,
    &mut [f32],
) -> convnet::Result<()>;

/// One property case of a direct convolution loop over groups of `width` channels: an NHWC input
/// of `shape`, output rows `r0..r1` (clamped), the epilogue's scale, bias, residual and rectifier
/// as drawn, all data from `seed`. When `refused`, the loop must answer with a configuration
/// error instead; otherwise its rows are checked against the reference ([`check_direct_rows`]).
#[allow(clippy::too_many_arguments)]
fn direct_case(
    shape: [usize; 4],
    width: usize,
    window: Window2d,
    (r0, r1): (usize, usize),
    (scale, bias, residual, rectifier): (bool, bool, bool, Rectifier),
    seed: u64,
    refused: bool,
    run: DirectLoop<'_>,
) -> Result<(), TestCaseError> {
    let [n, _, _, c] = shape;
    let [kh, kw] = window.kernel;
    let Ok(g) = ConvGeometry::new(shape, c, window) else {
        return Ok(());
    };
    let all_rows = n * g.out_hw[0];
    let rows = r0.min(all_rows)..r1.clamp(r0.min(all_rows), all_rows);
    let row_len = g.out_hw[1] * c;
    let (x, k) = (fill(g.input_len(), seed), fill(kh * kw * width * c, seed ^ 1));
    let (scale_v, bias_v, res_v) = (fill(c, seed ^ 2), fill(c, seed ^ 3), fill(rows.len() * row_len, seed ^ 4));
    let e = convnet::kernels::packed_gemm::GemmEpilogue {
        scale: scale.then_some(&scale_v[..]),
        bias: bias.then_some(&bias_v[..]),
        residual: residual.then_some(&res_v[..]),
        rectifier,
    };
    let mut got = vec![f32::NAN; rows.len() * row_len];
    let result = run(&x, &g, &k, &e, rows.clone(), &mut got);
    if refused {
        prop_assert!(
            matches!(result, Err(convnet::Error::Config { .. })),
            "expected a configuration error"
        );
        return Ok(());
    }
    result.unwrap();
    check_direct_rows(&x, &k, &g, width, rows, &e, &got)
}

#[derive(Debug, Clone)]
struct ConvCase {
    input: [usize; 4],
    out_channels: usize,
    window: Window2d,
    tile_rows: usize,
    seed: u64,
}

fn conv_case(
    max_kernel: usize,
    strides: std::ops::RangeInclusive<usize>,
    dilations: std::ops::RangeInclusive<usize>,
) -> impl Strategy<Value = ConvCase> {
    (
        (1usize..=3, 0usize..=6, 0usize..=6, 1usize..=70, 1usize..=70),
        (
            1..=max_kernel,
            1..=max_kernel,
            strides.clone(),
            strides,
            dilations.clone(),
            dilations,
        ),
        padding_strategy(),
        1usize..=97,
        any::<u64>(),
    )
        .prop_map(|((n, eh, ew, ci, co), (kh, kw, sh, sw, dh, dw), padding, tile_rows, seed)| {
            let window = Window2d {
                kernel: [kh, kw],
                stride: [sh, sw],
                dilation: [dh, dw],
                padding,
            };
            let span = window.span();
            let pad = match padding {
                Padding::Explicit(p) => [p.top + p.bottom, p.left + p.right],
                _ => [0, 0],
            };
            // Large enough for the window (with explicit padding counted), plus 0-6 extra.
            let h = span[0].saturating_sub(pad[0]).max(1) + eh;
            let w = span[1].saturating_sub(pad[1]).max(1) + ew;
            ConvCase {
                input: [n, h, w, ci],
                out_channels: co,
                window,
                tile_rows,
                seed,
            }
        })
}

/// Runs the fast convolution and the reference on one case and compares them element-wise,
/// with a tolerance scaled by the sum of |x * w| under each output (the bound of a float
/// dot product's rounding error, whatever the summation order).
fn check_conv(c: &ConvCase, epilogue_on: bool) -> Result<(), TestCaseError> {
    let g = ConvGeometry::new(c.input, c.out_channels, c.window).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let x = fill(g.input_len(), c.seed);
    let k = fill(g.kernel_len(), c.seed ^ 1);
    let bias = fill(g.out_channels, c.seed ^ 2);
    let residual = fill(g.output_len(), c.seed ^ 3);

    let mut want = vec![0.0; g.output_len()];
    reference::conv2d(&x, &g, &k, epilogue_on.then_some(&bias[..]), &mut want);
    let xa: Vec<f32> = x.iter().map(|v| v.abs()).collect();
    let ka: Vec<f32> = k.iter().map(|v| v.abs()).collect();
    let mut scale = vec![0.0; g.output_len()];
    reference::conv2d(&xa, &g, &ka, None, &mut scale);
    if epilogue_on {
        for (w, r) in want.iter_mut().zip(&residual) {
            *w = (*w + r).max(0.0);
        }
    }

    let epilogue = if epilogue_on {
        Epilogue {
            bias: Some(&bias),
            residual: Some(&residual),
            rectifier: Rectifier::Relu,
        }
    } else {
        Epilogue::default()
    };
    let mut got = vec![f32::NAN; g.output_len()];
    let mut ws = vec![f32::NAN; 3];
    kernels::conv2d_tiled(&x, &g, &k, &epilogue, &mut got, &mut ws, c.tile_rows).map_err(|e| TestCaseError::fail(e.to_string()))?;
    for (i, ((a, b), s)) in got.iter().zip(&want).zip(&scale).enumerate() {
        let tol = 1e-5 * (s + 1.0);
        prop_assert!(
            (a - b).abs() <= tol,
            "element {i}: got {a}, want {b} (tol {tol}) for {g:?} ({:?})",
            ConvStrategy::for_geometry(&g)
        );
    }
    // The same call through the default tiling gives the same result.
    let mut again = vec![f32::NAN; g.output_len()];
    kernels::conv2d(&x, &g, &k, &epilogue, &mut again, &mut Vec::new()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    for (a, b) in again.iter().zip(&want).zip(&scale).map(|((a, b), s)| (a, (b, s))) {
        prop_assert!((a - b.0).abs() <= 1e-5 * (b.1 + 1.0));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn conv2d_matches_reference(c in conv_case(7, 1..=3, 1..=2)) {
        check_conv(&c, false)?;
    }

    #[test]
    fn conv2d_with_fused_epilogue_matches_reference(c in conv_case(5, 1..=3, 1..=2)) {
        check_conv(&c, true)?;
    }

    #[test]
    fn pointwise_and_strided_pointwise_match_reference(mut c in conv_case(1, 1..=3, 1..=1)) {
        c.window.padding = Padding::Valid;
        check_conv(&c, false)?;
    }

    #[test]
    fn pooling_matches_reference(
        (n, h, w, ch) in (1usize..=3, 1usize..=17, 1usize..=17, 1usize..=70),
        (kh, kw, sh, sw) in (1usize..=7, 1usize..=7, 1usize..=3, 1usize..=3),
        padding in padding_strategy(),
        seed in any::<u64>(),
    ) {
        let window = Window2d { kernel: [kh, kw], stride: [sh, sw], dilation: [1, 1], padding };
        // Shapes the window cannot pool (too small, or padding >= window) must be errors.
        let g = match PoolGeometry::new([n, h, w, ch], window) {
            Ok(g) => g,
            Err(convnet::Error::Shape { .. } | convnet::Error::Config { .. }) => return Ok(()),
            Err(e) => return Err(TestCaseError::fail(e.to_string())),
        };
        let x = fill(g.input_len(), seed);
        for (fast, slow) in [
            (kernels::max_pool2d as fn(&[f32], &PoolGeometry, &mut [f32]) -> convnet::Result<()>, reference::max_pool2d as fn(&[f32], &PoolGeometry, &mut [f32])),
            (kernels::avg_pool2d, reference::avg_pool2d),
        ] {
            let mut want = vec![0.0; g.output_len()];
            slow(&x, &g, &mut want);
            let mut got = vec![f32::NAN; g.output_len()];
            fast(&x, &g, &mut got).unwrap();
            for (a, b) in got.iter().zip(&want) {
                prop_assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "got {a}, want {b} for {g:?}");
            }
        }
    }

    #[test]
    fn global_avg_pool_matches_a_valid_full_window_average(
        (n, h, w, ch) in (1usize..=3, 1usize..=9, 1usize..=9, 1usize..=70),
        seed in any::<u64>(),
    ) {
        let x = fill(n * h * w * ch, seed);
        let g = PoolGeometry::new([n, h, w, ch], Window2d::new([h, w], [1, 1])).unwrap();
        let mut want = vec![0.0; n * ch];
        reference::avg_pool2d(&x, &g, &mut want);
        let mut got = vec![f32::NAN; n * ch];
        kernels::global_avg_pool(&x, [n, h, w, ch], &mut got).unwrap();
        for (a, b) in got.iter().zip(&want) {
            prop_assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()));
        }
    }
}

/// im2col writes zeros into padding taps of a reused, NaN-filled buffer.
#[test]
fn im2col_overwrites_a_dirty_buffer() {
    let window = Window2d {
        kernel: [3, 3],
        stride: [1, 1],
        dilation: [1, 1],
        padding: Padding::Same,
    };
    let g = ConvGeometry::new([1, 2, 2, 1], 1, window).unwrap();
    let x = [1.0, 2.0, 3.0, 4.0];
    let mut cols = vec![f32::NAN; g.out_pixels() * g.patch_len()];
    kernels::im2col(&x, &g, 0, g.out_pixels(), &mut cols).unwrap();
    // Output pixel (0, 0) sees [pad pad pad; pad 1 2; pad 3 4].
    assert_eq!(&cols[..9], &[0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 0.0, 3.0, 4.0]);
    assert!(cols.iter().all(|v| v.is_finite()));
}

/// The three strategies are chosen as documented.
#[test]
fn strategy_selection() {
    let plan = |k: usize, s: usize, p: Padding| {
        ConvStrategy::for_geometry(
            &ConvGeometry::new(
                [1, 8, 8, 4],
                4,
                Window2d {
                    kernel: [k, k],
                    stride: [s, s],
                    dilation: [1, 1],
                    padding: p,
                },
            )
            .unwrap(),
        )
    };
    assert_eq!(plan(1, 1, Padding::Valid), ConvStrategy::Pointwise);
    assert_eq!(plan(1, 1, Padding::Same), ConvStrategy::Pointwise);
    assert_eq!(plan(1, 2, Padding::Valid), ConvStrategy::StridedPointwise);
    assert_eq!(plan(1, 1, Padding::Explicit(Padding2d::uniform(1))), ConvStrategy::Im2col);
    assert_eq!(plan(3, 1, Padding::Same), ConvStrategy::Im2col);
}

mod packed {
    use super::{fill, rectifier_strategy, rectify};
    use convnet::kernels::packed_gemm::{gemm_packed_with, GemmEpilogue, GemmKernel, PackedB, NR};
    use convnet::kernels::reference;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// Every micro-kernel this machine has (AVX-512, AVX2 + FMA, NEON, portable) against the
        /// reference GEMM, over sizes around the MR/NR/KC edges,
        /// with strided A and C (A's stride sometimes a multiple of 1024 floats, whose rows the
        /// kernels copy to a stride that spreads them over L1's sets), a sub-block of rows and
        /// panels, and the fused epilogue.
        #[test]
        fn packed_gemm_matches_reference(
            (m, k, n) in (1usize..40, 1usize..600, 1usize..100),
            (extra_lda, extra_ldc, crowded) in (0usize..5, 0usize..5, any::<bool>()),
            (r0, r1, p0, p1) in (0usize..40, 0usize..40, 0usize..4, 0usize..4),
            (scale, bias, residual, rectifier) in (any::<bool>(), any::<bool>(), any::<bool>(), rectifier_strategy()),
            seed in any::<u64>(),
        ) {
            let lda = if crowded { k.next_multiple_of(1024) } else { k + extra_lda };
            let ldc = n + extra_ldc;
            let a = fill(m * lda, seed);
            let b = fill(k * n, seed ^ 5);
            let bias_v = fill(n, seed ^ 6);
            let res_v = fill(m * ldc, seed ^ 7);
            let packed = PackedB::pack(&b, k, n, n).unwrap();
            let rows = r0.min(m)..r1.clamp(r0.min(m), m);
            let panels = p0.min(packed.panels())..p1.clamp(p0.min(packed.panels()), packed.panels());
            // reference on the dense A (strip lda)
            let dense: Vec<f32> = (0..m).flat_map(|i| a[i * lda..i * lda + k].to_vec()).collect();
            let mut want = vec![0.0; m * n];
            reference::gemm(m, k, n, &dense, &b, &mut want);
            let scale_v = fill(n, seed ^ 8);
            let e = GemmEpilogue { scale: scale.then_some(&scale_v[..]), bias: bias.then_some(&bias_v[..]), residual: residual.then_some(&res_v[..]), rectifier };
            let mut simd_outputs = Vec::new();
            // The portable kernel twice: with `B` packed for it (a row-major copy it multiplies
            // in place) and packed for the selected kernel (panels only).
            let for_portable = PackedB::pack_for(GemmKernel::Portable, &b, k, n, n).unwrap();
            let runs = GemmKernel::available().into_iter().map(|kernel| (kernel, &packed))
                .chain([(GemmKernel::Portable, &for_portable)]);
            for (kernel, packed) in runs {
                let mut c = vec![f32::NAN; m * ldc];
                gemm_packed_with(kernel, &a, lda, packed, &mut c, ldc, rows.clone(), panels.clone(), &e).unwrap();
                for i in 0..m {
                    for j in 0..ldc {
                        let got = c[i * ldc + j];
                        let inside = rows.contains(&i) && j < n && panels.contains(&(j / NR));
                        if !inside {
                            prop_assert!(got.is_nan(), "({i}, {j}) outside the block was written");
                            continue;
                        }
                        let mut w = want[i * n + j];
                        if scale { w *= scale_v[j]; }
                        if bias { w += bias_v[j]; }
                        if residual { w += res_v[i * ldc + j]; }
                        let w = rectify(rectifier, w as f64) as f32;
                        prop_assert!((got - w).abs() <= 1e-4 * (1.0 + (k as f32).sqrt()), "{kernel:?} ({i}, {j}): {got} vs {w}");
                    }
                }
                if kernel != GemmKernel::Portable {
                    simd_outputs.push(c);
                }
            }
            // The SIMD kernels fuse each multiply-add in the same order: the same bits.
            for c in simd_outputs.iter().skip(1) {
                prop_assert!(c.iter().zip(&simd_outputs[0]).all(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())));
            }
        }
    }
}

mod winograd {
    use super::{fill, padding_strategy, rectifier_strategy, rectify};
    use convnet::kernels::packed_gemm::GemmEpilogue;
    use convnet::kernels::winograd::{conv2d_winograd, WinogradTile, WinogradWeights};
    use convnet::kernels::{reference, ConvGeometry, Window2d};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// Both Winograd algorithms against the direct-loop reference: odd and even sizes (tiles
        /// overhanging the output), every padding mode, batch 1-3, channel counts around the
        /// 16-wide transform steps and the 32-column panels, blocks of 1-30 tiles, and the
        /// whole epilogue. The output starts NaN-filled, so every element must be written.
        #[test]
        fn winograd_matches_reference(
            (n, h, w, cin, cout) in (1usize..=3, 1usize..=14, 1usize..=14, 1usize..=40, 1usize..=70),
            padding in padding_strategy(),
            (f4, block) in (any::<bool>(), 1usize..=30),
            (scale, bias, residual, rectifier) in (any::<bool>(), any::<bool>(), any::<bool>(), rectifier_strategy()),
            seed in any::<u64>(),
        ) {
            let window = Window2d { padding, ..Window2d::new([3, 3], [1, 1]) };
            let Ok(g) = ConvGeometry::new([n, h, w, cin], cout, window) else { return Ok(()) };
            let tile = if f4 { WinogradTile::F4x4 } else { WinogradTile::F2x2 };
            let x = fill(g.input_len(), seed);
            let k = fill(g.kernel_len(), seed ^ 1);
            let (scale_v, bias_v, res_v) = (fill(cout, seed ^ 2), fill(cout, seed ^ 3), fill(g.output_len(), seed ^ 4));
            let weights = WinogradWeights::new(&k, cin, cout, tile).unwrap();
            let e = GemmEpilogue {
                scale: scale.then_some(&scale_v[..]),
                bias: bias.then_some(&bias_v[..]),
                residual: residual.then_some(&res_v[..]),
                rectifier,
            };
            let mut got = vec![f32::NAN; g.output_len()];
            conv2d_winograd(&x, &g, &weights, &e, &mut got, block, &mut Vec::new()).unwrap();

            let mut want = vec![0.0; g.output_len()];
            reference::conv2d(&x, &g, &k, None, &mut want);
            let abs = |v: &[f32]| v.iter().map(|a| a.abs()).collect::<Vec<_>>();
            let mut bound = vec![0.0; g.output_len()];
            reference::conv2d(&abs(&x), &g, &abs(&k), None, &mut bound);
            for (i, ((a, &b), s)) in got.iter().zip(&want).zip(&bound).enumerate() {
                let o = i % cout;
                let mut b = b;
                let mut s = *s;
                if scale { b *= scale_v[o]; s *= scale_v[o].abs(); }
                if bias { b += bias_v[o]; }
                if residual { b += res_v[i]; }
                let b = rectify(rectifier, b as f64) as f32;
                // F(4x4, 3x3)'s transforms scale values by up to 8 and 1/24 on the way, so it
                // rounds more than F(2x2, 3x3), whose bound is the GEMM path's.
                let tol = if f4 { 1e-4 } else { 1e-5 } * (s + 1.0);
                prop_assert!((a - b).abs() <= tol, "element {i}: {a} vs {b} (tol {tol}) for {tile:?} {g:?}");
            }
        }
    }

    #[test]
    fn wrong_shapes_are_errors() {
        let g = ConvGeometry::new([1, 5, 5, 4], 8, Window2d::new([3, 3], [2, 2])).unwrap();
        let w = WinogradWeights::new(&fill(9 * 4 * 8, 1), 4, 8, WinogradTile::F2x2).unwrap();
        let mut out = vec![0.0; g.output_len()];
        let e = GemmEpilogue::default();
        let err = conv2d_winograd(&fill(g.input_len(), 2), &g, &w, &e, &mut out, 4, &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("stride 1"), "{err}");
        assert!(WinogradWeights::new(&fill(10, 1), 4, 8, WinogradTile::F2x2).is_err());
        let g = ConvGeometry::new([1, 5, 5, 4], 8, Window2d::new([3, 3], [1, 1])).unwrap();
        let short = conv2d_winograd(&fill(g.input_len() - 1, 2), &g, &w, &e, &mut out, 4, &mut Vec::new());
        assert!(matches!(short, Err(convnet::Error::Shape { .. })), "{short:?}");
    }
}

/// The fast executor runs the fastest kernel the CPU has (NEON on aarch64), unless
/// `CONVNET_GEMM_KERNEL` names another one the CPU has.
#[test]
fn the_fastest_available_kernel_is_selected() {
    use convnet::kernels::packed_gemm::{gemm_kernel, GemmKernel};
    let available = GemmKernel::available();
    let forced = std::env::var("CONVNET_GEMM_KERNEL").ok();
    if let Some(k) = available.iter().find(|k| forced.as_deref() == Some(k.name())) {
        assert_eq!(gemm_kernel(), *k);
        return;
    }
    #[cfg(target_arch = "aarch64")]
    assert_eq!(gemm_kernel(), GemmKernel::Neon);
    #[cfg(target_arch = "x86_64")]
    {
        let want = if std::is_x86_feature_detected!("avx512f") {
            GemmKernel::Avx512
        } else if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            GemmKernel::Avx2Fma
        } else {
            GemmKernel::Portable
        };
        assert_eq!(gemm_kernel(), want);
    }
    assert_eq!(available.last(), Some(&GemmKernel::Portable));
}

mod depthwise {
    use super::{direct_case, fill, padding_strategy, rectifier_strategy};
    use convnet::kernels::depthwise::depthwise_conv2d_rows;
    use convnet::kernels::packed_gemm::GemmEpilogue;
    use convnet::kernels::{ConvGeometry, Window2d};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// The direct depthwise loop on any range of output rows, with the whole epilogue,
        /// against the reference's grouped loop (groups = channels) in f64.
        #[test]
        fn depthwise_matches_reference(
            (n, h, w, c) in (1usize..=3, 1usize..=12, 1usize..=12, 1usize..=40),
            (kh, kw, s, d) in (1usize..=5, 1usize..=5, 1usize..=3, 1usize..=2),
            padding in padding_strategy(),
            (r0, r1) in (0usize..40, 0usize..40),
            epilogue in (any::<bool>(), any::<bool>(), any::<bool>(), rectifier_strategy()),
            seed in any::<u64>(),
        ) {
            let window = Window2d { padding, dilation: [d, d], ..Window2d::new([kh, kw], [s, s]) };
            direct_case([n, h, w, c], 1, window, (r0, r1), epilogue, seed, false, &|x, g, k, e, rows, out| depthwise_conv2d_rows(x, g, k, e, rows, out))?;
        }

        /// The square 3x3 and 5x5 kernels the intrinsics loop takes (runs of 8, 4, 2 and 1
        /// interior pixels between the edges, strides 1 and 2 reusing loaded pixels, other
        /// strides and dilations loading each tap), on rows wide enough for every run length
        /// and channel counts with full and partial registers.
        #[test]
        fn depthwise_square_kernels_match_reference(
            (n, h, w, c) in (1usize..=2, 1usize..=9, 1usize..=30, 1usize..=40),
            (k, s, d) in (prop_oneof![Just(3usize), Just(5usize)], 1usize..=3, 1usize..=2),
            padding in padding_strategy(),
            (r0, r1) in (0usize..20, 0usize..20),
            epilogue in (any::<bool>(), any::<bool>(), any::<bool>(), rectifier_strategy()),
            seed in any::<u64>(),
        ) {
            let window = Window2d { padding, dilation: [d, d], ..Window2d::new([k, k], [s, s]) };
            direct_case([n, h, w, c], 1, window, (r0, r1), epilogue, seed, false, &|x, g, k, e, rows, out| depthwise_conv2d_rows(x, g, k, e, rows, out))?;
        }
    }

    #[test]
    fn wrong_shapes_are_errors() {
        let g = ConvGeometry::new([1, 5, 5, 4], 4, Window2d::new([3, 3], [1, 1])).unwrap();
        let e = GemmEpilogue::default();
        let mut out = vec![0.0; g.output_len()];
        let x = fill(g.input_len(), 1);
        assert!(depthwise_conv2d_rows(&x, &g, &fill(9 * 4, 2), &e, 0..3, &mut out).is_ok());
        assert!(
            depthwise_conv2d_rows(&x, &g, &fill(8, 2), &e, 0..3, &mut out).is_err(),
            "short kernel"
        );
        assert!(
            depthwise_conv2d_rows(&x, &g, &fill(36, 2), &e, 0..4, &mut out).is_err(),
            "rows past the output"
        );
        assert!(
            depthwise_conv2d_rows(&x[1..], &g, &fill(36, 2), &e, 0..3, &mut out).is_err(),
            "short input"
        );
        let dense = ConvGeometry::new([1, 5, 5, 4], 8, Window2d::new([3, 3], [1, 1])).unwrap();
        assert!(
            depthwise_conv2d_rows(&x, &dense, &fill(36, 2), &e, 0..3, &mut out).is_err(),
            "not depthwise"
        );
    }
}

mod narrow_groups {
    use super::{direct_case, padding_strategy, rectifier_strategy};
    use convnet::kernels::narrow_groups::{grouped_conv2d_rows, supports};
    use convnet::kernels::packed_gemm::gemm_kernel;
    use convnet::kernels::Window2d;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// The direct loop for groups of 4 and 8 channels (AVX-512) on any range of output
        /// rows, with the whole epilogue, against the reference's grouped loop in f64; where
        /// the selected kernel cannot run it, a typed error.
        #[test]
        fn narrow_groups_match_reference(
            (n, h, w) in (1usize..=2, 1usize..=11, 1usize..=11),
            (width, blocks) in (prop_oneof![Just(4usize), Just(8)], 1usize..=3),
            (kh, kw, s, d) in (1usize..=3, 1usize..=3, 1usize..=2, 1usize..=2),
            padding in padding_strategy(),
            (r0, r1) in (0usize..30, 0usize..30),
            epilogue in (any::<bool>(), any::<bool>(), any::<bool>(), rectifier_strategy()),
            seed in any::<u64>(),
        ) {
            one_case([n, h, w], width, blocks, Window2d { padding, dilation: [d, d], ..Window2d::new([kh, kw], [s, s]) }, (r0, r1), epilogue, seed)?;
        }

        /// ResNeXt's case, 3x3 kernels at strides 1-3, on rows wide enough for several runs of
        /// pixels between the edges.
        #[test]
        fn narrow_groups_3x3_match_reference(
            (n, h, w) in (1usize..=2, 1usize..=7, 1usize..=30),
            (width, blocks) in (prop_oneof![Just(4usize), Just(8)], 1usize..=2),
            s in 1usize..=3,
            padding in padding_strategy(),
            (r0, r1) in (0usize..16, 0usize..16),
            epilogue in (any::<bool>(), any::<bool>(), any::<bool>(), rectifier_strategy()),
            seed in any::<u64>(),
        ) {
            one_case([n, h, w], width, blocks, Window2d { padding, ..Window2d::new([3, 3], [s, s]) }, (r0, r1), epilogue, seed)?;
        }
    }

    /// One case: `16 * blocks` channels in groups of `width`; refused unless the selected
    /// kernel runs them.
    fn one_case(
        [n, h, w]: [usize; 3],
        width: usize,
        blocks: usize,
        window: Window2d,
        rows: (usize, usize),
        epilogue: (bool, bool, bool, convnet::kernels::Rectifier),
        seed: u64,
    ) -> Result<(), TestCaseError> {
        let c = 16 * blocks;
        let refused = !supports(gemm_kernel(), width, c);
        direct_case([n, h, w, c], width, window, rows, epilogue, seed, refused, &|x, g, k, e, r, out| {
            grouped_conv2d_rows(x, g, width, k, e, r, out)
        })
    }
}
