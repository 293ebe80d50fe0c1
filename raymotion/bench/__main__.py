"""``python -m raymotion.bench data [--data ROOT]``: Ray Data + Ray Train vs a plain DataLoader."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

from raymotion.data import index_image_folders, resolve_data_root
from raymotion.models import get_model_spec


def run_data(args: argparse.Namespace) -> dict:
    from raymotion.data.__main__ import prepare_parquet
    from raymotion.data.parquet import ParquetCache
    from raymotion.data.pipeline import load_cached
    from raymotion.bench.data import bench_dataloader, bench_pipeline_alone, bench_ray
    from raymotion.runtime import init_ray

    root, how = resolve_data_root(args.data, os.path.abspath("runs/synthetic-faces"))
    folders = index_image_folders(root)
    print(f"data: {root} ({how}); model {args.model} at {args.size}px, batch {args.batch_size}, "
          f"{args.steps} steps per round ({args.warmup} warm-up), {args.rounds} rounds of (ray, dataloader)", flush=True)
    init_ray(args.address)
    spec = get_model_spec(args.model)
    cache_started = time.perf_counter()
    cached, _ = load_cached(folders, args.size)
    decode_once_s = time.perf_counter() - cache_started
    rounds = []
    for i in range(args.rounds):
        ray_r = bench_ray(folders, cached, args.size, args.model, args.batch_size, args.steps, args.warmup)
        dl_r = bench_dataloader(folders, args.size, args.model, args.batch_size, args.steps, args.warmup,
                                args.data_workers)
        rounds.append({"ray": ray_r, "dataloader": dl_r})
        print(f"round {i + 1}: ray {ray_r['images_per_s']:.1f} img/s (first batch {ray_r['startup_s']:.1f}s), "
              f"dataloader {dl_r['images_per_s']:.1f} img/s (first batch {dl_r['startup_s']:.1f}s)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepare_parquet(root, tmp, args.size)
        alone = bench_pipeline_alone(folders, ParquetCache.open(tmp), args.size, spec.mean, spec.std)
    med = lambda key, field: statistics.median(r[key][field] for r in rounds)  # noqa: E731
    summary = {
        "ray_images_per_s": med("ray", "images_per_s"), "dataloader_images_per_s": med("dataloader", "images_per_s"),
        "ray_startup_s": med("ray", "startup_s"), "dataloader_startup_s": med("dataloader", "startup_s"),
        "ray_decode_once_s": decode_once_s,
        "pipeline_folders_images_per_s": alone["folders"], "pipeline_parquet_images_per_s": alone["parquet"],
    }
    summary["ratio_ray_over_dataloader"] = summary["ray_images_per_s"] / summary["dataloader_images_per_s"]
    summary["ratio_parquet_over_folders"] = alone["parquet"] / alone["folders"]
    rows = [("Ray Data + Ray Train, steady img/s", summary["ray_images_per_s"]),
            ("DataLoader, steady img/s", summary["dataloader_images_per_s"]),
            ("ratio Ray / DataLoader", summary["ratio_ray_over_dataloader"]),
            ("Ray start-up to first batch, s (trainer)", summary["ray_startup_s"]),
            ("Ray decode-once (materialize), s", decode_once_s),
            ("DataLoader start-up to first batch, s", summary["dataloader_startup_s"]),
            ("pipeline alone, folders img/s", alone["folders"]),
            ("pipeline alone, Parquet img/s", alone["parquet"]),
            ("ratio Parquet / folders", summary["ratio_parquet_over_folders"])]
    print("\n" + "\n".join(f"{name:<45} {value:>10.2f}" for name, value in rows))
    return {"benchmark": "data", "args": vars(args), "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "rounds": rounds, "summary": summary}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m raymotion.bench")
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="Ray Data + Ray Train vs DataLoader; folders vs Parquet")
    data.add_argument("--data")
    data.add_argument("--model", default="mobilenet_v2")
    data.add_argument("--size", type=int, default=96)
    data.add_argument("--batch-size", type=int, default=32)
    data.add_argument("--steps", type=int, default=60)
    data.add_argument("--warmup", type=int, default=8)
    data.add_argument("--rounds", type=int, default=2)
    data.add_argument("--data-workers", type=int, default=1, help="DataLoader workers (= CPUs Ray Data gets here)")
    data.add_argument("--address")
    data.add_argument("--out", default="runs/bench")
    args = parser.parse_args(argv)
    result = run_data(args)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"data-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
