//! What the peer benchmarks (`tract/`, `candle/`) share, included by each with `#[path]`: the
//! peak RSS, and the `.npy` files `export_onnx.py` writes.

use anyhow::{anyhow, ensure, Result};

/// Peak resident set size of this process (`VmHWM`), MiB.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// A little-endian float32, C-order `.npy` file (what `export_onnx.py` writes): shape, data.
pub fn read_npy(path: &str) -> Result<(Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path)?;
    ensure!(bytes.len() > 10 && bytes.starts_with(b"\x93NUMPY"), "{path}: not an .npy file");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len])?;
    ensure!(
        header.contains("'<f4'") && header.contains("'fortran_order': False"),
        "{path}: not little-endian C-order float32"
    );
    let shape = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| anyhow!("{path}: no shape"))?
        .split(',')
        .filter(|d| !d.trim().is_empty())
        .map(|d| d.trim().parse::<usize>())
        .collect::<Result<Vec<_>, _>>()?;
    let data: Vec<f32> = bytes[10 + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    ensure!(
        data.len() == shape.iter().product::<usize>(),
        "{path}: {} values for shape {shape:?}",
        data.len()
    );
    Ok((shape, data))
}
