# One deployment per checkpoint per run: serve_model is a service in the same group as the model's
# evaluate_task jobs; all of them run together and talk to the same server, which Snakemake stops when the
# last task is done.


rule serve_model:
    # eval.yaml is read by path, not declared: the group starts only once its task jobs' inputs (eval.yaml
    # among them) are built, and a rewrite that changes no task's settings must not restart evaluations.
    input:
        images=[image.target for image in PLAN.images.values()],
        model=embedded_receipt,
    output:
        service(layout.ENDPOINT),
    log:
        layout.SERVE_LOG,
    params:
        eval=layout.EVAL,  # a string param: Snakemake fills in the wildcards
    group:
        "evaluate"
    threads: 1
    resources:
        **PLAN.deploy_resources,
    # no conda/container: steps run in the project's environment (see rules/common.smk)
    shell:
        # exec: Snakemake stops a service by signalling its shell; the deployment step must get that signal
        "exec nemotron-step serve --model {wildcards.model:q} --eval {params.eval:q} --endpoint-file {output:q} "
        "--log {log:q}"


rule task_fingerprint:
    # What one task's scores depend on, rewritten only when that changes (its param): evaluate_task reruns
    # through this file. Not through eval.yaml, an ancient() input once a result exists, because Snakemake skips
    # a job's own param check when the job behind an ancient input reruns (recompiling for an export setting).
    output:
        layout.TASK_FINGERPRINT,
    params:
        fingerprint=lambda wildcards: smk.or_exit(PLAN.evaluation, wildcards.model, wildcards.task)["fingerprint"],
    log:
        "logs/task_fingerprint/{model}/{task}.log",
    localrule: True
    run:
        wf.write_task_fingerprint(model_plan(wildcards), wildcards.task, output[0], log[0])


rule evaluate_task:
    input:
        unpack(evaluation_inputs),
        unpack(staged_data),
        task=layout.TASK_FINGERPRINT,
    output:
        result=layout.RESULT,
        per_item=layout.ITEMS,
    params:
        # the deployment's endpoint when it is an input (only while the evaluation is due: evaluation_inputs in
        # rules/common.smk), else "-" and the step stops at once; derived from input: no rerun trigger
        endpoint=lambda wildcards, input: input.get("endpoint", "-"),
        deployment_log=layout.SERVE_LOG,  # string params: Snakemake fills in the wildcards
        data=layout.STAGED,
    log:
        layout.TASK_LOG,
    group:
        "evaluate"
    threads: 1
    # no conda/container: steps run in the project's environment (see rules/common.smk)
    shell:
        "nemotron-step evaluate --task {wildcards.task} --eval {input.eval:q} --job {input.job:q} "
        "--endpoint {params.endpoint:q} --deployment-log {params.deployment_log:q} --data {params.data:q} "
        "--out {output.result:q} --items {output.per_item:q} --log {log:q}"


rule summarize_model:
    input:
        lambda wildcards: expand("results/{model}/{task}.json", model=wildcards.model, task=PLAN.task_names),
    output:
        json="results/{model}/summary.json",
        md="results/{model}/summary.md",
    params:
        tasks=lambda wildcards: PLAN.task_names,  # its inputs (rerun-triggers has no `input`)
    log:
        "logs/summarize_model/{model}.log",
    localrule: True
    run:
        wf.summarize(list(input), output.json, output.md, log[0])


rule compare_models:
    # results/report.html: the models of --config compare (default: every model with results), baseline first.
    input:
        lambda wildcards: smk.or_exit(PLAN.report_inputs),
    output:
        json="results/report.json",
        csv="results/report.csv",
        html=report("results/report.html", caption="../report/comparison.rst", category="Comparison"),
    params:
        models=lambda wildcards: smk.or_exit(PLAN.compare_models),
        tasks=lambda wildcards: PLAN.task_names,
    log:
        "logs/compare_models/report.log",
    localrule: True
    run:
        wf.compare(list(input), output.html, log[0])


rule training_curve:
    # results/curve/{artifact}.html: every version of artifact {artifact} with results of the tasks, in order
    # (step or registration time); `nemotron watch {artifact}` rebuilds it after each version. It reads the
    # results there are and evaluates nothing (a curve over dozens of versions must not re-evaluate them after a
    # config change): the files are a param (path: sha256), not inputs, so a new or changed result rebuilds it.
    output:
        json="results/curve/{artifact}.json",
        csv="results/curve/{artifact}.csv",
        html="results/curve/{artifact}.html",
    wildcard_constraints:
        artifact=r"[^/]+",
    params:
        results=lambda wildcards: smk.or_exit(wf.curve_inputs, PLAN, wildcards.artifact),
    log:
        "logs/training_curve/{artifact}.log",
    localrule: True
    run:
        wf.training_curve(PLAN, wildcards.artifact, output.html, log[0])
