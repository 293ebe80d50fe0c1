"""Make a class-stratified share of a data set's train split, as symlinks, for a learning curve.

    python scripts/subset_data.py ../shared/data/emotions 0.5 /tmp/emotions-50
    python -m raymotion.tune --preset full --models mobilenet_v2,efficientnet_lite0 --no-distill \
        --no-int8 --data /tmp/emotions-50 --out runs/lc-50 --address local

Each class keeps the same share of its train files (a seeded shuffle, then the first share), so the class
balance stays as it is; val is linked whole, so every share is scored on the same images.
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path


def link_split(source: Path, target: Path, fraction: float, seed: int) -> dict[str, int]:
    """Link ``fraction`` of each class folder of ``source`` into ``target``; the count kept per class."""
    kept = {}
    for class_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        files = sorted(p for p in class_dir.iterdir() if p.is_file())
        random.Random(seed).shuffle(files)
        share = files[: round(len(files) * fraction)]
        (target / class_dir.name).mkdir(parents=True, exist_ok=True)
        for f in share:
            (target / class_dir.name / f.name).symlink_to(f.resolve())
        kept[class_dir.name] = len(share)
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="root with train/ and val/ class folders")
    parser.add_argument("fraction", type=float, help="share of each train class kept, in (0, 1]")
    parser.add_argument("out", type=Path, help="new, empty (or absent) folder")
    parser.add_argument("--seed", type=int, default=20261205)
    args = parser.parse_args()
    if not 0 < args.fraction <= 1:
        parser.error("fraction must be in (0, 1]")
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out} is not empty")
    print("train:", link_split(args.data / "train", args.out / "train", args.fraction, args.seed))
    print("val:", link_split(args.data / "val", args.out / "val", 1.0, args.seed))


if __name__ == "__main__":
    main()
