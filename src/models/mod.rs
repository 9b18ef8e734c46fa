//! Ready-made networks built from the [`layers`](crate::layers).

pub mod mobilenet;
pub mod resnet;
pub mod resnet_v2;

pub use mobilenet::{MobileNetV2, MobileNetV2Config};
pub use resnet::{
    BasicBlock, BlockConfig, BlockKind, BlockNames, Bottleneck, Depth, Head, NameStyle, PadMode, ResNet, ResNetConfig, Stem,
    StridePlacement,
};
pub use resnet_v2::ResNetV2;
