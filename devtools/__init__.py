"""Helpers shared by the test suite and the benchmark (``perf/``): not part of any service."""
