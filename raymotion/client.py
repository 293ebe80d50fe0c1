"""``python -m raymotion.client IMAGE... [--url URL] [--faces]``: ask a running service, print a table.

The same calls from Python::

    from raymotion.client import Client
    client = Client("http://127.0.0.1:8000")
    client.predict("face.jpg")["label"]            # one pre-cropped face
    client.faces("group.jpg")["faces"]             # every face in a photo, with its box
    client.predict_batch(["a.jpg", "b.jpg"])       # several images in one request, each answered alone
"""

from __future__ import annotations

import argparse
import mimetypes
import os
import sys
from typing import Any

import requests

DEFAULT_URL = os.environ.get("RAYMOTION_URL", "http://127.0.0.1:8000")


class ServiceError(RuntimeError):
    """The service answered with an error status; the message is its own."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status


class Client:
    """The HTTP API of serve.app (POST /predict, /predict?faces=1, /predict/batch; GET /healthz, /models)."""

    def __init__(self, url: str = DEFAULT_URL, timeout_s: float = 60.0):
        self.url, self.timeout_s = url.rstrip("/"), timeout_s
        self.http = requests.Session()  # one kept-alive connection for a sequence of calls

    def predict(self, image: str | bytes) -> dict[str, Any]:
        return self._post("/predict", image)

    def faces(self, image: str | bytes) -> dict[str, Any]:
        return self._post("/predict?faces=1", image)

    def predict_batch(self, images: list[str]) -> dict[str, Any]:
        files = [("files", (os.path.basename(p), _read(p), _content_type(p))) for p in images]
        return self._answer(self.http.post(f"{self.url}/predict/batch", files=files, timeout=self.timeout_s))

    def health(self) -> dict[str, Any]:
        return self._answer(self.http.get(f"{self.url}/healthz", timeout=self.timeout_s))

    def models(self) -> dict[str, Any]:
        return self._answer(self.http.get(f"{self.url}/models", timeout=self.timeout_s))

    def _post(self, route: str, image: str | bytes) -> dict[str, Any]:
        data = image if isinstance(image, bytes) else _read(image)
        kind = "application/octet-stream" if isinstance(image, bytes) else _content_type(image)
        return self._answer(self.http.post(f"{self.url}{route}", data=data, headers={"Content-Type": kind},
                                           timeout=self.timeout_s))

    @staticmethod
    def _answer(response: requests.Response) -> dict[str, Any]:
        if response.status_code != 200:
            try:
                message = response.json().get("error") or response.text
            except ValueError:
                message = response.text
            raise ServiceError(response.status_code, message)
        return response.json()


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _content_type(path: str) -> str:
    return mimetypes.guess_type(path)[0] or "application/octet-stream"


def _probabilities(probs: dict[str, float]) -> str:
    return "  ".join(f"{c} {p:.3f}" for c, p in probs.items())


def table_rows(path: str, answer: dict[str, Any]) -> list[str]:
    """One line per image, or per face with its box (x, y, width, height) when faces were asked for."""
    if "faces" not in answer:
        return [f"{path:<40} {answer['label']:<8} {_probabilities(answer['probabilities'])}"]
    if not answer["faces"]:
        return [f"{path:<40} no face found in {answer['image']['width']}x{answer['image']['height']}"]
    rows = []
    for i, face in enumerate(answer["faces"]):
        box = face["box"]
        where = f"face {i + 1} at {box['x']},{box['y']} {box['width']}x{box['height']}"
        rows.append(f"{path:<40} {where:<28} {face['label']:<8} {_probabilities(face['probabilities'])}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m raymotion.client", description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument("--url", default=DEFAULT_URL, help="the service (default $RAYMOTION_URL or %(default)s)")
    parser.add_argument("--faces", action="store_true", help="find and classify every face in each photo")
    args = parser.parse_args(argv)
    client, failed = Client(args.url), 0
    for path in args.images:
        try:
            answer = client.faces(path) if args.faces else client.predict(path)
        except (ServiceError, OSError, requests.RequestException) as err:
            print(f"{path:<40} error: {err}")
            failed += 1
            continue
        print("\n".join(table_rows(path, answer)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
