"""`edgeinfer demo`: the shipped digits CNN converted to INT8 and FP16, compared with FP32."""

import os

from .errors import UsageError
from .report import table

DEMO_MODEL = os.path.join("models", "digits_cnn.onnx")
DEMO_CALIBRATION = os.path.join("calibration", "digits")
DEMO_EVAL = os.path.join("calibration", "digits-eval")


def demo_root():
    """The folder holding models/ and calibration/: the current one or the source tree's."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for root in (os.getcwd(), here):
        if os.path.isfile(os.path.join(root, DEMO_MODEL)):
            return root
    raise UsageError("The demo model {} was not found.".format(DEMO_MODEL),
                     "Run `edgeinfer demo` from a clone of the edgeinfer repository "
                     "(pip install -e .).")


def run_demo(out):
    """Convert the demo model three ways and return the comparison table as text."""
    from .conversion import convert
    root = demo_root()
    model = os.path.join(root, DEMO_MODEL)
    rows = [("bundle", "precision", "method", "size", "top-1", "FP32 top-1", "drop (pts)",
             "agree", "cosine", "latency vs FP32")]
    source_size = os.path.getsize(model)
    paths, notes = [], []
    for precision in ("fp32", "int8", "fp16"):
        output = os.path.join(out, "digits-{}.eib".format(precision))
        bundle = convert(model, target="cpu", precision=precision,
                         calibration=os.path.join(root, DEMO_CALIBRATION),
                         eval=os.path.join(root, DEMO_EVAL), output=output, overwrite=True)
        paths.append(output)
        m = bundle.manifest
        notes.extend("note ({}): {}".format(os.path.basename(output), n) for n in m["notes"])
        metrics = m["validation"]["outputs"]["logits"]
        size = sum(e["size"] for e in m["files"])
        speed = m["validation"].get("speed")
        rows.append((output, precision, m["method"], "{:.2f}x".format(size / float(source_size)),
                     "{:.2f}%".format(100 * metrics["top1"]),
                     "{:.2f}%".format(100 * metrics["top1_fp32"]),
                     "{:.2f}".format(metrics["top1_drop_points"]),
                     "{:.2f}%".format(100 * metrics["top1_agreement"]),
                     "{:.5f}".format(metrics["cosine_mean"]),
                     "{:.2f}x".format(speed["ratio"]) if speed else "-"))
    text = [table(rows), ""] + notes + ([""] if notes else []) + [
            "Eval set: {} labelled images in {}; size is relative to the FP32 source model.".format(
                bundle.manifest["validation"]["samples"], DEMO_EVAL),
            "Next: edgeinfer inspect {}   |   edgeinfer run {} {}".format(
                paths[1], paths[1], os.path.join(DEMO_EVAL, _first_png(root)))]
    return "\n".join(text)


def _first_png(root):
    names = sorted(n for n in os.listdir(os.path.join(root, DEMO_EVAL)) if n.endswith(".png"))
    return names[0] if names else "IMAGE.png"
