"""What the command reads: the INPUT arguments as work units (on the driver), and each unit as a stream of
images (in Ray tasks).

    units, listing = plan_units(["photos/", "table.parquet", "clip.mp4"], fps=2.0)   # the driver
    for image in read_unit(unit, fps=2.0):                                      # a Ray task
        image.data or image.frame or image.error

A unit is one image file, one Parquet row group, or one time segment of a video: the driver only lists
files and reads Parquet footers and video headers, so that no pixel passes through it, and a long video
is cut into segments that tasks decode side by side (each seeks to its first frame).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".mpo")
VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mov", ".mkv", ".m4v")
PARQUET_EXTENSIONS = (".parquet", ".pq")
# Image bytes held at once per file. Far above any photo the decoder accepts (raymotion.predict.photo): a
# larger file is refused before it is read whole.
MAX_FILE_BYTES = 512 * 2**20
# Names an image-bytes column of a Parquet table goes by, when it has several binary columns.
BYTES_COLUMN_NAMES = ("image", "bytes", "jpeg", "png", "data", "content", "img")
# A Parquet row group is read by one task (its column chunk cannot be cut without reading it): above this
# many rows, planning says that the file's images are searched for faces one after another.
LARGE_ROW_GROUP = 2048
# A video's frame count comes from its container, which estimates it for some formats (WebM): reading
# that stops this many seconds short of it (or more) is reported as a truncated video.
TRUNCATION_SLACK_S = 0.5


@dataclass(frozen=True)
class Unit:
    """One share of the input a task reads on its own."""
    kind: str  # "image", "parquet" or "video"
    source: str
    column: str = ""  # parquet: the bytes column ("col.bytes" for a struct column with a bytes field)
    row_group: int = -1  # parquet
    first_row: int = -1  # parquet: the row group's first row in the file
    start: int = -1  # video: first frame of the segment, inclusive
    end: int = -1  # video: last frame, exclusive (-1: to the end)
    expected: int = 1  # images this unit should give (progress and time left)
    error: str = ""  # found while planning: the task emits it as the unit's one row


@dataclass
class Listing:
    """What planning found beside the units: files in folders that are none of the kinds read, and
    Parquet files whose row groups are too large to share out."""
    skipped: list[str] = field(default_factory=list)
    large_row_groups: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Image:
    """One image of a unit: its bytes (files, Parquet) or decoded RGB pixels (video frames), or an error."""
    kind: str
    source: str
    row: int | None = None
    frame: int | None = None
    time_s: float | None = None
    data: bytes | None = None
    pixels: np.ndarray | None = None
    error: str | None = None


def kind_of(path: str) -> str | None:
    ext = os.path.splitext(path)[1].lower()
    if ext in VIDEO_EXTENSIONS:
        return "video"
    if ext in PARQUET_EXTENSIONS:
        return "parquet"
    if ext in IMAGE_EXTENSIONS:
        return "image"
    return None


def is_sampled(index: int, video_fps: float, fps: float | None) -> bool:
    """Whether frame ``index`` is the frame nearest a multiple of 1/fps seconds (every frame when ``fps``
    is None or not below the video's own rate). Decided per frame, so that a segment starting anywhere and
    a video of unknown length sample the frames a whole read would."""
    if not fps or video_fps <= 0 or fps >= video_fps:
        return True
    step = video_fps / fps
    return round(round(index / step) * step) == index


def sampled_frames(count: int, video_fps: float, fps: float | None) -> list[int]:
    """The frame indices ``is_sampled`` keeps of ``count`` frames."""
    return [i for i in range(count) if is_sampled(i, video_fps, fps)]


def probe_video(path: str) -> tuple[float, int]:
    """(frames per second, frame count) from the container's header; (0, 0) when OpenCV cannot open it."""
    import cv2

    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            return 0.0, 0
        return float(cap.get(cv2.CAP_PROP_FPS) or 0.0), int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    finally:
        cap.release()


def video_units(path: str, fps: float | None, segment_s: float) -> list[Unit]:
    video_fps, count = probe_video(path)
    if video_fps <= 0 or count <= 0:
        # Unknown length (or unreadable: the task says why): one unit read to its end.
        return [Unit("video", path, expected=1)]
    per_segment = max(1, round(segment_s * video_fps))
    frames = sampled_frames(count, video_fps, fps)
    units = []
    for start in range(0, count, per_segment):
        end = min(count, start + per_segment)
        expected = sum(1 for f in frames if start <= f < end)
        units.append(Unit("video", path, start=start, end=end, expected=expected))
    return units


def bytes_column(schema, wanted: str | None) -> str:
    """The image-bytes column of a Parquet schema: ``wanted``, else the one binary column (or struct with a
    binary ``bytes`` field, as Hugging Face stores images), else the one with an image-like name."""
    import pyarrow as pa

    def is_bytes(t) -> bool:
        return pa.types.is_binary(t) or pa.types.is_large_binary(t)

    candidates = []
    for f in schema:
        if is_bytes(f.type):
            candidates.append(f.name)
        elif pa.types.is_struct(f.type) and any(c.name == "bytes" and is_bytes(c.type) for c in f.type):
            candidates.append(f"{f.name}.bytes")
    if wanted:
        if wanted in candidates:
            return wanted
        if f"{wanted}.bytes" in candidates:
            return f"{wanted}.bytes"
        raise ValueError(f"no binary column {wanted!r} (binary columns: {', '.join(candidates) or 'none'})")
    if len(candidates) == 1:
        return candidates[0]
    named = [c for c in candidates if c.split(".")[0].lower() in BYTES_COLUMN_NAMES]
    if len(named) == 1:
        return named[0]
    if not candidates:
        raise ValueError("no binary column of image bytes (give one with --column)")
    raise ValueError(f"several binary columns ({', '.join(candidates)}): say which with --column")


def parquet_units(path: str, column: str | None) -> list[Unit]:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path)
        col = bytes_column(meta.schema_arrow, column)
    except Exception as err:  # not Parquet, unreadable footer, no bytes column: the file's one row says so
        return [Unit("parquet", path, error=f"{type(err).__name__}: {err}")]
    units, first = [], 0
    for i in range(meta.metadata.num_row_groups):
        rows = meta.metadata.row_group(i).num_rows
        if rows:
            units.append(Unit("parquet", path, column=col, row_group=i, first_row=first, expected=rows))
        first += rows
    return units


def files_of(inputs: Sequence[str], listing: Listing) -> list[tuple[str, str]]:
    """(path, kind) of every input: files as given (a file of unknown kind is read as an image, so that a
    mislabelled one still gets its row), folders walked in sorted order keeping the known kinds."""
    out = []
    for path in inputs:
        if os.path.isdir(path):
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames.sort()
                for name in sorted(filenames):
                    full = os.path.join(dirpath, name)
                    kind = kind_of(full)
                    if kind is None:
                        listing.skipped.append(full)
                    else:
                        out.append((full, kind))
        elif os.path.exists(path):
            out.append((path, kind_of(path) or "image"))
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return out


def plan_units(inputs: Sequence[str], *, fps: float | None, column: str | None = None,
               segment_s: float = 60.0) -> tuple[list[Unit], Listing]:
    """Every input as units, longest first (videos, then Parquet row groups, then image files), so that
    the long ones start while short ones fill the gaps. Raises FileNotFoundError for a missing argument:
    a typo is refused before anything runs, a bad file inside a folder gets an error row."""
    listing = Listing()
    videos, tables, images = [], [], []
    for path, kind in files_of(inputs, listing):
        if kind == "video":
            videos.extend(video_units(path, fps, segment_s))
        elif kind == "parquet":
            found = parquet_units(path, column)
            if any(u.expected > LARGE_ROW_GROUP for u in found):
                listing.large_row_groups.append(path)
            tables.extend(found)
        else:
            images.append(Unit("image", path))
    return videos + tables + images, listing


# --- in tasks: a unit's images ------------------------------------------------------------------------

def read_file(path: str) -> bytes:
    size = os.path.getsize(path)
    if size > MAX_FILE_BYTES:
        raise ValueError(f"file of {size:,} bytes is too large (at most {MAX_FILE_BYTES:,})")
    with open(path, "rb") as f:
        return f.read()


def _error(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def parquet_images(unit: Unit, chunk: int = 64) -> Iterator[Image]:
    import pyarrow.parquet as pq

    name, _, field_name = unit.column.partition(".")
    row = unit.first_row
    try:
        for batch in pq.ParquetFile(unit.source).iter_batches(batch_size=chunk, row_groups=[unit.row_group],
                                                               columns=[name]):
            values = batch.column(0)
            if field_name:
                values = values.field(field_name)
            for value in values.to_pylist():
                yield Image("parquet", unit.source, row=row, data=value if value is not None else b"")
                row += 1
    except Exception as err:  # a corrupt page: the rows read so far stand, the rest of the group is one error
        yield Image("parquet", unit.source, row=row, error=_error(err))


def video_images(unit: Unit, fps: float | None) -> Iterator[Image]:
    """The unit's sampled frames as RGB, then an error image if the video ends before its header said."""
    import cv2

    cap = cv2.VideoCapture(unit.source)
    try:
        if not cap.isOpened():
            yield Image("video", unit.source, error="VideoError: OpenCV cannot open this video (unreadable or truncated)")
            return
        video_fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        start = max(0, unit.start)
        end = unit.end if unit.end >= 0 else (count if count > 0 else 2**62)
        if start:
            cap.set(cv2.CAP_PROP_POS_FRAMES, start)
        # A seek past a cut lands on the last frame there is: where it landed, not where it was asked to,
        # is the next frame's index.
        index = int(cap.get(cv2.CAP_PROP_POS_FRAMES)) if start else 0
        while index < end:
            if not cap.grab():
                break
            if is_sampled(index, video_fps, fps):
                ok, bgr = cap.retrieve()
                if not ok or bgr is None:
                    break
                time_s = index / video_fps if video_fps > 0 else None
                yield Image("video", unit.source, frame=index, time_s=time_s,
                            pixels=np.ascontiguousarray(bgr[:, :, ::-1]))
            index += 1
        # Only the last segment's end is the header's estimate; an earlier one's is a frame that exists.
        slack = max(1.0, TRUNCATION_SLACK_S * video_fps) if end >= count else 0.0
        if unit.end >= 0 and end - index > slack:
            yield Image("video", unit.source, frame=index, time_s=index / video_fps if video_fps > 0 else None,
                        error=f"VideoError: frames {max(index, start)}-{end - 1} of this segment are missing: the "
                              f"video ends at frame {index}, its header says {count} (truncated or damaged)")
        elif index == start and unit.end < 0:
            yield Image("video", unit.source, error="VideoError: no frame could be read")
    except Exception as err:
        yield Image("video", unit.source, error=_error(err))
    finally:
        cap.release()


def read_unit(unit: Unit, fps: float | None) -> Iterator[Image]:
    """The images of one unit, in order; never raises for bad input (an Image with ``error`` instead)."""
    if unit.error:
        yield Image(unit.kind, unit.source, error=unit.error)
    elif unit.kind == "image":
        try:
            yield Image("image", unit.source, data=read_file(unit.source))
        except Exception as err:
            yield Image("image", unit.source, error=_error(err))
    elif unit.kind == "parquet":
        yield from parquet_images(unit)
    else:
        yield from video_images(unit, fps)
