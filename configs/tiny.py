"""The embedded default: a tiny random Qwen3 (byte-level tokenizer) that runs on a laptop."""

from configs import common


def get_config(arg: str | None = None):
    c = common.base()
    c.model.path = "tiny"
    c.model.dtype = "float32"
    c.model.remat = False
    c.model.logprob_chunk = 64
    c.checkpoint_every = 10
    c.total_steps = 20
    return c
