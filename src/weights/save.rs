//! Writing a model's parameters to `.safetensors`, under its own names, in either convention.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::Dtype;

use super::Convention;
use crate::error::{Error, Result};
use crate::layers::{Layer, LayerPath, ParamKind};

/// The `__metadata__` entry naming the convention a file was written in.
pub(crate) const CONVENTION_KEY: &str = "convnet.convention";

impl Convention {
    /// How [`CONVENTION_KEY`] spells it.
    pub(crate) fn metadata_name(self) -> &'static str {
        match self {
            Convention::Keras => "keras",
            Convention::Torch => "torch",
        }
    }
}

/// Converts one parameter from the model's layout to the file's (the inverse of the loader's
/// conversion): PyTorch kernels `(out, in, kh, kw)` and `Linear` weights `(out, in)`.
fn to_file_layout(convention: Convention, kind: ParamKind, v: ndarray::ArrayViewD<'_, f32>) -> ndarray::ArrayD<f32> {
    let v = match (convention, kind, v.ndim()) {
        (Convention::Torch, ParamKind::Kernel, 4) => v.permuted_axes(ndarray::IxDyn(&[3, 2, 0, 1])),
        (Convention::Torch, ParamKind::Kernel, 2) => v.reversed_axes(),
        _ => v,
    };
    v.as_standard_layout().into_owned()
}

/// Every parameter of `model` (BatchNorm statistics included) as a `.safetensors` file in
/// memory, named and laid out as `convention` names them ([`Convention::key`]), with the
/// convention recorded in the file's metadata so that [`WeightFile`](super::WeightFile) reads it
/// back under the same names. Two parameters mapping to one key (two nested layers with the
/// same name under Keras' convention) are an [`Error::Config`].
pub fn to_safetensors(model: &dyn Layer, convention: Convention) -> Result<Vec<u8>> {
    let mut tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    let mut clash = None;
    model.visit_params(&mut LayerPath::default(), &mut |path, kind, v| {
        let key = convention.key(path, kind);
        let here = format!("{path} ({})", kind.keras_name());
        if let Some(first) = owner.get(&key) {
            clash.get_or_insert_with(|| format!("{first} and {here} both map to the key {key}"));
            return;
        }
        let t = to_file_layout(convention, kind, v);
        tensors.insert(key.clone(), (t.shape().to_vec(), t.iter().copied().collect()));
        owner.insert(key, here);
    });
    if let Some(clash) = clash {
        return Err(Error::config(
            "weights writer",
            format!("{clash}: give the layers unique names, or save in the torch convention (full paths)"),
        ));
    }
    let metadata = HashMap::from([(CONVENTION_KEY.to_string(), convention.metadata_name().to_string())]);
    f32_safetensors(tensors, metadata)
}

/// float32 tensors (name, shape, row-major values) and metadata as `.safetensors` bytes.
pub(crate) fn f32_safetensors(tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>, metadata: HashMap<String, String>) -> Result<Vec<u8>> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(k, (shape, v))| (k, shape, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views = bytes
        .iter()
        .map(|(k, shape, b)| {
            TensorView::new(Dtype::F32, shape.clone(), b)
                .map(|v| (k.clone(), v))
                .map_err(|e| Error::config("safetensors writer", format!("{k}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| Error::config("safetensors writer", e.to_string()))?;
    canonical_header(bytes)
}

/// The same file with its JSON header's keys in sorted order (the writer takes the metadata as
/// a hash map, whose order varies from run to run), so equal contents give equal bytes. The
/// tensors' offsets count from the end of the header, so they stay valid.
fn canonical_header(bytes: Vec<u8>) -> Result<Vec<u8>> {
    let bad = |why: &str| Error::config("safetensors writer", why.to_string());
    let n = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| bad("no header"))? as usize;
    let header = bytes.get(8..8 + n).ok_or_else(|| bad("a short header"))?;
    // serde_json's maps are sorted by key.
    let value: serde_json::Value = serde_json::from_slice(header).map_err(|e| bad(&e.to_string()))?;
    let mut json = serde_json::to_vec(&value).map_err(|e| bad(&e.to_string()))?;
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + json.len() + bytes.len() - 8 - n);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&bytes[8 + n..]);
    Ok(out)
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, renamed.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(tmp.display(), e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path.display(), e)
    })
}

/// [`to_safetensors`] written to `path`, atomically (a temporary file beside it, renamed).
pub fn save_safetensors(model: &dyn Layer, path: impl AsRef<Path>, convention: Convention) -> Result<()> {
    write_atomically(path.as_ref(), &to_safetensors(model, convention)?)
}
