"""Benchmarks: side-by-side timings against peer libraries (not part of the test suite)."""
