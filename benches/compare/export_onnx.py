#!/usr/bin/env python3
"""The seed's ResNet50 (classic Keras layout) as an ONNX graph and a Keras HDF5 weights file
holding the *same* seeded weights, so convnet and onnxruntime run the same network.

Usage: python export_onnx.py --out DIR [--seed 0] [--width-divisor 1]
Writes DIR/resnet50.onnx (input "input": NHWC float32 (N, 224, 224, 3), output "probs" (N, 1000)),
       DIR/resnet50.h5   (Keras 2 legacy layout: load with `bench_resnet50 --weights DIR/resnet50.h5`),
       DIR/check_input.npy, DIR/check_probs.npy (onnxruntime's output for a fixed batch of 2).
Needs: numpy, onnx, onnxruntime, h5py (pip).
"""
import argparse
import os

import h5py
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

STAGES = [(2, 3, 64, 1), (3, 4, 128, 2), (4, 6, 256, 2), (5, 3, 512, 2)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--width-divisor", type=int, default=1)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    d = a.width_divisor

    nodes, inits, keras = [], [], []  # keras: (layer, [(slot, array)])

    def const(name, arr):
        inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
        return name

    def conv(x, name, cin, cout, k, stride, pad):
        kernel = rng.normal(0, np.sqrt(2.0 / (k * k * cin)), (k, k, cin, cout)).astype(np.float32)  # HWIO
        bias = rng.normal(0, 0.05, cout).astype(np.float32)
        keras.append((name, [("kernel", kernel), ("bias", bias)]))
        w = const(name + "_W", kernel.transpose(3, 2, 0, 1))  # OIHW
        b = const(name + "_b", bias)
        nodes.append(helper.make_node("Conv", [x, w, b], [name], kernel_shape=[k, k], strides=[stride, stride], pads=pad))
        return name

    def bn(x, name, c, relu):
        gamma = rng.uniform(0.5, 1.5, c).astype(np.float32)
        beta = rng.normal(0, 0.1, c).astype(np.float32)
        mean = rng.normal(0, 0.1, c).astype(np.float32)
        var = rng.uniform(0.5, 1.5, c).astype(np.float32)
        keras.append((name, [("gamma", gamma), ("beta", beta), ("moving_mean", mean), ("moving_variance", var)]))
        ins = [x] + [const(f"{name}_{s}", v) for s, v in (("g", gamma), ("b", beta), ("m", mean), ("v", var))]
        nodes.append(helper.make_node("BatchNormalization", ins, [name], epsilon=1e-3))
        if relu:
            nodes.append(helper.make_node("Relu", [name], [name + "_relu"]))
            return name + "_relu"
        return name

    def same3x3(size, stride):
        # Keras 'same' for 3x3: stride 1 pads 1/1; the seed's 3x3 convs are all stride 1.
        return [1, 1, 1, 1]

    nodes.append(helper.make_node("Transpose", ["input"], ["x_nchw"], perm=[0, 3, 1, 2]))
    x = conv("x_nchw", "conv1", 3, 64 // d, 7, 2, [3, 3, 3, 3])  # ZeroPadding2D(3) + valid conv
    x = bn(x, "bn_conv1", 64 // d, True)
    nodes.append(helper.make_node("MaxPool", [x], ["pool1"], kernel_shape=[3, 3], strides=[2, 2]))
    x, cin = "pool1", 64 // d
    for stage, blocks, width, stride in STAGES:
        f1, f3 = width // d, 4 * width // d
        for i in range(blocks):
            letter = "abcdef"[i]
            s = stride if i == 0 else 1
            base, bnb = f"res{stage}{letter}_branch", f"bn{stage}{letter}_branch"
            y = conv(x, base + "2a", cin, f1, 1, s, [0, 0, 0, 0])
            y = bn(y, bnb + "2a", f1, True)
            y = conv(y, base + "2b", f1, f1, 3, 1, same3x3(0, 1))
            y = bn(y, bnb + "2b", f1, True)
            y = conv(y, base + "2c", f1, f3, 1, 1, [0, 0, 0, 0])
            y = bn(y, bnb + "2c", f3, False)
            if i == 0:
                sc = conv(x, base + "1", cin, f3, 1, s, [0, 0, 0, 0])
                sc = bn(sc, bnb + "1", f3, False)
            else:
                sc = x
            nodes.append(helper.make_node("Add", [y, sc], [f"res{stage}{letter}_add"]))
            nodes.append(helper.make_node("Relu", [f"res{stage}{letter}_add"], [f"res{stage}{letter}"]))
            x, cin = f"res{stage}{letter}", f3
    nodes.append(helper.make_node("AveragePool", [x], ["avg_pool"], kernel_shape=[7, 7], strides=[7, 7]))
    nodes.append(helper.make_node("Flatten", ["avg_pool"], ["flatten"], axis=1))  # 1x1 spatial: same order as NHWC
    fc_w = rng.normal(0, 1 / np.sqrt(cin), (cin, 1000)).astype(np.float32)
    fc_b = rng.normal(0, 0.05, 1000).astype(np.float32)
    nodes.append(helper.make_node("Gemm", ["flatten", "fc_W", "fc_b"], ["logits"]))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))

    def build(w, b, outputs):
        tensors = inits + [numpy_helper.from_array(w, "fc_W"), numpy_helper.from_array(b, "fc_b")]
        graph = helper.make_graph(
            nodes, "resnet50",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 224, 224, 3])],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["N", 1000]) for o in outputs],
            tensors)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model

    import onnxruntime as ort

    def run(model, x, output):
        return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run([output], {"input": x})[0]

    # A check input, and the classifier scaled so that its logits have a standard deviation of 4
    # on it (as the reference fixtures do): the softmax stays unsaturated, so the check compares
    # real probabilities rather than two one-hot vectors.
    x = np.random.default_rng(1).normal(0, 50, (2, 224, 224, 3)).astype(np.float32)
    logits = run(build(fc_w, fc_b, ["probs", "logits"]), x, "logits")
    scale = 4.0 / max(float(logits.std()), 1e-6)
    fc_w, fc_b = (fc_w * scale).astype(np.float32), (fc_b * scale).astype(np.float32)
    keras.append(("fc1000", [("kernel", fc_w), ("bias", fc_b)]))
    model = build(fc_w, fc_b, ["probs"])
    onnx.save(model, os.path.join(a.out, "resnet50.onnx"))
    probs = run(model, x, "probs")
    np.save(os.path.join(a.out, "check_input.npy"), x)
    np.save(os.path.join(a.out, "check_probs.npy"), probs)

    # The same weights in the Keras 2 legacy HDF5 layout convnet loads by name.
    with h5py.File(os.path.join(a.out, "resnet50.h5"), "w") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n, _ in keras])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.21.0"
        for name, slots in keras:
            g = f.create_group(name)
            g.attrs["weight_names"] = np.array([f"{name}/{s}:0".encode() for s, _ in slots])
            for s, arr in slots:
                g.create_dataset(f"{name}/{s}:0", data=arr)
    print("wrote", a.out, "params", sum(int(np.prod(t.dims)) for t in model.graph.initializer), "check max probability", float(probs.max()))

if __name__ == "__main__":
    main()
