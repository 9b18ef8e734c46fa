//! The machine's FMA peak, single core: a loop of independent vector FMA chains (enough to
//! cover the FMA latency), 256-bit (AVX2 + FMA) and, where present, 512-bit (AVX-512F).
//! The number docs/performance.md quotes next to every timing.
//!
//! cargo run --release --example fma_peak

use std::io::Write;
use std::time::Instant;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// GFLOP/s of `iters` rounds of 12 independent 8-lane FMA chains.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn ymm(iters: u64) -> f32 {
        let mut acc = [_mm256_set1_ps(0.0); 12];
        let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm256_fmadd_ps(*v, a, b);
            }
        }
        let mut out = [0.0f32; 8];
        let sum = acc.iter().fold(_mm256_set1_ps(0.0), |s, &v| _mm256_add_ps(s, v));
        _mm256_storeu_ps(out.as_mut_ptr(), sum);
        out[0]
    }

    /// GFLOP/s of `iters` rounds of 24 independent 16-lane FMA chains.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn zmm(iters: u64) -> f32 {
        let mut acc = [_mm512_set1_ps(0.0); 24];
        let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm512_fmadd_ps(*v, a, b);
            }
        }
        _mm512_reduce_add_ps(acc.iter().fold(_mm512_set1_ps(0.0), |s, &v| _mm512_add_ps(s, v)))
    }
}

/// Median of five timings of `f(iters)`, as GFLOP/s given `flops_per_iter`.
fn measure(flops_per_iter: f64, f: impl Fn(u64) -> f32) -> f64 {
    let iters = 20_000_000u64;
    let mut rates: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f(iters));
            flops_per_iter * iters as f64 / t.elapsed().as_secs_f64() / 1e9
        })
        .collect();
    rates.sort_by(|a, b| a.total_cmp(b));
    rates[2]
}

fn main() {
    // (A closed pipe ends the output quietly instead of panicking in `println!`.)
    let mut out = std::io::stdout().lock();
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the features were detected.
            let g = measure(12.0 * 8.0 * 2.0, |n| unsafe { x86::ymm(n) });
            let _ = writeln!(
                out,
                "{}",
                serde_json::json!({"vector": "ymm (AVX2 + FMA)", "gflops_per_core": (g * 10.0).round() / 10.0})
            );
        }
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was detected.
            let g = measure(24.0 * 16.0 * 2.0, |n| unsafe { x86::zmm(n) });
            let _ = writeln!(
                out,
                "{}",
                serde_json::json!({"vector": "zmm (AVX-512F)", "gflops_per_core": (g * 10.0).round() / 10.0})
            );
        }
    }
    let kernel = format!("{:?}", convnet::kernels::packed_gemm::gemm_kernel());
    let _ = writeln!(out, "{}", serde_json::json!({ "gemm_kernel": kernel }));
}
