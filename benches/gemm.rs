//! GEMM throughput at the shapes ResNet50 (the seed's Keras layout, batch 1, NHWC) runs.
//! `cargo bench --bench gemm`; throughput is reported in FLOP (2 * M * K * N).

use std::hint::black_box;

use convnet::kernels::{reference, sgemm_row_major};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// (layer, M = output pixels, K = kh * kw * in_channels, N = filters)
const SHAPES: &[(&str, usize, usize, usize)] = &[
    ("conv1", 12544, 147, 64),
    ("res2a_branch2a", 3025, 64, 64),
    ("res2a_branch2b", 3025, 576, 64),
    ("res2a_branch2c", 3025, 64, 256),
    ("res3a_branch2a", 784, 256, 128),
    ("res3a_branch2b", 784, 1152, 128),
    ("res4a_branch2b", 196, 2304, 256),
    ("res5a_branch2b", 49, 4608, 512),
    ("res5a_branch2c", 49, 512, 2048),
    ("fc1000", 1, 2048, 1000),
];

fn data(len: usize) -> Vec<f32> {
    (0..len).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect()
}

fn gemm(c: &mut Criterion) {
    let mut group = c.benchmark_group("gemm");
    group.sample_size(20);
    for &(layer, m, k, n) in SHAPES {
        let (a, b) = (data(m * k), data(k * n));
        let mut out = vec![0.0; m * n];
        let id = format!("{layer} M={m} K={k} N={n}");
        group.throughput(Throughput::Elements(2 * (m * k * n) as u64));
        group.bench_function(BenchmarkId::new("convnet::kernels::sgemm", &id), |bench| {
            bench.iter(|| sgemm_row_major(m, k, n, black_box(&a), k, black_box(&b), n, 0.0, &mut out, n))
        });
        // The triple loop is only worth timing on the small shapes.
        if m * k * n <= 50_000_000 {
            group.bench_function(BenchmarkId::new("reference::gemm", &id), |bench| {
                bench.iter(|| reference::gemm(m, k, n, black_box(&a), black_box(&b), &mut out))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, gemm);
criterion_main!(benches);
