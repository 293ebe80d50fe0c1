"""``python -m raymotion.tune``: the main job — tune each model, export the best, optionally serve.

    python -m raymotion.tune --preset quick --models lenet,mobilenet_v2 [--data ROOT] [--serve]

This entry point is the one place that composes the stages (data -> train -> tune -> export -> serve);
the stage modules themselves never import a later stage.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

from raymotion.config import PRESETS, ExportConfig, TrainConfig, preset_overrides
from raymotion.data import DataError, open_data, resolve_data_root
from raymotion.data.pipeline import load_cached
from raymotion.export.bundle import build_run_bundle, results_table
from raymotion.report import write_report
from raymotion.runtime import init_ray
from raymotion.train.trainer import input_size_of
from raymotion.tune.experiment import copy_checkpoint, tune_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m raymotion.tune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="root with train/ and val/ class folders; default ../shared/data/emotions, "
                                  "else a generated face data set")
    p.add_argument("--models", help="comma-separated registry names (default: the preset's models)")
    p.add_argument("--preset", default="quick", choices=sorted(PRESETS))
    p.add_argument("--out", help="run directory (default runs/<timestamp>)")
    p.add_argument("--num-samples", type=int, help="trials per model (overrides the preset)")
    p.add_argument("--epochs", type=int, help="max epochs per trial (overrides the preset)")
    p.add_argument("--spaces", help="directory of <model>.yaml search spaces (default tune_spaces/)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: GPU workers + AMP + CUDA provider")
    p.add_argument("--workers", type=int, default=1, help="data-parallel Train workers per trial")
    p.add_argument("--address", help="Ray address (default: a running cluster, else a local instance)")
    ExportConfig.add_arguments(p)
    p.add_argument("--serve", action="store_true", help="serve the run over HTTP when done")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    return p.parse_args(argv)


def tune_and_export(args: argparse.Namespace) -> tuple[str, dict, bool]:
    """Returns the run directory, its manifest, and whether this process started its own Ray."""
    root, how = resolve_data_root(args.data, os.path.abspath("runs/synthetic-faces"))
    source = open_data(root)  # fails fast, before Ray starts, on a bad root
    print(f"data: {root} ({how})\n{source.summary()}", flush=True)
    class_counts = [source.counts("train")[c] for c in source.classes]
    preset = PRESETS[args.preset]
    # A copy: the presets are module-level defaults shared by every call in this process.
    settings = dataclasses.replace(preset.tune, seed=args.seed)
    run_dir = os.path.abspath(args.out or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S")))
    os.makedirs(run_dir, exist_ok=True)
    print(f"run directory: {run_dir}", flush=True)

    owns_ray = init_ray(args.address)
    started = time.perf_counter()
    checkpoints, extra, cached_by_size = {}, {}, {}
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else list(preset.models)
    for model in models:
        model_settings = dataclasses.replace(
            settings, num_samples=args.num_samples or preset.samples.get(model, preset.tune.num_samples))
        base = TrainConfig(model=model, seed=args.seed, num_workers=args.workers,
                           use_gpu=args.device == "cuda", amp=args.device == "cuda")
        base = base.replace(**preset_overrides(preset, model))
        if args.epochs:
            base = base.replace(epochs=args.epochs)
        base = base.replace(input_size=input_size_of(base))
        if base.input_size not in cached_by_size:
            cached_by_size[base.input_size], report = load_cached(source, base.input_size)
            print(f"decoded at {base.input_size}px: {report.summary()}", flush=True)
        print(f"tuning {model}: {model_settings.num_samples} trials x <= {base.epochs} epochs at {base.input_size}px; "
              f"augmentations (before the search space varies them): {base.augmentations()}; "
              f"class weighting: {base.class_weighting}", flush=True)
        result = tune_model(base, classes=source.classes, class_counts=class_counts,
                            cached=cached_by_size[base.input_size],
                            settings=model_settings, storage_path=os.path.join(run_dir, "tune"), spaces_dir=args.spaces)
        checkpoints[model] = copy_checkpoint(result, os.path.join(run_dir, "checkpoints", model))
        extra[model] = {"tune": {"trials": result.trials, "stopped_early": result.stopped_early,
                                 "failed": result.failed, "seconds": round(result.seconds, 1),
                                 "history": result.history}}
        print(f"  {model}: best val_macro_f1={result.metrics.get('val_macro_f1', float('nan')):.4f} "
              f"({result.trials} trials, {result.stopped_early} stopped early, {result.seconds:.0f}s)", flush=True)
    cached_by_size.clear()

    manifest = build_run_bundle(run_dir, checkpoints, source, extra, ExportConfig.from_arguments(args))
    elapsed = time.perf_counter() - started
    report = write_report(run_dir)
    print(f"\n{results_table(manifest)}\n\ntune + export took {elapsed / 60:.1f} min; run directory: {run_dir}"
          f"\nreport: {report}", flush=True)
    return run_dir, manifest, owns_ray


def serve_run(run_dir: str, host: str, port: int, device: str, owns_ray: bool) -> None:
    from ray import serve

    from serve.app import build_ensemble

    serve.start(http_options={"host": host, "port": port})
    serve.run(build_ensemble(run_dir, device=device), name="raymotion", route_prefix="/", blocking=False)
    print(f"\nserving {run_dir} at http://{host}:{port}\n"
          f"  curl --data-binary @face.jpg -H 'Content-Type: image/jpeg' http://{host}:{port}/predict", flush=True)
    if owns_ray:  # a local Ray dies with this process: keep serving until interrupted
        print("  (Ctrl-C stops it; start `ray start --head` first to leave Serve running after this command)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            serve.shutdown()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        run_dir, _, owns_ray = tune_and_export(args)
    except DataError as err:
        sys.exit(f"error: {err}")
    if args.serve:
        serve_run(run_dir, args.host, args.port, args.device, owns_ray)


if __name__ == "__main__":
    main()
