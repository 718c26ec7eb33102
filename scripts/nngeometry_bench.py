#!/usr/bin/env python3
"""NNGeometry's side of `nngeo bench`, on the same sizes: the MLP cases
(784-512-512-10 on n = 1000, 64-64-64-10 on n = 500 for BlockDiag/Dense,
the NTK on n = 100/1000/2000) and the ResNet18 cases (CIFAR stem: 3x3 conv,
no max pooling, 32x32 inputs, 10 classes), float32, random N(0,1) inputs
and random labels, the true classification Fisher (`classif_logits`).

    python scripts/nngeometry_bench.py [--width 64] [--repeats 3] [--device cpu|cuda] [--case NAME ...]

Needs torch and nngeometry (`pip install --no-deps nngeometry` into the
libtorch venv). Prints one line per case: name, median seconds, peak RSS.
The width (channels of the first stage; torchvision: 64) matches
`NNGEO_BENCH_WIDTH` for the nngeo side. An `exec-*` case of `nngeo bench`
is compared with the case it builds (`exec-kfac` with `kfac`, ...):
NNGeometry has no whole-run path of its own; `exec-resnet18-kfac-1000`
is `resnet18-kfac` on 1000 images. On `--device cuda` the model and the
data live on the GPU and every timing ends with a synchronisation.
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


DEVICE = "cpu"


def loader(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g).to(DEVICE)
    y = torch.randint(0, 10, (n,), generator=g).to(DEVICE)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=n)


def conv_linear(model):
    from nngeometry.layercollection import LayerCollection

    lc = LayerCollection()
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            lc.add_layer_from_model(model, mod)
    return lc


def mlp(widths):
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers).to(DEVICE)


def vectors(n, dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g).to(DEVICE)
    y = torch.randint(0, 10, (n,), generator=g).to(DEVICE)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=n)


BIG = [784, 512, 512, 10]
SMALL = [64, 64, 64, 10]
MLP_CASES = ("kfac", "ekfac", "ekfac-refit", "diag", "blockdiag", "dense", "ntk-100", "ntk-1000", "ntk-2000")


def mlp_case(name):
    from nngeometry.metrics import FIM
    from nngeometry.object import PMatBlockDiag, PMatDense, PMatDiag, PMatEKFAC, PMatKFAC

    if name.startswith("ntk-"):
        from nngeometry import GramMatrix
        from nngeometry.object import FMatDense

        model = mlp(BIG)
        dl = vectors(int(name.split("-")[1]), BIG[0])
        return lambda: GramMatrix(model, dl, representation=FMatDense)
    small = name in ("blockdiag", "dense")
    model = mlp(SMALL if small else BIG)
    dl = vectors(500 if small else 1000, model[0].in_features)
    rep = {"kfac": PMatKFAC, "ekfac": PMatEKFAC, "ekfac-refit": PMatEKFAC, "diag": PMatDiag,
           "blockdiag": PMatBlockDiag, "dense": PMatDense}[name]
    if name == "ekfac-refit":

        def ekfac():
            f = FIM(model, dl, PMatEKFAC, variant="classif_logits")
            f.update_diag(dl)
            return f

        return ekfac
    return lambda: FIM(model, dl, rep, variant="classif_logits")


def case(name, model):
    from nngeometry.metrics import FIM
    from nngeometry.object import PMatDiag, PMatEKFAC, PMatKFAC

    n = 256
    if name.startswith("exec-"):
        name = {"exec-kfac-5000": "kfac-5000"}.get(name, name[len("exec-"):])
        for suffix in ("-1000",):
            if name.startswith("resnet18-") and name.endswith(suffix):
                name, n = name[: -len(suffix)], int(suffix[1:])
    if name in MLP_CASES:
        return mlp_case(name)
    if name == "kfac-5000":
        model = mlp(BIG)
        dl = vectors(5000, BIG[0])
        return lambda: FIM(model, dl, PMatKFAC, variant="classif_logits")

    if name in ("resnet18-kfac", "resnet18-ekfac-refit", "resnet18-diag"):
        dl = loader(n)
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
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--once", action="store_true",
                    help="build each case once, untimed (the harness times the whole process: "
                         "NNGeometry's side of the user's path that `nngeo exec` is)")
    a = ap.parse_args()
    global DEVICE
    DEVICE = a.device
    sync = torch.cuda.synchronize if DEVICE.startswith("cuda") else (lambda: None)
    names = a.case or list(MLP_CASES) + [
        "resnet18-kfac", "resnet18-ekfac-refit", "resnet18-diag", "resnet18-ntk-100", "resnet18-sgd-128"]
    torch.manual_seed(0)
    for name in names:
        run = case(name, ResNet18(a.width).to(DEVICE) if "resnet18" in name else None)
        if a.once:
            run()
            sync()
            continue
        run()  # warm-up
        sync()
        times = []
        for _ in range(a.repeats):
            t = time.perf_counter()
            run()
            sync()
            times.append(time.perf_counter() - t)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{name}\t{statistics.median(times):.4f} s\tpeak RSS {rss:.0f} MB (whole process)", flush=True)


if __name__ == "__main__":
    main()
