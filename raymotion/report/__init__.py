"""An HTML report of one run directory: what was trained, how well, how calibrated, and which images fail.

    write_report(run_dir) -> RUN_DIR/report/index.html, with its PNGs beside it (relative links)

Reads ``manifest.json`` and, when present, ``predictions/val.npz``; the last stage, imported by nothing
but the tune CLI.
"""

from __future__ import annotations

import glob
import os
import re
import time
from typing import Any

import numpy as np

from raymotion import rundir
from raymotion.report import page, plots
from raymotion.report.run import (ENSEMBLE, ENSEMBLE_RAW, RunData, confusion_of, ensemble_metrics, grid_order,
                                  grid_predictions, history_of, is_number, load_run, member_metrics, metrics_for,
                                  per_class, train_seconds, uncalibrated_metrics)
from raymotion.rundir import ModelEntry
from raymotion.train.metrics import expected_calibration_error

REPORT_DIR = rundir.REPORT_DIR
INDEX = "index.html"
THUMBS_DIR = "thumbs"
MAX_THUMBS = 240  # a page, not an archive: mistakes come first, so the cap drops correct images

SECTIONS = [("summary", "Run summary"), ("results", "Results"), ("curves", "Training curves"),
            ("confusion", "Confusion matrices"), ("per-class", "Per-class precision, recall and F1"),
            ("ensemble", "Ensemble members and weights"), ("sources", "Data sources"),
            ("reliability", "Reliability (calibration)"), ("images", "Validation images")]
DISAGREEMENT_THUMBS = 12  # per source and case: enough to see what kind of image each side gets right


def write_report(run_dir: str, out: str | None = None) -> str:
    """Write the report for ``run_dir`` into ``out`` (default RUN_DIR/report); return the index.html path."""
    run = load_run(run_dir)
    out = plots.ensure_dir(os.path.abspath(out or os.path.join(run_dir, REPORT_DIR)))
    files = _FileNames()
    builders = {"summary": _summary, "results": _results, "curves": _curves, "confusion": _confusions,
                "per-class": _per_class, "ensemble": _ensemble, "sources": _sources, "reliability": _reliability,
                "images": _images}
    sections = [page.section(sid, title, builders[sid](run, out, files)) for sid, title in SECTIONS]
    toc = "<nav><p>" + " · ".join(f'<a href="#{page.esc(sid)}">{page.esc(title)}</a>' for sid, title in SECTIONS) \
        + "</p></nav>"
    title = f"raymotion run: {os.path.basename(os.path.abspath(run_dir))}"
    subtitle = f"{os.path.abspath(run_dir)} · report written {time.strftime('%Y-%m-%d %H:%M:%S')}"
    path = os.path.join(out, INDEX)
    with open(path, "w", encoding="utf-8") as f:
        f.write(page.document(title, subtitle, [toc, *sections]))
    return path


class _FileNames:
    """File-system-safe, unique PNG names for model names that could hold anything."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, stem: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._") or "figure"
        name, i = f"{base}.png", 1
        while name in self.used:
            i += 1
            name = f"{base}_{i}.png"
        self.used.add(name)
        return name


METRIC_HEADER = ["val acc", "top-2", "macro-F1", "log loss", "ECE"]


def _metric_cells(m: dict[str, Any]) -> list[str]:
    return [page.fmt(m.get(k)) for k in ("accuracy", "top2_accuracy", "macro_f1", "log_loss", "ece")]


# --- sections -------------------------------------------------------------------------------------------------

def _summary(run: RunData, out: str, files: _FileNames) -> str:
    data = run.manifest.data
    rows = [[c, data.train.get(c, "n/a"), data.val.get(c, "n/a")] for c in run.classes]
    rows.append(["total", sum(data.train.values()), sum(data.val.values())])
    facts = [("run directory", os.path.abspath(run.run_dir)), ("created", run.manifest.created_at),
             ("data root", data.root), ("classes", ", ".join(run.classes) or "n/a"),
             ("models", ", ".join(run.members) or "none"),
             ("val predictions", f"{len(run.labels)} images (predictions/val.npz)" if run.labels is not None
              else "none (no predictions/val.npz): figures that need them are skipped")]
    # A run on generated faces must not pass for a real one: the warning leads the report.
    banner = f'<p class="warning">{page.esc(data.warning or "generated faces")}</p>' if data.generated else ""
    return (banner + page.facts(facts) + page.table(["class", "train images", "val images"], rows,
                                                     [""] * len(run.classes) + ["emph"]))


def _served_file(entry: ModelEntry) -> str:
    """fp32, or the int8 variant served and its size (manifest models.<name>.serve)."""
    if entry.serve.variant == "fp32":
        return "fp32"
    return f"int8 {entry.serve.variant}, {entry.serve.bytes / 2**20:.2f} MB"


def _results(run: RunData, out: str, files: _FileNames) -> str:
    header = ["model", "input px", "best epoch / max", "train min (best trial)", "tune min (all trials)",
              "trials (stopped early, failed)", "ONNX MB", "served file", *METRIC_HEADER, "weight"]
    weights = run.ensemble.weights
    rows, classes = [], []
    for name in run.members:
        entry = run.manifest.models[name]
        # The tune command's record is open-ended (absent when the bundle was exported alone).
        cfg, tune = entry.train_config, entry.tune or {}
        seconds = train_seconds(history_of(run, name))
        trials = f"{tune['trials']} ({tune.get('stopped_early', 'n/a')}, {tune.get('failed', 'n/a')})" \
            if "trials" in tune else "n/a"
        rows.append([name, entry.input_size, f"{entry.epoch} / {cfg.epochs}",
                     page.fmt(seconds / 60 if seconds is not None else None, ".1f"),
                     page.fmt(tune["seconds"] / 60 if is_number(tune.get("seconds")) else None, ".1f"),
                     trials, page.fmt(entry.bytes / 2**20, ".2f"),
                     _served_file(entry),
                     *_metric_cells(member_metrics(run, name)), page.fmt(weights[name])])
        classes.append("")
    blanks = ["-"] * 7
    ens = run.ensemble
    oof = ens.val_out_of_fold
    rows.append([f"ensemble ({ens.rule} pool, fitted weights, T = {page.fmt(ens.temperature, '.3g')})", *blanks,
                 *_metric_cells(ensemble_metrics(run)), page.fmt(sum(weights.values()))])
    classes.append("emph")
    variants = [(ens.val_uncalibrated, "ensemble before temperature scaling", ENSEMBLE_RAW),
                (ens.val_equal_weights, "ensemble, equal weights", None),
                (oof, "ensemble, out-of-fold", None),
                (oof.get("uncalibrated") if oof else None, "ensemble, out-of-fold, before temperature scaling", None),
                (ens.val_degraded, "ensemble, camera-degraded val", None)]
    for stored, label, probs_key in variants:
        if isinstance(stored, dict) or (probs_key and probs_key in run.probs):
            rows.append([label, *blanks, *_metric_cells(metrics_for(run, stored, probs_key)), "-"])
            classes.append("emph" if stored is oof else "")
    return page.table(header, rows, classes) + "".join(page.note(n) for n in _result_notes(run))


def _result_notes(run: RunData) -> list[str]:
    """What the results table's rows mean: minutes, ECE, calibration, degraded val, out-of-fold."""
    ens = run.ensemble
    oof = ens.val_out_of_fold
    notes = ["Train minutes: the best trial's epochs (training + validation) from its history; tune minutes: "
             "the whole search for that model. ECE: expected calibration error, 15 equal-width confidence bins."]
    before, after = uncalibrated_metrics(run).get("ece"), ensemble_metrics(run).get("ece")
    notes.append(f"Ensemble ECE before temperature scaling: {page.fmt(before)}; after: {page.fmt(after)} "
                 f"(T = {page.fmt(ens.temperature, '.3g')}).")
    member_oof = {name: run.manifest.models[name].val_out_of_fold for name in run.members}
    member_oof = {name: v for name, v in member_oof.items() if v is not None}
    if member_oof:
        notes.append("Model rows are scored through each model's calibration (temperature and class bias), which "
                     "was fitted on val too; refitted out-of-fold they score: " + "; ".join(
                         f"{name} acc {page.fmt(v.get('accuracy'))}, macro-F1 {page.fmt(v.get('macro_f1'))}, "
                         f"ECE {page.fmt(v.get('ece'))}" for name, v in member_oof.items()) + ".")
    gain = ens.gain_out_of_fold
    if gain:
        notes.append(f"The ensemble minus its best member ({gain['best_member']}), both out-of-fold: "
                     f"{gain['accuracy_points']:+.1f} points of accuracy, {gain['macro_f1_points']:+.1f} of macro-F1.")
    if ens.rules_out_of_fold:
        notes.append(f"Pooling rules on these members, out-of-fold (served: {ens.rule}): " + "; ".join(
            f"{rule} acc {page.fmt(r.get('accuracy'))}, macro-F1 {page.fmt(r.get('macro_f1'))}, "
            f"log loss {page.fmt(r.get('log_loss'))}" for rule, r in ens.rules_out_of_fold.items()) + ".")
    degraded = {name: run.manifest.models[name].val_degraded for name in run.members}
    if any(v is not None for v in degraded.values()):
        notes.append("Camera-degraded val: the same val images shifted, grey, shrunk to 20-48 px and back, blurred "
                     "and JPEG re-compressed (seeded; raymotion.data.pipeline.camera_degraded). Per model: " + "; ".join(
                         f"{name} acc {page.fmt(v.get('accuracy'))}, macro-F1 {page.fmt(v.get('macro_f1'))}"
                         for name, v in degraded.items() if v is not None) + ".")
    if oof:
        folds = f"{oof['folds']} " if is_number(oof.get("folds")) else ""
        notes.append(f"The fitted-ensemble rows are in-sample: weights and temperature were chosen on the val images "
                     f"they are scored on. Out-of-fold: refitted on all but one of {folds}stratified val folds and "
                     "scored on the held-out one, so every image is predicted by a fit that never saw it; the "
                     "honest estimate.")
    else:
        notes.append("Out-of-fold: n/a (this manifest records no out-of-fold score); the fitted-ensemble row is "
                     "scored on the images its weights were chosen on.")
    return notes



def _curves(run: RunData, out: str, files: _FileNames) -> str:
    parts = []
    for name in run.members:
        history = history_of(run, name)
        png = plots.training_curves(history, f"{name} (best trial)", os.path.join(out, files(f"curves_{name}")),
                                    best_epoch=run.manifest.models[name].epoch)
        if png:
            parts.append(page.figure(os.path.basename(png), f"{name}: loss and val macro-F1 / accuracy per epoch"))
        else:
            parts.append(page.note(f"{name}: n/a (no per-epoch history in the manifest)"))
    if not parts:
        return page.note("n/a: no models in the manifest")
    return f'<div class="figs">{"".join(parts)}</div>'


def _confusion_sources(run: RunData) -> list[tuple[str, np.ndarray | None]]:
    k = len(run.classes)
    out = [(name, confusion_of(member_metrics(run, name), k)) for name in run.members]
    out.append(("ensemble", confusion_of(ensemble_metrics(run), k)))
    return out


def _confusions(run: RunData, out: str, files: _FileNames) -> str:
    parts = []
    for name, cm in _confusion_sources(run):
        if cm is None:
            parts.append(page.note(f"{name}: n/a (no confusion matrix in the manifest and no predictions)"))
            continue
        acc = np.trace(cm) / max(1, cm.sum())
        png = plots.confusion(cm, run.classes, f"{name}: accuracy {acc:.3f}, n = {cm.sum()}",
                              os.path.join(out, files(f"confusion_{name}")))
        parts.append(page.figure(os.path.basename(png), f"{name}: rows true, columns predicted (counts)"))
    return f'<div class="figs">{"".join(parts)}</div>' + page.note("Colour: share of the true class's images.")


def _per_class(run: RunData, out: str, files: _FileNames) -> str:
    sources = [(name, per_class(cm)) for name, cm in _confusion_sources(run) if cm is not None]
    if not sources:
        return page.note("n/a: no confusion matrices to derive it from")
    header = ["class", "support"] + [f"{name} {m}" for name, _ in sources for m in ("P", "R", "F1")]
    rows = []
    for i, c in enumerate(run.classes):
        row = [c, int(sources[0][1]["support"][i])]
        for _, pc in sources:
            row += [page.fmt(pc["precision"][i]), page.fmt(pc["recall"][i]), page.fmt(pc["f1"][i])]
        rows.append(row)
    return page.table(header, rows) + page.note("P: precision, R: recall; from the confusion matrices above.")


def _ensemble(run: RunData, out: str, files: _FileNames) -> str:
    ens = run.ensemble
    facts = [("members", ", ".join(ens.members) or "n/a"), ("served (weight > 0)", ", ".join(ens.served) or "n/a"),
             ("temperature", page.fmt(ens.temperature, ".4g")), ("combine", ens.combine), ("method", ens.method)]
    shown = {"members", "served", "weights", "method", "combine", "temperature"}
    # Whatever else the manifest says about the ensemble in one value (a newer writer's extra field too).
    facts += [(k, v if isinstance(v, str) else page.fmt(v, ".4g")) for k, v in ens.model_dump().items()
              if k not in shown and (isinstance(v, str) or is_number(v))]
    png = plots.weights_bar(dict(ens.weights), os.path.join(out, files("ensemble_weights")))
    body = page.facts(facts) + f'<div class="figs">{page.figure(os.path.basename(png), "weight per member")}</div>'
    return body + _fold_table(ens.val_out_of_fold, ens.members)


def _sources(run: RunData, out: str, files: _FileNames) -> str:
    """Per data source: every member and the ensemble (in-sample, out of fold, degraded), the ensemble's gain
    over the source's best member, and the images where the two disagree, by who was right."""
    ens = run.ensemble
    if not ens.by_source:
        return page.note("One data source: the figures above are its own.")
    header = ["source", "model", "images", "val acc", "out-of-fold acc", "out-of-fold macro-F1",
              *(f"out-of-fold recall {c}" for c in run.classes), "degraded acc", "degraded macro-F1", "weight"]
    rows, classes, notes = [], [], []
    for source, figures in ens.by_source.items():
        entries = [(name, run.manifest.models[name].by_source.get(source), page.fmt(ens.weights.get(name)))
                   for name in run.members]
        for name, scores, weight in entries + [("ensemble", figures, "-")]:
            if scores is None:
                continue
            oof, degraded = scores.val_out_of_fold or {}, scores.val_degraded or {}
            rows.append([source, name, scores.images, page.fmt(scores.val.get("accuracy")), page.fmt(oof.get("accuracy")),
                         page.fmt(oof.get("macro_f1")), *(page.fmt(oof.get(f"recall_{c}")) for c in run.classes),
                         page.fmt(degraded.get("accuracy")), page.fmt(degraded.get("macro_f1")), weight])
            classes.append("emph" if name == "ensemble" else "")
        gain, split = figures.gain_out_of_fold or {}, figures.disagreements or {}
        if gain:
            notes.append(f"{source}: the ensemble minus its best member here ({gain['best_member']}), out of fold: "
                         f"{gain['accuracy_points']:+.1f} points of accuracy, {gain['macro_f1_points']:+.1f} of macro-F1. "
                         f"They disagree on {split.get('rows', 0)} images: the ensemble is right on "
                         f"{split.get('pool_right', 0)}, {gain['best_member']} on {split.get('member_right', 0)}, "
                         f"neither on {split.get('both_wrong', 0)}.")
    body = page.table(header, rows, classes) + "".join(page.note(n) for n in notes)
    body += page.note("Calibrations and weights are fitted on the val images of every source together; "
                      "out of fold: refitted without each fold in turn.")
    return body + _disagreement_grids(run, out)


def _disagreement_grids(run: RunData, out: str) -> str:
    """Thumbnails of the images where the pool and each source's best member disagree (out of fold), read
    from the files predictions/val.npz names, by who was right."""
    from PIL import Image

    predictions = rundir.read_val_predictions(run.run_dir)
    if predictions is None or not predictions.paths:
        return page.note("No image files in predictions/val.npz: no disagreement images.")
    thumbs_dir = plots.ensure_dir(os.path.join(out, THUMBS_DIR))
    html = []
    for source, figures in run.ensemble.by_source.items():
        split = figures.disagreements or {}
        for case, title in (("pool_right", "ensemble right"), ("member_right", f"{split.get('member')} right"),
                            ("both_wrong", "both wrong")):
            cells = []
            for i in split.get(f"{case}_rows", [])[:DISAGREEMENT_THUMBS]:
                path = predictions.paths[i]
                if not path or not os.path.exists(path):
                    continue
                name = f"disagree_{i:06d}.png"
                with Image.open(path) as image:
                    plots.thumbnail(np.asarray(image.convert("RGB").resize((96, 96))), os.path.join(thumbs_dir, name))
                cells.append(f'<figure class="thumb {"right" if case == "pool_right" else "wrong"}">'
                             + page.img(f"{THUMBS_DIR}/{name}", f"val image {i}")
                             + f"<figcaption>true {page.esc(run.classes[int(predictions.labels[i])])}</figcaption></figure>")
            if cells:
                html.append(f"<h3>{page.esc(source)}: {page.esc(title)}</h3><div class=\"grid\">{''.join(cells)}</div>")
    return "".join(html)


def _fold_table(oof: Any, members: list[str]) -> str:
    """Per-fold weights and temperature of the out-of-fold fits: how stable the fitted ensemble is."""
    if not isinstance(oof, dict):
        return ""
    fold_weights, temperatures = oof.get("fold_weights"), oof.get("fold_temperatures")
    if not isinstance(fold_weights, list) or not isinstance(temperatures, list):
        return ""
    rows = []
    for k, (w, t) in enumerate(zip(fold_weights, temperatures), start=1):
        w = w if isinstance(w, dict) else {}
        rows.append([k, page.fmt(t, ".3g"), *(page.fmt(w.get(m)) for m in members)])
    return (page.table(["fold", "T", *members], rows)
            + page.note("Out-of-fold fits: weights and temperature refitted without each fold in turn."))


def _reliability(run: RunData, out: str, files: _FileNames) -> str:
    if run.labels is None or not run.probs or len(run.labels) == 0:
        return page.note("n/a: needs predictions/val.npz")
    t = run.ensemble.temperature
    curves = []
    if ENSEMBLE_RAW in run.probs:
        curves.append(("before temperature scaling", run.probs[ENSEMBLE_RAW]))
    if ENSEMBLE in run.probs:
        label = f"after temperature scaling (T = {page.fmt(t, '.3g')})"
        curves.append((label, run.probs[ENSEMBLE]))
    text = "The ensemble with its fitted weights, before (T = 1) and after temperature scaling."
    if not curves:  # an older run without ensemble predictions: the members instead
        curves = [(name, run.probs[name]) for name in run.members if name in run.probs]
        text = "No ensemble predictions in this run: the members."
    curves = [(label, probs, expected_calibration_error(probs, run.labels)) for label, probs in curves]
    png = plots.reliability(curves, run.labels, os.path.join(out, files("reliability")))
    return (f'<div class="figs">{page.figure(os.path.basename(png), "reliability diagram")}</div>'
            + page.note(text + " Points below the diagonal: over-confident. ECE in the legend."))


def _images(run: RunData, out: str, files: _FileNames) -> str:
    chosen = grid_predictions(run)
    if run.labels is None or run.thumbs is None or chosen is None or len(run.thumb_index) == 0:
        return page.note("n/a: needs thumbnails and predictions in predictions/val.npz")
    source, probs = chosen
    index = run.thumb_index
    order = grid_order(run.labels, probs, index)
    thumbs_dir = plots.ensure_dir(os.path.join(out, THUMBS_DIR))
    for stale in glob.glob(os.path.join(thumbs_dir, "val_*.png")):  # ours, from an earlier report
        os.remove(stale)
    members = [m for m in run.members if m in run.probs]
    cells = []
    for pos in order[:MAX_THUMBS]:
        i = int(index[pos])
        true, pred = int(run.labels[i]), int(probs[i].argmax())
        wrong = pred != true
        name = f"val_{i:06d}.png"
        plots.thumbnail(run.thumbs[pos], os.path.join(thumbs_dir, name))
        votes = ", ".join(f"{m}: {run.classes[int(run.probs[m][i].argmax())]}" for m in members)
        cells.append(
            f'<figure class="thumb {"wrong" if wrong else "right"}" title="{page.esc(votes)}">'
            + page.img(f"{THUMBS_DIR}/{name}", f"val image {i}")
            + f'<figcaption><span class="mark">{"✗ wrong" if wrong else "✓"}</span><br>'
            f"pred {page.esc(run.classes[pred])} {probs[i, pred]:.2f}<br>true {page.esc(run.classes[true])}"
            "</figcaption></figure>")
    all_wrong = int((probs[index].argmax(1) != run.labels[index]).sum())
    text = (f"{len(index)} val images sampled, {all_wrong} misclassified by the {source} predictions; "
            "mistakes first (most confident first), then correct ones (least confident first). "
            "Hover an image for each member's prediction.")
    if len(order) > MAX_THUMBS:
        text += f" Showing the first {MAX_THUMBS}."
    return page.note(text) + f'<div class="grid">{"".join(cells)}</div>'
