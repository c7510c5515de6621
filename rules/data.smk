# Benchmark data staged on the submit host (compute nodes never reach the network): from the local mirror
# of the original releases (data.mirror, default $NEMOTRON_DATA_MIRROR) or the Hugging Face hub. The mirror's
# files are the inputs: a changed file restages; unsetting the mirror keeps what was staged.


rule stage_dataset:
    input:
        mirror_inputs,
    output:
        directory("data/{task}"),
    params:
        mirror=task_mirror,
    log:
        "logs/stage_dataset/{task}.log",
    localrule: True
    shell:
        "{PYTHON} -m nemotron_eval.steps stage --task {wildcards.task} --out {output} "
        "--mirror '{params.mirror}' --log {log}"
