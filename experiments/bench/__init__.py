"""Benchmarks (timings are reported, never asserted)."""
