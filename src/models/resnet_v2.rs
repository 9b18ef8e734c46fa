//! Keras' pre-activation ResNets, `ResNet50V2`, `ResNet101V2` and `ResNet152V2` (He et al.,
//! 2016, "Identity mappings in deep residual networks"), with Keras' layer names, so
//! `model.save_weights` files load by name: each block starts with BatchNorm and ReLU
//! (`convN_blockM_preact_bn`, `_preact_relu`), its 1x1 projection shortcut reads that
//! pre-activation, the stride is on the 3x3 of each stage's *last* block (an identity
//! shortcut there is a 1x1 max pool of stride 2), and `post_bn`, `post_relu` close the
//! network before global average pooling and `predictions`.
//!
//! ```
//! use convnet::layers::Layer;
//! use convnet::models::{Depth, ResNetV2};
//! // keras.applications.ResNet50V2(): 25,613,800 parameters.
//! assert_eq!(ResNetV2::keras(Depth::R50)?.param_count().total(), 25_613_800);
//! # Ok::<(), convnet::Error>(())
//! ```

use super::resnet::Depth;
use crate::error::{Error, Result};
use crate::kernels::{Padding, Padding2d};
use crate::layers::{
    Activation, BatchNorm, Conv2d, Conv2dConfig, Dense, GlobalAvgPool, Layer, MaxPool2d, Pool2dConfig, Relu, Residual, Sequential,
    ZeroPadding2d,
};

/// Keras' BatchNorm epsilon in its ResNet V2 applications.
const EPSILON: f32 = 1.001e-5;

/// What shapes one Keras pre-activation ResNet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResNetV2Config {
    /// 50, 101 or 152 layers (Keras has no other V2 depth).
    pub depth: Depth,
    /// `(height, width, channels)` of one input image.
    pub input_shape: [usize; 3],
    /// Classifier outputs (0: no classifier, the pooled features).
    pub classes: usize,
    /// Each stage's filters (64, 128, 256, 512) divided by this (1: Keras' own widths). The
    /// 64-filter stem stays as Keras' `ResNet` function hard-codes it.
    pub width_divisor: usize,
    /// Whether the classifier ends in a softmax (Keras' default `classifier_activation`) or
    /// gives logits.
    pub softmax: bool,
}

impl ResNetV2Config {
    /// `keras.applications.ResNet{50,101,152}V2()`: 224x224x3, 1000 classes with softmax.
    pub fn keras(depth: Depth) -> Self {
        ResNetV2Config {
            depth,
            input_shape: [224, 224, 3],
            classes: 1000,
            width_divisor: 1,
            softmax: true,
        }
    }

    /// Sets the input shape.
    pub fn with_input_shape(mut self, input_shape: [usize; 3]) -> Self {
        self.input_shape = input_shape;
        self
    }

    /// Sets the number of classes (0: no classifier).
    pub fn with_classes(mut self, classes: usize) -> Self {
        self.classes = classes;
        self
    }

    /// Divides each stage's filters by `divisor`.
    pub fn with_width_divisor(mut self, divisor: usize) -> Self {
        self.width_divisor = divisor;
        self
    }

    /// Sets whether the classifier ends in a softmax.
    pub fn with_softmax(mut self, softmax: bool) -> Self {
        self.softmax = softmax;
        self
    }
}

/// A Keras pre-activation ResNet (V2).
#[derive(Debug)]
pub struct ResNetV2 {
    config: ResNetV2Config,
    net: Sequential,
}

fn conv(cin: usize, cout: usize, k: usize, stride: usize, bias: bool) -> Result<Conv2d> {
    Conv2d::new(Conv2dConfig::new(cin, cout, [k, k]).with_strides([stride, stride]).with_bias(bias))
}

/// `residual_block_v2`: pushes block `name` (filters `f`, stride on the 3x3) onto `net`.
fn block(net: &mut Sequential, name: &str, cin: usize, f: usize, stride: usize, conv_shortcut: bool) -> Result<()> {
    let mut main = Sequential::new();
    if !conv_shortcut {
        // The identity shortcut reads the block's input, so the pre-activation is the main
        // branch's own.
        main.push(format!("{name}_preact_bn"), BatchNorm::new(cin, EPSILON)?)?
            .push(format!("{name}_preact_relu"), Relu)?;
    }
    main.push(format!("{name}_1_conv"), conv(cin, f, 1, 1, false)?)?
        .push(format!("{name}_1_bn"), BatchNorm::new(f, EPSILON)?)?
        .push(format!("{name}_1_relu"), Relu)?
        .push(format!("{name}_2_pad"), ZeroPadding2d::new(Padding2d::uniform(1)))?
        .push(format!("{name}_2_conv"), conv(f, f, 3, stride, false)?)?
        .push(format!("{name}_2_bn"), BatchNorm::new(f, EPSILON)?)?
        .push(format!("{name}_2_relu"), Relu)?
        .push(format!("{name}_3_conv"), conv(f, 4 * f, 1, 1, true)?)?;
    let shortcut = if conv_shortcut {
        // The projection reads the pre-activation too: it comes before the fork.
        net.push(format!("{name}_preact_bn"), BatchNorm::new(cin, EPSILON)?)?;
        net.push(format!("{name}_preact_relu"), Relu)?;
        let mut s = Sequential::new();
        s.push(format!("{name}_0_conv"), conv(cin, 4 * f, 1, stride, true)?)?;
        Some(s)
    } else if stride > 1 {
        let pool = Pool2dConfig::new([1, 1])
            .with_strides([stride, stride])
            .with_padding(Padding::Valid);
        let mut s = Sequential::new();
        s.push(format!("{name}_shortcut_pool"), MaxPool2d::new(pool)?)?;
        Some(s)
    } else {
        None
    };
    net.push(format!("{name}_out"), Residual::new(main, shortcut, None)?)?;
    Ok(())
}

impl ResNetV2 {
    /// `keras.applications.ResNet50V2()`, `ResNet101V2()` or `ResNet152V2()`: 224x224x3 input,
    /// 1000 classes with softmax. Parameters: 25,613,800, 44,675,560 and 60,380,648.
    pub fn keras(depth: Depth) -> Result<Self> {
        Self::new(ResNetV2Config::keras(depth))
    }

    /// The network `config` describes (zero weights: load a file with
    /// [`WeightFile::load_into`](crate::weights::WeightFile::load_into)), its shapes checked for
    /// `config.input_shape`.
    pub fn new(config: ResNetV2Config) -> Result<Self> {
        let ResNetV2Config {
            depth,
            input_shape,
            classes,
            width_divisor,
            softmax,
        } = config.clone();
        if width_divisor == 0 || 64 % width_divisor != 0 {
            return Err(Error::config(
                "ResNetV2",
                format!("the width divisor must divide the first stage's 64 filters, got {width_divisor}"),
            ));
        }
        if input_shape.contains(&0) {
            return Err(Error::config("ResNetV2", format!("the input shape {input_shape:?} is empty")));
        }
        let stages: [usize; 4] = match depth {
            Depth::R50 => [3, 4, 6, 3],
            Depth::R101 => [3, 4, 23, 3],
            Depth::R152 => [3, 8, 36, 3],
            other => {
                return Err(Error::config("ResNetV2", format!("Keras has no ResNet{}V2", other.layers())));
            }
        };
        let mut net = Sequential::new();
        net.push("conv1_pad", ZeroPadding2d::new(Padding2d::uniform(3)))?
            .push("conv1_conv", conv(input_shape[2], 64, 7, 2, true)?)?
            .push("pool1_pad", ZeroPadding2d::new(Padding2d::uniform(1)))?
            .push("pool1_pool", MaxPool2d::new(Pool2dConfig::new([3, 3]).with_strides([2, 2]))?)?;
        let mut channels = 64;
        for (stage, (&blocks, filters)) in stages.iter().zip([64, 128, 256, 512].map(|f| f / width_divisor)).enumerate() {
            // `stack_residual_blocks_v2`: stride 2 on the last block, but for the last stage.
            let last_stride = if stage == 3 { 1 } else { 2 };
            for b in 1..=blocks {
                let stride = if b == blocks { last_stride } else { 1 };
                block(&mut net, &format!("conv{}_block{b}", stage + 2), channels, filters, stride, b == 1)?;
                channels = 4 * filters;
            }
        }
        net.push("post_bn", BatchNorm::new(channels, EPSILON)?)?
            .push("post_relu", Relu)?
            .push("avg_pool", GlobalAvgPool)?;
        if classes > 0 {
            net.push(
                "predictions",
                Dense::new(channels, classes, softmax.then_some(Activation::Softmax))?,
            )?;
        }
        let model = ResNetV2 { config, net };
        let input: Vec<usize> = std::iter::once(1).chain(input_shape).collect();
        model.output_shape(&input)?;
        Ok(model)
    }

    /// The depth.
    pub fn depth(&self) -> Depth {
        self.config.depth
    }

    /// The configuration.
    pub fn config(&self) -> &ResNetV2Config {
        &self.config
    }

    /// The layers.
    pub fn network(&self) -> &Sequential {
        &self.net
    }
}

layer_over_network!(ResNetV2, "ResNetV2", |m| m.config.input_shape);
