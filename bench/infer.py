"""``python -m bench infer RUN_DIR [--data DIR]``: images/s of ``python -m raymotion.infer`` (Ray Data:
tasks that decode and find faces, an actor pool of Predictors) against a plain single-process loop over
the same files at the same batch size (PIL decode + onnxruntime with every core, through
raymotion.Predictor), for face crops and for whole photos, in one run; a table and JSON with the CPU flags.

- crops: val images of the data root, each one face (``--crops``; the loop: Predictor.predict_batch).
- whole photos: val crops pasted on a background, several a photo, written as JPEGs (``group_photo``);
  the loop decodes and detects a batch of photos, then classifies all their faces in one call, as
  raymotion.infer's actors do (the functions of Predictor.faces, with the crops pooled over the batch).

Both sides run in ``--rounds`` alternating rounds and the medians are reported. Ray's main figure is end
to end (planning, worker and actor start-up, writing the table), as a user running the command sees it;
beside it the time to its first rows and its rate after them, which is what a larger input approaches.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from bench.face_fit import background, paste
from raymotion.console import table as text_table


def group_photo(crops: Sequence[np.ndarray], rng: np.random.Generator, width: int = 960, height: int = 720,
                grid: tuple[int, int] = (2, 2), kind: str = "gray") -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """A width x height RGB photo with one crop pasted per grid cell (side 55-80% of the cell, anywhere
    in it), and the squares (x0, y0, x1, y1) where they went."""
    side = max(width, height)
    photo = np.ascontiguousarray(background(kind, side, rng, crops)[:height, :width])
    cols, rows = grid
    cell_w, cell_h = width // cols, height // rows
    squares = []
    for k in range(cols * rows):
        r, c = divmod(k, cols)
        face = int(min(cell_w, cell_h) * rng.uniform(0.55, 0.8))
        x0 = c * cell_w + int(rng.integers(0, cell_w - face + 1))
        y0 = r * cell_h + int(rng.integers(0, cell_h - face + 1))
        square = (x0, y0, x0 + face, y0 + face)
        paste(photo, crops[k % len(crops)], square)
        squares.append(square)
    return photo, squares


def val_files(root: str, n: int) -> list[str]:
    """``n`` val images of ``root`` spread over its classes (every one when n is 0)."""
    from raymotion.data import index_image_folders

    paths = list(index_image_folders(root).val.paths)
    return paths if not n or n >= len(paths) else paths[:: max(1, len(paths) // n)][:n]


def write_photos(crop_paths: Sequence[str], count: int, out_dir: str, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    crops = [np.asarray(Image.open(p).convert("RGB")) for p in crop_paths]
    paths = []
    for i in range(count):
        picked = [crops[j] for j in rng.choice(len(crops), 4, replace=False)]
        photo, _ = group_photo(picked, rng, kind=("gray", "noise")[i % 2])
        path = os.path.join(out_dir, f"photo_{i:04d}.jpg")
        Image.fromarray(photo).save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def plain_crops(predictor, paths: Sequence[str], batch_size: int) -> tuple[float, list[str]]:
    """Seconds and labels of the single-process loop over crop files, batch by batch."""
    t0 = time.perf_counter()
    labels = []
    for i in range(0, len(paths), batch_size):
        labels += [a["label"] for a in predictor.predict_batch(paths[i:i + batch_size])]
    return time.perf_counter() - t0, labels


def plain_photos(predictor, paths: Sequence[str], batch_size: int) -> tuple[float, list[str]]:
    """The same over whole photos: each batch of photos decoded and searched for faces, then all their
    faces classified in one call."""
    from raymotion.predict import faces as face_finder
    from raymotion.predict.predictor import face_crops, read_input

    t0 = time.perf_counter()
    labels = []
    for i in range(0, len(paths), batch_size):
        crops = []
        for path in paths[i:i + batch_size]:
            photo = read_input(path)
            small, sx, sy = face_finder.detection_input(np.asarray(photo.image), predictor.face_max_side)
            crops += face_crops(photo, face_finder.raw_detections(small), sx, sy)[1]
        labels += [a["label"] for a in predictor.classify(crops)]
    return time.perf_counter() - t0, labels


def ray_infer(run_dir: str, paths: Sequence[str], crops: bool, batch_size: int, out_dir: str,
              actors: int, threads: int, actor_cpus: float) -> tuple[float, list[str], dict[str, Any]]:
    from raymotion.infer import InferConfig, run_inference
    from raymotion.infer.table import read_table

    out = os.path.join(out_dir, f"ray-{'crops' if crops else 'photos'}-{time.monotonic_ns()}.parquet")
    cfg = InferConfig(run_dir=run_dir, inputs=tuple(paths), out=out, crops=crops, batch_size=batch_size,
                      progress_s=0, actors=actors, threads=threads, actor_cpus=actor_cpus)
    result = run_inference(cfg, log=lambda line: None)
    table = read_table(out)
    return result.seconds, [l for l in table.column("label").to_pylist() if l is not None], {
        "rows": result.rows, "faces": result.faces, "errors": result.errors, "actors": result.actors,
        "first_rows_s": result.first_rows_s, "first_images": result.first_images}


def measure(run_dir: str, crop_paths: Sequence[str], photo_paths: Sequence[str], batch_size: int, rounds: int,
            out_dir: str, actors: int = 0, threads: int = 0, actor_cpus: float = 1.0,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    from raymotion import Predictor

    predictor = Predictor(run_dir)  # intra_op_threads=0: a thread per core
    predictor.predict_batch(crop_paths[:batch_size])  # warm-up: sessions' first runs allocate
    cases = {"crops": (crop_paths, True, plain_crops), "photos": (photo_paths, False, plain_photos)}
    out: dict[str, Any] = {}
    for name, (paths, crops, plain) in cases.items():
        plain_s, ray_s, start_s, after = [], [], [], []
        for r in range(rounds):
            seconds, plain_labels = plain(predictor, paths, batch_size)
            plain_s.append(seconds)
            seconds, ray_labels, info = ray_infer(run_dir, paths, crops, batch_size, out_dir, actors, threads, actor_cpus)
            ray_s.append(seconds)
            start_s.append(info["first_rows_s"])
            after.append((len(paths) - info["first_images"]) / max(1e-9, seconds - info["first_rows_s"]))
            log(f"{name} round {r + 1}: plain {len(paths) / plain_s[-1]:.1f} images/s, "
                f"ray {len(paths) / ray_s[-1]:.1f} images/s end to end, first rows after {start_s[-1]:.1f} s "
                f"({info['faces']} faces, {info['errors']} errors)")
        out[name] = {"images": len(paths), "faces": info["faces"], "errors": info["errors"], "actors": info["actors"],
                     "plain_seconds": plain_s, "ray_seconds": ray_s, "ray_first_rows_seconds": start_s,
                     "plain_images_per_s": len(paths) / statistics.median(plain_s),
                     "ray_images_per_s": len(paths) / statistics.median(ray_s),
                     # After the first rows: the rate once workers and actors run, which a larger input
                     # approaches (writing the table and tracking stay in it).
                     "ray_after_start_images_per_s": statistics.median(after),
                     # Labels agree as sets of counts: Ray writes rows in completion order.
                     "same_label_counts": sorted(plain_labels) == sorted(ray_labels)}
        out[name]["ratio_ray_over_plain"] = out[name]["ray_images_per_s"] / out[name]["plain_images_per_s"]
    return out


def table(result: dict[str, Any]) -> str:
    rows = [(name, r["images"], r["faces"], f"{r['plain_images_per_s']:.1f}", f"{r['ray_images_per_s']:.1f}",
             f"{r['ratio_ray_over_plain']:.2f}", f"{statistics.median(r['ray_first_rows_seconds']):.1f}",
             f"{r['ray_after_start_images_per_s']:.1f}", r["actors"], "yes" if r["same_label_counts"] else "NO")
            for name, r in result["cases"].items()]
    return text_table(rows, ["input", "images", "faces", "plain loop img/s", "infer img/s", "infer / plain",
                             "infer start s", "infer after start img/s", "actors", "same labels"], "<>>>>>>>><")


def command(args: argparse.Namespace, write_result: Callable[[dict, str], None]) -> None:
    import ray

    from bench.machine import cpu_flags, cpu_info
    from raymotion.rundir import read_manifest
    from raymotion.runtime import init_ray

    root = args.data or read_manifest(args.run_dir).data.roots[0]
    crop_paths = val_files(root, args.images)
    init_ray(args.address)
    with tempfile.TemporaryDirectory(prefix="bench-infer-") as tmp:
        photo_paths = write_photos(crop_paths, args.photos, tmp)
        print(f"data: {len(crop_paths)} val crops of {root}; {len(photo_paths)} photos of 4 pasted crops, 960x720; "
              f"batch {args.batch_size}; {args.rounds} rounds; Ray CPUs {ray.cluster_resources().get('CPU')}", flush=True)
        cases = measure(os.path.abspath(args.run_dir), crop_paths, photo_paths, args.batch_size, args.rounds, tmp,
                        actors=args.actors, threads=args.threads, actor_cpus=args.actor_cpus,
                        log=lambda line: print(line, flush=True))
    result = {"benchmark": "infer", "run_dir": os.path.abspath(args.run_dir), "data": root,
              "batch_size": args.batch_size, "rounds": args.rounds, "cases": cases,
              "infer_options": {"actors": args.actors, "threads": args.threads, "actor_cpus": args.actor_cpus},
              "machine": {"cpu_model": cpu_info().get("model name", platform.processor()), "cpu_flags": cpu_flags(),
                          "cpus": os.cpu_count(), "ray_cpus": ray.cluster_resources().get("CPU"),
                          # Others' work on the machine slows both sides alike, but not necessarily equally.
                          "load_average_at_end": os.getloadavg(),
                          "platform": platform.platform()}}
    result["table"] = table(result)
    print("\n" + result["table"])
    print(f"CPU: {result['machine']['cpu_model']}; flags {' '.join(result['machine']['cpu_flags']) or 'none of avx2/fma/avx512'}")
    write_result(result, args.json or os.path.join("runs", "bench", f"infer-{time.strftime('%Y%m%d-%H%M%S')}.json"))


def add_arguments(sub) -> None:
    p = sub.add_parser("infer", help="raymotion.infer on Ray Data vs a plain single-process loop: crops and whole photos")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--data", help="data root whose val images are used (default: the manifest's first)")
    p.add_argument("--images", type=int, default=0, help="val crops (default 0: all of them)")
    p.add_argument("--photos", type=int, default=200, help="generated photos of 4 faces")
    p.add_argument("--batch-size", type=int, default=32, help="faces per model call, both sides")
    p.add_argument("--rounds", type=int, default=2, help="alternating (plain, ray) rounds; medians reported")
    p.add_argument("--actors", type=int, default=0, help="raymotion.infer --actors (0: its default)")
    p.add_argument("--threads", type=int, default=0, help="raymotion.infer --threads (0: its default)")
    p.add_argument("--actor-cpus", type=float, default=1.0, help="raymotion.infer --actor-cpus")
    p.add_argument("--address", help="Ray address (default: a running cluster, else a local instance)")
    p.add_argument("--json", help="output JSON (default runs/bench/infer-<time>.json)")
