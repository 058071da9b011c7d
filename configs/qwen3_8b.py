"""The paper's run on Qwen3-8B (WALAR): see README for the GPUs it expects."""

from configs import common


def get_config(arg: str | None = None):
    c = common.base()
    c.model.path = "Qwen/Qwen3-8B"
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.remat = True
    c.mesh.update(data=1, fsdp=-1, tensor=1)  # all devices on fsdp; 8 x 80 GB fits (bench/)
    return c
