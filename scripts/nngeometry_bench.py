#!/usr/bin/env python3
"""NNGeometry's side of `nngeo bench`'s ResNet18 cases, on the same sizes:
ResNet18 with the CIFAR stem (3x3 conv, no max pooling), 32x32 inputs,
10 classes, float32, random N(0,1) inputs and random labels.

    python scripts/nngeometry_bench.py [--width 64] [--repeats 3] [--case NAME ...]

Needs torch and nngeometry (`pip install --no-deps nngeometry` into the
libtorch venv). Prints one line per case: name, median seconds, peak RSS.
The width (channels of the first stage; torchvision: 64) matches
`NNGEO_BENCH_WIDTH` for the nngeo side.
"""
import argparse
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        idt = x if self.downsample is None else self.downsample(x)
        return self.relu(out + idt)


class ResNet18(nn.Module):
    def __init__(self, width=64, classes=10):
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(3, w, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU()
        chans = [w, 2 * w, 4 * w, 8 * w]
        cin = w
        for i, c in enumerate(chans):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, c, stride), BasicBlock(c, c)))
            cin = c
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * w, classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def loader(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=n)


def conv_linear(model):
    from nngeometry.layercollection import LayerCollection

    lc = LayerCollection()
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            lc.add_layer_from_model(model, mod)
    return lc


def case(name, model):
    from nngeometry.metrics import FIM
    from nngeometry.object import PMatDiag, PMatEKFAC, PMatKFAC

    if name in ("resnet18-kfac", "resnet18-ekfac-refit", "resnet18-diag"):
        dl = loader(256)
        model.eval()
        if name == "resnet18-diag":
            return lambda: FIM(model, dl, PMatDiag, variant="classif_logits")
        lc = conv_linear(model)
        if name == "resnet18-kfac":
            return lambda: FIM(model, dl, PMatKFAC, variant="classif_logits", layer_collection=lc)

        def ekfac():
            f = FIM(model, dl, PMatEKFAC, variant="classif_logits", layer_collection=lc)
            f.update_diag(dl)
            return f

        return ekfac
    if name == "resnet18-ntk-100":
        from nngeometry import GramMatrix
        from nngeometry.object import FMatDense

        dl = loader(100)
        model.eval()
        return lambda: GramMatrix(model, dl, representation=FMatDense)
    if name == "resnet18-sgd-128":
        x, y = next(iter(loader(128)))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        model.train()

        def step():
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()

        return step
    raise SystemExit(f"no case {name}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--case", action="append")
    a = ap.parse_args()
    names = a.case or ["resnet18-kfac", "resnet18-ekfac-refit", "resnet18-diag", "resnet18-ntk-100", "resnet18-sgd-128"]
    torch.manual_seed(0)
    for name in names:
        model = ResNet18(a.width)
        run = case(name, model)
        run()  # warm-up
        times = []
        for _ in range(a.repeats):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{name}\t{statistics.median(times):.4f} s\tpeak RSS {rss:.0f} MB (whole process)", flush=True)


if __name__ == "__main__":
    main()
