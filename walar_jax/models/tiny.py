"""The embedded default policy: a tiny random Qwen3 with a byte-level tokenizer,
written in the real HF format (config.json, safetensors, tokenizer.json with a
Qwen3-style chat template) so `transformers` and vLLM load it like any checkpoint."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from walar_jax.models.config import ModelConfig

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")
# Qwen3's template, reduced to what translation prompts use; `enable_thinking=False`
# emits the empty think block exactly as the real template does.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)


def tiny_config(**overrides) -> ModelConfig:
    base = ModelConfig(
        family="qwen3", vocab_size=384, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
        head_dim=32, ffn_dim=128, rope_theta=1_000_000.0, rms_eps=1e-6, tie_embeddings=False,
        qk_norm=True, max_position_embeddings=2048, hf_dtype="float32",
    )
    return base.replace(**overrides)


def tiny_llama_config(**overrides) -> ModelConfig:
    """Tiny Llama 3 (with Llama 3 RoPE scaling) of the same size, for tests of that family."""
    return tiny_config(family="llama", qk_norm=False, rms_eps=1e-5, rope_theta=500_000.0,
                       rope_scaling=("llama3", 8.0, 1.0, 4.0, 64)).replace(**overrides)


def tiny_gemma_config(**overrides) -> ModelConfig:
    """Tiny Gemma 3 text decoder: two sliding-window layers (window 8) around a global one."""
    return tiny_config(
        family="gemma3", n_layers=3, tie_embeddings=True, norm_offset=1.0, post_norms=True,
        embed_scale=True, activation="gelu_tanh", sliding_layers=(0, 2), sliding_window=8,
        rope_local_theta=10_000.0, rope_scaling=("linear", 8.0), query_pre_attn_scalar=32.0,
    ).replace(**overrides)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (used by ByteLevel)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def write_byte_tokenizer(out_dir: str, vocab_size: int) -> None:
    """A byte-level tokenizer: ids 0-255 are bytes, then the special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {c: b for b, c in _bytes_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    if tok.get_vocab_size() > vocab_size:
        raise ValueError(f"vocab_size {vocab_size} < tokenizer size {tok.get_vocab_size()}")
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 2048,
        "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None,
        "unk_token": None, "chat_template": CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    gen = {"eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
           "pad_token_id": ids["<|endoftext|>"], "do_sample": True, "temperature": 1.0}
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump(gen, f, indent=2)


def make_tiny_checkpoint(out_dir: str, *, seed: int = 0, cfg: ModelConfig | None = None) -> str:
    """Creates (once) and returns an HF directory holding the tiny random Qwen3."""
    from walar_jax import models

    if os.path.exists(os.path.join(out_dir, "config.json")):
        return out_dir
    cfg = cfg or tiny_config()
    tmp = out_dir.rstrip("/") + f".tmp{os.getpid()}"
    os.makedirs(tmp, exist_ok=True)
    model = models.init_random(cfg, seed=seed)
    write_byte_tokenizer(tmp, cfg.vocab_size)
    models.save_pretrained(model, tmp, dtype=np.float32)
    try:
        os.replace(tmp, out_dir)
    except OSError:  # another process created it first; theirs is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


if __name__ == "__main__":
    import sys

    print(make_tiny_checkpoint(sys.argv[1] if len(sys.argv) > 1 else "runs/tiny_model"))
