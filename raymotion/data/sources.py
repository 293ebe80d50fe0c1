"""Where a run's images come from: a class-folder root or a Parquet cache, given, shared or generated.

Kept apart from ``folders`` and ``parquet`` so that each of those reads one layout and neither imports
the other (``parquet`` uses ``folders``' table; this module picks between them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from raymotion.data.folders import SPLITS, DataError, ImageFolders, Split, counts_table, index_image_folders, select_classes
from raymotion.data.synthetic import GENERATED_MARKER, make_synthetic_faces


def open_data(root: str | os.PathLike):
    """A class-folder root (``ImageFolders``) or a Parquet cache directory (``ParquetCache``)."""
    # Imported here: parquet brings pyarrow and ray.data (slow imports), and a Serve replica imports this package
    # (for data.transforms) without ever opening a data root.
    from raymotion.data.parquet import ParquetCache, is_parquet_cache

    return ParquetCache.open(root) if is_parquet_cache(root) else index_image_folders(root)


def default_data_roots() -> list[str]:
    """Every data set under the shared data folder beside the checkout (``../shared/data/*/train``), sorted by
    name; [] when there is none."""
    here = Path(__file__).resolve().parents[2]
    for shared in (Path.cwd().parent / "shared/data", here.parent / "shared/data"):
        roots = sorted(str(d) for d in shared.glob("*") if (d / "train").is_dir()) if shared.is_dir() else []
        if roots:
            return roots
    return []


def default_data_root() -> str | None:
    """The first of ``default_data_roots`` (the single-root commands' default)."""
    roots = default_data_roots()
    return roots[0] if roots else None


def is_generated(root: str | os.PathLike) -> bool:
    """True for a data set written by raymotion.data.synthetic (or a Parquet cache made from one)."""
    return os.path.exists(os.path.join(root, GENERATED_MARKER))


def resolve_data_roots(given: Sequence[str] | None, synthetic_dir: str) -> tuple[list[str], str]:
    """The roots to use and how they were chosen: ``given``, else every shared data set, else generated faces."""
    if given:
        return list(given), "given"
    shared = default_data_roots()
    if shared:
        return shared, "shared data sets"
    root, how = resolve_data_root(None, synthetic_dir)
    return [root], how


def resolve_data_root(given: str | None, synthetic_dir: str) -> tuple[str, str]:
    """The root to use and how it was chosen: ``given``, else the shared data set, else generated faces."""
    if given:
        return given, "given"
    shared = default_data_root()
    if shared:
        return shared, "shared data set"
    if not os.path.isdir(os.path.join(synthetic_dir, "train")):
        make_synthetic_faces(synthetic_dir, train_per_class=300, val_per_class=100)
    return synthetic_dir, "GENERATED FACES: no --data given and no ../shared/data/emotions here"


def source_names(roots: Sequence[str]) -> list[str]:
    """Each root's name: its folder's name, numbered where two roots share one."""
    names = [os.path.basename(os.path.normpath(root)) or "data" for root in roots]
    return [f"{name}-{i + 1}" if names.count(name) > 1 else name for i, name in enumerate(names)]


def _uid_span(data: Any, split: str) -> int:
    """1 + the largest row uid a source can give in ``split`` (its rows' uids are 0..span-1)."""
    if isinstance(data, ImageFolders):
        return len(data.split(split))
    import pyarrow.parquet as pq

    uids = pq.read_table(data.split_dir(split), columns=["uid"]).column("uid").to_numpy()
    return int(uids.max()) + 1 if len(uids) else 0


@dataclass(frozen=True)
class DataSource:
    """One root of a run's data: its name (what per-source figures are called) and its images."""
    name: str
    data: Any  # ImageFolders or ParquetCache
    offsets: dict[str, int]  # split -> the uid of this source's row 0 in the run's rows


class Sources:
    """A run's data: one or more roots of the same classes trained as one. Rows are numbered run-wide (uid),
    the sources' rows in order, and every row knows its source. Offers what one root offers (``classes``,
    ``counts``, ``arrays``, ``arrays_with_uids``, ``summary``), so that every stage reads one or several roots
    alike."""

    def __init__(self, parts: list[DataSource]):
        self.parts = parts
        self.classes = list(parts[0].data.classes)

    @property
    def names(self) -> list[str]:
        return [part.name for part in self.parts]

    @property
    def roots(self) -> list[str]:
        return [part.data.root for part in self.parts]

    @property
    def root(self) -> str:
        """The roots in one string (messages, single-root readers)."""
        return os.pathsep.join(self.roots)

    def counts(self, split: str) -> dict[str, int]:
        out = {c: 0 for c in self.classes}
        for part in self.parts:
            for c, n in part.data.counts(split).items():
                out[c] += n
        return out

    def counts_by_source(self, split: str) -> dict[str, int]:
        """Source name -> images of ``split``."""
        return {part.name: sum(part.data.counts(split).values()) for part in self.parts}

    def summary(self) -> str:
        if len(self.parts) == 1:
            return self.parts[0].data.summary()
        tables = [part.data.summary() for part in self.parts]
        total = counts_table(f"all {len(self.parts)} sources ({', '.join(self.names)})", self.classes,
                             {s: self.counts(s) for s in SPLITS})
        return "\n".join(tables + [total])

    @property
    def generated(self) -> bool:
        return any(is_generated(root) for root in self.roots)

    @property
    def train(self) -> Split | None:
        """The train split as files, when every source is class folders (what decodes a sample of it
        without decoding the rest); else None."""
        if all(isinstance(part.data, ImageFolders) for part in self.parts):
            return self.folder_split("train")
        return None

    def folder_split(self, split: str) -> Split | None:
        """The class-folder sources' rows of ``split`` as one Split (run-wide uids, source indices), or None."""
        paths, labels, uids, sources = [], [], [], []
        for index, part in enumerate(self.parts):
            if not isinstance(part.data, ImageFolders):
                continue
            own = part.data.split(split)
            paths += own.paths
            labels += own.labels
            uids += range(part.offsets[split], part.offsets[split] + len(own))
            sources += [index] * len(own)
        return Split(tuple(paths), tuple(labels), tuple(uids), tuple(sources)) if paths else None

    def arrays_with_uids(self, split: str, size: int):
        """Readable images of ``split`` decoded in-process (uint8 NHWC at ``size``), labels and run-wide uids,
        source after source."""
        parts = [part.data.arrays_with_uids(split, size) for part in self.parts]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts]).astype(np.int64)
        uids = np.concatenate([np.asarray(p[2], np.int64) + part.offsets[split] for p, part in zip(parts, self.parts)])
        return images, labels, uids

    def arrays(self, split: str, size: int):
        images, labels, _ = self.arrays_with_uids(split, size)
        return images, labels

    def source_of(self, split: str, uids: np.ndarray) -> np.ndarray:
        """(N,) int64: the source index of each run-wide uid of ``split``."""
        starts = np.asarray([part.offsets[split] for part in self.parts])
        return np.searchsorted(starts, np.asarray(uids, np.int64), side="right") - 1

    def paths_of(self, split: str, uids: np.ndarray) -> list[str]:
        """Each uid's image file ("" for a row of a Parquet cache, which keeps no file names)."""
        out = []
        for uid, index in zip(np.asarray(uids, np.int64), self.source_of(split, uids)):
            part = self.parts[index]
            paths = part.data.split(split).paths if isinstance(part.data, ImageFolders) else ()
            local = int(uid) - part.offsets[split]
            out.append(paths[local] if 0 <= local < len(paths) else "")
        return out


def open_sources(roots: Sequence[str], classes: Sequence[str] | None = None) -> Sources:
    """Several roots (class folders or Parquet caches) as one run's data. Their class sets must agree, or
    ``classes`` names a subset that each of them has; a difference is refused naming it, before anything
    is decoded."""
    if not roots:
        raise DataError("no data root given")
    names = source_names(roots)
    opened = [open_data(root) for root in roots]
    if classes:
        opened = [narrow(data, list(classes)) for data in opened]
    reference = opened[0].classes
    for name, data in zip(names[1:], opened[1:]):
        if list(data.classes) != list(reference):
            only_first = sorted(set(reference) - set(data.classes))
            only_this = sorted(set(data.classes) - set(reference))
            raise DataError(
                f"the data sources' classes differ: {names[0]} has {', '.join(reference)}; {name} has "
                f"{', '.join(data.classes)} ({name} lacks {', '.join(only_first) or 'nothing'}, has extra "
                f"{', '.join(only_this) or 'nothing'}); pick classes every source has with --classes "
                f"{','.join(sorted(set(reference) & set(data.classes)))}")
    parts, offsets = [], {split: 0 for split in SPLITS}
    for name, data in zip(names, opened):
        parts.append(DataSource(name, data, dict(offsets)))
        for split in SPLITS:
            offsets[split] += _uid_span(data, split)
    return Sources(parts)


def as_sources(data: Any) -> Sources:
    """``data`` as Sources: itself if it is, else one root (ImageFolders or ParquetCache) as the only source."""
    if isinstance(data, Sources):
        return data
    return Sources([DataSource(source_names([data.root])[0], data, {split: 0 for split in SPLITS})])


def narrow(data: Any, classes: list[str]) -> Any:
    """One source at ``classes`` (class folders only: a Parquet cache holds the classes it was made with)."""
    if isinstance(data, ImageFolders):
        return select_classes(data, classes)
    if sorted(data.classes) != sorted(classes):
        raise DataError(f"{data.root} is a Parquet cache of classes {', '.join(data.classes)}: it cannot be narrowed "
                        f"to {', '.join(classes)}; prepare a cache from the narrowed class folders")
    return data


def sampling_rates(train_counts: dict[str, int], power: float, shares: dict[str, float] | None = None) -> list[float]:
    """How many times, on average, each source's training row is drawn per epoch, in source order, so that
    an epoch keeps the sources' total row count and gives source s the share ``shares[s]`` (normalised), or
    else a share proportional to n_s ** ``power`` (1: as the data is; 0: equal shares)."""
    names, n = list(train_counts), np.asarray(list(train_counts.values()), np.float64)
    if shares:
        unknown = sorted(set(shares) - set(names))
        if unknown:
            raise DataError(f"source_shares names {', '.join(unknown)}, which is not among this run's sources "
                            f"({', '.join(names)})")
        wanted = np.asarray([float(shares.get(name, 0.0)) for name in names])
    else:
        wanted = n ** float(power)
    if wanted.sum() <= 0:
        raise DataError(f"source shares {dict(zip(names, wanted))} leave no training rows")
    share = wanted / wanted.sum()
    return [float(r) for r in np.divide(share * n.sum(), n, out=np.zeros_like(n), where=n > 0)]
