//! Whether a PNG or JPEG stream is complete, checked before it is decoded: the decoders fill
//! in what a truncated file lacks (a JPEG cut in half decodes as a whole image with a grey
//! lower half), so a cut file must be caught by walking its structure.

/// Walks a JPEG's markers and segments, and each scan's entropy-coded data, to its
/// end-of-image marker. `Err` says where the stream ends short.
pub(crate) fn jpeg_complete(b: &[u8]) -> Result<(), String> {
    if !b.starts_with(&[0xFF, 0xD8]) {
        return Err("not a JPEG stream (no start-of-image marker)".into());
    }
    let truncated = |at: usize, what: &str| format!("truncated JPEG: the file ends at byte {} {what}", at.min(b.len()));
    let mut pos = 2;
    loop {
        if pos >= b.len() {
            return Err(truncated(pos, "before its end-of-image marker"));
        }
        if b[pos] != 0xFF {
            return Err(format!("corrupt JPEG: byte {pos} is 0x{:02X} where a marker should begin", b[pos]));
        }
        while pos < b.len() && b[pos] == 0xFF {
            pos += 1; // fill bytes
        }
        let Some(&marker) = b.get(pos) else {
            return Err(truncated(pos, "inside a marker"));
        };
        pos += 1;
        match marker {
            0xD9 => return Ok(()),
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let len = match b.get(pos..pos + 2) {
            Some(l) => usize::from(u16::from_be_bytes([l[0], l[1]])),
            None => return Err(truncated(pos, &format!("inside the length of marker 0xFF{marker:02X}"))),
        };
        if len < 2 {
            return Err(format!(
                "corrupt JPEG: marker 0xFF{marker:02X} at byte {} declares {len} bytes",
                pos - 2
            ));
        }
        if pos + len > b.len() {
            return Err(truncated(
                pos,
                &format!("inside a segment of marker 0xFF{marker:02X} that declares {len} bytes"),
            ));
        }
        pos += len;
        if marker == 0xDA {
            // Entropy-coded data runs to the next marker that is neither a stuffed 0xFF00 nor
            // a restart marker.
            loop {
                match b[pos..].iter().position(|&v| v == 0xFF) {
                    None => return Err(truncated(b.len(), "inside a scan's data")),
                    Some(i) => {
                        pos += i;
                        match b.get(pos + 1) {
                            None => return Err(truncated(b.len(), "inside a scan's data")),
                            Some(0x00 | 0xD0..=0xD7) => pos += 2,
                            Some(0xFF) => pos += 1,
                            Some(_) => break,
                        }
                    }
                }
            }
        }
    }
}

/// Walks a PNG's chunks to its `IEND`. `Err` says where the stream ends short.
pub(crate) fn png_complete(b: &[u8]) -> Result<(), String> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if !b.starts_with(SIGNATURE) {
        return Err("not a PNG stream (no signature)".into());
    }
    let mut pos = SIGNATURE.len();
    loop {
        let Some(head) = b.get(pos..pos + 8) else {
            return Err(format!("truncated PNG: the file ends at byte {} before its IEND chunk", b.len()));
        };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let kind = [head[4], head[5], head[6], head[7]];
        let end = pos.checked_add(12).and_then(|p| p.checked_add(len)).filter(|&e| e <= b.len());
        let Some(end) = end else {
            return Err(format!(
                "truncated PNG: chunk {} at byte {pos} declares {len} bytes, the file ends at byte {}",
                String::from_utf8_lossy(&kind),
                b.len()
            ));
        };
        if &kind == b"IEND" {
            return Ok(());
        }
        pos = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal stream: SOI, one segment, SOS with entropy data holding a stuffed byte and a
    /// restart marker, EOI.
    fn jpeg() -> Vec<u8> {
        let mut v = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0x4A, 0x46];
        v.extend([0xFF, 0xDA, 0x00, 0x03, 0x01]);
        v.extend([0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56]);
        v.extend([0xFF, 0xD9]);
        v
    }

    #[test]
    fn a_whole_jpeg_passes_and_every_cut_fails() {
        let j = jpeg();
        jpeg_complete(&j).unwrap();
        for n in 0..j.len() {
            assert!(jpeg_complete(&j[..n]).is_err(), "cut at {n}");
        }
        let mut trailing = j.clone();
        trailing.extend(b"trailing bytes after EOI");
        jpeg_complete(&trailing).unwrap();
    }

    #[test]
    fn a_whole_png_passes_and_every_cut_fails() {
        let mut p = b"\x89PNG\r\n\x1a\n".to_vec();
        p.extend([0, 0, 0, 2]);
        p.extend(b"abcd\x01\x02");
        p.extend([0; 4]);
        p.extend([0, 0, 0, 0]);
        p.extend(b"IEND");
        p.extend([0; 4]);
        png_complete(&p).unwrap();
        for n in 0..p.len() {
            assert!(png_complete(&p[..n]).is_err(), "cut at {n}");
        }
    }
}
