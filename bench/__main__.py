"""``python -m bench data [--data ROOT]``: Ray Data + Ray Train vs a plain DataLoader.
``python -m bench models RUN_DIR``: torch vs ONNX fp32 vs ONNX int8 per model and ensemble.
``python -m bench serve RUN_DIR``: the served ensemble over HTTP vs in-process, and under faults.
``python -m bench cluster --out DIR``: a 3-node Ray cluster on this machine: Train workers and Serve
replicas on distinct nodes, a worker node removed mid-trial and under load (bench/cluster.py).
``python -m bench gpu RUN_DIR``: what a run trained on and what its served files run on (gpu_check.sh).
``python -m bench ensemble RUN_DIR [RUN_DIR ...]``: the two pooling rules on the same members, out of fold.
``python -m bench train-step``: training steps per second in float32, channels_last and bf16 autocast.
``python -m bench distill RUN_DIR --model vit``: a distilled member again, stored soft labels vs online teachers.
``python -m bench peer RUN_DIR``: the fer library's own model beside the run's ensemble, per source (make peer).
``python -m bench large-photo RUN_DIR``: the Serve ingress's peak memory rise per 12/108/200 MP photo.
``python -m bench camera RUN_DIR``: the page's live camera in headless Chromium: answered frames/s, drops, latency.
``python -m bench infer RUN_DIR``: raymotion.infer on Ray Data vs a plain single-process loop, crops and photos."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

from raymotion import rundir
from raymotion.console import table as text_table
from bench import camera, infer, large_photo, peer
from raymotion.data import index_image_folders, resolve_data_root


def write_result(result: dict, path: str, default=None) -> None:
    """A benchmark's JSON at ``path`` (its folder made), and where it went."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2, default=default)
    print(f"\nwrote {path}")


def run_data(args: argparse.Namespace) -> dict:
    from raymotion.data.__main__ import prepare_parquet
    from raymotion.data.parquet import ParquetCache
    from raymotion.data.pipeline import load_cached
    from bench.data import bench_dataloader, bench_pipeline_alone, bench_ray
    from raymotion.runtime import init_ray

    root, how = resolve_data_root(args.data, os.path.abspath("runs/synthetic-faces"))
    folders = index_image_folders(root)
    print(f"data: {root} ({how}); model {args.model} at {args.size}px, batch {args.batch_size}, "
          f"{args.steps} steps per round ({args.warmup} warm-up), {args.rounds} rounds of (ray, dataloader)", flush=True)
    init_ray(args.address)
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
        alone = bench_pipeline_alone(folders, ParquetCache.open(tmp), args.size, repeats=args.passes)
    med = lambda key, field: statistics.median(r[key][field] for r in rounds)  # noqa: E731
    summary = {
        "ray_images_per_s": med("ray", "images_per_s"), "dataloader_images_per_s": med("dataloader", "images_per_s"),
        "ray_startup_s": med("ray", "startup_s"), "dataloader_startup_s": med("dataloader", "startup_s"),
        "ray_decode_once_s": decode_once_s,
        "pipeline_folders_images_per_s": alone["folders"], "pipeline_parquet_images_per_s": alone["parquet"],
        "source_folders_images_per_s": alone["stages"]["folders"]["source_images_per_s"],
        "source_parquet_images_per_s": alone["stages"]["parquet"]["source_images_per_s"],
        "augment_images_per_s": statistics.mean(alone["stages"][k]["augment_images_per_s"] for k in ("folders", "parquet")),
    }
    summary["ratio_ray_over_dataloader"] = summary["ray_images_per_s"] / summary["dataloader_images_per_s"]
    summary["ratio_parquet_over_folders"] = alone["parquet"] / alone["folders"]
    summary["ratio_source_parquet_over_folders"] = (summary["source_parquet_images_per_s"]
                                                    / summary["source_folders_images_per_s"])
    rows = [("Ray Data + Ray Train, steady img/s", summary["ray_images_per_s"]),
            ("DataLoader, steady img/s", summary["dataloader_images_per_s"]),
            ("ratio Ray / DataLoader", summary["ratio_ray_over_dataloader"]),
            ("Ray start-up to first batch, s (trainer)", summary["ray_startup_s"]),
            ("Ray decode-once (materialize), s", decode_once_s),
            ("DataLoader start-up to first batch, s", summary["dataloader_startup_s"]),
            ("pipeline alone (decode once + 1 epoch), folders img/s", alone["folders"]),
            ("pipeline alone (read once + 1 epoch), Parquet img/s", alone["parquet"]),
            ("ratio Parquet / folders", summary["ratio_parquet_over_folders"]),
            ("  source stage: JPEG decode+resize img/s", summary["source_folders_images_per_s"]),
            ("  source stage: Parquet read img/s", summary["source_parquet_images_per_s"]),
            ("  source stage ratio Parquet / folders", summary["ratio_source_parquet_over_folders"]),
            ("  augment stage img/s, uint8 out (mean of both)", summary["augment_images_per_s"])]
    print("\n" + text_table([(name, f"{value:.2f}") for name, value in rows], ["figure", "value"], "<>"))
    return {"benchmark": "data", "args": vars(args), "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "rounds": rounds, "pipeline_alone_passes": alone["passes"], "summary": summary}


def run_models(args: argparse.Namespace) -> None:
    from bench.models import BenchConfig, format_table, int8_table, plot, run_models_bench

    cfg = BenchConfig(run_dir=args.run_dir, data=args.data, iters=args.iters, batch_size=args.batch_size,
                      threads=args.threads, max_seconds=args.max_seconds, tolerance_points=args.tolerance,
                      max_latency_ratio=args.int8_max_latency_ratio,
                      int8_range_images=args.int8_range_images, rounds=args.rounds)
    result = run_models_bench(cfg, log=lambda line: print(line, flush=True))
    table = format_table(result)
    candidates = int8_table(result)
    result["table"], result["int8_table"] = table, candidates
    print("\n" + table)
    if candidates:
        print("\nint8 candidates (batch-1 p50 inside choose_int8, one model at a time):\n" + candidates)
    path = args.json or os.path.join(args.run_dir, "bench", f"models-{time.strftime('%Y%m%d-%H%M%S')}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    result["chart"] = plot(result, os.path.splitext(path)[0] + ".png")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\nwrote {path} and {result['chart']}")


def val_jpegs(root: str, n: int) -> list[bytes]:
    """``n`` val images of ``root`` spread over its classes, as the bytes a client would send."""
    paths = list(index_image_folders(root).val.paths)
    picked = paths[:: max(1, len(paths) // n)][:n]
    out = []
    for path in picked:
        with open(path, "rb") as f:
            out.append(f.read())
    return out


def run_serve(args: argparse.Namespace) -> None:
    import yaml

    from bench.serve import ServeBenchConfig, run_serve_bench, table
    from raymotion.rundir import read_manifest

    root = args.data or read_manifest(args.run_dir).data.roots[0]
    with open(args.config) as f:
        (app,) = yaml.safe_load(f)["applications"]
    app_args = {k: v for k, v in app["args"].items() if k != "run_dir"}
    cfg = ServeBenchConfig(run_dir=os.path.abspath(args.run_dir), images=val_jpegs(root, 64),
                           concurrency=tuple(int(c) for c in args.concurrency.split(",")), seconds=args.seconds,
                           max_requests=args.max_requests, batch_images=args.batch_images,
                           inprocess_seconds=args.inprocess_seconds, fault_seconds=args.fault_seconds,
                           fault_concurrency=args.fault_concurrency,
                           fault_replicas=tuple(int(r) for r in args.fault_replicas.split(",") if r.strip()), app_args=app_args,
                           throughput_optimized=args.throughput_optimized, floor=args.floor)
    result = run_serve_bench(cfg, log=lambda line: print(line, flush=True))
    result["table"] = table(result)
    print("\n" + result["table"])
    path = args.json or os.path.join(args.run_dir, "bench", f"serve-{time.strftime('%Y%m%d-%H%M%S')}.json")
    write_result(result, path)


def add_serve_arguments(sub) -> None:
    p = sub.add_parser("serve", help="the served ensemble over HTTP vs in-process; a replica killed under load")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "serve", "config.yaml"),
                   help="the Serve config whose app args are used (default serve/config.yaml)")
    p.add_argument("--data", help="data root whose val images are sent (default: the manifest's)")
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated client counts")
    p.add_argument("--seconds", type=float, default=15.0, help="per HTTP phase")
    p.add_argument("--max-requests", type=int, default=3000, help="per HTTP phase")
    p.add_argument("--batch-images", type=int, default=16, help="images per /predict/batch request and in-process batch")
    p.add_argument("--inprocess-seconds", type=float, default=10.0)
    p.add_argument("--fault-seconds", type=float, default=30.0, help="per fault run")
    p.add_argument("--fault-replicas", default="2,1", help="comma-separated replicas per model, a fault run each")
    p.add_argument("--fault-concurrency", type=int, default=16)
    p.add_argument("--throughput-optimized", action=argparse.BooleanOptionalAction, default=True,
                   help="Ray's RAY_SERVE_THROUGHPUT_OPTIMIZED for the benchmark's own Ray (as make ray-up starts the head)")
    p.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure Serve's own cost: the app's shape with models that do no work")
    p.add_argument("--json", help="output JSON (default RUN_DIR/bench/serve-<time>.json)")


def add_cluster_arguments(sub) -> None:
    p = sub.add_parser("cluster", help="a 3-node cluster on this machine: placements, a node lost mid-trial and under load")
    p.add_argument("--out", default=None, help="run directory (checkpoints, run, cluster.json; default runs/cluster-<time>)")
    p.add_argument("--epochs", type=int, default=4, help="per trial (the node is removed after the first)")
    p.add_argument("--serve", action=argparse.BooleanOptionalAction, default=True,
                   help="export the run and serve it across the nodes, then remove a replica's node under load")


def run_cluster(args: argparse.Namespace) -> None:
    from bench.cluster import ClusterCheckConfig, run_cluster_check
    from raymotion.console import filter_terminal

    os.environ.pop("RAY_ADDRESS", None)  # its own cluster, never one already running
    out = os.path.abspath(args.out or os.path.join("runs", f"cluster-{time.strftime('%Y%m%d-%H%M%S')}"))
    filter_terminal(rundir.log_path(out, "cluster.log"))  # Ray's known noise off the terminal (raymotion.console.filter_terminal)
    run_cluster_check(ClusterCheckConfig(out=out, epochs=args.epochs, serve=args.serve),
                      log=lambda line: print(line, flush=True))
    print(f"\nwrote {os.path.join(out, 'cluster.json')}")


def run_gpu(args: argparse.Namespace) -> None:
    import sys

    from bench.gpu import describe, environment, run_usage, used_gpu

    env, usage = environment(), run_usage(os.path.abspath(args.run_dir))
    print(describe(env, usage))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, **usage}, f, indent=2)
    missing = used_gpu(usage)
    if args.require_gpu and missing:
        sys.exit("not on the GPU:\n  " + "\n  ".join(missing))


def run_tune(args: argparse.Namespace) -> None:
    from bench.tune import TuneBenchConfig, run_tune_bench, table

    root, _ = resolve_data_root(args.data, os.path.abspath("runs/synthetic-faces"))
    cfg = TuneBenchConfig(data_root=root, model=args.model, input_size=args.size, epochs=args.epochs,
                          trials=args.trials, seeds=tuple(int(s) for s in args.seeds.split(",")),
                          max_batches_per_epoch=args.max_batches, grace_period=args.grace_period,
                          reduction_factor=args.reduction_factor)
    result = run_tune_bench(cfg, log=lambda line: print(line, flush=True))
    result["table"] = table(result)
    print("\n" + result["table"])
    path = args.json or os.path.join("runs", "bench", f"tune-{time.strftime('%Y%m%d-%H%M%S')}.json")
    write_result(result, path, default=str)


def run_ensemble(args: argparse.Namespace) -> None:
    from bench.ensemble import EnsembleBenchConfig, run_ensemble_bench, table

    result = run_ensemble_bench(EnsembleBenchConfig(run_dirs=tuple(args.run_dirs), min_members=args.min_members,
                                                    max_members=args.max_members))
    result["table"] = table(result)
    print(result["table"])
    path = args.json or os.path.join("runs", "bench", f"ensemble-{time.strftime('%Y%m%d-%H%M%S')}.json")
    write_result(result, path)


def run_train_step(args: argparse.Namespace) -> None:
    from bench.train_step import TrainStepBenchConfig, run_train_step_bench, table

    cfg = TrainStepBenchConfig(models=tuple(args.models.split(",")),
                               sizes=tuple(int(s) for s in args.sizes.split(",")) if args.sizes else (),
                               batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
                               rounds=args.rounds, threads=args.threads)
    result = run_train_step_bench(cfg, log=lambda line: print(line, flush=True))
    result["table"] = table(result)
    print("\n" + result["table"])
    path = args.json or os.path.join("runs", "bench", f"train-step-{time.strftime('%Y%m%d-%H%M%S')}.json")
    write_result(result, path)


def run_distill(args: argparse.Namespace) -> None:
    from bench.distill import DistillBenchConfig, run_distill_bench, table
    from raymotion.runtime import init_ray

    cfg = DistillBenchConfig(run_dir=args.run_dir, model=args.model, epochs=args.epochs,
                             variants=tuple(v.strip() for v in args.variants.split(",") if v.strip()), data=args.data)
    init_ray(args.address)
    result = run_distill_bench(cfg, log=lambda line: print(line, flush=True))
    result["table"] = table(result)
    print("\n" + result["table"])
    write_result(result, args.json or os.path.join("runs", "bench", f"distill-{time.strftime('%Y%m%d-%H%M%S')}.json"))


def add_distill_arguments(sub) -> None:
    p = sub.add_parser("distill", help="a run's distilled member again: stored soft labels vs online teachers")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory with a distilled member")
    p.add_argument("--model", default="vit", help="the member to train again")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--variants", default="stored,online", help="comma-separated, of labels, stored, online")
    p.add_argument("--data", help="data root (default: the run's)")
    p.add_argument("--address", help="Ray address (default: a running cluster, else a local instance)")
    p.add_argument("--json", help="output JSON (default runs/bench/distill-<time>.json)")


def add_train_step_arguments(sub) -> None:
    p = sub.add_parser("train-step", help="training steps per second: float32 vs channels_last vs bf16 autocast")
    p.add_argument("--models", default="lenet,resnet34,mobilenet_v2,efficientnet_lite0,vit,hf_vit",
                   help="comma-separated registry names")
    p.add_argument("--sizes", default="", help="comma-separated input sizes per model (0 or missing: its default)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=4, help="timed steps per variant and round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (every variant once each); medians reported")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all usable cores)")
    p.add_argument("--json", help="output JSON (default runs/bench/train-step-<time>.json)")


def add_tune_arguments(sub) -> None:
    p = sub.add_parser("tune", help="Optuna + ASHA vs random search run to the end: compute to reach the best result")
    p.add_argument("--data", help="data root (default ../shared/data/emotions, else generated faces)")
    p.add_argument("--model", default="lenet")
    p.add_argument("--size", type=int, default=48, help="input size, px")
    p.add_argument("--epochs", type=int, default=6, help="max epochs per trial")
    p.add_argument("--trials", type=int, default=10, help="trials per search")
    p.add_argument("--seeds", default="0,1", help="comma-separated; each runs both searches")
    p.add_argument("--max-batches", type=int, default=20, help="batches per epoch (of 64)")
    p.add_argument("--grace-period", type=int, default=1)
    p.add_argument("--reduction-factor", type=int, default=3)
    p.add_argument("--json", help="output JSON (default runs/bench/tune-<time>.json)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    sub = parser.add_subparsers(dest="command", required=True)
    models = sub.add_parser("models", help="torch vs ONNX fp32 vs ONNX int8: latency, throughput, size, accuracy")
    models.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (manifest.json, models/, checkpoints/)")
    models.add_argument("--json", help="output JSON (default RUN_DIR/bench/models-<time>.json; PNG beside it)")
    models.add_argument("--iters", type=int, default=200, help="timed batch-1 calls per row (batch-N: iters/10)")
    models.add_argument("--batch-size", type=int, default=32)
    models.add_argument("--threads", type=int, default=0, help="torch and onnxruntime threads (0: all CPUs)")
    models.add_argument("--max-seconds", type=float, default=10.0, help="time limit of each timing loop")
    models.add_argument("--rounds", type=int, default=5, help="interleaved rounds of each timing loop")
    models.add_argument("--data", help="data root for val metrics and int8 calibration (default: the manifest's)")
    models.add_argument("--tolerance", type=float, default=0.5, help="int8 val accuracy tolerance, points")
    models.add_argument("--int8-max-latency-ratio", type=float, default=1.0,
                        help="serve int8 only when its batch-1 latency is at most this x fp32 (inf: any, 0: never)")
    models.add_argument("--int8-range-images", type=int, default=300)
    data = sub.add_parser("data", help="Ray Data + Ray Train vs DataLoader; folders vs Parquet")
    data.add_argument("--data")
    data.add_argument("--model", default="mobilenet_v2")
    data.add_argument("--size", type=int, default=96)
    data.add_argument("--batch-size", type=int, default=32)
    data.add_argument("--steps", type=int, default=100)
    data.add_argument("--warmup", type=int, default=8)
    data.add_argument("--rounds", type=int, default=3, help="alternating (ray, dataloader) rounds; medians reported")
    data.add_argument("--data-workers", type=int, default=1, help="DataLoader workers (= CPUs Ray Data gets here)")
    data.add_argument("--passes", type=int, default=3, help="pipeline-alone passes per source (alternating); medians reported")
    data.add_argument("--address")
    data.add_argument("--out", default="runs/bench")
    add_serve_arguments(sub)
    add_cluster_arguments(sub)
    add_tune_arguments(sub)
    add_train_step_arguments(sub)
    add_distill_arguments(sub)
    peer.add_arguments(sub)
    large_photo.add_arguments(sub)
    camera.add_arguments(sub)
    infer.add_arguments(sub)
    ens = sub.add_parser("ensemble", help="linear vs log-linear pooling of the runs' members, out of fold (no model runs)")
    ens.add_argument("run_dirs", metavar="RUN_DIR", nargs="+", help="run directories scored on the same val set")
    ens.add_argument("--min-members", type=int, default=2, help="smallest member set tried")
    ens.add_argument("--max-members", type=int, default=3, help="largest member set tried (every set in between)")
    ens.add_argument("--json", help="output JSON (default runs/bench/ensemble-<time>.json)")
    gpu = sub.add_parser("gpu", help="what a run trained on (device, autocast, ...) and its served files' providers")
    gpu.add_argument("run_dir", metavar="RUN_DIR")
    gpu.add_argument("--require-gpu", action="store_true", help="exit 1 unless training and serving used CUDA")
    gpu.add_argument("--json", help="also write it as JSON")
    args = parser.parse_args(argv)
    commands = {"gpu": run_gpu, "cluster": run_cluster, "tune": run_tune, "models": run_models, "serve": run_serve,
                "ensemble": run_ensemble, "train-step": run_train_step, "distill": run_distill,
                "peer": lambda a: peer.command(a, write_result),
                "large-photo": lambda a: large_photo.command(a, write_result),
                "camera": lambda a: camera.command(a, write_result),
                "infer": lambda a: infer.command(a, write_result)}
    if args.command in commands:
        commands[args.command](args)
        return
    write_result(run_data(args), os.path.join(args.out, f"data-{time.strftime('%Y%m%d-%H%M%S')}.json"))


if __name__ == "__main__":
    main()
