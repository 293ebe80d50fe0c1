"""``python -m raymotion.data synth --out DIR``: write the generated face data set."""

from __future__ import annotations

import argparse

from raymotion.data.folders import index_image_folders
from raymotion.data.synthetic import make_synthetic_faces


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m raymotion.data")
    sub = parser.add_subparsers(dest="command", required=True)
    synth = sub.add_parser("synth", help="write a generated face data set (angry/happy/sad)")
    synth.add_argument("--out", required=True)
    synth.add_argument("--train-per-class", type=int, default=300)
    synth.add_argument("--val-per-class", type=int, default=100)
    synth.add_argument("--size", type=int, default=96)
    synth.add_argument("--seed", type=int, default=0)
    summary = sub.add_parser("summary", help="images per class per split")
    summary.add_argument("--data", required=True)
    args = parser.parse_args(argv)
    if args.command == "synth":
        make_synthetic_faces(args.out, args.train_per_class, args.val_per_class, args.size, args.seed)
        print(index_image_folders(args.out).summary())
    else:
        print(index_image_folders(args.data).summary())


if __name__ == "__main__":
    main()
