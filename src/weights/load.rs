//! Matching a file's tensors to a model's parameters by name.

use std::collections::BTreeMap;
use std::fmt;

use ndarray::{ArrayViewD, ArrayViewMutD, IxDyn};

use super::{Convention, StoredTensor, WeightFile};
use crate::error::{Error, Result};
use crate::layers::{Layer, LayerPath, ParamKind, ParamVisitor};

/// How forgiving a load is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Fail (and change nothing) if any parameter is missing or mis-shaped, or any tensor of the
    /// file is unused. When false, matching tensors are applied and the rest reported.
    pub strict: bool,
    /// Accept tensors holding NaN or infinity (refused by default: such a file is corrupt).
    pub allow_non_finite: bool,
}

impl LoadOptions {
    /// Everything must match exactly.
    pub fn strict() -> Self {
        LoadOptions {
            strict: true,
            allow_non_finite: false,
        }
    }

    /// Apply what matches, report the rest.
    pub fn lenient() -> Self {
        LoadOptions {
            strict: false,
            allow_non_finite: false,
        }
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self::strict()
    }
}

/// A tensor whose shape differs from the parameter it was matched to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// Layer path in the model.
    pub layer: String,
    /// Parameter kind.
    pub kind: ParamKind,
    /// Tensor name in the file.
    pub key: String,
    /// Shape the model needs.
    pub expected: Vec<usize>,
    /// Shape found (converted to the model's layout).
    pub found: Vec<usize>,
}

/// What a load did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// File tensors copied into the model.
    pub applied: Vec<String>,
    /// Model parameters with no tensor: `layer (kind) <- key looked for`.
    pub missing: Vec<String>,
    /// File tensors no parameter took.
    pub unused: Vec<String>,
    /// Tensors of the wrong shape (not applied).
    pub mismatched: Vec<Mismatch>,
    /// File keys that more than one model parameter maps to (`key <- first path, other
    /// path`): the file cannot say which layer the tensor is for. Only the first was applied.
    pub ambiguous: Vec<String>,
}

impl LoadReport {
    /// True when every parameter got a tensor and every tensor was used.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty() && self.unused.is_empty() && self.mismatched.is_empty() && self.ambiguous.is_empty()
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} tensors applied, {} missing, {} unused, {} mis-shaped, {} ambiguous",
            self.applied.len(),
            self.missing.len(),
            self.unused.len(),
            self.mismatched.len(),
            self.ambiguous.len()
        )
    }
}

/// Converts a stored tensor to the model's layout: PyTorch conv kernels `(O, I, H, W)` to
/// HWIO, `Linear` weights `(out, in)` to `(in, out)`; Keras tensors are already there.
fn to_model_layout(convention: Convention, kind: ParamKind, t: &StoredTensor) -> Result<ndarray::ArrayD<f32>> {
    let a =
        ArrayViewD::from_shape(IxDyn(&t.shape), &t.data).map_err(|e| Error::shape("weights", format!("{:?}", t.shape), e.to_string()))?;
    let a = match (convention, kind, t.shape.len()) {
        (Convention::Torch, ParamKind::Kernel, 4) => a.permuted_axes(IxDyn(&[2, 3, 1, 0])),
        (Convention::Torch, ParamKind::Kernel, 2) => a.reversed_axes(),
        _ => a,
    };
    Ok(a.as_standard_layout().into_owned())
}

/// [`to_model_layout`]'s shape change, for a tensor that was not decoded.
fn model_layout_shape(convention: Convention, kind: ParamKind, shape: &[usize]) -> Vec<usize> {
    match (convention, kind, shape) {
        (Convention::Torch, ParamKind::Kernel, &[o, i, h, w]) => vec![h, w, i, o],
        (Convention::Torch, ParamKind::Kernel, &[o, i]) => vec![i, o],
        _ => shape.to_vec(),
    }
}

/// When every mismatched tensor differs from its parameter by one and the same ratio on every
/// axis that differs, the file is for the same network at another width: say so, and name
/// the builder option that sets widths.
fn width_hint(mismatched: &[Mismatch]) -> String {
    let mut ratio: Option<(usize, bool)> = None; // (factor, file narrower)
    for m in mismatched {
        if m.expected.len() != m.found.len() {
            return String::new();
        }
        for (&e, &f) in m.expected.iter().zip(&m.found) {
            if e == f {
                continue;
            }
            let this = if f > 0 && e > f && e % f == 0 {
                (e / f, true)
            } else if e > 0 && f > e && f % e == 0 {
                (f / e, false)
            } else {
                return String::new();
            };
            if ratio.is_some_and(|r| r != this) {
                return String::new();
            }
            ratio = Some(this);
        }
    }
    match ratio {
        Some((k, true)) => format!(
            "; all {} mismatched tensors are {k} times narrower in the file: it holds this network at 1/{k} of the width, so build the model with its width divisor multiplied by {k} (ResNetConfig::with_width_divisor)",
            mismatched.len()
        ),
        Some((k, false)) => format!(
            "; all {} mismatched tensors are {k} times wider in the file: it holds this network at {k} times the width, so build the model with its width divisor divided by {k} (ResNetConfig::with_width_divisor)",
            mismatched.len()
        ),
        None => String::new(),
    }
}

/// When the file's names are those of a ResNet V2 (Keras' `convN_blockM_preact_bn`) and the
/// model has no such layer, or the other way round, says which builder the file is for.
fn architecture_hint(file: &WeightFile, model: &dyn Layer) -> String {
    const PREACT: &str = "_preact_bn";
    let file_v2 = file.tensors.keys().chain(file.skipped.keys()).any(|k| k.contains(PREACT));
    let mut model_v2 = false;
    model.visit_params(&mut LayerPath::default(), &mut |path, _, _| {
        model_v2 |= path.leaf().ends_with(PREACT)
    });
    match (file_v2, model_v2) {
        (true, false) => "; the file holds a pre-activation ResNet (V2: layers such as conv2_block1_preact_bn), so build the model with models::ResNetV2".into(),
        (false, true) => "; the file has no pre-activation layers (it is not a ResNet V2) while the model is a models::ResNetV2: a ResNet V1 file loads into models::ResNet".into(),
        _ => String::new(),
    }
}

struct Matcher<'a> {
    file: &'a WeightFile,
    options: LoadOptions,
    apply: bool,
    /// Each file key taken so far, and the parameter (path and kind) that took it.
    used: BTreeMap<String, String>,
    report: LoadReport,
}

impl ParamVisitor for Matcher<'_> {
    fn visit(&mut self, path: &LayerPath, kind: ParamKind, mut value: ArrayViewMutD<'_, f32>) -> Result<()> {
        let key = self.file.convention.key(path, kind);
        let stored = self.file.tensors.get(&key);
        let skipped = self.file.skipped.get(&key);
        if stored.is_none() && skipped.is_none() {
            self.report.missing.push(format!("{path} ({}) <- {key}", kind.keras_name()));
            return Ok(());
        }
        let taker = format!("{path} ({})", kind.keras_name());
        if let Some(first) = self.used.get(&key) {
            self.report.ambiguous.push(format!("{key} <- {first}, {taker}"));
            return Ok(());
        }
        self.used.insert(key.clone(), taker);
        let Some(stored) = stored else {
            // Not decoded because its size cannot be this parameter's: a mismatch by shape.
            let found = skipped
                .map(|s| model_layout_shape(self.file.convention, kind, s))
                .unwrap_or_default();
            self.report.mismatched.push(Mismatch {
                layer: path.to_string(),
                kind,
                key,
                expected: value.shape().to_vec(),
                found,
            });
            return Ok(());
        };
        let t = to_model_layout(self.file.convention, kind, stored)?;
        if t.shape() != value.shape() {
            self.report.mismatched.push(Mismatch {
                layer: path.to_string(),
                kind,
                key,
                expected: value.shape().to_vec(),
                found: t.shape().to_vec(),
            });
            return Ok(());
        }
        let bad = t.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 && !self.options.allow_non_finite {
            return Err(Error::NonFinite {
                path: self.file.name.clone(),
                key,
                count: bad,
            });
        }
        if self.apply {
            value.assign(&t);
        }
        self.report.applied.push(key);
        Ok(())
    }
}

impl WeightFile {
    /// Copies this file's tensors into `model`'s parameters, matched by name (see
    /// [`Convention::key`]), and reports what was applied, missing, unused or mis-shaped.
    ///
    /// With [`LoadOptions::strict`] (the default), any of those is an error and the model is
    /// left unchanged: a mis-shaped tensor gives [`Error::WeightShape`] (both shapes and the
    /// layer path), then missing parameters [`Error::MissingWeights`], then unused tensors
    /// [`Error::UnusedWeights`] (a file for another architecture), then a key two model
    /// parameters map to [`Error::AmbiguousWeights`] (two nested layers with the same name
    /// under a convention that keys on the layer's own name, as Keras' does). A NaN or
    /// infinite value in a matched tensor gives [`Error::NonFinite`] unless `allow_non_finite`.
    pub fn load_into(&self, model: &mut dyn Layer, options: &LoadOptions) -> Result<LoadReport> {
        // Dry run first, so a strict failure changes nothing.
        let mut dry = Matcher {
            file: self,
            options: *options,
            apply: false,
            used: BTreeMap::new(),
            report: LoadReport::default(),
        };
        model.visit_params_mut(&mut LayerPath::default(), &mut dry)?;
        dry.report.unused = self
            .tensors
            .keys()
            .chain(self.skipped.keys())
            .filter(|k| !dry.used.contains_key(*k))
            .cloned()
            .collect();
        dry.report.unused.sort();
        let report = dry.report;
        if options.strict && !report.is_complete() {
            let architecture = architecture_hint(self, model);
            if let Some(m) = report.mismatched.first() {
                let hint = if architecture.is_empty() {
                    width_hint(&report.mismatched)
                } else {
                    architecture
                };
                return Err(Error::WeightShape {
                    hint: Box::new(hint),
                    layer: m.layer.clone(),
                    kind: m.kind.keras_name(),
                    key: m.key.clone(),
                    expected: m.expected.clone(),
                    found: m.found.clone(),
                });
            }
            if !report.missing.is_empty() {
                return Err(Error::MissingWeights {
                    source_name: self.name.clone(),
                    missing: report.missing,
                    hint: Box::new(architecture),
                });
            }
            if !report.unused.is_empty() {
                return Err(Error::UnusedWeights {
                    source_name: self.name.clone(),
                    unused: report.unused,
                    hint: Box::new(architecture),
                });
            }
            if !report.ambiguous.is_empty() {
                return Err(Error::AmbiguousWeights {
                    source_name: self.name.clone(),
                    ambiguous: report.ambiguous,
                });
            }
        }
        let mut wet = Matcher {
            file: self,
            options: *options,
            apply: true,
            used: BTreeMap::new(),
            report: LoadReport::default(),
        };
        model.visit_params_mut(&mut LayerPath::default(), &mut wet)?;
        Ok(report)
    }
}
