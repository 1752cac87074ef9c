#!/usr/bin/env python
"""Build a MobileNet-style digits classifier whose depthwise weights spread as real ones do.

Issue 4, requirement 6: MobileNets lose most of their accuracy under default INT8
post-training quantization because folding BatchNorm into the depthwise
convolutions leaves per-output-channel weight ranges that differ by 20-100x
(Nagel et al. 2019, "Data-Free Quantization", figure 2).  This script trains a
network of that kind on the demo digits so the effect, and the cross-layer
equalisation that removes it, can be measured on a real trained model.

How the spread arises (nothing is edited after training): a depthwise channel
whose input is constant has a zero BatchNorm running variance, so folding
multiplies its weights by ``gamma / sqrt(var + eps)``, up to ``1 / sqrt(eps)``
(316 with PyTorch's default ``eps = 1e-5``, which torchvision's MobileNetV2
uses).  Real MobileNets get such channels from ReLU6 units that die during
training.  Here they die the same way: the net is trained with a high peak
learning rate (3e-2, one-cycle AdamW) and, as MobileNets are trained, with no
weight decay on the depthwise filters and BatchNorm parameters.  A dead unit's
depthwise channel receives no gradient from then on, so it keeps the weights and
``gamma`` it had when the unit died, and folds to a range some hundred times
its neighbours'.

Steps: load and split the digits exactly as ``build_demo_model.py`` does (same
seed, so ``calibration/digits`` and ``calibration/digits-eval`` serve this
model too), train, export to ONNX (opset 17, BatchNorm folded), check ONNX
Runtime against torch, print the per-channel weight-range spread of every
convolution, and measure FP32 top-1 on the eval PNGs read back from disk.

Usage:
    python scripts/build_mobilenet_digits.py [--out-model PATH] [--data DIR] [--epochs N]
                                             [--learning-rate LR] [--seed N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from digits_training import add_arguments, build  # noqa: E402
from edgeinfer.conversion.equalize import weight_spread  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO_ROOT / "models" / "mobilenet_digits.onnx"

NUM_CLASSES = 10
# High enough that a few ReLU6 units die, as they do in long ImageNet runs.
LEARNING_RATE = 3e-2
WEIGHT_DECAY = 1e-4
# PyTorch's default BatchNorm epsilon (torchvision's MobileNetV2 keeps it): it caps
# the folding gain of a channel with zero variance at 1 / sqrt(eps) = 316.
BN_EPS = 1e-5
STEM_CHANNELS = 32
# (depthwise stride, pointwise output channels) per depthwise-separable block.
BLOCKS = ((1, 32), (2, 64), (1, 64))


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv (no bias) + BatchNorm + ReLU6, the MobileNet unit."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout, eps=BN_EPS),
        nn.ReLU6(inplace=True),
    )


class MobileNetDigits(nn.Module):
    """MobileNetV1-style net for 1x8x8 digits.

    Stem Conv 3x3 (1->32), then depthwise-separable blocks (depthwise 3x3 +
    BN + ReLU6, pointwise 1x1 + BN + ReLU6): 32 -> 32 (8x8), 32 -> 64 (stride
    2, 4x4), 64 -> 64; global average pool; Linear(64 -> 10).
    """

    def __init__(self) -> None:
        super().__init__()
        layers = [conv_bn(1, STEM_CHANNELS, 3)]
        cin = STEM_CHANNELS
        for stride, cout in BLOCKS:
            layers.append(conv_bn(cin, cin, 3, stride, groups=cin))
            layers.append(conv_bn(cin, cout, 1))
            cin = cout
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.classifier = nn.Linear(cin, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a [batch, 1, 8, 8] normalised input to [batch, 10] logits."""
        return self.classifier(self.features(x))


def param_groups(model: MobileNetDigits) -> list[dict]:
    """Optimizer groups: no weight decay on depthwise filters and BN, as MobileNet trains."""
    decay, no_decay = [], []
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.groups > 1:
            no_decay.append(module.weight)
        elif isinstance(module, nn.BatchNorm2d):
            no_decay.extend([module.weight, module.bias])
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            decay.extend(p for p in module.parameters())
    return [{"params": decay, "weight_decay": WEIGHT_DECAY},
            {"params": no_decay, "weight_decay": 0.0}]


def describe(proto) -> dict:
    """Print the per-conv weight spread of the export; return it for the .eval.json."""
    spread = weight_spread(proto)
    print("per-output-channel weight ranges (BN folded):")
    for row in spread:
        print("  {node:<40} {kind:<9} max {max_range:8.3f}  max/min {max_over_min:9.1f}  "
              "max/median {max_over_median:6.1f}".format(
                  kind="depthwise" if row["depthwise"] else "conv", **row))
    return {"weight_spread": [{k: (round(v, 4) if isinstance(v, float) else v)
                               for k, v in row.items()} for row in spread]}


def main(argv: list[str] | None = None) -> int:
    """Train, export and check the model; return a process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser, DEFAULT_MODEL, 40)
    parser.add_argument("--learning-rate", type=float, default=LEARNING_RATE,
                        help=f"peak one-cycle learning rate (default: {LEARNING_RATE})")
    args = parser.parse_args(argv)
    return build(args, lambda gen: MobileNetDigits(), param_groups, args.learning_rate,
                 describe)


if __name__ == "__main__":
    sys.exit(main())
