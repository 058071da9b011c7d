"""WALAR on translategemma-4b-it (the Gemma 3 text decoder of a multimodal checkpoint)
with the paper's hyperparameters.

Mesh: every device on fsdp. Update step on 8 devices: bench/aot_memory.py (README).
Prompts: the checkpoint's own chat template with WALAR's source/target language codes.
Cebuano is not a target: translategemma's template has no code for it (WALAR's
prompts_dataset.py skips it too)."""

from configs import common


def get_config(arg: str | None = None):
    c = common.paper("google/translategemma-4b-it")
    c.data.template = "walar_gemma"
    c.data.target_langs = tuple(t for t in c.data.target_langs if t != "ceb_Latn")
    return c
