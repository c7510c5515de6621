# One deployment per checkpoint per run: serve_model is a service in the same group as the model's
# evaluate_task jobs; all of them run together and talk to the same server, which Snakemake stops when the
# last task is done.


rule serve_model:
    # eval.yaml is read by path, not declared: the group starts only once its task jobs' inputs (eval.yaml
    # among them) are built, and a rewrite that changes no task's settings must not restart evaluations.
    input:
        images=[f"build/images/{name}.sqsh" for name in SQUASH],
    output:
        service("run/{model}/endpoint.json"),
    log:
        "logs/serve_model/{model}.log",
    group:
        "evaluate"
    threads: 1
    resources:
        **DEPLOY_RESOURCES,
    shell:
        # exec: Snakemake stops a service by signalling its shell; the deployment must get that signal
        "exec {PYTHON} -m nemotron_eval.deploy.serve --eval build/{wildcards.model}/eval.yaml --model {wildcards.model} "
        "--endpoint-file {output} --log {log}"


rule evaluate_task:
    input:
        unpack(compiled_config),
        data=task_data,
        endpoint="run/{model}/endpoint.json",
        registration=ancient(embedded_registration),
    output:
        "results/{model}/{task}.json",
    params:
        task_config=task_config,
    log:
        "logs/evaluate_task/{model}/{task}.log",
    group:
        "evaluate"
    threads: 1
    shell:
        "{PYTHON} -m nemotron_eval.steps evaluate --task {wildcards.task} --eval {input.eval} --job {input.job} "
        "--data {input.data} --endpoint {input.endpoint} --deployment-log logs/serve_model/{wildcards.model}.log "
        "--out {output} --log {log}"


rule summarize_model:
    input:
        lambda wildcards: expand("results/{model}/{task}.json", model=wildcards.model, task=TASKS),
    output:
        json="results/{model}/summary.json",
        md="results/{model}/summary.md",
    log:
        "logs/summarize_model/{model}.log",
    localrule: True
    run:
        with wf.logged(log[0]):
            wf.summarize(list(input), Path(output.json), Path(output.md))
