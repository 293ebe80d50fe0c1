"""Photos as the service reads them: JPEGs up to MAX_JPEG_PIXELS decoded at a reduced scale, every other
format through the project's one decode function (raymotion.data.transforms.decode_image, as training
reads its files) with its pixel limit.

    photo = read_photo(data)     # Photo: .image (RGB, upright, maybe reduced), .width/.height (original)
    photo.to_original(x)         # a coordinate of .image in the original photo's pixels

A phone's JPEG of 50 to 200 megapixels is far larger than face detection (a copy of at most
``face_max_side`` pixels a side) or the face crops (a model's input, 64 to 224 pixels) need. libjpeg
decodes at 1/2, 1/4 or 1/8 scale directly from the DCT coefficients (PIL's ``Image.draft``): the full-size
pixels never exist. The scale is the smallest reduction that brings the decoded image to at most
MAX_DECODED_PIXELS, so a photo of up to that many pixels decodes exactly as before (and as training
decodes), and a reduced one keeps more than a quarter of MAX_DECODED_PIXELS: with the long side then above
2,000 pixels, the smallest face the detector finds (about 1/30 of the long side) is still some 70 pixels
wide. PNG, WebP, TIFF, ... have no cheap reduced decode: they keep MAX_IMAGE_PIXELS, refused from the
header before any pixel is decoded.

Peak memory of one request in the ingress, as a mechanism: the body (at most serve.app.MAX_BODY_BYTES),
plus the decoded image, at most max(MAX_DECODED_PIXELS, MAX_IMAGE_PIXELS) pixels whatever the photo's
size, held a small fixed number of times (PIL's 4 bytes a pixel, a transposed copy while EXIF orientation
is applied, the ingress's numpy view for cropping), plus the detection copy and the crops, which are
bounded by ``face_max_side`` and the number of faces. It does not grow with the photo's megapixels beyond
MAX_DECODED_PIXELS; concurrent requests each hold their own (at most ``max_ongoing_requests`` per replica).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from raymotion.data.transforms import MAX_IMAGE_PIXELS, InvalidImage, decode_image, to_rgb

MAX_JPEG_PIXELS = 200_000_000
# The most a JPEG is decoded to. Not above MAX_IMAGE_PIXELS, which every other format may decode to anyway,
# so the reduced decode adds nothing to the worst case of a request.
MAX_DECODED_PIXELS = 16_000_000
assert MAX_DECODED_PIXELS <= MAX_IMAGE_PIXELS
JPEG_FORMATS = ("JPEG", "MPO")  # MPO: a phone's JPEG with extra frames; its first frame is the photo
DCT_SCALES = (1, 2, 4, 8)  # what libjpeg decodes at directly
# EXIF orientations that turn the stored image by 90 degrees (width and height swap).
TRANSPOSING = (5, 6, 7, 8)

# PIL refuses any image beyond twice Image.MAX_IMAGE_PIXELS at open, before a format's own limit can be
# checked: raised to the largest photo the service reads, so that the limits here are the ones that apply
# (each still checked from the header, before decoding). Beyond it PIL keeps warning, then refusing.
Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, MAX_JPEG_PIXELS)


@dataclass(frozen=True)
class Photo:
    """An upright RGB image and the size of the photo it stands for (after EXIF orientation): ``image`` is
    that photo reduced ``scale`` times (1 when decoded at full size)."""
    image: Image.Image
    width: int
    height: int
    scale: int = 1

    def to_original(self, value: float) -> float:
        """A coordinate of ``image`` in the original photo's pixels: a pixel decoded at 1/scale stands for
        scale x scale original ones."""
        return value * self.scale


def dct_scale(width: int, height: int, max_pixels: int = MAX_DECODED_PIXELS) -> int:
    """The smallest of 1, 2, 4, 8 that brings width x height to at most ``max_pixels`` (8 at most)."""
    for scale in DCT_SCALES:
        if -(-width // scale) * -(-height // scale) <= max_pixels:
            return scale
    return DCT_SCALES[-1]


def _read_jpeg(img: Image.Image) -> Photo:
    width, height = img.size
    if width * height > MAX_JPEG_PIXELS:
        raise InvalidImage(f"JPEG of {width}x{height} pixels is too large (at most {MAX_JPEG_PIXELS:,} pixels)",
                           "too-large")
    scale = dct_scale(width, height)
    if scale > 1:
        # PIL's draft takes the largest DCT scale whose result is at least the size asked for: ask for the
        # size rounded down, so that it is this scale (the decoded size is then the size rounded up).
        img.draft(None, (width // scale, height // scale))
        if img.width * img.height > MAX_DECODED_PIXELS:  # the decoder did not reduce: never decode it whole
            raise InvalidImage(f"JPEG of {width}x{height} pixels is too large to decode here", "too-large")
        scale = next((s for s in DCT_SCALES if -(-width // s) == img.width), 1)
    orientation = img.getexif().get(0x0112, 1)
    img.load()
    # Phones store photos as the sensor saw them and say in EXIF how to turn them upright (the same rule as
    # decode_image: the boxes are in the upright photo's pixels).
    ImageOps.exif_transpose(img, in_place=True)
    if orientation in TRANSPOSING:
        width, height = height, width
    return Photo(to_rgb(img), width, height, scale)


def read_photo(data: bytes) -> Photo:
    """Bytes to a Photo; raises InvalidImage (kind "too-large" for the pixel limits) for anything else."""
    if not data:
        raise InvalidImage("empty body: no image bytes", "empty")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise InvalidImage("not a readable image: unrecognised format", "not-an-image") from None
    except Image.DecompressionBombError as err:
        raise InvalidImage(f"image is too large: {err}", "too-large") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise InvalidImage(f"not a readable image: {err}", "unreadable") from None
    with img:
        if img.format in JPEG_FORMATS:
            try:
                return _read_jpeg(img)
            except InvalidImage:
                raise
            except (OSError, SyntaxError, ValueError) as err:
                kind = "truncated" if "truncat" in str(err).lower() else "unreadable"
                raise InvalidImage(f"not a readable image: {err}", kind) from None
    image = decode_image(data)
    return Photo(image, image.width, image.height)
