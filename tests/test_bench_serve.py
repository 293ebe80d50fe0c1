"""``python -m bench serve`` end to end on the session's run, every phase cut to about a second
(the figures: the real data's run, docs/serving.md; here only that each phase ran and was reported, and
that each verdict is the arithmetic of the JSON's own parts)."""

import json
import os
import subprocess
import sys
import time

import pytest

from raymotion.rundir import read_manifest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_serve_measures_every_phase_and_writes_table_and_json(run, faces_root, tmp_path):
    out = tmp_path / "serve.json"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "serve", run[0], "--data", faces_root, "--concurrency", "2",
         "--seconds", "1.5", "--max-requests", "40", "--batch-images", "4", "--inprocess-seconds", "1.5",
         "--fault-seconds", "4", "--fault-concurrency", "2",
         # One fault run (a replica killed, the only one of its model): the mechanism; both runs are in docs/serving.md.
         "--fault-replicas", "1",
         # The floor (the no-work app, once with no member and once with both): the verdicts stand on it.
         "--json", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["machine"]["vector_extensions"] is not None
    assert result["in_process"]["batch1_calls"] > 0 and result["in_process"]["batched_images_per_s"] > 0
    phases = {(r["route"], r["concurrency"]) for r in result["http"]}
    assert phases == {("/predict", 2), ("/predict/batch", 2)}
    for row in result["http"]:
        assert 0 < row["requests"] <= 40 and row["ok"] + row["errors"] == row["requests"]
    members = len(read_manifest(run[0]).ensemble.served)  # the session's run serves one member or two
    assert {(r["members"], r["concurrency"]) for r in result["floor"]} == {(0, 2), (members, 2)}
    assert [f["replicas"] for f in result["faults"]] == [1]
    for fault in result["faults"]:
        assert fault["killed"].startswith("SERVE_REPLICA::raymotion#model_") and fault["requests"] > 0
        assert "healthy_again_s" in fault
    assert set(result["ratios"]) >= {"served_single_over_in_process_batched", "served_batch_over_in_process_batched",
                                     "http_c1_p50_minus_in_process_b1_p50_ms", "no_work_app_c1_p50_ms"}
    check_verdicts(result, members)
    # The table printed is the JSON's, every verdict in it.
    assert result["table"] in proc.stdout
    assert "bar <= +2 ms" in result["table"] and "bar >= 0.80" in result["table"] and "bound" in result["table"]


def check_verdicts(result: dict, members: int) -> None:
    """Each verdict is its own parts' arithmetic, and its parts are the JSON's figures (whatever they are)."""
    ip, v = result["in_process"], result["verdicts"]
    http = {(r["route"], r["concurrency"]): r for r in result["http"]}
    full_floor = {r["concurrency"]: r for r in result["floor"] if r["members"] == members}

    lat = v["latency"]
    assert lat["measured"] and lat["concurrency"] == 2 and lat["bar_ms"] == 2.0
    assert lat["http_p50_ms"] == http[("/predict", 2)]["p50_ms"]
    assert lat["floor_p50_ms"] == full_floor[2]["p50_ms"] and lat["in_process_batch1_p50_ms"] == ip["batch1_p50_ms"]
    assert lat["excess_ms"] == pytest.approx(lat["http_p50_ms"] - lat["floor_p50_ms"] - lat["in_process_batch1_p50_ms"])
    assert lat["margin_ms"] == pytest.approx(2.0 - lat["excess_ms"]) and lat["met"] == (lat["margin_ms"] >= 0)

    batch = v["batch_throughput"]
    assert batch["images_per_s"] == http[("/predict/batch", 2)]["images_per_s"]
    assert batch["in_process_batched_images_per_s"] == ip["batched_images_per_s"] and batch["bar"] == 0.8
    assert batch["ratio"] == pytest.approx(batch["images_per_s"] / batch["in_process_batched_images_per_s"])
    assert batch["margin"] == pytest.approx(batch["ratio"] - 0.8) and batch["met"] == (batch["margin"] >= 0)

    one = v["single_throughput"]
    assert one["measured"] and one["images_per_s"] == http[("/predict", 2)]["images_per_s"]
    assert one["floor_req_per_s"] == full_floor[2]["images_per_s"]
    assert one["bound_images_per_s"] == pytest.approx(1 / (1 / one["floor_req_per_s"] + 1 / ip["batched_images_per_s"]))
    assert one["bound_images_per_s"] < min(one["floor_req_per_s"], ip["batched_images_per_s"])
    assert one["ratio"] == pytest.approx(one["images_per_s"] / one["bound_images_per_s"])

    # Without the floor (--no-floor) only the batch verdict stands; the others say why they are missing.
    from bench.serve import verdicts

    alone = verdicts(ip, result["http"], [])
    assert alone["batch_throughput"] == batch
    assert not alone["latency"]["measured"] and "no floor" in alone["latency"]["why"]
    assert not alone["single_throughput"]["measured"]


def test_serve_floor_app_answers_like_the_served_app(served_url):
    """The no-work app of bench serve's floor (bench.serve_floor), beside the session's app: the
    same POST /predict and GET /healthz, every member called, answered 200 (a 422 meant FastAPI had read
    the route's Request as a query parameter)."""
    import requests
    from ray import serve

    from bench.serve_floor import build_floor_app

    serve.run(build_floor_app(2, 0.05, 0.05, 8), name="floor-test", route_prefix="/floor-test", blocking=False)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{served_url}/floor-test/healthz", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        answers = [requests.post(f"{served_url}/floor-test/predict", data=b"\xff\xd8 not decoded", timeout=10)
                   for _ in range(5)]
        assert [a.status_code for a in answers] == [200] * 5
        assert answers[0].json() == {"label": "none", "probabilities": [0.0, 0.0]}
    finally:
        serve.delete("floor-test")
