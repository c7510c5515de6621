# Results leave through W&B: one run per model with every task's metrics, the results as an artifact linked to
# the model artifact. Offline (wandb sync later) when there are no credentials. Credentials are read from the
# environment by name (WANDB_API_KEY or a `wandb login`); no value ever appears in params, shell or files.


rule export_wandb:
    input:
        results=lambda wildcards: expand("results/{model}/{task}.json", model=wildcards.model, task=PLAN.task_names),
        summary="results/{model}/summary.json",
        config="build/{model}/eval.yaml",
    output:
        "results/{model}/wandb.json",
    params:
        tasks=lambda wildcards: PLAN.task_names,  # its inputs (rerun-triggers has no `input`)
    log:
        "logs/export_wandb/{model}.log",
    localrule: True
    # no conda/container: steps run in the project's environment (see rules/common.smk)
    shell:
        "nemotron-step export {input.results:q} --config {input.config:q} --summary {input.summary:q} "
        "--out {output:q} --log {log:q}"
