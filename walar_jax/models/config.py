"""Architecture numbers as frozen dataclasses, read from or written to HF config.json."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One decoder-only transformer; family-specific switches have neutral defaults."""

    family: str
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    rope_theta: float = 10_000.0
    rms_eps: float = 1e-6
    tie_embeddings: bool = False
    qk_norm: bool = False
    max_position_embeddings: int = 40_960
    # Llama 3 frequency scaling: (factor, low_freq_factor, high_freq_factor, original_max_pos).
    rope_scaling: tuple[float, float, float, int] | None = None
    hf_dtype: str = "bfloat16"
    # Fields of config.json that the JAX model does not use but an export must keep.
    hf_extra: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self):
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}"
            )

    @property
    def num_params(self) -> int:
        attn = self.d_model * self.head_dim * (2 * self.n_heads + 2 * self.n_kv_heads)
        norms = 2 * self.d_model + (2 * self.head_dim if self.qk_norm else 0)
        layer = attn + 3 * self.d_model * self.ffn_dim + norms
        embed = self.vocab_size * self.d_model * (1 if self.tie_embeddings else 2)
        return self.n_layers * layer + embed + self.d_model

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)


def freeze(value: Any) -> Any:
    """Makes JSON values hashable so they can live in a frozen dataclass."""
    if isinstance(value, dict):
        return tuple((k, freeze(v)) for k, v in value.items())
    if isinstance(value, list):
        return ("__list__", *(freeze(v) for v in value))
    return value


def thaw(value: Any) -> Any:
    if isinstance(value, tuple) and value and value[0] == "__list__":
        return [thaw(v) for v in value[1:]]
    if isinstance(value, tuple) and all(isinstance(p, tuple) and len(p) == 2 for p in value):
        return {k: thaw(v) for k, v in value}
    return value
