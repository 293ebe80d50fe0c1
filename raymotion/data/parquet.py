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
import pyarrow as pa
import pyarrow.parquet as pq
import ray.data

CACHE_META = "raymotion-cache.json"
CACHE_FORMAT = "raymotion-parquet-cache/1"


def is_parquet_cache(root: str | os.PathLike) -> bool:
    return os.path.isfile(os.path.join(root, CACHE_META))


@ray.remote(num_cpus=1)
def _read_parquet_file(path: str) -> pa.Table:
    # pyarrow restores Ray's tensor column type from the file's field metadata once ray.data (imported
    # at the top of this module) has registered it.
    return pq.read_table(path)


@dataclass(frozen=True)
class ParquetCache:
    root: str
    classes: list[str]
    size: int
    counts_by_split: dict[str, dict[str, int]]  # split -> class -> images
    meta: dict[str, Any]

    @classmethod
    def open(cls, root: str | os.PathLike) -> "ParquetCache":
        root = os.path.abspath(root)
        with open(os.path.join(root, CACHE_META)) as f:
            meta = json.load(f)
        if meta.get("format") != CACHE_FORMAT:
            raise ValueError(f"{root}: not a {CACHE_FORMAT} directory")
        return cls(root, meta["classes"], meta["size"], meta["counts"], meta)

    def counts(self, split: str) -> dict[str, int]:
        return self.counts_by_split[split]

    def summary(self) -> str:
        from raymotion.data.folders import counts_table

        return counts_table(f"data root: {self.root} (Parquet cache at {self.size}px of {self.meta['source']})",
                            self.classes, self.counts_by_split)

    def split_dir(self, split: str) -> str:
        return os.path.join(self.root, split)

    def files(self, split: str) -> list[str]:
        d = self.split_dir(split)
        return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".parquet"))

    def read(self, split: str) -> ray.data.Dataset:
        """One read task and one block per file: ``read_parquet`` plans a split's shards into as few read
        tasks and blocks as it likes, which delays the first row and leaves the per-epoch block-order
        shuffle too few blocks to shuffle."""
        return ray.data.from_arrow_refs([_read_parquet_file.remote(path) for path in self.files(split)])

    def arrays(self, split: str, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """All images (uint8 NHWC, in uid order, resized to ``size`` if given) and labels of a split."""
        images, labels, _ = self.arrays_with_uids(split, size)
        return images, labels

    def arrays_with_uids(self, split: str, size: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``arrays`` and each image's uid (the pipeline's row id)."""
        from PIL import Image

        from raymotion.data.transforms import resize_rgb

        table = pq.read_table(self.split_dir(split), columns=["image", "label", "uid"])
        order = np.argsort(table.column("uid").to_numpy())
        column = table.column("image").combine_chunks()
        # Ray's tensor extension type when ray.data registered it, else its plain list storage.
        storage = column.storage if isinstance(column, pa.ExtensionArray) else column
        flat = np.asarray(storage.values, np.uint8)
        images = flat.reshape(len(table), self.size, self.size, 3)[order]
        if size and size != self.size:
            images = np.stack([resize_rgb(Image.fromarray(img), size) for img in images])
        uids = table.column("uid").to_numpy()[order].astype(np.int64)
        return images, table.column("label").to_numpy()[order].astype(np.int64), uids


def write_cache_meta(out: str, *, classes: list[str], size: int, counts: dict[str, dict[str, int]],
                     source: str, skipped: dict[str, Any]) -> None:
    meta = {"format": CACHE_FORMAT, "classes": classes, "size": size, "counts": counts, "source": source,
            "skipped": skipped}
    with open(os.path.join(out, CACHE_META), "w") as f:
        json.dump(meta, f, indent=2)
