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
    # RoPE scaling of the (global) layers: ("llama3", factor, low_freq_factor,
    # high_freq_factor, original_max_pos) or ("linear", factor); None for plain RoPE.
    rope_scaling: tuple | None = None
    # Sliding-window layers (Gemma 3): their indices, window, and RoPE base.
    sliding_layers: tuple[int, ...] = ()
    sliding_window: int | None = None
    rope_local_theta: float | None = None
    query_pre_attn_scalar: float | None = None  # attention scale = this ** -0.5 (else head_dim)
    norm_offset: float = 0.0     # Gemma: weights stored as (scale - 1)
    post_norms: bool = False     # Gemma: norms after attention and MLP too
    embed_scale: bool = False    # Gemma: embeddings times sqrt(d_model)
    activation: str = "silu"     # or "gelu_tanh"
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
        norms = (4 if self.post_norms else 2) * self.d_model + (2 * self.head_dim if self.qk_norm else 0)
        layer = attn + 3 * self.d_model * self.ffn_dim + norms
        embed = self.vocab_size * self.d_model * (1 if self.tie_embeddings else 2)
        return self.n_layers * layer + embed + self.d_model

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)


def rope_from_hf(hf: dict[str, Any], default_theta: float = 10_000.0):
    """(global theta, global scaling, local theta) from either config.json style:
    transformers 4 (`rope_theta`, `rope_scaling`, `rope_local_base_freq`) or 5
    (`rope_parameters`, possibly one entry per attention type)."""
    params = hf.get("rope_parameters")
    if params:
        full = params.get("full_attention", params)
        local = params.get("sliding_attention", {})
        return (float(full.get("rope_theta", default_theta)), rope_scaling_from_hf(full),
                float(local["rope_theta"]) if local else None)
    local = hf.get("rope_local_base_freq")
    return (float(hf.get("rope_theta") or default_theta), rope_scaling_from_hf(hf.get("rope_scaling")),
            float(local) if local else None)


def rope_scaling_from_hf(d: dict | None) -> tuple | None:
    kind = (d or {}).get("rope_type") or (d or {}).get("type") or "default"
    if kind == "default":
        return None
    if kind == "llama3":
        return ("llama3", float(d["factor"]), float(d["low_freq_factor"]),
                float(d["high_freq_factor"]), int(d["original_max_position_embeddings"]))
    if kind == "linear":
        return ("linear", float(d["factor"]))
    raise NotImplementedError(f"RoPE scaling {d} is not supported (default, linear, llama3)")


def rope_scaling_to_hf(scaling: tuple | None) -> dict | None:
    if scaling is None:
        return None
    if scaling[0] == "llama3":
        _, f, lo, hi, orig = scaling
        return {"rope_type": "llama3", "factor": f, "low_freq_factor": lo, "high_freq_factor": hi,
                "original_max_position_embeddings": orig}
    return {"rope_type": "linear", "factor": scaling[1]}


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


# config.json keys the generic reader consumes; the rest is carried through on export.
HF_USED = {
    "model_type", "architectures", "vocab_size", "hidden_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size",
    "rope_theta", "rms_norm_eps", "tie_word_embeddings", "max_position_embeddings",
    "torch_dtype", "dtype", "rope_scaling", "rope_parameters", "rope_local_base_freq",
}


def decoder_from_hf(hf: dict[str, Any], family: str, *, default_theta: float = 10_000.0,
                    used: set[str] = frozenset(), **fields) -> ModelConfig:
    """The fields every decoder's config.json shares, plus family-specific `fields`."""
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise NotImplementedError(f"{family} with attention/MLP biases is not supported")
    theta, scaling, local = rope_from_hf(hf, default_theta)
    base = dict(
        family=family, vocab_size=hf["vocab_size"], d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"], n_heads=hf["num_attention_heads"],
        n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
        ffn_dim=hf["intermediate_size"], rope_theta=theta, rope_scaling=scaling,
        rope_local_theta=local, rms_eps=hf.get("rms_norm_eps", 1e-6),
        tie_embeddings=hf.get("tie_word_embeddings", False),
        max_position_embeddings=hf.get("max_position_embeddings", 8192),
        hf_dtype=hf.get("torch_dtype") or hf.get("dtype") or "bfloat16",
        hf_extra=freeze({k: v for k, v in hf.items() if k not in HF_USED | set(used)}),
    )
    return ModelConfig(**{**base, **fields})


def decoder_to_hf(cfg: ModelConfig, defaults: dict[str, Any]) -> dict[str, Any]:
    """config.json for `cfg`: family `defaults`, then the carried-through keys, then the
    architecture numbers (old-style rope keys, which transformers 4 and 5 both read)."""
    out = dict(defaults)
    out.update(thaw(cfg.hf_extra) or {})
    out.update({
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
        "intermediate_size": cfg.ffn_dim, "rope_theta": cfg.rope_theta,
        "rope_scaling": rope_scaling_to_hf(cfg.rope_scaling), "rms_norm_eps": cfg.rms_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "max_position_embeddings": cfg.max_position_embeddings, "torch_dtype": cfg.hf_dtype,
    })
    return out
