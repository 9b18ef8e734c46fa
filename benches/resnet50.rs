//! The seed's full-width ResNet50 on the compiled inference path, batch 1 and 8, with 1 and 2
//! threads (random weights; speed does not depend on their values).
//! `cargo bench --bench resnet50`. For the side-by-side comparison with onnxruntime, see
//! `benches/compare/run.sh` and `docs/performance.md`.

use std::hint::black_box;

use convnet::inference::{CompiledModel, InferenceOptions};
use convnet::layers::{Layer, LayerPath, ParamKind, ParamVisitor};
use convnet::models::{ResNet, ResNetConfig};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::{ArrayD, ArrayViewMutD, IxDyn};

struct Fill(u64);

impl ParamVisitor for Fill {
    fn visit(&mut self, _: &LayerPath, kind: ParamKind, mut v: ArrayViewMutD<'_, f32>) -> convnet::Result<()> {
        let fan_in: usize = v.shape().iter().rev().skip(1).product::<usize>().max(1);
        v.mapv_inplace(|_| {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let r = (self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            match kind {
                ParamKind::Kernel => r * (12.0 / fan_in as f32).sqrt(),
                ParamKind::MovingVariance => 1.0 + r.abs(),
                ParamKind::Gamma => 1.0,
                _ => 0.1 * r,
            }
        });
        Ok(())
    }
}

fn resnet50(c: &mut Criterion) {
    let mut model = ResNet::new(ResNetConfig::keras_resnet50()).expect("the preset builds");
    model
        .visit_params_mut(&mut LayerPath::default(), &mut Fill(7))
        .expect("filling weights");
    let mut group = c.benchmark_group("resnet50-keras");
    group.sample_size(10);
    for batch in [1usize, 8] {
        for threads in [1usize, 2] {
            let mut fast = CompiledModel::new(
                &model,
                &[224, 224, 3],
                &InferenceOptions {
                    threads,
                    ..Default::default()
                },
            )
            .expect("compiles");
            let x = ArrayD::from_shape_fn(IxDyn(&[batch, 224, 224, 3]), |i| (i[1] % 13) as f32 - (i[2] % 7) as f32);
            let mut out = vec![0.0; batch * 1000];
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_function(BenchmarkId::new(format!("batch{batch}"), format!("{threads} threads")), |b| {
                b.iter(|| fast.run_into(black_box(x.view()), &mut out).expect("runs"))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, resnet50);
criterion_main!(benches);
