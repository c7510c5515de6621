"""Exporting results to tracking services: `wandb` (results/{model}/wandb.json is its receipt)."""
