"""raymotion: train, tune and serve facial-emotion classifiers on Ray.

The package reads as the data flow: data -> models -> train -> tune -> export; serving lives in the
top-level ``serve`` package. No stage imports a later one.
"""

__version__ = "0.1.0"
