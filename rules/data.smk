# Benchmark data staged on the submit host (compute nodes never reach the network): from the local mirror
# of the original releases (data.mirror, default $NEMOTRON_DATA_MIRROR) or the Hugging Face hub. The mirror's
# files are the inputs: a changed file restages; unsetting the mirror keeps what was staged. What staging reads
# (the task's list of mirror files, each file's identity) is a param: a changed list restages too, although
# Snakemake's rerun triggers leave out `input` (see pipeline/smk.py).


rule stage_dataset:
    input:
        lambda wildcards: PLAN.mirror_files(wildcards.task),
    output:
        directory("data/{task}"),
    params:
        # decided before Snakemake removes the old folder (and with it the manifest naming its mirror)
        mirror=lambda wildcards: str(PLAN.mirror_for(wildcards.task) or ""),
        reads=lambda wildcards: smk.staging_reads(PLAN, wildcards.task),
    log:
        "logs/stage_dataset/{task}.log",
    localrule: True
    run:
        wf.stage(wildcards.task, params.mirror, output[0], log[0])
