"""Qwen3 (dense): GQA, QK-norm, RoPE, SwiGLU. Only what differs from the shared layers."""

from __future__ import annotations

from typing import Any

from walar_jax.models.config import ModelConfig, decoder_from_hf, decoder_to_hf
from walar_jax.models.hf_table import Rule, Table, llama_norm_rules, projection_rules

MODEL_TYPE = "qwen3"
ARCHITECTURE = "Qwen3ForCausalLM"

HF_TABLE = Table([*projection_rules(), *llama_norm_rules(qk_norm=True),
                  Rule("lm_head.weight", "lm_head")])


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    cfg = decoder_from_hf(hf, MODEL_TYPE, default_theta=1e6, qk_norm=True)
    if cfg.rope_scaling is not None and cfg.rope_scaling[0] != "linear":
        raise NotImplementedError(f"Qwen3 RoPE scaling {cfg.rope_scaling} is not supported")
    return cfg


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    return decoder_to_hf(cfg, {
        "architectures": [ARCHITECTURE], "model_type": MODEL_TYPE, "attention_bias": False,
        "attention_dropout": 0.0, "hidden_act": "silu", "bos_token_id": None,
        "initializer_range": 0.02, "use_cache": True, "use_sliding_window": False,
        "sliding_window": None, "max_window_layers": cfg.n_layers,
    })


def _named(vocab, d, layers, heads, kv, ffn, tie) -> ModelConfig:
    return ModelConfig(
        family=MODEL_TYPE, vocab_size=vocab, d_model=d, n_layers=layers, n_heads=heads,
        n_kv_heads=kv, head_dim=128, ffn_dim=ffn, rope_theta=1_000_000.0, rms_eps=1e-6,
        tie_embeddings=tie, qk_norm=True, max_position_embeddings=40_960,
    )


# Shapes of the published Qwen/Qwen3-* config.json files.
def qwen3_0p6b() -> ModelConfig:
    return _named(151_936, 1024, 28, 16, 8, 3072, True)


def qwen3_1p7b() -> ModelConfig:
    return _named(151_936, 2048, 28, 16, 8, 6144, True)


def qwen3_4b() -> ModelConfig:
    return _named(151_936, 2560, 36, 32, 8, 9728, True)


def qwen3_8b() -> ModelConfig:
    return _named(151_936, 4096, 36, 32, 8, 12_288, False)
