"""raymotion: train, tune and serve facial-emotion classifiers on Ray.

The package reads as the data flow: data -> models -> train -> tune -> export -> predict; serving lives in
the top-level ``serve`` package. No stage imports a later one.

    from raymotion import Predictor     # a run's served ensemble in this process (raymotion.predict)
"""

__version__ = "0.1.0"
__all__ = ["Predictor"]


def __getattr__(name: str):
    # Imported on first use: `import raymotion` (every stage does) must not load onnxruntime and yuface.
    if name == "Predictor":
        from raymotion.predict import Predictor
        return Predictor
    raise AttributeError(f"module 'raymotion' has no attribute {name!r}")
