//! Copies and zero fills of short runs (one pixel's channels, one row of a packed panel) as a
//! few fixed-size moves. `copy_from_slice` and `fill` of a length unknown at compile time call
//! `memmove` / `memset`, and for runs of 16 to 64 floats, gathered hundreds of thousands of
//! times a training step, those calls measured about a tenth of the step.
//!
//! A run of `n` floats with `m <= n <= 2m` is moved as two `m`-float moves that overlap (the
//! first `m`, the last `m`; four 16-float moves up to 64); longer runs go to `copy_from_slice`.

/// `dst.copy_from_slice(src)`, for short runs without a call. Panics as `copy_from_slice`
/// does when the lengths differ.
#[inline(always)]
pub(crate) fn copy(dst: &mut [f32], src: &[f32]) {
    let n = dst.len();
    assert_eq!(n, src.len(), "copy between runs of different lengths");
    // `M` floats at `at` (at most 16: longer fixed-size copies compile to `memcpy` calls).
    // `dst` and `src` cannot overlap (one is borrowed mutably), so the order is free.
    #[inline(always)]
    fn run<const M: usize>(dst: &mut [f32], src: &[f32], at: usize) {
        dst[at..at + M].copy_from_slice(&src[at..at + M]);
    }
    match n {
        0 => {}
        1..=3 => (0..n).for_each(|i| dst[i] = src[i]),
        4..=8 => [0, n - 4].into_iter().for_each(|at| run::<4>(dst, src, at)),
        9..=16 => [0, n - 8].into_iter().for_each(|at| run::<8>(dst, src, at)),
        17..=32 => [0, n - 16].into_iter().for_each(|at| run::<16>(dst, src, at)),
        33..=64 => [0, 16, n - 32, n - 16].into_iter().for_each(|at| run::<16>(dst, src, at)),
        _ => dst.copy_from_slice(src),
    }
}

/// `dst.fill(0.0)`, for short runs without a call.
#[inline(always)]
pub(crate) fn zero(dst: &mut [f32]) {
    #[inline(always)]
    fn run<const M: usize>(dst: &mut [f32], at: usize) {
        dst[at..at + M].copy_from_slice(&[0.0; M]);
    }
    let n = dst.len();
    match n {
        0 => {}
        1..=3 => (0..n).for_each(|i| dst[i] = 0.0),
        4..=8 => [0, n - 4].into_iter().for_each(|at| run::<4>(dst, at)),
        9..=16 => [0, n - 8].into_iter().for_each(|at| run::<8>(dst, at)),
        17..=32 => [0, n - 16].into_iter().for_each(|at| run::<16>(dst, at)),
        33..=64 => [0, 16, n - 32, n - 16].into_iter().for_each(|at| run::<16>(dst, at)),
        _ => dst.fill(0.0),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_short_length_copies_and_zeroes_exactly_its_run() {
        for n in 0..=80usize {
            let src: Vec<f32> = (0..n).map(|i| i as f32 + 1.0).collect();
            let mut dst = vec![-1.0f32; n + 2];
            super::copy(&mut dst[1..n + 1], &src);
            assert_eq!(dst[0], -1.0);
            assert_eq!(dst[n + 1], -1.0);
            assert_eq!(&dst[1..n + 1], &src[..]);
            super::zero(&mut dst[1..n + 1]);
            assert_eq!(dst[0], -1.0);
            assert_eq!(dst[n + 1], -1.0);
            assert!(dst[1..n + 1].iter().all(|&v| v == 0.0));
        }
    }
}
