// The GEMMs of ResNet50 at batch 1 (224 x 224, NHWC): M = output pixels, K = kh * kw * input
// channels, N = filters. Shared by `benches/gemm.rs` and `examples/bench_gemm.rs` (`#[path]`).

/// A GEMM of ResNet50: where it occurs, `M`, `K`, `N`, and whether it is a 1x1 convolution.
#[allow(dead_code)] // (not every includer reads every field)
pub struct GemmShape {
    pub layer: &'static str,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub pointwise: bool,
}

const fn shape(layer: &'static str, m: usize, k: usize, n: usize, pointwise: bool) -> GemmShape {
    GemmShape { layer, m, k, n, pointwise }
}

/// Every distinct 1x1 shape (the Keras layout, strides on the first 1x1 of a stage), the 3x3
/// convolutions as im2col GEMMs, the 7x7 stem and the classifier.
pub const RESNET50_GEMMS: &[GemmShape] = &[
    shape("conv1 (7x7/2, im2col)", 12544, 147, 64, false),
    shape("res2a_branch2a", 3136, 64, 64, true),
    shape("res2a_branch2c, res2a_branch1", 3136, 64, 256, true),
    shape("res2b_branch2a", 3136, 256, 64, true),
    shape("res2a_branch2b (3x3, im2col)", 3136, 576, 64, false),
    shape("res3a_branch2a", 784, 256, 128, true),
    shape("res3a_branch1", 784, 256, 512, true),
    shape("res3a_branch2c", 784, 128, 512, true),
    shape("res3b_branch2a", 784, 512, 128, true),
    shape("res3a_branch2b (3x3, im2col)", 784, 1152, 128, false),
    shape("res4a_branch2a", 196, 512, 256, true),
    shape("res4a_branch1", 196, 512, 1024, true),
    shape("res4a_branch2c", 196, 256, 1024, true),
    shape("res4b_branch2a", 196, 1024, 256, true),
    shape("res4a_branch2b (3x3, im2col)", 196, 2304, 256, false),
    shape("res5a_branch2a", 49, 1024, 512, true),
    shape("res5a_branch1", 49, 1024, 2048, true),
    shape("res5a_branch2c", 49, 512, 2048, true),
    shape("res5b_branch2a", 49, 2048, 512, true),
    shape("res5a_branch2b (3x3, im2col)", 49, 4608, 512, false),
    shape("fc1000", 1, 2048, 1000, false),
];
