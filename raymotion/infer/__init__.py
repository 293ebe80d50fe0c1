"""Offline inference at scale on Ray Data: image files, folders, Parquet tables of image bytes and videos
in; one row per face (box, label, the ensemble's and each member's probabilities) out, as Parquet, CSV
or JSONL; for videos, track ids, a per-second emotion timeline per tracked face and its PNG.

    python -m raymotion.infer runs/<run> photos/ table.parquet clip.mp4 --out faces.parquet [--crops]

The flow, one module a step: inputs (what to read, as units) -> detect (Ray tasks: decode, find and cut
faces) -> classify (an actor pool of raymotion.Predictor) -> table (the rows and their writers) ->
tracks and timeline (videos). job composes them; the model, the faces and the decoding are
raymotion.predict's, the same code the HTTP service runs.
"""

from raymotion.infer.job import InferConfig, InferResult, run_inference

__all__ = ["InferConfig", "InferResult", "run_inference"]
