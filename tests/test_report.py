"""The HTML report from a run directory built here in the manifest + predictions contract (no Ray)."""

from __future__ import annotations

import os
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest

from raymotion import rundir
from raymotion.export import ensemble
from raymotion.report import SECTIONS, write_report
from raymotion.report.run import grid_order, per_class
from raymotion.train.metrics import classification_metrics, expected_calibration_error, softmax

CLASSES = ["angry", "happy", "sad"]
MEMBERS = ["lenet", "mobilenet_v2"]
N, K = 120, 30


class ReportParser(HTMLParser):
    """Section ids, <h2> titles, <img> sources, grid cells (in order) and table rows as cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.sections, self.h2, self.imgs, self.cells, self.rows, self.tags = [], [], [], [], [], []
        self._in_h2, self._row, self._cell, self._caption = False, None, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "section":
            self.sections.append(a.get("id"))
        elif tag == "h2":
            self._in_h2 = True
            self.h2.append("")
        elif tag == "img":
            self.imgs.append(a["src"])
        elif tag == "figure" and "thumb" in (a.get("class") or "").split():
            self.cells.append({"class": a["class"].split(), "text": ""})
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ""

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_h2 = False
        elif tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append((self.sections[-1] if self.sections else None, self._row))
            self._row = None

    def handle_data(self, data):
        if self._in_h2:
            self.h2[-1] += data
        if self._cell is not None:
            self._cell += data
        if self.cells and not self.cells[-1].get("closed"):
            self.cells[-1]["text"] += data

    def row(self, first: str, section: str = "results") -> list[str]:
        matches = [r for sid, r in self.rows if sid == section and r and r[0] == first]
        assert matches, f"no table row starting with {first!r} in section {section!r}"
        return matches[0]


def parse(path: str) -> ReportParser:
    parser = ReportParser()
    with open(path, encoding="utf-8") as f:
        parser.feed(f.read())
    return parser


def make_predictions(seed: int = 0) -> dict[str, np.ndarray]:
    """Over-confident members (large logit scale) so that temperature scaling changes the ECE."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), N).astype(np.int64)
    arrays = {"labels": labels}
    for i, name in enumerate(MEMBERS):
        logits = 2.0 * np.eye(len(CLASSES))[labels] + rng.normal(0, 1.3 + 0.3 * i, (N, len(CLASSES)))
        arrays[f"probs__{name}"] = softmax(3.0 * logits).astype(np.float32)
    return arrays


def make_run(root, full: bool = True, predictions: bool = True, seed: int = 0) -> str:
    """A run directory in the report's input contract (raymotion.rundir), the ensemble fitted by
    ``raymotion.export.ensemble``; ``full=False`` has only the records rundir requires (no tune history,
    member metrics without ECE or log loss) and predictions of the members only."""
    run_dir = root / ("full" if full else "minimal")
    os.makedirs(run_dir)
    arrays = make_predictions(seed)
    labels = arrays["labels"]
    member_probs = {m: arrays[f"probs__{m}"] for m in MEMBERS}
    if full:
        fitted = ensemble.fit(member_probs, labels)
        weights, temperature = fitted.weights, fitted.temperature
    else:
        weights, temperature = {m: 1 / len(MEMBERS) for m in MEMBERS}, 1.0
    raw = ensemble.combine(member_probs, weights)
    calibrated = ensemble.combine(member_probs, weights, temperature)
    arrays["probs__ensemble_raw"] = raw.astype(np.float32)
    arrays["probs__ensemble"] = calibrated.astype(np.float32)
    rng = np.random.default_rng(seed + 1)
    arrays["thumb_index"] = np.sort(rng.choice(N, K, replace=False)).astype(np.int64)
    arrays["thumbs"] = rng.integers(0, 256, (K, 64, 64, 3), dtype=np.uint8)

    def val(probs) -> dict:
        return ensemble.scores(probs, labels, CLASSES) if full else classification_metrics(probs, labels, CLASSES)

    models = {}
    for i, name in enumerate(MEMBERS):
        fp32 = {"file": f"{rundir.MODELS_DIR}/{name}.onnx", "sha256": f"{i:064x}", "bytes": 250_000 * (i + 1)}
        entry = {**fp32, "input_size": 32 + 64 * i, "mean": [0.5] * 3, "std": [0.25] * 3, "opset": 18,
                 "exporter": "dynamo", "optimization": "basic", "parity_max_abs_diff": 1e-6, "epoch": 3 + i,
                 "train_config": {"model": name, "epochs": 6, "lr": 1e-3, "batch_size": 64}, "train_metrics": {},
                 "serve": rundir.ServedFile(variant="fp32", reason="int8 disabled", **fp32),
                 "val": val(member_probs[name])}
        if full:
            history = [{"epoch": e, "train_loss": 1.1 / e, "val_loss": 1.0 / e + 0.1, "train_accuracy": 0.4 + 0.08 * e,
                        "val_accuracy": 0.35 + 0.07 * e, "val_macro_f1": 0.3 + 0.07 * e, "epoch_seconds": 30.0 + i}
                       for e in range(1, 7)]
            del history[2]["val_loss"]  # any key may be missing from a row
            entry["tune"] = {"trials": 4, "stopped_early": 2, "failed": 0, "seconds": 600.0 + 60 * i,
                             "history": history}
        models[name] = rundir.ModelEntry(**entry)
    ens = {"members": MEMBERS, "served": ensemble.served_members(weights), "weights": weights,
           "temperature": temperature, "method": ensemble.METHODS["linear"], "combine": ensemble.COMBINES["linear"], "val": val(raw)}
    if full:
        oof = ensemble.cross_fitted(member_probs, labels, folds=4, classes=CLASSES)
        ens.update(val=val(calibrated), val_uncalibrated=val(raw),
                   val_equal_weights=val(ensemble.combine(member_probs, {m: 1.0 for m in MEMBERS})),
                   val_out_of_fold=dict(oof["metrics"], fold_weights=oof["weights"],
                                        fold_temperatures=oof["temperatures"],
                                        uncalibrated=val(oof["probs_raw"])))
    data = rundir.DataRecord(root="/data/<faces> & more", train={c: 100 + i for i, c in enumerate(CLASSES)},
                             val={c: int((labels == i).sum()) for i, c in enumerate(CLASSES)})
    rundir.write_manifest(str(run_dir), rundir.Manifest(created_at="2025-01-02T03:04:05+0000", classes=CLASSES,
                                                        data=data, models=models,
                                                        ensemble=rundir.Ensemble(**ens)))
    if predictions:
        probs = {m: arrays[f"probs__{m}"] for m in MEMBERS}
        if full:
            probs.update(ensemble=arrays["probs__ensemble"], ensemble_raw=arrays["probs__ensemble_raw"])
        # not full: an older predictions file, members only, no thumbnails
        rundir.write_val_predictions(str(run_dir), rundir.ValPredictions(
            labels=labels, probs=probs, thumb_index=arrays["thumb_index"] if full else None,
            thumbs=arrays["thumbs"] if full else None))
    return str(run_dir)


def assert_images_exist(report: ReportParser, html_path: str) -> None:
    assert report.imgs
    for src in report.imgs:
        assert not os.path.isabs(src) and "://" not in src, src  # the folder must open from anywhere
        path = os.path.join(os.path.dirname(html_path), src)
        with open(path, "rb") as f:
            head = f.read(8)
        assert head == b"\x89PNG\r\n\x1a\n", src
        assert os.path.getsize(path) > 100, src


def assert_all_sections(report: ReportParser) -> None:
    assert report.sections == [sid for sid, _ in SECTIONS]
    assert report.h2 == [title for _, title in SECTIONS]
    assert "script" not in report.tags  # plain HTML, and the data root's "<faces>" was escaped


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    run_dir = make_run(tmp_path_factory.mktemp("run"))
    path = write_report(run_dir)
    return run_dir, path, parse(path)


def test_full_report_has_every_section_and_figure(full_report):
    run_dir, path, report = full_report
    assert path == os.path.join(run_dir, "report", "index.html")
    assert_all_sections(report)
    assert_images_exist(report, path)
    figures = {os.path.basename(s) for s in report.imgs if not s.startswith("thumbs/")}
    # Curves per member, a confusion matrix per member and for the ensemble, weights, reliability.
    assert figures == {"curves_lenet.png", "curves_mobilenet_v2.png", "confusion_lenet.png",
                       "confusion_mobilenet_v2.png", "confusion_ensemble.png", "ensemble_weights.png",
                       "reliability.png"}
    assert len([s for s in report.imgs if s.startswith("thumbs/")]) == K
    with open(path, encoding="utf-8") as f:
        text = f.read()
    assert "/data/&lt;faces&gt; &amp; more" in text


METRICS = ("accuracy", "top2_accuracy", "macro_f1", "log_loss", "ece")


def test_results_table_holds_the_manifest_numbers(full_report):
    run_dir, _, report = full_report
    manifest = rundir.manifest_json(rundir.read_manifest(run_dir))
    for name in MEMBERS:
        m, row = manifest["models"][name], report.row(name)
        assert row[1] == str(m["input_size"])
        assert row[2] == f"{m['epoch']} / 6"
        assert row[3] == f"{6 * (30.0 + MEMBERS.index(name)) / 60:.1f}"  # sum of epoch_seconds
        assert row[7] == "fp32"  # the test manifest has no int8 record: the fp32 file is served
        assert row[8:13] == [f"{m['val'][k]:.3f}" for k in METRICS]
        assert row[13] == f"{manifest['ensemble']['weights'][name]:.3f}"
    ens = manifest["ensemble"]
    row = report.row(f"ensemble ({ens['rule']} pool, fitted weights, T = {ens['temperature']:.3g})")
    assert row[8:13] == [f"{ens['val'][k]:.3f}" for k in METRICS]
    for label, key in [("ensemble before temperature scaling", "val_uncalibrated"),
                       ("ensemble, equal weights", "val_equal_weights"), ("ensemble, out-of-fold", "val_out_of_fold")]:
        assert report.row(label)[8:13] == [f"{ens[key][k]:.3f}" for k in METRICS]
    oof_raw = ens["val_out_of_fold"]["uncalibrated"]
    assert report.row("ensemble, out-of-fold, before temperature scaling")[8:13] == \
        [f"{oof_raw[k]:.3f}" for k in METRICS]
    # Per-fold temperatures of the out-of-fold fits.
    for k, t in enumerate(ens["val_out_of_fold"]["fold_temperatures"], start=1):
        assert report.row(str(k), section="ensemble")[1] == f"{t:.3g}"
    # The scaling in the fixture really changed calibration, so before/after is a real comparison.
    assert ens["temperature"] != pytest.approx(1.0, abs=0.05)
    assert ens["val_uncalibrated"]["ece"] != pytest.approx(ens["val"]["ece"], abs=1e-3)


def test_per_class_table_matches_confusion(full_report):
    run_dir, _, report = full_report
    saved = rundir.read_val_predictions(run_dir)
    labels, probs = saved.labels, saved.probs["ensemble"]
    for i, c in enumerate(CLASSES):
        row = report.row(c, section="per-class")
        true, pred = labels == i, probs.argmax(1) == i
        tp = int((true & pred).sum())
        precision, recall = tp / pred.sum(), tp / true.sum()
        assert row[1] == str(int(true.sum()))
        # the last three columns are the ensemble's
        assert row[-3:] == [f"{precision:.3f}", f"{recall:.3f}", f"{2 * precision * recall / (precision + recall):.3f}"]


def test_grid_lists_mistakes_first(full_report):
    run_dir, _, report = full_report
    saved = rundir.read_val_predictions(run_dir)
    index, labels, probs = saved.thumb_index, saved.labels, saved.probs["ensemble"]
    wrong_expected = int((probs[index].argmax(1) != labels[index]).sum())
    assert 0 < wrong_expected < K  # the fixture has both kinds
    kinds = ["wrong" if "wrong" in cell["class"] else "right" for cell in report.cells]
    assert kinds == ["wrong"] * wrong_expected + ["right"] * (K - wrong_expected)
    assert all("✗ wrong" in cell["text"] for cell in report.cells[:wrong_expected])
    assert all("wrong" not in cell["text"] for cell in report.cells[wrong_expected:])
    # Each caption names the true and the predicted class and a confidence.
    first = index[grid_order(labels, probs.astype(np.float64), index)[0]]
    caption = report.cells[0]["text"]
    assert f"true {CLASSES[labels[first]]}" in caption
    assert f"pred {CLASSES[probs[first].argmax()]} {probs[first].max():.2f}" in caption


def test_minimal_manifest_still_renders(tmp_path):
    run_dir = make_run(tmp_path, full=False)
    path = write_report(run_dir, out=str(tmp_path / "elsewhere"))
    assert path == str(tmp_path / "elsewhere" / "index.html")
    report = parse(path)
    assert_all_sections(report)
    assert_images_exist(report, path)
    saved = rundir.read_val_predictions(run_dir)
    assert set(saved.probs) == set(MEMBERS) and saved.thumbs is None
    for name in MEMBERS:
        # ECE absent from the manifest: computed from the saved predictions.
        ece = expected_calibration_error(saved.probs[name], saved.labels)
        assert report.row(name)[12] == f"{ece:.3f}"
        assert report.row(name)[3] == "n/a"  # no history: no train minutes
    figures = {os.path.basename(s) for s in report.imgs}
    # No history, no ensemble predictions and no thumbnails; member confusion comes from the probabilities,
    # and the reliability diagram falls back to the members.
    assert figures == {"confusion_lenet.png", "confusion_mobilenet_v2.png", "ensemble_weights.png", "reliability.png"}
    assert not report.cells
    assert report.row("ensemble (linear pool, fitted weights, T = 1)")[11] == "n/a"  # no ensemble predictions to compute it from


def test_manifest_alone_renders(tmp_path):
    run_dir = make_run(tmp_path, full=False, predictions=False)
    report = parse(write_report(run_dir))
    assert_all_sections(report)
    assert {os.path.basename(s) for s in report.imgs} == {"ensemble_weights.png"}


def test_per_class_handles_absent_classes():
    pc = per_class(np.array([[3, 1, 0], [0, 0, 0], [2, 0, 0]]))
    assert pc["support"].tolist() == [4, 0, 2]
    assert pc["precision"][0] == pytest.approx(3 / 5)
    assert np.isnan(pc["recall"][1]) and np.isnan(pc["f1"][1])  # no support: undefined, shown as n/a
    assert np.isnan(pc["precision"][2]) and pc["recall"][2] == 0 and pc["f1"][2] == 0


def test_cli_prints_the_report_path(tmp_path):
    run_dir = make_run(tmp_path)
    out = tmp_path / "cli-out"
    done = subprocess.run([sys.executable, "-m", "raymotion.report", run_dir, "--out", str(out)],
                          capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out / "index.html")
    assert_all_sections(parse(done.stdout.strip()))
    missing = subprocess.run([sys.executable, "-m", "raymotion.report", str(tmp_path / "nope")],
                             capture_output=True, text=True, timeout=60,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert missing.returncode != 0 and "manifest.json" in missing.stderr
