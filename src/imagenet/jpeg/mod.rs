//! A JPEG decoder bit-identical to Pillow's (libjpeg-turbo with its defaults: the accurate
//! integer IDCT, fancy upsampling, its fixed-point YCbCr-to-RGB conversion), in pure Rust.
//!
//! Baseline and extended sequential (8-bit, Huffman) and progressive JPEGs, any sampling
//! factors libjpeg accepts (4:4:4, 4:2:2, 4:2:0, 4:4:0, 4:1:1, ...), restart intervals, grey,
//! RGB, YCbCr, CMYK and YCCK. Lossless, hierarchical, arithmetic-coded and 12-bit files are
//! refused, as Pillow refuses 12-bit ones.
//!
//! Every size is checked before it is allocated; corrupt and truncated data are errors unless
//! the caller asks for leniency, in which case the decoder does what libjpeg does (missing
//! blocks decode as mid-grey; a bad Huffman code decodes as 0).

mod color;
mod huffman;
mod idct;
mod scan;

use huffman::Table;

/// The colour space of the decoded samples, as libjpeg deduces it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ColorSpace {
    Grey,
    YCbCr,
    Rgb,
    Cmyk,
    Ycck,
}

/// One component of the frame.
#[derive(Clone, Debug)]
pub(crate) struct Component {
    pub id: u8,
    pub h: usize,
    pub v: usize,
    pub quant: usize,
    /// Blocks across and down, padded to whole MCUs.
    pub blocks_w: usize,
    pub blocks_h: usize,
    /// Samples across and down that hold image data (libjpeg's `downsampled_width/height`).
    pub width: usize,
    pub height: usize,
}

/// The frame header and the tables seen so far.
pub(crate) struct Frame {
    pub width: usize,
    pub height: usize,
    pub progressive: bool,
    pub components: Vec<Component>,
    pub max_h: usize,
    pub max_v: usize,
    pub mcus_x: usize,
    pub mcus_y: usize,
}

/// A decoded image: 1 (grey), 3 (RGB) or 4 (CMYK as libjpeg outputs it) samples a pixel.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub data: Vec<u8>,
}

/// Decoder state across markers.
struct Decoder<'a> {
    data: &'a [u8],
    lenient: bool,
    max_pixels: u64,
    quant: [Option<[u16; 64]>; 4],
    dc_tables: [Option<Table>; 4],
    ac_tables: [Option<Table>; 4],
    restart_interval: usize,
    jfif: bool,
    adobe_transform: Option<u8>,
    frame: Option<Frame>,
    /// Sample planes (baseline) or coefficients (progressive), per component.
    planes: Vec<Vec<u8>>,
    coefs: Vec<Vec<i16>>,
    /// Blocks decoded so far, per component (baseline).
    ran_out: bool,
    corrupt: bool,
}

type R<T> = Result<T, String>;

/// libjpeg's zig-zag to natural order, with 16 extra entries (all 63) so that a corrupt run
/// past the last coefficient writes where libjpeg writes.
pub(crate) const NATURAL_ORDER: [usize; 80] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21, 28, 35, 42, 49, 56,
    57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63, 63, 63, 63, 63, 63, 63,
    63, 63, 63, 63, 63, 63, 63, 63, 63, 63,
];

/// Decodes `data`. `max_pixels` bounds the frame before anything is allocated for it.
pub(crate) fn decode(data: &[u8], lenient: bool, max_pixels: u64) -> R<Decoded> {
    let mut d = Decoder {
        data,
        lenient,
        max_pixels,
        quant: [None; 4],
        dc_tables: Default::default(),
        ac_tables: Default::default(),
        restart_interval: 0,
        jfif: false,
        adobe_transform: None,
        frame: None,
        planes: Vec::new(),
        coefs: Vec::new(),
        ran_out: false,
        corrupt: false,
    };
    d.run()
}

/// The frame's width and height, from the first frame header, without decoding.
pub(crate) fn dimensions(data: &[u8]) -> R<(usize, usize)> {
    if !data.starts_with(&[0xFF, 0xD8]) {
        return Err("not a JPEG stream (no start-of-image marker)".into());
    }
    let mut pos = 2;
    loop {
        let at = data[pos.min(data.len())..]
            .iter()
            .position(|&b| b == 0xFF)
            .ok_or("truncated JPEG: no frame header")?;
        pos += at;
        while data.get(pos) == Some(&0xFF) {
            pos += 1;
        }
        let marker = *data.get(pos).ok_or("truncated JPEG: no frame header")?;
        pos += 1;
        if matches!(marker, 0x00 | 0x01 | 0xD0..=0xD8) {
            continue;
        }
        if marker == 0xD9 || marker == 0xDA {
            return Err("corrupt JPEG: no frame header before the first scan".into());
        }
        let b = data.get(pos..pos + 2).ok_or("truncated JPEG: no frame header")?;
        let len = usize::from(u16::from_be_bytes([b[0], b[1]]));
        if matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) {
            let f = data.get(pos + 2..pos + 7).ok_or("truncated JPEG: inside the frame header")?;
            let h = usize::from(u16::from_be_bytes([f[1], f[2]]));
            let w = usize::from(u16::from_be_bytes([f[3], f[4]]));
            return Ok((w, h));
        }
        pos += len.max(2);
    }
}

impl<'a> Decoder<'a> {
    fn truncated(&self, what: &str) -> String {
        format!("truncated JPEG: the data ends {what}")
    }

    fn u16_at(&self, pos: usize) -> R<usize> {
        self.data
            .get(pos..pos + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
            .ok_or_else(|| self.truncated("inside a marker segment"))
    }

    /// A marker segment's payload (after its length), and the position after it.
    fn segment(&self, pos: usize, marker: u8) -> R<(&'a [u8], usize)> {
        let len = self.u16_at(pos)?;
        if len < 2 {
            return Err(format!("corrupt JPEG: marker 0xFF{marker:02X} declares a length of {len}"));
        }
        let body = self
            .data
            .get(pos + 2..pos + len)
            .ok_or_else(|| self.truncated(&format!("inside the segment of marker 0xFF{marker:02X}")))?;
        Ok((body, pos + len))
    }

    fn run(&mut self) -> R<Decoded> {
        if !self.data.starts_with(&[0xFF, 0xD8]) {
            return Err("not a JPEG stream (no start-of-image marker)".into());
        }
        let mut pos = 2;
        let mut scans = 0usize;
        loop {
            // Find the next marker (libjpeg skips stray bytes before one, with a warning).
            let Some(at) = self.data[pos.min(self.data.len())..].iter().position(|&b| b == 0xFF) else {
                return self.finish_without_eoi(scans);
            };
            pos += at;
            while self.data.get(pos) == Some(&0xFF) {
                pos += 1;
            }
            let Some(&marker) = self.data.get(pos) else {
                return self.finish_without_eoi(scans);
            };
            pos += 1;
            match marker {
                0xD8 => return Err("corrupt JPEG: a second start-of-image marker".into()),
                0xD9 => return self.finish(scans),
                0x00 | 0x01 | 0xD0..=0xD7 => continue,
                0xC0..=0xC2 => {
                    let (body, next) = self.segment(pos, marker)?;
                    self.start_frame(body, marker == 0xC2)?;
                    pos = next;
                }
                0xC3 | 0xC5..=0xC7 | 0xCB | 0xCD..=0xCF => {
                    return Err(format!("lossless or hierarchical JPEG (marker 0xFF{marker:02X}) is not supported"))
                }
                0xC9 | 0xCA => return Err("arithmetic-coded JPEG is not supported".into()),
                0xC4 => {
                    let (body, next) = self.segment(pos, marker)?;
                    self.define_huffman(body)?;
                    pos = next;
                }
                0xDB => {
                    let (body, next) = self.segment(pos, marker)?;
                    self.define_quant(body)?;
                    pos = next;
                }
                0xDD => {
                    let (body, next) = self.segment(pos, marker)?;
                    if body.len() < 2 {
                        return Err("corrupt JPEG: a short DRI segment".into());
                    }
                    self.restart_interval = usize::from(u16::from_be_bytes([body[0], body[1]]));
                    pos = next;
                }
                0xDC => return Err("JPEG with a DNL marker (height defined after the scan) is not supported".into()),
                0xDA => {
                    let (body, next) = self.segment(pos, marker)?;
                    pos = self.scan(body, next)?;
                    scans += 1;
                    if self.ran_out && !self.lenient {
                        return Err(self.truncated("inside a scan's data (the decoder ran out of data)"));
                    }
                    if self.corrupt && !self.lenient {
                        return Err("corrupt JPEG: a Huffman code matches no code of its table".into());
                    }
                }
                0xE0 => {
                    let (body, next) = self.segment(pos, marker)?;
                    self.jfif |= body.starts_with(b"JFIF\0");
                    pos = next;
                }
                0xEE => {
                    let (body, next) = self.segment(pos, marker)?;
                    if body.len() >= 12 && body.starts_with(b"Adobe") {
                        self.adobe_transform = Some(body[11]);
                    }
                    pos = next;
                }
                _ => {
                    let (_, next) = self.segment(pos, marker)?;
                    pos = next;
                }
            }
        }
    }

    fn finish_without_eoi(&mut self, scans: usize) -> R<Decoded> {
        if !self.lenient {
            return Err(self.truncated("before its end-of-image marker"));
        }
        self.finish(scans)
    }

    fn finish(&mut self, scans: usize) -> R<Decoded> {
        let Some(frame) = &self.frame else {
            return Err("corrupt JPEG: no frame header".into());
        };
        if scans == 0 {
            return Err("corrupt JPEG: no scan".into());
        }
        if frame.progressive {
            self.planes = scan::progressive_to_planes(frame, &self.coefs, &self.quant)?;
        }
        let space = self.color_space(frame);
        color::convert(frame, &self.planes, space)
    }

    /// libjpeg's `default_decompress_parms`: the colour space from the markers and ids.
    fn color_space(&self, frame: &Frame) -> ColorSpace {
        match frame.components.len() {
            1 => ColorSpace::Grey,
            3 => {
                if self.jfif {
                    ColorSpace::YCbCr
                } else if let Some(t) = self.adobe_transform {
                    if t == 0 {
                        ColorSpace::Rgb
                    } else {
                        ColorSpace::YCbCr
                    }
                } else {
                    let ids: Vec<u8> = frame.components.iter().map(|c| c.id).collect();
                    if ids == [82, 71, 66] {
                        ColorSpace::Rgb
                    } else {
                        ColorSpace::YCbCr
                    }
                }
            }
            _ => match self.adobe_transform {
                Some(2) => ColorSpace::Ycck,
                _ => ColorSpace::Cmyk,
            },
        }
    }

    fn start_frame(&mut self, b: &[u8], progressive: bool) -> R<()> {
        if self.frame.is_some() {
            return Err("corrupt JPEG: a second frame header".into());
        }
        if b.len() < 6 {
            return Err("corrupt JPEG: a short frame header".into());
        }
        if b[0] != 8 {
            return Err(format!("{}-bit JPEG samples are not supported (Pillow reads 8-bit only)", b[0]));
        }
        let height = usize::from(u16::from_be_bytes([b[1], b[2]]));
        let width = usize::from(u16::from_be_bytes([b[3], b[4]]));
        let n = usize::from(b[5]);
        if width == 0 || height == 0 {
            return Err(format!("the image is empty ({width}x{height})"));
        }
        if (width as u64) * (height as u64) > self.max_pixels {
            return Err(format!(
                "{width}x{height} pixels are over the budget's max_image_pixels of {}",
                self.max_pixels
            ));
        }
        if !matches!(n, 1 | 3 | 4) || b.len() < 6 + 3 * n {
            return Err(format!("a JPEG of {n} components (1, 3 or 4 are read)"));
        }
        let mut components = Vec::with_capacity(n);
        for i in 0..n {
            let c = &b[6 + 3 * i..9 + 3 * i];
            let (h, v, quant) = (usize::from(c[1] >> 4), usize::from(c[1] & 15), usize::from(c[2]));
            if !(1..=4).contains(&h) || !(1..=4).contains(&v) || quant > 3 {
                return Err(format!("corrupt JPEG: component {i} has sampling {h}x{v} and table {quant}"));
            }
            components.push(Component {
                id: c[0],
                h,
                v,
                quant,
                blocks_w: 0,
                blocks_h: 0,
                width: 0,
                height: 0,
            });
        }
        let max_h = components.iter().map(|c| c.h).max().unwrap_or(1);
        let max_v = components.iter().map(|c| c.v).max().unwrap_or(1);
        let mcus_x = width.div_ceil(8 * max_h);
        let mcus_y = height.div_ceil(8 * max_v);
        let mut samples = 0u64;
        for c in &mut components {
            if max_h % c.h != 0 || max_v % c.v != 0 {
                return Err(format!(
                    "fractional sampling ({}x{} of {max_h}x{max_v}) is not supported, as in libjpeg",
                    c.h, c.v
                ));
            }
            c.blocks_w = mcus_x * c.h;
            c.blocks_h = mcus_y * c.v;
            c.width = (width * c.h).div_ceil(max_h);
            c.height = (height * c.v).div_ceil(max_v);
            samples += (c.blocks_w * c.blocks_h * 64) as u64;
        }
        // Samples (or coefficients) per pixel are bounded by the sampling factors (at most 16
        // blocks a component per MCU pixel area), so this is a small multiple of the pixels.
        let bytes = samples * if progressive { 2 } else { 1 };
        if bytes > self.max_pixels.saturating_mul(16) {
            return Err(format!("the frame's sampling needs {bytes} bytes of buffers"));
        }
        if progressive {
            self.coefs = components.iter().map(|c| vec![0i16; c.blocks_w * c.blocks_h * 64]).collect();
        } else {
            self.planes = components.iter().map(|c| vec![0u8; c.blocks_w * c.blocks_h * 64]).collect();
        }
        self.frame = Some(Frame {
            width,
            height,
            progressive,
            components,
            max_h,
            max_v,
            mcus_x,
            mcus_y,
        });
        Ok(())
    }

    fn define_quant(&mut self, mut b: &[u8]) -> R<()> {
        while !b.is_empty() {
            let (precision, id) = (b[0] >> 4, usize::from(b[0] & 15));
            let len = if precision == 0 { 64 } else { 128 };
            if id > 3 || precision > 1 || b.len() < 1 + len {
                return Err("corrupt JPEG: a bad quantisation table".into());
            }
            let mut table = [0u16; 64];
            for (k, &pos) in NATURAL_ORDER[..64].iter().enumerate() {
                table[pos] = if precision == 0 {
                    u16::from(b[1 + k])
                } else {
                    u16::from_be_bytes([b[1 + 2 * k], b[2 + 2 * k]])
                };
            }
            self.quant[id] = Some(table);
            b = &b[1 + len..];
        }
        Ok(())
    }

    fn define_huffman(&mut self, mut b: &[u8]) -> R<()> {
        while !b.is_empty() {
            if b.len() < 17 {
                return Err("corrupt JPEG: a short Huffman table".into());
            }
            let (class, id) = (b[0] >> 4, usize::from(b[0] & 15));
            let counts: [u8; 16] = b[1..17].try_into().map_err(|_| "corrupt JPEG: a short Huffman table".to_string())?;
            let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
            let symbols = b.get(17..17 + total).ok_or("corrupt JPEG: a short Huffman table")?;
            if id > 3 || class > 1 {
                return Err("corrupt JPEG: a bad Huffman table id".into());
            }
            let table = Table::new(&counts, symbols).map_err(|e| format!("corrupt JPEG: {e}"))?;
            if class == 0 {
                self.dc_tables[id] = Some(table);
            } else {
                self.ac_tables[id] = Some(table);
            }
            b = &b[17 + total..];
        }
        Ok(())
    }

    /// Decodes one scan whose header is `b` and whose data starts at `pos`; returns where the
    /// data stopped (at the next marker).
    fn scan(&mut self, b: &[u8], pos: usize) -> R<usize> {
        let frame = self.frame.as_ref().ok_or("corrupt JPEG: a scan before the frame header")?;
        let n = usize::from(*b.first().ok_or("corrupt JPEG: an empty scan header")?);
        if n == 0 || n > 4 || b.len() < 1 + 2 * n + 3 {
            return Err("corrupt JPEG: a bad scan header".into());
        }
        let mut comps = Vec::with_capacity(n);
        for i in 0..n {
            let (id, tables) = (b[1 + 2 * i], b[2 + 2 * i]);
            let ci = frame
                .components
                .iter()
                .position(|c| c.id == id)
                .ok_or_else(|| format!("corrupt JPEG: the scan names component {id}, not in the frame"))?;
            if comps.iter().any(|s: &scan::ScanComponent| s.index == ci) {
                return Err("corrupt JPEG: a component twice in one scan".into());
            }
            comps.push(scan::ScanComponent {
                index: ci,
                dc: usize::from(tables >> 4),
                ac: usize::from(tables & 15),
            });
        }
        let p = &b[1 + 2 * n..];
        let spectral = scan::Spectral {
            ss: usize::from(p[0]),
            se: usize::from(p[1]),
            ah: u32::from(p[2] >> 4),
            al: u32::from(p[2] & 15),
        };
        let blocks_in_mcu: usize = comps
            .iter()
            .map(|s| frame.components[s.index].h * frame.components[s.index].v)
            .sum();
        if n > 1 && blocks_in_mcu > 10 {
            return Err("corrupt JPEG: more than 10 blocks in an MCU".into());
        }
        let mut reader = huffman::BitReader::new(self.data, pos);
        let tables = scan::Tables {
            dc: &self.dc_tables,
            ac: &self.ac_tables,
            quant: &self.quant,
        };
        if frame.progressive {
            scan::progressive(
                frame,
                &comps,
                spectral,
                &tables,
                self.restart_interval,
                &mut reader,
                &mut self.coefs,
            )?;
        } else {
            if spectral.ss != 0 || spectral.se != 63 || spectral.ah != 0 || spectral.al != 0 {
                // libjpeg only warns; the values are ignored in sequential mode.
                if !self.lenient {
                    return Err("corrupt JPEG: a sequential scan with progressive parameters".into());
                }
            }
            scan::baseline(frame, &comps, &tables, self.restart_interval, &mut reader, &mut self.planes)?;
        }
        self.ran_out |= reader.ran_out;
        self.corrupt |= reader.corrupt;
        Ok(reader.end_of_scan())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_it_does_not_read() {
        assert!(decode(b"not a jpeg", false, 1 << 20).unwrap_err().contains("start-of-image"));
        assert!(decode(&[0xFF, 0xD8, 0xFF, 0xD9], false, 1 << 20).unwrap_err().contains("frame"));
        // SOF3 (lossless).
        let lossless = [0xFF, 0xD8, 0xFF, 0xC3, 0x00, 0x0B, 8, 0, 8, 0, 8, 1, 1, 0x11, 0];
        assert!(decode(&lossless, false, 1 << 20).unwrap_err().contains("lossless"));
        // A frame over the pixel budget.
        let big = [0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x0B, 8, 0xFF, 0xFF, 0xFF, 0xFF, 1, 1, 0x11, 0];
        assert!(decode(&big, false, 1 << 20).unwrap_err().contains("max_image_pixels"));
    }
}
