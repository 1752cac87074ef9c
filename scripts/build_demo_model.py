#!/usr/bin/env python
"""Build the edgeinfer demo model (a small digits CNN) and its image data.

The script is fully deterministic: running it twice on the same machine with
the same library versions produces byte-identical PNG files, label files and
ONNX model, and the same accuracy.

Steps:

1. Load scikit-learn's handwritten digits (1797 8x8 images, values 0..16; the
   data ships inside scikit-learn, nothing is downloaded) and convert each
   image to 8-bit grayscale pixels, ``pixel = round(v * 255 / 16)``.
2. Split, stratified and with a fixed seed: 500 images for evaluation, the
   other 1297 for training; 300 of the training images form the calibration
   set.
3. Train a small CNN with torch on the training images.
4. Export it to ONNX (opset 17, BatchNorm folded into the convolutions),
   attach the ``edgeinfer.preprocess`` and ``edgeinfer.classes`` metadata,
   check it with ``onnx.checker`` and compare ONNX Runtime against torch.
5. Write the calibration and evaluation images as PNG files plus
   ``labels.csv`` files.
6. Measure FP32 top-1 accuracy on the evaluation set by reading the written
   PNG files back and running them through ONNX Runtime, i.e. the same path
   the product uses.

Usage:
    python scripts/build_demo_model.py [--out-model PATH] [--out-data DIR]
                                       [--epochs N] [--seed N]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO_ROOT / "models" / "digits_cnn.onnx"
DEFAULT_DATA = REPO_ROOT / "calibration"

# Normalisation constants in the 0..1 pixel range. They are the mean and
# standard deviation of the 1297 training images' pixels (seed 0 split),
# rounded to 4 digits, and kept as fixed constants so the preprocessing
# recorded in the model never depends on the split or on float summation order.
MEAN = 0.3053
STD = 0.3758
SCALE = 1.0 / 255.0

NUM_EVAL = 500
NUM_CALIB = 300
NUM_CLASSES = 10
OPSET = 17
BATCH_SIZE = 64
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-4
MAX_SHIFT = 1  # pixels; digits are centred in a tight 8x8 box, so keep it small

PREPROCESS = {
    "color": "L",
    "resize": [8, 8],
    "interpolation": "bilinear",
    "center_crop": None,
    "scale": SCALE,
    "mean": [MEAN],
    "std": [STD],
    "layout": "NCHW",
    "dtype": "float32",
}
CLASSES = [str(i) for i in range(NUM_CLASSES)]


class DigitsCNN(nn.Module):
    """Small CNN for 1x8x8 digit images.

    Conv(1->16)+BN+ReLU, Conv(16->32)+BN+ReLU, MaxPool 2x2,
    Conv(32->64)+BN+ReLU, global average pool, Linear(64->10).
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            # AdaptiveAvgPool2d(1) exports as GlobalAveragePool, which every
            # edge runtime supports, unlike a ReduceMean over two axes.
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
        )
        self.classifier = nn.Linear(64, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a [batch, 1, 8, 8] normalised input to [batch, 10] logits."""
        return self.classifier(self.features(x))


def load_pixels() -> tuple[np.ndarray, np.ndarray]:
    """Load the digits and convert them to 8-bit grayscale pixels.

    Returns:
        A tuple ``(pixels, labels)``: uint8 array [1797, 8, 8] and int64
        array [1797].
    """
    digits = load_digits()
    values = digits.images.astype(np.int64)  # exact integers 0..16
    # Integer round-half-up of v * 255 / 16, so no float rounding mode is
    # involved (v = 8 gives 127.5 -> 128).
    pixels = ((values * 255 + 8) // 16).astype(np.uint8)
    return pixels, digits.target.astype(np.int64)


def split_indices(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Make the stratified train / eval / calibration split.

    Args:
        labels: Class label of every image.
        seed: Random seed of both splits.

    Returns:
        Sorted index arrays ``(train, evaluation, calibration)``; the
        calibration indices are a subset of the training indices.
    """
    all_idx = np.arange(len(labels))
    train, evaluation = train_test_split(
        all_idx, test_size=NUM_EVAL, stratify=labels, random_state=seed
    )
    calib, _ = train_test_split(
        train, train_size=NUM_CALIB, stratify=labels[train], random_state=seed
    )
    return np.sort(train), np.sort(evaluation), np.sort(calib)


def normalize(pixels: np.ndarray) -> np.ndarray:
    """Apply the model's preprocessing to uint8 pixels.

    Args:
        pixels: uint8 array [N, 8, 8].

    Returns:
        float32 array [N, 1, 8, 8], ``(pixel * scale - mean) / std``.
    """
    x = pixels.astype(np.float32) * np.float32(SCALE)
    x = (x - np.float32(MEAN)) / np.float32(STD)
    return x[:, None, :, :]


def random_shift(batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift every image by up to MAX_SHIFT pixels in x and y.

    Works on uint8-range pixel values (before normalisation) so that the
    padding is black background (pixel 0), like the real data.

    Args:
        batch: float tensor [N, 1, 8, 8] of pixel values 0..255.
        gen: Generator that draws the shifts.

    Returns:
        Tensor of the same shape with each image shifted.
    """
    n = batch.shape[0]
    padded = nn.functional.pad(batch, (MAX_SHIFT,) * 4, value=0.0)
    offsets = torch.randint(0, 2 * MAX_SHIFT + 1, (n, 2), generator=gen)
    out = torch.empty_like(batch)
    for i in range(n):
        dy, dx = int(offsets[i, 0]), int(offsets[i, 1])
        out[i] = padded[i, :, dy : dy + 8, dx : dx + 8]
    return out


def train(pixels: np.ndarray, labels: np.ndarray, epochs: int, seed: int) -> DigitsCNN:
    """Train the CNN (the loop the other digits models share: digits_training.train).

    Args:
        pixels: uint8 training images [N, 8, 8].
        labels: int64 labels [N].
        epochs: Number of passes over the training set.
        seed: Seed of weight init, shuffling and augmentation.

    Returns:
        The trained model in eval mode.
    """
    from digits_training import train as train_digits  # it imports this module's helpers
    return train_digits(lambda gen: DigitsCNN(),
                        lambda model: [{"params": list(model.parameters()),
                                        "weight_decay": WEIGHT_DECAY}],
                        pixels, labels, epochs, seed, LEARNING_RATE)


def export_onnx(model: DigitsCNN) -> onnx.ModelProto:
    """Export the model to ONNX with BatchNorm folded and metadata attached.

    Uses the TorchScript-based exporter (``dynamo=False``): it needs no
    onnxscript and, with ``do_constant_folding=True`` in eval mode, folds every
    BatchNorm into the preceding Conv.

    Args:
        model: Trained model in eval mode.

    Returns:
        The checked ONNX model.
    """
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # torch >= 2.9 warns that the TorchScript exporter is deprecated; it is
        # still the one that works without onnxscript, so silence the warning.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 8, 8),),
            buf,
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            do_constant_folding=True,
            export_params=True,
        )
    proto = onnx.load_from_string(buf.getvalue())
    ops = [n.op_type for n in proto.graph.node]
    if "BatchNormalization" in ops:
        raise RuntimeError(f"BatchNorm was not folded: {ops}")
    onnx.helper.set_model_props(
        proto,
        {
            # json.dumps keeps the dict's (documented) key order, so the
            # string, and thus the model bytes, are the same on every run.
            "edgeinfer.preprocess": json.dumps(PREPROCESS),
            "edgeinfer.classes": json.dumps(CLASSES),
        },
    )
    onnx.checker.check_model(proto, full_check=True)
    return proto


def check_against_torch(model: DigitsCNN, model_bytes: bytes, x: np.ndarray) -> float:
    """Compare ONNX Runtime logits with torch logits.

    Args:
        model: The torch model in eval mode.
        model_bytes: Serialized ONNX model.
        x: Normalised float32 inputs [N, 1, 8, 8].

    Returns:
        The maximum absolute difference of the logits.
    """
    sess = make_session(model_bytes)
    ort_logits = sess.run(["logits"], {"input": x})[0]
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(x)).numpy()
    return float(np.abs(ort_logits - torch_logits).max())


def make_session(model_bytes: bytes) -> ort.InferenceSession:
    """Create a single-threaded CPU ONNX Runtime session (reproducible)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def write_images(out_dir: Path, indices: np.ndarray, pixels: np.ndarray, labels: np.ndarray) -> None:
    """Write images as 8x8 mode-"L" PNGs plus ``labels.csv``.

    Files are named by their index into ``load_digits`` (``00017.png``).
    PNG files in ``out_dir`` that are not part of this set are removed so a
    rebuild with another seed leaves no stale images behind.

    Args:
        out_dir: Destination folder (created if missing).
        indices: Indices of the images to write.
        pixels: uint8 array of all images [1797, 8, 8].
        labels: Labels of all images.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [f"{int(i):05d}.png" for i in indices]
    for stale in sorted(set(p.name for p in out_dir.glob("*.png")) - set(names)):
        (out_dir / stale).unlink()
    for name, i in zip(names, indices):
        # A 2-D uint8 array becomes a mode-"L" image (the mode= argument of
        # fromarray is deprecated in recent Pillow).
        img = Image.fromarray(np.ascontiguousarray(pixels[i]))
        assert img.mode == "L"
        img.save(out_dir / name, format="PNG")
    with open(out_dir / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["file", "label"])
        for name, i in zip(names, indices):
            writer.writerow([name, int(labels[i])])


def read_png_dataset(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a folder written by :func:`write_images` and preprocess it.

    Follows the ``edgeinfer.preprocess`` recipe: convert to "L", resize to
    8x8 bilinear (a no-op for these files), scale, subtract mean, divide by std.

    Args:
        data_dir: Folder with PNG files and ``labels.csv``.

    Returns:
        ``(x, y)``: float32 inputs [N, 1, 8, 8] and int64 labels [N].
    """
    xs, ys = [], []
    with open(data_dir / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            with Image.open(data_dir / row["file"]) as img:
                img = img.convert(PREPROCESS["color"])
                size = tuple(PREPROCESS["resize"])
                if img.size != size:
                    img = img.resize(size, Image.Resampling.BILINEAR)
                xs.append(np.asarray(img, dtype=np.uint8))
            ys.append(int(row["label"]))
    return normalize(np.stack(xs)), np.asarray(ys, dtype=np.int64)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out-model", type=Path, default=DEFAULT_MODEL,
        help="ONNX file to write (default: models/digits_cnn.onnx in the repo)",
    )
    parser.add_argument(
        "--out-data", type=Path, default=DEFAULT_DATA,
        help="folder that receives digits/ and digits-eval/ (default: calibration/ in the repo)",
    )
    parser.add_argument("--epochs", type=int, default=40, help="training epochs (default: 40)")
    parser.add_argument("--seed", type=int, default=0, help="seed of split and training (default: 0)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Build the model and data; return a process exit code."""
    args = parse_args(argv)
    t0 = time.perf_counter()
    # Determinism: fixed thread count (float reductions depend on it), and
    # error out on any op without a deterministic implementation.
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)

    pixels, labels = load_pixels()
    train_idx, eval_idx, calib_idx = split_indices(labels, args.seed)
    print(f"split: {len(train_idx)} train ({len(calib_idx)} calibration), {len(eval_idx)} eval")

    print(f"training for {args.epochs} epochs")
    model = train(pixels[train_idx], labels[train_idx], args.epochs, args.seed)
    train_s = time.perf_counter() - t0

    proto = export_onnx(model)
    model_bytes = proto.SerializeToString()
    diff = check_against_torch(model, model_bytes, normalize(pixels[eval_idx]))
    print(f"onnxruntime vs torch max abs logit diff: {diff:.2e}")
    if diff >= 1e-4:
        print("error: ONNX Runtime and torch disagree", file=sys.stderr)
        return 1
    args.out_model.parent.mkdir(parents=True, exist_ok=True)
    args.out_model.write_bytes(model_bytes)

    calib_dir = args.out_data / "digits"
    eval_dir = args.out_data / "digits-eval"
    write_images(calib_dir, calib_idx, pixels, labels)
    write_images(eval_dir, eval_idx, pixels, labels)

    # Accuracy from the files on disk, exactly as the product will measure it.
    x_eval, y_eval = read_png_dataset(eval_dir)
    logits = make_session(args.out_model.read_bytes()).run(["logits"], {"input": x_eval})[0]
    correct = int((logits.argmax(axis=1) == y_eval).sum())
    accuracy = correct / len(y_eval)
    metrics = {
        "model": args.out_model.name,
        "eval_images": len(y_eval),
        "correct": correct,
        "top1": round(accuracy, 6),
        "seed": args.seed,
        "epochs": args.epochs,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
    }
    metrics_path = args.out_model.with_suffix(".eval.json")
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")

    total_s = time.perf_counter() - t0
    print(f"wrote {args.out_model} ({len(model_bytes)} bytes), {metrics_path}")
    print(f"wrote {len(calib_idx)} images to {calib_dir}, {len(eval_idx)} images to {eval_dir}")
    print(f"FP32 top-1 on {len(y_eval)} eval PNGs (onnxruntime): {accuracy:.4f} ({correct}/{len(y_eval)})")
    print(f"time: training {train_s:.1f}s, total {total_s:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
