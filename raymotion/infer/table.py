"""The output table: one row per face (or per image without a face, or per error), its columns, and the
writers by file extension.

    source, kind, row, frame, time_s   where the face is: the file; the Parquet row or the video frame
    width, height                      the image's size (after EXIF orientation), original pixels
    faces, face                        faces found in the image (0: none, and face is null) and this one's index
    x, y, w, h, score                  the face's box in original pixels (as POST /predict?faces=1) and detector score
    track                              video: the face's track id (raymotion.infer.tracks)
    label, prob_<class>                the ensemble's label and probabilities
    <member>_prob_<class>              each served member's calibrated probabilities
    error                              why the image (or the rest of a video) gave no answer; null otherwise

Every stage returns Arrow tables with these explicit types, so that a block whose rows are all errors
(nulls everywhere) has the same schema as any other.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import pyarrow as pa

WHERE = [("source", pa.string()), ("kind", pa.string()), ("row", pa.int64()), ("frame", pa.int64()),
         ("time_s", pa.float64()), ("width", pa.int32()), ("height", pa.int32()), ("faces", pa.int32()),
         ("face", pa.int32()), ("x", pa.int32()), ("y", pa.int32()), ("w", pa.int32()), ("h", pa.int32()),
         ("score", pa.float64())]
FORMATS = (".parquet", ".csv", ".jsonl")


def pixels_column(size: int) -> str:
    return f"pixels_{size}"


def prob_column(cls: str) -> str:
    return f"prob_{cls}"


def member_column(member: str, cls: str) -> str:
    return f"{member}_prob_{cls}"


def found_schema(sizes: Sequence[int]) -> pa.Schema:
    """What the face-finding tasks hand the model actors: where each face is, its crop resized once per
    member input size (uint8 S x S x 3, raw bytes; empty for rows without a face), and any error."""
    return pa.schema(WHERE + [(pixels_column(s), pa.binary()) for s in sizes] + [("error", pa.string())])


def output_schema(classes: Sequence[str], members: Sequence[str]) -> pa.Schema:
    probs = [(prob_column(c), pa.float64()) for c in classes]
    by_member = [(member_column(m, c), pa.float64()) for m in members for c in classes]
    return pa.schema(WHERE + [("track", pa.int64()), ("label", pa.string())] + probs + by_member
                     + [("error", pa.string())])


def check_format(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise ValueError(f"--out {path}: the extension says the format, one of {', '.join(FORMATS)}")
    return ext


class Writer:
    """Batches appended to ``path`` in the format its extension names. The file is written as
    ``path + ".part"`` and renamed on ``close``, so that a job stopped midway leaves no file that looks
    complete."""

    def __init__(self, path: str, schema: pa.Schema):
        self.path, self.schema, self.format = path, schema, check_format(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.partial = path + ".part"
        if self.format == ".parquet":
            import pyarrow.parquet as pq

            self._writer = pq.ParquetWriter(self.partial, schema)
        elif self.format == ".csv":
            import pyarrow.csv as pcsv

            self._writer = pcsv.CSVWriter(self.partial, schema)
        else:
            self._file = open(self.partial, "w")

    def write(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        table = table.select(self.schema.names).cast(self.schema)
        if self.format == ".jsonl":
            for row in table.to_pylist():
                self._file.write(json.dumps(row) + "\n")
        else:
            self._writer.write_table(table)

    def close(self) -> str:
        if self.format == ".jsonl":
            self._file.close()
        else:
            self._writer.close()
        os.replace(self.partial, self.path)
        return self.path


def read_table(path: str) -> pa.Table:
    """A table this module wrote, in any of its formats (tests, the timeline of a finished job)."""
    ext = check_format(path)
    if ext == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path)
    if ext == ".csv":
        import pyarrow.csv as pcsv

        return pcsv.read_csv(path)
    with open(path) as f:
        return pa.Table.from_pylist([json.loads(line) for line in f if line.strip()])
