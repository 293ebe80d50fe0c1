"""``python -m bench serve RUN_DIR``: the served ensemble over HTTP against the same ONNX files
run in-process, in one run on 127.0.0.1, every phase bounded in requests and seconds.

In-process: what the ingress and the model replicas do for one request, in one process: decode the JPEG
once, resize once per model input size, run each served file (onnxruntime), combine as the manifest says.
Batch 1 gives the latency floor; a batch of ``batch_images`` gives the throughput ceiling.
Over HTTP: closed-loop clients (one keep-alive connection each) at each concurrency level, on
``POST /predict`` (one image per request) and ``POST /predict/batch`` (``batch_images`` per request).
Faults: at concurrency ``fault_concurrency`` one replica of the largest model is killed (a Ray actor kill)
mid-load, with 2 replicas per model and with 1: failed requests, status codes, the longest time without
a success, and how long until /healthz answers 200 again (``fault_replicas``: 2 per model, then 1).
Verdicts (``verdicts``): the figures against Serve's floor (bench/serve_floor.py) and the models' own time,
each with its bar and margin.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import urllib3
from urllib3 import HTTPConnectionPool
from urllib3.exceptions import HTTPError
from urllib3.filepost import encode_multipart_formdata

from raymotion.predict import Predictor
from raymotion.rundir import Manifest, read_manifest


@dataclass
class ServeBenchConfig:
    run_dir: str
    images: list[bytes] = field(repr=False, default_factory=list)  # JPEGs sent round-robin
    concurrency: tuple[int, ...] = (1, 4, 16)
    seconds: float = 15.0  # per HTTP phase
    max_requests: int = 3000  # per HTTP phase
    batch_images: int = 16
    inprocess_seconds: float = 10.0
    fault_concurrency: int = 16
    fault_seconds: float = 30.0
    fault_replicas: tuple[int, ...] = (2, 1)  # replicas per model in each fault run
    app_args: dict[str, Any] = field(default_factory=dict)  # serve.app.AppArgs, beside run_dir
    # Ray's RAY_SERVE_THROUGHPUT_OPTIMIZED: direct ingress (no proxy hop), gRPC, user code and router on
    # the replica's own loop, buffered request logs. make ray-up starts the head with it.
    throughput_optimized: bool = True
    floor: bool = True  # also measure Serve's own cost: the same app shape with no-work models (serve_floor)


# --- in-process -------------------------------------------------------------------------------------------

def in_process(run_dir: str, intra_op_threads: int) -> Callable[[list[bytes]], np.ndarray]:
    """The served ensemble in this process (raymotion.Predictor), sessions as the replicas make them (threads
    left spinning): JPEG bytes -> pooled probabilities."""
    return Predictor(run_dir, intra_op_threads=intra_op_threads, stop_spinning_after_run=False).probabilities


def time_calls(call: Callable[[], object], seconds: float, max_calls: int = 100_000, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        call()
    times, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline and len(times) < max_calls:
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return times


def bench_in_process(cfg: ServeBenchConfig, manifest: Manifest) -> dict[str, Any]:
    """Batch 1 with one onnxruntime thread per model (as each replica runs); batched with one thread and
    with all cores, the better of the two being the ceiling."""
    one = in_process(cfg.run_dir, intra_op_threads=1)
    every = in_process(cfg.run_dir, intra_op_threads=0)
    batch = [cfg.images[i % len(cfg.images)] for i in range(cfg.batch_images)]
    third = cfg.inprocess_seconds / 3
    b1 = time_calls(lambda: one(cfg.images[:1]), third)
    bn = {threads: time_calls(lambda e=e: e(batch), third) for threads, e in (("1", one), ("all", every))}
    best = max(bn, key=lambda k: cfg.batch_images / statistics.median(bn[k]))
    return {"batch1_p50_ms": _ms(b1, 50), "batch1_p95_ms": _ms(b1, 95), "batch1_calls": len(b1),
            "batched_images_per_s": cfg.batch_images / statistics.median(bn[best]), "batched_threads": best,
            "batched_images_per_s_by_threads": {k: cfg.batch_images / statistics.median(v) for k, v in bn.items()}}


def _ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(seconds) * 1e3, q)) if seconds else float("nan")


# --- HTTP load ----------------------------------------------------------------------------------------------

def multipart(images: list[bytes], field_name: str = "files") -> tuple[bytes, str]:
    """A multipart/form-data body of JPEG files under one field name, and its Content-Type."""
    return encode_multipart_formdata([(field_name, (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)])


@dataclass
class Outcome:
    started: float
    seconds: float
    status: int  # 0: no HTTP answer (connection error)


def client_loop(port: int, requests_: list[tuple[str, bytes, str]], deadline: float, budget: list[int],
                lock: threading.Lock, out: list[Outcome]) -> None:
    """One closed-loop client on one keep-alive connection (urllib3 reconnects after an error), until the
    deadline or the shared budget ends."""
    with HTTPConnectionPool("127.0.0.1", port, maxsize=1, retries=False, timeout=30) as pool:
        i = 0
        while time.perf_counter() < deadline:
            with lock:
                if budget[0] <= 0:
                    break
                budget[0] -= 1
            path, body, kind = requests_[i % len(requests_)]
            i += 1
            t0 = time.perf_counter()
            try:
                status = pool.request("POST", path, body=body, headers={"Content-Type": kind}).status
            except HTTPError:  # no answer: a reset, a timeout, a refused connection
                status = 0
            out.append(Outcome(t0, time.perf_counter() - t0, status))


def load(port: int, requests_: list[tuple[str, bytes, str]], concurrency: int, seconds: float,
         max_requests: int) -> list[Outcome]:
    out: list[Outcome] = []
    lock, budget = threading.Lock(), [max_requests]
    deadline = time.perf_counter() + seconds
    threads = [threading.Thread(target=client_loop, args=(port, requests_, deadline, budget, lock, out), daemon=True)
               for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    return out


def summarize(outcomes: list[Outcome], images_per_request: int) -> dict[str, Any]:
    ok = [o for o in outcomes if o.status == 200]
    span = (max(o.started + o.seconds for o in outcomes) - min(o.started for o in outcomes)) if outcomes else float("nan")
    codes: dict[str, int] = {}
    for o in outcomes:
        codes[str(o.status)] = codes.get(str(o.status), 0) + 1
    lat = [o.seconds for o in ok]
    return {"requests": len(outcomes), "ok": len(ok), "errors": len(outcomes) - len(ok), "status_codes": codes,
            "p50_ms": _ms(lat, 50), "p95_ms": _ms(lat, 95), "p99_ms": _ms(lat, 99),
            "images_per_s": len(ok) * images_per_request / span if span else float("nan"),
            "longest_gap_s": longest_gap(outcomes)}


def longest_gap(outcomes: list[Outcome]) -> float:
    """The longest time between two successive successful answers (their completion times)."""
    done = sorted(o.started + o.seconds for o in outcomes if o.status == 200)
    return float(max(np.diff(done))) if len(done) > 1 else float("nan")


# --- the service --------------------------------------------------------------------------------------------

def deploy(cfg: ServeBenchConfig, port: int, **overrides: Any) -> None:
    from ray import serve

    from serve.app import AppArgs, build_app

    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = AppArgs(run_dir=cfg.run_dir, **{**cfg.app_args, **overrides})
    serve.run(build_app(args), name="raymotion", route_prefix="/", blocking=False)
    wait_healthy(port, 120)


def wait_healthy(port: int, timeout_s: float) -> float:
    """Seconds until GET /healthz answers 200 (raises after ``timeout_s``)."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        try:
            if urllib3.request("GET", f"http://127.0.0.1:{port}/healthz", retries=False, timeout=5).status == 200:
                return time.perf_counter() - started
        except HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"the service on port {port} was not healthy within {timeout_s:.0f} s")


def kill_one_replica(model: str) -> str:
    """Kill one live replica actor of ``model_<model>`` (Serve's controller starts a new one)."""
    import ray
    from ray.util.state import list_actors

    actors = [a for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
              if a.class_name and a.class_name.endswith(f"model_{model}") and a.name]
    if not actors:
        raise RuntimeError(f"no live replica of model_{model}")
    ray.kill(ray.get_actor(actors[0].name, namespace="serve"), no_restart=True)
    return actors[0].name


def cpus_per_model_replica(cfg: ServeBenchConfig, replicas: int, members: int) -> float:
    """The configured CPU share per model replica, cut so that ``replicas`` of every model fit beside the
    ingress and the face detector: Serve would otherwise wait for CPUs that never come."""
    import ray

    from serve.app import AppArgs

    args = AppArgs(run_dir=cfg.run_dir, **cfg.app_args)
    free = ray.cluster_resources().get("CPU", 0.0) - args.ingress_cpus * args.ingress_replicas - args.face_cpus * args.face_replicas
    return min(args.model_cpus, round(free / (replicas * members), 3))


def fault_run(cfg: ServeBenchConfig, port: int, requests_, replicas: int, model: str, members: int,
              live: dict[str, Any]) -> dict[str, Any]:
    """``live``: the settings the running app was deployed with (updated here): the same ones are reused."""
    from ray import serve

    wanted = {"replicas": replicas, "model_cpus": cpus_per_model_replica(cfg, replicas, members)}
    if wanted != live:
        # A fresh app, not an update of the last one: a rolling update keeps the old replicas until the new
        # ones are up, and on 2 CPUs the two sets do not fit side by side.
        serve.delete("raymotion")
        deploy(cfg, port, **wanted)
        live.clear()
        live.update(wanted)
    result: dict[str, Any] = {}

    def killer():
        time.sleep(cfg.fault_seconds / 3)
        result["killed"] = kill_one_replica(model)
        # From the kill until every member answers /healthz (the survivor, or the replacement replica).
        result["healthy_again_s"] = wait_healthy(port, 60)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    outcomes = load(port, requests_, cfg.fault_concurrency, cfg.fault_seconds, cfg.max_requests)
    thread.join(60)
    return {"replicas": replicas, "model": model, **result, **summarize(outcomes, 1),
            "failed_fraction": sum(o.status != 200 for o in outcomes) / max(1, len(outcomes))}


# --- the whole benchmark ------------------------------------------------------------------------------------

def http_phases(cfg: ServeBenchConfig, port: int) -> list[dict[str, Any]]:
    single = [("/predict", data, "image/jpeg") for data in cfg.images]
    body, kind = multipart([cfg.images[i % len(cfg.images)] for i in range(cfg.batch_images)])
    rows = []
    for route, requests_, per_request in (("/predict", single, 1), ("/predict/batch", [("/predict/batch", body, kind)],
                                                                     cfg.batch_images)):
        load(port, requests_, 2, 2.0, 50)  # warm-up: replicas, connections, batch queues
        for c in cfg.concurrency:
            rows.append({"route": route, "concurrency": c, "images_per_request": per_request,
                         **summarize(load(port, requests_, c, cfg.seconds, cfg.max_requests), per_request)})
    return rows


def floor_phases(cfg: ServeBenchConfig, port: int, members: int) -> list[dict[str, Any]]:
    """/predict on the no-work app (serve_floor): the ingress alone, then with one handle call per member."""
    from ray import serve

    from bench.serve_floor import build_floor_app
    from serve.app import AppArgs

    args = AppArgs(run_dir=cfg.run_dir, **cfg.app_args)
    serve.delete("raymotion")  # the floor runs alone: on 2 CPUs the real app's replicas would compete
    single = [("/predict", data, "image/jpeg") for data in cfg.images]
    rows = []
    for n in (0, members):
        serve.run(build_floor_app(n, args.model_cpus, args.ingress_cpus, args.max_ongoing_requests),
                  name="floor", route_prefix="/", blocking=False)
        wait_healthy(port, 120)
        load(port, single, 2, 2.0, 50)
        for c in sorted({min(cfg.concurrency), max(cfg.concurrency)}):
            rows.append({"members": n, "concurrency": c,
                         **summarize(load(port, single, c, cfg.seconds, cfg.max_requests), 1)})
        serve.delete("floor")
    return rows


def run_serve_bench(cfg: ServeBenchConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    from bench.machine import describe_machine
    from raymotion.runtime import free_port, start_local_ray

    manifest = read_manifest(cfg.run_dir)
    machine = describe_machine()
    log(f"cpu: {machine['cpu_model']}, {machine['usable_cpus']} usable, flags {' '.join(machine['vector_extensions'])}")
    inproc = bench_in_process(cfg, manifest)
    log(f"in-process: batch-1 p50 {inproc['batch1_p50_ms']:.1f} ms, batched {inproc['batched_images_per_s']:.0f} img/s")
    log("HTTP phases: " + ", ".join(f"{route} at concurrency {c}" for route in ("/predict", "/predict/batch")
                                    for c in cfg.concurrency) + f"; {cfg.seconds:.0f} s each")
    # Its own Ray and Serve, whatever else runs here: a clean instance, and a proxy on a port of its own.
    # Serve reads its throughput switch when its processes start, so it is set before Ray starts them.
    os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1" if cfg.throughput_optimized else "0"
    # With the switch on, a stopped ingress replica serves on for at least this long (30 s by default) so that
    # an external load balancer can take it out first; nothing here balances across replicas, and the
    # benchmark deletes and redeploys apps between its phases.
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "1")
    start_local_ray()
    port = free_port()
    deploy(cfg, port)
    http = http_phases(cfg, port)
    largest = max(manifest.ensemble.served, key=lambda n: manifest.models[n].bytes)
    single = [("/predict", data, "image/jpeg") for data in cfg.images]
    members = len(manifest.ensemble.served)
    from serve.app import AppArgs

    app = AppArgs(run_dir=cfg.run_dir, **cfg.app_args)
    live = {"replicas": app.replicas, "model_cpus": app.model_cpus}  # what deploy() just started
    faults = [fault_run(cfg, port, single, replicas, largest, members, live) for replicas in cfg.fault_replicas]
    floor = floor_phases(cfg, port, members) if cfg.floor else []
    from ray import serve

    serve.shutdown()
    return {"machine": machine, "config": {k: v for k, v in asdict(cfg).items() if k != "images"},
            "in_process": inproc, "http": http, "floor": floor, "faults": faults, "ratios": ratios(inproc, http, floor),
            "verdicts": verdicts(inproc, http, floor)}


def ratios(inproc: dict[str, Any], http: list[dict[str, Any]], floor: list[dict[str, Any]] = ()) -> dict[str, float]:
    best_single = max(r["images_per_s"] for r in http if r["route"] == "/predict")
    best_batch = max(r["images_per_s"] for r in http if r["route"] == "/predict/batch")
    c1 = next(r for r in http if r["route"] == "/predict" and r["concurrency"] == min(x["concurrency"] for x in http))
    return {"served_single_over_in_process_batched": best_single / inproc["batched_images_per_s"],
            "served_batch_over_in_process_batched": best_batch / inproc["batched_images_per_s"],
            "http_c1_p50_minus_in_process_b1_p50_ms": c1["p50_ms"] - inproc["batch1_p50_ms"],
            **floor_ratios(inproc, floor)}


def floor_ratios(inproc: dict[str, Any], floor: list[dict[str, Any]]) -> dict[str, float]:
    """What the no-work app with every member reaches, on the in-process scale: a served figure can beat
    neither (the models' own work comes on top of Serve's)."""
    if not floor:
        return {}
    full = [r for r in floor if r["members"] == max(x["members"] for x in floor)]
    low = min(full, key=lambda r: r["concurrency"])
    return {"no_work_app_req_per_s_over_in_process_batched": max(r["images_per_s"] for r in full) / inproc["batched_images_per_s"],
            "no_work_app_c1_p50_ms": low["p50_ms"]}


# Issue 36's bars, restated against Serve's floor: a request at concurrency 1 may cost at most this much over
# the no-work app plus the models' own batch-1 time, and several images per request must reach this fraction
# of the models' batched rate in process.
LATENCY_BAR_MS = 2.0
BATCH_BAR = 0.8


def verdicts(inproc: dict[str, Any], http: list[dict[str, Any]], floor: list[dict[str, Any]] = ()) -> dict[str, Any]:
    """Each figure against what Serve's floor (the no-work app with every member, serve_floor) and the models'
    in-process time allow, with its bar and margin (margin > 0: met by that much). Without the floor only
    the batch verdict can be stated; the others say why not."""
    low = min(r["concurrency"] for r in http if r["route"] == "/predict")
    c1 = next(r for r in http if r["route"] == "/predict" and r["concurrency"] == low)
    batched = inproc["batched_images_per_s"]
    best_batch = max(r["images_per_s"] for r in http if r["route"] == "/predict/batch")
    out: dict[str, Any] = {
        "batch_throughput": {"images_per_s": best_batch, "in_process_batched_images_per_s": batched,
                             "ratio": best_batch / batched, "bar": BATCH_BAR, "margin": best_batch / batched - BATCH_BAR,
                             "met": best_batch / batched >= BATCH_BAR}}
    full = [r for r in floor if r["members"] == max(x["members"] for x in floor)] if floor else []
    floor_low = next((r for r in full if r["concurrency"] == low), None)
    if floor_low is None:
        why = "not measured: no floor (--no-floor)" if not floor else f"not measured: no floor phase at concurrency {low}"
        out["latency"] = {"measured": False, "why": why}
    else:
        allowed = floor_low["p50_ms"] + inproc["batch1_p50_ms"]
        excess = c1["p50_ms"] - allowed
        out["latency"] = {"measured": True, "concurrency": low, "http_p50_ms": c1["p50_ms"],
                          "floor_p50_ms": floor_low["p50_ms"], "in_process_batch1_p50_ms": inproc["batch1_p50_ms"],
                          "excess_ms": excess, "bar_ms": LATENCY_BAR_MS, "margin_ms": LATENCY_BAR_MS - excess,
                          "met": excess <= LATENCY_BAR_MS}
    if not full:
        out["single_throughput"] = {"measured": False, "why": "not measured: no floor (--no-floor)"}
    else:
        # Serve's hops and the models' work share the same CPUs: an image costs the floor's time per request
        # plus the models' batched time per image, so together they allow at most 1 / (1/F + 1/M).
        floor_rate = max(r["images_per_s"] for r in full)
        bound = 1 / (1 / floor_rate + 1 / batched)
        best_single = max(r["images_per_s"] for r in http if r["route"] == "/predict")
        out["single_throughput"] = {"measured": True, "images_per_s": best_single, "floor_req_per_s": floor_rate,
                                    "in_process_batched_images_per_s": batched, "bound_images_per_s": bound,
                                    "ratio": best_single / bound}
    return out


def verdict_lines(v: dict[str, Any]) -> list[str]:
    lines = []
    lat = v["latency"]
    if lat["measured"]:
        lines.append(f"/predict p50 at concurrency {lat['concurrency']} - (floor {lat['floor_p50_ms']:.1f} + in-process "
                     f"batch-1 {lat['in_process_batch1_p50_ms']:.1f}) = {lat['excess_ms']:+.1f} ms; bar <= "
                     f"+{lat['bar_ms']:.0f} ms: {'met' if lat['met'] else 'NOT met'} (margin {lat['margin_ms']:+.1f} ms)")
    else:
        lines.append(f"/predict p50 against floor + in-process batch-1: {lat['why']}")
    b = v["batch_throughput"]
    lines.append(f"/predict/batch {b['images_per_s']:.0f} img/s / in-process batched {b['in_process_batched_images_per_s']:.0f}"
                 f" = {b['ratio']:.2f}; bar >= {b['bar']:.2f}: {'met' if b['met'] else 'NOT met'} (margin {b['margin']:+.2f})")
    one = v["single_throughput"]
    if one["measured"]:
        lines.append(f"/predict {one['images_per_s']:.0f} img/s / the bound floor and models allow together "
                     f"1/(1/{one['floor_req_per_s']:.0f} + 1/{one['in_process_batched_images_per_s']:.0f}) = "
                     f"{one['bound_images_per_s']:.0f} img/s: {one['ratio']:.2f} of it (no bar)")
    else:
        lines.append(f"/predict img/s against the floor's and models' bound: {one['why']}")
    return lines


def table(result: dict[str, Any]) -> str:
    m, ip = result["machine"], result["in_process"]
    lines = [f"cpu: {m['cpu_model']} ({m['usable_cpus']} usable); flags: {' '.join(m['vector_extensions'])}",
             f"RAY_SERVE_THROUGHPUT_OPTIMIZED={int(result['config']['throughput_optimized'])}",
             f"in-process ensemble: batch-1 p50 {ip['batch1_p50_ms']:.1f} ms (p95 {ip['batch1_p95_ms']:.1f}); "
             f"batch of {result['config']['batch_images']}: {ip['batched_images_per_s']:.0f} img/s "
             f"(threads {ip['batched_threads']})",
             "", f"{'route':<16}{'conc':>5}{'requests':>9}{'errors':>7}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}{'img/s':>8}"]
    for r in result["http"]:
        lines.append(f"{r['route']:<16}{r['concurrency']:>5}{r['requests']:>9}{r['errors']:>7}{r['p50_ms']:>8.1f}"
                     f"{r['p95_ms']:>8.1f}{r['p99_ms']:>8.1f}{r['images_per_s']:>8.1f}")
    if result.get("floor"):
        lines += ["", "Serve's own cost: the same app shape, models that do no work, the ingress not decoding",
                  f"{'no-work members':<16}{'conc':>5}{'requests':>9}{'errors':>7}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}{'req/s':>8}"]
        for r in result["floor"]:
            lines.append(f"{r['members']:<16}{r['concurrency']:>5}{r['requests']:>9}{r['errors']:>7}{r['p50_ms']:>8.1f}"
                         f"{r['p95_ms']:>8.1f}{r['p99_ms']:>8.1f}{r['images_per_s']:>8.1f}")
    lines += ["", f"{'fault (kill one replica)':<28}{'requests':>9}{'failed':>7}{'codes':>22}{'longest gap s':>15}{'healthy s':>10}"]
    for f in result["faults"]:
        codes = ",".join(f"{k}:{v}" for k, v in sorted(f["status_codes"].items()))
        lines.append(f"{f['model'] + ' x' + str(f['replicas']):<28}{f['requests']:>9}{f['errors']:>7}{codes:>22}"
                     f"{f['longest_gap_s']:>15.2f}{f.get('healthy_again_s', float('nan')):>10.2f}")
    r = result["ratios"]
    lines += ["", f"served /predict img/s / in-process batched img/s: {r['served_single_over_in_process_batched']:.2f}",
              f"served /predict/batch img/s / in-process batched img/s: {r['served_batch_over_in_process_batched']:.2f}",
              f"HTTP p50 at concurrency 1 - in-process batch-1 p50: {r['http_c1_p50_minus_in_process_b1_p50_ms']:+.1f} ms"]
    if "no_work_app_c1_p50_ms" in r:
        lines += [f"no-work app (Serve's floor) best req/s / in-process batched img/s: "
                  f"{r['no_work_app_req_per_s_over_in_process_batched']:.2f}; its p50 at concurrency 1: "
                  f"{r['no_work_app_c1_p50_ms']:.1f} ms"]
    if "verdicts" in result:
        lines += ["", "verdicts against Serve's floor:"] + ["  " + line for line in verdict_lines(result["verdicts"])]
    return "\n".join(lines)
