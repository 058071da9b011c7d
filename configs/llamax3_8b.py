"""WALAR on LLaMAX3-8B-Alpaca (a Llama 3 8B) with the paper's hyperparameters.

Mesh: every device on fsdp. Update step on 8 devices: bench/aot_memory.py (README).
Prompts: WALAR's, LLaMAX's Alpaca instruction format with WALAR's language names."""

from configs import common


def get_config(arg: str | None = None):
    c = common.paper("LLaMAX/LLaMAX3-8B-Alpaca")
    c.data.template = "walar_llamax"
    # BOS as LLaMAX's tokenizer adds it (transformers, vLLM). WALAR's OpenRLHF encodes
    # prompts with add_special_tokens=False, so its rollouts had none: bos="never".
    c.data.bos = "auto"
    return c
