"""``python -m bench train-step``: training steps per second of each model as the train loop takes
them (``standardize``, autocast from ``amp_settings``, AdamW), in three memory/precision variants:

- ``float32``: NCHW float32, what training was before ``TrainConfig.channels_last``;
- ``channels_last``: NHWC memory for the model and the batch (``channels_last=True``, the default);
- ``channels_last+bf16``: the same with bf16 autocast forced (``amp=True, amp_dtype="bf16"``), which
  ``amp_dtype="auto"`` picks only on a CPU that computes bf16 in hardware.

Variants are timed in interleaved rounds (each round times every variant once), so that a host slowing
down mid-run slows all of them alike; the median round is the figure. Ratios are to float32 in the same
run, and the machine's vector extensions are printed beside them: bf16 pays on CPUs with AVX-512 BF16 or
AMX, and costs on one with AVX2 only.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from bench.machine import describe_machine
from raymotion.config import TrainConfig
from raymotion.console import table as text_table
from raymotion.models import create_model, get_model_spec
from raymotion.train.loop import amp_settings, cpu_computes_bf16, resolve_torch_threads, standardize

VARIANTS: dict[str, dict[str, Any]] = {
    "float32": {"channels_last": False, "amp": False},
    "channels_last": {"channels_last": True, "amp": False},
    "channels_last+bf16": {"channels_last": True, "amp": True, "amp_dtype": "bf16"},
}


@dataclass(frozen=True)
class TrainStepBenchConfig:
    models: tuple[str, ...]
    sizes: tuple[int, ...] = ()  # per model, 0 or missing: the model's registry input size
    batch_size: int = 64
    steps: int = 4  # timed steps per variant and round
    warmup: int = 2  # untimed steps before them (oneDNN picks its kernels on the first calls)
    rounds: int = 3
    threads: int = 0  # torch threads; 0: all usable cores, as a lone Train worker gets


class VariantRunner:
    """One model in one variant: its own weights, optimizer and batch, ready to step."""

    def __init__(self, model_name: str, size: int, variant: str, batch_size: int, seed: int = 0):
        cfg = TrainConfig(model=model_name, **VARIANTS[variant])
        spec = get_model_spec(model_name)
        torch.manual_seed(seed)
        self.model = create_model(model_name, num_classes=3, pretrained=False).train()
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.amp = amp_settings(cfg, torch.device("cpu"))
        generator = torch.Generator().manual_seed(seed)
        self.batch = torch.randint(0, 256, (batch_size, size, size, 3), dtype=torch.uint8, generator=generator)
        self.mean, self.std = torch.tensor(spec.mean), torch.tensor(spec.std)
        self.channels_last = cfg.channels_last
        self.labels = torch.arange(batch_size) % 3
        self.logits_dtype: torch.dtype | None = None

    def step(self) -> None:
        x = standardize(self.batch, self.mean, self.std, self.channels_last)
        with self.amp.autocast(torch.device("cpu")):
            logits = self.model(x)
            loss = torch.nn.functional.cross_entropy(logits.float(), self.labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.logits_dtype = logits.dtype

    def images_per_s(self, steps: int) -> float:
        started = time.perf_counter()
        for _ in range(steps):
            self.step()
        return steps * self.batch.shape[0] / (time.perf_counter() - started)


def run_train_step_bench(cfg: TrainStepBenchConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads or resolve_torch_threads(0, 1))
    try:
        rows = []
        for i, name in enumerate(cfg.models):
            size = (cfg.sizes[i] if i < len(cfg.sizes) else 0) or get_model_spec(name).input_size
            runners = {v: VariantRunner(name, size, v, cfg.batch_size) for v in VARIANTS}
            for runner in runners.values():
                for _ in range(cfg.warmup):
                    runner.step()
            rounds = {v: [] for v in VARIANTS}
            for _ in range(cfg.rounds):
                for variant, runner in runners.items():
                    rounds[variant].append(runner.images_per_s(cfg.steps))
            speed = {v: statistics.median(r) for v, r in rounds.items()}
            row = {"model": name, "input_size": size, "images_per_s": speed, "rounds": rounds,
                   "ratio_to_float32": {v: speed[v] / speed["float32"] for v in VARIANTS},
                   "logits_dtype": {v: str(r.logits_dtype).removeprefix("torch.") for v, r in runners.items()}}
            rows.append(row)
            log(f"{name} @{size}px: " + ", ".join(f"{v} {speed[v]:.1f} img/s" for v in VARIANTS))
        return {"benchmark": "train-step", "config": cfg.__dict__, "threads": torch.get_num_threads(),
                "machine": describe_machine(), "cpu_computes_bf16": cpu_computes_bf16(), "rows": rows}
    finally:
        torch.set_num_threads(previous_threads)


def table(result: dict[str, Any]) -> str:
    machine = result["machine"]
    head = (f"{machine['cpu_model']}, {result['threads']} torch threads, flags: "
            f"{' '.join(machine['vector_extensions']) or 'none listed'}; bf16 in hardware: {result['cpu_computes_bf16']}")
    rows = [[row["model"], row["input_size"]]
            + [f"{row['images_per_s'][v]:.1f} ({row['ratio_to_float32'][v]:.2f}x)" for v in VARIANTS]
            for row in result["rows"]]
    columns = ["model", "px"] + [f"{v} img/s" for v in VARIANTS]
    return "\n".join([head, text_table(rows, columns, "<" + ">" * (len(columns) - 1))])
