"""``python -m bench camera RUN_DIR [--seconds 10]``: the page's live camera (``GET /``,
serve/static/index.html) in headless Chromium whose fake camera plays a y4m of pasted faces that drift
(made here from tests/data/faces), against the run served on 127.0.0.1 by a local Ray of its own.

Per page setting (``--variants``: the page's camera query string, ``inflight=2,side=480,quality=0.7``),
over a window of ``--seconds`` after a warm-up: frames answered a second (answers drawn), frames the camera
presented and the page dropped (never sent: its in-flight limit was reached), stale and failed answers,
and the answer latency p50/p95 (a frame's grab to its answer drawn: the page's User Timing measures). All
of it is read from the page itself (#camera's data-* counters), not from a wrapper around it. A table and
JSON with the machine's CPU flags; ``--answer-delay-s`` serves the run slowed down (serve.app.AppArgs) to
see how the page degrades.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from bench import browser

VARIANT_KEYS = {"inflight": "camera_inflight", "side": "camera_side", "quality": "camera_quality"}
TARGET_FPS = 10.0  # issue 36's bar for the camera view
CAMERA_SIZE = (640, 480)  # what the page asks the camera for
START_TIMEOUT_S = 90.0  # the first answer after the camera starts (browser start, first requests)


@dataclass
class CameraBenchConfig:
    run_dir: str
    seconds: float = 10.0  # the measured window, per variant
    warmup_seconds: float = 3.0  # after the first answer, before the window opens
    variants: tuple[str, ...] = ("inflight=2,side=480,quality=0.7",)
    rounds: int = 1  # each variant this many times, interleaved (the machine's other load varies)
    camera_fps: int = 30  # the fake camera's frame rate (the y4m's header)
    camera_frames: int = 90  # frames in the looped y4m
    faces: int = 2
    app_args: dict[str, Any] = field(default_factory=dict)  # serve.app.AppArgs beside run_dir
    throughput_optimized: bool = True  # RAY_SERVE_THROUGHPUT_OPTIMIZED, as make ray-up starts the head


def parse_variant(text: str) -> dict[str, str]:
    """``inflight=2,side=480,quality=0.7`` -> the page's query parameters (``camera_inflight=2``, ...)."""
    query = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in VARIANT_KEYS:
            raise ValueError(f"variant {text!r}: {part!r} is not one of {', '.join(k + '=...' for k in VARIANT_KEYS)}")
        query[VARIANT_KEYS[key.strip()]] = value.strip()
    return query


def make_camera_video(path: str, cfg: CameraBenchConfig) -> str:
    crops = browser.face_crops()
    if len(crops) < cfg.faces:
        raise FileNotFoundError(f"{browser.FACES_DIR} holds {len(crops)} face crops; {cfg.faces} wanted")
    # One crop per class where it can (the names start with the class), so the labels differ.
    picked = sorted(crops, key=lambda p: (crops.index(p) % 3, p))[:cfg.faces]
    frames = browser.drifting_frames(picked, CAMERA_SIZE, side=200, frames=cfg.camera_frames)
    browser.write_y4m(frames, path, fps=cfg.camera_fps)
    return path


COUNTERS = ("frames", "sent", "answered", "dropped", "stale", "failed")
READ_PAGE = """
const d = document.getElementById('camera').dataset;
return {now: performance.now(), on: d.on, size: d.frameSize || '', limit: d.inFlightLimit || '',
        counters: Object.fromEntries(%s.map((k) => [k, Number(d[k] || 0)])),
        error: document.getElementById('error').textContent};
""" % list(COUNTERS)
READ_MEASURES = """
const [t0, t1] = arguments;
const inside = (e) => e.startTime + e.duration > t0 && e.startTime + e.duration <= t1;
return {answers: performance.getEntriesByName('raymotion:camera-answer').filter(inside)
                   .map((e) => [e.duration, (e.detail && e.detail.faces) || 0]),
        fetches: performance.getEntriesByType('resource').filter((e) => e.name.includes('predict') && inside(e))
                   .map((e) => e.duration)};
"""
# The browser keeps 250 resource timings unless told otherwise: enough room for every request of a window.
KEEP_RESOURCE_TIMINGS = "performance.setResourceTimingBufferSize(1000000);"


def window(driver, seconds: float) -> dict[str, Any]:
    """The page's counters over ``seconds``: their differences, per second, and the latencies of the frames
    answered inside the window."""
    first = driver.execute_script(READ_PAGE)
    time.sleep(seconds)
    last = driver.execute_script(READ_PAGE)
    span = (last["now"] - first["now"]) / 1000
    diff = {k: last["counters"][k] - first["counters"][k] for k in COUNTERS}
    timings = driver.execute_script(READ_MEASURES, first["now"], last["now"])
    measures, fetches = timings["answers"], timings["fetches"]
    latencies = [m[0] for m in measures]
    pct = lambda xs, q: float(np.percentile(xs, q)) if xs else float("nan")  # noqa: E731
    return {"seconds": span, **diff, "answered_per_s": diff["answered"] / span, "camera_fps": diff["frames"] / span,
            "dropped_per_s": diff["dropped"] / span, "latency_p50_ms": pct(latencies, 50),
            "latency_p95_ms": pct(latencies, 95), "latency_max_ms": max(latencies, default=float("nan")),
            "latencies_ms": latencies,
            # The request alone (the browser's Resource Timing: request sent to answer received); the rest of
            # the latency is the page's own work (grab, JPEG encoding, JSON, drawing).
            "fetch_p50_ms": pct(fetches, 50), "fetch_p95_ms": pct(fetches, 95),
            "faces_per_answer": statistics.mean(m[1] for m in measures) if measures else float("nan"),
            "frame_size": last["size"], "in_flight_limit": last["limit"], "error": last["error"]}


def run_variant(url: str, y4m: str, variant: str, cfg: CameraBenchConfig, log: Callable[[str], None]) -> dict[str, Any]:
    from urllib.parse import urlencode

    from selenium.webdriver.support.ui import WebDriverWait

    query = parse_variant(variant)
    driver = browser.chrome(*browser.fake_camera_arguments(y4m))
    try:
        driver.get(f"{url}/?{urlencode(query)}")
        driver.execute_script(KEEP_RESOURCE_TIMINGS)
        WebDriverWait(driver, START_TIMEOUT_S).until(
            lambda d: d.find_element("id", "classes").get_attribute("data-state") != "loading")
        driver.find_element("id", "camera").click()
        try:
            WebDriverWait(driver, START_TIMEOUT_S).until(
                lambda d: int(d.find_element("id", "camera").get_attribute("data-answered") or 0) >= 1
                or d.find_element("id", "error").text)
        except Exception as err:
            raise RuntimeError(f"no camera frame answered within {START_TIMEOUT_S:.0f} s; "
                               f"#status {driver.find_element('id', 'status').text!r}; browser log:\n"
                               f"{browser.console(driver)}") from err
        time.sleep(cfg.warmup_seconds)
        load_before = os.getloadavg()[0]
        row = {"variant": variant, "query": query, **window(driver, cfg.seconds),
               # The 1-minute load average around the window, this benchmark's own processes included: on a
               # machine shared with other jobs it says how much else ran.
               "load1_before": load_before, "load1_after": os.getloadavg()[0]}
        driver.find_element("id", "camera").click()
    finally:
        driver.quit()
    log(f"{variant}: {row['answered_per_s']:.1f} answered frames/s of {row['camera_fps']:.1f} camera frames/s, "
        f"{row['dropped']} dropped, latency p50 {row['latency_p50_ms']:.0f} ms p95 {row['latency_p95_ms']:.0f} ms"
        + (f"; error shown: {row['error']!r}" if row["error"] else ""))
    return row


def serve_run(cfg: CameraBenchConfig, port: int) -> str:
    from ray import serve

    from bench.serve import wait_healthy
    from serve.app import AppArgs, build_app

    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(AppArgs(run_dir=cfg.run_dir, **cfg.app_args)), name="raymotion", route_prefix="/",
              blocking=False)
    wait_healthy(port, 180)
    return f"http://127.0.0.1:{port}"


def run_camera_bench(cfg: CameraBenchConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    from ray import serve

    from bench.machine import cpu_flags, describe_machine
    from raymotion.runtime import free_port, start_local_ray

    browser.require_browser()  # before Ray and Serve start
    machine = describe_machine()
    log(f"cpu: {machine['cpu_model']}, {machine['usable_cpus']} usable, flags {' '.join(cpu_flags())}")
    # Serve reads its throughput switch when its processes start: set before Ray starts them.
    os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1" if cfg.throughput_optimized else "0"
    # With the switch on, a stopped ingress replica serves on for at least this long (30 s by default) so that
    # an external load balancer can take it out first; nothing here balances across replicas, and the
    # benchmark deletes and redeploys apps between its phases.
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "1")
    start_local_ray()
    rows = []
    with tempfile.TemporaryDirectory(prefix="raymotion-camera-") as tmp:
        y4m = make_camera_video(os.path.join(tmp, "camera.y4m"), cfg)
        try:
            url = serve_run(cfg, free_port())
            log(f"serving {cfg.run_dir} at {url}; camera: {cfg.faces} drifting faces, {CAMERA_SIZE[0]}x{CAMERA_SIZE[1]} "
                f"at {cfg.camera_fps} fps; {cfg.seconds:.0f} s per variant after {cfg.warmup_seconds:.0f} s of warm-up")
            rows = [{"round": i + 1, **run_variant(url, y4m, v, cfg, log)}
                    for i in range(cfg.rounds) for v in cfg.variants]
        finally:
            serve.shutdown()
    return {"benchmark": "camera", "machine": machine, "cpu_flags": cpu_flags(), "config": asdict(cfg),
            "target_answered_per_s": TARGET_FPS, "rows": rows, "summary": summarize(rows)}


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per variant, the median over its rounds of answered frames/s and latency."""
    out: dict[str, dict[str, Any]] = {}
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant]
        out[variant] = {"rounds": len(mine), **{k: statistics.median(r[k] for r in mine)
                                                for k in ("answered_per_s", "latency_p50_ms", "latency_p95_ms",
                                                          "fetch_p50_ms", "dropped_per_s")}}
    return out


def table(result: dict[str, Any]) -> str:
    from raymotion.console import table as text_table

    rows = [(r["round"], r["variant"], r["frame_size"], f"{r['camera_fps']:.1f}", f"{r['answered_per_s']:.1f}", r["dropped"],
             r["stale"], r["failed"], f"{r['latency_p50_ms']:.0f}", f"{r['latency_p95_ms']:.0f}",
             f"{r['fetch_p50_ms']:.0f}", f"{r['faces_per_answer']:.2f}",
             f"{r['load1_before']:.1f}/{r['load1_after']:.1f}") for r in result["rows"]]
    m, cfg = result["machine"], result["config"]
    lines = [f"cpu: {m['cpu_model']} ({m['usable_cpus']} usable); flags: {' '.join(result['cpu_flags'])}",
             f"RAY_SERVE_THROUGHPUT_OPTIMIZED={int(cfg['throughput_optimized'])}; window {cfg['seconds']:.0f} s per "
             f"variant; answer_delay_s={cfg['app_args'].get('answer_delay_s', 0)}", "",
             text_table(rows, ["round", "variant", "sent", "camera fps", "answered/s", "dropped", "stale", "failed",
                               "p50 ms", "p95 ms", "fetch p50 ms", "faces/answer", "load1"], ">" + "<" * 2 + ">" * 10),
             "", "median over rounds:"]
    target = result["target_answered_per_s"]
    for variant, s in summarize(result["rows"]).items():
        met = s["answered_per_s"] >= target
        lines.append(f"  {variant}: {s['answered_per_s']:.1f} answered frames/s (rounds {s['rounds']}), latency p50 "
                     f"{s['latency_p50_ms']:.0f} ms p95 {s['latency_p95_ms']:.0f} ms; bar >= {target:.0f}: "
                     f"{'met' if met else 'NOT met'} (margin {s['answered_per_s'] - target:+.1f})")
    return "\n".join(lines)


def command(args: argparse.Namespace, write_result: Callable[[dict, str], None]) -> None:
    import yaml

    with open(args.config) as f:
        (app,) = yaml.safe_load(f)["applications"]
    app_args = {k: v for k, v in app["args"].items() if k != "run_dir"}
    if args.answer_delay_s:
        app_args["answer_delay_s"] = args.answer_delay_s
    cfg = CameraBenchConfig(run_dir=os.path.abspath(args.run_dir), seconds=args.seconds,
                            warmup_seconds=args.warmup_seconds, variants=tuple(args.variants.split(";")), rounds=args.rounds,
                            camera_fps=args.camera_fps, faces=args.faces, app_args=app_args,
                            throughput_optimized=args.throughput_optimized)
    for v in cfg.variants:
        parse_variant(v)  # refused before anything starts
    result = run_camera_bench(cfg, log=lambda line: print(line, flush=True))
    result["table"] = table(result)
    print("\n" + result["table"])
    write_result(result, args.json or os.path.join(args.run_dir, "bench", f"camera-{time.strftime('%Y%m%d-%H%M%S')}.json"))


def add_arguments(sub) -> None:
    p = sub.add_parser("camera", help="the page's live camera in headless Chromium: answered frames/s, drops, latency")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--seconds", type=float, default=10.0, help="measured window per variant")
    p.add_argument("--warmup-seconds", type=float, default=3.0, help="after the first answer, before the window")
    p.add_argument("--variants", default=CameraBenchConfig.variants[0],
                   help="';'-separated page settings, each 'inflight=N,side=PX,quality=Q' (any subset; the page's "
                        "defaults for the rest)")
    p.add_argument("--rounds", type=int, default=1, help="each variant this many times, interleaved; medians reported")
    p.add_argument("--camera-fps", type=int, default=30, help="the fake camera's frame rate")
    p.add_argument("--faces", type=int, default=2, help="faces in the camera's picture")
    p.add_argument("--answer-delay-s", type=float, default=0.0,
                   help="serve the run slowed down: every answer waits this long first (serve.app.AppArgs)")
    p.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "serve", "config.yaml"),
                   help="the Serve config whose app args are used (default serve/config.yaml)")
    p.add_argument("--throughput-optimized", action=argparse.BooleanOptionalAction, default=True,
                   help="Ray's RAY_SERVE_THROUGHPUT_OPTIMIZED for the benchmark's own Ray (as make ray-up starts the head)")
    p.add_argument("--json", help="output JSON (default RUN_DIR/bench/camera-<time>.json)")
