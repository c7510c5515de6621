# Benchmark data staged on the submit host (compute nodes never reach the network): from the local mirror
# of the original releases (data.mirror, default $NEMOTRON_DATA_MIRROR) or the Hugging Face hub.


rule stage_dataset:
    input:
        mirror_inputs,
    output:
        directory("data/{task}"),
    params:
        mirror=DATA_MIRROR,
    log:
        "logs/stage_dataset/{task}.log",
    localrule: True
    shell:
        "{PYTHON} -m nemotron_eval.steps stage --task {wildcards.task} --out {output} "
        "--mirror '{params.mirror}' --log {log}"
