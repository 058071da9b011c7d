"""WALAR on Qwen3-8B with the paper's hyperparameters (configs/common.py:paper).

Mesh: every device on fsdp. Update step on 8 devices: bench/aot_memory.py (README)."""

from configs import common


def get_config(arg: str | None = None):
    c = common.paper("Qwen/Qwen3-8B")
    c.data.template = "walar_qwen"  # WALAR's: text + "Translate from X to Y:", thinking off
    return c
