"""Random augmentations of a batch of uint8 NHWC images, as the images travel (CPU data workers).

Per image, the geometric ops (resized crop, flip, rotation) compose into ONE affine map and the
photometric ops (contrast, brightness) into ONE 256-entry lookup table; OpenCV applies both to the
uint8 pixels. The random parameters are drawn for the whole batch at once (numpy).

Why uint8 and OpenCV: one warp and one lookup on the uint8 pixels cost far less per image than a
float path (to float, grid_sample, back to uint8); the augment stage of ``python -m bench data``
measures it. On a 2-CPU node the data workers share the cores with the trainer, so every millisecond
here is taken from it.
Nothing here imports torch: data workers start without it.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

# One OpenCV thread per worker process: Ray runs one data task per CPU, and OpenCV's own pool would
# oversubscribe the cores (the same reason Ray sets OMP_NUM_THREADS).
cv2.setNumThreads(1)


def crop_params(n: int, min_scale: float, rng: np.random.Generator,
                ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[np.ndarray, ...]:
    """Per image: box scale (sw, sh) and centre (tx, ty) in normalised coordinates [-1, 1], the box
    inside the image. Area fraction uniform in [min_scale, 1], log aspect ratio uniform in ``ratio``."""
    area = min_scale + rng.random(n) * (1 - min_scale)
    aspect = np.exp(math.log(ratio[0]) + rng.random(n) * (math.log(ratio[1]) - math.log(ratio[0])))
    sw, sh = np.minimum(np.sqrt(area * aspect), 1.0), np.minimum(np.sqrt(area / aspect), 1.0)
    tx = (rng.random(n) * 2 - 1) * (1 - sw)
    ty = (rng.random(n) * 2 - 1) * (1 - sh)
    return sw, sh, tx, ty


def rotation_matrices(n: int, max_degrees: float, rng: np.random.Generator) -> np.ndarray:
    """(n, 2, 2) rotations by angles uniform in [-max_degrees, max_degrees]."""
    angle = (rng.random(n) * 2 - 1) * math.radians(max_degrees)
    cos, sin = np.cos(angle), np.sin(angle)
    return np.stack([np.stack([cos, -sin], 1), np.stack([sin, cos], 1)], 1)


def draw_geometry(n: int, rng: np.random.Generator, *, crop_scale: float = 1.0, hflip_p: float = 0.0,
                  rotation_deg: float = 0.0, translate: float = 0.0,
                  ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
    """Resized crop, then horizontal flip, then rotation, composed: (n, 2, 3) maps ``theta`` from output
    to input coordinates, both normalised to [-1, 1] over pixel edges (``F.affine_grid``'s convention
    with align_corners=False). Output point u samples the input at S·F·R·u + t (S: crop scale, F: flip,
    R: rotation, t: crop centre plus a box shift of up to ``translate`` of the image side per axis: a face
    detector's box is never centred the way the training crops are). Draws, in order: crop, flip,
    rotation, shift (each only when it is on)."""
    linear = np.repeat(np.eye(2)[None], n, 0)
    shift = np.zeros((n, 2))
    if crop_scale < 1:
        sw, sh, tx, ty = crop_params(n, crop_scale, rng, ratio)
        linear = linear * np.stack([sw, sh], 1)[:, :, None]
        shift = np.stack([tx, ty], 1)
    if hflip_p > 0:
        sign = np.where(rng.random(n) < hflip_p, -1.0, 1.0)
        linear[:, :, 0] *= sign[:, None]  # negate the x column
    if rotation_deg > 0:
        linear = linear @ rotation_matrices(n, rotation_deg, rng)
    if translate > 0:  # a fraction f of the side is 2f in normalised coordinates
        shift = shift + (rng.random((n, 2)) * 2 - 1) * 2 * translate
    return np.concatenate([linear, shift[:, :, None]], 2)


def theta_to_pixel_maps(theta: np.ndarray, height: int, width: int) -> np.ndarray:
    """Normalised ``theta`` (n, 2, 3) -> the same maps in pixel indices (pixel i's centre is at i), the
    form ``cv2.warpAffine`` takes with WARP_INVERSE_MAP: output pixel (x, y) samples input M·(x, y, 1).

    Normalised u = (2i + 1)/W - 1 per axis; substituting on both sides of u_in = A·u_out + t."""
    a = theta[:, :, :2]
    t = theta[:, :, 2]
    size = np.array([width, height], dtype=np.float64)
    # Column j of A scales with size_i / size_j when moving from normalised to pixel units.
    m = np.empty_like(theta)
    m[:, :, :2] = a * size[None, :, None] / size[None, None, :]
    m[:, :, 2] = (m[:, :, :2] * ((1 - size) / 2)[None, None, :]).sum(2) + size[None] / 2 * (t + 1) - 0.5
    return m


def draw_photometric(n: int, rng: np.random.Generator, contrast: float = 0.0,
                     brightness: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Per image: contrast factor c in [1 - contrast, 1 + contrast] and brightness offset b in
    [-brightness, brightness] (a fraction of full scale). Draws: factors, then offsets."""
    scale = 1.0 + (rng.random(n) * 2 - 1) * contrast if contrast > 0 else np.ones(n)
    offset = (rng.random(n) * 2 - 1) * brightness if brightness > 0 else np.zeros(n)
    return scale, offset


def photometric_luts(means: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """(n, 256) uint8 tables of v -> c·v + (1 - c)·mean + 255·b, rounded and clamped once.

    Contrast scales each image's deviation from its mean grey; brightness adds an offset. As one table
    the two cost one lookup per pixel, and the rounding and clamping happen once, not after each op."""
    v = np.arange(256, dtype=np.float64)
    out = scale[:, None] * v[None] + ((1 - scale) * means + 255.0 * offset)[:, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def augment_batch(images: np.ndarray, rng: np.random.Generator, *, rotation_deg: float = 0.0,
                  hflip_p: float = 0.0, contrast: float = 0.0, brightness: float = 0.0,
                  crop_scale: float = 1.0, translate: float = 0.0) -> np.ndarray:
    """uint8 NHWC -> a new uint8 NHWC array of the same shape. Each op is off at its neutral value.

    Photometric ops (per pixel, around the source image's mean) and geometry commute up to rounding and
    border effects, so each image is warped once (bilinear, edges repeat the border pixels) and then
    looked up once. Draws: photometric parameters, then geometry."""
    n, height, width = images.shape[:3]
    photometric = contrast > 0 or brightness > 0
    if photometric:
        scale, offset = draw_photometric(n, rng, contrast, brightness)
        # Mean grey per image; only contrast needs it (brightness alone must not pay for it).
        means = images.reshape(n, -1).mean(1) if contrast > 0 else np.zeros(n)
        luts = photometric_luts(means, scale, offset)
    if crop_scale < 1 or rotation_deg > 0 or translate > 0:
        maps = theta_to_pixel_maps(draw_geometry(n, rng, crop_scale=crop_scale, hflip_p=hflip_p,
                                                 rotation_deg=rotation_deg, translate=translate), height, width)
        out = np.empty_like(images)
        source = np.ascontiguousarray(images)
        for i in range(n):
            cv2.warpAffine(source[i], maps[i], (width, height), dst=out[i],
                           flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
    else:  # a flip alone is an exact index op, no resampling
        out = images.copy()
        if hflip_p > 0:
            flip = rng.random(n) < hflip_p
            out[flip] = images[flip, :, ::-1]
    if photometric:
        for i in range(n):
            cv2.LUT(out[i], luts[i], dst=out[i])
    return out


# Camera degradations: what a webcam or a phone's face crop looks like and the training crops do not.
# Order as a camera makes them: a grey sensor (or a grey-converted stream), a face covering few pixels
# (down, then up to the model's size), optics and motion (blur), then the encoder (JPEG).

def draw_mask(n: int, p: float, rng: np.random.Generator) -> np.ndarray:
    return rng.random(n) < p if p > 0 else np.zeros(n, bool)


def to_grey(image: np.ndarray) -> np.ndarray:
    """RGB uint8 -> its luma in all three channels (what a grey camera stream decodes to)."""
    return np.repeat(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2)


def down_up(image: np.ndarray, side: int) -> np.ndarray:
    """Down to ``side`` x ``side`` (area averaging, as a small face on a sensor) and back up (bilinear, as
    the service resizes a small crop): the detail of ``side`` pixels at the original size."""
    h, w = image.shape[:2]
    small = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    ok, encoded = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # OpenCV encodes every uint8 RGB image; fail loudly rather than hand back the clean one
        raise RuntimeError("cv2.imencode failed on a uint8 image")
    return np.ascontiguousarray(cv2.imdecode(encoded, cv2.IMREAD_COLOR)[:, :, ::-1])


def degrade_batch(images: np.ndarray, rng: np.random.Generator, *, greyscale_p: float = 0.0,
                  downscale_p: float = 0.0, downscale_min_px: int = 20, downscale_max_px: int = 48,
                  blur_p: float = 0.0, blur_sigma_max: float = 1.5, jpeg_p: float = 0.0,
                  jpeg_quality_min: int = 30) -> np.ndarray:
    """uint8 NHWC -> a new array with each degradation applied to the images its probability picks.

    Down-up scaling draws a side in [downscale_min_px, min(downscale_max_px, size)]; blur a Gaussian
    sigma in [0.3, blur_sigma_max] pixels; JPEG a quality in [jpeg_quality_min, 90]. Draws, in order: the
    four masks, then sides, sigmas and qualities (one per image, used or not: a given seed degrades image
    i the same way whatever the others draw)."""
    n, size = images.shape[0], images.shape[1]
    grey, down, blur, jpeg = (draw_mask(n, p, rng) for p in (greyscale_p, downscale_p, blur_p, jpeg_p))
    high = max(2, min(downscale_max_px, size))
    sides = rng.integers(min(downscale_min_px, high), high + 1, n)
    sigmas = 0.3 + rng.random(n) * max(0.0, blur_sigma_max - 0.3)
    qualities = rng.integers(jpeg_quality_min, 91, n)
    out = images.copy()
    for i in np.flatnonzero(grey | down | blur | jpeg):
        image = out[i]
        if grey[i]:
            image = to_grey(image)
        if down[i] and sides[i] < size:
            image = down_up(image, int(sides[i]))
        if blur[i]:
            image = cv2.GaussianBlur(image, (0, 0), float(sigmas[i]), borderType=cv2.BORDER_REPLICATE)
        if jpeg[i]:
            image = jpeg_roundtrip(np.ascontiguousarray(image), int(qualities[i]))
        out[i] = image
    return out
