//! Training: gradients of every parameter of a model, over the same lowered graph the
//! executors run ([`graph::training`](crate::graph::training): a training-mode forward that
//! keeps what the backward needs, and one backward function per op).
//!
//! ```
//! use convnet::init::{initialize, InitScheme};
//! use convnet::models::{Depth, ResNet, ResNetConfig};
//! use convnet::train::{compute_gradients, TrainingMode};
//! let config = ResNetConfig::torchvision(Depth::R18).with_width_divisor(16).with_classes(10).with_input_shape([32, 32, 3]);
//! let mut model = ResNet::new(config)?;
//! initialize(&mut model, &InitScheme::torchvision_resnet(), 0)?;
//! let x = ndarray::ArrayD::<f32>::ones(ndarray::IxDyn(&[4, 32, 32, 3]));
//! let step = compute_gradients(&model, &x, &[0, 1, 2, 3], 0.0, &TrainingMode::default())?;
//! assert!(step.loss > 0.0);
//! step.apply_running_stats(&mut model)?; // BatchNorm's moving statistics, as PyTorch updates them
//! # Ok::<(), convnet::Error>(())
//! ```

pub mod loss;

pub use crate::graph::training::{Gradients, RunningStats, TrainingMode};

use ndarray::ArrayViewMutD;

use crate::error::{Error, Result};
use crate::graph::{training, Graph, Op};
use crate::layers::{Layer, LayerPath, ParamKind, ParamVisitor, Tensor};

/// One training-mode forward and backward pass.
#[derive(Clone, Debug)]
pub struct Step {
    /// The mean cross-entropy over the batch.
    pub loss: f32,
    /// The model's output (its logits, or its probabilities for a head ending in softmax).
    pub output: Tensor,
    /// Every trainable parameter's gradient, and the input's.
    pub gradients: Gradients,
    /// The BatchNorm layers' new running statistics (not yet applied).
    pub running_stats: Vec<RunningStats>,
}

/// Runs `model` in training mode on the batch `x` with integer `labels`, takes the softmax
/// cross-entropy ([`loss::softmax_cross_entropy`], mean over the batch, optionally
/// label-smoothed), and back-propagates it. For a model whose head ends in a softmax (the seed's
/// `fc1000`), the loss is taken from the logits before it (fused and stable, never the log of a
/// probability) and the gradient enters there.
pub fn compute_gradients(model: &dyn Layer, x: &Tensor, labels: &[usize], label_smoothing: f32, mode: &TrainingMode) -> Result<Step> {
    let graph = Graph::lower(model, crate::graph::per_image(x.shape())?)?;
    let pass = training::forward(&graph, x, mode)?;
    let output = pass.output().clone();
    // A head ending in a last-axis softmax: the loss on its input.
    let logits_value = graph.nodes().last().and_then(|n| match n.op {
        Op::Softmax { axis } if n.output == graph.output() && axis + 1 == graph.shape(n.output).len() => Some(n.inputs[0]),
        _ => None,
    });
    let logits = match logits_value {
        Some(v) => pass.value(v)?.clone(),
        None => output.clone(),
    };
    let (loss, grad) = loss::softmax_cross_entropy(&logits, labels, label_smoothing)?;
    let gradients = match logits_value {
        Some(v) => pass.backward_from(v, &grad)?,
        None => pass.backward(&grad)?,
    };
    Ok(Step {
        loss,
        output,
        gradients,
        running_stats: pass.running_stats_update(),
    })
}

impl Step {
    /// Writes the new BatchNorm running statistics into `model` (the one the step ran on).
    pub fn apply_running_stats(&self, model: &mut dyn Layer) -> Result<()> {
        struct Apply<'a>(&'a [RunningStats], usize);
        impl ParamVisitor for Apply<'_> {
            fn visit(&mut self, path: &LayerPath, kind: ParamKind, mut v: ArrayViewMutD<'_, f32>) -> Result<()> {
                let Some(s) = self.0.iter().find(|s| &s.path == path) else {
                    return Ok(());
                };
                let src = match kind {
                    ParamKind::MovingMean => &s.mean,
                    ParamKind::MovingVariance => &s.variance,
                    _ => return Ok(()),
                };
                if src.len() != v.len() {
                    return Err(Error::shape(
                        path.to_string(),
                        format!("{} statistics", v.len()),
                        format!("{}", src.len()),
                    ));
                }
                v.iter_mut().zip(src).for_each(|(d, &s)| *d = s);
                self.1 += 1;
                Ok(())
            }
        }
        let mut apply = Apply(&self.running_stats, 0);
        model.visit_params_mut(&mut LayerPath::default(), &mut apply)?;
        if apply.1 != 2 * self.running_stats.len() {
            return Err(Error::config(
                "training step",
                format!(
                    "the model has {} of the {} BatchNorm statistics this step computed: apply it to the model it ran on",
                    apply.1,
                    2 * self.running_stats.len()
                ),
            ));
        }
        Ok(())
    }
}
