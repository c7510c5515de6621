"""Serving a checkpoint for the harness: `server` (an OpenAI-compatible CPU server, imports torch lazily) and
`ready` (start it as a subprocess, wait for its endpoint)."""
