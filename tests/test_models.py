import os
import pickle

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision
from PIL import Image

from raymotion.data.transforms import normalize, resize_rgb
from raymotion.export.onnx import PARITY_TOLERANCE, export_onnx, parity_max_abs_diff, torch_probabilities
from raymotion.export.sessions import create_session, onnx_probabilities
from raymotion.models import create_model, get_model_spec, list_models, split_head_parameters
from raymotion.models.efficientnet import efficientnet_lite_imagenet, imagenet_weights, lukemelas_to_timm, timm_arch
from raymotion.models.mobilenet import mobilenet_v2_imagenet_weights
from raymotion.models.weights import load_state_dict

# The models a fresh checkout registers; the per-model tests run over list_models(), so a model registered
# later is tested without editing this list (it only guards against one silently dropping out).
KNOWN = {"lenet", "mobilenet_v2", "resnet34", "efficientnet_lite0", "efficientnet_lite2", "vit", "hf_vit"}
MILITARY_UNIFORM = 652  # ImageNet class of Grace Hopper's portrait
SUIT, WINDSOR_TIE, BOW_TIE = 834, 906, 457  # what else she wears in it


def grace_hopper(size: int) -> np.ndarray:
    """matplotlib's sample photo, centre-cropped square and resized as the data pipeline does (uint8 NHWC)."""
    img = Image.open(os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")).convert("RGB")
    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return resize_rgb(img, size)[None]


def random_images(name: str, n: int, seed: int = 0) -> np.ndarray:
    spec = get_model_spec(name)
    pixels = np.random.default_rng(seed).integers(0, 256, (n, spec.input_size, spec.input_size, 3), dtype=np.uint8)
    return normalize(pixels, spec.mean, spec.std)


def test_every_known_model_is_registered():
    assert KNOWN <= set(list_models())


@pytest.mark.parametrize("name", list_models())
def test_created_by_name_with_a_three_class_head(name):
    model = create_model(name, num_classes=3, pretrained=False).eval()
    size = get_model_spec(name).input_size
    with torch.no_grad():
        out = model(torch.zeros(2, 3, size, size))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(KeyError, match="lenet"):
        create_model("no_such_model")


def test_scratch_models_refuse_a_weights_path(tmp_path):
    with pytest.raises(ValueError, match="from scratch"):
        create_model("lenet", pretrained=str(tmp_path / "weights.pth"))


def test_hybrid_vit_tokens_come_from_the_pretrained_mobilenet_stem():
    """The ViT's patch embedding is MobileNetV2's first blocks with their ImageNet tensors, unchanged; the
    transformer is new; the frozen-stem phase trains the transformer and nothing of the stem."""
    from raymotion.models.vit import STEM_BLOCKS

    state = load_state_dict(mobilenet_v2_imagenet_weights())
    model = create_model("vit", num_classes=3, pretrained=True)
    stem = model.patch_embed.backbone.state_dict()
    expected = {k.removeprefix("features."): v for k, v in state.items()
                if k.startswith("features.") and int(k.split(".")[1]) < STEM_BLOCKS}
    assert stem.keys() == expected.keys() and all(torch.equal(stem[k], expected[k]) for k in stem)
    scratch = create_model("vit", num_classes=3, pretrained=False).patch_embed.backbone.state_dict()
    assert not torch.equal(scratch["0.0.weight"], stem["0.0.weight"])
    backbone, head = split_head_parameters(model, "vit")
    stem_ids = {id(p) for p in model.patch_embed.backbone.parameters()}
    assert {id(p) for p in backbone} == stem_ids and not stem_ids & {id(p) for p in head}
    tokens = model.patch_embed(torch.zeros(1, 3, 96, 96))
    assert tokens.shape == (1, 36, 192)  # 96 px at stride 16: a 6x6 grid
    with pytest.raises(FileNotFoundError):
        create_model("vit", pretrained="/nonexistent/mobilenet.pth")


def test_mobilenet_v2_loads_packaged_imagenet_weights_strictly():
    state = load_state_dict(mobilenet_v2_imagenet_weights())
    model = create_model("mobilenet_v2", num_classes=3, pretrained=True)
    own = model.state_dict()
    # Every backbone tensor comes from the file; only the new 3-class head differs.
    backbone = [k for k in state if not k.startswith("classifier.1.")]
    assert len(backbone) == len(own) - 2
    for key in backbone:
        assert torch.equal(own[key], state[key]), key
    assert own["classifier.1.weight"].shape == (3, 1280)


def test_pretrained_path_must_fit_exactly(tmp_path):
    path = tmp_path / "bad.pth"
    state = load_state_dict(mobilenet_v2_imagenet_weights())
    state.pop("features.0.0.weight")
    torch.save(state, path)
    with pytest.raises(ValueError, match="missing"):
        create_model("mobilenet_v2", pretrained=str(path))


def test_efficientnet_lite0_loads_every_packaged_tensor_by_name():
    state = load_state_dict(imagenet_weights("lite0"))
    model = create_model("efficientnet_lite0", num_classes=3, pretrained=True)
    own = model.state_dict()
    mapped = lukemelas_to_timm(state, [len(stage) for stage in model.blocks])
    assert len(mapped) == len(state) == len(own)
    backbone = [k for k in mapped if not k.startswith("classifier.")]
    assert len(backbone) == len(own) - 2
    for key in backbone:
        assert torch.equal(own[key], mapped[key]), key
    assert own["classifier.weight"].shape == (3, 1280)
    # Cross-check: the name mapping lands every tensor where timm's own parameter order puts it.
    assert list(mapped) == list(own)
    # And it is a mapping by name, not by position: the file's order does not matter.
    shuffled = dict(reversed(list(state.items())))
    remapped = lukemelas_to_timm(shuffled, [len(stage) for stage in model.blocks])
    assert all(torch.equal(remapped[k], mapped[k]) for k in mapped)


def test_efficientnet_lite2_loads_every_packaged_tensor_by_name_and_sees_a_uniform():
    """Lite2's file (another package, a deeper and wider network) goes through the same name mapping; its
    ImageNet answer on the portrait is what she wears: uniform, suit, tie (scrambled weights answer noise)."""
    state = load_state_dict(imagenet_weights("lite2"))
    model = create_model("efficientnet_lite2", num_classes=3, pretrained=True)
    mapped = lukemelas_to_timm(state, [len(stage) for stage in model.blocks])
    own = model.state_dict()
    assert list(mapped) == list(own) and len(model.blocks[-2]) > 3  # deeper than Lite0 (3 blocks there)
    for key in (k for k in mapped if not k.startswith("classifier.")):
        assert torch.equal(own[key], mapped[key]), key
    imagenet = efficientnet_lite_imagenet("lite2").eval()
    spec = get_model_spec("efficientnet_lite2")
    with torch.no_grad():
        probs = imagenet(torch.from_numpy(normalize(grace_hopper(224), spec.mean, spec.std))).softmax(-1)[0]
    top3 = {int(i) for i in probs.topk(3).indices}
    assert top3 <= {MILITARY_UNIFORM, SUIT, WINDSOR_TIE, BOW_TIE} and MILITARY_UNIFORM in top3, probs.topk(3)
    assert float(probs.topk(3).values.sum()) > 0.5


def test_efficientnet_lite0_weights_must_fit_exactly(tmp_path):
    state = load_state_dict(imagenet_weights("lite0"))
    missing = dict(state)
    missing.pop("_blocks.5._bn1.running_var")
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="missing"):
        create_model("efficientnet_lite0", pretrained=str(tmp_path / "missing.pth"))
    extra = dict(state, **{"_blocks.3._se_reduce.weight": torch.zeros(8, 144, 1, 1)})  # Lite has no SE
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(KeyError, match="_se_reduce"):
        create_model("efficientnet_lite0", pretrained=str(tmp_path / "extra.pth"))
    resized = dict(state, **{"_conv_head.weight": torch.zeros(1280, 320, 3, 3)})
    torch.save(resized, tmp_path / "resized.pth")
    with pytest.raises(ValueError, match="shape mismatches"):
        create_model("efficientnet_lite0", pretrained=str(tmp_path / "resized.pth"))
    (tmp_path / "corrupt.pth").write_bytes(b"not a torch file" * 64)
    with pytest.raises(pickle.UnpicklingError):
        create_model("efficientnet_lite0", pretrained=str(tmp_path / "corrupt.pth"))


def test_imagenet_weights_and_normalization_recognise_a_photo():
    """The mapping, the architecture (TF padding) and the normalization together give ImageNet's answer
    on a real photo: Grace Hopper in uniform. MobileNetV2 (torchvision's own weights) is the control."""
    mobilenet = torchvision.models.mobilenet_v2()
    mobilenet.load_state_dict(load_state_dict(mobilenet_v2_imagenet_weights()))
    for name, model in (("mobilenet_v2", mobilenet), ("efficientnet_lite0", efficientnet_lite_imagenet("lite0"))):
        spec = get_model_spec(name)
        x = torch.from_numpy(normalize(grace_hopper(224), spec.mean, spec.std))
        with torch.no_grad():
            probs = model.eval()(x).softmax(-1)[0]
        top2 = probs.topk(2)
        assert int(top2.indices[0]) == MILITARY_UNIFORM, (name, top2)
        assert float(top2.values[0]) > 1.5 * float(top2.values[1]), (name, top2)  # clearly, not by a hair


def test_efficientnet_lite0_is_the_tensorflow_variant():
    model = create_model("efficientnet_lite0", pretrained=False)
    assert timm_arch("lite0") == "tf_efficientnet_lite0"
    assert model.bn1.eps == pytest.approx(1e-3)  # TF's BatchNorm epsilon, which the statistics assume


def test_resnet34_loads_a_local_torchvision_state_dict(tmp_path):
    source = torchvision.models.resnet34()  # stands in for ImageNet weights someone has on disk
    torch.save(source.state_dict(), tmp_path / "resnet34.pth")
    model = create_model("resnet34", num_classes=3, pretrained=str(tmp_path / "resnet34.pth"))
    own, state = model.state_dict(), source.state_dict()
    for key in state:
        if not key.startswith("fc."):
            assert torch.equal(own[key], state[key]), key
    assert own["fc.weight"].shape == (3, 512)
    state.pop("layer3.0.conv1.weight")
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="missing"):
        create_model("resnet34", pretrained=str(tmp_path / "broken.pth"))


def test_hf_vit_is_a_transformers_vit_over_the_stem_and_loads_its_save_pretrained_directory(tmp_path):
    """The checkpoint writes the transformer with save_pretrained; pretrained=<that directory> loads it
    back (the head new for another label count), with the stem's ImageNet tensors."""
    from raymotion.models.hf_vit import HFViT
    from raymotion.models.vit import STEM_BLOCKS
    from raymotion.train.checkpoint import save_checkpoint
    from transformers import ViTForImageClassification

    trained = create_model("hf_vit", num_classes=3, pretrained=True).eval()
    assert isinstance(trained.model, ViTForImageClassification) and trained.model.config.num_channels == 96
    spec = get_model_spec("hf_vit")
    save_checkpoint(str(tmp_path / "ckpt"), trained, {
        "model": "hf_vit", "classes": ["a", "b", "c"], "input_size": spec.input_size, "mean": list(spec.mean),
        "std": list(spec.std), "epoch": 1, "metrics": {}, "train_config": {}})
    saved = tmp_path / "ckpt" / "transformers"
    assert (saved / "config.json").exists()
    loaded = create_model("hf_vit", num_classes=5, pretrained=str(saved)).eval()
    assert isinstance(loaded, HFViT)
    own, state = loaded.model.state_dict(), trained.model.state_dict()
    for key in state:
        if not key.startswith("classifier."):
            assert torch.equal(own[key], state[key]), key
    assert own["classifier.weight"].shape == (5, 192)
    imagenet = load_state_dict(mobilenet_v2_imagenet_weights())
    assert torch.equal(loaded.stem.state_dict()["0.0.weight"], imagenet["features.0.0.weight"])
    assert len(loaded.stem) == STEM_BLOCKS
    with torch.no_grad():  # 96 px is the config's 6x6 grid; 64 px interpolates the position embeddings
        assert loaded(torch.zeros(2, 3, 96, 96)).shape == (2, 5) and loaded(torch.zeros(1, 3, 64, 64)).shape == (1, 5)
    # A directory that does not exist is an error, never a download.
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        create_model("hf_vit", pretrained=str(tmp_path / "no_such_dir"))


def test_an_hf_vit_checkpoint_is_written_without_a_progress_bar(tmp_path, capfd):
    """transformers draws a "Writing model shards" bar on stderr per save_pretrained: one terminal line per
    epoch of the tune command. Its global switch is left as it was."""
    from transformers.utils import logging as hf_logging

    model = create_model("hf_vit", num_classes=3, pretrained=False)
    assert hf_logging.is_progress_bar_enabled()
    model.save_pretrained(str(tmp_path / "transformers"))
    captured = capfd.readouterr()
    assert (tmp_path / "transformers" / "config.json").exists()
    assert "Writing model shards" not in captured.err + captured.out, captured.err
    assert hf_logging.is_progress_bar_enabled()


@pytest.mark.parametrize("name", list_models())
def test_split_head_parameters(name):
    model = create_model(name, num_classes=3, pretrained=False)
    backbone, head = split_head_parameters(model, name)
    assert head and backbone
    everything = {id(p) for p in model.parameters()}
    assert {id(p) for p in backbone} | {id(p) for p in head} == everything
    assert not {id(p) for p in backbone} & {id(p) for p in head}
    # The head ends in the 3-class output layer.
    assert head[-1].shape == (3,) and head[-2].shape[0] == 3
    # A DDP-style wrapper renames every parameter "module.<name>": refused with a hint, never an empty head.
    with pytest.raises(ValueError, match="model.module"):
        split_head_parameters(nn.ModuleDict({"module": model}), name)


@pytest.mark.parametrize("name", list_models())
def test_frozen_backbone_trains_only_the_head(name):
    """One optimiser step with the backbone frozen as training freezes it (train.loop.set_backbone_frozen):
    only the head's tensors move; BatchNorm running statistics stay as they were."""
    from raymotion.train.loop import set_backbone_frozen

    torch.manual_seed(0)
    size = get_model_spec(name).input_size
    model = create_model(name, num_classes=3, pretrained=False).train()
    set_backbone_frozen(model, name, frozen=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    nn.functional.cross_entropy(model(torch.randn(4, 3, size, size)), torch.tensor([0, 1, 2, 0])).backward()
    optimizer.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    head = {k for k, _ in model.named_parameters() if k.startswith(get_model_spec(name).head)}
    assert head and changed == head, (sorted(changed - head)[:5], sorted(head - changed)[:5])
    set_backbone_frozen(model, name, frozen=False)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("name", list_models())
def test_onnx_export_matches_torch(name, exported):
    model, path, exporter = exported(name)
    assert exporter == "dynamo"
    session = create_session(path, intra_op_threads=2)
    x = random_images(name, 5)  # batch 5: not the export example's 2, so the batch axis must be dynamic
    assert parity_max_abs_diff(model, session, x) <= PARITY_TOLERANCE
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    onnx_logits = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert onnx_logits.shape == (5, 3)
    assert np.abs(onnx_logits - logits).max() <= 1e-3 * max(1.0, float(np.abs(logits).max()))
    assert np.allclose(onnx_probabilities(session, x[:1]), torch_probabilities(model, x)[:1], atol=PARITY_TOLERANCE)


def test_flip_averaged_is_the_mean_of_both_views_and_exports(tmp_path):
    from raymotion.models.tta import FlipAveraged

    torch.manual_seed(0)
    model = create_model("lenet", num_classes=3, pretrained=False).eval()
    tta = FlipAveraged(model).eval()
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        expected = (model(x) + model(x.flip(-1))) / 2
        assert torch.allclose(tta(x), expected, atol=1e-6)
        assert not torch.allclose(tta(x), model(x), atol=1e-4)  # the mirror view changes the answer
        symmetric = torch.cat([x[..., :32], x[..., :32].flip(-1)], -1)
        assert torch.allclose(tta(symmetric), model(symmetric), atol=1e-5)  # a mirror-symmetric image: no change
    path = str(tmp_path / "tta.onnx")
    export_onnx(tta, path, 64)
    probs = onnx_probabilities(create_session(path), x.numpy())
    np.testing.assert_allclose(probs, torch.softmax(expected, 1).numpy(), atol=PARITY_TOLERANCE)
