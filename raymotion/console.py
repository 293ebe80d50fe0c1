"""The terminal of a long command: everything the process and Ray print goes, complete, to a log file in
the run directory; the terminal gets the same minus lines known to be harmless noise. And ``table``, the
plain-text table every command and benchmark prints.

The filter works on file descriptors 1 and 2, not on ``sys.stdout``: Ray's C++ core worker logs straight
to fd 2, and the lines of Ray's workers reach the driver through Ray's log monitor. Each noise pattern
below says why it is safe to hide; Ray's own session logs (``/tmp/ray/session_*/logs``) keep them too.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Noise:
    pattern: re.Pattern
    why: str


NOISE = (
    Noise(re.compile(r"Actor with class name: 'PreemptionWatcher'"),
          "Ray Train V2 creates a PreemptionWatcher actor with max_restarts > 0 in every trial, and Ray logs an "
          "error-level line for it; it is not an error of the run"),
    Noise(re.compile(r"exclude_resources"),
          "a RayDeprecationWarning about an option that Ray Train itself sets on every dataset it feeds (and the "
          "warning's source line after it); nothing this project can change"),
    Noise(re.compile(r"Cluster resources are not enough to run any task from"),
          "Ray Data warns this whenever a data task waits for a CPU that a Train worker holds for a moment; a real "
          "shortage is caught before each model starts (raymotion.tune.resources) and reported in words"),
    Noise(re.compile(r"Starting execution of Dataset|Execution plan of Dataset|Dataset \S+ execution finished in|"
                     r"Progress bars disabled"),
          "Ray Data's INFO lines, several per epoch; they stay in ray-data.log of Ray's session logs"),
    Noise(re.compile(r"Requesting resources: |Attempting to start training worker group|Started training worker "
                     r"group|world_rank=\d+, local_rank=|Setting up process group for|Moving model to device|"
                     r"Checkpoint successfully created at|Reporting training result \d+|Cleaning up placement group"),
          "Ray Train's INFO lines per trial and epoch; raymotion's epoch line says what matters of them in one line"),
    Noise(re.compile(r"^View detailed results here|^To visualize your results with TensorBoard|^[╭│├╰]|"
                     r"A new study created in memory"),
          "Tune's banner per model (its TensorBoard hint names a folder in Ray's temp dir: use `tensorboard "
          "--logdir RUN_DIR` instead) and Optuna's study-created INFO line"),
    Noise(re.compile(r"^\[torch\.onnx\] "), "torch.onnx's exporter steps, four per exported model"),
    Noise(re.compile(r"Experiment state snapshotting has been triggered multiple times|^You may want to consider "
                     r"increasing the `CheckpointConfig\(num_to_keep\)`|^You can suppress this warning by setting the "
                     r"environment variable TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC"),
          "Tune snapshots the experiment at every checkpoint of a trial that trains in its own process (what a "
          "restore knows of it) and warns, in three lines, when that happens often; the snapshot is a few kB"),
    Noise(re.compile(r"^WARNING:root:Axis 1 is out-of-range for weight '[^']+' with rank 1$"),
          "onnxruntime's static quantizer, once per LayerNorm weight of each ViT candidate (54 lines in a full run): "
          "a rank-1 weight has no axis 1 to quantize per channel and is quantized per tensor, as a vector should be"),
)
# A worker that Ray stops with SIGTERM while Python runs a callback (a WeakSet's, as trials end) raises
# Ray's SystemExit inside it, and Python prints "Exception ignored in: ..." with a traceback ending in
# "SystemExit: 1": the process was asked to exit and did. Such a block is held back until its last line
# shows which it is; any other ending (or a block too long to be one) goes to the terminal whole.
IGNORED_START = re.compile(r"^Exception ignored in: ")
IGNORED_EXIT = re.compile(r"^SystemExit: \d+$")
IGNORED_MAX_LINES = 80
# Written through each pipe at exit: when the reader sees it, everything written before it is out.
DRAINED = b"\x00raymotion-console-drained\x00\n"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Ray prefixes the lines of its workers with "(ActorName pid=123) " (or "(pid=123, ip=...) ").
WORKER_PREFIX = re.compile(r"^\((\S+ )?pid=[^)]*\) ")


def plain(line: str) -> str:
    """The line as written by its process: without colours and without Ray's worker prefix."""
    return WORKER_PREFIX.sub("", ANSI.sub("", line), count=1)


def is_noise(line: str) -> bool:
    text = plain(line)
    return any(n.pattern.search(text) for n in NOISE)


def is_continuation(line: str) -> bool:
    """An indented line: the source line a Python warning prints after its message, or a traceback's."""
    return plain(line)[:1] in (" ", "\t")


class LineFilter:
    """Splits a byte stream into lines; writes every line to the log, and the non-noise ones onwards."""

    def __init__(self, terminal_fd: int, log, lock: threading.Lock):
        self.terminal_fd, self.log, self.lock = terminal_fd, log, lock
        self.pending, self.dropped_last = b"", False
        self.held: list[bytes] = []  # an "Exception ignored in" block, not yet on the terminal
        self.drained = threading.Event()

    def feed(self, data: bytes) -> None:
        lines = (self.pending + data).split(b"\n")
        self.pending = lines.pop()
        for raw in lines:
            self.line(raw + b"\n")

    def line(self, raw: bytes) -> None:
        if raw.endswith(DRAINED):
            if len(raw) > len(DRAINED):  # an unterminated last line came before the mark
                self.line(raw[:-len(DRAINED)])
            self.release_held()
            self.drained.set()
            return
        text = raw.decode("utf-8", "replace")
        with self.lock:
            self.log.write(raw)
            self.log.flush()
        if self.held or IGNORED_START.search(plain(text)):
            self.hold(raw, text)
            return
        # A line that continues a hidden one (a warning's source line) is hidden with it.
        drop = is_noise(text) or (self.dropped_last and is_continuation(text))
        self.dropped_last = drop
        if not drop:
            os.write(self.terminal_fd, raw)

    def hold(self, raw: bytes, text: str) -> None:
        """One more line of an "Exception ignored in" block: dropped whole at a SystemExit, released at
        anything that is not a traceback's line."""
        self.held.append(raw)
        line = plain(text).rstrip("\n")
        if IGNORED_EXIT.match(line):
            self.held, self.dropped_last = [], True
        elif len(self.held) > IGNORED_MAX_LINES or not (
                len(self.held) == 1 or line.startswith("Traceback (most recent call last):") or is_continuation(text)):
            self.release_held()

    def release_held(self) -> None:
        held, self.held = self.held, []
        if held:
            os.write(self.terminal_fd, b"".join(held))
        self.dropped_last = False

    def close(self) -> None:
        if self.pending:
            self.line(self.pending)
            self.pending = b""
        self.release_held()


def _pump(read_fd: int, line_filter: LineFilter) -> None:
    while True:
        try:
            data = os.read(read_fd, 65536)
        except OSError:
            break
        if not data:
            break
        try:
            line_filter.feed(data)
        except Exception:  # this thread's own errors would go into its own pipe: never lose the output
            os.write(line_filter.terminal_fd, data)
    line_filter.close()


def filter_terminal(log_path: str) -> None:
    """From now on, fds 1 and 2 of this process (and of the processes it starts) go through the filter;
    ``log_path`` gets everything. For the rest of the process's life: Ray's local processes inherit the
    pipes, so they stay open, and a reader must stay to drain them."""
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    log = open(log_path, "ab")
    lock = threading.Lock()
    sys.stdout.flush()
    sys.stderr.flush()
    filters = []
    for fd in (1, 2):
        terminal = os.dup(fd)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, fd)
        os.close(write_fd)
        line_filter = LineFilter(terminal, log, lock)
        threading.Thread(target=_pump, args=(read_fd, line_filter), name=f"console-filter-{fd}", daemon=True).start()
        filters.append((fd, terminal, line_filter))

    def drain() -> None:
        """At exit: let the readers pass on all this process wrote, then hand fds 1 and 2 back to the
        terminal (child processes may hold the pipes open, so the end is marked, not awaited as EOF)."""
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, _, line_filter in filters:
            os.write(fd, DRAINED)
        for fd, terminal, line_filter in filters:
            # Bounded, but long enough for a loaded machine (a reader that has not run yet loses lines).
            line_filter.drained.wait(timeout=30.0)
            os.dup2(terminal, fd)

    atexit.register(drain)


def table(rows: Iterable[Sequence[Any]], columns: Sequence[str], align: str | None = None) -> str:
    """``rows`` under the header ``columns``, each column as wide as its widest cell, two spaces apart, no
    trailing spaces. Cells are ``str()``-ed (None: empty), so format numbers before. ``align``: one "<"
    (left) or ">" (right) per column; default all left."""
    cells = [[str(c) for c in columns]] + [["" if v is None else str(v) for v in row] for row in rows]
    align = align or "<" * len(columns)
    if len(align) != len(columns) or set(align) - set("<>") or any(len(r) != len(columns) for r in cells):
        raise ValueError(f"{len(columns)} columns, alignment {align!r}, rows of {sorted({len(r) for r in cells})} cells")
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return "\n".join("  ".join(f"{c:{a}{w}}" for c, a, w in zip(r, align, widths)).rstrip() for r in cells)


def print_table(rows: Iterable[Sequence[Any]], columns: Sequence[str], align: str | None = None) -> None:
    print(table(rows, columns, align))
