"""Track ids for the faces of a video: a greedy IoU tracker over the sampled frames.

    tracks = track_faces([(frame, (x, y, w, h)), ...])   # one id per detection, in the order given

Each frame's detections are matched to the tracks seen in the last ``max_gap`` sampled frames, best
overlap first; a detection that overlaps no track by ``min_iou`` starts a new one. No motion model and no
appearance: between two frames sampled a fraction of a second apart a face moves little, and a face that
leaves and comes back later gets a new id (said so in the output, not hidden).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Box = tuple[float, float, float, float]  # x, y, width, height

# Half-overlapping boxes one sample apart are the same face; two faces side by side overlap far less.
MIN_IOU = 0.3
# Sampled frames a track survives without a detection (a blink of the detector, a turned head).
MAX_GAP = 2


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x, y, width, height) boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


@dataclass
class _Track:
    id: int
    box: Box
    last_step: int


def track_faces(detections: Sequence[tuple[int, Box]], *, min_iou: float = MIN_IOU, max_gap: int = MAX_GAP) -> list[int]:
    """A track id (0, 1, ...) per detection of one video; ``detections`` are (frame index, box), in any
    order. ``max_gap`` counts sampled frames (the distinct frame indices that occur), not video frames."""
    steps = {frame: i for i, frame in enumerate(sorted({f for f, _ in detections}))}
    by_step: dict[int, list[int]] = {}
    for k, (frame, _) in enumerate(detections):
        by_step.setdefault(steps[frame], []).append(k)
    ids = [-1] * len(detections)
    live: list[_Track] = []
    next_id = 0
    for step in sorted(by_step):
        live = [t for t in live if step - t.last_step <= max_gap + 1]
        pairs = sorted(((iou(t.box, detections[k][1]), ti, k) for ti, t in enumerate(live) for k in by_step[step]),
                       reverse=True)
        used_tracks: set[int] = set()
        for overlap, ti, k in pairs:
            if overlap < min_iou:
                break
            if ti in used_tracks or ids[k] != -1:
                continue
            used_tracks.add(ti)
            ids[k] = live[ti].id
            live[ti].box, live[ti].last_step = detections[k][1], step
        for k in by_step[step]:
            if ids[k] == -1:
                ids[k] = next_id
                live.append(_Track(next_id, detections[k][1], step))
                next_id += 1
    return ids
