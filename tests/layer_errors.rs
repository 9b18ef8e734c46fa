//! Bad input gives a typed error naming the layer, what it expected and what it got.

use convnet::kernels::{Padding, Padding2d};
use convnet::layers::*;
use convnet::Error;
use ndarray::{ArrayD, IxDyn};

fn zeros(shape: &[usize]) -> Tensor {
    ArrayD::zeros(IxDyn(shape))
}

fn net() -> Sequential {
    let mut s = Sequential::new();
    s.push(
        "conv1",
        Conv2d::new(Conv2dConfig::new(3, 8, [3, 3]).with_padding(Padding::Same)).unwrap(),
    )
    .unwrap()
    .push("bn1", BatchNorm::new(8, KERAS_EPSILON).unwrap())
    .unwrap()
    .push("relu1", Relu)
    .unwrap()
    .push("pool1", MaxPool2d::new(Pool2dConfig::new([2, 2])).unwrap())
    .unwrap()
    .push("flatten", Flatten)
    .unwrap()
    .push("fc", Dense::new(8 * 4 * 4, 10, Some(Activation::Softmax)).unwrap())
    .unwrap();
    s
}

#[test]
fn wrong_channel_count_names_the_layer_and_both_counts() {
    let e = net().output_shape(&[1, 8, 8, 4]).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Shape { .. }), "{e:?}");
    assert!(msg.starts_with("conv1/Conv2D"), "{msg}");
    assert!(msg.contains("3 input channels") && msg.contains("got 4"), "{msg}");
    // forward gives the same error, not a panic
    assert!(matches!(net().forward(&zeros(&[1, 8, 8, 4])), Err(Error::Shape { .. })));
}

#[test]
fn a_fixed_size_head_rejects_a_wrong_spatial_size_at_build_time() {
    let e = net().output_shape(&[2, 10, 10, 3]).unwrap_err();
    assert!(e.to_string().starts_with("fc/Dense"), "{e}");
    assert!(e.to_string().contains("(n, 128)") && e.to_string().contains("(n, 200)"), "{e}");
    assert_eq!(net().output_shape(&[2, 8, 8, 3]).unwrap(), vec![2, 10]);
}

#[test]
fn rank_mismatch_is_a_shape_error() {
    let e = net().forward(&zeros(&[8, 8, 3])).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }));
    assert!(e.to_string().contains("rank 3"), "{e}");
    assert!(Dense::new(4, 2, None).unwrap().forward(&zeros(&[1, 2, 2])).is_err());
    assert!(Flatten.forward(&zeros(&[3])).is_err());
}

#[test]
fn input_smaller_than_the_kernel_is_a_shape_error() {
    let conv = Conv2d::new(Conv2dConfig::new(1, 1, [5, 3])).unwrap();
    let e = conv.forward(&zeros(&[1, 4, 9, 1])).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e:?}");
    assert!(e.to_string().contains("5x3 window"), "{e}");
    let pool = MaxPool2d::new(Pool2dConfig::new([3, 3])).unwrap();
    assert!(matches!(pool.forward(&zeros(&[1, 2, 2, 1])), Err(Error::Shape { .. })));
}

#[test]
fn zero_sizes_are_config_errors() {
    assert!(matches!(
        Conv2d::new(Conv2dConfig::new(3, 8, [3, 3]).with_strides([0, 1])),
        Err(Error::Config { .. })
    ));
    assert!(matches!(Conv2d::new(Conv2dConfig::new(3, 8, [0, 3])), Err(Error::Config { .. })));
    assert!(matches!(Conv2d::new(Conv2dConfig::new(0, 8, [3, 3])), Err(Error::Config { .. })));
    assert!(matches!(MaxPool2d::new(Pool2dConfig::new([2, 0])), Err(Error::Config { .. })));
    assert!(matches!(BatchNorm::new(0, 1e-3), Err(Error::Config { .. })));
    assert!(matches!(Dense::new(0, 3, None), Err(Error::Config { .. })));
}

#[test]
fn huge_dimensions_overflow_cleanly() {
    let conv = Conv2d::new(Conv2dConfig::new(3, 8, [3, 3])).unwrap();
    let e = conv.output_shape(&[usize::MAX / 2, 1 << 20, 1 << 20, 3]).unwrap_err();
    assert!(matches!(e, Error::Overflow { .. }), "{e:?}");
    let pad = ZeroPadding2d::new(Padding2d::new(usize::MAX, 0, 0, 0));
    assert!(matches!(pad.output_shape(&[1, 2, 2, 1]), Err(Error::Overflow { .. })));
}

#[test]
fn weights_of_the_wrong_shape_are_refused() {
    let cfg = Conv2dConfig::new(3, 8, [3, 3]);
    let e = Conv2d::with_weights(cfg, ndarray::Array4::zeros((3, 3, 8, 3)), Some(ndarray::Array1::zeros(8))).unwrap_err();
    assert!(
        e.to_string().contains("(3, 3, 3, 8)") && e.to_string().contains("(3, 3, 8, 3)"),
        "{e}"
    );
    assert!(Conv2d::with_weights(cfg, ndarray::Array4::zeros((3, 3, 3, 8)), None).is_err());
    let bn = BatchNorm::with_weights(
        1e-3,
        ndarray::Array1::ones(4),
        ndarray::Array1::zeros(3),
        ndarray::Array1::zeros(4),
        ndarray::Array1::ones(4),
    );
    assert!(matches!(bn, Err(Error::Shape { .. })));
}

#[test]
fn duplicate_names_are_refused() {
    let mut s = Sequential::new();
    s.push("a", Relu).unwrap();
    assert!(matches!(s.push("a", Relu), Err(Error::Config { .. })));
    assert!(matches!(s.push("", Relu), Err(Error::Config { .. })));
    let main = Sequential::new().with("x", Relu).unwrap();
    let short = Sequential::new().with("x", Relu).unwrap();
    assert!(matches!(Residual::new(main, Some(short), None), Err(Error::Config { .. })));
}

#[test]
fn residual_checks_branch_shapes_and_adds() {
    // main: 1x1 conv 2 -> 3 channels; identity shortcut has 2: mismatch caught at build time.
    let main = Sequential::new()
        .with("c", Conv2d::new(Conv2dConfig::new(2, 3, [1, 1])).unwrap())
        .unwrap();
    let r = Residual::new(main, None, Some(Activation::Relu)).unwrap();
    assert!(matches!(r.output_shape(&[1, 4, 4, 2]), Err(Error::Shape { .. })));

    // identity main branch: relu(x + x) = relu(2x)
    let r = Residual::new(Sequential::new(), None, Some(Activation::Relu)).unwrap();
    let x = ArrayD::from_shape_vec(IxDyn(&[1, 1, 2, 1]), vec![-1.0, 3.0]).unwrap();
    assert_eq!(r.forward(&x).unwrap().iter().copied().collect::<Vec<_>>(), vec![0.0, 6.0]);
}

#[test]
fn summary_counts_parameters_and_taps_see_named_outputs() {
    let s = net().summary(&[1, 8, 8, 3]).unwrap();
    let t = s.total();
    // conv 3*3*3*8+8, bn 4*8 (16 non-trainable), dense 128*10+10
    assert_eq!(t.trainable, 224 + 16 + 1290);
    assert_eq!(t.non_trainable, 16);
    assert_eq!(s.rows.len(), 6);
    let text = s.to_string();
    assert!(
        text.contains("conv1 (Conv2D)") && text.contains("(None, 8, 8, 8)") && text.contains("Total params: 1,546"),
        "{text}"
    );

    let x = zeros(&[1, 8, 8, 3]);
    let (y, taps) = net().forward_with_taps(&x, &["relu1", "flatten"]).unwrap();
    assert_eq!(y.shape(), &[1, 10]);
    assert_eq!(
        taps.iter().map(|(n, t)| (n.as_str(), t.shape().to_vec())).collect::<Vec<_>>(),
        vec![("relu1", vec![1, 8, 8, 8]), ("flatten", vec![1, 128])]
    );
}
