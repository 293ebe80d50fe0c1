"""Deterministic image transforms shared by training, export checks and serving.

One decode and one resize function for every stage: a model sees the same pixels in training and in
production (a mismatch here is the commonest silent accuracy loss of a served model).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# A face crop is small; anything far larger is a mistake or an attack (decompression bomb).
MAX_IMAGE_PIXELS = 40_000_000


class InvalidImage(ValueError):
    """Bytes that are not a readable image; ``kind`` names the failure for skip reports."""

    def __init__(self, message: str, kind: str = "unreadable"):
        super().__init__(message)
        self.kind = kind


def decode_image_kind(data: bytes) -> tuple[Image.Image, str]:
    """Decode bytes into an upright RGB PIL image (EXIF orientation applied) and say what it was: "rgb" or
    "converted:<mode>" (L, RGBA, CMYK, I;16, ...). Raises InvalidImage with kind empty / not-an-image /
    truncated / too-large / unreadable."""
    if not data:
        raise InvalidImage("empty body: no image bytes", "empty")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise InvalidImage(f"image of {img.width}x{img.height} pixels is too large", "too-large")
            img.load()
            # Phones store photos as the sensor saw them and say in EXIF how to turn them upright; a
            # face lying on its side is neither found nor classified well.
            ImageOps.exif_transpose(img, in_place=True)
            mode = img.mode
            return to_rgb(img), "rgb" if mode == "RGB" else f"converted:{mode}"
    except InvalidImage:
        raise
    except UnidentifiedImageError:
        raise InvalidImage("not a readable image: unrecognised format", "not-an-image") from None
    except Image.DecompressionBombError as err:  # PIL's own limit, met at open beyond 2x its MAX_IMAGE_PIXELS
        raise InvalidImage(f"image is too large: {err}", "too-large") from None
    except (OSError, SyntaxError, ValueError) as err:
        kind = "truncated" if "truncat" in str(err).lower() else "unreadable"
        raise InvalidImage(f"not a readable image: {err}", kind) from None


def decode_image(data: bytes) -> Image.Image:
    """Decode bytes into an RGB PIL image; raises InvalidImage for anything unreadable."""
    return decode_image_kind(data)[0]


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (L, LA, P, RGBA, CMYK, I;16, ...) to 8-bit RGB; alpha is composited on black."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = arr.max() if arr.size and arr.max() > 255 else 255.0
        img = Image.fromarray((arr * (255.0 / peak)).clip(0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def resize_rgb(img: Image.Image, size: int) -> np.ndarray:
    """Resize to ``size`` x ``size`` (bilinear, antialiased) and return uint8 HWC."""
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def normalize(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW, scaled to [0, 1] then standardised per channel."""
    x = images.astype(np.float32) * (1.0 / 255.0)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def load_images(paths: list[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode and resize files in-process (export checks, benchmarks): uint8 NHWC of the readable
    files, and the indices (into ``paths``) of those files."""
    images, kept = [], []
    for i, path in enumerate(paths):
        try:
            with open(path, "rb") as f:
                images.append(resize_rgb(decode_image(f.read()), size))
        except (InvalidImage, OSError):
            continue
        kept.append(i)
    out = np.stack(images) if images else np.empty((0, size, size, 3), np.uint8)
    return out, np.asarray(kept, np.int64)
