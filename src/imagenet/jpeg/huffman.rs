//! Huffman tables and the entropy-coded data's bit reader, as libjpeg reads them: stuffed
//! `0xFF00` bytes, restart markers, and zero bits supplied (with a flag raised) when a scan's
//! data runs out.

/// A Huffman table: codes of up to 16 bits, with a 9-bit lookup for the short ones.
#[derive(Clone, Debug)]
pub(crate) struct Table {
    /// For each 9-bit prefix: `(length << 8) | symbol`, or 0 for a longer code.
    fast: Vec<u16>,
    /// Largest code of each length (`-1` when none), as in libjpeg's `maxcode`.
    maxcode: [i32; 18],
    /// `valptr[l] - mincode[l]`: the symbol index offset for codes of length `l`.
    offset: [i32; 17],
    symbols: Vec<u8>,
}

const FAST_BITS: u32 = 9;

impl Table {
    /// Builds a table from a DHT segment's 16 code-length counts and its symbols.
    pub(crate) fn new(counts: &[u8; 16], symbols: &[u8]) -> Result<Table, String> {
        let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
        if total > 256 || total != symbols.len() {
            return Err(format!("a Huffman table of {total} codes"));
        }
        let mut fast = vec![0u16; 1 << FAST_BITS];
        let mut maxcode = [-1i32; 18];
        let mut offset = [0i32; 17];
        let mut code: i32 = 0;
        let mut k = 0usize;
        for len in 1..=16usize {
            let n = i32::from(counts[len - 1]);
            offset[len] = k as i32 - code;
            if n > 0 {
                for _ in 0..n {
                    if code >= (1 << len) {
                        return Err("a Huffman table whose codes overflow their lengths".into());
                    }
                    if len as u32 <= FAST_BITS {
                        let shift = FAST_BITS - len as u32;
                        let first = (code as usize) << shift;
                        for slot in &mut fast[first..first + (1 << shift)] {
                            *slot = ((len as u16) << 8) | u16::from(symbols[k]);
                        }
                    }
                    code += 1;
                    k += 1;
                }
                maxcode[len] = code - 1;
            }
            // The code after the last must still fit (no code is all ones): libjpeg's "bad
            // Huffman table" check.
            if code >= (1 << len) {
                return Err("a Huffman table whose codes overflow their lengths".into());
            }
            code <<= 1;
        }
        maxcode[17] = i32::MAX; // sentinel, as libjpeg's maxcode[17]
        Ok(Table {
            fast,
            maxcode,
            offset,
            symbols: symbols.to_vec(),
        })
    }
}

/// Reads bits from a scan's entropy-coded data.
pub(crate) struct BitReader<'a> {
    data: &'a [u8],
    /// Next byte to read.
    pub pos: usize,
    /// Bits, left-aligned; those past `bits` are zero.
    acc: u64,
    bits: u32,
    /// A marker was reached (`pos` is at its 0xFF), or the data ended.
    at_end: bool,
    /// Bits were needed past the end of the data, and zeros supplied (libjpeg's
    /// `insufficient_data`).
    pub ran_out: bool,
    /// A code matched no code of its table (libjpeg's "bad Huffman code", symbol 0 used).
    pub corrupt: bool,
}

impl<'a> BitReader<'a> {
    pub(crate) fn new(data: &'a [u8], pos: usize) -> Self {
        BitReader {
            data,
            pos,
            acc: 0,
            bits: 0,
            at_end: false,
            ran_out: false,
            corrupt: false,
        }
    }

    /// For the 0xFF at `at`: the position after it and any fill bytes (more 0xFFs), and the
    /// byte found there (0x00 for a stuffed 0xFF, else a marker code; `None` at the end).
    fn after_ff(&self, at: usize) -> (usize, Option<u8>) {
        let mut p = at + 1;
        while self.data.get(p) == Some(&0xFF) {
            p += 1;
        }
        (p, self.data.get(p).copied())
    }

    fn fill(&mut self) {
        while self.bits <= 56 && !self.at_end {
            let Some(&b) = self.data.get(self.pos) else {
                self.at_end = true;
                break;
            };
            if b == 0xFF {
                // 0xFF 0x00 is a stuffed 0xFF; fill bytes 0xFF 0xFF... then a marker ends the data.
                match self.after_ff(self.pos) {
                    (p, Some(0x00)) => self.pos = p + 1,
                    _ => {
                        self.at_end = true;
                        break;
                    }
                }
            } else {
                self.pos += 1;
            }
            self.acc |= u64::from(b) << (56 - self.bits);
            self.bits += 8;
        }
    }

    /// The next `n` (<= 16) bits, zeros past the end, without consuming them.
    #[inline]
    fn peek(&mut self, n: u32) -> u32 {
        if self.bits < n {
            self.fill();
        }
        (self.acc >> (64 - n)) as u32
    }

    #[inline]
    fn consume(&mut self, n: u32) {
        if n > self.bits {
            self.ran_out = true;
            self.acc = 0;
            self.bits = 0;
        } else {
            self.acc <<= n;
            self.bits -= n;
        }
    }

    /// `n` bits as an unsigned number.
    #[inline]
    pub(crate) fn bits(&mut self, n: u32) -> i32 {
        if n == 0 {
            return 0;
        }
        let v = self.peek(n);
        self.consume(n);
        v as i32
    }

    #[inline]
    pub(crate) fn bit(&mut self) -> bool {
        self.bits(1) != 0
    }

    /// `n` bits as the signed value they code (`HUFF_EXTEND`).
    #[inline]
    pub(crate) fn receive_extend(&mut self, n: u32) -> i32 {
        if n == 0 {
            return 0;
        }
        let v = self.bits(n);
        if v < (1 << (n - 1)) {
            v + ((-1) << n) + 1
        } else {
            v
        }
    }

    /// The next Huffman-coded symbol.
    pub(crate) fn decode(&mut self, t: &Table) -> u8 {
        let fast = t.fast[self.peek(FAST_BITS) as usize];
        if fast != 0 {
            self.consume(u32::from(fast >> 8));
            return fast as u8;
        }
        let code = self.peek(16) as i32;
        for len in FAST_BITS as usize + 1..=16 {
            let c = code >> (16 - len);
            if c <= t.maxcode[len] {
                self.consume(len as u32);
                let i = c + t.offset[len];
                return t.symbols.get(i as usize).copied().unwrap_or(0);
            }
        }
        // libjpeg: "Corrupt JPEG data: bad Huffman code", 16 bits skipped... it consumes the
        // bits it read and returns symbol 0.
        self.consume(16);
        self.corrupt = true;
        0
    }

    /// Drops the bits left in the buffer and, when the data stopped at a marker, returns it
    /// (consumed); `None` at the end of the data.
    pub(crate) fn take_marker(&mut self) -> Option<u8> {
        self.acc = 0;
        self.bits = 0;
        self.at_end = false;
        // The fill stopped at a marker's 0xFF (or earlier, when the buffer was full): skip to it.
        while let Some(&b) = self.data.get(self.pos) {
            if b == 0xFF {
                match self.after_ff(self.pos) {
                    (p, Some(0x00)) => self.pos = p + 1,
                    (p, Some(m)) => {
                        self.pos = p + 1;
                        return Some(m);
                    }
                    (p, None) => {
                        self.pos = p;
                        return None;
                    }
                }
            } else {
                self.pos += 1;
            }
        }
        None
    }
}

impl BitReader<'_> {
    /// Where the scan's data ends: the 0xFF of the next marker that is not a stuffed byte, or
    /// the end of the data.
    pub(crate) fn end_of_scan(&self) -> usize {
        let mut p = self.pos;
        while p < self.data.len() {
            if self.data[p] == 0xFF && !matches!(self.data.get(p + 1), Some(0x00)) {
                return p;
            }
            p += 1;
        }
        self.data.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_short_and_long_decode_to_their_symbols() {
        // Lengths: two codes of 2 bits (00, 01), one of 3 (100), one of 12 (1010 0000 0000).
        let mut counts = [0u8; 16];
        counts[1] = 2;
        counts[2] = 1;
        counts[11] = 1;
        let t = Table::new(&counts, &[5, 6, 7, 9]).unwrap();
        // 00 01 100 101000000000 then pad: 0001 1001 0100 0000 0000 0xxx
        let data = [0b0001_1001, 0b0100_0000, 0b0000_0111];
        let mut r = BitReader::new(&data, 0);
        assert_eq!([r.decode(&t), r.decode(&t), r.decode(&t), r.decode(&t)], [5, 6, 7, 9]);
        assert!(!r.ran_out && !r.corrupt);
        r.bits(8);
        assert!(r.ran_out, "bits past the end are flagged");
    }

    #[test]
    fn stuffed_bytes_and_markers() {
        let data = [0xFF, 0x00, 0x12, 0xFF, 0xD0, 0x34];
        let mut r = BitReader::new(&data, 0);
        assert_eq!(r.bits(8), 0xFF);
        assert_eq!(r.bits(8), 0x12);
        assert!(!r.ran_out);
        assert_eq!(r.take_marker(), Some(0xD0));
        assert_eq!(r.pos, 5);
    }

    #[test]
    fn overfull_tables_are_refused() {
        let mut counts = [0u8; 16];
        counts[0] = 3; // three 1-bit codes
        assert!(Table::new(&counts, &[1, 2, 3]).is_err());
        counts[0] = 2; // 0 and 1: the all-ones code, refused as libjpeg refuses it
        assert!(Table::new(&counts, &[1, 2]).is_err());
        let mut long = [0u8; 16];
        long[1] = 200; // 200 two-bit codes: overflows inside the fast table's range
        assert!(Table::new(&long, &[0; 200]).is_err());
    }
}
