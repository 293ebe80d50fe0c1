"""bench peer (bench/peer.py) without fer: the by-name restriction of the peer's 7 classes to the
run's, the per-source table from a real predictions/val.npz, and the refusal of a file without paths.
fer itself runs only in its own venv (make peer) and is checked by hand (peer_worker.py --check)."""

from __future__ import annotations

import ast
import os
import re

import numpy as np
import pytest

from bench import peer
from raymotion.rundir import ValPredictions, read_val_predictions, write_val_predictions

FER = list(peer.FER_LABELS)  # angry, disgust, fear, happy, sad, surprise, neutral
CLASSES = ["angry", "happy", "sad"]


def test_restrict_goes_by_name_drops_the_rest_and_renormalises():
    #                 angry disgust fear happy sad  surprise neutral
    probs = np.array([[0.10, 0.05, 0.05, 0.20, 0.05, 0.05, 0.50],   # neutral is fer's top: happy among the kept
                      [0.02, 0.30, 0.30, 0.02, 0.06, 0.10, 0.20]])  # sad among the kept
    out, info = peer.restrict(probs, FER, CLASSES)
    np.testing.assert_allclose(out, [[0.10 / 0.35, 0.20 / 0.35, 0.05 / 0.35], [0.2, 0.2, 0.6]])
    assert list(out.argmax(1)) == [1, 2]
    assert info["kept"] == {"angry": "angry", "happy": "happy", "sad": "sad"}
    assert info["dropped"] == ["disgust", "fear", "surprise", "neutral"]
    assert "renormalised" in info["rule"]
    # The run's class order is its own: columns follow the run's names, not fer's positions.
    reordered, _ = peer.restrict(probs, FER, ["sad", "angry", "happy"])
    np.testing.assert_allclose(reordered, out[:, [2, 0, 1]])


def test_restrict_refuses_a_class_the_peer_does_not_have():
    for classes in (["angry", "happy", "contempt"], ["happy", "sad", "contempt"]):
        with pytest.raises(peer.PeerError, match=r"no class \['contempt'\]"):
            peer.restrict(np.full((1, 7), 1 / 7), FER, classes)


def _write_run(run_dir, paths, sources=(), source_names=()):
    """A real predictions/val.npz: 4 emotions rows then 4 fer2013 rows; the ensemble right on all but row 7."""
    labels = np.array([0, 1, 2, 1, 0, 1, 2, 2])
    ensemble = np.eye(3)[labels] * 0.8 + 0.1
    ensemble[7] = [0.7, 0.2, 0.1]  # sad called angry
    pred = ValPredictions(labels=labels, probs={"ensemble": ensemble, "m": ensemble},
                          sources=np.array(sources) if len(sources) else None,
                          source_names=list(source_names), paths=list(paths))
    write_val_predictions(str(run_dir), pred)
    return labels


def test_per_source_table_from_a_real_val_npz(tmp_path):
    images = []
    for i in range(8):
        images.append(str(tmp_path / f"img{i}.jpg"))
        open(images[-1], "wb").close()
    images[3] = ""  # a row read from a Parquet cache: no file, left out of both models' figures
    _write_run(tmp_path, images, sources=[0, 0, 0, 0, 1, 1, 1, 1], source_names=["emotions", "fer2013"])
    pred = peer.load_val_with_paths(str(tmp_path))
    assert pred.paths == images and pred.source_names == ["emotions", "fer2013"]
    # fer's 7 probabilities for the 7 rows with a file (row 3 has none); its say in its own label order.
    say = {"angry": 0, "happy": 3, "sad": 4, "neutral": 6}
    fer_top = ["angry", "neutral", "sad",  # emotions: right, happy -> neutral (kept: happy, second), right
               "happy", "happy", "sad", "angry"]  # fer2013: angry -> happy, right, right, sad -> angry
    raw = np.full((7, 7), 0.01)
    for row, name in enumerate(fer_top):
        raw[row, say[name]] = 0.9
    raw[1, say["happy"]] = 0.05  # second to neutral, first among the kept
    scored = peer.score_run(pred, CLASSES, raw, FER)
    assert scored["rows"] == 8 and scored["rows_scored"] == 7 and scored["rows_without_path"] == 1
    by = scored["by_source"]
    assert list(by) == ["emotions", "fer2013", "pooled"]
    assert [by[s]["images"] for s in by] == [3, 4, 7]
    assert by["emotions"]["fer"]["accuracy"] == pytest.approx(1.0)
    assert by["fer2013"]["fer"]["accuracy"] == pytest.approx(0.5)
    assert by["fer2013"]["ensemble"]["accuracy"] == pytest.approx(0.75)
    assert by["pooled"]["fer"]["accuracy"] == pytest.approx(5 / 7)
    assert by["pooled"]["ensemble"]["accuracy"] == pytest.approx(6 / 7)
    assert by["fer2013"]["ensemble_minus_fer_points"]["accuracy"] == pytest.approx(25.0)
    assert by["fer2013"]["fer"]["recall"] == pytest.approx({"angry": 0.0, "happy": 1.0, "sad": 0.5})
    assert by["fer2013"]["ensemble_minus_fer_points"]["recall"]["angry"] == pytest.approx(100.0)
    # The table prints these figures: three rows per source (fer, ensemble, the difference in points).
    lines = peer.format_table(by, CLASSES).splitlines()
    cells = [re.split(r"\s{2,}", line.strip()) for line in lines]
    assert cells[0] == ["source", "images", "model", "accuracy", "macro_f1", *(f"recall_{c}" for c in CLASSES)]
    assert len(lines) == 1 + 3 * len(by) + 1 and lines[-1].startswith("(figures as fractions")
    for i, source in enumerate(by):
        fer, ensemble, delta = cells[1 + 3 * i:4 + 3 * i]
        assert fer[:3] == [source, str(by[source]["images"]), "fer"]
        assert ensemble[0] == "ensemble" and delta[0] == "ensemble - fer"
        for printed, model, form in ((fer[3:], "fer", "{:.3f}"), (ensemble[1:], "ensemble", "{:.3f}"),
                                     (delta[1:], "ensemble_minus_fer_points", "{:+.1f}")):
            fig = by[source][model]
            assert printed == [form.format(v) for v in (fig["accuracy"], fig["macro_f1"], *fig["recall"].values())]
    assert cells[6][:2] == ["ensemble - fer", "+25.0"]  # fer2013 (rows 4-6): accuracy, ensemble - fer


def test_predictions_without_paths_are_refused(tmp_path):
    _write_run(tmp_path, paths=[])
    assert read_val_predictions(str(tmp_path)).paths == []
    with pytest.raises(peer.PeerError, match=r"no image paths.*re-export it with python -m raymotion.export"):
        peer.load_val_with_paths(str(tmp_path))
    # Through the command line too: a message and a non-zero exit, before any manifest or peer is read.
    from bench.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(["peer", str(tmp_path), "--peer-python", str(tmp_path / "no-such-python")])
    assert "re-export" in str(exit_.value.code)


def test_a_run_without_predictions_is_refused(tmp_path):
    with pytest.raises(peer.PeerError, match="export the run first"):
        peer.load_val_with_paths(str(tmp_path))


def test_peer_worker_imports_nothing_from_raymotion():
    # It runs with the peer venv's python, where raymotion is not installed.
    tree = ast.parse(open(peer.WORKER).read())
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert imported and not [m for m in imported if m.split(".")[0] == "raymotion"]


def test_peer_python_defaults_to_the_peer_venv(monkeypatch):
    monkeypatch.delenv("PEER_PY", raising=False)
    assert peer.peer_python() == os.path.join(peer.REPO, ".venv-peer", "bin", "python")
    monkeypatch.setenv("PEER_PY", "/opt/x/python")
    assert peer.peer_python() == "/opt/x/python"
    assert peer.peer_python("/explicit") == "/explicit"
