"""Training, export and checks shared by the issue-4 digits models.

``build_mobilenet_digits.py`` and ``build_transformer_digits.py`` train on the
demo digits exactly as ``build_demo_model.py`` does (same split, augmentation and
preprocessing, read from there) and differ only in the network and its optimizer
groups; this module holds the rest once.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from build_demo_model import (
    CLASSES, DEFAULT_DATA, MEAN, OPSET, PREPROCESS, SCALE, STD, load_pixels, make_session,
    normalize, random_shift, read_png_dataset, split_indices,
)

BATCH_SIZE = 64


def train(make_model: Callable[[torch.Generator], nn.Module],
          param_groups: Callable[[nn.Module], list], pixels: np.ndarray, labels: np.ndarray,
          epochs: int, seed: int, learning_rate: float) -> nn.Module:
    """Train a digits classifier: AdamW, one-cycle LR, random 1-pixel shifts, batch 64.

    Args:
        make_model: builds the untrained model (after ``torch.manual_seed(seed)``) from
            the generator that then shuffles and augments.
        param_groups: the model's AdamW parameter groups, each with its weight decay.
        pixels: uint8 training images [N, 8, 8].
        labels: int64 labels [N].
        epochs: passes over the training set.
        seed: seed of initialisation, shuffling and augmentation.
        learning_rate: the one-cycle schedule's peak.

    Returns:
        the model in eval mode.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = make_model(gen)
    opt = torch.optim.AdamW(param_groups(model), lr=learning_rate)
    steps_per_epoch = (len(labels) + BATCH_SIZE - 1) // BATCH_SIZE
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=learning_rate, total_steps=epochs * steps_per_epoch)
    x_pix = torch.from_numpy(pixels.astype(np.float32))[:, None]
    y = torch.from_numpy(labels)
    mean, std, scale = (torch.tensor(v, dtype=torch.float32) for v in (MEAN, STD, SCALE))
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        total = 0.0
        for start in range(0, len(y), BATCH_SIZE):
            idx = perm[start : start + BATCH_SIZE]
            # The same float32 arithmetic as normalize(), as the demo model trains.
            xb = (random_shift(x_pix[idx], gen) * scale - mean) / std
            loss = loss_fn(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if (epoch + 1) % 10 == 0 or epoch == 0:
            print(f"  epoch {epoch + 1:3d}/{epochs}  loss {total / len(y):.4f}")
    model.eval()
    return model


def export_onnx(model: nn.Module) -> onnx.ModelProto:
    """Export (opset 17, BatchNorm folded) with the demo model's metadata, and check it."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in torch >= 2.9 but needs no onnxscript.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (torch.zeros(1, 1, 8, 8),), buf, dynamo=False, opset_version=OPSET,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            do_constant_folding=True, export_params=True)
    proto = onnx.load_from_string(buf.getvalue())
    ops = [n.op_type for n in proto.graph.node]
    if "BatchNormalization" in ops:
        raise RuntimeError(f"BatchNorm was not folded: {ops}")
    onnx.helper.set_model_props(proto, {"edgeinfer.preprocess": json.dumps(PREPROCESS),
                                        "edgeinfer.classes": json.dumps(CLASSES)})
    onnx.checker.check_model(proto, full_check=True)
    return proto


def save_and_measure(model: nn.Module, proto: onnx.ModelProto, out_model: Path,
                     data: Path, check_pixels: np.ndarray, metrics: dict,
                     started: float, train_s: float) -> int:
    """Check ONNX Runtime against torch, write the model, measure FP32 top-1 from the PNGs.

    Args:
        model: the trained torch model (eval mode).
        proto: its export.
        out_model: the ONNX file to write; ``<stem>.eval.json`` goes beside it.
        data: the folder holding ``digits-eval/`` (PNGs and labels.csv).
        check_pixels: uint8 images [N, 8, 8] for the torch comparison.
        metrics: entries for the ``.eval.json`` beyond accuracy and versions.
        started: ``time.perf_counter()`` at the script's start.
        train_s: seconds spent training.

    Returns:
        a process exit code (1 when ONNX Runtime and torch disagree).
    """
    model_bytes = proto.SerializeToString()
    x_check = normalize(check_pixels)
    ort_logits = make_session(model_bytes).run(["logits"], {"input": x_check})[0]
    with torch.no_grad():
        diff = float(np.abs(ort_logits - model(torch.from_numpy(x_check)).numpy()).max())
    print(f"onnxruntime vs torch max abs logit diff: {diff:.2e}")
    if diff >= 1e-3:
        print("error: ONNX Runtime and torch disagree", file=sys.stderr)
        return 1
    out_model.parent.mkdir(parents=True, exist_ok=True)
    out_model.write_bytes(model_bytes)
    x_eval, y_eval = read_png_dataset(data / "digits-eval")
    logits = make_session(model_bytes).run(["logits"], {"input": x_eval})[0]
    correct = int((logits.argmax(axis=1) == y_eval).sum())
    record = {"model": out_model.name, "eval_images": len(y_eval), "correct": correct,
              "top1": round(correct / len(y_eval), 6)}
    record.update(metrics)
    record.update({"torch": torch.__version__, "onnx": onnx.__version__,
                   "onnxruntime": ort.__version__})
    metrics_path = out_model.with_suffix(".eval.json")
    metrics_path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out_model} ({len(model_bytes)} bytes), {metrics_path}")
    print(f"FP32 top-1 on {len(y_eval)} eval PNGs (onnxruntime): "
          f"{correct / len(y_eval):.4f} ({correct}/{len(y_eval)})")
    print(f"time: training {train_s:.1f}s, total {time.perf_counter() - started:.1f}s")
    return 0


def add_arguments(parser: argparse.ArgumentParser, default_model: Path, epochs: int) -> None:
    """The options every digits build script takes: output, data, epochs, seed."""
    parser.add_argument("--out-model", type=Path, default=default_model,
                        help=f"ONNX file to write (default: models/{default_model.name})")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="folder with digits-eval/ from build_demo_model.py (default: "
                             "calibration/ in the repo)")
    parser.add_argument("--epochs", type=int, default=epochs,
                        help=f"training epochs (default: {epochs})")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of split and training (default: 0)")


def build(args: argparse.Namespace, make_model: Callable[[torch.Generator], nn.Module],
          param_groups: Callable[[nn.Module], list], learning_rate: float,
          describe: Callable[[onnx.ModelProto], dict]) -> int:
    """A build script's whole run: split, train, export, check, write, measure.

    Args:
        args: parsed :func:`add_arguments` options.
        make_model, param_groups, learning_rate: see :func:`train`.
        describe: prints what is worth knowing about the export and returns the
            ``.eval.json`` entries it adds.

    Returns:
        a process exit code.
    """
    started = time.perf_counter()
    # One thread: the build machine is shared, and float reductions depend on the count.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    pixels, labels = load_pixels()
    train_idx, eval_idx, _ = split_indices(labels, args.seed)
    print(f"training for {args.epochs} epochs on {len(train_idx)} images")
    model = train(make_model, param_groups, pixels[train_idx], labels[train_idx], args.epochs,
                  args.seed, learning_rate)
    train_s = time.perf_counter() - started
    proto = export_onnx(model)
    metrics = {"seed": args.seed, "epochs": args.epochs, "learning_rate": learning_rate}
    metrics.update(describe(proto))
    return save_and_measure(model, proto, args.out_model, args.data, pixels[eval_idx],
                            metrics, started, train_s)
