import io
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from raymotion.data import DataError, index_image_folders
from raymotion.data.augment import (affine_grid, augment_batch, random_brightness, random_contrast, random_geometry,
                                    random_hflip, random_photometric,
                                    random_resized_crop, random_rotation)
from raymotion.data.pipeline import eval_stream, load_cached, train_stream
from raymotion.data.transforms import InvalidImage, decode_image, normalize


def test_labels_follow_folder_names(faces_root):
    folders = index_image_folders(faces_root)
    assert folders.classes == ["angry", "happy", "sad"]
    for split in (folders.train, folders.val):
        for path, label in zip(split.paths, split.labels):
            assert os.path.basename(os.path.dirname(path)) == folders.classes[label]
    assert folders.train.counts(folders.classes) == {"angry": 100, "happy": 100, "sad": 100}


def _tree(root, layout):
    for rel in layout:
        os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
        if not rel.endswith("/"):
            Image.new("RGB", (8, 8)).save(os.path.join(root, rel))


@pytest.mark.parametrize("layout, message", [
    (["train/a/1.jpg", "train/b/1.jpg"], "no val/"),
    (["train/a/1.jpg", "val/a/1.jpg"], "at least two"),
    (["train/a/1.jpg", "train/b/", "val/a/1.jpg"], "empty class folder"),
    (["train/a/1.jpg", "train/b/1.jpg", "val/c/1.jpg"], "classes that train/ lacks"),
])
def test_bad_roots_fail_fast_with_one_message(tmp_path, layout, message):
    _tree(tmp_path, layout)
    with pytest.raises(DataError, match=message):
        index_image_folders(tmp_path)


def test_decode_converts_every_mode_to_rgb_and_rejects_garbage():
    for mode, size in [("L", (5, 4)), ("RGBA", (5, 4)), ("CMYK", (5, 4)), ("P", (5, 4)), ("I;16", (5, 4))]:
        buf = io.BytesIO()
        Image.new(mode, size).save(buf, format="TIFF" if mode in ("CMYK", "I;16") else "PNG")
        img = decode_image(buf.getvalue())
        assert img.mode == "RGB" and img.size == size
    for bad in (b"", b"not an image at all", b"\xff\xd8\xff\xe0" + b"\x00" * 20):
        with pytest.raises(InvalidImage):
            decode_image(bad)


def test_augmentations_keep_shape_and_range():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 32, 32)
    out = augment_batch(x, gen, rotation_deg=20, hflip_p=0.5, contrast=0.4, brightness=0.2, crop_scale=0.5)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert not torch.allclose(out, x)


def test_each_augmentation_does_what_it_says():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 16, 16)
    assert torch.equal(random_hflip(x, 1.0, gen), x.flip(-1))
    assert torch.equal(random_hflip(x, 0.0, gen), x)
    assert torch.equal(random_contrast(x, 0.0, gen), x)
    assert torch.equal(random_rotation(x, 0.0, gen), x)
    assert torch.equal(random_brightness(x, 0.0, gen), x)
    assert torch.equal(random_resized_crop(x, 1.0, gen), x)
    # Brightness shifts a mid-grey image uniformly.
    grey = torch.full((4, 3, 8, 8), 0.5)
    b = random_brightness(grey, 0.3, gen)
    assert torch.allclose(b, b[:, :1, :1, :1].expand_as(b)) and ((b - 0.5).abs() <= 0.3 + 1e-6).all()
    # A crop of a left/right split image zooms in: the boundary moves but both halves stay present
    # unless the crop falls inside one half; values stay within the original range.
    split = torch.zeros(16, 3, 32, 32)
    split[..., 16:] = 1.0
    c = random_resized_crop(split, 0.3, gen)
    assert c.shape == split.shape and c.min() >= 0 and c.max() <= 1 and not torch.equal(c, split)
    # Contrast keeps each image's mean (up to clamping) and changes its spread.
    flat = torch.full((2, 3, 8, 8), 0.5)
    flat[:, :, :4] = 0.4
    c = random_contrast(flat.clone(), 0.5, gen)
    assert torch.allclose(c.mean(dim=(1, 2, 3)), flat.mean(dim=(1, 2, 3)), atol=1e-6)
    # A small rotation moves pixels but keeps the image close to the original.
    r = random_rotation(x, 5.0, gen)
    assert r.shape == x.shape and float((r - x).abs().mean()) < 0.5


def test_separable_affine_grid_equals_torch():
    theta = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(1))
    ours = affine_grid(theta, 7, 11)
    assert torch.allclose(ours, F.affine_grid(theta, [5, 3, 7, 11], align_corners=False), atol=1e-5)


def test_fused_photometric_equals_contrast_then_brightness():
    # Away from the clamp (mid-range pixels, mild strengths) one multiply-add is the two ops exactly.
    x = 0.4 + 0.2 * torch.rand(6, 3, 12, 12)
    fused = random_photometric(x, 0.2, 0.1, torch.Generator().manual_seed(2))
    gen = torch.Generator().manual_seed(2)
    assert torch.allclose(fused, random_brightness(random_contrast(x, 0.2, gen), 0.1, gen), atol=1e-6)
    assert torch.equal(random_photometric(x, 0.0, 0.0, gen), x)
    # Strong settings still stay in range.
    strong = random_photometric(torch.rand(6, 3, 12, 12), 0.9, 0.5, gen)
    assert float(strong.min()) >= 0.0 and float(strong.max()) <= 1.0


def test_fused_geometry_equals_the_ops_in_sequence():
    # One affine resample must compute what crop, then flip, then rotation compute one after another.
    x = torch.rand(6, 3, 24, 24)
    # Flip is exact, so flip-then-rotate in one resample equals rotating the flipped image.
    fused = random_geometry(x, torch.Generator().manual_seed(3), hflip_p=1.0, rotation_deg=12)
    gen = torch.Generator().manual_seed(3)
    torch.rand(6, generator=gen)  # the flip draw
    assert torch.allclose(fused, random_rotation(x.flip(-1), 12, gen), atol=1e-5)
    # Crop alone: the same box as random_resized_crop for the same random draws.
    assert torch.allclose(random_geometry(x, torch.Generator().manual_seed(4), crop_scale=0.5),
                          random_resized_crop(x, 0.5, torch.Generator().manual_seed(4)), atol=1e-6)
    # Crop + rotation of a constant image stays constant (border padding, no black corners).
    const = torch.full((4, 3, 16, 16), 0.7)
    out = random_geometry(const, torch.Generator().manual_seed(5), crop_scale=0.5, hflip_p=0.5, rotation_deg=30)
    assert torch.allclose(out, const, atol=1e-5)
    # A horizontal gradient: flipping every image reverses its left-right order after the crop.
    ramp = torch.linspace(0, 1, 16).expand(2, 3, 16, 16).contiguous()
    flipped = random_geometry(ramp, torch.Generator().manual_seed(6), crop_scale=0.6, hflip_p=1.0)
    assert (flipped[..., 0] > flipped[..., -1]).all()


def test_normalize_is_nchw_standardised():
    images = np.full((2, 4, 4, 3), 255, np.uint8)
    out = normalize(images, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert out.shape == (2, 3, 4, 4) and out.dtype == np.float32
    assert np.allclose(out, 1.0)


def test_standardize_on_the_train_device_matches_the_export_and_serve_normalize():
    """The train loop standardises uint8 NHWC batches in torch; export and Serve use transforms.normalize
    (numpy). The model must see the same numbers from both."""
    from raymotion.data.augment import standardize

    images = np.random.default_rng(0).integers(0, 256, (4, 9, 7, 3), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    out = standardize(torch.from_numpy(images), torch.tensor(mean), torch.tensor(std))
    assert out.shape == (4, 3, 9, 7) and out.dtype == torch.float32 and out.is_contiguous()
    np.testing.assert_allclose(out.numpy(), normalize(images, mean, std), atol=1e-5)


def test_uint8_transport_round_trips_the_source_pixels_and_rounds_the_rest():
    from raymotion.data.augment import to_uint8, to_unit_float

    images = np.random.default_rng(1).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    x = to_unit_float(torch.from_numpy(images))
    assert x.shape == (3, 3, 8, 8) and x.is_contiguous() and 0.0 <= float(x.min()) <= float(x.max()) <= 1.0
    assert np.array_equal(to_uint8(x).numpy(), images)
    # Values between grey levels (a MixUp blend) round to the nearest; out-of-range values clamp.
    half = torch.full((1, 3, 2, 2), 0.5)
    assert int(to_uint8(half)[0, 0, 0, 0]) == 128
    assert to_uint8(torch.tensor([[[[-0.2]], [[1.3]], [[0.002]]]])).flatten().tolist() == [0, 255, 1]


def test_ray_data_pipeline_streams_labelled_normalized_batches(ray_session, faces_root):
    folders = index_image_folders(faces_root)
    cached, report = load_cached(folders, 32)
    assert not report.skipped
    assert cached["train"].count() == 300 and cached["val"].count() == 60
    train = train_stream(cached["train"], seed=0, num_classes=3, rotation_deg=10, hflip_p=0.5,
                         contrast=0.2, brightness=0.1, crop_scale=0.8, cutmix_p=0.5, mixup_p=0.5)
    labels, mixed = [], 0
    for batch in train.iter_batches(batch_size=64):
        # uint8 NHWC, as cached: the train loop standardises on its device.
        assert batch["image"].shape[1:] == (32, 32, 3) and batch["image"].dtype == np.uint8
        assert batch["target"].shape == (len(batch["label"]), 3)
        assert np.allclose(batch["target"].sum(1), 1.0, atol=1e-5)
        mixed += int((batch["target"].max(1) < 1.0 - 1e-6).sum())
        labels.extend(batch["label"].tolist())
    assert mixed > 0  # CutMix/MixUp at p=0.5 each mixes some rows
    assert sorted(labels) == sorted(folders.train.labels)
    # Val is not augmented: two passes give identical pixels.
    val = eval_stream(cached["val"])
    first = np.concatenate([b["image"] for b in val.iter_batches(batch_size=None)])
    second = np.concatenate([b["image"] for b in val.iter_batches(batch_size=None)])
    assert np.array_equal(first, second)
