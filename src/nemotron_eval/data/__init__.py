"""Benchmark data: readers for the original releases (`readers`) and staging for the harness (`stage`)."""
