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
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Prefixes the layer path of this error with `name`, so that an error raised deep inside
    /// a container reads `stage2/res2a/res2a_branch2a (Conv2D): ...`.
    pub fn in_layer(mut self, name: &str) -> Self {
        match &mut self {
            Error::Shape { layer, .. }
            | Error::Config { layer, .. }
            | Error::Overflow { layer, .. } => {
                *layer = format!("{name}/{layer}");
            }
        }
        self
    }

    pub(crate) fn shape(
        layer: impl Into<String>,
        expected: impl Into<String>,
        got: impl Into<String>,
    ) -> Self {
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
