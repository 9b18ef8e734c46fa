//! Whether a PNG stream is complete, checked before it is decoded: its chunks are walked to
//! `IEND`. (The JPEG decoder reports running out of data itself.)

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
