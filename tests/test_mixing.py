import torch

from raymotion.data.mixing import cutmix, mix_batch, mixup, one_hot


def _batch(n=8, size=16):
    gen = torch.Generator().manual_seed(0)
    # Image i is filled with the value i: every pixel says which image it came from.
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, size, size).clone()
    labels = torch.arange(n) % 3
    return x, labels, gen


def test_cutmix_label_weight_equals_pasted_area():
    x, labels, gen = _batch()
    for _ in range(20):
        out, target, area = cutmix(x, one_hot(labels, 3), alpha=1.0, gen=gen)
        assert out.shape == x.shape
        for i in range(x.shape[0]):
            foreign = (out[i, 0] != i).float().mean().item()
            source = int(out[i, 0][out[i, 0] != i][0].item()) if foreign > 0 else i
            if source != i:  # pasted from another image: that image's label gets exactly the pasted share
                assert abs(foreign - area) < 1e-6
                expected = (1 - area) * one_hot(labels[i:i + 1], 3)[0] + area * one_hot(labels[source:source + 1], 3)[0]
                assert torch.allclose(target[i], expected, atol=1e-6)
        assert torch.allclose(target.sum(1), torch.ones(x.shape[0]))


def test_mixup_blends_pixels_and_labels_with_the_same_weight():
    x, labels, gen = _batch()
    out, target, lam = mixup(x, one_hot(labels, 3), alpha=0.4, gen=gen)
    assert out.shape == x.shape and 0.0 <= lam <= 1.0
    assert torch.allclose(target.sum(1), torch.ones(x.shape[0]))
    # out_i = lam*i + (1-lam)*j recovers the partner j, whose label must be mixed in by (1-lam).
    for i in range(x.shape[0]):
        if lam < 0.999:
            j = round(((out[i, 0, 0, 0] - lam * i) / (1 - lam)).item())
            expected = lam * one_hot(labels[i:i + 1], 3)[0] + (1 - lam) * one_hot(labels[j:j + 1], 3)[0]
            assert torch.allclose(target[i], expected, atol=1e-5)


def test_mix_batch_off_gives_one_hot_targets_and_untouched_images():
    x, labels, gen = _batch()
    out, target = mix_batch(x, labels, 3, gen)
    assert torch.equal(out, x) and torch.equal(target, one_hot(labels, 3))
    out, target = mix_batch(x, labels, 3, gen, cutmix_p=1.0)
    assert not torch.equal(out, x) or torch.equal(target, one_hot(labels, 3))
    assert target.min() >= 0 and torch.allclose(target.sum(1), torch.ones(8))
