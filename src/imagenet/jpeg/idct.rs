//! libjpeg-turbo's accurate integer inverse DCT (`jpeg_idct_islow`, `JDCT_ISLOW`, its default
//! and Pillow's), with dequantisation and its post-IDCT range limiting: the same integer
//! operations in the same order, so every sample is bit-identical.

const CONST_BITS: u32 = 13;
const PASS1_BITS: u32 = 2;

const FIX_0_298631336: i32 = 2446;
const FIX_0_390180644: i32 = 3196;
const FIX_0_541196100: i32 = 4433;
const FIX_0_765366865: i32 = 6270;
const FIX_0_899976223: i32 = 7373;
const FIX_1_175875602: i32 = 9633;
const FIX_1_501321110: i32 = 12299;
const FIX_1_847759065: i32 = 15137;
const FIX_1_961570560: i32 = 16069;
const FIX_2_053119869: i32 = 16819;
const FIX_2_562915447: i32 = 20995;
const FIX_3_072711026: i32 = 25172;

/// `DESCALE`: a rounding arithmetic right shift.
#[inline]
fn descale(x: i32, n: u32) -> i32 {
    x.wrapping_add(1 << (n - 1)) >> n
}

/// libjpeg's post-IDCT `range_limit[x & RANGE_MASK]`: `x + 128` clamped to 0..=255 for
/// `|x| < 512`, wrapping modulo 1024 beyond (as the table does for corrupt data).
#[inline]
fn range_limit(x: i32) -> u8 {
    let x = x & 1023;
    if x < 128 {
        (x + 128) as u8
    } else if x < 512 {
        255
    } else if x < 896 {
        0
    } else {
        (x - 896) as u8
    }
}

/// The even and odd parts shared by both passes: returns the eight outputs before descaling.
#[inline]
fn butterfly(v: [i32; 8]) -> [i32; 8] {
    // Even part.
    let (z2, z3) = (v[2], v[6]);
    let z1 = z2.wrapping_add(z3).wrapping_mul(FIX_0_541196100);
    let tmp2 = z1.wrapping_add(z3.wrapping_mul(-FIX_1_847759065));
    let tmp3 = z1.wrapping_add(z2.wrapping_mul(FIX_0_765366865));
    let tmp0 = v[0].wrapping_add(v[4]).wrapping_shl(CONST_BITS);
    let tmp1 = v[0].wrapping_sub(v[4]).wrapping_shl(CONST_BITS);
    let tmp10 = tmp0.wrapping_add(tmp3);
    let tmp13 = tmp0.wrapping_sub(tmp3);
    let tmp11 = tmp1.wrapping_add(tmp2);
    let tmp12 = tmp1.wrapping_sub(tmp2);
    // Odd part.
    let (mut t0, mut t1, mut t2, mut t3) = (v[7], v[5], v[3], v[1]);
    let z1 = t0.wrapping_add(t3);
    let z2 = t1.wrapping_add(t2);
    let z3 = t0.wrapping_add(t2);
    let z4 = t1.wrapping_add(t3);
    let z5 = z3.wrapping_add(z4).wrapping_mul(FIX_1_175875602);
    t0 = t0.wrapping_mul(FIX_0_298631336);
    t1 = t1.wrapping_mul(FIX_2_053119869);
    t2 = t2.wrapping_mul(FIX_3_072711026);
    t3 = t3.wrapping_mul(FIX_1_501321110);
    let z1 = z1.wrapping_mul(-FIX_0_899976223);
    let z2 = z2.wrapping_mul(-FIX_2_562915447);
    let z3 = z3.wrapping_mul(-FIX_1_961570560).wrapping_add(z5);
    let z4 = z4.wrapping_mul(-FIX_0_390180644).wrapping_add(z5);
    t0 = t0.wrapping_add(z1).wrapping_add(z3);
    t1 = t1.wrapping_add(z2).wrapping_add(z4);
    t2 = t2.wrapping_add(z2).wrapping_add(z3);
    t3 = t3.wrapping_add(z1).wrapping_add(z4);
    [
        tmp10.wrapping_add(t3),
        tmp11.wrapping_add(t2),
        tmp12.wrapping_add(t1),
        tmp13.wrapping_add(t0),
        tmp13.wrapping_sub(t0),
        tmp12.wrapping_sub(t1),
        tmp11.wrapping_sub(t2),
        tmp10.wrapping_sub(t3),
    ]
}

/// Dequantises `coef` (natural order) by `quant` and writes the 8x8 samples to `out`, row `r`
/// at `out[r * stride..]`.
pub(crate) fn idct_islow(coef: &[i16; 64], quant: &[u16; 64], out: &mut [u8], stride: usize) {
    let mut ws = [0i32; 64];
    // Pass 1: columns, from the input into the work array, scaled up by PASS1_BITS.
    for col in 0..8 {
        let deq = |row: usize| i32::from(coef[row * 8 + col]).wrapping_mul(i32::from(quant[row * 8 + col]));
        if (1..8).all(|row| coef[row * 8 + col] == 0) {
            let dc = deq(0).wrapping_shl(PASS1_BITS);
            for row in 0..8 {
                ws[row * 8 + col] = dc;
            }
            continue;
        }
        let v = butterfly([deq(0), deq(1), deq(2), deq(3), deq(4), deq(5), deq(6), deq(7)]);
        for (row, x) in v.into_iter().enumerate() {
            ws[row * 8 + col] = descale(x, CONST_BITS - PASS1_BITS);
        }
    }
    // Pass 2: rows, from the work array to the output, descaled by PASS1_BITS and 3.
    for row in 0..8 {
        let w = &ws[row * 8..row * 8 + 8];
        let o = &mut out[row * stride..row * stride + 8];
        if w[1..].iter().all(|&x| x == 0) {
            o.fill(range_limit(descale(w[0], PASS1_BITS + 3)));
            continue;
        }
        let v = butterfly([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        for (i, x) in v.into_iter().enumerate() {
            o[i] = range_limit(descale(x, CONST_BITS + PASS1_BITS + 3));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The float IDCT of the JPEG standard, rounded: the integer one may differ by one level.
    fn float_idct(coef: &[i16; 64], quant: &[u16; 64]) -> [f64; 64] {
        let mut out = [0.0; 64];
        let c = |u: usize| if u == 0 { std::f64::consts::FRAC_1_SQRT_2 } else { 1.0 };
        for y in 0..8 {
            for x in 0..8 {
                let mut s = 0.0;
                for v in 0..8 {
                    for u in 0..8 {
                        let f = f64::from(coef[v * 8 + u]) * f64::from(quant[v * 8 + u]);
                        s += c(u)
                            * c(v)
                            * f
                            * ((2 * x + 1) as f64 * u as f64 * std::f64::consts::PI / 16.0).cos()
                            * ((2 * y + 1) as f64 * v as f64 * std::f64::consts::PI / 16.0).cos();
                    }
                }
                out[y * 8 + x] = (s / 4.0 + 128.0).clamp(0.0, 255.0);
            }
        }
        out
    }

    #[test]
    fn matches_the_float_idct_within_one_level() {
        let mut seed = 12345u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..200 {
            let mut coef = [0i16; 64];
            let quant = [1u16; 64];
            for (i, c) in coef.iter_mut().enumerate() {
                if i == 0 || next() % 3 == 0 {
                    *c = (next() % 200) as i16 - 100;
                }
            }
            let mut out = [0u8; 64];
            idct_islow(&coef, &quant, &mut out, 8);
            let want = float_idct(&coef, &quant);
            for i in 0..64 {
                assert!((f64::from(out[i]) - want[i]).abs() <= 1.0, "{i}: {} vs {}", out[i], want[i]);
            }
        }
    }

    #[test]
    fn range_limit_is_libjpegs_table() {
        assert_eq!(range_limit(0), 128);
        assert_eq!(range_limit(127), 255);
        assert_eq!(range_limit(300), 255);
        assert_eq!(range_limit(-128), 0);
        assert_eq!(range_limit(-1), 127);
        assert_eq!(range_limit(-300), 0);
        assert_eq!(range_limit(1024), 128, "wraps modulo 1024 as the table does");
    }
}
