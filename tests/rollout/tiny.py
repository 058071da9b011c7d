"""A tiny random Qwen3 in the real HF on-disk format, for sidecar tests and benchmarks.

Uses `walar_jax.models.tiny.make_tiny_checkpoint` where JAX is installed (same files the
trainer exports); otherwise builds one with `transformers` and a byte-level BPE tokenizer
trained in-process, its config.json written by the trainer's own Qwen3 config writer.
Runs in the rollout and the trainer environment.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib

from walar_jax.models import qwen3
from walar_jax.models.tiny import CHAT_TEMPLATE, SPECIAL_TOKENS, tiny_config

# The trainer's own Qwen3 chat template, special tokens, config.json writer and tiny shape:
# pure Python, importable without JAX.
QWEN3_CHAT_TEMPLATE = CHAT_TEMPLATE
SPECIALS = list(SPECIAL_TOKENS)
CORPUS = [
    "Translate the following sentence into French: the cat sleeps on the warm mat.",
    "Le chat dort sur le tapis chaud. Der Hund läuft schnell nach Hause.",
    "Kiswahili ni lugha ya Afrika Mashariki. Habari za asubuhi, rafiki yangu.",
    "Numbers 0123456789 and punctuation .,;:!?()[]{}<>\"' are part of every text.",
]


def _train_tokenizer(out: pathlib.Path, vocab_size: int) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 20, trainer)
    tok.save(str(out / "tokenizer.json"))
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "model_max_length": 4096,
        "chat_template": QWEN3_CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=1))
    return tok.get_vocab_size()


def make_tiny_qwen3(
    out_dir: str | pathlib.Path,
    *,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    intermediate_size: int = 128,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vocab_size: int = 512,
    tie_word_embeddings: bool = False,
    head_dim: int | None = None,
    max_position_embeddings: int = 4096,
) -> pathlib.Path:
    """Writes config.json, model.safetensors (fp32) and a tokenizer; returns the dir."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_tok = _train_tokenizer(out, vocab_size)
    specials = json.loads((out / "tokenizer.json").read_text())["added_tokens"]
    ids = {t["content"]: t["id"] for t in specials}
    cfg = tiny_config(vocab_size=max(vocab_size, n_tok), d_model=hidden_size,
                      n_layers=num_layers, ffn_dim=intermediate_size, n_heads=num_heads,
                      n_kv_heads=num_kv_heads, head_dim=head_dim or hidden_size // num_heads * 2,
                      max_position_embeddings=max_position_embeddings,
                      tie_embeddings=tie_word_embeddings)
    hf = qwen3.config_to_hf(cfg)
    hf.update(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
              pad_token_id=ids["<|endoftext|>"])
    config = Qwen3Config.from_dict(hf)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config).to(torch.float32)
    with torch.no_grad():
        # Default init (std 0.02) gives near-uniform next-token distributions; larger
        # weights make greedy outputs depend visibly on the parameters.
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.15)
    model.save_pretrained(out, safe_serialization=True)
    return out


def tiny_checkpoint(out_dir: str | pathlib.Path, seed: int = 0) -> pathlib.Path:
    """The project's tiny checkpoint where JAX can export one, else ours."""
    if importlib.util.find_spec("jax") is None:
        return make_tiny_qwen3(out_dir, seed=seed)
    from walar_jax.models.tiny import make_tiny_checkpoint

    make_tiny_checkpoint(str(out_dir), seed=seed)
    return pathlib.Path(out_dir)
