"""Headless Chromium and the pictures it is shown: face crops pasted on a plain canvas, and y4m videos of
them for Chromium's fake camera. Shared by the browser tests (tests/test_browser.py) and ``python -m bench
camera``; nothing here downloads a browser or a driver (Debian's ``chromium`` and ``chromium-driver``)."""

from __future__ import annotations

import glob
import math
import os

import numpy as np
from PIL import Image, ImageOps

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FACES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "data", "faces")
BACKGROUND = (226, 230, 234)  # the canvas the face crops are pasted on


def face_crops(folder: str = FACES_DIR) -> list[str]:
    """The face photos of ``folder`` (tests/data/faces), sorted; empty when the folder is absent."""
    return sorted(glob.glob(os.path.join(folder, "*.jpg"))) if os.path.isdir(folder) else []


def fitted(path: str, side: int) -> Image.Image:
    """The crop at ``path`` fitted into a side x side square (aspect kept), upright, RGB."""
    with Image.open(path) as im:
        return ImageOps.contain(ImageOps.exif_transpose(im).convert("RGB"), (side, side), Image.BICUBIC)


def paste(crops: list[str], columns: int, side: int, gap: int) -> Image.Image:
    """The crops, each fitted into a side x side cell (aspect kept, centred), on a plain canvas in a grid with
    gap pixels between and around."""
    rows = -(-len(crops) // columns)
    canvas = Image.new("RGB", (columns * side + (columns + 1) * gap, rows * side + (rows + 1) * gap), BACKGROUND)
    for i, path in enumerate(crops):
        face = fitted(path, side)
        r, c = divmod(i, columns)
        canvas.paste(face, (gap + c * (side + gap) + (side - face.width) // 2,
                            gap + r * (side + gap) + (side - face.height) // 2))
    return canvas


def drifting_frames(crops: list[str], size: tuple[int, int], side: int, frames: int) -> list[Image.Image]:
    """``frames`` pictures of ``size`` in which the crops (side x side, in a row) drift on a slow loop, so
    that every camera frame differs and the boxes have somewhere to go; the last frame leads back into the
    first (the fake camera loops the file)."""
    width, height = size
    faces = [fitted(p, side) for p in crops]
    slot = width / len(faces)
    room_x, room_y = max(0.0, (slot - side) / 2), max(0.0, (height - side) / 2)
    out = []
    for k in range(frames):
        phase = 2 * math.pi * k / frames
        canvas = Image.new("RGB", size, BACKGROUND)
        for i, face in enumerate(faces):
            x = slot * i + (slot - face.width) / 2 + 0.8 * room_x * math.sin(phase + i)
            y = (height - face.height) / 2 + 0.6 * room_y * math.cos(phase + 2 * i)
            canvas.paste(face, (int(round(x)), int(round(y))))
        out.append(canvas)
    return out


def write_y4m(frames: Image.Image | list[Image.Image], path: str, fps: int = 10, repeat: int = 1) -> None:
    """YUV4MPEG2, 4:2:0 with JPEG (full-range BT.601) chroma siting: what Chromium's fake camera plays (at
    ``fps``, looping). A single image is written ``repeat`` times."""
    images = [frames] * repeat if isinstance(frames, Image.Image) else list(frames)
    w, h = images[0].size
    assert h % 2 == 0 and w % 2 == 0, (w, h)
    sub = lambda p: p.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))  # noqa: E731
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        cache: dict[int, bytes] = {}
        for image in images:
            if id(image) not in cache:
                rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
                r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
                y = 0.299 * r + 0.587 * g + 0.114 * b
                cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
                cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
                cache[id(image)] = b"".join(np.clip(np.rint(p), 0, 255).astype(np.uint8).tobytes()
                                            for p in (y, sub(cb), sub(cr)))
            f.write(b"FRAME\n" + cache[id(image)])


def fake_camera_arguments(y4m: str) -> tuple[str, ...]:
    """Chromium's switches for a camera that plays ``y4m``, granted without a prompt."""
    return ("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={y4m}")


class BrowserMissing(RuntimeError):
    """Chromium or its driver is not installed."""


def require_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        raise BrowserMissing(f"{', '.join(missing)} missing: install Chromium and its driver first with `make browser` "
                             "(apt-get install -y chromium chromium-driver); `make test` and .ci/run do it")


def chrome(*arguments: str, window: str = "1280,1000"):
    """A headless Chromium on the system's driver (never Selenium Manager, which would download one)."""
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={window}", "--no-first-run", "--disable-extensions", *arguments):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def console(driver) -> str:
    """The browser's console log, for failure messages."""
    try:
        return "\n".join(f"{e['level']}: {e['message']}" for e in driver.get_log("browser"))
    except Exception as err:  # the log is for failure messages only
        return f"(no browser log: {err})"
