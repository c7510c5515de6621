"""Serving a checkpoint for the harness: `server` (the project's OpenAI-compatible CPU server; imports torch
lazily), `stub` (a model-free server for tests and dry runs), `types` (the deployment types: how each is planned,
started and found ready), `serve` (the pipeline's serve step), `process` (a server's process group: start, wait
until ready, stop)."""
