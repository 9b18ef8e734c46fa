//! How each ResNet family names its layers. The names are what weights files are matched
//! on, so each preset's scheme reproduces its reference exactly.

/// A naming scheme, one per family of weights files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NameStyle {
    /// The seed's Keras ResNet50 and the 2016 weights file: `conv1`, `bn_conv1`,
    /// `res2a_branch2a`, `bn2a_branch2a`, ..., `res2a_branch1`, `fc1000`. Flat, model-unique
    /// names; the block after `res5b` is `res5c`.
    KerasClassic,
    /// tf.keras / Keras 3 `applications/resnet.py`: `conv1_conv`, `conv2_block1_1_conv`,
    /// `conv2_block1_0_conv` (shortcut), ..., `predictions`.
    KerasModern,
    /// torchvision's module paths: `conv1`, `layer1.0.conv1`, `layer1.0.downsample.0`, `fc`.
    Torchvision,
}

impl NameStyle {
    /// Whether names are unique on their own (Keras), so summaries show only the leaf name.
    pub fn is_flat(self) -> bool {
        !matches!(self, NameStyle::Torchvision)
    }
}

/// The names of one residual block's layers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockNames {
    /// The block itself, as its parent calls it (`res2a`, `conv2_block1`, `0`).
    pub block: String,
    /// The main branch's convolutions, in order.
    pub convs: Vec<String>,
    /// The BatchNorm after each of them.
    pub bns: Vec<String>,
    /// The ReLU after each but the last.
    pub relus: Vec<String>,
    /// A container around the projection shortcut (torchvision's `downsample`), if any.
    pub shortcut_group: Option<String>,
    /// The projection shortcut's convolution.
    pub shortcut_conv: String,
    /// The projection shortcut's BatchNorm.
    pub shortcut_bn: String,
}

/// Keras' block letters: `a`, `b`, ... for stages of up to 6 blocks (all of ResNet50); longer
/// stages use the Caffe-converted ResNet101/152 names `a`, `b1`, `b2`, ... (`res4b22`).
pub fn keras_block_letter(index: usize, blocks_in_stage: usize) -> String {
    if blocks_in_stage <= 6 {
        char::from(b'a' + index as u8).to_string()
    } else if index == 0 {
        "a".into()
    } else {
        format!("b{index}")
    }
}

impl BlockNames {
    /// Names in `style` for block `index` (0-based) of stage `stage` (0-based: the first
    /// residual stage is Keras' stage 2 and torchvision's `layer1`), a block of `convs`
    /// main-branch convolutions (2 basic, 3 bottleneck) in a stage of `blocks_in_stage` blocks.
    ///
    /// A block needs 1 to 26 convolutions (Keras letters them `2a`..`2z`) and an `index` inside
    /// its stage; anything else is an [`Error::Config`](crate::Error::Config).
    pub fn new(style: NameStyle, stage: usize, index: usize, blocks_in_stage: usize, convs: usize) -> crate::Result<Self> {
        if !(1..=26).contains(&convs) || index >= blocks_in_stage {
            return Err(crate::Error::config(
                "BlockNames",
                format!(
                    "a block has 1 to 26 convolutions and an index below its stage's block count, got {convs} convolutions, index {index} of {blocks_in_stage}"
                ),
            ));
        }
        Ok(match style {
            NameStyle::KerasClassic => {
                let id = format!("{}{}", stage + 2, keras_block_letter(index, blocks_in_stage));
                let branch = |i: usize| char::from(b'a' + i as u8);
                BlockNames {
                    block: format!("res{id}"),
                    convs: (0..convs).map(|i| format!("res{id}_branch2{}", branch(i))).collect(),
                    bns: (0..convs).map(|i| format!("bn{id}_branch2{}", branch(i))).collect(),
                    relus: (0..convs - 1).map(|i| format!("res{id}_branch2{}_relu", branch(i))).collect(),
                    shortcut_group: None,
                    shortcut_conv: format!("res{id}_branch1"),
                    shortcut_bn: format!("bn{id}_branch1"),
                }
            }
            NameStyle::KerasModern => {
                let id = format!("conv{}_block{}", stage + 2, index + 1);
                BlockNames {
                    convs: (1..=convs).map(|i| format!("{id}_{i}_conv")).collect(),
                    bns: (1..=convs).map(|i| format!("{id}_{i}_bn")).collect(),
                    relus: (1..convs).map(|i| format!("{id}_{i}_relu")).collect(),
                    shortcut_group: None,
                    shortcut_conv: format!("{id}_0_conv"),
                    shortcut_bn: format!("{id}_0_bn"),
                    block: id,
                }
            }
            NameStyle::Torchvision => BlockNames {
                block: index.to_string(),
                convs: (1..=convs).map(|i| format!("conv{i}")).collect(),
                bns: (1..=convs).map(|i| format!("bn{i}")).collect(),
                relus: (1..convs).map(|i| format!("relu{i}")).collect(),
                shortcut_group: Some("downsample".into()),
                shortcut_conv: "0".into(),
                shortcut_bn: "1".into(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_each_reference() {
        let k = BlockNames::new(NameStyle::KerasClassic, 0, 0, 3, 3).unwrap();
        assert_eq!(k.block, "res2a");
        assert_eq!(k.convs, ["res2a_branch2a", "res2a_branch2b", "res2a_branch2c"]);
        assert_eq!(k.bns[2], "bn2a_branch2c");
        assert_eq!(
            (k.shortcut_conv.as_str(), k.shortcut_bn.as_str()),
            ("res2a_branch1", "bn2a_branch1")
        );
        assert_eq!(BlockNames::new(NameStyle::KerasClassic, 2, 5, 6, 3).unwrap().block, "res4f");
        assert_eq!(BlockNames::new(NameStyle::KerasClassic, 2, 22, 23, 3).unwrap().block, "res4b22");
        let m = BlockNames::new(NameStyle::KerasModern, 1, 3, 4, 3).unwrap();
        assert_eq!(m.convs[1], "conv3_block4_2_conv");
        assert_eq!(m.shortcut_bn, "conv3_block4_0_bn");
        let t = BlockNames::new(NameStyle::Torchvision, 0, 1, 2, 2).unwrap();
        assert_eq!(
            (t.block.as_str(), t.convs.len(), t.shortcut_group.as_deref()),
            ("1", 2, Some("downsample"))
        );
    }
}
