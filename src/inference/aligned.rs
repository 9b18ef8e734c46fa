//! Activation buffers whose first element sits on a 64-byte boundary: one cache line, one
//! AVX-512 register. The kernels load a pixel's channels a register at a time; from a buffer
//! as the allocator returns it (16 bytes past a boundary, for large blocks) every such load
//! straddles two lines, which cost the depthwise loop a third of its speed on a Zen 4.

use std::ops::{Deref, DerefMut};

/// Floats in one 64-byte line.
const LINE_FLOATS: usize = 16;

/// `len` zero-initialised floats starting on a 64-byte boundary (safe code: an offset into a
/// slightly longer `Vec` that is never resized).
#[derive(Debug, Default)]
pub(crate) struct AlignedBuf {
    data: Vec<f32>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// `len` zeros.
    pub(crate) fn zeroed(len: usize) -> Self {
        let data = vec![0.0f32; len + LINE_FLOATS - 1];
        // An `f32` pointer is 4-aligned, so its offset into the line is a whole number of floats.
        let start = (LINE_FLOATS - (data.as_ptr() as usize % 64) / 4) % LINE_FLOATS;
        AlignedBuf { data, start, len }
    }

    /// Floats allocated.
    pub(crate) fn capacity(&self) -> usize {
        self.data.capacity()
    }
}

impl Deref for AlignedBuf {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        &self.data[self.start..self.start + self.len]
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.data[self.start..self.start + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::AlignedBuf;

    #[test]
    fn starts_on_a_line_and_holds_zeros() {
        for len in [0, 1, 15, 16, 17, 1000, 1 << 20] {
            let mut b = AlignedBuf::zeroed(len);
            assert_eq!(b.len(), len);
            assert_eq!(b.as_ptr() as usize % 64, 0, "length {len}");
            assert!(b.iter().all(|&v| v == 0.0));
            if len > 0 {
                b[len - 1] = 2.0;
                assert_eq!(b[len - 1], 2.0);
            }
        }
    }
}
