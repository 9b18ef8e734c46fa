//! The machine's FMA peak, single core, for each GEMM kernel this CPU can run (a loop of
//! independent vector FMA chains: [`convnet::kernels::fma_peak`]), and the kernel the fast
//! executor selected. The numbers docs/performance.md quotes next to every efficiency.
//!
//! cargo run --release --example fma_peak

use std::io::Write;

use convnet::kernels::fma_peak::fma_peak_gflops;
use convnet::kernels::packed_gemm::{gemm_kernel, GemmKernel};

fn main() {
    // (A closed pipe ends the output quietly instead of panicking in `println!`.)
    let mut out = std::io::stdout().lock();
    for kernel in GemmKernel::available() {
        if let Some(g) = fma_peak_gflops(kernel) {
            let line = serde_json::json!({"kernel": kernel.name(), "fma_peak_gflops_per_core": (g * 10.0).round() / 10.0});
            let _ = writeln!(out, "{line}");
        }
    }
    let _ = writeln!(out, "{}", serde_json::json!({ "gemm_kernel": gemm_kernel().name() }));
}
