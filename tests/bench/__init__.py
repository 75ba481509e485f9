"""Benchmarks (`make bench`): not part of the test run; each module exposes ``rows()``."""
