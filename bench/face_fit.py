"""Fit and check the yuface-box -> training-crop transform of raymotion.predict.faces on the training data itself.

    python -m bench.face_fit [--root ../shared/data/emotions] [--count 300] [--seed 0]

Val crops (224x224 Haar-cascade squares) are pasted at known squares into larger photos (one to 36 faces
a photo, several backgrounds, photos up to 2x the detection size so the downscale path is exercised),
the photos go through ``detect_faces``, and the squares are compared with what was detected:

- fit: medians of the square's side and centre offset in units of the detected box width, fitted on
  half the faces and scored (IoU) on the other half, then refitted on all of them for the constants;
- check: with the constants in raymotion.predict.faces, each pasted face re-cut by ``crop_face`` at 224 px against
  its original crop (IoU of the squares, mean absolute pixel difference), and the padding choice;
- ``label_agreement``: the same comparison through any classifier (``classify(uint8 NHWC) -> labels``).

Nothing here runs in a Serve replica; it imports no torch.
"""

from __future__ import annotations

import argparse
import glob
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np
from PIL import Image

from bench.machine import cpu_flags
from raymotion.console import print_table
from raymotion.data.transforms import resize_rgb
from raymotion.predict import faces

BACKGROUNDS = ("gray", "noise", "scene", "smear")
GRIDS = (1, 2, 3, 4, 6)  # faces per photo side: 1 to 36 faces, large to small
PHOTO_SIDE = 640

Square = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def box_xyxy(box: faces.FaceBox) -> Square:
    return box.x, box.y, box.x + box.width, box.y + box.height


# --- photos built from crops -------------------------------------------------------------------------

def background(kind: str, side: int, rng: np.random.Generator, others: Sequence[np.ndarray]) -> np.ndarray:
    """A side x side RGB background: flat grey, smooth colour noise, or a blurred mosaic of other crops
    (faces too blurred to detect, but photo-like colours and edges)."""
    if kind == "gray":
        return np.full((side, side, 3), 120, np.uint8)
    if kind == "noise":
        coarse = rng.normal(128, 40, (side // 16 + 1, side // 16 + 1, 3)).clip(0, 255).astype(np.uint8)
        return cv2.resize(coarse, (side, side), interpolation=cv2.INTER_CUBIC)
    if kind in ("scene", "smear"):
        tiles = [others[i] for i in rng.integers(0, len(others), 9)]
        mosaic = np.concatenate([np.concatenate(tiles[r * 3:r * 3 + 3], 1) for r in range(3)], 0)
        mosaic = cv2.resize(mosaic, (side, side), interpolation=cv2.INTER_LINEAR)
        return cv2.GaussianBlur(mosaic, (0, 0), side / 25)
    raise ValueError(f"unknown background {kind!r}")


def resize_crop(crop: np.ndarray, side: int) -> np.ndarray:
    interpolation = cv2.INTER_AREA if side < crop.shape[0] else cv2.INTER_LINEAR
    return cv2.resize(crop, (side, side), interpolation=interpolation)


def paste(photo: np.ndarray, crop: np.ndarray, square: Square) -> None:
    """Paste ``crop`` resized into ``square`` (inside the photo)."""
    x0, y0, x1, y1 = square
    photo[y0:y1, x0:x1] = resize_crop(crop, x1 - x0)


def smear(photo: np.ndarray, crop: np.ndarray, square: Square) -> None:
    """Around ``square``, a blurred edge-repeating extension of the crop, so that hair and skin do not
    stop at the square's edge as they would on a flat background (paste the crop itself afterwards)."""
    x0, y0, x1, y1 = square
    side = x1 - x0
    margin = side // 3
    ex0, ey0 = max(0, x0 - margin), max(0, y0 - margin)
    ex1, ey1 = min(photo.shape[1], x1 + margin), min(photo.shape[0], y1 + margin)
    grown = cv2.copyMakeBorder(resize_crop(crop, side), y0 - ey0, ey1 - y1, x0 - ex0, ex1 - x1,
                               cv2.BORDER_REPLICATE)
    photo[ey0:ey1, ex0:ex1] = cv2.GaussianBlur(grown, (0, 0), max(1.0, side / 30))


def grid_squares(grid: int, side: int, rng: np.random.Generator) -> list[Square]:
    """One square per cell of a grid x grid layout: side 30-60% of the cell, anywhere inside it."""
    cell = side // grid
    squares = []
    for r in range(grid):
        for c in range(grid):
            s = int(cell * rng.uniform(0.3, 0.6))
            x0 = c * cell + int(rng.integers(0, cell - s + 1))
            y0 = r * cell + int(rng.integers(0, cell - s + 1))
            squares.append((x0, y0, x0 + s, y0 + s))
    return squares


def layout_photos(count: int, rng: np.random.Generator) -> Iterator[tuple[str, int, int, list[Square], list[int]]]:
    """Photo layouts: (background, grid, side, squares, crop indices). Every crop is pasted once per
    background; each grid size gets an equal share of the faces, so that small and large faces weigh
    alike in the fit. Photos are PHOTO_SIDE or twice it (the downscale before detection)."""
    for kind in BACKGROUNDS:
        for grid, share in zip(GRIDS, np.array_split(rng.permutation(count), len(GRIDS))):
            share = [int(i) for i in share]
            while share:
                side = PHOTO_SIDE * int(rng.choice([1, 2]))
                squares = grid_squares(grid, side, rng)[:len(share)]
                yield kind, grid, side, squares, [share.pop() for _ in squares]


def render(kind: str, side: int, squares: Sequence[Square], indices: Sequence[int],
           crops: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    photo = background(kind, side, rng, crops)
    if kind == "smear":  # every extension first: one must not cover a neighbour's face
        for index, square in zip(indices, squares):
            smear(photo, crops[index], square)
    for index, square in zip(indices, squares):
        paste(photo, crops[index], square)
    return photo


# --- detection and matching --------------------------------------------------------------------------

def load_crops(root: str, split: str, count: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    """``count`` crops drawn at random (fixed by ``seed``) from root/split/<class>/*.jpg, RGB uint8,
    with their paths."""
    paths = sorted(glob.glob(os.path.join(root, split, "*", "*.jpg")))
    if not paths:
        raise SystemExit(f"no crops under {os.path.join(root, split)}")
    chosen = [paths[i] for i in np.random.default_rng(seed).permutation(len(paths))[:count]]
    return [np.asarray(Image.open(p).convert("RGB")) for p in chosen], chosen


def match(square: Sequence[int], boxes: Sequence[faces.FaceBox]) -> faces.FaceBox | None:
    """The detected box whose centre lies in the pasted square (the best IoU if several), else None."""
    inside = [b for b in boxes if square[0] <= b.x + b.width / 2 < square[2]
              and square[1] <= b.y + b.height / 2 < square[3]]
    return max(inside, key=lambda b: iou(box_xyxy(b), square)) if inside else None


@dataclass(frozen=True)
class Record:
    """One pasted face: where it went, what was detected (None: missed), and its re-cut crop (224 px,
    with the constants in raymotion.predict.faces; None when missed)."""
    crop: int
    kind: str
    grid: int
    photo_side: int
    square: Square
    box: faces.FaceBox | None
    recrop: np.ndarray | None
    true_recrop: np.ndarray | None = None  # the pasted square re-cut (found faces, when asked)


# How a found face is cut from its photo: the box's training square, or aligned by its landmarks.
CUTS: dict[str, Callable[[np.ndarray, faces.FaceBox, int], np.ndarray]] = {
    "square": faces.crop_face, "aligned": faces.aligned_face}


def true_square(photo: np.ndarray, square: Square, size: int) -> np.ndarray:
    """The pasted square itself re-cut from the photo: what a perfect detector would give."""
    return resize_rgb(Image.fromarray(np.ascontiguousarray(faces.crop_square(photo, square))), size)


def measure(crops: Sequence[np.ndarray], seed: int, size: int = 224, cut: str = "square",
            with_true_square: bool = False) -> Iterator[tuple[list[Record], int]]:
    """Per photo: a Record per pasted face (``cut`` from the photo; with ``with_true_square``, the pasted
    square re-cut too), and how many detections matched no pasted face."""
    rng = np.random.default_rng(seed)
    for kind, grid, side, squares, indices in layout_photos(len(crops), rng):
        photo = render(kind, side, squares, indices, crops, rng)
        boxes = faces.detect_faces(photo)
        records = []
        for index, square in zip(indices, squares):
            box = match(square, boxes)
            recrop = CUTS[cut](photo, box, size) if box else None
            truth = true_square(photo, square, size) if with_true_square and box else None
            records.append(Record(index, kind, grid, side, square, box, recrop, truth))
        used = {r.box for r in records if r.box}
        yield records, sum(b not in used for b in boxes)


# --- the fit -----------------------------------------------------------------------------------------

def fit_crop(records: Sequence[Record]) -> faces.CropFit:
    """Medians, in units of the detected box width, of the pasted square's side and centre offset, and of
    the boxes' height / width (faces inside the photo only, so no box is clipped)."""
    found = [r for r in records if r.box]
    w = np.array([r.box.width for r in found], float)
    h = np.array([r.box.height for r in found], float)
    box_cx = np.array([r.box.x for r in found]) + w / 2
    box_cy = np.array([r.box.y for r in found]) + h / 2
    sq = np.array([r.square for r in found], float)
    return faces.CropFit(side=round(float(np.median((sq[:, 2] - sq[:, 0]) / w)), 3),
                         shift_x=round(float(np.median(((sq[:, 0] + sq[:, 2]) / 2 - box_cx) / w)), 3),
                         shift_y=round(float(np.median(((sq[:, 1] + sq[:, 3]) / 2 - box_cy) / w)), 3),
                         aspect=round(float(np.median(h / w)), 2))


def fit_template(records: Sequence[Record]) -> tuple[tuple[float, float], ...]:
    """The five landmarks' medians as fractions of the pasted square (faces.ALIGN_TEMPLATE's fit): where
    they lie in a training crop."""
    found = [r for r in records if r.box and r.box.landmarks]
    points = np.array([r.box.landmarks for r in found], float).reshape(len(found), 5, 2)
    sq = np.array([r.square for r in found], float)
    normalised = (points - sq[:, None, :2]) / (sq[:, 2] - sq[:, 0])[:, None, None]
    return tuple((round(float(x), 3), round(float(y), 3)) for x, y in np.median(normalised, axis=0))


def square_iou(record: Record, fit: faces.CropFit = faces.CROP_FIT) -> float:
    square = faces.training_crop_box(record.box, record.photo_side, record.photo_side, fit)
    return iou(square, record.square)


def held_out_ious(records: Sequence[Record]) -> np.ndarray:
    """IoU of each found face's square under constants fitted on the other half of the crops (split by
    crop, so a crop's four pastes are all on one side)."""
    found = [r for r in records if r.box]
    out = []
    for half in (0, 1):
        fit = fit_crop([r for r in found if r.crop % 2 != half])
        out += [square_iou(r, fit) for r in found if r.crop % 2 == half]
    return np.array(out)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def resample_floor(crop: np.ndarray, record: Record, size: int = 224) -> float:
    """The difference a perfect box would still leave: the crop pasted at the square's size and resized
    back (what the photo's resolution alone costs)."""
    side = record.square[2] - record.square[0]
    back = resize_rgb(Image.fromarray(resize_crop(crop, side)), size)
    return mean_abs_diff(back, resize_rgb(Image.fromarray(crop), size))


def augmentation_differences(crops: Sequence[np.ndarray], seed: int, size: int = 224) -> np.ndarray:
    """Mean absolute difference between each crop and itself under the training defaults' geometric
    augmentation (random resized crop, rotation; no flip): how far a training image already strays."""
    from raymotion.config import Augmentation
    from raymotion.data.augment import augment_batch

    defaults = Augmentation()
    originals = np.stack([resize_rgb(Image.fromarray(c), size) for c in crops])
    moved = augment_batch(originals, np.random.default_rng(seed), rotation_deg=defaults.rotation_deg,
                          crop_scale=defaults.crop_scale)
    return np.array([mean_abs_diff(a, b) for a, b in zip(moved, originals)])


# --- faces cut by the photo's border: box restoration and padding --------------------------------------

def edge_cases(crops: Sequence[np.ndarray], seed: int) -> Iterator[tuple[np.ndarray, int, Square]]:
    """640x480 photos with one face whose square lies 15-35% outside one border: (photo, crop, square)."""
    rng = np.random.default_rng(seed + 1)
    for index in range(len(crops)):
        side = int(rng.uniform(150, 250))
        out = int(side * rng.uniform(0.15, 0.35))
        x0, y0 = int(rng.integers(0, 640 - side)), int(rng.integers(0, 480 - side))
        border = int(rng.integers(0, 4))
        if border == 0:
            x0 = -out
        elif border == 1:
            x0 = 640 - side + out
        elif border == 2:
            y0 = -out
        else:
            y0 = 480 - side + out
        big = background("scene", 640 + 2 * side, rng, crops)
        paste(big, crops[index], (x0 + side, y0 + side, x0 + 2 * side, y0 + 2 * side))
        yield np.ascontiguousarray(big[side:side + 480, side:side + 640]), index, (x0, y0, x0 + side, y0 + side)


def square_unrestored(box: faces.FaceBox, fit: faces.CropFit = faces.CROP_FIT) -> Square:
    """training_crop_box as if the box touched no border (moved far inside a huge image and back)."""
    far = 10 ** 6
    x0, y0, x1, y1 = faces.training_crop_box(replace(box, x=box.x + far, y=box.y + far), 3 * far, 3 * far, fit)
    return x0 - far, y0 - far, x1 - far, y1 - far


def edge_check(crops: Sequence[np.ndarray], seed: int, size: int = 224) -> dict[str, float]:
    """Faces cut by the border: square IoU with and without restoring the clipped box; mean absolute
    difference to the original crop with edge-repeating and with black padding."""
    rows = []
    for photo, index, square in edge_cases(crops, seed):
        box = match(square, faces.detect_faces(photo))
        if box is None:
            rows.append(None)
            continue
        restored = faces.training_crop_box(box, photo.shape[1], photo.shape[0])
        original = resize_rgb(Image.fromarray(crops[index]), size)
        recut = {name: resize_rgb(Image.fromarray(np.ascontiguousarray(faces.crop_square(photo, restored, border))),
                                  size) for name, border in (("replicate", cv2.BORDER_REPLICATE),
                                                             ("black", cv2.BORDER_CONSTANT))}
        rows.append((iou(restored, square), iou(square_unrestored(box), square),
                     mean_abs_diff(recut["replicate"], original), mean_abs_diff(recut["black"], original)))
    found = np.array([r for r in rows if r is not None])
    return {"faces": len(rows), "found": len(found), "iou_restored": float(np.median(found[:, 0])),
            "iou_unrestored": float(np.median(found[:, 1])), "mad_replicate": float(found[:, 2].mean()),
            "mad_black": float(found[:, 3].mean())}


# --- label agreement with any classifier --------------------------------------------------------------

def label_agreement(classify: Callable[[np.ndarray], Sequence], crops: Sequence[np.ndarray], seed: int = 0,
                    size: int = 224, batch: int = 64, labels: Sequence | None = None,
                    cut: str = "square") -> dict[str, float]:
    """How often ``classify`` (uint8 NHWC -> labels) gives a face found in a photo (``cut`` from it: see
    CUTS) the label it gives the original crop: over every pasted face (a missed face disagrees) and over
    the found ones. The photos are those of ``measure`` (same crops and seed, same photos).

    With ``labels`` (each crop's true label) also what a user loses: accuracy on the original crops, and
    on the pasted faces (found ones, and all of them with a missed face counted wrong), each pasted face
    scored against its crop's true label; and the same two figures for the pasted squares re-cut as they
    were pasted (``*_true_square``, found faces): what the photo's resolution alone costs, whatever the cut."""
    originals = [resize_rgb(Image.fromarray(c), size) for c in crops]
    reference = _classify_all(classify, originals, batch)
    truth = list(labels) if labels is not None else reference
    counts = dict.fromkeys(("agree", "right", "agree_true", "right_true"), 0)
    found = total = 0
    pending: list[Record] = []

    def score(records: Sequence[Record]) -> None:
        if not records:
            return
        for suffix, images in (("", [r.recrop for r in records]), ("_true", [r.true_recrop for r in records])):
            if suffix and labels is None:
                continue
            predicted = classify(np.stack(images))
            counts["agree" + suffix] += sum(p == reference[r.crop] for p, r in zip(predicted, records))
            counts["right" + suffix] += sum(p == truth[r.crop] for p, r in zip(predicted, records))

    for records, _ in measure(crops, seed, size, cut, with_true_square=labels is not None):
        total += len(records)
        pending += [r for r in records if r.recrop is not None]
        if len(pending) >= batch:
            score(pending)
            found, pending = found + len(pending), []
    score(pending)
    found += len(pending)
    result = {"faces": total, "found": found, "agree_all": counts["agree"] / total,
              "agree_found": counts["agree"] / max(1, found)}
    if labels is not None:
        result.update(accuracy_crops=float(np.mean([p == t for p, t in zip(reference, truth)])),
                      accuracy_found=counts["right"] / max(1, found), accuracy_all=counts["right"] / total,
                      agree_true_square=counts["agree_true"] / max(1, found),
                      accuracy_true_square=counts["right_true"] / max(1, found))
    return result


def _classify_all(classify: Callable[[np.ndarray], Sequence], images: Sequence[np.ndarray], batch: int) -> list:
    return [label for i in range(0, len(images), batch) for label in classify(np.stack(images[i:i + batch]))]


def run_dir_classifier(run_dir: str) -> Callable[[np.ndarray], list[str]]:
    """``classify`` for a run directory: its served ensemble (raymotion.Predictor), as the service answers."""
    from raymotion.predict import Predictor

    predictor = Predictor(run_dir)

    def classify(images: np.ndarray) -> list[str]:
        return [answer["label"] for answer in predictor.classify([Image.fromarray(img) for img in images])]

    return classify


# --- timing and the report ---------------------------------------------------------------------------

def detection_ms(side: tuple[int, int], repeats: int = 10) -> float:
    """Median wall time of detect_faces on a flat photo of ``side`` (width, height): the cost is the
    downscale and the network, which depend on the pixel count, not on what the photo shows."""
    photo = np.full((side[1], side[0], 3), 120, np.uint8)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        faces.detect_faces(photo)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def quantiles(values: np.ndarray) -> str:
    p5, p25, p50, p75 = np.percentile(values, [5, 25, 50, 75])
    return f"mean {values.mean():.3f}  p5 {p5:.3f}  p25 {p25:.3f}  median {p50:.3f}  p75 {p75:.3f}"


def collect(crops: Sequence[np.ndarray], seed: int, size: int) -> tuple[list[Record], list[float], int]:
    """Every pasted face's Record (its pixels dropped), the found ones' mean absolute difference to their
    originals, and the number of detections that matched no face."""
    records, mad, extra = [], [], 0
    for photo_records, unmatched in measure(crops, seed, size):
        mad += [mean_abs_diff(r.recrop, resize_rgb(Image.fromarray(crops[r.crop]), size))
                for r in photo_records if r.box]
        records += [replace(r, recrop=None) for r in photo_records]  # the figures are taken: free the pixels
        extra += unmatched
    return records, mad, extra


def report_fit(records: Sequence[Record], extra: int, count: int) -> None:
    found = [r for r in records if r.box]
    print(f"pasted faces: {len(records)} ({count} crops x {len(BACKGROUNDS)} backgrounds, grids {GRIDS}); "
          f"found {len(found)}, missed {len(records) - len(found)}, detections matching no face: {extra}")
    print(f"fitted on all found faces: {fit_crop(found)}")
    print(f"in raymotion.predict.faces:            {faces.CROP_FIT}")
    print(f"landmark template fitted (fractions of the square): {fit_template(found)}")
    print(f"ALIGN_TEMPLATE in raymotion.predict.faces:          {faces.ALIGN_TEMPLATE}")
    print(f"held-out IoU (fit on half the crops, scored on the other half): {quantiles(held_out_ious(found))}")
    ious = np.array([square_iou(r) for r in found])
    print(f"IoU with raymotion.predict.faces constants: {quantiles(ious)}")
    print("  fraction >= 0.6 / 0.7 / 0.8: " + " / ".join(f"{(ious >= t).mean():.3f}" for t in (0.6, 0.7, 0.8)))
    for kind in BACKGROUNDS:
        print(f"  {kind:6s} median IoU {np.median([square_iou(r) for r in found if r.kind == kind]):.3f}")
    for grid in GRIDS:
        subset = [square_iou(r) for r in found if r.grid == grid]
        print(f"  grid {grid} (faces {grid * grid} a photo) median IoU {np.median(subset):.3f}, "
              f"found {len(subset)}/{sum(r.grid == grid for r in records)}")


def report_pixels(crops: Sequence[np.ndarray], records: Sequence[Record], mad: Sequence[float], seed: int,
                  size: int) -> None:
    floor = np.array([resample_floor(crops[r.crop], r, size) for r in records if r.box])
    print(f"re-cut crop vs original at {size} px, mean |difference| (0-255): {quantiles(np.array(mad))}")
    print(f"  same, perfect box (resolution of the photo alone):           {quantiles(floor)}")
    augmented = augmentation_differences(crops, seed, size)
    print(f"  for scale, training's own random crop (area >= 0.85) + rotation (<= 10 deg): {quantiles(augmented)}")
    edge = edge_check(crops, seed, size)
    print(f"faces cut by the border ({edge['found']}/{edge['faces']} found): median IoU restored "
          f"{edge['iou_restored']:.3f} vs not {edge['iou_unrestored']:.3f}; mean |difference| edge-repeat "
          f"{edge['mad_replicate']:.2f} vs black {edge['mad_black']:.2f}")


def report_timing() -> None:
    print(f"detect_faces: {detection_ms((640, 480)):.0f} ms at 640x480, {detection_ms((6000, 4000)):.0f} ms at "
          f"6000x4000 (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}); CPU flags: {' '.join(cpu_flags()) or 'none of avx2/fma/avx512'}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.face_fit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                                       "emotions"), help="root/val/<class>/*.jpg")
    parser.add_argument("--count", type=int, default=300, help="val crops to paste")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", help="also: label agreement and accuracy of this run's served ensemble")
    parser.add_argument("--cut", choices=[*CUTS, "both"], default="both",
                        help="with --run-dir: how found faces are cut (default: both, side by side)")
    args = parser.parse_args(argv)
    crops, paths = load_crops(args.root, "val", args.count, args.seed)
    records, mad, extra = collect(crops, args.seed, 224)
    report_fit(records, extra, len(crops))
    report_pixels(crops, records, mad, args.seed, 224)
    report_timing()
    if args.run_dir:
        report_labels(args.run_dir, crops, [os.path.basename(os.path.dirname(p)) for p in paths],  # root/val/<class>/
                      args.seed, CUTS if args.cut == "both" else [args.cut])


def report_labels(run_dir: str, crops: Sequence[np.ndarray], labels: Sequence[str], seed: int,
                  cuts: Iterable[str]) -> list[dict[str, Any]]:
    """Agreement and accuracy of the run's served ensemble on the pasted faces, per way of cutting them."""
    classify = run_dir_classifier(run_dir)
    rows = [{"cut": cut, **label_agreement(classify, crops, seed, labels=labels, cut=cut)} for cut in cuts]
    r0 = rows[0]
    print(f"\n{run_dir}: {r0['faces']} pasted faces, {r0['found']} found; crops' own accuracy "
          f"{r0['accuracy_crops']:.4f}; the pasted squares re-cut as pasted (a perfect detector): accuracy "
          f"{r0['accuracy_true_square']:.4f}, agreement {r0['agree_true_square']:.4f}")
    print_table([(r["cut"], f"{r['accuracy_found']:.4f}", f"{100 * (r['accuracy_found'] - r['accuracy_crops']):+.1f}",
                  f"{r['accuracy_all']:.4f}", f"{r['agree_found']:.4f}", f"{r['agree_all']:.4f}") for r in rows],
                ["cut", "acc found", "vs crops, points", "acc all", "agree found", "agree all"], "<>>>>>")
    return rows

if __name__ == "__main__":
    main()
