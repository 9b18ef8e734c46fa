//! The ImageNet networks by name: each preset with its builder, the preprocessing its
//! reference applies, whether it ends in a softmax, and where its pretrained weights live.
//!
//! ```
//! use convnet::models::zoo;
//! let preset = zoo::find("resnext50_32x4d")?;
//! assert_eq!(preset.name, "torchvision/resnext50_32x4d");
//! assert_eq!(preset.weights.file_name, "resnext50_32x4d-7cdf4587.pth");
//! let model = preset.build()?;
//! assert_eq!(model.param_count().trainable, 25_028_904);
//! # Ok::<(), convnet::Error>(())
//! ```

use super::{Depth, MobileNetV2, MobileNetV2Config, ResNet, ResNetConfig, ResNetV2, ResNetV2Config};
use crate::error::{Error, Result};
use crate::imagenet::image::Preprocessing;
use crate::layers::{Layer, LayerPath, Summary};
use crate::remote::Remote;

/// Which network a preset builds.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Architecture {
    /// The seed's Keras ResNet50 (the 2016 release's layer names).
    KerasResNet50,
    /// `keras.applications.ResNet{50,101,152}V2`.
    KerasResNetV2(Depth),
    /// `keras.applications.MobileNetV2(alpha)`.
    KerasMobileNetV2(f32),
    /// `torchvision.models.resnet{18,...,152}`.
    TorchResNet(Depth),
    /// `torchvision.models.resnext*`: depth, groups, width per group.
    TorchResNeXt(Depth, usize, usize),
    /// `torchvision.models.wide_resnet*_2`.
    TorchWide(Depth),
    /// `torchvision.models.mobilenet_v2`.
    TorchMobileNetV2,
}

/// One ImageNet network: 224 x 224 x 3 in, 1000 classes out.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Preset {
    /// `framework/name`, the framework's own spelling: `keras/ResNet50V2`,
    /// `torchvision/resnext50_32x4d`.
    pub name: &'static str,
    /// The name the framework gives the model object (Keras' `model.name`, the title of its
    /// `model.summary()`: `resnet50v2`, `mobilenetv2_1.00_224`; torchvision's function name).
    pub model_name: &'static str,
    /// How the reference prepares an image for it.
    pub preprocessing: Preprocessing,
    /// Whether the output is softmax probabilities (Keras) or logits (torchvision).
    pub softmax: bool,
    /// The pretrained weights the framework downloads for it (the file name it caches them
    /// under, and their md5 where the framework publishes one).
    pub weights: Remote,
    architecture: Architecture,
}

impl Preset {
    /// The network at full width (zero weights: load [`Preset::weights`] into it).
    pub fn build(&self) -> Result<Box<dyn Layer>> {
        self.build_with_width_divisor(1)
    }

    /// The network with its widths divided by `divisor`, for the reduced reference fixtures.
    /// Only the ResNets (V1 and V2, Wide included) take one; for the others, `divisor` must
    /// be 1.
    pub fn build_with_width_divisor(&self, divisor: usize) -> Result<Box<dyn Layer>> {
        let resnet = |c: ResNetConfig| -> Result<Box<dyn Layer>> { Ok(Box::new(ResNet::new(c.with_width_divisor(divisor))?)) };
        let no_divisor = || -> Result<()> {
            if divisor == 1 {
                Ok(())
            } else {
                Err(Error::config(
                    self.name,
                    format!("takes no width divisor (got {divisor}): its widths are set by groups or a width multiplier"),
                ))
            }
        };
        match self.architecture {
            Architecture::KerasResNet50 => resnet(ResNetConfig::keras_resnet50()),
            Architecture::KerasResNetV2(depth) => Ok(Box::new(ResNetV2::new(ResNetV2Config::keras(depth).with_width_divisor(divisor))?)),
            Architecture::KerasMobileNetV2(alpha) => {
                no_divisor()?;
                Ok(Box::new(MobileNetV2::new(MobileNetV2Config::keras(alpha))?))
            }
            Architecture::TorchResNet(depth) => resnet(ResNetConfig::torchvision(depth)),
            Architecture::TorchResNeXt(depth, groups, width) => {
                no_divisor()?;
                resnet(ResNetConfig::torchvision_resnext(depth, groups, width)?)
            }
            Architecture::TorchWide(depth) => resnet(ResNetConfig::torchvision_wide(depth)?),
            Architecture::TorchMobileNetV2 => {
                no_divisor()?;
                Ok(Box::new(MobileNetV2::new(MobileNetV2Config::torchvision())?))
            }
        }
    }

    /// Keras-style `model.summary()` of `model` (one of this preset's networks) for one
    /// 224 x 224 x 3 image, titled with [`model_name`](Self::model_name); Keras' layers listed
    /// by their own names, torchvision's by their state-dict paths.
    pub fn summary(&self, model: &dyn Layer) -> Result<Summary> {
        let input = [1, 224, 224, 3];
        let mut rows = Vec::new();
        let output = model.summarize(&mut LayerPath::default(), &input, &mut rows)?;
        let mut s = Summary::new(input.to_vec(), output, rows);
        s.name = self.model_name.to_string();
        s.leaf_names = self.name.starts_with("keras/");
        Ok(s)
    }

    /// The part of [`name`](Self::name) after the framework: `ResNet50V2`, `resnext50_32x4d`.
    pub fn short_name(&self) -> &'static str {
        self.name.split_once('/').map_or(self.name, |(_, n)| n)
    }
}

macro_rules! keras {
    ($name:literal, $model:literal, $arch:expr, $pre:expr, $file:literal, $url:expr, $md5:expr) => {
        Preset {
            name: concat!("keras/", $name),
            model_name: $model,
            preprocessing: $pre,
            softmax: true,
            weights: Remote {
                url: $url,
                file_name: $file,
                md5: $md5,
            },
            architecture: $arch,
        }
    };
}

macro_rules! torchvision {
    ($name:literal, $arch:expr, $file:literal) => {
        Preset {
            name: concat!("torchvision/", $name),
            model_name: $name,
            preprocessing: Preprocessing::Torchvision,
            softmax: false,
            weights: Remote {
                url: concat!("https://download.pytorch.org/models/", $file),
                file_name: $file,
                // torchvision publishes a sha256 prefix in the file name, no md5.
                md5: None,
            },
            architecture: $arch,
        }
    };
}

/// Every preset, Keras' first. The torchvision weights are each network's `IMAGENET1K_V1`.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "keras/ResNet50",
        model_name: "resnet50",
        preprocessing: Preprocessing::KerasCaffe,
        softmax: true,
        weights: crate::remote::KERAS_RESNET50_WEIGHTS,
        architecture: Architecture::KerasResNet50,
    },
    keras!(
        "ResNet50V2",
        "resnet50v2",
        Architecture::KerasResNetV2(Depth::R50),
        Preprocessing::KerasTf,
        "resnet50v2_weights_tf_dim_ordering_tf_kernels.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/resnet/resnet50v2_weights_tf_dim_ordering_tf_kernels.h5",
        Some("3ef43a0b657b3be2300d5770ece849e0")
    ),
    keras!(
        "ResNet101V2",
        "resnet101v2",
        Architecture::KerasResNetV2(Depth::R101),
        Preprocessing::KerasTf,
        "resnet101v2_weights_tf_dim_ordering_tf_kernels.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/resnet/resnet101v2_weights_tf_dim_ordering_tf_kernels.h5",
        Some("6343647c601c52e1368623803854d971")
    ),
    keras!(
        "ResNet152V2",
        "resnet152v2",
        Architecture::KerasResNetV2(Depth::R152),
        Preprocessing::KerasTf,
        "resnet152v2_weights_tf_dim_ordering_tf_kernels.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/resnet/resnet152v2_weights_tf_dim_ordering_tf_kernels.h5",
        Some("a49b44d1979771252814e80f8ec446f9")
    ),
    keras!(
        "MobileNetV2",
        "mobilenetv2_1.00_224",
        Architecture::KerasMobileNetV2(1.0),
        Preprocessing::KerasTf,
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5",
        None
    ),
    keras!(
        "MobileNetV2_0.35",
        "mobilenetv2_0.35_224",
        Architecture::KerasMobileNetV2(0.35),
        Preprocessing::KerasTf,
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224.h5",
        None
    ),
    torchvision!("resnet18", Architecture::TorchResNet(Depth::R18), "resnet18-f37072fd.pth"),
    torchvision!("resnet34", Architecture::TorchResNet(Depth::R34), "resnet34-b627a593.pth"),
    torchvision!("resnet50", Architecture::TorchResNet(Depth::R50), "resnet50-0676ba61.pth"),
    torchvision!("resnet101", Architecture::TorchResNet(Depth::R101), "resnet101-63fe2227.pth"),
    torchvision!("resnet152", Architecture::TorchResNet(Depth::R152), "resnet152-394f9c45.pth"),
    torchvision!("resnext50_32x4d", Architecture::TorchResNeXt(Depth::R50, 32, 4), "resnext50_32x4d-7cdf4587.pth"),
    torchvision!("resnext101_32x8d", Architecture::TorchResNeXt(Depth::R101, 32, 8), "resnext101_32x8d-8ba56ff5.pth"),
    torchvision!("resnext101_64x4d", Architecture::TorchResNeXt(Depth::R101, 64, 4), "resnext101_64x4d-173b62eb.pth"),
    torchvision!("wide_resnet50_2", Architecture::TorchWide(Depth::R50), "wide_resnet50_2-95faca4d.pth"),
    torchvision!("wide_resnet101_2", Architecture::TorchWide(Depth::R101), "wide_resnet101_2-32ee1156.pth"),
    torchvision!("mobilenet_v2", Architecture::TorchMobileNetV2, "mobilenet_v2-b0353104.pth"),
];

/// The preset called `name`: its full name (`keras/MobileNetV2`), or the part after the
/// framework when one preset alone has it (`resnext50_32x4d`, `ResNet50V2`; `ResNet50` is
/// Keras', `resnet50` torchvision's). An unknown name is an [`Error::Config`] listing them all.
pub fn find(name: &str) -> Result<&'static Preset> {
    if let Some(p) = PRESETS.iter().find(|p| p.name == name) {
        return Ok(p);
    }
    let mut short = PRESETS.iter().filter(|p| p.short_name() == name);
    match (short.next(), short.next()) {
        (Some(p), None) => Ok(p),
        _ => Err(Error::config(
            "models::zoo",
            format!(
                "no ImageNet preset is called {name:?}; the presets are {}",
                PRESETS.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::{find, PRESETS};

    #[test]
    fn names_are_unique_and_short_names_resolve() {
        for (i, p) in PRESETS.iter().enumerate() {
            assert!(PRESETS[..i].iter().all(|q| q.name != p.name), "{}", p.name);
            assert_eq!(find(p.name).unwrap().name, p.name);
            assert!(p.weights.url.ends_with(p.weights.file_name), "{}", p.name);
        }
        assert_eq!(find("ResNet50").unwrap().name, "keras/ResNet50");
        assert_eq!(find("resnet50").unwrap().name, "torchvision/resnet50");
        assert_eq!(find("mobilenet_v2").unwrap().name, "torchvision/mobilenet_v2");
        assert_eq!(find("MobileNetV2").unwrap().name, "keras/MobileNetV2");
        let err = find("vgg16").unwrap_err().to_string();
        assert!(err.contains("vgg16") && err.contains("torchvision/wide_resnet101_2"), "{err}");
    }
}
