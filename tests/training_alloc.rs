//! A steady-state training step allocates no new large buffer: activations, gradients, packed
//! kernels and partial sums come back to the trainer ([`Trainer::recycle`]) and are reused.
//! Counted with a counting global allocator (the only test in this binary, so no other test
//! allocates meanwhile).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use convnet::init::{initialize, InitScheme};
use convnet::models::{ResNet, ResNetConfig};
use convnet::train::{Optimizer, Rule, Trainer, TrainingMode};
use ndarray::{ArrayD, IxDyn};

struct Counting;

/// An allocation at least this large counts as a large buffer (the smallest activation of the
/// network below is 400 KB, its largest parameter gradient 147 KB).
const LARGE: usize = 64 << 10;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);
static LARGE_ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static LARGE_BYTES: AtomicUsize = AtomicUsize::new(0);

fn count(bytes: usize) {
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    BYTES.fetch_add(bytes, Ordering::Relaxed);
    if bytes >= LARGE {
        LARGE_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        LARGE_BYTES.fetch_add(bytes, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn counters() -> [usize; 4] {
    [&ALLOCATIONS, &BYTES, &LARGE_ALLOCATIONS, &LARGE_BYTES].map(|a| a.load(Ordering::SeqCst))
}

#[test]
fn steady_state_training_steps_allocate_no_large_buffer() {
    for (threads, depth, input_gradient) in [(1, 8, true), (2, 20, true), (3, 8, false)] {
        let mut model = ResNet::new(ResNetConfig::small_image_resnet(depth, [28, 28, 1], 10).unwrap()).unwrap();
        initialize(&mut model, &InitScheme::torchvision_resnet(), 0).unwrap();
        let batch = 32;
        let x = ArrayD::from_shape_fn(IxDyn(&[batch, 28, 28, 1]), |i| ((i[1] * 7 + i[2] * 3 + i[0]) % 11) as f32 / 11.0);
        let labels: Vec<usize> = (0..batch).map(|i| i % 10).collect();
        let mode = TrainingMode {
            input_gradient,
            ..TrainingMode::default()
        };
        let trainer = Trainer::new(mode, threads).unwrap();
        let mut sgd = Optimizer::new(Rule::sgd(0.9, 5e-4, true));
        let mut per_step = Vec::new();
        let mut losses = Vec::new();
        for _ in 0..4 {
            let before = counters();
            let step = trainer.compute_gradients(&model, &x, &labels, 0.0).unwrap();
            sgd.step(&mut model, &step.gradients, 0.05).unwrap();
            step.apply_running_stats(&mut model).unwrap();
            losses.push(step.loss);
            trainer.recycle(step);
            let after = counters();
            per_step.push([0, 1, 2, 3].map(|k| after[k] - before[k]));
        }
        let first = per_step[0];
        assert!(
            first[2] > 20 && first[3] > 10 << 20,
            "the counter must see the first step allocate its buffers: {first:?}"
        );
        for (i, s) in per_step.iter().enumerate().skip(1) {
            assert_eq!(
                s[2], 0,
                "{threads} threads, ResNet-{depth}: step {i} allocated {} large buffers ({} bytes)",
                s[2], s[3]
            );
            // What remains is small bookkeeping (the lowered graph, names, the loss): a few
            // percent of what the first step allocated.
            assert!(s[1] * 20 < first[1], "step {i} allocated {} bytes, the first {}", s[1], first[1]);
        }
        // Reused buffers hold stale data: the steps must still be learning the batch.
        assert!(losses[3] < losses[0], "losses {losses:?}");
    }
}
