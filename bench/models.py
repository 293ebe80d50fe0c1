"""``python -m bench models RUN_DIR``: torch eager vs ONNX fp32 vs ONNX int8, per model and for
the ensemble — batch-1 latency (p50/p95), batch-32 throughput, file size, val accuracy / macro-F1, FLOPs
per image and the fraction of the machine's measured matmul peak that the batch-1 latency achieves.

Everything runs in this process, one model at a time, with the same thread count for torch and
onnxruntime. The ensemble at batch 1 runs its served members (positive weight) one after the other
(what the Serve ingress costs in CPU time) and combines them as the manifest says
(``raymotion.export.mixture.ensemble_of_raw``: each member's calibration, then the pool's rule, weights,
temperature and class bias).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from raymotion import rundir
from bench.machine import describe_machine, measured_peak_gflops
from raymotion.data.transforms import normalize
from raymotion.export.mixture import ensemble_of_raw
from raymotion.export.quantize import DEFAULT_RANGE_IMAGES, choose_int8, int8_image_sets
from raymotion.export.sessions import INPUT_NAME, OUTPUT_NAME, create_session, interleaved_latency
from raymotion.models import count_flops, create_model
from raymotion.models.tta import FlipAveraged
from raymotion.rundir import Manifest, ModelEntry, read_manifest
from raymotion.train.checkpoint import MODEL_FILE, load_checkpoint
from raymotion.train.metrics import classification_metrics, softmax

VARIANTS = ("torch", "onnx-fp32", "onnx-int8")
EVAL_BATCH = 64

Runner = Callable[[np.ndarray], np.ndarray]  # normalized float32 NCHW -> logits


@dataclass
class BenchConfig:
    run_dir: str
    data: str | None = None  # overrides the manifest's data root
    iters: int = 200  # batch-1 timed calls per row (bounded by max_seconds too)
    batch_size: int = 32
    threads: int = 0  # torch and onnxruntime threads; 0 = every usable CPU
    max_seconds: float = 10.0  # per timing loop
    # Interleaved rounds per timing loop (each begins with a short pause and an untimed call; see
    # interleaved_latency): more rounds spread a passing background load over every variant alike.
    rounds: int = 5
    tolerance_points: float = 0.5  # int8 accuracy tolerance when int8 is built here
    # int8 slower than this x fp32 at batch 1 is not served (inf: accept any speed, 0: accept none). Which
    # way the measured choice goes depends on the CPU (VNNI or not); tests force each way through this.
    max_latency_ratio: float = 1.0
    int8_range_images: int = DEFAULT_RANGE_IMAGES


@dataclass
class Variant:
    runner: Runner
    path: str
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def torch_runner(model: torch.nn.Module) -> Runner:
    model.eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    return run


def onnx_runner(path: str, threads: int, stop_spinning_after_run: bool = False) -> Runner:
    session = create_session(path, intra_op_threads=threads, stop_spinning_after_run=stop_spinning_after_run)
    return lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def probabilities(run: Runner, images: np.ndarray) -> np.ndarray:
    logits = [run(images[i:i + EVAL_BATCH]) for i in range(0, len(images), EVAL_BATCH)]
    return softmax(np.concatenate(logits).astype(np.float64))


def _batch(images: np.ndarray, n: int) -> np.ndarray:
    """``n`` images from ``images`` (repeated when there are fewer)."""
    reps = -(-n // len(images))
    return np.ascontiguousarray(np.concatenate([images] * reps)[:n])


def time_variants(groups: dict[str, list[tuple[Runner, np.ndarray]]], cfg: BenchConfig) -> dict[str, dict[str, float]]:
    """Batch-1 latency (p50/p95, best round) and batch-N throughput of each group, a group being
    (runner, images) pairs run in sequence (one model, or an ensemble's members). Groups are timed in
    interleaved rounds, so that a background load hits every variant alike."""
    def calls(n: int) -> dict[str, Callable[[], object]]:
        pairs = {k: [(run, _batch(x, n)) for run, x in g] for k, g in groups.items()}
        return {k: (lambda p=p: [run(x) for run, x in p]) for k, p in pairs.items()}

    b1 = interleaved_latency(calls(1), iters=cfg.iters, rounds=cfg.rounds, max_seconds=cfg.max_seconds)
    bn = interleaved_latency(calls(cfg.batch_size), iters=max(cfg.rounds, cfg.iters // 10), rounds=cfg.rounds,
                             warmup=1, max_seconds=cfg.max_seconds)
    return {k: {"p50_ms": b1[k]["p50_ms"], "p95_ms": b1[k]["p95_ms"], "best_round_p50_ms": b1[k]["best_round_p50_ms"],
                "iters_b1": b1[k]["iters"], f"throughput_b{cfg.batch_size}": cfg.batch_size / (bn[k]["p50_ms"] / 1e3),
                "iters_bn": bn[k]["iters"]} for k in groups}


def load_data(cfg: BenchConfig, manifest: Manifest) -> tuple[Any, str]:
    """The data source for val metrics and int8 calibration, or None and why not."""
    from raymotion.data.sources import open_sources

    root = cfg.data or manifest.data.root
    try:
        source = open_sources([cfg.data] if cfg.data else manifest.data.roots, manifest.classes)
    except Exception as err:  # a run from another machine: its data root is not here
        return None, f"data root {root} is not usable ({err}): accuracy skipped"
    if list(source.classes) != manifest.classes:
        return None, f"data root {root} has classes {source.classes}, the run {manifest.classes}: accuracy skipped"
    return source, f"val images from {root}"


def int8_variant(name: str, entry: ModelEntry, fp32_path: str, cfg: BenchConfig, source, val_x, val_y,
                 classes: list[str]) -> tuple[str | None, str, dict[str, Any]]:
    """The int8 file of a model: the manifest's when it has one, else built here with choose_int8.

    Returns (path or None, note, choose_int8 record or {})."""
    recorded = entry.int8 or {}  # choose_int8's record (open-ended), absent when the bundle had int8 off
    rel = recorded.get("file")
    if rel and os.path.exists(os.path.join(cfg.run_dir, rel)):
        return os.path.join(cfg.run_dir, rel), f"int8 {recorded.get('selected', '')} from manifest".strip(), recorded
    # The bundle kept fp32: show its closest int8 candidate, so the table says by how much it missed.
    for variant in ("static", "dynamic"):
        candidate = recorded.get(variant, {})
        if candidate.get("file") and os.path.exists(os.path.join(cfg.run_dir, candidate["file"])):
            return (os.path.join(cfg.run_dir, candidate["file"]), f"int8 {variant} REJECTED: {candidate.get('reason', '')}",
                    recorded)
    if source is None or val_x is None:
        return None, "no int8 in the manifest and no data to calibrate one", {}
    ranges, selection = int8_image_sets(source, entry.input_size, entry.mean, entry.std, cfg.int8_range_images)
    record = choose_int8(fp32_path, os.path.join(cfg.run_dir, "bench", "int8"), ranges, val_x, val_y, classes,
                         cfg.tolerance_points, max_latency_ratio=cfg.max_latency_ratio, selection_images=selection,
                         name=name,
                         latency_iters=cfg.iters, max_seconds=cfg.max_seconds, latency_rounds=cfg.rounds)
    if record["selected"] != "fp32":
        return record["path"], f"int8 {record['selected']} (built here)", record
    # fp32 kept: still show the closest int8 candidate (rejected for accuracy, or for speed and then not
    # scored by choose_int8; this table scores it), so the table says by how much it missed.
    built = [v for v in ("static", "dynamic") if record[v].get("path")]
    if not built:
        return None, "int8 failed: " + record["reason"], record
    best = built[0]  # static when it was built: the variant that can be fast on CPU
    return record[best]["path"], f"int8 {best} REJECTED: {record[best]['reason']}", record


def run_models_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    manifest = read_manifest(cfg.run_dir)
    machine = describe_machine()
    threads = cfg.threads or machine["usable_cpus"]
    torch.set_num_threads(threads)
    peak = measured_peak_gflops(threads)
    log(f"machine: {machine['cpu_model']}, {machine['usable_cpus']} CPUs, {threads} threads; "
        f"float32 matmul peak {peak:.1f} GFLOP/s")
    classes = manifest.classes
    source, data_note = load_data(cfg, manifest)
    log(data_note)
    val_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    rows, details, members = [], {}, {}
    for name, entry in manifest.models.items():
        size, mean, std = entry.input_size, entry.mean, entry.std
        val_x = val_y = None
        if source is not None:
            if size not in val_cache:
                val_cache[size] = source.arrays("val", size)
            images, val_y = val_cache[size]
            val_x = normalize(images, mean, std)
        probe = val_x[:cfg.batch_size] if val_x is not None else \
            np.random.default_rng(0).standard_normal((cfg.batch_size, 3, size, size)).astype(np.float32)
        checkpoint_dir = os.path.join(cfg.run_dir, rundir.CHECKPOINTS_DIR, name)
        variants: dict[str, Variant] = {}
        if os.path.exists(os.path.join(checkpoint_dir, MODEL_FILE)):
            model, _ = load_checkpoint(checkpoint_dir)
        else:
            model = create_model(name, num_classes=len(classes), pretrained=False)  # FLOPs need only the graph
        if entry.test_time_augmentation == "hflip":
            model = FlipAveraged(model).eval()  # what the ONNX files compute: torch does the same work
        if os.path.exists(os.path.join(checkpoint_dir, MODEL_FILE)):
            variants["torch"] = Variant(torch_runner(model), os.path.join(checkpoint_dir, MODEL_FILE))
        fp32_path = os.path.join(cfg.run_dir, entry.file)
        variants["onnx-fp32"] = Variant(onnx_runner(fp32_path, threads), fp32_path)
        int8_path, int8_note, int8_record = int8_variant(name, entry, fp32_path, cfg, source, val_x, val_y, classes)
        if int8_path:
            variants["onnx-int8"] = Variant(onnx_runner(int8_path, threads), int8_path, int8_note)
        flops = count_flops(model, size)
        details[name] = {"flops_per_image": flops, "int8": int8_record, "int8_note": int8_note}
        members[name] = {"variants": variants, "probe": probe, "val_x": val_x, "val_y": val_y, "flops": flops,
                         "deployed_int8": bool(int8_path) and "REJECTED" not in int8_note}
        timings = time_variants({variant: [(v.runner, probe)] for variant, v in variants.items()}, cfg)
        for variant, v in variants.items():
            row = {"model": name, "variant": variant, "bytes": os.path.getsize(v.path), "flops_per_image": flops,
                   "note": v.note, **timings[variant]}
            if val_x is not None:
                v.extra["probs"] = probabilities(v.runner, val_x)
                metrics = classification_metrics(v.extra["probs"], val_y, classes)
                row.update(accuracy=metrics["accuracy"], macro_f1=metrics["macro_f1"])
            rows.append(finish_row(row, peak))
            log(f"  {name:<14} {variant:<10} p50 {row['p50_ms']:.2f} ms" + (f"  acc {row['accuracy']:.4f}"
                                                                               if "accuracy" in row else ""))
    rows.extend(ensemble_rows(manifest, members, cfg, peak, classes))
    return {"benchmark": "models", "run_dir": os.path.abspath(cfg.run_dir), "config": vars(cfg).copy(),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine, "threads": threads,
            "peak_gflops": peak, "data": data_note, "rows": rows, "models": details}


def finish_row(row: dict[str, Any], peak: float) -> dict[str, Any]:
    """Achieved GFLOP/s at batch 1 (FLOPs / p50) and its fraction of the measured float32 matmul peak.
    int8 rows count the same (float-equivalent) FLOPs against the same fp32 peak."""
    row["achieved_gflops"] = row["flops_per_image"] / (row["p50_ms"] / 1e3) / 1e9
    row["fraction_of_peak"] = row["achieved_gflops"] / peak
    return row


def ensemble_rows(manifest: Manifest, members, cfg: BenchConfig, peak: float, classes) -> list[dict[str, Any]]:
    """One row per variant: members run in sequence. "onnx-int8" is the ensemble as deployed — each
    member's accepted int8 file, fp32 where int8 was rejected."""
    ens = manifest.ensemble
    # What the Serve ingress runs: the manifest's served members (positive weight).
    names = list(ens.served)
    chosen: dict[str, dict[str, Variant]] = {}
    for variant in VARIANTS:
        picked = {}
        for n in names:
            vs = members[n]["variants"]
            if variant == "onnx-int8" and not members[n]["deployed_int8"]:
                picked[n] = vs["onnx-fp32"]
            elif variant in vs:
                picked[n] = vs[variant]
        if names and len(picked) == len(names):
            chosen[variant] = picked
    # The ensemble's ONNX members get sessions of their own that stop spinning after each run, so that
    # a member's idle threads do not hold the cores the next member needs (see create_session).
    threads = torch.get_num_threads()
    runners = {variant: [picked[n].runner if variant == "torch" else onnx_runner(picked[n].path, threads, True)
                         for n in names] for variant, picked in chosen.items()}
    timings = time_variants({variant: [(run, members[n]["probe"]) for run, n in zip(runners[variant], names)]
                             for variant in chosen}, cfg)
    rows = []
    for variant, picked in chosen.items():
        row = {"model": "ensemble", "variant": variant, "bytes": sum(os.path.getsize(v.path) for v in picked.values()),
               "flops_per_image": sum(members[n]["flops"] for n in names),
               "note": "members: " + ", ".join(f"{n}={v_name(members[n], v)}" for n, v in picked.items()),
               **timings[variant]}
        if all("probs" in picked[n].extra for n in names):
            # Members through their own calibrations first (temperature, class bias), as the bundle and Serve do.
            probs = ensemble_of_raw({n: picked[n].extra["probs"] for n in names}, manifest)
            metrics = classification_metrics(probs, members[names[0]]["val_y"], classes)
            row.update(accuracy=metrics["accuracy"], macro_f1=metrics["macro_f1"])
        rows.append(finish_row(row, peak))
    return rows


def v_name(member: dict[str, Any], variant: Variant) -> str:
    return next(k for k, v in member["variants"].items() if v is variant)


def format_table(result: dict[str, Any]) -> str:
    bn = f"throughput_b{result['config']['batch_size']}"
    head = ("model", "variant", "p50 ms", "p95 ms", "best p50", f"b{result['config']['batch_size']} img/s", "size MB",
            "val acc", "macro-F1", "MFLOP/img", "GFLOP/s", "% peak", "note")
    lines = [head]
    for r in result["rows"]:
        lines.append((r["model"], r["variant"], f"{r['p50_ms']:.2f}", f"{r['p95_ms']:.2f}",
                      f"{r.get('best_round_p50_ms', r['p50_ms']):.2f}", f"{r[bn]:.0f}",
                      f"{r['bytes'] / 1e6:.2f}", f"{r['accuracy']:.4f}" if "accuracy" in r else "-",
                      f"{r['macro_f1']:.4f}" if "macro_f1" in r else "-", f"{r['flops_per_image'] / 1e6:.1f}",
                      f"{r['achieved_gflops']:.1f}", f"{100 * r['fraction_of_peak']:.1f}", r["note"]))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head) - 1)]
    m = result["machine"]
    title = (f"{m['cpu_model']}, {m['usable_cpus']} CPUs ({', '.join(m['vector_extensions'])}), {m['ram_gib']} GiB; "
             f"torch {m['torch']}, onnxruntime {m['onnxruntime']}; {result['threads']} threads; "
             f"fp32 matmul peak {result['peak_gflops']:.1f} GFLOP/s (% peak = FLOPs / p50 / peak; int8 rows count "
             f"the same FLOPs against the fp32 peak and may pass 100%); {result['data']}")
    body = ["  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(line[:-1], widths)))
            + "  " + line[-1] for line in lines]
    return title + "\n" + "\n".join(s.rstrip() for s in body)


def int8_table(result: dict[str, Any]) -> str:
    """The int8 candidates behind each model's int8 row (choose_int8: fp32 vs static QDQ vs dynamic)."""
    lines = [("model", "variant", "size MB", "x fp32", "val acc", "drop pts", "p50 ms", "x fp32", "status")]
    for name, d in result["models"].items():
        rec = d.get("int8") or {}
        for variant in ("fp32", "static", "dynamic"):
            r = rec.get(variant)
            if not r:
                continue
            if "bytes" not in r:
                lines.append((name, variant, "-", "-", "-", "-", "-", "-", f"{r['status']}: {r['reason']}"))
                continue
            acc = r.get("accuracy")
            lines.append((name, variant, f"{r['bytes'] / 1e6:.2f}", f"{r.get('size_ratio', 1.0):.2f}",
                          f"{acc:.4f}" if acc is not None else "-",
                          f"{r['accuracy_drop_points']:+.2f}" if "accuracy_drop_points" in r else "-",
                          f"{r['latency_ms_p50']:.2f}", f"{r.get('latency_ratio', 1.0):.2f}",
                          r.get("status", "reference") + (f": {r['reason']}" if r.get("reason") else "")))
    if len(lines) == 1:
        return ""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]) - 1)]
    return "\n".join(("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line[:-1], widths)))
                      + "  " + line[-1]).rstrip() for line in lines)


def plot(result: dict[str, Any], path: str) -> str:
    """Batch-1 p50 latency, file size and val accuracy by model and variant (grouped bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in result["rows"]))
    panels = [("p50_ms", "batch-1 p50 latency (ms)", 1.0), ("bytes", "file size (MB)", 1e-6)]
    if any("accuracy" in r for r in result["rows"]):
        panels.append(("accuracy", "val accuracy", 1.0))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    width = 0.8 / len(VARIANTS)
    for ax, (key, label, scale) in zip(np.atleast_1d(axes), panels):
        for k, variant in enumerate(VARIANTS):
            xs, ys = [], []
            for i, model in enumerate(models):
                row = next((r for r in result["rows"] if r["model"] == model and r["variant"] == variant), None)
                if row is not None and key in row:
                    xs.append(i + (k - 1) * width)
                    ys.append(row[key] * scale)
            ax.bar(xs, ys, width, label=variant)
        ax.set_xticks(range(len(models)), models)
        ax.set_title(label)
    np.atleast_1d(axes)[0].legend()
    fig.suptitle(f"{os.path.basename(result['run_dir'].rstrip('/'))}: {result['machine']['cpu_model']}, "
                 f"{result['threads']} threads")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
