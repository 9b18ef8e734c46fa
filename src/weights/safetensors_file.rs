//! PyTorch `state_dict`s saved as `.safetensors`.

use safetensors::{Dtype, SafeTensors};

use super::{floats_from_le, Convention, StoredTensor, WeightFile};
use crate::error::Result;

/// Parses a `.safetensors` file held in `bytes`. `num_batches_tracked` counters (integers, not
/// weights) are skipped; other non-float tensors are refused.
pub(super) fn read(bytes: &[u8], name: &str) -> Result<WeightFile> {
    let mut out = WeightFile::empty(name, "safetensors", Convention::Torch);
    let st = SafeTensors::deserialize(bytes).map_err(|e| out.format_error(e.to_string()))?;
    let mut entries = st.tensors();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, view) in entries {
        let dtype = match view.dtype() {
            Dtype::F32 => "f32",
            Dtype::F64 => "f64",
            Dtype::I64 if key.ends_with("num_batches_tracked") => continue,
            other => &format!("{other:?}"),
        };
        let data = floats_from_le(view.data(), dtype, name, &key)?;
        let t = StoredTensor::new(view.shape().to_vec(), data)
            .map_err(|_| out.format_error(format!("{key}: data does not fill its shape {:?}", view.shape())))?;
        out.insert(key, t)?;
    }
    Ok(out)
}
