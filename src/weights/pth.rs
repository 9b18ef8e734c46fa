//! PyTorch `.pth` files as `torch.save` writes them: a zip archive holding `*/data.pkl` (a
//! pickle naming storages) and `*/data/<key>` (each storage's raw little-endian bytes).

use std::io::{Cursor, Read};

use zip::ZipArchive;

use super::pickle::{self, TensorRef};
use super::{floats_from_le, Convention, StoredTensor, WeightFile};
use crate::error::{Error, Result};

const FORMAT: &str = "PyTorch .pth";

/// Parses a `.pth` file held in `bytes`.
pub(super) fn read(bytes: Vec<u8>, name: &str) -> Result<WeightFile> {
    let mut out = WeightFile::empty(name, FORMAT, Convention::Torch);
    let file_len = bytes.len() as u64;
    let mut zip = ZipArchive::new(Cursor::new(bytes)).map_err(|e| out.format_error(format!("not a zip archive: {e}")))?;
    let pkl = zip
        .file_names()
        .find(|n| n.ends_with("data.pkl") && n.matches('/').count() == 1)
        .map(str::to_string)
        .ok_or_else(|| out.format_error("no */data.pkl in the archive (legacy non-zip torch.save files are not supported)"))?;
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    if let Ok(order) = read_entry(&mut zip, &format!("{prefix}byteorder"), file_len, &out) {
        if order != b"little" {
            return Err(out.format_error(format!(
                "byte order {:?}; only little-endian files are supported",
                String::from_utf8_lossy(&order)
            )));
        }
    }
    let pickle_bytes = read_entry(&mut zip, &pkl, file_len, &out)?;
    let entries = pickle::state_dict(&pickle_bytes).map_err(|reason| Error::UnsafePickle { path: name.into(), reason })?;
    for (key, t) in entries {
        if key.ends_with("num_batches_tracked") {
            continue; // a training counter, not a weight
        }
        let storage = read_entry(&mut zip, &format!("{prefix}data/{}", t.key), file_len, &out)?;
        let tensor = gather(&t, &storage, name, &key, &out)?;
        out.insert(key, tensor)?;
    }
    Ok(out)
}

fn read_entry(zip: &mut ZipArchive<Cursor<Vec<u8>>>, entry: &str, file_len: u64, out: &WeightFile) -> Result<Vec<u8>> {
    let mut f = zip.by_name(entry).map_err(|e| out.format_error(format!("{entry}: {e}")))?;
    // torch.save stores entries uncompressed; refuse a header claiming more than the file holds.
    if f.size() > file_len.saturating_mul(if f.compression() == zip::CompressionMethod::Stored { 1 } else { 64 }) {
        return Err(out.format_error(format!("{entry} claims {} bytes in a file of {file_len}", f.size())));
    }
    let mut buf = Vec::with_capacity(f.size() as usize);
    f.read_to_end(&mut buf).map_err(|e| out.format_error(format!("{entry}: {e}")))?;
    Ok(buf)
}

/// Copies a (possibly strided) view out of its storage into a row-major tensor.
fn gather(t: &TensorRef, storage: &[u8], file: &str, key: &str, out: &WeightFile) -> Result<StoredTensor> {
    let width = match t.dtype.as_str() {
        "f32" => 4,
        "f64" => 8,
        other => {
            return Err(Error::Dtype {
                path: file.into(),
                key: key.into(),
                dtype: other.into(),
            })
        }
    };
    if storage.len() < t.numel.saturating_mul(width) {
        return Err(out.format_error(format!(
            "storage {} of {key} holds {} bytes, {} elements of {width} bytes expected",
            t.key,
            storage.len(),
            t.numel
        )));
    }
    let values = floats_from_le(&storage[..t.numel * width], &t.dtype, file, key)?;
    let count = crate::error::checked_product(key, &t.shape)?;
    let mut data = Vec::with_capacity(count);
    let mut index = vec![0usize; t.shape.len()];
    for _ in 0..count {
        let at = t.offset + index.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
        let v = values
            .get(at)
            .ok_or_else(|| out.format_error(format!("{key} reads element {at} of a storage of {}", t.numel)))?;
        data.push(*v);
        for axis in (0..index.len()).rev() {
            index[axis] += 1;
            if index[axis] < t.shape[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
    StoredTensor::new(t.shape.clone(), data)
}
