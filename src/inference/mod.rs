//! Fast inference: a model compiled into a flat list of kernel calls over preallocated
//! buffers, with BatchNorm folded into the preceding convolutions and bias, residual add and
//! ReLU fused into each GEMM's output pass.
//!
//! ```
//! use convnet::inference::{CompiledModel, InferenceOptions};
//! use convnet::models::{ResNet, ResNetConfig};
//! let model = ResNet::new(ResNetConfig::keras_resnet50().with_width_divisor(8))?;
//! let mut fast = CompiledModel::new(&model, &[224, 224, 3], &InferenceOptions { threads: 2, ..Default::default() })?;
//! let x = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[1, 224, 224, 3]));
//! let probs = fast.run(&x)?;
//! assert_eq!(probs.shape(), &[1, 1000]);
//! # Ok::<(), convnet::Error>(())
//! ```
//!
//! Compiling is an explicit step: the model it came from is untouched and keeps its unfused
//! layers (for per-layer taps, or to compare). What the compiled model does:
//!
//! - **BatchNorm folding** (`fold_batch_norm`, on by default): a BatchNorm after a convolution
//!   becomes a per-channel scale and shift applied in that convolution's GEMM output pass.
//! - **Epilogue fusion**: bias, the residual add of a ResNet block, and ReLU happen in the
//!   GEMM micro-kernel's store ([`kernels::packed_gemm`](crate::kernels::packed_gemm)); a
//!   `ZeroPadding2D` before a convolution becomes its padding.
//! - **Winograd** (`winograd`, on by default): stride-1 3x3 convolutions whose output the 2x2
//!   tiles fit run as Winograd F(2x2, 3x3) ([`kernels::winograd`](crate::kernels::winograd)),
//!   2.25 times fewer multiplies, the epilogue fused into the output transform.
//! - **No im2col for 1x1 convolutions and for the other convolutions on 16 or more channels**
//!   (their taps are read in place); the rest (the stem's 7x7 on 3 channels) im2col a
//!   cache-sized tile of output rows at a time, inside the thread that multiplies it.
//! - **Buffers allocated once per batch size** and reused by liveness: a steady-state
//!   [`CompiledModel::run_into`] allocates nothing.
//! - **Threads** ([`InferenceOptions::threads`]): each convolution is split over output rows
//!   (or Winograd tile blocks) or over output-channel panels, whichever divides more evenly
//!   (panels on a tie: each thread then reads only its share of the weights). A batch of at
//!   least as many images as threads runs one image per thread up to the layers whose weights
//!   outweigh their activations (ResNet50's last stage), then layer by layer over the whole
//!   batch, so those weights are read once per batch. Each output element is computed by one
//!   thread with the same summation order whatever the thread count, so results are identical
//!   for every thread count. With one thread nothing is spawned.

mod compile;
mod exec;
mod pool;

pub use pool::ThreadPool;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ndarray::{ArrayD, ArrayViewD, IxDyn};

use crate::error::{Error, Result, ShapeFmt};
use crate::layers::Layer;
use exec::Op;

/// How to compile a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InferenceOptions {
    /// Threads that run each layer (the caller's included); 1 spawns nothing.
    pub threads: usize,
    /// Fold each BatchNorm into the convolution before it.
    pub fold_batch_norm: bool,
    /// Compute stride-1 3x3 convolutions by Winograd F(2x2, 3x3)
    /// ([`kernels::winograd`](crate::kernels::winograd)) instead of a direct GEMM.
    pub winograd: bool,
}

impl Default for InferenceOptions {
    /// All available cores, BatchNorm folded, Winograd on.
    fn default() -> Self {
        InferenceOptions {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            fold_batch_norm: true,
            winograd: true,
        }
    }
}

/// One intermediate tensor of the compiled graph: its per-image shape and where it lives.
#[derive(Clone, Debug)]
pub(crate) struct Value {
    pub shape: Vec<usize>,
    pub slot: usize,
}

impl Value {
    fn len(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A model compiled for fast inference (see the [module docs](self)).
pub struct CompiledModel {
    ops: Vec<Op>,
    values: Vec<Value>,
    /// Per-image capacity (elements) of each buffer slot.
    slot_sizes: Vec<usize>,
    input: usize,
    output: usize,
    pool: ThreadPool,
    /// Buffers for the layer-parallel mode, sized for `batch` images.
    batch: usize,
    buffers: Vec<Vec<f32>>,
    workspaces: Vec<Mutex<exec::Workspace>>,
    /// One single-image lane per thread for the batch-parallel mode (allocated on first use).
    lanes: Vec<Mutex<Lane>>,
    serial: ThreadPool,
    /// For batches run image by image: the ops `..split` run in the lanes, the rest over the
    /// whole batch, starting from `split_value`, the only value crossing that point.
    split: usize,
    split_value: usize,
}

/// See [`lane_split`].
const BATCHED_WEIGHT_RATIO: usize = 2;

/// What one thread needs to run whole images on its own.
struct Lane {
    buffers: Vec<Vec<f32>>,
    workspace: [Mutex<exec::Workspace>; 1],
}

impl std::fmt::Debug for CompiledModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledModel")
            .field("ops", &self.ops.len())
            .field("threads", &self.pool.threads())
            .field("batch", &self.batch)
            .finish()
    }
}

impl CompiledModel {
    /// Compiles `model` for inputs of per-image shape `input_shape` (`[h, w, c]`, no batch
    /// axis). Fails for layer types it cannot lower.
    pub fn new(model: &dyn Layer, input_shape: &[usize], options: &InferenceOptions) -> Result<Self> {
        let graph = compile::compile(model, input_shape, options)?;
        let (split, split_value) = lane_split(&graph);
        let workspaces = (0..options.threads.max(1))
            .map(|_| Mutex::new(exec::Workspace::default()))
            .collect();
        Ok(CompiledModel {
            ops: graph.ops,
            values: graph.values,
            slot_sizes: graph.slot_sizes,
            input: graph.input,
            output: graph.output,
            pool: ThreadPool::new(options.threads)?,
            batch: 0,
            buffers: Vec::new(),
            workspaces,
            lanes: Vec::new(),
            serial: ThreadPool::new(1)?,
            split,
            split_value,
        })
    }

    /// Threads used per layer.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// Number of kernel calls per forward pass.
    pub fn op_count(&self) -> usize {
        self.ops.len()
    }

    /// Per-image output shape.
    pub fn output_shape(&self) -> &[usize] {
        &self.values[self.output].shape
    }

    /// Bytes of activation buffers and workspaces currently allocated.
    pub fn buffer_bytes(&self) -> usize {
        4 * (self.buffers.iter().map(Vec::capacity).sum::<usize>()
            + self
                .workspaces
                .iter()
                .map(|w| w.lock().map_or(0, |w| w.floats.capacity()))
                .sum::<usize>())
    }

    /// Runs a batch and returns the output as a new tensor.
    pub fn run(&mut self, x: &ArrayD<f32>) -> Result<ArrayD<f32>> {
        let batch = self.check_input(x.shape())?;
        let mut shape = vec![batch];
        shape.extend_from_slice(&self.values[self.output].shape);
        let mut out = vec![0.0; batch * self.values[self.output].len()];
        self.run_into(x.view(), &mut out)?;
        ArrayD::from_shape_vec(IxDyn(&shape), out)
            .map_err(|e| Error::shape("CompiledModel", format!("{}", ShapeFmt(&shape)), e.to_string()))
    }

    /// Runs a batch into `out` (`batch * per-image output` elements). After the first call at a
    /// given batch size, this allocates nothing. An input of the wrong shape is an
    /// [`Error::Shape`]; one holding NaN or infinity an [`Error::NonFinite`].
    pub fn run_into(&mut self, x: ArrayViewD<'_, f32>, out: &mut [f32]) -> Result<()> {
        self.run_inner(x, out, None)
    }

    /// Runs a batch and returns how long each kernel call took, by layer name.
    pub fn profile(&mut self, x: &ArrayD<f32>) -> Result<Vec<(String, Duration)>> {
        let batch = self.check_input(x.shape())?;
        let mut out = vec![0.0; batch * self.values[self.output].len()];
        let mut times = Vec::with_capacity(self.ops.len());
        self.run_inner(x.view(), &mut out, Some(&mut times))?;
        Ok(times)
    }

    fn check_input(&self, shape: &[usize]) -> Result<usize> {
        let want = &self.values[self.input].shape;
        if shape.len() != want.len() + 1 || &shape[1..] != want.as_slice() || shape[0] == 0 {
            return Err(Error::shape(
                "CompiledModel",
                format!("a batch of shape (n, {})", &ShapeFmt(want).to_string()[1..]),
                format!("{}", ShapeFmt(shape)),
            ));
        }
        Ok(shape[0])
    }

    fn workspace_sizes(&self, batch: usize) -> (usize, usize) {
        let floats = self.ops.iter().map(|op| op.workspace_len(batch).0).max().unwrap_or(0);
        let segments = self.ops.iter().map(|op| op.workspace_len(batch).1).max().unwrap_or(0);
        (floats, segments)
    }

    fn alloc_buffers(&self, batch: usize) -> Result<Vec<Vec<f32>>> {
        self.slot_sizes
            .iter()
            .map(|&s| crate::error::checked_product("CompiledModel", &[s, batch]).map(|n| vec![0.0; n]))
            .collect()
    }

    fn ensure_batch(&mut self, batch: usize) -> Result<()> {
        if self.batch == batch {
            return Ok(());
        }
        self.buffers = Vec::new();
        self.buffers = self.alloc_buffers(batch)?;
        let (floats, segments) = self.workspace_sizes(batch);
        for w in &self.workspaces {
            let mut w = w.lock().map_err(|_| Error::config("CompiledModel", "a worker panicked earlier"))?;
            *w = exec::Workspace {
                floats: vec![0.0; floats],
                segments: Vec::with_capacity(segments),
            };
        }
        self.batch = batch;
        Ok(())
    }

    fn ensure_lanes(&mut self) -> Result<()> {
        if !self.lanes.is_empty() {
            return Ok(());
        }
        let (floats, segments) = self.workspace_sizes(1);
        for _ in 0..self.pool.threads() {
            let workspace = [Mutex::new(exec::Workspace {
                floats: vec![0.0; floats],
                segments: Vec::with_capacity(segments),
            })];
            self.lanes.push(Mutex::new(Lane {
                buffers: self.alloc_buffers(1)?,
                workspace,
            }));
        }
        Ok(())
    }

    /// Whether a batch runs image by image, split over the threads (each thread running whole
    /// images alone, which keeps every activation in its core's cache) rather than layer by
    /// layer over the whole batch, up to the switch point of [`lane_split`]. Measured on
    /// ResNet50: one image at a time was faster per image than a batch of 8 even on one thread
    /// (37 against 41 ms per image, before Winograd); switching to the whole batch at the last
    /// stage made batch 8 on 2 threads 8% faster (145 -> 136 ms, medians of four rounds).
    fn batch_parallel(&self, batch: usize) -> bool {
        batch > 1 && batch >= self.pool.threads()
    }

    fn run_inner(&mut self, x: ArrayViewD<'_, f32>, out: &mut [f32], mut times: Option<&mut Vec<(String, Duration)>>) -> Result<()> {
        let batch = self.check_input(x.shape())?;
        let out_len = batch * self.values[self.output].len();
        if out.len() != out_len {
            return Err(Error::shape(
                "CompiledModel",
                format!("an output of {out_len} elements"),
                format!("{}", out.len()),
            ));
        }
        let per_in = self.values[self.input].len();
        let per_out = self.values[self.output].len();
        let x = x.as_standard_layout();
        let x = x
            .as_slice()
            .ok_or_else(|| Error::shape("CompiledModel", "a contiguous input", "a strided view"))?;
        let bad = x.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            return Err(Error::NonFinite {
                path: "the input batch".into(),
                key: "input".into(),
                count: bad,
            });
        }
        let mut first_op = 0;
        if times.is_none() && self.batch_parallel(batch) {
            self.ensure_lanes()?;
            let split = self.split;
            let whole = split == self.ops.len();
            if !whole {
                self.ensure_batch(batch)?;
            }
            let (ops, values, serial, lanes) = (&self.ops, &self.values, &self.serial, &self.lanes);
            let (input_slot, output_slot) = (values[self.input].slot, values[self.output].slot);
            // Where each image's result of the lane phase goes: the output, or the crossing
            // value's batch buffer.
            let (dst, per_dst, from_slot) = if whole {
                (exec::SendPtr(out.as_mut_ptr()), per_out, output_slot)
            } else {
                let v = &values[self.split_value];
                (exec::SendPtr(self.buffers[v.slot].as_mut_ptr()), v.len(), v.slot)
            };
            let failed = Mutex::new(None);
            let next_image = AtomicUsize::new(0);
            self.pool.run(&|t| {
                let mut lane = lanes[t].lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let Lane { buffers, workspace } = &mut *lane;
                let ctx = exec::Ctx {
                    values,
                    batch: 1,
                    pool: serial,
                    workspaces: workspace,
                };
                // Images are handed out one at a time, so a core slowed down by a neighbour
                // takes fewer of them.
                loop {
                    let image = next_image.fetch_add(1, Ordering::Relaxed);
                    if image >= batch {
                        break;
                    }
                    buffers[input_slot][..per_in].copy_from_slice(&x[image * per_in..(image + 1) * per_in]);
                    if let Err(e) = ops[..split].iter().try_for_each(|op| op.run(&ctx, buffers)) {
                        *failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
                        return;
                    }
                    // SAFETY: `dst` holds `batch * per_dst` floats (the output, or a buffer sized
                    // for the batch), and each image's share is written by exactly one thread.
                    let dst = unsafe { std::slice::from_raw_parts_mut(dst.get().add(image * per_dst), per_dst) };
                    dst.copy_from_slice(&buffers[from_slot][..per_dst]);
                }
            });
            failed
                .into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .map_or(Ok(()), Err)?;
            if whole {
                return Ok(());
            }
            first_op = split;
        }
        self.ensure_batch(batch)?;
        if first_op == 0 {
            let input = &mut self.buffers[self.values[self.input].slot];
            input[..batch * per_in].copy_from_slice(x);
        }
        let ctx = exec::Ctx {
            values: &self.values,
            batch,
            pool: &self.pool,
            workspaces: &self.workspaces,
        };
        for op in &self.ops[first_op..] {
            let start = times.as_ref().map(|_| Instant::now());
            op.run(&ctx, &mut self.buffers)?;
            if let (Some(t), Some(s)) = (times.as_deref_mut(), start) {
                t.push((op.name().to_string(), s.elapsed()));
            }
        }
        let src = &self.buffers[self.values[self.output].slot][..out_len];
        out.copy_from_slice(src);
        Ok(())
    }
}

/// Where a batch run image by image switches to running layer by layer over the whole batch.
///
/// Early layers have large activations and small weights: each image is best run alone,
/// keeping its activations in its core's cache. Late layers the reverse: over the whole batch,
/// their weights are read once per batch instead of once per image per core. The switch is the
/// first op boundary that exactly one value crosses after which every layer with weights has
/// at least [`BATCHED_WEIGHT_RATIO`] times more weight bytes than per-image activation bytes
/// (its input and output). On ResNet50 that is the start of the last stage.
fn lane_split(graph: &compile::Graph) -> (usize, usize) {
    let ops = &graph.ops;
    let n = ops.len();
    let len = |v: usize| graph.values[v].shape.iter().product::<usize>();
    let weight_heavy = |op: &exec::Op| {
        let weights = op.weight_len();
        let acts = op.inputs().into_iter().flatten().map(len).sum::<usize>() + len(op.output());
        weights == 0 || weights >= BATCHED_WEIGHT_RATIO * acts
    };
    // The first boundary from which every op is weight-heavy.
    let Some(from) = (0..n).find(|&i| ops[i..].iter().all(weight_heavy)).filter(|&i| i > 0) else {
        return (n, graph.output);
    };
    let produced_at = |v: usize| ops.iter().position(|op| op.output() == v);
    for i in from..n {
        // The values crossing boundary i: produced before it (or the input), read at or after it.
        let mut crossing = ops[i..]
            .iter()
            .flat_map(|op| op.inputs().into_iter().flatten())
            .map(|v| graph.roots[v])
            .filter(|&v| produced_at(v).is_none_or(|p| p < i));
        if let Some(v) = crossing.next() {
            if crossing.all(|w| w == v) {
                return (i, v);
            }
        }
    }
    (n, graph.output)
}

#[cfg(test)]
mod tests {
    use super::{compile, lane_split, InferenceOptions};
    use crate::models::{ResNet, ResNetConfig};

    #[test]
    fn resnet50_batches_switch_to_layer_by_layer_at_the_last_stage() {
        let model = ResNet::new(ResNetConfig::keras_resnet50()).unwrap();
        let graph = compile::compile(&model, &[224, 224, 3], &InferenceOptions::default()).unwrap();
        let (at, value) = lane_split(&graph);
        assert_eq!(graph.ops[at].name(), "res5a/res5a_branch1");
        // The crossing value is res4f's output, which both res5a branches read.
        assert_eq!(graph.ops[at - 1].output(), value);
        assert!(graph.ops[at..].iter().filter(|op| op.inputs().contains(&Some(value))).count() == 2);
        // Scaled down, only the classifier's weights outweigh its activations.
        let small = ResNet::new(ResNetConfig::keras_resnet50().with_width_divisor(8)).unwrap();
        let graph = compile::compile(&small, &[224, 224, 3], &InferenceOptions::default()).unwrap();
        assert_eq!(graph.ops[lane_split(&graph).0].name(), "avg_pool");
    }
}
