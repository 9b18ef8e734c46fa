//! MobileNetV2 (Sandler et al., 2018) as torchvision and Keras build it: a 3x3 stride-2 stem,
//! 17 inverted residual blocks (1x1 expansion, 3x3 depthwise, 1x1 linear projection; the input
//! added back where the shapes agree), a 1x1 convolution to 1280 channels, global average
//! pooling and a linear classifier, every convolution followed by BatchNorm and, but for the
//! projections, ReLU6.
//!
//! [`MobileNetV2Config::torchvision`] carries torchvision's state-dict names (`features.0.0`,
//! `features.1.conv.0.0`, ..., `classifier.1`), so `torchvision.models.mobilenet_v2()`'s `.pth`
//! or `.safetensors` loads by name. [`MobileNetV2Config::keras`] is
//! `keras.applications.MobileNetV2(alpha=...)`: Keras' layer names (`Conv1`, `bn_Conv1`,
//! `expanded_conv_depthwise`, `block_1_expand`, ..., `Conv_1`, `predictions`), its BatchNorm
//! epsilon 1e-3, its `'same'` padding (the extra row and column at the bottom and right where
//! torchvision pads all sides by one) and a softmax classifier, so its `model.save_weights`
//! `.h5` loads by name, depthwise kernels included.
//!
//! ```
//! use convnet::layers::Layer;
//! use convnet::models::{MobileNetV2, MobileNetV2Config};
//! let model = MobileNetV2::new(MobileNetV2Config::torchvision())?;
//! // torchvision.models.mobilenet_v2(): 3,504,872 parameters (BatchNorm statistics are buffers).
//! assert_eq!(model.param_count().trainable, 3_504_872);
//! // keras.applications.MobileNetV2(): 3,538,984 parameters, BatchNorm statistics included.
//! assert_eq!(MobileNetV2::new(MobileNetV2Config::keras(1.0))?.param_count().total(), 3_538_984);
//! # Ok::<(), convnet::Error>(())
//! ```

use crate::error::{Error, Result};
use crate::kernels::{Padding, Padding2d};
use crate::layers::{
    Activation, ActivationLayer, BatchNorm, Conv2d, Conv2dConfig, Dense, GlobalAvgPool, Layer, Residual, Sequential, ZeroPadding2d,
};

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

/// Whose MobileNetV2: the layer names, paddings and rounding of that framework's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MobileNetStyle {
    /// `torchvision.models.mobilenet_v2`: state-dict names, symmetric padding of 1.
    Torchvision,
    /// `keras.applications.MobileNetV2`: Keras' layer names, `'same'` padding (and a
    /// `block_N_pad` zero padding before each stride-2 depthwise convolution), the projection
    /// widths rounded from `int(filters * alpha)`.
    Keras,
}

/// What shapes one MobileNetV2.
#[derive(Clone, Debug, PartialEq)]
pub struct MobileNetV2Config {
    /// Whose layer names and paddings.
    pub style: MobileNetStyle,
    /// The width multiplier (torchvision's `width_mult`, Keras' `alpha`): every layer's channels
    /// scaled by it and rounded to a multiple of 8 (at least 8, and never below 90% of the
    /// scaled count), the last convolution's 1280 only when it is above 1.
    pub width_mult: f32,
    /// Output classes of the classifier.
    pub classes: usize,
    /// `(height, width, channels)` of one input image.
    pub input_shape: [usize; 3],
    /// BatchNorm epsilon (torchvision: 1e-5, Keras: 1e-3).
    pub bn_epsilon: f32,
    /// Whether the classifier ends in a softmax (Keras' default `classifier_activation`), or
    /// gives logits (torchvision).
    pub softmax: bool,
}

impl MobileNetV2Config {
    /// `torchvision.models.mobilenet_v2()`: width 1.0, 1000 classes, 224x224x3. 3,504,872
    /// parameters.
    pub fn torchvision() -> Self {
        MobileNetV2Config {
            style: MobileNetStyle::Torchvision,
            width_mult: 1.0,
            classes: 1000,
            input_shape: [224, 224, 3],
            bn_epsilon: 1e-5,
            softmax: false,
        }
    }

    /// `keras.applications.MobileNetV2(alpha=alpha)`: 1000 classes with softmax, 224x224x3.
    /// Parameters (BatchNorm statistics included, as Keras counts them): 3,538,984 at alpha
    /// 1.0, 1,691,208 at 0.35. Preprocess its input in Keras' "tf" mode (`x / 127.5 - 1`).
    pub fn keras(alpha: f32) -> Self {
        MobileNetV2Config {
            style: MobileNetStyle::Keras,
            width_mult: alpha,
            classes: 1000,
            input_shape: [224, 224, 3],
            bn_epsilon: 1e-3,
            softmax: true,
        }
    }

    /// Sets whether the classifier ends in a softmax (Keras' `classifier_activation`).
    pub fn with_softmax(mut self, softmax: bool) -> Self {
        self.softmax = softmax;
        self
    }

    /// Sets the input shape `(height, width, channels)`.
    pub fn with_input_shape(mut self, input_shape: [usize; 3]) -> Self {
        self.input_shape = input_shape;
        self
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

/// Keras' `_inverted_res_block`, its layers named `{prefix}expand`, `{prefix}depthwise`, ...
/// pushed onto `net` (inside a `block_N_add` residual where the shapes agree). `hw` is the
/// input's spatial size, which sets the zero padding before a stride-2 depthwise convolution.
struct KerasBlock {
    id: usize,
    cin: usize,
    cout: usize,
    stride: usize,
    expand: usize,
}

impl KerasBlock {
    fn push(&self, net: &mut Sequential, hw: [usize; 2], eps: f32) -> Result<[usize; 2]> {
        let prefix = if self.id == 0 {
            "expanded_conv_".to_string()
        } else {
            format!("block_{}_", self.id)
        };
        let hidden = self.expand * self.cin;
        let mut main = Sequential::new();
        let bn_relu6 = |s: &mut Sequential, name: &str, c: usize| -> Result<()> {
            s.push(format!("{prefix}{name}_BN"), BatchNorm::new(c, eps)?)?
                .push(format!("{prefix}{name}_relu"), ActivationLayer(Activation::Relu6))?;
            Ok(())
        };
        if self.id > 0 {
            let expand = Conv2dConfig::new(self.cin, hidden, [1, 1]).with_bias(false);
            main.push(format!("{prefix}expand"), Conv2d::new(expand)?)?;
            bn_relu6(&mut main, "expand", hidden)?;
        }
        let depthwise = Conv2dConfig::new(hidden, hidden, [3, 3])
            .with_strides([self.stride, self.stride])
            .with_bias(false)
            .with_groups(hidden);
        let (depthwise, out_hw) = if self.stride == 2 {
            // `correct_pad`: one row/column at the bottom/right, and one at the top/left too
            // when the size is odd; then a 'valid' convolution.
            let [top, left] = [hw[0] % 2, hw[1] % 2];
            main.push(format!("{prefix}pad"), ZeroPadding2d::new(Padding2d::new(top, 1, left, 1)))?;
            (depthwise, [(hw[0] + top - 2) / 2 + 1, (hw[1] + left - 2) / 2 + 1])
        } else {
            (depthwise.with_padding(Padding::Same), hw)
        };
        main.push(format!("{prefix}depthwise"), Conv2d::new(depthwise)?)?;
        bn_relu6(&mut main, "depthwise", hidden)?;
        let project = Conv2dConfig::new(hidden, self.cout, [1, 1]).with_bias(false);
        main.push(format!("{prefix}project"), Conv2d::new(project)?)?
            .push(format!("{prefix}project_BN"), BatchNorm::new(self.cout, eps)?)?;
        if self.stride == 1 && self.cin == self.cout {
            net.push(format!("{prefix}add"), Residual::new(main, None, None)?)?;
        } else {
            net.append(main)?;
        }
        Ok(out_hw)
    }
}

/// `keras.applications.MobileNetV2`'s layers (see [`MobileNetStyle::Keras`]).
fn keras_network(config: &MobileNetV2Config) -> Result<Sequential> {
    let (alpha, eps) = (config.width_mult, config.bn_epsilon);
    let [h, w, c] = config.input_shape;
    let mut net = Sequential::new();
    let mut channels = make_divisible(32.0 * alpha);
    let stem = Conv2dConfig::new(c, channels, [3, 3])
        .with_strides([2, 2])
        .with_padding(Padding::Same)
        .with_bias(false);
    net.push("Conv1", Conv2d::new(stem)?)?
        .push("bn_Conv1", BatchNorm::new(channels, eps)?)?
        .push("Conv1_relu", ActivationLayer(Activation::Relu6))?;
    let mut hw = [h.div_ceil(2), w.div_ceil(2)];
    let mut id = 0;
    for (expand, filters, repeats, first_stride) in BLOCKS {
        // Keras truncates before rounding: `_make_divisible(int(filters * alpha), 8)`.
        let cout = make_divisible((filters as f32 * alpha).trunc());
        for i in 0..repeats {
            let stride = if i == 0 { first_stride } else { 1 };
            let block = KerasBlock {
                id,
                cin: channels,
                cout,
                stride,
                expand,
            };
            hw = block.push(&mut net, hw, eps)?;
            channels = cout;
            id += 1;
        }
    }
    let last = if alpha > 1.0 { make_divisible(1280.0 * alpha) } else { 1280 };
    net.push("Conv_1", Conv2d::new(Conv2dConfig::new(channels, last, [1, 1]).with_bias(false))?)?
        .push("Conv_1_bn", BatchNorm::new(last, eps)?)?
        .push("out_relu", ActivationLayer(Activation::Relu6))?
        .push("global_average_pooling2d", GlobalAvgPool)?;
    let softmax = config.softmax.then_some(Activation::Softmax);
    net.push("predictions", Dense::new(last, config.classes, softmax)?)?;
    Ok(net)
}

impl MobileNetV2 {
    /// Builds the network (zero weights: load a file with
    /// [`WeightFile::load_into`](crate::weights::WeightFile::load_into)), and checks that its
    /// shapes line up for `config.input_shape`.
    pub fn new(config: MobileNetV2Config) -> Result<Self> {
        config.validate()?;
        let net = match config.style {
            MobileNetStyle::Torchvision => torchvision_network(&config)?,
            MobileNetStyle::Keras => keras_network(&config)?,
        };
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

/// `torchvision.models.mobilenet_v2`'s layers (see [`MobileNetStyle::Torchvision`]).
fn torchvision_network(config: &MobileNetV2Config) -> Result<Sequential> {
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
    let softmax = config.softmax.then_some(Activation::Softmax);
    classifier.push("1", Dense::new(last, config.classes, softmax)?)?;
    net.push("classifier", classifier)?;
    Ok(net)
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
