"""Benchmarks: speed and accuracy figures come from here (tables + JSON), never from tests."""
