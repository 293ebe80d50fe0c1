"""Configuration as data: dataclasses that travel from the CLI to Ray workers as plain dicts.

They are pydantic dataclasses (extra keys forbidden): the dataclass API the code uses (``dataclasses.replace``,
``fields``, ``asdict``) stays, and every construction validates types, ranges and choices, so that a bad
value fails where the config is built (a preset at import, ``--set`` before Ray starts), never deep in the
stage that first reads it. Errors are ConfigError, naming the key, the value and where it came from. No torch
here: a Serve replica imports this module through raymotion.rundir.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import re
import typing
from dataclasses import field
from typing import Annotated, Any, Iterable, Literal

import yaml
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass

# What "best" means unless a preset says otherwise: Tune's objective, Train's kept checkpoint and early
# stopping all read one (metric, mode) pair (see TuneSettings and TrainConfig.metric). The mean over the
# run's data sources of each one's val macro-F1 (with one source, its macro-F1): each source counts alike
# whatever its size, since the service must answer studio crops and webcam faces alike, and macro-F1
# because the classes are imbalanced.
DEFAULT_METRIC = "val_source_macro_f1"
Mode = Literal["max", "min"]
ClassWeighting = Literal["none", "balanced"]
PlacementStrategy = Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]  # Ray placement group strategies
AmpDtype = Literal["auto", "bf16", "fp16"]
Search = Literal["optuna", "random"]
Scheduler = Literal["asha", "fifo"]
# How the ensemble pools its calibrated members (raymotion.export.mixture): weighted mean or weighted
# geometric mean.
EnsembleRule = Literal["linear", "log-linear"]

# The model registry's names (raymotion.models), listed here so that configs can be checked without
# importing torch; raymotion.models refuses to register a name missing here and fails at import when a
# name here is not registered, so the two cannot drift apart.
MODEL_NAMES = ("efficientnet_lite0", "efficientnet_lite2", "hf_vit", "lenet", "mobilenet_v2", "resnet34", "vit")

# Value types with their ranges: a value outside fails when the config is built.
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
NonNegative = Annotated[float, Field(ge=0.0)]
Positive = Annotated[float, Field(gt=0.0)]
Count = Annotated[int, Field(ge=0)]
AtLeastOne = Annotated[int, Field(ge=1)]


class ConfigError(ValueError):
    """A configuration key or value that does not exist; the message names it and where it came from."""


def check_keys(cls: type, keys: Iterable[str], source: str, also: Iterable[str] = ()) -> None:
    """Raise ConfigError for any of ``keys`` that is not a field of dataclass ``cls`` (or in ``also``): a
    misspelt key would otherwise change nothing, silently."""
    known = {f.name for f in dataclasses.fields(cls)} | set(also)
    unknown = sorted(set(keys) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown {cls.__name__} key(s) {', '.join(map(repr, unknown))}; "
                          f"known keys: {', '.join(sorted(known))}")


def check_model_names(names: Iterable[str], source: str) -> None:
    """Raise ConfigError for a name that is not a registered model: a misspelt name in a preset would
    otherwise apply to nothing, silently, and one in a config would fail only once a trial builds it."""
    unknown = [name for name in names if name not in MODEL_NAMES]
    if unknown:
        raise ConfigError(f"{source}: unknown model(s) {', '.join(map(repr, unknown))}; "
                          f"known models: {', '.join(MODEL_NAMES)}")


# What the train loop reports every epoch (raymotion.train.loop: train_one_epoch, evaluate, source_metrics)
# that can rank epochs: the figures without a class or source in their name, and the per-class and
# per-source families. tests/test_config.py checks these against the loop's own evaluate.
EPOCH_METRICS = ("epoch", "train_loss", "train_accuracy")
VAL_FIGURES = ("accuracy", "top2_accuracy", "macro_f1")  # classification_metrics, besides recall_<class>
VAL_METRICS = tuple(f"val_{name}" for name in (*VAL_FIGURES, "loss", "source_macro_f1"))
_METRIC_FORM = re.compile(rf"val_(?:\w+_)?(?:{'|'.join(VAL_FIGURES)}|recall_\w+)")


def metric_names(classes: Iterable[str], sources: Iterable[str] = ()) -> list[str]:
    """Every metric an epoch reports that ``metric`` may name, for a run of these classes and data sources
    (per-source figures only with two or more sources, as the loop reports them)."""
    classes, sources = list(classes), list(sources)
    figures = [*VAL_FIGURES, *(f"recall_{c}" for c in classes)]
    per_source = [f"val_{s}_{f}" for s in sources for f in figures] if len(sources) > 1 else []
    return [*EPOCH_METRICS, *VAL_METRICS, *(f"val_recall_{c}" for c in classes), *per_source]


def check_metric_form(metric: str, source: str) -> None:
    """Before the run's classes and sources are known: ``metric`` has the form of a reported metric."""
    if metric not in EPOCH_METRICS + VAL_METRICS and not _METRIC_FORM.fullmatch(metric):
        raise ConfigError(f"{source}: metric {metric!r} is not one the train loop reports; it reports "
                          f"{', '.join(EPOCH_METRICS + VAL_METRICS)}, val_recall_<class> and, with several "
                          f"data sources, val_<source>_<{'|'.join(VAL_FIGURES)}|recall_<class>>")


def check_metric(metric: str, classes: Iterable[str], sources: Iterable[str], source: str) -> None:
    """Once the data is open (before anything trains): ``metric`` is one this run's epochs will report."""
    known = metric_names(classes, sources)
    if metric not in known:
        raise ConfigError(f"{source}: metric {metric!r} is not reported by this run's epochs; "
                          f"they report {', '.join(known)}")


def _field_hint(cls: Any, loc: tuple) -> Any:
    """The type hint at ``loc`` (field names, dict keys, tuple indices) below dataclass ``cls``; None
    where it cannot be followed."""
    hint = cls
    for part in loc:
        while typing.get_origin(hint) is Annotated:
            hint = typing.get_args(hint)[0]
        if dataclasses.is_dataclass(hint) and isinstance(part, str):
            hint = typing.get_type_hints(hint, include_extras=True).get(part)
        elif typing.get_origin(hint) in (dict, tuple, list):
            hint = typing.get_args(hint)[-1 if typing.get_origin(hint) is dict else 0]
        else:
            return None
    while typing.get_origin(hint) is Annotated:
        hint = typing.get_args(hint)[0]
    return hint


def describe_errors(cls: type, err: ValidationError) -> str:
    """One line naming each bad key, its value and what it must be, e.g. ``TrainConfig.epochs='abc': Input
    should be a valid integer``; unknown keys as check_keys names them."""
    lines, unknown = [], {}
    for e in err.errors():
        loc, path = e["loc"], ".".join([cls.__name__, *map(str, e["loc"])])
        if e["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
            unknown.setdefault(loc[:-1], []).append(str(loc[-1]))
        elif e["type"] == "value_error" and isinstance(e.get("ctx", {}).get("error"), ConfigError):
            lines.append(str(e["ctx"]["error"]))  # a cross-field check of __post_init__, already worded
        elif e["type"] == "literal_error":
            hint = _field_hint(cls, loc)
            choices = (", ".join(map(repr, typing.get_args(hint))) if typing.get_origin(hint) is Literal
                       else e["ctx"]["expected"])
            lines.append(f"{path} must be one of {choices}, not {e['input']!r}")
        else:
            lines.append(f"{path}={e['input']!r}: {e['msg']}")
    for parent, keys in unknown.items():
        owner = _field_hint(cls, parent)
        known = sorted(f.name for f in dataclasses.fields(owner)) if dataclasses.is_dataclass(owner) else []
        name = owner.__name__ if dataclasses.is_dataclass(owner) else "config"
        lines.append(f"{'.'.join([cls.__name__, *map(str, parent)])}: unknown {name} key(s) "
                     f"{', '.join(map(repr, keys))}; known keys: {', '.join(known)}")
    return "; ".join(lines)


def config_dataclass(cls: type | None = None, *, frozen: bool = False):
    """A pydantic dataclass that refuses unknown keys and raises ConfigError (naming the key and value) in
    place of pydantic's ValidationError, so that every caller handles one error type."""
    def wrap(cls: type) -> type:
        cls = pydantic_dataclass(cls, frozen=frozen, config=ConfigDict(extra="forbid"))
        validate = cls.__init__

        @functools.wraps(validate)
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            try:
                validate(self, *args, **kwargs)
            except ValidationError as err:
                raise ConfigError(describe_errors(cls, err)) from None

        cls.__init__ = __init__
        return cls

    return wrap(cls) if cls is not None else wrap


def check_train_keys(keys: Iterable[str], source: str) -> None:
    """What ``TrainConfig.replace`` takes: its fields and, by their own names, the augmentation fields."""
    check_keys(TrainConfig, keys, source, also=[f.name for f in dataclasses.fields(Augmentation)])


@functools.cache
def _train_key_types() -> dict[str, TypeAdapter]:
    """Key -> a validator of its value (type and range), for TrainConfig's own and augmentation keys."""
    hints = {**typing.get_type_hints(Augmentation, include_extras=True),
             **typing.get_type_hints(TrainConfig, include_extras=True)}
    return {name: TypeAdapter(hint) for name, hint in hints.items()}


def typed_train_changes(changes: dict[str, Any], source: str) -> dict[str, Any]:
    """``changes`` (TrainConfig.replace's keys) typed from the schema: "3e-4" a float, "abc" for an int a
    ConfigError naming the key, the value and ``source``. Keys must be known (check_train_keys)."""
    check_train_keys(changes, source)
    check_model_names([changes["model"]] if "model" in changes else [], f"{source}: model")
    out = {}
    for key, value in changes.items():
        try:
            out[key] = _train_key_types()[key].validate_python(value)
        except ValidationError as err:
            reasons = "; ".join(e["msg"] for e in err.errors())
            raise ConfigError(f"{source}: {key}={value!r}: {reasons}") from None
    return out


@config_dataclass(frozen=True)
class Augmentation:
    """The random train-time transforms, passed whole to data.pipeline.augment_mix. Each is off at its
    neutral value (0, or 1.0 for crop_scale); ``Augmentation.only(...)`` has every other one off."""

    rotation_deg: Annotated[float, Field(ge=0.0, le=180.0)] = 10.0
    hflip_p: Probability = 0.5
    contrast: Probability = 0.2
    brightness: Probability = 0.1
    crop_scale: Annotated[float, Field(gt=0.0, le=1.0)] = 0.85  # random resized crop: minimum area fraction kept
    translate: Annotated[float, Field(ge=0.0, lt=0.5)] = 0.05  # face-box shift, up to this fraction of the side per axis
    # Camera degradations (data.augment.degrade_batch), each with its probability per image: grey, a face of
    # few pixels (down to downscale_min_px..48 px and back up), blur, JPEG re-compression. On by default, at
    # rates that leave most training images clean: served faces come from webcams and phones.
    greyscale_p: Probability = 0.2
    downscale_p: Probability = 0.25
    downscale_min_px: Annotated[int, Field(ge=1, le=48)] = 20
    blur_p: Probability = 0.15
    jpeg_p: Probability = 0.25
    jpeg_quality_min: Annotated[int, Field(ge=1, le=100)] = 30
    # Batch-level mixing (soft labels): at most one of CutMix / MixUp per batch.
    cutmix_p: Probability = 0.0
    cutmix_alpha: Positive = 1.0
    mixup_p: Probability = 0.0
    mixup_alpha: Positive = 0.2

    @classmethod
    def only(cls, **on: float) -> "Augmentation":
        neutral = dict(rotation_deg=0.0, hflip_p=0.0, contrast=0.0, brightness=0.0, crop_scale=1.0, translate=0.0,
                       cutmix_p=0.0, mixup_p=0.0, greyscale_p=0.0, downscale_p=0.0, blur_p=0.0, jpeg_p=0.0)
        return cls(**{**neutral, **on})

    @classmethod
    def camera(cls) -> "Augmentation":
        """"Degraded val": every camera degradation, more often than training draws them (export scores
        every member and the ensemble on val through it, seeded: data.pipeline.camera_degraded)."""
        return cls.only(translate=0.08, greyscale_p=0.5, downscale_p=0.6, downscale_min_px=20, blur_p=0.3,
                        jpeg_p=0.6, jpeg_quality_min=25)

    def per_image(self) -> dict[str, float]:
        """data.augment.augment_batch's arguments."""
        return dict(rotation_deg=self.rotation_deg, hflip_p=self.hflip_p, contrast=self.contrast,
                    brightness=self.brightness, crop_scale=self.crop_scale, translate=self.translate)

    def degradations(self) -> dict[str, float]:
        """data.augment.degrade_batch's arguments."""
        return dict(greyscale_p=self.greyscale_p, downscale_p=self.downscale_p,
                    downscale_min_px=self.downscale_min_px, blur_p=self.blur_p, jpeg_p=self.jpeg_p,
                    jpeg_quality_min=self.jpeg_quality_min)

    def degrades(self) -> bool:
        return any(p > 0 for p in (self.greyscale_p, self.downscale_p, self.blur_p, self.jpeg_p))

    def per_batch(self) -> dict[str, float]:
        """data.mixing.mix_batch's arguments."""
        return dict(cutmix_p=self.cutmix_p, cutmix_alpha=self.cutmix_alpha, mixup_p=self.mixup_p,
                    mixup_alpha=self.mixup_alpha)

    def summary(self) -> str:
        """The augmentations in force, for the pre-training summary."""
        parts = [f"rotation +-{self.rotation_deg:.0f} deg" if self.rotation_deg > 0 else "",
                 f"hflip p={self.hflip_p:.2f}" if self.hflip_p > 0 else "",
                 f"contrast +-{self.contrast:.2f}" if self.contrast > 0 else "",
                 f"brightness +-{self.brightness:.2f}" if self.brightness > 0 else "",
                 f"random resized crop >= {self.crop_scale:.2f} area" if self.crop_scale < 1 else "",
                 f"box shift +-{self.translate:.2f}" if self.translate > 0 else "",
                 f"grey p={self.greyscale_p:.2f}" if self.greyscale_p > 0 else "",
                 f"down-up to {self.downscale_min_px}-48 px p={self.downscale_p:.2f}" if self.downscale_p > 0 else "",
                 f"blur p={self.blur_p:.2f}" if self.blur_p > 0 else "",
                 f"JPEG q>={self.jpeg_quality_min} p={self.jpeg_p:.2f}" if self.jpeg_p > 0 else "",
                 f"CutMix p={self.cutmix_p:.2f} alpha={self.cutmix_alpha}" if self.cutmix_p > 0 else "",
                 f"MixUp p={self.mixup_p:.2f} alpha={self.mixup_alpha}" if self.mixup_p > 0 else ""]
        return ", ".join(p for p in parts if p) or "none"


@config_dataclass
class TrainConfig:
    """Everything one training run needs. Tune overrides fields by name from its search space."""

    model: str = "lenet"
    input_size: Count = 0  # 0: the model's default input size (see raymotion.models)
    pretrained: bool | str = True  # True: the packaged ImageNet weights; str: a local state-dict path
    epochs: AtLeastOne = 3
    batch_size: AtLeastOne = 64
    lr: Positive = 1e-3  # the whole network's learning rate (after the head-only phase, if any)
    # Transfer learning, phase 1: this many epochs train only the new head (backbone frozen) at head_lr;
    # the remaining epochs fine-tune everything at lr. 0 = one phase. Ignored for models without weights.
    head_epochs: Count = 0
    head_lr: Positive = 3e-3
    # Early stopping on `metric`: stop after this many epochs without a new best (0 = never).
    early_stopping_patience: Count = 0
    # The reported metric that ranks epochs (Train's kept checkpoint, early stopping) and its direction.
    # Tune sets both from its TuneSettings, so that trials, checkpoints and stopping agree.
    metric: str = DEFAULT_METRIC
    mode: Mode = "max"
    weight_decay: NonNegative = 0.05
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    # Applied on Ray Data CPU workers to the training stream only (data.pipeline.train_stream).
    augmentation: Augmentation = field(default_factory=lambda: Augmentation())
    # Distillation: a rundir.SoftLabels file (a teacher ensemble's probabilities on the training images);
    # each image then trains against (1 - distill_alpha) * its label + distill_alpha * the teachers' view.
    # "" = labels only.
    soft_labels: str = ""
    distill_alpha: Probability = 0.5
    # Online distillation, instead of soft_labels: raymotion checkpoint directories (same classes) of
    # teachers that score every training batch as the student sees it, augmented and mixed, each at its own
    # input size; their geometric mean takes soft_labels' place in the target (weight distill_alpha). A
    # teacher that sees the same view as the student, every epoch a new one, teaches what it knows about that
    # view ("patient and consistent", Beyer et al. 2022); soft labels of the training images as stored are
    # the teachers' memory of images they were trained on, close to the labels themselves. () = none.
    teacher_checkpoints: tuple[str, ...] = ()
    # A raymotion checkpoint directory (model.pt + meta.json) of this same model and classes: training
    # starts from its weights rather than from ``pretrained``'s (the distilled student starts from the run's
    # own member of its model, see Preset.student_from_member). "" = none.
    init_checkpoint: str = ""
    # Class imbalance: "none" or "balanced" (loss weights n / (k * n_class)).
    class_weighting: ClassWeighting = "none"
    # Several data sources: each source's share of an epoch's training rows is proportional to its number of
    # training images to this power (1: as the data is; 0: equal shares), the epoch keeping the sources'
    # total; ``source_shares`` (source name -> share) sets the shares outright instead. Between 0 and 1 a
    # large source is sampled less than its size and a small one more, without repeating the small one
    # as often as equal shares would (temperature sampling, as multilingual models mix languages).
    source_share_power: NonNegative = 0.5
    source_shares: dict[str, NonNegative] = field(default_factory=dict)
    # 0 = full epochs. A cap bounds a trial's time whatever the data's size (tests, benchmarks).
    max_batches_per_epoch: Count = 0
    # Training rows one epoch draws (after source sampling: every source's rate scaled alike), whatever the
    # batch size; 0 = one pass over the training rows. Below their count each epoch is a fresh random part
    # of them, and the stream draws only those (max_batches_per_epoch stops the loop, not the stream).
    epoch_rows: Count = 0
    seed: int = 0
    # Scaling: device-agnostic; GPU and AMP are switched on here, not in code (laptop and cluster differ
    # only in these fields, see docs/cluster.md).
    num_workers: AtLeastOne = 1
    cpus_per_worker: Positive = 1.0
    use_gpu: bool = False
    gpus_per_worker: Positive = 1.0  # with use_gpu: Ray GPUs per Train worker (a fraction shares one GPU)
    # How Train places its workers: PACK fills a node first (least network), SPREAD puts them on distinct
    # nodes where it can (a lost node then takes fewer workers with it; what the multi-node test checks).
    placement_strategy: PlacementStrategy = "PACK"
    # Train's restarts of the worker group after a worker dies (actor killed, OOM, node lost), each from
    # the run's latest checkpoint; beyond them the trial errors (and Tune's own retries take over).
    max_failures: Count = 2
    # Mixed precision (autocast; weights and checkpoints stay float32). "auto": on CUDA bf16 where the GPU
    # has it (Ampere and later), else fp16 with a GradScaler; on the CPU bf16 where the CPU computes it
    # natively (AVX-512 BF16 or AMX; oneDNN says which), else float32, since emulated bf16 is slower than
    # float32. "bf16"/"fp16" force that type on either device. See train.loop.amp_settings.
    amp: bool = False
    amp_dtype: AmpDtype = "auto"
    # Model and batches in NHWC memory (torch.channels_last): the layout oneDNN's CPU convolutions and
    # cuDNN's tensor cores are fastest on (bench train-step compares the two).
    channels_last: bool = True
    torch_compile: bool = False  # torch.compile the model in each worker (worth it on GPUs, long first steps)
    # Ray Data iterator: batches fetched ahead of the training step, and host memory pinned for the copy
    # to the GPU (CUDA only: pinning needs a CUDA device).
    prefetch_batches: Count = 1
    pin_memory: bool = True
    # Threads torch may use inside a worker; 0 keeps Ray's default (its CPU share).
    torch_threads: Count = 0
    # Keys a preset or --set chose (tune's base_config): the search space leaves them as they are and Tune
    # searches the rest. Without this a searched key's start point silently replaced the chosen value.
    pinned: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_model_names([self.model], "TrainConfig.model")
        check_metric_form(self.metric, "TrainConfig.metric")
        # Absolute where the config is made (the driver): Train workers and Tune trials run elsewhere. A tuple
        # again after the JSON that configs travel as.
        self.teacher_checkpoints = tuple(os.path.abspath(path) for path in self.teacher_checkpoints)
        self.init_checkpoint = os.path.abspath(self.init_checkpoint) if self.init_checkpoint else ""
        self.pinned = tuple(self.pinned)
        check_train_keys(self.pinned, "TrainConfig.pinned")
        if self.soft_labels and self.teacher_checkpoints:
            raise ConfigError("TrainConfig: soft_labels (stored) and teacher_checkpoints (online) are two ways to "
                              "distil; give one")

    def replace(self, source: str, /, **changes: Any) -> "TrainConfig":
        """A copy with ``changes``; ``source`` (preset, space file, CLI flag) names where they came from,
        for the error on a key that is neither a field nor an augmentation field. Augmentation fields go by
        their own names (``rotation_deg=5``), so that search spaces and ``--set`` stay flat. ``source`` is
        positional-only so that a change named "source" (``--set source=...``) is refused as an unknown key,
        not taken for this argument."""
        check_train_keys(changes, source)
        augmentation_keys = {f.name for f in dataclasses.fields(Augmentation)}
        own = {k: v for k, v in changes.items() if k not in augmentation_keys}
        augmentation = {k: v for k, v in changes.items() if k in augmentation_keys}
        try:
            if augmentation:
                own["augmentation"] = dataclasses.replace(self.augmentation, **augmentation)
            return dataclasses.replace(self, **own)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@config_dataclass
class ExportConfig:
    """How the best checkpoints become the served bundle (raymotion.export.bundle)."""

    # Build static QDQ and dynamic int8 per model and serve the better one when it keeps val accuracy
    # within int8_tolerance_points of fp32 and is faster at batch 1; else fp32, and the manifest says why.
    # Test-time augmentation in the exported graph: logits averaged over the image and its mirror image,
    # since a face is as likely either way round (twice the compute per image).
    flip_tta: bool = True
    int8: bool = True
    int8_tolerance_points: NonNegative = 0.5
    # int8 is served only when its batch-1 latency is at most this x fp32's. Whether it is depends on the
    # CPU (int8 convolutions lose without VNNI), so tests force either outcome through this (inf / 0).
    int8_max_latency_ratio: NonNegative = 1.0
    int8_range_images: AtLeastOne = 300  # training images that set static int8's activation ranges (as many again pick its setting)
    latency_seconds: Positive = 10.0  # time budget of the fp32-vs-int8 batch-1 timing, per model
    # The geometric mean by default: members that err on different classes combine better in log space, where
    # one member's confident "not this class" outvotes another's mistake (docs/design.md, "The ensemble's
    # pooling rule"); the manifest records both rules' figures either way.
    ensemble_rule: EnsembleRule = "log-linear"

    @staticmethod
    def add_arguments(parser) -> None:
        """The export flags shared by ``raymotion.tune`` and ``raymotion.export`` (argparse)."""
        parser.add_argument("--int8", action=argparse.BooleanOptionalAction, default=ExportConfig.int8,
                            help="build int8 candidates and serve one when it wins (--no-int8: fp32 only)")
        parser.add_argument("--flip-tta", action=argparse.BooleanOptionalAction, default=ExportConfig.flip_tta,
                            help="average the logits of the image and its mirror image in the exported graph")
        parser.add_argument("--int8-tolerance", type=float, default=ExportConfig.int8_tolerance_points,
                            help="val accuracy points an int8 model may lose and still be served")
        parser.add_argument("--int8-max-latency-ratio", type=float, default=ExportConfig.int8_max_latency_ratio,
                            help="serve int8 only when its batch-1 latency is at most this x fp32 (inf: any, 0: never)")
        parser.add_argument("--int8-latency-seconds", type=float, default=ExportConfig.latency_seconds,
                            help="time budget of each model's fp32-vs-int8 batch-1 timing")
        parser.add_argument("--ensemble-rule", choices=typing.get_args(EnsembleRule), default=ExportConfig.ensemble_rule,
                            help="pool the calibrated members by their weighted mean (linear) or geometric mean")

    @classmethod
    def from_arguments(cls, args) -> "ExportConfig":
        return cls(flip_tta=args.flip_tta, int8=args.int8, int8_tolerance_points=args.int8_tolerance,
                   int8_max_latency_ratio=args.int8_max_latency_ratio, latency_seconds=args.int8_latency_seconds,
                   ensemble_rule=args.ensemble_rule)


@config_dataclass
class TuneSettings:
    """How a per-model Tune experiment runs."""

    num_samples: AtLeastOne = 2
    max_concurrent_trials: AtLeastOne = 1  # 2 CPUs: trials in sequence; a cluster raises this
    # "optuna": TPE (seeded, starting at the space's start point); "random": Tune's random sampling of the
    # same space (the baseline bench tune compares against).
    search: Search = "optuna"
    # "asha": stop bad trials early (by epoch); "fifo": every trial runs all its epochs.
    scheduler: Scheduler = "asha"
    grace_period: AtLeastOne = 1  # ASHA: epochs before a trial may be stopped
    reduction_factor: Annotated[int, Field(ge=2)] = 2
    metric: str = DEFAULT_METRIC
    mode: Mode = "max"
    seed: int = 0
    # Tune's own retries of a trial that errors (after Train's restarts, TrainConfig.max_failures, ran
    # out); each retry continues from the trial's latest checkpoint.
    trial_max_failures: Count = 1
    # A trial of one Train worker trains in the trial's own process (train.loop.TrialSession): Ray Train's
    # controller, worker group and dataset actors are each a new process, started one after another before
    # the first batch, per trial. False: a worker group of one, as with more workers.
    one_worker_in_trial: bool = True

    def __post_init__(self) -> None:
        check_metric_form(self.metric, "TuneSettings.metric")


@config_dataclass
class Preset:
    """A named bundle of defaults for the tune command. The shipped ones are YAML files,
    ``raymotion/presets/<name>.yaml`` (load_preset_file; the format: docs/presets.md)."""

    name: str
    models: tuple[str, ...] = ("lenet", "mobilenet_v2")  # what --models defaults to
    tune: TuneSettings = field(default_factory=TuneSettings)
    # Per-model trial counts (else tune.num_samples): on 2 CPUs the big models get one long trial.
    samples: dict[str, AtLeastOne] = field(default_factory=dict)
    # Per-model overrides of TrainConfig, applied before the search space ("*": every model).
    train_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Distillation (tune --distill, the default): these models train after the others, against the soft
    # labels of the others' ensemble (TrainConfig.soft_labels); ``student`` is then trained against the
    # final ensemble's into RUN_DIR/student, a bundle served alone (its overrides after the model's own).
    students: tuple[str, ...] = ()
    student: str | None = None
    student_overrides: dict[str, Any] = field(default_factory=dict)
    # The student starts from the run's trained member of its own model (TrainConfig.init_checkpoint),
    # when the run has one, instead of from ImageNet: it then begins at that member's accuracy and spends
    # its epochs moving toward the ensemble rather than learning the faces again.
    student_from_member: bool = False
    # These students learn from the teachers online (TrainConfig.teacher_checkpoints: every teacher scores each
    # augmented batch) rather than from their ensemble's stored soft labels of the training images; online
    # costs each of their epochs the teachers' forward passes.
    online_teachers: tuple[str, ...] = ()
    # The same for the single ``student``: the final ensemble's served members teach it online.
    student_online_teachers: bool = False

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """At definition, and again where the tune command applies the preset (its dicts may be edited
        after construction): a misspelt model name, key or value fails naming it, not when its model runs
        (or, for a model name, never: an override of no model applies to nothing)."""
        where = f"preset {self.name!r}"
        check_model_names(self.models, f"{where}, models")
        check_model_names([m for m in self.train_overrides if m != "*"], f"{where}, train_overrides")
        check_model_names(self.samples, f"{where}, samples")
        check_model_names(self.students, f"{where}, students")
        check_model_names([self.student] if self.student else [], f"{where}, student")
        check_model_names(self.online_teachers, f"{where}, online_teachers")
        for model, overrides in self.train_overrides.items():
            typed_train_changes(overrides, f"{where}, overrides of model {model!r}")
        typed_train_changes(self.student_overrides, f"{where}, student_overrides")
        if set(self.online_teachers) - set(self.students):
            raise ConfigError(f"preset {self.name!r}: online_teachers {sorted(set(self.online_teachers) - set(self.students))} "
                              f"are not among its students {list(self.students)}")


# The shipped presets, one YAML file each (package data): a file's keys are Preset's fields, less ``name``,
# which is the file's name.
PRESETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets")


def load_preset_file(path: str) -> Preset:
    """The preset in YAML file ``path``, validated as any Preset (types, ranges, model names, override keys
    and values); a ConfigError names the bad key or value and the file."""
    name = os.path.splitext(os.path.basename(path))[0]
    where = f"preset file {path}"
    try:
        with open(path) as f:
            doc = yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML: {err}") from None
    doc = {} if doc is None else doc
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: must be a mapping of Preset keys, not {type(doc).__name__}")
    if "name" in doc:
        raise ConfigError(f"{where}: 'name' is not a key of a preset file; the preset's name is the file's ({name!r})")
    check_keys(Preset, map(str, doc), where)
    try:
        return Preset(name=name, **doc)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def preset_names(directory: str = PRESETS_DIR) -> list[str]:
    """The presets shipped in ``directory``: its ``<name>.yaml`` files."""
    return sorted(entry.removesuffix(".yaml") for entry in os.listdir(directory) if entry.endswith(".yaml"))


def load_preset(name: str, directory: str = PRESETS_DIR) -> Preset:
    """The shipped preset ``name`` (``<directory>/<name>.yaml``), read and validated anew."""
    if name not in preset_names(directory):
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(preset_names(directory))}")
    return load_preset_file(os.path.join(directory, f"{name}.yaml"))


# Read at import, so that a bad shipped preset fails at once, naming its file.
PRESETS: dict[str, Preset] = {name: load_preset(name) for name in preset_names()}


def parse_set_pairs(pairs: Iterable[str], source: str = "--set") -> dict[str, Any]:
    """``--set`` flags, ``["lr=1e-3", "class_weighting=balanced"]``, as TrainConfig.replace changes. A value is
    read as YAML (numbers, bools, text, ``{a: 1}``), then typed and range-checked by its field's type in the
    schema (typed_train_changes), so ``epochs=abc`` fails here naming the key and the value. An unknown key
    passes through untyped: replace names it in its error, with every known key."""
    known = {f.name for f in dataclasses.fields(TrainConfig)} | {f.name for f in dataclasses.fields(Augmentation)}
    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{source} {pair!r}: expected KEY=VALUE")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"{source} {pair!r}: the value is not valid YAML ({err})") from None
        out[key] = typed_train_changes({key: value}, source)[key] if key in known else value
    return out


def preset_overrides(preset: Preset, model: str) -> dict[str, Any]:
    """The preset's TrainConfig overrides for one model ("*" applies to every model)."""
    out = dict(preset.train_overrides.get("*", {}))
    out.update(preset.train_overrides.get(model, {}))
    return out
