"""Evaluate LLM checkpoints on standard benchmarks with NeMo Evaluator, as a Snakemake pipeline."""

__version__ = "0.1.0"
