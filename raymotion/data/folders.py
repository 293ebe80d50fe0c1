"""Index a data root laid out as ``{train,val}/<class>/<image>``: the label is the folder name.

Validation happens here, in the driver, before Ray starts anything heavy, so that a wrong root fails
at once with one clear message instead of later inside a worker.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})
SPLITS = ("train", "val")


class DataError(ValueError):
    """The data root cannot be used; the message says why."""


@dataclass(frozen=True)
class Split:
    paths: tuple[str, ...]
    labels: tuple[int, ...]
    # Several sources decoded as one (data.sources.Sources.folder_split): each row's run-wide uid and its
    # source's index. Empty: uid = the row's index, source 0.
    uids: tuple[int, ...] = ()
    sources: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.paths)

    def counts(self, classes: list[str]) -> dict[str, int]:
        counter = Counter(self.labels)
        return {name: counter.get(i, 0) for i, name in enumerate(classes)}


@dataclass(frozen=True)
class ImageFolders:
    root: str
    classes: list[str]  # sorted folder names; index = label id
    train: Split
    val: Split

    def split(self, name: str) -> Split:
        return {"train": self.train, "val": self.val}[name]

    def counts(self, split: str) -> dict[str, int]:
        return self.split(split).counts(self.classes)

    def summary(self) -> str:
        return counts_table(f"data root: {self.root} (class folders)", self.classes,
                            {s: self.counts(s) for s in SPLITS})

    def arrays(self, split: str, size: int):
        """Readable images of a split decoded in-process (uint8 NHWC at ``size``) and their labels."""
        images, labels, _ = self.arrays_with_uids(split, size)
        return images, labels

    def arrays_with_uids(self, split: str, size: int):
        """``arrays`` and each image's uid (its index in the split's file list: the pipeline's "uid")."""
        import numpy as np

        from raymotion.data.transforms import load_images

        images, kept = load_images(list(self.split(split).paths), size)
        return images, np.asarray(self.split(split).labels, np.int64)[kept], kept


def counts_table(title: str, classes: list[str], counts: dict[str, dict[str, int]]) -> str:
    lines = [title, "split  " + " ".join(f"{c:>8}" for c in classes) + "    total"]
    for name, per_class in counts.items():
        lines.append(f"{name:<6} " + " ".join(f"{per_class.get(c, 0):>8}" for c in classes)
                     + f" {sum(per_class.values()):>8}")
    return "\n".join(lines)


def _list_class_images(split_dir: Path) -> dict[str, list[str]]:
    images: dict[str, list[str]] = {}
    for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        files = sorted(
            os.path.join(entry.path, f.name)
            for f in os.scandir(entry.path)
            if f.is_file() and os.path.splitext(f.name)[1].lower() in IMAGE_EXTENSIONS
        )
        images[entry.name] = files
    return images


def select_classes(folders: ImageFolders, classes: list[str]) -> ImageFolders:
    """``folders`` narrowed to ``classes`` (label ids renumbered in their sorted order); a class it lacks is
    refused by name."""
    missing = sorted(set(classes) - set(folders.classes))
    if missing:
        raise DataError(f"{folders.root} has no class folder(s) {', '.join(missing)} (it has {', '.join(folders.classes)})")
    kept = sorted(classes)
    new_label = {folders.classes.index(name): i for i, name in enumerate(kept)}

    def narrowed(split: Split) -> Split:
        rows = [(p, new_label[label]) for p, label in zip(split.paths, split.labels) if label in new_label]
        return Split(tuple(p for p, _ in rows), tuple(label for _, label in rows))

    return ImageFolders(folders.root, kept, narrowed(folders.train), narrowed(folders.val))


def index_image_folders(root: str | os.PathLike) -> ImageFolders:
    """List every image of ``root/train`` and ``root/val``; class order is the sorted train folder names."""
    root_path = Path(root).expanduser().resolve()
    if not root_path.is_dir():
        raise DataError(f"data root {root_path} does not exist or is not a directory")
    missing = [s for s in SPLITS if not (root_path / s).is_dir()]
    if missing:
        raise DataError(f"data root {root_path} has no {' or '.join(s + '/' for s in missing)} folder "
                        f"(expected {root_path}/{{train,val}}/<class>/<image>)")

    per_split = {s: _list_class_images(root_path / s) for s in SPLITS}
    classes = sorted(per_split["train"])
    if len(classes) < 2:
        raise DataError(f"{root_path}/train has {len(classes)} class folder(s); at least two are needed")
    empty = [f"{s}/{c}" for s in SPLITS for c, files in per_split[s].items() if not files]
    if empty:
        raise DataError(f"empty class folder(s) under {root_path}: {', '.join(empty)}")
    extra = sorted(set(per_split["val"]) - set(classes))
    if extra:
        raise DataError(f"val/ has classes that train/ lacks: {', '.join(extra)}")

    def to_split(class_files: dict[str, list[str]]) -> Split:
        paths, labels = [], []
        for label, name in enumerate(classes):
            for path in class_files.get(name, []):
                paths.append(path)
                labels.append(label)
        return Split(tuple(paths), tuple(labels))

    return ImageFolders(str(root_path), classes, to_split(per_split["train"]), to_split(per_split["val"]))
