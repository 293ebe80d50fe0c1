"""A run directory that serving needs and nothing else: ONNX files + ``manifest.json``.

    RUN_DIR/
      manifest.json          classes, per-model input size / normalization / val metrics / sha256,
                             ensemble members, weights and val metrics
      models/<name>.onnx
      checkpoints/<name>/    the torch checkpoint each ONNX file came from
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

import numpy as np

from raymotion.data.transforms import normalize
from raymotion.export.onnx import (OPSET, PARITY_TOLERANCE, create_session, export_onnx, onnx_probabilities,
                                   parity_max_abs_diff)
from raymotion.train.checkpoint import load_checkpoint
from raymotion.train.metrics import classification_metrics

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
PARITY_IMAGES = 64


class ParityError(AssertionError):
    pass


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(run_dir: str) -> dict[str, Any]:
    with open(os.path.join(run_dir, MANIFEST)) as f:
        manifest = json.load(f)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{run_dir}/{MANIFEST}: unsupported format_version {manifest.get('format_version')}")
    return manifest


def ensemble_probabilities(member_probs: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    total = sum(weights[name] for name in member_probs)
    return sum(member_probs[name] * (weights[name] / total) for name in member_probs)


def export_member(checkpoint_dir: str, run_dir: str, val_images: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
    """Export one checkpoint; check parity on real val images; return its manifest entry and val probabilities.

    ``val_images``: uint8 NHWC at the checkpoint's input size.
    """
    model, meta = load_checkpoint(checkpoint_dir)
    name = meta["model"]
    relative = os.path.join("models", f"{name}.onnx")
    path = os.path.join(run_dir, relative)
    exporter = export_onnx(model, path, meta["input_size"])
    session = create_session(path)
    x = normalize(val_images, meta["mean"], meta["std"])
    diff = parity_max_abs_diff(model, session, x[:PARITY_IMAGES])
    if not diff <= PARITY_TOLERANCE:
        raise ParityError(f"{name}: ONNX and torch probabilities differ by {diff:.2e} > {PARITY_TOLERANCE:.0e}")
    probs = onnx_probabilities(session, x)
    entry = {
        "file": relative,
        "sha256": sha256_file(path),
        "bytes": os.path.getsize(path),
        "input_size": meta["input_size"],
        "mean": meta["mean"],
        "std": meta["std"],
        "opset": OPSET,
        "exporter": exporter,
        "parity_max_abs_diff": diff,
        "epoch": meta["epoch"],
        "train_config": meta["train_config"],
        "train_metrics": {k: v for k, v in meta["metrics"].items() if not k.startswith("val_")},
    }
    return entry, probs


def build_run_bundle(run_dir: str, checkpoints: dict[str, str], source,
                     extra: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Export every checkpoint, score members and their (equal-weight) ensemble on val, write the manifest.

    ``source``: the run's data (ImageFolders or ParquetCache: ``classes``, ``counts``, ``arrays``).
    """
    val_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    models, member_probs = {}, {}
    for name, checkpoint_dir in checkpoints.items():
        with open(os.path.join(checkpoint_dir, "meta.json")) as f:
            size = json.load(f)["input_size"]
        if size not in val_cache:
            val_cache[size] = source.arrays("val", size)
        images, labels = val_cache[size]
        entry, probs = export_member(checkpoint_dir, run_dir, images)
        entry["val"] = classification_metrics(probs, labels, source.classes)
        entry.update((extra or {}).get(name, {}))
        models[name], member_probs[name] = entry, probs
    weights = {name: 1.0 / len(models) for name in models}
    ensemble_val = classification_metrics(ensemble_probabilities(member_probs, weights), labels, source.classes)
    manifest = {
        "format_version": FORMAT_VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "classes": source.classes,
        "data": {"root": source.root, "train": source.counts("train"), "val": source.counts("val")},
        "models": models,
        "ensemble": {"members": list(models), "weights": weights, "combine": "weighted mean of probabilities",
                     "val": ensemble_val},
    }
    with open(os.path.join(run_dir, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=False)
    return manifest


def results_table(manifest: dict[str, Any]) -> str:
    """Model, best config, val accuracy, macro-F1 — one row per member and one for the ensemble."""
    rows = [("model", "input", "val_acc", "macro_f1", "best config")]
    for name, m in manifest["models"].items():
        cfg = m["train_config"]
        best = f"lr={cfg['lr']:.2e} wd={cfg['weight_decay']:.2e} bs={cfg['batch_size']} rot={cfg['rotation_deg']:.1f} contrast={cfg['contrast']:.2f}"
        rows.append((name, str(m["input_size"]), f"{m['val']['accuracy']:.4f}", f"{m['val']['macro_f1']:.4f}", best))
    ens = manifest["ensemble"]
    rows.append(("ensemble", "-", f"{ens['val']['accuracy']:.4f}", f"{ens['val']['macro_f1']:.4f}",
                 "mean of " + ", ".join(ens["members"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
