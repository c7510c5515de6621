# Results leave through W&B: one run per model with every task's metrics, the results as an artifact linked to
# the model artifact. Offline (wandb sync later) when there are no credentials. Credentials are read from the
# environment by name (WANDB_API_KEY or a `wandb login`); no value ever appears in params, shell or files.


rule export_wandb:
    input:
        results=lambda wildcards: expand("results/{model}/{task}.json", model=wildcards.model, task=TASKS),
        summary="results/{model}/summary.json",
        config="build/{model}/eval.yaml",
    output:
        "results/{model}/wandb.json",
    log:
        "logs/export_wandb/{model}.log",
    localrule: True
    shell:
        "{PYTHON} -m nemotron_eval.export.wandb {input.results} --config {input.config} "
        "--summary {input.summary} --out {output} > {log} 2>&1"
