"""Faces in whole photos: find them with yuface (libfacedetection) and cut each one out the way the
training crops were cut (a square OpenCV Haar-cascade box), so that a found face scores like a
pre-cropped one.

    boxes = detect_faces(rgb)                 # FaceBox per face, original pixels, best score first
    crop = crop_face(rgb, boxes[0], 224)      # uint8 224x224x3, Haar-style square, padded if off-image

This runs inside Serve replicas: numpy, PIL, OpenCV and yuface only (no torch). yuface ships its weights
inside its wheel, so nothing is downloaded at run time. It parallelises with OpenMP: a replica should
run with OMP_NUM_THREADS set to its CPU share (Ray sets it for its workers).

The constants of ``training_crop_box`` were fitted by ``python -m bench.face_fit`` (see docs/serving.md,
"Faces in whole photos").
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import yuface
from PIL import Image

from raymotion.data.transforms import resize_rgb

# yuface's own default threshold; its scores on the pasted training crops sit far above it, and noise,
# gradients and blurred backgrounds stayed below it (tests/test_faces.py).
MIN_SCORE = 0.5
# Detection runs on a copy whose long side is at most this: yuface's cost grows with the pixel count, so
# a 24-megapixel photo costs what a 640-pixel one does. Faces smaller than ~1/30 of the long side are lost.
MAX_SIDE = 640


@dataclass(frozen=True)
class CropFit:
    """How a Haar-style training square relates to a yuface box, in units of the box width."""
    side: float  # side of the square / box width
    shift_x: float  # (square centre - box centre) / box width, x
    shift_y: float  # same, y (negative: up)
    aspect: float  # box height / width: restores the clipped side of a face cut by the image border


# Medians over val crops pasted at known squares into photos, from `python -m bench.face_fit` (docs/serving.md).
CROP_FIT = CropFit(side=1.142, shift_x=0.0, shift_y=-0.019, aspect=1.27)


@dataclass(frozen=True)
class LandmarkSupport:
    """How far a face's box can reach from its landmarks, in units of the eye-to-mouth distance (the
    vertical distance from the eyes' midpoint to the mouth corners' midpoint; the interocular distance for
    faces cut at the top or bottom, where the eyes or the mouth may lie outside the photo). Each bound is
    set above what yuface gives uncut faces (the fixture faces of tests/test_faces.py at several sizes and
    backgrounds), so that it trims only a box the detector stretched beyond its face."""
    above_eyes: float  # box top above the eyes
    below_mouth: float  # box bottom below the mouth
    width: float  # box width
    width_by_eyes: float  # box width / interocular distance
    height_by_eyes: float  # box height / interocular distance


LANDMARK_SUPPORT = LandmarkSupport(above_eyes=1.4, below_mouth=0.95, width=2.9, width_by_eyes=2.7, height_by_eyes=3.3)


# Where the five landmarks (right eye, left eye, nose tip, right and left mouth corner, as yuface names
# them: right is the image's left) lie in a training crop, as fractions of its side: medians over val
# crops pasted at known squares into photos (``python -m bench.face_fit`` prints the fit).
ALIGN_TEMPLATE = ((0.291, 0.376), (0.702, 0.375), (0.491, 0.604), (0.330, 0.781), (0.674, 0.780))


@dataclass(frozen=True)
class FaceBox:
    """A face in original image pixels (x, y: top-left; clipped to the image) and yuface's score in
    [0, 1]."""
    x: int
    y: int
    width: int
    height: int
    score: float
    # yuface's five landmarks (right eye, left eye, nose tip, mouth corners) as x, y pairs in the same
    # pixels; they are not clipped: a point cut by the border lies on it or beyond it.
    landmarks: tuple[float, ...] | None = None

    def to_json(self) -> dict[str, float | int]:
        return {"x": self.x, "y": self.y, "width": self.width, "height": self.height, "score": round(self.score, 3)}


def _check_rgb(rgb: np.ndarray) -> None:
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected uint8 HxWx3 RGB, got {rgb.dtype} {rgb.shape}")


def detection_scale(height: int, width: int, max_side: int = MAX_SIDE) -> float:
    """The factor (<= 1) that brings the long side to at most ``max_side``; small images are not enlarged."""
    return min(1.0, max_side / max(height, width, 1))


def _shrink(rgb: np.ndarray, width: int, height: int) -> tuple[np.ndarray, int, int]:
    """``rgb`` resized to width x height, and the original width and height that it covers."""
    # INTER_AREA (averaging), so that fine texture does not alias into face-like patterns. OpenCV runs it
    # several times faster at a whole ratio, so a large photo is first decimated by one (dropping the
    # last few rows and columns, fewer than that ratio), then brought to size.
    factor = min(rgb.shape[0] // height, rgb.shape[1] // width)
    if factor >= 2:
        rgb = rgb[:rgb.shape[0] // factor * factor, :rgb.shape[1] // factor * factor]
    covered_h, covered_w = rgb.shape[:2]
    if factor >= 2:
        rgb = cv2.resize(rgb, (covered_w // factor, covered_h // factor), interpolation=cv2.INTER_AREA)
    if rgb.shape[:2] != (height, width):
        rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
    return rgb, covered_w, covered_h


def detection_input(rgb: np.ndarray, max_side: int = MAX_SIDE) -> tuple[np.ndarray, float, float]:
    """The RGB copy detection runs on (long side <= ``max_side``) and its x and y scales from the original.
    Serve's ingress makes it, so that only this small copy travels to the detector replica."""
    _check_rgb(rgb)
    height, width = rgb.shape[:2]
    scale = detection_scale(height, width, max_side)
    if scale < 1.0:
        rgb, width, height = _shrink(rgb, max(1, round(width * scale)), max(1, round(height * scale)))
    return rgb, rgb.shape[1] / width, rgb.shape[0] / height


def raw_detections(small_rgb: np.ndarray) -> np.ndarray:
    """yuface rows as float: score (0-100), x, y, w, h, then 5 landmarks (x, y) in ``small_rgb`` pixels."""
    bgr = np.ascontiguousarray(small_rgb[:, :, ::-1])  # yuface reads BGR
    # c_detect, not yuface.detect: the wrapper only thresholds, and warns above 960 px.
    rows = yuface.c_detect(bgr)
    return rows[:, :15].astype(np.float64) if len(rows) else np.zeros((0, 15))


def _to_face_box(row: np.ndarray, scale_x: float, scale_y: float, height: int, width: int) -> FaceBox | None:
    x0, y0 = row[1] / scale_x, row[2] / scale_y
    x1, y1 = x0 + row[3] / scale_x, y0 + row[4] / scale_y
    x0, y0 = max(0, round(x0)), max(0, round(y0))
    x1, y1 = min(width, round(x1)), min(height, round(y1))
    if x1 <= x0 or y1 <= y0:
        return None
    points = row[5:15] / np.tile([scale_x, scale_y], 5) if len(row) >= 15 else None
    return FaceBox(x0, y0, x1 - x0, y1 - y0, float(row[0]) / 100.0,
                   None if points is None else tuple(float(v) for v in points))


def face_boxes(rows: np.ndarray, scale_x: float, scale_y: float, height: int, width: int,
               min_score: float = MIN_SCORE) -> list[FaceBox]:
    """Detections on the small copy as boxes in the ``width`` x ``height`` original, best score first
    (ties: left to right)."""
    boxes = []
    for row in rows:
        box = _to_face_box(row, scale_x, scale_y, height, width) if row[0] >= min_score * 100 else None
        if box is not None:
            boxes.append(box)
    return sorted(boxes, key=lambda b: (-b.score, b.x, b.y))


def detect_faces(rgb: np.ndarray, *, max_side: int = MAX_SIDE, min_score: float = MIN_SCORE) -> list[FaceBox]:
    """Faces in a uint8 HxWx3 RGB image, in its own pixel coordinates, highest score first (ties: left to
    right). Detection runs on a copy downscaled to a long side of at most ``max_side``."""
    small, scale_x, scale_y = detection_input(rgb, max_side)
    return face_boxes(raw_detections(small), scale_x, scale_y, rgb.shape[0], rgb.shape[1], min_score)


def _touches(low: int, high: int, limit: int, tolerance: float) -> tuple[bool, bool]:
    return low <= tolerance, high >= limit - tolerance


def _unclipped_extent(low: int, high: int, limit: int, full: float, tolerance: float) -> tuple[float, float]:
    """A box side [low, high) clipped by the image border, grown to ``full`` away from the border."""
    at_low, at_high = _touches(low, high, limit, tolerance)
    if high - low >= full or at_low == at_high:  # not shorter, or cut on both sides / neither: keep
        return float(low), float(high)
    return (high - full, float(high)) if at_low else (float(low), low + full)


def _landmark_scales(box: FaceBox) -> tuple[float, float, float, float] | None:
    """(eyes' y, mouth's y, eye-to-mouth distance, interocular distance) of the box's landmarks, or None
    when it has none or they are degenerate."""
    if box.landmarks is None:
        return None
    (rx, ry), (lx, ly), _, (mrx, mry), (mlx, mly) = np.asarray(box.landmarks, np.float64).reshape(5, 2)
    eyes_y, mouth_y = (ry + ly) / 2, (mry + mly) / 2
    if mouth_y - eyes_y <= 0 or abs(lx - rx) <= 0:
        return None
    return eyes_y, mouth_y, mouth_y - eyes_y, abs(lx - rx)


def _face_extent(box: FaceBox, width: int, height: int, fit: CropFit,
                 support: LandmarkSupport = LANDMARK_SUPPORT) -> tuple[float, float, float, float]:
    """The box before clipping: yuface clips at the image border, so a face cut by it gets a short side;
    the other side and the fitted aspect say how long it was. What is restored is capped to what the
    landmarks support: a face cut at the left or right keeps its eyes and mouth in the photo, so their
    distance bounds its height and width (yuface stretches some cut boxes well past the chin or the brow,
    and a width restored from such a height runs off the face); one cut at the top or bottom keeps both
    eyes' x, which bound its height. A face cut in a corner keeps neither and is restored from its box."""
    # A border within a twentieth of the box (a pixel of a downscaled detection) counts as touched.
    tol = 1 + box.width / 20
    cut_x = any(_touches(box.x, box.x + box.width, width, tol))
    cut_y = any(_touches(box.y, box.y + box.height, height, tol))
    marks = _landmark_scales(box) if cut_x != cut_y else None
    by0, by1 = float(box.y), float(box.y + box.height)
    bx0, bx1 = float(box.x), float(box.x + box.width)
    max_w = max_h = float("inf")
    if marks is not None and cut_x:
        eyes_y, mouth_y, eye_mouth, _ = marks
        by0 = max(by0, eyes_y - support.above_eyes * eye_mouth)
        by1 = min(by1, mouth_y + support.below_mouth * eye_mouth)
        if by1 <= by0:  # landmarks that contradict the box: keep the box
            by0, by1 = float(box.y), float(box.y + box.height)
        max_w = support.width * eye_mouth
    elif marks is not None:
        # Cut at the top or bottom, yuface widens some boxes: a width past what the eyes support is
        # narrowed about its centre before the height is restored from it.
        eyes = marks[3]
        excess = (bx1 - bx0) - support.width_by_eyes * eyes
        if excess > 0:
            bx0, bx1 = bx0 + excess / 2, bx1 - excess / 2
        max_h = support.height_by_eyes * eyes
    full_w = max(box.width, min(max_w, (by1 - by0) / fit.aspect)) if cut_x else bx1 - bx0
    x0, x1 = _unclipped_extent(box.x, box.x + box.width, width, full_w, tol) if cut_x else (bx0, bx1)
    full_h = max(box.height, min(max_h, (x1 - x0) * fit.aspect)) if cut_y else by1 - by0
    y0, y1 = _unclipped_extent(round(by0), round(by1), height, full_h, tol) if cut_y else (by0, by1)
    return x0, y0, x1, y1


def face_extent(box: FaceBox, width: int, height: int, fit: CropFit = CROP_FIT) -> tuple[int, int, int, int]:
    """The face's box as (x, y, width, height) in the photo's pixels: the detected box where the face is
    whole; for a face cut by the photo's border, the whole face (restored, capped to its landmarks), which
    then reaches beyond that border (x or y negative, or x + width past the photo's width)."""
    x0, y0, x1, y1 = (round(v) for v in _face_extent(box, width, height, fit))
    return x0, y0, max(1, x1 - x0), max(1, y1 - y0)


def training_crop_box(box: FaceBox, width: int, height: int, fit: CropFit = CROP_FIT) -> tuple[int, int, int, int]:
    """The square (x0, y0, x1, y1; x1 and y1 exclusive) the training data's Haar cascade would have cut
    around this face in a ``width`` x ``height`` image. It may reach outside the image (``crop_face``
    pads rather than shrinking it); a box cut by the border is first restored to its full size."""
    x0, y0, x1, y1 = _face_extent(box, width, height, fit)
    face_w = x1 - x0
    side = fit.side * face_w
    cx = (x0 + x1) / 2 + fit.shift_x * face_w
    cy = (y0 + y1) / 2 + fit.shift_y * face_w
    left, top = round(cx - side / 2), round(cy - side / 2)
    side_px = max(1, round(side))
    return left, top, left + side_px, top + side_px


def crop_square(rgb: np.ndarray, square: tuple[int, int, int, int], border: int = cv2.BORDER_REPLICATE) -> np.ndarray:
    """``rgb[y0:y1, x0:x1]`` where the square may reach outside the image; the missing part is filled by
    ``border`` (an OpenCV border mode): by default it repeats the edge pixels, which kept crops closer to
    the originals than black did (docs/serving.md)."""
    x0, y0, x1, y1 = square
    height, width = rgb.shape[:2]
    inner = rgb[max(0, y0):min(height, y1), max(0, x0):min(width, x1)]
    pads = (max(0, -y0), max(0, y1 - height), max(0, -x0), max(0, x1 - width))
    if not any(pads):
        return inner
    if inner.size == 0:  # the square misses the image entirely: nothing to repeat
        return np.zeros((y1 - y0, x1 - x0, 3), np.uint8)
    return cv2.copyMakeBorder(inner, *pads, border, value=(0, 0, 0))


def crop_face(rgb: np.ndarray, box: FaceBox, size: int) -> np.ndarray:
    """The face as a uint8 ``size`` x ``size`` x 3 crop cut like the training data, resized by the
    project's one resize function (raymotion.data.transforms.resize_rgb, as training does)."""
    _check_rgb(rgb)
    square = crop_square(rgb, training_crop_box(box, rgb.shape[1], rgb.shape[0]))
    return resize_rgb(Image.fromarray(np.ascontiguousarray(square)), size)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 rotation + uniform scale + shift that maps the (K, 2) points ``src`` closest to ``dst`` in
    least squares (Umeyama's closed form, reflections excluded): deterministic, unlike OpenCV's robust
    estimators, and with five landmarks there is no outlier to reject."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    a, b = src - src_mean, dst - dst_mean
    u, sigma, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
    rotation = u @ d @ vt
    scale = float(np.trace(np.diag(sigma) @ d) / max(a.var(0).sum(), 1e-12))
    shift = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, shift[:, None]])


def _refined_landmarks(rgb: np.ndarray, points: np.ndarray, template: np.ndarray, rounds: int) -> np.ndarray:
    """The landmarks found again on the face turned upright by the last estimate (a canvas twice the
    template's box, the face in its middle), mapped back to the photo. yuface's landmarks lean towards
    upright, so a tilted head's first estimate undoes only part of its tilt; each round undoes most of
    what is left."""
    side = 160  # the template box on the canvas: yuface finds faces of that size reliably
    for _ in range(rounds):
        to_canvas = similarity_transform(points, template * side + side / 2)
        canvas = cv2.warpAffine(rgb, to_canvas, (2 * side, 2 * side), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REPLICATE)
        found = [b for b in detect_faces(canvas) if b.landmarks is not None]
        if not found:
            break
        middle = min(found, key=lambda b: abs(b.x + b.width / 2 - side) + abs(b.y + b.height / 2 - side))
        back = np.linalg.inv(np.vstack([to_canvas, [0.0, 0.0, 1.0]]))[:2]
        points = np.asarray(middle.landmarks, np.float64).reshape(5, 2) @ back[:, :2].T + back[:, 2]
    return points


def aligned_face(rgb: np.ndarray, box: FaceBox, size: int,
                 template: tuple[tuple[float, float], ...] = ALIGN_TEMPLATE, refine_rounds: int = 1) -> np.ndarray:
    """The face as a uint8 ``size`` x ``size`` x 3 crop whose five landmarks sit where a training crop's
    do (``template``): upright, and framed by the eyes and mouth rather than by the box's edges, after
    ``refine_rounds`` rounds of finding the landmarks again on the straightened face (each a detection on
    a small canvas). Off-image parts repeat the edge pixels (as ``crop_square``). Without landmarks, the
    box's training square."""
    _check_rgb(rgb)
    if box.landmarks is None:
        return crop_face(rgb, box, size)
    target = np.asarray(template, np.float64)
    points = _refined_landmarks(rgb, np.asarray(box.landmarks, np.float64).reshape(5, 2), target, refine_rounds)
    # Warped at the face's own resolution (at least ``size``), then resized by the project's resize:
    # a warp straight to a much smaller side would alias where resize_rgb averages.
    shrink = float(np.hypot(*similarity_transform(points, target * size)[:, 0]))  # output px per photo px
    side = int(min(4 * size, max(size, round(size / max(shrink, 1e-6)))))
    warped = cv2.warpAffine(rgb, similarity_transform(points, target * side), (side, side),
                            flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return warped if side == size else resize_rgb(Image.fromarray(warped), size)
