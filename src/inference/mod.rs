//! Fast inference: the fast executor of the crate's one op graph ([`crate::graph`]). A model is
//! lowered, rewritten by the graph [`crate::graph::passes`] and generated into a flat
//! list of kernel calls over preallocated buffers, with BatchNorm folded into the preceding
//! convolutions and bias, residual add and ReLU fused into each GEMM's output pass.
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
//! Compiling is an explicit step: the model it came from is borrowed, untouched, and keeps its
//! unfused layers (its [`Layer::forward`] is the reference executor on the same graph). Every
//! model compiles: ops without a fast kernel (grouped convolutions, concatenation, a layer of
//! your own that lowers to an opaque op) run through the reference executor inside the
//! compiled model. A new input shape (batch size, or image size where the model allows it) is
//! compiled on first use and cached. What the passes and the executor do:
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
//! - **Inverted residual blocks in one op** (`fuse_blocks`, on by default): a MobileNetV2
//!   block whose depthwise input is not small (256 KiB an image or more) runs its 1x1 expansion,
//!   depthwise convolution and 1x1 projection band by band of output rows, each thread on its
//!   own rows, so the expanded activations stay in cache; the same bits as unfused.
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

mod aligned;
mod exec;
mod fused;
mod liveness;
pub(crate) mod pool;
pub(crate) mod program;
mod schedule;

pub(crate) use pool::ThreadPool;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ndarray::{ArrayD, ArrayViewD, IxDyn};

use crate::error::{Error, Result, ShapeFmt};
use crate::graph::passes::{self, PassOptions};
use crate::graph::{per_image, Graph, ValueId};
use crate::layers::{Layer, Taps};
use aligned::AlignedBuf;
use program::Program;

/// How to compile a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InferenceOptions {
    /// Threads that run each layer (the caller's included); 1 spawns nothing, 0 means all
    /// available cores (`std::thread::available_parallelism`, which honours CPU affinity and
    /// cgroup quotas). [`CompiledModel::threads`] reports the number used.
    pub threads: usize,
    /// Fold each BatchNorm into the convolution before it.
    pub fold_batch_norm: bool,
    /// Compute stride-1 3x3 convolutions by Winograd F(2x2, 3x3)
    /// ([`kernels::winograd`](crate::kernels::winograd)) instead of a direct GEMM.
    pub winograd: bool,
    /// How a batch is spread over the threads.
    pub schedule: BatchSchedule,
    /// Run each large inverted residual block (MobileNetV2's 1x1 expansion, depthwise
    /// convolution and 1x1 projection) as one op, band by band of rows, so its expanded
    /// activations stay in cache. The results are the same either way.
    pub fuse_blocks: bool,
}

impl Default for InferenceOptions {
    /// All available cores, BatchNorm folded, Winograd on, inverted residual blocks fused.
    fn default() -> Self {
        InferenceOptions {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            fold_batch_norm: true,
            winograd: true,
            schedule: BatchSchedule::Auto,
            fuse_blocks: true,
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

/// Compiled input shapes kept at once (the least recently used one is dropped beyond).
const MAX_PLANS: usize = 8;

/// What one thread needs to run whole images on its own.
struct Lane {
    buffers: Vec<AlignedBuf>,
    workspace: [Mutex<exec::Workspace>; 1],
}

/// The compiled program for one per-image input shape and tap set, and its buffers.
struct Plan<'m> {
    input_shape: Vec<usize>,
    taps: Vec<String>,
    /// The tapped values, in the order of `taps`.
    tap_values: Vec<usize>,
    program: Program<'m>,
    /// Buffers for the layer-parallel mode, sized for `batch` images.
    batch: usize,
    buffers: Vec<AlignedBuf>,
    workspaces: Vec<Mutex<exec::Workspace>>,
    /// One single-image lane per thread for the batch-parallel mode (allocated on first use).
    lanes: Vec<Mutex<Lane>>,
    /// For batches run image by image: the ops `..split` run in the lanes, the rest over the
    /// whole batch, starting from `split_value`, the only value crossing that point.
    split: usize,
    split_value: usize,
    schedule: BatchSchedule,
    calibration: Calibration,
}

/// How a batch of at least as many images as threads runs up to the point where the rest runs
/// layer by layer over the whole batch (the first point after which every layer's weights
/// outweigh twice its activations: ResNet50's last stage, whose
/// weights are then read once per batch). Every schedule computes each output element in the
/// same order, so all give the same bits.
///
/// Measured on ResNet50, batch 8 on 2 threads: lanes were 8% faster than the whole batch layer
/// by layer on a 2-core AVX-512 machine (136 against 145 ms); on a 2-core AMD Zen 1 machine
/// (AVX2) two lanes ran each image 30% slower than one core alone (1050 ms for the batch)
/// while one image at a time on both threads took 105 ms per image. Hence `Auto`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BatchSchedule {
    /// Measure: the first two batches of a size run as lanes, the next two serially, and the
    /// faster of the second runs of each is kept for that batch size.
    #[default]
    Auto,
    /// Each thread runs whole images alone on its own single-image buffers (images handed out
    /// one at a time), keeping an image's activations in its core's cache.
    ImageLanes,
    /// One image at a time, every layer split over all the threads.
    ImageSerial,
}

/// The timings [`BatchSchedule::Auto`] decides by, per batch size.
#[derive(Debug, Default)]
struct Calibration {
    /// (batch size, runs so far, the second lanes run's time, the second serial run's time)
    sizes: Vec<(usize, u32, Duration, Duration)>,
}

impl Calibration {
    /// Runs per schedule before deciding (the first of each warms caches and allocates).
    const RUNS: u32 = 2;

    fn choice(&self, batch: usize) -> BatchSchedule {
        match self.sizes.iter().find(|e| e.0 == batch) {
            None => BatchSchedule::ImageLanes,
            Some(&(_, runs, lanes, serial)) => {
                let measuring_serial = (Self::RUNS..2 * Self::RUNS).contains(&runs);
                let serial_won = runs >= 2 * Self::RUNS && serial < lanes;
                if measuring_serial || serial_won {
                    BatchSchedule::ImageSerial
                } else {
                    BatchSchedule::ImageLanes
                }
            }
        }
    }

    fn record(&mut self, batch: usize, schedule: BatchSchedule, took: Duration) {
        let i = match self.sizes.iter().position(|e| e.0 == batch) {
            Some(i) => i,
            None => {
                self.sizes.push((batch, 0, Duration::ZERO, Duration::ZERO));
                self.sizes.len() - 1
            }
        };
        let e = &mut self.sizes[i];
        if e.1 >= 2 * Self::RUNS {
            return;
        }
        e.1 += 1;
        match (schedule, e.1) {
            (BatchSchedule::ImageLanes, Self::RUNS) => e.2 = took,
            (BatchSchedule::ImageSerial, n) if n == 2 * Self::RUNS => e.3 = took,
            _ => {}
        }
    }
}

/// A model compiled for fast inference (see the [module docs](self)).
pub struct CompiledModel<'m> {
    model: &'m dyn Layer,
    options: InferenceOptions,
    pool: ThreadPool,
    serial: ThreadPool,
    /// Most recently used last.
    plans: Vec<Plan<'m>>,
    /// The per-image output shape for the shape it was compiled for.
    output_shape: Vec<usize>,
}

impl std::fmt::Debug for CompiledModel<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledModel")
            .field("model", &self.model.type_name())
            .field("threads", &self.pool.threads())
            .field(
                "compiled_shapes",
                &self.plans.iter().map(|p| p.input_shape.clone()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl<'m> CompiledModel<'m> {
    /// Compiles `model` for inputs of per-image shape `input_shape` (`[h, w, c]`, no batch
    /// axis). Other shapes the model allows are compiled when first run.
    pub fn new(model: &'m dyn Layer, input_shape: &[usize], options: &InferenceOptions) -> Result<Self> {
        let mut compiled = CompiledModel {
            model,
            options: *options,
            pool: ThreadPool::new(options.threads)?,
            serial: ThreadPool::new(1)?,
            plans: Vec::new(),
            output_shape: Vec::new(),
        };
        let i = compiled.plan(input_shape, &[])?;
        compiled.output_shape = compiled.plans[i].program.values[compiled.plans[i].program.output].shape.clone();
        Ok(compiled)
    }

    /// Compiles `model` for the input shape it declares ([`Layer::input_shape`], e.g. a
    /// [`ResNet`](crate::models::ResNet)'s); a model without one is an [`Error::Config`].
    pub fn for_model(model: &'m dyn Layer, options: &InferenceOptions) -> Result<Self> {
        let shape = model.input_shape().ok_or_else(|| {
            Error::config(
                model.type_name(),
                "this model declares no input shape of its own: give one to CompiledModel::new",
            )
        })?;
        Self::new(model, &shape, options)
    }

    /// Threads used per layer.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// Number of kernel calls per forward pass (for the most recently used input shape).
    pub fn op_count(&self) -> usize {
        self.plans.last().map_or(0, |p| p.program.ops.len())
    }

    /// Per-image output shape, for the input shape given to [`CompiledModel::new`].
    pub fn output_shape(&self) -> &[usize] {
        &self.output_shape
    }

    /// The lowered and optimised graph this model runs for `input_shape` (for inspection:
    /// `println!("{}", ...)` lists its ops).
    pub fn graph(&self, input_shape: &[usize]) -> Result<Graph<'m>> {
        let mut graph = Graph::lower(self.model, input_shape)?;
        passes::optimize(&mut graph, self.pass_options(), &[])?;
        Ok(graph)
    }

    /// Bytes of activation buffers and workspaces currently allocated.
    pub fn buffer_bytes(&self) -> usize {
        let floats = |p: &Plan<'_>| {
            p.buffers.iter().map(AlignedBuf::capacity).sum::<usize>()
                + p.workspaces
                    .iter()
                    .map(|w| w.lock().map_or(0, |w| w.floats.capacity()))
                    .sum::<usize>()
                + p.lanes
                    .iter()
                    .map(|l| {
                        l.lock().map_or(0, |l| {
                            l.buffers.iter().map(AlignedBuf::capacity).sum::<usize>()
                                + l.workspace[0].lock().map_or(0, |w| w.floats.capacity())
                        })
                    })
                    .sum::<usize>()
        };
        4 * self.plans.iter().map(floats).sum::<usize>()
    }

    fn pass_options(&self) -> PassOptions {
        PassOptions {
            fold_batch_norm: self.options.fold_batch_norm,
            winograd: self.options.winograd,
        }
    }

    /// The index of the plan for this shape and tap set, compiled if new; it becomes the most
    /// recently used (last).
    fn plan(&mut self, input_shape: &[usize], taps: &[&str]) -> Result<usize> {
        if let Some(i) = self
            .plans
            .iter()
            .position(|p| p.input_shape == input_shape && p.taps.iter().map(String::as_str).eq(taps.iter().copied()))
        {
            let plan = self.plans.remove(i);
            self.plans.push(plan);
            return Ok(self.plans.len() - 1);
        }
        let mut graph = Graph::lower(self.model, input_shape)?;
        let keep = taps.iter().map(|t| graph.value_named(t)).collect::<Result<Vec<ValueId>>>()?;
        passes::optimize(&mut graph, self.pass_options(), &keep)?;
        let program = program::generate(&graph, &keep, self.options.fuse_blocks)?;
        let (split, split_value) = schedule::lane_split(&program);
        let workspaces = (0..self.pool.threads()).map(|_| Mutex::new(exec::Workspace::default())).collect();
        if self.plans.len() >= MAX_PLANS {
            self.plans.remove(0);
        }
        self.plans.push(Plan {
            input_shape: input_shape.to_vec(),
            taps: taps.iter().map(|t| t.to_string()).collect(),
            tap_values: keep.iter().map(|v| program.roots[v.0]).collect(),
            program,
            batch: 0,
            buffers: Vec::new(),
            workspaces,
            lanes: Vec::new(),
            split,
            split_value,
            schedule: self.options.schedule,
            calibration: Calibration::default(),
        });
        Ok(self.plans.len() - 1)
    }

    /// Runs a batch and returns the output as a new tensor.
    pub fn run(&mut self, x: &crate::layers::TensorRef) -> Result<ArrayD<f32>> {
        let i = self.plan(per_image(x.shape())?, &[])?;
        let (batch, per_out) = (x.shape()[0], self.plans[i].program.values[self.plans[i].program.output].len());
        let mut out = vec![0.0; batch * per_out];
        self.run_into(x.view(), &mut out)?;
        let shape = self.batched_output_shape(i, batch);
        ArrayD::from_shape_vec(IxDyn(&shape), out)
            .map_err(|e| Error::shape("CompiledModel", format!("{}", ShapeFmt(&shape)), e.to_string()))
    }

    fn batched_output_shape(&self, plan: usize, batch: usize) -> Vec<usize> {
        let p = &self.plans[plan].program;
        let mut shape = vec![batch];
        shape.extend_from_slice(&p.values[p.output].shape);
        shape
    }

    /// Runs a batch into `out` (`batch * per-image output` elements). After the first call at a
    /// given input shape, this allocates nothing (for models whose ops all have fast kernels).
    /// An input the model cannot take is an [`Error::Shape`]; one holding NaN or infinity an
    /// [`Error::NonFinite`]; an output holding them (the weights or the arithmetic made them) an
    /// [`Error::NonFiniteOutput`].
    pub fn run_into(&mut self, x: ArrayViewD<'_, f32>, out: &mut [f32]) -> Result<()> {
        let i = self.plan(per_image(x.shape())?, &[])?;
        let CompiledModel { pool, serial, plans, .. } = self;
        plans[i].run(pool, serial, x, out, None, true)
    }

    /// Runs a batch and also returns the values of the layers named in `names` (the names
    /// [`Layer::forward_with_taps`] takes: `res2c`, `layer1/0/conv1`, a Keras summary's
    /// `res2a_branch2a`). Tapped values are kept out of the fusions; an unknown name is an
    /// [`Error::Config`].
    pub fn run_with_taps(&mut self, x: &crate::layers::TensorRef, names: &[&str]) -> Result<(ArrayD<f32>, Taps)> {
        let i = self.plan(per_image(x.shape())?, names)?;
        let batch = x.shape()[0];
        let mut out = vec![0.0; self.batched_output_shape(i, batch).iter().product()];
        let CompiledModel { pool, serial, plans, .. } = self;
        let plan = &mut plans[i];
        plan.run(pool, serial, x.view(), &mut out, None, false)?;
        let mut taps = Vec::with_capacity(names.len());
        for (name, &v) in plan.taps.iter().zip(&plan.tap_values) {
            let value = &plan.program.values[v];
            let len = batch * value.len();
            let mut shape = vec![batch];
            shape.extend_from_slice(&value.shape);
            let data = plan.buffers[value.slot][..len].to_vec();
            taps.push((
                name.clone(),
                ArrayD::from_shape_vec(IxDyn(&shape), data).map_err(|e| Error::shape(name, "a tap", e.to_string()))?,
            ));
        }
        let shape = self.batched_output_shape(i, batch);
        let y = ArrayD::from_shape_vec(IxDyn(&shape), out)
            .map_err(|e| Error::shape("CompiledModel", format!("{}", ShapeFmt(&shape)), e.to_string()))?;
        Ok((y, taps))
    }

    /// Runs a batch and returns how long each kernel call took, by layer name.
    pub fn profile(&mut self, x: &crate::layers::TensorRef) -> Result<Vec<(String, Duration)>> {
        let i = self.plan(per_image(x.shape())?, &[])?;
        let mut out = vec![0.0; self.batched_output_shape(i, x.shape()[0]).iter().product()];
        let mut times = Vec::with_capacity(self.plans[i].program.ops.len());
        let CompiledModel { pool, serial, plans, .. } = self;
        plans[i].run(pool, serial, x.view(), &mut out, Some(&mut times), false)?;
        Ok(times)
    }
}

impl Plan<'_> {
    fn workspace_sizes(&self, batch: usize) -> (usize, usize) {
        let ops = &self.program.ops;
        let floats = ops.iter().map(|op| op.workspace_len(batch).0).max().unwrap_or(0);
        let segments = ops.iter().map(|op| op.workspace_len(batch).1).max().unwrap_or(0);
        (floats, segments)
    }

    fn alloc_buffers(&self, batch: usize) -> Result<Vec<AlignedBuf>> {
        self.program
            .slot_sizes
            .iter()
            .map(|&s| crate::error::checked_product("CompiledModel", &[s, batch]).map(AlignedBuf::zeroed))
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
                floats: AlignedBuf::zeroed(floats),
                segments: Vec::with_capacity(segments),
            };
        }
        self.batch = batch;
        Ok(())
    }

    fn ensure_lanes(&mut self, threads: usize) -> Result<()> {
        if !self.lanes.is_empty() {
            return Ok(());
        }
        let (floats, segments) = self.workspace_sizes(1);
        for _ in 0..threads {
            let workspace = [Mutex::new(exec::Workspace {
                floats: AlignedBuf::zeroed(floats),
                segments: Vec::with_capacity(segments),
            })];
            self.lanes.push(Mutex::new(Lane {
                buffers: self.alloc_buffers(1)?,
                workspace,
            }));
        }
        Ok(())
    }

    /// The schedule for a batch of `batch` images: the options' choice, or for
    /// [`BatchSchedule::Auto`] the one [`Calibration`] measured faster on this machine.
    fn schedule_for(&self, batch: usize, threads: usize) -> BatchSchedule {
        match self.schedule {
            BatchSchedule::Auto if threads == 1 => BatchSchedule::ImageLanes,
            BatchSchedule::Auto => self.calibration.choice(batch),
            other => other,
        }
    }

    /// Runs `ops[..split]` image by image (see [`BatchSchedule`]), each image's result going to
    /// `out` (when the split is the end) or to the crossing value's batch buffer.
    fn run_images(
        &mut self,
        pool: &ThreadPool,
        serial: &ThreadPool,
        x: &[f32],
        batch: usize,
        out: &mut [f32],
        schedule: BatchSchedule,
    ) -> Result<()> {
        self.ensure_lanes(pool.threads())?;
        let split = self.split;
        let whole = split == self.program.ops.len();
        // The batch buffers hold the crossing value, and the serial schedule's threads share the
        // batch workspaces.
        self.ensure_batch(batch)?;
        let per_in = self.program.values[self.program.input].len();
        let per_out = self.program.values[self.program.output].len();
        let (ops, values, lanes) = (&self.program.ops, &self.program.values, &self.lanes);
        let (input_slot, output_slot) = (values[self.program.input].slot, values[self.program.output].slot);
        // Where each image's result of the image-by-image phase goes: the output, or the
        // crossing value's batch buffer.
        let (dst, per_dst, from_slot) = if whole {
            (pool::SendPtr(out.as_mut_ptr()), per_out, output_slot)
        } else {
            let v = &values[self.split_value];
            (pool::SendPtr(self.buffers[v.slot].as_mut_ptr()), v.len(), v.slot)
        };
        let one_image = |image: usize, buffers: &mut [AlignedBuf], ctx: &exec::Ctx<'_>| -> Result<()> {
            buffers[input_slot][..per_in].copy_from_slice(&x[image * per_in..(image + 1) * per_in]);
            ops[..split].iter().try_for_each(|op| op.run(ctx, buffers))?;
            // SAFETY: `dst` holds `batch * per_dst` floats (the output, or a buffer sized for the
            // batch), and each image's share is written by exactly one thread.
            let dst = unsafe { std::slice::from_raw_parts_mut(dst.get().add(image * per_dst), per_dst) };
            dst.copy_from_slice(&buffers[from_slot][..per_dst]);
            Ok(())
        };
        if schedule == BatchSchedule::ImageSerial {
            let mut lane = lanes[0].lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let ctx = exec::Ctx {
                values,
                batch: 1,
                pool,
                workspaces: &self.workspaces,
            };
            return (0..batch).try_for_each(|image| one_image(image, &mut lane.buffers, &ctx));
        }
        let failed = Mutex::new(None);
        let next_image = AtomicUsize::new(0);
        pool.run(&|t| {
            let mut lane = lanes[t].lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let Lane { buffers, workspace } = &mut *lane;
            let ctx = exec::Ctx {
                values,
                batch: 1,
                pool: serial,
                workspaces: workspace,
            };
            // Images are handed out one at a time, so a core slowed down by a neighbour takes
            // fewer of them.
            loop {
                let image = next_image.fetch_add(1, Ordering::Relaxed);
                if image >= batch {
                    break;
                }
                if let Err(e) = one_image(image, buffers, &ctx) {
                    *failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
                    return;
                }
            }
        });
        failed
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .map_or(Ok(()), Err)
    }

    /// Runs a batch into `out`. With `lanes`, a batch of at least as many images as threads runs
    /// image by image ([`BatchSchedule`]) up to the switch point of [`schedule::lane_split`],
    /// then layer by layer over the whole batch. Without `lanes` (profiling, taps) every op
    /// runs over the whole batch, so every value is in the batch buffers afterwards.
    fn run(
        &mut self,
        pool: &ThreadPool,
        serial: &ThreadPool,
        x: ArrayViewD<'_, f32>,
        out: &mut [f32],
        times: Option<&mut Vec<(String, Duration)>>,
        lanes: bool,
    ) -> Result<()> {
        self.run_unchecked(pool, serial, x, out, times, lanes)?;
        Self::check_output(out)
    }

    fn run_unchecked(
        &mut self,
        pool: &ThreadPool,
        serial: &ThreadPool,
        x: ArrayViewD<'_, f32>,
        out: &mut [f32],
        mut times: Option<&mut Vec<(String, Duration)>>,
        lanes: bool,
    ) -> Result<()> {
        let want = &self.program.values[self.program.input].shape;
        if x.shape().len() != want.len() + 1 || &x.shape()[1..] != want.as_slice() || x.shape()[0] == 0 {
            return Err(Error::shape(
                "CompiledModel",
                format!("a batch of shape (n, {}", &ShapeFmt(want).to_string()[1..]),
                format!("{}", ShapeFmt(x.shape())),
            ));
        }
        let batch = x.shape()[0];
        let per_in = self.program.values[self.program.input].len();
        let per_out = self.program.values[self.program.output].len();
        let out_len = batch * per_out;
        if out.len() != out_len {
            return Err(Error::shape(
                "CompiledModel",
                format!("an output of {out_len} elements"),
                format!("{}", out.len()),
            ));
        }
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
        if lanes && batch > 1 && batch >= pool.threads() {
            let schedule = self.schedule_for(batch, pool.threads());
            let start = Instant::now();
            self.run_images(pool, serial, x, batch, out, schedule)?;
            self.calibration.record(batch, schedule, start.elapsed());
            first_op = self.split;
            if first_op == self.program.ops.len() {
                return Ok(());
            }
        }
        self.ensure_batch(batch)?;
        if first_op == 0 {
            let input = &mut self.buffers[self.program.values[self.program.input].slot];
            input[..batch * per_in].copy_from_slice(x);
        }
        let ctx = exec::Ctx {
            values: &self.program.values,
            batch,
            pool,
            workspaces: &self.workspaces,
        };
        for op in &self.program.ops[first_op..] {
            let start = times.as_ref().map(|_| Instant::now());
            op.run(&ctx, &mut self.buffers)?;
            if let (Some(t), Some(s)) = (times.as_deref_mut(), start) {
                t.push((op.name().to_string(), s.elapsed()));
            }
        }
        let src = &self.buffers[self.program.values[self.program.output].slot][..out_len];
        out.copy_from_slice(src);
        Ok(())
    }

    /// The output check every run ends with: NaN or infinity in it is an error (the input was
    /// checked finite, so the weights or the arithmetic produced them).
    fn check_output(out: &[f32]) -> Result<()> {
        let count = out.iter().filter(|v| !v.is_finite()).count();
        if count > 0 {
            return Err(Error::NonFiniteOutput {
                count,
                origin: "run the model's Layer::forward (the reference executor) on the same input to see which layer they first appear in"
                    .into(),
            });
        }
        Ok(())
    }
}
