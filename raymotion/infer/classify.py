"""The actor stage: a raymotion.Predictor per actor, loaded once, classifying the found faces in batches.

    map_batches(Classify, fn_constructor_kwargs={"run_dir": RUN}, compute=ActorPoolStrategy(size=n), ...)

Each face's pixels arrive already resized to every member's input size (raymotion.infer.detect), so the
actor runs Predictor.pixel_probabilities (the served members, each through its calibration) and
Predictor.pool (the manifest's ensemble): what Predictor.classify does after its resize. Rows without a
face, and error rows, pass through with null probabilities.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from raymotion.export.sessions import Device
from raymotion.infer.table import member_column, output_schema, pixels_column, prob_column


class Classify:
    def __init__(self, run_dir: str, *, device: Device = "cpu", intra_op_threads: int = 0):
        from raymotion.predict import Predictor

        self.predictor = Predictor(run_dir, device=device, intra_op_threads=intra_op_threads)
        self.classes = self.predictor.classes
        self.members = list(self.predictor.members)
        self.sizes = self.predictor.input_sizes
        self.schema = output_schema(self.classes, self.members)

    def __call__(self, found: pa.Table) -> pa.Table:
        n = found.num_rows
        columns = {name: found.column(name) for name in found.schema.names if not name.startswith("pixels_")}
        first = found.column(pixels_column(self.sizes[0])).to_pylist()
        faces = [i for i, data in enumerate(first) if data]
        labels: list[str | None] = [None] * n
        pooled_cols = {c: np.full(n, np.nan) for c in self.classes}
        member_cols = {(m, c): np.full(n, np.nan) for m in self.members for c in self.classes}
        if faces:
            by_size = {}
            for size in self.sizes:
                data = found.column(pixels_column(size)).take(faces).to_pylist()
                by_size[size] = np.frombuffer(b"".join(data), np.uint8).reshape(len(faces), size, size, 3)
            member_probs = self.predictor.pixel_probabilities(by_size)
            pooled = self.predictor.pool(member_probs)
            for j, i in enumerate(faces):
                labels[i] = self.classes[int(np.argmax(pooled[j]))]
            for k, c in enumerate(self.classes):
                pooled_cols[c][faces] = pooled[:, k]
                for m in self.members:
                    member_cols[(m, c)][faces] = member_probs[m][:, k]
        has = np.zeros(n, bool)
        has[faces] = True
        columns["track"] = pa.nulls(n, pa.int64())
        columns["label"] = pa.array(labels, pa.string())
        for c in self.classes:
            columns[prob_column(c)] = pa.array(pooled_cols[c], pa.float64(), mask=~has)
        for (m, c), values in member_cols.items():
            columns[member_column(m, c)] = pa.array(values, pa.float64(), mask=~has)
        return pa.table([columns[name] for name in self.schema.names], schema=self.schema)
