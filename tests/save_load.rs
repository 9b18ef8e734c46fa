//! Saving any model to `.safetensors` under its own names (both conventions), reloading it
//! strictly and bit-identically; seeded initialisers; names that identify one layer.

mod common;

use convnet::init::{initialize, InitScheme};
use convnet::layers::*;
use convnet::models::{BlockNames, Depth, NameStyle, ResNet, ResNetConfig};
use convnet::weights::{save_safetensors, to_safetensors, Convention, LoadOptions, WeightFile};
use convnet::Error;
use ndarray::{ArrayD, IxDyn};

fn params(model: &dyn Layer) -> Vec<(String, ArrayD<f32>)> {
    let mut all = Vec::new();
    model.visit_params(&mut LayerPath::default(), &mut |p, k, v| {
        all.push((format!("{p}:{k:?}"), v.to_owned()))
    });
    all
}

#[test]
fn every_preset_saved_in_either_convention_reloads_bit_identically() {
    let dir = std::env::temp_dir().join(format!("convnet-save-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let presets = [
        (ResNetConfig::keras_resnet50().with_width_divisor(16), InitScheme::keras()),
        (
            ResNetConfig::keras_modern(Depth::R50).unwrap().with_width_divisor(16),
            InitScheme::keras(),
        ),
        (
            ResNetConfig::torchvision(Depth::R18).with_width_divisor(16),
            InitScheme::torchvision_resnet(),
        ),
        (ResNetConfig::torchvision(Depth::R50).with_width_divisor(16), InitScheme::torch()),
    ];
    let x = ArrayD::from_shape_vec(IxDyn(&[1, 224, 224, 3]), common::fill(224 * 224 * 3, 3)).unwrap();
    for (cfg, scheme) in presets {
        let mut model = ResNet::new(cfg.clone()).unwrap();
        initialize(&mut model, &scheme, 17).unwrap();
        // Moving statistics away from their initial values, so they are checked too.
        common::randomize(&mut model, 4);
        let want = model.forward(&x).unwrap();
        // torchvision's names repeat (`conv1` in every block): only full paths identify them.
        let conventions: &[Convention] = if cfg.names == NameStyle::Torchvision {
            assert!(matches!(to_safetensors(&model, Convention::Keras), Err(Error::Config { .. })));
            &[Convention::Torch]
        } else {
            &[Convention::Keras, Convention::Torch]
        };
        for &convention in conventions {
            let path = dir.join(format!("{}-{convention:?}.safetensors", cfg.name));
            save_safetensors(&model, &path, convention).unwrap();
            let file = WeightFile::open(&path).unwrap();
            assert_eq!(file.convention(), convention);
            let mut fresh = ResNet::new(cfg.clone()).unwrap();
            let report = file.load_into(&mut fresh, &LoadOptions::strict()).unwrap();
            assert!(report.is_complete(), "{report}");
            assert_eq!(params(&fresh), params(&model), "{} {convention:?}", cfg.name);
            assert_eq!(fresh.forward(&x).unwrap(), want);
        }
        // A PyTorch-convention file is a real state_dict: torchvision's names and layouts.
        if cfg.names == NameStyle::Torchvision {
            let file = WeightFile::from_bytes(to_safetensors(&model, Convention::Torch).unwrap(), "mem").unwrap();
            assert_eq!(file.get("conv1.weight").unwrap().shape, vec![4, 3, 7, 7]);
            assert!(file.get("layer1.0.bn1.running_var").is_some());
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Two nested layers with the same name: under Keras' convention (keys on the layer's own
/// name) their parameters would share a key. The writer refuses; a file with that key loads
/// into neither under strict mode, and the lenient report names the clash.
#[test]
fn a_key_claimed_by_two_layers_is_an_error() {
    let block = || {
        Sequential::new()
            .with("conv", Conv2d::new(Conv2dConfig::new(3, 3, [1, 1])).unwrap())
            .unwrap()
    };
    let mut net = Sequential::new();
    net.push("a", block()).unwrap().push("b", block()).unwrap();
    let e = to_safetensors(&net, Convention::Keras).unwrap_err();
    assert!(e.to_string().contains("a/conv (kernel) and b/conv (kernel)"), "{e}");
    // Full paths are unique: the torch convention saves it.
    assert!(to_safetensors(&net, Convention::Torch).is_ok());

    let one = Sequential::new()
        .with("conv", Conv2d::new(Conv2dConfig::new(3, 3, [1, 1])).unwrap())
        .unwrap();
    let file = WeightFile::from_bytes(to_safetensors(&one, Convention::Keras).unwrap(), "one conv").unwrap();
    let e = file.load_into(&mut net, &LoadOptions::strict()).unwrap_err();
    assert!(
        matches!(&e, Error::AmbiguousWeights { ambiguous, .. } if ambiguous.len() == 2),
        "{e}"
    );
    let report = file.load_into(&mut net, &LoadOptions::lenient()).unwrap();
    assert!(!report.is_complete());
    assert_eq!(
        report.ambiguous,
        [
            "conv/kernel <- a/conv (kernel), b/conv (kernel)",
            "conv/bias <- a/conv (bias), b/conv (bias)"
        ]
    );

    // The seed's Keras file too: its `conv1` matches one layer only.
    let mut two = Sequential::new();
    for name in ["x", "y"] {
        two.push(
            name,
            Sequential::new()
                .with("conv1", Conv2d::new(Conv2dConfig::new(3, 8, [7, 7]).with_strides([2, 2])).unwrap())
                .unwrap(),
        )
        .unwrap();
    }
    let seed = WeightFile::open(common::fixture("keras_resnet50_w8/resnet50.h5")).unwrap();
    let report = seed.load_into(&mut two, &LoadOptions::lenient()).unwrap();
    assert_eq!(report.ambiguous.len(), 2, "{report:?}");
}

#[test]
fn block_names_refuse_impossible_blocks() {
    for (convs, index, blocks) in [(0, 0, 3), (27, 0, 3), (3, 3, 3)] {
        let e = BlockNames::new(NameStyle::KerasClassic, 0, index, blocks, convs).unwrap_err();
        assert!(matches!(e, Error::Config { .. }), "{e}");
    }
    assert!(BlockNames::new(NameStyle::Torchvision, 0, 0, 1, 1).is_ok());
}

#[test]
fn unknown_conventions_in_the_metadata_are_format_errors() {
    let net = Sequential::new().with("fc", Dense::new(2, 2, None).unwrap()).unwrap();
    let bytes = to_safetensors(&net, Convention::Keras).unwrap();
    let text = String::from_utf8_lossy(&bytes).replace("\"keras\"", "\"kerax\"");
    let e = WeightFile::from_bytes(text.into_bytes(), "bad").unwrap_err();
    assert!(matches!(e, Error::Format { .. }), "{e}");
}
