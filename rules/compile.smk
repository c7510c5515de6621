# The compile chain: each rule writes one field of the model's plan; its param is the digest of what it writes,
# so a file is rewritten exactly when its content would change.


rule compose_config:
    output:
        "build/{model}/merged.yaml",
    params:
        sha256=lambda wildcards: model_plan(wildcards).digest("merged"),
    log:
        "logs/compose_config/{model}.log",
    localrule: True
    run:
        wf.write_config(model_plan(wildcards), "merged", output[0], log[0])


rule resolve_artifacts:
    input:
        "build/{model}/merged.yaml",
    output:
        "build/{model}/resolved.yaml",
    params:
        artifact=lambda wildcards: model_plan(wildcards).artifact.as_dict(),
        sha256=lambda wildcards: model_plan(wildcards).digest("resolved"),
    log:
        "logs/resolve_artifacts/{model}.log",
    localrule: True
    run:
        wf.resolve(model_plan(wildcards), output[0], log[0])


rule compile_eval:
    input:
        "build/{model}/resolved.yaml",
    output:
        job="build/{model}/job.yaml",
        eval="build/{model}/eval.yaml",
    params:
        sha256=lambda wildcards: [model_plan(wildcards).digest("job"), model_plan(wildcards).digest("eval")],
    log:
        "logs/compile_eval/{model}.log",
    localrule: True
    run:
        wf.compile_configs(model_plan(wildcards), output.job, output.eval, log[0])


rule submit_launcher:
    # run.engine: launcher hands eval.yaml to NeMo Evaluator Launcher's run_eval() (its own executors) and
    # records its invocation id beside job.yaml; run.launcher.dry_run prepares its scripts and submits nothing
    # (a param: a dry run followed by a real one submits). The images eval.yaml names are squashed before a
    # submission (a dry run only prepares scripts).
    input:
        eval="build/{model}/eval.yaml",
        images=[] if PLAN.launcher_dry_run else [image.target for image in PLAN.images.values()],
    output:
        "build/{model}/launcher.json",
    params:
        dry_run=PLAN.launcher_dry_run,
    log:
        "logs/submit_launcher/{model}.log",
    localrule: True
    run:
        wf.submit_to_launcher(input.eval, output[0], log[0], dry_run=params.dry_run)
