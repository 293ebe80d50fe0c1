"""Where a run's images come from: a class-folder root or a Parquet cache, given, shared or generated.

Kept apart from ``folders`` and ``parquet`` so that each of those reads one layout and neither imports
the other (``parquet`` uses ``folders``' table; this module picks between them).
"""

from __future__ import annotations

import os
from pathlib import Path

from raymotion.data.folders import index_image_folders
from raymotion.data.synthetic import GENERATED_MARKER, make_synthetic_faces


def open_data(root: str | os.PathLike):
    """A class-folder root (``ImageFolders``) or a Parquet cache directory (``ParquetCache``)."""
    # Imported here: parquet brings pyarrow and ray.data (0.3 s), and a Serve replica imports this package
    # (for data.transforms) without ever opening a data root.
    from raymotion.data.parquet import ParquetCache, is_parquet_cache

    return ParquetCache.open(root) if is_parquet_cache(root) else index_image_folders(root)


def default_data_root() -> str | None:
    """The shared data set beside the checkout, when present (``../shared/data/emotions``)."""
    here = Path(__file__).resolve().parents[2]
    for candidate in (Path.cwd().parent / "shared/data/emotions", here.parent / "shared/data/emotions"):
        if (candidate / "train").is_dir():
            return str(candidate)
    return None


def is_generated(root: str | os.PathLike) -> bool:
    """True for a data set written by raymotion.data.synthetic (or a Parquet cache made from one)."""
    return os.path.exists(os.path.join(root, GENERATED_MARKER))


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
