# Container images squashed with enroot, for Slurm with pyxis/enroot: built once as a cluster job (env.toml
# build_partition/build_time), reused until the image reference changes (the file is named after it);
# --config force_squash=true builds again. eval.yaml names the .sqsh by its absolute path.


rule image_reference:
    # What the squash job imports, as a file: the job reads it (no value on its command line).
    output:
        "build/images/{image}.json",
    params:
        reference=lambda wildcards: PLAN.images[wildcards.image].reference,
    log:
        "logs/image_reference/{image}.log",
    localrule: True
    run:
        wf.write_image_reference(params.reference, output[0], log[0])


rule squash_image:
    input:
        "build/images/{image}.json",
    output:
        "build/images/{image}.sqsh",
    params:
        force=PLAN.force_squash_stamp,
    log:
        "logs/squash_image/{image}.log",
    resources:
        **PLAN.squash_resources,
    # no conda/container: steps run in the project's environment (see rules/common.smk)
    shell:
        "nemotron-step squash --reference {input:q} --out {output:q} --log {log:q}"
