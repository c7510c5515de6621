from nemotron_eval import workflow as wf


rule compose_config:
    input:
        compose_inputs,
    output:
        "build/{model}/merged.yaml",
    params:
        request=compose_params,
    log:
        "logs/compose_config/{model}.log",
    localrule: True
    run:
        with wf.logged(log[0]):
            wf.compose_config(REQUEST, Path(output[0]))


rule resolve_artifacts:
    input:
        resolve_inputs,
    output:
        "build/{model}/resolved.yaml",
    params:
        artifact=resolve_params,
    log:
        "logs/resolve_artifacts/{model}.log",
    localrule: True
    run:
        with wf.logged(log[0]):
            wf.resolve_config(Path(input[0]), wildcards.model, params.artifact, Path(output[0]))


rule compile_eval:
    input:
        "build/{model}/resolved.yaml",
    output:
        job="build/{model}/job.yaml",
        eval="build/{model}/eval.yaml",
    log:
        "logs/compile_eval/{model}.log",
    localrule: True
    run:
        with wf.logged(log[0]):
            wf.compile_config(Path(input[0]), Path(output.job), Path(output.eval))
