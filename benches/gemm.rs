//! GEMM throughput at the shapes ResNet50 (the seed's Keras layout, batch 1, NHWC) runs: the
//! packed GEMM on each micro-kernel this CPU has (the benchmark id names it: `packed/avx512`,
//! `packed/avx2`, `packed/neon`, `packed/portable`), `matrixmultiply` (the layer path's GEMM),
//! and the reference triple loop on the small shapes.
//! `cargo bench --bench gemm`; throughput is reported in FLOP (2 * M * K * N).
//! (`cargo run --release --example bench_gemm` prints the same comparison as one table, with
//! each kernel's fraction of its measured FMA peak.)

use std::hint::black_box;

use convnet::kernels::packed_gemm::{gemm_packed_with, GemmEpilogue, GemmKernel, PackedB};
use convnet::kernels::{reference, sgemm_row_major};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

#[path = "common/resnet50_gemm_shapes.rs"]
mod shapes;

fn data(len: usize) -> Vec<f32> {
    (0..len).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect()
}

fn gemm(c: &mut Criterion) {
    let mut group = c.benchmark_group("gemm");
    group.sample_size(20);
    for s in shapes::RESNET50_GEMMS {
        let (m, k, n) = (s.m, s.k, s.n);
        let (a, b) = (data(m * k), data(k * n));
        let mut out = vec![0.0; m * n];
        let id = format!("{} M={m} K={k} N={n}", s.layer);
        group.throughput(Throughput::Elements(2 * (m * k * n) as u64));
        for kernel in GemmKernel::available() {
            let Ok(packed) = PackedB::pack_for(kernel, &b, k, n, n) else {
                continue;
            };
            let e = GemmEpilogue::default();
            group.bench_function(BenchmarkId::new(format!("packed/{}", kernel.name()), &id), |bench| {
                bench.iter(|| gemm_packed_with(kernel, black_box(&a), k, &packed, &mut out, n, 0..m, 0..packed.panels(), &e))
            });
        }
        group.bench_function(BenchmarkId::new("matrixmultiply", &id), |bench| {
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
