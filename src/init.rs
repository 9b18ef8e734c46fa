//! Weight initialisers, seeded, as Keras and PyTorch define them, so a freshly built model is
//! usable (trainable) without loaded weights.
//!
//! ```
//! use convnet::init::{initialize, InitScheme};
//! use convnet::models::{ResNet, ResNetConfig};
//! let mut model = ResNet::new(ResNetConfig::keras_resnet50().with_width_divisor(8))?;
//! initialize(&mut model, &InitScheme::keras(), 42)?; // glorot_uniform kernels, zero biases
//! # Ok::<(), convnet::Error>(())
//! ```
//!
//! Every initialiser is a [`VarianceScaling`](Initializer::VarianceScaling) (Keras' general
//! form) or a constant; the named constructors give the common ones. BatchNorm layers are always
//! set to gamma 1, beta 0, moving mean 0 and moving variance 1, as both frameworks do.
//!
//! Fans, as both frameworks count them: a convolution kernel `(kh, kw, in / groups, out)` has
//! `fan_in = kh * kw * in / groups` and `fan_out = kh * kw * out`; a dense kernel `(in, out)`
//! has `fan_in = in`, `fan_out = out`.
//!
//! The random numbers come from a SplitMix64-seeded xoshiro256** generator, reproducible across
//! platforms and versions of this crate (not the frameworks' own generators: the same seed
//! gives the same distribution, not the same values, as Keras or PyTorch).

use ndarray::ArrayViewMutD;

use crate::error::{Error, Result};
use crate::layers::{Layer, LayerPath, ParamKind, ParamVisitor};

/// Which fan a [`Initializer::VarianceScaling`] divides by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FanMode {
    /// Inputs per output.
    FanIn,
    /// Outputs per input.
    FanOut,
    /// `(fan_in + fan_out) / 2`.
    FanAvg,
}

/// The distribution a [`Initializer::VarianceScaling`] draws from, with variance `scale / fan`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Distribution {
    /// A normal distribution.
    Normal,
    /// A normal truncated at two standard deviations, rescaled so the variance is still
    /// `scale / fan` (Keras' `truncated_normal`: the untruncated standard deviation is divided by
    /// 0.87962566103423978).
    TruncatedNormal,
    /// Uniform in `[-sqrt(3 scale / fan), sqrt(3 scale / fan)]`.
    Uniform,
}

/// How to fill one tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Initializer {
    /// Every value `v`.
    Constant(f32),
    /// Values of variance `scale / fan`: Keras' `VarianceScaling(scale, mode, distribution)`.
    VarianceScaling {
        /// The variance times the fan.
        scale: f64,
        /// Which fan.
        mode: FanMode,
        /// Which distribution.
        distribution: Distribution,
    },
}

impl Initializer {
    /// Keras `glorot_uniform` (its default kernel initialiser) = PyTorch `xavier_uniform_`.
    pub fn glorot_uniform() -> Self {
        Self::variance(1.0, FanMode::FanAvg, Distribution::Uniform)
    }

    /// Keras `glorot_normal` (truncated normal).
    pub fn glorot_normal() -> Self {
        Self::variance(1.0, FanMode::FanAvg, Distribution::TruncatedNormal)
    }

    /// PyTorch `xavier_normal_` (plain normal).
    pub fn xavier_normal() -> Self {
        Self::variance(1.0, FanMode::FanAvg, Distribution::Normal)
    }

    /// Keras `he_normal` (truncated normal, fan in).
    pub fn he_normal() -> Self {
        Self::variance(2.0, FanMode::FanIn, Distribution::TruncatedNormal)
    }

    /// Keras `he_uniform` = PyTorch `kaiming_uniform_(nonlinearity='relu')`.
    pub fn he_uniform() -> Self {
        Self::variance(2.0, FanMode::FanIn, Distribution::Uniform)
    }

    /// PyTorch `kaiming_normal_(mode, nonlinearity='relu')` (plain normal); torchvision's
    /// ResNets use `FanMode::FanOut` for their convolutions.
    pub fn kaiming_normal(mode: FanMode) -> Self {
        Self::variance(2.0, mode, Distribution::Normal)
    }

    /// PyTorch's default for `Conv2d` and `Linear` weights, `kaiming_uniform_(a=sqrt(5))`:
    /// uniform in `[-1/sqrt(fan_in), 1/sqrt(fan_in)]`.
    pub fn torch_default() -> Self {
        Self::variance(1.0 / 3.0, FanMode::FanIn, Distribution::Uniform)
    }

    fn variance(scale: f64, mode: FanMode, distribution: Distribution) -> Self {
        Initializer::VarianceScaling { scale, mode, distribution }
    }

    /// Fills `t` (whose fans are `fans = (fan_in, fan_out)`) from `rng`.
    pub fn fill(&self, mut t: ArrayViewMutD<'_, f32>, fans: (usize, usize), rng: &mut Rng) -> Result<()> {
        match *self {
            Initializer::Constant(v) => t.fill(v),
            Initializer::VarianceScaling { scale, mode, distribution } => {
                let fan = match mode {
                    FanMode::FanIn => fans.0 as f64,
                    FanMode::FanOut => fans.1 as f64,
                    FanMode::FanAvg => (fans.0 + fans.1) as f64 / 2.0,
                };
                if !(scale.is_finite() && scale > 0.0) || fan <= 0.0 {
                    return Err(Error::config(
                        "initializer",
                        format!("needs a positive scale and fan, got scale {scale}, fan {fan}"),
                    ));
                }
                let std = (scale / fan).sqrt();
                match distribution {
                    Distribution::Normal => t.iter_mut().for_each(|v| *v = (std * rng.normal()) as f32),
                    Distribution::TruncatedNormal => {
                        let std = std / 0.879_625_661_034_239_8;
                        t.iter_mut().for_each(|v| *v = (std * rng.truncated_normal()) as f32);
                    }
                    Distribution::Uniform => {
                        let limit = (3.0f64).sqrt() * std;
                        t.iter_mut().for_each(|v| *v = (limit * (2.0 * rng.uniform() - 1.0)) as f32);
                    }
                }
            }
        }
        Ok(())
    }
}

/// How a model's biases start.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BiasInit {
    /// Zero (Keras).
    Zeros,
    /// PyTorch's default: uniform in `[-1/sqrt(fan_in), 1/sqrt(fan_in)]`.
    TorchDefault,
}

/// The initialisers for every kind of parameter of a model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InitScheme {
    /// Convolution kernels.
    pub conv_kernel: Initializer,
    /// Dense kernels.
    pub dense_kernel: Initializer,
    /// Convolution and dense biases.
    pub bias: BiasInit,
}

impl InitScheme {
    /// Keras' defaults: `glorot_uniform` kernels, zero biases.
    pub fn keras() -> Self {
        InitScheme {
            conv_kernel: Initializer::glorot_uniform(),
            dense_kernel: Initializer::glorot_uniform(),
            bias: BiasInit::Zeros,
        }
    }

    /// PyTorch's module defaults (`Conv2d`, `Linear`): `kaiming_uniform_(a=sqrt(5))` kernels,
    /// biases uniform in `±1/sqrt(fan_in)`.
    pub fn torch() -> Self {
        InitScheme {
            conv_kernel: Initializer::torch_default(),
            dense_kernel: Initializer::torch_default(),
            bias: BiasInit::TorchDefault,
        }
    }

    /// torchvision's ResNets: convolutions `kaiming_normal_(mode='fan_out')`, the classifier
    /// PyTorch's `Linear` default.
    pub fn torchvision_resnet() -> Self {
        InitScheme {
            conv_kernel: Initializer::kaiming_normal(FanMode::FanOut),
            ..Self::torch()
        }
    }
}

/// Fills every parameter of `model` from `scheme` with a generator seeded by `seed`; each
/// parameter gets its own stream (from `seed` and its place in the model), so the result does
/// not depend on anything but the model's structure and the seed.
pub fn initialize(model: &mut dyn Layer, scheme: &InitScheme, seed: u64) -> Result<()> {
    struct Init<'a> {
        scheme: &'a InitScheme,
        seed: u64,
        index: u64,
        /// The fan-in of the last kernel seen (a bias follows its kernel).
        last_fan_in: usize,
    }
    impl ParamVisitor for Init<'_> {
        fn visit(&mut self, path: &LayerPath, kind: ParamKind, t: ArrayViewMutD<'_, f32>) -> Result<()> {
            let mut rng = Rng::new(self.seed ^ self.index.wrapping_mul(0xA076_1D64_78BD_642F));
            self.index += 1;
            let shape = t.shape().to_vec();
            match kind {
                ParamKind::Kernel => {
                    let (init, fans) = match *shape.as_slice() {
                        [kh, kw, i, o] => (self.scheme.conv_kernel, (kh * kw * i, kh * kw * o)),
                        [i, o] => (self.scheme.dense_kernel, (i, o)),
                        _ => {
                            return Err(Error::config(
                                path.to_string(),
                                format!("a kernel of rank 2 or 4, got shape {shape:?}"),
                            ))
                        }
                    };
                    self.last_fan_in = fans.0;
                    init.fill(t, fans, &mut rng)
                }
                ParamKind::Bias => match self.scheme.bias {
                    BiasInit::Zeros => Initializer::Constant(0.0).fill(t, (1, 1), &mut rng),
                    BiasInit::TorchDefault => Initializer::torch_default().fill(t, (self.last_fan_in.max(1), 1), &mut rng),
                },
                ParamKind::Gamma | ParamKind::MovingVariance => Initializer::Constant(1.0).fill(t, (1, 1), &mut rng),
                ParamKind::Beta | ParamKind::MovingMean => Initializer::Constant(0.0).fill(t, (1, 1), &mut rng),
            }
        }
    }
    model.visit_params_mut(
        &mut LayerPath::default(),
        &mut Init {
            scheme,
            seed,
            index: 0,
            last_fan_in: 1,
        },
    )
}

/// A small, fast, seeded generator (xoshiro256**, seeded through SplitMix64).
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let out = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        out
    }

    /// Uniform in `[0, 1)`, 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A uniform index in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// A standard normal value (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// A standard normal value conditioned on `|x| <= 2` (rejection).
    pub fn truncated_normal(&mut self) -> f64 {
        loop {
            let x = self.normal();
            if x.abs() <= 2.0 {
                return x;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, IxDyn};

    fn moments(init: Initializer, shape: &[usize], fans: (usize, usize)) -> (f64, f64, f64) {
        let mut t = ArrayD::<f32>::zeros(IxDyn(shape));
        init.fill(t.view_mut(), fans, &mut Rng::new(7)).unwrap();
        let n = t.len() as f64;
        let mean = t.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = t.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        let max = t.iter().fold(0.0f64, |m, &v| m.max((v as f64).abs()));
        (mean, var, max)
    }

    /// Over 294,912 values, the sample mean's standard error is about 0.2% of the standard
    /// deviation and the variance's about 0.3-0.5%: the bounds below are several of those.
    #[test]
    fn initialisers_have_the_moments_their_formulas_give() {
        let shape = [3, 3, 128, 256];
        let fans = (3 * 3 * 128, 3 * 3 * 256);
        let avg = (fans.0 + fans.1) as f64 / 2.0;
        let cases = [
            (
                Initializer::glorot_uniform(),
                1.0 / avg,
                Some((6.0 / (fans.0 + fans.1) as f64).sqrt()),
            ),
            (
                Initializer::glorot_normal(),
                1.0 / avg,
                Some(2.0 * (1.0 / avg).sqrt() / 0.879_625_661_034_239_8),
            ),
            (Initializer::xavier_normal(), 1.0 / avg, None),
            (
                Initializer::he_normal(),
                2.0 / fans.0 as f64,
                Some(2.0 * (2.0 / fans.0 as f64).sqrt() / 0.879_625_661_034_239_8),
            ),
            (Initializer::he_uniform(), 2.0 / fans.0 as f64, Some((6.0 / fans.0 as f64).sqrt())),
            (Initializer::kaiming_normal(FanMode::FanOut), 2.0 / fans.1 as f64, None),
            (
                Initializer::torch_default(),
                1.0 / (3.0 * fans.0 as f64),
                Some(1.0 / (fans.0 as f64).sqrt()),
            ),
        ];
        for (init, want_var, bound) in cases {
            let (mean, var, max) = moments(init, &shape, fans);
            let std = want_var.sqrt();
            assert!(mean.abs() < 0.01 * std, "{init:?}: mean {mean}");
            assert!((var / want_var - 1.0).abs() < 0.02, "{init:?}: variance {var}, want {want_var}");
            if let Some(b) = bound {
                assert!(max <= b * (1.0 + 1e-6), "{init:?}: |value| {max} > bound {b}");
                assert!(max >= 0.99 * b, "{init:?}: the values should reach near the bound {b}, max {max}");
            }
        }
    }

    #[test]
    fn a_scheme_seeds_each_parameter_and_is_reproducible() {
        use crate::layers::{BatchNorm, Conv2d, Conv2dConfig, Dense, Layer, Sequential};
        let build = || {
            let mut net = Sequential::new();
            net.push("a", Conv2d::new(Conv2dConfig::new(3, 16, [3, 3])).unwrap())
                .unwrap()
                .push("bn", BatchNorm::new(16, 1e-3).unwrap())
                .unwrap()
                .push("b", Conv2d::new(Conv2dConfig::new(16, 16, [3, 3])).unwrap())
                .unwrap()
                .push("fc", Dense::new(16, 10, None).unwrap())
                .unwrap();
            net
        };
        let params = |net: &Sequential| {
            let mut all = Vec::new();
            net.visit_params(&mut LayerPath::default(), &mut |p, k, v| {
                all.push((format!("{p} {k:?}"), v.to_owned()))
            });
            all
        };
        let (mut a, mut b) = (build(), build());
        initialize(&mut a, &InitScheme::torch(), 1).unwrap();
        initialize(&mut b, &InitScheme::torch(), 1).unwrap();
        let (pa, pb) = (params(&a), params(&b));
        assert_eq!(pa, pb);
        // BatchNorm is the identity; biases follow PyTorch's bound 1/sqrt(fan_in).
        let get = |name: &str| pa.iter().find(|(n, _)| n == name).unwrap().1.clone();
        assert!(get("bn Gamma").iter().all(|&v| v == 1.0) && get("bn MovingMean").iter().all(|&v| v == 0.0));
        let bias = get("fc Bias");
        assert!(bias.iter().all(|&v| v.abs() <= 0.25) && bias.iter().any(|&v| v != 0.0));
        initialize(&mut b, &InitScheme::torch(), 2).unwrap();
        assert_ne!(params(&b), pa);
    }
}
