"""``python -m raymotion.bench serve`` end to end on the session's run, every phase cut to about a second
(the figures: the real data's run, README; here only that each phase ran and was reported)."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_serve_measures_every_phase_and_writes_table_and_json(run, faces_root, tmp_path):
    out = tmp_path / "serve.json"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, "-m", "raymotion.bench", "serve", run[0], "--data", faces_root, "--concurrency", "2",
         "--seconds", "1.5", "--max-requests", "40", "--batch-images", "4", "--inprocess-seconds", "1.5",
         "--fault-seconds", "4", "--fault-concurrency", "2",
         # One fault run (a replica killed, the only one of its model): the mechanism; both runs are README's.
         "--fault-replicas", "1", "--json", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["machine"]["vector_extensions"] is not None
    assert result["in_process"]["batch1_calls"] > 0 and result["in_process"]["batched_images_per_s"] > 0
    phases = {(r["route"], r["concurrency"]) for r in result["http"]}
    assert phases == {("/predict", 2), ("/predict/batch", 2)}
    for row in result["http"]:
        assert 0 < row["requests"] <= 40 and row["ok"] + row["errors"] == row["requests"]
    # Serve's floor: the no-work app, the ingress alone and with one call per served member, answered 200.
    members = len(json.loads((Path(run[0]) / "manifest.json").read_text())["ensemble"]["served"])
    assert [(r["members"], r["concurrency"]) for r in result["floor"]] == [(0, 2), (members, 2)]
    for row in result["floor"]:
        assert row["requests"] > 0 and row["errors"] == 0, row
    assert [f["replicas"] for f in result["faults"]] == [1]
    for fault in result["faults"]:
        assert fault["killed"].startswith("SERVE_REPLICA::raymotion#model_") and fault["requests"] > 0
        assert "healthy_again_s" in fault
    assert set(result["ratios"]) == {"served_single_over_in_process_batched", "served_batch_over_in_process_batched",
                                     "http_c1_p50_minus_in_process_b1_p50_ms",
                                     "no_work_app_req_per_s_over_in_process_batched", "no_work_app_c1_p50_ms"}
    # The table printed is the JSON's.
    assert result["table"] in proc.stdout
