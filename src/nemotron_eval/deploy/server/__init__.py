"""An OpenAI-compatible completions server for a Hugging Face causal LM on CPU.

    python -m nemotron_eval.deploy.server --checkpoint DIR [--port 0] [--dtype float32|bfloat16] [--endpoint-file F]
        [--listening-file F] [--prefix-cache-mb 4096] [--stats-file F] [--max-batch-size 8]
        [--max-batch-tokens 2048] [--max-request-mb 8]

Endpoints: `POST /v1/completions`, and `POST /c/<client>/v1/completions` for a client (e.g. a task) that wants its
own share of the model (`<client>`: 1-64 of A-Z a-z 0-9 . _ -); `GET /v1/models`, `/health`, `/stats`.

One worker thread owns the model; requests are read (at most --max-request-mb), tokenized and answered on other
threads, so that /health and every client are answered while a big request is parsed. Prompts wait in per-client
queues; each forward pass takes one client's prompt in turn and fills up with prompts of similar length
(deploy/scheduler.py), so one task's long prompts do not hold up another task's short ones. A prompt's longest
prefix already computed comes from the exact prefix cache (deploy/prefix_cache.py: KV states and prompt log-probs,
LRU-bounded by --prefix-cache-mb); only the rest runs through the model. Rows attend to exactly their own tokens
(deploy/row_attention.py), so a log-prob does not depend on the batch or the cache. The prompt's log-probs and the
first new token come from the same pass, so `echo` + `max_tokens=1` (what lm-eval sends for log-likelihoods) costs
one pass; further tokens are decoded with the KV cache, one step for every generating prompt between batches
(deploy/server/decoding.py), so that a long generation holds up nobody else's request. A client that goes away
has its prompts dropped; a prompt that fails fails its own request only. What the server did, per client, is at
/stats and in --stats-file (deploy/stats.py).

The checks a user can get wrong (checkpoint folder, port, stats file) run before torch is imported, so they fail in
well under a second; heavy imports happen inside `Engine` and `build_app`.

Modules: `jobs` (a prompt's work and its result, as the worker sees them), `engine` (the model, batching, the
forward passes), `decoding` (the generating rows, stepped together; picking tokens), `checks` (what the engine
checks about a model at load), `packed` (the linear layers on oneDNN-packed weights), `protocol` (OpenAI's completion request and response: parsing, tokenizing, answer choices), `app`
(the HTTP routes), `main` (arguments, the socket, the endpoint file, start-up and shutdown; `__main__` runs it).
Importing any of them does not import torch.
"""
