//! Residual block builders: [`Bottleneck`] (1x1, 3x3, 1x1, expansion 4) and [`BasicBlock`]
//! (3x3, 3x3), with the variants different references use as configuration.

use super::names::BlockNames;
use crate::error::{Error, Result};
use crate::kernels::{Padding, Padding2d};
use crate::layers::{Activation, BatchNorm, ChannelGate, Conv2d, Conv2dConfig, Dense, GlobalAvgPool, Relu, Residual, Sequential};

/// Which convolution of a downsampling block carries the stride.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StridePlacement {
    /// The first 1x1 (and the shortcut): the original ResNet ("v1"), Keras and Caffe.
    FirstConv,
    /// The 3x3 (and the shortcut): torchvision's ResNet ("v1.5").
    SpatialConv,
}

/// How a 3x3 convolution is padded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PadMode {
    /// Keras' `padding='same'`: a strided conv on an even input pads only bottom/right.
    KerasSame,
    /// PyTorch's `padding=k/2` on every side.
    Symmetric,
}

impl PadMode {
    fn for_kernel(self, k: usize) -> Padding {
        match self {
            PadMode::KerasSame => Padding::Same,
            PadMode::Symmetric => Padding::Explicit(Padding2d::uniform(k / 2)),
        }
    }
}

/// Everything that shapes one residual block.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockConfig {
    /// Channels coming in.
    pub in_channels: usize,
    /// The block's width (the bottleneck's inner channels; a basic block's channels). The block
    /// outputs `planes * expansion` channels.
    pub planes: usize,
    /// 1, or 2 for the first block of a downsampling stage.
    pub stride: usize,
    /// Where the stride goes.
    pub stride_placement: StridePlacement,
    /// Whether the convolutions have biases (Keras yes, torchvision no).
    pub conv_bias: bool,
    /// BatchNorm epsilon (1e-3 classic Keras, 1.001e-5 modern Keras, 1e-5 torchvision).
    pub bn_epsilon: f32,
    /// How the 3x3 convolution pads.
    pub pad_mode: PadMode,
    /// Groups of the bottleneck's 3x3 convolution (ResNeXt's cardinality; 1 otherwise).
    pub groups: usize,
    /// Channels per group of the bottleneck's 3x3 at 64 planes (torchvision's
    /// `width_per_group`: 64 for ResNet, 4 or 8 for ResNeXt, 128 for Wide ResNet-2).
    pub base_width: usize,
    /// A squeeze-and-excitation module at the end of the main branch, before the addition,
    /// with this reduction ratio (Hu et al., 2018: 16): global average pooling, a dense layer
    /// to `channels / ratio` with ReLU, a dense layer back with sigmoid, and the channels
    /// scaled by the result. Named `se` (`se.fc1`, `se.fc2`) in the block.
    pub se_reduction: Option<usize>,
}

impl BlockConfig {
    /// A torchvision-style block: stride on the 3x3, no conv bias, epsilon 1e-5, symmetric padding.
    pub fn torchvision(in_channels: usize, planes: usize, stride: usize) -> Self {
        BlockConfig {
            in_channels,
            planes,
            stride,
            stride_placement: StridePlacement::SpatialConv,
            conv_bias: false,
            bn_epsilon: 1e-5,
            pad_mode: PadMode::Symmetric,
            groups: 1,
            base_width: 64,
            se_reduction: None,
        }
    }

    /// A classic Keras block: stride on the first 1x1, conv bias, epsilon 1e-3, `'same'` padding.
    pub fn keras(in_channels: usize, planes: usize, stride: usize) -> Self {
        BlockConfig {
            in_channels,
            planes,
            stride,
            stride_placement: StridePlacement::FirstConv,
            conv_bias: true,
            bn_epsilon: 1e-3,
            pad_mode: PadMode::KerasSame,
            groups: 1,
            base_width: 64,
            se_reduction: None,
        }
    }

    /// The bottleneck's inner channels: torchvision's `int(planes * base_width / 64) * groups`
    /// (`planes` itself for a plain ResNet).
    pub fn bottleneck_width(&self) -> usize {
        self.planes * self.base_width / 64 * self.groups
    }

    /// Whether a block with `out_channels` outputs needs a projection shortcut
    /// (torchvision's rule: the stride or the channel count changes).
    pub fn needs_projection(&self, out_channels: usize) -> bool {
        self.stride != 1 || self.in_channels != out_channels
    }

    fn conv(&self, cin: usize, cout: usize, k: usize, stride: usize, groups: usize) -> Result<Conv2d> {
        let padding = if k == 1 { Padding::Valid } else { self.pad_mode.for_kernel(k) };
        Conv2d::new(
            Conv2dConfig::new(cin, cout, [k, k])
                .with_strides([stride, stride])
                .with_padding(padding)
                .with_bias(self.conv_bias)
                .with_groups(groups),
        )
    }

    /// Main branch from `(cin, cout, kernel, stride, groups)` steps, then the shortcut, joined
    /// with ReLU.
    fn assemble(&self, steps: &[(usize, usize, usize, usize, usize)], names: &BlockNames) -> Result<Residual> {
        if names.convs.len() != steps.len() || names.bns.len() != steps.len() || names.relus.len() + 1 != steps.len() {
            return Err(Error::config(
                "residual block",
                format!(
                    "{} convolutions need as many conv and BatchNorm names and one ReLU name fewer",
                    steps.len()
                ),
            ));
        }
        let mut main = Sequential::new();
        for (i, &(cin, cout, k, s, groups)) in steps.iter().enumerate() {
            main.push(&names.convs[i], self.conv(cin, cout, k, s, groups)?)?;
            main.push(&names.bns[i], BatchNorm::new(cout, self.bn_epsilon)?)?;
            if let Some(relu) = names.relus.get(i) {
                main.push(relu, Relu)?;
            }
        }
        let out = steps.last().map_or(self.in_channels, |s| s.1);
        if let Some(ratio) = self.se_reduction {
            let squeezed = out.checked_div(ratio).unwrap_or(0);
            if squeezed == 0 {
                return Err(Error::config(
                    "residual block",
                    format!("a squeeze-and-excitation ratio of {ratio} leaves none of the block's {out} channels in the squeeze"),
                ));
            }
            let mut gate = Sequential::new();
            gate.push("pool", GlobalAvgPool)?
                .push("fc1", Dense::new(out, squeezed, Some(Activation::Relu))?)?
                .push("fc2", Dense::new(squeezed, out, Some(Activation::Sigmoid))?)?;
            main.push("se", ChannelGate::new(gate))?;
        }
        let shortcut = if self.needs_projection(out) {
            let mut proj = Sequential::new();
            proj.push(&names.shortcut_conv, self.conv(self.in_channels, out, 1, self.stride, 1)?)?;
            proj.push(&names.shortcut_bn, BatchNorm::new(out, self.bn_epsilon)?)?;
            Some(match &names.shortcut_group {
                Some(group) => Sequential::new().with(group, proj)?,
                None => proj,
            })
        } else {
            None
        };
        Residual::new(main, shortcut, Some(Activation::Relu))
    }

    fn validate(&self) -> Result<()> {
        if self.in_channels == 0 || self.planes == 0 || self.stride == 0 || self.groups == 0 || self.base_width == 0 {
            return Err(Error::config(
                "residual block",
                format!("channels, stride, groups and base width must be at least 1, got {self:?}"),
            ));
        }
        if self.bottleneck_width() == 0 {
            return Err(Error::config(
                "residual block",
                format!(
                    "{} planes at base width {} leave no channels per group (planes * base_width / 64 must be at least 1)",
                    self.planes, self.base_width
                ),
            ));
        }
        Ok(())
    }
}

/// The ResNet50/101/152 block: 1x1 (reduce), 3x3, 1x1 (expand by [`Bottleneck::EXPANSION`]),
/// each followed by BatchNorm, ReLU between, then `relu(main + shortcut)`. The inner width is
/// [`BlockConfig::bottleneck_width`] and the 3x3 has [`BlockConfig::groups`] groups, so the same
/// block is ResNeXt's (groups 32, base width 4 or 8) and Wide ResNet's (base width 128).
#[derive(Clone, Copy, Debug)]
pub struct Bottleneck(pub BlockConfig);

impl Bottleneck {
    /// Output channels per `planes`.
    pub const EXPANSION: usize = 4;

    /// Builds the block under `names` (e.g. `BlockNames::new(NameStyle::KerasClassic, 0, 0, 3, 3)`).
    pub fn build(&self, names: &BlockNames) -> Result<Residual> {
        let c = &self.0;
        c.validate()?;
        let (p, s) = (c.planes, c.stride);
        let (s1, s2) = match c.stride_placement {
            StridePlacement::FirstConv => (s, 1),
            StridePlacement::SpatialConv => (1, s),
        };
        let w = c.bottleneck_width();
        c.assemble(
            &[
                (c.in_channels, w, 1, s1, 1),
                (w, w, 3, s2, c.groups),
                (w, p * Self::EXPANSION, 1, 1, 1),
            ],
            names,
        )
    }
}

/// The ResNet18/34 block: two 3x3 convolutions (the first strided), each followed by
/// BatchNorm, then `relu(main + shortcut)`.
#[derive(Clone, Copy, Debug)]
pub struct BasicBlock(pub BlockConfig);

impl BasicBlock {
    /// Output channels per `planes`.
    pub const EXPANSION: usize = 1;

    /// Builds the block under `names`.
    pub fn build(&self, names: &BlockNames) -> Result<Residual> {
        let c = &self.0;
        c.validate()?;
        if c.groups != 1 || c.base_width != 64 {
            return Err(Error::config(
                "BasicBlock",
                format!(
                    "groups and base width apply to bottlenecks only (torchvision's rule), got {} and {}",
                    c.groups, c.base_width
                ),
            ));
        }
        c.assemble(&[(c.in_channels, c.planes, 3, c.stride, 1), (c.planes, c.planes, 3, 1, 1)], names)
    }
}

/// Which block a ResNet stacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockKind {
    /// [`BasicBlock`].
    Basic,
    /// [`Bottleneck`].
    Bottleneck,
}

impl BlockKind {
    /// Output channels per `planes`.
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => BasicBlock::EXPANSION,
            BlockKind::Bottleneck => Bottleneck::EXPANSION,
        }
    }

    /// Main-branch convolutions.
    pub fn convs(self) -> usize {
        match self {
            BlockKind::Basic => 2,
            BlockKind::Bottleneck => 3,
        }
    }

    /// Builds one block of this kind.
    pub fn build(self, config: BlockConfig, names: &BlockNames) -> Result<Residual> {
        match self {
            BlockKind::Basic => BasicBlock(config).build(names),
            BlockKind::Bottleneck => Bottleneck(config).build(names),
        }
    }
}
