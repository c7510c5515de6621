# Container images squashed with enroot, for Slurm with pyxis/enroot: built once as a cluster job (env.toml
# build_partition/build_time), reused until the image reference changes (the file is named after it);
# --config force_squash=true builds again.


rule squash_image:
    output:
        "build/images/{image}.sqsh",
    params:
        ref=lambda wildcards: SQUASH[wildcards.image],
        force=FORCE_SQUASH,
    log:
        "logs/squash_image/{image}.log",
    resources:
        **SQUASH_RESOURCES,
    shell:
        "{PYTHON} -m nemotron_eval.images squash --image '{params.ref}' --out {output} --log {log}"
