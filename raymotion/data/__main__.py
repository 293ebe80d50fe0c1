"""Data commands:

    python -m raymotion.data synth --out DIR                          generated face data set
    python -m raymotion.data prepare --data ROOT --out DIR --size N   Parquet cache of decoded images
    python -m raymotion.data summary --data ROOT                      images per class per split
"""

from __future__ import annotations

import argparse
import os
import shutil

from raymotion.data.folders import index_image_folders
from raymotion.data.sources import is_generated, open_data
from raymotion.data.synthetic import GENERATED_MARKER, make_synthetic_faces


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m raymotion.data")
    sub = parser.add_subparsers(dest="command", required=True)
    synth = sub.add_parser("synth", help="write a generated face data set (angry/happy/sad)")
    synth.add_argument("--out", required=True)
    synth.add_argument("--train-per-class", type=int, default=300)
    synth.add_argument("--val-per-class", type=int, default=100)
    synth.add_argument("--size", type=int, default=96)
    synth.add_argument("--seed", type=int, default=0)
    prepare = sub.add_parser("prepare", help="decode + resize once into Parquet shards (a --data for every command)")
    prepare.add_argument("--data", required=True, help="class-folder root")
    prepare.add_argument("--out", required=True)
    prepare.add_argument("--size", type=int, default=96)
    prepare.add_argument("--address", help="Ray address (default: a running cluster, else a local instance)")
    summary = sub.add_parser("summary", help="images per class per split")
    summary.add_argument("--data", required=True)
    args = parser.parse_args(argv)
    if args.command == "synth":
        make_synthetic_faces(args.out, args.train_per_class, args.val_per_class, args.size, args.seed)
        print(index_image_folders(args.out).summary())
    elif args.command == "prepare":
        prepare_parquet(args.data, args.out, args.size, args.address)
    else:
        print(open_data(args.data).summary())


def prepare_parquet(root: str, out: str, size: int, address: str | None = None) -> None:
    from raymotion.data.parquet import write_cache_meta
    from raymotion.data.pipeline import DecodeReport, decode_split, task_cpus
    from raymotion.runtime import init_ray

    folders = index_image_folders(root)
    print(folders.summary(), flush=True)
    init_ray(address)
    out = os.path.abspath(out)
    report, counts = DecodeReport(), {}
    for split in ("train", "val"):
        ds, split_report = decode_split(folders.split(split), size)
        ds.write_parquet(os.path.join(out, split), ray_remote_args={"num_cpus": task_cpus()})
        report.add(split_report)
        # Counted during decoding: no second pass over the images.
        counts[split] = {c: split_report.kept_labels[i] for i, c in enumerate(folders.classes)}
    write_cache_meta(out, classes=folders.classes, size=size, counts=counts, source=folders.root,
                     skipped=report.to_dict(max_paths=50))
    if is_generated(root):  # a cache of generated faces is still generated faces
        shutil.copy(os.path.join(root, GENERATED_MARKER), os.path.join(out, GENERATED_MARKER))
    print(f"wrote {out} at {size}px: {report.summary()}")


if __name__ == "__main__":
    main()
