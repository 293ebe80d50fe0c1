"""``python -m raymotion.train --model NAME --data ROOT [--set KEY=VALUE ...]``: train one model with Ray Train."""

from __future__ import annotations

import argparse
import os
import time

from raymotion.config import TrainConfig, check_metric, parse_set_pairs
from raymotion.data import open_data, resolve_data_root
from raymotion.data.pipeline import load_cached
from raymotion.runtime import init_ray
from raymotion.train.trainer import build_trainer, input_size_of


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, TrainConfig]:
    parser = argparse.ArgumentParser(prog="python -m raymotion.train", description=__doc__)
    parser.add_argument("--model", default=TrainConfig.model, help="registry name (raymotion.models.list_models())")
    parser.add_argument("--data", help="root with train/ and val/ class folders (default: ../shared/data/emotions)")
    parser.add_argument("--out", default="runs/train", help="Ray Train storage path")
    parser.add_argument("--address", help="Ray address (default: a running cluster, else a local instance)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="any TrainConfig field or augmentation field, e.g. --set epochs=5 --set rotation_deg=0")
    args = parser.parse_args(argv)
    cfg = TrainConfig(model=args.model).replace("--set", **parse_set_pairs(args.overrides))
    return args, cfg


def main(argv: list[str] | None = None) -> None:
    args, cfg = parse_args(argv)
    root, how = resolve_data_root(args.data, os.path.abspath("runs/synthetic-faces"))
    source = open_data(root)
    check_metric(cfg.metric, source.classes, (), "--set metric")  # before Ray starts: one data source here
    print(f"data: {root} ({how})\n{source.summary()}\ninput size: {input_size_of(cfg)}px; "
          f"augmentations: {cfg.augmentation.summary()}; class weighting: {cfg.class_weighting}")
    init_ray(args.address)
    cached, report = load_cached(source, input_size_of(cfg))
    print(f"decoded: {report.summary()}")
    started = time.perf_counter()
    trainer = build_trainer(cfg, classes=source.classes, class_counts=[source.counts("train")[c] for c in source.classes],
                            cached=cached,
                            storage_path=os.path.abspath(args.out), name=f"{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}")
    result = trainer.fit()
    best = result.get_best_checkpoint(metric=cfg.metric, mode=cfg.mode)
    print(f"trained {cfg.model} in {time.perf_counter() - started:.0f}s; last epoch: "
          + ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items() if k.startswith("val_") and isinstance(v, float)))
    print(f"best checkpoint ({cfg.metric}, {cfg.mode}): {best.path if best else None}")


if __name__ == "__main__":
    main()
