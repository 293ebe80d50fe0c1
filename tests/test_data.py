import io
import os
import time
import warnings

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from raymotion.config import Augmentation
from raymotion.data import DataError, index_image_folders
from raymotion.data.augment import (augment_batch, crop_params, degrade_batch, draw_geometry, draw_photometric,
                                    photometric_luts, rotation_matrices, theta_to_pixel_maps)
from raymotion.data.pipeline import augment_mix, camera_degraded, load_cached, train_stream
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


def _smooth_images(n: int, height: int = 40, width: int = 56) -> np.ndarray:
    """Low-frequency colour patterns: bilinear resampling of them is well defined to a grey level."""
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([128 + 100 * np.sin(xx / 7.0), 128 + 100 * np.cos(yy / 5.0), (xx + yy) * 2], -1)
    return np.repeat(img.clip(0, 255).astype(np.uint8)[None], n, 0)


def _warp(images: np.ndarray, theta: np.ndarray) -> np.ndarray:
    h, w = images.shape[1:3]
    maps = theta_to_pixel_maps(theta, h, w)
    return np.stack([cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                    borderMode=cv2.BORDER_REPLICATE) for img, m in zip(images, maps)])


def test_augmentations_keep_shape_dtype_and_leave_the_input_alone():
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    images.flags.writeable = False  # Ray hands out read-only arrays
    out = augment_batch(images, np.random.default_rng(0), rotation_deg=20, hflip_p=0.5, contrast=0.4,
                        brightness=0.2, crop_scale=0.5)
    assert out.shape == images.shape and out.dtype == np.uint8 and out.flags.writeable
    assert not np.array_equal(out, images)
    # Every op at its neutral value: the pixels come back unchanged (a copy).
    same = augment_batch(images, np.random.default_rng(0))
    assert np.array_equal(same, images) and same is not images


def test_each_augmentation_does_what_it_says():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    assert np.array_equal(augment_batch(x, rng, hflip_p=1.0), x[:, :, ::-1])
    assert np.array_equal(augment_batch(x, rng, hflip_p=0.0), x)
    # Brightness shifts a mid-grey image uniformly, by at most its strength.
    grey = np.full((4, 8, 8, 3), 128, np.uint8)
    b = augment_batch(grey, rng, brightness=0.3).astype(int)
    assert (b == b[:, :1, :1, :1]).all() and (np.abs(b - 128) <= round(0.3 * 255)).all() and (b != 128).any()
    # Contrast keeps each image's mean (up to rounding) and changes its spread.
    flat = np.full((6, 8, 8, 3), 128, np.uint8)
    flat[:, :, :4] = 100
    c = augment_batch(flat, rng, contrast=0.5).astype(float)
    assert np.allclose(c.mean(axis=(1, 2, 3)), flat.mean(axis=(1, 2, 3)), atol=0.5)
    assert not np.allclose(c.std(axis=(1, 2, 3)), flat.std(axis=(1, 2, 3)))
    # A crop of a left/right split image zooms in: the boundary moves (or leaves the box), and over a
    # batch the boxes fall on both halves alike.
    split = np.zeros((16, 32, 32, 3), np.uint8)
    split[:, :, 16:] = 255
    crop = augment_batch(split, rng, crop_scale=0.3)
    boundary = (crop[:, 0, :, 0] > 127).argmax(1)  # first bright column per image
    assert (boundary != 16).any() and 40 < crop.mean() < 215
    # A small rotation moves pixels but keeps a smooth image close to the original.
    smooth = _smooth_images(4)
    r = augment_batch(smooth, rng, rotation_deg=5.0).astype(float)
    assert 0 < np.abs(r - smooth).mean() < 20


def _detail(images: np.ndarray) -> float:
    """Mean absolute difference of horizontal neighbours: high for fine texture, low once it is lost."""
    return float(np.abs(np.diff(images.astype(float), axis=2)).mean())


def test_each_camera_degradation_does_what_it_says():
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    colour.flags.writeable = False
    grey = degrade_batch(colour, rng, greyscale_p=1.0)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    assert not np.array_equal(grey, colour) and colour.flags.writeable is False
    # Down to at most 16 px and back up: the fine texture of noise is gone, the size and mean stay.
    small = degrade_batch(colour, rng, downscale_p=1.0, downscale_min_px=8, downscale_max_px=16)
    assert small.shape == colour.shape and _detail(small) < 0.3 * _detail(colour)
    assert abs(small.mean() - colour.mean()) < 3
    blurred = degrade_batch(colour, rng, blur_p=1.0, blur_sigma_max=2.0)
    assert _detail(blurred) < 0.8 * _detail(colour)
    # JPEG at low quality changes the pixels; the same quality on a JPEG-round-tripped image barely does.
    jpeg = degrade_batch(colour, rng, jpeg_p=1.0, jpeg_quality_min=30)
    assert np.abs(jpeg.astype(int) - colour).mean() > 5
    # Probability 0 everywhere: an equal copy.
    same = degrade_batch(colour, rng)
    assert np.array_equal(same, colour) and same is not colour
    # Probabilities pick images: about half of 200 at p = 0.5.
    many = np.repeat(colour[:1], 200, 0)
    picked = (degrade_batch(many, rng, greyscale_p=0.5) != many).any(axis=(1, 2, 3)).sum()
    assert 60 < picked < 140


def test_box_translation_shifts_the_image_by_at_most_its_fraction():
    rng = np.random.default_rng(1)
    x = np.zeros((64, 40, 40, 3), np.uint8)
    x[:, 18:22, 18:22] = 255  # a bright square in the centre
    moved = augment_batch(x, rng, translate=0.1)
    ys, xs = [], []
    for image in moved[..., 0].astype(float):
        weights = image / image.sum()
        ys.append((weights.sum(1) * np.arange(40)).sum())
        xs.append((weights.sum(0) * np.arange(40)).sum())
    shift = np.abs(np.array([ys, xs]) - 19.5)
    assert shift.max() <= 0.1 * 40 + 0.5 and shift.max() > 2  # up to 4 px, and it does move


def test_camera_degraded_val_is_seeded_per_image_and_training_draws_it_when_asked():
    images = np.random.default_rng(2).integers(0, 256, (6, 48, 48, 3), dtype=np.uint8)
    once, again = camera_degraded(images), camera_degraded(images)
    assert np.array_equal(once, again) and not np.array_equal(once, images)
    # Row i degrades the same way whatever the other rows hold.
    other = images.copy()
    other[3:] = 0
    assert np.array_equal(camera_degraded(other)[:3], once[:3])
    assert not np.array_equal(camera_degraded(images, seed=1), once)
    # Training: the default augmentation degrades some images, Augmentation.only() none of them.
    images = _smooth_images(6, height=48, width=48)
    labels = np.zeros(len(images), int)
    plain, _ = augment_mix(images, labels, np.random.default_rng(0), 3, Augmentation.only(greyscale_p=1.0))
    assert (plain[..., 0] == plain[..., 2]).all()
    untouched, _ = augment_mix(images, labels, np.random.default_rng(0), 3, Augmentation.only())
    assert np.array_equal(untouched, images)


def test_opencv_warp_equals_torch_affine_grid_sample():
    """The maps given to cv2.warpAffine, converted from normalised theta, sample exactly where torch's
    affine_grid + grid_sample (align_corners=False, border padding) sample: same pixels to half a grey level."""
    images = _smooth_images(16)
    theta = draw_geometry(16, np.random.default_rng(1), crop_scale=0.5, hflip_p=0.5, rotation_deg=20)
    ours = _warp(images, theta).astype(np.float64)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    grid = F.affine_grid(torch.from_numpy(theta).float(), [16, 3, 40, 56], align_corners=False)
    ref = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    diff = np.abs(ours - ref.permute(0, 2, 3, 1).numpy())
    assert diff.max() <= 1.0 and diff.mean() < 0.5


def test_photometric_table_is_contrast_then_brightness_rounded_once():
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (6, 12, 12, 3), dtype=np.uint8)
    scale, offset = draw_photometric(6, np.random.default_rng(3), 0.4, 0.2)
    means = images.reshape(6, -1).mean(1)
    luts = photometric_luts(means, scale, offset)
    looked_up = np.stack([lut[img] for lut, img in zip(luts, images)]).astype(np.float64)
    exact = (scale[:, None, None, None] * images + ((1 - scale) * means + 255 * offset)[:, None, None, None])
    assert np.abs(looked_up - exact.clip(0, 255)).max() <= 0.5
    # augment_batch draws the same parameters first, and a photometric-only batch is exactly the lookup.
    out = augment_batch(images, np.random.default_rng(3), contrast=0.4, brightness=0.2)
    assert np.array_equal(out, looked_up.astype(np.uint8))


def test_composed_geometry_equals_the_ops_in_sequence():
    images = _smooth_images(6)
    h, w = images.shape[1:3]
    # Flip then rotation in one map equals rotating the flipped image (flip is exact).
    fused = draw_geometry(6, np.random.default_rng(3), hflip_p=1.0, rotation_deg=12)
    rng = np.random.default_rng(3)
    rng.random(6)  # the flip draw
    rot = np.concatenate([rotation_matrices(6, 12, rng), np.zeros((6, 2, 1))], 2)
    assert np.abs(_warp(images, fused).astype(int) - _warp(images[:, :, ::-1].copy(), rot).astype(int)).max() <= 1
    # Crop alone is the box of crop_params: scale on the diagonal, centre as the shift.
    theta = draw_geometry(6, np.random.default_rng(4), crop_scale=0.5)
    sw, sh, tx, ty = crop_params(6, 0.5, np.random.default_rng(4))
    assert np.allclose(theta[:, 0], np.stack([sw, np.zeros(6), tx], 1))
    assert np.allclose(theta[:, 1], np.stack([np.zeros(6), sh, ty], 1))
    assert (np.abs(theta[:, 0, 2]) <= 1 - sw + 1e-12).all()  # the box stays inside the image
    # Crop + rotation of a constant image stays constant (border replication, no black corners).
    const = np.full((4, 16, 16, 3), 180, np.uint8)
    out = augment_batch(const, np.random.default_rng(5), crop_scale=0.5, hflip_p=0.5, rotation_deg=30)
    assert (out == 180).all()
    # A horizontal ramp: flipping every image reverses its left-right order after the crop.
    ramp = np.repeat(np.linspace(0, 255, 16).astype(np.uint8)[None, None, :, None], 16, 1).repeat(3, 3)
    flipped = augment_batch(np.repeat(ramp, 2, 0), np.random.default_rng(6), crop_scale=0.6, hflip_p=1.0)
    assert (flipped[:, :, 0] > flipped[:, :, -1]).all()


def test_normalize_is_nchw_standardised():
    images = np.full((2, 4, 4, 3), 255, np.uint8)
    out = normalize(images, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert out.shape == (2, 3, 4, 4) and out.dtype == np.float32
    assert np.allclose(out, 1.0)


def test_standardize_on_the_train_device_matches_the_export_and_serve_normalize():
    """The train loop standardises uint8 NHWC batches in torch; export and Serve use transforms.normalize
    (numpy). The model must see the same numbers from both."""
    from raymotion.train.loop import standardize

    images = np.random.default_rng(0).integers(0, 256, (4, 9, 7, 3), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    out = standardize(torch.from_numpy(images), torch.tensor(mean), torch.tensor(std))
    assert out.shape == (4, 3, 9, 7) and out.dtype == torch.float32 and out.is_contiguous()
    np.testing.assert_allclose(out.numpy(), normalize(images, mean, std), atol=1e-5)
    # The same numbers laid out NHWC in memory (TrainConfig.channels_last).
    nhwc = standardize(torch.from_numpy(images), torch.tensor(mean), torch.tensor(std), channels_last=True)
    assert nhwc.shape == (4, 3, 9, 7) and nhwc.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(nhwc.numpy(), normalize(images, mean, std), atol=1e-5)


def test_ray_data_pipeline_streams_labelled_normalized_batches(ray_session, faces_root):
    folders = index_image_folders(faces_root)
    cached, report = load_cached(folders, 32)
    assert not report.skipped
    assert cached["train"].count() == 300 and cached["val"].count() == 60
    train = train_stream(cached["train"], seed=0, num_classes=3, augmentation=AUG_MIX)
    labels, mixed = [], 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for batch in train.iter_batches(batch_size=64):
            # uint8 NHWC, as cached: the train loop standardises on its device.
            assert batch["image"].shape[1:] == (32, 32, 3) and batch["image"].dtype == np.uint8
            assert batch["target"].shape == (len(batch["label"]), 3)
            assert np.allclose(batch["target"].sum(1), 1.0, atol=1e-5)
            mixed += int((batch["target"].max(1) < 1.0 - 1e-6).sum())
            labels.extend(batch["label"].tolist())
    assert mixed > 0  # CutMix/MixUp at p=0.5 each mixes some rows
    # A task cap above the cached blocks (300 rows: decoding packs them into fewer than 2 CPUs' worth) is
    # a warning Ray repeats every epoch, in the user's terminal.
    assert not [w for w in caught if "maximum number of concurrent tasks" in str(w.message)], [str(w.message) for w in caught]
    assert sorted(labels) == sorted(folders.train.labels)


AUG_MIX = Augmentation.only(rotation_deg=10, hflip_p=0.5, contrast=0.2, brightness=0.1, crop_scale=0.8, cutmix_p=0.5,
                            mixup_p=0.5)


def _two_epochs(cached, seed):
    """What one Train worker reads of a fresh train stream in its first two epochs (as the loop reads it:
    a one-way streaming split, a seeded local shuffle): the first batch of each, and every row's pixels by uid."""
    from raymotion.data.pipeline import SHUFFLE_BUFFER_ROWS

    shard = train_stream(cached["train"], seed=seed, num_classes=3, augmentation=AUG_MIX).streaming_split(1, equal=True)[0]
    firsts, by_uid = [], []
    for epoch in (1, 2):
        batches = list(shard.iter_batches(batch_size=32, local_shuffle_buffer_size=SHUFFLE_BUFFER_ROWS,
                                          local_shuffle_seed=seed + epoch))
        firsts.append(batches[0])
        by_uid.append({int(u): img for b in batches for u, img in zip(b["uid"], b["image"])})
    return firsts, by_uid


def test_the_same_seed_gives_the_same_training_batches(ray_session, faces_root):
    """Augmentation is drawn from (seed, epoch, block): a second run with the same seed reads the same
    batches, epoch by epoch; a new epoch or another seed draws anew."""
    cached, _ = load_cached(index_image_folders(faces_root), 32)
    firsts, by_uid = _two_epochs(cached, seed=0)
    again_firsts, again_by_uid = _two_epochs(cached, seed=0)
    for a, b in zip(firsts, again_firsts):
        for column in ("image", "label", "target", "uid"):
            assert np.array_equal(a[column], b[column]), column
    for a, b in zip(by_uid, again_by_uid):
        assert a.keys() == b.keys() and all(np.array_equal(a[u], b[u]) for u in a)

    def changed(x, y):  # the fraction of rows whose pixels differ
        return np.mean([not np.array_equal(x[u], y[u]) for u in x])

    # The same image is augmented anew in the next epoch (rotation alone changes nearly every row).
    assert changed(by_uid[0], by_uid[1]) > 0.9
    other_firsts, other_by_uid = _two_epochs(cached, seed=1)
    assert not np.array_equal(firsts[0]["image"], other_firsts[0]["image"])
    assert changed(by_uid[0], other_by_uid[0]) > 0.9


def test_distilled_stream_trains_against_label_and_teacher_by_uid(ray_session, faces_root):
    """Each row's target is (1 - alpha) * its one-hot label + alpha * the teachers' row of its own uid."""
    from raymotion.data.pipeline import distilled_targets

    folders = index_image_folders(faces_root)
    cached, _ = load_cached(folders, 32)
    n = len(folders.train.paths)
    teacher = np.random.default_rng(0).dirichlet(np.ones(3), n).astype(np.float32)
    stream = train_stream(cached["train"], seed=0, num_classes=3, augmentation=Augmentation.only(),
                          teacher_by_uid=teacher, distill_alpha=0.75)
    seen = 0
    for batch in stream.iter_batches(batch_size=100):
        label = np.eye(3)[batch["label"]]
        np.testing.assert_allclose(batch["target"], 0.25 * label + 0.75 * teacher[batch["uid"]], atol=1e-6)
        seen += len(batch["uid"])
    assert seen == n
    # A teacher row that is missing (another data set's soft labels) is an error, not a silent label.
    holes = teacher.copy()
    holes[5] = np.nan
    with pytest.raises(ValueError, match="no teacher probabilities"):
        distilled_targets(np.array([0, 1]), holes[4:6], 0.5)


def test_a_materialize_waits_for_a_free_cpu_within_its_bound(ray_session):
    """Before each materialize the pipeline waits (bounded) until the cluster shows a free CPU: a lagging
    resource view right after the previous execution otherwise makes Ray Data warn that the job will hang."""
    import ray

    from raymotion.data.pipeline import wait_for_a_free_cpu

    @ray.remote
    class Holder:
        def ready(self):
            return True

    assert wait_for_a_free_cpu(timeout_s=30)
    # Holders take every free CPU, and every CPU that the session's other actors release meanwhile (one freed
    # between the take and the wait made the wait right to see it): the wait must then give up.
    holders, gave_up = [], False
    try:
        deadline = time.monotonic() + 30
        while not gave_up and time.monotonic() < deadline:
            free = ray.available_resources().get("CPU", 0.0)
            if free:
                holders.append(Holder.options(num_cpus=free).remote())
                ray.get(holders[-1].ready.remote(), timeout=60)
                while ray.available_resources().get("CPU", 0.0) == free and time.monotonic() < deadline:
                    time.sleep(0.1)  # the resource view lags the placement
            else:  # the resource view shows every CPU held
                gave_up = not wait_for_a_free_cpu(timeout_s=0.3)
        assert gave_up, "the wait saw a free CPU while holders had them all"
    finally:
        for holder in holders:
            ray.kill(holder)
    assert wait_for_a_free_cpu(timeout_s=30)


def test_decoding_beside_a_holder_of_most_cpus_runs_on_what_is_free(ray_session, faces_root, tmp_path):
    """A service (make run's) holds most of the CPUs: `data prepare` and the tune's decode must still run,
    on the fraction left, rather than wait for whole CPUs that do not come free while it runs."""
    from concurrent.futures import ThreadPoolExecutor

    from conftest import cpus_held_but
    from raymotion.data.__main__ import prepare_parquet

    def decode_and_write():
        prepare_parquet(faces_root, str(tmp_path / "cache"), 24)  # decode, then write Parquet
        return load_cached(index_image_folders(faces_root), 24)

    pool = ThreadPoolExecutor(1)
    try:
        with cpus_held_but(ray_session, 0.3):
            cached, _ = pool.submit(decode_and_write).result(timeout=150)
    finally:
        pool.shutdown()  # after the holder is gone: a decode that waited then finishes, and the thread ends
    assert cached["train"].count() == 300 and cached["val"].count() == 60
