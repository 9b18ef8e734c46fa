//! torchvision's MobileNetV2 (Sandler et al., 2018): a 3x3 stride-2 stem, 17 inverted
//! residual blocks (1x1 expansion, 3x3 depthwise, 1x1 linear projection; the input added back
//! where the shapes agree), a 1x1 convolution to 1280 channels, global average pooling and a
//! linear classifier, every convolution followed by BatchNorm and, but for the projections,
//! ReLU6. Layers carry torchvision's state-dict names (`features.0.0`, `features.1.conv.0.0`,
//! ..., `classifier.1`), so `torchvision.models.mobilenet_v2()`'s `.pth` or `.safetensors`
//! loads by name.
//!
//! ```
//! use convnet::layers::Layer;
//! use convnet::models::{MobileNetV2, MobileNetV2Config};
//! let model = MobileNetV2::new(MobileNetV2Config::torchvision())?;
//! // torchvision.models.mobilenet_v2(): 3,504,872 parameters (BatchNorm statistics are buffers).
//! assert_eq!(model.param_count().trainable, 3_504_872);
//! # Ok::<(), convnet::Error>(())
//! ```

use crate::error::{Error, Result};
use crate::kernels::{Padding, Padding2d};
use crate::layers::{Activation, ActivationLayer, BatchNorm, Conv2d, Conv2dConfig, Dense, GlobalAvgPool, Layer, Residual, Sequential};

/// torchvision's `inverted_residual_setting`: expansion `t`, output channels `c` (before the
/// width multiplier), repeats `n`, first stride `s`.
const BLOCKS: [(usize, usize, usize, usize); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];

/// What shapes one MobileNetV2.
#[derive(Clone, Debug, PartialEq)]
pub struct MobileNetV2Config {
    /// The width multiplier (torchvision's `width_mult`, Keras' `alpha`): every layer's channels
    /// scaled by it and rounded to a multiple of 8 (at least 8, and never below 90% of the
    /// scaled count), the last convolution's 1280 only when it is above 1.
    pub width_mult: f32,
    /// Output classes of the classifier.
    pub classes: usize,
    /// `(height, width, channels)` of one input image.
    pub input_shape: [usize; 3],
    /// BatchNorm epsilon (torchvision: 1e-5).
    pub bn_epsilon: f32,
}

impl MobileNetV2Config {
    /// `torchvision.models.mobilenet_v2()`: width 1.0, 1000 classes, 224x224x3. 3,504,872
    /// parameters.
    pub fn torchvision() -> Self {
        MobileNetV2Config {
            width_mult: 1.0,
            classes: 1000,
            input_shape: [224, 224, 3],
            bn_epsilon: 1e-5,
        }
    }

    /// Sets the width multiplier (torchvision's `width_mult`).
    pub fn with_width_mult(mut self, width_mult: f32) -> Self {
        self.width_mult = width_mult;
        self
    }

    /// Sets the number of classes.
    pub fn with_classes(mut self, classes: usize) -> Self {
        self.classes = classes;
        self
    }

    fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::config("MobileNetV2Config", reason));
        if !(self.width_mult.is_finite() && self.width_mult > 0.0 && self.width_mult <= 16.0) {
            return bad(format!("the width multiplier must be in (0, 16], got {}", self.width_mult));
        }
        if self.classes == 0 || self.input_shape.contains(&0) {
            return bad(format!(
                "needs at least one class and a non-empty input, got {} classes and {:?}",
                self.classes, self.input_shape
            ));
        }
        Ok(())
    }
}

/// torchvision's `_make_divisible(v, 8)`: the multiple of 8 nearest `v` (at least 8), one step
/// up if that is below 90% of `v`.
fn make_divisible(v: f32) -> usize {
    const DIVISOR: usize = 8;
    let rounded = ((v + DIVISOR as f32 / 2.0) as usize / DIVISOR * DIVISOR).max(DIVISOR);
    if (rounded as f32) < 0.9 * v {
        rounded + DIVISOR
    } else {
        rounded
    }
}

/// A MobileNetV2: its configuration and its layers.
#[derive(Debug)]
pub struct MobileNetV2 {
    config: MobileNetV2Config,
    net: Sequential,
}

/// Convolution (no bias), BatchNorm and optionally ReLU6, named `0`, `1`, `2` (torchvision's
/// `Conv2dNormActivation`).
fn conv_bn(cin: usize, cout: usize, kernel: usize, stride: usize, groups: usize, relu6: bool, eps: f32) -> Result<Sequential> {
    let pad = Padding::Explicit(Padding2d::uniform(kernel / 2));
    let conv = Conv2dConfig::new(cin, cout, [kernel, kernel])
        .with_strides([stride, stride])
        .with_padding(pad)
        .with_bias(false)
        .with_groups(groups);
    let mut s = Sequential::new();
    s.push("0", Conv2d::new(conv)?)?.push("1", BatchNorm::new(cout, eps)?)?;
    if relu6 {
        s.push("2", ActivationLayer(Activation::Relu6))?;
    }
    Ok(s)
}

/// One inverted residual block (torchvision's `InvertedResidual`): its layers under `conv`.
fn inverted_residual(cin: usize, cout: usize, stride: usize, expand: usize, eps: f32) -> Result<Box<dyn Layer>> {
    let hidden = cin * expand;
    let mut conv = Sequential::new();
    let mut i = 0;
    let mut next = || {
        i += 1;
        (i - 1).to_string()
    };
    if expand != 1 {
        conv.push(next(), conv_bn(cin, hidden, 1, 1, 1, true, eps)?)?;
    }
    conv.push(next(), conv_bn(hidden, hidden, 3, stride, hidden, true, eps)?)?;
    let projection = Conv2dConfig::new(hidden, cout, [1, 1]).with_bias(false);
    conv.push(next(), Conv2d::new(projection)?)?;
    conv.push(next(), BatchNorm::new(cout, eps)?)?;
    let mut main = Sequential::new();
    main.push("conv", conv)?;
    if stride == 1 && cin == cout {
        Ok(Box::new(Residual::new(main, None, None)?))
    } else {
        Ok(Box::new(main))
    }
}

impl MobileNetV2 {
    /// Builds the network (zero weights: load a file with
    /// [`WeightFile::load_into`](crate::weights::WeightFile::load_into)), and checks that its
    /// shapes line up for `config.input_shape`.
    pub fn new(config: MobileNetV2Config) -> Result<Self> {
        config.validate()?;
        let (w, eps) = (config.width_mult, config.bn_epsilon);
        let mut features = Sequential::new();
        let mut channels = make_divisible(32.0 * w);
        features.push("0", conv_bn(config.input_shape[2], channels, 3, 2, 1, true, eps)?)?;
        let mut index = 1;
        for (t, c, n, s) in BLOCKS {
            let out = make_divisible(c as f32 * w);
            for i in 0..n {
                let stride = if i == 0 { s } else { 1 };
                features.push_boxed(index.to_string(), inverted_residual(channels, out, stride, t, eps)?)?;
                channels = out;
                index += 1;
            }
        }
        let last = make_divisible(1280.0 * w.max(1.0));
        features.push(index.to_string(), conv_bn(channels, last, 1, 1, 1, true, eps)?)?;
        let mut net = Sequential::new();
        net.push("features", features)?;
        net.push("pool", GlobalAvgPool)?;
        let mut classifier = Sequential::new();
        // (torchvision's index 0 is a dropout: nothing at inference.)
        classifier.push("1", Dense::new(last, config.classes, None)?)?;
        net.push("classifier", classifier)?;
        let model = MobileNetV2 { config, net };
        let input: Vec<usize> = std::iter::once(1).chain(model.config.input_shape).collect();
        model.output_shape(&input)?;
        Ok(model)
    }

    /// The configuration.
    pub fn config(&self) -> &MobileNetV2Config {
        &self.config
    }

    /// The layers.
    pub fn network(&self) -> &Sequential {
        &self.net
    }
}

layer_over_network!(MobileNetV2, "MobileNetV2", |m| m.config.input_shape);

#[cfg(test)]
mod tests {
    use super::make_divisible;

    #[test]
    fn channels_round_as_torchvision_rounds_them() {
        // torchvision's _make_divisible at width 1.0, 0.5 and 0.35.
        assert_eq!(make_divisible(32.0), 32);
        assert_eq!(make_divisible(16.0 * 0.5), 8);
        assert_eq!(make_divisible(24.0 * 0.35), 8);
        assert_eq!(make_divisible(32.0 * 0.35), 16);
        assert_eq!(make_divisible(320.0 * 0.35), 112);
        assert_eq!(make_divisible(96.0 * 0.75), 72);
    }
}
