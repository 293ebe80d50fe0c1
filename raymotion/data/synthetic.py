"""A generated face data set whose mouth and brow shapes encode the class.

For tests and for machines without the real data: learnable, but not trivially (random position,
scale, skin and background colours, line widths, noise and JPEG compression).
"""

from __future__ import annotations

import os
import random

from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("angry", "happy", "sad")


# A file in the root of every generated data set: runs trained on it say so (manifest, report, terminal).
GENERATED_MARKER = "GENERATED"
GENERATED_NOTE = ("GENERATED FACES, NOT PHOTOS: this data set was drawn by raymotion.data.synthetic (for tests and "
                  "for machines without a data set); models trained on it are not emotion classifiers for real faces")


def draw_face(label: str, size: int, rng: random.Random) -> Image.Image:
    scale = 4  # draw large, then downsample: smooth edges like a real photo
    s = size * scale
    bg = tuple(rng.randint(20, 235) for _ in range(3))
    img = Image.new("RGB", (s, s), bg)
    d = ImageDraw.Draw(img)
    cx, cy = s * (0.5 + rng.uniform(-0.06, 0.06)), s * (0.5 + rng.uniform(-0.06, 0.06))
    r = s * rng.uniform(0.34, 0.44)
    skin = tuple(min(255, max(0, c + rng.randint(-25, 25))) for c in rng.choice([(224, 172, 105), (198, 134, 66), (141, 85, 36), (255, 219, 172)]))
    d.ellipse([cx - r * 0.85, cy - r, cx + r * 0.85, cy + r], fill=skin)
    ink = tuple(rng.randint(0, 70) for _ in range(3))
    w = max(2, int(r * rng.uniform(0.05, 0.08)))
    eye_y, eye_dx, eye_r = cy - r * 0.25, r * 0.35, r * 0.09
    for sign in (-1, 1):
        ex = cx + sign * eye_dx
        d.ellipse([ex - eye_r, eye_y - eye_r, ex + eye_r, eye_y + eye_r], fill=ink)
        # Brows: angry ones slant down towards the nose; the others are level or raised inwards.
        brow_y = eye_y - r * 0.22
        inner, outer = ex - sign * r * 0.18, ex + sign * r * 0.18
        tilt = {"angry": r * 0.13, "happy": -r * 0.02, "sad": -r * 0.09}[label] * rng.uniform(0.7, 1.3)
        d.line([(outer, brow_y - tilt * 0.5), (inner, brow_y + tilt * 0.5)], fill=ink, width=w)
    mouth_y, mouth_w = cy + r * 0.45, r * rng.uniform(0.35, 0.5)
    curve = r * rng.uniform(0.12, 0.22)
    box = [cx - mouth_w, mouth_y - curve, cx + mouth_w, mouth_y + curve]
    if label == "happy":
        d.arc(box, 10, 170, fill=ink, width=w)  # smile
    elif label == "sad":
        d.arc([box[0], box[1] + curve, box[2], box[3] + curve], 190, 350, fill=ink, width=w)  # frown
    else:
        d.line([(cx - mouth_w * 0.8, mouth_y), (cx + mouth_w * 0.8, mouth_y)], fill=ink, width=w)  # tight lips
    img = img.rotate(rng.uniform(-12, 12), resample=Image.BILINEAR, fillcolor=bg)
    img = img.resize((size, size), Image.BILINEAR).filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.8)))
    noise = Image.effect_noise((size, size), rng.uniform(4, 20)).convert("RGB")
    return Image.blend(img, noise, 0.08)


def make_synthetic_faces(root: str | os.PathLike, train_per_class: int = 60, val_per_class: int = 20,
                         size: int = 96, seed: int = 0) -> str:
    """Write ``root/{train,val}/{angry,happy,sad}/*.jpg`` and return ``root``."""
    rng = random.Random(seed)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for label in CLASSES:
            folder = os.path.join(root, split, label)
            os.makedirs(folder, exist_ok=True)
            for i in range(n):
                draw_face(label, size, rng).save(os.path.join(folder, f"{label}_{i:05d}.jpg"), quality=rng.randint(70, 95))
    with open(os.path.join(root, GENERATED_MARKER), "w") as f:
        f.write(GENERATED_NOTE + "\n")
    return os.fspath(root)
