//! Single-thread GFLOP/s of the packed GEMM on every ResNet50 shape, for each micro-kernel this
//! CPU can run, beside `matrixmultiply` (the layer path's GEMM) on the same shape, and each as a
//! fraction of its instruction set's measured FMA peak ([`convnet::kernels::fma_peak`]).
//!
//! ```text
//! cargo run --release --example bench_gemm -- [--kernel NAME]... [--reps R] [--json]
//! ```
//!
//! Prints a markdown table (or, with `--json`, one JSON line per shape and kernel). Each number
//! is the median of `R` timed repetitions (each long enough to take about 20 ms), after one
//! untimed repetition. `matrixmultiply` runs on one thread (`MATMUL_NUM_THREADS=1`).
//!
//! `--cold` times single calls instead, each after writing a 64 MiB buffer so that `A`, `B`
//! and `C` start outside the caches: the case of a network at batch 1 whose weights do not fit
//! in them (ResNet50's last stage streams its weights from memory).

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use convnet::kernels::fma_peak::fma_peak_gflops;
use convnet::kernels::packed_gemm::{blocking, gemm_packed_with, CacheSizes, GemmEpilogue, GemmKernel, PackedB};
use convnet::kernels::sgemm_row_major;

#[path = "../benches/common/resnet50_gemm_shapes.rs"]
mod shapes;

/// Times the packed GEMM's kernels on ResNet50's shapes.
#[derive(Parser)]
#[command(name = "bench_gemm")]
struct Args {
    /// Only these kernels (avx512, avx2, neon, portable); default: every one the CPU has.
    #[arg(long)]
    kernel: Vec<String>,
    /// Timed repetitions per shape (the median is reported).
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u64).range(1..))]
    reps: u64,
    /// One JSON line per (shape, kernel) instead of the table.
    #[arg(long)]
    json: bool,
    /// Time each call with the caches flushed first (see the module docs).
    #[arg(long)]
    cold: bool,
}

fn data(len: usize, salt: usize) -> Vec<f32> {
    (0..len).map(|i| ((i * 7919 + salt) % 1000) as f32 / 1000.0 - 0.5).collect()
}

/// Median GFLOP/s of `f`, which does `flops` each call: over `reps` runs of enough calls to
/// take about 20 ms, or with `cold` (a buffer to write between calls) over `reps` single calls,
/// each after the buffer is written.
fn rate(flops: f64, reps: u64, cold: Option<&mut [u8]>, mut f: impl FnMut()) -> f64 {
    if let Some(evict) = cold {
        f();
        let mut rates: Vec<f64> = (0..reps)
            .map(|i| {
                evict.fill(i as u8);
                let t = Instant::now();
                f();
                flops / t.elapsed().as_secs_f64() / 1e9
            })
            .collect();
        rates.sort_by(|a, b| a.total_cmp(b));
        return rates[rates.len() / 2];
    }
    f();
    let t = Instant::now();
    f();
    let once = t.elapsed().as_secs_f64().max(1e-7);
    let calls = ((0.02 / once).ceil() as usize).max(1);
    let mut rates: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..calls {
                f();
            }
            flops * calls as f64 / t.elapsed().as_secs_f64() / 1e9
        })
        .collect();
    rates.sort_by(|a, b| a.total_cmp(b));
    rates[rates.len() / 2]
}

fn main() -> ExitCode {
    let args = Args::parse();
    // matrixmultiply reads this once, at its first GEMM: one thread, like the kernels timed.
    // SAFETY (of the environment write): no other thread exists yet.
    std::env::set_var("MATMUL_NUM_THREADS", "1");
    let available = GemmKernel::available();
    let kernels: Vec<GemmKernel> = if args.kernel.is_empty() {
        available.clone()
    } else {
        let mut chosen = Vec::new();
        for name in &args.kernel {
            match available.iter().find(|k| k.name() == name) {
                Some(&k) => chosen.push(k),
                None => {
                    let names: Vec<&str> = available.iter().map(|k| k.name()).collect();
                    eprintln!("error: this CPU cannot run a kernel named {name:?}; it has {}", names.join(", "));
                    return ExitCode::FAILURE;
                }
            }
        }
        chosen
    };
    let mut evict = if args.cold { vec![0u8; 64 << 20] } else { Vec::new() };
    let peaks: Vec<(GemmKernel, Option<f64>)> = kernels.iter().map(|&k| (k, fma_peak_gflops(k))).collect();
    let mut out = std::io::stdout().lock();
    if !args.json {
        let _ = writeln!(out, "single thread; FMA peak per core (GFLOP/s):");
        for (k, p) in &peaks {
            let p = p.map_or("none".to_string(), |p| format!("{p:.1}"));
            let _ = writeln!(out, "- {}: {p}", k.name());
        }
        let (caches, blocks) = (CacheSizes::detect(), blocking());
        let _ = writeln!(
            out,
            "\n{}blocking from L1d {} KiB, L2 {} KiB: kc {}, B multiplied rows-outermost up to {} KiB\n",
            if args.cold { "caches flushed before each call; " } else { "" },
            caches.l1d >> 10,
            caches.l2 >> 10,
            blocks.kc,
            blocks.rows_outer_max_b_bytes >> 10
        );
        let mut header = "| layer | M | K | N | matrixmultiply |".to_string();
        let mut rule = "|---|---:|---:|---:|---:|".to_string();
        for (k, _) in &peaks {
            header += &format!(" {} GFLOP/s (% of peak) |", k.name());
            rule += "---:|";
        }
        let _ = writeln!(out, "{header}\n{rule}");
    }
    for s in shapes::RESNET50_GEMMS {
        let (a, b) = (data(s.m * s.k, 1), data(s.k * s.n, 2));
        let packs: Result<Vec<PackedB>, _> = kernels.iter().map(|&k| PackedB::pack_for(k, &b, s.k, s.n, s.n)).collect();
        let packs = match packs {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut c = vec![0.0f32; s.m * s.n];
        let flops = 2.0 * (s.m * s.k * s.n) as f64;
        let mm = rate(flops, args.reps, args.cold.then_some(&mut evict[..]), || {
            let _ = sgemm_row_major(s.m, s.k, s.n, &a, s.k, &b, s.n, 0.0, &mut c, s.n);
        });
        let mut cells = Vec::new();
        for (&(k, peak), packed) in peaks.iter().zip(&packs) {
            let mut failed = None;
            let g = rate(flops, args.reps, args.cold.then_some(&mut evict[..]), || {
                if let Err(e) = gemm_packed_with(
                    k,
                    &a,
                    s.k,
                    packed,
                    &mut c,
                    s.n,
                    0..s.m,
                    0..packed.panels(),
                    &GemmEpilogue::default(),
                ) {
                    failed = Some(e);
                }
            });
            if let Some(e) = failed {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
            let fraction = peak.map(|p| g / p);
            if args.json {
                let line = serde_json::json!({
                    "layer": s.layer, "m": s.m, "k": s.k, "n": s.n, "pointwise": s.pointwise,
                    "kernel": k.name(), "gflops": (g * 10.0).round() / 10.0,
                    "fma_peak_gflops": peak.map(|p| (p * 10.0).round() / 10.0),
                    "fraction_of_peak": fraction.map(|f| (f * 1000.0).round() / 1000.0),
                    "matrixmultiply_gflops": (mm * 10.0).round() / 10.0,
                });
                let _ = writeln!(out, "{line}");
            }
            cells.push(match fraction {
                Some(f) => format!(" {g:.1} ({:.0}%) |", f * 100.0),
                None => format!(" {g:.1} |"),
            });
        }
        if !args.json {
            let _ = writeln!(out, "| {} | {} | {} | {} | {mm:.1} |{}", s.layer, s.m, s.k, s.n, cells.concat());
        }
    }
    ExitCode::SUCCESS
}
