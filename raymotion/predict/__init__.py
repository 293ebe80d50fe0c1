"""Answers from a trained run: the served ensemble in this process (Predictor), the photo reading and face
finding it and the HTTP service share, and the ensemble's soft labels that students learn from."""

from raymotion.predict.predictor import Predictor

__all__ = ["Predictor"]
