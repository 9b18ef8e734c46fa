//! Building your own residual networks: a narrow 3-stage bottleneck net for 96x96 inputs from
//! a config, and a hand-assembled net from the block builders; prints both summaries and runs
//! a forward pass.
//!
//! ```text
//! cargo run --release --example custom_resnet
//! ```

use convnet::kernels::Padding;
use convnet::layers::{BatchNorm, Conv2d, Conv2dConfig, Dense, GlobalAvgPool, Relu, Sequential};
use convnet::models::{BlockConfig, BlockKind, BlockNames, Head, NameStyle, ResNet, ResNetConfig};
use ndarray::{Array4, IxDyn};

fn main() -> convnet::Result<()> {
    // 1. From a config: torchvision conventions, 3 stages of [2, 3, 2] bottlenecks, widths
    //    32/64/128, 10 classes, 96x96 inputs.
    let config = ResNetConfig {
        name: "resnet_small".into(),
        stage_blocks: vec![2, 3, 2],
        stage_widths: vec![32, 64, 128],
        stem_width: 32,
        head: Head::GlobalAvgPool,
        ..ResNetConfig::torchvision(convnet::models::Depth::R50)
    }
    .with_classes(10)
    .with_input_shape([96, 96, 3]);
    let model = ResNet::new(config)?;
    println!("{}\n", model.summary()?);

    let x = Array4::<f32>::from_shape_fn((2, 96, 96, 3), |(n, y, x, c)| ((n + y * 3 + x * 7 + c) % 17) as f32 / 17.0).into_dyn();
    let logits = model.forward(&x)?;
    println!("logits: {:?}\n", logits.shape());

    // 2. By hand: a stem, two Keras-style basic blocks (the second downsamples), a classifier.
    let mut net = Sequential::new();
    net.push(
        "stem_conv",
        Conv2d::new(Conv2dConfig::new(3, 16, [3, 3]).with_padding(Padding::Same))?,
    )?
    .push("stem_bn", BatchNorm::new(16, 1e-3)?)?
    .push("stem_relu", Relu)?;
    let mut channels = 16;
    for (i, (planes, stride)) in [(16, 1), (32, 2)].into_iter().enumerate() {
        let names = BlockNames::new(NameStyle::KerasClassic, i, 0, 1, BlockKind::Basic.convs())?;
        let block = BlockKind::Basic.build(BlockConfig::keras(channels, planes, stride), &names)?;
        net.push(names.block, block)?;
        channels = planes;
    }
    net.push("pool", GlobalAvgPool)?.push("fc", Dense::new(channels, 10, None)?)?;
    let mut summary = net.summary(&[1, 32, 32, 3])?;
    summary.name = "hand_built".into();
    summary.leaf_names = true;
    println!("{summary}");
    let y = convnet::layers::Layer::forward(&net, &ndarray::ArrayD::zeros(IxDyn(&[4, 32, 32, 3])))?;
    println!("output: {:?}", y.shape());
    Ok(())
}
