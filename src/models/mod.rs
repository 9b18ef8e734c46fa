//! Ready-made networks built from the [`layers`](crate::layers).

pub mod resnet;

pub use resnet::{
    BasicBlock, BlockConfig, BlockKind, BlockNames, Bottleneck, Depth, Head, NameStyle, PadMode, ResNet, ResNetConfig, Stem,
    StridePlacement,
};
