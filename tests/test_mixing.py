import numpy as np

from raymotion.data.mixing import cutmix, mix_batch, mixup, one_hot


def _batch(n=8, size=16, dtype=np.uint8):
    rng = np.random.default_rng(0)
    # Image i is filled with the value 10*i: every pixel says which image it came from.
    x = np.repeat((10 * np.arange(n)).astype(dtype)[:, None, None, None], size, 1).repeat(size, 2).repeat(3, 3)
    labels = np.arange(n) % 3
    return x, labels, rng


def test_cutmix_label_weight_equals_pasted_area():
    x, labels, rng = _batch()
    for _ in range(20):
        out, target, area = cutmix(x, one_hot(labels, 3), alpha=1.0, rng=rng)
        assert out.shape == x.shape and out.dtype == x.dtype
        for i in range(x.shape[0]):
            plane = out[i, :, :, 0]
            foreign = float((plane != 10 * i).mean())
            source = int(plane[plane != 10 * i][0]) // 10 if foreign > 0 else i
            if source != i:  # pasted from another image: that image's label gets exactly the pasted share
                assert abs(foreign - area) < 1e-6
                expected = (1 - area) * one_hot(labels[i:i + 1], 3)[0] + area * one_hot(labels[source:source + 1], 3)[0]
                assert np.allclose(target[i], expected, atol=1e-6)
        assert np.allclose(target.sum(1), 1.0)


def test_mixup_blends_pixels_and_labels_with_the_same_weight():
    for dtype in (np.uint8, np.float32):
        x, labels, rng = _batch(dtype=dtype)
        out, target, lam = mixup(x, one_hot(labels, 3), alpha=0.4, rng=rng)
        assert out.shape == x.shape and out.dtype == x.dtype and 0.0 <= lam <= 1.0
        assert np.allclose(target.sum(1), 1.0, atol=1e-6)
        # out_i = lam*10i + (1-lam)*10j (rounded for uint8) recovers the partner j, whose label must be
        # mixed in by (1-lam).
        for i in range(x.shape[0]):
            if lam < 0.95:
                j = round((float(out[i, 0, 0, 0]) - lam * 10 * i) / (1 - lam) / 10)
                expected = lam * one_hot(labels[i:i + 1], 3)[0] + (1 - lam) * one_hot(labels[j:j + 1], 3)[0]
                assert np.allclose(target[i], expected, atol=1e-5)
                assert abs(float(out[i, 0, 0, 0]) - (lam * 10 * i + (1 - lam) * 10 * j)) <= 0.5 + 1e-4


def test_mix_batch_off_gives_one_hot_targets_and_untouched_images():
    x, labels, rng = _batch()
    out, target = mix_batch(x, labels, 3, rng)
    assert np.array_equal(out, x) and np.array_equal(target, one_hot(labels, 3))


def _one_class_per_image(n=8):
    # Image i is filled with 10*i and is class i: a soft label is then directly "how much of which image".
    x, _, rng = _batch(n)
    return x, np.arange(n), rng, 10.0 * np.arange(n)


def test_mix_batch_cutmix_at_p1_pastes_pixels_and_labels_say_how_much():
    x, labels, rng, values = _one_class_per_image()
    changed = []
    for _ in range(5):
        out, target = mix_batch(x, labels, len(labels), rng, cutmix_p=1.0)
        # A draw may paste nothing (lam near 1 rounds the box to 0 px); five draws all doing so is a mix
        # that never runs.
        changed.append((not np.array_equal(out, x), not np.allclose(target, one_hot(labels, len(labels)))))
        assert set(np.unique(out)) <= set(values.astype(np.uint8)), "CutMix pastes whole pixels, it never blends"
        for i in range(len(labels)):
            # The share of image k's pixels in image i is the weight of class k in its label.
            share = np.bincount(out[i, :, :, 0].ravel() // 10, minlength=len(labels)) / out[i, :, :, 0].size
            assert np.allclose(target[i], share, atol=1e-6), (i, target[i], share)
    assert sum(pixels and soft for pixels, soft in changed) >= 3, "CutMix at p=1 left images or labels unchanged"


def test_mix_batch_mixup_at_p1_blends_pixels_by_the_label_weights():
    x, labels, rng, values = _one_class_per_image()
    pixels_changed = []
    for _ in range(5):
        out, target = mix_batch(x, labels, len(labels), rng, mixup_p=1.0, mixup_alpha=1.0)
        # lam < 1 always mixes the labels; the pixels may round back to themselves when lam is near 1.
        assert not np.allclose(target, one_hot(labels, len(labels))), "MixUp at p=1 left the labels one-hot"
        pixels_changed.append(not np.array_equal(out, x))
        assert np.allclose(target.sum(1), 1.0, atol=1e-6) and ((target > 0).sum(1) <= 2).all()
        # Each pixel of image i is the label-weighted blend of the images mixed in (rounded to uint8).
        assert np.abs(out[:, 0, 0, 0].astype(float) - target @ values).max() <= 0.5 + 1e-4
    assert sum(pixels_changed) >= 3, "MixUp at p=1 left the images unchanged"
