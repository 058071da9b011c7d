"""Defaults shared by every run config; each config file overrides a few fields."""

import ml_collections

from walar_jax.sharding import DEFAULT_RULES


def base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    # Policy: an HF directory or hub id; "tiny" builds the embedded tiny Qwen3 on first use.
    c.model = ml_collections.ConfigDict(dict(
        path="tiny", dtype="bfloat16", param_dtype="float32", remat=True, logprob_chunk=256,
    ))
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    c.sharding_rules = [[k, v] for k, v in DEFAULT_RULES]
    c.distributed = ml_collections.ConfigDict(dict(
        initialize=False, coordinator_address="", num_processes=0, process_id=-1,
    ))
    c.total_steps = 0          # 0: one epoch over the prompts
    c.checkpoint_every = 50
    c.keep_checkpoints = 3
    c.export_every = 0         # 0: export to HF only at the end
    c.log_every = 1
    return c
