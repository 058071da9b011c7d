"""Gemma 3 text decoder (translategemma-4b-it): sliding-window and global layers with
their own RoPE bases, QK-norm, four norms per block stored as (scale - 1), embeddings
times sqrt(d_model), GeGLU, tied embeddings. Loads text-only checkpoints and the text
decoder of multimodal `Gemma3ForConditionalGeneration` ones, tied or untied; exports
text-only."""

from __future__ import annotations

import re
from typing import Any

from walar_jax.models.config import ModelConfig, decoder_from_hf, decoder_to_hf
from walar_jax.models.hf_table import Rule, Table, projection_rules

MODEL_TYPE = "gemma3"
HF_MODEL_TYPES = ("gemma3_text", "gemma3")
ARCHITECTURE = "Gemma3ForCausalLM"
# Where the text decoder lives: text-only first (the export layout), then the
# multimodal layouts of transformers >= 4.52 and older.
PREFIXES = ("model.", "model.language_model.", "language_model.model.")
# Multimodal parts the policy does not use.
IGNORE = re.compile(r"^(model\.)?(vision_tower|multi_modal_projector)\.")


def _norm_rules(prefix: str) -> list[Rule]:
    L = prefix + "layers.{i}."
    return [
        Rule(L + "input_layernorm.weight", "layers.{i}.pre_attn_norm.scale"),
        Rule(L + "post_attention_layernorm.weight", "layers.{i}.post_attn_norm.scale"),
        Rule(L + "pre_feedforward_layernorm.weight", "layers.{i}.pre_mlp_norm.scale"),
        Rule(L + "post_feedforward_layernorm.weight", "layers.{i}.post_mlp_norm.scale"),
        Rule(L + "self_attn.q_norm.weight", "layers.{i}.attn.q_norm.scale"),
        Rule(L + "self_attn.k_norm.weight", "layers.{i}.attn.k_norm.scale"),
    ]


# The head of an untied checkpoint (tied ones may store a copy, which loading skips):
# text-only and transformers >= 4.52 multimodal name it lm_head.weight, older multimodal
# checkpoints language_model.lm_head.weight.
HF_TABLE = Table([*(r for p in PREFIXES for r in (*projection_rules(p), *_norm_rules(p))),
                  Rule("lm_head.weight", "lm_head"),
                  Rule("language_model.lm_head.weight", "lm_head")])

_GEMMA_KEYS = {"layer_types", "sliding_window", "sliding_window_pattern", "query_pre_attn_scalar",
               "final_logit_softcapping", "attn_logit_softcapping", "hidden_activation",
               "_sliding_window_pattern"}


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    if hf.get("model_type") == "gemma3":  # multimodal: the decoder's numbers are nested
        hf = {"model_type": "gemma3_text", **hf["text_config"]}
    for cap in ("final_logit_softcapping", "attn_logit_softcapping"):
        if hf.get(cap):
            raise NotImplementedError(f"Gemma 3 with {cap}={hf[cap]} is not supported")
    n = hf["num_hidden_layers"]
    if hf.get("layer_types"):
        sliding = tuple(i for i, t in enumerate(hf["layer_types"]) if t == "sliding_attention")
    else:
        pattern = hf.get("sliding_window_pattern") or hf.get("_sliding_window_pattern") or 6
        sliding = tuple(i for i in range(n) if (i + 1) % pattern)
    cfg = decoder_from_hf(
        hf, MODEL_TYPE, default_theta=1e6, used=_GEMMA_KEYS, qk_norm=True, norm_offset=1.0,
        post_norms=True, embed_scale=True, activation="gelu_tanh",
        tie_embeddings=hf.get("tie_word_embeddings", True), sliding_layers=sliding,
        sliding_window=hf.get("sliding_window"),
        query_pre_attn_scalar=float(hf.get("query_pre_attn_scalar") or hf.get("head_dim", 256)),
        max_position_embeddings=hf.get("max_position_embeddings", 131_072),
    )
    return cfg if cfg.rope_local_theta else cfg.replace(rope_local_theta=10_000.0)


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    out = decoder_to_hf(cfg, {
        "architectures": [ARCHITECTURE], "attention_bias": False, "attention_dropout": 0.0,
        "initializer_range": 0.02, "use_cache": True,
    })
    out.update({
        "model_type": "gemma3_text", "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": _int_if_whole(cfg.query_pre_attn_scalar),
        "sliding_window": cfg.sliding_window,
        "rope_local_base_freq": cfg.rope_local_theta,
        "layer_types": ["sliding_attention" if i in cfg.sliding_layers else "full_attention"
                        for i in range(cfg.n_layers)],
        "final_logit_softcapping": None, "attn_logit_softcapping": None,
    })
    return out


def _int_if_whole(x: float | None):
    return int(x) if x is not None and float(x).is_integer() else x


def _named(vocab, d, layers, heads, kv, ffn, window, scaling, max_pos) -> ModelConfig:
    return ModelConfig(
        family=MODEL_TYPE, vocab_size=vocab, d_model=d, n_layers=layers, n_heads=heads,
        n_kv_heads=kv, head_dim=256, ffn_dim=ffn, rope_theta=1_000_000.0, rope_scaling=scaling,
        rope_local_theta=10_000.0, rms_eps=1e-6, tie_embeddings=True, qk_norm=True,
        norm_offset=1.0, post_norms=True, embed_scale=True, activation="gelu_tanh",
        sliding_layers=tuple(i for i in range(layers) if (i + 1) % 6), sliding_window=window,
        query_pre_attn_scalar=256.0, max_position_embeddings=max_pos,
    )


# Shapes of the published config.json files (translategemma-4b-it has gemma-3-4b's).
def gemma3_1b() -> ModelConfig:
    return _named(262_144, 1152, 26, 4, 1, 6912, 512, None, 32_768)


def gemma3_4b() -> ModelConfig:
    return _named(262_208, 2560, 34, 8, 4, 10_240, 1024, ("linear", 8.0), 131_072)


def translategemma_4b() -> ModelConfig:
    return gemma3_4b()
