//! Convolution kernels at ResNet50's layer shapes (the seed's Keras layout, batch 1, NHWC):
//! the GEMM-backed driver against the direct-loop reference, and for the stride-1 3x3 layers
//! the two Winograd algorithms; and the depthwise 3x3 convolutions of MobileNetV2 (224x224,
//! alpha 1.0): the direct NHWC loop (`kernels::depthwise`) against the grouped GEMM driver
//! (one GEMM per channel).
//! `cargo bench --bench conv`; throughput is reported in FLOP.

use std::hint::black_box;

use convnet::kernels::packed_gemm::GemmEpilogue;
use convnet::kernels::winograd::{self, WinogradTile, WinogradWeights};
use convnet::kernels::{conv2d, conv2d_grouped, depthwise, reference, ConvGeometry, Epilogue, Padding, Rectifier, Window2d};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// (layer, input [n, h, w, c], filters, kernel, stride, padding)
type LayerShape = (&'static str, [usize; 4], usize, usize, usize, Padding);

const LAYERS: &[LayerShape] = &[
    ("conv1", [1, 230, 230, 3], 64, 7, 2, Padding::Valid),
    ("res2a_branch2a", [1, 55, 55, 64], 64, 1, 1, Padding::Valid),
    ("res2a_branch2b", [1, 55, 55, 64], 64, 3, 1, Padding::Same),
    ("res3a_branch2a", [1, 55, 55, 256], 128, 1, 2, Padding::Valid),
    ("res3a_branch2b", [1, 28, 28, 128], 128, 3, 1, Padding::Same),
    ("res4a_branch2b", [1, 14, 14, 256], 256, 3, 1, Padding::Same),
    ("res5a_branch2b", [1, 7, 7, 512], 512, 3, 1, Padding::Same),
];

fn data(len: usize) -> Vec<f32> {
    (0..len).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect()
}

fn conv(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv2d");
    group.sample_size(10);
    for &(layer, input, filters, k, s, padding) in LAYERS {
        let window = Window2d {
            kernel: [k, k],
            stride: [s, s],
            dilation: [1, 1],
            padding,
        };
        let g = ConvGeometry::new(input, filters, window).expect("valid ResNet50 geometry");
        let (x, w, b) = (data(g.input_len()), data(g.kernel_len()), data(filters));
        let mut out = vec![0.0; g.output_len()];
        let mut ws = Vec::new();
        let id = format!("{layer} {}x{}x{} k{k} s{s}", input[1], input[2], input[3]);
        group.throughput(Throughput::Elements(g.flops()));
        let e = Epilogue {
            bias: Some(&b),
            ..Default::default()
        };
        group.bench_function(BenchmarkId::new("kernels::conv2d", &id), |bench| {
            bench.iter(|| conv2d(black_box(&x), &g, black_box(&w), &e, &mut out, &mut ws))
        });
        if winograd::supports(&g) {
            let ge = GemmEpilogue {
                bias: Some(&b),
                ..Default::default()
            };
            for tile in [WinogradTile::F2x2, WinogradTile::F4x4] {
                let ww = WinogradWeights::new(&w, input[3], filters, tile).expect("valid 3x3 kernel");
                group.bench_function(BenchmarkId::new(format!("winograd {tile:?}"), &id), |bench| {
                    bench.iter(|| winograd::conv2d_winograd(black_box(&x), &g, &ww, &ge, &mut out, 64, &mut ws))
                });
            }
        }
        group.bench_function(BenchmarkId::new("reference::conv2d", &id), |bench| {
            bench.iter(|| reference::conv2d(black_box(&x), &g, black_box(&w), Some(&b), &mut out))
        });
    }
    group.finish();
}

/// MobileNetV2's depthwise 3x3 layers: (where, input [n, h, w, c], stride).
const DEPTHWISE: &[(&str, [usize; 4], usize)] = &[
    ("expanded_conv_depthwise", [1, 112, 112, 32], 1),
    ("block_1_depthwise", [1, 112, 112, 96], 2),
    ("block_2_depthwise", [1, 56, 56, 144], 1),
    ("block_6_depthwise", [1, 28, 28, 192], 2),
    ("block_13_depthwise", [1, 14, 14, 576], 2),
    ("block_16_depthwise", [1, 7, 7, 960], 1),
];

fn depthwise_conv(c: &mut Criterion) {
    let mut group = c.benchmark_group("depthwise");
    group.sample_size(20);
    for &(layer, input, stride) in DEPTHWISE {
        let channels = input[3];
        let window = Window2d {
            padding: Padding::Same,
            ..Window2d::new([3, 3], [stride, stride])
        };
        let full = ConvGeometry::new(input, channels, window).unwrap();
        let per_group = ConvGeometry::new([input[0], input[1], input[2], 1], 1, window).unwrap();
        let (x, w, b) = (data(full.input_len()), data(9 * channels), data(channels));
        let mut out = vec![0.0; full.output_len()];
        let id = format!("{layer} {input:?} stride {stride}");
        group.throughput(Throughput::Elements(2 * (full.output_len() * 9) as u64));
        let e = GemmEpilogue {
            bias: Some(&b),
            rectifier: Rectifier::Relu,
            ..Default::default()
        };
        let rows = 0..full.batch * full.out_hw[0];
        group.bench_function(BenchmarkId::new("depthwise (direct NHWC)", &id), |bench| {
            bench.iter(|| depthwise::depthwise_conv2d_rows(black_box(&x), &full, &w, &e, rows.clone(), &mut out))
        });
        let ge = Epilogue {
            bias: Some(&b),
            residual: None,
            rectifier: Rectifier::Relu,
        };
        let mut ws = Vec::new();
        group.bench_function(BenchmarkId::new("conv2d_grouped (a GEMM per channel)", &id), |bench| {
            bench.iter(|| conv2d_grouped(black_box(&x), &per_group, channels, &w, &ge, &mut out, &mut ws))
        });
    }
    group.finish();
}

criterion_group!(benches, conv, depthwise_conv);
criterion_main!(benches);
