"""WALAR on translategemma-4b-it (the Gemma 3 text decoder of a multimodal checkpoint)
with the paper's hyperparameters.

Mesh: every device on fsdp. Update step on 8 devices: bench/aot_memory.py (README).
Prompts: the checkpoint's own chat template with source/target language codes."""

from configs import common


def get_config(arg: str | None = None):
    c = common.paper("google/translategemma-4b-it")
    c.data.template = "translategemma"
    return c
