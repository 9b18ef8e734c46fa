//! The safe GEMM wrapper: the only place in the crate that calls `matrixmultiply::sgemm`.

use ndarray::{ArrayView2, ArrayViewMut2, ShapeBuilder};

use crate::error::{Error, Result};

const LAYER: &str = "gemm";

/// `C <- alpha * A B + beta * C` on ndarray views of any strides (ndarray's
/// `general_mat_mul` contract, returning an error instead of panicking on a shape mismatch).
///
/// `A` is `m x k`, `B` is `k x n`, `C` is `m x n`. When `beta == 0`, `C` is never read, so it
/// may hold garbage (even NaN) on entry.
pub fn sgemm(alpha: f32, a: ArrayView2<'_, f32>, b: ArrayView2<'_, f32>, beta: f32, mut c: ArrayViewMut2<'_, f32>) -> Result<()> {
    let (m, k) = a.dim();
    let (k2, n) = b.dim();
    if k != k2 || c.dim() != (m, n) {
        return Err(Error::shape(
            LAYER,
            format!("A (m, k) x B (k, n) -> C (m, n) with A {:?}", a.dim()),
            format!("B {:?} and C {:?}", b.dim(), c.dim()),
        ));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        scale_c(beta, c.view_mut());
        return Ok(());
    }
    let (sa, sb, sc) = (a.strides(), b.strides(), c.strides());
    let (rsa, csa, rsb, csb, rsc, csc) = (sa[0], sa[1], sb[0], sb[1], sc[0], sc[1]);
    // SAFETY: the dimensions were checked above, and ndarray guarantees that every index
    // (i, j) within a view's dimensions, reached through its strides from `as_ptr()`, is in
    // bounds of that view. `c` is a unique mutable view, so it does not alias `a` or `b`.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.as_ptr(),
            rsa,
            csa,
            b.as_ptr(),
            rsb,
            csb,
            beta,
            c.as_mut_ptr(),
            rsc,
            csc,
        );
    }
    Ok(())
}

/// Row-major `C[m x n] <- A[m x k] B[k x n] + beta * C` on plain slices with leading
/// dimensions `lda`, `ldb`, `ldc` (elements between consecutive rows).
///
/// Every slice is checked to hold its whole matrix. With `beta == 0`, `C` is write-only.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_row_major(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) -> Result<()> {
    let a = view(a, m, k, lda, "A")?;
    let b = view(b, k, n, ldb, "B")?;
    let need = needed_len(m, n, ldc, "C")?;
    let c_len = c.len();
    if c_len < need {
        return Err(Error::shape(
            LAYER,
            format!("C ({m} x {n}, ld {ldc}) of at least {need} elements"),
            format!("{c_len} elements"),
        ));
    }
    let c = ArrayViewMut2::from_shape((m, n).strides((ldc, 1)), &mut c[..need])
        .map_err(|e| Error::shape(LAYER, format!("C of {m} x {n} with ld {ldc}"), e.to_string()))?;
    sgemm(1.0, a, b, beta, c)
}

fn needed_len(rows: usize, cols: usize, ld: usize, name: &str) -> Result<usize> {
    if rows == 0 || cols == 0 {
        return Ok(0);
    }
    if ld < cols {
        return Err(Error::shape(
            LAYER,
            format!("{name} leading dimension >= {cols} columns"),
            format!("{ld}"),
        ));
    }
    (rows - 1)
        .checked_mul(ld)
        .and_then(|v| v.checked_add(cols))
        .ok_or_else(|| Error::overflow(LAYER, format!("the extent of {name}")))
}

fn view<'a>(s: &'a [f32], rows: usize, cols: usize, ld: usize, name: &str) -> Result<ArrayView2<'a, f32>> {
    let need = needed_len(rows, cols, ld, name)?;
    if s.len() < need {
        return Err(Error::shape(
            LAYER,
            format!("{name} ({rows} x {cols}, ld {ld}) of at least {need} elements"),
            format!("{} elements", s.len()),
        ));
    }
    ArrayView2::from_shape((rows, cols).strides((ld.max(1), 1)), &s[..need])
        .map_err(|e| Error::shape(LAYER, format!("{name} of {rows} x {cols} with ld {ld}"), e.to_string()))
}

fn scale_c(beta: f32, mut c: ArrayViewMut2<'_, f32>) {
    if beta == 0.0 {
        c.fill(0.0);
    } else {
        c.mapv_inplace(|v| v * beta);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::reference;
    use ndarray::Array2;

    fn filled(m: usize, n: usize, seed: u32) -> Array2<f32> {
        Array2::from_shape_fn((m, n), |(i, j)| ((i * 31 + j * 17 + seed as usize) % 23) as f32 / 7.0 - 1.5)
    }

    #[test]
    fn matches_the_reference_around_tile_edges_with_a_nan_filled_output() {
        for m in [0, 1, 2, 5, 8, 9, 16, 17] {
            for k in [0, 1, 3, 8, 13] {
                for n in [0, 1, 4, 7, 8, 9, 33] {
                    let a = filled(m, k, 1);
                    let b = filled(k, n, 2);
                    let mut c = Array2::from_elem((m, n), f32::NAN);
                    sgemm(1.0, a.view(), b.view(), 0.0, c.view_mut()).unwrap();
                    let mut r = vec![0.0; m * n];
                    reference::gemm(m, k, n, a.as_slice().unwrap(), b.as_slice().unwrap(), &mut r);
                    for (x, y) in c.iter().zip(&r) {
                        assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "m={m} k={k} n={n}: {x} vs {y}");
                    }
                }
            }
        }
    }

    #[test]
    fn transposed_views_and_beta_accumulate() {
        let a = filled(7, 5, 3);
        let b = filled(5, 6, 4);
        let at = a.t().to_owned(); // (5, 7) stored; its transpose view is A again
        let mut c = Array2::from_elem((7, 6), 1.0f32);
        sgemm(2.0, at.t(), b.view(), 1.0, c.view_mut()).unwrap();
        let want = a.dot(&b) * 2.0 + 1.0;
        for (x, y) in c.iter().zip(want.iter()) {
            assert!((x - y).abs() < 1e-4);
        }
    }

    #[test]
    fn shape_mismatches_are_errors_not_panics() {
        let a = filled(3, 4, 0);
        let b = filled(5, 2, 0);
        let mut c = Array2::zeros((3, 2));
        assert!(matches!(
            sgemm(1.0, a.view(), b.view(), 0.0, c.view_mut()),
            Err(Error::Shape { .. })
        ));
        let mut short = vec![0.0; 5];
        let r = sgemm_row_major(3, 4, 2, a.as_slice().unwrap(), 4, &[0.0; 8], 2, 0.0, &mut short, 2);
        assert!(matches!(r, Err(Error::Shape { .. })));
        let r = sgemm_row_major(3, 4, 2, a.as_slice().unwrap(), 3, &[0.0; 8], 2, 0.0, &mut [0.0; 6], 2);
        assert!(matches!(r, Err(Error::Shape { .. })));
    }
}
