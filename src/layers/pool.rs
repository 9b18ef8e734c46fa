use super::{nhwc, Layer};
use crate::error::Result;
use crate::graph::{Lowering, Op, PoolOp, ValueId};
use crate::kernels::{Padding, PoolGeometry, Window2d};

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
    ($ty:ident, $name:literal, $op:path, $doc:literal) => {
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

            fn lower<'m>(&'m self, b: &mut Lowering<'m>, x: ValueId) -> Result<ValueId> {
                let mut input = vec![1];
                input.extend_from_slice(b.shape(x));
                let g = self.config.geometry($name, &input)?;
                let op = PoolOp {
                    size: self.config.pool_size,
                    stride: g.window.stride,
                    padding: g.pad,
                };
                b.push($op(op), &[x])
            }
        }
    };
}

pool_layer!(
    MaxPool2d,
    "MaxPooling2D",
    Op::MaxPool,
    "Max pooling over NHWC batches (Keras' `MaxPooling2D`)."
);
pool_layer!(
    AvgPool2d,
    "AveragePooling2D",
    Op::AvgPool,
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

    fn lower<'m>(&'m self, b: &mut Lowering<'m>, x: ValueId) -> Result<ValueId> {
        b.push(Op::GlobalAvgPool, &[x])
    }
}
