"""Tiny random `transformers` checkpoints in the real on-disk format, and the torch
reference computation (torch is a test-only dependency of the trainer env)."""

from __future__ import annotations

import numpy as np

# Every way of running the policy that CPU supports: layers listed or scanned, dense
# reference attention or jax.nn.dot_product_attention's XLA path ("cudnn" needs a GPU).
OPTION_SETS = [
    dict(scan_layers=False, attention="dense"),
    dict(scan_layers=True, attention="dense"),
    dict(scan_layers=False, attention="xla"),
    dict(scan_layers=True, attention="xla"),
]


def option_id(opts: dict) -> str:
    return ("scan" if opts["scan_layers"] else "list") + "-" + opts["attention"]


def make_hf_qwen3(path, *, tie: bool, seed: int = 0, vocab: int = 384, layers: int = 2):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen3Config(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=10_000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=tie, max_position_embeddings=512,
    )
    model = Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():  # spread the norm weights so a wrong mapping cannot hide
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    model.save_pretrained(str(path), safe_serialization=True)
    return model


def hf_token_logprobs(path_or_model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """log p(ids[:, t+1] | ids[:, :t+1]) from transformers, positions counted from each
    row's first real token, as [B, T-1]."""
    import torch
    from transformers import AutoModelForCausalLM

    model = (AutoModelForCausalLM.from_pretrained(str(path_or_model), dtype=torch.float32)
             if isinstance(path_or_model, (str, bytes)) or hasattr(path_or_model, "__fspath__")
             else path_or_model)
    ids_t = torch.tensor(ids)
    mask_t = torch.tensor(mask)
    pos = (mask_t.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=ids_t, attention_mask=mask_t, position_ids=pos).logits
    lp = torch.log_softmax(logits.float(), -1)[:, :-1]
    return lp.gather(-1, ids_t[:, 1:, None])[..., 0].numpy()


def padded_batch(rng: np.random.Generator, vocab: int, lengths, T: int, left: bool):
    ids = np.zeros((len(lengths), T), np.int64)
    mask = np.zeros((len(lengths), T), np.int64)
    for b, n in enumerate(lengths):
        toks = rng.integers(1, vocab, n)
        sl = slice(T - n, T) if left else slice(0, n)
        ids[b, sl], mask[b, sl] = toks, 1
    return ids, mask


def _spread_norms(model, offset: float):
    import torch

    with torch.no_grad():  # norm weights away from their init, so a wrong mapping shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(offset + 0.1 * torch.randn_like(p))


def make_hf_llama(path, *, tie: bool = False, seed: int = 0, vocab: int = 384):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
        tie_word_embeddings=tie, max_position_embeddings=1024, rope_theta=500_000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
    )
    model = LlamaForCausalLM(cfg).eval()
    _spread_norms(model, 1.0)
    model.save_pretrained(str(path), safe_serialization=True)
    return model


def gemma3_text_config(vocab: int = 384, tie: bool = True):
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(
        tie_word_embeddings=tie,
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
        sliding_window=4, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_theta=1_000_000.0, rope_local_base_freq=10_000.0,
        rope_scaling={"rope_type": "linear", "factor": 8.0}, max_position_embeddings=512,
        pad_token_id=0, bos_token_id=2, eos_token_id=1,
    )


def make_hf_gemma3(path, *, seed: int = 0, multimodal: bool = False, tie: bool = True):
    import torch
    from transformers import Gemma3Config, Gemma3ForCausalLM, Gemma3ForConditionalGeneration
    from transformers import SiglipVisionConfig

    torch.manual_seed(seed)
    text = gemma3_text_config(tie=tie)
    if multimodal:
        vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                    num_attention_heads=2, image_size=28, patch_size=14)
        cfg = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                           image_token_index=380, boi_token_index=381, eoi_token_index=382)
        model = Gemma3ForConditionalGeneration(cfg).eval()
    else:
        model = Gemma3ForCausalLM(text).eval()
    _spread_norms(model, 0.0)
    model.save_pretrained(str(path), safe_serialization=True)
    return model


def jax_logprobs(model, ids, mask, chunk: int = 8) -> np.ndarray:
    """The JAX policy's log p(ids[:, t+1] | ids[:, :t+1]) as [B, T-1], like hf_token_logprobs."""
    import jax.numpy as jnp

    ids = jnp.asarray(ids)
    lp = model.token_logprobs(ids, jnp.roll(ids, -1, 1), jnp.asarray(mask), chunk=chunk)
    return np.asarray(lp)[:, :-1]


def sharded_and_single_logprobs(path, ids, mask, chunk: int, **options):
    """Log-probs of the checkpoint at `path` on one device and on a (2, 2, 2) mesh of the 8
    fake devices (constraints active), and the sharded model, for comparison."""
    import jax
    import jax.numpy as jnp

    from walar_jax import models, sharding

    single = models.from_pretrained(str(path), **options)
    mesh = sharding.make_mesh((2, 2, 2))
    sharded = models.from_pretrained(str(path), mesh=mesh, **options)

    @jax.jit
    def fwd(m, ids, mask):
        return m.token_logprobs(ids, jnp.roll(ids, -1, 1), mask, chunk=chunk)

    ref = fwd(single, jnp.asarray(ids), jnp.asarray(mask)).block_until_ready()
    with sharding.use_sharding(sharding.ShardingCtx(mesh)):
        got = fwd(sharded, jnp.asarray(ids), jnp.asarray(mask)).block_until_ready()
    return got, np.asarray(ref), sharded
