"""PyTorch's CPU training step on the networks `examples/bench_train.rs` times: random data,
softmax cross-entropy, SGD with momentum 0.9, the same batch and thread count. Prints one JSON
line like bench_train's: {"engine", "model", "batch", "threads", "memory_format",
"ms_per_step", "images_per_s", "peak_rss_mib"} (median over the timed steps).

    python3 benches/compare/torch_train.py --model resnet20 --batch 128 --threads 2
    pip install torch torchvision
"""

import argparse
import json
import resource
import statistics
import time

import torch
import torch.nn as nn


class BasicBlock(nn.Module):
    """torchvision's BasicBlock, with a 1x1-convolution + BatchNorm projection where the
    shape changes (convnet's `small_image_resnet`)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + identity)


class SmallImageResNet(nn.Module):
    """ResNet-(6n+2) for small images: 3x3 stride-1 stem of 16, three stages of n BasicBlocks
    at 16/32/64, global average pool, a linear head."""

    def __init__(self, depth, channels, classes):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        layers, cin = [], 16
        for stage, width in enumerate([16, 32, 64]):
            for b in range(n):
                layers.append(BasicBlock(cin, width, 2 if stage > 0 and b == 0 else 1))
                cin = width
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def build(name):
    if name == "resnet20":
        return SmallImageResNet(20, 1, 10), (1, 28, 28), 10
    if name == "resnet50":
        import torchvision

        return torchvision.models.resnet50(), (3, 224, 224), 1000
    raise SystemExit(f"unknown model {name}: resnet20 or resnet50")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--memory-format", choices=["channels_last", "nchw"], default="channels_last")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model, shape, classes = build(a.model)
    fmt = torch.channels_last if a.memory_format == "channels_last" else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    x = torch.randn(a.batch, *shape).to(memory_format=fmt)
    y = torch.randint(0, classes, (a.batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    times = []
    for i in range(a.warmup + a.steps):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        if i >= a.warmup:
            times.append(time.perf_counter() - t)
    ms = statistics.median(times) * 1e3
    print(
        json.dumps(
            {
                "engine": f"pytorch {torch.__version__.split('+')[0]}",
                "model": a.model,
                "batch": a.batch,
                "threads": a.threads,
                "memory_format": a.memory_format,
                "ms_per_step": round(ms, 2),
                "images_per_s": round(a.batch / (ms / 1e3), 1),
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
