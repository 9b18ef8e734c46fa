//! Convolution without im2col: the GEMM segments of a micro-tile of output pixels, read in
//! place from the NHWC input one kernel tap at a time (shared by the compiled executor and the
//! training kernels).

use std::ops::Range;

use super::geometry::ConvGeometry;
use super::packed_gemm::Segment;
use super::short_copy;

/// Sizes of the near-equal pieces `total` splits into with at most `max` per piece.
pub(crate) fn pieces(total: usize, max: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let n = total.div_ceil(max).max(1);
    let (base, extra) = (total / n, total % n);
    (0..n).scan(0, move |at, i| {
        let len = base + usize::from(i < extra);
        let r = *at..*at + len;
        *at += len;
        Some(r)
    })
}

/// The GEMM segments of one micro-tile (output pixels `cols` of output row `oy` of image
/// `img`): one per kernel tap, read in place when all its input pixels are inside the image,
/// gathered into `gathered` (zeros for the padding) when it straddles the border, and left out
/// when it lies wholly in the padding.
#[allow(clippy::too_many_arguments)]
pub(crate) fn tap_segments(
    g: &ConvGeometry,
    x: &[f32],
    img: usize,
    oy: usize,
    cols: &Range<usize>,
    gathered: &mut [f32],
    segments: &mut Vec<Segment>,
) {
    let ([ih, iw], [kh, kw]) = (g.in_hw, g.window.kernel);
    let ([sh, sw], [dh, dw], cin) = (g.window.stride, g.window.dilation, g.in_channels);
    let r = cols.len();
    segments.clear();
    let mut used = 0;
    for ky in 0..kh {
        let iy = (oy * sh + ky * dh) as isize - g.pad.top as isize;
        if iy < 0 || iy >= ih as isize {
            continue;
        }
        let line = (img * ih + iy as usize) * iw;
        for kx in 0..kw {
            let b_row = (ky * kw + kx) * cin;
            let ix0 = (cols.start * sw + kx * dw) as isize - g.pad.left as isize;
            let ix_last = ix0 + ((r - 1) * sw) as isize;
            if ix0 >= 0 && ix_last < iw as isize {
                segments.push(Segment {
                    a: (line + ix0 as usize) * cin,
                    lda: sw * cin,
                    b_row,
                    kc: cin,
                    gathered: false,
                });
            } else if ix_last >= 0 && ix0 < iw as isize {
                for rr in 0..r {
                    let ix = ix0 + (rr * sw) as isize;
                    let dst = &mut gathered[used + rr * cin..used + (rr + 1) * cin];
                    if ix >= 0 && ix < iw as isize {
                        short_copy::copy(dst, &x[(line + ix as usize) * cin..(line + ix as usize + 1) * cin]);
                    } else {
                        short_copy::zero(dst);
                    }
                }
                segments.push(Segment {
                    a: used,
                    lda: cin,
                    b_row,
                    kc: cin,
                    gathered: true,
                });
                used += r * cin;
            }
        }
    }
}
