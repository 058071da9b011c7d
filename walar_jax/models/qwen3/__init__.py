"""Qwen3 (dense): GQA, QK-norm, RoPE, SwiGLU. Only what differs from the shared layers."""

from __future__ import annotations

from typing import Any

from walar_jax.models.config import ModelConfig, freeze, thaw
from walar_jax.models.hf_table import Rule, Table

MODEL_TYPE = "qwen3"
ARCHITECTURE = "Qwen3ForCausalLM"

_L = "model.layers.{i}."
HF_TABLE = Table([
    Rule("model.embed_tokens.weight", "embed"),
    Rule(_L + "input_layernorm.weight", "layers.{i}.pre_attn_norm.scale"),
    Rule(_L + "self_attn.q_proj.weight", "layers.{i}.attn.q_proj", "linear", 1),
    Rule(_L + "self_attn.k_proj.weight", "layers.{i}.attn.k_proj", "linear", 1),
    Rule(_L + "self_attn.v_proj.weight", "layers.{i}.attn.v_proj", "linear", 1),
    Rule(_L + "self_attn.o_proj.weight", "layers.{i}.attn.o_proj", "linear", 2),
    Rule(_L + "self_attn.q_norm.weight", "layers.{i}.attn.q_norm.scale"),
    Rule(_L + "self_attn.k_norm.weight", "layers.{i}.attn.k_norm.scale"),
    Rule(_L + "post_attention_layernorm.weight", "layers.{i}.pre_mlp_norm.scale"),
    Rule(_L + "mlp.gate_proj.weight", "layers.{i}.mlp.gate_proj", "linear", 1),
    Rule(_L + "mlp.up_proj.weight", "layers.{i}.mlp.up_proj", "linear", 1),
    Rule(_L + "mlp.down_proj.weight", "layers.{i}.mlp.down_proj", "linear", 1),
    Rule("model.norm.weight", "final_norm.scale"),
    Rule("lm_head.weight", "lm_head"),
])

# config.json keys this module reads; everything else is carried through on export.
_USED = {
    "model_type", "architectures", "vocab_size", "hidden_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size",
    "rope_theta", "rms_norm_eps", "tie_word_embeddings", "max_position_embeddings",
    "torch_dtype", "dtype",
}


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    if hf.get("rope_scaling"):
        raise NotImplementedError(f"Qwen3 rope_scaling {hf['rope_scaling']} is not supported")
    if hf.get("attention_bias"):
        raise NotImplementedError("Qwen3 with attention_bias=true is not supported")
    rope_theta = hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta", 1e6)
    return ModelConfig(
        family=MODEL_TYPE,
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"],
        n_kv_heads=hf.get("num_key_value_heads", hf["num_attention_heads"]),
        head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
        ffn_dim=hf["intermediate_size"],
        rope_theta=float(rope_theta),
        rms_eps=hf.get("rms_norm_eps", 1e-6),
        tie_embeddings=hf.get("tie_word_embeddings", False),
        qk_norm=True,
        max_position_embeddings=hf.get("max_position_embeddings", 40960),
        hf_dtype=hf.get("torch_dtype") or hf.get("dtype") or "bfloat16",
        hf_extra=freeze({k: v for k, v in hf.items() if k not in _USED and k != "rope_parameters"}),
    )


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    out = {
        "architectures": [ARCHITECTURE],
        "model_type": MODEL_TYPE,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "hidden_act": "silu",
        "bos_token_id": None,
        "initializer_range": 0.02,
        "use_cache": True,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": cfg.n_layers,
    }
    out.update(thaw(cfg.hf_extra) or {})
    out.update({
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "intermediate_size": cfg.ffn_dim,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "rms_norm_eps": cfg.rms_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "max_position_embeddings": cfg.max_position_embeddings,
        "torch_dtype": cfg.hf_dtype,
    })
    return out


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
