"""``python -m bench large-photo RUN_DIR``: how much the Serve ingress's memory grows while it
answers one phone photo of 12, 108 and 200 megapixels (``POST /predict?faces=1``), as a table and JSON.

The run is served on a local Ray of its own (127.0.0.1, a free port), the photos are made here (flat grey
with three faces from tests/data/faces pasted in, JPEG). For each photo a fresh ingress replica is deployed
and warmed up with a small photo; for each request its peak resident set is reset (``/proc/PID/clear_refs``,
5) and read back (``VmHWM``) afterwards: the rise is its peak during the request over its resident set just
before. raymotion/predict/photo.py says what bounds it."""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import time
from typing import Any, Callable

import requests
from PIL import Image

FACES = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "faces")
PHOTOS = {"12MP": (4000, 3000), "108MP": (12000, 9000), "200MP": (16320, 12240)}


def photo_jpeg(width: int, height: int) -> bytes:
    """A width x height JPEG, flat grey with three faces of a sixth of its width."""
    canvas = Image.new("RGB", (width, height), (118, 122, 126))
    side = width // 6
    crops = sorted(os.listdir(FACES))[:3]
    for i, (x, y) in enumerate([(width // 12, height // 8), (width // 2, height // 2), (width - side - width // 20, height // 10)]):
        with Image.open(os.path.join(FACES, crops[i])) as face:
            canvas.paste(face.convert("RGB").resize((side, side), Image.BICUBIC), (x, y))
    buf = io.BytesIO()
    canvas.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def peak_rise_mib(pid: int, send: Callable[[], requests.Response]) -> tuple[float, float, int]:
    """(peak RSS rise, RSS before, status) of the process ``pid`` over one call of ``send``."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    before = _kib(pid, "VmRSS")
    status = send().status_code
    return (_kib(pid, "VmHWM") - before) / 1024, before / 1024, status


def ingress_pid() -> int:
    from ray.util.state import list_actors

    actors = [a for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
              if a.class_name == "ServeReplica:raymotion:ingress"]  # the deployment named "ingress"
    if len(actors) != 1:
        raise RuntimeError(f"expected one ingress replica, found {len(actors)}")
    return int(actors[0].pid)


def small_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(photo_jpeg(640, 480))).save(buf, "JPEG")
    return buf.getvalue()


def measure(url: str, fresh_ingress: Callable[[], int], rounds: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Per photo, a fresh ingress replica (``fresh_ingress`` deploys one and returns its pid), warmed up
    with a 640 x 480 photo (imports, first allocations), then ``rounds`` requests of the photo: the first
    rise is over a replica that never held a large photo (freed memory stays mapped in the allocator, so
    later ones can read lower)."""
    rows, warm = {}, small_jpeg()
    post = lambda data: requests.post(f"{url}/predict", params={"faces": 1}, data=data,  # noqa: E731
                                      headers={"Content-Type": "image/jpeg"}, timeout=300)
    for name, (width, height) in PHOTOS.items():
        data = photo_jpeg(width, height)
        pid = fresh_ingress()
        for _ in range(2):
            post(warm).raise_for_status()
        samples = [peak_rise_mib(pid, lambda: post(data)) for _ in range(rounds)]
        found = len(post(data).json()["faces"])
        rises = [s[0] for s in samples]
        rows[name] = {"width": width, "height": height, "megapixels": width * height / 1e6, "body_mib": len(data) / 2**20,
                      "faces": found, "statuses": sorted({s[2] for s in samples}), "rss_before_mib": samples[0][1],
                      "peak_rise_mib_first": rises[0], "peak_rise_mib_max": max(rises),
                      "decoded_rgb_mib_if_full": width * height * 3 / 2**20}
        log(f"{name}: {found} faces, peak RSS rise {rises[0]:.1f} MiB on a fresh ingress (max {max(rises):.1f} "
            f"over {rounds} requests)")
    return rows


def table(rows: dict[str, Any]) -> str:
    lines = ["| photo | pixels | body MiB | faces | ingress RSS before, MiB | peak RSS rise, MiB (first / max) | full-size RGB would be, MiB |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['width']}x{r['height']} | {r['body_mib']:.1f} | {r['faces']} | {r['rss_before_mib']:.0f} "
                     f"| {r['peak_rise_mib_first']:.1f} / {r['peak_rise_mib_max']:.1f} | {r['decoded_rgb_mib_if_full']:.0f} |")
    return "\n".join(lines)


def command(args: argparse.Namespace, write_result: Callable[[dict, str], None]) -> None:
    from ray import serve

    from bench.machine import describe_machine
    from raymotion.runtime import start_local_ray
    from serve.app import AppArgs, build_app

    start_local_ray(num_cpus=args.num_cpus)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"

    def fresh_ingress() -> int:
        serve.delete("raymotion")
        serve.run(build_app(AppArgs(run_dir=args.run_dir)), name="raymotion", route_prefix="/", blocking=False)
        deadline = time.monotonic() + 180
        while True:
            try:
                if requests.get(f"{url}/healthz", timeout=10).status_code == 200:
                    return ingress_pid()
            except (requests.RequestException, RuntimeError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the service never became healthy")
            time.sleep(0.5)

    try:
        rows = measure(url, fresh_ingress, args.rounds, log=lambda line: print(line, flush=True))
    finally:
        serve.shutdown()
    result = {"run_dir": os.path.abspath(args.run_dir), "rounds": args.rounds, "photos": rows, "machine": describe_machine()}
    result["table"] = table(rows)
    print("\n" + result["table"])
    write_result(result, args.json or os.path.join("runs", "bench", f"large-photo-{time.strftime('%Y%m%d-%H%M%S')}.json"))


def add_arguments(sub) -> None:
    p = sub.add_parser("large-photo", help="the Serve ingress's peak memory rise per 12/108/200-megapixel photo")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--rounds", type=int, default=3, help="measured requests per photo, on one fresh ingress per photo")
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the benchmark's own local Ray")
    p.add_argument("--json", help="output JSON (default runs/bench/large-photo-<time>.json)")
