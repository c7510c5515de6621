# Results leave through the exporters (nemotron_eval.exporters: wandb, mlflow, local), one receipt per model and
# destination; `execution.auto_export.destinations` names the ones a run builds (Plan.targets). Credentials are
# read from the environment by name (WANDB_API_KEY or a `wandb login`, MLFLOW_TRACKING_TOKEN, ...); no value ever
# appears in params, shell or files.
from nemotron_eval import exporters


rule export_model:
    input:
        results=lambda wildcards: expand("results/{model}/{task}.json", model=wildcards.model, task=PLAN.task_names),
        summary="results/{model}/summary.json",
        config="build/{model}/eval.yaml",
    output:
        "results/{model}/{dest}.json",
    wildcard_constraints:
        dest="|".join(exporters.names()),
    params:
        tasks=lambda wildcards: PLAN.task_names,  # its inputs (rerun-triggers has no `input`)
    log:
        "logs/export_model/{model}/{dest}.log",
    localrule: True
    # no conda/container: steps run in the project's environment (see rules/common.smk)
    shell:
        "nemotron-step export --dest {wildcards.dest} {input.results:q} --config {input.config:q} "
        "--summary {input.summary:q} --out {output:q} --log {log:q}"
