//! ResNets from [`Bottleneck`] and [`BasicBlock`] builders, with presets that reproduce the
//! seed's Keras ResNet50, the later Keras layouts, and torchvision's ResNet18-152.
//!
//! ```
//! use convnet::models::{ResNet, ResNetConfig};
//! let model = ResNet::new(ResNetConfig::keras_resnet50())?;
//! let count = model.param_count();
//! assert_eq!((count.total(), count.trainable, count.non_trainable), (25_636_712, 25_583_592, 53_120));
//! # Ok::<(), convnet::Error>(())
//! ```

mod block;
mod config;
mod names;

pub use block::{BasicBlock, BlockConfig, BlockKind, Bottleneck, PadMode, StridePlacement};
pub use config::{Depth, Head, ResNetConfig, Stem};
pub use names::{keras_block_letter, BlockNames, NameStyle};

use crate::error::Result;
use crate::kernels::{Padding, Padding2d};
use crate::layers::{
    Activation, AvgPool2d, BatchNorm, Conv2d, Conv2dConfig, Dense, Flatten, GlobalAvgPool, Layer, MaxPool2d, ParamCount, Pool2dConfig,
    Relu, Sequential, Summary, Tensor, ZeroPadding2d,
};

/// A residual network: the [`ResNetConfig`] it was built from and the layers.
#[derive(Debug)]
pub struct ResNet {
    config: ResNetConfig,
    net: Sequential,
}

impl ResNet {
    /// Builds the network (zero weights: load a file with
    /// [`WeightFile::load_into`](crate::weights::WeightFile::load_into)), and checks that its
    /// shapes line up for `config.input_shape`.
    pub fn new(config: ResNetConfig) -> Result<Self> {
        config.validate()?;
        let mut net = Sequential::new();
        let channels = build_stem(&config, &mut net)?;
        let channels = build_stages(&config, &mut net, channels)?;
        build_head(&config, &mut net, channels)?;
        let model = ResNet { config, net };
        model.output_shape(&model.input_shape(1))?;
        Ok(model)
    }

    /// The configuration.
    pub fn config(&self) -> &ResNetConfig {
        &self.config
    }

    /// The layers.
    pub fn network(&self) -> &Sequential {
        &self.net
    }

    /// The layers, mutable (for loaders and rewriting passes).
    pub fn network_mut(&mut self) -> &mut Sequential {
        &mut self.net
    }

    /// The NHWC shape of a batch of `batch` input images.
    pub fn input_shape(&self, batch: usize) -> [usize; 4] {
        let [h, w, c] = self.config.input_shape;
        [batch, h, w, c]
    }

    /// Runs the model on an NHWC batch ([`Layer::forward`]: the reference executor). An input
    /// holding NaN or infinity is refused with [`Error::NonFinite`](crate::Error::NonFinite).
    pub fn forward(&self, x: &crate::layers::TensorRef) -> Result<Tensor> {
        Layer::forward(self, x)
    }

    /// Trainable and non-trainable parameter counts.
    pub fn param_count(&self) -> ParamCount {
        self.net.param_count()
    }

    /// Keras-style `model.summary()` for one input image.
    pub fn summary(&self) -> Result<Summary> {
        let mut s = self.net.summary(&self.input_shape(1))?;
        s.name = self.config.name.clone();
        s.leaf_names = self.config.names.is_flat();
        Ok(s)
    }

    /// Runs the model and also returns the outputs of the layers named in `names` (paths as
    /// displayed: `res2c`, `pool1`, `layer1/0`; see [`Layer::forward_with_taps`]).
    pub fn forward_with_taps(&self, x: &crate::layers::TensorRef, names: &[&str]) -> Result<(Tensor, crate::layers::Taps)> {
        Layer::forward_with_taps(self, x, names)
    }
}

layer_over_network!(ResNet, "ResNet", |m| m.config.input_shape);

/// conv 7x7/2, BN, ReLU, max pool 3x3/2 (or conv 3x3/1, BN, ReLU); returns the channels out.
fn build_stem(c: &ResNetConfig, net: &mut Sequential) -> Result<usize> {
    if c.stem == Stem::Small {
        let conv = Conv2dConfig::new(c.input_shape[2], c.stem_width, [3, 3])
            .with_padding(Padding::Explicit(Padding2d::uniform(1)))
            .with_bias(c.conv_bias);
        let bn = BatchNorm::new(c.stem_width, c.bn_epsilon)?;
        let [conv_name, bn_name, relu_name] = match c.names {
            NameStyle::KerasClassic => ["conv1", "bn_conv1", "conv1_relu"],
            NameStyle::KerasModern => ["conv1_conv", "conv1_bn", "conv1_relu"],
            NameStyle::Torchvision => ["conv1", "bn1", "relu"],
        };
        net.push(conv_name, Conv2d::new(conv)?)?;
        net.push(bn_name, bn)?;
        net.push(relu_name, Relu)?;
        return Ok(c.stem_width);
    }
    let conv = |padding| {
        Conv2dConfig::new(c.input_shape[2], c.stem_width, [7, 7])
            .with_strides([2, 2])
            .with_padding(padding)
            .with_bias(c.conv_bias)
    };
    let pool = Pool2dConfig::new([3, 3]).with_strides([2, 2]);
    let bn = BatchNorm::new(c.stem_width, c.bn_epsilon)?;
    match c.names {
        NameStyle::KerasClassic | NameStyle::KerasModern => {
            let modern = c.names == NameStyle::KerasModern;
            net.push("conv1_pad", ZeroPadding2d::uniform(3))?;
            net.push(if modern { "conv1_conv" } else { "conv1" }, Conv2d::new(conv(Padding::Valid))?)?;
            net.push(if modern { "conv1_bn" } else { "bn_conv1" }, bn)?;
            net.push("conv1_relu", Relu)?;
            if c.stem_pool_padding > 0 {
                // After a ReLU, zero padding never wins a max, as -inf padding would not.
                net.push("pool1_pad", ZeroPadding2d::uniform(c.stem_pool_padding))?;
            }
            net.push(if modern { "pool1_pool" } else { "pool1" }, MaxPool2d::new(pool)?)?;
        }
        NameStyle::Torchvision => {
            net.push("conv1", Conv2d::new(conv(Padding::Explicit(Padding2d::uniform(3))))?)?;
            net.push("bn1", bn)?;
            net.push("relu", Relu)?;
            let pad = Padding::Explicit(Padding2d::uniform(c.stem_pool_padding));
            net.push("maxpool", MaxPool2d::new(pool.with_padding(pad))?)?;
        }
    }
    Ok(c.stem_width)
}

/// The residual stages; returns the channels out.
fn build_stages(c: &ResNetConfig, net: &mut Sequential, mut channels: usize) -> Result<usize> {
    for (stage, (&blocks, &planes)) in c.stage_blocks.iter().zip(&c.stage_widths).enumerate() {
        let mut stage_net = Sequential::new();
        for index in 0..blocks {
            let stride = if stage > 0 && index == 0 { 2 } else { 1 };
            let cfg = BlockConfig {
                in_channels: channels,
                planes,
                stride,
                stride_placement: c.stride_placement,
                conv_bias: c.conv_bias,
                bn_epsilon: c.bn_epsilon,
                pad_mode: c.pad_mode,
                groups: c.groups,
                base_width: c.base_width,
                se_reduction: c.se_reduction,
            };
            let names = BlockNames::new(c.names, stage, index, blocks, c.block.convs())?;
            let block = c.block.build(cfg, &names)?;
            // Keras names are flat: blocks sit at the top level. torchvision nests them in `layerN`.
            if c.names.is_flat() {
                net.push(names.block, block)?;
            } else {
                stage_net.push(names.block, block)?;
            }
            channels = planes * c.block.expansion();
        }
        if !c.names.is_flat() {
            net.push(format!("layer{}", stage + 1), stage_net)?;
        }
    }
    Ok(channels)
}

fn build_head(c: &ResNetConfig, net: &mut Sequential, channels: usize) -> Result<()> {
    let pool_name = if c.names == NameStyle::Torchvision { "avgpool" } else { "avg_pool" };
    match c.head {
        Head::AvgPoolFlatten { pool_size } => {
            net.push(pool_name, AvgPool2d::new(Pool2dConfig::new([pool_size, pool_size]))?)?;
            net.push("flatten", Flatten)?;
        }
        Head::GlobalAvgPool => {
            net.push(pool_name, GlobalAvgPool)?;
        }
    }
    if c.classes > 0 {
        let fc = match c.names {
            NameStyle::KerasClassic => "fc1000",
            NameStyle::KerasModern => "predictions",
            NameStyle::Torchvision => "fc",
        };
        net.push(fc, Dense::new(channels, c.classes, c.softmax.then_some(Activation::Softmax))?)?;
    }
    Ok(())
}
