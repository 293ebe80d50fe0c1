"""``python -m raymotion.export RUN_DIR``: rebuild a run directory's serving bundle from its checkpoints.

    python -m raymotion.export runs/<run> [--data ROOT [ROOT ...]]

Re-exports every ``RUN_DIR/checkpoints/<model>/`` to ONNX (parity checked), refits the ensemble and its
temperature on val, and rewrites ``manifest.json`` and ``predictions/val.npz``. What the tune command
recorded per model (trials, history) is carried over from the existing manifest. Use it after changing
the export or ensemble code, or to serve a subset of a run's models (``--models``), without retraining.
"""

from __future__ import annotations

import argparse
import os
import sys

from raymotion import rundir
from raymotion.config import ExportConfig
from raymotion.data import DataError, open_sources
from raymotion.export.bundle import build_run_bundle, results_table, source_table


def previous_manifest(run_dir: str) -> rundir.Manifest | None:
    """The manifest being replaced, if there is one this code reads (an older format is rebuilt from the
    checkpoints alone, which is how the refusal message says to upgrade it)."""
    if not os.path.isfile(os.path.join(run_dir, rundir.MANIFEST)):
        return None
    try:
        return rundir.read_manifest(run_dir)
    except rundir.UnsupportedFormat as err:
        print(f"warning: {err}; rebuilding it without the tune records", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m raymotion.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--data", nargs="+", metavar="ROOT",
                   help="the run's data roots, in its order (default: those its manifest records)")
    p.add_argument("--models", help="comma-separated subset of the run's checkpoints (default: all)")
    ExportConfig.add_arguments(p)
    args = p.parse_args(argv)

    run_dir = os.path.abspath(args.run_dir)
    previous = previous_manifest(run_dir)
    checkpoint_root = os.path.join(run_dir, rundir.CHECKPOINTS_DIR)
    if not os.path.isdir(checkpoint_root):
        sys.exit(f"error: {checkpoint_root} does not exist")
    names = sorted(os.listdir(checkpoint_root))
    # Keep the tune command's member order (it is the manifest's and the report's order).
    order = list(previous.models) if previous else []
    names = sorted(names, key=lambda n: order.index(n) if n in order else len(order))
    if args.models:
        wanted = [m.strip() for m in args.models.split(",") if m.strip()]
        missing = sorted(set(wanted) - set(names))
        if missing:
            sys.exit(f"error: no checkpoint for {', '.join(missing)} in {checkpoint_root}")
        names = [n for n in names if n in wanted]
    roots = args.data or (previous.data.roots if previous else None)
    if not roots:
        sys.exit("error: the manifest records no data root; pass --data")
    try:
        source = open_sources(roots, previous.classes if previous and not args.data else None)
    except DataError as err:
        sys.exit(f"error: {err}")
    # What the tune command recorded per model is carried over (export cannot recompute it).
    kept = {name: previous.models[name].tune for name in names if previous and name in previous.models}
    extra = {name: {"tune": tune} for name, tune in kept.items() if tune is not None}
    manifest = build_run_bundle(run_dir, {n: os.path.join(checkpoint_root, n) for n in names}, source, extra,
                                ExportConfig.from_arguments(args))
    print("\n\n".join(t for t in (results_table(manifest), source_table(manifest)) if t))


if __name__ == "__main__":
    main()
