//! PyTorch `.pth` files as `torch.save` writes them.
//!
//! - The zip format (PyTorch 1.6 and later): an archive holding `*/data.pkl` (a pickle naming
//!   storages) and `*/data/<key>` (each storage's raw little-endian bytes).
//! - The legacy format (`_use_new_zipfile_serialization=False`, and every release before 1.6):
//!   five pickles in a row (a magic number, a protocol version, the system's type sizes, the
//!   object, the sorted list of storage keys), then each storage in that order as an `i64`
//!   element count followed by its bytes.
//!
//! Each storage is located once, without copying when it is stored uncompressed, and shared by
//! every tensor viewing it; every view is checked to lie inside its storage and every tensor's
//! size is charged to the [`LoadBudget`](crate::budget::LoadBudget) before it is allocated.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{Cursor, Read};

use zip::ZipArchive;

use super::pickle::{self, TensorRef, Value};
use super::{floats_from_le, Convention, ReadContext, StoredTensor, WeightFile};
use crate::error::{Error, Result};

const FORMAT: &str = "PyTorch .pth";

/// `torch.serialization.MAGIC_NUMBER` (0x1950a86a20f9469cfc6c) as the LONG1 opcode of a
/// protocol-2 pickle writes it: the legacy format's first bytes.
const LEGACY_MAGIC: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.";
/// `torch.serialization.PROTOCOL_VERSION`.
const LEGACY_PROTOCOL_VERSION: i64 = 1001;

/// True when `bytes` start like a legacy (pre-zip) `torch.save` file.
pub(super) fn is_legacy(bytes: &[u8]) -> bool {
    bytes.starts_with(LEGACY_MAGIC)
}

/// Parses a `.pth` file held in `bytes`.
pub(super) fn read(bytes: &[u8], name: &str, cx: &mut ReadContext<'_>) -> Result<WeightFile> {
    if is_legacy(bytes) {
        read_legacy(bytes, name, cx)
    } else {
        read_zip(bytes, name, cx)
    }
}

/// The byte width of a storage's element type, for the float types this crate loads.
fn float_width(t: &TensorRef, file: &str, key: &str) -> Result<usize> {
    match t.dtype.as_str() {
        "f32" => Ok(4),
        "f64" => Ok(8),
        other => Err(Error::Dtype {
            path: file.into(),
            key: key.into(),
            dtype: other.into(),
        }),
    }
}

/// Turns the pickle's tensors into the file's tensors, fetching each storage's bytes once
/// through `storage` (which may fail, or find the key absent).
fn collect<'b>(
    entries: Vec<(String, TensorRef)>,
    name: &str,
    cx: &mut ReadContext<'_>,
    out: &mut WeightFile,
    mut storage: impl FnMut(&str, &mut ReadContext<'_>, &WeightFile) -> Result<Cow<'b, [u8]>>,
) -> Result<()> {
    cx.budget
        .check_entries(entries.len(), format_args!("{name}: the state_dict's tensors"))?;
    let mut storages: HashMap<String, Cow<'b, [u8]>> = HashMap::new();
    for (key, t) in entries {
        if key.ends_with("num_batches_tracked") {
            continue; // a training counter, not a weight
        }
        let count = crate::error::checked_product(&key, &t.shape)?;
        if !cx.wants(Convention::Torch, &key, count) {
            out.insert_skipped(key, t.shape)?;
            continue;
        }
        let width = float_width(&t, name, &key)?;
        if !storages.contains_key(&t.key) {
            let bytes = storage(&t.key, cx, out)?;
            storages.insert(t.key.clone(), bytes);
        }
        let bytes = &storages[&t.key];
        let needed = t.numel.checked_mul(width).filter(|&n| n <= bytes.len()).ok_or_else(|| {
            out.format_error(format!(
                "storage {} of {key} holds {} bytes, {} elements of {width} bytes expected",
                t.key,
                bytes.len(),
                t.numel
            ))
        })?;
        cx.charge_tensor(name, &key, count)?;
        let tensor = gather(&t, &bytes[..needed], width, name, &key)?;
        out.insert(key, tensor)?;
    }
    Ok(())
}

fn read_zip(bytes: &[u8], name: &str, cx: &mut ReadContext<'_>) -> Result<WeightFile> {
    let mut out = WeightFile::empty(name, FORMAT, Convention::Torch);
    let mut zip = ZipArchive::new(Cursor::new(bytes)).map_err(|e| out.format_error(format!("not a zip archive: {e}")))?;
    cx.budget.check_entries(zip.len(), format_args!("{name}: the archive's members"))?;
    let pkl = zip
        .file_names()
        .find(|n| n.ends_with("data.pkl") && n.matches('/').count() == 1)
        .map(str::to_string)
        .ok_or_else(|| out.format_error("no */data.pkl in the archive"))?;
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    if let Ok(order) = entry(&mut zip, bytes, &format!("{prefix}byteorder"), cx, &out) {
        if *order != *b"little" {
            return Err(out.format_error(format!(
                "byte order {:?}; only little-endian files are supported",
                String::from_utf8_lossy(&order)
            )));
        }
    }
    let pickle_bytes = entry(&mut zip, bytes, &pkl, cx, &out)?;
    let parsed = pickle::parse(&pickle_bytes, cx.budget, &mut cx.inflated, name)?;
    let entries = parsed
        .state_dict()
        .map_err(|reason| Error::UnsafePickle { path: name.into(), reason })?;
    drop(parsed);
    collect(entries, name, cx, &mut out, |key, cx, out| {
        entry(&mut zip, bytes, &format!("{prefix}data/{key}"), cx, out)
    })?;
    Ok(out)
}

/// One member's bytes: a slice of the file when stored (as `torch.save` stores them), else
/// inflated within the budget and checked to be exactly the declared size.
fn entry<'b>(
    zip: &mut ZipArchive<Cursor<&'b [u8]>>,
    file: &'b [u8],
    entry: &str,
    cx: &mut ReadContext<'_>,
    out: &WeightFile,
) -> Result<Cow<'b, [u8]>> {
    let mut f = zip.by_name(entry).map_err(|e| out.format_error(format!("{entry}: {e}")))?;
    let size = f.size();
    if f.compression() == zip::CompressionMethod::Stored {
        let start = f.data_start().ok_or_else(|| out.format_error(format!("{entry}: no data offset")))?;
        let range = usize::try_from(start)
            .ok()
            .zip(usize::try_from(size).ok())
            .and_then(|(s, n)| Some(s..s.checked_add(n)?))
            .filter(|r| r.end <= file.len() && f.compressed_size() == size);
        let range =
            range.ok_or_else(|| out.format_error(format!("{entry} claims {size} bytes at offset {start} in a file of {}", file.len())))?;
        return Ok(Cow::Borrowed(&file[range]));
    }
    cx.inflated
        .charge(size, format_args!("{}: {entry} inflated ({size} bytes declared)", out.name()))?;
    let mut buf = Vec::with_capacity(size as usize);
    (&mut f)
        .take(size.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| out.format_error(format!("{entry}: {e}")))?;
    if buf.len() as u64 != size {
        return Err(out.format_error(format!("{entry} declares {size} bytes and holds {}", buf.len())));
    }
    Ok(Cow::Owned(buf))
}

fn read_legacy(bytes: &[u8], name: &str, cx: &mut ReadContext<'_>) -> Result<WeightFile> {
    let mut out = WeightFile::empty(name, FORMAT, Convention::Torch);
    let mut pos = LEGACY_MAGIC.len();
    let budget = cx.budget;
    let next = |pos: &mut usize, what: &str, cx: &mut ReadContext<'_>| -> Result<pickle::Pickle> {
        let p = pickle::parse(&bytes[*pos..], budget, &mut cx.inflated, name).map_err(|e| match e {
            Error::UnsafePickle { path, reason } => Error::UnsafePickle {
                path,
                reason: format!("{what}: {reason}"),
            },
            other => other,
        })?;
        *pos += p.end;
        Ok(p)
    };
    let version = next(&mut pos, "the protocol version", cx)?;
    if *version.root() != Value::Int(LEGACY_PROTOCOL_VERSION) {
        return Err(out.format_error(format!("legacy protocol version is not {LEGACY_PROTOCOL_VERSION}")));
    }
    let sys_info = next(&mut pos, "the system information", cx)?;
    check_sys_info(&sys_info, &out)?;
    let object = next(&mut pos, "the state_dict", cx)?;
    let entries = object
        .state_dict()
        .map_err(|reason| Error::UnsafePickle { path: name.into(), reason })?;
    drop(object);
    let keys = next(&mut pos, "the storage keys", cx)?;
    let Value::List(ids) = keys.root() else {
        return Err(out.format_error("the storage keys are not a list"));
    };
    // The storages follow in the order of the keys: an i64 element count, then the elements.
    let widths: HashMap<&str, usize> = entries
        .iter()
        .map(|(_, t)| {
            (
                t.key.as_str(),
                match t.dtype.as_str() {
                    "f64" | "i64" => 8,
                    "f32" | "i32" => 4,
                    "f16" | "bf16" | "i16" => 2,
                    _ => 1,
                },
            )
        })
        .collect();
    let mut located: HashMap<String, std::ops::Range<usize>> = HashMap::new();
    cx.budget.check_entries(ids.len(), format_args!("{name}: the storage keys"))?;
    for &id in ids {
        let Value::Str(key) = keys.get(id) else {
            return Err(out.format_error("a storage key is not a str"));
        };
        let count = bytes
            .get(pos..pos + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(i64::from_le_bytes)
            .ok_or_else(|| out.format_error(format!("truncated before storage {key}")))?;
        pos += 8;
        let width = *widths
            .get(key.as_str())
            .ok_or_else(|| out.format_error(format!("storage {key} is listed but no tensor uses it")))?;
        let len = usize::try_from(count)
            .ok()
            .and_then(|n| n.checked_mul(width))
            .filter(|&n| n <= bytes.len() - pos)
            .ok_or_else(|| out.format_error(format!("storage {key} claims {count} elements, more than the file holds")))?;
        if located.insert(key.clone(), pos..pos + len).is_some() {
            return Err(out.format_error(format!("storage {key} is listed twice")));
        }
        pos += len;
    }
    collect(entries, name, cx, &mut out, |key, _, out| {
        let range = located
            .get(key)
            .ok_or_else(|| out.format_error(format!("storage {key} is not in the file")))?;
        Ok(Cow::Borrowed(&bytes[range.clone()]))
    })?;
    Ok(out)
}

/// The legacy header's `{'protocol_version', 'little_endian', 'type_sizes'}`: only
/// little-endian files are read.
fn check_sys_info(p: &pickle::Pickle, out: &WeightFile) -> Result<()> {
    let Value::Dict(items) = p.root() else {
        return Err(out.format_error("the legacy system information is not a dict"));
    };
    for &(k, v) in items {
        if let (Value::Str(k), Value::Bool(little)) = (p.get(k), p.get(v)) {
            if k == "little_endian" && !little {
                return Err(out.format_error("a big-endian file; only little-endian files are supported"));
            }
        }
    }
    Ok(())
}

/// Copies a (possibly strided) view out of its storage's bytes into a row-major tensor. The
/// view was checked to lie inside the storage when the pickle built it.
fn gather(t: &TensorRef, storage: &[u8], width: usize, file: &str, key: &str) -> Result<StoredTensor> {
    let count = crate::error::checked_product(key, &t.shape)?;
    let contiguous = {
        let mut expect = 1usize;
        let mut ok = true;
        for (&d, &s) in t.shape.iter().zip(&t.stride).rev() {
            ok &= d == 1 || s == expect;
            expect = expect.saturating_mul(d);
        }
        ok
    };
    let data = if contiguous {
        floats_from_le(&storage[t.offset * width..(t.offset + count) * width], &t.dtype, file, key)?
    } else {
        let value = |at: usize| -> f32 {
            let b = &storage[at * width..(at + 1) * width];
            if width == 4 {
                f32::from_le_bytes([b[0], b[1], b[2], b[3]])
            } else {
                f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
            }
        };
        let mut data = Vec::with_capacity(count);
        let mut index = vec![0usize; t.shape.len()];
        for _ in 0..count {
            let at = t.offset + index.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
            data.push(value(at));
            for axis in (0..index.len()).rev() {
                index[axis] += 1;
                if index[axis] < t.shape[axis] {
                    break;
                }
                index[axis] = 0;
            }
        }
        data
    };
    StoredTensor::new(t.shape.clone(), data)
}
