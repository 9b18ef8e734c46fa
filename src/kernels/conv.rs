//! The 2-D convolution driver: picks a strategy for the geometry and runs it as GEMMs.

use super::gemm::sgemm_row_major;
use super::geometry::ConvGeometry;
use super::im2col::im2col_unchecked;
use super::rectifier::Rectifier;
use crate::error::{Error, Result};

/// Upper bound, in bytes, of the im2col tile a convolution materialises at once (unless a
/// single patch row is larger, see [`workspace_len`]).
pub const IM2COL_TILE_BYTES: usize = 2 << 20;

/// The fewest output pixels an im2col tile holds, so the GEMM keeps a useful `M`.
pub const IM2COL_MIN_TILE_ROWS: usize = 32;

/// How [`conv2d`] computes a given geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvStrategy {
    /// 1x1 kernel, stride 1, no padding: the NHWC input *is* the `(pixels, in_channels)`
    /// matrix, so the convolution is one GEMM with no copy.
    Pointwise,
    /// 1x1 kernel with a stride and no padding: gather the strided pixels into a tile, then GEMM.
    StridedPointwise,
    /// Anything else: im2col into bounded tiles, one GEMM per tile.
    Im2col,
}

impl ConvStrategy {
    /// The strategy [`conv2d`] uses for `g`.
    pub fn for_geometry(g: &ConvGeometry) -> Self {
        let pointwise = g.window.kernel == [1, 1] && g.pad.is_zero();
        match (pointwise, g.window.stride == [1, 1]) {
            (true, true) => ConvStrategy::Pointwise,
            (true, false) => ConvStrategy::StridedPointwise,
            (false, _) => ConvStrategy::Im2col,
        }
    }
}

/// What to do with each output element after the GEMM, while it is still in cache:
/// `out = act(conv + bias + residual)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    /// Per-output-channel bias (`out_channels` elements).
    pub bias: Option<&'a [f32]>,
    /// A tensor of the output's shape to add (a residual shortcut).
    pub residual: Option<&'a [f32]>,
    /// The rectifier applied last.
    pub rectifier: Rectifier,
}

impl Epilogue<'_> {
    fn is_identity(&self) -> bool {
        self.bias.is_none() && self.residual.is_none() && self.rectifier.is_identity()
    }

    /// Applies the epilogue to output rows `first..first + rows.len() / n` (n = channels).
    fn apply(&self, rows: &mut [f32], first_row: usize, n: usize) {
        if self.is_identity() {
            return;
        }
        let residual = self.residual.map(|r| &r[first_row * n..first_row * n + rows.len()]);
        for (i, row) in rows.chunks_exact_mut(n).enumerate() {
            if let Some(b) = self.bias {
                row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
            }
            if let Some(r) = residual {
                row.iter_mut().zip(&r[i * n..(i + 1) * n]).for_each(|(v, r)| *v += r);
            }
            if !self.rectifier.is_identity() {
                row.iter_mut().for_each(|v| *v = self.rectifier.apply(*v));
            }
        }
    }
}

/// Output pixels per im2col tile for `g`.
pub fn tile_rows(g: &ConvGeometry) -> usize {
    let by_budget = IM2COL_TILE_BYTES / (4 * g.patch_len().max(1));
    by_budget.max(IM2COL_MIN_TILE_ROWS).min(g.out_pixels().max(1))
}

/// Elements of scratch space [`conv2d`] needs for `g`: zero for [`ConvStrategy::Pointwise`],
/// else one tile of `tile_rows(g) * kh * kw * in_channels` floats, which is at most
/// `max(IM2COL_TILE_BYTES, IM2COL_MIN_TILE_ROWS * patch bytes)` whatever the image size.
pub fn workspace_len(g: &ConvGeometry) -> usize {
    match ConvStrategy::for_geometry(g) {
        ConvStrategy::Pointwise => 0,
        _ => tile_rows(g) * g.patch_len(),
    }
}

/// NHWC convolution: `output = epilogue(input * kernel)`.
///
/// - `input`: `g.input_len()` elements, NHWC.
/// - `kernel`: HWIO, `(kh, kw, in_channels, out_channels)`, Keras' layout.
/// - `output`: `g.output_len()` elements, NHWC; write-only (every element is written).
/// - `workspace`: grown to [`workspace_len`] if shorter, then reused; its contents are ignored.
pub fn conv2d(
    input: &[f32],
    g: &ConvGeometry,
    kernel: &[f32],
    epilogue: &Epilogue<'_>,
    output: &mut [f32],
    workspace: &mut Vec<f32>,
) -> Result<()> {
    conv2d_tiled(input, g, kernel, epilogue, output, workspace, tile_rows(g))
}

/// [`conv2d`] with an explicit im2col tile height (output pixels per GEMM), for tests and
/// tuning; `tile_rows` is clamped to `1..=out_pixels`. Tiles may span image boundaries.
pub fn conv2d_tiled(
    input: &[f32],
    g: &ConvGeometry,
    kernel: &[f32],
    epilogue: &Epilogue<'_>,
    output: &mut [f32],
    workspace: &mut Vec<f32>,
    tile_rows: usize,
) -> Result<()> {
    check_lengths(input, g, g.kernel_len(), kernel, epilogue, output)?;
    let (m, k, n) = (g.out_pixels(), g.patch_len(), g.out_channels);
    if m == 0 {
        return Ok(());
    }
    match ConvStrategy::for_geometry(g) {
        ConvStrategy::Pointwise => {
            sgemm_row_major(m, k, n, input, k, kernel, n, 0.0, output, n)?;
            epilogue.apply(output, 0, n);
        }
        ConvStrategy::StridedPointwise | ConvStrategy::Im2col => {
            let tile = tile_rows.clamp(1, m);
            if workspace.len() < tile * k {
                workspace.resize(tile * k, 0.0);
            }
            let mut first = 0;
            while first < m {
                let rows = tile.min(m - first);
                im2col_unchecked(input, g, first, rows, workspace);
                let out = &mut output[first * n..(first + rows) * n];
                sgemm_row_major(rows, k, n, workspace, k, kernel, n, 0.0, out, n)?;
                epilogue.apply(out, first, n);
                first += rows;
            }
        }
    }
    Ok(())
}

/// Grouped NHWC convolution: the input's `g.in_channels * groups` channels split into `groups`
/// consecutive groups, group `i` convolved (by [`conv2d`]) with its own `g.out_channels`
/// filters into output channels `i * g.out_channels ..`. `g` is one group's geometry; the
/// kernel is HWIO `(kh, kw, g.in_channels, groups * g.out_channels)` (Keras' grouped
/// `Conv2D` layout), the epilogue applies to the whole `groups * g.out_channels`-channel
/// output. With `groups == 1` this is [`conv2d`].
pub fn conv2d_grouped(
    input: &[f32],
    g: &ConvGeometry,
    groups: usize,
    kernel: &[f32],
    epilogue: &Epilogue<'_>,
    output: &mut [f32],
    workspace: &mut Vec<f32>,
) -> Result<()> {
    if groups <= 1 {
        return conv2d(input, g, kernel, epilogue, output, workspace);
    }
    let (cin, cout) = (g.in_channels, g.out_channels);
    let full = ConvGeometry {
        in_channels: cin * groups,
        out_channels: cout * groups,
        ..*g
    };
    let taps = g.window.kernel[0] * g.window.kernel[1];
    // One group's kernel has `taps * cin * cout` values; all groups' together `groups` times that.
    check_lengths(input, &full, g.kernel_len() * groups, kernel, epilogue, output)?;
    let (pixels_in, pixels_out) = (g.batch * g.in_hw[0] * g.in_hw[1], g.out_pixels());
    let mut x = vec![0.0; pixels_in * cin];
    let mut w = vec![0.0; taps * cin * cout];
    let mut y = vec![0.0; pixels_out * cout];
    for group in 0..groups {
        for (dst, src) in x.chunks_exact_mut(cin).zip(input.chunks_exact(cin * groups)) {
            dst.copy_from_slice(&src[group * cin..(group + 1) * cin]);
        }
        for (dst, src) in w.chunks_exact_mut(cout).zip(kernel.chunks_exact(cout * groups)) {
            dst.copy_from_slice(&src[group * cout..(group + 1) * cout]);
        }
        conv2d(&x, g, &w, &Epilogue::default(), &mut y, workspace)?;
        for (dst, src) in output.chunks_exact_mut(cout * groups).zip(y.chunks_exact(cout)) {
            dst[group * cout..(group + 1) * cout].copy_from_slice(src);
        }
    }
    epilogue.apply(output, 0, cout * groups);
    Ok(())
}

/// Checks every slice against `g`; `kernel_len` is the kernel's expected length.
fn check_lengths(input: &[f32], g: &ConvGeometry, kernel_len: usize, kernel: &[f32], e: &Epilogue<'_>, output: &[f32]) -> Result<()> {
    let checks = [
        ("input", g.input_len(), Some(input.len())),
        ("kernel", kernel_len, Some(kernel.len())),
        ("output", g.output_len(), Some(output.len())),
        ("bias", g.out_channels, e.bias.map(<[f32]>::len)),
        ("residual", g.output_len(), e.residual.map(<[f32]>::len)),
    ];
    for (what, want, got) in checks {
        if let Some(got) = got.filter(|&got| got != want) {
            return Err(Error::shape(
                "conv2d kernel",
                format!("{what} of {want} elements"),
                format!("{got}"),
            ));
        }
    }
    Ok(())
}
