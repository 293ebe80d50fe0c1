"""Videos after inference: track ids for their faces, a per-second emotion timeline per track (CSV), a
PNG of it, and the share of each emotion (``--summary``).

    video_rows = with_tracks(video_rows)                     # the track column filled, rows by frame
    timeline = per_second(video_rows, classes)               # one row per (video, track, second)
    write_timeline(timeline, "out.timeline.csv"); plot_timeline(timeline, classes, "out.timeline.png")
"""

from __future__ import annotations

import csv
import math
import os
from collections import Counter, defaultdict
from collections.abc import Sequence

import pyarrow as pa

from raymotion.infer.table import prob_column
from raymotion.infer.tracks import track_faces

# Tracks drawn in the PNG, longest first: past a few dozen the panels are too small to read; the CSV
# keeps all of them.
MAX_PLOTTED_TRACKS = 24


def with_tracks(rows: pa.Table) -> pa.Table:
    """Video rows sorted by (source, frame, face) with ``track`` set for every face, per video."""
    if not rows.num_rows:
        return rows
    rows = rows.sort_by([("source", "ascending"), ("frame", "ascending"), ("face", "ascending")])
    cols = rows.select(["source", "frame", "face", "x", "y", "w", "h"]).to_pydict()
    by_video: dict[str, list[int]] = defaultdict(list)
    for i, (source, face) in enumerate(zip(cols["source"], cols["face"])):
        if face is not None and cols["frame"][i] is not None:
            by_video[source].append(i)
    track: list[int | None] = [None] * rows.num_rows
    for indices in by_video.values():
        ids = track_faces([(cols["frame"][i], (cols["x"][i], cols["y"][i], cols["w"][i], cols["h"][i]))
                           for i in indices])
        for i, t in zip(indices, ids):
            track[i] = t
    return rows.set_column(rows.schema.get_field_index("track"), "track", pa.array(track, pa.int64()))


def per_second(rows: pa.Table, classes: Sequence[str]) -> list[dict]:
    """Per video, track and whole second of video time: the faces seen (sampled frames), the mean of
    their ensemble probabilities and its label."""
    cols = rows.select(["source", "track", "time_s", "label", *[prob_column(c) for c in classes]]).to_pydict()
    sums: dict[tuple, list[float]] = {}
    counts: Counter = Counter()
    for i, track in enumerate(cols["track"]):
        if track is None or cols["label"][i] is None or cols["time_s"][i] is None:
            continue
        key = (cols["source"][i], track, math.floor(cols["time_s"][i]))
        probs = [cols[prob_column(c)][i] for c in classes]
        sums[key] = [a + b for a, b in zip(sums.get(key, [0.0] * len(classes)), probs)]
        counts[key] += 1
    out = []
    for key in sorted(sums):
        mean = [v / counts[key] for v in sums[key]]
        source, track, second = key
        out.append({"source": source, "track": track, "second": second, "faces": counts[key],
                    "label": classes[max(range(len(classes)), key=mean.__getitem__)],
                    **{prob_column(c): round(p, 6) for c, p in zip(classes, mean)}})
    return out


def write_timeline(timeline: list[dict], path: str, classes: Sequence[str]) -> str:
    fields = ["source", "track", "second", "faces", "label", *[prob_column(c) for c in classes]]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(timeline)
    return path


def plot_timeline(timeline: list[dict], classes: Sequence[str], path: str) -> str:
    """One panel per track (the longest MAX_PLOTTED_TRACKS), each class's mean probability per second."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a cluster node or in a job
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    by_track: dict[tuple, list[dict]] = defaultdict(list)
    for row in timeline:
        by_track[(row["source"], row["track"])].append(row)
    keys = sorted(by_track, key=lambda k: (-len(by_track[k]), k))[:MAX_PLOTTED_TRACKS]
    fig, axes = plt.subplots(max(1, len(keys)), 1, figsize=(9, 1.8 + 1.6 * max(1, len(keys))), squeeze=False,
                             sharey=True)
    for ax, key in zip(axes[:, 0], keys):
        rows = by_track[key]
        seconds = [r["second"] for r in rows]
        for c in classes:
            ax.plot(seconds, [r[prob_column(c)] for r in rows], marker="o", markersize=3, label=c)
        ax.set_title(f"{os.path.basename(key[0])}, track {key[1]}", fontsize=9, loc="left")
        ax.set_ylim(0, 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("probability", fontsize=8)
        ax.grid(alpha=0.3)
    if not keys:
        axes[0, 0].text(0.5, 0.5, "no face tracked", ha="center", va="center")
    axes[-1, 0].set_xlabel("second of video")
    axes[0, 0].legend(loc="upper right", fontsize=8, ncol=len(classes))
    hidden = len(by_track) - len(keys)
    fig.suptitle("emotion per second and tracked face" + (f" (the {len(keys)} longest of {len(by_track)} tracks)"
                                                           if hidden else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def shares(labels: Sequence[str | None], classes: Sequence[str]) -> dict[str, float]:
    """Each class's share of the labelled faces (0 for all when there is none)."""
    counts = Counter(label for label in labels if label is not None)
    total = sum(counts.values())
    return {c: counts[c] / total if total else 0.0 for c in classes}
