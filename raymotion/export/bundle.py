"""A run directory that serving needs and nothing else: ONNX files + ``manifest.json`` (raymotion.rundir).

    RUN_DIR/
      manifest.json          classes, per-model input size / normalization / val metrics / sha256,
                             ensemble members, fitted weights and temperature, val metrics (in-sample,
                             uncalibrated, equal weights, out-of-fold)
      models/<name>.onnx     fp32 (parity-checked against torch)
      models/<name>.int8-static.onnx, <name>.int8-dynamic.onnx
                             int8 candidates; the manifest's models.<name>.serve names the file served
      checkpoints/<name>/    the torch checkpoint each ONNX file came from
      predictions/val.npz    val labels, every member's and the ensemble's probabilities, thumbnails

Every member and the ensemble are also scored on "degraded val" (``val_degraded``): the val images through
``data.pipeline.camera_degraded`` at the largest member size, then resized to each member's, as the service
resizes a camera's face crop; the same seeded degradation in every run.

The ensemble is ``raymotion.export.mixture.ensemble_probabilities``: the manifest's pooling rule, fitted
weights, temperature and class bias; each member is the file in ``models.<name>.serve`` (int8 when it was accepted, else the
fp32 file) and every val figure is computed from that file's outputs. The manifest is validated by
``raymotion.rundir.Manifest`` before it is written, so readers get exactly the fields declared there.
"""

from __future__ import annotations

import copy
import os
import time
from typing import Any

import numpy as np
from PIL import Image

from raymotion import rundir
from raymotion.config import EnsembleRule, ExportConfig
from raymotion.data.sources import Sources, as_sources, is_generated
from raymotion.data.synthetic import GENERATED_NOTE
from raymotion.data.pipeline import camera_degraded
from raymotion.data.transforms import normalize, resize_rgb
from raymotion.export import ensemble
from raymotion.export.mixture import RULES, ensemble_probabilities
from raymotion.export.onnx import OPSET, export_optimized
from raymotion.export.quantize import choose_int8, int8_image_sets
from raymotion.export.sessions import calibrated_member_probabilities, create_session, onnx_probabilities
from raymotion.models.tta import FlipAveraged
from raymotion.rundir import Manifest, PredictionKeys, sha256_file
from raymotion.train.checkpoint import load_checkpoint

PARITY_IMAGES = 64
THUMBNAILS = 96
THUMB_SIZE = 64
OUT_OF_FOLD_FOLDS = 5


def export_member(checkpoint_dir: str, run_dir: str, val_images: np.ndarray,
                  flip_tta: bool = False) -> tuple[dict[str, Any], np.ndarray]:
    """Export one checkpoint (optimised offline, portable "basic" level) and check that the written file
    agrees with torch on real val images (raymotion.export.onnx.ParityError if not); return its manifest
    entry and val probabilities.

    ``val_images``: uint8 NHWC at the checkpoint's input size. ``flip_tta``: the exported graph averages
    the logits of the image and its mirror image (raymotion.models.tta.FlipAveraged).
    """
    model, meta = load_checkpoint(checkpoint_dir)
    if flip_tta:
        model = FlipAveraged(model).eval()
    relative = os.path.join(rundir.MODELS_DIR, f"{meta.model}.onnx")
    path = os.path.join(run_dir, relative)
    x = normalize(val_images, meta.mean, meta.std)
    exported = export_optimized(model, path, meta.input_size, x[:PARITY_IMAGES])
    probs = onnx_probabilities(create_session(path), x)
    entry = {
        "file": relative,
        "sha256": sha256_file(path),
        "bytes": os.path.getsize(path),
        "input_size": meta.input_size,
        "mean": meta.mean,
        "std": meta.std,
        "opset": OPSET,
        **exported,  # exporter, offline optimisation level, parity_max_abs_diff
        "test_time_augmentation": "hflip" if flip_tta else "none",
        "epoch": meta.epoch,
        "train_config": meta.train_config,
        "train_metrics": {k: v for k, v in meta.metrics.items() if not k.startswith("val_")},
    }
    return entry, probs


# A run's members already exported by this process (the teachers, exported for their soft labels before the
# final export): (run directory, checkpoint weights' sha256, flip TTA) -> (fp32 entry, val probabilities).
ExportedMembers = dict[tuple[str, str, bool], tuple[dict[str, Any], np.ndarray]]


def export_member_once(checkpoint_dir: str, run_dir: str, val_images: np.ndarray, flip_tta: bool,
                       exported: ExportedMembers | None) -> tuple[dict[str, Any], np.ndarray]:
    """export_member, unless ``exported`` holds this checkpoint's export to this run's file, still on disk as
    written: the same weights give the same file and val probabilities (a teacher is exported for its soft
    labels, then again in the final export)."""
    if exported is None:
        return export_member(checkpoint_dir, run_dir, val_images, flip_tta=flip_tta)
    weights = sha256_file(os.path.join(checkpoint_dir, rundir.CHECKPOINT_MODEL))
    key = (os.path.abspath(run_dir), weights, flip_tta)
    if key in exported:
        entry, probs = exported[key]
        path = os.path.join(run_dir, entry["file"])
        if os.path.exists(path) and sha256_file(path) == entry["sha256"]:  # not overwritten since
            return copy.deepcopy(entry), probs
    entry, probs = export_member(checkpoint_dir, run_dir, val_images, flip_tta=flip_tta)
    exported[key] = copy.deepcopy(entry), probs
    return entry, probs


def _relative_record(record: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """choose_int8's record with run-relative "file"s in place of absolute "path"s (the bundle can move)."""
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            value = _relative_record(value, run_dir)
        if key == "path":
            key, value = "file", os.path.relpath(value, run_dir)
        out[key] = value
    return out


def choose_served_file(name: str, entry: dict[str, Any], run_dir: str, source, val_x: np.ndarray,
                       val_labels: np.ndarray, classes: list[str], cfg: ExportConfig,
                       val_probs: dict[str, np.ndarray]) -> dict[str, Any]:
    """Build the int8 candidates of one exported member, pick fp32 / static / dynamic (choose_int8), record
    the choice in ``entry`` ("int8", "serve") and return the "serve" record. ``val_probs``: {"fp32": val
    probabilities}; every variant scored is added (choose_int8)."""
    fp32 = {"variant": "fp32", "file": entry["file"], "sha256": entry["sha256"], "bytes": entry["bytes"]}
    if not cfg.int8:
        entry["serve"] = dict(fp32, reason="int8 disabled (ExportConfig.int8=False)")
        return entry["serve"]
    ranges, selection = int8_image_sets(source, entry["input_size"], entry["mean"], entry["std"], cfg.int8_range_images)
    record = choose_int8(os.path.join(run_dir, entry["file"]), os.path.join(run_dir, rundir.MODELS_DIR), ranges,
                         val_x, val_labels, classes, cfg.int8_tolerance_points,
                         max_latency_ratio=cfg.int8_max_latency_ratio, selection_images=selection, name=name,
                         max_seconds=cfg.latency_seconds, val_probs=val_probs)
    record = _relative_record(record, run_dir)
    # Per-class val metrics of each candidate are in the member's own "val"; keep the headline figures.
    for variant in ("fp32", "static", "dynamic"):
        record.get(variant, {}).pop("val", None)
    if record["selected"] == "fp32":
        record["file"] = None  # no int8 file is served
        entry["serve"] = dict(fp32, reason=record["reason"])
    else:
        path = os.path.join(run_dir, record["file"])
        entry["serve"] = {"variant": record["selected"], "file": record["file"], "sha256": sha256_file(path),
                          "bytes": os.path.getsize(path), "reason": record["reason"]}
    entry["int8"] = record
    return entry["serve"]


def data_record(source: Sources) -> dict[str, Any]:
    """The manifest's "data": roots, counts (pooled and per source), and whether the images are generated
    faces (then a warning that no reader can miss: such a run's models know nothing of real faces)."""
    record = {"root": source.root, "train": source.counts("train"), "val": source.counts("val"),
              "generated": source.generated,
              "sources": [{"name": part.name, "root": part.data.root, "train": part.data.counts("train"),
                           "val": part.data.counts("val"), "generated": is_generated(part.data.root)}
                          for part in source.parts]}
    if record["generated"]:
        record["warning"] = GENERATED_NOTE
    return record


class ValRows:
    """What export knows of each val row besides its image: label, run-wide uid, source and file."""

    def __init__(self, source: Sources, labels: np.ndarray, uids: np.ndarray):
        self.labels, self.uids = labels, uids
        self.sources = source.source_of("val", uids)
        self.source_names = source.names
        self.paths = source.paths_of("val", uids)

    def masks(self) -> dict[str, np.ndarray]:
        """Source name -> its rows, with two or more sources (per-source figures); {} with one."""
        if len(self.source_names) < 2:
            return {}
        return {name: self.sources == i for i, name in enumerate(self.source_names)}


def build_run_bundle(run_dir: str, checkpoints: dict[str, str], source,
                     extra: dict[str, dict[str, Any]] | None = None,
                     export: ExportConfig | None = None, exported: ExportedMembers | None = None) -> Manifest:
    """Export every checkpoint (and its int8 candidates), fit the ensemble's weights and temperature on
    val, score everything on val, write the manifest and ``predictions/val.npz``.

    ``source``: the run's data (Sources, or one ImageFolders or ParquetCache). With several sources the
    calibrations and the pool are fitted on the val rows of them all, and every figure is also given per
    source (``by_source``). Member probabilities, and so the ensemble's fit and every val figure, come from the
    file each member serves (``models.<name>.serve``), so that the manifest describes what Serve answers.
    ``exported``: the members this process exported already (export_member_once), filled.
    """
    export = export or ExportConfig()
    source = as_sources(source)
    val_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    models, raw_member_probs, rows = export_members(run_dir, checkpoints, source, extra or {}, export, val_cache,
                                                    exported)
    labels = rows.labels
    member_probs, fitted = fit_calibration_and_ensemble(models, raw_member_probs, labels, source.classes,
                                                        export.ensemble_rule)
    score_by_source(models, fitted, member_probs, rows, source.classes)
    manifest = Manifest.model_validate({
        "format_version": rundir.FORMAT_VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "classes": source.classes,
        "data": data_record(source),
        "models": models,
        "ensemble": fitted["ensemble"],
    })
    score_degraded(run_dir, manifest, rows, val_cache)
    write_predictions(run_dir, rows, member_probs, raw_member_probs, fitted["raw"], fitted["calibrated"],
                      images=val_cache[max(val_cache)][0])
    rundir.write_manifest(run_dir, manifest)
    return manifest


def export_members(run_dir: str, checkpoints: dict[str, str], source: Sources, extra: dict[str, dict[str, Any]],
                   export: ExportConfig, val_cache: dict[int, tuple[np.ndarray, np.ndarray]],
                   exported: ExportedMembers | None = None):
    """Each checkpoint to ONNX, its served file chosen (fp32 or int8); returns the manifest entries, the
    served files' val probabilities and the val rows (ValRows). ``val_cache``: val arrays by input size,
    filled."""
    models, raw_member_probs, labels, uids = {}, {}, None, None
    for name, checkpoint_dir in checkpoints.items():
        size = rundir.read_checkpoint_meta(checkpoint_dir).input_size
        if size not in val_cache:
            images, size_labels, size_uids = source.arrays_with_uids("val", size)
            val_cache[size] = images, size_labels
            # Members at different sizes must be scored on the same rows, or their probabilities cannot be mixed.
            if uids is not None and not np.array_equal(uids, size_uids):
                raise ValueError(f"{name}: val images at {size}px are not the rows the other members were scored on")
            uids = size_uids
        images, labels = val_cache[size]
        entry, probs = export_member_once(checkpoint_dir, run_dir, images, export.flip_tta, exported)
        entry.update(extra.get(name, {}))
        x = normalize(images, entry["mean"], entry["std"])
        val_probs = {"fp32": probs}
        serve = choose_served_file(name, entry, run_dir, source, x, labels, source.classes, export, val_probs)
        models[name], raw_member_probs[name] = entry, val_probs[serve["variant"]]  # the served file's outputs
    return models, raw_member_probs, ValRows(source, labels, uids)


def fit_calibration_and_ensemble(models: dict[str, dict[str, Any]], raw_member_probs: dict[str, np.ndarray],
                                 labels: np.ndarray, classes: list[str],
                                 rule: EnsembleRule = ExportConfig.ensemble_rule):
    """Members calibrated one by one (their own temperature and class bias), then pooled by ``rule``; every
    figure scored on val in-sample and out-of-fold (both rules out-of-fold, the one not served as a
    comparison). Fills each member's entry in ``models``; returns the calibrated member probabilities and
    {"ensemble" record, "raw", "calibrated"}."""
    member_calibrations = ensemble.fit_member_calibrations(raw_member_probs, labels)
    member_probs = ensemble.calibrate_members(raw_member_probs, member_calibrations)
    # Out-of-fold: every fold refits the members' calibrations and the pool on the other folds.
    oofs = {r: ensemble.cross_fitted(raw_member_probs, labels, folds=OUT_OF_FOLD_FOLDS, seed=0, classes=classes,
                                     fit_member_calibration=True, rule=r) for r in RULES}
    oof = oofs[rule]
    for name, entry in models.items():
        entry.update(member_calibrations[name])  # "temperature" and "bias" (one per class, in class order)
        entry["val"] = ensemble.scores(member_probs[name], labels, classes)
        entry["val_uncalibrated"] = ensemble.scores(raw_member_probs[name], labels, classes)
        # "val" is in-sample (the calibration, class bias included, was fitted on these images).
        entry["val_out_of_fold"] = dict(ensemble.scores(oof["member_probs"][name], labels, classes),
                                        folds=oof["metrics"]["folds"], seed=oof["metrics"]["seed"])
    fitted = ensemble.fit(member_probs, labels, rule=rule)
    raw, calibrated = fitted.probabilities(member_probs, tempered=False), fitted.probabilities(member_probs)
    # The baseline: the plain mean of the members as exported (no temperatures at all).
    equal = ensemble.combine(raw_member_probs, {name: 1.0 for name in raw_member_probs})
    out_of_fold = dict(oof["metrics"], fold_weights=oof["weights"], fold_temperatures=oof["temperatures"],
                       uncalibrated=ensemble.scores(oof["probs_raw"], labels, classes))
    record = {
        "members": list(models),
        "served": ensemble.served_members(fitted.weights),
        "weights": fitted.weights,
        "temperature": fitted.temperature,
        "bias": fitted.bias,
        "rule": rule,
        "method": ensemble.METHODS[rule],
        "combine": ensemble.COMBINES[rule],
        # In-sample: the pool was fitted on these very images; val_out_of_fold is the honest figure.
        "val": ensemble.scores(calibrated, labels, classes),
        "val_uncalibrated": ensemble.scores(raw, labels, classes),
        "val_equal_weights": ensemble.scores(equal, labels, classes),
        "val_out_of_fold": out_of_fold,
        "gain_out_of_fold": gain_over_best_member(models, out_of_fold),
        "rules_out_of_fold": {r: {k: o["metrics"][k] for k in ("accuracy", "macro_f1", "log_loss")}
                              for r, o in oofs.items()},
    }
    return member_probs, {"ensemble": record, "raw": raw, "calibrated": calibrated, "out_of_fold": oof}


def score_by_source(models: dict[str, dict[str, Any]], fitted: dict[str, Any], member_probs: dict[str, np.ndarray],
                    rows: ValRows, classes: list[str]) -> None:
    """Each member's and the ensemble's figures on each source's val rows (``by_source``), in-sample and out
    of fold, and per source the ensemble's gain over that source's best member and where the two disagree
    (out of fold). Nothing with one source."""
    oof, record = fitted["out_of_fold"], fitted["ensemble"]
    labels = rows.labels
    for name, mask in rows.masks().items():
        for member, entry in models.items():
            entry.setdefault("by_source", {})[name] = {
                "images": int(mask.sum()), "val": ensemble.scores(member_probs[member][mask], labels[mask], classes),
                "val_out_of_fold": ensemble.scores(oof["member_probs"][member][mask], labels[mask], classes)}
        pool = oof["probs"][mask]
        figures = {"images": int(mask.sum()), "val": ensemble.scores(fitted["calibrated"][mask], labels[mask], classes),
                   "val_out_of_fold": ensemble.scores(pool, labels[mask], classes)}
        best = max(models, key=lambda m: models[m]["by_source"][name]["val_out_of_fold"]["accuracy"])
        member_oof = models[best]["by_source"][name]["val_out_of_fold"]
        figures["gain_out_of_fold"] = {
            "best_member": best,
            "accuracy_points": 100 * (figures["val_out_of_fold"]["accuracy"] - member_oof["accuracy"]),
            "macro_f1_points": 100 * (figures["val_out_of_fold"]["macro_f1"] - member_oof["macro_f1"])}
        figures["disagreements"] = disagreements(pool, oof["member_probs"][best][mask], labels[mask],
                                                 np.flatnonzero(mask), best)
        record.setdefault("by_source", {})[name] = figures


def disagreements(pool: np.ndarray, member: np.ndarray, labels: np.ndarray, rows: np.ndarray, member_name: str,
                  keep: int = 48) -> dict[str, Any]:
    """Where the pool's answer and one member's differ: how many, who was right, and (at most ``keep``) the
    val rows (indices into predictions/val.npz) in each case, the most confident pool first."""
    pool_pred, member_pred = pool.argmax(1), member.argmax(1)
    differ = pool_pred != member_pred
    order = np.argsort(-pool.max(1), kind="stable")
    cases = {"pool_right": differ & (pool_pred == labels), "member_right": differ & (member_pred == labels),
             "both_wrong": differ & (pool_pred != labels) & (member_pred != labels)}
    out: dict[str, Any] = {"member": member_name, "rows": int(differ.sum())}
    for case, mask in cases.items():
        out[case] = int(mask.sum())
        out[f"{case}_rows"] = [int(rows[i]) for i in order if mask[i]][:keep]
    return out


def degraded_val(val_cache: dict[int, tuple[np.ndarray, np.ndarray]]) -> dict[int, np.ndarray]:
    """Camera-degraded val at every cached size: degraded once at the largest, then resized down."""
    largest = max(val_cache)
    degraded = camera_degraded(val_cache[largest][0])
    return {size: degraded if size == largest else np.stack([resize_rgb(Image.fromarray(x), size) for x in degraded])
            for size in val_cache}


def score_degraded(run_dir: str, manifest: Manifest, rows: ValRows,
                   val_cache: dict[int, tuple[np.ndarray, np.ndarray]]) -> None:
    """``val_degraded`` of every member (its served file, its clean-val calibration) and of the fitted
    ensemble (as the manifest pools it), pooled and per source, set on the manifest."""
    labels, classes = rows.labels, manifest.classes
    probs = calibrated_member_probabilities(run_dir, manifest.models, degraded_val(val_cache))
    for name, entry in manifest.models.items():
        entry.val_degraded = ensemble.scores(probs[name], labels, classes)
        for source, mask in rows.masks().items():
            entry.by_source[source].val_degraded = ensemble.scores(probs[name][mask], labels[mask], classes)
    mixed = ensemble_probabilities(probs, manifest.ensemble)
    manifest.ensemble.val_degraded = ensemble.scores(mixed, labels, classes)
    for source, mask in rows.masks().items():
        manifest.ensemble.by_source[source].val_degraded = ensemble.scores(mixed[mask], labels[mask], classes)


def gain_over_best_member(models: dict[str, dict[str, Any]], ensemble_oof: dict[str, Any]) -> dict[str, Any]:
    """What the ensemble adds, out of fold: its accuracy and macro-F1 minus those of its best member (by
    out-of-fold accuracy), in points. Both sides refitted per fold, so neither is flattered."""
    best = max(models, key=lambda n: models[n]["val_out_of_fold"]["accuracy"])
    member = models[best]["val_out_of_fold"]
    return {"best_member": best,
            "accuracy_points": 100 * (ensemble_oof["accuracy"] - member["accuracy"]),
            "macro_f1_points": 100 * (ensemble_oof["macro_f1"] - member["macro_f1"])}


def write_predictions(run_dir: str, rows: ValRows, member_probs: dict[str, np.ndarray],
                      raw_member_probs: dict[str, np.ndarray], raw: np.ndarray, calibrated: np.ndarray,
                      images: np.ndarray) -> str:
    """predictions/val.npz (rundir.ValPredictions), thumbnails cut from ``images`` (the largest size)."""
    thumb_index = thumbnail_order(calibrated, rows.labels, THUMBNAILS)
    keys = PredictionKeys
    # probs__<model>: what the ensemble mixes (each member through its own calibration, as served).
    probs = {**member_probs, keys.ENSEMBLE_RAW: raw, keys.ENSEMBLE: calibrated}
    return rundir.write_val_predictions(run_dir, rundir.ValPredictions(
        labels=rows.labels, probs=probs, raw_probs=raw_member_probs, sources=rows.sources,
        source_names=rows.source_names, paths=rows.paths, thumb_index=thumb_index,
        thumbs=thumbnails(images, thumb_index, THUMB_SIZE)))


def thumbnail_order(probs: np.ndarray, labels: np.ndarray, limit: int, mistakes_share: float = 2 / 3) -> np.ndarray:
    """Row indices to show, at most ``limit``: mistakes first (most confident first), then correct rows dealt
    round-robin over the true classes in val order, so each class appears. Mistakes fill at most
    ``mistakes_share`` of the grid while there are correct rows to show (a full run makes more mistakes
    than the grid holds, and a grid of mistakes alone shows nothing of what the model gets right)."""
    preds, confidence = probs.argmax(1), probs.max(1)
    wrong = np.flatnonzero(preds != labels)
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")]
    right = np.flatnonzero(preds == labels)
    per_class = [right[labels[right] == c] for c in np.unique(labels[right])]
    dealt = [r[i] for i in range(max((len(r) for r in per_class), default=0)) for r in per_class if i < len(r)]
    n_wrong = min(len(wrong), max(int(limit * mistakes_share), limit - len(dealt)))
    return np.asarray(list(wrong[:n_wrong]) + dealt, np.int64)[:limit]


def thumbnails(images: np.ndarray, index: np.ndarray, size: int) -> np.ndarray:
    """uint8 (K, size, size, 3) of the chosen rows of uint8 NHWC ``images``."""
    if len(index) == 0:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([resize_rgb(Image.fromarray(images[i]), size) for i in index]).astype(np.uint8)


def results_table(manifest: Manifest) -> str:
    """Model, input, val accuracy, macro-F1, ECE, best config — a row per member, then the ensemble:
    fitted (in-sample), equal-weight mean, and the out-of-fold estimate of the fitted ensemble."""
    rows = [("model", "input", "served", "val_acc", "macro_f1", "ece", "degraded_acc", "best config / ensemble")]

    def fmt(val: dict[str, Any], key: str) -> str:
        return f"{val[key]:.4f}" if key in val else "-"

    for name, m in manifest.models.items():
        cfg = m.train_config
        best = (f"lr={cfg.lr:.2e} wd={cfg.weight_decay:.2e} bs={cfg.batch_size} rot={cfg.augmentation.rotation_deg:.1f} "
                f"contrast={cfg.augmentation.contrast:.2f}")
        v = m.val
        served = m.serve.variant
        rows.append((name, str(m.input_size), served if served == "fp32" else f"int8 {served}", fmt(v, "accuracy"),
                     fmt(v, "macro_f1"), fmt(v, "ece"), fmt(m.val_degraded or {}, "accuracy"), best))
    ens = manifest.ensemble
    weights = " ".join(f"{n}={ens.weights[n]:.2f}" for n in ens.members)
    rows.append(("ensemble", "-", "-", fmt(ens.val, "accuracy"), fmt(ens.val, "macro_f1"), fmt(ens.val, "ece"),
                 fmt(ens.val_degraded or {}, "accuracy"),
                 f"{ens.rule} pool, weights {weights}, T={ens.temperature:.3f} (fitted on val: in-sample)"))
    if ens.val_equal_weights is not None:
        v = ens.val_equal_weights
        rows.append(("ensemble (equal)", "-", "-", fmt(v, "accuracy"), fmt(v, "macro_f1"), fmt(v, "ece"), "-",
                     "plain mean of " + ", ".join(ens.members) + ", T=1"))
    if ens.val_out_of_fold is not None:
        v = ens.val_out_of_fold
        rows.append(("ensemble (oof)", "-", "-", fmt(v, "accuracy"), fmt(v, "macro_f1"), fmt(v, "ece"), "-",
                     f"weights and T refitted on {v['folds']}-1 folds, scored on the held-out fold (honest)"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def source_table(manifest: Manifest) -> str:
    """Per data source, a row per member and the ensemble: images, val, out-of-fold and degraded accuracy and
    macro-F1, weight; then the ensemble's out-of-fold gain over the source's best member. "" with one source."""
    ens = manifest.ensemble
    if not ens.by_source:
        return ""
    rows = [("source", "model", "images", "val_acc", "oof_acc", "oof_macro_f1", "degraded_acc", "weight", "minutes")]

    def fmt(val: dict[str, Any] | None, key: str) -> str:
        return f"{val[key]:.4f}" if val and key in val else "-"

    lines = []
    for source, figures in ens.by_source.items():
        entries = [(name, m.by_source.get(source), f"{ens.weights.get(name, 0):.2f}",
                    f"{m.tune['seconds'] / 60:.1f}" if m.tune and "seconds" in m.tune else "-")
                   for name, m in manifest.models.items()]
        for name, scores, weight, minutes in entries + [("ensemble", figures, "-", "-")]:
            if scores is None:
                continue
            rows.append((source, name, str(scores.images), fmt(scores.val, "accuracy"),
                         fmt(scores.val_out_of_fold, "accuracy"), fmt(scores.val_out_of_fold, "macro_f1"),
                         fmt(scores.val_degraded, "accuracy"), weight, minutes))
        gain, split = figures.gain_out_of_fold or {}, figures.disagreements or {}
        if gain:
            lines.append(f"{source}: ensemble - best member ({gain['best_member']}), out-of-fold: "
                         f"{gain['accuracy_points']:+.1f} points accuracy, {gain['macro_f1_points']:+.1f} macro-F1; "
                         f"they disagree on {split.get('rows', 0)} images: ensemble right {split.get('pool_right', 0)}, "
                         f"{gain['best_member']} right {split.get('member_right', 0)}, both wrong {split.get('both_wrong', 0)}")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    table = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
    return "\n".join([table, *lines])
