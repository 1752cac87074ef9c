"""Human-readable text for bundles and results (used by the CLI)."""

import numpy as np

from .tensors import specs_from_dicts


def _size(num):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if num < 1024 or unit == "GiB":
            return "{:.1f} {}".format(num, unit) if unit != "B" else "{} B".format(num)
        num /= 1024.0


def validation_table(validation):
    """Validation metrics as an aligned table, one row per output."""
    rows = [("output", "top-1", "FP32 top-1", "agree", "cosine", "max abs err", "SQNR dB")]
    for name, m in sorted(validation.get("outputs", {}).items()):
        def pct(key):
            return "{:.2f}%".format(100.0 * m[key]) if key in m else "-"
        sqnr = m.get("sqnr_db")
        rows.append((name, pct("top1"), pct("top1_fp32"), pct("top1_agreement"),
                     "{:.5f}".format(m["cosine_mean"]), "{:.4g}".format(m["max_abs_error"]),
                     "inf" if sqnr is None else "{:.1f}".format(sqnr)))
    return table(rows)


def table(rows):
    """Left-aligned text table; the first row is the header."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# describe_search() names this many kept ops; the manifest lists them all.
SHOWN_OPS = 12


def describe_search(data):
    """A budget search's record (the manifest's ``accuracy_control``) as lines."""
    lines = ["accuracy budget: {}; achieved {} {:.6g} ({})".format(
        data["budget"]["text"], data["what"], data["achieved"],
        "met" if data["met"] else "NOT met")]
    kept = data["kept"]
    if kept:
        shown = ", ".join("{} ({})".format(op["name"], op["op_type"])
                          for op in kept[:SHOWN_OPS])
        if len(kept) > SHOWN_OPS:
            shown += " and {} more ops".format(len(kept) - SHOWN_OPS)
        lines.append("kept in FP32: {} of {} groups: {}".format(
            len(data["groups"]), data["candidates"], shown))
    else:
        lines.append("kept in FP32: none (all {} groups INT8)".format(data["candidates"]))
    lines.append("search: {} steps in {:.1f} s: {}".format(
        len(data["steps"]), data["seconds"], "; ".join(
            "{} in FP32: {:.6g} ({})".format(s["groups"], s["achieved"],
                                             "met" if s["ok"] else "missed")
            for s in data["steps"])))
    return lines


def describe_control(control):
    """The manifest's ``accuracy_control`` as lines: the search, kept-op latency, final check."""
    if control.get("candidates") is None:
        return ["accuracy budget: {}; achieved {} {:.6g} (met; {} INT8 has no per-op "
                "control)".format(control["budget"]["text"], control["what"],
                                  control["achieved"], control.get("method"))]
    lines = describe_search(control)
    latency = control.get("latency")
    if latency:
        costs = "; ".join("{} {:+.3f} ms".format(g["group"], g["cost_ms"])
                          for g in latency["groups"])
        lines.append("kept-op latency (batch {}): {:.3f} ms vs all-INT8 {:.3f} ms ({:+.3f} "
                     "ms){}".format(latency["batch"], latency["chosen_ms"],
                                    latency["all_int8_ms"], latency["cost_ms"],
                                    "; per group: " + costs if costs else ""))
    validated = control.get("validated")
    if validated:
        lines.append("shipped model checked on its backend: {} {:.6g} ({})".format(
            control["what"], validated["achieved"], "met" if validated["met"] else "NOT met"))
    return lines


def describe_engine(engine):
    """The manifest's ``engine`` record (TensorRT build settings) as one or two lines."""
    flags = ", ".join(engine.get("flags") or ()) or "none (FP32)"
    kept = engine.get("fp32_layers") or ()
    lines = ["engine:     built on the device by TensorRT >= {} (made for {}): flags {}{}{}{}"
             .format(engine.get("min_tensorrt"), engine.get("target_tensorrt"), flags,
                     ", explicit Q/DQ" if engine.get("quantization") == "explicit" else "",
                     "; {} layers pinned FP32".format(len(kept)) if kept else "",
                     "; workspace {} MiB".format(engine["workspace_mb"])
                     if engine.get("workspace_mb") else "")]
    profiles = engine.get("profiles") or ()
    if profiles:
        lines.append("shapes:     {} (min / opt / max)".format("; ".join(
            "{} {} / {} / {}".format(p["input"], p["min"], p["opt"], p["max"])
            for p in profiles)))
    return lines


def describe_partitions(record, brief=False):
    """A sharded bundle's partitions (the manifest's ``partitions``) as lines.

    One row per partition: nodes, first and last node, weights, and the tensors
    crossing the cut after it (names, and their size at batch 1).
    """
    items, cuts = record["items"], record.get("cuts") or []
    lines = ["partitions: {} of at most {} of weights ({} in all{}); largest activation set "
             "{} at batch 1".format(
                 len(items), _size(record["budget_bytes"]), _size(record.get("weight_bytes", 0)),
                 ", {} shared".format(_size(record["shared_bytes"]))
                 if record.get("shared_bytes") else "", _size(record.get("activation_bytes", 0)))]
    if brief:
        return lines
    rows = [("partition", "nodes", "first .. last node", "weights", "crossing the next cut")]
    for index, item in enumerate(items):
        cut = cuts[index] if index < len(cuts) else None
        crossing = "-" if cut is None else "{} ({})".format(
            ", ".join(cut["tensors"][:4]) + (" +{}".format(len(cut["tensors"]) - 4)
                                             if len(cut["tensors"]) > 4 else ""),
            _size(cut["bytes"]))
        rows.append((item["name"], item["nodes"], "{} .. {}".format(
            item.get("first_node", "?"), item.get("last_node", "?")),
            _size(item["weight_bytes"]), crossing))
    lines.extend("  " + line for line in table(rows).splitlines())
    return lines


def describe_bundle(bundle, brief=False):
    """A bundle's manifest as text: what `edgeinfer inspect` prints."""
    m = bundle.manifest
    target = m["target"]
    # A TensorRT bundle names no backend version: its engine is built on the device.
    built = ("built with {} {}".format(target["backend"], target["backend_version"])
             if target.get("backend_version") else "built on the device")
    lines = ["{}  ({})".format(m["name"], bundle.path),
             "  target:     {} on {} ({}, needs >= {})".format(
                 target.get("profile"), target["backend"], built,
                 target.get("min_backend_version")),
             "  precision:  {} ({})".format(m["precision"], m["method"])]
    quant = m.get("quantization") or {}
    if quant.get("variant"):
        lines.append("  int8:       {} {}, {} weights; {}".format(
            quant["variant"], quant.get("format", ""),
            "per-channel" if quant.get("per_channel") else "per-tensor",
            quant.get("variant_reason", "")))
    if quant.get("method_reason"):
        lines.append("  method:     {}".format(quant["method_reason"]))
    changes = (quant.get("graph_preparation") or {}).get("changes") or ()
    if changes:
        lines.append("  prepared:   {}".format("; ".join(changes)))
    if not brief:
        for kind in ("inputs", "outputs"):
            for spec in specs_from_dicts(m[kind]):
                lines.append("  {:<11} {}".format(kind[:-1] + ":", spec.describe()))
        if m.get("preprocess"):
            p = m["preprocess"]
            lines.append("  preprocess: {} resize={} crop={} mean={} std={} {}".format(
                p.get("color"), p.get("resize"), p.get("center_crop"), p.get("mean"),
                p.get("std"), p.get("layout")))
        for entry in m["files"]:
            lines.append("  file:       {} {} sha256 {}...".format(
                entry["name"], _size(entry["size"]), entry["sha256"][:16]))
        versions = m.get("versions") or {}
        lines.append("  built:      {} by edgeinfer {} ({})".format(
            m.get("created", "?"), versions.get("edgeinfer", "?"), ", ".join(
                "{} {}".format(k, v) for k, v in sorted(versions.items()) if k != "edgeinfer")))
        source = m.get("source") or {}
        if source:
            lines.append("  source:     {} ({}, opset {}, sha256 {}...)".format(
                source.get("file"), _size(source.get("size", 0)), source.get("opset"),
                str(source.get("sha256"))[:16]))
    total = sum(e["size"] for e in m["files"])
    source_size = (m.get("source") or {}).get("size")
    if source_size:
        lines.append("  size:       {} ({:.3f}x the source model)".format(
            _size(total), total / float(source_size)))
    calib = m.get("calibration")
    if calib:
        lines.append("  calibrated: {} samples ({}), {:.1f} s, peak RSS {} MiB".format(
            calib["samples"], calib["method"], calib["seconds"], calib.get("peak_rss_mb")))
    validation = m.get("validation")
    if validation:
        lines.append("  validated on {} {}:".format(validation["samples"], validation["data"]))
        lines.extend("    " + line for line in validation_table(validation).splitlines())
        speed = validation.get("speed")
        if speed:
            lines.append("  latency (batch {}, this machine): {:.3f} ms vs FP32 {:.3f} ms "
                         "= {:.2f}x".format(speed.get("batch", 1), speed["converted_ms"],
                                            speed["fp32_ms"], speed["ratio"]))
    control = m.get("accuracy_control")
    if control:
        lines.extend("  " + line for line in describe_control(control))
    if m.get("partitions"):
        lines.extend("  " + line for line in describe_partitions(m["partitions"], brief))
    engine = m.get("engine")
    if engine:
        lines.extend("  " + line for line in describe_engine(engine))
    for note in m.get("notes") or ():
        lines.append("  note: {}".format(note))
    return "\n".join(lines)


def _softmax(row):
    shifted = np.exp(row - row.max())
    return shifted / shifted.sum()


def describe_outputs(label, outputs, classes=None, top_k=5):
    """Results of one run as text: top-k for class scores, a summary otherwise."""
    lines = ["{}:".format(label)]
    for name, value in outputs.items():
        value = np.asarray(value)
        if value.ndim == 2 and value.shape[1] > 1:
            for row_index, row in enumerate(value.astype(np.float64)):
                probs = row if (row.min() >= 0 and abs(row.sum() - 1) < 1e-3) else _softmax(row)
                order = np.argsort(-probs)[:max(1, top_k)]
                prefix = "  {}[{}]".format(name, row_index) if len(value) > 1 else "  " + name
                lines.append(prefix + ":")
                for rank, index in enumerate(order, 1):
                    label_text = classes[index] if classes and index < len(classes) else str(index)
                    lines.append("    {}. {:<12} {:.4f}".format(rank, label_text, probs[index]))
        else:
            lines.append("  {}: {} shape {} min {:.4g} max {:.4g} mean {:.4g}".format(
                name, value.dtype, list(value.shape), float(value.min()), float(value.max()),
                float(value.mean())))
    return "\n".join(lines)
