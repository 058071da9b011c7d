"""Model families by name, config.json reading and checkpoint resolution.

Pure Python (no JAX): the rollout and reward environments import it to read a
checkpoint's architecture.
"""

from __future__ import annotations

import json
import os
from types import ModuleType

from walar_jax.models import gemma3, llama3, qwen3
from walar_jax.models.config import ModelConfig

# model_type of config.json (and ModelConfig.family) -> family module
FAMILIES: dict[str, ModuleType] = {
    qwen3.MODEL_TYPE: qwen3, llama3.MODEL_TYPE: llama3,
    **{t: gemma3 for t in (gemma3.MODEL_TYPE, *gemma3.HF_MODEL_TYPES)},
}


def family(cfg_or_type: ModelConfig | str) -> ModuleType:
    """The family module (HF table, config reader, named shapes) of a config or model_type."""
    name = cfg_or_type if isinstance(cfg_or_type, str) else cfg_or_type.family
    if name not in FAMILIES:
        raise ValueError(f"unsupported model_type {name!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[name]


def named_config(name: str) -> ModelConfig:
    """A published shape by its constructor name, e.g. "qwen3_8b" or "translategemma_4b"."""
    for fam in dict.fromkeys(FAMILIES.values()):
        ctor = getattr(fam, name, None)
        if callable(ctor) and not name.startswith("_") and name not in ("config_from_hf",
                                                                          "config_to_hf"):
            return ctor()
    raise ValueError(f"unknown model shape {name!r}")


def resolve_checkpoint(path_or_id: str) -> str:
    """A local directory as is; otherwise a hub id downloaded (weights, config, tokenizer)."""
    if os.path.isdir(path_or_id):
        return path_or_id
    if os.path.exists(path_or_id):
        raise ValueError(f"{path_or_id} is a file; expected an HF checkpoint directory or hub id")
    from huggingface_hub import snapshot_download  # only needed for hub ids

    return snapshot_download(path_or_id, allow_patterns=["*.json", "*.safetensors", "*.jinja",
                                                         "*.model", "*.txt"])


def read_config(directory: str) -> ModelConfig:
    """The ModelConfig of an HF checkpoint directory, from its config.json."""
    with open(os.path.join(directory, "config.json")) as f:
        hf = json.load(f)
    return family(hf.get("model_type", "")).config_from_hf(hf)
