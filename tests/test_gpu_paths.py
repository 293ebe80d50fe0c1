"""The GPU path is configuration: on this CPU-only machine, each setting must select its path (devices,
autocast dtypes, grad scaler, compile, pinned/prefetched batches, onnxruntime providers, Ray resources for
Train workers and Serve replicas). Nothing here needs a GPU; what only a GPU can show is
scripts/gpu_check.sh's job (docs/cluster.md)."""

import onnxruntime as ort
import pytest
import torch

from raymotion import rundir
from raymotion.config import ConfigError, TrainConfig, parse_set_pairs
from raymotion.export.sessions import session_providers
from raymotion.train.loop import amp_settings, iterator_options, maybe_compile, select_device, unwrap
from raymotion.train.trainer import scaling_config
from test_rundir import sample_manifest  # tests/ is on sys.path (no __init__.py: pytest prepends it)

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 1)


def test_train_workers_request_gpus_and_placement_from_the_config():
    laptop = scaling_config(TrainConfig())
    assert not laptop.use_gpu and laptop.resources_per_worker == {"CPU": 1.0}
    assert laptop.placement_strategy == "PACK" and "GPU" not in laptop.total_resources

    cluster = scaling_config(TrainConfig(num_workers=4, use_gpu=True, gpus_per_worker=0.5, cpus_per_worker=4,
                                         placement_strategy="SPREAD"))
    assert cluster.use_gpu and cluster.resources_per_worker == {"CPU": 4, "GPU": 0.5}
    assert cluster.placement_strategy == "SPREAD"
    assert cluster.total_resources["GPU"] == 2.0 and cluster.total_resources["CPU"] == 16
    # gpus_per_worker without use_gpu reserves nothing: the switch is use_gpu.
    assert "GPU" not in scaling_config(TrainConfig(gpus_per_worker=2)).resources_per_worker


def test_the_cluster_fields_are_checked_and_settable_from_the_command_line():
    with pytest.raises(ConfigError, match="placement_strategy must be one of 'PACK', 'SPREAD'"):
        TrainConfig(placement_strategy="spread")
    with pytest.raises(ConfigError, match="amp_dtype must be one of 'auto', 'bf16', 'fp16'"):
        TrainConfig(amp_dtype="float16")
    pairs = parse_set_pairs(["placement_strategy=SPREAD", "gpus_per_worker=1", "torch_compile=true",
                             "max_failures=2", "amp_dtype=fp16", "prefetch_batches=4"])
    cfg = TrainConfig().replace("--set", **pairs)
    assert (cfg.placement_strategy, cfg.gpus_per_worker, cfg.torch_compile, cfg.max_failures, cfg.amp_dtype,
            cfg.prefetch_batches) == ("SPREAD", 1.0, True, 2, "fp16", 4)
    assert isinstance(cfg.gpus_per_worker, float)


def test_the_trainer_takes_its_scaling_and_failure_handling_from_the_config(ray_session, faces_root, tmp_path):
    """The TorchTrainer itself, built (not fitted): what Ray would be asked for on a GPU cluster."""
    from raymotion.data import index_image_folders
    from raymotion.data.pipeline import load_cached
    from raymotion.train.trainer import build_trainer

    folders = index_image_folders(faces_root)
    cfg = TrainConfig(model="lenet", input_size=32, num_workers=2, use_gpu=True, gpus_per_worker=0.5,
                      placement_strategy="SPREAD", max_failures=3)
    trainer = build_trainer(cfg, classes=folders.classes, cached=load_cached(folders, 32)[0],
                            storage_path=str(tmp_path), name="gpu-shape")
    assert trainer.scaling_config.use_gpu
    assert trainer.scaling_config.resources_per_worker == {"CPU": 1.0, "GPU": 0.5}
    assert trainer.scaling_config.placement_strategy == "SPREAD"
    assert trainer.run_config.failure_config.max_failures == 3
    assert trainer.run_config.storage_path == str(tmp_path)


def test_the_device_is_the_assigned_gpu_only_when_asked_for():
    assert select_device(TrainConfig(), CUDA) == CPU  # use_gpu off: the CPU even beside a GPU
    assert select_device(TrainConfig(use_gpu=True), CUDA) == CUDA
    with pytest.raises(RuntimeError, match="no CUDA device visible"):
        select_device(TrainConfig(use_gpu=True), CPU)


def test_mixed_precision_is_bf16_where_the_gpu_has_it_else_fp16_with_a_grad_scaler():
    amp = TrainConfig(amp=True)
    assert amp_settings(amp, CUDA, bf16_supported=True) == (True, torch.bfloat16, False)
    assert amp_settings(amp, CUDA, bf16_supported=False) == (True, torch.float16, True)
    assert amp_settings(TrainConfig(amp=True, amp_dtype="fp16"), CUDA, bf16_supported=True) == (True, torch.float16, True)
    assert amp_settings(TrainConfig(amp=True, amp_dtype="bf16"), CUDA, bf16_supported=False) == (True, torch.bfloat16, False)
    # Off unless asked.
    assert amp_settings(TrainConfig(), CUDA, bf16_supported=True).enabled is False
    assert amp_settings(TrainConfig(), CPU, bf16_supported=True).enabled is False


def test_on_the_cpu_auto_mixed_precision_is_bf16_only_where_the_cpu_computes_it():
    """Emulated bf16 is slower than float32, so "auto" leaves a CPU without bf16 hardware in float32; the
    forced type is used as asked, whatever the CPU (how a test reaches the bf16 path on any machine)."""
    amp = TrainConfig(amp=True)
    assert amp_settings(amp, CPU, bf16_supported=True) == (True, torch.bfloat16, False)
    off = amp_settings(amp, CPU, bf16_supported=False)
    assert (off.enabled, off.dtype, off.grad_scaler) == (False, None, False)
    with off.autocast(CPU):
        x = torch.ones(2, 2) @ torch.ones(2, 2)
    assert x.dtype == torch.float32
    forced = amp_settings(TrainConfig(amp=True, amp_dtype="bf16"), CPU, bf16_supported=False)
    assert forced == (True, torch.bfloat16, False)
    with forced.autocast(CPU):
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.bfloat16


def test_a_bf16_step_on_the_cpu_trains_float32_weights_in_channels_last():
    """One optimizer step as the train loop takes it with amp forced to bf16 and channels_last on: the
    forward runs in bf16, the weights and their gradients stay float32 (checkpoints and ONNX export read
    float32), and the loss falls on a batch it sees four times."""
    from raymotion.models import create_model
    from raymotion.train.loop import standardize

    torch.manual_seed(0)
    model = create_model("lenet", num_classes=3).to(memory_format=torch.channels_last)
    amp = amp_settings(TrainConfig(amp=True, amp_dtype="bf16"), CPU)
    images = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8)
    x = standardize(images, torch.full((3,), 0.5), torch.full((3,), 0.5), channels_last=True)
    assert x.is_contiguous(memory_format=torch.channels_last)
    labels = torch.arange(8) % 3
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(4):
        with amp.autocast(CPU):
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits, labels)
        assert logits.dtype == torch.bfloat16
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert all(p.dtype == torch.float32 and (p.grad is None or p.grad.dtype == torch.float32)
               for p in model.parameters())
    assert losses[-1] < losses[0]


def test_batches_are_pinned_only_on_cuda_and_prefetched_as_configured():
    cfg = TrainConfig(prefetch_batches=3)
    assert iterator_options(cfg, CUDA) == {"prefetch_batches": 3, "pin_memory": True, "device": CUDA}
    assert iterator_options(cfg, CPU) == {"prefetch_batches": 3, "pin_memory": False, "device": CPU}
    assert iterator_options(TrainConfig(pin_memory=False), CUDA)["pin_memory"] is False


def test_torch_compile_is_optional_and_checkpoints_hold_the_plain_module():
    from raymotion.models import create_model

    model = create_model("lenet", num_classes=3, pretrained=False)
    assert maybe_compile(model, TrainConfig()) is model
    compiled = maybe_compile(model, TrainConfig(torch_compile=True))  # lazy: compiles at the first call
    assert compiled is not model and unwrap(compiled) is model
    assert list(unwrap(compiled).state_dict()) == list(model.state_dict())  # no "_orig_mod." prefix


def test_onnxruntime_providers_put_the_gpu_first_and_keep_the_cpu_as_fallback():
    available = set(ort.get_available_providers())
    assert session_providers("cpu") == ["CPUExecutionProvider"]
    want = {"cuda": ["CUDAExecutionProvider"], "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider"]}
    for device, gpu in want.items():
        assert session_providers(device) == [p for p in gpu if p in available] + ["CPUExecutionProvider"]
    # This venv has onnxruntime-gpu (what a GPU node installs), so the GPU providers are really chosen here.
    assert "CUDAExecutionProvider" in available and session_providers("tensorrt")[0] == "TensorrtExecutionProvider"


def _deployment_options(tmp_path, **args) -> dict[str, dict]:
    from ray.serve._private.build_app import build_app as build_serve_app

    from serve.app import AppArgs, build_app

    rundir.write_manifest(str(tmp_path), sample_manifest())
    built = build_serve_app(build_app(AppArgs(run_dir=str(tmp_path), **args)), name="raymotion")
    return {d.name: d.ray_actor_options for d in built.deployments}


def test_serve_replicas_request_gpu_fractions_only_on_a_gpu_device(tmp_path):
    gpu = _deployment_options(tmp_path, device="cuda", model_gpus=0.5, replicas=2)
    assert {n: o.get("num_gpus", 0) for n, o in gpu.items()} == {
        "model_lenet": 0.5, "model_mobilenet_v2": 0.5, "faces": 0, "ingress": 0}
    assert _deployment_options(tmp_path, device="tensorrt")["model_lenet"]["num_gpus"] == 0.25  # the default share
    cpu = _deployment_options(tmp_path, device="cpu", model_gpus=0.5)
    assert all(o.get("num_gpus", 0) == 0 for o in cpu.values())


def test_serve_replicas_of_each_deployment_can_be_kept_one_per_node(tmp_path):
    from ray.serve._private.build_app import build_app as build_serve_app

    from serve.app import AppArgs, build_app

    rundir.write_manifest(str(tmp_path), sample_manifest())
    for limit in (None, 1):
        built = build_serve_app(build_app(AppArgs(run_dir=str(tmp_path), max_replicas_per_node=limit)), name="raymotion")
        assert {d._replica_config.max_replicas_per_node for d in built.deployments} == {limit}


def test_serve_refuses_gpu_shares_it_cannot_place():
    import pydantic

    from serve.app import AppArgs

    for bad in ({"model_gpus": 1.5}, {"model_gpus": -0.1}, {"device": "gpu"}):
        with pytest.raises(pydantic.ValidationError):
            AppArgs.model_validate({"run_dir": "r", **bad})


PRELOAD_PROBE = """
import sys
from raymotion.export.sessions import create_session
create_session(sys.argv[1], device=sys.argv[2])
maps = open("/proc/self/maps").read()
print("torch" in sys.modules, "libcublasLt.so" in maps, "libcudart.so" in maps)
"""


@pytest.mark.parametrize("device", ["cuda", "tensorrt"])
def test_a_gpu_session_loads_the_cuda_libraries_without_torch(device, tmp_path):
    """A Serve replica imports no torch, so nothing else loads the CUDA libraries onnxruntime's CUDA provider
    needs: create_session must (the pip NVIDIA packages beside torch's CUDA wheels are in this venv). On a GPU
    node the provider then starts; here it still falls back to the CPU, for want of a driver."""
    import subprocess
    import sys

    from raymotion.export.onnx import export_onnx
    from raymotion.models import create_model

    path = str(tmp_path / "lenet.onnx")
    export_onnx(create_model("lenet", num_classes=3, pretrained=False).eval(), path, 32)
    out = subprocess.run([sys.executable, "-c", PRELOAD_PROBE, path, device], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    # The last line (onnxruntime prints its TensorRT fallback on stdout before it).
    assert out.stdout.strip().splitlines()[-1].split() == ["False", "True", "True"], out.stdout
    cpu = subprocess.run([sys.executable, "-c", PRELOAD_PROBE, path, "cpu"], capture_output=True, text=True, timeout=120)
    assert cpu.stdout.strip().splitlines()[-1].split() == ["False", "False", "False"], cpu.stdout  # the CPU path loads none of it


def test_the_gpu_check_reports_what_a_run_trained_and_serves_on(run):
    """``bench gpu`` (what scripts/gpu_check.sh prints) on the session's CPU run: every checkpoint says it
    trained on the CPU in float32, and each served file asked for the GPU providers falls back to the CPU."""
    from bench.gpu import describe, environment, run_usage, used_gpu

    usage = run_usage(run[0])
    assert set(usage["models"]) == set(run[1]["ensemble"]["served"])
    for name, entry in usage["models"].items():
        runtime = entry["train_runtime"]
        assert (runtime["device"], runtime["gpu"], runtime["autocast"], runtime["grad_scaler"], runtime["pin_memory"],
                runtime["torch_compile"]) == ("cpu", None, "off", False, False, False), name
        sessions = entry["serve_sessions"]
        assert sessions["cuda"]["asked"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
        assert all(s["running"] == ["CPUExecutionProvider"] for s in sessions.values())  # no GPU here
    assert len(used_gpu(usage)) == 2 * len(usage["models"])  # --require-gpu fails here, naming each
    text = describe(environment(), usage)
    assert "CUDA available: False" in text and "trained: device cpu, autocast off" in text
