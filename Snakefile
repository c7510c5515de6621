# Evaluate LLM checkpoints on standard benchmarks with NeMo Evaluator.
#   snakemake --profile profiles/local build/smollm2_latest/eval.yaml      # compile one model's config
#   snakemake --profile profiles/local -n                                   # what would run, and why
# Targets are files; {model} is an artifact spec with ':' written '_' (rl_latest is rl:latest).

include: "rules/common.smk"
include: "rules/compile.smk"


rule all:
    input:
        f"build/{DEFAULT_MODEL}/eval.yaml",
    default_target: True
