//! Training against PyTorch, step for step (`tests/fixtures/torch_training`, made by
//! `shared/tools/torch_training_reference.py`): a torchvision-style ResNet18 at 1/8 width with a
//! 10-class head, one training-mode forward and backward of a batch of 8.

mod common;

use convnet::layers::{Layer, LayerPath, ParamKind};
use convnet::models::{Depth, ResNet, ResNetConfig};
use convnet::train::{compute_gradients, load_checkpoint, save_checkpoint, Optimizer, Rule, TrainingMode};
use convnet::weights::{Convention, LoadOptions, WeightFile};
use ndarray::{s, ArrayD, IxDyn};
use ndarray_npy::ReadNpyExt;

fn model() -> ResNet {
    let cfg = ResNetConfig::torchvision(Depth::R18)
        .with_width_divisor(8)
        .with_classes(10)
        .with_input_shape([64, 64, 3]);
    let mut m = ResNet::new(cfg).unwrap();
    WeightFile::open(common::fixture("torch_training/initial.safetensors"))
        .unwrap()
        .load_into(&mut m, &LoadOptions::strict())
        .unwrap();
    m
}

fn labels() -> Vec<usize> {
    let f = std::fs::File::open(common::fixture("torch_training/labels.npy")).unwrap();
    ndarray::Array1::<i64>::read_npy(f).unwrap().iter().map(|&l| l as usize).collect()
}

fn batch(i: usize) -> ArrayD<f32> {
    common::npy("torch_training/x_nhwc.npy")
        .slice(s![8 * i..8 * (i + 1), .., .., ..])
        .to_owned()
        .into_dyn()
}

/// A stored tensor in the model's layout (PyTorch kernels `(out, in, kh, kw)` to HWIO, `Linear`
/// weights to `(in, out)`).
fn stored(file: &WeightFile, key: &str, kind: ParamKind) -> ArrayD<f32> {
    let t = file.get(key).unwrap_or_else(|| panic!("{key} missing"));
    let a = ArrayD::from_shape_vec(IxDyn(&t.shape), t.data.clone()).unwrap();
    match (kind, a.ndim()) {
        (ParamKind::Kernel, 4) => a.permuted_axes(IxDyn(&[2, 3, 1, 0])).as_standard_layout().into_owned(),
        (ParamKind::Kernel, 2) => a.reversed_axes().as_standard_layout().into_owned(),
        _ => a,
    }
}

#[test]
fn gradients_and_running_statistics_match_pytorch() {
    let mut m = model();
    let want = WeightFile::open(common::fixture("torch_training/grads.safetensors")).unwrap();
    let step = compute_gradients(&m, &batch(0), &labels()[..8], 0.0, &TrainingMode::default()).unwrap();
    let loss = want.get("loss").unwrap().data[0];
    println!("loss {} vs {loss}", step.loss);
    assert!((step.loss - loss).abs() <= 1e-5, "loss {} vs {loss}", step.loss);
    let logits = stored(&want, "logits", ParamKind::Bias);
    assert!(common::max_abs_diff(&step.output, &logits) <= 5e-5);
    // Every parameter's gradient (PyTorch's own float32-vs-float64 spread: 8.8e-6).
    let mut count = 0;
    let mut worst = 0.0f32;
    m.visit_params(&mut LayerPath::default(), &mut |path, kind, _| {
        if !kind.is_trainable() {
            return;
        }
        let key = format!("grad.{}", Convention::Torch.key(path, kind));
        let got = step
            .gradients
            .params
            .get(&(path.clone(), kind))
            .unwrap_or_else(|| panic!("no gradient for {key}"));
        let err = common::max_abs_diff(got, &stored(&want, &key, kind));
        worst = worst.max(err);
        assert!(err <= 5e-5, "{key}: {err}");
        count += 1;
    });
    assert_eq!(count, step.gradients.params.len());
    assert_eq!(count, 62, "ResNet18's 20 convolutions, 20 BatchNorms (2 each) and fc (2)");
    let input = stored(&want, "input_grad", ParamKind::Bias);
    let input_err = common::max_abs_diff(&step.gradients.input, &input);
    println!("{count} parameter gradients within {worst:e}, input gradient {input_err:e}");
    assert!(input_err <= 5e-5, "input gradient {input_err}");

    // The running statistics after that forward (momentum 0.1, unbiased variance).
    step.apply_running_stats(&mut m).unwrap();
    let after = WeightFile::open(common::fixture("torch_training/after_forward.safetensors")).unwrap();
    let mut stats = 0;
    let mut worst = 0.0f32;
    m.visit_params(&mut LayerPath::default(), &mut |path, kind, v| {
        if kind.is_trainable() {
            return;
        }
        let key = Convention::Torch.key(path, kind);
        let err = common::max_abs_diff(&v.to_owned(), &stored(&after, &key, kind));
        worst = worst.max(err);
        assert!(err <= 1e-6, "{key}: {err}");
        stats += 1;
    });
    println!("{stats} running statistics within {worst:e}");
    assert_eq!(stats, 40);
}

#[test]
fn label_smoothing_matches_pytorch() {
    let m = model();
    let want = WeightFile::open(common::fixture("torch_training/smooth.safetensors")).unwrap();
    let step = compute_gradients(&m, &batch(0), &labels()[..8], 0.1, &TrainingMode::default()).unwrap();
    let loss = want.get("loss").unwrap().data[0];
    assert!((step.loss - loss).abs() <= 1e-6, "smoothed loss {} vs {loss}", step.loss);
    for (key, kind) in [("grad.fc.weight", ParamKind::Kernel), ("grad.fc.bias", ParamKind::Bias)] {
        let got = &step.gradients.params[&(LayerPath::new(["fc"]), kind)];
        let err = common::max_abs_diff(got, &stored(&want, key, kind));
        assert!(err <= 5e-5, "{key}: {err}");
    }
}

/// Typed errors, not panics: labels out of range or of the wrong count, non-finite input.
#[test]
fn bad_training_input_is_a_typed_error() {
    let m = model();
    let x = batch(0);
    let mode = TrainingMode::default();
    assert!(matches!(
        compute_gradients(&m, &x, &[0; 7], 0.0, &mode),
        Err(convnet::Error::Shape { .. })
    ));
    let e = compute_gradients(&m, &x, &[0, 1, 2, 3, 4, 5, 6, 10], 0.0, &mode).unwrap_err();
    assert!(e.to_string().contains("label 10 of image 7"), "{e}");
    let mut bad = x.clone();
    bad[[3, 1, 1, 1]] = f32::INFINITY;
    assert!(matches!(
        compute_gradients(&m, &bad, &[0; 8], 0.0, &mode),
        Err(convnet::Error::NonFinite { .. })
    ));
    assert!(compute_gradients(
        &m,
        &x,
        &[0; 8],
        0.0,
        &TrainingMode {
            batch_norm_momentum: 1.5,
            ..mode
        }
    )
    .is_err());
}

/// A frozen backbone: no gradients for its parameters, its BatchNorms in inference mode (their
/// statistics untouched), gradients still reaching the input through it.
#[test]
fn frozen_layers_get_no_gradients_and_keep_their_statistics() {
    let m = model();
    let mode = TrainingMode {
        frozen: vec!["conv1".into(), "bn1".into(), "layer1".into(), "layer2.0".into()],
        ..TrainingMode::default()
    };
    let step = compute_gradients(&m, &batch(1), &labels()[8..16], 0.0, &mode).unwrap();
    assert!(step.gradients.params.keys().all(|(p, _)| {
        let p = p.to_string();
        !(p == "conv1" || p == "bn1" || p.starts_with("layer1/") || p.starts_with("layer2/0/"))
    }));
    assert!(step
        .gradients
        .params
        .contains_key(&(LayerPath::new(["layer2", "1", "conv1"]), ParamKind::Kernel)));
    assert!(step
        .running_stats
        .iter()
        .all(|s| !s.path.to_string().starts_with("layer1/") && s.path.to_string() != "bn1"));
    assert!(step.gradients.input.iter().any(|&v| v != 0.0));
    // Without the input's gradient, the frozen part's backward is skipped: the same parameter
    // gradients, bit for bit, a zero input gradient.
    let lean = compute_gradients(
        &m,
        &batch(1),
        &labels()[8..16],
        0.0,
        &TrainingMode {
            input_gradient: false,
            ..mode
        },
    )
    .unwrap();
    assert_eq!(lean.gradients.params.len(), step.gradients.params.len());
    for (k, g) in &step.gradients.params {
        let h = &lean.gradients.params[k];
        assert!(g.iter().zip(h.iter()).all(|(a, b)| a.to_bits() == b.to_bits()), "{k:?}");
    }
    assert!(lean.gradients.input.iter().all(|&v| v == 0.0));
    assert!(
        lean.gradients.node_times.iter().filter(|t| t.is_zero()).count() > step.gradients.node_times.iter().filter(|t| t.is_zero()).count()
    );
}

fn expected() -> serde_json::Value {
    serde_json::from_reader(std::fs::File::open(common::fixture("torch_training/expected.json")).unwrap()).unwrap()
}

fn rule_of(cfg: &serde_json::Value) -> (Rule, f32) {
    let f = |k: &str, d: f64| cfg.get(k).and_then(|v| v.as_f64()).unwrap_or(d) as f32;
    let lr = cfg.get("lr").or_else(|| cfg.get("learning_rate")).and_then(|v| v.as_f64()).unwrap() as f32;
    let nesterov = cfg.get("nesterov").and_then(|v| v.as_bool()).unwrap_or(false);
    let rule = match cfg["class"].as_str().unwrap() {
        "SGD" => Rule::sgd(f("momentum", 0.0), f("weight_decay", 0.0), nesterov),
        "Adam" => Rule::adam(f("weight_decay", 0.0)),
        "AdamW" => Rule::adamw(f("weight_decay", 0.0)),
        other => panic!("{other}"),
    };
    (rule, lr)
}

/// Each optimizer alone, three steps on given gradients (magnitudes 1e-6 to 1), against
/// PyTorch's and Keras' own results.
#[test]
fn optimizers_match_pytorch_and_keras_step_for_step() {
    let torch = WeightFile::open(common::fixture("torch_training/optim.safetensors")).unwrap();
    let get = |f: &WeightFile, k: &str| f.get(k).unwrap_or_else(|| panic!("{k}")).data.clone();
    let run = |rule: Rule, lr: f32, p0: Vec<f32>, gs: [Vec<f32>; 3]| {
        let mut opt = Optimizer::new(rule);
        let mut p = p0;
        for g in gs {
            opt.advance();
            opt.update("p", &mut p, &g, lr).unwrap();
        }
        p
    };
    let mut checked = 0;
    for (name, cfg) in expected()["optim"].as_object().unwrap() {
        let (rule, lr) = rule_of(cfg);
        let got = run(
            rule,
            lr,
            get(&torch, "p0"),
            [get(&torch, "g1"), get(&torch, "g2"), get(&torch, "g3")],
        );
        let want = get(&torch, &format!("{name}.p3"));
        let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        println!("{name}: {err:e}");
        assert!(err <= 1e-6, "{name}: {err}");
        checked += 1;
    }
    assert_eq!(checked, 6);
    let keras = WeightFile::open(common::fixture("keras_training/keras_training.safetensors")).unwrap();
    let kcfg: serde_json::Value =
        serde_json::from_reader(std::fs::File::open(common::fixture("keras_training/keras_training.json")).unwrap()).unwrap();
    for (name, cfg) in kcfg["optim"].as_object().unwrap() {
        let lr = cfg["learning_rate"].as_f64().unwrap() as f32;
        let rule = match cfg["class"].as_str().unwrap() {
            "SGD" => Rule::KerasSgd {
                momentum: cfg["momentum"].as_f64().unwrap() as f32,
                nesterov: cfg.get("nesterov").and_then(|v| v.as_bool()).unwrap_or(false),
            },
            _ => Rule::keras_adam(),
        };
        let got = run(
            rule,
            lr,
            get(&keras, "opt.p0"),
            [get(&keras, "opt.g1"), get(&keras, "opt.g2"), get(&keras, "opt.g3")],
        );
        let want = get(&keras, &format!("{name}.p3"));
        let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        println!("{name}: {err:e}");
        assert!(err <= 1e-6, "{name}: {err}");
    }
}

/// Three training steps on three batches, as PyTorch took them (BatchNorm statistics updated by
/// each training forward, then the optimizer step).
fn train(lr: f32, steps: std::ops::Range<usize>, model: &mut ResNet, opt: &mut Optimizer) -> Vec<f32> {
    let labels = labels();
    steps
        .map(|i| {
            let step = compute_gradients(model, &batch(i), &labels[8 * i..8 * (i + 1)], 0.0, &TrainingMode::default()).unwrap();
            step.apply_running_stats(model).unwrap();
            opt.step(model, &step.gradients, lr).unwrap();
            step.loss
        })
        .collect()
}

fn params(model: &dyn Layer) -> Vec<(String, ArrayD<f32>)> {
    let mut all = Vec::new();
    model.visit_params(&mut LayerPath::default(), &mut |p, k, v| {
        all.push((Convention::Torch.key(p, k), v.to_owned()))
    });
    all
}

#[test]
fn three_sgd_steps_and_three_adamw_steps_match_pytorch() {
    let e = expected();
    let (rule, lr) = rule_of(
        &serde_json::json!({"class": "SGD", "lr": e["sgd"]["lr"], "momentum": e["sgd"]["momentum"],
        "weight_decay": e["sgd"]["weight_decay"], "nesterov": e["sgd"]["nesterov"]}),
    );
    let mut m = model();
    let mut opt = Optimizer::new(rule);
    let losses = train(lr, 0..3, &mut m, &mut opt);
    for (got, want) in losses.iter().zip(e["losses"]["sgd"].as_array().unwrap()) {
        assert!((got - want.as_f64().unwrap() as f32).abs() <= 1e-4, "sgd loss {got} vs {want}");
    }
    let want = WeightFile::open(common::fixture("torch_training/sgd.safetensors")).unwrap();
    let mut worst = 0.0f32;
    for (key, v) in params(&m) {
        let kind = if key.ends_with(".weight") && v.ndim() > 1 {
            ParamKind::Kernel
        } else {
            ParamKind::Bias
        };
        let err = common::max_abs_diff(&v, &stored(&want, &key, kind));
        worst = worst.max(err);
        assert!(err <= 5e-5, "{key} after 3 SGD steps: {err}");
    }
    println!("SGD: every parameter and buffer within {worst:e}");
    // Eval-mode logits of all 24 images afterwards.
    let logits = m.forward(&common::npy("torch_training/x_nhwc.npy")).unwrap();
    let err = common::max_abs_diff(&logits, &common::npy("torch_training/eval_logits.npy"));
    println!("eval logits {err:e}");
    assert!(err <= 5e-3, "eval logits {err}");

    let (rule, lr) = (
        Rule::adamw(e["adamw"]["weight_decay"].as_f64().unwrap() as f32),
        e["adamw"]["lr"].as_f64().unwrap() as f32,
    );
    let mut m = model();
    let mut opt = Optimizer::new(rule);
    let losses = train(lr, 0..3, &mut m, &mut opt);
    for (got, want) in losses.iter().zip(e["losses"]["adamw"].as_array().unwrap()) {
        let want = want.as_f64().unwrap() as f32;
        assert!((got - want).abs() <= 1e-4 * want.abs(), "adamw loss {got} vs {want}");
    }
}

/// A checkpoint after one step, resumed in a fresh model and optimizer, gives bit for bit the
/// parameters of an uninterrupted run; a checkpoint of another architecture is refused.
#[test]
fn a_resumed_checkpoint_continues_bit_identically() {
    let rule = Rule::adamw(0.01);
    let (mut straight, mut opt) = (model(), Optimizer::new(rule));
    train(1e-3, 0..3, &mut straight, &mut opt);

    let dir = std::env::temp_dir().join(format!("convnet-ckpt-{}", std::process::id()));
    let (mut first, mut opt1) = (model(), Optimizer::new(rule));
    train(1e-3, 0..1, &mut first, &mut opt1);
    save_checkpoint(&dir, &first, &opt1).unwrap();
    let (mut resumed, mut opt2) = (model(), Optimizer::new(rule));
    // (another starting point, overwritten by the checkpoint)
    train(1e-3, 2..3, &mut resumed, &mut opt2);
    load_checkpoint(&dir, &mut resumed, &mut opt2).unwrap();
    assert_eq!(opt2.steps(), 1);
    assert_eq!(opt2, opt1);
    train(1e-3, 1..3, &mut resumed, &mut opt2);
    assert_eq!(params(&resumed), params(&straight));
    assert_eq!(opt2, opt);

    // Another architecture: the weights do not load, nothing changes.
    let mut other = ResNet::new(ResNetConfig::torchvision(Depth::R18).with_width_divisor(16).with_classes(10)).unwrap();
    let before = params(&other);
    let mut o = Optimizer::new(rule);
    assert!(load_checkpoint(&dir, &mut other, &mut o).is_err());
    assert_eq!(params(&other), before);
    // The same architecture with another optimizer rule.
    let mut sgd = Optimizer::new(Rule::sgd(0.9, 0.0, false));
    assert!(matches!(
        load_checkpoint(&dir, &mut model(), &mut sgd),
        Err(convnet::Error::Config { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An optimizer given a gradient for a parameter the model does not have.
#[test]
fn an_unknown_parameter_path_is_refused() {
    let mut m = model();
    let mut step = compute_gradients(&m, &batch(0), &labels()[..8], 0.0, &TrainingMode::default()).unwrap();
    let g = step.gradients.params[&(LayerPath::new(["fc"]), ParamKind::Bias)].clone();
    step.gradients.params.insert((LayerPath::new(["head"]), ParamKind::Bias), g);
    let before = params(&m);
    let e = Optimizer::new(Rule::sgd(0.0, 0.0, false))
        .step(&mut m, &step.gradients, 0.1)
        .unwrap_err();
    assert!(e.to_string().contains("head:bias"), "{e}");
    assert_eq!(params(&m), before);
    // Gradient clipping by global norm.
    let norm = convnet::train::clip_global_norm(&mut step.gradients, 0.5);
    let after: f32 = step
        .gradients
        .params
        .values()
        .flat_map(|g| g.iter())
        .map(|v| v * v)
        .sum::<f32>()
        .sqrt();
    assert!(norm > 0.5 && (after - 0.5).abs() < 1e-4, "{norm} -> {after}");
}

/// Keras' BatchNormalization(momentum=0.99, epsilon=1e-3) called with training=True: output,
/// gradients of sum(y * w), moving statistics after.
#[test]
fn keras_batch_norm_training_matches_keras() {
    use convnet::graph::{training, Graph};
    use convnet::layers::{BatchNorm, Sequential};
    let f = WeightFile::open(common::fixture("keras_training/keras_training.safetensors")).unwrap();
    let t = |k: &str| stored(&f, k, ParamKind::Bias);
    let v = |k: &str| t(k).into_dimensionality::<ndarray::Ix1>().unwrap();
    let bn = BatchNorm::with_weights(1e-3, v("bn.gamma"), v("bn.beta"), v("bn.moving_mean"), v("bn.moving_variance")).unwrap();
    let mut net = Sequential::new().with("bn", bn).unwrap();
    let x = t("bn.x");
    let graph = Graph::lower(&net, &x.shape()[1..]).unwrap();
    let pass = training::forward(&graph, &x, &TrainingMode::keras_momentum(0.99)).unwrap();
    let errs = [common::max_abs_diff(pass.output(), &t("bn.y")), {
        let g = pass.backward(&t("bn.w")).unwrap();
        let e = common::max_abs_diff(&g.input, &t("bn.grad_x"));
        let eg = common::max_abs_diff(&g.params[&(LayerPath::new(["bn"]), ParamKind::Gamma)], &t("bn.grad_gamma"));
        let eb = common::max_abs_diff(&g.params[&(LayerPath::new(["bn"]), ParamKind::Beta)], &t("bn.grad_beta"));
        e.max(eg).max(eb)
    }];
    let stats = pass.running_stats_update();
    drop(pass);
    let step = convnet::train::Step {
        loss: 0.0,
        output: t("bn.y"),
        gradients: convnet::train::Gradients {
            params: Default::default(),
            input: x.clone(),
            node_times: Vec::new(),
        },
        running_stats: stats,
        times: Vec::new(),
    };
    step.apply_running_stats(&mut net).unwrap();
    let mut moving = 0.0f32;
    net.visit_params(&mut LayerPath::default(), &mut |_, k, val| {
        let key = match k {
            ParamKind::MovingMean => "bn.moving_mean_after",
            ParamKind::MovingVariance => "bn.moving_variance_after",
            _ => return,
        };
        moving = moving.max(common::max_abs_diff(&val.to_owned(), &t(key)));
    });
    println!(
        "Keras BatchNorm: output {:e}, gradients {:e}, moving statistics {moving:e}",
        errs[0], errs[1]
    );
    assert!(errs[0] <= 1e-5 && errs[1] <= 1e-5 && moving <= 1e-5, "{errs:?} {moving}");
}

/// The seed's Keras ResNet50 (1/8 width, from its `.h5`) fine-tuned as users fine-tune it: the
/// backbone frozen, a new 5-class head (softmax, as `fc1000`), a few SGD steps on the fixture
/// images. The loss falls, the frozen weights and statistics stay bit-identical, and the
/// checkpoint reloads into the same architecture with identical outputs.
#[test]
fn the_seed_resnet50_fine_tunes_a_new_head_with_a_frozen_backbone() {
    use convnet::init::{initialize, InitScheme};
    let cfg = ResNetConfig::keras_resnet50().with_width_divisor(8).with_classes(5);
    let mut m = ResNet::new(cfg.clone()).unwrap();
    initialize(&mut m, &InitScheme::keras(), 3).unwrap();
    let report = WeightFile::open(common::fixture("keras_resnet50_w8/resnet50.h5"))
        .unwrap()
        .load_into(&mut m, &LoadOptions::lenient())
        .unwrap();
    assert_eq!(report.mismatched.len(), 2, "only fc1000 (1000 -> 5 classes) differs: {report}");
    let images = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"];
    let x = ndarray::concatenate(
        ndarray::Axis(0),
        &images
            .iter()
            .map(|i| common::npy(&format!("keras_resnet50_w8/input_{i}.npy")))
            .collect::<Vec<_>>()
            .iter()
            .map(|a| a.view())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let labels = [0, 1, 2, 3];
    let frozen: Vec<String> = m.network().iter().map(|(n, _)| n.to_string()).filter(|n| n != "fc1000").collect();
    let mode = TrainingMode {
        frozen,
        ..TrainingMode::keras_momentum(0.99)
    };
    let before: Vec<_> = params(&m).into_iter().filter(|(k, _)| !k.starts_with("fc1000")).collect();
    let mut opt = Optimizer::new(Rule::KerasSgd {
        momentum: 0.9,
        nesterov: false,
    });
    let mut losses = Vec::new();
    for _ in 0..6 {
        let step = compute_gradients(&m, &x, &labels, 0.0, &mode).unwrap();
        assert!(step.running_stats.is_empty(), "frozen BatchNorms run in inference mode");
        assert_eq!(step.gradients.params.len(), 2, "only the head learns");
        opt.step(&mut m, &step.gradients, 0.002).unwrap();
        losses.push(step.loss);
    }
    println!("fine-tuning losses {losses:?}");
    assert!(losses.windows(2).all(|w| w[1] < w[0]), "{losses:?}");
    let after: Vec<_> = params(&m).into_iter().filter(|(k, _)| !k.starts_with("fc1000")).collect();
    assert_eq!(before, after, "the frozen backbone is bit-identical");
    let dir = std::env::temp_dir().join(format!("convnet-finetune-{}", std::process::id()));
    save_checkpoint(&dir, &m, &opt).unwrap();
    let mut copy = ResNet::new(cfg).unwrap();
    let mut opt2 = Optimizer::new(Rule::KerasSgd {
        momentum: 0.9,
        nesterov: false,
    });
    load_checkpoint(&dir, &mut copy, &mut opt2).unwrap();
    assert_eq!(copy.forward(&x).unwrap(), m.forward(&x).unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}
