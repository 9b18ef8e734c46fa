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
pub mod optim;

pub use crate::graph::training::{Gradients, RunningStats, TrainingMode};
pub use optim::{clip_global_norm, LrSchedule, Optimizer, Rule};

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
    /// Where the step's time went, node by node.
    pub times: Vec<NodeTime>,
}

/// Runs `model` in training mode on the batch `x` with integer `labels`, takes the softmax
/// cross-entropy ([`loss::softmax_cross_entropy`], mean over the batch, optionally
/// label-smoothed), and back-propagates it. For a model whose head ends in a softmax (the seed's
/// `fc1000`), the loss is taken from the logits before it (fused and stable, never the log of a
/// probability) and the gradient enters there.
///
/// This runs on the calling thread; a [`Trainer`] runs the same arithmetic on several (the
/// same bits).
pub fn compute_gradients(
    model: &dyn Layer,
    x: &crate::layers::TensorRef,
    labels: &[usize],
    label_smoothing: f32,
    mode: &TrainingMode,
) -> Result<Step> {
    Trainer::new(mode.clone(), 1)?.compute_gradients(model, x, labels, label_smoothing)
}

/// Training steps on a pool of threads: [`compute_gradients`] with every convolution's forward
/// and backward GEMMs and every BatchNorm spread over `threads` threads. Each result is the
/// same bits whatever the thread count (the work is cut by shape, never by thread).
///
/// ```
/// use convnet::init::{initialize, InitScheme};
/// use convnet::models::{ResNet, ResNetConfig};
/// use convnet::train::{Trainer, TrainingMode};
/// let mut model = ResNet::new(ResNetConfig::small_image_resnet(8, [8, 8, 1], 10)?)?;
/// initialize(&mut model, &InitScheme::torchvision_resnet(), 0)?;
/// let x = ndarray::ArrayD::<f32>::ones(ndarray::IxDyn(&[4, 8, 8, 1]));
/// let two = Trainer::new(TrainingMode::default(), 2)?.compute_gradients(&model, &x, &[0, 1, 2, 3], 0.0)?;
/// let one = Trainer::new(TrainingMode::default(), 1)?.compute_gradients(&model, &x, &[0, 1, 2, 3], 0.0)?;
/// assert_eq!(one.loss.to_bits(), two.loss.to_bits());
/// # Ok::<(), convnet::Error>(())
/// ```
#[derive(Debug)]
pub struct Trainer {
    threads: crate::kernels::threaded::Threads,
    mode: TrainingMode,
}

impl Trainer {
    /// A trainer in `mode` on `threads` threads (0: every core).
    pub fn new(mode: TrainingMode, threads: usize) -> Result<Self> {
        Ok(Trainer {
            threads: crate::kernels::threaded::Threads::new(threads)?,
            mode,
        })
    }

    /// Threads it runs on.
    pub fn threads(&self) -> usize {
        self.threads.count()
    }

    /// How it treats the layers (BatchNorm momentum, frozen layers).
    pub fn mode(&self) -> &TrainingMode {
        &self.mode
    }

    /// Sets how it treats the layers (to freeze or unfreeze layers between epochs).
    pub fn set_mode(&mut self, mode: TrainingMode) {
        self.mode = mode;
    }

    /// Hands a finished step's buffers (its gradients and output) back to the trainer, so the
    /// next step reuses them: with it, a steady-state step allocates no new large buffer.
    /// Call it once the optimizer has applied the step.
    pub fn recycle(&self, step: Step) {
        let Step { output, gradients, .. } = step;
        let tensors = gradients.params.into_values().chain([gradients.input, output]);
        for t in tensors {
            self.threads.give(t.into_raw_vec_and_offset().0);
        }
    }

    /// One training step's loss and gradients, as [`compute_gradients`] computes them.
    pub fn compute_gradients(
        &self,
        model: &dyn Layer,
        x: &crate::layers::TensorRef,
        labels: &[usize],
        label_smoothing: f32,
    ) -> Result<Step> {
        step(model, x, labels, label_smoothing, &self.mode, &self.threads)
    }
}

fn step(
    model: &dyn Layer,
    x: &crate::layers::TensorRef,
    labels: &[usize],
    label_smoothing: f32,
    mode: &TrainingMode,
    threads: &crate::kernels::threaded::Threads,
) -> Result<Step> {
    let graph = Graph::lower(model, crate::graph::per_image(x.shape())?)?;
    let pass = training::forward_with(&graph, x, mode, threads)?;
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
    let running_stats = pass.running_stats_update();
    let forward_times = pass.node_times().to_vec();
    pass.recycle();
    let times = graph
        .nodes()
        .iter()
        .zip(&forward_times)
        .zip(&gradients.node_times)
        .map(|((node, &forward), &backward)| NodeTime {
            name: node.name(),
            op: node.op.kind(),
            forward,
            backward,
        })
        .collect();
    Ok(Step {
        loss,
        output,
        gradients,
        running_stats,
        times,
    })
}

/// The time one node of the lowered graph took in a training step.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeTime {
    /// The node's layer path (or its op's kind).
    pub name: String,
    /// The op's kind (`Conv2d`, `BatchNorm`, ...).
    pub op: &'static str,
    /// Its forward.
    pub forward: std::time::Duration,
    /// Its backward.
    pub backward: std::time::Duration,
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

/// Saves a training checkpoint in the folder `dir` (created if absent): the model's parameters
/// and BatchNorm statistics as `model.safetensors` (the weights writer, PyTorch's naming, so any
/// model's paths are unique), and the optimizer's state with its rule and step count as
/// `optimizer.safetensors`. [`load_checkpoint`] resumes from it with identical results.
pub fn save_checkpoint(dir: impl AsRef<std::path::Path>, model: &dyn Layer, optimizer: &Optimizer) -> Result<()> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display(), e))?;
    crate::weights::save_safetensors(model, dir.join("model.safetensors"), crate::weights::Convention::Torch)?;
    let (tensors, meta) = optimizer.to_parts();
    let tensors = tensors.into_iter().map(|(k, v)| (k, (vec![v.len()], v))).collect();
    let data = crate::weights::save::f32_safetensors(tensors, meta.into_iter().collect())?;
    crate::weights::save::write_atomically(&dir.join("optimizer.safetensors"), &data)
}

/// Restores a checkpoint written by [`save_checkpoint`] into `model` (strictly: a checkpoint of
/// another architecture is an error and changes nothing) and `optimizer` (which must have the
/// same rule; its state must name only parameters the model has).
pub fn load_checkpoint(dir: impl AsRef<std::path::Path>, model: &mut dyn Layer, optimizer: &mut Optimizer) -> Result<()> {
    let dir = dir.as_ref();
    let weights = crate::weights::WeightFile::open(dir.join("model.safetensors"))?;
    let path = dir.join("optimizer.safetensors");
    let bytes = std::fs::read(&path).map_err(|e| Error::io(path.display(), e))?;
    let bad = |reason: String| Error::Format {
        format: "optimizer state",
        path: path.display().to_string(),
        reason,
    };
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let meta: std::collections::BTreeMap<String, String> = meta.metadata().clone().unwrap_or_default().into_iter().collect();
    let mut known = std::collections::BTreeSet::new();
    model.visit_params(&mut LayerPath::default(), &mut |p, k, v| {
        known.insert((Optimizer::key(p, k), v.len()));
    });
    let mut tensors = std::collections::BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(bad(format!("{name} is not float32")));
        }
        let data = crate::weights::floats_from_le(view.data(), "f32", &path.display().to_string(), &name)?;
        let key = name.rsplit_once('.').map_or(name.as_str(), |(k, _)| k);
        if !known.contains(&(key.to_string(), data.len())) {
            return Err(Error::config(
                "checkpoint",
                format!("the optimizer state has {name} ({} values), which this model has no parameter for: a checkpoint of another architecture", data.len()),
            ));
        }
        tensors.insert(name, data);
    }
    let mut restored = optimizer.clone();
    restored.restore(tensors, &meta)?;
    weights.load_into(model, &crate::weights::LoadOptions::strict())?;
    *optimizer = restored;
    Ok(())
}
