"""Exports torchvision's ResNet18 to ONNX the way nngeo's `onnx(...)` reads
it: the legacy (TorchScript) exporter, evaluation mode, no constant folding
(which would fold each BatchNorm into the convolution before it and rename
the parameters), a dynamic batch dimension. Not needed by the tests.

Needs torchvision beside torch, e.g. in the libtorch venv:

    .venv-torch/bin/pip install torchvision onnx
    .venv-torch/bin/python scripts/export-resnet18-onnx.py resnet18.onnx
    .venv-torch/bin/python scripts/export-resnet18-onnx.py --classes 10 --stem cifar resnet18_cifar.onnx

then `model net = onnx("resnet18.onnx")` (layers named as in torchvision's
`state_dict`: conv1, layer1.0.conv1, ..., fc). `--pretrained` loads
torchvision's ImageNet weights (downloaded by torchvision, 1000 classes).
"""

import argparse

import torch
import torch.nn as nn

try:
    import torchvision
except ImportError as e:
    raise SystemExit(f"{e}: install torchvision (pip install torchvision)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="the .onnx file to write")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument(
        "--stem",
        choices=["imagenet", "cifar"],
        default="imagenet",
        help="cifar: a 3x3 stride-1 first convolution and no max pooling (input 3x32x32), "
        "as nngeo's resnet18(stem = cifar)",
    )
    ap.add_argument("--pretrained", action="store_true", help="torchvision's ImageNet weights")
    ap.add_argument("--float64", action="store_true", help="export in float64")
    args = ap.parse_args()

    weights = "IMAGENET1K_V1" if args.pretrained else None
    if args.pretrained and args.classes != 1000:
        raise SystemExit("--pretrained has 1000 classes")
    model = torchvision.models.resnet18(weights=weights, num_classes=args.classes)
    size = 224
    if args.stem == "cifar":
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
        size = 32
    if args.float64:
        model = model.double()
    model.eval()
    x = torch.randn(2, 3, size, size, dtype=torch.float64 if args.float64 else torch.float32)
    torch.onnx.export(
        model,
        (x,),
        args.out,
        dynamo=False,
        opset_version=17,
        do_constant_folding=False,
        training=torch.onnx.TrainingMode.EVAL,
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
    )
    print(f"wrote {args.out}: input [n, 3, {size}, {size}], {args.classes} classes")


if __name__ == "__main__":
    main()
