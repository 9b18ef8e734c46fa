//! Decoding scans: baseline (straight to samples, block by block) and progressive (into
//! coefficient buffers, refined scan by scan), with restart intervals, as libjpeg's
//! `jdhuff.c` and `jdphuff.c` decode them.

use super::huffman::{BitReader, Table};
use super::idct::idct_islow;
use super::{Frame, NATURAL_ORDER};

type R<T> = Result<T, String>;

/// A component of a scan: its index in the frame and its table ids.
pub(crate) struct ScanComponent {
    pub index: usize,
    pub dc: usize,
    pub ac: usize,
}

/// A scan's spectral selection and successive approximation.
#[derive(Clone, Copy)]
pub(crate) struct Spectral {
    pub ss: usize,
    pub se: usize,
    pub ah: u32,
    pub al: u32,
}

pub(crate) struct Tables<'t> {
    pub dc: &'t [Option<Table>; 4],
    pub ac: &'t [Option<Table>; 4],
    pub quant: &'t [Option<[u16; 64]>; 4],
}

fn table<'t>(tables: &'t [Option<Table>; 4], id: usize, what: &str) -> R<&'t Table> {
    tables
        .get(id)
        .and_then(Option::as_ref)
        .ok_or_else(|| format!("corrupt JPEG: the scan uses {what} Huffman table {id}, never defined"))
}

/// The blocks of one MCU, in order: `(component in the scan, block x, block y)`, and the MCU
/// grid. A single-component scan is not interleaved: its MCU is one block and it covers only
/// the blocks holding image data.
fn mcu_layout(frame: &Frame, comps: &[ScanComponent]) -> (usize, usize, Vec<(usize, usize, usize)>) {
    if comps.len() == 1 {
        let c = &frame.components[comps[0].index];
        return (c.width.div_ceil(8), c.height.div_ceil(8), vec![(0, 0, 0)]);
    }
    let mut blocks = Vec::new();
    for (s, sc) in comps.iter().enumerate() {
        let c = &frame.components[sc.index];
        for y in 0..c.v {
            for x in 0..c.h {
                blocks.push((s, x, y));
            }
        }
    }
    (frame.mcus_x, frame.mcus_y, blocks)
}

/// Handles the restart marker due after `mcu` MCUs, if one is: checks it and resets the
/// predictors.
fn restart(reader: &mut BitReader<'_>, interval: usize, mcu: usize, total: usize, expected: &mut u8) -> R<bool> {
    if interval == 0 || mcu == 0 || !mcu.is_multiple_of(interval) || mcu >= total {
        return Ok(false);
    }
    match reader.take_marker() {
        Some(m) if m == 0xD0 + *expected => {
            *expected = (*expected + 1) & 7;
            reader.ran_out = false; // libjpeg resets `insufficient_data` at each restart
            Ok(true)
        }
        Some(m) => Err(format!(
            "corrupt JPEG: marker 0xFF{m:02X} where restart marker {} was due",
            *expected
        )),
        None => {
            reader.ran_out = true;
            Ok(true)
        }
    }
}

/// A sequential scan: each block is decoded, dequantised and transformed into its plane.
pub(crate) fn baseline(
    frame: &Frame,
    comps: &[ScanComponent],
    tables: &Tables<'_>,
    interval: usize,
    reader: &mut BitReader<'_>,
    planes: &mut [Vec<u8>],
) -> R<()> {
    let mut dc_tab = Vec::new();
    let mut ac_tab = Vec::new();
    let mut quant = Vec::new();
    for sc in comps {
        dc_tab.push(table(tables.dc, sc.dc, "DC")?);
        ac_tab.push(table(tables.ac, sc.ac, "AC")?);
        let q = frame.components[sc.index].quant;
        quant.push(tables.quant[q].ok_or_else(|| format!("corrupt JPEG: quantisation table {q} is never defined"))?);
    }
    let (mx, my, layout) = mcu_layout(frame, comps);
    let total = mx * my;
    let mut pred = vec![0i32; comps.len()];
    let mut expected = 0u8;
    let mut ran_out_seen = false;
    let mut coef = [0i16; 64];
    for mcu in 0..total {
        if restart(reader, interval, mcu, total, &mut expected)? {
            pred.iter_mut().for_each(|p| *p = 0);
        }
        ran_out_seen |= reader.ran_out;
        let (mcu_x, mcu_y) = (mcu % mx, mcu / mx);
        for &(s, bx, by) in &layout {
            let c = &frame.components[comps[s].index];
            coef.fill(0);
            // After the data ran out, libjpeg leaves the remaining blocks of the interval zero.
            if !reader.ran_out {
                let t = reader.decode(dc_tab[s]);
                let diff = reader.receive_extend(u32::from(t & 15));
                pred[s] = pred[s].wrapping_add(diff);
                coef[0] = pred[s] as i16;
                let mut k = 1;
                while k < 64 {
                    let rs = reader.decode(ac_tab[s]);
                    let (r, size) = (usize::from(rs >> 4), u32::from(rs & 15));
                    if size != 0 {
                        k += r;
                        coef[NATURAL_ORDER[k]] = reader.receive_extend(size) as i16;
                    } else if r == 15 {
                        k += 15;
                    } else {
                        break;
                    }
                    k += 1;
                }
            }
            let (x, y) = if comps.len() == 1 {
                (mcu_x, mcu_y)
            } else {
                (mcu_x * c.h + bx, mcu_y * c.v + by)
            };
            let stride = c.blocks_w * 8;
            let plane = &mut planes[comps[s].index];
            idct_islow(&coef, &quant[s], &mut plane[y * 8 * stride + x * 8..], stride);
        }
    }
    reader.ran_out |= ran_out_seen;
    Ok(())
}

/// One progressive scan, refining the coefficients of its components.
pub(crate) fn progressive(
    frame: &Frame,
    comps: &[ScanComponent],
    sp: Spectral,
    tables: &Tables<'_>,
    interval: usize,
    reader: &mut BitReader<'_>,
    coefs: &mut [Vec<i16>],
) -> R<()> {
    let dc_scan = sp.ss == 0;
    if sp.se > 63 || sp.ss > sp.se || (dc_scan && sp.se != 0) || (!dc_scan && comps.len() != 1) || sp.ah > 13 || sp.al > 13 {
        return Err(format!(
            "corrupt JPEG: progressive scan parameters Ss={} Se={} Ah={} Al={}",
            sp.ss, sp.se, sp.ah, sp.al
        ));
    }
    let mut dc_tab = Vec::new();
    let mut ac_tab = Vec::new();
    for sc in comps {
        dc_tab.push(if dc_scan && sp.ah == 0 {
            Some(table(tables.dc, sc.dc, "DC")?)
        } else {
            None
        });
        ac_tab.push(if dc_scan { None } else { Some(table(tables.ac, sc.ac, "AC")?) });
    }
    let (mx, my, layout) = mcu_layout(frame, comps);
    let total = mx * my;
    let mut pred = vec![0i32; comps.len()];
    let mut eobrun = 0u32;
    let mut expected = 0u8;
    let mut ran_out_seen = false;
    let (p1, m1) = (1i32 << sp.al, -1i32 << sp.al);
    for mcu in 0..total {
        if restart(reader, interval, mcu, total, &mut expected)? {
            pred.iter_mut().for_each(|p| *p = 0);
            eobrun = 0;
        }
        ran_out_seen |= reader.ran_out;
        if reader.ran_out {
            continue;
        }
        let (mcu_x, mcu_y) = (mcu % mx, mcu / mx);
        for &(s, bx, by) in &layout {
            let c = &frame.components[comps[s].index];
            let (x, y) = if comps.len() == 1 {
                (mcu_x, mcu_y)
            } else {
                (mcu_x * c.h + bx, mcu_y * c.v + by)
            };
            let at = (y * c.blocks_w + x) * 64;
            let block = &mut coefs[comps[s].index][at..at + 64];
            match (dc_scan, sp.ah == 0) {
                (true, true) => {
                    let Some(t) = dc_tab[s] else { continue };
                    let size = reader.decode(t);
                    let diff = reader.receive_extend(u32::from(size & 15));
                    pred[s] = pred[s].wrapping_add(diff);
                    block[0] = pred[s].wrapping_shl(sp.al) as i16;
                }
                (true, false) => {
                    if reader.bit() {
                        block[0] |= p1 as i16;
                    }
                }
                (false, true) => {
                    let Some(t) = ac_tab[s] else { continue };
                    if eobrun > 0 {
                        eobrun -= 1;
                        continue;
                    }
                    let mut k = sp.ss;
                    while k <= sp.se {
                        let rs = reader.decode(t);
                        let (r, size) = (usize::from(rs >> 4), u32::from(rs & 15));
                        if size != 0 {
                            k += r;
                            let v = reader.receive_extend(size);
                            block[NATURAL_ORDER[k]] = v.wrapping_shl(sp.al) as i16;
                        } else if r == 15 {
                            k += 15;
                        } else {
                            eobrun = 1 << r;
                            if r != 0 {
                                eobrun += reader.bits(r as u32) as u32;
                            }
                            eobrun -= 1;
                            break;
                        }
                        k += 1;
                    }
                }
                (false, false) => {
                    let Some(t) = ac_tab[s] else { continue };
                    refine_ac(reader, t, block, sp, p1, m1, &mut eobrun);
                }
            }
        }
    }
    reader.ran_out |= ran_out_seen;
    Ok(())
}

/// `decode_mcu_AC_refine`: one more bit of every nonzero coefficient in the band, and the
/// newly nonzero ones.
fn refine_ac(reader: &mut BitReader<'_>, t: &Table, block: &mut [i16], sp: Spectral, p1: i32, m1: i32, eobrun: &mut u32) {
    let refine = |reader: &mut BitReader<'_>, c: &mut i16| {
        if reader.bit() && i32::from(*c) & p1 == 0 {
            *c = if *c >= 0 {
                (i32::from(*c) + p1) as i16
            } else {
                (i32::from(*c) + m1) as i16
            };
        }
    };
    let mut k = sp.ss;
    if *eobrun == 0 {
        while k <= sp.se {
            let rs = reader.decode(t);
            let (mut r, size) = (i32::from(rs >> 4), rs & 15);
            let mut s = 0i32;
            if size != 0 {
                // size != 1 is corrupt; libjpeg warns and goes on.
                s = if reader.bit() { p1 } else { m1 };
            } else if r != 15 {
                *eobrun = 1 << r;
                if r != 0 {
                    *eobrun += reader.bits(r as u32) as u32;
                }
                break;
            }
            while k <= sp.se {
                let c = &mut block[NATURAL_ORDER[k]];
                if *c != 0 {
                    refine(reader, c);
                } else {
                    r -= 1;
                    if r < 0 {
                        break;
                    }
                }
                k += 1;
            }
            if s != 0 {
                block[NATURAL_ORDER[k]] = s as i16;
            }
            k += 1;
        }
    }
    if *eobrun > 0 {
        while k <= sp.se {
            let c = &mut block[NATURAL_ORDER[k]];
            if *c != 0 {
                refine(reader, c);
            }
            k += 1;
        }
        *eobrun -= 1;
    }
}

/// The final IDCT of a progressive image's coefficients into sample planes.
pub(crate) fn progressive_to_planes(frame: &Frame, coefs: &[Vec<i16>], quant: &[Option<[u16; 64]>; 4]) -> R<Vec<Vec<u8>>> {
    let mut planes = Vec::with_capacity(frame.components.len());
    for (c, coef) in frame.components.iter().zip(coefs) {
        let q = quant[c.quant].ok_or_else(|| format!("corrupt JPEG: quantisation table {} is never defined", c.quant))?;
        let stride = c.blocks_w * 8;
        let mut plane = vec![0u8; c.blocks_w * c.blocks_h * 64];
        for by in 0..c.blocks_h {
            for bx in 0..c.blocks_w {
                let at = (by * c.blocks_w + bx) * 64;
                let block: &[i16; 64] = coef[at..at + 64].try_into().map_err(|_| "coefficient buffer".to_string())?;
                idct_islow(block, &q, &mut plane[by * 8 * stride + bx * 8..], stride);
            }
        }
        planes.push(plane);
    }
    Ok(planes)
}
