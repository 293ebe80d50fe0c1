"""``python -m raymotion.tune`` killed with SIGKILL mid-run (not a polite stop), then ``--resume``: the run
finishes, with every trial counted once and the trial finished before the kill not run again."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd

from raymotion.rundir import MANIFEST, read_manifest, read_soft_labels, read_tune_result, soft_labels_path, trials_path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS = 6  # per trial: trial 2 is still running when a snapshot of it midway is on disk


def tune_command(address: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "raymotion.tune", "--address", address, *args]


def run_until(command: list[str], marker: str, timeout_s: float) -> tuple[subprocess.Popen, list[str]]:
    """Start ``command`` and read its output until a line contains ``marker``."""
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, deadline = [], time.monotonic() + timeout_s
    for line in proc.stdout:
        lines.append(line)
        if marker in line or time.monotonic() > deadline:
            break
    return proc, lines


def snapshot_shows(experiment_dir: str, wanted, timeout_s: float) -> bool:
    """Until Tune's experiment snapshot in the run directory holds trials whose sorted (status, last reported
    epoch) pairs satisfy ``wanted``. Tune writes the snapshot at each trial checkpoint (and every 10 s or
    more): what a restore knows of each trial."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for path in glob.glob(os.path.join(experiment_dir, "experiment_state-*.json")):
            try:
                with open(path) as f:
                    trials = json.load(f)["trial_data"]
                seen = sorted((json.loads(trial)["status"], (json.loads(meta).get("last_result") or {}).get("epoch") or 0)
                              for trial, meta in trials)
            except (OSError, ValueError, KeyError):  # being written
                continue
            if wanted(seen):
                return True
        time.sleep(0.02)
    return False


def snapshot_has_a_midway_trial(experiment_dir: str, epochs: int, timeout_s: float) -> bool:
    """One trial finished after its last epoch, one running whose last result (and the checkpoint reported
    with it) is of an earlier epoch."""
    return snapshot_shows(experiment_dir, lambda seen: len(seen) == 2 and seen[0][0] == "RUNNING"
                          and 1 <= seen[0][1] < epochs and seen[1] == ("TERMINATED", epochs), timeout_s)


def test_a_run_killed_mid_trial_resumes_and_counts_each_trial_once(ray_session, faces_root, tmp_path):
    address = ray_session.get_runtime_context().gcs_address
    run_dir = str(tmp_path / "run")
    # With a distilled single student: the stage after the ensemble, which the resumed run reaches.
    first = tune_command(address, "--data", faces_root, "--models", "lenet", "--preset", "smoke", "--num-samples", "2",
                         "--epochs", str(EPOCHS), "--set", "input_size=32", "--no-int8", "--student", "lenet", "--out", run_dir,
                         # The smoke preset's ASHA grace period (3 epochs) lets trial 2 go on past epoch 1 whatever
                         # its first epoch scores: its continuation from the checkpoint is what is checked.
                         "--seed", "1")
    # Killed once trial 1 has finished and trial 2 has reported an epoch (with its checkpoint) that Tune's
    # snapshot knows of: one finished trial, one midway.
    marker = f"trial 2/2 epoch 1/{EPOCHS}"
    proc, lines = run_until(first, marker, timeout_s=300)
    assert any(marker in line for line in lines), "".join(lines[-40:])
    experiment = os.path.join(run_dir, "tune", "tune-lenet")
    assert snapshot_has_a_midway_trial(experiment, EPOCHS, timeout_s=60), "no snapshot of trial 2 midway"
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert read_tune_result(run_dir, "lenet") is None  # the search had not finished

    resumed = subprocess.run(tune_command(address, "--resume", run_dir), cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-4000:]
    assert "resuming" in resumed.stdout

    result = read_tune_result(run_dir, "lenet")
    trials = pd.read_csv(trials_path(run_dir, "lenet", ".csv"))
    assert result.trials == 2 and len(trials) == 2 and trials["trial_id"].is_unique
    assert (trials["stop_reason"] != "error").all()
    assert trials["restarted"].sum() == 1  # the midway trial, continued from its checkpoint
    # No epoch is trained twice: the finished trial is not run again, the midway one continues from its
    # checkpoint's next epoch (a restart from scratch would report its epoch 1 a second time).
    assert any("trial 1/2 done" in line for line in lines)
    reported = [pd.read_csv(os.path.join(experiment, d, "progress.csv"))["epoch"] for d in sorted(os.listdir(experiment))
                if os.path.exists(os.path.join(experiment, d, "progress.csv"))]
    assert len(reported) == 2
    for epochs in reported:
        assert epochs.is_unique, list(epochs)
    assert read_manifest(run_dir).models["lenet"].input_size == 32
    # The student: trained against the final ensemble's soft labels, into a run directory of its own that
    # serves alone (one member, weight 1), after the interrupted search was resumed.
    student_dir = os.path.join(run_dir, "student")
    student = read_manifest(student_dir)
    assert list(student.models) == ["lenet"] and student.ensemble.served_weights == {"lenet": 1.0}
    assert student.models["lenet"].train_config.soft_labels == soft_labels_path(run_dir, "ensemble")
    assert read_soft_labels(student.models["lenet"].train_config.soft_labels).teachers == {"lenet": 1.0}
    assert "distilled student lenet" in resumed.stdout


def stop_with_ctrl_c(proc: subprocess.Popen, lines: list[str]) -> str:
    """SIGINT, what a terminal's Ctrl-C sends (Ray's own processes block it); the rest of the output."""
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=180)
    return "".join(lines) + rest


def test_ctrl_c_stops_the_run_where_it_is_and_resume_continues_it(ray_session, faces_root, tmp_path):
    """Tune catches a Ctrl-C in a search and returns as if the search had ended: the run must stop there,
    with the model not marked as tuned, not export a half-trained model. A Ctrl-C in the export after a
    search must stop the run too, not be swallowed by the handler Tune leaves installed."""
    address = ray_session.get_runtime_context().gcs_address
    run_dir = str(tmp_path / "run")
    manifest = os.path.join(run_dir, MANIFEST)
    epochs = 4
    first = tune_command(address, "--data", faces_root, "--models", "lenet", "--preset", "smoke", "--num-samples", "1",
                         "--epochs", str(epochs), "--set", "input_size=32", "--no-int8", "--student", "", "--out", run_dir)
    marker = f"trial 1/1 epoch 1/{epochs}"
    proc, lines = run_until(first, marker, timeout_s=300)
    assert any(marker in line for line in lines), "".join(lines[-40:])
    # What --resume continues is the experiment's last snapshot: stopped once it knows epoch 1's checkpoint.
    experiment = os.path.join(run_dir, "tune", "tune-lenet")
    assert snapshot_shows(experiment, lambda seen: seen == [("RUNNING", 1)], timeout_s=60), "no snapshot of epoch 1"
    out = stop_with_ctrl_c(proc, lines)
    assert proc.returncode == 130, out[-3000:]
    assert f"--resume {run_dir}" in out
    assert read_tune_result(run_dir, "lenet") is None and not os.path.exists(manifest)

    proc, lines = run_until(tune_command(address, "--resume", run_dir), "exporting every model", timeout_s=300)
    assert any("exporting every model" in line for line in lines), "".join(lines[-40:])
    out = stop_with_ctrl_c(proc, lines)
    assert proc.returncode == 130, out[-3000:]
    assert read_tune_result(run_dir, "lenet") is not None and not os.path.exists(manifest)

    resumed = subprocess.run(tune_command(address, "--resume", run_dir), cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-4000:]
    assert "--student ''" in resumed.stdout  # the resumed command, as a shell would take it
    assert read_tune_result(run_dir, "lenet").trials == 1 and read_manifest(run_dir).models["lenet"].input_size == 32
    # The stopped trial continued from its checkpoint, to the last epoch, and trained no epoch twice.
    trial_dirs = glob.glob(os.path.join(experiment, "*", "progress.csv"))
    assert len(trial_dirs) == 1
    reported = pd.read_csv(trial_dirs[0])["epoch"]
    assert reported.is_unique and reported.max() == epochs, list(reported)

    # Resumed once more, finished, beside a holder of all but 0.3 of the CPUs (make run's service, say):
    # nothing trains, so it needs no trial's CPUs, and it exports the kept model again.
    from conftest import cpus_held_but

    with cpus_held_but(ray_session, 0.3):
        again = subprocess.run(tune_command(address, "--resume", run_dir), cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, timeout=600)
    assert again.returncode == 0 and "lenet: already tuned in this run (1 trials); kept" in again.stdout, again.stdout[-3000:]
