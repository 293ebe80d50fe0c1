"""``python -m bench serve`` end to end on the session's run, every phase cut to about a second
(the figures: the real data's run, docs/serving.md; here only that each phase ran and was reported)."""

import json
import os
import subprocess
import sys
import time

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
         # The floor app's phases are the same load loop on another app: its app answers in test_serve_floor.
         "--no-floor", "--json", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["machine"]["vector_extensions"] is not None
    assert result["in_process"]["batch1_calls"] > 0 and result["in_process"]["batched_images_per_s"] > 0
    phases = {(r["route"], r["concurrency"]) for r in result["http"]}
    assert phases == {("/predict", 2), ("/predict/batch", 2)}
    for row in result["http"]:
        assert 0 < row["requests"] <= 40 and row["ok"] + row["errors"] == row["requests"]
    assert result["floor"] == []
    assert [f["replicas"] for f in result["faults"]] == [1]
    for fault in result["faults"]:
        assert fault["killed"].startswith("SERVE_REPLICA::raymotion#model_") and fault["requests"] > 0
        assert "healthy_again_s" in fault
    assert set(result["ratios"]) == {"served_single_over_in_process_batched", "served_batch_over_in_process_batched",
                                     "http_c1_p50_minus_in_process_b1_p50_ms"}
    # The table printed is the JSON's.
    assert result["table"] in proc.stdout


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
