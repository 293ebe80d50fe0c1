"""The terminal filter of long commands: on a real process's file descriptors, known noise is hidden from
the terminal and kept in the log; everything else, written any way a process writes, reaches both. And
the plain-text table the commands and benchmarks print."""

import os
import subprocess
import sys
import textwrap

import pytest

from raymotion.console import NOISE, is_noise, table

# Lines as the quick run's terminal had them (Ray's worker prefix and colours included).
NOISY = [
    "\x1b[36m(TrainController pid=9383)\x1b[0m [2026-12-01 22:56:06,802 E 9383 9449] core_worker.cc:2465: Actor with "
    "class name: 'PreemptionWatcher' and ID: '5cc0' has constructor arguments in the object store and max_restarts > 0.",
    "\x1b[36m(DatasetManager pid=9553)\x1b[0m /x/execution_options.py:436: RayDeprecationWarning: "
    "`ExecutionOptions.exclude_resources` is deprecated and will be removed after January 2027.",
    "\x1b[36m(DatasetManager pid=9553)\x1b[0m   self.exclude_resources = exclude_resources",
    "\x1b[36m(SplitCoordinator pid=9641)\x1b[0m Starting execution of Dataset train_0357_0. Full logs are in /tmp/ray/x",
    "\x1b[36m(SplitCoordinator pid=9641)\x1b[0m Execution plan of Dataset train_0357_0: InputDataBuffer[Input] -> ...",
    "2026-12-01 22:55:46,796\tWARNING streaming_executor.py:190 -- Cluster resources are not enough to run any task "
    "from TaskPoolMapOperator[MapBatches(_augment_batch)]. The job may hang forever unless the cluster scales up.",
    "\x1b[36m(RayTrainWorker pid=9486)\x1b[0m Reporting training result 1: TrainingReport(checkpoint=...)",
    "\u256d\u2500\u2500\u2500\u256e",
    "[torch.onnx] Translate the graph into ONNX... \u2705",
    "2026-12-02 16:20:35,895\tWARNING experiment_state.py:209 -- Experiment state snapshotting has been triggered "
    "multiple times in the last 5.0 seconds and may become a bottleneck.",
    "You may want to consider increasing the `CheckpointConfig(num_to_keep)` or decreasing the frequency of saving "
    "checkpoints.",
    "You can suppress this warning by setting the environment variable "
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S to a smaller value than the current threshold (5.0).",
]
KEPT = [
    "[lenet] trial 1/2 epoch 1/2 full: 127 img/s, val acc 0.3400 macro-F1 0.2658",
    "\x1b[36m(RayTrainWorker pid=9486)\x1b[0m RuntimeError: CUDA out of memory",
    "2026-12-01 22:55:40,091\tWARNING worker.py:1 -- a real warning of Ray's",
    "    an indented line after a kept one (a traceback's) stays",
]


# The export's lines (not in the lists above, whose order the descriptor test below depends on).
EXPORT_NOISY = ["WARNING:root:Axis 1 is out-of-range for weight 'model.model.vit.layers.0.layernorm_before.weight' with rank 1"]
EXPORT_KEPT = ["WARNING:root:Axis 1 is out-of-range for weight 'conv.weight' with rank 2"]


def test_every_noise_pattern_is_exercised_and_real_lines_pass():
    noisy = NOISY + EXPORT_NOISY
    assert all(is_noise(line) for line in noisy)
    assert not any(is_noise(line) for line in KEPT + EXPORT_KEPT)
    # Each documented pattern hides at least one of the lines above: none is dead.
    for noise in NOISE:
        assert any(noise.pattern.search(line.split("\x1b[0m ")[-1]) for line in noisy), noise.why


def test_the_filter_on_a_real_processes_descriptors(tmp_path):
    log = tmp_path / "logs" / "run.log"
    lines = "\n".join(NOISY[:3] + KEPT[:1] + NOISY[3:] + KEPT[1:])
    script = textwrap.dedent(f"""
        import os, subprocess, sys
        from raymotion.console import filter_terminal
        filter_terminal({str(log)!r})
        lines = {lines!r}.splitlines()
        for i, line in enumerate(lines):
            if i % 3 == 0:
                # Python's stdout, flushed: a block-buffered pipe would reach the filter only at exit, after
                # the child's lines, and which line a continuation follows would then depend on timing.
                print(line, flush=True)
            elif i % 3 == 1:
                os.write(2, (line + "\\n").encode())          # straight to fd 2, as Ray's C++ logging does
            else:
                # A child process that inherited the descriptors, as Ray's local processes do.
                subprocess.run([sys.executable, "-c", "import sys; print(sys.argv[1])", line], check=True)
        sys.stdout.write("no newline at the end")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    terminal = proc.stdout.splitlines() + proc.stderr.splitlines()
    assert sorted(terminal) == sorted(KEPT + ["no newline at the end"])
    logged = log.read_text().splitlines()
    assert sorted(logged) == sorted(NOISY + KEPT + ["no newline at the end"])


def test_a_hidden_warnings_source_line_goes_with_it(tmp_path):
    import threading

    from raymotion.console import LineFilter

    read_fd, write_fd = os.pipe()
    with open(tmp_path / "log", "wb") as log:
        line_filter = LineFilter(write_fd, log, threading.Lock())
        line_filter.feed(b"(DatasetManager pid=1) /x.py:436: RayDeprecationWarning: `exclude_resources` is deprecated\n"
                         b"(DatasetManager pid=1)   warnings.warn(msg)\n"
                         b"Traceback (most recent call last):\n"
                         b"  File \"/x.py\", line 1, in <module>\n")
        line_filter.close()
    os.close(write_fd)
    with os.fdopen(read_fd) as terminal:
        assert terminal.read().splitlines() == ["Traceback (most recent call last):", '  File "/x.py", line 1, in <module>']
    assert len((tmp_path / "log").read_text().splitlines()) == 4


def test_table_widths_alignment_and_refusals():
    text = table([("lenet", 32, "0.91"), ("mobilenet_v2", 224, None)], ["model", "px", "acc"], align="<><")
    assert text.splitlines() == ["model          px  acc",
                                 "lenet          32  0.91",
                                 "mobilenet_v2  224"]  # None is an empty cell; no trailing spaces
    assert table([("", "")], ["", ""]) == "\n"  # empty columns: zero width, nothing to pad
    with pytest.raises(ValueError):
        table([("a", "b")], ["one"])  # a row longer than the header
    with pytest.raises(ValueError):
        table([("a",)], ["one"], align="<>")


def terminal_of(tmp_path, data: bytes) -> list[str]:
    """What a LineFilter fed ``data`` passes to the terminal; the log must have every line."""
    import threading

    from raymotion.console import LineFilter

    read_fd, write_fd = os.pipe()
    with open(tmp_path / "log", "wb") as log:
        line_filter = LineFilter(write_fd, log, threading.Lock())
        line_filter.feed(data)
        line_filter.close()
    os.close(write_fd)
    assert (tmp_path / "log").read_bytes() == data
    with os.fdopen(read_fd) as terminal:
        return terminal.read().splitlines()


# As a trial's end printed it: a Ray worker stopped by SIGTERM inside a WeakSet callback.
SIGTERM_BLOCK = (b"(RayTrainWorker pid=7) Exception ignored in: <function WeakSet.__init__.<locals>._remove at 0x7f>\n"
                 b"(RayTrainWorker pid=7) Traceback (most recent call last):\n"
                 b"(RayTrainWorker pid=7)   File \"/usr/lib/python3.11/_weakrefset.py\", line 39, in _remove\n"
                 b"(RayTrainWorker pid=7)     def _remove(item, selfref=ref(self)):\n"
                 b"(RayTrainWorker pid=7)   File \"/x/ray/_private/worker.py\", line 1, in sigterm_handler\n"
                 b"(RayTrainWorker pid=7) SystemExit: 1\n")


def test_a_workers_sigterm_exit_inside_a_callback_is_hidden_and_logged(tmp_path):
    epoch = b"[lenet] trial 1/1 epoch 2/2 full: 90 img/s\n"
    assert terminal_of(tmp_path, epoch + SIGTERM_BLOCK + b"exported lenet\n") == [epoch.decode().strip(), "exported lenet"]


def test_an_ignored_exception_that_is_not_an_exit_reaches_the_terminal_whole(tmp_path):
    block = SIGTERM_BLOCK.replace(b"SystemExit: 1", b"ValueError: a real one")
    assert terminal_of(tmp_path, block + b"after\n") == block.decode().splitlines() + ["after"]
    # Cut off before its last line (the process ended): released at close, nothing lost.
    cut = b"".join(SIGTERM_BLOCK.splitlines(keepends=True)[:3])
    assert terminal_of(tmp_path, cut) == cut.decode().splitlines()
