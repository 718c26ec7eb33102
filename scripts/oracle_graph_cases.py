#!/usr/bin/env python
"""Builds further NNGeometry (float64) oracle graph cases in the format of
tests/fixtures/oracle/digits_resnet.{json,safetensors} (the oracle's
README, "Conventions" and "Graph models", describes the format).

Run, in a Python environment with torch and nngeometry
(`pip install --no-deps nngeometry`), from the repository root:
    python scripts/oracle_graph_cases.py [--out DIR] [case ...]
Writes DIR/<case>.json + <case>.safetensors (DIR defaults to
target/oracle-cases); run them with
    NNGEO_ORACLE_CASES=DIR cargo test --test oracle
The shipped fixtures digits_gn_pool, digits_dense_cat, digits_conv_variants,
regress_skip_mlp, digits_act_pool, regress_conv1d, digits_plain_norms,
digits_seq_mix, regress_multi, regress_pool1d and digits_adaptive_max were
made by this script:
digits_act_pool (LeakyReLU / ELU / SiLU / Identity / Dropout, ceil-mode and
padded pools), regress_conv1d (Conv1d on the regression rows as [n, 1, 8]),
digits_plain_norms (BatchNorm2d / InstanceNorm2d / GroupNorm / LayerNorm
without affine parameters) and digits_seq_mix (a chain case: its sidecar
describes the network in digits_cnn's Sequential format, `model.layers`).
regress_multi is a regression case with 3 outputs (targets [n, 3], NTK
[3, n, 3, n], n_out = 3; fim.multi_output_convention and every key's meaning
state the convention). regress_pool1d (InstanceNorm1d, MaxPool1d, AvgPool1d,
AdaptiveMaxPool1d, AdaptiveAvgPool1d on [n, 1, 8] rows) and digits_adaptive_max
(AdaptiveMaxPool2d with uneven overlapping windows, global max beside global
average pooling) cover the 1-D and adaptive max pools.

Every model's forward IS the op list written to the sidecar (GraphNet executes
`steps`), so the sidecar cannot disagree with what nngeometry saw.  Values come
from nngeometry 0.4 (FIM with each representation, GramMatrix / FMatDense,
Jacobian); an independent torch.func check (jacrev of functional_call over the
op list) is recorded under independent_check.
"""
import copy
import json
import os
import platform
import struct
import sys
import traceback

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import nngeometry
from nngeometry import FIM, GramMatrix, Jacobian
from nngeometry.backend import TorchHooksJacobianBackend
from nngeometry.backend.torch_hooks.grads_conv import use_conv_impl_for_convs
from nngeometry.layercollection import LayerCollection
from nngeometry.object import (PMatBlockDiag, PMatDense, PMatDiag, PMatEKFAC,
                               PMatImplicit, PMatKFAC, PMatLowRank,
                               PMatQuasiDiag, PVector)

torch.set_default_dtype(torch.float64)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "target", "oracle-cases")
RESNET = os.path.join(ROOT, "tests", "fixtures", "oracle", "digits_resnet.safetensors")
DIGITS = os.path.join(ROOT, "data", "digits")
N = 64
N_NTK = 16
REGUL = 1e-3
BLOCK_MAX = 200


# ----------------------------------------------------------------- safetensors
DT = {np.dtype("float64"): "F64", np.dtype("int64"): "I64"}
DT_INV = {"F64": np.float64, "I64": np.int64, "F32": np.float32}


def st_read(path):
    with open(path, "rb") as f:
        b = f.read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    out = {}
    for k, v in h.items():
        if k == "__metadata__":
            continue
        s, e = v["data_offsets"]
        out[k] = np.frombuffer(b[8 + n + s:8 + n + e], dtype=DT_INV[v["dtype"]]).reshape(v["shape"]).copy()
    return out


def st_write(path, tensors, metadata=None):
    header, blobs, off = {}, [], 0
    for k in sorted(tensors):
        a = np.asarray(tensors[k])
        shape = list(a.shape)  # (np.ascontiguousarray would turn 0-d scalars into [1])
        if a.dtype not in DT:
            raise TypeError(f"{k}: {a.dtype}")
        raw = a.astype(a.dtype.newbyteorder("<")).tobytes(order="C")
        header[k] = {"dtype": DT[a.dtype], "shape": shape, "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if metadata:
        header["__metadata__"] = metadata
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for r in blobs:
            f.write(r)


# ----------------------------------------------------------------------- data
def idx_read(path):
    with open(path, "rb") as f:
        b = f.read()
    nd = b[3]
    dims = struct.unpack(">" + "I" * nd, b[4:4 + 4 * nd])
    return np.frombuffer(b[4 + 4 * nd:], dtype=np.uint8).reshape(dims)


def digits():
    r = st_read(RESNET)
    x = torch.tensor(r["inputs"])  # load_digits rows [0, 64), /16, [n,1,8,8]
    y = torch.tensor(r["labels"])
    imgs = idx_read(os.path.join(DIGITS, "train-images-idx3-ubyte")).astype(np.float64) / 16.0
    labs = idx_read(os.path.join(DIGITS, "train-labels-idx1-ubyte")).astype(np.int64)
    ora = {tuple(v) for v in r["inputs"].reshape(N, -1)}
    keep = [i for i in range(len(imgs)) if tuple(imgs[i].reshape(-1)) not in ora]
    keep = np.array(keep)
    tr, cal = keep[:500], keep[500:1000]
    return dict(
        x=x, y=y,
        xtr=torch.tensor(imgs[tr]).unsqueeze(1), ytr=torch.tensor(labs[tr]),
        xcal=torch.tensor(imgs[cal]).unsqueeze(1),
        note_train="digits IDX train split (data/digits, = load_digits minus every 5th example of each class) with the 64 oracle images removed (exact pixel match): its first 500 rows train the weights",
        note_cal="the next 500 rows of that list (BatchNorm running statistics only)",
    )


def regression_data():
    rng = np.random.default_rng(20240601)
    X = rng.standard_normal((320, 8))
    w1 = rng.standard_normal(8) / np.sqrt(8)
    w2 = rng.standard_normal(8) / np.sqrt(8)
    y = np.sin(2 * X @ w1) + 0.5 * (X @ w2) ** 2 - 0.5 + 0.1 * rng.standard_normal(320)
    X, y = torch.tensor(X), torch.tensor(y).unsqueeze(1)
    return dict(x=X[:N], y=y[:N], xtr=X[N:], ytr=y[N:])


MULTI_TARGETS = ("numpy default_rng(20240602) draws u1, u2, u3 ~ N(0, 1/8) [8] (in that order, each as standard_normal(8) / sqrt(8)); "
                 "targets[:, 0] = sin(2 X.u1), targets[:, 1] = (X.u2)^2 - 0.5, targets[:, 2] = X.u3 (no noise), X = the regression rows")


def regression_multi_data():
    """The regression rows X [320, 8] of regression_data() with a 3-column
    target built deterministically from X (MULTI_TARGETS)."""
    base = regression_data()
    X = torch.cat([base["x"], base["xtr"]]).numpy()
    rng = np.random.default_rng(20240602)
    u1, u2, u3 = (rng.standard_normal(8) / np.sqrt(8) for _ in range(3))
    Y = np.stack([np.sin(2 * X @ u1), (X @ u2) ** 2 - 0.5, X @ u3], 1)
    X, Y = torch.tensor(X), torch.tensor(Y)
    return dict(x=X[:N], y=Y[:N], xtr=X[N:], ytr=Y[N:])


# ------------------------------------------------------------------ the model
class GraphNet(nn.Module):
    """Modules registered in `__init__` order; forward executes `steps`."""

    def __init__(self, cls_name, build, steps, output):
        super().__init__()
        self.cls_name = cls_name
        build(self)
        self.steps = steps
        self.out_name = output

    def forward(self, x):
        env = {"x": x}
        mods = dict(self.named_modules())
        for s in self.steps:
            a = [env[i] for i in s["inputs"]]
            if s["op"] == "module":
                r = mods[s["module"]](a[0])
            elif s["op"] == "add":
                r = a[0] + a[1]
            elif s["op"] == "cat":
                r = torch.cat(a, dim=s["dim"])
            elif s["op"] == "flatten":
                r = torch.flatten(a[0], 1)
            else:
                raise ValueError(s["op"])
            env[s["output"]] = r
        return env[self.out_name]


def forward_functional(model, params, buffers, x):
    return torch.func.functional_call(model, {**params, **buffers}, (x,))


def make_steps(spec):
    """spec: list of (op, arg, inputs[, note]) -> digits_resnet-style steps."""
    steps = []
    for k, item in enumerate(spec, 1):
        op, arg, inputs = item[:3]
        s = {"step": k, "op": op}
        if op == "module":
            s["module"] = arg
        s["inputs"] = inputs
        s["output"] = f"t{k}"
        if op == "cat":
            s["dim"] = 1
            s["note"] = "torch.cat(inputs, dim=1): concatenation along the channel (first per-example) dimension, inputs in the listed order"
        if op == "flatten":
            s["start_dim"] = 1
            s["note"] = "torch.flatten(x, 1): row-major flatten of [C, H, W] per example"
        if len(item) > 3:
            s["note"] = item[3]
        steps.append(s)
    return steps, f"t{len(spec)}"


def pair(v):
    return list(v) if isinstance(v, (tuple, list)) else [v, v]


POOL_SIZE = ("per axis (L = H or W): out = floor((L + 2*padding - dilation*(kernel_size-1) - 1) / stride) + 1, with ceil_mode=True ceil instead of floor, "
             "then minus 1 if (out - 1) * stride >= L + padding (PyTorch drops a last window that would start in the right padding)")


def pool_out(L, k, s, p, d, ceil_mode):
    num = L + 2 * p - d * (k - 1) - 1
    o = (-(-num // s) if ceil_mode else num // s) + 1
    if ceil_mode and (o - 1) * s >= L + p:
        o -= 1
    return o


def pool2d_manual(x, kind, k, s, p, d=(1, 1), ceil_mode=False, count_include_pad=True, divisor_override=None):
    """Pooling by explicit window enumeration (independent of F.*_pool2d)."""
    k, s, p, d = pair(k), pair(s), pair(p), pair(d)
    H, W = x.shape[2:]
    oh, ow = pool_out(H, k[0], s[0], p[0], d[0], ceil_mode), pool_out(W, k[1], s[1], p[1], d[1], ceil_mode)
    eh = max((oh - 1) * s[0] + d[0] * (k[0] - 1) + 1 - H - p[0], 0)
    ew = max((ow - 1) * s[1] + d[1] * (k[1] - 1) + 1 - W - p[1], 0)
    xp = F.pad(x, (p[1], ew, p[0], eh), value=(-float("inf") if kind == "max" else 0.0))
    ih = torch.tensor([[i * s[0] + a * d[0] for a in range(k[0])] for i in range(oh)])
    iw = torch.tensor([[j * s[1] + b * d[1] for b in range(k[1])] for j in range(ow)])
    win = xp[:, :, ih[:, :, None, None], iw[None, None, :, :]]          # [n, c, oh, kh, ow, kw]
    win = win.permute(0, 1, 2, 4, 3, 5).reshape(x.shape[0], x.shape[1], oh, ow, k[0] * k[1])
    if kind == "max":
        return win.max(-1).values   # gradient to the first maximum (row-major window order)
    div = torch.zeros(oh, ow)
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * s[0] - p[0], j * s[1] - p[1]
            he, we = min(hs + k[0], H + p[0]), min(ws + k[1], W + p[1])
            if not count_include_pad:
                hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, H), min(we, W)
            div[i, j] = divisor_override or (he - hs) * (we - ws)
    return win.sum(-1) / div


def adaptive_manual(x, kind, out):
    """Adaptive pooling of [n, C, H, W] by explicit window enumeration
    (independent of F.adaptive_*)."""
    H, W = x.shape[2:]
    rows = []
    for i in range(out[0]):
        r0, r1 = (i * H) // out[0], -(-((i + 1) * H) // out[0])
        cols = []
        for j in range(out[1]):
            c0, c1 = (j * W) // out[1], -(-((j + 1) * W) // out[1])
            win = x[:, :, r0:r1, c0:c1].reshape(x.shape[0], x.shape[1], -1)
            cols.append(win.max(-1).values if kind == "max" else win.mean(-1))
        rows.append(torch.stack(cols, -1))
    return torch.stack(rows, -2)


def describe_module(name, m, sd_keys):
    t = m.__class__.__name__
    d = {"name": name, "type": t}
    if isinstance(m, nn.Conv1d):
        d.update(in_channels=m.in_channels, out_channels=m.out_channels, kernel_size=list(m.kernel_size),
                 stride=list(m.stride), padding=list(m.padding), dilation=list(m.dilation), groups=m.groups,
                 bias=m.bias is not None, padding_mode=m.padding_mode,
                 note="1-d convolution on [C, L] per example; kernel_size / stride / padding / dilation are 1-element lists (PyTorch's 1-tuples); weight [out_c, in_c/groups, k]; zero padding of 'padding' on both ends; L_out = floor((L + 2*padding - dilation*(k-1) - 1) / stride) + 1; y[o, l] = bias[o] + sum_{c, a} weight[o, c, a] * x_padded[c, l*stride + a*dilation]")
    elif isinstance(m, nn.Conv2d):
        d.update(in_channels=m.in_channels, out_channels=m.out_channels, kernel_size=pair(m.kernel_size),
                 stride=pair(m.stride), padding=pair(m.padding), dilation=pair(m.dilation), groups=m.groups,
                 bias=m.bias is not None, padding_mode=m.padding_mode)
        if m.groups > 1:
            d["note"] = f"grouped convolution: weight [out_c, in_c/groups = {m.in_channels // m.groups}, kh, kw]; output channels [g*out_c/groups, (g+1)*out_c/groups) see input channels [g*in_c/groups, (g+1)*in_c/groups)"
    elif isinstance(m, nn.ConvTranspose2d):
        d.update(in_channels=m.in_channels, out_channels=m.out_channels, kernel_size=pair(m.kernel_size),
                 stride=pair(m.stride), padding=pair(m.padding), output_padding=pair(m.output_padding),
                 dilation=pair(m.dilation), groups=m.groups, bias=m.bias is not None, padding_mode=m.padding_mode,
                 note="weight [in_c, out_c/groups, kh, kw] (PyTorch's ConvTranspose2d layout); output size (H-1)*stride - 2*padding + dilation*(k-1) + output_padding + 1")
    elif isinstance(m, nn.Linear):
        d.update(in_features=m.in_features, out_features=m.out_features, bias=m.bias is not None)
    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        d.update(num_features=m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine,
                 track_running_stats=m.track_running_stats, mode="eval (uses running_mean / running_var)",
                 formula="per feature/channel c: y = (x - running_mean[c]) / sqrt(running_var[c] + eps) * weight[c] + bias[c]" if m.affine else
                 "per feature/channel c: y = (x - running_mean[c]) / sqrt(running_var[c] + eps); affine=False: no weight / bias (no parameters; running_mean / running_var / num_batches_tracked are buffers)")
    elif isinstance(m, (nn.InstanceNorm1d, nn.InstanceNorm2d)):
        d.update(num_features=m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine,
                 track_running_stats=m.track_running_stats,
                 formula="per example and per channel c, over its " + ("L" if isinstance(m, nn.InstanceNorm1d) else "H x W") + " positions: y = (x - mean) / sqrt(var + eps) (biased variance)"
                 + (" * weight[c] + bias[c]" if m.affine else "; affine=False: no weight / bias (no parameters)")
                 + ("; track_running_stats=False: no running statistics, so the per-example statistics are used in eval mode too (same in train and eval)" if not m.track_running_stats else "; eval mode uses running_mean / running_var"))
    elif isinstance(m, nn.GroupNorm):
        d.update(num_groups=m.num_groups, num_channels=m.num_channels, eps=m.eps, affine=m.affine,
                 formula="per example, channels split into num_groups consecutive groups; over each group's channels and all H x W positions: y = (x - mean) / sqrt(var + eps) (biased variance) then per channel c: y * weight[c] + bias[c]; statistics are per example (no running statistics; same in train and eval)" if m.affine else
                 "per example, channels split into num_groups consecutive groups; over each group's channels and all H x W positions: y = (x - mean) / sqrt(var + eps) (biased variance); affine=False: no weight / bias (no parameters); statistics are per example (no running statistics; same in train and eval)")
    elif isinstance(m, nn.LayerNorm):
        d.update(normalized_shape=list(m.normalized_shape), eps=m.eps, elementwise_affine=m.elementwise_affine,
                 bias=m.bias is not None,
                 formula="per example over the trailing normalized_shape dims: y = (x - mean) / sqrt(var + eps) (biased variance) * weight + bias, weight and bias of shape normalized_shape" if m.elementwise_affine else
                 "per example over the trailing normalized_shape dims: y = (x - mean) / sqrt(var + eps) (biased variance); elementwise_affine=False: no weight / bias (no parameters)")
    elif isinstance(m, nn.LeakyReLU):
        d.update(negative_slope=m.negative_slope, inplace=False,
                 formula="x if x > 0 else negative_slope * x; derivative negative_slope for x <= 0 (PyTorch's convention: at x = 0 it is negative_slope)")
    elif isinstance(m, nn.ELU):
        d.update(alpha=m.alpha, inplace=False,
                 formula="x if x > 0 else alpha * (exp(x) - 1); derivative 1 for x > 0, alpha * exp(x) for x <= 0 (PyTorch's convention: at x = 0 it is alpha)")
    elif isinstance(m, nn.SiLU):
        d.update(inplace=False, formula="x * sigmoid(x) = x / (1 + exp(-x)); derivative sigmoid(x) * (1 + x * (1 - sigmoid(x)))")
    elif isinstance(m, nn.Identity):
        d.update(formula="y = x (no parameters)")
    elif isinstance(m, nn.Dropout):
        d.update(p=m.p, inplace=m.inplace,
                 formula="eval mode (every module here runs in eval mode): y = x, the identity; p matters only in training mode (zero each element with probability p, scale the rest by 1/(1-p)), which was used only while training the weights")
    elif isinstance(m, nn.Flatten):
        d.update(start_dim=m.start_dim, end_dim=m.end_dim, note="row-major flatten of [C, H, W] per example")
    elif isinstance(m, nn.ReLU):
        d.update(inplace=False, formula="max(x, 0); derivative 0 for x <= 0 (PyTorch's convention)")
    elif isinstance(m, nn.Tanh):
        d.update(formula="tanh(x)")
    elif isinstance(m, nn.GELU):
        d.update(approximate=m.approximate, formula="exact GELU: x * Phi(x) = 0.5 x (1 + erf(x / sqrt(2)))")
    elif isinstance(m, nn.MaxPool2d):
        d.update(kernel_size=pair(m.kernel_size), stride=pair(m.stride), padding=pair(m.padding),
                 dilation=pair(m.dilation), ceil_mode=m.ceil_mode,
                 formula="max over each window; the gradient goes to the (first) arg-max" if (pair(m.padding) == [0, 0] and pair(m.dilation) == [1, 1] and not m.ceil_mode) else
                 "max over each window of the input padded with -inf ('padding' on each side; a padded position never wins); per axis window i reads positions i*stride - padding + a*dilation, a < kernel_size; output size " + POOL_SIZE + "; the gradient goes to the first arg-max in row-major window order")
    elif isinstance(m, nn.AvgPool2d):
        d.update(kernel_size=pair(m.kernel_size), stride=pair(m.stride), padding=pair(m.padding),
                 ceil_mode=m.ceil_mode, count_include_pad=m.count_include_pad,
                 divisor_override=m.divisor_override,
                 formula="sum over each window of the zero-padded input divided by the window's divisor. Output size " + POOL_SIZE + " (dilation 1). Per axis window i starts at s = i*stride - padding and ends at e = min(s + kernel_size, L + padding); the divisor is divisor_override if set, else with count_include_pad=True the window clipped to [-padding, L + padding): (e_h - s_h) * (e_w - s_w) (padded zeros counted; a ceil_mode window that runs past L + padding counts only its part inside), else (count_include_pad=False) the number of in-input elements (min(e_h, H) - max(s_h, 0)) * (min(e_w, W) - max(s_w, 0))")
    elif isinstance(m, nn.MaxPool1d):
        d.update(kernel_size=m.kernel_size, stride=m.stride, padding=m.padding, dilation=m.dilation,
                 ceil_mode=m.ceil_mode, return_indices=m.return_indices,
                 formula="1-d max pooling on [C, L] per example: max over each window of the input padded with -inf ('padding' on each end; a padded position never wins); window i reads positions i*stride - padding + a*dilation, a < kernel_size; output length " + POOL_SIZE + "; the gradient goes to the first arg-max in window order")
    elif isinstance(m, nn.AvgPool1d):
        d.update(kernel_size=list(m.kernel_size), stride=list(m.stride), padding=list(m.padding),
                 ceil_mode=m.ceil_mode, count_include_pad=m.count_include_pad,
                 formula="1-d average pooling on [C, L] per example (kernel_size / stride / padding are PyTorch's 1-tuples): sum over each window of the zero-padded input divided by its divisor; output length " + POOL_SIZE + " (dilation 1); window i starts at s = i*stride - padding and ends at e = min(s + kernel_size, L + padding); the divisor is e - s with count_include_pad=True, else min(e, L) - max(s, 0)")
    elif isinstance(m, nn.AdaptiveMaxPool2d):
        d.update(output_size=pair(m.output_size), return_indices=m.return_indices,
                 note="PyTorch AdaptiveMaxPool2d: output (i, j) is the max over rows [floor(i*H/oh), ceil((i+1)*H/oh)) and cols likewise (windows may overlap and differ in size); the gradient goes to the first arg-max in row-major window order")
    elif isinstance(m, nn.AdaptiveMaxPool1d):
        d.update(output_size=m.output_size, return_indices=m.return_indices,
                 note="PyTorch AdaptiveMaxPool1d on [C, L]: output i is the max over positions [floor(i*L/o), ceil((i+1)*L/o)); the gradient goes to the first arg-max")
    elif isinstance(m, nn.AdaptiveAvgPool1d):
        d.update(output_size=m.output_size,
                 note="PyTorch AdaptiveAvgPool1d on [C, L]: output i averages positions [floor(i*L/o), ceil((i+1)*L/o))")
    elif isinstance(m, nn.AdaptiveAvgPool2d):
        d.update(output_size=pair(m.output_size),
                 note="output size 1x1: mean over all H x W positions of each channel (no parameters)" if pair(m.output_size) == [1, 1]
                 else "PyTorch AdaptiveAvgPool2d: output (i, j) averages rows [floor(i*H/oh), ceil((i+1)*H/oh)) and cols likewise")
    else:
        raise ValueError(t)
    ts = [k for k in sd_keys if k.rsplit(".", 1)[0] == name]
    return d, ts


# ------------------------------------------------------------------ training
def train_classifier(model, data, seed, lr=0.05, cap=200, stop=0.5, calibrate=True):
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    steps, loss_eval = 0, None
    for steps in range(1, cap + 1):
        model.train()
        opt.zero_grad()
        loss = F.cross_entropy(model(data["xtr"]), data["ytr"])
        loss.backward()
        opt.step()
        model.eval()
        with torch.no_grad():
            loss_eval = F.cross_entropy(model(data["xtr"]), data["ytr"]).item()
        if loss_eval < stop:
            break
    info = {"steps": steps, "training_loss_eval_mode": loss_eval}
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if calibrate and has_bn:
        model.train()
        with torch.no_grad():
            for b in range(5):
                model(data["xcal"][100 * b:100 * (b + 1)])
        model.eval()
        with torch.no_grad():
            info["training_loss_eval_mode_after_calibration"] = F.cross_entropy(model(data["xtr"]), data["ytr"]).item()
    model.eval()
    return info


def train_regressor(model, data, seed, lr=0.02, steps=300):
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for _ in range(steps):
        model.train()
        opt.zero_grad()
        loss = F.mse_loss(model(data["xtr"]), data["ytr"])
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        l = F.mse_loss(model(data["xtr"]), data["ytr"]).item()
    return {"steps": steps, "training_mse_eval_mode": l}


# ------------------------------------------------------------- the generator
REPS = {"dense": PMatDense, "diag": PMatDiag, "blockdiag": PMatBlockDiag, "kfac": PMatKFAC,
        "ekfac": PMatEKFAC, "lowrank": PMatLowRank, "quasidiag": PMatQuasiDiag,
        "implicit": PMatImplicit, "ekfac_upd": PMatEKFAC}
SOLVE_DOC = {
    "dense": "(F + regul*I)^-1 v (torch.linalg.ldl_factor/ldl_solve)",
    "diag": "v / (diag(F) + regul)",
    "blockdiag": "per layer: (F_ll + regul*I)^-1 v_l",
    "kfac": "see kfac convention (pi-damped Kronecker factors, sqrt(regul) on each)",
    "ekfac": "U_G ((U_G^T V U_A) / (diag + regul)) U_A^T",
    "ekfac_upd": "same as ekfac with the updated diag",
    "lowrank": "NOT (F + regul I)^-1 v: with M = J/sqrt(n) reshaped [n_out*n, P] = U S V^T (thin SVD), x = V ((V^T v) / (S^2 + regul)); the component of v outside the row space of J is dropped",
    "quasidiag": "nngeometry PMatQuasiDiag.solve (diag + per-output-unit weight/bias cross terms)",
}
KRON_TYPES = ("Conv2d", "Linear")   # the 'conv_linear' fallback collection (Conv1d is left out of it: nngeometry has no Conv1d QuasiDiag)


def param_layer_collection(model, unsup):
    """nngeometry LayerCollection over the modules that own parameters, in
    named_modules() order: the same as LayerCollection.from_model(model) for
    every module with its affine parameters; from_model also adds
    BatchNorm / GroupNorm / LayerNorm without affine parameters as layers
    with (nonexistent) weight and bias, which breaks every computation."""
    lc = LayerCollection()
    for name, m in model.named_modules():
        if m.__class__.__name__ in LayerCollection._known_modules and next(m.parameters(recurse=False), None) is not None:
            lc.add_layer(name, LayerCollection._module_to_layer(m))
    P = sum(p.numel() for p in model.parameters())
    if lc.numel() != P:
        raise RuntimeError(f"layer collection has {lc.numel()} parameters, the model {P}")
    ref = LayerCollection.from_model(model)
    if list(ref.layers) != list(lc.layers) or ref.numel() != lc.numel():
        extra = [f"{l} ({model.get_submodule(l).__class__.__name__}, {ref.layers[l].numel()} phantom parameters)" for l in ref.layers if l not in lc.layers]
        unsup["LayerCollection.from_model"] = (
            "nngeometry's LayerCollection.from_model(model) adds the parameter-free modules " + ", ".join(extra)
            + f" as layers with a weight and a bias that the module does not have (numel {ref.numel()} instead of P = {P}); "
            "every FIM / Jacobian / GramMatrix computed over it raises AttributeError: 'NoneType' object has no attribute 'device'. "
            "Every value in this file is computed by nngeometry with layer_collection = a LayerCollection holding only the modules that own parameters "
            "(LayerCollection() + add_layer(name, LayerCollection._module_to_layer(module)) in named_modules() order), which is what from_model gives for them; "
            "the parameter-free norms still take part in the forward and backward passes")
    return lc


def errstr(e):
    return f"{type(e).__name__}: {e}"


def multi_output_note(key, C):
    """What a key means for variant='regression' with C > 1 outputs (appended to its meaning)."""
    fim_def = (f"F = 1/n sum_i J_i^T J_i with J_i = d f(x_i)/d theta [{C}, P], i.e. summed over the {C} regression outputs "
               f"(variant='regression': nngeometry's n_out = {C} pseudo-outputs are the {C} model outputs themselves, no transform)")
    if key == "targets":
        return f"; [n, {C}]: column c is the target of model output c (dataset.targets)"
    if key == "outputs":
        return f"; [n, {C}]: the {C} regression outputs (means of y ~ N(f(x), I_{C}))"
    if key == "jac/logits":
        return f"; [{C}, 1, P]: one row per regression output c (the {C} outputs themselves, no pseudo-output transform)"
    if key in ("fim/v", "fim/solve_regul", "fim/conv_linear_index", "fim/v_conv_linear"):
        return ""
    if key.startswith("fim/"):
        rep = key.split("/")[1]
        note = f" [{C} outputs: {fim_def}"
        if key == "fim/lowrank/n_out":
            note += f"; n_out = {C} = the number of regression outputs"
        elif rep == "lowrank":
            note += f"; LowRank data = J/sqrt(n) as [n_out = {C}, n, P] (reshaped [{C}*n, P] row index c*n + i, output-major), so it has min({C}*n, P) singular values"
        elif key.startswith("fim/kfac/A/") or key.startswith("fim/kfac/evals_A/"):
            note += f"; A = sqrt({C})/n sum_i sum_loc a a^T: the layer input a is accumulated once per example (not once per output) and scaled by sqrt(n_out) = sqrt({C})"
        elif key.startswith("fim/kfac/G/") or key.startswith("fim/kfac/evals_G/"):
            note += f"; G = 1/(sqrt({C}) n L) sum_i sum_(c<{C}) sum_loc gy_c gy_c^T: the output gradients of all {C} outputs are summed, divided by sqrt(n_out) = sqrt({C}); only kron(G, A) is convention-free"
        elif rep == "kfac":
            note += f"; per layer kron(G, A) with A carrying sqrt({C}) and G 1/sqrt({C}) (fim.kfac_convention)"
        elif key.startswith("fim/ekfac_upd/kfe_diag/"):
            note += f"; after update_diag: diag[k, j] = 1/n sum_i sum_(c<{C}) (U_G^T Gw_ic U_A)[k, j]^2, summed over the {C} outputs, no sqrt({C}) factor"
        elif key.startswith("fim/ekfac/kfe_diag/"):
            note += f"; = evals_G[k] * evals_A[j] of the KFAC factors (the sqrt({C}) factors cancel)"
        elif rep in ("ekfac", "ekfac_upd"):
            note += f"; EKFAC in the eigenbases U_G, U_A of the KFAC factors (eigenvectors do not depend on the sqrt({C}) split), diag = its kfe_diag"
        return note + "]"
    if key.startswith("ntk/") or key.startswith("ntk_all/"):
        return f" [C = {C} regression outputs: output index c = model output c (no pseudo-output transform)]"
    if key.startswith("align/"):
        if "/trace_kernel/" in key:
            return f" [{C} outputs: T = Y Y^T = sum_c Y[:, c] Y[:, c]^T with Y = targets [n, {C}] (rows cut to the kernel's n), Ktr summed over the {C} outputs]"
        return f" [{C} outputs: y[c*n + i] = targets[i, c], c < {C}, K reshaped [{C}*n, {C}*n]]"
    return ""


class Builder:
    def __init__(self, name, model, x, y, regression, conv_impl=False):
        self.name, self.model, self.x, self.y = name, model, x, y
        self.regression = regression
        self.variant = "regression" if regression else "classif_logits"
        self.conv_impl = conv_impl
        self.T = {}          # key -> np array
        self.K = {}          # key -> meta
        self.unsup = {}
        self.checks = {}
        self.lc_all = param_layer_collection(model, self.unsup)
        self.P = self.lc_all.numel()
        mods = dict(model.named_modules())
        self.mods = mods
        # KFAC-type collection: Conv2d (ungrouped) and Linear layers
        self.lc_kron = LayerCollection()
        self.left_out = []
        for lid, layer in self.lc_all.layers.items():
            m = mods[lid]
            if m.__class__.__name__ in KRON_TYPES and getattr(m, "groups", 1) == 1:
                self.lc_kron.add_layer(lid, layer)
            else:
                self.left_out.append(lid)
        self.kron_index = []
        for lid in self.lc_kron.layers:
            s = self.lc_all.p_pos[lid]
            self.kron_index += list(range(s, s + self.lc_all.layers[lid].numel()))
        self.kron_index = np.array(self.kron_index, dtype=np.int64)
        self.loader = DataLoader(TensorDataset(x, y), batch_size=N)
        self.rep_lc = {}
        # regression with several outputs: every key's meaning states the convention
        self.multi_out = y.shape[1] if (regression and y.dim() == 2 and y.shape[1] > 1) else 0

    def ctx(self):
        if self.conv_impl:
            return use_conv_impl_for_convs()
        import contextlib
        return contextlib.nullcontext()

    def put(self, key, val, meaning, dims=None, source="nngeometry"):
        if isinstance(val, torch.Tensor):
            val = val.detach().cpu().numpy()
        val = np.asarray(val)
        if val.dtype.kind == "f":
            val = val.astype(np.float64)
            if not np.all(np.isfinite(val)):
                raise RuntimeError(f"{self.name}: {key} not finite")
        elif val.dtype.kind in "iu":
            val = val.astype(np.int64)
        self.T[key] = val
        if self.multi_out:
            meaning += multi_output_note(key, self.multi_out)
        m = {"shape": list(val.shape), "dtype": str(val.dtype), "meaning": meaning}
        if dims is not None:
            m["dims"] = dims
        m["source"] = source
        self.K[key] = m

    def fim(self, rep, lc):
        with self.ctx():
            return FIM(copy.deepcopy(self.model), self.loader, REPS[rep], variant=self.variant,
                       layer_collection=lc)

    # -- FIM ------------------------------------------------------------------
    def fim_all(self, v_np):
        v_full = torch.tensor(v_np)
        v_kron = v_full[torch.tensor(self.kron_index)]
        mats = {}
        for rep in REPS:
            lc, tag = self.lc_all, "all"
            try:
                M = self.fim(rep, self.lc_all)
                if rep == "ekfac_upd":
                    with self.ctx():
                        M.update_diag(self.loader)
                if rep == "implicit":  # its mv is lazy: probe it over all layers
                    with self.ctx():
                        M.mv(PVector(self.lc_all, vector_repr=v_full))
            except Exception as e:
                if not self.left_out:
                    raise
                self.unsup[f"fim/{rep}"] = (
                    f"over all layers nngeometry raises {errstr(e)} (the model has "
                    f"{', '.join(sorted({self.mods[l].__class__.__name__ for l in self.left_out}))} layers). Stored instead: fim/{rep}/* built by nngeometry over the "
                    f"Conv2d/Linear layers only, FIM(..., layer_collection=<Conv2d/Linear collection>): vectors in parameter_ordering.conv_linear order, "
                    f"mv/vTMv/solve of fim/v_conv_linear; it approximates the conv/linear block F[idx][:, idx] of the FIM, idx = fim/conv_linear_index")
                lc, tag = self.lc_kron, "conv_linear"
                M = self.fim(rep, lc)
                if rep == "ekfac_upd":
                    with self.ctx():
                        M.update_diag(self.loader)
            self.rep_lc[rep] = tag
            mats[rep] = (M, lc)
            v = v_full if tag == "all" else v_kron
            pv = PVector(lc, vector_repr=v)
            suffix = "" if tag == "all" else " [built over the Conv2d/Linear layers only: vectors in parameter_ordering.conv_linear order, fim/v_conv_linear in place of fim/v]"
            pdim = ["param"] if tag == "all" else ["param_conv_linear"]

            def q(qname, fn, meaning, dims):
                if rep == "lowrank" and qname == "solve" and not self.regression:
                    self.unsup["fim/lowrank/solve"] = "omitted from this file: n_out*n < P and the pseudo-output Jacobian is nearly row-rank deficient, so which subspace V spans is fixed only to about eps*largest/smallest eigenvalue; the result is not reproducible to oracle precision"
                    return
                try:
                    with self.ctx():
                        r = fn()
                except Exception as e:
                    self.unsup[f"fim/{rep}/{qname}"] = errstr(e)
                    return
                self.put(f"fim/{rep}/{qname}", r, meaning + suffix, dims)

            q("trace", lambda: M.trace(), "M.trace()", [])
            q("frobenius_norm", lambda: M.frobenius_norm(), "M.frobenius_norm()", [])
            q("diag", lambda: M.get_diag(), "M.get_diag() (flat order)", pdim)
            q("mv", lambda: M.mv(pv).to_torch(), "M.mv(fim/v) (flat order)", pdim)
            q("vTMv", lambda: M.vTMv(pv), "M.vTMv(fim/v)", [])
            if rep != "implicit" or True:
                q("solve", lambda: M.solve(pv, regul=REGUL).to_torch(),
                  f"M.solve(fim/v, regul=fim/solve_regul): {SOLVE_DOC.get(rep, '')}", pdim)
            if rep == "implicit":
                try:
                    M.to_torch()
                except Exception as e:
                    self.unsup["fim/implicit/to_torch"] = errstr(e)
        return mats

    def run(self, info):
        model, x, y = self.model, self.x, self.y
        torch.manual_seed(1234)
        with torch.no_grad():
            out = model(x)
        C = out.shape[1]
        self.C = C
        # data and weights
        self.put("inputs", x, "input examples (see dataset.input_layout)", info["input_dims"], "data: dataset slice")
        if self.regression:
            self.put("targets", y, "regression targets", ["example", "output"], "data: dataset slice")
        else:
            self.put("labels", y, "class labels", ["example"], "data: dataset slice")
            self.put("onehot", F.one_hot(y, C).double(), "one-hot labels", ["example", "class"], "data: dataset slice")
        for k, t in model.state_dict().items():
            src = "model: BatchNorm running statistics (after the calibration passes)" if ("running" in k or "num_batches" in k) else "model: trained weights"
            self.put(k, t, "model state_dict tensor (PyTorch shape)", None, src)
        flat = torch.cat([p.detach().reshape(-1) for p in self.lc_all.parameters(self.lc_all.get_layerid_module_maps(model)[0])])
        self.put("flat_params", flat, "all parameters as one flat vector in nngeometry order", ["param"], "model: trained weights")
        self.put("outputs", out, "model outputs (logits for classification)" if not self.regression else "model outputs (regression mean)",
                 ["example", "output"], "model: PyTorch forward pass (softmax / log_softmax)")
        if not self.regression:
            self.put("probs", torch.softmax(out, 1), "softmax(outputs)", ["example", "class"], "model: PyTorch forward pass (softmax / log_softmax)")
        g = torch.Generator().manual_seed(4321)
        v = torch.randn(self.P, generator=g)
        self.put("fim/v", v, "test vector (standard normal) for mv / vTMv / solve, flat nngeometry order", ["param"], "input: test vector / parameter chosen by this script")
        self.put("fim/solve_regul", torch.tensor(REGUL), "Tikhonov term 'regul' passed to every solve", None, "input: test vector / parameter chosen by this script")
        if self.left_out:
            self.put("fim/conv_linear_index", self.kron_index, "for k < P_conv_linear: position in the full flat order (fim/v, flat_params) of entry k of a vector over the Conv2d/Linear layer collection (parameter_ordering.conv_linear)", ["param_conv_linear"], "model: parameter ordering (flat positions of the Conv2d/Linear layer collection)")
            self.put("fim/v_conv_linear", v[torch.tensor(self.kron_index)], "fim/v[fim/conv_linear_index]: the test vector for mv / vTMv / solve of the representations built over the Conv2d/Linear layer collection (fim.representation_layer_collection)", ["param_conv_linear"], "input: test vector / parameter chosen by this script")
        # Jacobian of the first example
        with self.ctx():
            J1 = Jacobian(copy.deepcopy(model), DataLoader(TensorDataset(x[:1], y[:1]), batch_size=1), layer_collection=self.lc_all).to_torch()
        self.put("jac/logits", J1, "nngeometry Jacobian(model, first example) of the outputs w.r.t. parameters", ["output", "example", "param"])
        mats = self.fim_all(v.numpy())
        # blocks, evals, factors
        Md = mats["dense"][0].to_torch()
        for lid, layer in self.lc_all.layers.items():
            if layer.numel() <= BLOCK_MAX:
                s = self.lc_all.p_pos[lid]
                e = s + layer.numel()
                self.put(f"fim/dense/block/{lid}", Md[s:e, s:e], f"diagonal block of M.to_torch() for layer {lid} (rows/cols = that layer's slice of the flat order)", ["param", "param"])
        self.put("fim/dense/evals", torch.linalg.eigvalsh(Md), "eigenvalues of the dense FIM, ascending (torch.linalg.eigvalsh)", ["eig"], "nngeometry: eigenvalues of nngeometry's matrix / factors")
        L = mats["lowrank"][0]
        n_out = L.data.shape[0]
        sv = torch.linalg.svdvals(L.data.reshape(-1, L.data.shape[2]))
        self.put("fim/lowrank/evals", sv ** 2, "eigenvalues S^2 of the LowRank FIM (torch.svd of J/sqrt(n) reshaped [n_out*n, P]), descending; these are the top min(n_out*n, P) eigenvalues of the dense FIM", ["eig"], "nngeometry: eigenvalues of nngeometry's matrix / factors")
        self.put("fim/lowrank/n_out", torch.tensor(n_out), "number of pseudo-outputs n_out (LowRank data is [n_out, n, P])", None)
        self.n_out = n_out
        kf = mats["kfac"][0]
        kfac_layers = []
        for lid, (a, gm) in kf.data.items():
            self.put(f"fim/kfac/A/{lid}", a, "KFAC input-side factor A (see kfac convention)", ["a", "a"])
            self.put(f"fim/kfac/G/{lid}", gm, "KFAC output-side factor G (see kfac convention)", ["g", "g"])
            self.put(f"fim/kfac/evals_A/{lid}", torch.linalg.eigvalsh(a), "eigenvalues of A, ascending", ["a"], "nngeometry: eigenvalues of nngeometry's matrix / factors")
            self.put(f"fim/kfac/evals_G/{lid}", torch.linalg.eigvalsh(gm), "eigenvalues of G, ascending", ["g"], "nngeometry: eigenvalues of nngeometry's matrix / factors")
            m = self.mods[lid]
            ent = {"layer": lid, "type": m.__class__.__name__, "sA": a.shape[0], "sG": gm.shape[0], "bias": m.bias is not None}
            ent["L"] = self.out_positions[lid]
            if isinstance(m, nn.Conv2d):
                ent.update(kernel_size=pair(m.kernel_size), stride=pair(m.stride), padding=pair(m.padding), dilation=pair(m.dilation))
            elif isinstance(m, nn.Conv1d):
                ent.update(kernel_size=list(m.kernel_size), stride=list(m.stride), padding=list(m.padding), dilation=list(m.dilation))
            lck = mats["kfac"][1]
            ent["offset_conv_linear" if self.rep_lc["kfac"] == "conv_linear" else "offset"] = lck.p_pos[lid]
            kfac_layers.append(ent)
        self.kfac_layers = kfac_layers
        for rep in ("ekfac", "ekfac_upd"):
            E = mats[rep][0]
            for lid, d in E.data[1].items():
                sG, sA = kf.data[lid][1].shape[0], kf.data[lid][0].shape[0]
                self.put(f"fim/{rep}/kfe_diag/{lid}", d.reshape(sG, sA), "EKFAC eigenvalues in the Kronecker-factored eigenbasis, [sG, sA] (see ekfac convention)", ["g_eig", "a_eig"])
        self.mats = mats
        # empirical Fisher
        if not self.regression:
            mcopy = copy.deepcopy(model)

            def lp(*d):
                return torch.log_softmax(mcopy(d[0]), 1).gather(1, d[1].view(-1, 1))
            with self.ctx():
                gen = TorchHooksJacobianBackend(model=mcopy, function=lp, layer_collection=self.lc_all)
                E = PMatDense(generator=gen, examples=self.loader)
            self.put("efim/dense/trace", E.trace(), "empirical Fisher 1/n sum_i g_i g_i^T, g_i = grad log p(y_i|x_i): trace")
            self.put("efim/dense/diag", E.get_diag(), "empirical Fisher: diagonal (flat order)", ["param"])
            self.put("efim/dense/mv", E.mv(PVector(self.lc_all, vector_repr=v)).to_torch(), "empirical Fisher: mv(fim/v)", ["param"])
            self.put("efim/dense/frobenius_norm", E.frobenius_norm(), "empirical Fisher: Frobenius norm")
            self.efim = E.to_torch()
        self.ntk(v)
        self.independent()

    # -- NTK ------------------------------------------------------------------
    def gram(self, n, lc=None):
        with self.ctx():
            return GramMatrix(copy.deepcopy(self.model), DataLoader(TensorDataset(self.x[:n], self.y[:n]), batch_size=n),
                              layer_collection=self.lc_all if lc is None else lc).to_torch()

    def ntk(self, v):
        C = self.C
        src = "nngeometry: GramMatrix (trace / mv / statistics computed with torch from nngeometry's kernel)"
        g = torch.Generator().manual_seed(999)
        K16 = self.gram(N_NTK)
        vv = torch.randn(C, N_NTK, generator=g)
        K2 = K16.reshape(C * N_NTK, C * N_NTK)
        self.put("ntk/v", vv, "test vector for the NTK slice, nngeometry FVector layout [output, example]", ["output", "example"], "input: test vector / parameter chosen by this script")
        self.put("ntk/dense", K16, "nngeometry GramMatrix(model, first n_ntk examples).to_torch(): K[c, i, d, j] = <d f_c(x_i)/d theta, d f_d(x_j)/d theta>", ["output", "example", "output", "example"], src)
        self.put("ntk/frobenius_norm", torch.norm(K2), "FMatDense.frobenius_norm()", None, src)
        self.put("ntk/vTMv", vv.reshape(-1) @ K2 @ vv.reshape(-1), "FMatDense.vTMv(ntk/v)", None, src)
        self.put("ntk/trace", torch.trace(K2), "trace of K reshaped [C*n_ntk, C*n_ntk] (FMatDense.trace() fails on the 4-d tensor in nngeometry 0.4)", None, src)
        self.put("ntk/mv", (K2 @ vv.reshape(-1)).reshape(C, N_NTK), "K reshaped [C*n, C*n] times ntk/v flattened row-major, reshaped [C, n] (FMatDense.mv fails on the 4-d tensor in nngeometry 0.4)", ["output", "example"], src)
        K = self.gram(N)
        self.K64 = K
        Kf = K.reshape(C * N, C * N)
        va = torch.randn(C, N, generator=g)
        self.put("ntk_all/v", va, "test vector for the all-examples NTK, [output, example]", ["output", "example"], "input: test vector / parameter chosen by this script")
        self.put("ntk_all/trace", torch.trace(Kf), "trace of the NTK over all n examples", None, src)
        self.put("ntk_all/frobenius_norm", torch.norm(Kf), "Frobenius norm of the NTK over all n examples", None, src)
        self.put("ntk_all/diag", torch.diagonal(Kf).reshape(C, N), "K[c, i, c, i]", ["output", "example"], src)
        self.put("ntk_all/mv", (Kf @ va.reshape(-1)).reshape(C, N), "K times ntk_all/v", ["output", "example"], src)
        self.put("ntk_all/vTMv", va.reshape(-1) @ Kf @ va.reshape(-1), "ntk_all/v^T K ntk_all/v", None, src)
        self.put("ntk_all/evals", torch.linalg.eigvalsh(Kf), "eigenvalues of K reshaped [C*n, C*n], ascending", ["eig"], src)
        tk = torch.einsum("cicj->ij", K)
        self.put("ntk_all/trace_kernel", tk, "sum over outputs: Ktr[i, j] = sum_c K[c, i, c, j]", ["example", "example"], src)
        tot = torch.zeros_like(tk)
        for lid, layer in self.lc_all.layers.items():
            lc = LayerCollection()
            lc.add_layer(lid, layer)
            kl = torch.einsum("cicj->ij", self.gram(N, lc))
            tot += kl
            self.put(f"ntk_all/layer_trace_kernel/{lid}", kl, f"NTK restricted to layer {lid}'s parameters (GramMatrix with a one-layer LayerCollection), summed over outputs, [n, n]", ["example", "example"], src)
        self.checks["ntk_layer_trace_kernels_sum_vs_total_max_rel"] = float((tot - tk).abs().max() / tk.abs().max())
        # alignment
        asrc = "nngeometry: NTK from nngeometry, alignment computed in numpy"

        def align(A, B, centered):
            A, B = A.numpy(), B.numpy()
            if centered:
                m = A.shape[0]
                H = np.eye(m) - np.ones((m, m)) / m
                A, B = H @ A @ H, H @ B @ H
            return np.sum(A * B) / (np.linalg.norm(A) * np.linalg.norm(B))

        for tag, KK, n in (("ntk_all", K, N), ("ntk", K16, N_NTK)):
            if self.regression:
                Y = self.y[:n].double()
            else:
                Y = F.one_hot(self.y[:n], C).double()
            T = Y @ Y.T
            ktr = torch.einsum("cicj->ij", KK)
            yv = Y.T.reshape(-1)
            Kfull = KK.reshape(C * n, C * n)
            for cen, ct in ((False, "plain"), (True, "centered")):
                self.put(f"align/{tag}/trace_kernel/{ct}", np.float64(align(ktr, T, cen)),
                         ("<Ktr, T>_F / (||Ktr||_F ||T||_F), Ktr[i,j] = sum_c K[c,i,c,j], T = " + ("y y^T (regression targets)" if self.regression else "Y Y^T with Y the one-hot labels [n, C] (T[i,j] = 1 iff same class)")) if not cen else "same with Ktr -> H Ktr H and T -> H T H, H = I_n - 11^T/n", None, asrc)
                self.put(f"align/{tag}/full_kernel/{ct}", np.float64(align(Kfull, torch.outer(yv, yv), cen)),
                         "<K, y y^T>_F / (||K||_F ||y y^T||_F) with K reshaped [C*n, C*n] and y[c*n + i] = Y[i, c]" if not cen else "same with K -> H K H and yy^T -> H yy^T H, H = I_{C n} - 11^T/(C n)", None, asrc)

    # -- independent check ----------------------------------------------------
    def independent(self):
        model = self.model
        # parameters in nngeometry's flat order
        names = []
        for lid, layer in self.lc_all.layers.items():
            names.append(lid + ".weight")
            if getattr(self.mods[lid], "bias", None) is not None:
                names.append(lid + ".bias")
        params = {k: p.detach() for k, p in model.named_parameters()}
        assert sorted(names) == sorted(params), (names, list(params))
        buffers = {k: b for k, b in model.named_buffers()}

        def f(plist, xi):
            return forward_functional(model, dict(zip(names, plist)), buffers, xi)

        plist = [params[k] for k in names]
        # J over all examples: [n, C, P]
        jac = torch.func.jacrev(f)(plist, self.x)
        J = torch.cat([j.reshape(N, self.C, -1) for j in jac], dim=2)
        # op list executed by hand (not via GraphNet.forward)
        mods = dict(model.named_modules())

        def f_ops(plist, xi):
            pd = dict(zip(names, plist))
            env = {"x": xi}
            for s in model.steps:
                a = [env[i] for i in s["inputs"]]
                if s["op"] == "module":
                    mname = s["module"]
                    m = mods[mname]
                    W = pd.get(mname + ".weight")
                    B = pd.get(mname + ".bias")
                    if isinstance(m, nn.Conv1d):
                        r = F.conv1d(a[0], W, B, m.stride, m.padding, m.dilation, m.groups)
                    elif isinstance(m, nn.Conv2d):
                        r = F.conv2d(a[0], W, B, m.stride, m.padding, m.dilation, m.groups)
                    elif isinstance(m, nn.ConvTranspose2d):
                        r = F.conv_transpose2d(a[0], W, B, m.stride, m.padding, m.output_padding, m.groups, m.dilation)
                    elif isinstance(m, nn.Linear):
                        r = a[0] @ W.T + (B if B is not None else 0)
                    elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                        sh = [1, -1] + [1] * (a[0].dim() - 2)
                        r = (a[0] - m.running_mean.view(sh)) / torch.sqrt(m.running_var.view(sh) + m.eps)
                        if W is not None:
                            r = r * W.view(sh) + B.view(sh)
                    elif isinstance(m, (nn.InstanceNorm1d, nn.InstanceNorm2d)):
                        assert not m.track_running_stats
                        dims = tuple(range(2, a[0].dim()))
                        mu = a[0].mean(dims, keepdim=True)
                        var = ((a[0] - mu) ** 2).mean(dims, keepdim=True)
                        r = (a[0] - mu) / torch.sqrt(var + m.eps)
                        if W is not None:
                            sh = [1, -1] + [1] * (a[0].dim() - 2)
                            r = r * W.view(sh) + B.view(sh)
                    elif isinstance(m, nn.GroupNorm):
                        n_, c_ = a[0].shape[:2]
                        z = a[0].reshape(n_, m.num_groups, -1)
                        mu = z.mean(-1, keepdim=True)
                        var = ((z - mu) ** 2).mean(-1, keepdim=True)
                        z = ((z - mu) / torch.sqrt(var + m.eps)).reshape(a[0].shape)
                        sh = [1, -1] + [1] * (a[0].dim() - 2)
                        r = z * W.view(sh) + B.view(sh) if W is not None else z
                    elif isinstance(m, nn.LayerNorm):
                        dims = tuple(range(a[0].dim() - len(m.normalized_shape), a[0].dim()))
                        mu = a[0].mean(dims, keepdim=True)
                        var = ((a[0] - mu) ** 2).mean(dims, keepdim=True)
                        r = (a[0] - mu) / torch.sqrt(var + m.eps)
                        if W is not None:
                            r = r * W + (B if B is not None else 0)
                    elif isinstance(m, nn.LeakyReLU):
                        r = torch.where(a[0] > 0, a[0], m.negative_slope * a[0])
                    elif isinstance(m, nn.ELU):
                        r = torch.where(a[0] > 0, a[0], m.alpha * torch.expm1(torch.clamp_max(a[0], 0)))
                    elif isinstance(m, nn.SiLU):
                        r = a[0] / (1 + torch.exp(-a[0]))
                    elif isinstance(m, (nn.Identity, nn.Dropout)):
                        r = a[0]
                    elif isinstance(m, nn.Flatten):
                        r = a[0].reshape(a[0].shape[0], -1)
                    elif isinstance(m, nn.ReLU):
                        r = torch.clamp_min(a[0], 0)
                    elif isinstance(m, nn.Tanh):
                        r = torch.tanh(a[0])
                    elif isinstance(m, nn.GELU):
                        r = 0.5 * a[0] * (1 + torch.erf(a[0] / np.sqrt(2)))
                    elif isinstance(m, nn.MaxPool2d):
                        r = pool2d_manual(a[0], "max", m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
                    elif isinstance(m, nn.AvgPool2d):
                        r = pool2d_manual(a[0], "avg", m.kernel_size, m.stride, m.padding, 1, m.ceil_mode,
                                          m.count_include_pad, m.divisor_override)
                    elif isinstance(m, nn.AdaptiveAvgPool2d):
                        r = F.adaptive_avg_pool2d(a[0], m.output_size)
                    elif isinstance(m, nn.AdaptiveMaxPool2d):
                        r = adaptive_manual(a[0], "max", pair(m.output_size))
                    elif isinstance(m, (nn.AdaptiveMaxPool1d, nn.AdaptiveAvgPool1d)):
                        kind = "max" if isinstance(m, nn.AdaptiveMaxPool1d) else "avg"
                        r = adaptive_manual(a[0].unsqueeze(2), kind, (1, m.output_size)).squeeze(2)
                    elif isinstance(m, nn.MaxPool1d):
                        r = pool2d_manual(a[0].unsqueeze(2), "max", (1, m.kernel_size), (1, m.stride), (0, m.padding),
                                          (1, m.dilation), m.ceil_mode).squeeze(2)
                    elif isinstance(m, nn.AvgPool1d):
                        r = pool2d_manual(a[0].unsqueeze(2), "avg", (1, m.kernel_size[0]), (1, m.stride[0]), (0, m.padding[0]),
                                          1, m.ceil_mode, m.count_include_pad).squeeze(2)
                    else:
                        raise ValueError(m)
                elif s["op"] == "add":
                    r = a[0] + a[1]
                elif s["op"] == "cat":
                    r = torch.cat(a, dim=s["dim"])
                elif s["op"] == "flatten":
                    r = torch.flatten(a[0], 1)
                env[s["output"]] = r
            return env[model.out_name]

        jac2 = torch.func.jacrev(f_ops)(plist, self.x)
        J2 = torch.cat([j.reshape(N, self.C, -1) for j in jac2], dim=2)
        ck = self.checks
        with torch.no_grad():
            ck["forward_op_list_vs_module_max_abs"] = float((f_ops(plist, self.x) - model(self.x)).abs().max())
        ck["jacobian_graph_op_list_vs_functional_call_max_abs"] = float((J - J2).abs().max())
        ck["jacobian_graph_op_list_vs_functional_call_max_rel"] = float((J - J2).abs().max() / J.abs().max())
        ck["jacobian_first_example_vs_jacrev_max_abs"] = float((torch.tensor(self.T["jac/logits"])[:, 0, :] - J2[0]).abs().max())
        # finite differences on the first example
        flatp = torch.cat([p.reshape(-1) for p in plist])
        sizes = [p.numel() for p in plist]

        def f_flat(fp):
            ps = [t.reshape(p.shape) for t, p in zip(torch.split(fp, sizes), plist)]
            return f_ops(ps, self.x[:1])[0]
        h = 1e-6
        idx = torch.linspace(0, flatp.numel() - 1, 40).long()
        fd = []
        for i in idx:
            e = torch.zeros_like(flatp)
            e[i] = h
            fd.append((f_flat(flatp + e) - f_flat(flatp - e)) / (2 * h))
        fd = torch.stack(fd, 1)
        ck["jacobian_first_example_vs_central_fd_max_abs_40_params"] = float((fd - J2[0][:, idx]).abs().max())
        with torch.no_grad():
            out = f_ops(plist, self.x)
        if self.regression:
            Fref = torch.einsum("icp,icq->pq", J2, J2) / N
        else:
            p = torch.softmax(out, 1)
            Mi = -p[:, :, None] * p[:, None, :]
            dg = p * (1 - p)
            Mi = Mi.clone()
            idxc = torch.arange(self.C)
            Mi[:, idxc, idxc] = dg
            Fref = torch.einsum("icp,icd,idq->pq", J2, Mi, J2) / N
        Md = torch.tensor(self.mats["dense"][0].to_torch().numpy())
        sc = Fref.abs().max()
        ck["fim_ref_max_abs_entry"] = float(sc)
        ck["fim_dense_vs_jacrev_max_rel"] = float((Md - Fref).abs().max() / sc)
        Fref1 = None
        for rep in ("diag", "blockdiag", "lowrank"):
            if f"fim/{rep}/diag" in self.T:
                ck[f"fim_{rep}_diag_vs_jacrev_max_rel"] = float(np.abs(self.T[f"fim/{rep}/diag"] - torch.diagonal(Fref).numpy()).max() / sc)
        v = torch.tensor(self.T["fim/v"])
        Fv = Fref @ v
        ck["fim_dense_mv_vs_jacrev_max_rel"] = float(np.abs(self.T["fim/dense/mv"] - Fv.numpy()).max() / Fv.abs().max())
        if "fim/implicit/mv" in self.T:
            if self.rep_lc["implicit"] == "all":
                ref = Fv
            else:
                ix = torch.tensor(self.kron_index)
                ref = Fref[ix][:, ix] @ v[ix]
            ck["fim_implicit_mv_vs_jacrev_max_rel"] = float(np.abs(self.T["fim/implicit/mv"] - ref.numpy()).max() / ref.abs().max())
        sol = np.linalg.solve(Fref.numpy() + REGUL * np.eye(self.P), v.numpy())
        ck["fim_dense_solve_vs_numpy_solve_max_rel"] = float(np.abs(self.T["fim/dense/solve"] - sol).max() / np.abs(sol).max())
        # normwise backward error of nngeometry's solve (M = its dense FIM, A = M + regul I):
        # ||A x - v||_inf / (||A||_inf ||x||_inf + ||v||_inf); the forward difference above is up to cond(A) times it
        A_ = Md.numpy() + REGUL * np.eye(self.P)
        xs = self.T["fim/dense/solve"]
        ck["fim_dense_solve_backward_error"] = float(np.abs(A_ @ xs - v.numpy()).max() / (np.abs(A_).sum(1).max() * np.abs(xs).max() + np.abs(v.numpy()).max()))
        ck["fim_dense_cond_estimate"] = float((np.linalg.eigvalsh(Md.numpy()).max() + REGUL) / REGUL)
        if self.multi_out and "fim/lowrank/solve" in self.T:
            # LowRank solve from numpy's SVD of the jacrev Jacobian [C*n, P] / sqrt(n) (output-major rows)
            Jm = (J2.permute(1, 0, 2).reshape(self.C * N, -1) / np.sqrt(N)).numpy()
            _, S_, Vt = np.linalg.svd(Jm, full_matrices=False)
            xl = Vt.T @ ((Vt @ v.numpy()) / (S_ ** 2 + REGUL))
            ck["fim_lowrank_solve_vs_numpy_svd_max_rel"] = float(np.abs(self.T["fim/lowrank/solve"] - xl).max() / np.abs(xl).max())
            ck["fim_lowrank_sv_ratio"] = float(S_.max() / S_.min())
        # NTK
        Jf = J2.permute(1, 0, 2).reshape(self.C * N, -1)
        Kref = (Jf @ Jf.T).reshape(self.C, N, self.C, N)
        ck["ntk_all_vs_JJT_max_rel"] = float((self.K64 - Kref).abs().max() / Kref.abs().max())
        ck["ntk_dense_vs_all_block_max_abs"] = float(np.abs(self.T["ntk/dense"] - self.K64[:, :N_NTK, :, :N_NTK].numpy()).max())
        if not self.regression:
            g = []
            for i in range(N):
                g.append((J2[i] * 1.0)[self.y[i]] - torch.softmax(out[i], 0) @ J2[i])
            G = torch.stack(g)
            Eref = G.T @ G / N
            ck["efim_dense_vs_jacrev_max_rel"] = float((self.efim - Eref).abs().max() / Eref.abs().max())
        # KFAC factors recomputed by hand (im2col + per-position output grads)
        self.kfac_check(plist, names, f_ops)
        bad = {k: val for k, val in ck.items() if k.endswith("rel") and val > 1e-9 and "solve" not in k}
        if bad:
            raise RuntimeError(f"{self.name}: independent check failed: {bad}")

    def kfac_check(self, plist, names, f_ops):
        kf = self.mats["kfac"][0]
        model = self.model
        mods = self.mods
        worst = 0.0
        # gradient of the pseudo-outputs w.r.t. every layer output: perturb outputs via additive zero
        for lid, (a_ref, g_ref) in kf.data.items():
            m = mods[lid]
            store = {}

            def hook(mod, inp, out):
                store["x"] = inp[0].detach()
                out.retain_grad()
                store["y"] = out
            hd = m.register_forward_hook(hook)
            out = model(self.x)
            hd.remove()
            xin = store["x"]
            if isinstance(m, nn.Conv2d):
                A = F.unfold(xin, m.kernel_size, m.dilation, m.padding, m.stride)  # [n, sA0, L]
                A = A.permute(0, 2, 1).reshape(-1, A.shape[1])
                Lpos = store["y"].shape[2] * store["y"].shape[3]
            elif isinstance(m, nn.Conv1d):
                xpad = F.pad(xin, (m.padding[0], m.padding[0]))
                Lo = store["y"].shape[2]
                # manual im2col: column (c, a) of row (i, l) = x_padded[i, c, l*stride + a*dilation]
                cols = torch.stack([xpad[:, :, l * m.stride[0]: l * m.stride[0] + m.dilation[0] * (m.kernel_size[0] - 1) + 1: m.dilation[0]] for l in range(Lo)], 1)
                A = cols.reshape(-1, cols.shape[2] * cols.shape[3])
                Lpos = Lo
            else:
                A = xin
                Lpos = 1
            if m.bias is not None:
                A = torch.cat([A, torch.ones(A.shape[0], 1)], 1)
            # pseudo-outputs
            if self.regression:
                fo = out
            else:
                p = torch.softmax(out, 1).detach()
                C = p.shape[1]
                Mi = -p[:, :, None] * p[:, None, :]
                idxc = torch.arange(C)
                Mi[:, idxc, idxc] = p * (1 - p)
                # factor B_i with B_i^T B_i = M_i, C-1 rows: eigen decomposition (basis-free for G)
                ev, U = torch.linalg.eigh(Mi)
                Bm = (U * ev.clamp_min(0).sqrt()[:, None, :]).transpose(1, 2)  # [n, C, C] rows
                fo = torch.einsum("ioc,ic->io", Bm, out)
            n_out = self.n_out
            GG = 0
            for o in range(fo.shape[1]):
                gy = torch.autograd.grad(fo[:, o].sum(), store["y"], retain_graph=True)[0]
                if gy.dim() == 4:
                    gy = gy.permute(0, 2, 3, 1).reshape(-1, gy.shape[1])
                elif gy.dim() == 3:
                    gy = gy.permute(0, 2, 1).reshape(-1, gy.shape[1])
                GG = GG + gy.T @ gy
            Aref = A.T @ A * np.sqrt(n_out) / N
            Gref = GG / (np.sqrt(n_out) * N * Lpos)
            ea = float((a_ref - Aref).abs().max() / Aref.abs().max())
            eg = float((g_ref - Gref).abs().max() / Gref.abs().max())
            worst = max(worst, ea, eg)
        self.checks["kfac_factors_vs_manual_max_rel"] = worst


# ----------------------------------------------------------------- the cases
def children_tree(model):
    return {n: [f"{n}.{c}" if n else c for c, _ in m.named_children()] for n, m in model.named_modules()}


def write_case(name, summary, model, steps, out_name, b, info, input_desc, training, chain=False):
    P = b.P
    sd = model.state_dict()
    mods_desc = []
    tree = children_tree(model)
    applied = {}
    for s in steps:
        if s["op"] == "module":
            applied.setdefault(s["module"], []).append(s["step"])
    # step shapes
    env = {"x": b.x[:1]}
    mods = dict(model.named_modules())
    with torch.no_grad():
        for s in steps:
            a = [env[i] for i in s["inputs"]]
            if s["op"] == "module":
                r = mods[s["module"]](a[0])
            elif s["op"] == "add":
                r = a[0] + a[1]
            elif s["op"] == "cat":
                r = torch.cat(a, 1)
            else:
                r = torch.flatten(a[0], 1)
            env[s["output"]] = r
            s["shape"] = list(r.shape[1:])
    for mname, m in model.named_modules():
        if mname == "":
            continue
        if tree[mname]:
            mods_desc.append({"name": mname, "type": m.__class__.__name__, "container": True, "children": tree[mname],
                              "note": "container: its children are applied by the parent's forward (see forward.steps)"})
            continue
        d, ts = describe_module(mname, m, sd.keys())
        if ts:
            d["tensors"] = [{"key": k, "shape": list(sd[k].shape), "dtype": str(sd[k].dtype).replace("torch.", "")} for k in ts]
        d["applied_in_steps"] = applied.get(mname, [])
        mods_desc.append(d)
    layers = []
    for lid, layer in b.lc_all.layers.items():
        off = b.lc_all.p_pos[lid]
        m = mods[lid]
        e = {"layer_id": lid, "type": m.__class__.__name__, "offset": off, "numel": layer.numel()}
        e["weight"] = {"key": lid + ".weight", "offset": off, "shape": list(m.weight.shape), "numel": m.weight.numel()}
        if getattr(m, "bias", None) is not None:
            e["bias"] = {"key": lid + ".bias", "offset": off + m.weight.numel(), "shape": list(m.bias.shape), "numel": m.bias.numel()}
        layers.append(e)
    po = {
        "convention": "Flat parameter vector (nngeometry LayerCollection.from_model / PVector.to_torch): modules are visited in model.named_modules() order (registration order, see model.modules), NOT the execution order. Every module with parameters is one 'layer' and contributes its weight flattened row-major (C order) in its PyTorch shape (Conv2d [out_c, in_c/groups, kh, kw]; Conv1d [out_c, in_c/groups, k]; ConvTranspose2d [in_c, out_c/groups, kh, kw]; Linear [out, in]; BatchNorm/GroupNorm [C] = gamma; LayerNorm normalized_shape), immediately followed by its bias if it has one. Activations, pooling, Identity, Dropout, norms without affine parameters, containers and the flatten / add / cat steps contribute nothing; BatchNorm running statistics are buffers.",
        "total": P, "layers": layers}
    if b.left_out:
        cl = []
        for lid in b.lc_kron.layers:
            m = mods[lid]
            off = b.lc_kron.p_pos[lid]
            full = b.lc_all.p_pos[lid]
            e = {"layer_id": lid, "type": m.__class__.__name__, "offset": off, "full_offset": full, "numel": b.lc_all.layers[lid].numel(),
                 "weight": {"key": lid + ".weight", "offset": off, "full_offset": full, "shape": list(m.weight.shape), "numel": m.weight.numel()}}
            if m.bias is not None:
                e["bias"] = {"key": lid + ".bias", "offset": off + m.weight.numel(), "full_offset": full + m.weight.numel(), "shape": list(m.bias.shape), "numel": m.bias.numel()}
            cl.append(e)
        po["conv_linear"] = {
            "convention": "The Conv2d/Linear layer collection: the same layers in the same (named_modules) order with every other parameterised layer (" + ", ".join(sorted({mods[l].__class__.__name__ + ('(groups>1)' if getattr(mods[l], 'groups', 1) > 1 and isinstance(mods[l], nn.Conv2d) else '') for l in b.left_out})) + ") left out, each contributing weight then bias exactly as in the full order. Its flat vector ('param_conv_linear', length 'total') is the full flat vector restricted to these layers: entry k is full entry fim/conv_linear_index[k]. KFAC, EKFAC, EKFAC after update_diag, and any representation listed as 'conv_linear' in fim.representation_layer_collection are built by nngeometry over this collection (FIM(..., layer_collection=...)), so their vectors and matrices use this order and their mv / vTMv / solve take fim/v_conv_linear = fim/v[fim/conv_linear_index].",
            "total": int(len(b.kron_index)), "left_out": b.left_out, "layers": cl}
    fimd = {
        "call": f"nngeometry.FIM(model, DataLoader(TensorDataset(inputs, {'targets' if b.regression else 'labels'}), batch_size=64), Representation, variant='{b.variant}')",
        "definition": ((f"Fisher of the Gaussian model y ~ N(f(x), I_{b.multi_out}) (variant='regression', {b.multi_out} outputs): F = 1/n sum_i J_i^T J_i = 1/n sum_i sum_(c<{b.multi_out}) J_ic^T J_ic, J_i = d f(x_i)/d theta [{b.multi_out}, P]; n_out = {b.multi_out}: nngeometry's FIM function is the model output itself, so its pseudo-outputs are the {b.multi_out} outputs" if b.multi_out else
                        "Fisher of the Gaussian model y ~ N(f(x), I) (variant='regression'): F = 1/n sum_i J_i^T J_i, J_i = d f(x_i)/d theta [1, P]; n_out = 1") if b.regression else
                       "True Fisher of the softmax model p(y|x) = softmax(f(x)), averaged over the n examples: F = 1/n sum_i J_i^T (diag(p_i) - p_i p_i^T) J_i with J_i = d logits_i / d theta [C, P]. nngeometry computes it as the covariance of n_out = C-1 pseudo-outputs (exact Cholesky factor of diag(p)-pp^T)."),
        "n_out_pseudo_outputs": b.n_out, "solve_regul": REGUL,
        "representations": list(REPS), "solve": SOLVE_DOC,
        "kfac_convention": "As digits_resnet (see its fim.kfac_convention): A = sqrt(n_out)/n sum a a^T (Conv2d: im2col patches with the layer's stride/padding/dilation, zero padding included, bias's constant 1 last; Conv1d likewise along the length, patch index c*k + a, L = output length), G = 1/(sqrt(n_out) n L) sum gy gy^T; block = kron(G, A) on [weight.view(sG,-1) | bias]; a layer without bias has no constant-1 input.",
        "ekfac_convention": "As digits_resnet (see its fim.ekfac_convention): kfe_diag [sG, sA], index [k, j] <-> (eigenvector k of G, eigenvector j of A), both ascending torch.linalg.eigh; fim/ekfac = evals products, fim/ekfac_upd after update_diag.",
        "blocks_stored_for_layers": [l for l, ly in b.lc_all.layers.items() if ly.numel() <= BLOCK_MAX],
        "blocks_stored_for": ["dense"],
        "kfac_layers": b.kfac_layers,
        "layer_collections": {"all": f"every layer with parameters, P = {P}: parameter_ordering.layers; vectors have dims 'param' and use fim/v"},
        "representation_layer_collection": b.rep_lc,
    }
    if b.multi_out:
        C = b.multi_out
        fimd["kfac_convention"] += f" Here n_out = {C}: the {C} regression outputs (not 1), see fim.multi_output_convention."
        fimd["multi_output_convention"] = (
            f"variant='regression' with {C} outputs (fim.n_out_pseudo_outputs = fim/lowrank/n_out = {C}): nngeometry's FIM function is the model output f(x) [n, {C}] itself, "
            f"so its {C} pseudo-outputs are the {C} outputs (no Cholesky factor / transform) and F = 1/n sum_i sum_(c<{C}) J_ic^T J_ic. "
            f"LowRank: data = J/sqrt(n) [{C}, n, P] (output-major; reshaped [{C}*n, P] row c*n + i), min({C}*n, P) eigenvalues. "
            f"KFAC: A = sqrt({C})/n sum_i sum_loc a a^T (each example's input once, not once per output), G = 1/(sqrt({C}) n L) sum_i sum_(c<{C}) sum_loc gy_c gy_c^T; "
            f"kron(G, A) = 1/(n^2 L) (sum_i sum_loc a a^T) (x) (sum_i sum_c sum_loc gy_c gy_c^T), independent of the sqrt({C}) split. "
            f"EKFAC: fim/ekfac kfe_diag = evals_G (x) evals_A; after update_diag: 1/n sum_i sum_(c<{C}) (U_G^T Gw_ic U_A)^2. "
            f"Jacobian jac/logits [{C}, 1, P]; NTK [{C}, n, {C}, n] with output index c = model output c. Every key's meaning in 'keys' restates the part of this that applies to it.")
    if b.left_out:
        fimd["layer_collections"]["conv_linear"] = f"the Conv2d (ungrouped) and Linear layers only, P_conv_linear = {len(b.kron_index)}: parameter_ordering.conv_linear; vectors have dims 'param_conv_linear' and use fim/v_conv_linear"
        if b.rep_lc["kfac"] == "conv_linear":
            fimd["kfac_layer_collection"] = "KFAC / EKFAC / EKFAC-updated (and any representation marked conv_linear) are built over the Conv2d/Linear collection only; see unsupported_in_nngeometry for why"
        else:
            fimd["kfac_layer_collection"] = "KFAC / EKFAC / EKFAC-updated are built over all layers; only the representations marked conv_linear in fim.representation_layer_collection (" + ", ".join(r for r, t in b.rep_lc.items() if t == "conv_linear") + ") are built over the Conv2d/Linear collection; see unsupported_in_nngeometry for why"
    if chain:
        # digits_cnn's format: model.layers = nn.Sequential, one entry per index
        seq = []
        for i, m in enumerate(model.layers):
            lname = f"layers.{i}"
            d, ts = describe_module(lname, m, sd.keys())
            d = {"index": i, **d}
            if ts:
                d["tensors"] = [{"key": k, "shape": list(sd[k].shape), "dtype": str(sd[k].dtype).replace("torch.", "")} for k in ts]
            d["output_shape"] = steps[i]["shape"]
            seq.append(d)
        model_desc = {
            "container": "model.layers = torch.nn.Sequential(...); output = model.layers(inputs)",
            "layers": seq,
            "input_shape": list(b.x.shape[1:]),
            "layer_conventions": "'layers' lists the Sequential's modules in index order with their hyperparameters and state_dict tensors (keys 'layers.<index>.<tensor>'); 'output_shape' is the per-example output shape of each layer. Every module runs in eval mode.",
            "output": f"regression output [n, {b.multi_out or 1}]" if b.regression else "logits [n, 10] (no softmax in the model)",
            **training, "n_params": P}
    else:
        model_desc = {
            "container": f"graph model (class {model.cls_name}), not a Sequential: rebuild it from 'modules' and 'forward' (see graph_conventions)",
            "graph_conventions": "As digits_resnet: 'modules' lists every submodule in model.named_modules() order (root excluded; containers have 'children' and no tensors), with hyperparameters and state_dict tensors. 'forward.steps' is the exact forward computation, in order: each step reads the named tensors in 'inputs' ('x' = input batch) and writes 'output' (step k writes 't<k>'); op 'module' applies the named module (parameter-free modules may be applied several times), op 'add' is the elementwise sum of its two inputs, op 'cat' is torch.cat(inputs, dim=1) (channel / feature concatenation, inputs in the listed order), op 'flatten' is torch.flatten(., 1). 'shape' is the per-example output shape. The output is forward.output. Every module runs in eval mode.",
            "root": {"type": model.cls_name, "children": tree[""]},
            "modules": mods_desc,
            "forward": {"input": "x", "input_shape": list(b.x.shape[1:]), "output": out_name, "steps": steps},
            "state_dict_keys": "module path + '.' + tensor name, exactly model.state_dict(); they are the safetensors keys of the weights; 'flat_params' holds the same parameters as one vector in parameter_ordering order",
            "output": (f"forward.output = regression output [n, {b.multi_out}]: the means of the {b.multi_out} targets (column c of 'outputs' <-> column c of 'targets')" if b.multi_out else "forward.output = regression output [n, 1]") if b.regression else "forward.output = logits [n, 10] (no softmax in the model)",
            **training, "n_params": P}
    j = {
        "case": name, "summary": summary, "file": f"{name}.safetensors",
        "dtype": "float64 for every floating tensor; int64: 'labels', 'fim/lowrank/n_out' and BatchNorm's 'num_batches_tracked'; scalars are 0-d tensors (shape [])",
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "nngeometry": getattr(nngeometry, "__version__", "0.4"), "numpy": np.__version__, "platform": platform.platform()},
        "dataset": input_desc,
        "model": model_desc,
        "parameter_ordering": po, "fim": fimd,
        "ntk": {"call": "nngeometry.GramMatrix(model, DataLoader(TensorDataset(inputs[:n_ntk], ...)))  (function = model outputs; FMatDense)", "n_ntk": N_NTK,
                "layout": "[n_out, n_examples, n_out, n_examples]: K[c, i, d, j] = <d f_c(x_i), d f_d(x_j)>. Reshaped to 2-d it is [C*n, C*n] with row index c*n + i (output-major).",
                "ntk_all": "statistics of the same kernel over all n = 64 examples; ntk/dense is exactly its [:, :n_ntk, :, :n_ntk] sub-block"},
        "alignment": "A(K, T) = <K, T>_F / (||K||_F ||T||_F); centered: K -> H K H, T -> H T H with H = I - 11^T/m (m = matrix size). Computed in numpy from nngeometry's dense NTK." + ((f" Regression with {b.multi_out} outputs: Y = targets [n, {b.multi_out}]; trace_kernel: T = Y Y^T [n, n]; full_kernel: T = y y^T with y[c*n + i] = Y[i, c] ([{b.multi_out}*n], output-major like K)." if b.multi_out else " Regression: T = y y^T.") if b.regression else ""),
        "keys": b.K,
        "provenance": {"note": "every key's entry in 'keys' has a 'source'"},
        "unsupported_in_nngeometry": b.unsup,
        "notes": info,
        "independent_check": {"method": "J = torch.func.jacrev of the op list executed by hand with F.conv2d / F.conv1d / F.conv_transpose2d / explicit norm and activation formulas / pooling by explicit window enumeration with its own output-size and divisor rules (no nngeometry, no hooks), and of torch.func.functional_call on the module; F_ref = 1/n sum J_i^T M_i J_i, NTK_ref = J J^T, empirical Fisher from per-example gradients, KFAC factors from manual im2col and autograd output gradients (an eigen-factor of M_i: G is basis-invariant), numpy solve. 'rel' = max|a-b| / max|b|.", "results": b.checks},
    }
    if not b.left_out:
        j["parameter_ordering"].pop("conv_linear", None)
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, f"{name}.json"), "w") as f:
        json.dump(j, f, indent=1)
    st_write(os.path.join(OUT, f"{name}.safetensors"), b.T)
    print(f"{name}: P={P}, {len(b.T)} tensors, checks:", json.dumps(b.checks, indent=0))


def out_positions(model, x):
    """L (number of output positions) of every Conv/Linear layer."""
    res = {}
    hs = []
    for n, m in model.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            def h(mod, i, o, n=n):
                res[n] = int(o[0, 0].numel()) if o.dim() >= 3 else 1
            hs.append(m.register_forward_hook(h))
    with torch.no_grad():
        model(x[:1])
    for h in hs:
        h.remove()
    return res


def classification_notes(model, x, y):
    with torch.no_grad():
        p = torch.softmax(model(x), 1)
    return {"accuracy_on_oracle_rows": float((p.argmax(1) == y).double().mean()),
            "max_prob_range": [float(p.max(1).values.min()), float(p.max(1).values.max())],
            "one_minus_max_prob_range": [float(1 - p.max(1).values.max()), float(1 - p.max(1).values.min())]}


def relu_zero_probe(model, x, kinds=(nn.ReLU,)):
    """How many inputs of the `kinds` activations are exactly 0 (their kink)."""
    cnt = [0]
    hs = []

    def h(mod, i, o):
        cnt[0] += int((i[0] == 0).sum())
    for m in model.modules():
        if isinstance(m, kinds):
            hs.append(m.register_forward_hook(h))
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    return cnt[0]


DIGITS_DESC = {
    "source": "sklearn.datasets.load_digits rows [0, 64) (the same 64 inputs/labels as digits_resnet, copied from its safetensors file)",
    "scaling": "pixel / 16.0", "input_layout": "[n, 1, 8, 8] (NCHW)", "labels": "int64 class ids 0..9 in 'labels'; one-hot float64 in 'onehot' [n, 10]", "n": N,
}


def build_case(name, cls_name, build, spec, summary, seed, conv_impl=False, regression=False, extra_unsup=None,
               input_shape=None, chain=False, data_fn=None, data_desc=None):
    """input_shape: per-example shape the regression rows [n, 8] are reshaped to.
    chain: the model is `layers` = nn.Sequential applied in order (spec None);
    the sidecar describes it in digits_cnn's format (model.layers).
    data_fn: replaces regression_data() / digits() (same dict layout);
    data_desc: entries that replace those of the dataset description."""
    if chain:
        tmp = nn.Module()
        build(tmp)
        spec = [("module", f"layers.{i}", ["x" if i == 0 else f"t{i}"]) for i in range(len(tmp.layers))]
    steps, out_name = make_steps(spec)
    data = data_fn() if data_fn is not None else (regression_data() if regression else digits())
    if input_shape is not None:
        for k in ("x", "xtr"):
            data[k] = data[k].reshape(data[k].shape[0], *input_shape)
    torch.manual_seed(seed)
    model = GraphNet(cls_name, build, steps, out_name).double()
    if regression:
        tr = train_regressor(model, data, seed + 1)
        training = {"init": f"PyTorch default init after torch.manual_seed({seed})",
                    "training": f"full-batch SGD(lr=0.02, momentum=0.9), {tr['steps']} steps, MSE on regression rows [64, 320); training MSE {tr['training_mse_eval_mode']:.6f}"}
        desc = {"source": "numpy default_rng(20240601): X ~ N(0,1) [320, 8], y = sin(2 X.w1) + 0.5 (X.w2)^2 - 0.5 + 0.1 noise (w1, w2 ~ N(0, 1/8) from the same generator, drawn after X); rows [0, 64) are the oracle's examples", "n": N,
                "input_layout": "[n, 8]", "targets": "float64 [n, 1] in 'targets'"}
        desc.update(data_desc or {})
        info = {"training": tr}
        dims = ["example", "feature"]
        if input_shape is not None:
            desc["input_layout"] = f"[n, {', '.join(map(str, input_shape))}]: each [8] row reshaped to {list(input_shape)}" + (" (N, C, L: one channel of length 8 for Conv1d)" if list(input_shape) == [1, 8] else "")
            dims = ["example", "channel", "position"] if len(input_shape) == 2 else ["example"] + [f"d{i}" for i in range(len(input_shape))]
    else:
        tr = train_classifier(model, data, seed + 1)
        training = {"init": f"PyTorch default init after torch.manual_seed({seed}), then briefly trained",
                    "training": f"full-batch SGD(lr=0.05, momentum=0.9), {tr['steps']} steps (cap 200, stop once the training loss < 0.5), cross-entropy; {data['note_train']}",
                    "training_result": tr}
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            training["bn_calibration"] = {"what": f"after training, 5 forward passes in train mode under torch.no_grad() on {data['note_cal']}, 5 batches of 100, updating running_mean / running_var (momentum 0.1, unbiased batch variance) and num_batches_tracked; then model.eval()"}
        desc = dict(DIGITS_DESC, training_rows=data["note_train"])
        desc.update(data_desc or {})
        info = classification_notes(model, data["x"], data["y"])
        dims = ["example", "channel", "row", "col"]
        if info["one_minus_max_prob_range"][0] < 1e-6:
            raise RuntimeError(f"{name}: saturated softmax")
    info["graph_probe"] = {"relu_inputs_exactly_zero": relu_zero_probe(model, data["x"])}
    if any(isinstance(m, (nn.LeakyReLU, nn.ELU)) for m in model.modules()):
        info["graph_probe"]["leaky_relu_elu_inputs_exactly_zero"] = relu_zero_probe(model, data["x"], (nn.LeakyReLU, nn.ELU))
    info["input_dims"] = dims
    b = Builder(name, model, data["x"], data["y"], regression, conv_impl=conv_impl)
    b.out_positions = out_positions(model, data["x"])
    b.unsup.update(extra_unsup or {})
    b.run(info)
    info.pop("input_dims")
    write_case(name, summary, model, steps, out_name, b, info, desc, training, chain=chain)


# (a) GroupNorm, MaxPool2d, AvgPool2d, 3x3 stride-2 projection conv with bias.
def case_gn_pool():
    def build(m):
        m.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        m.gn1 = nn.GroupNorm(2, 8)
        m.relu = nn.ReLU()
        m.pool = nn.MaxPool2d(2, 2)          # 8x8 -> 4x4
        m.block = nn.Module()
        m.block.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        m.block.gn1 = nn.GroupNorm(2, 8)
        m.block.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False)   # 4x4 -> 2x2
        m.block.gn2 = nn.GroupNorm(2, 8)
        m.block.shortcut = nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=True)  # projection
        m.smooth = nn.AvgPool2d(3, stride=1, padding=1)  # 2x2 -> 2x2 (count_include_pad)
        m.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        m.fc = nn.Linear(8, 10)
    spec = [
        ("module", "conv1", ["x"]), ("module", "gn1", ["t1"]), ("module", "relu", ["t2"]), ("module", "pool", ["t3"]),
        ("module", "block.conv1", ["t4"]), ("module", "block.gn1", ["t5"]), ("module", "relu", ["t6"]),
        ("module", "block.conv2", ["t7"]), ("module", "block.gn2", ["t8"]),
        ("module", "block.shortcut", ["t4"]),
        ("add", None, ["t9", "t10"], "residual: gn2 output + projection shortcut (3x3 stride-2 conv with bias) of the block input t4"),
        ("module", "relu", ["t11"]), ("module", "smooth", ["t12"]), ("module", "avgpool", ["t13"]),
        ("flatten", None, ["t14"]), ("module", "fc", ["t15"]),
    ]
    build_case("digits_gn_pool", "GNPoolNet", build, spec,
               "graph model on load_digits rows 0..63 as [n,1,8,8]: conv1(1->8,k3,p1,no bias)-GroupNorm(2 groups of 4)-ReLU-MaxPool2d(2); residual block: conv(8->8,k3,p1)-GroupNorm-ReLU-conv(8->8,k3,s2,p1)-GroupNorm plus a projection shortcut Conv2d(8->8,k3,s2,p1,bias) of the block input, add, ReLU; AvgPool2d(3,s1,p1); AdaptiveAvgPool2d(1); flatten; fc(8->10). FIM Dense/Diag/BlockDiag/LowRank over all layers; KFAC/EKFAC (+QuasiDiag/Implicit where nngeometry rejects GroupNorm) over Conv2d/Linear; NTK",
               seed=21)


# (b) DenseNet-like concatenation, BatchNorm2d eval, Flatten, BatchNorm1d, Linear without bias, GELU/Tanh.
def case_dense_cat():
    def build(m):
        m.conv0 = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        m.dense = nn.Module()
        m.dense.bn1 = nn.BatchNorm2d(4)
        m.dense.act = nn.GELU()
        m.dense.conv1 = nn.Conv2d(4, 3, 3, padding=1, bias=True)
        m.dense.bn2 = nn.BatchNorm2d(7)
        m.dense.conv2 = nn.Conv2d(7, 3, 3, padding=1, bias=False)
        m.trans_bn = nn.BatchNorm2d(10)
        m.trans_conv = nn.Conv2d(10, 4, 1, bias=False)
        m.trans_pool = nn.AvgPool2d(2, 2)      # 8x8 -> 4x4
        m.bn_flat = nn.BatchNorm1d(64)
        m.fc1 = nn.Linear(64, 12, bias=False)
        m.tanh = nn.Tanh()
        m.fc2 = nn.Linear(12, 10)
    spec = [
        ("module", "conv0", ["x"]),                     # t1 [4,8,8]
        ("module", "dense.bn1", ["t1"]), ("module", "dense.act", ["t2"]), ("module", "dense.conv1", ["t3"]),  # t4 [3,8,8]
        ("cat", None, ["t1", "t4"]),                    # t5 [7,8,8]
        ("module", "dense.bn2", ["t5"]), ("module", "dense.act", ["t6"]), ("module", "dense.conv2", ["t7"]),  # t8 [3,8,8]
        ("cat", None, ["t5", "t8"]),                    # t9 [10,8,8]
        ("module", "trans_bn", ["t9"]), ("module", "dense.act", ["t10"]), ("module", "trans_conv", ["t11"]),
        ("module", "trans_pool", ["t12"]),              # t13 [4,4,4]
        ("flatten", None, ["t13"]),                     # t14 [64]
        ("module", "bn_flat", ["t14"]), ("module", "fc1", ["t15"]), ("module", "tanh", ["t16"]), ("module", "fc2", ["t17"]),
    ]
    build_case("digits_dense_cat", "DenseCatNet", build, spec,
               "DenseNet-like graph model on load_digits rows 0..63 as [n,1,8,8]: conv0(1->4,k3,p1,no bias); dense block of two BN-GELU-conv layers (growth 3) whose outputs are concatenated to their input along channels (torch.cat dim 1: 4 -> 7 -> 10 channels); transition BN-GELU-conv1x1(10->4)-AvgPool2d(2); flatten; BatchNorm1d(64); fc1(64->12, no bias); Tanh; fc2(12->10). BatchNorm in eval mode with calibrated running stats. FIM Dense/Diag/BlockDiag/LowRank over all layers; KFAC/EKFAC/QuasiDiag/Implicit over Conv2d/Linear; NTK",
               seed=31)


# (c) dilated conv, grouped conv, ConvTranspose2d, LayerNorm.
def case_conv_variants():
    def build(m):
        m.conv1 = nn.Conv2d(1, 4, 3, padding=2, dilation=2, bias=True)        # 8x8 -> 8x8
        m.ln1 = nn.LayerNorm([4, 8, 8])
        m.act = nn.ReLU()
        m.conv_s2 = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=True)  # -> [6,4,4] (groups=2 is not supported by nngeometry 0.4, see unsupported_in_nngeometry)
        m.up = nn.ConvTranspose2d(6, 3, 3, stride=2, padding=1, output_padding=1, bias=True)  # -> [3,8,8]
        m.conv2 = nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=1, bias=False)  # -> [4,4,4]
        m.conv3 = nn.Conv2d(4, 4, 2, stride=1, padding=0, dilation=2, bias=True)  # [4,4,4] -> [4,2,2]
        m.fc = nn.Linear(16, 10)
    spec = [
        ("module", "conv1", ["x"]), ("module", "ln1", ["t1"]), ("module", "act", ["t2"]),
        ("module", "conv_s2", ["t3"]), ("module", "act", ["t4"]),
        ("module", "up", ["t5"]), ("module", "act", ["t6"]),
        ("module", "conv2", ["t7"]), ("module", "act", ["t8"]),
        ("module", "conv3", ["t9"]), ("module", "act", ["t10"]),
        ("flatten", None, ["t11"]), ("module", "fc", ["t12"]),
    ]
    build_case("digits_conv_variants", "ConvVariantsNet", build, spec,
               "graph chain on load_digits rows 0..63 as [n,1,8,8] exercising conv variants: Conv2d(1->4,k3,p2,dilation 2,bias)-LayerNorm([4,8,8])-ReLU; Conv2d(4->6,k3,s2,p1)-ReLU; ConvTranspose2d(6->3,k3,s2,p1,output_padding 1)-ReLU; Conv2d(3->4,k3,s2,p1,no bias)-ReLU; Conv2d(4->4,k2,dilation 2,bias)-ReLU; flatten; fc(16->10). Dense/Diag/BlockDiag/LowRank over all layers; KFAC/EKFAC/QuasiDiag/Implicit over the ungrouped Conv2d and Linear layers (LayerNorm and ConvTranspose2d left out); NTK",
               seed=41, extra_unsup={"Conv2d(groups>1)": "not representable in nngeometry 0.4: LayerCollection's Conv2dLayer ignores groups (its weight is counted as out_c*in_c*kh*kw), so every generator fails (RuntimeError: The size of tensor a (216) must match the size of tensor b (108) in Conv2dJacobianFactory.flat_grad, with either conv-gradient implementation); this case therefore uses an ungrouped conv_s2"})


# (d) regression graph MLP with additive skips and LayerNorm.
def case_reg_skip():
    def build(m):
        m.inp = nn.Linear(8, 16)
        m.act = nn.Tanh()
        m.h1 = nn.Linear(16, 16)
        m.ln = nn.LayerNorm(16)
        m.h2 = nn.Linear(16, 16, bias=False)
        m.out = nn.Linear(16, 1)
    spec = [
        ("module", "inp", ["x"]), ("module", "act", ["t1"]),
        ("module", "h1", ["t2"]), ("module", "act", ["t3"]), ("add", None, ["t4", "t2"], "skip: tanh(h1(t2)) + t2"),
        ("module", "ln", ["t5"]),
        ("module", "h2", ["t6"]), ("module", "act", ["t7"]), ("add", None, ["t8", "t6"], "skip: tanh(h2(t6)) + t6"),
        ("add", None, ["t9", "t2"], "long skip from the first hidden layer"),
        ("module", "out", ["t10"]),
    ]
    build_case("regress_skip_mlp", "SkipMLP", build, spec,
               "graph MLP regression (variant='regression', 1 output) on the README's synthetic regression rows 0..63 [n, 8]: inp Linear(8->16)-Tanh; h1 Linear(16->16)-Tanh + skip; LayerNorm(16); h2 Linear(16->16, no bias)-Tanh + skip; long skip add; out Linear(16->1). Dense/Diag/BlockDiag/LowRank (with solve) over all layers; KFAC/EKFAC/QuasiDiag/Implicit over the Linear layers (LayerNorm left out); NTK",
               seed=51, regression=True)


# (e) LeakyReLU / ELU / SiLU, Identity shortcut, Dropout (eval), ceil-mode and padded pools.
def case_act_pool():
    def build(m):
        m.conv1 = nn.Conv2d(1, 6, 2)                          # 8x8 -> 7x7
        m.lrelu = nn.LeakyReLU(0.1)
        m.pool1 = nn.MaxPool2d(2, stride=2, ceil_mode=True)   # 7x7 -> 4x4 (ceil)
        m.block = nn.Module()
        m.block.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        m.block.elu = nn.ELU(alpha=0.7)
        m.block.conv3 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        m.block.shortcut = nn.Identity()
        m.silu = nn.SiLU()
        m.pool2 = nn.MaxPool2d(3, stride=1, padding=1, dilation=1)  # 4x4 -> 4x4 (-inf padding)
        m.pool3 = nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)  # 4x4 -> 3x3
        m.drop = nn.Dropout(0.3)
        m.fc = nn.Linear(54, 10)
    spec = [
        ("module", "conv1", ["x"]), ("module", "lrelu", ["t1"]), ("module", "pool1", ["t2"]),   # t3 [6,4,4]
        ("module", "block.conv2", ["t3"]), ("module", "block.elu", ["t4"]), ("module", "block.conv3", ["t5"]),
        ("module", "block.shortcut", ["t3"]),
        ("add", None, ["t6", "t7"], "residual: conv3 output + Identity shortcut of the block input t3"),
        ("module", "silu", ["t8"]), ("module", "pool2", ["t9"]), ("module", "pool3", ["t10"]),   # t11 [6,3,3]
        ("flatten", None, ["t11"]), ("module", "drop", ["t12"]), ("module", "fc", ["t13"]),
    ]
    build_case("digits_act_pool", "ActPoolNet", build, spec,
               "graph model on load_digits rows 0..63 as [n,1,8,8]: conv1 Conv2d(1->6,k2) (8x8 -> 7x7)-LeakyReLU(0.1)-MaxPool2d(2,s2,ceil_mode) (-> 4x4); residual block: Conv2d(6->6,k3,p1)-ELU(alpha 0.7)-Conv2d(6->6,k3,p1,no bias) plus an nn.Identity shortcut of the block input, add, SiLU; MaxPool2d(3,s1,p1) (4x4); AvgPool2d(3,s2,p1,ceil_mode,count_include_pad=False) (-> 3x3); flatten; Dropout(0.3) (identity in eval mode); fc(54->10). Every parameterised layer is Conv2d/Linear, so every representation (Dense/Diag/BlockDiag/KFAC/EKFAC/LowRank/QuasiDiag/Implicit) is over all layers; NTK",
               seed=61)


# (f) Conv1d regression: the [n, 8] rows as [n, 1, 8].
def case_reg_conv1d():
    def build(m):
        m.conv1 = nn.Conv1d(1, 4, 3, padding=2, dilation=2)   # [1,8] -> [4,8]
        m.silu = nn.SiLU()
        m.conv2 = nn.Conv1d(4, 6, 3, stride=2, padding=1)     # [4,8] -> [6,4]
        m.elu = nn.ELU()
        m.fc1 = nn.Linear(24, 8)
        m.lrelu = nn.LeakyReLU(0.05)
        m.fc2 = nn.Linear(8, 1)
    spec = [
        ("module", "conv1", ["x"]), ("module", "silu", ["t1"]), ("module", "conv2", ["t2"]), ("module", "elu", ["t3"]),
        ("flatten", None, ["t4"], "torch.flatten(x, 1): row-major flatten of [C, L] per example"),
        ("module", "fc1", ["t5"]), ("module", "lrelu", ["t6"]), ("module", "fc2", ["t7"]),
    ]
    build_case("regress_conv1d", "Conv1dRegressor", build, spec,
               "graph regression model (variant='regression', 1 output) on the README's synthetic regression rows 0..63, each [8] row reshaped to [1, 8] (one channel of length 8): Conv1d(1->4,k3,p2,dilation 2)-SiLU; Conv1d(4->6,k3,s2,p1)-ELU(alpha 1); flatten (24); Linear(24->8)-LeakyReLU(0.05); Linear(8->1). nngeometry 0.4 supports Conv1d (with stride / padding / dilation) in LayerCollection, the Jacobian and KFAC/EKFAC, so every representation is over all layers; NTK",
               seed=71, regression=True, input_shape=(1, 8))


# (g) norms without affine parameters.
def case_plain_norms():
    def build(m):
        m.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        m.bn = nn.BatchNorm2d(8, affine=False)
        m.relu = nn.ReLU()
        m.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        m.inorm = nn.InstanceNorm2d(8)
        m.tanh = nn.Tanh()
        m.conv3 = nn.Conv2d(8, 8, 3, stride=2, padding=1)     # 8x8 -> 4x4
        m.gn = nn.GroupNorm(2, 8, affine=False)
        m.ln = nn.LayerNorm(128, elementwise_affine=False)
        m.fc = nn.Linear(128, 10)
    spec = [
        ("module", "conv1", ["x"]), ("module", "bn", ["t1"]), ("module", "relu", ["t2"]),
        ("module", "conv2", ["t3"]), ("module", "inorm", ["t4"]), ("module", "tanh", ["t5"]),
        ("module", "conv3", ["t6"]), ("module", "gn", ["t7"]), ("module", "relu", ["t8"]),
        ("flatten", None, ["t9"]), ("module", "ln", ["t10"]), ("module", "fc", ["t11"]),
    ]
    build_case("digits_plain_norms", "PlainNormsNet", build, spec,
               "graph chain on load_digits rows 0..63 as [n,1,8,8] with normalisations that have no parameters: Conv2d(1->8,k3,p1)-BatchNorm2d(8, affine=False; eval mode, calibrated running statistics)-ReLU; Conv2d(8->8,k3,p1,no bias)-InstanceNorm2d(8) (affine=False, track_running_stats=False: per-example statistics in eval mode)-Tanh; Conv2d(8->8,k3,s2,p1)-GroupNorm(2, 8, affine=False)-ReLU; flatten (128); LayerNorm(128, elementwise_affine=False); Linear(128->10). The only parameters are the Conv2d/Linear ones, so every representation is over all layers (nngeometry's LayerCollection.from_model is bypassed, see unsupported_in_nngeometry); NTK",
               seed=81)


# (h) a chain case in digits_cnn's Sequential format.
def case_seq_mix():
    def build(m):
        m.layers = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.LeakyReLU(0.2), nn.MaxPool2d(2),
            nn.Conv2d(4, 6, 3, padding=1), nn.ELU(), nn.AvgPool2d(2), nn.Flatten(), nn.Dropout(0.25),
            nn.Linear(24, 16), nn.SiLU(), nn.Linear(16, 10))
    build_case("digits_seq_mix", "SeqMixNet", build, None,
               "Sequential chain (digits_cnn's format: model.layers) on load_digits rows 0..63 as [n,1,8,8]: Conv2d(1->4,k3,p1)-BatchNorm2d(4) (eval mode, calibrated running statistics)-LeakyReLU(0.2)-MaxPool2d(2); Conv2d(4->6,k3,p1)-ELU-AvgPool2d(2); Flatten (24); Dropout(0.25) (identity in eval mode); Linear(24->16)-SiLU-Linear(16->10). FIM Dense/Diag/BlockDiag/LowRank/Implicit over all layers; KFAC/EKFAC/QuasiDiag over the Conv2d/Linear layers (BatchNorm2d left out); NTK",
               seed=91, chain=True)


# (i) regression with 3 outputs: graph MLP with a skip add.
def case_reg_multi():
    def build(m):
        m.fc1 = nn.Linear(8, 12)
        m.gelu = nn.GELU()
        m.fc2 = nn.Linear(12, 12)
        m.silu = nn.SiLU()
        m.out = nn.Linear(12, 3)
    spec = [
        ("module", "fc1", ["x"]), ("module", "gelu", ["t1"]), ("module", "fc2", ["t2"]),
        ("add", None, ["t3", "t2"], "skip: fc2(t2) + t2 (t2 = GELU output)"),
        ("module", "silu", ["t4"]), ("module", "out", ["t5"]),
    ]
    build_case("regress_multi", "MultiOutMLP", build, spec,
               "graph MLP regression with 3 outputs (variant='regression', n_out = 3) on the README's synthetic regression rows 0..63 [n, 8] with a 3-column target (dataset.targets): fc1 Linear(8->12)-GELU; fc2 Linear(12->12) + skip add of its input; SiLU; out Linear(12->3). F = 1/n sum_i J_i^T J_i summed over the 3 outputs; every parameterised layer is Linear, so every representation (Dense/Diag/BlockDiag/KFAC/EKFAC/LowRank/QuasiDiag/Implicit) is over all layers; NTK [3, n, 3, n]; see fim.multi_output_convention",
               seed=101, regression=True, data_fn=regression_multi_data,
               data_desc={"source": "numpy default_rng(20240601): X ~ N(0,1) [320, 8] (the same X as regress_skip_mlp; its 1-column target is not used); " + MULTI_TARGETS + "; rows [0, 64) are the oracle's examples",
                          "targets": "float64 [n, 3] in 'targets': 3 regression targets per example, column c is the target of model output c",
                          "n_outputs": 3})


# (j) 1-d pooling on regression rows: max / average / adaptive max / adaptive average.
def case_reg_pool1d():
    def build(m):
        m.conv1 = nn.Conv1d(1, 4, 3, padding=1)                          # [1,8] -> [4,8]
        m.inorm = nn.InstanceNorm1d(4)
        m.tanh = nn.Tanh()
        m.pool1 = nn.MaxPool1d(3, stride=2, padding=1, ceil_mode=True)   # -> [4,5]
        m.conv2 = nn.Conv1d(4, 6, 2)                                     # -> [6,4]
        m.elu = nn.ELU()
        m.pool2 = nn.AvgPool1d(2, stride=1, padding=1, count_include_pad=False)  # -> [6,5]
        m.amax = nn.AdaptiveMaxPool1d(3)                                 # -> [6,3]
        m.aavg = nn.AdaptiveAvgPool1d(2)                                 # -> [6,2]
        m.fc = nn.Linear(30, 1)
    spec = [
        ("module", "conv1", ["x"]), ("module", "inorm", ["t1"]), ("module", "tanh", ["t2"]), ("module", "pool1", ["t3"]),
        ("module", "conv2", ["t4"]), ("module", "elu", ["t5"]), ("module", "pool2", ["t6"]),   # t7 [6,5]
        ("module", "amax", ["t7"]), ("module", "aavg", ["t7"]),
        ("flatten", None, ["t8"], "torch.flatten(x, 1): row-major flatten of [C, L] per example"),
        ("flatten", None, ["t9"], "torch.flatten(x, 1): row-major flatten of [C, L] per example"),
        ("cat", None, ["t10", "t11"]),
        ("module", "fc", ["t12"]),
    ]
    build_case("regress_pool1d", "Pool1dRegressor", build, spec,
               "graph regression model (variant='regression', 1 output) on the README's synthetic regression rows 0..63, each [8] row reshaped to [1, 8]: Conv1d(1->4,k3,p1)-InstanceNorm1d(4) (affine=False, track_running_stats=False: per-example statistics in eval mode)-Tanh-MaxPool1d(3,s2,p1,ceil_mode) (-> [4,5]); Conv1d(4->6,k2)-ELU-AvgPool1d(2,s1,p1,count_include_pad=False) (-> [6,5]); two branches of that: AdaptiveMaxPool1d(3) (windows [0,2),[1,4),[3,5)) and AdaptiveAvgPool1d(2) (windows [0,3),[2,5)), each flattened, concatenated (18 + 12); Linear(30->1). Every parameterised layer is Conv1d/Linear, so every representation is over all layers; NTK",
               seed=111, regression=True, input_shape=(1, 8))


# (k) adaptive max pooling of images: overlapping uneven windows and global max beside global average.
def case_adaptive_max():
    def build(m):
        m.conv1 = nn.Conv2d(1, 6, 3)                  # 8x8 -> 6x6
        m.relu = nn.ReLU()
        m.pool = nn.AdaptiveMaxPool2d((4, 3))          # 6x6 -> 4x3
        m.conv2 = nn.Conv2d(6, 8, 3, padding=1)       # -> [8,4,3]
        m.tanh = nn.Tanh()
        m.gmax = nn.AdaptiveMaxPool2d(1)
        m.gavg = nn.AdaptiveAvgPool2d(1)
        m.fc = nn.Linear(16, 10)
    spec = [
        ("module", "conv1", ["x"]), ("module", "relu", ["t1"]), ("module", "pool", ["t2"]),
        ("module", "conv2", ["t3"]), ("module", "tanh", ["t4"]),
        ("module", "gmax", ["t5"]), ("module", "gavg", ["t5"]),
        ("cat", None, ["t6", "t7"]), ("flatten", None, ["t8"]), ("module", "fc", ["t9"]),
    ]
    build_case("digits_adaptive_max", "AdaptiveMaxNet", build, spec,
               "graph model on load_digits rows 0..63 as [n,1,8,8]: Conv2d(1->6,k3) (-> 6x6)-ReLU-AdaptiveMaxPool2d((4,3)) (rows [0,2),[1,3),[3,5),[4,6), cols [0,2),[2,4),[4,6)); Conv2d(6->8,k3,p1)-Tanh; global max pooling AdaptiveMaxPool2d(1) and global average pooling AdaptiveAvgPool2d(1) of it concatenated along channels ([16,1,1]); flatten; fc(16->10). Every parameterised layer is Conv2d/Linear, so every representation is over all layers; NTK",
               seed=121)


# Not generated (nngeometry 0.4 cannot):
#  digits_convt_kfac: KFAC / EKFAC (_hook_compute_kfac_blocks: NotImplementedError for every module other than
#    Linear / Conv2d / Conv1d; get_kfac_blocks over a ConvTranspose2d-only collection: UnboundLocalError 'sA') and
#    QuasiDiag (AttributeError: ConvTranspose2dJacobianFactory has no attribute 'quasidiag') reject ConvTranspose2d;
#    digits_conv_variants already covers ConvTranspose2d with the conv_linear fallback.
#  tokens_embed: nn.Embedding is not in LayerCollection._known_modules (from_model: Exception 'I do not know what
#    to do with layer Embedding(11, 5)'; add_layer_from_model: NotImplementedError), so no nngeometry object exists.
CASES = {"digits_gn_pool": case_gn_pool, "digits_dense_cat": case_dense_cat,
         "digits_conv_variants": case_conv_variants, "regress_skip_mlp": case_reg_skip,
         "digits_act_pool": case_act_pool, "regress_conv1d": case_reg_conv1d,
         "digits_plain_norms": case_plain_norms, "digits_seq_mix": case_seq_mix,
         "regress_multi": case_reg_multi, "regress_pool1d": case_reg_pool1d,
         "digits_adaptive_max": case_adaptive_max}

if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--out"] and len(args) >= 2:
        OUT = os.path.abspath(args[1])
        args = args[2:]
    names = args or list(CASES)
    for n in names:
        try:
            CASES[n]()
        except Exception:
            traceback.print_exc()
            print(f"{n}: FAILED")
