//! Weights files, loaded **by name** into any model built from [`layers`](crate::layers).
//!
//! - Keras HDF5 ([`WeightFormat::KerasH5`]): what `model.save_weights("x.h5")` writes (Keras 2)
//!   and the 2016 release files (Keras 1, whose `running_std` holds the variance). Read by the
//!   pure-Rust `hdf5-pure`: no C HDF5 library needed.
//! - PyTorch `state_dict` as `.safetensors` ([`WeightFormat::Safetensors`]) and as the zip +
//!   pickle `torch.save` writes ([`WeightFormat::Pth`]); the pickle is interpreted, never
//!   executed: only the opcodes and globals a `state_dict` needs are accepted.
//!
//! Any model is written back with [`save_safetensors`] (its parameters and BatchNorm
//! statistics, under its own names in either [`Convention`]), and reloads strictly.
//!
//! Tensors are converted to this crate's layouts once, at load time: PyTorch's `(out, in, kh,
//! kw)` kernels become HWIO, `Linear` weights `(out, in)` become `(in, out)`.
//!
//! ```no_run
//! use convnet::models::{ResNet, ResNetConfig};
//! use convnet::weights::{LoadOptions, WeightFile};
//! let mut model = ResNet::new(ResNetConfig::keras_resnet50())?;
//! let file = WeightFile::open("resnet50_weights_tf_dim_ordering_tf_kernels.h5")?;
//! let report = file.load_into(&mut model, &LoadOptions::strict())?;
//! println!("{report}");
//! # Ok::<(), convnet::Error>(())
//! ```

mod keras_h5;
mod load;
mod pickle;
mod pth;
mod safetensors_file;
pub(crate) mod save;

pub use load::{LoadOptions, LoadReport, Mismatch};
pub use save::{save_safetensors, to_safetensors};

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::budget::{read_regular_file, LoadBudget, Spend};
use crate::error::{Error, Result, ShapeFmt};
use crate::layers::{Layer, LayerPath, ParamKind};

/// How a file names its tensors and lays them out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Convention {
    /// Keras: `layer/kernel`, `layer/moving_variance`, ... keyed by the layer's own (unique)
    /// name; kernels HWIO and `(in, out)`, as this crate stores them.
    Keras,
    /// PyTorch `state_dict`: `layer1.0.conv1.weight`, `bn1.running_var`, ... keyed by the full
    /// module path; kernels `(out, in, kh, kw)`, `Linear` weights `(out, in)`.
    Torch,
}

impl Convention {
    /// The key under which a file of this convention stores the parameter `kind` of the layer
    /// at `path`.
    pub fn key(self, path: &LayerPath, kind: ParamKind) -> String {
        match self {
            Convention::Keras => format!("{}/{}", path.leaf(), kind.keras_name()),
            Convention::Torch => {
                let slot = match kind {
                    ParamKind::Kernel | ParamKind::Gamma => "weight",
                    ParamKind::Bias | ParamKind::Beta => "bias",
                    ParamKind::MovingMean => "running_mean",
                    ParamKind::MovingVariance => "running_var",
                };
                format!("{}.{slot}", path.dotted())
            }
        }
    }
}

/// One tensor read from a file: its shape as stored and its values, row-major, as `f32`.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredTensor {
    /// Shape as stored in the file.
    pub shape: Vec<usize>,
    /// Values in row-major order.
    pub data: Vec<f32>,
}

impl StoredTensor {
    /// A tensor, checking that `data` fills `shape`.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let n = crate::error::checked_product("StoredTensor", &shape)?;
        if n != data.len() {
            return Err(Error::shape(
                "StoredTensor",
                format!("{n} values for {}", ShapeFmt(&shape)),
                format!("{}", data.len()),
            ));
        }
        Ok(StoredTensor { shape, data })
    }
}

/// The tensors of one weights file, by name, with the naming convention of its format.
#[derive(Clone, Debug)]
pub struct WeightFile {
    name: String,
    format: &'static str,
    convention: Convention,
    tensors: BTreeMap<String, StoredTensor>,
    /// Tensors the file holds but that were not decoded (read for a model that has no use for
    /// them, or whose element count the model cannot take): their stored shapes.
    skipped: BTreeMap<String, Vec<usize>>,
}

const HDF5_MAGIC: &[u8] = b"\x89HDF\r\n\x1a\n";
const ZIP_MAGIC: &[u8] = b"PK\x03\x04";

/// The file formats [`WeightFile`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    /// Keras HDF5 (Keras 2 `save_weights` or the Keras 1 release layout).
    KerasH5,
    /// A PyTorch `state_dict` saved as `.safetensors`.
    Safetensors,
    /// A PyTorch `state_dict` saved by `torch.save`: the zip format (PyTorch 1.6 and later)
    /// or the legacy format (`_use_new_zipfile_serialization=False`, and older releases).
    Pth,
}

impl WeightFormat {
    /// The format a file's first bytes announce: HDF5 (Keras), zip or a pickle protocol
    /// header (PyTorch `.pth`), else safetensors (which has no magic number).
    pub fn detect(bytes: &[u8]) -> Self {
        if bytes.starts_with(HDF5_MAGIC) {
            WeightFormat::KerasH5
        } else if bytes.starts_with(ZIP_MAGIC) || pth::is_legacy(bytes) {
            WeightFormat::Pth
        } else {
            WeightFormat::Safetensors
        }
    }
}

/// The tensors a reader should decode, by key, with the element counts the model can take;
/// everything else is recorded by shape only.
#[derive(Debug, Default)]
pub(crate) struct Wanted {
    keras: HashMap<String, Vec<usize>>,
    torch: HashMap<String, Vec<usize>>,
    /// Bytes (as `f32`) of every distinct tensor the model takes.
    bytes: u64,
}

impl Wanted {
    fn for_model(model: &dyn Layer) -> Self {
        let mut w = Wanted::default();
        model.visit_params(&mut LayerPath::default(), &mut |path, kind, v| {
            w.bytes += v.len() as u64 * 4;
            for (convention, map) in [(Convention::Keras, &mut w.keras), (Convention::Torch, &mut w.torch)] {
                let counts = map.entry(convention.key(path, kind)).or_default();
                if !counts.contains(&v.len()) {
                    counts.push(v.len());
                }
            }
        });
        w
    }
}

/// What a reader may spend, and which tensors it decodes.
pub(crate) struct ReadContext<'a> {
    pub budget: &'a LoadBudget,
    wanted: Option<&'a Wanted>,
    /// Tensor data decoded, as `f32` bytes.
    pub decoded: Spend,
    /// Bytes inflated out of compressed containers (limited by the file's size).
    pub inflated: Spend,
}

impl<'a> ReadContext<'a> {
    fn new(budget: &'a LoadBudget, wanted: Option<&'a Wanted>, file_len: u64) -> Self {
        let mut decoded = Spend::decoded(budget, file_len);
        if let (Some(w), None) = (wanted, budget.max_decoded_bytes) {
            decoded = decoded.at_most(w.bytes);
        }
        ReadContext {
            budget,
            wanted,
            decoded,
            inflated: Spend::decoded(budget, file_len),
        }
    }

    /// Whether the tensor `key` of `count` elements is to be decoded.
    pub(crate) fn wants(&self, convention: Convention, key: &str, count: usize) -> bool {
        let Some(w) = self.wanted else { return true };
        let map = match convention {
            Convention::Keras => &w.keras,
            Convention::Torch => &w.torch,
        };
        map.get(key).is_some_and(|counts| counts.contains(&count))
    }

    /// Charges the decoding of `count` values of tensor `key` of file `file`.
    pub(crate) fn charge_tensor(&mut self, file: &str, key: &str, count: usize) -> Result<()> {
        let bytes = (count as u64).saturating_mul(4);
        self.decoded.charge(bytes, format_args!("{file}: tensor {key} ({count} values)"))
    }
}

impl WeightFile {
    /// Reads a weights file, recognising the format by its first bytes ([`WeightFormat::detect`]),
    /// within the default [`LoadBudget`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with_budget(path, &LoadBudget::default())
    }

    /// [`open`](Self::open) within `budget`.
    pub fn open_with_budget(path: impl AsRef<Path>, budget: &LoadBudget) -> Result<Self> {
        let path = path.as_ref();
        let bytes = read_regular_file(path, budget.max_file_bytes, "max_file_bytes")?;
        let format = WeightFormat::detect(&bytes);
        Self::read(bytes, &path.display().to_string(), format, budget, None)
    }

    /// Reads only what `model` can take: tensors whose names the model has no parameter for,
    /// or whose element count its parameter cannot hold, are recorded by name and shape (so
    /// [`load_into`](Self::load_into) still reports them) but not decoded, and the data decoded
    /// is limited to the size of the model's parameters (unless
    /// [`LoadBudget::max_decoded_bytes`] says otherwise).
    pub fn open_for_model(path: impl AsRef<Path>, model: &dyn Layer, budget: &LoadBudget) -> Result<Self> {
        let path = path.as_ref();
        let bytes = read_regular_file(path, budget.max_file_bytes, "max_file_bytes")?;
        let format = WeightFormat::detect(&bytes);
        let wanted = Wanted::for_model(model);
        Self::read(bytes, &path.display().to_string(), format, budget, Some(&wanted))
    }

    /// Reads a weights file in the given format, whatever its first bytes say.
    pub fn open_as(path: impl AsRef<Path>, format: WeightFormat) -> Result<Self> {
        let path = path.as_ref();
        let budget = LoadBudget::default();
        let bytes = read_regular_file(path, budget.max_file_bytes, "max_file_bytes")?;
        Self::read(bytes, &path.display().to_string(), format, &budget, None)
    }

    /// [`open`](Self::open) on bytes already in memory; `name` is used in messages.
    pub fn from_bytes(bytes: Vec<u8>, name: &str) -> Result<Self> {
        let format = WeightFormat::detect(&bytes);
        Self::from_bytes_as(bytes, name, format)
    }

    /// [`open_as`](Self::open_as) on bytes already in memory.
    pub fn from_bytes_as(bytes: Vec<u8>, name: &str, format: WeightFormat) -> Result<Self> {
        Self::read(bytes, name, format, &LoadBudget::default(), None)
    }

    /// [`from_bytes_as`](Self::from_bytes_as) within `budget`.
    pub fn from_bytes_with_budget(bytes: Vec<u8>, name: &str, format: WeightFormat, budget: &LoadBudget) -> Result<Self> {
        Self::read(bytes, name, format, budget, None)
    }

    fn read(bytes: Vec<u8>, name: &str, format: WeightFormat, budget: &LoadBudget, wanted: Option<&Wanted>) -> Result<Self> {
        let mut cx = ReadContext::new(budget, wanted, bytes.len() as u64);
        match format {
            WeightFormat::KerasH5 => keras_h5::read(bytes, name, &mut cx),
            WeightFormat::Safetensors => safetensors_file::read(&bytes, name, &mut cx),
            WeightFormat::Pth => pth::read(&bytes, name, &mut cx),
        }
    }

    /// A weights source from tensors already in memory (e.g. read from `.npy` files), named in
    /// `convention`.
    pub fn from_tensors(name: &str, convention: Convention, tensors: impl IntoIterator<Item = (String, StoredTensor)>) -> Result<Self> {
        let mut file = WeightFile::empty(name, "in-memory", convention);
        for (k, t) in tensors {
            file.insert(k, t)?;
        }
        Ok(file)
    }

    pub(crate) fn empty(name: &str, format: &'static str, convention: Convention) -> Self {
        WeightFile {
            name: name.into(),
            format,
            convention,
            tensors: BTreeMap::new(),
            skipped: BTreeMap::new(),
        }
    }

    fn check_new(&self, key: &str) -> Result<()> {
        if self.tensors.contains_key(key) || self.skipped.contains_key(key) {
            return Err(self.format_error(format!("tensor {key} appears twice")));
        }
        Ok(())
    }

    pub(crate) fn insert(&mut self, key: String, t: StoredTensor) -> Result<()> {
        self.check_new(&key)?;
        self.tensors.insert(key, t);
        Ok(())
    }

    /// Records a tensor that is in the file but was not decoded.
    pub(crate) fn insert_skipped(&mut self, key: String, shape: Vec<usize>) -> Result<()> {
        self.check_new(&key)?;
        self.skipped.insert(key, shape);
        Ok(())
    }

    pub(crate) fn format_error(&self, reason: impl Into<String>) -> Error {
        Error::Format {
            format: self.format,
            path: self.name.clone(),
            reason: reason.into(),
        }
    }

    /// The file's name (its path when read from disk).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `HDF5 (Keras)`, `safetensors`, `PyTorch .pth`, or `in-memory`.
    pub fn format(&self) -> &'static str {
        self.format
    }

    /// How the file names and lays out its tensors.
    pub fn convention(&self) -> Convention {
        self.convention
    }

    /// Names of the decoded tensors, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// One decoded tensor, as stored.
    pub fn get(&self, key: &str) -> Option<&StoredTensor> {
        self.tensors.get(key)
    }

    /// Tensors the file holds that [`open_for_model`](Self::open_for_model) did not decode,
    /// with their stored shapes, sorted by name.
    pub fn skipped(&self) -> impl Iterator<Item = (&str, &[usize])> {
        self.skipped.iter().map(|(k, s)| (k.as_str(), s.as_slice()))
    }

    /// Number of decoded tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// True when the file holds no decoded tensor.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}

/// Converts raw little-endian bytes of `dtype` into `f32`, refusing types that are not floats.
pub(crate) fn floats_from_le(bytes: &[u8], dtype: &str, file: &str, key: &str) -> Result<Vec<f32>> {
    match dtype {
        "f32" => Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()),
        "f64" => Ok(bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect()),
        other => Err(Error::Dtype {
            path: file.into(),
            key: key.into(),
            dtype: other.into(),
        }),
    }
}
