"""``python -m raymotion.tune``: the main job — tune each model, export the best, optionally serve.

    python -m raymotion.tune --preset quick --models lenet,mobilenet_v2 [--data ROOT] [--serve]
    python -m raymotion.tune --resume RUN_DIR      # continue a run that was stopped, however it stopped

This entry point is the one place that composes the stages (data -> train -> tune -> export -> serve);
the stage modules themselves never import a later stage.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence


import ray

from raymotion.config import (PRESETS, ConfigError, ExportConfig, Preset, TrainConfig, TuneSettings, check_metric,
                              check_model_names, parse_set_pairs, preset_overrides)
from raymotion.console import filter_terminal
from raymotion.data import DataError, Sources, is_generated, open_sources, resolve_data_roots
from raymotion.data.pipeline import load_cached
from raymotion.data.synthetic import GENERATED_NOTE
from raymotion.export.bundle import ExportedMembers, build_run_bundle, results_table, source_table
from raymotion.predict.soft_labels import cached_soft_labels
from raymotion.models import count_flops, create_model
from raymotion.report import write_report
from raymotion.rundir import (COMMAND, MANIFEST, STUDENT_DIR, Command, Manifest, log_path, member_checkpoint_dir,
                              read_command, read_manifest, read_tune_result, soft_labels_path, write_command,
                              write_tune_result)
from raymotion.runtime import init_ray
from raymotion.train.trainer import input_size_of, source_rates
from raymotion.tune.experiment import copy_checkpoint, tune_model
from raymotion.tune.progress import EpochProgress, ModelPlan, RunClock, format_minutes, summary_table
from raymotion.tune.resources import ResourcesHeld, check_resources


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m raymotion.tune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", metavar="ROOT",
                   help="one or more roots with train/ and val/ class folders (or Parquet caches), trained as one "
                        "run's sources; default: every data set under ../shared/data, else a generated face data set")
    p.add_argument("--classes", help="comma-separated classes to train on, which every source must have "
                                     "(default: all; the sources' class sets must then agree)")
    p.add_argument("--models", help="comma-separated registry names (default: the preset's models)")
    p.add_argument("--preset", default="quick", choices=sorted(PRESETS))
    p.add_argument("--out", help="run directory (default runs/<timestamp>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue this run with its own arguments (command.json): "
                   "finished models are kept, finished trials are not rerun, unfinished ones continue from their "
                   "latest checkpoint; only --address may be given beside it")
    p.add_argument("--distill", action=argparse.BooleanOptionalAction, default=True,
                   help="train the preset's students against the teachers' soft labels, and its distilled single "
                        "student (--no-distill: every model on labels alone, no student)")
    p.add_argument("--student", help="the distilled single student's model (default: the preset's; \"\": none)")
    p.add_argument("--num-samples", type=int, help="trials per model (overrides the preset)")
    p.add_argument("--epochs", type=int, help="max epochs per trial (overrides the preset)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="set a TrainConfig field for every model, after the preset (repeatable; VALUE read as YAML)")
    p.add_argument("--spaces", help="directory of <model>.yaml search spaces (default tune_spaces/)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: GPU workers + AMP + CUDA provider")
    p.add_argument("--workers", type=int, default=1, help="data-parallel Train workers per trial")
    p.add_argument("--address", help="Ray cluster to join; \"local\": a new local instance (default: RAY_ADDRESS, else the "
                   "cluster of the last `ray start` when it answers, else a new local instance)")
    ExportConfig.add_arguments(p)
    p.add_argument("--serve", action=argparse.BooleanOptionalAction, default=False, help="serve the run over HTTP when done")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    return p.parse_args(argv)


def run_directory(args: argparse.Namespace) -> str:
    return os.path.abspath(args.out or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S")))


def resolve_arguments(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """(the arguments, the argv they came from): a resumed run's are its own, from its command.json."""
    args = parse_args(argv)
    if not args.resume:
        args.out = run_directory(args)  # one timestamp for every reader
        if os.path.exists(os.path.join(args.out, COMMAND)):
            raise ConfigError(f"{args.out} already holds a run; continue it with --resume {args.out}, "
                              "or choose another --out")
        return args, list(sys.argv[1:] if argv is None else argv)
    defaults = vars(parse_args([]))
    given = {k for k, v in vars(args).items() if v != defaults[k]} - {"resume", "address"}
    if given:
        raise ConfigError(f"--resume continues a run with its own arguments; also given: {sorted(given)}")
    run_dir = os.path.abspath(args.resume)
    if not os.path.exists(os.path.join(run_dir, COMMAND)):
        raise ConfigError(f"--resume {args.resume}: no {COMMAND} there; is it a run directory of python -m raymotion.tune?")
    saved = read_command(run_dir).argv
    resumed = parse_args(saved + (["--address", args.address] if args.address else []))
    resumed.out, resumed.resume = run_dir, run_dir
    return resumed, saved


def base_config(model: str, args: argparse.Namespace, preset: Preset, student: bool = False) -> TrainConfig:
    """The preset's config of ``model`` (``student``: with the preset's student_overrides), then --set and
    --epochs, which apply to every model. Each key they set is pinned: the search space does not search it."""
    base = TrainConfig(model=model, seed=args.seed, num_workers=args.workers,
                       use_gpu=args.device == "cuda", amp=args.device == "cuda")
    layers = [(f"preset {preset.name!r}, overrides of model {model!r}", preset_overrides(preset, model)),
              (f"preset {preset.name!r}, student_overrides", preset.student_overrides if student else {}),
              ("--set", parse_set_pairs(args.overrides)),
              ("--epochs", {"epochs": args.epochs} if args.epochs is not None else {})]
    for source, changes in layers:
        base = base.replace(source, **changes)
    pinned = sorted({key for _, changes in layers for key in changes})
    return base.replace("the model's input size", input_size=input_size_of(base), pinned=tuple(pinned))


def plan_model(base: TrainConfig, trials: int, train_images: int, val_images: int,
               teachers: Sequence[TrainConfig] = ()) -> ModelPlan:
    """What the time-left estimate needs of a model before it starts (FLOPs from its untrained graph, and
    from its online ``teachers``' graphs at their input sizes)."""
    per_step = base.batch_size * base.num_workers
    steps = max(1, (base.epoch_rows or train_images) // per_step)
    if base.max_batches_per_epoch:
        steps = min(steps, base.max_batches_per_epoch)
    flops = count_flops(create_model(base.model, pretrained=False), base.input_size)
    teacher_flops = sum(count_flops(create_model(t.model, pretrained=False), t.input_size) for t in teachers)
    return ModelPlan(base.model, trials, base.epochs, steps * per_step, val_images, flops, teacher_flops)


def data_banner(roots: list[str]) -> str:
    generated = [root for root in roots if is_generated(root)]
    lines = "".join(f"!! data root: {root}\n" for root in generated)
    return f"\n{'!' * 100}\n!! {GENERATED_NOTE}\n{lines}{'!' * 100}\n" if generated else ""


def sampling_line(bases: dict[str, TrainConfig], sources: Sources) -> str:
    """Each model's per-source share of its epochs' training rows (TrainConfig.source_share_power or
    source_shares), checked before anything trains; "" with one source."""
    counts = sources.counts_by_source("train")
    if len(counts) < 2:
        return ""
    lines = []
    for model, base in bases.items():
        rates = source_rates(base, counts)
        total = sum(r * n for r, n in zip(rates, counts.values()))
        shares = ", ".join(f"{name} {r * n / total:.0%} (x{r:.2f})" for (name, n), r in zip(counts.items(), rates))
        lines.append(f"  {model}: {shares}")
    return "training rows per epoch by source (share, draws per image):\n" + "\n".join(lines)


@dataclass
class RunContext:
    """What every stage of one tune command shares."""

    args: argparse.Namespace
    run_dir: str
    source: Any
    preset: Preset
    settings: TuneSettings
    class_counts: list[int]
    clock: RunClock
    cached_by_size: dict = field(default_factory=dict)  # input size -> cached splits (load_cached)
    owns_ray: bool = False  # this process started its own Ray (it dies with it)
    bases: dict[str, TrainConfig] = field(default_factory=dict)  # each model's config (checked_configs)
    student: TrainConfig | None = None  # the distilled single student's, if the run makes one
    exported: ExportedMembers = field(default_factory=dict)  # the teachers, exported once (export_member_once)

    def cached(self, size: int):
        if size not in self.cached_by_size:
            self.cached_by_size[size], report = load_cached(self.source, size)
            print(f"decoded at {size}px: {report.summary()}", flush=True)
        return self.cached_by_size[size]


def tune_one(label: str, base: TrainConfig, settings, ctx: RunContext, run_dir: str):
    """One model's search (continued if this run started it), recorded in <run_dir>/trials/<model>.json.
    ``label``: the model's name in progress lines ("student:<model>" for the distilled student)."""
    distilled = ""
    if base.soft_labels:
        distilled = f"; distilled from {base.soft_labels} (alpha {base.distill_alpha})"
    elif base.teacher_checkpoints:
        teachers = ", ".join(os.path.basename(path) for path in base.teacher_checkpoints)
        distilled = f"; distilled online from {teachers} (alpha {base.distill_alpha})"
    print(f"\ntuning {label}: {settings.num_samples} trials x <= {base.epochs} epochs at {base.input_size}px; "
          f"augmentations (before the search space varies them): {base.augmentation.summary()}; "
          f"class weighting: {base.class_weighting}{distilled} | {ctx.clock.status()}", flush=True)
    progress = EpochProgress(label, ctx.clock, settings.metric, settings.mode, sources=ctx.source.names)
    result = tune_model(base, classes=ctx.source.classes, class_counts=ctx.class_counts,
                        cached=ctx.cached(base.input_size), settings=settings, run_dir=run_dir,
                        spaces_dir=ctx.args.spaces, callbacks=[progress],
                        source_counts=ctx.source.counts_by_source("train"))
    write_tune_result(run_dir, result)
    print(f"{label} done: best {settings.metric}={result.metrics.get(settings.metric, float('nan')):.4f} "
          f"({result.trials} trials, {result.stopped_early} stopped early, {result.failed} failed, "
          f"{result.restarted} restarted from a checkpoint, {format_minutes(result.seconds)}) | {ctx.clock.status()}",
          flush=True)
    return result


def tune_stage(ctx: RunContext, bases: dict[str, TrainConfig], trials: dict[str, int], run_dir: str,
               labels: dict[str, str] | None = None) -> tuple[dict[str, str], dict[str, dict]]:
    """Tune each model of ``bases`` in turn (a model this run already finished is kept); returns each
    model's best checkpoint (copied into ``run_dir``) and its tune record for the manifest."""
    checkpoints, extra = {}, {}
    for model, base in bases.items():
        label = (labels or {}).get(model, model)
        result = read_tune_result(run_dir, model) if ctx.args.resume else None
        if result:  # needs no CPUs: a finished run resumes beside a service that holds them
            print(f"\n{label}: already tuned in this run ({result.trials} trials); kept", flush=True)
        else:
            base, note = check_resources(base)  # before decoding: fail fast, or fit what is free
            if note:
                print(f"{label}: {note}", flush=True)
            result = tune_one(label, base, dataclasses.replace(ctx.settings, num_samples=trials[model]), ctx, run_dir)
        checkpoints[model] = copy_checkpoint(result, member_checkpoint_dir(run_dir, model))
        extra[model] = {"tune": {"trials": result.trials, "stopped_early": result.stopped_early,
                                 "failed": result.failed, "restarted": result.restarted,
                                 "seconds": round(result.seconds, 1), "history": result.history}}
    return checkpoints, extra


def export_stage(ctx: RunContext, run_dir: str, checkpoints: dict[str, str], extra: dict[str, dict],
                 what: str) -> Manifest:
    print(f"\nexporting {what} ({', '.join(checkpoints)}): ONNX, int8 candidates, calibration, ensemble", flush=True)
    started = time.perf_counter()
    manifest = build_run_bundle(run_dir, checkpoints, ctx.source, extra, ExportConfig.from_arguments(ctx.args),
                                exported=ctx.exported)
    tables = "\n\n".join(t for t in (results_table(manifest), source_table(manifest)) if t)
    print(f"\n{tables}\n\nexport took {format_minutes(time.perf_counter() - started)}", flush=True)
    return manifest


def soft_labels_of(ctx: RunContext, stage: str, teachers: tuple[dict[str, str], dict[str, dict]] | None) -> str:
    """The soft labels of this run's ensemble at ``stage`` ("teachers": the members trained so far, exported
    first when given; "ensemble": the final one), computed once (a resumed run reuses the file)."""
    path = soft_labels_path(ctx.run_dir, stage)
    if not os.path.exists(path):
        if teachers:  # fp32 only: the int8 choice (and its timing) waits for the final export
            print(f"\nexporting the teachers ({', '.join(teachers[0])}) for their soft labels", flush=True)
            checkpoints, extra = teachers
            build_run_bundle(ctx.run_dir, checkpoints, ctx.source, extra,
                             dataclasses.replace(ExportConfig.from_arguments(ctx.args), int8=False),
                             exported=ctx.exported)
        print(f"soft labels: the {stage} ensemble on the training images -> {path}", flush=True)
        cached_soft_labels(ctx.run_dir, ctx.source, path)
    return path


def distilled_configs(ctx: RunContext, bases: dict[str, TrainConfig], checkpoints: dict[str, str],
                      extra: dict[str, dict]) -> dict[str, TrainConfig]:
    """The students' configs, against the teachers (``checkpoints``, their tune records ``extra``): online
    for those the preset names in ``online_teachers`` (every teacher scores each batch), else against their
    ensemble's stored soft labels (exported and computed first, only when a student needs them)."""
    online = [m for m in bases if m in ctx.preset.online_teachers]
    configs = {}
    if online:
        teachers = tuple(checkpoints.values())
        print(f"\n{', '.join(online)} learn from the teachers online: {', '.join(checkpoints)}", flush=True)
        configs = {m: bases[m].replace("distillation", teacher_checkpoints=teachers) for m in online}
    stored = [m for m in bases if m not in online]
    if stored:
        path = soft_labels_of(ctx, "teachers", (checkpoints, extra))
        configs.update({m: bases[m].replace("distillation", soft_labels=path) for m in stored})
    return {m: configs[m] for m in bases}


def student_config(base: TrainConfig, preset: Preset, soft_labels: str, member_checkpoint: str | None,
                   teachers: tuple[str, ...] = ()) -> TrainConfig:
    """The distilled student's config: ``base`` against the final ensemble's ``soft_labels``, or online
    against ``teachers`` (the served members' checkpoints) when the preset says ``student_online_teachers``;
    starting from ``member_checkpoint`` (the run's member of the same model, if any) when it says
    ``student_from_member``."""
    changes: dict = ({"teacher_checkpoints": tuple(teachers)} if preset.student_online_teachers
                     else {"soft_labels": soft_labels})
    if preset.student_from_member and member_checkpoint:
        changes["init_checkpoint"] = member_checkpoint
    return base.replace("the distilled student", **changes)


def student_stage(ctx: RunContext, base: TrainConfig, member_checkpoint: str | None = None,
                  teachers: tuple[str, ...] = ()) -> Manifest:
    """The distilled single student: trained (``student_config``) into a run directory of its own
    (RUN_DIR/student), servable alone. ``teachers``: the served members' checkpoints."""
    online = ctx.preset.student_online_teachers
    base = student_config(base, ctx.preset, "" if online else soft_labels_of(ctx, "ensemble", None),
                          member_checkpoint, teachers)
    if base.init_checkpoint:
        print(f"the student {base.model} starts from the run's member: {base.init_checkpoint}", flush=True)
    student_dir = os.path.join(ctx.run_dir, STUDENT_DIR)
    label = f"student:{base.model}"
    checkpoints, extra = tune_stage(ctx, {base.model: base}, {base.model: 1}, student_dir, {base.model: label})
    return export_stage(ctx, student_dir, checkpoints, extra, what="the distilled student")


def start_run(args: argparse.Namespace, argv: list[str], on_run_dir) -> tuple[RunContext, list[str]]:
    """Data checked, run directory made, Ray up; returns the shared context and the models to tune."""
    roots, how = resolve_data_roots(args.data, os.path.abspath("runs/synthetic-faces"))
    # Fails fast, before Ray starts and before a run directory exists, on a bad root or disagreeing classes.
    source = open_sources(roots, [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None)
    preset = PRESETS[args.preset]
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else list(preset.models)
    bases, student = checked_configs(args, preset, models, source)
    run_dir = run_directory(args)
    os.makedirs(run_dir, exist_ok=True)
    if not args.resume:
        write_command(run_dir, Command(argv=list(argv)))  # as given: an empty value (--student "") is a value
    if on_run_dir:
        on_run_dir(run_dir)
    if args.resume:
        print(f"resuming {run_dir}: {shlex.join(read_command(run_dir).argv)}", flush=True)
    print(f"data: {', '.join(roots)} ({how})\n{source.summary()}{data_banner(roots)}", flush=True)
    print(f"run directory: {run_dir}", flush=True)
    # A copy: the presets are module-level defaults shared by every call in this process.
    settings = dataclasses.replace(preset.tune, seed=args.seed)
    ctx = RunContext(args, run_dir, source, preset, settings, [source.counts("train")[c] for c in source.classes],
                     RunClock({}), bases=bases, student=student)
    ctx.owns_ray = init_ray(args.address)
    return ctx, models


def tune_and_export(args: argparse.Namespace, argv: list[str],
                    on_run_dir: Callable[[str], None] | None = None) -> tuple[str, Manifest, bool]:
    """Returns the run directory, its manifest, and whether this process started its own Ray.
    ``on_run_dir``: called once the data root is valid and the run directory exists, before Ray starts.

    Stages: the teachers (every model the preset does not distil); with students, the teachers' ensemble's
    soft labels and then the students trained on them; the export of all; with a preset student, the
    distilled single student (RUN_DIR/student)."""
    ctx, models = start_run(args, argv, on_run_dir)
    preset, bases = ctx.preset, ctx.bases
    line = sampling_line(bases, ctx.source)
    if line:
        print(line, flush=True)
    trials = {m: args.num_samples if args.num_samples is not None else preset.samples.get(m, preset.tune.num_samples)
              for m in models}
    students = [m for m in models if args.distill and m in preset.students]
    teachers = [m for m in models if m not in students]
    if students and not teachers:
        print(f"no teacher among {models}: {', '.join(students)} train on labels alone", flush=True)
        students, teachers = [], models
    student = ctx.student
    counts = {split: sum(ctx.source.counts(split).values()) for split in ("train", "val")}
    # Online teachers' passes are part of a student's epochs (the single student's teachers are the final
    # ensemble's served members, unknown yet: planned as every teacher).
    teacher_bases = [bases[m] for m in teachers]
    plans = {m: plan_model(bases[m], trials[m], counts["train"], counts["val"],
                           teacher_bases if m in students and m in preset.online_teachers else ()) for m in models}
    if student:
        plans[f"student:{student.model}"] = dataclasses.replace(
            plan_model(student, 1, counts["train"], counts["val"],
                       teacher_bases if preset.student_online_teachers else ()), name=f"student:{student.model}")
    ctx.clock.plans.update(plans)
    checkpoints, extra = tune_stage(ctx, {m: bases[m] for m in teachers}, trials, ctx.run_dir)
    if students:
        distilled = distilled_configs(ctx, {m: bases[m] for m in students}, checkpoints, extra)
        more = tune_stage(ctx, distilled, trials, ctx.run_dir)
        checkpoints, extra = {**checkpoints, **more[0]}, {**extra, **more[1]}
    checkpoints = {m: checkpoints[m] for m in models}  # the manifest's (and report's) order is the user's
    manifest = export_stage(ctx, ctx.run_dir, checkpoints, extra, what="every model")
    if student:
        student_stage(ctx, student, checkpoints.get(student.model),
                      tuple(checkpoints[m] for m in manifest.ensemble.served))
    ctx.cached_by_size.clear()
    print(f"report: {write_report(ctx.run_dir)}", flush=True)
    return ctx.run_dir, manifest, ctx.owns_ray


def bases_student(args: argparse.Namespace, preset: Preset) -> TrainConfig | None:
    """The distilled single student's base config (the preset's ``student``, its own overrides), or None."""
    model = preset.student if args.student is None else args.student
    if not (args.distill and model):
        return None
    check_model_names([model], "--student" if args.student else f"preset {preset.name!r}, student")
    return base_config(model, args, preset, student=True)


def checked_configs(args: argparse.Namespace, preset: Preset, models: list[str],
                    source: Sources) -> tuple[dict[str, TrainConfig], TrainConfig | None]:
    """Every model's config and the student's, checked before a run directory or Ray exists, so that a bad
    name, key or value fails before anything trains, naming it: the model names (--models, the preset,
    --student), every key and value (preset, --set, --epochs), and the metric, against what this data's
    epochs report (its classes and sources name some of them)."""
    check_model_names(models, "--models")
    preset.check()
    if args.num_samples is not None:  # a count of trials, checked as the preset's are: 0 is refused, not ignored
        try:
            dataclasses.replace(preset.tune, num_samples=args.num_samples)
        except ConfigError as err:
            raise ConfigError(f"--num-samples: {err}") from None
    bases = {m: base_config(m, args, preset) for m in models}
    student = bases_student(args, preset)
    check_metric(preset.tune.metric, source.classes, source.names, f"preset {preset.name!r}, tune.metric")
    for cfg in [*bases.values(), *([student] if student else [])]:
        check_metric(cfg.metric, source.classes, source.names, f"{cfg.model}: TrainConfig.metric")
    return bases, student


def summary(manifest: Manifest, run_dir: str, elapsed: float, url: str | None) -> str:
    """The run at a glance: the last thing the command prints."""
    rows = []
    ens = manifest.ensemble
    for name, entry in manifest.models.items():
        t, val, oof = entry.tune or {}, entry.val, entry.val_out_of_fold
        rows.append({"model": name, "trials all epochs/stopped early/failed":
                     f"{t.get('trials', 0) - t.get('failed', 0) - t.get('stopped_early', 0)}/"
                     f"{t.get('stopped_early', 0)}/{t.get('failed', 0)}",
                     "val acc": f"{val['accuracy']:.4f}", "macro-F1": f"{val['macro_f1']:.4f}",
                     "out-of-fold acc": f"{oof['accuracy']:.4f}" if oof else "-",
                     "degraded val acc": f"{entry.val_degraded['accuracy']:.4f}" if entry.val_degraded else "-",
                     "minutes": f"{t.get('seconds', 0) / 60:.1f}",
                     "weight": f"{ens.weights.get(name, 0):.2f}",
                     "served": entry.serve.variant})
    oof = ens.val_out_of_fold
    rows.append({"model": "ensemble", "trials all epochs/stopped early/failed": "-",
                 "val acc": f"{ens.val['accuracy']:.4f}", "macro-F1": f"{ens.val['macro_f1']:.4f}",
                 "out-of-fold acc": f"{oof['accuracy']:.4f}" if oof else "-",
                 "degraded val acc": f"{ens.val_degraded['accuracy']:.4f}" if ens.val_degraded else "-",
                 "minutes": f"{elapsed / 60:.1f}",
                 "weight": "-", "served": "+".join(ens.served)})
    gain = ens.gain_out_of_fold
    gain_line = [f"ensemble ({ens.rule} pool) - best member ({gain['best_member']}), out-of-fold: "
                 f"{gain['accuracy_points']:+.1f} points accuracy, {gain['macro_f1_points']:+.1f} macro-F1"] if gain else []
    by_source = source_table(manifest)
    lines = ["", "=" * 40 + " summary " + "=" * 40, summary_table(rows), *gain_line,
             *(["", "per data source (calibration and weights fitted on every source's val):", by_source] if by_source else []),
             *student_line(run_dir), "",
             "(val figures are in-sample for calibration and ensemble weights; out-of-fold is the honest one)",
             f"run directory: {run_dir}",
             f"served at: {url}" if url else f"serve it: serve run serve.app:build_app run_dir={run_dir}  (or serve/config.yaml)"]
    if manifest.data.generated:
        lines.append(data_banner(manifest.data.roots))
    return "\n".join(lines)


def student_line(run_dir: str) -> list[str]:
    """The distilled single student beside the ensemble, when the run made one."""
    student_dir = os.path.join(run_dir, STUDENT_DIR)
    if not os.path.exists(os.path.join(student_dir, MANIFEST)):
        return []
    manifest = read_manifest(student_dir)
    (name, entry), = manifest.models.items()
    oof = entry.val_out_of_fold or {}
    return [f"distilled student {name} (served alone: serve run serve.app:build_app run_dir={student_dir}): "
            f"val acc {entry.val['accuracy']:.4f}, out-of-fold {oof.get('accuracy', float('nan')):.4f}"]


def serve_run(run_dir: str, host: str, port: int, device: str) -> str:
    """Deploy the run on Serve; returns its URL once it answers."""
    from ray import serve

    from serve.app import AppArgs, build_app

    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(AppArgs(run_dir=run_dir, device=device)), name="raymotion", route_prefix="/", blocking=False)
    url = f"http://{host}:{port}"
    print(f"\nServe answering: {run_dir} at {url}\n"
          f"  curl --data-binary @face.jpg -H 'Content-Type: image/jpeg' {url}/predict", flush=True)
    return url


def wait_while_serving(owns_ray: bool) -> None:
    from ray import serve

    if owns_ray:  # a local Ray dies with this process: keep serving until interrupted
        print("  (Ctrl-C stops it; start `ray start --head` first to leave Serve running after this command)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            serve.shutdown()


def point_latest_at(run_dir: str) -> None:
    """<runs>/latest -> the newest finished run (a relative link), what serve/config.yaml serves."""
    latest = os.path.join(os.path.dirname(run_dir), "latest")
    if os.path.islink(latest) or not os.path.exists(latest):
        tmp = f"{latest}.{os.getpid()}"
        os.symlink(os.path.basename(run_dir), tmp)
        os.replace(tmp, latest)  # atomic: a reader sees the old run or the new one, never no link


def main(argv: list[str] | None = None) -> None:
    started = time.perf_counter()
    run_dirs: list[str] = []  # the run directory, once there is one (what --resume continues)

    def on_run_dir(run_dir: str) -> None:
        run_dirs.append(run_dir)
        # Everything printed, Ray's noise included, goes to the run's log; the terminal gets what matters.
        filter_terminal(log_path(run_dir))

    try:
        args, argv = resolve_arguments(argv)
        run_dir, manifest, owns_ray = tune_and_export(args, argv, on_run_dir=on_run_dir)
        point_latest_at(run_dir)
        url = serve_run(run_dir, args.host, args.port, args.device) if args.serve else None
        print(summary(manifest, run_dir, time.perf_counter() - started, url), flush=True)
        if args.serve:
            wait_while_serving(owns_ray)
    except (ConfigError, DataError, ResourcesHeld) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C, in whichever stage
        resume = f": continue it with python -m raymotion.tune --resume {run_dirs[0]}" if run_dirs else ""
        print(f"\nstopped (Ctrl-C){resume}", file=sys.stderr, flush=True)
        sys.exit(130)
    finally:
        # Here, not in Ray's own exit hook: that runs after the terminal filter hands the terminal back,
        # and the worker logs it flushes would reach the terminal unfiltered.
        ray.shutdown()


if __name__ == "__main__":
    main()
