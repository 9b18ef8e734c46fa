//! [`ResNetConfig`]: every choice that makes one "ResNet" differ from another, and the
//! presets that reproduce each reference.

use super::block::{BlockKind, PadMode, StridePlacement};
use super::names::NameStyle;
use crate::error::{Error, Result};

/// The classifier head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Head {
    /// `AveragePooling2D(pool_size)` then `Flatten`: the seed's head; it fixes the input size
    /// (7x7 after stage 5 means a 224x224 input).
    AvgPoolFlatten {
        /// The pooling window (7 for 224x224 inputs).
        pool_size: usize,
    },
    /// Global average pooling: any input size.
    GlobalAvgPool,
}

/// The layers before the residual stages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stem {
    /// Convolution 7x7 stride 2 (`stem_width` filters), BatchNorm, ReLU, max pool 3x3 stride
    /// 2: the ImageNet ResNets (a quarter of the input's size after it).
    ImageNet,
    /// Convolution 3x3 stride 1 with padding 1, BatchNorm, ReLU, no pool: the ResNets of He et
    /// al. (2016) for CIFAR-sized images (32x32, 28x28, 8x8), which keep the input's size.
    Small,
}

/// Standard depths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Depth {
    /// BasicBlock, stages [2, 2, 2, 2].
    R18,
    /// BasicBlock, stages [3, 4, 6, 3].
    R34,
    /// Bottleneck, stages [3, 4, 6, 3].
    R50,
    /// Bottleneck, stages [3, 4, 23, 3].
    R101,
    /// Bottleneck, stages [3, 8, 36, 3].
    R152,
}

impl Depth {
    /// The block kind and the block count of each stage.
    pub fn blocks(self) -> (BlockKind, [usize; 4]) {
        match self {
            Depth::R18 => (BlockKind::Basic, [2, 2, 2, 2]),
            Depth::R34 => (BlockKind::Basic, [3, 4, 6, 3]),
            Depth::R50 => (BlockKind::Bottleneck, [3, 4, 6, 3]),
            Depth::R101 => (BlockKind::Bottleneck, [3, 4, 23, 3]),
            Depth::R152 => (BlockKind::Bottleneck, [3, 8, 36, 3]),
        }
    }

    /// The number in the name (18, 34, 50, 101, 152).
    pub fn layers(self) -> usize {
        match self {
            Depth::R18 => 18,
            Depth::R34 => 34,
            Depth::R50 => 50,
            Depth::R101 => 101,
            Depth::R152 => 152,
        }
    }
}

/// A complete ResNet description. Start from a preset and adjust fields or use the `with_*`
/// methods; [`ResNet::new`](super::ResNet::new) validates and builds it.
#[derive(Clone, Debug, PartialEq)]
pub struct ResNetConfig {
    /// The model's name, shown by the summary.
    pub name: String,
    /// Basic or bottleneck blocks.
    pub block: BlockKind,
    /// Blocks per stage.
    pub stage_blocks: Vec<usize>,
    /// `planes` per stage (a stage outputs `planes * expansion` channels).
    pub stage_widths: Vec<usize>,
    /// The stem's kind.
    pub stem: Stem,
    /// Filters of the stem convolution.
    pub stem_width: usize,
    /// `(height, width, channels)` of one input image.
    pub input_shape: [usize; 3],
    /// Where a downsampling block's stride goes.
    pub stride_placement: StridePlacement,
    /// Whether convolutions have biases.
    pub conv_bias: bool,
    /// BatchNorm epsilon everywhere.
    pub bn_epsilon: f32,
    /// How 3x3 (and the stem's 7x7) convolutions pad.
    pub pad_mode: PadMode,
    /// Padding before the stem's 3x3/2 max pool: 0 in the seed (55x55 after it), 1 in later
    /// Keras and torchvision (56x56).
    pub stem_pool_padding: usize,
    /// Pooling before the classifier.
    pub head: Head,
    /// Output classes (0: no classifier, the model ends with the pooled features).
    pub classes: usize,
    /// Softmax after the classifier (Keras) or raw logits (torchvision).
    pub softmax: bool,
    /// How layers are named (and so which weights files load by name).
    pub names: NameStyle,
    /// Groups of each bottleneck's 3x3 convolution (ResNeXt's cardinality; 1 otherwise).
    pub groups: usize,
    /// torchvision's `width_per_group` (64 for ResNet; see [`BlockConfig::base_width`](super::BlockConfig::base_width)).
    pub base_width: usize,
    /// Squeeze-and-excitation in every block, with this reduction ratio (see
    /// [`BlockConfig::se_reduction`](super::BlockConfig::se_reduction)); `None` for none.
    pub se_reduction: Option<usize>,
}

impl ResNetConfig {
    /// The seed's Keras ResNet50 ("layout A": `keras/applications/resnet50.py` before
    /// keras-applications 36436f6, and `resnet50_weights_tf_dim_ordering_tf_kernels.h5`): stride
    /// on the first 1x1, conv biases, BatchNorm epsilon 1e-3, `'valid'` 3x3/2 max pool (55x55),
    /// `AveragePooling2D(7)` + `Flatten` + `Dense(1000, softmax)` named `fc1000`.
    /// 25,636,712 parameters.
    pub fn keras_resnet50() -> Self {
        ResNetConfig {
            name: "resnet50".into(),
            block: BlockKind::Bottleneck,
            stage_blocks: vec![3, 4, 6, 3],
            stage_widths: vec![64, 128, 256, 512],
            stem: Stem::ImageNet,
            stem_width: 64,
            input_shape: [224, 224, 3],
            stride_placement: StridePlacement::FirstConv,
            conv_bias: true,
            bn_epsilon: 1e-3,
            pad_mode: PadMode::KerasSame,
            stem_pool_padding: 0,
            head: Head::AvgPoolFlatten { pool_size: 7 },
            classes: 1000,
            softmax: true,
            names: NameStyle::KerasClassic,
            groups: 1,
            base_width: 64,
            se_reduction: None,
        }
    }

    /// keras-applications' ResNet50 from August 2018 on ("layout B"): the same names and
    /// weights file as [`keras_resnet50`](Self::keras_resnet50), plus `pool1_pad`
    /// (`ZeroPadding2D(1)`, so 56x56 after the max pool) and a global-average-pooling head.
    pub fn keras_applications_resnet50() -> Self {
        ResNetConfig {
            stem_pool_padding: 1,
            head: Head::GlobalAvgPool,
            ..Self::keras_resnet50()
        }
    }

    /// tf.keras / Keras 3 `applications/resnet.py` ("layout C"): ResNet50, 101 or 152 with
    /// names like `conv2_block1_1_conv`, BatchNorm epsilon 1.001e-5, 56x56 after the max pool,
    /// a global-average-pooling head and `predictions`. (Keras has no ResNet18/34 of this kind.)
    pub fn keras_modern(depth: Depth) -> Result<Self> {
        let (block, blocks) = depth.blocks();
        if block != BlockKind::Bottleneck {
            return Err(Error::config(
                "ResNetConfig",
                format!("Keras' applications have no ResNet{}", depth.layers()),
            ));
        }
        Ok(ResNetConfig {
            name: format!("resnet{}", depth.layers()),
            stage_blocks: blocks.to_vec(),
            bn_epsilon: 1.001e-5,
            stem_pool_padding: 1,
            head: Head::GlobalAvgPool,
            names: NameStyle::KerasModern,
            groups: 1,
            base_width: 64,
            se_reduction: None,
            ..Self::keras_resnet50()
        })
    }

    /// torchvision's `resnet18/34/50/101/152`: stride on the 3x3 ("v1.5"), no conv biases,
    /// BatchNorm epsilon 1e-5, symmetric padding, max pool with padding 1, global average pool,
    /// `fc` logits (no softmax). ResNet50 has 25,557,032 parameters.
    pub fn torchvision(depth: Depth) -> Self {
        let (block, blocks) = depth.blocks();
        ResNetConfig {
            name: format!("resnet{}", depth.layers()),
            block,
            stage_blocks: blocks.to_vec(),
            stage_widths: vec![64, 128, 256, 512],
            stem: Stem::ImageNet,
            stem_width: 64,
            input_shape: [224, 224, 3],
            stride_placement: StridePlacement::SpatialConv,
            conv_bias: false,
            bn_epsilon: 1e-5,
            pad_mode: PadMode::Symmetric,
            stem_pool_padding: 1,
            head: Head::GlobalAvgPool,
            classes: 1000,
            softmax: false,
            names: NameStyle::Torchvision,
            groups: 1,
            base_width: 64,
            se_reduction: None,
        }
    }

    /// torchvision's `resnext50_32x4d`, `resnext101_32x8d` and `resnext101_64x4d`: the
    /// torchvision ResNet of `depth` (50 or 101) whose bottlenecks' 3x3 convolutions have
    /// `groups` groups of `base_width` channels at 64 planes. Parameters: 25,028,904,
    /// 88,791,336 and 83,455,272.
    pub fn torchvision_resnext(depth: Depth, groups: usize, base_width: usize) -> Result<Self> {
        if !matches!(depth, Depth::R50 | Depth::R101 | Depth::R152) {
            return Err(Error::config(
                "ResNeXt",
                format!("needs a bottleneck depth (50, 101, 152), got {}", depth.layers()),
            ));
        }
        Ok(ResNetConfig {
            name: format!("resnext{}_{groups}x{base_width}d", depth.layers()),
            groups,
            base_width,
            ..Self::torchvision(depth)
        })
    }

    /// torchvision's `wide_resnet50_2` and `wide_resnet101_2`: the torchvision ResNet of `depth`
    /// with bottlenecks twice as wide inside (base width 128; the outputs stay as wide).
    /// Parameters: 68,883,240 and 126,886,696.
    pub fn torchvision_wide(depth: Depth) -> Result<Self> {
        if !matches!(depth, Depth::R50 | Depth::R101 | Depth::R152) {
            return Err(Error::config(
                "Wide ResNet",
                format!("needs a bottleneck depth (50, 101, 152), got {}", depth.layers()),
            ));
        }
        Ok(ResNetConfig {
            name: format!("wide_resnet{}_2", depth.layers()),
            base_width: 128,
            ..Self::torchvision(depth)
        })
    }

    /// A custom configuration: SE-ResNet (Hu et al., 2018), the torchvision ResNet of `depth`
    /// with a squeeze-and-excitation module of reduction ratio 16 in every block (after the
    /// last BatchNorm of the main branch, before the addition; dense layers with biases).
    /// SE-ResNet50 has 28,088,024 parameters (timm's `seresnet50` has as many, its squeeze
    /// and excitation as 1x1 convolutions).
    pub fn torchvision_se(depth: Depth) -> Self {
        ResNetConfig {
            name: format!("se_resnet{}", depth.layers()),
            se_reduction: Some(16),
            ..Self::torchvision(depth)
        }
    }

    /// The ResNets of He et al. (2016, section 4.2) for small images, `depth` = 6n + 2 (20,
    /// 32, 44, 56, 110, ...): a [`Stem::Small`] of 16 filters, three stages of n BasicBlocks at
    /// 16, 32 and 64 planes (stride 2 at the start of the second and third), global average
    /// pooling and a linear classifier giving logits. Downsampling blocks use 1x1 projection
    /// shortcuts (the paper's option B); torchvision's conventions and names (`conv1`, `bn1`,
    /// `layer1.0.conv1`, `fc`). ResNet-20 for 32x32x3 input and 10 classes has 272,474
    /// trainable parameters, 274,042 with the BatchNorm statistics (the paper's 0.27 M, with
    /// parameter-free shortcuts, is 269,722); for 28x28x1 input, 272,186 trainable.
    /// `input_shape` is one image, e.g. `[28, 28, 1]` for Fashion-MNIST.
    pub fn small_image_resnet(depth: usize, input_shape: [usize; 3], classes: usize) -> Result<Self> {
        if depth < 8 || !(depth - 2).is_multiple_of(6) {
            return Err(Error::config(
                "ResNetConfig",
                format!("a small-image ResNet has depth 6n + 2 (8, 14, 20, 32, 44, 56, 110, ...), not {depth}"),
            ));
        }
        let n = (depth - 2) / 6;
        Ok(ResNetConfig {
            name: format!("resnet{depth}"),
            block: BlockKind::Basic,
            stage_blocks: vec![n; 3],
            stage_widths: vec![16, 32, 64],
            stem: Stem::Small,
            stem_width: 16,
            input_shape,
            classes,
            ..Self::torchvision(Depth::R18)
        })
    }

    /// Divides every width (stem and stages) by `divisor`, keeping at least 1: the reference
    /// fixtures use `with_width_divisor(8)`.
    pub fn with_width_divisor(mut self, divisor: usize) -> Self {
        let d = divisor.max(1);
        self.stem_width = (self.stem_width / d).max(1);
        self.stage_widths.iter_mut().for_each(|w| *w = (*w / d).max(1));
        self
    }

    /// Sets the number of classes (0 for a feature extractor).
    pub fn with_classes(mut self, classes: usize) -> Self {
        self.classes = classes;
        self
    }

    /// Sets the input image size and channels.
    pub fn with_input_shape(mut self, input_shape: [usize; 3]) -> Self {
        self.input_shape = input_shape;
        self
    }

    /// Checks that the configuration can be built.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::config(format!("ResNetConfig {}", self.name), reason));
        if self.stage_blocks.is_empty() || self.stage_blocks.len() != self.stage_widths.len() {
            return bad(format!(
                "needs one width per stage, got {} stages and {} widths",
                self.stage_blocks.len(),
                self.stage_widths.len()
            ));
        }
        if self.stage_blocks.contains(&0) || self.stage_widths.contains(&0) || self.stem_width == 0 {
            return bad("every stage needs at least one block and a width of at least 1".into());
        }
        if self.input_shape.contains(&0) {
            return bad(format!("input shape {:?} has a zero dimension", self.input_shape));
        }
        Ok(())
    }
}
