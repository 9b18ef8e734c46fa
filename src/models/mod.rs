//! Ready-made networks built from the [`layers`](crate::layers).

/// `impl Layer for $model` by its `net: Sequential` field, with `$input` (an expression of
/// `self`) as the input shape: every model here is a named network over one `Sequential`.
macro_rules! layer_over_network {
    ($model:ty, $name:literal, |$s:ident| $input:expr) => {
        impl crate::layers::Layer for $model {
            fn type_name(&self) -> &'static str {
                $name
            }

            fn lower<'m>(
                &'m self,
                b: &mut crate::graph::Lowering<'m>,
                x: crate::graph::ValueId,
            ) -> crate::error::Result<crate::graph::ValueId> {
                self.net.lower(b, x)
            }

            fn input_shape(&self) -> Option<Vec<usize>> {
                let $s = self;
                Some($input.to_vec())
            }

            fn visit_params(
                &self,
                path: &mut crate::layers::LayerPath,
                f: &mut dyn FnMut(&crate::layers::LayerPath, crate::layers::ParamKind, ndarray::ArrayViewD<'_, f32>),
            ) {
                self.net.visit_params(path, f)
            }

            fn visit_params_mut(
                &mut self,
                path: &mut crate::layers::LayerPath,
                visitor: &mut dyn crate::layers::ParamVisitor,
            ) -> crate::error::Result<()> {
                self.net.visit_params_mut(path, visitor)
            }

            fn summarize(
                &self,
                path: &mut crate::layers::LayerPath,
                input: &[usize],
                rows: &mut Vec<crate::layers::SummaryRow>,
            ) -> crate::error::Result<Vec<usize>> {
                self.net.summarize(path, input, rows)
            }

            fn param_count(&self) -> crate::layers::ParamCount {
                self.net.param_count()
            }
        }
    };
}

pub mod mobilenet;
pub mod resnet;
pub mod resnet_v2;
pub mod zoo;

pub use mobilenet::{MobileNetStyle, MobileNetV2, MobileNetV2Config};
pub use resnet::{
    BasicBlock, BlockConfig, BlockKind, BlockNames, Bottleneck, Depth, Head, NameStyle, PadMode, ResNet, ResNetConfig, Stem,
    StridePlacement,
};
pub use resnet_v2::{ResNetV2, ResNetV2Config};
