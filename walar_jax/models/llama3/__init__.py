"""Llama 3 (LLaMAX3-8B-Alpaca, Llama-3.2): GQA, RoPE with Llama 3 frequency scaling when
the checkpoint has it, SwiGLU, no QK-norm. Only what differs from the shared layers."""

from __future__ import annotations

from typing import Any

from walar_jax.models.config import ModelConfig, decoder_from_hf, decoder_to_hf
from walar_jax.models.hf_table import Rule, Table, llama_norm_rules, projection_rules

MODEL_TYPE = "llama"
ARCHITECTURE = "LlamaForCausalLM"

HF_TABLE = Table([*projection_rules(), *llama_norm_rules(), Rule("lm_head.weight", "lm_head")])


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    return decoder_from_hf(hf, MODEL_TYPE, rms_eps=hf.get("rms_norm_eps", 1e-5))


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    return decoder_to_hf(cfg, {
        "architectures": [ARCHITECTURE], "model_type": MODEL_TYPE, "attention_bias": False,
        "attention_dropout": 0.0, "hidden_act": "silu", "mlp_bias": False,
        "initializer_range": 0.02, "use_cache": True, "pretraining_tp": 1,
    })


_LLAMA32_SCALING = ("llama3", 32.0, 1.0, 4.0, 8192)


def _named(d, layers, heads, head_dim, ffn, tie, scaling, max_pos) -> ModelConfig:
    return ModelConfig(
        family=MODEL_TYPE, vocab_size=128_256, d_model=d, n_layers=layers, n_heads=heads,
        n_kv_heads=8, head_dim=head_dim, ffn_dim=ffn, rope_theta=500_000.0, rms_eps=1e-5,
        tie_embeddings=tie, rope_scaling=scaling, max_position_embeddings=max_pos,
    )


# Shapes of the published config.json files (LLaMAX3-8B-Alpaca has Llama-3-8B's).
def llama3_8b() -> ModelConfig:
    return _named(4096, 32, 32, 128, 14_336, False, None, 8192)


def llama3p2_1b() -> ModelConfig:
    return _named(2048, 16, 32, 64, 8192, True, _LLAMA32_SCALING, 131_072)


def llama3p2_3b() -> ModelConfig:
    return _named(3072, 28, 24, 128, 8192, True, _LLAMA32_SCALING, 131_072)
