use std::borrow::Cow;

use ndarray::{Array1, Array4, ArrayViewD};

use super::{expect_param_shape, nhwc, Layer, LayerPath, ParamKind, ParamVisitor};
use crate::error::{Error, Result};
use crate::graph::{ConvAlgorithm, ConvOp, Lowering, Op, ValueId};
use crate::kernels::{ConvGeometry, Padding, Rectifier, Window2d};

const NAME: &str = "Conv2D";

/// Configuration of a [`Conv2d`], Keras' `Conv2D` arguments plus the input channel count.
///
/// ```
/// use convnet::layers::Conv2dConfig;
/// use convnet::kernels::Padding;
/// // Keras: Conv2D(64, (3, 3), strides=(2, 2), padding='same') on 32 input channels.
/// let cfg = Conv2dConfig::new(32, 64, [3, 3]).with_strides([2, 2]).with_padding(Padding::Same);
/// assert_eq!(cfg.filters, 64);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub filters: usize,
    /// Kernel height and width.
    pub kernel_size: [usize; 2],
    /// Vertical and horizontal stride (default 1x1).
    pub strides: [usize; 2],
    /// Dilation rate (default 1x1).
    pub dilation: [usize; 2],
    /// Border rule (default [`Padding::Valid`]).
    pub padding: Padding,
    /// Whether the layer adds a bias (default true, as Keras; torchvision's ResNets use false).
    pub use_bias: bool,
    /// Channel groups (default 1, dense): the input and output channels split into `groups`
    /// consecutive groups, each convolved on its own; `groups == in_channels` is a depthwise
    /// convolution. Both channel counts must be multiples of it.
    pub groups: usize,
}

impl Conv2dConfig {
    /// A stride-1, undilated, `'valid'` convolution with a bias.
    pub fn new(in_channels: usize, filters: usize, kernel_size: [usize; 2]) -> Self {
        Conv2dConfig {
            in_channels,
            filters,
            kernel_size,
            strides: [1, 1],
            dilation: [1, 1],
            padding: Padding::Valid,
            use_bias: true,
            groups: 1,
        }
    }

    /// Sets the channel groups.
    pub fn with_groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }

    /// Sets the strides.
    pub fn with_strides(mut self, strides: [usize; 2]) -> Self {
        self.strides = strides;
        self
    }

    /// Sets the dilation rate.
    pub fn with_dilation(mut self, dilation: [usize; 2]) -> Self {
        self.dilation = dilation;
        self
    }

    /// Sets the padding rule.
    pub fn with_padding(mut self, padding: Padding) -> Self {
        self.padding = padding;
        self
    }

    /// Turns the bias on or off.
    pub fn with_bias(mut self, use_bias: bool) -> Self {
        self.use_bias = use_bias;
        self
    }

    /// The sliding window this configuration describes.
    pub fn window(&self) -> Window2d {
        Window2d {
            kernel: self.kernel_size,
            stride: self.strides,
            dilation: self.dilation,
            padding: self.padding,
        }
    }

    /// Shape of the kernel: `(kh, kw, in_channels / groups, filters)` (Keras' layout).
    pub fn kernel_shape(&self) -> [usize; 4] {
        [
            self.kernel_size[0],
            self.kernel_size[1],
            self.in_channels / self.groups.max(1),
            self.filters,
        ]
    }

    fn validate(&self) -> Result<()> {
        self.window().validate(NAME)?;
        if self.in_channels == 0 || self.filters == 0 {
            return Err(Error::config(
                NAME,
                format!(
                    "channels must be at least 1, got {} in and {} filters",
                    self.in_channels, self.filters
                ),
            ));
        }
        if self.groups == 0 || !self.in_channels.is_multiple_of(self.groups) || !self.filters.is_multiple_of(self.groups) {
            return Err(Error::config(
                NAME,
                format!(
                    "groups ({}) must be at least 1 and divide both the input channels ({}) and the filters ({})",
                    self.groups, self.in_channels, self.filters
                ),
            ));
        }
        crate::error::checked_product(NAME, &self.kernel_shape())?;
        Ok(())
    }
}

/// 2-D convolution over NHWC batches, lowered to [`Op::Conv2d`] (computed by
/// [`kernels::conv2d`](crate::kernels::conv2d), GEMM-backed, on the reference path).
///
/// Matches Keras' `Conv2D`: cross-correlation with an HWIO kernel, `'same'` padding with the
/// extra row/column at the bottom/right.
#[derive(Clone, Debug)]
pub struct Conv2d {
    config: Conv2dConfig,
    kernel: Array4<f32>,
    bias: Option<Array1<f32>>,
}

impl Conv2d {
    /// A convolution with zero weights (load real ones with a weights loader or
    /// [`Conv2d::set_weights`]).
    pub fn new(config: Conv2dConfig) -> Result<Self> {
        config.validate()?;
        let bias = config.use_bias.then(|| Array1::zeros(config.filters));
        Ok(Conv2d {
            kernel: Array4::zeros(config.kernel_shape()),
            bias,
            config,
        })
    }

    /// A convolution with the given HWIO kernel and bias (which must be present exactly when
    /// `config.use_bias`).
    pub fn with_weights(config: Conv2dConfig, kernel: Array4<f32>, bias: Option<Array1<f32>>) -> Result<Self> {
        let mut conv = Conv2d::new(config)?;
        conv.set_weights(kernel, bias)?;
        Ok(conv)
    }

    /// Replaces the weights, checking their shapes.
    pub fn set_weights(&mut self, kernel: Array4<f32>, bias: Option<Array1<f32>>) -> Result<()> {
        expect_param_shape(NAME, "kernel", &self.config.kernel_shape(), kernel.shape())?;
        match (&bias, self.config.use_bias) {
            (Some(b), true) => expect_param_shape(NAME, "bias", &[self.config.filters], b.shape())?,
            (None, false) => {}
            (b, _) => {
                return Err(Error::config(
                    NAME,
                    format!(
                        "use_bias is {} but a bias was {}",
                        self.config.use_bias,
                        if b.is_some() { "given" } else { "not given" }
                    ),
                ))
            }
        }
        self.kernel = kernel.as_standard_layout().into_owned();
        self.bias = bias.map(|b| b.as_standard_layout().into_owned());
        Ok(())
    }

    /// The configuration.
    pub fn config(&self) -> &Conv2dConfig {
        &self.config
    }

    /// The HWIO kernel.
    pub fn kernel(&self) -> &Array4<f32> {
        &self.kernel
    }

    /// The bias, if the layer has one.
    pub fn bias(&self) -> Option<&Array1<f32>> {
        self.bias.as_ref()
    }

    /// Plans the kernel call for an input shape (for a grouped convolution, the geometry of
    /// one group).
    pub fn geometry(&self, input: &[usize]) -> Result<ConvGeometry> {
        let [n, h, w, c] = nhwc(NAME, input)?;
        if c != self.config.in_channels {
            return Err(Error::shape(
                NAME,
                format!("{} input channels", self.config.in_channels),
                format!("{c}, in an input of shape {}", crate::error::ShapeFmt(input)),
            ));
        }
        let g = self.config.groups.max(1);
        ConvGeometry::new([n, h, w, c / g], self.config.filters / g, self.config.window()).map_err(|e| rename(e, NAME))
    }
}

/// Replaces the generic kernel name in an error with the layer's type.
pub(crate) fn rename(e: Error, layer: &str) -> Error {
    match e {
        Error::Shape { expected, got, .. } => Error::Shape {
            layer: layer.into(),
            expected,
            got,
        },
        Error::Config { reason, .. } => Error::Config {
            layer: layer.into(),
            reason,
        },
        Error::Overflow { what, .. } => Error::Overflow { layer: layer.into(), what },
        other => other,
    }
}

impl Layer for Conv2d {
    fn type_name(&self) -> &'static str {
        NAME
    }

    fn lower<'m>(&'m self, b: &mut Lowering<'m>, x: ValueId) -> Result<ValueId> {
        let mut input = vec![1];
        input.extend_from_slice(b.shape(x));
        let g = self.geometry(&input)?;
        let kernel = self
            .kernel
            .as_slice()
            .ok_or_else(|| Error::config(NAME, "kernel is not contiguous"))?;
        let c = &self.config;
        let op = ConvOp {
            kernel: Cow::Borrowed(kernel),
            kernel_size: c.kernel_size,
            in_channels: c.in_channels,
            out_channels: c.filters,
            groups: c.groups,
            stride: c.strides,
            dilation: c.dilation,
            padding: g.pad,
            bias: self.bias.as_ref().and_then(|b| b.as_slice()).map(Cow::Borrowed),
            scale: None,
            residual: false,
            rectifier: Rectifier::Identity,
            algorithm: ConvAlgorithm::Gemm,
        };
        b.push(Op::Conv2d(op), &[x]).map_err(|e| rename(e, NAME))
    }

    fn visit_params(&self, path: &mut LayerPath, f: &mut dyn FnMut(&LayerPath, ParamKind, ArrayViewD<'_, f32>)) {
        f(path, ParamKind::Kernel, self.kernel.view().into_dyn());
        if let Some(b) = &self.bias {
            f(path, ParamKind::Bias, b.view().into_dyn());
        }
    }

    fn visit_params_mut(&mut self, path: &mut LayerPath, visitor: &mut dyn ParamVisitor) -> Result<()> {
        visitor.visit(path, ParamKind::Kernel, self.kernel.view_mut().into_dyn())?;
        if let Some(b) = &mut self.bias {
            visitor.visit(path, ParamKind::Bias, b.view_mut().into_dyn())?;
        }
        Ok(())
    }
}
