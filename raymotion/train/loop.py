"""``train_loop_per_worker``: what each Ray Train worker runs (data-parallel via DDP when >1 worker).

Shaped like torchvision's classification reference (references/classification/train.py): a short setup,
then per epoch ``train_one_epoch``, ``evaluate`` and ``report_epoch``; the LR schedule is torch's own
``SequentialLR`` of ``LinearLR`` warm-up and ``CosineAnnealingLR``, as there."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Iterable, Literal, NamedTuple

import numpy as np
import ray.data
import ray.train
import ray.train.torch
import ray.tune
import torch
import torch.nn as nn

from raymotion import rundir
from raymotion.config import TrainConfig
from raymotion.data.pipeline import SHUFFLE_BUFFER_ROWS
from raymotion.models import create_model, get_model_spec, split_head_parameters
from raymotion.train.checkpoint import load_checkpoint, load_initial_weights, load_train_state, save_checkpoint
from raymotion.train.metrics import classification_metrics


def standardize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                channels_last: bool = False) -> torch.Tensor:
    """uint8 NHWC batch (on the train device) -> float32 NCHW standardised per channel: the model input,
    laid out NHWC in memory when ``channels_last`` (as the batch already is: no transpose then).

    The torch twin of ``data.transforms.normalize`` (which export and Serve use), done where the model
    runs so that the batches in flight stay uint8. ``mean``/``std``: float tensors of shape (3,) on that
    device."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = images.permute(0, 3, 1, 2).to(torch.float32, memory_format=layout)
    return x.mul_(1.0 / 255.0).sub_(mean.view(1, 3, 1, 1)).div_(std.view(1, 3, 1, 1))


def resolve_torch_threads(requested: int, local_world_size: int) -> int:
    """0 = share this node's cores between its workers (Ray's default would leave cores idle on small
    machines, where data tasks are brief and torch is the bottleneck)."""
    if requested > 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, local_world_size))


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int,
                  warmup_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule: ``warmup_steps`` linear steps up to the peak lr (peak/w, 2 peak/w, ..., peak),
    then cosine down to 0 at ``total_steps``. No warm-up (0 steps): the cosine alone."""
    sched = torch.optim.lr_scheduler
    cosine = sched.CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup_steps))
    if warmup_steps <= 0:
        return cosine
    # total_iters = w - 1: the w-th warm-up step already trains at the peak, as the cosine's first does.
    warmup = sched.LinearLR(optimizer, start_factor=1.0 / warmup_steps, total_iters=max(1, warmup_steps - 1))
    return sched.SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])


class AmpSettings(NamedTuple):
    """Autocast and loss scaling for one worker, chosen by ``amp_settings``."""

    enabled: bool
    dtype: torch.dtype | None  # autocast's dtype; None when off
    grad_scaler: bool  # fp16 needs loss scaling (its exponent range is small); bf16 and float32 do not

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=self.dtype, enabled=self.enabled)


def select_device(cfg: TrainConfig, assigned: torch.device) -> torch.device:
    """The worker's device: the CUDA device Ray Train assigned (``ray.train.torch.get_device()``) when
    ``cfg.use_gpu``, else the CPU. A GPU run whose worker sees no CUDA device fails here rather than
    training on the CPU without a word."""
    if not cfg.use_gpu:
        return torch.device("cpu")
    if assigned.type != "cuda":
        raise RuntimeError(f"use_gpu is set but this worker's device is {assigned} (no CUDA device visible: "
                           "check that the node has GPUs and that torch is a CUDA build)")
    return assigned


def cpu_computes_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic in hardware (AVX-512 BF16, AMX), as oneDNN sees it. Without
    it, torch emulates bf16 and autocast would be slower than float32."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def amp_settings(cfg: TrainConfig, device: torch.device, bf16_supported: bool | None = None) -> AmpSettings:
    """Mixed precision only when ``cfg.amp``. "bf16"/"fp16" are used as asked (fp16 with a GradScaler);
    "auto" picks bf16 where the device computes it (``bf16_supported``, default: ask torch about this GPU
    or CPU), else fp16 on CUDA and float32 (off) on the CPU."""
    if not cfg.amp or device.type not in ("cuda", "cpu"):
        return AmpSettings(False, None, False)
    if cfg.amp_dtype == "auto":
        if bf16_supported is None:
            bf16_supported = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_computes_bf16()
        if not bf16_supported and device.type == "cpu":
            return AmpSettings(False, None, False)
        dtype = torch.bfloat16 if bf16_supported else torch.float16
    else:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp_dtype]
    return AmpSettings(True, dtype, dtype == torch.float16)


def iterator_options(cfg: TrainConfig, device: torch.device) -> dict[str, Any]:
    """``iter_torch_batches`` arguments for the train shard: batches prefetched ahead of the step and, on
    CUDA, pinned host memory (pinning needs a CUDA device; on the CPU it would only copy)."""
    return {"prefetch_batches": cfg.prefetch_batches, "pin_memory": cfg.pin_memory and device.type == "cuda",
            "device": device}


def maybe_compile(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """``torch.compile`` when ``cfg.torch_compile`` (compiles lazily, at the first step); else the model."""
    return torch.compile(model) if cfg.torch_compile else model


class Teacher(NamedTuple):
    """An online-distillation teacher (TrainConfig.teacher_checkpoints), frozen on the train device."""

    model: nn.Module
    input_size: int
    mean: torch.Tensor  # (3,) on the device: the teacher's own standardisation, which may not be the student's
    std: torch.Tensor


def load_teachers(directories: Iterable[str], classes: list[str], device: torch.device,
                  channels_last: bool) -> list[Teacher]:
    """The checkpoints in ``directories`` as frozen teachers, in eval mode; one of other classes is refused
    by name."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    teachers = []
    for directory in directories:
        model, meta = load_checkpoint(directory)
        if list(meta.classes) != list(classes):
            raise ValueError(f"teacher {directory}: a {meta.model} of classes {meta.classes}, "
                             f"not of this run's classes {classes}")
        model.requires_grad_(False)
        teachers.append(Teacher(model.to(device, memory_format=layout), meta.input_size,
                                torch.tensor(meta.mean, dtype=torch.float32, device=device),
                                torch.tensor(meta.std, dtype=torch.float32, device=device)))
    return teachers


@torch.no_grad()
def teacher_probabilities(teachers: list[Teacher], images: torch.Tensor, amp: AmpSettings, device: torch.device,
                          channels_last: bool = False) -> torch.Tensor:
    """(N, C) float32: the teachers' normalised geometric mean (the ensemble's default pooling) on ``images``,
    the uint8 NHWC batch as the student sees it; each teacher gets it standardised its own way and resized
    to its own input size (bilinear, antialiased), as it was trained."""
    log_probs = []
    for teacher in teachers:
        x = standardize(images, teacher.mean, teacher.std, channels_last)
        if tuple(x.shape[-2:]) != (teacher.input_size, teacher.input_size):
            x = nn.functional.interpolate(x, size=(teacher.input_size, teacher.input_size), mode="bilinear",
                                          antialias=True, align_corners=False)
        with amp.autocast(device):
            logits = teacher.model(x)
        log_probs.append(logits.float().log_softmax(1))
    return torch.stack(log_probs).mean(0).softmax(1)


def source_metrics(logits: np.ndarray, labels: np.ndarray, sources: np.ndarray, classes: list[str],
                   names: list[str]) -> dict[str, float]:
    """Each source's figures as ``<source>_<metric>`` (with two or more sources), and ``source_macro_f1``:
    the mean of the sources' macro-F1 (with one source, its macro-F1), the runs' default objective."""
    if len(names) < 2:
        return {"source_macro_f1": classification_metrics(logits, labels, classes)["macro_f1"]}
    out, f1s = {}, []
    for index, name in enumerate(names):
        rows = sources == index
        if not rows.any():
            continue
        figures = classification_metrics(logits[rows], labels[rows], classes)
        out.update({f"{name}_{key}": value for key, value in figures.items()})
        f1s.append(figures["macro_f1"])
    out["source_macro_f1"] = float(np.mean(f1s))
    return out


@torch.no_grad()
def evaluate(model: nn.Module, batches, device: torch.device, classes: list[str], amp: AmpSettings,
             mean: torch.Tensor, std: torch.Tensor, channels_last: bool = False,
             sources: list[str] = ()) -> dict[str, float]:
    """``batches``: uint8 NHWC images and labels (and ``source`` ids into ``sources``, the run's source
    names); ``mean``/``std`` (3,) on ``device`` standardise them. Pooled figures, then per source."""
    model.eval()
    logits, labels, source_ids = [], [], []
    for batch in batches:
        with amp.autocast(device):
            out = model(standardize(batch["image"].to(device, non_blocking=True), mean, std, channels_last))
        logits.append(out.float().cpu())
        labels.append(batch["label"].cpu())
        source_ids.append(batch["source"].cpu() if "source" in batch else torch.zeros(len(out), dtype=torch.int64))
    if not logits:
        return {}
    all_logits, all_labels = torch.cat(logits), torch.cat(labels)
    metrics = classification_metrics(all_logits.numpy(), all_labels.numpy(), classes)
    metrics["loss"] = float(nn.functional.cross_entropy(all_logits, all_labels))
    metrics.update(source_metrics(all_logits.numpy(), all_labels.numpy(), torch.cat(source_ids).numpy(), classes,
                                  list(sources)))
    return metrics


def set_backbone_frozen(model: nn.Module, name: str, frozen: bool) -> None:
    """Freeze (or release) everything but the head. Frozen BatchNorm layers also stop updating their
    running statistics: the pretrained statistics are part of what is being transferred."""
    backbone, _ = split_head_parameters(model, name)
    for param in backbone:
        param.requires_grad_(not frozen)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()


# A transfer phase: the new head alone (backbone frozen), or the whole network.
Phase = Literal["head", "full"]


def transfer_phases(cfg: TrainConfig, pretrained: bool) -> list[tuple[Phase, int, float]]:
    """[(phase, epochs, peak lr)]: head-only then the whole network for pretrained models with
    ``head_epochs`` > 0 (the backbone's features are worth keeping while the new head is random), else one
    phase. The head phase never takes every epoch: at least one epoch fine-tunes."""
    head = min(cfg.head_epochs, cfg.epochs - 1) if pretrained else 0
    phases = [("head", head, cfg.head_lr)] if head > 0 else []
    return phases + [("full", cfg.epochs - head, cfg.lr)]


class EarlyStopping:
    """Stop after ``patience`` epochs without a strictly better value; 0 = never. ``mode``: "max" (higher
    is better) or "min", the same pair that ranks Train's checkpoints."""

    def __init__(self, patience: int, mode: str = "max"):
        self.patience, self.best_epoch = patience, 0
        self.sign = 1.0 if mode == "max" else -1.0
        self.best = float("-inf")  # sign * value: higher is better in either mode

    def state_dict(self) -> dict[str, float]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.best, self.best_epoch = float(state["best"]), int(state["best_epoch"])

    def update(self, epoch: int, value: float | None) -> bool:
        """Record this epoch's value (None: not reported, never an improvement); True when training
        should stop now."""
        if value is not None and self.sign * value > self.best:
            self.best, self.best_epoch = self.sign * value, epoch
            return False
        return bool(self.patience) and epoch - self.best_epoch >= self.patience


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under torch.compile's and DDP's wrappers (what checkpoints hold)."""
    model = getattr(model, "_orig_mod", model)  # torch.compile
    model = model.module if hasattr(model, "module") else model  # DDP
    return getattr(model, "_orig_mod", model)


@dataclass
class WorkerRun:
    """What every epoch of one worker's run shares, fixed at setup."""

    cfg: TrainConfig
    classes: list[str]
    device: torch.device
    amp: AmpSettings
    mean: torch.Tensor  # (3,) on device: batches arrive as uint8 NHWC and are standardised there
    std: torch.Tensor
    pretrained: bool
    steps_per_epoch: int
    loss_fn: nn.Module
    scaler: torch.amp.GradScaler
    rank: int
    world: int
    session: "Session"  # where the run reports, resumes and gets its data
    teachers: list[Teacher]  # online distillation's (TrainConfig.teacher_checkpoints); [] = none
    sources: list[str]  # the run's data sources, by the rows' source ids (per-source val figures)


class TrainWorkerSession:
    """A Ray Train worker's view of its run: rank and world, device, dataset shards, reports and the
    checkpoint to resume, all Ray Train's own."""

    def __init__(self):
        ctx = ray.train.get_context()
        self.rank, self.world, self.local_world = ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_world_size()

    def device(self) -> torch.device:
        return ray.train.torch.get_device()

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """On the device, and in DDP when the group has more than one worker."""
        return ray.train.torch.prepare_model(model)

    def dataset(self, name: str) -> ray.data.DataIterator:
        return ray.train.get_dataset_shard(name)

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None)

    def checkpoint(self):
        return ray.train.get_checkpoint()


class TrialSession:
    """A Tune trial that trains in its own process, as the only worker (tune.experiment.run_trial): the same
    loop without Train's controller, worker group and dataset actors, each of which is a new process per
    trial. Tune keeps its reports and checkpoints, and continues it from the latest after a fault."""

    rank, world, local_world = 0, 1, 1

    def __init__(self, datasets: dict[str, ray.data.Dataset], use_gpu: bool):
        self.datasets, self.use_gpu = datasets, use_gpu

    def device(self) -> torch.device:
        # Tune gives the trial's actor its GPU alone (CUDA_VISIBLE_DEVICES): it is device 0 here.
        return torch.device("cuda", 0) if self.use_gpu and torch.cuda.is_available() else torch.device("cpu")

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(self.device())

    def dataset(self, name: str) -> ray.data.DataIterator:
        return self.datasets[name].iterator()

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None)

    def checkpoint(self):
        return ray.tune.get_checkpoint()


Session = TrainWorkerSession | TrialSession


def setup_worker(loop_config: dict[str, Any], session: Session) -> tuple[WorkerRun, nn.Module]:
    """Threads and seeds, the model (unwrapped), the loss and what the epochs share."""
    cfg = TrainConfig(**loop_config["train"])
    spec = get_model_spec(cfg.model)
    torch.set_num_threads(resolve_torch_threads(cfg.torch_threads, session.local_world))
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    classes: list[str] = loop_config["classes"]
    model = create_model(cfg.model, num_classes=len(classes), pretrained=False if cfg.init_checkpoint else cfg.pretrained)
    if cfg.init_checkpoint:
        load_initial_weights(model, cfg.init_checkpoint, cfg.model, classes)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # Whether a head-only phase applies: ImageNet features under a new head. A model that starts from one
    # of our own checkpoints has its head trained already, so it fine-tunes whole from the first epoch.
    pretrained = not cfg.init_checkpoint and (
        bool(cfg.pretrained) and spec.pretrained_weights is not None or isinstance(cfg.pretrained, str))
    device = select_device(cfg, session.device())
    amp = amp_settings(cfg, device)
    world = session.world
    steps_per_epoch = max(1, (cfg.epoch_rows or loop_config["train_rows"]) // (cfg.batch_size * world))
    if cfg.max_batches_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_batches_per_epoch)
    weights = loop_config.get("class_weights")
    # Soft targets (CutMix/MixUp rows) and optional class weights, one loss for both.
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing,
                                  weight=torch.tensor(weights, device=device) if weights else None)
    run = WorkerRun(cfg, classes, device, amp, torch.tensor(spec.mean, dtype=torch.float32, device=device),
                    torch.tensor(spec.std, dtype=torch.float32, device=device), pretrained, steps_per_epoch, loss_fn,
                    torch.amp.GradScaler(device.type, enabled=amp.grad_scaler), session.rank, world, session,
                    load_teachers(cfg.teacher_checkpoints, classes, device, cfg.channels_last),
                    list(loop_config.get("sources", [])))
    return run, model


def start_phase(run: WorkerRun, model: nn.Module, phase: tuple[Phase, int, float]):
    """(Re)wrap the model for a transfer phase, with its own optimizer and schedule (warm-up, then cosine
    to 0 over the phase). DDP only synchronises parameters that require grad when it is built, so the
    full phase needs a new wrapper after the head phase."""
    name, epochs, peak_lr = phase
    module = unwrap(model)
    if run.pretrained:
        set_backbone_frozen(module, run.cfg.model, frozen=name == "head")
    model = maybe_compile(run.session.prepare_model(module), run.cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=peak_lr, weight_decay=run.cfg.weight_decay)
    total = run.steps_per_epoch * epochs
    return model, optimizer, warmup_cosine(optimizer, total, warmup_steps=min(total // 10, run.steps_per_epoch))


def epoch_batches(shard, cfg: TrainConfig, epoch: int, device: torch.device) -> Iterable[dict[str, torch.Tensor]]:
    """One epoch of this worker's training shard, shuffled locally with a seed of (seed, epoch)."""
    return shard.iter_torch_batches(batch_size=cfg.batch_size, drop_last=True,
                                    local_shuffle_buffer_size=max(SHUFFLE_BUFFER_ROWS, cfg.batch_size * 4),
                                    local_shuffle_seed=cfg.seed + epoch, **iterator_options(cfg, device))


def train_one_epoch(run: WorkerRun, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                    batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
    """At most ``steps_per_epoch`` optimizer steps (one per batch; the schedule steps with them)."""
    started = time.perf_counter()
    seen, loss_sum, correct, first_batch_at = 0, 0.0, 0, None
    for step, batch in enumerate(batches):
        if step >= run.steps_per_epoch:
            break
        first_batch_at = first_batch_at or time.time()
        images = standardize(batch["image"], run.mean, run.std, run.cfg.channels_last)
        labels, target = batch["label"], batch["target"]
        if run.teachers:
            alpha = run.cfg.distill_alpha
            target = (1 - alpha) * target + alpha * teacher_probabilities(run.teachers, batch["image"], run.amp,
                                                                          run.device, run.cfg.channels_last)
        with run.amp.autocast(run.device):
            logits = model(images)
            loss = run.loss_fn(logits, target)
        optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(optimizer)
        run.scaler.update()
        scheduler.step()
        seen += len(labels)
        loss_sum += loss.item() * len(labels)
        # Against the dominant class of each (possibly mixed) target.
        correct += int((logits.argmax(1) == target.argmax(1)).sum())
    return {"train_loss": loss_sum / max(1, seen), "train_accuracy": correct / max(1, seen),
            "train_images_per_s": seen * run.world / max(time.perf_counter() - started, 1e-9),
            "first_batch_at": first_batch_at or time.time()}


def report_epoch(run: WorkerRun, model: nn.Module, metrics: dict[str, Any], train_state: dict[str, Any]) -> None:
    """Report the epoch to Train (and through it Tune) with rank 0's checkpoint of it; Train keeps the best
    by the run's metric, and the latest (what a restarted worker continues from)."""
    spec = get_model_spec(run.cfg.model)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint_dir = None
        if run.rank == 0:
            save_checkpoint(tmp, unwrap(model), {
                "model": run.cfg.model, "classes": run.classes, "input_size": run.cfg.input_size or spec.input_size,
                "mean": list(spec.mean), "std": list(spec.std), "epoch": metrics["epoch"],
                "train_config": run.cfg, "metrics": metrics, "runtime": runtime_record(run),
            }, train_state)
            checkpoint_dir = tmp
        run.session.report(metrics, checkpoint_dir)


def runtime_record(run: WorkerRun) -> rundir.TrainRuntime:
    """What this run actually used: the checkpoint meta's ``runtime`` (scripts/gpu_check.sh prints it)."""
    gpu = torch.cuda.get_device_name(run.device) if run.device.type == "cuda" else None
    loader = {k: v for k, v in iterator_options(run.cfg, run.device).items() if k != "device"}
    return rundir.TrainRuntime(device=str(run.device), gpu=gpu, torch=torch.__version__,
                               autocast=str(run.amp.dtype).removeprefix("torch.") if run.amp.enabled else "off",
                               grad_scaler=run.amp.grad_scaler, channels_last=run.cfg.channels_last,
                               torch_compile=run.cfg.torch_compile, **loader,
                               workers=run.world, torch_threads=torch.get_num_threads())


@dataclass
class Resumed:
    """Where a restarted worker picks up: the last reported epoch's weights and training state."""
    epoch: int
    model_state: dict[str, torch.Tensor]
    train_state: dict[str, Any]


def resume_point(session: Session) -> Resumed | None:
    """The run's latest checkpoint, when Train restarts this worker group (a worker died, the trial was
    resumed by Tune; Train hands every worker the same one) or Tune continues a trial that trains in its own
    process."""
    checkpoint = session.checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        loaded = load_train_state(directory)
    if loaded is None:  # a checkpoint written without training state: start over
        return None
    return Resumed(int(loaded[1]["epoch"]), *loaded)


def start_figures(loop_config: dict[str, Any], loop_started_at: float, first_batch_at: float) -> dict[str, float]:
    """A run's fixed start, in seconds: from the caller's ``started_at`` (the Tune trial's code) to this
    loop (Train's controller, worker group, imports), and from the loop to the first training batch
    (model, data shards, the pipeline's first output)."""
    figures = {"start_first_batch_s": first_batch_at - loop_started_at}
    if "started_at" in loop_config:
        figures["start_workers_s"] = loop_started_at - loop_config["started_at"]
        figures["start_seconds"] = first_batch_at - loop_config["started_at"]
    return figures


def train_loop_per_worker(loop_config: dict[str, Any], session: Session | None = None) -> None:
    """loop_config: {"train": TrainConfig as dict, "classes": [...], "train_rows": int,
    "class_weights": [...] or None, optionally "started_at": the caller's time.time()}.
    ``session``: None in a Ray Train worker (Train's own); a TrialSession in a Tune trial's own process."""
    loop_started_at = time.time()
    session = session or TrainWorkerSession()
    run, model = setup_worker(loop_config, session)
    cfg = run.cfg
    train_shard, val_shard = session.dataset("train"), session.dataset("val")
    phase_of_epoch = [p for p in transfer_phases(cfg, run.pretrained) for _ in range(p[1])]
    stopper, phase = EarlyStopping(cfg.early_stopping_patience, cfg.mode), None
    resumed = resume_point(session)
    if resumed:
        model.load_state_dict(resumed.model_state)
        stopper.load_state_dict(resumed.train_state["early_stopping"])
        if resumed.train_state["stop"]:
            return
    for epoch in range((resumed.epoch if resumed else 0) + 1, cfg.epochs + 1):
        if phase_of_epoch[epoch - 1] != phase:
            phase = phase_of_epoch[epoch - 1]
            model, optimizer, scheduler = start_phase(run, model, phase)
            if resumed and epoch == resumed.epoch + 1 and resumed.train_state["phase"] == phase[0]:
                optimizer.load_state_dict(resumed.train_state["optimizer"])
                scheduler.load_state_dict(resumed.train_state["scheduler"])
                run.scaler.load_state_dict(resumed.train_state["scaler"])
        model.train()
        if run.pretrained and phase[0] == "head":
            set_backbone_frozen(unwrap(model), cfg.model, frozen=True)  # model.train() re-enabled frozen BN
        started = time.perf_counter()
        metrics = {"epoch": epoch, **train_one_epoch(run, model, optimizer, scheduler,
                                                     epoch_batches(train_shard, cfg, epoch, run.device))}
        first_batch_at = metrics.pop("first_batch_at")
        if epoch == (resumed.epoch if resumed else 0) + 1:
            metrics.update(start_figures(loop_config, loop_started_at, first_batch_at))
        # Every worker reads the whole (unsplit) val set and must consume it: Ray Train feeds an unsplit
        # dataset to all ranks together, and a rank that skips it stalls the others. Rank 0's figures
        # are the ones Tune sees.
        val = evaluate(model, val_shard.iter_torch_batches(batch_size=256), run.device, run.classes, run.amp,
                       run.mean, run.std, run.cfg.channels_last, run.sources)
        metrics.update({"epoch_seconds": time.perf_counter() - started, "lr": scheduler.get_last_lr()[0],
                        "head_only": float(phase[0] == "head"),  # 1 while the backbone is frozen
                        # The epoch this worker group restarted from (0: never restarted): the trial's
                        # results say whether, and where, it continued after a fault.
                        "resumed_from_epoch": resumed.epoch if resumed else 0,
                        **{f"val_{k}": v for k, v in val.items()}})
        # Early stopping on the run's metric; the best epoch's checkpoint is the one Train keeps.
        stop = stopper.update(epoch, metrics.get(cfg.metric))
        metrics["best_epoch"] = stopper.best_epoch
        report_epoch(run, model, metrics, {
            "epoch": epoch, "phase": phase[0], "stop": stop, "early_stopping": stopper.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": run.scaler.state_dict()})
        if stop:
            break
