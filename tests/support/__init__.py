"""Helpers the tests and the benchmarks (bench/) share; not part of the package, which never imports them.

    server_process  start the CPU server (`python -m nemotron_eval.deploy.server`) as a subprocess, wait until it
                    answers, stop it
    request_mix     the recorded request mix of tests/fixtures/prompts: load it, its trie floor, replay it
    smollm2         the SmolLM2 GGUF file the tests convert

Imported as `support.<module>`: pytest puts tests/ on sys.path (as it does for conftest.py, tests/ being no
package); bench's entry points (bench/run.py, bench/request_mix.py, bench/server_throughput.py) put it there first.
"""
