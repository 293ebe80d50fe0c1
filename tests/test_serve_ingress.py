"""What every client of the session's real Serve app (conftest.served_url) gets at the edges of the
contract: an oversize body answered 413 even by a client that writes its whole body before it reads
(urllib), one error shape for every status, phone photos of 108 and 200 megapixels answered with boxes in
their own pixels, a 200-megapixel PNG refused from its header, and faces cut by the photo's border boxed
as whole faces."""

from __future__ import annotations

import io
import json
import os
import struct
import urllib.error
import urllib.request
import zlib

import numpy as np
import pytest
import requests
from PIL import Image

from bench import face_fit
from serve.app import MAX_BODY_BYTES
from raymotion.predict.photo import MAX_JPEG_PIXELS

TIMEOUT_S = 60
FACE_CROPS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "faces")


def _crop(i: int) -> Image.Image:
    return Image.open(os.path.join(FACE_CROPS, sorted(os.listdir(FACE_CROPS))[i])).convert("RGB")


def _urllib(url: str, data: bytes | None = None, method: str | None = None,
            content_type: str = "image/jpeg") -> tuple[int, dict, str]:
    """status, parsed JSON body (or {}), content type, as urllib gets them: it sends the whole body first."""
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": content_type} if data is not None else {})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.status, json.loads(response.read() or b"{}"), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = {"raw": raw[:300].decode(errors="replace")}
        return err.code, body, err.headers.get("Content-Type", "")


# --- errors ------------------------------------------------------------------------------------------

def test_a_body_over_the_limit_sent_by_urllib_gets_the_413_json(served_url):
    body = bytes(11 * 1024 * 1024)
    assert len(body) > MAX_BODY_BYTES
    for route in ("/predict", "/predict?faces=1"):
        # A reset here (ConnectionResetError, BrokenPipeError) is the failure this test is for.
        status, answer, kind = _urllib(f"{served_url}{route}", body)
        assert status == 413 and kind.startswith("application/json"), (route, status, answer)
        assert set(answer) == {"error"} and "limit" in answer["error"], answer
    # The same through a multipart upload, and the connection's next request is answered as usual.
    boundary = "raymotion-test-boundary"
    multipart = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jpg\"\r\n"
                 f"Content-Type: image/jpeg\r\n\r\n").encode() + body + f"\r\n--{boundary}--\r\n".encode()
    status, answer, _ = _urllib(f"{served_url}/predict", multipart, content_type=f"multipart/form-data; boundary={boundary}")
    assert status == 413 and set(answer) == {"error"}, (status, answer)
    assert _urllib(f"{served_url}/models")[0] == 200


def test_every_error_status_answers_the_one_error_shape(served_url):
    cases = {
        "unknown route": (f"{served_url}/no/such/route", None, "GET", 404),
        "wrong method": (f"{served_url}/predict", None, "GET", 405),
        "wrong method on /models": (f"{served_url}/models", b"{}", "POST", 405),
        "bad query": (f"{served_url}/predict?faces=maybe", b"x", "POST", 422),
        "not an image": (f"{served_url}/predict", b"not an image", "POST", 400),
    }
    for what, (url, data, method, expected) in cases.items():
        status, body, kind = _urllib(url, data, method)
        assert status == expected, (what, status, body)
        assert kind.startswith("application/json") and set(body) == {"error"}, (what, body)
        assert isinstance(body["error"], str) and body["error"], (what, body)
    # The 405 still says which methods the route takes.
    response = requests.get(f"{served_url}/predict", timeout=TIMEOUT_S)
    assert response.status_code == 405 and "POST" in response.headers.get("Allow", "")


# --- large photos ------------------------------------------------------------------------------------

def _big_jpeg(width: int, height: int, squares: list[tuple[int, int, int, int]], orientation: int | None = None) -> bytes:
    """A width x height photo (upright), faces pasted into squares, as JPEG: mostly flat grey, so that it is
    a few MB. With orientation 6 it is stored turned as a phone stores it, the EXIF tag saying how to turn
    it upright (built turned, so that no full-size transpose is needed)."""
    turned = orientation == 6
    canvas = Image.new("RGB", (height, width) if turned else (width, height), (118, 122, 126))
    for i, (x0, y0, x1, y1) in enumerate(squares):
        face = _crop(i).resize((x1 - x0, y1 - y0), Image.BICUBIC)
        if turned:  # ROTATE_90 maps the upright (x, y) to (y, width - 1 - x)
            canvas.paste(face.transpose(Image.Transpose.ROTATE_90), (y0, width - x1))
        else:
            canvas.paste(face, (x0, y0))
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    buf = io.BytesIO()
    canvas.save(buf, "JPEG", quality=85, exif=exif)
    return buf.getvalue()


def _faces(url: str, data: bytes) -> requests.Response:
    return requests.post(f"{url}/predict", params={"faces": 1}, data=data, headers={"Content-Type": "image/jpeg"},
                         timeout=TIMEOUT_S)


def _assert_boxes_in_original_pixels(body: dict, width: int, height: int, squares) -> None:
    assert body["image"] == {"width": width, "height": height}
    faces = body["faces"]
    assert len(faces) == len(squares), [f["box"] for f in faces]
    for x0, y0, x1, y1 in squares:
        inside = [f["box"] for f in faces
                  if x0 <= f["box"]["x"] + f["box"]["width"] / 2 <= x1 and y0 <= f["box"]["y"] + f["box"]["height"] / 2 <= y1]
        assert len(inside) == 1, ((x0, y0, x1, y1), [f["box"] for f in faces])
        # A box of the reduced decode's pixels would be a quarter of this.
        assert 0.6 * (x1 - x0) <= inside[0]["width"] <= 1.2 * (x1 - x0), (inside[0], (x0, y0, x1, y1))


@pytest.mark.parametrize("width, height, orientation", [(12000, 9000, 6), (16320, 12240, None)],
                         ids=["108MP-turned-by-exif", "200MP"])
def test_a_phone_photo_of_108_or_200_megapixels_gets_boxes_in_its_own_pixels(served_url, width, height, orientation):
    assert width * height <= MAX_JPEG_PIXELS
    side = width // 6
    squares = [(width // 12, height // 8, width // 12 + side, height // 8 + side),
               (width // 2, height // 2, width // 2 + side, height // 2 + side),
               (width - side - width // 20, height // 10, width - width // 20, height // 10 + side)]
    data = _big_jpeg(width, height, squares, orientation)
    assert len(data) < MAX_BODY_BYTES
    response = _faces(served_url, data)
    assert response.status_code == 200, response.text
    _assert_boxes_in_original_pixels(response.json(), width, height, squares)
    plain = requests.post(f"{served_url}/predict", data=data, headers={"Content-Type": "image/jpeg"}, timeout=TIMEOUT_S)
    assert plain.status_code == 200 and "label" in plain.json(), plain.text


def _flat_rgb_png(width: int, height: int) -> bytes:
    """A valid RGB PNG of one colour, compressed row by row: well under a megabyte however large, and made
    without the pixels ever being in memory."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\x00" + bytes((90, 100, 110)) * width
    packer = zlib.compressobj(6)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def test_a_200_megapixel_png_is_refused_from_its_header(served_url):
    data = _flat_rgb_png(16320, 12240)
    assert len(data) < MAX_BODY_BYTES
    for params in ({}, {"faces": 1}):
        response = requests.post(f"{served_url}/predict", params=params, data=data,
                                 headers={"Content-Type": "image/png"}, timeout=TIMEOUT_S)
        assert response.status_code == 413, response.text
        assert "16320x12240" in response.json()["error"] and "too large" in response.json()["error"]
    # The same size as JPEG is allowed: the limit is the format's, not the size's.
    small = _flat_rgb_png(64, 48)
    assert requests.post(f"{served_url}/predict", data=small, headers={"Content-Type": "image/png"},
                         timeout=TIMEOUT_S).status_code == 200


# --- faces cut by the border -------------------------------------------------------------------------

FACE = 240  # pasted face squares, px


def _four_faces() -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """A 1400 px grey photo with a face near each side: cropping its middle cuts one face at each border."""
    photo = np.full((1400, 1400, 3), 120, np.uint8)
    squares = [(200, 580, 440, 820), (960, 580, 1200, 820), (580, 200, 820, 440), (580, 960, 820, 1200)]
    for i, square in zip((0, 3, 6, 4), squares):
        face_fit.paste(photo, np.asarray(_crop(i)), square)
    return photo, squares


def _jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def _xyxy(box: dict) -> tuple[int, int, int, int]:
    return box["x"], box["y"], box["x"] + box["width"], box["y"] + box["height"]


@pytest.mark.parametrize("cut", [0.3, 0.4])
def test_a_face_cut_by_the_border_is_boxed_as_the_whole_face(served_url, cut):
    photo, squares = _four_faces()
    whole = _faces(served_url, _jpeg(photo)).json()["faces"]
    assert len(whole) == 4, whole
    # Each face's box in the uncut photo is what its cut copy's box should stay on.
    reference = [next(_xyxy(f["box"]) for f in whole if face_fit.iou(_xyxy(f["box"]), sq) > 0.3) for sq in squares]
    shift = 200 + round(cut * FACE)  # left and top of the kept middle: each face loses `cut` of its side
    kept = photo[shift:1400 - shift, shift:1400 - shift]
    answer = _faces(served_url, _jpeg(np.ascontiguousarray(kept))).json()
    found = answer["faces"]
    assert len(found) == 4, [f["box"] for f in found]
    for x0, y0, x1, y1 in reference:
        ref = (x0 - shift, y0 - shift, x1 - shift, y1 - shift)
        box = max((f["box"] for f in found), key=lambda b: face_fit.iou(_xyxy(b), ref))
        # The whole face: not the sliver the border leaves of it, and not past it.
        assert box["height"] <= 1.6 * box["width"] and box["width"] <= 1.6 * box["height"], (box, ref)
        assert face_fit.iou(_xyxy(box), ref) >= 0.5, (box, ref)
    # Reaching past the border is what a cut face's box does: at least one of the four does.
    side = answer["image"]["width"]
    assert any(b["x"] < 0 or b["y"] < 0 or b["x"] + b["width"] > side or b["y"] + b["height"] > side
               for b in (f["box"] for f in found))
