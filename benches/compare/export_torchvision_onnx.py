#!/usr/bin/env python3
"""A torchvision ImageNet network (seeded random weights) as an ONNX graph and a .safetensors
state_dict holding the *same* weights, so convnet and onnxruntime run the same network.

Usage: python export_torchvision_onnx.py --model resnext50_32x4d|mobilenet_v2|... --out DIR [--seed 0]
Writes DIR/NAME.onnx (input "input": NHWC float32 (N, 224, 224, 3), transposed to NCHW inside
       the graph as convnet's NHWC batch is; output "probs": the (N, 1000) logits),
       DIR/NAME.safetensors (the state_dict, torchvision's names: `bench_resnet50 --model NAME
       --weights DIR/NAME.safetensors`),
       DIR/NAME-check/check_input.npy, check_probs.npy (onnxruntime's logits for a batch of 2).
Needs: numpy, torch, torchvision, onnx, onnxruntime, safetensors (pip).
"""
import argparse
import os

import numpy as np
import onnxruntime as ort
import torch
import torchvision
from safetensors.torch import save_file


class Nhwc(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.permute(0, 3, 1, 2))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    torch.manual_seed(a.seed)
    net = getattr(torchvision.models, a.model)(weights=None).eval()
    # BatchNorm statistics and affine parameters away from the identity, as trained ones are.
    gen = torch.Generator().manual_seed(a.seed + 1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
            m.weight.data.copy_(0.5 + torch.rand(n, generator=gen))
            m.bias.data.copy_(0.1 * torch.randn(n, generator=gen))
    state = {k: v.contiguous() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file(state, os.path.join(a.out, f"{a.model}.safetensors"))
    path = os.path.join(a.out, f"{a.model}.onnx")
    x = torch.from_numpy(np.random.default_rng(a.seed).normal(0, 1, (2, 224, 224, 3)).astype(np.float32))
    with torch.no_grad():
        ref = net(x.permute(0, 3, 1, 2)).numpy()
    # (An exporter restores the wrapper's training flag afterwards, recursively: keep it eval.)
    torch.onnx.export(
        Nhwc(net).eval(), (x,), path, input_names=["input"], output_names=["probs"],
        dynamic_axes={"input": {0: "n"}, "probs": {0: "n"}}, opset_version=17, dynamo=False,
    )
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (logits,) = sess.run(None, {"input": x.numpy()})
    assert np.abs(logits - ref).max() < 1e-3 * max(1.0, np.abs(ref).max()), np.abs(logits - ref).max()
    check = os.path.join(a.out, f"{a.model}-check")
    os.makedirs(check, exist_ok=True)
    np.save(os.path.join(check, "check_input.npy"), x.numpy())
    np.save(os.path.join(check, "check_probs.npy"), logits.astype(np.float32))
    print(f"wrote {path}: onnxruntime vs PyTorch max |diff| {np.abs(logits - ref).max():.2e}")


if __name__ == "__main__":
    main()
