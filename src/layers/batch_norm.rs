use std::borrow::Cow;

use ndarray::{Array1, ArrayViewD};

use super::{expect_param_shape, Layer, LayerPath, ParamKind, ParamVisitor};
use crate::error::{Error, Result, ShapeFmt};
use crate::graph::{BatchNormOp, Lowering, Op, ValueId};

const NAME: &str = "BatchNormalization";

/// Keras' default BatchNorm epsilon (`BatchNormalization(epsilon=1e-3)`).
pub const KERAS_EPSILON: f32 = 1e-3;

/// Batch normalisation at inference, over the last (channel) axis, with the moving statistics:
/// `y = gamma * (x - moving_mean) / sqrt(moving_variance + epsilon) + beta`.
#[derive(Clone, Debug)]
pub struct BatchNorm {
    epsilon: f32,
    gamma: Array1<f32>,
    beta: Array1<f32>,
    moving_mean: Array1<f32>,
    moving_variance: Array1<f32>,
}

impl BatchNorm {
    /// An identity-initialised BatchNorm (gamma 1, beta 0, mean 0, variance 1) over `channels`
    /// channels. Keras' default epsilon is [`KERAS_EPSILON`]; torchvision uses `1e-5`, modern
    /// Keras ResNets `1.001e-5`.
    pub fn new(channels: usize, epsilon: f32) -> Result<Self> {
        if channels == 0 || !(epsilon.is_finite() && epsilon >= 0.0) {
            return Err(Error::config(
                NAME,
                format!("needs at least one channel and a finite epsilon >= 0, got {channels} channels, epsilon {epsilon}"),
            ));
        }
        Ok(BatchNorm {
            epsilon,
            gamma: Array1::ones(channels),
            beta: Array1::zeros(channels),
            moving_mean: Array1::zeros(channels),
            moving_variance: Array1::ones(channels),
        })
    }

    /// A BatchNorm with the given statistics, all of one length.
    pub fn with_weights(
        epsilon: f32,
        gamma: Array1<f32>,
        beta: Array1<f32>,
        moving_mean: Array1<f32>,
        moving_variance: Array1<f32>,
    ) -> Result<Self> {
        let c = gamma.len();
        let mut bn = BatchNorm::new(c, epsilon)?;
        for (what, a) in [
            ("beta", &beta),
            ("moving_mean", &moving_mean),
            ("moving_variance", &moving_variance),
        ] {
            expect_param_shape(NAME, what, &[c], a.shape())?;
        }
        (bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance) = (gamma, beta, moving_mean, moving_variance);
        Ok(bn)
    }

    /// Channel count.
    pub fn channels(&self) -> usize {
        self.gamma.len()
    }

    /// Epsilon added to the variance.
    pub fn epsilon(&self) -> f32 {
        self.epsilon
    }

    /// The per-channel affine map this layer computes at inference, `y = x * scale + shift`.
    /// (This is what folding into a preceding convolution uses.)
    pub fn scale_shift(&self) -> (Array1<f32>, Array1<f32>) {
        let scale: Array1<f32> = ndarray::Zip::from(&self.gamma)
            .and(&self.moving_variance)
            .map_collect(|&g, &v| g / (v + self.epsilon).sqrt());
        let shift = ndarray::Zip::from(&self.beta)
            .and(&self.moving_mean)
            .and(&scale)
            .map_collect(|&b, &m, &s| b - m * s);
        (scale, shift)
    }

    fn check(&self, input: &[usize]) -> Result<()> {
        match input.last() {
            Some(&c) if input.len() >= 2 && c == self.channels() => Ok(()),
            _ => Err(Error::shape(
                NAME,
                format!("a batch whose last axis has {} channels", self.channels()),
                format!("{}", ShapeFmt(input)),
            )),
        }
    }
}

impl Layer for BatchNorm {
    fn type_name(&self) -> &'static str {
        NAME
    }

    fn lower<'m>(&'m self, b: &mut Lowering<'m>, x: ValueId) -> Result<ValueId> {
        let mut input = vec![1];
        input.extend_from_slice(b.shape(x));
        self.check(&input)?;
        let slice = |a: &'m Array1<f32>| {
            a.as_slice()
                .map(Cow::Borrowed)
                .ok_or_else(|| Error::config(NAME, "parameters are not contiguous"))
        };
        let op = BatchNormOp {
            gamma: slice(&self.gamma)?,
            beta: slice(&self.beta)?,
            mean: slice(&self.moving_mean)?,
            variance: slice(&self.moving_variance)?,
            epsilon: self.epsilon,
        };
        b.push(Op::BatchNorm(op), &[x])
    }

    fn visit_params(&self, path: &mut LayerPath, f: &mut dyn FnMut(&LayerPath, ParamKind, ArrayViewD<'_, f32>)) {
        f(path, ParamKind::Gamma, self.gamma.view().into_dyn());
        f(path, ParamKind::Beta, self.beta.view().into_dyn());
        f(path, ParamKind::MovingMean, self.moving_mean.view().into_dyn());
        f(path, ParamKind::MovingVariance, self.moving_variance.view().into_dyn());
    }

    fn visit_params_mut(&mut self, path: &mut LayerPath, visitor: &mut dyn ParamVisitor) -> Result<()> {
        visitor.visit(path, ParamKind::Gamma, self.gamma.view_mut().into_dyn())?;
        visitor.visit(path, ParamKind::Beta, self.beta.view_mut().into_dyn())?;
        visitor.visit(path, ParamKind::MovingMean, self.moving_mean.view_mut().into_dyn())?;
        visitor.visit(path, ParamKind::MovingVariance, self.moving_variance.view_mut().into_dyn())
    }
}
