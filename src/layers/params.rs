//! Naming and visiting parameters.

use std::fmt;

use ndarray::ArrayViewMutD;

use crate::error::Result;

/// Where a layer sits in a model: the names of the containers above it and its own.
///
/// Displayed with `/` (`layer1/0/conv1`); [`LayerPath::dotted`] gives torchvision's
/// `layer1.0.conv1`, and [`LayerPath::leaf`] the last name, which is what Keras files key on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LayerPath(Vec<String>);

impl LayerPath {
    /// A path from its segments.
    pub fn new<S: Into<String>>(segments: impl IntoIterator<Item = S>) -> Self {
        LayerPath(segments.into_iter().map(Into::into).collect())
    }

    /// Enters a sub-layer.
    pub fn push(&mut self, name: &str) {
        self.0.push(name.to_string());
    }

    /// Leaves the innermost sub-layer.
    pub fn pop(&mut self) {
        self.0.pop();
    }

    /// The segments, outermost first.
    pub fn segments(&self) -> &[String] {
        &self.0
    }

    /// The innermost name (empty for the root).
    pub fn leaf(&self) -> &str {
        self.0.last().map_or("", String::as_str)
    }

    /// The segments joined with `.`, as a PyTorch `state_dict` names modules.
    pub fn dotted(&self) -> String {
        self.0.join(".")
    }

    /// Runs `f` with `name` pushed, and pops it again whatever `f` returns.
    pub fn scoped<T>(&mut self, name: &str, f: impl FnOnce(&mut Self) -> T) -> T {
        self.push(name);
        let out = f(self);
        self.pop();
        out
    }
}

impl fmt::Display for LayerPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("/"))
    }
}

/// What a parameter tensor is, and so how a weights file names and lays it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ParamKind {
    /// A convolution kernel `(kh, kw, in, out)` or a dense kernel `(in, out)`.
    Kernel,
    /// A convolution or dense bias `(out,)`.
    Bias,
    /// BatchNorm scale.
    Gamma,
    /// BatchNorm shift.
    Beta,
    /// BatchNorm moving mean (not trainable).
    MovingMean,
    /// BatchNorm moving variance (not trainable).
    MovingVariance,
}

impl ParamKind {
    /// Whether training would update it (Keras counts the rest as non-trainable).
    pub fn is_trainable(self) -> bool {
        !matches!(self, ParamKind::MovingMean | ParamKind::MovingVariance)
    }

    /// Keras' weight name for it: `kernel`, `bias`, `gamma`, `beta`, `moving_mean`, `moving_variance`.
    pub fn keras_name(self) -> &'static str {
        match self {
            ParamKind::Kernel => "kernel",
            ParamKind::Bias => "bias",
            ParamKind::Gamma => "gamma",
            ParamKind::Beta => "beta",
            ParamKind::MovingMean => "moving_mean",
            ParamKind::MovingVariance => "moving_variance",
        }
    }
}

/// Parameter counts, split as Keras' `model.summary()` splits them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParamCount {
    /// Updated by training (kernels, biases, BatchNorm gamma and beta).
    pub trainable: usize,
    /// BatchNorm moving statistics.
    pub non_trainable: usize,
}

impl ParamCount {
    /// All parameters.
    pub fn total(&self) -> usize {
        self.trainable + self.non_trainable
    }

    /// Counts `len` more parameters of `kind`.
    pub fn add(&mut self, kind: ParamKind, len: usize) {
        if kind.is_trainable() {
            self.trainable += len;
        } else {
            self.non_trainable += len;
        }
    }
}

impl std::ops::Add for ParamCount {
    type Output = ParamCount;
    fn add(self, o: ParamCount) -> ParamCount {
        ParamCount {
            trainable: self.trainable + o.trainable,
            non_trainable: self.non_trainable + o.non_trainable,
        }
    }
}

/// Receives every parameter of a model, writable; weight loaders implement it.
pub trait ParamVisitor {
    /// Called once per parameter tensor with its layer path and kind; the visitor may
    /// overwrite the values (not the shape).
    fn visit(&mut self, path: &LayerPath, kind: ParamKind, value: ArrayViewMutD<'_, f32>) -> Result<()>;
}
