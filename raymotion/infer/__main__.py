"""``python -m raymotion.infer RUN_DIR INPUT... --out PATH``: a trained run over many images, on Ray Data.

    python -m raymotion.infer runs/latest photos/ --out faces.parquet          # every face of every photo
    python -m raymotion.infer runs/latest ../shared/data/emotions/val --crops --out crops.csv
    python -m raymotion.infer runs/latest table.parquet --column image --out faces.jsonl
    python -m raymotion.infer runs/latest clip.mp4 --fps 2 --summary --out clip.parquet   # + clip.timeline.{csv,png}

As a job on a cluster (the inputs and --out on paths every node sees):

    ray job submit --address http://HEAD:8265 --working-dir . -- python -m raymotion.infer /shared/runs/r \\
        /shared/photos --out /shared/faces.parquet
"""

from __future__ import annotations

import argparse
import os
import sys

from raymotion.config import ConfigError
from raymotion.console import table as text_table
from raymotion.infer.job import InferConfig, InferResult, run_inference


def parse_args(argv: list[str] | None = None) -> tuple[InferConfig, str | None]:
    p = argparse.ArgumentParser(prog="python -m raymotion.infer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (manifest.json, models/)")
    p.add_argument("inputs", metavar="INPUT", nargs="+",
                   help="image files, folders (searched at any depth), Parquet files with an image-bytes column, "
                        "videos (mp4, webm, avi, mov, mkv)")
    p.add_argument("--out", required=True, help="the table to write: .parquet, .csv or .jsonl")
    p.add_argument("--crops", action="store_true", help="each image is one face crop (as POST /predict)")
    p.add_argument("--fps", type=float, default=InferConfig.fps,
                   help="video frames sampled per second (default %(default)s; 0: every frame)")
    p.add_argument("--column", help="Parquet: the image-bytes column (default: the one binary column)")
    p.add_argument("--summary", action="store_true", help="print each emotion's share, overall and per tracked face")
    p.add_argument("--batch-size", type=int, default=InferConfig.batch_size, help="faces per model call")
    p.add_argument("--actors", type=int, default=0, help="model actors (default: one per GPU, else from the CPUs)")
    p.add_argument("--actor-cpus", type=float, default=InferConfig.actor_cpus, help="CPUs each model actor reserves")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime threads per member (default: the actor's CPUs)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=InferConfig.device)
    p.add_argument("--segment-s", type=float, default=InferConfig.segment_s, help="video seconds per task")
    p.add_argument("--progress-s", type=float, default=InferConfig.progress_s,
                   help="seconds between progress lines (0: none)")
    p.add_argument("--address", help="Ray cluster to join; \"local\": a new local instance (default: RAY_ADDRESS, "
                                     "else the cluster of the last `ray start` when it answers, else a new local one)")
    args = p.parse_intermixed_args(argv)  # inputs may follow the options too
    missing = [path for path in [args.run_dir, *args.inputs] if not os.path.exists(path)]
    if missing:
        p.error(f"no such file or folder: {', '.join(missing)}")
    try:
        cfg = InferConfig(run_dir=args.run_dir, inputs=tuple(args.inputs), out=args.out, crops=args.crops,
                          fps=args.fps or None, column=args.column, summary=args.summary,
                          batch_size=args.batch_size, actors=args.actors, actor_cpus=args.actor_cpus,
                          threads=args.threads, device=args.device, segment_s=args.segment_s,
                          progress_s=args.progress_s)
    except ConfigError as err:
        p.error(str(err))
    return cfg, args.address


def print_summary(result: InferResult) -> None:
    classes = list(result.shares)
    rows = [("all faces", *(f"{result.shares[c]:.1%}" for c in classes))]
    rows += [(key, *(f"{s[c]:.1%}" for c in classes)) for key, s in sorted(result.track_shares.items())]
    print(text_table(rows, ["faces", *classes], "<" + ">" * len(classes)))


def main(argv: list[str] | None = None) -> int:
    cfg, address = parse_args(argv)
    from raymotion.runtime import init_ray

    init_ray(address)
    try:
        result = run_inference(cfg)
    except FileNotFoundError as err:
        print(f"infer: {err}", file=sys.stderr)
        return 2
    for source, error in result.first_errors:
        print(f"  error: {source}: {error}", file=sys.stderr)
    if result.errors > len(result.first_errors):
        print(f"  ... {result.errors - len(result.first_errors)} more: the rows whose error is set", file=sys.stderr)
    if result.timeline:
        print(f"timeline: {result.timeline}, {result.plot}")
    if cfg.summary:
        print_summary(result)
    print(result.closing_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
