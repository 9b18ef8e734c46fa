//! Steady-state forward passes of a compiled model allocate nothing: buffers and workspaces
//! are allocated once per batch size and reused. Counted with a counting global allocator (the
//! only test in this binary, so no other test allocates meanwhile).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use convnet::inference::{CompiledModel, InferenceOptions};
use convnet::layers::Layer;
use convnet::models::{MobileNetV2, MobileNetV2Config, ResNet, ResNetConfig};
use convnet::weights::{LoadOptions, WeightFile};
use ndarray::{ArrayD, IxDyn};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn steady_state_forward_passes_allocate_nothing() {
    let mut resnet = ResNet::new(ResNetConfig::keras_resnet50().with_width_divisor(8)).unwrap();
    WeightFile::open(common::fixture("keras_resnet50_w8/resnet50.h5"))
        .unwrap()
        .load_into(&mut resnet, &LoadOptions::strict())
        .unwrap();
    // Depthwise convolutions and fused inverted residual blocks, with their band workspaces.
    let mut mobilenet = MobileNetV2::new(MobileNetV2Config::torchvision().with_width_mult(0.35)).unwrap();
    common::randomize(&mut mobilenet, 3);
    for model in [&resnet as &dyn Layer, &mobilenet] {
        check_steady_state(model);
    }
}

fn check_steady_state(model: &dyn Layer) {
    // batch 1 runs layer-parallel; batch 4 on 2 threads runs image-parallel lanes
    for (threads, batch) in [(1, 1), (2, 1), (2, 4), (3, 2)] {
        let mut fast = CompiledModel::new(
            model,
            &[224, 224, 3],
            &InferenceOptions {
                threads,
                fold_batch_norm: true,
                winograd: true,
                ..Default::default()
            },
        )
        .unwrap();
        let x = ArrayD::from_shape_fn(IxDyn(&[batch, 224, 224, 3]), |i| (i[1] % 7) as f32 - (i[2] % 5) as f32);
        let mut out = vec![0.0; batch * 1000];
        let fresh = ALLOCATIONS.load(Ordering::SeqCst);
        fast.run_into(x.view(), &mut out).unwrap(); // the first call at a batch size allocates
        assert!(
            ALLOCATIONS.load(Ordering::SeqCst) > fresh,
            "the counter must see the buffers being allocated"
        );
        let first = out.clone();
        let before = (ALLOCATIONS.load(Ordering::SeqCst), BYTES.load(Ordering::SeqCst));
        for _ in 0..3 {
            fast.run_into(x.view(), &mut out).unwrap();
        }
        let after = (ALLOCATIONS.load(Ordering::SeqCst), BYTES.load(Ordering::SeqCst));
        assert_eq!(
            after.0 - before.0,
            0,
            "threads {threads}, batch {batch}: {} allocations ({} bytes) in steady state",
            after.0 - before.0,
            after.1 - before.1
        );
        assert_eq!(out, first);
        assert!(out.iter().all(|v| v.is_finite()));
    }
}
