"""WALAR on LLaMAX3-8B-Alpaca (a Llama 3 8B) with the paper's hyperparameters.

Mesh: every device on fsdp. Update step on 8 devices: bench/aot_memory.py (README).
Prompts: LLaMAX's Alpaca instruction format."""

from configs import common


def get_config(arg: str | None = None):
    c = common.paper("LLaMAX/LLaMAX3-8B-Alpaca")
    c.data.template = "alpaca"
    return c
