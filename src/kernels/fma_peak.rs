//! The core's measured FMA peak for each GEMM kernel's instruction set: a loop of independent
//! vector FMA chains (enough of them to cover the FMA latency), timed on the calling thread.
//! The number every GEMM efficiency in docs/performance.md is a fraction of.

use std::time::Instant;

use super::packed_gemm::GemmKernel;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// `iters` rounds of 12 independent 8-lane FMA chains.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn ymm(iters: u64) -> f32 {
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

    /// `iters` rounds of 24 independent 16-lane FMA chains.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn zmm(iters: u64) -> f32 {
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

/// `iters` rounds of 24 independent 4-lane FMA chains (`fmla`).
#[cfg(target_arch = "aarch64")]
fn neon(iters: u64) -> f32 {
    use std::arch::aarch64::*;
    // SAFETY: NEON is part of the aarch64 baseline; the intrinsics touch registers only, and
    // the final store writes a local array of four floats.
    unsafe {
        let mut acc = [vdupq_n_f32(0.0); 24];
        let (a, b) = (vdupq_n_f32(0.999_999), vdupq_n_f32(1e-7));
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = vfmaq_f32(b, *v, a);
            }
        }
        let sum = acc.iter().fold(vdupq_n_f32(0.0), |s, &v| vaddq_f32(s, v));
        let mut out = [0.0f32; 4];
        vst1q_f32(out.as_mut_ptr(), sum);
        out[0]
    }
}

/// The fastest of seven timings of `f(iters)`, as GFLOP/s given `flops_per_iter` (a peak: on
/// a shared machine other work only ever slows a timing down).
fn measure(flops_per_iter: f64, f: impl Fn(u64) -> f32) -> f64 {
    let iters = 10_000_000u64;
    (0..7)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f(std::hint::black_box(iters)));
            flops_per_iter * iters as f64 / t.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

/// The single-core FMA peak (GFLOP/s, the fastest of seven timings of 10^7 rounds) of the
/// instructions `kernel` runs on: 512-bit FMAs for [`GemmKernel::Avx512`], 256-bit for
/// [`GemmKernel::Avx2Fma`], 128-bit `fmla` for [`GemmKernel::Neon`]; for
/// [`GemmKernel::Portable`], whose products `matrixmultiply` computes with the widest FMA it
/// finds, the fastest of those this CPU has. `None` when the CPU cannot run `kernel`, or when
/// it has no vector FMA at all (a portable kernel on such a CPU has no FMA peak to measure).
pub fn fma_peak_gflops(kernel: GemmKernel) -> Option<f64> {
    if !kernel.is_available() {
        return None;
    }
    match kernel {
        // SAFETY: the kernel's features were detected (`is_available`).
        #[cfg(target_arch = "x86_64")]
        GemmKernel::Avx512 => Some(measure(24.0 * 16.0 * 2.0, |n| unsafe { x86::zmm(n) })),
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        GemmKernel::Avx2Fma => Some(measure(12.0 * 8.0 * 2.0, |n| unsafe { x86::ymm(n) })),
        #[cfg(target_arch = "aarch64")]
        GemmKernel::Neon => Some(measure(24.0 * 4.0 * 2.0, neon)),
        GemmKernel::Portable => GemmKernel::available()
            .into_iter()
            .filter(|&k| k != GemmKernel::Portable)
            .filter_map(fma_peak_gflops)
            .reduce(f64::max),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}
