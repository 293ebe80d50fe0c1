"""raymotion.predict.photo without Serve: large JPEGs decoded at reduced scale with their EXIF orientation and their
original size, other formats through the shared decode with its pixel limit (checked from the header)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFile

from raymotion.data.transforms import MAX_IMAGE_PIXELS, InvalidImage, decode_image
from raymotion.predict import photo as photos

# EXIF orientation -> how a camera stores an upright scene (the inverse of what a viewer applies).
STORED = {1: None, 3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def _upright(width: int, height: int) -> Image.Image:
    """Four quadrants of different colours: any wrong turn or flip moves them."""
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[: height // 2, : width // 2] = (220, 40, 40)
    rgb[: height // 2, width // 2:] = (40, 220, 40)
    rgb[height // 2:, : width // 2] = (40, 40, 220)
    rgb[height // 2:, width // 2:] = (230, 230, 230)
    return Image.fromarray(rgb)


def _jpeg(image: Image.Image, orientation: int | None) -> bytes:
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90, exif=exif)
    return buf.getvalue()


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_a_large_jpeg_is_decoded_reduced_upright_with_its_original_size(orientation):
    width, height = 6000, 4000  # 24 MP: over MAX_DECODED_PIXELS, so decoded at 1/2
    upright = _upright(width, height)
    stored = upright if STORED[orientation] is None else upright.transpose(STORED[orientation])
    got = photos.read_photo(_jpeg(stored, orientation))
    assert (got.width, got.height) == (width, height) and got.scale == 2
    assert got.image.size == (width // 2, height // 2) and got.image.mode == "RGB"
    assert got.image.width * got.image.height <= photos.MAX_DECODED_PIXELS
    expected = np.asarray(upright.resize(got.image.size, Image.BOX), np.int16)
    assert np.abs(np.asarray(got.image, np.int16) - expected).mean() < 4  # JPEG loss only
    assert got.to_original(got.image.width) == width


def test_the_scale_is_the_least_reduction_within_the_decoded_limit():
    assert photos.dct_scale(4000, 3000) == 1  # 12 MP: decoded as training decodes it
    assert photos.dct_scale(12000, 9000) == 4  # 108 MP
    assert photos.dct_scale(16320, 12240) == 4  # 200 MP
    assert photos.dct_scale(65000, 3000) == 4


def test_a_photo_within_the_decoded_limit_is_decoded_as_training_decodes_it():
    data = _jpeg(_upright(640, 480), 6)
    got = photos.read_photo(data)
    assert got.scale == 1 and np.array_equal(np.asarray(got.image), np.asarray(decode_image(data)))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pixel_limits_are_checked_from_the_header(monkeypatch):
    def no_decoding(self, *args, **kwargs):
        raise AssertionError("pixels were decoded")

    big_jpeg = _jpeg(Image.new("RGB", (64, 48)), None)
    # The same JPEG with its frame header claiming 20000 x 12000 (240 MP): refused before any decode.
    sof = big_jpeg.index(b"\xff\xc0")
    claimed = big_jpeg[:sof + 5] + (12000).to_bytes(2, "big") + (20000).to_bytes(2, "big") + big_jpeg[sof + 9:]
    buf = io.BytesIO()
    Image.new("1", (8000, 6000)).save(buf, "PNG")  # 48 MP PNG: over the limit of formats decoded whole
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    for data in (claimed, buf.getvalue()):
        with pytest.raises(InvalidImage) as err:
            photos.read_photo(data)
        assert err.value.kind == "too-large"
    assert 8000 * 6000 > MAX_IMAGE_PIXELS


def test_unreadable_bytes_are_invalid_not_errors():
    good = _jpeg(_upright(640, 480), None)
    for data in (b"", b"not an image", good[: len(good) // 2], good[:200]):
        with pytest.raises(InvalidImage):
            photos.read_photo(data)
