"""A tiny Llama with random weights and the stub's byte tokenizer: the real server and engine on a model that loads
in a second and decodes a token in milliseconds, for tests whose point is the server (scheduling, bounds, errors,
dropping work), not the model's numbers."""

from __future__ import annotations

from pathlib import Path

from nemotron_eval.deploy.stub import EOS_ID, write_checkpoint

CONTEXT = 1 << 17  # room for generations of many thousands of tokens


def write_tiny_checkpoint(folder: Path) -> Path:
    """The checkpoint in `folder`: 2 layers of width 64, seeded weights. Its end-of-text token's output row is zero,
    so greedy decoding never stops early (some other logit of 256 random ones is positive)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    write_checkpoint(folder)  # the byte tokenizer (config.json is replaced below)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=EOS_ID + 1, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CONTEXT,
                         eos_token_id=EOS_ID, bos_token_id=EOS_ID, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight[EOS_ID] = 0
    model.save_pretrained(folder)
    return folder
