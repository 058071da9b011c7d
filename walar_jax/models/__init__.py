"""The policy models: a registry of families, the NNX decoder, and the Hugging Face
round trip. This package only re-exports, lazily: importing it (or the pure-Python
`config`, `hf_table`, `registry` and family modules) does not import JAX, so the rollout
and reward environments can read configs and tables.

- registry.py: families, config.json reading, checkpoint resolution (no JAX)
- shardings.py: abstract models, parameter shardings, random init into shards
- hf_io.py: from_pretrained / save_pretrained / hf_tensors (streaming, sharded)
- transformer.py, layers.py, attention.py: the model itself
"""

from __future__ import annotations

import importlib

from walar_jax.models.config import ModelConfig
from walar_jax.models.registry import FAMILIES, family, named_config, read_config, resolve_checkpoint

_LAZY = {
    "Transformer": "transformer", "options_from_config": "transformer",
    "REMAT_POLICIES": "transformer",
    "flat_params": "shardings", "abstract_model": "shardings", "shardings_for": "shardings",
    "sharding_tree": "shardings", "log_model": "shardings", "init_random": "shardings",
    "from_pretrained": "hf_io", "save_pretrained": "hf_io", "hf_tensors": "hf_io",
    "hf_specs": "hf_io", "export_plan": "hf_io", "gather": "hf_io",
    "TOKENIZER_FILES": "hf_io", "SHARD_BYTES": "hf_io",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"walar_jax.models.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'walar_jax.models' has no attribute {name!r}")


__all__ = ["ModelConfig", "FAMILIES", "family", "named_config", "read_config",
           "resolve_checkpoint", *_LAZY]
