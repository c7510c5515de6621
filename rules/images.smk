# Container images squashed with enroot, for Slurm with pyxis/enroot: built once as a cluster job (env.toml
# build_partition/build_time), reused until the image reference changes (the file is named after it);
# --config force_squash=true builds again. eval.yaml names the .sqsh by its absolute path.


rule squash_image:
    output:
        "build/images/{image}.sqsh",
    params:
        reference=lambda wildcards: PLAN.images[wildcards.image].reference,
        force=PLAN.force_squash_stamp,
    log:
        "logs/squash_image/{image}.log",
    resources:
        **PLAN.squash_resources,
    run:
        wf.squash(params.reference, output[0], log[0])
