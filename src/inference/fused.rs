//! Inverted residual blocks (MobileNetV2's: a 1x1 expansion, a depthwise convolution, a 1x1
//! projection) run as one op, band by band of output rows, so the expanded activations (six
//! times the block's channels, at the block's full resolution) never leave the cache.
//!
//! Each thread takes a contiguous share of the output rows and walks it in chunks: it expands
//! the input rows the chunk's depthwise windows cover into a band buffer (keeping the rows the
//! previous chunk's windows share with it, so only the first chunk of a share recomputes a
//! halo), runs the depthwise convolution on the band into a chunk buffer, and projects the
//! chunk straight into the output, through each convolution's own fused epilogue. Every output
//! element is the same sequence of operations as when the three convolutions run one after the
//! other over whole tensors, so the results are those of the unfused ops, for every thread
//! count.
//!
//! Only blocks whose depthwise input is not small (see [`FUSE_MIN_BYTES`]) are fused: on
//! smaller ones the whole tensors already stay in cache, and their few rows split over threads
//! worse than each GEMM's output channels do.

use std::ops::Range;

use super::exec::{ConvOp, ConvWeights, Ctx, Op};
use super::pool::{parallel, share, SendPtr};
use crate::error::{Error, Result};
use crate::kernels::packed_gemm::{gemm_packed, gemm_packed_raw, GemmEpilogue, PackedB};
use crate::kernels::{self, ConvGeometry, Padding2d};

use super::aligned::AlignedBuf;

/// Per-image bytes of depthwise input from which a block is fused. On MobileNetV2 at 224 x 224
/// that is every block down to 14 x 14 (the 7 x 7 ones hold 188 KB): measured on a 2-core Zen 4
/// at batch 1 / 2 threads, fusing the 14 x 14 blocks too took the pass from 4.06 to 3.84 ms
/// (median of 8 alternating runs), while the 7 x 7 blocks ran slower fused (0.21 against 0.19
/// ms for `features/15`: their 7 output rows split over 2 threads worse than their channels).
pub(crate) const FUSE_MIN_BYTES: usize = 256 << 10;

/// Bytes of expanded input rows a thread holds for one chunk (the band buffer).
const BAND_BYTES: usize = 256 << 10;

/// Floats in one 64-byte line: the chunk buffer starts on one.
const LINE_FLOATS: usize = 16;

/// An inverted residual block's convolutions, run as one op.
pub(crate) struct FusedBlock {
    pub name: String,
    /// The 1x1 expansion (absent in a block of expansion factor 1).
    pub expand: Option<ConvOp>,
    pub depthwise: ConvOp,
    /// The 1x1 projection, with the block's residual add when it has one.
    pub project: ConvOp,
}

impl FusedBlock {
    /// The block's input value.
    pub fn x(&self) -> usize {
        self.expand.as_ref().map_or(self.depthwise.x, |e| e.x)
    }

    fn ops(&self) -> impl Iterator<Item = &ConvOp> {
        self.expand.iter().chain([&self.depthwise, &self.project])
    }

    /// The depthwise convolution's geometry over all its channels, for one image.
    fn depthwise_geometry(&self) -> ConvGeometry {
        let c = self.depthwise.geometry.in_channels * self.depthwise.groups;
        ConvGeometry {
            batch: 1,
            in_channels: c,
            out_channels: c,
            ..self.depthwise.geometry
        }
    }

    /// Input rows the depthwise windows of `n` consecutive output rows cover.
    fn band_rows(&self, n: usize) -> usize {
        let w = &self.depthwise.geometry.window;
        (n.max(1) - 1) * w.stride[0] + (w.kernel[0] - 1) * w.dilation[0] + 1
    }

    /// Output rows a chunk: as many as keep the band within [`BAND_BYTES`] (at least one).
    fn chunk_rows(&self) -> usize {
        let g = self.depthwise_geometry();
        let row_bytes = 4 * g.in_hw[1] * g.in_channels;
        (1..=g.out_hw[0])
            .rev()
            .find(|&n| self.band_rows(n) * row_bytes <= BAND_BYTES)
            .unwrap_or(1)
    }

    /// Floats of the band buffer (rounded to whole lines) and of the chunk buffer.
    fn buffer_lens(&self) -> (usize, usize) {
        let g = self.depthwise_geometry();
        let n = self.chunk_rows();
        let band = if self.expand.is_some() {
            (self.band_rows(n).min(g.in_hw[0]) * g.in_hw[1] * g.in_channels).next_multiple_of(LINE_FLOATS)
        } else {
            0
        };
        (band, n * g.out_hw[1] * g.in_channels)
    }

    pub fn weight_len(&self) -> usize {
        self.ops().map(|c| Op::conv_weight_len(&c.weights)).sum()
    }

    /// Scratch floats a thread needs.
    pub fn workspace_len(&self) -> usize {
        let (band, chunk) = self.buffer_lens();
        band + chunk
    }
}

/// The packed operand of a 1x1 convolution.
fn pointwise_weights(c: &ConvOp) -> Result<&PackedB> {
    match &c.weights {
        ConvWeights::Gemm(b) => Ok(b),
        _ => Err(Error::shape(&c.name, "a 1x1 convolution's packed kernel", "another kind of kernel")),
    }
}

fn epilogue(c: &ConvOp) -> GemmEpilogue<'_> {
    GemmEpilogue {
        scale: c.scale.as_deref(),
        bias: Some(&c.bias),
        residual: None,
        rectifier: c.rectifier,
    }
}

/// Runs the block over the batch: output rows split over the threads, each share in chunks.
pub(crate) fn run(f: &FusedBlock, ctx: &Ctx<'_>, bufs: &mut [AlignedBuf]) -> Result<()> {
    let v = |i: usize| &ctx.values[i];
    let g = f.depthwise_geometry();
    let ([ih, iw], [oh, ow], hidden) = (g.in_hw, g.out_hw, g.in_channels);
    let (cin, cout) = (
        f.expand.as_ref().map_or(hidden, |e| e.geometry.in_channels),
        f.project.geometry.out_channels,
    );
    let (xs, ys) = (v(f.x()).slot, v(f.project.y).slot);
    let (x, res, y) = super::exec::split(bufs, xs, f.project.residual.map_or(xs, |r| v(r).slot), ys);
    let n = ctx.batch;
    let (input_len, output_len) = (n * ih * iw * cin, n * oh * ow * cout);
    if x.len() < input_len || y.len() < output_len || (f.project.residual.is_some() && res.len() < output_len) {
        return Err(Error::shape(
            &f.name,
            format!("an input of {input_len} floats and an output of {output_len}"),
            format!("{} and {}", x.len(), y.len()),
        ));
    }
    let x = &x[..input_len];
    let expand = match &f.expand {
        Some(e) => Some((pointwise_weights(e)?, epilogue(e))),
        None => None,
    };
    let dw_kernel = match &f.depthwise.weights {
        ConvWeights::Depthwise(k) => k,
        _ => return Err(Error::shape(&f.name, "a depthwise kernel", "another kind of kernel")),
    };
    let dw_epilogue = epilogue(&f.depthwise);
    let project = pointwise_weights(&f.project)?;
    let project_epilogue = GemmEpilogue {
        residual: f.project.residual.map(|_| &res[..output_len]),
        ..epilogue(&f.project)
    };
    let out = SendPtr(y.as_mut_ptr());
    let (band_len, chunk_len) = f.buffer_lens();
    let chunk_rows = f.chunk_rows();
    let threads = ctx.pool.threads();
    parallel(ctx.pool, &|t| {
        let rows = share(n * oh, t, threads);
        if rows.is_empty() {
            return Ok(());
        }
        let mut ws = ctx.workspaces[t].lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let floats = ws
            .floats
            .get_mut(..band_len + chunk_len)
            .ok_or_else(|| Error::shape(&f.name, format!("a workspace of {} floats", band_len + chunk_len), "a smaller one"))?;
        let (band, chunk) = floats.split_at_mut(band_len);
        // Input rows of the current image held in `band`.
        let mut held: Option<(usize, Range<usize>)> = None;
        let mut r = rows.start;
        while r < rows.end {
            let (img, o0) = (r / oh, r % oh);
            let o1 = (o0 + chunk_rows).min(oh).min(o0 + rows.end - r);
            let need = input_rows(&g, o0..o1);
            let image = &x[img * ih * iw * cin..(img + 1) * ih * iw * cin];
            let input: &[f32] = match expand {
                Some((b, ref e)) => {
                    let keep = match &held {
                        Some((i, h)) if *i == img && h.start <= need.start && need.start < h.end => need.start..h.end.min(need.end),
                        _ => need.start..need.start,
                    };
                    let row_len = iw * hidden;
                    if !keep.is_empty() {
                        let from = (keep.start - held.as_ref().map_or(0, |h| h.1.start)) * row_len;
                        band.copy_within(from..from + keep.len() * row_len, 0);
                    }
                    let fresh = keep.end..need.end;
                    let at = keep.len() * row_len;
                    let dst = band.get_mut(at..at + fresh.len() * row_len).ok_or_else(|| {
                        Error::shape(
                            &f.name,
                            format!("a band of {} floats", at + fresh.len() * row_len),
                            format!("{band_len}"),
                        )
                    })?;
                    if !fresh.is_empty() {
                        gemm_packed(
                            &image[fresh.start * iw * cin..],
                            cin,
                            b,
                            dst,
                            hidden,
                            0..fresh.len() * iw,
                            0..b.panels(),
                            e,
                        )?;
                    }
                    held = Some((img, need.clone()));
                    &band[..need.len() * row_len]
                }
                None => &image[need.start * iw * hidden..need.end * iw * hidden],
            };
            let band_g = band_geometry(&g, o0..o1, need.clone());
            let dw_out = chunk.get_mut(..(o1 - o0) * ow * hidden).ok_or_else(|| {
                Error::shape(
                    &f.name,
                    format!("a chunk of {} floats", (o1 - o0) * ow * hidden),
                    format!("{chunk_len}"),
                )
            })?;
            kernels::depthwise::depthwise_conv2d_rows(input, &band_g, dw_kernel, &dw_epilogue, 0..o1 - o0, dw_out)?;
            let pixels = (img * oh + o0) * ow..(img * oh + o1) * ow;
            // SAFETY: `y` holds `output_len` floats (checked above), and this thread alone
            // writes these output rows (its share of the rows).
            unsafe {
                gemm_packed_raw(
                    dw_out,
                    hidden,
                    pixels.start,
                    project,
                    out.get(),
                    output_len,
                    cout,
                    pixels,
                    0..project.panels(),
                    &project_epilogue,
                )?
            };
            r += o1 - o0;
        }
        Ok(())
    })
}

/// The input rows (clipped to the image) the depthwise windows of output rows `out` cover.
fn input_rows(g: &ConvGeometry, out: Range<usize>) -> Range<usize> {
    let w = &g.window;
    let reach = (w.kernel[0] - 1) * w.dilation[0] + 1;
    let first = (out.start * w.stride[0]).saturating_sub(g.pad.top).min(g.in_hw[0]);
    let end = ((out.end - 1) * w.stride[0] + reach).saturating_sub(g.pad.top).min(g.in_hw[0]);
    first..end.max(first)
}

/// The geometry of a chunk: output rows `out` of `g` computed from input rows `rows` alone
/// (the band), the rows above it standing in as padding exactly where `g` pads.
fn band_geometry(g: &ConvGeometry, out: Range<usize>, rows: Range<usize>) -> ConvGeometry {
    let w = &g.window;
    // Output row `out.start + j` reads input row `(out.start + j) * stride - pad.top + tap`,
    // band row `j * stride - top + tap`.
    // (Rows wholly in the padding below the input read no band row: any `top` will do.)
    let top = if rows.is_empty() {
        0
    } else {
        g.pad.top + rows.start - out.start * w.stride[0]
    };
    let covered = (out.len() - 1) * w.stride[0] + (w.kernel[0] - 1) * w.dilation[0] + 1;
    ConvGeometry {
        batch: 1,
        in_hw: [rows.len(), g.in_hw[1]],
        pad: Padding2d {
            top,
            bottom: covered.saturating_sub(top + rows.len()),
            ..g.pad
        },
        out_hw: [out.len(), g.out_hw[1]],
        ..*g
    }
}

/// The last op, taken off when it is a convolution.
fn pop_conv(ops: &mut Vec<Op<'_>>) -> Option<ConvOp> {
    match ops.pop() {
        Some(Op::Conv(c)) => Some(c),
        Some(other) => {
            ops.push(other);
            None
        }
        None => None,
    }
}

/// The convolution, when it is a dense 1x1 one (stride 1, no padding).
fn is_pointwise<'a>(op: &'a Op<'_>) -> Option<&'a ConvOp> {
    match op {
        Op::Conv(c) if matches!(c.weights, ConvWeights::Gemm(_)) && c.is_pointwise() && c.groups == 1 => Some(c),
        _ => None,
    }
}

fn is_depthwise<'a>(op: &'a Op<'_>) -> Option<&'a ConvOp> {
    match op {
        Op::Conv(c) if matches!(c.weights, ConvWeights::Depthwise(_)) && c.residual.is_none() => Some(c),
        _ => None,
    }
}

/// Replaces each run of ops `[expand,] depthwise, project` that forms an inverted residual
/// block (each op reading only the one before, whose value nothing else reads or keeps) with
/// one [`FusedBlock`], where the depthwise input is at least [`FUSE_MIN_BYTES`] an image.
/// `roots` maps each value to its storage root; `kept` are roots that must be stored.
pub(crate) fn fuse_inverted_residuals<'m>(ops: Vec<Op<'m>>, roots: &[usize], kept: &[usize]) -> Vec<Op<'m>> {
    let mut readers = vec![0usize; roots.len()];
    for op in &ops {
        for v in op.inputs() {
            readers[roots[v]] += 1;
        }
    }
    // A value only the next op reads, stored nowhere else.
    let private = |v: usize| roots[v] == v && readers[v] == 1 && !kept.contains(&v);
    let mut out: Vec<Op<'m>> = Vec::with_capacity(ops.len());
    for op in ops {
        out.push(op);
        // Try to close a block ending at the op just pushed.
        let k = out.len();
        let Some(project) = out.last().and_then(is_pointwise) else {
            continue;
        };
        let Some(dw) = k.checked_sub(2).and_then(|i| is_depthwise(&out[i])) else {
            continue;
        };
        if dw.y != project.x || !private(dw.y) {
            continue;
        }
        let dw_input = 4 * dw.geometry.in_hw[0] * dw.geometry.in_hw[1] * dw.geometry.in_channels * dw.groups;
        if dw_input < FUSE_MIN_BYTES {
            continue;
        }
        let with_expand = k
            .checked_sub(3)
            .and_then(|i| is_pointwise(&out[i]))
            .is_some_and(|e| e.residual.is_none() && e.y == dw.x && private(e.y));
        // (Each pop below takes a convolution checked above.)
        let (Some(project), Some(depthwise)) = (pop_conv(&mut out), pop_conv(&mut out)) else {
            continue;
        };
        let expand = if with_expand { pop_conv(&mut out) } else { None };
        let names: Vec<&str> = expand.iter().chain([&depthwise, &project]).map(|c| c.name.as_str()).collect();
        out.push(Op::Fused(Box::new(FusedBlock {
            name: block_name(&names),
            expand,
            depthwise,
            project,
        })));
    }
    out
}

/// The longest common prefix of the ops' names, cut at a separator (`features/2/conv`,
/// `block_1`), then the kinds fused: `features/2/conv [expand, depthwise, project]`.
fn block_name(names: &[&str]) -> String {
    let first = names[0];
    let mut common = names.iter().fold(first.len(), |n, s| {
        first.bytes().zip(s.bytes()).take(n).take_while(|(a, b)| a == b).count()
    });
    while common > 0 && !first.is_char_boundary(common) {
        common -= 1;
    }
    let prefix = first[..common].trim_end_matches(|c: char| c != '/' && c != '_');
    let prefix = prefix.trim_end_matches(['/', '_']);
    let kinds = if names.len() == 3 {
        "expand, depthwise, project"
    } else {
        "depthwise, project"
    };
    if prefix.is_empty() {
        format!("{} [{kinds}]", names.join(" + "))
    } else {
        format!("{prefix} [{kinds}]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Window2d;

    fn geometry(h: usize, k: usize, stride: usize, pad: usize) -> ConvGeometry {
        let window = Window2d::new([k, k], [stride, stride]);
        let mut g = ConvGeometry::new([1, h, h, 3], 3, window).unwrap();
        g.pad = Padding2d::uniform(pad);
        let out = (h + 2 * pad - k) / stride + 1;
        g.out_hw = [out, out];
        g
    }

    #[test]
    fn chunks_read_the_rows_their_windows_cover() {
        let g = geometry(9, 3, 1, 1);
        assert_eq!(input_rows(&g, 0..1), 0..2);
        assert_eq!(input_rows(&g, 0..3), 0..4);
        assert_eq!(input_rows(&g, 3..6), 2..7);
        assert_eq!(input_rows(&g, 8..9), 7..9);
        let b = band_geometry(&g, 3..6, 2..7);
        assert_eq!((b.pad.top, b.in_hw[0], b.out_hw[0]), (0, 5, 3));
        let b = band_geometry(&g, 0..3, 0..4);
        assert_eq!((b.pad.top, b.pad.bottom), (1, 0));
        // Stride 2 with padding 1 (MobileNetV2's downsampling depthwise convolutions).
        let g = geometry(10, 3, 2, 1);
        assert_eq!(g.out_hw[0], 5);
        assert_eq!(input_rows(&g, 0..2), 0..4);
        assert_eq!(input_rows(&g, 2..5), 3..10);
        let b = band_geometry(&g, 2..5, 3..10);
        assert_eq!((b.pad.top, b.in_hw[0]), (0, 7));
        // Output rows wholly in the bottom padding read no input row.
        let mut g = geometry(4, 1, 1, 0);
        g.pad = Padding2d::new(2, 3, 0, 0);
        g.out_hw = [9, 4];
        assert_eq!(input_rows(&g, 7..9), 4..4);
        assert_eq!(input_rows(&g, 5..9), 3..4);
        assert_eq!(band_geometry(&g, 5..9, 3..4).pad.top, 0);
    }

    #[test]
    fn block_names_keep_the_common_path() {
        assert_eq!(
            block_name(&["features/2/conv/0/0", "features/2/conv/1/0", "features/2/conv/2"]),
            "features/2/conv [expand, depthwise, project]"
        );
        assert_eq!(
            block_name(&["block_1_expand", "block_1_depthwise", "block_1_project"]),
            "block_1 [expand, depthwise, project]"
        );
        assert_eq!(block_name(&["a", "b"]), "a + b [depthwise, project]");
    }
}
