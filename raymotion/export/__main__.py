"""``python -m raymotion.export RUN_DIR``: rebuild a run directory's serving bundle from its checkpoints.

    python -m raymotion.export runs/<run> [--data ROOT]

Re-exports every ``RUN_DIR/checkpoints/<model>/`` to ONNX (parity checked), refits the ensemble and its
temperature on val, and rewrites ``manifest.json`` and ``predictions/val.npz``. What the tune command
recorded per model (trials, history) is carried over from the existing manifest. Use it after changing
the export or ensemble code, or to serve a subset of a run's models (``--models``), without retraining.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from raymotion.config import ExportConfig
from raymotion.data import DataError, open_data
from raymotion.export.bundle import MANIFEST, build_run_bundle, results_table


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m raymotion.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--data", help="the run's data root (default: the one its manifest records)")
    p.add_argument("--models", help="comma-separated subset of the run's checkpoints (default: all)")
    ExportConfig.add_arguments(p)
    args = p.parse_args(argv)

    run_dir = os.path.abspath(args.run_dir)
    previous = {}
    if os.path.isfile(os.path.join(run_dir, MANIFEST)):
        with open(os.path.join(run_dir, MANIFEST)) as f:
            previous = json.load(f)
    checkpoint_root = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(checkpoint_root):
        sys.exit(f"error: {checkpoint_root} does not exist")
    names = sorted(os.listdir(checkpoint_root))
    # Keep the tune command's member order (it is the manifest's and the report's order).
    order = list(previous.get("models", {}))
    names = sorted(names, key=lambda n: order.index(n) if n in order else len(order))
    if args.models:
        wanted = [m.strip() for m in args.models.split(",") if m.strip()]
        missing = sorted(set(wanted) - set(names))
        if missing:
            sys.exit(f"error: no checkpoint for {', '.join(missing)} in {checkpoint_root}")
        names = [n for n in names if n in wanted]
    root = args.data or previous.get("data", {}).get("root")
    if not root:
        sys.exit("error: the manifest records no data root; pass --data")
    try:
        source = open_data(root)
    except DataError as err:
        sys.exit(f"error: {err}")
    extra = {name: {k: v for k, v in previous.get("models", {}).get(name, {}).items() if k == "tune"} for name in names}
    manifest = build_run_bundle(run_dir, {n: os.path.join(checkpoint_root, n) for n in names}, source, extra,
                                ExportConfig.from_arguments(args))
    print(results_table(manifest))


if __name__ == "__main__":
    main()
