"""Serving stage: the Ray Serve ensemble application (``serve.app``)."""
