# Evaluate LLM checkpoints on standard benchmarks with NeMo Evaluator.
#   snakemake --profile profiles/local                                   # the default model, every task
#   snakemake --profile profiles/local results/smollm2_latest/hellaswag.json
#   snakemake --profile profiles/local build/demo_latest/eval.yaml       # just the compiled config
#   snakemake --profile profiles/local -n                                # what would run, and why
#   snakemake --profile profiles/local results/report.html               # compare the models with results
# Targets are files; {model} is an artifact spec with ':' written '_' (rl_latest is rl:latest).

include: "rules/common.smk"
include: "rules/model.smk"
include: "rules/compile.smk"
include: "rules/data.smk"
include: "rules/images.smk"
include: "rules/evaluate.smk"
include: "rules/export.smk"


rule all:
    input:
        lambda wildcards: smk.or_exit(lambda: PLAN.default_targets),  # evaluated only when `all` is wanted
    default_target: True


# Once the run ended, the process exits at once instead of waiting on the scheduler's last timer (up to 1 s).
onsuccess:
    snakemake_adapter.end_rescheduling()


onerror:
    snakemake_adapter.end_rescheduling()
