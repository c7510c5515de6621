"""The evaluation room: one task run through NeMo Evaluator's harness (in-process install, no container), and
what is read back from it.

- `framework`: what the installed NeMo Evaluator and lm-eval define (a task's default `config.params`, lm-eval's
  task folder and YAMLs, the lm-eval task a NeMo Evaluator task runs).
- `task_yamls`: wrapper task YAMLs that point lm-eval's own task files at the staged data.
- `overrides`: the harness's settings for one task (`HarnessRun`: env vars, `config.params` overrides) and
  `deep_merge`.
- `harness`: `run_harness`, the harness as a child process (its log, timeout, abort; hub reachability).
- `context`: the model's context length and the check that no prompt was truncated.
- `output`: the scores from the harness's results (`parse_harness_output`).
- `items`: per-item records of a run, for paired comparisons (`nemotron_eval.report`).
"""
