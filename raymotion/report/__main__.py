"""``python -m raymotion.report RUN_DIR [--out DIR]``: write the run's HTML report and print its path."""

from __future__ import annotations

import argparse
import os
import sys

from raymotion import rundir
from raymotion.report import write_report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m raymotion.report", description=__doc__)
    p.add_argument("run_dir", help="a run directory holding manifest.json (and predictions/val.npz)")
    p.add_argument("--out", help="output directory (default RUN_DIR/report)")
    args = p.parse_args(argv)
    if not os.path.isfile(os.path.join(args.run_dir, rundir.MANIFEST)):
        sys.exit(f"error: {args.run_dir}/{rundir.MANIFEST} not found")
    try:
        print(write_report(args.run_dir, args.out))
    except rundir.UnsupportedFormat as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
