"""What a person watching ``python -m raymotion.tune`` sees: a line per finished epoch of every trial, the
elapsed time and an estimate of the time left, and the run's summary table at the end.

The estimate is a range, and it assumes every unfinished trial runs all its epochs (ASHA and early
stopping only cut work). A model's seconds per epoch are its own once it has run an epoch that trains the
whole network. Before that they are predicted from its FLOPs per image at the fastest and at the slowest
compute rate seen so far in the run (the two ends of the range), and never below what the fastest
data-bound model managed per image: on a CPU, FLOPs per second differ widely between architectures
(depthwise convolutions run far below dense ones), so no single rate predicts an unseen model, not even as
a bound. Once every model has run, the two ends meet.

Head-only epochs (a pretrained model's frozen backbone, no backward pass through it) give no rate: they
take a fraction of a full epoch's time, and counted as full epochs they would make the estimate swing
between consecutive lines each time a pretrained model begins.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ray import tune


@dataclass
class ModelPlan:
    """One model's share of the run, as planned before it starts."""

    name: str
    trials: int
    epochs: int
    train_images: int  # per epoch (after max_batches_per_epoch)
    val_images: int
    flops_per_image: int  # forward pass, one image
    teacher_flops_per_image: int = 0  # online teachers' forward passes, one training image (all teachers)

    @property
    def work_per_epoch(self) -> float:
        """FLOPs of one epoch: forward + backward (about 3x forward) on train, forward on val, and the online
        teachers' forward passes on train."""
        return self.flops_per_image * (3.0 * self.train_images + self.val_images) + \
            self.teacher_flops_per_image * self.train_images


@dataclass
class TrialState:
    index: int  # 1-based, in start order
    started: float
    epochs_done: int = 0
    finished: bool = False
    first_result_at: float | None = None


@dataclass
class RunClock:
    """Elapsed time and the time left for the whole run, from the epochs observed so far."""

    plans: dict[str, ModelPlan]
    started: float = field(default_factory=time.monotonic)
    trials: dict[str, dict[str, TrialState]] = field(default_factory=dict)  # model -> trial id -> state
    epoch_seconds: dict[str, list[float]] = field(default_factory=dict)
    start_overheads: list[float] = field(default_factory=list)  # trial start to its first epoch's start

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def trial(self, model: str, trial_id: str) -> TrialState:
        states = self.trials.setdefault(model, {})
        if trial_id not in states:
            states[trial_id] = TrialState(index=len(states) + 1, started=time.monotonic())
        return states[trial_id]

    def observe_epoch(self, model: str, trial_id: str, epoch: int, seconds: float, head_only: bool = False) -> None:
        """``head_only``: the epoch trained a pretrained model's new head alone; it counts as done but its
        time says nothing about a full epoch's, so no rate is taken from it."""
        state = self.trial(model, trial_id)
        if state.first_result_at is None:
            state.first_result_at = time.monotonic()
            self.start_overheads.append(max(0.0, state.first_result_at - state.started - seconds))
        state.epochs_done = max(state.epochs_done, epoch)
        if not head_only:
            self.epoch_seconds.setdefault(model, []).append(seconds)

    def finish_trial(self, model: str, trial_id: str) -> None:
        self.trial(model, trial_id).finished = True

    def seconds_per_epoch(self, model: str) -> tuple[float, float] | None:
        """(fewest, most) seconds an epoch of ``model`` takes: its own average once it ran a full epoch, else
        its work at the fastest and at the slowest compute rate seen; None before any full epoch."""
        own = self.epoch_seconds.get(model)
        if own:
            mean = sum(own) / len(own)
            return mean, mean
        seen = [(self.plans[m], sum(s) / len(s)) for m, s in self.epoch_seconds.items() if s and m in self.plans]
        if not seen:
            return None
        plan = self.plans[model]
        flops_rates = [p.work_per_epoch / s for p, s in seen]
        images_rate = max((3 * p.train_images + p.val_images) / s for p, s in seen)
        data_bound = (3 * plan.train_images + plan.val_images) / images_rate
        return (max(plan.work_per_epoch / max(flops_rates), data_bound),
                max(plan.work_per_epoch / min(flops_rates), data_bound))

    def remaining_epochs(self, model: str) -> tuple[int, int]:
        """(epochs left, trials not yet started) for one model, if every unfinished trial runs to the end."""
        plan, states = self.plans[model], self.trials.get(model, {})
        left = sum(plan.epochs - s.epochs_done for s in states.values() if not s.finished)
        unstarted = max(0, plan.trials - len(states))
        return left + unstarted * plan.epochs, unstarted

    def seconds_left(self) -> tuple[float, float] | None:
        """(fewest, most) seconds of training left for the run (export not included); None before any full
        epoch was seen."""
        overhead = sum(self.start_overheads) / len(self.start_overheads) if self.start_overheads else 0.0
        low = high = 0.0
        for model in self.plans:
            epochs, unstarted = self.remaining_epochs(model)
            per_epoch = self.seconds_per_epoch(model)
            if per_epoch is None:
                return None
            low += epochs * per_epoch[0] + unstarted * overhead
            high += epochs * per_epoch[1] + unstarted * overhead
        return low, high

    def status(self) -> str:
        left = self.seconds_left()
        if left is None:
            estimate = "time left: known after the first full epoch"
        elif format_minutes(left[0]) == format_minutes(left[1]):
            estimate = f"~{format_minutes(left[1])} left (+ export)"
        else:
            estimate = f"~{left[0] / 60:.1f}-{left[1] / 60:.1f} min left (+ export)"
        return f"{format_minutes(self.elapsed())} elapsed, {estimate}"


def format_minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def print_line(text: str) -> None:
    print(text, flush=True)


class EpochProgress(tune.Callback):
    """Tune callback (it runs in the driver): one line per finished epoch of every trial of one model.
    The Tuner pickles its callbacks with its state: everything held here must pickle (a module-level
    ``emit``, not the ``print`` that Ray wraps)."""

    def __init__(self, model: str, clock: RunClock, metric: str, mode: str, emit: Callable[[str], None] = print_line,
                 sources: Sequence[str] = ()):
        self.model, self.clock, self.metric, self.mode, self.emit = model, clock, metric, mode, emit
        self.sources = list(sources) if len(sources) > 1 else []  # named in each line: accuracy / macro-F1
        self.best: tuple[float, int, int] | None = None  # (value, trial index, epoch)

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best[0] if self.mode == "max" else value < self.best[0]

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self.clock.trial(self.model, trial.trial_id)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict[str, Any], **info) -> None:
        if "epoch" not in result:
            return
        plan = self.clock.plans[self.model]
        epoch = int(result["epoch"])
        head_only = bool(result.get("head_only"))
        self.clock.observe_epoch(self.model, trial.trial_id, epoch, float(result.get("epoch_seconds", 0.0)),
                                 head_only=head_only)
        state = self.clock.trial(self.model, trial.trial_id)
        value = result.get(self.metric)
        if value is not None and self._better(value):
            self.best = (value, state.index, epoch)
        phase = "head" if head_only else "full"
        best = "" if self.best is None else f"best {self.metric} {self.best[0]:.4f} (trial {self.best[1]}, epoch {self.best[2]})"
        self.emit(f"[{self.model}] trial {state.index}/{plan.trials} epoch {epoch}/{plan.epochs} {phase}: "
                  f"{result.get('train_images_per_s', 0):.0f} img/s, val acc {result.get('val_accuracy', float('nan')):.4f} "
                  f"macro-F1 {result.get('val_macro_f1', float('nan')):.4f}{self._by_source(result)}; {best} | "
                  f"{self.clock.status()}")

    def _by_source(self, result: dict[str, Any]) -> str:
        """" (<source> acc/macro-F1, ...)" with several sources, else ""."""
        parts = [f"{name} {result.get(f'val_{name}_accuracy', float('nan')):.3f}/"
                 f"{result.get(f'val_{name}_macro_f1', float('nan')):.3f}" for name in self.sources]
        return f" ({', '.join(parts)})" if parts else ""

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self.clock.finish_trial(self.model, trial.trial_id)
        state = self.clock.trial(self.model, trial.trial_id)
        plan = self.clock.plans[self.model]
        how = "all epochs" if state.epochs_done >= plan.epochs else "stopped early"
        self.emit(f"[{self.model}] trial {state.index}/{plan.trials} done after {state.epochs_done}/{plan.epochs} "
                  f"epochs ({how})")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self.clock.finish_trial(self.model, trial.trial_id)
        state = self.clock.trial(self.model, trial.trial_id)
        self.emit(f"[{self.model}] trial {state.index}/{self.clock.plans[self.model].trials} FAILED after "
                  f"{state.epochs_done} epochs; its error is in the trial's directory under tune/")


def summary_table(rows: list[dict[str, Any]]) -> str:
    """Fixed-width table of dicts with the same keys (the keys are the header)."""
    header = list(rows[0])
    cells = [header] + [[str(r[k]) for k in header] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)
