//! Keras HDF5 weights: the Keras 2 `save_weights` layout and the Keras 1 release layout.

use std::collections::{HashMap, HashSet};

use hdf5_pure::{AttrValue, DType, Dataset, File, Group};

use super::{Convention, ReadContext, StoredTensor, WeightFile};
use crate::error::Result;

const FORMAT: &str = "HDF5 (Keras)";

/// A string-list attribute, in whichever HDF5 string encoding the writer chose; an empty
/// numeric array (what h5py writes for an empty list) is an empty list.
fn strings(v: &AttrValue) -> Option<Vec<String>> {
    Some(match v {
        AttrValue::StringArray(v)
        | AttrValue::AsciiStringArray(v)
        | AttrValue::VarLenStringArray(v)
        | AttrValue::VarLenAsciiStringArray(v) => v.clone(),
        AttrValue::StringArraySized { values, .. } | AttrValue::AsciiStringArraySized { values, .. } => values.clone(),
        AttrValue::String(s) | AttrValue::AsciiString(s) | AttrValue::VarLenString(s) | AttrValue::VarLenAsciiString(s) => vec![s.clone()],
        AttrValue::StringSized { value, .. } | AttrValue::AsciiStringSized { value, .. } => {
            vec![value.clone()]
        }
        AttrValue::F64Array(a) if a.is_empty() => vec![],
        AttrValue::F32Array(a) if a.is_empty() => vec![],
        AttrValue::U8Array(a) if a.is_empty() => vec![],
        AttrValue::I64Array(a) if a.is_empty() => vec![],
        _ => return None,
    })
}

/// Reads attribute `name`, or its chunks `name0`, `name1`, ... (Keras splits long lists).
fn string_list(attrs: &HashMap<String, AttrValue>, name: &str, file: &WeightFile, owner: &str) -> Result<Option<Vec<String>>> {
    let decode = |key: &str, v: &AttrValue| {
        strings(v).ok_or_else(|| file.format_error(format!("attribute {key} of {owner} is not a list of strings")))
    };
    if let Some(v) = attrs.get(name) {
        return decode(name, v).map(Some);
    }
    let mut out = Vec::new();
    let mut chunk = 0;
    while let Some(v) = attrs.get(&format!("{name}{chunk}")) {
        out.extend(decode(name, v)?);
        chunk += 1;
    }
    Ok((chunk > 0).then_some(out))
}

/// Keras' name for a `DepthwiseConv2D` (or `SeparableConv2D`) layer's per-channel kernel.
const DEPTHWISE_KERNEL: &str = "depthwise_kernel";

/// A Keras depthwise kernel's shape `(kh, kw, channels, multiplier)` as the model holds it:
/// the kernel of a convolution with `channels` groups of one input channel each,
/// `(kh, kw, 1, channels * multiplier)`, output channel `c * multiplier + m` being input channel
/// `c`'s `m`-th filter (TensorFlow's order), so the values need no reordering.
fn depthwise_as_grouped(shape: &[usize]) -> Option<Vec<usize>> {
    match *shape {
        [kh, kw, c, m] => Some(vec![kh, kw, 1, c.checked_mul(m)?]),
        _ => None,
    }
}

/// `kernel:0` -> `kernel`, `conv1_W:0` (in layer `conv1`) -> `kernel`, `bn_running_std:0` ->
/// `moving_variance` (Keras 1 stored the variance under that name).
fn canonical_slot(layer: &str, weight_name: &str) -> String {
    let last = weight_name.rsplit('/').next().unwrap_or(weight_name);
    let bare = match last.rsplit_once(':') {
        Some((head, tail)) if tail.bytes().all(|b| b.is_ascii_digit()) => head,
        _ => last,
    };
    let bare = bare.strip_prefix(layer).and_then(|s| s.strip_prefix('_')).unwrap_or(bare);
    match bare {
        "kernel" | "W" => "kernel",
        "bias" | "b" => "bias",
        "running_mean" | "moving_mean" => "moving_mean",
        "running_std" | "moving_variance" => "moving_variance",
        other => other,
    }
    .to_string()
}

/// Parses a Keras HDF5 weights file held in `bytes`.
///
/// Everything the attributes name is checked before any tensor data is read: a layer or a
/// weight listed twice is an error, the number of names is limited by
/// [`LoadBudget::max_entries`](crate::budget::LoadBudget::max_entries), and the total size of
/// the datasets to decode is charged to the budget from their headers.
pub(super) fn read(bytes: Vec<u8>, name: &str, cx: &mut ReadContext<'_>) -> Result<WeightFile> {
    let file_len = bytes.len();
    let mut out = WeightFile::empty(name, FORMAT, Convention::Keras);
    let h5 = File::from_bytes(bytes).map_err(|e| out.format_error(e.to_string()))?;
    let root = h5.root();
    let h5err = |e: hdf5_pure::Error, what: &str| out.format_error(format!("{what}: {e}"));
    let root_attrs = root.attrs().map_err(|e| h5err(e, "root attributes"))?;
    let layers = string_list(&root_attrs, "layer_names", &out, "the root")?
        .ok_or_else(|| out.format_error("no layer_names attribute at the root: not a Keras weights file (a full saved model keeps them under model_weights/, save the weights alone)"))?;
    cx.budget.check_entries(layers.len(), format_args!("{name}: layer_names"))?;
    let mut seen_layers = HashSet::new();
    for layer in &layers {
        if !seen_layers.insert(layer.as_str()) {
            return Err(out.format_error(format!("layer {layer} is listed twice in layer_names")));
        }
    }
    // The root's groups in one walk (a lookup by name walks all of a large group's links).
    let mut groups: HashMap<String, Group> = root
        .iter_groups()
        .map_err(|e| h5err(e, "the root's groups"))?
        .filter(|(n, _)| seen_layers.contains(n.as_str()))
        .collect();
    groups.shrink_to_fit();
    // Every (layer, weight) the attributes name, checked for repeats and counted, before any
    // dataset is opened.
    let mut plan = Vec::new();
    let mut keys = HashSet::new();
    for layer in &layers {
        let group = groups
            .get(layer)
            .ok_or_else(|| out.format_error(format!("layer group {layer}: not found")))?;
        let attrs = group.attrs().map_err(|e| h5err(e, &format!("attributes of {layer}")))?;
        let weights = string_list(&attrs, "weight_names", &out, layer)?.unwrap_or_default();
        cx.budget
            .check_entries(plan.len().saturating_add(weights.len()), format_args!("{name}: weight_names"))?;
        for w in weights {
            let slot = canonical_slot(layer, &w);
            // A `DepthwiseConv2D` kernel is the kernel of a convolution with one group per
            // input channel: its `(kh, kw, channels, multiplier)` is reshaped below.
            let depthwise = slot == DEPTHWISE_KERNEL;
            let key = format!("{layer}/{}", if depthwise { "kernel" } else { slot.as_str() });
            if !keys.insert(key.clone()) {
                return Err(out.format_error(format!("tensor {key} appears twice (weight {w} of layer {layer})")));
            }
            plan.push((layer.as_str(), w, key, depthwise));
        }
    }
    // Headers next: shapes, types and sizes, all charged before any data is read.
    let mut headers = Vec::with_capacity(plan.len());
    for (layer, w, key, depthwise) in plan {
        let group = groups
            .get(layer)
            .ok_or_else(|| out.format_error(format!("layer group {layer}: not found")))?;
        let (ds, shape) = dataset_header(group, layer, &w, file_len, &out)?;
        let shape = if depthwise {
            depthwise_as_grouped(&shape).ok_or_else(|| {
                out.format_error(format!(
                    "layer {layer}: a depthwise kernel is (kh, kw, channels, depth multiplier), found {w} of shape {shape:?}"
                ))
            })?
        } else {
            shape
        };
        let count = crate::error::checked_product(&key, &shape)?;
        if cx.wants(Convention::Keras, &key, count) {
            cx.charge_tensor(name, &key, count)?;
            headers.push((key, Some(ds), shape));
        } else {
            headers.push((key, None, shape));
        }
    }
    for (key, ds, shape) in headers {
        match ds {
            Some(ds) => {
                let data = ds.read_f32().map_err(|e| out.format_error(format!("data of {key}: {e}")))?;
                let count = crate::error::checked_product(&key, &shape)?;
                if data.len() != count {
                    return Err(out.format_error(format!("{key} holds {} values for its shape {shape:?}", data.len())));
                }
                out.insert(key, StoredTensor::new(shape, data)?)?;
            }
            None => out.insert_skipped(key, shape)?,
        }
    }
    Ok(out)
}

/// Opens dataset `weight` of `group` and checks its header: a float type, and no more values
/// than the file could hold uncompressed (Keras stores weights uncompressed), so a corrupt
/// header is refused before anything is allocated for it.
fn dataset_header(group: &Group, layer: &str, weight: &str, file_len: usize, out: &WeightFile) -> Result<(Dataset, Vec<usize>)> {
    let at = format!("{layer}/{weight}");
    let ds = group.dataset(weight).map_err(|e| out.format_error(format!("dataset {at}: {e}")))?;
    let shape: Vec<usize> = ds
        .shape()
        .map_err(|e| out.format_error(format!("shape of {at}: {e}")))?
        .into_iter()
        .map(|d| usize::try_from(d).map_err(|_| out.format_error(format!("{at} has a dimension of {d}"))))
        .collect::<Result<_>>()?;
    let count = crate::error::checked_product(&at, &shape)?;
    let dtype = ds.dtype().map_err(|e| out.format_error(format!("type of {at}: {e}")))?;
    let width = match dtype {
        DType::F32 => 4,
        DType::F64 => 8,
        other => {
            return Err(crate::Error::Dtype {
                path: out.name().into(),
                key: at,
                dtype: format!("{other:?}"),
            })
        }
    };
    if count.saturating_mul(width) > file_len {
        return Err(out.format_error(format!(
            "{at} declares {count} values of {width} bytes, more than the file's {file_len} bytes"
        )));
    }
    Ok((ds, shape))
}

#[cfg(test)]
mod tests {
    use super::canonical_slot;

    #[test]
    fn slots_of_both_keras_layouts() {
        assert_eq!(canonical_slot("conv1", "conv1/kernel:0"), "kernel");
        assert_eq!(canonical_slot("conv1", "conv1_W:0"), "kernel");
        assert_eq!(canonical_slot("conv1", "conv1_b:0"), "bias");
        assert_eq!(canonical_slot("bn_conv1", "bn_conv1_running_std:0"), "moving_variance");
        assert_eq!(canonical_slot("bn_conv1", "bn_conv1/moving_mean:0"), "moving_mean");
        assert_eq!(canonical_slot("bn2a_branch2a", "bn2a_branch2a_gamma:0"), "gamma");
    }
}
