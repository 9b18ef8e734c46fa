use super::{as_slice, contiguous, nhwc, tensor, Layer, Tensor};
use crate::error::{Error, Result, ShapeFmt};
use crate::kernels::{self, Padding, PoolGeometry, Window2d};

/// Configuration shared by [`MaxPool2d`] and [`AvgPool2d`], as Keras' pooling arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dConfig {
    /// Window height and width.
    pub pool_size: [usize; 2],
    /// Step; `None` means the pool size (Keras' default).
    pub strides: Option<[usize; 2]>,
    /// `Valid`, `Same` (Keras' rule) or explicit (torchvision's `padding=1`). Padded cells
    /// never take part: max ignores them, average divides by the real elements only.
    pub padding: Padding,
}

impl Pool2dConfig {
    /// A `'valid'` pool with strides equal to the pool size.
    pub fn new(pool_size: [usize; 2]) -> Self {
        Pool2dConfig {
            pool_size,
            strides: None,
            padding: Padding::Valid,
        }
    }

    /// Sets the strides.
    pub fn with_strides(mut self, strides: [usize; 2]) -> Self {
        self.strides = Some(strides);
        self
    }

    /// Sets the padding rule.
    pub fn with_padding(mut self, padding: Padding) -> Self {
        self.padding = padding;
        self
    }

    fn geometry(&self, layer: &str, input: &[usize]) -> Result<PoolGeometry> {
        let dims = nhwc(layer, input)?;
        let window = Window2d {
            kernel: self.pool_size,
            stride: self.strides.unwrap_or(self.pool_size),
            dilation: [1, 1],
            padding: self.padding,
        };
        PoolGeometry::new(dims, window).map_err(|e| super::conv::rename(e, layer))
    }
}

macro_rules! pool_layer {
    ($ty:ident, $name:literal, $kernel:path, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, Copy, Debug)]
        pub struct $ty {
            config: Pool2dConfig,
        }

        impl $ty {
            /// A pooling layer; fails on a zero pool size or stride, or padding as large as the window.
            pub fn new(config: Pool2dConfig) -> Result<Self> {
                let probe = Window2d {
                    kernel: config.pool_size,
                    stride: config.strides.unwrap_or(config.pool_size),
                    dilation: [1, 1],
                    padding: config.padding,
                };
                probe.validate($name)?;
                Ok($ty { config })
            }

            /// The configuration.
            pub fn config(&self) -> &Pool2dConfig {
                &self.config
            }
        }

        impl Layer for $ty {
            fn type_name(&self) -> &'static str {
                $name
            }

            fn as_any(&self) -> &dyn std::any::Any {
                self
            }

            fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
                let g = self.config.geometry($name, input)?;
                Ok(vec![g.batch, g.out_hw[0], g.out_hw[1], g.channels])
            }

            fn forward(&self, x: &Tensor) -> Result<Tensor> {
                let g = self.config.geometry($name, x.shape())?;
                let x = contiguous(x);
                let mut out = vec![0.0; g.output_len()];
                $kernel(as_slice(&x), &g, &mut out).map_err(|e| super::conv::rename(e, $name))?;
                tensor($name, &[g.batch, g.out_hw[0], g.out_hw[1], g.channels], out)
            }
        }
    };
}

pool_layer!(
    MaxPool2d,
    "MaxPooling2D",
    kernels::max_pool2d,
    "Max pooling over NHWC batches (Keras' `MaxPooling2D`)."
);
pool_layer!(
    AvgPool2d,
    "AveragePooling2D",
    kernels::avg_pool2d,
    "Average pooling over NHWC batches (Keras' `AveragePooling2D`)."
);

/// Global average pooling: NHWC `(n, h, w, c)` to `(n, c)`, Keras' `GlobalAveragePooling2D`
/// and torchvision's `AdaptiveAvgPool2d(1)` + `flatten`.
#[derive(Clone, Copy, Debug, Default)]
pub struct GlobalAvgPool;

impl Layer for GlobalAvgPool {
    fn type_name(&self) -> &'static str {
        "GlobalAveragePooling2D"
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let [n, h, w, c] = nhwc("GlobalAveragePooling2D", input)?;
        if h == 0 || w == 0 {
            return Err(Error::shape(
                "GlobalAveragePooling2D",
                "a non-empty image",
                format!("{}", ShapeFmt(input)),
            ));
        }
        Ok(vec![n, c])
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let out = self.output_shape(x.shape())?;
        let dims = nhwc("GlobalAveragePooling2D", x.shape())?;
        let x = contiguous(x);
        let mut y = vec![0.0; out[0] * out[1]];
        kernels::global_avg_pool(as_slice(&x), dims, &mut y).map_err(|e| super::conv::rename(e, "GlobalAveragePooling2D"))?;
        tensor("GlobalAveragePooling2D", &out, y)
    }
}
