"""``python -m bench gpu RUN_DIR``: what a run used and what its served files run on.

Training: each checkpoint's ``meta.json`` "runtime" (written by the train loop: device, GPU name, autocast
dtype, grad scaler, torch.compile, pinned memory, prefetch, workers). Serving: an onnxruntime session per
served file and device, as a Serve replica makes it (``export.sessions.create_session``), and the
providers it actually runs with (a GPU provider that cannot start falls back to the CPU). scripts/gpu_check.sh
runs the smoke preset with ``--device cuda`` and then this, with ``--require-gpu``.
"""

from __future__ import annotations

import os
from typing import Any

from raymotion import rundir

DEVICES = ("cpu", "cuda", "tensorrt")


def environment() -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    cuda = torch.cuda.is_available()
    return {"torch": torch.__version__, "torch_cuda_build": torch.version.cuda, "cuda_available": cuda,
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
            "bf16_supported": bool(cuda and torch.cuda.is_bf16_supported()),
            "onnxruntime": ort.__version__, "onnxruntime_providers": ort.get_available_providers()}


def run_usage(run_dir: str) -> dict[str, Any]:
    from raymotion.export.sessions import create_session, session_providers

    manifest = rundir.read_manifest(run_dir)
    models = {}
    for name in manifest.ensemble.served:
        checkpoint = rundir.member_checkpoint_dir(run_dir, name)
        meta = rundir.read_checkpoint_meta(checkpoint) if os.path.isfile(rundir.checkpoint_meta_path(checkpoint)) else None
        # The JSON's own shape (the bench's output is JSON): the record's fields, or None without one.
        runtime = meta.runtime.model_dump() if meta and meta.runtime else None
        served = os.path.join(run_dir, manifest.models[name].serve.file)
        sessions = {d: {"asked": session_providers(d), "running": create_session(served, device=d).get_providers()}
                    for d in DEVICES}
        models[name] = {"train_runtime": runtime, "served_file": manifest.models[name].serve.file,
                        "serve_sessions": sessions}
    return {"run_dir": run_dir, "models": models}


def used_gpu(usage: dict[str, Any]) -> list[str]:
    """What did not use the GPU (empty: training ran on CUDA and every served file has a CUDA session)."""
    missing = []
    for name, entry in usage["models"].items():
        runtime = entry["train_runtime"] or {}
        if not str(runtime.get("device", "")).startswith("cuda"):
            missing.append(f"{name}: trained on {runtime.get('device', 'an unknown device')}")
        if "CUDAExecutionProvider" not in entry["serve_sessions"]["cuda"]["running"]:
            missing.append(f"{name}: its served file runs on {entry['serve_sessions']['cuda']['running']} with device cuda")
    return missing


def describe(env: dict[str, Any], usage: dict[str, Any]) -> str:
    lines = [f"torch {env['torch']} (CUDA build {env['torch_cuda_build']}), CUDA available: {env['cuda_available']}"
             + (f", GPUs: {', '.join(env['gpus'])}, bf16: {env['bf16_supported']}" if env["gpus"] else ""),
             f"onnxruntime {env['onnxruntime']}, providers available: {', '.join(env['onnxruntime_providers'])}"]
    for name, entry in usage["models"].items():
        r = entry["train_runtime"]
        lines.append(f"{name} trained: " + (
            f"device {r['device']}{' (' + r['gpu'] + ')' if r.get('gpu') else ''}, autocast {r['autocast']}, "
            f"grad scaler {'on' if r['grad_scaler'] else 'off'}, torch.compile {'on' if r['torch_compile'] else 'off'}, "
            f"pin_memory {r['pin_memory']}, prefetch {r['prefetch_batches']}, {r['workers']} worker(s)"
            if r else "no runtime record in its checkpoint (trained before it was written)"))
        for device, s in entry["serve_sessions"].items():
            lines.append(f"{name} served ({entry['served_file']}), device {device}: asked {', '.join(s['asked'])}; "
                         f"running {', '.join(s['running'])}")
    return "\n".join(lines)
