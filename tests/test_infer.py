"""raymotion.infer on the session's real Ray (Ray Data tasks and an actor pool of real onnxruntime
Predictors) and the session's trained run: crops against Predictor and the HTTP service, generated
group photos, a generated video (tracks, timeline, PNG), Parquet input, bad input of every kind, the
three output formats and the command line."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
from PIL import Image

from bench.face_fit import iou
from bench.infer import group_photo
from raymotion import Predictor
from raymotion.config import ConfigError
from raymotion.infer import InferConfig, run_inference
from raymotion.infer.__main__ import parse_args
from raymotion.infer.table import member_column, prob_column, read_table
from raymotion.infer.tracks import MAX_GAP, track_faces

FACE_CROPS = os.path.join(os.path.dirname(__file__), "data", "faces")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-5
VIDEO_FPS, VIDEO_SECONDS, SAMPLE_FPS = 10, 3, 5


def _crops() -> list[np.ndarray]:
    return [np.asarray(Image.open(os.path.join(FACE_CROPS, f)).convert("RGB")) for f in sorted(os.listdir(FACE_CROPS))]


def _jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def _val_paths(faces_root: str, n: int) -> list[str]:
    paths = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(os.path.join(faces_root, "val")) for f in fs)
    return paths[:: max(1, len(paths) // n)][:n]


def _rows(path: str) -> list[dict]:
    return read_table(path).to_pylist()


def _infer(run_dir: str, inputs, out: str, **kwargs):
    # progress_s=0: the lines are the command's business (test_the_command_line).
    return run_inference(InferConfig(run_dir=run_dir, inputs=tuple(inputs), out=out, progress_s=0, **kwargs),
                         log=lambda line: None)


def _assert_probabilities(row: dict, answer: dict, classes, members) -> None:
    assert row["label"] == answer["label"]
    np.testing.assert_allclose([row[prob_column(c)] for c in classes], [answer["probabilities"][c] for c in classes],
                               atol=TOLERANCE, rtol=0)
    assert set(answer["models"]) == set(members)
    for m in members:
        np.testing.assert_allclose([row[member_column(m, c)] for c in classes],
                                   [answer["models"][m][c] for c in classes], atol=TOLERANCE, rtol=0)


@pytest.fixture(scope="module")
def predictor(run):
    return Predictor(run[0])


def test_crops_answer_as_the_predictor_and_the_service(ray_session, run, predictor, faces_root, served_url, tmp_path):
    paths = _val_paths(faces_root, 24)
    result = _infer(run[0], paths, str(tmp_path / "crops.parquet"), crops=True, batch_size=8)
    rows = {r["source"]: r for r in _rows(result.out)}
    assert sorted(rows) == sorted(paths) and result.rows == result.images == result.faces == len(paths)
    assert result.errors == 0
    classes, members = predictor.classes, list(predictor.members)
    for path, answer in zip(paths, predictor.predict_batch(paths)):
        row = rows[path]
        assert (row["faces"], row["face"], row["x"], row["y"]) == (1, 0, 0, 0)
        assert (row["w"], row["h"]) == Image.open(path).size
        _assert_probabilities(row, answer, classes, members)
    for path in paths[::4]:
        with open(path, "rb") as f:
            served = requests.post(f"{served_url}/predict", data=f.read(), headers={"Content-Type": "image/jpeg"},
                                   timeout=30).json()
        _assert_probabilities(rows[path], served, classes, members)


def _write_video(path: str, fourcc: str, crops: list[np.ndarray], frames: int) -> list[list[tuple[int, int, int, int]]]:
    """Two faces on a grey 480x270 background, drifting right and down a pixel or two per frame; the
    squares per frame."""
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), VIDEO_FPS, (480, 270))
    assert writer.isOpened()
    squares = []
    for i in range(frames):
        frame = np.full((270, 480, 3), 118, np.uint8)
        placed = []
        for k, crop in enumerate(crops):
            x0, y0 = 40 + 230 * k + 2 * i, 40 + i
            frame[y0:y0 + 130, x0:x0 + 130] = cv2.resize(crop, (130, 130), interpolation=cv2.INTER_AREA)
            placed.append((x0, y0, x0 + 130, y0 + 130))
        writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
        squares.append(placed)
    writer.release()
    return squares


@pytest.fixture(scope="module")
def mixed(ray_session, run, tmp_path_factory):
    """One job over everything at once, as a user's folder would hold it: group photos, a photo without a
    face, a video, a Parquet table, an unreadable file, a 42-megapixel PNG, a truncated video, a file of
    another kind; written as JSONL."""
    folder = tmp_path_factory.mktemp("mixed")
    crops = _crops()
    rng = np.random.default_rng(3)
    photos = {}
    for i in range(2):
        photo, squares = group_photo([crops[j] for j in (i, i + 3, i + 6, (i + 4) % 9)], rng)
        path = str(folder / "photos" / f"group_{i}.jpg")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(_jpeg(photo))
        photos[path] = squares
    blank = str(folder / "photos" / "nested" / "blank.jpg")
    os.makedirs(os.path.dirname(blank))
    with open(blank, "wb") as f:
        f.write(_jpeg(np.full((300, 400, 3), 90, np.uint8)))
    unreadable = str(folder / "photos" / "broken.jpg")
    with open(unreadable, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 this is not a JPEG")
    bomb = str(folder / "photos" / "bomb.png")
    Image.new("L", (7000, 6000)).save(bomb)  # 42 MP, a few kB on disk
    with open(folder / "photos" / "notes.txt", "w") as f:
        f.write("not an image")
    video = str(folder / "clip.mp4")
    video_squares = _write_video(video, "mp4v", [crops[1], crops[5]], VIDEO_FPS * VIDEO_SECONDS)
    truncated = str(folder / "cut.avi")
    _write_video(truncated, "MJPG", [crops[2], crops[7]], VIDEO_FPS * VIDEO_SECONDS)
    with open(truncated, "rb") as f:
        data = f.read()
    with open(truncated, "wb") as f:
        f.write(data[:len(data) // 2])
    table_path = str(folder / "table.parquet")
    table_photo, table_squares = group_photo([crops[0], crops[4], crops[8], crops[2]], rng)
    pq.write_table(pa.table({"name": ["a", "b", "c"], "image": [_jpeg(table_photo), b"garbage", _jpeg(table_photo)]}),
                   table_path, row_group_size=2)
    out = str(folder / "faces.jsonl")
    result = _infer(run[0], [str(folder / "photos"), video, truncated, table_path], out, fps=SAMPLE_FPS,
                    segment_s=1.0, batch_size=8)
    return {"result": result, "rows": _rows(out), "photos": photos, "blank": blank, "unreadable": unreadable,
            "bomb": bomb, "video": video, "video_squares": video_squares, "truncated": truncated,
            "table": table_path, "table_squares": table_squares, "out": out, "folder": str(folder)}


def _matched(boxes: list[tuple[int, int, int, int]], squares) -> bool:
    """Each pasted square overlaps exactly one found box by more than half (IoU)."""
    return len(boxes) == len(squares) and all(
        sum(iou((b[0], b[1], b[0] + b[2], b[1] + b[3]), s) > 0.5 for b in boxes) == 1 for s in squares)


def test_group_photos_give_a_row_per_face_with_its_box(mixed, predictor):
    rows = mixed["rows"]
    for path, squares in mixed["photos"].items():
        mine = sorted((r for r in rows if r["source"] == path), key=lambda r: r["face"])
        assert [r["face"] for r in mine] == list(range(len(squares))) and {r["faces"] for r in mine} == {len(squares)}
        assert _matched([(r["x"], r["y"], r["w"], r["h"]) for r in mine], squares)
        assert {(r["width"], r["height"]) for r in mine} == {(960, 720)}
        # The same faces, boxes, scores and answers as Predictor.faces (and so as POST /predict?faces=1).
        answer = predictor.faces(path)["faces"]
        assert [(r["x"], r["y"], r["w"], r["h"]) for r in mine] == \
            [(f["box"]["x"], f["box"]["y"], f["box"]["width"], f["box"]["height"]) for f in answer]
        for row, face in zip(mine, answer):
            assert row["score"] == pytest.approx(face["score"], abs=1e-3)
            _assert_probabilities(row, face, predictor.classes, list(predictor.members))
    (blank,) = [r for r in rows if r["source"] == mixed["blank"]]
    assert blank["faces"] == 0 and blank["face"] is None and blank["label"] is None and blank["error"] is None
    assert all(blank[prob_column(c)] is None for c in predictor.classes)


def test_faces_are_found_in_tasks_and_classified_in_actors(mixed):
    # Two operators in Ray Data's plan, not one fused actor stage doing both.
    stats = mixed["result"].stats
    assert "MapBatches(find_faces_in_groups):" in stats and "MapBatches(Classify):" in stats
    assert "find_faces_in_groups)->" not in stats


def test_bad_input_gives_error_rows_and_the_job_goes_on(mixed):
    rows, result = mixed["rows"], mixed["result"]
    (broken,) = [r for r in rows if r["source"] == mixed["unreadable"]]
    (bomb,) = [r for r in rows if r["source"] == mixed["bomb"]]
    assert broken["error"] and broken["label"] is None
    assert "too large" in bomb["error"] and bomb["label"] is None
    cut = [r for r in rows if r["source"] == mixed["truncated"]]
    # Each one-second segment that lost frames says where it stopped; the frames read before the cut
    # keep their faces.
    errors = [r for r in cut if r["error"]]
    assert errors and all("truncated" in r["error"] for r in errors)
    assert any(r["label"] for r in cut) and all(r["frame"] < min(e["frame"] for e in errors) for r in cut if r["label"])
    parquet_errors = [r for r in rows if r["source"] == mixed["table"] and r["error"]]
    assert [r["row"] for r in parquet_errors] == [1]
    assert result.errors == 3 + len(errors) == sum(1 for r in rows if r["error"])
    assert result.skipped == [os.path.join(mixed["folder"], "photos", "notes.txt")]
    assert result.rows == len(rows) and result.faces == sum(1 for r in rows if r["face"] is not None)


def test_parquet_rows_are_photos_with_their_row_index(mixed):
    rows = [r for r in mixed["rows"] if r["source"] == mixed["table"] and not r["error"]]
    assert {r["kind"] for r in rows} == {"parquet"} and sorted({r["row"] for r in rows}) == [0, 2]
    for index in (0, 2):
        mine = [r for r in rows if r["row"] == index]
        assert _matched([(r["x"], r["y"], r["w"], r["h"]) for r in mine], mixed["table_squares"])


def test_a_video_gives_one_track_per_face_a_timeline_and_a_plot(mixed, predictor):
    rows = [r for r in mixed["rows"] if r["source"] == mixed["video"]]
    # Every other frame at 5 of the video's 10 frames per second, over 3 segments of a second each.
    frames = sorted({r["frame"] for r in rows})
    assert frames == list(range(0, VIDEO_FPS * VIDEO_SECONDS, VIDEO_FPS // SAMPLE_FPS))
    assert all(r["time_s"] == pytest.approx(r["frame"] / VIDEO_FPS) for r in rows)
    assert all(r["faces"] == 2 and r["label"] for r in rows) and len(rows) == 2 * len(frames)
    by_track: dict[int, list[dict]] = {}
    for r in rows:
        by_track.setdefault(r["track"], []).append(r)
    assert sorted(by_track) == [0, 1]
    for track_rows in by_track.values():  # one face each: the left one stays left
        assert len(track_rows) == len(frames)
        assert len({r["x"] < 240 for r in track_rows}) == 1
    for r in rows:
        assert _matched([(r["x"], r["y"], r["w"], r["h"])], [s for s in mixed["video_squares"][r["frame"]]
                                                              if (s[0] < 240) == (r["x"] < 240)])
    stem = os.path.splitext(mixed["out"])[0]
    timeline = read_table_csv(stem + ".timeline.csv")
    video_lines = [t for t in timeline if t["source"] == mixed["video"]]
    assert sorted({(t["track"], t["second"]) for t in video_lines}) == [(k, s) for k in (0, 1) for s in range(VIDEO_SECONDS)]
    assert all(t["faces"] == SAMPLE_FPS for t in video_lines)
    for t in video_lines:
        second = [r for r in by_track[t["track"]] if int(r["time_s"]) == t["second"]]
        mean = {c: np.mean([r[prob_column(c)] for r in second]) for c in predictor.classes}
        assert t["label"] == max(mean, key=mean.get)
        assert t[prob_column(predictor.classes[0])] == pytest.approx(mean[predictor.classes[0]], abs=1e-5)
    with Image.open(stem + ".timeline.png") as png:
        assert png.format == "PNG" and png.width > 300
    result = mixed["result"]
    assert result.track_shares and sum(result.shares.values()) == pytest.approx(1.0)


def read_table_csv(path: str) -> list[dict]:
    import pyarrow.csv as pcsv

    return pcsv.read_csv(path).to_pylist()


def test_the_tracker_keeps_ids_through_a_gap_and_starts_new_ones():
    left, right = (10, 10, 50, 50), (200, 10, 50, 50)
    moved = (14, 12, 50, 50)
    detections = [(0, left), (0, right), (1, moved), (1, right), (2, right), (5, (16, 12, 50, 50)), (9, left)]
    # The left face is missing from sampled frame 2 only (within MAX_GAP): it keeps its id through frames
    # 5 and 9, where the right face, which never overlaps it, is not taken for it.
    assert track_faces(detections) == [0, 1, 0, 1, 1, 0, 0]
    assert track_faces([(0, left), (1, right)]) == [0, 1]  # no overlap: a new face
    # Missing from MAX_GAP sampled frames: the same track; from one more: back as a new one.
    gone = lambda frames: [(0, left)] + [(f, right) for f in range(1, frames + 1)] + [(frames + 1, left)]  # noqa: E731
    assert track_faces(gone(MAX_GAP)) == [0] + [1] * MAX_GAP + [0]
    assert track_faces(gone(MAX_GAP + 1)) == [0] + [1] * (MAX_GAP + 1) + [2]


def test_the_command_line_writes_csv_and_refuses_unknown_options(ray_session, run, faces_root, tmp_path):
    paths = _val_paths(faces_root, 6)
    out = str(tmp_path / "crops.csv")
    address = ray_session.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "raymotion.infer", run[0], *paths, "--crops", "--out", out, "--summary",
           "--address", address]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"infer: {len(paths)} images in " in proc.stdout and f"{len(paths)} rows, {len(paths)} faces" in proc.stdout
    assert "all faces" in proc.stdout  # --summary's table
    rows = {r["source"]: r for r in read_table_csv(out)}
    answers = Predictor(run[0]).predict_batch(paths)
    assert [rows[p]["label"] for p in paths] == [a["label"] for a in answers]
    assert not os.path.exists(out + ".part")
    # Refused before Ray starts: an unknown option, a format no extension names, a missing input.
    for bad in (["--out", out, "--colour", "red"], ["--out", str(tmp_path / "x.txt")],
                ["--out", out, str(tmp_path / "missing.jpg")]):
        with pytest.raises(SystemExit) as refused:
            parse_args([run[0], paths[0], *bad])
        assert refused.value.code == 2


def test_the_config_refuses_unknown_keys(run):
    with pytest.raises(ConfigError, match="colour"):
        InferConfig(run_dir=run[0], inputs=("a.jpg",), out="x.parquet", colour="red")
    with pytest.raises(ConfigError, match="extension"):
        InferConfig(run_dir=run[0], inputs=("a.jpg",), out="x.xlsx")
