//! The crate's one error type.

use std::fmt;

/// Everything that can go wrong in `convnet`, as data: each variant says what was expected
/// and what was found, and names the layer (as a path such as `res2a/res2a_branch2a`) when
/// one is involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tensor reached a layer or kernel with a shape it cannot take.
    #[error("{layer}: expected {expected}, got {got}")]
    Shape {
        /// The layer (or kernel) that refused the input.
        layer: String,
        /// What the layer needed, in words (e.g. `rank 4 (N, H, W, C) with C = 64`).
        expected: String,
        /// What it was given.
        got: String,
    },
    /// A layer or kernel was configured with values that can never work (zero stride, zero
    /// kernel, an empty layer name, ...).
    #[error("{layer}: invalid configuration: {reason}")]
    Config {
        /// The layer (or kernel) whose configuration is wrong.
        layer: String,
        /// Why.
        reason: String,
    },
    /// A shape computation overflowed `usize` (a dimension far too large).
    #[error("{layer}: size overflow computing {what}")]
    Overflow {
        /// The layer (or kernel) where it happened.
        layer: String,
        /// What was being computed.
        what: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A weights file is corrupt, truncated, or not the format it claims to be.
    #[error("{path}: not a readable {format} weights file: {reason}")]
    Format {
        /// `HDF5`, `safetensors`, `PyTorch .pth`, ...
        format: &'static str,
        /// The file (or a description of an in-memory source).
        path: String,
        /// What is wrong, with the offending name or offset where known.
        reason: String,
    },
    /// A `.pth` pickle asked for something a `state_dict` never needs (an arbitrary global, an
    /// unknown opcode). Nothing from the file is executed or imported.
    #[error("{path}: refusing to unpickle: {reason}")]
    UnsafePickle {
        /// The file.
        path: String,
        /// The global or opcode that was refused.
        reason: String,
    },
    /// A stored tensor has an element type this crate does not load.
    #[error("{path}: tensor {key} is {dtype}; float32 is loaded as is and float64 converted, nothing else")]
    Dtype {
        /// The file.
        path: String,
        /// The tensor's name in the file.
        key: String,
        /// Its element type.
        dtype: String,
    },
    /// A stored tensor holds NaN or infinite values (refused unless the load options allow it).
    #[error("{path}: tensor {key} holds {count} non-finite values (NaN or infinity)")]
    NonFinite {
        /// The file.
        path: String,
        /// The tensor's name in the file.
        key: String,
        /// How many elements are NaN or infinite.
        count: usize,
    },
    /// A forward pass produced NaN or infinity from a finite input (weights holding such values,
    /// or arithmetic that overflowed).
    #[error("the forward pass produced {count} non-finite values (NaN or infinity) in its output from a finite input; {origin}")]
    NonFiniteOutput {
        /// How many output elements are NaN or infinite.
        count: usize,
        /// Where they first appeared (`they first appear in the output of res2a/res2a_branch2a`),
        /// or how to find out.
        origin: String,
    },
    /// A tensor in the file has a different shape than the layer it was matched to.
    #[error(
        "{layer} ({kind}): expected shape {}, found {} in tensor {key}{hint}",
        ShapeFmt(expected),
        ShapeFmt(found)
    )]
    WeightShape {
        /// The layer path in the model.
        layer: String,
        /// The parameter (`kernel`, `bias`, `gamma`, ...).
        kind: &'static str,
        /// The tensor's name in the file.
        key: String,
        /// The shape the model needs (in the model's layout).
        expected: Vec<usize>,
        /// The shape in the file (converted to the model's layout).
        found: Vec<usize>,
        /// What the mismatches suggest, when they all differ by one width ratio (`; all 40
        /// mismatched tensors are 8 times narrower in the file ...`), else empty.
        hint: Box<String>,
    },
    /// Parameters of the model for which the file has no tensor.
    #[error("{source_name}: no weights for {} model parameters: {}{hint}", missing.len(), list(missing))]
    MissingWeights {
        /// The weights file.
        source_name: String,
        /// `layer path (kind) <- expected key`, one per missing parameter.
        missing: Vec<String>,
        /// Which architecture the file seems to hold instead, when its names tell (`; the
        /// file holds a pre-activation ResNet (V2) ...`), else empty.
        hint: Box<String>,
    },
    /// Tensors in the file that no model parameter took (a file for another architecture).
    #[error("{source_name}: {} tensors match no model parameter: {}{hint}", unused.len(), list(unused))]
    UnusedWeights {
        /// The weights file.
        source_name: String,
        /// Their names in the file.
        unused: Vec<String>,
        /// Which architecture the file seems to hold instead, when its names tell, else empty.
        hint: Box<String>,
    },
    /// File keys that more than one model parameter maps to, so the file cannot say which
    /// layer each is for (two nested layers of the same name, under Keras' convention).
    #[error("{source_name}: {} tensor names are claimed by more than one model parameter (give the layers unique names): {}", ambiguous.len(), list(ambiguous))]
    AmbiguousWeights {
        /// The weights file.
        source_name: String,
        /// `key <- first parameter, other parameter`, one per ambiguous key.
        ambiguous: Vec<String>,
    },
    /// An image could not be decoded, or is of a kind this crate refuses.
    #[error("{path}: cannot use image: {reason}")]
    Image {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Reading a file would cost more than the [`LoadBudget`](crate::budget::LoadBudget)
    /// allows (a crafted or corrupt file, or a legitimate one larger than the defaults).
    #[error("{what} needs {needed}, over the load budget's {limit} of {allowed}; if the file is trusted, raise LoadBudget::{limit}")]
    Budget {
        /// What asked for the resources (a file, a tensor, a pickle, an image), with its name.
        what: String,
        /// The [`LoadBudget`](crate::budget::LoadBudget) field that refused it.
        limit: &'static str,
        /// That field's value.
        allowed: u64,
        /// What the input needed (bytes, entries, levels or pixels, as the field counts).
        needed: u64,
    },
    /// A path names a directory, FIFO, socket or device where a regular file is needed.
    #[error("{path}: is a {kind}, not a regular file")]
    NotARegularFile {
        /// The path.
        path: String,
        /// `directory`, `FIFO`, `character device`, ...
        kind: &'static str,
    },
    /// A download failed (network error, HTTP status, checksum mismatch, cache not writable).
    #[error("download of {url} failed: {reason}")]
    Download {
        /// What was fetched.
        url: String,
        /// Why it failed.
        reason: String,
    },
}

/// The first few items of a list, for error messages.
fn list(items: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut s = items.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > SHOWN {
        s.push_str(&format!(", ... ({} more)", items.len() - SHOWN));
    }
    s
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Prefixes the layer path of this error with `name`, so that an error raised deep inside
    /// a container reads `stage2/res2a/res2a_branch2a (Conv2D): ...`.
    pub fn in_layer(mut self, name: &str) -> Self {
        match &mut self {
            Error::Shape { layer, .. } | Error::Config { layer, .. } | Error::Overflow { layer, .. } => {
                *layer = format!("{name}/{layer}");
            }
            _ => {}
        }
        self
    }

    pub(crate) fn shape(layer: impl Into<String>, expected: impl Into<String>, got: impl Into<String>) -> Self {
        Error::Shape {
            layer: layer.into(),
            expected: expected.into(),
            got: got.into(),
        }
    }

    pub(crate) fn config(layer: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config {
            layer: layer.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: impl std::fmt::Display, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_string(),
            source,
        }
    }

    pub(crate) fn overflow(layer: impl Into<String>, what: impl Into<String>) -> Self {
        Error::Overflow {
            layer: layer.into(),
            what: what.into(),
        }
    }
}

/// Formats a shape the way Keras prints one: `(2, 9, 8, 3)`.
pub(crate) struct ShapeFmt<'a>(pub &'a [usize]);

impl fmt::Display for ShapeFmt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "(")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        if self.0.len() == 1 {
            write!(f, ",")?;
        }
        write!(f, ")")
    }
}

/// Multiplies dimensions with overflow checks.
pub(crate) fn checked_product(layer: &str, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::overflow(layer, format!("the element count of {}", ShapeFmt(dims))))
}
