"""A Parquet cache of decoded, resized images: later epochs, trials and runs skip JPEG decoding.

    python -m raymotion.data prepare --data ROOT --out DIR --size 96

    DIR/raymotion-cache.json   classes, size, counts, skipped files, source root
    DIR/train/*.parquet        columns: image (uint8 HxWx3 tensor), label, uid
    DIR/val/*.parquet

Every command that takes ``--data`` accepts such a directory in place of a class-folder root.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import ray.data

CACHE_META = "raymotion-cache.json"
CACHE_FORMAT = "raymotion-parquet-cache/1"


def is_parquet_cache(root: str | os.PathLike) -> bool:
    return os.path.isfile(os.path.join(root, CACHE_META))


@dataclass(frozen=True)
class ParquetCache:
    root: str
    classes: list[str]
    size: int
    counts: dict[str, dict[str, int]]  # split -> class -> images
    meta: dict[str, Any]

    @classmethod
    def open(cls, root: str | os.PathLike) -> "ParquetCache":
        root = os.path.abspath(root)
        with open(os.path.join(root, CACHE_META)) as f:
            meta = json.load(f)
        if meta.get("format") != CACHE_FORMAT:
            raise ValueError(f"{root}: not a {CACHE_FORMAT} directory")
        return cls(root, meta["classes"], meta["size"], meta["counts"], meta)

    def split_dir(self, split: str) -> str:
        return os.path.join(self.root, split)

    def read(self, split: str) -> ray.data.Dataset:
        return ray.data.read_parquet(self.split_dir(split))

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """All images (uint8 NHWC, sorted by uid) and labels of a split, in-process with pyarrow."""
        table = pq.read_table(self.split_dir(split))
        order = np.argsort(table.column("uid").to_numpy())
        images = np.stack([np.asarray(v, np.uint8).reshape(self.size, self.size, 3)
                           for v in table.column("image").to_pylist()])
        return images[order], table.column("label").to_numpy()[order]


def write_cache_meta(out: str, *, classes: list[str], size: int, counts: dict[str, dict[str, int]],
                     source: str, skipped: dict[str, Any]) -> None:
    meta = {"format": CACHE_FORMAT, "classes": classes, "size": size, "counts": counts, "source": source,
            "skipped": skipped}
    with open(os.path.join(out, CACHE_META), "w") as f:
        json.dump(meta, f, indent=2)
