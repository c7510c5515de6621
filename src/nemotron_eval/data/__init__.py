"""Benchmark data: readers for the original releases and staging for the harness."""

from nemotron_eval.data.stage import read_manifest, resolve_mirror, stage_dataset

__all__ = ["read_manifest", "resolve_mirror", "stage_dataset"]
