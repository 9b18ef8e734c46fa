//! Optimizers over a model's named parameters, their state kept by parameter path, with
//! PyTorch's and Keras' formulas (see `docs/architecture.md` and the reference-semantics
//! notes); learning-rate schedules; gradient clipping by global norm.

use std::collections::BTreeMap;

use ndarray::ArrayViewMutD;

use super::Gradients;
use crate::error::{Error, Result};
use crate::layers::{Layer, LayerPath, ParamKind, ParamVisitor, Tensor};

/// Named flat tensors (an optimizer state's parts).
pub(crate) type NamedVectors = Vec<(String, Vec<f32>)>;

/// Which update rule, with its hyper-parameters (the learning rate is given per step).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    /// PyTorch `SGD`: `g += wd * p`; `buf = g` at the first step, else
    /// `buf = momentum * buf + (1 - dampening) * g`; `g = g + momentum * buf` with Nesterov,
    /// else `buf`; `p -= lr * g`.
    Sgd {
        /// Momentum (0: none).
        momentum: f32,
        /// Dampening of the momentum buffer's new gradient.
        dampening: f32,
        /// Coupled L2 weight decay.
        weight_decay: f32,
        /// Nesterov momentum.
        nesterov: bool,
    },
    /// PyTorch `Adam` (coupled L2 weight decay, `g += wd * p`) or, with `decoupled`, `AdamW`
    /// (`p *= 1 - lr * wd` first): `m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g^2`,
    /// `p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`.
    Adam {
        /// `beta1`.
        beta1: f32,
        /// `beta2`.
        beta2: f32,
        /// Added to the denominator (PyTorch's default 1e-8).
        epsilon: f32,
        /// Weight decay.
        weight_decay: f32,
        /// AdamW's decoupled decay instead of Adam's L2 term.
        decoupled: bool,
    },
    /// Keras `SGD`: `velocity = momentum * velocity - lr * g`; `p += velocity`, or with
    /// Nesterov `p += momentum * velocity - lr * g`.
    KerasSgd {
        /// Momentum.
        momentum: f32,
        /// Nesterov momentum.
        nesterov: bool,
    },
    /// Keras `Adam`: `m += (g - m)(1 - b1)`, `v += (g^2 - v)(1 - b2)`,
    /// `p -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)` with Keras' epsilon 1e-7 in
    /// that place.
    KerasAdam {
        /// `beta_1`.
        beta1: f32,
        /// `beta_2`.
        beta2: f32,
        /// Keras' default 1e-7.
        epsilon: f32,
    },
}

impl Rule {
    /// PyTorch `SGD(momentum, weight_decay, nesterov)` with no dampening.
    pub fn sgd(momentum: f32, weight_decay: f32, nesterov: bool) -> Self {
        Rule::Sgd {
            momentum,
            dampening: 0.0,
            weight_decay,
            nesterov,
        }
    }

    /// PyTorch `Adam(betas=(0.9, 0.999), eps=1e-8, weight_decay)`.
    pub fn adam(weight_decay: f32) -> Self {
        Rule::Adam {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay,
            decoupled: false,
        }
    }

    /// PyTorch `AdamW(betas=(0.9, 0.999), eps=1e-8, weight_decay)`.
    pub fn adamw(weight_decay: f32) -> Self {
        Rule::Adam {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay,
            decoupled: true,
        }
    }

    /// Keras `Adam()` defaults: betas 0.9 / 0.999, epsilon 1e-7.
    pub fn keras_adam() -> Self {
        Rule::KerasAdam {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-7,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Rule::Sgd { .. } => "sgd",
            Rule::Adam { decoupled: false, .. } => "adam",
            Rule::Adam { decoupled: true, .. } => "adamw",
            Rule::KerasSgd { .. } => "keras_sgd",
            Rule::KerasAdam { .. } => "keras_adam",
        }
    }
}

/// One parameter's optimizer state: the momentum buffer or velocity, or Adam's two moments.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParamState {
    /// SGD's momentum buffer / Keras' velocity / Adam's first moment (empty until the first step).
    pub first: Vec<f32>,
    /// Adam's second moment (empty for SGD).
    pub second: Vec<f32>,
}

/// An optimizer: a [`Rule`], the step count, and each parameter's state by its key
/// (`layer/path:kind`, see [`Optimizer::key`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Optimizer {
    rule: Rule,
    steps: u64,
    state: BTreeMap<String, ParamState>,
}

impl Optimizer {
    /// An optimizer with no state yet.
    pub fn new(rule: Rule) -> Self {
        Optimizer {
            rule,
            steps: 0,
            state: BTreeMap::new(),
        }
    }

    /// The rule.
    pub fn rule(&self) -> &Rule {
        &self.rule
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The state of each parameter, by key.
    pub fn state(&self) -> &BTreeMap<String, ParamState> {
        &self.state
    }

    /// The key a parameter's state is kept under: `res2a/res2a_branch2a:kernel`.
    pub fn key(path: &LayerPath, kind: ParamKind) -> String {
        format!("{path}:{}", kind.keras_name())
    }

    /// One step on `model` with its `gradients` (from [`compute_gradients`](super::compute_gradients))
    /// and learning rate `lr`: every trainable parameter that has a gradient is updated; frozen
    /// ones (no gradient) are left bit for bit as they are. A gradient for a parameter the model
    /// does not have, or of another shape, is an error, and then nothing is changed.
    pub fn step(&mut self, model: &mut dyn Layer, gradients: &Gradients, lr: f32) -> Result<()> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(Error::config(
                "optimizer",
                format!("the learning rate must be finite and >= 0, got {lr}"),
            ));
        }
        // Check first, so a bad gradient set changes nothing.
        let mut shapes = BTreeMap::new();
        model.visit_params(&mut LayerPath::default(), &mut |p, k, v| {
            shapes.insert((p.clone(), k), v.shape().to_vec());
        });
        for ((path, kind), g) in &gradients.params {
            match shapes.get(&(path.clone(), *kind)) {
                None => {
                    return Err(Error::config(
                        "optimizer",
                        format!("a gradient for {}, which this model does not have", Self::key(path, *kind)),
                    ))
                }
                Some(s) if s.as_slice() != g.shape() => {
                    return Err(Error::shape(
                        Self::key(path, *kind),
                        format!("a gradient of the parameter's shape {s:?}"),
                        format!("{:?}", g.shape()),
                    ))
                }
                _ => {}
            }
            if !kind.is_trainable() {
                return Err(Error::config("optimizer", format!("{} is not trainable", Self::key(path, *kind))));
            }
        }
        self.steps += 1;
        struct Apply<'a> {
            opt: &'a mut Optimizer,
            grads: &'a BTreeMap<(LayerPath, ParamKind), Tensor>,
            lr: f32,
        }
        impl ParamVisitor for Apply<'_> {
            fn visit(&mut self, path: &LayerPath, kind: ParamKind, mut v: ArrayViewMutD<'_, f32>) -> Result<()> {
                let Some(g) = self.grads.get(&(path.clone(), kind)) else {
                    return Ok(());
                };
                let key = Optimizer::key(path, kind);
                let g = g.as_standard_layout();
                let p = v
                    .as_slice_mut()
                    .ok_or_else(|| Error::config(key.clone(), "parameter is not contiguous"))?;
                self.opt.update(&key, p, g.as_slice().unwrap_or(&[]), self.lr)
            }
        }
        model.visit_params_mut(
            &mut LayerPath::default(),
            &mut Apply {
                opt: self,
                grads: &gradients.params,
                lr,
            },
        )
    }

    /// Updates one tensor `p` with gradient `g` under `key`, at this optimizer's current step
    /// count (call [`Optimizer::advance`] once per step first when driving it by hand).
    pub fn update(&mut self, key: &str, p: &mut [f32], g: &[f32], lr: f32) -> Result<()> {
        if p.len() != g.len() {
            return Err(Error::shape(
                key,
                format!("a gradient of {} values", p.len()),
                format!("{}", g.len()),
            ));
        }
        let t = self.steps.max(1);
        let st = self.state.entry(key.to_string()).or_default();
        match self.rule {
            Rule::Sgd {
                momentum,
                dampening,
                weight_decay,
                nesterov,
            } => {
                let first = st.first.is_empty();
                if momentum != 0.0 && first {
                    st.first = vec![0.0; p.len()];
                }
                for i in 0..p.len() {
                    let mut d = g[i];
                    if weight_decay != 0.0 {
                        d += weight_decay * p[i];
                    }
                    if momentum != 0.0 {
                        let b = &mut st.first[i];
                        *b = if first { d } else { momentum * *b + (1.0 - dampening) * d };
                        d = if nesterov { d + momentum * *b } else { *b };
                    }
                    p[i] -= lr * d;
                }
            }
            Rule::Adam {
                beta1,
                beta2,
                epsilon,
                weight_decay,
                decoupled,
            } => {
                if st.first.is_empty() {
                    st.first = vec![0.0; p.len()];
                    st.second = vec![0.0; p.len()];
                }
                let bc1 = 1.0 - beta1.powi(t as i32);
                let bc2_sqrt = (1.0 - beta2.powi(t as i32)).sqrt();
                let step_size = lr / bc1;
                for i in 0..p.len() {
                    let mut d = g[i];
                    if decoupled {
                        p[i] *= 1.0 - lr * weight_decay;
                    } else if weight_decay != 0.0 {
                        d += weight_decay * p[i];
                    }
                    let m = &mut st.first[i];
                    *m += (d - *m) * (1.0 - beta1);
                    let v = &mut st.second[i];
                    *v = *v * beta2 + (1.0 - beta2) * d * d;
                    let denom = v.sqrt() / bc2_sqrt + epsilon;
                    p[i] -= step_size * (*m / denom);
                }
            }
            Rule::KerasSgd { momentum, nesterov } => {
                if st.first.is_empty() {
                    st.first = vec![0.0; p.len()];
                }
                for i in 0..p.len() {
                    let v = &mut st.first[i];
                    *v = momentum * *v - lr * g[i];
                    p[i] += if nesterov { momentum * *v - lr * g[i] } else { *v };
                }
            }
            Rule::KerasAdam { beta1, beta2, epsilon } => {
                if st.first.is_empty() {
                    st.first = vec![0.0; p.len()];
                    st.second = vec![0.0; p.len()];
                }
                let lr_t = lr * (1.0 - beta2.powi(t as i32)).sqrt() / (1.0 - beta1.powi(t as i32));
                for i in 0..p.len() {
                    let m = &mut st.first[i];
                    *m += (g[i] - *m) * (1.0 - beta1);
                    let v = &mut st.second[i];
                    *v += (g[i] * g[i] - *v) * (1.0 - beta2);
                    p[i] -= lr_t * *m / (v.sqrt() + epsilon);
                }
            }
        }
        Ok(())
    }

    /// Counts one step when driving [`Optimizer::update`] by hand ([`Optimizer::step`] does it).
    pub fn advance(&mut self) {
        self.steps += 1;
    }

    /// The state as tensors (`KEY.first`, `KEY.second`) with the rule and step count as
    /// metadata, for a checkpoint beside the model's weights.
    pub(crate) fn to_parts(&self) -> (NamedVectors, BTreeMap<String, String>) {
        let mut tensors = Vec::new();
        for (k, s) in &self.state {
            if !s.first.is_empty() {
                tensors.push((format!("{k}.first"), s.first.clone()));
            }
            if !s.second.is_empty() {
                tensors.push((format!("{k}.second"), s.second.clone()));
            }
        }
        let meta = BTreeMap::from([
            ("rule".to_string(), self.rule.name().to_string()),
            ("rule_config".to_string(), format!("{:?}", self.rule)),
            ("steps".to_string(), self.steps.to_string()),
        ]);
        (tensors, meta)
    }

    /// Restores state saved by [`Optimizer::to_parts`]; the rule must be this one's.
    pub(crate) fn restore(&mut self, tensors: BTreeMap<String, Vec<f32>>, meta: &BTreeMap<String, String>) -> Result<()> {
        let rule = meta.get("rule_config").map(String::as_str).unwrap_or("");
        if rule != format!("{:?}", self.rule) {
            return Err(Error::config(
                "checkpoint",
                format!("the optimizer state is for {rule:?}, this optimizer is {:?}", self.rule),
            ));
        }
        let steps = meta
            .get("steps")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::config("checkpoint", "the optimizer state has no step count"))?;
        let mut state: BTreeMap<String, ParamState> = BTreeMap::new();
        for (k, v) in tensors {
            let (key, part) = k
                .rsplit_once('.')
                .ok_or_else(|| Error::config("checkpoint", format!("unexpected optimizer tensor {k}")))?;
            let s = state.entry(key.to_string()).or_default();
            match part {
                "first" => s.first = v,
                "second" => s.second = v,
                _ => return Err(Error::config("checkpoint", format!("unexpected optimizer tensor {k}"))),
            }
        }
        self.steps = steps;
        self.state = state;
        Ok(())
    }
}

/// Scales every gradient so their global L2 norm is at most `max_norm` (PyTorch's
/// `clip_grad_norm_`: by `max_norm / (norm + 1e-6)` when that is below 1). Returns the norm
/// before clipping.
pub fn clip_global_norm(gradients: &mut Gradients, max_norm: f32) -> f32 {
    let norm = gradients
        .params
        .values()
        .flat_map(|g| g.iter())
        .map(|&v| (v as f64) * (v as f64))
        .sum::<f64>()
        .sqrt() as f32;
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        gradients.params.values_mut().for_each(|g| g.mapv_inplace(|v| v * coef));
    }
    norm
}

/// A learning rate that changes with the step (counted from 0).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LrSchedule {
    /// `base` always.
    Constant,
    /// PyTorch `StepLR`: `base * gamma^(step / step_size)`.
    Step {
        /// Steps between decays.
        step_size: u64,
        /// Decay factor.
        gamma: f32,
    },
    /// Linear warm-up from 0 to `base` over `warmup` steps, then cosine decay to `min_lr` at
    /// `total` steps (and `min_lr` after).
    CosineWithWarmup {
        /// Warm-up steps.
        warmup: u64,
        /// Total steps.
        total: u64,
        /// The final learning rate.
        min_lr: f32,
    },
    /// PyTorch `OneCycleLR` (cosine annealing, `base` as `max_lr`): from `base / div_factor`
    /// up to `base` over the first `pct_start` of `total` steps, then down to
    /// `base / div_factor / final_div_factor`.
    OneCycle {
        /// Total steps.
        total: u64,
        /// Fraction of the steps spent increasing (PyTorch's default 0.3).
        pct_start: f32,
        /// Initial learning rate `= base / div_factor` (default 25).
        div_factor: f32,
        /// Final learning rate `= initial / final_div_factor` (default 1e4).
        final_div_factor: f32,
    },
}

impl LrSchedule {
    /// The learning rate at `step` for a base rate `base`.
    pub fn lr(&self, base: f32, step: u64) -> f32 {
        let cos_anneal = |from: f32, to: f32, pct: f32| to + (from - to) / 2.0 * (1.0 + (std::f32::consts::PI * pct.clamp(0.0, 1.0)).cos());
        match *self {
            LrSchedule::Constant => base,
            LrSchedule::Step { step_size, gamma } => base * gamma.powi((step / step_size.max(1)) as i32),
            LrSchedule::CosineWithWarmup { warmup, total, min_lr } => {
                if step < warmup {
                    base * (step + 1) as f32 / warmup as f32
                } else {
                    let span = total.saturating_sub(warmup).max(1);
                    cos_anneal(base, min_lr, (step - warmup) as f32 / span as f32)
                }
            }
            LrSchedule::OneCycle {
                total,
                pct_start,
                div_factor,
                final_div_factor,
            } => {
                let initial = base / div_factor;
                let min = initial / final_div_factor;
                // PyTorch's phase ends: `pct_start * total - 1` and `total - 1`.
                let up_end = (pct_start * total as f32 - 1.0).max(0.0);
                let end = (total as f32 - 1.0).max(up_end + 1.0);
                let s = step as f32;
                if s <= up_end {
                    cos_anneal(initial, base, if up_end > 0.0 { s / up_end } else { 1.0 })
                } else {
                    cos_anneal(base, min, (s - up_end) / (end - up_end))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_hit_their_landmarks() {
        let s = LrSchedule::Step { step_size: 10, gamma: 0.5 };
        assert_eq!((s.lr(1.0, 9), s.lr(1.0, 10), s.lr(1.0, 25)), (1.0, 0.5, 0.25));
        let c = LrSchedule::CosineWithWarmup {
            warmup: 4,
            total: 14,
            min_lr: 0.0,
        };
        assert_eq!(c.lr(2.0, 0), 0.5);
        assert_eq!(c.lr(2.0, 3), 2.0);
        assert!((c.lr(2.0, 9) - 1.0).abs() < 1e-6, "half way down: {}", c.lr(2.0, 9));
        assert!(c.lr(2.0, 14).abs() < 1e-6 && c.lr(2.0, 100).abs() < 1e-6);
        let o = LrSchedule::OneCycle {
            total: 100,
            pct_start: 0.3,
            div_factor: 25.0,
            final_div_factor: 1e4,
        };
        assert!((o.lr(1.0, 0) - 0.04).abs() < 1e-7);
        assert!((o.lr(1.0, 29) - 1.0).abs() < 1e-6);
        assert!((o.lr(1.0, 99) - 0.04 / 1e4).abs() < 1e-9);
    }
}
