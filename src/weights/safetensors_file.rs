//! PyTorch `state_dict`s saved as `.safetensors`.

use safetensors::{Dtype, SafeTensors};

use super::save::CONVENTION_KEY;
use super::{floats_from_le, Convention, ReadContext, StoredTensor, WeightFile};
use crate::error::Result;

/// Parses a `.safetensors` file held in `bytes`. `num_batches_tracked` counters (integers, not
/// weights) are skipped; other non-float tensors are refused. The names follow PyTorch's
/// convention unless the file's metadata says otherwise (files this crate writes record theirs).
pub(super) fn read(bytes: &[u8], name: &str, cx: &mut ReadContext<'_>) -> Result<WeightFile> {
    let mut out = WeightFile::empty(name, "safetensors", Convention::Torch);
    let st = SafeTensors::deserialize(bytes).map_err(|e| out.format_error(e.to_string()))?;
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| out.format_error(e.to_string()))?;
    match meta.metadata().as_ref().and_then(|m| m.get(CONVENTION_KEY)).map(String::as_str) {
        None | Some("torch") => {}
        Some("keras") => out.convention = Convention::Keras,
        Some(other) => return Err(out.format_error(format!("unknown naming convention {other:?} in the metadata"))),
    }
    cx.budget.check_entries(st.len(), format_args!("{name}: the tensors"))?;
    let mut entries = st.tensors();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, view) in entries {
        let count = crate::error::checked_product(&key, view.shape())?;
        if !key.ends_with("num_batches_tracked") && !cx.wants(out.convention, &key, count) {
            out.insert_skipped(key, view.shape().to_vec())?;
            continue;
        }
        let dtype = match view.dtype() {
            Dtype::F32 => "f32",
            Dtype::F64 => "f64",
            Dtype::I64 if key.ends_with("num_batches_tracked") => continue,
            other => &format!("{other:?}"),
        };
        if !matches!(dtype, "f32" | "f64") {
            return Err(crate::Error::Dtype {
                path: name.into(),
                key,
                dtype: dtype.into(),
            });
        }
        cx.charge_tensor(name, &key, count)?;
        let data = floats_from_le(view.data(), dtype, name, &key)?;
        let t = StoredTensor::new(view.shape().to_vec(), data)
            .map_err(|_| out.format_error(format!("{key}: data does not fill its shape {:?}", view.shape())))?;
        out.insert(key, t)?;
    }
    Ok(out)
}
